"""What every quantized operator of :mod:`hwsim.qops` shares: formats, parameter checks, the
float32 primitives of onnxruntime's x86-64 kernels, and the counters recording.

* Formats: :func:`int_format` maps a NumPy dtype to its :class:`~hwsim.numerics.IntFormat`
  (int8..int32 / uint8..uint32 and the ml_dtypes sub-byte ``int4`` / ``uint4`` / ``int2`` /
  ``uint2``). float8 / float4 / float6 quantized types are not integer hardware: they raise
  :class:`NotIntegerFormatError` ("... is not an integer format"). Outputs are returned in the
  narrowest holder dtype (sub-byte ints in int8 / uint8).
* Accumulator: :data:`ACC32`, the int32 wrapping accumulator of every ONNX / onnxruntime
  integer kernel; requantization uses the ``ort`` :class:`~hwsim.numerics.ScaleRegister`.
* float32 primitives, emulated in their exact operation order on the x86-64 build with
  AVX2/FMA: :func:`fma_f32` (one-rounding fused multiply-add), :func:`cvtps_epi32` (x86
  ``cvtps2dq``), and MLAS's ``MlasQuantizeLinear`` (clamp the quotient, round half to even,
  add the zero point).
* Counters: :func:`collect_counters` collects the datapath :class:`Counters` of every GEMM /
  convolution the ops run inside its block.

Every contract violation raises :class:`QOpError` (a :class:`~hwsim.errors.HwsimError`).
"""

from __future__ import annotations

import contextlib
import contextvars

import numpy as np

from hwsim.datapath import Accumulator
from hwsim.datapath.config import Counters
from hwsim.errors import HwsimError
from hwsim.numerics import IntFormat, ScaleRegister
from hwsim.numerics.affine import quantize_quotient

ACC32 = Accumulator(32)
"""The accumulator of every ONNX / onnxruntime integer kernel: int32, wrapping."""

INT32 = IntFormat(32, True)
MS_DOMAIN = "com.microsoft"


class QOpError(HwsimError):
    """Inputs or attributes outside a quantized operator's contract."""


class NotIntegerFormatError(QOpError):
    """A float8 / float4 / float6 (or other non-integer) quantized type: not integer hardware."""


# --- formats ---------------------------------------------------------------------------------
_SUBBYTE = {"int4": (4, True), "uint4": (4, False), "int2": (2, True), "uint2": (2, False)}


def int_format(dtype, what: str = "tensor") -> IntFormat:
    """The :class:`IntFormat` of a NumPy dtype: int8..int32 / uint8..uint32, and the ml_dtypes
    sub-byte ints (``int4``, ``uint4``, ``int2``, ``uint2``). Any float type (float8, float4,
    float6, float16, ...) raises :class:`NotIntegerFormatError`."""
    dt = np.dtype(dtype)
    if dt.kind in "iu" and dt.itemsize <= 4:
        return IntFormat(8 * dt.itemsize, dt.kind == "i")
    if dt.name in _SUBBYTE:
        return IntFormat(*_SUBBYTE[dt.name])
    if dt.kind == "f" or dt.name.startswith("float") or dt.name == "bfloat16":
        raise NotIntegerFormatError(
            f"{what} type {dt.name} is not an integer format: hwsim emulates integer hardware "
            "(float8 / float4 / float6 quantization is out of scope)"
        )
    raise QOpError(f"{what} type {dt.name} is not a supported quantized integer type")


def _onnx_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))
    except Exception as exc:  # noqa: BLE001 - onnx raises KeyError/ValueError by version
        raise QOpError(f"unknown ONNX element type {elem_type!r}") from exc


def _holder(fmt: IntFormat) -> np.dtype:
    """The NumPy dtype an output of ``fmt`` is returned in (sub-byte ints in int8 / uint8)."""
    for bits in (8, 16, 32, 64):
        if fmt.bits <= bits:
            return np.dtype(f"{'' if fmt.signed else 'u'}int{bits}")
    raise QOpError(f"no holder dtype for {fmt}")


def _ints(value, name: str) -> np.ndarray:
    """Integer values of an integer (or ml_dtypes sub-byte) array, as int64."""
    arr = np.asarray(value)
    int_format(arr.dtype, name)
    return arr.astype(np.int64)


def _operand_array(value, fmt: IntFormat) -> np.ndarray:
    """An operand in its holder dtype (what the datapath's engines take)."""
    return np.asarray(value).astype(_holder(fmt))


