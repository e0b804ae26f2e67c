"""ONNX Resize (nearest, integer upsampling) as ``Op.RESIZE``: data movement, ``np.repeat`` of
each axis by its factor, in float and on the integers.

* **Which modes are a repeat**: every ``coordinate_transformation_mode`` x ``nearest_mode`` pair
  (5 x 4) at factors 2, 3 and 4, by onnxruntime: the pairs whose output is the repeat at every
  factor are exactly :data:`hwsim.graph.onnx_import.RESIZE_REPEATS`, which import accepts (and
  runs bit for bit as onnxruntime does); every other pair is rejected, naming the pair.
* **torch exports** (TorchScript exporter, a dynamic batch, opsets 11, 13, 17):
  ``nn.Upsample(scale_factor=2)``, ``F.interpolate(scale_factor=2)`` and ``(2, 3)`` (constant
  scales), ``F.interpolate(size=...)`` (sizes computed from the input's Shape, folded with the
  batch entry kept symbolic): one ``Op.RESIZE`` each, the float reference equal to onnxruntime
  bit for bit at batch 3 and 1.
* **QDQ**: a small U-Net (Conv -> Conv/2 -> Upsample x2 -> Concat with the skip -> Conv),
  onnxruntime ``quantize_static`` (per-tensor and per-channel weights, uint8 and int8
  activations): the Resize keeps its input's quantization and moves integers; hwsim's integer
  output equals onnxruntime's bit for bit (``isa="auto"``).
* **hwsim's quantization and the file**: the resize shares its input's ActSpec (per-tensor,
  per-sample, per-token), per-token scales move with the integers, and the written file (a
  nearest Resize by constant scales) runs as the program it was written from.
* **ONNX backend node tests** ``test_resize_upsample_*nearest*``: each passes (exactly) or is
  rejected at import with its reason pinned in :data:`PINNED`.
"""

from __future__ import annotations

import importlib
import logging
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import api
from hwsim.cost.topology import layers_from_program
from hwsim.data import Dataset
from hwsim.execute import IntegerExecutor, QTensor, run_float
from hwsim.graph import ModelImportError, Op, import_model
from hwsim.graph.ir import Graph, Node
from hwsim.graph.onnx_import import RESIZE_REPEATS
from hwsim.graph.shapes import infer_shapes
from hwsim.quant import Scheme, quantize
from hwsim.quant.store import program_from_graph, save
from tests.quant.test_store_transformers import _assert_round_trip

f32 = np.float32
CTMS = ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
FACTORS = (2, 3, 4)
SHAPE = (2, 3, 5, 6)  # align_corners is a repeat at some lengths only: 5 and 6 are not among them


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(0, 1, shape).astype(f32)


