"""FQT layers (hwsim.train.fqt_torch): the float and integer datapaths give identical gradients
where the integer accumulators do not overflow; PSQ-shift's weight gradient equals the
per-sample-shift accumulation written with plain ints; QAT's gradients are the exact ones of
the quantized forward."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch  # in the test extra (torch==2.13.0): a missing torch is a failure, not a skip
from torch import nn

from hwsim.errors import HwsimError
from hwsim.numerics import reference as nref
from hwsim.train.fqt import GradQuant, encode_psq_shift
from hwsim.train.fqt_torch import FQTConfig, convert, counters


def _grads(make, x, cfg, upstream):
    torch.manual_seed(0)
    m = convert(make(), cfg)
    xx = x.clone().requires_grad_(True)
    (m(xx) * upstream).sum().backward()
    return [p.grad.clone() for p in m.parameters()] + [xx.grad.clone()], m


def _linear():
    return nn.Linear(12, 7)


def _conv():
    return nn.Conv2d(3, 5, 3, padding=1, stride=2)


CASES = [
    (_linear, (6, 12), (6, 7)),
    (_linear, (2, 4, 12), (2, 4, 7)),  # (B, T, D): a gradient row per token
    (_conv, (4, 3, 7, 7), (4, 5, 4, 4)),
]


@pytest.mark.parametrize("kind", ["ptq", "psq-shift"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("make,xs,ys", CASES)
def test_integer_datapath_equals_float_without_overflow(kind, bits, make, xs, ys):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(*xs, generator=gen)
    # per-sample magnitudes spread over 2^6 so the shifts differ between samples
    up = torch.randn(*ys, generator=gen) * (2.0 ** -torch.arange(ys[0]).float()).reshape(
        (-1,) + (1,) * (len(ys) - 1)
    )
    q = GradQuant(kind, bits, s_max=4)
    gf, _ = _grads(make, x, FQTConfig(grad=q, datapath="float", seed=3), up)
    gi, m = _grads(make, x, FQTConfig(grad=q, datapath="integer", seed=3), up)
    c = counters(m)
    assert c.macs > 0 and c.overflow_events == 0
    for a, b in zip(gf, gi):
        assert torch.equal(a, b)


def test_overflow_makes_the_integer_path_differ_and_is_counted():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(8, 12, generator=gen)
    up = torch.randn(8, 7, generator=gen)
    q = GradQuant("ptq", 8)
    gf, _ = _grads(_linear, x, FQTConfig(grad=q, datapath="float", seed=0), up)
    cfg = FQTConfig(grad=q, datapath="integer", acc_bits=12, overflow="saturate", seed=0)
    gi, m = _grads(_linear, x, cfg, up)
    assert counters(m).overflow_events > 0
    assert not all(torch.equal(a, b) for a, b in zip(gf, gi))


def test_psq_shift_weight_gradient_is_the_per_sample_shift_sum():
    """dW[o][i] = s_g s_x sum_n round_half_away(c[n][o] * cx[n][i] / 2^s_n), in plain ints."""
    gen = torch.Generator().manual_seed(4)
    N, D, O, bits, s_max, seed = 5, 6, 3, 5, 4, 9
    x = torch.randn(N, D, generator=gen)
    up = torch.randn(N, O, generator=gen) * (4.0 ** -torch.arange(N).float())[:, None]
    m = convert(nn.Linear(D, O, bias=False), FQTConfig(GradQuant("psq-shift", bits, s_max), seed=seed))
    m(x).mul(up).sum().backward()
    # the layer's codes: its generator's first draw, on the output gradient (= up)
    c, s, shifts = encode_psq_shift(up.double().numpy(), bits, s_max,
                                    np.random.default_rng([seed, 0]))  # fmt: skip
    r = float(x.abs().max())
    sx = r / 127
    cx = [[int(v) for v in row] for row in torch.round(x / sx).clamp(-127, 127).tolist()]
    want = [
        [
            s * sx * sum(
                nref.round_shift(int(c[n][o]) * cx[n][i], int(shifts[n]), "half_away")
                for n in range(N)
            )
            for i in range(D)
        ]
        for o in range(O)
    ]
    assert len(set(int(v) for v in shifts)) > 1  # the samples took different shifts
    assert torch.equal(m.weight.grad, torch.tensor(want, dtype=torch.float64).float())


def test_qat_gradients_are_those_of_the_quantized_forward():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(6, 12, generator=gen)
    up = torch.randn(6, 7, generator=gen)
    (gw, gb, gx), m = _grads(_linear, x, FQTConfig(grad=None), up)
    torch.manual_seed(0)
    ref = _linear()
    w = ref.weight.detach()
    sw, sx = float(w.abs().max()) / 127, float(x.abs().max()) / 127
    wq, xq = torch.round(w / sw).clamp(-127, 127) * sw, torch.round(x / sx).clamp(-127, 127) * sx
    assert torch.allclose(gw, up.T @ xq, atol=1e-6)
    assert torch.allclose(gx, up @ wq, atol=1e-6)
    assert torch.allclose(gb, up.sum(0))


def test_same_seed_same_gradients_other_seed_other():
    gen = torch.Generator().manual_seed(6)
    x, up = torch.randn(4, 3, 6, 6, generator=gen), torch.randn(4, 5, 3, 3, generator=gen)
    q = GradQuant("bhq", 4)
    a, _ = _grads(_conv, x, FQTConfig(grad=q, seed=1), up)
    b, _ = _grads(_conv, x, FQTConfig(grad=q, seed=1), up)
    c, _ = _grads(_conv, x, FQTConfig(grad=q, seed=2), up)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_integer_datapath_needs_integer_codes():
    with pytest.raises(HwsimError, match="datapath 'integer' needs .*ptq, psq-shift"):
        FQTConfig(grad=GradQuant("psq", 8), datapath="integer")
    with pytest.raises(HwsimError, match="datapath must be one of float, integer"):
        FQTConfig(datapath="fpga")


@pytest.mark.parametrize("kind", ["ptq", "psq-shift"])
def test_grouped_and_depthwise_convs(kind):
    """Grouped (2) and depthwise conv layers: float == integer, and the QAT path (grad=None)
    agrees with the quantized path at 16 bits to the 16-bit gradient grid."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, 4, 6, 6, generator=gen)
    for groups, out in ((2, 6), (4, 4)):
        def make(groups=groups, out=out):
            return nn.Conv2d(4, out, 3, padding=1, groups=groups)

        up = torch.randn(3, out, 6, 6, generator=gen)
        q = GradQuant(kind, 8)
        gf, _ = _grads(make, x, FQTConfig(grad=q, datapath="float", seed=1), up)
        gi, m = _grads(make, x, FQTConfig(grad=q, datapath="integer", seed=1), up)
        assert counters(m).overflow_events == 0
        assert all(torch.equal(a, b) for a, b in zip(gf, gi))
        qat, _ = _grads(make, x, FQTConfig(grad=None), up)
        for a, b in zip(gf, qat):  # 8-bit stochastic gradients near the exact ones
            assert float((a - b).abs().max()) < 0.2 * float(b.abs().max()) + 1e-6


