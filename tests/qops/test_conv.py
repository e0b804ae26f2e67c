"""hwsim.qops.conv against onnxruntime: ``QLinearConv`` and ``ConvInteger`` in every ``Conv``
geometry, and the fused QDQ chain.

QDQ chain with onnxruntime 1.32 on x86-64: ``DQ -> Conv(+bias) -> Q`` with a per-channel weight
DQ becomes ``Transpose -> com.microsoft QLinearConv (NHWC) -> Transpose`` for uint8 activations;
with int8 activations it stays unfused (float Conv between DQ and Q).
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
    QdqChain,
    check,
    differing,
    draw_scale,
    random_q,
    random_zp,
)

CONV_CASES = [
    # (x shape, w shape, attrs, per-channel weights)
    ((2, 6, 9, 9), (4, 3, 3, 3), {"pads": [1, 1, 1, 1], "group": 2}, True),
    ((1, 3, 10, 8), (5, 3, 3, 2), {"strides": [2, 1], "dilations": [1, 2]}, True),
    ((1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER", "strides": [2, 2]}, True),
    ((1, 2, 6, 5), (3, 2, 2, 3), {"auto_pad": "SAME_LOWER"}, False),
    ((2, 3, 17), (4, 3, 5), {"pads": [2, 1], "strides": [3]}, True),
    ((1, 8, 5, 5), (16, 8, 1, 1), {}, False),
]


@pytest.mark.parametrize("case", range(len(CONV_CASES)))
@pytest.mark.parametrize("x_type", INT8)
def test_qlinear_conv_and_conv_integer_geometry(case, x_type):
    x_shape, w_shape, attrs, per_channel = CONV_CASES[case]
    rng = np.random.default_rng(case)
    M = w_shape[0]
    x, w = random_q(rng, x_type, x_shape), random_q(rng, np.int8, w_shape)
    w_s = rng.uniform(0.001, 0.02, M if per_channel else 1).astype(np.float32)
    inputs = [("x", x), ("x_scale", draw_scale(rng)),
              ("x_zero_point", random_zp(rng, x_type, "random")),
              ("w", w), ("w_scale", w_s), ("w_zero_point", np.zeros(w_s.size, np.int8)),
              ("y_scale", np.float32(rng.uniform(0.05, 0.5))),
              ("y_zero_point", random_zp(rng, x_type, "random")),
              ("B", rng.integers(-20000, 20000, M).astype(np.int32))]  # fmt: skip
    check("QLinearConv", inputs, attrs, domain="", const=("w", "w_scale", "w_zero_point", "B"))
    if x_type == np.uint8:  # ORT's ConvInteger takes uint8 activations
        u = random_q(rng, np.uint8, w_shape)
        check("ConvInteger", [("x", x), ("w", u),
                              ("x_zero_point", random_zp(rng, x_type, "random")),
                              ("w_zero_point", np.uint8(7))], attrs, domain="")  # fmt: skip


@pytest.mark.parametrize("op", ["Conv"])
@pytest.mark.parametrize("dtype", INT8)
def test_qdq_chain_is_fused_into_the_emulated_kernel(op, dtype, tmp_path):
    c = QdqChain.start(op, dtype)
    w, w_s, w_z, bias = c.dequantized_weights((5, 4, 3, 3), axis=0)
    # ORT moves QLinearConv to NHWC: com.microsoft QLinearConv between Transposes
    c.nodes.append(helper.make_node("Conv", ["xf", "wf", "bf"], ["yf"], pads=[1] * 4))
    conv = partial(qops.qlinear_conv, c.x, c.xs, c.xz, w, w_s, w_z, c.ys, c.yz, bias)
    expected = partial(conv, pads=[1, 1, 1, 1], isa="auto")
    kernels = {("", "Transpose"), (MS, "QLinearConv")}
    if dtype == np.int8:  # x86: int8 activations stay unfused
        expected = None
        kernels = {("", "DequantizeLinear"), ("", op), ("", "QuantizeLinear")}
    optimized, want = c.run(tmp_path)
    assert optimized == kernels
    if expected is not None:
        assert differing(expected(), want) == 0
