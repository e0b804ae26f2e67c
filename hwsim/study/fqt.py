"""``hwsim study fqt``: fully quantized training -- how narrow can the gradients be? (the FQT
paper, Chen et al., NeurIPS 2020, arXiv 2010.14298; seed 001)

Two small tasks (:mod:`hwsim.study.fqt_tasks`): ``cnn``, the shipped residual CNN on a built-in
image set (digits by default), and ``transformer``, a 2-layer encoder that sorts 8 tokens of 16
(an offline synthetic sequence task; scored by exact match of the whole sequence). Each is
trained, for every seed, as:

* ``exact`` -- the float model, not converted;
* ``qat`` -- every ``nn.Linear`` / ``nn.Conv2d`` with the 8-bit quantized forward and the exact
  backward (:func:`hwsim.train.fqt_torch.convert` with ``grad=None``);
* ``<kind>-b<bits>`` -- fully quantized training: the same forward, and the output gradient of
  every such layer stochastically quantized to ``bits`` by ``kind`` (``ptq``, ``psq``, ``bhq``,
  ``psq-shift``; :mod:`hwsim.train.fqt`) before both backward GEMMs; per sample (cnn) or per
  token (transformer). ``psq-shift`` uses ``S_max =`` :data:`PAPER_S_MAX` (the paper's "[0, 4]");
* the ``S_max`` sweep -- ``psq-shift`` at the ``s_max_bits`` widths with ``S_max`` in
  ``s_max_sweep`` (``S_max = 0`` is one symmetric per-tensor range: PTQ's symmetric twin).

Reported (mean ± std over seeds, held-out metric in %): the paper's BLEU table laid out for our
tasks (rows Exact, QAT, PTQ, PSQ, BHQ, PSQ-shift; columns the gradient widths) beside the
paper's IWSLT14 figures, the smallest width at which each quantizer stays within
:data:`WITHIN` point of QAT (and so the paper's "BHQ needs about 3 fewer bits than PTQ"), the
``S_max`` sweep, and the gradient variance of every quantizer and width on fixed weights and one
fixed minibatch (:func:`hwsim.study.fqt_tasks.variance`: the weight gradient of the quantized
backward over stochastic draws, and :func:`hwsim.train.fqt.gradient_variance` of each layer's
output gradient), with the SGD minibatch-sampling variance for scale.

Every run's result is written atomically to ``<workdir>/runs/<task>-<config>-seed<k>.json`` as
soon as it finishes, its ``config`` holding every setting; a rerun reuses a file whose config
matches. A run whose loss or weights become non-finite is recorded as ``diverged`` (and shown so
in the table), not dropped.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np

from hwsim.io import atomic_write_text
from hwsim.study.psgd import StudyError
from hwsim.train.fqt import BITS_RANGE, GRAD_QUANTIZERS, S_MAX_RANGE

TASKS = ("cnn", "transformer")
#: Default gradient widths (the paper's table has 8 and 5; 3 and 2 resolve "3 fewer bits" on
#: tasks this small, where every quantizer is still close to QAT at 4 bits).
GRAD_BITS = (8, 6, 5, 4, 3, 2)
S_MAX_SWEEP = (0, 1, 2, 3, 4, 5, 6)
#: Widths of the S_max sweep (where PTQ and PSQ differ on both tasks).
S_MAX_BITS = (4,)
#: psq-shift's S_max outside the sweep: the paper's "[0, 4] is enough".
PAPER_S_MAX = 4
#: "Stays within 1 point of QAT".
WITHIN = 1.0
DEFAULT_SEEDS = 2
#: Per task: epochs and learning rate of every run (exact, QAT and quantized alike).
TASK_DEFAULTS = {
    "cnn": {"epochs": 10, "lr": 0.05},
    "transformer": {"epochs": 8, "lr": 0.01},
}
#: Variance measurement: stochastic draws, minibatches for the sampling variance, epochs of
#: exact training before (the fixed weights).
DRAWS, BATCHES, WARM_EPOCHS = 16, 16, 2
#: ``quick``: a smoke run of about a minute.
QUICK = {
    "seeds": 1,
    "epochs": {"cnn": 3, "transformer": 3},
    "grad_bits": (8, 4),
    "s_max_sweep": (0, 4),
    "s_max_bits": (4,),
    "train_size": {"cnn": None, "transformer": 1000},
    "test_size": {"cnn": None, "transformer": 500},
    "draws": 3,
    "batches": 3,
    "warm_epochs": 1,
}
#: Bumped when training or evaluation changes, so that older run files are not reused.
STUDY_VERSION = 1
#: The paper's IWSLT14 En-De transformer BLEU (REFERENCES.md, "FQT"): exact, QAT, and the
#: gradient quantizers at 8 and 5 bits.
PAPER_BLEU = {
    "exact": 34.55,
    "qat": 34.47,
    ("ptq", 8): 34.33,
    ("psq", 8): 34.39,
    ("bhq", 8): 34.51,
    ("ptq", 5): 0.02,
    ("psq", 5): 33.17,
    ("bhq", 5): 33.70,
}
_LABEL = {"ptq": "PTQ", "psq": "PSQ", "bhq": "BHQ", "psq-shift": "PSQ-shift"}


def _check_list(name: str, flag: str, values, allowed_lo: int, allowed_hi: int) -> tuple:
    try:
        vals = tuple(int(v) for v in values)
        ok = all(not isinstance(v, bool) and int(v) == v for v in values)
    except (TypeError, ValueError):
        ok = False
    if not ok or not vals or any(not allowed_lo <= v <= allowed_hi for v in vals):
        raise StudyError(
            f"{name} ({flag}) must be a non-empty list of ints in [{allowed_lo}, {allowed_hi}], "
            f"got {values!r}"
        )
    return tuple(dict.fromkeys(vals))  # unique, order kept


def _check(data, task, seeds, grad_bits, quantizers, s_max_sweep, s_max_bits, epochs):
    from hwsim.data import BUILTIN

    if data not in BUILTIN or data.endswith("-train") or f"{data}-train" not in BUILTIN:
        held = [k for k in BUILTIN if not k.endswith("-train")]
        raise StudyError(
            f"study data (--data) must be a built-in set with a training split: "
            f"{', '.join(held)}; got {data!r}"
        )
    if task not in TASKS + ("both",):
        raise StudyError(
            f"task (--task) must be one of {', '.join(TASKS + ('both',))}; got {task!r}"
        )
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"seeds (--seeds) must be an int >= 1, got {seeds!r}")
    if epochs is not None and (
        isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1
    ):
        raise StudyError(f"epochs (--epochs) must be an int >= 1, got {epochs!r}")
    gb = _check_list("gradient bits", "--grad-bits", grad_bits, *BITS_RANGE)
    sb = _check_list("S_max sweep widths", "--s-max-bits", s_max_bits, *BITS_RANGE)
    sw = _check_list("S_max sweep", "--s-max-sweep", s_max_sweep, *S_MAX_RANGE)
    if isinstance(quantizers, str):
        quantizers = quantizers.split(",")
    qs = tuple(dict.fromkeys(quantizers))
    bad = [q for q in qs if q not in GRAD_QUANTIZERS]
    if bad or not qs:
        raise StudyError(
            f"quantizers (--quantizers) must be a non-empty list of {', '.join(GRAD_QUANTIZERS)}; "
            f"got {', '.join(map(str, bad or qs)) or 'none'}"
        )
    return gb, qs, sw, sb


def _config_name(mode: str, kind=None, bits=None, s_max=None) -> str:
    if mode != "fqt":
        return mode
    return f"{kind}-b{bits}" + (f"-s{s_max}" if kind == "psq-shift" else "")


def _load(path: Path, cfg: dict):
    """The saved result at ``path`` if its config is ``cfg``, else None."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return old if isinstance(old, dict) and old.get("config") == cfg else None


