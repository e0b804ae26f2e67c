"""hwsim trace: golden vectors are what the executor computed, replayable from the files alone.

The replay uses the plain-int reference of each register (hwsim.numerics.reference), element by
element, on the values read back from the hex text -- not the datapath code that produced them.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim import api
from hwsim.cli import main
from hwsim.data import load_data
from hwsim.execute.integer import IntegerExecutor
from hwsim.numerics import reference as ref
from hwsim.trace import TraceError, read_manifest, trace
from hwsim.trace.files import Array, hex_text, parse_hex, read_array

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "traces" / "rescnn"
SHIPPED_TFLITE = ROOT / "traces" / "rescnn-tflite"
SHIPPED_SHIFT = ROOT / "traces" / "vit-token-shift"
SHIFT_ARGS = ["trace", "vit", "--scheme", "per-token-shift", "--shift-base", "runtime",
              "--register", "pow2", "--only", "/blocks/blocks.1/attn/MatMul_1",
              "--index", "0"]  # fmt: skip
MODELS = [m["name"] for m in api.shipped_models()]
REGISTERS = [("per-tensor", "ort"), ("per-channel", "tflite"), ("per-tensor", "tflite-single"),
             ("per-channel", "pow2")]  # fmt: skip


def _load(d: Path, doc: dict, e: dict, what: str) -> np.ndarray:
    """The entry's values from its hex text, checked equal to its .npy."""
    npy = read_array(d, doc, e, what)
    if e["encoding"] is None:
        return npy
    vals = parse_hex((d / e["hex"]).read_text(), e["bits"], e["encoding"], e["shape"])
    assert np.array_equal(vals, npy.astype(vals.dtype)), what
    return vals


def _requant(kind: str, rounding, t: int, mult, shift: int) -> int:
    if kind == "ort":
        return ref.ort_requantize(t, Fraction(float(mult)))
    if kind == "pow2":
        return ref.pow2_requantize(t, shift, rounding)
    single = "single" if kind == "tflite-single" else "double"
    return ref.multiply_by_quantized_multiplier(t, int(mult), shift, single)


def replay(d: Path) -> int:
    """Requantize every replayed MAC layer's recorded accumulators with its recorded bias and
    register (plain ints), assert the recorded output; the number of layers replayed. A
    per-sample layer's register (``range``) is indexed by sample: its recorded range ``a_n``
    must be the largest ``|t|`` (``max(t, 0)`` unsigned) of the sample and requantize within
    the output format (eq. 18 / 19)."""
    doc = read_manifest(d)
    done = 0
    for layer in doc["layers"]:
        if not layer.get("replayed"):
            continue
        name = layer["name"]
        acc = _load(d, doc, layer["acc"], f"{name} acc")
        out_e = doc["tensors"][layer["output"]]
        out = _load(d, doc, out_e, f"{name} output")
        if layer["op"] == "dense" and out.ndim > 2:
            out = out.reshape(out.shape[0], -1, out.shape[-1]).transpose(0, 2, 1)
        N, C = acc.shape[:2]
        bias = np.zeros((N, C), np.int64)
        if "bias" in layer:
            bias = np.broadcast_to(_load(d, doc, layer["bias"], f"{name} bias"), (N, C))
        per_sample = "range" in layer
        reg = layer["range"]["register"] if per_sample else layer["register"]
        mult = _load(d, doc, reg["multiplier"], f"{name} multiplier")
        shift = _load(d, doc, reg["shift"], f"{name} shift")
        assert reg["axis"] in ((0,) if per_sample else ("per-tensor", 1))
        a = layer["accumulator"]
        bits, signed = out_e["bits"], out_e["encoding"] == "twos-complement"
        top = {}
        align = None
        if per_sample and "align" in layer["range"]:  # per-channel weight scales to one grid
            al = layer["range"]["align"]
            align = (al, _load(d, doc, al["multiplier"], f"{name} align"),
                     _load(d, doc, al["shift"], f"{name} align shift"))  # fmt: skip
        for (n, c), _ in np.ndenumerate(bias):
            k = n if per_sample else c
            m = mult.flat[0] if mult.size == 1 else mult[k]
            s = int(shift.flat[0] if shift.size == 1 else shift[k])
            for idx, v in np.ndenumerate(acc[n, c]):
                t = int(v) + int(bias[n, c])
                if a["overflow"] == "wrap":
                    t = ref.wrap(t, a["bits"], a["signed"])
                else:
                    t = ref.saturate(t, a["bits"], a["signed"])
                if align is not None:
                    al, am, ash = align
                    t = _requant(al["kind"], al["rounding"], t, am[c], int(ash[c]))
                top[n] = max(top.get(n, 0), abs(t) if signed else max(t, 0))
                y = _requant(reg["kind"], reg["rounding"], t, m, s) + out_e["zero_point"]
                assert ref.saturate(y, bits, signed) == out[(n, c) + idx], (name, n, c, idx)
        if per_sample:
            amax = _load(d, doc, layer["range"]["max"], f"{name} range max")
            qmax = (1 << (bits - 1)) - 1 if signed else (1 << bits) - 1
            for n in range(N):
                assert int(amax[n]) == top[n], (name, n)
                fit = _requant(reg["kind"], reg["rounding"], top[n], mult[n], int(shift[n]))
                assert fit <= qmax, (name, n, fit)
        done += 1
    return done


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("scheme,register", REGISTERS)
def test_every_mac_layer_replays_from_its_files(tmp_path, model, scheme, register):
    program = api.quantize_model(model, scheme, calib="digits-train", register=register)
    doc = trace(program, "digits", ["5"], tmp_path / "t")
    mac = [layer for layer in doc["layers"] if layer["op"] in ("conv", "dense")]
    assert mac and all(layer["replayed"] for layer in mac)
    assert replay(tmp_path / "t") == len(mac)
    # and the recorded tensors are the executor's own run of that sample
    x = load_data("digits", program.graph.input_shape).x[5:6]
    env = IntegerExecutor(program).run(x, keep_all=True)
    got = read_manifest(tmp_path / "t")
    for name, e in got["tensors"].items():
        v = env[name]
        want = v.q if hasattr(v, "q") else v
        assert np.array_equal(read_array(tmp_path / "t", got, e, name), want), name


