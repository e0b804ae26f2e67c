"""Scale registers: the stage that turns an accumulator value into an output-scale integer.

Three hardware families, selectable by name (``ScaleKind``):

* ``tflite`` / ``tflite-single`` -- TFLite's fixed-point multiplier: a Q0.31 int32 multiplier and
  a power-of-two exponent, applied by ``MultiplyByQuantizedMultiplier`` in the default
  ("double rounding") or the ``TFLITE_SINGLE_ROUNDING`` build
  (``tensorflow/lite/kernels/internal/common.{h,cc}``, ``gemmlowp/fixedpoint/fixedpoint.h``).
* ``ort`` -- onnxruntime's float32 combined scale: ``round_half_even(f32(f32(acc) * scale))``
  (``onnxruntime/core/mlas/lib/quantize.cpp``, ``MlasRequantizeOutput``).
* ``pow2`` -- a shift-only register: ``round(acc / 2^shift)`` with a chosen ``RoundingMode``.
  It applies powers of two only: built from a real that is not one (an average over 36
  positions, a Mul by 3, a BatchNorm factor in the register) it applies the nearest power of two
  and the register records the **gain error** ``applied / wanted - 1`` (``gain_error``); the
  network executor reports it per layer (docs/numerics.md, "Gain error").

A register's output is the rescaled integer *before* the output zero point and clamp, which the
output stage (:func:`hwsim.datapath.output_stage`) adds. Values the ``ort`` and ``pow2`` registers
produce beyond ``+-2^62`` are held at ``+-2^62`` (far outside any output format, so the final
clamp gives the same answer as an unbounded register).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numba import njit, vectorize

from hwsim.errors import HwsimError
from hwsim.numerics import reference as ref
from hwsim.numerics.enums import coerce
from hwsim.numerics.formats import IntFormat, check_in_range, check_integer_array, wrap
from hwsim.numerics.rounding import RoundingMode, as_mode, round_shift

INT32 = IntFormat(32, True)
REGISTER_LIMIT = 1 << 62
TFLITE_SHIFT_RANGE = (-31, 30)
POW2_SHIFT_RANGE = (-62, 63)
TFLITE_MAX_REAL = ((1 << 31) - 1) / 2.0
"""The largest real a ``tflite*`` register applies: ``(2^31 - 1) * 2^(30 - 31)``."""
GAIN_TOLERANCE = 2.0**-20
"""A register whose ``|gain_error|`` exceeds this applies another gain than the one asked for
(the ``ort`` register's float32 rounding, at most ``2^-24``, and the Q0.31 multiplier of
``tflite*``, at most ``2^-31``, stay below it; a ``pow2`` register built from a real that is
not a power of two, or a ``tflite*`` real below ``2^-32`` flushed to 0, do not)."""


def gain_error(applied, wanted) -> np.ndarray:
    """``applied / wanted - 1`` (float64, broadcast): the relative gain error of a register."""
    return np.asarray(applied, np.float64) / np.asarray(wanted, np.float64) - 1.0


class MultiplierRangeError(HwsimError):
    """A real multiplier no register of the chosen kind can represent."""


def _scalar(*values) -> bool:
    return all(np.ndim(v) == 0 for v in values)


# --- TFLite / gemmlowp ---------------------------------------------------------------------------
def quantize_multiplier(real: float, rounding: str = "double") -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier(double)``: ``real ~= multiplier * 2^(shift - 31)``.

    ``multiplier`` is ``round_half_away(q * 2^31)`` for ``real = q * 2^shift``, ``q`` in
    ``[0.5, 1)`` (``std::frexp``); ``2^31`` is halved with ``shift + 1``; ``shift < -31`` flushes
    to ``(0, 0)``. ``rounding="single"`` (the ``TFLITE_SINGLE_ROUNDING`` build) also clamps
    ``shift > 30`` to ``(2^31 - 1, 30)``, as TFLite's ``quantization_util.cc`` does (reals
    ``>= 2^30 - 2^-2``; :meth:`ScaleRegister.from_real` refuses them instead, for both builds).
    ``real`` must be finite.
    """
    if rounding not in ("double", "single"):
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    real = float(real)
    if not math.isfinite(real):
        raise ValueError(f"real multiplier must be finite, got {real}")
    return ref.quantize_multiplier(real, single_rounding=rounding == "single")


