"""Run reports: accuracy, agreement, per-layer error and datapath counters; table, JSON, plot.

:func:`run_program` runs a quantized program and its float reference side by side and builds
the :class:`RunReport`. SQNR of a tensor is ``10 log10(sum f^2 / sum (f - d)^2)`` in dB over
every element of the data set, ``f`` the float-run value and ``d`` the dequantized integer-run
value (``inf`` when they are equal everywhere). Agreement is the fraction of samples whose
integer-run argmax equals the float run's.

The text every command prints is formatted here too (:meth:`RunReport.table`,
:func:`compare_table`, :func:`demo_header`, :func:`datapath_table`, :func:`models_table`,
:func:`quantize_summary`, :func:`train_summary`), so ``hwsim.cli`` only parses and prints.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from hwsim.io import atomic_write_bytes, atomic_write_text

#: The widest layer-name column of the run table; longer names keep their start and end.
NAME_WIDTH = 60


def _elide(name: str, width: int) -> str:
    """``name`` in at most ``width`` characters: its start, ``~`` and its end (layer names of
    exported models share long prefixes and end in the same ``block.0/Conv``, so cutting only
    one end makes different layers look alike)."""
    if len(name) <= width:
        return name
    head = (width - 1) // 3
    return name[:head] + "~" + name[len(name) - (width - 1 - head) :]


@dataclass
class LayerRow:
    name: str
    op: str
    output: str
    act: str
    macs: int = 0
    sqnr_db: float | None = None
    overflow_events: int = 0
    outputs_overflowed: int = 0
    acc_bits: int | None = None
    bits_needed: int | None = None
    max_abs_acc: int | None = None
    bias_overflows: int = 0
    clamped: int = 0
    bias_clamped: int = 0  # (sample, channel) biases clamped to the accumulator format
    float_op: bool = False
    pair_saturations: int | None = None  # isa avx2: raw int16 pairs clamped (eq. 16)
    outputs_pair_saturated: int | None = None
    sqnr_exact_db: float | None = None  # isa avx2: the same layer's SQNR with exact sums
    cycles: int | None = None
    energy_pj: float | None = None
    # scale registers: extremes of applied / wanted - 1 over the layer's registers (None: no
    # register); nonzero where a pow2 register was built from a real that is not a power of two
    gain_error_min: float | None = None
    gain_error_max: float | None = None

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        for k in ("sqnr_db", "sqnr_exact_db"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = "inf"
        return d


def _blank(v) -> str:
    return "" if v is None else str(v)


def _db(v) -> str:
    return "" if v is None else ("inf" if not math.isfinite(v) else f"{v:.1f}")


@dataclass
class RunReport:
    model: str
    data: str
    samples: int
    settings: dict
    float_accuracy: float | None = None
    int_accuracy: float | None = None
    agreement: float | None = None
    layers: list[LayerRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    float_reference: str = "float weights"
    cost: dict | None = None
    outputs: dict | None = None  # name -> {"dtype", "shape", "min", "max"} (QOperator runs)
    outputs_only: bool = False  # integer outputs only: no float reference, no layer rows
    macs_total: int | None = None  # the run's MACs where there are no layer rows

    def as_dict(self) -> dict:
        def total(field):  # None where nothing was counted (an outputs-only run)
            return None if self.outputs_only else sum(getattr(r, field) or 0 for r in self.layers)

        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "float_accuracy": self.float_accuracy,
            "int_accuracy": self.int_accuracy,
            "agreement": self.agreement,
            "float_reference": self.float_reference,
            "outputs_only": self.outputs_only,
            "totals": {
                "macs": self.macs,
                "overflow_events": total("overflow_events"),
                "bias_overflows": total("bias_overflows"),
                "outputs_overflowed": total("outputs_overflowed"),
                "pair_saturations": total("pair_saturations"),
                "bias_clamped": total("bias_clamped"),
            },
            "settings": self.settings,
            "cost": self.cost,
            "outputs": self.outputs,
            "layers": [r.as_dict() for r in self.layers],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "samples_per_s": round(self.samples_per_s, 1),
            "macs_per_s": round(self.macs_per_s),
        }

    @property
    def samples_per_s(self) -> float:
        """Samples per second of the whole run (integer run, float reference, statistics);
        with ``seconds`` the only fields of a report that depend on the machine's load."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    @property
    def macs_per_s(self) -> float:
        """Emulated multiply-accumulates per second (the layers' MACs over the run / seconds)."""
        return self.macs / self.seconds if self.seconds > 0 else 0.0

    @property
    def macs(self) -> int:
        """The multiply-accumulates of the run (its layers', or ``macs_total``)."""
        return self.macs_total if self.macs_total is not None else sum(r.macs for r in self.layers)

    def table(self) -> str:
        """A human table: headline figures, then one row per layer."""

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}%"

        sch = self.settings.get("scheme", {})
        lines = [
            f"model {self.model}  data {self.data} ({self.samples} samples)  "
            f"scheme {sch.get('name', '?')}",
        ]
        if self.outputs_only and self.int_accuracy is not None:
            lines.append(f"top-1 integer {pct(self.int_accuracy)} (outputs only)")
        elif (self.float_accuracy, self.int_accuracy, self.agreement) != (None, None, None):
            lines.append(
                f"top-1 float {pct(self.float_accuracy)}  integer {pct(self.int_accuracy)}  "
                f"agreement {pct(self.agreement)}"
            )
        if self.seconds > 0:
            what = (
                "the integer run, outputs only"
                if self.outputs_only
                else "the integer run, float reference and statistics"
            )
            lines.append(
                f"speed {self.samples_per_s:,.0f} samples/s, {self.macs_per_s / 1e6:,.1f} M MAC/s "
                f"({self.seconds:.2f} s for {what})"
            )
        for name, o in (self.outputs or {}).items():
            shape = "x".join(str(d) for d in o["shape"])
            rng = "" if o["min"] is None else f", min {o['min']:g} max {o['max']:g}"
            lines.append(f"output {name}: {o['dtype']} {shape}{rng}")
        pairs = any(r.pair_saturations is not None for r in self.layers)
        ow = max([8] + [len(r.op) + 1 for r in self.layers])  # the op column (transformer ops)
        nw = min(NAME_WIDTH, max([5] + [len(r.name) for r in self.layers]))  # the name column
        hdr = (
            f"{'layer':<{nw}} {'op':<{ow}} {'act':<14} {'MACs':>10} {'SQNR dB':>8} "
            f"{'ovf':>6} {'acc':>4} {'need':>4}"
        )
        if pairs:
            hdr += f" {'i16 sat':>9} {'outs':>7} {'exact dB':>8}"
        if self.layers:
            lines += [hdr, "-" * len(hdr)]
        for r in self.layers:
            sq = _db(r.sqnr_db)
            lines.append(
                f"{_elide(r.name, nw):<{nw}} {r.op + ('*' if r.float_op else ''):<{ow}} "
                f"{r.act:<14} {r.macs:>10} {sq:>8} {r.overflow_events + r.bias_overflows:>6} "
                f"{'' if r.acc_bits is None else r.acc_bits:>4} "
                f"{'' if r.bits_needed is None else r.bits_needed:>4}"
                + (
                    ""
                    if not pairs
                    else f" {_blank(r.pair_saturations):>9} {_blank(r.outputs_pair_saturated):>7}"
                    f" {_db(r.sqnr_exact_db):>8}"
                )
            )
        if any(r.float_op for r in self.layers):
            lines.append("* run as float between DequantizeLinear and QuantizeLinear")
        bo = [r for r in self.layers if r.bias_overflows]
        if bo:
            lines.append(
                "ovf includes bias additions that overflowed the accumulator (bias_overflows): "
                + ", ".join(f"{r.name} {r.bias_overflows}" for r in bo)
            )
        bc = [r for r in self.layers if r.bias_clamped]
        if bc:
            lines.append(
                "bias clamped to the accumulator range (bias_clamped, per sample and channel): "
                + ", ".join(f"{r.name} {r.bias_clamped}" for r in bc)
            )
        if pairs:
            lines.append(
                "i16 sat: uint8 x int8 product pairs clamped to int16 by onnxruntime's x86 "
                "vpmaddubsw kernels (isa avx2, docs/numerics.md eq. 16); outs: outputs with one "
                "or more; exact dB: the layer's SQNR with exact sums"
            )
        if self.cost is not None:
            a, t = self.cost["accelerator"], self.cost["totals"]
            b = self.cost["batch"]
            lines.append(
                f"accelerator {a['rows']}x{a['cols']} {a['dataflow']}: batch of {b}: "
                f"{t['total_cycles']} cycles ({t['stall_cycles']} stall) = "
                f"{t['seconds'] * 1e3:.3f} ms at {a['clock_mhz']:g} MHz, "
                f"{t['energy_pj'] / 1e6 / b:.3f} uJ/sample "
                f"(MAC {t['energy_breakdown']['mac'] / t['energy_pj']:.0%}, "
                f"SRAM {t['energy_breakdown']['sram'] / t['energy_pj']:.0%}, "
                f"DRAM {t['energy_breakdown']['dram'] / t['energy_pj']:.0%}, "
                f"scheme {t['energy_breakdown']['scheme'] / t['energy_pj']:.0%})"
            )
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)

    def write_json(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.as_dict(), indent=2, default=_jsonable) + "\n")


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def sqnr_db(signal: float, noise: float) -> float:
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays to an .npz atomically."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def ovf_total(row: dict) -> int:
    """A compare row's / sweep result's ``ovf``: the reduction's overflow events plus the bias
    additions that overflowed the accumulator (records of format 1 have no ``bias_overflows``)."""
    return row["overflow_events"] + row.get("bias_overflows", 0)


