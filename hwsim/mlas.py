"""onnxruntime's float32 convolution (MLAS), in its exact rounding order.

onnxruntime leaves some Conv layers of a QDQ model unfused: ``DequantizeLinear -> Conv ->
QuantizeLinear`` then runs as a float32 ``Conv`` on dequantized values (e.g. when the activation
feeding the Conv also feeds a residual Add and its int8 -> uint8 conversion cannot happen;
:mod:`hwsim.graph.ort_plan` asks onnxruntime which layers it fuses). To reproduce those layers
bit for bit, :func:`conv2d` evaluates the convolution the way MLAS does on the CPU provider
(``onnxruntime/core/mlas/lib/convolve.cpp`` and ``sgemm.cpp``):

* im2col with the reduction index ``k = (c, ky, kx)`` (channel-major, as ``MlasConvIm2Col``);
* every output element accumulated by the SGEMM kernel in one register, ``k`` ascending, each
  step a fused multiply-add ``acc = fma(w, x, acc)`` (the FMA3 / AVX-512F / NEON kernels; x86
  CPUs without FMA3 run ``acc = acc + w * x`` with two roundings, selected by ``fma=False``);
* ``K`` cut into blocks as MLAS cuts it: ``MlasConvOperation`` slices the output columns by
  ``StrideN`` and ``K`` by ``StrideK`` (both from ``MLAS_SGEMM_STRIDEN/K = 128``, widened or
  narrowed by the slice sizes), and each slice's ``MlasSgemmOperation`` cuts again by its own
  rule. Each block sums from zero; a block after the first is added to the output with one
  rounding (``C = acc * alpha + C``, alpha = 1);
* the bias added last (``MlasActivation``), one rounding.

Exact where MLAS's cut does not depend on its thread pool: always for ``K <= 128`` (one block),
and for larger ``K`` in the per-image path onnxruntime takes for a batch of more than one image
(the segmented im2col algorithm). A single image, a pointwise (1x1) conv or a conv with more
filters than output pixels goes through MLAS's threaded GEMM, which may split the columns among
threads; hwsim assumes one thread there, which matters only when ``K > 128``. A single-filter
group (``FilterCount == 1``) uses MLAS's M=1 kernel on x86, whose order is not modelled.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

STRIDE_N = 128  # MLAS_SGEMM_STRIDEN
STRIDE_K = 128  # MLAS_SGEMM_STRIDEK


def _strides(n: int, k: int) -> tuple[int, int]:
    """MLAS's (StrideN, StrideK) for an N x K slice (``MlasSgemmOperation`` with TransA =
    NoTrans, and ``MlasConvOperation``): expand N if K is small, else expand K if N is small."""
    sn, sk = STRIDE_N, STRIDE_K
    if n >= k:
        while sk // 2 >= k:
            sn *= 2
            sk //= 2
    else:
        while sn > 16 and sn // 2 >= n:
            sk *= 2
            sn //= 2
    return sn, sk


def _sgemm_blocks(n: int, k0: int, k1: int, zero: bool) -> list[tuple[int, int, bool]]:
    """The K blocks ``(start, end, zero_mode)`` of one ``MlasSgemmOperation`` over columns of
    count ``n`` and reduction range ``[k0, k1)``; ``zero``: beta == 0 (the first block then
    overwrites C instead of adding to it)."""
    _, sk = _strides(n, k1 - k0)
    out = []
    for k in range(k0, k1, sk):
        out.append((k, min(k1, k + sk), zero))
        zero = False
    return out


def conv_plan(P: int, K: int, M: int, pointwise: bool) -> list[tuple[int, int, list]]:
    """Column slices ``(p0, p1, blocks)`` of one image and group: ``blocks`` the K blocks of
    :func:`_sgemm_blocks`, in order. ``P`` output pixels, ``K`` reduction length, ``M`` filters
    of the group; ``pointwise``: 1x1 kernel, stride 1, no padding (MLAS's direct GEMM)."""
    if pointwise or M > P:  # MlasConvAlgorithmGemmDirect / ExpandThenGemm: one GEMM, N = P
        return [(0, P, _sgemm_blocks(P, 0, K, True))]
    sn, sk = _strides(P, K)  # MlasConvOperation over the whole image (SegmentCountN = P)
    plan = []
    for p0 in range(0, P, sn):
        n = min(P - p0, sn)
        blocks = []
        for k0 in range(0, K, sk):
            blocks += _sgemm_blocks(n, k0, min(K, k0 + sk), k0 == 0)
        plan.append((p0, p0 + n, blocks))
    return plan


@njit(cache=True, inline="always")
def _fma32(a, b, c):
    """``fma(a, b, c)`` of float32 values, rounded once to float32 (round to nearest even).

    ``a*b`` is exact in float64; ``s = a*b + c`` is rounded to float64 with error ``e``
    (TwoSum). Rounding ``s`` to float32 is then correct unless ``s`` lies exactly halfway
    between two float32 values and ``e != 0``, where ``e`` breaks the tie."""
    p = np.float64(a) * np.float64(b)
    cc = np.float64(c)
    s = p + cc
    bb = s - p
    e = (p - (s - bb)) + (cc - bb)
    r = np.float32(s)
    if e != 0.0:
        rd = np.float64(r)
        if s != rd:
            other = np.nextafter(r, np.float32(np.inf) if s > rd else np.float32(-np.inf))
            mid = (rd + np.float64(other)) / 2.0
            if s == mid:  # a tie in float64 that is not one in the exact value
                if (e > 0.0) == (np.float64(other) > rd):
                    r = other
    return r


@njit(cache=True, parallel=True)
def _gemm_blocks(w, cols, out, p0, p1, kb, zm, fma):
    """``out[i, m, p] (p in [p0, p1))`` = MLAS SGEMM of ``w (M, K)`` and ``cols[i] (K, P)`` over
    the K blocks ``kb[j]:kb[j+1]`` (``zm[j]``: the block overwrites instead of adding)."""
    I, M = out.shape[0], out.shape[1]
    for im in prange(I * M):
        i = im // M
        m = im % M
        for p in range(p0, p1):
            c = np.float32(0.0)
            for j in range(kb.shape[0] - 1):
                acc = np.float32(0.0)
                for k in range(kb[j], kb[j + 1]):
                    if fma:
                        acc = _fma32(w[m, k], cols[i, k, p], acc)
                    else:
                        acc = np.float32(acc + np.float32(w[m, k] * cols[i, k, p]))
                c = acc if zm[j] else np.float32(acc + c)
            out[i, m, p] = c


def _im2col(x: np.ndarray, kh, kw, pads, strides, dilations) -> tuple[np.ndarray, int, int]:
    """(N, C*kh*kw, Ho*Wo) columns, reduction index (c, ky, kx), zero padding."""
    top, left, bottom, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    (sh, sw), (dh, dw) = strides, dilations
    v = np.lib.stride_tricks.sliding_window_view(
        xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3)
    )[:, :, ::sh, ::sw, ::dh, ::dw]  # N C Ho Wo kh kw
    N, C, ho, wo = v.shape[:4]
    cols = v.transpose(0, 1, 4, 5, 2, 3).reshape(N, C * kh * kw, ho * wo)
    return np.ascontiguousarray(cols, np.float32), ho, wo


