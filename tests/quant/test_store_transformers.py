"""hwsim.quant.store on transformers and modern CNNs (issue 15): every IR op the importer reads
is written as standard ONNX ops (a Q/DQ pair on each static tensor), and the file runs as the
program it was written from -- every layer's integers and scales, and the outputs ``api.run``
saves, bit for bit -- under every scheme preset, with float or integer-only non-linearities.
Token ids (int64) stay token ids; onnxruntime loads the files; an op the format cannot hold is
refused, naming the node."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.errors import HwsimError
from hwsim.execute import IntegerExecutor, QTensor, run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Graph, Node, Op
from hwsim.quant import PRESETS, Scheme, quantize
from hwsim.quant.scheme import NonLinear
from hwsim.quant.store import load, save, to_onnx

f32 = np.float32
SHIPPED = ("vit", "silucnn")
TINY = ("tiny_vit", "tiny_vit_timm", "tiny_bert", "tiny_silu_cnn")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """``get(name) -> (float ONNX path, calibration Dataset, inputs)``: a shipped model on digits,
    or a tiny torch model of tests/conformance/archs.py exported once for the module."""
    root = tmp_path_factory.mktemp("float")
    cache = {}

    def get(name):
        if name not in cache:
            if name in SHIPPED:
                train = load_data("digits-train")
                calib = Dataset("calib", train.x[:32], None, train.input_range)
                cache[name] = (api.resolve_model(name), calib, load_data("digits").x[:6])
            else:
                from tests.conformance import archs

                path = archs.export_tiny(name, root / f"{name}.onnx")
                calib = Dataset("calib", archs.tiny_inputs(name, 8, seed=1), None, (-4.0, 4.0))
                cache[name] = (path, calib, archs.tiny_inputs(name, 5, seed=7))
        return cache[name]

    return get


def _assert_same_run(prog, back, x):
    """Every node's output (integers, scales, zero point, format, shifts) is the same in the
    file's program as in the written one."""
    out = {prog.graph.output: back.graph.output}  # the file's DQ alias of a quantized output
    want, got = IntegerExecutor(prog).run(x), IntegerExecutor(back).run(x)
    for n in prog.graph.nodes:
        a, b = want[n.output], got[out.get(n.output, n.output)]
        if not isinstance(a, QTensor):
            assert not isinstance(b, QTensor) and np.array_equal(a, b), n.name
            continue
        assert isinstance(b, QTensor), n.name
        assert np.array_equal(a.q, b.q) and a.q.dtype == b.q.dtype, n.name
        assert np.array_equal(np.asarray(a.scale), np.asarray(b.scale)), n.name
        assert (a.zero_point, a.fmt) == (b.zero_point, b.fmt), n.name
        assert (a.shifts is None) == (b.shifts is None), n.name
        if a.shifts is not None:
            assert np.array_equal(a.shifts, b.shifts) and a.base == b.base, n.name
    return IntegerExecutor(prog).output(want)


def _assert_round_trip(prog, path, x, tmp_path):
    back = api.load_quantized(path)
    assert [(n.name, n.op) for n in back.graph.nodes] == [(n.name, n.op) for n in prog.graph.nodes]
    assert back.layers == prog.layers and back.scheme == prog.scheme
    alias = {back.graph.output: prog.graph.output}
    assert {alias.get(t, t): s for t, s in back.acts.items()} == prog.acts
    assert back.graph.input_dtype == prog.graph.input_dtype
    want = _assert_same_run(prog, back, x)
    outs = tmp_path / "outs.npz"
    api.run(path, Dataset("x", x, None), save_outputs=outs)
    with np.load(outs) as z:
        got = z[back.graph.output_name]
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("name", SHIPPED + TINY)
def test_the_file_runs_as_the_program_it_was_written_from(model, name, preset, tmp_path):
    path, calib, x = model(name)
    f = tmp_path / "q.onnx"
    prog = api.quantize_model(path, preset, calib, out=f)
    _assert_round_trip(prog, f, x, tmp_path)


