"""Partial-sum extremes from block bounds (hwsim.datapath.partials) against the plain-int spec
(every exact partial sum of every output, in hardware order) and against the ordered kernel
they replace."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, ReductionOrder, conv2d, gemm, partials
from hwsim.datapath import reference as dref
from hwsim.datapath.kernels import ordered_reduce
from hwsim.numerics import IntFormat, Overflow
from tests.strategies import operand_arrays, operands, zero_point_lists


def _acc(tile: int) -> Accumulator:
    order = ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL
    return Accumulator(64, order=order, tile_rows=tile, track_partials=True)


def spec_extremes(x3, w3, zx, wzp, order, tile):
    """The extremes of :func:`hwsim.datapath.reference.accumulate`'s partial sums, every output."""
    G, M, K = x3.shape
    N = w3.shape[2]
    zw = np.broadcast_to(np.asarray(wzp, np.int64), (G, 1, N))
    parts = []
    for g in range(G):
        for m in range(M):
            for n in range(N):
                prods = [
                    (int(x3[g, m, k]) - zx) * (int(w3[g, k, n]) - int(zw[g, 0, n])) for k in order
                ]
                parts += dref.accumulate(prods, _acc(tile))[3]
    return (min(parts), max(parts)) if parts else (None, None)


def ordered_extremes(x3, w3, zx, wzp, order, tile):
    """The extremes from the int64 ordered kernel with tracking (the path the bounds replace)."""
    G, M, K = x3.shape
    N = w3.shape[2]
    we = w3.astype(np.int64) - np.asarray(wzp, np.int64)
    vals, ev, tev, pmin, pmax = (np.zeros((G, M, N), np.int64) for _ in range(5))
    lim = 1 << 62
    rows = np.arange(G * M, dtype=np.int64)
    ordered_reduce(x3, np.int64(zx), we, rows, order, -lim, lim, False, tile, -lim, lim, 62,
                   False, True, True, vals, ev, tev, pmin, pmax)  # fmt: skip
    return (int(pmin.min()), int(pmax.max())) if pmin.size and K else (None, None)


@given(
    operands(max_bits=8),
    operands(max_bits=8),
    st.integers(1, 2),
    st.integers(0, 5),
    st.integers(0, 9),
    st.integers(0, 4),
    st.integers(0, 4),
    st.sampled_from([1, 2, 3, 5, partials.BLOCK]),
    st.booleans(),
    st.sampled_from([None, None, "max", "min"]),
    st.data(),
)
def test_gemm_extremes_equal_the_spec(xo, wo, G, M, K, N, tile, block, per_channel, extreme, data):
    (xf, zx), (wf, zw) = xo, wo
    x3 = operand_arrays(data.draw, xf, (G, M, K), extreme)
    w3 = operand_arrays(data.draw, wf, (G, K, N), extreme)
    wzp = np.array(data.draw(zero_point_lists(wf, G * N))).reshape(G, 1, N) if per_channel else zw
    order = np.array(data.draw(st.permutations(range(K))), np.int64)
    want = spec_extremes(x3, w3, zx, wzp, order, tile)
    assert partials.partial_extremes(x3, w3, zx, wzp, order, tile, block=block) == want
    if want[0] is not None:  # seeds within the true range (e.g. final sums): the same extremes
        known = (want[0] + data.draw(st.integers(0, 3)), want[1] - data.draw(st.integers(0, 3)))
        assert partials.partial_extremes(x3, w3, zx, wzp, order, tile, known, block) == want


@pytest.mark.parametrize("x_signed", [False, True])
@pytest.mark.parametrize("tile", [0, 1, 7, 64])
@pytest.mark.parametrize("chunk", [1, 4096, partials.CHUNK_BYTES])
def test_extremes_equal_the_ordered_kernel_across_chunks(x_signed, tile, chunk, monkeypatch):
    """Hundreds of outputs (several bounds tasks of LANES outputs, chunks of every size),
    operands from narrow to full range: the ordered kernel's extremes."""
    monkeypatch.setattr(partials, "CHUNK_BYTES", chunk)
    rng = np.random.default_rng(tile + 10 * chunk + x_signed)
    G, M, K, N = 2, 150, 100, 5
    xf = IntFormat(8, x_signed)
    for spread in (1, 4, 128):
        lo, hi = (-spread, spread) if x_signed else (0, 2 * spread - 1)
        x3 = rng.integers(max(lo, xf.min), min(hi, xf.max) + 1, (G, M, K)).astype(xf.dtype)
        w3 = rng.integers(-128, 128, (G, K, N)).astype(np.int8)
        zx = int(rng.integers(xf.min, xf.max + 1)) if spread == 4 else 0
        wzp = rng.integers(-8, 8, (G, 1, N))
        order = rng.permutation(K).astype(np.int64)
        want = ordered_extremes(x3, w3, zx, wzp, order, tile)
        ex = (x3.astype(np.int64) - zx) @ (w3.astype(np.int64) - wzp)
        for known in ((None, None), (int(ex.min()), int(ex.max()))):
            got = partials.partial_extremes(x3, w3, zx, wzp, order, tile, known)
            assert got == want, (spread, known)


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 6))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 6))
    return dict(
        N=draw(st.integers(0, 2)),
        groups=groups,
        cg=draw(st.integers(1, 3)),
        fg=draw(st.integers(1, 2)),
        H=H,
        W=W,
        kernel=(kh, kw),
        stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        pads=pads,
        dilation=(dh, dw),
    )


