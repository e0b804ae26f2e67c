"""hwsim.qops.matmul against onnxruntime: ``QLinearMatMul`` and ``MatMulInteger`` with NumPy
broadcasting, the com.microsoft ``QGemm``, and the fused QDQ chains.

QDQ chains with onnxruntime 1.32 on x86-64:

* ``DQ -> Gemm(+bias) -> Q`` with a per-channel weight DQ => com.microsoft ``QGemm``;
* ``DQ -> MatMul -> Q`` => ``QLinearMatMul`` for uint8 activations; with int8 activations it
  stays unfused (float MatMul between DQ and Q).
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
    random_q,
    random_scales,
    random_zp,
    stress,
)

MATMUL_CASES = [
    ((2, 1, 5, 12), (3, 12, 4)),
    ((7, 12), (12,)),
    ((12,), (2, 12, 6)),
    ((4, 9, 33), (33, 5)),
]


@pytest.mark.parametrize("case", range(len(MATMUL_CASES)))
@pytest.mark.parametrize("types", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)],
                         ids=lambda t: f"{t[0].__name__}x{t[1].__name__}")  # fmt: skip
def test_qlinear_matmul_and_matmul_integer_broadcasting(case, types):
    a_shape, b_shape = MATMUL_CASES[case]
    ta, tb = types
    rng = np.random.default_rng(case)
    a, b = random_q(rng, ta, a_shape), random_q(rng, tb, b_shape)
    inputs = [("a", a), ("a_scale", draw_scale(rng)),
              ("a_zero_point", random_zp(rng, ta, "random")),
              ("b", b), ("b_scale", draw_scale(rng)),
              ("b_zero_point", random_zp(rng, tb, "random")),
              ("y_scale", np.float32(rng.uniform(0.05, 0.5))),
              ("y_zero_point", random_zp(rng, ta, "random"))]  # fmt: skip
    check("QLinearMatMul", inputs, domain="")
    check("MatMulInteger", [("A", a), ("B", b), ("a_zero_point", random_zp(rng, ta, "random")),
                            ("b_zero_point", random_zp(rng, tb, "random"))],
          domain="")  # fmt: skip


def test_matmul_integer_per_row_and_per_column_zero_points():
    """Per-row A / per-column B zero points (allowed by ONNX) against plain int64 arithmetic."""
    rng = np.random.default_rng(0)
    a, b = random_q(rng, np.uint8, (2, 6, 10)), random_q(rng, np.int8, (10, 5))
    za = random_q(rng, np.uint8, (2, 6, 1))
    zb = random_q(rng, np.int8, (5,))
    got = qops.run_node("MatMulInteger", "", {}, [a, b, za, zb])[0]
    want = (a.astype(np.int64) - za) @ (b.astype(np.int64) - zb)
    assert got.dtype == np.int32 and np.array_equal(got, want)


# --- QGemm ---------------------------------------------------------------------------------------
QGEMM_CASES = [
    # (M, K, N, attrs, per-column b, bias shape or None, requantized output)
    (5, 17, 8, {}, False, None, True),
    (5, 17, 8, {}, True, (8,), True),
    (7, 33, 4, {"transA": 1}, True, (1, 4), True),
    (3, 64, 16, {"transB": 1, "alpha": 0.5}, True, (3, 1), True),
    (4, 9, 6, {"transA": 1, "transB": 1}, False, (4, 6), True),
    (6, 300, 5, {}, True, (), True),
    (5, 17, 8, {}, True, (8,), False),
    (5, 17, 8, {"alpha": 3.0}, False, None, False),
]


@pytest.mark.parametrize(
    "types",
    [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)],
    ids=lambda t: f"{t[0].__name__}x{t[1].__name__}",
)
@pytest.mark.parametrize("case", range(len(QGEMM_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qgemm(types, case, kind):
    ta, tb = types
    M, K, N, attrs, per_col, bias, requant = QGEMM_CASES[case]
    rng = np.random.default_rng(case * 13 + SCALE_KINDS.index(kind))
    a = random_q(rng, ta, (K, M) if attrs.get("transA") else (M, K))
    b = random_q(rng, tb, (N, K) if attrs.get("transB") else (K, N))
    a_s, y_s = random_scales(rng, kind, 2)
    if per_col:
        b_s = np.array(random_scales(rng, kind, N), np.float32)
        b_z = np.array([random_zp(rng, tb, kind) for _ in range(N)], tb)
    else:
        b_s, b_z = random_scales(rng, kind, 1)[0], random_zp(rng, tb, kind)
    c = None if bias is None else rng.integers(-(2**20), 2**20, bias).astype(np.int32)
    y_s, y_z = (y_s, random_zp(rng, ta, kind)) if requant else (None, None)
    inputs = [
        ("A", a),
        ("a_scale", a_s),
        ("a_zero_point", random_zp(rng, ta, kind)),
        ("B", b),
        ("b_scale", b_s),
        ("b_zero_point", b_z),
        ("C", c),
        ("y_scale", y_s),
        ("y_zero_point", y_z),
    ]
    check("QGemm", inputs, attrs, const=("B", "b_scale", "b_zero_point"))


@pytest.mark.parametrize("dtype", INT8)
def test_qgemm_many_parameters(dtype):
    rng = np.random.default_rng(13)

    def draw(i):
        return [
            ("A", random_q(rng, dtype, (8, 40))),
            ("a_scale", draw_scale(rng)),
            ("a_zero_point", random_zp(rng, dtype, "random")),
            ("B", random_q(rng, np.int8, (40, 16))),
            ("b_scale", np.array([draw_scale(rng) for _ in range(16)], np.float32)),
            ("b_zero_point", np.zeros(16, np.int8)),
            ("C", rng.integers(-5000, 5000, 16).astype(np.int32)),
            ("y_scale", draw_scale(rng)),
            ("y_zero_point", random_zp(rng, dtype, "random")),
        ]

    assert stress("QGemm", draw, 200, {"alpha": 0.3}) == 0


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
@pytest.mark.parametrize("op", ["Gemm", "MatMul"])
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    c = QdqChain.start(op, dtype, x_shape=(6, 24))
    w, w_s, w_z, bias = c.dequantized_weights((24, 5), axis=1, bias=op != "MatMul")
    args = (c.x, c.xs, c.xz, w, w_s, w_z)
    if op == "MatMul":
        c.nodes.append(helper.make_node("MatMul", ["xf", "wf"], ["yf"]))
        expected = partial(qops.qlinear_matmul, *args, c.ys, c.yz, isa="auto")
        kernels = {("", "QLinearMatMul")}
    else:
        c.nodes.append(helper.make_node("Gemm", ["xf", "wf", "bf"], ["yf"]))
        expected = partial(qops.qgemm, *args, bias, c.ys, c.yz, isa="auto")
        kernels = {(MS, "QGemm")}
    if dtype == np.int8 and op != "Gemm":  # x86: int8 activations stay unfused
        expected = None
        kernels = {("", "DequantizeLinear"), ("", op), ("", "QuantizeLinear")}
    optimized, want = c.run(tmp_path)
    assert optimized == kernels
    if expected is not None:
        assert differing(expected(), want) == 0
