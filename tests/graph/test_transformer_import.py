"""Transformers and modern CNNs, first slice (issue 15): import (shape folding, fusion, the new
ops), the float reference against onnxruntime tensor by tensor, shape inference, and the
integer executor end to end with the new ops as float islands.

Tolerance against onnxruntime (``ORT_DISABLE_ALL``): ``rtol=1e-5`` and an absolute term of
``1e-6`` times the tensor's largest magnitude (at least 1e-6): a float32 sum whose terms cancel
(attention scores) has an absolute error set by its terms, not by its result."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim.data import Dataset
from hwsim.errors import HwsimError
from hwsim.execute import FLOAT_OPS, IntegerExecutor, QTensor, run_float
from hwsim.graph import ModelImportError, Op, import_model
from hwsim.graph.shapes import infer_shapes
from hwsim.quant import quantize
from hwsim.quant.scheme import Scheme

f32 = np.float32
RNG = np.random.default_rng(15)
BIG = np.iinfo(np.int64).max


# --- helpers ---------------------------------------------------------------------------------
def _model(nodes, inits=None, in_shape=("N", 2, 5, 5), opset=17, in_type=TensorProto.FLOAT,
           out="y"):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", in_type, list(in_shape))],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8 if opset < 20 else 9
    # the output's rank, as onnx infers it (the checker wants one), else the input's
    try:
        out_vi = onnx.shape_inference.infer_shapes(m).graph.output[0]
        rank = len(out_vi.type.tensor_type.shape.dim) if out_vi.type.tensor_type.HasField(
            "shape") else len(in_shape)
    except Exception:
        rank = len(in_shape)
    m.graph.output[0].CopyFrom(
        helper.make_tensor_value_info(out, TensorProto.FLOAT, [None] * rank)
    )
    return m


def _x(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).normal(0, scale, shape)).astype(f32)


def _ort_all(model: onnx.ModelProto, x: np.ndarray, name: str = "x") -> dict:
    """Every tensor onnxruntime computes (graph optimisations off), by name."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(
        onnx.ValueInfoProto(name=t)
        for n in m.graph.node
        for t in n.output
        if t and t not in have
    )
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, {name: x}), strict=True))


def _compare(g, model, x, name="x") -> tuple[float, float, int]:
    """run_float against onnxruntime on every tensor both have; returns (max abs error, max
    error over the tolerance, tensors compared). Every IR tensor but the input and the
    intermediates of an unbind is an ONNX tensor."""
    env = run_float(g, x)
    want = _ort_all(model, x, name)
    worst_abs = worst_tol = 0.0
    n = 0
    for t, v in env.items():
        if t == g.input:
            continue
        assert t in want or t.endswith(":unbind"), t
        if t not in want:
            continue
        w = want[t]
        assert v.shape == w.shape, (t, v.shape, w.shape)
        err = np.abs(v.astype(np.float64) - w.astype(np.float64))
        atol = 1e-6 * max(1.0, float(np.abs(w).max()) if w.size else 1.0)
        tol = atol + 1e-5 * np.abs(w.astype(np.float64))
        np.testing.assert_array_less(err, tol + 1e-12, err_msg=t)
        worst_abs = max(worst_abs, float(err.max()) if err.size else 0.0)
        worst_tol = max(worst_tol, float((err / tol).max()) if err.size else 0.0)
        n += 1
    return worst_abs, worst_tol, n


def _check(model, x, name="x"):
    onnx.checker.check_model(model)
    g = import_model(model)
    _compare(g, model, x, name)
    env = run_float(g, x)
    shapes = infer_shapes(g, x.shape[0])
    for t, v in env.items():
        assert shapes[t] == v.shape, t
    return g


def _ops(g) -> list[Op]:
    return [n.op for n in g.nodes]


def _only(g, op):
    ns = [n for n in g.nodes if n.op is op]
    assert len(ns) == 1, _ops(g)
    return ns[0]


def _node(op, ins, outs="y", **kw):
    return helper.make_node(op, ins, [outs] if isinstance(outs, str) else outs, name=op.lower(),
                            **kw)


# --- the tiny torch models -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.conformance import archs

    root = tmp_path_factory.mktemp("tiny")
    cache = {}

    def get(name, opset):
        if (name, opset) not in cache:
            cache[name, opset] = archs.export_tiny(name, root / f"{name}_{opset}.onnx", opset)
        return cache[name, opset]

    return archs, get


