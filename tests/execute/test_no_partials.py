"""``hwsim run --no-partials`` (``run_program(partials=False)``): the partial sums' extremes are
not tracked; every other figure of the report is the full run's, and the report says so."""

from __future__ import annotations

import json

from click.testing import CliRunner

from hwsim import api
from hwsim.cli import main
from hwsim.data import Dataset, load_data
from hwsim.execute import run_float
from hwsim.graph import import_model
from hwsim.numerics.reference import signed_bits
from hwsim.quant import Scheme, quantize
from hwsim.quant.store import save

CHANGED = {"bits_needed", "max_abs_acc"}


def test_no_partials_changes_only_the_partial_sum_figures(tmp_path):
    digits = load_data("digits-train")
    program = quantize(
        import_model(api.resolve_model("rescnn")),
        Scheme.preset("per-tensor", acc_bits=16, overflow="saturate"),
        Dataset("c", digits.x[:64], None),
        float_run=run_float,
    )
    save(program, tmp_path / "q.onnx")
    reps = {}
    for flag in ("--partials", "--no-partials"):
        path = tmp_path / f"{flag}.json"
        r = CliRunner().invoke(
            main, ["run", str(tmp_path / "q.onnx"), "--data", "digits", flag, "--report", str(path)]
        )
        assert r.exit_code == 0, r.output
        reps[flag] = json.loads(path.read_text())
    full, fast = reps["--partials"], reps["--no-partials"]
    assert "partial sums not tracked" in r.output
    assert fast["settings"].get("partials") is False and "partials" not in full["settings"]
    for k in ("int_accuracy", "float_accuracy", "agreement", "totals"):
        assert fast[k] == full[k], k
    assert full["totals"]["overflow_events"] > 0  # the counts compared are not all zero
    tracked = 0
    for a, b in zip(full["layers"], fast["layers"], strict=True):
        assert {k: v for k, v in a.items() if k not in CHANGED | {"cycles", "energy_pj"}} == {
            k: v for k, v in b.items() if k not in CHANGED | {"cycles", "energy_pj"}
        }
        if a["bits_needed"] is not None:
            # the final sums' bits: at most what the partial sums need, and their magnitude's
            assert b["bits_needed"] <= a["bits_needed"]
            assert b["bits_needed"] == signed_bits(b["max_abs_acc"]) or b[
                "bits_needed"
            ] == signed_bits(-b["max_abs_acc"])
            tracked += 1
    assert tracked > 0


def test_no_partials_with_workers_is_refused(tmp_path):
    r = CliRunner().invoke(
        main, ["run", "x.onnx", "--data", "digits", "--no-partials", "--workers", "2"]
    )
    assert r.exit_code != 0
