"""hwsim.graph on its own: one tiny ONNX model per supported op type (issue 12).

Each model is built with onnx.helper, imported, and checked twice: the IR node (op, attrs,
folded parameters computed here by hand in float64) and ``run_float`` against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hwsim.execute import run_float
from hwsim.graph import ModelImportError, Op, import_model
from hwsim.graph.onnx_import import SUPPORTED, SUPPORTED_TEXT
from hwsim.numerics import IntFormat

f32 = np.float32
RNG = np.random.default_rng(12)


def _model(nodes, inits=None, in_shape=("N", 2, 5, 5), out="y", opset=17, extra_opsets=(),
           out_rank=None):
    inits = inits or {}
    out_rank = len(in_shape) if out_rank is None else out_rank
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * out_rank)],
        [v if isinstance(v, onnx.TensorProto) else numpy_helper.from_array(v, k)
         for k, v in inits.items()],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", opset), *extra_opsets]
    )
    m.ir_version = 8
    return m


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(f32)


def _check_ort(model, x, graph=None, rtol=1e-5, atol=1e-5):
    onnx.checker.check_model(model)
    g = graph or import_model(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = s.run(None, {"x": x})[0]
    got = run_float(g, x)[g.output]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)
    return g


def _only(g, op):
    ns = [n for n in g.nodes if n.op is op]
    assert len(ns) == 1, [n.op for n in g.nodes]
    return ns[0]


def _w(*shape):
    return RNG.normal(0, 0.5, shape).astype(f32)


# --- Conv ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, cin, cout, k",
    [
        (dict(), 2, 3, 3),
        (dict(strides=[2, 1], pads=[1, 0, 1, 2]), 2, 3, 3),
        (dict(dilations=[2, 1], pads=[2, 1, 2, 1]), 2, 3, 3),
        (dict(group=2, pads=[1, 1, 1, 1]), 4, 6, 3),
        (dict(group=4, pads=[1, 1, 1, 1], strides=[2, 2]), 4, 4, 3),  # depthwise
        (dict(auto_pad="VALID"), 2, 2, 2),
        (dict(kernel_shape=[1, 1]), 2, 5, 1),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(kw, cin, cout, k, bias):
    g_ = kw.get("group", 1)
    inits = {"w": _w(cout, cin // g_, k, k)}
    ins = ["x", "w"]
    if bias:
        inits["b"] = _w(cout)
        ins.append("b")
    m = _model([helper.make_node("Conv", ins, ["y"], name="conv", **kw)], inits,
               in_shape=("N", cin, 6, 7))
    g = _check_ort(m, _x((2, cin, 6, 7)))
    n = _only(g, Op.CONV)
    assert n.name == "conv" and n.inputs == ("x",) and n.output == "y"
    np.testing.assert_array_equal(n.weight, inits["w"])
    if bias:
        np.testing.assert_array_equal(n.bias, inits["b"])
    else:
        assert n.bias is None
    assert n.attrs["strides"] == tuple(kw.get("strides", (1, 1)))
    assert n.attrs["pads"] == tuple(kw.get("pads", (0, 0, 0, 0)))
    assert n.attrs["dilations"] == tuple(kw.get("dilations", (1, 1)))
    assert n.attrs["group"] == g_
    assert n.wq is None and g.input == "x" and g.input_shape == (cin, 6, 7)


@settings(max_examples=15)
@given(
    s=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    p=st.tuples(*[st.integers(0, 2)] * 4),
    d=st.tuples(st.integers(1, 2), st.integers(1, 2)),
    k=st.integers(1, 3),
    grp=st.sampled_from([1, 2]),
)
def test_conv_attributes_match_onnxruntime(s, p, d, k, grp):
    cin, cout = 2, 4
    m = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c", strides=list(s),
                          pads=list(p), dilations=list(d), group=grp)],
        {"w": _w(cout, cin // grp, k, k), "b": _w(cout)},
        in_shape=("N", cin, 7, 6),
    )
    _check_ort(m, _x((2, cin, 7, 6)))


# --- Gemm / MatMul ---------------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("alpha, beta", [(1.0, 1.0), (0.5, 2.0), (-1.5, 0.25)])
def test_gemm(trans_b, alpha, beta):
    wt = _w(3, 4)  # (O, K)
    b = _w(3)
    inits = {"w": wt if trans_b else np.ascontiguousarray(wt.T), "b": b}
    m = _model(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc", transB=trans_b,
                          alpha=alpha, beta=beta)],
        inits,
        in_shape=("N", 4),
    )
    g = _check_ort(m, _x((3, 4)))
    n = _only(g, Op.DENSE)
    # IR: y = x @ W.T + b with W (O, K): alpha into W, beta into b
    np.testing.assert_allclose(n.weight, wt.astype(np.float64) * alpha, rtol=1e-7)
    np.testing.assert_allclose(n.bias, b.astype(np.float64) * beta, rtol=1e-7)
    assert n.weight.shape == (3, 4) and n.weight.dtype == f32


def test_gemm_without_bias():
    m = _model([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)],
               {"w": _w(2, 4)}, in_shape=("N", 4))
    g = _check_ort(m, _x((3, 4)))
    assert _only(g, Op.DENSE).bias is None


def test_matmul_constant_weight():
    w = _w(5, 3)  # (K, O)
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w},
               in_shape=("N", 5))
    g = _check_ort(m, _x((4, 5)))
    n = _only(g, Op.DENSE)
    np.testing.assert_array_equal(n.weight, w.T)
    assert n.bias is None


# --- activations and elementwise -------------------------------------------------------------
def test_relu():
    g = _check_ort(_model([helper.make_node("Relu", ["x"], ["y"], name="r")]), _x((2, 2, 5, 5)))
    assert _only(g, Op.RELU).inputs == ("x",)


@pytest.mark.parametrize(
    "opset, kind, lo, hi",
    [(13, "inputs", -0.5, 0.75), (13, "min-only", 0.0, None), (6, "attrs", -0.25, 0.5),
     (13, "none", None, None)],
)
def test_clip(opset, kind, lo, hi):
    inits = {}
    if kind == "attrs":
        node = helper.make_node("Clip", ["x"], ["y"], name="cl", min=lo, max=hi)
    elif kind == "inputs":
        inits = {"lo": np.array(lo, f32), "hi": np.array(hi, f32)}
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="cl")
    elif kind == "min-only":
        inits = {"lo": np.array(lo, f32)}
        node = helper.make_node("Clip", ["x", "lo"], ["y"], name="cl")
    else:
        node = helper.make_node("Clip", ["x"], ["y"], name="cl")
    g = _check_ort(_model([node], inits, opset=opset), _x((2, 2, 5, 5)))
    n = _only(g, Op.CLIP)
    assert n.attrs["min"] == (lo if lo is not None else -np.inf)
    assert n.attrs["max"] == (hi if hi is not None else np.inf)


def test_add_two_activations():
    m = _model([helper.make_node("Relu", ["x"], ["r"], name="r"),
                helper.make_node("Add", ["x", "r"], ["y"], name="add")])
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert _only(g, Op.ADD).inputs == ("x", "r")


@pytest.mark.parametrize("cshape", [(), (1, 3, 1, 1), (3, 1, 1)])
def test_add_constant_folds_into_conv_bias(cshape):
    w, b = _w(3, 2, 1, 1), _w(3)
    c = RNG.normal(0, 1, cshape).astype(f32)
    m = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"),
         helper.make_node("Add", ["c", "k"], ["y"], name="add")],
        {"w": w, "b": b, "k": c},
    )
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert [n.op for n in g.nodes] == [Op.CONV]
    n = g.nodes[0]
    np.testing.assert_allclose(n.bias, b.astype(np.float64) + np.ravel(c), rtol=1e-6)
    np.testing.assert_array_equal(n.weight, w)
    assert n.output == "y"


def test_add_constant_to_dense_and_constant_first():
    w, c = _w(2, 3), _w(2)
    m = _model(
        [helper.make_node("MatMul", ["x", "w"], ["d"], name="mm"),
         helper.make_node("Add", ["k", "d"], ["y"], name="add")],
        {"w": np.ascontiguousarray(w.T), "k": c},
        in_shape=("N", 3),
    )
    g = _check_ort(m, _x((2, 3)))
    np.testing.assert_array_equal(_only(g, Op.DENSE).bias, c)


@pytest.mark.parametrize("cshape", [(), (1, 3, 1, 1)])
def test_mul_constant_folds_into_conv(cshape):
    w, b = _w(3, 2, 3, 3), _w(3)
    c = RNG.uniform(-2, 2, cshape).astype(f32)
    m = _model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c", "k"], ["y"], name="mul")],
        {"w": w, "b": b, "k": c},
    )
    g = _check_ort(m, _x((2, 2, 5, 5)))
    n = _only(g, Op.CONV)
    assert len(g.nodes) == 1
    cv = np.broadcast_to(np.ravel(c).astype(np.float64), (3,))
    np.testing.assert_allclose(n.weight, w * cv[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(n.bias, b * cv, rtol=1e-6)


@pytest.mark.parametrize("cshape", [(), (1, 2, 1, 1), (2,)])
def test_mul_constant_standalone(cshape):
    # after a ReLU (nothing to fold into): a MUL node holding c
    c = RNG.uniform(-2, 2, cshape).astype(f32)
    if cshape == (2,):  # per-channel along the last axis of an (N, 2) tensor
        m = _model([helper.make_node("Relu", ["x"], ["r"], name="r"),
                    helper.make_node("Mul", ["r", "k"], ["y"], name="mul")],
                   {"k": c}, in_shape=("N", 2))
        x = _x((3, 2))
    else:
        m = _model([helper.make_node("Relu", ["x"], ["r"], name="r"),
                    helper.make_node("Mul", ["r", "k"], ["y"], name="mul")], {"k": c})
        x = _x((2, 2, 5, 5))
    g = _check_ort(m, x)
    n = _only(g, Op.MUL)
    np.testing.assert_array_equal(np.ravel(n.weight), np.ravel(c))
    assert n.weight.ndim == (0 if cshape == () else 1)


def test_mul_not_folded_when_conv_output_has_two_readers():
    w, c = _w(2, 2, 1, 1), np.array(3.0, f32)
    m = _model(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
         helper.make_node("Mul", ["c", "k"], ["m"], name="mul"),
         helper.make_node("Add", ["m", "c"], ["y"], name="add")],
        {"w": w, "k": c},
    )
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert [n.op for n in g.nodes] == [Op.CONV, Op.MUL, Op.ADD]
    np.testing.assert_array_equal(g.nodes[0].weight, w)


# --- pooling and shape ops -------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [dict(kernel_shape=[2, 2], strides=[2, 2]),
     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
     dict(kernel_shape=[3, 2], pads=[0, 1, 2, 0])],
)
def test_maxpool(kw):
    g = _check_ort(_model([helper.make_node("MaxPool", ["x"], ["y"], name="mp", **kw)],
                          in_shape=("N", 2, 6, 5)),
                   _x((2, 2, 6, 5)) - 5)  # all negative: padding must never win
    n = _only(g, Op.MAXPOOL)
    assert n.attrs["kernel"] == tuple(kw["kernel_shape"])
    assert n.attrs["strides"] == tuple(kw.get("strides", (1, 1)))
    assert n.attrs["pads"] == tuple(kw.get("pads", (0, 0, 0, 0)))


@pytest.mark.parametrize("cip", [0, 1])
@pytest.mark.parametrize(
    "kw",
    [dict(kernel_shape=[2, 2], strides=[2, 2]),
     dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
     dict(kernel_shape=[3, 3], pads=[0, 0, 2, 1])],
)
def test_averagepool(kw, cip):
    g = _check_ort(
        _model([helper.make_node("AveragePool", ["x"], ["y"], name="ap", count_include_pad=cip,
                                 **kw)], in_shape=("N", 2, 6, 5)),
        _x((2, 2, 6, 5)),
    )
    n = _only(g, Op.AVGPOOL)
    assert n.attrs["count_include_pad"] == cip and n.attrs["kernel"] == tuple(kw["kernel_shape"])


def test_averagepool_count_include_pad_by_hand():
    # 1x1x2x2 input of ones, kernel 2, pads 1 each side, stride 2: each output window has one
    # real pixel: count_include_pad=1 -> 1/4, 0 -> 1
    for cip, want in ((1, 0.25), (0, 1.0)):
        m = _model([helper.make_node("AveragePool", ["x"], ["y"], name="ap", kernel_shape=[2, 2],
                                     strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=cip)],
                   in_shape=("N", 1, 2, 2))
        g = import_model(m)
        out = run_float(g, np.ones((1, 1, 2, 2), f32))[g.output]
        np.testing.assert_array_equal(out, np.full((1, 1, 2, 2), want, f32))


def test_global_average_pool():
    x = _x((2, 3, 4, 5))
    g = _check_ort(_model([helper.make_node("GlobalAveragePool", ["x"], ["y"], name="gap")],
                          in_shape=("N", 3, 4, 5)), x)
    _only(g, Op.GAP)
    np.testing.assert_allclose(run_float(g, x)["y"][:, :, 0, 0], x.mean(axis=(2, 3)), rtol=1e-5)


def test_flatten():
    g = _check_ort(_model([helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=1)],
                          out_rank=2),
                   _x((2, 2, 5, 5)))
    _only(g, Op.FLATTEN)


@pytest.mark.parametrize("shape", [[0, -1], [-1, 50], [0, 10, 5]])
def test_reshape(shape):
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
               {"s": np.array(shape, np.int64)}, out_rank=len(shape))
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert _only(g, Op.RESHAPE).attrs["shape"] == tuple(shape)


@pytest.mark.parametrize("axis", [1, -3])
def test_concat(axis):
    m = _model([helper.make_node("Relu", ["x"], ["r"], name="r"),
                helper.make_node("Concat", ["x", "r", "x"], ["y"], name="cat", axis=axis)])
    g = _check_ort(m, _x((2, 2, 5, 5)))
    n = _only(g, Op.CONCAT)
    assert n.inputs == ("x", "r", "x") and n.attrs["axis"] == 1


@pytest.mark.parametrize("axis", [1, -1])
def test_softmax_last(axis):
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", axis=axis)],
               in_shape=("N", 6))
    g = _check_ort(m, _x((3, 6)) * 4)
    assert _only(g, Op.SOFTMAX).attrs["axis"] == axis


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_identity(op):
    g = _check_ort(_model([helper.make_node(op, ["x"], ["y"], name="id")]), _x((2, 2, 5, 5)))
    _only(g, Op.IDENTITY)


def test_constant_node_supplies_weights():
    w = _w(3, 2, 1, 1)
    m = _model([helper.make_node("Constant", [], ["w"], name="k",
                                 value=numpy_helper.from_array(w, "wv")),
                helper.make_node("Conv", ["x", "w"], ["y"], name="conv")])
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert [n.op for n in g.nodes] == [Op.CONV]
    np.testing.assert_array_equal(g.nodes[0].weight, w)


# --- BatchNormalization folding --------------------------------------------------------------
def _bn_model(post=None, bias=True, eps=1e-3):
    c = 3
    p = {
        "w": _w(c, 2, 3, 3),
        "g": np.array([1.5, -0.5, 0.8], f32),
        "be": np.array([0.1, -0.2, 0.3], f32),
        "m": np.array([0.05, -0.1, 0.2], f32),
        "v": np.array([0.5, 2.0, 1.1], f32),
    }
    ins = ["x", "w"]
    if bias:
        p["b"] = _w(c)
        ins.append("b")
    nodes = [helper.make_node("Conv", ins, ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "be", "m", "v"],
                              ["bn" if post else "y"], name="bn", epsilon=eps)]
    if post:
        op, k = post
        p["k"] = k
        nodes.append(helper.make_node(op, ["bn", "k"], ["y"], name="post"))
    return _model(nodes, p), p, eps


@pytest.mark.parametrize("bias", [True, False])
def test_batchnorm_folds_into_conv(bias):
    m, p, eps = _bn_model(bias=bias)
    g = _check_ort(m, _x((2, 2, 5, 5)), rtol=1e-5, atol=1e-5)
    assert [n.op for n in g.nodes] == [Op.CONV]
    n = g.nodes[0]
    k = p["g"].astype(np.float64) / np.sqrt(p["v"].astype(np.float64) + eps)
    b0 = p["b"].astype(np.float64) if bias else 0.0
    np.testing.assert_allclose(n.weight, p["w"] * k[:, None, None, None], rtol=1e-6)
    np.testing.assert_allclose(n.bias, (b0 - p["m"]) * k + p["be"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(n.attrs["bn_gamma"], p["g"])
    np.testing.assert_array_equal(n.attrs["bn_beta"], p["be"])
    np.testing.assert_allclose(n.attrs["bn_k"], k, rtol=1e-6)
    np.testing.assert_array_equal(n.attrs["weight_unfolded"], p["w"])
    assert n.output == "y"


def test_batchnorm_then_mul_scales_gamma_beta_and_k():
    c = np.array([2.0, -3.0, 0.5], f32).reshape(1, 3, 1, 1)
    m, p, eps = _bn_model(post=("Mul", c))
    g = _check_ort(m, _x((2, 2, 5, 5)))
    n = _only(g, Op.CONV)
    cv = np.ravel(c).astype(np.float64)
    k = p["g"].astype(np.float64) / np.sqrt(p["v"].astype(np.float64) + eps)
    np.testing.assert_allclose(n.attrs["bn_gamma"], p["g"] * cv, rtol=1e-6)
    np.testing.assert_allclose(n.attrs["bn_beta"], p["be"] * cv, rtol=1e-6)
    np.testing.assert_allclose(n.attrs["bn_k"], k * cv, rtol=1e-6)
    np.testing.assert_array_equal(n.attrs["weight_unfolded"], p["w"])  # stays unchanged
    np.testing.assert_allclose(n.weight, p["w"] * (k * cv)[:, None, None, None], rtol=1e-6)


def test_batchnorm_then_add_shifts_beta():
    c = np.array([0.5, -1.0, 2.0], f32).reshape(1, 3, 1, 1)
    m, p, eps = _bn_model(post=("Add", c))
    g = _check_ort(m, _x((2, 2, 5, 5)))
    n = _only(g, Op.CONV)
    np.testing.assert_allclose(n.attrs["bn_beta"], p["be"] + np.ravel(c), rtol=1e-6)
    np.testing.assert_array_equal(n.attrs["bn_gamma"], p["g"])


def test_batchnorm_without_conv_is_an_error():
    p = {k: np.ones(2, f32) for k in ("g", "be", "m", "v")}
    m = _model([helper.make_node("BatchNormalization", ["x", "g", "be", "m", "v"], ["y"],
                                 name="bn")], p)
    with pytest.raises(ModelImportError, match=r"node 'bn' \(BatchNormalization\).*Conv"):
        import_model(m)


# --- Q/DQ and QONNX Quant --------------------------------------------------------------------
def _tensor(name, dt, arr):
    return helper.make_tensor(name, dt, np.shape(arr), np.ravel(arr).tolist())


def test_qdq_weights_bias_and_activation():
    qw = np.array([[[[-128]], [[5]]], [[[127]], [[-3]]], [[[0]], [[1]]]], np.int8)  # (3,2,1,1)
    ws = np.array([0.5, 0.25, 0.125], f32)
    qb = np.array([100, -7, 0], np.int32)
    inits = {
        "qw": qw, "ws": ws, "wz": np.zeros(3, np.int8),
        "qb": qb, "bs": np.array([0.01, 0.02, 0.03], f32), "bz": np.zeros(3, np.int32),
        "xs": np.array(0.05, f32), "xz": np.array(3, np.uint8),
    }
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="xQ"),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="xDQ"),
        helper.make_node("DequantizeLinear", ["qw", "ws", "wz"], ["w"], name="wDQ", axis=0),
        helper.make_node("DequantizeLinear", ["qb", "bs", "bz"], ["b"], name="bDQ", axis=0),
        helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv"),
    ]
    m = _model(nodes, inits, opset=13)
    onnx.checker.check_model(m)
    g = import_model(m)
    assert g.quantized
    n = _only(g, Op.CONV)
    assert n.inputs == ("x",)  # the Q/DQ pair disappeared: the conv reads x
    np.testing.assert_array_equal(n.wq.q, qw.astype(np.int64))
    np.testing.assert_array_equal(n.wq.scale, ws)
    assert n.wq.fmt == IntFormat(8, True) and n.wq.per_channel and n.wq.source == "qw"
    np.testing.assert_array_equal(n.weight, qw.astype(f32) * ws[:, None, None, None])
    np.testing.assert_array_equal(n.bias_q, qb.astype(np.int64))
    tq = g.act_quant["x"]
    assert (tq.scale, tq.zero_point, tq.fmt) == (float(f32(0.05)), 3, IntFormat(8, False))
    # the float reference clamps x to (DQ(0), DQ(255)) = (-0.15, 12.6)
    lo, hi = g.float_ranges["x"]
    assert lo == float(f32(-3) * f32(0.05)) and hi == float(f32(252) * f32(0.05))


def test_qdq_int4_and_int16_activation_formats():
    for dt, fmt in ((TensorProto.INT4, IntFormat(4, True)), (TensorProto.UINT16,
                                                                IntFormat(16, False))):
        inits = {"s": np.array(0.5, f32), "z": _tensor("z", dt, 0)}
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="Q"),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="DQ"),
                 helper.make_node("Relu", ["d"], ["y"], name="r")]
        g = import_model(_model(nodes, inits, opset=21))
        assert g.act_quant["x"].fmt == fmt
        assert _only(g, Op.RELU).inputs == ("x",)


def test_qonnx_quant_on_an_activation():
    inits = {"s": np.array(0.25, f32), "z": np.array(0.0, f32), "bw": np.array(6.0, f32)}
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"),
             helper.make_node("Quant", ["r", "s", "z", "bw"], ["y"], name="qt",
                              domain="qonnx.custom_op.general", signed=0, narrow=0,
                              rounding_mode="ROUND")]
    m = _model(nodes, inits, extra_opsets=[helper.make_opsetid("qonnx.custom_op.general", 1)])
    g = import_model(m)
    tq = g.act_quant["r"]
    assert (tq.scale, tq.zero_point, tq.fmt) == (0.25, 0, IntFormat(6, False))
    assert g.output == "r"


def test_qonnx_quant_narrow_is_a_clip_to_the_narrowed_range():
    # issue 17: narrow=1 (Brevitas' default for weights) is imported, no longer rejected
    inits = {"s": np.array(0.25, f32), "z": np.array(0.0, f32), "bw": np.array(6.0, f32)}
    m = _model([helper.make_node("Quant", ["x", "s", "z", "bw"], ["y"], name="qt",
                                 domain="qonnx.custom_op.general", narrow=1)], inits,
               extra_opsets=[helper.make_opsetid("qonnx.custom_op.general", 1)])
    g = import_model(m)
    clip = _only(g, Op.CLIP)
    assert g.act_quant["x"].fmt == IntFormat(6, True)
    assert (clip.attrs["min"], clip.attrs["max"]) == (-31 * 0.25, 31 * 0.25)
    assert g.act_quant[clip.output] == g.act_quant["x"]


# --- every supported op is covered above -----------------------------------------------------
def test_supported_list_is_covered():
    covered = {"Conv", "Gemm", "MatMul", "Relu", "Clip", "Add", "Mul", "MaxPool", "AveragePool",
               "GlobalAveragePool", "Flatten", "Reshape", "Concat", "BatchNormalization",
               "Softmax", "Identity", "Dropout", "Constant", "QuantizeLinear",
               "DequantizeLinear", "Quant"}
    # issue 15 (tested in tests/graph/test_transformer_import.py)
    covered |= {"Sub", "Div", "ReduceMean", "Squeeze", "Unsqueeze", "Transpose", "Gather",
                "Slice", "Split", "LayerNormalization", "Gelu", "Sigmoid", "HardSigmoid",
                "HardSwish"}
    covered |= {"Erf", "Tanh"}  # QDQ models only (tests/graph/test_transformer_qdq.py)
    covered |= {"Resize"}  # tests/graph/test_resize.py
    covered |= {"BipolarQuant", "Trunc"}  # issue 17: tests/graph/test_qonnx_import.py
    assert set(SUPPORTED) == covered and len(SUPPORTED) == len(covered)
    # the list errors show: op types, QONNX's Quant named as such
    assert SUPPORTED_TEXT.startswith("Conv, Gemm, MatMul, ") and "Quant (QONNX)" in SUPPORTED_TEXT
    assert {o.value for o in Op} >= {"conv", "dense", "relu", "clip", "add", "mul", "maxpool",
                                    "avgpool", "gap", "flatten", "reshape", "concat", "softmax",
                                    "identity"}


# --- errors ----------------------------------------------------------------------------------
def test_unsupported_op_names_file_node_and_op(tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_model([helper.make_node("Relu", ["x"], ["r"], name="r0"),
                      helper.make_node("Tan", ["r"], ["y"], name="act7")]), str(path))
    with pytest.raises(ModelImportError) as ei:
        import_model(path)
    msg = str(ei.value)
    assert str(path) in msg and "'act7'" in msg and "Tan" in msg
    assert "unsupported op type" in msg and "Conv" in msg  # the supported list


def test_qoperator_model_is_pointed_at_the_interpreter(tmp_path):
    inits = {"xs": np.array(0.1, f32), "xz": np.array(0, np.uint8),
             "w": np.ones((1, 2, 1, 1), np.int8), "ws": np.array(0.1, f32),
             "wz": np.array(0, np.int8), "ys": np.array(0.1, f32), "yz": np.array(0, np.uint8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q"),
             helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"],
                              ["yq"], name="qc"),
             helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"], name="dq")]
    path = tmp_path / "qop.onnx"
    onnx.save(_model(nodes, inits, opset=13), str(path))
    with pytest.raises(ModelImportError, match="QLinearConv") as ei:
        import_model(path)
    assert str(path) in str(ei.value)


_BAD = [
    ("Conv", dict(auto_pad="SAME_UPPER"), "auto_pad"),
    ("MaxPool", dict(kernel_shape=[2, 2], ceil_mode=1), "ceil_mode"),
    ("MaxPool", dict(kernel_shape=[2, 2], dilations=[2, 2]), "dilated"),
    ("AveragePool", dict(kernel_shape=[2, 2], auto_pad="SAME_LOWER"), "auto_pad"),
    ("Flatten", dict(axis=2), "axis"),
    ("Gemm", dict(transA=1), "transA"),
    ("Concat", dict(axis=0), "batch axis"),
    ("Reshape", dict(allowzero=1), "allowzero"),
]


@pytest.mark.parametrize("op, kw, word", _BAD, ids=[f"{b[0]}-{b[2]}" for b in _BAD])
def test_unsupported_attribute_names_node_and_op(tmp_path, op, kw, word):
    inits, ins, shape = {}, ["x"], ("N", 2, 6, 6)
    if op == "Conv":
        inits, ins = {"w": _w(2, 2, 3, 3)}, ["x", "w"]
    elif op == "Gemm":
        inits, ins, shape = {"w": _w(2, 2)}, ["x", "w"], ("N", 2)
    elif op == "Concat":
        ins = ["x", "x"]
    elif op == "Reshape":
        inits, ins = {"s": np.array([0, -1], np.int64)}, ["x", "s"]
    path = tmp_path / "m.onnx"
    onnx.save(_model([helper.make_node(op, ins, ["y"], name="bad", **kw)], inits,
                     in_shape=shape, opset=19), str(path))
    with pytest.raises(ModelImportError) as ei:
        import_model(path)
    msg = str(ei.value)
    assert str(path) in msg and f"node 'bad' ({op})" in msg and word in msg, msg


def test_mul_of_two_activations():
    # issue 15: a mul_act op (before, an import error)
    m = _model([helper.make_node("Mul", ["x", "x"], ["y"], name="sq")])
    g = _check_ort(m, _x((2, 2, 5, 5)))
    assert _only(g, Op.MUL_ACT).inputs == ("x", "x")


def test_sub_of_two_activations_is_an_error():
    m = _model([helper.make_node("Sub", ["x", "x"], ["y"], name="sq")])
    with pytest.raises(ModelImportError, match=r"node 'sq' \(Sub\).*two activations"):
        import_model(m)


def test_softmax_not_last():
    # issue 15: Softmax anywhere (before, only as the last layer)
    m = _model([helper.make_node("Softmax", ["x"], ["s"], name="sm"),
                helper.make_node("Relu", ["s"], ["y"], name="r")], in_shape=("N", 4))
    _check_ort(m, _x((3, 4)))


def test_multi_input_model_is_an_error():
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "x2"], ["y"], name="add")], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelImportError, match="single-input"):
        import_model(m, source="two.onnx")


def test_unsupported_domain_is_an_error():
    m = _model([helper.make_node("Gelu", ["x"], ["y"], name="ge", domain="com.example")],
               extra_opsets=[helper.make_opsetid("com.example", 1)])
    with pytest.raises(ModelImportError, match=r"'ge' \(Gelu\).*domain"):
        import_model(m, source="dom.onnx")


@pytest.mark.parametrize("content", [b"", b"not a protobuf at all \x00\xff", None])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "x.onnx"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelImportError) as ei:
        import_model(path)
    assert str(path) in str(ei.value)


# --- edge cases of the batch axis and of old opsets -----------------------------------------
def test_reshape_keeps_the_batch_axis():
    # a model exported at batch 1 reshapes to [1, -1]: hwsim keeps the batch axis (docs:
    # "Reshape (batch axis kept)"), equal to onnxruntime at N = 1 and (N, F) for any N
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
               {"s": np.array([1, -1], np.int64)}, out_rank=2)
    g = _check_ort(m, _x((1, 2, 5, 5)))
    assert run_float(g, _x((3, 2, 5, 5)))["y"].shape == (3, 50)


def test_reshape_dropping_the_batch_axis_is_an_import_error():
    m = _model([helper.make_node("Reshape", ["x", "s"], ["y"], name="rs")],
               {"s": np.array([-1], np.int64)}, out_rank=1)
    with pytest.raises(ModelImportError, match=r"'rs' \(Reshape\)"):
        g = import_model(m)
        run_float(g, _x((3, 2, 5, 5)))


def test_softmax_opset11_on_rank3_matches_onnxruntime_or_is_rejected():
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm")], in_shape=("N", 2, 3),
               opset=11)
    try:
        g = import_model(m)
    except ModelImportError:
        return
    _check_ort(m, _x((2, 2, 3)), graph=g)


def test_softmax_opset11_on_rank3_is_rejected_naming_the_node():
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm")], in_shape=("N", 2, 3),
               opset=11)
    with pytest.raises(ModelImportError, match=r"'sm' \(Softmax\).*opset 11"):
        import_model(m)


@pytest.mark.parametrize("axis", [None, 1, -1])
def test_softmax_opset11_on_rank2_matches_onnxruntime(axis):
    kw = {} if axis is None else {"axis": axis}
    m = _model([helper.make_node("Softmax", ["x"], ["y"], name="sm", **kw)], in_shape=("N", 5),
               opset=11)
    _check_ort(m, _x((3, 5)))
