"""hwsim.quant.quantize on its own: weight modes and data-free ranges (issue 12).

Expected values are derived by hand (exact power-of-two scales) or by a plain-Python
per-element re-derivation of the contract in docs/networks.md ("Schemes"), never from the
function under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.execute import run_float
from hwsim.graph.ir import Graph, Node, Op
from hwsim.quant import LayerScheme, Scheme, SchemeError, quantize, quantize_weights
from hwsim.quant.quantize import datafree_ranges

f32 = np.float32


def _ls(**kw) -> LayerScheme:
    return LayerScheme(**kw)


# --- weight modes: hand-computed cases ----------------------------------------------------------
def test_symmetric_exact_grid_and_half_even_ties():
    # r = 127/64 -> s = r/127 = 1/64 exactly; w = k/64 -> q = k; ties round half to even
    w = np.array([[127, -127, 2.5, 3.5, -2.5, 0, 1]], f32) / f32(64)
    wq = quantize_weights(w, _ls(wbits=8, weight_mode="symmetric"))
    assert wq.fmt.bits == 8 and wq.fmt.signed
    assert float(wq.scale) == 1 / 64
    assert np.ndim(wq.scale) == 0 and not wq.per_channel
    assert int(wq.zero_point) == 0
    assert wq.q.tolist() == [[127, -127, 2, 4, -2, 0, 1]]


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_levels_are_restricted(bits):
    qmax = 2 ** (bits - 1) - 1
    # s = 1/8 exactly: r = qmax/8
    w = np.array([[qmax, -qmax, 0.0, 1.0]], f32) / f32(8)
    wq = quantize_weights(w, _ls(wbits=bits, weight_mode="symmetric"))
    assert float(wq.scale) == 1 / 8
    assert wq.q.tolist() == [[qmax, -qmax, 0, 1]]
    assert wq.q.min() >= -qmax  # never -2^(b-1)


@pytest.mark.parametrize("bits", range(2, 9))
def test_symmetric_full_uses_the_full_range(bits):
    # s = 2r/(2^b-1) = 1/16 with r = (2^b-1)/32: w = +-r sits exactly between two levels:
    # -r -> -(2^b-1)/2 = -2^(b-1)+0.5 -> rint -> the even one of -2^(b-1), -2^(b-1)+1
    n = 2**bits - 1
    r = n / 32
    w = np.array([[r, -r, 0.0, 1 / 16, -1 / 16]], f32)
    wq = quantize_weights(w, _ls(wbits=bits, weight_mode="symmetric-full"))
    assert float(wq.scale) == 1 / 16
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    # +r: 2^(b-1) - 0.5 -> even neighbour is 2^(b-1) (bits>=2) -> clamped to hi
    pos = min(round(n / 2), hi)
    neg = max(round(-n / 2), lo)
    assert wq.q.tolist() == [[pos, neg, 0, 1, -1]]
    assert wq.q.min() >= lo and wq.q.max() <= hi


def test_symmetric_full_8bit_reaches_minus_128():
    w = np.array([[255 / 32, -255 / 32]], f32)  # s = 1/16, q = +-127.5
    wq = quantize_weights(w, _ls(wbits=8, weight_mode="symmetric-full"))
    assert wq.q.tolist() == [[127, -128]]  # 127.5 -> 128 (even) -> clamp 127; -127.5 -> -128


def test_asymmetric_hand_computed():
    # [lo, hi] = [-5/16, 10/16], b = 4: s = (15/16)/15 = 1/16, zp = rint(5) = 5
    w = np.array([[-5, 10, 0, 1, -1, 2.5]], f32) / f32(16)
    wq = quantize_weights(w, _ls(wbits=4, weight_mode="asymmetric"))
    assert wq.fmt.bits == 4 and not wq.fmt.signed
    assert float(wq.scale) == 1 / 16
    assert int(wq.zero_point) == 5
    assert wq.q.tolist() == [[0, 15, 5, 6, 4, 7]]  # 2.5 -> 2 (half even) + 5


def test_asymmetric_negative_only_range_widened_to_zero():
    # min = -15/16, max = -1/16 -> widened to [-15/16, 0]: s = 1/16, zp = 15
    w = np.array([[-15, -1, -8]], f32) / f32(16)
    wq = quantize_weights(w, _ls(wbits=4, weight_mode="asymmetric"))
    assert float(wq.scale) == 1 / 16
    assert int(wq.zero_point) == 15
    assert wq.q.tolist() == [[0, 14, 7]]
    np.testing.assert_array_equal(wq.dequantize(), w)


def test_asymmetric_positive_only_zero_point_is_zero():
    w = np.array([[15, 1, 8]], f32) / f32(16)
    wq = quantize_weights(w, _ls(wbits=4, weight_mode="asymmetric"))
    assert float(wq.scale) == 1 / 16 and int(wq.zero_point) == 0
    assert wq.q.tolist() == [[15, 1, 8]]


def test_symmetric_negative_only():
    w = np.array([[-127, -1, -64]], f32) / f32(32)  # r = 127/32 -> s = 1/32
    wq = quantize_weights(w, _ls(wbits=8, weight_mode="symmetric"))
    assert float(wq.scale) == 1 / 32
    assert wq.q.tolist() == [[-127, -1, -64]]


@pytest.mark.parametrize("mode", ["symmetric", "symmetric-full", "asymmetric"])
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_all_zero_weights(mode, gran):
    w = np.zeros((3, 2, 1, 1), f32)
    wq = quantize_weights(w, _ls(wbits=4, weight_mode=mode, granularity=gran))
    assert np.all(wq.q == 0)
    assert np.all(np.asarray(wq.zero_point) == 0)
    s = np.asarray(wq.scale, np.float64)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    assert s.shape == ((3,) if gran == "channel" else ())
    np.testing.assert_array_equal(wq.dequantize(), w)


def test_per_channel_vs_per_tensor():
    # channel 0: r = 127/8 (s = 1/8); channel 1: r = 127/64 (s = 1/64)
    w = np.array([[127 / 8, 1 / 8], [127 / 64, -1 / 64]], f32)
    pc = quantize_weights(w, _ls(granularity="channel"))
    assert pc.per_channel and pc.scale.shape == (2,)
    assert pc.scale.tolist() == [1 / 8, 1 / 64]
    assert pc.zero_point.tolist() == [0, 0]
    assert pc.q.tolist() == [[127, 1], [127, -1]]
    pt = quantize_weights(w, _ls(granularity="tensor"))
    assert not pt.per_channel and float(pt.scale) == 1 / 8
    # 127/64 / (1/8) = 15.875 -> 16; -1/64 / (1/8) = -0.125 -> 0
    assert pt.q.tolist() == [[127, 1], [16, 0]]


def test_per_channel_asymmetric_zero_points_per_channel():
    w = np.array([[-5 / 16, 10 / 16], [0.0, 15 / 8]], f32)  # b=4: s 1/16 zp 5; s 1/8 zp 0
    wq = quantize_weights(w, _ls(wbits=4, weight_mode="asymmetric", granularity="channel"))
    assert wq.scale.tolist() == [1 / 16, 1 / 8]
    assert wq.zero_point.tolist() == [5, 0]
    assert wq.q.tolist() == [[0, 15], [0, 15]]


def test_single_channel_per_channel_equals_per_tensor():
    w = np.array([[[[0.3, -0.7], [0.1, 0.05]]]], f32)  # (1, 1, 2, 2)
    pc = quantize_weights(w, _ls(wbits=5, granularity="channel"))
    pt = quantize_weights(w, _ls(wbits=5, granularity="tensor"))
    assert pc.scale.shape == (1,) and np.ndim(pt.scale) == 0
    assert float(pc.scale[0]) == float(pt.scale)
    np.testing.assert_array_equal(pc.q, pt.q)
    assert pc.q.shape == w.shape
    assert float(pt.scale) == float(f32(0.7 / 15)) or float(pt.scale) == float(
        f32(float(f32(0.7)) / 15)
    )


def test_conv_layout_per_channel_on_axis_0():
    w = np.zeros((2, 3, 2, 2), f32)
    w[0, 1, 0, 0] = 127 / 4
    w[1, 2, 1, 1] = -127 / 2
    wq = quantize_weights(w, _ls(granularity="channel"))
    assert wq.scale.tolist() == [1 / 4, 1 / 2]
    assert wq.q[0, 1, 0, 0] == 127 and wq.q[1, 2, 1, 1] == -127
    assert np.count_nonzero(wq.q) == 2


def test_pow2_register_rounds_weight_scale_up():
    # r = 1: s = 1/127 -> next power of two up: 1/64; q = rint(w*64) clamped to +-127
    w = np.array([[1.0, -1.0, 0.5, 1 / 64]], f32)
    wq = quantize_weights(w, _ls(register="pow2"))
    assert float(wq.scale) == 1 / 64
    assert wq.q.tolist() == [[64, -64, 32, 1]]


# --- weight modes: property against a plain-Python re-derivation -----------------------------
def _ref_weights(w: np.ndarray, bits: int, mode: str, per_ch: bool):
    """Per-element plain-Python re-derivation of docs/networks.md's weight modes."""
    rows = [list(map(float, r)) for r in w.reshape(w.shape[0], -1)] if per_ch else [
        list(map(float, w.ravel()))
    ]
    scales, zps = [], []
    for row in rows:
        if mode == "asymmetric":
            lo, hi = min(min(row), 0.0), max(max(row), 0.0)
            s = float(f32((hi - lo) / (2**bits - 1)))
            s = s if s > 0 else 1.0
            z = min(max(round(-lo / s), 0), 2**bits - 1)
        else:
            r = max(abs(v) for v in row)
            d = (2 ** (bits - 1) - 1) if mode == "symmetric" else (2**bits - 1) / 2
            s = float(f32(r / d))
            s = s if s > 0 else 1.0
            z = 0
        scales.append(s)
        zps.append(z)
    if mode == "asymmetric":
        qlo, qhi = 0, 2**bits - 1
    elif mode == "symmetric":
        qlo, qhi = -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    else:
        qlo, qhi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    q = []
    for o in range(flat.shape[0]):
        c = o if per_ch else 0
        row = []
        for v in flat[o]:
            x = float(f32(v) / f32(scales[c]))  # the division in float32, as DQ's inverse
            row.append(min(max(round(x) + zps[c], qlo), qhi))  # round(): half to even
        q.append(row)
    return np.array(q, np.int64).reshape(w.shape), scales, zps


