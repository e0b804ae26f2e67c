"""Gradient quantizers of fully quantized training (FQT; Chen et al., NeurIPS 2020, "A Statistical
Framework for Low-bitwidth Training of Deep Neural Networks", arXiv 2010.14298; seed 001; official
code ``cjf00000/StatQuant``). numpy only: no torch.

A gradient is a 2-D array whose rows are samples (or tokens); an N-d gradient (a conv's
``(N, C, H, W)``) is quantized as ``g.reshape(N, -1)`` (every function here accepts it and returns
its shape). Every quantizer rounds *stochastically* (:func:`stochastic_round`), so the quantized
gradient is unbiased, ``E[Q(g)] = g``; the paper's quality measure is its variance
(:func:`gradient_variance`).

* ``ptq`` -- per-tensor min-max: one range ``[min g, max g]``, ``2^b - 1`` bins (``2^b`` levels).
  :func:`encode_ptq` gives the integer codes a hardware GEMM takes (integer zero point, one spare
  bin so that stochastic rounding stays unbiased).
* ``psq`` -- per-sample min-max: one range per row (the official ``DiagonalPreconditioner``).
* ``bhq`` -- block Householder (the official ``BlockwiseHouseholderPreconditioner`` with the
  transform search of ``quantizers/quantizers.cpp``): :func:`bhq_search`, :class:`BHQTransform`,
  :func:`quantize_bhq`.
* ``psq-shift`` -- the paper's proposed (never built) hardware: one per-tensor symmetric scale and
  a per-sample shift ``s_n`` in ``[0, S_max]``, row ``n`` on the grid ``scale * 2^-s_n``
  (:func:`encode_psq_shift`; the weight-gradient GEMM that consumes it is
  :func:`hwsim.datapath.gemm_per_sample_shift`).

Official code read at ``cjf00000/StatQuant`` commit ``8cde0826`` (files
``image_classification/preconditioner.py``, ``image_classification/quantize.py``,
``quantizers/quantizers.cpp``). Where this module departs from it, the docstring says so; the
departures are all in degenerate cases (zero ranges) or are the float64 / epsilon details listed
in :func:`bhq_search` and :func:`quantize_psq`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from hwsim.errors import HwsimError

#: The gradient quantizers (``--grad-quant``).
GRAD_QUANTIZERS = ("ptq", "psq", "bhq", "psq-shift")
#: Allowed gradient bit widths of :class:`GradQuant` (``--grad-bits``), inclusive.
BITS_RANGE = (2, 8)
#: Allowed ``s_max`` of ``psq-shift`` (``--s-max``), inclusive.
S_MAX_RANGE = (0, 8)
#: Bit widths the lower-level functions (:func:`quantize_ptq`, ...) accept: tests and studies may
#: go past :data:`BITS_RANGE` (e.g. 16 bits to check that a quantizer inverts).
_LOW_LEVEL_BITS = (1, 30)

__all__ = [
    "BITS_RANGE",
    "GRAD_QUANTIZERS",
    "S_MAX_RANGE",
    "BHQTransform",
    "GradQuant",
    "bhq_search",
    "decode_psq_shift",
    "decode_ptq",
    "encode_psq_shift",
    "encode_ptq",
    "gradient_variance",
    "householder",
    "quantize_bhq",
    "quantize_grad",
    "quantize_psq",
    "quantize_ptq",
    "stochastic_round",
]


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


@dataclass(frozen=True)
class GradQuant:
    """A gradient quantizer: ``kind`` (one of :data:`GRAD_QUANTIZERS`), ``bits`` (in
    :data:`BITS_RANGE`) and, for ``psq-shift``, the largest per-sample shift ``s_max`` (in
    :data:`S_MAX_RANGE`; the paper: "[0, 4] is enough"). Invalid values raise
    :class:`~hwsim.errors.HwsimError` naming the field and the allowed values."""

    kind: str
    bits: int
    s_max: int = 4

    def __post_init__(self):
        if self.kind not in GRAD_QUANTIZERS:
            raise HwsimError(
                f"unknown gradient quantizer kind {self.kind!r} (--grad-quant): "
                f"use one of {', '.join(GRAD_QUANTIZERS)}"
            )
        lo, hi = BITS_RANGE
        if not _is_int(self.bits) or not lo <= self.bits <= hi:
            raise HwsimError(f"gradient bits (--grad-bits) must be an int in [{lo}, {hi}], "
                             f"got {self.bits!r}")  # fmt: skip
        lo, hi = S_MAX_RANGE
        if not _is_int(self.s_max) or not lo <= self.s_max <= hi:
            raise HwsimError(f"s_max (--s-max) must be an int in [{lo}, {hi}], got {self.s_max!r}")
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "s_max", int(self.s_max))


# --- helpers ----------------------------------------------------------------------------------


def _check_bits(bits) -> int:
    lo, hi = _LOW_LEVEL_BITS
    if not _is_int(bits) or not lo <= bits <= hi:
        raise ValueError(f"bits must be an int in [{lo}, {hi}], got {bits!r}")
    return int(bits)


def _float(x) -> np.ndarray:
    """``x`` as a float32 or float64 array (anything else becomes float64)."""
    x = np.asarray(x)
    return x if x.dtype in (np.float32, np.float64) else x.astype(np.float64)


def _as_rows(g, name: str = "g") -> np.ndarray:
    """``g`` as a finite float64 (N, D) array (N-d: ``reshape(N, -1)``)."""
    a = np.asarray(g, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"{name} must have a row (sample) axis: at least 2-D, got shape {a.shape}")
    a = a.reshape(a.shape[0], -1)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has non-finite values (inf / nan): it cannot be quantized")
    return a


def stochastic_round(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``floor(x) + (u < frac(x))``, ``u ~ U[0, 1)`` from ``rng``, one draw per element in C order:
    rounds up with probability ``frac(x)``, so ``E[result] = x`` (unbiased). float64 array of
    integers, ``x``'s shape. (The official code adds ``U(-0.5, 0.5)`` noise and rounds to nearest,
    ``quantize.py`` ``UniformQuantize.forward``: the same distribution.)"""
    x = np.asarray(x, dtype=np.float64)
    f = np.floor(x)
    up = rng.random(x.shape) < (x - f)
    f += up
    return f