@pytest.mark.parametrize(
    "model,scheme,register,granularity,base",
    [("mlp", "per-sample", "tflite", "tensor", "static"),
     ("rescnn", "per-sample", "ort", "tensor", "static"),
     ("rescnn", "per-sample-shift", "tflite", "tensor", "static"),
     ("mlp", "per-sample-shift", "pow2", "tensor", "static"),
     ("rescnn", "per-sample", "tflite", "channel", "static"),
     ("mlp", "per-sample-shift", "ort", "channel", "static"),
     ("rescnn", "per-sample-shift", "tflite", "tensor", "runtime"),
     ("mlp", "per-sample-shift", "pow2", "channel", "runtime")],
)  # fmt: skip
def test_per_sample_layers_replay_from_their_range_registers(
    tmp_path, model, scheme, register, granularity, base
):
    kw = {"shift_base": base} if scheme == "per-sample-shift" else {}
    program = api.quantize_model(model, scheme, calib="digits-train", register=register,
                                 granularity=granularity, **kw)  # fmt: skip
    doc = trace(program, "digits", ["3:6"], tmp_path / "t")
    mac = [layer for layer in doc["layers"] if layer["op"] in ("conv", "dense")]
    assert mac and all(layer["replayed"] and "range" in layer for layer in mac)
    assert all(("align" in layer["range"]) == (granularity == "channel") for layer in mac)
    assert all(("runtime_base" in layer["range"]) == (base == "runtime") for layer in mac)
    assert replay(tmp_path / "t") == len(mac)
    x = load_data("digits", program.graph.input_shape).x[3:6]
    env = IntegerExecutor(program).run(x, keep_all=True)
    for layer in mac:
        assert np.array_equal(read_array(tmp_path / "t", read_manifest(tmp_path / "t"),
                                         doc["tensors"][layer["output"]], "out"),
                              env[layer["output"]].q)  # fmt: skip


def test_checked_in_trace_regenerates_byte_for_byte(tmp_path):
    for shipped, extra in ((SHIPPED, []), (SHIPPED_TFLITE, ["--register", "tflite"])):
        out = tmp_path / shipped.name
        r = CliRunner().invoke(main, ["trace", "rescnn", "--index", "0", "-o", str(out), *extra])
        assert r.exit_code == 0, r.output
        names = sorted(p.name for p in shipped.iterdir())
        assert names == sorted(p.name for p in out.iterdir())
        for name in names:
            assert (shipped / name).read_bytes() == (out / name).read_bytes(), name


