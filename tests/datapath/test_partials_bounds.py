"""The block-bound decision of hwsim.datapath.partials (exact block sums, Cauchy-Schwarz bound
on their magnitude sums, per-layer weight operands cached by content) against every exact
partial sum, computed independently with numpy prefix sums in hardware order."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import partials
from hwsim.datapath import reference as dref
from hwsim.datapath.config import Accumulator, ReductionOrder


def prefix_extremes(x3, w3, zx, wzp, order, tile):
    """(min, max) of every partial sum: the running sum after each product (within each tile
    under a tiled order) and the accumulator after each tile; plain int64 prefix sums."""
    xe = x3.astype(np.int64) - zx
    we = w3.astype(np.int64) - np.asarray(wzp, np.int64)
    prods = xe[:, :, order, None] * we[:, None, order, :]  # (G, M, K, N) in hardware order
    K = prods.shape[2]
    span = tile if tile else K
    parts, acc = [], 0
    for t0 in range(0, K, span):
        run = np.cumsum(prods[:, :, t0 : t0 + span], axis=2)
        parts += [run.min(), run.max()]
        if tile:
            acc = acc + run[:, :, -1]
            parts += [acc.min(), acc.max()]
    return int(min(parts)), int(max(parts))


@pytest.mark.parametrize("int32_k", [partials.INT32_K, 0])
@pytest.mark.parametrize("tile", [0, 5, 64])
@pytest.mark.parametrize("x_signed", [False, True])
def test_known_extremes_that_are_exact_or_one_inside_give_the_same_answer(
    tile, x_signed, int32_k, monkeypatch
):
    """Full-range operands, K = 300: with ``known`` at the true extremes every block passes
    its bound test or ties; one inside, the blocks holding the extremes must be reduced. Both
    working widths of the bounds pass (int32, and int64 as for K >= INT32_K)."""
    monkeypatch.setattr(partials, "INT32_K", int32_k)
    rng = np.random.default_rng(tile + 2 * x_signed)
    G, M, K, N = 1, 90, 300, 7
    lo, hi = (-128, 128) if x_signed else (0, 256)
    x3 = rng.integers(lo, hi, (G, M, K)).astype(np.int8 if x_signed else np.uint8)
    x3[0, :3] = lo  # rows of all-min and all-max operands: extremes at the ends
    x3[0, 3:6] = hi - 1
    w3 = rng.integers(-128, 128, (G, K, N)).astype(np.int8)
    zx = int(rng.integers(lo, hi))
    wzp = rng.integers(-128, 128, (G, 1, N))
    order = rng.permutation(K).astype(np.int64)
    want = prefix_extremes(x3, w3, zx, wzp, order, tile)
    for known in ((None, None), want, (want[0] + 1, want[1] - 1)):
        got = partials.partial_extremes(x3, w3, zx, wzp, order, tile, known)
        assert got == want, known


@given(
    st.integers(1, 40),
    st.integers(1, 3),
    st.sampled_from([0, 1, 3, 8]),
    st.sampled_from([1, 4, partials.BLOCK, 10**6]),
    st.data(),
)
def test_extremes_equal_the_spec_at_any_block_size(K, N, tile, block, data):
    """Blocks from one product to wider than K (capped at MAX_BLOCK): the plain-int spec."""
    M = data.draw(st.integers(1, 6))
    x3 = np.array(data.draw(st.lists(st.integers(0, 255), min_size=M * K, max_size=M * K)),
                  np.uint8).reshape(1, M, K)  # fmt: skip
    w3 = np.array(data.draw(st.lists(st.integers(-128, 127), min_size=K * N, max_size=K * N)),
                  np.int8).reshape(1, K, N)  # fmt: skip
    zx = data.draw(st.integers(0, 255))
    zw = data.draw(st.integers(-128, 127))
    order = np.array(data.draw(st.permutations(range(K))), np.int64)
    acc = Accumulator(
        64, order=ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL, tile_rows=tile,
        track_partials=True,
    )  # fmt: skip
    parts = []
    for m in range(M):
        for n in range(N):
            prods = [(int(x3[0, m, k]) - zx) * (int(w3[0, k, n]) - zw) for k in order]
            parts += dref.accumulate(prods, acc)[3]
    want = (min(parts), max(parts))
    assert partials.partial_extremes(x3, w3, zx, zw, order, tile, block=block) == want
    exact = (x3[0].astype(np.int64) - zx) @ (w3[0].astype(np.int64) - zw)
    known = (int(exact.min()), int(exact.max()))
    assert partials.partial_extremes(x3, w3, zx, zw, order, tile, known, block) == want


def test_layer_operands_are_cached_by_content_not_by_shape():
    """Two layers of one shape with different weights or zero points: each its own extremes,
    in either order, repeatedly (the per-layer operands are reused only for equal weights)."""
    rng = np.random.default_rng(3)
    x3 = rng.integers(0, 256, (1, 40, 64)).astype(np.uint8)
    order = np.arange(64, dtype=np.int64)
    layers = []
    for seed in range(3):
        w3 = np.random.default_rng(seed).integers(-128, 128, (1, 64, 5)).astype(np.int8)
        for wzp in (0, 17):
            layers.append((w3, wzp, prefix_extremes(x3, w3, 9, wzp, order, 0)))
    assert len({want for _, _, want in layers}) == len(layers)
    for _ in range(2):
        for w3, wzp, want in layers + layers[::-1]:
            assert partials.partial_extremes(x3, w3, 9, wzp, order) == want


@pytest.mark.parametrize("tile", [0, 7])
@pytest.mark.parametrize("N", [1, 9])
def test_both_bounds_modes_and_the_switch_between_them_give_the_spec(tile, N, monkeypatch):
    """Operands with ``x >= zx``: block sums with the Cauchy-Schwarz bound on the first chunk,
    then (a hit rate above -1 always switches) exact ``P`` / ``Q`` on the next chunks; N = 1
    starts exact. Signed effective operands keep the block sums."""
    monkeypatch.setattr(partials, "HIT_RATE", -1.0)
    monkeypatch.setattr(partials, "CHUNK_BYTES", 2048)
    rng = np.random.default_rng(N + tile)
    K = 70
    x3 = rng.integers(40, 256, (1, 300, K)).astype(np.uint8)
    w3 = rng.integers(-128, 128, (1, K, N)).astype(np.int8)
    order = rng.permutation(K).astype(np.int64)
    for zx in (40, 200):  # x >= zx everywhere, then not
        for wzp in (0, rng.integers(-9, 9, (1, 1, N))):
            partials._OPERANDS.clear()
            want = prefix_extremes(x3, w3, zx, wzp, order, tile)
            for known in ((None, None), want):
                assert partials.partial_extremes(x3, w3, zx, wzp, order, tile, known) == want


@pytest.mark.parametrize("tile", [0, 64])
@pytest.mark.parametrize("N", [1, 9])
def test_extremes_inside_blocks_rising_row_by_row_are_found(tile, N):
    """Each block rises then falls back to ``x`` above its start (weights 16 x 127, 15 x -127,
    -126), rows a little larger one after the other: every block's peak is a new maximum,
    inside the block, above every block-end and final sum."""
    K, M = 96, 56
    x3 = (200 + np.arange(M, dtype=np.uint8))[None, :, None].repeat(K, axis=2)
    w = np.array(([127] * 16 + [-127] * 15 + [-126]) * (K // 32))
    w3 = np.repeat(w[None, :, None], N, axis=2).astype(np.int8)
    order = np.arange(K, dtype=np.int64)
    want = prefix_extremes(x3, w3, 0, 0, order, tile)
    exact = x3[0].astype(np.int64) @ w3[0].astype(np.int64)
    for known in ((None, None), (int(exact.min()), int(exact.max()))):
        assert partials.partial_extremes(x3, w3, 0, 0, order, tile, known) == want