@given(
    conv_cases(),
    operands(max_bits=8),
    operands(max_bits=8),
    st.integers(0, 4),
    st.sampled_from([1, 2, 4, partials.BLOCK]),
    st.sampled_from([1, partials.CHUNK_BYTES]),
    st.booleans(),
    st.sampled_from([None, None, "max", "min"]),
    st.sampled_from([0, 1 << 30]),
    st.data(),
)
def test_conv_extremes_equal_the_direct_spec(
    case, xo, wo, tile, block, chunk, per_channel, extreme, gather_wo, data
):
    """Unfolded straight from NCHW (kernel taps at the borders, strides, dilations, groups,
    lines split across chunks), by line copies (``GATHER_WO`` 0) or by gathers from a padded
    NHWC copy: the partial sums of the direct plain-int convolution."""
    (xf, zx), (wf, zw) = xo, wo
    G, F = case["groups"], case["groups"] * case["fg"]
    x = operand_arrays(data.draw, xf, (case["N"], G * case["cg"], case["H"], case["W"]), extreme)
    w = operand_arrays(data.draw, wf, (F, case["cg"]) + case["kernel"], extreme)
    wz = np.array(data.draw(zero_point_lists(wf, F))) if per_channel else zw
    _, want = dref.conv2d(
        x.tolist(), w.tolist(), case["stride"], case["pads"], case["dilation"], G, zx,
        wz.tolist() if per_channel else wz, _acc(tile), x.shape, w.shape,
    )  # fmt: skip
    wzp = wz.reshape(G, 1, case["fg"]) if per_channel else wz
    old = partials.CHUNK_BYTES, partials.GATHER_WO
    partials.CHUNK_BYTES, partials.GATHER_WO = chunk, gather_wo
    try:
        got = partials.conv_partial_extremes(
            x, w, zx, wzp, case["stride"], case["pads"], case["dilation"], G, tile, block=block
        )
    finally:
        partials.CHUNK_BYTES, partials.GATHER_WO = old
    assert got == (want.partial_min, want.partial_max)


