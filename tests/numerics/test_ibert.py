"""I-BERT's integer non-linearities (eq. 20-29): the vectorised kernels of hwsim.numerics.ibert
against the plain-int specification (values, widths, op counts), their derived accuracy bounds
against the float functions, and I-BERT's own torch code run literally on float tensors."""

import decimal
import math
from decimal import Decimal

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import erf

from hwsim.errors import HwsimError
from hwsim.numerics import ibert
from hwsim.numerics import reference as ref
from hwsim.numerics.ibert import (
    IBertError,
    i_erf,
    i_exp,
    i_gelu,
    i_layernorm,
    i_poly,
    i_softmax,
    i_sqrt,
)
from tests.strategies import ints_in

FAST = settings(max_examples=120, deadline=None)
FEW = settings(max_examples=25, deadline=None)
WIDTHS = st.one_of(st.integers(4, 16), st.just(32))
EXP_A, EXP_B, EXP_C = ref.IBERT_EXP_COEF


def scales(lo: float, hi: float):
    """Reals in [lo, hi], log-uniform, with the powers of two and decades inside."""
    edges = [2.0**k for k in range(-17, 2)] + [10.0**k for k in range(-6, 1)]
    return st.one_of(
        st.sampled_from([v for v in edges if lo <= v <= hi]),
        st.floats(math.log10(lo), math.log10(hi)).map(lambda u: min(max(10.0**u, lo), hi)),
    )


@st.composite
def int_tensors(draw, min_dims=0, max_side=5, bits=None, nonpositive=False):
    """int64 arrays of ``bits``-bit integers (drawn from 4..16 and 32 if not given): edges and
    random values, or all at the type's min or max; empty and size-1 dimensions included."""
    bits = draw(WIDTHS) if bits is None else bits
    lo, hi = -(1 << (bits - 1)), (0 if nonpositive else (1 << (bits - 1)) - 1)
    shape = draw(
        st.one_of(
            hnp.array_shapes(min_dims=max(min_dims, 1), max_dims=1, min_side=0, max_side=24),
            hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=0, max_side=max_side),
        )
    )
    fill = draw(st.sampled_from([None, None, None, lo, hi]))
    if fill is not None:
        return np.full(shape, fill, np.int64)
    specials = st.sampled_from(sorted(v for v in {lo, lo + 1, -1, 0, 1, hi - 1, hi} if v <= hi))
    return draw(hnp.arrays(np.int64, shape, elements=st.one_of(specials, ints_in(lo, hi))))


def assert_widths_match(stats, trace: dict) -> None:
    """Every width hwsim reports is the signed width of the spec's intermediate values."""
    assert stats.widths == {k: max(map(ref.signed_bits, v)) for k, v in trace.items()}


def rows_of(x: np.ndarray, axis: int) -> np.ndarray:
    moved = np.moveaxis(x, axis, -1)
    return moved.reshape(math.prod(moved.shape[:-1]), moved.shape[-1])


def ops(stats) -> tuple[int, int, int, int, int]:
    return stats.multiplies, stats.shifts, stats.divides, stats.compares, stats.adds


# --- fast path == plain-int specification ---------------------------------------------------------
@FAST
@given(x=int_tensors(), s=scales(1e-4, 1.0), coef=st.sampled_from([ref.IBERT_EXP_COEF, (2, -3, 5)]))
def test_i_poly_equals_the_reference(x, s, coef):
    trace = {}
    got, out_scale, stats = i_poly(x, s, coef)
    assert got.shape == x.shape
    assert got.ravel().tolist() == [ref.ref_i_poly(int(v), s, coef, trace) for v in x.ravel()]
    b_int, c_int, want_scale = ref.ibert_poly_registers(s, coef)
    assert out_scale == want_scale and stats.registers == {"b_int": b_int, "c_int": c_int}
    assert_widths_match(stats, trace)
    assert ops(stats) == (x.size, 0, 0, 0, 2 * x.size)


@FAST
@given(x=int_tensors(nonpositive=True), s=scales(3e-5, 1.6))
def test_i_exp_equals_the_reference(x, s):
    trace = {}
    got, out_scale, stats = i_exp(x, s)
    assert got.shape == x.shape and got.dtype == np.int64
    assert got.ravel().tolist() == [ref.ref_i_exp(int(v), s, trace) for v in x.ravel()]
    x0_int, b_int, c_int, exp_scale = ref.ibert_exp_registers(s)
    assert out_scale == exp_scale
    assert stats.registers == {"x0_int": x0_int, "b_int": b_int, "c_int": c_int}
    assert_widths_match(stats, trace)
    assert ops(stats) == (2 * x.size, x.size, x.size, 2 * x.size, 4 * x.size)


