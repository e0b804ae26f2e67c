"""SCALE-Sim 3.0.0's memory system, reproduced: DRAM words and cycles of its double-buffered
scratchpads (``docs/cost.md``, eqs. M1-M12).

SCALE-Sim streams each operand's *demand matrix* (one row per cycle, built fold by fold in
``compute/systolic_compute_{os,ws,is}.py``) through a read buffer per operand and a write
buffer for the ofmap (``memory/double_buffered_scratchpad_mem.py``). In its default ``CALC``
bandwidth mode the read buffers are ``memory/read_buffer_estimate_bw.py``: every request hits
(no stalls) and the DRAM reads are the addresses collected into its 100 "sets" of
``floor(size / 100)`` words. That bookkeeping is an *epoch* rule (eq. M2): an address is
fetched when it was not requested since the start of the current epoch, and an epoch ends
after ``E = 50 * floor(size / 100)`` fetches. The write buffer (``memory/write_buffer.py``)
packs ofmap words into lines of ``arr_col`` words and drains half its size at a time (eq. M8).

Everything here is a function of the layer's shape, the array and the SRAM sizes (words are
SCALE-Sim's one-byte words: operand elements, whatever their width):

* operands whose every address is distinct in the order they are streamed (filters, GEMM
  ifmaps) in closed form (:func:`distinct_misses`, eq. M3-M4);
* convolution ifmaps (addresses repeat inside and across folds) by a vectorised walk over the
  demand order, chunk by chunk (:func:`conv_ifmap_misses`, eq. M5-M7b): numpy over the fold
  structure, never per cycle; it builds one block of whole periods (the same folds on the
  next samples) and walks it at each sample's offset, carrying the epoch across blocks, and
  sums the passes once they repeat;
* the write buffer by its drain events only (:func:`ofmap_writes`, eq. M8-M10);
* scalesim's "Total Cycles (incl. prefetch)" from the first prefetch and the last drain
  (:func:`memory_cost`, eq. M11-M12).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hwsim.cost.config import ConfigError
from hwsim.cost.dataflow import Dataflow, as_dataflow


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def epoch_words(sram_kb: float) -> int:
    """``E`` (eq. M1): fetches per epoch of SCALE-Sim's CALC-mode read buffer of ``sram_kb``
    KiB: 50 of its 100 sets of ``floor(bytes / 100)`` one-byte words."""
    return 50 * (sram_words(sram_kb) // 100)


@dataclass(frozen=True)
class ConvGeometry:
    """A convolution as SCALE-Sim addresses it (``compute/operand_matrix.py``,
    ``calc_ifmap_elem_addr``): an ``ih x iw x ch`` (padded, HWC) ifmap, ``fh x fw`` filters,
    one stride for both axes. ``ofmap = ceil((ifmap - filt + stride) / stride)``."""

    ih: int
    iw: int
    fh: int
    fw: int
    ch: int
    stride: int

    @property
    def oh(self) -> int:
        return _cdiv(self.ih - self.fh + self.stride, self.stride)

    @property
    def ow(self) -> int:
        return _cdiv(self.iw - self.fw + self.stride, self.stride)

    @property
    def all_valid(self) -> bool:
        """Every window lies inside the ifmap (no -1 addresses)."""
        return (self.oh - 1) * self.stride + self.fh <= self.ih and (
            self.ow - 1
        ) * self.stride + self.fw <= self.iw

    def distinct(self, Np: int) -> int:
        """Ifmap words the windows of ``Np`` output pixels touch (``Np / (oh * ow)`` samples,
        each its own ifmap)."""

        def touched(n_in, n_out, f):  # rows (columns) inside the ifmap some window covers
            if self.stride <= f:
                return min(n_in, (n_out - 1) * self.stride + f)
            return sum(max(0, min(f, n_in - o * self.stride)) for o in range(n_out))

        per = touched(self.ih, self.oh, self.fh) * touched(self.iw, self.ow, self.fw) * self.ch
        return per * _cdiv(Np, self.oh * self.ow)

    @property
    def reuse_gap(self) -> int:
        """Bound on the distance between two consecutive output pixels (row-major) whose
        windows share an ifmap word: ``ow`` if a word serves two output rows (from the last
        user in one row to the first in the next), 1 if only neighbours in a row share, else 0
        (eq. M7)."""
        if _cdiv(self.fh, self.stride) > 1:
            return self.ow
        return 1 if _cdiv(self.fw, self.stride) > 1 else 0

    def ifmap_addr(self, p: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Ifmap address of output pixel ``p`` and window element ``k`` (-1: outside the
        ifmap), broadcasting; SCALE-Sim's window order is (filter row, filter col, channel).
        ``addr = base(p) + off(k)`` (eq. M5): computed on the two small tables."""
        P = np.arange(int(np.max(p)) + 1)
        sample, P = np.divmod(P, self.oh * self.ow)
        orow, ocol = np.divmod(P, self.ow)
        irow, icol = orow * self.stride, ocol * self.stride
        Kx = np.arange(self.fh * self.fw * self.ch)
        crow, rest = np.divmod(Kx, self.fw * self.ch)
        ccol, cch = np.divmod(rest, self.ch)
        base = ((sample * self.ih + irow) * self.iw + icol) * self.ch
        off = (crow * self.iw + ccol) * self.ch + cch
        if int(base[-1]) + int(off[-1]) < _I32:  # int32 addresses: half the memory of the walk
            base, off = base.astype(np.int32), off.astype(np.int32)
        addr = base[p] + off[k]
        if self.all_valid:
            return addr
        ok = ((irow[p] + crow[k]) < self.ih) & ((icol[p] + ccol[k]) < self.iw)
        return np.where(ok, addr, -1)


