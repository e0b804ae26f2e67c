"""hwsim's analytical cycle model against SCALE-Sim (scalesim 3.0.0) on ResNet-50's convolutions.

The 53 conv layers of ResNet-50 (torchvision's v1.5: stride 2 on the 3x3 of each stage's first
block and on its projection shortcut; batch 1, 224x224) on a 32x32 output-stationary array.
Each layer is a SCALE-Sim topology row with its padding folded into the ifmap size, trimmed to
the rows / columns the windows actually reach, ``(out - 1) * stride + filt``, so that
SCALE-Sim's ``ceil((ifmap - filt + stride) / stride)`` gives the real output size (with the
full padded size, 230 for the 7x7 stem, it would give 113 where the network has 112).

hwsim: ``hwsim.cost.dataflow.gemm_counts`` and ``hwsim.cost.memory.memory_cost`` (DRAM words,
stalls, total cycles incl. prefetch; 64 kB SRAMs as scalesim's default) for every layer, timed
over repetitions (median).
SCALE-Sim: ``benchmarks/scalesim_runner.py`` in scalesim's own venv (``tests/cost/scalesim_env``),
one layer per subprocess; its time is the wall time of scalesim's ``run_scale`` (the subprocess
start-up and imports, ~0.3 s a layer, are reported apart). Cycles, DRAM words (ifmap and filter
reads, ofmap writes), stalls and total cycles incl. prefetch must match exactly, and the SRAM
traffic must follow the relationships of ``tests/cost/test_scalesim.py``; the exit code is 1
otherwise.

All 53 layers take scalesim about 12 minutes and ~0.6 GB at peak; ``--layers N`` runs N of them,
evenly spread over the network (the stem first and the last 1x1 last).

    python benchmarks/cost.py [--layers N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARRAY = (32, 32)
DATAFLOW = "os"


def resnet50_convs() -> list[dict]:
    """The 53 conv layers of ResNet-50 (v1.5) as SCALE-Sim conv topology rows."""
    layers = []

    def conv(name, h, k, cin, cout, stride):
        pad = k // 2
        out = (h + 2 * pad - k) // stride + 1
        ifmap = (out - 1) * stride + k  # padded size, trimmed to what the windows reach
        layers.append(
            dict(
                name=name,
                ifmap_h=ifmap,
                ifmap_w=ifmap,
                filt_h=k,
                filt_w=k,
                channels=cin,
                num_filter=cout,
                stride=stride,
            )
        )
        return out

    h = conv("conv1", 224, 7, 3, 64, 2)  # 112; the 3x3/2 max-pool (not a conv) takes it to 56
    h = (h + 2 - 3) // 2 + 1
    cin = 64
    for stage, (blocks, width, stride) in enumerate(
        [(3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)], start=2
    ):
        for b in range(blocks):
            s = stride if b == 0 else 1
            tag = f"res{stage}{chr(ord('a') + b)}"
            conv(f"{tag}_1x1a", h, 1, cin, width, 1)
            ho = conv(f"{tag}_3x3", h, 3, width, width, s)
            conv(f"{tag}_1x1b", ho, 1, width, 4 * width, 1)
            if b == 0:
                conv(f"{tag}_proj", h, 1, cin, 4 * width, s)
            cin, h = 4 * width, ho
    assert len(layers) == 53
    return layers


def gemm_dims(layer: dict) -> tuple[int, int, int]:
    s = layer["stride"]
    oh = math.ceil((layer["ifmap_h"] - layer["filt_h"] + s) / s)
    ow = math.ceil((layer["ifmap_w"] - layer["filt_w"] + s) / s)
    return oh * ow, layer["num_filter"], layer["filt_h"] * layer["filt_w"] * layer["channels"]


def pick(layers: list[dict], n: int | None) -> list[dict]:
    if n is None or n >= len(layers):
        return layers
    if n < 1:
        raise SystemExit("--layers must be >= 1")
    if n == 1:
        return layers[:1]
    idx = sorted({round(i * (len(layers) - 1) / (n - 1)) for i in range(n)})
    return [layers[i] for i in idx]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--layers",
        type=int,
        default=None,
        help="run N of the 53 layers, evenly spread (default: all)",
    )
    ap.add_argument("--repeat", type=int, default=5, help="hwsim timing repeats (median)")
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "tests" / "cost"))
    from scalesim_env import run_scalesim, scalesim_python

    from hwsim.cost.dataflow import gemm_counts
    from hwsim.cost.memory import ConvGeometry, memory_cost
    from hwsim.io import atomic_write_text

    layers = pick(resnet50_convs(), args.layers)
    R, C = ARRAY
    dims = [gemm_dims(layer) for layer in layers]

    # hwsim: the whole selection per call, conv-row -> GEMM conversion included
    keys = ("ifmap_h", "ifmap_w", "filt_h", "filt_w", "channels", "stride")

    def hwsim_all():
        out = []
        for layer in layers:
            Np, Mf, K = gemm_dims(layer)
            geo = ConvGeometry(*(layer[k] for k in keys))
            out.append(
                (
                    gemm_counts(DATAFLOW, R, C, Np, Mf, K),
                    # __wrapped__: around memory_cost's cache, computed afresh every call
                    memory_cost.__wrapped__(DATAFLOW, R, C, Np, K, Mf, (64, 64, 64), geo),
                )
            )
        return out

    t0 = time.perf_counter()
    hw = hwsim_all()
    loops = max(1, int(0.5 / (time.perf_counter() - t0)))
    ts = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            hwsim_all()
        ts.append((time.perf_counter() - t0) / loops)
    hw_seconds = statistics.median(ts)

    python = scalesim_python()
    print(
        f"ResNet-50, {len(layers)} of 53 conv layers, {R}x{C} {DATAFLOW} array; scalesim: {python}",
        file=sys.stderr,
    )
    rows, ok = [], True
    hdr = (
        f"{'layer':<12} {'Np':>6} {'Mf':>5} {'K':>5} {'hwsim cyc':>10} {'scalesim cyc':>12}"
        f" {'match':>5} {'traffic':>7} {'DRAM words (ifmap+filter+ofmap)':>31} {'dram':>4}"
        f" {'scalesim s':>10}"
    )
    print(hdr)
    t_all = time.perf_counter()
    mem_keys = (
        "dram_ifmap_reads",
        "dram_filter_reads",
        "dram_ofmap_writes",
        "stall_cycles",
        "total_cycles",
        "total_cycles_incl_prefetch",
    )
    for layer, (Np, Mf, K), (g, m) in zip(layers, dims, hw, strict=True):
        t0 = time.perf_counter()
        (ss,) = run_scalesim(
            {"array": [R, C], "dataflow": DATAFLOW, "layers": [layer]}, timeout=3600, python=python
        )
        wall = time.perf_counter() - t0
        match = ss["compute_cycles"] == g.compute_cycles and ss["stall_cycles"] == 0
        folds = math.ceil(Np / R) * math.ceil(Mf / C)
        traffic = (
            ss["sram_ifmap_reads"] == g.ifmap_reads
            and ss["sram_filter_reads"] == g.filter_reads
            # scalesim 3.0.0's OS ofmap counter adds R + C per fold (see the tests)
            and ss["sram_ofmap_writes"] == g.ofmap_writes + folds * (R + C)
        )
        mem = {k: getattr(m, k) for k in mem_keys}
        dram_match = mem == {k: ss[k] for k in mem_keys}
        ok &= match and traffic and dram_match
        words = sum(mem[k] for k in mem_keys[:3])
        rows.append(
            {
                "name": layer["name"],
                "layer": layer,
                "Np": Np,
                "Mf": Mf,
                "K": K,
                "hwsim": {
                    "compute_cycles": g.compute_cycles,
                    "utilization": g.utilization,
                    "ifmap_reads": g.ifmap_reads,
                    "filter_reads": g.filter_reads,
                    "ofmap_writes": g.ofmap_writes,
                    **mem,
                },
                "scalesim": ss,
                "scalesim_wall_seconds": wall,
                "cycles_match": match,
                "traffic_relationships_hold": traffic,
                "memory_match": dram_match,
            }
        )
        print(
            f"{layer['name']:<12} {Np:>6} {Mf:>5} {K:>5} {g.compute_cycles:>10} "
            f"{ss['compute_cycles']:>12} {'yes' if match else 'NO':>5} "
            f"{'ok' if traffic else 'NO':>7} {words:>31,} {'yes' if dram_match else 'NO':>4} "
            f"{ss['seconds']:>10.2f}",
            flush=True,
        )
    wall_all = time.perf_counter() - t_all

    ss_seconds = sum(r["scalesim"]["seconds"] for r in rows)
    total_cycles = sum(g.compute_cycles for g, _ in hw)
    total_words = sum(
        r["hwsim"][k] for r in rows for k in ("dram_ifmap_reads", "dram_filter_reads")
    ) + sum(r["hwsim"]["dram_ofmap_writes"] for r in rows)
    ratio = ss_seconds / hw_seconds
    summary = {
        "network": "ResNet-50 v1.5 conv layers, batch 1, 224x224",
        "array": [R, C],
        "dataflow": DATAFLOW,
        "layers": len(layers),
        "total_compute_cycles": total_cycles,
        "all_cycles_match": all(r["cycles_match"] for r in rows),
        "all_traffic_relationships_hold": all(r["traffic_relationships_hold"] for r in rows),
        "all_memory_match": all(r["memory_match"] for r in rows),
        "total_dram_words": total_words,
        "hwsim_seconds": hw_seconds,
        "scalesim_seconds": ss_seconds,
        "scalesim_wall_seconds_incl_startup": wall_all,
        "speed_ratio": ratio,
        # the largest resident set of any scalesim subprocess (Linux: kB)
        "scalesim_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print(f"\ntotal compute cycles {total_cycles:,} ({'all match' if ok else 'MISMATCH'})")
    print(
        f"total DRAM words {total_words:,} "
        f"({'all match' if summary['all_memory_match'] else 'MISMATCH'})"
    )
    print(
        f"hwsim gemm_counts + memory_cost: {hw_seconds * 1e3:,.1f} ms for the {len(layers)} layers "
        f"(median of {args.repeat} x {loops} calls)"
    )
    print(
        f"scalesim run_scale: {ss_seconds:,.2f} s ({wall_all:,.2f} s with the subprocesses), "
        f"peak {summary['scalesim_peak_rss_mb']:,.0f} MB"
    )
    print(f"hwsim is {ratio:,.0f}x faster")
    if args.json_path:
        atomic_write_text(
            args.json_path, json.dumps({"summary": summary, "layers": rows}, indent=1) + "\n"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