def _resize_model(inits: dict, ins: list, opset: int = 19, in_shape=("N",) + SHAPE[1:], **attrs):
    node = helper.make_node("Resize", ["x"] + ins, ["y"], name="up", **attrs)
    g = helper.make_graph(
        [node],
        "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * len(in_shape))],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _scales_model(scales, opset: int = 19, **attrs):
    if opset < 11:
        return _resize_model({"s": np.asarray(scales, f32)}, ["s"], opset, **attrs)
    return _resize_model({"s": np.asarray(scales, f32)}, ["", "s"], opset, **attrs)


def _ort(m: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3  # "tf_half_pixel_for_nn is deprecated since opset 13"
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def _float_equals_ort(m: onnx.ModelProto, batches=(3, 1)):
    """Import ``m``; its float reference == onnxruntime bit for bit at each batch size, the
    shapes as :func:`infer_shapes` gives them. Returns the graph."""
    g = import_model(m)
    shape = tuple(d if isinstance(d, int) else 1 for d in g.input_shape)
    for b in batches:
        x = _x((b, *shape), seed=b)
        env = run_float(g, x)
        want = _ort(m, x)
        got = env[g.output]
        assert got.shape == want.shape and np.array_equal(got, want)
        shapes = infer_shapes(g, b)
        assert all(shapes[t] == v.shape for t, v in env.items())
    return g


# --- the mode table against onnxruntime ------------------------------------------------------
def test_repeat_modes_are_exactly_those_onnxruntime_computes_as_a_repeat():
    x = _x(SHAPE)
    measured = set()
    for pair in ((c, n) for c in CTMS for n in NEAREST):
        attrs = dict(mode="nearest", coordinate_transformation_mode=pair[0], nearest_mode=pair[1])
        repeats = []
        for f in FACTORS:
            m = _scales_model([1, 1, f, f], **attrs)
            want = _ort(m, x)
            repeats.append(np.array_equal(want, x.repeat(f, 2).repeat(f, 3)))
            if pair in RESIZE_REPEATS:
                got = run_float(import_model(m), x)["y"]
                assert np.array_equal(got, want), (pair, f)
            else:
                with pytest.raises(ModelImportError, match=f"{pair[0]}'? with nearest_mode="):
                    import_model(m)
        if all(repeats):
            measured.add(pair)
    assert measured == RESIZE_REPEATS


@pytest.mark.parametrize("opset, by", [(10, "scales"), (11, "sizes"), (13, "scales"),
                                       (19, "sizes")])  # fmt: skip
def test_scales_and_sizes_on_any_axis_but_the_batch(opset, by):
    """Factors (1, 2, 3, 1): the channel axis too; Resize-10 (no attributes) as onnxruntime's
    asymmetric / floor; opset 11's empty roi and scales with sizes."""
    factors = (1, 2, 3, 1)
    if by == "scales":
        m = _scales_model(factors, opset, mode="nearest")
    else:
        sizes = np.array([3] + [d * f for d, f in zip(SHAPE[1:], factors[1:], strict=True)])
        empty = np.zeros(0, f32)
        m = _resize_model({"r": empty, "e": empty, "s": sizes}, ["r", "e", "s"], opset,
                          in_shape=(3,) + SHAPE[1:], mode="nearest")  # fmt: skip
    g = _float_equals_ort(m, (3,) if by == "sizes" else (3, 1))
    assert [(n.op, n.attrs) for n in g.nodes] == [(Op.RESIZE, {"factors": factors})]


@pytest.mark.parametrize(
    "scales, attrs, word",
    [
        ([1, 1, 2, 2], dict(mode="linear"), "mode='linear' interpolates"),
        ([1, 1, 2, 2], dict(mode="cubic", exclude_outside=1), "mode='cubic'"),
        ([1, 1, 2, 2], dict(mode="nearest", exclude_outside=1), "exclude_outside=1"),
        ([1, 1, 2, 2], dict(mode="nearest", antialias=1), "antialias=1"),
        ([1, 1, 0.5, 0.5], dict(mode="nearest"), "factor 0.5 on axis 2 is not an integer >= 1"),
        ([1, 1, 1.5, 2], dict(mode="nearest"), "factor 1.5 on axis 2 is not an integer"),
        ([2, 1, 2, 2], dict(mode="nearest"), "factor of 2 on axis 0, the batch axis"),
        ([1, 1, 2, 2], dict(mode="nearest", coordinate_transformation_mode="tf_crop_and_resize"),
         "tf_crop_and_resize' crops to the roi"),
        ([1, 1, 2, 2], dict(mode="nearest", coordinate_transformation_mode="align_corners"),
         "'align_corners' with nearest_mode='round_prefer_floor' is not np.repeat"),
    ],
)  # fmt: skip
def test_unsupported_resizes_name_file_node_and_what_is_supported(scales, attrs, word, tmp_path):
    path = tmp_path / "bad.onnx"
    onnx.save(_scales_model(scales, **attrs), str(path))
    with pytest.raises(ModelImportError) as ei:
        import_model(path)
    msg = str(ei.value)
    assert msg.startswith(f"{path}: node 'up' (Resize): ") and word in msg, msg
    assert "supported: Resize with mode 'nearest' and an integer upsampling factor" in msg


def test_sizes_that_resize_the_batch_are_rejected():
    sizes = np.array([2, 3, 10, 12], np.int64)  # axis 0: 2 for a batch "N"
    m = _resize_model({"s": sizes}, ["", "", "s"], mode="nearest")
    with pytest.raises(ModelImportError, match="the size 2 of axis 0 resizes the batch"):
        import_model(m)


# --- torch exports ---------------------------------------------------------------------------
def _torch_upsamplers():
    import torch  # the test extra installs it: missing torch is a failure, not a skip
    from torch import nn
    from torch.nn import functional as F

    class Interpolate(nn.Module):
        def __init__(self, **kw):
            super().__init__()
            self.kw = kw

        def forward(self, x):
            return F.interpolate(x, mode="nearest", **self.kw)

    return torch, {
        "upsample": (nn.Upsample(scale_factor=2, mode="nearest"), (1, 1, 2, 2)),
        "interpolate": (Interpolate(scale_factor=2), (1, 1, 2, 2)),
        "interpolate_2_3": (Interpolate(scale_factor=(2, 3)), (1, 1, 2, 3)),
        "interpolate_size": (Interpolate(size=(10, 18)), (1, 1, 2, 3)),
    }


def _export(torch, module, path, opset: int, shape=SHAPE) -> str:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(shape),),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=opset,
            dynamo=False,
        )
    return str(path)


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_torch_exports_import_and_match_onnxruntime(opset, tmp_path):
    torch, cases = _torch_upsamplers()
    for name, (module, factors) in cases.items():
        m = onnx.load(_export(torch, module, tmp_path / f"{name}.onnx", opset))
        resize = [n for n in m.graph.node if n.op_type == "Resize"]
        assert len(resize) == 1 and (len(resize[0].input) == 4) == (name == "interpolate_size")
        g = _float_equals_ort(m)
        assert [(n.op, n.attrs) for n in g.nodes] == [(Op.RESIZE, {"factors": factors})], name


