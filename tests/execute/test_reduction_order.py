"""Regressions of issue 12, item 8: a network layer chooses its accumulator's reduction order
(``order``/``tile_rows``) and in-array tile-register width (``tile_bits``); the settings are
stored in the quantized file and reach the executor's datapath."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import hwsim.execute.integer as ex
from hwsim.cli import main
from hwsim.data import load_data
from hwsim.datapath import Accumulator, conv2d, gemm
from hwsim.execute import IntegerExecutor
from hwsim.graph.ir import Op
from hwsim.numerics import Overflow
from hwsim.quant import store
from hwsim.quant.scheme import LayerScheme, LayerSpec, SchemeError

SEQ14 = Accumulator(14, Overflow.SATURATE)
TILED14 = Accumulator(14, Overflow.SATURATE, order="tiled", tile_rows=4)


def _quantize(tmp_path, model, *extra):
    out = tmp_path / "q.onnx"
    r = CliRunner().invoke(
        main,
        ["quantize", model, "--calib", "digits-train", "--acc-bits", "14", "--overflow",
         "saturate", *extra, "-o", str(out)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    return out


def _spy(monkeypatch, fn: str) -> list:
    calls, real = [], getattr(ex, fn)

    def spy(*a, **kw):
        res = real(*a, **kw)
        calls.append((a, kw, res))
        return res

    monkeypatch.setattr(ex, fn, spy)
    return calls


@pytest.mark.parametrize(
    "model, layer, op, fn",
    [
        ("models/mlp.onnx", "/3/Gemm", Op.DENSE, "gemm"),
        ("models/rescnn.onnx", "/3/body/body.0/Conv", Op.CONV, "conv2d"),
    ],
)
def test_layer_order_tiled_gives_the_tiled_datapath_result(tmp_path, monkeypatch, model, layer,
                                                           op, fn):  # fmt: skip
    """``--layer NAME:order=tiled,tile_rows=4`` on a narrow saturating accumulator: that
    layer's accumulator values are the datapath's on the same operands with the tiled
    Accumulator (which differ from the sequential ones here), the other layers stay
    sequential, and the setting round-trips through the saved file."""
    path = _quantize(tmp_path, model, "--layer", f"{layer}:order=tiled,tile_rows=4")
    prog = store.load(path)
    assert prog.layer(layer).acc == TILED14
    macs = [n for n in prog.graph.nodes if n.op is op and n.wq is not None]
    assert all(prog.layer(n.name).acc == SEQ14 for n in macs if n.name != layer)
    calls = _spy(monkeypatch, fn)
    IntegerExecutor(prog).run(load_data("digits").x[:16])
    assert len(calls) == len(macs)
    a, kw, got = calls[[n.name for n in macs].index(layer)]
    real = {"gemm": gemm, "conv2d": conv2d}[fn]  # the datapath function, not the spy
    want = real(*a, **{**kw, "acc": TILED14})
    seq = real(*a, **{**kw, "acc": SEQ14})
    assert np.array_equal(got.values, want.values) and got.counters == want.counters
    assert not np.array_equal(want.values, seq.values), "the data should saturate differently"
    assert got.counters.overflow_events > 0


def test_global_order_and_tile_bits_round_trip_and_reach_the_datapath(tmp_path, monkeypatch):
    path = _quantize(
        tmp_path, "models/mlp.onnx", "--order", "tiled", "--tile-rows", "8", "--tile-bits", "12",
        "--layer", "/5/Gemm:order=sequential",
    )  # fmt: skip
    prog = store.load(path)
    tiled = Accumulator(14, Overflow.SATURATE, order="tiled", tile_rows=8, tile_bits=12)
    assert prog.layer("/1/Gemm").acc == tiled and prog.layer("/3/Gemm").acc == tiled
    assert prog.layer("/5/Gemm").acc == SEQ14
    d = prog.layer("/1/Gemm").as_dict()
    assert (d["order"], d["tile_rows"], d["tile_bits"]) == ("tiled", 8, 12)
    assert prog.scheme.default.tile_bits == 12 and prog.scheme.default.order == "tiled"
    calls = _spy(monkeypatch, "gemm")
    IntegerExecutor(prog).run(load_data("digits").x[:16])
    assert [c[1]["acc"] for c in calls] == [tiled, tiled, SEQ14]
    assert calls[0][2].counters.tile_overflow_events > 0  # 12-bit tiles of int8 products


def test_files_without_the_settings_load_sequential_and_bad_settings_are_named():
    old = {"acc_bits": 24, "overflow": "saturate", "register": "ort", "rounding": "half_away"}
    assert LayerSpec.from_dict(old).acc == Accumulator(24, Overflow.SATURATE)
    spec = LayerSpec(Accumulator(24, "wrap", order="tiled", tile_rows=3, tile_bits=16))
    assert LayerSpec.from_dict(spec.as_dict()) == spec
    with pytest.raises(SchemeError, match="tile_rows > 0"):
        LayerScheme(order="tiled")
    with pytest.raises(SchemeError, match="tile_bits must be in"):
        LayerScheme(order="tiled", tile_rows=4, tile_bits=4)
    assert LayerScheme(tile_rows=8, tile_bits=20).accumulator == Accumulator()  # sequential
    with pytest.raises(SchemeError, match="order must be one of"):
        LayerScheme(order="diagonal")
    assert LayerScheme(order="tiled", tile_rows=32, tile_bits=20).accumulator == Accumulator(
        32, order="tiled", tile_rows=32, tile_bits=20
    )
