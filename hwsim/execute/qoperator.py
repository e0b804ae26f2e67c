"""QOperator models (QLinearConv, QLinearMatMul, QGemm, ... as onnxruntime's quantizer writes
them): a node interpreter. Quantized ops run by :func:`hwsim.qops.run_node` (the datapath
underneath, dot products per ``isa``); the plain ONNX ops between them by their ONNX
definition, one function per op type (:data:`ONNX_OPS`): data movement and the shape
computations exporters write (Shape, Gather, Slice, Expand, ...) exactly; the float
non-linearities a transformer keeps between DequantizeLinear and QuantizeLinear (Erf, Tanh,
LayerNormalization, ReduceMean) as hwsim's float reference computes them
(:mod:`hwsim.execute.float`: float64, rounded once), which onnxruntime's MLAS approximations
match to float32 rounding, not bit for bit. Any other op of the default ONNX domain (e.g. the
float BatchNormalization and GlobalAveragePool that ``quantize_static`` leaves in a CNN exported
without pre-processing) runs as onnxruntime's own kernel, one single-node session per node
(:func:`_ort_node`), where onnxruntime's optimised graph runs that same op (its fusion plan,
:mod:`hwsim.graph.ort_plan`): a float Conv / MatMul / Add between a DequantizeLinear and a
QuantizeLinear, which onnxruntime fuses into an integer kernel, is refused, not run in float.
The report names the nodes onnxruntime ran."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import helper as oh
from onnx import numpy_helper

from hwsim import qops
from hwsim.data import input_dtype
from hwsim.errors import HwsimError
from hwsim.execute.arrays import max_pool, softmax
from hwsim.execute.float import gelu64, layernorm64
from hwsim.execute.integer import LayerStats
from hwsim.graph.ir import Node, Op


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


def _div(a: dict, ins: list) -> np.ndarray:
    """ONNX Div: true division of floats; of integers (shape arithmetic) C's truncation."""
    x, y = np.asarray(ins[0]), np.asarray(ins[1])
    if np.issubdtype(x.dtype, np.integer) and np.issubdtype(y.dtype, np.integer):
        q = np.abs(x) // np.abs(y)
        return (np.sign(x) * np.sign(y) * q).astype(np.result_type(x, y))
    return (x / y).astype(np.result_type(x, y))


def _shape(a: dict, ins: list) -> np.ndarray:
    dims = np.shape(ins[0])
    return np.asarray(dims[int(a.get("start", 0)) : a.get("end")], np.int64)


def _slice(a: dict, ins: list) -> np.ndarray:
    x = ins[0]
    starts, ends = np.ravel(ins[1]), np.ravel(ins[2])
    axes = np.ravel(ins[3]) if len(ins) > 3 and ins[3] is not None else range(len(starts))
    steps = np.ravel(ins[4]) if len(ins) > 4 and ins[4] is not None else [1] * len(starts)
    idx = [slice(None)] * x.ndim
    for ax, st, en, sp in zip(axes, starts, ends, steps, strict=True):
        # numpy's slice clamps out-of-range starts / ends as ONNX does (INT64_MAX: the end)
        idx[int(ax)] = slice(int(st), int(en), int(sp))
    return x[tuple(idx)]


def _split(a: dict, ins: list) -> list:
    x, axis = ins[0], int(a.get("axis", 0))
    if len(ins) > 1 and ins[1] is not None:
        sizes = [int(v) for v in np.ravel(ins[1])]
    elif "split" in a:
        sizes = [int(v) for v in a["split"]]
    else:
        n = int(a["num_outputs"])
        step = -(-x.shape[axis] // n)
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _constant_of_shape(a: dict, ins: list) -> np.ndarray:
    v = numpy_helper.to_array(a["value"]) if "value" in a else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in np.ravel(ins[0])), v.reshape(-1)[0], v.dtype)


def _axes(a: dict, ins: list):
    if "axes" in a:
        return tuple(int(v) for v in a["axes"])
    if len(ins) > 1 and ins[1] is not None and np.size(ins[1]):
        return tuple(int(v) for v in np.ravel(ins[1]))
    return None


def _reduce_mean(a: dict, ins: list) -> np.ndarray:
    x, axes = ins[0], _axes(a, ins)
    if axes is None and a.get("noop_with_empty_axes", 0):
        return x
    keep = bool(a.get("keepdims", 1))
    return np.asarray(np.asarray(x, np.float64).mean(axis=axes, keepdims=keep), x.dtype)


