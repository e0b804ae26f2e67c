"""Dynamic quantization as onnxruntime computes it: ONNX ``DynamicQuantizeLinear`` and the
com.microsoft ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul`` that ORT's graph optimiser
fuses ``onnxruntime.quantization.quantize_dynamic`` models into.

``f32(.)`` is one float32 operation, rounded to nearest even; ``min`` / ``max`` in (D3) are
C++'s ``std::min(a, b) = b < a ? b : a`` and ``std::max(a, b) = a < b ? b : a``.

(D1) ``lo = min(min_i x_i, 0)``, ``hi = max(max_i x_i, 0)`` (an empty x: ``lo = hi = 0``);
(D2) ``s = 1`` if ``hi == lo`` else ``f32(f32(hi - lo) / 255)`` (``inf`` when ``hi - lo``
     overflows, ``0`` when it underflows);
(D3) ``z = round_half_even(max(0, min(255, f32(0 - f32(lo / s)))))`` (a NaN -- ``0 / 0`` or
     ``-inf / inf`` -- gives 255);
(D4) ``y = MlasQuantizeLinear(x, s, z)``: ``f32(x / s)`` clamped to ``[-z, 255 - z]`` (NaN to
     ``-z``), rounded half to even, ``+ z``;
(M1) ``acc = wrap32((a - za) @ (b - zb[n]))`` (NumPy matmul broadcasting; ``zb`` per-tensor or
     per-column);
(M2) ``m[n] = f32(a_scale * b_scale[n])``;
(M3) ``y = f32(f32(acc) * m[n])``, then ``y = f32(y + bias[n])`` -- a multiply and an add, no
     fused multiply-add (``MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR`` in ``ZeroMode``);
(M4) a ``b_scale`` of another broadcastable shape: (M2)-(M3) with ``m = a_scale``, then
     ``y = f32(y * b_scale)`` broadcast (ORT's ``ScaleOutput``).

Sources (onnxruntime 1.32): ``core/providers/cpu/quantization/dynamicquantizelinear.cc``
(``DynamicQuantizeLinear<uint8_t>::Compute``); ``core/util/qmath.h``
(``GetQuantizationParameter``: (D1)-(D3); ``RoundHalfToEven``: ``x - remainderf(x, 1)``;
``ParQuantizeLinearStd``: (D4)); ``core/mlas/lib/intrinsics/avx/min_max_elements.cpp``
(``MlasReduceMinimumMaximumF32KernelAvx``, behind ``MlasFindMinMaxElement``);
``contrib_ops/cpu/quantization/dynamic_quantize_matmul.cc`` (``MatMulIntegerToFloatBase::
ComputeCommon``: (M1)-(M2), ``MatMulIntegerToFloat::FixupScaleTensor``, ``ScaleOutput``: (M4),
``DynamicQuantizeMatMul::Compute``: (D1)-(D4) then (M1)-(M3) with ``a_scale = s``);
``core/mlas/lib/qpostprocessor.cpp`` (``MLAS_QGEMM_SCALE_BIAS_OUTPUT_PROCESSOR::ProcessImpl``:
(M3)); ``core/providers/cpu/quantization/matmul_integer_base.h`` (``IsBQuantParamSupported``:
``b_scale`` / ``b_zero_point`` scalar, ``(N,)`` for a 2-D B, or B's shape with 1 at axis -2).

Outside the contract (:class:`QOpError`): NaN in a float input -- MLAS's vectorised min / max
drops or keeps a NaN depending on its position in the 8-lane reduction and, above 128
elements, on the session's thread count; ``K = 0`` with a non-empty output -- MLAS's K loop
never runs and ORT returns the output buffer unwritten; a per-row ``a_scale`` (ORT's
``ScaleOutput`` of A). The ONNX reference (``op_dynamic_quantize_linear.py``) takes
``s = 1/255`` where ORT takes ``s = 1`` (``hi == lo``, i.e. an all-zero or empty x); y and z
agree.
"""

from __future__ import annotations

import numpy as np

from hwsim.datapath.isa import Isa, resolve
from hwsim.numerics import IntFormat
from hwsim.qops.common import QOpError, _mlas_quantize, int_format
from hwsim.qops.matmul import _matmul_acc

_U8 = IntFormat(8, False)
_F32 = np.float32


