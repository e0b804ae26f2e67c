"""QDQ transformers (issue 15): onnxruntime ``quantize_static`` exports of the tiny ViT, the
timm-style ViT and the tiny BERT of tests/conformance/archs.py, per-tensor and per-channel
weights (QInt8 weights, QUInt8 activations, min/max calibration), through import, the float
reference and the integer executor.

* **Import**: Q -> DQ pairs on constants fold to their ``DQ(Q(c))`` value (a GELU's 0.5 and 1.0,
  the class token, a LayerNorm weight re-quantized behind an Identity); MatMul weights ``(K,
  N)`` per channel on axis 1; MatMul of two activations -> ``Op.MATMUL``; the GELU chain, which
  onnxruntime's quantizer splits with Q/DQ pairs, node by node (``Op.ERF`` / ``Op.TANH``);
  timm's ``unbind`` through its Q/DQ pairs. Every activation tensor of the IR that the file
  quantizes has its ``TensorQuant``, and no other.
* **Float reference** (``run_float``) == onnxruntime (``ORT_DISABLE_ALL``) on a copy of the file
  whose activation ``QuantizeLinear -> DequantizeLinear`` pairs are ``Clip(DQ(q_min),
  DQ(q_max))`` (tests/execute/test_float_reference.py's reference; Q/DQ pairs on tensors that do
  not depend on the input's values -- constants, the class token expanded to the batch -- are
  kept: they are rounded constants), tensor by tensor, within ``FLOAT_RTOL`` times the tensor's
  largest magnitude (at least 1). Measured: at most 7.0e-7.
* **Integer run** (``IntegerExecutor``, ``isa="auto"``) against onnxruntime's default session
  (QLinearMatMul, QGemm, QLinearAdd / QLinearMul / QLinearConcat, QLinearSoftmax; see
  :mod:`hwsim.graph.ort_plan`), batch 3: the output integers are equal, bit for bit (the
  attention Softmax runs onnxruntime's ``com.microsoft.QLinearSoftmax`` contract,
  :func:`hwsim.qops.qlinear_softmax`, where the file's plan fuses it; before that rule hwsim's
  ``Q(softmax(DQ(x)))`` differed by up to 13 LSB at the output).
* **Op by op**: every MatMul that onnxruntime runs as ``QLinearMatMul`` (weights and the
  attention products), fed the integers onnxruntime produced for its inputs (the Q outputs
  exposed as graph outputs), through :func:`hwsim.qops.qlinear_matmul`: equal to onnxruntime's
  output integers. And every IR node, fed onnxruntime's tensors, through the integer executor's
  node rule: equal, Softmax included -- and float islands (LayerNorm, Erf,
  Tanh: float64 here, MLAS approximations there) allowed 1 LSB on at most ``ISLAND_SHARE`` of
  their outputs, a tie other CPUs' MLAS may break differently (measured: 0).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from hwsim import qops
from hwsim.execute import IntegerExecutor, QTensor, run_float, run_qoperator_batch
from hwsim.execute.arrays import graph_input
from hwsim.graph import ModelImportError, Op, import_model
from hwsim.graph.ort_plan import load_plan
from hwsim.numerics import IntFormat
from hwsim.numerics.affine import dequantize, quantize
from hwsim.quant.store import program_from_graph

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "conformance"))
import archs  # noqa: E402

MODELS = ("tiny_vit", "tiny_vit_timm", "tiny_bert")
CASES = [(m, pc) for m in MODELS for pc in (False, True)]
IDS = [f"{m}-{'perchannel' if pc else 'pertensor'}" for m, pc in CASES]
BATCH = 3
FLOAT_RTOL = 1e-5
MAX_OUTPUT_LSB = {"tiny_vit": 0, "tiny_vit_timm": 0, "tiny_bert": 0}
ISLAND_SHARE = 0.01
_RANGE = {onnx.TensorProto.UINT8: (0, 255), onnx.TensorProto.INT8: (-128, 127)}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(model, per_channel) -> QDQ file; each float model exported once."""
    d = tmp_path_factory.mktemp("tiny_qdq")
    out = {}
    for name in MODELS:
        fp = archs.export_tiny(name, d / f"{name}.onnx")
        for pc in (False, True):
            out[(name, pc)] = archs.quantize_tiny(name, fp, d / f"{name}_{int(pc)}.onnx", pc)
    return out


def _x(name: str) -> np.ndarray:
    return archs.tiny_inputs(name, BATCH)