_I32 = 2**31 - 1  # below this, addresses and positions are int32


def sram_words(kb: float) -> int:
    """The words an SRAM of ``kb`` KiB holds at SCALE-Sim's one byte a word:
    ``floor(1024 * kb)`` (a wider operand: pass ``kb * 8 / bits``)."""
    return math.floor(1024 * kb)


def check_sram_words(sram_kb) -> None:
    """SCALE-Sim's buffers need at least 100 words each (100 sets of ``floor(words / 100)``;
    with fewer its ofmap buffer cannot drain): raise a ConfigError naming the operand."""
    for name, kb in zip(("ifmap", "filter", "ofmap"), sram_kb, strict=True):
        if sram_words(kb) < 100:
            raise ConfigError(
                f"{name} SRAM holds {sram_words(kb)} operand words ({kb:g} KiB of "
                f"one-byte words); SCALE-Sim's memory system needs at least 100"
            )


def distinct_misses(n: int, reps: int, cnt: int, E: int) -> tuple[int, int]:
    """Fetches of ``reps`` passes over ``n`` distinct addresses (always in the same order, none
    of them fetched in the current epoch) under the epoch rule, entering with ``cnt`` fetches
    in the current epoch; returns (fetches, ``cnt`` after). Eq. M3-M4."""
    if n == 0 or reps == 0:
        return 0, cnt
    if n >= E:  # every epoch ends before any address comes back: everything is fetched
        total = n * reps
        return total, (cnt + total) % E
    if cnt + n < E:  # the first pass fits in the epoch, the others hit
        return n, cnt + n
    after = reps * n - (E - cnt)  # accesses after the epoch ends in the first pass
    tail = min(n, after)  # the next n of them are fetched again
    return (E - cnt) + tail, tail


