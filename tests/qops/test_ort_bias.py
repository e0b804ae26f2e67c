"""onnxruntime's ``WeightBiasQuantization`` of a float Conv / Gemm bias (:func:`hwsim.qops.
ort_quantized_bias`, :func:`hwsim.qops.ort_dequantized_bias`): equal to an exact-rational
reference (every float32 step rounded from the exact value, ties to even) over per-tensor and
per-channel scales, exact ties of the quotient and quotients beyond int32; and equal to the
int32 bias onnxruntime itself writes into its optimised graph."""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hwsim.numerics.reference import round_to_float32
from hwsim.qops import QOpError, ort_dequantized_bias, ort_quantized_bias

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def _f32(v: float) -> float:
    return float(np.float32(v))


def ref_bias(b: float, x_scale: float, w_scale: float) -> tuple[int, Fraction]:
    """``s = f32(sx * sw)``, ``B = rint(f32(b / s))`` (half to even), ``INT32_MIN`` beyond
    int32 (x86 ``Cast``); all in exact rationals."""
    s = round_to_float32(Fraction(_f32(x_scale)) * Fraction(_f32(w_scale)))
    t = round_to_float32(Fraction(_f32(b)) / s)
    fl = math.floor(t)
    frac = t - fl
    q = fl + (frac > Fraction(1, 2) or (frac == Fraction(1, 2) and fl % 2 == 1))
    return (q if INT32_MIN <= q <= INT32_MAX else INT32_MIN), s


def ref_dequantized(q: int, s: Fraction) -> float:
    """``f32(f32(q) * s)``."""
    return float(round_to_float32(round_to_float32(Fraction(q)) * s))


scales = st.floats(2.0**-24, 4.0, allow_nan=False, allow_infinity=False, width=32)
biases = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32).filter(
    lambda v: v == 0 or abs(v) >= 2.0**-60
)


@given(
    m=st.integers(1, 6),
    per_channel=st.booleans(),
    data=st.data(),
    sx=scales,
)
def test_quantized_bias_equals_the_exact_rational_reference(m, per_channel, data, sx):
    b = np.array(data.draw(st.lists(biases, min_size=m, max_size=m)), np.float32)
    sw = np.array(
        data.draw(
            st.lists(scales, min_size=m if per_channel else 1, max_size=m if per_channel else 1)
        ),
        np.float32,
    )
    q, s = ort_quantized_bias(b, np.float32(sx), sw if per_channel else sw[0])
    assert q.dtype == np.int64 and q.shape == (m,) and s.dtype == np.float32 and s.shape == (m,)
    deq = ort_dequantized_bias(q, s)
    assert deq.dtype == np.float32
    for i in range(m):
        want_q, want_s = ref_bias(float(b[i]), sx, float(sw[i if per_channel else 0]))
        assert int(q[i]) == want_q and Fraction(float(s[i])) == want_s
        assert float(deq[i]) == ref_dequantized(want_q, want_s)


@given(
    k=st.integers(-(2**22), 2**22),
    sx=st.sampled_from([2.0**-7, 2.0**-10, 0.5, 1.0]),
    sw=st.sampled_from([2.0**-6, 2.0**-9, 0.25, 1.0]),
)
def test_exact_ties_round_half_to_even(k, sx, sw):
    """``b = (k + 1/2) * s`` with power-of-two scales: the quotient is exactly ``k + 1/2``."""
    s = sx * sw
    b = np.float32((k + 0.5) * s)
    assert float(b) / s == k + 0.5  # exact in float32 for |k| < 2^22
    q, _ = ort_quantized_bias(np.array([b]), sx, sw)
    assert int(q[0]) == (k if k % 2 == 0 else k + 1) == ref_bias(float(b), sx, sw)[0]


