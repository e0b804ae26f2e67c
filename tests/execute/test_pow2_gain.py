"""Issue 12, item 2: a ``pow2`` (shift-only) register built from a real that is not a power of
two applies the nearest power of two; the executor records the gain error per layer and the
report lists it -- never a silent gain error (docs/numerics.md, "Gain error")."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from hwsim import api
from hwsim.data import Dataset
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.graph.ir import Op
from hwsim.numerics import scale
from hwsim.numerics.scale import ScaleRegister
from hwsim.quant import Scheme, quantize


def _save(path, nodes, inits, in_shape, out_shape):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, *in_shape])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [None, *out_shape])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


# quantize() needs a MAC layer: a 1x1 conv with weight 1 (exact on a power-of-two grid)
_ID = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "wid")


def _ident(src, dst):
    return helper.make_node("Conv", [src, "wid"], [dst], kernel_shape=[1, 1], name="id")


def _x(n=64, c=1, h=6, seed=0):
    return np.random.default_rng(seed).random((n, c, h, h)).astype(np.float32)


def _run(path, x, **scheme):
    program = quantize(
        import_model(path),
        Scheme.preset("per-tensor", register="pow2", **scheme),
        Dataset("calib", x, None), float_run=run_float,
    )
    rep, out = api.run_program(program, Dataset("d", x, None), 32, collect_outputs=True)
    layers = {r["name"]: r for r in json.loads(json.dumps(rep.as_dict()))["layers"]}
    return program, rep, out, layers


def test_pow2_register_records_its_gain_error():
    r = ScaleRegister.from_real("pow2", [1 / 36, 3.0, 0.25])
    assert r.real.tolist() == [1 / 32, 4.0, 0.25]
    np.testing.assert_allclose(r.gain_error, [36 / 32 - 1, 4 / 3 - 1, 0.0])
    assert np.all(np.abs(ScaleRegister.from_real("tflite", [1 / 36, 3.0]).gain_error) < 2**-30)
    assert np.all(np.abs(ScaleRegister.from_real("ort", [1 / 36, 3.0]).gain_error) < 2**-23)


def test_average_pool_6x6_with_pow2_register_reports_the_gain_error(tmp_path):
    """1/36 applied as 1/32: the output is 36/32 of the float average, and the report says so."""
    p = _save(
        str(tmp_path / "avg.onnx"),
        [
            _ident("input", "c"),
            helper.make_node("AveragePool", ["c"], ["pool"], kernel_shape=[6, 6], name="pool"),
            helper.make_node("Flatten", ["pool"], ["output"], axis=1, name="flat"),
        ],
        [_ID],
        [1, 6, 6],
        [1],
    )
    x = _x()
    program, rep, out, layers = _run(p, x)
    # the emulation is what shift-only hardware computes: 1/32 instead of 1/36 (+12.5%) ...
    f = run_float(program.graph, x)[program.graph.output].astype(np.float64)
    ratio = float(np.sum(out * f) / np.sum(f * f))
    assert ratio == pytest.approx(36 / 32, abs=0.01)
    # ... and it is not silent: per layer in the JSON, and a note in the table
    assert layers["pool"]["gain_error_min"] == pytest.approx(36 / 32 - 1)
    assert layers["pool"]["gain_error_max"] == pytest.approx(36 / 32 - 1)
    assert layers["flat"]["gain_error_min"] is None  # no register
    note = [n for n in rep.notes if n.startswith("gain error")]
    assert len(note) == 1 and "pool (avgpool) +12.50%" in note[0]
    assert "pool (avgpool) +12.50%" in rep.table()


def test_average_pool_2x2_with_pow2_register_has_no_gain_error(tmp_path):
    p = _save(
        str(tmp_path / "avg2.onnx"),
        [
            _ident("input", "c"),
            helper.make_node(
                "AveragePool", ["c"], ["pool"], kernel_shape=[2, 2], strides=[2, 2], name="pool"
            ),
            helper.make_node("Flatten", ["pool"], ["output"], axis=1, name="flat"),
        ],
        [_ID],
        [1, 6, 6],
        [9],
    )
    _, rep, _, layers = _run(p, _x())
    assert layers["pool"]["gain_error_min"] == 0.0 == layers["pool"]["gain_error_max"]
    assert not any(n.startswith("gain error") for n in rep.notes)


def test_mul_by_3_with_pow2_register_reports_the_gain_error(tmp_path):
    p = _save(
        str(tmp_path / "mul.onnx"),
        [
            helper.make_node("Mul", ["input", "k"], ["m"], name="mul"),
            _ident("m", "c"),
            helper.make_node("Flatten", ["c"], ["output"], axis=1, name="flat"),
        ],
        [numpy_helper.from_array(np.array(3.0, np.float32), "k"), _ID],
        [1, 6, 6],
        [36],
    )
    x = _x()
    program, rep, out, layers = _run(p, x)
    assert any(n.op is Op.MUL for n in program.graph.nodes)
    sx = float(program.acts["input"].scale)
    sy = float(program.acts[next(n.output for n in program.graph.nodes if n.op is Op.MUL)].scale)
    want = 3.0 * sx / sy
    applied = 2.0 ** np.round(np.log2(want))
    assert applied != want  # 3 * 2^-k is no power of two
    assert layers["mul"]["gain_error_min"] == pytest.approx(applied / want - 1)
    assert layers["mul"]["gain_error_max"] == pytest.approx(applied / want - 1)
    assert any(n.startswith("gain error") and "mul (mul)" in n for n in rep.notes)


GAMMA = [0.77, 1.0, 1.27, 0.9]


def test_bn_fold_register_with_pow2_register_reports_per_channel_gain_errors(tmp_path):
    c = len(GAMMA)
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, (c, 1, 3, 3)).astype(np.float32)
    p = _save(
        str(tmp_path / "bn.onnx"),
        [
            helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[3, 3], name="conv"),
            helper.make_node(
                "BatchNormalization",
                ["c", "gamma", "beta", "mean", "var"],
                ["bn"],
                epsilon=0.0,
                name="bn",
            ),
            helper.make_node("Flatten", ["bn"], ["output"], axis=1, name="flat"),
        ],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(np.array(GAMMA, np.float32), "gamma"),
            numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
            numpy_helper.from_array(np.zeros(c, np.float32), "mean"),
            numpy_helper.from_array(np.ones(c, np.float32), "var"),
        ],
        [1, 6, 6],
        [c * 16],
    )
    x = _x()
    program, rep, _, layers = _run(p, x, bn_fold="register")
    conv = next(n for n in program.graph.nodes if n.op is Op.CONV)
    sx = np.float64(program.acts["input"].scale)
    sy = np.float64(program.acts[conv.output].scale)
    want = sx * np.asarray(conv.wq.scale, np.float64) / sy  # per channel: s_w * k_c
    ge = 2.0 ** np.round(np.log2(want)) / want - 1
    assert np.ptp(ge) > 0.4  # k from 0.77 to 1.27 on one power-of-two grid
    assert layers["conv"]["gain_error_min"] == pytest.approx(ge.min())
    assert layers["conv"]["gain_error_max"] == pytest.approx(ge.max())
    assert max(abs(ge.min()), abs(ge.max())) > scale.GAIN_TOLERANCE
    assert any(n.startswith("gain error") and "conv (conv)" in n for n in rep.notes)
    # the executor's stats hold the same extremes
    ex = IntegerExecutor(program)
    ex.run(x[:4])
    st = ex.stats[conv.name]
    assert (st.gain_error_min, st.gain_error_max) == pytest.approx((ge.min(), ge.max()))
