"""The register-blocked ordered kernels (hwsim.datapath.ordered) against the plain-int spec
(hwsim.datapath.reference.accumulate, product by product in hardware order)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, ReductionOrder, gemm
from hwsim.datapath import reference as dref
from hwsim.datapath.ordered import (
    LANES,
    ROWS,
    ROWS32,
    hardware_weights,
    ordered_sat16,
    ordered_sat32,
    row_blocks,
)
from hwsim.numerics import IntFormat, Overflow
from tests.strategies import ints_in, operand_arrays, operands


def _acc16(tile: int, bits: int = 16, signed: bool = True) -> Accumulator:
    order = ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL
    return Accumulator(bits, Overflow.SATURATE, signed=signed, order=order, tile_rows=tile)


@st.composite
def sat16_cases(draw):
    """``(x3, zx, we, order, rows, tile)`` in the kernel's domain: x of at most 8 bits (in its
    own dtype, or widened to int16), effective weights with ``max|x - zx| * max|we| < 2^15``,
    N across panel boundaries, any permutation as the order, any sorted subset of rows."""
    G = draw(st.integers(1, 3))
    M = draw(st.integers(1, 2 * ROWS + 3))
    K = draw(st.integers(0, 24))
    N = draw(st.sampled_from([1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + 3]))
    fmt = IntFormat(draw(st.integers(2, 8)), draw(st.booleans()))
    zx = draw(ints_in(fmt.min, fmt.max))
    extreme = draw(st.sampled_from([None, None, "max", "min"]))
    x3 = operand_arrays(draw, fmt, (G, M, K), extreme)
    if draw(st.booleans()):
        x3 = x3.astype(np.int16)
    max_xe = max(abs(fmt.max - zx), abs(fmt.min - zx))
    wlim = min(255, (2**15 - 1) // max(1, max_xe))
    if draw(st.booleans()):  # every weight at a rail: saturation on every row
        we = np.where(np.arange(G * K * N).reshape(G, K, N) % 3 == 0, -wlim, wlim).astype(np.int64)
    else:
        we = np.array(
            draw(st.lists(ints_in(-wlim, wlim), min_size=G * K * N, max_size=G * K * N)),
            np.int64,
        ).reshape(G, K, N)
    order = np.array(draw(st.permutations(range(K))), np.int64)
    keep = draw(st.lists(st.booleans(), min_size=G * M, max_size=G * M))
    rows = np.flatnonzero(keep).astype(np.int64)
    tile = draw(st.sampled_from([0, 0, 1, 2, 3, 5, 9]))
    return x3, zx, we, order, rows, tile


def _run_sat32(x3, zx, we, order, rows, tile, acc):
    """The int32-lane kernel on ``acc``'s range, on ``rows``."""
    G, M, K = x3.shape
    N = we.shape[2]
    weh = hardware_weights(we, order, np.int32)
    blocks = row_blocks(rows, M, ROWS32)
    vals = np.full((G, M, N), -(2**40), np.int64)  # rows not run keep this
    counts = np.zeros((blocks.shape[0] * (weh.shape[2] // LANES), 3), np.int64)
    lo, hi = np.int32(acc.format.min), np.int32(acc.format.max)
    ordered_sat32(x3, np.int64(zx), weh, order, rows, blocks, tile, lo, hi, vals, counts)
    return vals, counts.sum(axis=0).tolist()


def _run_sat16(x3, zx, we, order, tile, lim):
    """The int16-lane kernel into a (G, M, N) array, ``lim`` (G,) or scalar the sums of ``|x -
    zx|`` up to which a row keeps its exact sums (-1: every row runs). Returns ``(values, [events,
    outputs with an event, tile events], (min, max) exact)``."""
    G, M, K = x3.shape
    N = we.shape[2]
    exact = np.einsum("gmk,gkn->gmn", x3.astype(np.int64) - zx, we)
    weh = hardware_weights(we, order, np.int16)
    vals = np.full((G, M, N), -(2**40), np.int64)  # outputs not written keep this
    layout = np.array((M * N, 0, N, 1, M), np.int64)
    counts = np.zeros((G * -(-M // ROWS), 5), np.int64)
    ordered_sat16(
        x3, np.int64(zx), weh, order, exact.astype(np.int32), np.full(G, lim, np.int64), tile,
        np.int16(1), vals.reshape(-1), layout, counts,
    )  # fmt: skip
    extremes = (int(counts[:, 3].min()), int(counts[:, 4].max()))
    return vals, counts[:, :3].sum(axis=0).tolist(), extremes


def _spec(x3, zx, we, order, acc, rows=None):
    """The plain-int reference output by output in hardware order: ``(values, [events, outputs
    with an event, tile events], (min, max) exact)`` on ``rows`` (flat into G*M; None: all)."""
    G, M, K = x3.shape
    N = we.shape[2]
    want = np.full((G, M, N), -(2**40), np.int64)
    events = hit = tevents = 0
    exacts = []
    for r in range(G * M) if rows is None else rows.tolist():
        g, m = divmod(r, M)
        for n in range(N):
            prods = [(int(x3[g, m, k]) - zx) * int(we[g, k, n]) for k in order.tolist()]
            value, ev, exact, _, tev = dref.accumulate(prods, acc, detail=True)
            want[g, m, n] = value
            events += ev
            hit += ev > 0
            tevents += tev
            exacts.append(exact)
    return want, [events, hit, tevents], (min(exacts, default=None), max(exacts, default=None))


@given(
    sat16_cases(), st.sampled_from([(8, True), (12, False), (16, True), (20, True), (24, False)])
)
def test_sat32_kernel_equals_spec_on_any_rows_order_and_tiles(case, width):
    """The int32-lane kernel on registers of 8 to 24 bits, signed or not (every sum of a
    register and a product fits int32), on any subset of rows."""
    x3, zx, we, order, rows, tile = case
    acc = _acc16(tile, *width)
    vals, counts = _run_sat32(*case, acc=acc)
    want, want_counts, _ = _spec(x3, zx, we, order, acc, rows)
    assert (vals == want).all()
    assert counts == want_counts


@given(sat16_cases(), st.booleans())
def test_sat16_kernel_equals_spec_on_any_order_and_tiles(case, run_all):
    """The int16-lane kernel with every row run (``lim`` -1), or only the blocks with a row
    whose bound can reach int16 (the others copy their exact sums): values, events and final
    extremes are the plain-int reference's, output by output."""
    x3, zx, we, order, _, tile = case
    wmax = np.abs(we).max(axis=(1, 2), initial=0)
    lim = np.where(wmax > 0, 32767 // np.maximum(wmax, 1), 2**62)
    vals, counts, extremes = _run_sat16(x3, zx, we, order, tile, -1 if run_all else lim)
    want, want_counts, want_extremes = _spec(x3, zx, we, order, _acc16(tile))
    assert (vals == want).all()
    assert counts == want_counts
    assert extremes == want_extremes


def test_sat16_kernel_hits_both_rails_with_all_max_operands():
    """255 * 128 per product: every add after the first few clamps, on both rails."""
    K, N = 300, 2 * LANES + 1
    x3 = np.full((1, 3, K), 255, np.uint8)
    x3[0, 1] = 0
    we = np.full((1, K, N), -128, np.int64)
    we[0, :, 1::2] = 127
    we[0, K // 2 :, 0] = 127  # column 0 goes from one rail to the other
    order = np.arange(K, dtype=np.int64)[::-1].copy()
    vals, counts, extremes = _run_sat16(x3, 0, we, order, 0, [32767 // 128])
    want, want_counts, want_extremes = _spec(x3, 0, we, order, _acc16(0))
    assert (vals == want).all()
    assert counts == want_counts and counts[0] > 0
    assert extremes == want_extremes
    assert vals.min() == -32768 and vals.max() == 32767


@given(st.lists(st.integers(0, 5), min_size=0, max_size=40), st.integers(1, 9))
def test_row_blocks_cover_rows_once_within_one_group(groups, size):
    M = 7
    rows = np.array(
        sorted({g * M + i for i, g in enumerate(groups) if i < M} | {g * M for g in groups}),
        np.int64,
    )
    blocks = row_blocks(rows, M, size)
    covered = []
    for start, count in blocks.tolist():
        assert 1 <= count <= size
        part = rows[start : start + count]
        assert len(set((part // M).tolist())) == 1
        covered += part.tolist()
    assert covered == rows.tolist()


@given(
    operands(max_bits=8),
    operands(max_bits=8),
    st.sampled_from([0, 1, 4, 7]),
    st.sampled_from([(16, True), (12, True), (20, False), (24, True)]),
    st.integers(1, 6),
    st.integers(1, 20),
    st.sampled_from([LANES - 1, LANES + 1, 2 * LANES + 2]),
    st.sampled_from([None, "max"]),
    st.data(),
)
def test_gemm_saturating_on_wide_outputs_equals_reference(
    xo, wo, tile, width, M, K, N, extreme, data
):
    """Through :func:`gemm`: outputs across several panels, rows that cannot saturate (exact
    sums) mixed with rows that run the int16- or int32-lane kernel."""
    (xf, xzp), (wf, wzp) = xo, wo
    x = operand_arrays(data.draw, xf, (M, K), extreme)
    x[::2] = xzp  # rows of zero products: their bound fits, they keep the exact sums
    w = operand_arrays(data.draw, wf, (K, N), extreme)
    acc = _acc16(tile, *width)
    xop, wop = Operand(xf, xzp), Operand(wf, wzp)
    want, want_c = dref.gemm(x.tolist(), w.tolist(), xzp, wzp, acc, n_cols=N)
    got = gemm(x, w, x_operand=xop, w_operand=wop, acc=acc)
    assert got.values.tolist() == want
    assert got.counters == want_c
