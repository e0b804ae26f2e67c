"""Outputs-only runs (``IntegerExecutor(outputs_only=True)``, :mod:`hwsim.execute.lowered`): the
layers lowered to onnxruntime's QOperator kernels give the integers of the node-by-node run,
bit for bit -- on the shipped models, on standard architectures quantized by onnxruntime and by
hwsim, and on random layers at the extremes (all-max operands, accumulators at their bound,
narrow formats, NaN and infinite inputs, batches of 1).

The reference is the node-by-node executor, itself held to plain-int references
(``tests/datapath``, ``tests/execute/test_executor.py``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.quant import Scheme, quantize
from hwsim.quant.store import load, program_from_graph

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))
import archs  # noqa: E402

EXTREMES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 3e38, -3e38, 1e-45], np.float32)


def both(program, x):
    """The node-by-node output integers and the outputs-only ones, and the lowering."""
    ex = IntegerExecutor(program)
    fx = IntegerExecutor(program, outputs_only=True)
    a = ex.run(x, keep_all=False)[ex.g.output]
    b = fx.run(x, keep_all=False)[fx.g.output]
    return a, b, fx


def assert_every_tensor(program, x):
    """Each node's output, made the graph's output in turn: the node-by-node integers and the
    outputs-only ones (the lowered segments then return it)."""
    nodes = program.graph.nodes
    for i, n in enumerate(nodes):
        graph = dataclasses.replace(program.graph, output=n.output, nodes=nodes[: i + 1])
        a, b, _ = both(dataclasses.replace(program, graph=graph), x)
        assert_same(a, b)


def assert_same(a, b):
    qa = getattr(a, "q", a)
    qb = getattr(b, "q", b)
    assert qa.dtype == qb.dtype and qa.shape == qb.shape
    assert np.array_equal(qa, qb, equal_nan=qa.dtype.kind == "f")
    if hasattr(a, "scale"):
        assert np.array_equal(a.scale, b.scale) and a.zero_point == b.zero_point
        assert a.fmt == b.fmt


def with_extremes(x, rng):
    """``x`` scaled by 0 / 1 / 50 per sample, and a sample of NaN, infinities and huge values."""
    x = x * rng.choice([0.0, 1.0, 50.0], (len(x),) + (1,) * (x.ndim - 1)).astype(np.float32)
    y = x.copy()
    y[0].reshape(-1)[:] = np.resize(EXTREMES, y[0].size)
    return y


@pytest.fixture(scope="module")
def digits():
    return load_data("digits-train")


@pytest.mark.parametrize("model", ["rescnn", "mlp", "vit", "silucnn"])
@pytest.mark.parametrize("preset", ["per-tensor", "per-channel"])
def test_shipped_models(digits, model, preset):
    rng = np.random.default_rng(0)
    calib = Dataset("c", digits.x[:64], None)
    program = quantize(
        import_model(api.resolve_model(model)), Scheme.preset(preset), calib, float_run=run_float
    )
    for n in (1, 37):
        x = with_extremes(digits.x[rng.integers(0, len(digits), n)], rng)
        a, b, fx = both(program, x)
        assert_same(a, b)
    assert_every_tensor(program, x)
    if model in ("rescnn", "mlp") and preset == "per-tensor":  # not vacuous: all of it lowers
        assert not fx.lowering.why, fx.lowering.why
        assert len(fx.lowering.steps) == 1
    if model == "silucnn" and preset == "per-tensor":  # SiLU, HardSwish, the SE gate's Mul
        assert not fx.lowering.why, fx.lowering.why
    if model == "vit":  # all but the LayerNorm / Softmax float islands (row reductions)
        left = {n.op.value for n in fx.g.nodes if n.name in fx.lowering.why}
        assert left == {"layernorm", "softmax"}, fx.lowering.why


def test_a_saved_and_loaded_program_lowers_alike(digits, tmp_path):
    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor"),
        Dataset("c", digits.x[:64], None),
        float_run=run_float,
    )
    from hwsim.quant.store import save

    save(program, tmp_path / "r.onnx")
    x = digits.x[:50]
    a, b, _ = both(load(tmp_path / "r.onnx"), x)
    assert_same(a, b)


@pytest.fixture(scope="module")
def arch_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lowered_archs")
    return {
        (arch, pc): archs.make(arch, d, pc)
        for arch in ("resnet18", "mobilenetv2")
        for pc in (False, True)
    }


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
@pytest.mark.parametrize("per_channel", [False, True])
def test_standard_architectures_quantized_by_onnxruntime(arch_models, arch, per_channel):
    """torch's ResNet-18 / MobileNetV2 (reduced), quantize_static QDQ files as imported: every
    layer lowers, with the node-by-node integers -- and, where onnxruntime's uint8 x int8 sums
    are exact on this CPU, onnxruntime's own outputs."""
    float_path, qdq_path = arch_models[(arch, per_channel)]
    program = program_from_graph(import_model(qdq_path))
    x = with_extremes(archs.inputs(5), np.random.default_rng(1))
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert not fx.lowering.why, fx.lowering.why
    from hwsim.datapath.engines import ort_exact

    if ort_exact("int8"):  # onnxruntime's own integers are exact on this CPU: the same
        import onnxruntime as ort

        sess = ort.InferenceSession(str(qdq_path), providers=["CPUExecutionProvider"])
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        assert np.array_equal(fx.output({fx.g.output: b}), want)