def _scalar(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size != 1:
        raise QOpError(f"{name} must be a scalar or a 1-element tensor, got shape {arr.shape}")
    return arr.reshape(())


def _zero_point(value, fmt: IntFormat, name: str) -> int:
    """A per-tensor zero point (``None`` = 0) of format ``fmt``."""
    if value is None:
        return 0
    zfmt = int_format(np.asarray(value).dtype, name)
    if zfmt != fmt:
        raise QOpError(f"{name} is {zfmt} but its tensor is {fmt}")
    return int(_scalar(_ints(value, name), name))


def _f32_scale(value, name: str) -> np.float32:
    s = np.float32(_scalar(value, name).astype(np.float32))
    if not (np.isfinite(s) and s > 0):
        raise QOpError(f"{name} must be a finite positive scale, got {s}")
    return s


# --- float32 primitives of the x86-64 kernels --------------------------------------------------
def fma_f32(a, b, c) -> np.ndarray:
    """Fused multiply-add ``round_f32(a*b + c)`` of float32 operands, with one rounding.

    Exact emulation: ``a*b`` is exact in float64 (24 + 24 significant bits <= 53); ``s = p + c``
    in float64 is correctly rounded with error ``e`` (``TwoSum``, so ``s + e = a*b + c``
    exactly). Rounding ``s`` to float32 is then the correctly rounded FMA unless ``s`` is exactly
    halfway between two float32 values while ``e != 0`` (a float32 midpoint has 25 significant
    bits, so it is a float64 value; no midpoint can lie strictly between ``s`` and ``s + e``,
    because it would be a float64 closer to the exact sum than ``s``). In that case the exact
    value lies on ``e``'s side of the midpoint and the neighbour on that side is the answer.
    """
    a32 = np.asarray(a, np.float32)
    b32 = np.asarray(b, np.float32)
    c64 = np.asarray(c, np.float32).astype(np.float64)
    p = a32.astype(np.float64) * b32.astype(np.float64)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    with np.errstate(over="ignore", invalid="ignore"):
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
        o64 = other.astype(np.float64)
        midpoint = (s != r64) & (s == (r64 + o64) / 2)
        fix = midpoint & (err != 0) & ((err > 0) == (o64 > s))
    return np.where(fix, other, r)


def cvtps_epi32(v) -> np.ndarray:
    """x86 ``cvtps2dq`` (default MXCSR): round half to even; NaN and values outside int32 give
    the "integer indefinite" ``INT32_MIN``. Also C ``(int32_t)nearbyintf(v)`` on x86-64."""
    v = np.asarray(v, np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        r = np.rint(v)
        ok = (r >= -(2.0**31)) & (r < 2.0**31)
    return np.where(ok, r, -(2.0**31)).astype(np.int64)


def _saturate(values: np.ndarray, fmt: IntFormat) -> np.ndarray:
    return np.clip(values, fmt.min, fmt.max).astype(_holder(fmt))


def _mlas_quantize(v, scale: np.float32, zp: int, fmt: IntFormat) -> np.ndarray:
    """MLAS ``MlasQuantizeLinear`` (``core/mlas/lib/quantize.cpp``; AVX-512F on this machine:
    ``intrinsics/avx512/quantize_avx512f.cpp``): ``t = f32(v / scale)``; ``t = min(max(t,
    min - zp), max - zp)`` (``maxps`` returns the bound for NaN); ``q = cvtps(t) + zp``."""
    t = np.asarray(v, np.float32) / np.float32(scale)
    return _quantize_divided(t, zp, fmt)


def _quantize_divided(t, zp, fmt: IntFormat) -> np.ndarray:
    """:func:`hwsim.numerics.affine.quantize_quotient` in the format's holder dtype."""
    return quantize_quotient(t, zp, fmt).astype(_holder(fmt))


# --- attributes ------------------------------------------------------------------------------
def _ints_attr(value, n: int, default: int, name: str) -> list[int]:
    if value is None:
        return [default] * n
    vals = [int(v) for v in value]
    if len(vals) != n:
        raise QOpError(f"{name} must have {n} entries, got {vals}")
    return vals


def _auto_pad(mode) -> str:
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise QOpError(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {mode!r}")
    return mode


# --- counters --------------------------------------------------------------------------------
_SINK: contextvars.ContextVar = contextvars.ContextVar("hwsim_qops_counters", default=None)


@contextlib.contextmanager
def collect_counters():
    """Collect the datapath :class:`Counters` of every MAC the ops run inside the block (a
    list, one entry per GEMM / convolution call): MACs, int32 wraps, eq. 16 pair saturations."""
    sink: list[Counters] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def _record(c: Counters) -> None:
    sink = _SINK.get()
    if sink is not None:
        sink.append(c)


# --- requantization ---------------------------------------------------------------------------
def _ort_register(scale) -> ScaleRegister:
    s = np.asarray(scale, np.float32)
    if s.size == 1:
        return ScaleRegister("ort", s.reshape(()), 0)
    return ScaleRegister("ort", s.reshape(-1), np.zeros(s.size, np.int64))


def _out_format(y_zero_point, name: str = "y_zero_point") -> tuple[IntFormat, int]:
    if y_zero_point is None:
        raise QOpError(f"{name} is required (it sets the output type)")
    fmt = int_format(np.asarray(y_zero_point).dtype, name)
    return fmt, _zero_point(y_zero_point, fmt, name)


def _per_channel_scale(value, n: int, name: str) -> np.ndarray:
    s = np.asarray(value).astype(np.float32).reshape(-1)
    if s.size not in (1, n):
        raise QOpError(f"{name} must have 1 or {n} entries, got {s.size}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise QOpError(f"{name} must be finite and positive")
    return s.reshape(()) if s.size == 1 else s
