"""The fused convolution paths against the plain-int reference: the convolution summed and
requantized in one pass (:func:`conv2d_requant`), the direct depthwise sums, the output stage
that reads the grouped GEMM's layout -- values and counters to the bit."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.datapath import Accumulator, Operand, conv2d, output_stage
from hwsim.datapath import reference as dref
from hwsim.datapath.conv import ConvPlan, conv2d_requant
from hwsim.datapath.kernels import gmn_output_exact, gmn_output_ort
from hwsim.datapath.output import ort_stage_args
from hwsim.numerics import IntFormat, Overflow, ScaleRegister
from hwsim.numerics import reference as nref
from tests.strategies import edge_values, ints_in, operand_arrays, zero_point_lists


@st.composite
def conv_shapes(draw, depthwise: bool = False):
    """Convolution geometries; ``depthwise``: one input channel per group (a depth multiplier
    of 1-2 output channels per group), larger kernels and strides."""
    groups = draw(st.integers(1, 4 if depthwise else 3))
    cg = 1 if depthwise else draw(st.integers(1, 3))
    fg = draw(st.integers(1, 2))
    kh, kw = (
        draw(st.integers(1, 5 if depthwise else 3)),
        draw(st.integers(1, 5 if depthwise else 3)),
    )
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = tuple(draw(st.integers(0, 3)) for _ in range(4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, dh * (kh - 1) + 1 - pads[0] - pads[2]), 9))
    W = draw(st.integers(max(1, dw * (kw - 1) + 1 - pads[1] - pads[3]), 9))
    N = draw(st.integers(0, 2))
    return dict(
        N=N, C=groups * cg, H=H, W=W, F=groups * fg, cg=cg, kh=kh, kw=kw, stride=(sh, sw),
        padding=pads, dilation=(dh, dw), groups=groups,
    )  # fmt: skip


@st.composite
def small_operands(draw, max_bits: int = 8):
    fmt = IntFormat(draw(st.integers(2, max_bits)), draw(st.booleans()))
    return fmt, draw(ints_in(fmt.min, fmt.max))


@st.composite
def signed_accumulators(draw):
    """Signed accumulators that a layer's sums may or may not provably fit, in every order."""
    order = draw(st.sampled_from(["sequential", "tiled"]))
    bits = draw(st.sampled_from([12, 16, 17, 20, 24, 31, 32, 48, 62]))
    tile_bits = None
    if order == "tiled" and draw(st.booleans()):
        tile_bits = draw(st.sampled_from([10, 16, 24, 32]))
    return Accumulator(
        bits=bits,
        overflow=draw(st.sampled_from(list(Overflow))),
        order=order,
        tile_rows=draw(st.integers(1, 4)) if order == "tiled" else 0,
        track_partials=draw(st.booleans()),
        tile_bits=tile_bits,
    )


def _operands(data, case, xo, wo, per_channel, extreme):
    (xf, xzp), (wf, wzp) = xo, wo
    if per_channel:
        wzp = np.array(data.draw(zero_point_lists(wf, case["F"])))
    x = operand_arrays(data.draw, xf, (case["N"], case["C"], case["H"], case["W"]), extreme)
    w = operand_arrays(data.draw, wf, (case["F"], case["cg"], case["kh"], case["kw"]), extreme)
    return x, w, Operand(xf, xzp), Operand(wf, wzp)


def _reference_conv(x, w, case, xop, wop, acc):
    wz = wop.zero_point
    return dref.conv2d(
        x.tolist(), w.tolist(), case["stride"], case["padding"], case["dilation"], case["groups"],
        xop.zero_point, wz.tolist() if np.ndim(wz) else wz, acc, x.shape, w.shape,
    )  # fmt: skip


