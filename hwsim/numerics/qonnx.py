"""QONNX's quantizers as integer contracts: ``Quant`` (IntQuant), ``BipolarQuant``, ``Trunc``.

QONNX (``qonnx.custom_op.general``, the format Brevitas' ``export_qonnx`` writes) defines its
ops by reference code (qonnx 1.0.0 ``intquant.int_quant``, ``trunc.trunc_v2``,
``bipolar_quant.binary_quant``); these are the same formulas, stated once with their float32
steps and rounding named, so that hwsim can fold a weight ``Quant`` to its integers at import
and say exactly what an activation ``Quant`` computes. The plain-Python-int specification is
:func:`hwsim.numerics.reference.ref_qonnx_quant` / ``ref_qonnx_trunc`` (exact rationals, the
float32 roundings applied explicitly); these vectorised forms must equal it.

Fixed-point notation: ``bits`` counts the sign bit (QONNX's ``bit_width``); ``narrow`` drops the
most negative value of a signed format (``-2^(b-1)``) and the largest of an unsigned one
(``2^b - 1``), as QONNX's ``min_int`` / ``max_int`` do (:func:`quant_range`).

``Quant(x, scale, zero_point, bit_width)`` (eq. Q1-Q4):

* (Q1) ``t = f32(f32(x) / f32(scale))`` -- float32 division, as numpy divides float32 arrays;
* (Q2) ``t = f32(t + f32(zero_point))`` -- the zero point is added *before* rounding, in float32
  (ONNX QuantizeLinear adds it after rounding, in integers: equal whenever ``zero_point = 0``,
  Brevitas' symmetric and unsigned quantizers);
* (Q3) ``t`` clamped to ``[lo, hi] = quant_range(bits, signed, narrow)`` (before rounding; the
  bounds are integers, so clamping first or last gives the same integer);
* (Q4) ``q = round(t)`` by the node's ``rounding_mode`` (:class:`QuantRounding`);
* output ``f32(f32(q - zero_point) * scale)``; the integers hwsim keeps are ``q``.
"""

from __future__ import annotations

import numpy as np

from hwsim.numerics.enums import StrEnum


class QuantRounding(StrEnum):
    """A QONNX ``rounding_mode`` (``Quant`` and ``Trunc``), by the integer ``q`` it gives for a
    float32 quotient ``t``; ``fl = floor(t)``, ``frac = t - fl``. Aliases are read by
    :func:`parse_rounding`."""

    ROUND = "ROUND"
    """Nearest, ties to even (``np.round``); alias ``HALF_EVEN``. Brevitas' default."""
    CEIL = "CEIL"
    """``ceil(t)``: toward +inf."""
    FLOOR = "FLOOR"
    """``floor(t)``: toward -inf (``Trunc``'s default)."""
    ROUND_TO_ZERO = "ROUND_TO_ZERO"
    """``sign(t) * floor(|t|)``: truncation toward 0 (Brevitas' name; qonnx 1.0.0 reads the
    same function as ``DOWN``, ``np.fix``, and rejects ``ROUND_TO_ZERO``)."""
    UP = "UP"
    """``sign(t) * ceil(|t|)``: away from 0."""
    HALF_UP = "HALF_UP"
    """``sign(t) * floor(|t| + 1/2)``: nearest, ties away from 0 (qonnx's ``round_half_up``;
    ``|t| + 1/2`` is exact for ``|t| < 2^22``, where a tie is possible at all)."""
    HALF_DOWN = "HALF_DOWN"
    """``sign(t) * ceil(|t| - 1/2)``: nearest, ties toward 0."""


_ALIASES = {"HALF_EVEN": QuantRounding.ROUND, "DOWN": QuantRounding.ROUND_TO_ZERO}


def parse_rounding(mode) -> QuantRounding:
    """A node's ``rounding_mode`` attribute (bytes or str, any case) as a
    :class:`QuantRounding`; ``ValueError`` listing the accepted names otherwise."""
    s = mode.decode() if isinstance(mode, bytes) else str(mode)
    s = s.upper()
    if s in _ALIASES:
        return _ALIASES[s]
    try:
        return QuantRounding(s)
    except ValueError:
        names = [m.value for m in QuantRounding] + list(_ALIASES)
        raise ValueError(f"rounding_mode {s!r} is not one of {names}") from None


