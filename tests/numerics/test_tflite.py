"""TFLite's int8 kernel rules (hwsim.qops.tflite, hwsim.numerics.tflite) against the plain-int
references ``ref_tflite_*`` of hwsim.numerics.reference (eq. T1-T8), both rounding builds."""

from __future__ import annotations

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