def test_i_exp_takes_every_int64_below_zero():
    x = np.array([-(2**63), -(2**63) + 1, -(2**31), -1, 0], np.int64)
    for s in (3e-5, 1e-3, 1.6):
        got, _, stats = i_exp(x, s)
        assert got.tolist() == [ref.ref_i_exp(int(v), s) for v in x]
        assert stats.widths["exp"] <= 63


@FAST
@given(data=st.data())
def test_i_softmax_equals_the_reference(data):
    x = data.draw(int_tensors(min_dims=1))
    s = data.draw(scales(3e-5, 1.6))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    out_bits = data.draw(st.integers(1, 32))
    got, out_scale, stats = i_softmax(x, s, axis=axis, out_bits=out_bits)
    assert got.shape == x.shape and out_scale == 2.0**-out_bits
    trace = {}
    want = [ref.ref_i_softmax([int(v) for v in r], s, out_bits, trace) for r in rows_of(x, axis)]
    assert rows_of(got, axis).tolist() == want
    assert ((got >= 0) & (got <= 2**out_bits - 1)).all()
    assert_widths_match(stats, trace)
    rows, length = rows_of(x, axis).shape
    n = x.size
    per_row = (0, 0, rows, rows * (length - 1), rows * (length - 1)) if n else (0,) * 5
    assert ops(stats) == tuple(p + k * n for p, k in zip(per_row, (4, 3, 1, 3, 6), strict=True))
    if n:
        m, e = ref.ibert_softmax_registers(s)
        assert (stats.registers["m"], stats.registers["e"]) == (m, e)
        assert stats.widths["exp16_times_factor"] <= 33  # < 2^32: unsigned 32 bits
        assert stats.widths["exp16"] == 16  # every row's maximum maps to 32767


@FAST
@given(x=int_tensors(), s=scales(1e-6, 1.0))
def test_i_erf_and_i_gelu_equal_the_reference(x, s):
    trace = {}
    got, erf_scale, stats = i_erf(x, s)
    assert got.ravel().tolist() == [ref.ref_i_erf(int(v), s, trace) for v in x.ravel()]
    assert erf_scale == ref.ibert_erf_registers(s)[2] < 0
    assert_widths_match(stats, trace)
    assert ops(stats) == (x.size, x.size, 0, 4 * x.size, 4 * x.size)
    trace = {}
    got, out_scale, stats = i_gelu(x, s)
    assert got.ravel().tolist() == [ref.ref_i_gelu(int(v), s, trace) for v in x.ravel()]
    b_int, c_int, shift_int, _, want_scale = ref.ibert_gelu_registers(s)
    assert out_scale == want_scale < 0
    assert stats.registers == {"b_int": b_int, "c_int": c_int, "shift_int": shift_int}
    assert_widths_match(stats, trace)
    assert ops(stats) == (2 * x.size, x.size, 0, 4 * x.size, 5 * x.size)


def _newton_steps(n: int) -> int:
    trace = {}
    ref.ref_isqrt_newton(n, trace)
    return len(trace.get("newton_x", []))


@FAST
@given(
    n=st.lists(
        st.one_of(
            ints_in(0, 2**63 - 1),
            st.tuples(st.integers(0, 3037000499), st.integers(-1, 1)).map(
                lambda t: min(max(t[0] * t[0] + t[1], 0), 2**63 - 1)
            ),
        ),
        max_size=12,
    )
)
def test_i_sqrt_is_the_exact_floor_square_root(n):
    trace = {}
    got, stats = i_sqrt(np.array(n, np.int64))
    assert got.tolist() == [math.isqrt(v) for v in n]
    assert got.tolist() == [ref.ref_isqrt_newton(v, trace) for v in n]
    assert_widths_match(stats, trace)
    steps = len(trace.get("newton_x", []))
    assert ops(stats) == (0, 2 * len(n) + steps, steps, len(n) + steps, len(n) + steps)


def test_i_sqrt_steps_and_exhaustive_16_bit():
    """Exhaustive below 2^16 (at most 5 Newton steps); the proved bounds of 6 steps below
    2^32 and 7 below 2^63 on edges and seeded draws (6 is the most seen for 63 bits)."""
    n = np.arange(1 << 16, dtype=np.int64)
    root, _ = i_sqrt(n)
    assert root.tolist() == [math.isqrt(v) for v in range(1 << 16)]
    assert max(_newton_steps(v) for v in range(1 << 16)) == 5
    rng = np.random.default_rng(7)
    for bits, bound in ((32, 6), (63, 7)):
        draws = [int(v) for v in rng.integers(1, 2**bits - 1, 3000, dtype=np.int64)]
        edges = [(1 << b) + d for b in range(1, bits) for d in (-1, 0, 1)]
        assert max(_newton_steps(v) for v in draws + edges) <= bound
    assert _newton_steps(1098325835) == 6  # a 31-bit n that needs all six
    got, _ = i_sqrt(np.array([[0, 1], [2**63 - 1, 2**62]], np.int64))
    assert got.tolist() == [[0, 1], [3037000499, 2**31]]


