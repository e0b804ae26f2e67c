"""The int16-lane saturating kernel's own choices, through ``gemm`` and ``conv2d``, against the
plain-int reference (``hwsim.datapath.reference``): which row blocks it runs and which keep
their exact sums (the bound ``sum_k |x - zx| * max|w - zw| <= 32767``), its int64 values
written straight into the GEMM's or the convolution's output, chunk by chunk, and the final
extremes it finds. Every expected value and counter comes from the reference."""

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, ReductionOrder, conv2d, gemm
from hwsim.datapath import reference as dref
from hwsim.datapath.ordered import LANES, ROWS
from hwsim.numerics import IntFormat, Overflow
from tests.strategies import ints_in, operand_arrays

gemm_mod = sys.modules["hwsim.datapath.gemm"]
conv_mod = sys.modules["hwsim.datapath.conv"]


def _sat(bits: int = 16, tile: int = 0) -> Accumulator:
    order = ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL
    return Accumulator(bits, Overflow.SATURATE, order=order, tile_rows=tile)


def _count_lanes16(mp: pytest.MonkeyPatch) -> list:
    """A list that gets an entry per call of the int16-lane kernel (these tests are about
    that path)."""
    calls = []
    real = gemm_mod.ordered_sat16
    mp.setattr(gemm_mod, "ordered_sat16", lambda *a: calls.append(1) or real(*a))
    return calls


@pytest.fixture
def lanes16_calls(monkeypatch):
    return _count_lanes16(monkeypatch)


def _check_gemm(x, w, xop: Operand, wop: Operand, acc: Accumulator):
    want, want_c = dref.gemm(
        x.tolist(), w.tolist(), xop.zero_point, wop.zero_point, acc, n_cols=w.shape[1]
    )
    got = gemm(x, w, x_operand=xop, w_operand=wop, acc=acc)
    assert got.values.dtype == np.int64
    assert got.values.tolist() == want
    assert got.counters == want_c


