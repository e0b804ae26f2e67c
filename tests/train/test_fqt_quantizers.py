"""FQT gradient quantizers (hwsim.train.fqt; Chen et al., NeurIPS 2020, code cjf00000/StatQuant):
unbiasedness of stochastic rounding and of every quantizer, the block Householder transform
(orthogonal, inverting, the official search step by step), the integer encodings (PTQ with an
integer zero point, per-sample shifts), the variance ordering theory predicts, and validation.

numpy only (no torch). Every random draw has a fixed seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwsim.errors import HwsimError
from hwsim.train.fqt import (
    BITS_RANGE,
    GRAD_QUANTIZERS,
    S_MAX_RANGE,
    GradQuant,
    bhq_search,
    decode_psq_shift,
    decode_ptq,
    encode_psq_shift,
    encode_ptq,
    gradient_variance,
    householder,
    quantize_bhq,
    quantize_grad,
    quantize_psq,
    stochastic_round,
)


def _one_large_row(n=128, d=64, seed=0):
    """One large-magnitude row (x1000) among n - 1 small rows: the case the quantizers differ on."""
    g = np.random.default_rng(seed).normal(size=(n, d)) * 1e-3
    g[0] *= 1000.0
    return g


def _draws(fn, draws):
    return np.stack([fn() for _ in range(draws)])


def _assert_unbiased(xs, g, z_max=6.0, projections=8, seed=0):
    """The mean of the draws ``xs`` (D, ...) is ``g`` within the standard error derived from the
    measured variance (unbiased, ddof=1):

    * every entry that varies: within ``z_max`` standard errors, and the mean squared z-score
      near 1 (a chi-square check that a small bias in many entries would fail);
    * entries whose draws never varied (on the grid, or rounding up so rarely that no draw did):
      within ``10 / D`` of the coarsest bin (``ptp(g)``), plus float error;
    * ``projections`` random +-1 weightings of all entries (sums of many entries, close to
      normal whatever the entries' rounding probabilities): within 5 standard errors.
    """
    D = xs.shape[0]
    mean = xs.mean(axis=0)
    var = xs.var(axis=0, ddof=1)
    fixed = xs.min(axis=0) == xs.max(axis=0)
    tol = 10.0 / D * np.ptp(g) + 1e-12 * np.abs(g).max()
    assert np.all(np.abs(mean[fixed] - g[fixed]) <= tol)
    z = (mean[~fixed] - g[~fixed]) / np.sqrt(var[~fixed] / D)
    assert np.abs(z).max() < z_max, np.abs(z).max()
    # E[z^2] = (D-1)/(D-3) ~ 1 (t with D-1 dof); its standard error about sqrt(2 / n)
    n = z.size
    assert abs(np.mean(z * z) - 1.0) < 5 * math.sqrt(2.0 / n) + 0.03, (np.mean(z * z), n)
    w = np.random.default_rng(seed).choice([-1.0, 1.0], size=(projections,) + g.shape)
    t = (xs - g).reshape(D, -1) @ w.reshape(projections, -1).T  # deviations, projected
    se = t.std(axis=0, ddof=1) / math.sqrt(D)
    assert np.all(np.abs(t.mean(axis=0)) <= 5 * se + 1e-12 * np.abs(g).max()), t.mean(axis=0) / se


# --- stochastic rounding -----------------------------------------------------------------------


def test_stochastic_round_is_floor_or_ceil_and_unbiased():
    rng = np.random.default_rng(1)
    x = np.array([-2.75, -1.5, -0.1, 0.0, 0.3, 0.5, 1.0, 2.9, 7.0, 1e-3])
    draws = 20000
    r = np.stack([stochastic_round(x, rng) for _ in range(draws)])
    assert r.dtype == np.float64
    assert np.all((r == np.floor(x)) | (r == np.ceil(x)))
    ints = x == np.floor(x)
    assert np.all(r[:, ints] == x[ints])
    p = x - np.floor(x)
    se = np.sqrt(p * (1 - p) / draws)
    dev = np.abs(r.mean(axis=0) - x)
    assert np.all(dev <= 5 * se + 1e-15), dev / np.maximum(se, 1e-300)


# --- every quantizer is unbiased ---------------------------------------------------------------


@pytest.mark.parametrize("kind", GRAD_QUANTIZERS)
@pytest.mark.parametrize("bits", [2, 4])
def test_quantizers_unbiased(kind, bits):
    g = _one_large_row(24, 16, seed=2)
    g[5] = 0.0  # an all-zero row and a constant row
    g[6] = 0.25e-3
    g[3, :4] *= 50.0  # a medium row
    q = GradQuant(kind, bits)
    rng = np.random.default_rng(3)
    draws = 1500
    xs = _draws(lambda: quantize_grad(g, q, rng), draws)
    _assert_unbiased(xs, g)
    assert (xs.min(axis=0) < xs.max(axis=0)).mean() > 0.5  # it does round


def test_quantize_grad_nd_and_float_inputs():
    g = np.random.default_rng(4).normal(size=(4, 3, 5, 5)).astype(np.float32)
    for kind in GRAD_QUANTIZERS:
        out = quantize_grad(g, GradQuant(kind, 8), np.random.default_rng(0))
        assert out.shape == g.shape and out.dtype == np.float64
        assert np.abs(out - g).max() < 0.05 * np.abs(g).max()
    with pytest.raises(ValueError, match="non-finite"):
        quantize_grad(np.array([[1.0, np.nan]]), GradQuant("psq", 4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2-D"):
        quantize_grad(np.ones(3), GradQuant("psq", 4), np.random.default_rng(0))


def test_zero_ranges_are_exact():
    rng = np.random.default_rng(5)
    for kind in GRAD_QUANTIZERS:
        q = GradQuant(kind, 2)
        for g in (
            np.zeros((6, 5)),
            np.full((1, 7), -0.3) if kind != "psq-shift" else np.zeros((1, 7)),
        ):
            np.testing.assert_array_equal(quantize_grad(g, q, rng), g)
    # ptq / bhq: a constant tensor; psq: every constant row; psq-shift: every all-zero row
    c = np.full((4, 9), 0.7)
    np.testing.assert_array_equal(quantize_grad(c, GradQuant("ptq", 3), rng), c)
    np.testing.assert_array_equal(quantize_grad(c, GradQuant("bhq", 3), rng), c)
    g = rng.normal(size=(5, 8))
    g[1] = 3.5
    g[2] = 0.0
    np.testing.assert_array_equal(quantize_grad(g, GradQuant("psq", 2), rng)[1:3], g[1:3])
    np.testing.assert_array_equal(quantize_grad(g, GradQuant("psq-shift", 2), rng)[2], g[2])
    # bhq: rows constant with different values are constant in the transformed space too
    rows = np.repeat(np.array([[1.0], [-2.0], [0.0], [5e-4]]), 6, axis=1)
    np.testing.assert_array_equal(quantize_bhq(rows, 2, rng), rows)


# --- BHQ -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 128, 257])
def test_householder_orthogonal_and_maps_e1(n):
    H, hmax = householder(n)
    np.testing.assert_allclose(H @ H.T, np.eye(n), rtol=0, atol=4e-16 * max(n, 4))
    np.testing.assert_array_equal(H, H.T)
    np.testing.assert_allclose(H[:, 0], np.full(n, 1 / math.sqrt(n)), rtol=0, atol=1e-15)
    assert hmax == np.abs(H).max()


def _official_get_transform(mvec, N):
    """A line-by-line transliteration (float64) of quantizers/quantizers.cpp ``get_transform``
    of cjf00000/StatQuant, dense: returns T2, T2_inv (its while loop is valid for these inputs)."""
    order = sorted(range(N), key=lambda i: -mvec[i])  # std::sort by v descending
    rank_v = [mvec[i] for i in order]
    total = sum(mvec)
    num_zeros = 0
    while True:
        num_zeros += 1
        total -= rank_v[N - num_zeros]
        if num_zeros * rank_v[N - num_zeros - 1] / total > 1:
            break
    nnz = N - num_zeros
    nums, acc = [], 0.0
    for i in range(nnz):
        acc += num_zeros * rank_v[i] / total
        nums.append(int(math.floor(acc + 0.5)))  # roundf
    assert nums[-1] == num_zeros
    T = np.zeros((N, N))
    all_s = np.zeros(N)
    indices, index_cnt, cnt = [], 0, nnz
    for i in range(nnz):
        indices.append(order[i])
        lam1, lam2 = rank_v[i], rank_v[cnt]
        sz = nnz + nums[i] - cnt + 1
        Q, qmax = householder(sz)
        w1, w2 = lam1 / math.sqrt(sz), lam2 * qmax
        s1, s2 = w1 ** (-1 / 3), (w2 / (sz - 1)) ** (-1 / 3)
        s_norm = math.sqrt(1 / s1 / s1 + 1 / s2 / s2)
        all_s[index_cnt] = s1 * s_norm
        all_s[index_cnt + 1 : index_cnt + sz] = s2 * s_norm
        T[index_cnt : index_cnt + sz, index_cnt : index_cnt + sz] = Q
        index_cnt += sz
        indices += [order[j] for j in range(cnt, nnz + nums[i])]
        cnt = nnz + nums[i]
    T2, T2i, s2v = np.zeros((N, N)), np.zeros((N, N)), np.zeros(N)
    for r in range(N):
        for c in range(N):
            T2[indices[r], indices[c]] = T[r, c]
            T2i[indices[c], indices[r]] = T[r, c]
        s2v[indices[r]] = all_s[r]
    return T2 * s2v[None, :], T2i / s2v[:, None]


@pytest.mark.parametrize("case", ["lognormal", "one-large", "two-large", "equal", "with-zeros"])
def test_bhq_search_matches_official_get_transform(case):
    rng = np.random.default_rng(6)
    N = 40
    ranges = {
        "lognormal": rng.lognormal(sigma=1.5, size=N),
        "one-large": np.r_[100.0, rng.uniform(0.5, 1, N - 1)],
        "two-large": np.r_[rng.uniform(0.5, 1, N - 2), 300.0, 100.0],
        "equal": np.ones(N),
        "with-zeros": np.r_[rng.uniform(1, 5, N // 2), np.zeros(N // 2)],
    }[case]
    t = bhq_search(ranges)
    mvec = ranges + 1e-8 * ranges.max()  # the official adds 1e-8 (absolute; here relative)
    T_off, Ti_off = _official_get_transform(list(mvec), N)
    T, Ti = t.matrix()
    np.testing.assert_allclose(T, T_off, rtol=1e-12, atol=1e-12 * np.abs(T_off).max())
    np.testing.assert_allclose(Ti, Ti_off, rtol=1e-12, atol=1e-12 * np.abs(Ti_off).max())
    np.testing.assert_allclose(Ti @ T, np.eye(N), rtol=0, atol=1e-12)
    assert sorted(np.concatenate(t.blocks).tolist()) == list(range(N))  # a partition of the rows
    # each block: its large row first (the largest range of the block); every block >= 2 rows
    for b in t.blocks:
        assert len(b) >= 2 and ranges[b[0]] == ranges[b].max()
    x = rng.normal(size=(N, 11))
    np.testing.assert_allclose(t.forward(x), T @ x, rtol=0, atol=1e-12 * np.abs(T @ x).max())
    # T = Q diag(s) is as well conditioned as s: zero-range rows get s ~ (1e8)^(1/3) x the others
    cond = t.scales.max() / t.scales.min()
    np.testing.assert_allclose(
        t.inverse(t.forward(x)), x, rtol=0, atol=1e-15 * cond * np.abs(x).max()
    )


def test_bhq_inverts_without_rounding_and_at_16_bits():
    g = _one_large_row(64, 32, seed=7)
    g[10] = 0.0
    out = quantize_bhq(g, 8, np.random.default_rng(0), rounding=False)
    assert np.abs(out - g).max() <= 1e-12 * np.abs(g).max()
    out16 = quantize_bhq(g, 16, np.random.default_rng(0))
    assert np.abs(out16 - g).max() <= 1e-4 * np.abs(g).max()
    np.testing.assert_allclose(quantize_psq(g, 8, None, rounding=False), g, rtol=0, atol=1e-15)


def test_bhq_spreads_a_large_row():
    # one large row among small ones: a single block; the transformed rows all carry about
    # 1/sqrt(n) of it, so their ranges are far below the large row's
    g = _one_large_row(32, 16, seed=8)
    t = bhq_search(np.ptp(g, axis=1))
    assert len(t.blocks) == 1 and t.blocks[0][0] == 0
    y = t.forward(g)
    assert np.ptp(y, axis=1).max() < 0.5 * np.ptp(g[0]) * t.scales[0]


# --- integer encodings -------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_encode_ptq_codes_zero_point_and_unbiased(bits):
    rng = np.random.default_rng(9)
    g = rng.normal(size=(20, 10)) + 0.3
    g[0, 0] = 0.0
    c, scale, zp = encode_ptq(g, bits, rng)
    nb = 2**bits - 1
    assert c.dtype == np.int64 and c.shape == g.shape
    assert c.min() >= 0 and c.max() <= nb
    assert type(zp) is int and 0 <= zp <= nb - 1
    assert scale == pytest.approx((g.max() - g.min()) / (nb - 1), rel=1e-15)
    # the spare bin: g / scale + zp stays inside [0, 2^b - 1] before rounding
    u = g / scale + zp
    assert u.min() >= 0 and u.max() <= nb
    assert c[0, 0] == zp  # 0 is on the grid
    draws = 1500
    _assert_unbiased(_draws(lambda: decode_ptq(encode_ptq(g, bits, rng)[0], scale, zp), draws), g)


def test_encode_ptq_one_signed_and_constant():
    rng = np.random.default_rng(10)
    g = rng.uniform(2.0, 3.0, size=(8, 8))  # does not straddle 0: the range is widened to [0, max]
    c, scale, zp = encode_ptq(g, 4, rng)
    assert zp == 0 and scale == pytest.approx(g.max() / 14) and c.max() <= 15
    for v in (0.0, 1.25, -0.4):
        g = np.full((3, 4), v)
        c, scale, zp = encode_ptq(g, 3, rng)
        assert 0 <= c.min() and c.max() <= 7 and 0 <= zp <= 6
        np.testing.assert_array_equal(decode_ptq(c, scale, zp), g)


@pytest.mark.parametrize("s_max", [0, 2, 4, 8])
def test_encode_psq_shift_shifts_maximal_and_rows_fit(s_max):
    rng = np.random.default_rng(11)
    bits = 4
    qmax = 2 ** (bits - 1) - 1
    mags = np.array([1.0, 0.5, 0.4999, 0.26, 1 / 16, 1 / 17, 1e-3, 0.0, 1 / 256, 0.9])
    g = rng.uniform(-1, 1, size=(mags.size, 12))
    g /= np.abs(g).max(axis=1, keepdims=True)
    g *= mags[:, None]  # row n: max|g[n]| = mags[n] exactly (up to one rounding)
    c, scale, shifts = encode_psq_shift(g, bits, s_max, rng)
    M = np.abs(g).max()
    rowmax = np.abs(g).max(axis=1)
    assert scale == M / qmax
    assert shifts.dtype == np.int64 and shifts.min() >= 0 and shifts.max() <= s_max
    assert np.all(rowmax * 2.0**shifts <= M)  # the row fits
    bigger = np.minimum(shifts + 1, 62)
    assert np.all((shifts == s_max) | (rowmax * 2.0**bigger > M))  # and s is the largest such
    assert c.dtype == np.int64 and np.abs(c).max() <= qmax
    assert shifts[7] == s_max and np.all(c[7] == 0)  # an all-zero row
    if s_max >= 4:
        assert shifts[4] == 4 and shifts[5] == 4  # 1/16 * 16 <= 1; 1/17 * 32 > 1
    draws = 1500
    enc = lambda: encode_psq_shift(g, bits, s_max, rng)[0]  # noqa: E731
    _assert_unbiased(_draws(lambda: decode_psq_shift(enc(), scale, shifts), draws), g)


def test_encode_psq_shift_all_zero():
    c, scale, shifts = encode_psq_shift(np.zeros((3, 4)), 4, 4, np.random.default_rng(0))
    assert scale == 1.0 and not c.any() and shifts.tolist() == [4, 4, 4]


# --- variance -----------------------------------------------------------------------------------


def test_gradient_variance_matches_the_analytic_value():
    # ptq / psq: a value at fraction p of a bin has variance step^2 p (1 - p)
    g = np.random.default_rng(12).normal(size=(16, 32))
    bits = 3
    nb = 2**bits - 1
    v = gradient_variance(g, [GradQuant("ptq", bits), GradQuant("psq", bits)], draws=400, seed=1)
    step = np.ptp(g) / nb
    u = (g - g.min()) / step
    p = u - np.floor(u)
    assert v[("ptq", bits)] == pytest.approx(np.mean(step**2 * p * (1 - p)), rel=0.05)
    step_r = np.ptp(g, axis=1, keepdims=True) / nb
    u = (g - g.min(axis=1, keepdims=True)) / step_r
    p = u - np.floor(u)
    assert v[("psq", bits)] == pytest.approx(np.mean(step_r**2 * p * (1 - p)), rel=0.05)
    # reproducible, and a quantizer's number does not depend on the others measured
    assert gradient_variance(g, [GradQuant("psq", bits)], 400, seed=1) != v  # other stream
    assert gradient_variance(g, [GradQuant("ptq", bits), GradQuant("psq", bits)], 400, seed=1) == v
    with pytest.raises(ValueError, match="draws"):
        gradient_variance(g, [GradQuant("ptq", 4)], 1, 0)
    with pytest.raises(ValueError, match="repeat"):
        gradient_variance(g, [GradQuant("psq-shift", 4, 2), GradQuant("psq-shift", 4, 3)], 4, 0)


def test_variance_ordering_one_large_row():
    # one row 1000x larger than the 127 others: PTQ's single range is set by it, so every small
    # row is quantized on its coarse grid; PSQ gives each row its own range (the mean variance
    # is then that of the large row, / 128); PSQ-shift gives the small rows a grid 2^4 finer
    # than PTQ's (not as fine as their own range) -- between PSQ and PTQ; BHQ spreads the large
    # row over the block (its range / sqrt(128)), below PSQ.
    g = _one_large_row()
    qs = [GradQuant(k, b) for k in GRAD_QUANTIZERS for b in (4, 8)]
    v = gradient_variance(g, qs, draws=40, seed=0)
    for b in (4, 8):
        ptq, psq, bhq, shift = (v[(k, b)] for k in ("ptq", "psq", "bhq", "psq-shift"))
        assert bhq < 0.1 * psq, (b, bhq, psq)
        assert psq < 0.05 * ptq, (b, psq, ptq)
        assert 1.1 * psq < shift < 0.05 * ptq, (b, psq, shift, ptq)


@pytest.mark.parametrize("kind", GRAD_QUANTIZERS)
def test_variance_decreases_about_4x_per_bit(kind):
    g = np.random.default_rng(13).normal(size=(32, 32))
    g[0] *= 20.0
    bits = list(range(3, 9))
    v = gradient_variance(g, [GradQuant(kind, b) for b in bits], draws=30, seed=2)
    ratios = [v[(kind, b)] / v[(kind, b + 1)] for b in bits[:-1]]
    # a bin halves per bit: step^2 / 4; the fractions p(1 - p) of a fixed gradient change with
    # the grid, so one step may be off (ptq 3 -> 4 bits: 6.3); over five bits about 4x each
    assert all(2.5 < r < 8.0 for r in ratios), ratios
    assert 3.5 < (v[(kind, 3)] / v[(kind, 8)]) ** (1 / 5) < 4.8


# --- validation ---------------------------------------------------------------------------------


def test_gradquant_validation_names_the_field():
    assert GradQuant("bhq", 5) == GradQuant("bhq", np.int64(5))
    assert GradQuant("psq-shift", 8, 0).s_max == 0
    with pytest.raises(HwsimError, match=r"kind.*--grad-quant.*ptq, psq, bhq, psq-shift"):
        GradQuant("hadamard", 4)
    lo, hi = BITS_RANGE
    for bits in (lo - 1, hi + 1, 4.0, True, "4"):
        with pytest.raises(HwsimError, match=rf"bits \(--grad-bits\).*\[{lo}, {hi}\]"):
            GradQuant("ptq", bits)
    lo, hi = S_MAX_RANGE
    for s in (lo - 1, hi + 1, 2.5, None):
        with pytest.raises(HwsimError, match=rf"s_max \(--s-max\).*\[{lo}, {hi}\]"):
            GradQuant("psq-shift", 4, s)
    assert issubclass(HwsimError, ValueError)
