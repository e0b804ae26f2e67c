"""The two tasks of ``hwsim study fqt`` (:mod:`hwsim.study.fqt`): their models, data, training
loop, evaluation and the gradient-variance measurement. Needs PyTorch.

* ``cnn`` -- the shipped residual CNN (:func:`hwsim.train.archs.build` ``"rescnn"``: four 3x3
  convs and a linear head, BatchNorm kept in float) on a built-in image set (``digits``: 1,198
  training images, 599 held out; ``mnist5k``); SGD with Nesterov momentum 0.9, weight decay
  5e-4, batches of 64, a per-step cosine schedule -- the shipped models' recipe. Metric:
  held-out top-1 accuracy (%).
* ``transformer`` -- a 2-layer pre-LayerNorm encoder (d_model 32, 4 heads, feed-forward 64;
  attention projections, feed-forward and head are ``nn.Linear``, so every dense GEMM is an FQT
  layer; embeddings, LayerNorm, softmax and the attention products stay float) that sorts
  sequences of :data:`SEQ_LEN` tokens drawn uniformly from a vocabulary of :data:`VOCAB`
  (one output token per position: the sorted sequence). Data are generated offline with fixed
  seeds (training set :data:`SORT_TRAIN_SEED`, held-out :data:`SORT_TEST_SEED`), the same for
  every run. AdamW (weight decay 0.01), batches of 64, 50 warm-up steps then cosine. Metrics:
  held-out exact match of the whole sequence (%; the primary one) and token accuracy (%).
  Gradients are quantized per token (rows of the ``(B*T, D)`` output gradient), as the paper's
  transformer.

Runs are deterministic under their seed on one machine: ``torch.manual_seed(seed)`` for the
initialization, a ``torch.Generator`` seeded ``seed`` for the batch order, the FQT layers'
stochastic rounding seeded ``seed`` (:func:`hwsim.train.fqt_torch.convert`), one thread and
deterministic algorithms (:func:`hwsim.train.fit._deterministic`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hwsim.train.fit import DivergedError, _deterministic
from hwsim.train.fqt import GradQuant, gradient_variance
from hwsim.train.fqt_torch import FQTConfig, FQTConv2d, FQTLinear, convert

TASKS = ("cnn", "transformer")
#: Sorting task: sequence length, vocabulary, data sizes and seeds (fixed: every run sees the
#: same data).
SEQ_LEN = 8
VOCAB = 16
SORT_TRAIN = 2000
SORT_TEST = 1000
SORT_TRAIN_SEED = 20201
SORT_TEST_SEED = 20202
#: Transformer size.
D_MODEL, HEADS, D_FF, LAYERS = 32, 4, 64, 2
BATCH = 64
EVAL_BATCH = 256
WARMUP_STEPS = 50


# --- the transformer --------------------------------------------------------------------------
class _Attention(nn.Module):
    """Multi-head self-attention with its four projections as ``nn.Linear`` (so that
    :func:`~hwsim.train.fqt_torch.convert` quantizes them); the two attention products and the
    softmax stay float."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        B, T, D = x.shape
        h, dh = self.heads, D // self.heads

        def split(t):
            return t.view(B, T, h, dh).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, D))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.att = _Attention(d, heads)
        self.ff1, self.ff2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)

    def forward(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.ff2(F.relu(self.ff1(self.ln2(x))))


class SortTransformer(nn.Module):
    """Token and position embeddings, :data:`LAYERS` pre-LN encoder blocks, a final LayerNorm and
    a linear head: logits ``(B, T, vocab)``."""

    def __init__(self, vocab=VOCAB, seq_len=SEQ_LEN, d=D_MODEL, heads=HEADS, d_ff=D_FF,
                 layers=LAYERS):  # fmt: skip
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(_Block(d, heads, d_ff) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(self, x):
        y = self.tok(x) + self.pos.weight[None, : x.shape[1]]
        for b in self.blocks:
            y = b(y)
        return self.head(self.ln(y))


def sort_data(n: int, seed: int, seq_len: int = SEQ_LEN, vocab: int = VOCAB):
    """``n`` sequences of ``seq_len`` tokens uniform in ``[0, vocab)`` (numpy
    ``default_rng(seed)``) and their sorted versions: two int64 tensors ``(n, seq_len)``."""
    x = np.random.default_rng(seed).integers(0, vocab, (n, seq_len))
    return torch.from_numpy(x), torch.from_numpy(np.sort(x, axis=1))


# --- tasks ------------------------------------------------------------------------------------
@dataclass
class TaskData:
    """A task's tensors: training inputs / targets, held-out inputs / targets, and what the
    metric is called."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    metric: str
    description: str


def load_task(task: str, data: str = "digits", train_size: int | None = None,
              test_size: int | None = None) -> TaskData:  # fmt: skip
    """The tensors of ``task`` (``cnn``: the built-in ``data`` / ``data-train`` sets;
    ``transformer``: the sorting data). ``train_size`` / ``test_size`` keep the first samples
    only (the quick smoke run)."""
    if task == "cnn":
        from hwsim.data import load_data

        tr, te = load_data(f"{data}-train"), load_data(data)
        x = torch.from_numpy(np.ascontiguousarray(tr.x, np.float32))
        y = torch.from_numpy(np.ascontiguousarray(tr.y, np.int64))
        xt = torch.from_numpy(np.ascontiguousarray(te.x, np.float32))
        yt = torch.from_numpy(np.ascontiguousarray(te.y, np.int64))
        desc = f"rescnn on {data}"
        metric = "accuracy"
    else:
        x, y = sort_data(SORT_TRAIN, SORT_TRAIN_SEED)
        xt, yt = sort_data(SORT_TEST, SORT_TEST_SEED)
        desc = (
            f"{LAYERS}-layer transformer (d_model {D_MODEL}, {HEADS} heads) sorting "
            f"{SEQ_LEN} tokens of {VOCAB}"
        )
        metric = "exact match"
    if train_size is not None:
        x, y = x[:train_size], y[:train_size]
    if test_size is not None:
        xt, yt = xt[:test_size], yt[:test_size]
    desc += f" ({len(y)} training / {len(yt)} held-out samples)"
    return TaskData(task, x, y, xt, yt, metric, desc)


def build_model(task: str, td: TaskData, seed: int) -> nn.Module:
    """A fresh float model for ``task``, initialized under ``torch.manual_seed(seed)``."""
    from hwsim.train.archs import build

    torch.manual_seed(seed)
    if task == "cnn":
        return build("rescnn", tuple(td.x.shape[1:]))
    return SortTransformer()


def _loss(task: str, logits, yb):
    if task == "cnn":
        return F.cross_entropy(logits, yb)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.reshape(-1))


def _optimizer(task: str, model: nn.Module, lr: float, total_steps: int):
    if task == "cnn":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)  # fmt: skip

        def f(s):
            return 0.5 * (1.0 + math.cos(math.pi * s / total_steps))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

        def f(s):
            return (
                min(1.0, (s + 1) / WARMUP_STEPS) * 0.5 * (1.0 + math.cos(math.pi * s / total_steps))
            )

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, f)


def evaluate(task: str, model: nn.Module, td: TaskData) -> dict:
    """Held-out metrics in % (eval mode, batches of :data:`EVAL_BATCH`: the 8-bit forward's
    activation ranges are per batch): ``accuracy`` (cnn) or ``exact match`` and
    ``token accuracy`` (transformer)."""
    model.eval()
    with torch.no_grad():
        preds = [model(td.x_test[i : i + EVAL_BATCH]).argmax(-1)
                 for i in range(0, len(td.x_test), EVAL_BATCH)]  # fmt: skip
    p = torch.cat(preds)
    if task == "cnn":
        return {"accuracy": 100.0 * float((p == td.y_test).float().mean())}
    return {
        "exact match": 100.0 * float((p == td.y_test).all(dim=1).float().mean()),
        "token accuracy": 100.0 * float((p == td.y_test).float().mean()),
    }


def fqt_config(grad: GradQuant | None, seed: int) -> FQTConfig:
    """The FQT setting of every quantized run: 8-bit forward, float datapath (the integer sums
    in float64: identical to the integer datapath wherever 32-bit accumulators do not overflow),
    stochastic rounding seeded ``seed``."""
    return FQTConfig(grad=grad, forward_bits=8, datapath="float", seed=seed)


def train_run(task: str, td: TaskData, mode: str, grad: GradQuant | None, seed: int,
              epochs: int, lr: float, log=None) -> dict:  # fmt: skip
    """Train one model and evaluate it. ``mode``: ``exact`` (the float model), ``qat`` (8-bit
    forward, exact backward) or ``fqt`` (and ``grad``, the gradient quantizer). Returns
    ``{"status": "ok", "metrics", "loss" (per epoch), "seconds"}``; a non-finite loss or
    weight raises :class:`~hwsim.train.fit.DivergedError`."""
    t0 = time.perf_counter()
    n = len(td.y)
    steps_per_epoch = math.ceil(n / BATCH)
    with _deterministic(1):
        model = build_model(task, td, seed)
        if mode != "exact":
            convert(model, fqt_config(grad if mode == "fqt" else None, seed))
        opt, sched = _optimizer(task, model, lr, epochs * steps_per_epoch)
        gen = torch.Generator().manual_seed(seed)
        losses = []
        for epoch in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, BATCH):
                idx = perm[start : start + BATCH]
                loss = _loss(task, model(td.x[idx]), td.y[idx])
                if not torch.isfinite(loss):
                    value = float(loss.detach())
                    raise DivergedError(
                        f"{task}: training diverged in epoch {epoch + 1} (loss {value})"
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise DivergedError(f"{task}: a weight became non-finite in epoch {epoch + 1}")
            losses.append(total / n)
            if log is not None:
                log(f"  {task} {mode} epoch {epoch + 1}/{epochs}: loss {total / n:.4f}")
        metrics = evaluate(task, model, td)
    return {
        "status": "ok",
        "metrics": metrics,
        "loss": losses,
        "seconds": time.perf_counter() - t0,
    }


# --- gradient variance ------------------------------------------------------------------------
def _fqt_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FQTLinear, FQTConv2d))]


def _weight_grad(task: str, model: nn.Module, xb, yb) -> np.ndarray:
    """The loss gradient of every FQT layer's weight on ``(xb, yb)`` (train mode), flattened and
    concatenated, float64."""
    model.train()
    model.zero_grad(set_to_none=True)
    _loss(task, model(xb), yb).backward()
    return np.concatenate(
        [m.weight.grad.detach().double().numpy().ravel() for m in _fqt_layers(model)]
    )


def variance(task: str, td: TaskData, quantizers: list[GradQuant], seed: int, warm_epochs: int,
             lr: float, draws: int, batches: int) -> dict:  # fmt: skip
    """The paper's quality measure on fixed weights and one fixed minibatch.

    The weights: the exact model after ``warm_epochs`` epochs of exact training (seed ``seed``).
    The minibatch: the first :data:`BATCH` samples of a permutation seeded ``seed``. Measured:

    * ``weight``: the variance of the quantized *weight* gradient (every FQT layer's weight,
      8-bit forward, the quantized backward of :mod:`hwsim.train.fqt_torch`, whose errors
      propagate through the layers below) over ``draws`` stochastic draws, summed over the
      entries and divided by the squared norm of the QAT gradient on the same batch (the
      exact gradient of the 8-bit forward), per ``(kind, bits)``;
    * ``output``: :func:`hwsim.train.fqt.gradient_variance` of each FQT layer's exact output
      gradient (captured with backward hooks on the QAT model; rows = samples / tokens) over
      ``draws`` draws, divided by the mean square of that gradient, averaged over the layers;
    * ``sampling``: the variance of the QAT gradient over ``batches`` random minibatches of the
      same size (the SGD noise that quantization adds to), relative as ``weight``;
    * ``bias``: the squared norm of (mean quantized weight gradient - QAT gradient) relative as
      ``weight``, which should be about ``weight / draws`` (unbiased quantizers).
    """
    t0 = time.perf_counter()
    with _deterministic(1):
        warm = train_state(task, td, seed, warm_epochs, lr)
        perm = torch.randperm(len(td.y), generator=torch.Generator().manual_seed(seed))
        xb, yb = td.x[perm[:BATCH]], td.y[perm[:BATCH]]

        qat = convert(copy.deepcopy(warm), fqt_config(None, seed))
        ref = _weight_grad(task, qat, xb, yb)
        norm2 = float(ref @ ref)
        samp = [
            _weight_grad(task, qat, td.x[perm[i * BATCH : (i + 1) * BATCH]],
                         td.y[perm[i * BATCH : (i + 1) * BATCH]])
            for i in range(min(batches, len(td.y) // BATCH))
        ]  # fmt: skip
        sampling = (
            float(np.var(np.stack(samp), axis=0, ddof=1).sum()) / norm2 if len(samp) > 1 else None
        )

        captured = []
        hooks = [m.register_full_backward_hook(lambda mod, gi, go: captured.append(go[0].detach()))
                 for m in _fqt_layers(qat)]  # fmt: skip
        with warnings.catch_warnings():  # the first layer's input needs no gradient: expected
            warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
            _weight_grad(task, qat, xb, yb)
        for h in hooks:
            h.remove()
        out_var: dict = {}
        for li, g in enumerate(captured):
            g2 = g.double().numpy().reshape(g.shape[0], -1) if g.dim() != 3 else \
                g.double().numpy().reshape(-1, g.shape[-1])  # fmt: skip
            ms = float(np.mean(g2 * g2))
            if ms == 0.0:
                continue
            v = gradient_variance(g2, quantizers, draws, seed=1000 * seed + li)
            for key, val in v.items():
                out_var.setdefault(key, []).append(val / ms)

        weight, bias = {}, {}
        for qi, q in enumerate(quantizers):
            m = convert(copy.deepcopy(warm), fqt_config(q, 1000 * seed + qi))
            gs = np.stack([_weight_grad(task, m, xb, yb) for _ in range(draws)])
            weight[(q.kind, q.bits)] = float(np.var(gs, axis=0, ddof=1).sum()) / norm2
            d = gs.mean(axis=0) - ref
            bias[(q.kind, q.bits)] = float(d @ d) / norm2
    return {
        "weight": weight,
        "output": {k: float(np.mean(v)) for k, v in out_var.items()},
        "bias": bias,
        "sampling": sampling,
        "layers": len(captured),
        "grad_norm2": norm2,
        "seconds": time.perf_counter() - t0,
    }


def train_state(task: str, td: TaskData, seed: int, epochs: int, lr: float) -> nn.Module:
    """The exact (float) model after ``epochs`` epochs of training (``epochs = 0``: at
    initialization), in train mode."""
    n = len(td.y)
    model = build_model(task, td, seed)
    if epochs:
        opt, sched = _optimizer(task, model, lr, epochs * math.ceil(n / BATCH))
        gen = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, BATCH):
                idx = perm[start : start + BATCH]
                loss = _loss(task, model(td.x[idx]), td.y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    model.train()
    return model