@st.composite
def mixed_rows(draw):
    """uint8 or int8 x (M, K) whose rows are quiet (near the zero point: their bound fits and
    a block of them keeps the exact sums), loud (extremes: they saturate, in both
    directions, and come back), or on the bound's edge (``sum |x - zx|`` = the limit - 1, the
    limit, the limit + 1); int8 weights with one column at +-max |w|. M and N across block and
    panel boundaries, K from 1 up, any tile."""
    signed = draw(st.booleans())
    fmt = IntFormat(8, signed)
    zx = draw(st.sampled_from([0, fmt.min, fmt.max, (fmt.min + fmt.max) // 2]))
    M = draw(st.sampled_from([1, ROWS - 1, ROWS, ROWS + 1, 2 * ROWS + 3]))
    K = draw(st.integers(1, 40))
    N = draw(st.sampled_from([1, 2, LANES - 1, LANES, LANES + 1, 2 * LANES + 1]))
    wmax = draw(st.sampled_from([1, 2, 100, 127, 128]))
    w = np.array(
        draw(
            st.lists(ints_in(-wmax + (wmax == 128), min(wmax, 127)), min_size=K * N, max_size=K * N)
        ),
        np.int64,
    ).reshape(K, N)
    w[:, 0] = -wmax if wmax == 128 else wmax  # max |w| reached: the bound's limit is exact
    lim = 32767 // wmax
    x = np.empty((M, K), np.int64)
    for m in range(M):
        kind = draw(st.sampled_from(["quiet", "loud", "edge"]))
        if kind == "loud":
            x[m] = operand_arrays(draw, fmt, (K,), draw(st.sampled_from([None, "max", "min"])))
            continue
        # |x - zx| per product from zx towards the range's far end, summing to the target
        room = max(fmt.max - zx, zx - fmt.min)
        step = 1 if fmt.max - zx >= zx - fmt.min else -1
        want = lim + draw(st.integers(-1, 1)) if kind == "edge" else draw(st.integers(0, 3))
        left = min(want, room * K)
        for k in range(K):
            d = min(left, room)
            x[m, k] = zx + step * d
            left -= d
    dtype = np.int8 if signed else np.uint8
    return x.astype(dtype), Operand(fmt, zx), w.astype(np.int8), draw(st.sampled_from([0, 1, 3, 7]))


@settings(max_examples=300)  # cheap examples: a wider sweep of the shapes
@given(mixed_rows())
def test_gemm_blocks_of_quiet_loud_and_edge_rows_equal_reference(case):
    """Every product fits int16 (at most 255 * 128): the int16 lanes run these."""
    x, xop, w, tile = case
    with pytest.MonkeyPatch.context() as mp:
        calls = _count_lanes16(mp)
        _check_gemm(x, w, xop, Operand(IntFormat(8, True), 0), _sat(16, tile))
    assert calls


def test_saturation_exactly_at_the_limit_and_one_past(lanes16_calls):
    """Sums reaching exactly +32767 / -32768 are not events; one more is one event, and the
    value stays on the rail. Column 0 (weights +1) sums 255 * 128 + the last x: 32767, 32768,
    32768, 32769; column 1 (weights -1) the negatives: -32767, -32768 (on the rail, no event),
    -32768, -32769."""
    K = 129
    x = np.full((4, K), 255, np.uint8)
    x[0, -1], x[1, -1], x[2, -1], x[3, -1] = 127, 128, 128, 129
    w = np.ones((K, 2), np.int8)
    w[:, 1] = -1
    acc = _sat()
    got = gemm(x, w, x_operand=Operand(IntFormat(8, False), 0), acc=acc)
    want, want_c = dref.gemm(x.tolist(), w.tolist(), 0, 0, acc)
    assert got.values.tolist() == want
    assert got.counters == want_c
    assert got.values[:, 0].tolist() == [32767, 32767, 32767, 32767]
    assert got.values[:, 1].tolist() == [-32767, -32768, -32768, -32768]
    assert got.counters.overflow_events == 3 + 1
    assert got.counters.outputs_overflowed == 4
    assert lanes16_calls


def test_all_max_operands_and_int_min_weights(lanes16_calls):
    """uint8 255 with zero point 127 (x - zx = 128) times int8 -128 (the most negative
    product, -16384) and +127, alternating columns; rows of all 255 and of all 0 (x - zx =
    -127), a row that flips between them every product."""
    K = 70
    x = np.full((3, K), 255, np.uint8)
    x[1] = 0
    x[2, ::2] = 0
    w = np.full((K, LANES + 1), -128, np.int8)
    w[:, 1::2] = 127
    w[K // 2 :, 0] = 127  # column 0 rails one way, then the other
    for tile in (0, 4):
        acc = _sat(16, tile)
        _check_gemm(x, w, Operand(IntFormat(8, False), 127), Operand(IntFormat(8, True), 0), acc)
    assert lanes16_calls


@given(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.booleans())
def test_empty_and_size_one_dimensions(M, K, N, tile):
    """M, K or N of 0 or 1 (K = 0 and empty outputs keep the exact sums without the
    kernel)."""
    x = np.full((M, K), 255, np.uint8)
    w = np.full((K, N), 127, np.int8)
    _check_gemm(
        x,
        w,
        Operand(IntFormat(8, False), 0),
        Operand(IntFormat(8, True), 0),
        _sat(16, 2 if tile else 0),
    )


@settings(max_examples=150)
@given(
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from([1, 3]),
    st.sampled_from([0, 2, 5]),
    st.sampled_from([12, 15, 16, 17, 20, 24, 31, 32]),
    st.sampled_from([None, "max", "min"]),
    st.booleans(),
    st.data(),
)
def test_conv_chunk_by_chunk_equals_reference_for_12_to_32_bit_registers(
    N, groups, k, tile, bits, extreme, small_chunks, data
):
    """A saturating convolution of several images, chunked one image at a time or not, its
    values written into the NCHW output chunk by chunk (16 bits with products that fit int16:
    straight from the int16 lanes; else through the GEMM layout); per-channel weight zero
    points."""
    xf, wf = IntFormat(8, data.draw(st.booleans())), IntFormat(8, True)
    cg, fg, H = 2, 2, 4
    x = operand_arrays(data.draw, xf, (N, groups * cg, H, H), extreme)
    w = operand_arrays(data.draw, wf, (groups * fg, cg, k, k), extreme)
    mid = (xf.min + xf.max) // 2
    xzp = data.draw(st.sampled_from([mid, mid + 1, xf.min, xf.max]))
    wzp = [data.draw(st.sampled_from([0, 0, 1, -1])) for _ in range(groups * fg)]
    acc = _sat(bits, tile)
    xop, wop = Operand(xf, xzp), Operand(wf, np.array(wzp))
    with pytest.MonkeyPatch.context() as mp:
        if small_chunks:
            mp.setattr(conv_mod, "CHUNK_BYTES", 1)
        got = conv2d(x, w, padding=1, groups=groups, x_operand=xop, w_operand=wop, acc=acc)
    want, want_c = dref.conv2d(
        x.tolist(),
        w.tolist(),
        (1, 1),
        (1, 1, 1, 1),
        (1, 1),
        groups,
        xzp,
        wzp,
        acc,
        x.shape,
        w.shape,
    )
    assert got.values.tolist() == want
    assert got.counters == want_c
