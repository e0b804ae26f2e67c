"""The extremes of every exact partial sum in reduction order, from block bounds.

``Counters.partial_min`` / ``partial_max`` are the extremes, over every output and every step
of its reduction in hardware order, of the exact partial sums (the accumulator after each
product; under ``TILED``, the tile register after each product and the accumulator after each
tile; :func:`hwsim.datapath.reference.accumulate`). Only the two extremes of a whole layer are
reported, so most outputs cannot hold one, and this module proves which ones without visiting
their products one by one (operands of at most 8 bits, ``x`` held as uint8: :func:`as_uint8`):

1. The reduction order is cut into blocks of at most ``block`` consecutive products, never
   straddling a tile. For one output and block let ``S`` be the block's sum, ``P`` / ``Q`` the
   sums of the positive parts / of the magnitudes of the negative parts of its products, and
   ``A = P + Q = sum_u |x_u - zx| |w_u - zw|``, so ``P = (A + S) / 2``, ``Q = (A - S) / 2``.
   ``S`` comes from one exact GEMM per block (``sum_u w_u (x_u - zx)`` of the raw weights,
   whichever exact engine is fastest, minus ``zw * sum_u (x_u - zx)``); ``A`` is bounded by
   Cauchy-Schwarz, ``A <= sqrt(X2 * W2)`` with ``X2 = sum_u (x_u - zx)^2`` (per output row,
   from the operand) and ``W2 = sum_u (w_u - zw)^2`` (per output column, constant per layer:
   :func:`layer_operands` caches it with the GEMM's weight operand).
2. The register before the block, ``base``, is the sum of the earlier blocks of its tile (of
   the whole reduction without tiles). Every partial sum in the block lies in ``[base - Q,
   base + P]``, so within ``[lo, hi]`` whenever ``d = min(2 hi - c, c - 2 lo)``, with ``c = 2
   base + S``, satisfies ``d >= 0`` and ``d^2 >= X2 * W2`` (integers: no square root is
   taken). ``base + S`` (the block's last partial sum) and, under ``TILED``, the accumulator
   after each tile are partial sums themselves.
3. ``lo`` / ``hi`` start inside the partial sums' range (the caller's final sums, which are
   partial sums) and follow every partial sum met. A block that passes the test holds no new
   extreme; any other block is reduced product by product from ``base``, in hardware order,
   exactly, for its output row.

The operand is laid out transposed, block by block (``(G * nb, block, M)``, a block's products
as rows), so a block is one GEMM operand and the bounds pass runs along contiguous outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from hwsim.datapath.engines import _ort_run, exact_sums, ort_available
from hwsim.datapath.kernels import pad_nhwc
from hwsim.numerics import IntFormat

BLOCK = 32  # products per block: tighter bounds (smaller) against more GEMM output (larger)
MAX_BLOCK = 1 << 14  # a block's sum of squares X2 < 2^31 (int32)
INT32_K = (1 << 31) // (255 * 255)  # below it every partial sum and block sum fits int32
HIT_RATE = 0.02  # blocks reduced exactly per block and output row that switch to exact P, Q
# (four times that for activations with x < zx somewhere, whose P, Q take the [x+; x-] GEMM)
CHUNK_BYTES = 2 << 20  # block sums (int32) held at a time: about an L2 cache
LANES = 64  # outputs scanned together by the bounds pass
SPAN = 64  # a bounds task scans about SPAN / N runs of LANES outputs (N outputs per row)
_U8 = IntFormat(8, False)
DIRECT_LANES = 16  # 1x1 convolutions with this many outputs per group visit every partial sum
GATHER_WO = 8  # convolutions with shorter output lines unfold by gather_blocks (measured)
DIRECT_INT32 = 1 << 31  # a direct visit bounded below this runs in int32, else in int64
_NONE = 1 << 60  # running extremes before any partial sum is known: [2^60, -2^60] is empty


def applies(x_fmt: IntFormat, w_fmt: IntFormat) -> bool:
    """Whether the block bounds take these operands: both at most 8 bits, so ``x`` fits uint8
    (:func:`as_uint8`) and every part ``w+, w-`` of an effective weight (at most 255) too."""
    return x_fmt.bits <= 8 and w_fmt.bits <= 8


def as_uint8(x: np.ndarray, zx: int) -> tuple[np.ndarray, int]:
    """``(x + s, zx + s)`` as uint8 and an int (``s`` = 128 when x or zx is negative, else 0):
    the same effective operand ``x - zx`` in the one dtype the kernels are compiled for. ``x``
    holds values of a format of at most 8 bits, ``zx`` its zero point."""
    if x.dtype == np.int8:
        return x.view(np.uint8) ^ np.uint8(0x80), int(zx) + 128
    s = 128 if zx < 0 or (x.dtype.kind == "i" and x.size and int(x.min()) < 0) else 0
    if s == 0 and x.dtype == np.uint8:
        return x, int(zx)
    return (x.astype(np.int16) + s).astype(np.uint8), int(zx) + s


@dataclass(frozen=True)
class Blocks:
    """The blocks of a K-product reduction in hardware-order positions: ``starts`` /
    ``lens`` (int64), ``first`` / ``last`` (the blocks that open / close a tile; without tiles
    no block closes one, the accumulator being the tile) and ``width``, the longest block."""

    starts: np.ndarray
    lens: np.ndarray
    first: np.ndarray
    last: np.ndarray
    width: int

    @property
    def count(self) -> int:
        return int(self.starts.shape[0])


def blocks(K: int, tile: int, block: int) -> Blocks:
    """Cut a K-product reduction (tiles of ``tile`` products; 0: none) into blocks of at most
    ``block`` products."""
    span = tile if tile > 0 else max(K, 1)
    starts, lens, first, last = [], [], [], []
    for t0 in range(0, K, span):
        t1 = min(t0 + span, K)
        for s in range(t0, t1, block):
            starts.append(s)
            lens.append(min(block, t1 - s))
            first.append(s == t0)
            last.append(tile > 0 and s + block >= t1)
    return Blocks(
        np.array(starts, np.int64),
        np.array(lens, np.int64),
        np.array(first, np.bool_),
        np.array(last, np.bool_),
        max(lens, default=0),
    )


def partial_extremes(
    x3, w3, zx: int, w_zp, order=None, tile: int = 0, known=(None, None), block: int = BLOCK
):
    """``(min, max)`` of every exact partial sum of ``(x3 - zx) @ (w3 - w_zp)`` reduced in
    hardware order ``order`` (column ``order[t]`` is product ``t``; identity when None), in
    tiles of ``tile`` products (0: sequential); ``(None, None)`` when there are no outputs or
    no products. ``x3`` (G, M, K) and ``w3`` (G, K, N) are validated operands of at most 8 bits
    (:func:`applies`); ``w_zp`` is a scalar or (G, 1, N). ``known``: ``(lo, hi)`` within the
    partial sums' range (e.g. the extremes of the final sums, partial sums themselves), or
    ``(None, None)``; they only save work."""
    G, M, K = x3.shape
    N = w3.shape[2]
    if G * M * N == 0 or K == 0:
        return None, None
    order = np.arange(K, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    weh = np.ascontiguousarray((w3.astype(np.int64) - np.asarray(w_zp, np.int64))[:, order])
    x3, zx = as_uint8(x3, zx)
    run = _Run(x3, zx, layer_operands(weh, np.asarray(w_zp, np.int64), tile, block), known)
    rows = max(LANES, min(M, CHUNK_BYTES // max(1, G * run.ops.lay.count * run.sums(N) * 4)))
    for m0 in range(0, M, rows):
        xt = run.scratch(min(M, m0 + rows) - m0)
        xs = np.ascontiguousarray(x3[:, m0 : m0 + rows])  # one layout: one compiled kernel
        transpose_blocks(xs, np.uint8(zx), order, run.ops.lay.starts, run.ops.lay.lens, xt)
        run.chunk(xt)
    return run.lo, run.hi


def conv_partial_extremes(
    x, w, zx: int, w_zp, stride, pads, dilation, groups: int, tile: int = 0,
    known=(None, None), block: int = BLOCK, direct: bool | None = None, nhwc=None,
):  # fmt: skip
    """:func:`partial_extremes` of the convolution :func:`hwsim.datapath.conv2d` reduces:
    ``x`` (N, C, H, W) and ``w`` (F, C/groups, kh, kw) validated operands of at most 8 bits,
    ``w_zp`` a scalar or (groups, 1, F/groups), padding ``(top, left, bottom, right)`` holding
    zx, products in the channel-major order ``(c, i, j)``: :meth:`ConvTracker.extremes`
    (``direct``, ``nhwc`` there)."""
    tracker = ConvTracker(w, w_zp, stride, pads, dilation, groups, tile, block)
    return tracker.extremes(x, zx, known, direct, nhwc)


class ConvTracker:
    """The partial-sum extremes of one convolution's outputs (:func:`conv_partial_extremes`),
    with what depends on the weights alone -- effective weights in hardware order, the direct
    visit's weights and width, the blocks' :class:`LayerOperands` -- made once, for any
    number of inputs (:class:`hwsim.datapath.conv.ConvPlan` keeps one per layer)."""

    def __init__(self, w, w_zp, stride, pads, dilation, groups: int, tile: int = 0,
                 block: int = BLOCK):  # fmt: skip
        F, Cg, kh, kw = w.shape
        G, K = groups, Cg * kh * kw
        Fg = F // G
        self.shape, self.groups, self.tile, self.block = w.shape, G, tile, block
        self.stride, self.pads, self.dilation = stride, pads, dilation
        weh = w.reshape(G, Fg, K).transpose(0, 2, 1).astype(np.int64)
        self.weh = np.ascontiguousarray(weh - np.asarray(w_zp, np.int64))  # (G, K, Fg)
        self.w_zp = np.asarray(w_zp, np.int64)
        # |x - zx| <= 255 for operands of at most 8 bits: every partial sum within the bound
        self.wide = K * 255 * int(np.abs(self.weh).max(initial=0)) >= DIRECT_INT32
        self.depthwise = not self.wide and Fg == 1 and Cg == 1
        self._direct_w = None
        self._ops = None

    @property
    def prefers_direct(self) -> bool:
        """Whether visiting every partial sum beats the block bounds; measured on MobileNetV2 /
        CIFAR layers (benchmarks/network.py): depthwise convolutions (one input and one output
        channel per group) and 1x1 kernels with :data:`DIRECT_LANES` outputs per group. (The
        shipped demo's layers keep the block kernels: its first run compiles nothing more.)"""
        F, Cg, kh, kw = self.shape
        return (Cg == 1 and F == self.groups) or (kh * kw == 1 and F // self.groups >= DIRECT_LANES)

    def extremes(self, x, zx: int, known=(None, None), direct: bool | None = None, nhwc=None):
        """``(min, max)`` of every exact partial sum of ``x``'s outputs ((None, None) when
        there are none): ``x`` (N, C, H, W) of at most 8 bits with zero point ``zx``;
        ``known`` as :func:`partial_extremes`'. ``direct``: visit every partial sum
        (:meth:`_direct`) rather than bound blocks (unfolded straight from ``x``, each kernel
        tap's output line one run of the input); None: :meth:`prefers_direct`; the same
        answer either way. ``nhwc``: ``(xp, zp)``, a padded NHWC copy of ``x`` whose padding
        holds ``zp`` and ``xp - zp == x - zx``, which the direct visit reads (else it makes
        one)."""
        N, C, H, W = x.shape
        F, Cg, kh, kw = self.shape
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.stride, self.dilation, self.pads
        ho = (H + pt + pb - dh * (kh - 1) - 1) // sh + 1
        wo = (W + pl + pr - dw * (kw - 1) - 1) // sw + 1
        G, K = self.groups, Cg * kh * kw
        if N * ho * wo * F == 0 or K == 0:
            return None, None
        if direct is None:
            direct = self.prefers_direct
        if direct:
            return self._direct(x, int(zx), ho, wo, known, nhwc)
        x, zx = as_uint8(np.ascontiguousarray(x), zx)  # a kernel tap's lines: runs of planes
        if self._ops is None:
            self._ops = layer_operands(self.weh, self.w_zp, self.tile, self.block)
        run = _Run(x, zx, self._ops, known)
        lay = run.ops.lay
        gather = wo < GATHER_WO
        if gather:  # short output lines: each block row gathered from a padded NHWC copy
            Hp, Wp = H + pt + pb, W + pl + pr
            xp = np.empty((N, Hp, Wp, C), np.uint8)
            pad_nhwc(x, pt, pl, np.uint8(zx), 0, xp)
            flat = xp.reshape(-1)
            t = np.arange(K)
            c, i, j = t // (kh * kw), t // kw % kh, t % kw
            off = ((i * dh * Wp + j * dw) * C + c)[None, :] + (np.arange(G) * Cg)[:, None]
            off = np.ascontiguousarray(off, dtype=np.int64)
        lines = max(1, CHUNK_BYTES // max(1, wo * G * lay.count * run.sums(F // G) * 4))
        for l0 in range(0, N * ho, lines):
            l1 = min(N * ho, l0 + lines)
            xt = run.scratch((l1 - l0) * wo)
            if gather:
                n, oh = np.divmod(np.arange(l0, l1, dtype=np.int64), ho)
                base = ((n * Hp + oh * sh) * Wp)[:, None] + (np.arange(wo) * sw)[None, :]
                gather_blocks(flat, (base * C).reshape(-1), off, np.uint8(zx), lay.starts,
                              lay.lens, xt)  # fmt: skip
            else:
                conv_blocks(x, np.uint8(zx), l0, l1, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                            lay.starts, lay.lens, xt)  # fmt: skip
            run.chunk(xt)
        return run.lo, run.hi

    def _direct(self, x, zx: int, ho: int, wo: int, known, nhwc):
        """:meth:`extremes` visiting every partial sum, on a padded NHWC copy of ``x``: a
        depthwise convolution along the channels (:func:`depthwise_scan_nhwc`), any other
        along each group's outputs (:func:`conv_scan`); in int32 where ``K * 255 * max|w -
        zw|`` fits it, else int64."""
        N, C, H, W = x.shape
        F, Cg, kh, kw = self.shape
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = self.stride, self.dilation, self.pads
        if nhwc is None:
            xu, zu = as_uint8(x, zx)
            xp = np.empty((N, H + pt + pb, W + pl + pr, C), np.uint8)
            pad_nhwc(xu, pt, pl, np.uint8(zu), 0, xp)
        else:
            xp, zu = nhwc
        if self._direct_w is None:
            if self.depthwise:  # (K, C) int32, tap-major
                self._direct_w = np.ascontiguousarray(self.weh[:, :, 0].T.astype(np.int32))
            else:
                dt = np.int64 if self.wide else np.int32
                self._direct_w = np.ascontiguousarray(self.weh.astype(dt))
        K = Cg * kh * kw
        tile = self.tile if self.tile > 0 else K
        res = np.empty((N * ho, 2), np.int64)
        if self.depthwise:
            depthwise_scan_nhwc(xp, np.int32(zu), self._direct_w, kh, kw, sh, sw, dh, dw, ho,
                                wo, tile, res)  # fmt: skip
        else:
            conv_scan(xp, np.int64(zu), self._direct_w, Cg, kh, kw, sh, sw, dh, dw, ho, wo,
                      tile, res)  # fmt: skip
        lo, hi = int(res[:, 0].min()), int(res[:, 1].max())
        if known[0] is not None:
            lo, hi = min(lo, int(known[0])), max(hi, int(known[1]))
        return lo, hi


@njit(cache=True, parallel=True)
def depthwise_scan_nhwc(xp, zx, wt, kh, kw, sh, sw, dh, dw, ho, wo, tile, res):
    """:func:`conv_scan` of a depthwise convolution (output channel ``c`` reads input
    channel ``c``) on the padded NHWC input ``xp`` (N, Hp, Wp, C) uint8 (the padding holds
    ``zx``: a product of 0), ``wt`` (kh*kw, C) int32 effective weights, tap-major: ``res[n *
    ho + oh] = (min, max)`` over the outputs of line ``oh`` of image ``n``, the channels as
    vector lanes, in int32 (the caller's bound: ``K * max|x - zx| * max|w| < 2^31``)."""
    N, Hp, Wp, C = xp.shape
    K = kh * kw
    for task in prange(N * ho):
        n = task // ho
        oh = task - n * ho
        t_reg = np.empty(C, np.int32)
        acc = np.empty(C, np.int32)
        mn = np.full(C, np.int32(2**31 - 1))
        mx = np.full(C, np.int32(-(2**31)))
        for ow in range(wo):
            t_reg[:] = 0
            acc[:] = 0
            for t in range(K):
                i = t // kw
                j = t - i * kw
                row = xp[n, oh * sh + i * dh, ow * sw + j * dw]
                wr = wt[t]
                for c in range(C):
                    v = t_reg[c] + (np.int32(row[c]) - zx) * wr[c]
                    t_reg[c] = v
                    mn[c] = min(mn[c], t_reg[c])
                    mx[c] = max(mx[c], t_reg[c])
                if tile < K and ((t + 1) % tile == 0 or t == K - 1):
                    for c in range(C):
                        v = acc[c] + t_reg[c]
                        acc[c] = v
                        t_reg[c] = 0
                        mn[c] = min(mn[c], acc[c])
                        mx[c] = max(mx[c], acc[c])
        res[task, 0] = mn.min()
        res[task, 1] = mx.max()


@njit(cache=True, parallel=True)
def conv_scan(xp, zx, we, Cg, kh, kw, sh, sw, dh, dw, ho, wo, tile, res):
    """Every exact partial sum of a convolution, directly, on the padded NHWC input ``xp``
    (N, Hp, Wp, C) (the padding holds ``zx``): ``res[n * ho + oh] = (min, max)`` over the
    outputs of line ``oh`` of image ``n``. Output ``f`` of group ``g`` at ``(oh, ow)`` takes
    products ``t = (c * kh + i) * kw + j`` in increasing ``t`` (hardware order), each
    ``(xp[n, oh * sh + i * dh, ow * sw + j * dw, g * Cg + c] - zx) * we[g, t, f]``; the
    partial sums are the tile register after each product (it restarts every ``tile``
    products) and the accumulator after each tile (``tile = K``: the running sum). The group's
    outputs are the vector lanes, in ``we``'s dtype (exact: the caller's bound ``K * max|x -
    zx| * max|we|`` fits it). A product of 0 leaves every register as it was (a partial sum
    already met), except that a register it opens holds the partial sum 0."""
    N = xp.shape[0]
    G, K, Fg = we.shape
    big = np.iinfo(we.dtype).max
    tc = np.empty(K, np.int64)  # product t's channel, row and column offsets
    ti = np.empty(K, np.int64)
    tj = np.empty(K, np.int64)
    for t in range(K):
        tc[t] = t // (kh * kw)
        ti[t] = (t - tc[t] * kh * kw) // kw * dh
        tj[t] = (t - tc[t] * kh * kw) % kw * dw
    for task in prange(N * ho):
        n = task // ho
        oh = task - n * ho
        t_reg = np.empty(Fg, we.dtype)
        acc = np.empty(Fg, we.dtype)
        mn = np.full(Fg, big, we.dtype)
        mx = np.full(Fg, -big, we.dtype)
        zero = False
        for g in range(G):
            for ow in range(wo):
                t_reg[:] = 0
                acc[:] = 0
                for t in range(K):
                    a = np.int64(xp[n, oh * sh + ti[t], ow * sw + tj[t], g * Cg + tc[t]]) - zx
                    if a != 0:
                        wr = we[g, t]
                        for f in range(Fg):
                            v = t_reg[f] + a * wr[f]
                            t_reg[f] = v
                            mn[f] = min(mn[f], t_reg[f])
                            mx[f] = max(mx[f], t_reg[f])
                    elif t % tile == 0:
                        zero = True
                    if tile < K and ((t + 1) % tile == 0 or t == K - 1):
                        for f in range(Fg):
                            v = acc[f] + t_reg[f]
                            acc[f] = v
                            t_reg[f] = 0
                            mn[f] = min(mn[f], acc[f])
                            mx[f] = max(mx[f], acc[f])
        lo = np.int64(mn.min())
        hi = np.int64(mx.max())
        if zero:
            lo = min(lo, 0)
            hi = max(hi, 0)
        res[task, 0] = lo
        res[task, 1] = hi


@dataclass
class LayerOperands:
    """What the bounds of one reduction need from its weights alone (:func:`layer_operands`):
    the blocks ``lay``; ``weh`` (G, K, N) int64 effective weights in hardware order; ``wa``
    (G*nb, N, width) uint8, the GEMM's left operand, raw weights ``w = (wa - az)`` of each
    block's products (``az`` past a block's length); ``wpq`` (G*nb, 2N, 2 width) uint8, the
    GEMM operand of ``P`` (rows < N) and ``Q`` on ``[x+; x-]``: the parts ``w+``, ``w-`` of
    the effective weights for ``x+`` (columns < width) and ``w-``, ``w+`` for ``x-`` (zero
    past a block; with every ``x >= zx`` the first ``width`` columns alone); ``zw``
    (G, N) int64 weight zero points; ``w2`` (G*nb, N) int64, ``sum_u (w_u - zw)^2`` per block
    and output. ``exact``: the bounds of :func:`scan_blocks` (False: block sums and
    Cauchy-Schwarz; True: exact ``P`` / ``Q``), set for few outputs per row (``4 N <= width``)
    and then learnt from the hit rate; it changes no result."""

    lay: Blocks
    weh: np.ndarray
    wa: np.ndarray
    az: int
    wpq: np.ndarray
    zw: np.ndarray
    w2: np.ndarray
    exact: bool = False


_OPERANDS: dict = {}  # layer_operands by content: a network's layers, weights constant
_OPERANDS_MAX = 256


def layer_operands(weh: np.ndarray, w_zp: np.ndarray, tile: int, block: int) -> LayerOperands:
    """:class:`LayerOperands` of effective weights ``weh`` (G, K, N) int64 in hardware order,
    weight zero points ``w_zp`` (scalar or (G, 1, N)), ``tile`` and ``block``; cached by
    content (a few hundred layers), since they depend on the weights only."""
    G, K, N = weh.shape
    zw = np.ascontiguousarray(np.broadcast_to(w_zp.reshape(-1, N) if w_zp.ndim else w_zp, (G, N)))
    key = (weh.shape, tile, block, weh.tobytes(), zw.tobytes())
    ops = _OPERANDS.get(key)
    if ops is None:
        if len(_OPERANDS) >= _OPERANDS_MAX:
            _OPERANDS.clear()
        ops = _OPERANDS[key] = _layer_operands(weh, zw, tile, block)
    return ops


def _layer_operands(weh, zw, tile: int, block: int) -> LayerOperands:
    G, K, N = weh.shape
    lay = blocks(K, tile, min(max(1, block), MAX_BLOCK))
    u = np.arange(lay.width)
    valid = u[None, :] < lay.lens[:, None]  # (nb, width)
    idx = np.where(valid, lay.starts[:, None] + u[None, :], 0)
    wb = weh[:, idx] * valid[None, :, :, None]  # (G, nb, width, N), zero past each block
    w2 = (wb * wb).sum(axis=2).reshape(G * lay.count, N)
    raw = np.where(valid[None, :, :, None], wb + zw[:, None, None, :], 0)  # the raw weights
    az = 128 if raw.size and int(raw.min()) < 0 else 0  # a signed format: stored as w + 128
    wa = (raw + az).astype(np.uint8).transpose(0, 1, 3, 2)  # (G, nb, N, width)
    wa = np.ascontiguousarray(wa).reshape(G * lay.count, N, lay.width)
    pos, neg = np.maximum(wb, 0), np.maximum(-wb, 0)  # (G, nb, width, N)
    for_xp, for_xm = np.concatenate([pos, neg], axis=3), np.concatenate([neg, pos], axis=3)
    wpq = np.concatenate([for_xp, for_xm], axis=2)  # (G, nb, 2 width, 2N)
    wpq = np.ascontiguousarray(wpq.astype(np.uint8).transpose(0, 1, 3, 2))
    wpq = wpq.reshape(G * lay.count, 2 * N, 2 * lay.width)
    zw = zw.astype(np.int64)
    # few outputs per row: a block's sum of squares would cost more than a second GEMM row
    exact = 4 * N <= lay.width
    return LayerOperands(lay, weh, wa, az, wpq, zw, np.ascontiguousarray(w2), exact)


class _Run:
    """One reduction's running extremes and transposed operand (:func:`transpose_blocks`
    layout) scratch; ``x`` is uint8 with zero point ``zx``."""

    def __init__(self, x, zx: int, ops: LayerOperands, known):
        self.ops = ops
        self.zx = zx
        self.nonneg = not x.size or int(x.min()) >= zx  # every x - zx >= 0: no x- part
        lo, hi = known
        self.lo = _NONE if lo is None else int(lo)
        self.hi = -_NONE if hi is None else int(hi)
        self._xt = None

    def sums(self, N: int) -> int:
        """Rows of block sums per output row: 2N (``P`` and ``Q``) in the exact mode, else N."""
        return 2 * N if self.ops.exact else N

    def scratch(self, m: int) -> np.ndarray:
        if self._xt is None or self._xt.shape[2] != m:
            G = self.ops.weh.shape[0]
            self._xt = np.empty((G * self.ops.lay.count, self.ops.lay.width, m), np.uint8)
        return self._xt

    def chunk(self, xt) -> None:
        """Merge the extremes of one chunk's outputs (``xt``: x by blocks, rows past a block
        holding zx) into ``lo`` / ``hi``."""
        GB, R, Mc = xt.shape
        ops = self.ops
        exact = ops.exact
        a, az, xg, zg = ops.wa, ops.az, xt, self.zx
        if exact and self.nonneg:
            a, az = ops.wpq[:, :, :R], 0
        elif exact:  # the GEMM operand [x+; x-], zero point 0
            zx = np.uint8(self.zx)
            xg = np.concatenate([np.maximum(xt, zx) - zx, zx - np.minimum(xt, zx)], axis=1)
            a, az, zg = ops.wpq, 0, 0
        a = np.ascontiguousarray(a)
        if ort_available():
            sr = _ort_run(a, az, xg, np.full((GB, 1, Mc), zg, np.uint8))
        else:
            sr = exact_sums(a, xg, az, zg, _U8, _U8)
        # the bounds pass works in sr's dtype: int32 while every partial sum fits it
        sr = sr.astype(np.int32 if ops.weh.shape[1] < INT32_K else np.int64, copy=False)
        ntask = ops.weh.shape[0] * -(-Mc // LANES)
        res = np.empty((ntask, 3), np.int64)
        lay = ops.lay
        scan_blocks(sr, exact, xt, np.int64(self.zx), ops.zw, ops.w2, ops.weh, lay.starts,
                    lay.lens, lay.first, lay.last, self.lo, self.hi, res)  # fmt: skip
        self.lo, self.hi = min(self.lo, int(res[:, 0].min())), max(self.hi, int(res[:, 1].max()))
        rate = HIT_RATE if self.nonneg else 4 * HIT_RATE  # [x+; x-]: a GEMM twice as long
        if not exact and res[:, 2].sum() > rate * GB * Mc:
            ops.exact = True  # this layer's data pass the bounds too rarely: exact P, Q


@njit(cache=True, parallel=True)
def transpose_blocks(x, zx, order, starts, lens, out):
    """``out[g*nb + b, u, m] = x[g, m, order[starts[b] + u]]`` for ``u < lens[b]``; the rows
    past a block's length hold ``zx`` (no product)."""
    G, M, K = x.shape
    GB, R, Mc = out.shape
    nb = GB // G
    for task in prange(GB):
        g = task // nb
        b = task - g * nb
        s0 = starts[b]
        n = lens[b]
        for m0 in range(0, M, 256):  # tiles of outputs: the strided reads stay in cache
            m1 = min(M, m0 + 256)
            for u in range(n):
                k = order[s0 + u]
                o = out[task, u]
                for m in range(m0, m1):
                    o[m] = x[g, m, k]
        for u in range(n, R):
            out[task, u, :] = zx


@njit(cache=True, parallel=True)
def gather_blocks(flat, base, off, zx, starts, lens, out):
    """:func:`conv_blocks` from a padded NHWC copy of x (:func:`pad_nhwc`, the padding holding
    ``zx``), flattened to ``flat``: ``out[g*nb + b, u, m] = flat[base[m] + off[g, starts[b] +
    u]]``, ``base[m]`` the offset of output m's window origin (image n, row oh*sh, column
    ow*sw, channel 0) and ``off[g, t]`` that of product t of group g, ``((i*dh) * Wp + j*dw)
    * C + g*Cg + c``; rows past a block's length hold ``zx``. Faster than the line copies of
    :func:`conv_blocks` where output lines are short (a few outputs: :data:`GATHER_WO`)."""
    GB, R, Mc = out.shape
    nb = starts.shape[0]
    for task in prange(GB):
        g = task // nb
        b = task - g * nb
        n = lens[b]
        for m0 in range(0, Mc, 512):  # tiles of outputs: their windows stay in cache
            m1 = min(Mc, m0 + 512)
            for u in range(n):
                ot = off[g, starts[b] + u]
                o = out[task, u]
                for m in range(m0, m1):
                    o[m] = flat[base[m] + ot]
        for u in range(n, R):
            out[task, u, :] = zx


@njit(cache=True, parallel=True)
def conv_blocks(x, zx, l0, l1, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, starts, lens, out):
    """:func:`transpose_blocks` for a convolution, straight from ``x`` (N, C, H, W): output
    lines ``l0 .. l1`` (line ``n * ho + oh``: ``wo`` outputs), product ``t = (c * kh + i) * kw
    + j`` of group g reading ``x[n, g * Cg + c, oh * sh - pt + i * dh, ow * sw - pl + j * dw]``,
    ``zx`` outside ``x`` (the convolution's padding) and past a block."""
    N, C, H, W = x.shape
    GB, R, Mc = out.shape
    nb = starts.shape[0]
    G = GB // nb
    Cg = C // G
    for task in prange(GB * R):
        gb = task // R
        u = task - gb * R
        g = gb // nb
        b = gb - g * nb
        o = out[gb, u]
        if u >= lens[b]:  # past the block: no product
            o[:] = zx
            continue
        t = starts[b] + u
        c = t // (kh * kw)
        i = (t - c * kh * kw) // kw
        j = t - c * kh * kw - i * kw
        # the outputs whose input column is inside x: ow in [lo_w, hi_w)
        lo_w = min(wo, max(0, -((j * dw - pl) // sw)))
        hi_w = max(lo_w, min(wo, (W - 1 - j * dw + pl) // sw + 1))
        if sh == 1 and sw == 1 and wo == W:
            _tap_runs(x, g * Cg + c, i * dh - pt, j * dw - pl, lo_w, hi_w, zx, l0, l1, ho, wo, o)
        else:
            _tap_lines(x, g * Cg + c, i * dh - pt, lo_w * sw - pl + j * dw, lo_w, hi_w, sh, sw,
                       zx, l0, l1, ho, wo, o)  # fmt: skip


@njit(cache=True)
def _tap_runs(x, ch, ih0, dj, lo_w, hi_w, pad, l0, l1, ho, wo, o):
    """:func:`_tap_lines` for unit strides and ``wo == W``: an image's lines inside x read its
    rows ``oh + ih0`` shifted by ``dj`` columns, one contiguous run of the plane (the
    columns a line takes from its neighbour row are then set to ``pad``)."""
    H, W = x.shape[2], x.shape[3]
    line = l0
    while line < l1:
        n = line // ho
        a = line - n * ho  # this image's lines a .. b in the chunk
        b = min(ho, a + l1 - line)
        d = (line - l0 - a) * wo  # where the image's line 0 would be
        v0 = min(b, max(a, -ih0))  # lines whose input row is inside x
        v1 = max(v0, min(b, H - ih0))
        o[d + a * wo : d + v0 * wo] = pad
        o[d + v1 * wo : d + b * wo] = pad
        if v1 > v0:
            s0 = (v0 + ih0) * W + lo_w + dj
            d0 = d + v0 * wo + lo_w
            run = (v1 - v0 - 1) * wo + hi_w - lo_w
            src = x[n, ch].ravel()[s0 : s0 + run]
            dst = o[d0 : d0 + run]
            for k in range(run):
                dst[k] = src[k]
            for v in range(v0, v1):
                o[d + v * wo : d + v * wo + lo_w] = pad
                o[d + v * wo + hi_w : d + (v + 1) * wo] = pad
        line += b - a


@njit(cache=True)
def _tap_lines(x, ch, ih0, iw0, lo_w, hi_w, sh, sw, pad, l0, l1, ho, wo, o):
    """One kernel tap's operand row of :func:`conv_blocks`: line ``(n, oh)`` reads
    ``x[n, ch, oh * sh + ih0, iw0 + (ow - lo_w) * sw]`` for ``ow`` in ``[lo_w, hi_w)``,
    ``pad`` elsewhere."""
    H = x.shape[2]
    nin = hi_w - lo_w
    n = l0 // ho
    oh = l0 - n * ho
    d0 = 0
    for _ in range(l1 - l0):
        ih = oh * sh + ih0
        dst = o[d0 : d0 + wo]
        if ih < 0 or ih >= H:
            dst[:] = pad
        else:
            dst[:lo_w] = pad
            dst[hi_w:] = pad
            d = dst[lo_w:hi_w]
            seg = x[n, ch, ih, iw0 : iw0 + (nin - 1) * sw + 1 : sw]
            for k in range(nin):
                d[k] = seg[k]
        d0 += wo
        oh += 1
        if oh == ho:
            oh = 0
            n += 1


@njit(cache=True)
def _track_scan(xt, gb, m, zx, weh, g, start, n_products, base, mn, mx):
    """Reduce output row ``m``'s block ``gb`` product by product from ``base`` (per output), in
    hardware order; returns ``(mn, mx)`` merged with the partial sums met."""
    cur = base.copy()
    for u in range(n_products):
        a = np.int64(xt[gb, u, m]) - zx
        wr = weh[g, start + u]
        for n in range(cur.shape[0]):
            v = cur[n] + a * wr[n]
            cur[n] = v
            mn = min(mn, v)
            mx = max(mx, v)
    return mn, mx


@njit(cache=True)
def _root_up(v):
    """An integer >= sqrt(v) for an integer 0 <= v < 2^53 (the float root is within an ulp)."""
    return np.int64(np.sqrt(np.float64(v))) + 1


@njit(cache=True)
def _bound_task(sr, exact, xt, zx, zw, w2, weh, starts, lens, first, last, g, m0, L, lo, hi,
                t, s, xs, x2, rx, hit, base):  # fmt: skip
    """:func:`scan_blocks` on outputs ``m0 .. m0 + L`` of group g, in ``sr``'s dtype; returns
    ``(min, max, blocks reduced exactly)``. Scratch: ``t`` (the tile register, the accumulator
    without tiles) and ``s`` (the accumulator, with tiles) (N, LANES); ``xs`` / ``x2`` (the
    block's ``sum_u (x_u - zx)`` and ``sum_u (x_u - zx)^2`` per output row), ``rx``
    (``_root_up(x2)``: the bound is ``rx * _root_up(w2)``) and ``hit`` (LANES,); ``base`` (N,).
    Slices keep the inner loops free of index checks, so they vectorize."""
    GB, R, Mc = sr.shape
    N = R // 2 if exact else R
    G = weh.shape[0]
    nb = GB // G
    s[:] = 0
    mn = lo
    mx = hi
    reduced = 0
    for b in range(nb):
        gb = g * nb + b
        if first[b]:
            t[:] = 0
        hit[:] = False
        nmn = mn
        nmx = mx
        if exact:  # rows < N: P, the others Q; the block's partial sums lie in [t - Q, t + P]
            for n in range(N):
                p = sr[gb, n, m0 : m0 + L]
                q = sr[gb, N + n, m0 : m0 + L]
                tn = t[n]
                for i in range(L):
                    up = tn[i] + p[i]
                    hit[i] |= (up > mx) | (tn[i] - q[i] < mn)
                    v = up - q[i]
                    tn[i] = v
                    nmn = min(nmn, v)
                    nmx = max(nmx, v)
        else:
            xs[:] = 0
            x2[:] = 0
            for u in range(lens[b]):
                xr = xt[gb, u, m0 : m0 + L]
                for i in range(L):
                    a = np.int32(xr[i]) - np.int32(zx)
                    xs[i] += a
                    x2[i] += a * a
            for i in range(L):
                rx[i] = _root_up(x2[i])
            lo2 = 2 * mn
            hi2 = 2 * mx
            for n in range(N):
                sn = sr[gb, n, m0 : m0 + L]
                tn = t[n]
                zn = zw[g, n]
                rw = _root_up(w2[gb, n])
                for i in range(L):
                    v = tn[i] + sn[i] - zn * xs[i]  # the block's last partial sum
                    c = tn[i] + v  # 2 base + S
                    hit[i] |= min(hi2 - c, c - lo2) < rx[i] * rw
                    tn[i] = v
                    nmn = min(nmn, v)
                    nmx = max(nmx, v)
        for i in range(L):
            if hit[i]:  # the bound leaves [mn, mx]: reduce the block product by product
                reduced += 1
                for n in range(N):
                    if exact:
                        base[n] = t[n, i] - np.int64(sr[gb, n, m0 + i]) + sr[gb, N + n, m0 + i]
                    else:
                        base[n] = t[n, i] - (np.int64(sr[gb, n, m0 + i]) - zw[g, n] * xs[i])
                mn, mx = _track_scan(xt, gb, m0 + i, zx, weh, g, starts[b], lens[b], base, mn, mx)
        mn = min(mn, nmn)
        mx = max(mx, nmx)
        if last[b]:  # the tile register is added to the accumulator
            for n in range(N):
                sn = s[n]
                tn = t[n]
                for i in range(L):
                    v = sn[i] + tn[i]
                    sn[i] = v
                    mn = min(mn, v)
                    mx = max(mx, v)
    return mn, mx, reduced


@njit(cache=True, parallel=True)
def scan_blocks(sr, exact, xt, zx, zw, w2, weh, starts, lens, first, last, lo, hi, res):
    """The bounds pass over one chunk: ``sr`` (G*nb, N, Mc) holds ``sum_u w_u (x_u - zx)``
    (raw weights) of every block and output, or with ``exact`` (G*nb, 2N, Mc) ``P`` (rows <
    N) and ``Q``; ``xt`` the operand (:func:`transpose_blocks`), ``zw`` (G, N) and ``w2``
    (G*nb, N) from :class:`LayerOperands`. Per run of :data:`LANES` outputs of one group,
    blocks in order: a block whose partial sums the bound cannot keep within the running
    ``[lo, hi]`` for some output is reduced exactly for that output row (:func:`_track_scan`);
    every output's base then moves to the block's last partial sum (and, closing a tile, the
    accumulator takes the tile), all of them partial sums. Writes each run's ``(min, max,
    blocks reduced exactly)`` to ``res`` (G * ceil(Mc / LANES), 3)."""
    Mc = sr.shape[2]
    N = sr.shape[1] // 2 if exact else sr.shape[1]
    G = weh.shape[0]
    nt = (Mc + LANES - 1) // LANES
    per = max(1, SPAN // max(N, 1))  # runs of LANES outputs per task: few outputs, long tasks
    ns = (nt + per - 1) // per
    for task in prange(G * ns):
        g = task // ns
        t = np.empty((N, LANES), sr.dtype)
        s = np.empty((N, LANES), np.int64)
        xs = np.empty(LANES, sr.dtype)
        x2 = np.empty(LANES, sr.dtype)
        rx = np.empty(LANES, sr.dtype)
        hit = np.empty(LANES, np.bool_)
        base = np.empty(N, np.int64)
        j0 = (task - g * ns) * per
        for j in range(j0, min(nt, j0 + per)):
            m0 = j * LANES
            L = min(LANES, Mc - m0)
            res[g * nt + j, 0], res[g * nt + j, 1], res[g * nt + j, 2] = _bound_task(
                sr, exact, xt, zx, zw, w2, weh, starts, lens, first, last, g, m0, L, lo, hi,
                t, s, xs, x2, rx, hit, base,
            )  # fmt: skip
