"""Brevitas exports (issue 17): QONNX and QCDQ from both exporters through ``hwsim run``,
against qonnx's executor (``qonnx.core.onnx_exec.execute_onnx``) and onnxruntime; QONNX node
forms hand-written with onnx.helper; errors naming the file and the node."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op.general.quant import quant as qonnx_quant
from qonnx.transformation.infer_shapes import InferShapes

from hwsim import api
from hwsim.execute import IntegerExecutor
from hwsim.graph.ir import Op
from hwsim.graph.onnx_import import ModelImportError, import_model
from hwsim.quant.store import program_from_graph

_ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("brevitas_cnn", _ROOT / "models/brevitas_cnn.py")
bc = importlib.util.module_from_spec(_spec)
sys.modules["brevitas_cnn"] = bc  # dataclasses look their module up
_spec.loader.exec_module(bc)

QONNX = "qonnx.custom_op.general"
BATCH = 4  # the dynamo exporter bakes the export batch into its Reshape
X = np.random.default_rng(17).random((3 * BATCH, 1, 8, 8), dtype=np.float32)
FLOAT_OUT = bc.Variant("qonnx", per_channel=True, out_quant=False)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Every variant Brevitas 0.13.4 exports (28) and a float-output one, built once."""
    d = tmp_path_factory.mktemp("brevitas")
    return {v: bc.export(v, d / f"{v.name}.onnx", batch=BATCH) for v in bc.VARIANTS + (FLOAT_OUT,)}


def _hwsim_run(path, tmp_path) -> np.ndarray:
    """``hwsim run`` (the API call the CLI makes) of ``path`` on ``X``: the saved outputs."""
    data, out = tmp_path / "x.npz", tmp_path / "y.npz"
    np.savez(data, x=X, y=np.zeros(len(X), np.int64))
    api.run(str(path), str(data), batch_size=BATCH, save_outputs=str(out))
    with np.load(out) as z:
        return z[z.files[0]]


def _qonnx(path) -> np.ndarray:
    mw = ModelWrapper(str(path)).transform(InferShapes())
    name, out = mw.graph.input[0].name, mw.graph.output[0].name
    return np.concatenate(
        [execute_onnx(mw, {name: X[i : i + BATCH]})[out] for i in range(0, len(X), BATCH)]
    )


def _ort(path) -> np.ndarray:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return np.concatenate(
        [s.run(None, {name: X[i : i + BATCH]})[0] for i in range(0, len(X), BATCH)]
    )


def _pre_rounded(path, out) -> str:
    """A copy of ``path`` whose float biases are replaced by what hwsim adds: each rounded to
    its layer's accumulator grid, ``f32(round_half_even(b / (sx*sw)) * sx*sw)``."""
    g = import_model(path)
    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    nodes = {n.name: n for n in m.graph.node}
    for n in g.nodes:
        if n.op not in (Op.CONV, Op.DENSE) or n.bias is None or n.bias_q is not None:
            continue
        sx = np.float64(np.float32(g.act_quant[n.inputs[0]].scale))
        step = sx * np.asarray(n.wq.scale, np.float32).astype(np.float64)
        b = np.rint(n.bias.astype(np.float64) / step) * step
        t = nodes[n.name].input[2]
        inits[t].CopyFrom(numpy_helper.from_array(b.astype(np.float32), t))
    onnx.save(m, str(out))
    return str(out)


@pytest.mark.parametrize("v", bc.VARIANTS, ids=lambda v: v.name)
def test_brevitas_export_equals_its_references(v, exports, tmp_path):
    """0 differing outputs: Int32 biases against qonnx on the file (and onnxruntime for
    QCDQ); float biases against qonnx on the file with its biases pre-rounded to the
    accumulator grid, the choice the import notes report."""
    path = exports[v]
    y = _hwsim_run(path, tmp_path)
    g = import_model(path)
    notes = " ".join(g.meta.get("import_notes", []))
    if v.int_bias:
        assert "float biases" not in notes
        assert np.array_equal(y, _qonnx(path))
        if v.fmt == "qcdq":
            assert np.array_equal(y, _ort(path))
        return
    assert "float biases rounded to the accumulator grid" in notes
    rounded = _pre_rounded(path, tmp_path / "rounded.onnx")
    if v.fmt == "qcdq" and v.dynamo:
        # the dynamo exporter lists the initializers as graph inputs: onnxruntime leaves the
        # convs unfused (float32 convs, MLAS order) with its WeightBiasQuantization's rounded float
        # bias, and fuses the classifier Gemm (QGemm); hwsim runs both as onnxruntime does
        assert np.array_equal(y, _ort(path))
        return
    assert np.array_equal(y, _qonnx(rounded))
    if v.fmt == "qcdq":  # onnxruntime's QLinearConv rounds the bias the same way
        assert np.array_equal(y, _ort(path))


