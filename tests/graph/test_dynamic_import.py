"""onnxruntime ``quantize_dynamic`` models through import and the integer executor, against
onnxruntime.

Models: the tiny ViT (ConvInteger patch embedding, Erf GELU), the timm-style ViT (unbind
attention, mean pooling) and the tiny BERT (quantized token and position embeddings, Tanh
GELU) of tests/conformance/archs.py, and a 2-layer MLP (Gemm, ReLU, Gemm), each quantized per
tensor and per channel with QInt8 and QUInt8 weights. GEMMs run with ``isa="auto"``
(onnxruntime's dot product on this CPU: eq. 16's saturating pairs on an AVX2-only x86).

* **Import**: each ``DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul [->
  Add]`` chain is one dense / conv with ``attrs["ort_dynamic"]``, its integer weights in the
  IR layout and no activation quantization; a quantized embedding is an ``Op.EMBEDDING`` of
  the dequantized table; the model is not a QOperator model.
* **Layer by layer**: every dynamic layer and embedding, fed the tensor onnxruntime fed it
  (the unoptimised graph, and the optimised one with ``DynamicQuantizeMatMul`` /
  ``MatMulIntegerToFloat``), gives onnxruntime's output bit for bit.
* **Float ops between them** (float32 islands), fed onnxruntime's tensors: Add, Mul / Div by
  constants and data movement bit for bit; LayerNorm (ORT's fused SkipLayerNormalization), GELU
  (ORT's com.microsoft Gelu, or the Tanh form's nodes), Softmax, ReduceMean and MatMul of two
  activations (ORT's FusedMatMul) within ``FLOAT_RTOL`` of the tensor's largest magnitude:
  hwsim rounds a float64 result once, onnxruntime uses MLAS's approximations and summation
  orders. Measured (onnxruntime 1.32, AVX-512 VNNI): at most 2.1e-7.
* **Whole models** at the same batch: the MLP (only ReLU between its layers) is bit-exact;
  a model with float islands that round differently is not: a float op's last-bit difference
  moves a later DynamicQuantizeLinear's range by an ulp, or now and then a value across one of
  its rounding boundaries, which moves that layer's output by a quantization step. Asserted:
  ``|diff| <= WHOLE_RTOL * max|y|``. Measured over 40 batches of 8 per model: 21-31 of 40
  batches bit-exact, max |diff| 0.017 (1.3% of max|y|) for the tiny transformers; the shipped
  ResNet-style CNN with its float BatchNormalizations, 38 batches of 16 digits: 23 bit-exact,
  2.4e-7 of max|y| (onnxruntime's BatchNormalization computes ``x * f32(f32(1 / sqrt(var +
  eps)) * gamma) + c``, hwsim's reference ``x * f32(gamma / sqrt(var + eps)) + c``; its
  GlobalAveragePool sums in another order).
* ``hwsim.api.run`` on a dynamically quantized MLP over the digits: outputs equal onnxruntime's
  on the same batches, MACs counted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.datapath.isa import resolve
from hwsim.execute import IntegerExecutor, LayerStats
from hwsim.execute.arrays import graph_input
from hwsim.execute.dynamic import dynamic_dense
from hwsim.execute.float import float_op
from hwsim.graph import ModelImportError, Op, import_model, is_qoperator
from hwsim.graph.onnx_import import is_dynamic
from hwsim.numerics import IntFormat
from hwsim.quant.store import program_from_graph

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
import archs  # noqa: E402

ort.set_default_logger_severity(3)

MODELS = ("tiny_vit", "tiny_bert", "tiny_vit_timm", "mlp")
CONFIGS = [(name, pc, wt) for name in MODELS for pc in (False, True) for wt in ("QInt8", "QUInt8")]
IDS = [f"{n}-{'per_channel' if pc else 'per_tensor'}-{wt}" for n, pc, wt in CONFIGS]
BATCH = 8
FLOAT_RTOL = 2.0**-20
"""Float islands vs onnxruntime: ``|diff| <= FLOAT_RTOL * max|y|`` (measured: 2.1e-7)."""
WHOLE_RTOL = 0.04
"""Whole model with float islands vs onnxruntime at the same batch: ``|diff| <= WHOLE_RTOL *
max|y|`` (measured: 0.013)."""
EXACT_OPS = {Op.ADD, Op.ADD_CONST, Op.MUL, Op.DIV_CONST, Op.RESHAPE, Op.TRANSPOSE, Op.SLICE,
             Op.CONCAT, Op.GATHER, Op.EMBEDDING, Op.RELU, Op.FLATTEN}  # fmt: skip
ROUNDED_OPS = {Op.LAYERNORM, Op.GELU, Op.SOFTMAX, Op.REDUCE_MEAN, Op.MATMUL}


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """(name, per_channel, weight type) -> the quantize_dynamic model's path."""
    d = tmp_path_factory.mktemp("dynamic")
    out = {}
    for name in MODELS:
        fp = d / f"{name}.onnx"
        if name == "mlp":
            archs.export_mlp(fp)
        else:
            archs.export_tiny(name, fp)
        for pc in (False, True):
            for wt in ("QInt8", "QUInt8"):
                out[(name, pc, wt)] = archs.quantize_dynamic(fp, d / f"{name}_{pc}_{wt}.onnx",
                                                             pc, wt)  # fmt: skip
    return out


