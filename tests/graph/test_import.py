"""ONNX import: supported ops, BN folding, clear errors on bad models."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim.execute import run_float
from hwsim.graph import ModelImportError, Op, import_model


def _model(nodes, inits, in_shape=("N", 2, 5, 5), out="y", opset=17):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", None])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _ort(model, x):
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})[0]


def test_all_float_ops_match_onnxruntime():
    rng = np.random.default_rng(0)
    f = np.float32
    inits = {
        "w1": rng.normal(0, 0.5, (4, 2, 3, 3)).astype(f),
        "b1": rng.normal(0, 0.1, 4).astype(f),
        "g": rng.uniform(0.5, 1.5, 4).astype(f),
        "be": rng.normal(0, 0.1, 4).astype(f),
        "m": rng.normal(0, 0.1, 4).astype(f),
        "v": rng.uniform(0.5, 1.5, 4).astype(f),
        "wd": rng.normal(0, 0.5, (4, 1, 3, 3)).astype(f),
        "c": rng.uniform(0.5, 2, (1, 4, 1, 1)).astype(f),
        "lo": np.array(0.0, f),
        "hi": np.array(1.5, f),
        "shape": np.array([0, -1], np.int64),
        "wm": rng.normal(0, 0.5, (16, 3)).astype(f),
        "wg": rng.normal(0, 0.5, (5, 3)).astype(f),
        "bg": rng.normal(0, 0.1, 5).astype(f),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "m", "v"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "wd"], ["dw"], group=4, pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Clip", ["dw", "lo", "hi"], ["cl"], name="clip"),
        helper.make_node("Add", ["cl", "r"], ["a"], name="add"),
        helper.make_node("Mul", ["a", "c"], ["mu"], name="mul"),
        helper.make_node("MaxPool", ["mu"], ["mp"], kernel_shape=[2, 2], strides=[2, 2], name="mp"),
        helper.make_node(
            "AveragePool",
            ["r"],
            ["ap"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[0, 0, 1, 1],
            name="ap",
        ),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1, name="cat"),
        helper.make_node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape"], ["rs"], name="rs"),
        helper.make_node("Identity", ["rs"], ["id"], name="id"),
        helper.make_node("Flatten", ["mp"], ["fl"], name="fl"),
        helper.make_node("MatMul", ["fl", "wm"], ["mm"], name="mm"),
        helper.make_node("Gemm", ["mm", "wg", "bg"], ["gm"], transB=1, name="gemm"),
        helper.make_node("Softmax", ["gm"], ["y"], axis=1, name="sm"),
    ]
    model = _model(nodes, inits)
    onnx.checker.check_model(model)
    g = import_model(model)
    assert [n.op for n in g.nodes if n.name == "conv1"][0] is Op.CONV
    assert not any(n.name == "bn" for n in g.nodes)  # folded
    x = rng.normal(0, 1, (3, 2, 5, 5)).astype(f)
    np.testing.assert_allclose(run_float(g, x)["y"], _ort(model, x), rtol=1e-5, atol=1e-6)


def test_unsupported_op_names_node_and_list():
    nodes = [helper.make_node("Tan", ["x"], ["y"], name="act7")]
    with pytest.raises(ModelImportError, match=r"act7.*Tan.*supported ops: Conv, Gemm"):
        import_model(_model(nodes, {}))


def test_unsupported_attribute_is_named():
    w = np.ones((1, 2, 3, 3), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], auto_pad="SAME_UPPER", name="c")]
    with pytest.raises(ModelImportError, match=r"'c' \(Conv\): auto_pad=SAME_UPPER"):
        import_model(_model(nodes, {"w": w}))


def test_truncated_and_missing_files(tmp_path):
    data = open("models/mlp.onnx", "rb").read()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelImportError, match=r"cut.onnx: not a readable ONNX model|cut.onnx: "):
        import_model(bad)
    with pytest.raises(ModelImportError, match="no such model file"):
        import_model(tmp_path / "nope.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not protobuf" * 3)
    with pytest.raises(ModelImportError, match="junk.onnx"):
        import_model(junk)


def test_bn_not_after_conv_is_an_error():
    f = np.float32
    inits = {k: np.ones(2, f) for k in ("g", "b", "m", "v")}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="r"),
        helper.make_node("BatchNormalization", ["r", "g", "b", "m", "v"], ["y"], name="bn"),
    ]
    with pytest.raises(
        ModelImportError, match=r"'bn' \(BatchNormalization\): .*follow a float Conv"
    ):
        import_model(_model(nodes, inits))


def test_softmax_need_not_be_last():
    # issue 15: Softmax on any axis anywhere (attention); before, only as the last layer
    nodes = [
        helper.make_node("Softmax", ["x"], ["s"], name="sm", axis=2),
        helper.make_node("Relu", ["s"], ["y"], name="r"),
    ]
    model = _model(nodes, {})
    g = import_model(model)
    x = np.random.default_rng(1).normal(0, 2, (3, 2, 5, 5)).astype(np.float32)
    np.testing.assert_allclose(run_float(g, x)["y"], _ort(model, x), rtol=1e-5, atol=1e-6)


def test_import_errors_are_user_errors():
    from hwsim.errors import HwsimError

    assert issubclass(ModelImportError, HwsimError)