NAMES = ("tiny_vit", "tiny_vit_timm", "tiny_bert", "tiny_silu_cnn")


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", NAMES)
def test_tiny_models_match_onnxruntime_tensor_by_tensor(tiny, name, opset):
    archs, get = tiny
    path = get(name, opset)
    g = import_model(path)
    model = onnx.load(path)
    for batch in (1, 3):
        x = archs.tiny_inputs(name, batch)
        _, worst, n = _compare(g, model, x, "input")
        assert n >= len(g.nodes) - 6 and worst <= 1.0
        shapes = infer_shapes(g, batch)
        env = run_float(g, x)
        assert set(shapes) == set(env)
        assert all(shapes[t] == v.shape for t, v in env.items())


@pytest.mark.parametrize("opset", [13, 17])
def test_tiny_models_import_as_expected(tiny, opset):
    archs, get = tiny
    vit = import_model(get("tiny_vit", opset))
    ops = set(_ops(vit))
    assert {Op.MATMUL, Op.LAYERNORM, Op.GELU, Op.SOFTMAX, Op.TRANSPOSE, Op.SLICE, Op.GATHER,
            Op.ADD_CONST, Op.DIV_CONST} <= ops
    assert not {Op.MUL, Op.MUL_ACT} & ops  # GELU and LayerNorm fused (opset 13), no leftovers
    assert all(n.attrs["form"] == "erf" for n in vit.nodes if n.op is Op.GELU)
    cat = _only(vit, Op.CONCAT)  # the class token: a constant part, the same for every sample
    assert cat.attrs["axis"] == 1 and cat.attrs["consts"][0][1].shape == (1, 1, 32)
    assert sum(n.op is Op.DENSE and n.attrs.get("nd", False) for n in vit.nodes) == 8
    lns = [n for n in vit.nodes if n.op is Op.LAYERNORM]
    assert len(lns) == 5 and all(n.attrs["axis"] == 2 for n in lns)
    assert all(("fused" in n.attrs) == (opset == 13) for n in lns)
    # every shape subgraph is gone: reshape targets keep the batch as "0"
    assert all(n.attrs["shape"][0] == 0 for n in vit.nodes if n.op is Op.RESHAPE)
    bert = import_model(get("tiny_bert", opset))
    assert bert.input_dtype == "int64" and bert.input_shape == (archs.TINY_BERT_TOKENS,)
    emb = _only(bert, Op.EMBEDDING)
    assert emb.inputs == (bert.input,) and emb.weight.shape == (archs.TINY_BERT_VOCAB, 32)
    pos = [n for n in bert.nodes if n.op is Op.ADD_CONST][0]  # folded position embeddings
    assert pos.weight.shape == (1, archs.TINY_BERT_TOKENS, 32)
    assert all(n.attrs["form"] == "tanh" for n in bert.nodes if n.op is Op.GELU)
    cnn = import_model(get("tiny_silu_cnn", opset))
    assert {Op.SILU, Op.HARDSWISH, Op.SIGMOID, Op.HARDSIGMOID, Op.MUL_ACT, Op.GAP} <= set(
        _ops(cnn)
    )
    timm = import_model(get("tiny_vit_timm", opset))
    assert Op.REDUCE_MEAN in _ops(timm)
    picks = [n for n in timm.nodes if n.op is Op.GATHER]  # q, k, v of each block's unbind
    assert len(picks) == 6 and all(n.attrs["axis"] == 2 for n in picks)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_models_quantized_run_end_to_end(tiny, name):
    archs, get = tiny
    g = import_model(get(name, 17))
    calib = Dataset("calib", archs.tiny_inputs(name, 16, seed=1), None)
    prog = quantize(g, Scheme.preset("per-tensor"), calib, float_run=run_float)
    ex = IntegerExecutor(prog)
    x = archs.tiny_inputs(name, 3)
    env = ex.run(x)
    y, f = ex.output(env), run_float(g, x)[g.output]
    assert y.shape == f.shape and np.all(np.isfinite(y))
    sqnr = 10 * np.log10(np.sum(f.astype(np.float64) ** 2) / np.sum((f - y) ** 2))
    assert sqnr > 15, sqnr
    islands = {n.op for n in g.nodes if n.name in ex.float_ops}
    macs = [n for n in g.nodes if n.op in (Op.CONV, Op.DENSE)]
    assert all(n.name not in ex.float_ops for n in macs)  # every MAC layer on the datapath
    assert all(isinstance(env[n.output], QTensor) for n in macs)
    assert not islands & {Op.TRANSPOSE, Op.SLICE, Op.RESHAPE, Op.GATHER}  # data movement
    matmuls = [n for n in g.nodes if n.op in (Op.MATMUL, Op.MUL_ACT)]
    assert all(n.name not in ex.float_ops for n in matmuls)  # integer products of activations
    if name.startswith("tiny_vit"):
        assert {Op.LAYERNORM, Op.GELU, Op.SOFTMAX} <= islands
    if name == "tiny_bert":
        assert Op.EMBEDDING in islands and prog.acts.get(g.input) is None


