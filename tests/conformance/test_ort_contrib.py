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
* DQ -> MatMul -> Q                  => QLinearMatMul             (uint8 activations)
* DQ -> Conv(+bias) -> Q, per-channel weight DQ => Transpose -> com.microsoft QLinearConv (NHWC)
  -> Transpose                                                    (uint8 activations)
* int8 activations: DQ -> MatMul / Conv stay unfused (float MatMul / Conv between DQ and Q)
* DQ -> MaxPool -> Q, same Q/DQ parameters => MaxPool on the int8/uint8 tensor (QDQ dropped);
  with different parameters ORT keeps DQ -> MaxPool (float) -> Q.
Every fused chain's output equals the corresponding qops function bit for bit.
"""

from __future__ import annotations

import os
from functools import partial

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
    got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs], isa="auto")[0]
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


# --- QuantizeLinear / DequantizeLinear: the ends of every QDQ chain ----------------------------
@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint4", "int4"])
@pytest.mark.parametrize("per_axis", [False, True])
def test_quantize_dequantize_linear_equal_onnxruntime(dtype, per_axis):
    """x -> QuantizeLinear -> (Cast to int32, DequantizeLinear): exact ties (k + 1/2) * scale,
    values beyond the range, +-inf and NaN, per-tensor and per-axis (axis 0)."""
    import ml_dtypes

    dt = np.dtype(getattr(ml_dtypes, dtype, None) or dtype)
    fmt = qops.int_format(dt)
    k = np.arange(fmt.min - 3, fmt.max + 4, dtype=np.float64)
    k = k[:: max(1, len(k) // 300)]
    special = [np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, -0.0]
    rows = [np.concatenate([k, k + 0.5, special]) * m for m in (0.25, 0.1, 3.0)]
    x = np.stack(rows).astype(np.float32)
    if per_axis:
        scale = np.array([0.25, 0.1, 3.0], np.float32)
        zp = np.array([fmt.min + 1, 0, fmt.max // 2 + 1]).astype(dt)
    else:
        scale, zp = np.float32(0.25), np.array(fmt.min + 1).astype(dt)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=0),
        helper.make_node("Cast", ["q"], ["q32"], to=TensorProto.INT32),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], axis=0),
    ]
    graph = helper.make_graph(
        nodes,
        "qdq",
        [_vi("x", x)],
        [
            helper.make_tensor_value_info("q32", TensorProto.INT32, None),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, None),
        ],
        [numpy_helper.from_array(np.asarray(scale), "s"), numpy_helper.from_array(zp, "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    q32, d = sess.run(None, {"x": x})
    q = qops.run_node("QuantizeLinear", "", {"axis": 0}, [x, scale, zp])[0]
    assert _same(q.astype(np.int32), q32) == 0
    deq = qops.run_node("DequantizeLinear", "", {"axis": 0}, [q.astype(dt), scale, zp])[0]
    assert _same(deq, d) == 0


# --- standard integer ops beyond the backend tests: geometry and broadcasting ---------------------
CONV_CASES = [
    # (x shape, w shape, attrs, per-channel weights)
    ((2, 6, 9, 9), (4, 3, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, True),
    ((1, 3, 10, 8), (5, 3, 3, 2), {"strides": [2, 1], "dilations": [1, 2]}, True),
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    ((1, 2, 6, 5), (3, 2, 2, 3), {"auto_pad": "SAME_LOWER"}, False),
    ((2, 3, 17), (4, 3, 5), {"pads": [2, 1], "strides": [3]}, True),
    ((1, 8, 5, 5), (16, 8, 1, 1), {}, False),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("x_type", INT8)
def test_qlinear_conv_and_conv_integer_geometry(case, x_type):
    x_shape, w_shape, attrs, per_channel = CONV_CASES[case]
    rng = np.random.default_rng(case)
    M = w_shape[0]
    x, w = _q(rng, x_type, x_shape), _q(rng, np.int8, w_shape)
    w_s = rng.uniform(0.001, 0.02, M if per_channel else 1).astype(np.float32)
    inputs = [("x", x), ("x_scale", _draw_scale(rng)), ("x_zero_point", _zp(rng, x_type, "random")),
              ("w", w), ("w_scale", w_s), ("w_zero_point", np.zeros(w_s.size, np.int8)),
              ("y_scale", np.float32(rng.uniform(0.05, 0.5))),
              ("y_zero_point", _zp(rng, x_type, "random")),
              ("B", rng.integers(-20000, 20000, M).astype(np.int32))]  # fmt: skip
    check("QLinearConv", inputs, attrs, domain="", const=("w", "w_scale", "w_zero_point", "B"))
    if x_type == np.uint8:  # ORT's ConvInteger takes uint8 activations
        u = _q(rng, np.uint8, w_shape)
        check("ConvInteger", [("x", x), ("w", u), ("x_zero_point", _zp(rng, x_type, "random")),
                              ("w_zero_point", np.uint8(7))], attrs, domain="")  # fmt: skip


MATMUL_CASES = [
    ((2, 1, 5, 12), (3, 12, 4)),
    ((7, 12), (12,)),
    ((12,), (2, 12, 6)),
    ((4, 9, 33), (33, 5)),
]


@pytest.mark.parametrize("case", range(len(MATMUL_CASES)))
@pytest.mark.parametrize("types", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)],
                         ids=lambda t: f"{t[0].__name__}x{t[1].__name__}")  # fmt: skip
def test_qlinear_matmul_and_matmul_integer_broadcasting(case, types):
    a_shape, b_shape = MATMUL_CASES[case]
    ta, tb = types
    rng = np.random.default_rng(case)
    a, b = _q(rng, ta, a_shape), _q(rng, tb, b_shape)
    inputs = [("a", a), ("a_scale", _draw_scale(rng)), ("a_zero_point", _zp(rng, ta, "random")),
              ("b", b), ("b_scale", _draw_scale(rng)), ("b_zero_point", _zp(rng, tb, "random")),
              ("y_scale", np.float32(rng.uniform(0.05, 0.5))),
              ("y_zero_point", _zp(rng, ta, "random"))]  # fmt: skip
    check("QLinearMatMul", inputs, domain="")
    check("MatMulInteger", [("A", a), ("B", b), ("a_zero_point", _zp(rng, ta, "random")),
                            ("b_zero_point", _zp(rng, tb, "random"))], domain="")  # fmt: skip


def test_matmul_integer_per_row_and_per_column_zero_points():
    """Per-row A / per-column B zero points (allowed by ONNX) against plain int64 arithmetic."""
    rng = np.random.default_rng(0)
    a, b = _q(rng, np.uint8, (2, 6, 10)), _q(rng, np.int8, (10, 5))
    za = _q(rng, np.uint8, (2, 6, 1))
    zb = _q(rng, np.int8, (5,))
    got = qops.run_node("MatMulInteger", "", {}, [a, b, za, zb])[0]
    want = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    assert got.dtype == np.int32 and np.array_equal(got, want)


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
        ("A", _q(rng, dtype, shapes[0])),
        ("A_scale", sa),
        ("A_zero_point", _zp(rng, dtype, kind)),
        ("B", _q(rng, dtype, shapes[1])),
        ("B_scale", sb),
        ("B_zero_point", _zp(rng, dtype, kind)),
        ("C_scale", sc),
        ("C_zero_point", _zp(rng, dtype, kind)),
    ]
    check(op, inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_every_pair_of_values_with_tied_ratios(dtype):
    """All 256 x 256 input pairs with exact half ratios: every rounding tie, both operand
    orders (general and broadcast spans)."""
    info = np.iinfo(dtype)
    v = np.arange(info.min, info.max + 1).astype(dtype)
    for sa, sb, sc in [(0.5, 0.25, 1.0), (0.375, 0.125, 0.25), (1.5, 0.5, 2.0)]:
        for a, b in [
            (v[:, None], v[None, :]),
            (
                np.broadcast_to(v[:, None], (256, 256)).copy(),
                np.broadcast_to(v[None, :], (256, 256)).copy(),
            ),
        ]:
            inputs = [
                ("A", a),
                ("A_scale", np.float32(sa)),
                ("A_zero_point", dtype(3)),
                ("B", b),
                ("B_scale", np.float32(sb)),
                ("B_zero_point", dtype(7)),
                ("C_scale", np.float32(sc)),
                ("C_zero_point", dtype(5)),
            ]
            check("QLinearAdd", inputs)
            check("QLinearMul", inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_beyond_int32_gives_the_type_minimum(dtype):
    """A sum beyond int32 converts to INT32_MIN (x86 ``cvtps2dq``), which saturates to the
    type's minimum -- even for a huge positive sum. hwsim reproduces it."""
    a = np.array([1, 100, -3], dtype) if dtype == np.int8 else np.array([1, 100, 250], dtype)
    inputs = [
        ("A", a),
        ("A_scale", np.float32(1e6)),
        ("A_zero_point", dtype(0)),
        ("B", a),
        ("B_scale", np.float32(1e6)),
        ("B_zero_point", dtype(0)),
        ("C_scale", np.float32(1e-6)),
        ("C_zero_point", dtype(0)),
    ]
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
    inputs = [
        ("X", x),
        ("X_scale", xs),
        ("X_zero_point", _zp(rng, dtype, kind)),
        ("Y_scale", ys),
        ("Y_zero_point", _zp(rng, dtype, kind)),
    ]
    check(
        "QLinearLeakyRelu",
        inputs,
        {"alpha": alpha},
        const=("X_scale", "X_zero_point", "Y_scale", "Y_zero_point"),
    )


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
    inputs = [
        ("X", _q(rng, dtype, x_shape)),
        ("x_scale", xs),
        ("x_zero_point", _zp(rng, dtype, kind)),
        ("y_scale", ys),
        ("y_zero_point", _zp(rng, dtype, kind)),
    ]
    check("QLinearGlobalAveragePool", inputs, {"channels_last": channels_last})


