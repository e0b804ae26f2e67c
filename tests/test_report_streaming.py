"""``hwsim run``'s report (``hwsim.report.run_program`` over ``hwsim.execute.paired``): the same
JSON whatever the batch size or the sub-batches a memory budget cuts, under both ISAs; its SQNR
against an independent computation (``run_float``, the integer executor keeping every tensor,
exact rational sums); the fallback to ``run_float`` with its note; a dynamically quantized
program runs in the batches asked for."""

from __future__ import annotations

import json
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from hwsim import api
from hwsim.data import Dataset, load_data
from hwsim.execute import IntegerExecutor, QTensor, float_ort, paired, run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Op
from hwsim.quant import Scheme, quantize
from hwsim.report import run_program

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ("seconds", "samples_per_s", "macs_per_s")


def _json(rep) -> str:
    d = rep.as_dict()
    for k in TIMINGS:
        d.pop(k)
    return json.dumps(d, sort_keys=True)


@pytest.fixture(scope="module")
def digits():
    d = load_data("digits")
    return Dataset("digits140", d.x[:140], d.y[:140])


@pytest.fixture(scope="module")
def digits70(digits):
    return Dataset("digits70", digits.x[:70], digits.y[:70])


@pytest.fixture(scope="module")
def programs():
    calib = load_data("digits-train")
    out = {}
    for model, preset in (("rescnn", "per-sample"), ("rescnn", "per-tensor"), ("vit", "per-token")):
        g = import_model(ROOT / "models" / f"{model}.onnx")
        out[(model, preset)] = quantize(g, Scheme.preset(preset), calib, float_run=run_float)
    return out


@pytest.mark.parametrize(
    "key,isa",
    [
        (("rescnn", "per-sample"), "exact"),
        (("rescnn", "per-tensor"), "avx2"),
        (("vit", "per-token"), "exact"),
    ],
)
def test_report_is_the_same_for_batch_sizes_1_7_64(programs, digits70, key, isa):
    reports = [_json(run_program(programs[key], digits70, b, isa=isa)[0]) for b in (64, 7, 1)]
    assert reports[0] == reports[1] == reports[2]
    layers = json.loads(reports[0])["layers"]
    assert any(r["sqnr_db"] is not None for r in layers)
    if isa == "avx2":
        assert any(r["sqnr_exact_db"] is not None for r in layers)


def test_sub_batches_of_a_memory_budget_change_no_number(programs, digits, monkeypatch):
    """A budget of one sample's float tensors: every batch of 64 runs sample by sample."""
    prog = programs[("rescnn", "per-sample")]
    whole = _json(run_program(prog, digits, 64)[0])
    sizes = []
    run = float_ort.OrtFloat.run

    def spy(self, x):
        sizes.append(len(x))
        return run(self, x)

    monkeypatch.setattr(float_ort.OrtFloat, "run", spy)
    targets = paired.compare_targets(prog)
    tensors = [*targets.values(), prog.graph.output]
    per_sample = paired.compared_bytes_per_sample(prog.graph, tensors)
    monkeypatch.setattr(paired, "FLOAT_BUDGET_BYTES", per_sample)
    assert _json(run_program(prog, digits, 64)[0]) == whole
    assert set(sizes) == {1} and len(sizes) == len(digits)
    sizes.clear()
    monkeypatch.setattr(paired, "FLOAT_BUDGET_BYTES", 5 * per_sample + 3)
    assert _json(run_program(prog, digits, 64)[0]) == whole
    assert max(sizes) == 5


def _exact(values) -> Fraction:
    return sum((Fraction(v) for v in values), Fraction(0))


def test_sqnr_equals_an_independent_computation(programs, digits):
    """Each quantized tensor's SQNR from ``run_float`` and the integer executor keeping every
    tensor, summed exactly in rationals: within 1e-3 dB (the two float references differ by
    float32 rounding: onnxruntime's summation order against numpy's)."""
    prog = programs[("rescnn", "per-sample")]
    rep, _ = run_program(prog, digits, 50)
    targets = paired.compare_targets(prog)
    sig: dict = {}
    noise: dict = {}
    ex = IntegerExecutor(prog)
    for _, xb in digits.batches(50):
        env, fenv = ex.run(xb, keep_all=True), run_float(prog.graph, xb)
        for t, v in env.items():
            if isinstance(v, QTensor) and t in targets:
                f = fenv[targets[t]].astype(np.float64).ravel()
                d = v.dequantize().astype(np.float64).ravel()
                sig[t] = sig.get(t, 0) + _exact((f * f).tolist())
                noise[t] = noise.get(t, 0) + _exact(((f - d) ** 2).tolist())
    rows = {r.output: r for r in rep.layers}
    assert sig
    for t in sig:
        want = 10 * math.log10(sig[t] / noise[t]) if noise[t] else math.inf
        got = rows[t].sqnr_db
        assert got == want or abs(got - want) <= 1e-3, (t, got, want)


def test_a_graph_without_an_onnxruntime_form_runs_run_float_with_a_note(
    programs, digits, monkeypatch
):
    prog = programs[("rescnn", "per-tensor")]
    ort_rep, _ = run_program(prog, digits, 64)
    monkeypatch.delitem(float_ort.ORT_WRITERS, Op.ADD)
    rep, _ = run_program(prog, digits, 64)
    assert any("run_float" in n and "op(s) add" in n for n in rep.notes), rep.notes
    assert not any("run_float" in n for n in ort_rep.notes)
    for a, b in zip(rep.layers, ort_rep.layers, strict=True):
        assert (a.sqnr_db is None) == (b.sqnr_db is None)
        if a.sqnr_db is not None and math.isfinite(a.sqnr_db):
            assert abs(a.sqnr_db - b.sqnr_db) <= 1e-3
    assert rep.agreement == ort_rep.agreement


def test_a_dynamically_quantized_program_runs_in_the_batches_asked_for(
    tmp_path, digits, monkeypatch
):
    """onnxruntime's dynamic quantization takes one range over the whole batch: no sub-batch
    may split it, whatever the budget."""
    sys.path.insert(0, str(ROOT / "tests" / "conformance"))
    import archs

    path = archs.quantize_dynamic(api.resolve_model("mlp"), tmp_path / "mlp_dyn.onnx", True)
    prog = api.load_quantized(path)
    assert any(n.attrs.get("ort_dynamic") for n in prog.graph.nodes)
    sizes = []
    run = float_ort.OrtFloat.run

    def spy(self, x):
        sizes.append(len(x))
        return run(self, x)

    monkeypatch.setattr(float_ort.OrtFloat, "run", spy)
    monkeypatch.setattr(paired, "FLOAT_BUDGET_BYTES", 1)
    run_program(prog, digits, 64)
    assert sizes == [64, 64, 12]
