"""hwsim.qops.elementwise against onnxruntime's CPU kernels: ``QLinearAdd`` / ``QLinearMul``
(every broadcast span, every rounding tie), the lookup-table ``QLinearLeakyRelu``,
``QLinearConcat``, and the fused QDQ chains.

QDQ chains with onnxruntime 1.32 on x86-64 (AVX-512):

* ``DQ -> Add -> Q``       => com.microsoft ``QLinearAdd``
* ``DQ -> Mul -> Q``       => com.microsoft ``QLinearMul``
* ``DQ -> Concat -> Q``    => com.microsoft ``QLinearConcat``
* ``DQ -> LeakyRelu -> Q`` => com.microsoft ``QLinearLeakyRelu``
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from onnx import helper

from hwsim import qops
from tests.qops.harness import (
    INT8,
    MS,
    SCALE_KINDS,
    QdqChain,
    check,
    differing,
    draw_scale,
    initializer,
    random_q,
    random_scales,
    random_zp,
    stress,
    unary_draws,
)

# --- QLinearAdd / QLinearMul ---------------------------------------------------------------------
BINARY_SHAPES = [
    ((3, 77), (3, 77)),
    ((2, 5, 7, 9), (1, 5, 1, 1)),
    ((1, 5, 1, 1), (2, 5, 3, 3)),
    ((100,), ()),
    ((), (64,)),
    ((4, 33), (33,)),
    ((2, 70), (2, 1)),
    ((3, 1), ()),
    ((1,), (1,)),
]


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shapes", BINARY_SHAPES, ids=str)
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_binary(op, dtype, shapes, kind):
    rng = np.random.default_rng(hash((op, dtype.__name__, shapes, kind)) % 2**32)
    sa, sb, sc = random_scales(rng, kind, 3)
    inputs = [
        ("A", random_q(rng, dtype, shapes[0])),
        ("A_scale", sa),
        ("A_zero_point", random_zp(rng, dtype, kind)),
        ("B", random_q(rng, dtype, shapes[1])),
        ("B_scale", sb),
        ("B_zero_point", random_zp(rng, dtype, kind)),
        ("C_scale", sc),
        ("C_zero_point", random_zp(rng, dtype, kind)),
    ]
    check(op, inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_every_pair_of_values_with_tied_ratios(dtype):
    """All 256 x 256 input pairs with exact half ratios: every rounding tie, both operand
    orders (general and broadcast spans)."""
    info = np.iinfo(dtype)
    v = np.arange(info.min, info.max + 1).astype(dtype)
    for sa, sb, sc in [(0.5, 0.25, 1.0), (0.375, 0.125, 0.25), (1.5, 0.5, 2.0)]:
        for a, b in [
            (v[:, None], v[None, :]),
            (
                np.broadcast_to(v[:, None], (256, 256)).copy(),
                np.broadcast_to(v[None, :], (256, 256)).copy(),
            ),
        ]:
            inputs = [
                ("A", a),
                ("A_scale", np.float32(sa)),
                ("A_zero_point", dtype(3)),
                ("B", b),
                ("B_scale", np.float32(sb)),
                ("B_zero_point", dtype(7)),
                ("C_scale", np.float32(sc)),
                ("C_zero_point", dtype(5)),
            ]
            check("QLinearAdd", inputs)
            check("QLinearMul", inputs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_add_beyond_int32_gives_the_type_minimum(dtype):
    """A sum beyond int32 converts to INT32_MIN (x86 ``cvtps2dq``), which saturates to the
    type's minimum -- even for a huge positive sum. hwsim reproduces it."""
    a = np.array([1, 100, -3], dtype) if dtype == np.int8 else np.array([1, 100, 250], dtype)
    inputs = [
        ("A", a),
        ("A_scale", np.float32(1e6)),
        ("A_zero_point", dtype(0)),
        ("B", a),
        ("B_scale", np.float32(1e6)),
        ("B_zero_point", dtype(0)),
        ("C_scale", np.float32(1e-6)),
        ("C_zero_point", dtype(0)),
    ]
    got = check("QLinearAdd", inputs)
    assert int(got[1]) == np.iinfo(dtype).min


def test_ort_broadcast_mode_follows_the_broadcaster():
    assert qops.ort_broadcast_mode((2, 5, 7), (1, 5, 1)) == "input1_scalar"
    assert qops.ort_broadcast_mode((1, 5, 1), (2, 5, 7)) == "input0_scalar"
    assert qops.ort_broadcast_mode((3, 1), ()) == "input0_scalar"
    assert qops.ort_broadcast_mode((4, 33), (33,)) == "general"