def test_qlinear_global_average_pool_rejects_what_mlas_rejects():
    x = np.zeros((1, 1, 4, 4), np.uint8)
    with pytest.raises(qops.QOpError, match="computation range"):
        qops.qlinear_global_average_pool(
            x, np.float32(1), np.uint8(0), np.float32(1e-6), np.uint8(0)
        )


AVGPOOL_CASES = [
    # (input shape, attrs)
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 4, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 4, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    (
        (1, 4, 8, 8),
        {
            "kernel_shape": [2, 2],
            "strides": [1, 1],
            "auto_pad": "SAME_LOWER",
            "count_include_pad": 1,
        },
    ),
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
    inputs = [
        ("X", _q(rng, dtype, shape)),
        ("x_scale", xs),
        ("x_zero_point", _zp(rng, dtype, kind)),
        ("y_scale", ys),
        ("y_zero_point", _zp(rng, dtype, kind)),
    ]
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


@pytest.mark.parametrize(
    "types",
    [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)],
    ids=lambda t: f"{t[0].__name__}x{t[1].__name__}",
)
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
    inputs = [
        ("A", a),
        ("a_scale", a_s),
        ("a_zero_point", _zp(rng, ta, kind)),
        ("B", b),
        ("b_scale", b_s),
        ("b_zero_point", b_z),
        ("C", c),
        ("y_scale", y_s),
        ("y_zero_point", y_z),
    ]
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
    got0 = qops.run_node(op_type, domain, attrs, [v for _, v in first], isa="auto")[0]
    sess = _session(op_type, first, attrs, got0.dtype, domain)
    bad = 0
    for i in range(n):
        inputs = first if i == 0 else draw(i)
        got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs], isa="auto")[0]
        want = sess.run(None, {k: np.asarray(v) for k, v in inputs if v is not None})[0]
        bad += _same(got, want)
    return bad


