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


# (20)-(29) -- I-BERT integer-only non-linearities ----------------------------------------------
# Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021. Source: github.com/kssteven418/
# I-BERT, branch ibert, commit 1b09c75, fairseq/quantization/utils/quant_modules.py (IntSoftmax,
# IntGELU, IntLayerNorm) and quant_utils.py (floor_ste, round_ste, batch_frexp, fixedpoint_mul).
# The registers (b_int, c_int, ...) are host-side float64 set-up from the input scale, computed
# in I-BERT's operation order (20); everything after them is integer arithmetic on Python ints.
# ``trace``, when given, collects every named intermediate (name -> list of values).

IBERT_EXP_COEF = (0.35815147, 0.96963238, 1.0)
"""``a*x^2 + b*x + c`` ~ exp on [-ln 2, 0] (IntSoftmax.coef)."""
IBERT_EXP_X0 = -0.6931
"""The range-reduction constant, -ln 2 rounded to 4 decimals in I-BERT's code (IntSoftmax.x0)."""
IBERT_EXP_N = 30
"""``exp = poly * 2^(N - q)`` with scale ``a s^2 / 2^N``; also the clamp ``x >= N x0_int``."""
IBERT_SOFTMAX_EXP_BITS = 16
"""The softmax requantizes its exps to int16 (``self.act = QuantAct(16)``)."""
IBERT_SOFTMAX_MAX_BIT = 32
"""``factor = floor(2^32 / sum)``, ``out = floor(exp * factor / 2^(32 - out_bits))``."""
IBERT_ERF_COEF = (-0.2888, -1.769, 1.0)
"""``erf(x) ~ sign(x) * (a * (min(|x|, -b) + b)^2 + c)`` (IntGELU.coeff)."""
IBERT_GELU_K = 1.4142
"""``GELU(x) = x (1 + erf(x / k)) / 2`` with k = sqrt(2) rounded to 4 decimals (IntGELU.k)."""
IBERT_ERF_N = 14
"""``erf_int = floor(y / 2^14)`` (IntGELU.n)."""
IBERT_LN_VAR_LIMIT = 1 << 32
"""The dynamic shift keeps every row's sum of squares below 2^32 (IntLayerNorm.set_shift)."""
IBERT_LN_FACTOR_BITS = 31
"""``factor = floor(2^31 / std)``; ``y * factor / 2`` has scale ``sqrt(N) / 2^30``."""


def signed_bits(v: int) -> int:
    """The width of the smallest two's-complement format holding ``v`` (0 and -1 need 1 bit)."""
    return (v if v >= 0 else ~v).bit_length() + 1


def _note(trace: dict | None, name: str, value: int) -> None:
    if trace is not None:
        trace.setdefault(name, []).append(value)


def scalar_over_tensor(c: float, s: float) -> float:
    """(20) torch's ``c / t`` for a Python float ``c`` and a tensor ``t`` holding ``s``:
    ``Tensor.__rdiv__`` is ``t.reciprocal() * c``, two roundings. I-BERT's ``b / scaling_factor``
    constants are computed this way; hwsim does the same in float64."""
    return (1.0 / s) * c


def ibert_frexp(real: float) -> tuple[int, int]:
    """(20) I-BERT ``batch_frexp(real, max_bit=31)``: ``real = mant * 2^exp`` (``frexp``, mant in
    [0.5, 1)); ``m = round_half_away(mant * 2^31)`` (``Decimal.quantize(ROUND_HALF_UP)``, so
    ``m = 2^31`` is possible and kept); ``e = 31 - exp``. ``real ~ m / 2^e``."""
    if real == 0.0:
        return 0, 31
    mant, ex = math.frexp(real)
    v = abs(Fraction(mant) * (1 << 31))
    m = math.floor(v + Fraction(1, 2))
    return (m if mant > 0 else -m), 31 - ex