def test_a_layer_without_output_quantizer_is_a_marked_float_island(exports, tmp_path):
    path = exports[FLOAT_OUT]
    g = import_model(path)
    fc = g.nodes[-1]
    assert fc.op is Op.DENSE and fc.output not in g.act_quant
    assert fc.inputs[0] in g.act_quant  # the executor dequantizes it (no import-side node)
    assert any("float islands: /fc/Gemm" in n for n in g.meta["import_notes"])
    rep = api.run(str(path), "digits", batch_size=64)
    assert [r.float_op for r in rep.layers if r.name == "/fc/Gemm"] == [True]
    assert any("float islands: /fc/Gemm" in n for n in rep.notes)  # the report says so too
    y, ref = _hwsim_run(path, tmp_path), _qonnx(path)
    # float logits: numpy's float32 GEMM against onnxruntime's (summation order)
    np.testing.assert_allclose(y, ref, rtol=0, atol=4 * np.spacing(np.abs(ref).max()))


def test_float_island_between_integer_layers_equals_qonnx(tmp_path):
    """Quant -> conv -> conv -> Quant: the first conv's output has no quantizer, so it runs as
    a float op on the dequantized input (marked float_op) and the second conv reads its float
    output (dequantize-free); the values are on power-of-two grids, so every float sum is exact
    and hwsim equals qonnx's executor bit for bit."""
    rng = np.random.default_rng(5)
    w1 = (rng.integers(-7, 8, (3, 2, 3, 3)) * 0.125).astype(np.float32)
    w2 = (rng.integers(-7, 8, (2, 3, 1, 1)) * 0.25).astype(np.float32)
    inits = {
        "s": np.float32(0.25), "z": np.float32(0), "bw": np.float32(8),
        "w1": w1, "w2": w2, "ws": np.float32(0.125), "ws2": np.float32(0.25),
        "wb": np.float32(4), "os": np.float32(0.5),
    }  # fmt: skip
    q = dict(domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")  # qonnx requires them
    nodes = [
        _quant("x", "xq", "in", signed=1, narrow=0, rounding_mode="ROUND"),
        helper.make_node("Quant", ["w1", "ws", "z", "wb"], ["w1q"], name="w1q", **q),
        helper.make_node("Quant", ["w2", "ws2", "z", "wb"], ["w2q"], name="w2q", **q),
        helper.make_node("Conv", ["xq", "w1q"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "w2q"], ["c2"], name="conv2"),
        helper.make_node("Flatten", ["c2"], ["f"], name="flat"),
        helper.make_node("Quant", ["f", "os", "z", "bw"], ["y"], name="out", **q),
    ]
    p = _qmodel(tmp_path, nodes, inits, shape=(3, 2, 4, 4))
    g = import_model(p)
    assert "c1" not in g.act_quant
    assert any("float islands: conv1" in n for n in g.meta["import_notes"])
    x = (rng.integers(-40, 40, (3, 2, 4, 4)) * 0.25).astype(np.float32)
    ex = IntegerExecutor(program_from_graph(g))
    y = ex.output(ex.run(x))
    mw = ModelWrapper(p).transform(InferShapes())
    assert np.array_equal(y, execute_onnx(mw, {"x": x})["y"])
    assert {"conv1", "conv2"} <= ex.float_ops


def test_dq_conv_without_output_quantizer_equals_onnxruntime(tmp_path):
    """A QDQ file whose last conv has no QuantizeLinear: a float conv on the dequantized
    values in MLAS's order with the file's float bias (onnxruntime rounds a bias to the
    accumulator grid only where a QuantizeLinear follows): equal to onnxruntime."""
    rng = np.random.default_rng(8)
    f = onnx.TensorProto.FLOAT
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.float32(0.02), "sx"),
        numpy_helper.from_array(np.int8(0), "zx"),
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.float32(0.003), "sw"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "sw"], ["wd"], name="wdq"),
        helper.make_node("Conv", ["xd", "wd", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["y"], name="flat"),
    ]
    gr = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", f, ["n", 3, 5, 5])],
        [helper.make_tensor_value_info("y", f, ["n", 100])],
        inits,
    )
    p = tmp_path / "dq_conv.onnx"
    onnx.save(helper.make_model(gr, opset_imports=[helper.make_opsetid("", 17)]), str(p))
    x = rng.standard_normal((4, 3, 5, 5)).astype(np.float32)
    g = import_model(str(p))
    ex = IntegerExecutor(program_from_graph(g))
    y = ex.output(ex.run(x))
    s = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
    assert np.array_equal(y, s.run(None, {"x": x})[0])
    assert "conv" in ex.float_ops


