"""Affine quantization, once: the type, QuantizeLinear and DequantizeLinear.

:class:`Affine` is ``real = scale * (q - zero_point)`` with ``q`` in ``fmt`` -- per tensor
(``axis`` None, scalars) or per channel / per sample (vectors along ``axis``). The IR's
activation quantization (``TensorQuant``), the integer weights (``WeightQuant``), the schemes'
activation specs (``ActSpec``), the executor's integer tensors (``QTensor``) and the ONNX
operators of :mod:`hwsim.qops` all hold one (``.affine``) and quantize / dequantize through
:func:`quantize` and :func:`dequantize` here.

Contracts (ONNX, and onnxruntime's MLAS order, ``core/mlas/lib/quantize.cpp``):

* :func:`quantize` -- ``QuantizeLinear``: ``t = f32(x) / f32(scale)`` (float32 division), then
  :func:`quantize_quotient`: ``t`` clamped to ``[min - zp, max - zp]`` (NaN to the lower bound,
  as ``maxps`` returns it), rounded half to even, ``+ zp``. For every finite quotient this is
  ``saturate(round_half_even(t) + zp)``.
* :func:`dequantize` -- ``DequantizeLinear``: ``f32(q - zp) * f32(scale)`` in float32 (the
  difference is exact integer arithmetic, exact in float32 below 2^24).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.numerics.formats import IntFormat


def _along(v, ndim: int, axis: int | None) -> np.ndarray:
    """A scalar as is; a vector reshaped to broadcast along ``axis`` of an ``ndim`` array."""
    v = np.asarray(v)
    if v.ndim == 0 or axis is None or ndim == 0:
        return v
    shape = [1] * ndim
    shape[axis % ndim] = -1
    return v.reshape(shape)


def quantize_quotient(t, zero_point, fmt: IntFormat) -> np.ndarray:
    """``t`` (an already divided quotient ``x / scale``) to integers of ``fmt``: clamp to
    ``[min - zp, max - zp]`` (NaN to the lower bound), round half to even, add ``zp``. int64."""
    zp = np.asarray(zero_point, np.int64)
    lo = (fmt.min - zp).astype(np.float64)
    hi = (fmt.max - zp).astype(np.float64)
    t = np.asarray(t).astype(np.float64)
    with np.errstate(invalid="ignore"):
        t = np.where(np.isnan(t), lo, np.minimum(np.maximum(t, lo), hi))
    return np.rint(t).astype(np.int64) + zp


def quantize(x, scale, zero_point, fmt: IntFormat, axis: int | None = None) -> np.ndarray:
    """ONNX ``QuantizeLinear`` (module docstring): ``t = f32(x) / f32(scale)`` then
    :func:`quantize_quotient`. ``scale`` / ``zero_point`` scalars or vectors along ``axis``.
    Returns int64."""
    x = np.asarray(x, np.float32)
    s = _along(np.asarray(scale, np.float32), x.ndim, axis)
    z = _along(np.asarray(zero_point, np.int64), x.ndim, axis)
    return quantize_quotient(x / s, z, fmt)


def dequantize(q, scale, zero_point, axis: int | None = None) -> np.ndarray:
    """ONNX ``DequantizeLinear``: ``f32(q - zp) * f32(scale)``, float32. ``scale`` /
    ``zero_point`` scalars or vectors along ``axis``.

    8- and 16-bit ``q`` with ``|zp| <= 2^23`` take float32 all the way: ``f32(q) - f32(zp)``
    is ``f32(q - zp)`` exactly (both operands and their difference, ``|q - zp| < 2^24``, are
    float32 integers, so the subtraction does not round), in two passes instead of four."""
    q = np.asarray(q)
    zp = _along(np.asarray(zero_point, np.int64), q.ndim, axis)
    s = _along(np.asarray(scale, np.float32), q.ndim, axis)
    if (
        q.dtype.kind in "iu"
        and q.dtype.itemsize <= 2
        and (zp.size == 0 or int(np.abs(zp).max()) <= 1 << 23)
        and np.broadcast_shapes(q.shape, zp.shape, s.shape) == q.shape
    ):
        d = q.astype(np.float32)
        d -= zp.astype(np.float32)
        d *= s
        return d
    d = q.astype(np.int64) - zp
    return (d.astype(np.float32) * s).astype(np.float32)


def symmetric_grid(r: float, bits: int) -> tuple[float, int]:
    """The symmetric restricted-range grid of ``bits`` for the range ``r = max|w|`` -- the PSGD
    paper's weight grid, hwsim's ``symmetric`` weights: levels ``-qmax .. qmax`` with ``qmax =
    2^(b-1) - 1`` and step ``r / qmax`` (a Python float). Returns ``(step, qmax)``."""
    qmax = 2 ** (bits - 1) - 1
    return r / qmax, qmax


@dataclass(frozen=True)
class Affine:
    """``real = scale * (q - zero_point)``, ``q`` in ``fmt``. ``scale`` float32 and
    ``zero_point`` integer: scalars (per tensor, ``axis`` None) or vectors along ``axis``
    (per channel: 1 for activations, 0 for weights; per sample: 0)."""

    scale: np.ndarray | float
    zero_point: np.ndarray | int
    fmt: IntFormat
    axis: int | None = None

    @property
    def granularity(self) -> str:
        """``tensor`` (scalars) or ``axis <n>`` (vectors along axis n)."""
        return "tensor" if self.axis is None or np.ndim(self.scale) == 0 else f"axis {self.axis}"

    def quantize(self, x) -> np.ndarray:
        """:func:`quantize` with these parameters (int64)."""
        return quantize(x, self.scale, self.zero_point, self.fmt, self.axis)

    def dequantize(self, q) -> np.ndarray:
        """:func:`dequantize` with these parameters (float32)."""
        return dequantize(q, self.scale, self.zero_point, self.axis)