def test_standard_architecture_trains_a_step_bit_identically():
    """A model nobody here wrote for FQT: the torch MobileNetV2 / ResNet-18 of the conformance
    suite (depthwise, strided, residual convs, BatchNorm), one backward step with PSQ-shift
    gradients -- the integer datapath and the float simulation give the same gradients."""
    from tests.conformance import archs

    x = torch.from_numpy(archs.inputs(2)[:, :, :24, :24].copy())
    for name in archs.ARCHS:
        grads = []
        for dp in ("float", "integer"):
            torch.manual_seed(0)
            m = archs.build(name).train()
            convert(m, FQTConfig(GradQuant("psq-shift", 8), datapath=dp, seed=2))
            m(x).sum().backward()
            grads.append([p.grad for p in m.parameters() if p.grad is not None])
        assert counters(m).macs > 0 and counters(m).overflow_events == 0
        assert all(torch.equal(a, b) for a, b in zip(*grads)), name


def test_multihead_attention_is_refused_not_half_converted():
    m = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    with pytest.raises(HwsimError, match="cannot convert nn.MultiheadAttention"):
        convert(m, FQTConfig())


@settings(max_examples=200, deadline=None)
@given(
    m=st.integers(0, 3),
    n=st.integers(0, 3),
    groups=st.integers(1, 4),
    kg=st.integers(1, 3),
    data=st.data(),
)
def test_shift_sum_kernel_equals_the_plain_int_reference(m, n, groups, kg, data):
    """The float path's Numba kernel of the per-sample-shift sum against the datapath's plain-int
    specification (eq. 13-14, round half away, unbounded accumulators), extremes included."""
    from hwsim.datapath import Accumulator
    from hwsim.datapath import reference as dref
    from hwsim.train.fqt_torch import _shift_sum_kernel

    K = groups * kg
    ints = st.one_of(st.sampled_from([-128, 127, 0, -1, 1]), st.integers(-128, 127))
    g_t = np.array(data.draw(st.lists(st.lists(ints, min_size=K, max_size=K), min_size=m,
                                      max_size=m)), np.int64).reshape(m, K)  # fmt: skip
    x = np.array(data.draw(st.lists(st.lists(ints, min_size=n, max_size=n), min_size=K,
                                    max_size=K)), np.int64).reshape(K, n)  # fmt: skip
    shifts = np.array(data.draw(st.lists(st.integers(0, 8), min_size=groups, max_size=groups)))
    out = np.empty((m, n), np.int64)
    _shift_sum_kernel(g_t, x, kg, shifts, out)
    acc = Accumulator(bits=62)
    want, _, _ = dref.gemm_per_sample_shift(g_t.tolist(), x.tolist(), groups, shifts.tolist(), 0, 0,
                                            acc, acc, "half_away", n_cols=n)  # fmt: skip
    assert out.tolist() == (want if m else [])