STRESS_BINARY = [
    ((256,), (256,)),
    ((), (256,)),
    ((256,), ()),
    ((16, 1), (16, 16)),
    ((16, 16), (1, 16)),
]


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shapes", STRESS_BINARY, ids=str)
def test_qlinear_binary_many_parameters(op, dtype, shapes):
    rng = np.random.default_rng(len(shapes[0]) * 10 + len(shapes[1]) + (op == "QLinearMul"))
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)

    def values(shape):
        return v.reshape(shape) if int(np.prod(shape)) == 256 else _q(rng, dtype, shape)

    def draw(i):
        return [
            ("A", values(shapes[0])),
            ("A_scale", _draw_scale(rng)),
            ("A_zero_point", _zp(rng, dtype, "random")),
            ("B", values(shapes[1])),
            ("B_scale", _draw_scale(rng)),
            ("B_zero_point", _zp(rng, dtype, "random")),
            ("C_scale", _draw_scale(rng)),
            ("C_zero_point", _zp(rng, dtype, "random")),
        ]

    assert _stress(op, draw, 400) == 0


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_global_average_pool_many_parameters(dtype):
    rng = np.random.default_rng(7)

    def draw(i):
        ys = _draw_scale(rng)
        xs = np.float32(ys * 49 * np.float32(rng.choice([0.5, 1.5, 0.37, 2.0, 0.1, 1 / 3])))
        return [
            ("X", _q(rng, dtype, (2, 32, 7, 7))),
            ("x_scale", xs),
            ("x_zero_point", _zp(rng, dtype, "random")),
            ("y_scale", ys),
            ("y_zero_point", _zp(rng, dtype, "random")),
        ]

    assert _stress("QLinearGlobalAveragePool", draw, 400) == 0


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("op", ["QLinearLeakyRelu", "QLinearAveragePool"])
def test_lookup_and_pool_many_parameters(dtype, op):
    rng = np.random.default_rng(11 + (op == "QLinearAveragePool"))
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(1, 4, 8, 8)
    attrs = (
        {"alpha": 0.1}
        if op == "QLinearLeakyRelu"
        else {"kernel_shape": [2, 3], "pads": [1, 1, 0, 1], "strides": [1, 2]}
    )

    def draw(i):
        return [
            ("X", v),
            ("X_scale", _draw_scale(rng)),
            ("X_zero_point", _zp(rng, dtype, "random")),
            ("Y_scale", _draw_scale(rng)),
            ("Y_zero_point", _zp(rng, dtype, "random")),
        ]

    assert _stress(op, draw, 400, attrs) == 0


