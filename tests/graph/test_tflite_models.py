"""Whole TFLite models through hwsim's integer executor against the LiteRT interpreter
(ai-edge-litert 2.3.0, test extra), per kernel family (hwsim.graph.tflite_import.KERNELS)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from hwsim.execute.integer import IntegerExecutor
from hwsim.execute.tensors import QTensor
from hwsim.execute.tflite import load_tflite_program
from hwsim.numerics.tflite import quantize

DATA = Path(__file__).resolve().parent.parent / "data" / "tflite"
MODELS = ["cnn_relu", "cnn_relu6", "cnn_pad_concat", "digits_cnn"]
RESOLVER = {
    "xnnpack": OpResolverType.AUTO,
    "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    "reference": OpResolverType.BUILTIN_REF,
}


def litert(path: Path, x: np.ndarray, kernels: str) -> np.ndarray:
    """LiteRT's outputs for NCHW float inputs ``x`` (an int8 input quantized as the kernels'
    own QUANTIZE would)."""
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=RESOLVER[kernels])
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for k in range(len(x)):
        xi = x[k : k + 1].transpose(0, 2, 3, 1)
        if i["dtype"] == np.int8:
            xi = quantize(xi, *i["quantization"], -128, 127, kernels).astype(np.int8)
        it.set_tensor(i["index"], xi)
        it.invoke()
        outs.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(outs)


def hwsim_outputs(path: Path, x: np.ndarray, kernels: str, register=None) -> np.ndarray:
    p = load_tflite_program(path, kernels, register)
    ex = IntegerExecutor(p)
    if p.graph.meta["tflite"]["input"] == "int8":
        spec = p.acts[p.graph.input]
        xq = quantize(x, spec.scale, spec.zero_point, -128, 127, kernels).astype(np.float32)
        x = (xq - spec.zero_point) * np.float32(spec.scale)
    env = ex.run(x)
    y = env[p.graph.output]
    return (
        y.q
        if p.graph.meta["tflite"]["input"] == "int8" and isinstance(y, QTensor)
        else (ex.output(env))
    )


def inputs(path: Path, n: int = 200, seed: int = 1) -> np.ndarray:
    shape = load_tflite_program(path).graph.input_shape
    return np.random.default_rng(seed).uniform(-1.2, 1.2, (n, *shape)).astype(np.float32)


@pytest.mark.parametrize("name", MODELS)
def test_default_kernels_equal_the_default_interpreter(name):
    """The interpreter a user runs by default (the XNNPACK delegate): hwsim's ``xnnpack``
    kernels (XNNPACK's QUANTIZE, the tflite-single register), 0 differing outputs."""
    path = DATA / f"{name}.tflite"
    x = inputs(path)
    got = hwsim_outputs(path, x, "xnnpack")
    want = litert(path, x, "xnnpack")
    assert np.array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("name", ["cnn_relu", "cnn_pad_concat"])
def test_double_rounding_equals_the_reference_kernels(name):
    """BUILTIN_REF: gemmlowp's double rounding in CONV_2D / DEPTHWISE_CONV_2D, TFLite's ADD,
    MUL, AVERAGE_POOL_2D, MEAN rules (these models' FULLY_CONNECTED outputs have no rounding
    the reference kernel's double-precision requantization decides differently, and their
    SOFTMAX inputs none where gemmlowp's fixed-point exp and the optimized table differ)."""
    path = DATA / f"{name}.tflite"
    x = inputs(path)
    got = hwsim_outputs(path, x, "optimized", "tflite")
    want = litert(path, x, "reference")
    assert np.array_equal(got.reshape(want.shape), want)


def test_optimized_kernels_equal_the_interpreter_without_delegates():
    """BUILTIN_WITHOUT_DEFAULT_DELEGATES on a model whose MAC layers have no output that ruy's
    x86 rounding (half up) decides differently from gemmlowp's double rounding."""
    path = DATA / "cnn_relu6.tflite"
    x = inputs(path)
    got = hwsim_outputs(path, x, "optimized")
    want = litert(path, x, "optimized")
    assert np.array_equal(got.reshape(want.shape), want)


def test_cnn_relu6_1000_inputs_equal_the_default_interpreter():
    """cnn_relu6 on 1000 inputs (seed 3), hwsim's default ``xnnpack`` kernels against the
    default interpreter: 0 differing outputs of 5000."""
    path = DATA / "cnn_relu6.tflite"
    x = inputs(path, 1000, 3)
    got = hwsim_outputs(path, x, "xnnpack")
    want = litert(path, x, "xnnpack")
    assert want.size == 5000
    assert np.array_equal(got.reshape(want.shape), want)


def _with_scales(src: Path, dst: Path, scales: dict[float, float]) -> None:
    """A copy of the model ``src`` at ``dst`` with binary32 quantization scales replaced in
    place (each old value occurs once in the flatbuffer)."""
    buf = bytearray(src.read_bytes())
    for old, new in scales.items():
        b = np.float32(old).tobytes()
        i = buf.find(b)
        assert i >= 0 and buf.find(b, i + 1) < 0, f"scale {old} not found once in {src}"
        buf[i : i + 4] = np.float32(new).tobytes()
    dst.write_bytes(bytes(buf))


def test_xnnpack_relu6_bound_rounds_half_to_even(tmp_path):
    """cnn_relu6 with its first conv's output scale set so that ``f32(6 / s) = 200.5`` (and
    its input scale 0.1, so that the conv reaches 6): XNNPACK's RELU6 bound is ``lrintf(200.5 -
    128) = 72``, TFLite's ``-128 + roundf(200.5) = 73`` (eq. T2x). The default interpreter
    saturates at 72: hwsim's ``xnnpack`` kernels, 0 differing outputs (1301 of 5000 with
    TFLite's bound)."""
    s = np.float32(6 / 200.5)
    while np.float32(6) / s != np.float32(200.5):
        s = np.nextafter(s, np.float32(1))
    path = tmp_path / "relu6_tie.tflite"
    _with_scales(
        DATA / "cnn_relu6.tflite",
        path,
        {0.007842916995286942: 0.1, 0.006178020499646664: float(s)},
    )
    graph = load_tflite_program(path).graph
    clips = [n for n in graph.nodes if n.attrs.get("tflite_activation") == "RELU6"]
    assert clips[0].attrs["max"] == float(np.float32(72 + 128) * s)
    x = inputs(path, 1000, 3) * 10
    got = hwsim_outputs(path, x, "xnnpack")
    want = litert(path, x, "xnnpack")
    assert np.array_equal(got.reshape(want.shape), want)
