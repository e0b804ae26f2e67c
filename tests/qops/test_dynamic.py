"""hwsim.qops.dynamic against onnxruntime: ``DynamicQuantizeLinear``, the com.microsoft
``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``, and whole ``quantize_dynamic`` models.

Single nodes run on onnxruntime with graph optimisations off; a torch-exported attention block
quantized by ``quantize_dynamic`` runs with the default (fused) optimisations, and each of its
dynamic-quantization nodes is recomputed by hwsim on the tensors ORT saw. Float32 outputs are
compared bit for bit; GEMMs run with ``isa="auto"`` (onnxruntime's dot product on this CPU).

Findings with onnxruntime 1.32 on x86-64:

* ``DynamicQuantizeLinear``: scale 1 and zero point 0 for an all-zero (or empty) x (the ONNX
  reference takes 1/255); a scale that overflows is ``inf``, one that underflows is 0 (zero
  point 255); the zero point rounds half to even. A NaN is dropped or kept depending on its
  position (hwsim raises).
* ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``: ``f32(acc) * f32(a_scale * b_scale)``
  then ``+ bias``, no FMA; ``K = 0`` leaves the output unwritten (hwsim raises).
* ``quantize_dynamic`` (MatMulConstBOnly): every MatMul / Gemm with a constant weight becomes
  ``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul(Mul(x_scale, w_scale)) [-> Add]``,
  products of two activations stay float. ORT fuses a chain whose ``DynamicQuantizeLinear``
  has one consumer into ``DynamicQuantizeMatMul``, and one that shares it (q, k, v) into
  ``DynamicQuantizeLinear`` + ``MatMulIntegerToFloat``; the fused and unfused graphs give the
  same bits.
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

from hwsim import qops
from hwsim.datapath.isa import Isa
from tests.qops.harness import MS, differing, random_q, value_info

F32 = np.float32
U8 = np.uint8


# --- single nodes on onnxruntime ----------------------------------------------------------------
def ort_node(op, domain, inputs, out_types, const=()):
    """A one-node onnxruntime session (graph optimisations off); ``inputs``: (name, value or
    None) in node order, names in ``const`` as initializers. Returns ``run(feeds)``-ready
    ``(session, feeds)``."""
    node = helper.make_node(
        op, [n if v is not None else "" for n, v in inputs],
        [f"y{i}" for i in range(len(out_types))], domain=domain,
    )  # fmt: skip
    graph = helper.make_graph(
        [node],
        "g",
        [value_info(n, np.asarray(v)) for n, v in inputs if v is not None and n not in const],
        [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(out_types)],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inputs if n in const],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feeds = {n: np.asarray(v) for n, v in inputs if v is not None and n not in const}
    return sess, feeds


@functools.cache
def _dql_session():
    """One DynamicQuantizeLinear session for inputs of any shape."""
    out = [TensorProto.UINT8, TensorProto.FLOAT, TensorProto.UINT8]
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y0", "y1", "y2"])
    graph = helper.make_graph(
        [node], "dql", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info(f"y{i}", t, None) for i, t in enumerate(out)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_dql(x):
    return _dql_session().run(None, {"x": np.asarray(x, F32)})


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert differing(np.asarray(g), np.asarray(w)) == 0, (g, w)


# --- DynamicQuantizeLinear ----------------------------------------------------------------------
TINY = np.float32(1.4e-45)  # the smallest subnormal: (hi - lo) / 255 underflows to 0
BIG = np.finfo(F32).max
EDGES = {
    "empty": [],
    "scalar": np.float32(-3.25),
    "one": [2.0],
    "zeros": [0.0, 0.0, 0.0],
    "negative_zero": [-0.0, 0.0],
    "all_equal_positive": [5.0] * 7,
    "all_equal_negative": [-5.0] * 9,
    "scale_underflows": [TINY, 0.0],
    "scale_underflows_negative": [-TINY],
    "plus_inf": [np.inf, 1.0, -2.0],
    "minus_inf": [-np.inf, 1.0],
    "both_inf": [-np.inf, np.inf, 1.0],
    "range_overflows": [BIG, -BIG, 1.0],
    "huge": [3e38, 1e38, -1e30],
    "small": [1e-38, -3e-39, 1e-45],
    "zp_tie_to_0": [-0.5, 254.5],
    "zp_tie_to_2": [-1.5, 253.5],
    "zp_tie_to_2_again": [-2.5, 252.5],
    "zp_tie_scaled": [-0.75 * 2.0**-10, 254.25 * 2.0**-10],
    "y_ties": [-1.0, 254.0, 0.5, 1.5, 2.5, -0.5, 100.5],
    "decimal": [-0.1, 0.3, 0.7, -0.2],
}


@pytest.mark.parametrize("case", sorted(EDGES))
def test_dynamic_quantize_linear_edge_cases_equal_onnxruntime(case):
    x = np.asarray(EDGES[case], F32)
    got = qops.run_node("DynamicQuantizeLinear", "", {}, [x])
    assert_same(got, ort_dql(x))
    assert got[0].shape == x.shape and got[1].shape == got[2].shape == ()


def test_dynamic_quantize_linear_extreme_parameters_are_onnxruntimes():
    """The pinned values behind the edge cases (ORT's, not the ONNX reference's)."""
    y, s, z = qops.dynamic_quantize_linear(np.zeros((2, 3), F32))
    assert (s, z) == (1.0, 0) and not y.any()  # ONNX reference: s = 1/255
    _, s, z = qops.dynamic_quantize_linear(np.array([TINY], F32))
    assert (s, z) == (0.0, 255)
    _, s, z = qops.dynamic_quantize_linear(np.array([BIG, -BIG], F32))
    assert s == np.inf and z == 0
    assert qops.dynamic_quantize_linear(np.array([-0.5, 254.5], F32))[2] == 0
    assert qops.dynamic_quantize_linear(np.array([-1.5, 253.5], F32))[2] == 2


def _random_inputs(rng, i):
    shape = tuple(int(d) for d in rng.integers(0, 7, int(rng.integers(1, 4))))
    kind = i % 5
    if kind == 0:  # any magnitude
        x = rng.standard_normal(shape) * 10.0 ** float(rng.integers(-40, 39))
    elif kind == 1:  # binary fractions: exact quotients, ties of y and of the zero point
        x = rng.integers(-300, 300, shape) * 2.0 ** -float(rng.integers(0, 9))
    elif kind == 2:  # one-signed: the range is stretched to include 0
        x = np.abs(rng.standard_normal(shape)) * (1 if rng.random() < 0.5 else -1)
    elif kind == 3:  # range exactly 255: scale 1, the zero point at k + 1/2
        lo = -float(rng.integers(0, 256)) - 0.5
        x = np.concatenate([[lo, lo + 255], rng.uniform(lo, lo + 255, 20)])
    else:
        x = rng.choice([0.1, -0.3, 0.7, 1e-3, -2.5, 0.0], shape)
    return np.asarray(x, F32)


def test_dynamic_quantize_linear_random_equal_onnxruntime():
    rng = np.random.default_rng(11)
    for i in range(600):
        x = _random_inputs(rng, i)
        assert_same(qops.dynamic_quantize_linear(x), ort_dql(x))


def reference_qparams(values) -> tuple[np.float32, int]:
    """Plain Python, every operation on numpy float32 scalars (IEEE float32, round to nearest
    even): the range including 0 by comparisons, ``(hi - lo) / 255``, ``0 - lo / s`` clamped to
    [0, 255] (NaN to 255) and rounded half to even by Python's ``round``."""
    lo = hi = F32(0)
    for v in values:
        lo = v if v < lo else lo
        hi = v if v > hi else hi
    with np.errstate(all="ignore"):
        s = F32(1) if hi == lo else F32(hi - lo) / F32(255)
        z0 = F32(0) - lo / s
    z = float(z0) if z0 < 255 else 255.0
    return s, round(z if z > 0 else 0.0)


