"""Train the shipped float models on ``digits-train`` and export them to ONNX.

    python models/train.py [--arch NAME ...] [--seed S]
                           [--epochs N] [--lr LR] [--optimizer sgd|adam] [--weight-decay WD]

Trains the architectures of ``hwsim/train/archs.py`` (all four, ``mlp``, ``rescnn``, ``vit`` and
``silucnn``, or those named by ``--arch``, which may be repeated), each with its own recipe
(:data:`RECIPES`: SGD for 30 epochs at learning rate 0.05 for the CNNs and the MLP, AdamW for the
ViT), writes ``models/<arch>.onnx``, evaluates each exported file with onnxruntime
(CPUExecutionProvider) on the held-out ``digits`` set and on ``digits-train``, and updates
``models/models.json``: the entries of the trained architectures are replaced, the others kept.
Each entry records the command that reproduces that file alone.

``--epochs``, ``--lr``, ``--optimizer`` and ``--weight-decay`` override the recipe of every
architecture trained in the run, so they need ``--arch``.

Needs the optional PyTorch extra: ``pip install torch==2.13.0``. Training runs on one CPU thread
with deterministic algorithms, so a rerun with the same arguments and torch version gives the
same weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from hwsim.data import load_data  # noqa: E402
from hwsim.train.archs import ARCHS, DESCRIPTIONS, count_params  # noqa: E402
from hwsim.train.fit import INPUT_NAME, export_onnx, train  # noqa: E402

INPUT_SHAPE = (1, 8, 8)

#: Each architecture's training recipe: optimizer (``hwsim.train.fit.train``'s ``"sgd"``: SGD
#: with Nesterov momentum 0.9; ``"adam"``: AdamW), epochs, peak learning rate (per-step cosine
#: schedule to 0) and weight decay (None: the optimizer's default, 5e-4).
RECIPES = {
    "mlp": {"optimizer": "sgd", "epochs": 30, "lr": 0.05, "weight_decay": None},
    "rescnn": {"optimizer": "sgd", "epochs": 30, "lr": 0.05, "weight_decay": None},
    "vit": {"optimizer": "adam", "epochs": 100, "lr": 0.003, "weight_decay": 0.1},
    "silucnn": {"optimizer": "sgd", "epochs": 30, "lr": 0.05, "weight_decay": None},
}


def ort_accuracy(path: Path, ds) -> float:
    """Top-1 accuracy of the ONNX file at ``path`` on ``ds``, run by onnxruntime on the CPU."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {INPUT_NAME: ds.x})
    return float(np.mean(np.argmax(logits, axis=1) == ds.y))


def max_abs_diff_vs_torch(model, path: Path, ds) -> float:
    """Largest |logit difference| between the torch model and onnxruntime on ``ds``."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_logits,) = sess.run(None, {INPUT_NAME: ds.x})
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(ds.x)).numpy()
    return float(np.max(np.abs(ort_logits - torch_logits)))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_json_atomic(path: Path, obj) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def command_line(arch: str, seed: int, recipe: dict) -> str:
    """The command that retrains ``arch`` alone with ``recipe``."""
    cmd = (
        f"python models/train.py --arch {arch} --epochs {recipe['epochs']} --seed {seed} "
        f"--lr {recipe['lr']:g}"
    )
    if recipe["optimizer"] != "sgd" or recipe["weight_decay"] is not None:
        cmd += f" --optimizer {recipe['optimizer']}"
        if recipe["weight_decay"] is not None:
            cmd += f" --weight-decay {recipe['weight_decay']:g}"
    return cmd


def merge_entries(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with the entries named in ``new`` replaced (or added), in :data:`ARCHS` order;
    entries of other names stay, after them."""
    by_name = {e["name"]: e for e in old}
    by_name.update({e["name"]: e for e in new})
    order = {name: i for i, name in enumerate(ARCHS)}
    return sorted(by_name.values(), key=lambda e: order.get(e["name"], len(order)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--arch",
        action="append",
        choices=ARCHS,
        help="architecture to train; may be repeated (default: all of them)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for init and shuffling (default 0)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the arch's recipe)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the arch's recipe)")
    p.add_argument(
        "--optimizer", choices=("sgd", "adam"), help="optimizer (default: the arch's recipe)"
    )
    p.add_argument("--weight-decay", type=float, help="weight decay (default: the arch's recipe)")
    p.add_argument("--out", type=Path, default=HERE, help="output directory (default models/)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)

    overrides = {
        k: v
        for k, v in (
            ("optimizer", args.optimizer),
            ("epochs", args.epochs),
            ("lr", args.lr),
            ("weight_decay", args.weight_decay),
        )
        if v is not None
    }
    if overrides and not args.arch:
        p.error(
            "--epochs, --lr, --optimizer and --weight-decay override the training recipe; "
            "name the architectures they apply to with --arch"
        )
    archs = [a for a in ARCHS if a in (args.arch or ARCHS)]
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_ds = load_data("digits-train", INPUT_SHAPE)
    test_ds = load_data("digits", INPUT_SHAPE)
    log = None if args.quiet else (lambda s: print("  " + s, flush=True))

    entries = []
    t_all = time.perf_counter()
    for arch in archs:
        recipe = {**RECIPES[arch], **overrides}
        t0 = time.perf_counter()
        model = train(
            arch,
            train_ds,
            recipe["epochs"],
            recipe["lr"],
            args.seed,
            recipe["optimizer"],
            weight_decay=recipe["weight_decay"],
            log=log,
        )
        t_train = time.perf_counter() - t0
        path = export_onnx(model, out / f"{arch}.onnx", INPUT_SHAPE)
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto, full_check=True)
        ops = sorted({n.op_type for n in proto.graph.node})
        test_acc = ort_accuracy(path, test_ds)
        train_acc = ort_accuracy(path, train_ds)
        diff = max_abs_diff_vs_torch(model, path, test_ds)
        print(
            f"{arch}: trained in {t_train:.1f} s; {path.name} {path.stat().st_size} bytes; "
            f"held-out acc {test_acc:.4f}, train acc {train_acc:.4f} (onnxruntime); "
            f"max |torch - ort| logit diff {diff:.2e}; ops {', '.join(ops)}",
            flush=True,
        )
        entries.append(
            {
                "name": arch,
                "file": path.name,
                "arch": arch,
                "description": DESCRIPTIONS[arch],
                "input_shape": list(INPUT_SHAPE),
                "dataset": "digits",
                "float_accuracy": round(test_acc, 6),
                "train_accuracy": round(train_acc, 6),
                "params": count_params(model),
                "optimizer": recipe["optimizer"],
                "epochs": recipe["epochs"],
                "seed": args.seed,
                "lr": recipe["lr"],
                "weight_decay": 5e-4 if recipe["weight_decay"] is None else recipe["weight_decay"],
                "sha256": sha256(path),
                "command": command_line(arch, args.seed, recipe),
                "ops": ops,
                "torch_version": torch.__version__,
            }
        )
    index = out / "models.json"
    old = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else []
    write_json_atomic(index, merge_entries(old, entries))
    print(f"wrote {index}; total {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