def _minmax_quantize(x: np.ndarray, bits: int, rng, per_row: bool, rounding: bool = True):
    """Min-max quantization of ``x`` (N, D), ``2^b - 1`` bins on ``[min, max]`` of each row
    (``per_row``) or of the tensor; stochastic rounding; the dequantized float64 values.

    A zero-range row / tensor gives codes 0 and decodes to its min: it is returned exactly.
    ``rounding=False`` keeps the fractional codes (a no-rounding path for tests)."""
    nb = float(2**bits - 1)
    if per_row:
        mn = x.min(axis=1, keepdims=True)
        mx = x.max(axis=1, keepdims=True)
    else:
        mn, mx = x.min(), x.max()
    width = mx - mn
    step = np.where(width > 0, width / nb, 1.0)
    u = (x - mn) / step
    np.clip(u, 0.0, nb, out=u)  # float noise only: (x - mn) / step is in [0, nb]
    if rounding:
        u = np.minimum(stochastic_round(u, rng), nb)
    return mn + u * step


# --- PTQ / PSQ --------------------------------------------------------------------------------


def quantize_ptq(g, bits: int, rng: np.random.Generator) -> np.ndarray:
    """PTQ, the paper's per-tensor quantizer: one range ``[min g, max g]``, ``2^b - 1`` bins,
    stochastic rounding; dequantized float64 in ``g``'s shape. A constant tensor is returned
    exactly.

    The official ``ScalarPreconditioner`` (``preconditioner.py``) also widens the range to contain
    0 and moves its top so that 0 falls on a level; that integer zero point is what
    :func:`encode_ptq` provides for the hardware path (with a spare bin instead of a moved top).
    """
    bits = _check_bits(bits)
    x = _as_rows(g)
    return _minmax_quantize(x, bits, rng, per_row=False).reshape(np.shape(g))


