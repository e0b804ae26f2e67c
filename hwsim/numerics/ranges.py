"""Range units: the integer hardware behind per-sample scales (eq. 17-19, docs/numerics.md).

A per-sample scheme needs, at run time, a scale register derived from the data. On an integer
datapath that is done from integers, never by float division:

* (17) :func:`reciprocal` -- an integer reciprocal of stated precision :data:`RECIP_BITS`,
  the quotient of a restoring divider: ``u = floor(2^e / a)`` with ``e = P + bitlen(a) - 1``,
  so ``1/a ~ u * 2^-e``, ``u`` in ``[2^(P-1), 2^P]``, never above ``1/a``;
* (18) :func:`range_register` -- the register that maps a range ``a`` (the largest magnitude
  of one sample, or of one tensor, in integer units) onto ``qmax``: real ``qmax * u * 2^-e``
  (``tflite*``, ``ort``) or the largest power of two ``2^k`` with ``2^k * a <= qmax``
  (``pow2``, a leading-one detection); ``real * a <= qmax`` always (1 for ``a = 0``);
* (19) :func:`select_shift` -- the per-sample shift: the largest ``s`` in ``[0, s_max]`` whose
  register ``M * 2^s`` keeps the sample's range within the format, ``R_{M 2^s}(a) <= qmax``
  (a leading-one detection of the requantized range plus one carry check in hardware).

``s > 0`` is always the finer grid: a sample with shift ``s`` has scale ``base * 2^-s`` (the
convention of the FQT paper's hardware and of :func:`hwsim.datapath.gemm_per_sample_shift`).
"""

from __future__ import annotations

import numpy as np

from hwsim.numerics.rounding import RoundingMode
from hwsim.numerics.scale import ScaleKind, ScaleRegister

RECIP_BITS = 15
"""Precision ``P`` of the integer reciprocal (17): ``u`` has ``P`` significant bits, relative
error below ``2^-(P-1)``. With 8-bit outputs the register real ``qmax * u`` has at most 23
significant bits, so ``tflite*`` (31 bits) and ``ort`` (float32, 24 bits) registers hold it
exactly; 16-bit outputs (30 bits) are exact in ``tflite*`` registers."""


def reciprocal(a: int, bits: int = RECIP_BITS) -> tuple[int, int]:
    """(17) ``(u, e)`` with ``e = bits + bitlen(a) - 1`` and ``u = floor(2^e / a)`` for an
    integer ``a >= 1``: ``1/a ~ u * 2^-e``, ``2^(bits-1) <= u <= 2^bits``."""
    a = int(a)
    if a < 1:
        raise ValueError(f"reciprocal needs an integer >= 1, got {a}")
    e = bits + a.bit_length() - 1
    return (1 << e) // a, e


def range_real(kind: ScaleKind, qmax: int, a: int, bits: int = RECIP_BITS) -> float:
    """(18) The real multiplier of the range register for range ``a >= 0``: ``qmax * u * 2^-e``
    (17), or for ``pow2`` the largest power of two ``2^k`` with ``2^k * a <= qmax``; 1 for
    ``a = 0``. Exact in float64 (a dyadic rational of at most 47 significant bits)."""
    a = int(a)
    if a <= 0:
        return 1.0
    if kind is ScaleKind.POW2:
        k = qmax.bit_length() - a.bit_length()
        if (a << k if k >= 0 else -((-a) >> -k)) > qmax:  # a * 2^k > qmax (ceil for k < 0)
            k -= 1
        return float(np.ldexp(1.0, k))
    u, e = reciprocal(a, bits)
    return float(np.ldexp(float(qmax * u), -e))


def range_register(kind, qmax: int, ranges, rounding=RoundingMode.HALF_AWAY) -> ScaleRegister:
    """(18) One register per entry of ``ranges`` (non-negative integers), of the layer's
    ``kind``; ``ScaleRegister.requested`` is ``qmax / a`` so ``gain_error`` says how far the
    reciprocal's precision (or the power of two) is from an exact division."""
    kind = kind if isinstance(kind, ScaleKind) else ScaleKind(kind)
    a = np.asarray(ranges).reshape(-1)
    reals = np.array([range_real(kind, qmax, int(v)) for v in a], np.float64)
    reg = ScaleRegister.from_real(kind, reals.reshape(np.shape(ranges)), rounding)
    wanted = np.where(a > 0, qmax / np.maximum(a, 1).astype(np.float64), 1.0)
    return ScaleRegister(
        reg.kind, reg.multiplier, reg.shift, reg.rounding, wanted.reshape(np.shape(ranges))
    )


def select_shift(kind, reals, ranges, qmax: int, s_max: int, rounding=RoundingMode.HALF_AWAY):
    """(19) Per entry ``n``: the largest ``s`` in ``[0, s_max]`` with ``R_{M_n 2^s}(a_n) <=
    qmax``, where ``M_n`` is the register of ``kind`` for ``reals[n]`` (``M_n * 2^s`` is that
    register with its shift field moved by ``s``) and ``R`` applies it with ``rounding`` --
    stochastic rounding selects with ``half_away`` (the output may then round up once more
    and saturate, counted as a clamp); 0 where no shift fits (the output saturates).
    ``ranges``: non-negative int64 (N,). Returns int64 (N,)."""
    kind = kind if isinstance(kind, ScaleKind) else ScaleKind(kind)
    mode = RoundingMode.HALF_AWAY if rounding is RoundingMode.STOCHASTIC else rounding
    a = np.asarray(ranges, np.int64).reshape(-1)
    reals = np.broadcast_to(np.asarray(reals, np.float64).reshape(-1), a.shape)
    shifts = np.zeros(a.shape, np.int64)
    fits = np.zeros(a.shape, bool)
    for s in range(int(s_max), -1, -1):
        reg = ScaleRegister.from_real(kind, np.ldexp(reals, s), mode)
        ok = np.asarray(reg.apply(a, axis=0), np.int64) <= qmax
        take = ok & ~fits
        shifts[take] = s
        fits |= ok
    return shifts
