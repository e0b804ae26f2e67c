"""Convolution (im2col + grouped GEMM) against the direct plain-int convolution."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, conv2d
from hwsim.datapath import reference as dref
from hwsim.numerics import IntFormat, Overflow
from tests.strategies import accumulators, ints_in, operand_arrays, operands, zero_point_lists


@st.composite
def conv_cases(draw):
    groups = draw(st.integers(1, 3))
    cg = draw(st.integers(1, 2))
    fg = draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 6))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 6))
    N = draw(st.integers(0, 2))
    return dict(
        N=N,
        C=groups * cg,
        H=H,
        W=W,
        F=groups * fg,
        cg=cg,
        kh=kh,
        kw=kw,
        stride=(sh, sw),
        padding=pads,
        dilation=(dh, dw),
        groups=groups,
    )


@given(
    conv_cases(),
    operands(),
    operands(),
    accumulators(),
    st.booleans(),
    st.sampled_from([None, None, "max"]),
    st.data(),
)
def test_conv_equals_direct_reference(case, xo, wo, acc, per_channel, extreme, data):
    (xf, xzp), (wf, wzp) = xo, wo
    if per_channel:
        wzp = np.array(data.draw(zero_point_lists(wf, case["F"])))
    x = operand_arrays(data.draw, xf, (case["N"], case["C"], case["H"], case["W"]), extreme)
    w = operand_arrays(data.draw, wf, (case["F"], case["cg"], case["kh"], case["kw"]), extreme)
    xop, wop = Operand(xf, xzp), Operand(wf, wzp)
    got = conv2d(
        x,
        w,
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
        groups=case["groups"],
        x_operand=xop,
        w_operand=wop,
        acc=acc,
    )
    wz = wop.zero_point
    want, want_c = dref.conv2d(
        x.tolist(),
        w.tolist(),
        case["stride"],
        case["padding"],
        case["dilation"],
        case["groups"],
        xop.zero_point,
        wz.tolist() if np.ndim(wz) else wz,
        acc,
        x.shape,
        w.shape,
    )
    assert got.values.tolist() == want
    assert got.counters == want_c


def test_depthwise_conv_matches_a_per_channel_loop():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (2, 8, 9, 9)).astype(np.uint8)
    w = rng.integers(-128, 128, (8, 1, 3, 3)).astype(np.int8)
    xop = Operand(IntFormat(8, False), 128)
    got = conv2d(x, w, padding=1, groups=8, x_operand=xop).values
    for c in range(8):
        one = conv2d(x[:, c : c + 1], w[c : c + 1], padding=1, x_operand=xop).values
        assert np.array_equal(got[:, c : c + 1], one)


def test_conv_on_the_benchmark_shape_is_exact_against_int64():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (1, 16, 12, 12)).astype(np.int8)
    w = rng.integers(-128, 128, (8, 16, 3, 3)).astype(np.int8)
    got = conv2d(x, w, padding=1).values
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    want = np.zeros((1, 8, 12, 12), np.int64)
    for i in range(3):
        for j in range(3):
            want += np.einsum("nchw,fc->nfhw", xp[:, :, i : i + 12, j : j + 12], w[:, :, i, j])
    assert np.array_equal(got, want)
    sat = conv2d(x, w, padding=1, acc=Accumulator(16, Overflow.SATURATE))
    assert sat.counters.overflow_events > 0 and sat.counters.macs == 8 * 144 * 16 * 9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(x=np.zeros((1, 4, 5, 5), np.int8), w=np.zeros((2, 3, 3, 3), np.int8)), "expected 4"),
        (
            dict(x=np.zeros((1, 4, 5, 5), np.int8), w=np.zeros((3, 2, 3, 3), np.int8), groups=2),
            "must divide",
        ),
        (
            dict(x=np.zeros((1, 4, 2, 2), np.int8), w=np.zeros((2, 4, 3, 3), np.int8)),
            "larger than the padded input",
        ),
        (
            dict(x=np.zeros((1, 4, 5, 5), np.int8), w=np.zeros((2, 4, 3, 3), np.int8), stride=0),
            "stride must be",
        ),
        (
            dict(
                x=np.zeros((1, 4, 5, 5), np.int8),
                w=np.zeros((2, 4, 3, 3), np.int8),
                padding=(1, 2, 3),
            ),
            "padding must be",
        ),
        (
            dict(x=np.zeros((4, 5, 5), np.int8), w=np.zeros((2, 4, 3, 3), np.int8)),
            "x must have 4 dimensions",
        ),
    ],
)
def test_bad_conv_input_is_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conv2d(**kwargs)


@given(
    st.integers(1, 5),
    st.integers(1, 4),
    st.integers(1, 3),
    st.sampled_from([0, 0, 2, 5]),
    st.booleans(),
    st.sampled_from([None, "max"]),
    st.sampled_from([(2, 3), (1, 1), (1, 2)]),
    st.data(),
)
def test_saturating_conv_in_int16_lanes_follows_channel_major_order(
    groups, cg, k, tile, signed_x, extreme, nh, data
):
    """A 16-bit saturating conv runs the int16-lane kernel over the window-major unfolding in the
    documented channel-major (c, i, j) order; grouped shapes put group boundaries inside row
    blocks, and tiny outputs (1 or 2 rows per group) make one row block span several groups.
    Checked against the direct plain-int convolution."""
    from hwsim.datapath import ReductionOrder

    xf = IntFormat(8, signed_x)
    wf = IntFormat(8, True)
    (N, H), fg = nh, 2
    W = H
    k = min(k, H + 2)
    x = operand_arrays(data.draw, xf, (N, groups * cg, H, W), extreme)
    w = operand_arrays(data.draw, wf, (groups * fg, cg, k, k), extreme)
    xzp = data.draw(ints_in(xf.min, xf.max))
    acc = Accumulator(
        16,
        Overflow.SATURATE,
        order=ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL,
        tile_rows=tile,
    )
    xop, wop = Operand(xf, xzp), Operand(wf, 0)
    got = conv2d(x, w, padding=1, groups=groups, x_operand=xop, w_operand=wop, acc=acc)
    want, want_c = dref.conv2d(
        x.tolist(), w.tolist(), (1, 1), (1, 1, 1, 1), (1, 1), groups, xzp, 0, acc, x.shape, w.shape
    )
    assert got.values.tolist() == want
    assert got.counters == want_c


def test_zero_point_outside_the_input_dtype_pads_correctly():
    """An unsigned 8-bit operand held in an int8 array (values 0..127) with zero point 200: the
    padding must hold 200, which int8 cannot."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 128, (1, 2, 3, 3)).astype(np.int8)
    w = rng.integers(-8, 8, (2, 2, 3, 3)).astype(np.int8)
    xop = Operand(IntFormat(8, False), 200)
    got = conv2d(x, w, padding=1, x_operand=xop)
    want, want_c = dref.conv2d(
        x.tolist(),
        w.tolist(),
        (1, 1),
        (1, 1, 1, 1),
        (1, 1),
        1,
        200,
        0,
        Accumulator(),
        x.shape,
        w.shape,
    )
    assert got.values.tolist() == want
    assert got.counters == want_c


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("tile_bits, bits", [(12, 16), (16, 24), (20, 14)])
def test_conv_with_a_tile_register_of_its_own_width_equals_reference(overflow, tile_bits, bits):
    """Tiles of 5 products in the channel-major (c, i, j) order, the tile register narrower or
    wider than the accumulator; all-max and random operands."""
    rng = np.random.default_rng(tile_bits + bits)
    acc = Accumulator(bits, overflow, order="tiled", tile_rows=5, tile_bits=tile_bits)
    for x, w in (
        (np.full((1, 4, 5, 5), 127, np.int8), np.full((3, 4, 3, 3), -128, np.int8)),
        (rng.integers(-128, 128, (2, 4, 5, 5)).astype(np.int8),
         rng.integers(-128, 128, (3, 4, 3, 3)).astype(np.int8)),
    ):  # fmt: skip
        got = conv2d(x, w, padding=1, acc=acc)
        want, want_c = dref.conv2d(
            x.tolist(), w.tolist(), (1, 1), (1, 1, 1, 1), (1, 1), 1, 0, 0, acc, x.shape, w.shape
        )
        assert got.values.tolist() == want
        assert got.counters == want_c
        if tile_bits < bits:  # 5 all-max products leave the narrow tile register
            assert got.counters.tile_overflow_events > 0