@pytest.mark.parametrize(
    "preset",
    ["per-sample", "per-sample-shift", "per-channel", "data-free", "per-token", "per-token-shift"],
)
def test_tiny_vit_other_schemes_run(tiny, preset):
    archs, get = tiny
    g = import_model(get("tiny_vit", 17))
    calib = Dataset("calib", archs.tiny_inputs("tiny_vit", 8, seed=1), None, (-4.0, 4.0))
    prog = quantize(g, Scheme.preset(preset), calib, float_run=run_float)
    y = IntegerExecutor(prog).run(archs.tiny_inputs("tiny_vit", 2), keep_all=False)
    assert np.all(np.isfinite(y[g.output].dequantize()))


def test_cost_model_counts_attention_matmuls(tiny):
    from hwsim.cost.topology import layers_from_program

    archs, get = tiny
    g = import_model(get("tiny_vit", 17))
    layers = {L.name: L for L in layers_from_program(g, batch=2)}
    mm = [n for n in g.nodes if n.op is Op.MATMUL]
    assert len(mm) == 4 and all(n.name in layers for n in mm)
    scores = layers[mm[0].name]  # (B, 4 heads, 17 tokens, 8) @ (B, 4, 8, 17)
    assert (scores.Np, scores.K, scores.Mf, scores.groups) == (17, 8, 17, 8)
    assert scores.macs == 2 * 4 * 17 * 8 * 17
    qkv = layers[next(n.name for n in g.nodes if n.op is Op.DENSE)]
    assert (qkv.Np, qkv.K, qkv.Mf) == (2 * 17, 32, 96)  # a GEMM over batch x tokens


# --- the integer executor: dense on N-d inputs, integer inputs --------------------------------
def test_dense_on_tokens_equals_dense_per_token():
    from dataclasses import replace

    w = RNG.normal(0, 0.5, (4, 6)).astype(f32)
    b = RNG.normal(0, 0.1, 6).astype(f32)
    m3 = _model([_node("MatMul", ["x", "w"], "m"), _node("Add", ["m", "b"])], {"w": w, "b": b},
                in_shape=("N", 5, 4))
    g3 = import_model(m3)
    assert _only(g3, Op.DENSE).attrs == {"nd": True}
    x = _x((3, 5, 4))
    calib = Dataset("c", _x((8, 5, 4), seed=3), None)
    prog3 = quantize(g3, Scheme.preset("per-channel"), calib, float_run=run_float)
    y3 = IntegerExecutor(prog3).run(x)[g3.output]
    assert y3.q.shape == (3, 5, 6)
    # the same program on the tokens as samples of a 2-D dense
    g2 = prog3.graph.copy()
    g2.input_shape = (4,)
    g2.nodes[0].attrs = {}
    prog2 = replace(prog3, graph=g2)
    y2 = IntegerExecutor(prog2).run(x.reshape(15, 4))[g2.output]
    np.testing.assert_array_equal(y3.q.reshape(15, 6), y2.q)


def test_token_ids_input():
    table = RNG.normal(0, 1, (7, 4)).astype(f32)
    m = _model([_node("Gather", ["t", "x"], "e"), _node("Relu", ["e"])], {"t": table},
               in_shape=("N", 3), in_type=TensorProto.INT64)
    ids = np.array([[0, 6, 2], [-1, 3, 3]], np.int64)
    g = _check(m, ids)
    assert g.input_dtype == "int64" and _ops(g) == [Op.EMBEDDING, Op.RELU]
    np.testing.assert_array_equal(run_float(g, ids.astype(f32))["y"], run_float(g, ids)["y"])
    with pytest.raises(HwsimError, match="whole numbers"):
        run_float(g, ids + 0.5)
    with pytest.raises(HwsimError, match="outside"):
        run_float(g, ids + 7)


