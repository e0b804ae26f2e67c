"""The CLI end to end on the shipped models, and its bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim.cli import main
from hwsim.data import load_data


@pytest.fixture(scope="module")
def runner():
    return CliRunner()


@pytest.fixture(scope="module")
def qmodel(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "rescnn_w8a8.onnx"
    r = CliRunner().invoke(
        main,
        [
            "quantize",
            "models/rescnn.onnx",
            "--scheme",
            "per-channel",
            "--wbits",
            "8",
            "--abits",
            "8",
            "--calib",
            "digits-train",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    return out


def test_models_lists_shipped(runner):
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 0
    assert "rescnn" in r.output and "mlp" in r.output


def test_run_report_and_outputs(runner, qmodel, tmp_path):
    rep, outs = tmp_path / "r.json", tmp_path / "o.npz"
    r = runner.invoke(
        main,
        ["run", str(qmodel), "--data", "digits", "--report", str(rep), "--save-outputs", str(outs)],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    assert doc["samples"] == 599 and doc["int_accuracy"] > 0.95
    assert doc["agreement"] > 0.97
    convs = [row for row in doc["layers"] if row["op"] == "conv"]
    assert len(convs) == 4 and all(row["macs"] > 0 for row in convs)
    assert all(row["bits_needed"] <= 32 for row in convs)
    assert all(isinstance(row["sqnr_db"], float) and row["sqnr_db"] > 20 for row in convs)
    with np.load(outs) as f:
        assert f.files == ["logits"]
        assert f["logits"].shape == (599, 10) and f["logits"].dtype == np.float32
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npz", "r.json"]


def test_run_wrong_shape_names_both(runner, qmodel, tmp_path):
    f = tmp_path / "bad.npz"
    np.savez(f, x=np.zeros((4, 1, 7, 7), np.float32))
    r = runner.invoke(main, ["run", str(qmodel), "--data", str(f)])
    assert r.exit_code == 1
    assert "bad.npz" in r.output and "(1, 7, 7)" in r.output and "(1, 8, 8)" in r.output


def test_run_nan_data(runner, qmodel, tmp_path):
    x = load_data("digits").x[:5].copy()
    x[3, 0, 2, 2] = np.nan
    f = tmp_path / "nan.npz"
    np.savez(f, x=x)
    r = runner.invoke(main, ["run", str(qmodel), "--data", str(f)])
    assert r.exit_code == 1 and "NaN/inf" in r.output and "sample 3" in r.output


def test_run_without_labels_notes_it(runner, qmodel, tmp_path):
    f = tmp_path / "nolabels.npz"
    np.savez(f, x=load_data("digits").x[:20])
    rep = tmp_path / "r.json"
    r = runner.invoke(main, ["run", str(qmodel), "--data", str(f), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    assert doc["int_accuracy"] is None and doc["agreement"] is not None
    assert any("no labels" in n for n in doc["notes"])


def test_report_not_written_on_error(runner, tmp_path):
    rep = tmp_path / "r.json"
    r = runner.invoke(main, ["run", "models/rescnn.onnx", "--data", "digits", "--report", str(rep)])
    assert r.exit_code == 1 and "float model" in r.output
    assert not rep.exists() and list(tmp_path.iterdir()) == []


def test_bad_bits_and_unknown_data(runner, tmp_path):
    r = runner.invoke(
        main, ["quantize", "models/mlp.onnx", "--wbits", "17", "-o", str(tmp_path / "q.onnx")]
    )
    assert r.exit_code == 2 and "17" in r.output
    r = runner.invoke(
        main,
        ["quantize", "models/mlp.onnx", "--calib", "nosuchdata", "-o", str(tmp_path / "q.onnx")],
    )
    assert r.exit_code == 1 and "unknown data set 'nosuchdata'" in r.output
    r = runner.invoke(main, ["quantize", "models/mlp.onnx", "-o", str(tmp_path / "q.onnx")])
    assert r.exit_code == 1 and "needs calibration data" in r.output
    r = runner.invoke(
        main,
        [
            "quantize",
            "models/mlp.onnx",
            "--register",
            "tflite",
            "--acc-bits",
            "40",
            "--calib",
            "digits",
            "-o",
            str(tmp_path / "q.onnx"),
        ],
    )
    assert r.exit_code == 1 and "acc_bits must be <= 32" in r.output
    assert list(tmp_path.iterdir()) == []


def test_truncated_model_cli(runner, tmp_path):
    f = tmp_path / "cut.onnx"
    f.write_bytes(open("models/rescnn.onnx", "rb").read()[:5000])
    r = runner.invoke(main, ["run", str(f), "--data", "digits"])
    assert r.exit_code == 1 and "cut.onnx" in r.output and "Traceback" not in r.output


def test_compare_sweep_json_and_plot(runner, tmp_path):
    js, png = tmp_path / "c.json", tmp_path / "c.png"
    r = runner.invoke(
        main,
        [
            "compare",
            "models/mlp.onnx",
            "--data",
            "digits",
            "--calib",
            "digits-train",
            "--schemes",
            "per-tensor,per-sample",
            "--wbits",
            "8,4",
            "--abits",
            "8",
            "--json",
            str(js),
            "--plot",
            str(png),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    assert [(x["scheme"], x["wbits"]) for x in rows] == [
        ("per-tensor", 8),
        ("per-tensor", 4),
        ("per-sample", 8),
        ("per-sample", 4),
    ]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_free_needs_no_data(runner, tmp_path):
    out = tmp_path / "df.onnx"
    r = runner.invoke(
        main,
        [
            "quantize",
            "models/rescnn.onnx",
            "--scheme",
            "data-free",
            "--input-range",
            "0,1",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["run", str(out), "--data", "digits"])
    assert r.exit_code == 0, r.output


def test_per_layer_overrides(runner, tmp_path):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    r = runner.invoke(
        main,
        [
            "quantize",
            "models/rescnn.onnx",
            "--calib",
            "digits-train",
            "--wbits",
            "4",
            "--layer",
            "/0/Conv:wbits=8,acc_bits=24",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["run", str(out), "--data", "digits", "--report", str(rep)])
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    assert doc["settings"]["layers"]["/0/Conv"]["acc_bits"] == 24
    assert doc["settings"]["layers"]["/4/Conv"]["acc_bits"] == 32
    from hwsim.quant.store import load

    widths = {n.name: n.wq.fmt.bits for n in load(out).graph.nodes if n.wq is not None}
    assert widths["/0/Conv"] == 8 and widths["/4/Conv"] == 4
    r = runner.invoke(
        main,
        [
            "quantize",
            "models/rescnn.onnx",
            "--calib",
            "digits-train",
            "--layer",
            "/0/Conv:wbit=8",
            "-o",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert r.exit_code == 1 and "unknown field" in r.output and "wbits" in r.output
    r = runner.invoke(
        main,
        [
            "quantize",
            "models/rescnn.onnx",
            "--calib",
            "digits-train",
            "--layer",
            "nolayer:wbits=8",
            "-o",
            str(tmp_path / "x.onnx"),
        ],
    )
    assert r.exit_code == 1 and "unknown layer 'nolayer'" in r.output
