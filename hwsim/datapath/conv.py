"""2-D convolution (NCHW) as grouped GEMMs on the emulated accumulator.

The input is padded and turned NHWC once, then unfolded window-major (each kernel tap is one
contiguous run of channels) into a reused scratch buffer; exact sums are order-free, and the
ordered kernels visit those columns in the documented channel-major order.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, replace

import numpy as np

from hwsim.datapath import partials
from hwsim.datapath.config import AccResult, Accumulator, Counters, Operand
from hwsim.datapath.engines import exact_sums, max_abs_effective
from hwsim.datapath.gemm import check_accumulable, check_operand, reduce_batched, weight_zero_point
from hwsim.datapath.isa import Isa, depthwise, pairs_saturate, resolve
from hwsim.datapath.kernels import (
    depthwise_nhwc_exact,
    depthwise_output_exact,
    depthwise_output_ort,
    depthwise_sums,
    gmn_output_exact,
    gmn_output_ort,
    gmn_to_nchw,
    im2col_nhwc,
    pad_nhwc,
)
from hwsim.datapath.output import OutputResult, ort_params, ort_stage_args
from hwsim.numerics import IntFormat, ScaleRegister


def _pair(v, name: str, lo: int) -> tuple[int, int]:
    t = (v, v) if np.ndim(v) == 0 else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and i >= lo for i in t):
        raise ValueError(f"{name} must be an int or a pair of ints >= {lo}, got {v!r}")
    return int(t[0]), int(t[1])


def _pads(padding) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (ph, pw) or ONNX-order (top, left, bottom, right)."""
    if np.ndim(padding) == 0:
        padding = (padding,) * 4
    p = tuple(padding)
    if len(p) == 2:
        p = (p[0], p[1], p[0], p[1])
    if len(p) != 4 or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in p):
        raise ValueError(
            f"padding must be an int >= 0, (ph, pw) or (top, left, bottom, right); got {padding!r}"
        )
    return tuple(int(i) for i in p)


