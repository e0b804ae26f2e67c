"""I-BERT's integer-only non-linearities, vectorised (eq. 20-29 of ``docs/numerics.md``).

Kim et al., "I-BERT: Integer-only BERT Quantization", ICML 2021. The arithmetic follows the
authors' code, github.com/kssteven418/I-BERT (branch ``ibert``, commit 1b09c75),
``fairseq/quantization/utils/quant_modules.py`` (``IntSoftmax``, ``IntGELU``, ``IntLayerNorm``)
and ``quant_utils.py`` (``floor_ste``, ``round_ste``, ``batch_frexp``, ``fixedpoint_mul``).
I-BERT holds its integers in float tensors; each ``floor_ste(a / 2^k)`` there is an arithmetic
right shift here, ``floor_ste(a / b)`` a floor division, ``round_ste`` a rounding division
with ties to even (``torch.round``). The registers I-BERT derives from the input scale in
float (``b_int = floor(b / scaling_factor)``, ...) are host-side set-up, computed by the
scalar functions of :mod:`hwsim.numerics.reference` in float64 and in I-BERT's operation order.

Every function takes an integer array and the input's real scale and returns
``(integers, output scale, IntStats)``; the plain-int specification is the ``ref_i_*`` family
of :mod:`hwsim.numerics.reference`, which these equal exactly. Arithmetic is int64; an input
whose intermediates could leave int64 is an :class:`IBertError`, never a silent wrap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hwsim.errors import HwsimError
from hwsim.numerics import reference as ref
from hwsim.numerics.formats import check_integer_array
from hwsim.numerics.rounding import round_shift

INT64_LIMIT = 1 << 63


class IBertError(HwsimError):
    """An argument an I-BERT integer kernel cannot take; the message names it."""


@dataclass(frozen=True)
class IntStats:
    """What an integer kernel needed, for the cost model.

    ``widths`` maps each named intermediate of the contract to the signed (two's-complement)
    width its values actually reached in this call (1 bit for 0 and -1; absent when the input
    was empty). Op counts follow the contract formulas: each ``+``/``-`` is an add, ``*`` a
    multiply, ``//`` a divide, ``<<``/``>>`` a shift, each ``min``/``max``/sign test a compare;
    ``|x|`` is a compare and an add; a rounding shift is a shift and an add; the leading-one
    detection of the square root's seed is a compare; a sum of ``L`` terms is ``L - 1`` adds.
    ``registers`` holds the host-side constants the call used.
    """

    widths: dict[str, int] = field(default_factory=dict)
    multiplies: int = 0
    shifts: int = 0
    divides: int = 0
    compares: int = 0
    adds: int = 0
    registers: dict[str, int | float] = field(default_factory=dict)

    @property
    def widest_bits(self) -> int:
        """The widest intermediate, in signed bits (0 for an empty input)."""
        return max(self.widths.values(), default=0)


class _Tally:
    """Builds an :class:`IntStats` while a kernel runs."""

    OPS = ("multiplies", "shifts", "divides", "compares", "adds")

    def __init__(self, **registers) -> None:
        self.widths: dict[str, int] = {}
        self.ops = dict.fromkeys(self.OPS, 0)
        self.registers = dict(registers)

    def width(self, name: str, values: np.ndarray) -> None:
        if values.size:
            w = max(ref.signed_bits(int(values.min())), ref.signed_bits(int(values.max())))
            self.widths[name] = max(w, self.widths.get(name, 0))

    def count(self, n: int, **ops: int) -> None:
        for kind, k in ops.items():
            self.ops[kind] += k * int(n)

    def stats(self) -> IntStats:
        return IntStats(dict(self.widths), registers=self.registers, **self.ops)


# --- argument checks ------------------------------------------------------------------------------
def _scale(scale, name: str = "scale") -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise IBertError(f"{name} must be a real number (the input's scale), got {scale!r}")
    s = float(scale)
    if not math.isfinite(s) or s <= 0:
        raise IBertError(f"{name} must be a finite real > 0, got {s}")
    return s


def _ints(q, name: str = "q") -> np.ndarray:
    try:
        arr = check_integer_array(q, name)
    except ValueError as exc:
        raise IBertError(str(exc)) from None
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= INT64_LIMIT:
        raise IBertError(f"{name} holds {int(arr.max())}, beyond int64")
    return arr.astype(np.int64)


def _fits(bound: int, what: str) -> None:
    """Refuse an input whose intermediate ``what`` could reach ``|bound| >= 2^63``."""
    if bound >= INT64_LIMIT:
        raise IBertError(f"{what} would need {bound.bit_length() + 1} bits, beyond int64")


def _absmax(a) -> int:
    """The largest magnitude of an int64 array or integer register (scalar or per row), as
    a Python int (bounds are computed in Python ints: they must not wrap)."""
    a = np.asarray(a)
    return max(abs(int(a.min())), abs(int(a.max()))) if a.size else 0


def _bit_length(a: np.ndarray) -> np.ndarray:
    """``int.bit_length`` of each element of a non-negative int64 array (a leading-one detector)."""
    n = np.zeros(a.shape, np.int64)
    v = a.copy()
    for s in (32, 16, 8, 4, 2, 1):
        big = v >= (1 << s)
        v = np.where(big, v >> s, v)
        n += big * s
    return n + (v > 0)


def _axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise IBertError(f"axis must be an integer, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise IBertError(f"axis {axis} is out of range for an array of {ndim} dimension(s)")
    return int(axis) % ndim


# --- (21) polynomial, (22) exp --------------------------------------------------------------------
def _poly(x: np.ndarray, b_int: int, c_int: int, t: _Tally) -> np.ndarray:
    _fits(_absmax(x) * (_absmax(x) + _absmax(b_int)) + _absmax(c_int), "x * (x + b_int) + c_int")
    u = x + b_int
    p = x * u
    z = p + c_int
    t.count(x.size, adds=2, multiplies=1)
    t.width("x_plus_b", u)
    t.width("x_times_x_plus_b", p)
    t.width("poly", z)
    return z


def i_poly(q, scale, coef=ref.IBERT_EXP_COEF) -> tuple[np.ndarray, float, IntStats]:
    """(21) I-BERT ``int_polynomial``: ``z = q * (q + b_int) + c_int`` approximates
    ``a x^2 + b x + c`` at ``x = q * scale`` with output scale ``a * scale^2``.

    Registers (20): ``b_int = floor((b / a) / s)``, ``c_int = floor((c / a) / s^2)``. Per
    element: 2 adds, 1 multiply. Raises :class:`IBertError` for a bad scale or coefficient,
    a non-integer ``q``, or values whose product would leave int64.
    """
    s = _scale(scale)
    try:
        a, b, c = (float(v) for v in coef)
    except (TypeError, ValueError):
        raise IBertError(f"coef must be three reals (a, b, c), got {coef!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and math.isfinite(c)) or a == 0:
        raise IBertError(f"coef must be three finite reals with a != 0, got {coef!r}")
    b_int, c_int, out_scale = ref.ibert_poly_registers(s, (a, b, c))
    x = _ints(q)
    t = _Tally(b_int=b_int, c_int=c_int)
    return _poly(x, b_int, c_int, t), out_scale, t.stats()


def _exp_registers(s: float) -> tuple[int, int, int, float]:
    x0_int, b_int, c_int, exp_scale = ref.ibert_exp_registers(s)
    if c_int >= 1 << 32:
        low = math.sqrt(ref.IBERT_EXP_COEF[2] / ref.IBERT_EXP_COEF[0] / 2**32)
        raise IBertError(
            f"scale {s} is too small for i_exp: c_int = {c_int} needs more than 32 bits, so the "
            f"exp (c_int * 2^30) would leave int64; scale must be >= {low:.3g}"
        )
    return x0_int, b_int, c_int, exp_scale


def _exp_parts(x: np.ndarray, x0_int: int, b_int: int, c_int: int, t: _Tally):
    """(22) ``(max(poly(r), 0), q, exp)`` for ``x <= 0``."""
    n = ref.IBERT_EXP_N
    xc = np.maximum(x, n * x0_int)
    q = xc // x0_int
    r = xc - x0_int * q
    t.width("x_clamped", xc)
    t.width("q", q)
    t.width("r", r)
    pos = np.maximum(_poly(r, b_int, c_int, t), 0)
    e = pos << (n - q)
    t.width("exp", e)
    t.count(x.size, compares=2, divides=1, multiplies=1, adds=2, shifts=1)
    return pos, q, e


def i_exp(q, scale) -> tuple[np.ndarray, float, IntStats]:
    """(22) I-BERT ``int_exp`` of integers ``q <= 0`` (real ``x = q * scale``).

    With ``x0_int = floor(-0.6931 / s)``: ``q' = max(q, 30 x0_int)``, ``k = floor(q' / x0_int)``
    (0..30), ``r = q' - x0_int k`` in ``(x0_int, 0]``, ``exp = max(z(r), 0) * 2^(30 - k)`` with
    ``z`` the polynomial (21) of coefficients ``(0.35815147, 0.96963238, 1)``; output scale
    ``0.35815147 s^2 / 2^30``. ``exp <= c_int * 2^30``, so the output needs
    ``bits(c_int) + 31`` signed bits; ``c_int ~ 2.79 / s^2`` must fit 32 bits (``s >= 2.55e-5``).

    Per element: 2 compares, 1 divide, 2 multiplies, 4 adds, 1 shift. Accuracy (derived in
    ``docs/numerics.md`` eq. 22, tested): ``|exp * out_scale - e^x| <= 2^-k (delta_P(s) +
    0.3582 s (0.6931 + s) + max(|1 - e^(-k mu)|, mu in {-4.72e-5, s - 4.72e-5}))`` for the
    element's ``k``, with ``delta_P(s)`` the polynomial's error on ``[-0.6931 - s, 0]``
    (1.913e-3 at s = 0); over all ``x``: 1.94e-3 at s = 1e-4, 2.16e-3 at 1e-3, 7.2e-3 at 1e-2,
    6.4e-2 at 0.1. Raises :class:`IBertError` for ``q > 0``, a bad scale or a non-integer ``q``.
    """
    s = _scale(scale)
    x = _ints(q)
    if x.size and int(x.max()) > 0:
        raise IBertError(f"i_exp takes q <= 0 (I-BERT applies it to x - max(x)), got {x.max()}")
    x0_int, b_int, c_int, exp_scale = _exp_registers(s)
    t = _Tally(x0_int=x0_int, b_int=b_int, c_int=c_int)
    _, _, e = _exp_parts(x, x0_int, b_int, c_int, t)
    return e, exp_scale, t.stats()


# --- (23), (24) softmax ---------------------------------------------------------------------------
def i_softmax(q, scale, axis: int = -1, out_bits: int = 8) -> tuple[np.ndarray, float, IntStats]:
    """(24) I-BERT ``IntSoftmax`` along ``axis``; output unsigned integers in
    ``[0, 2^out_bits - 1]`` at scale ``2^-out_bits``.

    Per row: ``d = q - max(q)``; ``E = i_exp(d)`` (22); the exps are requantized to int16 by
    I-BERT's ``QuantAct(16)`` (23): ``e16 = min(round_half_even(E * m / 2^e), 2^15 - 1)``, which
    maps the row maximum's exp ``c_int * 2^30`` to 32767; ``F = floor(2^32 / sum(e16))``;
    ``out = floor(e16 * F / 2^(32 - out_bits))``. hwsim computes ``E * m / 2^e`` as
    ``max(z, 0) * m / 2^(e - 30 + k)``, so its int64 product has ``bits(c_int) + 31`` bits
    (``stats.widths["exp_requant_product"]`` is the width of I-BERT's ``E * m``).

    Widths: ``e16 <= 32767``; a row of ``L`` needs an unsigned sum of ``bits(32767 L)`` bits
    (a signed int32 accumulator holds every ``L <= 65538``); ``F <= 131076`` (18 bits);
    ``e16 * F < 2^32`` (unsigned 32 bits). ``q`` may be any integers whose row spread
    ``max - min`` fits int64; ``out_bits`` in [1, 32]; ``scale`` in ``[2.55e-5, 1.67]``
    (``c_int`` of 1..32 bits). Ops: per row ``L - 1`` compares (max), ``L - 1`` adds (sum),
    1 divide; per element those of (22) plus 1 add (``d``), 2 multiplies, 2 shifts, 1 add
    (rounding), 1 compare (clamp). Accuracy (derived in ``docs/numerics.md`` eq. 24, tested):
    ``|out / 2^out_bits - p_i / sum(p)| <= 2^-out_bits + 2^-17 + (eps_i + sigma_i sum_j eps_j)
    / max(1, sum(p) - sum(eps))``, ``p = e^(x - max x)``, ``eps_j`` the exp's bound (22) of
    element ``j`` plus ``0.3582 s^2`` and the int16 rounding ``1/65534``: long rows of small
    probabilities pay ``L / 65534`` (one maximum over 4095 equal values: up to 0.059).
    """
    s = _scale(scale)
    x = _ints(q)
    if isinstance(out_bits, bool) or not isinstance(out_bits, (int, np.integer)):
        raise IBertError(f"out_bits must be an integer number of bits, got {out_bits!r}")
    if not 1 <= out_bits <= ref.IBERT_SOFTMAX_MAX_BIT:
        raise IBertError(f"out_bits must be in [1, 32], got {out_bits}")
    if x.ndim == 0:
        raise IBertError("i_softmax needs an array of at least one dimension, got a scalar")
    ax = _axis(axis, x.ndim)
    x0_int, b_int, c_int, _ = _exp_registers(s)
    if c_int < 1:
        raise IBertError(
            f"scale {s} is too large for i_softmax: c_int = floor(2.79 / s^2) = 0 makes every "
            "exp 0; scale must be <= 1.67"
        )
    m, e = ref.ibert_softmax_registers(s)
    t = _Tally(x0_int=x0_int, b_int=b_int, c_int=c_int, m=m, e=e)
    x = np.moveaxis(x, ax, -1)
    rows, length = x.size // max(x.shape[-1], 1), x.shape[-1]
    if x.size == 0:
        return np.moveaxis(np.zeros(x.shape, np.int64), -1, ax), 2.0**-out_bits, t.stats()
    _fits(int(x.max()) - int(x.min()), "q - max(q)")
    d = x - x.max(axis=-1, keepdims=True)
    t.width("x_minus_max", d)
    pos, k, _ = _exp_parts(d, x0_int, b_int, c_int, t)
    product = pos * m  # < 2^32 * 2^31: c_int < 2^32, m <= 2^31
    bits = np.where(product > 0, _bit_length(product) + (ref.IBERT_EXP_N - k), 0)
    t.widths["exp_requant_product"] = int(bits.max()) + 1
    sh = e - ref.IBERT_EXP_N + k  # >= 15: m / 2^e ~ 32767 / (c_int 2^30)
    lim = (1 << (ref.IBERT_SOFTMAX_EXP_BITS - 1)) - 1
    rounded = round_shift(product, np.minimum(sh, 63), "half_even")
    e16 = np.minimum(np.where(sh > 63, 0, rounded), lim)  # product < 2^63 <= 2^(sh-1): 0
    total = e16.sum(axis=-1, keepdims=True)
    factor = (1 << ref.IBERT_SOFTMAX_MAX_BIT) // total
    scaled = e16 * factor
    out = scaled >> (ref.IBERT_SOFTMAX_MAX_BIT - out_bits)
    for name, v in (
        ("exp16", e16),
        ("exp16_sum", total),
        ("factor", factor),
        ("exp16_times_factor", scaled),
        ("out", out),
    ):
        t.width(name, v)
    t.count(rows, compares=length - 1, adds=length - 1, divides=1)
    t.count(x.size, adds=2, multiplies=2, shifts=2, compares=1)
    return np.moveaxis(out, -1, ax), 2.0**-out_bits, t.stats()


# --- (25) erf, (26) GELU --------------------------------------------------------------------------
def _erf(x: np.ndarray, b_int: int, c_int: int, t: _Tally) -> np.ndarray:
    _fits(_absmax(b_int) ** 2 + _absmax(c_int), "(min(|q|, -b_int) + b_int)^2 + c_int")
    a = np.abs(np.clip(x, b_int, -b_int))  # = min(|x|, -b_int); safe at INT64_MIN
    u = a + b_int
    sq = u * u
    p = sq + c_int
    y = np.where(x > 0, p, np.where(x < 0, -p, 0))
    out = y >> ref.IBERT_ERF_N
    for name, v in (
        ("abs_clipped", a),
        ("abs_plus_b", u),
        ("square", sq),
        ("poly", p),
        ("signed_poly", y),
        ("erf", out),
    ):
        t.width(name, v)
    t.count(x.size, compares=4, adds=4, multiplies=1, shifts=1)
    return out


def i_erf(q, scale) -> tuple[np.ndarray, float, IntStats]:
    """(25) I-BERT ``int_erf``: ``y = sign(q) * ((min(|q|, -b_int) + b_int)^2 + c_int)``,
    ``erf = floor(y / 2^14)`` (an arithmetic shift) at scale ``-0.2888 s^2 2^14``.

    Registers (20): ``b_int = floor(-1.769 / s)``, ``c_int = floor((1 / -0.2888) / s^2)``.
    The output scale is **negative** (the coefficient ``a = -0.2888``): the integers have the
    opposite sign of ``erf(q s)``. Per element: 4 compares (clip, sign), 4 adds (``|.|``,
    ``+ b_int``, ``+ c_int``, negation), 1 multiply, 1 shift. Any int64 ``q``.
    """
    s = _scale(scale)
    x = _ints(q)
    b_int, c_int, erf_scale = ref.ibert_erf_registers(s)
    t = _Tally(b_int=b_int, c_int=c_int)
    return _erf(x, b_int, c_int, t), erf_scale, t.stats()


def i_gelu(q, scale) -> tuple[np.ndarray, float, IntStats]:
    """(26) I-BERT ``IntGELU``: ``out = q * (i_erf(q; s / 1.4142) + shift_int)`` with
    ``shift_int = floor(1 / erf_scale)``, at scale ``s * erf_scale / 2``.

    Both ``shift_int`` and the output scale are **negative**, as in I-BERT: ``out * out_scale``
    is GELU(q s). I-BERT feeds the int32 accumulator of ``fc1`` (scale ``s_x s_w``, 1e-5..1e-3);
    the erf has resolution ``|erf_scale| = 2366 s^2``, so scales above ~2e-3 lose the curve.
    Widths: ``|y| <= 6.93 / s^2`` (38 signed bits at ``s = 1e-5``, 31 at 1e-4); ``|erf +
    shift_int| < 2 / |erf_scale|``; ``out`` needs ``bits(q) + bits(erf + shift_int)``, 56 bits
    for 32-bit ``q`` at ``s = 1e-5``, 49 at 1e-4. Per element: (25) plus 1 add,
    1 multiply. Accuracy (derived in ``docs/numerics.md`` eq. 26, tested): ``|out * out_scale -
    GELU(x)| <= |x| / 2 * (eps_L(x) + 0.7225 s + 4733 s^2)`` with ``eps_L(x) = |L(|x| / 1.4142)
    - erf(|x| / sqrt 2)|`` the error of I-BERT's erf polynomial ``L`` (0.0963 as x -> 0+, where
    ``L`` jumps; the absolute ``|x| eps_L / 2`` peaks at 0.0182 near |x| = 2.35). Raises
    :class:`IBertError` when ``out`` could leave int64.
    """
    s = _scale(scale)
    x = _ints(q)
    b_int, c_int, shift_int, erf_scale, out_scale = ref.ibert_gelu_registers(s)
    t = _Tally(b_int=b_int, c_int=c_int, shift_int=shift_int)
    erf = _erf(x, b_int, c_int, t)
    _fits(_absmax(x) * (_absmax(erf) + _absmax(shift_int)), "q * (erf + shift_int)")
    total = erf + shift_int
    out = x * total
    t.width("erf_plus_shift", total)
    t.width("out", out)
    t.count(x.size, adds=1, multiplies=1)
    return out, out_scale, t.stats()


# --- (27) integer square root ---------------------------------------------------------------------
def _isqrt(n: np.ndarray, t: _Tally) -> np.ndarray:
    flat = n.ravel()
    seed = np.left_shift(1, (_bit_length(flat) + 1) >> 1)
    x = np.where(flat > 0, seed, 0)
    t.count(n.size, compares=1, adds=1, shifts=2)
    active = np.flatnonzero(flat > 0)
    xs, ns = x[active], flat[active]
    while active.size:
        s = xs + ns // xs
        t.width("newton_x", xs)
        t.width("newton_sum", s)
        t.count(active.size, divides=1, adds=1, shifts=1, compares=1)
        y = s >> 1
        done = y >= xs
        x[active[done]] = xs[done]
        active, xs, ns = active[~done], y[~done], ns[~done]
    return x.reshape(n.shape)


def i_sqrt(n) -> tuple[np.ndarray, IntStats]:
    """(27) I-BERT's integer square root (paper, Algorithm 4) of integers ``0 <= n < 2^63``:
    ``x_0 = 2^ceil(bits(n) / 2)``, ``x_{i+1} = floor((x_i + floor(n / x_i)) / 2)`` until
    ``x_{i+1} >= x_i``; 0 for ``n = 0``. Returns ``floor(sqrt(n))`` exactly, = ``math.isqrt``.

    Proof: for every integer ``x >= 1``, ``floor((x + floor(n/x)) / 2) = floor((x + n/x) / 2)
    >= floor(sqrt(n))`` (AM-GM), so no iterate falls below ``r = floor(sqrt(n))``; while
    ``x > r``, ``x > sqrt(n) > n/x`` so the next iterate is below ``x``; the seed is above
    ``sqrt(n)``. Hence the iterates fall strictly to ``r``, where ``x_{i+1} >= x_i`` stops.
    Steps (eq. 27): at most 5 for ``n < 2^16``, 6 for ``n < 2^32`` (a LayerNorm variance),
    7 for ``n < 2^63``; ``x_i + floor(n / x_i) < 2^33``. Ops: 1 compare (leading one), 1 add, 2
    shifts per element, then per step 1 divide, 1 add, 1 shift, 1 compare.
    """
    x = _ints(n, "n")
    if x.size and int(x.min()) < 0:
        raise IBertError(f"i_sqrt takes n >= 0, got {x.min()}")
    t = _Tally()
    return _isqrt(x, t), t.stats()


# --- (28), (29) LayerNorm -------------------------------------------------------------------------
def _channels(v, n: int, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.dtype.kind not in "iuf" or arr.shape != (n,):
        raise IBertError(f"{name} must be {n} real numbers (one per channel), got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise IBertError(f"{name} must be finite")
    return arr


def _shifted_var(y: np.ndarray, k: int, t: _Tally | None) -> np.ndarray:
    ys = y >> k
    _fits(y.shape[-1] * _absmax(ys) ** 2, "sum((y >> shift)^2)")
    sq = ys * ys
    if t is not None:
        t.width("y_shifted", ys)
        t.width("y_shifted_sq", sq)
    return sq.sum(axis=-1, keepdims=True)


def _dynamic_shift(y: np.ndarray) -> int:
    """(29) The smallest I-BERT shift that keeps every row's sum of squares below 2^32."""
    v = int(_shifted_var(y, 0, None).max()) if y.size else 0
    if v < ref.IBERT_LN_VAR_LIMIT:
        return 0
    k = -(-((v - 1).bit_length() - 32) // 2)
    while int(_shifted_var(y, k, None).max()) >= ref.IBERT_LN_VAR_LIMIT:
        k += 1
    return k


def i_layernorm(
    q, scale, gamma, beta, axis: int = -1, shift: int | None = None
) -> tuple[np.ndarray, np.ndarray, IntStats]:
    """(28) I-BERT ``IntLayerNorm`` over ``axis`` (``N`` channels); returns the integers and the
    per-channel output scale ``sqrt(N) / 2^30 * gamma`` (shape ``(N,)``).

    Per row: ``mean = round_half_even(sum(q) / N)``; ``y = q - mean``; ``V = sum((y >> k)^2)``;
    ``std = isqrt(V) * 2^k`` (27); ``F = floor(2^31 / max(std, 1))``; ``out = floor(y F / 2) +
    bias_int``, ``bias_int = floor((beta / gamma) / (sqrt(N) / 2^30))`` (host, float64). The
    real normalised value is ``floor(y F / 2) * sqrt(N) / 2^30``. I-BERT's integer path has no
    epsilon, and the input scale cancels (it is validated, not used). ``shift=None`` is the
    dynamic shift (29) of I-BERT's training mode (from a zero shift buffer, over the whole
    tensor); an integer is a calibrated shift, used as is (inference: no overflow check, ``V``
    may pass 32 bits). ``stats.registers["shift"]`` is the shift used.

    Widths: ``V < 2^32`` with the dynamic shift (unsigned 32-bit square root); ``F <= 2^31``;
    ``|y F| < 2^31 (1 + 2^k (sqrt(N) + 1) / std)`` (``< 2^(31+k)`` if ``V = 0``), so the
    normalised ``floor(y F / 2)`` keeps about 32 signed bits whatever ``N`` (``|yhat| <
    sqrt(N)``); ``out`` adds ``bias_int``, which fits 32 bits while ``|beta / gamma| < 2
    sqrt(N)`` (I-BERT's ``ln_output_bit = 32``). I-BERT's own input is 22-bit (``ln_bit = 22``,
    ``N = 768``).
    Ops: per row ``N - 1`` adds and 1 divide plus 1 compare and 1 add (mean), ``N - 1`` adds
    (``V``), the square root (27), 1 shift (``std``), 1 compare and 1 divide (``F``); per
    element 1 add (``y``), 1 shift and 1 multiply (``(y >> k)^2``), 1 multiply, 1 shift and
    1 add (output). The dynamic shift's calibration pass is host-side, not counted.
    Accuracy (derived in ``docs/numerics.md`` eq. 28, tested): with ``c = q - mean(q)``,
    ``S = ||c||``, ``yhat = c sqrt(N) / S`` and ``D = S - 2^k (sqrt(N) + 1) > 0``,
    ``|out * scale - (gamma yhat + beta)| <= |gamma| (|yhat| ((2^k (sqrt(N) + 1) + N / (8 S)) / D
    + S / 2^31) + 0.5 sqrt(N) / D + 0.5 sqrt(N) / 2^31 + 2 sqrt(N) / 2^30)``. The ``S / 2^31``
    term is ``1 / F``: full-swing 22-bit rows of 768 are off by up to 1.5% (0.040).
    """
    _scale(scale)
    x = _ints(q)
    if x.ndim == 0:
        raise IBertError("i_layernorm needs an array of at least one dimension, got a scalar")
    ax = _axis(axis, x.ndim)
    n = x.shape[ax]
    g = _channels(gamma, n, "gamma")
    b = _channels(beta, n, "beta")
    if (g == 0).any():
        raise IBertError("gamma must be nonzero (I-BERT folds beta / gamma into bias_int)")
    if shift is not None and (
        isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or not 0 <= shift < 63
    ):
        raise IBertError(f"shift must be None or an integer in [0, 62], got {shift!r}")
    unit = math.sqrt(n) / 2**30
    with np.errstate(over="ignore"):
        bias_f = np.floor((b / g) / unit)
    if not (np.abs(bias_f) < 2.0**62).all():
        raise IBertError("beta / gamma is too large: bias_int = floor(...) would leave int64")
    bias = bias_f.astype(np.int64)
    out_scale = unit * g
    x = np.moveaxis(x, ax, -1)
    _fits(n * _absmax(x), "sum(q)")
    if x.size == 0:
        t = _Tally(shift=0 if shift is None else int(shift))
        t.width("bias_int", bias)
        return np.moveaxis(np.zeros(x.shape, np.int64), -1, ax), out_scale, t.stats()
    total = x.sum(axis=-1, keepdims=True)
    mean_q, rem = np.divmod(total, n)
    mean = mean_q + ((2 * rem > n) | ((2 * rem == n) & (mean_q % 2 == 1)))
    y = x - mean
    k = _dynamic_shift(y) if shift is None else int(shift)
    t = _Tally(shift=k)
    t.width("bias_int", bias)
    var = _shifted_var(y, k, t)
    root = _isqrt(var, t)
    _fits(_absmax(root) << k, "isqrt(V) << shift")
    std = root << k
    factor = (1 << ref.IBERT_LN_FACTOR_BITS) // np.maximum(std, 1)
    _fits(_absmax(y) * _absmax(factor), "y * factor")
    scaled = y * factor
    norm = scaled >> 1
    _fits(_absmax(norm) + _absmax(bias), "y_norm + bias_int")
    out = norm + bias
    for name, v in (
        ("sum_x", total),
        ("mean", mean),
        ("y", y),
        ("var", var),
        ("std", std),
        ("factor", factor),
        ("y_times_factor", scaled),
        ("y_norm", norm),
        ("out", out),
    ):
        t.width(name, v)
    rows = x.size // n
    t.count(rows, adds=2 * (n - 1) + 1, divides=2, compares=2, shifts=1)
    t.count(x.size, adds=2, shifts=2, multiplies=2)
    return np.moveaxis(out, -1, ax), out_scale, t.stats()


def layernorm_row_shifts(q, axis: int = -1) -> np.ndarray:
    """(29) per row: the shift ``k`` of :func:`i_layernorm` computed for each row alone -- the
    smallest ``k`` keeping the row's ``sum((y >> k)^2)`` below ``2^32`` (``y`` the row minus its
    rounded mean, as (28)). A row's result then depends on the row only (not on the other rows
    of the call, as I-BERT's tensor-wide training-mode shift does); the integer executor calls
    :func:`i_layernorm` once per distinct shift. Returns int64, ``q``'s shape without ``axis``."""
    x = np.moveaxis(_ints(q), _axis(axis, np.ndim(q)), -1)
    n = x.shape[-1]
    if x.size == 0:
        return np.zeros(x.shape[:-1], np.int64)
    _fits(n * _absmax(x), "sum(q)")
    total = x.sum(axis=-1, keepdims=True)
    mean_q, rem = np.divmod(total, n)
    mean = mean_q + ((2 * rem > n) | ((2 * rem == n) & (mean_q % 2 == 1)))
    y = x - mean
    k = np.zeros(x.shape[:-1], np.int64)
    while True:
        v = _shifted_var(y >> k[..., None], 0, None)[..., 0]
        over = v >= ref.IBERT_LN_VAR_LIMIT
        if not over.any():
            return k
        k = k + over


# --- per-row scales (the integer executor: per-sample / per-token inputs) -------------------------
def _per_scale(scales, registers):
    """``registers(s)`` (a tuple of host-side constants) for every distinct scale of the array
    ``scales``, returned as arrays of ``scales``' shape (one Python call per distinct scale)."""
    sc = np.asarray(scales, np.float64)
    uniq, inv = np.unique(sc.reshape(-1), return_inverse=True)
    regs = [registers(_scale(float(u))) for u in uniq]
    out = []
    for col in zip(*regs, strict=True):
        a = np.asarray(col)
        if a.dtype == object:  # an integer register beyond int64
            raise IBertError(f"a register of scales {uniq.tolist()} leaves int64")
        out.append(a[inv].reshape(sc.shape))
    return out


def i_softmax_rows(q, scales, out_bits: int = 8) -> tuple[np.ndarray, float, IntStats]:
    """:func:`i_softmax` of each row of ``q`` (R, L) along its last axis, row ``r`` at its own
    scale ``scales[r]`` -- the same integers as one :func:`i_softmax` call per row (the
    registers are per row; the formulas are the same), in one vectorised pass."""
    x = _ints(q)
    if x.ndim != 2:
        raise IBertError(f"i_softmax_rows takes (rows, L) integers, got shape {x.shape}")
    sc = np.asarray(scales, np.float64).reshape(-1)
    if sc.shape != (x.shape[0],):
        raise IBertError(f"scales must hold one scale per row ({x.shape[0]}), got {sc.shape}")
    if isinstance(out_bits, bool) or not isinstance(out_bits, (int, np.integer)):
        raise IBertError(f"out_bits must be an integer number of bits, got {out_bits!r}")
    if not 1 <= out_bits <= ref.IBERT_SOFTMAX_MAX_BIT:
        raise IBertError(f"out_bits must be in [1, 32], got {out_bits}")

    def registers(s):
        x0_int, b_int, c_int, _ = _exp_registers(s)
        if c_int < 1:
            raise IBertError(
                f"scale {s} is too large for i_softmax: c_int = floor(2.79 / s^2) = 0 makes "
                "every exp 0; scale must be <= 1.67"
            )
        return (x0_int, b_int, c_int, *ref.ibert_softmax_registers(s))

    t = _Tally()
    if x.size == 0:
        for u in np.unique(sc):
            registers(_scale(float(u)))
        return np.zeros(x.shape, np.int64), 2.0**-out_bits, t.stats()
    x0_int, b_int, c_int, m, e = (a[:, None] for a in _per_scale(sc, registers))
    rows, length = x.shape
    _fits(int((x.max(axis=1) - x.min(axis=1)).max()), "q - max(q)")
    d = x - x.max(axis=-1, keepdims=True)
    t.width("x_minus_max", d)
    pos, k, _ = _exp_parts(d, x0_int, b_int, c_int, t)
    product = pos * m
    bits = np.where(product > 0, _bit_length(product) + (ref.IBERT_EXP_N - k), 0)
    t.widths["exp_requant_product"] = int(bits.max()) + 1
    sh = e - ref.IBERT_EXP_N + k
    lim = (1 << (ref.IBERT_SOFTMAX_EXP_BITS - 1)) - 1
    rounded = round_shift(product, np.minimum(sh, 63), "half_even")
    e16 = np.minimum(np.where(sh > 63, 0, rounded), lim)
    total = e16.sum(axis=-1, keepdims=True)
    factor = (1 << ref.IBERT_SOFTMAX_MAX_BIT) // total
    scaled = e16 * factor
    out = scaled >> (ref.IBERT_SOFTMAX_MAX_BIT - out_bits)
    for name, v in (
        ("exp16", e16),
        ("exp16_sum", total),
        ("factor", factor),
        ("exp16_times_factor", scaled),
        ("out", out),
    ):
        t.width(name, v)
    t.count(rows, compares=length - 1, adds=length - 1, divides=1)
    t.count(x.size, adds=2, multiplies=2, shifts=2, compares=1)
    return out, 2.0**-out_bits, t.stats()


def i_gelu_scales(q, scales) -> tuple[np.ndarray, np.ndarray, IntStats]:
    """:func:`i_gelu` of each element of ``q`` at its own scale (``scales`` broadcasting
    against ``q``): the same integers as one :func:`i_gelu` call per distinct scale, in one
    vectorised pass. Returns the output scale per element (negative, as :func:`i_gelu`)."""
    x = _ints(q)
    sc = np.broadcast_to(np.asarray(scales, np.float64), x.shape)
    t = _Tally()
    if x.size == 0:
        return np.zeros(x.shape, np.int64), np.zeros(x.shape), t.stats()
    b_int, c_int, shift_int, _, out_scale = _per_scale(sc, ref.ibert_gelu_registers)
    erf = _erf(x, b_int, c_int, t)
    _fits(_absmax(x) * (_absmax(erf) + _absmax(shift_int)), "q * (erf + shift_int)")
    total = erf + shift_int
    out = x * total
    t.width("erf_plus_shift", total)
    t.width("out", out)
    t.count(x.size, adds=1, multiplies=1)
    return out, out_scale, t.stats()
