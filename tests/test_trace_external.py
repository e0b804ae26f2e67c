"""hwsim diff of a trace against external per-layer dumps (``.npy`` named by ONNX tensor) and
against onnxruntime's intermediate outputs: the recorded AVX2 case (int16 pair saturation) is
localised and classified, a live onnxruntime agrees with hwsim on QDQ models of the shipped
models, and bad dumps folders are clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from hwsim import api
from hwsim.cli import main
from hwsim.data import load_data
from hwsim.datapath.isa import Isa, host_isa
from hwsim.trace.diff import PAIR_SATURATION, diff
from hwsim.trace.external import dump_file, read_dumps, write_dumps
from hwsim.trace.files import TraceError

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ROOT / "tests" / "conformance" / "ort_goldens" / "archs"
MODEL = ARCHS / "resnet18_pertensor.onnx"
INPUT = ARCHS / "resnet18_pertensor_input.npz"
DATA = ROOT / "tests" / "data" / "trace"
AVX2 = DATA / "resnet18_avx2"


@pytest.fixture(scope="module")
def resnet_trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r18") / "t"
    r = CliRunner().invoke(main, ["trace", str(MODEL), "--data", str(INPUT), "--index", "0",
                                  "-o", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _initializer(model, name):
    for i in model.graph.initializer:
        if i.name == name:
            return numpy_helper.to_array(i)
    raise KeyError(name)


def _first_split(model, exact, avx2):
    """The first QuantizeLinear output, in the file's node order, where the two recordings of
    onnxruntime differ: (ONNX name, first differing index, exact value, AVX2 value)."""
    for n in model.graph.node:
        if n.op_type != "QuantizeLinear":
            continue
        key = dump_file(n.output[0])[:-4]
        if key not in exact:
            continue
        e, a = exact[key], avx2[n.output[0]]
        if not np.array_equal(e, a):
            idx = tuple(int(i) for i in np.argwhere(e != a)[0])
            return n.output[0], idx, int(e[idx]), int(a[idx])
    return None


def _stem_sums(model, xq, f, oy, ox):
    """The stem convolution's sum at output (0, f, oy, ox) in plain ints: exact, and as MLAS's
    AVX2 kernel forms it -- NHWC im2col column (i*kw + j)*C + c, adjacent pairs summed in a
    saturating int16 (docs/numerics.md eq. 16) -- on the raw uint8 input (padding holds the
    raw zero point) and raw int8 weights."""
    conv = next(n for n in model.graph.node if n.name == "/stem/stem.0/Conv")
    dq = next(n for n in model.graph.node if n.output[0] == conv.input[1])
    w = _initializer(model, dq.input[0]).astype(int)
    zx = int(_initializer(model, "input_zero_point"))
    attrs = {a.name: list(a.ints) for a in conv.attribute}
    s, p = attrs["strides"][0], attrs["pads"][0]
    _, c_in, kh, kw = w.shape
    h, wd = xq.shape[2:]
    xs, ws = [], []
    for i in range(kh):
        for j in range(kw):
            for c in range(c_in):
                y, x = oy * s - p + i, ox * s - p + j
                xs.append(int(xq[0, c, y, x]) if 0 <= y < h and 0 <= x < wd else zx)
                ws.append(int(w[f, c, i, j]))
    while len(xs) % 4:
        xs.append(0)
        ws.append(0)
    exact = sum(a * b for a, b in zip(xs, ws, strict=True))
    pairs = [xs[k] * ws[k] + xs[k + 1] * ws[k + 1] for k in range(0, len(xs), 2)]
    sat = sum(min(max(v, -32768), 32767) for v in pairs)
    return exact, sat


def test_avx2_dumps_localise_and_classify_int16_pair_saturation(resnet_trace):
    info = json.loads((AVX2 / "dumps.json").read_text())
    model = onnx.load(str(MODEL))
    assert info["model_sha256"] == json.loads((resnet_trace / "manifest.json").read_text())[
        "model_sha256"]  # fmt: skip
    assert info["indices"] == [0]
    avx2 = {name: np.load(AVX2 / f) for f, name in info["tensors"].items()}
    with np.load(DATA / "resnet18_exact.npz") as z:
        exact = dict(z)
    # expected, from the two onnxruntime recordings alone
    name, idx, e, a = _first_split(model, exact, avx2)
    assert name == "/stem/stem.2/Relu_output_0_QuantizeLinear_Output"
    # ... and the plain-int sums there: the exact and the pair-saturated one differ
    xq = exact[dump_file("input_QuantizeLinear_Output")[:-4]]
    s_exact, s_sat = _stem_sums(model, xq, idx[1], idx[2], idx[3])
    assert s_exact != s_sat
    # hwsim's exact trace is onnxruntime's exact (VNNI) recording, tensor for tensor
    doc = json.loads((resnet_trace / "manifest.json").read_text())
    onnx_of = {t: e_["onnx"] for t, e_ in doc["tensors"].items() if e_.get("onnx")}
    assert len(onnx_of) == len(info["tensors"]) == 33
    for t, o in onnx_of.items():
        got = np.load(resnet_trace / doc["tensors"][t]["npy"])
        np.testing.assert_array_equal(got, exact[dump_file(o)[:-4]], err_msg=t)
    d = diff(resnet_trace, AVX2)
    assert (d.layer, d.what, d.tensor, d.index, d.a, d.b) == ("/stem/stem.0/Conv", "output",
                                                              name, idx, e, a)  # fmt: skip
    assert d.count == int(np.count_nonzero(exact[dump_file(name)[:-4]] != avx2[name]))
    assert d.cause == PAIR_SATURATION
    r = CliRunner().invoke(main, ["diff", str(resnet_trace), str(AVX2)])
    assert r.exit_code == 1
    assert f"layer '/stem/stem.0/Conv' (output, ONNX tensor {name!r})" in r.output
    assert f"at index {list(idx)}: A={e} B={a}" in r.output
    assert f"cause: {PAIR_SATURATION}" in r.output


def test_qoperator_avx2_dumps_name_the_second_conv(tmp_path):
    """A QOperator file traced by its node interpreter: its tensors are its ONNX tensors; the
    recorded AVX2 run parts from the exact one at conv2 (conv1's weights cannot saturate a
    pair), and hwsim diff says so."""
    model = onnx.load(str(DATA / "qlinearconv2.onnx"))
    dumps = DATA / "qlinearconv2_avx2"
    info = json.loads((dumps / "dumps.json").read_text())
    avx2 = {name: np.load(dumps / f) for f, name in info["tensors"].items()}
    with np.load(DATA / "qlinearconv2_exact.npz") as z:
        exact = dict(z)
    first = None
    for n in model.graph.node:  # the file's order, from the recordings alone
        o = n.output[0]
        if not np.array_equal(exact[dump_file(o)[:-4]], avx2[o]):
            first = (n.name, o, tuple(int(i) for i in np.argwhere(exact[o] != avx2[o])[0]))
            break
    assert first[:2] == ("conv2", "y")
    t = tmp_path / "t"
    r = CliRunner().invoke(main, ["trace", str(DATA / "qlinearconv2.onnx"), "--data",
                                  str(DATA / "qlinearconv2_input.npz"), "--index", "0:2",
                                  "-o", str(t)])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads((t / "manifest.json").read_text())
    assert doc["model_sha256"] == info["model_sha256"]
    for name, e in doc["tensors"].items():  # hwsim's exact run is onnxruntime's exact one
        np.testing.assert_array_equal(np.load(t / e["npy"]), exact[dump_file(name)[:-4]])
    d = diff(t, dumps)
    idx = first[2]
    assert (d.layer, d.tensor, d.index, d.a, d.b) == ("conv2", "y", idx, int(exact["y"][idx]),
                                                      int(avx2["y"][idx]))  # fmt: skip
    assert d.cause == PAIR_SATURATION
    r = CliRunner().invoke(main, ["diff", str(t), str(dumps)])
    assert r.exit_code == 1 and f"cause: {PAIR_SATURATION}" in r.output


def test_dumps_of_the_trace_itself_match(resnet_trace, tmp_path):
    info = json.loads((AVX2 / "dumps.json").read_text())
    doc = json.loads((resnet_trace / "manifest.json").read_text())
    arrays = {e["onnx"]: np.load(resnet_trace / e["npy"]) for e in doc["tensors"].values()
              if e.get("onnx")}  # fmt: skip
    out = write_dumps(tmp_path / "self", arrays, {"what": "the trace's own tensors"})
    assert sorted(p.name for p in out.glob("*.npy")) == sorted(info["tensors"])
    assert diff(resnet_trace, out) is None
    r = CliRunner().invoke(main, ["diff", str(resnet_trace), str(out)])
    assert r.exit_code == 0 and "no divergence" in r.output


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.it = iter([{"input": x[i : i + 128]} for i in range(0, len(x), 128)])

    def get_next(self):
        return next(self.it, None)


@pytest.mark.parametrize(
    "model,act,fmt",
    [("mlp", "u8", "qdq"), ("rescnn", "u8", "qdq"), ("rescnn", "s8", "qdq"),
     ("mlp", "u8", "qoperator"), ("mlp", "s8", "qoperator")],
)  # fmt: skip
def test_live_onnxruntime_agrees_on_quantized_shipped_models(tmp_path, model, act, fmt):
    qdq = tmp_path / f"{model}_{act}.onnx"
    quantize_static(str(ROOT / "models" / f"{model}.onnx"), str(qdq),
                    _Reader(load_data("digits-train").x[:512]),
                    quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8)  # fmt: skip
    t, dumps = tmp_path / "t", tmp_path / "ort"
    r = CliRunner().invoke(main, ["trace", str(qdq), "--index", "0:16", "-o", str(t)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["diff", str(t), "--against", "onnxruntime",
                                  "--save-dumps", str(dumps)])  # fmt: skip
    doc = json.loads((t / "manifest.json").read_text())
    mapped = {e["onnx"] for e in doc["tensors"].values() if e.get("onnx")}
    # every layer's output is compared, not a vacuous pass
    assert all(doc["tensors"][la["output"]].get("onnx") for la in doc["layers"])
    assert len(list(dumps.glob("*.npy"))) == len(mapped)
    if host_isa() is Isa.EXACT:
        assert r.exit_code == 0 and "no divergence" in r.output, r.output
    else:  # an AVX2-only CPU: onnxruntime's own sums may saturate int16 pairs
        assert r.exit_code == 0 or f"cause: {PAIR_SATURATION}" in r.output, r.output


def _copy(tmp_path) -> Path:
    b = tmp_path / "b"
    shutil.copytree(AVX2, b)
    return b


def test_bad_dumps_folders_are_clear_errors(resnet_trace, tmp_path):
    stem = "_stem_stem.2_Relu_output_0_QuantizeLinear_Output.npy"
    onnx_name = "/stem/stem.2/Relu_output_0_QuantizeLinear_Output"
    b = _copy(tmp_path)
    (b / stem).unlink()
    with pytest.raises(TraceError, match=f"no '{stem}' for ONNX tensor '{onnx_name}'"):
        diff(resnet_trace, b)
    shutil.rmtree(b)
    b = _copy(tmp_path)
    np.save(b / "not_a_tensor.npy", np.zeros(3, np.uint8))
    with pytest.raises(TraceError, match="'not_a_tensor.npy' names no traced tensor of the model"):
        diff(resnet_trace, b)
    r = CliRunner().invoke(main, ["diff", str(resnet_trace), str(b)])
    assert r.exit_code == 1 and "read as a dumps folder" in r.output
    shutil.rmtree(b)
    b = _copy(tmp_path)
    np.save(b / stem, np.load(AVX2 / stem).astype(np.float32))
    with pytest.raises(TraceError, match=f"{stem}: dtype float32, expected uint8"):
        diff(resnet_trace, b)
    np.save(b / stem, np.load(AVX2 / stem)[:, :8])
    with pytest.raises(TraceError, match=r"shape \[1, 8, 32, 32\], expected \[1, 16, 32, 32\]"):
        diff(resnet_trace, b)
    (b / stem).write_bytes(b"garbage")
    with pytest.raises(TraceError, match=f"{stem}: not a .npy array"):
        diff(resnet_trace, b)


def test_dumps_of_another_model_or_samples_are_an_error(resnet_trace, tmp_path):
    for key, value in (("model_sha256", "0" * 64), ("indices", [1])):
        b = _copy(tmp_path)
        info = json.loads((b / "dumps.json").read_text())
        info[key] = value
        (b / "dumps.json").write_text(json.dumps(info))
        with pytest.raises(TraceError, match=f"dumps.json: {key} .* another model or other"):
            diff(resnet_trace, b)
        shutil.rmtree(b)


def test_dump_names_that_collide_are_an_error():
    with pytest.raises(TraceError, match="'a/b' and 'a:b' both dump to 'a_b.npy'"):
        read_dumps(DATA, {"a/b": ([1], "uint8"), "a:b": ([1], "uint8")})
    assert (
        dump_file("/layers/layers.0/relu/Relu_output_0")
        == "_layers_layers.0_relu_Relu_output_0.npy"
    )


def test_against_onnxruntime_bad_requests(resnet_trace, tmp_path):
    shipped = ROOT / "traces" / "rescnn"  # a float model quantized by hwsim
    with pytest.raises(Exception, match="float model quantized by hwsim"):
        api.diff(shipped, against="onnxruntime")
    with pytest.raises(Exception, match="sha256"):
        api.diff(resnet_trace, against="onnxruntime", model=ARCHS / "resnet18_perchannel.onnx")
    r = CliRunner().invoke(main, ["diff", str(resnet_trace), str(AVX2), "--against",
                                  "onnxruntime"])  # fmt: skip
    assert r.exit_code == 1 and "not both" in r.output
    r = CliRunner().invoke(main, ["diff", str(resnet_trace)])
    assert r.exit_code == 1 and "--against onnxruntime" in r.output


def test_rounding_tie_read_off_the_trace_alone(tmp_path):
    """A float model's trace names its tensors by the model's own (float) tensor names; B's
    dumps carry no registers, so the tie is found from A's accumulators and register."""
    traces = {}
    for mode in ("half_away", "half_even"):
        out = tmp_path / mode
        r = CliRunner().invoke(main, ["trace", "rescnn", "--index", "0", "--register", "pow2",
                                      "--rounding", mode, "-o", str(out)])  # fmt: skip
        assert r.exit_code == 0, r.output
        traces[mode] = out
    doc = json.loads((traces["half_even"] / "manifest.json").read_text())
    arrays = {e["onnx"]: np.load(traces["half_even"] / e["npy"]) for e in doc["tensors"].values()
              if e.get("onnx")}  # fmt: skip
    assert "/1/BatchNormalization_output_0" in arrays
    b = write_dumps(tmp_path / "b", arrays)
    d = diff(traces["half_away"], b)
    assert (d.layer, d.what, d.cause) == ("/0/Conv", "output", "rounding tie")
    assert abs(d.a - d.b) == 1