def test_integer_input_feeds_only_embeddings():
    m = _model([_node("Relu", ["x"])], in_shape=("N", 3), in_type=TensorProto.INT64)
    with pytest.raises(ModelImportError, match=r"'relu' \(relu\).*int64 input"):
        import_model(m)


def test_every_op_has_a_float_function():
    assert set(FLOAT_OPS) == set(Op)


# --- ops, one small model each, against onnxruntime ------------------------------------------
W34 = RNG.normal(0, 0.5, (4, 3)).astype(f32)
OP_CASES = {
    "transpose": ([_node("Transpose", ["x"], perm=[0, 2, 3, 1])], {}, (2, 3, 4, 5), 17),
    "gather_scalar": ([_node("Gather", ["x", "i"], axis=1)], {"i": np.array(1)}, (2, 3, 4), 17),
    "gather_2d_negative": (
        [_node("Gather", ["x", "i"], axis=-1)],
        {"i": np.array([[0, -1], [2, 2]])},
        (2, 3, 4),
        17,
    ),
    "slice": (
        [_node("Slice", ["x", "s", "e", "a"])],
        {"s": np.array([1, 0]), "e": np.array([-1, BIG]), "a": np.array([2, 0])},
        (2, 3, 5),
        17,
    ),
    "slice_steps": (
        [_node("Slice", ["x", "s", "e", "a", "p"])],
        {"s": np.array([-1, 0]), "e": np.array([-BIG, 9]), "a": np.array([1, 2]),
         "p": np.array([-1, 2])},
        (2, 3, 5),
        17,
    ),
    "split_concat": (
        [_node("Split", ["x", "sp"], ["a", "b"], axis=2),
         _node("Concat", ["b", "a"], axis=2)],
        {"sp": np.array([1, 4])},
        (2, 3, 5),
        13,
    ),
    "split_num_outputs": (
        [_node("Split", ["x"], ["a", "b", "c"], axis=-1, num_outputs=3),
         _node("Concat", ["c", "a", "b"], axis=-1)],
        {},
        (2, 3, 5),
        18,
    ),
    "squeeze_unsqueeze": (
        [_node("Unsqueeze", ["x", "a"], "u"), _node("Squeeze", ["u", "b"])],
        {"a": np.array([1, -1]), "b": np.array([-1])},
        (2, 3, 4),
        13,
    ),
    "squeeze_v11_no_axes": ([_node("Squeeze", ["x"])], {}, (2, 1, 4, 1), 11),
    "concat_constant": (
        [_node("Concat", ["c", "x"], axis=-2)],
        {"c": RNG.normal(0, 1, (1, 1, 4)).astype(f32)},
        (2, 3, 4),
        17,
    ),
    "layernorm_last": (
        [_node("LayerNormalization", ["x", "g", "b"], axis=-1, epsilon=1e-3)],
        {"g": RNG.uniform(0.5, 1.5, 6).astype(f32), "b": RNG.normal(0, 0.1, 6).astype(f32)},
        (2, 3, 6),
        17,
    ),
    "layernorm_two_axes": (
        [_node("LayerNormalization", ["x", "g"], axis=-2)],
        {"g": RNG.uniform(0.5, 1.5, (3, 4)).astype(f32)},
        (2, 2, 3, 4),
        17,
    ),
    "softmax_axis1": ([_node("Softmax", ["x"], axis=1)], {}, (2, 3, 4, 5), 13),
    "softmax_then_relu": (
        [_node("Softmax", ["x"], "s", axis=-2), _node("Relu", ["s"])], {}, (2, 3, 4), 17),
    "gelu_op": ([_node("Gelu", ["x"])], {}, (2, 3, 4), 20),
    "gelu_op_tanh": ([_node("Gelu", ["x"], approximate="tanh")], {}, (2, 3, 4), 20),
    "sigmoid": ([_node("Sigmoid", ["x"])], {}, (2, 3, 4), 17),
    "hardsigmoid": ([_node("HardSigmoid", ["x"], alpha=0.3, beta=0.4)], {}, (2, 3, 4), 17),
    "hardswish": ([_node("HardSwish", ["x"])], {}, (2, 3, 4), 17),
    "mul_two_activations": (
        [_node("GlobalAveragePool", ["x"], "p"), _node("Sigmoid", ["p"], "s"),
         _node("Mul", ["x", "s"])],
        {},
        (2, 3, 4, 5),
        17,
    ),
    "add_two_activations_broadcast": (
        [_node("ReduceMean", ["x"], "m", axes=[1]), _node("Add", ["m", "x"])], {}, (2, 3, 4),
        17),
    "sub_div_constants": (
        [_node("Sub", ["x", "c"], "s"), _node("Div", ["s", "d"])],
        {"c": RNG.normal(0, 1, 4).astype(f32), "d": np.array(1.7, f32)},
        (2, 3, 4),
        17,
    ),
    "mul_add_constant_last_axis": (
        [_node("Mul", ["x", "c"], "m"), _node("Add", ["m", "d"])],
        {"c": RNG.normal(0, 1, 5).astype(f32), "d": RNG.normal(0, 1, (4, 5)).astype(f32)},
        (2, 3, 4, 5),
        17,
    ),
    "reduce_mean": ([_node("ReduceMean", ["x"], axes=[1], keepdims=0)], {}, (2, 3, 4), 17),
    "reduce_mean_gap": ([_node("ReduceMean", ["x"], axes=[-1, -2])], {}, (2, 3, 4, 5), 17),
    "reduce_mean_axes_input": ([_node("ReduceMean", ["x", "a"])], {"a": np.array([2])},
                               (2, 3, 4), 18),
    "matmul_two_activations": (
        [_node("Transpose", ["x"], "t", perm=[0, 1, 3, 2]), _node("MatMul", ["x", "t"])],
        {},
        (2, 2, 3, 4),
        17,
    ),
    "matmul_weight_on_3d": ([_node("MatMul", ["x", "w"])], {"w": W34}, (2, 5, 4), 17),
}


