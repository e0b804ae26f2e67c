"""Every GEMM path (each exact engine x wrap / saturate x orders) against the plain-int spec."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, ReductionOrder, gemm, ort_available
from hwsim.datapath import reference as dref
from hwsim.numerics import IntFormat, Overflow
from tests.strategies import accumulators, operand_arrays, operands, zero_point_lists


def engines_for(xf, wf, K, x, w, xzp, wzp):
    """Engines whose exactness condition holds for this data (forcing another one raises)."""
    mx = int(np.max(np.abs(x.astype(np.int64) - xzp))) if x.size else 0
    mw = int(np.max(np.abs(w.astype(np.int64) - np.asarray(wzp)))) if w.size else 0
    out = ["auto", "numba", "float64"]
    if mx * mw <= 2**24:
        out.append("float32")
    if xf.bits <= 8 and wf.bits <= 8 and K * mx * mw < 2**31 and ort_available():
        out.append("ort")
    return out


def assert_matches_reference(x, w, xop, wop, acc, engine):
    wzp = wop.zero_point
    want, want_c = dref.gemm(
        x.tolist(),
        w.tolist(),
        xop.zero_point,
        wzp.tolist() if np.ndim(wzp) else wzp,
        acc,
        n_cols=w.shape[1],
    )
    got = gemm(x, w, x_operand=xop, w_operand=wop, acc=acc, engine=engine)
    assert got.values.shape == (x.shape[0], w.shape[1])
    assert [[int(v) for v in row] for row in got.values] == want, engine
    assert got.counters == want_c, engine


@given(
    operands(),
    operands(),
    accumulators(),
    st.integers(0, 5),
    st.integers(0, 9),
    st.integers(0, 5),
    st.booleans(),
    st.sampled_from([None, None, "max", "min"]),
    st.data(),
)
def test_gemm_equals_reference_on_every_engine(xo, wo, acc, M, K, N, per_channel, extreme, data):
    (xf, xzp), (wf, wzp) = xo, wo
    if per_channel and N:
        wzp = np.array(data.draw(zero_point_lists(wf, N)))
    x = operand_arrays(data.draw, xf, (M, K), extreme)
    w = operand_arrays(data.draw, wf, (K, N), extreme)
    xop, wop = Operand(xf, xzp), Operand(wf, wzp)
    for engine in engines_for(xf, wf, K, x, w, xzp, wop.zero_point):
        assert_matches_reference(x, w, xop, wop, acc, engine)


@given(accumulators(), st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.data())
def test_int8_gemm_with_narrow_accumulators(acc, M, K, N, data):
    """int8 operands and 8..17-bit accumulators: overflow is common, the order matters."""
    acc = Accumulator(
        min(acc.bits, 17), acc.overflow, acc.signed, acc.order, acc.tile_rows, acc.track_partials
    )
    xf, wf = IntFormat(8, data.draw(st.booleans())), IntFormat(8, True)
    x = operand_arrays(data.draw, xf, (M, K))
    w = operand_arrays(data.draw, wf, (K, N))
    assert_matches_reference(x, w, Operand(xf, 0), Operand(wf, 0), acc, "auto")


def test_all_max_operands_saturate_in_order():
    # 255 * 127 = 32385: the second and third MACs of every output saturate (64770, 97155)
    x = np.full((2, 3), 255, np.uint8)
    w = np.full((3, 2), 127, np.int8)
    acc = Accumulator(16, Overflow.SATURATE, track_partials=True)
    r = gemm(x, w, x_operand=Operand(IntFormat(8, False)), acc=acc)
    assert (r.values == 2**15 - 1).all()
    assert r.counters.overflow_events == 8 and r.counters.outputs_overflowed == 4
    assert r.counters.partial_max == 97155 and r.counters.bits_needed == 18
    wrapped = gemm(x, w, x_operand=Operand(IntFormat(8, False)), acc=Accumulator(16))
    assert (wrapped.values == 97155 - 2**16).all() and wrapped.counters.overflow_events == 4


def test_tiled_order_can_avoid_a_saturation_that_sequential_order_hits():
    # products 100, 100, -100, -100 on an 8-bit accumulator (max 127):
    # sequential: 100, 127 (sat), 27, -73; tiled by 2: tile sums 127 (sat), -128 (sat) -> -1
    x = np.array([[10, 10, -10, -10]], np.int8)
    w = np.array([[10], [10], [10], [10]], np.int8)
    seq = gemm(x, w, acc=Accumulator(8, Overflow.SATURATE))
    tiled = gemm(x, w, acc=Accumulator(8, Overflow.SATURATE, order="tiled", tile_rows=2))
    assert seq.values[0, 0] == -73 and seq.counters.overflow_events == 1
    assert tiled.values[0, 0] == -1 and tiled.counters.overflow_events == 2


def test_empty_dimensions():
    for M, K, N in [(0, 3, 2), (2, 0, 3), (2, 3, 0), (0, 0, 0)]:
        r = gemm(np.zeros((M, K), np.int8), np.zeros((K, N), np.int8))
        assert r.values.shape == (M, N) and not r.values.any()
        assert r.counters.macs == 0


def test_large_random_int8_gemm_is_exact_and_fast_paths_agree():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (300, 700)).astype(np.int8)
    w = rng.integers(-128, 128, (700, 40)).astype(np.int8)
    exact = x.astype(np.int64) @ w.astype(np.int64)
    results = {e: gemm(x, w, engine=e).values for e in ("auto", "float32", "float64", "numba")}
    for e, v in results.items():
        assert np.array_equal(v, exact), e
    sat = gemm(x, w, acc=Accumulator(16, Overflow.SATURATE))
    sat_tracked = gemm(x, w, acc=Accumulator(16, Overflow.SATURATE, track_partials=True))
    assert np.array_equal(sat.values, sat_tracked.values)
    assert sat.counters.overflow_events == sat_tracked.counters.overflow_events > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((2, 3), np.int8), w=np.zeros((4, 2), np.int8)), "K differs"),
        (
            dict(x=np.zeros((2, 3), np.float32), w=np.zeros((3, 2), np.int8)),
            "x must have an integer",
        ),
        (
            dict(x=np.full((2, 3), 200, np.int16), w=np.zeros((3, 2), np.int8)),
            "x holds 200, outside the range of int8",
        ),
        (dict(x=np.zeros((2, 3, 1), np.int8), w=np.zeros((3, 2), np.int8)), "x must have 2 dim"),
        (
            dict(x=np.zeros((2, 3), np.int8), w=np.zeros((3, 2), np.int8), engine="gpu"),
            "engine must be one of",
        ),
        (
            dict(
                x=np.zeros((2, 3), np.int8),
                w=np.zeros((3, 2), np.int8),
                w_operand=Operand(IntFormat(8), np.array([1, 2, 3])),
            ),
            "3 entries, expected 2",
        ),
    ],
)
def test_bad_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gemm(**kwargs)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Accumulator(bits=7), "Accumulator.bits must be in \\[8, 64\\]"),
        (lambda: Accumulator(bits=65), "Accumulator.bits"),
        (lambda: Accumulator(overflow="clip"), "Accumulator.overflow must be one of wrap"),
        (lambda: Accumulator(order="tiled"), "tile_rows must be > 0"),
        (lambda: Operand(IntFormat(17)), "Operand.format.bits must be in \\[2, 16\\]"),
        (lambda: Operand(IntFormat(8), 128), "Operand.zero_point holds 128"),
    ],
)
def test_bad_configuration_is_named(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@st.composite
def narrow_saturating(draw):
    """16-bit signed saturating accumulators on operands of at most 8 bits: the int16-lane
    kernel's domain (every product fits int16), in both reduction orders."""
    order = draw(st.sampled_from(list(ReductionOrder)))
    return Accumulator(
        16,
        Overflow.SATURATE,
        order=order,
        tile_rows=draw(st.integers(1, 9)) if order is ReductionOrder.TILED else 0,
    )