def compare_table(rows: list[dict]) -> str:
    """The sweep table of ``hwsim compare``."""
    nl = any(r["settings"]["default"].get("nonlinear", "float") != "float" for r in rows)
    hdr = (
        f"{'scheme':<18} {'W':>3} {'A':>3} {'acc':>5} "
        + (f"{'nonlin':>7} " if nl else "")
        + f"{'float':>8} {'integer':>8} {'agree':>8} {'ovf':>8} {'SQNR min':>9} {'uJ/smp':>8}"
    )
    lines = [hdr, "-" * len(hdr)]
    for r in rows:

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}"

        d = r["settings"]["default"]
        acc = f"{d['acc_bits']}{d['overflow'][0]}"
        sq = r.get("min_sqnr_db")
        sq = "" if sq is None else (f"{sq:.1f}" if isinstance(sq, float) else str(sq))
        kind = d.get("nonlinear", "float")
        lines.append(
            f"{r['scheme']:<18} {r['wbits']:>3} {r['abits']:>3} {acc:>5} "
            + (f"{kind:>7} " if nl else "")
            + f"{pct(r['float_accuracy']):>8} {pct(r['int_accuracy']):>8} "
            f"{pct(r['agreement']):>8} {ovf_total(r):>8} "
            f"{sq:>9} "
            f"{r.get('energy_pj_per_sample', 0) / 1e6:>8.3f}"
        )
    lines.append(
        "acc: accumulator bits + w(rap)/s(aturate); ovf: accumulator overflow events (products "
        "and bias additions); SQNR min: worst layer, dB; "
        "uJ/smp: energy per sample on the accelerator (hwsim cost)"
        + ("; nonlin: softmax / GELU / LayerNorm in float or integer-only (I-BERT)" if nl else "")
    )
    return "\n".join(lines)


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (matplotlib is a core dependency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | os.PathLike, dpi: int = 120) -> None:
    """Write a matplotlib figure as PNG atomically (temp file + rename) and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, quality)`` on the Pareto front (no other point has a
    lower or equal cost and a higher quality), by increasing cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def pareto_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Accuracy (or agreement) vs energy per sample, one marker per run, the Pareto front
    (lowest energy for at least that accuracy) drawn; PNG written atomically."""

    plt = pyplot()

    key = "int_accuracy" if rows and rows[0]["int_accuracy"] is not None else "agreement"
    fig, ax = plt.subplots(figsize=(6, 4))
    for scheme in sorted({r["scheme"] for r in rows}):
        rs = [r for r in rows if r["scheme"] == scheme]
        ax.scatter(
            [r["energy_pj_per_sample"] / 1e6 for r in rs], [100 * r[key] for r in rs], label=scheme
        )
        for r in rs:
            ax.annotate(
                f"W{r['wbits']}A{r['abits']}",
                (r["energy_pj_per_sample"] / 1e6, 100 * r[key]),
                fontsize=6,
            )
    idx = pareto_front([(r["energy_pj_per_sample"], r[key]) for r in rows])
    front = [rows[i] for i in idx]
    ax.plot(
        [r["energy_pj_per_sample"] / 1e6 for r in front],
        [100 * r[key] for r in front],
        "k--",
        lw=1,
        label="Pareto front",
    )
    ax.set_xlabel("energy per sample (uJ)")
    ax.set_ylabel("top-1 accuracy (%)" if key == "int_accuracy" else "agreement (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


def compare_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Accuracy (or agreement, without labels) vs weight bits, one line per scheme and
    activation width; PNG written atomically."""

    plt = pyplot()

    key = "int_accuracy" if rows and rows[0]["int_accuracy"] is not None else "agreement"
    fig, ax = plt.subplots(figsize=(6, 4))
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["scheme"], r["abits"]), []).append(r)
    for (scheme, abits), rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["wbits"])
        ax.plot(
            [r["wbits"] for r in rs],
            [100 * r[key] for r in rs],
            marker="o",
            label=f"{scheme} A{abits}",
        )
    if rows and rows[0]["float_accuracy"] is not None and key == "int_accuracy":
        ax.axhline(100 * rows[0]["float_accuracy"], color="k", ls="--", lw=1, label="float")
    ax.set_xlabel("weight bits")
    ax.set_ylabel("top-1 accuracy (%)" if key == "int_accuracy" else "agreement with float (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path)


# ------------------------------------------------------------------------------------------------
# running a program: float and integer side by side
# ------------------------------------------------------------------------------------------------
#: Samples per batch of a run (and of calibration) unless told otherwise.
DEFAULT_BATCH = 256


def _progress(total: int, desc: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="sample", leave=False, mininterval=0.5)


def gain_error_note(rows) -> str | None:
    """The report note listing the layers whose scale registers apply another gain than their
    scales ask for (``|gain error| > GAIN_TOLERANCE``: a ``pow2`` register of a real that is not
    a power of two, docs/numerics.md "Gain error"), or None."""
    from hwsim.numerics.scale import GAIN_TOLERANCE

    bad = [
        r
        for r in rows
        if r.gain_error_min is not None
        and max(abs(r.gain_error_min), abs(r.gain_error_max)) > GAIN_TOLERANCE
    ]
    if not bad:
        return None

    def rng(r):
        lo, hi = 100 * r.gain_error_min, 100 * r.gain_error_max
        return f"{lo:+.2f}%" if abs(hi - lo) < 5e-3 else f"{lo:+.2f}% to {hi:+.2f}%"

    return (
        "gain error: the scale registers of these layers apply another gain than their scales "
        "ask for (applied / wanted - 1; a shift-only pow2 register cannot apply a real that is "
        "not a power of two, docs/numerics.md): "
        + ", ".join(f"{r.name} ({r.op}) {rng(r)}" for r in bad)
    )


def run_program(
    program,
    ds,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    collect_outputs: bool = False,
    isa="exact",
    seed: int = 0,
    paired=None,
    partials: bool = True,
):
    """Run a :class:`~hwsim.quant.QuantProgram` on a :class:`~hwsim.data.Dataset` with the
    float reference (onnxruntime) and the integer executor side by side, in batches, streamed
    (:func:`hwsim.execute.paired.run_paired`); returns (report, outputs). Every figure of the
    report but its timings (``seconds``, ``samples_per_s``, ``macs_per_s``) is the same
    whatever ``batch_size`` (except in a program with onnxruntime's dynamic quantization, whose
    integers depend on the batch as onnxruntime's do).

    ``isa`` (``exact``, ``avx2``, ``auto``; :mod:`hwsim.datapath.isa`): the MAC layers' dot
    products. Under ``avx2`` an exact executor runs alongside, so every layer also reports its
    SQNR with exact sums (``sqnr_exact_db``) and its int16 pair saturations.

    ``seed``: stochastic rounding's draws (``IntegerExecutor``: one Generator per node and
    sample, ``default_rng([seed, node_index, sample_index])``), so a run is reproducible and
    its integers do not depend on ``batch_size``.

    ``paired``: a :class:`~hwsim.execute.paired.PairedRun` of ``program`` on ``ds`` computed
    elsewhere (the merged shards of ``hwsim run --workers``, :mod:`hwsim.sweep.split`): the
    report is built from it instead of running.

    ``partials=False`` (``hwsim run --no-partials``): the partial sums are not tracked, so the
    run is about 1.4-1.9x faster; the "need" column and ``max_abs_acc`` are then the final
    sums' (a lower bound of what the partial sums need) and the report says so; overflow
    counts, SQNR and every other figure are the same."""
    from hwsim.datapath.isa import Isa, resolve
    from hwsim.execute.paired import run_paired
    from hwsim.graph.ir import MAC_OPS

    t0 = time.perf_counter()
    g = program.graph
    isa = resolve(isa)
    bar = _progress(len(ds), "hwsim run", progress and paired is None)
    res = (
        paired
        if paired is not None
        else run_paired(
            program,
            ds,
            batch_size,
            isa,
            seed=seed,
            collect_outputs=collect_outputs,
            on_batch=None if bar is None else bar.update,
            partials=partials,
        )
    )
    if bar is not None:
        bar.close()
    ex = res.executor
    sig, noise, noise_exact = res.signal, res.noise, res.noise_exact
    ip, fp = res.int_pred, res.float_pred
    rep = RunReport(str(g.source), ds.name, len(ds), program.describe())
    rep.notes += res.notes
    rep.notes += list(
        g.meta.get("import_notes", ())
    )  # what import decided (float islands, bias rounding)
    macs_nodes = [n for n in g.nodes if n.op in MAC_OPS and n.wq is not None]
    if macs_nodes and all(np.array_equal(n.weight, n.wq.dequantize()) for n in macs_nodes):
        rep.float_reference = "dequantized weights"
        rep.notes.append(
            "float reference = this file's dequantized weights in float32 (the "
            "original float weights are not in a quantized file): the comparison "
            "isolates activation quantization and integer arithmetic"
        )
    if g.float_ranges:
        rep.notes.append(
            "float reference of a QDQ model: each quantized activation clamped to its "
            "QuantizeLinear range, not rounded (the quantizer removed the ReLU/Clip layers "
            "that range enforces), so SQNR counts rounding and integer arithmetic, not "
            "clipping at the calibrated range"
        )
    if ds.y is not None:
        rep.int_accuracy = float(np.mean(ip == ds.y))
        rep.float_accuracy = float(np.mean(fp == ds.y))
    else:
        rep.notes.append("the data has no labels ('y'): accuracy omitted, agreement only")
    rep.agreement = float(np.mean(ip == fp))
    for n in g.nodes:
        st = ex.stats[n.name]
        spec = program.acts.get(n.output)
        act = (
            "float"
            if spec is None
            else f"{spec.mode}/{'s' if spec.fmt.signed else 'u'}{spec.fmt.bits}"
        )
        row = LayerRow(n.name, n.op.value, n.output, act, float_op=n.name in ex.float_ops)
        row.gain_error_min, row.gain_error_max = st.gain_error_min, st.gain_error_max
        if n.op in MAC_OPS:
            c = st.counters
            layer = program.layer(n.name)
            row.macs = c.macs
            row.overflow_events = c.overflow_events
            row.outputs_overflowed = c.outputs_overflowed
            row.acc_bits = layer.acc.bits
            row.bits_needed = c.bits_needed
            ext = [
                v for v in (c.partial_min, c.partial_max, c.final_min, c.final_max) if v is not None
            ]
            row.max_abs_acc = max((abs(v) for v in ext), default=None)
            row.bias_overflows = st.bias_overflows
            row.clamped = st.clamped
            row.bias_clamped = st.bias_clamped
            if isa is not Isa.EXACT:
                row.pair_saturations = c.pair_saturations
                row.outputs_pair_saturated = c.outputs_pair_saturated
        if n.output in sig:
            row.sqnr_db = sqnr_db(sig[n.output], noise[n.output])
            if n.output in noise_exact:
                row.sqnr_exact_db = sqnr_db(sig[n.output], noise_exact[n.output])
        rep.layers.append(row)
    gain_note = gain_error_note(rep.layers)
    if gain_note:
        rep.notes.append(gain_note)
    rep.settings["isa"] = isa.value
    if not partials:
        rep.settings["partials"] = False
        rep.notes.append(
            "partial sums not tracked (--no-partials): 'need' and max_abs_acc are the final "
            "sums' bits and magnitude, a lower bound of what every partial sum needs; overflow "
            "counts are exact either way"
        )
    if isa is not Isa.EXACT:
        macs = [n.name for n in g.nodes if n.op in MAC_OPS and n.wq is not None]
        floats = sorted(m for m in macs if m in ex.float_ops)
        skipped = sorted(m for m in macs if m not in ex.isa_layers and m not in ex.float_ops)
        rep.notes.append(
            f"isa {isa.value}: {len(ex.isa_layers)} MAC layer(s) sum uint8 x int8 pairs in "
            "saturating int16 as onnxruntime's x86 kernels without VNNI do (docs/numerics.md "
            "eq. 16)"
            + (
                f"; exact in {len(skipped)} (depthwise, not uint8 x int8, or not a 32-bit "
                f"wrapping accumulator): {', '.join(skipped)}"
                if skipped
                else ""
            )
            + (
                f"; {len(floats)} run as onnxruntime's float32 ops (unfused): {', '.join(floats)}"
                if floats
                else ""
            )
        )
        import platform

        if ex.ort_plan and platform.machine().lower() not in ("x86_64", "amd64"):
            rep.notes.append(
                "the fused plan comes from this machine's onnxruntime, a non-x86 build: it "
                "keeps int8 QDQ activations int8, so int8-activation layers may be fused "
                "differently from x86 (hwsim.graph.ort_plan)"
            )
    rep.seconds = time.perf_counter() - t0
    return rep, res.outputs


def run_outputs_only(
    program, ds, batch_size: int = DEFAULT_BATCH, progress: bool = False,
    collect_outputs: bool = False, isa="exact", seed: int = 0,
):  # fmt: skip
    """``hwsim run --outputs-only``: the program's integer outputs on ``ds`` and their top-1
    accuracy, without the float reference and per-layer statistics
    (``IntegerExecutor(outputs_only=True)``: the layers whose contract is an onnxruntime
    QOperator kernel's run as onnxruntime sessions, :mod:`hwsim.execute.lowered`; the same
    integers as the full run's). Returns (report, outputs)."""
    from hwsim.cost.topology import layers_from_program
    from hwsim.datapath.isa import resolve
    from hwsim.execute import IntegerExecutor

    t0 = time.perf_counter()
    g = program.graph
    isa = resolve(isa)
    ex = IntegerExecutor(program, isa=isa, seed=seed, outputs_only=True)
    bar = _progress(len(ds), "hwsim run", progress)
    preds, outs = [], []
    for _, xb in ds.batches(batch_size):
        y = ex.output(ex.run(xb, keep_all=False))
        preds.append(np.argmax(y.reshape(len(y), -1), axis=1))
        if collect_outputs:
            outs.append(y)
        if bar is not None:
            bar.update(len(xb))
    if bar is not None:
        bar.close()
    rep = RunReport(str(g.source), ds.name, len(ds), program.describe())
    rep.outputs_only = True
    rep.macs_total = sum(layer.macs for layer in layers_from_program(program)) * len(ds)
    rep.settings["isa"] = isa.value
    if ds.y is not None and preds:
        rep.int_accuracy = float(np.mean(np.concatenate(preds) == ds.y))
    elif ds.y is None:
        rep.notes.append("the data has no labels ('y'): accuracy omitted")
    low = ex.lowering
    if low is None:
        rep.notes.append(
            f"outputs only, node by node (isa {isa.value}): no float reference, no per-layer "
            "statistics"
        )
    else:
        rest = [f"{name} ({why})" for name, why in low.why.items()]
        segs = sum(not isinstance(s, int) for s in low.steps)
        rep.notes.append(
            f"outputs only: no float reference, no per-layer statistics; {len(low.lowered)} of "
            f"{len(g.nodes)} nodes ran as onnxruntime QOperator kernels in {segs} session(s) "
            "(hwsim.execute.lowered: the same integers)"
            + (f"; in the executor: {', '.join(rest)}" if rest else "")
        )
    rep.seconds = time.perf_counter() - t0
    return rep, (np.concatenate(outs) if collect_outputs and outs else None)


def run_qoperator(
    model, source: str, data, batch_size: int, report, save_outputs, progress, isa="exact"
):
    """``hwsim run`` of a QOperator model (an ``onnx.ModelProto`` read from ``source``): its
    batches run node by node (:func:`hwsim.execute.run_qoperator_batch`), integer outputs and
    accuracy, no float reference; ``report`` / ``save_outputs`` paths written if given."""
    from hwsim.data import conform, input_dtype, load_data
    from hwsim.datapath.isa import Isa, resolve
    from hwsim.execute import run_qoperator_batch

    t0 = time.perf_counter()
    inp = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    dims = inp[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)[1:]
    dt = input_dtype(inp[0])  # an integer input keeps integer data (hwsim.data)
    if hasattr(data, "x"):
        ds = conform(data, shape, dt, inp[0].name)
    else:
        ds = load_data(data, shape, dt, inp[0].name)
    isa = resolve(isa)
    stats: dict = {}
    ort_nodes: dict = {}
    outs = [
        run_qoperator_batch(model, xb, source, isa, stats, ort_nodes=ort_nodes)
        for _, xb in ds.batches(batch_size)
    ]
    y = np.concatenate(outs)
    rep = RunReport(source, ds.name, len(ds), {"scheme": {"name": "qoperator"}, "isa": isa.value})
    for name, (op_type, st) in stats.items():
        c = st.counters
        row = LayerRow(name, op_type, "", "", macs=c.macs, acc_bits=32)
        row.overflow_events, row.outputs_overflowed = c.overflow_events, c.outputs_overflowed
        row.bits_needed = c.bits_needed
        if isa is not Isa.EXACT:
            row.pair_saturations = c.pair_saturations
            row.outputs_pair_saturated = c.outputs_pair_saturated
        rep.layers.append(row)
    out_name = model.graph.output[0].name
    rep.outputs = {
        out_name: {
            "dtype": str(y.dtype),
            "shape": list(y.shape),
            "min": y.min().item() if y.size else None,
            "max": y.max().item() if y.size else None,
        }
    }
    # top-1 only for per-sample class scores: (N, classes); a conv map or a scalar is not
    scores = y.ndim == 2 and y.shape[0] == len(ds) and y.shape[1] > 1
    if ds.y is None:
        rep.notes.append("the data has no labels ('y'): accuracy omitted")
    elif not scores:
        rep.notes.append(
            f"output {out_name!r} of shape {tuple(y.shape)} is not per-sample class scores "
            f"(N={len(ds)}, classes): accuracy omitted"
        )
    else:
        rep.int_accuracy = float(np.mean(np.argmax(y, axis=1) == ds.y))
    rep.notes.append(
        "QOperator model: run node by node (hwsim.qops); no float reference (the table lists "
        "the MAC nodes' datapath counters)"
    )
    if ort_nodes:
        kinds = sorted(set(ort_nodes.values()))
        rep.notes.append(
            f"{len(ort_nodes)} node(s) outside hwsim's QOperator ops ran as onnxruntime's own "
            f"kernels ({', '.join(kinds)}): " + ", ".join(ort_nodes)
        )
    rep.seconds = time.perf_counter() - t0
    if save_outputs is not None:
        write_npz(save_outputs, {model.graph.output[0].name: y})
    if report is not None:
        rep.write_json(report)
    return rep


# ------------------------------------------------------------------------------------------------
# the text the commands print
# ------------------------------------------------------------------------------------------------
def demo_header(model, data, calib, transformer: bool = False) -> str:
    """The first line of ``hwsim demo`` (printed before the sweep runs)."""
    if transformer:
        return (
            f"hwsim demo: {model} on {data} (calibrated on {calib}); per-tensor / "
            "per-channel / per-token / per-token-shift (S_max=4) quantization, softmax / GELU "
            "/ LayerNorm in float or integer-only (I-BERT), int32 wrapping accumulators, ort "
            "scale registers"
        )
    return (
        f"hwsim demo: {model} on {data} (calibrated on {calib}); per-tensor / "
        "per-channel / per-sample / per-sample-shift (S_max=4) quantization, int32 "
        "wrapping accumulators, ort scale registers"
    )


def datapath_table(res: dict) -> str:
    """``hwsim datapath``'s table of :func:`hwsim.datapath_demo.run_demo`'s result."""
    layer = res["layer"]
    head = (
        f"{'accumulator design':<34}{'overflows':>12}{'outputs hit':>13}{'bits needed':>13}"
        f"{'exact outputs':>15}{'rel. error':>12}{'ms':>9}"
    )
    lines = [
        f"conv x{tuple(layer['x'])} * w{tuple(layer['w'])}, pad 1, "
        f"{layer['macs'] / 1e6:.1f} M MACs (seed {layer['seed']})",
        "",
        head,
        "-" * len(head),
    ]
    for r in res["accumulators"]:
        lines.append(
            f"{r['design']:<34}{r['overflow_events']:>12}{r['outputs_overflowed']:>13}"
            f"{r['bits_needed']:>13}{r['exact_outputs']:>14.2%} {r['relative_error']:>11.2%}"
            f"{r['seconds'] * 1e3:>9.1f}"
        )
    lines += ["", f"requantization to int8, real scale {res['real_scale']:.6g}:"]
    for r in res["registers"]:
        lines.append(
            f"  {r['register']:<14} clamped {r['clamped']:>6}   "
            f"differs from ort on {r['differs_from_ort']} outputs"
        )
    return "\n".join(lines)


def models_table(models: list[dict]) -> str:
    """``hwsim models``: one line per shipped model."""
    return "\n".join(
        f"{m['name']:<8} {m['file']:<12} float top-1 {100 * m['float_accuracy']:.2f}% "
        f"on {m['dataset']}  {m['params']} params  {m['description']}"
        for m in models
    )


def quantize_summary(program, model, out) -> str:
    """``hwsim quantize``'s line: layers quantized, scheme and widths, output file."""
    n = sum(1 for nd in program.graph.nodes if nd.wq is not None)
    d = program.scheme.default
    return (
        f"quantized {n} layers of {model} ({program.scheme.name}, W{d.wbits}A{d.abits}, "
        f"acc {d.acc_bits}-bit {d.overflow}, {d.register}) -> {out}"
    )


def train_summary(rec: dict, data, out) -> str:
    """``hwsim train``'s line from :func:`hwsim.train.fit.train_model`'s record."""
    return (
        f"trained {rec['arch']} with {rec['optimizer']} on {data}: train top-1 "
        f"{100 * rec['train_accuracy']:.2f}% in {rec['seconds']:.1f} s -> {out}"
    )


def cost_plot(rep, path, title: str) -> None:
    """Stacked per-layer energy (MAC / SRAM / DRAM / scheme) and cycles of a cost report
    (:class:`hwsim.cost.CostReport`); PNG, atomically."""

    plt = pyplot()

    names = [r.name for r in rep.layers]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, len(names) * 0.5), 6), sharex=True)
    bottom = np.zeros(len(names))
    for part in ("mac", "sram", "dram", "scheme"):
        v = np.array([r.energy_breakdown[part] / 1e6 for r in rep.layers])
        ax1.bar(names, v, bottom=bottom, label=part)
        bottom += v
    ax1.set_ylabel("energy (uJ)")
    ax1.legend(fontsize=7)
    ax1.set_title(
        f"{title}: {rep.accelerator.rows}x{rep.accelerator.cols} {rep.accelerator.dataflow.value}"
    )
    ax2.bar(names, [r.compute_cycles for r in rep.layers], label="compute")
    ax2.bar(
        names,
        [r.stall_cycles for r in rep.layers],
        bottom=[r.compute_cycles for r in rep.layers],
        label="stall",
    )
    ax2.set_ylabel("cycles")
    ax2.legend(fontsize=7)
    ax2.tick_params(axis="x", rotation=90, labelsize=6)
    fig.tight_layout()
    save_png(fig, path, dpi=110)