def quantize_psq(g, bits: int, rng: np.random.Generator, *, rounding: bool = True) -> np.ndarray:
    """PSQ, per-sample quantization: one range ``[min g[n], max g[n]]`` per row, ``2^b - 1``
    bins, stochastic rounding -- the official ``DiagonalPreconditioner`` (``preconditioner.py``,
    ``left=True``: ``pytorch_minimax.min/max`` of each row). A constant row is returned exactly.

    Departure: the official code widens every range by ``1e-8`` on each side (``mn - 1e-8``,
    ``mx + 1e-8``) to avoid dividing by a zero range; here a zero-range row is handled exactly and
    no other range is widened (an absolute ``1e-8`` is not small next to real gradients, whose
    entries are often below ``1e-6``)."""
    bits = _check_bits(bits)
    x = _as_rows(g)
    return _minmax_quantize(x, bits, rng, per_row=True, rounding=rounding).reshape(np.shape(g))


def encode_ptq(g, bits: int, rng: np.random.Generator) -> tuple[np.ndarray, float, int]:
    """PTQ as integer codes for an integer datapath: ``(c, scale, zero_point)``, ``c`` int64 in
    ``[0, 2^b - 1]`` (``g``'s shape), ``g ~ scale * (c - zero_point)``, ``zero_point`` an int in
    ``[0, 2^b - 2]`` (a GEMM's operand zero point of the unsigned b-bit code format).

    The range is ``[lo, hi] = [min(min g, 0), max(max g, 0)]`` -- it contains 0, as in the
    official ``ScalarPreconditioner``, so that the zero point fits the code format (for a
    gradient that straddles 0, which is the usual case, this is ``[min g, max g]``) -- and

        scale = (hi - lo) / (2^b - 2),   zero_point = ceil(-lo / scale):

    one bin is spare. ``-lo/scale <= zero_point < -lo/scale + 1``, so ``g / scale + zero_point``
    lies in ``[0, 2^b - 1]`` for every ``g`` in ``[lo, hi]``: it is stochastically rounded with no
    clipping, and decoding (:func:`decode_ptq`) is unbiased, ``E[scale * (c - zp)] = g``. (A grid
    of ``2^b - 1`` bins with a rounded zero point would clip one end of the range, biasing it; the
    official code instead stretches the top of the range, by ``qzero / floor(qzero)``, which is
    unbounded when ``floor(qzero)`` is small.) 0 maps to the code ``zero_point`` exactly.

    A constant tensor ``v`` is encoded exactly: ``scale = |v|`` (1 for ``v = 0``), codes
    ``zero_point + sign(v)``.
    """
    bits = _check_bits(bits)
    if bits < 2:
        raise ValueError("encode_ptq needs bits >= 2 (a spare bin)")
    x = np.asarray(g, dtype=np.float64)
    if x.size and not np.isfinite(x).all():
        raise ValueError("g has non-finite values (inf / nan): it cannot be quantized")
    nb = 2**bits - 1
    if x.size == 0:
        return np.zeros(x.shape, np.int64), 1.0, 0
    mn, mx = float(x.min()), float(x.max())
    if mn == mx:  # constant: exact
        v = mn
        if v == 0.0:
            return np.zeros(x.shape, np.int64), 1.0, 0
        zp = 1 if v < 0 else 0
        return np.full(x.shape, zp + (1 if v > 0 else -1), np.int64), abs(v), zp
    lo, hi = min(mn, 0.0), max(mx, 0.0)
    scale = (hi - lo) / (nb - 1)
    zp = int(math.ceil(-lo / scale))
    zp = min(max(zp, 0), nb - 1)  # float noise only
    u = x / scale + zp
    np.clip(u, 0.0, nb, out=u)
    c = np.minimum(stochastic_round(u, rng), nb).astype(np.int64)
    return c, float(scale), zp


def decode_ptq(c, scale: float, zero_point: int) -> np.ndarray:
    """``scale * (c - zero_point)`` in float64 (the inverse of :func:`encode_ptq`)."""
    return scale * (np.asarray(c, np.float64) - zero_point)


# --- PSQ-shift (the paper's proposed hardware) -------------------------------------------------


