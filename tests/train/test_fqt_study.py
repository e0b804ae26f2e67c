"""``hwsim study fqt`` (hwsim.study.fqt): a quick configuration end to end through the CLI, the
reuse of finished runs, a diverging run recorded as such, and the flags' usage errors.

Needs the optional torch extra (torch==2.13.0); a missing torch is a failure, not a skip.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch  # noqa: F401  (in the test extra: a missing torch is a failure, not a skip)
from click.testing import CliRunner

from hwsim import api
from hwsim.cli import main
from hwsim.errors import HwsimError
from hwsim.study import fqt_tasks

#: A quick configuration: both tasks, one epoch, two quantizers at 4 bits, S_max 0 and 4.
QUICK = ["study", "fqt", "--quick", "--epochs", "1", "--quantizers", "ptq,psq-shift",
         "--grad-bits", "4", "--s-max-sweep", "0"]  # fmt: skip
CONFIGS = ["exact", "qat", "ptq-b4", "psq-shift-b4-s4", "psq-shift-b4-s0"]


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fqt")
    args = QUICK + ["--workdir", str(tmp / "w"), "--report", str(tmp / "r.json"),
                    "--plot", str(tmp / "plots")]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    return tmp, args, r.output


def test_quick_study_runs_end_to_end(quick_study):
    tmp, _, out = quick_study
    doc = json.loads((tmp / "r.json").read_text())
    assert doc["study"] == "fqt" and doc["tasks"] == ["cnn", "transformer"]
    files = sorted(p.name for p in (tmp / "w" / "runs").iterdir())
    want = [f"{t}-{c}-seed0.json" for t in ("cnn", "transformer") for c in CONFIGS]
    want += ["cnn-variance-seed0.json", "transformer-variance-seed0.json"]
    assert files == sorted(want)
    run = json.loads((tmp / "w" / "runs" / "transformer-psq-shift-b4-s0-seed0.json").read_text())
    assert run["status"] == "ok" and run["config"]["s_max"] == 0 and run["config"]["bits"] == 4
    assert set(run["metrics"]) == {"exact match", "token accuracy"}
    for t in ("cnn", "transformer"):
        s = doc["summary"][t]
        assert s["qat"]["n"] == 1 and s["grid"]["ptq"]["4"]["n"] == 1
        assert set(s["s_max"]["4"]) == {"0"}  # the sweep as asked (S_max 4 is in the grid)
        v = doc["variance"][t]
        # stochastic rounding: a positive variance for every quantizer measured
        assert all(v["weight"][k] > 0 for k in ("ptq-4", "psq-shift-4"))
        assert all(v["output"][k] > 0 for k in ("ptq-4", "psq-shift-4"))
    assert {p.name for p in (tmp / "plots").iterdir()} == {
        "accuracy_vs_bits.png", "variance_vs_bits.png", "s_max_sweep.png"
    }  # fmt: skip
    # the table: the BLEU-table rows with the paper's figures beside them, the S_max sweep
    for text in ("Exact", "QAT", "PTQ", "PSQ-shift (S_max 4)", "34.55", "34.33 / 0.02",
                 "within 1 point of QAT", "S_max sweep", "gradient variance"):  # fmt: skip
        assert text in out, text
    assert api.study_fqt_table(doc) in out


def test_rerun_reuses_finished_runs(quick_study, monkeypatch):
    tmp, args, _ = quick_study
    runs = tmp / "w" / "runs"
    before = {p.name: p.stat().st_mtime_ns for p in runs.iterdir()}

    def no(*a, **k):
        raise AssertionError("a finished run was retrained")

    monkeypatch.setattr(fqt_tasks, "train_run", no)
    monkeypatch.setattr(fqt_tasks, "variance", no)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert r.output.count("reused") == len(before)
    assert {p.name: p.stat().st_mtime_ns for p in runs.iterdir()} == before


def test_a_diverging_run_is_recorded_and_shown(tmp_path, monkeypatch):
    real = fqt_tasks.train_run

    def ptq_explodes(task, td, mode, grad, seed, epochs, lr, log=None):
        if grad is not None and grad.kind == "ptq":
            lr = 1e30  # the weights overflow: a non-finite loss
        return real(task, td, mode, grad, seed, epochs, lr, log)

    monkeypatch.setattr(fqt_tasks, "train_run", ptq_explodes)
    args = ["study", "fqt", "--quick", "--task", "cnn", "--epochs", "1", "--quantizers", "ptq",
            "--grad-bits", "4", "--s-max-sweep", "4", "--no-variance",
            "--workdir", str(tmp_path / "w"), "--report", str(tmp_path / "r.json")]  # fmt: skip
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "w" / "runs" / "cnn-ptq-b4-seed0.json").read_text())
    assert run["status"] == "diverged" and run["metrics"] is None and "diverged" in run["error"]
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["summary"]["cnn"]["grid"]["ptq"]["4"] == {
        "mean": None, "std": None, "n": 0, "diverged": 1
    }  # fmt: skip
    assert doc["summary"]["cnn"]["within"]["ptq"] is None
    row = next(line for line in r.output.splitlines() if line.startswith("PTQ "))
    assert "diverged" in row
    assert "[cnn ptq-b4 seed 0] DIVERGED" in r.output
    # the diverged run is a result: reused on rerun like the others
    monkeypatch.setattr(fqt_tasks, "train_run", lambda *a, **k: pytest.fail("retrained"))
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0 and "[cnn ptq-b4 seed 0] reused" in r.output


@pytest.mark.parametrize(
    "flag, value, allowed",
    [
        ("--grad-bits", "9", "[2, 8]"),
        ("--grad-bits", "1", "[2, 8]"),
        ("--grad-bits", "4,x", "[2, 8]"),
        ("--s-max-sweep", "0,9", "[0, 8]"),
        ("--s-max-sweep", "-1", "[0, 8]"),
        ("--s-max-bits", "12", "[2, 8]"),
        ("--quantizers", "ptq,bogus", "ptq, psq, bhq, psq-shift"),
        ("--task", "rnn", "cnn"),
    ],
)
def test_invalid_flags_are_usage_errors_naming_the_flag(tmp_path, flag, value, allowed):
    r = CliRunner().invoke(main, ["study", "fqt", flag, value, "--workdir", str(tmp_path / "w")])
    assert r.exit_code == 2, r.output
    assert f"'{flag}'" in r.output and allowed in r.output
    assert not (tmp_path / "w" / "runs").exists()  # nothing ran


def test_api_checks_settings_and_outputs_before_any_work(tmp_path, monkeypatch):
    for kw, flag in [
        ({"grad_bits": (9,)}, "--grad-bits"),
        ({"s_max_sweep": (0, 10)}, "--s-max-sweep"),
        ({"quantizers": ("ptq", "nope")}, "--quantizers"),
        ({"data": "digits-train"}, "--data"),
        ({"task": "rnn"}, "--task"),
    ]:
        with pytest.raises(HwsimError, match=flag):
            api.study_fqt(workdir=tmp_path / "w", **kw)
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    with pytest.raises(HwsimError, match="report"):
        api.study_fqt(workdir=tmp_path / "w", report=blocker / "r.json")
    with pytest.raises(HwsimError, match="plot_dir"):
        api.study_fqt(workdir=tmp_path / "w", plot_dir=blocker / "p")
    assert not (tmp_path / "w").exists()
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as without it
    with pytest.raises(HwsimError, match=r"hwsim study fqt needs PyTorch.*\.\[train\]"):
        api.study_fqt(workdir=tmp_path / "w")


@pytest.mark.parametrize("opt", ["--report", "--workdir", "--plot"])
def test_bad_output_path_is_a_usage_error_before_the_run(tmp_path, opt):
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    bad = str(blocker / "sub" / "out")
    r = CliRunner().invoke(main, ["study", "fqt", "--quick", opt, bad])
    assert r.exit_code == 2 and f"'{opt}'" in r.output and str(blocker) in r.output
    assert "[cnn" not in r.output  # nothing ran