def test_weights_are_folded_to_integers_with_narrow_range(exports):
    g = import_model(exports[bc.Variant("qonnx", per_channel=True, narrow=True)])
    convs = [n for n in g.nodes if n.op is Op.CONV]
    for n in convs:
        assert n.wq.q.min() >= -7 and n.wq.q.max() <= 7 and n.wq.fmt.bits == 4
        assert n.wq.scale.shape == (16,)
    g = import_model(exports[bc.Variant("qcdq", per_channel=False, narrow=False)])
    assert [str(n.wq.fmt) for n in g.nodes if n.wq is not None] == ["int4"] * 3
    assert [str(g.act_quant[t].fmt) for t in g.act_quant if "relu" in t.lower()][:1] == ["uint4"]


# -- hand-written QONNX nodes ---------------------------------------------------------------------
def _qmodel(tmp_path, nodes, inits, name="m.onnx", shape=(1, 2, 4, 4)) -> str:
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "d"])],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(QONNX, 1)]
    )
    p = tmp_path / name
    onnx.save(m, str(p))
    return str(p)


def _quant(x, out, name, **attrs):
    return helper.make_node("Quant", [x, "s", "z", "bw"], [out], name=name, domain=QONNX, **attrs)


@pytest.mark.parametrize(
    "mode", ["ROUND", "CEIL", "FLOOR", "ROUND_TO_ZERO", "UP", "HALF_UP", "HALF_DOWN"]
)
@pytest.mark.parametrize("narrow", [0, 1])
def test_weight_quant_folds_as_qonnx_computes(tmp_path, mode, narrow):
    rng = np.random.default_rng(3)
    s = np.array([[[[0.1]]], [[[0.07]]], [[[0.25]]]], np.float32)  # per output channel
    w = (rng.integers(-20, 20, (3, 2, 3, 3)) * 0.05).astype(np.float32)  # many ties
    w[0, 0, 0, 0] = 100.0  # clamps
    inits = {
        "w": w,
        "ws": s,
        "wz": np.float32(0),
        "wb": np.float32(4),
        "s": np.float32(0.5),
        "z": np.float32(0),
        "bw": np.float32(8),
    }
    nodes = [
        _quant("x", "xq", "in"),
        helper.make_node(
            "Quant",
            ["w", "ws", "wz", "wb"],
            ["wq"],
            name="wq",
            domain=QONNX,
            signed=1,
            narrow=narrow,
            rounding_mode=mode,
        ),
        helper.make_node("Conv", ["xq", "wq"], ["c"], name="conv"),
        _quant("c", "y", "out"),
    ]
    g = import_model(_qmodel(tmp_path, nodes, inits))
    conv = g.nodes[0]
    qmode = {"ROUND_TO_ZERO": "DOWN"}.get(mode, mode)  # qonnx 1.0.0's name for np.fix
    ref = qonnx_quant(w, s, np.float32(0), np.float32(4), 1, narrow, qmode)
    assert np.array_equal(conv.weight, ref)
    assert np.array_equal(conv.wq.q, np.round(ref / s).astype(np.int64))


def _fails(tmp_path, nodes, inits, match):
    p = _qmodel(tmp_path, nodes, inits)
    with pytest.raises(ModelImportError, match=match) as e:
        import_model(p)
    assert str(e.value).startswith(p)


