"""The Python API: one call per CLI command.

* :func:`quantize_model` -- float ONNX + scheme (+ calibration data) -> QuantProgram (and file);
* :func:`run` -- a quantized model (hwsim, QDQ or QOperator ONNX) on a data set -> RunReport;
* :func:`compare` -- a sweep of schemes x widths on one float model -> rows, table, plot;
* :func:`demo` -- the shipped default model, four schemes, one table.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from hwsim.data import Dataset, conform, load_data
from hwsim.execute import IntegerExecutor, QTensor, run_float
from hwsim.graph import import_model, is_qoperator, load_onnx
from hwsim.graph.ir import MAC_OPS, Graph
from hwsim.quant import QuantProgram, Scheme, SchemeError, quantize
from hwsim.quant.store import program_from_graph, save
from hwsim.report import (
    LayerRow,
    RunReport,
    compare_plot,
    compare_table,
    pareto_plot,
    sqnr_db,
    write_npz,
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "rescnn"
DEFAULT_BATCH = 256


def shipped_models() -> list[dict]:
    """The shipped models' records (``models/models.json``)."""
    import json

    f = MODELS_DIR / "models.json"
    if not f.is_file():
        return []
    return json.loads(f.read_text())


def resolve_model(spec: str | os.PathLike) -> Path:
    """A path, or the name of a shipped model (``mlp``, ``rescnn``)."""
    p = Path(spec)
    if p.is_file():
        return p
    for m in shipped_models():
        if m["name"] == str(spec):
            return MODELS_DIR / m["file"]
    if p.suffix == ".onnx" or os.sep in str(spec):
        return p  # let the importer report the missing file
    names = ", ".join(m["name"] for m in shipped_models())
    raise FileNotFoundError(f"no model file or shipped model named {spec!r} (shipped: {names})")


def _data(data, input_shape) -> Dataset:
    """A data set (built-in name, .npz path or Dataset), validated against the model input."""
    return conform(data, input_shape) if isinstance(data, Dataset) else load_data(data, input_shape)


def make_scheme(scheme: str = "per-tensor", **kw) -> Scheme:
    """A named scheme (``hwsim.quant.PRESETS``) with LayerScheme fields ``kw``."""
    return Scheme.preset(scheme, **kw)


