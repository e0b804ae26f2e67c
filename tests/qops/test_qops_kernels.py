"""The one-pass kernels of the onnxruntime contracts against the numpy compositions they
replace, to the bit: QLinearAdd on equal shapes (FMA emulation, ties, rails)."""

from unittest import mock

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.numerics import IntFormat
from hwsim.qops import elementwise, qlinear_add
from hwsim.qops.common import _saturate, cvtps_epi32, fma_f32
from hwsim.qops.elementwise import ort_broadcast_mode
from hwsim.qops.kernels import fma32
from tests.strategies import ints_in


def qlinear_add_numpy(A, sa, za, B, sb, zb, sc, zc, fmt):
    """QLinearAdd as :func:`hwsim.qops.qlinear_add` computed it before the kernel."""
    f32 = np.float32
    ra, rb = f32(f32(sa) / f32(sc)), f32(f32(sb) / f32(sc))
    Ab, Bb = A.astype(np.int64), B.astype(np.int64)
    if ort_broadcast_mode(A.shape, B.shape) == "input0_scalar":
        (P, rp, zp), (Q, rq, zq) = (Bb, rb, zb), (Ab, ra, za)
    else:
        (P, rp, zp), (Q, rq, zq) = (Ab, ra, za), (Bb, rb, zb)
    fixed = f32(zc) - fma_f32(rp, f32(zp), rq * f32(zq))
    y = fma_f32(P.astype(f32), rp, fma_f32(Q.astype(f32), rq, fixed))
    return _saturate(cvtps_epi32(y), fmt)


scales = st.one_of(
    st.sampled_from([2.0**-k for k in range(0, 12)] + [0.1, 0.3, 1 / 3]),
    st.floats(2.0**-13, 10.0, width=32),
)


@given(
    st.booleans(),
    st.sampled_from([(1, 1), (3, 1, 1), (2, 5), (4, 3, 2, 2), (2, 0), (1, 7)]),
    scales,
    scales,
    scales,
    st.data(),
)
def test_qlinear_add_kernel_is_the_numpy_composition(signed, shape, sa, sb, sc, data):
    fmt = IntFormat(8, signed)
    dt = np.int8 if signed else np.uint8
    A = data.draw(hnp.arrays(dt, shape, elements=ints_in(fmt.min, fmt.max)))
    B = data.draw(hnp.arrays(dt, shape, elements=ints_in(fmt.min, fmt.max)))
    za, zb, zc = (dt(data.draw(ints_in(fmt.min, fmt.max))) for _ in range(3))
    got = qlinear_add(A, np.float32(sa), za, B, np.float32(sb), zb, np.float32(sc), zc)
    want = qlinear_add_numpy(A, sa, int(za), B, sb, int(zb), sc, int(zc), fmt)
    assert got.dtype == want.dtype and np.array_equal(got, want)


@given(
    st.booleans(),
    st.sampled_from([(1, 1), (3, 1, 1), (2, 5), (4, 3, 2, 2), (2, 0), (1, 7), (2, 300)]),
    scales,
    scales,
    scales,
    st.data(),
)
def test_qlinear_add_table_is_the_numpy_composition(signed, shape, sa, sb, sc, data):
    """The table path (every pair of values computed once, then looked up), forced on for any
    size: the numpy composition's values, rails and ties included."""
    fmt = IntFormat(8, signed)
    dt = np.int8 if signed else np.uint8
    edge = st.sampled_from([fmt.min, fmt.min + 1, -1 if signed else 1, 0, fmt.max - 1, fmt.max])
    vals = st.one_of(edge, ints_in(fmt.min, fmt.max))
    A = data.draw(hnp.arrays(dt, shape, elements=vals))
    B = data.draw(hnp.arrays(dt, shape, elements=vals))
    za, zb, zc = (dt(data.draw(vals)) for _ in range(3))
    with mock.patch.object(elementwise, "TABLE_MIN", 1):
        got = qlinear_add(A, np.float32(sa), za, B, np.float32(sb), zb, np.float32(sc), zc)
    want = qlinear_add_numpy(A, sa, int(za), B, sb, int(zb), sc, int(zc), fmt)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_qlinear_add_table_on_a_large_tensor_is_the_direct_kernel():
    """A tensor above TABLE_MIN (the table path by default) against the element-by-element
    kernel on every pair of values, for both signednesses and a tie-prone ratio."""
    rng = np.random.default_rng(5)
    for dt in (np.int8, np.uint8):
        info = np.iinfo(dt)
        A = rng.integers(info.min, info.max + 1, (4, 3, 64, 96)).astype(dt)
        B = rng.integers(info.min, info.max + 1, A.shape).astype(dt)
        A.reshape(-1)[:65536] = np.repeat(np.arange(info.min, info.max + 1), 256)
        B.reshape(-1)[:65536] = np.tile(np.arange(info.min, info.max + 1), 256)
        args = (np.float32(0.5), dt(3), B, np.float32(0.25), dt(-5 if dt == np.int8 else 7))
        got = qlinear_add(A, *args, np.float32(0.5), dt(1))
        with mock.patch.object(elementwise, "TABLE_MIN", A.size + 1):
            direct = qlinear_add(A, *args, np.float32(0.5), dt(1))
        want = qlinear_add_numpy(
            A, 0.5, 3, B, 0.25, int(args[-1]), 0.5, 1, IntFormat(8, dt == np.int8)
        )
        assert np.array_equal(got, direct) and np.array_equal(got, want)


@given(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.floats(width=32, allow_nan=False, allow_infinity=False),
)
def test_fma32_is_fma_f32(a, b, c):
    """Random float32 triples, including products whose float64 sum is a float32 midpoint."""
    want = fma_f32(np.float32(a), np.float32(b), np.float32(c))
    with np.errstate(all="ignore"):
        got = fma32(np.float32(a), np.float32(b), np.float32(c))
    assert np.float32(got).tobytes() == np.float32(want).tobytes()


def test_fma32_midpoints_round_on_the_errors_side():
    """``a*b`` an odd 25-bit integer (a float32 midpoint) times powers of two, ``c`` far below
    its float64 ulp: the float64 sum is the midpoint, the exact value lies on ``c``'s side."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(4000):
        u, v = (int(rng.integers(0, 2**10)) * 2 + 1 for _ in range(2))
        ea, eb = (int(rng.integers(-20, 20)) for _ in range(2))
        a = np.float32(np.ldexp(2**12 + u, ea) * rng.choice([1, -1]))
        b = np.float32(np.ldexp(2**12 + v, eb))
        p = np.float64(a) * np.float64(b)
        c = np.float32(np.ldexp(1.0, int(np.floor(np.log2(abs(p)))) - 60) * rng.choice([1, -1]))
        want = fma_f32(a, b, c)
        got = fma32(a, b, c)
        hits += bool(np.float32(want) != np.float32(p + np.float64(c)))
        assert np.float32(got).tobytes() == np.float32(want).tobytes()
    assert hits > 1000, "the double-rounding cases were not exercised"
