"""Golden vectors of the per-sample-shift accumulator (docs/numerics.md eq. 13-14) where a
model's forward pass runs it: an activation x activation ``MatMul`` whose second operand's
rows -- the summed axis -- are tokens with their own shifts (``p @ v`` of a ``per-token-shift``
transformer; ``IntegerExecutor._tokens_along_k``).

For each matrix ``g`` of the broadcast batch (``G`` matrices, ``a`` ``(M, K)``, ``b`` ``(K, N)``)
the K tokens are the groups, one product each: ``P_k = acc(a[m, k] - za)(b[k, n] - zb)`` on the
group accumulator (the layer's ``bits`` and ``overflow``: a product that does not fit wraps or
saturates), ``R_k = round_shift(P_k, shift_k, rounding)`` with ``shift_k = s_k - min_j s_j``
(``s``: ``b``'s per-token shifts; ``shift_k`` in ``[0, S_max]``), and the ``R_k`` summed in token
order on the final accumulator (same ``bits`` and ``overflow``; saturating: clamped after each
addition). The result steps by ``base_b * 2^-min s``.

The sums are recomputed with :func:`hwsim.datapath.gemm_per_sample_shift` (the eq. 13-14
contract, ``groups = K``) and must equal the executor's (``_tokens_along_k``), else a
:class:`TraceError` naming the node. The layer's requantization (a per-token range unit) is not
replayed here.
"""

from __future__ import annotations

import numpy as np

from hwsim.datapath import Accumulator, Operand, gemm_per_sample_shift
from hwsim.execute.integer import IntegerExecutor
from hwsim.execute.tensors import QTensor
from hwsim.trace.files import Array, TraceError, entry

SEMANTICS = (
    "per matrix g (row-major over the batch axes), output (m, n): P_k = acc(a[g,m,k] - za) * "
    "(b[g,k,n] - zb)) on the group accumulator (bits, overflow); R_k = round_shift(P_k, "
    "shifts[g,k], rounding); acc[g,m,n] = sum of R_0..R_{K-1} in k order on the final "
    "accumulator (bits, overflow: wrap mod 2^bits, or saturate after each addition); "
    "docs/numerics.md eq. 13-14 with the K tokens as groups of one product"
)


def applies(node, ins) -> bool:
    """Whether the executor runs ``node`` (a MatMul of two activations ``ins``) through the
    per-sample-shift accumulation: both integer of rank >= 3, ``a``'s steps constant along its
    summed axis, ``b`` per-token with shifts varying along its rows (the summed axis)."""
    if len(ins) != 2 or not all(isinstance(t, QTensor) for t in ins):
        return False
    a, b = ins
    if a.q.ndim < 3 or b.q.ndim < 3 or b.shifts is None or not b.per_token:
        return False
    if a.per_token and np.shape(a.scale)[-1] != 1:
        return False
    return np.shape(b.scale)[-1] == 1 and np.shape(b.scale)[-2] != 1


def record(ex: IntegerExecutor, node, ins, files: dict, stem: str) -> dict:
    """The ``shift_acc`` entry of MatMul ``node`` (module docstring) with its files: ``shifts``
    (the group shifts, ``batch + (K,)``, int8) and ``acc`` (the final accumulators, ``batch +
    (M, N)``, at the accumulator's width)."""
    a, b = ins
    layer = ex.p.layer(node.name)
    acc_cfg = layer.acc
    batch = np.broadcast_shapes(a.q.shape[:-2], b.q.shape[:-2])
    (M, K), N = a.q.shape[-2:], b.q.shape[-1]
    A = np.broadcast_to(a.q, batch + (M, K)).reshape(-1, M, K)
    B = np.broadcast_to(b.q, batch + (K, N)).reshape(-1, K, N)
    G = A.shape[0]
    xop = Operand(a.fmt, zero_point=int(a.zero_point))
    wop = Operand(b.fmt, zero_point=int(b.zero_point))
    ub, _, sigb = ex._unit_b(b, len(batch) + 2)
    sh = np.broadcast_to(sigb, batch + (K, 1)).reshape(G, K).astype(np.int64)
    shifts = sh - sh.min(axis=1, keepdims=True)
    spec = ex.p.acts.get(node.inputs[1])
    s_max = max(int(shifts.max()) if shifts.size else 0, int(getattr(spec, "s_max", 0) or 0))
    acc = Accumulator(bits=acc_cfg.bits, overflow=acc_cfg.overflow, signed=acc_cfg.signed)
    vals = np.zeros((G, M, N), np.int64)
    for g in range(G):
        vals[g] = gemm_per_sample_shift(
            A[g], B[g], K, shifts[g], x_operand=xop, w_operand=wop, group_acc=acc,
            final_acc=acc, rounding=layer.rounding, s_max=s_max,
        ).values  # fmt: skip
    ex._current = node.name
    try:
        want, *_ = ex._tokens_along_k(node, A, B, xop, wop, b, acc_cfg, layer, batch, ub, sigb)
    finally:
        ex._current = None
    if not np.array_equal(vals, np.asarray(want, np.int64)):
        raise TraceError(
            f"node {node.name!r}: eq. 13-14 (gemm_per_sample_shift) on its operands does not "
            f"give the executor's per-token-shift sums; the layer cannot be traced"
        )
    fmt = acc_cfg.format
    return {
        "equations": "docs/numerics.md eq. 13-14",
        "groups": "the K tokens of inputs[1] (the summed axis), one product per group",
        "batch": list(batch),
        "M": int(M),
        "K": int(K),
        "N": int(N),
        "accumulator": {
            "bits": acc_cfg.bits,
            "signed": bool(acc_cfg.signed),
            "overflow": acc_cfg.overflow.value,
        },
        "rounding": layer.rounding.value,
        "s_max": s_max,
        "shifts": entry(
            files,
            f"{stem}.group_shifts",
            Array.integer(shifts.reshape(batch + (K,)), 8, True, np.int8),
        ),
        "acc": entry(
            files,
            f"{stem}.acc",
            Array.integer(vals.reshape(batch + (M, N)), fmt.bits, fmt.signed, np.int64),
        ),
        "semantics": SEMANTICS,
    }