# --- helpers: the file's structure, onnxruntime's tensors ------------------------------------
def _value_dependent(m: onnx.ModelProto) -> set[str]:
    """Tensors that depend on the input's values (a Shape's output does not: only on its size)."""
    inits = {i.name for i in m.graph.initializer}
    dyn = {i.name for i in m.graph.input if i.name not in inits}
    for n in m.graph.node:
        if n.op_type not in ("Shape", "Size") and any(t in dyn for t in n.input):
            dyn.update(o for o in n.output if o)
    return dyn


def _activation_q(m: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Quantized activation tensor -> its (first) QuantizeLinear."""
    dyn = _value_dependent(m)
    out = {}
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in dyn:
            out.setdefault(n.input[0], n)
    return out


def _float_copy(path: str) -> tuple[bytes, dict[str, str]]:
    """The file with every activation QuantizeLinear a ``Clip(DQ(q_min), DQ(q_max))`` and its
    DequantizeLinears Identities, every value-dependent tensor a graph output; and per quantized
    tensor the name of its clamped value."""
    m = onnx.load(path)
    g = m.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    elem = {i.name: i.data_type for i in g.initializer}
    dyn = _value_dependent(m)
    q_out, act_q, nodes = {}, set(), []
    for n in g.node:
        if n.op_type == "QuantizeLinear" and n.input[0] in dyn:
            s, z = np.float32(consts[n.input[1]]), int(consts[n.input[2]])
            qmin, qmax = _RANGE[elem[n.input[2]]]
            lo, hi = n.output[0] + "__lo", n.output[0] + "__hi"
            g.initializer.extend(
                [
                    numpy_helper.from_array(np.array(np.float32(qmin - z) * s, np.float32), lo),
                    numpy_helper.from_array(np.array(np.float32(qmax - z) * s, np.float32), hi),
                ]
            )
            nodes.append(helper.make_node("Clip", [n.input[0], lo, hi], [n.output[0]]))
            q_out[n.input[0]] = n.output[0]
            act_q.add(n.output[0])
        elif n.op_type == "DequantizeLinear" and n.input[0] in act_q:
            nodes.append(helper.make_node("Identity", [n.input[0]], [n.output[0]]))
        else:
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # the Q outputs were typed as integers
    have = {o.name for o in g.output}
    g.output.extend(
        helper.make_empty_tensor_value_info(t)
        for n in g.node
        for t in n.output
        if t and t in dyn and t not in have
    )
    return m.SerializeToString(), q_out


def _ort_tensors(path: str, x: np.ndarray, extra=()) -> tuple[dict, dict, dict]:
    """onnxruntime (default session options) on the file with every activation QuantizeLinear's
    output and the tensors ``extra`` exposed as graph outputs: (quantized tensor -> its
    integers, exposed name -> value, node name -> the op the exposed model runs for it).
    Exposing a Q output as a graph output can change onnxruntime's plan (an int8 Q/DQ pair
    whose Q output is a graph output is not converted to uint8 on x86), so the plan returned
    is the exposed model's own."""
    m = onnx.load(path)
    aq = _activation_q(m)
    have = {o.name for o in m.graph.output}
    names = sorted({q.output[0] for q in aq.values()} | set(extra))
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names if t not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    opt = Path(path).with_suffix(".exposed.onnx")
    so.optimized_model_filepath = str(opt)
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    vals = dict(zip(outs, sess.run(outs, {"input": x}), strict=True))
    kernels = {
        n.name: f"{n.domain}.{n.op_type}" if n.domain else n.op_type
        for n in onnx.load(str(opt)).graph.node
    }
    return {t: vals[q.output[0]] for t, q in aq.items()}, vals, kernels


