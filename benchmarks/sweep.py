"""A 16-point sweep of the shipped rescnn on digits: in this process vs a 2-worker Dask
LocalCluster, wall times, their ratio, and where the distributed run's time goes.

The sweep: schemes {per-tensor, per-channel} x weights {8, 4} x accumulators {32, 16} bits x
overflow {wrap, saturate}, calibrated on digits-train, on the 599 digits test samples (each
repeated ``--scale`` times: a bigger data set per point). Every round runs both ways on fresh
results folders (nothing reused), in one process side by side; the figures are medians over
``--rounds`` rounds, after one warm-up point in this process (Numba's kernels loaded).

The in-process run uses this process's Numba threads (all cores); each worker of the
LocalCluster one thread (hwsim.sweep.WORKER_ENV). The distributed time splits into:

* ``start``: LocalCluster up and the client connected;
* ``warm-up``: per worker, its first point minus a steady point (imports, Numba's cached
  kernels loaded, in a fresh process);
* ``compute``: the sum over points of each point's seconds on its worker (steady state);
* ``overhead``: the sweep's wall time minus the busiest worker's busy time (scheduling, the
  payload's transfer, records sent back and written, idle tails).

* ``imports``: the workers importing hwsim (numpy, Numba, onnxruntime, ...), in parallel.

From them, the projection for W workers (one core each): ``start + imports + warm-up +
points * (compute + overhead) / points / W`` (docs/sweep.md states the assumptions).

    python benchmarks/sweep.py [--rounds 3] [--scale 1] [--workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

AXES = """scheme = ["per-tensor", "per-channel"]
wbits = [8, 4]
acc_bits = [32, 16]
overflow = ["wrap", "saturate"]
"""


def spec(folder: Path, data: str, axes: str = AXES) -> Path:
    p = folder / "sweep.toml"
    p.write_text(f'[sweep]\nmodel = "rescnn"\ndata = "{data}"\ncalib = "digits-train"\n'
                 f"[axes]\n{axes}")  # fmt: skip
    return p


def _import_hwsim() -> None:
    """A worker's imports: hwsim's API (numpy, Numba, onnxruntime, onnx, scikit-learn)."""
    import hwsim.api  # noqa: F401


def one_round(folder: Path, data: str, workers: int) -> dict:
    from hwsim import api
    from hwsim.sweep import dask_client, identity

    p = spec(folder, data)
    t0 = time.perf_counter()
    here = api.sweep(p, results=folder / "here")
    wall_here = time.perf_counter() - t0
    t0 = time.perf_counter()
    with dask_client(workers=workers) as client:
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        client.run(_import_hwsim)
        t_imports = time.perf_counter() - t1
        t1 = time.perf_counter()
        dist = api.sweep(p, scheduler=client.scheduler.address, results=folder / "dask")
        wall_sweep = time.perf_counter() - t1
    wall_dask = time.perf_counter() - t0  # including the cluster's shutdown
    same = [identity(r) for r in here["records"]] == [identity(r) for r in dist["records"]]
    per_worker = defaultdict(list)
    for r in dist["records"]:
        per_worker[r["timing"]["pid"]].append(r["timing"]["seconds"])
    steady = (
        statistics.median(s for v in per_worker.values() for s in v[1:])
        if any(len(v) > 1 for v in per_worker.values())
        else 0.0
    )
    # records arrive in completion order: a worker's first record is its first point
    firsts = [v[0] for v in per_worker.values()]
    warm = statistics.mean(f - steady for f in firsts)
    busy = max(sum(v) for v in per_worker.values())
    compute_dask = sum(s for v in per_worker.values() for s in v) - sum(f - steady for f in firsts)
    return {
        "points": len(here["records"]),
        "identical": same,
        "in_process_s": wall_here,
        "in_process_compute_s": sum(r["timing"]["seconds"] for r in here["records"]),
        "dask_total_s": wall_dask,
        "dask_start_s": t_start,
        "dask_imports_s": t_imports,
        "dask_sweep_s": wall_sweep,
        "dask_warmup_per_worker_s": warm,
        "dask_compute_s": compute_dask,
        "dask_steady_point_s": steady,
        "dask_overhead_s": wall_sweep - busy,
        "workers_used": len(per_worker),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1, help="repeat the 599 test digits K times")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    import numpy as np

    from hwsim import api
    from hwsim.data import load_data

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = "digits"
        if a.scale > 1:
            ds = load_data("digits")
            data = str(tmp / f"digits-x{a.scale}.npz")
            np.savez(data, x=np.concatenate([ds.x] * a.scale), y=np.concatenate([ds.y] * a.scale))
        warm = tmp / "warm"
        warm.mkdir()
        api.sweep(spec(warm, data, 'scheme = "per-tensor"\n'))  # Numba's kernels loaded here
        rounds = []
        for i in range(a.rounds):
            f = tmp / f"r{i}"
            f.mkdir()
            rounds.append(one_round(f, data, a.workers))
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k != "identical"}
    med["identical"] = all(r["identical"] for r in rounds)
    n = med["points"]
    print(f"16-point sweep of rescnn on digits x{a.scale} ({599 * a.scale} samples per point), "
          f"median of {a.rounds} rounds; records identical: {med['identical']}")  # fmt: skip
    print(f"{'run':<34}{'wall s':>9}")
    print(f"{'in-process (Numba: all cores)':<34}{med['in_process_s']:>9.2f}")
    print(f"{f'LocalCluster, {a.workers} workers x 1 thread':<34}{med['dask_total_s']:>9.2f}")
    print(f"ratio in-process / LocalCluster: {med['in_process_s'] / med['dask_total_s']:.2f}")
    print("LocalCluster time split:")
    for k, label in (
        ("dask_start_s", "cluster start + connect"),
        ("dask_imports_s", "workers import hwsim (in parallel)"),
        ("dask_warmup_per_worker_s", "warm-up per worker (first point - steady)"),
        ("dask_compute_s", "compute, all points (steady, summed over workers)"),
        ("dask_steady_point_s", "one steady point on one worker thread"),
        ("dask_overhead_s", "overhead (sweep wall - busiest worker's busy time)"),
        ("dask_sweep_s", "sweep wall (without start / shutdown)"),
    ):
        print(f"  {label:<52}{med[k]:>8.3f} s")
    print(f"  in-process compute, all points (Numba all cores)      "
          f"{med['in_process_compute_s']:>8.3f} s")  # fmt: skip
    per_pt = med["dask_overhead_s"] / n
    fixed = med["dask_start_s"] + med["dask_imports_s"] + med["dask_warmup_per_worker_s"]
    per_point = med["dask_compute_s"] / n + per_pt
    print(
        "projection, W workers of one core each: fixed (start + imports + warm-up) "
        f"{fixed:.2f} s + points x {per_point:.3f} s / W"
    )
    for w in (2, 4, 8, 16, 64):
        print(
            f"  W={w:<3} 16 points {fixed + per_point * n / w:>7.2f} s   "
            f"1000 points {fixed + per_point * 1000 / w:>8.1f} s"
        )
    if a.json:
        Path(a.json).write_text(json.dumps({"median": med, "rounds": rounds}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