def test_non_integer_bit_width_is_refused_naming_file_and_node(tmp_path):
    inits = {"s": np.float32(0.5), "z": np.float32(0), "bw": np.float32(4.5)}
    _fails(
        tmp_path,
        [_quant("x", "y", "act")],
        inits,
        r"node 'act' \(Quant\): bit width 4.5 is not an integer",
    )


def test_per_channel_activation_scale_is_refused(tmp_path):
    inits = {"s": np.full((1, 2, 1, 1), 0.5, np.float32), "z": np.float32(0), "bw": np.float32(4)}
    _fails(tmp_path, [_quant("x", "y", "act")], inits, r"'act' \(Quant\): .*per-tensor")


def test_unsupported_trunc_and_bipolar_activation_are_refused_with_the_reason(tmp_path):
    inits = {
        "s": np.float32(0.5),
        "z": np.float32(0),
        "bw": np.float32(8),
        "os": np.float32(2.0),
        "ob": np.float32(6),
    }
    t = helper.make_node(
        "Trunc",
        ["x", "s", "z", "bw", "os", "ob"],
        ["y"],
        name="tr",
        domain=QONNX,
        rounding_mode="FLOOR",
    )
    _fails(tmp_path, [t], inits, r"node 'tr' \(Trunc\): Trunc is supported only on the output")
    t1 = helper.make_node(
        "Trunc", ["x", "s", "z", "bw", "ob"], ["y"], name="tr", domain=QONNX, rounding_mode="FLOOR"
    )
    _fails(tmp_path, [t1], inits, r"node 'tr' \(Trunc\): Trunc with 5 inputs \(qonnx opset 1")


def test_bipolar_weights_fold_to_plus_minus_one(tmp_path):
    w = np.array([[0.3, -0.2, 0.0, -0.0]], np.float32)
    inits = {
        "w": w,
        "ws": np.float32(0.5),
        "s": np.float32(0.5),
        "z": np.float32(0),
        "bw": np.float32(8),
    }
    nodes = [
        _quant("x", "xq", "in"),
        helper.make_node("BipolarQuant", ["w", "ws"], ["wq"], name="bq", domain=QONNX),
        helper.make_node("Gemm", ["xq", "wq"], ["g"], name="fc", transB=1),
        _quant("g", "y", "out"),
    ]
    g = import_model(_qmodel(tmp_path, nodes, inits, shape=(1, 4)))
    assert g.nodes[0].wq.q.tolist() == [[1, -1, 1, 1]]
    assert g.nodes[0].weight.tolist() == [[0.5, -0.5, 0.5, 0.5]]


def test_signed_narrow_activation_clamps_like_qonnx(tmp_path):
    """A narrow signed 4-bit activation: hwsim's integers never reach -8, as qonnx's."""
    inits = {"s": np.float32(0.25), "z": np.float32(0), "bw": np.float32(4)}
    p = _qmodel(tmp_path, [_quant("x", "y", "act", narrow=1)], inits, shape=(1, 64))
    x = np.linspace(-4, 4, 64, dtype=np.float32)[None]
    g = import_model(p)
    env = IntegerExecutor(program_from_graph(g)).run(x)
    y = env[g.output].dequantize()
    ref = qonnx_quant(x, np.float32(0.25), np.float32(0), np.float32(4), 1, 1, "ROUND")
    assert np.array_equal(y, ref) and y.min() == -7 * 0.25


def test_examples_script_variants_are_the_28_brevitas_writes():
    assert len(bc.VARIANTS) == 28 and len({v.name for v in bc.VARIANTS}) == 28
    assert os.path.isfile(_ROOT / "models/brevitas_cnn.py")