def quant_range(bits: int, signed: bool, narrow: bool) -> tuple[int, int]:
    """``(lo, hi)`` of a QONNX integer: signed ``[-2^(b-1) + narrow, 2^(b-1) - 1]``, unsigned
    ``[0, 2^b - 1 - narrow]`` (qonnx's ``min_int`` / ``max_int``)."""
    if signed:
        return -(1 << (bits - 1)) + int(bool(narrow)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(bool(narrow))


def round_quotient(t, mode: QuantRounding) -> np.ndarray:
    """(Q4) ``t`` (float32 or float64, finite) to integers by ``mode``; int64."""
    t = np.asarray(t, np.float64)  # exact: every float32 is a float64
    mode = QuantRounding(mode)
    if mode is QuantRounding.ROUND:
        r = np.rint(t)
    elif mode is QuantRounding.CEIL:
        r = np.ceil(t)
    elif mode is QuantRounding.FLOOR:
        r = np.floor(t)
    elif mode is QuantRounding.ROUND_TO_ZERO:
        r = np.trunc(t)
    elif mode is QuantRounding.UP:
        r = np.sign(t) * np.ceil(np.abs(t))
    elif mode is QuantRounding.HALF_UP:
        r = np.sign(t) * np.floor(np.abs(t) + 0.5)
    else:
        r = np.sign(t) * np.ceil(np.abs(t) - 0.5)
    return r.astype(np.int64)


def int_quant(
    x, scale, zero_point, bits: int, signed: bool, narrow: bool, mode: QuantRounding
) -> np.ndarray:
    """The integers ``q`` of ``Quant`` (module docstring, Q1-Q4): ``x``, ``scale`` and
    ``zero_point`` float32 arrays broadcasting as numpy does (a per-channel scale of shape
    ``(C, 1, 1, 1)`` against a ``(C, ...)`` weight). Returns int64 of the broadcast shape."""
    x = np.asarray(x, np.float32)
    s = np.asarray(scale, np.float32)
    z = np.asarray(zero_point, np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t = (x / s).astype(np.float32)
        t = (t + z).astype(np.float32)
    lo, hi = quant_range(bits, signed, narrow)
    t = np.clip(t.astype(np.float64), lo, hi)
    return round_quotient(t, mode)


def bipolar_quant(x) -> np.ndarray:
    """``BipolarQuant``'s integers: ``+1`` where ``x >= 0`` (float32, so -0.0 too), else ``-1``
    (NaN: ``-1``, as ``np.where(x >= 0, 1, -1)``). The output is ``f32(q * scale)``. int64."""
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore"):
        return np.where(x >= 0, 1, -1).astype(np.int64)


def trunc_shift(scale, output_scale) -> int:
    """``Trunc``'s right shift ``k``: ``2^k = 2^round(log2(output_scale / scale))`` (qonnx's
    ``trunc_v2`` rounds the ratio to a power of two; half to even on the log). ``ValueError``
    if the scales are not positive scalars."""
    s, so = float(np.asarray(scale).reshape(-1)[0]), float(np.asarray(output_scale).reshape(-1)[0])
    if not (np.isfinite(s) and np.isfinite(so) and s > 0 and so > 0):
        raise ValueError(f"Trunc scales must be finite and > 0, got {s} and {so}")
    return int(np.round(np.log2(np.float32(so) / np.float32(s))))


def trunc_int(
    q, shift: int, out_bits: int, signed: bool, narrow: bool, mode: QuantRounding
) -> np.ndarray:
    """``Trunc`` on integers (qonnx ``trunc_v2`` with zero point 0 and an input on its grid,
    ``x / scale`` an integer ``q``): ``round_mode(clamp(q / 2^shift, quant_range(out_bits)))``.
    ``q / 2^shift`` is exact in float64 for ``|q| < 2^53``. Returns int64."""
    t = np.asarray(q, np.int64).astype(np.float64) / np.float64(2.0**shift)
    lo, hi = quant_range(out_bits, signed, narrow)
    return round_quotient(np.clip(t, lo, hi), mode)