def study_fqt(
    data: str = "digits",
    task: str = "both",
    seeds: int | None = None,
    epochs: int | None = None,
    grad_bits=None,
    quantizers=GRAD_QUANTIZERS,
    s_max_sweep=None,
    s_max_bits=None,
    quick: bool = False,
    variance: bool = True,
    workdir=None,
    report=None,
    plot_dir=None,
    log=print,
) -> dict:
    """Train and evaluate every configuration of the module docstring; return the result dict
    (JSON-able; :func:`table` formats it) and write ``report`` (JSON) and the plots in
    ``plot_dir`` if given. ``task``: ``cnn``, ``transformer`` or ``both``; ``data``: the cnn's
    built-in image set (the transformer's data are its own); ``epochs`` overrides both tasks'
    defaults (:data:`TASK_DEFAULTS`); ``None`` settings take the defaults, or
    the :data:`QUICK` ones with ``quick``. ``variance=False`` skips the variance measurement.
    Errors in the settings raise :class:`StudyError` naming the flag and the allowed values,
    before any training."""
    from hwsim.train.fqt import GradQuant

    q = QUICK if quick else {}
    seeds = q.get("seeds", DEFAULT_SEEDS) if seeds is None else seeds
    grad_bits = q.get("grad_bits", GRAD_BITS) if grad_bits is None else grad_bits
    s_max_sweep = q.get("s_max_sweep", S_MAX_SWEEP) if s_max_sweep is None else s_max_sweep
    s_max_bits = q.get("s_max_bits", S_MAX_BITS) if s_max_bits is None else s_max_bits
    grad_bits, quantizers, s_max_sweep, s_max_bits = _check(
        data, task, seeds, grad_bits, quantizers, s_max_sweep, s_max_bits, epochs
    )
    from hwsim.study import fqt_tasks as ft  # torch: after the settings are checked
    from hwsim.train.fit import DivergedError

    tasks = TASKS if task == "both" else (task,)
    work = Path(workdir or f"hwsim-study-fqt-{data}" + ("-quick" if quick else ""))
    (work / "runs").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs, variances, settings = [], {}, {}
    for tk in tasks:
        td = ft.load_task(tk, data, q.get("train_size", {}).get(tk), q.get("test_size", {}).get(tk))
        ep = epochs or q.get("epochs", {}).get(tk) or TASK_DEFAULTS[tk]["epochs"]
        lr = TASK_DEFAULTS[tk]["lr"]
        base = {
            "study_version": STUDY_VERSION,
            "task": tk,
            "data": data if tk == "cnn" else f"sort{ft.SEQ_LEN}x{ft.VOCAB}",
            "epochs": ep,
            "lr": lr,
            "batch": ft.BATCH,
            "train_size": len(td.y),
            "test_size": len(td.y_test),
            "forward_bits": 8,
            "datapath": "float",
        }
        settings[tk] = {"epochs": ep, "lr": lr, "metric": td.metric, "description": td.description,
                        "train_size": len(td.y), "test_size": len(td.y_test)}  # fmt: skip
        plan = {"exact": ("exact", None), "qat": ("qat", None)}
        for kind in quantizers:
            for b in grad_bits:
                gq = GradQuant(kind, b, PAPER_S_MAX)
                plan[_config_name("fqt", kind, b, PAPER_S_MAX)] = ("fqt", gq)
        for b in s_max_bits:
            for s in s_max_sweep:
                plan[_config_name("fqt", "psq-shift", b, s)] = ("fqt", GradQuant("psq-shift", b, s))
        for seed in range(seeds):
            for name, (mode, gq) in plan.items():
                cfg = dict(base, mode=mode, seed=seed, kind=gq.kind if gq else None,
                           bits=gq.bits if gq else None,
                           s_max=gq.s_max if gq and gq.kind == "psq-shift" else None)  # fmt: skip
                cfg = {k: cfg[k] for k in sorted(cfg)}
                path = work / "runs" / f"{tk}-{name}-seed{seed}.json"
                old = _load(path, cfg)
                if old is not None:
                    log(f"[{tk} {name} seed {seed}] reused {path}")
                    runs.append(old)
                    continue
                t = time.perf_counter()
                try:
                    res = ft.train_run(tk, td, mode, gq, seed, ep, lr)
                except DivergedError as e:
                    res = {"status": "diverged", "metrics": None, "error": str(e),
                           "seconds": time.perf_counter() - t}  # fmt: skip
                result = {"config": cfg, "name": name, **res}
                atomic_write_text(path, json.dumps(result, indent=2) + "\n")
                runs.append(result)
                if res["status"] == "ok":
                    m = ", ".join(f"{k} {v:.2f}%" for k, v in res["metrics"].items())
                else:
                    m = "DIVERGED"
                log(f"[{tk} {name} seed {seed}] {m}  ({res['seconds']:.1f} s)")
        if variance:
            variances[tk] = _variance(ft, tk, td, data, quantizers, grad_bits, lr, q, work, log)
    doc = {
        "study": "fqt",
        "data": data,
        "tasks": list(tasks),
        "seeds": seeds,
        "quick": quick,
        "grad_bits": list(grad_bits),
        "quantizers": list(quantizers),
        "s_max_sweep": list(s_max_sweep),
        "s_max_bits": list(s_max_bits),
        "paper_s_max": PAPER_S_MAX,
        "settings": settings,
        "summary": {
            tk: summarize(
                [r for r in runs if r["config"]["task"] == tk],
                settings[tk],
                grad_bits,
                quantizers,
                s_max_sweep,
                s_max_bits,
            )
            for tk in tasks
        },  # fmt: skip
        "variance": variances,
        "paper_iwslt14_bleu": {
            (k if isinstance(k, str) else f"{k[0]}-{k[1]}"): v for k, v in PAPER_BLEU.items()
        },
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }
    if report is not None:
        atomic_write_text(report, json.dumps(doc, indent=2) + "\n")
    if plot_dir is not None:
        plots(doc, Path(plot_dir))
    return doc