def ibert_poly_registers(scale: float, coef=IBERT_EXP_COEF) -> tuple[int, int, float]:
    """(21) ``int_polynomial``'s registers: ``b' = b / a``, ``c' = c / a`` (I-BERT's ``__init__``),
    ``b_int = floor(b' / s)``, ``c_int = floor(c' / s^2)`` (20), output scale ``a * s^2``."""
    a, b, c = coef
    return (
        math.floor(scalar_over_tensor(b / a, scale)),
        math.floor(scalar_over_tensor(c / a, scale * scale)),
        a * (scale * scale),
    )


def ibert_exp_registers(scale: float) -> tuple[int, int, int, float]:
    """(22) ``int_exp``'s registers ``(x0_int, b_int, c_int, exp_scale)``:
    ``x0_int = floor(-0.6931 / s)``, the polynomial's (21), ``exp_scale = a s^2 / 2^30``."""
    b_int, c_int, poly_scale = ibert_poly_registers(scale)
    x0_int = math.floor(scalar_over_tensor(IBERT_EXP_X0, scale))
    return x0_int, b_int, c_int, poly_scale / 2**IBERT_EXP_N


def ibert_softmax_registers(scale: float) -> tuple[int, int]:
    """(23) The ``QuantAct(16)`` requantizer of the exps, ``(m, e)``, in the state its first call
    calibrates (every row holds one ``x - max = 0``, so the largest exp of any tensor is
    ``E_ref = c_int * 2^30``): ``x_max = E_ref * exp_scale``, ``s_act = x_max / (2^15 - 1)``
    (``symmetric_linear_quantization_params``), ``(m, e) = ibert_frexp(exp_scale / s_act)``
    (``fixedpoint_mul``), all float64."""
    _, _, c_int, exp_scale = ibert_exp_registers(scale)
    x_max = float(c_int << IBERT_EXP_N) * exp_scale
    s_act = max(x_max, 1e-8) / ((1 << (IBERT_SOFTMAX_EXP_BITS - 1)) - 1)
    return ibert_frexp(exp_scale / s_act)


def ibert_erf_registers(scale: float) -> tuple[int, int, float]:
    """(25) ``int_erf``'s registers for an input of scale ``s``: ``b_int = floor(b / s)``,
    ``c_int = floor((c / a) / s^2)`` (20), ``erf_scale = (s^2 * a) * 2^14`` (negative: a < 0)."""
    a, b, c = IBERT_ERF_COEF
    return (
        math.floor(scalar_over_tensor(b, scale)),
        math.floor(scalar_over_tensor(c / a, scale * scale)),
        (scale * scale * a) * 2**IBERT_ERF_N,
    )


def ibert_gelu_registers(scale: float) -> tuple[int, int, int, float, float]:
    """(26) ``IntGELU``'s registers ``(b_int, c_int, shift_int, erf_scale, out_scale)``: the
    erf's (25) at scale ``s / 1.4142``, ``shift_int = floor(1 / erf_scale)`` (negative),
    ``out_scale = s * erf_scale / 2`` (negative)."""
    b_int, c_int, erf_scale = ibert_erf_registers(scale / IBERT_GELU_K)
    shift_int = math.floor(scalar_over_tensor(1.0, erf_scale))
    return b_int, c_int, shift_int, erf_scale, scale * erf_scale / 2


def ibert_layernorm_registers(gamma, beta) -> tuple[list[int], list[float]]:
    """(28) ``IntLayerNorm``'s per-channel registers for ``N = len(gamma)`` channels:
    ``bias_int = floor((beta / gamma) / (sqrt(N) / 2^30))``, ``out_scale = sqrt(N) / 2^30 * gamma``
    (float64; I-BERT takes ``dim_sqrt`` from ``torch.sqrt`` of a float tensor)."""
    unit = math.sqrt(len(gamma)) / 2**30
    bias = [math.floor((b / g) / unit) for g, b in zip(gamma, beta, strict=True)]
    return bias, [unit * g for g in gamma]


def ref_i_poly(x: int, scale: float, coef=IBERT_EXP_COEF, trace: dict | None = None) -> int:
    """(21) I-BERT ``int_polynomial``: ``x * (x + b_int) + c_int``."""
    b_int, c_int, _ = ibert_poly_registers(scale, coef)
    u = x + b_int
    p = x * u
    _note(trace, "x_plus_b", u)
    _note(trace, "x_times_x_plus_b", p)
    _note(trace, "poly", p + c_int)
    return p + c_int


