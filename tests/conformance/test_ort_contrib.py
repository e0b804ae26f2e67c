"""hwsim.qops against onnxruntime's CPU kernels: the com.microsoft contrib ops ORT fuses QDQ
models into, the 8-bit MaxPool, and whole QDQ chains as ORT optimises them -- bit for bit.

Every comparison builds a single-node ONNX model (``onnx.helper``; opsets ai.onnx 21 and
com.microsoft 1), runs it on ``CPUExecutionProvider`` with default session options, and
compares it with :func:`hwsim.qops.run_node` on the same seeded inputs. Scales are drawn from
four families: random log-uniform, power-of-two ratios (exact ties for the rounding), short
decimals (0.1, 0.3, ... not representable in binary) and extreme zero points.

QDQ chains (``test_qdq_chain_is_fused_into_the_emulated_kernel``): a float graph
``DequantizeLinear -> op -> QuantizeLinear`` is optimised by ORT (its optimised model is saved
with ``SessionOptions.optimized_model_filepath``) and the test asserts the kernel ORT picked.
Findings with onnxruntime 1.32 on x86-64 (AVX-512):

* DQ -> Add -> Q                     => com.microsoft QLinearAdd
* DQ -> Mul -> Q                     => com.microsoft QLinearMul
* DQ -> GlobalAveragePool -> Q       => com.microsoft QLinearGlobalAveragePool
* DQ -> AveragePool -> Q             => com.microsoft QLinearAveragePool
* DQ -> Concat -> Q                  => com.microsoft QLinearConcat
* DQ -> LeakyRelu -> Q               => com.microsoft QLinearLeakyRelu
* DQ -> Gemm(+bias) -> Q, per-channel weight DQ => com.microsoft QGemm
* DQ -> MatMul -> Q                  => QLinearMatMul
* DQ -> Conv(+bias) -> Q, per-channel weight DQ => QLinearConv
* DQ -> MaxPool -> Q, same Q/DQ parameters => MaxPool on the int8/uint8 tensor (QDQ dropped);
  with different parameters ORT keeps DQ -> MaxPool (float) -> Q.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import qops

ort.set_default_logger_severity(3)

MS = "com.microsoft"
INT8 = (np.int8, np.uint8)
SCALE_KINDS = ("random", "ties", "decimal", "extreme")


# --- harness ---------------------------------------------------------------------------------
def _vi(name: str, value: np.ndarray):
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )


def _session(op_type, inputs, attrs, out_dtype, domain=MS, const=(), n_out=1):
    names = [n if v is not None else "" for n, v in inputs]
    node = helper.make_node(
        op_type, names, [f"y{i}" for i in range(n_out)], domain=domain, **(attrs or {})
    )
    graph_inputs = [_vi(n, np.asarray(v)) for n, v in inputs if v is not None and n not in const]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in inputs if n in const]
    outs = [
        helper.make_tensor_value_info(f"y{i}", helper.np_dtype_to_tensor_dtype(out_dtype), None)
        for i in range(n_out)
    ]
    graph = helper.make_graph([node], "g", graph_inputs, outs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _same(got: np.ndarray, want: np.ndarray) -> int:
    """Number of differing elements (float32 outputs compared bit for bit)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind == "f":
        return int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
    return int(np.count_nonzero(got != want))


def check(op_type, inputs, attrs=None, domain=MS, const=()):
    """Run ``op_type`` through hwsim and onnxruntime; assert identical outputs."""
    attrs = attrs or {}
    got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs])[0]
    sess = _session(op_type, inputs, attrs, got.dtype, domain, const)
    feeds = {n: np.asarray(v) for n, v in inputs if v is not None and n not in const}
    want = sess.run(None, feeds)[0]
    assert _same(got, want) == 0, (op_type, attrs, got, want)
    return got


def _q(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def _zp(rng, dtype, kind):
    info = np.iinfo(dtype)
    if kind == "extreme":
        return dtype(info.min if rng.random() < 0.5 else info.max)
    return dtype(rng.integers(info.min, info.max + 1))


def _scales(rng, kind, n):
    if kind == "ties":  # powers of two: the ratios are exact, products land on halves
        return [np.float32(2.0 ** int(rng.integers(-8, 0))) for _ in range(n)]
    if kind == "decimal":
        return [np.float32(rng.choice([0.1, 0.3, 0.7, 0.05, 0.2, 0.9])) for _ in range(n)]
    return [np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0)))) for _ in range(n)]


