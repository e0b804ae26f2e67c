"""The float reference: the IR evaluated in float32, one function per op (:data:`FLOAT_OPS`).

``run_float(graph, x)`` returns every tensor of one batch by name, the same names the integer
executor returns, so a per-layer comparison is a zip over names.

The transformer ops match onnxruntime (``ORT_DISABLE_ALL``) to float32 tolerance, not bit for
bit: GELU, Sigmoid, SiLU, Erf, Tanh, LayerNormalization and ReduceMean are computed in float64
and rounded once (onnxruntime's Erf / Tanh / Exp are MLAS approximations, its
LayerNormalization a one-pass float32 ``E[x^2] - E[x]^2``), MatMul by numpy's BLAS; HardSigmoid
/ HardSwish, Softmax, the elementwise ops and data movement in float32 as onnxruntime orders
them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwsim.datapath import conv_output_size
from hwsim.datapath.kernels import gmn_to_nchw, im2col_nhwc, pad_nhwc
from hwsim.errors import HwsimError
from hwsim.execute.arrays import (
    graph_input,
    max_pool,
    pad,
    pool_count,
    reshape,
    scratch,
    slice_axes,
    softmax,
    take,
    windows,
)
from hwsim.graph.ir import Graph, Node, Op


def float_conv(x: np.ndarray, w: np.ndarray, b, attrs: dict) -> np.ndarray:
    """Float32 convolution (NCHW), the reference for ``Op.CONV``: the input zero-padded and
    turned NHWC, unfolded window-major by the datapath's Numba kernels, one float32 BLAS GEMM
    per group."""
    g = attrs["group"]
    x = np.ascontiguousarray(x, np.float32)
    pt, pl, pb, pr = attrs["pads"]
    N, C, H, W = x.shape
    xp = scratch("float_conv.xp", (N, H + pt + pb, W + pl + pr, C), np.float32)
    # moved as int32 bit patterns (the border +0.0 is the pattern 0): an exact copy
    pad_nhwc(x.view(np.int32), pt, pl, np.int32(0), 0, xp.view(np.int32))
    N, Hp, Wp, C = xp.shape
    F, Cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilations"]
    ho = conv_output_size(Hp, kh, sh, 0, 0, dh)  # xp is already padded
    wo = conv_output_size(Wp, kw, sw, 0, 0, dw)
    K = Cg * kh * kw
    cols = scratch("float_conv.cols", (g, N * ho * wo, K), np.float32)
    im2col_nhwc(xp, g, kh, kw, sh, sw, dh, dw, ho, wo, cols)
    Fg = F // g
    w3 = w.astype(np.float32).reshape(g, Fg, Cg, kh, kw).transpose(0, 3, 4, 2, 1).reshape(g, K, Fg)
    out = np.empty((N, F, ho * wo), np.float32)
    prods = scratch("float_conv.prods", (g, N * ho * wo, Fg), np.float32)
    gmn_to_nchw(np.matmul(cols, w3, out=prods), N, out)
    out = out.reshape(N, F, ho, wo)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def batchnorm_f32(x: np.ndarray, a: dict) -> np.ndarray:
    """Inference BatchNormalization in float32 as onnxruntime's CPU kernel orders it
    (``core/providers/cpu/nn/batch_norm.h``: ``inv_std = (var + eps).sqrt().inverse()``,
    ``new_scale = inv_std * scale``): ``k = f32(1 / sqrt(var + eps)) * gamma``,
    ``c = beta - mean * k``, ``y = x * k + c``, every step rounded to float32."""
    f32 = np.float32
    inv = (f32(1.0) / np.sqrt((a["var"] + f32(a["epsilon"])).astype(f32))).astype(f32)
    k = (inv * np.asarray(a["gamma"], f32)).astype(f32)
    c = (a["beta"] - a["mean"] * k).astype(f32)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x * k.reshape(shape) + c.reshape(shape)).astype(f32)


def _dense(node: Node, xs: list) -> np.ndarray:
    x = xs[0]
    if node.attrs.get("nd"):  # over the last axis, the leading ones as rows of one GEMM
        y = x.reshape(-1, x.shape[-1]) @ node.weight.T
        y = (y + node.bias if node.bias is not None else y).astype(np.float32)
        return y.reshape(x.shape[:-1] + (node.weight.shape[0],))
    y = x.reshape(x.shape[0], -1) @ node.weight.T
    return (y + node.bias if node.bias is not None else y).astype(np.float32)


def _f32(fn):
    """A float64 formula applied to a float32 tensor, rounded once to float32."""

    def op(node: Node, xs: list) -> np.ndarray:
        return np.asarray(fn(node, np.asarray(xs[0], np.float64)), np.float32)

    return op


def _erf(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf  # scipy comes with scikit-learn

    return erf(x)


def gelu64(x: np.ndarray, form: str) -> np.ndarray:
    """GELU in float64: ``0.5 x (1 + erf(x / sqrt 2))`` (``erf``) or ``0.5 x (1 + tanh(sqrt(2 /
    pi) (x + 0.044715 x^3)))`` (``tanh``)."""
    if form == "tanh":
        return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / np.sqrt(2.0)))


def _sigmoid64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    """``max(0, min(1, alpha x + beta))`` in float32, as onnxruntime's kernel."""
    f = np.float32
    a = node.attrs
    return np.clip(f(a["alpha"]) * x + f(a["beta"]), f(0), f(1)).astype(f)


