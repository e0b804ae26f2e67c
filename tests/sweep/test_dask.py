"""Sweeps and runs on Dask: the same records in-process, on 1 and on 2 workers, in any order;
a worker killed mid-sweep costs only its in-flight points; ``run --workers`` merges its
shards into the in-process report exactly; clusters leave no process behind."""

from __future__ import annotations

import os
import signal

import psutil
from click.testing import CliRunner

from hwsim import api
from hwsim.cli import main
from hwsim.sweep import WORKER_ENV, identity

AXES = 'scheme = ["per-tensor", "per-channel"]\nwbits = [8, 4]\nacc_bits = [32, 14]'
TIMINGS = ("seconds", "samples_per_s", "macs_per_s")


def _ids(doc):
    return [identity(r) for r in doc["records"]]


def _by_key(doc):
    return {r["key"]: identity(r) for r in doc["records"]}


def test_workers_run_one_thread_each(cluster):
    _, client = cluster

    def threads():
        import numba

        return numba.config.NUMBA_NUM_THREADS, {k: os.environ.get(k) for k in WORKER_ENV}

    for n, env in client.run(threads).values():
        assert n == 1 and env == WORKER_ENV


def test_same_records_in_process_on_one_and_two_workers_in_any_order(cluster, write_spec):
    p = write_spec('scheme = ["per-tensor", "per-channel"]\nwbits = [8, 4]')
    here = api.sweep(p, results=p.parent / "here")
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    one = api.sweep(p, workers=1, results=p.parent / "one")
    after = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not (after - before), "the LocalCluster of workers=1 left processes running"
    two = api.sweep(p, scheduler=cluster[0].scheduler_address, results=p.parent / "two")
    assert _ids(one) == _ids(here) and _ids(two) == _ids(here)
    assert {r["timing"]["pid"] for r in two["records"]} != {os.getpid()}
    # the axes listed in reverse: the same points (same keys) in the reverse order
    rev = write_spec('scheme = ["per-channel", "per-tensor"]\nwbits = [4, 8]', name="rev.toml")
    back = api.sweep(rev, results=p.parent / "rev")
    assert _by_key(back) == _by_key(here)
    assert [r["key"] for r in back["records"]] == [r["key"] for r in here["records"]][::-1]


def test_a_killed_worker_costs_only_its_in_flight_points(cluster, write_spec):
    cl, client = cluster
    p = write_spec(AXES + "\nseed = [0, 1]")
    ref = api.sweep(p, results=p.parent / "ref")
    killed = []

    def kill_a_busy_worker(rec, done, total):
        if killed:
            return
        busy = {w: ks for w, ks in client.processing().items() if ks}
        if not busy:
            return
        w = sorted(busy)[0]
        pid = client.run(os.getpid, workers=[w])[w]
        os.kill(pid, signal.SIGKILL)
        killed.append((pid, busy[w]))

    folder = p.parent / "killed"
    doc = api.sweep(p, scheduler=cl.scheduler_address, results=folder, on_record=kill_a_busy_worker)
    assert killed and killed[0][1], "no worker was killed while it had points in flight"
    assert not doc["lost"] and doc["ran"] == 16
    assert _ids(doc) == _ids(ref)
    files = sorted(f.stem for f in folder.glob("*.json"))
    assert files == sorted(r["key"] for r in ref["records"])  # each point once, none lost
    assert not list(folder.glob(".*"))


def test_a_failing_point_on_workers_is_recorded(cluster, write_spec, monkeypatch):
    p = write_spec("wbits = [8, 6, 4]")
    real = api._evaluate_point

    def fails_at_6(payload, job):
        if job.point["wbits"] == 6:
            raise ValueError("no 6-bit multipliers today")
        return real(payload, job)

    monkeypatch.setattr(api, "_evaluate_point", fails_at_6)
    doc = api.sweep(p, scheduler=cluster[0].scheduler_address)
    assert [r["status"] for r in doc["records"]] == ["ok", "failed", "ok"]
    assert doc["records"][1]["error"] == "ValueError: no 6-bit multipliers today"


def _quantized(tmp_path, small_data, **kw):
    out = tmp_path / "q.onnx"
    api.quantize_model("rescnn", calib=str(small_data[1]), out=out, **kw)
    return out


def _report(rep):
    return {k: v for k, v in rep.as_dict().items() if k not in TIMINGS}


def test_run_split_across_workers_equals_the_one_process_report(cluster, tmp_path, small_data):
    addr = cluster[0].scheduler_address
    data = str(small_data[0])
    # stochastic rounding (the global sample index), per-sample shifts, saturating 14 bits
    q = _quantized(tmp_path, small_data, scheme="per-sample-shift", acc_bits=14,
                   overflow="saturate", register="pow2", rounding="stochastic")  # fmt: skip
    here = api.run(q, data, batch_size=8, seed=5, save_outputs=tmp_path / "a.npz")
    split = api.run(q, data, batch_size=8, seed=5, scheduler=addr, save_outputs=tmp_path / "b.npz")
    assert _report(split) == _report(here)
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    # isa avx2: the exact executor's SQNR and the int16 pair counters merge too
    q = _quantized(tmp_path, small_data, scheme="per-tensor")
    here = api.run(q, data, batch_size=8, isa="avx2")
    split = api.run(q, data, batch_size=8, isa="avx2", scheduler=addr)
    assert _report(split) == _report(here)


def test_cli_run_with_scheduler_prints_the_same_table(cluster, tmp_path, small_data):
    q = _quantized(tmp_path, small_data, scheme="per-channel", wbits=4)
    args = ["run", str(q), "--data", str(small_data[0]), "--batch-size", "8"]
    a = CliRunner().invoke(main, args)
    b = CliRunner().invoke(main, args + ["--scheduler", cluster[0].scheduler_address])
    assert a.exit_code == 0 and b.exit_code == 0, b.output

    def body(out):
        return [ln for ln in out.splitlines() if not ln.startswith(("speed ", "ran on "))]

    assert body(b.output) == body(a.output)
    assert "ran on the Dask cluster at" in b.output
