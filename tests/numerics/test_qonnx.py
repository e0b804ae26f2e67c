"""QONNX Quant / Trunc contracts (hwsim.numerics.qonnx) against the plain-int references
(hwsim.numerics.reference) and qonnx's own reference code (test extra)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from qonnx.custom_op.general.quant import quant as qonnx_quant
from qonnx.custom_op.general.quant import resolve_rounding_mode

from hwsim.numerics.qonnx import (
    QuantRounding,
    int_quant,
    parse_rounding,
    quant_range,
    trunc_int,
    trunc_shift,
)
from hwsim.numerics.reference import ref_qonnx_quant, ref_qonnx_trunc
from tests.strategies import ints_in

MODES = [m.value for m in QuantRounding]
_QONNX_NAME = {"ROUND_TO_ZERO": "DOWN"}  # qonnx 1.0.0 reads Brevitas' name as DOWN (np.fix)


@st.composite
def quant_cases(draw):
    bits = draw(st.integers(2, 16))
    signed, narrow = draw(st.booleans()), draw(st.booleans())
    scale = np.float32(draw(st.sampled_from([1.0, 0.5, 0.1, 2.0**-7, 0.0392, 3.7, 1e-3])))
    z = draw(st.integers(-3, 3)) if draw(st.booleans()) else 0
    lo, hi = quant_range(bits, signed, narrow)
    k = draw(ints_in(lo - 4, hi + 4))
    frac = draw(st.sampled_from([0.0, 0.5, -0.5, 0.25, 0.4999999, 0.5000001, 0.999]))
    x = np.float32((k + frac) * float(scale))  # ties, near-ties and clamping included
    return x, scale, np.float32(z), bits, signed, narrow


@given(quant_cases(), st.sampled_from(MODES))
def test_int_quant_equals_the_plain_int_reference(case, mode):
    x, s, z, bits, signed, narrow = case
    got = int(int_quant(x, s, z, bits, signed, narrow, QuantRounding(mode)))
    assert got == ref_qonnx_quant(float(x), float(s), float(z), bits, signed, narrow, mode)


@given(quant_cases(), st.sampled_from(MODES))
def test_int_quant_equals_qonnx_reference_code(case, mode):
    x, s, z, bits, signed, narrow = case
    q = int_quant(x, s, z, bits, signed, narrow, QuantRounding(mode))
    ref = qonnx_quant(
        np.array([x]), s, z, np.float32(bits), int(signed), int(narrow), _QONNX_NAME.get(mode, mode)
    )
    assert np.float32((q - z) * s) == ref[0]


@given(
    st.integers(-(1 << 20), 1 << 20),
    st.integers(0, 8),
    st.integers(2, 16),
    st.booleans(),
    st.booleans(),
    st.sampled_from(MODES),
)
def test_trunc_int_equals_the_plain_int_reference(q, shift, bits, signed, narrow, mode):
    got = int(trunc_int(np.array([q]), shift, bits, signed, narrow, QuantRounding(mode))[0])
    assert got == ref_qonnx_trunc(q, shift, bits, signed, narrow, mode)


def test_rounding_modes_match_qonnx_on_ties_and_signs():
    t = np.array([-2.5, -1.5, -0.5, -0.0, 0.5, 1.5, 2.5, -1.2, 1.7, 3.0], np.float32)
    for m in MODES:
        ref = resolve_rounding_mode(_QONNX_NAME.get(m, m))(t)
        got = int_quant(t, np.float32(1), np.float32(0), 16, True, False, QuantRounding(m))
        assert np.array_equal(got, ref), m


def test_rounding_mode_names_and_aliases():
    assert parse_rounding(b"ROUND") is QuantRounding.ROUND
    assert parse_rounding("half_even") is QuantRounding.ROUND
    assert parse_rounding("DOWN") is QuantRounding.ROUND_TO_ZERO
    try:
        parse_rounding("STOCHASTIC_ROUND")
    except ValueError as e:
        assert "STOCHASTIC_ROUND" in str(e) and "FLOOR" in str(e)
    else:
        raise AssertionError("accepted an unknown mode")


@given(
    st.lists(st.integers(-(1 << 14), 1 << 14), min_size=1, max_size=8),
    st.sampled_from([1, 4, 9, 16, 49]),
    st.integers(0, 6),
    st.integers(2, 12),
    st.booleans(),
    st.booleans(),
    st.sampled_from(MODES),
    st.sampled_from([1.0, 0.5, 0.1, 2.0**-7, 0.0392]),
)
def test_trunc_int_on_a_pool_sum_equals_qonnx_trunc_v2(
    sums, k, shift, bits, signed, narrow, mode, s_in
):
    """``Trunc`` after an average pool as Brevitas writes it (input ``S * s_in / K``, scale
    ``s_in / K``, output scale ``scale * 2^shift``): qonnx's float ``trunc_v2`` gives
    ``trunc_int(S, ...)`` times the output scale."""
    from qonnx.custom_op.general.trunc import trunc_v2

    q = np.array(sums, np.int64)
    if not signed:
        q = np.abs(q)
    s_in = np.float32(s_in)
    scale = np.float32(s_in / np.float32(k))
    out_scale = np.float32(scale * np.float32(2.0**shift))
    mean = (q.astype(np.float32) * s_in / np.float32(k)).astype(np.float32)
    ref = trunc_v2(
        mean, scale, np.float32(0), np.float32(16), int(narrow), int(signed), out_scale,
        np.float32(bits), _QONNX_NAME.get(mode, mode),
    )  # fmt: skip
    assert trunc_shift(scale, out_scale) == shift
    got = trunc_int(q, shift, bits, signed, narrow, QuantRounding(mode))
    assert np.array_equal((got * out_scale).astype(np.float32), ref)