@st.composite
def channel_params(draw, n: int):
    mags = draw(hnp.arrays(np.float64, n, elements=st.floats(0.05, 4.0)))
    signs = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([-1.0, 1.0])))
    beta = draw(hnp.arrays(np.float64, n, elements=st.floats(-4.0, 4.0)))
    return mags * signs, beta


@FAST
@given(data=st.data())
def test_i_layernorm_equals_the_reference(data):
    bits = data.draw(st.sampled_from([4, 8, 12, 16, 22, 24]))
    x = data.draw(int_tensors(min_dims=1, max_side=6, bits=bits))
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    gamma, beta = data.draw(channel_params(x.shape[axis]))
    shift = data.draw(st.one_of(st.none(), st.integers(0, 24)))
    got, out_scale, stats = i_layernorm(x, 0.5, gamma, beta, axis=axis, shift=shift)
    rows = rows_of(x, axis).tolist()
    trace = {}
    want = ref.ref_i_layernorm(rows, list(gamma), list(beta), shift, trace)
    assert rows_of(got, axis).tolist() == want
    want_shift = ref.ibert_layernorm_shift(rows) if shift is None else shift
    assert stats.registers == {"shift": want_shift}
    assert out_scale.tolist() == ref.ibert_layernorm_registers(list(gamma), list(beta))[1]
    assert_widths_match(stats, trace)
    if shift is None and x.size:
        assert stats.widths["var"] <= 33  # below 2^32: an unsigned 32-bit square root
    r, n = len(rows), x.shape[axis]
    steps = len(trace.get("newton_x", []))
    if x.size:
        want_ops = (2 * x.size, 3 * r + 2 * x.size + steps, 2 * r + steps, 3 * r + steps)
        assert ops(stats)[:4] == want_ops
        assert stats.adds == r * (2 * (n - 1) + 2) + 2 * x.size + steps


def test_i_layernorm_on_ibert_shapes():
    """I-BERT's own layer: 22-bit inputs (ln_bit = 22), N = 768, dynamic shift."""
    rng = np.random.default_rng(3)
    x = rng.integers(-(2**21), 2**21, (3, 768))
    gamma, beta = rng.uniform(0.3, 2, 768), rng.uniform(-1, 1, 768)
    got, _, stats = i_layernorm(x, 1e-3, gamma, beta)
    assert got.tolist() == ref.ref_i_layernorm(x.tolist(), list(gamma), list(beta))
    assert stats.registers["shift"] == 9 and stats.widths["var"] <= 33  # V ~ 2^49.4
    const, _, _ = i_layernorm(np.full((2, 768), 5), 1.0, gamma, beta)  # var 0: bias only
    assert (const == ref.ibert_layernorm_registers(list(gamma), list(beta))[0]).all()


# --- accuracy against the float functions ---------------------------------------------------------
def exp_terms(s: float) -> np.ndarray:
    """(22) The exp's error bound for each range-reduction quotient k = 0..30 (docs eq. 22)."""
    t = np.linspace(-(0.6931 + s), 0, 100001)
    delta_p = float(np.abs(EXP_A * t * t + EXP_B * t + EXP_C - np.exp(t)).max()) + 1e-8
    mus = (0.6931 - math.log(2), 0.6931 + s - math.log(2))
    poly = EXP_A * s * (0.6931 + s) + delta_p
    return np.array(
        [2.0**-k * (poly + max(abs(math.expm1(-k * m)) for m in mus)) for k in range(31)]
    )


def exp_bound(d: np.ndarray, s: float) -> np.ndarray:
    """(22) Per-element bound on |i_exp(d) scale - e^(d s)|: the term of d's quotient k, and
    below the clamp (d < 30 x0_int, where both are below 2^-30) e^(30 x0_int s) + term_30."""
    x0_int = ref.ibert_exp_registers(s)[0]
    terms = exp_terms(s)
    k = np.maximum(d, 30 * x0_int) // x0_int
    return np.where(d < 30 * x0_int, math.exp(30 * x0_int * s) + terms[30], terms[k])


def exp_ratio(s: float) -> float:
    """Largest ratio error / bound of i_exp over every integer input down past the clamp."""
    x0_int = ref.ibert_exp_registers(s)[0]
    x = np.arange(31 * x0_int - 3, 1, dtype=np.int64)
    got, scale, _ = i_exp(x, s)
    err = np.abs(got * scale - np.exp(x * s))
    return float((err / exp_bound(x, s)).max())