def reference_quantize(v, s, z) -> int:
    """``f32(v / s)`` clamped, rounded half to even, plus z (plain Python)."""
    with np.errstate(all="ignore"):
        t = float(F32(v) / F32(s))
    if t != t:
        return 0
    if abs(t) == float("inf"):
        return 255 if t > 0 else 0
    return min(max(round(t) + z, 0), 255)


_FLOATS = st.floats(width=32, allow_nan=False)
_EDGE_FLOATS = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 254.5, float(BIG), float(-BIG),
                                float(TINY), np.inf, -np.inf, 1e-38, 3e38])  # fmt: skip


@st.composite
def dql_inputs(draw):
    kind = draw(st.sampled_from(["any", "all_equal", "zp_tie"]))
    if kind == "all_equal":
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
        return np.full(shape, draw(_FLOATS), F32)
    if kind == "zp_tie":  # range 255 * 2^e with the zero point at k + 1/2
        k, e = draw(st.integers(0, 254)), draw(st.integers(-20, 20))
        lo = -(k + 0.5) * 2.0**e
        inner = draw(st.lists(st.floats(lo, lo + 255 * 2.0**e, width=32), max_size=6))
        return np.array([lo, lo + 255 * 2.0**e, *inner], F32)
    return draw(hnp.arrays(F32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5),
                           elements=st.one_of(_FLOATS, _EDGE_FLOATS)))  # fmt: skip