def _reference_output(values, bias, scale, acc, out_fmt, zp):
    """Eq. 15 with the ``ort`` register, one plain int at a time: (outputs, bias overflows,
    clamped)."""
    lo, hi = nref.format_range(acc.bits, True)
    outs, bovf, clamped = [], 0, 0
    for n, planes in enumerate(values):
        outs.append([])
        for f, plane in enumerate(planes):
            outs[n].append([])
            for line in plane:
                row = []
                for v in line:
                    e = v + bias[f]
                    bovf += not lo <= e <= hi
                    if acc.overflow is Overflow.WRAP:
                        t = nref.wrap(e, acc.bits, True)
                    else:
                        t = nref.saturate(e, acc.bits, True)
                    y = nref.ort_requantize(t, Fraction(float(scale[f]))) + zp
                    o = nref.saturate(y, out_fmt.bits, out_fmt.signed)
                    clamped += o != y
                    row.append(o)
                outs[n][f].append(row)
    return outs, bovf, clamped


def _bound(x, w, xop, wop, K):
    mx = int(np.max(np.abs(x.astype(np.int64) - xop.zero_point))) if x.size else 0
    zw = (
        np.asarray(wop.zero_point, np.int64).reshape((-1,) + (1,) * 3)
        if np.ndim(wop.zero_point)
        else wop.zero_point
    )
    mw = int(np.max(np.abs(w.astype(np.int64) - zw))) if w.size else 0
    return K * mx * mw


@given(
    st.booleans(),
    small_operands(),
    small_operands(),
    signed_accumulators(),
    st.booleans(),
    st.sampled_from([None, None, None, "max", "min"]),
    st.sampled_from(["tensor", "channel"]),
    st.data(),
)
def test_conv2d_requant_equals_the_plain_int_conv_and_output_stage(
    depthwise, xo, wo, acc, per_channel, extreme, scales, data
):
    """Values, bias overflows, clamps and every counter against ``dref.conv2d`` and eq. 15 in
    plain ints -- where the fused path applies, which is exactly where the accumulator and its
    tile register provably hold every partial sum."""
    case = data.draw(conv_shapes(depthwise))
    x, w, xop, wop = _operands(data, case, xo, wo, per_channel, extreme)
    F, K = case["F"], case["cg"] * case["kh"] * case["kw"]
    fmt = acc.format
    edges = st.sampled_from(edge_values(fmt.min, fmt.max))
    small = ints_in(max(fmt.min, -(2**12)), min(fmt.max, 2**12))
    # small biases (no sum + bias can leave the accumulator: the branch-free stage) or any
    bias = data.draw(st.lists(data.draw(st.sampled_from([small, edges | small])), min_size=F,
                              max_size=F))  # fmt: skip
    n_scales = F if scales == "channel" else 1
    scale = np.array(
        data.draw(st.lists(st.floats(2.0**-12, 4.0, width=32), min_size=n_scales,
                           max_size=n_scales)), np.float32,
    )  # fmt: skip
    reg = ScaleRegister("ort", scale if scales == "channel" else scale[0], np.zeros((), np.int64))
    out_fmt = IntFormat(data.draw(st.sampled_from([4, 8, 16])), data.draw(st.booleans()))
    zp = data.draw(ints_in(out_fmt.min, out_fmt.max))
    got = conv2d_requant(
        x, w, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], x_operand=xop, w_operand=wop, acc=acc, register=reg,
        bias=np.array(bias, np.int64), out_format=out_fmt, out_zero_point=zp,
    )  # fmt: skip
    lim = min(fmt.max, acc.tile_format.max)
    fits = _bound(x, w, xop, wop, K) <= lim
    assert (got is not None) == fits
    event("fused" if fits else "not fused")
    if got is None:
        return
    out, counters = got
    want_vals, want_c = _reference_conv(x, w, case, xop, wop, acc)
    want, bovf, clamped = _reference_output(
        want_vals, bias, np.broadcast_to(scale, (F,)), acc, out_fmt, zp
    )
    assert out.values.dtype == out_fmt.dtype
    assert out.values.tolist() == want
    assert (out.bias_overflows, out.clamped) == (bovf, clamped)
    assert counters == want_c
    # a ReLU / Clip applied by the plan's output stage: the clamp count stays the format's
    act = tuple(sorted(data.draw(st.lists(ints_in(out_fmt.min, out_fmt.max), min_size=2,
                                          max_size=2))))  # fmt: skip
    plan = ConvPlan.build(
        w, x.shape[1:], stride=case["stride"], padding=case["padding"],
        dilation=case["dilation"], groups=case["groups"], x_operand=xop, w_operand=wop, acc=acc,
        register=reg, bias=np.array(bias, np.int64), out_format=out_fmt, out_zero_point=zp,
    )  # fmt: skip
    out2, counters2 = plan.run(x, act)
    assert out2.values.tolist() == np.clip(out.values, *act).tolist()  # out.values == want
    assert (out2.bias_overflows, out2.clamped, counters2) == (bovf, clamped, want_c)