@FEW
@given(s=scales(3e-5, 1.6))
def test_i_exp_error_is_within_its_derived_bound(s):
    assert exp_ratio(s) <= 1.0


def test_i_exp_bound_is_tight():
    assert exp_ratio(1e-4) > 0.95 and exp_ratio(1e-3) > 0.85


def softmax_bound(x: np.ndarray, s: float, out_bits: int) -> np.ndarray:
    """(24) Per-element bound on |out 2^-B - softmax| for rows along the last axis."""
    d = x - x.max(-1, keepdims=True)
    p = np.exp(d * s)
    eta0 = EXP_A * s * s
    eps = (exp_bound(d, s) + eta0) / (1 - eta0) + 2.0**-30 + 0.5 / 32767
    total = eps.sum(-1, keepdims=True)
    sigma = p / p.sum(-1, keepdims=True)
    denom = np.maximum(1.0, p.sum(-1, keepdims=True) - total)
    return 2.0**-out_bits + 2.0**-17 + (eps + sigma * total) / denom


def softmax_cases():
    """Seeded rows: uniform spreads, one maximum over L - 1 equal values (the int16 rounding of
    long rows), Gaussian scores; every decade of scale, 8- and 16-bit outputs."""
    rng = np.random.default_rng(11)
    for i in range(240):
        s = float(10 ** rng.uniform(-4.5, 0.2))
        length = int(rng.choice([1, 2, 5, 16, 128, 512]))
        if i % 3 == 0:
            x = rng.integers(-int(rng.uniform(0.1, 30) / s) - 1, 1, (6, length))
        elif i % 3 == 1:
            x = np.zeros((6, length), np.int64)
            x[:, 1:] = rng.integers(-int(25 / s), 1, (6, 1))
        else:
            x = np.round(rng.normal(0, 3 / s, (6, length))).astype(np.int64)
        yield x, s, int(rng.choice([8, 16]))


def test_i_softmax_error_is_within_its_derived_bound():
    worst = 0.0
    for x, s, out_bits in softmax_cases():
        got, scale, _ = i_softmax(x, s, out_bits=out_bits)
        z = np.exp((x - x.max(-1, keepdims=True)) * s)
        err = np.abs(got * scale - z / z.sum(-1, keepdims=True))
        ratio = float((err / softmax_bound(x, s, out_bits)).max())
        assert ratio <= 1.0, (s, x.shape, out_bits)
        worst = max(worst, ratio)
    assert worst > 0.9  # the bound is attained, not vacuous


def gelu_bound(x: np.ndarray, s: float) -> np.ndarray:
    """(26) |x| / 2 (eps_L(x) + 2|a|(|b| + s')s' + |a| s'^2 + 2|erf_scale|), s' = s / 1.4142."""
    a, b = ref.IBERT_ERF_COEF[:2]
    k = ref.IBERT_GELU_K
    ax = np.abs(x * s)
    sp = s / k
    poly = a * (np.minimum(ax / k, -b) + b) ** 2 + 1
    eps_l = np.abs(poly - erf(ax / math.sqrt(2)))
    terms = 2 * abs(a) * (abs(b) + sp) * sp + abs(a) * sp * sp + 2 * abs(a) * sp * sp * 2**14
    return ax / 2 * (eps_l + terms) + 1e-12 * ax


def gelu_ratio(x: np.ndarray, s: float) -> float:
    got, scale, _ = i_gelu(x, s)
    ax = x * s
    err = np.abs(got * scale - ax / 2 * (1 + erf(ax / math.sqrt(2))))
    bound = gelu_bound(x, s)
    assert (err[bound == 0] == 0).all()
    return float((err[bound > 0] / bound[bound > 0]).max(initial=0.0))


@FEW
@given(x=int_tensors(min_dims=1, max_side=40), s=scales(1e-6, 0.1))
def test_i_gelu_error_is_within_its_derived_bound(x, s):
    assert gelu_ratio(x, s) <= 1.0


def test_i_gelu_bound_is_tight_on_accumulator_inputs():
    rng = np.random.default_rng(5)
    for s in (1e-5, 1e-4, 1e-3):
        x = rng.integers(-(2**31), 2**31, 20000) >> rng.integers(0, 31, 20000)
        ratio = gelu_ratio(x, s)
        assert 0.95 < ratio <= 1.0


