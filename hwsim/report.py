"""Run reports: accuracy, agreement, per-layer error and datapath counters; table, JSON, plot.

SQNR of a tensor is ``10 log10(sum f^2 / sum (f - d)^2)`` in dB over every element of the
data set, ``f`` the float-run value and ``d`` the dequantized integer-run value (``inf`` when
they are equal everywhere). Agreement is the fraction of samples whose integer-run argmax equals
the float run's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from hwsim.io import atomic_write_bytes, atomic_write_text


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

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "float_accuracy": self.float_accuracy,
            "int_accuracy": self.int_accuracy,
            "agreement": self.agreement,
            "float_reference": self.float_reference,
            "totals": {
                "macs": sum(r.macs for r in self.layers),
                "overflow_events": sum(r.overflow_events for r in self.layers),
                "outputs_overflowed": sum(r.outputs_overflowed for r in self.layers),
                "pair_saturations": sum(r.pair_saturations or 0 for r in self.layers),
                "bias_clamped": sum(r.bias_clamped for r in self.layers),
            },
            "settings": self.settings,
            "cost": self.cost,
            "outputs": self.outputs,
            "layers": [r.as_dict() for r in self.layers],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }

    def table(self) -> str:
        """A human table: headline figures, then one row per layer."""

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}%"

        sch = self.settings.get("scheme", {})
        lines = [
            f"model {self.model}  data {self.data} ({self.samples} samples)  "
            f"scheme {sch.get('name', '?')}",
        ]
        if (self.float_accuracy, self.int_accuracy, self.agreement) != (None, None, None):
            lines.append(
                f"top-1 float {pct(self.float_accuracy)}  integer {pct(self.int_accuracy)}  "
                f"agreement {pct(self.agreement)}"
            )
        for name, o in (self.outputs or {}).items():
            shape = "x".join(str(d) for d in o["shape"])
            rng = "" if o["min"] is None else f", min {o['min']:g} max {o['max']:g}"
            lines.append(f"output {name}: {o['dtype']} {shape}{rng}")
        pairs = any(r.pair_saturations is not None for r in self.layers)
        hdr = (
            f"{'layer':<28} {'op':<8} {'act':<14} {'MACs':>10} {'SQNR dB':>8} "
            f"{'ovf':>6} {'acc':>4} {'need':>4}"
        )
        if pairs:
            hdr += f" {'i16 sat':>9} {'outs':>7} {'exact dB':>8}"
        if self.layers:
            lines += [hdr, "-" * len(hdr)]
        for r in self.layers:
            sq = _db(r.sqnr_db)
            lines.append(
                f"{r.name[-28:]:<28} {r.op + ('*' if r.float_op else ''):<8} {r.act:<14} "
                f"{r.macs:>10} {sq:>8} {r.overflow_events:>6} "
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


def compare_table(rows: list[dict]) -> str:
    """The sweep table of ``hwsim compare``."""
    hdr = (
        f"{'scheme':<18} {'W':>3} {'A':>3} {'acc':>5} {'float':>8} {'integer':>8} "
        f"{'agree':>8} {'ovf':>8} {'SQNR min':>9} {'uJ/smp':>8}"
    )
    lines = [hdr, "-" * len(hdr)]
    for r in rows:

        def pct(v):
            return "n/a" if v is None else f"{100 * v:.2f}"

        d = r["settings"]["default"]
        acc = f"{d['acc_bits']}{d['overflow'][0]}"
        sq = r.get("min_sqnr_db")
        sq = "" if sq is None else (f"{sq:.1f}" if isinstance(sq, float) else str(sq))
        lines.append(
            f"{r['scheme']:<18} {r['wbits']:>3} {r['abits']:>3} {acc:>5} "
            f"{pct(r['float_accuracy']):>8} {pct(r['int_accuracy']):>8} "
            f"{pct(r['agreement']):>8} {r['overflow_events']:>8} {sq:>9} "
            f"{r.get('energy_pj_per_sample', 0) / 1e6:>8.3f}"
        )
    lines.append(
        "acc: accumulator bits + w(rap)/s(aturate); SQNR min: worst layer, dB; "
        "uJ/smp: energy per sample on the accelerator (hwsim cost)"
    )
    return "\n".join(lines)


def pareto_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Accuracy (or agreement) vs energy per sample, one marker per run, the Pareto front
    (lowest energy for at least that accuracy) drawn; PNG written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    front, best = [], -1.0
    for r in sorted(rows, key=lambda r: (r["energy_pj_per_sample"], -r[key])):
        if r[key] > best:
            front.append(r)
            best = r[key]
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def compare_plot(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    """Accuracy (or agreement, without labels) vs weight bits, one line per scheme and
    activation width; PNG written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
