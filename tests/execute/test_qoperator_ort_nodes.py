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
    rep = api.run(str(qop_rescnn), "digits", save_outputs=str(tmp_path / "o.npz"))
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
    with pytest.raises(HwsimError, match=r"BatchNormalization.*onnxruntime could not run it"):
        api.run(str(bad), "digits")


def test_another_domain_is_still_refused(qop_rescnn, tmp_path):
    m = onnx.load(str(qop_rescnn))
    i = next(k for k, n in enumerate(m.graph.node) if n.op_type == "GlobalAveragePool")
    n = m.graph.node[i]
    m.graph.node[i].CopyFrom(oh.make_node("NoSuchOp", list(n.input), list(n.output), n.name,
                                          domain="com.example"))  # fmt: skip
    m.opset_import.append(oh.make_opsetid("com.example", 1))
    bad = tmp_path / "bad.onnx"
    onnx.save(m, str(bad))
    with pytest.raises(HwsimError, match=r"com\.example\.NoSuchOp.*not supported"):
        api.run(str(bad), "digits")