@pytest.mark.parametrize("arch", ["resnet18", "mobilenetv2"])
def test_standard_architectures_quantized_by_hwsim(arch_models, arch):
    float_path, _ = arch_models[(arch, False)]
    calib = Dataset("c", archs.calib_data(8), None)
    program = quantize(
        import_model(float_path), Scheme.preset("per-tensor"), calib, float_run=run_float
    )
    x = with_extremes(archs.inputs(4), np.random.default_rng(2))
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert not fx.lowering.why, fx.lowering.why


# -- random layers ------------------------------------------------------------------------------


def _conv_model(rng, c, f, k, stride, pad, groups, dil, relu, add, dense, pool=None):
    """A float model: Conv (or Gemm on the flattened input) [+ Relu] [+ Add of a second conv
    of the same input] [+ a pool: ``gap``, ``avg`` (2x2, stride 1, padded), ``max``]."""
    inits, nodes = [], []

    def conv(name, x):
        w = rng.normal(0, 1, (f, c // groups, k, k)).astype(np.float32)
        b = rng.normal(0, 2, (f,)).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, name + "_w"), numpy_helper.from_array(b, name + "_b")]
        )
        nodes.append(helper.make_node(
            "Conv", [x, name + "_w", name + "_b"], [name], strides=[stride, stride],
            pads=[pad] * 4, group=groups, dilations=[dil, dil], kernel_shape=[k, k],
        ))  # fmt: skip
        return name

    if dense:
        nodes.append(helper.make_node("Flatten", ["x"], ["xf"], axis=1))
        w = rng.normal(0, 1, (c * 36, f)).astype(np.float32)
        b = rng.normal(0, 2, (f,)).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, "gw"), numpy_helper.from_array(b, "gb")])
        nodes.append(helper.make_node("Gemm", ["xf", "gw", "gb"], ["y"]))
        y = "y"
    else:
        y = conv("c1", "x")
        if relu:
            nodes.append(helper.make_node("Relu", [y], ["r1"]))
            y = "r1"
        if add:
            z = conv("c2", "x")
            nodes.append(helper.make_node("Add", [y, z], ["s"]))
            y = "s"
        if pool == "gap":
            nodes.append(helper.make_node("GlobalAveragePool", [y], ["p"]))
        elif pool == "avg":
            nodes.append(helper.make_node(
                "AveragePool", [y], ["p"], kernel_shape=[2, 2], pads=[0, 0, 1, 1],
                count_include_pad=int(rng.integers(0, 2)),
            ))  # fmt: skip
        elif pool == "max":
            nodes.append(helper.make_node(
                "MaxPool", [y], ["p"], kernel_shape=[2, 2], strides=[2, 2], pads=[1, 1, 0, 0]
            ))  # fmt: skip
        y = "p" if pool else y
    out_shape = ["N", f] + ([] if dense else ["h", "w"])
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 6, 6])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)], inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([(1, 1), (2, 2), (4, 2), (3, 3), (4, 4)]),  # channels, groups
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 1),
    st.integers(1, 2),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(2, 8),
    st.integers(2, 8),
    st.sampled_from([12, 16, 20, 32]),
    st.sampled_from(["wrap", "saturate"]),
    st.sampled_from(["ort", "tflite", "pow2"]),
    st.sampled_from(["per-tensor", "per-channel"]),
    st.sampled_from([None, "gap", "avg", "max"]),
)
def test_random_layers(tmp_path, seed, cg, k, stride, pad, dil, relu, add, dense, wbits, abits,
                       acc_bits, overflow, register, preset, pool):  # fmt: skip
    """Random conv / dense / residual layers at every width the scheme allows: where the
    accumulator cannot overflow and the register is ``ort`` they lower, elsewhere they run in
    the executor -- the integers are the node-by-node run's either way."""
    rng = np.random.default_rng(seed)
    c, groups = cg
    f = groups * int(rng.integers(1, 3))
    model = _conv_model(rng, c, f, k, stride, pad, groups, dil, relu, add, dense, pool)
    path = tmp_path / f"m{seed}.onnx"
    onnx.save(model, path)
    calib = Dataset("c", rng.normal(0, 1, (8, c, 6, 6)).astype(np.float32), None)
    scheme = Scheme.preset(
        preset, wbits=wbits, abits=abits, acc_bits=acc_bits, overflow=overflow, register=register
    )
    program = quantize(import_model(path), scheme, calib, float_run=run_float)
    x = rng.normal(0, 1, (int(rng.integers(1, 5)), c, 6, 6)).astype(np.float32)
    x = with_extremes(x, rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    why = fx.lowering.why
    mac = [n for n in fx.g.nodes if n.op.value in ("conv", "dense")]
    if register != "ort":  # the table rule covers other registers' Adds, not their MACs
        assert all(n.name in why for n in mac)
    elif acc_bits == 32:  # ort registers, int32 accumulators: every layer lowers
        assert not why, why


def _ones_model(c, f, k):
    w = np.ones((f, c, k, k), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k, k])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, k, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", f, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("acc_bits,lowers", [(20, False), (21, True)])
