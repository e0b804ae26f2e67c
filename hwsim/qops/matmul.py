"""Integer matrix products as onnxruntime computes them: ONNX ``MatMulInteger`` and
``QLinearMatMul`` (NumPy matmul broadcasting) and the com.microsoft ``QGemm``.

* ``MatMulInteger``: int32 ``Y = wrap32((A - za) @ (B - zb))``; ``za`` per-tensor or per-row,
  ``zb`` per-tensor or per-column.
* ``QLinearMatMul``: ``acc = wrap32((a - za) @ (b - zb[n]))``;
  ``scale[n] = f32(f32(a_scale * b_scale[n]) / y_scale)``;
  ``y = saturate(round_half_even(f32(f32(acc) * scale[n])) + y_zero_point)``.
* ``QGemm``: the int32 bias C seeds the accumulator of ``(A' - za) @ (B' - zb[n])``;
  ``scale[n] = f32(f32(f32(alpha * a_scale) * b_scale[n]) / y_scale)``; requantized as
  ``QLinearMatMul`` with ``y_zero_point``, float32 ``f32(f32(acc) * scale[n])`` without.

The MACs run on :func:`hwsim.datapath.gemm` with the int32 wrapping accumulator.
``isa="avx2"``: uint8 x int8 products pair adjacent ``k`` in saturating int16 (eq. 16).
"""

from __future__ import annotations

import numpy as np

from hwsim.datapath import Operand, gemm, output_stage
from hwsim.datapath.isa import Isa, resolve
from hwsim.numerics import ort_combined_scale
from hwsim.numerics import wrap as wrap_to
from hwsim.qops.common import (
    ACC32,
    INT32,
    QOpError,
    _f32_scale,
    _holder,
    _ints,
    _mlas_quantize,
    _operand_array,
    _ort_register,
    _out_format,
    _per_channel_scale,
    _record,
    _zero_point,
    int_format,
)


