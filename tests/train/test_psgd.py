"""PSGD (position-based scaled gradient) training: the scaling, determinism, and its effect on
hwsim's emulated layer-wise datapath (weights on the 4-bit grid, data-free W4A4).

Needs the optional torch extra (torch==2.13.0); a missing torch is a failure, not a skip.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch  # in the test extra (torch==2.13.0): a missing torch is a failure, not a skip

from hwsim import api  # noqa: E402
from hwsim.data import Dataset, load_data  # noqa: E402
from hwsim.errors import HwsimError  # noqa: E402
from hwsim.graph import import_model  # noqa: E402
from hwsim.graph.ir import MAC_OPS  # noqa: E402
from hwsim.study import weight_stats  # noqa: E402
from hwsim.train.archs import build  # noqa: E402
from hwsim.train.fit import DivergedError, export_onnx, train, train_model  # noqa: E402
from hwsim.train.psgd import (  # noqa: E402
    DEFAULT_LAMBDA_S,
    PSGD,
    bn_fold_map,
    psgd_param_groups,
    psgd_scale,
    quantize_symmetric,
)

W = [0.5, -0.25, 0.1, 0.0]


def _t(values):
    return torch.tensor(values, dtype=torch.float64)


# --- (a) the scaling on hand-checked tensors ----------------------------------------------------
# 4 bits: qmax = 7, delta = 0.5/7. w/delta = [7, -3.5, 1.4, 0] -> levels [7, -4 (half to even),
# 1, 0] -> Q = [0.5, -2/7, 1/14, 0]; |w - Q| = [0, 1/28, 0.1 - 1/14 = 1/35, 0]; max 1/28.
# 2 bits: qmax = 1, delta = 0.5. w/delta = [1, -0.5, 0.2, 0] -> levels [1, -0 (half to even), 0,
# 0] -> Q = [0.5, 0, 0, 0]; |w - Q| = [0, 0.25, 0.1, 0]; max 0.25.
Q4 = [0.5, -2 / 7, 1 / 14, 0.0]
D4 = [0.0, 1 / 28, 1 / 35, 0.0]
Q2 = [0.5, 0.0, 0.0, 0.0]
D2 = [0.0, 0.25, 0.1, 0.0]


@pytest.mark.parametrize("bits, q", [(4, Q4), (2, Q2)])
def test_quantize_symmetric_by_hand(bits, q):
    np.testing.assert_allclose(quantize_symmetric(_t(W), bits).numpy(), q, rtol=0, atol=1e-15)


def test_quantize_symmetric_range_and_edge_cases():
    # a given (running) range: delta = 1/7 at 4 bits; 2.0 clips to the top level 1.0;
    # 0.2 * 7 = 1.4 -> 1, -0.08 * 7 = -0.56 -> -1
    q = quantize_symmetric(_t([2.0, 0.2, -0.08]), 4, absmax=1.0)
    np.testing.assert_allclose(q.numpy(), [1.0, 1 / 7, -1 / 7], atol=1e-15)
    assert torch.equal(quantize_symmetric(torch.zeros(3), 4), torch.zeros(3))
    # 8 bits: 127 levels a side; every level reachable and the top one exact
    w = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    q = quantize_symmetric(w, 8)
    assert len(torch.unique(q)) == 255 and float(q.max()) == 1.0
    for bad in (1, 17, 4.0, True):
        with pytest.raises(ValueError, match="bits"):
            quantize_symmetric(_t(W), bad)


@pytest.mark.parametrize("bits, d", [(4, D4), (2, D2)])
def test_psgd_scale_official_by_hand(bits, d):
    s = psgd_scale(_t(W), bits, lambda_s=150.0, mode="official")
    np.testing.assert_allclose(s.numpy(), [150.0 * x for x in d], rtol=1e-12, atol=1e-12)
    # 4 bits: [0, 150/28, 150/35, 0] = [0, 5.357142857..., 4.285714285..., 0]
    if bits == 4:
        np.testing.assert_allclose(s.numpy(), [0.0, 5.357142857142857, 30 / 7, 0.0], rtol=1e-12)
    assert DEFAULT_LAMBDA_S == 150.0  # train.py --lambda_s default of the official code


@pytest.mark.parametrize("bits, d", [(4, D4), (2, D2)])
def test_psgd_scale_normalized_by_hand(bits, d):
    eps = 1e-3
    s = psgd_scale(_t(W), bits, mode="normalized", eps=eps, lambda_s=99.0)  # lambda unused
    dmax = max(d)
    np.testing.assert_allclose(s.numpy(), [(x + eps) / (dmax + eps) for x in d], rtol=1e-12)
    # 4 bits: [(0+e)/(1/28+e), 1, (1/35+e)/(1/28+e), (0+e)/(1/28+e)]
    if bits == 4:
        np.testing.assert_allclose(
            s.numpy(), [0.027237354, 1.0, 0.80544747, 0.027237354], rtol=1e-7
        )
    assert float(s.min()) > 0 and float(s.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="scaling"):
        psgd_scale(_t(W), 4, mode="bogus")


def test_psgd_scale_folded_grid():
    # fold factor k = 2: folded w*k = [1, -0.5, 0.2, 0], delta = 1/7; Q = [1, -4/7, 1/7, 0];
    # |wk - Q| / k = [0, 1/14, 0.2 - 1/7, 0] / 2 = [0, 1/28, 1/35, 0]: a uniform k changes nothing
    s = psgd_scale(_t(W), 4, 1.0, fold=_t([2.0, 2.0, 2.0, 2.0]))
    np.testing.assert_allclose(s.numpy(), D4, atol=1e-15)
    m = build("rescnn")
    assert len(bn_fold_map(m)) == 4  # every conv of rescnn is followed by its BatchNorm


def test_psgd_optimizer_step_matches_definition():
    """One PSGD step = SGD on grad * lambda * |w - Q(w)| (weight decay unscaled, momentum after);
    BatchNorm parameters and unscaled groups untouched by the scaling."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 3)
    bn = torch.nn.BatchNorm1d(3)
    model = torch.nn.Sequential(lin, bn)
    groups = psgd_param_groups(model, 4)
    assert sorted(g["psg_bits"] is None for g in groups) == [False, True]
    scaled = next(g for g in groups if g["psg_bits"] == 4)["params"]
    assert {id(p) for p in scaled} == {id(lin.weight), id(lin.bias)}  # Linear_minmax: w and b
    w0 = lin.weight.detach().clone()
    g0 = bn.weight.detach().clone()
    loss = model(torch.randn(8, 4)).square().sum()
    loss.backward()
    grad_w, grad_g = lin.weight.grad.clone(), bn.weight.grad.clone()
    opt = PSGD(groups, lr=0.01, bits=4, lambda_s=150.0, weight_decay=1e-4, range_momentum=None)
    opt.step()
    expect_w = w0 - 0.01 * (grad_w * psgd_scale(w0, 4, 150.0) + 1e-4 * w0)
    torch.testing.assert_close(lin.weight.detach(), expect_w, rtol=0, atol=1e-7)
    torch.testing.assert_close(bn.weight.detach(), g0 - 0.01 * (grad_g + 1e-4 * g0))