def test_all_max_operands_lower_only_where_the_sum_fits(tmp_path, acc_bits, lowers):
    """K = 2 * 4 * 4 = 32 products of 255 * 127 (uint8 input, all-ones weights at 8 bits):
    at most 1,036,320 < 2^20 = 1,048,576, so 21 bits hold every partial sum and 20 do not."""
    onnx.save(_ones_model(2, 3, 4), tmp_path / "m.onnx")
    calib = Dataset("c", np.linspace(0, 1, 2 * 2 * 16, dtype=np.float32).reshape(2, 2, 4, 4), None)
    scheme = Scheme.preset("per-tensor", acc_bits=acc_bits, overflow="saturate")
    program = quantize(import_model(tmp_path / "m.onnx"), scheme, calib, float_run=run_float)
    x = np.full((3, 2, 4, 4), 5.0, np.float32)  # all-max operands after clamping
    x[1] = 0.5
    a, b, fx = both(program, x)
    assert_same(a, b)
    conv = fx.g.nodes[0].name
    assert (conv in fx.lowering.lowered) is lowers
    if not lowers:
        assert fx.lowering.why[conv] == "the accumulator might overflow"


def test_statistics_are_not_collected_and_counters_stay_with_the_full_run(digits):
    """An outputs-only executor does not fill the lowered layers' statistics; a full run does."""
    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor"),
        Dataset("c", digits.x[:32], None),
        float_run=run_float,
    )
    fx = IntegerExecutor(program, outputs_only=True)
    fx.run(digits.x[:16], keep_all=False)
    assert all(st.counters.macs == 0 for st in fx.stats.values())
    ex = IntegerExecutor(program)
    ex.run(digits.x[:16], keep_all=False)
    assert sum(st.counters.macs for st in ex.stats.values()) > 0


def test_keep_all_and_visitors_run_node_by_node(digits):
    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor"),
        Dataset("c", digits.x[:32], None),
        float_run=run_float,
    )
    fx = IntegerExecutor(program, outputs_only=True)
    env = fx.run(digits.x[:4], keep_all=True)
    assert fx.lowering is None and len(env) > 3


@pytest.mark.parametrize("register", ["ort", "pow2"])
def test_a_residual_add_lowers_by_its_rule(tmp_path, register):
    """A ReLU branch (uint8) plus a linear branch (int8): the ``ort`` Add as float32 onnxruntime
    ops, a ``pow2`` Add as a table of the executor's rule (its convolutions stay in the
    executor)."""
    rng = np.random.default_rng(3)
    onnx.save(_conv_model(rng, 2, 3, 3, 1, 1, 1, 1, True, True, False), tmp_path / "m.onnx")
    calib = Dataset("c", rng.normal(0, 1, (8, 2, 6, 6)).astype(np.float32), None)
    scheme = Scheme.preset("per-tensor", register=register)
    program = quantize(import_model(tmp_path / "m.onnx"), scheme, calib, float_run=run_float)
    x = with_extremes(rng.normal(0, 1, (6, 2, 6, 6)).astype(np.float32), rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    add = next(n for n in fx.g.nodes if n.op.value == "add")
    fmts = {fx.p.acts[t].fmt.signed for t in add.inputs}
    assert fmts == {True, False}  # mixed signedness: not onnxruntime's QLinearAdd
    assert add.name in fx.lowering.lowered
    convs = [n.name for n in fx.g.nodes if n.op.value == "conv"]
    assert all((c in fx.lowering.lowered) is (register == "ort") for c in convs)


def test_hwsim_run_outputs_only_matches_the_full_run(digits, tmp_path):
    """``hwsim run --outputs-only``: the full run's integer outputs, accuracy and MAC count
    (the full run counts its MACs in the datapath, this one from the graph's shapes)."""
    from click.testing import CliRunner

    from hwsim.cli import main
    from hwsim.quant.store import save

    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor"),
        Dataset("c", digits.x[:64], None),
        float_run=run_float,
    )
    save(program, tmp_path / "r.onnx")
    reps, outs = [], []
    for extra in ([], ["--outputs-only"]):
        r = CliRunner().invoke(
            main,
            ["run", str(tmp_path / "r.onnx"), "--data", "digits", "--batch-size", "100",
             "--report", str(tmp_path / f"r{len(reps)}.json"),
             "--save-outputs", str(tmp_path / f"o{len(reps)}.npz"), *extra],
        )  # fmt: skip
        assert r.exit_code == 0, r.output
        import json

        reps.append(json.loads((tmp_path / f"r{len(reps)}.json").read_text()))
        with np.load(tmp_path / f"o{len(outs)}.npz") as f:
            outs.append({k: f[k] for k in f.files})
    full, fast = reps
    assert fast["outputs_only"] and not full["outputs_only"]
    assert fast["int_accuracy"] == full["int_accuracy"]
    assert fast["float_accuracy"] is None and fast["layers"] == []
    assert fast["totals"]["macs"] == full["totals"]["macs"] > 0
    # nothing counted: no counter totals (not zeros that would read as "no overflow")
    assert fast["totals"]["overflow_events"] is None and full["totals"]["overflow_events"] == 0
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert np.array_equal(outs[0][k], outs[1][k])
    assert "outputs only" in r.output and "12 of 12 nodes" in r.output


