"""The sweep spec: points are the product of the axes (model outermost, axes in file order)
less the filter's rejects; every bad input is an error naming the spec file and the key."""

from __future__ import annotations

import itertools

import pytest

from hwsim.api import resolve_model
from hwsim.sweep import AXES, SpecError, load_spec
from hwsim.sweep.spec import compile_filter


def test_points_are_the_product_in_file_order(write_spec):
    p = write_spec('wbits = [8, 4]\nscheme = ["per-tensor", "per-channel"]\nacc_bits = 16')
    sp = load_spec(p, resolve_model)
    want = [{"wbits": w, "scheme": s, "acc_bits": 16}
            for w, s in itertools.product([8, 4], ["per-tensor", "per-channel"])]  # fmt: skip
    assert [j.point for j in sp.jobs] == want
    for j, pt in zip(sp.jobs, want, strict=True):
        assert j.scheme.name == pt["scheme"]
        assert (j.scheme.default.wbits, j.scheme.default.acc_bits) == (pt["wbits"], 16)


def test_models_are_the_outermost_axis(write_spec):
    p = write_spec("wbits = [8, 4]", model='["mlp", "rescnn"]')
    sp = load_spec(p, resolve_model)
    assert [(j.model, j.point["wbits"]) for j in sp.jobs] == [
        ("mlp", 8), ("mlp", 4), ("rescnn", 8), ("rescnn", 4)
    ]  # fmt: skip


def test_accelerator_seed_and_isa_axes(write_spec):
    p = write_spec('array = ["8x16"]\ndataflow = ["ws"]\nseed = [0, 5]\nisa = ["avx2"]')
    sp = load_spec(p, resolve_model)
    assert [j.seed for j in sp.jobs] == [0, 5]
    a = sp.jobs[0].accelerator
    assert (a.rows, a.cols, a.dataflow.value) == (8, 16, "ws")
    assert sp.jobs[0].isa == "avx2"


def test_filter_keeps_the_points_where_it_is_true(write_spec):
    p = write_spec(
        'wbits = [8, 6, 4]\nabits = [8, 4]\noverflow = ["wrap", "saturate"]',
        sweep="filter = \"abits >= wbits and not (overflow == 'wrap' and wbits in [6])\"",
    )
    sp = load_spec(p, resolve_model)
    want = [(w, a, o) for w, a, o in itertools.product([8, 6, 4], [8, 4], ["wrap", "saturate"])
            if a >= w and not (o == "wrap" and w == 6)]  # fmt: skip
    assert [(j.point["wbits"], j.point["abits"], j.point["overflow"]) for j in sp.jobs] == want


def test_points_with_equal_settings_run_once(write_spec):
    # acc_bits 32 is the default: the two points are one
    p = write_spec('scheme = ["per-tensor"]\nacc_bits = [32]\nwbits = [8]', name="a.toml")
    q = write_spec('scheme = "per-tensor"\nwbits = 8', name="b.toml")
    a, b = load_spec(p, resolve_model), load_spec(q, resolve_model)
    assert a.jobs[0].settings() == b.jobs[0].settings()


def test_relative_paths_are_relative_to_the_spec(tmp_path, small_data):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / small_data[0].name).write_bytes(small_data[0].read_bytes())
    p = sub / "s.toml"
    p.write_text(f'[sweep]\nmodel = "rescnn"\ndata = "{small_data[0].name}"\n[axes]\nwbits = 8\n')
    sp = load_spec(p, resolve_model)
    assert sp.data == str(sub / small_data[0].name)
    assert sp.results == sub / "s-results"