@pytest.mark.parametrize(
    "name, preset",
    [("vit", "per-tensor"), ("tiny_vit", "per-sample-shift"), ("tiny_bert", "per-token")],
)
def test_integer_nonlinearities_round_trip(model, name, preset, tmp_path):
    path, calib, x = model(name)
    f = tmp_path / "q.onnx"
    prog = api.quantize_model(path, preset, calib, out=f, nonlinear="integer")
    kernels = [n for n in prog.graph.nodes if n.op in (Op.SOFTMAX, Op.GELU, Op.LAYERNORM)]
    assert any(prog.layer(n.name).nonlinear is NonLinear.INTEGER for n in kernels)
    _assert_round_trip(prog, f, x, tmp_path)


def test_a_per_layer_nonlinear_override_round_trips(model, tmp_path):
    path, calib, x = model("tiny_vit")
    g = import_model(path)
    softmax = next(n.name for n in g.nodes if n.op is Op.SOFTMAX)
    scheme = Scheme.preset("per-tensor", overrides={softmax: {"nonlinear": "integer"}})
    f = tmp_path / "q.onnx"
    prog = api.quantize_model(g, scheme, calib, out=f)
    assert prog.layer(softmax).nonlinear is NonLinear.INTEGER
    assert [k for k, v in prog.layers.items() if v.nonlinear is NonLinear.INTEGER] == [softmax]
    _assert_round_trip(prog, f, x, tmp_path)


def test_token_ids_stay_int64(model, tmp_path):
    path, calib, x = model("tiny_bert")
    f = tmp_path / "q.onnx"
    api.quantize_model(path, "per-tensor", calib, out=f)
    m = onnx.load(str(f))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    ids = m.graph.input[0].name
    gathers = [n for n in m.graph.node if n.op_type == "Gather" and ids in n.input]
    assert gathers and all(list(n.input)[1] == ids for n in gathers)
    assert load(f).graph.input_dtype == "int64"


@pytest.mark.parametrize("name", SHIPPED + TINY)
def test_onnxruntime_loads_and_runs_the_files(model, name, tmp_path):
    """Standard ONNX ops only (8-bit QDQ), a class token expanded to the batch: onnxruntime
    runs the per-tensor file at a batch size other than the export's."""
    import onnxruntime as ort  # a core dependency
    path, calib, x = model(name)
    f = tmp_path / "q.onnx"
    prog = api.quantize_model(path, "per-tensor", calib, out=f)
    m = onnx.load(str(f))
    assert {n.domain for n in m.graph.node} == {""}
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x[:3]})[0]
    ex = IntegerExecutor(prog)
    assert y.shape == ex.output(ex.run(x[:3])).shape


def test_transformer_ops_are_written_as_standard_onnx(model, tmp_path):
    path, calib, _ = model("vit")
    f = tmp_path / "q.onnx"
    api.quantize_model(path, "per-tensor", calib, out=f)
    ops = {n.op_type for n in onnx.load(str(f)).graph.node}
    want = {"Transpose", "Reshape", "Gather", "Concat", "Expand", "LayerNormalization",
            "Softmax", "Gelu", "MatMul", "Add", "Div", "QuantizeLinear",
            "DequantizeLinear"}  # fmt: skip
    assert want <= ops


