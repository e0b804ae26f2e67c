"""Integer GEMM on an emulated accumulator, and the per-sample-shift accumulation.

Dispatch (eq. 10-12 of ``docs/numerics.md``): the exact sums come from the fastest exact engine
(:mod:`hwsim.datapath.engines`). A wrapping accumulator's result is the exact sum wrapped once.
A saturating accumulator equals the exact sum for every output row whose prefix bound
``sum_k |x_k - zx| * max|w - zw|`` fits its range (no prefix can reach the rails); the other rows
run the ordered kernel in the configured reduction order. Tracking partial sums runs the ordered
kernel on every row. A tile register of its own width (``Accumulator.tile_bits``) narrows the
bound a row must fit to skip the ordered kernel to both ranges; under WRAP it makes the result
order-dependent (each tile wraps on its own), and rows whose bound leaves the tile range run the
int64 ordered kernel (the int16/int32 lane kernels need the tile register as wide as the
accumulator).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hwsim.datapath import partials
from hwsim.datapath.config import AccResult, Accumulator, Counters, Operand, ReductionOrder
from hwsim.datapath.engines import exact_sums
from hwsim.datapath.isa import Isa, pairs_saturate, resolve
from hwsim.datapath.kernels import ordered_reduce, ordered_track32, pair_sat16, row_abs_sums
from hwsim.datapath.ordered import (
    LANES,
    ROWS,
    ROWS32,
    hardware_weights,
    ordered_sat16,
    ordered_sat32,
    row_blocks,
)
from hwsim.numerics import (
    IntFormat,
    Overflow,
    RoundingMode,
    as_mode,
    check_in_range,
    check_integer_array,
    round_shift,
    wrap,
)

EXACT_LIMIT = 1 << 62  # |exact sum| bound that keeps every int64 intermediate exact


def check_operand(q, op: Operand, name: str, ndim: int) -> np.ndarray:
    """Validate an operand array: integer dtype, ``ndim`` dimensions, values within its format."""
    arr = check_integer_array(q, name)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    op.format.check(arr, name)
    return arr


def check_accumulable(K: int, xop: Operand, wop: Operand, name: str = "K") -> None:
    """Reject reductions whose exact sum could reach 2^62 (the emulator's int64 headroom)."""
    if K * xop.max_abs * wop.max_abs >= EXACT_LIMIT:
        raise ValueError(
            f"{name}={K} products of {xop.format} x {wop.format} can reach 2^62; split the "
            "reduction"
        )


def _extremes(a: np.ndarray):
    return (int(a.min()), int(a.max())) if a.size else (None, None)


def _wrap_counts(exact: np.ndarray, fmt: IntFormat) -> np.ndarray:
    """Net wrap-arounds per output, ``|floor((exact - min) / 2^bits)|``."""
    if fmt.bits == 64:
        return (exact < 0).astype(np.int64) if not fmt.signed else np.zeros_like(exact)
    return np.abs((exact - fmt.min) >> fmt.bits)


def _wrapped(exact: np.ndarray, fmt: IntFormat, counters: Counters) -> np.ndarray:
    """A wrapping accumulator's values from the exact sums; records the net wraps in
    ``counters`` (whose final extremes are already set)."""
    if exact.size == 0 or (fmt.min <= counters.final_min and counters.final_max <= fmt.max):
        return exact if fmt.dtype != np.uint64 else exact.astype(np.uint64)
    exact = exact.astype(np.int64, copy=False)
    wraps = _wrap_counts(exact, fmt)
    counters.overflow_events = int(wraps.sum())
    counters.outputs_overflowed = int(np.count_nonzero(wraps))
    return wrap(exact, fmt)


def reduce_batched(
    x3,
    w3,
    xop: Operand,
    wop: Operand,
    w_zp,
    acc: Accumulator,
    engine: str = "auto",
    order: np.ndarray | None = None,
    max_x: int | None = None,
    isa: Isa = Isa.EXACT,
    out: np.ndarray | None = None,
):
    """Accumulate ``(x3 - zx) @ (w3 - w_zp)`` per batch on accumulator ``acc``.

    ``x3`` (G, M, K) and ``w3`` (G, K, N) are validated operands; ``w_zp`` is a scalar or
    (G, 1, N). ``order`` (length K) lists the columns in hardware reduction order (identity when
    None); it matters only to the ordered kernels, since exact sums are order-free. ``max_x``
    may pass a known ``max |x3 - zx|``. Returns ``(values (G, M, N), Counters)``; values are
    int64, or int32 when every value fits it: the exact engine's int32 when every value is an
    exact, unchanged sum, and a saturating register run by the int32-lane kernel
    (:func:`_lanes`); None when written to ``out`` (below).

    ``isa``: with :attr:`Isa.AVX2` and uint8 x int8 operands (:func:`pairs_saturate`), the sums
    are those of onnxruntime's ``vpmaddubsw`` kernels (eq. 16): adjacent *columns* of ``x3`` /
    rows of ``w3`` (the packed K order, which for a convolution is the window-major unfolding)
    are raw product pairs clamped to int16. That kernel accumulates in a wrapping register, so
    the accumulator must wrap; partial sums are not tracked.

    ``out``: a C-ordered int64 (I, G*N, P) array with ``I*P = M`` (a convolution's NCHW output,
    row ``m = i*P + p`` of group ``g`` and column ``n`` at ``out[i, g*N + n, p]``). Where the
    int16-lane kernel runs (:func:`_lanes` 16), it writes the values there and the returned
    values are None; elsewhere ``out`` is left alone.
    """
    G, M, K = x3.shape
    N = w3.shape[2]
    fmt = acc.format
    pairs = pairs_saturate(resolve(isa), xop.format, wop.format)
    if pairs and (acc.overflow is not Overflow.WRAP or acc.track_partials):
        raise ValueError(
            "isa 'avx2' emulates onnxruntime's vpmaddubsw kernels: acc.overflow must be 'wrap' "
            f"and acc.track_partials False (no per-product partial sums); got {acc.bits}-bit "
            f"'{acc.overflow.value}', track_partials={acc.track_partials}"
        )
    # a wrapping tile register of its own width (eq. 10): the values are the sum of the wrapped
    # tiles, which the int64 kernel holds exactly while ceil(K / R) * 2^tile_bits < 2^62
    split = acc.overflow is Overflow.WRAP and acc.tile > 0 and acc.tile_bits is not None
    if pairs and split:
        raise ValueError("isa 'avx2' has no tile register: acc.tile_bits must equal acc.bits")
    if split and -(-K // acc.tile) << acc.tile_bits >= EXACT_LIMIT:
        raise ValueError(
            f"{-(-K // acc.tile)} tiles of {acc.tile_bits}-bit wrapped partial sums can reach "
            "2^62; narrow tile_bits or lengthen the tiles"
        )
    exact = exact_sums(x3, w3, xop.zero_point, w_zp, xop.format, wop.format, engine, max_x)
    counters = Counters(macs=G * M * N * K)
    if pairs and exact.size and K > 1:
        exact = exact.astype(np.int64) + pair_correction(x3, w3, counters)
    saturating = acc.overflow is Overflow.SATURATE
    known = None
    if acc.track_partials and K and partials.applies(xop.format, wop.format):
        # the extremes from block bounds; the ordered kernels then run only where values need
        # them, as without tracking (the exact partial sums do not depend on the overflow rule)
        known = _extremes(exact)  # the last partial sums
        counters.final_min, counters.final_max = known
        counters.partial_min, counters.partial_max = partials.partial_extremes(
            x3, w3, int(xop.zero_point), w_zp, order, acc.tile, known
        )
        acc = replace(acc, track_partials=False)
    lanes, we, wmax = 0, None, None
    if (saturating or split) and exact.size and K:
        we = _effective_weights(w3, w_zp)  # w - zw, int64 (G, K, N), once per call
        wmax = np.abs(we).max(axis=(1, 2))  # (G,)
        lanes = _lanes(x3, xop, int(wmax.max()), acc)
    if saturating and lanes == 16:
        # the int16-lane kernel picks its rows itself (and finds the final extremes)
        return _ordered_lanes16(x3, we, wmax, xop, order, acc, exact, counters, out), counters
    if known is None:
        counters.final_min, counters.final_max = _extremes(exact)
    rows = np.zeros(0, np.int64)
    if acc.track_partials and K:
        rows = np.arange(G * M, dtype=np.int64)
    elif (saturating or split) and exact.size and K:
        xabs = np.empty((G, M), np.int64)
        row_abs_sums(x3, np.int64(xop.zero_point), xabs)
        bound = xabs * wmax[:, None]  # >= |every partial sum| of the row, in any order
        tfmt = acc.tile_format  # the tile register's range (that of the accumulator by default)
        safe = (bound <= tfmt.max) & (-bound >= tfmt.min)
        if saturating:
            safe &= (bound <= fmt.max) & (-bound >= fmt.min)
        rows = np.flatnonzero(~safe.ravel()).astype(np.int64)
    values = exact
    if rows.size and lanes:  # 32: the int32-lane kernel
        return _ordered_lanes(x3, we, xop, rows, order, acc, exact, counters), counters
    if rows.size:
        vals, events, tevents, pmin, pmax = _ordered(x3, w3, xop, w_zp, rows, order, acc)
        if acc.track_partials:
            counters.partial_min = _extremes(pmin)[0]
            counters.partial_max = _extremes(pmax)[1]
        if split:
            return _split_wrapped(exact, vals, events, tevents, rows, fmt, counters)
        if saturating:
            counters.tile_overflow_events = int(tevents.sum())
            if rows.size == G * M:
                values = vals
            else:
                sel = np.zeros(G * M, bool)
                sel[rows] = True
                values = np.where(sel.reshape(G, M, 1), vals, exact)
            counters.overflow_events = int(events.sum())
            counters.outputs_overflowed = int(np.count_nonzero(events))
    if saturating:
        return values, counters
    return _wrapped(exact, fmt, counters), counters


def _split_wrapped(exact, vals, events, tevents, rows, fmt: IntFormat, counters: Counters):
    """A wrapping accumulator fed by a tile register of its own width (eq. 10): the rows in
    ``rows`` hold the sums of their wrapped tiles in ``vals`` (their tile wraps in ``tevents``);
    the others never wrap a tile, so their sum is exact. The accumulator wraps that sum once."""
    G, M, N = exact.shape
    sel = np.zeros(G * M, bool)
    sel[rows] = True
    sel = sel.reshape(G, M, 1)
    total = np.where(sel, vals, exact.astype(np.int64, copy=False))
    acc_wraps = _wrap_counts(total, fmt) if total.size else np.zeros_like(total)
    per_output = acc_wraps + np.where(sel, tevents, 0)
    counters.tile_overflow_events = int(tevents.sum())
    counters.overflow_events = int(per_output.sum())
    counters.outputs_overflowed = int(np.count_nonzero(per_output))
    return wrap(total, fmt), counters


def pair_correction(x3, w3, counters: Counters) -> np.ndarray:
    """``sum_j sat16(p_j) - p_j`` over the raw pairs of eq. 16 (int64, (G, M, N)); records the
    pair saturations in ``counters``."""
    G, M, K = x3.shape
    N = w3.shape[2]
    xu = x3.astype(np.uint8, copy=False)
    ws = w3.astype(np.int8, copy=False)
    wmax = np.abs(ws.astype(np.int32)).max(axis=(1, 2))  # (G,)
    lim = np.where(wmax == 0, 1 << 20, 32767 // np.maximum(wmax, 1)).astype(np.int32)
    corr = np.zeros((G, M, N), np.int64)
    sats = np.zeros((G, M, N), np.int64)
    pair_sat16(xu, ws, lim, corr, sats)
    counters.pair_saturations = int(sats.sum())
    counters.outputs_pair_saturated = int(np.count_nonzero(sats))
    return corr


def _effective_weights(w3, w_zp) -> np.ndarray:
    """``w3 - w_zp`` as a C-ordered int64 (G, K, N) array."""
    return np.ascontiguousarray(w3.astype(np.int64) - np.asarray(w_zp, np.int64))


def _lanes(x3, xop: Operand, wmax: int, acc: Accumulator) -> int:
    """The lane width (16 or 32; 0: none) of the register-blocked ordered kernel
    (:mod:`hwsim.datapath.ordered`) that runs this saturating accumulator without tracking,
    its tile register of its width: 16 for a signed 16-bit one whose products fit int16 and
    ``K < 2^14`` (int16 event counters); 32 where every sum of the register and a product (or
    a tile) is an exact int32 before its clamp. ``wmax``: the largest ``|w - zw|``."""
    if not (
        acc.overflow is Overflow.SATURATE
        and acc.tile_bits is None
        and not acc.track_partials
        and x3.dtype.itemsize <= 2
    ):
        return 0
    pmax = xop.max_abs * wmax
    fmt = acc.format
    if fmt.bits == 16 and fmt.signed and x3.shape[2] < (1 << 14) and pmax <= (1 << 15) - 1:
        return 16
    rail = max(-fmt.min, fmt.max)
    if rail + max(pmax, rail) < (1 << 31) and 2 * x3.shape[2] < (1 << 31):
        return 32
    return 0


def _ordered_lanes16(x3, we, wmax, xop: Operand, order, acc, exact, counters, out):
    """The values of a 16-bit saturating accumulator run by the int16-lane kernel
    (:func:`hwsim.datapath.ordered.ordered_sat16`, which runs the rows whose bound can reach
    the range and copies the exact sums of the others), as int64 (G, M, N), or None when
    written to ``out`` (see :func:`reduce_batched`); records the events and the final
    extremes in ``counters``. ``we``: the effective weights ``w - zw`` (G, K, N), ``wmax``
    their largest magnitude per group (G,)."""
    G, M, K = x3.shape
    N = we.shape[2]
    order = np.arange(K, dtype=np.int64) if order is None else np.array(order, np.int64)
    weh = hardware_weights(we, order, np.int16)
    # a row with sum |x - zx| <= lim cannot reach int16 (its bound sum |x - zx| * wmax fits)
    lim = np.where(wmax > 0, acc.format.max // np.maximum(wmax, 1), np.int64(1) << 62)
    if out is None:
        values = np.empty((G, M, N), np.int64)
        flat, layout = values.reshape(-1), (M * N, 0, N, 1, max(M, 1))
    else:
        nimg, F, P = out.shape
        if out.dtype != np.int64 or not out.flags.c_contiguous or F != G * N or nimg * P != M:
            raise ValueError(f"out must be a C-ordered int64 (I, {G * N}, P) with I*P = {M}")
        values, flat, layout = None, out.reshape(-1), (N * P, F * P, 1, P, P)
    nb = G * -(-M // ROWS)
    counts = np.zeros((nb, 5), np.int64)
    ordered_sat16(
        x3,
        np.int64(xop.zero_point),
        weh,
        order,
        exact.astype(np.int32, copy=False),
        lim.astype(np.int64),
        acc.tile,
        np.int16(1),
        flat,
        np.array(layout, np.int64),
        counts,
    )
    events, hit, tevents = (int(c) for c in counts[:, :3].sum(axis=0))
    counters.overflow_events = events
    counters.outputs_overflowed = hit
    counters.tile_overflow_events = tevents
    counters.final_min, counters.final_max = int(counts[:, 3].min()), int(counts[:, 4].max())
    return values


def _ordered_lanes(x3, we, xop: Operand, rows, order, acc, exact, counters):
    """The values of a saturating accumulator run by the int32-lane register-blocked kernel
    (:func:`_lanes` 32; the int16 lanes run in :func:`_ordered_lanes16`) on the effective
    weights ``we`` (G, K, N): ``rows`` from the kernel, the others the exact sums; records the
    events in ``counters``."""
    G, M, K = x3.shape
    N = we.shape[2]
    order = np.arange(K, dtype=np.int64) if order is None else np.array(order, np.int64)
    weh = hardware_weights(we, order, np.int32)
    # int32 values (a register of at most 30 bits; the other rows' exact sums fit it too)
    if rows.size == G * M:
        values = np.empty((G, M, N), np.int32)
    else:
        values = exact.astype(np.int32)  # a copy: the kernel overwrites the ordered rows
    blocks = row_blocks(rows, M, ROWS32)
    counts = np.zeros((blocks.shape[0] * (weh.shape[2] // LANES), 3), np.int64)
    zx = np.int64(xop.zero_point)
    lo, hi = np.int32(acc.format.min), np.int32(acc.format.max)
    ordered_sat32(x3, zx, weh, order, rows, blocks, acc.tile, lo, hi, values, counts)
    events, hit, tevents = (int(c) for c in counts.sum(axis=0))
    counters.overflow_events = events
    counters.outputs_overflowed = hit
    counters.tile_overflow_events = tevents
    return values


def _ordered(x3, w3, xop: Operand, w_zp, rows, order, acc: Accumulator):
    """Run the ordered kernel on ``rows``: int32 lanes to track the partial sums of a wrapping
    accumulator whose partial sums fit int32 and whose tile register has its width (``vals``
    is then None: the exact sums are the values); int64 lanes otherwise. Returns ``(vals,
    events, tevents, pmin, pmax)``; ``tevents`` (the tile register's events) are part of
    ``events``."""
    G, M, K = x3.shape
    N = w3.shape[2]
    fmt = acc.format
    # a writable int64 copy: one kernel signature whether the caller's order is read-only
    order = np.arange(K, dtype=np.int64) if order is None else np.array(order, np.int64)
    # C order always: the ordered kernels are then compiled once per dtype, not per layout
    # (a fresh install's first run compiles fewer signatures)
    we = _effective_weights(w3, w_zp)
    zx = int(xop.zero_point)
    events = np.zeros((G, M, N), np.int64)
    tevents = np.zeros((G, M, N), np.int64)
    saturating = acc.overflow is Overflow.SATURATE
    split = acc.tile > 0 and acc.tile_bits is not None  # a tile register of its own width
    max_we = int(np.abs(we).max()) if we.size else 0
    max_xe = xop.max_abs
    track = acc.track_partials
    pmin = np.empty((G, M, N) if track else (0, 0, 0), np.int64)
    pmax = np.empty_like(pmin)
    if (
        track
        and not saturating
        and not split
        and x3.dtype.itemsize <= 2
        and K * max_xe * max_we < (1 << 31)
    ):  # wrap: the values are the exact sums; only the partial-sum extremes need the order
        ordered_track32(x3, np.int32(zx), we.astype(np.int32), rows, order, acc.tile, pmin, pmax)
        return None, events, tevents, pmin, pmax
    hi = min(fmt.max, (1 << 63) - 1)
    tfmt = acc.tile_format
    vals = np.empty((G, M, N), np.int64)
    ordered_reduce(
        x3,
        np.int64(zx),
        we,
        rows,
        order,
        fmt.min,
        hi,
        saturating,
        acc.tile,
        tfmt.min,
        min(tfmt.max, (1 << 63) - 1),
        min(tfmt.bits, 63),
        split and not saturating,
        fmt.signed,
        track,
        vals,
        events,
        tevents,
        pmin,
        pmax,
    )
    return vals, events, tevents, pmin, pmax


def weight_zero_point(wop: Operand, G: int, N: int, name: str):
    """The weight zero point as a scalar or (G, 1, N) from a per-output-channel vector."""
    zp = wop.zero_point
    if np.ndim(zp) == 0:
        return zp
    if zp.shape != (G * N,):
        raise ValueError(
            f"{name} zero_point has {zp.shape[0]} entries, expected {G * N} "
            "(one per output channel)"
        )
    return zp.reshape(G, 1, N)


def gemm(
    x,
    w,
    *,
    x_operand: Operand = Operand(),
    w_operand: Operand = Operand(),
    acc: Accumulator = Accumulator(),
    engine: str = "auto",
    isa="exact",
) -> AccResult:
    """Integer GEMM ``acc[m, n] = sum_k (x[m, k] - zx) * (w[k, n] - zw[n])`` on ``acc``.

    ``x``: (M, K) in ``x_operand.format``; ``w``: (K, N) in ``w_operand.format``, whose zero
    point is a scalar or a length-N vector. Any of M, K, N may be 0. ``engine`` forces an exact
    engine (``auto``, ``ort``, ``float32``, ``float64``, ``numba``); results never depend on it.
    ``isa`` (``exact``, ``avx2``, ``auto``; :mod:`hwsim.datapath.isa`): ``avx2`` sums uint8 x
    int8 operands as onnxruntime's x86 kernels without VNNI do, adjacent ``k`` pairs clamped
    to int16 (eq. 16), and counts those clamps.
    """
    x = check_operand(x, x_operand, "x", 2)
    w = check_operand(w, w_operand, "w", 2)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"x is (M, K) = {x.shape} but w is (K, N) = {w.shape}: K differs")
    check_accumulable(x.shape[1], x_operand, w_operand)
    wzp = weight_zero_point(w_operand, 1, w.shape[1], "w_operand")
    values, counters = reduce_batched(
        x[None], w[None], x_operand, w_operand, wzp, acc, engine, isa=resolve(isa)
    )
    v = values[0]
    return AccResult(v.astype(np.int64) if v.dtype == np.int32 else v, counters)


@dataclass
class PerSampleShiftResult:
    """Final accumulator values (M, N), the group stage's counters (all groups together) and
    the final stage's counters (``macs`` there counts the G additions per output)."""

    values: np.ndarray
    group_counters: Counters
    final_counters: Counters


def gemm_per_sample_shift(
    x,
    w,
    groups: int,
    shifts,
    *,
    x_operand: Operand = Operand(),
    w_operand: Operand = Operand(),
    group_acc: Accumulator = Accumulator(),
    final_acc: Accumulator = Accumulator(),
    rounding=RoundingMode.HALF_AWAY,
    s_max: int = 4,
    rng: np.random.Generator | None = None,
    engine: str = "auto",
) -> PerSampleShiftResult:
    """Per-sample-shift accumulation (the FQT paper's proposed hardware), eq. 13-14.

    K is split into ``groups`` equal consecutive groups (the samples of the batch, which is the
    reduction dimension of a weight-gradient GEMM). Group g is accumulated on its own
    ``group_acc``, ``P_g = acc_g(sum_{k in g} (x - zx)(w - zw))``; shifted right by
    ``shifts[g]`` in ``[0, s_max]`` with ``rounding``, ``R_g = round(P_g / 2^shifts[g])``; and the
    R_g are summed in group order on ``final_acc`` (sequential). Both stages count overflows.
    Stochastic rounding needs ``rng`` (draws in (g, m, n) C order).
    """
    x = check_operand(x, x_operand, "x", 2)
    w = check_operand(w, w_operand, "w", 2)
    M, K = x.shape
    if K != w.shape[0]:
        raise ValueError(f"x is (M, K) = {x.shape} but w is (K, N) = {w.shape}: K differs")
    N = w.shape[1]
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if K % groups:
        raise ValueError(f"K={K} is not divisible into groups={groups} equal groups")
    if not isinstance(s_max, (int, np.integer)) or not 0 <= s_max <= 62:
        raise ValueError(f"s_max must be an int in [0, 62], got {s_max!r}")
    shifts = check_integer_array(shifts, "shifts")
    if shifts.shape != (groups,):
        raise ValueError(f"shifts must have shape ({groups},), one per group; got {shifts.shape}")
    check_in_range(shifts, 0, s_max, "shifts", "[0, s_max]")
    if final_acc.order is not ReductionOrder.SEQUENTIAL:
        raise ValueError("final_acc sums the groups in group order; use order=SEQUENTIAL")
    if groups * (1 << (group_acc.bits - 1)) >= EXACT_LIMIT:
        raise ValueError(f"{groups} groups of {group_acc.bits}-bit partial sums can reach 2^62")
    mode = as_mode(rounding)
    Kg = K // groups
    check_accumulable(Kg, x_operand, w_operand, "K/groups")
    x3 = np.ascontiguousarray(x.reshape(M, groups, Kg).transpose(1, 0, 2))
    w3 = w.reshape(groups, Kg, N)
    wzp = weight_zero_point(w_operand, 1, N, "w_operand")
    partial, group_counters = reduce_batched(x3, w3, x_operand, w_operand, wzp, group_acc, engine)
    shifted = round_shift(partial.astype(np.int64), shifts[:, None, None], mode, rng)
    values, final_counters = accumulate_sequence(shifted, final_acc)
    return PerSampleShiftResult(values, group_counters, final_counters)


def accumulate_sequence(terms: np.ndarray, acc: Accumulator):
    """Sum ``terms`` (T, ...) over axis 0, in order, on ``acc`` (vectorised over the rest)."""
    fmt = acc.format
    T = terms.shape[0]
    counters = Counters(macs=int(terms.size))
    exact = terms.sum(axis=0, dtype=np.int64) if T else np.zeros(terms.shape[1:], np.int64)
    counters.final_min, counters.final_max = _extremes(exact)
    if acc.track_partials and T and exact.size:
        prefix = np.cumsum(terms, axis=0, dtype=np.int64)
        counters.partial_min, counters.partial_max = _extremes(prefix)
    if acc.overflow is Overflow.WRAP:
        return _wrapped(exact, fmt, counters), counters
    s = np.zeros(terms.shape[1:], np.int64)
    events = np.zeros(terms.shape[1:], np.int64)
    hi = min(fmt.max, (1 << 63) - 1)
    for t in terms:
        v = s + t
        s = np.clip(v, fmt.min, hi)
        events += v != s
    counters.overflow_events = int(events.sum())
    counters.outputs_overflowed = int(np.count_nonzero(events))
    return s, counters
