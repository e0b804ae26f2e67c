"""The CLI end to end on the shipped models, and its bad-input errors."""

from __future__ import annotations

import json
import sys

import click
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
    # the throughput line (issue 16): samples/s and MAC/s of the run, in the JSON too
    assert "samples/s" in r.output and "M MAC/s" in r.output
    assert doc["seconds"] > 0
    # the JSON's seconds are rounded to 1 ms: the rates lie within what that rounding allows
    lo, hi = doc["seconds"] - 5e-4, doc["seconds"] + 5e-4
    assert 599 / hi - 0.1 <= doc["samples_per_s"] <= 599 / max(lo, 1e-9) + 0.1
    assert doc["totals"]["macs"] / hi - 1 <= doc["macs_per_s"] <= doc["totals"]["macs"] / lo + 1
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


# --------------------------------------------------------------------------------------------
# Integer model inputs: single-op QOperator models fed uint8 data, outputs keep their dtype
# --------------------------------------------------------------------------------------------
def _single_op_model(path, op: str, n: int = 3):
    """A one-node ONNX model with a uint8 graph input 'x' (symbolic batch 'N'); returns
    (path, x uint8, numpy reference output or None). Values are kept small (x <= 100,
    |w| <= 50) so no u8*s8 pair sum nears int16: the result is the same on every ISA."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(7)
    ini, ref = [], None

    def c(name, a):
        ini.append(numpy_helper.from_array(np.asarray(a), name))
        return name

    if op in ("MatMulInteger", "QLinearMatMul"):
        x = rng.integers(0, 101, (n, 16)).astype(np.uint8)
        w = rng.integers(-50, 51, (16, 6)).astype(np.int8)
        xshape = ["N", 16]
    else:
        x = rng.integers(0, 101, (n, 3, 6, 6)).astype(np.uint8)
        w = rng.integers(-50, 51, (4, 3, 3, 3)).astype(np.int8)
        xshape = ["N", 3, 6, 6]
    if op == "MatMulInteger":
        node = helper.make_node(op, ["x", c("w", w), c("xz", np.uint8(7))], ["y"])
        out_t = TensorProto.INT32
        ref = (x.astype(np.int64) - 7) @ w.astype(np.int64)
    elif op == "ConvInteger":
        node = helper.make_node(
            op, ["x", c("w", w), c("xz", np.uint8(5))], ["y"], pads=[1, 1, 1, 1]
        )
        out_t = TensorProto.INT32
        xp = np.pad(x.astype(np.int64) - 5, ((0, 0), (0, 0), (1, 1), (1, 1)))
        win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))
        ref = np.einsum("nchwij,fcij->nfhw", win, w.astype(np.int64))
    elif op == "QLinearConv":
        ins = [
            "x",
            c("xs", np.float32(0.02)),
            c("xz", np.uint8(5)),
            c("w", w),
            c("ws", np.array([0.01, 0.012, 0.009, 0.011], np.float32)),
            c("wz", np.zeros(4, np.int8)),
            c("ys", np.float32(0.4)),
            c("yz", np.uint8(128)),
            c("b", rng.integers(-500, 500, 4).astype(np.int32)),
        ]
        node = helper.make_node(op, ins, ["y"], pads=[1, 1, 1, 1])
        out_t = TensorProto.UINT8
    else:  # QLinearMatMul
        ins = [
            "x",
            c("xs", np.float32(0.02)),
            c("xz", np.uint8(7)),
            c("w", w),
            c("ws", np.float32(0.01)),
            c("wz", np.int8(0)),
            c("ys", np.float32(0.3)),
            c("yz", np.uint8(120)),
        ]
        node = helper.make_node(op, ins, ["y"])
        out_t = TensorProto.UINT8
    n_dims = len(xshape)
    graph = helper.make_graph(
        [node],
        op.lower(),
        [helper.make_tensor_value_info("x", TensorProto.UINT8, xshape)],
        [helper.make_tensor_value_info("y", out_t, ["N", 6] if n_dims == 2 else ["N", 4, 6, 6])],
        ini,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save(model, str(path))
    return path, x, ref


@pytest.mark.parametrize("op", ["MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul"])
def test_run_integer_input_model_keeps_dtypes(runner, tmp_path, op):
    path, x, ref = _single_op_model(tmp_path / "m.onnx", op)
    data, outs, rep = tmp_path / "x.npz", tmp_path / "o.npz", tmp_path / "r.json"
    np.savez(data, x=x)
    r = runner.invoke(
        main,
        ["run", str(path), "--data", str(data), "--save-outputs", str(outs), "--report", str(rep)],
    )
    assert r.exit_code == 0, r.output
    with np.load(outs) as f:
        got = f["y"]
    want_dtype = np.int32 if op in ("MatMulInteger", "ConvInteger") else np.uint8
    assert got.dtype == want_dtype and got.shape[0] == len(x)
    if ref is not None:  # the op's definition, in int64
        assert np.array_equal(got, ref)
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    outs_auto = tmp_path / "o_auto.npz"  # onnxruntime's dot product on this CPU (eq. 16)
    r2 = runner.invoke(main, ["run", str(path), "--data", str(data), "--save-outputs",
                              str(outs_auto), "--isa", "auto"])  # fmt: skip
    assert r2.exit_code == 0, r2.output
    with np.load(outs_auto) as f:
        got_auto = f["y"]
    assert want.dtype == got_auto.dtype and np.array_equal(got_auto, want), (
        f"{(got_auto != want).sum()} differ"
    )
    # the report: no labels and no class scores -> no top-1 line, the output described instead;
    # one row of datapath counters for the MAC node
    doc = json.loads(rep.read_text())
    assert doc["int_accuracy"] is None and [row["op"] for row in doc["layers"]] == [op]
    assert doc["layers"][0]["macs"] > 0 and doc["settings"]["isa"] == "exact"
    assert doc["outputs"]["y"]["dtype"] == np.dtype(want_dtype).name
    assert doc["outputs"]["y"]["shape"] == list(got.shape)
    assert doc["outputs"]["y"]["min"] == got.min() and doc["outputs"]["y"]["max"] == got.max()
    assert "top-1" not in r.output and "Traceback" not in r.output
    assert f"output y: {np.dtype(want_dtype).name} {'x'.join(map(str, got.shape))}" in r.output
    assert "no labels" in r.output


def test_run_integer_input_lossless_integer_cast_accepted(runner, tmp_path):
    """Integer data of another dtype is accepted when every value fits the input type."""
    path, x, ref = _single_op_model(tmp_path / "m.onnx", "MatMulInteger")
    data, outs = tmp_path / "x64.npz", tmp_path / "o.npz"
    np.savez(data, x=x.astype(np.int64))
    r = runner.invoke(main, ["run", str(path), "--data", str(data), "--save-outputs", str(outs)])
    assert r.exit_code == 0, r.output
    with np.load(outs) as f:
        assert f["y"].dtype == np.int32 and np.array_equal(f["y"], ref)


@pytest.mark.parametrize(
    "x, words",
    [
        (np.full((2, 16), 3.0, np.float32), ["float32", "uint8", "does not round"]),
        (np.full((2, 16), 3.7, np.float64), ["float64", "uint8", "does not round"]),
        (np.full((2, 16), 256, np.int64), ["int64", "uint8", "outside", "[0, 255]"]),
        (np.full((2, 16), -1, np.int16), ["int16", "uint8", "outside"]),
    ],
)
def test_run_integer_input_dtype_mismatch_is_an_error(runner, tmp_path, x, words):
    path, _, _ = _single_op_model(tmp_path / "m.onnx", "MatMulInteger")
    data = tmp_path / "bad.npz"
    np.savez(data, x=x)
    r = runner.invoke(main, ["run", str(path), "--data", str(data)])
    assert r.exit_code == 1, r.output
    assert "bad.npz" in r.output and "'x'" in r.output and "Traceback" not in r.output
    assert "model input 'x'" in r.output
    for w in words:
        assert w in r.output, (w, r.output)


def test_run_integer_input_builtin_float_data_is_an_error(runner, tmp_path):
    path, _, _ = _single_op_model(tmp_path / "m.onnx", "ConvInteger")
    r = runner.invoke(main, ["run", str(path), "--data", "digits"])
    assert r.exit_code == 1 and "float32" in r.output and "uint8" in r.output


def test_run_integer_input_labels_on_non_scores_output(runner, tmp_path):
    """Labels with a conv-map output: accuracy omitted with a note (not a meaningless argmax);
    labels with (N, classes) outputs: top-1 as usual."""
    path, x, _ = _single_op_model(tmp_path / "conv.onnx", "QLinearConv")
    data, rep = tmp_path / "x.npz", tmp_path / "r.json"
    np.savez(data, x=x, y=np.zeros(len(x), np.int64))
    r = runner.invoke(main, ["run", str(path), "--data", str(data), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    doc = json.loads(rep.read_text())
    assert doc["int_accuracy"] is None
    assert any("not per-sample class scores" in n for n in doc["notes"])
    path, x, ref = _single_op_model(tmp_path / "mm.onnx", "MatMulInteger")
    np.savez(data, x=x, y=np.argmax(ref, axis=1))
    r = runner.invoke(main, ["run", str(path), "--data", str(data), "--report", str(rep)])
    assert r.exit_code == 0, r.output
    assert json.loads(rep.read_text())["int_accuracy"] == 1.0 and "top-1" in r.output


def _bad_output_cases(qmodel):
    """(command args before the bad path, option) for every output path the CLI takes."""
    q = str(qmodel)
    return [
        (["run", q, "--data", "digits"], "--report"),
        (["run", q, "--data", "digits"], "--save-outputs"),
        (["compare", "mlp", "--data", "digits"], "--json"),
        (["compare", "mlp", "--data", "digits"], "--plot"),
        (["compare", "mlp", "--data", "digits"], "--pareto"),
        (["quantize", "mlp", "--calib", "digits"], "-o"),
        (["cost", "mlp"], "--json"),
        (["cost", "mlp"], "--plot"),
        (["demo"], "--json"),
        (["datapath", "--batch", "1"], "--json"),
        (["train", "mlp", "--epochs", "1"], "-o"),
        (["study", "psgd", "--seeds", "1", "--epochs", "1"], "--report"),
        (["study", "psgd", "--seeds", "1", "--epochs", "1"], "--workdir"),
        (["study", "psgd", "--seeds", "1", "--epochs", "1"], "--plot"),
    ]


@pytest.mark.parametrize("case", range(14))
def test_bad_output_path_fails_before_the_run(runner, qmodel, tmp_path, case):
    # issue 12 item 9: an unwritable output path is a usage error (exit 2) naming the path the
    # user gave, raised before any work (not after the run, naming a temporary file)
    args, opt = _bad_output_cases(qmodel)[case]
    blocker = tmp_path / "afile"
    blocker.write_text("not a directory")
    bad = str(blocker / "sub" / "out.json")
    r = runner.invoke(main, [*args, opt, bad])
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{opt}" in r.output or f"'{opt}'" in r.output
    assert bad in r.output or str(blocker) in r.output
    assert ".tmp" not in r.output
    assert "wrote" not in r.output and "top-1" not in r.output  # nothing ran


def test_missing_report_directory_is_named(runner, qmodel, tmp_path):
    bad = str(tmp_path / "missing" / "dir" / "r.json")
    r = runner.invoke(main, ["run", str(qmodel), "--data", "digits", "--report", bad])
    assert r.exit_code == 2
    assert f"cannot write {bad!r}: directory" in r.output and "does not exist" in r.output
    assert ".tmp" not in r.output


def test_atomic_write_error_names_the_users_path(tmp_path):
    from hwsim.io import atomic_write_bytes, atomic_write_text

    bad = tmp_path / "missing" / "r.json"
    with pytest.raises(FileNotFoundError) as e:
        atomic_write_text(bad, "{}")
    assert e.value.filename == str(bad) and ".tmp" not in str(e.value)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError) as e:  # os.replace onto a directory
        atomic_write_bytes(tmp_path / "adir", b"x")
    assert e.value.filename == str(tmp_path / "adir") and ".tmp" not in str(e.value)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_api_checks_output_paths_before_running(qmodel, tmp_path, monkeypatch):
    """The Python API checks its output paths before the run too (not only the CLI): a bad
    path raises naming the field and the path, and nothing runs."""
    from hwsim import api

    ran = []
    monkeypatch.setattr(api, "run_program", lambda *a, **k: ran.append(1))
    bad = str(tmp_path / "missing" / "r.json")
    with pytest.raises(ValueError, match=f"report: cannot write {bad!r}: directory"):
        api.run(str(qmodel), "digits", report=bad)
    with pytest.raises(ValueError, match="save_outputs: cannot write"):
        api.run(str(qmodel), "digits", save_outputs=str(tmp_path / "nope" / "o.npz"))
    with pytest.raises(ValueError, match="plot: cannot write"):
        api.compare("models/mlp.onnx", "digits", plot=str(tmp_path / "a" / "b.png"))
    assert ran == []


# --------------------------------------------------------------------------------------------
# Error handling: a user error is one clean line; a bug keeps its traceback and says so
# --------------------------------------------------------------------------------------------
def _user_error_cases(tmp):
    bad = tmp / "flat.npz"
    np.savez(bad, x=np.zeros((3, 64), np.float32), y=np.zeros(3, np.int64))
    return [
        (["run", "nosuchmodel", "--data", "digits"], "no model file or shipped model named"),
        (["run", "mlp", "--data", "digits"], "a float model"),
        (["compare", "rescnn", "--data", str(bad)], "sample shape (64,)"),
        (["quantize", "mlp", "--scheme", "data-free", "--input-range", "1,0", "-o",
          str(tmp / "q.onnx")], "lo < hi"),  # fmt: skip
        (["compare", "mlp", "--data", "digits", "--schemes", ","], "at least one scheme"),
        (["cost", "mlp", "--array", "banana"], "--array must be ROWSxCOLS"),
        (["demo", "--model", "nosuchmodel"], "no model file or shipped model named"),
        (["train", "nope", "--epochs", "1", "-o", str(tmp / "m.onnx")], "unknown architecture"),
        (["train", "mlp", "--lr", "nan", "--epochs", "1", "-o", str(tmp / "m.onnx")], "lr must"),
        (["study", "psgd", "--data", "digits-train", "--workdir", str(tmp / "w")], "study data"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_user_error_is_one_clean_line(runner, tmp_path, case):
    args, words = _user_error_cases(tmp_path)[case]
    r = runner.invoke(main, args)
    assert r.exit_code == 1, r.output
    assert isinstance(r.exception, SystemExit)  # a CliError, not a leaked exception
    # demo prints its header first once the model is found
    err = r.output.split("\n\n", 1)[1] if r.output.startswith("hwsim demo:") else r.output
    assert err.startswith("Error: ") and err.count("\n") == 1 and words in err, err
    assert "Traceback" not in r.output and "bug" not in r.output


def _broken(exc):
    def f(*a, **k):
        raise exc

    return f


def test_internal_bug_keeps_its_traceback_and_asks_for_a_report(runner, monkeypatch):
    from hwsim import api
    from hwsim.cli import BUG_HINT

    monkeypatch.setattr(api, "shipped_models", _broken(KeyError("oops")))
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 1 and isinstance(r.exception, KeyError)  # re-raised, not wrapped
    assert "Error:" not in r.output
    shown = getattr(r.exception, "__notes__", []) + r.stderr.splitlines()
    assert BUG_HINT in shown
    # a ValueError that is not an HwsimError is a bug too (it used to print "Error: ValueError")
    monkeypatch.setattr(api, "compare", _broken(ValueError("internal")))
    r = runner.invoke(main, ["compare", "mlp", "--data", "digits"])
    assert r.exit_code == 1 and type(r.exception) is ValueError and "Error:" not in r.output


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the hint is an exception note")
def test_bug_hint_follows_the_traceback_on_stderr():
    import subprocess

    from hwsim.cli import BUG_HINT

    code = (
        "import hwsim.api as api\n"
        "def broken():\n"
        "    raise KeyError('oops')\n"
        "api.shipped_models = broken\n"
        "from hwsim.cli import main\n"
        "main(['models'], prog_name='hwsim')\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 1 and p.stdout == ""
    assert err[0].startswith("Traceback") and err[-2] == "KeyError: 'oops'" and err[-1] == BUG_HINT


def test_oserror_naming_a_path_is_a_user_error(runner, monkeypatch):
    from hwsim import api

    exc = PermissionError(13, "Permission denied", "/some/models.json")
    monkeypatch.setattr(api, "shipped_models", _broken(exc))
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 1 and r.output == (
        "Error: [Errno 13] Permission denied: '/some/models.json'\n"
    )
    # an OSError naming no path is not about the user's input
    monkeypatch.setattr(api, "shipped_models", _broken(OSError("device on fire")))
    r = runner.invoke(main, ["models"])
    assert r.exit_code == 1 and isinstance(r.exception, OSError) and "Error:" not in r.output


def test_cli_error_is_not_the_library_error():
    from hwsim import cli
    from hwsim.errors import HwsimError

    assert issubclass(cli.CliError, click.ClickException)
    assert cli.HwsimError is HwsimError and not issubclass(HwsimError, click.ClickException)


# --------------------------------------------------------------------------------------------
# Options: choices from the library's enums, one range per flag across commands
# --------------------------------------------------------------------------------------------
def _commands():
    out = {}
    for name, cmd in main.commands.items():
        if isinstance(cmd, click.Group):
            out.update({f"{name} {n}": c for n, c in cmd.commands.items()})
        else:
            out[name] = cmd
    return out


def _opts(cmd):
    return {p.name: p for p in cmd.params}


def test_choices_come_from_the_enums():
    from hwsim.cost.dataflow import Dataflow
    from hwsim.datapath import ReductionOrder
    from hwsim.datapath.isa import ISA_CHOICES
    from hwsim.numerics import Overflow, RoundingMode, ScaleKind
    from hwsim.quant import scheme as sch
    from hwsim.train import SCALINGS

    want = {
        "register": [k.value for k in ScaleKind],
        "rounding": [m.value for m in RoundingMode],
        "overflow": [o.value for o in Overflow],
        "order": [o.value for o in ReductionOrder],
        "dataflow": [d.value for d in Dataflow],
        "isa": list(ISA_CHOICES),
        "weight_mode": list(sch.WEIGHT_MODES),
        "granularity": list(sch.GRANULARITIES),
        "calib_method": list(sch.CALIB_METHODS),
        "shift_base": list(sch.SHIFT_BASES),
        "bn_fold": list(sch.BN_FOLDS),
        "data_free_range": list(sch.DATA_FREE_RANGES),
        "scaling": list(SCALINGS),
    }
    seen = set()
    for cname, cmd in _commands().items():
        for name, p in _opts(cmd).items():
            if isinstance(p.type, click.Choice) and name in want:
                assert list(p.type.choices) == want[name], (cname, name)
                seen.add(name)
    assert seen == set(want)
    assert main.commands["quantize"].params[1].help == ", ".join(sch.PRESETS)


def test_flag_ranges_agree_across_commands():
    ranges: dict = {}
    for cname, cmd in _commands().items():
        for name, p in _opts(cmd).items():
            if isinstance(p.type, click.IntRange):
                ranges.setdefault(name, {})[cname] = (p.type.min, p.type.max)
    for name in ("wbits", "abits", "first_last_bits"):
        assert set(ranges[name].values()) == {(2, 16)}, (name, ranges[name])
    assert set(ranges["acc_bits"].values()) == {(8, 64)}, ranges["acc_bits"]
    for name in ("seed", "target_bits", "epochs", "batch_size", "tile_bits", "s_max"):
        assert len(set(ranges[name].values())) == 1, (name, ranges[name])
    assert {hi for _, hi in ranges["tile_rows"].values()} == {1 << 20}
    assert ranges["target_bits"]["train"] == (2, 8)


def test_run_tflite_kernels_option(runner, qmodel, tmp_path):
    """--tflite-kernels picks the LiteRT kernel family of a .tflite model (named in the report)
    and is refused, naming the file, for any other model."""
    rep = tmp_path / "r.json"
    tfl = "tests/data/tflite/digits_cnn.tflite"
    r = runner.invoke(
        main,
        ["run", tfl, "--data", "digits", "--tflite-kernels", "optimized", "--report", str(rep)],
    )
    assert r.exit_code == 0, r.output
    assert json.loads(rep.read_text())["settings"]["scheme"]["kernels"] == "optimized"
    r = runner.invoke(main, ["run", str(qmodel), "--data", "digits", "--tflite-kernels", "xnnpack"])
    assert r.exit_code != 0 and str(qmodel) in r.output and ".tflite" in r.output


def test_cost_bandwidth_mode_options(runner, tmp_path):
    """--bandwidth-mode / --bandwidth reach the memory model (SCALE-Sim's InterfaceBandwidth):
    calc never stalls reads; user mode at 1 word/cycle must stall where the DRAM words exceed
    the compute cycles by far (rescnn, batch 4: more than 30x)."""
    out = {}
    for mode, extra in (("calc", []), ("user", ["--bandwidth", "1"])):
        p = tmp_path / f"{mode}.json"
        args = ["cost", "rescnn", "--batch", "4", "--bandwidth-mode", mode, *extra]
        r = runner.invoke(main, [*args, "--json", str(p)])
        assert r.exit_code == 0, r.output
        out[mode] = (r.output, json.loads(p.read_text()))
    calc, user = out["calc"][1], out["user"][1]
    assert calc["accelerator"]["bandwidth_mode"] == "calc" and calc["totals"]["stall_cycles"] == 0
    assert user["accelerator"]["bandwidth_mode"] == "user"
    assert user["accelerator"]["dram_words_per_cycle"] == 1
    words = sum(user["totals"]["dram_words"].values())
    assert words > 30 * user["totals"]["compute_cycles"]
    assert user["totals"]["stall_cycles"] > 0
    assert "as fast as needed (calc" in out["calc"][0]
    assert "1 words/cycle per operand (user)" in out["user"][0]
    r = runner.invoke(main, ["cost", "mlp", "--bandwidth", "0"])
    assert r.exit_code == 2 and "--bandwidth" in r.output
