"""QDQ files written by hwsim itself (``hwsim.quant.quantize`` + ``hwsim.quant.store.save``),
run by onnxruntime (default session options): the MobileNetV2 of ``archs.py`` (3x64x64, random
weights and BatchNorm statistics) quantized per tensor, W8A8, int32 wrapping accumulators,
``ort`` registers, calibrated on 32 N(0, 1) images (seed 1).

hwsim writes the int32 bias its program adds where a layer reads and writes static tensors (the
float bias in its metadata); a file with float biases instead (the same file with each bias
DequantizeLinear replaced by the metadata's float bias, as hwsim wrote it before) shows
onnxruntime's ``WeightBiasQuantization`` turning each into an int32 bias before it fuses anything
(:func:`hwsim.qops.ort_quantized_bias`)."""

from __future__ import annotations

import json

import archs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from hwsim.data import Dataset
from hwsim.execute import run_float
from hwsim.graph import import_model
from hwsim.graph.ort_plan import load_plan
from hwsim.qops import ort_quantized_bias
from hwsim.quant import Scheme, quantize
from hwsim.quant.store import save


@pytest.fixture(scope="module")
def mobilenetv2(tmp_path_factory):
    d = tmp_path_factory.mktemp("hwsim_qdq")
    fp = archs.export_float("mobilenetv2", d / "mobilenetv2_f.onnx")
    calib = np.random.default_rng(1).normal(0, 1, (32, *archs.INPUT_SHAPE)).astype(np.float32)
    program = quantize(
        import_model(fp),
        Scheme.preset("per-tensor"),
        Dataset("calib", calib, None),
        float_run=run_float,
    )
    path = d / "mobilenetv2_q.onnx"
    save(program, path)
    return path


def _with_float_biases(path, out):
    """The hwsim file at ``path`` with every Conv / Gemm reading its float bias (from the
    metadata) instead of the int32 bias behind a DequantizeLinear, written to ``out``."""
    m = onnx.load(path)
    floats = json.loads({p.key: p.value for p in m.metadata_props}["hwsim"])["weights"]
    bias_dq = {n.output[0]: n for n in m.graph.node if n.name.endswith("_bDQ")}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in bias_dq:
            b = np.asarray(floats[n.name]["bias"], np.float32)
            m.graph.initializer.append(numpy_helper.from_array(b, f"{n.name}_bf"))
            n.input[2] = f"{n.name}_bf"
    for dq in bias_dq.values():
        m.graph.node.remove(dq)
    onnx.save(m, out)
    return out


def test_onnxruntime_quantizes_every_float_bias_by_the_contract(mobilenetv2, tmp_path):
    """Every Conv / Gemm of the float-bias file has a float bias; onnxruntime's optimised graph
    holds an int32 bias for each, equal to :func:`ort_quantized_bias` of the file's float bias
    and scales, and :attr:`OrtPlan.quantized_biases` names all of them."""
    mobilenetv2 = _with_float_biases(mobilenetv2, tmp_path / "float_bias.onnx")
    src = onnx.load(mobilenetv2)
    inits = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    producer = {o: n for n in src.graph.node for o in n.output}
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(mobilenetv2), so, providers=["CPUExecutionProvider"])
    opt = {
        t.name: numpy_helper.to_array(t) for t in onnx.load(tmp_path / "opt.onnx").graph.initializer
    }
    layers = [n for n in src.graph.node if n.op_type in ("Conv", "Gemm")]
    assert len(layers) == 53
    checked = set()
    for n in layers:
        b = inits[n.input[2]]
        assert b.dtype == np.float32
        xdq, wdq = producer[n.input[0]], producer[n.input[1]]
        want, _ = ort_quantized_bias(b, inits[xdq.input[1]], inits[wdq.input[1]])
        # WeightBiasQuantization names its folded int32 bias after the node
        (got,) = [v for k, v in opt.items() if k.startswith(f"{n.name}_bias_int32")]
        assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), want), n.name
        checked.add(wdq.input[0])
    assert load_plan(mobilenetv2).quantized_biases == checked
