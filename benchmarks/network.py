"""End-to-end speed and memory: hwsim running W8A8 networks vs onnxruntime on the same QDQ file.

Models (``--models a,b,...`` selects; default all):

* ``rescnn``: the shipped residual CNN, digits (1x8x8).
* ``cifar_cnn``: a random-weight residual CNN on CIFAR-sized inputs (3x32x32: conv-BN-ReLU
  stem, two residual blocks, strided convs, global average pooling, dense).
* ``resnet18``, ``mobilenetv2``: the ResNet-18-style and MobileNetV2-style networks of
  ``tests/conformance/archs.py`` (3x64x64, reduced widths, random weights and BatchNorm
  statistics).
* ``resnet18_224``: ResNet-18 at full width (64/128/256/512, 1000 classes: torchvision's
  layout, built from the same ``archs.py`` blocks) on 3x224x224, at ``--batch-224`` samples.
* ``vit``: the shipped transformer, digits (1x8x8). hwsim's file keeps LayerNorm, Softmax and
  GELU (Erf) as float islands between integer layers; onnxruntime runs the same file (its
  fusions: LayerNormalization, Gelu, QLinearSoftmax, and the 3-D Linear layers partly as float
  MatMul on dequantized operands), so its outputs are compared as for the CNNs.

The torch models are exported by this script (the TorchScript exporter): without torch (the
``train`` / ``test`` extra) those cases are skipped with a line saying so.

Each model is quantized by hwsim (per-tensor, W8A8, int32 wrapping accumulators, ``ort``
registers) and saved; that file is a plain QDQ model, so onnxruntime (default session options:
QDQ fused into its integer kernels) runs exactly the same network. Same batch, same thread
count. Times are medians over ``--repeat`` runs after warm-up runs (at least 0.3 s of them:
a freshly built session's threads settle), each run on fresh inputs (``hwsim run``: one data set
of :data:`RUN_BATCHES` distinct batches, the same for each timed call).

Four figures per model: onnxruntime; the outputs-only run (``IntegerExecutor(outputs_only=
True)``, ``hwsim run --outputs-only``: the emulated accelerator's integers, the layers whose
contract is an onnxruntime QOperator kernel's lowered to it, :mod:`hwsim.execute.lowered`; its
outputs are checked equal to the executor's); hwsim's integer executor node by node with its
per-layer counters; and ``hwsim run`` (``hwsim.api.run_program``: integer run + float reference
run + per-layer SQNR and counters, i.e. the whole report), timed on a data set of
:data:`RUN_BATCHES` batches per call and given per batch, so that what a run pays once (the
float reference's session, the conv plans) counts as it does over a data set. Ratios > 1 mean
hwsim is faster.
Each model runs in a fresh subprocess (this script with ``--case NAME``), which reads its peak
resident memory (``ru_maxrss``) after quantization, after onnxruntime, after each hwsim phase
and at the end (the case's peak: the largest of all phases, the process is not restarted
between them).

On a shared machine a neighbour's load slows hwsim's parallel (Numba) kernels by up to 100x:
each case measures how many cores other processes kept busy during its timings (/proc/stat
minus its own CPU time), and a case disturbed by more than 0.25 cores is run again, up to
``--attempts`` times; the least disturbed attempt is reported, with its load.

    python benchmarks/network.py [--batch 64] [--batch-224 8] [--repeat 3] [--threads 2]
                                 [--models rescnn,vit] [--attempts 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("rescnn", "cifar_cnn", "resnet18", "mobilenetv2", "resnet18_224", "vit")
TORCH_MODELS = ("resnet18", "mobilenetv2", "resnet18_224")
SHAPES = {
    "rescnn": (1, 8, 8),
    "cifar_cnn": (3, 32, 32),
    "resnet18": (3, 64, 64),
    "mobilenetv2": (3, 64, 64),
    "resnet18_224": (3, 224, 224),
    "vit": (1, 8, 8),
}
DIGITS = ("rescnn", "vit")
RSS_TARGET_MB = 4096  # issue 16: < 4 GiB at batch 64
BUSY_LIMIT = 0.25  # cores other processes may keep busy before a case is run again
WARM_S = 0.3  # seconds of warm-up calls before the timed ones (threads, caches, arenas settle)
RUN_BATCHES = 8  # batches in each timed ``hwsim run`` (one data set, one report)


def cpu_info() -> dict:
    """The model name and the integer dot-product features of this CPU, from /proc/cpuinfo
    (``grep -o 'avx512_vnni\\|amx_int8\\|avx2' /proc/cpuinfo | sort -u``)."""
    import platform

    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, val = line.partition(":")
                key = key.strip()
                if key == "model name":
                    name = val.strip()
                elif key in ("flags", "Features"):
                    flags.update(val.split())
    except OSError:
        pass
    info = {
        "model_name": name,
        "machine": platform.machine(),
        "features": sorted(flags & {"avx512_vnni", "amx_int8", "avx2"}),
        "cores": os.cpu_count(),
    }
    return info


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``ru_maxrss``), MB (Linux reports KiB).
    Linux carries the high-water mark of the launching process over ``fork`` + ``execve``, so
    the driver that starts the case processes imports nothing heavy (a few tens of MB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024.0 if sys.platform != "darwin" else r / 2**20


def vm_hwm_mb() -> float | None:
    """``VmHWM`` of /proc/self/status (this address space's peak RSS, not inherited), MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


# --- float models -------------------------------------------------------------------------------


def cifar_cnn(seed: int = 0):
    """A random-weight residual CNN for 3x32x32 inputs (float ONNX)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name, x, cin, cout, stride=1, bn=True, relu=True):
        w = (rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w"],
                [f"{name}_c"],
                name=name,
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        y = f"{name}_c"
        if bn:
            for p, v in (
                ("g", rng.uniform(0.5, 1.5, cout)),
                ("b", rng.normal(0, 0.1, cout)),
                ("m", rng.normal(0, 0.1, cout)),
                ("v", rng.uniform(0.5, 1.5, cout)),
            ):
                inits.append(numpy_helper.from_array(v.astype(np.float32), f"{name}_{p}"))
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    [y] + [f"{name}_{p}" for p in "gbmv"],
                    [f"{name}_bn"],
                    name=f"{name}_bn",
                )
            )
            y = f"{name}_bn"
        if relu:
            nodes.append(helper.make_node("Relu", [y], [f"{name}_r"], name=f"{name}_relu"))
            y = f"{name}_r"
        return y

    def block(name, x, c):
        h = conv(f"{name}a", x, c, c)
        h = conv(f"{name}b", h, c, c, relu=False)
        nodes.append(helper.make_node("Add", [x, h], [f"{name}_s"], name=f"{name}_add"))
        nodes.append(helper.make_node("Relu", [f"{name}_s"], [f"{name}_o"], name=f"{name}_relu"))
        return f"{name}_o"

    y = conv("stem", "input", 3, 32)
    y = block("b1", y, 32)
    y = conv("down1", y, 32, 64, stride=2)
    y = block("b2", y, 64)
    y = conv("down2", y, 64, 128, stride=2)
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    wf = rng.normal(0, 0.1, (10, 128)).astype(np.float32)
    inits += [
        numpy_helper.from_array(wf, "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes.append(
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)
    )
    g = helper.make_graph(
        nodes,
        "cifar_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def export_float(name: str, path: Path) -> Path:
    """Write the float ONNX model ``name`` (not a shipped one) to ``path``. The torch models
    come from tests/conformance/archs.py (torch needed)."""
    if name == "cifar_cnn":
        import onnx

        onnx.save(cifar_cnn(), str(path))
        return path
    sys.path.insert(0, str(ROOT / "tests" / "conformance"))
    import archs
    import torch

    if name in ("resnet18", "mobilenetv2"):
        archs.export_float(name, path, seed=0)
        return path
    assert name == "resnet18_224"
    torch.manual_seed(0)
    model = archs.ResNet18(widths=(64, 128, 256, 512), num_classes=1000)
    archs._randomise_bn(model, torch.Generator().manual_seed(1))
    archs._export(model.eval(), torch.zeros(1, *SHAPES[name]), path, 13)
    return path


# --- one case, in its own process ---------------------------------------------------------------


def _busy_s() -> tuple[float, float] | None:
    """(CPU seconds all processes have used, CPU seconds this process has used) so far; None
    without /proc/stat."""
    try:
        with open("/proc/stat") as fh:
            f = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = sum(f[:3]) + sum(f[5:8])  # user nice system (idle iowait) irq softirq steal
    t = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


def timed(fn, inputs, load: dict | None = None, key: str = "") -> list[float]:
    """Seconds of ``fn(x)`` for each of ``inputs[1:]``, after warm-up calls on ``inputs[0]``
    (JIT, session caches; for at least :data:`WARM_S`, one call at least). ``load[key]``: the
    CPU cores other processes kept busy meanwhile (warm-up included), on average; None if that
    took under 0.2 s (/proc/stat counts 10 ms ticks). On a shared 2-core machine Numba's
    parallel kernels wait for a descheduled thread at every barrier, so a neighbour's load
    slows hwsim most."""
    b0, w0 = _busy_s(), time.perf_counter()
    fn(inputs[0])  # the first call builds (JIT, sessions, plans); then warm for >= WARM_S
    while time.perf_counter() - w0 < WARM_S:
        fn(inputs[0])
    ts = []
    for x in inputs[1:]:
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    b1, wall = _busy_s(), time.perf_counter() - w0
    if load is not None:
        load[key] = None
        if b0 is not None and b1 is not None and wall >= 0.2:
            load[key] = max(0.0, ((b1[0] - b0[0]) - (b1[1] - b0[1])) / wall)
    return ts


def run_case(name: str, float_path: str | None, batch: int, repeat: int, threads: int) -> dict:
    """Quantize ``name``, time onnxruntime / the integer executor / ``run_program`` on it and
    compare the outputs; the peak RSS after each phase."""
    import numpy as np
    import onnxruntime as ort

    from hwsim import api
    from hwsim.api import run_program
    from hwsim.data import Dataset, load_data
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize
    from hwsim.quant.store import load, save

    rss = {"imports": peak_rss_mb()}
    others: dict[str, float | None] = {}
    rng = np.random.default_rng(1)
    if name in DIGITS:
        calib = load_data("digits-train")
        src = api.resolve_model(name)
        inputs = [calib.x[rng.integers(0, len(calib), batch)] for _ in range(repeat + 1)]
    else:
        shape = SHAPES[name]
        n_calib = 16 if name == "resnet18_224" else 64
        calib = Dataset("calib", rng.normal(0, 1, (n_calib, *shape)).astype(np.float32), None)
        src = float_path
        inputs = [rng.normal(0, 1, (batch, *shape)).astype(np.float32) for _ in range(repeat + 1)]
    with tempfile.TemporaryDirectory() as d:
        qpath = Path(d) / f"{name}_w8a8.onnx"
        program = quantize(
            import_model(src), Scheme.preset("per-tensor"), calib, float_run=run_float
        )
        save(program, qpath)
        del program, calib
        program = load(qpath)
        rss["quantize"] = peak_rss_mb()

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(qpath), so, providers=["CPUExecutionProvider"])
        feed = sess.get_inputs()[0].name
        t_ort = timed(lambda x: sess.run(None, {feed: x}), inputs, others, "onnxruntime")
        y_ort = sess.run(None, {feed: inputs[0]})[0]
        sess = None  # its threads and buffers gone before hwsim's phases
        rss["onnxruntime"] = peak_rss_mb()

    fx = IntegerExecutor(program, outputs_only=True)
    t_fast = timed(lambda x: fx.output(fx.run(x, keep_all=False)), inputs, others, "outputs only")
    y_fast = fx.output(fx.run(inputs[0], keep_all=False))
    lowered = (len(fx.lowering.lowered), len(fx.g.nodes))
    fx = None
    rss["outputs_only"] = peak_rss_mb()
    ex = IntegerExecutor(program)
    t_int = timed(
        lambda x: ex.output(ex.run(x, keep_all=False)), inputs, others, "integer executor"
    )
    env = ex.run(inputs[0], keep_all=False)
    y_hw = ex.output(env)
    out = env[ex.g.output]
    step = float(np.max(out.scale)) if hasattr(out, "scale") else None  # the output's grid
    ex = env = out = None
    rss["integer_executor"] = peak_rss_mb()
    # a data set of RUN_BATCHES batches per call: the setup a run pays once (the float
    # reference's session, conv plans) is spread over them as over a real data set
    data = np.concatenate([inputs[1 + i % (len(inputs) - 1)] for i in range(RUN_BATCHES)])
    t_run = timed(
        lambda x: run_program(program, Dataset("b", x, None), batch),
        [inputs[0]] + [data] * (len(inputs) - 1),
        others,
        "hwsim run",
    )
    t_run = [t / RUN_BATCHES for t in t_run]  # seconds per batch
    data = None
    rss["hwsim_run"] = peak_rss_mb()
    macs = sum(
        int(r.macs) for r in run_program(program, Dataset("b", inputs[0][:1], None), 1)[0].layers
    )

    same = bool(y_ort.shape == y_hw.shape and np.array_equal(y_ort, y_hw))
    diff = None
    if y_ort.shape == y_hw.shape:
        diff = np.abs(y_ort.astype(np.float64) - y_hw.astype(np.float64))
    flat = lambda y: y.reshape(len(y), -1)  # noqa: E731
    try:
        from hwsim.datapath.isa import host_isa

        dot = host_isa().value
    except Exception:  # noqa: BLE001 -- informational only
        dot = None
    return {
        "t_ort": t_ort,
        "t_fast": t_fast,
        "fast_equals_executor": bool(np.array_equal(y_fast, y_hw)),
        "lowered_nodes": lowered,
        "t_int": t_int,
        "t_run": t_run,
        "macs_per_sample": macs,
        "bit_exact_vs_ort": same,
        "outputs_differing": None if diff is None else float(np.mean(diff > 0)),
        "max_abs_diff": None if diff is None else float(diff.max()),
        "max_diff_output_steps": None if diff is None or not step else float(diff.max() / step),
        "argmax_agreement": None
        if diff is None
        else float(np.mean(flat(y_ort).argmax(1) == flat(y_hw).argmax(1))),
        "rss_high_water_mb": rss,
        "other_processes_cpu_load": others,
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": vm_hwm_mb(),
        "onnxruntime_version": ort.__version__,
        "onnxruntime_dot_product": dot,
    }


def case_main(args) -> None:
    if args.export:  # the torch export, in its own process (keeps torch out of the driver)
        export_float(args.case, Path(args.result))
        return
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    res = run_case(args.case, args.float_path, args.batch, args.repeat, args.threads)
    Path(args.result).write_text(json.dumps(res))


def _busiest(res: dict) -> float:
    """The most CPU other processes used during any of a case's timings (cores)."""
    return max((v for v in res["other_processes_cpu_load"].values() if v is not None), default=0.0)


def _load(row) -> str:
    v = row["other_processes_cpu_load"]
    return "/".join("-" if v[k] is None else f"{v[k]:.1f}" for k in ("hwsim", "onnxruntime"))


# --- driver: imports nothing heavy, so the case processes start from a small RSS ----------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batch-224", type=int, default=8, help="batch of resnet18_224")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--models", default=",".join(MODELS), help="comma-separated, of: " + ", ".join(MODELS)
    )
    ap.add_argument(
        "--attempts",
        type=int,
        default=3,
        help="run a model again (up to this many times in all) while other processes kept more "
        f"than {BUSY_LIMIT} CPU cores busy during its timings; the least disturbed attempt counts",
    )
    ap.add_argument("--json", default=None)
    # internal: one model in this process
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--float-path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        return case_main(args)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    cpu = cpu_info()
    print(
        f"cpu: {cpu['model_name']} ({cpu['machine']}, {cpu['cores']} cores); features: "
        f"{', '.join(cpu['features']) or 'none of avx2/avx512_vnni/amx_int8'}"
    )
    print(
        f"batch {args.batch} (resnet18_224: {args.batch_224}), {args.threads} threads, median "
        f"of {args.repeat} runs after a warm-up; one process per model",
        flush=True,
    )
    has_torch = importlib.util.find_spec("torch") is not None
    me = str(Path(__file__).resolve())
    rows, failed, rss_lines = [], [], []
    with tempfile.TemporaryDirectory() as d:
        for m in models:
            if m in TORCH_MODELS and not has_torch:
                print(
                    f"skipped {m}: torch is not installed (pip install -e '.[train]' to export it)",
                    flush=True,
                )
                continue
            batch = args.batch_224 if m == "resnet18_224" else args.batch
            fpath = None
            if m not in DIGITS:
                fpath = str(Path(d) / f"{m}.onnx")
                export = [sys.executable, me, "--case", m, "--export", "--result", fpath]
                if subprocess.run(export).returncode:
                    print(f"FAILED {m}: exporting the float model", flush=True)
                    failed.append(m)
                    continue
            result = Path(d) / f"{m}.json"
            cmd = [
                sys.executable, me, "--case", m, "--batch", str(batch),
                "--repeat", str(args.repeat), "--threads", str(args.threads),
                "--result", str(result),
            ] + (["--float-path", fpath] if fpath else [])  # fmt: skip
            r, wall, attempts, err = None, 0.0, 0, None
            for attempts in range(1, max(1, args.attempts) + 1):
                result.unlink(missing_ok=True)
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=str(ROOT))
                if proc.returncode != 0 or not result.exists():
                    err = f"the case process exited with {proc.returncode}"
                    break
                got = json.loads(result.read_text())
                if r is None or _busiest(got) < _busiest(r):
                    r, wall = got, time.perf_counter() - t0
                if _busiest(got) <= BUSY_LIMIT:
                    break
                print(
                    f"  {m}: other processes kept {_busiest(got):.1f} cores busy during the "
                    "timings" + ("; again" if attempts < args.attempts else ""),
                    flush=True,
                )
            if err is not None:
                print(f"FAILED {m}: {err}", flush=True)
                failed.append(m)
                continue
            print(f"  {m}: {wall:.0f} s", flush=True)
            rss_lines.append(
                f"{m}: peak RSS at batch {batch}: {r['peak_rss_mb']:.0f} MB "
                f"(target < {RSS_TARGET_MB} MB at batch 64)"
            )
            t_ort = statistics.median(r["t_ort"])
            common = {
                "model": m,
                "input_shape": list(SHAPES[m]),
                "batch": batch,
                "macs_per_sample": r["macs_per_sample"],
                "threads": args.threads,
                "repeat": args.repeat,
                "reference": f"onnxruntime {r['onnxruntime_version']} QDQ (fused)",
                "reference_samples_per_s": batch / t_ort,
                "reference_samples_per_s_best": batch / min(r["t_ort"]),
                "bit_exact_vs_ort": r["bit_exact_vs_ort"],
                "outputs_differing_vs_ort": r["outputs_differing"],
                "max_abs_diff_vs_ort": r["max_abs_diff"],
                "max_diff_output_steps_vs_ort": r["max_diff_output_steps"],
                "argmax_agreement_vs_ort": r["argmax_agreement"],
                "peak_rss_mb": r["peak_rss_mb"],
                "vm_hwm_mb": r["vm_hwm_mb"],
                "rss_high_water_mb": r["rss_high_water_mb"],
                "case_wall_s": wall,
                "attempts": attempts,
                "cpu": {**cpu, "onnxruntime_dot_product": r["onnxruntime_dot_product"]},
            }
            cases = (
                ("outputs only", r["t_fast"]),
                ("integer executor", r["t_int"]),
                ("hwsim run", r["t_run"]),
            )
            for what, ts in cases:
                t = statistics.median(ts)
                extra = {}
                if what == "outputs only":
                    extra = {
                        "equals_integer_executor": r["fast_equals_executor"],
                        "lowered_nodes": r["lowered_nodes"],
                    }
                rows.append(
                    {
                        "name": f"{m} {what}",
                        **common,
                        **extra,
                        "hwsim_samples_per_s": batch / t,
                        "hwsim_samples_per_s_best": batch / min(ts),
                        "ratio": t_ort / t,
                        "times_s": {"hwsim": ts, "onnxruntime": r["t_ort"]},
                        "other_processes_cpu_load": {
                            "hwsim": r["other_processes_cpu_load"].get(what),
                            "onnxruntime": r["other_processes_cpu_load"].get("onnxruntime"),
                        },
                    }
                )

    if rows:
        print(
            f"\nreference: {rows[0]['reference']}; onnxruntime dot product on this CPU: "
            f"{rows[0]['cpu']['onnxruntime_dot_product']}"
        )
    hdr = (
        f"{'case':<30}{'batch':>6}{'MMAC/smp':>10}{'hwsim/s':>10}{'ort/s':>10}{'ratio':>8}"
        f"{'exact':>7}{'peak MB':>9}{'others':>8}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['name']:<30}{r['batch']:>6}{r['macs_per_sample'] / 1e6:>10.1f}"
            f"{r['hwsim_samples_per_s']:>10.1f}{r['reference_samples_per_s']:>10.1f}"
            f"{r['ratio']:>8.3f}{str(r['bit_exact_vs_ort']):>7}{r['peak_rss_mb']:>9.0f}"
            f"{_load(r):>8}"
        )
    print(
        "others: CPU cores other processes kept busy during the hwsim / onnxruntime timings "
        "(a loaded neighbour slows hwsim's parallel kernels most)"
    )
    for r in rows:
        if r.get("equals_integer_executor") is False:
            print(f"{r['model']}: outputs-only run DIFFERS from the integer executor")
    for r in rows:
        if r["name"].endswith(" outputs only") and not r["bit_exact_vs_ort"]:  # once a model
            steps = r["max_diff_output_steps_vs_ort"]
            print(
                f"{r['model']}: not bit-exact vs onnxruntime: "
                f"{100 * r['outputs_differing_vs_ort']:.2f}% of the output values differ (max "
                f"|diff| {r['max_abs_diff_vs_ort']:.3g}"
                + (f" = {steps:.0f} step(s) of the output grid" if steps else "")
                + f"), argmax agrees on {100 * r['argmax_agreement_vs_ort']:.1f}% of the samples"
            )
    print()
    for line in rss_lines:
        print(line)
    if failed:
        print("failed: " + ", ".join(failed))
    if args.json:
        from hwsim.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