def layernorm64(node: Node, x: np.ndarray) -> np.ndarray:
    """LayerNormalization over the axes from ``attrs["axis"]`` on, in float64 (two-pass mean
    and variance), rounded once: ``(x - mean) / sqrt(var + eps) * gamma + beta``."""
    axes = tuple(range(node.attrs["axis"], x.ndim))
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=axes, keepdims=True)
    d = x - mean
    var = np.square(d).mean(axis=axes, keepdims=True)
    y = d / np.sqrt(var + np.float64(np.float32(node.attrs["epsilon"])))
    if node.weight is not None:
        y = y * node.weight.astype(np.float64)
    if node.bias is not None:
        y = y + node.bias.astype(np.float64)
    return y.astype(np.float32)


def repeat_axes(x: np.ndarray, factors) -> np.ndarray:
    """``Op.RESIZE``: nearest-neighbour upsampling by integer factors, ``np.repeat`` of every
    entry ``factors[axis]`` times along each axis (output shape ``x.shape * factors``); moves
    values, any dtype. Import accepts a Resize only where onnxruntime computes exactly this
    (docs/networks.md)."""
    for axis, f in enumerate(factors):
        if f != 1:
            x = np.repeat(x, int(f), axis=axis)
    return x


def _concat(node: Node, xs: list) -> np.ndarray:
    parts = list(xs)
    n = xs[0].shape[0]
    for i, c in node.attrs.get("consts", ()):  # the same constant for every sample
        parts.insert(i, np.broadcast_to(c, (n,) + c.shape[1:]).astype(xs[0].dtype))
    return np.concatenate(parts, axis=node.attrs.get("axis", 1))


def _embedding(node: Node, xs: list) -> np.ndarray:
    ids, v = np.asarray(xs[0]), node.weight.shape[0]
    if ids.size and (ids.min() < -v or ids.max() >= v):
        raise HwsimError(
            f"node {node.name!r} (embedding): token ids outside [{-v}, {v}) of the {v}-row table"
        )
    return np.take(node.weight, ids.astype(np.int64), axis=0)


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
    Op.CONCAT: _concat,
    Op.SOFTMAX: lambda n, xs: softmax(np.asarray(xs[0], np.float32), n.attrs["axis"]),
    Op.IDENTITY: lambda n, xs: xs[0],
    Op.BATCHNORM: lambda n, xs: batchnorm_f32(xs[0], n.attrs),
    Op.MATMUL: lambda n, xs: np.matmul(xs[0], xs[1]).astype(np.float32),
    Op.TRANSPOSE: lambda n, xs: xs[0].transpose(n.attrs["perm"]),
    Op.GATHER: lambda n, xs: take(xs[0], n.attrs),
    Op.EMBEDDING: _embedding,
    Op.SLICE: lambda n, xs: slice_axes(xs[0], n.attrs),
    Op.LAYERNORM: lambda n, xs: layernorm64(n, xs[0]),
    Op.GELU: _f32(lambda n, x: gelu64(x, n.attrs["form"])),
    Op.SIGMOID: _f32(lambda n, x: _sigmoid64(x)),
    Op.SILU: _f32(lambda n, x: x * _sigmoid64(x)),
    Op.HARDSIGMOID: lambda n, xs: _hard_sigmoid(n, xs[0]),
    Op.HARDSWISH: lambda n, xs: (xs[0] * _hard_sigmoid(n, xs[0])).astype(np.float32),
    Op.MUL_ACT: lambda n, xs: (xs[0] * xs[1]).astype(np.float32),
    Op.ADD_CONST: lambda n, xs: (xs[0] + n.weight).astype(np.float32),
    Op.DIV_CONST: lambda n, xs: (xs[0] / n.weight).astype(np.float32),
    Op.REDUCE_MEAN: _f32(
        lambda n, x: x.mean(axis=n.attrs["axes"], keepdims=bool(n.attrs["keepdims"]))
    ),
    Op.RESIZE: lambda n, xs: repeat_axes(xs[0], n.attrs["factors"]),
    Op.ERF: _f32(lambda n, x: _erf(x)),
    Op.TANH: _f32(lambda n, x: np.tanh(x)),
}
"""Op -> its float32 semantics ``f(node, inputs) -> output``: one entry per op."""


def float_op(node: Node, xs: list) -> np.ndarray:
    """Evaluate one node in float32 (:data:`FLOAT_OPS`)."""
    fn = FLOAT_OPS.get(node.op)
    if fn is None:
        raise ValueError(f"node {node.name!r}: no float implementation of {node.op}")
    return fn(node, xs)


_BLAS = None


def _one_blas_thread():
    """A context that runs BLAS on one thread (``threadpoolctl``; the controller built once)."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    return _BLAS.limit(limits=1, user_api="blas")


def run_float(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Float32 reference run of one batch; returns every tensor by name.

    Deterministic for any thread count: BLAS runs on one thread here, because OpenBLAS's
    float32 GEMM sums in an order that depends on its thread count, and calibration (which
    runs this) must not move a scale by an ulp between a 2-core process and a 1-thread
    worker (``tests/execute/test_float_threads.py``).

    An imported QDQ model's quantized activations are clamped to their Q/DQ ranges
    (``graph.float_ranges``), not rounded: the file's network with its dequantized weights and
    every activation ``QuantizeLinear -> DequantizeLinear`` pair read as ``Clip(DQ(q_min),
    DQ(q_max))`` -- onnxruntime's quantizer removed the ReLUs / Clips those ranges enforce."""
    clamp = graph.float_ranges

    def put(t, v):
        r = clamp.get(t)
        env[t] = v if r is None else np.clip(v, np.float32(r[0]), np.float32(r[1]))

    env: dict[str, np.ndarray] = {}
    with _one_blas_thread():
        put(graph.input, graph_input(graph, x))
        for n in graph.nodes:
            put(n.output, float_op(n, [env[t] for t in n.inputs]))
    return env