def _variance(ft, tk, td, data, quantizers, grad_bits, lr, q, work, log) -> dict:
    """The variance measurement of one task (seed 0), reused from its run file."""
    from hwsim.train.fqt import GradQuant

    draws, batches = q.get("draws", DRAWS), q.get("batches", BATCHES)
    warm = q.get("warm_epochs", WARM_EPOCHS)
    cfg = {
        "study_version": STUDY_VERSION,
        "task": tk,
        "data": data if tk == "cnn" else f"sort{ft.SEQ_LEN}x{ft.VOCAB}",
        "quantizers": list(quantizers),
        "bits": list(grad_bits),
        "s_max": PAPER_S_MAX,
        "draws": draws,
        "batches": batches,
        "warm_epochs": warm,
        "lr": lr,
        "batch": ft.BATCH,
        "train_size": len(td.y),
        "seed": 0,
    }
    path = work / "runs" / f"{tk}-variance-seed0.json"
    old = _load(path, cfg)
    if old is not None:
        log(f"[{tk} variance] reused {path}")
        return old
    qs = [GradQuant(k, b, PAPER_S_MAX) for k in quantizers for b in grad_bits]
    v = ft.variance(tk, td, qs, 0, warm, lr, draws, batches)
    res = {
        "config": cfg,
        **{
            part: {f"{k}-{b}": val for (k, b), val in v[part].items()}
            for part in ("weight", "output", "bias")
        },
        "sampling": v["sampling"],
        "layers": v["layers"],
        "seconds": v["seconds"],
    }
    atomic_write_text(path, json.dumps(res, indent=2) + "\n")
    log(f"[{tk} variance] {len(qs)} quantizers x {draws} draws ({v['seconds']:.1f} s)")
    return res


