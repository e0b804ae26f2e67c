"""Import of the TFLite int8 models in tests/data/tflite (built by tests/data/make_tflite.py):
NHWC -> NCHW bookkeeping, per-channel weights, fused activations, PAD folding, the shape
subgraph of a Flatten dropped, errors naming the file and operator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tflite

from hwsim.graph import import_model
from hwsim.graph.ir import MAC_OPS, Op
from hwsim.graph.onnx_import import ModelImportError
from hwsim.graph.tflite_import import import_tflite

DATA = Path(__file__).resolve().parent.parent / "data" / "tflite"
MODELS = ("cnn_relu", "cnn_relu6", "cnn_pad_concat", "digits_cnn")


def _tfl_weight(path: Path, op_name: str, k: int):
    """The int8 weight (input 1) of the k-th operator named ``op_name`` read directly."""
    buf = path.read_bytes()
    m = tflite.Model.GetRootAsModel(buf, 0)
    g = m.Subgraphs(0)
    names = {v: n for n, v in vars(tflite.BuiltinOperator).items() if not n.startswith("_")}
    seen = 0
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        oc = m.OperatorCodes(op.OpcodeIndex())
        if names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())] == op_name:
            if seen == k:
                t = g.Tensors(op.Inputs(1))
                raw = m.Buffers(t.Buffer()).DataAsNumpy().tobytes()
                return np.frombuffer(raw, np.int8).reshape(t.ShapeAsNumpy())
            seen += 1
    raise AssertionError(op_name)


@pytest.mark.parametrize("name", MODELS)
def test_models_import_with_every_tensor_quantized(name):
    g = import_model(DATA / f"{name}.tflite")
    assert g.quantized
    layers = g.meta["hwsim"]["layers"]
    assert layers
    for n in g.nodes:  # the default (XNNPACK) interpreter: binary32 requantization in MAC layers
        want = ("ort", "half_even") if n.op in MAC_OPS else ("tflite-single", "half_away")
        assert (layers[n.name]["register"], layers[n.name]["rounding"]) == want
    for n in g.nodes:
        assert n.output in g.act_quant, n.name


def test_nhwc_weights_become_nchw():
    path = DATA / "cnn_relu.tflite"
    g = import_tflite(path)
    conv = next(n for n in g.nodes if n.op is Op.CONV and n.attrs["group"] == 1)
    w = _tfl_weight(path, "CONV_2D", 0)  # (O, kh, kw, I)
    assert np.array_equal(conv.wq.q, w.transpose(0, 3, 1, 2))
    assert conv.wq.per_channel and conv.wq.scale.shape == (w.shape[0],)
    dw = next(n for n in g.nodes if n.op is Op.CONV and n.attrs["group"] > 1)
    wd = _tfl_weight(path, "DEPTHWISE_CONV_2D", 0)  # (1, kh, kw, C)
    assert np.array_equal(dw.wq.q[:, 0], wd[0].transpose(2, 0, 1))
    assert g.input_shape == (3, 16, 16)


def test_flatten_reads_nhwc_order():
    g = import_tflite(DATA / "cnn_relu6.tflite")
    ops = [n.op for n in g.nodes]
    i = ops.index(Op.TRANSPOSE)
    assert g.nodes[i].attrs["perm"] == (0, 2, 3, 1)
    assert ops[i + 1] is Op.RESHAPE and ops[i + 2] is Op.DENSE
    x = np.arange(2 * 8 * 2 * 2).reshape(2, 8, 2, 2)  # NCHW
    nhwc_flat = x.transpose(g.nodes[i].attrs["perm"]).reshape(2, -1)
    assert nhwc_flat[0, :3].tolist() == [0, 4, 8]  # channel fastest, as TFLite


def test_pad_is_folded_into_the_convolution():
    g = import_tflite(DATA / "cnn_pad_concat.tflite")
    quant, first = g.nodes[:2]
    assert quant.op is Op.IDENTITY and quant.attrs["tflite"]["rule"] == "quantize"
    assert first.op is Op.CONV and first.inputs == (quant.output,)
    assert first.attrs["pads"] == (1, 2, 2, 1)  # ZeroPadding2D(((1, 2), (2, 1))), VALID conv


def test_fused_relu_tighter_than_int8_is_a_clip_on_the_integer_bound():
    g = import_tflite(DATA / "cnn_pad_concat.tflite")
    clips = [n for n in g.nodes if n.op is Op.CLIP]
    assert clips
    for c in clips:
        tq = g.act_quant[c.output]
        lo = np.rint(np.float32(c.attrs["min"]) / np.float32(tq.scale)) + tq.zero_point
        assert lo == tq.zero_point  # RELU: the zero point


@pytest.mark.parametrize("kernels", ["xnnpack", "optimized"])
def test_float_input_quantize_is_a_node_with_the_kernels_rounding(kernels):
    g = import_tflite(DATA / "cnn_pad_concat.tflite", kernels)
    rule = g.nodes[0].attrs["tflite"]
    assert rule["kernels"] == kernels and g.input not in g.act_quant
    assert g.meta["tflite"] == {"kernels": kernels, "input": "float"}


def test_not_a_tflite_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelImportError, match="bad.tflite"):
        import_tflite(bad)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ModelImportError, match="nope.tflite"):
        import_model(tmp_path / "nope.tflite")


def _refused(path: Path) -> str:
    """The message of the importer's error for ``path`` (any other exception fails)."""
    with pytest.raises(ModelImportError) as e:
        import_tflite(path)
    assert str(path) in str(e.value)
    return str(e.value)


def test_truncated_models_are_clear_errors(tmp_path):
    buf = (DATA / "cnn_relu.tflite").read_bytes()
    cuts = sorted({8, 16, 64, 200, len(buf) // 4, len(buf) // 2, len(buf) - 100, len(buf) - 1})
    for cut in cuts:
        p = tmp_path / f"cut{cut}.tflite"
        p.write_bytes(buf[:cut])
        assert "malformed model" in _refused(p) or "not a TFLite" in _refused(p), cut


def test_corrupted_models_are_clear_errors(tmp_path):
    buf = bytearray((DATA / "cnn_relu.tflite").read_bytes())
    rng = np.random.default_rng(0)
    for trial in range(40):
        b = bytearray(buf)
        for j in rng.integers(8, len(b), size=8):
            b[j] = int(rng.integers(0, 256))
        p = tmp_path / f"bad{trial}.tflite"
        p.write_bytes(bytes(b))
        try:
            import_tflite(p)  # a flip in constant data may still import
        except ModelImportError as e:
            assert str(p) in str(e)


def test_wrong_identifier_and_random_bytes_are_not_a_tflite_model(tmp_path):
    buf = bytearray((DATA / "cnn_relu.tflite").read_bytes())
    buf[4:8] = b"XXXX"
    p = tmp_path / "wrong_id.tflite"
    p.write_bytes(bytes(buf))
    assert "not a TFLite model" in _refused(p)
    for seed in range(5):
        p = tmp_path / f"random{seed}.tflite"
        p.write_bytes(np.random.default_rng(seed).integers(0, 256, 4096, np.uint8).tobytes())
        assert "not a TFLite model" in _refused(p)
    p = tmp_path / "random_tfl3.tflite"  # random bytes with the right identifier
    r = np.random.default_rng(9).integers(0, 256, 4096, np.uint8).tobytes()
    p.write_bytes(r[:4] + b"TFL3" + r[8:])
    _refused(p)
