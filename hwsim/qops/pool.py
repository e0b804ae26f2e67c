"""Quantized pooling as onnxruntime computes it: the com.microsoft ``QLinearGlobalAveragePool``
and ``QLinearAveragePool`` (int8 / uint8, NCHW or ``channels_last``) and the ONNX 8-bit
``MaxPool``.

* ``QLinearGlobalAveragePool`` (MLAS): ``acc = wrap32(sum (x - zx))`` over the image on the
  datapath; ``scale = f32(x_scale / f32(y_scale * f32(S)))``; requantized as
  ``MlasRequantizeOutput``.
* ``QLinearAveragePool``: float32 window sums of ``f32(x_scale * (x - zx))`` in C order,
  divided by the count, then ``clamp((int)nearbyintf(f32(f32(m / y_scale) + zy)))``; a kernel
  covering the whole unpadded image falls back to the global pool.
* ``MaxPool``: the integer maximum over the window (exact, so QDQ pairs with equal parameters
  around it drop out).

Output sizes, ``auto_pad`` and ``ceil_mode`` follow onnxruntime's ``PoolAttributes``.
"""

from __future__ import annotations

import math

import numpy as np

from hwsim.datapath import Operand, gemm, output_stage
from hwsim.numerics import IntFormat
from hwsim.qops.common import (
    ACC32,
    QOpError,
    _auto_pad,
    _f32_scale,
    _holder,
    _ints_attr,
    _ort_register,
    _out_format,
    _saturate,
    _zero_point,
    cvtps_epi32,
    int_format,
)


def _pool_geometry(spatial, kernel, strides, pads, dilations, auto_pad, ceil_mode):
    """onnxruntime ``PoolAttributes::ComputeSizePadDilations`` / ``ComputeOutputSize``
    (``core/providers/cpu/nn/pool_attributes.h``): output sizes and (head, tail) pads."""
    n = len(spatial)
    mode = _auto_pad(auto_pad)
    heads, tails, outs = list(pads[:n]), list(pads[n:]), []
    for i, size in enumerate(spatial):
        k, s, d = kernel[i], strides[i], dilations[i]
        if mode == "VALID":
            heads[i] = tails[i] = 0
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            target = (size + s - 1) // s
            need = (target - 1) * s + k - size
            heads[i] = (need + 1) // 2 if mode == "SAME_LOWER" else need // 2
            tails[i] = need - heads[i]
        num = size + heads[i] + tails[i] - d * (k - 1) - 1
        out = (num // s if num >= 0 else -((-num) // s)) + 1  # C++ truncating division
        if ceil_mode:
            out = int(math.ceil(np.float32(num) / np.float32(s))) + 1
            if (out - 1) * s >= size + heads[i]:
                out -= 1
        if out < 0:
            raise QOpError("pooling output dimension is negative")
        outs.append(out)
    return outs, heads, tails


def _pool_windows(x, fill, kernel, strides, dilations, heads, outs):
    """Yield, for every kernel offset in C order, ``x`` (N, C, *spatial) gathered at the
    window positions of every output (positions outside the input hold ``fill``)."""
    n = len(kernel)
    spatial = x.shape[2:]
    before = [max(0, h) for h in heads]
    after = [
        max(
            0,
            (outs[i] - 1) * strides[i] - heads[i] + dilations[i] * (kernel[i] - 1) + 1 - spatial[i],
        )
        for i in range(n)
    ]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(before, after, strict=True)), constant_values=fill)
    for off in np.ndindex(*kernel):
        sl = [slice(None), slice(None)]
        for i in range(n):
            start = off[i] * dilations[i] - heads[i] + before[i]
            sl.append(slice(start, start + (outs[i] - 1) * strides[i] + 1, strides[i]))
        yield xp[tuple(sl)]


def _channels_first(x, channels_last: int):
    return np.moveaxis(x, -1, 1) if channels_last else x


def qlinear_global_average_pool(
    X, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last: int = 0
) -> np.ndarray:
    """onnxruntime ``QLinearGlobalAveragePool`` (com.microsoft,
    ``contrib_ops/cpu/quantization/qlinear_global_average_pool.cc``,
    ``core/mlas/lib/qlgavgpool.cpp``), int8 / uint8:

    ``acc[n, c] = wrap32(sum_{spatial} (x - zx))`` (MLAS seeds the sum with ``-zx * S``);
    ``scale = f32(x_scale / f32(y_scale * f32(S)))`` with ``S`` the image size;
    ``y = saturate(round_half_even(f32(f32(acc) * scale)) + zy)`` (``MlasRequantizeOutput``).
    MLAS rejects ``S >= 2^24`` and ``scale`` outside ``[2^-32, 256)``; so does this function.
    """
    x = _channels_first(np.asarray(X), channels_last)
    fmt = int_format(x.dtype, "X")
    if fmt.bits != 8 or x.ndim < 3:
        raise QOpError(f"X must be int8 / uint8 of rank >= 3, got {fmt} {x.shape}")
    zx = _zero_point(x_zero_point, fmt, "x_zero_point")
    yfmt, zy = _out_format(y_zero_point)
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:]))
    if S >= 1 << 24:
        raise QOpError("QLinearGlobalAveragePool ImageSize too large (>= 2^24)")
    f32 = np.float32
    scale = f32(_f32_scale(x_scale, "x_scale") / f32(_f32_scale(y_scale, "y_scale") * f32(S)))
    if not (2.0**-32 <= scale < 256.0):
        raise QOpError("QLinearGlobalAveragePool parameter out of computation range")
    ones = np.ones((S, 1), np.int8)
    acc = gemm(
        x.reshape(N * C, S).astype(_holder(fmt)),
        ones,
        x_operand=Operand(fmt, zx),
        w_operand=Operand(IntFormat(8, True), 0),
        acc=ACC32,
    ).values
    y = output_stage(acc, _ort_register(scale), acc=ACC32, out_format=yfmt, out_zero_point=zy)
    y = y.values.reshape((N, C) + (1,) * (x.ndim - 2))
    return np.moveaxis(y, 1, -1) if channels_last else y