# --- summary ----------------------------------------------------------------------------------
def _ms(runs: list[dict], metric: str) -> dict:
    """Mean / std (ddof 1) over the finished runs, the count and how many diverged."""
    ok = [r["metrics"][metric] for r in runs if r["status"] == "ok"]
    div = sum(r["status"] == "diverged" for r in runs)
    v = np.array(ok, np.float64)
    return {
        "mean": float(v.mean()) if v.size else None,
        "std": (float(v.std(ddof=1)) if v.size > 1 else 0.0) if v.size else None,
        "n": int(v.size),
        "diverged": int(div),
    }


def within(summary: dict, kind: str, margin: float = WITHIN):
    """The smallest gradient width from which up every measured width of ``kind`` has a mean
    within ``margin`` points of QAT and no diverged run (None: not even the widest)."""
    qat = summary["qat"]["mean"]
    best = None
    row = summary["grid"].get(kind, {})
    for b in sorted((int(b) for b in row), reverse=True):
        ms = row[str(b)]
        if qat is None or ms["mean"] is None or ms["diverged"] or ms["mean"] < qat - margin:
            break
        best = b
    return best


def summarize(runs, settings, grad_bits, quantizers, s_max_sweep, s_max_bits) -> dict:
    """Per task: ``exact``, ``qat``, ``grid[kind][bits]``, ``s_max[bits][S_max]`` (mean / std
    of the primary metric, n, diverged), ``within`` (:func:`within` per kind) and the BHQ - PTQ
    difference ``bits_saved_bhq_vs_ptq``."""
    metric = settings["metric"]

    def pick(**kw):
        return [r for r in runs if all(r["config"].get(k) == v for k, v in kw.items())]

    s = {
        "metric": metric,
        "exact": _ms(pick(mode="exact"), metric),
        "qat": _ms(pick(mode="qat"), metric),
        "grid": {
            k: {
                str(b): _ms(
                    pick(
                        mode="fqt", kind=k, bits=b, s_max=PAPER_S_MAX if k == "psq-shift" else None
                    ),
                    metric,
                )
                for b in grad_bits
            }
            for k in quantizers
        },  # fmt: skip
        "s_max": {
            str(b): {
                str(sm): _ms(pick(mode="fqt", kind="psq-shift", bits=b, s_max=sm), metric)
                for sm in s_max_sweep
            }
            for b in s_max_bits
        },  # fmt: skip
    }
    s["within"] = {k: within(s, k) for k in quantizers}
    w = s["within"]
    s["narrowest"] = min(grad_bits)
    resolved = w.get("ptq") is not None and w.get("bhq") is not None and w["ptq"] != s["narrowest"]
    s["bits_saved_bhq_vs_ptq"] = w["ptq"] - w["bhq"] if resolved else None
    return s


