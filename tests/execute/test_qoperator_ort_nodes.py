"""QOperator models with float ops hwsim has no function for: onnxruntime's kernel runs them.

``quantize_static`` in QOperator format leaves a CNN exported without pre-processing with float
BatchNormalization and GlobalAveragePool nodes between DequantizeLinear and QuantizeLinear;
hwsim refused such a model. Reference: onnxruntime on the whole file, bit for bit.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper as oh
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from hwsim import api
from hwsim.data import load_data
from hwsim.errors import HwsimError


@pytest.fixture(scope="module")
def qop_rescnn(tmp_path_factory):
    cal = load_data("digits-train")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(
                [{"input": cal.x[i : i + 8].astype(np.float32)} for i in range(0, 64, 8)]
            )

        def get_next(self):
            return next(self.it, None)

    out = tmp_path_factory.mktemp("qop") / "rescnn_qop.onnx"
    quantize_static(
        "models/rescnn.onnx",
        str(out),
        Reader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "BatchNormalization" in ops and "GlobalAveragePool" in ops  # the case under test
    return out


def test_float_nodes_run_as_onnxruntime_bit_for_bit(qop_rescnn, tmp_path):
    ds = load_data("digits")
    # isa auto: this CPU's onnxruntime (pairs saturated on AVX2-only CPUs), the reference here
    rep = api.run(str(qop_rescnn), "digits", save_outputs=str(tmp_path / "o.npz"), isa="auto")
    ours = np.load(tmp_path / "o.npz")
    (name,) = ours.files
    sess = ort.InferenceSession(str(qop_rescnn), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"input": ds.x.astype(np.float32)})
    assert ours[name].dtype == ref.dtype and np.array_equal(ours[name], ref)
    note = next(n for n in rep.notes if "onnxruntime's own kernels" in n)
    assert "BatchNormalization" in note and "GlobalAveragePool" in note


def test_a_node_onnxruntime_cannot_run_is_a_clear_error(qop_rescnn, tmp_path):
    m = onnx.load(str(qop_rescnn))
    bn = next(n for n in m.graph.node if n.op_type == "BatchNormalization")
    init = next(t for t in m.graph.initializer if t.name == bn.input[1])
    scale = onnx.numpy_helper.to_array(init).astype(np.int32)  # an int32 scale: no such kernel
    init.CopyFrom(onnx.numpy_helper.from_array(scale, init.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(
        HwsimError, match=r"'/1/BatchNormalization' \(BatchNormalization\).*tensor\(int32\)"
    ):
        api.run(str(bad), "digits")


def test_another_domain_is_still_refused(qop_rescnn, tmp_path):
    m = onnx.load(str(qop_rescnn))
    i = next(k for k, n in enumerate(m.graph.node) if n.op_type == "BatchNormalization")
    n = m.graph.node[i]
    m.graph.node[i].CopyFrom(oh.make_node("NoSuchOp", list(n.input), list(n.output), n.name,
                                          domain="com.example"))  # fmt: skip
    m.opset_import.append(oh.make_opsetid("com.example", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(HwsimError, match=r"com\.example\.NoSuchOp.*not supported"):
        api.run(str(bad), "digits")


def _quantize(src, out, **kw):
    cal = load_data("digits-train")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": cal.x[i : i + 8].astype(np.float32)} for i in (0, 8)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        str(src),
        str(out),
        Reader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        **kw,
    )
    return out


def test_a_float_conv_that_onnxruntime_fuses_is_refused(tmp_path):
    """A Conv the quantizer skipped sits between DequantizeLinear and QuantizeLinear in float;
    onnxruntime's optimised graph does not run it as that Conv (here it fuses the BatchNorm
    after it into it; on ResNet-18 DQ -> Conv -> Q became a QLinearConv, 288 of 480 logits off
    when the Conv ran alone in float): refused, not run as something else."""
    skip = "/4/Conv"
    out = _quantize("models/rescnn.onnx", tmp_path / "mixed.onnx", nodes_to_exclude=[skip])
    assert any(n.op_type == "Conv" and n.name == skip for n in onnx.load(str(out)).graph.node)
    with pytest.raises(
        HwsimError, match=r"'/4/Conv' \(Conv\) runs in onnxruntime as part of a fused"
    ):
        api.run(str(out), "digits")


def test_maxpool_on_float_values_is_the_onnx_op(tmp_path):
    """A MaxPool whose input the quantizer left in float (a Relu outside op_types_to_quantize)
    is the ONNX MaxPool, not the quantized one (was: 'float32 is not an integer format')."""
    rng = np.random.default_rng(0)
    w = oh.make_tensor("w", onnx.TensorProto.FLOAT, [8, 1, 3, 3], rng.normal(0, 0.3, 72))
    fc = oh.make_tensor("fc", onnx.TensorProto.FLOAT, [128, 10], rng.normal(0, 0.1, 1280))
    nodes = [
        oh.make_node("Conv", ["input", "w"], ["c"], "conv", pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"], "relu"),
        oh.make_node("MaxPool", ["r"], ["p"], "pool", kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("Flatten", ["p"], ["f"], "flatten"),
        oh.make_node("MatMul", ["f", "fc"], ["output"], "fc"),
    ]
    g = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", 1, 8, 8])],
        [oh.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["N", 10])],
        [w, fc],
    )
    src = tmp_path / "f.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]), str(src))
    out = _quantize(src, tmp_path / "q.onnx", op_types_to_quantize=["Conv", "MaxPool", "MatMul"])
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert "Relu" in ops and "MaxPool" in ops  # the float Relu -> MaxPool under test
    ds = load_data("digits")
    rep = api.run(str(out), "digits", save_outputs=str(tmp_path / "o.npz"), isa="auto")
    ours = np.load(tmp_path / "o.npz")
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (ref,) = sess.run(None, {"input": ds.x.astype(np.float32)})
    assert np.array_equal(ours[ours.files[0]], ref)
    assert rep.samples == len(ds)


@pytest.mark.parametrize(
    "kw,flag", [({"outputs_only": True}, "--outputs-only"), ({"partials": False}, "--no-partials")]
)
def test_run_modes_a_qoperator_model_has_not_are_refused(qop_rescnn, kw, flag):
    """A QOperator model runs through the QOperator interpreter: asking it for an outputs-only
    or a no-partials run is an error naming the file and the flag, not a flag ignored."""
    from hwsim.errors import HwsimError

    with pytest.raises(HwsimError, match=rf"{qop_rescnn.name}.*no {flag} mode \(drop {flag}\)"):
        api.run(str(qop_rescnn), "digits", **kw)
