"""ONNX ``QuantizeLinear`` / ``DequantizeLinear`` (opsets 10-25) to and from integer formats:
the ends of every QDQ chain (also registered as the com.microsoft contrib ops).

* ``QuantizeLinear``: ``y = saturate(round_half_even(x / y_scale) + y_zero_point)``, the
  division in NumPy's promotion of ``(x, y_scale)`` (or in ``precision``), in MLAS's order
  (clamp the quotient to ``[min - zp, max - zp]``, NaN to the lower bound, round, add ``zp``).
* ``DequantizeLinear``: ``y = f32(x - x_zero_point) * f32(x_scale)``, the difference exact.

Scale / zero point are per-tensor, per-axis (``axis``) or blocked (``block_size``), as the ONNX
reference ``reshape_input``. float8 / float4 / float6 types raise
:class:`~hwsim.qops.common.NotIntegerFormatError`.
"""

from __future__ import annotations

import numpy as np

from hwsim.numerics import IntFormat
from hwsim.numerics.affine import dequantize
from hwsim.qops.common import QOpError, _ints, _onnx_dtype, _quantize_divided, int_format


# --- quantization parameters --------------------------------------------------------------------
def _qparam(value, shape, axis: int, block_size: int, name: str) -> np.ndarray:
    """A scale / zero point reshaped to broadcast against ``shape``: per-tensor (one element),
    per-axis (1-D, length ``shape[axis]``) or blocked (same rank, repeated ``block_size`` times
    along ``axis`` and cut to ``shape[axis]``), as in the ONNX reference ``reshape_input``."""
    arr = np.asarray(value)
    if arr.size == 1 and not block_size:
        return arr.reshape(())
    nd = len(shape)
    if nd == 0:
        raise QOpError(f"{name} must be per-tensor for a scalar input, got shape {arr.shape}")
    if not -nd <= axis < nd:
        raise QOpError(f"axis {axis} is out of range for an input of rank {nd}")
    axis %= nd
    if not block_size:
        if arr.ndim != 1 or arr.shape[0] != shape[axis]:
            raise QOpError(
                f"per-axis {name} must be 1-D of length {shape[axis]} (axis {axis}), "
                f"got shape {arr.shape}"
            )
        dims = [1] * nd
        dims[axis] = arr.shape[0]
        return arr.reshape(dims)
    if block_size < 0:
        raise QOpError(f"block_size must be positive, got {block_size}")
    rep = np.repeat(arr, block_size, axis=axis) if arr.ndim == nd else arr
    if rep.ndim == nd and rep.shape[axis] >= shape[axis]:
        rep = rep.take(np.arange(shape[axis]), axis=axis)
    if rep.shape != tuple(shape):
        raise QOpError(
            f"blocked {name} of shape {arr.shape} (block_size {block_size}, axis {axis}) does "
            f"not match input shape {tuple(shape)}"
        )
    return rep


def quantize_linear(
    x,
    y_scale,
    y_zero_point=None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    precision: int = 0,
    saturate: int = 1,
) -> np.ndarray:
    """ONNX ``QuantizeLinear`` (opsets 10-25) to an integer format.

    ``y = saturate(round_half_even(x / y_scale) + y_zero_point)``. The division is done in
    NumPy's promotion of ``(x, y_scale)`` (float32 for float32 inputs) or in ``precision``, as
    the ONNX reference (``onnx/reference/ops/op_quantize_linear.py``); in MLAS's order
    (``core/mlas/lib/quantize.cpp``, ``MlasQuantizeLinear``): clamp the quotient to
    ``[min - zp, max - zp]`` (NaN to the lower bound), round half to even, add ``zp`` -- equal
    to rounding first for every finite quotient. Scale / zero point are per-tensor, per-axis
    (``axis``) or blocked (``block_size``). The output type comes from ``y_zero_point``, else
    ``output_dtype``, else uint8; int8/uint8/int16/uint16/int4/uint4/int2/uint2 outputs are
    returned in int8/uint8/int16/uint16 arrays. float8 / float4 / float6 outputs raise
    :class:`NotIntegerFormatError`. ``saturate`` only concerns float8 and is ignored.
    """
    del saturate
    if y_zero_point is not None:
        fmt = int_format(np.asarray(y_zero_point).dtype, "y_zero_point")
        if output_dtype:
            want = int_format(_onnx_dtype(output_dtype), "output_dtype")
            if want != fmt:
                raise QOpError(f"output_dtype is {want} but y_zero_point is {fmt}")
    elif output_dtype:
        fmt = int_format(_onnx_dtype(output_dtype), "output_dtype")
    else:
        fmt = IntFormat(8, False)
    x = np.asarray(x)
    scale = _qparam(y_scale, x.shape, axis, block_size, "y_scale")
    zp = np.int64(0)
    if y_zero_point is not None:
        zp = _qparam(_ints(y_zero_point, "y_zero_point"), x.shape, axis, block_size, "y_zp")
    if precision:
        dt = _onnx_dtype(precision)
        quotient = x.astype(dt) / scale.astype(dt)
    else:
        quotient = x / scale
    return _quantize_divided(quotient, zp, fmt)


def dequantize_linear(
    x, x_scale, x_zero_point=None, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opsets 10-25) from an integer format.

    ``y = f32(x - x_zero_point) * f32(x_scale)`` rounded to float32, then cast to
    ``output_dtype`` (default: ``x_scale``'s type). The difference is exact integer arithmetic
    (the datapath's operand subtraction) and its float32 conversion is exact below 2^24 -- the
    ONNX reference (``op_dequantize_linear.py``: ``(float32(x) - zp) * scale``) and ORT
    (``core/providers/cpu/quantization/quantize_linear.cc``) agree with it there. Scale / zero
    point granularity as :func:`quantize_linear`. float8 / float4 inputs raise
    :class:`NotIntegerFormatError`.
    """
    x = np.asarray(x)
    fmt = int_format(x.dtype, "x")
    d = x.astype(np.int64)
    if x_zero_point is not None:
        zfmt = int_format(np.asarray(x_zero_point).dtype, "x_zero_point")
        if zfmt != fmt:
            raise QOpError(f"x_zero_point is {zfmt} but x is {fmt}")
        d = d - _qparam(_ints(x_zero_point, "x_zero_point"), x.shape, axis, block_size, "x_zp")
    scale = np.asarray(x_scale)
    out = _onnx_dtype(output_dtype) if output_dtype else scale.dtype
    s32 = _qparam(scale, x.shape, axis, block_size, "x_scale").astype(np.float32)
    return dequantize(d, s32, 0).astype(out)
