"""QOperator models (QLinearConv, QLinearMatMul, QGemm, ... as onnxruntime's quantizer writes
them): a node interpreter. Quantized ops run by :func:`hwsim.qops.run_node` (the datapath
underneath, dot products per ``isa``); the plain ONNX ops between them by their ONNX
definition, one function per op type (:data:`ONNX_OPS`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper as oh
from onnx import numpy_helper

from hwsim import qops
from hwsim.data import input_dtype
from hwsim.errors import HwsimError
from hwsim.execute.arrays import max_pool, softmax
from hwsim.execute.integer import LayerStats


def _flatten(a: dict, ins: list) -> np.ndarray:
    x, ax = ins[0], int(a.get("axis", 1))
    return x.reshape(int(np.prod(x.shape[:ax])), -1)


def _reshape(a: dict, ins: list) -> np.ndarray:
    x = ins[0]
    shape = [
        x.shape[i] if (s == 0 and not a.get("allowzero", 0)) else int(s)
        for i, s in enumerate(ins[1])
    ]
    return x.reshape(shape)


def _binary(f) -> Callable:
    return lambda a, ins: f(ins[0], ins[1]).astype(np.result_type(ins[0], ins[1]))


def _maxpool(a: dict, ins: list) -> np.ndarray:
    x = ins[0]
    lo = np.iinfo(x.dtype).min if np.issubdtype(x.dtype, np.integer) else -np.inf
    return max_pool(
        x,
        tuple(a["kernel_shape"]),
        tuple(a.get("strides", (1, 1))),
        tuple(a.get("pads", (0, 0, 0, 0))),
        lo,
    )


def _squeeze(a: dict, ins: list) -> np.ndarray:
    axes = tuple(int(v) for v in ins[1]) if len(ins) > 1 and ins[1] is not None else None
    return np.squeeze(ins[0], axis=axes)


ONNX_OPS: dict[str, Callable[[dict, list], np.ndarray]] = {
    "Flatten": _flatten,
    "Reshape": _reshape,
    "Relu": lambda a, ins: np.maximum(ins[0], 0).astype(ins[0].dtype),
    "Cast": lambda a, ins: ins[0].astype(oh.tensor_dtype_to_np_dtype(a["to"])),
    "Add": _binary(np.add),
    "Mul": _binary(np.multiply),
    "Sub": _binary(np.subtract),
    "Softmax": lambda a, ins: softmax(ins[0], int(a.get("axis", -1))),
    "MaxPool": _maxpool,
    "Identity": lambda a, ins: ins[0],
    "Transpose": lambda a, ins: np.transpose(ins[0], a.get("perm")),
    "Squeeze": _squeeze,
    "Unsqueeze": lambda a, ins: np.expand_dims(ins[0], tuple(int(v) for v in ins[1])),
    "Concat": lambda a, ins: np.concatenate(ins, axis=int(a["axis"])),
}
"""The plain ONNX ops that sit between QOperator nodes: op type -> ``f(attributes, inputs)``,
by their ONNX definition."""


def run_qoperator_batch(
    model, x: np.ndarray, source: str = "<model>", isa="exact", stats: dict | None = None
) -> np.ndarray:
    """Run a QOperator ONNX model on one batch, node by node: quantized ops by
    :func:`hwsim.qops.run_node` (the datapath underneath, dot products per ``isa``), plain ops
    by their ONNX definition. ``stats`` (node name -> :class:`LayerStats`) accumulates the
    datapath counters of the MAC nodes."""
    g = model.graph
    env = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inits = set(env)
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise HwsimError(f"{source}: hwsim runs single-input single-output models")
    env[inputs[0].name] = np.asarray(x, input_dtype(inputs[0]))  # uint8 input: uint8 data
    supported = {op for _, op in qops.SUPPORTED}
    for node in g.node:
        a = {at.name: oh.get_attribute_value(at) for at in node.attribute}
        if node.op_type == "Constant":
            env[node.output[0]] = numpy_helper.to_array(a["value"])
            continue
        ins = [env[t] if t else None for t in node.input]
        if node.op_type in supported:
            with qops.collect_counters() as sink:
                outs = qops.run_node(node.op_type, node.domain, a, ins, isa=isa)
            if stats is not None and sink:
                st = stats.setdefault(node.name or node.output[0], (node.op_type, LayerStats()))
                for c in sink:
                    st[1].add(c)
        elif node.domain in ("", "ai.onnx") and node.op_type in ONNX_OPS:
            outs = [ONNX_OPS[node.op_type](a, ins)]
        else:
            raise HwsimError(
                f"{source}: node {node.name!r} ({node.domain + '.' if node.domain else ''}"
                f"{node.op_type}) is not supported in QOperator models; supported: "
                f"{', '.join(sorted(supported | set(ONNX_OPS)))}"
            )
        for name, v in zip(node.output, outs, strict=False):
            if name:
                env[name] = v
    return np.asarray(env[g.output[0].name])
