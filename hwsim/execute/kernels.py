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
