"""TFLite's int8 kernel rules (hwsim.qops.tflite, hwsim.numerics.tflite) against the plain-int
references ``ref_tflite_*`` of hwsim.numerics.reference (eq. T1-T8), both rounding builds."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.numerics import reference as ref
from hwsim.numerics import tflite as ntfl
from hwsim.qops import tflite as qtfl

I8 = st.integers(-128, 127)
SCALE = st.floats(1e-4, 2.0, allow_nan=False, allow_infinity=False).map(
    lambda s: float(np.float32(s))
)
ROUNDING = st.sampled_from(["double", "single"])


def _arr(draw, n):
    return np.array(draw(st.lists(I8, min_size=n, max_size=n)), np.int64)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data(), SCALE, SCALE, SCALE, I8, I8, I8, ROUNDING)
def test_add_equals_plain_int_reference(data, sa, sb, so, za, zb, zo, rounding):
    try:
        p = ntfl.add_params(sa, za, sb, zb, so, zo)
    except ValueError:
        return  # TFLite refuses these scales too (an output multiplier >= 1)
    qa = _arr(data.draw, 16)
    qb = _arr(data.draw, 16)
    qa[:2], qb[:2] = (-128, 127), (127, -128)  # extremes
    got = qtfl.add(qa, qb, p, -128, 127, rounding)
    want = [
        ref.ref_tflite_add(int(a), int(b), p, -128, 127, rounding)
        for a, b in zip(qa, qb, strict=True)
    ]
    assert got.tolist() == want


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.data(), SCALE, SCALE, SCALE, I8, I8, I8, ROUNDING)
def test_mul_equals_plain_int_reference(data, sa, sb, so, za, zb, zo, rounding):
    p = ntfl.mul_params(sa, za, sb, zb, so, zo)
    if p["s"] > 30 or p["s"] < -31:
        return
    qa, qb = _arr(data.draw, 16), _arr(data.draw, 16)
    qa[0], qb[0] = -128, -128
    got = qtfl.mul(qa, qb, p, -128, 127, rounding)
    want = [
        ref.ref_tflite_mul(int(a), int(b), p, -128, 127, rounding)
        for a, b in zip(qa, qb, strict=True)
    ]
    assert got.tolist() == want


def test_mul_params_multiply_in_binary32():
    """mul.cc computes ``input1_scale * input2_scale / output_scale`` in float."""
    sa, sb, so = 0.1, 0.3, 0.07
    real = float((np.float32(sa) * np.float32(sb)) / np.float32(so))
    assert (
        ntfl.mul_params(sa, 0, sb, 0, so, 0)["m"],
        ntfl.mul_params(sa, 0, sb, 0, so, 0)["s"],
    ) == ref.quantize_multiplier(real)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    st.data(),
    st.integers(1, 3),
    st.integers(1, 6),
    st.integers(1, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 1),
)
def test_average_pool_equals_plain_int_reference(data, c, h, w, kh, kw, stride, pad):
    q = np.array(data.draw(st.lists(I8, min_size=c * h * w, max_size=c * h * w)), np.int64)
    q = q.reshape(1, c, h, w)
    pads = (pad, pad, pad, pad)
    if h + 2 * pad < kh or w + 2 * pad < kw or pad >= min(kh, kw):
        return
    got = qtfl.average_pool(q, (kh, kw), (stride, stride), pads, -100, 120)
    oh, ow = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    assert got.shape == (1, c, oh, ow)
    for ci in range(c):
        for i in range(oh):
            for j in range(ow):
                vals = [
                    int(q[0, ci, y, x])
                    for y in range(i * stride - pad, i * stride - pad + kh)
                    for x in range(j * stride - pad, j * stride - pad + kw)
                    if 0 <= y < h and 0 <= x < w
                ]
                if vals:
                    assert got[0, ci, i, j] == ref.ref_tflite_average(vals, -100, 120)


def test_average_pool_rounds_half_away_from_zero_on_raw_integers():
    q = np.array([-3, 0, 3, 0], np.int64).reshape(1, 2, 1, 2)  # windows (-3, 0), (3, 0)
    got = qtfl.average_pool(q, (1, 2), (1, 1), (0, 0, 0, 0), -128, 127)
    assert got.ravel().tolist() == [-2, 2]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data(), SCALE, SCALE, I8, I8, st.integers(1, 7), st.integers(1, 7), ROUNDING)
def test_mean_equals_plain_int_reference(data, sx, sy, zx, zy, h, w, rounding):
    m, s = ntfl.mean_params(sx, sy)
    if not -31 <= s <= 30:
        return
    q = np.array(data.draw(st.lists(I8, min_size=2 * h * w, max_size=2 * h * w)), np.int64)
    q = q.reshape(1, 2, h, w)
    got = qtfl.mean(q, zx, zy, m, s, -128, 127, rounding)
    for c in range(2):
        vals = [int(v) for v in q[0, c].ravel()]
        assert got[0, c, 0, 0] == ref.ref_tflite_mean(vals, zx, zy, m, s, -128, 127, rounding)


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.data(), SCALE, SCALE, I8, I8, st.integers(1, 7), st.integers(1, 7), ROUNDING)
def test_mean_hw_equals_plain_int_reference(data, sx, sy, zx, zy, h, w, rounding):
    m, s, bias = ntfl.mean_hw_params(sx, zx, sy, zy, h * w)
    if not -31 <= s <= 30:
        return
    q = np.array(data.draw(st.lists(I8, min_size=h * w, max_size=h * w)), np.int64)
    q = q.reshape(1, 1, h, w)
    got = qtfl.mean_hw(q, m, s, bias, -128, 127, rounding)
    vals = [int(v) for v in q.ravel()]
    assert got[0, 0, 0, 0] == ref.ref_tflite_mean_hw(vals, m, s, bias, -128, 127, rounding)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.data(), st.floats(0.01, 0.2), st.integers(1, 12))
def test_softmax_equals_plain_reference(data, sx, n):
    table = ntfl.softmax_table(sx, 1.0)
    rows = np.array(data.draw(st.lists(I8, min_size=3 * n, max_size=3 * n)), np.int64)
    rows = rows.reshape(3, n)
    got = qtfl.softmax(rows, 1, table, 1 / 256, -128, -128, 127)
    for r in range(3):
        want = ref.ref_tflite_softmax(
            [int(v) for v in rows[r]], [float(t) for t in table], 1 / 256, -128, -128, 127
        )
        assert got[r].tolist() == want


def test_softmax_table_is_expf_of_binary32_products():
    table = ntfl.softmax_table(0.05, 1.0)
    scale = -np.float32(0.05) * np.float32(1.0)
    assert table[255] == np.float32(1.0)
    assert table[0] == ntfl.expf(scale * np.float32(255))
    assert abs(float(table[100]) - np.exp(float(scale) * 155)) < 1e-6


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.floats(-300, 300, allow_nan=False).map(lambda v: float(np.float32(v))), SCALE, I8)
def test_quantize_equals_plain_reference(x, s, z):
    got = int(ntfl.quantize(np.float32(x), s, z, -128, 127))
    assert got == ref.ref_tflite_quantize(x, s, z, -128, 127)


def test_quantize_ties_round_away_from_zero():
    # 0.5 / 0.25 = 2 exactly, 0.375 / 0.25 = 1.5 -> 2, -0.375 / 0.25 = -1.5 -> -2
    got = ntfl.quantize(np.array([0.375, -0.375, 0.625], np.float32), 0.25, 0, -128, 127)
    assert got.tolist() == [2, -2, 3]


def _f32(v: Fraction) -> Fraction:
    """``v`` rounded to binary32 (nearest, ties to even; subnormals; no overflow), exactly."""
    if v == 0:
        return Fraction(0)
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:
        e -= 1
    ulp = Fraction(2) ** max(e - 23, -149)
    n = a / ulp
    r = math.floor(n)
    if n - r > Fraction(1, 2) or (n - r == Fraction(1, 2) and r % 2):
        r += 1
    return (1 if v > 0 else -1) * r * ulp


def _round_half_even(v: Fraction) -> int:
    r = math.floor(v)
    return r + 1 if v - r > Fraction(1, 2) or (v - r == Fraction(1, 2) and r % 2) else r


def _round_half_away(v: Fraction) -> int:
    r = math.floor(abs(v) + Fraction(1, 2))
    return r if v >= 0 else -r


def ref_quantize_xnnpack(x: float, s: float, z: int) -> int:
    """XNNPACK's f32 -> qs8 convert on binary32 ``x``, ``s``, plainly: ``inv = f32(1 / s)``,
    ``v = f32(x * inv)``, nearest-even integer of ``min(v, 32767)``, plus ``z``, clamped."""
    inv = _f32(1 / Fraction(s))
    v = min(_f32(Fraction(x) * inv), Fraction(32767))
    return min(max(_round_half_even(v) + z, -128), 127)


def ref_quantize_reference(x: float, s: float, z: int) -> int:
    """``reference_ops::AffineQuantize``: ``round_half_away(f32(x / f32(s))) + z``, clamped."""
    return min(max(_round_half_away(_f32(Fraction(x) / Fraction(s))) + z, -128), 127)


F32 = st.floats(-300, 300, allow_nan=False, width=32)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(F32, st.integers(-600, 600).map(lambda k: k / 2)), SCALE, I8)
def test_quantize_of_each_kernel_family_equals_its_rational_reference(x, s, z):
    """Each family's QUANTIZE against its rational reference, on ties (x = k/2 with s a power
    of two) and random binary32 values."""
    x = float(np.float32(x))
    xs = np.array([x], np.float32)
    assert int(ntfl.quantize(xs, s, z, -128, 127, "xnnpack")[0]) == ref_quantize_xnnpack(x, s, z)
    assert int(ntfl.quantize(xs, s, z, -128, 127, "reference")[0]) == ref_quantize_reference(
        x, s, z
    )
    assert int(ntfl.quantize(xs, s, z, -128, 127, "optimized")[0]) == ref.ref_tflite_quantize(
        x, s, z, -128, 127
    )


def test_quantize_families_differ_where_the_binary32_product_is_a_tie():
    """The input of cnn_pad_concat that the optimized rule quantized differently from the
    default interpreter: binary32 ``x * f32(1/s)`` = 32.5 exactly (XNNPACK: 32, half to even),
    binary64 ``x / s`` = 32.50000065 (optimized: 33)."""
    x, s = np.float32(0.25486675), 0.007842053659260273
    assert ref_quantize_xnnpack(float(x), float(np.float32(s)), 0) == 32
    assert int(ntfl.quantize(x, s, 0, -128, 127, "xnnpack")) == 32
    assert int(ntfl.quantize(x, s, 0, -128, 127, "optimized")) == 33
    halves = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5], np.float32)
    assert ntfl.quantize(halves, 1.0, 0, -128, 127, "xnnpack").tolist() == [0, 2, 2, 0, -2, -2]
    assert ntfl.quantize(halves, 1.0, 0, -128, 127, "reference").tolist() == [1, 2, 3, -1, -2, -3]


def test_xnnpack_quantize_extremes():
    """Saturation at the rails and beyond int32, infinities; NaN becomes 32767 (``min_ps``)
    and so the top rail."""
    x = np.array([1e30, -1e30, np.inf, -np.inf, np.nan, 127.4, -128.6, 3e9], np.float32)
    assert ntfl.quantize(x, 1.0, 0, -128, 127, "xnnpack").tolist() == [
        127,
        -128,
        127,
        -128,
        127,
        127,
        -128,
        127,
    ]
    assert ntfl.quantize(np.array([200.0], np.float32), 1.0, -128, -128, 127, "xnnpack")[0] == 72


def test_quantize_refuses_an_unknown_kernel_family():
    with pytest.raises(ValueError, match="kernels must be one of"):
        ntfl.quantize(np.zeros(1, np.float32), 1.0, 0, -128, 127, "ruy")


def test_round_half_away_is_exact_below_one_half():
    v = np.array([0.49999999999999994, -0.49999999999999994, 2.5, -2.5, 1e300], np.float64)
    got = ntfl.round_half_away(v).tolist()
    want = [ref._round_half_away(Fraction(float(x))) for x in v]
    assert got == want


@pytest.mark.parametrize(
    "act,scale,zp,want",
    [
        ("NONE", 0.1, 3, (-128, 127)),
        ("RELU", 0.1, 3, (3, 127)),
        ("RELU6", 6 / 255, -128, (-128, 127)),
        ("RELU6", 0.1, -10, (-10, 50)),
        ("RELU_N1_TO_1", 0.01, 0, (-100, 100)),
    ],
)
def test_activation_range(act, scale, zp, want):
    assert ntfl.activation_range(act, scale, zp, -128, 127) == want


def test_add_params_refuse_what_tflite_refuses():
    with pytest.raises(ValueError, match="ADD output multiplier"):
        ntfl.add_params(1.0, 0, 1.0, 0, 1e-9, 0)


def _scale_with_quotient(f: int, v: float, exact: bool = True) -> np.float32:
    """A binary32 scale ``s`` whose binary32 quotient ``f32(f / s)`` is exactly ``v`` (or, with
    ``exact=False`` where no scale gives ``v``, the nearest candidate)."""
    s0 = np.float32(f / v)
    for d in range(-64, 65):
        s = np.float32(s0 + np.float32(d) * np.spacing(s0))
        if np.float32(f) / s == np.float32(v):
            return s
    if exact:
        raise AssertionError(f"no binary32 scale with f32({f} / s) = {v}")
    return s0


def _near_tie(k: int, f: int, step: int) -> float:
    v = np.float32(k + 0.5)
    if step:
        v = np.nextafter(v, np.float32(step * np.inf))
    return float(_scale_with_quotient(f, float(v), exact=False))


# scales whose bound quotients are ties k + 1/2 or one ulp either side of one
TIE_SCALES = st.builds(
    _near_tie, st.integers(0, 300), st.sampled_from([1, 6]), st.sampled_from([-1, 0, 1])
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(
    st.sampled_from(ntfl.ACTIVATIONS),
    st.one_of(st.floats(2.0**-14, 100.0, width=32), TIE_SCALES, st.sampled_from([6 / 255, 1.0])),
    st.one_of(I8, st.sampled_from([-128, 127, 0, -1, 1])),
    st.sampled_from([(-128, 127), (-127, 127), (0, 100)]),
)
def test_xnnpack_activation_range_equals_plain_reference(act, scale, zp, qrange):
    """XNNPACK's ``xnn_qs8_quantize`` of the activation bounds (T2x) against its rational
    reference, on random binary32 scales and on scales whose quotient ``f32(f / s)`` is a tie
    ``k + 1/2`` or one ulp from one, every zero point including the rails."""
    s = float(np.float32(scale))
    got = ntfl.xnnpack_activation_range(act, s, zp, *qrange)
    assert got == ref.ref_xnnpack_activation_range(act, s, zp, *qrange)


def test_xnnpack_activation_range_rounds_ties_to_even_after_the_zero_point():
    """Hand-derived cases. RELU6 with ``f32(6 / s) = 200.5``, zero point -128: XNNPACK
    ``lrintf(72.5) = 72``, TFLite ``-128 + roundf(200.5) = 73``; with 131.5 both give 4 (3.5 to
    even is 4). Zero point 100 and ``f32(6 / s) = 21.5 - 2^-19`` (one ulp below the tie): the
    binary32 sum 121.4999981 rounds to 121.5 (ulp 2^-17), so XNNPACK gives 122 and TFLite
    ``100 + roundf(21.4999981) = 121``. RELU's lower bound is the zero point in both; NONE and
    the unbounded RELU top are the int8 rails."""
    s = float(_scale_with_quotient(6, 200.5))
    assert ntfl.xnnpack_activation_range("RELU6", s, -128, -128, 127) == (-128, 72)
    assert ntfl.activation_range("RELU6", s, -128, -128, 127) == (-128, 73)
    s = float(_scale_with_quotient(6, 131.5))
    assert ntfl.xnnpack_activation_range("RELU6", s, -128, -128, 127) == (-128, 4)
    assert ntfl.activation_range("RELU6", s, -128, -128, 127) == (-128, 4)
    below = float(np.nextafter(np.float32(21.5), np.float32(0)))
    assert below == 21.5 - 2.0**-19
    s = float(_scale_with_quotient(6, below))
    assert ntfl.xnnpack_activation_range("RELU6", s, 100, -128, 127) == (100, 122)
    assert ntfl.activation_range("RELU6", s, 100, -128, 127) == (100, 121)
    s = float(_scale_with_quotient(1, 20.5))  # RELU_N1_TO_1: -20.5 + 1 = -19.5 -> -20
    assert ntfl.xnnpack_activation_range("RELU_N1_TO_1", s, 1, -128, 127) == (-20, 22)
    assert ntfl.activation_range("RELU_N1_TO_1", s, 1, -128, 127) == (-20, 22)
    assert ntfl.xnnpack_activation_range("RELU", 1e-3, 7, -128, 127) == (7, 127)
    assert ntfl.xnnpack_activation_range("NONE", 1e-3, 7, -128, 127) == (-128, 127)
    assert ntfl.xnnpack_activation_range("RELU6", 1e-30, 0, -128, 127) == (0, 127)
    with pytest.raises(ValueError, match="fused activation 'TANH'"):
        ntfl.xnnpack_activation_range("TANH", 0.1, 0, -128, 127)