def _trunc_graph(tmp_path, pool: str, mode: str, out_bits: int, signed: int, narrow: int) -> str:
    """Quant input -> Conv (Quant weights) -> Quant (4 bits) -> AveragePool (2x2, stride 2) or
    GlobalAveragePool -> Trunc -> Flatten, as Brevitas' TruncAvgPool2d writes it (qonnx
    opset 2: Trunc's scale is the pooled tensor's scale over the window size K, its output
    scale that times 2^shift)."""
    k = 4 if pool == "AveragePool" else 16
    s_act = np.float32(0.375)
    shift = 1 if pool == "AveragePool" else 3
    inits = {
        "s": np.float32(0.25), "z": np.float32(0), "bw": np.float32(8),
        "w": (np.random.default_rng(7).integers(-7, 8, (3, 2, 3, 3)) * 0.1).astype(np.float32),
        "ws": np.float32(0.1), "wb": np.float32(4), "as": s_act, "ab": np.float32(4),
        "ts": np.float32(s_act / np.float32(k)), "tib": np.float32(4 + np.log2(k)),
        "tos": np.float32(s_act / np.float32(k) * np.float32(2.0**shift)),
        "tob": np.float32(out_bits),
    }  # fmt: skip
    q = dict(domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")
    pool_node = (
        helper.make_node(
            "AveragePool", ["a"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]
        )
        if pool == "AveragePool"
        else helper.make_node("GlobalAveragePool", ["a"], ["p"], name="pool")
    )
    nodes = [
        helper.make_node("Quant", ["x", "s", "z", "bw"], ["xq"], name="in", **q),
        helper.make_node("Quant", ["w", "ws", "z", "wb"], ["wq"], name="wq", **q),
        helper.make_node("Conv", ["xq", "wq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Quant", ["c", "as", "z", "ab"], ["a"], name="act", **q),
        pool_node,
        helper.make_node(
            "Trunc", ["p", "ts", "z", "tib", "tos", "tob"], ["t"], name="trunc", domain=QONNX,
            rounding_mode={"ROUND_TO_ZERO": "DOWN"}.get(mode, mode), signed=signed, narrow=narrow,
        ),
        helper.make_node("Flatten", ["t"], ["y"], name="flat"),
    ]  # fmt: skip
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, (5, 2, 4, 4))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", "d"])],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()],
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(QONNX, 2)]
    )
    p = tmp_path / f"trunc_{pool}_{mode}.onnx"
    onnx.save(m, str(p))
    return str(p)


@pytest.mark.parametrize("mode", ["FLOOR", "ROUND", "CEIL", "ROUND_TO_ZERO", "HALF_UP"])
@pytest.mark.parametrize(
    "pool, out_bits, signed, narrow",
    [("AveragePool", 4, 1, 0), ("GlobalAveragePool", 5, 1, 1), ("GlobalAveragePool", 3, 0, 0)],
)
def test_trunc_after_average_pool_equals_qonnx(tmp_path, mode, pool, out_bits, signed, narrow):
    """The pool's integer window sum shifted right with the Trunc's rounding and clamped to
    its output range (``trunc_int``) equals qonnx's executor (``trunc_v2``) bit for bit (the
    clamp itself: ``tests/numerics/test_qonnx.py``). ROUND_TO_ZERO is written as qonnx 1.0.0
    names it, DOWN."""
    p = _trunc_graph(tmp_path, pool, mode, out_bits, signed, narrow)
    g = import_model(p)
    (node,) = [n for n in g.nodes if n.op in (Op.AVGPOOL, Op.GAP)]
    assert node.attrs["trunc"]["mode"] == mode
    x = (np.random.default_rng(11).integers(-60, 60, (5, 2, 4, 4)) * 0.1).astype(np.float32)
    x[0] = 30.0  # saturates the activation: the sums reach the Trunc's clamp
    ex = IntegerExecutor(program_from_graph(g))
    y = ex.output(ex.run(x))
    mw = ModelWrapper(p).transform(InferShapes())
    ref = execute_onnx(mw, {"x": x})["y"]
    assert np.array_equal(y, ref)
    assert len(np.unique(ref)) > 3


_QONNX_NAME = {"ROUND_TO_ZERO": "DOWN"}  # qonnx 1.0.0's name for np.fix


