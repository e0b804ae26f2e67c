"""Regressions of issue 12: stochastic requantization in networks (item 4), the official
data-free range (item 10), BatchNorm data kept consistent by constant folding (item 3)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.execute import IntegerExecutor, QTensor, run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Op
from hwsim.quant import Scheme, quantize

# --- item 4: seeded stochastic rounding ---------------------------------------------------------


def _stochastic_program(abits=8):
    g = import_model("models/mlp.onnx")
    scheme = Scheme.preset(
        "per-tensor", wbits=8, abits=abits, register="pow2", rounding="stochastic"
    )
    return quantize(g, scheme, load_data("digits-train"), float_run=run_float)


def _out(program, x, seed, batch):
    ex = IntegerExecutor(program, seed=seed)
    return np.concatenate(
        [ex.output(ex.run(x[i : i + batch], keep_all=False)) for i in range(0, len(x), batch)]
    )


def test_stochastic_rounding_is_seeded_and_independent_of_the_batch_partition():
    program = _stochastic_program()
    x = load_data("digits").x[:100]
    a = _out(program, x, seed=7, batch=100)
    assert np.array_equal(a, _out(program, x, seed=7, batch=100))
    assert np.array_equal(a, _out(program, x, seed=7, batch=13))  # draws per (layer, sample)
    assert not np.array_equal(a, _out(program, x, seed=8, batch=100))
    # the API and report path take the seed too
    ds = Dataset("d", x, None)
    r1, o1 = api.run_program(program, ds, 32, collect_outputs=True, seed=3)
    r2, o2 = api.run_program(program, ds, 50, collect_outputs=True, seed=3)
    _, o3 = api.run_program(program, ds, 32, collect_outputs=True, seed=4)
    assert np.array_equal(o1, o2) and not np.array_equal(o1, o3)


@pytest.mark.parametrize("preset", ["per-sample", "per-sample-shift"])
def test_stochastic_rounding_with_per_sample_inputs(preset):
    """A dense / conv with a bias after a per-sample input: its per-sample bias register draws
    from the sample's generator too (found in review: it raised 'needs rng'), and the result
    does not depend on the batch partition."""
    g = import_model("models/rescnn.onnx")
    scheme = Scheme.preset(preset, register="pow2", rounding="stochastic")
    program = quantize(g, scheme, load_data("digits-train"), float_run=run_float)
    x = load_data("digits").x[:40]
    a = _out(program, x, seed=5, batch=40)
    assert np.array_equal(a, _out(program, x, seed=5, batch=7))


def test_stochastic_requantization_is_unbiased():
    """One image repeated 4,000 times: every sample draws its own rounding, so the mean of
    the first layer's integers is the exact rational value ``(acc + bias) * 2^-shift``."""
    program = _stochastic_program()
    g = program.graph
    n = 4000
    x = np.repeat(load_data("digits").x[:1], n, axis=0)
    env = IntegerExecutor(program, seed=11).run(x)
    dense = next(nd for nd in g.nodes if nd.op is Op.DENSE)
    xin = env[dense.inputs[0]]
    yq = env[dense.output]
    assert isinstance(xin, QTensor) and isinstance(yq, QTensor)
    wq = dense.wq
    xi = xin.q[:1].reshape(1, -1).astype(np.int64) - xin.zero_point
    acc = xi @ (wq.q.astype(np.int64) - np.asarray(wq.zero_point)).T
    sxw = np.float64(xin.scale) * np.asarray(wq.scale, np.float64)
    bias = (
        dense.bias_q.astype(np.int64)
        if dense.bias_q is not None
        else np.rint(dense.bias.astype(np.float64) / sxw)
    )
    real = sxw / np.float64(yq.scale)
    v = ((acc + bias) * real)[0] + yq.zero_point  # exact: real is a power of two
    inside = (v > yq.fmt.min + 1) & (v < yq.fmt.max - 1) & (v != np.round(v))
    assert inside.sum() >= 5
    mean = yq.q.astype(np.float64).reshape(n, -1).mean(axis=0)
    frac = v - np.floor(v)
    sd = np.sqrt(frac * (1 - frac) / n)
    assert np.all(np.abs(mean[inside] - v[inside]) <= 5 * sd[inside] + 1e-12)
    # and it is not deterministic rounding in disguise
    assert np.any(np.abs(mean[inside] - np.round(v[inside])) > 10 * sd[inside])