@given(x=dql_inputs())
def test_dynamic_quantize_linear_matches_plain_python_reference_and_onnxruntime(x):
    y, s, z = qops.dynamic_quantize_linear(x)
    want_s, want_z = reference_qparams(list(x.reshape(-1)))
    assert differing(s, np.array(want_s, F32)) == 0 and int(z) == want_z
    assert [int(q) for q in y.reshape(-1)] == [reference_quantize(v, s, want_z)
                                               for v in x.reshape(-1)]  # fmt: skip
    assert_same((y, s, z), ort_dql(x))


def test_nan_input_is_position_dependent_in_onnxruntime_and_rejected():
    """MLAS's 8-lane min/max keeps or drops a NaN by its position; hwsim does not guess."""
    x = np.linspace(-1, 2, 40).astype(F32)
    first, last = x.copy(), x.copy()
    first[0], last[-1] = np.nan, np.nan
    assert not np.isnan(ort_dql(first)[1]) and np.isnan(ort_dql(last)[1])
    with pytest.raises(qops.QOpError, match="NaN"):
        qops.dynamic_quantize_linear(first)
    with pytest.raises(qops.QOpError, match="NaN"):
        qops.dynamic_quantize_matmul(first.reshape(5, 8), np.ones((8, 2), np.int8), F32(1))


def test_dynamic_quantize_linear_takes_float32_only():
    with pytest.raises(qops.QOpError, match="float32"):
        qops.dynamic_quantize_linear(np.ones(3))


# --- MatMulIntegerToFloat / DynamicQuantizeMatMul ---------------------------------------------
TYPES = {"u8s8": (np.uint8, np.int8), "u8u8": (np.uint8, np.uint8), "s8s8": (np.int8, np.int8)}
SHAPES = [  # (a shape, b shape)
    ((5, 17), (17, 8)),
    ((1, 1), (1, 1)),
    ((2, 3, 9), (9, 4)),
    ((2, 1, 4, 33), (3, 33, 6)),
    ((7, 12), (12,)),
    ((12,), (2, 12, 5)),
    ((0, 6), (6, 3)),
    ((4, 6), (6, 0)),
]


def _b_params(rng, b, per_column, kind):
    """``(b_scale, b_zero_point)``: per-tensor, or per-column in the layout ORT supports for
    this B ((N,) for a 2-D B, B's shape with 1 at axis -2 for a batched one)."""
    n = b.shape[-1] if b.ndim > 1 else 1
    shape = () if not per_column or b.ndim == 1 else ((n,) if b.ndim == 2 else
                                                      (*b.shape[:-2], 1, n))  # fmt: skip
    size = int(np.prod(shape))
    if kind == "extreme":
        scale = rng.choice(np.array([0.0, -0.5, np.inf, 1e-30, 3e30], F32), size)
    elif kind == "ties":
        scale = 2.0 ** rng.integers(-12, 0, size)
    else:
        scale = np.exp(rng.uniform(np.log(1e-4), np.log(1.0), size))
    return scale.astype(F32).reshape(shape), random_q(rng, b.dtype, shape)


