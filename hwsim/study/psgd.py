"""``hwsim study psgd``: does PSGD make plain layer-wise quantization work? (PSGD paper, seed 000)

For each seed, three models of the same architecture are trained on ``<data>-train`` with the
same budget and exported to ONNX:

* ``sgd`` -- plain SGD (the shipped models' recipe: Nesterov momentum, weight decay 5e-4);
* ``psgd`` -- PSGD (``hwsim.train.psgd``; official scaling, lambda_s 150, 4-bit target, the
  first half of the epochs plain SGD with the official optimizer settings, then scaled);
* ``control`` -- the PSGD run with the scaling never switched on (``psgd_warmup=1``): the same
  optimizer settings and schedule, so ``psgd`` vs ``control`` isolates the gradient scaling.

Each is then quantized and run on the emulated integer datapath on the held-out ``<data>``
set with:

* ``layer-wise data-free`` -- per-tensor weights, activation ranges from BatchNorm
  parameters, no data at all (the paper's headline setting);
* ``layer-wise + min/max`` and ``layer-wise + percentile`` -- per-tensor weights, activation
  ranges calibrated on training data (min/max, and 99.99th-percentile clipping): PSGD combined
  with a post-training calibration, the paper's "PSGD + LAPQ" row in spirit;
* ``channel-wise naive`` -- per-channel weights, min/max-calibrated activations (the paper's
  ACIQ-style channel-wise baseline);

at W8A8, W4A8, W4A4 and W2A8. Conventions, as in the official code (``Jangho-Kim/PSG-pytorch``):

* layer-wise methods keep the trained conv weights on one per-tensor grid and move the
  BatchNorm factor into the scale register (``bn_fold="register"``), as the paper quantizes conv
  weights with BN kept apart, so the grid evaluated is the grid PSGD trains toward;
* "A4" quantizes the activations that feed a MAC layer; the network output (the last layer's
  logits) stays at :data:`LOGIT_BITS` bits (the official code quantizes ReLU outputs only and
  leaves the logits in float). Quantizing the logits to 4 bits with a data-free (interval
  arithmetic) range, 5-9x the calibrated one on digits, made every model's data-free W4A4
  accuracy a measure of that one range (docs/psgd.md);
* W2A8 keeps the first and last layer's weights at 8 bits (the official ``--first_last_quant``
  uses 8 bits below 4).

Weight metrics at 4 bits, on the weights the layer-wise scheme quantizes (conv weights before
BatchNorm folding): the fraction that quantizes to zero (sparsity), the SQNR of the 4-bit
weights in dB, and the mean distance to the 4-bit grid in grid steps (0 on the grid, 0.25 for
weights spread uniformly) -- what PSGD directly optimizes. Results are mean +- std over seeds.

Every run's result is written (atomically) to ``<workdir>/runs/<optimizer>-seed<k>.json`` as
soon as it completes; a rerun with the same settings reuses them, so an interrupted study
keeps what it finished.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from hwsim.errors import HwsimError
from hwsim.io import atomic_write_text
from hwsim.numerics.affine import symmetric_grid
from hwsim.report import sqnr_db

WIDTHS = ((8, 8), (4, 8), (4, 4), (2, 8))
#: Bits of the network output (the last MAC layer's logits) when the activations are narrower.
LOGIT_BITS = 8
#: First and last layer weight bits when the weights have fewer than 4 (the official code's 8).
FIRST_LAST_BITS = 8
#: Bumped when the evaluation changes, so that saved runs of an older evaluation are not reused.
EVAL_VERSION = 2
#: The trained models: optimizer and extra ``train`` arguments.
OPTIMIZERS = {
    "sgd": dict(optimizer="sgd"),
    "control": dict(optimizer="psgd", psgd_warmup=1.0),
    "psgd": dict(optimizer="psgd"),
}
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


class StudyError(HwsimError):
    """A study setting that cannot run (unknown data set, bad seed count, ...)."""


def _layerwise_weights(path) -> list:
    """The weights of every conv/dense layer as the layer-wise scheme quantizes them (a conv's
    own weights before BatchNorm folding, ``bn_fold="register"``), as float64 arrays."""
    from hwsim.graph import import_model
    from hwsim.graph.ir import MAC_OPS

    out = []
    for n in import_model(path).nodes:
        if n.op in MAC_OPS:
            out.append((n.name, np.asarray(n.attrs.get("weight_unfolded", n.weight), np.float64)))
    return out


def weight_stats(path, bits: int = 4) -> dict:
    """On the symmetric restricted per-tensor grid at ``bits`` (round half to even), over every
    conv/dense weight the layer-wise scheme quantizes: ``sparsity`` (fraction mapped to zero),
    ``sqnr_db`` (10 log10 of sum w^2 / sum (w - Q(w))^2 over all those weights) and
    ``grid_distance`` (mean |w - Q(w)| / step: 0 on the grid, 0.25 for weights spread
    uniformly)."""
    zeros = total = 0
    sig = err = dist = 0.0
    for _, w in _layerwise_weights(path):
        step, _ = symmetric_grid(float(np.abs(w).max()), bits)
        if step == 0:
            zeros += w.size
            total += w.size
            continue
        q = np.rint(w / step)
        zeros += int(np.count_nonzero(q == 0))
        total += w.size
        e = w - q * step
        sig += float(np.sum(w * w))
        err += float(np.sum(e * e))
        dist += float(np.sum(np.abs(e))) / step
    return {
        "sparsity": zeros / total,
        "sqnr_db": sqnr_db(sig, err),
        "grid_distance": dist / total,
    }


def _scheme_kw(method: str, wb: int, ab: int, last: str) -> dict:
    kw = dict(METHODS[method], wbits=wb, abits=ab)
    if ab < LOGIT_BITS:
        kw["overrides"] = {last: {"abits": LOGIT_BITS}}
    if wb < 4:
        kw["first_last_bits"] = FIRST_LAST_BITS
    return kw


def evaluate(path, data: str, calib: str) -> dict:
    """Every method x width on one model: {method: {"W8A8": accuracy, ...}}, float accuracy and
    the 4-bit weight metrics (:func:`weight_stats`)."""
    from hwsim.data import load_data
    from hwsim.execute import run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize
    from hwsim.report import DEFAULT_BATCH, run_program

    ds = load_data(data)
    last = _layerwise_weights(path)[-1][0]
    out: dict = {}
    float_acc = None
    for method in METHODS:
        res = {}
        for wb, ab in WIDTHS:
            kw = _scheme_kw(method, wb, ab, last)
            scheme = Scheme.preset(kw.pop("scheme"), **kw)
            graph = import_model(path)
            if scheme.name == "data-free":
                program = quantize(graph, scheme, None, DEFAULT_BATCH, (0.0, 1.0), float_run=run_float)
            else:
                cal = load_data(calib, graph.input_shape)
                program = quantize(graph, scheme, cal, DEFAULT_BATCH, None, float_run=run_float)
            rep, _ = run_program(program, ds)
            res[f"W{wb}A{ab}"] = rep.int_accuracy
            float_acc = rep.float_accuracy
        out[method] = res
    ws = weight_stats(path, 4)
    return {
        "float": float_acc,
        "methods": out,
        "sparsity@4": ws["sparsity"],
        "sqnr@4": ws["sqnr_db"],
        "grid_distance@4": ws["grid_distance"],
    }


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
    """Train SGD, control and PSGD models for ``seeds`` seeds and evaluate them (module
    docstring). ``lambda_s``, ``target_bits`` and ``scaling`` set the PSGD model's training
    (``lambda_s=None``: the official 150)."""
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
        for opt, opt_kw in OPTIMIZERS.items():
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
                "eval_version": EVAL_VERSION,
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
            kw = dict(opt_kw)
            if lambda_s is not None:
                kw["lambda_s"] = lambda_s
            rec = train_model(
                arch,
                data=f"{data}-train",
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
                f"{100 * ev['sparsity@4']:.1f}%  SQNR@4 {ev['sqnr@4']:.1f} dB  "
                f"grid distance@4 {ev['grid_distance@4']:.3f}  ({result['seconds']:.0f} s)"
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
    """Mean/std over seeds: {optimizer: {"float", "sparsity@4", "sqnr@4", "grid_distance@4",
    method: {width: ms}}}."""
    out: dict = {}
    for opt in OPTIMIZERS:
        rs = [r for r in runs if r["config"]["optimizer"] == opt]
        if not rs:
            continue
        d = {k: _ms(r[k] for r in rs) for k in ("float",) + WEIGHT_METRICS}
        for method in METHODS:
            d[method] = {
                f"W{w}A{a}": _ms(r["methods"][method][f"W{w}A{a}"] for r in rs) for w, a in WIDTHS
            }
        out[opt] = d
    return out


WEIGHT_METRICS = ("sparsity@4", "sqnr@4", "grid_distance@4")
_LABEL = {"sgd": "SGD", "control": "control", "psgd": "PSGD"}


def table(doc: dict) -> str:
    """The paper-style table: rows optimizer x method, columns widths (accuracy %, mean +- std
    over seeds), then the 4-bit weight metrics and the paper's ImageNet ResNet-18 figures."""
    s = doc["summary"]
    cols = [f"W{w}A{a}" for w, a in WIDTHS]

    def fmt(ms, scale=100.0, digits=1):
        if ms["mean"] is None:
            return "n/a"
        return f"{scale * ms['mean']:.{digits}f}±{scale * ms['std']:.{digits}f}"

    hdr = (
        f"{'training / quantization':<34}"
        + "".join(f"{c:>11}" for c in cols)
        + f"{'zeros@4 %':>11}{'SQNR@4 dB':>11}{'grid d@4':>12}   paper (ImageNet R18)"
    )
    lines = [
        f"PSGD study on {doc['data']} ({doc['arch']}, {doc['seeds']} seeds, "
        f"{doc['epochs']} epochs; accuracy %, mean ± std; A<8: logits at {LOGIT_BITS} bits; "
        f"W2: first/last layer at {FIRST_LAST_BITS} bits)",
        hdr,
        "-" * len(hdr),
    ]
    for opt in OPTIMIZERS:
        if opt not in s:
            continue
        d = s[opt]
        lines.append(f"{_LABEL[opt]} float: {fmt(d['float'])}")
        for method in METHODS:
            paper = [f"{w} {v}" for (o, m, w), v in PAPER.items() if o == opt and m == method]
            wm = ""
            if method == "layer-wise data-free":
                wm = (
                    f"{fmt(d['sparsity@4']):>11}{fmt(d['sqnr@4'], 1.0):>11}"
                    f"{fmt(d['grid_distance@4'], 1.0, 3):>12}"
                )
                if (opt, "sparsity@4", "") in PAPER:
                    paper.append(f"sparsity {PAPER[(opt, 'sparsity@4', '')]}")
            lines.append(
                f"  {_LABEL[opt] + ' ' + method:<32}"
                + "".join(f"{fmt(d[method][c]):>11}" for c in cols)
                + f"{wm:<34}   {', '.join(paper)}".rstrip()
            )
    return "\n".join(lines)


