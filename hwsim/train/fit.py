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
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hwsim.train.archs import build

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"

#: The op types an exported graph may hold.
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
    }
)


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


def train(
    arch: str,
    dataset_train,
    epochs: int,
    lr: float,
    seed: int,
    optimizer: str = "sgd",
    *,
    batch_size: int = 64,
    weight_decay: float = 5e-4,
    threads: int = 1,
    log=None,
) -> nn.Module:
    """Train a fresh ``arch`` model on ``dataset_train`` (a :class:`hwsim.data.Dataset`).

    Cross-entropy loss; ``optimizer`` is ``"sgd"`` (momentum 0.9, Nesterov) or ``"adam"``
    (AdamW); the learning rate follows a per-step cosine schedule from ``lr`` to 0. Batches of
    ``batch_size`` are drawn from a permutation made by a ``torch.Generator`` seeded with
    ``seed``; model initialization uses ``torch.manual_seed(seed)``. Returns the model in eval
    mode. ``log``, if given, is called with one line of text per epoch.
    """
    if dataset_train.y is None:
        raise ValueError(f"{dataset_train.name}: training needs labels ('y')")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    x = torch.from_numpy(np.ascontiguousarray(dataset_train.x, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(dataset_train.y, dtype=np.int64))
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = epochs * steps_per_epoch

    with _deterministic(threads):
        torch.manual_seed(seed)
        model = build(arch)
        gen = torch.Generator().manual_seed(seed)
        if optimizer == "sgd":
            opt = torch.optim.SGD(
                model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay
            )
        elif optimizer == "adam":
            opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        else:
            raise ValueError(f"unknown optimizer {optimizer!r}: use 'sgd' or 'adam'")
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
        )
        loss_fn = nn.CrossEntropyLoss()
        model.train()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            total, correct = 0.0, 0
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
            if log is not None:
                log(
                    f"{arch} epoch {epoch + 1}/{epochs}: loss {total / n:.4f}, "
                    f"train acc (running) {correct / n:.4f}"
                )
        model.eval()
    return model


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
