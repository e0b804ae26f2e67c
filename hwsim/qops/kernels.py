"""Numba kernels of the onnxruntime operator contracts in :mod:`hwsim.qops` (the same float32
operations, element by element, in one pass)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def fma32(a, b, c):
    """:func:`hwsim.qops.common.fma_f32` on float32 scalars: ``round_f32(a*b + c)`` with one
    rounding -- the product exact in float64, ``TwoSum`` for the float64 sum's error, and the
    neighbour on the error's side where the float64 sum is a float32 midpoint."""
    p = np.float64(a) * np.float64(b)
    c64 = np.float64(c)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    r = np.float32(s)
    r64 = np.float64(r)
    if s != r64 and err != 0:
        other = np.nextafter(r, np.float32(np.inf) if s > r64 else np.float32(-np.inf))
        o64 = np.float64(other)
        if s == (r64 + o64) / 2 and (err > 0) == (o64 > s):
            r = other
    return r


@njit(cache=True, parallel=True)
def qlinear_add_rows(P, Q, rp, rq, fixed, lo, hi, out):
    """QLinearAdd's AVX2 arithmetic on equal-shape operands: ``y = fma(f32(P), rp, fma(f32(Q),
    rq, fixed))``, ``cvtps`` (half to even; out of int32 or NaN: INT32_MIN), clamped to ``[lo,
    hi]``. ``P``, ``Q``, ``out`` (N, E); ``rp``, ``rq``, ``fixed`` float32."""
    N, E = P.shape
    for n in prange(N):
        pr = P[n]
        qr = Q[n]
        o = out[n]
        for e in range(E):
            y = fma32(np.float32(pr[e]), rp, fma32(np.float32(qr[e]), rq, fixed))
            v = np.rint(np.float64(y))
            c = np.int64(v) if -2147483648.0 <= v < 2147483648.0 else np.int64(-2147483648)
            o[e] = min(max(c, lo), hi)


@njit(cache=True, parallel=True)
def lookup_pairs(P, Q, off, table, out):
    """``out[n, e] = table[(P[n, e] + off) * 256 + (Q[n, e] + off)]``: an elementwise rule of two
    8-bit operands read from its 65,536-entry table (``off`` = 128 for int8, 0 for uint8).
    ``P``, ``Q``, ``out`` (N, E) of the 8-bit dtype; ``table`` (65536,) of ``out``'s dtype."""
    N, E = P.shape
    for n in prange(N):
        pr = P[n]
        qr = Q[n]
        o = out[n]
        for e in range(E):
            o[e] = table[((np.int32(pr[e]) + off) << 8) | (np.int32(qr[e]) + off)]