def test_cli_run_takes_a_seed(tmp_path):
    from click.testing import CliRunner

    from hwsim.cli import main

    q = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        main,
        [
            "quantize",
            "models/mlp.onnx",
            "--register",
            "pow2",
            "--rounding",
            "stochastic",
            "--calib",
            "digits-train",
            "-o",
            str(q),
        ],
    )
    assert r.exit_code == 0, r.output
    outs = []
    for seed, bs in (("5", "64"), ("5", "100"), ("6", "64")):
        o = tmp_path / f"o{seed}_{bs}.npz"
        args = ["run", str(q), "--data", "digits", "--seed", seed, "--batch-size", bs]
        r = CliRunner().invoke(main, args + ["--save-outputs", str(o)])
        assert r.exit_code == 0, r.output
        outs.append(next(iter(np.load(o).values())))
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])


# --- helpers: Conv -> BatchNormalization [-> Mul/Add by a constant] [-> Relu] -------------------


def _conv_bn_model(path, gamma, beta, post=None, relu=False, seed=0, x=None):
    """A float Conv(1 -> C, 3x3) -> BN model; BN mean/var are the conv output's own statistics
    on ``x`` (so the BN output is ~ beta + gamma * N(0, 1)); ``post`` = ("Mul"|"Add", c)."""
    rs = np.random.default_rng(seed)
    gamma = np.asarray(gamma, np.float32)
    beta = np.asarray(beta, np.float32)
    c = gamma.size
    w = rs.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32)
    conv_out = np.einsum(
        "nhwij,cij->nchw",
        np.lib.stride_tricks.sliding_window_view(x[:, 0], (3, 3), axis=(1, 2)),
        w[:, 0],
    )
    mean = conv_out.mean(axis=(0, 2, 3)).astype(np.float32)
    var = conv_out.var(axis=(0, 2, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(beta, "beta"),
        numpy_helper.from_array(mean, "mean"),
        numpy_helper.from_array(var, "var"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], name="conv"),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
    ]
    last = "bn"
    if post is not None:
        op, const = post
        inits.append(numpy_helper.from_array(np.asarray(const, np.float32), "k"))
        nodes.append(helper.make_node(op, [last, "k"], ["post"], name="post"))
        last = "post"
    if relu:
        nodes.append(helper.make_node("Relu", [last], ["relu"], name="relu"))
        last = "relu"
    nodes.append(helper.make_node("Flatten", [last], ["output"], axis=1))
    h = x.shape[2]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, h, h])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, c * (h - 2) ** 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _x(n=64, h=8, seed=1):
    return np.random.default_rng(seed).random((n, 1, h, h)).astype(np.float32)


# --- item 10: the official data-free range ------------------------------------------------------


GAMMA = [1.0, -2.0, 0.5, 1.0]
BETA = [0.1, 0.2, -0.1, 0.3]


def _df_spec(path, tensor, **kw):
    program = quantize(
        import_model(path),
        Scheme.preset("data-free", bn_sigmas=6.0, **kw),
        input_range=(0.0, 1.0), float_run=run_float,
    )
    return program, program.acts[tensor]