# --- text -------------------------------------------------------------------------------------
def _fmt(ms: dict) -> str:
    if ms["n"] == 0:
        return "diverged" if ms["diverged"] else "-"
    t = f"{ms['mean']:.1f}±{ms['std']:.1f}"
    return t + (f" ({ms['diverged']} div)" if ms["diverged"] else "")


def _within_text(s: dict, kind: str) -> str:
    b = s["within"].get(kind)
    if b is None:
        return "none"
    return f"<= {b}" if b == s["narrowest"] else f"{b}"


def _bits_saved_text(s: dict) -> str:
    """The "BHQ needs k fewer bits than PTQ" reading of :func:`within`."""
    wp, wb, low = s["within"]["ptq"], s["within"]["bhq"], s["narrowest"]
    if wb is None:
        return "not measured (BHQ is not within the margin even at the widest width)"
    if wp is None:
        return "PTQ is not within the margin even at the widest width"
    if wp == low:
        return f"not resolved (both stay within the margin down to {low} bits, the narrowest)"
    k = wp - wb
    return f"{k} or more fewer bits" if wb == low else f"{k} fewer bits"


def table(doc: dict) -> str:
    """Per task: the BLEU-table layout (rows Exact, QAT, PTQ, PSQ, BHQ, PSQ-shift; columns the
    gradient widths; mean ± std of the held-out metric, "diverged" where every seed diverged)
    with the paper's IWSLT14 BLEU beside it; the widths within 1 point of QAT; the S_max sweep;
    the gradient variance."""
    out = []
    bits = doc["grad_bits"]
    for tk in doc["tasks"]:
        s, st = doc["summary"][tk], doc["settings"][tk]
        out.append(
            f"FQT study, {tk}: {st['description']}; {doc['seeds']} seed(s), {st['epochs']} "
            f"epochs; held-out {st['metric']} %, mean ± std; 8-bit forward; gradient bits:"
        )
        hdr = f"{'':<22}" + "".join(f"{str(b) + ' bits':>15}" for b in bits)
        hdr += "   paper IWSLT14 BLEU (8 / 5 bits)"
        out += [hdr, "-" * len(hdr)]
        for key, label in (("exact", "Exact"), ("qat", "QAT")):
            out.append(f"{label:<22}{_fmt(s[key]):>15}{'':>{15 * (len(bits) - 1)}}"
                       f"   {PAPER_BLEU[key]}")  # fmt: skip
        for k in doc["quantizers"]:
            label = _LABEL[k] + (f" (S_max {doc['paper_s_max']})" if k == "psq-shift" else "")
            paper = " / ".join(str(PAPER_BLEU[(k, b)]) for b in (8, 5) if (k, b) in PAPER_BLEU)
            out.append(f"{label:<22}" + "".join(f"{_fmt(s['grid'][k][str(b)]):>15}" for b in bits)
                       + f"   {paper or '-'}")  # fmt: skip
        w = ", ".join(f"{_LABEL[k]} {_within_text(s, k)}" for k in doc["quantizers"])
        out.append(f"smallest gradient width within {WITHIN:g} point of QAT: {w}")
        if "ptq" in s["within"] and "bhq" in s["within"]:
            out.append(f"BHQ vs PTQ: {_bits_saved_text(s)} (paper: about 3)")
        if s["s_max"] and doc["s_max_sweep"]:
            sw = doc["s_max_sweep"]
            out.append(f"PSQ-shift S_max sweep ({st['metric']} %):")
            h = f"{'':<22}" + "".join(f"{'S_max ' + str(v):>15}" for v in sw)
            out.append(h)
            for b, row in s["s_max"].items():
                ref = []
                for k in ("ptq", "psq"):
                    if k in s["grid"] and b in s["grid"][k]:
                        ref.append(f"{_LABEL[k]} {_fmt(s['grid'][k][b])}")
                out.append(f"{b + ' bits':<22}" + "".join(f"{_fmt(row[str(v)]):>15}" for v in sw)
                           + (f"   ({', '.join(ref)})" if ref else ""))  # fmt: skip
        v = doc.get("variance", {}).get(tk)
        if v:
            out.append(
                "gradient variance (fixed weights after "
                f"{v['config']['warm_epochs']} exact epoch(s), one minibatch of "
                f"{v['config']['batch']}, {v['config']['draws']} draws), relative: weight "
                "gradient = sum of variances / |QAT gradient|^2; output gradient (per layer, "
                "gradient_variance / mean square, mean over "
                f"{v['layers']} layers)"
            )
            h = f"{'':<22}" + "".join(f"{str(b) + ' bits':>15}" for b in bits)
            out.append(h)
            for part, name in (("weight", "weight grad"), ("output", "output grad")):
                for k in doc["quantizers"]:
                    vals = [v[part].get(f"{k}-{b}") for b in bits]
                    out.append(f"{_LABEL[k] + ' ' + name:<22}"
                               + "".join(f"{x:>15.3g}" if x is not None else f"{'-':>15}"
                                         for x in vals))  # fmt: skip
            if v.get("sampling") is not None:
                out.append(f"minibatch sampling variance of the QAT weight gradient (relative): "
                           f"{v['sampling']:.3g}")  # fmt: skip
        out.append("")
    return "\n".join(out).rstrip()


