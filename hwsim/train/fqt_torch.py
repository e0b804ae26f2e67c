"""Fully quantized training in PyTorch: linear and conv layers with an 8-bit forward and a
quantized backward (the FQT paper, seed 001; quantizers in :mod:`hwsim.train.fqt`).

A layer converted by :func:`convert` computes, for input ``x``, weight ``W`` and bias ``b``:

* **forward**: ``x`` and ``W`` on symmetric per-tensor 8-bit grids (``forward_bits``), round
  half to even, scale ``max|.| / (2^(b-1) - 1)`` (activations per batch); ``y = Q(x) Q(W)^T + b``
  -- the quantized forward of QAT, with straight-through gradients;
* **backward**, with ``grad = None`` (QAT): the exact gradients of that forward;
  with a gradient quantizer ``grad`` the output gradient ``G`` (rows = samples, or tokens for a
  ``(B, T, D)`` input; flattened) is stochastically quantized first, then
  ``dX = Q(G) Q(W)`` and ``dW = Q(G)^T Q(x)``:

  - ``psq`` / ``bhq``: on the dequantized values, in float64 (the quantizers' own float ranges:
    there is no integer datapath for a per-sample float scale -- the reason for the hardware
    variant);
  - ``ptq``: integer codes ``c`` with one scale and an integer zero point
    (:func:`hwsim.train.fqt.encode_ptq`): ``dX = s_g s_w (c - z) c_w``, ``dW = s_g s_x (c -
    z)^T c_x``;
  - ``psq-shift`` (the paper's proposed hardware): symmetric codes, one per-tensor scale and
    per-sample shifts ``s_n`` in ``[0, S_max]`` (:func:`hwsim.train.fqt.encode_psq_shift`):
    ``dX[n] = s_g 2^-s_n s_w (c[n] c_w)``, and the weight gradient -- whose reduction runs over
    the batch -- accumulates each sample's partial sum ``P_n = c[n]^T c_x[n]`` on its own,
    shifts it right by ``s_n`` onto the base grid (round half away, eq. 13-14 of
    docs/numerics.md) and sums: ``dW = s_g s_x sum_n round(P_n / 2^s_n)``.

  For ``ptq`` and ``psq-shift`` ``datapath="integer"`` computes those integer sums on hwsim's
  datapath (:func:`hwsim.datapath.gemm`, :func:`hwsim.datapath.gemm_per_sample_shift`: true-width
  accumulators, overflow counters in ``layer.counters``); ``datapath="float"`` computes the same
  integer sums exactly and fast (float64 BLAS, exact below 2^53; an unbounded int64 Numba kernel
  for the per-sample-shift sum) -- the two give identical gradients wherever the integer
  accumulators do not overflow (``tests/train/test_fqt_torch.py``).

Stochastic rounding draws come from one ``numpy.random.Generator`` per layer, seeded
``[seed, layer index]``: the same seed gives the same training run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numba import njit, prange
from torch import nn

from hwsim.datapath import Accumulator, Counters, Operand, gemm, gemm_per_sample_shift
from hwsim.errors import HwsimError
from hwsim.numerics import IntFormat, Overflow, RoundingMode
from hwsim.train.fqt import GradQuant, encode_psq_shift, encode_ptq, quantize_grad

DATAPATHS = ("float", "integer")
INTEGER_QUANTIZERS = ("ptq", "psq-shift")


@dataclass(frozen=True)
class FQTConfig:
    """``grad``: the gradient quantizer (None: QAT, quantized forward only); ``forward_bits``:
    activation and weight width; ``datapath``: ``float`` or ``integer`` (``ptq`` and
    ``psq-shift`` only); ``acc_bits`` / ``overflow``: the integer datapath's accumulators;
    ``seed``: stochastic rounding."""

    grad: GradQuant | None = None
    forward_bits: int = 8
    datapath: str = "float"
    acc_bits: int = 32
    overflow: str = "wrap"
    seed: int = 0

    def __post_init__(self):
        if self.datapath not in DATAPATHS:
            raise HwsimError(f"datapath must be one of {', '.join(DATAPATHS)}; got {self.datapath!r}")
        if self.datapath == "integer" and (
            self.grad is None or self.grad.kind not in INTEGER_QUANTIZERS
        ):
            raise HwsimError(
                f"datapath 'integer' needs a gradient quantizer with integer codes "
                f"({', '.join(INTEGER_QUANTIZERS)}); got {self.grad.kind if self.grad else None!r}"
            )
        if not (isinstance(self.forward_bits, int) and 2 <= self.forward_bits <= 16):
            raise HwsimError(f"forward_bits must be an int in [2, 16], got {self.forward_bits!r}")

    @property
    def accumulator(self) -> Accumulator:
        return Accumulator(bits=self.acc_bits, overflow=Overflow(self.overflow))


def _sym_codes(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor codes (round half to even) and scale ``max|t| / (2^(b-1) - 1)``."""
    qmax = 2 ** (bits - 1) - 1
    r = float(t.detach().abs().max()) if t.numel() else 0.0
    s = r / qmax if r > 0 else 1.0
    return torch.clamp(torch.round(t.detach() / s), -qmax, qmax), s


