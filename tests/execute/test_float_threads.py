"""run_float (the calibration's float run) gives the same bits for any BLAS thread count.

Without the one-thread pin in ``run_float`` OpenBLAS's float32 GEMM sums in an order that
depends on its thread count: on rescnn and vit, 12 and 48 tensors then differ between one and
two threads (measured), and a calibrated scale can move by an ulp.
"""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from hwsim.execute.float import run_float
from hwsim.graph.onnx_import import import_model


@pytest.mark.parametrize("model", ["rescnn", "vit"])
def test_run_float_independent_of_blas_threads(model):
    g = import_model(f"models/{model}.onnx")
    x = np.random.default_rng(0).random((256, *g.input_shape), dtype=np.float32)
    runs = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            runs.append(run_float(g, x))
    assert runs[0].keys() == runs[1].keys()
    differ = [t for t in runs[0] if not np.array_equal(runs[0][t], runs[1][t])]
    assert differ == []
