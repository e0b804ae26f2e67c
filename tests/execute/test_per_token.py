"""Per-token schemes (issue 15): ``per-token`` / ``per-token-shift`` -- one range per token.

* A dense on tokens ``(N, T, D)`` under a per-token scheme is, bit for bit, the same dense on
  the rows ``(N*T, D)`` under the per-sample scheme (whose every op is checked against the
  plain-int spec in ``test_executor_spec.py``): the tokens are the range unit's samples.
* The products of two activations with per-token operands and a static output, re-derived
  with plain Python ints (``hwsim.numerics.reference``, ``hwsim.datapath.reference``): the
  scores ``q @ k^T`` (a register per (query, key) pair), the context ``p @ v`` whose summed
  axis is v's tokens -- per-token shift: the per-sample-shift accumulation of eq. 13-14 with
  the tokens as groups; per-token dynamic: v requantized to its largest step first.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from hwsim.data import Dataset
from hwsim.datapath import Accumulator
from hwsim.datapath import reference as dref
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.numerics import reference as nref
from hwsim.quant import Scheme, quantize


def _mlp_model(shape_in, d, h, seed):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.6, (d, h)).astype(np.float32)
    b1 = rng.normal(0, 0.3, h).astype(np.float32)
    w2 = rng.normal(0, 0.6, (h, d)).astype(np.float32)
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "w1"], ["m1"], name="fc1"),
        mk("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
        mk("Relu", ["a1"], ["r"], name="relu"),
        mk("MatMul", ["r", "w2"], ["y"], name="fc2"),
    ]
    out_shape = list(shape_in[:-1]) + [d]
    g = helper.make_graph(
        nodes,
        "tok",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape_in[1:]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *out_shape[1:]])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 3),
    t=st.integers(1, 4),
    d=st.integers(1, 5),
    shift=st.booleans(),
    abits=st.sampled_from([4, 8]),
    acc_bits=st.sampled_from([12, 32]),
    register=st.sampled_from(["ort", "tflite", "pow2"]),
    granularity=st.sampled_from(["tensor", "channel"]),
)
def test_dense_per_token_is_per_sample_on_the_rows(
    seed, n, t, d, shift, abits, acc_bits, register, granularity
):
    kw = dict(abits=abits, acc_bits=acc_bits, register=register, granularity=granularity)
    if shift:  # a runtime base: the batch's range, the same rows either way
        kw.update(s_max=3, shift_base="runtime")
    tok = Scheme.preset("per-token-shift" if shift else "per-token", **kw)
    smp = Scheme.preset("per-sample-shift" if shift else "per-sample", **kw)
    g3 = import_model(_mlp_model((1, t, d), d, 6, seed))
    g2 = import_model(_mlp_model((1, d), d, 6, seed))
    rng = np.random.default_rng(seed + 1)
    x = (rng.normal(0, 1, (n, t, d)) * rng.uniform(0.1, 3.0, (n, t, 1))).astype(np.float32)
    p3 = quantize(g3, tok, None, input_range=(-4.0, 4.0), float_run=run_float)
    p2 = quantize(g2, smp, None, input_range=(-4.0, 4.0), float_run=run_float)
    e3 = IntegerExecutor(p3).run(x)
    e2 = IntegerExecutor(p2).run(x.reshape(n * t, d))
    for name in ("x", "m1", "a1", "r", "y"):
        if name not in e3 or not hasattr(e3[name], "q"):
            continue
        a, b = e3[name], e2[name]
        assert np.array_equal(a.q.reshape(b.q.shape), b.q), name
        sa = np.broadcast_to(a.scale_b(), a.q.shape)[..., 0].reshape(-1)
        assert np.array_equal(sa, np.broadcast_to(b.scale, (n * t,))), name
        if b.shifts is not None:
            sh = np.broadcast_to(np.asarray(a.shifts).reshape(a.scale_b().shape), a.q.shape)
            assert np.array_equal(sh[..., 0].reshape(-1), b.shifts), name


def _attention_model(t, d, seed):
    """q = x Wq, k = x Wk, v = x Wv; s = q @ k^T; c = s @ v (no softmax: integer operands)."""
    rng = np.random.default_rng(seed)
    ws = [rng.normal(0, 0.6, (d, d)).astype(np.float32) for _ in range(3)]
    mk = helper.make_node
    nodes = [
        mk("MatMul", ["x", "wq"], ["q"], name="q"),
        mk("MatMul", ["x", "wk"], ["k"], name="k"),
        mk("MatMul", ["x", "wv"], ["v"], name="v"),
        mk("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        mk("MatMul", ["q", "kt"], ["s"], name="scores"),
        mk("MatMul", ["s", "v"], ["y"], name="context"),
    ]
    g = helper.make_graph(
        nodes,
        "att",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", t, d])],
        [numpy_helper.from_array(w, nm) for w, nm in zip(ws, ("wq", "wk", "wv"), strict=True)],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _reg(kind, v, real, rnd):
    if kind == "ort":
        return nref.ort_requantize(
            v, nref.round_to_float32(__import__("fractions").Fraction(float(np.float32(real))))
        )
    if kind == "pow2":
        return nref.pow2_requantize(v, round(-math.log2(real)), rnd)
    m, s = nref.quantize_multiplier(real, kind == "tflite-single")
    return nref.multiply_by_quantized_multiplier(
        v, m, s, "single" if kind == "tflite-single" else "double"
    )


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(1, 2),
    t=st.integers(1, 4),
    d=st.integers(1, 4),
    shift=st.booleans(),
    acc_bits=st.sampled_from([14, 32]),
    overflow=st.sampled_from(["wrap", "saturate"]),
    register=st.sampled_from(["tflite", "pow2"]),
)
def test_products_of_per_token_operands_match_the_plain_int_spec(
    seed, n, t, d, shift, acc_bits, overflow, register
):
    static = {"act_mode": "static"}
    kw = dict(
        acc_bits=acc_bits,
        overflow=overflow,
        register=register,
        overrides={"scores": static, "context": static},
    )
    if shift:
        kw.update(s_max=3)
    sch = Scheme.preset("per-token-shift" if shift else "per-token", **kw)
    rng = np.random.default_rng(seed + 1)
    calib = rng.normal(0, 1, (8, t, d)).astype(np.float32)
    prog = quantize(
        import_model(_attention_model(t, d, seed)),
        sch,
        Dataset("c", calib, None),
        float_run=run_float,
    )
    x = (rng.normal(0, 1, (n, t, d)) * rng.uniform(0.1, 3.0, (n, t, 1))).astype(np.float32)
    ex = IntegerExecutor(prog)
    env = ex.run(x)
    layer = prog.layer("scores")
    kind, rnd, acc = layer.register.value, layer.rounding.value, layer.acc
    q, kt, s, v = env["q"], env["kt"], env["s"], env["v"]
    sq = np.broadcast_to(q.scale_b(), q.q.shape)[..., 0]  # (N, T) per query token
    sk = np.broadcast_to(kt.scale_b(), kt.q.shape)[:, 0, :]  # (N, T) per key token
    so = float(np.float32(prog.acts["s"].scale))
    for i in range(n):
        vals, _ = dref.gemm(q.q[i].tolist(), kt.q[i].tolist(), 0, 0, acc, n_cols=t)
        want = [
            [
                nref.saturate(
                    _reg(kind, vals[m][j], float(sq[i, m]) * float(sk[i, j]) / so, rnd),
                    s.fmt.bits,
                    s.fmt.signed,
                )
                for j in range(t)
            ]
            for m in range(t)
        ]
        assert s.q[i].tolist() == want
    # context: s (static) @ v, v's rows are tokens with their own steps
    y = env["y"]
    sv = np.broadcast_to(v.scale_b(), v.q.shape)[..., 0]  # (N, T)
    ss = float(np.float32(s.scale))
    sy = float(np.float32(prog.acts["y"].scale))
    for i in range(n):
        if shift:
            sh = [
                int(z)
                for z in np.broadcast_to(
                    np.asarray(v.shifts).reshape(v.scale_b().shape), v.q.shape
                )[i, :, 0]
            ]
            lo = min(sh)
            vals, _, _ = dref.gemm_per_sample_shift(
                s.q[i].tolist(),
                v.q[i].tolist(),
                t,
                [z - lo for z in sh],
                0,
                0,
                acc,
                Accumulator(bits=acc.bits, overflow=acc.overflow),
                rnd,
                n_cols=d,
            )
            step = float(np.float32(v.base)) * 2.0**-lo
        else:
            top = max(float(sv[i, k]) for k in range(t))
            vq = [
                [
                    nref.saturate(
                        _reg(kind, int(v.q[i, k, c]), float(sv[i, k]) / top, rnd),
                        v.fmt.bits,
                        v.fmt.signed,
                    )
                    for c in range(d)
                ]
                for k in range(t)
            ]
            vals, _ = dref.gemm(s.q[i].tolist(), vq, 0, 0, acc, n_cols=d)
            step = top
        want = [
            [
                nref.saturate(_reg(kind, vals[m][c], ss * step / sy, rnd), y.fmt.bits, y.fmt.signed)
                for c in range(d)
            ]
            for m in range(t)
        ]
        assert y.q[i].tolist() == want
    assert not ex.float_ops