def _ref_exp_parts(x: int, scale: float, trace: dict | None) -> tuple[int, int]:
    """(22) ``(max(poly(r), 0), q)`` of ``int_exp`` for ``x <= 0``: the exp is that << (30 - q)."""
    x0_int, _, _, _ = ibert_exp_registers(scale)
    xc = max(x, IBERT_EXP_N * x0_int)
    q = xc // x0_int
    r = xc - x0_int * q
    _note(trace, "x_clamped", xc)
    _note(trace, "q", q)
    _note(trace, "r", r)
    pos = max(ref_i_poly(r, scale, IBERT_EXP_COEF, trace), 0)
    _note(trace, "exp", pos << (IBERT_EXP_N - q))
    return pos, q


def ref_i_exp(x: int, scale: float, trace: dict | None = None) -> int:
    """(22) I-BERT ``int_exp`` of an integer ``x <= 0`` (scale ``s``): with ``x0_int`` (20),
    ``x' = max(x, 30 x0_int)``, ``q = floor(x' / x0_int)``, ``r = x' - x0_int q`` (in
    ``(x0_int, 0]``), ``exp = max(poly(r) * 2^(30 - q), 0)`` at scale ``a s^2 / 2^30``."""
    if x > 0:
        raise ValueError(f"ref_i_exp takes x <= 0, got {x}")
    pos, q = _ref_exp_parts(x, scale, trace)
    return pos << (IBERT_EXP_N - q)


def ref_i_softmax(
    row: list[int], scale: float, out_bits: int = 8, trace: dict | None = None
) -> list[int]:
    """(24) I-BERT ``IntSoftmax`` of one row: ``d = x - max(x)``; ``E = i_exp(d)`` (22);
    ``e16 = clamp(round_half_even(E * m / 2^e), -2^15, 2^15 - 1)`` (23);
    ``F = floor(2^32 / sum(e16))``; ``out = floor(e16 * F / 2^(32 - out_bits))``, scale
    ``2^-out_bits``."""
    if not row:
        return []
    m, e = ibert_softmax_registers(scale)
    top = max(row)
    lim = 1 << (IBERT_SOFTMAX_EXP_BITS - 1)
    e16 = []
    for x in row:
        _note(trace, "x_minus_max", x - top)
        pos, q = _ref_exp_parts(x - top, scale, trace)
        product = (pos << (IBERT_EXP_N - q)) * m
        _note(trace, "exp_requant_product", product)
        e16.append(min(max(round_shift(product, e, "half_even"), -lim), lim - 1))
        _note(trace, "exp16", e16[-1])
    total = sum(e16)
    factor = (1 << IBERT_SOFTMAX_MAX_BIT) // total
    _note(trace, "exp16_sum", total)
    _note(trace, "factor", factor)
    out = []
    for v in e16:
        _note(trace, "exp16_times_factor", v * factor)
        out.append((v * factor) >> (IBERT_SOFTMAX_MAX_BIT - out_bits))
        _note(trace, "out", out[-1])
    return out


def ref_i_erf(x: int, scale: float, trace: dict | None = None) -> int:
    """(25) I-BERT ``int_erf`` (input scale ``s``, registers (20)):
    ``y = sign(x) * ((min(|x|, -b_int) + b_int)^2 + c_int)``, ``erf = floor(y / 2^14)``."""
    b_int, c_int, _ = ibert_erf_registers(scale)
    a = min(abs(x), -b_int)
    u = a + b_int
    p = u * u + c_int
    y = p if x > 0 else (-p if x < 0 else 0)
    _note(trace, "abs_clipped", a)
    _note(trace, "abs_plus_b", u)
    _note(trace, "square", u * u)
    _note(trace, "poly", p)
    _note(trace, "signed_poly", y)
    _note(trace, "erf", y >> IBERT_ERF_N)
    return y >> IBERT_ERF_N


