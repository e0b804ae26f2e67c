"""``hwsim.numerics.affine.dequantize``'s float32 path for 8- and 16-bit integers equals ONNX
DequantizeLinear's ``f32(q - zp) * f32(scale)`` computed through int64 (the plain formula) in
every bit: per tensor and along an axis, zero points up to the format's ends, scales from
denormal to huge, infinite and NaN."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.numerics.affine import dequantize

DTYPES = [np.int8, np.uint8, np.int16, np.uint16]
SCALES = [1e-45, 1e-38, 0.0173, 1.0, 3e38, np.inf, np.nan, 0.0]


def plain(q, scale, zp, axis):
    """The int64 formula, written out for one axis."""
    q = np.asarray(q)
    zp = np.asarray(zp, np.int64)
    s = np.asarray(scale, np.float32)
    if axis is not None and zp.ndim:
        shape = [1] * q.ndim
        shape[axis] = -1
        zp, s = zp.reshape(shape), s.reshape(shape)
    return ((q.astype(np.int64) - zp).astype(np.float32) * s).astype(np.float32)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from(DTYPES),
    st.lists(st.integers(1, 5), min_size=0, max_size=3),
    st.booleans(),
)
def test_dequantize_is_the_int64_formula_bit_for_bit(seed, dtype, shape, per_axis):
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    q = rng.integers(info.min, int(info.max) + 1, shape).astype(dtype)
    axis = None
    if per_axis and len(shape):
        axis = int(rng.integers(0, len(shape)))
        n = shape[axis]
        zp = rng.integers(info.min, int(info.max) + 1, n)
        scale = rng.choice(np.array(SCALES, np.float32), n) * rng.uniform(0.5, 2, n)
    else:
        zp = int(rng.choice([info.min, info.max, 0, int(rng.integers(info.min, info.max))]))
        scale = np.float32(rng.choice(SCALES) * rng.uniform(0.5, 2))
    with np.errstate(all="ignore"):
        got = dequantize(q, scale, zp, axis)
        want = plain(q, scale, zp, axis)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_far_zero_points_and_wide_integers_take_the_int64_path():
    """A zero point beyond 2^23 or a 32-bit input: the int64 formula, the same values."""
    q = np.array([-(2**31), 0, 2**31 - 1], np.int32)
    assert np.array_equal(dequantize(q, np.float32(0.5), 3), plain(q, 0.5, 3, None))
    q8 = np.array([-128, 0, 127], np.int8)
    got = dequantize(q8, np.float32(1.0), 2**24 + 1)
    assert np.array_equal(got, plain(q8, 1.0, 2**24 + 1, None))