def qlinear_average_pool(
    X,
    x_scale,
    x_zero_point,
    y_scale,
    y_zero_point,
    *,
    kernel_shape,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    channels_last: int = 0,
    count_include_pad: int = 0,
    pads=None,
    strides=None,
) -> np.ndarray:
    """onnxruntime ``QLinearAveragePool`` (com.microsoft,
    ``contrib_ops/cpu/quantization/qlinear_pool.cc``), int8 / uint8, 1-3 spatial dims.

    If the kernel covers the whole (unpadded) image it falls back to
    :func:`qlinear_global_average_pool`. Otherwise, in float32:
    ``v = f32(x_scale * (x - zx))``; per output, ``acc = 0`` then ``acc = f32(acc + v)`` over
    the window positions inside the input in C order (h, then w, then d);
    ``m = f32(acc / count)`` with ``count`` the kernel size (``count_include_pad``) or the
    number of positions inside the input; ``y = clamp((int)nearbyintf(f32(f32(m / y_scale) +
    zy)))``. Output size, ``auto_pad`` and ``ceil_mode`` as ORT's ``PoolAttributes``.
    """
    x = _channels_first(np.asarray(X), channels_last)
    fmt = int_format(x.dtype, "X")
    if fmt.bits != 8 or not 3 <= x.ndim <= 5:
        raise QOpError(f"X must be int8 / uint8 with 1-3 spatial dims, got {fmt} {x.shape}")
    nsp = x.ndim - 2
    kernel = _ints_attr(kernel_shape, nsp, 1, "kernel_shape")
    strides = _ints_attr(strides, nsp, 1, "strides")
    pads = _ints_attr(pads, 2 * nsp, 0, "pads")
    outs, heads, tails = _pool_geometry(
        x.shape[2:], kernel, strides, pads, [1] * nsp, auto_pad, ceil_mode
    )
    if list(x.shape[2:]) == kernel and not any(heads) and not any(tails):
        y = qlinear_global_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point)
        return np.moveaxis(y, 1, -1) if channels_last else y
    zx = _zero_point(x_zero_point, fmt, "x_zero_point")
    yfmt, zy = _out_format(y_zero_point)
    f32 = np.float32
    v = _f32_scale(x_scale, "x_scale") * (x.astype(np.int64) - zx).astype(f32)
    acc = np.zeros(x.shape[:2] + tuple(outs), f32)
    for window in _pool_windows(v, 0.0, kernel, strides, [1] * nsp, heads, outs):
        acc = acc + window
    if count_include_pad:
        count = np.full(outs, float(np.prod(kernel)), f32)
    else:
        count = np.ones(outs, f32)
        for i in range(nsp):
            start = np.arange(outs[i]) * strides[i] - heads[i]
            n_in = np.minimum(start + kernel[i], x.shape[2 + i]) - np.maximum(start, 0)
            shape = [1] * nsp
            shape[i] = outs[i]
            count = count * n_in.astype(f32).reshape(shape)
    m = acc / count
    q = (m / _f32_scale(y_scale, "y_scale")) + f32(zy)
    y = _saturate(cvtps_epi32(q), yfmt)
    return np.moveaxis(y, 1, -1) if channels_last else y


def max_pool(
    X,
    *,
    kernel_shape,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations=None,
    pads=None,
    storage_order: int = 0,
    strides=None,
) -> np.ndarray:
    """ONNX ``MaxPool`` (opset 12+) on int8 / uint8, as onnxruntime runs it
    (``core/providers/cpu/nn/pool.cc``): the maximum of the integer inputs over the window
    positions inside the input (with dilation); a window with none gives the type's minimum.
    Integer max is exact, so the result equals ``Q(MaxPool(DQ(x)))`` whenever the Q and DQ
    parameters agree -- which is why ORT drops such QDQ pairs around MaxPool. Output size,
    ``auto_pad`` and ``ceil_mode`` as ORT's ``PoolAttributes``. Only the values output.
    """
    del storage_order
    x = np.asarray(X)
    fmt = int_format(x.dtype, "X")
    if x.ndim < 3:
        raise QOpError(f"X must have rank >= 3, got {x.shape}")
    nsp = x.ndim - 2
    kernel = _ints_attr(kernel_shape, nsp, 1, "kernel_shape")
    strides = _ints_attr(strides, nsp, 1, "strides")
    dil = _ints_attr(dilations, nsp, 1, "dilations")
    pads = _ints_attr(pads, 2 * nsp, 0, "pads")
    outs, heads, _ = _pool_geometry(x.shape[2:], kernel, strides, pads, dil, auto_pad, ceil_mode)
    y = np.full(x.shape[:2] + tuple(outs), fmt.min, np.int64)
    for window in _pool_windows(x.astype(np.int64), fmt.min, kernel, strides, dil, heads, outs):
        y = np.maximum(y, window)
    return y.astype(x.dtype)