def encode_psq_shift(
    g, bits: int, s_max: int, rng: np.random.Generator
) -> tuple[np.ndarray, float, np.ndarray]:
    """Per-sample shifts on one per-tensor range (the paper's proposed hardware; the NeurIPS
    rebuttal: "a per-tensor range with per-sample shift values ([0, 4] is enough)").

    Rows are samples. Returns ``(c, scale, shifts)``: symmetric signed codes ``c`` (int64,
    ``g``'s shape, ``|c| <= 2^(b-1) - 1``), one scale ``scale = max|g| / (2^(b-1) - 1)`` (1.0
    for an all-zero ``g``) and per-row shifts ``shifts`` (int64, (N,)) in ``[0, s_max]``, ``s > 0``
    the finer grid: row ``n`` is ``g[n] ~ scale * 2^-s_n * c[n]`` (:func:`decode_psq_shift`).
    ``s_n`` is the largest ``s <= s_max`` with ``max|g[n]| * 2^s <= max|g|``, so the row still
    fits the symmetric range (an all-zero row gets ``s_max``). Codes are
    ``stochastic_round(g[n] * 2^s_n / scale)``: unbiased, never clipped (the value is within
    ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` before rounding). All-zero rows are returned exactly.

    The weight-gradient GEMM consumes these as :func:`hwsim.datapath.gemm_per_sample_shift` does:
    each sample's partial sum on its own accumulator, shifted right by ``s_n``, then summed.
    """
    bits = _check_bits(bits)
    if bits < 2:
        raise ValueError("encode_psq_shift needs bits >= 2 (a signed symmetric code)")
    if not _is_int(s_max) or not 0 <= s_max <= 62:
        raise ValueError(f"s_max must be an int in [0, 62], got {s_max!r}")
    x = _as_rows(g)
    qmax = 2 ** (bits - 1) - 1
    N = x.shape[0]
    rowmax = np.abs(x).max(axis=1) if x.size else np.zeros(N)
    M = float(rowmax.max()) if N else 0.0
    if M == 0.0:
        return np.zeros(np.shape(g), np.int64), 1.0, np.full(N, int(s_max), np.int64)
    # the largest s in [0, s_max] with rowmax * 2^s <= M: the condition is monotone in s, so the
    # count of the s in 1..s_max that satisfy it is that s (2^s multiplies exactly)
    shifts = np.zeros(N, np.int64)
    for s in range(1, int(s_max) + 1):
        shifts += rowmax * (2.0**s) <= M
    scale = M / qmax
    u = x * (np.exp2(shifts.astype(np.float64)) / scale)[:, None]
    np.clip(u, -qmax, qmax, out=u)  # float noise only
    c = np.clip(stochastic_round(u, rng), -qmax, qmax).astype(np.int64)
    return c.reshape(np.shape(g)), float(scale), shifts


def decode_psq_shift(c, scale: float, shifts) -> np.ndarray:
    """``scale * 2^-shifts[n] * c[n]`` in float64 (the inverse of :func:`encode_psq_shift`)."""
    c = np.asarray(c, np.float64)
    c2 = c.reshape(c.shape[0], -1)
    f = scale * np.exp2(-np.asarray(shifts, np.float64))
    return (c2 * f[:, None]).reshape(c.shape)


# --- BHQ: block Householder -------------------------------------------------------------------


@cache
def _householder_cached(n: int) -> tuple[np.ndarray, np.ndarray, float]:
    e1 = np.zeros(n)
    e1[0] = 1.0
    ones = np.full(n, 1.0 / math.sqrt(n))
    if n == 1:
        return np.ones((1, 1)), np.zeros(1), 1.0
    v = ones - e1  # official: v = tar - src, tar = ones / sqrt(n), src = e1
    v /= np.linalg.norm(v)
    H = np.eye(n) - 2.0 * np.outer(v, v)
    H.setflags(write=False)
    v.setflags(write=False)
    return H, v, float(np.abs(H).max())


