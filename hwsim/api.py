"""The Python API: one call per CLI command (the CLI parses options, calls these and prints).

* :func:`demo` -- ``hwsim demo``, the main job: the shipped CNN, four schemes at two widths,
  then narrow accumulators; rows of one table;
* :func:`quantize_model` -- ``hwsim quantize``: float ONNX + scheme (+ calibration data) ->
  QuantProgram (and file);
* :func:`run` -- ``hwsim run``: a quantized model (hwsim, QDQ or QOperator ONNX) on a data set
  -> RunReport;
* :func:`compare` -- ``hwsim compare``: a sweep of schemes x widths on one float model -> rows,
  table, plots;
* :func:`cost` -- ``hwsim cost``: cycles, traffic and energy of a model or SCALE-Sim topology
  (:func:`accelerator` builds the accelerator from a config file and overrides);
* :func:`datapath` -- ``hwsim datapath``: one conv layer on several accumulator designs;
* :func:`train` -- ``hwsim train``: train a shipped architecture, export float ONNX (PyTorch);
* :func:`study` -- ``hwsim study psgd``: the PSGD reproduction study (PyTorch);
* :func:`study_fqt` -- ``hwsim study fqt``: the fully quantized training study (PyTorch);
* :func:`shipped_models` -- ``hwsim models``.

Errors in what the caller gave (files, data, settings) are :class:`hwsim.errors.HwsimError`.
The text the commands print is formatted by :mod:`hwsim.report`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np

from hwsim.data import Dataset, conform, load_data
from hwsim.errors import HwsimError
from hwsim.execute import run_float
from hwsim.graph import import_model, is_qoperator, load_onnx
from hwsim.graph.ir import Graph, Op
from hwsim.io import atomic_write_text
from hwsim.quant import QuantProgram, Scheme, SchemeError, quantize
from hwsim.quant.store import program_from_graph, save
from hwsim.report import (
    DEFAULT_BATCH,
    RunReport,
    compare_plot,
    compare_table,
    cost_plot,
    gain_error_note,
    pareto_plot,
    run_outputs_only,
    run_program,
    run_qoperator,
    write_npz,
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "rescnn"
#: The schemes ``hwsim demo`` and ``hwsim compare`` sweep by default.
DEMO_SCHEMES = ("per-tensor", "per-channel", "per-sample", "per-sample-shift")
TRANSFORMER_DEMO_SCHEMES = ("per-tensor", "per-channel", "per-token", "per-token-shift")
"""The demo of a transformer (a model with attention / LayerNorm / GELU): the token schemes,
each with float and with integer-only (I-BERT) non-linearities."""


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
    if p.suffix in (".onnx", ".tflite") or os.sep in str(spec):
        return p  # let the importer report the missing file
    names = ", ".join(m["name"] for m in shipped_models())
    raise HwsimError(f"no model file or shipped model named {spec!r} (shipped: {names})")


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
    if input_range is not None:
        input_range = _input_range(input_range)
    if isinstance(scheme, str):
        scheme = make_scheme(scheme, **kw)
    elif kw:
        raise SchemeError("pass scheme settings either as a Scheme or as keywords, not both")
    ds = _data(calib, graph.input_shape) if calib is not None else None
    program = quantize(graph, scheme, ds, batch_size, input_range, float_run=run_float)
    if out is not None:
        save(program, out)
    return program


def _input_range(r) -> tuple[float, float]:
    """``(lo, hi)``, finite with ``lo < hi``, or an HwsimError."""
    try:
        lo, hi = (float(v) for v in r)
    except (TypeError, ValueError):
        raise HwsimError(f"input_range must be two numbers (lo, hi), got {r!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise HwsimError(f"input_range must be finite with lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def _seq(v) -> tuple:
    """A tuple of settings; one scheme name or width stands for a tuple of one."""
    return (v,) if isinstance(v, (str, int, np.integer)) else tuple(v)


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


def load_imported(model, tflite_kernels: str | None = None) -> QuantProgram:
    """The program of an already-quantized file: a ``.tflite`` model on the LiteRT kernels
    ``tflite_kernels`` (``xnnpack`` default, ``optimized``, ``reference``:
    :func:`hwsim.execute.tflite.load_tflite_program`), otherwise :func:`load_quantized`. The
    program's ``describe()["scheme"]`` names the source, the kernels and the registers."""
    path = resolve_model(model)
    if path.suffix.lower() != ".tflite":
        if tflite_kernels is not None:
            raise HwsimError(f"{path}: tflite_kernels applies to .tflite models only")
        return load_quantized(path)
    from hwsim.execute.tflite import load_tflite_program

    return load_tflite_program(path, tflite_kernels or "xnnpack")


