"""Reduced ResNet-18 and MobileNetV2 (``archs.py``: random weights, random BatchNorm statistics,
exported from torch, quantized by onnxruntime's ``quantize_static`` to QDQ with uint8 activations
and int8 weights, per-tensor and per-channel): ``hwsim run --isa auto`` outputs equal a live
onnxruntime's CPU outputs (default session options) bit for bit.

onnxruntime's u8 x s8 kernels depend on the CPU (exact with AVX-512 VNNI / AVX-VNNI / AMX, a
saturating int16 pair sum with plain AVX2), and these networks do reach the saturating case:
recorded outputs for both instruction sets are in ``ort_goldens/archs`` (made by
``ort_goldens/make_arch_goldens.py``).
"""

from __future__ import annotations

from pathlib import Path

import archs
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from hwsim.cli import main

CASES = [(arch, pc) for arch in archs.ARCHS for pc in (False, True)]
N_SAMPLES = 8


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("archs")
    return {(arch, pc): archs.make(arch, d, pc)[1] for arch, pc in CASES}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x = archs.inputs(N_SAMPLES)
    path = tmp_path_factory.mktemp("archs_data") / "x.npz"
    np.savez(path, x=x)
    return x, path


def test_models_have_the_architecture(models):
    res = onnx.load(models[("resnet18", True)]).graph.node
    mob = onnx.load(models[("mobilenetv2", True)]).graph.node
    assert sum(n.op_type == "Add" for n in res) == 8 and any(n.op_type == "MaxPool" for n in res)
    assert sum(n.op_type == "Add" for n in mob) == 10
    groups = [a.i for n in mob if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sum(g > 1 for g in groups) == 17  # the depthwise 3x3 convs


@pytest.mark.parametrize("arch,per_channel", CASES)
def test_hwsim_run_equals_onnxruntime(models, data, tmp_path, arch, per_channel):
    path = models[(arch, per_channel)]
    x, xpath = data
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input": x})[0]
    outs = tmp_path / "o.npz"
    r = CliRunner().invoke(
        main, ["run", str(path), "--data", str(xpath), "--isa", "auto", "--save-outputs", str(outs)]
    )
    assert r.exit_code == 0, r.output
    with np.load(outs) as f:
        got = f[sess.get_outputs()[0].name]
    assert got.dtype == np.float32 and got.shape == want.shape == (N_SAMPLES, archs.NUM_CLASSES)
    differ = int((got != want).sum())
    assert differ == 0, f"{differ} of {got.size} outputs differ (max |d| {np.abs(got - want).max()})"


GOLDEN_ARCHS = Path(__file__).parent / "ort_goldens" / "archs"


@pytest.mark.parametrize("isa", ["exact", "avx2"])
@pytest.mark.parametrize("name", [f"{a}_{'perchannel' if pc else 'pertensor'}" for a, pc in CASES])
def test_recorded_onnxruntime_outputs_bit_for_bit(name, isa, tmp_path):
    """Recorded onnxruntime outputs of both instruction sets (``exact``: AVX-512 VNNI;
    ``avx2``: ``qemu-x86_64 -cpu Haswell-v4``), checked on whatever CPU runs the tests."""
    with np.load(GOLDEN_ARCHS / f"{name}_{isa}.npz") as z:
        want = {k: z[k] for k in z.files}
    out = tmp_path / "o.npz"
    r = CliRunner().invoke(main, ["run", str(GOLDEN_ARCHS / f"{name}.onnx"), "--data",
                                  str(GOLDEN_ARCHS / f"{name}_input.npz"), "--isa", isa,
                                  "--save-outputs", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    with np.load(out) as o:
        (key,) = want
        assert int(np.count_nonzero(o[key] != want[key])) == 0
    if isa == "avx2":
        assert "i16 sat" in r.output