# --- QDQ: onnxruntime's quantize_static ------------------------------------------------------
def _unet(torch):
    from torch import nn

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, padding=1)
            self.c2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.c3 = nn.Conv2d(16, 4, 3, padding=1)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            return self.c3(torch.cat([self.up(torch.relu(self.c2(a))), a], 1))

    torch.manual_seed(0)
    return UNet().eval()


UNET_SHAPE = (3, 8, 8)


@pytest.fixture(scope="module")
def unet(tmp_path_factory):
    import torch  # the test extra installs it: missing torch is a failure, not a skip
    d = tmp_path_factory.mktemp("unet")
    return _export(torch, _unet(torch), d / "unet.onnx", 13, (2, *UNET_SHAPE))


def _quantize_static(fp: str, out, per_channel: bool, activations) -> str:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": _x((4, *UNET_SHAPE), seed=i)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing before quantization"
    try:
        quantize_static(fp, str(out), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=activations)  # fmt: skip
    finally:
        root.setLevel(level)
    return str(out)


@pytest.mark.parametrize("per_channel", [False, True], ids=["pertensor", "perchannel"])
@pytest.mark.parametrize("act", ["u8", "s8"])
def test_qdq_unet_integer_run_is_bit_exact(unet, per_channel, act, tmp_path):
    from onnxruntime.quantization import QuantType

    qt = QuantType.QUInt8 if act == "u8" else QuantType.QInt8
    path = _quantize_static(unet, tmp_path / "q.onnx", per_channel, qt)
    g = import_model(path)
    assert [n.op for n in g.nodes] == [Op.CONV, Op.CONV, Op.RESIZE, Op.CONCAT, Op.CONV]
    (r,) = (n for n in g.nodes if n.op is Op.RESIZE)
    assert r.attrs == {"factors": (1, 1, 2, 2)}
    assert g.act_quant[r.output] == g.act_quant[r.inputs[0]]  # the quantizer shares it
    x = _x((5, *UNET_SHAPE), seed=9)
    ex = IntegerExecutor(program_from_graph(g), isa="auto")
    env = ex.run(x)
    assert r.name not in ex.float_ops  # integers moved, not a float island
    assert np.array_equal(env[r.output].q, env[r.inputs[0]].q.repeat(2, 2).repeat(2, 3))
    want = _ort(onnx.load(path), x)
    assert np.array_equal(ex.output(env), want)


# --- hwsim's quantization and the file -------------------------------------------------------
@pytest.mark.parametrize("preset", ["per-tensor", "per-sample", "per-token"])
def test_hwsim_quantized_unet_round_trips(unet, preset, tmp_path):
    calib = Dataset("calib", _x((16, *UNET_SHAPE), seed=1), None, (-4.0, 4.0))
    x = _x((5, *UNET_SHAPE), seed=7)
    f = tmp_path / "q.onnx"
    prog = api.quantize_model(unet, preset, calib, out=f)
    (r,) = (n for n in prog.graph.nodes if n.op is Op.RESIZE)
    assert prog.acts[r.output] == prog.acts[r.inputs[0]]
    ex = IntegerExecutor(prog)
    env = ex.run(x)
    a, b = env[r.inputs[0]], env[r.output]
    assert r.name not in ex.float_ops and np.array_equal(b.q, a.q.repeat(2, 2).repeat(2, 3))
    assert np.array_equal(np.asarray(b.scale), np.asarray(a.scale))  # per sample: unchanged
    resize = [n for n in onnx.load(str(f)).graph.node if n.op_type == "Resize"]
    assert len(resize) == 1
    _assert_round_trip(prog, f, x, tmp_path)
    assert [layer.name for layer in layers_from_program(prog)] == [
        n.name for n in prog.graph.nodes if n.op is Op.CONV
    ]  # no MACs in the resize
    if preset == "per-tensor":  # a plain QDQ file: onnxruntime runs it at another batch
        assert _ort(onnx.load(str(f)), x[:3]).shape == (3, 4, 8, 8)


