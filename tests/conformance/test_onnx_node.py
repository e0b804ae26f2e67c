"""hwsim.qops against the ONNX backend node tests of the quantized operators, bit for bit.

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
)
MODULES = (
    "quantizelinear",
    "dequantizelinear",
    "qlinearconv",
    "qlinearmatmul",
    "convinteger",
    "matmulinteger",
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
    ``export_*`` functions, which register the cases), deduplicated by name."""
    from onnx.backend.test.case import node as node_cases

    for m in MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{m}")
    cases = {}
    for case in node_cases._NodeTestCases:
        if case.name.startswith(PREFIXES) and case.kind == "node":
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