def saturating_rounding_doubling_high_mul(a, b):
    """gemmlowp ``SaturatingRoundingDoublingHighMul`` on int32 ``a``, ``b`` (eq. 5)."""
    INT32.check(a, "a")
    INT32.check(b, "b")
    if _scalar(a, b):
        return ref.saturating_rounding_doubling_high_mul(int(a), int(b))
    a64 = np.asarray(a, np.int64)
    b64 = np.asarray(b, np.int64)
    ab = a64 * b64
    v = ab + np.where(ab >= 0, np.int64(1 << 30), np.int64(1 - (1 << 30)))
    hi = np.where(v >= 0, v >> 31, -((-v) >> 31))
    return np.where((a64 == INT32.min) & (b64 == INT32.min), np.int64(INT32.max), hi)


def rounding_divide_by_pot(x, exponent):
    """gemmlowp ``RoundingDivideByPOT``: ``x / 2^exponent`` rounded half away from zero
    (eq. 6); ``x`` int32, ``exponent`` in ``[0, 31]``."""
    INT32.check(x, "x")
    check_in_range(exponent, 0, 31, "exponent")
    return round_shift(x, exponent, RoundingMode.HALF_AWAY)


def multiply_by_quantized_multiplier(x, multiplier, shift, rounding: str = "double"):
    """TFLite ``MultiplyByQuantizedMultiplier(int32 x, int32 multiplier, int shift)`` (eq. 7).

    ``double`` (default build): ``RDBPOT(SRDHM(x * 2^max(shift,0), multiplier), max(-shift,0))``,
    the left shift in int32 arithmetic (wraps, as the reference kernel's ``x * (1 << s)`` does).
    ``single`` (``TFLITE_SINGLE_ROUNDING``): ``(x * multiplier + 2^(30-shift)) >> (31-shift)``
    (one rounding, ties toward +inf), wrapped to int32.
    ``x`` int32; ``multiplier`` int32 (``>= 0`` for single); ``shift`` in ``[-31, 30]``.
    Scalars give a Python int, arrays (broadcast) an int64 array.
    """
    if rounding not in ("double", "single"):
        raise ValueError(f"rounding must be 'double' or 'single', got {rounding!r}")
    INT32.check(x, "x")
    check_in_range(multiplier, 0 if rounding == "single" else INT32.min, INT32.max, "multiplier")
    check_in_range(shift, *TFLITE_SHIFT_RANGE, "shift")
    if _scalar(x, multiplier, shift):
        return ref.multiply_by_quantized_multiplier(int(x), int(multiplier), int(shift), rounding)
    x64 = np.asarray(x, np.int64)
    m64 = np.asarray(multiplier, np.int64)
    s64 = np.asarray(shift, np.int64)
    if rounding == "double":
        left = np.maximum(s64, 0).astype(np.uint64)
        shifted = wrap(x64.astype(np.uint64) << left, INT32)
        return round_shift(
            saturating_rounding_doubling_high_mul(shifted, m64),
            np.maximum(-s64, 0),
            RoundingMode.HALF_AWAY,
        )
    return wrap(round_shift(x64 * m64, 31 - s64, RoundingMode.HALF_UP), INT32)


