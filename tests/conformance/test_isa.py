"""``Isa.AVX2`` (eq. 16): onnxruntime's x86 uint8 x int8 kernels without VNNI, bit for bit.

Three independent references:
* the plain-int specification ``hwsim.datapath.reference.gemm_pairs_sat16`` (hypothesis, with
  all-max operands, both int16 rails, odd K, empty and size-1 dimensions);
* outputs that onnxruntime 1.32 recorded on an AVX2-only AMD EPYC (``ort_goldens/avx2``, made
  by ``ort_goldens/make.py``) and under ``qemu-x86_64 -cpu Haswell-v4`` (``avx2_extra``, made by
  ``make_extra_goldens.py``), checked bit for bit on whatever CPU runs the tests;
* the live onnxruntime of this machine, against hwsim under ``isa="auto"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim import api
from hwsim.datapath import Accumulator, Operand, conv2d, gemm, reference
from hwsim.datapath.isa import Isa, host_isa, pairs_saturate, resolve
from hwsim.execute import run_qoperator_batch
from hwsim.numerics import IntFormat

GOLDENS = Path(__file__).parent / "ort_goldens" / "avx2"
MANIFEST = json.loads((GOLDENS / "manifest.json").read_text())
CASES = [c["name"] for c in MANIFEST["cases"]]
U8, S8 = IntFormat(8, False), IntFormat(8, True)


def _u8(draw, n):
    return draw(st.lists(st.sampled_from([0, 1, 127, 128, 254, 255]) | st.integers(0, 255),
                         min_size=n, max_size=n))  # fmt: skip


def _s8(draw, n):
    return draw(st.lists(st.sampled_from([-128, -127, -1, 0, 1, 126, 127]) | st.integers(-128, 127),
                         min_size=n, max_size=n))  # fmt: skip


@st.composite
def gemm_case(draw):
    M, K, N = draw(st.integers(0, 5)), draw(st.integers(0, 13)), draw(st.integers(0, 6))
    allmax = draw(st.booleans())
    if allmax:  # every pair at a rail: 255*127*2 and 255*(-128)*2 leave int16
        x = np.full((M, K), 255, np.uint8)
        w = np.array(draw(st.lists(st.sampled_from([127, -128]), min_size=K * N, max_size=K * N)),
                     np.int8).reshape(K, N)  # fmt: skip
    else:
        x = np.array(_u8(draw, M * K), np.uint8).reshape(M, K)
        w = np.array(_s8(draw, K * N), np.int8).reshape(K, N)
    zx = draw(st.integers(0, 255))
    zw = (
        np.array(_s8(draw, N), np.int8).astype(np.int64)
        if draw(st.booleans()) and N
        else draw(st.integers(-128, 127))
    )
    return x, w, zx, zw


@settings(max_examples=300, deadline=None)
@given(gemm_case())
def test_gemm_avx2_equals_plain_int_spec(case):
    x, w, zx, zw = case
    acc = Accumulator(32)
    got = gemm(x, w, x_operand=Operand(U8, zx), w_operand=Operand(S8, zw), acc=acc, isa="avx2")
    zl = zw.tolist() if np.ndim(zw) else int(zw)
    want, c = reference.gemm_pairs_sat16(x.tolist(), w.tolist(), zx, zl, acc, w.shape[1])
    assert got.values.tolist() == want
    for f in ("pair_saturations", "outputs_pair_saturated", "overflow_events", "final_min",
              "final_max"):  # fmt: skip
        assert getattr(got.counters, f) == getattr(c, f), f


def test_allmax_rails_and_narrow_wrap():
    """Both int16 rails, and an 18-bit wrapping accumulator fed the saturated sums."""
    K = 64
    x = np.full((2, K), 255, np.uint8)
    w = np.full((K, 3), 127, np.int8)
    w[:, 1] = -128
    w[::2, 2] = -128  # mixed pairs: 255*(127-128) = -255, no saturation
    got = gemm(x, w, x_operand=Operand(U8, 0), w_operand=Operand(S8, 0), isa="avx2")
    assert got.values[0].tolist() == [32767 * 32, -32768 * 32, -255 * 32]
    assert got.counters.pair_saturations == 2 * 2 * 32
    assert got.counters.outputs_pair_saturated == 4
    acc = Accumulator(18)
    got = gemm(x, w, x_operand=Operand(U8, 0), w_operand=Operand(S8, 0), acc=acc, isa="avx2")
    want, c = reference.gemm_pairs_sat16(x.tolist(), w.tolist(), 0, 0, acc)
    assert got.values.tolist() == want and got.counters.overflow_events == c.overflow_events


def _conv_spec(x, w, zx, zw, pads, stride, groups):
    """eq. 16 for a convolution from the plain-int spec: per group, the NHWC unfolding
    ``(i, j, c)`` (padding = raw zx) paired in that order; depthwise exact."""
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    Fg = F // groups
    pt, pl, pb, pr = pads
    Ho = (H + pt + pb - kh) // stride + 1
    Wo = (W + pl + pr - kw) // stride + 1
    out = np.zeros((N, F, Ho, Wo), np.int64)
    for g in range(groups):
        for n in range(N):
            for oh in range(Ho):
                for ow in range(Wo):
                    col = []
                    for i in range(kh):
                        for j in range(kw):
                            for c in range(Cg):
                                ih, iw = oh * stride - pt + i, ow * stride - pl + j
                                inside = 0 <= ih < H and 0 <= iw < W
                                col.append(int(x[n, g * Cg + c, ih, iw]) if inside else zx)
                    for f in range(g * Fg, (g + 1) * Fg):
                        wc = [int(w[f, c, i, j]) for i in range(kh) for j in range(kw)
                              for c in range(Cg)]  # fmt: skip
                        zf = int(zw[f]) if np.ndim(zw) else int(zw)
                        if Cg == 1 and Fg == 1:
                            d = sum((a - zx) * (b - zf) for a, b in zip(col, wc, strict=True))
                        else:
                            d, _ = reference.dot_pairs_sat16(col, wc, zx, zf)
                        out[n, f, oh, ow] = d
    return out


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg = draw(st.integers(1, 5))
    Fg = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    if depthwise:
        groups, Cg, Fg = draw(st.integers(2, 4)), 1, 1
    k = draw(st.sampled_from([1, 2, 3]))
    H, W = draw(st.integers(k, 5)), draw(st.integers(k, 5))
    C, F = groups * Cg, groups * Fg
    hot = draw(st.booleans())
    x = np.array(_u8(draw, 2 * C * H * W), np.uint8).reshape(2, C, H, W)
    w = np.array(_s8(draw, F * Cg * k * k), np.int8).reshape(F, Cg, k, k)
    if hot:
        x[:] = np.maximum(x, 200)
        w[:] = np.where(w >= 0, 127, -128)
    pads = tuple(draw(st.integers(0, k - 1)) for _ in range(4))
    zx = draw(st.sampled_from([0, 128, 255]))
    zw = draw(st.integers(-3, 3))
    return x, w, zx, zw, pads, draw(st.sampled_from([1, 2])), groups


@settings(max_examples=80, deadline=None)
@given(conv_case())
def test_conv2d_avx2_equals_plain_int_spec(case):
    x, w, zx, zw, pads, stride, groups = case
    got = conv2d(x, w, stride=stride, padding=pads, groups=groups, x_operand=Operand(U8, zx),
                 w_operand=Operand(S8, zw), acc=Accumulator(40), isa="avx2")  # fmt: skip
    want = _conv_spec(x, w, zx, zw, pads, stride, groups)
    assert np.array_equal(got.values, want)


def test_only_uint8_x_int8_pairs_saturate():
    assert pairs_saturate(Isa.AVX2, U8, S8)
    assert pairs_saturate(Isa.AVX2, IntFormat(4, False), IntFormat(4, True))
    for xf, wf in ((U8, U8), (S8, S8), (S8, U8), (IntFormat(9, False), S8)):
        assert not pairs_saturate(Isa.AVX2, xf, wf)
    assert not pairs_saturate(Isa.EXACT, U8, S8)
    assert resolve("auto") is host_isa()
    with pytest.raises(ValueError, match="isa must be one of exact, avx2, auto"):
        resolve("avx512")


def test_avx2_needs_a_wrapping_accumulator():
    x, w = np.zeros((1, 2), np.uint8), np.zeros((2, 1), np.int8)
    with pytest.raises(ValueError, match="acc.overflow must be .wrap."):
        gemm(x, w, x_operand=Operand(U8, 0), acc=Accumulator(16, "saturate"), isa="avx2")


# --- recorded on an AVX2-only CPU ----------------------------------------------------------------
def _golden(name):
    with np.load(GOLDENS / f"{name}.npz") as z:
        return onnx.load(GOLDENS / f"{name}.onnx"), {k: z[k] for k in z.files}


def test_goldens_were_recorded_without_vnni():
    cpu = MANIFEST["cpu"]
    assert cpu["flags"] == ["avx2"] and cpu["onnxruntime"] == "1.32.0"
    assert len(CASES) == 47


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("qdq")])
def test_single_op_golden_avx2_bit_for_bit(name):
    model, z = _golden(name)
    got = run_qoperator_batch(model, z["in_x"], name, isa="avx2")
    assert got.dtype == z["out_0"].dtype and got.shape == z["out_0"].shape
    assert int(np.count_nonzero(got != z["out_0"])) == 0
    if name.startswith(("matmulinteger", "qlinear")) and "allmax" in name:
        exact = run_qoperator_batch(model, z["in_x"], name, isa="exact")
        assert np.count_nonzero(exact != z["out_0"]) > 0  # the case can tell the two apart


@pytest.mark.parametrize("kind", ["pertensor", "perchannel"])
def test_qdq_cnn_golden_avx2_bit_for_bit(kind, tmp_path):
    name = f"qdq_cnn_{kind}"
    _, z = _golden(name)
    np.savez(tmp_path / "x.npz", x=z["in_x"])
    rep = api.run(GOLDENS / f"{name}.onnx", tmp_path / "x.npz", save_outputs=tmp_path / "o.npz",
                  isa="avx2")  # fmt: skip
    with np.load(tmp_path / "o.npz") as o:
        got = o[o.files[0]]
    assert int(np.count_nonzero(got != z["out_0"])) == 0
    convs = [r for r in rep.layers if r.op == "conv"]
    assert sum(r.pair_saturations for r in convs) > 0
    assert all(r.sqnr_exact_db is not None for r in convs)
    assert rep.settings["isa"] == "avx2"


# --- the live onnxruntime of this machine ---------------------------------------------------------
@pytest.mark.parametrize("name", CASES[::3] + ["qdq_cnn_pertensor", "qdq_cnn_perchannel"])
def test_auto_equals_live_onnxruntime(name, tmp_path):
    model, z = _golden(name)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": z["in_x"]})[0]
    if name.startswith("qdq"):
        onnx.save(model, tmp_path / "m.onnx")
        np.savez(tmp_path / "x.npz", x=z["in_x"])
        api.run(tmp_path / "m.onnx", tmp_path / "x.npz", save_outputs=tmp_path / "o.npz",
                isa="auto")  # fmt: skip
        with np.load(tmp_path / "o.npz") as o:
            got = o[o.files[0]]
    else:
        got = run_qoperator_batch(model, z["in_x"], name, isa="auto")
    assert int(np.count_nonzero(got != want)) == 0


@pytest.mark.parametrize("name", ["qlinearconv_allmax_c3_perchannel", "matmulinteger_nearmax_k64"])
def test_qoperator_run_reports_pair_saturations(name, tmp_path):
    """``hwsim run MODEL --isa avx2`` on a QOperator model: the golden, and the counters of eq.
    16 per MAC node, equal to the plain-int spec's count on the same operands."""
    model, z = _golden(name)
    np.savez(tmp_path / "x.npz", x=z["in_x"])
    rep = api.run(GOLDENS / f"{name}.onnx", tmp_path / "x.npz", save_outputs=tmp_path / "o.npz",
                  isa="avx2")  # fmt: skip
    with np.load(tmp_path / "o.npz") as o:
        assert int(np.count_nonzero(o[o.files[0]] != z["out_0"])) == 0
    (row,) = rep.layers
    assert rep.settings["isa"] == "avx2" and row.pair_saturations > 0
    if name.startswith("matmul"):
        from onnx import numpy_helper

        init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        _, c = reference.gemm_pairs_sat16(z["in_x"].tolist(), init["w"].tolist(),
                                          int(init["xz"]), 0, Accumulator(32))  # fmt: skip
        assert row.pair_saturations == c.pair_saturations
        assert row.outputs_pair_saturated == c.outputs_pair_saturated


