"""The onnxruntime harness of the hwsim.qops tests: single-node sessions, seeded inputs, and QDQ
chains as ORT optimises them.

Every comparison builds a single-node ONNX model (``onnx.helper``; opsets ai.onnx 21 and
com.microsoft 1), runs it on ``CPUExecutionProvider`` with default session options, and
compares it with :func:`hwsim.qops.run_node` on the same seeded inputs (:func:`check`; many
parameter draws through one session: :func:`stress`). Scales are drawn from four families
(:data:`SCALE_KINDS`): random log-uniform, power-of-two ratios (exact ties for the rounding),
short decimals (0.1, 0.3, ... not representable in binary) and extreme zero points.

QDQ chains (:class:`QdqChain`): a float graph ``DequantizeLinear -> op -> QuantizeLinear`` is
optimised by ORT (its optimised model is saved with ``SessionOptions.optimized_model_filepath``)
and each test asserts the kernel ORT picked and that its output equals the corresponding qops
function bit for bit. Findings with onnxruntime 1.32 on x86-64 (AVX-512) are listed in the test
module of each operator family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from hwsim import qops

ort.set_default_logger_severity(3)

MS = "com.microsoft"
INT8 = (np.int8, np.uint8)
SCALE_KINDS = ("random", "ties", "decimal", "extreme")


# --- single-node sessions ----------------------------------------------------------------------
def value_info(name: str, value: np.ndarray):
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)
    )


def session(op_type, inputs, attrs, out_dtype, domain=MS, const=(), n_out=1):
    names = [n if v is not None else "" for n, v in inputs]
    node = helper.make_node(
        op_type, names, [f"y{i}" for i in range(n_out)], domain=domain, **(attrs or {})
    )
    graph_inputs = [
        value_info(n, np.asarray(v)) for n, v in inputs if v is not None and n not in const
    ]
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in inputs if n in const]
    outs = [
        helper.make_tensor_value_info(f"y{i}", helper.np_dtype_to_tensor_dtype(out_dtype), None)
        for i in range(n_out)
    ]
    graph = helper.make_graph([node], "g", graph_inputs, outs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)]
    )
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def differing(got: np.ndarray, want: np.ndarray) -> int:
    """Number of differing elements (float32 outputs compared bit for bit)."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind == "f":
        return int(np.count_nonzero(got.view(np.uint32) != want.view(np.uint32)))
    return int(np.count_nonzero(got != want))


def check(op_type, inputs, attrs=None, domain=MS, const=()):
    """Run ``op_type`` through hwsim and onnxruntime; assert identical outputs."""
    attrs = attrs or {}
    got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs], isa="auto")[0]
    sess = session(op_type, inputs, attrs, got.dtype, domain, const)
    feeds = {n: np.asarray(v) for n, v in inputs if v is not None and n not in const}
    want = sess.run(None, feeds)[0]
    assert differing(got, want) == 0, (op_type, attrs, got, want)
    return got


def stress(op_type, draw, n, attrs=None, domain=MS):
    """Compare ``n`` parameter draws ``draw(i) -> inputs`` through one ORT session (every
    input a graph input); return the total number of differing elements."""
    attrs = attrs or {}
    first = draw(0)
    got0 = qops.run_node(op_type, domain, attrs, [v for _, v in first], isa="auto")[0]
    sess = session(op_type, first, attrs, got0.dtype, domain)
    bad = 0
    for i in range(n):
        inputs = first if i == 0 else draw(i)
        got = qops.run_node(op_type, domain, attrs, [v for _, v in inputs], isa="auto")[0]
        want = sess.run(None, {k: np.asarray(v) for k, v in inputs if v is not None})[0]
        bad += differing(got, want)
    return bad


# --- seeded inputs -------------------------------------------------------------------------------
def random_q(rng, dtype, shape):
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max + 1, shape).astype(dtype)


def random_zp(rng, dtype, kind):
    info = np.iinfo(dtype)
    if kind == "extreme":
        return dtype(info.min if rng.random() < 0.5 else info.max)
    return dtype(rng.integers(info.min, info.max + 1))


def random_scales(rng, kind, n):
    if kind == "ties":  # powers of two: the ratios are exact, products land on halves
        return [np.float32(2.0 ** int(rng.integers(-8, 0))) for _ in range(n)]
    if kind == "decimal":
        return [np.float32(rng.choice([0.1, 0.3, 0.7, 0.05, 0.2, 0.9])) for _ in range(n)]
    return [np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0)))) for _ in range(n)]


def draw_scale(rng):
    """One scale of the three families mixed (for :func:`stress`)."""
    kind = rng.integers(3)
    if kind == 0:
        return np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
    if kind == 1:  # small odd multiples of powers of two: exact ratios, many ties
        return np.float32(int(rng.choice([1, 3, 5, 7])) * 2.0 ** int(rng.integers(-10, -1)))
    return np.float32(rng.choice([0.1, 0.3, 0.7, 0.05, 0.2, 0.9, 0.01, 0.03]))