class _Block:
    """Whole folds of an ifmap pass as the walk reads them (eq. M5-M7), from the demand
    addresses ``parts`` (an iterable of arrays in demand order, relative to the block's first
    sample, below ``words``; -1 outside the ifmap) and the folds' lengths ``sizes``:
    ``sweep`` the addresses >= 0 in demand order, ``fold_ends`` the positions where its folds
    end, ``fo`` the positions of each address's first use in the block, ``ffo`` those of its
    first use in each fold (positions of type ``pos_t``); ``first`` and ``seen`` scratch
    tables over the block's addresses. Built in chunks: beside these, O(chunk) memory."""

    def __init__(self, parts, sizes: list[int], words: int):
        L = sum(sizes)
        sweep = np.empty(L, dtype=np.int32 if words <= _I32 else np.int64)
        o = 0
        for part in parts:
            sweep[o : o + len(part)] = part
            o += len(part)
        fold_ends = np.cumsum(sizes)
        if int(sweep.min()) < 0:  # SCALE-Sim skips the -1 addresses: compact fold by fold
            lo = w = 0
            for f, hi in enumerate(fold_ends.tolist()):
                seg = sweep[lo:hi]
                v = seg[seg >= 0]
                sweep[w : w + len(v)] = v
                w += len(v)
                fold_ends[f] = w
                lo = hi
            sweep = sweep[:w].copy()
            L = w
        pos_t = np.int32 if L < _I32 else np.int64  # positions
        first = np.empty(int(sweep.max()) + 1, dtype=pos_t)
        in_fold = np.zeros(len(first), dtype=bool)  # words met in the fold so far
        in_block = np.zeros(len(first), dtype=bool)  # words met in the block so far
        fo = np.empty(min(L, len(first)), dtype=pos_t)
        ffo = np.empty(L, dtype=pos_t)
        nfo = nffo = lo = 0
        for hi in fold_ends.tolist():
            for c0 in range(lo, hi, _CHUNK):
                rel = sweep[c0 : min(hi, c0 + _CHUNK)]
                ia = np.arange(len(rel), dtype=pos_t)
                first[rel[::-1]] = ia[::-1]  # the last assignment wins: first in the chunk
                at = np.flatnonzero((first[rel] == ia) & ~in_fold[rel])
                in_fold[rel] = True
                ffo[nffo : nffo + len(at)] = at + c0
                nffo += len(at)
                r = rel[at]
                at = at[~in_block[r]]
                in_block[r] = True
                fo[nfo : nfo + len(at)] = at + c0
                nfo += len(at)
            in_fold[sweep[lo:hi]] = False
            lo = hi
        fo.resize(nfo, refcheck=False)
        ffo.resize(nffo, refcheck=False)
        self.sweep, self.fold_ends, self.first, self.L = sweep, fold_ends, first, L
        self.fo, self.ffo, self.pos_t, self.seen = fo, ffo, pos_t, in_fold


