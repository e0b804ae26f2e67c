"""hwsim.qops against the ONNX backend node tests of the quantized operators, bit for bit; and
the float ops of the transformer import (issue 15) through ``import_model`` and ``run_float``
(end of file).

The onnx wheel ships the case generators (``onnx/backend/test/case/node/*.py``), not the data.
A session fixture writes the cases to a temporary directory the way
``onnx.backend.test.cmd_tools.generate_data`` does (``model.onnx``, ``test_data_set_0/
input_*.pb``, ``output_*.pb``); each test reads them back, runs the node through
:func:`hwsim.qops.run_node` and compares every output exactly. Cases with float8 / float4
types are not integer hardware: there the test asserts hwsim's "not an integer format" error.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from hwsim import qops

PREFIXES = (
    "test_quantizelinear",
    "test_dequantizelinear",
    "test_qlinearconv",
    "test_qlinearmatmul",
    "test_convinteger",
    "test_matmulinteger",
    "test_dynamicquantizelinear",
)
MODULES = (
    "quantizelinear",
    "dequantizelinear",
    "qlinearconv",
    "qlinearmatmul",
    "convinteger",
    "matmulinteger",
    "dynamicquantizelinear",
)
FLOAT_QUANT = {
    onnx.TensorProto.FLOAT8E4M3FN,
    onnx.TensorProto.FLOAT8E4M3FNUZ,
    onnx.TensorProto.FLOAT8E5M2,
    onnx.TensorProto.FLOAT8E5M2FNUZ,
    onnx.TensorProto.FLOAT4E2M1,
}

# Cases whose expected output hwsim cannot reproduce, with the number of differing elements.
# (None at present: every integer case matches exactly.)
PINNED_MISMATCHES: dict[str, int] = {}


def _collect():
    """The generator's node cases for our operators (importing a case module runs its
    ``export_*`` functions, which register the cases), deduplicated by name; the
    ``*_expanded`` cases (an op's function body as a graph of other ops) are not one node."""
    from onnx.backend.test.case import node as node_cases

    for m in MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{m}")
    cases = {}
    for case in node_cases._NodeTestCases:
        expanded = case.name.endswith("_expanded")
        if case.name.startswith(PREFIXES) and case.kind == "node" and not expanded:
            cases.setdefault(case.name, case)
    return cases


CASES = _collect()


def _write_tensor(path: Path, value, name: str) -> None:
    proto = (
        value
        if isinstance(value, onnx.TensorProto)
        else numpy_helper.from_array(np.asarray(value), name)
    )
    path.write_bytes(proto.SerializeToString())


@pytest.fixture(scope="session")
def node_data(tmp_path_factory) -> Path:
    """The cases as files, laid out as ``generate_data`` lays them out."""
    root = tmp_path_factory.mktemp("onnx_node")
    for name, case in CASES.items():
        out = root / name
        data = out / "test_data_set_0"
        data.mkdir(parents=True)
        (out / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        for j, value in enumerate(inputs):
            _write_tensor(data / f"input_{j}.pb", value, case.model.graph.input[j].name)
        for j, value in enumerate(outputs):
            _write_tensor(data / f"output_{j}.pb", value, case.model.graph.output[j].name)
    return root


def _load(path: Path) -> onnx.TensorProto:
    t = onnx.TensorProto()
    t.ParseFromString(path.read_bytes())
    return t


def _load_case(root: Path, name: str):
    model = onnx.load(str(root / name / "model.onnx"))
    data = root / name / "test_data_set_0"
    inputs = [_load(data / f"input_{j}.pb") for j in range(len(model.graph.input))]
    outputs = [_load(data / f"output_{j}.pb") for j in range(len(model.graph.output))]
    return model, inputs, outputs


def _node_inputs(model: onnx.ModelProto, inputs: list) -> list:
    """The node's inputs in node order; an empty name is an omitted optional input."""
    by_name = {
        vi.name: numpy_helper.to_array(t) for vi, t in zip(model.graph.input, inputs, strict=True)
    }
    return [by_name[n] if n else None for n in model.graph.node[0].input]


def test_every_operator_has_cases():
    for prefix in PREFIXES:
        assert any(n.startswith(prefix) for n in CASES), prefix


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_backend_node_case(node_data, name):
    model, inputs, outputs = _load_case(node_data, name)
    (node,) = model.graph.node
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    args = _node_inputs(model, inputs)
    types = {t.data_type for t in inputs + outputs} | {attrs.get("output_dtype", 0)}
    if types & FLOAT_QUANT:
        with pytest.raises(qops.NotIntegerFormatError, match="not an integer format"):
            qops.run_node(node.op_type, node.domain, attrs, args)
        return
    got = qops.run_node(node.op_type, node.domain, attrs, args)
    assert len(got) == len(outputs)
    for g, t in zip(got, outputs, strict=True):
        want = numpy_helper.to_array(t)
        assert g.shape == want.shape
        if want.dtype.kind == "f":
            assert g.dtype == want.dtype
            diff = np.count_nonzero(g.view(f"u{g.itemsize}") != want.view(f"u{g.itemsize}"))
        else:
            assert qops.int_format(g.dtype).signed == qops.int_format(want.dtype).signed
            diff = np.count_nonzero(g.astype(np.int64) != want.astype(np.int64))
        assert diff == PINNED_MISMATCHES.get(name, 0), (name, g, want)



# --- the float ops of issue 15 through import and run_float ------------------------------------
# Each case's node becomes a single-input model as hwsim runs it: input 0 is the model input
# (axis 0 its batch axis), the other inputs become constants, the first output is the model's
# (a LayerNormalization's Mean / InvStdDev outputs dropped); hwsim.graph.import_model then
# run_float, against the case's expected output to float32 tolerance (rtol 1e-5, atol 1e-6 times
# the output's largest magnitude). A case that hwsim rejects is pinned with the reason its
# error gives: the op would act on axis 0 (the batch), or an input that is an activation in the
# case is a constant here that differs along axis 0 ("broadcasts over the batch axis",
# "the same tensor for every sample"), or MatMul's second input has a batch of its own.
FLOAT_MODULES = (
    "add",
    "sub",
    "mul",
    "div",
    "matmul",
    "transpose",
    "gather",
    "slice",
    "split",
    "squeeze",
    "unsqueeze",
    "concat",
    "layernormalization",
    "softmax",
    "gelu",
    "sigmoid",
    "hardsigmoid",
    "hardswish",
    "reducemean",
)
FLOAT_OP_TYPES = {
    "Add", "Sub", "Mul", "Div", "MatMul", "Transpose", "Gather", "Slice", "Split", "Squeeze",
    "Unsqueeze", "Concat", "LayerNormalization", "Softmax", "Gelu", "Sigmoid", "HardSigmoid",
    "HardSwish", "ReduceMean",
}
_AXIS0 = "batch axis"
_CONST = "broadcasts over the batch axis"
FLOAT_PINNED: dict[str, str] = {
    **{f"test_{op}{s}": _CONST for op in ("add", "sub", "mul", "div")
       for s in ("", "_int8", "_int16", "_uint8", "_uint16", "_uint32", "_uint64")},
    **{f"test_{op}_example": _CONST for op in ("sub", "mul", "div")},
    "test_div_int32_trunc": _CONST,
    **{f"test_concat_{c}": _AXIS0 for c in ("1d_axis_0", "1d_axis_negative_1", "2d_axis_0",
                                            "2d_axis_negative_2", "3d_axis_0",
                                            "3d_axis_negative_3")},
    **{f"test_concat_{c}": "the same tensor for every sample"
       for c in ("2d_axis_1", "2d_axis_negative_1", "3d_axis_1", "3d_axis_2",
                 "3d_axis_negative_1", "3d_axis_negative_2")},
    "test_gather_0": _AXIS0,
    "test_gather_negative_indices": _AXIS0,
    **{f"test_layer_normalization_{c}": _AXIS0
       for c in ("2d_axis0", "2d_axis_negative_2", "3d_axis0_epsilon",
                 "3d_axis_negative_3_epsilon", "4d_axis0", "4d_axis_negative_4")},
    **{f"test_matmul_{c}": "weight must be 2-D"
       for c in ("1d_1d", "1d_3d", "3d", "4d", "4d_1d", "bcast")},
    "test_reduce_mean_default_axes_keepdims_example": _AXIS0,
    "test_reduce_mean_default_axes_keepdims_random": _AXIS0,
    **{f"test_slice{c}": "slices the batch axis"
       for c in ("", "_default_axes", "_default_steps", "_neg_steps", "_negative_axes")},
    "test_softmax_axis_0": _AXIS0,
    **{f"test_split_{c}": _AXIS0
       for c in ("1d_uneven_split_opset18", "equal_parts_1d_opset13", "equal_parts_1d_opset18",
                 "equal_parts_default_axis_opset13", "equal_parts_default_axis_opset18",
                 "variable_parts_1d_opset13", "variable_parts_1d_opset18",
                 "variable_parts_default_axis_opset13", "variable_parts_default_axis_opset18",
                 "zero_size_splits_opset13", "zero_size_splits_opset18")},
    "test_squeeze": _AXIS0,
    **{f"test_transpose_{c}": "moves the batch axis"
       for c in ("all_permutations_2", "all_permutations_3", "all_permutations_4",
                 "all_permutations_5", "default")},
    "test_unsqueeze_axis_0": _AXIS0,
}


def _collect_float():
    """The generator's single-node cases of the float ops (their ``_expanded`` function-body
    variants are graphs of other ops, not these)."""
    from onnx.backend.test.case import node as node_cases

    for m in FLOAT_MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{m}")
    cases = {}
    for case in node_cases._NodeTestCases:
        g = case.model.graph if case.model is not None else None
        if (
            case.kind == "node"
            and g is not None
            and len(g.node) == 1
            and g.node[0].op_type in FLOAT_OP_TYPES
            and g.node[0].domain in ("", "ai.onnx")
        ):
            cases.setdefault(case.name, case)
    return cases


FLOAT_CASES = _collect_float()


def _single_input(model: onnx.ModelProto, inputs: list) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    for vi, t in list(zip(model.graph.input, inputs, strict=True))[1:]:
        g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t), vi.name))
    del g.input[1:]
    del g.output[1:]
    if g.node[0].op_type == "LayerNormalization":
        for i in range(1, len(g.node[0].output)):
            g.node[0].output[i] = ""
    return m