def _layernorm(a: dict, ins: list) -> np.ndarray:
    """LayerNormalization (opset 17) over the axes from ``axis`` on, as hwsim's float
    reference computes it (:func:`hwsim.execute.float.layernorm64`)."""
    x = ins[0]
    axis = int(a.get("axis", -1)) % x.ndim
    norm = x.shape[axis:]
    gamma, beta = (
        np.broadcast_to(np.asarray(ins[i], np.float32), norm)
        if len(ins) > i and ins[i] is not None
        else None
        for i in (1, 2)
    )
    node = Node(
        "ln",
        Op.LAYERNORM,
        ("x",),
        "y",
        {"axis": axis, "epsilon": a.get("epsilon", 1e-5)},
        weight=gamma,
        bias=beta,
    )
    return layernorm64(node, x)


def _f64(fn) -> Callable:
    """A float64 function of one float32 input, rounded once (hwsim's float reference)."""
    return lambda a, ins: np.asarray(fn(np.asarray(ins[0], np.float64)), ins[0].dtype)


def _erf(x):
    from scipy.special import erf

    return erf(x)


ONNX_OPS: dict[str, Callable[[dict, list], np.ndarray | list]] = {
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
    "Div": _div,
    "Shape": _shape,
    "Gather": lambda a, ins: np.take(
        ins[0], np.asarray(ins[1], np.int64), axis=int(a.get("axis", 0))
    ),
    "Slice": _slice,
    "Split": _split,
    "Expand": lambda a, ins: np.broadcast_to(
        ins[0], np.broadcast_shapes(np.shape(ins[0]), tuple(int(d) for d in np.ravel(ins[1])))
    ).copy(),
    "ConstantOfShape": _constant_of_shape,
    "Range": lambda a, ins: np.arange(ins[0], ins[1], ins[2]).astype(np.result_type(ins[0])),
    "Equal": lambda a, ins: np.equal(ins[0], ins[1]),
    "Where": lambda a, ins: np.where(ins[0], ins[1], ins[2]),
    "Erf": _f64(_erf),
    "Tanh": _f64(np.tanh),
    "Gelu": lambda a, ins: np.asarray(
        gelu64(
            np.asarray(ins[0], np.float64),
            "tanh" if a.get("approximate") in (b"tanh", "tanh") else "erf",
        ),
        ins[0].dtype,
    ),
    "LayerNormalization": _layernorm,
    "ReduceMean": _reduce_mean,
}
"""The plain ONNX ops that sit between QOperator nodes: op type -> ``f(attributes, inputs)``
(one output, or a list for Split), by their ONNX definition."""


_ORT_NODES: dict = {}
_ORT_NODES_MAX = 256


def _ort_node(model, node, ins: list, consts: set) -> list:
    """``node`` (default ONNX domain) run by onnxruntime on ``ins``: a model of this one node
    (constant inputs as initializers, the others as inputs with a free batch axis), at the
    model's opset, on one thread; sessions are cached by node, constant bytes and input types.
    ``consts``: the model's initializer names."""
    import hashlib

    import onnx

    from hwsim.runtime import cpu_session

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    h = hashlib.sha256(node.SerializeToString())
    h.update(str(opset).encode())
    for t, v in zip(node.input, ins, strict=True):
        a = np.asarray(v) if v is not None else None
        h.update(f"{t}|{None if a is None else (a.dtype.str, a.ndim)}|{t in consts}".encode())
        if t in consts and a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    key = h.hexdigest()
    sess = _ORT_NODES.get(key)
    if sess is None:
        inputs, inits = [], []
        for t, v in zip(node.input, ins, strict=True):
            if not t or v is None:
                continue
            a = np.asarray(v)
            if t in consts:
                inits.append(numpy_helper.from_array(a, t))
            else:
                et = oh.np_dtype_to_tensor_dtype(a.dtype)
                inputs.append(oh.make_tensor_value_info(t, et, [None] * a.ndim))
        g = oh.make_graph([node], "node", inputs, [], initializer=inits)
        g.output.extend(oh.make_empty_tensor_value_info(o) for o in node.output if o)
        m = oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)])
        m.ir_version = min(model.ir_version or 8, onnx.IR_VERSION)
        sess = cpu_session(m, threads=1, optimize=False)
        if len(_ORT_NODES) >= _ORT_NODES_MAX:
            _ORT_NODES.clear()
        _ORT_NODES[key] = sess
    feed = {
        t: np.asarray(v)
        for t, v in zip(node.input, ins, strict=True)
        if t and v is not None and t not in consts
    }
    return sess.run(None, feed)


_PLANS: dict = {}  # the plans of in-memory models, by the SHA-256 of their bytes


