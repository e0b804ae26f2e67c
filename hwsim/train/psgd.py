"""Position-based scaled gradient (PSGD): train a float model that per-tensor quantization keeps.

PSGD (Kim, Yoo, Kwak, NeurIPS 2020; official code ``Jangho-Kim/PSG-pytorch``) updates a weight
``w`` by ``w <- w - lr * s(w) o grad f(w)``: the gradient is multiplied element-wise by a factor
that is small where ``w`` sits on the b-bit quantization grid and large half-way between two grid
points, so weights settle on the grid and plain layer-wise (per-tensor) min-max quantization of
the trained float model loses little, without calibration data or a post-training step.

What the official code does (read at commit ``cb63ab9f``; line numbers of that version):

* **Grid** -- ``quant_module.py``, class ``min_max_post_training_symmetric`` (lines 97-118):
  symmetric restricted range, levels ``-(2^(b-1)-1) .. 2^(b-1)-1``,
  ``delta = max(|x_min|, x_max) / (2^(b-1)-1)``, then (``forward``, lines 120-129)
  ``x_restore = round(hardtanh(x / delta, valmin, valmax)) * delta`` with ``torch.round``
  (round half to even). :func:`quantize_symmetric` is that function.
* **Range** -- ``quant_module.py``, ``post_training_weight.update_range`` (lines 27-46): on every
  forward pass ``x_min = min(0, min w)``, ``x_max = max(0, max w)`` are folded into a running
  average with momentum 0.1 (``use_running_mean = True``):
  ``x_min <- 0.1 * x_min_new + 0.9 * (x_min_old or x_min_new)`` (a stored 0.0 counts as unset);
  the first call stores the values as they are. :class:`PSGD` keeps the same running range per
  parameter (``range_momentum=0.1``; ``None`` uses the current tensor's ``max|w|``).
* **Scaling** -- the same class's ``forward`` saves ``scale = |x - x_restore|`` and returns ``x``
  unchanged (the float weight is used in the forward pass); ``backward`` (lines 131-135) returns
  ``grad * scale * beta`` with ``beta = lambda_s`` ("Vanilla"; a commented-out "Non-seperable
  Scaling" divides by ``scale.max()``). So the *loss* gradient is scaled inside autograd, before
  the optimizer adds weight decay (unscaled) and before momentum. :class:`PSGD` scales ``.grad``
  and then runs the unchanged ``torch.optim.SGD`` step, which is the same computation.
* **Which parameters** -- ``our_network.py`` / ``quant_module.py``: the weights of every
  ``Conv2d_minmax`` and the weight *and bias* of every ``Linear_minmax`` (``Linear_minmax.forward``
  passes the bias through its own ``bquantizer``, a separate per-tensor range); convolutions have
  no bias; BatchNorm parameters are never scaled. With ``--first_last_quant 1`` (the default) the
  first conv and the last linear layer are scaled too, at ``8`` bits when ``w_bit < 4``
  (``fl_bits = 8 if w_bits < 4 else w_bits``, ``our_network.py`` ``ResNet.__init__``).
* **Optimizer and hyper-parameters** -- ``train.py``: ``optim.SGD(lr=0.01, momentum=0.9,
  nesterov=False, weight_decay=1e-4)``, weight decay set to 0 for ``w_bit == 2``,
  ``--lambda_s`` default 150, ``--w_bit`` default 4; PSGD fine-tunes a model pre-trained with SGD
  for 82 epochs (epochs 83-150, lr 0.01 decayed by 10x at epoch 123). With Adam the learning
  rate is multiplied by ``1e-2 * lambda_s``.

Two scaling contracts are offered (:func:`psgd_scale`):

* ``"official"`` (the default: it is what the published results were produced with, and on
  hwsim's digits models it does what it should, see below): ``s = lambda_s * |w - Q_b(w)|``;
  ``0 <= s <= lambda_s * delta / 2`` (larger only for weights clipped by a lagging range). The
  step therefore grows with the weights' range, a positive feedback: with lambda_s 150 from the
  first step at lr 0.05 the mlp's weights run away (max|w| ~1e5 after 10 epochs) and its
  accuracy drops to chance; at 2 bits (``delta`` 7x larger than at 4) lambda_s 150 collapses
  the mlp even after the SGD warm-up, and about 50 works.
* ``"normalized"`` (the NeurIPS rebuttal / Appendix B form, for which the convergence argument
  with step ``<= 1/L`` holds): ``s = (|w - Q_b(w)| + eps) / (max |w - Q_b(w)| + eps)``, the max
  over the tensor, so ``0 < s <= 1``; ``lambda_s`` is not used. The factor is about 1/2 on
  average, so it needs a larger learning rate than SGD (0.2 rather than 0.05 on digits).

hwsim-specific notes (measured with :func:`hwsim.train.fit.train`, 30 epochs, lr 0.05):

* The official recipe fine-tunes an SGD-trained model; ``train(optimizer="psgd")`` does the same
  in one run, plain SGD for the first half of the epochs (``psgd_warmup``).
* By default (``bn_fold="weights"``) hwsim folds BatchNorm into the preceding conv before
  quantizing its weight per tensor, so the grid that matters for a conv+BN is that of
  ``w * gamma / sqrt(var + eps)``, not of ``w``: PSGD on the raw conv weights (the official code
  keeps BN in float) is then partly undone by the folding. Two remedies: quantize with
  ``bn_fold="register"`` (the conv's own weights on the grid, the BN factor in the scale
  register: what the paper evaluates), or train with ``fold=`` / ``train(fold_bn=True)``, which
  puts the grid on the folded weight. On mnist5k rescnn (3 seeds, W4A8 data-free) PSGD gives
  0.949 with ``bn_fold="register"`` (SGD 0.842), and ``fold_bn=True`` gives 0.948 with the
  default folding (SGD 0.854, raw PSGD 0.847).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from hwsim.errors import HwsimError
from hwsim.numerics.affine import symmetric_grid
from hwsim.train import SCALINGS

#: ``--lambda_s`` default of the official ``train.py`` (and of the README's reproduction command).
DEFAULT_LAMBDA_S = 150.0
#: Momentum of the running min/max range of ``post_training_weight`` in the official code.
RANGE_MOMENTUM = 0.1
#: ``eps`` of the normalized scaling (the rebuttal gives none; any tiny positive value keeps s > 0).
DEFAULT_EPS = 1e-12


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise HwsimError(f"bits must be an int in [2, 16], got {bits!r}")
    return bits


def quantize_symmetric(w: torch.Tensor, bits: int, absmax: float | None = None) -> torch.Tensor:
    """``Q_b(w)``: symmetric restricted-range per-tensor min-max quantization, dequantized.

    Levels ``-(2^(b-1)-1) .. 2^(b-1)-1`` (zero is a level), step
    ``delta = r / (2^(b-1)-1)`` with ``r = max|w|`` (or ``absmax`` if given: the official code's
    running range), ``Q_b(w) = round_half_even(clip(w / delta, -qmax, qmax)) * delta``, computed as
    ``min_max_post_training_symmetric.forward`` does (``quant_module.py``): ``delta`` a Python
    float (double), the division, clipping, rounding and product in ``w``'s dtype. This is also
    hwsim's ``symmetric`` per-tensor weight grid (``hwsim.quant.quantize.quantize_weights``). A
    zero range (all-zero tensor) quantizes to zeros.
    """
    _check_bits(bits)
    r = float(w.detach().abs().max()) if absmax is None else float(absmax)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"quantization range must be finite and >= 0, got {r}")
    if r == 0.0:
        return torch.zeros_like(w)
    delta, qmax = symmetric_grid(r, bits)
    return torch.round(torch.clamp(w / delta, -qmax, qmax)) * delta


def psgd_scale(
    w: torch.Tensor,
    bits: int,
    lambda_s: float = DEFAULT_LAMBDA_S,
    mode: str = "official",
    *,
    eps: float = DEFAULT_EPS,
    absmax: float | None = None,
    fold: torch.Tensor | None = None,
) -> torch.Tensor:
    """The element-wise factor PSGD multiplies the gradient of ``w`` by (same shape as ``w``).

    With ``d = |w - Q_b(w)|`` (:func:`quantize_symmetric`, range ``max|w|`` or ``absmax``):

    * ``mode="official"`` (default): ``lambda_s * d`` -- ``backward`` of
      ``min_max_post_training_symmetric`` in ``Jangho-Kim/PSG-pytorch/quant_module.py``
      (``grad_top * scale * self.beta``). Zero on the grid, at most ``lambda_s * delta / 2``
      inside the range.
    * ``mode="normalized"``: ``(d + eps) / (max(d) + eps)`` -- the rebuttal's
      ``s(x) = (|x - x_bar| + eps) / (||x - x_bar||_inf + eps)`` with ``x_bar`` the nearest grid
      point; ``0 < s <= 1``. ``lambda_s`` is ignored.

    ``fold`` (hwsim extension, not in the official code): a per-output-channel factor ``k``
    (``gamma / sqrt(running_var + eps)`` of the BatchNorm that follows a conv). The grid is then
    that of the folded weight ``w * k``, which is what hwsim quantizes, and
    ``d = |w*k - Q_b(w*k)| / |k|``: the distance, in units of ``w``, to the nearest ``w`` whose
    folded value is on the grid (``absmax`` is then the folded weight's range).
    """
    if mode not in SCALINGS:
        raise HwsimError(f"unknown PSGD scaling {mode!r}: use one of {', '.join(SCALINGS)}")
    with torch.no_grad():
        if fold is None:
            d = (w - quantize_symmetric(w, bits, absmax)).abs()
        else:
            k = fold.reshape((-1,) + (1,) * (w.dim() - 1))
            wf = w * k
            d = (wf - quantize_symmetric(wf, bits, absmax)).abs() / k.abs().clamp_min(1e-30)
        if mode == "official":
            return d * lambda_s
        return (d + eps) / (d.max() + eps)


class PSGD(torch.optim.SGD):
    """``torch.optim.SGD`` whose step first multiplies each scaled parameter's ``.grad`` in place
    by :func:`psgd_scale`, then runs the unchanged SGD update (weight decay added unscaled,
    then momentum), which is where the official code's autograd ``backward`` puts the scaling.

    A parameter group is scaled at ``group["psg_bits"]`` bits (``None``: a plain SGD group);
    groups without the key get ``bits``. :func:`psgd_param_groups` builds the groups the official
    code uses. The quantization range of each parameter is the official running average
    (``range_momentum``, 0.1) of ``min(0, min w)`` and ``max(0, max w)``, updated once per step
    from the weights the forward pass used; ``range_momentum=None`` uses the current ``max|w|``.
    Defaults follow the official ``train.py``: momentum 0.9, no Nesterov, weight decay 1e-4.
    """

    def __init__(
        self,
        params,
        lr: float,
        bits: int = 4,
        lambda_s: float = DEFAULT_LAMBDA_S,
        scaling: str = "official",
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        nesterov: bool = False,
        range_momentum: float | None = RANGE_MOMENTUM,
        eps: float = DEFAULT_EPS,
        fold: dict | None = None,
    ):
        _check_bits(bits)
        if scaling not in SCALINGS:
            raise HwsimError(f"unknown PSGD scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
        if not (lambda_s > 0 and math.isfinite(lambda_s)):
            raise HwsimError(f"lambda_s must be finite and > 0, got {lambda_s!r}")
        if range_momentum is not None and not 0.0 < range_momentum <= 1.0:
            raise HwsimError(f"range_momentum must be in (0, 1] or None, got {range_momentum!r}")
        super().__init__(
            params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov
        )
        extra = dict(
            psg_bits=bits, lambda_s=lambda_s, scaling=scaling,
            range_momentum=range_momentum, eps=eps,
        )  # fmt: skip
        self.defaults.update(extra)
        for group in self.param_groups:
            for k, v in extra.items():
                group.setdefault(k, v)
            if group["psg_bits"] is not None:
                _check_bits(group["psg_bits"])
        #: When False, ``step`` is a plain SGD step (the range is still tracked).
        self.enabled = True
        #: ``id(parameter)`` -> the BatchNorm folded into it (``fold``, see :func:`bn_fold_map`)
        self.fold = {id(p): bn for p, bn in (fold or {}).items()}

    def _absmax(self, w: torch.Tensor, momentum: float | None, p: torch.Tensor) -> float:
        """The official running range ``max(|x_min|, x_max)`` of ``w`` (parameter ``p``, or its
        BN-folded value) after this step's update."""
        lo, hi = min(0.0, float(w.min())), max(0.0, float(w.max()))
        if momentum is None:
            return max(-lo, hi)
        st = self.state[p]
        if "psg_range" in st:
            old_lo, old_hi = st["psg_range"]
            # ``momentum * new + (1 - momentum) * (old or new)``: a stored 0.0 counts as unset
            lo = momentum * lo + (1 - momentum) * (old_lo or lo)
            hi = momentum * hi + (1 - momentum) * (old_hi or hi)
        st["psg_range"] = (lo, hi)
        return max(abs(lo), hi)

    @torch.no_grad()
    def scale_grads(self) -> None:
        """Multiply the gradients of the scaled parameters by their PSGD factor, in place."""
        for group in self.param_groups:
            bits = group["psg_bits"]
            if bits is None:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                bn = self.fold.get(id(p))
                k = None
                if bn is not None:
                    k = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
                    k = k.reshape((-1,) + (1,) * (p.dim() - 1))
                r = self._absmax(p if k is None else p * k, group["range_momentum"], p)
                if not self.enabled:
                    continue
                s = psgd_scale(
                    p, bits, group["lambda_s"], group["scaling"], eps=group["eps"], absmax=r,
                    fold=k,
                )  # fmt: skip
                p.grad.mul_(s)

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.scale_grads()
        super().step()
        return loss


def psgd_param_groups(
    model: nn.Module,
    bits: int,
    *,
    scale_bias: bool = True,
    first_last_bits: int | None = None,
) -> list[dict]:
    """Parameter groups for :class:`PSGD` as the official code scales them.

    Every ``nn.Conv*`` / ``nn.Linear`` weight at ``bits`` (``Conv2d_minmax``, ``Linear_minmax``);
    ``nn.Linear`` biases too when ``scale_bias`` (``Linear_minmax``'s ``bquantizer``), each
    tensor on its own per-tensor grid; every other parameter (BatchNorm, conv biases) unscaled.
    ``first_last_bits``, if given, is used for the first and the last of those layers (the
    official ``--first_last_quant`` uses 8 when ``bits < 4``).
    """
    layers = [m for m in model.modules() if isinstance(m, (_ConvNd, nn.Linear))]
    bits_of: dict[int, int] = {}
    for i, m in enumerate(layers):
        b = bits
        if first_last_bits is not None and i in (0, len(layers) - 1):
            b = first_last_bits
        bits_of[id(m.weight)] = b
        if scale_bias and isinstance(m, nn.Linear) and m.bias is not None:
            bits_of[id(m.bias)] = b
    groups: dict[int | None, list] = {}
    for p in model.parameters():
        groups.setdefault(bits_of.get(id(p)), []).append(p)
    return [{"params": ps, "psg_bits": b} for b, ps in groups.items()]


def zero_fraction(params: Iterable[torch.Tensor], bits: int) -> float:
    """Fraction of the elements of ``params`` that per-tensor ``Q_b`` (range ``max|w|``) maps to
    the zero level: the weight sparsity PSGD reports (72.4% for ResNet-18 at W4 on ImageNet)."""
    zeros = total = 0
    for p in params:
        r = float(p.detach().abs().max())
        q = quantize_symmetric(p.detach(), bits, r)
        zeros += int((q == 0).sum())
        total += p.numel()
    return zeros / total if total else 0.0


def bn_fold_map(model: nn.Module) -> dict:
    """``{conv.weight: bn}`` for every ``nn.Conv*`` directly followed (in module registration
    order) by a BatchNorm over its output channels: the pairs an importer folds (hwsim folds
    ``y = bn(conv(x))`` into one conv whose weight is ``w * gamma / sqrt(running_var + eps)``
    per output channel before quantizing it)."""
    out, prev = {}, None
    for m in model.modules():
        if isinstance(m, _BatchNorm) and isinstance(prev, _ConvNd):
            if m.num_features == prev.out_channels and m.affine and m.track_running_stats:
                out[prev.weight] = m
        if not any(True for _ in m.children()):  # a leaf: the last layer seen
            prev = m
    return out
