import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.numerics import (
    RoundingMode,
    ScaleKind,
    ScaleRegister,
    multiply_by_quantized_multiplier,
    ort_requantize,
    pow2_requantize,
    quantize_multiplier,
    reference,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)
from tests.strategies import ints_in

I32 = (-(2**31), 2**31 - 1)


def test_quantize_multiplier_powers_of_two():
    # TFLite quantization_util_test: every power of two maps to 2^30 with shift = log2 + 1
    for e in range(-20, 20):
        assert quantize_multiplier(2.0**e) == (1 << 30, e + 1)
        assert quantize_multiplier(-(2.0**e)) == (-(1 << 30), e + 1)
    assert quantize_multiplier(0.0) == (0, 0)
    assert quantize_multiplier(1e-40) == (0, 0)  # shift < -31 flushes to zero


def test_quantize_multiplier_rounds_half_away_and_renormalises():
    # q * 2^31 just below 2^31 rounds up to 2^31, which is halved with shift + 1
    real = (2**31 - 0.5) / 2**31
    assert quantize_multiplier(real) == (1 << 30, 1)
    m, s = quantize_multiplier(0.3)
    assert m == round(0.6 * 2**31) and s == -1


def test_single_rounding_build_clamps_large_shifts():
    assert quantize_multiplier(2.0**40, "single") == (2**31 - 1, 30)
    assert quantize_multiplier(2.0**40, "double") == (1 << 30, 41)


@given(st.floats(min_value=2.0**-40, max_value=2.0**29, allow_nan=False))
def test_quantize_multiplier_is_within_half_an_ulp(real):
    m, s = quantize_multiplier(real)
    if m:
        assert 2**30 <= m < 2**31
        assert abs(Fraction(m) * Fraction(2) ** (s - 31) - Fraction(real)) <= Fraction(2) ** (
            s - 32
        )


def test_srdhm_pins():
    assert saturating_rounding_doubling_high_mul(I32[0], I32[0]) == I32[1]
    assert saturating_rounding_doubling_high_mul(I32[1], I32[1]) == I32[1] - 1
    assert saturating_rounding_doubling_high_mul(1 << 30, 1 << 30) == 1 << 29
    # ties: a*b = 2^30 -> 2^30 + 2^30 >> 31 = 1;  a*b = -2^30 -> (-2^30 + 1 - 2^30)/2^31 -> 0
    assert saturating_rounding_doubling_high_mul(1 << 15, 1 << 15) == 1
    assert saturating_rounding_doubling_high_mul(-(1 << 15), 1 << 15) == 0
    # the negative nudge 1 - 2^30 makes ties go toward +inf: -1.5 -> -1, 1.5 -> 2
    assert saturating_rounding_doubling_high_mul(-3, 1 << 30) == -1
    assert saturating_rounding_doubling_high_mul(3, 1 << 30) == 2


@given(st.lists(st.tuples(ints_in(*I32), ints_in(*I32)), min_size=1, max_size=20))
def test_srdhm_vectorised_equals_reference(pairs):
    a = np.array([p[0] for p in pairs])
    b = np.array([p[1] for p in pairs])
    want = [reference.saturating_rounding_doubling_high_mul(*p) for p in pairs]
    assert saturating_rounding_doubling_high_mul(a, b).tolist() == want


@given(st.lists(st.tuples(ints_in(*I32), st.integers(0, 31)), min_size=1, max_size=20))
def test_rdbpot_vectorised_equals_reference(pairs):
    x = np.array([p[0] for p in pairs])
    e = np.array([p[1] for p in pairs])
    want = [reference.rounding_divide_by_pot(*p) for p in pairs]
    assert rounding_divide_by_pot(x, e).tolist() == want