def quantize_model(
    model,
    scheme: Scheme | str = "per-tensor",
    calib=None,
    out=None,
    input_range=None,
    batch_size: int = DEFAULT_BATCH,
    **kw,
) -> QuantProgram:
    """Quantize a float ONNX model; write it to ``out`` (ONNX, atomically) if given.

    ``scheme`` is a Scheme or a preset name whose LayerScheme fields come from ``kw``
    (``wbits``, ``abits``, ``acc_bits``, ``overflow``, ``register``, ...).
    """
    graph = import_model(resolve_model(model)) if not isinstance(model, Graph) else model
    if isinstance(scheme, str):
        scheme = make_scheme(scheme, **kw)
    elif kw:
        raise SchemeError("pass scheme settings either as a Scheme or as keywords, not both")
    ds = _data(calib, graph.input_shape) if calib is not None else None
    program = quantize(graph, scheme, ds, batch_size, input_range)
    if out is not None:
        save(program, out)
    return program


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
    program: QuantProgram,
    ds: Dataset,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    with_float: bool = True,
    collect_outputs: bool = False,
    isa="exact",
    seed: int = 0,
):
    """Run float and integer executors side by side in batches; returns (report, outputs).

    ``isa`` (``exact``, ``avx2``, ``auto``; :mod:`hwsim.datapath.isa`): the MAC layers' dot
    products. Under ``avx2`` an exact executor runs alongside, so every layer also reports its
    SQNR with exact sums (``sqnr_exact_db``) and its int16 pair saturations.

    ``seed``: stochastic rounding's draws (``IntegerExecutor``: one Generator per node and
    sample, ``default_rng([seed, node_index, sample_index])``), so a run is reproducible and
    its integers do not depend on ``batch_size``."""
    from hwsim.datapath.isa import Isa, resolve

    t0 = time.perf_counter()
    g = program.graph
    isa = resolve(isa)
    ex = IntegerExecutor(program, track_partials=True, isa=isa, seed=seed)
    ex_exact = IntegerExecutor(program, isa=Isa.EXACT, seed=seed) if isa is not Isa.EXACT else None
    sig: dict[str, float] = {}
    noise: dict[str, float] = {}
    noise_exact: dict[str, float] = {}
    int_pred, float_pred, outs = [], [], []
    # a layer whose ReLU/Clip is fused into its requantization is compared after that activation
    from hwsim.quant.quantize import fused_targets

    compare_to = {
        src: dst
        for src, dst in fused_targets(g).items()
        if src in program.acts and program.acts.get(dst) == program.acts[src]
    }
    bar = _progress(len(ds), "hwsim run", progress)
    for _, xb in ds.batches(batch_size):
        env = ex.run(xb, keep_all=with_float)
        env_exact = ex_exact.run(xb, keep_all=True) if ex_exact is not None else None
        y = ex.output(env)
        int_pred.append(np.argmax(y.reshape(len(y), -1), axis=1))
        if collect_outputs:
            outs.append(y)
        if with_float:
            fenv = run_float(g, xb)
            float_pred.append(np.argmax(fenv[g.output].reshape(len(y), -1), axis=1))
            for n in g.nodes:
                v = env.get(n.output)
                if isinstance(v, QTensor):
                    f = fenv[compare_to.get(n.output, n.output)].astype(np.float64)
                    d = v.dequantize().astype(np.float64)
                    sig[n.output] = sig.get(n.output, 0.0) + float(np.sum(f * f))
                    noise[n.output] = noise.get(n.output, 0.0) + float(np.sum((f - d) ** 2))
                    ve = env_exact.get(n.output) if env_exact is not None else None
                    if isinstance(ve, QTensor):
                        de = ve.dequantize().astype(np.float64)
                        noise_exact[n.output] = noise_exact.get(n.output, 0.0) + float(
                            np.sum((f - de) ** 2)
                        )
        del env, env_exact
        if bar is not None:
            bar.update(len(xb))
    if bar is not None:
        bar.close()
    ip = np.concatenate(int_pred)
    fp = np.concatenate(float_pred) if float_pred else None
    rep = RunReport(str(g.source), ds.name, len(ds), program.describe())
    macs_nodes = [n for n in g.nodes if n.op in MAC_OPS and n.wq is not None]
    if macs_nodes and all(np.array_equal(n.weight, n.wq.dequantize()) for n in macs_nodes):
        rep.float_reference = "dequantized weights"
        rep.notes.append(
            "float reference = this file's dequantized weights in float32 (the "
            "original float weights are not in a quantized file): the comparison "
            "isolates activation quantization and integer arithmetic"
        )
    if with_float and g.float_ranges:
        rep.notes.append(
            "float reference of a QDQ model: each quantized activation clamped to its "
            "QuantizeLinear range, not rounded (the quantizer removed the ReLU/Clip layers "
            "that range enforces), so SQNR counts rounding and integer arithmetic, not "
            "clipping at the calibrated range"
        )
    if ds.y is not None:
        rep.int_accuracy = float(np.mean(ip == ds.y))
        if fp is not None:
            rep.float_accuracy = float(np.mean(fp == ds.y))
    else:
        rep.notes.append("the data has no labels ('y'): accuracy omitted, agreement only")
    if fp is not None:
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
    if not with_float:
        rep.notes.append("no float reference for this model (QOperator ops)")
    rep.seconds = time.perf_counter() - t0
    return rep, (np.concatenate(outs) if collect_outputs else None)


def _finite(v):
    """JSON-safe float: inf/-inf become strings."""
    if v is None or np.isfinite(v):
        return v
    return "inf" if v > 0 else "-inf"


