"""The cost model: formulas, config and topology reading, model layers, memory model, CLI."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from hwsim.cli import main
from hwsim.cost import (
    Accelerator,
    ConfigError,
    EnergyTable,
    Layer,
    TopologyError,
    compute_cycles,
    cost,
    cost_layer,
    gemm_counts,
    layers_from_program,
    load_config,
    read_topology,
)
from hwsim.cost.topology import conv_layer

CONV_HEADER = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
    "Num Filter, Strides,\n"
)


@pytest.mark.parametrize(
    "dims,want", [((64, 48, 40), (839, 989, 1127)), ((16, 16, 16), (45, 61, 61))]
)
def test_scalesim_reference_cycles(dims, want):
    # REFERENCES.md: SCALE-Sim on a 16x16 array, (Np, Mf, K) -> OS / WS / IS
    assert tuple(compute_cycles(d, 16, 16, *dims) for d in ("os", "ws", "is")) == want


def test_scalesim_reference_layer():
    # REFERENCES.md: 56x56 output, 64->64, 3x3 on 32x32 OS: 125,047 compute cycles
    layer = conv_layer("c", 58, 58, 3, 3, 64, 64, 1)
    assert (layer.Np, layer.K, layer.Mf) == (56 * 56, 576, 64)
    assert compute_cycles("os", 32, 32, layer.Np, layer.Mf, layer.K) == 125047


@given(
    st.sampled_from(["os", "ws", "is"]),
    st.integers(1, 64),
    st.integers(1, 64),
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(1, 300),
)
def test_counts_are_consistent(df, R, C, Np, Mf, K):
    c = gemm_counts(df, R, C, Np, Mf, K)
    assert c.macs == Np * Mf * K
    assert 0 < c.utilization <= 1.0
    # every operand element is read at least once, every output written at least once
    assert c.ifmap_reads >= Np * K and c.filter_reads >= K * Mf and c.ofmap_writes >= Np * Mf
    # no dataflow beats a perfectly used array (SCALE-Sim counts end with "- 1")
    assert c.compute_cycles + 1 >= math.ceil(c.macs / (R * C))


def test_energy_fits_reproduce_horowitz():
    e = EnergyTable()
    assert e.mul_pj(8, 8) == pytest.approx(0.2, abs=1e-4)
    assert e.mul_pj(32, 32) == pytest.approx(3.1, abs=1e-3)
    assert e.add_pj(32) == pytest.approx(0.1)
    assert [round(e.sram_pj_per_bit(k) * 64, 6) for k in (8, 32, 1024)] == [10.0, 20.0, 100.0]
    assert e.sram_pj_per_bit(16) < e.sram_pj_per_bit(64) < e.sram_pj_per_bit(512)


def test_topology_conv_and_gemm(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(CONV_HEADER + "a, 10, 12, 3, 3, 4, 8, 2,\n\nb, 5, 5, 1, 1, 16, 32, 1,\n")
    a, b = read_topology(f)
    assert (a.Np, a.K, a.Mf) == (5 * 6, 36, 8) and a.ifmap_elems == 10 * 12 * 4  # ceil(9/2)
    assert (b.Np, b.K, b.Mf) == (25, 16, 32)
    g = tmp_path / "g.csv"
    g.write_text("Layer Name, M, N, K,\nfc, 128, 64, 256,\n")
    (fc,) = read_topology(g)
    assert (fc.Np, fc.Mf, fc.K) == (128, 64, 256)


@pytest.mark.parametrize(
    "row,msg",
    [
        ("a, 10, x, 3, 3, 4, 8, 1,", r"t.csv:2: column 3 \(IFMAP Width\) must be an integer"),
        ("a, 10, 10, 3, 3, 4, 0, 1,", r"t.csv:2: column 7 \(Num Filter\) must be a positive"),
        ("a, 10, 10, 3, 3, 4, 8,", r"t.csv:2: expected 8 fields"),
        ("a, 2, 10, 3, 3, 4, 8, 1,", r"filter 3x3 is larger than the \(padded\) ifmap 2x10"),
    ],
)
def test_topology_errors_name_line_and_column(tmp_path, row, msg):
    f = tmp_path / "t.csv"
    f.write_text(CONV_HEADER + row + "\n")
    with pytest.raises(TopologyError, match=msg):
        read_topology(f)


def test_config_reads_scalesim_cfg_and_hwsim_sections(tmp_path):
    f = tmp_path / "a.cfg"
    f.write_text(
        "[general]\nrun_name = x\n[architecture_presets]\nArrayHeight : 16\n"
        "ArrayWidth : 8\nIfmapSramSzkB : 256\nFilterSramSzkB: 128\nOfmapSramSzkB: 64\n"
        "IfmapOffset: 0\nDataflow : ws\nBandwidth : 4\n[hwsim]\nacc_bits = 24\n"
        "[energy]\ndram_pj_per_bit = 10\n"
    )
    acc = load_config(f)
    assert (acc.rows, acc.cols, acc.dataflow.value, acc.ifmap_sram_kb) == (16, 8, "ws", 256)
    assert acc.dram_words_per_cycle == 4 and acc.acc_bits == 24
    assert acc.energy.dram_pj_per_bit == 10
    assert load_config(f, rows=4).rows == 4
    bad = tmp_path / "b.cfg"
    bad.write_text("[hwsim]\nclok_mhz = 5\n")
    with pytest.raises(ConfigError, match=r"b.cfg: \[hwsim\] unknown key 'clok_mhz'"):
        load_config(bad)
    bad.write_text("[architecture_presets]\nArrayHeight = 0\n")
    with pytest.raises(ConfigError, match="rows must be a positive integer"):
        load_config(bad)
    bad.write_text("[architecture_presets]\nDataflow = diagonal\n")
    with pytest.raises(ConfigError, match="dataflow must be one of os, ws, is"):
        load_config(bad)


def test_model_layers_match_executor_macs():
    from hwsim import api
    from hwsim.data import load_data

    program = api.quantize_model("models/rescnn.onnx", "per-channel", calib="digits-train")
    d = load_data("digits")
    rep, _ = api.run_program(program, d)
    layers = layers_from_program(program, batch=len(d))
    by_name = {r.name: r.macs for r in rep.layers if r.macs}
    assert {la.name: la.macs for la in layers} == by_name
    assert all(la.scale_registers > 1 for la in layers)  # per-channel registers


def test_memory_model_monotone_in_sram():
    layer = conv_layer("c", 58, 58, 3, 3, 64, 64, 1)
    small = cost_layer(layer, Accelerator(ifmap_sram_kb=16, filter_sram_kb=16, ofmap_sram_kb=16))
    big = cost_layer(
        layer, Accelerator(ifmap_sram_kb=4096, filter_sram_kb=4096, ofmap_sram_kb=4096)
    )
    assert big.dram_bytes <= small.dram_bytes
    unique = math.ceil(58 * 58 * 64) + 576 * 64 + 56 * 56 * 64
    assert big.dram_bytes == unique
    assert big.stall_cycles <= small.stall_cycles
    assert big.compute_cycles == small.compute_cycles == 125047


def test_scheme_overheads():
    base = dict(name="l", Np=100, K=64, Mf=32, samples=4)
    acc = Accelerator()
    st_ = cost_layer(Layer(**base), acc)
    sh = cost_layer(Layer(**base, act_mode="shift", s_max=4), acc)
    dyn = cost_layer(Layer(**base, act_mode="dynamic"), acc)
    p2 = cost_layer(Layer(**base, register="pow2"), acc)
    pc = cost_layer(Layer(**base, scale_registers=32), acc)
    assert st_.scheme_ops["range_compares"] == 0 and sh.scheme_ops["range_compares"] == 3200
    assert sh.scheme_ops["shift_selects"] == 4 * 5 and dyn.scheme_ops["range_registers"] == 4
    assert sh.energy_breakdown["scheme"] > st_.energy_breakdown["scheme"]
    assert p2.scheme_ops["requant_multiplies"] == 0
    assert p2.energy_breakdown["scheme"] < st_.energy_breakdown["scheme"]
    assert (st_.register_bits, pc.register_bits, sh.register_bits, dyn.register_bits) == (
        40,
        32 * 40,
        40 + 4 * 3,
        40 + 4 * 40,
    )


def test_cli_cost_model_and_topology(tmp_path):
    r = CliRunner().invoke(
        main,
        [
            "cost",
            "rescnn",
            "--array",
            "16x16",
            "--dataflow",
            "ws",
            "--json",
            str(tmp_path / "c.json"),
            "--plot",
            str(tmp_path / "c.png"),
        ],
    )
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "c.json").read_text())
    keys = {
        "name",
        "compute_cycles",
        "stall_cycles",
        "total_cycles",
        "macs",
        "sram_reads",
        "sram_writes",
        "dram_bytes",
        "energy_pj",
        "energy_breakdown",
    }
    assert len(doc["layers"]) == 5 and all(keys <= set(la) for la in doc["layers"])
    assert doc["totals"]["macs"] == sum(la["macs"] for la in doc["layers"])
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    t = tmp_path / "t.csv"
    t.write_text(CONV_HEADER + "c, 58, 58, 3, 3, 64, 64, 1,\n")
    r = CliRunner().invoke(main, ["cost", str(t)])
    assert r.exit_code == 0 and "125047" in r.output


def test_cli_cost_errors(tmp_path):
    t = tmp_path / "t.csv"
    t.write_text(CONV_HEADER + "c, 58, 58, 3, 3, 64, -2, 1,\n")
    r = CliRunner().invoke(main, ["cost", str(t)])
    assert r.exit_code == 1 and "t.csv:2: column 7" in r.output
    r = CliRunner().invoke(main, ["cost", "rescnn", "--array", "0x4"])
    assert r.exit_code == 1 and "--array" in r.output
    r = CliRunner().invoke(main, ["cost", "rescnn", "--array", "banana"])
    assert r.exit_code == 1 and "ROWSxCOLS" in r.output


def test_totals_add_up():
    layers = [conv_layer("a", 10, 10, 3, 3, 8, 16, 1), conv_layer("b", 8, 8, 3, 3, 16, 16, 2)]
    rep = cost(layers, Accelerator(rows=8, cols=8))
    t = rep.totals
    assert t["total_cycles"] == sum(r.total_cycles for r in rep.layers)
    assert t["energy_pj"] == pytest.approx(sum(t["energy_breakdown"].values()))


def test_run_and_compare_carry_cost(tmp_path):
    from hwsim import api

    q = tmp_path / "q.onnx"
    api.quantize_model("models/mlp.onnx", "per-tensor", calib="digits-train", out=q)
    r = CliRunner().invoke(
        main,
        [
            "run",
            str(q),
            "--data",
            "digits",
            "--array",
            "8x8",
            "--dataflow",
            "is",
            "--batch-size",
            "64",
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "accelerator 8x8 is: batch of 64" in r.output
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["cost"]["accelerator"]["rows"] == 8 and doc["cost"]["batch"] == 64
    dense = [la for la in doc["layers"] if la["op"] == "dense"]
    assert all(la["cycles"] > 0 and la["energy_pj"] > 0 for la in dense)
    assert doc["cost"]["totals"]["total_cycles"] == sum(la["cycles"] for la in dense)
    png, js = tmp_path / "p.png", tmp_path / "c.json"
    r = CliRunner().invoke(
        main,
        [
            "compare",
            "models/mlp.onnx",
            "--data",
            "digits",
            "--calib",
            "digits-train",
            "--schemes",
            "per-tensor",
            "--wbits",
            "8,4",
            "--pareto",
            str(png),
            "--json",
            str(js),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(js.read_text())["rows"]
    assert rows[0]["energy_pj_per_sample"] > rows[1]["energy_pj_per_sample"] > 0  # W8 > W4
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_config_toml(tmp_path):
    f = tmp_path / "a.toml"
    f.write_text(
        '[architecture_presets]\nArrayHeight = 8\nDataflow = "is"\n'
        "[hwsim]\nclock_mhz = 500\n[energy]\nsram_scale = 2.0\n"
    )
    acc = load_config(f)
    assert (acc.rows, acc.dataflow.value, acc.clock_mhz, acc.energy.sram_scale) == (
        8,
        "is",
        500.0,
        2.0,
    )


@pytest.mark.parametrize(
    "preset,kw",
    [
        ("per-tensor", {}),
        ("per-sample", {}),
        ("per-sample", {"register": "pow2"}),
        ("per-sample-shift", {"s_max": 3}),
        ("per-sample-shift", {"shift_base": "runtime", "register": "tflite"}),
        ("per-sample-shift", {"granularity": "channel"}),
    ],
)
def test_cost_model_charges_what_the_executor_performs(preset, kw):
    """Issue 12.7: the scheme operations the cost model charges for a batch are the ones the
    integer executor counted running that batch (per MAC layer, every kind)."""
    import numpy as np

    from hwsim.cost.model import scheme_ops
    from hwsim.cost.topology import layers_from_program
    from hwsim.data import load_data
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize

    program = quantize(
        import_model("models/rescnn.onnx"),
        Scheme.preset(preset, **kw),
        load_data("digits-train"),
        float_run=run_float,
    )
    batch = 5
    ex = IntegerExecutor(program)
    ex.run(load_data("digits").x[:batch])
    layers = layers_from_program(program, batch=batch)
    assert layers
    for layer in layers:
        charged = {k: v for k, v in scheme_ops(layer).items() if v and not k.startswith("requant")}
        assert charged == ex.stats[layer.name].ops, layer.name
    assert any(ex.stats[layer.name].ops for layer in layers) == (preset != "per-tensor")
    assert np.all([ex.stats[n].ops == {} for n in ex.stats]) == (preset == "per-tensor")


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_bert"])
@pytest.mark.parametrize(
    "preset, kw",
    [
        ("per-sample", {}),
        ("per-token", {}),
        ("per-token-shift", {"s_max": 3}),
        ("per-token-shift", {"s_max": 2, "shift_base": "runtime"}),
        ("per-token", {"granularity": "channel"}),
    ],
)
def test_cost_model_charges_what_the_executor_performs_on_transformers(
    tmp_path, name, preset, kw
):
    """Issue 15: the per-token range units (per token rows, per-token-shift accumulation of
    ``p @ v``, alignments) charged by the cost model are the ones the executor counted, on
    every MAC layer and every matmul of two activations."""
    from hwsim.cost.model import scheme_ops
    from hwsim.cost.topology import layers_from_program
    from hwsim.data import Dataset
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize
    from tests.conformance import archs

    g = import_model(archs.export_tiny(name, tmp_path / f"{name}.onnx"))
    calib = Dataset("calib", archs.tiny_inputs(name, 8, seed=1), None, (-4.0, 4.0))
    program = quantize(g, Scheme.preset(preset, **kw), calib, float_run=run_float)
    batch = 3
    ex = IntegerExecutor(program)
    ex.run(archs.tiny_inputs(name, batch))
    layers = layers_from_program(program, batch=batch)
    assert any(layer.extra.get("operands") == "activations" for layer in layers)
    for layer in layers:
        charged = {k: v for k, v in scheme_ops(layer).items() if v and not k.startswith("requant")}
        assert charged == ex.stats[layer.name].ops, layer.name


def test_energy_breakdown_matches_horowitz_by_hand():
    """One small layer's energy split, recomputed by hand from Horowitz's ISSCC 2014 figures
    (../shared/REFERENCES.md, "Energy per operation": int8 multiply 0.2 pJ, int32 add 0.1 pJ,
    SRAM 64-bit read 20 pJ at 32 KB and 100 pJ at 1 MB, DRAM 1.3 nJ per 64 bits) and the DRAM
    words scalesim 3.0.0 reports for it (8x8 OS, 64 kB SRAMs: 800 ifmap + 864 filter + 768
    ofmap words, tests/cost/test_scalesim.py's conv3x3 case)."""
    layer = conv_layer("conv3x3", 10, 10, 3, 3, 8, 12, 1)
    r = cost_layer(layer, Accelerator(rows=8, cols=8))
    assert r.dram_words == {"ifmap": 800, "filter": 864, "ofmap": 768}
    macs = 64 * 72 * 12
    mac = macs * (0.2 + 0.1)
    # 64 KiB: a fifth of the way from 32 KB to 1 MB in log2(size): 20 + (100 - 20) / 5 pJ
    sram_bit = (20 + (100 - 20) / 5) / 64
    # OS SRAM words: ifmap Np*K*ceil(Mf/C), filter K*Mf*ceil(Np/R), ofmap Np*Mf; 8 bits each
    sram = (64 * 72 * 2 + 72 * 12 * 8 + 64 * 12) * 8 * sram_bit
    dram = (800 + 864 + 768) * 8 * 1300 / 64
    eb = r.energy_breakdown
    assert eb["mac"] == pytest.approx(mac, rel=1e-5)  # QTools' fit: 0.2000008 pJ a multiply
    assert eb["sram"] == pytest.approx(sram, rel=1e-12)
    assert eb["dram"] == pytest.approx(dram, rel=1e-12)
    assert eb["dram"] / r.energy_pj == pytest.approx(dram / (mac + sram + dram + eb["scheme"]))


def test_bandwidth_mode_from_scalesim_config(tmp_path):
    """[run_presets] InterfaceBandwidth = USER selects SCALE-Sim's USER mode: the figures of
    tests/cost/test_scalesim.py's USER cases (scalesim 3.0.0, 8x8 OS, 1 kB SRAMs, 1 word/cycle:
    conv3x3 stalls 12,136 cycles, DRAM 13,824 + 11,264 + 768 words)."""
    cfg = tmp_path / "user.cfg"
    cfg.write_text(
        "[architecture_presets]\nArrayHeight = 8\nArrayWidth = 8\nIfmapSramSzkB = 1\n"
        "FilterSramSzkB = 1\nOfmapSramSzkB = 1\nDataflow = os\nBandwidth = 1\n"
        "[run_presets]\nInterfaceBandwidth = USER\n"
    )
    acc = load_config(cfg)
    assert acc.bandwidth_mode == "user" and acc.dram_words_per_cycle == 1
    r = cost_layer(conv_layer("conv3x3", 10, 10, 3, 3, 8, 12, 1), acc)
    assert r.dram_words == {"ifmap": 13824, "filter": 11264, "ofmap": 768}
    assert r.stall_cycles == 12136 and r.total_cycles == 1375 + 12136
    layer = conv_layer("conv3x3", 10, 10, 3, 3, 8, 12, 1)
    assert cost_layer(layer, acc.replace(bandwidth_mode="calc")).stall_cycles == 0
    with pytest.raises(ConfigError, match="bandwidth_mode must be calc or user"):
        Accelerator(bandwidth_mode="fast")
    with pytest.raises(ConfigError, match="whole number of words"):
        Accelerator(bandwidth_mode="user", dram_words_per_cycle=2.5)


def test_quantized_program_layers_keep_their_conv_geometry():
    """A quantized program's conv layers are costed as SCALE-Sim convolutions, as the float
    graph's are (the widths were built into a fresh dict that dropped ``geometry``: the ifmap's
    DRAM words were then the unfolded GEMM's, 9,216 instead of 1,600 on a 3x3 conv of rescnn,
    and a quantized model cost 1.85x its float graph at batch 1)."""
    from hwsim import api
    from hwsim.graph.onnx_import import import_model

    graph = import_model("models/rescnn.onnx")
    program = api.quantize_model(graph, "per-tensor", "digits-train")
    fl, ql = layers_from_program(graph), layers_from_program(program)
    convs = [(f, q) for f, q in zip(fl, ql, strict=True) if f.geometry is not None]
    assert len(convs) == 4
    for f, q in convs:
        assert q.geometry == f.geometry
    acc = load_config(None)
    # 8-bit weights / activations / outputs: the same words, so the same DRAM traffic
    fc, qc = cost(fl, acc), cost(ql, acc)
    for f, q in zip(fc.layers, qc.layers, strict=True):
        assert q.dram_words == f.dram_words


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"ifmap_sram_kb": float("inf")}, "ifmap_sram_kb must be a finite number > 0"),
        ({"dram_words_per_cycle": float("nan")}, "dram_words_per_cycle must be a finite"),
        ({"filter_sram_kb": True}, "filter_sram_kb must be a finite number > 0"),
    ],
)
def test_accelerator_rejects_non_finite_fields(fields, message):
    with pytest.raises(ConfigError, match=message):
        Accelerator(**fields)


def test_sram_and_line_checks_name_the_field_and_width():
    layer = conv_layer("c", 10, 10, 3, 3, 8, 12, 1)
    # 0.1 KiB of 16-bit words: 51 words (the configured size and the width in the message)
    acc = Accelerator(ifmap_sram_kb=0.1, act_bits=16)
    with pytest.raises(ConfigError, match=r"ifmap_sram_kb = 0.1 KiB holds 51 16-bit words"):
        cost_layer(layer, acc)
    # USER mode: a line of more than half an SRAM is refused (1 KiB of bytes: 512 at most)
    acc = Accelerator(filter_sram_kb=1, bandwidth_mode="user", dram_words_per_cycle=513)
    with pytest.raises(ConfigError, match=r"dram_words_per_cycle = 513 .* filter SRAM's 1024"):
        cost_layer(layer, acc)
    ok = Accelerator(filter_sram_kb=1, bandwidth_mode="user", dram_words_per_cycle=512)
    cost_layer(layer, ok)


def test_cli_bandwidth_needs_user_mode():
    r = CliRunner().invoke(main, ["cost", "mlp", "--bandwidth", "4"])
    assert r.exit_code == 2 and "--bandwidth-mode user" in r.output
