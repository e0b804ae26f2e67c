"""hwsim.qops.quantize: ``QuantizeLinear`` / ``DequantizeLinear``, the ends of every QDQ chain,
against onnxruntime; float8 types are not integer formats."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import qops
from tests.qops.harness import differing, value_info


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
        [value_info("x", x)],
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
    assert differing(q.astype(np.int32), q32) == 0
    deq = qops.run_node("DequantizeLinear", "", {"axis": 0}, [q.astype(dt), scale, zp])[0]
    assert differing(deq, d) == 0


def test_float8_outputs_and_inputs_are_not_integer_formats():
    import ml_dtypes

    x = np.array([1.0, 2.0], np.float32)
    with pytest.raises(qops.NotIntegerFormatError, match="not an integer format"):
        qops.quantize_linear(x, np.float32(1), output_dtype=onnx.TensorProto.FLOAT8E4M3FN)
    with pytest.raises(qops.NotIntegerFormatError, match="not an integer format"):
        qops.dequantize_linear(x.astype(ml_dtypes.float8_e5m2), np.float32(1))
