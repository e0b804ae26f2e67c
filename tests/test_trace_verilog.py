"""The trace's hex files drive real RTL tooling: traces/tb_mac_requant.v under Icarus Verilog
recomputes dense layers (MAC, 32-bit wrapping accumulator, TFLite register) from the golden
inputs, weights, bias and registers, and checks the golden accumulators and outputs;
traces/tb_shift_acc.v recomputes the per-sample-shift accumulator (eq. 13-14: group
accumulator, shift with the trace's rounding, final accumulator) of a per-token-shift MatMul
from the golden operands and group shifts, and checks the golden accumulators."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hwsim import api
from hwsim.numerics import reference as ref
from hwsim.trace import read_manifest, trace
from hwsim.trace.diff import SHIFT_ROUNDING, diff
from hwsim.trace.files import Array, entry, write_dir

ROOT = Path(__file__).resolve().parents[1]
TB = ROOT / "traces" / "tb_mac_requant.v"
SHIPPED = ROOT / "traces" / "rescnn-tflite"
TB_SHIFT = ROOT / "traces" / "tb_shift_acc.v"
SHIPPED_SHIFT = ROOT / "traces" / "vit-token-shift"
PV = "/blocks/blocks.1/attn/MatMul_1"  # p @ v: v's rows are tokens with their own shifts
ROUNDING_CODE = {"floor": 0, "ceil": 1, "toward_zero": 2, "half_up": 3, "half_down": 4,
                 "half_away": 5, "half_even": 6}  # fmt: skip


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


@pytest.fixture(scope="module")
def tb_shift(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tb_shift") / "tb_shift_acc.vvp"
    subprocess.run(["iverilog", "-g2012", "-o", str(out), str(TB_SHIFT)], check=True)
    return out


def _shift_args(doc: dict, name: str, rounding: str | None = None) -> list[str]:
    """tb_shift_acc.v's plusargs for the ``shift_acc`` entry of MatMul ``name`` (manifest)."""
    layer = next(la for la in doc["layers"] if la["name"] == name)
    sa = layer["shift_acc"]
    a, b = (doc["tensors"][t] for t in layer["inputs"])
    G = 1
    for d in sa["batch"]:
        G *= d
    # the bench reads a (G, M, K) and b (G, K, N): operands not broadcast over the batch
    assert a["shape"] == sa["batch"] + [sa["M"], sa["K"]]
    assert b["shape"] == sa["batch"] + [sa["K"], sa["N"]]
    acc = sa["accumulator"]
    return [
        f"+a={a['hex']}", f"+b={b['hex']}", f"+sh={sa['shifts']['hex']}",
        f"+acc={sa['acc']['hex']}", f"+G={G}", f"+M={sa['M']}", f"+K={sa['K']}",
        f"+N={sa['N']}", f"+abits={a['bits']}", f"+asigned={int(a['signed'])}",
        f"+azp={a['zero_point']}", f"+bbits={b['bits']}", f"+bsigned={int(b['signed'])}",
        f"+bzp={b['zero_point']}", f"+accbits={acc['bits']}", f"+accsigned={int(acc['signed'])}",
        f"+sat={int(acc['overflow'] == 'saturate')}",
        f"+rnd={ROUNDING_CODE[rounding or sa['rounding']]}",
    ]  # fmt: skip


def _vvp_shift(tb: Path, d: Path, name: str, rounding: str | None = None):
    args = _shift_args(read_manifest(d), name, rounding)
    return subprocess.run(["vvp", "-n", str(tb), *args], cwd=d, capture_output=True, text=True)


def test_shift_testbench_passes_on_the_shipped_trace(tb_shift):
    r = _vvp_shift(tb_shift, SHIPPED_SHIFT, PV)
    want = "PASS: 544 accumulators of 4 x (17x17)@(17x8), 64 of 68 groups shifted"
    assert r.returncode == 0 and want in r.stdout, r.stdout