@dataclass
class _State:
    """A converted layer's quantization state: its config, RNG and datapath counters."""

    cfg: FQTConfig
    rng: np.random.Generator
    counters: Counters = field(default_factory=Counters)


def _grad_codes(g: np.ndarray, st: _State):
    """``(kind, codes, scale, zero point or per-row shifts)`` for the integer paths, or
    ``("float", dequantized)`` for psq / bhq."""
    q = st.cfg.grad
    if q.kind == "ptq":
        c, s, z = encode_ptq(g, q.bits, st.rng)
        return "ptq", np.asarray(c, np.int64), float(s), int(z)
    if q.kind == "psq-shift":
        c, s, sh = encode_psq_shift(g, q.bits, q.s_max, st.rng)
        return "psq-shift", np.asarray(c, np.int64), float(s), np.asarray(sh, np.int64)
    return "float", quantize_grad(g, q, st.rng)


def _int_gemm(a: np.ndarray, b: np.ndarray, a_fmt: IntFormat, a_zp: int, b_fmt: IntFormat,
              st: _State) -> np.ndarray:
    """``(a - a_zp) @ b`` on integers: hwsim's datapath, or float64 (exact) -- float64 out."""
    if st.cfg.datapath == "integer":
        res = gemm(a, b, x_operand=Operand(a_fmt, zero_point=a_zp),
                   w_operand=Operand(b_fmt), acc=st.cfg.accumulator)  # fmt: skip
        st.counters.merge(res.counters)
        return np.asarray(res.values, np.float64)
    return (a.astype(np.float64) - a_zp) @ b.astype(np.float64)


def _shift_sum(g_t: np.ndarray, x: np.ndarray, groups: int, shifts: np.ndarray, g_fmt: IntFormat,
               x_fmt: IntFormat, st: _State) -> np.ndarray:
    """``sum_n round_half_away(P_n / 2^s_n)``, ``P_n = g_t[:, group n] @ x[group n]``: the
    per-sample-shift accumulation (datapath, or float64 with the same rounding)."""
    if st.cfg.datapath == "integer":
        acc = st.cfg.accumulator
        res = gemm_per_sample_shift(
            g_t, x, groups, shifts, x_operand=Operand(g_fmt), w_operand=Operand(x_fmt),
            group_acc=acc, final_acc=acc, rounding=RoundingMode.HALF_AWAY,
            s_max=int(max(int(shifts.max()) if shifts.size else 0, st.cfg.grad.s_max)),
        )  # fmt: skip
        st.counters.merge(res.group_counters)
        st.counters.merge(res.final_counters)
        return np.asarray(res.values, np.float64)
    out = np.empty((g_t.shape[0], x.shape[1]), np.int64)
    _shift_sum_kernel(
        np.ascontiguousarray(g_t, np.int64),
        np.ascontiguousarray(x, np.int64),
        x.shape[0] // groups,
        np.ascontiguousarray(shifts, np.int64),
        out,
    )
    return out.astype(np.float64)


@njit(cache=True, parallel=True)
def _shift_sum_kernel(g_t, x, kg, shifts, out):
    """``out[m, n] = sum_g round_half_away(P_g / 2^shifts[g])``, ``P_g = sum_{k in group g}
    g_t[m, k] x[k, n]``: exact int64 (the float path of :func:`_shift_sum`; its equality with
    the datapath's ``gemm_per_sample_shift`` is tested)."""
    M = g_t.shape[0]
    N = x.shape[1]
    G = shifts.shape[0]
    for m in prange(M):
        for n in range(N):
            total = 0
            for grp in range(G):
                p = 0
                for k in range(grp * kg, (grp + 1) * kg):
                    p += g_t[m, k] * x[k, n]
                s = shifts[grp]
                if s == 0:
                    total += p
                elif p >= 0:
                    total += (p + (1 << (s - 1))) >> s
                else:
                    total -= (-p + (1 << (s - 1))) >> s
            out[m, n] = total


