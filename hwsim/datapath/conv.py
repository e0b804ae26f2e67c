"""2-D convolution (NCHW) as grouped GEMMs on the emulated accumulator.

The input is padded and turned NHWC once, then unfolded window-major (each kernel tap is one
contiguous run of channels) into a reused scratch buffer; exact sums are order-free, and the
ordered kernels visit those columns in the documented channel-major order.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import replace

import numpy as np

from hwsim.datapath import partials
from hwsim.datapath.config import AccResult, Accumulator, Operand
from hwsim.datapath.engines import max_abs_effective
from hwsim.datapath.gemm import check_accumulable, check_operand, reduce_batched, weight_zero_point
from hwsim.datapath.isa import Isa, depthwise, pairs_saturate, resolve
from hwsim.datapath.kernels import gmn_to_nchw, im2col_nhwc, pad_nhwc
from hwsim.numerics import IntFormat


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
    """
    x = check_operand(x, x_operand, "x", 4)
    w = check_operand(w, w_operand, "w", 4)
    sh, sw = _pair(stride, "stride", 1)
    dh, dw = _pair(dilation, "dilation", 1)
    pt, pl, pb, pr = _pads(padding)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
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
    K = Cg * kh * kw
    check_accumulable(K, x_operand, w_operand)
    Fg = F // groups
    wzp = weight_zero_point(w_operand, groups, Fg, "w_operand")
    zx = x_operand.zero_point
    max_x = max_abs_effective(x, zx)  # padding holds zx, so it adds nothing
    xop = x_operand
    xin, flip = x, 0
    if x.dtype == np.int8 and x_operand.format.signed:  # unfold as uint8 x + 128: the exact
        xin, flip = x.view(np.uint8), 0x80  # engines' fast operand type
        xop = Operand(IntFormat(8, False), int(zx) + 128)
    elif not np.iinfo(x.dtype).min <= zx <= np.iinfo(x.dtype).max:
        xin = x.astype(np.int64)  # the padding holds the zero point, which x's dtype cannot
    xp = _scratch("xp", (N, H + pt + pb, W + pl + pr, C), xin.dtype)
    pad_nhwc(xin, pt, pl, xin.dtype.type(xop.zero_point), flip, xp)
    # weights in the same window-major column order (i, j, c)
    w3 = np.ascontiguousarray(w.reshape(groups, Fg, Cg, kh, kw).transpose(0, 3, 4, 2, 1))
    w3 = w3.reshape(groups, K, Fg)
    isa = resolve(isa)
    if depthwise(groups, F, Cg) or not pairs_saturate(isa, x_operand.format, w_operand.format):
        isa = Isa.EXACT  # MlasConvDepthwise is exact; so is every pair but u8 x s8 (eq. 16)
    # a few images at a time: the unfolded columns and their sums stay in cache (every output
    # row is independent, so the chunking changes no value and no counter)
    per_image = max(1, groups * ho * wo * K * xin.dtype.itemsize)
    nb = max(1, min(N, CHUNK_BYTES // per_image))
    cols = _scratch("cols", (groups, nb * ho * wo, K), xin.dtype)
    unsigned64 = acc.bits == 64 and not acc.signed
    out = np.empty((N, F, ho * wo), np.uint64 if unsigned64 else np.int64)
    # partial sums tracked from block bounds unfolded straight from x (hwsim.datapath.partials)
    track = (
        acc.track_partials
        and partials.applies(x_operand.format, w_operand.format)
        and not pairs_saturate(isa, x_operand.format, w_operand.format)
    )
    counters = None
    for n0 in range(0, max(N, 1), nb):
        n1 = min(N, n0 + nb)
        c = cols[:, : (n1 - n0) * ho * wo]
        im2col_nhwc(xp[n0:n1], groups, kh, kw, sh, sw, dh, dw, ho, wo, c)
        values, part = reduce_batched(
            c,
            w3,
            xop,
            w_operand,
            wzp,
            replace(acc, track_partials=False) if track else acc,
            engine,
            order=_hardware_order(Cg, kh, kw),
            max_x=max_x,
            isa=isa,
        )
        if track:
            part.partial_min, part.partial_max = partials.conv_partial_extremes(
                x[n0:n1], w, int(zx), wzp, (sh, sw), (pt, pl, pb, pr), (dh, dw), groups,
                acc.tile, known=(part.final_min, part.final_max),
            )  # fmt: skip
        gmn_to_nchw(values, n1 - n0, out[n0:n1])
        counters = part if counters is None else counters.merge(part)
    return AccResult(out.reshape(N, F, ho, wo), counters)


CHUNK_BYTES = 4 << 20  # unfolded columns per chunk


_local = threading.local()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-thread scratch buffer, reused while the shape and dtype repeat (no page faults on
    a fresh 10 MB array per call); never returned to the caller."""
    key = (name, shape, np.dtype(dtype))
    buf = getattr(_local, name, None)
    if buf is None or buf[0] != key:
        buf = (key, np.empty(shape, dtype))
        setattr(_local, name, buf)
    return buf[1]


@functools.lru_cache(maxsize=64)
def _hardware_order(cg: int, kh: int, kw: int) -> np.ndarray:
    """Columns of the window-major unfolding listed in the documented reduction order: product
    ``t = (c * kh + i) * kw + j`` (channel-major) is column ``(i * kw + j) * cg + c``."""
    c, i, j = np.meshgrid(np.arange(cg), np.arange(kh), np.arange(kw), indexing="ij")
    order = ((i * kw + j) * cg + c).ravel().astype(np.int64)
    order.setflags(write=False)
    return order