def _odd_graph() -> Graph:
    """x (N, 4, 6) through the ops no shipped model has in these forms: an N-d dense, HardSwish
    with non-ONNX constants, a reversed strided slice, a gather of a vector of indices, a concat
    on axis 2 with a constant in the middle, a LayerNorm without gamma / beta, Erf, Tanh, a
    ReduceMean without keepdims, Identity, a dense."""
    rng = np.random.default_rng(5)
    nodes = [
        Node("d1", Op.DENSE, ("x",), "a", {"nd": True},
             weight=rng.normal(0, 0.5, (8, 6)).astype(f32), bias=rng.normal(0, 0.1, 8).astype(f32)),
        Node("hs", Op.HARDSWISH, ("a",), "b", {"alpha": 0.2, "beta": 0.4}),
        Node("sl", Op.SLICE, ("b",), "c", {"slices": ((2, 7, None, -2),)}),
        Node("g", Op.GATHER, ("c",), "e", {"axis": 1, "indices": np.array([3, 0, 1])}),
        Node("cat", Op.CONCAT, ("e", "e"), "f",
             {"axis": 2, "consts": ((1, rng.normal(0, 1, (1, 3, 2)).astype(f32)),)}),
        Node("ln", Op.LAYERNORM, ("f",), "h", {"axis": 2, "epsilon": float(f32(1e-5))}),
        Node("erf", Op.ERF, ("h",), "i"),
        Node("tanh", Op.TANH, ("i",), "j"),
        Node("rm", Op.REDUCE_MEAN, ("j",), "k", {"axes": (1,), "keepdims": 0}),
        Node("id", Op.IDENTITY, ("k",), "m"),
        Node("d2", Op.DENSE, ("m",), "y",
             weight=rng.normal(0, 0.5, (3, 10)).astype(f32), bias=np.zeros(3, f32)),
    ]  # fmt: skip
    return Graph("odd", "<test>", "x", (4, 6), "y", nodes)


@pytest.mark.parametrize("preset", ["per-tensor", "per-token-shift"])
def test_ops_in_less_common_forms_round_trip(preset, tmp_path):
    x = np.random.default_rng(6).normal(0, 1, (16, 4, 6)).astype(f32)
    calib = Dataset("calib", x, None, (-4.0, 4.0))
    prog = quantize(_odd_graph(), Scheme.preset(preset), calib, float_run=run_float)
    f = tmp_path / "q.onnx"
    save(prog, f)
    ops = [n.op_type for n in onnx.load(str(f)).graph.node]
    assert "HardSigmoid" in ops and "HardSwish" not in ops  # alpha 0.2: x * HardSigmoid(x)
    _assert_round_trip(prog, f, x[:5], tmp_path)


def test_an_op_the_file_cannot_hold_is_refused_naming_the_node(tmp_path):
    """An unfolded BatchNorm (an imported QDQ model keeps one between Q/DQ pairs) has no form
    in the file: save() names the node and writes nothing."""
    x = np.random.default_rng(6).normal(0, 1, (8, 4, 6)).astype(f32)
    prog = quantize(_odd_graph(), Scheme.preset("per-sample"), Dataset("c", x, None),
                    float_run=run_float)  # fmt: skip
    i = next(i for i, n in enumerate(prog.graph.nodes) if n.name == "id")
    prog.graph.nodes[i] = dataclasses.replace(prog.graph.nodes[i], op=Op.BATCHNORM)
    out = tmp_path / "q.onnx"
    with pytest.raises(HwsimError, match=r"node 'id': op 'batchnorm' cannot be saved"):
        save(prog, out)
    assert not out.exists()
    with pytest.raises(HwsimError, match="node 'id'"):
        to_onnx(prog)


def test_cli_quantize_then_run_prints_the_programs_accuracy(tmp_path):
    from click.testing import CliRunner

    from hwsim.cli import main

    f = tmp_path / "vit_tok.onnx"
    runner = CliRunner()
    vit = str(api.resolve_model("vit"))
    r = runner.invoke(main, ["quantize", vit, "--calib", "digits-train",
                             "--scheme", "per-token", "-o", str(f)])  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["run", str(f), "--data", "digits"])
    assert r.exit_code == 0, r.output
    from_file = api.run(f, "digits")
    in_memory = api.run(api.quantize_model("vit", "per-token", "digits-train"), "digits")
    assert from_file.int_accuracy == in_memory.int_accuracy is not None
    line = next(s for s in r.output.splitlines() if s.startswith("top-1"))
    assert line == next(s for s in from_file.table().splitlines() if s.startswith("top-1"))
    assert f"integer {100 * in_memory.int_accuracy:.2f}%" in line