@settings(max_examples=40)
@given(
    bits=st.integers(2, 8),
    mode=st.sampled_from(["symmetric", "symmetric-full", "asymmetric"]),
    per_ch=st.booleans(),
    w=hnp.arrays(
        f32,
        st.tuples(st.integers(1, 4), st.integers(1, 6)),
        elements=st.one_of(
            st.floats(-4, 4, width=32),
            st.sampled_from([0.0, -1.0, 1.0, 0.5, -0.5]),
        ),
    ),
)
def test_weight_modes_match_plain_python(bits, mode, per_ch, w):
    wq = quantize_weights(
        w, _ls(wbits=bits, weight_mode=mode, granularity="channel" if per_ch else "tensor")
    )
    q, scales, zps = _ref_weights(w, bits, mode, per_ch)
    np.testing.assert_array_equal(wq.q, q)
    if per_ch:
        assert np.asarray(wq.scale).tolist() == scales
        assert np.asarray(wq.zero_point).tolist() == zps
    else:
        assert float(wq.scale) == scales[0] and int(wq.zero_point) == zps[0]
    assert wq.fmt.bits == bits and wq.fmt.signed == (mode != "asymmetric")
    # reconstruction error within half a step where nothing clamps
    deq = wq.dequantize().reshape(w.shape[0], -1)
    flat = w.reshape(w.shape[0], -1)
    for o in range(flat.shape[0]):
        s = scales[o if per_ch else 0]
        for v, d in zip(flat[o], deq[o], strict=True):
            if mode != "symmetric-full":  # only symmetric-full clamps +r
                assert abs(float(v) - float(d)) <= s / 2 * (1 + 1e-5) + 1e-12


