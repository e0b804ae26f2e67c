"""Integer formats and overflow contracts.

Notation: ``IntFormat(bits, signed)`` is a two's-complement (signed) or plain binary (unsigned)
integer of ``bits`` bits *including* the sign bit, so ``IntFormat(8, True)`` is int8,
``[-128, 127]``. (gemmlowp counts the sign bit among the integer bits too; QONNX's ``Quant``
``bitwidth`` does the same.)

Array convention: every vectorised function here takes Python ints or integer NumPy arrays
(any of int8..int64, uint8..uint64) and returns ``int64`` arrays, except for the unsigned
64-bit format whose values need ``uint64``. Python ints are handled by the plain-int reference
in :mod:`hwsim.numerics.reference`, so a scalar and an array give identical results by
construction and the tests compare the two paths.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np
from numba import njit

from hwsim.numerics import reference as ref

MIN_BITS = 2
MAX_BITS = 64


def check_bits(bits: int, name: str, lo: int = MIN_BITS, hi: int = MAX_BITS) -> int:
    """Return ``bits`` if it is an int in ``[lo, hi]``; else a ``ValueError`` naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
        raise ValueError(f"{name} must be an integer number of bits, got {bits!r}")
    if not lo <= int(bits) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}] bits, got {bits}")
    return int(bits)


@dataclass(frozen=True)
class IntFormat:
    """A fixed-width integer: ``bits`` in [2, 64] including the sign bit; ``signed`` selects
    two's complement (``[-2^(bits-1), 2^(bits-1) - 1]``) or unsigned (``[0, 2^bits - 1]``)."""

    bits: int = 8
    signed: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", check_bits(self.bits, "IntFormat.bits"))
        if not isinstance(self.signed, (bool, np.bool_)):
            raise ValueError(f"IntFormat.signed must be a bool, got {self.signed!r}")

    @property
    def min(self) -> int:
        return -(1 << (self.bits - 1)) if self.signed else 0

    @property
    def max(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def dtype(self) -> np.dtype:
        """The narrowest NumPy dtype that holds every value of the format."""
        return _narrowest_dtype(self.bits, self.signed)

    def __str__(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}"

    def check(self, value, name: str) -> None:
        """Raise ``ValueError`` naming ``name`` if an element of ``value`` is outside the format."""
        check_in_range(value, self.min, self.max, name, f"the range of {self}")


@functools.cache
def _narrowest_dtype(bits: int, signed: bool) -> np.dtype:
    lo = -(1 << (bits - 1)) if signed else 0
    hi = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
    for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.uint64)


def check_integer_array(value, name: str) -> np.ndarray:
    """Return ``value`` as an integer NumPy array; a float, bool or object input is a ValueError."""
    arr = np.asarray(value)
    if arr.dtype == object and all(isinstance(v, int) for v in arr.flat):
        if arr.size and (min(arr.flat) < -(1 << 63) or max(arr.flat) >= 1 << 64):
            raise ValueError(f"{name} holds integers beyond 64 bits")
        arr = arr.astype(
            np.uint64 if arr.size and min(arr.flat) >= 0 and max(arr.flat) >= 1 << 63 else np.int64
        )
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {arr.dtype}")
    return arr


def check_in_range(value, lo: int, hi: int, name: str, what: str | None = None) -> None:
    """Raise ``ValueError`` if any element of ``value`` lies outside ``[lo, hi]``."""
    arr = check_integer_array(value, name)
    if arr.size == 0:
        return
    info = np.iinfo(arr.dtype)
    if lo <= info.min and info.max <= hi:  # every value of the dtype is allowed
        return
    vmin, vmax = int(arr.min()), int(arr.max())
    if vmin < lo or vmax > hi:
        bad = vmin if vmin < lo else vmax
        raise ValueError(f"{name} holds {bad}, outside {what or 'the allowed range'} [{lo}, {hi}]")


class Overflow(enum.Enum):
    """What an accumulator or register does with a value that does not fit its format."""

    WRAP = "wrap"
    """Two's-complement wrap-around: ``wrap(x) = ((x - min) mod 2^bits) + min``. Order-free:
    a wrapping sum equals the exact sum reduced once at the end."""

    SATURATE = "saturate"
    """Clamp: ``saturate(x) = min(max(x, min), max)``. Order-dependent when applied after every
    addition, so the reduction order is part of an accumulator's configuration."""

    def apply(self, value, fmt: IntFormat):
        """Reduce ``value`` (Python int or integer array) into ``fmt`` by this rule."""
        return wrap(value, fmt) if self is Overflow.WRAP else saturate(value, fmt)


def _result_dtype(fmt: IntFormat):
    return np.uint64 if (not fmt.signed and fmt.bits == 64) else np.int64


def wrap(value, fmt: IntFormat):
    """Two's-complement wrap of ``value`` into ``fmt``: ``((x - min) mod 2^bits) + min``.

    Exact for every Python int; arrays are reduced in uint64 modular arithmetic, which is
    exact because 2^64 is a multiple of 2^bits.
    """
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return ref.wrap(int(value), fmt.bits, fmt.signed)
    arr = check_integer_array(value, "value")
    u = arr.astype(np.uint64) if arr.dtype != np.uint64 else arr
    if fmt.bits == 64:
        return u if not fmt.signed else u.view(np.int64)
    mask = np.uint64((1 << fmt.bits) - 1)
    if not fmt.signed:
        return (u & mask).astype(np.int64)
    off = np.uint64(1 << (fmt.bits - 1))
    return ((u + off) & mask).astype(np.int64) - np.int64(1 << (fmt.bits - 1))


def saturate(value, fmt: IntFormat):
    """Clamp ``value`` into ``fmt``: ``min(max(x, fmt.min), fmt.max)``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return ref.saturate(int(value), fmt.bits, fmt.signed)
    arr = check_integer_array(value, "value")
    if arr.dtype == np.uint64:
        out = np.minimum(arr, np.uint64(fmt.max))
        return out if _result_dtype(fmt) is np.uint64 else out.astype(np.int64)
    out = np.clip(arr.astype(np.int64), fmt.min, min(fmt.max, (1 << 63) - 1))
    return out.astype(np.uint64) if _result_dtype(fmt) is np.uint64 else out


def overflows(value, fmt: IntFormat):
    """Boolean mask (or bool): ``value`` lies outside ``fmt``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return not fmt.min <= int(value) <= fmt.max
    arr = check_integer_array(value, "value")
    if arr.dtype == np.uint64:
        return arr > np.uint64(fmt.max)
    return (arr < fmt.min) | (arr > min(fmt.max, (1 << 63) - 1))


# Scalar helpers for Numba kernels. They implement the same contracts for int64 values and
# formats of at most 63 bits (the kernels' accumulators); tests check them against `reference`.


@njit(cache=True, inline="always")
def wrap_i64(v, bits, signed):
    """``Overflow.WRAP`` of an int64 into ``bits`` <= 63 (two's-complement when ``signed``)."""
    shift = 64 - bits
    if signed:
        return (v << shift) >> shift
    return v & ((1 << bits) - 1)


@njit(cache=True, inline="always")
def saturate_i64(v, lo, hi):
    """``Overflow.SATURATE`` of an int64 into ``[lo, hi]``."""
    return min(max(v, lo), hi)
