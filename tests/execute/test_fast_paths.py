"""The executors' fast paths against the numpy compositions they replace, to the bit: the float
reference convolution and max pooling (the run report's SQNR sums: tests/execute/test_sqnr.py)."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.datapath import conv_output_size
from hwsim.datapath.kernels import gmn_to_nchw, im2col_nhwc
from hwsim.execute.arrays import max_pool, pad, windows
from hwsim.execute.float import float_conv

SPECIALS = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1.0, -1.0, 1e-45, 3.4e38], np.float32)


def float_conv_numpy_pad(x, w, b, attrs):
    """The float reference convolution as it was: numpy pad, transpose, contiguous copy."""
    g = attrs["group"]
    xp = np.ascontiguousarray(pad(x, attrs["pads"], 0.0).transpose(0, 2, 3, 1), np.float32)
    N, Hp, Wp, C = xp.shape
    F, Cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    ho = conv_output_size(Hp, kh, sh, 0, 0, dh)
    wo = conv_output_size(Wp, kw, sw, 0, 0, dw)
    K = Cg * kh * kw
    cols = np.empty((g, N * ho * wo, K), np.float32)
    im2col_nhwc(xp, g, kh, kw, sh, sw, dh, dw, ho, wo, cols)
    Fg = F // g
    w3 = w.astype(np.float32).reshape(g, Fg, Cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(g, K, Fg)
    out = np.empty((N, F, ho * wo), np.float32)
    gmn_to_nchw(np.matmul(cols, w3), N, out)
    out = out.reshape(N, F, ho, wo)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def float_arrays(shape, specials: bool):
    values = st.sampled_from(SPECIALS.tolist()) if specials else st.floats(-4, 4, width=32)
    return hnp.arrays(np.float32, shape, elements=values)


@given(
    st.integers(0, 2),
    st.integers(1, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.tuples(*(st.integers(0, 2) for _ in range(4))),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.booleans(),
    st.booleans(),
    st.data(),
)
def test_float_conv_pads_in_one_pass_to_the_bit(N, groups, kh, kw, pads, strides, dil, bias,
                                                specials, data):  # fmt: skip
    """Borders, strides, dilations, groups, empty batches, signed zeros, NaN and infinities."""
    cg, fg = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    H = data.draw(st.integers(max(1, dil[0] * (kh - 1) + 1 - pads[0] - pads[2]), 6))
    W = data.draw(st.integers(max(1, dil[1] * (kw - 1) + 1 - pads[1] - pads[3]), 6))
    x = data.draw(float_arrays((N, groups * cg, H, W), specials))
    w = data.draw(float_arrays((groups * fg, cg, kh, kw), False))
    b = data.draw(float_arrays((groups * fg,), False)) if bias else None
    attrs = {"group": groups, "pads": pads, "strides": strides, "dilations": dil}
    with np.errstate(all="ignore"):  # inf * 0 and inf - inf: NaN, as before
        got = float_conv(x, w, b, attrs)
        want = float_conv_numpy_pad(x, w, b, attrs)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@given(
    st.integers(0, 2),
    st.integers(1, 3),
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.tuples(*(st.integers(0, 2) for _ in range(4))),
    st.sampled_from(["int8", "uint8", "int16", "int64", "float32", "specials"]),
    st.data(),
)
def test_max_pool_is_the_windows_reduce_to_the_bit(N, C, kernel, strides, pads, kind, data):
    """Integers (the Numba pass), floats (the Numba pass), and floats with signed zeros or NaN
    (numpy's reduce, which picks them by position): numpy's windows reduce, padded with the
    fill (the format minimum, -inf)."""
    H = data.draw(st.integers(max(1, kernel[0] - pads[0] - pads[2]), 7))
    W = data.draw(st.integers(max(1, kernel[1] - pads[1] - pads[3]), 7))
    if kind in ("float32", "specials"):
        x = data.draw(float_arrays((N, C, H, W), kind == "specials"))
        fill = -np.inf
    else:
        info = np.iinfo(kind)
        x = data.draw(hnp.arrays(kind, (N, C, H, W), elements=st.integers(info.min, info.max)))
        fill = data.draw(st.sampled_from([info.min, info.min + 1, 0]))  # 0: padding can win
    got = max_pool(x, kernel, strides, pads, fill)
    want = windows(pad(x, pads, fill), kernel, strides).max(axis=(-1, -2))
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes()