# onnxruntime runs these at one batch size only: a constant concatenated to a batch of 3 is
# invalid ONNX (hwsim uses it for every sample: a folded cls.expand(B, ...) is such a constant);
# a Squeeze without axes drops a batch of 1 (hwsim keeps the batch axis)
BATCHES = {"concat_constant": (1,), "squeeze_v11_no_axes": (3,)}


@pytest.mark.parametrize("case", sorted(OP_CASES))
def test_op_matches_onnxruntime(case):
    nodes, inits, shape, opset = OP_CASES[case]
    m = _model(nodes, inits, ("N",) + shape[1:], opset)
    for batch in BATCHES.get(case, (3, 1)):
        x = _x((batch,) + shape[1:], seed=len(case), scale=2.0)
        g = _check(m, x)
    assert run_float(g, _x((2,) + shape[1:]))["y"].shape[0] == 2
    if case == "reduce_mean_gap":
        assert _ops(g) == [Op.GAP]
    if case == "mul_two_activations":
        assert Op.MUL_ACT in _ops(g)
    if case == "sub_div_constants":
        assert _ops(g) == [Op.ADD_CONST, Op.DIV_CONST]
        assert g.nodes[0].weight.shape == (1, 1, 4)


# --- fusion ----------------------------------------------------------------------------------
def _c(name, v):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(
        v, f32), name))


def _ln_nodes(square="Pow", affine=True):
    nodes = [
        _c("two", 2.0), _c("eps", 1e-5),
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1], name="rm1"),
        helper.make_node("Sub", ["x", "mu"], ["d"], name="sub"),
        helper.make_node("Pow", ["d", "two"], ["sq"], name="pow") if square == "Pow"
        else helper.make_node("Mul", ["d", "d"], ["sq"], name="sq"),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1], name="rm2"),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
        helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
        helper.make_node("Div", ["d", "sd"], ["n" if affine else "y"], name="div"),
    ]
    if affine:
        nodes += [helper.make_node("Mul", ["n", "g"], ["ng"], name="gamma"),
                  helper.make_node("Add", ["b", "ng"], ["y"], name="beta")]
    return nodes


@pytest.mark.parametrize("square, affine", [("Pow", True), ("Mul", True), ("Pow", False)])
def test_decomposed_layernorm_fuses(square, affine):
    inits = {"g": RNG.uniform(0.5, 1.5, 6).astype(f32), "b": RNG.normal(0, 0.1, 6).astype(f32)}
    m = _model(_ln_nodes(square, affine), inits, ("N", 3, 6), 13)
    g = _check(m, _x((3, 3, 6), scale=3.0))
    n = _only(g, Op.LAYERNORM)
    assert len(g.nodes) == 1 and n.output == "y" and n.name == ("beta" if affine else "div")
    assert n.attrs["axis"] == 2 and n.attrs["epsilon"] == pytest.approx(1e-5)
    assert (n.weight is None) == (not affine)


