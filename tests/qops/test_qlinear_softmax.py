"""hwsim.qops.softmax against onnxruntime's com.microsoft ``QLinearSoftmax`` CPU kernel, bit for
bit: single-node sessions (graph optimisations off) over drawn shapes, axes, opsets, scales and
zero points, the extreme rows, and the attention Softmaxes of a ``quantize_static`` tiny ViT as
onnxruntime's optimised session runs them.

Findings with onnxruntime 1.32 on x86-64:

* the output step is done in double: ``nearbyint(f64(e) * floor(1/y_scale) / f64(sum))``. Of
  2,959,360 tiny-ViT outputs (20 batches of 64), the float32 quotient of the public source
  differs in 2 (float32 ties, 21.5 where the double is 21.4999995), a table from ``log`` of
  ``FLT_MAX / D`` in double instead of ``logf`` of the float32 quotient in 5 (``D = 17``),
  both together in 6, the binary's contract in none;
* ``y_scale = f32(1/255)`` gives the multiplier ``floor(1 / y_scale) = 254``; int8 outputs
  saturate at 127 (onnxruntime PR #29728; the public snapshot wraps to -128);
* a node without ``axis`` uses -1 at every opset (the schema default), opset < 13 coerces X to
  ``(prod(shape[:axis]), prod(shape[axis:]))``;
* the table is built in the constructor for a constant ``X_scale`` and per run otherwise: the
  same values;
* ``quantize_static`` QDQ Softmax fuses to ``QLinearSoftmax`` (opset 13, axis -1, uint8; int8
  activations are converted to uint8 on x86 first).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from hwsim import qops
from hwsim.qops import QOpError
from tests.qops.harness import INT8, MS, differing, value_info
from tests.strategies import ints_in

F32 = np.float32
NAMES = ("X", "X_scale", "X_zero_point", "Y_scale", "Y_zero_point")
PINNED_SCALES = [1 / 255, 1 / 256, 1 / 127, 1 / 128, 2.0**-10, 0.1, 1.0, 3.0, 100.0, 1e-6,
                 1e-30, 1e-40]  # fmt: skip


def session(inputs, attrs, const=()):
    """A one-node QLinearSoftmax session, graph optimisations off; ``inputs`` in node order,
    names in ``const`` as initializers."""
    node = helper.make_node("QLinearSoftmax", NAMES, ["Y"], domain=MS, **attrs)
    dtype = helper.np_dtype_to_tensor_dtype(inputs[0].dtype)
    named = [(n, np.asarray(v)) for n, v in zip(NAMES, inputs, strict=True)]
    graph = helper.make_graph(
        [node],
        "softmax",
        [value_info(n, v) for n, v in named if n not in const],
        [helper.make_tensor_value_info("Y", dtype, None)],
        [numpy_helper.from_array(v, n) for n, v in named if n in const],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 9
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def feeds(inputs, const=()):
    return {n: np.asarray(v) for n, v in zip(NAMES, inputs, strict=True) if n not in const}


def check(inputs, attrs, const=()):
    """hwsim (through :func:`qops.run_node`) and onnxruntime on the same node; returns Y."""
    got = qops.run_node("QLinearSoftmax", MS, attrs, list(inputs))[0]
    want = session(inputs, attrs, const).run(None, feeds(inputs, const))[0]
    assert differing(got, want) == 0, (attrs, inputs[1:], got, want)
    return got


def params(dtype, xs, ys, zx=0, zy=None):
    """``(X_scale, X_zero_point, Y_scale, Y_zero_point)``; ``zy`` defaults to the type's min."""
    zy = np.iinfo(dtype).min if zy is None else zy
    return F32(xs), np.asarray(zx, dtype), F32(ys), np.asarray(zy, dtype)


# --- drawn nodes ---------------------------------------------------------------------------------
scales = st.one_of(
    st.sampled_from(PINNED_SCALES).map(F32),
    st.floats(-7.0, 2.0).map(lambda e: F32(10.0**e)),
)