def _gemmlowp_rdbpot(x: int, exponent: int) -> int:
    """gemmlowp's own mask/threshold formulation, transcribed, as a cross-check."""
    mask = (1 << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


@given(ints_in(*I32), st.integers(0, 31))
def test_rdbpot_equals_gemmlowp_mask_threshold_form(x, e):
    assert reference.rounding_divide_by_pot(x, e) == _gemmlowp_rdbpot(x, e)


def _tflite_single(x: int, m: int, shift: int) -> int:
    """TFLite single-rounding formula, transcribed: (x*m + (1 << (30-shift))) >> (31-shift)."""
    total = 31 - shift
    return (x * m + (1 << (total - 1))) >> total


@given(
    ints_in(*I32), ints_in(0, I32[1]), st.integers(-31, 30), st.sampled_from(["double", "single"])
)
def test_mbqm_vectorised_equals_reference(x, m, shift, rounding):
    want = reference.multiply_by_quantized_multiplier(x, m, shift, rounding)
    got = multiply_by_quantized_multiplier(np.array([x, x]), np.array([m, m]), shift, rounding)
    assert got.tolist() == [want, want]
    assert multiply_by_quantized_multiplier(x, m, shift, rounding) == want
    if rounding == "single":
        exact = _tflite_single(x, m, shift)
        if I32[0] <= exact <= I32[1]:
            assert want == exact


@given(ints_in(-(2**24), 2**24), st.floats(2.0**-20, 0.999))
def test_double_and_single_rounding_differ_by_at_most_one(x, real):
    md, sd = quantize_multiplier(real, "double")
    ms, ss = quantize_multiplier(real, "single")
    d = multiply_by_quantized_multiplier(x, md, sd, "double")
    s = multiply_by_quantized_multiplier(x, ms, ss, "single")
    assert abs(d - s) <= 1
    assert abs(d - x * real) <= 1


def test_double_rounding_differs_from_single_where_expected():
    m, s = quantize_multiplier(0.25)  # (2^30, -1)
    # x = 1: SRDHM gives round(0.5) = 1, then RDBPOT(1, 1) = round(0.5) = 1; single: 0.25 -> 0
    assert multiply_by_quantized_multiplier(1, m, s, "double") == 1
    assert multiply_by_quantized_multiplier(1, m, s, "single") == 0
    # x = -2: exact -0.5; double rounding ends half away from zero (-1), single half up (0)
    assert multiply_by_quantized_multiplier(-2, m, s, "double") == -1
    assert multiply_by_quantized_multiplier(-2, m, s, "single") == 0


def test_reference_float32_rounding_matches_numpy():
    rng = np.random.default_rng(0)
    for v in list(rng.standard_normal(200) * 1e6) + [2**24 + 1, 2**24 + 3, 1 / 3]:
        assert reference.round_to_float32(Fraction(float(v))) == Fraction(float(np.float32(v)))


@given(ints_in(-(2**40), 2**40), st.floats(2.0**-30, 4.0, width=32))
def test_ort_requantize_equals_reference(acc, scale):
    want = reference.ort_requantize(acc, Fraction(float(np.float32(scale))))
    assert ort_requantize(np.array([acc]), np.float32(scale)).tolist() == [want]
    assert ort_requantize(acc, np.float32(scale)) == want


def test_ort_conversion_rounds_large_accumulators_first():
    # f32(2^24 + 1) == 2^24: the +1 is lost before the multiply
    assert ort_requantize(2**24 + 1, np.float32(1.0)) == 2**24
    assert ort_requantize(5, np.float32(0.5)) == 2  # 2.5 -> 2 (half to even)
    assert ort_requantize(7, np.float32(0.5)) == 4  # 3.5 -> 4


@given(
    ints_in(-(2**62), 2**62),
    st.integers(-62, 63),
    st.sampled_from([m for m in RoundingMode if m is not RoundingMode.STOCHASTIC]),
)
def test_pow2_equals_reference(acc, shift, mode):
    want = max(-(2**62), min(2**62, reference.pow2_requantize(acc, shift, mode.value)))
    assert pow2_requantize(np.array([acc]), shift, mode).tolist() == [want]
    assert pow2_requantize(acc, shift, mode) == want


@pytest.mark.parametrize("kind", list(ScaleKind))
def test_registers_by_name_approximate_their_real_multiplier(kind):
    reals = np.array([0.013, 0.25, 0.7])
    reg = ScaleRegister.from_real(kind.value, reals)
    acc = np.array([[1000, -1000, 12345], [7, -7, 0]])
    got = reg.apply(acc, axis=1)
    ideal = acc * reg.real[None, :]
    assert np.all(np.abs(got - ideal) <= 1)
    if kind is not ScaleKind.POW2:
        assert np.allclose(reg.real, reals, rtol=1e-6)


def test_register_vectors_need_a_matching_axis():
    reg = ScaleRegister.from_real("ort", [0.1, 0.2])
    with pytest.raises(ValueError, match="2 entries but acc axis 1 has 3"):
        reg.apply(np.zeros((2, 3), np.int64), axis=1)
    with pytest.raises(ValueError, match="scale register must be one of"):
        ScaleRegister.from_real("gemmlowp", 0.5)
    with pytest.raises(ValueError, match="finite and > 0"):
        ScaleRegister.from_real("tflite", -0.5)


def test_mbqm_rejects_out_of_range_operands():
    with pytest.raises(ValueError, match="x holds 2147483648"):
        multiply_by_quantized_multiplier(2**31, 1 << 30, 0)
    with pytest.raises(ValueError, match="shift holds 31"):
        multiply_by_quantized_multiplier(1, 1 << 30, 31)
    with pytest.raises(ValueError, match="multiplier holds -1"):
        multiply_by_quantized_multiplier(1, -1, 0, "single")
    assert math.isclose(ScaleRegister.from_real("tflite", 0.5).real, 0.5)


@given(
    st.sampled_from([np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64]),
    st.data(),
    st.one_of(
        st.floats(2.0**-30, 4.0, width=32),
        st.sampled_from([0.5, 1.0, 2.0**-149, 3.0e38]),  # ties, identity, subnormal, -> inf
    ),
)
def test_ort_requantize_vectorized_kernel_over_every_dtype_and_extreme(dtype, data, scale):
    """The one-pass Numba ufunc against the exact reference, held at +-2^62 (the register
    limit), for every input dtype, including INT64_MIN/MAX and the dtype's own rails."""
    info = np.iinfo(dtype)
    vals = data.draw(
        st.lists(
            st.one_of(st.sampled_from([info.min, info.max, 0]), ints_in(info.min, info.max)),
            min_size=1,
            max_size=6,
        )
    )
    s32 = np.float32(scale)
    got = ort_requantize(np.array(vals, dtype), s32)
    want = [
        max(-(2**62), min(2**62, reference.ort_requantize(v, Fraction(float(s32))))) for v in vals
    ]
    assert got.dtype == np.int64 and got.tolist() == want


@pytest.mark.parametrize("kind", ["tflite", "tflite-single"])
def test_tflite_registers_refuse_reals_they_cannot_represent(kind):
    # issue 12 item 5: TFLite's single-rounding QuantizeMultiplier saturates shift > 30 to
    # (2^31 - 1, 30) (quantization_util.cc), about half the gain at 2^30; quantize_multiplier
    # keeps that contract, but a register is never built from such a real, for either build
    assert quantize_multiplier(2.0**30, "single") == (2**31 - 1, 30)
    for real in (2.0**30, 2.0**30 - 0.25, 2.0**40):
        with pytest.raises(ValueError, match=r"real multiplier .* 2\^30 - 2\^-2"):
            ScaleRegister.from_real(kind, [0.5, real])
    reg = ScaleRegister.from_real(kind, 2.0**30 - 0.5)  # the largest representable
    assert (int(reg.multiplier), int(reg.shift)) == (2**31 - 1, 30)


def test_left_shift_overflows_just_below_one():
    # docs/numerics.md (7): real = 1 - 2^-33 rounds to (2^30, 1), a left shift of 1, so the
    # default build's int32 x * 2 wraps for x >= 2^30 although the real multiplier is < 1
    m, s = quantize_multiplier(1 - 2.0**-33)
    assert (m, s) == (1 << 30, 1)
    assert quantize_multiplier(1 - 2.0**-32) == (1 << 30, 1)
    assert quantize_multiplier(np.nextafter(1 - 2.0**-32, 0)) == (2**31 - 1, 0)
    assert multiply_by_quantized_multiplier(2**30 - 1, m, s) == 2**30 - 1
    assert multiply_by_quantized_multiplier(2**30, m, s) == -(2**30)  # wrapped
    assert multiply_by_quantized_multiplier(-(2**30), m, s) == -(2**30)  # -2^31 still fits
    assert reference.multiply_by_quantized_multiplier(2**30, m, s, "double") == -(2**30)
    assert multiply_by_quantized_multiplier(np.array([2**30]), m, s).tolist() == [-(2**30)]
