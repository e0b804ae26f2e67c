"""``hwsim compare`` / ``hwsim run`` of already-quantized files: a TFLite model and a Brevitas
QONNX export (the "as imported" row, then hwsim's schemes on the float network)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from hwsim import api
from hwsim.errors import HwsimError
from hwsim.execute.float import run_float
from hwsim.graph.onnx_import import import_model
from hwsim.report import compare_table

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "tests" / "data" / "tflite" / "digits_cnn.tflite"


def _data(tmp_path, shape, n=24, seed=0) -> str:
    x = np.random.default_rng(seed).random((n, *shape), dtype=np.float32)
    p = tmp_path / "x.npz"
    np.savez(p, x=x, y=np.zeros(n, np.int64))
    return str(p)


def test_run_names_tflite_source_kernels_and_registers(tmp_path):
    data = _data(tmp_path, (1, 8, 8))
    for kernels, regs in (
        (None, ["ort", "tflite-single"]),
        ("optimized", ["tflite"]),
    ):
        rep = api.run(str(DIGITS), data, tflite_kernels=kernels)
        sch = rep.settings["scheme"]
        assert sch["source"] == "tflite" and sch["kernels"] == (kernels or "xnnpack")
        assert sch["registers"] == regs
        assert f"({kernels or 'xnnpack'} kernels)" in sch["name"]


def test_tflite_kernels_is_refused_for_onnx_and_unknown_names(tmp_path):
    with pytest.raises(HwsimError, match="tflite_kernels"):
        api.load_imported(ROOT / "models" / "mlp.onnx", "xnnpack")
    with pytest.raises(HwsimError, match="xnnpack, optimized, reference"):
        api.load_imported(DIGITS, "ruy")


def test_float_network_has_the_dequantized_weights_and_no_quantization():
    g = import_model(DIGITS)
    f = api.float_network(g)
    assert not f.quantized and not f.act_quant and "tflite" not in f.meta
    assert all("tflite" not in n.attrs for n in f.nodes)
    for a, b in zip(g.nodes, f.nodes, strict=True):
        if a.wq is not None:  # independent: w = s (q - z) from the file's integers
            s = np.asarray(a.wq.scale, np.float32).reshape((-1,) + (1,) * (a.wq.q.ndim - 1))
            want = a.wq.q.astype(np.float32) * s
            np.testing.assert_array_equal(b.weight, want)
    x = np.random.default_rng(1).random((4, *g.input_shape), dtype=np.float32)
    assert np.isfinite(run_float(f, x)[f.output]).all()


def test_compare_of_a_tflite_model_starts_with_the_imported_row(tmp_path):
    data = _data(tmp_path, (1, 8, 8))
    rows = api.compare(str(DIGITS), data, schemes=("per-channel",), wbits=(8,), abits=(8,))
    assert [r["scheme"] for r in rows] == ["as imported", "per-channel"]
    imp, own = rows
    assert (imp["wbits"], imp["abits"]) == (8, 8)
    assert imp["settings"]["source"] == "tflite" and imp["settings"]["default"]["acc_bits"] == 32
    assert own["settings"]["name"] == "per-channel"
    # the same float network is the reference of both rows
    assert imp["float_accuracy"] == own["float_accuracy"]
    table = compare_table(rows)
    assert table.splitlines()[2].startswith("as imported")


def _brevitas():
    spec = importlib.util.spec_from_file_location("brevitas_cnn", ROOT / "models/brevitas_cnn.py")
    bc = importlib.util.module_from_spec(spec)
    sys.modules["brevitas_cnn"] = bc
    spec.loader.exec_module(bc)
    return bc


def test_compare_of_a_brevitas_export_starts_with_the_imported_row(tmp_path):
    bc = _brevitas()
    v = bc.VARIANTS[0]
    path = bc.export(v, tmp_path / f"{v.name}.onnx", batch=4)
    data = _data(tmp_path, (1, 8, 8), n=8)
    rows = api.compare(
        str(path), data, schemes=("per-tensor",), wbits=(8,), abits=(8,), batch_size=4
    )
    assert [r["scheme"] for r in rows] == ["as imported", "per-tensor"]
    imp = rows[0]
    assert imp["settings"]["source"] == "qdq"
    assert imp["wbits"] == 4  # the export's 4-bit weights
    assert rows[1]["agreement"] is not None
