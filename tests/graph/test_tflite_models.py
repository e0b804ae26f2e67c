"""Whole TFLite models through hwsim's integer executor against the LiteRT interpreter
(ai-edge-litert 2.3.0, test extra)."""

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


def _litert(path: Path, x: np.ndarray, resolver) -> np.ndarray:
    it = Interpreter(model_path=str(path), experimental_op_resolver_type=resolver)
    it.allocate_tensors()
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for k in range(len(x)):
        xi = x[k : k + 1].transpose(0, 2, 3, 1)
        if i["dtype"] == np.int8:
            xi = quantize(xi, *i["quantization"], -128, 127).astype(np.int8)
        it.set_tensor(i["index"], xi)
        it.invoke()
        outs.append(it.get_tensor(o["index"]).copy())
    return np.concatenate(outs)


def _hwsim(path: Path, x: np.ndarray, register: str) -> np.ndarray:
    p = load_tflite_program(path, register=register)
    ex = IntegerExecutor(p)
    env = ex.run(x)
    y = env[p.graph.output]
    return y.q if p.graph.meta["tflite"]["input"] == "int8" and isinstance(y, QTensor) else (
        ex.output(env)
    )


@pytest.mark.parametrize("name", ["cnn_relu", "cnn_relu6", "digits_cnn"])
def test_single_rounding_equals_the_default_interpreter(name):
    """The default interpreter (XNNPACK delegate) rounds once: hwsim's tflite-single register."""
    path = DATA / f"{name}.tflite"
    shape = load_tflite_program(path).graph.input_shape
    x = np.random.default_rng(1).uniform(-1.2, 1.2, (200, *shape)).astype(np.float32)
    got = _hwsim(path, x, "tflite-single")
    want = _litert(path, x, OpResolverType.AUTO)
    assert np.array_equal(got.reshape(want.shape), want)


@pytest.mark.parametrize("name", ["cnn_relu", "cnn_pad_concat"])
def test_double_rounding_equals_the_reference_kernels(name):
    """BUILTIN_REF: gemmlowp's double rounding in CONV_2D / DEPTHWISE_CONV_2D, TFLite's ADD,
    MUL, AVERAGE_POOL_2D, MEAN rules (these models' FULLY_CONNECTED outputs have no rounding
    the reference kernel's double-precision requantization decides differently)."""
    path = DATA / f"{name}.tflite"
    shape = load_tflite_program(path).graph.input_shape
    x = np.random.default_rng(1).uniform(-1.2, 1.2, (200, *shape)).astype(np.float32)
    got = _hwsim(path, x, "tflite")
    want = _litert(path, x, OpResolverType.BUILTIN_REF)
    assert np.array_equal(got.reshape(want.shape), want)
