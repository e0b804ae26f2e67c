"""onnxruntime's float ``Gemm`` with a bias (``beta = 1``): the bias is ``Y``'s starting value,
each K block of MLAS's cut added onto it with one rounding
(:func:`hwsim.execute.integer.mlas_gemm_bias`), against onnxruntime itself."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from hwsim import mlas
from hwsim.execute.integer import mlas_gemm_bias


def _ort_gemm(x, w, c) -> np.ndarray:
    """onnxruntime's ``Gemm(x, w, c)``, ``w`` a graph input (not pre-packed, as a weight
    behind a DequantizeLinear), one thread (the K cut of a single-threaded MlasGemm)."""
    f = onnx.TensorProto.FLOAT
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "c"], ["y"], beta=1.0, alpha=1.0)],
        "g",
        [
            helper.make_tensor_value_info("x", f, x.shape),
            helper.make_tensor_value_info("w", f, w.shape),
            helper.make_tensor_value_info("c", f, c.shape),
        ],
        [helper.make_tensor_value_info("y", f, (x.shape[0], w.shape[1]))],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x, "w": w, "c": c})[0]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    r=st.integers(2, 5),  # M = 1 and N = 1 take MLAS's GEMV kernels (not modelled)
    k=st.sampled_from([0, 1, 7, 128, 129, 300, 700]),
    n=st.sampled_from([2, 10, 129, 200, 300]),
    seed=st.integers(0, 2**32 - 1),
    big_bias=st.booleans(),
)
def test_gemm_with_bias_equals_onnxruntime(r, k, n, seed, big_bias):
    rng = np.random.default_rng(seed)
    # values on a coarse grid (a dequantized operand) whose sums round, biases that dominate
    x = (rng.integers(-128, 128, (r, k)) * 0.0173).astype(np.float32)
    w = (rng.integers(-8, 8, (k, n)) * 0.031).astype(np.float32)
    c = (rng.standard_normal(n) * (1e4 if big_bias else 1.0)).astype(np.float32)
    y = mlas_gemm_bias(x, w, c, fma=mlas.host_fma())
    assert np.array_equal(y, _ort_gemm(x, w, c))


def test_bias_first_differs_from_bias_last_where_k_has_blocks():
    """The property the rule pins down: with several K blocks, adding the bias first (Gemm)
    and last (MatMul then Add) give different float32 outputs on some inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 700)).astype(np.float32)
    w = rng.standard_normal((700, 200)).astype(np.float32)
    c = (rng.standard_normal(200) * 100).astype(np.float32)
    first = mlas_gemm_bias(x, w, c)
    last = (mlas.matmul(x, w) + c).astype(np.float32)
    assert np.array_equal(first, _ort_gemm(x, w, c)) and not np.array_equal(first, last)