def imported_scheme(program: QuantProgram) -> dict:
    """What a report shows as the scheme of an imported program: its source (``tflite`` or
    ``qdq``), the TFLite kernels, and the registers its layers run on."""
    meta = program.graph.meta.get("tflite")
    regs = sorted({v.register.value for v in program.layers.values()})
    if meta is not None:
        return {
            "name": f"tflite ({meta['kernels']} kernels)",
            "source": "tflite",
            "kernels": meta["kernels"],
            "registers": regs,
        }
    return {"name": "imported-qdq", "source": "qdq", "registers": regs}


def float_network(graph: Graph) -> Graph:
    """The float network of an imported quantized graph: each MAC layer's dequantized weights
    and float bias (``w = s (q - z)``, ``b = s_x s_w bias_q`` as imported), no quantization
    metadata and no TFLite integer rules, for hwsim's own schemes (``hwsim compare``)."""
    import dataclasses

    nodes = [
        dataclasses.replace(
            n, wq=None, bias_q=None, attrs={k: v for k, v in n.attrs.items() if k != "tflite"}
        )
        for n in graph.nodes
    ]
    meta = {k: v for k, v in graph.meta.items() if k not in ("hwsim", "tflite")}
    return dataclasses.replace(graph, nodes=nodes, act_quant={}, meta=meta)


def _imported_default(program: QuantProgram) -> dict:
    """An imported program's accumulator settings in the form of a scheme's ``default`` (the
    widest accumulator, wrapping unless every layer saturates)."""
    specs = list(program.layers.values()) or [program.default_layer]
    ovf = {v.acc.overflow.value for v in specs}
    return {
        "acc_bits": max(v.acc.bits for v in specs),
        "overflow": ovf.pop() if len(ovf) == 1 else "mixed",
        "registers": sorted({v.register.value for v in specs}),
    }


def _imported_bits(program: QuantProgram, which: str):
    """The weight (``w``) or activation (``a``) widths of an imported program: one int, or a
    string like ``4-8`` for a mix."""
    if which == "w":
        bits = {n.wq.fmt.bits for n in program.graph.nodes if n.wq is not None}
    else:
        bits = {a.fmt.bits for a in program.acts.values() if getattr(a, "fmt", None) is not None}
    if not bits:
        return "-"
    return bits.pop() if len(bits) == 1 else f"{min(bits)}-{max(bits)}"