@pytest.mark.parametrize("kind", ["random", "ties", "extreme"])
@pytest.mark.parametrize("types", sorted(TYPES))
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_matmul_integer_to_float_equals_onnxruntime(case, types, kind):
    a_shape, b_shape = SHAPES[case]
    ta, tb = TYPES[types]
    rng = np.random.default_rng(case + 10 * len(kind))
    a, b = random_q(rng, ta, a_shape), random_q(rng, tb, b_shape)
    n = b_shape[-1] if len(b_shape) > 1 else 1
    bias = rng.uniform(-100, 100, n).astype(F32) if case % 2 == 0 else None
    for per_column in (False, True):
        b_scale, b_zp = _b_params(rng, b, per_column, kind)
        a_scale = F32(0.02) if kind != "extreme" else F32(rng.choice([3e-5, 7.0, -1.5]))
        inputs = [("a", a), ("b", b), ("a_scale", a_scale), ("b_scale", b_scale),
                  ("a_zero_point", random_q(rng, ta, ())), ("b_zero_point", b_zp),
                  ("bias", bias)]  # fmt: skip
        got = qops.run_node("MatMulIntegerToFloat", MS, {}, [v for _, v in inputs], isa="auto")
        for const in ((), ("b", "b_scale", "b_zero_point")):  # B prepacked or not
            sess, feeds = ort_node("MatMulIntegerToFloat", MS, inputs, [TensorProto.FLOAT], const)
            assert_same(got, sess.run(None, feeds))


@pytest.mark.parametrize("types", ["u8s8", "u8u8"])
@pytest.mark.parametrize("case", range(len(SHAPES)))
def test_dynamic_quantize_matmul_equals_onnxruntime(case, types):
    a_shape, b_shape = SHAPES[case]
    tb = TYPES[types][1]
    rng = np.random.default_rng(100 + case)
    b = random_q(rng, tb, b_shape)
    n = b_shape[-1] if len(b_shape) > 1 else 1
    bias = rng.uniform(-10, 10, n).astype(F32) if case % 2 else None
    activations = [
        rng.standard_normal(a_shape) * 3,
        np.abs(rng.standard_normal(a_shape)),  # ReLU outputs: zero point 0
        np.full(a_shape, -2.5),  # all equal
        rng.integers(-300, 300, a_shape) * 2.0**-7,  # exact quotients: ties
        rng.standard_normal(a_shape) * 1e30,
    ]
    for per_column, a in zip([False, True] * 3, activations, strict=False):
        b_scale, b_zp = _b_params(rng, b, per_column, "random")
        inputs = [("a", a.astype(F32)), ("b", b), ("b_scale", b_scale), ("b_zero_point", b_zp),
                  ("bias", bias)]  # fmt: skip
        got = qops.run_node("DynamicQuantizeMatMul", MS, {}, [v for _, v in inputs], isa="auto")
        for const in ((), ("b", "b_scale", "b_zero_point")):
            sess, feeds = ort_node("DynamicQuantizeMatMul", MS, inputs, [TensorProto.FLOAT], const)
            assert_same(got, sess.run(None, feeds))


def test_scale_shapes_outside_the_gemm_scale_the_output_afterwards():
    """(M4): a ``(N,)`` b_scale with a 3-D B is ORT's ``ScaleOutput`` after the bias; scales
    passed the wrong way round are swapped back (``FixupScaleTensor``)."""
    rng = np.random.default_rng(5)
    a, b = random_q(rng, U8, (2, 3, 7)), random_q(rng, np.int8, (2, 7, 4))
    b_scale = np.array([0.5, 0.1, 3.0, 0.3], F32)
    bias = np.array([1.0, -2.5, 0.1, 7.0], F32)
    inputs = [("a", a), ("b", b), ("a_scale", F32(0.07)), ("b_scale", b_scale),
              ("a_zero_point", U8(3)), ("b_zero_point", None), ("bias", bias)]  # fmt: skip
    exact = qops.matmul_integer_to_float(a, b, F32(0.07), b_scale, U8(3), None, bias)
    acc = (a.astype(np.int64) - 3) @ b  # the exact sums (isa "exact"; AVX2 may clamp pairs)
    assert differing(exact, (acc.astype(F32) * F32(0.07) + bias) * b_scale) == 0
    got = qops.matmul_integer_to_float(a, b, F32(0.07), b_scale, U8(3), None, bias, isa="auto")
    sess, feeds = ort_node("MatMulIntegerToFloat", MS, inputs, [TensorProto.FLOAT])
    assert_same([got], sess.run(None, feeds))
    a2, b2 = random_q(rng, U8, (3, 7)), random_q(rng, np.int8, (7, 4))
    swapped = [("a", a2), ("b", b2), ("a_scale", b_scale), ("b_scale", F32(0.07))]
    got = qops.run_node("MatMulIntegerToFloat", MS, {}, [v for _, v in swapped], isa="auto")
    sess, feeds = ort_node("MatMulIntegerToFloat", MS, swapped, [TensorProto.FLOAT])
    assert_same(got, sess.run(None, feeds))


