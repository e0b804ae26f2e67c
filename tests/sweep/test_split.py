"""A run split into shards of whole batches and merged (hwsim.sweep.split) equals the run in
one piece, report for report, whatever the number of shards (no Dask: the shards run here)."""

from __future__ import annotations

import dataclasses
import functools

from hypothesis import given
from hypothesis import strategies as st

from hwsim import api
from hwsim.data import load_data
from hwsim.execute.integer import LayerStats
from hwsim.report import run_program
from hwsim.sweep import Payload
from hwsim.sweep.split import STATS_MERGE, merge_runs, run_shard, shard_bounds

TIMINGS = ("seconds", "samples_per_s", "macs_per_s")


def test_every_layer_statistic_has_a_merge_rule():
    assert set(STATS_MERGE) == {f.name for f in dataclasses.fields(LayerStats)}


@given(st.integers(0, 300), st.integers(1, 64), st.integers(1, 9))
def test_shards_are_contiguous_whole_batches(n, batch, shards):
    b = shard_bounds(n, batch, shards)
    assert b[0][0] == 0 and b[-1][1] == n and len(b) <= max(1, shards)
    assert all(x[1] == y[0] for x, y in zip(b, b[1:], strict=False))
    assert all(a % batch == 0 and (e == n or e % batch == 0) for a, e in b)


def test_merged_shards_equal_the_whole_run(tmp_path):
    calib = load_data("digits-train")
    q = tmp_path / "q.onnx"
    api.quantize_model("rescnn", "per-sample-shift", calib=calib, out=q, acc_bits=15,
                       overflow="wrap", register="pow2", rounding="stochastic")  # fmt: skip
    program = api.load_quantized(q)
    ds = api.load_data("digits", program.graph.input_shape)
    ds = dataclasses.replace(ds, x=ds.x[:100], y=ds.y[:100])
    whole, outs = run_program(program, ds, 16, collect_outputs=True, seed=7)
    want = {k: v for k, v in whole.as_dict().items() if k not in TIMINGS}
    payload = Payload.build({"model": q}, ds, None, 16)
    load = functools.partial(api._shard_program, tflite_kernels=None)
    for shards in (1, 2, 3, 7):
        parts = [run_shard(load, payload, a, b, "exact", 7, True)
                 for a, b in shard_bounds(len(ds), 16, shards)]  # fmt: skip
        rep, o = run_program(program, ds, 16, collect_outputs=True, seed=7,
                             paired=merge_runs(parts))  # fmt: skip
        assert {k: v for k, v in rep.as_dict().items() if k not in TIMINGS} == want
        assert (o == outs).all()