@given(
    operands(max_bits=8),
    operands(max_bits=8),
    narrow_saturating(),
    st.integers(1, 11),
    st.integers(1, 48),
    st.integers(1, 5),
    st.booleans(),
    st.sampled_from([None, "max", "max"]),
    st.data(),
)
def test_int16_lane_kernel_equals_reference(xo, wo, acc, M, K, N, per_channel, extreme, data):
    """Rows that can saturate go to the int16-lane kernel (blocks of 4 rows, ragged last
    block); all-max operands make every row saturate, repeatedly, on both rails."""
    (xf, xzp), (wf, wzp) = xo, wo
    if per_channel:
        wzp = np.array(data.draw(zero_point_lists(wf, N)))
    x = operand_arrays(data.draw, xf, (M, K), extreme)
    w = operand_arrays(data.draw, wf, (K, N), extreme)
    assert_matches_reference(x, w, Operand(xf, xzp), Operand(wf, wzp), acc, "auto")


def test_int16_lane_kernel_hits_both_rails_and_counts_every_clamp(monkeypatch):
    import sys

    gemm_mod = sys.modules["hwsim.datapath.gemm"]

    calls = []
    real = gemm_mod.ordered_sat16
    monkeypatch.setattr(gemm_mod, "ordered_sat16", lambda *a: calls.append(1) or real(*a))
    x = np.array([[127] * 40, [-128] * 40, [127, -128] * 20, [-128] * 20 + [127] * 20], np.int8)
    w = np.full((40, 3), -128, np.int8)
    w[:, 1] = 127
    got = gemm(x, w, acc=Accumulator(16, Overflow.SATURATE))
    want, want_c = dref.gemm(x.tolist(), w.tolist(), 0, 0, Accumulator(16, Overflow.SATURATE), 3)
    assert got.values.tolist() == want
    assert got.counters == want_c
    assert got.values.min() == -32768 and got.values.max() == 32767
    assert got.counters.overflow_events > 0
    assert calls, "the int16-lane kernel was not dispatched"


