"""hwsim diff: localises an injected difference of each cause, exits non-zero, and refuses
manifests that do not match their files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim.cli import main
from hwsim.trace.diff import diff
from hwsim.trace.files import TraceError, npy_bytes, sha256

SHIPPED = Path(__file__).resolve().parents[1] / "traces" / "rescnn"


def _trace(tmp_path, name, *opts) -> Path:
    out = tmp_path / name
    r = CliRunner().invoke(main, ["trace", "rescnn", "--index", "0", "-o", str(out), *opts])
    assert r.exit_code == 0, r.output
    return out


def _edit(d: Path, npy: str, fn) -> None:
    """Change the array of ``npy`` by ``fn`` and keep the manifest's hash consistent."""
    arr = np.load(d / npy)
    new = fn(arr.copy())
    (d / npy).write_bytes(npy_bytes(new))
    doc = json.loads((d / "manifest.json").read_text())
    doc["files"][npy] = sha256((d / npy).read_bytes())
    (d / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "opts_a,opts_b,layer,what,cause",
    [
        ([], ["--acc-bits", "16"], "/0/Conv", "acc", "accumulator overflow"),
        ([], ["--register", "tflite"], "/0/Conv", "output", "different scale register"),
        (["--register", "pow2", "--rounding", "half_away"],
         ["--register", "pow2", "--rounding", "half_even"], "/0/Conv", "output", "rounding tie"),
    ],
)  # fmt: skip
def test_diff_names_the_cause_of_two_configurations(tmp_path, opts_a, opts_b, layer, what, cause):
    a, b = _trace(tmp_path, "a", *opts_a), _trace(tmp_path, "b", *opts_b)
    d = diff(a, b)
    assert (d.layer, d.what, d.cause) == (layer, what, cause)
    assert d.a != d.b and d.count >= 1
    r = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert r.exit_code == 1 and f"cause: {cause}" in r.output and repr(layer) in r.output


def test_diff_of_a_clamped_output(tmp_path):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)

    def clamp(q):  # one element of the residual conv's int8 output held at the rail
        q[0, 2, 3, 4] = 127
        return q

    _edit(b, "t_3_body_body_4_BatchNormalization_output_0.npy", clamp)
    d = diff(SHIPPED, b)
    assert (d.layer, d.index, d.b, d.count) == ("/3/body/body.3/Conv", (0, 2, 3, 4), 127, 1)
    assert d.cause == "saturation/clamp"


def test_identical_traces_exit_zero():
    r = CliRunner().invoke(main, ["diff", str(SHIPPED), str(SHIPPED)])
    assert r.exit_code == 0 and "no divergence" in r.output


def test_bad_manifests_are_clear_errors(tmp_path):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    f = b / "L000_0_Conv.acc.npy"
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    with pytest.raises(TraceError, match="sha256 of 'L000_0_Conv.acc.npy'"):
        diff(SHIPPED, b)
    shutil.rmtree(b)
    shutil.copytree(SHIPPED, b)
    _edit(b, "L000_0_Conv.acc.npy", lambda q: q[:, :8])
    with pytest.raises(TraceError, match="has shape"):
        diff(SHIPPED, b)
    shutil.rmtree(b)
    shutil.copytree(SHIPPED, b)
    doc = json.loads((SHIPPED / "manifest.json").read_text())
    doc["layers"] = doc["layers"][:3]
    (b / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(TraceError, match="layer '/3/body/body.2/Relu' .* is missing"):
        diff(SHIPPED, b)
    (b / "manifest.json").unlink()
    r = CliRunner().invoke(main, ["diff", str(SHIPPED), str(b)])
    assert r.exit_code == 1 and "no manifest.json" in r.output