def test_float32_ties_of_the_ort_register_round_half_even(tmp_path):
    """The lowered QLinearConv gets the register's multiplier ``m`` as its scale, so it rounds
    ``f32(f32(acc) * m)`` half to even as the ``ort`` register does (eq. 8), including the
    products that are float32 ties only after rounding (the exact product is not a tie). Each
    output channel's bias is chosen so that its sum is such a tie; the expected integers come
    from the plain-Fraction reference ``ort_requantize``."""
    from fractions import Fraction

    from hwsim.numerics.reference import ort_requantize

    F = 64
    w = np.ones((F, 1, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", F, 2, 2])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(F, np.float32), "b")],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "m.onnx")
    calib = Dataset("c", np.linspace(-1, 1, 4 * 4, dtype=np.float32).reshape(4, 1, 2, 2), None)
    program = quantize(
        import_model(tmp_path / "m.onnx"), Scheme.preset("per-tensor"), calib, float_run=run_float
    )
    node = program.graph.nodes[0]
    x = np.full((1, 1, 2, 2), 0.0, np.float32)  # quantized to its zero point: sums = biases
    sx = np.float32(program.acts[program.graph.input].scale)
    c = np.float32(sx * np.float32(np.asarray(node.wq.scale).reshape(-1)[0]))
    target = np.float32(0.0010071379)  # 51135 * target = 51.4999984 exactly, 51.5 in float32
    sy = np.float32(c / target)
    while np.float32(c / sy) != target:  # the output scale whose register is the target
        sy = np.nextafter(sy, np.float32(np.inf) if np.float32(c / sy) > target else 0)
    out = node.output
    program.acts[out] = dataclasses.replace(program.acts[out], scale=float(sy))
    probe = IntegerExecutor(program)
    env = probe.run(x, keep_all=True)
    xq, yq = env[program.graph.input], env[out]
    reg = probe._requant_register(
        program.layer(node.name), np.float32(xq.scale), np.asarray(node.wq.scale, np.float32),
        np.float32(yq.scale), record=False,
    )  # fmt: skip
    mult = np.float32(np.asarray(reg.multiplier).reshape(-1)[0])
    assert mult == target
    accs = np.arange(-(1 << 17), 1 << 17)
    p = (accs.astype(np.float32) * mult).astype(np.float32)
    cand = accs[(p - np.floor(p) == 0.5) & (np.abs(p) < 100)]
    ties = [
        int(a) for a in cand if Fraction(int(a)) * Fraction(float(mult)) != Fraction(
            int(2 * np.floor(np.float32(a) * mult) + 1), 2)
    ]  # fmt: skip
    assert {51135, -51135} <= set(ties), ties
    near = [t + d for t in ties for d in (-1, 1)] + [0, 1, -1, 2**20, -(2**20)]
    bias = np.resize(np.array(ties + near, np.int64), F)
    node.bias_q = bias
    a, b, fx = both(program, x)
    assert node.name in fx.lowering.lowered
    assert_same(a, b)
    lo, hi = yq.fmt.min, yq.fmt.max
    want = [
        min(max(ort_requantize(int(v), Fraction(float(mult))) + yq.zero_point, lo), hi)
        for v in bias
    ]
    assert b.q[0, :, 0, 0].tolist() == want


def test_a_segment_onnxruntime_refuses_runs_in_the_executor(digits, monkeypatch):
    """An onnxruntime build that cannot load a segment (kernels missing): its nodes run in the
    executor, with the reason, and the integers are the same."""
    import hwsim.runtime

    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor"),
        Dataset("c", digits.x[:32], None),
        float_run=run_float,
    )

    real = hwsim.runtime.cpu_session

    def refuse(model, **k):
        if getattr(getattr(model, "graph", None), "name", "").startswith("hwsim_lowered"):
            raise RuntimeError("no QLinearConv kernel here")
        return real(model, **k)

    monkeypatch.setattr(hwsim.runtime, "cpu_session", refuse)
    a, b, fx = both(program, digits.x[:20])
    assert_same(a, b)
    assert not fx.lowering.lowered
    assert all("no QLinearConv kernel here" in w for w in fx.lowering.why.values())


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).resolve().parents[1] / "data" / "tflite").glob("*.tflite"))
)
def test_tflite_models(path):
    """int8 .tflite models (their own kernels' rules on some nodes, reshapes as transposes):
    whatever lowers gives the node-by-node integers."""
    from hwsim.api import load_imported

    program = load_imported(path, None)
    x = with_extremes(
        np.random.default_rng(5).normal(0, 2, (6, *program.graph.input_shape)).astype(np.float32),
        np.random.default_rng(6),
    )
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert fx.lowering.lowered


