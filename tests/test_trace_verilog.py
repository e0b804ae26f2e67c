"""The trace's hex files drive real RTL tooling: traces/tb_mac_requant.v under Icarus Verilog
recomputes dense layers (MAC, 32-bit wrapping accumulator, TFLite register) from the golden
inputs, weights, bias and registers, and checks the golden accumulators and outputs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hwsim import api
from hwsim.trace import read_manifest, trace

ROOT = Path(__file__).resolve().parents[1]
TB = ROOT / "traces" / "tb_mac_requant.v"
SHIPPED = ROOT / "traces" / "rescnn-tflite"


@pytest.fixture(scope="module")
def tb(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb") / "tb.vvp"
    subprocess.run(["iverilog", "-g2012", "-o", str(out), str(TB)], check=True)
    return out


def _args(doc: dict, name: str) -> list[str]:
    """The testbench's plusargs for dense layer ``name`` of a trace (from its manifest)."""
    layer = next(la for la in doc["layers"] if la["name"] == name)
    x, y = doc["tensors"][layer["inputs"][0]], doc["tensors"][layer["output"]]
    n_out, K = layer["weights"]["shape"]
    reg = layer["register"]
    zws = layer["weights"]["zero_point"]
    zws = zws if isinstance(zws, list) else [zws]
    assert len(set(zws)) == 1  # the testbench takes one weight zero point
    zw = zws[0]
    assert reg["kind"] == "tflite" and layer["accumulator"]["bits"] == 32
    assert x["bits"] == 8 and y["bits"] == 8 and layer["weights"]["bits"] == 8
    return [
        f"+x={x['hex']}", f"+w={layer['weights']['hex']}", f"+b={layer['bias']['hex']}",
        f"+acc={layer['acc']['hex']}", f"+m={reg['multiplier']['hex']}",
        f"+s={reg['shift']['hex']}", f"+y={y['hex']}", f"+K={K}", f"+O={n_out}",
        f"+NREG={(reg['multiplier']['shape'] or [1])[0]}",
        f"+xzp={x['zero_point']}", f"+wzp={zw}",
        f"+yzp={y['zero_point']}", f"+xsigned={int(x['encoding'] == 'twos-complement')}",
        f"+osigned={int(y['encoding'] == 'twos-complement')}",
    ]  # fmt: skip


def _vvp(tb: Path, d: Path, name: str) -> subprocess.CompletedProcess:
    args = _args(read_manifest(d), name)
    return subprocess.run(["vvp", "-n", str(tb), *args], cwd=d, capture_output=True, text=True)


def test_testbench_passes_on_the_shipped_trace(tb):
    r = _vvp(tb, SHIPPED, "/9/Gemm")
    assert r.returncode == 0 and "PASS: 10 outputs of a 32-deep dense layer" in r.stdout, r.stdout


def test_testbench_passes_on_per_channel_registers(tb, tmp_path):
    program = api.quantize_model("mlp", "per-channel", calib="digits-train", register="tflite")
    trace(program, "digits", ["3"], tmp_path / "t")
    for name in ("/1/Gemm", "/3/Gemm", "/5/Gemm"):
        r = _vvp(tb, tmp_path / "t", name)
        assert r.returncode == 0 and "PASS" in r.stdout, (name, r.stdout)


@pytest.mark.parametrize("what", ["t_logits.hex", "L011_9_Gemm.acc.hex"])
def test_testbench_fails_when_a_golden_value_changes(tb, tmp_path, what):
    d = tmp_path / "t"
    shutil.copytree(SHIPPED, d)
    lines = (d / what).read_text().splitlines()
    bits = 4 * len(lines[3])
    lines[3] = f"{(int(lines[3], 16) + 1) % (1 << bits):0{len(lines[3])}x}"
    (d / what).write_text("\n".join(lines) + "\n")
    r = _vvp(tb, d, "/9/Gemm")
    assert r.returncode != 0 and "FAIL" in r.stdout and "[3]" in r.stdout, r.stdout