def conv2d(x, w, b, pads, strides=(1, 1), dilations=(1, 1), group=1, fma=True) -> np.ndarray:
    """onnxruntime's float32 ``Conv`` (NCHW) of ``x (N, C, H, W)`` and ``w (F, C/group, kh,
    kw)`` with optional bias ``b (F,)``, in MLAS's rounding order (module doc); float32 out."""
    x = np.asarray(x, np.float32)
    w = np.asarray(w, np.float32)
    N, C, _, _ = x.shape
    F, Cg, kh, kw = w.shape
    M = F // group
    pointwise = (kh, kw) == (1, 1) and tuple(strides) == (1, 1) and not any(pads)
    outs = []
    for g in range(group):
        cols, ho, wo = _im2col(x[:, g * Cg : (g + 1) * Cg], kh, kw, pads, strides, dilations)
        P, K = ho * wo, Cg * kh * kw
        wg = np.ascontiguousarray(w[g * M : (g + 1) * M].reshape(M, K))
        out = np.empty((N, M, P), np.float32)
        for p0, p1, blocks in conv_plan(P, K, M, pointwise):
            kb = np.array([blocks[0][0]] + [e for _, e, _ in blocks], np.int64)
            zm = np.array([z for _, _, z in blocks], np.bool_)
            _gemm_blocks(wg, cols, out, p0, p1, kb, zm, fma)
        outs.append(out.reshape(N, M, ho, wo))
    y = outs[0] if group == 1 else np.concatenate(outs, axis=1)
    if b is not None:
        y = (y + np.asarray(b, np.float32).reshape(1, -1, 1, 1)).astype(np.float32)
    return y


def host_fma() -> bool:
    """Whether MLAS's SGEMM kernel on this CPU fuses multiply and add: x86 with FMA3 (the
    FMA3 and AVX-512F kernels), every ARM64 (NEON ``fmla``); not x86 CPUs with SSE/AVX only."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        from hwsim.datapath.isa import host_cpu_features

        return bool(host_cpu_features().get("fma", True))
    except Exception:  # noqa: BLE001 -- no llvmlite: assume a CPU of the last decade
        return True


def matmul(x, w, fma=True) -> np.ndarray:
    """onnxruntime's float32 ``MatMul`` of ``x (R, K)`` and ``w (K, N)`` in MLAS's rounding order
    (``MlasGemm``, no transposes): each output accumulated in one register, ``k`` ascending, a
    fused multiply-add per step (``fma=False``: two roundings), ``K`` cut into the blocks of
    :func:`_sgemm_blocks` (one block for ``K <= 128``), a later block added to the output with
    one rounding. float32 ``(R, N)`` out."""
    x = np.ascontiguousarray(np.asarray(x, np.float32).T)[None]  # (1, K, R)
    wt = np.ascontiguousarray(np.asarray(w, np.float32).T)  # (N, K)
    K, R = x.shape[1], x.shape[2]
    N = wt.shape[0]
    out = np.empty((1, N, R), np.float32)
    if K == 0:
        out[:] = 0
        return out[0].T.copy()
    blocks = _sgemm_blocks(N, 0, K, True)
    kb = np.array([blocks[0][0]] + [e for _, e, _ in blocks], np.int64)
    zm = np.array([z for _, _, z in blocks], np.bool_)
    _gemm_blocks(wt, x, out, 0, R, kb, zm, fma)
    return np.ascontiguousarray(out[0].T)
