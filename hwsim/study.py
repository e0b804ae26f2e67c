"""``hwsim study psgd``: does PSGD make plain layer-wise quantization work? (PSGD paper, seed 000)

For each seed, one SGD and one PSGD model of the same architecture are trained on
``<data>-train`` with the same budget and exported to ONNX. Each is then quantized and run on
the emulated integer datapath on the held-out ``<data>`` set with:

* ``layer-wise data-free`` -- per-tensor weights, activation ranges from BatchNorm
  parameters, no data at all (the paper's headline setting);
* ``layer-wise + min/max`` and ``layer-wise + percentile`` -- per-tensor weights, activation
  ranges calibrated on training data (min/max, and 99.99th-percentile clipping): PSGD combined
  with a post-training calibration, the paper's "PSGD + LAPQ" row in spirit;
* ``channel-wise naive`` -- per-channel weights, min/max-calibrated activations (the paper's
  ACIQ-style channel-wise baseline);

at W8A8, W4A8, W4A4 and W2A8 (layer-wise methods keep the trained conv weights on one
per-tensor grid and move the BatchNorm factor into the scale register, ``bn_fold="register"``,
as the paper quantizes conv weights with BN kept apart), plus the fraction of weights that
quantize to zero at 4 bits (symmetric restricted per-tensor grid). Results are mean +- std
over seeds.

Every run's result is written (atomically) to ``<workdir>/runs/<optimizer>-seed<k>.json`` as
soon as it completes; a rerun with the same settings reuses them, so an interrupted study
keeps what it finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hwsim.io import atomic_write_text

WIDTHS = ((8, 8), (4, 8), (4, 4), (2, 8))
METHODS = {
    "layer-wise data-free": dict(scheme="data-free", bn_fold="register"),
    "layer-wise + min/max": dict(scheme="per-tensor", calib_method="minmax", bn_fold="register"),
    "layer-wise + percentile": dict(
        scheme="per-tensor", calib_method="percentile", bn_fold="register"
    ),
    "channel-wise naive": dict(scheme="per-channel", calib_method="minmax"),
}
# The paper's ImageNet ResNet-18 figures (REFERENCES.md), where the paper gives one.
PAPER = {
    ("sgd", "layer-wise data-free", "W4A4"): 0.3,
    ("sgd", "channel-wise naive", "W4A4"): 51.6,
    ("psgd", "layer-wise + percentile", "W4A4"): 66.5,
    ("psgd", "layer-wise + percentile", "W2A8"): 62.7,
    ("psgd", "sparsity@4", ""): 72.4,
}


class StudyError(ValueError):
    """A study setting that cannot run (unknown data set, bad seed count, ...)."""


def sparsity_at(path, bits: int = 4) -> float:
    """Fraction of conv/dense weights that the symmetric restricted per-tensor grid at ``bits``
    maps to zero (round half to even)."""
    from hwsim.graph import import_model
    from hwsim.graph.ir import MAC_OPS

    zeros = total = 0
    for n in import_model(path).nodes:
        if n.op in MAC_OPS:
            w = n.weight.astype(np.float64)
            step = np.abs(w).max() / (2 ** (bits - 1) - 1)
            q = np.rint(w / step) if step > 0 else np.zeros_like(w)
            zeros += int(np.count_nonzero(q == 0))
            total += w.size
    return zeros / total


def evaluate(path, data: str, calib: str) -> dict:
    """Every method x width on one model: {method: {"W8A8": accuracy, ...}} and float accuracy."""
    from hwsim import api

    out: dict = {}
    float_acc = None
    for method, kw in METHODS.items():
        res = {}
        for wb, ab in WIDTHS:
            skw = {k: v for k, v in kw.items() if k != "scheme"}
            if kw["scheme"] == "data-free":
                program = api.quantize_model(
                    path, "data-free", wbits=wb, abits=ab, input_range=(0.0, 1.0), **skw
                )
            else:
                program = api.quantize_model(
                    path, kw["scheme"], calib=calib, wbits=wb, abits=ab, **skw
                )
            rep, _ = api.run_program(program, api.load_data(data))
            res[f"W{wb}A{ab}"] = rep.int_accuracy
            float_acc = rep.float_accuracy
        out[method] = res
    return {"float": float_acc, "methods": out, "sparsity@4": sparsity_at(path, 4)}


def _run_key(cfg: dict) -> dict:
    return {k: cfg[k] for k in sorted(cfg)}


def study_psgd(
    data: str = "digits",
    seeds: int = 3,
    arch: str = "rescnn",
    epochs: int = 30,
    lr: float = 0.05,
    lambda_s: float | None = None,
    target_bits: int = 4,
    scaling: str = "official",
    workdir=None,
    report=None,
    plot_dir=None,
    log=print,
) -> dict:
    """Train SGD and PSGD models for ``seeds`` seeds and evaluate them (module docstring)."""
    from hwsim.data import BUILTIN
    from hwsim.train.fit import train_model

    if data not in BUILTIN or data.endswith("-train") or f"{data}-train" not in BUILTIN:
        held = [k for k in BUILTIN if not k.endswith("-train")]
        raise StudyError(
            f"study data must be a built-in set with a training split: "
            f"{', '.join(held)}; got {data!r}"
        )
    if not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"--seeds must be >= 1, got {seeds!r}")
    work = Path(workdir or f"hwsim-study-psgd-{data}")
    (work / "runs").mkdir(parents=True, exist_ok=True)
    runs = []
    t0 = time.perf_counter()
    for seed in range(seeds):
        for opt in ("sgd", "psgd"):
            cfg = {
                "data": data,
                "arch": arch,
                "optimizer": opt,
                "seed": seed,
                "epochs": epochs,
                "lr": lr,
                "target_bits": target_bits,
                "scaling": scaling,
                "lambda_s": lambda_s,
            }
            res_file = work / "runs" / f"{opt}-seed{seed}.json"
            if res_file.is_file():
                try:
                    old = json.loads(res_file.read_text())
                except json.JSONDecodeError:
                    old = None
                if old and old.get("config") == _run_key(cfg):
                    log(f"[{opt} seed {seed}] reused {res_file}")
                    runs.append(old)
                    continue
            t = time.perf_counter()
            model_path = work / f"{arch}-{opt}-seed{seed}.onnx"
            kw = {} if lambda_s is None else {"lambda_s": lambda_s}
            rec = train_model(
                arch,
                data=f"{data}-train",
                optimizer=opt,
                target_bits=target_bits,
                scaling=scaling,
                epochs=epochs,
                lr=lr,
                seed=seed,
                out=str(model_path),
                **kw,
            )
            ev = evaluate(model_path, data, f"{data}-train")
            result = {
                "config": _run_key(cfg),
                "model": str(model_path),
                "train": {
                    k: v for k, v in rec.items() if isinstance(v, (int, float, str, type(None)))
                },
                **ev,
                "seconds": time.perf_counter() - t,
            }
            atomic_write_text(res_file, json.dumps(result, indent=2) + "\n")
            runs.append(result)
            m = ev["methods"]
            log(
                f"[{opt} seed {seed}] float {100 * ev['float']:.2f}%  layer-wise data-free "
                f"W4A4 {100 * m['layer-wise data-free']['W4A4']:.2f}%  W2A8 "
                f"{100 * m['layer-wise data-free']['W2A8']:.2f}%  sparsity@4 "
                f"{100 * ev['sparsity@4']:.1f}%  ({result['seconds']:.0f} s)"
            )
    summary = summarize(runs)
    doc = {
        "study": "psgd",
        "data": data,
        "arch": arch,
        "seeds": seeds,
        "epochs": epochs,
        "lr": lr,
        "lambda_s": lambda_s,
        "target_bits": target_bits,
        "scaling": scaling,
        "summary": summary,
        "paper_imagenet_resnet18": {f"{o}/{m}/{w}": v for (o, m, w), v in PAPER.items()},
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    if report is not None:
        atomic_write_text(report, json.dumps(doc, indent=2) + "\n")
    if plot_dir is not None:
        plots(doc, Path(plot_dir))
    return doc


def _ms(values) -> dict:
    v = np.array([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "n": int(v.size),
    }


def summarize(runs: list[dict]) -> dict:
    """Mean/std over seeds: {optimizer: {"float", "sparsity@4", method: {width: ms}}}."""
    out: dict = {}
    for opt in ("sgd", "psgd"):
        rs = [r for r in runs if r["config"]["optimizer"] == opt]
        if not rs:
            continue
        d = {"float": _ms(r["float"] for r in rs), "sparsity@4": _ms(r["sparsity@4"] for r in rs)}
        for method in METHODS:
            d[method] = {
                f"W{w}A{a}": _ms(r["methods"][method][f"W{w}A{a}"] for r in rs) for w, a in WIDTHS
            }
        out[opt] = d
    return out


def table(doc: dict) -> str:
    """The paper-style table: rows optimizer x method, columns widths, mean +- std (%)."""
    s = doc["summary"]
    cols = [f"W{w}A{a}" for w, a in WIDTHS]

    def fmt(ms):
        if ms["mean"] is None:
            return "n/a"
        return f"{100 * ms['mean']:.1f}±{100 * ms['std']:.1f}"

    hdr = (
        f"{'training / quantization':<36}"
        + "".join(f"{c:>13}" for c in cols)
        + f"{'sparsity@4':>13}   paper (ImageNet R18)"
    )
    lines = [
        f"PSGD study on {doc['data']} ({doc['arch']}, {doc['seeds']} seeds, "
        f"{doc['epochs']} epochs; accuracy %, mean ± std)",
        hdr,
        "-" * len(hdr),
    ]
    for opt in ("sgd", "psgd"):
        if opt not in s:
            continue
        lines.append(f"{opt.upper()} float: {fmt(s[opt]['float'])}")
        for method in METHODS:
            paper = [f"{w} {v}" for (o, m, w), v in PAPER.items() if o == opt and m == method]
            sp = fmt(s[opt]["sparsity@4"]) if method == "layer-wise data-free" else ""
            if method == "layer-wise data-free" and (opt, "sparsity@4", "") in PAPER:
                paper.append(f"sparsity {PAPER[(opt, 'sparsity@4', '')]}")
            lines.append(
                f"  {opt.upper() + ' ' + method:<34}"
                + "".join(f"{fmt(s[opt][method][c]):>13}" for c in cols)
                + f"{sp:>13}   {', '.join(paper)}"
            )
    return "\n".join(lines)


def plots(doc: dict, out_dir: Path) -> list[Path]:
    """accuracy_vs_bits.png and weight_histogram.png in ``out_dir`` (atomically)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwsim.graph import import_model
    from hwsim.graph.ir import MAC_OPS
    from hwsim.io import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=120)
        plt.close(fig)
        atomic_write_bytes(out_dir / name, buf.getvalue())
        written.append(out_dir / name)

    s = doc["summary"]
    cols = [f"W{w}A{a}" for w, a in WIDTHS]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for opt, ls in (("sgd", "--"), ("psgd", "-")):
        for method in METHODS:
            if opt not in s:
                continue
            m = [100 * (s[opt][method][c]["mean"] or 0) for c in cols]
            e = [100 * (s[opt][method][c]["std"] or 0) for c in cols]
            ax.errorbar(
                cols, m, yerr=e, ls=ls, marker="o", capsize=3, label=f"{opt.upper()} {method}"
            )
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"PSGD vs SGD on {doc['data']} ({doc['arch']}), emulated integer datapath")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    save(fig, "accuracy_vs_bits.png")

    first = {r["config"]["optimizer"]: r for r in doc["runs"] if r["config"]["seed"] == 0}
    if {"sgd", "psgd"} <= set(first):
        bits = doc["target_bits"]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, opt in zip(axes, ("sgd", "psgd"), strict=True):
            nodes = [n for n in import_model(first[opt]["model"]).nodes if n.op in MAC_OPS]
            n = max(nodes, key=lambda n: n.weight.size)
            w = n.weight.ravel().astype(np.float64)
            step = np.abs(w).max() / (2 ** (bits - 1) - 1)
            ax.hist(w, bins=150, color="C0" if opt == "sgd" else "C1")
            for k in range(-(2 ** (bits - 1) - 1), 2 ** (bits - 1)):
                ax.axvline(k * step, color="k", lw=0.5, alpha=0.5)
            ax.set_title(f"{opt.upper()}: {n.name} ({w.size} weights), {bits}-bit grid", fontsize=8)
            ax.set_yscale("log")
        fig.tight_layout()
        save(fig, "weight_histogram.png")
    return written


__all__ = [
    "METHODS",
    "PAPER",
    "WIDTHS",
    "StudyError",
    "evaluate",
    "plots",
    "sparsity_at",
    "study_psgd",
    "summarize",
    "table",
]
