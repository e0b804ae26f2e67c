"""hwsim.qops.pool against onnxruntime's CPU kernels: ``QLinearGlobalAveragePool``,
``QLinearAveragePool`` (1-3 spatial dims, NCHW and channels-last, every padding rule), the
8-bit ``MaxPool``, and the fused QDQ chains.

QDQ chains with onnxruntime 1.32 on x86-64 (AVX-512):

* ``DQ -> GlobalAveragePool -> Q`` => com.microsoft ``QLinearGlobalAveragePool``
* ``DQ -> AveragePool -> Q``       => com.microsoft ``QLinearAveragePool``
* ``DQ -> MaxPool -> Q`` with the same Q / DQ parameters => ``MaxPool`` on the int8 / uint8
  tensor (the QDQ pair dropped); with different parameters ORT keeps DQ -> MaxPool (float) -> Q.
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
    unary_draws,
)

# --- QLinearGlobalAveragePool --------------------------------------------------------------------
GAP_SHAPES = [(1, 3, 5, 5), (2, 16, 7, 7), (2, 4, 1, 1), (1, 2, 40, 40), (3, 5, 9), (1, 2, 3, 4, 5)]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("shape", GAP_SHAPES, ids=str)
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_global_average_pool(dtype, shape, channels_last, kind):
    rng = np.random.default_rng(sum(shape) * 7 + channels_last + 11 * SCALE_KINDS.index(kind))
    S = int(np.prod(shape[2:]))
    (ys,) = random_scales(rng, kind, 1)
    ratio = 2.0 ** int(rng.integers(-4, 3)) if kind == "ties" else rng.uniform(0.05, 20)
    xs = np.float32(ys * S * ratio / S) if kind != "ties" else np.float32(ys * ratio)
    x_shape = (shape[0], *shape[2:], shape[1]) if channels_last else shape
    inputs = [
        ("X", random_q(rng, dtype, x_shape)),
        ("x_scale", xs),
        ("x_zero_point", random_zp(rng, dtype, kind)),
        ("y_scale", ys),
        ("y_zero_point", random_zp(rng, dtype, kind)),
    ]
    check("QLinearGlobalAveragePool", inputs, {"channels_last": channels_last})


def test_qlinear_global_average_pool_rejects_what_mlas_rejects():
    x = np.zeros((1, 1, 4, 4), np.uint8)
    with pytest.raises(qops.QOpError, match="computation range"):
        qops.qlinear_global_average_pool(
            x, np.float32(1), np.uint8(0), np.float32(1e-6), np.uint8(0)
        )


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_global_average_pool_many_parameters(dtype):
    rng = np.random.default_rng(7)

    def draw(i):
        ys = draw_scale(rng)
        xs = np.float32(ys * 49 * np.float32(rng.choice([0.5, 1.5, 0.37, 2.0, 0.1, 1 / 3])))
        return [
            ("X", random_q(rng, dtype, (2, 32, 7, 7))),
            ("x_scale", xs),
            ("x_zero_point", random_zp(rng, dtype, "random")),
            ("y_scale", ys),
            ("y_zero_point", random_zp(rng, dtype, "random")),
        ]

    assert stress("QLinearGlobalAveragePool", draw, 400) == 0


# --- QLinearAveragePool --------------------------------------------------------------------------
AVGPOOL_CASES = [
    # (input shape, attrs)
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ((1, 4, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 4, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    (
        (1, 4, 8, 8),
        {
            "kernel_shape": [2, 2],
            "strides": [1, 1],
            "auto_pad": "SAME_LOWER",
            "count_include_pad": 1,
        },
    ),
    ((2, 3, 11), {"kernel_shape": [4], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 3], "pads": [0, 1, 1, 1, 0, 1]}),
    ((2, 3, 5, 5), {"kernel_shape": [5, 5]}),  # the global-average fallback
    ((1, 2, 6, 6), {"kernel_shape": [3, 3], "channels_last": 1, "pads": [1, 0, 1, 2]}),
    ((1, 3, 600, 2), {"kernel_shape": [7, 1], "strides": [3, 1]}),  # > 512 inputs: table path
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(AVGPOOL_CASES)))
@pytest.mark.parametrize("kind", SCALE_KINDS)
def test_qlinear_average_pool(dtype, case, kind):
    shape, attrs = AVGPOOL_CASES[case]
    rng = np.random.default_rng(case * 31 + SCALE_KINDS.index(kind))
    if attrs.get("channels_last"):
        shape = (shape[0], *shape[2:], shape[1])
    xs, ys = random_scales(rng, kind, 2)
    inputs = [
        ("X", random_q(rng, dtype, shape)),
        ("x_scale", xs),
        ("x_zero_point", random_zp(rng, dtype, kind)),
        ("y_scale", ys),
        ("y_zero_point", random_zp(rng, dtype, kind)),
    ]
    check("QLinearAveragePool", inputs, attrs)


@pytest.mark.parametrize("dtype", INT8)
def test_qlinear_average_pool_many_parameters(dtype):
    rng = np.random.default_rng(12)
    v = np.arange(np.iinfo(dtype).min, np.iinfo(dtype).max + 1).astype(dtype).reshape(1, 4, 8, 8)
    attrs = {"kernel_shape": [2, 3], "pads": [1, 1, 0, 1], "strides": [1, 2]}
    assert stress("QLinearAveragePool", unary_draws(rng, v, dtype), 400, attrs) == 0


# --- MaxPool -------------------------------------------------------------------------------------
MAXPOOL_CASES = [
    ((1, 2, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}),
    ((2, 3, 7, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}),
    ((1, 4, 9, 9), {"kernel_shape": [3, 2], "strides": [2, 3], "ceil_mode": 1}),
    ((1, 4, 9, 9), {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 0, 1]}),
    ((1, 4, 8, 8), {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ((2, 3, 11), {"kernel_shape": [4], "strides": [2], "pads": [1, 2]}),
    ((1, 2, 4, 5, 6), {"kernel_shape": [2, 2, 3], "strides": [1, 2, 2]}),
]


@pytest.mark.parametrize("dtype", INT8)
@pytest.mark.parametrize("case", range(len(MAXPOOL_CASES)))
def test_max_pool_8bit(dtype, case):
    shape, attrs = MAXPOOL_CASES[case]
    rng = np.random.default_rng(case)
    check("MaxPool", [("X", random_q(rng, dtype, shape))], attrs, domain="")


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
@pytest.mark.parametrize("op", ["GlobalAveragePool", "AveragePool", "MaxPool", "MaxPool-rescaled"])
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    c = QdqChain.start(op, dtype)
    if op == "MaxPool":  # Q with the DQ's parameters: ORT drops the pair
        attrs = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
        c.nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], **attrs))
        c.q_params = ("xs", "xz")
        expected = partial(qops.max_pool, c.x, **attrs)
        kernels = {("", "MaxPool")}
    elif op == "MaxPool-rescaled":  # different Q parameters: ORT keeps the float MaxPool
        c.nodes.append(helper.make_node("MaxPool", ["xf"], ["yf"], kernel_shape=[2, 2]))
        expected = None
        kernels = {("", "DequantizeLinear"), ("", "MaxPool"), ("", "QuantizeLinear")}
    else:
        attrs = {
            "AveragePool": {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
        }.get(op, {})
        c.nodes.append(helper.make_node(op, ["xf"], ["yf"], **attrs))
        fn = {
            "GlobalAveragePool": qops.qlinear_global_average_pool,
            "AveragePool": qops.qlinear_average_pool,
        }[op]
        expected = partial(fn, c.x, c.xs, c.xz, c.ys, c.yz, **attrs)
        kernels = {(MS, f"QLinear{op}")}
    optimized, want = c.run(tmp_path)
    assert optimized == kernels
    if expected is not None:
        assert differing(expected(), want) == 0