@pytest.mark.parametrize(
    "axes, sweep, key, words",
    [
        ("colour = [1]", "", "[axes] colour", "unknown axis"),
        ("wbits = [8, 1]", "", "[axes] wbits = 1", "wbits"),
        ("wbits = []", "", "[axes] wbits", "empty"),
        ('overflow = ["wrap", "explode"]', "", "[axes] overflow = 'explode'", "overflow"),
        ('scheme = ["per-banana"]', "", "[axes] scheme = 'per-banana'", "scheme must be one of"),
        ('array = ["32by32"]', "", "[axes] array = '32by32'", "ROWSxCOLS"),
        ('dataflow = ["diagonal"]', "", "[axes] dataflow = 'diagonal'", "dataflow must be"),
        ("seed = [-1]", "", "[axes] seed = -1", "seed must be"),
        ('isa = ["sse"]', "", "[axes] isa = 'sse'", "isa must be"),
        ("wbits = [8, 8]", "", "[axes] wbits", "listed twice"),
        ('order = ["tiled"]', "", "[axes]", "tile_rows"),
        ("wbits = [8]", 'colour = "red"', "[sweep] colour", "unknown key"),
        ("wbits = [8]", "results = 3", "[sweep] results", "folder path"),
        ("wbits = [8, 4]", 'filter = "wbits > 8"', "[sweep] filter", "no points"),
        ("wbits = [8]", 'filter = "abits > 4"', "[sweep] filter", "'abits' is not an axis"),
        ("wbits = [8]", 'filter = "wbits >"', "[sweep] filter", "not a valid expression"),
        ("wbits = [8]", "filter = \"__import__('os')\"", "[sweep] filter", "unsupported"),
        ("wbits = [8]", 'accelerator = "nope.cfg"', "[sweep] accelerator", "no such config"),
    ],
)
def test_bad_spec_names_the_file_and_key(write_spec, axes, sweep, key, words):
    p = write_spec(axes, sweep)
    with pytest.raises(SpecError) as e:
        load_spec(p, resolve_model)
    msg = str(e.value)
    assert msg.startswith(f"{p}: "), msg
    assert key in msg and words in msg, msg


def test_missing_model_and_data_name_the_key(tmp_path):
    p = tmp_path / "s.toml"
    p.write_text('[sweep]\nmodel = "nosuch.onnx"\ndata = "digits"\n')
    with pytest.raises(SpecError, match=r"s\.toml: \[sweep\] model: no such model file"):
        load_spec(p, resolve_model)
    p.write_text('[sweep]\nmodel = "nosuchmodel"\ndata = "digits"\n')
    with pytest.raises(SpecError, match=r"\[sweep\] model: no model file or shipped model"):
        load_spec(p, resolve_model)
    p.write_text('[sweep]\nmodel = "rescnn"\ndata = "nosuch.npz"\n')
    with pytest.raises(SpecError, match=r"\[sweep\] data: no built-in data set or file"):
        load_spec(p, resolve_model)
    p.write_text('[sweep]\ndata = "digits"\n')
    with pytest.raises(SpecError, match=r"\[sweep\] model: missing"):
        load_spec(p, resolve_model)
    p.write_text("[sweep\n")
    with pytest.raises(SpecError, match=r"s\.toml: not valid TOML"):
        load_spec(p, resolve_model)
    p.write_text('[sweep]\nmodel = "rescnn"\ndata = "digits"\n[extra]\n')
    with pytest.raises(SpecError, match=r"unknown table"):
        load_spec(p, resolve_model)
    with pytest.raises(SpecError, match=r"no such sweep spec"):
        load_spec(tmp_path / "absent.toml", resolve_model)


def test_every_scheme_field_is_an_axis():
    import dataclasses

    from hwsim.quant.scheme import LayerScheme

    assert {f.name for f in dataclasses.fields(LayerScheme)} <= set(AXES)


def test_filter_against_python_semantics():
    """The filter's little language means what Python means (the reference: eval)."""
    names = ("a", "b", "s")
    exprs = ["a < b <= 8", "a % 2 == 0 or s == 'x'", "not a - b > 1",
             "s in ['x', 'y'] and a*2 >= b", "a // 2 != b / 4", "-a < b"]  # fmt: skip
    for text in exprs:
        keep = compile_filter(text, names, ValueError)
        for a, b, s in itertools.product(range(-2, 9, 3), range(1, 9, 2), ["x", "z"]):
            env = {"a": a, "b": b, "s": s}
            assert keep(env) == bool(eval(text, {}, dict(env))), (text, env)