def _float32(x, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.float32:
        raise QOpError(f"{name} must be float32 (ONNX tensor(float)), got {x.dtype}")
    if np.isnan(x).any():
        raise QOpError(
            f"{name} contains NaN: onnxruntime's min/max reduction keeps or drops a NaN "
            "depending on its position and the thread count, so its result is not emulated"
        )
    return x


def _std_min(a, b):
    return b if b < a else a


def _std_max(a, b):
    return b if a < b else a


def _dynamic_qparams(x: np.ndarray) -> tuple[np.float32, int]:
    """(D1)-(D3) of the module docstring for a NaN-free float32 ``x``."""
    lo = _std_min(x.min(), _F32(0)) if x.size else _F32(0)
    hi = _std_max(x.max(), _F32(0)) if x.size else _F32(0)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        scale = _F32(1) if hi == lo else _F32(hi - lo) / _F32(255)
        z0 = _F32(0) - lo / scale
    return _F32(scale), int(np.rint(_std_max(_F32(0), _std_min(_F32(255), z0))))


def dynamic_quantize_linear(x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX ``DynamicQuantizeLinear`` (opset 11) as onnxruntime's CPU kernel computes it:
    ``(y, y_scale, y_zero_point)`` by (D1)-(D4) of the module docstring. ``x``: float32 of any
    shape (empty and 0-d included); ``y`` uint8 of x's shape, ``y_scale`` a float32 and
    ``y_zero_point`` a uint8 0-d array. NaN in x raises :class:`QOpError`."""
    x = _float32(x, "x")
    scale, zp = _dynamic_qparams(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = _mlas_quantize(x, scale, zp, _U8)
    return y, np.array(scale, np.float32), np.array(zp, np.uint8)


def _b_param_supported(param_shape: tuple, b_shape: tuple) -> bool:
    """ORT's ``IsBQuantParamSupported``: scalar / one element, ``(N,)`` for a 2-D B, or B's
    shape with 1 at axis -2."""
    if len(param_shape) == 0 or (len(param_shape) == 1 and param_shape[0] == 1):
        return True
    if len(param_shape) == 1 and len(b_shape) == 2:
        return param_shape[0] == b_shape[1]
    if len(param_shape) != len(b_shape) or len(param_shape) <= 1 or param_shape[-2] != 1:
        return False
    return all(
        p == q
        for i, (p, q) in enumerate(zip(param_shape, b_shape, strict=True))
        if i != len(b_shape) - 2
    )


def _integer_to_float(a, b, a_scale: np.float32, b_scale, a_zero_point, b_zero_point, bias,
                      isa: Isa) -> np.ndarray:  # fmt: skip
    """(M1)-(M4) of the module docstring: the shared ``ComputeCommon`` of both contrib ops."""
    if a.ndim == 0 or b.ndim == 0:
        raise QOpError("MatMul inputs must have at least one dimension")
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise QOpError(f"A {a.shape} and B {b.shape}: inner dimensions differ")
    if a_zero_point is not None and np.asarray(a_zero_point).size != 1:
        raise QOpError("a_zero_point must be per-tensor (a scalar or a 1-element tensor)")
    if b_zero_point is not None and not _b_param_supported(np.shape(b_zero_point), b.shape):
        raise QOpError(
            f"b_zero_point of shape {np.shape(b_zero_point)} is neither per-tensor nor "
            f"per-column for B of shape {b.shape}"
        )
    K, N = a2.shape[-1], b2.shape[-1]
    out_shape = (  # NumPy matmul: a 1-D operand's axis is removed from the result
        np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
        + ((a2.shape[-2],) if a.ndim > 1 else ())
        + ((N,) if b.ndim > 1 else ())
    )
    b_s = np.asarray(b_scale).astype(np.float32)
    per_column = _b_param_supported(b_s.shape, b.shape)
    if not per_column:
        try:
            scaled = np.broadcast_shapes(out_shape, b_s.shape) == out_shape
        except ValueError:
            scaled = False
        if not scaled:
            raise QOpError(f"b_scale of shape {b_s.shape} does not broadcast to {out_shape}")
    if bias is not None:
        bias = np.asarray(bias)
        if bias.dtype != np.float32 or bias.size != N:
            raise QOpError(
                f"bias must be float32 with N = {N} elements, got {bias.dtype} {bias.shape}"
            )
    if 0 in out_shape:
        return np.zeros(out_shape, np.float32)
    if K == 0:
        raise QOpError("K = 0: onnxruntime leaves the output unwritten (undefined values)")
    acc = _matmul_acc(a2, b2, a_zero_point, b_zero_point, isa).astype(np.int32)
    mult = a_scale * (b_s.reshape(-1) if b_s.ndim == 1 else b_s) if per_column else a_scale
    with np.errstate(over="ignore", invalid="ignore"):
        y = acc.astype(np.float32) * np.asarray(mult, np.float32)
        if bias is not None:
            y = y + bias.reshape(N)
        y = y.reshape(out_shape)
        if not per_column:
            y = y * b_s
    return y.astype(np.float32)


def _check_types(a: np.ndarray, b: np.ndarray, op: str) -> None:
    af, bf = int_format(a.dtype, "A"), int_format(b.dtype, "B")
    if af.bits != 8 or bf.bits != 8:
        raise QOpError(f"{op} takes 8-bit A and B, got {a.dtype} and {b.dtype}")
    if af.signed and not bf.signed:
        raise QOpError(f"{op}: an int8 A takes an int8 B (onnxruntime's kernels), got {b.dtype}")


def matmul_integer_to_float(
    a, b, a_scale, b_scale, a_zero_point=None, b_zero_point=None, bias=None, *, isa="exact"
) -> np.ndarray:
    """com.microsoft ``MatMulIntegerToFloat`` (``contrib_ops/cpu/quantization/
    dynamic_quantize_matmul.cc``): float32 ``y`` by (M1)-(M4) of the module docstring.

    ``a``: uint8 (with a uint8 or int8 ``b``) or int8 (with an int8 ``b``), NumPy matmul
    broadcasting; ``a_scale`` / ``a_zero_point`` per-tensor; ``b_scale`` / ``b_zero_point``
    per-tensor or per-column (``IsBQuantParamSupported``), another ``b_scale`` shape scales
    the output afterwards (M4); ``bias`` float32 with N elements. Scales are any float32 values
    (ORT only multiplies). A swapped pair of scales is swapped back as ORT's
    ``FixupScaleTensor`` does; a per-row ``a_scale`` raises :class:`QOpError`.
    ``isa="avx2"``: uint8 a x int8 b pairs adjacent ``k`` in saturating int16 (eq. 16).
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_types(a, b, "MatMulIntegerToFloat")
    a_s, b_s = np.asarray(a_scale), np.asarray(b_scale)
    if a_s.size != 1:
        if a_s.ndim == 1 or a_s.shape[-1] != 1:
            a_s, b_s = b_s, a_s
    elif b_s.size != 1 and b_s.ndim > 1 and b_s.shape[-2] != 1:
        a_s, b_s = b_s, a_s
    if a_s.size != 1:
        raise QOpError(
            f"a_scale of shape {a_s.shape} is not per-tensor: onnxruntime's per-row a_scale "
            "(ScaleOutput) is not emulated"
        )
    a_s = _F32(a_s.reshape(()).astype(np.float32))
    return _integer_to_float(a, b, a_s, b_s, a_zero_point, b_zero_point, bias, resolve(isa))


def dynamic_quantize_matmul(
    a, b, b_scale, b_zero_point=None, bias=None, *, isa="exact"
) -> np.ndarray:
    """com.microsoft ``DynamicQuantizeMatMul`` (``contrib_ops/cpu/quantization/
    dynamic_quantize_matmul.cc``, ``DynamicQuantizeMatMul::Compute``): float32 ``a`` quantized
    to uint8 over the whole tensor by (D1)-(D4), then (M1)-(M4) with ``a_scale = s`` -- the
    multiplier ``f32(s * b_scale[n])`` is the product the unfused graph's
    ``Mul(a_scale, b_scale)`` computes (float32 multiplication commutes), so this equals
    :func:`dynamic_quantize_linear` then :func:`matmul_integer_to_float` bit for bit.
    ``b``: uint8 or int8; ``b_scale`` / ``b_zero_point`` / ``bias`` as
    :func:`matmul_integer_to_float`. NaN in ``a`` raises :class:`QOpError`.
    ``isa="avx2"``: the uint8 a x int8 b pairs of eq. 16.
    """
    a_f = _float32(a, "A")
    b = np.asarray(b)
    aq, a_s, a_z = dynamic_quantize_linear(a_f)
    _check_types(aq, b, "DynamicQuantizeMatMul")
    return _integer_to_float(aq, b, _F32(a_s), b_scale, a_z, b_zero_point, bias, resolve(isa))