GELU_ERF = [  # the same function, written three ways
    [_c("r2", np.sqrt(2.0)), _c("one", 1.0), _c("half", 0.5),
     helper.make_node("Div", ["x", "r2"], ["a"], name="div"),
     helper.make_node("Erf", ["a"], ["e"], name="erf"),
     helper.make_node("Add", ["e", "one"], ["p"], name="add"),
     helper.make_node("Mul", ["x", "p"], ["q"], name="mul"),
     helper.make_node("Mul", ["q", "half"], ["y"], name="mul_half")],
    [_c("ir2", 1 / np.sqrt(2.0)), _c("one", 1.0), _c("half", 0.5),
     helper.make_node("Mul", ["x", "half"], ["h"], name="mul_half"),
     helper.make_node("Mul", ["ir2", "x"], ["a"], name="scale"),
     helper.make_node("Erf", ["a"], ["e"], name="erf"),
     helper.make_node("Add", ["one", "e"], ["p"], name="add"),
     helper.make_node("Mul", ["p", "h"], ["y"], name="gelu_out")],
]


@pytest.mark.parametrize("i", range(len(GELU_ERF)))
def test_erf_gelu_fuses_whatever_the_operand_order(i):
    m = _model([_node("Relu", ["x"], "x0")] + [
        helper.make_node(n.op_type, [("x0" if t == "x" else t) for t in n.input], n.output,
                         name=n.name, **{a.name: helper.get_attribute_value(a)
                                         for a in n.attribute})
        for n in GELU_ERF[i]], {}, ("N", 3, 4), 13)
    g = _check(m, _x((3, 3, 4), scale=3.0))
    assert _ops(g) == [Op.RELU, Op.GELU] and g.nodes[1].attrs["form"] == "erf"
    assert len(g.nodes[1].attrs["fused"]) == 5


def test_silu_and_hardswish_fuse():
    m = _model([_node("Sigmoid", ["x"], "s"), _node("Mul", ["s", "x"], "silu"),
                helper.make_node("HardSigmoid", ["silu"], ["h"], name="hs", alpha=1 / 6),
                helper.make_node("Mul", ["silu", "h"], ["y"], name="hswish")],
               {}, ("N", 3, 4), 13)
    g = _check(m, _x((2, 3, 4), scale=4.0))
    assert _ops(g) == [Op.SILU, Op.HARDSWISH]
    assert g.nodes[1].attrs["alpha"] == pytest.approx(1 / 6) and g.nodes[1].attrs["beta"] == 0.5


def test_near_miss_gelu_is_not_fused_and_the_error_names_the_pattern():
    nodes = [helper.make_node(n.op_type, n.input, n.output, name=n.name) if n.op_type != "Constant"
             else n for n in GELU_ERF[0]]
    nodes[2] = _c("half", 0.6)  # not a GELU any more
    with pytest.raises(ModelImportError, match=r"'erf' \(Erf\).*part of a GELU"):
        import_model(_model(nodes, {}, ("N", 3, 4), 13))


# --- shape folding ---------------------------------------------------------------------------
def _dyn_shape_nodes(rest, mul=None):
    """Shape -> Gather(0) -> Unsqueeze -> [Mul] -> Concat with the constants ``rest``."""
    nodes = [
        _node("Shape", ["x"], "sh"),
        helper.make_node("Gather", ["sh", "zero"], ["b"], name="g0", axis=0),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"], name="unsq"),
    ]
    b = "b1"
    if mul is not None:
        nodes.append(helper.make_node("Mul", ["b1", "k"], ["bk"], name="merge"))
        b = "bk"
    parts = [b if v == "B" else f"c{i}" for i, v in enumerate(rest)]
    nodes.append(helper.make_node("Concat", parts, ["target"], name="cat", axis=0))
    inits = {"zero": np.array(0), "ax0": np.array([0]), "k": np.array([mul or 1])}
    inits |= {f"c{i}": np.array([v]) for i, v in enumerate(rest) if v != "B"}
    return nodes, inits


