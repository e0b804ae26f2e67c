"""The run report's SQNR sums, per sample and exact over samples, so the report does not depend
on the batch size, the thread count or the order of the batches.

A tensor's SQNR is ``10 log10(S / E)`` with ``S = sum f^2`` and ``E = sum (f - d)^2`` over every
element of the data set (``f`` the float reference, ``d`` the integer run's value dequantized).
Both sums are computed in two stages:

1. per sample (:func:`sample_square_sums`): the float64 terms ``f64(f)^2`` and ``(f64(f) -
   f64(d))^2`` of the sample's elements, in C order, added in :data:`LANES` lanes -- lane ``l``
   sums the elements ``e = l (mod LANES)`` in increasing ``e``, then ``(lane0 + lane1) + (lane2 +
   lane3)`` -- every step a float64 operation rounding to nearest even. A function of the
   sample's values alone (:func:`lane_sum` is the plain-Python statement of it);
2. over samples (:class:`ExactSum`): the per-sample sums added exactly, rounded once at the end
   (``math.fsum``), so the order in which samples arrive does not matter.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

LANES = 4
"""Lanes of a per-sample sum (element ``e`` goes to lane ``e % LANES``)."""


def lane_sum(terms) -> float:
    """The per-sample sum of float64 ``terms`` (a sequence), as the kernels compute it: the
    contract of stage 1, in plain Python floats."""
    lanes = [0.0] * LANES
    for e, t in enumerate(terms):
        lanes[e % LANES] += float(t)
    return (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])


@njit(cache=True, parallel=True)
def row_lane_sums(a, out):
    """``out[n] = lane_sum(a[n])`` for a float64 ``a`` (N, E); ``out`` (N,) float64."""
    N, E = a.shape
    for n in prange(N):
        r = a[n]
        s0 = 0.0
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        m = E - E % 4
        for e in range(0, m, 4):
            s0 += r[e]
            s1 += r[e + 1]
            s2 += r[e + 2]
            s3 += r[e + 3]
        if m < E:
            s0 += r[m]
        if m + 1 < E:
            s1 += r[m + 1]
        if m + 2 < E:
            s2 += r[m + 2]
        out[n] = (s0 + s1) + (s2 + s3)


@njit(cache=True, parallel=True)
def sqnr_lane_sums(f, q, zp, scale, ss, se):
    """Per-sample ``lane_sum`` of ``fv * fv`` and of ``(fv - d) ** 2`` for a per-tensor or
    per-sample quantized tensor, with ``fv = f64(f)`` and ``d = f64(f32(f32(q - zp) *
    scale[n]))`` (ONNX DequantizeLinear, :meth:`hwsim.execute.QTensor.dequantize`), the terms
    as :func:`hwsim.execute.kernels.sqnr_terms` computes them. ``f`` (N, E) float32, ``q``
    (N, E) integers, ``scale`` (N,) float32; ``ss`` / ``se`` (N,) float64."""
    N, E = q.shape
    m = E - E % 4
    for n in prange(N):
        s = scale[n]
        fr = f[n]
        qr = q[n]
        a0 = a1 = a2 = a3 = 0.0
        b0 = b1 = b2 = b3 = 0.0
        for e in range(0, m, 4):
            f0, f1 = np.float64(fr[e]), np.float64(fr[e + 1])
            f2, f3 = np.float64(fr[e + 2]), np.float64(fr[e + 3])
            r0 = f0 - np.float64(np.float32(np.float32(np.int64(qr[e]) - zp) * s))
            r1 = f1 - np.float64(np.float32(np.float32(np.int64(qr[e + 1]) - zp) * s))
            r2 = f2 - np.float64(np.float32(np.float32(np.int64(qr[e + 2]) - zp) * s))
            r3 = f3 - np.float64(np.float32(np.float32(np.int64(qr[e + 3]) - zp) * s))
            a0 += f0 * f0
            a1 += f1 * f1
            a2 += f2 * f2
            a3 += f3 * f3
            b0 += r0 * r0
            b1 += r1 * r1
            b2 += r2 * r2
            b3 += r3 * r3
        for e in range(m, E):  # the tail: lanes 0, 1, 2
            fv = np.float64(fr[e])
            r = fv - np.float64(np.float32(np.float32(np.int64(qr[e]) - zp) * s))
            if e == m:
                a0 += fv * fv
                b0 += r * r
            elif e == m + 1:
                a1 += fv * fv
                b1 += r * r
            else:
                a2 += fv * fv
                b2 += r * r
        ss[n] = (a0 + a1) + (a2 + a3)
        se[n] = (b0 + b1) + (b2 + b3)


def sample_square_sums(f: np.ndarray, v) -> tuple[np.ndarray, np.ndarray]:
    """``(S, E)``, each (N,) float64: per sample ``n`` of a batch, the lane sums (module
    docstring) of ``f^2`` and of ``(f - d)^2`` over the sample's elements, ``f`` (N, ...) its
    float reference and ``d`` the integer run's :class:`~hwsim.execute.QTensor` ``v``
    dequantized. A C-contiguous float32 ``f`` against a per-tensor or per-sample ``v`` takes
    one fused pass (:func:`sqnr_lane_sums`); anything else (per-token scales, other layouts)
    the numpy terms in C order and :func:`row_lane_sums` -- the same values either way."""
    q = v.q
    n = f.shape[0] if f.ndim else 0
    ss, se = np.empty(n), np.empty(n)
    if n == 0:
        return ss, se
    if (
        f.dtype == np.float32
        and f.shape == q.shape
        and f.flags.c_contiguous
        and q.flags.c_contiguous
        and np.ndim(v.zero_point) == 0
        and (np.ndim(v.scale) == 0 or np.shape(v.scale) == (n,))
    ):
        scale = np.ascontiguousarray(np.broadcast_to(np.asarray(v.scale, np.float32), (n,)))
        sqnr_lane_sums(f.reshape(n, -1), q.reshape(n, -1), int(v.zero_point), scale, ss, se)
        return ss, se
    fv = np.asarray(f, np.float64)
    d = v.dequantize().astype(np.float64)
    fv, d = np.broadcast_arrays(fv, d)
    row_lane_sums(np.ascontiguousarray((fv * fv).reshape(n, -1)), ss)
    row_lane_sums(np.ascontiguousarray(((fv - d) ** 2).reshape(n, -1)), se)
    return ss, se


class ExactSum:
    """The exact sum of every float64 value added (in any order, any grouping), rounded once
    to float64 by :meth:`value` (``math.fsum``). Values are kept until :data:`COMPACT` are
    pending, then replaced by a few floats of the same exact sum. A NaN or an infinity makes
    the value NaN / that infinity, as a float sum would."""

    COMPACT = 1 << 16

    def __init__(self):
        self._parts: list[float] = []
        self._pending: list[np.ndarray] = []
        self._count = 0
        self._special = 0.0  # the sum of the non-finite values seen (0.0: none)

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, np.float64).ravel()
        fin = np.isfinite(values)
        if not fin.all():
            with np.errstate(invalid="ignore"):
                self._special = float(self._special + values[~fin].sum())
            values = values[fin]
        self._pending.append(values)
        self._count += values.size
        if self._count >= self.COMPACT:
            self._parts = _exact_parts(self._parts + self._flush())

    def _flush(self) -> list[float]:
        vals = np.concatenate(self._pending).tolist() if self._pending else []
        self._pending, self._count = [], 0
        return vals

    def parts(self) -> list[float]:
        """Floats whose exact sum is the exact sum of every value added (a NaN or infinity:
        that one value): another :class:`ExactSum` fed them gives the same :meth:`value`, so
        sums of disjoint sample sets merge exactly (``hwsim run --workers``)."""
        if self._special != 0.0:
            return [self._special]
        self._parts = _exact_parts(self._parts + self._flush())
        return list(self._parts)

    def value(self) -> float:
        return math.fsum(self.parts())  # a NaN or infinity: that one value


def _exact_parts(values: list[float]) -> list[float]:
    """Floats whose exact sum is the exact sum of the finite ``values``: the correctly
    rounded sum, then the correctly rounded remainder, ... until the remainder is 0 (an exact
    sum of floats is a multiple of 2^-1074, so a nonzero one never rounds to 0). Each step
    takes about 53 bits off the remainder."""
    parts: list[float] = []
    rest = list(values)
    while True:
        s = math.fsum(rest)
        if s == 0.0:
            return parts
        parts.append(s)
        rest.append(-s)
