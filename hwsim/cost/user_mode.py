"""SCALE-Sim 3.0.0's memory system in its USER bandwidth mode: DRAM words and stall cycles with
a fixed interface bandwidth of ``B`` words per cycle (``docs/cost.md``, eqs. U1-U6).

With ``InterfaceBandwidth = USER`` the read buffers are ``memory/read_buffer.py``: each operand's
*prefetch matrix* (``systolic_compute_*.create_*_prefetch_mat``) is cut into 100-ish sets of
``ceil(size / 100)`` words (``prepare_hashed_buffer``); a window of the first sets is fetched
before the first request (``prefetch_active_buffer``) and every request that is not in a set of
the window moves it on by the prefetch part, cyclically, fetching that many lines of ``B`` words
(``new_prefetch``) and stalling the array if they arrive late (``service_reads``). The ofmap
write buffer drains ``B`` words a cycle (:func:`hwsim.cost.memory.ofmap_writes` with lines of
``B``). This is an exact walk over the demand stream, vectorised between window moves: its
cost grows with the SRAM reads (use it for small layers and cross-validation; the CALC mode of
:mod:`hwsim.cost.memory` is the analytical one).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from hwsim.cost.dataflow import Dataflow, as_dataflow
from hwsim.cost.memory import (
    ConvGeometry,
    MemoryCost,
    _cdiv,
    _WriteSim,
    check_sram_words,
    sram_words,
)


def _ifmap(geo: ConvGeometry | None, K: int, p: np.ndarray, k: np.ndarray) -> np.ndarray:
    return p * K + k if geo is None else geo.ifmap_addr(p, k)


def _rollout(m: np.ndarray) -> np.ndarray:
    """The anti-diagonal rollout of ``create_*_prefetch_mat``: diagonals ``row + col`` in
    order, rows from high to low within one (eq. U1)."""
    M, N = m.shape
    r, c = np.meshgrid(np.arange(M), np.arange(N), indexing="ij")
    order = np.lexsort((-r.ravel(), (r + c).ravel()))
    return m.ravel()[order]


def _pad(m: np.ndarray, width: int) -> np.ndarray:
    return np.concatenate([m, -np.ones((m.shape[0], width - m.shape[1]), m.dtype)], axis=1)


def prefetch_orders(df, R, C, Np, K, Mf, geo=None) -> tuple[np.ndarray, np.ndarray]:
    """Ifmap and filter prefetch matrices, flattened in the order ``set_fetch_matrix`` reads
    them (-1: padding), eq. U1."""
    df = as_dataflow(df)
    p, k = np.meshgrid(np.arange(Np), np.arange(K), indexing="ij")
    ifm = _ifmap(geo, K, p, k)  # Np x K
    kk, m = np.meshgrid(np.arange(K), np.arange(Mf), indexing="ij")
    flt = m * K + kk  # K x Mf
    if df is Dataflow.OS:
        fi = np.concatenate([_pad(ifm.T[:, r0 : r0 + R], R) for r0 in range(0, Np, R)])
        ff = np.concatenate([_pad(flt[:, c0 : c0 + C], C) for c0 in range(0, Mf, C)])
        return _rollout(fi), _rollout(ff)
    if df is Dataflow.WS:
        fi = np.concatenate([_pad(ifm[:, k0 : k0 + R], R) for k0 in range(0, K, R)])
        ff = np.concatenate([_pad(flt[:, c0 : c0 + C], C) for c0 in range(0, Mf, C)])
        return _rollout(fi), ff.ravel()
    fi = np.concatenate([_pad(ifm.T[:, p0 : p0 + C], C) for p0 in range(0, Np, C)])
    ff = np.concatenate([_pad(flt[k0 : k0 + R, :].T, R) for k0 in range(0, K, R)])
    return fi.ravel(), _rollout(ff)


def demand_streams(df, R, C, Np, K, Mf, geo=None):
    """Ifmap and filter requests in demand order with their cycle (row of the demand matrix),
    -1 requests dropped (eq. U2; the layouts of ``docs/cost.md``'s demand-order table)."""
    df = as_dataflow(df)
    out = {"ifmap": ([], []), "filter": ([], [])}
    if df is Dataflow.OS:
        outer, inner, rows = (Mf, C), (Np, R), K + R + C - 2
    elif df is Dataflow.WS:
        outer, inner, rows = (Mf, C), (K, R), 2 * R + C + Np - 2
    else:
        outer, inner, rows = (Np, C), (K, R), 2 * R + C + Mf - 2
    f = 0
    for o0 in range(0, outer[0], outer[1]):
        ou = min(outer[1], outer[0] - o0)
        for i0 in range(0, inner[0], inner[1]):
            iu = min(inner[1], inner[0] - i0)
            base = f * rows
            if df is Dataflow.OS:  # ifmap (k, j) at k + j; filter (k, m) at k + m
                k, j = np.meshgrid(np.arange(K), np.arange(iu), indexing="ij")
                parts = {
                    "ifmap": (k + j, j, _ifmap(geo, K, i0 + j, k)),
                }
                k, m = np.meshgrid(np.arange(K), np.arange(ou), indexing="ij")
                parts["filter"] = (k + m, m, (o0 + m) * K + k)
            elif df is Dataflow.WS:  # ifmap (p, kk) at R + p + kk; filter flipped, unskewed
                p, kk = np.meshgrid(np.arange(Np), np.arange(iu), indexing="ij")
                parts = {"ifmap": (R + p + kk, kk, _ifmap(geo, K, p, i0 + kk))}
                kk, m = np.meshgrid(np.arange(iu), np.arange(ou), indexing="ij")
                parts["filter"] = (R - 1 - kk, m, (o0 + m) * K + i0 + kk)
            else:  # ifmap (kk, j) flipped, unskewed; filter (m, kk) at R + m + kk
                kk, j = np.meshgrid(np.arange(iu), np.arange(ou), indexing="ij")
                parts = {"ifmap": (R - 1 - kk, j, _ifmap(geo, K, o0 + j, i0 + kk))}
                m, kk = np.meshgrid(np.arange(Mf), np.arange(iu), indexing="ij")
                parts["filter"] = (R + m + kk, kk, m * K + i0 + kk)
            for name, (row, col, addr) in parts.items():
                row, col, addr = row.ravel(), col.ravel(), addr.ravel()
                order = np.lexsort((col, row))
                keep = addr[order] >= 0
                out[name][0].append(base + row[order][keep])
                out[name][1].append(addr[order][keep])
            f += 1
    return {n: (np.concatenate(r), np.concatenate(a)) for n, (r, a) in out.items()}


def _read_buffer(fetch: np.ndarray, rows: np.ndarray, addrs: np.ndarray, size: int, bw: int):
    """``read_buffer`` on one operand (eq. U3-U4): DRAM words, and per prefetch the demand row
    whose request caused it (timing-independent: the window moves only on misses)."""
    active = math.ceil(size * 0.5)
    pre_size = size - active
    eps = math.ceil(size / 100)
    valid = fetch[fetch >= 0]
    set_of = np.arange(len(valid)) // eps
    n_sets = len(valid) // eps + 1  # prepare_hashed_buffer keeps a last (maybe empty) set
    n_act = min(_cdiv(active, eps), n_sets)
    n_pre = min(_cdiv(pre_size, eps), n_sets - n_act)
    fetch_lines = _cdiv(len(fetch), bw)
    first_lines = min(_cdiv(active, bw), fetch_lines)
    pre_lines = _cdiv(pre_size, bw)
    # each address's sets, as sorted keys id * n_sets + set
    uniq, ids = np.unique(valid, return_inverse=True)
    keys = np.unique(ids.astype(np.int64) * n_sets + set_of)
    key_id = keys // n_sets
    start = np.searchsorted(key_id, np.arange(len(uniq)))
    end = np.searchsorted(key_id, np.arange(len(uniq)), side="right")
    did = np.searchsorted(uniq, addrs)  # every demanded address is in the prefetch matrix

    def dist(ids_, w):  # cyclic distance from window start w to each address's nearest set
        j = np.searchsorted(keys, ids_ * n_sets + w)
        inside = j < end[ids_]
        nxt = np.where(inside, keys[np.minimum(j, len(keys) - 1)] - ids_ * n_sets, 0)
        wrap = keys[start[ids_]] - ids_ * n_sets + n_sets
        return np.where(inside, nxt, wrap) - w

    w, pos, L = 0, 0, len(addrs)
    prefetch_rows = []
    while pos < L and n_act < n_sets:
        hi = min(L, pos + 8192)
        miss = np.flatnonzero(dist(did[pos:hi], w) >= n_act)
        if len(miss) == 0:
            pos = hi
            continue
        pos += int(miss[0])
        sets = keys[start[did[pos]] : end[did[pos]]] - did[pos] * n_sets
        for _ in range(n_sets + 1):
            w = (w + n_pre) % n_sets
            prefetch_rows.append(int(rows[pos]))
            if np.any((sets - w) % n_sets < n_act):
                break
        else:  # pragma: no cover - every address is in some set
            raise AssertionError("read buffer window never reaches the address")
    words = (first_lines + len(prefetch_rows) * pre_lines) * bw
    return words, np.asarray(prefetch_rows, dtype=np.int64), first_lines, pre_lines


@lru_cache(maxsize=1024)
def memory_cost_user(
    dataflow,
    R: int,
    C: int,
    Np: int,
    K: int,
    Mf: int,
    sram_kb: tuple[float, float, float],
    bandwidth: int,
    geo: ConvGeometry | None = None,
    scalesim_padding: bool = True,
) -> MemoryCost:
    """SCALE-Sim 3.0.0's DRAM words and cycles in USER bandwidth mode, ``bandwidth`` words per
    cycle for every operand (eq. U1-U6)."""
    df = as_dataflow(dataflow)
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int) or bandwidth < 1:
        raise ValueError(f"bandwidth must be a positive integer (words/cycle), got {bandwidth!r}")
    check_sram_words(sram_kb)
    fi, ff = prefetch_orders(df, R, C, Np, K, Mf, geo)
    dem = demand_streams(df, R, C, Np, K, Mf, geo)
    sizes = [sram_words(kb) for kb in sram_kb]
    rd = {}
    for name, fetch, size in (("ifmap", fi, sizes[0]), ("filter", ff, sizes[1])):
        rd[name] = _read_buffer(fetch, *dem[name], size, bandwidth)
    ws = _WriteSim(df, R, C, Np, K, Mf, sram_kb[2], bandwidth, scalesim_padding)
    # eq. U5: the rows where a prefetch happens, with the cycle each prefetch's data arrives
    # (chained: the k-th arrives at -1 + k * (lines + 1), lines = new_prefetch's line count)
    events: dict[int, dict[str, list[int]]] = {}
    for name, (_, prows, _, pre_lines) in rd.items():
        for kth, r in enumerate(prows, start=1):
            events.setdefault(int(r), {}).setdefault(name, []).append(-1 + kth * (pre_lines + 1))
    for r in sorted(events):
        ws.run_until(ws.before_row(r))
        before = ws.shift
        ws.run_until(ws.before_row(r + 1))
        stall = ws.shift - before
        c = r + before
        for arrivals in events[r].values():
            off = 1  # service_reads: hit latency, then per prefetch (scalesim adds a late
            for last in arrivals:  # prefetch's lateness twice and an early one's negatively)
                late = last - (c + off)
                off += late
                if late > 0:
                    off += late
            stall = max(stall, off - 1)
        ws.shift = before + stall
    ws.run_until(ws.total)
    last, stop = ws.finish()
    start = -max(rd["ifmap"][2], rd["filter"][2])
    return MemoryCost(rd["ifmap"][0], rd["filter"][0], ws.writes, ws.shift, last, stop - start)