def ref_i_gelu(x: int, scale: float, trace: dict | None = None) -> int:
    """(26) I-BERT ``IntGELU``: ``x * (i_erf(x; s / 1.4142) + shift_int)``, scale
    ``s * erf_scale / 2``."""
    _, _, shift_int, _, _ = ibert_gelu_registers(scale)
    t = ref_i_erf(x, scale / IBERT_GELU_K, trace) + shift_int
    _note(trace, "erf_plus_shift", t)
    _note(trace, "out", x * t)
    return x * t


def ref_isqrt_newton(n: int, trace: dict | None = None) -> int:
    """(27) I-BERT's integer square root (paper, Algorithm 4): 0 for ``n = 0``; else
    ``x_0 = 2^ceil(bits(n) / 2)``, ``x_{i+1} = floor((x_i + floor(n / x_i)) / 2)`` until
    ``x_{i+1} >= x_i``; returns ``x_i`` = ``floor(sqrt(n))``."""
    if n < 0:
        raise ValueError(f"ref_isqrt_newton takes n >= 0, got {n}")
    if n == 0:
        return 0
    x = 1 << ((n.bit_length() + 1) // 2)
    while True:
        s = x + n // x
        _note(trace, "newton_x", x)
        _note(trace, "newton_sum", s)
        if s >> 1 >= x:
            return x
        x = s >> 1


def ibert_layernorm_shift(rows: list[list[int]]) -> int:
    """(29) The dynamic shift (``IntLayerNorm.set_shift`` from a zero buffer): with
    ``V = max over rows of sum(y^2)``, ``y = x - round_half_even(mean(x))``: 0 if ``V < 2^32``,
    else the smallest ``k`` with ``V <= 2^(32 + 2k)``, then one more while some row's
    ``sum((y >> k)^2)`` still reaches 2^32 (where I-BERT's assertion fails)."""
    ys = [[x - _round_half_even_div(sum(r), len(r)) for x in r] for r in rows if r]
    v = max((sum(y * y for y in r) for r in ys), default=0)
    if v < IBERT_LN_VAR_LIMIT:
        return 0
    k = -(-((v - 1).bit_length() - 32) // 2)
    while max(sum((y >> k) ** 2 for y in r) for r in ys) >= IBERT_LN_VAR_LIMIT:
        k += 1
    return k


def _round_half_even_div(a: int, n: int) -> int:
    """``a / n`` rounded to nearest, ties to even (``torch.round`` of the exact mean)."""
    q, r = divmod(a, n)
    return q + (2 * r > n or (2 * r == n and q % 2 == 1))


def ref_i_layernorm(
    rows: list[list[int]],
    gamma: list[float],
    beta: list[float],
    shift: int | None = None,
    trace: dict | None = None,
) -> list[list[int]]:
    """(28) I-BERT ``IntLayerNorm`` of each row (N = len(gamma) integers): ``mean =
    round_half_even(sum(x) / N)``; ``y = x - mean``; ``V = sum((y >> k)^2)``;
    ``std = isqrt(V) * 2^k`` (27); ``F = floor(2^31 / max(std, 1))``; ``out = floor(y F / 2) +
    bias_int`` (registers (28)), scale ``sqrt(N) / 2^30 * gamma``. ``shift=None`` takes the
    dynamic shift (29)."""
    bias, _ = ibert_layernorm_registers(gamma, beta)
    k = ibert_layernorm_shift(rows) if shift is None else shift
    out = []
    for row in rows:
        if not row:
            out.append([])
            continue
        total = sum(row)
        mean = _round_half_even_div(total, len(row))
        _note(trace, "sum_x", total)
        _note(trace, "mean", mean)
        ys = [x - mean for x in row]
        var = 0
        for y in ys:
            _note(trace, "y", y)
            _note(trace, "y_shifted", y >> k)
            _note(trace, "y_shifted_sq", (y >> k) ** 2)
            var += (y >> k) ** 2
        std = ref_isqrt_newton(var, trace) << k
        factor = (1 << IBERT_LN_FACTOR_BITS) // max(std, 1)
        _note(trace, "var", var)
        _note(trace, "std", std)
        _note(trace, "factor", factor)
        res = []
        for y, b in zip(ys, bias, strict=True):
            _note(trace, "y_times_factor", y * factor)
            _note(trace, "y_norm", (y * factor) >> 1)
            res.append(((y * factor) >> 1) + b)
            _note(trace, "out", res[-1])
        out.append(res)
    for b in bias:
        _note(trace, "bias_int", b)
    return out


# (Q1)-(Q4) -- QONNX Quant / Trunc (hwsim.numerics.qonnx) ---------------------------------------
def ref_qonnx_round(v: Fraction, mode: str) -> int:
    """(Q4) A rational to an integer by a QONNX ``rounding_mode`` (``ROUND`` ties to even,
    ``CEIL``, ``FLOOR``, ``ROUND_TO_ZERO``, ``UP`` away from 0, ``HALF_UP`` ties away from 0,
    ``HALF_DOWN`` ties toward 0)."""
    fl = math.floor(v)
    frac = v - fl
    half = Fraction(1, 2)
    sign = 1 if v > 0 else -1 if v < 0 else 0
    if mode == "ROUND":
        return fl + (frac > half or (frac == half and fl % 2 == 1))
    if mode == "CEIL":
        return fl + (frac > 0)
    if mode == "FLOOR":
        return fl
    if mode == "ROUND_TO_ZERO":
        return sign * math.floor(abs(v))
    if mode == "UP":
        return sign * math.ceil(abs(v))
    if mode == "HALF_UP":
        return sign * math.floor(abs(v) + half)
    if mode == "HALF_DOWN":
        return sign * math.ceil(abs(v) - half)
    raise ValueError(f"unknown QONNX rounding mode {mode!r}")


def ref_qonnx_quant(
    x: float, scale: float, zero_point: float, bits: int, signed: bool, narrow: bool, mode: str
) -> int:
    """(Q1)-(Q4) QONNX ``Quant``'s integer: ``t = f32(f32(x / scale) + zero_point)`` on exact
    rationals (``x``, ``scale``, ``zero_point`` binary32 values), clamped to ``[lo, hi]``
    (signed ``[-2^(b-1) + narrow, 2^(b-1) - 1]``, unsigned ``[0, 2^b - 1 - narrow]``), rounded
    by ``mode``."""
    t = round_to_float32(Fraction(x) / Fraction(scale))
    t = round_to_float32(t + Fraction(zero_point))
    lo, hi = format_range(bits, signed)
    if narrow:
        lo, hi = (lo + 1, hi) if signed else (lo, hi - 1)
    return ref_qonnx_round(min(max(t, Fraction(lo)), Fraction(hi)), mode)


def ref_qonnx_trunc(q: int, shift: int, bits: int, signed: bool, narrow: bool, mode: str) -> int:
    """QONNX ``Trunc`` of an integer ``q`` (zero point 0): ``round_mode(clamp(q / 2^shift))``
    into the ``bits``-bit range (``narrow`` as in :func:`ref_qonnx_quant`)."""
    lo, hi = format_range(bits, signed)
    if narrow:
        lo, hi = (lo + 1, hi) if signed else (lo, hi - 1)
    v = Fraction(q, 1 << shift) if shift >= 0 else Fraction(q * (1 << -shift))
    return ref_qonnx_round(min(max(v, Fraction(lo)), Fraction(hi)), mode)


# (T1)-(T8) -- TFLite / LiteRT int8 kernels (hwsim.numerics.tflite, hwsim.qops.tflite) -----------
def _round_half_away(v: Fraction) -> int:
    """``std::round`` of an exact value: nearest integer, ties away from zero."""
    sign = 1 if v >= 0 else -1
    return sign * math.floor(abs(v) + Fraction(1, 2))


def _trunc_div(a: int, n: int) -> int:
    """C++ integer division: the quotient truncated toward zero."""
    q = abs(a) // abs(n)
    return q if (a >= 0) == (n > 0) else -q


def ref_tflite_quantize(x: float, scale: float, zero_point: int, qmin: int, qmax: int) -> int:
    """(T1) ``optimized_ops::AffineQuantize<int8_t>`` (x86): ``clamp(round_half_away(double(x)
    / double(scale)) + zero_point)``, the quotient rounded once to binary64 (``x``, ``scale``
    binary32 values)."""
    v = Fraction(float(Fraction(x) / Fraction(scale)))  # IEEE double division, correctly rounded
    return min(max(_round_half_away(v) + zero_point, qmin), qmax)


def ref_tflite_activation_range(
    activation: str, scale: float, zero_point: int, qmin: int, qmax: int
) -> tuple[int, int]:
    """(T2) ``CalculateActivationRangeQuantized``: a bound ``f`` (0 for RELU, 0 and 6 for RELU6,
    -1 and 1 for RELU_N1_TO_1) becomes ``zero_point + roundf(f32(f / scale))`` (binary32 division,
    ``std::round``), intersected with ``[qmin, qmax]``; NONE: ``(qmin, qmax)``."""
    bounds = {"NONE": (None, None), "RELU": (0, None), "RELU6": (0, 6), "RELU_N1_TO_1": (-1, 1)}
    lo_f, hi_f = bounds[activation]

    def q(f: int) -> int:
        return zero_point + _round_half_away(round_to_float32(Fraction(f) / Fraction(scale)))

    lo = qmin if lo_f is None else max(qmin, q(lo_f))
    hi = qmax if hi_f is None else min(qmax, q(hi_f))
    return lo, hi


def ref_xnnpack_activation_range(
    activation: str, scale: float, zero_point: int, qmin: int, qmax: int
) -> tuple[int, int]:
    """(T2x) The XNNPACK delegate's fused-activation clamp: a float bound ``f`` (0 for RELU, 0 and
    6 for RELU6, -1 and 1 for RELU_N1_TO_1; no bound: qmin / qmax) becomes XNNPACK's
    ``xnn_qs8_quantize``: ``t = f32(f32(f / scale) + zero_point)`` (exact rationals, each step
    rounded to binary32), clamped to ``[-128, 127]``, rounded half to even (``lrintf``);
    intersected with ``[qmin, qmax]``. ``scale``: a binary32 value with ``6 / scale`` and
    ``1 / scale`` normal binary32 numbers or above the int8 range."""
    bounds = {"NONE": (None, None), "RELU": (0, None), "RELU6": (0, 6), "RELU_N1_TO_1": (-1, 1)}
    lo_f, hi_f = bounds[activation]

    def q(f: int) -> int:
        t = round_to_float32(round_to_float32(Fraction(f) / Fraction(scale)) + zero_point)
        t = min(max(t, Fraction(-128)), Fraction(127))
        n = math.floor(t)
        return n + (t - n > Fraction(1, 2) or (t - n == Fraction(1, 2) and n % 2 == 1))

    lo = qmin if lo_f is None else max(qmin, q(lo_f))
    hi = qmax if hi_f is None else min(qmax, q(hi_f))
    return lo, hi


def ref_tflite_add(
    qa: int, qb: int, p: dict, act_min: int, act_max: int, rounding: str = "double"
) -> int:
    """(T3) ``reference_integer_ops::AddElementwise`` (int8): ``a' = MBQM((qa - za) * 2^L, ma,
    sa)``, ``b'`` likewise, ``y = MBQM(a' + b', mo, so) + zo`` clamped to ``[act_min, act_max]``.
    ``p``: :func:`hwsim.numerics.tflite.add_params`'s fields (``za, zb, zo, left_shift, ma, sa,
    mb, sb, mo, so``); MBQM as :func:`multiply_by_quantized_multiplier` (the left shift wraps to
    int32 as the kernel's ``x * (1 << L)``)."""
    a = multiply_by_quantized_multiplier(
        wrap((qa - p["za"]) << p["left_shift"], 32, True), p["ma"], p["sa"], rounding
    )
    b = multiply_by_quantized_multiplier(
        wrap((qb - p["zb"]) << p["left_shift"], 32, True), p["mb"], p["sb"], rounding
    )
    y = multiply_by_quantized_multiplier(wrap(a + b, 32, True), p["mo"], p["so"], rounding)
    return min(max(y + p["zo"], act_min), act_max)


def ref_tflite_mul(
    qa: int, qb: int, p: dict, act_min: int, act_max: int, rounding: str = "double"
) -> int:
    """(T4) ``reference_integer_ops::MulElementwise`` (int8): ``y = MBQM((qa - za)(qb - zb), m,
    s) + zo`` clamped to ``[act_min, act_max]``; ``p``: :func:`hwsim.numerics.tflite.mul_params`
    (``za, zb, zo, m, s``)."""
    y = multiply_by_quantized_multiplier((qa - p["za"]) * (qb - p["zb"]), p["m"], p["s"], rounding)
    return min(max(y + p["zo"], act_min), act_max)


def ref_tflite_average(values: list[int], act_min: int, act_max: int) -> int:
    """(T5) ``reference_integer_ops::AveragePool`` (int8), one window: the raw integers of the
    window's valid (unpadded) positions summed, ``acc > 0 ? (acc + n/2) / n : (acc - n/2) / n``
    (C++ division, truncating), clamped to ``[act_min, act_max]``. The zero point is not
    subtracted: TFLite requires the input's and output's quantization to be equal."""
    acc, n = sum(values), len(values)
    avg = _trunc_div(acc + n // 2, n) if acc > 0 else _trunc_div(acc - n // 2, n)
    return min(max(avg, act_min), act_max)


def ref_tflite_mean(
    values: list[int], zx: int, zy: int, m: int, s: int, qmin: int, qmax: int, rounding="double"
) -> int:
    """(T6) ``reference_ops::QuantizedMeanOrSum`` (int8, mean), one output: with ``(m, s) =
    QuantizeMultiplier(double(sx) / double(sy))`` and ``n`` values, ``k = min(floor(log2 n), 32,
    31 + s)``, ``m' = (m * 2^k) // n``, ``y = MBQM(sum(q) - zx * n, m', s - k) + zy`` clamped to
    ``[qmin, qmax]``."""
    n = len(values)
    k = min(n.bit_length() - 1, 32, 31 + s)
    m2 = (m << k) // n
    y = multiply_by_quantized_multiplier(sum(values) - zx * n, m2, s - k, rounding)
    return min(max(y + zy, qmin), qmax)


def ref_tflite_mean_hw(
    values: list[int], m: int, s: int, bias: int, qmin: int, qmax: int, rounding="double"
) -> int:
    """(T7) ``optimized_integer_ops::Mean`` (int8, 4-D input, mean over height and width with
    ``keep_dims``), one output: ``y = MBQM(sum(q), m, s) + bias`` clamped to ``[qmin, qmax]``,
    ``(m, s, bias)`` from :func:`hwsim.numerics.tflite.mean_hw_params` (the raw sum: the input
    zero point is in ``bias``)."""
    y = multiply_by_quantized_multiplier(sum(values), m, s, rounding)
    return min(max(y + bias, qmin), qmax)


def ref_tflite_softmax(
    row: list[int], table: list[float], out_scale: float, zy: int, qmin: int, qmax: int
) -> list[int]:
    """(T8) ``optimized_ops::Softmax<int8_t, int8_t>`` (x86 builds, the float lookup table), one
    row: ``t_j = table[255 - max(row) + q_j]``; ``sum`` accumulated in binary32 in row order;
    ``inv = f32(1 / f32(sum * out_scale))``; ``y_j = round_half_away(f32(t_j * inv)) + zy``
    clamped. ``table``: the 256 binary32 values of :func:`hwsim.numerics.tflite.softmax_table`.
    Every binary32 operation is done on exact rationals."""
    mx = max(row)
    t = [Fraction(table[255 - mx + q]) for q in row]
    total = Fraction(0)
    for v in t:
        total = round_to_float32(total + v)
    inv = round_to_float32(1 / round_to_float32(total * Fraction(out_scale)))
    return [min(max(_round_half_away(round_to_float32(v * inv)) + zy, qmin), qmax) for v in t]