def test_dynamic_reshape_folds_with_a_symbolic_batch():
    nodes, inits = _dyn_shape_nodes(["B", 3, 2, -1])
    nodes.append(helper.make_node("Reshape", ["x", "target"], ["y"], name="rs"))
    m = _model(nodes, inits, ("N", 3, 4))
    g = _check(m, _x((3, 3, 4)))
    assert _ops(g) == [Op.RESHAPE] and g.nodes[0].attrs["shape"] == (0, 3, 2, -1)
    assert run_float(g, _x((5, 3, 4)))["y"].shape == (5, 3, 2, 2)


def test_batch_broadcast_constant_folds():
    # cls.expand(B, -1, -1) concatenated before the tokens
    nodes, inits = _dyn_shape_nodes(["B", 1, 4])
    nodes += [helper.make_node("Expand", ["cls", "target"], ["c"], name="expand"),
              helper.make_node("Concat", ["c", "x"], ["y"], name="cat1", axis=1)]
    inits["cls"] = RNG.normal(0, 1, (1, 1, 4)).astype(f32)
    g = _check(_model(nodes, inits, ("N", 3, 4)), _x((3, 3, 4)))
    assert _ops(g) == [Op.CONCAT] and g.nodes[0].attrs["consts"][0][0] == 0


def test_constant_subgraphs_fold():
    w = RNG.normal(0, 0.5, (3, 4)).astype(f32)
    m = _model([_node("Transpose", ["wt"], "w", perm=[1, 0]), _node("Identity", ["w"], "w2"),
                _node("MatMul", ["x", "w2"])], {"wt": w}, ("N", 4))
    g = _check(m, _x((2, 4)))
    assert _ops(g) == [Op.DENSE] and np.array_equal(g.nodes[0].weight, w)


@pytest.mark.parametrize(
    "rest, mul, word",
    [
        (["B", 12], 1, None),  # fine: (B, 12)
        ([4, "B", 3], 1, "puts the batch size at axis"),
        (["B", 4], 3, "merges the batch size"),  # (B * 3, 4)
    ],
)
def test_batch_in_a_shape_is_folded_or_rejected(rest, mul, word):
    nodes, inits = _dyn_shape_nodes(rest, mul)
    nodes.append(helper.make_node("Reshape", ["x", "target"], ["y"], name="rs"))
    m = _model(nodes, inits, ("N", 3, 4))
    if word is None:
        _check(m, _x((2, 3, 4)))
        return
    with pytest.raises(ModelImportError, match=rf"'rs' \(Reshape\).*{word}"):
        import_model(m, source="m.onnx")