@pytest.mark.parametrize(
    "bits, overflow, rounding",
    [(12, "saturate", "half_even"), (14, "wrap", "floor")],
)
def test_shift_testbench_passes_on_fresh_traces(tb_shift, tmp_path, bits, overflow, rounding):
    """Narrow group / final accumulators that overflow (both rules), two other roundings, both
    attention blocks, another sample; the bench must see overflow events and shifted groups."""
    program = api.quantize_model(
        "vit", "per-token-shift", calib="digits-train", register="pow2", rounding=rounding,
        shift_base="runtime", acc_bits=bits, overflow=overflow,
    )  # fmt: skip
    names = ["/blocks/blocks.0/attn/MatMul_1", PV]
    trace(program, "digits", ["3"], tmp_path / "t", layers=names)
    for name in names:
        r = _vvp_shift(tb_shift, tmp_path / "t", name)
        assert r.returncode == 0 and "PASS" in r.stdout, (name, r.stdout)
        assert " 0 overflow events" not in r.stdout and " 0 of " not in r.stdout, r.stdout


def test_shift_testbench_fails_on_another_rounding(tb_shift):
    """The shipped trace rounds half away from zero: the bench rounding half to even (or
    down) disagrees on tied groups, so the trace pins the rounding mode."""
    for rounding in ("half_even", "floor"):
        r = _vvp_shift(tb_shift, SHIPPED_SHIFT, PV, rounding)
        assert r.returncode != 0 and "FAIL" in r.stdout, (rounding, r.stdout)


@pytest.mark.parametrize("what", ["acc", "shifts"])
def test_shift_testbench_fails_when_a_golden_value_changes(tb_shift, tmp_path, what):
    d = tmp_path / "t"
    shutil.copytree(SHIPPED_SHIFT, d)
    layer = next(la for la in read_manifest(d)["layers"] if la["name"] == PV)
    f = d / layer["shift_acc"][what]["hex"]
    lines = f.read_text().splitlines()
    i = 5 if what == "acc" else 6  # acc[0][0][5]; the group shift of token 6 (0 -> 1)
    bits = 4 * len(lines[i])
    lines[i] = f"{(int(lines[i], 16) + 1) % (1 << bits):0{len(lines[i])}x}"
    f.write_text("\n".join(lines) + "\n")
    r = _vvp_shift(tb_shift, d, PV)
    assert r.returncode != 0 and "FAIL" in r.stdout, r.stdout
    if what == "acc":
        assert "first acc[0][0][5]" in r.stdout, r.stdout


def _rerounded(src: Path, out: Path, rounding: str) -> Path:
    """A copy of the shipped shift trace whose accumulators are recomputed in plain ints
    (``reference.round_shift``) with another rounding of the group shifts; manifest and
    hashes rewritten (hwsim.trace.files.write_dir)."""
    doc = read_manifest(src)
    files = {p.name: p.read_bytes() for p in src.iterdir() if p.name != "manifest.json"}
    layer = next(la for la in doc["layers"] if la["name"] == PV)
    sa = layer["shift_acc"]
    ta, tb = (doc["tensors"][t] for t in layer["inputs"])
    K, M, N = sa["K"], sa["M"], sa["N"]
    A = np.load(src / ta["npy"]).astype(int).reshape(-1, M, K) - ta["zero_point"]
    B = np.load(src / tb["npy"]).astype(int).reshape(-1, K, N) - tb["zero_point"]
    sh = np.load(src / sa["shifts"]["npy"]).astype(int).reshape(-1, K)
    acc = np.zeros((A.shape[0], M, N), np.int64)
    for g, m, n in np.ndindex(acc.shape):
        acc[g, m, n] = sum(ref.round_shift(int(A[g, m, k]) * int(B[g, k, n]), int(sh[g, k]),
                                           rounding) for k in range(K))  # fmt: skip
    assert np.abs(acc).max() < 2**31  # no overflow at 32 bits: the plain sum is the register's
    sa["rounding"] = rounding
    stem = sa["acc"]["npy"][: -len(".npy")]
    sa["acc"] = entry(files, stem, Array.integer(acc.reshape(sa["acc"]["shape"]), 32, True))
    doc.pop("files")
    write_dir(out, doc, files)
    return out


@pytest.mark.parametrize("rounding", sorted(ROUNDING_CODE))
def test_shift_testbench_rounds_as_the_plain_int_reference(tb_shift, tmp_path, rounding):
    """Every deterministic rounding of the bench's round_shift against
    hwsim.numerics.reference.round_shift, on the shipped operands and group shifts."""
    d = _rerounded(SHIPPED_SHIFT, tmp_path / "t", rounding)
    r = _vvp_shift(tb_shift, d, PV)
    assert r.returncode == 0 and "PASS: 544 accumulators" in r.stdout, r.stdout
    if rounding != "half_away":
        assert diff(SHIPPED_SHIFT, d).cause == SHIFT_ROUNDING