def _fused_plan(model, source: str, node):
    """onnxruntime's optimised graph of this model (:func:`hwsim.graph.ort_plan.load_plan`):
    which op it runs for each node. The file at ``source`` if there is one, else the model
    written to a temporary file."""
    import hashlib
    import os
    import tempfile

    from hwsim.graph.ort_plan import NoPlanError, load_plan

    try:
        if os.path.isfile(str(source)):
            return load_plan(source)  # cached per path and mtime
        data = model.SerializeToString()
        key = hashlib.sha256(data).hexdigest()
        if key not in _PLANS:  # once per model, not per batch
            with tempfile.TemporaryDirectory() as d:
                p = os.path.join(d, "model.onnx")
                with open(p, "wb") as f:
                    f.write(data)
                if len(_PLANS) >= 8:
                    _PLANS.clear()
                _PLANS[key] = load_plan(p)
        return _PLANS[key]
    except NoPlanError as e:
        raise HwsimError(
            f"{source}: node {node.name!r} ({node.op_type}) is not one of hwsim's QOperator "
            f"ops; such nodes run as onnxruntime's kernels, which needs onnxruntime to load "
            f"the model: {e}"
        ) from e


def run_qoperator_batch(
    model,
    x: np.ndarray,
    source: str = "<model>",
    isa="exact",
    stats: dict | None = None,
    keep: dict | None = None,
    ort_nodes: dict | None = None,
) -> np.ndarray:
    """Run a QOperator ONNX model on one batch, node by node: quantized ops by
    :func:`hwsim.qops.run_node` (the datapath underneath, dot products per ``isa``), plain ops
    by their ONNX definition, other default-domain ops by onnxruntime's kernel. ``stats``
    (node name -> :class:`LayerStats`) accumulates the datapath counters of the MAC nodes;
    ``keep`` receives every tensor by ONNX name; ``ort_nodes`` (node name -> op type) the
    nodes onnxruntime ran."""
    g = model.graph
    env = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    inits = set(env)
    inputs = [i for i in g.input if i.name not in inits]
    if len(inputs) != 1 or len(g.output) != 1:
        raise HwsimError(f"{source}: hwsim runs single-input single-output models")
    env[inputs[0].name] = np.asarray(x, input_dtype(inputs[0]))  # uint8 input: uint8 data
    supported = {(d or "", op) for d, op in qops.SUPPORTED}
    plan = None
    for node in g.node:
        a = {at.name: oh.get_attribute_value(at) for at in node.attribute}
        if node.op_type == "Constant":
            env[node.output[0]] = numpy_helper.to_array(a["value"])
            continue
        ins = [env[t] if t else None for t in node.input]
        dom = "" if node.domain in ("", "ai.onnx") else node.domain
        float_in = bool(ins) and ins[0] is not None and np.asarray(ins[0]).dtype.kind == "f"
        if (dom, node.op_type) in supported and not (node.op_type in ONNX_OPS and float_in):
            # (a MaxPool on float values, e.g. after a Relu left in float, is the ONNX op)
            with qops.collect_counters() as sink:
                outs = qops.run_node(node.op_type, node.domain, a, ins, isa=isa)
            if stats is not None and sink:
                st = stats.setdefault(node.name or node.output[0], (node.op_type, LayerStats()))
                for c in sink:
                    st[1].add(c)
        elif dom == "" and node.op_type in ONNX_OPS:
            r = ONNX_OPS[node.op_type](a, ins)
            outs = list(r) if isinstance(r, list) else [r]
        elif dom == "":
            if plan is None:
                plan = _fused_plan(model, source, node)
            kernel = plan.kernel(node.name) if node.name else None
            if kernel != node.op_type:
                raise HwsimError(
                    f"{source}: node {node.name!r} ({node.op_type}) runs in onnxruntime as "
                    f"{kernel or 'part of a fused node'} (its QDQ fusion of the DequantizeLinear"
                    " / QuantizeLinear around it), which hwsim's QOperator interpreter does not "
                    "emulate; quantize the whole model in one format (all QDQ, which hwsim "
                    "imports with onnxruntime's fusion plan, or all QOperator)"
                )
            try:
                outs = _ort_node(model, node, ins, inits)
            except Exception as e:  # onnxruntime's own message: the op, the types it wants
                raise HwsimError(
                    f"{source}: node {node.name!r} ({node.op_type}) is not one of hwsim's "
                    f"QOperator ops and onnxruntime could not run it alone: {e}"
                ) from e
            if ort_nodes is not None:
                ort_nodes[node.name or node.output[0]] = node.op_type
        else:
            raise HwsimError(
                f"{source}: node {node.name!r} ({node.domain + '.' if node.domain else ''}"
                f"{node.op_type}) is not supported in QOperator models; supported: "
                f"{', '.join(sorted({op for _, op in supported} | set(ONNX_OPS)))}"
            )
        for name, v in zip(node.output, outs, strict=False):
            if name:
                env[name] = v
    if keep is not None:
        keep.update(env)
    return np.asarray(env[g.output[0].name])
