"""Per-sample-shift accumulation against its plain-int specification."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, gemm, gemm_per_sample_shift
from hwsim.datapath import reference as dref
from hwsim.numerics import Overflow, RoundingMode
from tests.strategies import accumulators, operand_arrays, operands


@given(
    operands(8),
    operands(8),
    accumulators(),
    accumulators(),
    st.integers(1, 4),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 4),
    st.sampled_from(list(RoundingMode)),
    st.data(),
)
def test_per_sample_shift_equals_reference(xo, wo, gacc, facc, G, M, N, Kg, mode, data):
    (xf, xzp), (wf, wzp) = xo, wo
    facc = Accumulator(facc.bits, facc.overflow, facc.signed, track_partials=facc.track_partials)
    if G * 2 ** (gacc.bits - 1) >= 2**62:
        gacc = Accumulator(
            32, gacc.overflow, gacc.signed, gacc.order, gacc.tile_rows, gacc.track_partials
        )
    s_max = 4
    shifts = np.array(data.draw(st.lists(st.integers(0, s_max), min_size=G, max_size=G)))
    x = operand_arrays(data.draw, xf, (M, G * Kg))
    w = operand_arrays(data.draw, wf, (G * Kg, N))
    seed = data.draw(st.integers(0, 1000))
    got = gemm_per_sample_shift(
        x,
        w,
        G,
        shifts,
        x_operand=Operand(xf, xzp),
        w_operand=Operand(wf, wzp),
        group_acc=gacc,
        final_acc=facc,
        rounding=mode,
        s_max=s_max,
        rng=np.random.default_rng(seed),
    )
    draws = None
    if mode is RoundingMode.STOCHASTIC:
        words = np.random.default_rng(seed).integers(
            0, 2**64 - 1, size=(G, M, N), dtype=np.uint64, endpoint=True
        )
        draws = (
            words & ((np.uint64(1) << shifts.astype(np.uint64)) - np.uint64(1))[:, None, None]
        ).tolist()
    want, gc, fc = dref.gemm_per_sample_shift(
        x.tolist(),
        w.tolist(),
        G,
        shifts.tolist(),
        xzp,
        wzp,
        gacc,
        facc,
        mode.value,
        draws,
        n_cols=N,
    )
    assert [[int(v) for v in r] for r in got.values] == want
    assert got.group_counters == gc
    assert got.final_counters == fc


def test_zero_shifts_and_wide_accumulators_equal_plain_gemm():
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (5, 24)).astype(np.int8)
    w = rng.integers(-128, 128, (24, 3)).astype(np.int8)
    r = gemm_per_sample_shift(x, w, 4, np.zeros(4, int))
    assert np.array_equal(r.values, gemm(x, w).values)


def test_shifting_before_the_sum_keeps_a_narrow_final_accumulator_in_range():
    # 4 samples, each partial sum ~ 127*127*8 = 129032 (18 bits): a 16-bit final accumulator
    # overflows on the raw sum, but not once each sample's partial sum is shifted by 4.
    x = np.full((1, 32), 127, np.int8)
    w = np.full((32, 1), 127, np.int8)
    narrow = Accumulator(16, Overflow.SATURATE)
    raw = gemm_per_sample_shift(x, w, 4, np.zeros(4, int), final_acc=narrow)
    shifted = gemm_per_sample_shift(x, w, 4, np.full(4, 4), final_acc=narrow)
    assert raw.final_counters.overflow_events > 0
    assert shifted.final_counters.overflow_events == 0
    assert shifted.values[0, 0] == 4 * 8065  # 129032 / 16 = 8064.5, half away from zero


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(groups=3, shifts=[0, 0, 0]), "not divisible"),
        (dict(groups=2, shifts=[0, 5]), "shifts holds 5, outside \\[0, s_max\\]"),
        (dict(groups=2, shifts=[0, -1]), "shifts holds -1"),
        (dict(groups=2, shifts=[0]), "one per group"),
        (
            dict(groups=2, shifts=[0, 0], final_acc=Accumulator(order="tiled", tile_rows=2)),
            "SEQUENTIAL",
        ),
    ],
)
def test_bad_shift_configuration_is_named(kwargs, match):
    x = np.zeros((2, 4), np.int8)
    w = np.zeros((4, 2), np.int8)
    with pytest.raises(ValueError, match=match):
        gemm_per_sample_shift(x, w, **kwargs)


@given(
    st.sampled_from(
        [
            Accumulator(16, Overflow.SATURATE),
            Accumulator(16, Overflow.SATURATE, order="tiled", tile_rows=3),
            Accumulator(32, Overflow.WRAP, track_partials=True),
            Accumulator(20, Overflow.WRAP, track_partials=True, order="tiled", tile_rows=5),
        ]
    ),
    st.integers(2, 6),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(8, 40),
    st.sampled_from([None, "max"]),
    st.data(),
)
def test_row_blocks_spanning_many_groups(gacc, G, M, N, Kg, extreme, data):
    """With few rows per group, one block of 4 rows of the int16 / int32 lane kernels spans up
    to 4 groups; every row must still use its own group's weights (a regression: the blocks
    were once split at a single group boundary only)."""
    from hwsim.numerics import IntFormat

    xf = wf = IntFormat(8, True)
    x = operand_arrays(data.draw, xf, (M, G * Kg), extreme)
    w = operand_arrays(data.draw, wf, (G * Kg, N), extreme)
    shifts = np.zeros(G, np.int64)
    fin = Accumulator(64, Overflow.SATURATE)
    got = gemm_per_sample_shift(x, w, G, shifts, group_acc=gacc, final_acc=fin)
    want, want_g, want_f = dref.gemm_per_sample_shift(
        x.tolist(), w.tolist(), G, shifts.tolist(), 0, 0, gacc, fin, "half_away"
    )
    assert got.values.tolist() == want
    assert got.group_counters == want_g
    assert got.final_counters == want_f
