"""Integer tensors of the integer executor: :class:`QTensor` (integers + their scale), and the
float -> integer boundary (``QuantizeLinear``, per-sample scales of a float input)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.execute.kernels import quantize_static as kernel_quantize_static
from hwsim.numerics import IntFormat
from hwsim.numerics.affine import Affine, quantize
from hwsim.numerics.qonnx import QuantRounding, bipolar_quant, int_quant
from hwsim.quant.scheme import ActSpec


@dataclass
class QTensor:
    """Integers ``q`` (held in the format's narrowest numpy dtype, ``fmt.dtype``) with
    ``real = scale * (q - zero_point)``; ``scale`` is a float32 scalar, a per-sample (N,)
    float32 vector, or (a per-token tensor) a float32 array of ``q``'s rank that broadcasts
    against ``q`` (1 along the axes a token's range spans: ``(N, T, 1)``, ``(N, 1, T, 1)``). A
    per-sample-shift tensor also carries its per-tensor ``base`` (float32) and ``shifts``
    (int64, in ``[0, s_max]``, the shape of ``scale``): ``scale = base * 2^-shifts``."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: int
    fmt: IntFormat
    shifts: np.ndarray | None = None
    base: float | None = None

    @property
    def per_token(self) -> bool:
        """Scales per token (an array of ``q``'s rank, see the class docstring)."""
        return np.ndim(self.scale) > 1

    def scale_b(self) -> np.ndarray:
        """The scale broadcastable against ``q`` (per-sample scales on axis 0)."""
        s = np.asarray(self.scale, np.float32)
        return s.reshape((-1,) + (1,) * (self.q.ndim - 1)) if s.ndim == 1 else s

    def moved(self, fn) -> QTensor:
        """The integers moved by ``fn`` (a reshape, transpose, slice or gather of ``q``), their
        scales (and shifts) moved alongside. A per-token tensor's scales are moved as the
        indices of its scale array, broadcast to ``q``'s shape; the result keeps size 1 along
        every axis where the moved indices are constant (so which tensors are per token, and
        the shapes of their scales, follow from the shapes alone, never from the values)."""
        q = fn(self.q)
        if not self.per_token:
            return self.like(q)
        s = np.asarray(self.scale)
        idx = fn(np.broadcast_to(np.arange(s.size).reshape(s.shape), self.q.shape))
        for ax in range(1, idx.ndim):
            if idx.shape[ax] > 1 and np.all(idx == idx.take([0], axis=ax)):
                idx = idx.take([0], axis=ax)
        idx = keepdims_form(idx)

        def move(a):
            return None if a is None else np.asarray(a).reshape(-1)[idx]

        return QTensor(q, move(s), self.zero_point, self.fmt, move(self.shifts), self.base)

    def like(self, q: np.ndarray) -> QTensor:
        """Other integers with this tensor's quantization (max pool, relu, reshape, ...)."""
        return QTensor(q, self.scale, self.zero_point, self.fmt, self.shifts, self.base)

    def unit(self) -> tuple[np.ndarray, float | None, np.ndarray | None]:
        """``(u, c, sigma)``: the real value of one integer step of each sample (float64 (N,) or
        (); a per-token tensor: an array of ``q``'s rank, as ``scale_b``); and where every step
        is a per-tensor ``c`` over a power of two, ``u = c * 2^-sigma`` (a static or shift
        tensor), ``c`` and ``sigma`` (the shifts, same shape as the scale; else None)."""
        u = np.asarray(self.scale, np.float32).astype(np.float64)
        if u.ndim > 1:  # per token: the steps as an array broadcasting against q
            u = self.scale_b().astype(np.float64)
        if self.shifts is not None:
            return u, float(np.float32(self.base)), self.shifts
        if u.ndim == 0:
            return u, float(u), None
        return u, None, None

    @property
    def affine(self) -> Affine:
        """The tensor's quantization (per-sample scales along axis 0)."""
        return Affine(self.scale, self.zero_point, self.fmt, 0 if np.ndim(self.scale) else None)

    def dequantize(self) -> np.ndarray:
        """ONNX DequantizeLinear: ``f32(q - zp) * scale`` in float32."""
        if self.per_token:
            d = (self.q.astype(np.int64) - self.zero_point).astype(np.float32)
            return (d * np.asarray(self.scale, np.float32)).astype(np.float32)
        return self.affine.dequantize(self.q)


def keepdims_form(a: np.ndarray) -> np.ndarray:
    """A per-token scale (or shift) array in its stored form: as is, or -- when it has size 1
    along every axis but the sample axis (one token per sample) -- the per-sample (N,) form."""
    a = np.asarray(a)
    if a.ndim > 1 and all(d == 1 for d in a.shape[1:]):
        return np.ascontiguousarray(a.reshape(a.shape[0]))
    return np.ascontiguousarray(a)


def token_rows(t: np.ndarray, keep: tuple[int, ...]):
    """``t`` as rows: the axes ``keep`` (axis 0 first) to the front, flattened to ``R`` rows,
    the rest flattened to each row's elements. Returns ``(rows (R, E), undo)`` where
    ``undo(a)`` puts a per-row array ``a`` ((R, E) values, or (R,) per-row quantities as
    size-1 axes) back in ``t``'s layout."""
    rest = tuple(ax for ax in range(t.ndim) if ax not in keep)
    perm = tuple(keep) + rest
    inv = np.argsort(perm)
    kept = tuple(t.shape[ax] for ax in keep)
    tail = tuple(t.shape[ax] for ax in rest)
    rows = t.transpose(perm).reshape(int(np.prod(kept, dtype=np.int64)), -1)

    def undo(a):
        a = np.asarray(a)
        if a.ndim == 1:
            return a.reshape(kept + (1,) * len(rest)).transpose(inv)
        return a.reshape(kept + tail).transpose(inv)

    return rows, undo


def quantize_linear(x: np.ndarray, scale, zero_point: int, fmt: IntFormat) -> np.ndarray:
    """ONNX/onnxruntime QuantizeLinear (:func:`hwsim.numerics.affine.quantize`): ``sat(
    round_half_even(f32(x) / f32(scale)) + zp)``; a per-sample (N,) ``scale`` along axis 0."""
    return quantize(x, scale, zero_point, fmt, 0 if np.ndim(scale) else None)


def quantize_static(x, scale, zero_point: int, fmt: IntFormat) -> np.ndarray | None:
    """:func:`quantize_linear` with one float32 ``scale`` in one pass (the kernel
    :func:`hwsim.execute.kernels.quantize_static`, the same float32 quotient, float64 clamp
    and half-to-even rounding), in ``fmt``'s dtype; None where it does not apply (a 0-d
    input, a format over 32 bits)."""
    x = np.asarray(x)
    if x.ndim == 0 or fmt.bits > 32:
        return None
    x = np.ascontiguousarray(x, np.float32)
    out = np.empty(x.shape, fmt.dtype)
    if out.size == 0:
        return out
    lo, hi = float(fmt.min - zero_point), float(fmt.max - zero_point)
    n = x.shape[0]
    kernel_quantize_static(
        x.reshape(n, -1), np.float32(scale), lo, hi, int(zero_point), out.reshape(n, -1)
    )
    return out


def sample_scale(spec: ActSpec, absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Per-sample scales of a float tensor entering a ``dynamic``/``shift`` program (the graph
    input: float data, so float range finding) from each sample's range ``absmax`` (float64
    (N,)). Returns ``(scales float32 (N,), shifts or None, base)``: dynamic ``f32(absmax /
    qmax)`` (1 where absmax is 0; ``pow2``: rounded up to a power of two); shift: base = the
    spec's scale (``base="static"``) or ``f32(max(absmax) / qmax)`` (``"runtime"``), and per
    sample the largest ``s`` in ``[0, s_max]`` with ``absmax <= qmax * base * 2^-s`` (0 if
    none), scale ``base * 2^-s``."""
    qmax = spec.fmt.max
    if spec.mode == "dynamic":
        s = (absmax / qmax).astype(np.float32)
        if spec.pow2:  # pow2 registers: per-sample scales are powers of two
            s = np.exp2(np.ceil(np.log2(np.where(s > 0, s, 1.0)))).astype(np.float32)
        return np.where(s > 0, s, np.float32(1.0)).astype(np.float32), None, 1.0
    if spec.base == "runtime":
        m = float(absmax.max()) if absmax.size else 0.0
        base = np.float32(m / qmax) if m > 0 else np.float32(1.0)
        if spec.pow2:
            base = np.float32(np.exp2(np.ceil(np.log2(np.float64(base)))))
    else:
        base = np.float32(spec.scale)
    b = np.float64(base)
    k = np.zeros(absmax.shape, np.int64)
    for s in range(1, spec.s_max + 1):
        k = np.where(absmax <= qmax * b * np.exp2(-s), s, k)
    return (b * np.exp2(-k)).astype(np.float32), k, float(base)


def quantize_input(x: np.ndarray, spec: ActSpec, keep: tuple[int, ...] = (0,)) -> QTensor:
    """Quantize a float tensor by its ActSpec (static: one scale; dynamic/shift: per sample,
    or for a per-token spec per row of the axes ``keep``, see :func:`token_rows`). A static
    spec with ``qonnx_rounding`` takes QONNX's ``int_quant`` with that mode (float32
    ``x / scale + zero_point``, clamped to the format, rounded by the mode); a ``bipolar`` one
    ``+1`` where ``x >= 0`` else ``-1``."""
    shifts = base = None
    if spec.per_token and tuple(keep) != (0,) and spec.mode != "static":
        rows, undo = token_rows(np.asarray(x), tuple(keep))
        flat = np.asarray(rows, np.float64)
        absmax = (
            (np.maximum(flat, 0) if not spec.fmt.signed else np.abs(flat)).max(axis=1)
            if flat.shape[1]
            else np.zeros(flat.shape[0])
        )
        s, shifts, base = sample_scale(spec, absmax)
        q = quantize_linear(rows, s, spec.zero_point, spec.fmt).astype(spec.fmt.dtype)
        if spec.mode != "shift":
            shifts = base = None
        return QTensor(
            np.ascontiguousarray(undo(q)),
            keepdims_form(undo(np.asarray(s, np.float32))),
            spec.zero_point,
            spec.fmt,
            None if shifts is None else keepdims_form(undo(shifts)),
            base,
        )
    if spec.mode == "static":
        s = np.float32(spec.scale)
    else:
        flat = np.asarray(x, np.float64).reshape(x.shape[0], -1)
        absmax = (
            (np.maximum(flat, 0) if not spec.fmt.signed else np.abs(flat)).max(axis=1)
            if flat.shape[1]
            else np.zeros(flat.shape[0])
        )
        s, shifts, base = sample_scale(spec, absmax)
        if spec.mode != "shift":
            shifts = base = None
    q = None
    if spec.mode == "static" and spec.bipolar:
        q = bipolar_quant(x).astype(spec.fmt.dtype)
    elif spec.mode == "static" and spec.qonnx_rounding is not None:
        m = QuantRounding(spec.qonnx_rounding)
        q = int_quant(x, s, np.float32(spec.zero_point), spec.fmt.bits, spec.fmt.signed, False, m)
        q = q.astype(spec.fmt.dtype)
    elif spec.mode == "static":
        q = quantize_static(x, s, spec.zero_point, spec.fmt)
    if q is None:
        q = quantize_linear(x, s, spec.zero_point, spec.fmt).astype(spec.fmt.dtype)
    return QTensor(
        q,
        np.asarray(s, np.float32),
        spec.zero_point,
        spec.fmt,
        shifts,
        base,
    )
