"""The float reference through onnxruntime: the IR's float graph written as one ONNX model
(:func:`float_model`, one writer per op in :data:`ORT_WRITERS`) and run in one session
(:class:`OrtFloat`), every tensor the report compares exposed as a graph output.

It computes what :func:`hwsim.execute.run_float` computes, op for op: the same float32
parameters (``Node.weight`` / ``Node.bias``, never re-quantized), the same attributes, an
imported QDQ model's clamps (``Graph.float_ranges``) as ``Clip`` nodes after the clamped
tensors, a concat's per-sample constants ``Expand``-ed to the batch. Where ``run_float`` computes
in float64 and rounds once (LayerNorm, ReduceMean, Sigmoid, SiLU, Tanh, tanh-form GELU), the
model does too (``Cast`` to double, the op, ``Cast`` back); Erf and erf-form GELU, which
onnxruntime has only in float32, run as its float32 kernels. The results agree with
``run_float`` to float32 rounding, not bit for bit: onnxruntime's convolutions, GEMMs and
reductions sum in another order and its exp / erf are MLAS approximations
(``tests/execute/test_float_ort.py`` measures the difference on every op and on whole models).

Deterministic (measured, onnxruntime 1.32 on x86, ``tests/execute/test_float_ort.py``): a
sample's values do not depend on the thread count or on the batch it runs in, so the report's
statistics do not depend on ``batch_size``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwsim.errors import HwsimError
from hwsim.execute.arrays import graph_input
from hwsim.graph.ir import Graph, Node, Op
from hwsim.graph.shapes import infer_shapes

_F32 = np.float32
_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
OPSET = 21


class _Model:
    """The ONNX float model of one graph under construction: nodes, initializers, and the name
    each IR tensor is read under (past its float-range ``Clip``, if any)."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.shapes = infer_shapes(graph)
        self.ranks = {t: len(s) for t, s in self.shapes.items()}
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.made: set[str] = set()
        self.read: dict[str, str] = {}  # IR tensor -> the ONNX name its readers read

    def fresh(self, hint: str) -> str:
        """A tensor name no IR tensor and no other helper has."""
        name = f"hwsim_ref/{hint}"
        k = 0
        while name in self.made:
            k += 1
            name = f"hwsim_ref/{hint}_{k}"
        self.made.add(name)
        return name

    def const(self, hint: str, arr) -> str:
        name = self.fresh(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(self, op_type: str, ins: list[str], out: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        return out

    def tmp(self, op_type: str, ins: list[str], hint: str, **attrs) -> str:
        return self.add(op_type, ins, self.fresh(hint), **attrs)

    def in64(self, op_type: str, x: str, out: str, extra=(), **attrs) -> str:
        """``op_type`` in float64: ``Cast(op(Cast(x, double), extra...), float)`` -- a float64
        formula rounded once to float32, as :mod:`hwsim.execute.float` computes it."""
        x64 = self.tmp("Cast", [x], f"{out}/f64_in", to=TensorProto.DOUBLE)
        y64 = self.tmp(op_type, [x64, *extra], f"{out}/f64", **attrs)
        return self.add("Cast", [y64], out, to=TensorProto.FLOAT)

    def batch_shape(self, rank: int) -> str:
        """The int64 vector ``[N, 1, ..., 1]`` (``N`` from the input's Shape)."""
        key = f"batch_shape_{rank}"
        if key not in self.read:
            n = self.tmp("Shape", [self.g.input], "batch", end=1)
            ones = self.const(f"ones_{rank}", np.ones(rank - 1, np.int64))
            self.read[key] = self.tmp("Concat", [n, ones], key, axis=0)
        return self.read[key]

    def clamp(self, t: str, src: str) -> None:
        """IR tensor ``t`` (computed as ONNX ``src``) clamped to its float range, if any."""
        r = self.g.float_ranges.get(t)
        if r is None:
            self.read[t] = src
            return
        lo = self.const(f"{t}/lo", _F32(r[0]))
        hi = self.const(f"{t}/hi", _F32(r[1]))
        self.read[t] = self.add("Clip", [src, lo, hi], t if src != t else self.fresh(t))


_Write = Callable[[_Model, Node, list, str], None]


def _onnx_op(op_type: str, **fixed) -> _Write:
    def write(m: _Model, n: Node, ins: list, out: str) -> None:
        m.add(op_type, ins, out, **fixed)

    return write


def _attr_op(op_type: str, **attrs: Callable[[dict], object]) -> _Write:
    def write(m: _Model, n: Node, ins: list, out: str) -> None:
        m.add(op_type, ins, out, **{k: f(n.attrs) for k, f in attrs.items()})

    return write


def _const_op(op_type: str) -> _Write:
    """``op_type(x, Node.weight)`` (the constant right-aligned, as numpy broadcasts it)."""

    def write(m: _Model, n: Node, ins: list, out: str) -> None:
        m.add(op_type, [ins[0], m.const(f"{n.name}/c", n.weight.astype(_F32))], out)

    return write


def _f64_op(op_type: str, **attrs: Callable[[dict], object]) -> _Write:
    def write(m: _Model, n: Node, ins: list, out: str) -> None:
        m.in64(op_type, ins[0], out, **{k: f(n.attrs) for k, f in attrs.items()})

    return write


def _conv(m: _Model, n: Node, ins: list, out: str) -> None:
    a = n.attrs
    args = [ins[0], m.const(f"{n.name}/w", n.weight.astype(_F32))]
    if n.bias is not None:
        args.append(m.const(f"{n.name}/b", n.bias.astype(_F32)))
    m.add(
        "Conv",
        args,
        out,
        kernel_shape=list(n.weight.shape[2:]),
        strides=list(a["strides"]),
        pads=list(a["pads"]),
        dilations=list(a["dilations"]),
        group=int(a["group"]),
    )


def _dense(m: _Model, n: Node, ins: list, out: str) -> None:
    """``x @ W.T + b`` over the flattened sample, or (``attrs["nd"]``) over the last axis."""
    w = m.const(f"{n.name}/wT", np.ascontiguousarray(n.weight.astype(_F32).T))
    x = ins[0]
    if not n.attrs.get("nd") and m.ranks[n.inputs[0]] != 2:
        x = m.tmp("Flatten", [x], f"{n.name}/flat", axis=1)
    if n.bias is None:
        m.add("MatMul", [x, w], out)
        return
    y = m.tmp("MatMul", [x, w], f"{n.name}/matmul")
    m.add("Add", [y, m.const(f"{n.name}/b", n.bias.astype(_F32))], out)


def _mul(m: _Model, n: Node, ins: list, out: str) -> None:
    c = n.weight.astype(_F32)
    if c.ndim == 1:  # per channel (axis 1)
        c = c.reshape((1, -1) + (1,) * (m.ranks[n.inputs[0]] - 2))
    m.add("Mul", [ins[0], m.const(f"{n.name}/c", c)], out)


def _pool(m: _Model, n: Node, ins: list, out: str) -> None:
    a = n.attrs
    kw = dict(kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=list(a["pads"]))
    if n.op is Op.AVGPOOL:
        kw["count_include_pad"] = int(a["count_include_pad"])
    m.add("MaxPool" if n.op is Op.MAXPOOL else "AveragePool", ins, out, **kw)


def _clip(m: _Model, n: Node, ins: list, out: str) -> None:
    lo = m.const(f"{n.name}/min", _F32(n.attrs["min"]))
    hi = m.const(f"{n.name}/max", _F32(n.attrs["max"]))
    m.add("Clip", [ins[0], lo, hi], out)


def _reshape(m: _Model, n: Node, ins: list, out: str) -> None:
    """The batch axis kept (ONNX's 0: copy the input's dimension), as ``arrays.reshape``."""
    shape = [int(s) for s in n.attrs["shape"]]
    shape[0] = 0
    m.add("Reshape", [ins[0], m.const(f"{n.name}/shape", np.asarray(shape, np.int64))], out)


def _gather(m: _Model, n: Node, ins: list, out: str) -> None:
    idx = m.const(f"{n.name}/indices", np.asarray(n.attrs["indices"], np.int64))
    m.add("Gather", [ins[0], idx], out, axis=int(n.attrs["axis"]))


def _embedding(m: _Model, n: Node, ins: list, out: str) -> None:
    table = m.const(f"{n.name}/table", n.weight.astype(_F32))
    m.add("Gather", [table, ins[0]], out, axis=0)


def _slice(m: _Model, n: Node, ins: list, out: str) -> None:
    """Python slices as ONNX's: a missing start / stop is the end the step runs from / to."""
    sl = n.attrs["slices"]
    starts = [(0 if p > 0 else _INT64_MAX) if s is None else s for _, s, _, p in sl]
    stops = [(_INT64_MAX if p > 0 else _INT64_MIN) if e is None else e for _, _, e, p in sl]

    def col(name, v):
        return m.const(f"{n.name}/{name}", np.asarray(v, np.int64).reshape(len(sl)))

    axes, steps = [s[0] for s in sl], [s[3] for s in sl]
    args = [col("starts", starts), col("ends", stops), col("axes", axes), col("steps", steps)]
    m.add("Slice", [ins[0], *args], out)


def _concat(m: _Model, n: Node, ins: list, out: str) -> None:
    args = list(ins)
    for i, c in n.attrs.get("consts", ()):  # in input order: each index is its final place
        c = np.asarray(c, _F32)
        value = m.const(f"{n.name}/const{i}", c)
        args.insert(i, m.tmp("Expand", [value, m.batch_shape(c.ndim)], f"{n.name}/expand{i}"))
    m.add("Concat", args, out, axis=int(n.attrs.get("axis", 1)))


def _batchnorm(m: _Model, n: Node, ins: list, out: str) -> None:
    a = n.attrs
    ps = [m.const(f"{n.name}/{k}", np.asarray(a[k], _F32)) for k in ("gamma", "beta", "mean")]
    var = m.const(f"{n.name}/var", np.asarray(a["var"], _F32))
    m.add("BatchNormalization", [ins[0], *ps, var], out, epsilon=float(a["epsilon"]))


def _layernorm(m: _Model, n: Node, ins: list, out: str) -> None:
    """In float64 (``layernorm64``): gamma / beta as float64, epsilon the float32 value."""
    axis = int(n.attrs["axis"])
    shape = m.shapes[n.inputs[0]][axis:]
    gamma = n.weight if n.weight is not None else np.ones(shape, _F32)
    args = [m.const(f"{n.name}/gamma", gamma.astype(_F32).astype(np.float64))]
    if n.bias is not None:
        args.append(m.const(f"{n.name}/beta", n.bias.astype(_F32).astype(np.float64)))
    eps = float(_F32(n.attrs["epsilon"]))
    m.in64("LayerNormalization", ins[0], out, args, axis=axis, epsilon=eps)


def _gelu(m: _Model, n: Node, ins: list, out: str) -> None:
    """``tanh``: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`` in float64 op by op,
    as ``gelu64``; ``erf``: onnxruntime's float32 Gelu (it has no float64 Erf)."""
    if n.attrs["form"] != "tanh":
        m.add("Gelu", ins, out, approximate="none")
        return
    x = m.tmp("Cast", [ins[0]], f"{out}/f64_in", to=TensorProto.DOUBLE)

    def c(name, v):
        return m.const(f"{out}/{name}", np.float64(v))

    x3 = m.tmp("Pow", [x, c("three", 3.0)], f"{out}/x3")
    inner = m.tmp("Add", [x, m.tmp("Mul", [c("k", 0.044715), x3], f"{out}/kx3")], f"{out}/in")
    arg = m.tmp("Mul", [c("s", np.sqrt(2.0 / np.pi)), inner], f"{out}/arg")
    one_t = m.tmp("Add", [c("one", 1.0), m.tmp("Tanh", [arg], f"{out}/tanh")], f"{out}/1+t")
    half_x = m.tmp("Mul", [c("half", 0.5), x], f"{out}/half_x")
    y = m.tmp("Mul", [half_x, one_t], f"{out}/f64")
    m.add("Cast", [y], out, to=TensorProto.FLOAT)


def _sigmoid64(m: _Model, x64: str, hint: str) -> str:
    """``1 / (1 + exp(-x))`` on a float64 tensor, the formula of ``hwsim.execute.float``
    (onnxruntime's float64 Sigmoid loses the relative accuracy of tiny results)."""
    e = m.tmp("Exp", [m.tmp("Neg", [x64], f"{hint}/neg")], f"{hint}/exp")
    one = m.const(f"{hint}/one", np.float64(1.0))
    return m.tmp("Div", [one, m.tmp("Add", [one, e], f"{hint}/denominator")], f"{hint}/sigmoid")


def _sigmoid(m: _Model, n: Node, ins: list, out: str) -> None:
    x64 = m.tmp("Cast", [ins[0]], f"{out}/f64_in", to=TensorProto.DOUBLE)
    m.add("Cast", [_sigmoid64(m, x64, out)], out, to=TensorProto.FLOAT)


def _silu(m: _Model, n: Node, ins: list, out: str) -> None:
    """``x * sigmoid(x)`` in float64, rounded once."""
    x64 = m.tmp("Cast", [ins[0]], f"{out}/f64_in", to=TensorProto.DOUBLE)
    y = m.tmp("Mul", [x64, _sigmoid64(m, x64, out)], f"{out}/f64")
    m.add("Cast", [y], out, to=TensorProto.FLOAT)


def _hard_sigmoid(m: _Model, n: Node, x: str, out: str) -> str:
    """``clip(f32(alpha) * x + f32(beta), 0, 1)`` with two float32 roundings (no FMA), as
    ``hwsim.execute.float._hard_sigmoid``."""
    a = m.const(f"{n.name}/alpha", _F32(n.attrs["alpha"]))
    b = m.const(f"{n.name}/beta", _F32(n.attrs["beta"]))
    ax = m.tmp("Mul", [x, a], f"{n.name}/ax")
    axb = m.tmp("Add", [ax, b], f"{n.name}/axb")
    lo, hi = m.const(f"{n.name}/zero", _F32(0)), m.const(f"{n.name}/one", _F32(1))
    return m.add("Clip", [axb, lo, hi], out)


def _hardsigmoid(m: _Model, n: Node, ins: list, out: str) -> None:
    _hard_sigmoid(m, n, ins[0], out)


def _hardswish(m: _Model, n: Node, ins: list, out: str) -> None:
    gate = _hard_sigmoid(m, n, ins[0], m.fresh(f"{n.name}/gate"))
    m.add("Mul", [ins[0], gate], out)


def _reduce_mean(m: _Model, n: Node, ins: list, out: str) -> None:
    axes = m.const(f"{n.name}/axes", np.asarray(n.attrs["axes"], np.int64))
    m.in64("ReduceMean", ins[0], out, [axes], keepdims=int(n.attrs["keepdims"]))


def _resize(m: _Model, n: Node, ins: list, out: str) -> None:
    """Nearest upsampling by integer factors: ``Resize`` (``asymmetric`` / ``floor``)
    repeats each entry ``factor`` times along each axis, as ``np.repeat``."""
    scales = m.const(f"{n.name}/scales", np.asarray(n.attrs["factors"], _F32))
    m.add(
        "Resize",
        [ins[0], "", scales],
        out,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


ORT_WRITERS: dict[Op, _Write] = {
    Op.CONV: _conv,
    Op.DENSE: _dense,
    Op.RELU: _onnx_op("Relu"),
    Op.CLIP: _clip,
    Op.ADD: _onnx_op("Add"),
    Op.MUL: _mul,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GAP: _onnx_op("GlobalAveragePool"),
    Op.FLATTEN: _onnx_op("Flatten", axis=1),
    Op.RESHAPE: _reshape,
    Op.CONCAT: _concat,
    Op.SOFTMAX: _attr_op("Softmax", axis=lambda a: int(a["axis"])),
    Op.IDENTITY: _onnx_op("Identity"),
    Op.BATCHNORM: _batchnorm,
    Op.MATMUL: _onnx_op("MatMul"),
    Op.TRANSPOSE: _attr_op("Transpose", perm=lambda a: [int(v) for v in a["perm"]]),
    Op.GATHER: _gather,
    Op.EMBEDDING: _embedding,
    Op.SLICE: _slice,
    Op.LAYERNORM: _layernorm,
    Op.GELU: _gelu,
    Op.SIGMOID: _sigmoid,
    Op.SILU: _silu,
    Op.HARDSIGMOID: _hardsigmoid,
    Op.HARDSWISH: _hardswish,
    Op.MUL_ACT: _onnx_op("Mul"),
    Op.ADD_CONST: _const_op("Add"),
    Op.DIV_CONST: _const_op("Div"),
    Op.REDUCE_MEAN: _reduce_mean,
    Op.RESIZE: _resize,
    Op.ERF: _onnx_op("Erf"),
    Op.TANH: _f64_op("Tanh"),
}
"""IR op -> its writer ``write(model, node, input names, output name)``: the ONNX nodes that
compute what :data:`hwsim.execute.FLOAT_OPS` computes for that op."""


def unsupported(graph: Graph) -> str | None:
    """Why ``graph``'s float reference cannot run through onnxruntime (an op without a
    writer), or None."""
    missing = sorted({n.op.value for n in graph.nodes if n.op not in ORT_WRITERS})
    return f"no onnxruntime form for op(s) {', '.join(missing)}" if missing else None


def float_model(graph: Graph, outputs: list[str]) -> onnx.ModelProto:
    """The ONNX model of ``graph``'s float reference with the IR tensors ``outputs`` (node
    outputs, under their IR names) as its graph outputs, in that order."""
    why = unsupported(graph)
    if why:
        raise HwsimError(f"{graph.source}: {why}")
    m = _Model(graph)
    m.made.update([graph.input, *(n.output for n in graph.nodes)])
    m.clamp(graph.input, graph.input)
    for n in graph.nodes:
        ins = [m.read[t] for t in n.inputs]
        out = n.output if n.output not in graph.float_ranges else m.fresh(f"{n.output}/raw")
        ORT_WRITERS[n.op](m, n, ins, out)
        m.clamp(n.output, out)
    outs = []
    for t in outputs:
        if m.read[t] != t:  # a clamped tensor: the Clip wrote another name
            m.add("Identity", [m.read[t]], t)
        outs.append(helper.make_tensor_value_info(t, TensorProto.FLOAT, None))
    shape = ["batch"] + [d if isinstance(d, int) else None for d in graph.input_shape]
    dtype = helper.np_dtype_to_tensor_dtype(np.dtype(graph.input_dtype))
    inputs = [helper.make_tensor_value_info(graph.input, dtype, shape)]
    g = helper.make_graph(m.nodes, f"{graph.name}_float_reference", inputs, outs, m.inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 10
    return model


class OrtFloat:
    """One onnxruntime session computing ``graph``'s float reference, the IR tensors
    ``outputs`` returned by :meth:`run`. Threads: Numba's (``numba.get_num_threads()``), no
    spin-waiting after a run (the integer run's kernels need the cores)."""

    def __init__(self, graph: Graph, outputs: list[str], threads: int | None = None):
        import numba

        from hwsim.runtime import cpu_session

        self.graph = graph
        self.outputs = list(dict.fromkeys(outputs))
        model = float_model(graph, self.outputs)
        self.session = cpu_session(model, threads=threads or numba.get_num_threads())
        self._embeddings = [
            n for n in graph.nodes if n.op is Op.EMBEDDING and n.inputs[0] == graph.input
        ]

    def run(self, x) -> dict[str, np.ndarray]:
        """The float reference of one batch: ``{tensor: float32 array}`` over ``outputs``.
        The input is taken as :func:`hwsim.execute.run_float` takes it (float32, or checked
        integer ids); ids outside an embedding's table raise as there."""
        x = graph_input(self.graph, x)
        for n in self._embeddings:
            v = n.weight.shape[0]
            if x.size and (x.min() < -v or x.max() >= v):
                raise HwsimError(
                    f"node {n.name!r} (embedding): token ids outside [{-v}, {v}) of the "
                    f"{v}-row table"
                )
        ys = self.session.run(self.outputs, {self.graph.input: x})
        return dict(zip(self.outputs, ys, strict=True))