def _walk_misses(pieces: list[tuple[_Block, int]], reps: int, E: int, horizon: int) -> int:
    """Fetches of ``reps`` passes over the blocks ``pieces`` (each with the address offset of
    its first sample; the blocks' address sets are disjoint), starting with an empty epoch
    (eq. M5-M7).

    ``horizon`` bounds the distance between two consecutive uses of an address inside a pass.
    A use can be fetched only if no use of its address came since the epoch began. So between
    epoch ends only an address's first use in the pass can be (eq. M6); after an epoch ends at
    position ``i``: every use in the rest of that fold, the first use in each fold up to
    ``i + horizon``, then the first uses in the pass again (eq. M7). The walk carries its
    state (fetches in the epoch, the fold and horizon of the last epoch end, the words of the
    last pass's final epoch) from block to block (eq. M7b). A pass's last epoch end fixes the
    state the pass ends in, so once a pass ends where an earlier one did the passes repeat and
    the rest is summed (eq. M7a). Memory: the blocks' tables and O(E) more."""
    starts = np.cumsum([0] + [b.L for b, _ in pieces]).tolist()
    L = starts[-1]
    if L == 0:
        return 0
    # The words in the epoch are looked up in two places. After an epoch end, the rest of
    # the fold and the horizon are walked chunk by chunk; a chunk's first occurrences are
    # fetched unless met in an earlier chunk (``blk.seen``, ``local``; a block shares no word
    # with the others, so the horizon starts afresh in the next block). The first uses in the
    # pass are looked up only before a pass's first epoch end, in the words of the last pass's
    # final epoch (``carried``, sorted); else none can be in the epoch.
    carried = None
    since: list[tuple[_Block, np.ndarray, np.int64]] = []  # fetches since the epoch end
    local: list[np.ndarray] = []  # the words set in blk.seen
    total, cnt = 0, 0
    after: list[int] = []  # fetches after each pass
    ends: dict[int, int] = {}  # a pass's last epoch end -> the pass
    for rep in range(reps):
        fold_cut, full_until, last = 0, 0, -1
        for (blk, a0), p0 in zip(pieces, starts, strict=False):
            a0 = np.int64(a0)  # global addresses in 64 bits
            pos, end = p0, p0 + blk.L
            pt = blk.pos_t  # searchsorted on a key of the tables' type: O(log n)
            fo, ffo, seen = blk.fo, blk.ffo, blk.seen
            while pos < end:
                need = E - cnt
                chunk = max(1024, need + need // 4)  # uses looked at a time
                lo = pos - p0
                if pos < fold_cut or pos < full_until:  # after an epoch end (eq. M7)
                    if pos < fold_cut:  # the rest of the fold where it ended: every use
                        hi = min(fold_cut - p0, lo + chunk)
                        cpos = np.arange(lo, hi, dtype=pt)
                    else:  # the first use in each fold within the horizon
                        top = min(full_until, end) - p0
                        j0, j1 = int(ffo.searchsorted(pt(lo))), int(ffo.searchsorted(pt(top)))
                        cpos = ffo[j0 : min(j1, j0 + chunk)]
                        hi = int(ffo[j0 + chunk]) if j0 + chunk < j1 else top
                    rel = blk.sweep[cpos]
                    ia = np.arange(len(rel), dtype=pt)
                    blk.first[rel[::-1]] = ia[::-1]  # the last assignment wins: first uses
                    got = blk.first[rel] == ia
                    if local:
                        got &= ~seen[rel]
                    new = cpos[got]
                    if len(new) < need:
                        r = rel[got]
                        seen[r] = True
                        local.append(r)
                        since.append((blk, new, a0))
                else:  # the first uses in the pass (distinct addresses, eq. M6)
                    i0 = int(fo.searchsorted(pt(lo)))
                    if carried is not None:  # words of the last pass may be in the epoch
                        i1 = min(len(fo), i0 + chunk)
                        cpos = fo[i0:i1]
                        a = blk.sweep[cpos] + a0
                        k = np.minimum(carried.searchsorted(a), len(carried) - 1)
                        new = cpos[carried[k] != a]
                        hi = int(fo[i1]) if i1 < len(fo) else blk.L
                    else:  # none can be: each is fetched
                        new = fo[i0 : i0 + need]
                        hi = blk.L
                        if len(new) < need:
                            since.append((blk, new, a0))
                if len(new) >= need:  # the epoch ends here
                    last = p0 + int(new[need - 1])
                    total += need
                    cnt = 0
                    for m in local:
                        seen[m] = False
                    local.clear()
                    since.clear()
                    carried = None
                    pos = last + 1
                    fe = blk.fold_ends
                    fold_cut = p0 + int(fe[fe.searchsorted(fe.dtype.type(last - p0), "right")])
                    full_until = min(L, last + 1 + horizon)
                    continue
                total += len(new)
                cnt += len(new)
                pos = p0 + hi
            for m in local:  # the next block starts afresh
                seen[m] = False
            local.clear()
        if last < 0:  # the epoch holds the whole pass: every later pass hits
            break
        # the words of the pass's final epoch, for the next pass
        if since:
            carried = np.sort(np.concatenate([b.sweep[p] + a0 for b, p, a0 in since]))
        since.clear()
        after.append(total)
        if last in ends:  # passes ends[last] + 1 .. rep repeat from here on (eq. M7a)
            m = ends[last]
            q, r = divmod(reps - 1 - rep, rep - m)
            return total + q * (total - after[m]) + (after[m + r] - after[m])
        ends[last] = rep
    return total


_CHUNK = 1 << 18  # demand addresses built at a time (bounds the temporaries)
_BLOCK = 1 << 21  # demand addresses per block of the walk, where periods allow (eq. M7b)


def _os_ifmap_sweep(geo: ConvGeometry, Np: int, K: int, R: int):
    """One pass of the OS ifmap demand (eq. M5): row folds of ``R`` pixels, each the
    ``K x R`` block skewed: cycle ``k + j`` reads pixel ``j``'s window element ``k``, pixels in
    order within a cycle. Returns the addresses (an iterator of arrays, built a few folds at
    a time) and the folds' lengths."""
    runs = [(p0, ru) for p0, ru in ((0, R), (Np // R * R, Np % R)) if ru and (ru < R or Np >= R)]
    sizes = [ru * K for p0, ru in runs for _ in range(Np // R if ru == R else 1)]

    def parts():
        for p0, ru in runs:
            n = Np // R if ru == R else 1
            k, j = np.meshgrid(np.arange(K), np.arange(ru), indexing="ij")
            order = np.lexsort((j.ravel(), (k + j).ravel()))
            ko, jo = k.ravel()[order], j.ravel()[order]
            pt = np.int32 if p0 + n * R < _I32 else np.int64
            step = max(1, _CHUNK // (ru * K))  # folds built at a time
            for f0 in range(0, n, step):
                f = np.arange(f0, min(n, f0 + step), dtype=pt)
                p = (p0 + f[:, None] * R + jo[None, :]).astype(pt, copy=False)
                yield geo.ifmap_addr(p, ko[None, :]).ravel()

    return parts(), sizes


def _ws_ifmap_sweep(geo: ConvGeometry, Np: int, K: int, R: int):
    """One pass of the WS ifmap demand: K folds of ``R`` window elements, each the ``Np x R``
    block skewed: cycle ``t`` reads pixel ``t - kk``'s element ``kk`` of the fold, ``kk``
    ascending. Returns the addresses (an iterator, a few cycles at a time) and the folds'
    lengths."""
    sizes = [Np * min(R, K - k0) for k0 in range(0, K, R)]

    def parts():
        pt = np.int32 if Np + R < _I32 else np.int64
        for k0 in range(0, K, R):
            ku = min(R, K - k0)
            kk = np.arange(ku, dtype=pt)
            step = max(1, _CHUNK // ku)  # cycles built at a time
            for t0 in range(0, Np + ku - 1, step):
                p = np.arange(t0, min(Np + ku - 1, t0 + step), dtype=pt)[:, None] - kk[None, :]
                ok = (p >= 0) & (p < Np)
                yield geo.ifmap_addr(p[ok], k0 + np.broadcast_to(kk, p.shape)[ok])

    return parts(), sizes


def _is_ifmap_stream(geo: ConvGeometry, Np: int, K: int, R: int, C: int):
    """The whole IS ifmap demand: pixel folds of ``C`` (outer) by K folds of ``R`` (inner),
    each block read once, its window elements last to first (``np.flip`` of the fold).
    Returns the addresses (an iterator, fold by fold) and the folds' lengths."""
    folds = [(p0, k0) for p0 in range(0, Np, C) for k0 in range(0, K, R)]
    sizes = [min(C, Np - p0) * min(R, K - k0) for p0, k0 in folds]

    def parts():
        for p0, k0 in folds:
            pu, ku = min(C, Np - p0), min(R, K - k0)
            kk, j = np.meshgrid(np.arange(ku)[::-1], np.arange(pu), indexing="ij")
            yield geo.ifmap_addr(p0 + j.ravel(), k0 + kk.ravel())

    return parts(), sizes


def conv_ifmap_misses(
    dataflow,
    R: int,
    C: int,
    Np: int,
    K: int,
    reps: int,
    E: int,
    geo: ConvGeometry,
    block_px: int | None = None,
) -> int:
    """Fetches of a convolution's ifmap (``reps`` passes, epochs of ``E`` fetches) by the walk
    (eq. M5-M7b). In ``os`` / ``is`` the pass is cut into blocks of ``block_px`` output pixels
    (a multiple of the period ``lcm(fold, oh * ow)``, ``fold`` = R in ``os``, C in ``is``;
    default: as many periods as fit in about 2M demand addresses, at least one); the blocks
    are the same folds on other samples, so one block is built and walked at each sample
    offset, and the build's time and memory do not grow with the batch. ``ws`` folds span
    the whole pass: one block, O(Np * K)."""
    df = as_dataflow(dataflow)
    per = geo.oh * geo.ow
    if df is Dataflow.WS:
        block_px = Np
    else:
        period = math.lcm(R if df is Dataflow.OS else C, per)
        if block_px is None:
            block_px = period * max(1, _BLOCK // (period * K))
        elif block_px <= 0 or block_px % period:
            raise ValueError(f"block_px={block_px} is not a multiple of the period {period}")
    words = geo.ih * geo.iw * geo.ch  # one sample's ifmap

    def block(n_px):
        if df is Dataflow.OS:
            parts, sizes = _os_ifmap_sweep(geo, n_px, K, R)
        elif df is Dataflow.WS:
            parts, sizes = _ws_ifmap_sweep(geo, n_px, K, R)
        else:
            parts, sizes = _is_ifmap_stream(geo, n_px, K, R, C)
        return _Block(parts, sizes, _cdiv(n_px, per) * words)

    n_full, tail = divmod(Np, block_px)
    pieces = []
    if n_full:
        b = block(block_px)
        pieces += [(b, i * block_px // per * words) for i in range(n_full)]
    if tail:
        pieces.append((block(tail), n_full * block_px // per * words))
    if df is Dataflow.OS:
        horizon = (geo.reuse_gap // R + 2) * R * K
    elif df is Dataflow.WS:
        horizon = sum(b.L for b, _ in pieces)
    else:
        horizon = (geo.reuse_gap // C + 2) * C * K
    return _walk_misses(pieces, reps, E, horizon)


def dram_reads(
    dataflow,
    R: int,
    C: int,
    Np: int,
    K: int,
    Mf: int,
    ifmap_kb: float,
    filter_kb: float,
    geo: ConvGeometry | None = None,
) -> tuple[int, int]:
    """(ifmap, filter) DRAM words SCALE-Sim's CALC-mode read buffers fetch for one GEMM
    ``Np x K`` by ``K x Mf`` (eq. M3-M7). ``geo``: the convolution behind it (repeated ifmap
    addresses); ``None``: a GEMM (every ifmap address distinct)."""
    df = as_dataflow(dataflow)
    Ei, Ef = epoch_words(ifmap_kb), epoch_words(filter_kb)
    nr, nc = _cdiv(Np, R), _cdiv(Mf, C)
    # filter: every address distinct
    if df is Dataflow.OS:  # block of C filters per column fold, repeated over the row folds
        fl, cnt = 0, 0
        for m0 in range(0, Mf, C):
            got, cnt = distinct_misses(K * min(C, Mf - m0), nr, cnt, Ef)
            fl += got
    elif df is Dataflow.WS:  # each filter word streamed once
        fl = K * Mf
    else:  # IS: the whole filter once per pixel fold
        fl, _ = distinct_misses(K * Mf, _cdiv(Np, C), 0, Ef)
    # ifmap
    reps = {Dataflow.OS: nc, Dataflow.WS: nc, Dataflow.IS: 1}[df]
    if geo is None:
        ifm, _ = distinct_misses(Np * K, reps, 0, Ei)
        return ifm, fl
    D = geo.distinct(Np)
    if D < Ei:  # the epoch never ends: every word once (eq. M3 with n = D)
        return D, fl
    if geo.fh <= geo.stride and geo.fw <= geo.stride:  # windows share no word: a GEMM's sweep
        ifm, _ = distinct_misses(D, reps, 0, Ei)
        return ifm, fl
    return conv_ifmap_misses(df, R, C, Np, K, reps, Ei, geo), fl


def _fold_types(df: Dataflow, R: int, C: int, Np: int, K: int, Mf: int):
    """The folds in SCALE-Sim's order as runs ``(count, rows, ofmap words per row)``: each
    fold is ``rows`` cycles (``gemm_counts``' cycles per fold); ``words[q]`` ofmap words are
    written in its cycle ``q`` (eq. M8)."""
    if df is Dataflow.OS:
        outer, inner, prefix = (Mf, C), (Np, R), K - 1
    elif df is Dataflow.WS:
        outer, inner, prefix = (Mf, C), (K, R), 2 * R - 1
    else:
        outer, inner, prefix = (Np, C), (K, R), 2 * R - 1
    runs = []
    for o0 in range(0, outer[0], outer[1]):
        cu = min(C, outer[0] - o0)
        for n_in, iu in (
            (inner[0] // inner[1], inner[1]),
            (1 if inner[0] % inner[1] else 0, inner[0] % inner[1]),
        ):
            if n_in == 0:
                continue
            if df is Dataflow.OS:  # ru x cu outputs, flipped: rows R - ru .. R - 1 valid
                lo, hi, height = R - iu, R - 1, R
            else:  # the whole Np (ws) / Mf (is) column of each of the cu columns
                n = Np if df is Dataflow.WS else Mf
                lo, hi, height = 0, n - 1, n
            q = np.arange(height + C - 1)[:, None] - np.arange(cu)[None, :]
            words = ((q >= lo) & (q <= hi)).sum(axis=1)
            rows = np.concatenate([np.zeros(prefix, dtype=np.int64), words])
            if runs and runs[-1][1] is not None and np.array_equal(runs[-1][1], rows):
                runs[-1][0] += n_in
            else:
                runs.append([n_in, rows])
    return runs


@dataclass(frozen=True)
class WriteBuffer:
    """What SCALE-Sim's ofmap write buffer did: DRAM words written, ofmap stall cycles, the
    cycle of the last drain (eq. M8-M10)."""

    dram_writes: int
    stall_cycles: int
    last_cycle: int  # scalesim's "Total Cycles": last demand cycle + stalls
    drain_stop: int  # the cycle the last DRAM write is issued


def ofmap_writes(
    dataflow,
    R: int,
    C: int,
    Np: int,
    K: int,
    Mf: int,
    ofmap_kb: float,
    line: int,
    scalesim_padding: bool = True,
) -> WriteBuffer:
    """SCALE-Sim's write buffer (``memory/write_buffer.py``) on the layer's ofmap demand, as
    drain events (eq. M8-M10): words are packed into lines of ``line`` words (``arr_col`` in
    CALC mode); once more than half the buffer is used and the previous drain is done, the
    open line is closed (padded) and ``ceil(half / line)`` lines go to DRAM. A drain counts
    all words of its lines but the padding of its *last* line, so a padded line drained in
    the middle of a batch counts its padding: scalesim's slip, reproduced with
    ``scalesim_padding`` (default); ``False`` counts only the ofmap words (eq. M9)."""
    ws = _WriteSim(dataflow, R, C, Np, K, Mf, ofmap_kb, line, scalesim_padding)
    ws.run_until(ws.total)
    last, stop = ws.finish()
    return WriteBuffer(ws.writes, ws.shift, last, stop)


class _WriteSim:
    """The write buffer's drain events (eq. M8-M10), resumable: :meth:`run_until` resolves the
    events of the words before ``k_end`` at the current ``shift`` (stall cycles so far), so
    that a caller may add stalls of its own between rows (USER mode's read stalls)."""

    def __init__(self, dataflow, R, C, Np, K, Mf, ofmap_kb, line, scalesim_padding=True):
        df = as_dataflow(dataflow)
        # the demand rows as runs of equal folds: run i starts at row row0[i] and word
        # word0[i]; its folds are height[i] rows of fold_words[i] words, cum[i] their prefix
        # sums (O(runs) memory, not O(rows))
        runs = _fold_types(df, R, C, Np, K, Mf)
        self.cum = [np.cumsum(r) for _, r in runs]
        self.height = [len(r) for _, r in runs]
        self.fold_words = [int(c[-1]) for c in self.cum]
        n = [c for c, _ in runs]
        self.row0 = np.cumsum([0] + [c * h for c, h in zip(n, self.height, strict=True)])
        self.word0 = np.cumsum([0] + [c * w for c, w in zip(n, self.fold_words, strict=True)])
        self.total, self.nrows = int(self.word0[-1]), int(self.row0[-1])
        self.T = sram_words(ofmap_kb)
        self.active = math.ceil(self.T * 0.5)
        self.line = line
        self.Ld = _cdiv(self.T - self.active, line)
        self.padding = scalesim_padding
        self.free, self.drain_end, self.shift, self.k, self.done = self.T, 0, 0, 0, 0
        self.lines, self.fill, self.packed, self.start, self.writes, self.stop = 0, 0, 0, 0, 0, 0
        self.pads: dict[int, int] = {}

    def row_of(self, k: int) -> int:
        """The demand row that writes word ``k`` (``nrows`` past the last word)."""
        if k >= self.total:
            return self.nrows
        i = int(np.searchsorted(self.word0, k, side="right")) - 1
        f, w = divmod(k - int(self.word0[i]), self.fold_words[i])
        q = int(np.searchsorted(self.cum[i], w, side="right"))
        return int(self.row0[i]) + f * self.height[i] + q

    def before_row(self, r: int) -> int:
        """Words written before demand row ``r``."""
        if r <= 0:
            return 0
        if r >= self.nrows:
            return self.total
        i = int(np.searchsorted(self.row0, r - 1, side="right")) - 1
        f, q = divmod(r - 1 - int(self.row0[i]), self.height[i])
        return int(self.word0[i]) + f * self.fold_words[i] + int(self.cum[i][q])

    def _close(self, upto: int) -> None:  # pack words [packed, upto) and close the open line
        n = upto - self.packed
        self.lines += (self.fill + n) // self.line
        self.fill = (self.fill + n) % self.line
        self.packed = upto
        if self.fill:
            self.pads[self.lines] = self.line - self.fill
            self.lines += 1
            self.fill = 0

    def _drain(self, cycle: int) -> int:
        nl = min(self.Ld, self.lines - self.start)
        if self.padding:
            data = nl * self.line - self.pads.get(self.start + nl - 1, 0)
        else:
            hi = self.start + nl
            data = nl * self.line - sum(v for i, v in self.pads.items() if self.start <= i < hi)
        self.start += nl
        self.writes += data
        end = cycle + nl - 1
        self.stop = max(self.stop, end)
        return data, end

    def run_until(self, k_end: int) -> None:
        k_end = min(k_end, self.total)
        while True:
            # first word leaving less than half free; first word at or after the drain's end
            k1 = max(self.done, self.k + self.free - self.active)
            k2 = max(self.done, self.before_row(self.drain_end - self.shift))
            kt = max(k1, k2)
            ks = self.k + self.free - 1  # the word that fills the buffer
            if (
                self.done <= ks < min(kt, self.total)
                and self.row_of(ks) + self.shift < self.drain_end
            ):  # full before the drain ends: stall until it does (eq. M10)
                if ks >= k_end:
                    break
                self.shift = self.drain_end - self.row_of(ks)
                self.done = ks + 1
                continue
            if kt >= k_end:
                break
            self.free -= kt - self.k + 1
            self._close(kt + 1)
            data, self.drain_end = self._drain(self.row_of(kt) + self.shift)
            self.free += data
            self.k = self.done = kt + 1
        self.done = max(self.done, k_end)

    def finish(self) -> tuple[int, int]:
        """Drain the rest (``empty_all_buffers``); (last demand cycle, last DRAM write)."""
        last = self.nrows - 1 + self.shift
        self._close(self.total)
        cycle = last
        while self.start < self.lines:
            _, end = self._drain(cycle)
            cycle = end + 1
        return last, self.stop


def _first_request(df: Dataflow, R: int, K: int) -> tuple[int, int]:
    """Cycle of the first ifmap and filter request (the demand matrices' null prefixes)."""
    top = R - min(R, K)  # null rows of a flipped first fold with K < R
    if df is Dataflow.OS:
        return 0, 0
    if df is Dataflow.WS:
        return R, top
    return top, R


def _prefetch_start(misses: int, sram_kb: float, first: int) -> int:
    """Cycle of the first DRAM read of a CALC-mode read buffer (eq. M11): its first prefetch
    (50 sets, or all of them if fewer) at 10 words per cycle, ending just before ``first``
    (or before cycle 0 if the buffer never filled half its sets)."""
    per_set = sram_words(sram_kb) // 100
    if misses >= 50 * per_set:
        return first - 1 - _cdiv(50 * per_set, 10) + 1
    return -_cdiv(_cdiv(misses, per_set) * per_set, 10)


@dataclass(frozen=True)
class MemoryCost:
    """SCALE-Sim's memory figures of one GEMM (words are operand elements)."""

    dram_ifmap_reads: int
    dram_filter_reads: int
    dram_ofmap_writes: int
    stall_cycles: int
    total_cycles: int  # scalesim's "Total Cycles": compute + stalls
    total_cycles_incl_prefetch: int  # first DRAM read to last DRAM write


@lru_cache(maxsize=4096)  # sweeps cost the same shapes again and again
def memory_cost(
    dataflow,
    R: int,
    C: int,
    Np: int,
    K: int,
    Mf: int,
    sram_kb: tuple[float, float, float],
    geo: ConvGeometry | None = None,
    scalesim_padding: bool = True,
) -> MemoryCost:
    """SCALE-Sim 3.0.0's DRAM traffic and cycles in CALC bandwidth mode (eq. M1-M12) for one
    GEMM ``Np x K`` by ``K x Mf`` on an ``R x C`` array; ``sram_kb`` (ifmap, filter, ofmap) in
    KiB of one-byte words; ``geo``: the convolution behind it (None: a GEMM);
    ``scalesim_padding``: count the padding words scalesim's write buffer drains (eq. M9).
    Cached by arguments (``memory_cost.__wrapped__`` computes afresh). Conv ifmaps larger than
    an epoch are walked (eq. M5-M7b): in ``os`` / ``is`` one block of whole periods is built
    in O(min(Np * K, max(lcm(fold, oh * ow) * K, 2M))) time and memory, which does not grow
    with the batch, and walked at each sample offset; ``ws``: O(Np * K). The rest O(runs of
    equal folds)."""
    df = as_dataflow(dataflow)
    check_sram_words(sram_kb)
    ifm, fl = dram_reads(df, R, C, Np, K, Mf, sram_kb[0], sram_kb[1], geo)
    wb = ofmap_writes(df, R, C, Np, K, Mf, sram_kb[2], C, scalesim_padding)
    fi, ff = _first_request(df, R, K)
    start = min(_prefetch_start(ifm, sram_kb[0], fi), _prefetch_start(fl, sram_kb[1], ff))
    return MemoryCost(
        ifm, fl, wb.dram_writes, wb.stall_cycles, wb.last_cycle, wb.drain_stop - start
    )