def plots(doc: dict, out_dir: Path) -> list[Path]:
    """accuracy_vs_bits.png and weight_histogram.png in ``out_dir`` (atomically)."""

    from hwsim.report import pyplot, save_png

    plt = pyplot()

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name):
        save_png(fig, out_dir / name)
        written.append(out_dir / name)

    s = doc["summary"]
    cols = [f"W{w}A{a}" for w, a in WIDTHS]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"sgd": ("--", "s"), "control": (":", "^"), "psgd": ("-", "o")}
    for i, method in enumerate(METHODS):
        for opt, (ls, mk) in styles.items():
            if opt not in s:
                continue
            m = [100 * (s[opt][method][c]["mean"] or 0) for c in cols]
            e = [100 * (s[opt][method][c]["std"] or 0) for c in cols]
            ax.errorbar(
                cols, m, yerr=e, ls=ls, marker=mk, capsize=3, color=f"C{i}",
                label=f"{_LABEL[opt]} {method}",
            )  # fmt: skip
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(
        f"SGD / control / PSGD on {doc['data']} ({doc['arch']}), emulated integer datapath",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5.5, ncol=2)
    fig.tight_layout()
    save(fig, "accuracy_vs_bits.png")

    first = {r["config"]["optimizer"]: r for r in doc["runs"] if r["config"]["seed"] == 0}
    shown = [o for o in OPTIMIZERS if o in first]
    if {"sgd", "psgd"} <= set(shown):
        bits = 4
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.5))
        for ax, opt in zip(axes, shown, strict=True):
            name, w = max(_layerwise_weights(first[opt]["model"]), key=lambda nw: nw[1].size)
            w = w.ravel()
            step, qmax = symmetric_grid(float(np.abs(w).max()), bits)
            ax.hist(w, bins=150, color={"sgd": "C0", "control": "C2", "psgd": "C1"}[opt])
            for k in range(-qmax, qmax + 1):
                ax.axvline(k * step, color="k", lw=0.5, alpha=0.5)
            ax.set_title(
                f"{_LABEL[opt]} seed 0: {name} ({w.size} weights, before BN folding), "
                f"{bits}-bit grid",
                fontsize=7,
            )
            ax.set_yscale("log")
        fig.tight_layout()
        save(fig, "weight_histogram.png")
    return written


__all__ = [
    "FIRST_LAST_BITS",
    "LOGIT_BITS",
    "METHODS",
    "OPTIMIZERS",
    "PAPER",
    "WIDTHS",
    "StudyError",
    "evaluate",
    "plots",
    "study_psgd",
    "summarize",
    "table",
    "weight_stats",
]
