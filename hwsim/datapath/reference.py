"""The datapath specification in plain Python ints (eq. 10-15 of ``docs/numerics.md``).

Slow by design: one loop per product, in hardware order, using the scalar contracts of
:mod:`hwsim.numerics.reference`. Operands are nested lists (or anything iterable of ints); the
fast datapath must equal these functions exactly, counters included.
"""

from __future__ import annotations

from hwsim.datapath.config import Accumulator, Counters, Overflow
from hwsim.numerics import reference as ref


def _ovf(v: int, acc: Accumulator, bits: int | None = None) -> int:
    bits = bits or acc.bits
    if acc.overflow is Overflow.WRAP:
        return ref.wrap(v, bits, acc.signed)
    return ref.saturate(v, bits, acc.signed)


def accumulate(products: list[int], acc: Accumulator, detail: bool = False):
    """(10)-(11) One output's reduction on ``acc``.

    Returns ``(value, events, exact, partials)``: the register's final value; overflow events
    (saturations in order; for WRAP the net wraps of the final value, plus each tile's net wraps
    when ``acc.tile_bits`` gives the tile register its own width); the exact sum; and the list
    of exact partial sums in reduction order (tile partials, then the accumulator after each
    tile, for TILED). ``detail`` appends the tile-register events (part of ``events``).
    """
    lo, hi = ref.format_range(acc.bits, acc.signed)
    tb = acc.tile_bits or acc.bits
    tlo, thi = ref.format_range(tb, acc.signed)
    wrap = acc.overflow is Overflow.WRAP
    split = wrap and acc.tile and acc.tile_bits is not None  # tile register wraps on its own
    exact = sum(products)
    partials: list[int] = []
    value = events = tile_events = 0
    total = 0  # WRAP with a separate tile register: the sum of the wrapped tiles
    tile = acc.tile or max(len(products), 1)
    es = 0
    for k0 in range(0, len(products), tile):
        t = et = 0
        for p in products[k0 : k0 + tile]:
            et += p
            partials.append(et if acc.tile else es + et)
            if not wrap:
                if acc.tile:
                    v = t + p
                    e = not tlo <= v <= thi
                    events += e
                    tile_events += e
                    t = _ovf(v, acc, tb)
                else:
                    v = value + p
                    events += not lo <= v <= hi
                    value = _ovf(v, acc)
        es += et
        if acc.tile:
            partials.append(es)
            if not wrap:
                v = value + t
                events += not lo <= v <= hi
                value = _ovf(v, acc)
            elif split:
                e = abs((et - tlo) // (1 << tb))
                events += e
                tile_events += e
                total += ref.wrap(et, tb, acc.signed)
    if wrap:
        total = total if split else exact
        value = ref.wrap(total, acc.bits, acc.signed)
        events += abs((total - lo) // (1 << acc.bits))
    if detail:
        return value, events, exact, partials, tile_events
    return value, events, exact, partials


def _counters(results, macs: int, track: bool) -> Counters:
    c = Counters(macs=macs)
    exacts = [r[2] for r in results]
    if exacts:
        c.final_min, c.final_max = min(exacts), max(exacts)
    parts = [p for r in results for p in r[3]]
    if track and parts:
        c.partial_min, c.partial_max = min(parts), max(parts)
    c.overflow_events = sum(r[1] for r in results)
    c.tile_overflow_events = sum(r[4] for r in results if len(r) > 4)
    c.outputs_overflowed = sum(1 for r in results if r[1])
    return c


def gemm(x, w, x_zp: int, w_zp, acc: Accumulator, n_cols: int | None = None):
    """(10) ``acc[m][n] = ovf-sum_k (x[m][k] - x_zp) * (w[k][n] - w_zp[n])``.

    ``w_zp``: an int or a list with one entry per column; ``n_cols`` gives N when K = 0.
    Returns (values, Counters).
    """
    M = len(x)
    K = len(w)
    N = len(w[0]) if K else n_cols or 0
    zw = w_zp if isinstance(w_zp, list) else [w_zp] * N
    values, results = [], []
    for m in range(M):
        row = []
        for n in range(N):
            prods = [(x[m][k] - x_zp) * (w[k][n] - zw[n]) for k in range(K)]
            r = accumulate(prods, acc, detail=True)
            results.append(r)
            row.append(r[0])
        values.append(row)
    return values, _counters(results, M * N * K, acc.track_partials)


def conv2d(
    x,
    w,
    stride,
    pads,
    dilation,
    groups: int,
    x_zp: int,
    w_zp,
    acc: Accumulator,
    x_shape: tuple[int, int, int, int],
    w_shape: tuple[int, int, int, int],
):
    """(12) Direct convolution, no im2col: for each output, products in ``(c, i, j)`` order;
    positions outside the input read ``x_zp``. ``pads`` = (top, left, bottom, right)."""
    N, C, H, W = x_shape
    F, Cg, kh, kw = w_shape
    sh, sw = stride
    dh, dw = dilation
    pt, pl, pb, pr = pads
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    Fg = F // groups
    zw = w_zp if isinstance(w_zp, list) else [w_zp] * F
    out, results = [], []
    for n in range(N):
        planes = []
        for f in range(F):
            g = f // Fg
            plane = []
            for oh in range(ho):
                line = []
                for ow in range(wo):
                    prods = []
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                inside = 0 <= ih < H and 0 <= iw < W
                                xv = x[n][g * Cg + c][ih][iw] if inside else x_zp
                                prods.append((xv - x_zp) * (w[f][c][i][j] - zw[f]))
                    r = accumulate(prods, acc, detail=True)
                    results.append(r)
                    line.append(r[0])
                plane.append(line)
            planes.append(plane)
        out.append(planes)
    return out, _counters(results, N * F * ho * wo * Cg * kh * kw, acc.track_partials)


def gemm_per_sample_shift(
    x,
    w,
    groups: int,
    shifts,
    x_zp: int,
    w_zp,
    group_acc: Accumulator,
    final_acc: Accumulator,
    mode: str,
    draws=None,
    n_cols: int | None = None,
):
    """(13)-(14) Per-sample-shift accumulation: group g's products ``k in [g*Kg, (g+1)*Kg)``
    are reduced on ``group_acc``, the result shifted by ``shifts[g]`` with ``mode`` (stochastic
    draws ``draws[g][m][n]``), and the shifted values summed in group order on ``final_acc``.

    Returns (values, group Counters, final Counters)."""
    M, K = len(x), len(w)
    N = len(w[0]) if K else n_cols or 0
    Kg = K // groups
    zw = w_zp if isinstance(w_zp, list) else [w_zp] * N
    group_results, final_results, values = [], [], []
    for m in range(M):
        row = []
        for n in range(N):
            shifted = []
            for g in range(groups):
                ks = range(g * Kg, (g + 1) * Kg)
                r = accumulate(
                    [(x[m][k] - x_zp) * (w[k][n] - zw[n]) for k in ks], group_acc, detail=True
                )
                group_results.append(r)
                u = None if draws is None else int(draws[g][m][n])
                shifted.append(ref.round_shift(r[0], int(shifts[g]), mode, u))
            r = accumulate(shifted, final_acc, detail=True)
            final_results.append(r)
            row.append(r[0])
        values.append(row)
    return (
        values,
        _counters(group_results, M * N * K, group_acc.track_partials),
        _counters(final_results, M * N * groups, final_acc.track_partials),
    )


def dot_pairs_sat16(x, w, x_zp: int, w_zp: int) -> tuple[int, int]:
    """(16) One output of ``Isa.AVX2`` (onnxruntime's ``vpmaddubsw`` kernels): raw uint8
    ``x[k]`` and int8 ``w[k]`` in the kernel's packed K order. Returns ``(D, saturations)``:

    ``D = sum_j sat16(x[2j] w[2j] + x[2j+1] w[2j+1]) - w_zp * sum_k x[k] - x_zp * sum_k w[k]
    + K x_zp w_zp`` (an odd K pairs the last product with 0), the value the int32 accumulator
    receives, and the number of pairs that left int16."""
    x, w = [int(v) for v in x], [int(v) for v in w]
    K = len(x)
    total = sats = 0
    for j in range(0, K, 2):
        p = x[j] * w[j] + (x[j + 1] * w[j + 1] if j + 1 < K else 0)
        q = ref.saturate(p, 16, True)
        sats += q != p
        total += q
    return total - w_zp * sum(x) - x_zp * sum(w) + K * x_zp * w_zp, sats


def gemm_pairs_sat16(x, w, x_zp: int, w_zp, acc: Accumulator, n_cols: int | None = None):
    """(16) ``Isa.AVX2`` GEMM on a wrapping accumulator: ``acc[m][n] = wrap(D[m][n])`` with
    ``D`` from :func:`dot_pairs_sat16` over row ``m`` of ``x`` and column ``n`` of ``w``.
    Returns ``(values, Counters)`` (final extremes of ``D``, wraps, pair saturations)."""
    if acc.overflow is not Overflow.WRAP:
        raise ValueError("eq. 16 is defined on a wrapping accumulator")
    N = n_cols if n_cols is not None else (len(w[0]) if len(w) else 0)
    zps = list(w_zp) if isinstance(w_zp, (list, tuple)) else [w_zp] * N
    lo, _ = ref.format_range(acc.bits, acc.signed)
    values, ds, c = [], [], Counters(macs=len(x) * N * (len(w)))
    for row in x:
        out = []
        for n in range(N):
            d, s = dot_pairs_sat16(row, [w[k][n] for k in range(len(w))], x_zp, zps[n])
            ds.append(d)
            c.pair_saturations += s
            c.outputs_pair_saturated += s > 0
            wraps = abs((d - lo) // (1 << acc.bits))
            c.overflow_events += wraps
            c.outputs_overflowed += wraps > 0
            out.append(ref.wrap(d, acc.bits, acc.signed))
        values.append(out)
    if ds:
        c.final_min, c.final_max = min(ds), max(ds)
    return values, c