def _token_graph() -> Graph:
    """x (N, 4, 6) -> N-d dense -> resize (1, 2, 3) -> N-d dense: tokens repeated on axis 1,
    features on axis 2."""
    rng = np.random.default_rng(3)
    nodes = [
        Node("d1", Op.DENSE, ("x",), "a", {"nd": True},
             weight=rng.normal(0, 0.5, (5, 6)).astype(f32), bias=rng.normal(0, 0.1, 5).astype(f32)),
        Node("up", Op.RESIZE, ("a",), "b", {"factors": (1, 2, 3)}),
        Node("d2", Op.DENSE, ("b",), "y", {"nd": True},
             weight=rng.normal(0, 0.5, (2, 15)).astype(f32), bias=np.zeros(2, f32)),
    ]  # fmt: skip
    return Graph("tokens", "<test>", "x", (4, 6), "y", nodes)


@pytest.mark.parametrize("preset", ["per-token", "per-token-shift"])
def test_per_token_scales_move_with_the_integers(preset, tmp_path):
    x = _x((12, 4, 6), seed=4)
    calib = Dataset("calib", x, None, (-4.0, 4.0))
    prog = quantize(_token_graph(), Scheme.preset(preset), calib, float_run=run_float)
    ex = IntegerExecutor(prog)
    env = ex.run(x[:5])
    a, b = env["a"], env["b"]
    assert isinstance(b, QTensor) and a.per_token and b.per_token and "up" not in ex.float_ops
    assert np.shape(a.scale) == (5, 4, 1) and np.shape(b.scale) == (5, 8, 1)
    assert np.array_equal(b.q, a.q.repeat(2, 1).repeat(3, 2))
    assert np.array_equal(b.scale, np.asarray(a.scale).repeat(2, 1))
    assert np.array_equal(b.dequantize(), a.dequantize().repeat(2, 1).repeat(3, 2))
    f = tmp_path / "q.onnx"
    save(prog, f)
    _assert_round_trip(prog, f, x[:5], tmp_path)


# --- ONNX backend node tests -----------------------------------------------------------------
_NOT_INTEGER = "factor 3.5 on axis 2 is not an integer >= 1"
PINNED = {
    "test_resize_upsample_sizes_nearest": _NOT_INTEGER,  # 2 -> 7
    "test_resize_upsample_sizes_nearest_axes_2_3": _NOT_INTEGER,
    "test_resize_upsample_sizes_nearest_axes_3_2": _NOT_INTEGER,
    "test_resize_upsample_sizes_nearest_not_larger": _NOT_INTEGER,  # min(7/2, 8/2)
    "test_resize_upsample_sizes_nearest_floor_align_corners": "'align_corners' with "
    "nearest_mode='floor' is not np.repeat",
    "test_resize_upsample_sizes_nearest_round_prefer_ceil_asymmetric": "'asymmetric' with "
    "nearest_mode='round_prefer_ceil' is not np.repeat",
    "test_resize_upsample_sizes_nearest_ceil_half_pixel": "'half_pixel' with "
    "nearest_mode='ceil' is not np.repeat",
}
"""Backend cases hwsim rejects, with the reason its error gives."""


def _backend_cases() -> dict:
    from onnx.backend.test.case import node as node_cases

    importlib.import_module("onnx.backend.test.case.node.resize")
    return {
        c.name: c
        for c in node_cases._NodeTestCases
        if c.kind == "node" and c.name.startswith("test_resize_upsample") and "nearest" in c.name
    }


CASES = _backend_cases()


def test_backend_cases_are_all_here():
    assert set(PINNED) < set(CASES) and len(CASES) == 11


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnx_backend_resize_case(name):
    """Input 0 the model's input (its axis 0 the batch), the others constants."""
    case = CASES[name]
    m = onnx.ModelProto()
    m.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    for vi, v in list(zip(m.graph.input, inputs, strict=True))[1:]:
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(v), vi.name))
    del m.graph.input[1:]
    if name in PINNED:
        with pytest.raises(ModelImportError, match=PINNED[name]):
            import_model(m, source=name)
        return
    g = import_model(m, source=name)
    got = run_float(g, np.asarray(inputs[0]))[g.output]
    assert got.shape == outputs[0].shape and np.array_equal(got, outputs[0])