def inputs(name: str, n: int = BATCH, seed: int = 4321) -> np.ndarray:
    return archs.mlp_inputs(n, seed) if name == "mlp" else archs.tiny_inputs(name, n, seed)


def session(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL, save=None):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = level
    if save is not None:
        opts.optimized_model_filepath = os.fspath(save)
    return ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])


def every_tensor(model: onnx.ModelProto, feeds: dict) -> dict:
    """Every node output of ``model`` as onnxruntime computes it (optimisations off, so the
    nodes run as written), with the feeds: name -> array."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    names = [o for n in m.graph.node for o in n.output if o]
    del m.graph.output[:]
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for o in names)
    sess = session(m.SerializeToString(), ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    env = dict(feeds)
    env.update(zip(names, sess.run(None, feeds), strict=True))
    return env


def graphs(path, tmp_path, x) -> dict:
    """``{"unoptimised": env, "optimised": env}``: every tensor of the file as written and of
    onnxruntime's optimised graph (its fused kernels), on the same input."""
    save = tmp_path / "optimised.onnx"
    y = session(path, save=save).run(None, {"input": x})[0]
    optimised = onnx.load(save)
    fused = {n.op_type for n in optimised.graph.node}
    assert "DynamicQuantizeMatMul" in fused and "MatMulInteger" not in fused
    envs = {"unoptimised": every_tensor(onnx.load(path), {"input": x}),
            "optimised": every_tensor(optimised, {"input": x})}  # fmt: skip
    assert differing(envs["optimised"]["output"], y) == 0  # the saved graph runs ORT's kernels
    return envs


def differing(got, want) -> int:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.dtype, want.dtype)
    return int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))


def integer_run(path, x, isa="auto") -> np.ndarray:
    ex = IntegerExecutor(program_from_graph(import_model(path)), isa=isa)
    return ex.output(ex.run(x))


