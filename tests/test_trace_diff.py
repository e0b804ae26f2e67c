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


def _manifest(d: Path, fn) -> None:
    doc = json.loads((d / "manifest.json").read_text())
    fn(doc)
    (d / "manifest.json").write_text(json.dumps(doc))


def _set_acc_bits(bits):
    def fn(doc):
        doc["layers"][0]["accumulator"]["bits"] = bits

    return fn


def test_diff_of_64_bit_accumulators_is_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(SHIPPED, d)
        _manifest(d, _set_acc_bits(64))

    def bump(q):
        q[0, 1, 2, 3] += 1
        return q

    _edit(b, "L000_0_Conv.acc.npy", bump)
    d = diff(a, b)  # an OverflowError (1 << 64 into int64) before
    assert (d.layer, d.what, d.index, d.count, d.cause) == ("/0/Conv", "acc", (0, 1, 2, 3), 1,
                                                            "unclassified")  # fmt: skip
    assert d.b == d.a + 1

    # uint64 accumulators beyond int64 keep their values; a difference of exactly 2^64 is a wrap
    def wide(v):
        def fn(q):
            q = q.astype(np.uint64)
            q[0, 0, 0, 0] = v
            return q

        return fn

    def u64(doc):
        doc["layers"][0]["acc"]["dtype"] = "uint64"

    for d_, v in ((a, 2**64 - 1), (b, 2**63)):
        _edit(d_, "L000_0_Conv.acc.npy", wide(v))
        _manifest(d_, u64)
    d = diff(a, b)
    assert (d.index, d.a, d.b) == ((0, 0, 0, 0), 2**64 - 1, 2**63)
    _manifest(a, _set_acc_bits(63))
    _manifest(b, _set_acc_bits(63))
    _edit(a, "L000_0_Conv.acc.npy", wide(2**63 + 5))
    _edit(b, "L000_0_Conv.acc.npy", wide(5))

    def unbump(q):
        q[0, 1, 2, 3] -= np.uint64(1)
        return q

    _edit(b, "L000_0_Conv.acc.npy", unbump)
    d = diff(a, b)
    assert (d.a, d.b, d.cause) == (2**63 + 5, 5, "accumulator overflow")


def test_saturation_checks_b_against_bs_format(tmp_path):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    doc = json.loads((SHIPPED / "manifest.json").read_text())
    out = doc["layers"][0]["output"]
    npy = doc["tensors"][out]["npy"]
    y = np.load(SHIPPED / npy)
    idx = tuple(int(i) for i in np.argwhere((y >= 2) & (y <= 100))[0])

    def rail(q):  # B's output format is 7 bits wide; one element at its rail (127)
        q[idx] = 127
        return q

    _edit(b, npy, rail)
    _manifest(b, lambda doc: doc["tensors"][out].__setitem__("bits", 7))
    d = diff(SHIPPED, b)
    assert (d.layer, d.what, d.index, d.b) == ("/0/Conv", "output", idx, 127)
    assert d.cause == "saturation/clamp"


@pytest.mark.parametrize(
    "path,key",
    [(("layers", 0), "name"), (("layers", 0), "op"), (("layers", 0), "output"),
     (("layers", 0, "accumulator"), "bits"), (("tensors", "/1/BatchNormalization_output_0"),
                                               "encoding"),
     (("tensors", "/1/BatchNormalization_output_0"), "bits")],
)  # fmt: skip
def test_manifest_entry_missing_a_field_is_a_trace_error(tmp_path, path, key):
    a = tmp_path / "a"
    shutil.copytree(SHIPPED, a)
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)

    def rail(q):  # force a divergence at the first layer (acc) and its output
        q[0, 0, 0, 0] = 255
        return q

    if key == "bits" and path[0] == "layers":
        _edit(b, "L000_0_Conv.acc.npy", rail)
    else:
        _edit(b, "t_1_BatchNormalization_output_0.npy", rail)

    def drop(doc):
        o = doc
        for p in path:
            o = o[p]
        del o[key]

    _manifest(b, drop)
    with pytest.raises(TraceError, match=f"field {key!r} missing"):
        diff(a, b)
    with pytest.raises(TraceError, match=f"field {key!r} missing"):
        diff(b, a)
    r = CliRunner().invoke(main, ["diff", str(a), str(b)])
    assert r.exit_code != 0 and f"field {key!r} missing" in r.output
    assert not isinstance(r.exception, KeyError)


def test_output_tensor_not_in_tensors_is_a_trace_error(tmp_path):
    b = tmp_path / "b"
    shutil.copytree(SHIPPED, b)
    _manifest(b, lambda doc: doc["layers"][0].__setitem__("output", "nope"))
    with pytest.raises(TraceError, match="output tensor 'nope' not in 'tensors'"):
        diff(SHIPPED, b)
