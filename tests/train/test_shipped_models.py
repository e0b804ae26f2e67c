"""The shipped float models (``models/*.onnx``) against their records in ``models/models.json``,
without torch or training: the file's SHA-256, its op set, its onnxruntime top-1 accuracy on the
held-out ``digits`` set and on ``digits-train`` (as ``models/train.py`` measures them: CPU
provider, one thread, default graph optimizations), and hwsim's float reference (import +
``run_float``) against onnxruntime.

Tolerance of hwsim's float reference: every logit within ``1e-5 * max(1, max |ort logit|)`` of
onnxruntime's (measured: at most 7.7e-6 absolute, 8.8e-7 relative to the largest logit, on the
ViT), and the same top-1 accuracy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hwsim.data import load_data
from hwsim.execute import run_float
from hwsim.graph import import_model

MODELS = Path(__file__).resolve().parents[2] / "models"
ENTRIES = json.loads((MODELS / "models.json").read_text(encoding="utf-8"))
RTOL_OF_MAX = 1e-5


@pytest.fixture(scope="module")
def data():
    return {name: load_data(name, (1, 8, 8)) for name in ("digits", "digits-train")}


def _ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {"input": x})
    return logits


def test_every_shipped_file_has_one_entry():
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names))
    assert sorted(e["file"] for e in ENTRIES) == sorted(p.name for p in MODELS.glob("*.onnx"))
    assert {"mlp", "rescnn", "vit", "silucnn"} <= set(names)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_shipped_model_matches_its_record(entry, data):
    path = MODELS / entry["file"]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    proto = onnx.load(str(path))
    assert sorted({n.op_type for n in proto.graph.node}) == entry["ops"]
    assert entry["dataset"] == "digits" and entry["input_shape"] == [1, 8, 8]

    test, train = data["digits"], data["digits-train"]
    logits = _ort_logits(path, test.x)
    acc = float(np.mean(np.argmax(logits, axis=1) == test.y))
    assert round(acc, 6) == entry["float_accuracy"]
    train_acc = float(np.mean(np.argmax(_ort_logits(path, train.x), axis=1) == train.y))
    assert round(train_acc, 6) == entry["train_accuracy"]

    g = import_model(path)
    ref = run_float(g, test.x)[g.output]
    assert ref.shape == logits.shape == (len(test), 10)
    err = float(np.max(np.abs(ref.astype(np.float64) - logits.astype(np.float64))))
    assert err <= RTOL_OF_MAX * max(1.0, float(np.max(np.abs(logits)))), err
    assert float(np.mean(np.argmax(ref, axis=1) == test.y)) == acc
