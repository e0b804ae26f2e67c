"""Numba kernels of the integer executor's graph-level ops (the datapath's GEMM/conv kernels
live in :mod:`hwsim.datapath.kernels`)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from hwsim.numerics.scale import ort_rq


@njit(cache=True, parallel=True)
def add_ort_fused(aq, za, bq, zb, L, ma, mb, mo, zo, olo, ohi, out):
    """The integer Add with ``ort`` registers (``docs/networks.md``), one pass: ``ta =
    ort(((a - za) << L), ma[n])``, ``tb`` likewise, ``y = ort(ta + tb, mo[n]) + zo``, ``out =
    clamp(y, olo, ohi)``. ``aq``, ``bq``, ``out``: (N, S); registers per sample (N,) float32."""
    N, S = aq.shape
    for n in prange(N):
        for s in range(S):
            ta = ort_rq((np.int64(aq[n, s]) - za) << L, ma[n])
            tb = ort_rq((np.int64(bq[n, s]) - zb) << L, mb[n])
            y = ort_rq(ta + tb, mo[n]) + zo
            out[n, s] = min(max(y, olo), ohi)


@njit(cache=True, parallel=True)
def sqnr_terms(f, q, zp, scale, ff, ee):
    """The run report's per-element SQNR terms of a per-tensor or per-sample quantized tensor,
    as its numpy expressions compute them: ``fv = f64(f)``, ``d = f64(f32(f32(q - zp) *
    scale[n]))`` (ONNX DequantizeLinear, :meth:`hwsim.execute.QTensor.dequantize`), ``ff = fv
    * fv``, ``ee = (fv - d) ** 2``; every step rounds to nearest even as numpy's does. ``f``
    (N, E) float32, ``q`` (N, E), ``scale`` (N,) float32; ``ff`` / ``ee`` (N, E) float64."""
    N, E = q.shape
    for n in prange(N):
        s = scale[n]
        fr = f[n]
        qr = q[n]
        ffr = ff[n]
        eer = ee[n]
        for e in range(E):
            fv = np.float64(fr[e])
            d = np.float64(np.float32(np.float32(np.int64(qr[e]) - zp) * s))
            ffr[e] = fv * fv
            r = fv - d
            eer[e] = r * r


@njit(cache=True, parallel=True)
def max_pool2d(x, kh, kw, sh, sw, pt, pl, fill, out):
    """``out[n, c, oh, ow]``: the max of ``x`` (N, C, H, W) over the window ``(oh*sh - pt + i,
    ow*sw - pl + j)``, ``i < kh``, ``j < kw``, with ``fill`` where the window leaves x. Values
    whose max does not depend on the order (integers; floats without NaN or -0.0:
    :func:`hwsim.execute.arrays.max_pool` checks)."""
    N, C, H, W = x.shape
    _, _, Ho, Wo = out.shape
    for nc in prange(N * C):
        n = nc // C
        c = nc - n * C
        plane = x[n, c]
        o = out[n, c]
        for oh in range(Ho):
            for ow in range(Wo):
                m = fill
                for i in range(kh):
                    ih = oh * sh - pt + i
                    for j in range(kw):
                        iw = ow * sw - pl + j
                        v = plane[ih, iw] if 0 <= ih < H and 0 <= iw < W else fill
                        m = v if i == 0 and j == 0 else max(m, v)
                o[oh, ow] = m


@njit(cache=True, parallel=True)
def quantize_static(x, s, lo, hi, zp, out):
    """ONNX QuantizeLinear with one scale, one pass: ``t = f32(x) / s`` (float32 division,
    rounded to nearest even), ``t`` clamped to ``[lo, hi]`` = ``[min - zp, max - zp]`` in
    float64 (NaN to ``lo``), ``out = rint(t) + zp`` (half to even) -- the steps of
    :func:`hwsim.numerics.affine.quantize`. ``x`` (N, E) float32, ``s`` float32, ``lo`` /
    ``hi`` float64, ``out`` (N, E) in the format's dtype."""
    N, E = x.shape
    for n in prange(N):
        xr = x[n]
        o = out[n]
        for e in range(E):
            t = np.float64(xr[e] / s)
            if t != t:
                t = lo
            t = min(max(t, lo), hi)
            o[e] = np.int64(np.rint(t)) + zp


@njit(cache=True, parallel=True)
def clamp_rows(q, lo, hi, out):
    """``out = min(max(q, lo), hi)`` element by element (the integer ReLU / Clip); ``q`` and
    ``out`` (N, E) of one integer dtype, ``out`` may be ``q`` itself; ``lo`` / ``hi`` values
    of that dtype (compared in it, so the loop vectorizes)."""
    N, E = q.shape
    lo_q = q.dtype.type(lo)
    hi_q = q.dtype.type(hi)
    for n in prange(N):
        qr = q[n]
        o = out[n]
        for e in range(E):
            o[e] = min(max(qr[e], lo_q), hi_q)


@njit(cache=True)
def row_max(x, out):
    """``out[r] = max(x[r, :])`` of float rows ``x`` (R, L), L >= 1: the value of numpy's
    ``x.max(axis=1)`` whatever the order, but a zero's sign; NaN where the row holds a NaN.
    Branch-free, so the loop vectorizes; one thread (a softmax's rows are few: waking a pool
    costs more than the pass)."""
    R, L = x.shape
    for r in range(R):
        m = x[r, 0]
        nan = m != m
        for j in range(1, L):
            v = x[r, j]
            nan |= v != v
            m = v if v > m else m
        out[r] = np.nan if nan else m
