"""Records of a sweep: one JSON file per point, named by the point's content hash, written
atomically into the results folder, so an interrupted or extended sweep runs only the points
whose record is missing.

A record::

    {"key": "<sha256>", "model": "rescnn", "data": "digits", "calib": "digits-train",
     "point": {"scheme": "per-tensor", "wbits": 8, ...},      # the axis values
     "status": "ok" | "failed",
     "result": {...} | null,   # compare's row: accuracies, agreement, min SQNR, overflow
                               # counts, cycles and energy per sample, the scheme settings
     "error": null | "SchemeError: ...",
     "timing": {"seconds": 1.23, "pid": 4242}}

``timing`` is the one part that depends on the machine: :func:`identity` is the record
without it, and two runs of a sweep (in-process, on 1 or N workers, in any order) give equal
identities.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import math
from pathlib import Path

import numpy as np

from hwsim import __version__
from hwsim.errors import HwsimError
from hwsim.io import atomic_write_text
from hwsim.report import ovf_total, pareto_front

#: What :func:`point_key` hashes besides the inputs: bump it when a record's meaning changes.
RECORD_VERSION = 2  # 2: result.bias_overflows


def data_digest(ds) -> str:
    """SHA-256 of a data set's content: ``x`` and ``y`` (dtype, shape, bytes) and its input
    range; not its name."""
    h = hashlib.sha256()
    for a in (ds.x, ds.y):
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    h.update(repr(ds.input_range).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 of hwsim's own source (every ``hwsim/**/*.py``, by relative path and bytes): a
    record made by other code is not reused, whatever the version number says (a change of
    numerics lands without a version bump)."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(p.read_bytes())
    return h.hexdigest()


def point_key(model_sha: str, data_sha: str, calib_sha: str, batch_size: int, settings) -> str:
    """The content hash of a point: the model's bytes, the data's and the calibration data's
    content, the batch size, the point's full settings (:meth:`Job.settings`), hwsim's
    version, its source (:func:`code_fingerprint`) and :data:`RECORD_VERSION`."""
    doc = {
        "hwsim": __version__,
        "code": code_fingerprint(),
        "record": RECORD_VERSION,
        "model": model_sha,
        "data": data_sha,
        "calib": calib_sha,
        "batch_size": batch_size,
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def identity(record: dict) -> dict:
    """A record without its ``timing``: what must not depend on where or when it ran."""
    return {k: v for k, v in record.items() if k != "timing"}


class ResultStore:
    """The results folder: ``<key>.json`` per point."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def prepare(self) -> None:
        """Create the folder (and parents); an HwsimError naming it if that fails."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HwsimError(f"results folder {self.folder}: cannot create it ({e})") from None

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def get(self, key: str) -> dict | None:
        """The record of ``key``, or None (missing, or unreadable: then it is run again)."""
        try:
            rec = json.loads(self.path(key).read_text())
        except (OSError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def put(self, record: dict) -> None:
        """Write ``record`` whole or not at all (temp file + rename)."""
        atomic_write_text(self.path(record["key"]), dumps(record) + "\n")


def dumps(obj) -> str:
    """JSON of a record: non-finite floats as strings (``"inf"``), numpy scalars as numbers."""
    return json.dumps(_plain(obj), indent=2, sort_keys=True)


def _plain(o):
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_plain(v) for v in o]
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        o = float(o)
        return o if math.isfinite(o) else ("nan" if o != o else ("inf" if o > 0 else "-inf"))
    return o


#: The result fields the table, CSV and plots show, in order.
RESULT_FIELDS = (
    "float_accuracy",
    "int_accuracy",
    "agreement",
    "min_sqnr_db",
    "overflow_events",
    "bias_overflows",
    "pair_saturations",
    "cycles_per_sample",
    "energy_pj_per_sample",
)


def flat_rows(records: list[dict], axes: list[str]) -> list[dict]:
    """One flat dict per record: model, the axis values, status, the result fields, error,
    seconds, key (the CSV's columns)."""
    out = []
    for r in records:
        res = r.get("result") or {}
        row = {"model": r["model"]}
        row.update({a: r["point"].get(a, "") for a in axes})
        row["status"] = r["status"]
        row.update({f: res.get(f) for f in RESULT_FIELDS})
        row["error"] = r.get("error") or ""
        row["seconds"] = r.get("timing", {}).get("seconds")
        row["key"] = r["key"]
        out.append(row)
    return out


def write_csv(path, records: list[dict], axes: list[str]) -> None:
    """All records as CSV (atomically), one row per point (:func:`flat_rows`)."""
    rows = flat_rows(records, axes)
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def table(records: list[dict], axes: list[str]) -> str:
    """The human table: one line per point (axis values, accuracy, agreement, overflows, worst
    SQNR, cycles and energy per sample), failed points with their error."""
    models = len({r["model"] for r in records}) > 1
    cols = (["model"] if models else []) + list(axes)
    vals = [[str(r["model"] if c == "model" else r["point"].get(c, "")) for c in cols]
            for r in records]  # fmt: skip
    width = [max([len(c)] + [len(v[i]) for v in vals]) for i, c in enumerate(cols)]
    head = " ".join(f"{c:<{w}}" for c, w in zip(cols, width, strict=True))
    head += f" {'float':>7} {'integer':>7} {'agree':>7} {'ovf':>8} {'SQNR min':>8}"
    head += f" {'cycles':>9} {'uJ/smp':>8}"
    lines = [head, "-" * len(head)]

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.2f}"

    for r, v in zip(records, vals, strict=True):
        left = " ".join(f"{x:<{w}}" for x, w in zip(v, width, strict=True))
        res = r.get("result")
        if r["status"] != "ok" or res is None:
            lines.append(f"{left} FAILED: {r.get('error')}")
            continue
        sq = res.get("min_sqnr_db")
        sq = "" if sq is None else (f"{sq:.1f}" if isinstance(sq, float) else str(sq))
        lines.append(
            f"{left} {pct(res['float_accuracy']):>7} {pct(res['int_accuracy']):>7} "
            f"{pct(res['agreement']):>7} {ovf_total(res):>8} {sq:>8} "
            f"{res['cycles_per_sample']:>9} {res['energy_pj_per_sample'] / 1e6:>8.3f}"
        )
    lines.append(
        "float / integer: top-1 %; agree: integer argmax = float argmax, %; ovf: accumulator "
        "overflow events (products and bias additions); SQNR min: worst layer, dB; cycles and "
        "uJ/smp: per sample on the point's accelerator"
    )
    return "\n".join(lines)


def pareto_plot(records: list[dict], path, title: str) -> None:
    """Accuracy (agreement without labels) vs energy per sample and vs cycles per sample, one
    marker per finished point, the Pareto front of each drawn; PNG written atomically."""
    from hwsim.report import pyplot, save_png

    ok = [r for r in records if r["status"] == "ok" and r.get("result")]
    plt = pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    key = "int_accuracy" if ok and ok[0]["result"]["int_accuracy"] is not None else "agreement"
    ys = [100 * r["result"][key] for r in ok]
    for ax, field, scale, label in (
        (axs[0], "energy_pj_per_sample", 1e-6, "energy per sample (uJ)"),
        (axs[1], "cycles_per_sample", 1.0, "cycles per sample"),
    ):
        xs = [r["result"][field] * scale for r in ok]
        ax.scatter(xs, ys, s=14)
        front = pareto_front(list(zip(xs, ys, strict=True)))
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "k--", lw=1, label="Pareto front")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axs[0].set_ylabel("top-1 accuracy (%)" if key == "int_accuracy" else "agreement (%)")
    fig.suptitle(title)
    fig.tight_layout()
    save_png(fig, path)