def householder(n: int) -> tuple[np.ndarray, float]:
    """``(H, Hmax)``: the ``n x n`` Householder reflection ``H = I - 2 v v^T``,
    ``v = (1/sqrt(n) - e1) / ||.||``, which maps ``e1`` to ``1/sqrt(n)`` (all ones / sqrt(n)):
    symmetric and orthogonal, ``H H^T = I``. ``Hmax = max |H_ij|``. ``n = 1``: ``([[1]], 1)``.
    Official: ``preconditioner.py`` ``householder(src, tar)`` and ``init(max_bs)`` (the tables
    ``Qs`` / ``Qqs`` / ``Qmax``). Cached per ``n``; read-only arrays."""
    if not _is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    H, _, hmax = _householder_cached(int(n))
    return H, hmax


@dataclass(frozen=True)
class BHQTransform:
    """A block Householder transform ``T`` of the rows of an (N, D) gradient (the official
    ``get_transform``'s ``T``, ``T_inv``, kept in block form).

    ``blocks[i]``: original row indices of block ``i``, its large-range row first, then its
    small-range rows (in decreasing range); ``scales``: (N,) the per-row scale ``s`` (indexed by
    original row). For block ``b`` with Householder ``H`` of its size,
    ``(T x)[b] = H diag(s[b]) x[b]`` and ``(T^-1 y)[b] = diag(1/s[b]) H^T y[b]``: a row
    permutation, per-row scales and one reflection per block -- the sparse-dense product of the
    paper ("21 ms"), applied here as ``x - 2 v (v^T x)`` per block."""

    n_rows: int
    blocks: tuple[np.ndarray, ...]
    scales: np.ndarray

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``T @ x`` for ``x`` (N, D), in ``x``'s float dtype (float32 stays float32; other
        dtypes become float64)."""
        x = _float(x)
        y = np.empty_like(x)
        s = self.scales.astype(x.dtype)
        for idx in self.blocks:
            xb = x[idx] * s[idx][:, None]
            if len(idx) > 1:
                v = _householder_cached(len(idx))[1].astype(x.dtype)
                xb -= 2 * np.outer(v, v @ xb)
            y[idx] = xb
        return y

    def inverse(self, y: np.ndarray) -> np.ndarray:
        """``T^-1 @ y`` (``diag(1/s) H^T`` per block; ``H^T = H``), in ``y``'s float dtype."""
        y = _float(y)
        x = np.empty_like(y)
        s = self.scales.astype(y.dtype)
        for idx in self.blocks:
            yb = y[idx]
            if len(idx) > 1:
                v = _householder_cached(len(idx))[1].astype(y.dtype)
                yb -= 2 * np.outer(v, v @ yb)
            x[idx] = yb / s[idx][:, None]
        return x

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """Dense ``(T, T_inv)``, (N, N) each, as ``quantizers.cpp`` ``get_transform`` returns
        them: ``T2 = P^T blockdiag(Q_b) P diag(s)``, ``T2_inv = diag(1/s) P^T blockdiag(Q_b^T) P``
        (``P`` the row permutation that makes the blocks contiguous)."""
        N = self.n_rows
        T = np.zeros((N, N))
        Ti = np.zeros((N, N))
        for idx in self.blocks:
            H, _ = householder(len(idx))
            s = self.scales[idx]
            T[np.ix_(idx, idx)] = H * s[None, :]
            Ti[np.ix_(idx, idx)] = H.T / s[:, None]
        return T, Ti