def _grads(g: np.ndarray, cx: np.ndarray, sx: float, cw: np.ndarray, sw: float, groups: int,
           st: _State, bits_fwd: int):
    """Quantized ``(dX, dW)`` for ``g`` (M, O) rows grouped ``groups`` per sample, the forward's
    codes ``cx`` (M, K) and ``cw`` (O, K) with their scales: float64 numpy."""
    f8 = IntFormat(bits_fwd, True)
    kind, *rest = _grad_codes(g, st)
    if kind == "float":
        (gq,) = rest
        return sw * (gq @ cw.astype(np.float64)), sx * (gq.T @ cx.astype(np.float64))
    c, s, aux = rest
    bits = st.cfg.grad.bits
    if kind == "ptq":
        gf = IntFormat(bits, False)
        dx = _int_gemm(c, cw, gf, aux, f8, st) * (s * sw)
        dw = _int_gemm(c.T.copy(), cx, gf, aux, f8, st) * (s * sx)
        return dx, dw
    gf = IntFormat(bits, True)
    per_row = np.repeat(aux, g.shape[0] // groups)  # each row's sample shift
    dx = _int_gemm(c, cw, gf, 0, f8, st) * (s * sw * np.exp2(-per_row.astype(np.float64)))[:, None]
    dw = _shift_sum(c.T.copy(), cx, groups, aux, gf, f8, st) * (s * sx)
    return dx, dw


class _FQTLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, st: _State):
        bits = st.cfg.forward_bits
        cx, sx = _sym_codes(x, bits)
        cw, sw = _sym_codes(w, bits)
        y = F.linear(cx * sx, cw * sw, b)
        ctx.save_for_backward(cx, cw)
        ctx.st, ctx.sx, ctx.sw, ctx.shape, ctx.bias = st, sx, sw, x.shape, b is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        cx, cw = ctx.saved_tensors
        st, sx, sw = ctx.st, ctx.sx, ctx.sw
        gb = gy.reshape(-1, gy.shape[-1]).sum(0) if ctx.bias else None
        if st.cfg.grad is None:  # QAT: the exact gradients of the quantized forward
            gx = gy @ (cw * sw)
            gw = gy.reshape(-1, gy.shape[-1]).T @ (cx * sx).reshape(-1, cx.shape[-1])
            return gx, gw, gb, None
        g = gy.detach().reshape(-1, gy.shape[-1]).double().numpy()
        x2 = cx.reshape(-1, cx.shape[-1]).numpy().astype(np.int64)
        groups = g.shape[0]  # a row per sample (or token: (B, T, D) inputs flatten to rows)
        dx, dw = _grads(g, x2, sx, cw.numpy().astype(np.int64), sw, groups, st,
                        st.cfg.forward_bits)  # fmt: skip
        gx = torch.from_numpy(dx).to(gy.dtype).reshape(ctx.shape)
        return gx, torch.from_numpy(dw).to(gy.dtype), gb, None