def load_quantized(model) -> QuantProgram:
    """An hwsim-quantized or QDQ ONNX model as a program (a float model is an error)."""
    path = resolve_model(model)
    graph = import_model(path)
    if not graph.quantized:
        raise SchemeError(
            f"{path}: a float model (no quantized weights); quantize it first "
            "with `hwsim quantize` (or use `hwsim compare` for a sweep)"
        )
    return program_from_graph(graph)


def check_outputs(**paths) -> None:
    """Every output path (``name=path``; None skipped) writable before any work: a
    ValueError naming the field and the path as given (``hwsim.io.output_path_problem``)."""
    from hwsim.io import output_path_problem

    for name, p in paths.items():
        if p is not None and (why := output_path_problem(p)):
            raise ValueError(f"{name}: cannot write {why}")


def run(
    model,
    data,
    batch_size: int = DEFAULT_BATCH,
    report=None,
    save_outputs=None,
    progress: bool = False,
    accelerator=None,
    isa="exact",
    seed: int = 0,
) -> RunReport:
    """Run a quantized model on ``data`` (name or .npz or Dataset) and report.

    ``isa``: ``exact`` (true integer math: VNNI/AMX, ARM, accelerators), ``avx2``
    (onnxruntime's x86 results without VNNI, bit for bit, with int16 pair-saturation counters)
    or ``auto`` (what onnxruntime does on this CPU); see :mod:`hwsim.datapath.isa`.
    ``seed``: stochastic rounding's draws (see :func:`run_program`).

    ``report``: JSON path (written atomically); ``save_outputs``: .npz path receiving the
    model's final outputs (float32, as the model's last op produces them; a QOperator model's
    in their own dtype, e.g. int32 / uint8) under its output name. Both paths are checked
    before the run (a ValueError naming the path), so a bad one does not lose the run.
    ``accelerator``: an :class:`hwsim.cost.Accelerator` (default: the default one); the report
    carries its cycles and energy for one batch of ``batch_size`` samples.
    """
    check_outputs(report=report, save_outputs=save_outputs)
    if isinstance(model, QuantProgram):
        program = model
    else:
        path = resolve_model(model)
        onnx_model = load_onnx(path)
        if is_qoperator(onnx_model):
            from hwsim.execute import run_qoperator

            return run_qoperator(
                onnx_model, str(path), data, batch_size, report, save_outputs, progress, isa
            )
        program = load_quantized(path)
    ds = _data(data, program.graph.input_shape)
    rep, outs = run_program(
        program,
        ds,
        batch_size,
        progress,
        collect_outputs=save_outputs is not None,
        isa=isa,
        seed=seed,
    )
    attach_cost(rep, program, accelerator, min(batch_size, len(ds)))
    if save_outputs is not None:
        g = program.graph
        write_npz(save_outputs, {g.output_name or g.output: outs.astype(np.float32)})
    if report is not None:
        rep.write_json(report)
    return rep