def layernorm_bound(x: np.ndarray, gamma: np.ndarray, shift: int):
    """(28) Per-element bound on |out scale - LN(x)| (eps = 0) and the rows it covers: rows with
    ``S = ||x - mean|| > 2^k (sqrt(N) + 1)``, and constant rows (S = 0: bias_int only)."""
    n = x.shape[-1]
    rt = math.sqrt(n)
    c = x - x.mean(-1, keepdims=True)
    big_s = np.sqrt((c * c).sum(-1, keepdims=True))
    d_min = big_s - 2.0**shift * (rt + 1)
    covered = (d_min > 0) | (big_s == 0)
    d_min = np.where(d_min > 0, d_min, 1.0)
    safe_s = np.where(big_s > 0, big_s, 1.0)
    e_d = (2.0**shift * (rt + 1) + n / (8 * safe_s)) / d_min
    yhat = c * rt / safe_s
    terms = np.abs(yhat) * (e_d + big_s / 2**31) + 0.5 * rt / d_min + 0.5 * rt / 2**31
    bound = np.abs(gamma) * (np.where(big_s > 0, terms, 0.0) + 2 * rt / 2**30) + 1e-12
    return bound, yhat, covered[..., 0]


def test_i_layernorm_error_is_within_its_derived_bound():
    rng = np.random.default_rng(13)
    worst = 0.0
    for _ in range(150):
        n = int(rng.choice([1, 2, 3, 16, 64, 768]))
        bits = int(rng.integers(4, 23))
        x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (6, n))
        x[0] = x[0, 0]  # a constant row
        gamma = rng.uniform(0.2, 2, n) * rng.choice([-1, 1], n)
        beta = rng.uniform(-2, 2, n)
        got, scale, stats = i_layernorm(x, 1.0, gamma, beta)
        bound, yhat, covered = layernorm_bound(x, gamma, stats.registers["shift"])
        err = np.abs(got * scale - (yhat * gamma + beta))[covered]
        ratio = float((err / bound[covered]).max())
        assert ratio <= 1.0, (n, bits)
        worst = max(worst, ratio)
    assert worst > 0.9


# --- I-BERT's own code, run literally ------------------------------------------------------------
# The bodies below are I-BERT's (kssteven418/I-BERT @ 1b09c75, quant_modules.py / quant_utils.py),
# copied line by line with three changes: every float is FLOAT = float64 (torch.zeros(1),
# dtype=torch.float, .type(torch.float)), so each integer below 2^53 is held exactly; the forward
# passes start from x_int (I-BERT's first line divides the real tensor by its scale); .cuda() and
# autograd wrappers are gone. `IntSoftmax(fixed=True)` passes the exp's real value to QuantAct
# (`exp_int * exp_scaling_factor`), the fix hwsim implements (23); fixed=False is I-BERT verbatim.
FLOAT = torch.float64


def floor_ste(x):
    return torch.floor(x)


def round_ste(x):
    return torch.round(x)


def batch_frexp(inputs, max_bit=31):
    shape_of_input = inputs.size()
    inputs = inputs.view(-1)
    output_m, output_e = np.frexp(inputs.cpu().numpy())
    tmp_m = []
    for m in output_m:
        int_m_shifted = int(
            Decimal(m * (2**max_bit)).quantize(Decimal("1"), rounding=decimal.ROUND_HALF_UP)
        )
        tmp_m.append(int_m_shifted)
    output_m = np.array(tmp_m)
    output_e = float(max_bit) - output_e
    return (
        torch.from_numpy(output_m).view(shape_of_input),
        torch.from_numpy(output_e).view(shape_of_input),
    )


def fixedpoint_mul(pre_act, pre_act_scaling_factor, bit_num, z_scaling_factor):
    def reshape(x):
        return x.view(1, 1, -1)

    n = 2 ** (bit_num - 1) - 1
    pre_act_scaling_factor = reshape(pre_act_scaling_factor)
    z_int = torch.round(pre_act / pre_act_scaling_factor)
    _A = pre_act_scaling_factor.type(torch.double)
    _B = (z_scaling_factor.type(FLOAT)).type(torch.double)
    new_scale = _A / _B
    new_scale = reshape(new_scale)
    m, e = batch_frexp(new_scale)
    output = z_int.type(torch.double) * m.type(torch.double)
    output = torch.round(output / (2.0**e))
    return torch.clamp(output.type(FLOAT), -n - 1, n)


def quant_act_16(x, pre_act_scaling_factor):
    """QuantAct(16).forward on its first call: running min/max initialised from x, then
    symmetric_linear_quantization_params and fixedpoint_mul."""
    x_min = torch.zeros(1, dtype=FLOAT) + x.data.min()
    x_max = torch.zeros(1, dtype=FLOAT) + x.data.max()
    n = 2 ** (16 - 1) - 1
    scale = max(x_min.abs(), x_max.abs())
    act_scaling_factor = torch.clamp(scale, min=1e-8) / n
    quant_act_int = fixedpoint_mul(x, pre_act_scaling_factor, 16, act_scaling_factor)
    return quant_act_int * act_scaling_factor.view(-1), act_scaling_factor


