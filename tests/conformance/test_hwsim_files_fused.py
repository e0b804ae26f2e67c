"""hwsim-written QDQ files of standard architectures run by onnxruntime (default session options,
this machine's CPU provider) on its integer kernels, layer for layer as hwsim's program.

The programs: ``hwsim.quant.quantize`` per tensor (and one ResNet-18 with per-channel weights),
W8A8, int32 wrapping accumulators, ``ort`` registers, calibrated on 8 N(0, 1) images, then
``hwsim.quant.store.save``. The networks, at small inputs (3x32x32) to keep each case to a few
seconds: the MobileNetV2 and ResNet-18 of ``archs.py`` (random weights and BatchNorm
statistics), ResNet-18 at its full widths (64 ... 512, 1000 classes: the layout of
``benchmarks/network.py``'s ``resnet18_224``), and the shipped residual CNN
``models/rescnn.onnx`` on digits (1x8x8).

The expected values come from onnxruntime (the independent reference), against hwsim's
executor with ``isa="auto"`` (onnxruntime's sums on this CPU: exact with VNNI, int16 pair
saturation on AVX2-only CPUs, docs/numerics.md eq. 16):

* its optimised graph (:func:`hwsim.graph.ort_plan.load_plan`) fuses every Conv / Gemm into
  ``QLinearConv`` / ``QGemm`` and every residual Add into ``QLinearAdd``: no float Conv, Gemm or
  Add is left (a Conv / Add that reads an int8 tensor also read by another node used to stay
  float on x86);
* every layer of the file run alone by onnxruntime (the file cut from the layer's input
  QuantizeLinear to its output QuantizeLinear, fed hwsim's integers of its input) gives the
  integers hwsim's IntegerExecutor gives for it, bias included (the file carries the program's
  int32 bias), residual Adds included (an ``ort`` Add of a hwsim program is the uint8
  QLinearAdd x86 onnxruntime runs on the file's uint8-held activations, whatever the operands'
  signedness: docs/networks.md);
* the whole network's output equals onnxruntime's bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import archs
import numpy as np
import onnx
import onnx.shape_inference
import onnx.utils
import onnxruntime as ort
import pytest
import torch

from hwsim.data import Dataset, load_data
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Graph, Node, Op
from hwsim.graph.ort_plan import load_plan
from hwsim.numerics import IntFormat
from hwsim.qops import ort_quantized_bias
from hwsim.quant import ActSpec, QuantProgram, Scheme, quantize
from hwsim.quant.store import load, save

SHAPE = (3, 32, 32)
NETWORKS = ("mobilenetv2", "resnet18", "resnet18_full", "rescnn", "resnet18/per-channel")
"""network[/scheme preset]: per tensor unless named (per-channel weights: a per-channel bias)"""
MAC = (Op.CONV, Op.DENSE)


def _float_model(name: str, d) -> str:
    if name == "rescnn":
        return "models/rescnn.onnx"
    if name == "resnet18_full":
        torch.manual_seed(0)
        model = archs.ResNet18(widths=(64, 128, 256, 512), num_classes=1000)
        archs._randomise_bn(model, torch.Generator().manual_seed(1))
        model.eval()
    else:
        model = archs.build(name, seed=0)
    return archs._export(model, torch.zeros(1, *SHAPE), d / f"{name}.onnx", 13)


class Case(NamedTuple):
    path: Path  # the hwsim file
    back: QuantProgram  # the program loaded back from it
    x: np.ndarray  # test inputs
    program: QuantProgram  # the program it was written from
    env: dict  # the loaded program's integer run on x, every tensor


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """``files(name)``: the :class:`Case` of network ``name``, made once per module."""
    made = {}

    def get(name: str):
        if name not in made:
            net, _, preset = name.partition("/")
            d = tmp_path_factory.mktemp(net)
            rng = np.random.default_rng(1)
            if net == "rescnn":
                digits = load_data("digits")
                calib, x = Dataset("calib", digits.x[:8], None), digits.x[8:12]
            else:
                calib = Dataset("calib", rng.normal(0, 1, (8, *SHAPE)).astype(np.float32), None)
                x = rng.normal(0, 1, (4, *SHAPE)).astype(np.float32)
            program = quantize(
                import_model(_float_model(net, d)),
                Scheme.preset(preset or "per-tensor"),
                calib,
                float_run=run_float,
            )
            path = d / f"{net}_w8a8.onnx"
            save(program, path)
            back = load(path)
            # isa auto: onnxruntime's sums on this CPU (int16 pair saturation without VNNI)
            env = IntegerExecutor(back, isa="auto").run(x, keep_all=True)
            made[name] = Case(path, back, x, program, env)
        return made[name]

    return get


def _ops(plan) -> list[str]:
    return list(plan.kernels.values())


@pytest.mark.parametrize("name", NETWORKS)
def test_every_mac_layer_and_add_runs_on_onnxruntime_integer_kernels(files, name):
    path, program = files(name)[:2]
    plan = load_plan(path)
    macs = [n for n in program.graph.nodes if n.op in MAC]
    adds = [n for n in program.graph.nodes if n.op is Op.ADD]
    assert macs
    missing = [n.name for n in macs if f"{n.name}_wq" not in plan.integer_weights]
    assert missing == []
    ops = _ops(plan)
    assert not {"Conv", "Gemm", "MatMul", "Add"} & set(ops), sorted(set(ops))
    assert ops.count("com.microsoft.QLinearAdd") == len(adds)


def _container(spec) -> int:
    """What the file adds to a tensor's integers: int8 is written as uint8 + 128."""
    return 128 if spec.fmt.bits == 8 and spec.fmt.signed else 0