def test_shape_from_a_symbolic_sample_dimension_is_rejected():
    nodes = [_node("Shape", ["x"], "sh"),
             helper.make_node("Gather", ["sh", "one"], ["t"], name="g1", axis=0),
             helper.make_node("Unsqueeze", ["t", "ax0"], ["t1"], name="unsq"),
             helper.make_node("Concat", ["z", "t1", "m1"], ["target"], name="cat", axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"], name="rs")]
    inits = {"one": np.array(1), "ax0": np.array([0]), "z": np.array([0]),
             "m1": np.array([-1])}
    with pytest.raises(ModelImportError, match=r"'rs' \(Reshape\).*symbolic sample"):
        import_model(_model(nodes, inits, ("N", "T", 4)))


# --- import errors ---------------------------------------------------------------------------
ERRORS = [
    ("Transpose", dict(perm=[1, 0, 2]), {}, "moves the batch axis"),
    ("Gather", dict(axis=0), {"i": np.array(1)}, "batch axis"),
    ("Concat", dict(axis=-3), {}, "batch axis"),
    ("Unsqueeze", {}, {"a": np.array([0])}, "batch axis"),
    ("Squeeze", {}, {"a": np.array([0])}, "batch axis"),
    ("Slice", {}, {"s": np.array([1]), "e": np.array([2]), "a": np.array([0])},
     "slices the batch axis"),
    ("LayerNormalization", dict(axis=0), {"g": np.ones((2, 3, 4), f32)}, "batch axis"),
    ("Softmax", dict(axis=0), {}, "batch axis"),
    ("ReduceMean", dict(axes=[0, 1]), {}, "batch axis"),
    ("Split", dict(axis=0), {}, "batch axis"),
    ("Reshape", {}, {"s": np.array([-1, 4])}, "does not keep the batch axis"),
    ("Gelu", dict(approximate="fast"), {}, "approximate"),
    ("LayerNormalization", {}, {"g": np.ones(4, f32)}, "Mean / InvStdDev"),
    ("MatMul", {}, {}, "rank >= 3"),
    ("Sub", {}, {"c": np.ones(4, f32)}, "c - x"),
    ("Gather", {}, {}, "activation indices"),
    ("Add", {}, {"c": np.ones((2, 3, 4), f32)}, "broadcasts over the batch axis"),
]


@pytest.mark.parametrize("op, kw, inits, word", ERRORS,
                         ids=[f"{e[0]}-{e[3].split()[0]}" for e in ERRORS])
def test_import_errors_name_file_node_op_and_reason(tmp_path, op, kw, inits, word):
    ins = ["x"] + list(inits)
    outs = ["y"]
    opset = 20 if op == "Gelu" else 17
    if op in ("MatMul", "Gather") and not inits:
        ins = ["x", "x"]
    if op == "Sub":
        ins = ["c", "x"]
    if op == "Concat":
        ins = ["x", "x"]
    if op == "Split":
        outs = ["y", "y2"]
    if op == "LayerNormalization" and not kw:
        outs = ["y", "mean"]
    shape = ("N", 4) if op == "MatMul" else ("N", 3, 4)
    if op == "LayerNormalization" and kw:
        shape = ("N", 2, 3, 4)
    m = _model([helper.make_node(op, ins, outs, name="bad", **kw)], inits, shape, opset)
    path = tmp_path / "bad.onnx"
    onnx.save(m, str(path))
    with pytest.raises(ModelImportError) as ei:
        import_model(path)
    msg = str(ei.value)
    assert str(path) in msg and f"node 'bad' ({op})" in msg and word in msg, msg


# --- each float op against onnxruntime's kernel, on onnxruntime's own inputs ------------------
FLOAT_BIT_EXACT = {
    "add", "add_const", "concat", "div_const", "embedding", "flatten", "gather", "hardsigmoid",
    "hardswish", "mul", "mul_act", "relu", "reshape", "slice", "transpose",
}
"""Float ops equal to onnxruntime's CPU kernel bit for bit (one IEEE operation per element, or
data movement)."""
FLOAT_ULPS_OF_MAX = {
    "conv": 4, "dense": 8, "gap": 2, "gelu": 2, "layernorm": 4, "matmul": 4, "reduce_mean": 2,
    "sigmoid": 2, "silu": 2, "softmax": 4,
}
"""The others: largest |hwsim - onnxruntime| in float32 spacings of the tensor's largest
magnitude. Measured (onnxruntime 1.32, AVX-512 VNNI, the four tiny models, opsets 13 and 17,
batch 3): conv 2, dense 4, gap 1, gelu 1, layernorm 2, matmul 2, reduce_mean 1, sigmoid 1,
silu 1, softmax 2 -- the bounds are twice that (MLAS's kernels differ between instruction
sets: summation order, vectorised exp / erf / tanh)."""


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("name", NAMES)
def test_float_ops_fed_onnxruntimes_tensors(tiny, name, opset):
    """Every IR node's float function fed the tensors onnxruntime (``ORT_DISABLE_ALL``)
    computed for its inputs: bit-equal to onnxruntime's output for FLOAT_BIT_EXACT ops, within
    FLOAT_ULPS_OF_MAX spacings of the output's largest magnitude for the others."""
    from hwsim.execute.arrays import graph_input
    from hwsim.execute.float import float_op

    archs, get = tiny
    path = get(name, opset)
    g = import_model(path)
    x = archs.tiny_inputs(name, 3)
    want = _ort_all(onnx.load(path), x, "input")
    want[g.input] = graph_input(g, x)
    seen = set()
    for n in g.nodes:
        if n.output not in want or any(t not in want for t in n.inputs):
            continue
        y = np.asarray(float_op(n, [want[t] for t in n.inputs]), np.float64)
        w = want[n.output].astype(np.float32)
        op = n.op.value
        seen.add(op)
        if op in FLOAT_BIT_EXACT:
            assert np.array_equal(y.astype(np.float32), w), n.name
            continue
        top = np.spacing(np.float32(np.abs(w).max())) if w.size else 0.0
        err = float(np.abs(y - w).max()) if w.size else 0.0
        assert err <= FLOAT_ULPS_OF_MAX[op] * top, (n.name, op, err / top)
    assert seen - FLOAT_BIT_EXACT - set(FLOAT_ULPS_OF_MAX) == set()