def conv_output_size(
    size: int, kernel: int, stride: int, pad_a: int, pad_b: int, dilation: int
) -> int:
    """``floor((size + pad_a + pad_b - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + pad_a + pad_b - dilation * (kernel - 1) - 1) // stride + 1


@dataclass(frozen=True)
class _Geometry:
    """A validated convolution's shapes: input (N, C, H, W), weights (F, Cg, kh, kw), strides,
    dilations, pads (top, left, bottom, right), groups, output (ho, wo)."""

    N: int
    C: int
    H: int
    W: int
    F: int
    Cg: int
    kh: int
    kw: int
    sh: int
    sw: int
    dh: int
    dw: int
    pads: tuple[int, int, int, int]
    groups: int
    ho: int
    wo: int

    @property
    def K(self) -> int:
        return self.Cg * self.kh * self.kw

    @property
    def Fg(self) -> int:
        return self.F // self.groups


def _geometry(x_shape, w_shape, stride, padding, dilation, groups, x_operand, w_operand):
    """The :class:`_Geometry` of a convolution of (N, C, H, W) inputs by (F, C/groups, kh,
    kw) weights (the errors of :func:`conv2d`)."""
    sh, sw = _pair(stride, "stride", 1)
    dh, dw = _pair(dilation, "dilation", 1)
    pt, pl, pb, pr = _pads(padding)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    N, C, H, W = x_shape
    F, Cg, kh, kw = w_shape
    if C % groups or F % groups:
        raise ValueError(f"groups={groups} must divide both input channels C={C} and filters F={F}")
    if Cg != C // groups:
        raise ValueError(
            f"w has {Cg} input channels per group; x has C={C}, groups={groups}: "
            f"expected {C // groups}"
        )
    if kh < 1 or kw < 1:
        raise ValueError(f"w kernel must be at least 1x1, got {kh}x{kw}")
    ho = conv_output_size(H, kh, sh, pt, pb, dh)
    wo = conv_output_size(W, kw, sw, pl, pr, dw)
    if ho < 1 or wo < 1:
        raise ValueError(
            f"kernel {kh}x{kw} (dilation {dh}x{dw}) is larger than the padded input "
            f"{H + pt + pb}x{W + pl + pr}"
        )
    g = _Geometry(N, C, H, W, F, Cg, kh, kw, sh, sw, dh, dw, (pt, pl, pb, pr), int(groups), ho, wo)
    check_accumulable(g.K, x_operand, w_operand)
    return g


def conv2d(
    x,
    w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    x_operand: Operand = Operand(),
    w_operand: Operand = Operand(),
    acc: Accumulator = Accumulator(),
    engine: str = "auto",
    isa="exact",
) -> AccResult:
    """Integer convolution ``acc[n, f, oh, ow] = sum_{c,i,j} (x[n, g*Cg + c, ih, iw] - zx) *
    (w[f, c, i, j] - zw[f])`` with ``ih = oh*sh - pad_top + i*dh`` (same for w), ``g = f // Fg``.

    ``x``: (N, C, H, W); ``w``: (F, C/groups, kh, kw); padding positions hold the input zero
    point (they contribute 0 but are counted as MACs, as an im2col array performs them). The
    reduction order over K = Cg*kh*kw is channel-major ``(c, i, j)``. Returns (N, F, Ho, Wo).

    ``isa`` (``exact``, ``avx2``, ``auto``): ``avx2`` computes what onnxruntime's
    ``QLinearConv`` computes on x86 without VNNI (eq. 16): for a uint8 input and int8 weights,
    raw products are paired along the NHWC unfolding ``(i, j, c)`` of each group (column
    ``(i*kw + j)*Cg + c``, pairs ``(2t, 2t+1)``, crossing kernel taps when Cg is odd, padding
    holding the raw zero point) and each pair is clamped to int16. A depthwise convolution
    (one input and one output channel per group) runs MLAS's exact depthwise kernel.

    A convolution with one input channel per group whose accumulator provably cannot overflow
    (:func:`_cannot_overflow`) is summed directly from ``x`` (:func:`depthwise_sums`, no
    unfolding); its values and counters are those of the unfolded path.
    """
    x = check_operand(x, x_operand, "x", 4)
    w = check_operand(w, w_operand, "w", 4)
    g = _geometry(x.shape, w.shape, stride, padding, dilation, groups, x_operand, w_operand)
    wzp = weight_zero_point(w_operand, g.groups, g.Fg, "w_operand")
    zx = x_operand.zero_point
    max_x = max_abs_effective(x, zx)  # padding holds zx, so it adds nothing
    isa = resolve(isa)
    if depthwise(g.groups, g.F, g.Cg) or not pairs_saturate(
        isa, x_operand.format, w_operand.format
    ):
        isa = Isa.EXACT  # MlasConvDepthwise is exact; so is every pair but u8 x s8 (eq. 16)
    # partial sums tracked from block bounds unfolded straight from x (hwsim.datapath.partials)
    track = (
        acc.track_partials
        and partials.applies(x_operand.format, w_operand.format)
        and not pairs_saturate(isa, x_operand.format, w_operand.format)
    )
    direct = (
        g.Cg == 1
        and isa is Isa.EXACT
        and (track or not acc.track_partials)
        and _cannot_overflow(g.K, max_x, _max_w(w, wzp), acc)
    )
    tracker = _tracker(w, wzp, g, acc) if track else None  # built once, for every chunk
    if direct:
        out = np.empty((g.N, g.F, g.ho, g.wo), np.int64)
        lo, hi = depthwise_sums(x, np.int64(zx), _depthwise_weights(w, wzp), *_dw_geometry(g), out)
        return AccResult(out, _direct_counters(x, tracker, zx, g, lo, hi))
    xin, xop, xp = _padded_nhwc(x, x_operand, g)
    w3 = _gemm_weights(w, g)
    N = g.N
    unsigned64 = acc.bits == 64 and not acc.signed
    out = np.empty((N, g.F, g.ho * g.wo), np.uint64 if unsigned64 else np.int64)
    counters = None
    for n0, n1, c in _unfolded(xp, g, xin.dtype):
        values, part = reduce_batched(
            c,
            w3,
            xop,
            w_operand,
            wzp,
            replace(acc, track_partials=False) if track else acc,
            engine,
            order=_hardware_order(g.Cg, g.kh, g.kw),
            max_x=max_x,
            isa=isa,
            out=out[n0:n1] if out.dtype == np.int64 else None,
        )
        if track:
            known = (part.final_min, part.final_max)
            part.partial_min, part.partial_max = tracker.extremes(x[n0:n1], int(zx), known)
        if values is not None:  # else written to out
            gmn_to_nchw(values, n1 - n0, out[n0:n1])
        counters = part if counters is None else counters.merge(part)
    return AccResult(out.reshape(N, g.F, g.ho, g.wo), counters)


def conv2d_requant(
    x,
    w,
    *,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    x_operand: Operand = Operand(),
    w_operand: Operand = Operand(),
    acc: Accumulator = Accumulator(),
    register: ScaleRegister,
    bias=None,
    out_format: IntFormat = IntFormat(8, True),
    out_zero_point: int = 0,
    engine: str = "auto",
    isa="exact",
) -> tuple[OutputResult, Counters] | None:
    """:func:`conv2d` followed by :func:`hwsim.datapath.output_stage` (``bias`` and the
    register along the channel axis 1), in one pass over the sums: the output stage reads
    the grouped GEMM's sums in their own layout (:func:`gmn_output_ort`), or a convolution
    with one input channel per group is summed and requantized row by row
    (:func:`depthwise_output_ort`), so no int64 (N, F, Ho, Wo) array of sums is made.
    Returns ``(OutputResult, Counters)``, equal to ``output_stage(conv2d(...).values, ...)``
    and ``conv2d(...).counters``.

    It applies -- else returns None, and the caller composes the two -- where those values
    are the exact sums and the counters follow from them: an ``ort`` register per tensor or
    per output channel (:func:`hwsim.datapath.output.ort_params`); a signed accumulator of at
    most 62 bits that provably cannot overflow (:func:`_cannot_overflow`: no product sum of
    this layer's operands reaches its range, nor a tile register's, so the values are the
    exact sums in any order and there are no overflow events); exact sums (``isa`` exact, or
    a depthwise convolution); partial sums tracked, if asked, from block bounds
    (:func:`hwsim.datapath.partials.applies`). :class:`ConvPlan` is the same computation
    with what depends only on the weights and the layer built once."""
    x = check_operand(x, x_operand, "x", 4)
    plan = ConvPlan.build(
        w, x.shape[1:], stride=stride, padding=padding, dilation=dilation, groups=groups,
        x_operand=x_operand, w_operand=w_operand, acc=acc, register=register, bias=bias,
        out_format=out_format, out_zero_point=out_zero_point, engine=engine, isa=isa,
    )  # fmt: skip
    return None if plan is None else plan.run(x)


class ConvPlan:
    """:func:`conv2d_requant` for one layer: the weights validated and laid out (window-major
    GEMM operand, or depthwise effective weights), their zero points and largest magnitude,
    the bias and register vectors of the output stage -- built once (:meth:`build`); then
    :meth:`run` per batch of inputs of shape (N, C, H, W) (any N)."""

    def __init__(self, w, g, x_operand, w_operand, acc, wzp, max_w, params, stage, engine):
        self.w, self.g, self.xop, self.wop, self.acc = w, g, x_operand, w_operand, acc
        self.wzp, self.max_w, self.engine = wzp, max_w, engine
        self.bias = params[1]
        self.stage = stage
        self.lim = _sum_limit(acc)
        # the format's bound fits: no input can overflow, no scan of x is needed
        self.fmt_fits = g.K * x_operand.max_abs * max_w <= min(self.lim, (1 << 31) - 1)
        self.bias_max = int(np.abs(self.bias).max()) if self.bias.size else 0
        self.scale = params[0]
        self.tracker = None  # the partial-sum extremes, where tracked
        if acc.track_partials:
            self.tracker = _tracker(w, wzp, g, acc)
        if g.Cg == 1:
            self.we = _depthwise_weights(w, wzp)
            self.we32 = self.we.astype(np.int32)
            self.wt = np.ascontiguousarray(self.we32.reshape(g.F, -1).T)  # (kh*kw, F)
        else:
            self.w3 = _gemm_weights(w, g)

    @classmethod
    def build(
        cls, w, x_shape, *, stride=1, padding=0, dilation=1, groups: int = 1,
        x_operand: Operand = Operand(), w_operand: Operand = Operand(),
        acc: Accumulator = Accumulator(), register: ScaleRegister, bias=None,
        out_format: IntFormat = IntFormat(8, True), out_zero_point: int = 0,
        engine: str = "auto", isa="exact",
    ) -> ConvPlan | None:  # fmt: skip
        """The plan for inputs of shape ``(N,) + x_shape``, or None where
        :func:`conv2d_requant` does not apply whatever the input (see there); raises on
        invalid arguments as :func:`conv2d` and :func:`hwsim.datapath.output_stage` do."""
        w = check_operand(w, w_operand, "w", 4)
        g = _geometry((0, *x_shape), w.shape, stride, padding, dilation, groups,
                      x_operand, w_operand)  # fmt: skip
        if not isinstance(register, ScaleRegister):
            raise ValueError(f"register must be a ScaleRegister, got {type(register).__name__}")
        params = ort_params(register, acc, bias, g.F)
        if params is None:
            return None
        out_format.check(out_zero_point, "out_zero_point")
        isa = resolve(isa)
        if not depthwise(g.groups, g.F, g.Cg) and pairs_saturate(
            isa, x_operand.format, w_operand.format
        ):
            return None
        if acc.track_partials and not partials.applies(x_operand.format, w_operand.format):
            return None
        if not acc.signed:
            return None
        wzp = weight_zero_point(w_operand, g.groups, g.Fg, "w_operand")
        max_w = _max_w(w, wzp)
        stage = ort_stage_args(acc, params[0], out_format, out_zero_point)
        plan = cls(w, g, x_operand, w_operand, acc, wzp, max_w, params, stage, engine)
        plan.out_dtype = out_format.dtype
        return plan

    def run(self, x, act: tuple[int, int] | None = None) -> tuple[OutputResult, Counters] | None:
        """The layer on ``x`` (N, C, H, W) of the plan's input operand: ``(OutputResult,
        Counters)``, or None when this input's magnitudes could overflow the accumulator
        (:func:`_cannot_overflow`; the caller then composes :func:`conv2d` and the output
        stage). ``act``: the bounds ``(lo, hi)`` of a ReLU / Clip applied to the outputs
        after the output stage (its clamp count is the output format's alone)."""
        x = check_operand(x, self.xop, "x", 4)
        g = replace(self.g, N=x.shape[0])
        if x.shape[1:] != (g.C, g.H, g.W):
            raise ValueError(f"x has shape {x.shape}; the plan takes (N, {g.C}, {g.H}, {g.W})")
        zx = self.xop.zero_point
        max_x = self.xop.max_abs
        if not self.fmt_fits:
            max_x = max_abs_effective(x, zx)
            if not _cannot_overflow(g.K, max_x, self.max_w, self.acc):
                return None
        acc, stage, b, track = self.acc, self.stage, self.bias, self.acc.track_partials
        out = np.empty((g.N, g.F, g.ho, g.wo), self.out_dtype)
        bound = g.K * max_x * self.max_w
        # no sum + bias can leave the accumulator: the output stage has no overflow to apply
        exact = bound + self.bias_max <= acc.format.max
        zp, olo, ohi = stage[6:]
        alo, ahi = (olo, ohi) if act is None else act
        if g.Cg == 1:
            nhwc = None
            if exact and bound < 1 << 31 and g.F == g.C and (g.C >= 32 or g.ho * g.wo <= 256):
                # many channels or small planes: summed along the channels of NHWC rows
                _, xop, xp = _padded_nhwc(x, self.xop, g)
                nhwc = (xp, xop.zero_point)
                lo, hi, bovf, clamped = depthwise_nhwc_exact(
                    xp, np.int32(xop.zero_point), self.wt, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw,
                    b, self.scale, zp, olo, ohi, alo, ahi, out,
                )  # fmt: skip
            elif exact and bound < 1 << 31:  # the sums fit int32
                lo, hi, bovf, clamped = depthwise_output_exact(
                    x, np.int32(zx), self.we32, *_dw_geometry(g), b, self.scale, zp, olo, ohi,
                    alo, ahi, out,
                )  # fmt: skip
            else:
                lo, hi, bovf, clamped = depthwise_output_ort(
                    x, np.int64(zx), self.we, *_dw_geometry(g), b, *stage, out
                )
                if act is not None:
                    np.clip(out, alo, ahi, out=out)
            counters = _direct_counters(x, self.tracker, zx, g, lo, hi, nhwc)
            return OutputResult(out, int(bovf), int(clamped)), counters
        xin, xop, xp = _padded_nhwc(x, self.xop, g)
        out3 = out.reshape(g.N, g.F, g.ho * g.wo)
        counters = Counters()
        bovf = clamped = 0
        for n0, n1, c in _unfolded(xp, g, xin.dtype):
            sums = exact_sums(c, self.w3, xop.zero_point, self.wzp, xop.format, self.wop.format,
                              self.engine, max_x, self.max_w)  # fmt: skip
            if exact:
                lo, hi, nb, ncl = gmn_output_exact(
                    sums, n1 - n0, b, self.scale, zp, olo, ohi, alo, ahi, out3[n0:n1]
                )
            else:
                lo, hi, nb, ncl = gmn_output_ort(sums, n1 - n0, b, *stage, out3[n0:n1])
                if act is not None:
                    np.clip(out3[n0:n1], alo, ahi, out=out3[n0:n1])
            part = Counters(macs=sums.size * g.K)
            if sums.size:
                part.final_min, part.final_max = int(lo), int(hi)
            if track:
                known, nhwc = (part.final_min, part.final_max), (xp[n0:n1], xop.zero_point)
                part.partial_min, part.partial_max = self.tracker.extremes(
                    x[n0:n1], zx, known, nhwc=nhwc
                )
            counters.merge(part)
            bovf += int(nb)
            clamped += int(ncl)
        return OutputResult(out, bovf, clamped), counters


def _cannot_overflow(K: int, max_x: int, max_w: int, acc: Accumulator) -> bool:
    """``K * max|x - zx| * max|w - zw|`` -- a bound on every partial sum of every output, in
    any order -- lies within the signed accumulator's range and its tile register's: its values
    are then the exact sums and it has no overflow events, whatever its overflow rule."""
    return acc.signed and K * max_x * max_w <= _sum_limit(acc)


def _sum_limit(acc: Accumulator) -> int:
    """The largest sum both the accumulator and its tile register hold."""
    return min(acc.format.max, acc.tile_format.max)


def _max_w(w: np.ndarray, wzp) -> int:
    """``max |w - zw[f]|`` of (F, Cg, kh, kw) weights, ``wzp`` scalar or (groups, 1, Fg)."""
    return max_abs_effective(w, np.asarray(wzp).reshape(-1, 1, 1, 1) if np.ndim(wzp) else wzp)


def _depthwise_weights(w: np.ndarray, wzp) -> np.ndarray:
    """The effective weights ``w - zw[f]`` of a one-channel-per-group convolution as (F, kh,
    kw) int64."""
    F, _, kh, kw = w.shape
    zw = np.asarray(wzp, np.int64).reshape(-1, 1, 1) if np.ndim(wzp) else np.int64(wzp)
    return np.ascontiguousarray(w.reshape(F, kh, kw).astype(np.int64) - zw)


def _dw_geometry(g: _Geometry) -> tuple:
    return g.sh, g.sw, g.pads[0], g.pads[1], g.dh, g.dw


def _direct_counters(x, tracker, zx, g: _Geometry, lo, hi, nhwc=None) -> Counters:
    """The counters of sums that are exact (no overflow events): MACs, the final extremes
    ``lo``/``hi`` (None when there are no outputs) and, with a
    :class:`~hwsim.datapath.partials.ConvTracker` (tracked), the partial extremes (``nhwc``:
    ``x`` padded NHWC by :func:`_padded_nhwc` and its zero point, if at hand)."""
    c = Counters(macs=g.N * g.F * g.ho * g.wo * g.K)
    if g.N * g.F:
        c.final_min, c.final_max = int(lo), int(hi)
    if tracker is not None:
        known = (c.final_min, c.final_max)
        c.partial_min, c.partial_max = tracker.extremes(x, zx, known, nhwc=nhwc)
    return c


def _tracker(w, wzp, g: _Geometry, acc) -> partials.ConvTracker:
    """The partial-sum tracker of this layer's weights (weight-only state, built once)."""
    return partials.ConvTracker(w, wzp, (g.sh, g.sw), g.pads, (g.dh, g.dw), g.groups, acc.tile)


def _padded_nhwc(x: np.ndarray, x_operand: Operand, g: _Geometry):
    """``x`` padded with its zero point and turned NHWC in a scratch buffer: ``(xin, xop,
    xp)``, an int8 input unfolded as uint8 ``x + 128`` (the exact engines' fast operand type)
    with operand ``xop`` of zero point ``zx + 128``."""
    zx = x_operand.zero_point
    xop = x_operand
    xin, flip = x, 0
    if x.dtype == np.int8 and x_operand.format.signed:
        xin, flip = x.view(np.uint8), 0x80
        xop = Operand(IntFormat(8, False), int(zx) + 128)
    elif not np.iinfo(x.dtype).min <= zx <= np.iinfo(x.dtype).max:
        xin = x.astype(np.int64)  # the padding holds the zero point, which x's dtype cannot
    pt, pl, pb, pr = g.pads
    xp = _scratch("xp", (g.N, g.H + pt + pb, g.W + pl + pr, g.C), xin.dtype)
    pad_nhwc(xin, pt, pl, xin.dtype.type(xop.zero_point), flip, xp)
    return xin, xop, xp


def _gemm_weights(w: np.ndarray, g: _Geometry) -> np.ndarray:
    """The weights in the window-major column order ``(i, j, c)``: (groups, K, Fg)."""
    w3 = w.reshape(g.groups, g.Fg, g.Cg, g.kh, g.kw).transpose(0, 3, 4, 2, 1)
    return np.ascontiguousarray(w3).reshape(g.groups, g.K, g.Fg)


def _unfolded(xp: np.ndarray, g: _Geometry, dtype):
    """``(n0, n1, cols)`` for chunks of a few images: ``cols`` (groups, (n1-n0)*ho*wo, K) the
    window-major unfolding of ``xp[n0:n1]`` (:func:`im2col_nhwc`) in a reused scratch buffer,
    or ``xp`` itself for a 1x1 kernel of stride 1 and one group (its rows are the windows).
    The columns and their sums stay in cache; every output row is independent, so the
    chunking changes no value and no counter."""
    N, K, P = g.N, g.K, g.ho * g.wo
    per_image = max(1, g.groups * P * K * np.dtype(dtype).itemsize)
    nb = max(1, min(N, CHUNK_BYTES // per_image))
    pointwise = g.kh == g.kw == 1 and g.sh == g.sw == 1 and g.groups == 1
    cols = None if pointwise else _scratch("cols", (g.groups, nb * P, K), dtype)
    for n0 in range(0, max(N, 1), nb):
        n1 = min(N, n0 + nb)
        if pointwise:
            yield n0, n1, xp[n0:n1].reshape(1, (n1 - n0) * P, K)
            continue
        c = cols[:, : (n1 - n0) * P]
        im2col_nhwc(xp[n0:n1], g.groups, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.ho, g.wo, c)
        yield n0, n1, c


CHUNK_BYTES = 4 << 20  # unfolded columns per chunk


_local = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-thread scratch array of ``shape`` and ``dtype``, a view of one byte buffer per
    ``name`` that only grows (the layers of a network, each of another shape, reuse the same
    memory: no fresh allocation and page faults per layer); never returned to the caller."""
    n = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    buf = getattr(_local, name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 64), np.uint8)
        setattr(_local, name, buf)
    return buf[:n].view(dtype).reshape(shape)


@functools.lru_cache(maxsize=64)
def _hardware_order(cg: int, kh: int, kw: int) -> np.ndarray:
    """Columns of the window-major unfolding listed in the documented reduction order: product
    ``t = (c * kh + i) * kw + j`` (channel-major) is column ``(i * kw + j) * cg + c``."""
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    order = ((i * kw + j) * cg + c).ravel().astype(np.int64)
    order.setflags(write=False)
    return order
