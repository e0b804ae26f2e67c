"""Range units (eq. 17-19): the integer reciprocal, the range register and the per-sample shift,
against exact rationals and the plain-int register references of hwsim.numerics.reference."""

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.numerics import RoundingMode, ScaleKind, reference
from hwsim.numerics.ranges import (
    RECIP_BITS,
    range_real,
    range_register,
    reciprocal,
    select_shift,
)

KINDS = [ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE, ScaleKind.ORT, ScaleKind.POW2]
# ranges with the extremes: 0, 1, powers of two and their neighbours, |INT32_MIN|
EDGE = [0, 1, 2, 3, 127, 128, 255, 256, 32767, 32768, 2**30, 2**31 - 1, 2**31]
ranges = st.one_of(st.sampled_from(EDGE), st.integers(0, 2**31))
qmaxes = st.sampled_from([1, 3, 7, 15, 63, 127, 255, 32767, 65535])


def _apply(kind: ScaleKind, real: float, a: int, mode: str = "half_away") -> int:
    """The register of ``kind`` built for ``real``, applied to ``a``: plain ints only."""
    if kind is ScaleKind.ORT:
        return reference.ort_requantize(a, reference.round_to_float32(Fraction(real)))
    if kind is ScaleKind.POW2:
        return reference.pow2_requantize(a, round(-math.log2(real)), mode)
    single = kind is ScaleKind.TFLITE_SINGLE
    m, s = reference.quantize_multiplier(real, single)
    return reference.multiply_by_quantized_multiplier(a, m, s, "single" if single else "double")


@given(a=st.one_of(st.sampled_from([1, 2, 3, 2**31 - 1, 2**31, 2**62 - 1]), st.integers(1, 2**62)))
def test_reciprocal_is_the_floor_of_the_exact_quotient(a):
    u, e = reciprocal(a)
    assert e == RECIP_BITS + a.bit_length() - 1
    assert u * a <= 2**e < (u + 1) * a  # u = floor(2^e / a), independently of //
    assert 2 ** (RECIP_BITS - 1) <= u <= 2**RECIP_BITS
    # never above 1/a, relative error below 2^-(P-1)
    assert Fraction(u, 2**e) <= Fraction(1, a)
    assert Fraction(1, a) - Fraction(u, 2**e) < Fraction(1, a) / 2 ** (RECIP_BITS - 1)


def test_reciprocal_rejects_non_positive():
    with pytest.raises(ValueError, match=">= 1"):
        reciprocal(0)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), qmax=qmaxes, a=ranges)
def test_range_register_maps_the_range_into_the_format(kind, qmax, a):
    reg = range_register(kind, qmax, np.array([a], np.int64))
    real = Fraction(float(reg.real[0]))
    if a == 0:
        assert real == 1
        return
    assert real * a <= qmax  # never past qmax ...
    assert _apply(kind, float(reg.real[0]), a) <= qmax  # ... so the range never saturates
    if kind is ScaleKind.POW2:
        assert real * 2 * a > qmax  # the largest power of two that fits
        assert real == 2 ** round(math.log2(real))
    else:  # the reciprocal's precision
        assert real * a > qmax * (1 - Fraction(1, 2 ** (RECIP_BITS - 1)))
    assert float(reg.requested[0]) == qmax / a


def test_range_real_is_exact_for_eight_bit_outputs():
    # qmax * u has at most 7 + 15 = 22 significant bits: exact in float32 and in Q0.31
    for a in (1, 3, 1000, 2**31 - 1):
        r = range_real(ScaleKind.ORT, 127, a)
        assert float(np.float32(r)) == r
        u, e = reciprocal(a)
        assert Fraction(r) == Fraction(127 * u, 2**e)


@settings(max_examples=400, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    qmax=qmaxes,
    a=ranges,
    log_real=st.floats(-24, 4),
    s_max=st.integers(0, 8),
    mode=st.sampled_from(["half_away", "half_even", "floor", "stochastic"]),
)
def test_select_shift_is_the_largest_that_fits(kind, qmax, a, log_real, s_max, mode):
    real = 2.0**log_real
    if kind is ScaleKind.POW2:
        real = 2.0 ** round(log_real)
    if kind in (ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE) and a > 2**31 - 1:
        a = 2**31 - 1  # a tflite register takes int32 input
    got = select_shift(kind, [real], np.array([a], np.int64), qmax, s_max, RoundingMode(mode))
    sel = "half_away" if mode == "stochastic" else mode
    fits = [s for s in range(s_max + 1) if _apply(kind, real * 2**s, a, sel) <= qmax]
    assert got.tolist() == [max(fits) if fits else 0]


def test_select_shift_vectorised_over_samples():
    a = np.array([0, 1, 126, 127, 128, 254, 255, 4000], np.int64)
    got = select_shift(ScaleKind.TFLITE, np.full(8, 1.0), a, 127, 4)
    # shift s multiplies by 2^s: a * 2^s <= 127
    assert got.tolist() == [4, 4, 0, 0, 0, 0, 0, 0]
    got = select_shift(ScaleKind.POW2, np.full(8, 1 / 16), a, 127, 4)
    want = [max([s for s in range(5) if _apply(ScaleKind.POW2, 2.0 ** (s - 4), int(v)) <= 127]
                or [0]) for v in a]
    # 255 / 2 = 127.5 rounds to 128 past qmax: the carry check takes one shift less
    assert got.tolist() == want == [4, 4, 4, 4, 3, 3, 2, 0]