@pytest.mark.parametrize("name", NETWORKS)
def test_every_layer_gives_onnxruntime_integers_on_the_same_input(files, name):
    """Each layer between two static tensors, cut out of the file and run by onnxruntime on
    hwsim's input integers, equals hwsim's output integers; every MAC layer and Add is among
    them."""
    path, program, _, _, env = files(name)
    acts = program.acts
    cutter = onnx.utils.Extractor(onnx.shape_inference.infer_shapes(onnx.load(path)))
    checked = []
    for n in program.graph.nodes:
        ins, out = n.inputs, n.output
        if not all(t in acts and acts[t].mode == "static" for t in (*ins, out)):
            continue
        feeds = [f"{t}_q" for t in ins]
        cut = cutter.extract_model(feeds, [f"{out}_q"]).SerializeToString()
        s = ort.InferenceSession(cut, providers=["CPUExecutionProvider"])
        feed = {
            f: (env[t].q.astype(np.int16) + _container(acts[t])).astype(
                np.uint8 if acts[t].fmt.bits == 8 else env[t].q.dtype
            )
            for f, t in zip(feeds, ins, strict=True)
        }
        (got,) = s.run(None, feed)
        got = got.astype(np.int64) - _container(acts[out])
        want = env[out].q.astype(np.int64)
        assert got.shape == want.shape and np.array_equal(got, want), (name, n.name)
        checked.append(n)
    macs = [n.name for n in program.graph.nodes if n.op in (*MAC, Op.ADD)]
    assert set(macs) <= {n.name for n in checked}


@pytest.mark.parametrize("name", NETWORKS)
def test_network_output_equals_onnxruntime_bit_for_bit(files, name):
    path, program, x, _, env = files(name)
    want = IntegerExecutor(program).output(env)
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = s.run(None, {s.get_inputs()[0].name: x})[0]
    assert got.dtype == want.dtype and np.array_equal(got, want)


@pytest.mark.parametrize("name", NETWORKS)
def test_the_loaded_file_runs_as_the_program_it_was_written_from(files, name):
    """Every tensor's integers, the file's int8 activations held as uint8 in it: the metadata,
    not onnxruntime's plan of the file, gives the semantics. The float biases come back
    exactly."""
    _, back, x, program, got = files(name)
    want = IntegerExecutor(program, isa="auto").run(x, keep_all=True)
    # the file's name of the output tensor: its layer writes '<output>_raw'
    name_of = {program.graph.output: back.graph.output}
    assert back.acts == {name_of.get(t, t): a for t, a in program.acts.items()}
    for t, v in want.items():
        if hasattr(v, "q"):
            g = got[name_of.get(t, t)]
            assert g.q.dtype == v.q.dtype and np.array_equal(g.q, v.q), t
    by = {n.name: n for n in back.graph.nodes}
    for n in program.graph.nodes:
        if n.bias is not None:
            b = by[n.name]
            assert b.bias.dtype == n.bias.dtype and np.array_equal(b.bias, n.bias), n.name
            assert b.bias_q is None and n.bias_q is None


def test_a_bias_float32_rounds_otherwise_is_added_as_the_programs_integer(tmp_path):
    """A dense whose float biases onnxruntime's ``WeightBiasQuantization`` would round (in
    float32, :func:`ort_quantized_bias`) to other integers than the program's
    ``round_half_even(b / (sx * sw))``: the file holds the program's, and onnxruntime's output
    equals hwsim's. A zero input and an output step of ``sx * sw`` make the output the bias
    integer itself."""
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, (16, 4)).astype(np.float32)
    g = Graph("bias_t", "<test>", "x", (4,), "y", [Node("fc", Op.DENSE, ("x",), "y", weight=w)])
    prog = quantize(g, Scheme.preset("data-free"), input_range=(-1.0, 1.0), float_run=run_float)
    (fc,) = prog.graph.nodes
    sx, sw = np.float32(prog.acts["x"].scale), np.float32(fc.wq.scale)
    step = np.float64(sx) * np.float64(sw)
    cand = (rng.integers(-100, 100, 20000) + 0.5) * step * (1 + rng.normal(0, 1e-7, 20000))
    cand = cand.astype(np.float32)
    theirs, _ = ort_quantized_bias(cand, sx, sw)
    ours = np.rint(cand.astype(np.float64) / step)
    b = cand[theirs != ours][:16]
    assert b.size == 16  # the precondition: onnxruntime's rounding differs on each
    fc.bias = b
    prog.acts["y"] = ActSpec("static", IntFormat(8, True), float(np.float32(sx * sw)), 0)
    path = tmp_path / "bias.onnx"
    save(prog, path)
    x = np.zeros((2, 4), np.float32)
    ex = IntegerExecutor(load(path))
    want = ex.output(ex.run(x, keep_all=False))
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = s.run(None, {"x": x})[0]
    assert np.array_equal(got, want)
    q = np.rint(got / np.float32(sx * sw)).astype(np.int64)
    assert np.array_equal(q[0], ours[theirs != ours][:16]) and not np.array_equal(
        q[0], theirs[theirs != ours][:16]
    )
