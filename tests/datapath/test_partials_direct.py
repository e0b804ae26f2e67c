"""The direct visit of every partial sum of a convolution (hwsim.datapath.partials:
``conv_scan``, ``depthwise_scan_nhwc``) against the plain-int spec: each output's products in
hardware order ``(c, i, j)`` reduced by ``hwsim.datapath.reference.accumulate``, and against the
block bounds (``direct=False``) of the same layer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.datapath import partials
from hwsim.datapath import reference as dref
from hwsim.datapath.config import Accumulator, ReductionOrder


def spec_extremes(x, w, zx, wzp, stride, pads, dilation, groups, tile):
    """(min, max) of every partial sum of every output, the products of each output listed in
    plain Python ints (padding holds zx) and reduced by the reference accumulator."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Fg = F // groups
    (sh, sw), (dh, dw), (pt, pl, pb, pr) = stride, dilation, pads
    ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
    zw = np.broadcast_to(np.asarray(wzp, np.int64).reshape(-1), (F,))
    acc = Accumulator(
        64, order=ReductionOrder.TILED if tile else ReductionOrder.SEQUENTIAL, tile_rows=tile,
        track_partials=True,
    )  # fmt: skip
    parts = []
    for n in range(N):
        for f in range(F):
            g = f // Fg
            for oh in range(ho):
                for ow in range(wo):
                    prods = []
                    for c in range(Cg):
                        for i in range(kh):
                            for j in range(kw):
                                ih, iw = oh * sh - pt + i * dh, ow * sw - pl + j * dw
                                inside = 0 <= ih < H and 0 <= iw < W
                                xv = int(x[n, g * Cg + c, ih, iw]) if inside else zx
                                prods.append((xv - zx) * (int(w[f, c, i, j]) - int(zw[f])))
                    parts += dref.accumulate(prods, acc)[3]
    return min(parts), max(parts)


