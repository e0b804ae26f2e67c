"""Deterministic training of the :mod:`hwsim.train.archs` models and their ONNX export.

``train`` is reproducible bit for bit under its seed on one machine: it seeds torch, turns on
``torch.use_deterministic_algorithms``, shuffles with its own ``torch.Generator`` and runs on one
CPU thread (the global settings it changes are restored when it returns).

``export_onnx`` writes an opset-17 float graph with input ``input`` (dynamic batch axis) and
output ``logits``, BatchNormalization kept as separate nodes (not folded into the convolutions),
weights as initializers inside the file, written atomically.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import time
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwsim.data import DataError
from hwsim.errors import HwsimError
from hwsim.train import OPTIMIZERS, SCALINGS, TARGET_BITS
from hwsim.train.archs import build
from hwsim.train.psgd import DEFAULT_LAMBDA_S, RANGE_MOMENTUM

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: The op types an exported graph may hold: those of ``mlp`` and ``rescnn``; the SiLU, HardSwish
#: and squeeze-excite ops of ``silucnn`` (SiLU is exported as ``Sigmoid`` and ``Mul``); and those
#: of ``vit``: the attention and LayerNorm ops, the erf GELU (``Div``, ``Erf``, ``Add``, ``Mul``)
#: and the shape arithmetic the TorchScript exporter writes for the reshapes on ``x.shape`` and
#: the class token's ``expand`` to the batch (hwsim folds it away on import).
ALLOWED_OPS = frozenset(
    {
        "Conv",
        "Gemm",
        "MatMul",
        "Relu",
        "Add",
        "GlobalAveragePool",
        "Flatten",
        "Reshape",
        "BatchNormalization",
        "Identity",
        "Constant",
        # silucnn
        "Sigmoid",
        "Mul",
        "HardSwish",
        # vit
        "Transpose",
        "Softmax",
        "LayerNormalization",
        "Div",
        "Erf",
        "Concat",
        "Gather",
        "Slice",
        "Unsqueeze",
        "Shape",
        "ConstantOfShape",
        "Equal",
        "Where",
        "Expand",
    }
)


class DivergedError(HwsimError, FloatingPointError):
    """Training diverged (a non-finite loss, weight or BatchNorm statistic): the settings (``lr``,
    ``lambda_s``) are too aggressive for the model and data."""


class ExportError(RuntimeError):
    """The exporter produced a graph hwsim does not accept (an op outside ALLOWED_OPS, ...)."""


@contextmanager
def _deterministic(threads: int):
    """Deterministic algorithms and a fixed thread count inside; previous settings after."""
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    old_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)
        torch.set_num_threads(old_threads)


def _check_train_args(arch, optimizer, target_bits, lambda_s, scaling, epochs, lr, seed=0) -> None:
    from hwsim.train.archs import ARCHS

    if arch not in ARCHS:
        raise HwsimError(f"unknown architecture {arch!r}: known ones are {', '.join(ARCHS)}")
    if optimizer not in OPTIMIZERS:
        raise HwsimError(f"unknown optimizer {optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
    if scaling not in SCALINGS:
        raise HwsimError(f"unknown PSGD scaling {scaling!r}: use one of {', '.join(SCALINGS)}")
    lo, hi = TARGET_BITS
    if (
        isinstance(target_bits, bool)
        or not isinstance(target_bits, int)
        or not (lo <= target_bits <= hi)
    ):
        raise HwsimError(f"target_bits must be an int in [{lo}, {hi}], got {target_bits!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise HwsimError(f"epochs must be an int >= 1, got {epochs!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise HwsimError(f"lr must be finite and > 0, got {lr!r}")
    if not (isinstance(lambda_s, (int, float)) and math.isfinite(lambda_s) and lambda_s > 0):
        raise HwsimError(f"lambda_s must be finite and > 0, got {lambda_s!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not (
        -(2**63) <= seed < 2**64  # what torch.manual_seed takes
    ):
        raise HwsimError(f"seed must be an int in [-2^63, 2^64), got {seed!r}")


def train(
    arch: str,
    dataset_train,
    epochs: int,
    lr: float,
    seed: int,
    optimizer: str = "sgd",
    target_bits: int = 4,
    lambda_s: float = DEFAULT_LAMBDA_S,
    scaling: str = "official",
    input_shape: Sequence[int] | None = None,
    progress=None,
    *,
    batch_size: int = 64,
    weight_decay: float | None = None,
    threads: int = 1,
    log=None,
    psgd_warmup: float = 0.5,
    range_momentum: float | None = RANGE_MOMENTUM,
    fold_bn: bool = False,
    first_last_bits: int | None = None,
) -> nn.Module:
    """Train a fresh ``arch`` model on ``dataset_train`` (a :class:`hwsim.data.Dataset`).

    Cross-entropy loss; the learning rate follows a per-step cosine schedule from ``lr`` to 0.
    ``optimizer``:

    * ``"sgd"`` -- momentum 0.9, Nesterov, weight decay 5e-4 (the shipped models);
    * ``"psgd"`` -- :class:`hwsim.train.psgd.PSGD` targeting ``target_bits``-bit per-tensor
      weights: the loss gradients of every conv/linear weight and linear bias are multiplied by
      ``psgd_scale(w, target_bits, lambda_s, scaling)`` before an SGD step with the official
      code's settings (momentum 0.9, no Nesterov, weight decay 1e-4, 0 at 2 bits). The official
      recipe fine-tunes a model pre-trained with plain SGD (82 of 150 epochs); here the first
      ``int(psgd_warmup * epochs)`` epochs (default half) are those plain SGD steps, with the
      same optimizer and schedule, and the scaling acts from then on (``psgd_warmup=0``: from the
      first step, which diverges at lr 0.05 with lambda_s 150 on the mlp; ``1``: never, the
      control run without scaling);
    * ``"adam"`` -- AdamW, weight decay 5e-4.

    ``weight_decay`` overrides the optimizer's default. ``target_bits``, ``lambda_s``,
    ``scaling``, ``psgd_warmup``, ``range_momentum`` (the official running range, see
    :class:`~hwsim.train.psgd.PSGD`), ``first_last_bits`` (another grid for the first and last
    layer, as the official code's 8 bits below 4; :func:`~hwsim.train.psgd.psgd_param_groups`)
    and ``fold_bn`` only matter for ``"psgd"``. ``fold_bn=True`` (an hwsim extension, off by
    default) puts the grid on the BatchNorm-folded conv weight that hwsim actually quantizes
    (:func:`~hwsim.train.psgd.bn_fold_map`, ``psgd_scale(..., fold=)``); without it PSGD pulls
    the raw conv weights onto a grid that the per-channel folding then scatters.

    ``input_shape`` (without the batch axis) defaults to the data's sample shape. Batches of
    ``batch_size`` are drawn from a permutation made by a ``torch.Generator`` seeded with
    ``seed``; model initialization uses ``torch.manual_seed(seed)``; training runs on
    ``threads`` threads with deterministic algorithms, so equal arguments give bit-identical
    weights on one machine (conv kernels may differ across CPUs). Returns the model in eval
    mode. ``progress``, if given, is called as ``progress(epoch, loss)`` after each epoch
    (1-based epoch, mean training loss); ``log`` with one line of text per epoch. A non-finite
    epoch loss, weight or BatchNorm statistic raises :class:`DivergedError` (lower ``lr`` or
    ``lambda_s``).
    """
    from hwsim.train.psgd import PSGD, bn_fold_map, psgd_param_groups

    _check_train_args(arch, optimizer, target_bits, lambda_s, scaling, epochs, lr, seed)
    if dataset_train.y is None:
        raise DataError(f"{dataset_train.name}: training needs labels ('y')")
    if input_shape is None:
        input_shape = tuple(dataset_train.x.shape[1:])
    x = torch.from_numpy(np.ascontiguousarray(dataset_train.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(dataset_train.y, dtype=np.int64))
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch
    if not 0.0 <= psgd_warmup <= 1.0:
        raise HwsimError(f"psgd_warmup must be in [0, 1], got {psgd_warmup!r}")
    psgd_start = int(psgd_warmup * epochs)

    with _deterministic(threads):
        torch.manual_seed(seed)
        model = build(arch, tuple(input_shape))
        gen = torch.Generator().manual_seed(seed)
        if optimizer == "sgd":
            wd = 5e-4 if weight_decay is None else weight_decay
            opt = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=wd
            )
        elif optimizer == "psgd":
            # train.py of the official code: weight decay 1e-4, and 0 for 2-bit weights
            wd = (0.0 if target_bits == 2 else 1e-4) if weight_decay is None else weight_decay
            opt = PSGD(
                psgd_param_groups(model, target_bits, first_last_bits=first_last_bits),
                lr=lr,
                bits=target_bits,
                lambda_s=lambda_s,
                scaling=scaling,
                momentum=0.9,
                nesterov=False,
                weight_decay=wd,
                range_momentum=range_momentum,
                fold=bn_fold_map(model) if fold_bn else None,
            )
        else:
            wd = 5e-4 if weight_decay is None else weight_decay
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        )
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total, correct = 0.0, 0
            if optimizer == "psgd":
                opt.enabled = epoch >= psgd_start
            for start in range(0, n, batch_size):
                idx = perm[start : start + batch_size]
                xb, yb = x[idx], y[idx]
                logits = model(xb)
                loss = loss_fn(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(1) == yb).sum())
            state = model.state_dict().values()  # weights and BatchNorm statistics
            if not math.isfinite(total) or not all(
                bool(torch.isfinite(t).all()) for t in state if t.is_floating_point()
            ):
                raise DivergedError(
                    f"{arch}/{optimizer}: training diverged in epoch {epoch + 1} (loss {total}, "
                    "or a non-finite weight); "
                    "lower lr" + (" or lambda_s" if optimizer == "psgd" else "")
                )
            if log is not None:
                log(
                    f"{arch} epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, "
                    f"train acc (running) {correct / n:.4f}"
                )
            if progress is not None:
                progress(epoch + 1, total / n)
        model.eval()
    return model


def accuracy(model: nn.Module, ds, batch_size: int = 512) -> float:
    """Top-1 accuracy of the torch ``model`` (eval mode) on the labelled data set ``ds``."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start, xb in ds.batches(batch_size):
            pred = model(torch.from_numpy(np.ascontiguousarray(xb, np.float32))).argmax(1)
            correct += int((pred.numpy() == ds.y[start : start + len(xb)]).sum())
    return correct / len(ds)


def train_model(
    arch: str,
    data="digits-train",
    optimizer: str = "sgd",
    target_bits: int = 4,
    lambda_s: float = DEFAULT_LAMBDA_S,
    scaling: str = "official",
    epochs: int = 30,
    lr: float = 0.05,
    seed: int = 0,
    out: str | os.PathLike = "model.onnx",
    progress=None,
    **train_kw,
) -> dict:
    """Train ``arch`` on ``data`` (a built-in name, an ``.npz`` path or a Dataset), export the
    float model to ONNX at ``out`` (:func:`export_onnx`: input ``input``, output ``logits``,
    BatchNormalization kept; what ``hwsim quantize``/``hwsim run`` take) and return a record:
    ``arch, data, optimizer, target_bits, lambda_s, scaling, epochs, lr, seed, input_shape,
    train_accuracy`` (of the trained float model on the training data), ``seconds`` (training
    and export) and ``path``. Arguments as for :func:`train` (``train_kw``: its keyword-only
    ones); they are checked before the data is loaded.
    """
    from hwsim.data import Dataset, load_data

    _check_train_args(arch, optimizer, target_bits, lambda_s, scaling, epochs, lr, seed)
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_data(data)
    if ds.y is None:
        raise DataError(f"{ds.name}: training needs labels ('y')")
    shape = tuple(int(d) for d in ds.x.shape[1:])
    model = train(
        arch, ds, epochs, lr, seed, optimizer, target_bits, lambda_s, scaling, shape,
        progress, **train_kw,
    )  # fmt: skip
    path = export_onnx(model, out, shape)
    return {
        "arch": arch,
        "data": ds.name,
        "optimizer": optimizer,
        "target_bits": target_bits,
        "lambda_s": float(lambda_s),
        "scaling": scaling,
        "epochs": epochs,
        "lr": float(lr),
        "seed": seed,
        "input_shape": list(shape),
        "train_accuracy": accuracy(model, ds),
        "seconds": round(time.perf_counter() - t0, 3),
        "path": str(path),
    }


def _inline_identity_initializers(model_proto) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer; return how many.

    The TorchScript exporter deduplicates initializers with equal values (for example an
    untrained BatchNorm's ``weight`` of ones and another one's ``running_var`` of ones) and
    re-creates the duplicates with Identity nodes. Undoing that keeps every weight a plain
    initializer, whatever values training happened to produce.
    """
    from onnx import TensorProto

    graph = model_proto.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep, n = [], 0
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            graph.initializer.append(copy)
            inits[copy.name] = copy
            n += 1
        else:
            keep.append(node)
    if n:
        del graph.node[:]
        graph.node.extend(keep)
    return n


def _check_graph(model_proto) -> None:
    import onnx

    ops = sorted({node.op_type for node in model_proto.graph.node})
    bad = [op for op in ops if op not in ALLOWED_OPS]
    if bad:
        raise ExportError(
            f"exported graph holds ops outside the allowed set: {', '.join(bad)} "
            f"(graph ops: {', '.join(ops)})"
        )
    onnx.checker.check_model(model_proto, full_check=True)
    onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def export_onnx(
    model: nn.Module, path: str | os.PathLike, input_shape: Sequence[int] = (1, 8, 8)
) -> Path:
    """Export ``model`` (float, eval mode) to ONNX opset 17 at ``path``; return the path.

    Uses the TorchScript exporter (``dynamo=False``) with ``TrainingMode.PRESERVE`` on a model
    in eval mode: the eval-mode peephole pass that folds BatchNorm into Conv runs only for
    ``TrainingMode.EVAL``, so BatchNormalization stays a separate node (inference form, running
    statistics as initializers). Identity nodes the exporter adds for initializers with equal
    values are replaced by copies of the initializer. torch 2.9+ calls this exporter legacy and
    warns; the warning is silenced here. Constant folding is off so no weight is rewritten. The
    graph is checked (allowed ops, ``onnx.checker`` full check, strict shape inference) before
    the file is written, atomically, through a temporary file in the same directory.
    """
    import onnx

    path = Path(path)
    model.eval()
    dummy = torch.zeros((1, *tuple(input_shape)), dtype=torch.float32)
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # dynamo=False is deliberate (see above); silence torch's notices that it is legacy
        warnings.filterwarnings(
            "ignore", ".*legacy TorchScript-based ONNX export", DeprecationWarning
        )
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            model,
            (dummy,),
            buf,
            dynamo=False,
            export_params=True,
            opset_version=OPSET,
            training=torch.onnx.TrainingMode.PRESERVE,
            do_constant_folding=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    _inline_identity_initializers(proto)
    _check_graph(proto)
    data = proto.SerializeToString()

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