# --- data-free ranges --------------------------------------------------------------------------
def _bn_graph(gamma, beta, relu=True, extra_reader=False):
    """input (N, 2, 1, 1) -> 1x1 conv with a folded BN (gamma/beta attrs) [-> relu]."""
    c = len(gamma)
    w = np.ones((c, 2, 1, 1), f32)
    attrs = {
        "strides": (1, 1),
        "pads": (0, 0, 0, 0),
        "dilations": (1, 1),
        "group": 1,
        "bn_gamma": np.asarray(gamma, f32),
        "bn_beta": np.asarray(beta, f32),
        "bn_k": np.ones(c, f32),
        "weight_unfolded": w,
    }
    nodes = [Node("conv", Op.CONV, ("x",), "c", attrs, weight=w, bias=np.zeros(c, f32))]
    out = "c"
    if relu:
        nodes.append(Node("relu", Op.RELU, ("c",), "r"))
        out = "r"
    if extra_reader:
        nodes.append(Node("add", Op.ADD, (out, "c"), "a"))
        out = "a"
    return Graph("bn", "<test>", "x", (2, 1, 1), out, nodes)


def _df(graph, **kw):
    ls = LayerScheme(act_mode="data-free", **kw)
    return datafree_ranges(graph, lambda n: ls, (0.0, 1.0))