@st.composite
def integer_to_float_cases(draw):
    batch = draw(st.sampled_from([(), (1,), (2,), (2, 1)]))
    M, K, N = draw(st.integers(0, 4)), draw(st.integers(1, 9)), draw(st.integers(0, 5))
    ta, tb = TYPES[draw(st.sampled_from(sorted(TYPES)))]
    a = draw(hnp.arrays(ta, batch + (M, K)))
    b = draw(hnp.arrays(tb, (K, N)))
    per_column = draw(st.booleans())
    b_scale = draw(hnp.arrays(F32, (N,) if per_column else (), elements=_FLOATS))
    b_zp = draw(hnp.arrays(tb, (N,) if per_column and draw(st.booleans()) else ()))
    bias = draw(st.none() | hnp.arrays(F32, (N,), elements=st.floats(-1e6, 1e6, width=32)))
    return a, b, F32(draw(_FLOATS)), b_scale, draw(hnp.arrays(ta, ())), b_zp, bias


@given(case=integer_to_float_cases())
def test_matmul_integer_to_float_is_int32_product_then_float32_scale_and_bias(case):
    """Against plain int64 arithmetic and numpy float32 multiply / add (isa exact)."""
    a, b, a_s, b_s, a_zp, b_zp, bias = case
    got = qops.matmul_integer_to_float(a, b, a_s, b_s, a_zp, b_zp, bias)
    acc = (a.astype(np.int64) - a_zp.astype(np.int64)) @ (b.astype(np.int64) - b_zp)
    with np.errstate(all="ignore"):
        want = acc.astype(F32) * (a_s * b_s)
        want = want + bias if bias is not None else want
    assert differing(got, want.astype(F32)) == 0


def test_isa_avx2_saturates_the_uint8_int8_pairs():
    """``isa`` reaches the GEMM: all-max uint8 x int8 pairs saturate in int16 under AVX2."""
    a = np.full((2, 8), 255, U8)
    b = np.full((8, 3), 127, np.int8)
    exact = qops.matmul_integer_to_float(a, b, F32(0.5), F32(0.25), isa="exact")
    avx2 = qops.matmul_integer_to_float(a, b, F32(0.5), F32(0.25), isa=Isa.AVX2)
    assert np.all(exact == F32(8 * 255 * 127 * 0.125))
    assert np.all(avx2 == F32(4 * 32767 * 0.125))
    x = np.full((2, 8), 10.0, F32)  # quantizes to 255 with zero point 0
    saturated = qops.dynamic_quantize_matmul(x, b, F32(1), isa="avx2")
    assert np.all(saturated < qops.dynamic_quantize_matmul(x, b, F32(1)))


def test_contract_violations_raise():
    a, b = np.zeros((2, 0), U8), np.zeros((0, 3), np.int8)
    with pytest.raises(qops.QOpError, match="K = 0"):
        qops.matmul_integer_to_float(a, b, F32(1), F32(1))
    with pytest.raises(qops.QOpError, match="K = 0"):
        qops.dynamic_quantize_matmul(np.zeros((2, 0), F32), b, F32(1))
    a, b = np.zeros((2, 4), U8), np.zeros((4, 3), np.int8)
    with pytest.raises(qops.QOpError, match="per-row a_scale"):
        qops.matmul_integer_to_float(a, b, np.ones((2, 1), F32), F32(1))
    with pytest.raises(qops.QOpError, match="int8 A takes an int8 B"):
        qops.matmul_integer_to_float(a.astype(np.int8), b.astype(U8), F32(1), F32(1))
    with pytest.raises(qops.QOpError, match="bias"):
        qops.matmul_integer_to_float(a, b, F32(1), F32(1), bias=np.ones(4, F32))
    with pytest.raises(qops.QOpError, match="b_zero_point"):
        qops.matmul_integer_to_float(a, b, F32(1), F32(1), b_zero_point=np.zeros(2, np.int8))