@st.composite
def conv_cases(draw, depthwise: bool):
    groups = draw(st.integers(1, 4))
    cg = 1 if depthwise else draw(st.integers(1, 3))
    fg = 1 if depthwise and draw(st.booleans()) else draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw, dh, dw = (draw(st.integers(1, 2)) for _ in range(4))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 6))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 6))
    signed = draw(st.booleans())
    lo, hi = (-128, 127) if signed else (0, 255)
    shape = (draw(st.integers(1, 2)), groups * cg, H, W)
    edge = st.sampled_from([lo, lo + 1, hi - 1, hi, 0])
    vals = st.one_of(edge, st.integers(lo, hi))
    x = np.array(draw(st.lists(vals, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                 np.int8 if signed else np.uint8).reshape(shape)  # fmt: skip
    wshape = (groups * fg, cg, kh, kw)
    wv = st.one_of(st.sampled_from([-128, -127, 127]), st.integers(-128, 127))
    w = np.array(draw(st.lists(wv, min_size=int(np.prod(wshape)), max_size=int(np.prod(wshape)))),
                 np.int8).reshape(wshape)  # fmt: skip
    zx = draw(st.one_of(st.sampled_from([lo, hi, int(x.flat[0])]), st.integers(lo, hi)))
    if draw(st.booleans()):
        wzp = np.array(draw(st.lists(st.integers(-128, 127), min_size=groups * fg,
                                     max_size=groups * fg))).reshape(groups, 1, fg)  # fmt: skip
    else:
        wzp = draw(st.integers(-128, 127))
    tile = draw(st.sampled_from([0, 1, 2, 3, 5]))
    return x, w, zx, wzp, (sh, sw), pads, (dh, dw), groups, tile


@pytest.mark.parametrize("width", ["int32", "int64"])
@pytest.mark.parametrize("depthwise", [True, False])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_direct_extremes_equal_the_spec(depthwise, width, data):
    """Grouped and depthwise convolutions (depth multiplier 1 takes the NHWC kernel), strides,
    dilations, padding, per-channel weight zero points, tiles; both working widths (int64 when
    the bound leaves int32: forced here by lowering the limit); with and without the known
    final extremes; equal to the block bounds too."""
    case = data.draw(conv_cases(depthwise))
    want = spec_extremes(*case)
    with pytest.MonkeyPatch.context() as mp:
        if width == "int64":
            mp.setattr(partials, "DIRECT_INT32", 0)
        assert partials.conv_partial_extremes(*case, direct=True) == want
        assert partials.conv_partial_extremes(*case, known=want, direct=True) == want
    assert partials.conv_partial_extremes(*case, direct=False) == want


@pytest.mark.parametrize("tile", [0, 4, 9])
@pytest.mark.parametrize("signed", [False, True])
def test_direct_extremes_at_the_operand_limits(tile, signed):
    """All-extreme operands (every product at its largest magnitude, both signs), inputs all
    equal to the zero point (every product 0: the partial sums are all 0), and outputs whose
    window lies wholly in the padding."""
    lo, hi = (-128, 127) if signed else (0, 255)
    dt = np.int8 if signed else np.uint8
    rng = np.random.default_rng(tile + signed)
    for groups, cg, fg in ((4, 1, 1), (2, 1, 3), (1, 5, 20), (1, 3, 1)):
        w = np.where(rng.random((groups * fg, cg, 3, 3)) < 0.5, -128, 127).astype(np.int8)
        for x, zx in (
            (np.full((2, groups * cg, 4, 5), hi, dt), lo),
            (np.full((2, groups * cg, 4, 5), lo, dt), hi),
            (rng.integers(lo, hi + 1, (2, groups * cg, 4, 5)).astype(dt), 7),
            (np.full((1, groups * cg, 4, 5), 7, dt), 7),
        ):
            case = (x, w, zx, -128, (1, 2), (3, 0, 3, 2), (1, 1), groups, tile)
            want = spec_extremes(*case)
            assert partials.conv_partial_extremes(*case, direct=True) == want, (groups, zx)


def test_the_default_choice_gives_the_block_answer_on_layer_shapes():
    """Shapes the default sends each way (depthwise, 1x1 with many or few outputs, 3x3):
    direct=None equals the block bounds."""
    rng = np.random.default_rng(5)
    for (N, C, H), (F, Cg, k), groups in (
        ((8, 24, 8), (24, 1, 3), 24),
        ((8, 16, 8), (48, 16, 1), 1),
        ((8, 48, 8), (8, 48, 1), 1),
        ((2, 64, 1), (10, 64, 1), 1),
        ((4, 8, 8), (16, 8, 3), 1),
    ):
        x = rng.integers(0, 256, (N, C, H, H)).astype(np.uint8)
        w = rng.integers(-128, 128, (F, Cg, k, k)).astype(np.int8)
        args = (x, w, 100, 0, (1, 1), (k // 2,) * 4, (1, 1), groups)
        want = partials.conv_partial_extremes(*args, direct=False)
        assert partials.conv_partial_extremes(*args) == want


@pytest.mark.parametrize("tile", [0, 5])
def test_one_tracker_serves_many_inputs(tile):
    """A layer's ConvTracker (built once, as a ConvPlan keeps it) on inputs of other batch
    sizes and ranges, both ways, with and without a padded NHWC copy: the spec each time."""
    rng = np.random.default_rng(tile)
    w = rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)
    geometry = ((1, 1), (1, 1, 1, 1), (1, 1), 2)
    tracker = partials.ConvTracker(w, 3, *geometry, tile)
    for n, lo, hi, zx in ((2, 0, 256, 9), (1, 200, 256, 255), (3, 0, 40, 0)):
        x = rng.integers(lo, hi, (n, 8, 5, 4)).astype(np.uint8)
        want = spec_extremes(x, w, zx, 3, *geometry, tile)
        xp = np.full((n, 7, 6, 8), zx, np.uint8)
        xp[:, 1:-1, 1:-1] = x.transpose(0, 2, 3, 1)
        for direct in (True, False):
            assert tracker.extremes(x, zx, direct=direct) == want
        assert tracker.extremes(x, zx, direct=True, nhwc=(xp, zx)) == want