@pytest.mark.parametrize("dtype", INT8)
def test_qgemm_many_parameters(dtype):
    rng = np.random.default_rng(13)

    def draw(i):
        return [
            ("A", _q(rng, dtype, (8, 40))),
            ("a_scale", _draw_scale(rng)),
            ("a_zero_point", _zp(rng, dtype, "random")),
            ("B", _q(rng, np.int8, (40, 16))),
            ("b_scale", np.array([_draw_scale(rng) for _ in range(16)], np.float32)),
            ("b_zero_point", np.zeros(16, np.int8)),
            ("C", rng.integers(-5000, 5000, 16).astype(np.int32)),
            ("y_scale", _draw_scale(rng)),
            ("y_zero_point", _zp(rng, dtype, "random")),
        ]

    assert _stress("QGemm", draw, 200, {"alpha": 0.3}) == 0


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
def _init(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


def _chain(op, dtype, rng):
    """A float QDQ graph ``DequantizeLinear -> op -> QuantizeLinear``: (nodes, initializers,
    quantized feeds, the qops call that must equal ORT's output or None, the op types ORT's
    optimised graph must consist of)."""
    xs, ws, ys = (np.float32(v) for v in rng.uniform(0.005, 0.05, 3))
    xz, yz = _zp(rng, dtype, "random"), _zp(rng, dtype, "random")
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])]
    inits = [_init("xs", xs), _init("xz", xz), _init("ys", ys), _init("yz", yz)]
    x = _q(rng, dtype, (6, 24) if op in ("Gemm", "MatMul") else (2, 4, 6, 6))
    feeds = {"x": x}
    q_out = ["yf", "ys", "yz"]
    if op in ("Add", "Mul", "Concat"):
        b, bz = _q(rng, dtype, x.shape), _zp(rng, dtype, "random")
        feeds["b"] = b
        nodes.append(helper.make_node("DequantizeLinear", ["b", "ws", "bz"], ["bf"]))
        inits += [_init("ws", ws), _init("bz", bz)]
        if op == "Concat":
            nodes.append(helper.make_node(op, ["xf", "bf"], ["yf"], axis=1))
            expected = partial(qops.qlinear_concat, ys, yz, x, xs, xz, b, ws, bz, axis=1)
        else:
            nodes.append(helper.make_node(op, ["xf", "bf"], ["yf"]))
            fn = qops.qlinear_add if op == "Add" else qops.qlinear_mul
            expected = partial(fn, x, xs, xz, b, ws, bz, ys, yz)
        kernels = {(MS, f"QLinear{op}")}
    elif op in ("GlobalAveragePool", "AveragePool", "LeakyRelu"):
        attrs = {
            "AveragePool": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
            "LeakyRelu": {"alpha": 0.2},
        }.get(op, {})
        nodes.append(helper.make_node(op, ["xf"], ["yf"], **attrs))
        fn = {
            "GlobalAveragePool": qops.qlinear_global_average_pool,
            "AveragePool": qops.qlinear_average_pool,
            "LeakyRelu": qops.qlinear_leaky_relu,
        }[op]
        expected = partial(fn, x, xs, xz, ys, yz, **attrs)
        kernels = {(MS, f"QLinear{op}")}
    elif op == "MaxPool":  # Q with the DQ's parameters: ORT drops the pair
        attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
        nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], **attrs))
        q_out = ["yf", "xs", "xz"]
        expected = partial(qops.max_pool, x, **attrs)
        kernels = {("", "MaxPool")}
    elif op == "MaxPool-rescaled":  # different Q parameters: ORT keeps the float MaxPool
        nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], kernel_shape=[2, 2]))
        expected = None
        kernels = {("", "DequantizeLinear"), ("", "MaxPool"), ("", "QuantizeLinear")}
    else:  # Gemm, MatMul, Conv with per-channel int8 weights (and an int32 bias)
        w = _q(rng, np.int8, (5, 4, 3, 3) if op == "Conv" else (24, 5))
        w_s = rng.uniform(0.002, 0.02, 5).astype(np.float32)
        w_z = np.zeros(5, np.int8)
        bias = rng.integers(-3000, 3000, 5).astype(np.int32)
        inits += [_init("w", w), _init("w_s", w_s), _init("w_z", w_z), _init("bias", bias)]
        inits.append(_init("bias_s", (xs * w_s).astype(np.float32)))
        axis = 0 if op == "Conv" else 1
        nodes.append(helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=axis))
        if op != "MatMul":
            nodes.append(helper.make_node("DequantizeLinear", ["bias", "bias_s"], ["bf"], axis=0))
        if op == "MatMul":
            nodes.append(helper.make_node("MatMul", ["xf", "wf"], ["yf"]))
            expected = partial(qops.qlinear_matmul, x, xs, xz, w, w_s, w_z, ys, yz, isa="auto")
            kernels = {("", "QLinearMatMul")}
        elif op == "Gemm":
            nodes.append(helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"]))
            expected = partial(qops.qgemm, x, xs, xz, w, w_s, w_z, bias, ys, yz, isa="auto")
            kernels = {(MS, "QGemm")}
        else:  # ORT moves QLinearConv to NHWC: com.microsoft QLinearConv between Transposes
            nodes.append(helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], pads=[1] * 4))
            conv = partial(qops.qlinear_conv, x, xs, xz, w, w_s, w_z, ys, yz, bias)
            expected = partial(conv, pads=[1, 1, 1, 1], isa="auto")
            kernels = {("", "Transpose"), (MS, "QLinearConv")}
        if dtype == np.int8 and op != "Gemm":  # x86: int8 activations stay unfused
            expected = None
            kernels = {("", "DequantizeLinear"), ("", op), ("", "QuantizeLinear")}
    nodes.append(helper.make_node("QuantizeLinear", q_out, ["y"]))
    return nodes, inits, feeds, expected, kernels


CHAINS = [
    "Add",
    "Mul",
    "GlobalAveragePool",
    "AveragePool",
    "Concat",
    "LeakyRelu",
    "MaxPool",
    "MaxPool-rescaled",
    "Gemm",
    "MatMul",
    "Conv",
]


@pytest.mark.parametrize("op", CHAINS)
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    rng = np.random.default_rng(CHAINS.index(op) + 100 * (dtype == np.int8))
    nodes, inits, feeds, expected, kernels = _chain(op, dtype, rng)
    graph_inputs = [_vi(n, v) for n, v in feeds.items()]
    out = [
        helper.make_tensor_value_info("y", helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), None)
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "qdq", graph_inputs, out, inits),
        opset_imports=[helper.make_opsetid("", 21)],
    )
    model.ir_version = 9
    opts = ort.SessionOptions()  # default: ORT_ENABLE_ALL
    opts.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    want = sess.run(None, feeds)[0]
    optimized = onnx.load(opts.optimized_model_filepath)
    assert {(n.domain, n.op_type) for n in optimized.graph.node} == kernels
    if expected is not None:
        assert _same(expected(), want) == 0