def check_outputs(**paths) -> None:
    """Every output path (``name=path``; None skipped) writable before any work: an
    HwsimError naming the field and the path as given (``hwsim.io.output_path_problem``)."""
    from hwsim.io import output_path_problem

    for name, p in paths.items():
        if p is not None and (why := output_path_problem(p)):
            raise HwsimError(f"{name}: cannot write {why}")


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
    tflite_kernels: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    outputs_only: bool = False,
    partials: bool = True,
) -> RunReport:
    """Run a quantized model on ``data`` (name or .npz or Dataset) and report.

    ``outputs_only``: the integer outputs and their accuracy, without the float reference and
    the per-layer statistics (:func:`hwsim.report.run_outputs_only`: the same integers, at
    onnxruntime's speed where the layers' contracts are its kernels'). ``partials=False``: the
    partial sums are not tracked (:func:`hwsim.report.run_program`).

    ``tflite_kernels`` (a ``.tflite`` model): the LiteRT CPU kernels whose integer results to
    match, ``xnnpack`` (default: the interpreter's default, XNNPACK delegate), ``optimized``
    (builtin kernels without delegates) or ``reference`` (``BUILTIN_REF``); docs/networks.md.
    The report's scheme names the source, the kernels and the registers.

    ``isa``: ``exact`` (true integer math: VNNI/AMX, ARM, accelerators), ``avx2``
    (onnxruntime's x86 results without VNNI, bit for bit, with int16 pair-saturation counters)
    or ``auto`` (what onnxruntime does on this CPU); see :mod:`hwsim.datapath.isa`.
    ``seed``: stochastic rounding's draws (see :func:`hwsim.report.run_program`).

    ``report``: JSON path (written atomically); ``save_outputs``: .npz path receiving the
    model's final outputs (float32, as the model's last op produces them; a QOperator model's
    in their own dtype, e.g. int32 / uint8) under its output name. Both paths are checked
    before the run (an HwsimError naming the path), so a bad one does not lose the run.
    ``accelerator``: an :class:`hwsim.cost.Accelerator` (default: the default one); the report
    carries its cycles and energy for one batch of ``batch_size`` samples.

    ``workers`` (a LocalCluster of that many processes) or ``scheduler`` (an existing Dask
    cluster's address): the data split by whole batches across the workers, the model's bytes
    and the data sent to each once, the shards merged exactly (:mod:`hwsim.sweep.split`): the
    report equals the one-process report but for its timings. Needs the ``dask`` extra.
    """
    check_outputs(report=report, save_outputs=save_outputs)
    split = workers is not None or scheduler is not None
    if outputs_only and split:
        raise HwsimError("--outputs-only runs in one process (drop --workers / --scheduler)")
    if not partials and split:
        raise HwsimError("--no-partials runs in one process (drop --workers / --scheduler)")
    t0 = time.perf_counter()
    if isinstance(model, QuantProgram):
        if split:
            raise HwsimError("run on workers needs a model file (its bytes go to the workers)")
        program = model
    else:
        path = resolve_model(model)
        if path.suffix.lower() != ".tflite":  # a .tflite model: hwsim.graph.tflite_import
            onnx_model = load_onnx(path)
            if is_qoperator(onnx_model):
                if split:
                    raise HwsimError(
                        f"{path}: a QOperator model runs in one process (drop --workers)"
                    )
                if outputs_only or not partials:
                    flag = "--outputs-only" if outputs_only else "--no-partials"
                    raise HwsimError(
                        f"{path}: a QOperator model runs through hwsim's QOperator interpreter, "
                        f"which has no {flag} mode (drop {flag})"
                    )
                return run_qoperator(
                    onnx_model, str(path), data, batch_size, report, save_outputs, progress, isa
                )
        program = load_imported(path, tflite_kernels)
    ds = _data(data, program.graph.input_shape)
    collect = save_outputs is not None
    paired = None
    if split:  # the shards' runs on Dask workers, merged exactly (hwsim.sweep.split)
        paired = _run_split(path, ds, batch_size, isa, seed, collect, tflite_kernels, workers,
                            scheduler)  # fmt: skip
    run_fn = (
        run_outputs_only
        if outputs_only
        else functools.partial(run_program, paired=paired, partials=partials)
    )
    rep, outs = run_fn(
        program,
        ds,
        batch_size,
        progress,
        collect_outputs=collect,
        isa=isa,
        seed=seed,
    )
    if split:  # the whole time, workers included
        rep.seconds = time.perf_counter() - t0
    if program.scheme is None:
        rep.settings["scheme"] = imported_scheme(program)
    attach_cost(rep, program, accelerator, min(batch_size, len(ds)))
    if save_outputs is not None:
        g = program.graph
        write_npz(save_outputs, {g.output_name or g.output: outs.astype(np.float32)})
    if report is not None:
        rep.write_json(report)
    return rep


def _shard_program(payload, tflite_kernels=None) -> QuantProgram:
    """The program of the payload's model on a worker (loaded once per worker)."""
    if "program" not in payload.cache:
        payload.cache["program"] = load_imported(payload.model_path("model"), tflite_kernels)
    return payload.cache["program"]


def _run_split(path, ds, batch_size, isa, seed, collect, tflite_kernels, workers, scheduler):
    """The paired runs of ``ds``'s batches on Dask workers (:func:`run`'s ``workers`` /
    ``scheduler``): the model's bytes and the data sent once, the shards merged exactly."""
    from hwsim.datapath.isa import resolve
    from hwsim.sweep import Payload, dask_client
    from hwsim.sweep.split import run_split

    payload = Payload.build({"model": path}, ds, None, batch_size)
    load = functools.partial(_shard_program, tflite_kernels=tflite_kernels)
    with dask_client(workers, scheduler) as client:
        return run_split(load, payload, resolve(isa), seed, collect, client)