# -- transformers quantized by onnxruntime -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lowered_tiny")
    out = {}
    for name in ("tiny_vit", "tiny_bert"):
        fp = archs.export_tiny(name, d / f"{name}.onnx")
        for act in ("u8", "s8"):
            out[(name, act)] = archs.quantize_tiny(name, fp, d / f"{name}_{act}.onnx", False, act)
    return out


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_bert"])
@pytest.mark.parametrize("act", ["u8", "s8"])
def test_transformers_quantized_by_onnxruntime(tiny_models, name, act):
    """torch's tiny ViT (token slices) and BERT (attention-mask products) as onnxruntime's
    quantize_static QDQ files: the slices, the products of two activations and the softmaxes
    onnxruntime fuses into QLinearSoftmax lower, and the outputs are the node-by-node integers
    -- and onnxruntime's own, where its integer kernels are exact on this CPU."""
    import onnxruntime as ort

    from hwsim.datapath.engines import ort_exact

    path = tiny_models[(name, act)]
    program = program_from_graph(import_model(path))
    x = archs.tiny_inputs(name, 12, seed=7)
    a, b, fx = both(program, x)
    assert_same(a, b)
    for op in ("slice", "mul_act", "softmax"):
        nodes = [n.name for n in fx.g.nodes if n.op.value == op]
        assert all(n in fx.lowering.lowered for n in nodes), {
            n: fx.lowering.why.get(n) for n in nodes
        }
    if ort_exact("int8") and ort_exact("uint8"):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        want = sess.run(None, {"input": x})[0]
        assert np.array_equal(fx.output({fx.g.output: b}), want)


