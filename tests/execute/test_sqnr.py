"""The run report's SQNR sums (``hwsim.execute.sqnr``): per-sample lane sums against a plain
Python re-statement of the contract over numpy's float64 terms, to the bit; the exact total
over samples against exact rational arithmetic, in any order and grouping."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.execute import QTensor
from hwsim.execute.sqnr import ExactSum, sample_square_sums
from hwsim.numerics import IntFormat

SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 1e-45, 3.4e38], np.float32)


def float_arrays(shape, specials: bool):
    values = st.sampled_from(SPECIALS.tolist()) if specials else st.floats(-4, 4, width=32)
    return hnp.arrays(np.float32, shape, elements=values)


def lanes_reference(terms: np.ndarray) -> float:
    """Four running float64 sums, element ``e`` into sum ``e % 4`` in increasing ``e``, then
    ``(s0 + s1) + (s2 + s3)`` -- Python floats are IEEE float64 rounding to nearest even."""
    s = [0.0, 0.0, 0.0, 0.0]
    for e, t in enumerate(terms.ravel().tolist()):
        s[e % 4] = s[e % 4] + t
    return (s[0] + s[1]) + (s[2] + s[3])


def per_sample_reference(f, v):
    """numpy's float64 terms (``f`` and the dequantized ``v`` widened), lane sums per sample."""
    fv = f.astype(np.float64)
    d = v.dequantize().astype(np.float64)
    ff, ee = fv * fv, (fv - d) ** 2
    n = f.shape[0] if f.ndim else 0
    return (
        np.array([lanes_reference(ff[i]) for i in range(n)]),
        np.array([lanes_reference(ee[i]) for i in range(n)]),
    )


@given(
    st.sampled_from([(0,), (1,), (3,), (2, 5), (2, 3, 4, 5), (1, 1, 1, 1), (3, 9), (2, 1, 7)]),
    st.sampled_from(["tensor", "sample", "token"]),
    st.sampled_from([IntFormat(8, True), IntFormat(8, False), IntFormat(16, True)]),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_sample_square_sums_are_the_lane_sums_of_numpys_terms(shape, scale_kind, fmt, specials,
                                                               strided, data):  # fmt: skip
    """Per-tensor and per-sample scales (the fused pass), per-token scales and non-contiguous
    float tensors (numpy terms), edge integers, signed zeros, NaN and infinities."""
    f = data.draw(float_arrays(shape, specials))
    if strided and f.ndim > 1:
        f = np.swapaxes(np.swapaxes(f, 0, -1).copy(), 0, -1)  # same values, Fortran-like order
    q = data.draw(hnp.arrays(fmt.dtype, shape, elements=st.integers(fmt.min, fmt.max)))
    zp = data.draw(st.integers(fmt.min, fmt.max))
    positive = st.floats(2.0**-20, 16, width=32)
    if scale_kind == "tensor" or not shape:
        scale = np.float32(data.draw(positive))
    elif scale_kind == "sample":
        scale = data.draw(hnp.arrays(np.float32, (shape[0],), elements=positive))
    else:
        scale = data.draw(hnp.arrays(np.float32, shape[:1] + (1,) * (len(shape) - 1),
                                     elements=positive))  # fmt: skip
        if len(shape) < 2:
            scale = scale.reshape(-1)
    v = QTensor(q, scale, zp, fmt)
    with np.errstate(all="ignore"):  # inf - inf: NaN
        got = sample_square_sums(f, v)
        want = per_sample_reference(f, v)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.float64 and g.shape == (shape[0],)
        assert g.tobytes() == w.tobytes()


def test_a_sample_sum_does_not_depend_on_its_batch():
    rng = np.random.default_rng(3)
    f = rng.normal(0, 1, (9, 4, 5, 7)).astype(np.float32)
    q = rng.integers(-128, 128, f.shape).astype(np.int8)
    fmt = IntFormat(8, True)
    whole = sample_square_sums(f, QTensor(q, np.float32(0.01), 2, fmt))
    for i in range(9):
        one = sample_square_sums(f[i : i + 1], QTensor(q[i : i + 1], np.float32(0.01), 2, fmt))
        assert one[0][0] == whole[0][i] and one[1][0] == whole[1][i]


def exact_total(chunks) -> float:
    """The exact rational sum, rounded once (``float(Fraction)`` rounds to nearest even)."""
    return float(sum((Fraction(v) for c in chunks for v in c.tolist()), Fraction(0)))


magnitudes = st.floats(0, 1e300, allow_nan=False) | st.floats(0, 1e-300) | st.floats(0, 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.lists(magnitudes, max_size=40), max_size=12),
    st.integers(1, 64),
    st.randoms(use_true_random=False),
)
def test_exact_sum_is_the_rounded_exact_sum_in_any_order(chunks, compact, rnd):
    """Values over 600 orders of magnitude, in chunks, compacted every ``compact`` values; the
    chunks shuffled and regrouped give the same float."""
    arrays = [np.array(c, np.float64) for c in chunks]
    want = exact_total(arrays)
    s = ExactSum()
    s.COMPACT = compact
    for a in arrays:
        s.add(a)
    assert s.value() == want
    flat = [v for a in arrays for v in a.tolist()]
    rnd.shuffle(flat)
    t = ExactSum()
    t.COMPACT = compact
    for i in range(0, len(flat), 5):
        t.add(np.array(flat[i : i + 5], np.float64))
    assert t.value() == want


def test_exact_sum_where_float_sums_lose_it():
    """1 + 2^-60 + ... : a float running sum returns 1.0; the exact total is above it."""
    s = ExactSum()
    s.COMPACT = 2
    s.add(np.array([1.0]))
    for _ in range(1 << 10):
        s.add(np.array([2.0**-60]))
    assert s.value() == exact_total([np.array([1.0]), np.full(1 << 10, 2.0**-60)])
    assert s.value() > 1.0 and sum([1.0] + [2.0**-60] * (1 << 10)) == 1.0


@pytest.mark.parametrize(
    "specials, want", [([np.inf], math.inf), ([np.nan], math.nan), ([np.inf, np.nan], math.nan)]
)
def test_exact_sum_of_non_finite_values(specials, want):
    s = ExactSum()
    s.add(np.array([1.0, *specials, 2.0]))
    v = s.value()
    assert (math.isnan(v) and math.isnan(want)) or v == want