@pytest.mark.parametrize(
    "mode,zp",
    [("ROUND", 0), ("ROUND", 3)]
    + [
        (m, z)
        for m in ["CEIL", "FLOOR", "ROUND_TO_ZERO", "UP", "HALF_UP", "HALF_DOWN"]
        for z in (0, 3)
    ],
)
def test_input_quant_rounding_mode_equals_qonnx(tmp_path, mode, zp):
    """Quant(mode) on the float graph input -> Conv (Quant weights) -> Quant ROUND: hwsim
    quantizes the input with int_quant in that mode and equals qonnx's executor bit for bit
    (inputs on a 1/8 grid with scale 0.25: many ties and exact-integer quotients)."""
    rng = np.random.default_rng(11)
    w = (rng.integers(-7, 8, (3, 2, 3, 3)) * 0.125).astype(np.float32)
    inits = {
        "s": np.float32(0.25), "z": np.float32(0), "bw": np.float32(8), "zi": np.float32(zp),
        "bi": np.float32(5), "w": w, "ws": np.float32(0.125), "os": np.float32(0.5),
    }  # fmt: skip
    q = dict(domain=QONNX, signed=1, narrow=0)
    for name, m in (("h.onnx", mode), ("q.onnx", _QONNX_NAME.get(mode, mode))):
        nodes = [
            helper.make_node(
                "Quant", ["x", "s", "zi", "bi"], ["xq"], name="in", rounding_mode=m, **q
            ),
            helper.make_node(
                "Quant", ["w", "ws", "z", "bw"], ["wq"], name="wq", rounding_mode="ROUND", **q
            ),  # fmt: skip
            helper.make_node("Conv", ["xq", "wq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Flatten", ["c"], ["f"], name="flat"),
            helper.make_node(
                "Quant", ["f", "os", "z", "bw"], ["y"], name="out", rounding_mode="ROUND", **q
            ),  # fmt: skip
        ]
        _qmodel(tmp_path, nodes, inits, name=name, shape=(4, 2, 4, 4))
    x = (rng.integers(-40, 40, (4, 2, 4, 4)) * 0.125).astype(np.float32)
    x[0, 0, 0, :] = [100.0, -100.0, -0.0, 0.0]  # clamps, signed zero
    g = import_model(str(tmp_path / "h.onnx"))
    ex = IntegerExecutor(program_from_graph(g))
    y = ex.output(ex.run(x))
    mw = ModelWrapper(str(tmp_path / "q.onnx")).transform(InferShapes())
    assert np.array_equal(y, execute_onnx(mw, {"x": x})["y"])


def test_input_bipolar_quant_equals_qonnx(tmp_path):
    """BipolarQuant on the float graph input -> Conv -> Quant ROUND: sign(x) * scale (+1 at
    x >= 0, -0.0 included), equal to qonnx's executor."""
    rng = np.random.default_rng(12)
    w = (rng.integers(-7, 8, (3, 2, 3, 3)) * 0.125).astype(np.float32)
    inits = {
        "bs": np.float32(0.5), "z": np.float32(0), "bw": np.float32(8),
        "w": w, "ws": np.float32(0.125), "os": np.float32(0.25),
    }  # fmt: skip
    q = dict(domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")
    nodes = [
        helper.make_node("BipolarQuant", ["x", "bs"], ["xq"], name="in", domain=QONNX),
        helper.make_node("Quant", ["w", "ws", "z", "bw"], ["wq"], name="wq", **q),
        helper.make_node("Conv", ["xq", "wq"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Quant", ["f", "os", "z", "bw"], ["y"], name="out", **q),
    ]
    p = _qmodel(tmp_path, nodes, inits, shape=(4, 2, 4, 4))
    x = rng.normal(size=(4, 2, 4, 4)).astype(np.float32)
    x[0, 0, 0, :] = [0.0, -0.0, 1e-30, -1e-30]
    g = import_model(p)
    ex = IntegerExecutor(program_from_graph(g))
    env = ex.run(x)
    assert set(np.unique(env[g.nodes[0].inputs[0]].q).tolist()) <= {-1, 1}
    mw = ModelWrapper(p).transform(InferShapes())
    assert np.array_equal(ex.output(env), execute_onnx(mw, {"x": x})["y"])


def test_rounding_and_bipolar_after_an_integer_layer_are_refused(tmp_path):
    inits = {"s": np.float32(0.5), "z": np.float32(0), "bw": np.float32(4)}
    r = helper.make_node("Relu", ["xq"], ["r"], name="relu")
    nodes = [_quant("x", "xq", "in"), r, _quant("r", "y", "act", rounding_mode="FLOOR")]
    _fails(tmp_path, nodes, inits, r"node 'act' \(Quant\): rounding_mode FLOOR on an activation")
    b = helper.make_node("BipolarQuant", ["r", "s"], ["y"], name="bq", domain=QONNX)
    _fails(tmp_path, [nodes[0], r, b], inits, r"node 'bq' \(BipolarQuant\): BipolarQuant of an")
