"""The output stage: accumulator + bias -> scale register -> + zero point -> clamp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.datapath.config import Accumulator
from hwsim.datapath.kernels import output_ort_fused
from hwsim.numerics import IntFormat, Overflow, ScaleKind, ScaleRegister, check_integer_array
from hwsim.numerics import saturate as saturate_to


@dataclass
class OutputResult:
    """Output values (in ``out_format``'s narrowest dtype), the number of bias additions that
    overflowed the accumulator, and the number of outputs clamped to the output range."""

    values: np.ndarray
    bias_overflows: int
    clamped: int


def _along(v, ndim: int, axis: int, length: int, name: str) -> np.ndarray:
    arr = np.asarray(v)
    if arr.ndim == 0:
        return arr
    if arr.ndim == ndim and ndim > 1:  # a full broadcastable array (e.g. per-sample x channel)
        return arr
    if arr.ndim != 1 or arr.shape[0] != length:
        raise ValueError(
            f"{name} must be a scalar or have {length} entries (axis {axis}); got shape {arr.shape}"
        )
    shape = [1] * ndim
    shape[axis] = length
    return arr.reshape(shape)


def add_bias(acc_values, bias=None, *, acc: Accumulator = Accumulator(), bias_axis: int = 1):
    """``t = acc.overflow(acc_values + bias)`` in the accumulator's format (the first step of
    eq. 15). Returns ``(t int64, bias_overflows)``: the additions that left the format."""
    fmt = acc.format
    a = check_integer_array(acc_values, "acc_values")
    fmt.check(a, "acc_values")
    t = a if a.dtype == np.int64 else a.astype(np.int64)
    if bias is None:
        return t, 0
    b = check_integer_array(bias, "bias")
    fmt.check(b, "bias")
    b = _along(b.astype(np.int64), t.ndim, bias_axis, t.shape[bias_axis] if t.ndim else 1, "bias")
    exact = t + b
    if exact.size and fmt.min <= int(exact.min()) and int(exact.max()) <= fmt.max:
        return exact, 0  # nothing left the accumulator's range: wrap/saturate is the identity
    t = np.asarray(acc.overflow.apply(exact, fmt), np.int64)
    return t, int(np.count_nonzero(exact != t))


def output_stage(
    acc_values,
    register: ScaleRegister,
    *,
    acc: Accumulator = Accumulator(),
    bias=None,
    bias_axis: int = 1,
    scale_axis: int | None = 1,
    out_format: IntFormat = IntFormat(8, True),
    out_zero_point: int = 0,
    rng: np.random.Generator | None = None,
    fused: bool = True,
) -> OutputResult:
    """Requantize accumulator values to the output format (eq. 15):

    ``t = acc.overflow(acc_values + bias)`` in the accumulator's format (``bias`` a scalar, a
    vector along ``bias_axis`` or an array of the values' rank that broadcasts; it is added in the
    accumulator, as TFLite and onnxruntime add their int32 bias), ``y = register(t)``
    (per-tensor, per-channel along ``scale_axis`` = 1, or per-sample rows with ``scale_axis`` =
    0, or a register array broadcasting against the values with ``scale_axis=None``),
    ``out = saturate(y + out_zero_point, out_format)``. A ``tflite*`` register takes int32
    input, so it needs an accumulator of at most 32 signed bits.

    An ``ort`` register that is per-tensor or per-channel along axis 1, with no bias or a
    per-channel one, on an accumulator of at most 62 bits, runs as one fused Numba pass
    (:func:`hwsim.datapath.kernels.output_ort_fused`); ``fused=False`` forces the numpy
    composition, which is its reference.
    """
    if not isinstance(register, ScaleRegister):
        raise ValueError(f"register must be a ScaleRegister, got {type(register).__name__}")
    fmt = acc.format
    if register.kind in (ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE) and (
        fmt.bits > 32 or not fmt.signed
    ):
        raise ValueError(
            f"a {register.kind.value} register takes int32 input; the accumulator is {fmt}"
        )
    a = check_integer_array(acc_values, "acc_values")
    out_format.check(out_zero_point, "out_zero_point")
    if fused:
        res = _fused_ort(a, register, acc, bias, bias_axis, scale_axis, out_format, out_zero_point)
        if res is not None:
            return res
    t, bias_overflows = add_bias(a, bias, acc=acc, bias_axis=bias_axis)
    axis = None if np.ndim(register.multiplier) > 1 else scale_axis
    y = np.asarray(register.apply(t, axis=axis, rng=rng), np.int64) + int(out_zero_point)
    out = saturate_to(y, out_format)
    clamped = int(np.count_nonzero(out != y))
    return OutputResult(np.asarray(out).astype(out_format.dtype), bias_overflows, clamped)


def ort_params(register: ScaleRegister, acc: Accumulator, bias, C: int, bias_axis=1, scale_axis=1):
    """The per-channel ``(scale float32 (C,), bias int64 (C,))`` of the fused ``ort`` output
    stage over channel axis 1 of ``C`` channels, or None where it does not apply (another
    register kind, an accumulator over 62 bits, a register or a bias along another axis,
    a non-finite multiplier). Raises where :func:`output_stage` raises on ``bias``."""
    fmt = acc.format
    if register.kind is not ScaleKind.ORT or fmt.bits > 62:
        return None
    mult = np.asarray(register.multiplier)
    if mult.ndim == 0:
        scale = np.full(C, mult, np.float32)
    elif mult.ndim == 1 and scale_axis == 1 and mult.shape[0] == C:
        scale = mult.astype(np.float32)
    else:
        return None
    if not np.all(np.isfinite(scale)):
        return None  # the numpy path raises the documented error
    if bias is None:
        return scale, np.zeros(C, np.int64)
    b = check_integer_array(bias, "bias")
    fmt.check(b, "bias")
    if b.ndim == 0:
        return scale, np.full(C, int(b), np.int64)
    if b.ndim == 1 and bias_axis == 1 and b.shape[0] == C:
        return scale, b.astype(np.int64)
    return None


def _fused_ort(a, register, acc, bias, bias_axis, scale_axis, out_format, out_zero_point):
    """The fused pass for the common case, or None when the case is not covered."""
    fmt = acc.format
    if a.ndim < 2 or a.size == 0:
        return None
    params = ort_params(register, acc, bias, a.shape[1], bias_axis, scale_axis)
    if params is None:
        return None
    scale, b = params
    a3 = np.ascontiguousarray(a.reshape(a.shape[0], a.shape[1], -1))
    out = np.empty(a3.shape, out_format.dtype)
    amin, amax, bovf, clamped = output_ort_fused(
        a3, b, *ort_stage_args(acc, scale, out_format, out_zero_point), out
    )
    if amin < fmt.min or amax > fmt.max:
        fmt.check(a, "acc_values")  # raises, naming the offending value
    return OutputResult(out.reshape(a.shape), int(bovf), int(clamped))


def ort_stage_args(acc: Accumulator, scale, out_format: IntFormat, out_zero_point: int) -> tuple:
    """The scalar arguments of the fused ``ort`` output-stage kernels after ``bias``:
    ``(lo, hi, saturate, bits, signed, scale, zp, olo, ohi)``."""
    fmt = acc.format
    return (
        fmt.min,
        fmt.max,
        acc.overflow is Overflow.SATURATE,
        fmt.bits,
        fmt.signed,
        scale,
        int(out_zero_point),
        out_format.min,
        out_format.max,
    )