class IntSoftmax:
    def __init__(self, output_bit, fixed=True):
        self.output_bit = output_bit
        self.fixed = fixed
        self.x0 = -0.6931  # -ln2
        self.n = 30  # sufficiently large integer
        self.coef = [0.35815147, 0.96963238, 1.0]  # ax**2 + bx + c
        self.coef[1] /= self.coef[0]
        self.coef[2] /= self.coef[0]

    def int_polynomial(self, x_int, scaling_factor):
        b_int = torch.floor(self.coef[1] / scaling_factor)
        c_int = torch.floor(self.coef[2] / scaling_factor**2)
        z = x_int + b_int
        z = x_int * z
        z = z + c_int
        scaling_factor = self.coef[0] * scaling_factor**2
        return z, scaling_factor

    def int_exp(self, x_int, scaling_factor):
        x0_int = torch.floor(self.x0 / scaling_factor)
        x_int = torch.max(x_int, self.n * x0_int)
        q = floor_ste(x_int / x0_int)
        r = x_int - x0_int * q
        exp_int, exp_scaling_factor = self.int_polynomial(r, scaling_factor)
        exp_int = torch.clamp(floor_ste(exp_int * 2 ** (self.n - q)), min=0)
        scaling_factor = exp_scaling_factor / 2**self.n
        return exp_int, scaling_factor

    def forward(self, x_int, scaling_factor):
        x_int_max, _ = x_int.max(dim=-1, keepdim=True)
        x_int = x_int - x_int_max
        exp_int, exp_scaling_factor = self.int_exp(x_int, scaling_factor)
        real = exp_int * exp_scaling_factor if self.fixed else exp_int
        exp, exp_scaling_factor = quant_act_16(real, exp_scaling_factor)
        exp_int = exp / exp_scaling_factor
        exp_int_sum = exp_int.sum(dim=-1, keepdim=True)
        factor = floor_ste(2**32 / exp_int_sum)
        exp_int = floor_ste(exp_int * factor / 2 ** (32 - self.output_bit))
        scaling_factor = 1 / 2**self.output_bit
        return exp_int, scaling_factor


class IntGELU:
    def __init__(self):
        self.k = 1.4142
        self.n = 14  # sufficiently large integer
        self.coeff = [-0.2888, -1.769, 1]  # a(x+b)**2 + c
        self.coeff[2] /= self.coeff[0]

    def int_erf(self, x_int, scaling_factor):
        b_int = torch.floor(self.coeff[1] / scaling_factor)
        c_int = torch.floor(self.coeff[2] / scaling_factor**2)
        sign = torch.sign(x_int)
        abs_int = torch.abs(x_int)
        abs_int = torch.min(abs_int, -b_int)
        y_int = (abs_int + b_int) ** 2 + c_int
        y_int = sign * y_int
        scaling_factor = scaling_factor**2 * self.coeff[0]
        y_int = floor_ste(y_int / 2**self.n)
        scaling_factor = scaling_factor * 2**self.n
        return y_int, scaling_factor

    def forward(self, x_int, scaling_factor):
        sigmoid_int, sigmoid_scaling_factor = self.int_erf(x_int, scaling_factor / self.k)
        shift_int = torch.floor(1.0 / sigmoid_scaling_factor)
        x_int = x_int * (sigmoid_int + shift_int)
        scaling_factor = scaling_factor * sigmoid_scaling_factor / 2
        return x_int, scaling_factor


class IntLayerNorm:
    def __init__(self, weight, bias):
        self.shift = torch.zeros(1, dtype=FLOAT)
        self.overflow_handling = True
        self.dim_sqrt = None
        self.weight = weight
        self.bias = bias

    def set_shift(self, y_int):
        y_sq_int = y_int**2
        var_int = torch.sum(y_sq_int, axis=2, keepdim=True)
        shift = (torch.log2(torch.sqrt(var_int / 2**32)).ceil()).max()
        self.shift = torch.max(self.shift, shift)

    def overflow_fallback(self, y_int):
        self.set_shift(y_int)
        y_int_shifted = floor_ste(y_int / 2**self.shift)
        y_sq_int = y_int_shifted**2
        var_int = torch.sum(y_sq_int, axis=2, keepdim=True)
        return var_int

    def forward(self, x_int):
        if self.dim_sqrt is None:
            n = torch.tensor(x_int.shape[2], dtype=FLOAT)  # feature dim(768)
            self.dim_sqrt = torch.sqrt(n)
        mean_int = round_ste(x_int.mean(axis=2, keepdim=True))
        y_int = x_int - mean_int
        y_int_shifted = floor_ste(y_int / 2**self.shift)  # avoid overflow
        y_sq_int = y_int_shifted**2
        var_int = torch.sum(y_sq_int, axis=2, keepdim=True)
        if self.overflow_handling:
            if var_int.max() >= 2**32:
                var_int = self.overflow_fallback(y_int)
                assert var_int.max() < 2**32
        std_int = floor_ste(torch.sqrt(var_int)) * 2**self.shift
        factor = floor_ste(2**31 / std_int)
        y_int = floor_ste(y_int * factor / 2)
        scaling_factor = self.dim_sqrt / 2**30
        bias = self.bias.data.detach() / (self.weight.data.detach())
        bias_int = floor_ste(bias / scaling_factor)
        y_int = y_int + bias_int
        scaling_factor = scaling_factor * self.weight
        return y_int, scaling_factor


