"""Train the shipped float models on ``digits-train`` and export them to ONNX.

    python models/train.py [--epochs N] [--seed S] [--lr LR]

Trains ``mlp`` and ``rescnn`` (see ``hwsim/train/archs.py``), writes ``models/mlp.onnx`` and
``models/rescnn.onnx``, evaluates each exported file with onnxruntime (CPUExecutionProvider) on
the held-out ``digits`` set and on ``digits-train``, and writes ``models/models.json``.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=30, help="training epochs (default 30)")
    p.add_argument("--seed", type=int, default=0, help="seed for init and shuffling (default 0)")
    p.add_argument("--lr", type=float, default=0.05, help="peak SGD learning rate (default 0.05)")
    p.add_argument("--out", type=Path, default=HERE, help="output directory (default models/)")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    args = p.parse_args(argv)

    command = f"python models/train.py --epochs {args.epochs} --seed {args.seed} --lr {args.lr:g}"
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_ds = load_data("digits-train", INPUT_SHAPE)
    test_ds = load_data("digits", INPUT_SHAPE)
    log = None if args.quiet else (lambda s: print("  " + s, flush=True))

    entries = []
    t_all = time.perf_counter()
    for arch in ARCHS:
        t0 = time.perf_counter()
        model = train(arch, train_ds, args.epochs, args.lr, args.seed, log=log)
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
                "epochs": args.epochs,
                "seed": args.seed,
                "lr": args.lr,
                "sha256": sha256(path),
                "command": command,
                "ops": ops,
                "torch_version": torch.__version__,
            }
        )
    write_json_atomic(out / "models.json", entries)
    print(f"wrote {out / 'models.json'}; total {time.perf_counter() - t_all:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