# --- onnxruntime ---------------------------------------------------------------------------------
def ort_requantize(acc, scale):
    """onnxruntime float32 requantization (eq. 8): ``round_half_even(f32(f32(acc) * scale))``.

    ``acc`` int64-range integers; ``scale`` float32 (a float64 is first rounded to float32).
    The conversion ``f32(acc)`` itself rounds (ties to even) once ``|acc| > 2^24``.
    """
    acc_arr = check_integer_array(acc, "acc")
    scale32 = np.asarray(scale, np.float32)
    if not np.all(np.isfinite(scale32)):
        raise ValueError("ort scale must be finite float32")
    if _scalar(acc, scale):
        out = ref.ort_requantize(int(acc_arr), Fraction(float(scale32)))
        return max(-REGISTER_LIMIT, min(REGISTER_LIMIT, out))
    if acc_arr.dtype != np.uint64:  # one pass, the same float32 operations as below
        with np.errstate(over="ignore"):
            return _ort_rq(acc_arr, scale32)
    with np.errstate(over="ignore"):  # a product beyond float32 is +-inf, then held at the limit
        prod = acc_arr.astype(np.float32) * scale32
    prod = np.clip(prod, np.float32(-REGISTER_LIMIT), np.float32(REGISTER_LIMIT))
    return np.rint(prod).astype(np.int64)


_LIMIT32 = np.float32(REGISTER_LIMIT)


@njit(cache=True, inline="always")
def ort_rq(t, m):
    """The ``ort`` register (eq. 8) on one integer ``t`` and float32 ``m``, for Numba kernels:
    ``rint(clamp(f32(t) * m, -2^62, 2^62))``. The int-to-float32 conversion and the float32
    product round to nearest even, as numpy's ``astype``/``*`` do; +-inf is held at the limit."""
    p = np.float32(t) * m
    return np.int64(np.rint(min(max(p, -_LIMIT32), _LIMIT32)))


_RQ_INPUTS = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64")


@vectorize([f"int64({t}, float32)" for t in _RQ_INPUTS], cache=True)
def _ort_rq(a, s):
    """:func:`ort_rq` as a broadcasting one-pass ufunc."""
    return ort_rq(a, s)


def ort_combined_scale(x_scale, w_scale, y_scale) -> np.ndarray:
    """QLinearConv's combined output scale ``f32(f32(x_scale * w_scale) / y_scale)``."""
    xs = np.float32(x_scale)
    ws = np.asarray(w_scale, np.float32)
    ys = np.float32(y_scale)
    return (xs * ws) / ys


# --- power of two ------------------------------------------------------------------------------
def pow2_requantize(acc, shift, mode=RoundingMode.HALF_AWAY, rng=None):
    """Shift-only register (eq. 9): ``round(acc / 2^shift)`` by ``mode`` for ``shift`` in
    ``[0, 63]``; ``acc * 2^-shift`` for ``shift`` in ``[-62, -1]``; held at ``+-2^62``."""
    mode = as_mode(mode)
    acc_arr = check_integer_array(acc, "acc")
    check_in_range(shift, *POW2_SHIFT_RANGE, "shift")
    if _scalar(acc, shift) and mode is not RoundingMode.STOCHASTIC:
        out = ref.pow2_requantize(int(acc_arr), int(shift), mode.value)
        return max(-REGISTER_LIMIT, min(REGISTER_LIMIT, out))
    a64 = acc_arr.astype(np.int64)
    s64 = np.asarray(shift, np.int64)
    right = round_shift(a64, np.maximum(s64, 0), mode, rng)
    left_bits = np.maximum(-s64, 0)
    lim = np.int64(REGISTER_LIMIT) >> left_bits
    left = np.clip(a64, -lim, lim) << left_bits
    out = np.where(s64 < 0, left, right)
    return int(out) if _scalar(acc, shift) else out


# --- registers as data ---------------------------------------------------------------------------
class ScaleKind(enum.Enum):
    """The scale-register families, by the name users select them with."""

    TFLITE = "tflite"
    """TFLite fixed-point multiplier + shift, default (double) rounding."""
    TFLITE_SINGLE = "tflite-single"
    """TFLite fixed-point multiplier + shift, ``TFLITE_SINGLE_ROUNDING`` build."""
    ORT = "ort"
    """onnxruntime float32 combined scale, round half to even."""
    POW2 = "pow2"
    """Power-of-two shift, chosen rounding mode."""


