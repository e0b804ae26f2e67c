"""The specification: every integer contract of hwsim as plain Python-int code.

Nothing here touches NumPy integer arithmetic or floating point (the float32 rounding of the
``ort`` register is done on exact rationals). The vectorised functions in
:mod:`hwsim.numerics` and the kernels in :mod:`hwsim.datapath` must equal these functions
exactly; the test suite compares them, edge values included. Equation numbers refer to
``docs/numerics.md``.
"""

from __future__ import annotations

import math
from fractions import Fraction

INT32_MIN = -(1 << 31)
INT32_MAX = (1 << 31) - 1


# (1), (2) -- formats and overflow -------------------------------------------------------------
def format_range(bits: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def wrap(x: int, bits: int, signed: bool) -> int:
    """(1) ``((x - min) mod 2^bits) + min``."""
    lo, _ = format_range(bits, signed)
    return (x - lo) % (1 << bits) + lo


def saturate(x: int, bits: int, signed: bool) -> int:
    """(2) ``min(max(x, min), max)``."""
    lo, hi = format_range(bits, signed)
    return min(max(x, lo), hi)


# (3) -- rounding an exact quotient x / 2^s ----------------------------------------------------
def round_shift(x: int, s: int, mode: str, u: int | None = None) -> int:
    """(3) Round the rational ``v = x / 2^s`` to an integer by ``mode``.

    ``u`` is the stochastic draw, an integer in ``[0, 2^s)``; stochastic rounding returns
    ``floor(v) + 1`` when ``u < (x mod 2^s)``, so it rounds up with probability ``frac(v)``.
    """
    v = Fraction(x, 1 << s)
    fl = math.floor(v)
    frac = v - fl
    half = Fraction(1, 2)
    if mode == "floor":
        return fl
    if mode == "ceil":
        return fl + (frac > 0)
    if mode == "toward_zero":
        return fl + (frac > 0 and v < 0)
    if mode == "half_up":
        return fl + (frac >= half)
    if mode == "half_down":
        return fl + (frac > half)
    if mode == "half_away":
        return fl + (frac > half or (frac == half and v > 0))
    if mode == "half_even":
        return fl + (frac > half or (frac == half and fl % 2 == 1))
    if mode == "stochastic":
        if u is None or not 0 <= u < (1 << s):
            raise ValueError("stochastic rounding needs a draw u in [0, 2^s)")
        return fl + (u < x % (1 << s))
    raise ValueError(f"unknown rounding mode {mode!r}")


# (4)-(7) -- TFLite / gemmlowp fixed-point multiplier ------------------------------------------
def quantize_multiplier(real: float, single_rounding: bool = False) -> tuple[int, int]:
    """(4) TFLite ``QuantizeMultiplier``: ``real = q * 2^shift`` by ``frexp``, ``q`` in [0.5, 1);
    ``multiplier = round_half_away(q * 2^31)``; ``2^31`` becomes ``2^30`` with ``shift + 1``;
    ``shift < -31`` flushes to ``(0, 0)``. The single-rounding build also clamps ``shift > 30``
    to ``(2^31 - 1, 30)``."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    qf = Fraction(q) * (1 << 31)
    fixed = math.floor(abs(qf) + Fraction(1, 2)) * (1 if qf >= 0 else -1)
    if fixed == 1 << 31:
        fixed //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if single_rounding and shift > 30:
        return INT32_MAX, 30
    return fixed, shift


def saturating_rounding_doubling_high_mul(a: int, b: int) -> int:
    """(5) gemmlowp ``SaturatingRoundingDoublingHighMul``: ``trunc((a*b + nudge) / 2^31)``,
    ``nudge = 2^30`` if ``a*b >= 0`` else ``1 - 2^30``; ``a == b == INT32_MIN`` gives INT32_MAX."""
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    v = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return abs(v) // (1 << 31) * (1 if v >= 0 else -1)


def rounding_divide_by_pot(x: int, exponent: int) -> int:
    """(6) gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero."""
    return round_shift(x, exponent, "half_away")


def multiply_by_quantized_multiplier(x: int, multiplier: int, shift: int, rounding: str) -> int:
    """(7) TFLite ``MultiplyByQuantizedMultiplier`` for int32 ``x``.

    ``double``: ``RDBPOT(SRDHM(wrap32(x * 2^max(shift, 0)), m), max(-shift, 0))``.
    ``single``: ``(x * m + 2^(30 - shift)) >> (31 - shift)``, i.e. ``x*m / 2^(31-shift)`` rounded
    half up, then wrapped to int32 (TFLite only DCHECKs that it fits; it can overflow only for
    ``shift == 30`` and ``x * m`` near ``2^62``).
    """
    if rounding == "double":
        left = max(shift, 0)
        right = max(-shift, 0)
        return rounding_divide_by_pot(
            saturating_rounding_doubling_high_mul(wrap(x << left, 32, True), multiplier), right
        )
    if rounding == "single":
        return wrap(round_shift(x * multiplier, 31 - shift, "half_up"), 32, True)
    raise ValueError(f"unknown rounding {rounding!r}")


# (8) -- onnxruntime float32 requantization ----------------------------------------------------
def round_to_float32(v: Fraction) -> Fraction:
    """Round a rational to the nearest IEEE binary32 value, ties to even (normal, subnormal and
    overflow to +-inf are not needed here: callers keep |v| in [2^-126, 2^127])."""
    if v == 0:
        return Fraction(0)
    sign = 1 if v > 0 else -1
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    # find e with 2^23 <= a / 2^e' < 2^24, where e' = e - 23
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    ulp = Fraction(2) ** (e - 23)
    scaled = a / ulp
    n = math.floor(scaled)
    rem = scaled - n
    if rem > Fraction(1, 2) or (rem == Fraction(1, 2) and n % 2 == 1):
        n += 1
    return sign * n * ulp


def ort_requantize(acc: int, scale: Fraction) -> int:
    """(8) onnxruntime ``MlasRequantizeOutput`` before zero point and clamp:
    ``round_half_even(f32(f32(acc) * scale))`` with ``scale`` an exact binary32 value."""
    product = round_to_float32(round_to_float32(Fraction(acc)) * scale)
    fl = math.floor(product)
    frac = product - fl
    return fl + (frac > Fraction(1, 2) or (frac == Fraction(1, 2) and fl % 2 == 1))


def ort_combined_scale(x_scale: float, w_scale: float, y_scale: float) -> Fraction:
    """The binary32 combined scale ``f32(f32(x_scale * w_scale) / y_scale)`` of QLinearConv."""
    xs, ws, ys = (round_to_float32(Fraction(s)) for s in (x_scale, w_scale, y_scale))
    return round_to_float32(round_to_float32(xs * ws) / ys)


# (9) -- power-of-two shift register ------------------------------------------------------------
def pow2_requantize(acc: int, shift: int, mode: str, u: int | None = None) -> int:
    """(9) ``round(acc / 2^shift)`` by ``mode`` for ``shift >= 0``; ``acc * 2^-shift`` (exact)
    for ``shift < 0``."""
    if shift < 0:
        return acc << -shift
    return round_shift(acc, shift, mode, u)