def _unfolded_by_taps(x, zx, kernel, stride, pads, dilation, groups, starts, lens, width):
    """The transposed block operand of :func:`hwsim.datapath.partials.conv_blocks` in plain
    Python: row ``(g*nb + b, u)``, column ``(n, oh, ow)`` holds x at product ``t = starts[b]
    + u = (c*kh + i)*kw + j`` of group g's window, or ``zx`` outside x and past a block."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw) = kernel, stride, pads, dilation
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    cg, nb = C // groups, len(starts)
    out = np.full((groups * nb, width, N * ho * wo), zx, np.uint8)
    for g in range(groups):
        for b in range(nb):
            for u in range(lens[b]):
                t = starts[b] + u
                c, i, j = t // (kh * kw), t // kw % kh, t % kw
                for n in range(N):
                    for oh in range(ho):
                        for ow in range(wo):
                            ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                            if 0 <= ih < H and 0 <= iw < W:
                                m = (n * ho + oh) * wo + ow
                                out[g * nb + b, u, m] = x[n, g * cg + c, ih, iw]
    return out, ho, wo


@given(conv_cases(), st.sampled_from([1, 5, partials.BLOCK]), st.integers(0, 255), st.data())
def test_both_unfoldings_equal_the_plain_layout(case, block, zx, data):
    """:func:`conv_blocks` (line copies) and :func:`gather_blocks` (gathers from a padded NHWC
    copy, padding ``zx``) write the same transposed operand, every element (uint8 extremes 0
    and 255 among the draws, in x and in the padding value)."""
    G, (kh, kw) = case["groups"], case["kernel"]
    shape = (case["N"], G * case["cg"], case["H"], case["W"])
    size = int(np.prod(shape))
    value = st.sampled_from([0, 1, 127, 128, 254, 255]) | st.integers(0, 255)
    x = np.array(data.draw(st.lists(value, min_size=size, max_size=size)), np.uint8)
    x = x.reshape(shape)
    K = case["cg"] * kh * kw
    lay = partials.blocks(K, 0, block)
    want, ho, wo = _unfolded_by_taps(
        x, zx, case["kernel"], case["stride"], case["pads"], case["dilation"], G, lay.starts,
        lay.lens, lay.width,
    )  # fmt: skip
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = case["stride"], case["dilation"], case["pads"]
    N, C, H, W = shape
    got = np.empty_like(want)
    partials.conv_blocks(x, np.uint8(zx), 0, N * ho, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                         lay.starts, lay.lens, got)  # fmt: skip
    assert np.array_equal(got, want)
    Hp, Wp = H + pt + pb, W + pl + pr
    xp = np.empty((N, Hp, Wp, C), np.uint8)
    partials.pad_nhwc(x, pt, pl, np.uint8(zx), 0, xp)
    t = np.arange(K)
    off = ((t // kw % kh * dh * Wp + t % kw * dw) * C + t // (kh * kw))[None, :]
    off = np.ascontiguousarray(off + (np.arange(G) * case["cg"])[:, None], np.int64)
    n, oh = np.divmod(np.arange(N * ho, dtype=np.int64), ho)
    base = (((n * Hp + oh * sh) * Wp)[:, None] + (np.arange(wo) * sw)[None, :]) * C
    got = np.empty_like(want)
    partials.gather_blocks(xp.reshape(-1), base.reshape(-1), off, np.uint8(zx), lay.starts,
                           lay.lens, got)  # fmt: skip
    assert np.array_equal(got, want)


@pytest.mark.parametrize("overflow", list(Overflow))
@pytest.mark.parametrize("order", [ReductionOrder.SEQUENTIAL, ReductionOrder.TILED])
def test_tracked_counters_do_not_depend_on_the_tracking_path(overflow, order):
    """gemm / conv2d with 8-bit operands (block bounds) and the same values held in 9-bit
    formats (the ordered kernels on every row): identical values and counters, on narrow
    accumulators that overflow."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (3, 6, 7, 7)).astype(np.uint8)
    w = rng.integers(-128, 128, (4, 6, 3, 3)).astype(np.int8)
    tile = 5 if order is ReductionOrder.TILED else 0
    for bits in (12, 18, 32):
        acc = Accumulator(bits, overflow, order=order, tile_rows=tile, track_partials=True)
        runs = [
            conv2d(x.astype(np.int16), w.astype(np.int16), padding=1, stride=(1, 2),
                   x_operand=Operand(IntFormat(xb, False), 3),
                   w_operand=Operand(IntFormat(wb, True), -2), acc=acc)
            for xb, wb in ((8, 8), (9, 9))
        ]  # fmt: skip
        assert np.array_equal(runs[0].values, runs[1].values)
        assert runs[0].counters == runs[1].counters
        xg, wg = x.reshape(3, -1)[:, :50], w.reshape(4, -1).T[:50]
        dense = [
            gemm(xg.astype(np.int16), wg.astype(np.int16), x_operand=Operand(IntFormat(xb, False)),
                 w_operand=Operand(IntFormat(wb, True)), acc=acc)
            for xb, wb in ((8, 8), (9, 9))
        ]  # fmt: skip
        assert np.array_equal(dense[0].values, dense[1].values)
        assert dense[0].counters == dense[1].counters


def test_blocks_cut_at_tiles():
    lay = partials.blocks(10, 4, 3)
    assert lay.starts.tolist() == [0, 3, 4, 7, 8]
    assert lay.lens.tolist() == [3, 1, 3, 1, 2]
    assert lay.first.tolist() == [True, False, True, False, True]
    assert lay.last.tolist() == [False, True, False, True, True]
    seq = partials.blocks(10, 0, 4)
    assert seq.lens.tolist() == [4, 4, 2] and not seq.last.any() and seq.width == 4


@pytest.mark.parametrize(
    "x, zx",
    [
        (np.array([-128, 0, 127], np.int8), -128),
        (np.array([0, 5, 255], np.uint8), 7),
        (np.array([0, 3, 7], np.uint8), -8),  # a signed 4-bit format held in uint8
        (np.array([-8, 0, 7], np.int16), 3),
        (np.array([0, 200, 255], np.int64), 255),
    ],
)
def test_as_uint8_keeps_the_effective_operand(x, zx):
    xu, zu = partials.as_uint8(x, zx)
    assert xu.dtype == np.uint8 and 0 <= zu <= 255
    assert np.array_equal(xu.astype(np.int64) - zu, x.astype(np.int64) - zx)