def bhq_search(ranges) -> BHQTransform:
    """The block configuration of BHQ from the rows' ranges ``max - min`` (the paper's "finding the
    optimal transformation", 3 µs in C++): ``quantizers/quantizers.cpp`` ``get_transform(mvec,
    Q, Qmax)``, which ``BlockwiseHouseholderPreconditioner.transform`` (``preconditioner.py``)
    calls with ``mvec = max - min + 1e-8`` per row. Step by step, as there:

    1. rank the rows by decreasing range (``values``);
    2. move rows from the bottom of the ranking into the "zeros" (small rows) one at a time,
       ``num_zeros = k``, until ``k * values[N-k-1] / sum(values[:N-k]) > 1``: the smallest
       remaining large row would receive more than one small row;
    3. large row ``i`` (``i < N - k``) gets ``round(cumsum(k * values / total))`` small rows in
       order (``nums``; a share proportional to its range), forming the block
       ``[large i] + [its small rows]`` of size ``sz``;
    4. per block, with ``lambda_1`` the large row's range, ``lambda_2`` that of the block's largest
       small row and ``Qmax = max|H|`` of size ``sz``: ``w1 = lambda_1 / sqrt(sz)``,
       ``w2 = lambda_2 * Qmax``, ``s1 = w1^(-1/3)`` (large row), ``s2 = (w2 / (sz - 1))^(-1/3)``
       (small rows), both multiplied by ``sqrt(s1^-2 + s2^-2)``.

    Departures, all in degenerate cases or precision: float64 (the C++ uses float32); equal
    ranges keep their row order in the ranking (``std::sort`` leaves it unspecified); ``round``
    is half away from zero as ``roundf``, and the last ``nums`` is set to ``k`` (the C++ checks
    it); the epsilon added to the ranges is ``1e-8 * max range`` rather than an absolute
    ``1e-8``, so the configuration does not depend on the gradient's scale; step 2 stops at
    ``k = N - 1`` (the C++ reads ``values[-1]`` past that, e.g. for two equal rows); a block of
    size 1 (impossible when step 2's condition holds, since every share then exceeds 1) gets
    ``s = 1`` where the C++ divides by ``sz - 1 = 0``. ``N = 1``: one block, ``s = 1``.
    """
    r = np.asarray(ranges, np.float64).ravel()
    N = r.size
    if N == 0:
        return BHQTransform(0, (), np.ones(0))
    if not np.isfinite(r).all() or (r < 0).any():
        raise ValueError("ranges must be finite and >= 0")
    top = float(r.max())
    mvec = r + (1e-8 * top if top > 0 else 1.0)
    if N == 1:
        return BHQTransform(1, (np.zeros(1, np.int64),), np.ones(1))
    rank = np.argsort(-mvec, kind="stable")
    values = mvec[rank]
    prefix = np.cumsum(values)
    # step 2: k = 1 .. N-1; sum(values[:N-k]) = prefix[N-k-1]
    ks = np.arange(1, N)
    cond = ks * values[N - ks - 1] > prefix[N - ks - 1]
    k = int(ks[np.argmax(cond)]) if cond.any() else N - 1
    m = N - k  # large ("nonzero") rows
    total = prefix[m - 1]
    nums = np.floor(np.cumsum(k * values[:m] / total) + 0.5).astype(np.int64)
    nums[-1] = k
    scales = np.empty(N)
    blocks = []
    cnt = m
    for i in range(m):
        end = m + int(nums[i])
        idx = np.concatenate(([rank[i]], rank[cnt:end]))
        sz = idx.size
        if sz == 1:
            scales[rank[i]] = 1.0
        else:
            _, _, qmax = _householder_cached(sz)
            w1 = values[i] / math.sqrt(sz)
            w2 = values[cnt] * qmax
            s1 = w1 ** (-1.0 / 3.0)
            s2 = (w2 / (sz - 1)) ** (-1.0 / 3.0)
            norm = math.sqrt(s1**-2 + s2**-2)
            scales[idx[0]] = s1 * norm
            scales[idx[1:]] = s2 * norm
        blocks.append(idx.astype(np.int64))
        cnt = end
    return BHQTransform(N, tuple(blocks), scales)


