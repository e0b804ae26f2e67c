"""Numba kernels: the ordered (hardware-order) accumulator, an exact int64 GEMM, im2col.

The accumulator contracts are the ones of :mod:`hwsim.numerics.formats`: a value ``v`` that
leaves ``[lo, hi]`` is clamped (``saturate_i64``) and counted. Wrapping accumulators never need
the ordered kernels except to track partial sums, since wrapping is order-free.

Operands reach the kernels in their own narrow dtypes (``q``) with their zero points; the
effective value ``q - zp`` is formed per product, so no int64 copy of an operand is made.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.numerics.formats import saturate_i64, wrap_i64
from hwsim.numerics.scale import REGISTER_LIMIT, ort_rq

INT64_MAX = np.iinfo(np.int64).max
INT64_MIN = np.iinfo(np.int64).min
ROW_BLOCK = 4  # rows reduced together by the tracking kernel (independent chains per weight load)


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
def ordered_reduce(
    x,
    zx,
    we,
    rows,
    order,
    lo,
    hi,
    saturate,
    tile,
    tlo,
    thi,
    tbits,
    tsplit,
    signed,
    track,
    vals,
    events,
    tevents,
    pmin,
    pmax,
):
    """Reduce rows ``rows`` (flat indices into G*M) of ``(x - zx) @ we`` in hardware order.

    ``x``: (G, M, K) operand in its own dtype, ``zx`` its zero point; ``we``: (G, K, N) int64
    effective weights ``w - zw``. Product ``t`` of the hardware order is column ``order[t]``.
    ``tile`` = 0 is sequential order; ``tile`` = R adds each tile of R products in a tile
    register first, whose range is ``[tlo, thi]`` (saturating: its additions are clamped
    there). ``tsplit`` (wrapping only; ``tbits`` <= 61): the tile register wraps to ``tbits``
    (``signed``) before it is added, and ``vals`` is the exact sum of the wrapped tiles (the
    caller wraps it to the accumulator). Writes ``vals`` (saturated, or exact / sum of wrapped
    tiles when ``saturate`` is False), ``events`` (all), ``tevents`` (tile register's), and
    with ``track`` the extremes ``pmin``/``pmax`` of every exact partial sum.
    """
    G, M, K = x.shape
    N = we.shape[2]
    step = tile if tile > 0 else max(K, 1)
    for i in prange(rows.shape[0]):
        r = rows[i]
        g = r // M
        m = r - g * M
        s = np.zeros(N, np.int64)
        t = np.zeros(N, np.int64)
        ev = np.zeros(N, np.int64)
        tev = np.zeros(N, np.int64)
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
            for kk in range(k0, k1):
                k = order[kk]
                a = np.int64(x[g, m, k]) - zx
                if a == 0:
                    if track:  # the running value is unchanged but is still a partial sum
                        for n in range(N):
                            mn[n] = min(mn[n], ecur[n])
                            mx[n] = max(mx[n], ecur[n])
                    continue
                if tile > 0:
                    _accumulate_row(a, we[g, k], cur, tev, tlo, thi, saturate)
                else:
                    _accumulate_row(a, we[g, k], cur, ev, lo, hi, saturate)
                if track:
                    _track_row(a, we[g, k], ecur, mn, mx)
            if tile > 0:
                if tsplit:
                    for n in range(N):
                        wv = wrap_i64(t[n], tbits, signed)
                        tev[n] += abs((t[n] - wv) >> tbits)
                        t[n] = wv
                _accumulate_row(1, t, s, ev, lo, hi, saturate)
                if track:
                    _track_row(1, et, es, mn, mx)
        vals[g, m] = s
        events[g, m] = ev + tev
        tevents[g, m] = tev
        if track:
            pmin[g, m] = mn
            pmax[g, m] = mx


@njit(cache=True, inline="always")
def _group_split(rows, i0, i1, M):
    """(group of ``rows[i0]``, first index in ``[i0, i1)`` whose row is in another group, else
    ``i1``): the row-blocked kernels run a block group by group (a block of 4 rows can span up
    to 4 groups when groups have few rows, or few rows that need the ordered kernel)."""
    g0 = rows[i0] // M
    for i in range(i0, i1):
        if rows[i] // M != g0:
            return g0, i
    return g0, i1


@njit(cache=True)
def _track32_block(x, zx, we, g, rows, order, i0, i1, tile, pmin, pmax):
    M = x.shape[1]
    K = x.shape[2]
    N = we.shape[2]
    s = np.zeros((ROW_BLOCK, N), np.int32)
    t = np.zeros((ROW_BLOCK, N), np.int32)
    mn = np.full((ROW_BLOCK, N), np.iinfo(np.int32).max, np.int32)
    mx = np.full((ROW_BLOCK, N), np.iinfo(np.int32).min, np.int32)
    a = np.zeros(ROW_BLOCK, np.int32)
    ms = np.zeros(ROW_BLOCK, np.int64)
    nb = i1 - i0
    for r in range(ROW_BLOCK):
        ms[r] = rows[i0 + min(r, nb - 1)] - g * M
    step = tile if tile > 0 else max(K, 1)
    for k0 in range(0, K, step):
        k1 = min(k0 + step, K)
        t[:] = 0
        for kk in range(k0, k1):
            k = order[kk]
            for r in range(ROW_BLOCK):
                a[r] = np.int32(np.int32(x[g, ms[r], k]) - zx)
            wr = we[g, k]
            for r in range(ROW_BLOCK):
                ar = a[r]
                cur = t[r] if tile > 0 else s[r]
                mnr = mn[r]
                mxr = mx[r]
                for n in range(N):
                    v = np.int32(cur[n] + ar * wr[n])
                    cur[n] = v
                    mnr[n] = min(mnr[n], v)
                    mxr[n] = max(mxr[n], v)
        if tile > 0:
            for r in range(ROW_BLOCK):
                for n in range(N):
                    v = np.int32(s[r, n] + t[r, n])
                    s[r, n] = v
                    mn[r, n] = min(mn[r, n], v)
                    mx[r, n] = max(mx[r, n], v)
    for r in range(nb):
        for n in range(N):
            pmin[g, ms[r], n] = mn[r, n]
            pmax[g, ms[r], n] = mx[r, n]


@njit(cache=True, parallel=True)
def ordered_track32(x, zx, we, rows, order, tile, pmin, pmax):
    """The partial-sum extremes of :func:`ordered_reduce` (``track``, no saturation) in int32
    lanes: every exact partial sum of the configured order -- after each product, and each tile
    register added to the accumulator -- with its running min/max.

    Preconditions (checked by the caller): a wrapping accumulator without a tile register of
    its own width (``tile_bits``: no separate tile wraps); ``K * max|x - zx| * max|we| < 2^31``,
    so every partial sum, tile sums included, is an exact int32; ``we`` (G, K, N) int32;
    ``rows`` sorted.
    """
    M = x.shape[1]
    nblk = (rows.shape[0] + ROW_BLOCK - 1) // ROW_BLOCK
    for bi in prange(nblk):
        i0 = bi * ROW_BLOCK
        i1 = min(i0 + ROW_BLOCK, rows.shape[0])
        i = i0
        while i < i1:  # one call per group the block's rows belong to
            g, j = _group_split(rows, i, i1, M)
            _track32_block(x, zx, we, g, rows, order, i, j, tile, pmin, pmax)
            i = j


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
def pair_sat16(x, w, lim, corr, sats):
    """The int16 pair saturation of x86 ``vpmaddubsw`` (eq. 16), as a correction to exact sums.

    ``x`` (G, M, K) uint8 and ``w`` (G, K, N) int8 hold *raw* operands (no zero point), K in
    the kernel's packed order. For each pair ``j`` of adjacent columns ``(2j, 2j+1)`` the raw
    pair sum ``p = x[2j] w[2j] + x[2j+1] w[2j+1]`` is clamped to int16; ``corr[g, m, n] +=
    sat16(p) - p`` and ``sats[g, m, n] += (sat16(p) != p)``. An odd last column is a pair with
    a zero partner (a single u8 x s8 product always fits int16). Pairs with ``x[2j] + x[2j+1]
    <= lim[g]`` (``lim = 32767 // max|w|`` of group g) cannot leave int16 and are skipped."""
    G, M, K = x.shape
    N = w.shape[2]
    for r in prange(G * M):
        g = r // M
        m = r - g * M
        lm = lim[g]
        c = corr[g, m]
        s = sats[g, m]
        for j in range(0, K - 1, 2):
            a0 = np.int32(x[g, m, j])
            a1 = np.int32(x[g, m, j + 1])
            if a0 + a1 <= lm:
                continue
            w0 = w[g, j]
            w1 = w[g, j + 1]
            for n in range(N):
                p = a0 * np.int32(w0[n]) + a1 * np.int32(w1[n])
                q = min(max(p, -32768), 32767)
                c[n] += q - p
                s[n] += q != p


@njit(cache=True, parallel=True)
def pad_nhwc(x, pt, pl, pad_value, flip, out):
    """``out[n, ih + pt, iw + pl, c] = x[n, c, ih, iw] ^ flip`` (NCHW to padded NHWC); the border
    holds ``pad_value``. ``flip`` = 0x80 turns an int8 input viewed as uint8 into ``x + 128``."""
    N, C, H, W = x.shape
    _, Hp, Wp, _ = out.shape
    for nh in prange(N * Hp):
        n = nh // Hp
        hp = nh - n * Hp
        ih = hp - pt
        if 0 <= ih < H:
            for wp in range(Wp):
                iw = wp - pl
                if 0 <= iw < W:
                    for c in range(C):
                        out[n, hp, wp, c] = x[n, c, ih, iw] ^ flip
                else:
                    for c in range(C):
                        out[n, hp, wp, c] = pad_value
        else:
            for wp in range(Wp):
                for c in range(C):
                    out[n, hp, wp, c] = pad_value


@njit(cache=True, parallel=True)
def im2col_nhwc(xp, groups, kh, kw, sh, sw, dh, dw, ho, wo, out):
    """Unfold padded NHWC ``xp`` into ``out`` (groups, N*ho*wo, kh*kw*Cg), window-major:
    column ``(i * kw + j) * Cg + c`` holds ``xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c]``, so
    each (i, j) is one contiguous copy of Cg channels -- each kernel row one copy of kw*C values
    with one group and no column dilation. ``xp`` C-contiguous."""
    N, Hp, Wp, C = xp.shape
    cg = C // groups
    if groups == 1 and dw == 1:  # a kernel row's kw taps are one run of kw*C values
        run = kw * C
        for nh in prange(N * ho):
            n = nh // ho
            oh = nh - n * ho
            for i in range(kh):
                src = xp[n, oh * sh + i * dh].ravel()
                for ow in range(wo):
                    s = src[ow * sw * C : ow * sw * C + run]
                    d = out[0, nh * wo + ow, i * run : i * run + run]
                    for k in range(run):
                        d[k] = s[k]
        return
    for nh in prange(N * ho):
        n = nh // ho
        oh = nh - n * ho
        for ow in range(wo):
            row = nh * wo + ow
            for g in range(groups):
                for i in range(kh):
                    ih = oh * sh + i * dh
                    for j in range(kw):
                        iw = ow * sw + j * dw
                        base = (i * kw + j) * cg
                        c0 = g * cg
                        for c in range(cg):
                            out[g, row, base + c] = xp[n, ih, iw, c0 + c]


@njit(cache=True, parallel=True)
def gmn_to_nchw(vals, N, out):
    """``out[n, g*Fg + f, p] = vals[g, n*P + p, f]`` (grouped GEMM rows back to NCHW), with
    ``out`` (N, G*Fg, P) of any dtype that holds ``vals``' values. Tiles of 32 positions keep
    both the strided reads and the contiguous writes in cache; slices keep the copy loops free
    of index checks, so they vectorize."""
    G, M, Fg = vals.shape
    P = M // N if N else 0
    tile = 32
    nt = (P + tile - 1) // tile
    for task in prange(N * G * nt):
        ng = task // nt
        p0 = (task - ng * nt) * tile
        p1 = min(p0 + tile, P)
        n = ng // G
        g = ng - n * G
        src = vals[g, n * P + p0 : n * P + p1]
        for f in range(Fg):
            dst = out[n, g * Fg + f, p0:p1]
            col = src[:, f]
            for p in range(p1 - p0):
                dst[p] = col[p]


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


@njit(cache=True, inline="always")
def _requant_ort(v, b, lo, hi, saturate, bits, signed, sc, zp, olo, ohi):
    """One output of eq. 15 with the ``ort`` register: ``e = v + b``, ``t = ovf(e)`` into
    ``[lo, hi]`` (clamp, or wrap to ``bits``/``signed``), ``o = clamp(ort_rq(t, sc) + zp, olo,
    ohi)``. Returns ``(o, e left [lo, hi], o != ort_rq(t, sc) + zp)``."""
    e = v + b
    t = e
    ovf = e < lo or e > hi
    if ovf:
        t = saturate_i64(e, lo, hi) if saturate else wrap_i64(e, bits, signed)
    y = ort_rq(t, sc) + zp
    o = min(max(y, olo), ohi)
    return o, ovf, o != y


@njit(cache=True)
def _totals(stats):
    """``(min of column 0, max of column 1, sum of column 2, sum of column 3)`` of per-task
    statistics (INT64_MAX, INT64_MIN, 0, 0 for no tasks), in one serial pass: the kernels keep
    a single parallel region each (a parallel reduction or a filled allocation would be one
    more, each a synchronisation of every thread)."""
    lo = INT64_MAX
    hi = INT64_MIN
    nb = 0
    ncl = 0
    for t in range(stats.shape[0]):
        lo = min(lo, stats[t, 0])
        hi = max(hi, stats[t, 1])
        nb += stats[t, 2]
        ncl += stats[t, 3]
    return lo, hi, nb, ncl


@njit(cache=True, parallel=True)
def output_ort_fused(a, bias, lo, hi, saturate, bits, signed, scale, zp, olo, ohi, out):
    """The output stage (eq. 15) with the ``ort`` register, one pass per element:
    ``e = a + bias[c]``, ``t = ovf(e)`` into ``[lo, hi]`` (wrap to ``bits``/``signed`` or
    clamp), ``y = ort_rq(t, scale[c]) + zp`` (the ``ort`` register), ``out = clamp(y, olo,
    ohi)``. ``a`` (N, C, S); ``bias`` (C,) int64; ``scale`` (C,) float32 (products and the
    conversion ``f32(t)`` round to nearest even, as numpy's float32 arithmetic does).
    Returns ``(min a, max a, bias overflows, clamped)``; ``a``'s extremes let the caller
    reject values outside the accumulator's format."""
    N, C, S = a.shape
    n_tasks = N * C
    stats = np.empty((n_tasks, 4), np.int64)  # per task: min, max, bias overflows, clamped
    for task in prange(n_tasks):
        n = task // C
        c = task - n * C
        b = bias[c]
        sc = scale[c]
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        nb = 0
        ncl = 0
        for s in range(S):
            v = np.int64(a[n, c, s])
            lo_t = min(lo_t, v)
            hi_t = max(hi_t, v)
            o, ovf, cl = _requant_ort(v, b, lo, hi, saturate, bits, signed, sc, zp, olo, ohi)
            nb += ovf
            ncl += cl
            out[n, c, s] = o
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = nb
        stats[task, 3] = ncl
    return _totals(stats)


GMN_TILE = 64  # output positions per task of the grouped-GEMM output stage


@njit(cache=True, parallel=True)
def gmn_output_ort(vals, N, bias, lo, hi, saturate, bits, signed, scale, zp, olo, ohi, out):
    """:func:`output_ort_fused` reading a grouped GEMM's sums in their own layout:
    ``a[n, g*Fg + f, p] = vals[g, n*P + p, f]`` (``vals`` (G, N*P, Fg), as
    :func:`gmn_to_nchw` moves them), written to ``out`` (N, G*Fg, P) in the output's dtype --
    no NCHW copy of the sums. Tasks of ``GMN_TILE`` positions keep a tile's strided reads in
    cache. Returns ``(min a, max a, bias overflows, clamped)`` (INT64_MAX / INT64_MIN when
    there are no values)."""
    G, M, Fg = vals.shape
    P = M // N if N else 0
    nt = (P + GMN_TILE - 1) // GMN_TILE
    n_tasks = N * G * nt
    stats = np.empty((n_tasks, 4), np.int64)  # per task: min, max, bias overflows, clamped
    for task in prange(n_tasks):
        ng = task // nt
        p0 = (task - ng * nt) * GMN_TILE
        p1 = min(p0 + GMN_TILE, P)
        n = ng // G
        g = ng - n * G
        src = vals[g, n * P + p0 : n * P + p1]
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        nb = 0
        ncl = 0
        for f in range(Fg):
            c = g * Fg + f
            b = bias[c]
            sc = scale[c]
            dst = out[n, c, p0:p1]
            for p in range(p1 - p0):
                v = np.int64(src[p, f])
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                o, ovf, cl = _requant_ort(v, b, lo, hi, saturate, bits, signed, sc, zp, olo, ohi)
                nb += ovf
                ncl += cl
                dst[p] = o
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = nb
        stats[task, 3] = ncl
    return _totals(stats)


@njit(cache=True, inline="always")
def _dw_row(xc, zx, wc, oh, sh, sw, pt, pl, dh, dw, wo, acc):
    """``acc[ow] = sum_{i,j} (xc[ih, iw] - zx) * wc[i, j]`` over the taps of output row ``oh``
    inside the plane ``xc`` (H, W) (``ih = oh*sh - pt + i*dh``, ``iw = ow*sw - pl + j*dw``;
    taps in the padding hold zx and add 0). ``wc`` (kh, kw) int64 effective weights."""
    H, W = xc.shape
    kh, kw = wc.shape
    for ow in range(wo):
        acc[ow] = 0
    for i in range(kh):
        ih = oh * sh - pt + i * dh
        if ih < 0 or ih >= H:
            continue
        xr = xc[ih]
        for j in range(kw):
            wv = wc[i, j]
            off = j * dw - pl
            if wv == 0 or W - 1 - off < 0:
                continue
            o0 = 0 if off >= 0 else (sw - 1 - off) // sw
            o1 = min(wo, (W - 1 - off) // sw + 1)
            for ow in range(o0, o1):
                acc[ow] += (np.int64(xr[ow * sw + off]) - zx) * wv


@njit(cache=True, parallel=True)
def depthwise_sums(x, zx, we, sh, sw, pt, pl, dh, dw, out):
    """A convolution with one input channel per group, directly (no unfolding): ``out[n, f, oh,
    ow] = sum_{i,j} (x[n, f // m, ih, iw] - zx) * we[f, i, j]`` exactly in int64, ``m = F / C``
    output channels per input channel (``x`` (N, C, H, W), ``we`` (F, kh, kw) effective
    weights ``w - zw[f]``, ``out`` (N, F, ho, wo) int64; positions in the padding hold zx).
    The caller guarantees no int64 overflow. Returns ``(min, max)`` of the sums (INT64_MAX /
    INT64_MIN when there are none)."""
    N, F, ho, wo = out.shape
    m = F // x.shape[1]
    n_tasks = N * F
    stats = np.empty((n_tasks, 4), np.int64)  # per task: min, max
    for task in prange(n_tasks):
        n = task // F
        f = task - n * F
        acc = np.empty(wo, np.int64)
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        for oh in range(ho):
            _dw_row(x[n, f // m], zx, we[f], oh, sh, sw, pt, pl, dh, dw, wo, acc)
            for ow in range(wo):
                v = acc[ow]
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                out[n, f, oh, ow] = v
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = 0
        stats[task, 3] = 0
    lo, hi, _, _ = _totals(stats)
    return lo, hi


@njit(cache=True, parallel=True)
def depthwise_output_ort(
    x, zx, we, sh, sw, pt, pl, dh, dw, bias, lo, hi, saturate, bits, signed, scale, zp, olo,
    ohi, out,
):  # fmt: skip
    """:func:`depthwise_sums` followed by :func:`output_ort_fused`'s output stage, row by row:
    ``out`` (N, F, ho, wo) in the output's dtype, the sums never stored. Returns ``(min sum,
    max sum, bias overflows, clamped)``."""
    N, F, ho, wo = out.shape
    m = F // x.shape[1]
    n_tasks = N * F
    stats = np.empty((n_tasks, 4), np.int64)  # per task: min, max, bias overflows, clamped
    for task in prange(n_tasks):
        n = task // F
        f = task - n * F
        b = bias[f]
        sc = scale[f]
        acc = np.empty(wo, np.int64)
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        nb = 0
        ncl = 0
        for oh in range(ho):
            _dw_row(x[n, f // m], zx, we[f], oh, sh, sw, pt, pl, dh, dw, wo, acc)
            dst = out[n, f, oh]
            for ow in range(wo):
                v = acc[ow]
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                o, ovf, cl = _requant_ort(v, b, lo, hi, saturate, bits, signed, sc, zp, olo, ohi)
                nb += ovf
                ncl += cl
                dst[ow] = o
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = nb
        stats[task, 3] = ncl
    return _totals(stats)


_RQ_LIMIT = np.float32(REGISTER_LIMIT)
_TWO23 = np.float32(8388608.0)


@njit(cache=True, inline="always")
def _rint_f32(p):
    """``np.rint`` of a float32 (half to even) without a library call, so loops vectorize:
    below ``2^23`` in magnitude, ``(|p| + 2^23) - 2^23`` rounds ``|p|`` to an integer in the
    default rounding mode (the sum lies in ``[2^23, 2^24)``, whose spacing is 1); from
    ``2^23`` on every float32 is an integer. The sign of a zero result is not kept (the
    caller converts to an integer)."""
    a = abs(p)
    r = (a + _TWO23) - _TWO23
    r = r if a < _TWO23 else a
    return r if p >= 0 else -r


@njit(cache=True, inline="always")
def _requant_exact(e, sc, zp, olo, ohi):
    """:func:`_requant_ort` of an ``e = sum + bias`` known to lie in the accumulator (no
    overflow to apply): ``y = ort_rq(e, sc) + zp`` branch-free; returns ``(clamp(y), y)``."""
    p = np.float32(e) * sc
    p = min(max(p, -_RQ_LIMIT), _RQ_LIMIT)
    y = np.int64(_rint_f32(p)) + zp
    return min(max(y, olo), ohi), y


@njit(cache=True, parallel=True)
def gmn_output_exact(vals, N, bias, scale, zp, olo, ohi, alo, ahi, out):
    """:func:`gmn_output_ort` where no ``sum + bias`` can leave the accumulator (the caller's
    bound): no overflow rule to apply, so a tile of ``GMN_TILE`` positions is requantized
    along its contiguous channels (branch-free, vectorized) into a small buffer and then
    written to the NCHW output. ``alo`` / ``ahi``: a following ReLU / Clip applied to the
    outputs (``olo`` / ``ohi`` for none), after the clamp count. Returns ``(min sum, max sum,
    0, clamped)``."""
    G, M, Fg = vals.shape
    P = M // N if N else 0
    nt = (P + GMN_TILE - 1) // GMN_TILE
    n_tasks = N * G * nt
    stats = np.empty((n_tasks, 4), np.int64)
    for task in prange(n_tasks):
        ng = task // nt
        p0 = (task - ng * nt) * GMN_TILE
        p1 = min(p0 + GMN_TILE, P)
        n = ng // G
        g = ng - n * G
        src = vals[g, n * P + p0 : n * P + p1]
        bf = bias[g * Fg : (g + 1) * Fg]
        sf = scale[g * Fg : (g + 1) * Fg]
        tile = np.empty((p1 - p0, Fg), out.dtype)
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        ncl = 0
        for p in range(p1 - p0):
            row = src[p]
            tr = tile[p]
            for f in range(Fg):
                v = np.int64(row[f])
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                o, y = _requant_exact(v + bf[f], sf[f], zp, olo, ohi)
                ncl += o != y
                tr[f] = min(max(o, alo), ahi)
        for f in range(Fg):
            dst = out[n, g * Fg + f, p0:p1]
            for p in range(p1 - p0):
                dst[p] = tile[p, f]
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = 0
        stats[task, 3] = ncl
    return _totals(stats)


@njit(cache=True, parallel=True)
def depthwise_output_exact(
    x, zx, we, sh, sw, pt, pl, dh, dw, bias, scale, zp, olo, ohi, alo, ahi, out
):
    """:func:`depthwise_output_ort` where no ``sum + bias`` can leave the accumulator and
    every partial sum fits int32 (the caller's bound). Each (sample, channel) plane is first
    laid out padded, as ``x - zx`` in int32, split into ``sw`` column phases (phase ``r``
    holds the padded columns ``k*sw + r``), so every kernel tap adds one contiguous run per
    output row (vectorized), whatever the stride; then the rows are requantized branch-free.
    ``we`` (F, kh, kw) int32; ``alo`` / ``ahi`` as :func:`gmn_output_exact`'s. Returns ``(min
    sum, max sum, 0, clamped)``."""
    N, F, ho, wo = out.shape
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    m = F // C
    kh, kw = we.shape[1], we.shape[2]
    Hp = max(H + pt, (ho - 1) * sh + (kh - 1) * dh + 1)
    Wp = max(W + pl, (wo - 1) * sw + (kw - 1) * dw + 1)
    Wq = (Wp + sw - 1) // sw
    n_tasks = N * F
    stats = np.empty((n_tasks, 4), np.int64)
    for task in prange(n_tasks):
        n = task // F
        f = task - n * F
        xq = np.zeros((sw, Hp, Wq), np.int32)
        xc = x[n, f // m]
        for ih in range(H):
            src = xc[ih]
            for ph in range(sw):
                # padded column k = kq*sw + ph holds input column k - pl where 0 <= k - pl < W
                k0 = (pl - ph + sw - 1) // sw if pl > ph else 0
                k1 = min(Wq, (W - 1 + pl - ph) // sw + 1) if W - 1 + pl - ph >= 0 else 0
                dst = xq[ph, ih + pt]
                for kq in range(k0, k1):
                    dst[kq] = np.int32(src[kq * sw + ph - pl]) - zx
        acc = np.zeros((ho, wo), np.int32)
        wc = we[f]
        for i in range(kh):
            for j in range(kw):
                wv = wc[i, j]
                ph = (j * dw) % sw
                c0 = (j * dw) // sw
                for oh in range(ho):
                    r = xq[ph, oh * sh + i * dh, c0 : c0 + wo]
                    a = acc[oh]
                    for ow in range(wo):
                        a[ow] += r[ow] * wv
        b = bias[f]
        sc = scale[f]
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        ncl = 0
        for oh in range(ho):
            a = acc[oh]
            dst = out[n, f, oh]
            for ow in range(wo):
                v = np.int64(a[ow])
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                o, y = _requant_exact(v + b, sc, zp, olo, ohi)
                ncl += o != y
                dst[ow] = min(max(o, alo), ahi)
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = 0
        stats[task, 3] = ncl
    return _totals(stats)


@njit(cache=True, parallel=True)
def depthwise_nhwc_exact(
    xp, zx, wt, kh, kw, sh, sw, dh, dw, bias, scale, zp, olo, ohi, alo, ahi, out
):
    """:func:`depthwise_output_exact` (one output channel per input channel) on the padded
    NHWC input ``xp`` (N, Hp, Wp, C) (:func:`pad_nhwc`, padding holding ``zx``): each output
    position sums its taps along the contiguous channels (vectorized across channels, which
    suits small planes with many channels), is requantized branch-free into a row buffer and
    written to ``out`` (N, C, ho, wo). ``wt`` (kh*kw, C) int32 effective weights, tap-major;
    ``alo`` / ``ahi`` as :func:`gmn_output_exact`'s. Returns ``(min sum, max sum, 0,
    clamped)``."""
    N, F, ho, wo = out.shape
    C = xp.shape[3]
    n_tasks = N * ho
    stats = np.empty((n_tasks, 4), np.int64)
    for task in prange(n_tasks):
        n = task // ho
        oh = task - n * ho
        acc = np.empty(C, np.int32)
        tile = np.empty((wo, C), out.dtype)
        lo_t = INT64_MAX
        hi_t = INT64_MIN
        ncl = 0
        for ow in range(wo):
            for c in range(C):
                acc[c] = 0
            for i in range(kh):
                xr = xp[n, oh * sh + i * dh]
                for j in range(kw):
                    row = xr[ow * sw + j * dw]
                    wr = wt[i * kw + j]
                    for c in range(C):
                        acc[c] += (np.int32(row[c]) - zx) * wr[c]
            tr = tile[ow]
            for c in range(C):
                v = np.int64(acc[c])
                lo_t = min(lo_t, v)
                hi_t = max(hi_t, v)
                o, y = _requant_exact(v + bias[c], scale[c], zp, olo, ohi)
                ncl += o != y
                tr[c] = min(max(o, alo), ahi)
        for c in range(C):
            dst = out[n, c, oh]
            for ow in range(wo):
                dst[ow] = tile[ow, c]
        stats[task, 0] = lo_t
        stats[task, 1] = hi_t
        stats[task, 2] = 0
        stats[task, 3] = ncl
    return _totals(stats)
