"""The layout kernels the convolutions share, against numpy's transposes."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.datapath.kernels import gmn_to_nchw, im2col_nhwc


@given(
    st.integers(1, 3),
    st.integers(0, 3),
    st.integers(0, 70),
    st.integers(0, 5),
    st.sampled_from([(np.int32, np.int64), (np.int64, np.int64), (np.float32, np.float32)]),
    st.data(),
)
def test_gmn_to_nchw_is_the_transpose(G, N, P, Fg, dtypes, data):
    """Grouped GEMM rows (G, N*P, Fg) back to (N, G*Fg, P): positions across tile edges (32),
    empty and size-1 axes, widening int32 -> int64 and float32 bit patterns."""
    src, dst = dtypes
    elements = st.floats(width=32) if src is np.float32 else st.integers(-(2**31), 2**31 - 1)
    vals = data.draw(hnp.arrays(src, (G, N * P, Fg), elements=elements))
    out = np.empty((N, G * Fg, P), dst)
    gmn_to_nchw(vals, N, out)
    want = vals.reshape(G, N, P, Fg).transpose(1, 0, 3, 2).reshape(N, G * Fg, P).astype(dst)
    assert out.tobytes() == want.tobytes()


@given(
    st.integers(0, 2),
    st.integers(1, 3),
    st.integers(1, 3),
    st.tuples(st.integers(1, 3), st.integers(1, 3)),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.tuples(st.integers(1, 2), st.integers(1, 2)),
    st.data(),
)
def test_im2col_nhwc_is_the_window_major_unfolding(N, groups, cg, kernel, strides, dil, data):
    """One group without column dilation (kernel rows copied whole) and the per-tap copies:
    column ``(i * kw + j) * Cg + c`` of row ``(n, oh, ow)`` and group g holds the window's
    ``xp[n, oh*sh + i*dh, ow*sw + j*dw, g*Cg + c]``."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dil
    Hp = data.draw(st.integers(dh * (kh - 1) + 1, 7))
    Wp = data.draw(st.integers(dw * (kw - 1) + 1, 7))
    xp = data.draw(hnp.arrays(np.uint8, (N, Hp, Wp, groups * cg)))
    ho, wo = (Hp - dh * (kh - 1) - 1) // sh + 1, (Wp - dw * (kw - 1) - 1) // sw + 1
    out = np.empty((groups, N * ho * wo, kh * kw * cg), np.uint8)
    im2col_nhwc(xp, groups, kh, kw, sh, sw, dh, dw, ho, wo, out)
    taps = [
        xp[:, i * dh : i * dh + sh * (ho - 1) + 1 : sh, j * dw : j * dw + sw * (wo - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]  # each (N, ho, wo, C)
    want = np.stack(taps, axis=3).reshape(N * ho * wo, kh * kw, groups, cg)
    want = want.transpose(2, 0, 1, 3).reshape(groups, N * ho * wo, kh * kw * cg)
    assert np.array_equal(out, want)