def test_unsigned_64_bit_accumulator_keeps_uint64_values():
    """A 64-bit unsigned wrapping accumulator returns uint64 (a regression: the int32 fast-path
    conversion once reinterpreted these values as int64)."""
    acc = Accumulator(64, Overflow.WRAP, signed=False)
    got = gemm(np.array([[-1]], np.int8), np.array([[1]], np.int8), acc=acc)
    want, _ = dref.gemm([[-1]], [[1]], 0, 0, acc)
    assert got.values.dtype == np.uint64
    assert got.values.tolist() == want == [[2**64 - 1]]


def test_empty_per_channel_zero_point_with_no_output_channels():
    wop = Operand(IntFormat(8, True), np.zeros(0, np.int64))
    got = gemm(np.ones((2, 3), np.int8), np.zeros((3, 0), np.int8), w_operand=wop)
    assert got.values.shape == (2, 0) and got.counters.macs == 0


# -- a tile register of its own width (Accumulator.tile_bits, eq. 10) ------------------------


@st.composite
def split_tile_accumulators(draw, max_bits=64):
    """Tiled accumulators whose in-array tile register has its own width (narrower or wider
    than the accumulator), saturating or wrapping, signed or not, tracked or not."""
    widths = [b for b in (8, 9, 12, 16, 17, 20, 24, 32, 33, 48, 63, 64) if b <= max_bits]
    bits = draw(st.sampled_from(widths))
    tile_bits = draw(st.sampled_from([b for b in (8, 9, 12, 16, 20, 24, 32, 48) if b != bits]))
    return Accumulator(
        bits=bits,
        overflow=draw(st.sampled_from(list(Overflow))),
        signed=draw(st.booleans()),
        order=ReductionOrder.TILED,
        tile_rows=draw(st.integers(1, 5)),
        track_partials=draw(st.booleans()),
        tile_bits=tile_bits,
    )


@given(
    operands(),
    operands(),
    split_tile_accumulators(),
    st.integers(0, 5),
    st.integers(0, 12),
    st.integers(0, 5),
    st.booleans(),
    st.sampled_from([None, "max", "max", "min"]),
    st.data(),
)
def test_tile_bits_gemm_equals_reference(xo, wo, acc, M, K, N, per_channel, extreme, data):
    """Values and counters (tile-register events included) of the fast path equal the plain-int
    reference for every tile width, rule and engine; all-max operands overflow every tile."""
    (xf, xzp), (wf, wzp) = xo, wo
    if per_channel and N:
        wzp = np.array(data.draw(zero_point_lists(wf, N)))
    x = operand_arrays(data.draw, xf, (M, K), extreme)
    w = operand_arrays(data.draw, wf, (K, N), extreme)
    xop, wop = Operand(xf, xzp), Operand(wf, wzp)
    for engine in engines_for(xf, wf, K, x, w, xzp, wop.zero_point):
        assert_matches_reference(x, w, xop, wop, acc, engine)