def test_checked_in_shift_trace_regenerates_byte_for_byte(tmp_path):
    out = tmp_path / SHIPPED_SHIFT.name
    r = CliRunner().invoke(main, [*SHIFT_ARGS, "-o", str(out)])
    assert r.exit_code == 0 and "1 per-sample-shift accumulators" in r.output, r.output
    names = sorted(p.name for p in SHIPPED_SHIFT.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (SHIPPED_SHIFT / name).read_bytes() == (out / name).read_bytes(), name


def _overflow(v: int, acc: dict) -> int:
    """``v`` on the accumulator ``acc`` (a manifest ``accumulator``): wrapped or clamped."""
    lo, hi = -(1 << (acc["bits"] - 1)), (1 << (acc["bits"] - 1)) - 1
    if acc["overflow"] == "saturate":
        return min(max(v, lo), hi)
    return (v - lo) % (1 << acc["bits"]) + lo


def _shift_acc_plain(d: Path) -> int:
    """Every ``shift_acc`` entry of trace ``d`` recomputed from its hex files in plain ints
    (eq. 13-14: one product per group on the accumulator, shifted right by the group's shift
    with the recorded rounding (``reference.round_shift``), summed in token order on the
    accumulator with its overflow rule) must equal its recorded accumulators; returns how many
    groups were shifted."""
    doc = read_manifest(d)
    shifted = 0
    for layer in doc["layers"]:
        sa = layer.get("shift_acc")
        if sa is None:
            continue
        ta, tb = (doc["tensors"][t] for t in layer["inputs"])
        A = _load(d, doc, ta, "a") - ta["zero_point"]
        B = _load(d, doc, tb, "b") - tb["zero_point"]
        sh = _load(d, doc, sa["shifts"], "shifts")
        want = _load(d, doc, sa["acc"], "acc")
        acc = sa["accumulator"]
        assert acc["signed"]
        K = sa["K"]
        A, B = A.reshape(-1, sa["M"], K), B.reshape(-1, K, sa["N"])
        sh, want = sh.reshape(-1, K), want.reshape(-1, sa["M"], sa["N"])
        for g, m, n in np.ndindex(want.shape):
            f = 0
            for k in range(K):
                p = _overflow(int(A[g, m, k]) * int(B[g, k, n]), acc)
                f = _overflow(f + ref.round_shift(p, int(sh[g, k]), sa["rounding"]), acc)
            assert f == want[g, m, n], (layer["name"], g, m, n)
        shifted += int(np.count_nonzero(sh))
    return shifted


def test_shift_acc_is_eq_13_14_in_plain_ints(tmp_path):
    assert _shift_acc_plain(SHIPPED_SHIFT) == 64
    program = api.quantize_model(
        "vit", "per-token-shift", calib="digits-train", register="pow2", rounding="half_even",
        shift_base="runtime", acc_bits=12, overflow="saturate",
    )  # fmt: skip
    names = ["/blocks/blocks.0/attn/MatMul_1", "/blocks/blocks.1/attn/MatMul_1"]
    doc = trace(program, "digits", ["5"], tmp_path / "t", layers=names)
    assert all("shift_acc" in la for la in doc["layers"])
    assert _shift_acc_plain(tmp_path / "t") > 0


def test_checked_in_traces_replay():
    assert replay(SHIPPED) == 5
    assert replay(SHIPPED_TFLITE) == 5


def test_hex_is_twos_complement_at_the_declared_width():
    assert hex_text(Array.integer(np.array([-128, -1, 0, 127]), 8, True)) == "80\nff\n00\n7f\n"
    assert hex_text(Array.integer(np.array([-8, 7]), 4, True)) == "8\n7\n"
    assert hex_text(Array.integer(np.array([255]), 8, False)) == "ff\n"
    assert hex_text(Array.integer(np.array([-(2**31)]), 32, True)) == "80000000\n"
    assert hex_text(Array.float32_bits(np.float32(1.0))) == "3f800000\n"
    with pytest.raises(TraceError, match="do not fit 8-bit"):
        hex_text(Array.integer(np.array([128]), 8, True))
    v = np.array([[-5, 3], [2**20, -(2**23)]])
    assert np.array_equal(parse_hex(hex_text(Array.integer(v, 24, True)), 24,
                                    "twos-complement", (2, 2)), v)  # fmt: skip


def test_several_samples_and_layer_selection(tmp_path):
    out = tmp_path / "t"
    r = CliRunner().invoke(main, ["trace", "mlp", "--index", "2:4", "--index", "7",
                                  "--only", "/1/Gemm", "-o", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = read_manifest(out)
    assert doc["indices"] == [2, 3, 7] and [la["name"] for la in doc["layers"]] == ["/1/Gemm"]
    assert doc["layers"][0]["acc"]["shape"][0] == 3
    assert replay(out) == 1


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--index", "9999"], "samples 0..598"),
        (["--index", "a"], "give an integer"),
        (["--only", "nope"], "unknown layer"),
    ],
)
def test_bad_trace_arguments_are_clear_errors(tmp_path, args, msg):
    r = CliRunner().invoke(main, ["trace", "mlp", "-o", str(tmp_path / "t"), *args])
    assert r.exit_code == 1 and msg in r.output


def test_write_is_atomic_and_never_replaces_a_non_trace(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "keep.txt").write_text("mine")
    program = api.quantize_model("mlp", "per-tensor", calib="digits-train")
    with pytest.raises(TraceError, match="not a trace directory"):
        trace(program, "digits", None, tmp_path / "f")
    assert (tmp_path / "f" / "keep.txt").read_text() == "mine"
    trace(program, "digits", None, tmp_path / "t")
    trace(program, "digits", ["1"], tmp_path / "t")  # replaces a trace
    assert json.loads((tmp_path / "t" / "manifest.json").read_text())["indices"] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f", "t"]  # no temporaries left


def test_write_dir_keeps_the_previous_trace_when_the_swap_fails(tmp_path, monkeypatch):
    import os

    from hwsim.trace import files

    out = tmp_path / "t"
    files.write_dir(out, {"format": "x"}, {"a.npy": b"old"})
    real, calls = os.replace, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new trace's rename into place
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(files.os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        files.write_dir(out, {"format": "x"}, {"a.npy": b"new"})
    monkeypatch.setattr(files.os, "replace", real)
    assert (out / "a.npy").read_bytes() == b"old" and (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]
    files.write_dir(out, {"format": "x"}, {"a.npy": b"new"})
    assert (out / "a.npy").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t"]


@pytest.mark.parametrize("key", ["name", "op", "output"])
def test_read_manifest_names_a_layer_field_missing(tmp_path, key):
    import shutil

    d = tmp_path / "t"
    shutil.copytree(SHIPPED, d)
    doc = json.loads((d / "manifest.json").read_text())
    del doc["layers"][1][key]
    (d / "manifest.json").write_text(json.dumps(doc))
    name = "/2/Relu" if key != "name" else 1
    with pytest.raises(TraceError, match=f"layer {name!r}: field {key!r} missing"):
        read_manifest(d)


@pytest.mark.parametrize(
    "args,replayed",
    [(["--order", "tiled", "--tile-rows", "8", "--tile-bits", "20"], 5),
     (["--register", "pow2", "--rounding", "stochastic"], 0),
     (["--scheme", "per-sample", "--register", "pow2", "--rounding", "stochastic"], 0)],
)  # fmt: skip
def test_tiled_and_stochastic_layers_trace(tmp_path, args, replayed):
    """A tile register narrower than the accumulator has no AVX2 form (``avx2`` null); a
    stochastic register's draws are not in the trace, so its layers are recorded, not
    replayed (both were crashes)."""
    out = tmp_path / "t"
    r = CliRunner().invoke(main, ["trace", "rescnn", "--index", "0:2", "-o", str(out), *args])
    assert r.exit_code == 0, r.output
    doc = read_manifest(out)
    mac = [la for la in doc["layers"] if "acc" in la]
    assert sum(la["replayed"] for la in mac) == replayed == replay(out)
    if "tiled" in args:
        assert all(la["avx2"] is None for la in mac)


def test_avx2_trace_is_the_avx2_executors_run(tmp_path):
    """``--isa avx2``: every traced tensor is the AVX2 executor's, the accumulators replay to
    its outputs, and where pairs saturate (rescnn's first conv) its output is the exact trace's
    recorded ``avx2`` output of that layer."""
    out = tmp_path / "t"
    r = CliRunner().invoke(main, ["trace", "rescnn", "--index", "0", "--isa", "avx2", "-o",
                                  str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert replay(out) == 5
    doc = read_manifest(out)
    program = api.quantize_model("rescnn", "per-tensor", calib="digits-train")
    x = load_data("digits", program.graph.input_shape).x[[0]]
    env = IntegerExecutor(program, isa="avx2").run(x, keep_all=True)
    for t, e in doc["tensors"].items():
        np.testing.assert_array_equal(np.load(out / e["npy"]), env[t].q, err_msg=t)
    shipped = read_manifest(SHIPPED)
    conv = next(la for la in shipped["layers"] if la["name"] == "/0/Conv")
    assert conv["avx2"]["pair_saturations"] > 0
    ours = next(la for la in doc["layers"] if la["name"] == "/0/Conv")
    assert ours["avx2"]["pair_saturations"] == conv["avx2"]["pair_saturations"]
    np.testing.assert_array_equal(
        np.load(SHIPPED / conv["avx2"]["output"]["npy"]),
        np.load(out / doc["tensors"][ours["output"]]["npy"]),
    )
    acc_exact = np.load(SHIPPED / conv["acc"]["npy"])
    assert not np.array_equal(np.load(out / ours["acc"]["npy"]), acc_exact)