GAMMA, BETA = (1.0, -2.0), (0.1, 0.2)  # docs/networks.md's example, n = 6


def test_datafree_bn_relu_sound():
    r = _df(_bn_graph(GAMMA, BETA), data_free_range="sound")
    # conv (BN) output: [min(0.1-6, 0.2-12), max(0.1+6, 0.2+12)] = [-11.8, 12.2]
    assert r["c"] == pytest.approx((-11.8, 12.2))
    assert r["r"] == pytest.approx((0.0, 12.2))


def test_datafree_bn_relu_official_uses_signed_gamma():
    r = _df(_bn_graph(GAMMA, BETA), data_free_range="official")
    # [0, max(0.1 + 6*1, 0.2 + 6*(-2))] = [0, 6.1]
    assert r["c"] == pytest.approx((0.0, 6.1))
    assert r["r"] == pytest.approx((0.0, 6.1))


@pytest.mark.parametrize("mode", ["sound", "official"])
def test_datafree_bn_without_relu_is_the_sound_bound(mode):
    r = _df(_bn_graph(GAMMA, BETA, relu=False), data_free_range=mode)
    assert r["c"] == pytest.approx((-11.8, 12.2))


def test_datafree_official_needs_relu_as_only_reader():
    # BN output read by a ReLU and an Add: the official code has no range -> sound bound
    r = _df(_bn_graph(GAMMA, BETA, extra_reader=True), data_free_range="official")
    assert r["c"] == pytest.approx((-11.8, 12.2))
    assert r["a"] == pytest.approx((-11.8, 24.4))  # interval sum of [0, 12.2] and the above


def test_datafree_bn_sigmas_and_positive_gamma_agree():
    g = _bn_graph((0.5, 2.0), (-1.0, 0.5))
    for mode in ("sound", "official"):
        r = _df(g, data_free_range=mode, bn_sigmas=3.0)
        # max(-1 + 1.5, 0.5 + 6) = 6.5
        assert r["r"] == pytest.approx((0.0, 6.5))
    r = _df(_bn_graph((0.5, 2.0), (-1.0, 0.5), relu=False), bn_sigmas=3.0)
    assert r["c"] == pytest.approx((-5.5, 6.5))  # min(-1-1.5, 0.5-6) = -5.5


def test_datafree_bn_relu_official_all_negative_max_clamped_at_zero():
    # every beta_c + n*gamma_c < 0: official range [0, max(..., 0)] = [0, 0]
    r = _df(_bn_graph((-1.0,), (-0.5,)), data_free_range="official")
    assert r["c"] == pytest.approx((0.0, 0.0))


def test_datafree_interval_arithmetic_without_bn():
    w = np.array([[1.0, -2.0], [3.0, 0.5]], f32)
    b = np.array([0.5, -1.0], f32)
    nodes = [
        Node("fc", Op.DENSE, ("x",), "d", weight=w, bias=b),
        Node("relu", Op.RELU, ("d",), "r"),
        Node("mul", Op.MUL, ("r",), "m", weight=np.array(-2.0, f32)),
        Node("clip", Op.CLIP, ("d",), "cl", {"min": -1.0, "max": 2.0}),
    ]
    g = Graph("ia", "<test>", "x", (2,), "m", nodes)
    r = datafree_ranges(g, lambda n: LayerScheme(act_mode="data-free"), (0.0, 1.0))
    # ch0: [0 - 2 + 0.5, 1 + 0 + 0.5] = [-1.5, 1.5]; ch1: [-1, 3 + 0.5 - 1 = 2.5]
    assert r["d"] == pytest.approx((-1.5, 2.5))
    assert r["r"] == pytest.approx((0.0, 2.5))
    assert r["m"] == pytest.approx((-5.0, 0.0))
    assert r["cl"] == pytest.approx((-1.0, 2.0))


def test_datafree_needs_an_input_range():
    g = _bn_graph(GAMMA, BETA)
    with pytest.raises(SchemeError, match="input range"):
        datafree_ranges(g, lambda n: LayerScheme(), None)