def compare(
    model,
    data,
    schemes=("per-tensor", "per-channel", "per-sample", "per-sample-shift"),
    wbits=(8, 4),
    abits=(8,),
    calib=None,
    report=None,
    plot=None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = False,
    accelerator=None,
    pareto=None,
    isa="exact",
    seed: int = 0,
    **kw,
) -> list[dict]:
    """Sweep schemes x weight bits x activation bits on a float model; one row per run.

    ``calib`` defaults to ``data`` (say so in reports; pass a separate set to avoid it).
    ``isa``: the dot product of the integer runs (see :func:`run`); ``seed``: stochastic
    rounding's draws (see :func:`run_program`).
    """
    import json

    from hwsim.io import atomic_write_text

    check_outputs(report=report, plot=plot, pareto=pareto)
    path = resolve_model(model)
    base = import_model(path)
    ds = _data(data, base.input_shape)
    cal = _data(calib, base.input_shape) if calib is not None else ds
    rows = []
    for scheme in schemes:
        for wb in wbits:
            for ab in abits:
                graph = import_model(path)
                sch = make_scheme(scheme, wbits=wb, abits=ab, **kw)
                program = quantize(graph, sch, cal, batch_size)
                rep, _ = run_program(program, ds, batch_size, progress, isa=isa, seed=seed)
                c = attach_cost(rep, program, accelerator, 1)
                rows.append(
                    {
                        "scheme": scheme,
                        "wbits": wb,
                        "abits": ab,
                        "float_accuracy": rep.float_accuracy,
                        "int_accuracy": rep.int_accuracy,
                        "agreement": rep.agreement,
                        "overflow_events": sum(r.overflow_events for r in rep.layers),
                        "pair_saturations": sum(r.pair_saturations or 0 for r in rep.layers),
                        "isa": rep.settings["isa"],
                        "min_sqnr_db": _finite(
                            min(
                                (r.sqnr_db for r in rep.layers if r.sqnr_db is not None),
                                default=None,
                            )
                        ),
                        "energy_pj_per_sample": c["energy_pj"],
                        "cycles_per_sample": c["total_cycles"],
                        "settings": program.describe()["scheme"],
                    }
                )
    if report is not None:
        doc = {
            "model": str(path),
            "data": ds.name,
            "calib": cal.name if calib is not None else f"{ds.name} (same as data)",
            "rows": rows,
        }
        atomic_write_text(report, json.dumps(doc, indent=2, default=str) + "\n")
    if plot is not None:
        compare_plot(rows, plot, f"{Path(path).stem} on {ds.name}")
    if pareto is not None:
        pareto_plot(rows, pareto, f"{Path(path).stem} on {ds.name}")
    return rows


def attach_cost(rep: RunReport, program: QuantProgram, accelerator=None, batch: int = 1) -> dict:
    """Cost ``program`` on ``accelerator`` for one batch of ``batch`` samples and put the
    totals (and per-layer cycles / energy) into the run report; returns the totals."""
    from hwsim.cost import Accelerator, cost, layers_from_program

    acc = accelerator if accelerator is not None else Accelerator()
    crep = cost(layers_from_program(program, batch=batch), acc)
    totals = crep.totals
    rep.cost = {"accelerator": acc.as_dict(), "batch": batch, "totals": totals}
    by_name = {c.name: c for c in crep.layers}
    for row in rep.layers:
        c = by_name.get(row.name)
        if c is not None:
            row.cycles = c.total_cycles
            row.energy_pj = c.energy_pj
    return totals


__all__ = [
    "compare",
    "compare_table",
    "load_quantized",
    "quantize_model",
    "run",
    "run_program",
    "shipped_models",
]


def cost_model(
    model_or_topology,
    config=None,
    array=None,
    dataflow=None,
    batch: int = 1,
    json_path=None,
    plot=None,
    **widths,
):
    """Cost a shipped model / ONNX file (float: widths from the config or ``widths``;
    quantized: widths from the model) or a SCALE-Sim topology CSV on an accelerator."""
    from hwsim.cost import cost, layers_from_program, load_config, parse_array, read_topology
    from hwsim.io import atomic_write_text

    over = dict(widths)
    if array is not None:
        over["rows"], over["cols"] = parse_array(array)
    if dataflow is not None:
        over["dataflow"] = dataflow
    acc = load_config(config, **over)
    spec = str(model_or_topology)
    if spec.endswith(".csv"):
        layers = read_topology(spec)
    else:
        path = resolve_model(spec)
        graph = import_model(path)
        layers = layers_from_program(
            program_from_graph(graph) if graph.quantized else graph, batch=batch
        )
    rep = cost(layers, acc)
    if json_path is not None:
        import json

        atomic_write_text(json_path, json.dumps(rep.as_dict(), indent=2) + "\n")
    if plot is not None:
        cost_plot(rep, plot, Path(spec).stem)
    return rep


def cost_plot(rep, path, title: str) -> None:
    """Stacked per-layer energy (MAC / SRAM / DRAM / scheme) and cycles; PNG, atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hwsim.io import atomic_write_bytes

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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
