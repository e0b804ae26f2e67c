"""The convolution ifmap walk in blocks (hwsim.cost.memory.conv_ifmap_misses, eq. M5-M7b)
against the plain-Python epoch rule on scalesim's demand stream (test_memory's literal port of
``compute/systolic_compute_*.py``), for every block size down to one period, batches of
several samples, epochs down to one fetch (an epoch end at every block boundary), and the
write buffer's run-length rows against the plain table of rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_memory import demand_matrices, stream

from hwsim.cost.memory import (
    ConvGeometry,
    _fold_types,
    _WriteSim,
    conv_ifmap_misses,
    dram_reads,
)


def epoch_ends(addresses, E):
    """Eq. M2 as a plain loop: (fetches, positions in ``addresses`` where an epoch ends)."""
    seen, n, total, ends = set(), 0, 0, []
    for i, a in enumerate(addresses):
        if a in seen:
            continue
        seen.add(a)
        n += 1
        total += 1
        if n == E:
            seen, n = set(), 0
            ends.append(i)
    return total, ends


def reference(df, R, C, N, geo, Mf, E):
    """Fetches of the whole ifmap demand of ``N`` samples by the plain loop, the passes, and
    the demand stream of one pass (valid addresses)."""
    Np, K = N * geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    s = stream(demand_matrices(df, R, C, Np, K, Mf, geo)[0])
    reps = 1 if df == "is" else math.ceil(Mf / C)
    return epoch_ends(s, E), reps, s[: len(s) // reps]


def period(df, R, C, geo):
    return Np_period(R if df == "os" else C, geo)


def Np_period(fold, geo):
    return math.lcm(fold, geo.oh * geo.ow)


@st.composite
def convs(draw):
    fh, fw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    ih, iw = draw(st.integers(fh, fh + 5)), draw(st.integers(fw, fw + 5))
    return ConvGeometry(ih, iw, fh, fw, draw(st.integers(1, 3)), s)


@settings(max_examples=600, deadline=None, derandomize=True)
@given(
    df=st.sampled_from(["os", "ws", "is"]),
    R=st.integers(1, 8),
    C=st.integers(1, 8),
    geo=convs(),
    N=st.integers(1, 5),
    Mf=st.integers(1, 12),
    E=st.one_of(st.integers(1, 8), st.integers(9, 400)),
    m=st.integers(1, 4),
)
def test_walk_in_blocks_is_the_epoch_rule(df, R, C, geo, N, Mf, E, m):
    """Any block size (m periods, one block, the default) gives the plain loop's fetches on a
    batch of N samples; E from 1 puts epoch ends on block boundaries and inside folds."""
    (want, _), reps, _ = reference(df, R, C, N, geo, Mf, E)
    Np, K = N * geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    blocks = [None, m * period(df, R, C, geo), Np * period(df, R, C, geo)]
    for block_px in blocks:
        assert conv_ifmap_misses(df, R, C, Np, K, reps, E, geo, block_px) == want, block_px


@pytest.mark.parametrize("df", ["os", "is"])
def test_epoch_ends_exactly_at_block_boundaries(df):
    """Blocks of one period, and epochs whose ends (refill points) fall on the last word of a
    block or on the first word of the next: the walk carries the epoch across exactly."""
    R = C = 4
    geo = ConvGeometry(5, 5, 3, 2, 2, 1)  # oh * ow = 12: a period of 12 pixels, 3 folds
    N, Mf = 4, 9
    Np, K = N * geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    per = period(df, R, C, geo)
    hits = 0
    for E in range(1, 260):
        (want, ends), reps, one = reference(df, R, C, N, geo, Mf, E)
        bounds = {len(one) * r + len(one) * b // N for r in range(reps) for b in range(N)}
        if bounds & (set(ends) | {e + 1 for e in ends}):
            hits += 1
        assert conv_ifmap_misses(df, R, C, Np, K, reps, E, geo, per) == want, E
    assert hits > 10  # the boundary cases were there


@pytest.mark.parametrize("df", ["os", "ws", "is"])
@pytest.mark.parametrize(
    "geo, N, R",
    [
        (ConvGeometry(3, 3, 2, 2, 1, 1), 1, 8),  # one fold (4 pixels on 8 rows)
        (ConvGeometry(4, 4, 2, 1, 1, 1), 3, 5),  # K = 2 (the least a walked conv has)
        (ConvGeometry(4, 4, 1, 1, 1, 1), 2, 3),  # K = 1: no word shared (a GEMM's sweep)
        (ConvGeometry(6, 6, 3, 3, 1, 2), 6, 2),  # one pixel per fold... of 2
        (ConvGeometry(7, 7, 3, 3, 2, 1), 2, 25),  # a fold of a whole sample
    ],
)
def test_walk_edge_shapes(df, geo, N, R):
    Np, K = N * geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    Mf, C = 7, 3
    for E in (1, 2, 3, 5, 8, 13, 40, 100):
        (want, _), reps, _ = reference(df, R, C, N, geo, Mf, E)
        per = period(df, R, C, geo)
        for block_px in (None, per, per * N):
            assert conv_ifmap_misses(df, R, C, Np, K, reps, E, geo, block_px) == want


def test_repeating_passes_are_summed():
    """Many column folds (passes): the walk stops once a pass ends where an earlier one did
    and sums the rest; the plain loop walks all 60."""
    geo = ConvGeometry(6, 6, 3, 3, 2, 1)
    R, C, N, Mf = 4, 1, 2, 60
    Np, K = N * geo.oh * geo.ow, geo.fh * geo.fw * geo.ch
    for E in (7, 31, 50, 97, 150):
        (want, _), reps, _ = reference("os", R, C, N, geo, Mf, E)
        assert reps == 60
        assert conv_ifmap_misses("os", R, C, Np, K, reps, E, geo, None) == want


def test_block_size_must_be_whole_periods():
    geo = ConvGeometry(5, 5, 3, 3, 1, 1)  # 9 pixels a sample; period with R = 4: 36
    with pytest.raises(ValueError, match="block_px=9 is not a multiple of the period 36"):
        conv_ifmap_misses("os", 4, 4, 72, 9, 1, 10, geo, 9)


def test_dram_reads_of_a_batch_do_not_depend_on_the_blocks(monkeypatch):
    """dram_reads through the default blocks, and with tiny default blocks (one period)."""
    import hwsim.cost.memory as memory

    geo = ConvGeometry(10, 10, 3, 3, 4, 1)
    Np = 8 * geo.oh * geo.ow
    want = dram_reads("os", 8, 8, Np, 36, 20, 1, 1, geo)
    monkeypatch.setattr(memory, "_BLOCK", 1)
    assert dram_reads("os", 8, 8, Np, 36, 20, 1, 1, geo) == want
    (plain, _), _, _ = reference("os", 8, 8, 8, geo, 20, 50 * (1024 // 100))
    assert want[0] == plain


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    df=st.sampled_from(["os", "ws", "is"]),
    R=st.integers(1, 9),
    C=st.integers(1, 9),
    Np=st.integers(1, 60),
    K=st.integers(1, 40),
    Mf=st.integers(1, 30),
    probes=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
)
def test_write_buffer_rows_as_runs_are_the_plain_table(df, R, C, Np, K, Mf, probes):
    """_WriteSim.row_of / before_row (runs of equal folds) equal a search in the cumulated
    table of every demand row's ofmap words."""
    from hwsim.cost.dataflow import as_dataflow

    runs = _fold_types(as_dataflow(df), R, C, Np, K, Mf)
    cum = np.cumsum(np.concatenate([np.tile(r, n) for n, r in runs]))
    ws = _WriteSim(df, R, C, Np, K, Mf, 1, C)
    assert (ws.total, ws.nrows) == (int(cum[-1]), len(cum))
    for x in probes + [0, 1, int(cum[-1]) - 1, int(cum[-1]), len(cum) - 1, len(cum)]:
        k = x % (int(cum[-1]) + 2)
        assert ws.row_of(k) == int(np.searchsorted(cum, k, side="right"))
        r = x % (len(cum) + 2)
        want = 0 if r <= 0 else (int(cum[-1]) if r >= len(cum) else int(cum[r - 1]))
        assert ws.before_row(r) == want
