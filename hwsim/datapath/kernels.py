"""Numba kernels: the ordered (hardware-order) accumulator, an exact int64 GEMM, im2col.

All arithmetic is int64 (Numba promotes scalars to 64 bits); the accumulator contracts are the
ones of :mod:`hwsim.numerics.formats`: a value ``v`` that leaves ``[lo, hi]`` is clamped
(``saturate_i64``) and counted. Wrapping accumulators never need this kernel except to track
partial sums, since wrapping is order-free.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.numerics.formats import saturate_i64

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min


@njit(cache=True, inline="always")
def _accumulate_row(a, wrow, cur, ev, lo, hi, saturate):
    """``cur[n] <- ovf(cur[n] + a * wrow[n])`` for every n; events counted in ``ev``."""
    if saturate:
        for n in range(cur.shape[0]):
            v = cur[n] + a * wrow[n]
            c = saturate_i64(v, lo, hi)
            ev[n] += v != c
            cur[n] = c
    else:
        for n in range(cur.shape[0]):
            cur[n] += a * wrow[n]


@njit(cache=True, inline="always")
def _track_row(a, wrow, ecur, mn, mx):
    """Exact running sums ``ecur`` and their extremes."""
    for n in range(ecur.shape[0]):
        e = ecur[n] + a * wrow[n]
        ecur[n] = e
        mn[n] = min(mn[n], e)
        mx[n] = max(mx[n], e)


@njit(cache=True, parallel=True)
def ordered_reduce(xe, we, rows, lo, hi, saturate, tile, track, vals, events, pmin, pmax):
    """Reduce rows ``rows`` (flat indices into G*M) of ``xe @ we`` in hardware order.

    ``xe``: (G, M, K) int64 effective operands ``q - zp``; ``we``: (G, K, N). ``tile`` = 0 is
    sequential order; ``tile`` = R adds each tile of R products in a tile register first.
    Writes ``vals`` (saturated, or exact when ``saturate`` is False), ``events``, and with
    ``track`` the extremes ``pmin``/``pmax`` of every exact partial sum.
    """
    G, M, K = xe.shape
    N = we.shape[2]
    step = tile if tile > 0 else max(K, 1)
    for i in prange(rows.shape[0]):
        r = rows[i]
        g = r // M
        m = r - g * M
        s = np.zeros(N, np.int64)
        t = np.zeros(N, np.int64)
        ev = np.zeros(N, np.int64)
        es = np.zeros(N, np.int64)
        et = np.zeros(N, np.int64)
        mn = np.full(N, INT64_MAX, np.int64)
        mx = np.full(N, INT64_MIN, np.int64)
        for k0 in range(0, K, step):
            k1 = min(k0 + step, K)
            cur = t if tile > 0 else s
            ecur = et if tile > 0 else es
            if tile > 0:
                t[:] = 0
                et[:] = 0
            for k in range(k0, k1):
                a = xe[g, m, k]
                if a == 0:
                    if track:  # the running value is unchanged but is still a partial sum
                        for n in range(N):
                            mn[n] = min(mn[n], ecur[n])
                            mx[n] = max(mx[n], ecur[n])
                    continue
                _accumulate_row(a, we[g, k], cur, ev, lo, hi, saturate)
                if track:
                    _track_row(a, we[g, k], ecur, mn, mx)
            if tile > 0:
                _accumulate_row(1, t, s, ev, lo, hi, saturate)
                if track:
                    _track_row(1, et, es, mn, mx)
        vals[g, m] = s
        events[g, m] = ev
        if track:
            pmin[g, m] = mn
            pmax[g, m] = mx


@njit(cache=True, parallel=True)
def int64_gemm(xe, we, out):
    """Exact ``out[g] = xe[g] @ we[g]`` in int64 (caller guarantees no int64 overflow)."""
    G, M, K = xe.shape
    N = we.shape[2]
    for r in prange(G * M):
        g = r // M
        m = r - g * M
        acc = np.zeros(N, np.int64)
        for k in range(K):
            a = np.int64(xe[g, m, k])
            if a != 0:
                for n in range(N):
                    acc[n] += a * np.int64(we[g, k, n])
        out[g, m] = acc


@njit(cache=True, parallel=True)
def im2col(x, groups, kh, kw, sh, sw, pt, pl, dh, dw, ho, wo, pad_value, out):
    """Unfold NCHW ``x`` into ``out`` of shape (groups, N*ho*wo, Cg*kh*kw).

    Column index ``(c * kh + i) * kw + j`` (channel-major, the flattening order of an OIHW
    weight); positions outside the input hold ``pad_value`` (the input zero point). One output
    row block (n, oh) per task: reads run along a contiguous input row, writes stay in a
    wo x K block that fits in cache.
    """
    N, C, H, W = x.shape
    cg = C // groups
    for nh in prange(N * ho):
        n = nh // ho
        oh = nh - n * ho
        base = nh * wo
        for g in range(groups):
            for c in range(cg):
                for i in range(kh):
                    ih = oh * sh - pt + i * dh
                    inside_h = 0 <= ih < H
                    for j in range(kw):
                        col = (c * kh + i) * kw + j
                        off = j * dw - pl
                        for ow in range(wo):
                            iw = ow * sw + off
                            if inside_h and 0 <= iw < W:
                                out[g, base + ow, col] = x[n, g * cg + c, ih, iw]
                            else:
                                out[g, base + ow, col] = pad_value


@njit(cache=True, parallel=True)
def row_abs_sums(x, zp, out):
    """``out[g, m] = sum_k |x[g, m, k] - zp|`` in int64."""
    G, M, K = x.shape
    for r in prange(G * M):
        g = r // M
        m = r - g * M
        s = 0
        for k in range(K):
            s += abs(np.int64(x[g, m, k]) - zp)
        out[g, m] = s