def quantize_bhq(g, bits: int, rng: np.random.Generator, *, rounding: bool = True) -> np.ndarray:
    """BHQ, the official ``BlockwiseHouseholderPreconditioner`` (``preconditioner.py``) inside
    ``UniformQuantize.forward`` (``quantize.py``): ``T`` from the row ranges (:func:`bhq_search`),
    ``y = T g``, per-row min-max quantization of ``y`` with ``2^b - 1`` bins and stochastic
    rounding (the ``DiagonalPreconditioner`` step, on ``y``), then ``T^-1``. Unbiased (``T^-1``
    is linear); float64 in ``g``'s shape. ``rounding=False`` skips the rounding (returns ``g`` up
    to float error: checks that the transform inverts).

    A tensor whose rows are all constant (e.g. zero) is returned exactly. A constant row *among
    others* is mixed into its block (the official behaviour: small rows are what spreads a large
    row), so it carries noise like any other row. Departure: no ``1e-8`` widening of the ranges
    of ``y`` (see :func:`quantize_psq`)."""
    bits = _check_bits(bits)
    x = _as_rows(g)
    if x.size == 0:
        return x.reshape(np.shape(g)).copy()
    ranges = x.max(axis=1) - x.min(axis=1)
    if not (ranges > 0).any():
        return x.reshape(np.shape(g)).copy()
    t = bhq_search(ranges)
    y = t.forward(x)
    yq = _minmax_quantize(y, bits, rng, per_row=True, rounding=rounding)
    return t.inverse(yq).reshape(np.shape(g))


# --- the dispatcher and the variance measure --------------------------------------------------


def quantize_grad(g: np.ndarray, q: GradQuant, rng: np.random.Generator) -> np.ndarray:
    """The dequantized stochastic quantization of gradient ``g`` (rows = samples / tokens; an
    N-d ``g`` is taken as ``g.reshape(N, -1)`` and returned in its shape) by ``q``, float64:
    ``ptq`` :func:`quantize_ptq`, ``psq`` :func:`quantize_psq`, ``bhq`` :func:`quantize_bhq`,
    ``psq-shift`` ``decode_psq_shift(encode_psq_shift(g))``. Unbiased. Exact for a zero-range
    tensor (every kind), for each constant row (``psq``) and each all-zero row (``psq-shift``)."""
    if not isinstance(q, GradQuant):
        raise TypeError(f"q must be a GradQuant, got {type(q).__name__}")
    if q.kind == "ptq":
        return quantize_ptq(g, q.bits, rng)
    if q.kind == "psq":
        return quantize_psq(g, q.bits, rng)
    if q.kind == "bhq":
        return quantize_bhq(g, q.bits, rng)
    c, scale, shifts = encode_psq_shift(g, q.bits, q.s_max, rng)
    return decode_psq_shift(c, scale, shifts)


def gradient_variance(
    g, quantizers, draws: int, seed: int | np.random.Generator = 0
) -> dict[tuple[str, int], float]:
    """The paper's quality measure: for each quantizer, the variance of ``quantize_grad(g)``
    across ``draws`` independent stochastic quantizations of the fixed gradient ``g``, averaged
    over the entries of ``g``: ``mean_ij var_d(Q_d(g)_ij)``, each variance the unbiased sample
    variance (``ddof=1``), so ``draws >= 2``. Keys ``(kind, bits)`` (two quantizers with the same
    key are an error). Quantizer ``i`` draws from the ``i``-th stream of
    ``SeedSequence(seed).spawn``: the same list and seed give the same numbers; a quantizer's
    result depends on its position in the list (not on the others' draws).
    ``g`` may also be a zero-argument callable returning the gradient (called once)."""
    if callable(g):
        g = g()
    x = _as_rows(g)
    if not _is_int(draws) or draws < 2:
        raise ValueError(f"draws must be an int >= 2, got {draws!r}")
    qs = list(quantizers)
    keys = [(q.kind, q.bits) for q in qs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"quantizers repeat a (kind, bits) key: {keys}")
    if isinstance(seed, np.random.Generator):
        seqs = [g.bit_generator.seed_seq for g in seed.spawn(len(qs))]
    else:
        seqs = np.random.SeedSequence(seed).spawn(len(qs))
    out = {}
    for q, key, ss in zip(qs, keys, seqs, strict=True):
        rng = np.random.default_rng(ss)
        s1 = np.zeros_like(x)
        s2 = np.zeros_like(x)
        for _ in range(draws):
            d = quantize_grad(x, q, rng) - x  # deviations from g: numerically stable
            s1 += d
            s2 += d * d
        var = (s2 - s1 * s1 / draws) / (draws - 1)
        out[key] = float(np.maximum(var, 0.0).mean())
    return out