@given(split_tile_accumulators(max_bits=24), st.integers(1, 6), st.integers(1, 48), st.data())
def test_tile_bits_with_int8_operands_and_narrow_tiles(acc, M, N, data):
    """int8 operands, narrow tile registers below (or above) narrow accumulators: tiles overflow
    often, on the int8 shapes the int16/int32 lane kernels would otherwise take."""
    K = data.draw(st.integers(1, 40))
    xf, wf = IntFormat(8, data.draw(st.booleans())), IntFormat(8, True)
    extreme = data.draw(st.sampled_from([None, "max", "min"]))
    x = operand_arrays(data.draw, xf, (M, K), extreme)
    w = operand_arrays(data.draw, wf, (K, min(N, 5)), extreme)
    assert_matches_reference(x, w, Operand(xf, 0), Operand(wf, 0), acc, "auto")


@pytest.mark.parametrize("overflow", list(Overflow))
def test_narrow_tile_register_on_a_32_bit_accumulator(overflow):
    """All-max int8 operands: a tile of 32 products is 32 * 127 * 127 = 516128 > 2^17 - 1, so
    an 18-bit in-array partial sum overflows in every tile while the 32-bit accumulator would
    hold the exact sum; the tile events are counted apart (Counters.tile_overflow_events)."""
    x = np.full((3, 64), 127, np.int8)
    w = np.full((64, 2), 127, np.int8)
    wide = Accumulator(32, overflow, order="tiled", tile_rows=32)
    acc = Accumulator(32, overflow, order="tiled", tile_rows=32, tile_bits=18)
    got, exact = gemm(x, w, acc=acc), gemm(x, w, acc=wide)
    want, want_c = dref.gemm(x.tolist(), w.tolist(), 0, 0, acc, n_cols=2)
    assert got.values.tolist() == want and got.counters == want_c
    assert (exact.values == 64 * 127 * 127).all() and exact.counters.overflow_events == 0
    if overflow is Overflow.SATURATE:
        assert (got.values == 2 * (2**17 - 1)).all()
        # 8 * 16129 = 129032 fits; products 9..32 of each tile saturate
        assert got.counters.tile_overflow_events == 6 * 2 * 24
    else:
        assert (got.values == 2 * (32 * 127 * 127 - 2 * 2**18)).all()  # each tile wraps twice
        assert got.counters.tile_overflow_events == 6 * 2 * 2
    assert got.counters.overflow_events == got.counters.tile_overflow_events
    assert got.counters.outputs_overflowed == 6


def test_tile_bits_needs_a_tiled_order_and_normalises():
    with pytest.raises(ValueError, match="tile_bits is only meaningful with order=TILED"):
        Accumulator(32, tile_bits=20)
    with pytest.raises(ValueError, match="Accumulator.tile_bits must be in"):
        Accumulator(32, order="tiled", tile_rows=4, tile_bits=7)
    same = Accumulator(32, order="tiled", tile_rows=4, tile_bits=32)
    assert same == Accumulator(32, order="tiled", tile_rows=4) and same.tile_format.bits == 32


def test_tile_bits_lane_kernels_are_bypassed(monkeypatch):
    """A 16-bit saturating accumulator normally runs the int16-lane kernel; a 12-bit tile
    register of its own must not (that kernel's tiles are 16-bit): the int64 kernel runs."""
    import sys

    gemm_mod = sys.modules["hwsim.datapath.gemm"]
    monkeypatch.setattr(gemm_mod, "ordered_sat16", lambda *a: pytest.fail("int16 lanes used"))
    monkeypatch.setattr(gemm_mod, "ordered_track32", lambda *a: pytest.fail("int32 lanes used"))
    x = np.full((2, 16), 100, np.int8)
    w = np.full((16, 2), 100, np.int8)
    for acc in (
        Accumulator(16, Overflow.SATURATE, order="tiled", tile_rows=4, tile_bits=12),
        Accumulator(16, Overflow.WRAP, order="tiled", tile_rows=4, tile_bits=12,
                    track_partials=True),  # fmt: skip
    ):
        want, want_c = dref.gemm(x.tolist(), w.tolist(), 0, 0, acc, n_cols=2)
        got = gemm(x, w, acc=acc)
        assert got.values.tolist() == want and got.counters == want_c
