"""Rounding contracts: dividing an integer by a power of two, ``round(x / 2^s)``.

Every mode is defined on the exact rational ``v = x / 2^s`` (eq. 3 of ``docs/numerics.md``);
the vectorised form below splits ``x = q * 2^s + r`` with ``q = x >> s`` (floor) and
``0 <= r < 2^s`` and adds one to ``q`` when the mode says so. That form never overflows int64
(``q + 1 <= 2^62`` for ``s >= 1``), unlike ``(x + 2^(s-1)) >> s``.
"""

from __future__ import annotations

import enum

import numpy as np

from hwsim.numerics import reference as ref
from hwsim.numerics.enums import coerce
from hwsim.numerics.formats import check_in_range, check_integer_array

MAX_SHIFT = 63


class RoundingMode(enum.Enum):
    """How ``v = x / 2^s`` becomes an integer. ``frac = v - floor(v)``."""

    HALF_EVEN = "half_even"
    """Nearest, ties to the even integer (IEEE default, ONNX ``QuantizeLinear``)."""
    HALF_AWAY = "half_away"
    """Nearest, ties away from zero (gemmlowp ``RoundingDivideByPOT``, C ``round``)."""
    HALF_UP = "half_up"
    """Nearest, ties toward +inf: ``floor(v + 1/2) = (x + 2^(s-1)) >> s`` (TFLite single
    rounding)."""
    HALF_DOWN = "half_down"
    """Nearest, ties toward -inf: ``ceil(v - 1/2)``."""
    FLOOR = "floor"
    """Toward -inf: ``x >> s`` (arithmetic shift)."""
    CEIL = "ceil"
    """Toward +inf."""
    TOWARD_ZERO = "toward_zero"
    """Truncation: ``sign(x) * (|x| >> s)`` (C integer division)."""
    STOCHASTIC = "stochastic"
    """``floor(v) + [u < x mod 2^s]`` with ``u`` uniform in ``[0, 2^s)``: rounds up with
    probability ``frac(v)``, so ``E[result] = v``. ``u`` is the low ``s`` bits of a uint64
    drawn from an explicit ``numpy.random.Generator``, one draw per element in C order."""


def _round_up_mask(mode: RoundingMode, x, q, r, s, u):
    """True where ``floor(x / 2^s)`` must be incremented. Arrays are int64 (``u`` uint64)."""
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 1)
    if mode is RoundingMode.FLOOR:
        return np.zeros(np.shape(r), bool)
    if mode is RoundingMode.CEIL:
        return r != 0
    if mode is RoundingMode.TOWARD_ZERO:
        return (r != 0) & (x < 0)
    if mode is RoundingMode.HALF_UP:
        return (r >= half) & (s > 0)
    if mode is RoundingMode.HALF_DOWN:
        return (r > half) & (s > 0)
    if mode is RoundingMode.HALF_AWAY:
        return ((r > half) | ((r == half) & (x > 0))) & (s > 0)
    if mode is RoundingMode.HALF_EVEN:
        return ((r > half) | ((r == half) & ((q & 1) == 1))) & (s > 0)
    if mode is RoundingMode.STOCHASTIC:
        return u < r.astype(np.uint64)
    raise ValueError(f"unknown rounding mode {mode!r}")


def _words(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.integers(0, np.iinfo(np.uint64).max, size=shape, dtype=np.uint64, endpoint=True)


def stochastic_draws(rng, shape, shift) -> np.ndarray:
    """The stochastic-rounding draws: low ``shift`` bits of uint64 words from ``rng``, C order.

    ``rng`` is a ``numpy.random.Generator``, or a sequence of Generators, one per index of
    axis 0 of ``shape`` (e.g. one per sample): row ``i`` then takes its words, in C order,
    from ``rng[i]`` alone, so a row's draws do not depend on the other rows (the executor's
    per-sample streams, independent of how a data set is split into batches)."""
    shape = tuple(shape)
    if isinstance(rng, (list, tuple)):
        if not all(isinstance(g, np.random.Generator) for g in rng):
            raise ValueError("stochastic rounding: rng sequence must hold numpy Generators")
        if not shape or len(rng) != shape[0]:
            raise ValueError(
                f"stochastic rounding: {len(rng)} generators for draws of shape {shape} "
                "(one per index of axis 0)"
            )
        words = np.empty(shape, np.uint64)
        for i, g in enumerate(rng):
            words[i] = _words(g, shape[1:])
    elif isinstance(rng, np.random.Generator):
        words = _words(rng, shape)
    else:
        raise ValueError(
            "stochastic rounding needs rng=numpy.random.Generator (e.g. np.random.default_rng(0))"
        )
    s = np.broadcast_to(np.asarray(shift, np.uint64), shape)
    mask = np.where(s >= 64, np.uint64(2**64 - 1), (np.uint64(1) << s) - np.uint64(1))
    return words & mask


def as_mode(mode) -> RoundingMode:
    """Accept a ``RoundingMode`` or its value string; anything else is a ValueError."""
    return coerce(mode, RoundingMode, "rounding mode")


def round_shift(x, shift, mode, rng: np.random.Generator | None = None):
    """``round(x / 2^shift)`` by ``mode`` (eq. 3). ``x``: int64-range integers (Python int or
    array); ``shift``: integers in ``[0, 63]``, broadcast against ``x``. Stochastic rounding
    needs ``rng``. Returns a Python int for scalar inputs, else an int64 array."""
    mode = as_mode(mode)
    check_in_range(shift, 0, MAX_SHIFT, "shift")
    x_arr = check_integer_array(x, "x")
    check_in_range(x_arr, -(1 << 63), (1 << 63) - 1, "x", "int64")
    scalar = np.ndim(x) == 0 and np.ndim(shift) == 0
    xs = x_arr.astype(np.int64)
    s = np.asarray(shift).astype(np.int64)
    shape = np.broadcast_shapes(xs.shape, s.shape)
    u = stochastic_draws(rng, shape, s) if mode is RoundingMode.STOCHASTIC else None
    if scalar:
        return ref.round_shift(int(xs), int(s), mode.value, None if u is None else int(u))
    q = xs >> s
    r = xs - (q << s)
    return q + _round_up_mask(mode, xs, q, r, s, u)
