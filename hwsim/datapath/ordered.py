"""Ordered (hardware-order) accumulation with the accumulators held in vector registers.

A saturating accumulator must add its products one by one in the documented reduction order
(``docs/numerics.md``, eq. 10-12): no exact-sum shortcut applies to a row that can reach a
rail. These kernels make that sequential recurrence cheap by running it for a block of
:data:`ROWS` output rows x :data:`LANES` output columns at once: one vector of lanes per row,
every lane its own output, so each product of the order is one multiply and one saturating add
per row on a whole panel of outputs. The block's accumulators and event counters live in a
small stack buffer of fixed size (:func:`_local`), which LLVM keeps in registers across the
whole reduction (heap arrays would be loaded and stored after every product).

Weights reach the kernels laid out once per call in hardware order, ``weh[g, t, n]`` the
effective weight of product ``t`` and output ``n`` (columns past N hold 0: a zero product never
saturates nor counts an event), so every product's weights are one contiguous vector.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 32  # outputs per panel: 32 int16 lanes, one 512-bit or two 256-bit vectors
ROWS = 8  # output rows per block: ROWS x LANES accumulators and counters stay in registers
_BLOCK = ROWS * LANES
ROWS32 = 4  # rows per block of the int32-lane kernel (a panel is two vectors per row)
_BLOCK32 = ROWS32 * LANES


@intrinsic
def _sadd16(typingctx, a, b):
    """int16 ``clamp(a + b, -2^15, 2^15 - 1)`` (LLVM ``sadd.sat``: ``vpaddsw`` on x86)."""
    if a != types.int16 or b != types.int16:
        return None
    sig = types.int16(types.int16, types.int16)

    def codegen(context, builder, signature, args):
        i16 = ir.IntType(16)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(i16, [i16, i16]), "llvm.sadd.sat.i16"
        )
        return builder.call(fn, args)

    return sig, codegen


@intrinsic
def _local(typingctx, n, dtype):
    """A pointer to ``n`` (a literal int) elements of ``dtype`` on the stack of the calling
    function: a fixed-size buffer that does not escape, which LLVM promotes to registers."""
    if not isinstance(n, types.IntegerLiteral) or not isinstance(dtype, types.NumberClass):
        return None
    size = n.literal_value
    elem = dtype.instance_type
    sig = types.CPointer(elem)(n, dtype)

    def codegen(context, builder, signature, args):
        return cgutils.alloca_once(builder, context.get_value_type(elem), size=size)

    return sig, codegen


@njit(cache=True, inline="always")
def _sat16_run(abuf, weh, order, g, n0, k0, k1, acc, ev, one):
    """Products ``k0 .. k1`` of the order into ``acc`` (ROWS, LANES) int16, saturating after
    every add; ``ev`` counts the adds whose exact sum left int16 (the wrapped and the
    saturated sums then differ: ``|s + p| <= 2^16 - 2``). ``abuf[t, r]`` holds ``x - zx`` of
    product ``t`` of row ``r``. ``one`` is 1, an argument rather than a constant so that LLVM
    keeps the count a select, which x86 turns into one masked add (with a constant 1 it becomes
    ``ev - sext(mask)``: a mask-to-vector move and a subtraction)."""
    for kk in range(k0, k1):
        k = order[kk]
        wr = weh[g, kk, n0 : n0 + LANES]  # a view: lane indices provably in range
        for r in range(ROWS):
            a = abuf[r, k]
            for n in range(LANES):
                p = np.int16(a * wr[n])
                c = _sadd16(acc[r, n], p)
                e = ev[r, n]
                ev[r, n] = np.int16(e + one) if np.int16(acc[r, n] + p) != c else e
                acc[r, n] = c


BLOCKS_PER_TASK = 8  # row blocks per parallel task: one gather buffer per task


@njit(cache=True, parallel=True)
def ordered_sat16(x, zx, weh, order, exact, lim, tile, one, out, layout, counts):
    """A signed 16-bit saturating accumulator in hardware order on ``(x - zx) @ we``, for every
    row whose bound can reach the register's range, written straight into ``out``:
    ``acc <- clamp16(acc + p_t)`` for ``t = 0 .. K-1`` (``tile`` = 0), or per tile of ``tile``
    products a tile register ``t <- clamp16(t + p)`` added at the tile's end,
    ``acc <- clamp16(acc + t)`` (``Accumulator.tile`` semantics, tile register 16-bit).

    ``x`` (G, M, K) operand in its own dtype, ``zx`` its zero point (int64); ``weh`` (G, K, Np)
    int16 effective weights ``w - zw`` in hardware order (product ``t`` reads column
    ``order[t]`` of ``x`` and row ``t`` of ``weh``), ``Np`` a multiple of :data:`LANES`,
    columns past N zero; ``exact`` (G, M, N) int32 the exact sums; ``lim`` (G,) int64: a row of
    group ``g`` with ``sum_k |x - zx| <= lim[g]`` cannot reach the range (its bound
    ``sum_k |x - zx| * max|we|`` fits int16: ``lim[g] = 32767 // max|we[g]|``), so its values
    are its exact sums and it has no events. ``one``: int16 1 (see :func:`_sat16_run`).
    Preconditions (the caller's): ``K < 2^14`` (int16 event counters: at most 2K events per
    output), every ``x - zx`` and every product fits int16.

    Rows run in blocks of :data:`ROWS` consecutive rows of one group; a block runs the
    ordered reduction if any of its rows can reach the range, else copies its exact sums (the
    ordered reduction of a row that cannot reach the range is its exact sum with no events,
    so the choice changes nothing but time). A first parallel pass picks the blocks (and
    copies the others), a second shares the picked ones evenly among the threads. Value
    ``(g, m, n)`` goes to the flat int64 ``out[g*sg + (m // P)*sa + (m % P)*sb + n*sn]`` with
    ``layout = (sg, sa, sb, sn, P)`` (a GEMM's (G, M, N) array, or a convolution's NCHW
    output). Per block ``counts[b] =
    (events, outputs with an event, tile-register events, min exact, max exact)``; events
    count every clamped add, tile-register adds and accumulator adds alike.
    """
    G, M, K = x.shape
    N = exact.shape[2]
    npan = weh.shape[2] // LANES
    nbm = (M + ROWS - 1) // ROWS
    nb = G * nbm
    run = np.zeros(nb, np.bool_)
    for b in prange(nb):  # which blocks run; the others' exact sums; every block's extremes
        g = b // nbm
        m0 = (b - g * nbm) * ROWS
        nr = min(ROWS, M - m0)
        for r in range(nr):
            xr = x[g, m0 + r]
            xabs = 0
            for k in range(K):
                xabs += abs(np.int64(xr[k]) - zx)
            if xabs > lim[g]:
                run[b] = True
                break
        lo = np.int64(exact[g, m0, 0])
        hi = lo
        for r in range(nr):
            base = _row_base(g, m0 + r, layout)
            for n in range(N):
                v = np.int64(exact[g, m0 + r, n])
                lo = min(lo, v)
                hi = max(hi, v)
                if not run[b]:
                    out[base + n * layout[3]] = v
        counts[b, 3] = lo
        counts[b, 4] = hi
    todo = np.flatnonzero(run)  # the blocks that run, shared evenly among the threads
    for task in prange((todo.size + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK):
        abuf = np.empty((ROWS, K), np.int16)
        for i in range(task * BLOCKS_PER_TASK, min(todo.size, (task + 1) * BLOCKS_PER_TASK)):
            b = todo[i]
            g = b // nbm
            m0 = (b - g * nbm) * ROWS
            nr = min(ROWS, M - m0)
            for r in range(ROWS):  # a short block repeats its last row (stored once)
                xr = x[g, m0 + min(r, nr - 1)]
                ar = abuf[r]
                for k in range(K):
                    ar[k] = np.int16(np.int64(xr[k]) - zx)
            _sat16_block(abuf, weh, order, g, m0, nr, N, npan, tile, one, out, layout, counts[b])


@njit(cache=True, inline="always")
def _row_base(g, m, layout):
    """The flat index in ``out`` of value ``(g, m, 0)`` (see :func:`ordered_sat16`)."""
    q = m // layout[4]
    return g * layout[0] + q * layout[1] + (m - q * layout[4]) * layout[2]


@njit(cache=True, inline="always")
def _sat16_block(abuf, weh, order, g, m0, nr, N, npan, tile, one, out, layout, cnt):
    """One block of :func:`ordered_sat16`, panel by panel: its values to ``out`` and its event
    totals to ``cnt[0:3]``."""
    K = abuf.shape[1]
    events = 0
    hit = 0
    tevents = 0
    for pan in range(npan):
        n0 = pan * LANES
        s = carray(_local(_BLOCK, np.int16), (ROWS, LANES))
        ev = carray(_local(_BLOCK, np.int16), (ROWS, LANES))
        tev = carray(_local(_BLOCK, np.int16), (ROWS, LANES))
        s[:] = 0
        ev[:] = 0
        tev[:] = 0
        if tile == 0:
            _sat16_run(abuf, weh, order, g, n0, 0, K, s, ev, one)
        else:
            t = carray(_local(_BLOCK, np.int16), (ROWS, LANES))
            for k0 in range(0, K, tile):
                t[:] = 0
                _sat16_run(abuf, weh, order, g, n0, k0, min(K, k0 + tile), t, tev, one)
                for r in range(ROWS):
                    for n in range(LANES):
                        c = _sadd16(s[r, n], t[r, n])
                        e = ev[r, n]
                        ev[r, n] = np.int16(e + one) if np.int16(s[r, n] + t[r, n]) != c else e
                        s[r, n] = c
        for r in range(nr):
            base = _row_base(g, m0 + r, layout)
            for n in range(min(LANES, N - n0)):
                out[base + (n0 + n) * layout[3]] = s[r, n]
                e = np.int64(ev[r, n]) + np.int64(tev[r, n])
                events += e
                hit += e != 0
                tevents += tev[r, n]
    cnt[0] = events
    cnt[1] = hit
    cnt[2] = tevents


@njit(cache=True, inline="always")
def _block_rows(rows, blocks, b, M, ms):
    """Fill ``ms`` with the rows (within their group) of block ``b``, a short block repeating
    its last row (written once); returns ``(group, rows in the block)``."""
    i0 = blocks[b, 0]
    nr = blocks[b, 1]
    g = rows[i0] // M
    for r in range(ms.shape[0]):
        ms[r] = rows[i0 + min(r, nr - 1)] - g * M
    return g, nr


@njit(cache=True, inline="always")
def _store(vals, counts, task, g, ms, nr, n0, s, ev, tev):
    """Write a block's values to ``vals[g, ms[r], n0 + n]`` (columns < N) and its event totals
    to ``counts[task]``: (events, outputs with an event, tile-register events)."""
    N = vals.shape[2]
    events = 0
    hit = 0
    tevents = 0
    for r in range(nr):
        m = ms[r]
        for n in range(min(LANES, N - n0)):
            vals[g, m, n0 + n] = s[r, n]
            e = np.int64(ev[r, n]) + np.int64(tev[r, n])
            events += e
            hit += e != 0
            tevents += tev[r, n]
    counts[task, 0] = events
    counts[task, 1] = hit
    counts[task, 2] = tevents


@njit(cache=True, inline="always")
def _clamp_run(x, zx, weh, order, g, ms, n0, k0, k1, acc, ev, lo, hi):
    """Products ``k0 .. k1`` of the order into ``acc`` (ROWS32, LANES) int32 for the rows
    ``ms`` of group ``g``, a register of range ``[lo, hi]`` (int32): every ``acc + p`` is an
    exact int32 (the caller's precondition), then clamped; ``ev`` counts the clamps."""
    for kk in range(k0, k1):
        k = order[kk]
        wr = weh[g, kk, n0 : n0 + LANES]
        for r in range(ROWS32):
            a = np.int32(np.int64(x[g, ms[r], k]) - zx)
            for n in range(LANES):
                v = np.int32(acc[r, n] + a * wr[n])
                c = min(max(v, lo), hi)
                ev[r, n] = np.int32(ev[r, n] + (v != c))
                acc[r, n] = c


@njit(cache=True, parallel=True)
def ordered_sat32(x, zx, weh, order, rows, blocks, tile, lo, hi, vals, counts):
    """A saturating register of range ``[lo, hi]`` (tile register the same) in hardware order,
    in int32 lanes, for the rows ``rows`` in blocks of :data:`ROWS32` (``blocks``): ``acc <-
    clamp(acc + p)`` per product; their values to ``vals``, events per task to ``counts``.

    ``weh`` (G, K, Np) int32; ``lo`` / ``hi`` int32. Preconditions (the caller's): every
    ``x - zx`` and product fits int32, and ``max(|lo|, |hi|) + max|p|`` and ``2 max(|lo|,
    |hi|)`` (a tile added to the accumulator) stay below 2^31, so each sum is exact before its
    clamp; ``2K < 2^31`` (int32 event counters).
    """
    G, M, K = x.shape
    npan = weh.shape[2] // LANES
    for task in prange(blocks.shape[0] * npan):
        b = task // npan
        n0 = (task - b * npan) * LANES
        ms = carray(_local(ROWS32, np.int64), (ROWS32,))
        g, nr = _block_rows(rows, blocks, b, M, ms)
        s = carray(_local(_BLOCK32, np.int32), (ROWS32, LANES))
        ev = carray(_local(_BLOCK32, np.int32), (ROWS32, LANES))
        tev = carray(_local(_BLOCK32, np.int32), (ROWS32, LANES))
        s[:] = 0
        ev[:] = 0
        tev[:] = 0
        if tile == 0:
            _clamp_run(x, zx, weh, order, g, ms, n0, 0, K, s, ev, lo, hi)
        else:
            t = carray(_local(_BLOCK32, np.int32), (ROWS32, LANES))
            for k0 in range(0, K, tile):
                t[:] = 0
                _clamp_run(x, zx, weh, order, g, ms, n0, k0, min(K, k0 + tile), t, tev, lo, hi)
                for r in range(ROWS32):
                    for n in range(LANES):
                        v = np.int32(s[r, n] + t[r, n])
                        c = min(max(v, lo), hi)
                        ev[r, n] = np.int32(ev[r, n] + (v != c))
                        s[r, n] = c
        _store(vals, counts, task, g, ms, nr, n0, s, ev, tev)


def row_blocks(rows: np.ndarray, M: int, size: int) -> np.ndarray:
    """(nb, 2) int64: blocks of at most ``size`` consecutive entries of ``rows`` (sorted flat
    indices into G*M) that never span two groups; each ``(first index, count)``."""
    if rows.size == 0:
        return np.zeros((0, 2), np.int64)
    grp = rows // M
    cut = np.flatnonzero(np.diff(grp)) + 1
    first = np.concatenate([[0], cut])
    length = np.diff(np.concatenate([first, [rows.size]]))
    nblk = -(-length // size)
    seg = np.repeat(np.arange(first.size), nblk)
    within = np.arange(seg.size) - np.repeat(np.cumsum(nblk) - nblk, nblk)
    start = first[seg] + within * size
    count = np.minimum(size, first[seg] + length[seg] - start)
    return np.stack([start, count], axis=1).astype(np.int64)


def hardware_weights(we: np.ndarray, order: np.ndarray, dtype) -> np.ndarray:
    """``weh[g, t, n] = we[g, order[t], n]`` in ``dtype``, N padded with zeros to a multiple of
    :data:`LANES` (C order). ``we`` (G, K, N): effective weights that fit ``dtype``."""
    G, K, N = we.shape
    out = np.zeros((G, K, -(-max(N, 1) // LANES) * LANES), dtype)
    out[:, :, :N] = we[:, order]
    return out