def tensor(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=FLOAT)


def as_ints(t: torch.Tensor) -> np.ndarray:
    v = t.numpy()
    assert (v == np.round(v)).all() and np.abs(v).max(initial=0) < 2**63
    return v.astype(np.int64)


def test_ibert_int_exp_literally():
    """The exp is poly(r) * 2^(30 - q) with poly(r) below 2^32: exact in float64 at every
    scale i_exp takes."""
    rng = np.random.default_rng(31)
    for _ in range(200):
        s = float(10 ** rng.uniform(math.log10(3e-5), 0.2))
        bits = int(rng.choice([4, 8, 12, 16, 32]))
        x = rng.integers(-(2 ** (bits - 1)), 1, (4, 50))
        exp_int, exp_scale = IntSoftmax(8).int_exp(tensor(x), tensor([s]))
        got, got_scale, _ = i_exp(x, s)
        assert (got == as_ints(exp_int)).all() and got_scale == exp_scale.item()


def test_ibert_softmax_literally():
    """Scales >= 1.5e-3 keep the exp below 2^51, where QuantAct's ``round(real / scale)``
    gives it back exactly in float64."""
    rng = np.random.default_rng(17)
    for _ in range(120):
        s = float(10 ** rng.uniform(math.log10(1.5e-3), 0.2))
        bits = int(rng.choice([4, 8, 12, 16, 32]))
        x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (2, 3, int(rng.integers(1, 40))))
        out_bits = int(rng.choice([4, 8, 16]))
        theirs, their_scale = IntSoftmax(out_bits).forward(tensor(x), tensor([s]))
        ours, our_scale, _ = i_softmax(x, s, out_bits=out_bits)
        assert (ours == as_ints(theirs)).all() and our_scale == their_scale


def test_ibert_verbatim_softmax_differs_by_at_most_one_lsb():
    """I-BERT passes the exp integers to QuantAct as if they were reals; the scale cancels up
    to the rounding of two different Q31 multipliers, so an int16 exp can move by one."""
    rng = np.random.default_rng(19)
    for _ in range(60):
        s = float(10 ** rng.uniform(-3.5, 0))
        x = rng.integers(-(2**20), 2**20, (4, 8, 33))
        ours, _, _ = i_softmax(x, s)
        theirs, _ = IntSoftmax(8, fixed=False).forward(tensor(x), tensor([s]))
        assert np.abs(ours - theirs.numpy()).max() <= 1


def test_ibert_gelu_literally():
    rng = np.random.default_rng(23)
    for _ in range(150):
        s = float(10 ** rng.uniform(math.log10(2e-5), -1))
        bits = int(rng.choice([4, 8, 16, 32]))
        x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (3, 64))
        theirs, their_scale = IntGELU().forward(tensor(x), tensor([s]))
        ours, our_scale, _ = i_gelu(x, s)
        assert (ours == as_ints(theirs)).all() and our_scale == their_scale.item()


def test_ibert_layernorm_literally():
    """Rows with V = 0 are left out: I-BERT divides by std_int = 0 there (NaN)."""
    rng = np.random.default_rng(29)
    for _ in range(150):
        n = int(rng.integers(2, 800))
        bits = int(rng.integers(4, 23))
        x = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (2, 3, n))
        gamma = rng.uniform(0.2, 2, n) * rng.choice([-1, 1], n)
        beta = rng.uniform(-2, 2, n)
        layer = IntLayerNorm(tensor(gamma), tensor(beta))
        with np.errstate(all="ignore"):
            theirs, their_scale = layer.forward(tensor(x))
        ours, our_scale, stats = i_layernorm(x, 1.0, gamma, beta)
        finite = torch.isfinite(theirs).all(-1)
        assert finite.float().mean() > 0.5
        assert (ours[finite.numpy()] == as_ints(theirs[finite])).all()
        assert stats.registers["shift"] == int(layer.shift.item())
        # torch's CPU float64 sqrt is not correctly rounded (sqrt(51) is one ulp low)
        np.testing.assert_allclose(our_scale, their_scale.numpy(), rtol=4e-16, atol=0)