STRESS_BINARY = [
    ((256,), (256,)),
    ((), (256,)),
    ((256,), ()),
    ((16, 1), (16, 16)),
    ((16, 16), (1, 16)),
]


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shapes", STRESS_BINARY, ids=str)
def test_qlinear_binary_many_parameters(op, dtype, shapes):
    rng = np.random.default_rng(len(shapes[0]) * 10 + len(shapes[1]) + (op == "QLinearMul"))
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype)

    def values(shape):
        return v.reshape(shape) if int(np.prod(shape)) == 256 else random_q(rng, dtype, shape)

    def draw(i):
        return [
            ("A", values(shapes[0])),
            ("A_scale", draw_scale(rng)),
            ("A_zero_point", random_zp(rng, dtype, "random")),
            ("B", values(shapes[1])),
            ("B_scale", draw_scale(rng)),
            ("B_zero_point", random_zp(rng, dtype, "random")),
            ("C_scale", draw_scale(rng)),
            ("C_zero_point", random_zp(rng, dtype, "random")),
        ]

    assert stress(op, draw, 400) == 0


# --- lookup-table ops ----------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3333, 2.5])
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_leaky_relu(dtype, alpha, kind):
    rng = np.random.default_rng(int(alpha * 1e4) + SCALE_KINDS.index(kind))
    xs, ys = random_scales(rng, kind, 2)
    x = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(16, 16)
    inputs = [
        ("X", x),
        ("X_scale", xs),
        ("X_zero_point", random_zp(rng, dtype, kind)),
        ("Y_scale", ys),
        ("Y_zero_point", random_zp(rng, dtype, kind)),
    ]
    check(
        "QLinearLeakyRelu",
        inputs,
        {"alpha": alpha},
        const=("X_scale", "X_zero_point", "Y_scale", "Y_zero_point"),
    )


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_leaky_relu_many_parameters(dtype):
    rng = np.random.default_rng(11)
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(1, 4, 8, 8)
    assert stress("QLinearLeakyRelu", unary_draws(rng, v, dtype), 400, {"alpha": 0.1}) == 0


# --- QLinearConcat -------------------------------------------------------------------------------
CONCAT_CASES = [
    # (shapes, axis, share): share[i] = input i uses the output's scale and zero point
    ([(2, 3, 4), (2, 5, 4)], 1, (False, False)),
    ([(2, 3, 4), (2, 3, 4), (2, 3, 1)], -1, (True, False, False)),
    ([(1, 8), (3, 8)], 0, (True, True)),
    ([(4, 2, 2, 2), (4, 1, 2, 2), (4, 3, 2, 2)], 1, (False, True, False)),
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(CONCAT_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_concat(dtype, case, kind):
    shapes, axis, share = CONCAT_CASES[case]
    rng = np.random.default_rng(100 * case + SCALE_KINDS.index(kind))
    (ys,) = random_scales(rng, kind, 1)
    yz = random_zp(rng, dtype, kind)
    inputs = [("Y_scale", ys), ("Y_zero_point", yz)]
    for i, (shape, same) in enumerate(zip(shapes, share, strict=True)):
        s, z = (ys, yz) if same else (random_scales(rng, kind, 1)[0], random_zp(rng, dtype, kind))
        inputs += [(f"X{i}", random_q(rng, dtype, shape)), (f"s{i}", s), (f"z{i}", z)]
    check("QLinearConcat", inputs, {"axis": axis})


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
@pytest.mark.parametrize("op", ["Add", "Mul", "Concat", "LeakyRelu"])
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    c = QdqChain.start(op, dtype)
    if op == "LeakyRelu":
        c.nodes.append(helper.make_node(op, ["xf"], ["yf"], alpha=0.2))
        expected = partial(qops.qlinear_leaky_relu, c.x, c.xs, c.xz, c.ys, c.yz, alpha=0.2)
    else:  # a second quantized input b with the scale ws
        b, bz = random_q(c.rng, dtype, c.x.shape), random_zp(c.rng, dtype, "random")
        c.feeds["b"] = b
        c.nodes.append(helper.make_node("DequantizeLinear", ["b", "ws", "bz"], ["bf"]))
        c.inits += [initializer("ws", c.ws), initializer("bz", bz)]
        if op == "Concat":
            c.nodes.append(helper.make_node(op, ["xf", "bf"], ["yf"], axis=1))
            expected = partial(
                qops.qlinear_concat, c.ys, c.yz, c.x, c.xs, c.xz, b, c.ws, bz, axis=1
            )
        else:
            c.nodes.append(helper.make_node(op, ["xf", "bf"], ["yf"]))
            fn = qops.qlinear_add if op == "Add" else qops.qlinear_mul
            expected = partial(fn, c.x, c.xs, c.xz, b, c.ws, bz, c.ys, c.yz)
    optimized, want = c.run(tmp_path)
    assert optimized == {(MS, f"QLinear{op}")}
    assert differing(expected(), want) == 0