def compare(
    model,
    data,
    schemes=DEMO_SCHEMES,
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
    tflite_kernels: str | None = None,
    **kw,
) -> list[dict]:
    """Sweep schemes x weight bits x activation bits on a float model; one row per run.

    An already-quantized model (a ``.tflite`` file, a QDQ / Brevitas QONNX / QCDQ export) gets
    first the row ``as imported`` (the file's own quantization, ``tflite_kernels`` as in
    :func:`run`), then the sweep on its float network (:func:`float_network`: the dequantized
    weights), quantized by :func:`hwsim.quant.quantize` with each scheme, calibrated on
    ``calib``.

    ``calib`` defaults to ``data`` (say so in reports; pass a separate set to avoid it).
    ``isa``: the dot product of the integer runs (see :func:`run`); ``seed``: stochastic
    rounding's draws (see :func:`hwsim.report.run_program`).
    """
    check_outputs(report=report, plot=plot, pareto=pareto)
    schemes, wbits, abits = _seq(schemes), _seq(wbits), _seq(abits)
    if not (schemes and wbits and abits):
        raise HwsimError(
            f"compare needs at least one scheme, weight width and activation width, got "
            f"schemes={schemes}, wbits={wbits}, abits={abits}"
        )
    from hwsim.sweep import Payload, make_job, run_jobs

    path = resolve_model(model)
    base = import_model(path)
    ds = _data(data, base.input_shape)
    cal = _data(calib, base.input_shape) if calib is not None else ds
    fixed = {"accelerator": accelerator, "tflite_kernels": tflite_kernels, **kw}
    jobs = []
    if base.quantized:
        jobs.append(make_job(str(path), {"scheme": "as imported", "seed": seed, "isa": isa},
                             **fixed))  # fmt: skip
    elif tflite_kernels is not None:
        raise HwsimError(f"{path}: tflite_kernels applies to .tflite models only")
    for scheme in schemes:
        for wb in wbits:
            for ab in abits:
                point = {"scheme": scheme, "wbits": wb, "abits": ab, "seed": seed, "isa": isa}
                jobs.append(make_job(str(path), point, **fixed))
    payload = Payload.build({str(path): path}, ds, cal, batch_size)
    payload.cache["graph", str(path)] = base
    evaluate = functools.partial(_evaluate_point, progress=progress)
    done = run_jobs(evaluate, payload, [(None, j, {}) for j in jobs], catch=False)
    rows = [rec["result"] for rec in done.records]
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


def _evaluate_point(payload, job, progress: bool = False) -> dict:
    """One point of a sweep (:mod:`hwsim.sweep`): ``job``'s model quantized with its scheme
    (calibrated on the payload's calibration set; ``as imported``: the file's own
    quantization), run on the payload's data, costed on its accelerator for one sample; the
    row of :func:`compare` (accuracies, agreement, overflow counts, worst SQNR, energy and
    cycles per sample, the scheme's settings). Runs on a Dask worker as well as here."""
    path = payload.model_path(job.model)
    gkey = ("graph", job.model)
    if gkey not in payload.cache:
        payload.cache[gkey] = import_model(path)
    base = payload.cache[gkey]
    ds = payload.data
    cal = payload.calib if payload.calib is not None else ds
    batch_size = payload.batch_size
    if job.scheme is None:
        program = load_imported(path, job.tflite_kernels)
    else:
        pkey = ("program", job.model, repr(job.scheme))
        program = payload.cache.get(pkey)
        if program is None:
            graph = float_network(base) if base.quantized else base
            program = quantize(graph, job.scheme, cal, batch_size, float_run=run_float)
            payload.cache = {k: v for k, v in payload.cache.items() if k[0] != "program"}
            payload.cache[pkey] = program
    rep, _ = run_program(program, ds, batch_size, progress, isa=job.isa, seed=job.seed)
    c = attach_cost(rep, program, job.accelerator, 1)
    settings = program.describe()["scheme"]
    if program.scheme is None:
        settings = {**imported_scheme(program), "default": _imported_default(program)}
    d = job.scheme.default if job.scheme is not None else None
    return {
        "scheme": job.label,
        "wbits": d.wbits if d is not None else _imported_bits(program, "w"),
        "abits": d.abits if d is not None else _imported_bits(program, "a"),
        "float_accuracy": rep.float_accuracy,
        "int_accuracy": rep.int_accuracy,
        "agreement": rep.agreement,
        "overflow_events": sum(r.overflow_events for r in rep.layers),
        "bias_overflows": sum(r.bias_overflows for r in rep.layers),
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
        "settings": settings,
    }


