"""QDQ models written by onnxruntime's ``quantize_static`` from the shipped models: ``hwsim run``
outputs equal onnxruntime's CPU outputs (default session options) bit for bit."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from hwsim import api
from hwsim.cli import main
from hwsim.data import load_data

CASES = [
    (model, pre, per_channel, act)
    for model in ("mlp", "rescnn")
    for pre in (False, True)
    for per_channel in (False, True)
    for act in ("s8", "u8")
]


# Every case must match exactly. Where onnxruntime leaves a Conv unfused (the int8 rescnn
# variants: the DequantizeLinear feeding the residual block's first Conv also feeds the residual
# Add, so its int8 -> uint8 conversion and the QLinearConv fusion do not happen; with
# pre-processing, the first two Convs), it runs a float32 Conv on dequantized values, and hwsim
# runs that layer the same way in MLAS's rounding order (hwsim.mlas; docs/networks.md,
# "Conformance"). Computed as integer hardware would, 23 logits of rescnn_0_0_s8 differed.
FLOAT_CONV_CASES = {
    ("rescnn", False, False, "s8"),
    ("rescnn", False, True, "s8"),
    ("rescnn", True, False, "s8"),
    ("rescnn", True, True, "s8"),
}


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i : i + 128]} for i in range(0, len(x), 128)])

    def get_next(self):
        return next(self.it, None)


@pytest.fixture(scope="module")
def qdq_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("qdq")


def _make(qdq_dir, model, pre, per_channel, act):
    src = f"models/{model}.onnx"
    if pre:  # onnxruntime's recommended pre-processing (folds BN into Conv)
        src_pre = qdq_dir / f"{model}_pre.onnx"
        if not src_pre.exists():
            quant_pre_process(src, str(src_pre), skip_symbolic_shape=True)
        src = str(src_pre)
    out = qdq_dir / f"{model}_{int(pre)}_{int(per_channel)}_{act}.onnx"
    quantize_static(
        src,
        str(out),
        _Reader(load_data("digits-train").x),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


@pytest.mark.parametrize("model,pre,per_channel,act", CASES)
def test_hwsim_run_equals_onnxruntime(qdq_dir, tmp_path, model, pre, per_channel, act):
    path = _make(qdq_dir, model, pre, per_channel, act)
    d = load_data("digits")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": d.x})[0]
    outs = tmp_path / "o.npz"
    r = CliRunner().invoke(
        main,
        [
            "run",
            str(path),
            "--data",
            "digits",
            "--save-outputs",
            str(outs),
            "--report",
            str(tmp_path / "r.json"),
            "--batch-size",
            "100",
            "--isa",
            "auto",
        ],
    )
    assert r.exit_code == 0, r.output
    with np.load(outs) as f:
        got = f[sess.get_outputs()[0].name]
    assert got.dtype == np.float32 and got.shape == want.shape
    differ = int((got != want).sum())
    assert differ == 0, differ
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["settings"]["scheme"]["name"] == "imported-qdq"
    assert rep["int_accuracy"] == float(np.mean(want.argmax(1) == d.y))
    # the layers onnxruntime runs in float are run (and reported) as float convs
    float_convs = [r["name"] for r in rep["layers"] if r["op"] == "conv" and r["float_op"]]
    assert bool(float_convs) == ((model, pre, per_channel, act) in FLOAT_CONV_CASES), float_convs


def test_program_uses_ort_semantics(qdq_dir):
    path = _make(qdq_dir, "rescnn", True, True, "u8")
    program = api.load_quantized(path)
    assert program.layer("anything").register.value == "ort"
    assert program.layer("anything").acc.bits == 32
    convs = [n for n in program.graph.nodes if n.wq is not None]
    assert convs and all(n.wq.per_channel for n in convs if n.op.value == "conv")


@pytest.mark.parametrize("model", ["mlp", "rescnn"])
def test_qoperator_model_equals_onnxruntime(tmp_path, model):
    """QOperator models (QLinearConv / QLinearMatMul / contrib QLinear ops) run node by node."""
    src = tmp_path / "pre.onnx"
    quant_pre_process(f"models/{model}.onnx", str(src), skip_symbolic_shape=True)
    path = tmp_path / "qop.onnx"
    quantize_static(
        str(src),
        str(path),
        _Reader(load_data("digits-train").x),
        quant_format=QuantFormat.QOperator,
        per_channel=False,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    import onnx

    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert ops & {"QLinearConv", "QLinearMatMul", "QGemm"}, ops
    d = load_data("digits")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": d.x})[0]
    outs = tmp_path / "o.npz"
    r = CliRunner().invoke(
        main, ["run", str(path), "--data", "digits", "--save-outputs", str(outs), "--isa", "auto"]
    )
    assert r.exit_code == 0, r.output
    assert "QOperator model" in r.output
    with np.load(outs) as f:
        got = f[sess.get_outputs()[0].name]
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} differ"


@pytest.mark.parametrize(
    "n, c, h, f, k, stride, pad, group",
    [
        (4, 16, 8, 16, 3, 1, 1, 1),  # the rescnn block conv: K = 144, one K block
        (4, 64, 8, 32, 3, 1, 1, 1),  # K = 576 over 64 pixels: K blocks of 256
        (2, 64, 32, 32, 3, 1, 1, 1),  # 1,024 pixels: column slices of 128, K blocks of 128
        (3, 256, 8, 32, 1, 1, 0, 1),  # pointwise: MLAS's direct GEMM, K = 256
        (3, 64, 4, 64, 3, 1, 1, 1),  # more filters than pixels: expand, then one GEMM
        (2, 16, 8, 32, 3, 2, 1, 1),  # stride 2
        (2, 32, 8, 32, 3, 1, 1, 2),  # groups
    ],
)
def test_mlas_float_conv_equals_onnxruntime(n, c, h, f, k, stride, pad, group):
    """hwsim.mlas.conv2d is onnxruntime's float32 Conv bit for bit (weights as a graph input,
    as a DequantizeLinear output is: a plain MLAS Conv, not the NCHWc one)."""
    from onnx import TensorProto, helper

    from hwsim import mlas

    rng = np.random.default_rng(c * h + f)
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((f, c // group, k, k)) * 0.1).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    node = helper.make_node(
        "Conv", ["x", "w", "b"], ["y"], pads=[pad] * 4, strides=[stride] * 2, group=group
    )
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node],
        "conv",
        [vi("x", TensorProto.FLOAT, x.shape), vi("w", TensorProto.FLOAT, w.shape)],
        [vi("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("b", TensorProto.FLOAT, b.shape, b)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x, "w": w})[0]
    got = mlas.conv2d(x, w, b, (pad,) * 4, (stride,) * 2, (1, 1), group, fma=mlas.host_fma())
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {got.size} differ"


def test_int8_activations_follow_onnxruntimes_uint8_shift(tmp_path):
    """x86 onnxruntime runs an int8 QDQ model's fused QLinearAdd on uint8 = int8 + 128 (zero
    points + 128, QDQS8ToU8Transformer); its float32 formula then rounds differently (5 of
    2,560 outputs of this model differed when hwsim added the int8 values as they are). hwsim
    reads which tensors were shifted from onnxruntime's optimised graph."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    r = np.random.default_rng(0)

    def init(n, s, sc=0.5):
        return numpy_helper.from_array((r.standard_normal(s) * sc).astype(np.float32), n)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["input", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c1", "c2"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("GlobalAveragePool", ["ra"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3)), init("b1", (8,), 0.1), init("w2", (8, 3, 3, 3)),
             init("b2", (8,), 0.1), init("wf", (10, 8)), init("bf", (10,), 0.1)]  # fmt: skip
    g = helper.make_graph(nodes, "add", [helper.make_tensor_value_info("input", T.FLOAT,
                          ["N", 3, 8, 8])], [helper.make_tensor_value_info("y", T.FLOAT,
                          ["N", 10])], inits)  # fmt: skip
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    x = r.uniform(-1, 1, (256, 3, 8, 8)).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[:64]}])

        def get_next(self):
            return next(self.it, None)

    q = tmp_path / "q.onnx"
    quantize_static(str(tmp_path / "f.onnx"), str(q), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)  # fmt: skip
    want = ort.InferenceSession(str(q), providers=["CPUExecutionProvider"]).run(None, {"input": x})
    np.savez(tmp_path / "x.npz", x=x)
    api.run(q, tmp_path / "x.npz", save_outputs=tmp_path / "o.npz", isa="auto")
    with np.load(tmp_path / "o.npz") as o:
        assert int(np.count_nonzero(o["y"] != want[0])) == 0
