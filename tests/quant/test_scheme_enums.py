"""The quantization vocabulary as enums: members are their value strings everywhere a setting
is compared, printed or stored, and one coercion (``hwsim.numerics.coerce``) checks them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hwsim.datapath import Accumulator, ReductionOrder
from hwsim.datapath.isa import Isa, resolve
from hwsim.numerics import (
    IntFormat,
    Overflow,
    RoundingMode,
    ScaleKind,
    as_kind,
    as_mode,
    coerce,
    enum_values,
)
from hwsim.quant.scheme import (
    ACT_MODES,
    ACT_SPEC_MODES,
    BN_FOLDS,
    CALIB_METHODS,
    DATA_FREE_RANGES,
    GRANULARITIES,
    SHIFT_BASES,
    WEIGHT_MODES,
    ActMode,
    ActSpec,
    BnFold,
    CalibMethod,
    DataFreeRange,
    Granularity,
    LayerScheme,
    Scheme,
    SchemeError,
    ShiftBase,
    WeightMode,
)

_VOCABULARY = [
    (WeightMode, WEIGHT_MODES, ("symmetric", "symmetric-full", "asymmetric")),
    (Granularity, GRANULARITIES, ("tensor", "channel")),
    (ActMode, ACT_MODES, ("static", "data-free", "dynamic", "shift", "token", "token-shift")),
    (CalibMethod, CALIB_METHODS, ("minmax", "percentile")),
    (BnFold, BN_FOLDS, ("weights", "register")),
    (DataFreeRange, DATA_FREE_RANGES, ("sound", "official")),
    (ShiftBase, SHIFT_BASES, ("static", "runtime")),
]


@pytest.mark.parametrize("cls, values, expected", _VOCABULARY,
                         ids=[v[0].__name__ for v in _VOCABULARY])
def test_value_tuples_are_the_enums_values(cls, values, expected):
    assert values == expected == enum_values(cls)
    for m in cls:
        v = m.value
        assert m == v and v == m and hash(m) == hash(v) and {v: 1}[m] == 1
        assert str(m) == f"{m}" == "%s" % m == v
        assert json.dumps(m) == json.dumps(v) and json.dumps({"k": m}) == json.dumps({"k": v})
        assert cls(v) is m


def test_act_spec_modes_are_the_range_units():
    assert ACT_SPEC_MODES == ("static", "dynamic", "shift")


def test_layer_scheme_holds_members_and_serializes_plain_strings():
    ls = LayerScheme(granularity="channel", weight_mode="asymmetric", act_mode="shift",
                     shift_base="runtime", register=ScaleKind.POW2, overflow=Overflow.SATURATE,
                     order=ReductionOrder.TILED, tile_rows=4, rounding=RoundingMode.FLOOR)
    assert ls.act_mode is ActMode.SHIFT and ls.granularity is Granularity.CHANNEL
    assert ls.weight_mode is WeightMode.ASYMMETRIC and ls.shift_base is ShiftBase.RUNTIME
    # the datapath's settings are held as their values (their enums are no strings)
    assert (ls.register, ls.overflow, ls.order, ls.rounding) == ("pow2", "saturate", "tiled",
                                                                 "floor")
    assert ls.accumulator == Accumulator(bits=32, overflow=Overflow.SATURATE,
                                         order=ReductionOrder.TILED, tile_rows=4)
    s = Scheme("custom", ls)
    d = s.as_dict()
    assert all(type(v) in (int, float, str) for v in d["default"].values()), d
    assert d["default"] == {k: (v.value if hasattr(v, "value") else v)
                            for k, v in dataclasses.asdict(ls).items()}
    back = Scheme.from_dict(json.loads(json.dumps(d)))
    assert back == s and back.default.act_mode is ActMode.SHIFT
    assert LayerScheme(**json.loads(json.dumps(d["default"]))) == ls


def test_preset_equals_the_same_scheme_from_strings():
    a = Scheme.preset("per-sample-shift", shift_base="runtime")
    b = Scheme("per-sample-shift", LayerScheme(granularity="tensor", act_mode="shift",
                                               shift_base="runtime"))
    assert a == b and hash(a.default) == hash(b.default)


@pytest.mark.parametrize("field, allowed", [
    ("granularity", "tensor, channel"),
    ("weight_mode", "symmetric, symmetric-full, asymmetric"),
    ("act_mode", "static, data-free, dynamic, shift, token, token-shift"),
    ("calib_method", "minmax, percentile"),
    ("bn_fold", "weights, register"),
    ("data_free_range", "sound, official"),
    ("shift_base", "static, runtime"),
    ("overflow", "wrap, saturate"),
    ("order", "sequential, tiled"),
])
def test_a_bad_choice_names_the_field_and_the_values(field, allowed):
    with pytest.raises(SchemeError) as ei:
        LayerScheme(**{field: "bogus"})
    assert str(ei.value) == f"{field} must be one of {allowed}; got 'bogus'"


def test_act_spec_modes_are_checked():
    spec = ActSpec("shift", IntFormat(8, True), 0.5, 0, 4, base="runtime")
    assert spec.mode is ActMode.SHIFT and spec.base is ShiftBase.RUNTIME
    assert spec.as_dict()["mode"] == "shift" and type(spec.as_dict()["mode"]) is str
    assert ActSpec.from_dict(spec.as_dict()) == spec
    with pytest.raises(SchemeError, match="^mode must be one of static, dynamic, shift; got 'd"):
        ActSpec("data-free", IntFormat(8, True))
    bad = {**spec.as_dict(), "mode": "data-free"}
    with pytest.raises(SchemeError, match="^tensor 'x': field 'mode' must be one of static, dyn"):
        ActSpec.from_dict(bad, "tensor 'x'")
    bad = {**spec.as_dict(), "zero_point": 3}
    with pytest.raises(SchemeError, match="^t: field 'zero_point' must be 0 for mode 'shift',"):
        ActSpec.from_dict(bad, "t")


# --- the one coercion ------------------------------------------------------------------------
def test_coerce_accepts_a_member_or_its_value():
    assert coerce("wrap", Overflow, "overflow") is Overflow.WRAP
    assert coerce(Overflow.WRAP, Overflow, "overflow") is Overflow.WRAP
    assert coerce("data-free", ActMode, "act_mode") is ActMode.DATA_FREE


@pytest.mark.parametrize("value", ["WRAP", "clip", 1, None, Overflow, ScaleKind.ORT])
def test_coerce_rejects_anything_else_listing_the_values(value):
    with pytest.raises(ValueError) as ei:
        coerce(value, Overflow, "Accumulator.overflow")
    assert str(ei.value) == f"Accumulator.overflow must be one of wrap, saturate; got {value!r}"


def test_coerce_allowed_subset_and_error_type():
    with pytest.raises(SchemeError, match="^m must be one of static, shift; got 'dynamic'$"):
        coerce("dynamic", ActMode, "m", allowed=("static", "shift"), error=SchemeError)
    with pytest.raises(SchemeError, match="got <ActMode.DYNAMIC: 'dynamic'>"):
        coerce(ActMode.DYNAMIC, ActMode, "m", allowed=("static", "shift"), error=SchemeError)


def test_the_coercions_keep_their_messages():
    cases = [
        (lambda: as_kind("x"), "scale register must be one of tflite, tflite-single, ort, pow2"),
        (lambda: as_mode("x"), "rounding mode must be one of half_even, half_away, half_up"),
        (lambda: resolve("x"), "isa must be one of exact, avx2, auto; got 'x'"),
        (lambda: Accumulator(order="x"), "Accumulator.order must be one of sequential, tiled"),
    ]
    for fn, msg in cases:
        with pytest.raises(ValueError) as ei:
            fn()
        assert str(ei.value).startswith(msg), str(ei.value)
    assert as_kind("pow2") is ScaleKind.POW2 and as_mode(RoundingMode.FLOOR) is RoundingMode.FLOOR
    assert resolve("avx2") is Isa.AVX2 and resolve(Isa.EXACT) is Isa.EXACT