def _matmul_acc(a, b, a_zero_point, b_zero_point, isa=Isa.EXACT) -> np.ndarray:
    """int32 (wrapping) accumulators of ONNX ``MatMul``-semantics integer products
    ``sum_k (a[..., m, k] - za) * (b[..., k, n] - zb)`` on :func:`hwsim.datapath.gemm`.

    NumPy ``matmul`` broadcasting: a 1-D ``a`` is a row (its axis removed from the result), a
    1-D ``b`` a column; batch dimensions broadcast. ``za``: per-tensor, per-row ``(M,)`` or
    ``(..., M, 1)``; ``zb``: per-tensor, per-column ``(N,)`` or ``(..., 1, N)``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    af = int_format(a.dtype, "A")
    bf = int_format(b.dtype, "B")
    if a.ndim == 0 or b.ndim == 0:
        raise QOpError("MatMul inputs must have at least one dimension")
    a_row, b_col = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if a_row else a
    b2 = b[:, None] if b_col else b
    if a2.shape[-1] != b2.shape[-2]:
        raise QOpError(f"A {a.shape} and B {b.shape}: inner dimensions differ")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    M, K = a2.shape[-2:]
    N = b2.shape[-1]
    A = np.broadcast_to(_operand_array(a2, af), batch + (M, K))
    Bm = np.broadcast_to(_operand_array(b2, bf), batch + (K, N))
    za = np.int64(0)
    if a_zero_point is not None:
        za = _ints(a_zero_point, "a_zero_point")
        if int_format(np.asarray(a_zero_point).dtype) != af:
            raise QOpError("a_zero_point must have A's type")
        if za.size == 1:
            za = za.reshape(())
        else:
            za = np.broadcast_to(za.reshape(M, 1) if za.ndim == 1 else za, batch + (M, 1))
    zb = np.int64(0)
    if b_zero_point is not None:
        zb = _ints(b_zero_point, "b_zero_point")
        if int_format(np.asarray(b_zero_point).dtype) != bf:
            raise QOpError("b_zero_point must have B's type")
        if zb.size == 1:
            zb = zb.reshape(())
        elif zb.ndim > 1:
            zb = np.broadcast_to(zb, batch + (1, N))
    out = np.empty(batch + (M, N), np.int64)
    for idx in np.ndindex(*batch):
        if zb.ndim == 0:
            bz: object = int(zb)
        else:
            col = zb if zb.ndim == 1 else zb[idx][0]
            bz = int(col[0]) if np.all(col == col[0]) else np.asarray(col, np.int64)
        w_op = Operand(bf, bz)
        if za.ndim == 0:
            r = gemm(
                A[idx], Bm[idx], x_operand=Operand(af, int(za)), w_operand=w_op, acc=ACC32, isa=isa
            )
            _record(r.counters)
            out[idx] = r.values
            continue
        rows = za[idx][:, 0]
        for v in np.unique(rows):
            sel = rows == v
            r = gemm(
                A[idx][sel],
                Bm[idx],
                x_operand=Operand(af, int(v)),
                w_operand=w_op,
                acc=ACC32,
                isa=isa,
            )
            _record(r.counters)
            out[idx + (sel,)] = r.values
    if a_row:
        out = out[..., 0, :]
    if b_col:
        out = out[..., 0]
    return out


def matmul_integer(A, B, a_zero_point=None, b_zero_point=None, *, isa="exact") -> np.ndarray:
    """ONNX ``MatMulInteger`` (opset 10): int32 ``Y = (A - a_zero_point) @ (B - b_zero_point)``
    with NumPy matmul broadcasting, on an int32 wrapping accumulator (onnxruntime
    ``core/providers/cpu/quantization/matmul_integer.cc``). A, B: int8 / uint8;
    ``a_zero_point`` per-tensor or per-row, ``b_zero_point`` per-tensor or per-column.
    ``isa="avx2"``: uint8 A x int8 B pairs adjacent ``k`` in saturating int16 (eq. 16)."""
    return _matmul_acc(A, B, a_zero_point, b_zero_point, resolve(isa)).astype(np.int32)


def qlinear_matmul(
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, isa="exact"
) -> np.ndarray:
    """ONNX ``QLinearMatMul`` (opsets 10, 21) as onnxruntime computes it
    (``core/providers/cpu/quantization/quantize_linear_matmul.cc``, ``MlasRequantizeOutput``):

    ``acc = wrap32((a - za) @ (b - zb[n]))`` (NumPy matmul broadcasting);
    ``scale[n] = f32(f32(a_scale * b_scale[n]) / y_scale)``;
    ``y = saturate(round_half_even(f32(f32(acc) * scale[n])) + y_zero_point)``.

    Scales may be float16 / bfloat16 (opset 21): they are widened to float32 exactly and the
    combination is done in float32. ``b_scale`` / ``b_zero_point``: per-tensor or per-column.
    ``isa="avx2"``: uint8 a x int8 b pairs adjacent ``k`` in saturating int16 (eq. 16).
    """
    acc = _matmul_acc(a, b, a_zero_point, b_zero_point, resolve(isa))
    b = np.asarray(b)
    N = b.shape[-1] if b.ndim > 1 else 1
    bs = _per_channel_scale(b_scale, N, "b_scale")
    scale = ort_combined_scale(_f32_scale(a_scale, "a_scale"), bs, _f32_scale(y_scale, "y_scale"))
    fmt, yz = _out_format(y_zero_point)
    axis = acc.ndim - 1 if acc.ndim else None
    return output_stage(
        acc,
        _ort_register(scale),
        acc=ACC32,
        scale_axis=axis if scale.size > 1 else 1,
        out_format=fmt,
        out_zero_point=yz,
    ).values


# --- onnxruntime contrib: QGemm ------------------------------------------------------------------
def _gemm_bias(C, M: int, N: int) -> np.ndarray:
    c = np.asarray(C)
    if c.dtype != np.int32:
        raise QOpError(f"QGemm bias C must be int32, got {c.dtype}")
    c = c.astype(np.int64)
    if c.size == 1:
        return np.full((M, N), c.reshape(()))
    if c.ndim == 1 or c.shape[0] == 1:
        return np.broadcast_to(c.reshape(1, N), (M, N))
    if c.shape[1] == 1:
        return np.broadcast_to(c.reshape(M, 1), (M, N))
    return c.reshape(M, N)


def qgemm(
    A,
    a_scale,
    a_zero_point,
    B,
    b_scale,
    b_zero_point,
    C=None,
    y_scale=None,
    y_zero_point=None,
    *,
    alpha: float = 1.0,
    transA: int = 0,
    transB: int = 0,
    isa="exact",
) -> np.ndarray:
    """onnxruntime ``QGemm`` (com.microsoft, ``contrib_ops/cpu/quantization/quant_gemm.cc``):

    ``acc = wrap32(C + (A' - za) @ (B' - zb[n]))`` (A' / B' transposed per ``transA`` /
    ``transB``; the int32 bias C -- scalar, (N,), (1, N), (M, 1) or (M, N) -- seeds the
    accumulator); ``scale[n] = f32(f32(f32(alpha * a_scale) * b_scale[n]) / y_scale)`` (no
    division without ``y_scale``). With ``y_zero_point``: ``y = saturate(round_half_even(
    f32(f32(acc) * scale[n])) + zy)`` (``MlasRequantizeOutput``); without: float32
    ``y = f32(f32(acc) * scale[n])``. ``K = 0`` follows ORT's ``HandleZeroKCase``:
    ``MlasQuantizeLinear(f32(f32(f32(C) * a_scale) * b_scale[0]), y_scale, zy)`` (no alpha), or
    ``zy`` everywhere without C. ``isa="avx2"``: uint8 A' x int8 B' pairs adjacent ``k`` in
    saturating int16 (eq. 16).
    """
    A = np.asarray(A)
    B = np.asarray(B)
    af = int_format(A.dtype, "A")
    bf = int_format(B.dtype, "B")
    if A.ndim != 2 or B.ndim != 2:
        raise QOpError(f"QGemm takes 2-D A and B, got {A.shape} and {B.shape}")
    A2 = A.T if transA else A
    B2 = B.T if transB else B
    (M, K), N = A2.shape, B2.shape[1]
    if B2.shape[0] != K:
        raise QOpError(f"A' is {A2.shape} but B' is {B2.shape}: K differs")
    za = _zero_point(a_zero_point, af, "a_zero_point")
    zb_arr = _ints(b_zero_point, "b_zero_point").reshape(-1) if b_zero_point is not None else None
    if zb_arr is not None and int_format(np.asarray(b_zero_point).dtype) != bf:
        raise QOpError("b_zero_point must have B's type")
    zb: object = 0 if zb_arr is None else (int(zb_arr[0]) if zb_arr.size == 1 else zb_arr)
    f32 = np.float32
    a_s = _f32_scale(a_scale, "a_scale")
    b_s = _per_channel_scale(b_scale, N, "b_scale")
    scale = f32(f32(alpha) * a_s) * b_s
    if y_scale is not None:
        scale = scale / _f32_scale(y_scale, "y_scale")
    if K == 0:
        if y_zero_point is None:
            raise QOpError("QGemm with K = 0 and a float output is undefined in onnxruntime")
        if y_scale is None:
            raise QOpError("QGemm with K = 0 needs y_scale")
        yfmt, zy = _out_format(y_zero_point)
        if C is None:
            return np.full((M, N), zy, _holder(yfmt))
        v = _gemm_bias(C, M, N).astype(f32) * a_s * b_s.reshape(-1)[0]
        return _mlas_quantize(v, _f32_scale(y_scale, "y_scale"), zy, yfmt)
    res = gemm(
        _operand_array(A2, af),
        _operand_array(B2, bf),
        x_operand=Operand(af, za),
        w_operand=Operand(bf, zb),
        acc=ACC32,
        isa=isa,
    )
    _record(res.counters)
    acc = res.values
    if C is not None:
        acc = wrap_to(acc + _gemm_bias(C, M, N), INT32)
    if y_zero_point is None:
        return acc.astype(f32) * np.asarray(scale, f32)
    yfmt, zy = _out_format(y_zero_point)
    return output_stage(
        acc, _ort_register(scale), acc=ACC32, scale_axis=1, out_format=yfmt, out_zero_point=zy
    ).values