def test_data_free_range_sound_and_official(tmp_path):
    x = _x()
    p = _conv_bn_model(str(tmp_path / "m.onnx"), GAMMA, BETA, relu=True, x=x)
    g, b = np.array(GAMMA), np.array(BETA)
    # sound (default): every channel within 6 sigma, |gamma|; the ReLU clamps it at 0
    _, sound = _df_spec(p, "relu")
    assert not sound.fmt.signed
    hi = float(np.max(b + 6 * np.abs(g)))  # 12.2 (channel 1, gamma < 0)
    assert sound.scale == pytest.approx(hi / 255, rel=1e-6)
    # official: PSG-pytorch save_bn_param, [0, max(beta + n * gamma)] with signed gamma
    _, off = _df_spec(p, "relu", data_free_range="official")
    assert not off.fmt.signed
    assert off.scale == pytest.approx(float(np.max(b + 6 * g)) / 255, rel=1e-6)  # 6.3
    assert off.scale < sound.scale
    # a BN without a ReLU: the official code has no range; both give the sound bound
    p2 = _conv_bn_model(str(tmp_path / "m2.onnx"), GAMMA, BETA, relu=False, x=x)
    _, s2 = _df_spec(p2, "bn")
    _, o2 = _df_spec(p2, "bn", data_free_range="official")
    r = max(-float(np.min(b - 6 * np.abs(g))), hi)
    assert s2.fmt.signed and s2.scale == pytest.approx(r / 127, rel=1e-6)
    assert o2 == s2
    with pytest.raises(ValueError, match="data_free_range"):
        Scheme.preset("data-free", data_free_range="loose")


def test_cli_data_free_range_flag(tmp_path):
    from click.testing import CliRunner

    from hwsim.cli import main
    from hwsim.quant.store import load

    p = _conv_bn_model(str(tmp_path / "m.onnx"), GAMMA, BETA, relu=True, x=_x())
    scales = {}
    for mode in ("sound", "official"):
        q = tmp_path / f"{mode}.onnx"
        args = ["quantize", p, "--scheme", "data-free", "--input-range", "0,1", "-o", str(q)]
        r = CliRunner().invoke(main, args + ["--data-free-range", mode])
        assert r.exit_code == 0, r.output
        prog = load(str(q))
        assert prog.scheme.default.data_free_range == mode
        scales[mode] = prog.acts["relu"].scale
    assert scales["official"] < scales["sound"]


# --- item 3: Conv -> BN -> Mul/Add by a constant keeps the BN data consistent -------------------


@pytest.mark.parametrize("post", [("Mul", 3.0), ("Add", 5.0), ("Mul", [3.0, -2.0, 0.5, 1.5])])
def test_constant_after_batchnorm_register_fold_and_data_free(tmp_path, post):
    x = _x(n=128)
    op, c = post
    shape = (1, 4, 1, 1) if np.ndim(c) else ()
    p = _conv_bn_model(
        str(tmp_path / "m.onnx"), GAMMA, BETA, post=(op, np.reshape(c, shape)), x=x
    )
    g = import_model(p)
    conv = next(n for n in g.nodes if n.op is Op.CONV)
    a = conv.attrs
    cv = np.broadcast_to(np.asarray(c, np.float64), (4,))
    # every BN-derived field describes the same layer as the folded weights
    np.testing.assert_allclose(
        conv.weight,
        a["weight_unfolded"] * a["bn_k"].reshape(-1, 1, 1, 1),
        rtol=1e-5,
        atol=1e-7,
    )
    gam, bet = np.array(GAMMA), np.array(BETA)
    want_g, want_b = (gam * cv, bet * cv) if op == "Mul" else (gam, bet + cv)
    np.testing.assert_allclose(a["bn_gamma"], want_g, rtol=1e-6)
    np.testing.assert_allclose(a["bn_beta"], want_b, rtol=1e-6)
    # register fold + data-free: the integer output tracks the float one
    scheme = Scheme.preset("data-free", bn_fold="register", bn_sigmas=6.0)
    program = quantize(g, scheme, input_range=(0.0, 1.0), float_run=run_float)
    f = run_float(program.graph, x)[program.graph.output].astype(np.float64)
    ex = IntegerExecutor(program)
    d = ex.output(ex.run(x)).astype(np.float64)
    ratio = float(np.sum(d * f) / np.sum(f * f))
    assert ratio == pytest.approx(1.0, abs=0.02)
    assert 10 * np.log10(np.sum(f * f) / np.sum((f - d) ** 2)) > 25
    # and the data-free range includes the constant
    spec = program.acts[conv.output]
    r = max(-float(np.min(want_b - 6 * np.abs(want_g))), float(np.max(want_b + 6 * np.abs(want_g))))
    assert spec.scale * spec.fmt.max == pytest.approx(r, rel=1e-5)
