"""One run split by batch across Dask workers (``hwsim run --workers N``), merged exactly.

The data set is cut into shards of whole batches; each worker runs
:func:`hwsim.execute.paired.run_paired` on its shard (stochastic rounding's draws keep the
global sample index, ``first_sample``). The shards merge into one
:class:`~hwsim.execute.paired.PairedRun` equal to the run of the whole set in one process:

* SQNR sums: each shard's exact sums as floats whose exact sum they are
  (:meth:`hwsim.execute.sqnr.ExactSum.parts`), added exactly and rounded once -- the same
  ``math.fsum`` of every per-sample term the single run rounds;
* counters: sums (MACs, overflow events, clamps, operations), extremes (min / max of exact
  sums and gain errors, max of integer bits) -- :meth:`LayerStats.merge`;
* predictions and outputs: concatenated in sample order.

A program with onnxruntime's dynamic quantization depends on the batch, as onnxruntime does:
shards of whole batches keep its batches, so it merges exactly too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from hwsim.data import Dataset
from hwsim.execute.integer import STATS_MERGE, LayerStats  # noqa: F401 (STATS_MERGE: re-exported)
from hwsim.execute.paired import PairedRun
from hwsim.execute.sqnr import ExactSum


@dataclass
class ExecutorSummary:
    """What :func:`hwsim.report.run_program` reads of an integer executor: per-node
    statistics, the nodes run as float, the MAC layers under the ISA's pair rule, and whether
    onnxruntime's fused plan was used."""

    stats: dict
    float_ops: set = field(default_factory=set)
    isa_layers: set = field(default_factory=set)
    ort_plan: bool = False


def shard_bounds(n: int, batch_size: int, shards: int) -> list[tuple[int, int]]:
    """``[start, end)`` of at most ``shards`` contiguous shards of whole batches of ``n``
    samples (the last batch may be short), in order; at least one shard."""
    batches = max(1, -(-n // batch_size))
    per = -(-batches // max(1, min(shards, batches)))
    return [(b * batch_size, min(n, (b + per) * batch_size)) for b in range(0, batches, per)] or [
        (0, 0)
    ]


def run_shard(load_program, payload, start: int, end: int, isa, seed: int, collect: bool):
    """One shard ``[start, end)`` of ``payload.data`` on a worker (``isa``: a name or an
    :class:`~hwsim.datapath.isa.Isa`): the paired run with the executor's state reduced to an
    :class:`ExecutorSummary` (picklable)."""
    from hwsim.datapath.isa import resolve
    from hwsim.execute.paired import run_paired

    program = load_program(payload)
    ds = payload.data
    shard = Dataset(ds.name, ds.x[start:end], None if ds.y is None else ds.y[start:end],
                    ds.input_range)  # fmt: skip
    res = run_paired(
        program, shard, payload.batch_size, resolve(isa), seed=seed, collect_outputs=collect,
        first_sample=start,
    )  # fmt: skip
    ex = res.executor
    res.executor = ExecutorSummary(ex.stats, set(ex.float_ops), set(ex.isa_layers),
                                   bool(ex.ort_plan))  # fmt: skip
    return res


def merge_runs(parts: list[PairedRun]) -> PairedRun:
    """The shards' runs (in sample order) as one run (module docstring)."""
    first = parts[0]
    stats = {k: dataclasses.replace(v, counters=dataclasses.replace(v.counters), ops=dict(v.ops))
             for k, v in first.executor.stats.items()}  # fmt: skip
    ex = ExecutorSummary(stats, set(first.executor.float_ops), set(first.executor.isa_layers),
                         first.executor.ort_plan)  # fmt: skip
    for p in parts[1:]:
        for k, v in p.executor.stats.items():
            ex.stats[k].merge(v)
        ex.float_ops |= p.executor.float_ops
        ex.isa_layers |= p.executor.isa_layers
        ex.ort_plan = ex.ort_plan or p.executor.ort_plan
    sums: dict[str, dict[str, float]] = {}
    for kind in ("signal", "noise", "noise_exact"):
        acc: dict[str, ExactSum] = {}
        for p in parts:
            for name, floats in p.parts.get(kind, {}).items():
                acc.setdefault(name, ExactSum()).add(np.asarray(floats, np.float64))
        sums[kind] = {k: s.value() for k, s in acc.items()}
    notes = list(dict.fromkeys(n for p in parts for n in p.notes))
    outs = [p.outputs for p in parts]
    return PairedRun(
        ex,
        np.concatenate([p.int_pred for p in parts]),
        np.concatenate([p.float_pred for p in parts]),
        None if any(o is None for o in outs) else np.concatenate(outs),
        sums["signal"],
        sums["noise"],
        sums["noise_exact"],
        notes,
    )


def run_split(load_program, payload, isa, seed: int, collect: bool, client) -> PairedRun:
    """The paired run of ``payload.data`` split across ``client``'s workers (one shard of whole
    batches per worker; ``payload`` scattered once) and merged (:func:`merge_runs`)."""
    n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    bounds = shard_bounds(len(payload.data), payload.batch_size, n_workers)
    shared = client.scatter(payload, broadcast=True, hash=False)
    futs = [
        client.submit(run_shard, load_program, shared, a, b, isa, seed, collect, pure=False)
        for a, b in bounds
    ]
    return merge_runs(client.gather(futs))