def test_param_groups_first_last_bits():
    m = build("rescnn")
    groups = psgd_param_groups(m, 2, first_last_bits=8, scale_bias=False)
    bits = {id(p): g["psg_bits"] for g in groups for p in g["params"]}
    convs = [x for x in m.modules() if isinstance(x, torch.nn.Conv2d)]
    fc = m[-1]
    assert bits[id(convs[0].weight)] == 8 and bits[id(fc.weight)] == 8
    assert all(bits[id(c.weight)] == 2 for c in convs[1:])
    assert bits[id(fc.bias)] is None  # scale_bias=False
    assert all(bits[id(p)] is None for p in m[1].parameters())  # BatchNorm


def test_running_range_follows_official_update():
    p = torch.nn.Parameter(torch.tensor([0.5, -1.0]))
    opt = PSGD([p], lr=0.0, weight_decay=0.0)
    p.grad = torch.ones(2)
    opt.step()  # first call stores (min(0, -1), max(0, 0.5)) as they are
    assert opt.state[p]["psg_range"] == (-1.0, 0.5)
    with torch.no_grad():
        p.copy_(torch.tensor([2.0, -0.5]))
    p.grad = torch.ones(2)
    opt.step()  # 0.1 * new + 0.9 * old
    lo, hi = opt.state[p]["psg_range"]
    assert lo == pytest.approx(0.1 * -0.5 + 0.9 * -1.0) and hi == pytest.approx(0.1 * 2 + 0.9 * 0.5)


# --- (b) determinism -----------------------------------------------------------------------------
def test_psgd_training_is_deterministic():
    ds = load_data("digits-train")
    a = train("mlp", ds, 2, 0.05, 3, "psgd", psgd_warmup=0.5)
    b = train("mlp", ds, 2, 0.05, 3, "psgd", psgd_warmup=0.5)
    c = train("mlp", ds, 2, 0.05, 4, "psgd", psgd_warmup=0.5)
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert na == nb and torch.equal(pa, pb), na
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)  # another seed, other weights


