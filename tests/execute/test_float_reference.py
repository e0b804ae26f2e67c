"""The float reference of an imported QDQ model (issue 12, item 1).

onnxruntime's ``quantize_static`` (QDQ, asymmetric activations) deletes every ReLU / Clip whose
output range the following QuantizeLinear already enforces: the Conv (or Add) writes straight
into the activation's Q/DQ pair, whose zero point is the type's minimum, so the uint8 / int8
saturation *is* the ReLU. A float run that drops the Q/DQ pairs therefore has no activations at
all (ResNet-18 per-layer SQNR 0-8 dB, agreement 0%, for a model 37 dB from its float original).

hwsim's float reference of such a file (``run_float`` on ``import_model``'s graph) is the file's
network with its dequantized weights and every activation ``QuantizeLinear -> DequantizeLinear``
pair read as ``Clip(DQ(q_min), DQ(q_max))``: the activation ranges and clamps of the file
without the rounding. The reference it is checked against is onnxruntime on a copy of the same
file with exactly that substitution (activation Q -> Clip, its DQ -> Identity; the weights' DQ
kept), every tensor exposed as a graph output, run with ``ORT_DISABLE_ALL``: no fusion or
constant folding, so onnxruntime evaluates the nodes as written (the substituted file is a float
graph, so its only freedom is float32 summation order). onnxruntime on the *unmodified* file
(any optimisation level) rounds every activation -- that is the integer run's reference
(tests/conformance/test_qdq_models.py), not the float one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.execute import run_float
from hwsim.graph.onnx_import import import_model

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
import archs  # noqa: E402

_TYPES = {
    onnx.TensorProto.UINT8: (0, 255),
    onnx.TensorProto.INT8: (-128, 127),
    onnx.TensorProto.UINT16: (0, 65535),
    onnx.TensorProto.INT16: (-32768, 32767),
}


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i : i + 128]} for i in range(0, len(x), 128)])

    def get_next(self):
        return next(self.it, None)


def _make_qdq(d: Path, model: str, pre: bool, per_channel: bool, act: str) -> str:
    """As tests/conformance/test_qdq_models.py's ``_make``: a shipped model through
    onnxruntime's ``quantize_static`` (QDQ), with or without its pre-processing."""
    src = str(ROOT / "models" / f"{model}.onnx")
    if pre:
        p = d / f"{model}_pre.onnx"
        if not p.exists():
            quant_pre_process(src, str(p), skip_symbolic_shape=True)
        src = str(p)
    out = d / f"{model}_{int(pre)}_{int(per_channel)}_{act}.onnx"
    if not out.exists():
        quantize_static(
            src,
            str(out),
            _Reader(load_data("digits-train").x[:256]),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return str(out)


def _float_copy(path: str) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The QDQ file with every activation QuantizeLinear replaced by ``Clip(DQ(q_min),
    DQ(q_max))`` and its DequantizeLinear by Identity, every tensor a graph output. Returns the
    model and, per quantized tensor, the name of its clamped value."""
    m = onnx.load(path)
    g = m.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    elem = {i.name: i.data_type for i in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
            elem[n.output[0]] = n.attribute[0].t.data_type
    q_out: dict[str, str] = {}  # float tensor -> its Q's output
    act_q = set()
    nodes = []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in consts:
            s = np.float32(consts[n.input[1]])
            zname = n.input[2] if len(n.input) > 2 else ""
            z = int(consts[zname]) if zname else 0
            qmin, qmax = _TYPES[elem[zname] if zname else onnx.TensorProto.UINT8]
            lo, hi = np.float32(qmin - z) * s, np.float32(qmax - z) * s
            lo_n, hi_n = n.output[0] + "__lo", n.output[0] + "__hi"
            g.initializer.extend(
                [numpy_helper.from_array(np.array(lo, np.float32), lo_n),
                 numpy_helper.from_array(np.array(hi, np.float32), hi_n)]
            )
            nodes.append(helper.make_node("Clip", [n.input[0], lo_n, hi_n], [n.output[0]]))
            q_out[n.input[0]] = n.output[0]
            act_q.add(n.output[0])
        elif n.op_type == "DequantizeLinear" and n.input[0] in act_q:
            nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]]))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # Q outputs were typed as integers
    have = {o.name for o in g.output}
    for n in g.node:
        for t in n.output:
            if t and t not in have:
                g.output.append(helper.make_empty_tensor_value_info(t))
    return m, q_out


def _compare_layerwise(path: str, x: np.ndarray) -> int:
    """``run_float`` on the imported graph against onnxruntime on the float copy, every tensor
    that exists in both; returns how many were compared."""
    graph = import_model(path)
    got = run_float(graph, x)
    m, q_out = _float_copy(path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3  # the replaced Q/DQ nodes leave unused scale initializers
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(None, {sess.get_inputs()[0].name: x}), strict=True))
    n = 0
    for t, v in got.items():
        w = want.get(q_out.get(t, t))
        if w is None:
            continue
        assert v.shape == w.shape, t
        tol = 1e-5 * max(1.0, float(np.abs(w).max()))
        err = float(np.abs(v.astype(np.float64) - w).max())
        assert err <= tol, f"{path}: tensor {t!r}: max |hwsim - onnxruntime| = {err} > {tol}"
        n += 1
    out = got[graph.output]
    w = want[graph.output_name]
    assert np.abs(out - w).max() <= 1e-5 * max(1.0, float(np.abs(w).max()))
    return n


@pytest.fixture(scope="module")
def qdq_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("float_ref")


SHIPPED = [
    ("mlp", False, False, "u8"),
    ("mlp", True, True, "s8"),
    ("rescnn", False, False, "u8"),  # BatchNorm left between Q/DQ pairs (float op)
    ("rescnn", False, True, "s8"),
    ("rescnn", True, True, "u8"),
    ("rescnn", True, False, "s8"),
]


@pytest.mark.parametrize("model,pre,per_channel,act", SHIPPED)
def test_shipped_qdq_float_reference_equals_onnxruntime(qdq_dir, model, pre, per_channel, act):
    path = _make_qdq(qdq_dir, model, pre, per_channel, act)
    x = load_data("digits").x[:64]
    assert _compare_layerwise(path, x) >= 4


@pytest.fixture(scope="module")
def resnet(qdq_dir):
    """Reduced ResNet-18 (tests/conformance/archs.py), float and per-channel QDQ."""
    return archs.make("resnet18", qdq_dir, per_channel=True)


def test_resnet18_float_reference_equals_onnxruntime(resnet):
    assert _compare_layerwise(resnet[1], archs.inputs(4)) >= 30  # every hwsim tensor


def test_qdq_file_has_no_relu_but_float_reference_does(resnet):
    """The regression: the QDQ file has no Relu node left, yet every post-ReLU tensor of the
    float reference is non-negative and the reference is close to the float model."""
    _, qdq = resnet
    assert not any(n.op_type == "Relu" for n in onnx.load(qdq).graph.node)
    graph = import_model(qdq)
    x = archs.inputs(4)
    env = run_float(graph, x)
    relu_outs = [t for t in env if "Relu_output" in t]  # ORT keeps the ReLU's output name
    assert len(relu_outs) >= 10
    assert all(env[t].min() >= 0 for t in relu_outs)
    f = ort.InferenceSession(resnet[0], providers=["CPUExecutionProvider"]).run(None, {"input": x})
    ref = f[0].astype(np.float64)
    err = env[graph.output].astype(np.float64) - ref
    assert 10 * np.log10((ref**2).sum() / (err**2).sum()) > 30  # weight quantization only


def test_resnet18_report_sqnr_consistent_with_output_snr(resnet):
    """``hwsim run`` on the QDQ ResNet-18: every layer's SQNR is in the range of the integer
    output's SNR against the float model (~37 dB), not the 0-8 dB of a reference without
    ReLUs; the integer and float runs agree on the argmax."""
    fp, qdq = resnet
    x = archs.inputs(8)
    rep, y = api.run_program(api.load_quantized(qdq), Dataset("x", x, None), collect_outputs=True)
    want = ort.InferenceSession(fp, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    sq = [r.sqnr_db for r in rep.layers]
    assert all(v is not None for v in sq)
    assert min(sq) > 25, sq
    assert rep.agreement >= 0.75
    assert any("clamped to its QuantizeLinear range" in n for n in rep.notes)
    # the last layer's SQNR against the float reference vs the output's SNR against the
    # float model: within a few dB (the latter also has the weights' quantization error)
    assert abs(sq[-1] - _snr(want, y)) < 6


def _snr(ref, y):
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    return 10 * np.log10((ref**2).sum() / ((ref - y) ** 2).sum())


def test_hwsim_files_keep_their_relu_nodes(tmp_path):
    """hwsim-written files keep their ReLU nodes; no clamps are added to their reference."""
    out = tmp_path / "q.onnx"
    api.quantize_model("mlp", "per-tensor", calib="digits-train", out=out)
    assert import_model(out).float_ranges == {}