@dataclass(frozen=True, eq=False)
class ScaleRegister:
    """One scale register (per-tensor) or a vector of them (per-channel / per-sample).

    ``multiplier``: Q0.31 int32 (``tflite*``), float32 scale (``ort``), unused (``pow2``).
    ``shift``: TFLite exponent, ``real = multiplier * 2^(shift-31)`` (``tflite*``); right shift,
    ``real = 2^-shift`` (``pow2``); unused (``ort``). ``rounding``: ``pow2`` only.
    ``requested``: the real multipliers the register was built for (:meth:`from_real` sets it),
    or None.
    Build one from real multipliers with :meth:`from_real`.

    A ``pow2`` register is **shift only**: it cannot divide by 36 or multiply by 3. Built from a
    real that is not a power of two it applies ``2^round(log2 real)`` -- what a shift-only
    datapath does -- and :attr:`gain_error` says by how much that differs (``1/36`` applied as
    ``1/32``: ``+0.125``). The network executor records every register's gain error per layer
    and its report lists the layers beyond :data:`GAIN_TOLERANCE` (docs/numerics.md).
    """

    kind: ScaleKind
    multiplier: np.ndarray
    shift: np.ndarray
    rounding: RoundingMode = RoundingMode.HALF_AWAY
    requested: np.ndarray | None = None

    def __post_init__(self) -> None:
        kind = self.kind if isinstance(self.kind, ScaleKind) else as_kind(self.kind)
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "rounding", as_mode(self.rounding))
        mult = np.asarray(self.multiplier)
        shift = np.asarray(self.shift)
        if kind is ScaleKind.ORT:
            mult = mult.astype(np.float32)
            if not np.all(np.isfinite(mult)) or np.any(mult < 0):
                raise ValueError("ScaleRegister(ort).multiplier must be finite and >= 0")
        else:
            single = kind is ScaleKind.TFLITE_SINGLE
            check_in_range(mult, 0 if single else INT32.min, INT32.max, "multiplier")
            mult = mult.astype(np.int64)
        rng = POW2_SHIFT_RANGE if kind is ScaleKind.POW2 else TFLITE_SHIFT_RANGE
        check_in_range(shift, *rng, "shift")
        object.__setattr__(self, "multiplier", mult)
        object.__setattr__(self, "shift", shift.astype(np.int64))
        if self.requested is not None:
            object.__setattr__(self, "requested", np.asarray(self.requested, np.float64))

    @classmethod
    def from_real(cls, kind, real, rounding=RoundingMode.HALF_AWAY) -> ScaleRegister:
        """Registers approximating positive real multipliers ``real`` (any shape).

        ``tflite*`` by :func:`quantize_multiplier`; ``ort`` by rounding to float32; ``pow2`` by the
        nearest power of two in the log domain, ``shift = round(-log2(real))`` -- a real that is
        not a power of two is applied with the gain error :attr:`gain_error` (e.g. ``+0.125``
        for ``1/36``), which the caller must report (the network executor does, per layer).
        The register keeps ``real`` as :attr:`requested`.
        A ``tflite*`` real ``>= 2^30 - 2^-2`` (shift > 30) raises :class:`MultiplierRangeError`
        for both builds: TFLite's single-rounding build would saturate it to ``(2^31 - 1, 30)``,
        a register applying a different gain (about half of it at ``2^30``).
        """
        kind = as_kind(kind)
        reals = np.asarray(real, np.float64)
        if not np.all(np.isfinite(reals)) or np.any(reals <= 0):
            raise ValueError(f"real multipliers must be finite and > 0, got {real!r}")
        if kind is ScaleKind.ORT:
            return cls(
                kind, reals.astype(np.float32), np.zeros(reals.shape, np.int64), requested=reals
            )
        if kind is ScaleKind.POW2:
            return cls(
                kind,
                np.ones(reals.shape, np.int64),
                np.round(-np.log2(reals)).astype(np.int64),
                rounding,
                reals,
            )
        single = "single" if kind is ScaleKind.TFLITE_SINGLE else "double"
        flat = reals.ravel()
        # the unclamped exponent: TFLite's single-rounding QuantizeMultiplier saturates
        # shift > 30 to (2^31 - 1, 30), about half the gain for reals near 2^30 and far less
        # above; a register is never built from a real it cannot represent (both builds raise)
        bad = [r for r in flat if ref.quantize_multiplier(float(r))[1] > TFLITE_SHIFT_RANGE[1]]
        if bad:
            raise MultiplierRangeError(
                f"real multiplier {float(bad[0])!r} ({len(bad)} of {flat.size}) cannot be "
                f"represented by a {kind.value} register: it takes reals < 2^30 - 2^-2 "
                f"(at most multiplier 2^31 - 1 with shift 30 = {TFLITE_MAX_REAL!r}); TFLite's "
                f"QuantizeMultiplier would give shift > 30 (default build) or saturate it to "
                f"(2^31 - 1, 30) (TFLITE_SINGLE_ROUNDING)"
            )
        pairs = [quantize_multiplier(r, single) for r in flat]
        mult = np.array([m for m, _ in pairs], np.int64).reshape(reals.shape)
        shift = np.array([s for _, s in pairs], np.int64).reshape(reals.shape)
        return cls(kind, mult, shift, requested=reals)

    @property
    def gain_error(self) -> np.ndarray | None:
        """``real / requested - 1`` per register (float64), None without ``requested``: 0 for a
        ``pow2`` register of a power of two, ``(1/32) / (1/36) - 1 = 0.125`` for ``1/36``;
        below :data:`GAIN_TOLERANCE` for ``ort`` and ``tflite*`` (except a ``tflite*`` real
        ``< 2^-32``, flushed to 0: ``-1``)."""
        if self.requested is None:
            return None
        return gain_error(self.real, self.requested)

    @property
    def size(self) -> int:
        """Number of registers (1 for per-tensor)."""
        return int(np.broadcast(self.multiplier, self.shift).size)

    @property
    def real(self) -> np.ndarray:
        """The real multiplier(s) the register applies, as float64."""
        if self.kind is ScaleKind.ORT:
            return self.multiplier.astype(np.float64)
        if self.kind is ScaleKind.POW2:
            return np.ldexp(1.0, -self.shift)
        return np.ldexp(self.multiplier.astype(np.float64), self.shift - 31)

    def apply(self, acc, axis: int | None = None, rng: np.random.Generator | None = None):
        """Rescale ``acc``. A vector register is aligned with ``acc``'s axis ``axis``
        (e.g. 1 for per-channel NCHW / (M, N) GEMM columns, 0 for per-sample rows). A register
        array of 2 or more dimensions (e.g. per-sample x per-channel, shape ``(N, C, 1, 1)``)
        broadcasts against ``acc`` by numpy's rules and takes no ``axis``."""
        mult, shift = self.multiplier, self.shift
        if np.ndim(mult) > 1 or np.ndim(shift) > 1:
            if axis is not None:
                raise ValueError("a register array of ndim >= 2 broadcasts; pass axis=None")
            np.broadcast_shapes(np.shape(acc), np.shape(mult), np.shape(shift))
        elif self.size > 1 or np.ndim(mult) == 1:
            acc = np.asarray(acc)
            if axis is None or not -acc.ndim <= axis < acc.ndim:
                raise ValueError(f"a vector scale register needs a valid axis for acc {acc.shape}")
            axis %= acc.ndim
            if acc.shape[axis] != self.size:
                raise ValueError(
                    f"scale register has {self.size} entries but acc axis {axis} has "
                    f"{acc.shape[axis]}"
                )
            bshape = [1] * acc.ndim
            bshape[axis] = self.size
            mult = np.broadcast_to(mult, (self.size,)).reshape(bshape)
            shift = np.broadcast_to(shift, (self.size,)).reshape(bshape)
        if self.kind is ScaleKind.ORT:
            return ort_requantize(acc, mult)
        if self.kind is ScaleKind.POW2:
            return pow2_requantize(acc, shift, self.rounding, rng)
        single = "single" if self.kind is ScaleKind.TFLITE_SINGLE else "double"
        return multiply_by_quantized_multiplier(acc, mult, shift, single)


def as_kind(kind) -> ScaleKind:
    """Accept a ``ScaleKind`` or its value (the name users select it with); anything else is a
    ValueError listing the values."""
    return coerce(kind, ScaleKind, "scale register")