# --- whole quantize_dynamic models ------------------------------------------------------------
class AttentionHead(torch.nn.Module):
    """q / k / v Linears sharing their input (v without bias), scaled-dot-product attention,
    ReLU'd output projection, first-token head on a 2-D tensor (exported as Gemm)."""

    def __init__(self, d=16):
        super().__init__()
        self.q, self.k = torch.nn.Linear(d, d), torch.nn.Linear(d, d)
        self.v = torch.nn.Linear(d, d, bias=False)
        self.o, self.head = torch.nn.Linear(d, d), torch.nn.Linear(d, 4)

    def forward(self, x):
        att = ((self.q(x) @ self.k(x).transpose(-1, -2)) * 0.25).softmax(-1)
        return self.head(torch.relu(self.o(att @ self.v(x)))[:, 0])


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    torch.manual_seed(0)
    model, x = AttentionHead().eval(), torch.zeros(2, 5, 16)
    path = tmp_path_factory.mktemp("dynamic") / "float.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}}, opset_version=17, dynamo=False)  # fmt: skip
    return path


def _every_tensor(model, feeds):
    """Every node output of ``model`` as onnxruntime computes it (graph optimisations off),
    with the initializers and feeds: name -> array."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [o for n in m.graph.node for o in n.output if o]
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    env = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    env.update(feeds)
    env.update(zip(names, sess.run(None, feeds), strict=True))
    return env


def _recompute(model, env) -> dict:
    """Run every node hwsim.qops supports on the tensors ORT saw; assert each output equal bit
    for bit. Returns ``(domain, op_type) -> count``."""
    seen: dict = {}
    for node in model.graph.node:
        key = ("" if node.domain in ("", "ai.onnx") else node.domain, node.op_type)
        if key not in qops.SUPPORTED:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        ins = [env[i] if i else None for i in node.input]
        got = qops.run_node(node.op_type, node.domain, attrs, ins, isa="auto")
        for g, name in zip(got, node.output, strict=True):
            assert differing(np.asarray(g), np.asarray(env[name])) == 0, (node.op_type, name)
        seen[key] = seen.get(key, 0) + 1
    return seen


@pytest.mark.parametrize("per_channel", [False, True], ids=["per_tensor", "per_channel"])
@pytest.mark.parametrize("weight_type", ["QInt8", "QUInt8"])
def test_quantize_dynamic_model_node_by_node_equals_onnxruntime(
    float_model, tmp_path, per_channel, weight_type
):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    assert {"Gemm", "MatMul"} <= {n.op_type for n in onnx.load(float_model).graph.node}
    qpath = tmp_path / "dynamic.onnx"
    quantize_dynamic(float_model, qpath, per_channel=per_channel,
                     weight_type=getattr(QuantType, weight_type))  # fmt: skip
    rng = np.random.default_rng(7)
    feeds = {"x": (rng.standard_normal((3, 5, 16)) * 2).astype(F32)}
    opts = ort.SessionOptions()  # default: ORT_ENABLE_ALL
    opts.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    fused = ort.InferenceSession(os.fspath(qpath), opts, providers=["CPUExecutionProvider"])
    y = fused.run(None, feeds)[0]
    optimized = onnx.load(opts.optimized_model_filepath)

    env = _every_tensor(optimized, feeds)
    assert differing(env["y"], y) == 0  # the saved graph runs the same kernels
    seen = _recompute(optimized, env)
    assert seen == {("", "DynamicQuantizeLinear"): 1, (MS, "MatMulIntegerToFloat"): 3,
                    (MS, "DynamicQuantizeMatMul"): 2}  # fmt: skip

    unfused = onnx.load(qpath)
    env = _every_tensor(unfused, feeds)
    assert differing(env["y"], y) == 0  # ORT's fusion does not change a bit
    seen = _recompute(unfused, env)
    assert seen == {("", "DynamicQuantizeLinear"): 3, ("", "MatMulInteger"): 5}
    assert {n.op_type for n in unfused.graph.node} >= {"MatMul", "Cast", "Mul"}