# --- import ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name,per_channel", CASES, ids=IDS)
def test_qdq_transformer_imports_with_every_quantized_tensor(models, name, per_channel):
    path = models[(name, per_channel)]
    g = import_model(path)
    m = onnx.load(path)
    tensors = {g.input} | {n.output for n in g.nodes}
    # every IR tensor the file quantizes has that quantization, and no other tensor has one
    file_q = {t for t in _activation_q(m) if t in tensors}
    assert set(g.act_quant) - {t for t in g.act_quant if t.endswith(":unbind")} == file_q
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for t in file_q:
        q = _activation_q(m)[t]
        tq = g.act_quant[t]
        assert tq.scale == float(np.float32(consts[q.input[1]]))
        assert tq.zero_point == int(consts[q.input[2]])
    ops = [n.op for n in g.nodes]
    assert ops.count(Op.MATMUL) == 4 and ops.count(Op.SOFTMAX) == 2
    for n in g.nodes:
        if n.op is Op.MATMUL:  # QLinearMatMul's operands and result
            assert all(t in g.act_quant for t in (*n.inputs, n.output)), n.name
    assert ops.count(Op.TANH if name == "tiny_bert" else Op.ERF) == 2
    dense = [n for n in g.nodes if n.op is Op.DENSE]
    assert len(dense) == 9 and all(n.wq is not None for n in dense)
    for n in dense:  # (O, K) integers; per-channel scales along the O output channels
        assert n.wq.q.shape == n.weight.shape
        assert np.array_equal(n.wq.dequantize(), n.weight)
        assert np.ndim(n.wq.scale) == (1 if per_channel else 0)
        if per_channel:
            assert n.wq.scale.shape == (n.weight.shape[0],)


def test_gelu_constants_fold_to_their_quantized_value(models):
    """The GELU's ``* 0.5`` reads ``DQ(Q(0.5))`` (scale 1/510 with uint8 zero point 0 here),
    and the ``+ 1`` reads ``DQ(Q(1.0))``: the values a float op in onnxruntime sees."""
    path = models[("tiny_vit", False)]
    g = import_model(path)
    m = onnx.load(path)
    consts = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    want = {}
    for n in m.graph.node:  # Q(c) -> DQ: the float32 value onnxruntime computes
        if n.op_type == "QuantizeLinear" and n.input[0] in consts and "mlp.1" in n.name:
            s, z = consts[n.input[1]], consts[n.input[2]]
            fmt = {np.dtype(np.uint8): (0, 255), np.dtype(np.int8): (-128, 127)}[z.dtype]
            q = np.clip(np.rint(np.float32(consts[n.input[0]]) / s) + int(z), *fmt)
            want[float(consts[n.input[0]])] = np.float32((q - int(z)) * s)
    assert set(want) == {0.5, 1.0}
    mul = [n for n in g.nodes if n.op is Op.MUL and n.name.endswith("mlp.1/Mul_1")]
    add = [n for n in g.nodes if n.op is Op.ADD_CONST and n.name.endswith("mlp.1/Add")]
    assert len(mul) == len(add) == 2
    assert all(float(n.weight) == want[0.5] for n in mul)
    assert all(float(n.weight) == want[1.0] for n in add)


# --- float reference -------------------------------------------------------------------------
@pytest.mark.parametrize("name,per_channel", CASES, ids=IDS)
def test_float_reference_equals_onnxruntime_tensor_by_tensor(models, name, per_channel):
    path = models[(name, per_channel)]
    graph = import_model(path)
    x = _x(name)
    got = run_float(graph, x)
    model, q_out = _float_copy(path)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3  # the replaced Q/DQ nodes leave unused initializers
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    want = dict(zip(names, sess.run(names, {"input": x}), strict=True))
    compared = 0
    for t, v in got.items():
        w = want.get(q_out.get(t, t))
        if w is None:
            continue
        assert v.shape == w.shape, t
        tol = FLOAT_RTOL * max(1.0, float(np.abs(w).max()))
        err = float(np.abs(v.astype(np.float64) - w).max())
        assert err <= tol, f"tensor {t!r}: max |hwsim - onnxruntime| = {err} > {tol}"
        compared += 1
    # every IR tensor but the input and an unbind's intermediate Gathers
    assert compared >= len(graph.nodes) - sum(n.name.endswith(":gather") for n in graph.nodes)
    assert graph.output in got and compared >= 60


# --- the integer run -------------------------------------------------------------------------
@pytest.mark.parametrize("name,per_channel", CASES, ids=IDS)
def test_integer_run_output_within_measured_bound_of_onnxruntime(models, name, per_channel):
    path = models[(name, per_channel)]
    x = _x(name)
    graph = import_model(path)
    ex = IntegerExecutor(program_from_graph(graph), isa="auto")
    env = ex.run(x)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    tq = graph.act_quant[graph.output]
    q_ort = quantize(want, tq.scale, tq.zero_point, tq.fmt)  # DQ's output read back, exactly
    assert np.array_equal(dequantize(q_ort, tq.scale, tq.zero_point), want)
    d = np.abs(env[graph.output].q.astype(np.int64) - q_ort)
    assert int(d.max()) <= MAX_OUTPUT_LSB[name], (int(d.max()), float((d == 0).mean()))
    got = ex.output(env)
    assert float(np.abs(got - want).max()) <= MAX_OUTPUT_LSB[name] * tq.scale * (1 + 1e-6)