class _FQTConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, st: _State, conv: dict):
        bits = st.cfg.forward_bits
        cx, sx = _sym_codes(x, bits)
        cw, sw = _sym_codes(w, bits)
        y = F.conv2d(cx * sx, cw * sw, b, **conv)
        ctx.save_for_backward(cx, cw)
        ctx.st, ctx.sx, ctx.sw, ctx.conv, ctx.x_shape = st, sx, sw, conv, x.shape
        ctx.bias = b is not None
        return y

    @staticmethod
    def backward(ctx, gy):
        cx, cw = ctx.saved_tensors
        st, sx, sw, conv = ctx.st, ctx.sx, ctx.sw, ctx.conv
        gb = gy.sum((0, 2, 3)) if ctx.bias else None
        if st.cfg.grad is None:
            gx = torch.nn.grad.conv2d_input(ctx.x_shape, cw * sw, gy, **conv)
            gw = torch.nn.grad.conv2d_weight(cx * sx, cw.shape, gy, **conv)
            return gx, gw, gb, None, None
        N, O, Ho, Wo = gy.shape
        G = conv.get("groups", 1)
        kh, kw = cw.shape[2:]
        geom = {"dilation": conv["dilation"], "padding": conv["padding"], "stride": conv["stride"]}
        cols = F.unfold(cx, (kh, kw), **geom)  # (N, C*kh*kw, L), channel-major rows
        L = cols.shape[-1]
        # the gradient's rows are samples: quantize (N, O*L) per sample once, lay out (N*L, O)
        kind, *rest = _grad_codes(gy.detach().double().reshape(N, O * L).numpy(), st)
        f8 = IntFormat(st.cfg.forward_bits, True)
        rows = cols.shape[1] // G
        Og = O // G
        wm = cw.reshape(O, -1).numpy().astype(np.int64)
        gx_parts, dw_parts = [], []
        for g in range(G):  # one GEMM pair per group (depthwise: G = C)
            xc = cols[:, g * rows : (g + 1) * rows].transpose(1, 2).reshape(N * L, rows)
            xc = xc.numpy().astype(np.int64)
            wmat = wm[g * Og : (g + 1) * Og]
            if kind == "float":
                gm = rest[0].reshape(N, O, L)[:, g * Og : (g + 1) * Og]
                gm = gm.transpose(0, 2, 1).reshape(N * L, Og)
                dcols = sw * (gm @ wmat.astype(np.float64))
                dw = sx * (gm.T @ xc.astype(np.float64))
            else:
                c, s, aux = rest
                cm = c.reshape(N, O, L)[:, g * Og : (g + 1) * Og]
                cm = np.ascontiguousarray(cm.transpose(0, 2, 1).reshape(N * L, Og))
                bits = st.cfg.grad.bits
                if kind == "ptq":
                    gf = IntFormat(bits, False)
                    dcols = _int_gemm(cm, wmat, gf, aux, f8, st) * (s * sw)
                    dw = _int_gemm(cm.T.copy(), xc, gf, aux, f8, st) * (s * sx)
                else:
                    gf = IntFormat(bits, True)
                    row_scale = s * sw * np.exp2(-np.repeat(aux, L).astype(np.float64))
                    dcols = _int_gemm(cm, wmat, gf, 0, f8, st) * row_scale[:, None]
                    dw = _shift_sum(cm.T.copy(), xc, N, aux, gf, f8, st) * (s * sx)
            dcols_t = torch.from_numpy(dcols).reshape(N, L, rows).transpose(1, 2)
            gx_parts.append(F.fold(dcols_t, ctx.x_shape[2:], (kh, kw), **geom))
            dw_parts.append(dw)
        gx = torch.cat(gx_parts, dim=1)
        gw_t = torch.from_numpy(np.concatenate(dw_parts)).reshape(cw.shape)
        return gx.to(gy.dtype), gw_t.to(gy.dtype), gb, None, None


class FQTLinear(nn.Linear):
    """``nn.Linear`` with the quantized forward and backward of the module docstring."""

    def forward(self, x):
        return _FQTLinearFn.apply(x, self.weight, self.bias, self.fqt)


class FQTConv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding, any groups) with the quantized forward and backward."""

    def forward(self, x):
        conv = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                "groups": self.groups}  # fmt: skip
        return _FQTConv2dFn.apply(x, self.weight, self.bias, self.fqt, conv)


def convert(model: nn.Module, cfg: FQTConfig) -> nn.Module:
    """Turn every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (in place, parameters kept) into
    its FQT layer under ``cfg``; layer ``i`` (module order) draws from
    ``default_rng([cfg.seed, i])``. Returns ``model``."""
    i = 0
    for mod in model.modules():
        if isinstance(mod, nn.MultiheadAttention):
            # its in-projection is a bare parameter used by F.multi_head_attention_forward:
            # converting only out_proj would train a model half quantized without saying so
            raise HwsimError(
                "FQT cannot convert nn.MultiheadAttention (its in_proj_weight is not an "
                "nn.Linear); build attention from nn.Linear layers"
            )
        if type(mod) in (nn.Linear, FQTLinear):
            mod.__class__ = FQTLinear
        elif type(mod) in (nn.Conv2d, FQTConv2d):
            if mod.padding_mode != "zeros":
                raise HwsimError(f"FQT conv layers need zero padding, got {mod.padding_mode!r}")
            mod.__class__ = FQTConv2d
        else:
            continue
        mod.fqt = _State(cfg, np.random.default_rng([cfg.seed, i]))
        i += 1
    return model


def counters(model: nn.Module) -> Counters:
    """The integer datapath's counters over every FQT layer of ``model``."""
    total = Counters()
    for mod in model.modules():
        if isinstance(mod, (FQTLinear, FQTConv2d)):
            total.merge(mod.fqt.counters)
    return total
