"""Shape inference on the IR: every tensor's shape from the input's, op by op (:data:`SHAPES`),
without running anything -- what the cost model and calibration need to know about a graph.

Shapes are tuples with the batch axis first; :func:`infer_shapes` takes the batch size and
replaces symbolic sample dimensions of the input (``"N"``, ``None``) by 1. Import runs the same
rules at batch 1 while it builds the graph (``hwsim.graph.onnx_import``), so a rule that raises
is an import error naming the node.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hwsim.datapath import conv_output_size
from hwsim.graph.ir import Graph, Node, Op


def _conv(n: Node, ins: list[tuple]) -> tuple:
    N, _, H, W = ins[0]
    a = n.attrs
    (kh, kw), (sh, sw), (dh, dw) = n.weight.shape[2:], a["strides"], a["dilations"]
    pt, pl, pb, pr = a["pads"]
    return (
        N,
        n.weight.shape[0],
        conv_output_size(H, kh, sh, pt, pb, dh),
        conv_output_size(W, kw, sw, pl, pr, dw),
    )


def _pool(n: Node, ins: list[tuple]) -> tuple:
    N, C, H, W = ins[0]
    a = n.attrs
    (kh, kw), (sh, sw) = a["kernel"], a["strides"]
    pt, pl, pb, pr = a["pads"]
    return N, C, conv_output_size(H, kh, sh, pt, pb, 1), conv_output_size(W, kw, sw, pl, pr, 1)


def _reshape(n: Node, ins: list[tuple]) -> tuple:
    """ONNX Reshape of a batch: 0 copies the input's dimension, -1 takes the rest, the batch
    axis stays (as :func:`hwsim.execute.arrays.reshape`)."""
    x = ins[0]
    tgt = [x[i] if (s == 0 and i < len(x)) else s for i, s in enumerate(n.attrs["shape"])]
    tgt[0] = x[0]
    if -1 in tgt:
        known = int(np.prod([d for d in tgt if d != -1]))
        tgt[tgt.index(-1)] = int(np.prod(x)) // known
    return tuple(int(d) for d in tgt)


def _concat(n: Node, ins: list[tuple]) -> tuple:
    """Along ``attrs["axis"]`` (1 in models imported before it was recorded); constant inputs
    (``attrs["consts"]``, a batch axis of 1) count with the batch size of the activations."""
    axis = n.attrs.get("axis", 1)
    shapes = list(ins)
    for i, c in n.attrs.get("consts", ()):
        shapes.insert(i, (ins[0][0],) + tuple(c.shape[1:]))
    for s in shapes:
        if len(s) != len(shapes[0]) or any(
            a != b for j, (a, b) in enumerate(zip(s, shapes[0], strict=True)) if j != axis
        ):
            raise ValueError(f"Concat on axis {axis} of shapes {shapes}")
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return tuple(out)


def _same(n: Node, ins: list[tuple]) -> tuple:
    return ins[0]


def _dense(n: Node, ins: list[tuple]) -> tuple:
    """``(N, O)``; on an N-d input (``attrs["nd"]``) over the last axis, ``(N, ..., O)``."""
    if n.attrs.get("nd"):
        return tuple(ins[0][:-1]) + (n.weight.shape[0],)
    return ins[0][0], n.weight.shape[0]


def _matmul(n: Node, ins: list[tuple]) -> tuple:
    a, b = ins
    if len(a) != len(b) or len(a) < 3 or a[-1] != b[-2]:
        raise ValueError(f"MatMul of {a} by {b}")
    lead = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return tuple(lead) + (a[-2], b[-1])


def _gather(n: Node, ins: list[tuple]) -> tuple:
    x, axis = ins[0], n.attrs["axis"]
    return tuple(x[:axis]) + tuple(np.shape(n.attrs["indices"])) + tuple(x[axis + 1 :])


def _slice(n: Node, ins: list[tuple]) -> tuple:
    out = list(ins[0])
    for axis, start, stop, step in n.attrs["slices"]:
        out[axis] = len(range(out[axis])[slice(start, stop, step)])
    return tuple(out)


def _resize(n: Node, ins: list[tuple]) -> tuple:
    """Each axis times its integer factor (``attrs["factors"]``, one per axis)."""
    return tuple(d * f for d, f in zip(ins[0], n.attrs["factors"], strict=True))


def _reduce_mean(n: Node, ins: list[tuple]) -> tuple:
    axes, keep = n.attrs["axes"], n.attrs["keepdims"]
    return tuple(1 if i in axes else d for i, d in enumerate(ins[0]) if keep or i not in axes)


def _binary(n: Node, ins: list[tuple]) -> tuple:
    """Two activations broadcast (numpy's rule); the batch axis must survive as axis 0."""
    out = tuple(np.broadcast_shapes(ins[0], ins[1]))
    if len(out) != len(ins[0]) and len(out) != len(ins[1]):
        raise ValueError(f"broadcasting {ins[0]} with {ins[1]} moves the batch axis")
    return out


def _with_const(n: Node, ins: list[tuple]) -> tuple:
    """An op with a constant broadcast against the input (the constant's batch axis is 1)."""
    c = np.shape(n.weight)
    if len(c) > 1:
        out = tuple(np.broadcast_shapes(ins[0], c))
        if out[0] != ins[0][0] or len(out) != len(ins[0]):
            raise ValueError(f"constant {c} broadcasts the input {ins[0]} to {out}")
        return out
    return ins[0]


SHAPES: dict[Op, Callable[[Node, list[tuple]], tuple]] = {
    Op.CONV: _conv,
    Op.DENSE: _dense,
    Op.RELU: _same,
    Op.CLIP: _same,
    Op.ADD: lambda n, ins: tuple(np.broadcast_shapes(ins[0], ins[1])),
    Op.MUL: _with_const,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GAP: lambda n, ins: tuple(ins[0][:2]) + (1,) * (len(ins[0]) - 2),
    Op.FLATTEN: lambda n, ins: (ins[0][0], int(np.prod(ins[0][1:]))),
    Op.RESHAPE: _reshape,
    Op.CONCAT: _concat,
    Op.SOFTMAX: _same,
    Op.IDENTITY: _same,
    Op.BATCHNORM: _same,
    Op.MATMUL: _matmul,
    Op.TRANSPOSE: lambda n, ins: tuple(ins[0][p] for p in n.attrs["perm"]),
    Op.GATHER: _gather,
    Op.EMBEDDING: lambda n, ins: tuple(ins[0]) + tuple(n.weight.shape[1:]),
    Op.SLICE: _slice,
    Op.LAYERNORM: _same,
    Op.GELU: _same,
    Op.SIGMOID: _same,
    Op.SILU: _same,
    Op.HARDSIGMOID: _same,
    Op.HARDSWISH: _same,
    Op.MUL_ACT: _binary,
    Op.ADD_CONST: _with_const,
    Op.DIV_CONST: _with_const,
    Op.REDUCE_MEAN: _reduce_mean,
    Op.RESIZE: _resize,
    Op.ERF: _same,
    Op.TANH: _same,
}
"""Op -> its output shape ``f(node, input shapes)``: one entry per op."""


def infer_shapes(graph: Graph, batch: int = 1) -> dict[str, tuple]:
    """Every tensor's shape for a batch of ``batch`` samples (symbolic sample dimensions of the
    input taken as 1)."""
    sample = tuple(d if isinstance(d, int) else 1 for d in graph.input_shape)
    shapes: dict[str, tuple] = {graph.input: (batch,) + sample}
    for n in graph.nodes:
        shapes[n.output] = tuple(int(d) for d in SHAPES[n.op](n, [shapes[t] for t in n.inputs]))
    return shapes
