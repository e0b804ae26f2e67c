"""A quantized program and its float reference run side by side over a data set, streamed: what
``hwsim run`` measures (:func:`hwsim.report.run_program` builds the report from it).

Per batch: the float reference computes every tensor the report compares (through onnxruntime,
:class:`hwsim.execute.float_ort.OrtFloat`; ``run_float`` where the graph has an op without an
onnxruntime form), then the integer executor runs with ``keep_all=False`` and hands each node's
output to a callback as it is computed (``IntegerExecutor.run(visit=...)``), which adds the
node's per-sample SQNR sums (:func:`hwsim.execute.sqnr.sample_square_sums`) to exact totals
(:class:`hwsim.execute.sqnr.ExactSum`) and drops the float tensor once no later node compares
against it. So an integer tensor lives until its last reader, a float tensor until its last
comparison, and the statistics are the same whatever the batch size (sample by sample, then
exact over samples; the onnxruntime reference is batch- and thread-independent, measured in
``tests/execute/test_float_ort.py``).

Memory: a batch runs in sub-batches of at most :func:`sub_batch_size` samples, so that the
float tensors the reference returns at once (:func:`compared_bytes_per_sample`) stay within
:data:`FLOAT_BUDGET_BYTES`. A sub-batch changes no number (every result is per sample), except
in a program with a layer of onnxruntime's dynamic quantization, whose input range spans the
whole batch (docs/networks.md): that program runs in the batches asked for.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from hwsim.execute.float import run_float
from hwsim.execute.float_ort import OrtFloat, unsupported
from hwsim.execute.integer import IntegerExecutor
from hwsim.execute.sqnr import ExactSum, sample_square_sums
from hwsim.execute.tensors import QTensor
from hwsim.graph.ir import MAC_OPS, Graph
from hwsim.graph.shapes import infer_shapes

FLOAT_BUDGET_BYTES = 1 << 30
"""The most bytes of float reference tensors one sub-batch may hold at once."""


def compare_targets(program) -> dict[str, str]:
    """Node output -> the float tensor its integer value is compared with: the output itself,
    or for a layer whose ReLU / Clip is fused into its requantization (same quantization as
    the activation's output), the activation's output. Every quantized node output and every
    MAC layer's output is listed."""
    from hwsim.quant.quantize import fused_targets

    g = program.graph
    fused = {
        src: dst
        for src, dst in fused_targets(g).items()
        if src in program.acts and program.acts.get(dst) == program.acts[src]
    }
    return {
        n.output: fused.get(n.output, n.output)
        for n in g.nodes
        if n.output in program.acts or n.op in MAC_OPS
    }


def compared_bytes_per_sample(graph: Graph, tensors) -> int:
    """Bytes of the float32 tensors ``tensors`` for one sample."""
    shapes = infer_shapes(graph, 1)
    return sum(4 * int(np.prod(shapes[t], dtype=np.int64)) for t in set(tensors))


def sub_batch_size(graph: Graph, tensors, budget: int) -> int:
    """The most samples whose float tensors ``tensors`` fit in ``budget`` bytes (at least 1)."""
    return max(1, budget // max(1, compared_bytes_per_sample(graph, tensors)))


def float_reference(graph: Graph, tensors: list[str]) -> tuple[Callable, str | None]:
    """``(run, note)``: ``run(x) -> {tensor: float32 array}`` computing ``tensors`` (a dict that
    may hold more), through onnxruntime; where the graph has an op without an onnxruntime form,
    :func:`run_float` and a note saying so."""
    why = unsupported(graph)
    if why is None:
        return OrtFloat(graph, tensors).run, None
    return (
        lambda x: run_float(graph, x),
        f"float reference by hwsim's numpy executor (run_float), not onnxruntime ({why}): "
        "its float32 sums depend slightly on the batch size",
    )


@dataclass
class PairedRun:
    """The outcome of :func:`run_paired`: per-sample argmax of the integer and float outputs,
    the integer outputs if collected, the exact SQNR totals per node output (``signal`` and
    ``noise``; ``noise_exact``: an exact executor's, under another ``isa``), the executors
    (for their per-layer statistics) and the report's notes."""

    executor: IntegerExecutor
    int_pred: np.ndarray
    float_pred: np.ndarray
    outputs: np.ndarray | None
    signal: dict[str, float] = field(default_factory=dict)
    noise: dict[str, float] = field(default_factory=dict)
    noise_exact: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    parts: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    """``{"signal" | "noise" | "noise_exact": {tensor: floats}}``: the exact sums as
    :meth:`hwsim.execute.sqnr.ExactSum.parts`, so runs over disjoint samples merge exactly."""


class _Totals:
    """Exact totals per tensor name."""

    def __init__(self):
        self.sums: dict[str, ExactSum] = {}

    def add(self, name: str, values: np.ndarray) -> None:
        self.sums.setdefault(name, ExactSum()).add(values)

    def values(self) -> dict[str, float]:
        return {k: s.value() for k, s in self.sums.items()}

    def parts(self) -> dict[str, list[float]]:
        return {k: s.parts() for k, s in self.sums.items()}


class _Comparison:
    """The float tensors of one sub-batch ``xs`` and the integer runs' comparisons with them:
    each float tensor is dropped after its last comparison (``passes`` integer runs)."""

    def __init__(self, fenv: dict, graph: Graph, xs, targets: dict, uses: Counter, passes: int):
        self.fenv, self.g, self.xs, self.targets = fenv, graph, xs, targets
        self.left = {t: passes * c for t, c in uses.items()}
        self.spare: dict = {}
        self.missed: set[str] = set()

    def visitor(self, noise: _Totals, signal: _Totals | None):
        """``visit(node, value)`` for ``IntegerExecutor.run``: a quantized output's per-sample
        sums added to ``noise`` (and ``signal``)."""

        def visit(n, v) -> None:
            t = self.targets.get(n.output, n.output)
            if isinstance(v, QTensor):
                ss, se = sample_square_sums(self.float_tensor(t), v)
                if signal is not None:
                    signal.add(n.output, ss)
                noise.add(n.output, se)
            if n.output in self.targets:
                self.left[t] -= 1
                if self.left[t] == 0 and t != self.g.output:
                    self.fenv.pop(t, None)

        return visit

    def float_tensor(self, t: str) -> np.ndarray:
        f = self.fenv.get(t)
        if f is not None:
            return f
        self.missed.add(t)  # a comparison compare_targets did not foresee: run_float's value
        if not self.spare:
            self.spare.update(run_float(self.g, self.xs))
        return self.spare[t]


def run_paired(
    program,
    ds,
    batch_size: int,
    isa,
    seed: int = 0,
    collect_outputs: bool = False,
    on_batch: Callable[[int], None] | None = None,
    budget: int | None = None,
    first_sample: int = 0,
    partials: bool = True,
) -> PairedRun:
    """Run ``program`` (a :class:`~hwsim.quant.QuantProgram`) and its float reference on the
    :class:`~hwsim.data.Dataset` ``ds`` in batches of ``batch_size``, each in sub-batches within
    ``budget`` bytes of float tensors (default :data:`FLOAT_BUDGET_BYTES`; module docstring).
    ``isa``: a resolved :class:`~hwsim.datapath.isa.Isa`; other than ``exact``, an exact
    executor runs alongside and ``noise_exact`` holds its SQNR noise. ``on_batch(n)`` is called
    after each ``n`` samples. ``first_sample``: the index of ``ds``'s first sample in a larger
    data set split across runs (stochastic rounding's draws follow the global sample index).
    ``partials=False``: the partial sums' extremes are not tracked (the counters' extremes are
    the final sums'; every other figure is the same)."""
    from hwsim.datapath.isa import Isa

    g = program.graph
    ex = IntegerExecutor(program, track_partials=partials, isa=isa, seed=seed)
    ex_exact = IntegerExecutor(program, isa=Isa.EXACT, seed=seed) if isa is not Isa.EXACT else None
    for e in (ex, ex_exact):
        if e is not None:
            e.samples_seen = first_sample
    targets = compare_targets(program)
    wanted = list(dict.fromkeys([*targets.values(), g.output]))
    run_ref, note = float_reference(g, wanted)
    batch_dependent = any(n.attrs.get("ort_dynamic") for n in g.nodes)
    budget = FLOAT_BUDGET_BYTES if budget is None else budget
    step = batch_size if batch_dependent else min(batch_size, sub_batch_size(g, wanted, budget))
    signal, noise, noise_exact = _Totals(), _Totals(), _Totals()
    int_pred, float_pred, outs = [], [], []
    uses = Counter(targets.values())
    missed: set[str] = set()
    for _, xb in ds.batches(batch_size):
        for i in range(0, len(xb), step):
            xs = xb[i : i + step]
            fenv = run_ref(xs)
            float_pred.append(np.argmax(fenv[g.output].reshape(len(xs), -1), axis=1))
            c = _Comparison(fenv, g, xs, targets, uses, 2 if ex_exact is not None else 1)
            del fenv
            env = ex.run(xs, keep_all=False, visit=c.visitor(noise, signal))
            if ex_exact is not None:
                ex_exact.run(xs, keep_all=False, visit=c.visitor(noise_exact, None))
            y = ex.output(env)
            int_pred.append(np.argmax(y.reshape(len(y), -1), axis=1))
            if collect_outputs:
                outs.append(y)
            missed |= c.missed
            del env, c
        if on_batch is not None:
            on_batch(len(xb))
    res = PairedRun(
        ex,
        np.concatenate(int_pred),
        np.concatenate(float_pred),
        np.concatenate(outs) if collect_outputs else None,
        signal.values(),
        noise.values(),
        noise_exact.values(),
        parts={
            "signal": signal.parts(),
            "noise": noise.parts(),
            "noise_exact": noise_exact.parts(),
        },
    )
    if note:
        res.notes.append(note)
    if missed:
        res.notes.append(
            "float reference of " + ", ".join(sorted(missed)) + " by run_float (numpy), "
            "not onnxruntime: its float32 sums depend slightly on the batch size"
        )
    return res
