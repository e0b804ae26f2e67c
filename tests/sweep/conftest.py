"""Shared inputs of the sweep tests: small data subsets (so a point takes a fraction of a
second), a spec writer, and one 2-worker Dask LocalCluster for the whole session, shut down
(and its worker processes checked gone) at the end."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from hwsim.data import load_data


@pytest.fixture(scope="session")
def small_data(tmp_path_factory):
    """``(data, calib)``: .npz paths of 48 test and 96 training digits."""
    d = tmp_path_factory.mktemp("sweepdata")
    out = []
    for name, n in (("digits", 48), ("digits-train", 96)):
        ds = load_data(name)
        p = d / f"{name}-{n}.npz"
        np.savez(p, x=ds.x[:n], y=ds.y[:n])
        out.append(p)
    return tuple(out)


@pytest.fixture
def write_spec(tmp_path, small_data):
    """``write_spec(axes_toml, extra_sweep_toml="", name="spec.toml") -> path``: a spec on
    the small data sets, the results folder ``tmp_path/<stem>-results``."""

    def write(axes: str, sweep: str = "", name: str = "spec.toml", model: str = '"rescnn"'):
        data, calib = small_data
        p = tmp_path / name
        p.write_text(
            f'[sweep]\nmodel = {model}\ndata = "{data}"\ncalib = "{calib}"\nbatch_size = 16\n'
            f"{sweep}\n[axes]\n{axes}\n"
        )
        return p

    return write


def _gone(pid: int, wait: float = 10.0) -> bool:
    t = time.monotonic() + wait
    while time.monotonic() < t:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="session")
def cluster():
    """``(cluster, client)``: a LocalCluster of 2 worker processes (hwsim.sweep's settings),
    closed at the end of the session; its worker processes must be gone then."""
    from hwsim.sweep import dask_client

    ctx = dask_client(workers=2)
    client = ctx.__enter__()
    pids = set()
    try:
        yield client.cluster, client
        pids = set(client.run(os.getpid).values())
    finally:
        ctx.__exit__(None, None, None)
    assert all(_gone(p) for p in pids), "worker processes left running"