@st.composite
def nodes(draw):
    """``(inputs, attrs, const)`` of one QLinearSoftmax node."""
    dtype = draw(st.sampled_from(INT8))
    info = np.iinfo(dtype)
    rank = draw(st.integers(1, 4))
    axis = draw(st.integers(-rank, rank - 1))
    opset = draw(st.sampled_from([12, 13]))
    shape = [draw(st.integers(1, 3)) for _ in range(rank)]
    shape[axis] = draw(st.one_of(st.just(1), st.integers(1, 1024)))
    fill = draw(st.sampled_from(["random", "random", "random", "equal", "max", "min", "one_hot"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    lo = draw(ints_in(info.min, info.max))
    hi = min(info.max, lo + draw(st.sampled_from([0, 1, 3, 15, 63, 255])))
    x = rng.integers(lo, hi + 1, shape)
    if fill == "equal":
        x = np.full(shape, lo)
    elif fill in ("max", "min"):
        x = np.full(shape, getattr(info, fill))
    elif fill == "one_hot":
        x = np.full(shape, info.min)
        x.reshape(-1)[rng.integers(x.size)] = info.max
    inputs = (
        x.astype(dtype),
        draw(scales),
        np.asarray(draw(ints_in(info.min, info.max)), dtype),
        draw(scales),
        np.asarray(draw(ints_in(info.min, info.max)), dtype),
    )
    attrs = {"opset": opset}
    if axis != -1 or draw(st.booleans()):  # no axis attribute: the schema default, -1
        attrs["axis"] = axis
    const = ("X_scale", "Y_scale") if draw(st.booleans()) else ()
    return inputs, attrs, const


@given(nodes())
def test_qlinear_softmax_equals_onnxruntime(node):
    inputs, attrs, const = node
    check(inputs, attrs, const)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_softmax_many_parameters_equal_onnxruntime(dtype):
    """400 scale / zero-point draws through one session: rows of 17 (the tiny ViT's) and
    rows of 197 (ViT-B's), inputs spread over a narrow window so that most outputs are not
    saturated."""
    rng = np.random.default_rng(17)
    info = np.iinfo(dtype)
    for d in (17, 197):
        x = rng.integers(info.min, info.min + 40, (32, d)).astype(dtype)
        first = (x, *params(dtype, 0.05, 1 / 256))
        sess = session(first, {"opset": 13})
        for _ in range(200):
            xs, ys = (F32(10.0 ** rng.uniform(-4, 0.5)) for _ in range(2))
            zx, zy = rng.integers(info.min, info.max + 1, 2)
            inputs = (x, *params(dtype, xs, ys, zx, zy))
            got = qops.qlinear_softmax(*inputs, axis=-1, opset=13)
            assert differing(got, sess.run(None, feeds(inputs))[0]) == 0, (xs, ys, zx, zy)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_softmax_bulk_rows_equal_onnxruntime(dtype):
    """2^19 outputs per (row length, x_scale), y_scale 1/255: enough rounding near-ties that a
    table one float32 ulp off shows (``log`` of ``FLT_MAX / D`` in double instead of ``logf``
    of the float32 quotient gives 14 differing outputs here)."""
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype)
    for d in (17, 50, 197):
        x = rng.integers(info.min, info.min + 64, (2**19 // d, d)).astype(dtype)
        sess = session((x, *params(dtype, 0.01, 1 / 255)), {"opset": 13})
        for xs in (0.0121812, 0.01437148, 0.03, 0.07, 0.005):
            inputs = (x, *params(dtype, xs, 1 / 255))
            got = qops.qlinear_softmax(*inputs)
            assert differing(got, sess.run(None, feeds(inputs))[0]) == 0, (d, xs)


# --- extreme rows and pinned values --------------------------------------------------------------
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("fill", ["equal", "max", "min", "one_hot", "ramp"])
@pytest.mark.parametrize("d", [1, 2, 17, 1024])
def test_qlinear_softmax_extreme_rows_equal_onnxruntime(dtype, fill, d):
    info = np.iinfo(dtype)
    if fill == "ramp":
        x = np.resize(np.arange(info.min, info.max + 1), (3, d))
    elif fill == "one_hot":
        x = np.full((3, d), info.min)
        x[:, 0] = info.max
    else:
        x = np.full((3, d), {"equal": 7, "max": info.max, "min": info.min}[fill])
    for xs, ys in [(1 / 255, 1 / 255), (0.1, 1 / 256), (100.0, 1 / 127), (1e-40, 1e-40),
                   (0.4, 1e-40)]:  # fmt: skip
        check((x.astype(dtype), *params(dtype, xs, ys)), {"opset": 13, "axis": -1})


def test_y_scale_of_one_255th_multiplies_by_254():
    """``floor(1 / f32(1/255)) = 254``: a single-element row gives 254, not 255."""
    y = check((np.zeros((1, 1), np.uint8), *params(np.uint8, 0.1, 1 / 255, zy=0)), {"opset": 13})
    assert y.item() == 254


def test_int8_output_saturates_at_127():
    """zero point -128, y_scale 1/256: a certain row gives 256 - 128, saturated to 127."""
    y = check((np.zeros((1, 1), np.int8), *params(np.int8, 0.1, 1 / 256)), {"opset": 13})
    assert y.item() == 127


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
@pytest.mark.parametrize("opset", [1, 12, 13])
def test_axis_and_opset_select_the_rows(axis, opset):
    rng = np.random.default_rng(axis + 10 * opset)
    x = rng.integers(0, 40, (2, 3, 5)).astype(np.uint8)
    check((x, *params(np.uint8, 0.2, 1 / 256)), {"opset": opset, "axis": axis})
    if axis == -1:
        check((x, *params(np.uint8, 0.2, 1 / 256)), {"opset": opset})


def test_empty_input_gives_empty_output():
    x = np.zeros((0, 4), np.int8)
    assert check((x, *params(np.int8, 0.1, 1 / 256)), {"opset": 13}).shape == (0, 4)


@pytest.mark.parametrize(
    ("inputs", "kw", "match"),
    [
        ((np.zeros(3, np.int16), F32(0.1), np.int16(0), F32(0.1), np.int16(0)), {}, "int8"),
        ((np.zeros(3, np.uint8), F32(0.1), np.int8(0), F32(0.1), np.uint8(0)), {}, "X_zero_point"),
        ((np.zeros(3, np.uint8), F32(0.1), None, F32(0.1), np.int8(0)), {}, "Y_zero_point"),
        ((np.zeros(3, np.uint8), F32(0.0), None, F32(0.1), None), {}, "X_scale"),
        ((np.zeros(3, np.uint8), F32(0.1), None, F32(np.inf), None), {}, "Y_scale"),
        ((np.zeros(3, np.uint8), F32(0.1), None, F32(0.1), None), {"axis": 1}, "axis"),
        ((np.uint8(3), F32(0.1), None, F32(0.1), None), {}, "rank 0"),
    ],
)
def test_inputs_outside_the_contract_raise(inputs, kw, match):
    with pytest.raises(QOpError, match=match):
        qops.qlinear_softmax(*inputs, **kw)


# --- the attention Softmaxes of a quantize_static model ------------------------------------------
@pytest.fixture(scope="module", params=["u8", "s8"])
def vit_softmax(request, tmp_path_factory):
    """The tiny ViT quantized by ``quantize_static`` as ORT's optimised session runs it, with
    the QLinearSoftmax inputs and outputs exposed: ``(session, nodes, initializers, x)`` with 64
    input samples ``x``."""
    from tests.conformance import archs

    d = tmp_path_factory.mktemp("vit_softmax")
    archs.export_tiny("tiny_vit", d / "f.onnx")
    archs.quantize_tiny("tiny_vit", d / "f.onnx", d / "q.onnx", False, request.param)
    opts = ort.SessionOptions()  # default: ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(d / "optimized.onnx")
    ort.InferenceSession(str(d / "q.onnx"), opts, providers=["CPUExecutionProvider"])
    model = onnx.load(opts.optimized_model_filepath)
    found = [n for n in model.graph.node if (n.domain, n.op_type) == (MS, "QLinearSoftmax")]
    for n in found:
        model.graph.output.extend([onnx.ValueInfoProto(name=n.input[0]),
                                   onnx.ValueInfoProto(name=n.output[0])])  # fmt: skip
    run = ort.SessionOptions()
    run.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), run, providers=["CPUExecutionProvider"])
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return sess, found, inits, archs.tiny_inputs("tiny_vit", 64, seed=7)


def test_tiny_vit_attention_softmaxes_equal_onnxruntime(vit_softmax):
    sess, found, inits, x = vit_softmax
    assert len(found) == 2  # one per block
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"input": x}), strict=True))
    for n in found:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        assert attrs == {"opset": 13, "axis": -1}
        X, want = outs[n.input[0]], outs[n.output[0]]
        assert X.shape == (64, 4, 17, 17) and X.dtype == np.uint8
        got = qops.run_node("QLinearSoftmax", MS, attrs, [X, *(inits[i] for i in n.input[1:])])
        assert differing(got[0], want) == 0