@pytest.mark.parametrize(
    "mode, relu, signed, hi",
    [
        ("sound", True, False, 12.2),
        ("official", True, False, 6.1),
        ("sound", False, True, 12.2),
        ("official", False, True, 12.2),
    ],
)
def test_quantize_data_free_act_specs(mode, relu, signed, hi):
    g = _bn_graph(GAMMA, BETA, relu=relu)
    prog = quantize(
        g,
        Scheme.preset("data-free", abits=8, data_free_range=mode),
        input_range=(0.0, 1.0), float_run=run_float,
    )
    spec = prog.acts["c"]
    assert spec.mode == "static" and spec.zero_point == 0
    assert spec.fmt.bits == 8 and spec.fmt.signed is signed
    # unsigned: s = hi/(2^b-1); signed symmetric: s = r/(2^(b-1)-1)
    want = hi / 255 if not signed else hi / 127
    assert spec.scale == pytest.approx(float(f32(want)), rel=1e-6)
    if relu:
        assert prog.acts["r"] == spec  # the fused ReLU takes the layer's quantization
    # input [0, 1] -> unsigned, s = 1/255
    assert not prog.acts["x"].fmt.signed
    assert prog.acts["x"].scale == float(f32(1 / 255))


def test_quantize_data_free_without_input_range_is_an_error():
    with pytest.raises(SchemeError, match="input range"):
        quantize(_bn_graph(GAMMA, BETA), Scheme.preset("data-free"), float_run=run_float)


def test_quantize_weights_per_layer_override_and_first_last_bits():
    w1 = np.full((2, 2), 127 / 8, f32)
    w2 = np.full((2, 2), 7 / 8, f32)
    nodes = [
        Node("fc1", Op.DENSE, ("x",), "h", weight=w1, bias=np.zeros(2, f32)),
        Node("relu", Op.RELU, ("h",), "r"),
        Node("fc2", Op.DENSE, ("r",), "h2", weight=w2.copy(), bias=np.zeros(2, f32)),
        Node("fc3", Op.DENSE, ("h2",), "y", weight=w2.copy(), bias=np.zeros(2, f32)),
    ]
    g = Graph("m", "<test>", "x", (2,), "y", nodes)
    prog = quantize(
        g,
        Scheme.preset(
            "data-free", wbits=8, first_last_bits=4, overrides={"fc2": {"wbits": 4, "acc_bits": 20}}
        ),
        input_range=(0.0, 1.0), float_run=run_float,
    )
    byname = {n.name: n for n in prog.graph.nodes}
    # fc1 (first) and fc3 (last): 4 bits -> s = r/7; fc2 by override: 4 bits too
    assert byname["fc1"].wq.fmt.bits == 4
    assert float(byname["fc1"].wq.scale) == float(f32(127 / 8 / 7))
    assert byname["fc2"].wq.fmt.bits == 4 and float(byname["fc2"].wq.scale) == 1 / 8
    assert byname["fc3"].wq.fmt.bits == 4
    assert prog.layers["fc2"].acc.bits == 20
    assert prog.layers["fc1"].acc.bits == 32
    # first_last_bits also sets the input activation width
    assert prog.acts["x"].fmt.bits == 4


def test_unknown_override_layer_is_an_error():
    g = _bn_graph(GAMMA, BETA)
    with pytest.raises(SchemeError, match="nope"):
        quantize(g, Scheme.preset("data-free", overrides={"nope": {"wbits": 4}}), input_range=(0, 1), float_run=run_float)


def test_bn_fold_register_moves_k_into_the_scale():
    # conv weight w (per-channel r = 127/8 -> s = 1/8), k = (2, -0.5):
    # integers of w (sign-flipped where k < 0), scale s*|k|
    c = 2
    w = np.zeros((c, 1, 1, 1), f32)
    w[:, 0, 0, 0] = [127 / 8, 127 / 8]
    k = np.array([2.0, -0.5], f32)
    attrs = {
        "strides": (1, 1),
        "pads": (0, 0, 0, 0),
        "dilations": (1, 1),
        "group": 1,
        "bn_gamma": k,
        "bn_beta": np.zeros(c, f32),
        "bn_k": k,
        "weight_unfolded": w,
    }
    node = Node("conv", Op.CONV, ("x",), "c", attrs, weight=w * k[:, None, None, None])
    g = Graph("r", "<test>", "x", (1, 1, 1), "c", [node])
    prog = quantize(
        g, Scheme.preset("data-free", bn_fold="register"), input_range=(0.0, 1.0), float_run=run_float
    )
    wq = prog.graph.nodes[0].wq
    assert wq.q.ravel().tolist() == [127, -127]
    assert wq.scale.tolist() == [float(f32(2 / 8)), float(f32(0.5 / 8))]
    np.testing.assert_allclose(wq.dequantize().ravel(), [127 / 4, -127 / 16], rtol=1e-6)
    assert math.isfinite(float(wq.scale[0]))