# --- QLinearAdd / QLinearMul ---------------------------------------------------------------------
BINARY_SHAPES = [
    ((3, 77), (3, 77)),
    ((2, 5, 7, 9), (1, 5, 1, 1)),
    ((1, 5, 1, 1), (2, 5, 3, 3)),
    ((100,), ()),
    ((), (64,)),
    ((4, 33), (33,)),
    ((2, 70), (2, 1)),
    ((3, 1), ()),
    ((1,), (1,)),
]


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_binary(op, dtype, shapes, kind):
    rng = np.random.default_rng(hash((op, dtype.__name__, shapes, kind)) % 2**32)
    sa, sb, sc = _scales(rng, kind, 3)
    inputs = [
        ("A", _q(rng, dtype, shapes[0])), ("A_scale", sa), ("A_zero_point", _zp(rng, dtype, kind)),
        ("B", _q(rng, dtype, shapes[1])), ("B_scale", sb), ("B_zero_point", _zp(rng, dtype, kind)),
        ("C_scale", sc), ("C_zero_point", _zp(rng, dtype, kind)),
    ]  # fmt: skip
    check(op, inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_every_pair_of_values_with_tied_ratios(dtype):
    """All 256 x 256 input pairs with exact half ratios: every rounding tie, both operand
    orders (general and broadcast spans)."""
    info = np.iinfo(dtype)
    v = np.arange(info.min, info.max + 1).astype(dtype)
    for sa, sb, sc in [(0.5, 0.25, 1.0), (0.375, 0.125, 0.25), (1.5, 0.5, 2.0)]:
        for a, b in [(v[:, None], v[None, :]), (np.broadcast_to(v[:, None], (256, 256)).copy(),
                                                 np.broadcast_to(v[None, :], (256, 256)).copy())]:
            inputs = [("A", a), ("A_scale", np.float32(sa)), ("A_zero_point", dtype(3)),
                      ("B", b), ("B_scale", np.float32(sb)), ("B_zero_point", dtype(7)),
                      ("C_scale", np.float32(sc)), ("C_zero_point", dtype(5))]  # fmt: skip
            check("QLinearAdd", inputs)
            check("QLinearMul", inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_beyond_int32_gives_the_type_minimum(dtype):
    """A sum beyond int32 converts to INT32_MIN (x86 ``cvtps2dq``), which saturates to the
    type's minimum -- even for a huge positive sum. hwsim reproduces it."""
    a = np.array([1, 100, -3], dtype) if dtype == np.int8 else np.array([1, 100, 250], dtype)
    inputs = [("A", a), ("A_scale", np.float32(1e6)), ("A_zero_point", dtype(0)),
              ("B", a), ("B_scale", np.float32(1e6)), ("B_zero_point", dtype(0)),
              ("C_scale", np.float32(1e-6)), ("C_zero_point", dtype(0))]  # fmt: skip
    got = check("QLinearAdd", inputs)
    assert int(got[1]) == np.iinfo(dtype).min


def test_ort_broadcast_mode_follows_the_broadcaster():
    assert qops.ort_broadcast_mode((2, 5, 7), (1, 5, 1)) == "input1_scalar"
    assert qops.ort_broadcast_mode((1, 5, 1), (2, 5, 7)) == "input0_scalar"
    assert qops.ort_broadcast_mode((3, 1), ()) == "input0_scalar"
    assert qops.ort_broadcast_mode((4, 33), (33,)) == "general"


# --- lookup-table ops ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3333, 2.5])
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_leaky_relu(dtype, alpha, kind):
    rng = np.random.default_rng(int(alpha * 1e4) + SCALE_KINDS.index(kind))
    xs, ys = _scales(rng, kind, 2)
    x = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(16, 16)
    inputs = [("X", x), ("X_scale", xs), ("X_zero_point", _zp(rng, dtype, kind)),
              ("Y_scale", ys), ("Y_zero_point", _zp(rng, dtype, kind))]  # fmt: skip
    check("QLinearLeakyRelu", inputs, {"alpha": alpha}, const=("X_scale", "X_zero_point",
                                                                "Y_scale", "Y_zero_point"))


CONCAT_CASES = [
    # (shapes, axis, share): share[i] = input i uses the output's scale and zero point
    ([(2, 3, 4), (2, 5, 4)], 1, (False, False)),
    ([(2, 3, 4), (2, 3, 4), (2, 3, 1)], -1, (True, False, False)),
    ([(1, 8), (3, 8)], 0, (True, True)),
    ([(4, 2, 2, 2), (4, 1, 2, 2), (4, 3, 2, 2)], 1, (False, True, False)),
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(CONCAT_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_concat(dtype, case, kind):
    shapes, axis, share = CONCAT_CASES[case]
    rng = np.random.default_rng(100 * case + SCALE_KINDS.index(kind))
    (ys,) = _scales(rng, kind, 1)
    yz = _zp(rng, dtype, kind)
    inputs = [("Y_scale", ys), ("Y_zero_point", yz)]
    for i, (shape, same) in enumerate(zip(shapes, share, strict=True)):
        s, z = (ys, yz) if same else (_scales(rng, kind, 1)[0], _zp(rng, dtype, kind))
        inputs += [(f"X{i}", _q(rng, dtype, shape)), (f"s{i}", s), (f"z{i}", z)]
    check("QLinearConcat", inputs, {"axis": axis})


# --- pooling -------------------------------------------------------------------------------------
GAP_SHAPES = [(1, 3, 5, 5), (2, 16, 7, 7), (2, 4, 1, 1), (1, 2, 40, 40), (3, 5, 9), (1, 2, 3, 4, 5)]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shape", GAP_SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_global_average_pool(dtype, shape, channels_last, kind):
    rng = np.random.default_rng(sum(shape) * 7 + channels_last + 11 * SCALE_KINDS.index(kind))
    S = int(np.prod(shape[2:]))
    (ys,) = _scales(rng, kind, 1)
    ratio = 2.0 ** int(rng.integers(-4, 3)) if kind == "ties" else rng.uniform(0.05, 20)
    xs = np.float32(ys * S * ratio / S) if kind != "ties" else np.float32(ys * ratio)
    x_shape = (shape[0], *shape[2:], shape[1]) if channels_last else shape
    inputs = [("X", _q(rng, dtype, x_shape)), ("x_scale", xs),
              ("x_zero_point", _zp(rng, dtype, kind)), ("y_scale", ys),
              ("y_zero_point", _zp(rng, dtype, kind))]  # fmt: skip
    check("QLinearGlobalAveragePool", inputs, {"channels_last": channels_last})


def test_qlinear_global_average_pool_rejects_what_mlas_rejects():
    x = np.zeros((1, 1, 4, 4), np.uint8)
    with pytest.raises(qops.QOpError, match="computation range"):
        qops.qlinear_global_average_pool(x, np.float32(1), np.uint8(0), np.float32(1e-6),
                                         np.uint8(0))  # fmt: skip


AVGPOOL_CASES = [
    # (input shape, attrs)
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 4, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 4, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((1, 4, 8, 8), {"kernel_shape": [2, 2], "strides": [1, 1], "auto_pad": "SAME_LOWER",
                    "count_include_pad": 1}),  # fmt: skip
    ((2, 3, 11), {"kernel_shape": [4], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 3], "pads": [0, 1, 1, 1, 0, 1]}),
    ((2, 3, 5, 5), {"kernel_shape": [5, 5]}),  # the global-average fallback
    ((1, 2, 6, 6), {"kernel_shape": [3, 3], "channels_last": 1, "pads": [1, 0, 1, 2]}),
    ((1, 3, 600, 2), {"kernel_shape": [7, 1], "strides": [3, 1]}),  # > 512 inputs: table path
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(AVGPOOL_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_average_pool(dtype, case, kind):
    shape, attrs = AVGPOOL_CASES[case]
    rng = np.random.default_rng(case * 31 + SCALE_KINDS.index(kind))
    if attrs.get("channels_last"):
        shape = (shape[0], *shape[2:], shape[1])
    xs, ys = _scales(rng, kind, 2)
    inputs = [("X", _q(rng, dtype, shape)), ("x_scale", xs),
              ("x_zero_point", _zp(rng, dtype, kind)), ("y_scale", ys),
              ("y_zero_point", _zp(rng, dtype, kind))]  # fmt: skip
    check("QLinearAveragePool", inputs, attrs)


MAXPOOL_CASES = [
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((1, 4, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 4, 9, 9), {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 4, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((2, 3, 11), {"kernel_shape": [4], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 3], "strides": [1, 2, 2]}),
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(MAXPOOL_CASES)))
def test_max_pool_8bit(dtype, case):
    shape, attrs = MAXPOOL_CASES[case]
    rng = np.random.default_rng(case)
    check("MaxPool", [("X", _q(rng, dtype, shape))], attrs, domain="")


# --- QGemm ---------------------------------------------------------------------------------------
QGEMM_CASES = [
    # (M, K, N, attrs, per-column b, bias shape or None, requantized output)
    (5, 17, 8, {}, False, None, True),
    (5, 17, 8, {}, True, (8,), True),
    (7, 33, 4, {"transA": 1}, True, (1, 4), True),
    (3, 64, 16, {"transB": 1, "alpha": 0.5}, True, (3, 1), True),
    (4, 9, 6, {"transA": 1, "transB": 1}, False, (4, 6), True),
    (6, 300, 5, {}, True, (), True),
    (5, 17, 8, {}, True, (8,), False),
    (5, 17, 8, {"alpha": 3.0}, False, None, False),
]


@pytest.mark.parametrize("types", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)],
                         ids=lambda t: f"{t[0].__name__}x{t[1].__name__}")  # fmt: skip
@pytest.mark.parametrize("case", range(len(QGEMM_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qgemm(types, case, kind):
    ta, tb = types
    M, K, N, attrs, per_col, bias, requant = QGEMM_CASES[case]
    rng = np.random.default_rng(case * 13 + SCALE_KINDS.index(kind))
    a = _q(rng, ta, (K, M) if attrs.get("transA") else (M, K))
    b = _q(rng, tb, (N, K) if attrs.get("transB") else (K, N))
    a_s, y_s = _scales(rng, kind, 2)
    if per_col:
        b_s = np.array(_scales(rng, kind, N), np.float32)
        b_z = np.array([_zp(rng, tb, kind) for _ in range(N)], tb)
    else:
        b_s, b_z = _scales(rng, kind, 1)[0], _zp(rng, tb, kind)
    c = None if bias is None else rng.integers(-(2**20), 2**20, bias).astype(np.int32)
    y_s, y_z = (y_s, _zp(rng, ta, kind)) if requant else (None, None)
    inputs = [("A", a), ("a_scale", a_s), ("a_zero_point", _zp(rng, ta, kind)), ("B", b),
              ("b_scale", b_s), ("b_zero_point", b_z), ("C", c), ("y_scale", y_s),
              ("y_zero_point", y_z)]  # fmt: skip
    check("QGemm", inputs, attrs, const=("B", "b_scale", "b_zero_point"))


# --- many parameter draws through one session: the rare float32 rounding differences ------------
def _draw_scale(rng):
    kind = rng.integers(3)
    if kind == 0:
        return np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
    if kind == 1:  # small odd multiples of powers of two: exact ratios, many ties
        return np.float32(int(rng.choice([1, 3, 5, 7])) * 2.0 ** int(rng.integers(-10, -1)))
    return np.float32(rng.choice([0.1, 0.3, 0.7, 0.05, 0.2, 0.9, 0.01, 0.03]))


def _stress(op_type, draw, n, attrs=None, domain=MS):
    """Compare ``n`` parameter draws ``draw(i) -> inputs`` through one ORT session (every
    input a graph input); return the total number of differing elements."""
    attrs = attrs or {}
    first = draw(0)
    got0 = qops.run_node(op_type, domain, attrs, [v for _, v in first])[0]
    sess = _session(op_type, first, attrs, got0.dtype, domain)
    bad = 0
    for i in range(n):
        inputs = first if i == 0 else draw(i)
        got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs])[0]
        want = sess.run(None, {k: np.asarray(v) for k, v in inputs if v is not None})[0]
        bad += _same(got, want)
    return bad


STRESS_BINARY = [((256,), (256,)), ((), (256,)), ((256,), ()), ((16, 1), (16, 16)),
                 ((16, 16), (1, 16))]  # fmt: skip


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shapes", STRESS_BINARY, ids=str)
def test_qlinear_binary_many_parameters(op, dtype, shapes):
    rng = np.random.default_rng(len(shapes[0]) * 10 + len(shapes[1]) + (op == "QLinearMul"))
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)

    def values(shape):
        return v.reshape(shape) if int(np.prod(shape)) == 256 else _q(rng, dtype, shape)

    def draw(i):
        return [("A", values(shapes[0])), ("A_scale", _draw_scale(rng)),
                ("A_zero_point", _zp(rng, dtype, "random")), ("B", values(shapes[1])),
                ("B_scale", _draw_scale(rng)), ("B_zero_point", _zp(rng, dtype, "random")),
                ("C_scale", _draw_scale(rng)), ("C_zero_point", _zp(rng, dtype, "random"))]  # fmt: skip

    assert _stress(op, draw, 400) == 0


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_global_average_pool_many_parameters(dtype):
    rng = np.random.default_rng(7)

    def draw(i):
        ys = _draw_scale(rng)
        xs = np.float32(ys * 49 * np.float32(rng.choice([0.5, 1.5, 0.37, 2.0, 0.1, 1 / 3])))
        return [("X", _q(rng, dtype, (2, 32, 7, 7))), ("x_scale", xs),
                ("x_zero_point", _zp(rng, dtype, "random")), ("y_scale", ys),
                ("y_zero_point", _zp(rng, dtype, "random"))]  # fmt: skip

    assert _stress("QLinearGlobalAveragePool", draw, 400) == 0


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("op", ["QLinearLeakyRelu", "QLinearAveragePool"])
def test_lookup_and_pool_many_parameters(dtype, op):
    rng = np.random.default_rng(11 + (op == "QLinearAveragePool"))
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(1, 4, 8, 8)
    attrs = {"alpha": 0.1} if op == "QLinearLeakyRelu" else {
        "kernel_shape": [2, 3], "pads": [1, 1, 0, 1], "strides": [1, 2]}

    def draw(i):
        return [("X", v), ("X_scale", _draw_scale(rng)), ("X_zero_point", _zp(rng, dtype, "random")),
                ("Y_scale", _draw_scale(rng)), ("Y_zero_point", _zp(rng, dtype, "random"))]

    assert _stress(op, draw, 400, attrs) == 0


@pytest.mark.parametrize("dtype", INT8)
def test_qgemm_many_parameters(dtype):
    rng = np.random.default_rng(13)

    def draw(i):
        return [("A", _q(rng, dtype, (8, 40))), ("a_scale", _draw_scale(rng)),
                ("a_zero_point", _zp(rng, dtype, "random")), ("B", _q(rng, np.int8, (40, 16))),
                ("b_scale", np.array([_draw_scale(rng) for _ in range(16)], np.float32)),
                ("b_zero_point", np.zeros(16, np.int8)),
                ("C", rng.integers(-5000, 5000, 16).astype(np.int32)),
                ("y_scale", _draw_scale(rng)), ("y_zero_point", _zp(rng, dtype, "random"))]  # fmt: skip

    assert _stress("QGemm", draw, 200, {"alpha": 0.3}) == 0


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _chain(op, dtype, rng):
    """(float QDQ graph pieces, the quantized feeds, the qops call giving the expected output,
    the op types ORT's optimised graph must consist of)."""
    xs, ws, ys = (np.float32(v) for v in rng.uniform(0.005, 0.05, 3))
    xz, yz = _zp(rng, dtype, "random"), _zp(rng, dtype, "random")
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
    inits = [_init("xs", xs), _init("xz", xz), _init("ys", ys), _init("yz", yz)]
    shape = (2, 4, 6, 6)
    feeds = {"x": _q(rng, dtype, shape)}
    x = feeds["x"]
    if op in ("Add", "Mul", "Concat"):
        feeds["b"] = _q(rng, dtype, shape)
        bz = _zp(rng, dtype, "random")
        nodes.append(helper.make_node("DequantizeLinear", ["b", "ws", "bz"], ["bf"]))
        inits += [_init("ws", ws), _init("bz", bz)]
        extra = {"axis": 1} if op == "Concat" else {}
        nodes.append(helper.make_node(op, ["xf", "bf"], ["yf"], **extra))
        args = [x, xs, xz, feeds["b"], ws, bz, ys, yz]
        if op == "Concat":
            expected = lambda: qops.qlinear_concat(ys, yz, x, xs, xz, feeds["b"], ws, bz, axis=1)  # noqa: E731
        else:
            fn = qops.qlinear_add if op == "Add" else qops.qlinear_mul
            expected = lambda: fn(*args)  # noqa: E731
        kernels = {("com.microsoft", f"QLinear{op}")}
    elif op in ("GlobalAveragePool", "AveragePool", "LeakyRelu"):
        attrs = {"AveragePool": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                 "LeakyRelu": {"alpha": 0.2}}.get(op, {})  # fmt: skip
        nodes.append(helper.make_node(op, ["xf"], ["yf"], **attrs))
        fn = {"GlobalAveragePool": qops.qlinear_global_average_pool,
              "AveragePool": qops.qlinear_average_pool,
              "LeakyRelu": qops.qlinear_leaky_relu}[op]  # fmt: skip
        expected = lambda: fn(x, xs, xz, ys, yz, **attrs)  # noqa: E731
        kernels = {("com.microsoft", f"QLinear{op}")}
    elif op in ("MaxPool", "MaxPool-rescaled"):
        same = op == "MaxPool"
        if same:
            nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], kernel_shape=[3, 3],
                                          strides=[2, 2], pads=[1, 1, 1, 1]))  # fmt: skip
            nodes.append(helper.make_node("QuantizeLinear", ["yf", "xs", "xz"], ["y"]))
            expected = lambda: qops.max_pool(x, kernel_shape=[3, 3], strides=[2, 2],  # noqa: E731
                                             pads=[1, 1, 1, 1])  # fmt: skip
            return nodes, inits, feeds, expected, {("", "MaxPool")}
        nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], kernel_shape=[2, 2]))
        expected = None
        kernels = {("", "DequantizeLinear"), ("", "MaxPool"), ("", "QuantizeLinear")}
    elif op in ("Gemm", "MatMul", "Conv"):
        if op == "Conv":
            w = _q(rng, np.int8, (5, 4, 3, 3))
            axis, n_out = 0, 5
        else:
            feeds["x"] = x = _q(rng, dtype, (6, 24))
            w = _q(rng, np.int8, (24, 5))
            axis, n_out = 1, 5
        w_s = rng.uniform(0.002, 0.02, n_out).astype(np.float32)
        w_z = np.zeros(n_out, np.int8)
        bias = rng.integers(-3000, 3000, n_out).astype(np.int32)
        inits += [_init("w", w), _init("w_s", w_s), _init("w_z", w_z), _init("bias", bias),
                  _init("bias_s", (xs * w_s).astype(np.float32))]  # fmt: skip
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=axis))
        if op == "MatMul":
            nodes.append(helper.make_node("MatMul", ["xf", "wf"], ["yf"]))
            expected = lambda: qops.qlinear_matmul(x, xs, xz, w, w_s, w_z, ys, yz)  # noqa: E731
            kernels = {("", "QLinearMatMul")}
        else:
            nodes.append(helper.make_node("DequantizeLinear", ["bias", "bias_s"], ["bf"], axis=0))
            if op == "Gemm":
                nodes.append(helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"]))
                expected = lambda: qops.qgemm(x, xs, xz, w, w_s, w_z, bias, ys, yz)  # noqa: E731
                kernels = {("com.microsoft", "QGemm")}
            else:
                nodes.append(helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], pads=[1] * 4))
                expected = lambda: qops.qlinear_conv(  # noqa: E731
                    x, xs, xz, w, w_s, w_z, ys, yz, bias, pads=[1, 1, 1, 1]
                )
                kernels = {("", "QLinearConv")}
        if dtype == np.int8 and op != "Gemm":  # x86: int8 activations are not fused into QLinearConv/MatMul
            expected = None
            kernels = {("", "DequantizeLinear"), ("", op), ("", "QuantizeLinear")}
        elif op == "Conv":  # ORT moves QLinearConv to NHWC (com.microsoft) with Transposes
            kernels = {("", "Transpose"), (MS, "QLinearConv")}
    else:  # pragma: no cover
        raise AssertionError(op)
    nodes.append(helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"]))
    del tt
    return nodes, inits, feeds, expected, kernels


CHAINS = ["Add", "Mul", "GlobalAveragePool", "AveragePool", "Concat", "LeakyRelu", "MaxPool",
          "MaxPool-rescaled", "Gemm", "MatMul", "Conv"]  # fmt: skip


@pytest.mark.parametrize("op", CHAINS)
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    rng = np.random.default_rng(CHAINS.index(op) + 100 * (dtype == np.int8))
    nodes, inits, feeds, expected, kernels = _chain(op, dtype, rng)
    graph_inputs = [_vi(n, v) for n, v in feeds.items()]
    out = [helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)),
                                         None)]  # fmt: skip
    model = helper.make_model(helper.make_graph(nodes, "qdq", graph_inputs, out, inits),
                              opset_imports=[helper.make_opsetid("", 21)])  # fmt: skip
    model.ir_version = 9
    opts = ort.SessionOptions()  # default: ORT_ENABLE_ALL
    opts.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])  # fmt: skip
    want = sess.run(None, feeds)[0]
    optimized = onnx.load(opts.optimized_model_filepath)
    assert {(n.domain, n.op_type) for n in optimized.graph.node} == kernels
    if expected is not None:
        assert _same(expected(), want) == 0