def sweep(
    spec,
    workers: int | None = None,
    scheduler: str | None = None,
    results=None,
    json_path=None,
    csv_path=None,
    plot=None,
    on_record=None,
) -> dict:
    """``hwsim sweep SPEC``: the points of the sweep spec ``spec`` (TOML,
    :mod:`hwsim.sweep.spec`), each run once: a point whose record is already in the results
    folder (``results``, default the spec's) is not run again, so an interrupted or extended
    sweep runs only what is missing (and the failed points, again). In this process, on a
    LocalCluster of ``workers`` processes, or on the Dask cluster at ``scheduler``.

    Each record (:mod:`hwsim.sweep.store`) is keyed by the content hash of the model's bytes,
    the data, the calibration data, the batch size and the point's full settings, and written
    atomically as it arrives; ``on_record(record, done, total)`` is called then (progress).
    Writes all records as JSON (``json_path``), CSV (``csv_path``) and the Pareto plot
    (``plot``, PNG: accuracy vs energy and vs cycles per sample) if asked. Returns
    ``{"spec", "results", "axes", "records" (in point order), "ran", "reused", "lost"}``;
    ``lost``: points whose task died outside the point (run the sweep again to finish)."""
    from hwsim.sweep import (
        Payload,
        ResultStore,
        data_digest,
        load_spec,
        pareto_plot,
        point_key,
        run_jobs,
        write_csv,
    )
    from hwsim.sweep.store import dumps

    check_outputs(json_path=json_path, csv_path=csv_path, plot=plot)
    sp = load_spec(spec, resolve_model)
    store = ResultStore(results if results is not None else sp.results)
    shape, graphs = None, {}
    for name, p in sp.model_paths.items():
        g = graphs[name] = import_model(p)
        try:
            ds = _data(sp.data, g.input_shape)
        except HwsimError as e:
            raise HwsimError(f"{sp.source}: [sweep] data: {e} (model {name})") from None
        shape = shape or g.input_shape
    cal = _data(sp.calib, shape) if sp.calib is not None else None
    payload = Payload.build(sp.model_paths, ds, cal, sp.batch_size)
    for name, g in graphs.items():  # imported once here (workers import their own)
        payload.cache["graph", name] = g
    dsha = data_digest(ds)
    csha = data_digest(cal) if cal is not None else dsha
    meta = {"data": ds.name, "calib": cal.name if cal is not None else ds.name}
    tasks, keys = [], []
    for job in sp.jobs:
        key = point_key(payload.model_sha(job.model), dsha, csha, sp.batch_size, job.settings())
        keys.append(key)
        tasks.append((key, job, {"model": job.model, **meta}))
    store.prepare()
    have = {k: r for k in keys if (r := store.get(k)) is not None and r["status"] == "ok"}
    todo = [t for t in tasks if t[0] not in have]
    done = [len(have)]

    def write(rec):
        store.put(rec)
        done[0] += 1
        if on_record is not None:
            on_record(rec, done[0], len(keys))

    out = run_jobs(_evaluate_point, payload, todo, write, workers, scheduler)
    fresh = {r["key"]: r for r in out.records}
    records = [fresh.get(k) or have.get(k) for k in keys]
    records = [r for r in records if r is not None]
    axes = list(sp.axes)
    doc = {
        "spec": str(sp.source),
        "results": str(store.folder),
        "axes": axes,
        "records": records,
        "ran": len(out.records),
        "reused": len(have),
        "lost": out.lost,
    }
    if json_path is not None:
        atomic_write_text(json_path, dumps({k: v for k, v in doc.items()}) + "\n")
    if csv_path is not None:
        write_csv(csv_path, records, axes)
    if plot is not None:
        pareto_plot(records, plot, f"{sp.source.stem}: {len(records)} points on {ds.name}")
    return doc


def attach_cost(rep: RunReport, program: QuantProgram, accelerator=None, batch: int = 1) -> dict:
    """Cost ``program`` on ``accelerator`` for one batch of ``batch`` samples and put the
    totals (and per-layer cycles / energy) into the run report; returns the totals."""
    from hwsim.cost import Accelerator, layers_from_program
    from hwsim.cost import cost as cost_layers

    acc = accelerator if accelerator is not None else Accelerator()
    crep = cost_layers(layers_from_program(program, batch=batch), acc)
    totals = crep.totals
    rep.cost = {"accelerator": acc.as_dict(), "batch": batch, "totals": totals}
    by_name = {c.name: c for c in crep.layers}
    for row in rep.layers:
        c = by_name.get(row.name)
        if c is not None:
            row.cycles = c.total_cycles
            row.energy_pj = c.energy_pj
    return totals


def accelerator(config=None, array=None, dataflow=None, **fields):
    """The accelerator a run or cost is computed on: ``config`` (INI/TOML or SCALE-Sim .cfg path;
    None: the defaults) with ``array`` (``"ROWSxCOLS"``), ``dataflow`` (``os``, ``ws``, ``is``)
    and any other :class:`hwsim.cost.Accelerator` ``fields`` overriding it (None: unchanged)."""
    from hwsim.cost import load_config, parse_array

    over = {k: v for k, v in fields.items() if v is not None}
    over["dataflow"] = dataflow
    if array is not None:
        over["rows"], over["cols"] = parse_array(array)
    return load_config(config, **over)