# --- plots ------------------------------------------------------------------------------------
def plots(doc: dict, out_dir: Path) -> list[Path]:
    """``accuracy_vs_bits.png`` (metric vs gradient width, one line per quantizer, QAT and Exact
    as horizontal lines), ``variance_vs_bits.png`` (relative gradient variance vs width, log
    scale, one line per quantizer: weight gradient solid, output gradient dotted; the minibatch
    sampling variance dashed) and ``s_max_sweep.png``, one panel per task, in ``out_dir``
    (atomically)."""
    from hwsim.report import pyplot, save_png

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tasks, bits = doc["tasks"], doc["grad_bits"]
    xs = sorted(bits, reverse=True)

    def save(fig, name):
        fig.tight_layout()
        save_png(fig, out_dir / name)
        written.append(out_dir / name)

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, tk in zip(axes[0], tasks, strict=True):
        s = doc["summary"][tk]
        for i, k in enumerate(doc["quantizers"]):
            pts = [(b, s["grid"][k][str(b)]) for b in xs]
            pts = [(b, ms) for b, ms in pts if ms["mean"] is not None]
            if pts:
                ax.errorbar([b for b, _ in pts], [ms["mean"] for _, ms in pts],
                            yerr=[ms["std"] for _, ms in pts], marker="o", capsize=3,
                            color=f"C{i}", label=_LABEL[k])  # fmt: skip
            dv = [b for b in xs if s["grid"][k][str(b)]["diverged"]]
            if dv:
                ax.plot(dv, [0] * len(dv), "x", color=f"C{i}", ms=9)
        for key, ls in (("exact", "--"), ("qat", ":")):
            if s[key]["mean"] is not None:
                ax.axhline(s[key]["mean"], ls=ls, color="k", lw=1, label=key.upper() if key ==
                           "qat" else "Exact")  # fmt: skip
        if s["qat"]["mean"] is not None:
            ax.axhspan(s["qat"]["mean"] - WITHIN, s["qat"]["mean"], color="0.85", alpha=0.5)
        ax.set_xticks(xs)
        ax.invert_xaxis()
        ax.set_xlabel("gradient bits")
        ax.set_ylabel(f"held-out {s['metric']} (%)")
        ax.set_title(textwrap.fill(f"{tk}: {doc['settings'][tk]['description']}", 70), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "accuracy_vs_bits.png")

    if doc.get("variance"):
        vt = [tk for tk in tasks if tk in doc["variance"]]
        fig, axes = plt.subplots(1, len(vt), figsize=(5.5 * len(vt), 4.2), squeeze=False)
        for ax, tk in zip(axes[0], vt, strict=True):
            v = doc["variance"][tk]
            for i, k in enumerate(doc["quantizers"]):
                for part, ls in (("weight", "-"), ("output", ":")):
                    ys = [v[part].get(f"{k}-{b}") for b in xs]
                    ax.plot(xs, ys, ls=ls, marker="o" if part == "weight" else ".",
                            color=f"C{i}", label=f"{_LABEL[k]} ({part} grad)")  # fmt: skip
            if v.get("sampling") is not None:
                ax.axhline(v["sampling"], ls="--", color="k", lw=1,
                           label="minibatch sampling (QAT)")  # fmt: skip
            ax.set_yscale("log")
            ax.set_xticks(xs)
            ax.invert_xaxis()
            ax.set_xlabel("gradient bits")
            ax.set_ylabel("relative gradient variance")
            ax.set_title(f"{tk}: gradient variance, fixed weights and minibatch", fontsize=8)
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=6)
        save(fig, "variance_vs_bits.png")

    if doc["s_max_sweep"] and doc["s_max_bits"]:
        fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
        for ax, tk in zip(axes[0], tasks, strict=True):
            s = doc["summary"][tk]
            for i, b in enumerate(doc["s_max_bits"]):
                row = s["s_max"][str(b)]
                pts = [
                    (sm, row[str(sm)])
                    for sm in doc["s_max_sweep"]
                    if row[str(sm)]["mean"] is not None
                ]
                if pts:
                    ax.errorbar([p for p, _ in pts], [ms["mean"] for _, ms in pts],
                                yerr=[ms["std"] for _, ms in pts], marker="o", capsize=3,
                                color=f"C{i}", label=f"PSQ-shift {b} bits")  # fmt: skip
                for k, ls in (("ptq", ":"), ("psq", "--")):
                    ms = s["grid"].get(k, {}).get(str(b))
                    if ms and ms["mean"] is not None:
                        ax.axhline(ms["mean"], ls=ls, color=f"C{i}", lw=1,
                                   label=f"{_LABEL[k]} {b} bits")  # fmt: skip
            if s["qat"]["mean"] is not None:
                ax.axhline(s["qat"]["mean"], color="k", lw=1, label="QAT")
            ax.set_xlabel("S_max (largest per-sample shift)")
            ax.set_ylabel(f"held-out {s['metric']} (%)")
            ax.set_title(f"{tk}: PSQ-shift S_max sweep", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "s_max_sweep.png")
    return written


__all__ = [
    "GRAD_BITS",
    "PAPER_BLEU",
    "PAPER_S_MAX",
    "QUICK",
    "S_MAX_BITS",
    "S_MAX_SWEEP",
    "TASKS",
    "TASK_DEFAULTS",
    "StudyError",
    "plots",
    "study_fqt",
    "summarize",
    "table",
    "within",
]