def test_argument_errors(tmp_path):
    ds = load_data("digits-train")
    cases = [
        (dict(arch="vgg"), "architecture"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(scaling="clipped"), "scaling"),
        (dict(target_bits=1), "target_bits"),
        (dict(target_bits=9), "target_bits"),
        (dict(epochs=0), "epochs"),
        (dict(lambda_s=-1.0), "lambda_s"),
    ]
    for kw, msg in cases:
        args = {"arch": "mlp", "data": "digits-train", "epochs": 1, "out": tmp_path / "m.onnx"}
        args.update(kw)
        with pytest.raises(HwsimError, match=msg):  # user-input errors: a clean CLI error
            train_model(**args)
    with pytest.raises(HwsimError, match="optimizer"):
        train("mlp", ds, 1, 0.05, 0, "rmsprop")
    with pytest.raises(HwsimError, match="labels"):
        train_model("mlp", Dataset("nolabels", ds.x, None), epochs=1, out=tmp_path / "m.onnx")
    with pytest.raises(HwsimError, match=r"\(C, H, W\)"):
        train_model("rescnn", Dataset("flat", ds.x.reshape(len(ds), -1), ds.y), epochs=1,
                    out=tmp_path / "m.onnx")  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


def test_divergence_is_a_user_error(tmp_path):
    # too large a learning rate: a DivergedError, both an HwsimError (one clean CLI line) and
    # the FloatingPointError it always was
    with pytest.raises(DivergedError, match="lower lr") as e:
        train_model("mlp", "digits-train", epochs=1, lr=1e6, out=tmp_path / "m.onnx")
    assert isinstance(e.value, HwsimError) and isinstance(e.value, FloatingPointError)


def test_train_model_record_and_28x28(tmp_path):
    seen = []
    rec = train_model(
        "rescnn", "mnist5k-train", "psgd", epochs=2, lr=0.05, out=tmp_path / "r.onnx",
        progress=lambda epoch, loss: seen.append((epoch, loss)),
    )  # fmt: skip
    assert [e for e, _ in seen] == [1, 2] and seen[1][1] < seen[0][1]
    assert rec["input_shape"] == [1, 28, 28] and rec["path"] == str(tmp_path / "r.onnx")
    keys = "arch data optimizer target_bits lambda_s scaling epochs lr seed train_accuracy seconds"
    assert set(keys.split()) <= set(rec)
    assert rec["lambda_s"] == DEFAULT_LAMBDA_S and 0.1 < rec["train_accuracy"] <= 1.0
    program = api.quantize_model(rec["path"], "data-free", wbits=8, abits=8, input_range=(0, 1))
    assert program.graph.input_shape[-2:] == (28, 28)
    assert build("mlp", (1, 28, 28))[1].in_features == 784
    m8 = build("rescnn")  # 8x8: stride-1 stem, as shipped
    m28 = build("rescnn", (1, 28, 28))
    assert m8[0].stride == (1, 1) and m28[0].stride == (2, 2)


def _grid_distance(model) -> list[float]:
    """Per layer, mean |w - Q_4(w)| / delta: 0 on the grid, 0.25 for weights spread uniformly."""
    out = []
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            w = m.weight.detach()
            delta = float(w.abs().max()) / 7
            out.append(float((w - quantize_symmetric(w, 4)).abs().mean()) / delta)
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_psgd_pulls_weights_onto_the_grid(seed):
    """The mechanism, isolated on the mlp (no BatchNorm): the same run with and without the
    scaling (psgd_warmup=1 is the identical optimizer with the scaling never switched on).
    Measured: PSGD 0.12-0.17 per layer, control 0.24-0.26, seeds 0-2."""
    ds = load_data("digits-train")
    psgd = _grid_distance(train("mlp", ds, 30, 0.05, seed, "psgd"))
    plain = _grid_distance(train("mlp", ds, 30, 0.05, seed, "psgd", psgd_warmup=1.0))
    assert all(d > 0.22 for d in plain), plain
    assert all(d < 0.19 for d in psgd), psgd


# --- (c) PSGD vs SGD on hwsim's layer-wise datapath (rescnn, seeds 0-2) ---------------------------
# Trained on three quarters of digits-train and evaluated on the remaining quarter (a validation
# split: the test split `digits` is left to the study). "control" is the PSGD run with the scaling
# never switched on (same optimizer settings and schedule), so psgd vs control isolates the
# scaling. Values measured on this machine for seeds 0-4 are in docs/psgd.md.
SEEDS = (0, 1, 2)
RUNS = {
    "sgd": dict(optimizer="sgd"),
    "control": dict(optimizer="psgd", psgd_warmup=1.0),
    "psgd": dict(optimizer="psgd"),
}