def cost(
    model_or_topology,
    config=None,
    array=None,
    dataflow=None,
    batch: int = 1,
    json_path=None,
    plot=None,
    **widths,
):
    """Cost a shipped model / ONNX file (float: widths from the config or ``widths``
    -- ``weight_bits``, ``act_bits``, ``acc_bits``; quantized: widths from the model; any other
    :class:`hwsim.cost.Accelerator` field, e.g. ``bandwidth_mode``; None: unchanged) or a
    SCALE-Sim topology CSV on an accelerator (:func:`accelerator`); returns the
    :class:`hwsim.cost.CostReport`, written as JSON / plotted (atomically) if asked."""
    from hwsim.cost import cost as cost_layers
    from hwsim.cost import layers_from_program, read_topology

    check_outputs(json_path=json_path, plot=plot)
    acc = accelerator(config, array, dataflow, **widths)
    spec = str(model_or_topology)
    if spec.endswith(".csv"):
        layers = read_topology(spec)
    else:
        path = resolve_model(spec)
        graph = import_model(path)
        layers = layers_from_program(
            program_from_graph(graph) if graph.quantized else graph, batch=batch
        )
    rep = cost_layers(layers, acc)
    if json_path is not None:
        atomic_write_text(json_path, json.dumps(rep.as_dict(), indent=2) + "\n")
    if plot is not None:
        cost_plot(rep, plot, Path(spec).stem)
    return rep


#: The former name of :func:`cost`.
cost_model = cost


def is_transformer(graph: Graph) -> bool:
    """A graph with attention, LayerNorm or GELU (the transformer demo's models)."""
    return any(n.op in (Op.MATMUL, Op.LAYERNORM, Op.GELU) for n in graph.nodes)


def demo(
    model=DEFAULT_MODEL,
    data="digits",
    calib="digits-train",
    wbits=None,
    abits=None,
    report=None,
) -> dict:
    """``hwsim demo``, the main job: ``model`` on ``data`` (calibrated on ``calib``) under the
    four :data:`DEMO_SCHEMES` at each width pair (``wbits`` and ``abits`` zipped when they have
    the same length, else every combination), int32 wrapping accumulators and ``ort``
    registers; then per-tensor at the first widths on narrow accumulators in hardware order
    (16-bit saturating, 14-bit saturating, 14-bit wrapping), where they overflow. Returns
    ``{"model", "data", "calib", "rows"}`` (rows as :func:`compare`'s; table:
    :func:`hwsim.report.compare_table`), written as JSON to ``report`` (atomically) if given.

    A transformer (:func:`is_transformer`, e.g. the shipped ``vit``) gets
    :data:`TRANSFORMER_DEMO_SCHEMES`, each with float and with integer-only non-linearities
    (``nonlinear``), at W8A8 and W4A8 by default; a CNN the four :data:`DEMO_SCHEMES` at
    W8A8 and W4A4 by default, then the narrow accumulators."""
    check_outputs(report=report)
    transformer = is_transformer(import_model(resolve_model(model)))
    if wbits is None:
        wbits = (8, 4)
    if abits is None:
        abits = (8, 8) if transformer else (8, 4)
    wbits, abits = _seq(wbits), _seq(abits)
    if not wbits or not abits:
        raise HwsimError(
            f"demo needs at least one weight and one activation width, got wbits={wbits}, "
            f"abits={abits}"
        )
    rows = []
    pairs = (
        list(zip(wbits, abits, strict=False))
        if len(wbits) == len(abits)
        else [(w, a) for w in wbits for a in abits]
    )
    if transformer:
        for wb, ab in pairs:
            for scheme in TRANSFORMER_DEMO_SCHEMES:
                for nl in ("float", "integer"):
                    rows += compare(model, data, (scheme,), (wb,), (ab,), calib=calib, nonlinear=nl)
        doc = {"model": model, "data": data, "calib": calib, "rows": rows}
        if report is not None:
            atomic_write_text(report, json.dumps(doc, indent=2, default=str) + "\n")
        return doc
    for wb, ab in pairs:
        rows += compare(model, data, DEMO_SCHEMES, (wb,), (ab,), calib=calib, report=None)
    # the same network on narrow accumulators, in hardware order: where do they overflow?
    for bits, ovf in ((16, "saturate"), (14, "saturate"), (14, "wrap")):
        rows += compare(
            model,
            data,
            ("per-tensor",),
            (wbits[0],),
            (abits[0],),
            calib=calib,
            acc_bits=bits,
            overflow=ovf,
        )
    doc = {"model": model, "data": data, "calib": calib, "rows": rows}
    if report is not None:
        atomic_write_text(report, json.dumps(doc, indent=2, default=str) + "\n")
    return doc


def datapath(
    seed: int = 0, batch: int = 4, acc_bits: int = 16, tile_rows: int = 16, report=None
) -> dict:
    """``hwsim datapath``: the seeded demo conv layer on several accumulator and scale-register
    designs (:func:`hwsim.datapath_demo.run_demo`); the result dict (table:
    :func:`hwsim.report.datapath_table`), written as JSON to ``report`` (atomically) if given."""
    from hwsim.datapath_demo import run_demo

    check_outputs(report=report)
    for name, v, lo, hi in (
        ("seed", seed, 0, None),
        ("batch", batch, 1, None),
        ("acc_bits", acc_bits, 8, 64),
        ("tile_rows", tile_rows, 1, None),
    ):
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, np.integer))
            or v < lo
            or (hi is not None and v > hi)
        ):
            want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise HwsimError(f"{name} must be an integer {want}, got {v!r}")
    res = run_demo(seed=seed, batch=batch, acc_bits=acc_bits, tile_rows=tile_rows)
    if report is not None:
        atomic_write_text(report, json.dumps(res, indent=2) + "\n")
    return res