# --- import ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "pc", "wt"), CONFIGS, ids=IDS)
def test_each_chain_imports_as_one_dynamic_layer(paths, name, pc, wt):
    path = paths[(name, pc, wt)]
    model = onnx.load(path)
    assert is_dynamic(model) and not is_qoperator(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    macs = [n for n in model.graph.node if n.op_type in ("MatMulInteger", "ConvInteger")]
    g = import_model(path)
    assert g.quantized and not g.act_quant
    dyn = [n for n in g.nodes if n.attrs.get("ort_dynamic")]
    assert [n.name for n in dyn] == [n.name for n in macs]
    for n, mac in zip(dyn, macs, strict=True):
        w = inits[mac.input[1]]
        assert n.wq.source == mac.input[1] and n.wq.fmt == IntFormat(8, wt == "QInt8")
        if n.op is Op.DENSE:  # (K, N) in the file, (O, K) in the IR
            assert np.array_equal(n.wq.q, w.T) and n.weight.shape == w.T.shape
            assert np.ndim(n.wq.scale) == (1 if pc else 0)
        else:  # quantize_dynamic's ConvInteger: per-tensor weights
            assert mac.op_type == "ConvInteger" and np.array_equal(n.wq.q, w)
            assert np.ndim(n.wq.scale) == 0
        assert n.bias is not None and n.bias.dtype == np.float32
        assert np.array_equal(n.weight, n.wq.dequantize())
    if name == "tiny_bert":  # the token table is looked up dequantized
        emb = [n for n in g.nodes if n.op is Op.EMBEDDING]
        assert len(emb) == 1 and emb[0].weight.dtype == np.float32
    assert api.load_quantized(path).graph.quantized


# --- layer by layer, on the tensors onnxruntime computed --------------------------------------
@pytest.mark.parametrize(("name", "pc", "wt"), CONFIGS, ids=IDS)
def test_every_dynamic_layer_equals_onnxruntime_bit_for_bit(paths, tmp_path, name, pc, wt):
    path = paths[(name, pc, wt)]
    g = import_model(path)
    x = inputs(name)
    layers = [n for n in g.nodes if n.attrs.get("ort_dynamic") or n.op is Op.EMBEDDING]
    for kind, env in graphs(path, tmp_path, x).items():
        env[g.input] = graph_input(g, x)
        for n in layers:
            ins = [env[t] for t in n.inputs]
            if n.op is Op.EMBEDDING:
                got = float_op(n, ins)
            else:
                got = dynamic_dense(n, ins[0], resolve("auto"), LayerStats())
            assert differing(got, env[n.output]) == 0, (kind, n.name)


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_bert", "tiny_vit_timm"])
def test_float_ops_between_dynamic_layers_match_onnxruntime(paths, tmp_path, name):
    """Each IR float op fed onnxruntime's tensors: exact ops bit for bit, the others within
    ``FLOAT_RTOL`` (see the module docstring); every kind is met in the unoptimised graph."""
    path = paths[(name, False, "QInt8")]
    g = import_model(path)
    x = inputs(name)
    for kind, env in graphs(path, tmp_path, x).items():
        env[g.input] = graph_input(g, x)
        seen = set()
        for n in g.nodes:
            if n.attrs.get("ort_dynamic") or n.output not in env:
                continue  # fused away by onnxruntime's optimiser
            if not all(t in env for t in n.inputs):
                continue
            got, want = float_op(n, [env[t] for t in n.inputs]), env[n.output]
            if n.op in EXACT_OPS:
                assert differing(got, want) == 0, (kind, n.name)
            else:
                assert n.op in ROUNDED_OPS, n.op
                err = float(np.abs(got - want).max() / np.abs(want).max())
                assert err <= FLOAT_RTOL, (kind, n.name, err)
            seen.add(n.op)
        if kind == "unoptimised":
            assert ROUNDED_OPS - {Op.REDUCE_MEAN} <= seen


# --- whole models -----------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "pc", "wt"), CONFIGS, ids=IDS)
def test_whole_model_against_onnxruntime_at_the_same_batch(paths, name, pc, wt):
    path = paths[(name, pc, wt)]
    x = inputs(name, seed=7)
    y = integer_run(path, x)
    want = session(path).run(None, {"input": x})[0]
    if name == "mlp":
        assert differing(y, want) == 0
    else:
        assert float(np.abs(y - want).max()) <= WHOLE_RTOL * float(np.abs(want).max())


def test_batchnorm_after_a_dynamic_conv_stays_float(tmp_path):
    """The shipped ResNet-style CNN, exported with its BatchNormalizations: quantize_dynamic
    leaves them float after the ConvInteger chains; import keeps them (``Op.BATCHNORM``); the
    whole model (pooling, residual Adds) is within ``WHOLE_RTOL`` of onnxruntime."""
    path = archs.quantize_dynamic(api.resolve_model("rescnn"), tmp_path / "r.onnx", True)
    g = import_model(path)
    convs = [n for n in g.nodes if n.op is Op.CONV]
    assert convs and all(n.attrs.get("ort_dynamic") for n in convs)
    assert any(n.op is Op.BATCHNORM for n in g.nodes)
    x = load_data("digits", (1, 8, 8)).x[:16]
    y, want = integer_run(path, x), session(path).run(None, {"input": x})[0]
    assert float(np.abs(y - want).max()) <= WHOLE_RTOL * float(np.abs(want).max())


def test_outputs_depend_on_the_batch_as_in_onnxruntime(paths):
    """DynamicQuantizeLinear's range is the whole batch's: a sample alone gets other outputs
    than inside a batch -- in hwsim as in onnxruntime, bit for bit at each batching."""
    path = paths[("mlp", True, "QInt8")]
    x = inputs("mlp")
    sess = session(path)
    alone, inside = integer_run(path, x[:1]), integer_run(path, x)[:1]
    assert differing(alone, sess.run(None, {"input": x[:1]})[0]) == 0
    assert differing(inside, sess.run(None, {"input": x})[0][:1]) == 0
    assert differing(alone, inside) > 0


def test_api_run_on_a_dynamically_quantized_mlp(tmp_path):
    path = archs.quantize_dynamic(api.resolve_model("mlp"), tmp_path / "mlp_dyn.onnx", True)
    out = tmp_path / "out.npz"
    rep = api.run(path, "digits", batch_size=128, isa="auto", save_outputs=out)
    y = np.load(out)["logits"]
    ds = load_data("digits", (1, 8, 8))
    sess = session(path)
    want = np.concatenate([sess.run(None, {"input": xb})[0] for _, xb in ds.batches(128)])
    assert differing(y, want) == 0
    dense = [r for r in rep.layers if r.op == "dense"]
    assert [r.macs for r in dense] == [len(ds) * 64 * 64, len(ds) * 64 * 32, len(ds) * 32 * 10]
    assert rep.int_accuracy >= rep.float_accuracy - 0.03 and rep.agreement > 0.95


def test_api_run_on_token_ids(paths):
    """A dynamically quantized BERT with its quantized embeddings, on a small random data set
    of token ids (int64)."""
    ids = archs.tiny_inputs("tiny_bert", 6, seed=3)
    rep = api.run(paths[("tiny_bert", True, "QUInt8")], Dataset("ids", ids, None), batch_size=6)
    assert rep.samples == 6
    assert (
        sum(r.macs for r in rep.layers if r.op == "dense")
        == 6 * 8 * (2 * (32 * 96 + 32 * 32 + 32 * 64 + 64 * 32)) + 6 * 32 * 2
    )


# --- unsupported patterns -------------------------------------------------------------------
def _dynamic_model(tmp_path, nodes, inits, x_shape=(2, 4), name="bad.onnx"):
    """A one-input ``x`` (batch symbolic), one-output ``y`` float model of ``nodes``."""
    y_shape = [f"d{i}" for i in range(len(x_shape))]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *x_shape[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _chain(mac="MatMulInteger", scale_mul=("xs", "ws"), tail=("Add", ["mm", "b"])):
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("Mul", list(scale_mul), ["s"], name="scales"),
        helper.make_node(mac, ["xq", "w", "xz", "wz"], ["acc"], name="mac"),
        helper.make_node("Cast", ["acc"], ["accf"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", ["accf", "s"], ["mm"], name="rescale"),
    ]
    return nodes + [helper.make_node(tail[0], tail[1], ["y"], name="tail")]


W = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
INITS = {"w": W, "wz": np.int8(0), "ws": np.float32(0.02), "b": np.ones(3, np.float32),
         "c": np.float32(0.5)}  # fmt: skip


def test_a_well_formed_chain_imports_and_runs(tmp_path):
    path = _dynamic_model(tmp_path, _chain(), INITS)
    g = import_model(path)
    (n,) = g.nodes
    assert n.op is Op.DENSE and n.attrs == {"ort_dynamic": True} and n.output == "y"
    x = np.linspace(-2, 3, 8, dtype=np.float32).reshape(2, 4)
    want = session(path).run(None, {"x": x})[0]
    assert differing(integer_run(path, x), want) == 0


@pytest.mark.parametrize(
    ("change", "node", "match"),
    [
        ({"scale_mul": ("c", "ws")}, "rescale", r"its scale 's' must be Mul\('xs', w_scale\)"),
        ({"tail": ("Relu", ["accf"])}, "cast", r"must be read by one Mul only"),
        ({"mac": "ConvInteger"}, "mac", r"weight rank 4|per-tensor"),
    ],
    ids=["scale_not_x_scale_times_w_scale", "cast_not_rescaled", "conv_weight_not_4d"],
)
def test_unsupported_chains_name_file_node_and_the_chain(tmp_path, change, node, match):
    path = _dynamic_model(tmp_path, _chain(**change), INITS)
    with pytest.raises(ModelImportError, match=match) as e:
        import_model(path)
    assert str(e.value).startswith(f"{path}: node {node!r}")


def test_per_channel_conv_integer_is_rejected(tmp_path):
    inits = {"w": np.ones((3, 2, 1, 1), np.int8), "wz": np.int8(0),
             "ws": np.full(3, 0.1, np.float32), "b": np.ones((1, 3, 1, 1), np.float32)}  # fmt: skip
    path = _dynamic_model(tmp_path, _chain(mac="ConvInteger"), inits, x_shape=(1, 2, 2, 2))
    with pytest.raises(ModelImportError, match=r"node 'mac'.*w_scale of shape \(3,\): "
                       r"per-tensor expected.*DynamicQuantizeLinear\(x\) -> MatMulInteger or "
                       r"ConvInteger"):  # fmt: skip
        import_model(path)


def test_activation_times_activation_is_rejected(tmp_path):
    nodes = _chain()
    nodes[2] = helper.make_node("MatMulInteger", ["xq", "xq2", "xz", "wz"], ["acc"], name="mac")
    nodes.insert(1, helper.make_node("DynamicQuantizeLinear", ["x"], ["xq2", "xs2", "xz2"],
                                     name="dql2"))  # fmt: skip
    inits = {**INITS, "wz": np.uint8(0)}
    path = _dynamic_model(tmp_path, nodes, inits, x_shape=(4, 4))
    with pytest.raises(ModelImportError, match=r"node 'mac'.*weight 'xq2' must be an int8 / "
                       "uint8 constant"):  # fmt: skip
        import_model(path)


def test_dynamic_quantize_linear_feeding_another_op_is_rejected(tmp_path):
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("Cast", ["xq"], ["y"], name="cast", to=TensorProto.FLOAT),
    ]
    path = _dynamic_model(tmp_path, nodes, {})
    with pytest.raises(ModelImportError, match=r"node 'cast' \(Cast\): reads the output 'xq' "
                       "of DynamicQuantizeLinear 'dql'"):  # fmt: skip
        import_model(path)