@given(
    conv_shapes(depthwise=True),
    small_operands(16),
    small_operands(16),
    st.sampled_from([Accumulator(), Accumulator(64), Accumulator(48, "saturate")]),
    st.booleans(),
    st.sampled_from([None, None, "max", "min"]),
    st.data(),
)
def test_depthwise_conv_sums_directly_as_the_plain_int_conv(case, xo, wo, acc, per_channel,
                                                            extreme, data):  # fmt: skip
    """One input channel per group, summed straight from x (no unfolding) wherever the
    accumulator provably holds the sums: 2..16-bit operands, per-channel weight zero points,
    depth multipliers, strides, dilations, padding wider than the kernel reach."""
    x, w, xop, wop = _operands(data, case, xo, wo, per_channel, extreme)
    got = conv2d(
        x, w, stride=case["stride"], padding=case["padding"], dilation=case["dilation"],
        groups=case["groups"], x_operand=xop, w_operand=wop, acc=acc,
    )  # fmt: skip
    want, want_c = _reference_conv(x, w, case, xop, wop, acc)
    assert got.values.tolist() == want
    assert got.counters == want_c


@pytest.mark.parametrize("groups, cg", [(1, 3), (4, 1), (2, 2)])
def test_all_max_operands_at_the_accumulator_limit(groups, cg):
    """uint8 255 against int8 -128 (zero points 0): K * 255 * 128 products; an accumulator
    exactly as wide as the bound takes the fused path, one bit narrower does not."""
    x = np.full((2, groups * cg, 5, 5), 255, np.uint8)
    w = np.full((groups, cg, 3, 3), -128, np.int8)
    xop, wop = Operand(IntFormat(8, False), 0), Operand(IntFormat(8, True), 0)
    bound = cg * 9 * 255 * 128
    bits = bound.bit_length() + 1  # the signed accumulator whose max is >= bound
    reg = ScaleRegister("ort", np.float32(2.0**-10), np.zeros((), np.int64))
    kw = dict(padding=1, groups=groups, x_operand=xop, w_operand=wop, register=reg)
    got = conv2d_requant(x, w, acc=Accumulator(bits), **kw)
    assert got is not None
    assert got[1].final_min == -bound
    assert conv2d_requant(x, w, acc=Accumulator(bits - 1), **kw) is None
    ref = conv2d(
        x, w, padding=1, groups=groups, x_operand=xop, w_operand=wop, acc=Accumulator(bits)
    )
    want = output_stage(ref.values, reg, acc=Accumulator(bits), fused=False)
    assert np.array_equal(got[0].values, want.values)
    assert got[1] == ref.counters


