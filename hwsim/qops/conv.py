"""ONNX integer convolutions in ``Conv`` geometry, 1-D and 2-D, as onnxruntime computes them:
``ConvInteger`` (opset 10) and ``QLinearConv`` (opset 10; also the com.microsoft NHWC kernel
ORT fuses ``DQ -> Conv -> Q`` chains into).

* ``ConvInteger``: int32 ``y = wrap32(sum (x - zx)(w - zw[m]))`` (padding holds the zero point).
* ``QLinearConv``: ``acc = wrap32(sum (x - zx)(w - zw[m]) + B[m])``;
  ``scale[m] = f32(f32(x_scale * w_scale[m]) / y_scale)``;
  ``y = saturate(round_half_even(f32(f32(acc) * scale[m])) + y_zero_point)``.

* onnxruntime's ``WeightBiasQuantization`` of a ``DQ -> Conv/Gemm`` with a float bias initializer
  (:func:`ort_quantized_bias`): ``bias_scale = f32(x_scale * w_scale[m])``,
  ``B[m] = cvtps(f32(b[m] / bias_scale))``; the fused kernel adds ``B``, an unfused float Conv
  adds ``f32(f32(B[m]) * bias_scale)`` (:func:`ort_dequantized_bias`), never ``b``.

The MACs run on :func:`hwsim.datapath.conv2d` with the int32 wrapping accumulator;
``auto_pad`` is resolved as onnxruntime's ``ConvAttributes::ComputePadAndOutputShape``.
``isa="avx2"`` reproduces the saturating int16 pair sums of x86 without VNNI (eq. 16).
"""

from __future__ import annotations

import numpy as np

from hwsim.datapath import Operand, conv2d, output_stage
from hwsim.datapath.config import Counters
from hwsim.datapath.gemm import pair_correction
from hwsim.datapath.isa import Isa, pairs_saturate, resolve
from hwsim.numerics import ort_combined_scale
from hwsim.numerics import wrap as wrap_to
from hwsim.qops.common import (
    ACC32,
    INT32,
    QOpError,
    _auto_pad,
    _f32_scale,
    _ints,
    _ints_attr,
    _operand_array,
    _ort_register,
    _out_format,
    _per_channel_scale,
    _record,
    _zero_point,
    collect_counters,
    cvtps_epi32,
    int_format,
)


