"""onnxruntime's com.microsoft ``QLinearSoftmax`` (8-bit), emulated bit for bit on x86-64.

Source: ``contrib_ops/cpu/quantization/qlinear_softmax.cc`` (``QlinearBuildLookupTableUint32``,
``QLinearSoftmax::ComputeInternal``, ``QlinearSoftmaxCPU<uint8_t>`` / ``<int8_t>``; the table is
``float``, ``QLinearSoftmax::EXP_OUT_DTYPE`` in ``qlinear_softmax.h``). The stored public
snapshot of that file (microsoft/onnxruntime ``b2239b35`` / ``07d59c09``) does the last step
(eq. 6) in float32 with ``nearbyintf`` and clamps int8 outputs at 255 (so they wrap). The
onnxruntime 1.32 wheel we test against is a later revision: its disassembly (the two
``QlinearSoftmaxCPU`` lambdas and ``ComputeInternal`` in ``onnxruntime_pybind11_state.so``)
does eqs. 5-6 in double and saturates int8 at [-128, 127] (the int8 clamp is onnxruntime
PR #29728). The contract below is that binary's, for a row ``x_0 .. x_{D-1}``:

1. ``b = max(0, f64(logf(f32(FLT_MAX / f32(D)))) - 5) / f64(x_scale)`` (double);
2. ``T[i] = f32(exp(((i - 255) + b) * f64(x_scale)))`` for ``i = 0 .. 255`` (double ``exp``);
3. ``e_j = T[255 - (max_k x_k - x_j)]`` (int8 stores ``T[i]`` at ``uint8(i - 128)`` and reads
   ``uint8(127 - max + x_j)``: the same entry);
4. ``s = f32(... f32(f32(e_0 + e_1) + e_2) ... + e_{D-1})``, a sequential float32 sum;
5. ``m = f64(floorf(1.0f / y_scale))``, or ``floor(1.0 / f64(y_scale))`` when ``1.0f / y_scale``
   overflows float32 (``y_scale = f32(1/255)`` gives ``m = 254``, not 255);
6. ``y_j = clamp(nearbyint(f64(e_j) * m / f64(s)) + y_zero_point, min, max)`` in double, ties
   to even (the rounding mode is the default one).

``logf`` and ``exp`` are the C library's, the ones onnxruntime calls (``logf@GLIBC_2.27``,
``exp@GLIBC_2.2.5``); hwsim calls ``logf`` through ctypes and ``exp`` through :func:`math.exp`.
Neither has a NumPy substitute: glibc's ``logf`` differs from ``f32(math.log(x))`` for 38 of the
lengths ``D <= 2e6`` (the first is ``D = 60594``), and NumPy's float64 ``exp`` differs from
glibc's in the last bit for about 5% of arguments. ``X_zero_point`` does not enter (softmax is
shift-invariant). ``T[255] >= 1``, so ``s > 0`` and the kernel's ``vsum == 0`` exit never runs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math

import numpy as np

from hwsim.qops.common import QOpError, _f32_scale, _holder, _zero_point, int_format

_FLT_MAX = np.float32(np.finfo(np.float32).max)
_OPSET13 = 13


@functools.cache
def _libm_logf():
    path = ctypes.util.find_library("m")
    if path is None:
        raise QOpError("QLinearSoftmax needs the C library's logf (no libm found)")
    logf = ctypes.CDLL(path).logf
    logf.restype = ctypes.c_float
    logf.argtypes = [ctypes.c_float]
    return logf


def _exp_table(reduce_len: int, x_scale: np.float32) -> np.ndarray:
    """Eqs. 1-2: the 256 float32 values ``T[i]``, the row maximum mapped to ``i = 255``."""
    xs = float(x_scale)
    log_range = float(_libm_logf()(float(_FLT_MAX / np.float32(reduce_len))))
    shift = max(0.0, log_range - 5.0) / xs
    return np.array([math.exp(((i - 255.0) + shift) * xs) for i in range(256)]).astype(np.float32)


def _y_multiplier(y_scale: np.float32) -> float:
    """Eq. 5: ``floor(1 / y_scale)`` as onnxruntime forms it."""
    with np.errstate(over="ignore"):
        m = np.floor(np.float32(1.0) / y_scale)
    return float(m) if np.isfinite(m) else float(math.floor(1.0 / float(y_scale)))


def qlinear_softmax(
    X, X_scale, X_zero_point, Y_scale, Y_zero_point=None, *, axis: int = -1, opset: int = 13
) -> np.ndarray:
    """onnxruntime ``QLinearSoftmax`` (com.microsoft), int8 / uint8: the module contract
    (eqs. 1-6), output of X's type and shape.

    ``opset >= 13``: softmax along ``axis``. ``opset < 13``: X is coerced to a matrix
    ``(prod(shape[:axis]), prod(shape[axis:]))`` and each row is one softmax of length ``D``.
    ``axis`` defaults to -1 for every opset (onnxruntime fills in the schema default, so its
    constructor's opset-12 default of 1 never applies). ``Y_zero_point`` ``None`` is 0.
    Raises :class:`QOpError` for another type, mismatched zero-point types, a scale that is not
    finite and positive, a rank-0 X or an axis out of range.
    """
    X = np.asarray(X)
    fmt = int_format(X.dtype, "X")
    if fmt.bits != 8:
        raise QOpError(f"QLinearSoftmax takes int8 / uint8, got {fmt}")
    _zero_point(X_zero_point, fmt, "X_zero_point")
    zy = _zero_point(Y_zero_point, fmt, "Y_zero_point")
    xs = _f32_scale(X_scale, "X_scale")
    m = _y_multiplier(_f32_scale(Y_scale, "Y_scale"))
    if X.ndim == 0 or not -X.ndim <= axis < X.ndim:
        raise QOpError(f"axis {axis} is out of range for X of rank {X.ndim}")
    ax = axis % X.ndim
    if X.size == 0:
        return X.astype(_holder(fmt))
    if opset < _OPSET13:
        rows = X.reshape(math.prod(X.shape[:ax]), -1)
    else:
        rows = np.moveaxis(X, ax, -1).reshape(-1, X.shape[ax])
    rows = rows.astype(np.int64)
    table = _exp_table(rows.shape[1], xs)
    e = table[255 - (rows.max(axis=1, keepdims=True) - rows)]
    s = np.add.accumulate(e, axis=1)[:, -1:]
    q = np.rint(e.astype(np.float64) * m / s.astype(np.float64)) + zy
    y = np.clip(q, fmt.min, fmt.max).astype(_holder(fmt))
    if opset < _OPSET13:
        return y.reshape(X.shape)
    return np.moveaxis(y.reshape(np.moveaxis(X, ax, -1).shape), -1, ax)
