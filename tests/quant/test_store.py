"""hwsim.quant.store on its own: the ONNX round trip of every ActSpec / LayerSpec field,
per-layer overrides, and malformed-metadata rejection (issue 12)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from hwsim.datapath import Accumulator, ReductionOrder
from hwsim.execute import run_float
from hwsim.graph import ModelImportError
from hwsim.graph.ir import Graph, Node, Op
from hwsim.numerics import IntFormat, Overflow, RoundingMode, ScaleKind
from hwsim.quant import ActSpec, LayerSpec, Scheme, quantize
from hwsim.quant.store import load, save, to_onnx

f32 = np.float32


def _graph():
    """x (N, 1, 4, 4) -> conv 3x3 pad 1 -> relu -> maxpool 2 -> flatten -> dense -> add(skip)."""
    rng = np.random.default_rng(0)
    wc = rng.normal(0, 0.5, (2, 1, 3, 3)).astype(f32)
    wd = rng.normal(0, 0.5, (3, 8)).astype(f32)
    wd2 = rng.normal(0, 0.5, (3, 3)).astype(f32)
    conv_attrs = {"strides": (1, 1), "pads": (1, 1, 1, 1), "dilations": (1, 1), "group": 1}
    nodes = [
        Node("conv", Op.CONV, ("x",), "c", conv_attrs, weight=wc, bias=np.array([0.1, -0.1], f32)),
        Node("relu", Op.RELU, ("c",), "r"),
        Node("pool", Op.MAXPOOL, ("r",), "p", {"kernel": (2, 2), "strides": (2, 2),
                                               "pads": (0, 0, 0, 0), "count_include_pad": 0}),
        Node("flat", Op.FLATTEN, ("p",), "f"),
        Node("fc", Op.DENSE, ("f",), "d", weight=wd, bias=np.zeros(3, f32)),
        Node("fc2", Op.DENSE, ("d",), "d2", weight=wd2),
        Node("add", Op.ADD, ("d", "d2"), "y"),
    ]
    return Graph("store_t", "<test>", "x", (1, 4, 4), "y", nodes)


SCHEME = Scheme.preset(
    "data-free",
    wbits=8,
    abits=8,
    acc_bits=32,
    register="ort",
    first_last_bits=None,
    overrides={
        "conv": {"wbits": 3, "acc_bits": 24, "overflow": "saturate", "register": "tflite",
                 "rounding": "half_even"},
        "fc": {"order": "tiled", "tile_rows": 32, "tile_bits": 20, "overflow": "saturate",
               "acc_bits": 28, "register": "pow2", "rounding": "half_up", "wbits": 5,
               "weight_mode": "asymmetric"},
        "fc2": {"acc_bits": 16, "register": "tflite-single", "granularity": "channel"},
    },
)


def _program():
    return quantize(_graph(), SCHEME, input_range=(0.0, 1.0), float_run=run_float)


def _with_acts(prog):
    """Replace the activation specs by hand-chosen ones covering every ActSpec field:
    static at 8 bits (QDQ), 4 bits (QDQ int4/uint4), 6 bits (QONNX Quant), dynamic, shift, pow2,
    a nonzero zero point."""
    acts = {
        "x": ActSpec("static", IntFormat(8, False), 0.00390625, 3, 0, False),
        "c": ActSpec("static", IntFormat(4, False), 0.0625, 0, 0, True),
        "r": ActSpec("static", IntFormat(4, False), 0.0625, 0, 0, True),
        "p": ActSpec("static", IntFormat(4, False), 0.0625, 0, 0, True),
        "f": ActSpec("static", IntFormat(4, False), 0.0625, 0, 0, True),
        "d": ActSpec("static", IntFormat(6, True), 0.123456789, -2, 0, False),
        "d2": ActSpec("dynamic", IntFormat(7, True), 1.0, 0, 0, False),
        "y": ActSpec("shift", IntFormat(5, True), 0.03125, 0, 3, True),
    }
    prog.acts = acts
    return prog


def _layers():
    return {
        "conv": LayerSpec(Accumulator(24, Overflow.SATURATE), ScaleKind.TFLITE,
                          RoundingMode.HALF_EVEN),
        "fc": LayerSpec(
            Accumulator(28, Overflow.SATURATE, order=ReductionOrder.TILED, tile_rows=32,
                        tile_bits=20),
            ScaleKind.POW2,
            RoundingMode.HALF_UP,
        ),
        "fc2": LayerSpec(Accumulator(16, Overflow.WRAP), ScaleKind.TFLITE_SINGLE,
                         RoundingMode.HALF_AWAY),
        "add": LayerSpec(Accumulator(32), ScaleKind.ORT, RoundingMode.HALF_AWAY),
    }


def test_layer_specs_follow_the_overrides():
    prog = _program()
    assert prog.layers == _layers()
    by = {n.name: n for n in prog.graph.nodes}
    assert by["conv"].wq.fmt == IntFormat(3, True)
    assert by["fc"].wq.fmt == IntFormat(5, False)  # asymmetric
    assert by["fc2"].wq.per_channel and not by["fc"].wq.per_channel


def test_round_trip_every_field(tmp_path):
    prog = _with_acts(_program())
    path = tmp_path / "q.onnx"
    save(prog, path)
    back = load(path)
    assert back.acts == prog.acts
    assert back.layers == _layers()
    assert back.scheme == SCHEME
    assert back.scheme.overrides == SCHEME.overrides
    nodes_a = {n.name: n for n in prog.graph.nodes}
    nodes_b = {n.name: n for n in back.graph.nodes}
    assert [n.op for n in back.graph.nodes] == [n.op for n in prog.graph.nodes]
    for name in ("conv", "fc", "fc2"):
        a, b = nodes_a[name].wq, nodes_b[name].wq
        assert b.fmt == a.fmt  # the true width (3, 5 bits), not the container's
        np.testing.assert_array_equal(b.q, a.q)
        np.testing.assert_array_equal(np.asarray(b.scale, f32), np.asarray(a.scale, f32))
        np.testing.assert_array_equal(np.ravel(b.zero_point), np.ravel(a.zero_point))
    np.testing.assert_array_equal(nodes_b["conv"].bias, nodes_a["conv"].bias)
    assert nodes_b["conv"].attrs["pads"] == (1, 1, 1, 1)


def test_onnx_operators_by_width(tmp_path):
    model = to_onnx(_with_acts(_program()))
    ops = [(n.op_type, n.domain) for n in model.graph.node]
    inits = {i.name: i for i in model.graph.initializer}
    # x: 8-bit static -> QuantizeLinear/DequantizeLinear with a uint8 zero point of 3
    assert ("QuantizeLinear", "") in ops and ("DequantizeLinear", "") in ops
    assert onnx.numpy_helper.to_array(inits["x_zp"]).tolist() == 3
    assert inits["x_zp"].data_type == onnx.TensorProto.UINT8
    # c: 4-bit unsigned -> UINT4 zero point
    assert inits["c_zp"].data_type == onnx.TensorProto.UINT4
    # d: 6-bit -> QONNX Quant with bit width 6, signed
    quant = [n for n in model.graph.node if n.op_type == "Quant"]
    assert len(quant) == 1 and quant[0].domain == "qonnx.custom_op.general"
    a = {x.name: onnx.helper.get_attribute_value(x) for x in quant[0].attribute}
    assert a["signed"] == 1 and a["narrow"] == 0
    assert float(onnx.numpy_helper.to_array(inits[quant[0].input[3]])) == 6.0
    # weights: 3-bit conv in an int8 container, 5-bit asymmetric fc in uint8
    assert inits["conv_wq"].data_type == onnx.TensorProto.INT8
    assert inits["fc_wq"].data_type == onnx.TensorProto.UINT8
    meta = json.loads({p.key: p.value for p in model.metadata_props}["hwsim"])
    assert meta["format_version"] == 1
    # conv reads and writes static tensors: its bias is the int32 the program adds, the float
    # bias in the metadata
    assert meta["weights"]["conv"] == {"bits": 3, "signed": True, "bias": [f32(0.1), f32(-0.1)]}
    assert inits["conv_bq"].data_type == onnx.TensorProto.INT32
    assert meta["layers"]["fc"] == {
        "acc_bits": 28, "overflow": "saturate", "order": "tiled", "tile_rows": 32,
        "tile_bits": 20, "register": "pow2", "rounding": "half_up",
    }
    assert meta["acts"]["y"] == {
        "mode": "shift", "bits": 5, "signed": True, "scale": 0.03125, "zero_point": 0,
        "s_max": 3, "pow2": True, "base": "static",
    }
    onnx.checker.check_model(model)


def test_plain_8bit_per_tensor_file_runs_in_onnxruntime(tmp_path):
    import onnxruntime as ort

    g = _graph()
    prog = quantize(g, Scheme.preset("data-free", wbits=8, abits=8), input_range=(0.0, 1.0), float_run=run_float)
    model = to_onnx(prog)
    assert not any(n.domain for n in model.graph.node)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = s.run(None, {"x": np.zeros((2, 1, 4, 4), f32)})[0]
    assert out.shape == (2, 3)


# --- legacy and malformed metadata -----------------------------------------------------------
def _rewrite(path, edit):
    m = onnx.load(str(path))
    props = {p.key: p.value for p in m.metadata_props}
    meta = json.loads(props["hwsim"])
    new = edit(meta)
    del m.metadata_props[:]
    onnx.helper.set_model_props(
        m, {"hwsim": new if isinstance(new, str) else json.dumps(meta)}
    )
    onnx.save(m, str(path))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "q.onnx"
    save(_with_acts(_program()), path)
    return path


def test_files_without_order_keys_load_as_sequential(saved):
    def drop(meta):
        for d in meta["layers"].values():
            for k in ("order", "tile_rows", "tile_bits"):
                d.pop(k)

    _rewrite(saved, drop)
    back = load(saved)
    for name in ("conv", "fc", "fc2"):
        assert back.layers[name].acc.order is ReductionOrder.SEQUENTIAL
        assert back.layers[name].acc.tile_rows == 0
    assert back.layers["conv"] == _layers()["conv"]


def _set(path_in_meta, value):
    def edit(meta):
        d = meta
        for k in path_in_meta[:-1]:
            d = d[k]
        if value is _DEL:
            del d[path_in_meta[-1]]
        else:
            d[path_in_meta[-1]] = value

    return edit


_DEL = object()

MALFORMED = [
    # (where, new value, a word the message must contain)
    (("acts",), _DEL, "acts"),
    (("layers",), _DEL, "layers"),
    (("weights",), _DEL, "weights"),
    (("layers", "conv", "acc_bits"), _DEL, "acc_bits"),
    (("layers", "conv", "overflow"), _DEL, "overflow"),
    (("layers", "conv", "register"), _DEL, "register"),
    (("layers", "conv", "rounding"), _DEL, "rounding"),
    (("acts", "x", "mode"), _DEL, "mode"),
    (("acts", "x", "bits"), _DEL, "bits"),
    (("acts", "x", "scale"), _DEL, "scale"),
    (("acts", "x", "zero_point"), _DEL, "zero_point"),
    (("acts", "x", "s_max"), _DEL, "s_max"),
    (("acts", "x", "signed"), _DEL, "signed"),
    (("layers", "conv", "overflow"), "bogus", "overflow"),
    (("layers", "conv", "register"), "bogus", "register"),
    (("layers", "conv", "acc_bits"), 7, "bits"),
    (("layers", "conv", "acc_bits"), "abc", "acc_bits"),
    (("layers", "fc", "order"), "diagonal", "order"),
    (("acts", "x", "bits"), 99, "bits"),
    (("acts", "x", "signed"), "yes", "signed"),
    (("acts", "x", "scale"), "big", "scale"),
    (("weights", "conv", "bits"), 2, "conv weights"),  # 3-bit integers do not fit 2 bits
    (("weights", "conv", "bias"), [0.5], "bias"),  # conv has two output channels
    (("weights", "conv", "bias"), ["a", "b"], "bias"),
    (("weights", "conv", "bias"), 0.5, "bias"),
    (("scheme", "default", "wbits"), 1, "wbits"),
    (("scheme", "default", "colour"), "red", "colour"),
    (("format_version",), 2, "format_version"),
]

@pytest.mark.parametrize(
    "where, value, word",
    [
        pytest.param(*c, id="/".join(c[0]) + ("=del" if c[1] is _DEL else f"={c[1]}"))
        for c in MALFORMED
    ],
)
def test_malformed_metadata_is_rejected_naming_the_field(saved, where, value, word):
    _rewrite(saved, _set(where, value))
    with pytest.raises(ModelImportError) as ei:
        load(saved)
    msg = str(ei.value)
    assert str(saved) in msg
    assert word.lower() in msg.lower(), msg


def test_metadata_that_is_not_json_names_the_file(saved):
    _rewrite(saved, lambda meta: "{not json")
    with pytest.raises(ModelImportError, match="not valid JSON") as ei:
        load(saved)
    assert str(saved) in str(ei.value)


def test_float_model_is_not_a_program(tmp_path):
    path = tmp_path / "f.onnx"
    m = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Relu", ["x"], ["y"], name="r")],
            "f",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 2])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 2])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    onnx.save(m, str(path))
    with pytest.raises(ModelImportError, match="float model") as ei:
        load(path)
    assert str(path) in str(ei.value)


# Values that are well-typed but out of range: the loader rejects them as the scheme
# (LayerScheme / TensorQuant) does when a program is built.
_BAD_VALUES = [
    (("acts", "x", "mode"), "bogus", "mode"),
    (("acts", "x", "scale"), 0.0, "scale"),
    (("acts", "x", "scale"), -1.0, "scale"),
    (("acts", "x", "zero_point"), 300, "zero_point"),  # uint8 activation
    (("acts", "y", "s_max"), -1, "s_max"),
]


@pytest.mark.parametrize(
    "where, value, word", _BAD_VALUES, ids=["/".join(c[0]) + f"={c[1]}" for c in _BAD_VALUES]
)
def test_out_of_range_act_metadata_is_rejected(saved, where, value, word):
    _rewrite(saved, _set(where, value))
    with pytest.raises(ModelImportError) as ei:
        load(saved)
    assert word in str(ei.value)


def test_tflite_register_with_wide_accumulator_is_rejected(saved):
    def edit(meta):
        meta["layers"]["fc2"].update(acc_bits=48, tile_bits=48)  # fc2: tflite-single

    _rewrite(saved, edit)
    with pytest.raises(ModelImportError, match="acc_bits"):
        load(saved)


@pytest.mark.parametrize("key, value", [("tile_rows", 32), ("tile_bits", 20)])
def test_sequential_layer_ignores_tile_keys(saved, key, value):
    _rewrite(saved, lambda meta: meta["layers"]["conv"].update({key: value}))
    back = load(saved)
    assert back.layers["conv"] == _layers()["conv"]


@pytest.mark.parametrize(
    "where, owner",
    [(("acts", "x", "scale"), "'x'"), (("layers", "conv", "rounding"), "'conv'"),
     (("weights", "conv", "signed"), "'conv'")],
)
def test_missing_metadata_key_names_its_layer_or_tensor(saved, where, owner):
    _rewrite(saved, _set(where, _DEL))
    with pytest.raises(ModelImportError) as ei:
        load(saved)
    msg = str(ei.value)
    assert str(saved) in msg and owner in msg and where[-1] in msg, msg


@pytest.mark.parametrize("section", ["acts", "layers", "weights"])
def test_metadata_for_unknown_names_is_an_error(saved, section):
    def edit(meta):
        sec = meta[section]
        sec["ghost"] = dict(next(iter(sec.values())))

    _rewrite(saved, edit)
    with pytest.raises(ModelImportError, match=rf"{section}.*'ghost'") as ei:
        load(saved)
    assert str(saved) in str(ei.value)


@pytest.mark.parametrize(
    "preset,kw",
    [("per-sample", {}), ("per-sample-shift", {}), ("per-sample-shift", {"shift_base": "runtime"})],
)
def test_stored_per_sample_program_runs_as_written(tmp_path, preset, kw):
    """A saved per-sample program runs on the integer datapath like the one in memory: its
    activations have no Q/DQ in the file, so onnxruntime's fusion plan (which left the convs
    'unfused') must not turn them into float convs (found with --shift-base runtime)."""
    from hwsim.data import load_data
    from hwsim.execute import IntegerExecutor
    from hwsim.graph import import_model

    program = quantize(
        import_model("models/rescnn.onnx"), Scheme.preset(preset, **kw), load_data("digits-train"), float_run=run_float
    )
    save(program, tmp_path / "m.onnx")
    loaded = load(tmp_path / "m.onnx")
    x = load_data("digits").x[:16]
    a, b = IntegerExecutor(program), IntegerExecutor(loaded)
    ea, eb = a.run(x), b.run(x)
    assert b.float_ops == set() == a.float_ops
    for name, t in ea.items():
        if hasattr(t, "q"):
            assert np.array_equal(t.q, eb[name].q), name
            assert np.array_equal(t.scale, eb[name].scale), name
    modes = {(s.mode, s.base) for s in loaded.acts.values()}
    want = "dynamic" if preset == "per-sample" else "shift"
    assert {m for m, _ in modes} == {want}
    if want == "shift":
        assert {b for _, b in modes} == {kw.get("shift_base", "static")}


def test_shift_metadata_of_the_old_convention_is_refused(saved):
    """Files before the one shift convention held the finest grid (k > 0 coarser): refused by
    name rather than read 2^s_max off."""
    from hwsim.quant.scheme import SchemeError

    d = ActSpec("shift", IntFormat(8, True), 0.5, 0, 4).as_dict()
    del d["base"]
    with pytest.raises(SchemeError, match="field 'base' is missing.*quantize the model again"):
        ActSpec.from_dict(d, "tensor 'y'")
