"""The integer executor against a plain-Python-int reference of the same program, and the float
executor against onnxruntime."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hwsim.data import Dataset, load_data
from hwsim.datapath import Accumulator
from hwsim.datapath import reference as dref
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.numerics import Overflow
from hwsim.numerics import reference as nref
from hwsim.quant import Scheme, quantize

MODELS = ["models/mlp.onnx", "models/rescnn.onnx"]


def _mlp_model(seed: int, k: int, h: int, o: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (h, k)).astype(np.float32)
    b1 = rng.normal(0, 0.2, h).astype(np.float32)
    w2 = rng.normal(0, 0.5, (o, h)).astype(np.float32)
    b2 = rng.normal(0, 0.2, o).astype(np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    inits = [
        numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))
    ]
    g = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", o])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _ref_quantize_linear(x: float, scale: float, zp: int, bits: int, signed: bool) -> int:
    q = np.float32(x) / np.float32(scale)  # float32 division, as QuantizeLinear
    return nref.saturate(int(np.rint(q)) + zp, bits, signed)


def _ref_register(kind: str, acc: int, sx, sw, sy, rounding: str) -> int:
    real = float(
        np.float64(np.float32(sx)) * np.float64(np.float32(sw)) / np.float64(np.float32(sy))
    )
    if kind == "ort":
        return nref.ort_requantize(acc, nref.ort_combined_scale(float(sx), float(sw), float(sy)))
    if kind == "pow2":
        shift = int(np.round(-np.log2(real)))
        return nref.pow2_requantize(acc, shift, rounding)
    m, s = nref.quantize_multiplier(real, kind == "tflite-single")
    return nref.multiply_by_quantized_multiplier(
        acc, m, s, "single" if kind == "tflite-single" else "double"
    )


def _ref_dense(xq, x_spec, node, out_spec, acc: Accumulator, kind, rounding):
    """Plain-int reference of one quantized dense layer (executor contract, module docstring)."""
    wq = node.wq
    W = wq.q.T.tolist()  # (K, O)
    zw = np.broadcast_to(wq.zero_point, (wq.q.shape[0],)).tolist()
    vals, _ = dref.gemm(xq, W, x_spec.zero_point, [int(v) for v in zw], acc, len(zw))
    sw = np.broadcast_to(wq.scale, (wq.q.shape[0],))
    out = []
    for row in vals:
        r = []
        for o, a in enumerate(row):
            b = node.bias[o]
            bq = int(np.rint(float(b) / (float(np.float32(x_spec.scale)) * float(sw[o]))))
            lo, hi = nref.format_range(acc.bits, True)
            bq = min(max(bq, lo), hi)
            t = a + bq
            t = (
                nref.wrap(t, acc.bits, True)
                if acc.overflow is Overflow.WRAP
                else nref.saturate(t, acc.bits, True)
            )
            y = _ref_register(kind, t, x_spec.scale, sw[o], out_spec.scale, rounding)
            r.append(nref.saturate(y + out_spec.zero_point, out_spec.fmt.bits, out_spec.fmt.signed))
        out.append(r)
    return out


@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 4),
    k=st.integers(1, 12),
    wbits=st.integers(2, 8),
    abits=st.integers(2, 8),
    acc_bits=st.integers(10, 32),
    overflow=st.sampled_from(["wrap", "saturate"]),
    register=st.sampled_from(["ort", "tflite", "tflite-single", "pow2"]),
    granularity=st.sampled_from(["tensor", "channel"]),
    weight_mode=st.sampled_from(["symmetric", "symmetric-full", "asymmetric"]),
)
def test_integer_executor_matches_plain_int_reference(
    seed, n, k, wbits, abits, acc_bits, overflow, register, granularity, weight_mode
):
    model = _mlp_model(seed, k, 5, 3)
    rng = np.random.default_rng(seed + 1)
    x = rng.normal(0, 1, (max(n, 8), k)).astype(np.float32)
    calib = Dataset("calib", x, None)
    scheme = Scheme.preset(
        "per-tensor",
        wbits=wbits,
        abits=abits,
        acc_bits=acc_bits,
        overflow=overflow,
        register=register,
        granularity=granularity,
        weight_mode=weight_mode,
    )
    program = quantize(import_model(model), scheme, calib, float_run=run_float)
    ex = IntegerExecutor(program)
    env = ex.run(x[:n])
    g = program.graph
    fc1, _, fc2 = g.nodes
    xs = program.acts["x"]
    xq = [
        [_ref_quantize_linear(v, xs.scale, xs.zero_point, xs.fmt.bits, xs.fmt.signed) for v in row]
        for row in x[:n].tolist()
    ]
    assert env["x"].q.tolist() == xq
    hs = program.acts["h"]
    ls = program.layer("fc1")
    h = _ref_dense(xq, xs, fc1, hs, ls.acc, register, ls.rounding.value)
    assert env["h"].q.tolist() == h
    # relu is fused into fc1's requantization: unsigned output, so relu is the identity
    assert env["r"].q.tolist() == [[max(v, hs.zero_point) for v in row] for row in h]
    ys = program.acts["y"]
    y = _ref_dense(
        env["r"].q.tolist(), hs, fc2, ys, program.layer("fc2").acc, register, ls.rounding.value
    )
    assert env["y"].q.tolist() == y


@pytest.mark.parametrize("path", MODELS)
def test_float_executor_matches_onnxruntime(path):
    d = load_data("digits")
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": d.x})[0]
    g = import_model(path)
    got = run_float(g, d.x)[g.output]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(got.argmax(1), want.argmax(1))


def test_per_sample_shift_scales_are_powers_of_two_of_the_base():
    d = load_data("digits")
    g = import_model("models/mlp.onnx")
    program = quantize(g, Scheme.preset("per-sample-shift", s_max=3), load_data("digits-train"), float_run=run_float)
    env = IntegerExecutor(program).run(d.x[:64])
    for name, spec in program.acts.items():
        if spec.mode != "shift" or name not in env:
            continue
        # one convention (eq. 19): s > 0 is finer, scale = base * 2^-s, s in [0, s_max]
        s = np.log2(np.float64(np.float32(spec.scale)) / env[name].scale.astype(np.float64))
        assert np.all(s == np.round(s)) and s.min() >= 0 and s.max() <= 3
        assert np.array_equal(s, env[name].shifts)


def test_shift_choice_is_smallest_that_fits():
    from hwsim.execute import sample_scale
    from hwsim.numerics import IntFormat
    from hwsim.quant.scheme import ActSpec

    # the input quantizer (float data): the largest s with absmax <= qmax * base * 2^-s
    spec = ActSpec("shift", IntFormat(8, True), 16.0, 0, 4)
    absmax = np.array([0.0, 127.0, 127.5, 254.0, 254.01, 5000.0])
    scales, shifts, base = sample_scale(spec, absmax)
    assert scales.tolist() == [1, 1, 2, 2, 4, 16]
    assert shifts.tolist() == [4, 4, 3, 3, 2, 0] and base == 16.0


def test_dynamic_scale_per_sample():
    from hwsim.execute import sample_scale
    from hwsim.numerics import IntFormat
    from hwsim.quant.scheme import ActSpec

    spec = ActSpec("dynamic", IntFormat(4, False))
    got, _, _ = sample_scale(spec, np.array([15.0, 0.0, 1.5]))
    assert got.dtype == np.float32
    assert got.tolist() == [1.0, 1.0, float(np.float32(0.1))]  # qmax = 15; empty range -> 1


def test_fraction_reference_helpers_agree():
    # guard: the reference ort scale is exactly the float32 QLinearConv computes
    assert nref.ort_combined_scale(0.1, 0.2, 0.3) == Fraction(
        float((np.float32(0.1) * np.float32(0.2)) / np.float32(0.3))
    )


def test_bn_fold_register_keeps_the_layerwise_grid():
    """bn_fold=register: integer weights on the unfolded conv's per-tensor grid, the BN factor
    in the per-channel scale; the dequantized weights approximate the folded float ones."""
    from hwsim.quant import quantize_weights

    g = import_model("models/rescnn.onnx")
    scheme = Scheme.preset("data-free", wbits=4, bn_fold="register")
    program = quantize(g, scheme, input_range=(0.0, 1.0), float_run=run_float)
    conv = next(n for n in program.graph.nodes if "bn_k" in n.attrs)
    k = conv.attrs["bn_k"].astype(np.float64)
    plain = quantize_weights(conv.attrs["weight_unfolded"], scheme.default)
    sign = np.where(k < 0, -1, 1).reshape(-1, 1, 1, 1)
    assert np.array_equal(conv.wq.q, plain.q * sign)
    np.testing.assert_allclose(conv.wq.scale, np.float32(plain.scale) * np.abs(k), rtol=1e-6)
    err = np.abs(conv.wq.dequantize() - conv.weight).max()
    assert err <= 0.5 * float(np.max(conv.wq.scale)) + 1e-6


@pytest.mark.parametrize("register", ["tflite", "tflite-single"])
def test_out_of_range_multiplier_names_the_layer(register):
    # issue 12 item 5: an output scale so small that fc1's real multiplier is >= 2^30 is an
    # error naming the layer (tflite-single used to saturate it silently to ~half the gain)
    from dataclasses import replace

    model = _mlp_model(3, 4, 5, 3)
    x = np.random.default_rng(0).normal(0, 1, (8, 4)).astype(np.float32)
    scheme = Scheme.preset("per-tensor", register=register)
    program = quantize(import_model(model), scheme, Dataset("calib", x, None), float_run=run_float)
    program.acts["h"] = replace(program.acts["h"], scale=1e-15)
    with pytest.raises(ValueError, match=r"node 'fc1'.*real multiplier .* 2\^30 - 2\^-2"):
        IntegerExecutor(program).run(x)


def test_clamped_biases_are_counted_and_reported():
    # issue 12 item 6: a float bias beyond the accumulator range is clamped to it when
    # quantized; that is counted per layer, per (sample, channel), in the stats and the report
    import json

    from hwsim.api import run_program

    model = _mlp_model(5, 4, 5, 3)
    b1 = numpy_helper.to_array(model.graph.initializer[1]).copy()
    b1[[0, 2]] = [1e6, -1e6]  # two of fc1's five channels
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(b1, "b1"))
    x = np.random.default_rng(0).normal(0, 1, (6, 4)).astype(np.float32)
    ds = Dataset("calib", x, None)
    scheme = Scheme.preset("per-tensor", acc_bits=12, overflow="saturate")
    program = quantize(import_model(model), scheme, ds, float_run=run_float)
    rep, _ = run_program(program, ds, batch_size=4)
    rows = {r.name: r for r in rep.layers}
    assert rows["fc1"].bias_clamped == 2 * 6  # two channels, six samples, over two batches
    assert rows["fc2"].bias_clamped == 0
    d = json.loads(json.dumps(rep.as_dict()))
    assert {r["name"]: r["bias_clamped"] for r in d["layers"]}["fc1"] == 12
    assert d["totals"]["bias_clamped"] == 12
    assert "bias clamped to the accumulator range" in rep.table()
    assert "fc1 12" in rep.table()