@pytest.fixture(scope="module")
def resnet_avx2_trace(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("r18avx2") / "t"
    r = CliRunner().invoke(main, ["trace", str(MODEL), "--data", str(INPUT), "--index", "0",
                                  "--isa", "avx2", "-o", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def test_avx2_trace_is_onnxruntimes_avx2_recording(resnet_avx2_trace, resnet_trace):
    """``hwsim trace --isa avx2`` of the recorded case equals onnxruntime's own AVX2 run
    (under qemu Haswell) on all 33 tensors; its pair counters are the exact trace's avx2
    recomputation's (269 in the stem, 6 in layers.4/conv2)."""
    doc = json.loads((resnet_avx2_trace / "manifest.json").read_text())
    info = json.loads((AVX2 / "dumps.json").read_text())
    assert doc["isa"] == "avx2" and "isa" not in json.loads(
        (resnet_trace / "manifest.json").read_text())  # fmt: skip
    onnx_of = {t: e_["onnx"] for t, e_ in doc["tensors"].items() if e_.get("onnx")}
    assert len(onnx_of) == len(info["tensors"]) == 33
    for t, o in onnx_of.items():
        got = np.load(resnet_avx2_trace / doc["tensors"][t]["npy"])
        np.testing.assert_array_equal(got, np.load(AVX2 / dump_file(o)), err_msg=t)
    assert diff(resnet_avx2_trace, AVX2) is None
    exact = {la["name"]: la for la in json.loads((resnet_trace / "manifest.json").read_text())[
        "layers"]}  # fmt: skip
    saturated = {}
    for la in doc["layers"]:
        if la.get("avx2"):
            assert "output" not in la["avx2"]  # the trace's own output is the avx2 one
            want = exact[la["name"]]["avx2"]
            assert la["avx2"]["pair_saturations"] == want["pair_saturations"], la["name"]
            if la["avx2"]["pair_saturations"]:
                saturated[la["name"]] = la["avx2"]["pair_saturations"]
    assert saturated == {"/stem/stem.0/Conv": 269, "/layers/layers.4/conv2/Conv": 6}


def test_diff_of_exact_and_avx2_traces_names_pair_saturation(resnet_avx2_trace, resnet_trace):
    d = diff(resnet_trace, resnet_avx2_trace)
    assert (d.layer, d.what, d.cause) == ("/stem/stem.0/Conv", "acc", PAIR_SATURATION)
    r = CliRunner().invoke(main, ["diff", str(resnet_avx2_trace), str(resnet_trace)])
    assert r.exit_code == 1
    assert "layer '/stem/stem.0/Conv' (acc)" in r.output and PAIR_SATURATION in r.output
    # two exact traces of another configuration never blame the pairs
    assert diff(resnet_trace, resnet_trace) is None


def test_isa_avx2_trace_of_a_qoperator_file_is_refused(tmp_path):
    r = CliRunner().invoke(main, ["trace", str(DATA / "qlinearconv2.onnx"), "--data",
                                  str(DATA / "qlinearconv2_input.npz"), "--isa", "avx2",
                                  "-o", str(tmp_path / "t")])  # fmt: skip
    assert r.exit_code == 1 and "no --isa" in r.output, r.output
    r = CliRunner().invoke(main, ["trace", "mlp", "--isa", "sse", "-o", str(tmp_path / "u")])
    assert r.exit_code == 2 and "'sse' is not one of 'exact', 'avx2', 'auto'" in r.output, r.output