def _slice_model(shape, slices):
    """x -> QuantizeLinear -> DequantizeLinear -> Slice -> QuantizeLinear -> DequantizeLinear."""
    axes, starts, ends, steps = (np.array(c, np.int64) for c in zip(*slices, strict=True))
    inits = [
        numpy_helper.from_array(np.float32(0.05), "s"),
        numpy_helper.from_array(np.uint8(128), "z"),
        numpy_helper.from_array(starts, "starts"),
        numpy_helper.from_array(ends, "ends"),
        numpy_helper.from_array(axes, "axes"),
        numpy_helper.from_array(steps, "steps"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Slice", ["xd", "starts", "ends", "axes", "steps"], ["t"]),
        helper.make_node("QuantizeLinear", ["t", "s", "z"], ["tq"]),
        helper.make_node("DequantizeLinear", ["tq", "s", "z"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "slice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "a", "b", "c"])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_random_slices(tmp_path, data):
    """Slices of every sign of step and of out-of-range bounds (ONNX clamps them) on a 3-D
    sample: the lowered ``Slice`` moves the integers as the executor does -- and as
    onnxruntime's float model does (the reference for the import's clamping)."""
    import onnxruntime as ort

    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=3, max_size=3)))
    axes = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3, unique=True))
    slices = []
    for ax in axes:
        dim = shape[ax - 1]
        step = data.draw(st.sampled_from([1, 2, 3, -1, -2]))
        bound = st.integers(-dim - 3, dim + 3) | st.sampled_from([2**62, -(2**62)])
        slices.append((ax, data.draw(bound), data.draw(bound), step))
    model = _slice_model(shape, slices)
    onnx.save(model, tmp_path / "s.onnx")
    x = np.random.default_rng(0).normal(0, 3, (3, *shape)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    want = want.run(None, {"x": x})[0]
    if want.size == 0:  # an empty slice: nothing to run
        return
    program = program_from_graph(import_model(tmp_path / "s.onnx"))
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert np.array_equal(fx.output({fx.g.output: b}), want)
    sl = [n.name for n in fx.g.nodes if n.op.value == "slice"]
    assert sl and all(n in fx.lowering.lowered for n in sl)


# -- token layers: dense on (N, T, K), matmul of two activations, tables ------------------------

UNARY = ["Gelu", "Sigmoid", "HardSigmoid", "HardSwish", "SiLU", "Relu", None]


def _token_model(rng, T, K, D, unary, F=3):
    """A float model on ``(N, T, K)`` tokens: two dense layers on the tokens (``MatMul`` [+
    ``Add`` of a bias]), an elementwise op on the first, their product ``u @ d2^T`` (a matmul of
    two activations), ``Div`` / ``Mul`` by scalar constants, ``Add`` of a position table
    ``(1, T, T)``, ``Concat`` after a constant class row, a reversing ``Slice``, ``Gather`` of
    the last row and the class row, and a ``Gemm`` head."""
    inits, nodes = [], []

    def const(name, v):
        inits.append(numpy_helper.from_array(np.asarray(v, np.float32), name))
        return name

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    d1 = node("MatMul", ["x", const("w1", rng.normal(0, 1, (K, D)))], "d1")
    d1 = node("Add", [d1, const("b1", rng.normal(0, 1, (D,)))], "d1b")
    if unary == "SiLU":
        u = node("Mul", [d1, node("Sigmoid", [d1], "sg")], "u")
    elif unary is not None:
        u = node(unary, [d1], "u")
    else:
        u = d1
    d2 = node("MatMul", ["x", const("w2", rng.normal(0, 1, (K, D)))], "d2")
    d2t = node("Transpose", [d2], "d2t", perm=[0, 2, 1])
    s = node("MatMul", [u, d2t], "s")  # (N, T, T)
    s = node("Div", [s, const("c", np.float32(rng.uniform(0.5, 3)))], "s2")
    s = node("Mul", [s, const("m", np.float32(rng.choice([-1.3, 0.7])))], "s3")
    s = node("Add", [s, const("pos", rng.normal(0, 1, (1, T, T)))], "p")
    s = node("Concat", [const("cls", rng.normal(0, 1, (1, 1, T))), s], "cat", axis=1)
    starts = numpy_helper.from_array(np.array([-1], np.int64), "st")
    ends = numpy_helper.from_array(np.array([-(2**62)], np.int64), "en")
    axes = numpy_helper.from_array(np.array([2], np.int64), "ax")
    steps = numpy_helper.from_array(np.array([-1], np.int64), "sp")
    inits += [starts, ends, axes, steps]
    s = node("Slice", [s, "st", "en", "ax", "sp"], "rev")
    inits.append(numpy_helper.from_array(np.array([-1, 0], np.int64), "i0"))
    g = node("Gather", [s, "i0"], "g", axis=1)  # (N, 2, T): the last row and the class row
    g = node("Flatten", [g], "gf", axis=1)
    w3, b3 = const("w3", rng.normal(0, 1, (2 * T, F))), const("b3", rng.normal(0, 1, F))
    node("Gemm", [g, w3, b3], "y")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", F])], inits,
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def _token_program(tmp_path, rng, T, K, D, unary, scheme, name="t"):
    path = tmp_path / f"{name}.onnx"
    onnx.save(_token_model(rng, T, K, D, unary), path)
    calib = Dataset("c", rng.normal(0, 1, (8, T, K)).astype(np.float32), None)
    return quantize(import_model(path), scheme, calib, float_run=run_float)


TABLE_OPS = {"gelu", "sigmoid", "hardsigmoid", "hardswish", "silu", "div_const", "mul",
             "add_const", "concat", "gather", "slice", "transpose", "flatten"}  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(1, 6),
    st.integers(1, 6),
    st.sampled_from(UNARY),
    st.integers(2, 8),
    st.integers(2, 8),
    st.sampled_from([12, 16, 20, 32]),
    st.sampled_from(["wrap", "saturate"]),
    st.sampled_from(["ort", "tflite", "pow2"]),
    st.sampled_from(["per-tensor", "per-channel"]),
)
def test_random_token_layers(tmp_path, seed, T, K, D, unary, wbits, abits, acc_bits, overflow,
                             register, preset):  # fmt: skip
    """Random token layers at every width: dense on (N, T, K) and the matmul of two activations
    lower where the register is ``ort`` and no partial sum can overflow, the elementwise ops,
    constant arithmetic, concat, slice and gather as tables / moves under every register -- the
    integers are the node-by-node run's either way, batches of 1 to 4 with NaN / inf inputs."""
    rng = np.random.default_rng(seed)
    scheme = Scheme.preset(
        preset, wbits=wbits, abits=abits, acc_bits=acc_bits, overflow=overflow, register=register
    )
    program = _token_program(tmp_path, rng, T, K, D, unary, scheme, f"t{seed}")
    x = with_extremes(rng.normal(0, 2, (int(rng.integers(1, 5)), T, K)).astype(np.float32), rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert_every_tensor(program, x)
    why = fx.lowering.why
    for n in fx.g.nodes:
        if n.op.value in TABLE_OPS:
            assert n.name not in why, (n.op.value, why[n.name])
        elif n.op.value in ("dense", "matmul") and register == "ort" and acc_bits == 32:
            assert n.name not in why, (n.op.value, why[n.name])
        elif n.op.value in ("dense", "matmul") and register != "ort":
            assert why[n.name] == f"register {register}, not ort"


def _square_model(T, K):
    """``(x @ x^T) @ w`` on ``(N, T, K)`` tokens: a matmul whose operands are the input's
    integers, then a dense layer (something to quantize)."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["s"]),
        helper.make_node("MatMul", ["s", "w"], ["y"]),
    ]
    w = numpy_helper.from_array(np.ones((T, 2), np.float32), "w")
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", T, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", T, 2])], [w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("overflow", ["wrap", "saturate"])
def test_a_matmul_lowers_exactly_up_to_its_accumulator_bound(tmp_path, signed, overflow):
    """``x @ x^T`` with every input at the end of the format farthest from its zero point: each
    sum is ``K * max|x - zx|^2``, the bound itself. At the narrowest accumulator that holds it
    the matmul lowers (QLinearMatMul, uint8 x uint8) and gives the node-by-node integers; one
    bit narrower it overflows and stays in the executor."""
    T, K = 3, 4
    onnx.save(_square_model(T, K), tmp_path / "m.onnx")
    lo = -1.0 if signed else 0.0
    calib = Dataset("c", np.linspace(lo, 1, 8 * T * K, dtype=np.float32).reshape(8, T, K), None)
    progs = {}
    for bits in range(12, 33):
        scheme = Scheme.preset("per-tensor", acc_bits=bits, overflow=overflow)
        progs[bits] = quantize(
            import_model(tmp_path / "m.onnx"), scheme, calib, float_run=run_float
        )
    p = progs[32]
    spec = p.acts[p.graph.input]
    assert spec.fmt.signed is signed
    z = spec.zero_point
    far = spec.fmt.min if abs(spec.fmt.min - z) >= abs(spec.fmt.max - z) else spec.fmt.max
    bound = K * (far - z) ** 2
    need = next(b for b in range(12, 33) if (1 << (b - 1)) - 1 >= bound)
    assert 13 <= need <= 32
    real = np.float32((far - z) * spec.scale)
    x = np.full((3, T, K), real, np.float32) * np.float32(4)  # clamps to ``far``
    x[1] = 0.25
    mm = next(n.name for n in p.graph.nodes if n.op.value == "matmul")
    for bits, lowers in ((need, True), (need - 1, False)):
        ex = IntegerExecutor(progs[bits])
        env = ex.run(x, keep_all=True)
        xq = env[p.graph.input].q.astype(np.int64) - z
        assert np.all(np.abs(xq[0]) == abs(far - z))
        assert int(np.max(np.abs(xq[0] @ xq[0].T))) == bound
        a, b, fx = both(progs[bits], x)
        assert_same(a, b)
        assert (mm in fx.lowering.lowered) is lowers
        if not lowers:
            assert fx.lowering.why[mm] == "the accumulator might overflow"


@pytest.mark.parametrize(
    "preset,kw,why",
    [
        ("per-token", {}, "not a static per-tensor integer tensor"),
        ("per-sample", {}, "not a static per-tensor integer tensor"),
        ("per-tensor", dict(register="pow2", rounding="stochastic"), "stochastic rounding"),
    ],
)
def test_per_token_dynamic_and_stochastic_rules_do_not_lower(tmp_path, preset, kw, why):
    """Per-token and per-sample tensors (grids that vary per row or sample) and stochastic
    rounding (draws per sample) are no table and no fixed kernel: they run in the executor,
    with the same integers."""
    rng = np.random.default_rng(7)
    program = _token_program(tmp_path, rng, 3, 4, 5, "Gelu", Scheme.preset(preset, **kw))
    x = with_extremes(rng.normal(0, 2, (4, 3, 4)).astype(np.float32), rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    for n in fx.g.nodes:
        if n.op.value in ("gelu", "div_const", "mul", "add_const", "concat"):
            assert fx.lowering.why[n.name] == why, (n.op.value, fx.lowering.why[n.name])
        if n.op.value in ("dense", "matmul") and preset != "per-tensor":
            assert fx.lowering.why[n.name] == why


def test_a_rule_that_is_not_elementwise_does_not_become_a_table(tmp_path, monkeypatch):
    """The table of a float island is checked against its rule on random samples of the full
    shape: a Sigmoid whose value depends on its neighbours (here: on the sample's mean) does
    not lower, and both runs still agree."""
    from hwsim.execute import float as float_mod
    from hwsim.graph.ir import Op

    monkeypatch.setitem(
        float_mod.FLOAT_OPS,
        Op.SIGMOID,
        lambda n, xs: (xs[0] + xs[0].mean(axis=(1, 2), keepdims=True)).astype(np.float32),
    )
    rng = np.random.default_rng(8)
    program = _token_program(tmp_path, rng, 3, 4, 5, "Sigmoid", Scheme.preset("per-tensor"))
    x = rng.normal(0, 2, (5, 3, 4)).astype(np.float32)
    a, b, fx = both(program, x)
    assert_same(a, b)
    sig = next(n.name for n in fx.g.nodes if n.op.value == "sigmoid")
    assert fx.lowering.why[sig] == "the rule is not elementwise"


def test_a_table_too_large_does_not_lower(tmp_path, monkeypatch):
    """A position table of 256 x T x T entries: lowered under the limit, refused above it."""
    from hwsim.execute import lowered_tables

    rng = np.random.default_rng(9)
    program = _token_program(tmp_path, rng, 4, 3, 3, None, Scheme.preset("per-tensor"))
    x = rng.normal(0, 2, (3, 4, 3)).astype(np.float32)
    add = next(n.name for n in program.graph.nodes if n.op.value == "add_const")
    for limit, lowers in ((256 * 16, True), (256 * 16 - 1, False)):
        monkeypatch.setattr(lowered_tables, "TABLE_MAX", limit)
        a, b, fx = both(program, x)
        assert_same(a, b)
        assert (add in fx.lowering.lowered) is lowers
        if not lowers:
            assert "more than" in fx.lowering.why[add]


def test_vit_with_integer_nonlinearities(digits):
    """I-BERT's integer GELU on a static input is a table too; its Softmax / LayerNorm and wide
    hand-offs stay in the executor."""
    rng = np.random.default_rng(10)
    calib = Dataset("c", digits.x[:64], None)
    program = quantize(
        import_model(api.resolve_model("vit")),
        Scheme.preset("per-tensor", nonlinear="integer"),
        calib,
        float_run=run_float,
    )
    x = with_extremes(digits.x[rng.integers(0, len(digits), 9)], rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    assert len(fx.lowering.lowered) > len(fx.g.nodes) // 2


SPECIAL = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3e38, -3e38, 1.0, -1.0]


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
    st.lists(st.integers(1, 4), max_size=3),
    st.integers(1, 40),
    st.floats(0, 0.5),
)
def test_softmax_islands_are_numpys_bit_for_bit(seed, dtype, lead, L, special):
    """The float islands' Softmax (``hwsim.execute.arrays.softmax``, its row max one Numba
    pass) equals numpy's ``exp(x - x.max()) / sum`` in every bit, zeros of both signs, NaN,
    infinities and denormals included."""
    from hwsim.execute.arrays import softmax

    rng = np.random.default_rng(seed)
    x = rng.normal(0, rng.choice([1e-3, 1.0, 30.0]), (*lead, L)).astype(dtype)
    mask = rng.random(x.shape) < special
    x[mask] = rng.choice(np.array(SPECIAL, dtype), int(mask.sum()))
    with np.errstate(all="ignore"):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        want = (e / e.sum(axis=-1, keepdims=True)).astype(dtype)
        got = softmax(x, -1)
    assert got.dtype == want.dtype and got.shape == want.shape
    uint = np.uint32 if dtype == np.float32 else np.uint64
    assert np.array_equal(got.view(uint), want.view(uint))


def _gate_model(rng, c):
    """A squeeze-excite gate: ``conv(x) * sigmoid(gap(conv(x)))``, a Mul of two activations
    broadcasting ``(N, C, 1, 1)`` over ``(N, C, 6, 6)``."""
    w = numpy_helper.from_array(rng.normal(0, 1, (c, c, 3, 3)).astype(np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["h"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["h"], ["p"]),
        helper.make_node("Sigmoid", ["p"], ["g"]),
        helper.make_node("Mul", ["h", "g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", c, 6, 6])], [w],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 4),
    st.integers(2, 8),
    st.integers(2, 8),
    st.sampled_from(["ort", "tflite", "pow2"]),
)
def test_a_broadcasting_gate_lowers_as_a_table(tmp_path, seed, c, wbits, abits, register):
    """The squeeze-excite product ``(a - za)(b - zb)`` broadcasting a gate over its feature
    map, under every register: a table of two codes, the node-by-node integers."""
    rng = np.random.default_rng(seed)
    onnx.save(_gate_model(rng, c), tmp_path / f"g{seed}.onnx")
    calib = Dataset("c", rng.normal(0, 1, (8, c, 6, 6)).astype(np.float32), None)
    scheme = Scheme.preset("per-tensor", wbits=wbits, abits=abits, register=register)
    program = quantize(import_model(tmp_path / f"g{seed}.onnx"), scheme, calib, float_run=run_float)
    x = with_extremes(rng.normal(0, 2, (int(rng.integers(1, 5)), c, 6, 6)).astype(np.float32), rng)
    a, b, fx = both(program, x)
    assert_same(a, b)
    mul = next(n for n in fx.g.nodes if n.op.value == "mul_act")
    assert mul.name in fx.lowering.lowered, fx.lowering.why


def _softmax_model(shape, axis, sx, zx, sy, zy, dtype):
    """x -> Q -> DQ -> Softmax(axis) -> Q -> DQ: onnxruntime fuses it into QLinearSoftmax."""
    inits = [
        numpy_helper.from_array(np.float32(sx), "sx"),
        numpy_helper.from_array(np.array(zx, dtype), "zx"),
        numpy_helper.from_array(np.float32(sy), "sy"),
        numpy_helper.from_array(np.array(zy, dtype), "zy"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"], name="dqx"),
        helper.make_node("Softmax", ["xd"], ["p"], name="softmax", axis=axis),
        helper.make_node("QuantizeLinear", ["p", "sy", "zy"], ["pq"], name="qp"),
        helper.make_node("DequantizeLinear", ["pq", "sy", "zy"], ["y"], name="dqp"),
    ]
    dims = ["N", *(f"d{i}" for i in range(len(shape)))]
    g = helper.make_graph(
        nodes,
        "softmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize(
    "shape,axis,sx,sy",
    [
        ((3, 7), -1, 0.05, 1 / 256),
        ((2, 1), -1, 1.3, 1 / 255),  # rows of one
        ((4, 300), 2, 0.02, 1 / 128),
        ((5, 3, 4), 1, 0.4, 1 / 256),  # not the last axis
    ],
)
def test_a_softmax_onnxruntime_fuses_lowers_to_qlinear_softmax(
    tmp_path, dtype, shape, axis, sx, sy
):
    """The executor's rule for a Softmax onnxruntime fuses *is* its QLinearSoftmax: lowered to
    it, the integers are the node-by-node run's and onnxruntime's own (rows of 1 to 300, axes
    other than the last, the 1/255 output scale whose multiplier is 254), NaN / inf inputs."""
    import onnxruntime as ort

    info = np.iinfo(dtype)
    zx, zy = (0, 0) if dtype == np.uint8 else (3, -128)
    onnx.save(_softmax_model(shape, axis, sx, zx, sy, zy, dtype), tmp_path / "s.onnx")
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = with_extremes(rng.normal(0, 40 * sx, (6, *shape)).astype(np.float32), rng)
    program = program_from_graph(import_model(tmp_path / "s.onnx"))
    a, b, fx = both(program, x)
    assert_same(a, b)
    sm = [n.name for n in fx.g.nodes if n.op.value == "softmax"]
    assert sm and all(n in fx.lowering.lowered for n in sm), fx.lowering.why
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    assert np.array_equal(fx.output({fx.g.output: b}), sess.run(None, {"x": x})[0])
    assert info.min <= int(b.q.min()) and int(b.q.max()) <= info.max
