"""Shape inference on the IR: every tensor's shape from the input's, op by op (:data:`SHAPES`),
without running anything -- what the cost model and calibration need to know about a graph.

Shapes are tuples with the batch axis first; :func:`infer_shapes` takes the batch size and
replaces symbolic sample dimensions of the input (``"N"``, ``None``) by 1.
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
    return (ins[0][0], sum(s[1] for s in ins)) + tuple(ins[0][2:])


def _same(n: Node, ins: list[tuple]) -> tuple:
    return ins[0]


SHAPES: dict[Op, Callable[[Node, list[tuple]], tuple]] = {
    Op.CONV: _conv,
    Op.DENSE: lambda n, ins: (ins[0][0], n.weight.shape[0]),
    Op.RELU: _same,
    Op.CLIP: _same,
    Op.ADD: lambda n, ins: tuple(np.broadcast_shapes(ins[0], ins[1])),
    Op.MUL: _same,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GAP: lambda n, ins: tuple(ins[0][:2]) + (1,) * (len(ins[0]) - 2),
    Op.FLATTEN: lambda n, ins: (ins[0][0], int(np.prod(ins[0][1:]))),
    Op.RESHAPE: _reshape,
    Op.CONCAT: _concat,
    Op.SOFTMAX: _same,
    Op.IDENTITY: _same,
    Op.BATCHNORM: _same,
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