ACT_CASES = [
    (m, act, sym)
    for m in MODELS
    for act, sym in (("s8", False), ("s8", True), ("u8", True))
    # tiny_vit_timm with asymmetric int8 activations: 1-2% of its outputs differ by an LSB
    # (onnxruntime keeps the qkv MatMul in float there, hwsim follows in MLAS's order; the
    # rest is a float-island rounding not traced yet) -- docs/networks.md, "Conformance"
    if not (m == "tiny_vit_timm" and (act, sym) == ("s8", False))
]


@pytest.mark.parametrize("name,act,sym", ACT_CASES)
def test_integer_run_bit_exact_with_int8_and_symmetric_activations(
    tmp_path_factory, name, act, sym
):
    """quantize_static's other activation settings (QInt8 -- onnxruntime 1.32's default --
    and ActivationSymmetric): per-channel weights, 8 inputs, outputs equal bit for bit."""
    d = tmp_path_factory.mktemp(f"{name}_{act}_{int(sym)}")
    fp = archs.export_tiny(name, d / f"{name}.onnx")
    path = archs.quantize_tiny(name, fp, d / "q.onnx", True, act, sym)
    x = archs.tiny_inputs(name, 8, seed=11)
    ex = IntegerExecutor(program_from_graph(import_model(path)), isa="auto")
    got = ex.output(ex.run(x))
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    assert np.array_equal(got, want), float(np.abs(got - want).max())


