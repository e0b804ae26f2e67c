"""onnxruntime's element-wise contrib kernels (com.microsoft), 8-bit, in float32 with their
exact operation order on x86-64 with AVX2/FMA: ``QLinearAdd``, ``QLinearMul``,
``QLinearLeakyRelu`` and ``QLinearConcat``.

* ``QLinearAdd`` (MLAS AVX2 kernel): ``y = fma(P, rP, fma(Q, rQ, F))`` with
  ``F = f32(zC) - fma(rP, zP, f32(rQ * zQ))``; the streamed operand ``P`` follows
  onnxruntime's broadcaster (:func:`ort_broadcast_mode`); ``C = saturate(cvtps(y))``.
* ``QLinearMul`` (MLAS SSE2 path, no FMA):
  ``C = saturate(cvtps(f32(f32(f32((A - zA)(B - zB)) * r) + f32(zC))))``,
  ``r = f32(f32(sA * sB) / sC)``.
* Lookup-table ops (``QLinearLeakyRelu``, and ``QLinearConcat``'s rescaled inputs):
  ``y = MlasQuantizeLinear(transform(f32(x_scale * (x - zx))), y_scale, y_zero_point)``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hwsim.qops.common import (
    QOpError,
    _f32_scale,
    _holder,
    _mlas_quantize,
    _out_format,
    _saturate,
    _zero_point,
    cvtps_epi32,
    fma_f32,
    int_format,
)
from hwsim.qops.kernels import lookup_pairs, qlinear_add_rows

TABLE_MIN = 1 << 16
"""Equal-shape ``QLinearAdd`` operands of at least this many elements read the op's result
from a table of every pair of 8-bit values (:func:`_add_table`, built once per set of
parameters) instead of computing each element (:func:`hwsim.qops.kernels.qlinear_add_rows`):
the same values, about six times faster per element."""


@lru_cache(maxsize=256)
def _add_table(rp: float, rq: float, fixed: float, lo: int, hi: int, dtype: str) -> np.ndarray:
    """:func:`hwsim.qops.kernels.qlinear_add_rows` on every pair ``(P, Q)`` of 8-bit values of
    ``dtype``, at index ``(P + off) * 256 + (Q + off)`` (``off`` = 128 for int8): the rule is
    elementwise, so the table holds exactly what the kernel gives for each pair."""
    dt = np.dtype(dtype)
    codes = np.arange(np.iinfo(dt).min, np.iinfo(dt).max + 1).astype(dt)
    P = np.ascontiguousarray(np.repeat(codes, 256).reshape(256, 256))
    Q = np.ascontiguousarray(np.tile(codes, 256).reshape(256, 256))
    table = np.empty((256, 256), dt)
    f32 = np.float32
    qlinear_add_rows(P, Q, f32(rp), f32(rq), f32(fixed), lo, hi, table)
    table = table.reshape(-1)
    table.flags.writeable = False
    return table


def _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point):
    A = np.asarray(A)
    B = np.asarray(B)
    fmt = int_format(A.dtype, "A")
    if int_format(B.dtype, "B") != fmt:
        raise QOpError(f"A is {fmt} but B is {int_format(B.dtype, 'B')}")
    za = _zero_point(A_zero_point, fmt, "A_zero_point")
    zb = _zero_point(B_zero_point, fmt, "B_zero_point")
    zc = _zero_point(C_zero_point, fmt, "C_zero_point")
    return A, B, fmt, za, zb, zc


def ort_broadcast_mode(a_shape, b_shape) -> str:
    """Which span functor onnxruntime's ``BroadcastLooper`` calls for ``A op B``
    (``core/providers/cpu/math/element_wise_ops.h``, ``Broadcaster``): ``"input0_scalar"`` when
    A's extent along the innermost output axis that is not 1 (or along the outermost common
    axis) is 1, else ``"input1_scalar"`` when B's is, else ``"general"``. The whole operator
    uses one functor."""
    s1, s2 = tuple(a_shape), tuple(b_shape)
    if not s1:
        return "input0_scalar"
    if not s2:
        return "input1_scalar" if s1[-1] > 1 else "input0_scalar"
    n = min(len(s1), len(s2))
    d1 = d2 = 1
    for i in range(1, n + 1):
        a, b = s1[-i], s2[-i]
        if max(a, b) == 1 and i < n:
            continue
        d1, d2 = a, b
        break
    if d1 <= 1:
        return "input0_scalar"
    return "input1_scalar" if d2 <= 1 else "general"


def qlinear_add(
    A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None
) -> np.ndarray:
    """onnxruntime ``QLinearAdd`` (com.microsoft), NumPy broadcasting.

    8-bit (the AVX2 MLAS kernel ORT selects on x86-64 with AVX2/FMA,
    ``core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp``, reached through
    ``contrib_ops/cpu/quantization/qlinear_binary_op.cc``). Let ``(P, zP, sP)`` be the input
    the kernel streams and ``(Q, zQ, sQ)`` the other: ``P = B`` when A is the per-span scalar
    (:func:`ort_broadcast_mode` gives ``"input0_scalar"``; the op swaps the operands), else
    ``P = A``. With ``rP = f32(sP / sC)``, ``rQ = f32(sQ / sC)``:

    ``F = f32(zC) - fma(rP, zP, f32(rQ * zQ))`` (GCC contracts the scalar expression
    ``zC - (rP*zP + rQ*zQ)`` into one FMA);
    ``y = fma(P, rP, fma(Q, rQ, F))`` (both the vector loop and, by contraction, the scalar-Q
    prologue ``F + Q*rQ``); ``C = saturate(cvtps(y))`` (``cvtps`` rounds half to even, out of
    int32 range -> INT32_MIN; packs saturate).

    ``int16`` / ``uint16`` are not accepted (onnxruntime 1.32's schema takes 8-bit only).
    """
    A, B, fmt, za, zb, zc = _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point)
    sa = _f32_scale(A_scale, "A_scale")
    sb = _f32_scale(B_scale, "B_scale")
    sc = _f32_scale(C_scale, "C_scale")
    if fmt.bits > 8:
        raise QOpError(f"QLinearAdd takes int8 / uint8, got {fmt}")
    f32 = np.float32
    ra, rb = f32(sa / sc), f32(sb / sc)
    swap = ort_broadcast_mode(A.shape, B.shape) == "input0_scalar"
    if A.shape == B.shape and A.ndim and A.size:  # one pass (hwsim.qops.kernels)
        (P, rp, zp), (Q, rq, zq) = (
            ((B, rb, zb), (A, ra, za)) if swap else ((A, ra, za), (B, rb, zb))
        )
        fixed = f32(zc) - fma_f32(rp, f32(zp), rq * f32(zq))
        out = np.empty(A.shape, _holder(fmt))
        n = A.shape[0]
        P2 = np.ascontiguousarray(P).reshape(n, -1)
        Q2 = np.ascontiguousarray(Q).reshape(n, -1)
        if A.size >= TABLE_MIN and P2.dtype == Q2.dtype == out.dtype:
            dt = out.dtype
            table = _add_table(float(rp), float(rq), float(fixed), fmt.min, fmt.max, dt.str)
            lookup_pairs(P2, Q2, 128 if dt == np.int8 else 0, table, out.reshape(n, -1))
            return out
        qlinear_add_rows(P2, Q2, rp, rq, f32(fixed), fmt.min, fmt.max, out.reshape(n, -1))
        return out
    Ab, Bb = np.broadcast_arrays(A.astype(np.int64), B.astype(np.int64))
    if swap:
        (P, rp, zp), (Q, rq, zq) = (Bb, rb, zb), (Ab, ra, za)
    else:
        (P, rp, zp), (Q, rq, zq) = (Ab, ra, za), (Bb, rb, zb)
    fixed = f32(zc) - fma_f32(rp, f32(zp), rq * f32(zq))
    y = fma_f32(P.astype(f32), rp, fma_f32(Q.astype(f32), rq, fixed))
    return _saturate(cvtps_epi32(y), fmt)


def qlinear_mul(
    A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None
) -> np.ndarray:
    """onnxruntime ``QLinearMul`` (com.microsoft), 8-bit, NumPy broadcasting
    (``core/mlas/lib/qlmul.cpp``, SSE2 path; no FMA):

    ``r = f32(f32(sA * sB) / sC)``; ``p = (A - zA) * (B - zB)`` (exact int32);
    ``C = saturate(cvtps(f32(f32(f32(p) * r) + f32(zC))))`` -- the output zero point is added
    in float32 before the rounding.
    """
    A, B, fmt, za, zb, zc = _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point)
    if fmt.bits > 8:
        raise QOpError(f"QLinearMul takes int8 / uint8, got {fmt}")
    f32 = np.float32
    ratio = f32(
        f32(_f32_scale(A_scale, "A_scale") * _f32_scale(B_scale, "B_scale"))
        / _f32_scale(C_scale, "C_scale")
    )
    p = (A.astype(np.int64) - za) * (B.astype(np.int64) - zb)
    y = p.astype(f32) * ratio + f32(zc)
    return _saturate(cvtps_epi32(y), fmt)


# --- onnxruntime contrib: lookup-table ops and concat -----------------------------------------
def _lookup(X, x_scale, x_zero_point, y_scale, y_zero_point, transform):
    """onnxruntime's 8-bit lookup-table ops (``QlinearBuildLookupTable`` in
    ``contrib_ops/cpu/quantization/qlinear_lookup_table.cc``): ``v = f32(x_scale * (x - zx))``,
    ``t = transform(v)``, ``y = MlasQuantizeLinear(t, y_scale, y_zero_point)``, applied
    element-wise (the table holds exactly these values for all 256 inputs)."""
    X = np.asarray(X)
    fmt = int_format(X.dtype, "X")
    if fmt.bits != 8:
        raise QOpError(f"lookup-table ops take int8 / uint8, got {fmt}")
    zx = _zero_point(x_zero_point, fmt, "X_zero_point")
    yfmt = fmt if y_zero_point is None else int_format(np.asarray(y_zero_point).dtype)
    zy = _zero_point(y_zero_point, yfmt, "Y_zero_point")
    v = _f32_scale(x_scale, "X_scale") * (X.astype(np.int64) - zx).astype(np.float32)
    return _mlas_quantize(transform(v), _f32_scale(y_scale, "Y_scale"), zy, yfmt)


def qlinear_leaky_relu(
    X, X_scale, X_zero_point, Y_scale, Y_zero_point=None, *, alpha: float = 0.01
) -> np.ndarray:
    """onnxruntime ``QLinearLeakyRelu`` (com.microsoft, ``qlinear_lookup_table.cc``): the
    lookup-table contract of :func:`_lookup` with ``t = v if v >= 0 else f32(alpha * v)``."""
    a = np.float32(alpha)
    return _lookup(
        X, X_scale, X_zero_point, Y_scale, Y_zero_point, lambda v: np.where(v >= 0, v, a * v)
    )


def qlinear_concat(y_scale, y_zero_point, *inputs, axis: int) -> np.ndarray:
    """onnxruntime ``QLinearConcat`` (com.microsoft, ``qlinear_concat.cc``). ``inputs`` are
    ``(X_i, x_scale_i, x_zero_point_i)`` triples. An input whose float32 scale and zero point
    equal the output's is copied; any other goes through the lookup-table contract of
    :func:`_lookup` with the identity, ``MlasQuantizeLinear(f32(s_i * (x - z_i)), y_scale, zy)``.
    Then ONNX ``Concat`` along ``axis``."""
    if len(inputs) == 0 or len(inputs) % 3:
        raise QOpError("QLinearConcat takes (tensor, scale, zero_point) triples after y_scale/zp")
    fmt, zy = _out_format(y_zero_point)
    ys = _f32_scale(y_scale, "y_scale")
    parts = []
    for i in range(0, len(inputs), 3):
        X, s, z = inputs[i : i + 3]
        X = np.asarray(X)
        if int_format(X.dtype, f"input {i // 3}") != fmt:
            raise QOpError(f"input {i // 3} is {int_format(X.dtype)} but the output is {fmt}")
        zx = _zero_point(z, fmt, f"x_zero_point {i // 3}")
        if _f32_scale(s, f"x_scale {i // 3}") == ys and zx == zy:
            parts.append(X.astype(_holder(fmt)))
        else:
            parts.append(_lookup(X, s, z, y_scale, y_zero_point, lambda v: v))
    return np.concatenate(parts, axis=int(axis))
