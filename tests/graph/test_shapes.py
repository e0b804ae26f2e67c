"""Shape inference on the IR (hwsim.graph.shapes) against the shapes the float executor
produces, on the shipped models, the torch architectures and every op of the executor spec
model."""

from __future__ import annotations

import numpy as np
import pytest

from hwsim.execute import run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Op
from hwsim.graph.shapes import SHAPES, infer_shapes


def _check(graph, batch, x):
    env = run_float(graph, x)
    shapes = infer_shapes(graph, batch)
    assert set(shapes) == set(env)
    for name, v in env.items():
        assert shapes[name] == v.shape, name


@pytest.mark.parametrize("model", ["models/mlp.onnx", "models/rescnn.onnx"])
@pytest.mark.parametrize("batch", [1, 3])
def test_shipped_models(model, batch):
    g = import_model(model)
    x = np.zeros((batch,) + tuple(g.input_shape), np.float32)
    _check(g, batch, x)


@pytest.mark.parametrize("seed", range(6))
def test_every_op_of_the_spec_model(seed):
    from tests.execute.test_executor_spec import _spec_model

    rng = np.random.default_rng(seed)
    c, hw = int(rng.choice([2, 4])), int(rng.integers(4, 8))
    k, stride, pad = int(rng.integers(1, 4)), int(rng.integers(1, 3)), int(rng.integers(0, 2))
    model = _spec_model(seed, c, 4, hw, k, stride, pad, 2, bool(seed % 2), 0.5, 2, 2, 1, seed % 2)
    g = import_model(model)
    _check(g, 2, rng.normal(size=(2, c, hw, hw)).astype(np.float32))


def test_every_op_has_a_shape_rule():
    assert set(SHAPES) == set(Op)


def test_torch_architectures():
    import tempfile
    from pathlib import Path

    from tests.conformance import archs

    with tempfile.TemporaryDirectory() as tmp:
        for name in archs.ARCHS:
            g = import_model(archs.export_float(name, Path(tmp) / f"{name}.onnx"))
            _check(g, 2, archs.inputs(2))