# --- argument errors ------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.0, -1e-3, True, "0.1", None])
def test_a_bad_scale_is_named(scale):
    for fn in (i_exp, i_erf, i_gelu, i_softmax):
        with pytest.raises(IBertError, match="scale must be"):
            fn(np.array([-1, 0]), scale)
    with pytest.raises(IBertError, match="scale must be"):
        i_layernorm(np.array([[1, 2]]), scale, [1.0, 1.0], [0.0, 0.0])


def test_argument_errors_name_the_argument():
    assert issubclass(IBertError, HwsimError)
    cases = [
        (lambda: i_exp(np.array([0.5]), 0.1), "q must have an integer dtype"),
        (lambda: i_exp(np.array([2**64 - 1], np.uint64), 0.1), "beyond int64"),
        (lambda: i_exp(np.array([-3, 1]), 0.1), "q <= 0"),
        (lambda: i_exp(np.array([-3]), 1e-5), "scale must be >= 2.55e-05"),
        (lambda: i_softmax(np.array([1, 2]), 2.0), "scale must be <= 1.67"),
        (lambda: i_softmax(np.array([1, 2]), 0.1, out_bits=0), r"out_bits must be in \[1, 32\]"),
        (lambda: i_softmax(np.array([1, 2]), 0.1, out_bits=33), r"out_bits must be in"),
        (lambda: i_softmax(np.array([1, 2]), 0.1, out_bits=True), "out_bits must be an integer"),
        (lambda: i_softmax(np.array([1, 2]), 0.1, axis=1), "axis 1 is out of range"),
        (lambda: i_softmax(np.int64(3), 0.1), "at least one dimension"),
        (lambda: i_softmax(np.array([-(2**62) - 1, 2**62]), 0.1), "q - max"),
        (lambda: i_gelu(np.array([2**62]), 1e-3), r"q \* \(erf \+ shift_int\)"),
        (lambda: i_poly(np.array([2**40]), 1e-3), r"x \* \(x \+ b_int\)"),
        (lambda: i_poly(np.array([1]), 0.1, (0.0, 1.0, 1.0)), "a != 0"),
        (lambda: i_sqrt(np.array([4, -1])), "n >= 0"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1.0], [0.0]), "gamma must be 2 real"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1.0, 0.0], [0, 0]), "gamma must be nonzero"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1.0, 1], [0, np.nan]), "beta must be fin"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1e-300, 1], [1, 0]), "beta / gamma"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1, 1], [0, 0], shift=63), "shift must be"),
        (lambda: i_layernorm(np.array([[1, 2]]), 1.0, [1, 1], [0, 0], shift=-1), "shift must be"),
        (lambda: i_layernorm(np.array([[2**40, 0]] * 1), 1.0, [1, 1], [0, 0]), "sum"),
    ]
    for call, message in cases:
        with pytest.raises(IBertError, match=message):
            call()


# --- per-row scales (the integer executor's batched calls) ---------------------------------------
@settings(max_examples=80, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    rows=st.integers(0, 6),
    length=st.integers(1, 40),
    bits=st.sampled_from([8, 16, 24]),
    out_bits=st.sampled_from([8, 16]),
)
def test_batched_kernels_equal_one_call_per_row(seed, rows, length, bits, out_bits):
    """``i_softmax_rows`` / ``i_gelu_scales`` (a scale per row / element) and
    ``layernorm_row_shifts`` equal the scalar kernels called row by row."""
    rng = np.random.default_rng(seed)
    q = rng.integers(-(2 ** (bits - 1)), 2 ** (bits - 1), (rows, length))
    sc = rng.choice([3e-5, 1e-4, 3e-4, 2e-3, 0.02], rows) * rng.uniform(1.0, 1.5, rows)
    got, gs, _ = ibert.i_softmax_rows(q, sc, out_bits)
    assert gs == 2.0**-out_bits and got.shape == q.shape
    for r in range(rows):
        want, _, _ = ibert.i_softmax(q[r], sc[r], out_bits=out_bits)
        assert got[r].tolist() == want.tolist()
    es = np.repeat(sc[:, None] / 4, length, axis=1)
    got, gsc, _ = ibert.i_gelu_scales(q, es)
    for r in range(rows):
        want, ws, _ = ibert.i_gelu(q[r], es[r, 0])
        assert got[r].tolist() == want.tolist() and np.all(gsc[r] == ws)
    ks = ibert.layernorm_row_shifts(q)
    g, b = rng.uniform(0.5, 2, length), rng.normal(0, 1, length)
    for r in range(rows):
        _, _, stats = ibert.i_layernorm(q[r][None], 1.0, g, b)
        assert ks[r] == stats.registers["shift"]