@pytest.mark.parametrize("name,per_channel", CASES, ids=IDS)
def test_qlinear_matmul_nodes_fed_onnxruntimes_integers_are_bit_exact(models, name, per_channel):
    """The "feed hwsim the tensors onnxruntime saw" conformance of every QLinearMatMul."""
    path = models[(name, per_channel)]
    m = onnx.load(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    ints, vals, kernels = _ort_tensors(path, _x(name))
    aq = _activation_q(m)
    plan = load_plan(path)
    checked = 0
    for n in m.graph.node:
        if n.op_type != "MatMul" or kernels.get(n.name) != "QLinearMatMul":
            continue
        assert plan.kernel(n.name) == "QLinearMatMul"  # as the unexposed model runs it
        args = []
        for t in n.input:
            dq = producer[t]
            assert dq.op_type == "DequantizeLinear"
            q = inits.get(dq.input[0])
            if q is None:  # an activation: the integers onnxruntime's Q wrote
                q = vals[dq.input[0]]
            args += [q, inits[dq.input[1]], inits[dq.input[2]]]
        qy = aq[n.output[0]]
        y = qops.qlinear_matmul(*args, inits[qy.input[1]], inits[qy.input[2]], isa="auto")
        want = ints[n.output[0]]
        assert y.dtype == want.dtype and np.array_equal(y, want), n.name
        checked += 1
    assert checked == 12  # 8 weight MatMuls, 4 attention products


def _node_inputs(graph, node, ints, vals, x):
    ins = []
    for t in node.inputs:
        if t == graph.input and t not in graph.act_quant:
            ins.append(graph_input(graph, x))
        elif t in graph.act_quant and t in ints:
            tq = graph.act_quant[t]
            ins.append(QTensor(ints[t], np.float32(tq.scale), tq.zero_point, tq.fmt))
        elif t in vals and t not in graph.act_quant:
            ins.append(vals[t])
        else:
            return None
    return ins


@pytest.mark.parametrize("name,per_channel", CASES, ids=IDS)
def test_every_node_fed_onnxruntimes_tensors(models, name, per_channel):
    """Each IR node with a quantized output, fed onnxruntime's tensors, through the integer
    executor's rule for it: equal to onnxruntime's integers (float islands: see the module
    docstring)."""
    path = models[(name, per_channel)]
    x = _x(name)
    graph = import_model(path)
    unquantized = {t for n in graph.nodes for t in n.inputs if t not in graph.act_quant}
    ints, vals, _ = _ort_tensors(path, x, unquantized - {graph.input})
    ex = IntegerExecutor(program_from_graph(graph), isa="auto")
    checked = set()
    for node in graph.nodes:
        ins = _node_inputs(graph, node, ints, vals, x)
        if node.output not in graph.act_quant or ins is None or node.output not in ints:
            continue
        ex._current = node.name  # the node's counters and register statistics
        try:
            y = ex._node(node, ins)
        finally:
            ex._current = None
        d = np.abs(y.q.astype(np.int64) - ints[node.output].astype(np.int64))
        if node.op is Op.SOFTMAX:
            assert d.max() == 0, node.name  # QLinearSoftmax's contract
        elif node.op in (Op.LAYERNORM, Op.ERF, Op.TANH):
            assert d.max() <= 1 and (d > 0).mean() <= ISLAND_SHARE, node.name
        else:
            assert d.max() == 0, (node.name, node.op, float((d > 0).mean()))
        checked.add(node.op)
    assert {Op.MATMUL, Op.DENSE, Op.SOFTMAX, Op.LAYERNORM, Op.ADD, Op.ADD_CONST} <= checked


# --- the pieces, on small models -------------------------------------------------------------
def _qdq_model(nodes, inits, in_shape=("N", 4, 3), opset=17):
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _on_grid(shape, s, z, seed=0) -> np.ndarray:
    """float32 values a uint8 Q/DQ pair with scale ``s``, zero point ``z`` leaves unchanged."""
    k = np.random.default_rng(seed).integers(0, 256, shape) - z
    return (k.astype(np.float32) * np.float32(s)).astype(np.float32)


def _pair(t, s, z):
    """A QuantizeLinear -> DequantizeLinear pair on ``t`` with initializers ``s``, ``z``."""
    return [
        helper.make_node("QuantizeLinear", [t, s, z], [t + "_q"], name=t + "_Q"),
        helper.make_node("DequantizeLinear", [t + "_q", s, z], [t + "_dq"], name=t + "_DQ"),
    ]


def test_matmul_weight_per_channel_on_axis_1_is_the_output_channel():
    rng = np.random.default_rng(0)
    wq = rng.integers(-127, 128, (3, 5)).astype(np.int8)  # (K, N)
    ws = (rng.random(5) * 0.01 + 0.001).astype(np.float32)
    inits = {
        "s": np.float32(0.05),
        "z": np.uint8(128),
        "wq": wq,
        "ws": ws,
        "wz": np.zeros(5, np.int8),
    }
    nodes = _pair("x", "s", "z") + [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w"], ["y"], name="mm"),
    ]
    g = import_model(_qdq_model(nodes, inits))
    (n,) = g.nodes
    assert n.op is Op.DENSE and np.array_equal(n.wq.q, wq.T) and np.array_equal(n.wq.scale, ws)
    x = _on_grid((2, 4, 3), 0.05, 128, seed=1)
    y = run_float(g, x)["y"]
    want = ort.InferenceSession(
        _qdq_model(nodes, inits).SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_per_channel_weight_on_the_wrong_axis_is_a_clear_error():
    inits = {
        "wq": np.ones((3, 5), np.int8),
        "ws": np.full(3, 0.1, np.float32),
        "wz": np.zeros(3, np.int8),
    }
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    with pytest.raises(ModelImportError, match=r"'mm' \(MatMul\).*axis 1"):
        import_model(_qdq_model(nodes, inits))
    inits["ws"] = np.full(4, 0.1, np.float32)  # 4 scales for an axis of 3
    with pytest.raises(ModelImportError, match=r"4 scales for axis 0 of a tensor of shape"):
        import_model(_qdq_model(nodes, inits))


def test_constants_through_identity_q_dq_and_gather_fold():
    """``Identity`` of a dequantized table, re-quantized by a Q/DQ pair, gathered at constant
    ids and added: an ``add_const`` holding ``DQ(Q(take(DQ(table))))``."""
    table = np.arange(-6, 6, dtype=np.int8).reshape(4, 3)
    inits = {
        "tq": table,
        "ts": np.float32(0.1),
        "tz": np.int8(0),
        "ids": np.array([[2, 0, 3, 1]]),
        "s2": np.float32(0.07),
        "z2": np.int8(3),
        "s": np.float32(0.05),
        "z": np.uint8(128),
    }
    nodes = [
        helper.make_node("DequantizeLinear", ["tq", "ts", "tz"], ["t"]),
        helper.make_node("Identity", ["t"], ["t2"]),
        *_pair("t2", "s2", "z2"),
        helper.make_node("Gather", ["t2_dq", "ids"], ["p"]),
        *_pair("x", "s", "z"),
        helper.make_node("Add", ["x_dq", "p"], ["y"], name="add"),
    ]
    m = _qdq_model(nodes, inits)
    g = import_model(m)
    (n,) = g.nodes
    assert n.op is Op.ADD_CONST and n.weight.shape == (1, 4, 3)
    t2 = dequantize(quantize(dequantize(table, 0.1, 0), 0.07, 3, IntFormat(8, True)), 0.07, 3)
    assert np.array_equal(n.weight[0], t2[[2, 0, 3, 1]])
    x = _on_grid((2, 4, 3), 0.05, 128, seed=2)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    assert np.array_equal(run_float(g, x)["y"], want)


def test_erf_imports_on_its_own_only_in_qdq_models():
    inits = {"s": np.float32(0.02), "z": np.uint8(128)}
    qdq = _pair("x", "s", "z") + [helper.make_node("Erf", ["x_dq"], ["y"], name="erf")]
    g = import_model(_qdq_model(qdq, inits))
    assert [n.op for n in g.nodes] == [Op.ERF]
    flt = [helper.make_node("Erf", ["x"], ["y"], name="erf")]
    with pytest.raises(ModelImportError, match=r"'erf' \(Erf\).*in a float model.*part of a GELU"):
        import_model(_qdq_model(flt, {}))


# --- QOperator -------------------------------------------------------------------------------
def test_qoperator_interpreter_runs_the_plain_ops_between_quantized_ones():
    """Shape arithmetic, Gather / Slice / Split / Expand / Where, Erf / Tanh, LayerNorm and
    ReduceMean as a float model through the QOperator interpreter, against onnxruntime."""
    f = onnx.TensorProto.FLOAT
    c = {
        "i0": np.array(0, np.int64),
        "two": np.array([2], np.int64),
        "ax": np.array([1]),
        "st": np.array([1]),
        "en": np.array([3]),
        "one": np.array(1.0, np.float32),
        "g": np.ones(3, np.float32),
        "b": np.zeros(3, np.float32),
        "sp": np.array([1, 1]),
        "three": np.array([3], np.int64),
    }
    nodes = [
        helper.make_node("Shape", ["x"], ["sh"]),
        helper.make_node("Gather", ["sh", "i0"], ["n"]),
        helper.make_node("Div", ["sh", "two"], ["half"]),
        helper.make_node(
            "ConstantOfShape",
            ["three"],
            ["ones"],
            value=numpy_helper.from_array(np.array([1], np.int64)),
        ),
        helper.make_node("Equal", ["half", "ones"], ["eq"]),
        helper.make_node("Slice", ["x", "st", "en", "ax"], ["sl"]),
        helper.make_node("Erf", ["sl"], ["e"]),
        helper.make_node("Tanh", ["e"], ["t"]),
        helper.make_node("LayerNormalization", ["t", "g", "b"], ["ln"], axis=-1),
        helper.make_node("Split", ["ln", "sp"], ["s0", "s1"], axis=1),
        helper.make_node("ReduceMean", ["s1"], ["rm"], axes=[2], keepdims=1),
        helper.make_node("Expand", ["rm", "sh"], ["ex"]),
        helper.make_node("Where", ["eq", "one", "one"], ["w"]),
        helper.make_node("Add", ["ex", "x"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "t",
        [helper.make_tensor_value_info("x", f, ["N", 4, 3])],
        [helper.make_tensor_value_info("y", f, None)],
        [numpy_helper.from_array(v, k) for k, v in c.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    x = np.random.default_rng(3).normal(size=(2, 4, 3)).astype(np.float32)
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    np.testing.assert_allclose(run_qoperator_batch(m, x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("per_channel", [False, True])
def test_qoperator_transformer_equals_onnxruntime(tmp_path, name, per_channel):
    """``quantize_static(..., QuantFormat.QOperator)`` of the tiny encoders (QLinearMatMul,
    QLinearAdd, QLinearSoftmax, DynamicQuantize-free): the node-by-node interpreter's outputs
    equal onnxruntime's bit for bit."""
    fp = archs.export_tiny(name, tmp_path / "f.onnx")
    path = archs.quantize_tiny(name, fp, tmp_path / "qop.onnx", per_channel, qoperator=True)
    x = _x(name)
    m = onnx.load(path)
    want = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"input": x})
    assert np.array_equal(run_qoperator_batch(m, x, path, isa="auto"), want[0])