def _conv_geometry(x, w, attrs: dict):
    """``(x, w, strides, dilations, pads)`` of an ONNX ``Conv``-geometry op as 2-D: a 1-D conv
    gets a unit height axis; ``auto_pad`` resolved as onnxruntime's
    ``ConvAttributes::ComputePadAndOutputShape``; pads (top, left, bottom, right)."""
    nsp = x.ndim - 2
    kernel = list(w.shape[2:])
    if attrs.get("kernel_shape") is not None and list(attrs["kernel_shape"]) != kernel:
        raise QOpError(f"kernel_shape {list(attrs['kernel_shape'])} != weight shape {kernel}")
    strides = _ints_attr(attrs.get("strides"), nsp, 1, "strides")
    dil = _ints_attr(attrs.get("dilations"), nsp, 1, "dilations")
    pads = _ints_attr(attrs.get("pads"), 2 * nsp, 0, "pads")
    mode = _auto_pad(attrs.get("auto_pad", "NOTSET"))
    if mode != "NOTSET":
        for i in range(nsp):
            size = x.shape[2 + i]
            if mode == "VALID":
                pads[i] = pads[nsp + i] = 0
                continue
            target = (size + strides[i] - 1) // strides[i]
            need = max(0, (target - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - size)
            head = (need + 1) // 2 if mode == "SAME_LOWER" else need // 2
            pads[i], pads[nsp + i] = head, need - head
    if nsp == 1:
        x = x[:, :, None, :]
        w = w[:, :, None, :]
        strides, dil, pads = [1, *strides], [1, *dil], [0, pads[0], 0, pads[1]]
    return x, w, strides, dil, pads


def _conv_acc(x, x_zero_point, w, w_zero_point, attrs: dict, isa=Isa.EXACT) -> np.ndarray:
    """int32 (wrapping) accumulators of an ONNX ``Conv``-geometry integer convolution
    ``sum (x - zx)(w - zw[m])``, 1-D or 2-D, on :func:`hwsim.datapath.conv2d` (``isa``: its
    ``QLinearConv`` semantics, eq. 16)."""
    x = np.asarray(x)
    w = np.asarray(w)
    xf = int_format(x.dtype, "x")
    wf = int_format(w.dtype, "w")
    if x.ndim not in (3, 4) or w.ndim != x.ndim:
        raise QOpError(
            f"hwsim emulates 1-D and 2-D integer convolutions; got x {x.shape}, w {w.shape}"
        )
    nsp = x.ndim - 2
    x, w, strides, dil, pads = _conv_geometry(x, w, attrs)
    xz = _zero_point(x_zero_point, xf, "x_zero_point")
    wz: object = 0
    if w_zero_point is not None:
        wzf = int_format(np.asarray(w_zero_point).dtype, "w_zero_point")
        if wzf != wf:
            raise QOpError(f"w_zero_point is {wzf} but w is {wf}")
        wz_arr = _ints(w_zero_point, "w_zero_point").reshape(-1)
        wz = int(wz_arr[0]) if wz_arr.size == 1 else wz_arr
    res = conv2d(
        _operand_array(x, xf),
        _operand_array(w, wf),
        stride=tuple(strides),
        padding=tuple(pads),
        dilation=tuple(dil),
        groups=int(attrs.get("group", 1)),
        x_operand=Operand(xf, xz),
        w_operand=Operand(wf, wz),
        acc=ACC32,
        isa=isa,
    )
    _record(res.counters)
    out = res.values
    return out[:, :, 0, :] if nsp == 1 else out


def conv_integer(
    x,
    w,
    x_zero_point=None,
    w_zero_point=None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
    isa="exact",
) -> np.ndarray:
    """ONNX ``ConvInteger`` (opset 10): int32 ``y[n, m, ...] = sum_{c,k} (x - x_zero_point) *
    (w[m] - w_zero_point[m])`` in ONNX ``Conv`` geometry (padding holds the zero point, so it
    adds 0), accumulated on an int32 wrapping accumulator (onnxruntime
    ``core/providers/cpu/quantization/conv_integer.cc``). x, w: int8 / uint8; ``w_zero_point``
    per-tensor or per output channel. 1-D and 2-D convolutions.

    ``isa="avx2"``: onnxruntime computes ``W @ im2col(x)`` in NCHW order, so the *weight* is
    MLAS's A operand: a uint8 x uint8 or x int8 is exact; an int8 x with uint8 weights pairs
    raw ``w * x`` products along ``(c, i, j)`` in saturating int16 (eq. 16)."""
    attrs = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    xa, wa = np.asarray(x), np.asarray(w)
    # the weight is MLAS's A operand here: eq. 16 applies to (w, x) = (uint8, int8)
    if not pairs_saturate(resolve(isa), int_format(wa.dtype, "w"), int_format(xa.dtype, "x")):
        return _conv_acc(x, x_zero_point, w, w_zero_point, attrs).astype(np.int32)
    with collect_counters() as inner:
        exact = _conv_acc(x, x_zero_point, w, w_zero_point, attrs).astype(np.int64)
    c = Counters(macs=sum(i.macs for i in inner))
    d = exact + _conv_integer_pairs(xa, x_zero_point, wa, attrs, exact.shape, c)
    if d.size:
        c.final_min, c.final_max = int(d.min()), int(d.max())
        wraps = np.abs((d - INT32.min) >> 32)
        c.overflow_events, c.outputs_overflowed = int(wraps.sum()), int(np.count_nonzero(wraps))
    _record(c)
    return wrap_to(d, INT32).astype(np.int32)


def _conv_integer_pairs(
    x, x_zero_point, w, attrs: dict, out_shape, counters: Counters
) -> np.ndarray:
    """eq. 16 for ConvInteger with int8 x and uint8 w: the int16 pair corrections of the raw
    products ``w[m, (c, i, j)] * col[(c, i, j), p]`` (NCHW im2col, padding = raw x zero point);
    the pair saturations go to ``counters``."""
    x, w, strides, dil, pads = _conv_geometry(x, w, attrs)
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    G = int(attrs.get("group") or 1)
    Ho, Wo = out_shape[2] if len(out_shape) == 4 else 1, out_shape[-1]
    zx = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    xp = np.full((N, C, H + pads[0] + pads[2], W + pads[1] + pads[3]), zx, np.int8)
    xp[:, :, pads[0] : pads[0] + H, pads[1] : pads[1] + W] = x
    cols = np.empty((N, C, kh, kw, Ho, Wo), np.int8)
    for i in range(kh):
        for j in range(kw):
            h0, w0 = i * dil[0], j * dil[1]
            cols[:, :, i, j] = xp[
                :,
                :,
                h0 : h0 + strides[0] * (Ho - 1) + 1 : strides[0],
                w0 : w0 + strides[1] * (Wo - 1) + 1 : strides[1],
            ]
    Fg = F // G
    # A = weights (G, Fg, K) uint8, B = columns (G, K, N*Ho*Wo) int8, K in (c, i, j) order
    a3 = np.ascontiguousarray(w.reshape(G, Fg, Cg * kh * kw))
    b3 = np.ascontiguousarray(
        cols.reshape(N, G, Cg * kh * kw, Ho * Wo).transpose(1, 2, 0, 3).reshape(G, -1, N * Ho * Wo)
    )
    corr = pair_correction(a3, b3, counters)  # (G, Fg, N*Ho*Wo)
    corr = corr.reshape(F, N, Ho * Wo).transpose(1, 0, 2)
    return corr.reshape(out_shape)


def ort_quantized_bias(bias, x_scale, w_scale) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's ``WeightBiasQuantization`` graph transformer
    (``core/optimizer/qdq_transformer/weight_bias_quantization.cc``,
    ``WeightBiasQuantization::ApplyImpl``; earlier releases: ``BiasQuantization``,
    ``bias_quantization.cc``, same arithmetic; run by the default session options): a ``Conv``
    / ``ConvTranspose`` / ``Gemm`` whose input comes from a per-tensor ``DequantizeLinear``,
    whose weight from a per-tensor or per-output-channel one, whose output reaches a
    ``QuantizeLinear`` without branching (a ReLU / Clip between allowed), and whose bias is a
    1-D float initializer gets the bias as ``DequantizeLinear(Cast<int32>(Round(Div(b,
    Mul(x_scale, w_scale)))), Mul(x_scale, w_scale))``, constant-folded in float32:

    ``bias_scale[m] = f32(x_scale * w_scale[m])``;
    ``B[m] = cvtps(f32(b[m] / bias_scale[m]))`` -- ``Round`` is ``rint`` (half to even),
    ``Cast`` on x86 gives ``INT32_MIN`` for a quotient outside int32 (and for NaN).

    The fused ``QLinearConv`` / ``QGemm`` then adds ``B`` in its int32 accumulator; an unfused
    float ``Conv`` adds :func:`ort_dequantized_bias` -- neither sees ``b`` itself.
    ``bias`` (M,) float32; ``x_scale`` a scalar, ``w_scale`` a scalar or (M,), both float32.
    Returns ``(B as int64 (M,), bias_scale float32 (M,))``."""
    b = np.asarray(bias, np.float32).reshape(-1)
    xs = _f32_scale(x_scale, "x_scale")
    ws = _per_channel_scale(w_scale, b.shape[0], "w_scale")
    s = np.broadcast_to(xs * ws, b.shape).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = b / s
    return cvtps_epi32(t), s


def ort_dequantized_bias(B, bias_scale) -> np.ndarray:
    """onnxruntime's ``DequantizeLinear`` of an int32 bias (zero point 0):
    ``f32(f32(B[m]) * bias_scale[m])`` (the int32 rounded to float32 first), float32 (M,)."""
    q = np.asarray(B, np.int64).astype(np.float32)
    return (q * np.asarray(bias_scale, np.float32)).astype(np.float32)


def _bias(B, M: int):
    if B is None:
        return None
    b = np.asarray(B)
    if b.dtype != np.int32 or b.ndim != 1 or b.shape[0] != M:
        raise QOpError(f"bias B must be int32 of shape ({M},), got {b.dtype} {b.shape}")
    return b.astype(np.int64)


def qlinear_conv(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    B=None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
    isa="exact",
) -> np.ndarray:
    """ONNX ``QLinearConv`` (opset 10) as onnxruntime computes it
    (``core/providers/cpu/quantization/qlinearconv.cc``, ``MlasRequantizeOutput`` in
    ``core/mlas/lib/quantize.cpp``):

    ``acc = wrap32(sum (x - zx)(w - zw[m]) + B[m])`` (int32 accumulator, bias added in it);
    ``scale[m] = f32(f32(x_scale * w_scale[m]) / y_scale)``;
    ``y = saturate(round_half_even(f32(f32(acc) * scale[m])) + y_zero_point)``.

    x / w / y: int8 or uint8 (any integer format of 2..16 bits works); ``w_scale`` /
    ``w_zero_point`` per-tensor or per output channel. 1-D and 2-D convolutions. ``isa="avx2"``:
    onnxruntime's sums on x86 without VNNI (eq. 16; uint8 x int8, NHWC im2col pairs, depthwise
    exact).
    """
    attrs = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    acc = _conv_acc(x, x_zero_point, w, w_zero_point, attrs, resolve(isa))
    M = acc.shape[1]
    ws = _per_channel_scale(w_scale, M, "w_scale")
    scale = ort_combined_scale(_f32_scale(x_scale, "x_scale"), ws, _f32_scale(y_scale, "y_scale"))
    fmt, yz = _out_format(y_zero_point)
    return output_stage(
        acc,
        _ort_register(scale),
        acc=ACC32,
        bias=_bias(B, M),
        bias_axis=1,
        scale_axis=1,
        out_format=fmt,
        out_zero_point=yz,
    ).values
