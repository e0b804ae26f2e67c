import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.numerics import RoundingMode, reference, round_shift
from tests.strategies import ints_in

DETERMINISTIC = [m for m in RoundingMode if m is not RoundingMode.STOCHASTIC]


@pytest.mark.parametrize(
    "mode, expected",
    [
        # x / 2 for x = -5 .. 5: ties at every odd x
        ("half_even", [-2, -2, -2, -1, 0, 0, 0, 1, 2, 2, 2]),
        ("half_away", [-3, -2, -2, -1, -1, 0, 1, 1, 2, 2, 3]),
        ("half_up", [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3]),
        ("half_down", [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2]),
        ("floor", [-3, -2, -2, -1, -1, 0, 0, 1, 1, 2, 2]),
        ("ceil", [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3]),
        ("toward_zero", [-2, -2, -1, -1, 0, 0, 0, 1, 1, 2, 2]),
    ],
)
def test_tie_rules_on_halves(mode, expected):
    xs = list(range(-5, 6))
    assert [reference.round_shift(x, 1, mode) for x in xs] == expected
    assert round_shift(np.array(xs), 1, mode).tolist() == expected


@given(
    st.sampled_from(DETERMINISTIC),
    st.lists(ints_in(-(2**63), 2**63 - 1), min_size=1, max_size=16),
    st.lists(ints_in(0, 63), min_size=1, max_size=16),
)
def test_vectorised_equals_reference(mode, xs, ss):
    n = min(len(xs), len(ss))
    xs, ss = xs[:n], ss[:n]
    got = round_shift(np.array(xs, np.int64), np.array(ss), mode)
    assert got.tolist() == [
        reference.round_shift(x, s, mode.value) for x, s in zip(xs, ss, strict=True)
    ]
    assert round_shift(xs[0], ss[0], mode) == got[0]


@given(
    st.lists(ints_in(-(2**63), 2**63 - 1), min_size=1, max_size=16),
    st.integers(0, 63),
    st.integers(0, 2**32),
)
def test_stochastic_equals_reference_with_the_same_draws(xs, s, seed):
    got = round_shift(np.array(xs, np.int64), s, "stochastic", np.random.default_rng(seed))
    words = np.random.default_rng(seed).integers(
        0, 2**64 - 1, size=len(xs), dtype=np.uint64, endpoint=True
    )
    draws = [int(w) & ((1 << s) - 1) for w in words]
    assert got.tolist() == [
        reference.round_shift(x, s, "stochastic", u) for x, u in zip(xs, draws, strict=True)
    ]
    scalar = round_shift(xs[0], s, "stochastic", np.random.default_rng(seed))
    assert scalar == got[0]


def test_stochastic_rounding_is_unbiased():
    x = np.full(200_000, 5)  # 5 / 8 = 0.625
    r = round_shift(x, 3, "stochastic", np.random.default_rng(1))
    assert set(np.unique(r)) == {0, 1}
    assert abs(r.mean() - 0.625) < 0.005


def test_stochastic_needs_a_generator():
    with pytest.raises(ValueError, match="numpy.random.Generator"):
        round_shift(np.array([3]), 1, "stochastic")


def test_bad_mode_and_shift_are_named():
    with pytest.raises(ValueError, match="rounding mode must be one of"):
        round_shift(3, 1, "nearest")
    with pytest.raises(ValueError, match="shift holds 64"):
        round_shift(3, 64, "floor")
    with pytest.raises(ValueError, match="shift holds -1"):
        round_shift(3, -1, "floor")