@pytest.mark.parametrize(
    "quotient, want",
    [
        (2.0**31 - 128, 2**31 - 128),  # the largest float32 below 2^31
        (2.0**31, INT32_MIN),  # beyond int32: x86's "integer indefinite"
        (-(2.0**31), INT32_MIN),  # exactly INT32_MIN
        (-(2.0**31) - 256, INT32_MIN),
        (3.0e38, INT32_MIN),
        (-0.5, 0),
        (0.5, 0),
        (1.5, 2),
        (2.5, 2),
        (-2.5, -2),
    ],
)
def test_int32_edges(quotient, want):
    q, s = ort_quantized_bias(np.array([quotient], np.float32), 1.0, 1.0)
    assert int(q[0]) == want == ref_bias(quotient, 1.0, 1.0)[0]
    assert s.tolist() == [1.0]


def test_bad_scales_and_sizes_raise():
    with pytest.raises(QOpError, match="w_scale must have 1 or 3 entries"):
        ort_quantized_bias(np.zeros(3, np.float32), 0.1, np.ones(2, np.float32))
    with pytest.raises(QOpError, match="x_scale"):
        ort_quantized_bias(np.zeros(3, np.float32), 0.0, 0.1)
    empty, s = ort_quantized_bias(np.zeros(0, np.float32), 0.5, 0.5)
    assert empty.shape == s.shape == (0,)


def _optimised_bias(b, sx, sw, op: str) -> tuple[np.ndarray, np.ndarray]:
    """The int32 bias and its scale onnxruntime's optimised graph holds for a ``DQ -> Conv /
    Gemm (float bias) -> Q`` model (read back from ``optimized_model_filepath``)."""
    m = b.shape[0]
    w = np.ones((m, 2, 1, 1) if op == "Conv" else (m, 2), np.int8)
    inits = [
        numpy_helper.from_array(np.array(sx, np.float32), "sx"),
        numpy_helper.from_array(np.array(0, np.uint8), "zx"),
        numpy_helper.from_array(w, "wq"),
        numpy_helper.from_array(np.asarray(sw, np.float32), "sw"),
        numpy_helper.from_array(np.zeros(np.shape(sw), np.int8), "zw"),
        numpy_helper.from_array(b.astype(np.float32), "b"),
        numpy_helper.from_array(np.array(0.05, np.float32), "sy"),
        numpy_helper.from_array(np.array(0, np.uint8), "zy"),
    ]
    extra = {"transB": 1} if op == "Gemm" else {}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
        helper.make_node(op, ["xd", "wd", "b"], ["y"], **extra),
        helper.make_node("QuantizeLinear", ["y", "sy", "zy"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "sy", "zy"], ["out"]),
    ]
    shape = [1, 2, 3, 3] if op == "Conv" else [1, 2]
    g = helper.make_graph(
        nodes,
        "bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    with tempfile.TemporaryDirectory() as d:
        so = ort.SessionOptions()
        so.optimized_model_filepath = f"{d}/opt.onnx"
        so.log_severity_level = 3
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        opt = onnx.load(f"{d}/opt.onnx")
    arrays = {t.name: numpy_helper.to_array(t) for t in opt.graph.initializer}
    (q,) = [v for v in arrays.values() if v.dtype == np.int32]
    return q.astype(np.int64), arrays


@pytest.mark.parametrize("op", ["Conv", "Gemm"])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_equals_the_int32_bias_onnxruntime_writes(op, per_channel, seed):
    """Random biases with quotients near ties and near the int32 ends, per-tensor and
    per-channel weight scales: onnxruntime's folded ``Round(Div(b, Mul(sx, sw)))`` equals
    :func:`ort_quantized_bias` value for value."""
    r = np.random.default_rng(seed)
    m = 64
    sx = np.float32(r.uniform(0.001, 0.1))
    sw = (r.uniform(0.001, 0.1, m) if per_channel else np.array(r.uniform(0.001, 0.1))).astype(
        np.float32
    )
    s = (sx * sw).astype(np.float64)
    k = r.integers(-(2**20), 2**20, m).astype(np.float64)
    k[:4] = [2.0**30, -(2.0**30), 2.0**31 - 2**10, 2.0**32]  # large and beyond int32
    b = ((k + r.choice([0.5, 0.499999, 0.500001, 0.0, 0.25], m)) * s).astype(np.float32)
    want, _ = _optimised_bias(b, sx, sw, op)
    got, _ = ort_quantized_bias(b, sx, sw)
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {m} differ"