def _needs_torch(command: str, extra: str = "") -> None:
    """An HwsimError naming the extra to install when PyTorch cannot be imported."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise HwsimError(
            f"{command} needs PyTorch: pip install -e '.[train]'{extra} ({e})"
        ) from None


def train(
    arch: str,
    data="digits-train",
    optimizer: str = "sgd",
    target_bits: int = 4,
    lambda_s: float | None = None,
    scaling: str = "official",
    epochs: int = 30,
    lr: float = 0.05,
    seed: int = 0,
    out="model.onnx",
    **train_kw,
) -> dict:
    """``hwsim train``: train a shipped architecture (``mlp``, ``rescnn``) on ``data`` with SGD
    or PSGD and export float ONNX to ``out``; returns the record of
    :func:`hwsim.train.fit.train_model` (``lambda_s=None``: the official 150). Needs the
    ``train`` extra (PyTorch): without it, an HwsimError saying so."""
    _needs_torch("hwsim train", " (torch==2.13.0)")
    from hwsim.train.fit import train_model

    if lambda_s is not None:
        train_kw["lambda_s"] = lambda_s
    return train_model(
        arch,
        data=data,
        optimizer=optimizer,
        target_bits=target_bits,
        scaling=scaling,
        epochs=epochs,
        lr=lr,
        seed=seed,
        out=out,
        **train_kw,
    )


def study(*, report=None, **kw) -> dict:
    """``hwsim study psgd``: SGD vs PSGD models under layer-wise and channel-wise quantization
    on the emulated datapath, mean +- std over seeds; the keywords of
    :func:`hwsim.study.study_psgd` (data, seeds, arch, epochs, lr, lambda_s, target_bits,
    scaling, workdir, plot_dir, log); its table: :func:`study_table`. Needs the ``train``
    extra (PyTorch). ``report`` is checked before the training starts."""
    _needs_torch("hwsim study psgd")
    from hwsim.study import study_psgd

    check_outputs(report=report)
    return study_psgd(report=report, **kw)


def study_table(doc: dict) -> str:
    """The paper-style table of a :func:`study` result (:func:`hwsim.study.table`)."""
    from hwsim.study import table

    return table(doc)


def study_fqt(*, report=None, plot_dir=None, workdir=None, **kw) -> dict:
    """``hwsim study fqt``: exact, QAT and fully quantized training (PTQ / PSQ / BHQ / PSQ-shift
    gradients at several widths, an S_max sweep, the gradient variance) of a small CNN and a
    small transformer, mean +- std over seeds; the keywords of
    :func:`hwsim.study.fqt.study_fqt` (data, task, seeds, epochs, grad_bits, quantizers,
    s_max_sweep, s_max_bits, quick, variance, log); its table: :func:`study_fqt_table`. Needs
    the ``train`` extra (PyTorch). ``report``, ``plot_dir`` and ``workdir`` are checked before
    the training starts."""
    from hwsim.io import output_path_problem

    _needs_torch("hwsim study fqt")
    from hwsim.study.fqt import study_fqt as run

    check_outputs(report=report)
    for name, d in (("plot_dir", plot_dir), ("workdir", workdir)):
        if d is not None and (why := output_path_problem(d, directory=True)):
            raise HwsimError(f"{name}: cannot write {why}")
    return run(report=report, plot_dir=plot_dir, workdir=workdir, **kw)


def study_fqt_table(doc: dict) -> str:
    """The tables of a :func:`study_fqt` result (:func:`hwsim.study.fqt.table`)."""
    from hwsim.study.fqt import table

    return table(doc)


__all__ = [
    "DEFAULT_BATCH",
    "accelerator",
    "check_outputs",
    "compare",
    "compare_table",
    "cost",
    "cost_model",
    "datapath",
    "demo",
    "gain_error_note",
    "load_data",
    "load_quantized",
    "make_scheme",
    "quantize_model",
    "resolve_model",
    "run",
    "run_program",
    "shipped_models",
    "study",
    "study_fqt",
    "study_fqt_table",
    "study_table",
    "sweep",
    "train",
]


def trace(
    model,
    out,
    data="digits",
    indices=(),
    layers=(),
    scheme: str | None = None,
    calib="digits-train",
    batch_size: int = DEFAULT_BATCH,
    isa: str = "exact",
    **scheme_kw,
) -> dict:
    """Golden vectors of ``model`` for RTL (``hwsim trace``; docs/trace.md): the chosen samples'
    per-layer integer tensors, weights, bias, raw accumulators and scale registers written to
    the folder ``out`` (atomically). A float model is quantized first (``scheme``, default
    per-tensor, and ``scheme_kw``, calibrated on ``calib``); a quantized one is traced as it is
    (``scheme`` then is an error); a QOperator file through its node interpreter
    (:mod:`hwsim.trace.qoperator`: integer tensors, no accumulators). ``isa``: ``exact``,
    ``avx2`` to trace the layers as onnxruntime's AVX2 kernels compute them (not for a
    QOperator file), or ``auto`` (this CPU's). Returns the manifest."""
    import hashlib

    from hwsim.trace import trace as _trace

    path = resolve_model(model)
    meta = {"model": path.name, "model_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    onnx_model = load_onnx(path) if path.suffix.lower() != ".tflite" else None
    if onnx_model is not None and is_qoperator(onnx_model):
        from hwsim.datapath.isa import Isa, resolve

        if scheme is not None or layers or resolve(isa) is not Isa.EXACT:
            raise HwsimError(f"{model}: a QOperator model is traced whole, as it is (no scheme, "
                             f"no --only, no --isa)")  # fmt: skip
        from hwsim.trace.qoperator import trace_qoperator

        meta["model_path"] = str(path)  # where `hwsim diff --against onnxruntime` finds it
        return trace_qoperator(onnx_model, str(path), data, indices, out, meta)
    graph = import_model(path)
    if graph.quantized:
        if scheme is not None:
            raise HwsimError(f"{model} is already quantized: a scheme applies to a float model")
        program = load_quantized(path)
    else:
        onnx_model = None
        program = quantize_model(
            graph, scheme or "per-tensor", calib=calib, batch_size=batch_size, **scheme_kw
        )
        meta["calib"] = calib
    meta["model_quantized"] = bool(graph.quantized)
    if graph.quantized:
        meta["model_path"] = str(path)  # where `hwsim diff --against onnxruntime` finds it
    return _trace(program, data, list(indices), out, list(layers), meta, onnx_model, isa)


def diff(a, b=None, against: str | None = None, model=None, data=None, save_dumps=None):
    """The first divergence of trace ``a`` and ``b`` (``hwsim diff``): a
    :class:`hwsim.trace.diff.Divergence` (layer, element, count, cause), or None if identical.
    ``b``: another trace, or a dumps folder (one ``.npy`` per ONNX tensor; docs/trace.md).
    ``against="onnxruntime"`` instead of ``b``: run the quantized file ``a`` traces (``model``,
    default the manifest's ``model_path``; its sha256 must match) in onnxruntime on the same
    samples (``data``, default the manifest's) with every traced tensor exposed as an output,
    and compare those (written as a dumps folder to ``save_dumps`` if given)."""
    import hashlib
    import tempfile

    from hwsim.trace.diff import diff as _diff
    from hwsim.trace.external import capture_trace, model_samples
    from hwsim.trace.files import read_manifest

    if against is None:
        if b is None:
            raise HwsimError("give a trace or dumps folder B, or --against onnxruntime")
        if model is not None or data is not None or save_dumps is not None:
            raise HwsimError("model, data and save_dumps apply to --against onnxruntime only")
        return _diff(a, b)
    if against != "onnxruntime":
        raise HwsimError(f"against must be 'onnxruntime', got {against!r}")
    if b is not None:
        raise HwsimError("give either B or --against onnxruntime, not both")
    doc = read_manifest(a)
    if not doc.get("model_quantized"):
        raise HwsimError(
            f"{a}: a trace of a float model quantized by hwsim; onnxruntime runs quantized "
            f"files: trace a QDQ model (onnxruntime's quantize_static, or `hwsim quantize`)"
        )
    path = resolve_model(model if model is not None else doc.get("model_path", doc.get("model")))
    if not path.is_file():
        raise HwsimError(f"{path}: no such model file (pass --model)")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if sha != doc.get("model_sha256"):
        raise HwsimError(
            f"{path}: sha256 {sha[:12]}..., the trace {a} was recorded from a model with "
            f"{str(doc.get('model_sha256'))[:12]}... (another file)"
        )
    spec = [str(i) for i in doc.get("indices") or [0]]
    ds, idx = model_samples(load_onnx(path), data if data is not None else doc.get("data"), spec)
    if save_dumps is not None:
        capture_trace(doc, path, ds.x[idx], save_dumps)
        return _diff(a, save_dumps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "onnxruntime"
        capture_trace(doc, path, ds.x[idx], out)
        return _diff(a, out)