def test_ort_engine_shifts_int8_weights_where_uint8_x_int8_is_not_exact(monkeypatch):
    """On an AVX2 CPU the engine feeds int8 weights to the exact uint8 x uint8 kernels as
    ``w + 128``; forced here, against int64 arithmetic."""
    from hwsim.datapath import engines

    monkeypatch.setattr(engines, "ort_exact", lambda dt: dt == "uint8")
    rng = np.random.default_rng(3)
    x = rng.integers(0, 256, (300, 77)).astype(np.uint8)
    w = rng.choice(np.array([-128, 127, -1, 0, 5], np.int8), (77, 9))
    zw = rng.integers(-128, 128, 9)
    want = (x.astype(np.int64) - 200) @ (w.astype(np.int64) - zw)
    for _ in range(2):
        got = gemm(x, w, x_operand=Operand(U8, 200), w_operand=Operand(S8, zw), engine="ort")
        assert np.array_equal(got.values, want)


EXTRA = Path(__file__).parent / "ort_goldens" / "avx2_extra"
EXTRA_CASES = [c["name"] for c in json.loads((EXTRA / "manifest.json").read_text())["cases"]]


@pytest.mark.parametrize("name", EXTRA_CASES)
def test_more_eq16_paths_golden_and_live(name):
    """ConvInteger int8 x uint8 (NCHW pairs, grouped, SAME_LOWER, 1-D), the ConvSym, odd-Cg,
    depthwise and multiplier-2 QLinearConv paths, QGemm, the GEMV MatMulInteger: recorded by
    onnxruntime 1.32 under ``qemu-x86_64 -cpu Haswell-v4`` (``make_extra_goldens.py``), and the
    live onnxruntime of this machine under ``isa="auto"``."""
    model = onnx.load(EXTRA / f"{name}.onnx")
    with np.load(EXTRA / f"{name}.npz") as z:
        x, want = z["in_x"], z["out_0"]
    got = run_qoperator_batch(model, x, name, isa="avx2")
    assert got.dtype == want.dtype and int(np.count_nonzero(got != want)) == 0
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    live = sess.run(None, {"x": x})[0]
    assert int(np.count_nonzero(run_qoperator_batch(model, x, name, isa="auto") != live)) == 0


def test_avx2_run_with_a_tile_register_runs_those_layers_as_configured():
    """A layer with a tile register of its own width (``--order tiled --tile-bits 20``) is
    hardware onnxruntime does not have: ``isa avx2`` computes it as configured, exactly (was a
    crash: 'isa avx2 has no tile register'). Every layer of this program has one, so the avx2
    run equals the exact run and reports no pair saturations."""
    prog = api.quantize_model(
        "rescnn", "per-tensor", "digits-train", order="tiled", tile_rows=32, tile_bits=20
    )
    exact = api.run(prog, "digits")
    avx2 = api.run(prog, "digits", isa="avx2")
    assert avx2.agreement == exact.agreement and avx2.int_accuracy == exact.int_accuracy
    for a, e in zip(avx2.layers, exact.layers, strict=True):
        assert (a.sqnr_db, a.overflow_events, a.max_abs_acc) == (e.sqnr_db, e.overflow_events,
                                                                 e.max_abs_acc)  # fmt: skip
        assert not a.pair_saturations