def unary_draws(rng, x, dtype):
    """``draw(i)`` for :func:`stress` of a one-input op (``X``, its scale and zero point, the
    output's) on the fixed tensor ``x``."""

    def draw(i):
        return [
            ("X", x),
            ("X_scale", draw_scale(rng)),
            ("X_zero_point", random_zp(rng, dtype, "random")),
            ("Y_scale", draw_scale(rng)),
            ("Y_zero_point", random_zp(rng, dtype, "random")),
        ]

    return draw


# --- QDQ chains as ORT optimises them ----------------------------------------------------------
# The position of a chain in this list seeds its inputs.
CHAINS = [
    "Add",
    "Mul",
    "GlobalAveragePool",
    "AveragePool",
    "Concat",
    "LeakyRelu",
    "MaxPool",
    "MaxPool-rescaled",
    "Gemm",
    "MatMul",
    "Conv",
]


def initializer(name, value):
    return numpy_helper.from_array(np.asarray(value), name)


@dataclass
class QdqChain:
    """A float QDQ graph ``DequantizeLinear(x) -> op -> QuantizeLinear(yf)`` under construction:
    :meth:`start` draws x and the Q / DQ parameters, the test appends ``op`` (and any further
    DQ nodes, initializers and feeds), :meth:`run` closes the graph with the Q node and runs it
    on ORT with the default (full) graph optimisations."""

    rng: np.random.Generator
    dtype: type
    x: np.ndarray
    xs: np.float32
    ws: np.float32
    ys: np.float32
    xz: np.generic
    yz: np.generic
    nodes: list = field(default_factory=list)
    inits: list = field(default_factory=list)
    feeds: dict = field(default_factory=dict)
    q_params: tuple = ("ys", "yz")

    @classmethod
    def start(cls, op, dtype, x_shape=(2, 4, 6, 6)):
        rng = np.random.default_rng(CHAINS.index(op) + 100 * (dtype == np.int8))
        xs, ws, ys = (np.float32(v) for v in rng.uniform(0.005, 0.05, 3))
        xz, yz = random_zp(rng, dtype, "random"), random_zp(rng, dtype, "random")
        x = random_q(rng, dtype, x_shape)
        return cls(
            rng, dtype, x, xs, ws, ys, xz, yz,
            nodes=[helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"])],
            inits=[initializer("xs", xs), initializer("xz", xz), initializer("ys", ys),
                   initializer("yz", yz)],
            feeds={"x": x},
        )  # fmt: skip

    def dequantized_weights(self, w_shape, axis: int, bias: bool = True):
        """Per-channel int8 weights ``w`` (5 channels along ``axis``, zero points 0) and an
        int32 ``bias`` (scale ``xs * w_s``) as initializers; appends the weights' DQ to ``wf``
        and, with ``bias``, the bias' DQ to ``bf``. Returns ``(w, w_s, w_z, bias)``."""
        w = random_q(self.rng, np.int8, w_shape)
        w_s = self.rng.uniform(0.002, 0.02, 5).astype(np.float32)
        w_z = np.zeros(5, np.int8)
        b = self.rng.integers(-3000, 3000, 5).astype(np.int32)
        self.inits += [initializer("w", w), initializer("w_s", w_s), initializer("w_z", w_z),
                       initializer("bias", b)]  # fmt: skip
        self.inits.append(initializer("bias_s", (self.xs * w_s).astype(np.float32)))
        self.nodes.append(
            helper.make_node("DequantizeLinear", ["w", "w_s", "w_z"], ["wf"], axis=axis)
        )
        if bias:
            self.nodes.append(
                helper.make_node("DequantizeLinear", ["bias", "bias_s"], ["bf"], axis=0)
            )
        return w, w_s, w_z, b

    def run(self, tmp_path):
        """``(kernels, y)``: the ``(domain, op_type)`` set of ORT's optimised graph and the
        chain's output."""
        nodes = self.nodes + [helper.make_node("QuantizeLinear", ["yf", *self.q_params], ["y"])]
        graph_inputs = [value_info(n, v) for n, v in self.feeds.items()]
        out_type = helper.np_dtype_to_tensor_dtype(np.dtype(self.dtype))
        out = [helper.make_tensor_value_info("y", out_type, None)]
        model = helper.make_model(
            helper.make_graph(nodes, "qdq", graph_inputs, out, self.inits),
            opset_imports=[helper.make_opsetid("", 21)],
        )
        model.ir_version = 9
        opts = ort.SessionOptions()  # default: ORT_ENABLE_ALL
        opts.optimized_model_filepath = os.fspath(tmp_path / "optimized.onnx")
        sess = ort.InferenceSession(
            model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        want = sess.run(None, self.feeds)[0]
        optimized = onnx.load(opts.optimized_model_filepath)
        return {(n.domain, n.op_type) for n in optimized.graph.node}, want