def test_every_float_op_has_cases():
    assert {c.model.graph.node[0].op_type for c in FLOAT_CASES.values()} == FLOAT_OP_TYPES
    assert set(FLOAT_PINNED) <= set(FLOAT_CASES)


@pytest.mark.parametrize("name", sorted(FLOAT_CASES))
def test_onnx_backend_node_case_float(node_data_float, name):
    from hwsim.execute import run_float
    from hwsim.graph import ModelImportError, import_model

    model, inputs, outputs = _load_case(node_data_float, name)
    m = _single_input(model, inputs)
    if name in FLOAT_PINNED:
        with pytest.raises(ModelImportError, match=FLOAT_PINNED[name]):
            import_model(m, source=name)
        return
    g = import_model(m, source=name)
    got = run_float(g, numpy_helper.to_array(inputs[0]))[g.output]
    want = numpy_helper.to_array(outputs[0])
    assert got.shape == want.shape
    atol = 1e-6 * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol)


@pytest.fixture(scope="session")
def node_data_float(tmp_path_factory) -> Path:
    """The float cases as files, laid out as ``generate_data`` lays them out."""
    root = tmp_path_factory.mktemp("onnx_node_float")
    for name, case in FLOAT_CASES.items():
        out = root / name
        data = out / "test_data_set_0"
        data.mkdir(parents=True)
        (out / "model.onnx").write_bytes(case.model.SerializeToString())
        inputs, outputs = case.data_sets[0]
        for j, value in enumerate(inputs):
            _write_tensor(data / f"input_{j}.pb", value, case.model.graph.input[j].name)
        for j, value in enumerate(outputs):
            _write_tensor(data / f"output_{j}.pb", value, case.model.graph.output[j].name)
    return root
