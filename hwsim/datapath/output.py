"""The output stage: accumulator + bias -> scale register -> + zero point -> clamp."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hwsim.datapath.config import Accumulator
from hwsim.numerics import IntFormat, ScaleKind, ScaleRegister, check_integer_array
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
) -> OutputResult:
    """Requantize accumulator values to the output format (eq. 15):

    ``t = acc.overflow(acc_values + bias)`` in the accumulator's format (``bias`` a scalar, a
    vector along ``bias_axis`` or an array of the values' rank that broadcasts; it is added in the
    accumulator, as TFLite and onnxruntime add their int32 bias), ``y = register(t)``
    (per-tensor, per-channel along ``scale_axis`` = 1, or per-sample rows with ``scale_axis`` =
    0, or a register array broadcasting against the values with ``scale_axis=None``),
    ``out = saturate(y + out_zero_point, out_format)``. A ``tflite*`` register takes int32
    input, so it needs an accumulator of at most 32 signed bits.
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
    fmt.check(a, "acc_values")
    out_format.check(out_zero_point, "out_zero_point")
    t = a if a.dtype == np.int64 else a.astype(np.int64)
    bias_overflows = 0
    if bias is not None:
        b = check_integer_array(bias, "bias")
        fmt.check(b, "bias")
        b = _along(
            b.astype(np.int64), t.ndim, bias_axis, t.shape[bias_axis] if t.ndim else 1, "bias"
        )
        exact = t + b
        if exact.size and fmt.min <= int(exact.min()) and int(exact.max()) <= fmt.max:
            t = exact  # nothing left the accumulator's range: wrap/saturate is the identity
        else:
            t = acc.overflow.apply(exact, fmt)
            bias_overflows = int(np.count_nonzero(exact != t))
            t = np.asarray(t, np.int64)
    axis = None if np.ndim(register.multiplier) > 1 else scale_axis
    y = np.asarray(register.apply(t, axis=axis, rng=rng), np.int64) + int(out_zero_point)
    out = saturate_to(y, out_format)
    clamped = int(np.count_nonzero(out != y))
    return OutputResult(np.asarray(out).astype(out_format.dtype), bias_overflows, clamped)
