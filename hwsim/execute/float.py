"""The float reference: the IR evaluated in float32, one function per op (:data:`FLOAT_OPS`).

``run_float(graph, x)`` returns every tensor of one batch by name, the same names the integer
executor returns, so a per-layer comparison is a zip over names.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwsim.datapath import conv_output_size
from hwsim.datapath.kernels import gmn_to_nchw, im2col_nhwc
from hwsim.execute.arrays import max_pool, pad, pool_count, reshape, softmax, windows
from hwsim.graph.ir import Graph, Node, Op


def float_conv(x: np.ndarray, w: np.ndarray, b, attrs: dict) -> np.ndarray:
    """Float32 convolution (NCHW), the reference for ``Op.CONV``: the padded input turned NHWC,
    unfolded window-major by the datapath's Numba kernel, one float32 BLAS GEMM per group."""
    g = attrs["group"]
    xp = np.ascontiguousarray(pad(x, attrs["pads"], 0.0).transpose(0, 2, 3, 1), np.float32)
    N, Hp, Wp, C = xp.shape
    F, Cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    ho = conv_output_size(Hp, kh, sh, 0, 0, dh)  # xp is already padded
    wo = conv_output_size(Wp, kw, sw, 0, 0, dw)
    K = Cg * kh * kw
    cols = np.empty((g, N * ho * wo, K), np.float32)
    im2col_nhwc(xp, g, kh, kw, sh, sw, dh, dw, ho, wo, cols)
    Fg = F // g
    w3 = w.astype(np.float32).reshape(g, Fg, Cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(g, K, Fg)
    out = np.empty((N, F, ho * wo), np.float32)
    gmn_to_nchw(np.matmul(cols, w3), N, out)
    out = out.reshape(N, F, ho, wo)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def batchnorm_f32(x: np.ndarray, a: dict) -> np.ndarray:
    """Inference BatchNormalization in float32 as onnxruntime's CPU kernel orders it:
    ``k = gamma / sqrt(var + eps)``, ``c = beta - mean * k``, ``y = x * k + c``."""
    f32 = np.float32
    k = (a["gamma"] / np.sqrt(a["var"] + f32(a["epsilon"]))).astype(f32)
    c = (a["beta"] - a["mean"] * k).astype(f32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x * k.reshape(shape) + c.reshape(shape)).astype(f32)


def _dense(node: Node, xs: list) -> np.ndarray:
    x = xs[0]
    y = x.reshape(x.shape[0], -1) @ node.weight.T
    return (y + node.bias if node.bias is not None else y).astype(np.float32)


def _mul(node: Node, xs: list) -> np.ndarray:
    x, c = xs[0], node.weight
    return (x * (c.reshape(1, -1, *([1] * (x.ndim - 2))) if c.ndim == 1 else c)).astype(np.float32)


def _avgpool(node: Node, xs: list) -> np.ndarray:
    x, a = xs[0], node.attrs
    s = windows(pad(x, a["pads"], 0.0), a["kernel"], a["strides"]).sum(axis=(-1, -2))
    return (s / pool_count(x.shape, a)).astype(np.float32)


FLOAT_OPS: dict[Op, Callable[[Node, list], np.ndarray]] = {
    Op.CONV: lambda n, xs: float_conv(xs[0], n.weight, n.bias, n.attrs),
    Op.DENSE: _dense,
    Op.RELU: lambda n, xs: np.maximum(xs[0], np.float32(0)),
    Op.CLIP: lambda n, xs: np.clip(
        xs[0], np.float32(n.attrs["min"]), np.float32(n.attrs["max"])
    ).astype(np.float32),
    Op.ADD: lambda n, xs: (xs[0] + xs[1]).astype(np.float32),
    Op.MUL: _mul,
    Op.MAXPOOL: lambda n, xs: max_pool(
        xs[0], n.attrs["kernel"], n.attrs["strides"], n.attrs["pads"], -np.inf
    ),
    Op.AVGPOOL: _avgpool,
    Op.GAP: lambda n, xs: xs[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32),
    Op.FLATTEN: lambda n, xs: xs[0].reshape(xs[0].shape[0], -1),
    Op.RESHAPE: lambda n, xs: reshape(xs[0], n.attrs["shape"]),
    Op.CONCAT: lambda n, xs: np.concatenate(xs, axis=1),
    Op.SOFTMAX: lambda n, xs: softmax(np.asarray(xs[0], np.float32), n.attrs["axis"]),
    Op.IDENTITY: lambda n, xs: xs[0],
    Op.BATCHNORM: lambda n, xs: batchnorm_f32(xs[0], n.attrs),
}
"""Op -> its float32 semantics ``f(node, inputs) -> output``: one entry per op."""


def float_op(node: Node, xs: list) -> np.ndarray:
    """Evaluate one node in float32 (:data:`FLOAT_OPS`)."""
    fn = FLOAT_OPS.get(node.op)
    if fn is None:
        raise ValueError(f"node {node.name!r}: no float implementation of {node.op}")
    return fn(node, xs)


def run_float(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Float32 reference run of one batch; returns every tensor by name.

    An imported QDQ model's quantized activations are clamped to their Q/DQ ranges
    (``graph.float_ranges``), not rounded: the file's network with its dequantized weights and
    every activation ``QuantizeLinear -> DequantizeLinear`` pair read as ``Clip(DQ(q_min),
    DQ(q_max))`` -- onnxruntime's quantizer removed the ReLUs / Clips those ranges enforce."""
    clamp = graph.float_ranges

    def put(t, v):
        r = clamp.get(t)
        env[t] = v if r is None else np.clip(v, np.float32(r[0]), np.float32(r[1]))

    env: dict[str, np.ndarray] = {}
    put(graph.input, np.asarray(x, np.float32))
    for n in graph.nodes:
        put(n.output, float_op(n, [env[t] for t in n.inputs]))
    return env