def _split():
    ds = load_data("digits-train")
    val = np.arange(len(ds)) % 4 == 0
    fit = Dataset("digits-fit", ds.x[~val], ds.y[~val], ds.input_range)
    return fit, Dataset("digits-val", ds.x[val], ds.y[val], ds.input_range)


@pytest.fixture(scope="module")
def rescnn_runs(tmp_path_factory):
    """{(run, seed): onnx path}: rescnn, 30 epochs at lr 0.05 (the study's budget)."""
    fit, val = _split()
    out = tmp_path_factory.mktemp("psgd")
    paths = {}
    for seed in SEEDS:
        for name, kw in RUNS.items():
            model = train("rescnn", fit, 30, 0.05, seed, **kw)
            paths[name, seed] = str(export_onnx(model, out / f"{name}{seed}.onnx", (1, 8, 8)))
    return paths, fit, val


def _acc(path, val, wbits, abits, logit_bits=None):
    """(integer, float) accuracy of layer-wise data-free WxAy; ``logit_bits``: the last layer's
    output width (default: ``abits``)."""
    kw = dict(wbits=wbits, abits=abits, bn_fold="register")
    if logit_bits is not None:
        last = [n.name for n in import_model(path).nodes if n.op in MAC_OPS][-1]
        kw["overrides"] = {last: {"abits": logit_bits}}
    program = api.quantize_model(path, "data-free", input_range=(0, 1), **kw)
    rep = api.run_program(program, val)[0]
    return rep.int_accuracy, rep.float_accuracy


def test_psgd_weights_are_closer_to_the_4bit_grid(rescnn_runs):
    """What PSGD optimizes, on the weights the layer-wise scheme quantizes (conv weights before
    BN folding): for every seed the 4-bit grid distance falls from > 0.22 (SGD and control) to
    < 0.17 and the 4-bit weight SQNR rises by > 2 dB over the same schedule without the scaling
    and over SGD (measured, seeds 0-4: grid distance PSGD 0.092-0.132, others 0.248-0.252;
    SQNR PSGD 20.0-22.0 dB, control 16.1-17.4, SGD 15.8-17.0)."""
    paths, _, _ = rescnn_runs
    for seed in SEEDS:
        st = {name: weight_stats(paths[name, seed], 4) for name in RUNS}
        assert st["sgd"]["grid_distance"] > 0.22 and st["control"]["grid_distance"] > 0.22, st
        assert st["psgd"]["grid_distance"] < 0.17, (seed, st)
        assert st["psgd"]["sqnr_db"] > st["control"]["sqnr_db"] + 2.0, (seed, st)
        assert st["psgd"]["sqnr_db"] > st["sgd"]["sqnr_db"] + 2.0, (seed, st)


def test_w4a4_data_free_psgd(rescnn_runs):
    """What PSGD must achieve in the study's setting: data-free W4A4 (no calibration data;
    ranges from the weights and BatchNorm statistics alone), logits at 8 bits, on the 300-image
    validation split, averaged over the seeds: within 8 points of its own float accuracy, and
    on par with the same schedule trained without the scaling (mean psgd - control >= -5
    points).

    Why 8-bit logits: with the logits at 4 bits their data-free interval-arithmetic range is
    5-9x the calibrated one and accuracy drops by 12-62 points (measured, docs/psgd.md); that
    is a limit of data-free ranges, reported in the study, not something this test asserts.

    Margins. Training is float and its rounding depends on the CPU's kernels and the thread
    count, so a per-seed accuracy moves by a few points from machine to machine (per-seed
    bounds failed on an AMD EPYC AVX2 machine: seed 1 at 0.923 against float 0.977 - 0.05;
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 reproduces it here). Measured over 24 runs
    (seeds 0-7 x {1 thread, 2 threads, AVX2 kernels}): psgd - control -4.7..+3.3 (mean -0.7,
    std 2.5), drop 1.0-8.7 (mean 4.5, std 1.8); means over any 3 seeds of one setting:
    psgd - control >= -3.6, drop <= 6.3. The bounds sit about 3 standard errors beyond the
    measured centres.
    """
    paths, _, val = rescnn_runs
    vs_ctrl, drop = [], []
    for seed in SEEDS:
        p, c = paths["psgd", seed], paths["control", seed]
        psgd8, flt = _acc(p, val, 4, 4, logit_bits=8)
        ctrl8, _ = _acc(c, val, 4, 4, logit_bits=8)
        vs_ctrl.append(psgd8 - ctrl8)
        drop.append(flt - psgd8)
    assert np.mean(vs_ctrl) >= -0.05, vs_ctrl
    assert np.mean(drop) <= 0.08, drop
