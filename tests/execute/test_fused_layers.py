"""The integer executor's fused layer paths against the compositions they replace, to the bit:
every tensor and every per-layer counter of a network with plain, depthwise, pointwise and
grouped convolutions, ReLU and Clip, under several schemes and accumulators."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import hwsim.execute.integer as integer
from hwsim.data import Dataset
from hwsim.execute import IntegerExecutor, QTensor, run_float
from hwsim.graph import import_model
from hwsim.quant import Scheme, quantize


def _conv_net(seed: int = 0):
    """3x9x9 -> conv 3x3 (8) -> relu -> depthwise 3x3 stride 2 -> clip(0, 6) -> pointwise (12)
    -> grouped 3x3 (4 groups, dilation 2, uneven pads) (8) -> relu -> add (residual of a 1x1
    stride-2 conv) -> GAP -> flatten -> dense (5)."""
    rng = np.random.default_rng(seed)

    def t(name, *shape, s=0.4):
        return numpy_helper.from_array(rng.normal(0, s, shape).astype(np.float32), name)

    inits = [
        t("w1", 8, 3, 3, 3), t("b1", 8), t("wd", 8, 1, 3, 3), t("bd", 8),
        t("wp", 12, 8, 1, 1), t("bp", 12), t("wg", 8, 3, 3, 3), t("bg", 8),
        t("ws", 8, 8, 1, 1), t("wf", 5, 8), t("bf", 5),
    ]  # fmt: skip
    lo, hi = (
        numpy_helper.from_array(np.array(v, np.float32), n) for v, n in ((0, "lo"), (6, "hi"))
    )
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["d"], group=8, strides=[2, 2],
                         pads=[1, 1, 1, 1], name="dw"),
        helper.make_node("Clip", ["d", "lo", "hi"], ["dc"], name="clip"),
        helper.make_node("Conv", ["dc", "wp", "bp"], ["p"], name="pw"),
        helper.make_node("Conv", ["p", "wg", "bg"], ["gc"], group=4, dilations=[2, 2],
                         pads=[2, 1, 2, 3], name="grouped"),
        helper.make_node("Relu", ["gc"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r1", "ws"], ["s"], strides=[2, 2], name="skip"),
        helper.make_node("Add", ["r2", "s"], ["a"], name="add"),
        helper.make_node("GlobalAveragePool", ["a"], ["gp"], name="gap"),
        helper.make_node("Flatten", ["gp"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1, name="fc"),
    ]  # fmt: skip
    g = helper.make_graph(
        nodes,
        "convnet",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [*inits, lo, hi],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _run(program, x, track: bool):
    ex = IntegerExecutor(program, track_partials=track)
    env = ex.run(x)
    tensors = {
        k: (v.q, np.asarray(v.scale), v.zero_point, v.fmt) if isinstance(v, QTensor) else v
        for k, v in env.items()
    }
    stats = {
        n: (s.counters.as_dict(), s.bias_overflows, s.clamped, s.outputs, s.bias_clamped,
            s.gain_error_min, s.gain_error_max, s.ops)
        for n, s in ex.stats.items()
    }  # fmt: skip
    return tensors, stats


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return (
            a[0].dtype == b[0].dtype
            and np.array_equal(a[0], b[0])
            and np.array_equal(a[1], b[1])
            and a[2:] == b[2:]
        )
    return np.array_equal(a, b)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    path = tmp_path_factory.mktemp("fused") / "convnet.onnx"
    import onnx

    onnx.save(_conv_net(), path)
    return import_model(str(path))


@pytest.mark.parametrize(
    "preset, fields",
    [
        ("per-tensor", {}),
        ("per-channel", {}),
        ("per-tensor", {"acc_bits": 20, "overflow": "saturate"}),  # some layers cannot prove it
        ("per-tensor", {"acc_bits": 16, "overflow": "wrap"}),  # the sums wrap: old path
        ("per-tensor", {"wbits": 4, "abits": 6}),
        ("per-tensor", {"order": "tiled", "tile_rows": 4, "tile_bits": 18}),
        ("per-sample", {}),  # no static output stage: old path
    ],
)
@pytest.mark.parametrize("track", [False, True])
def test_fused_layers_equal_the_composition_they_replace(net, monkeypatch, preset, fields, track):
    """Each run against the same run with the fused convolution turned off (no planned layer,
    no conv2d_requant: conv2d, then the output stage): identical tensors (values, dtypes,
    scales) and per-layer statistics."""
    rng = np.random.default_rng(1)
    calib = Dataset("calib", rng.normal(0, 1, (16, 3, 9, 9)).astype(np.float32), None)
    program = quantize(net, Scheme.preset(preset, **fields), calib, float_run=run_float)
    x = rng.normal(0, 1.5, (6, 3, 9, 9)).astype(np.float32)
    x[0] = 40.0  # saturated inputs: extreme operands
    got = _run(program, x, track)
    monkeypatch.setattr(integer, "conv2d_requant", lambda *a, **k: None)
    monkeypatch.setattr(integer.IntegerExecutor, "_conv_planned", lambda *a, **k: None)
    want = _run(program, x, track)
    assert got[0].keys() == want[0].keys()
    for k in want[0]:
        assert _same(got[0][k], want[0][k]), k
    assert got[1] == want[1]


def _alias_net():
    """conv -> flatten (a view of the conv's integers) -> relu -> reshape back -> add with the
    conv's output itself: the ReLU's input is dead after it, but its memory is not."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (4, 2, 3, 3)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 4, 5, 5], np.int64), "shape")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("Relu", ["f"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["b"], name="back"),
        helper.make_node("Add", ["b", "c"], ["y"], name="add"),
    ]
    g = helper.make_graph(
        nodes,
        "alias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 5, 5])],
        [w, shape],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("model", ["convnet", "alias"])
@pytest.mark.parametrize("preset", ["per-tensor", "per-sample"])
def test_streamed_runs_equal_kept_runs(tmp_path, model, preset):
    """Runs that keep no tensors (ReLU / Clip may then overwrite a dead input in place, the
    per-node constants are reused across batches of several sizes) give the outputs and the
    accumulated statistics of runs that keep every tensor (no in-place op), batch by batch."""
    import onnx

    path = tmp_path / f"{model}.onnx"
    onnx.save(_conv_net() if model == "convnet" else _alias_net(), path)
    shape = (3, 9, 9) if model == "convnet" else (2, 5, 5)
    rng = np.random.default_rng(3)
    calib = Dataset("calib", rng.normal(0, 1, (16, *shape)).astype(np.float32), None)
    program = quantize(import_model(str(path)), Scheme.preset(preset), calib, float_run=run_float)
    batches = [
        rng.normal(0, s, (n, *shape)).astype(np.float32) for s, n in ((1, 5), (3, 5), (1, 2))
    ]
    streamed, kept = IntegerExecutor(program), IntegerExecutor(program)
    for x in batches:
        got = streamed.output(streamed.run(x, keep_all=False))
        want = kept.output(kept.run(x, keep_all=True))
        assert got.tobytes() == want.tobytes()
    assert {n: s.__dict__ for n, s in streamed.stats.items()} == {
        n: s.__dict__ for n, s in kept.stats.items()
    }


def test_a_w8a8_network_runs_every_convolution_through_its_plan(net, monkeypatch):
    """int32 wrapping accumulators, ``ort`` registers, per-tensor inputs: each convolution
    (plain, depthwise, pointwise, grouped, strided) and the dense runs through its plan,
    built once and reused by the next batch; a ReLU / Clip that alone reads a convolution's
    output is applied by its output stage when the run keeps no tensors."""
    from hwsim.datapath.conv import ConvPlan

    calls = []
    real = ConvPlan.run

    def spy(self, x, act=None):
        res = real(self, x, act)
        calls.append((id(self), res is not None, act is not None))
        return res

    monkeypatch.setattr(ConvPlan, "run", spy)
    rng = np.random.default_rng(4)
    calib = Dataset("calib", rng.normal(0, 1, (16, 3, 9, 9)).astype(np.float32), None)
    program = quantize(net, Scheme.preset("per-tensor"), calib, float_run=run_float)
    ex = IntegerExecutor(program)
    for n in (4, 3):
        ex.run(rng.normal(0, 1, (n, 3, 9, 9)).astype(np.float32), keep_all=False)
    macs = [n for n in program.graph.nodes if n.op.value in ("conv", "dense")]
    assert len(calls) == 2 * len(macs) and all(ok for _, ok, _ in calls)
    assert len({p for p, _, _ in calls}) == len(macs)
    # conv1 -> relu1, dw -> clip, grouped -> relu2: applied in the output stage (no tensor kept)
    assert sum(fused for _, _, fused in calls) == 2 * 3
    calls.clear()
    ex.run(rng.normal(0, 1, (2, 3, 9, 9)).astype(np.float32), keep_all=True)
    assert not any(fused for _, _, fused in calls)  # the pre-activation tensors are kept