@given(
    st.integers(1, 3),
    st.integers(0, 3),
    st.integers(0, 150),
    st.integers(0, 4),
    st.sampled_from([np.int32, np.int64]),
    st.sampled_from([(32, "wrap"), (32, "saturate"), (40, "wrap"), (20, "saturate")]),
    st.data(),
)
def test_gmn_output_stage_is_the_output_stage_of_the_transposed_sums(G, N, P, Fg, dtype, acc,
                                                                     data):  # fmt: skip
    """Sums in the grouped GEMM layout (G, N*P, Fg): tiles of 64 positions, empty and size-1
    axes, int32 extremes (INT_MIN, INT_MAX), biases that overflow the accumulator both ways
    (wrap and saturate counted) -- equal to the numpy output stage of the NCHW sums."""
    acc = Accumulator(acc[0], acc[1])
    fmt = acc.format
    lo, hi = max(fmt.min, np.iinfo(dtype).min), min(fmt.max, np.iinfo(dtype).max)
    vals = data.draw(hnp.arrays(dtype, (G, N * P, Fg), elements=ints_in(lo, hi)))
    F = G * Fg
    bias = np.array(data.draw(st.lists(ints_in(fmt.min, fmt.max), min_size=F, max_size=F)),
                    np.int64)  # fmt: skip
    scale = np.array(
        data.draw(st.lists(st.floats(2.0**-30, 2.0, width=32), min_size=F, max_size=F)),
        np.float32,
    )
    out_fmt = IntFormat(8, data.draw(st.booleans()))
    zp = data.draw(ints_in(out_fmt.min, out_fmt.max))
    out = np.empty((N, F, P), out_fmt.dtype)
    vmin, vmax, bovf, clamped = gmn_output_ort(
        vals, N, bias, *ort_stage_args(acc, scale, out_fmt, zp), out
    )
    nchw = vals.reshape(G, N, P, Fg).transpose(1, 0, 3, 2).reshape(N, F, P)
    reg = ScaleRegister("ort", scale, np.zeros((), np.int64))
    want = output_stage(
        nchw, reg, acc=acc, bias=bias, out_format=out_fmt, out_zero_point=zp, fused=False
    )
    assert np.array_equal(out, want.values)
    assert (bovf, clamped) == (want.bias_overflows, want.clamped)
    if vals.size:
        assert (vmin, vmax) == (int(vals.min()), int(vals.max()))


@given(
    st.integers(1, 3),
    st.integers(0, 3),
    st.integers(0, 150),
    st.integers(0, 40),
    st.sampled_from([np.int32, np.int64]),
    st.sampled_from([32, 40, 20]),
    st.data(),
)
def test_branch_free_gmn_output_stage_is_the_output_stage(G, N, P, Fg, dtype, bits, data):
    """:func:`gmn_output_exact` (sums and biases whose sum stays in the accumulator) against
    the numpy output stage: ties of the float32 product (power-of-two scales), products beyond
    2^23 and up to the register's 2^62 limit, clamps at both output rails; a ReLU / Clip's
    bounds applied after the clamp count."""
    acc = Accumulator(bits)
    fmt = acc.format
    half = (fmt.max // 2, np.iinfo(dtype).max)
    vals = data.draw(hnp.arrays(dtype, (G, N * P, Fg), elements=ints_in(-min(half), min(half))))
    F = G * Fg
    bias = np.array(
        data.draw(st.lists(ints_in(-(fmt.max // 2), fmt.max // 2), min_size=F, max_size=F)),
        np.int64,
    )
    pow2 = st.sampled_from([2.0**-k for k in range(0, 31)] + [2.0**k for k in range(1, 40)])
    scale = np.array(
        data.draw(st.lists(pow2 | st.floats(2.0**-30, 2.0**30, width=32), min_size=F,
                           max_size=F)), np.float32,
    )  # fmt: skip
    out_fmt = IntFormat(data.draw(st.sampled_from([8, 16])), data.draw(st.booleans()))
    zp = data.draw(ints_in(out_fmt.min, out_fmt.max))
    alo, ahi = sorted(data.draw(st.lists(ints_in(out_fmt.min, out_fmt.max), min_size=2,
                                         max_size=2)))  # fmt: skip
    if data.draw(st.booleans()):  # no activation
        alo, ahi = out_fmt.min, out_fmt.max
    out = np.empty((N, F, P), out_fmt.dtype)
    vmin, vmax, bovf, clamped = gmn_output_exact(
        vals, N, bias, scale, zp, out_fmt.min, out_fmt.max, alo, ahi, out
    )
    nchw = vals.reshape(G, N, P, Fg).transpose(1, 0, 3, 2).reshape(N, F, P)
    reg = ScaleRegister("ort", scale, np.zeros((), np.int64))
    want = output_stage(
        nchw, reg, acc=acc, bias=bias, out_format=out_fmt, out_zero_point=zp, fused=False
    )
    assert np.array_equal(out, np.clip(want.values, alo, ahi))  # the activation after it
    assert (bovf, clamped) == (0, want.clamped) and want.bias_overflows == 0
    if vals.size:
        assert (vmin, vmax) == (int(vals.min()), int(vals.max()))
