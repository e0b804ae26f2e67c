"""ONNX -> IR import: float models, QDQ models, and hwsim-quantized models.

Float models: the ops in ``SUPPORTED``; BatchNormalization is folded into the Conv before it;
Gemm/MatMul with a constant weight become ``Op.DENSE``; Add/Mul by a constant fold into the
conv/dense before them where that layer has no other consumer. An op or attribute outside this
set is a :class:`ModelImportError` naming the file, the node, its op type and the supported
list. Ops are dispatched through one table, ``_OPS``: (domain, op type) -> handler.

Before the table runs, :mod:`hwsim.graph.fold` folds the shape subgraphs exporters write for a
dynamic batch size (and every other computation on constants) with the batch kept symbolic, and
fuses the GELU / SiLU / HardSwish / LayerNormalization patterns into one node each. While
importing, every tensor's shape at batch 1 is known (``_Importer.shapes``, the IR's shape
rules), which the handlers of the shape-dependent ops use (Squeeze, Unsqueeze, Slice, negative
axes, the rank a constant is broadcast to) -- and to reject a model that moves, merges, slices or
gathers the batch axis, which hwsim keeps as axis 0 of every tensor.

QDQ models (``onnxruntime.quantization.quantize_static`` with ``QuantFormat.QDQ``):
``DequantizeLinear`` of a constant becomes a layer's integer weights (``Node.wq``; per axis on
the output channels: axis 0 of a Conv / Gemm weight, axis 1 of a MatMul's ``(K, N)``) or int32
bias (``Node.bias_q``), elsewhere (a Linear's bias the quantizer stored as an Add's quantized
input, an embedding table, a LayerNorm weight) the constant it dequantizes to; a
``QuantizeLinear -> DequantizeLinear`` pair on an activation becomes ``Graph.act_quant[tensor]``,
one on a constant (a GELU's 0.5 and 1.0, a class token) the constant ``DQ(Q(c))`` onnxruntime's
float ops read (Identity and Gather of constants fold too); the Q/DQ nodes themselves disappear.
The quantizer puts a Q/DQ pair between the nodes of a GELU, so it does not fuse: its Erf / Tanh
import as ops of their own (in QDQ models only), the rest as the usual elementwise ops.
hwsim-quantized models are QDQ models with hwsim's settings in the ``hwsim`` metadata entry
(see :mod:`hwsim.quant.store`).

Dynamically quantized models (``onnxruntime.quantization.quantize_dynamic``): each chain
``DynamicQuantizeLinear(x) -> MatMulInteger(x_q, w_q, x_zp, w_zp) -> Cast(float) ->
Mul(., Mul(x_scale, w_scale)) [-> Add(bias)]`` becomes one ``Op.DENSE`` (``ConvInteger``: one
``Op.CONV``, per-tensor weights) with the integer weights in ``Node.wq`` (per channel on the
output channels), the float ``bias`` and ``attrs["ort_dynamic"]``: float in, float out,
run as onnxruntime runs it by :mod:`hwsim.execute.dynamic`; a BatchNormalization after one
stays a float ``Op.BATCHNORM``. A quantized embedding (``Gather`` of an integer table, then
``DequantizeLinear``) becomes an ``Op.EMBEDDING`` of the float32 table DequantizeLinear gives.
Another use of a ``DynamicQuantizeLinear`` output is a ModelImportError naming the node and the
chain expected (:meth:`_Importer.dynamic_quantize_linear`).

Models made of QOperator ops (QLinearConv, ConvInteger, ...) are not turned into the IR; they are
run node by node by :func:`hwsim.execute.run_qoperator_batch` -- :func:`is_qoperator` tells them
apart (a dynamically quantized model is not one).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hwsim.data import input_dtype
from hwsim.errors import HwsimError
from hwsim.graph import qonnx
from hwsim.graph.fold import FUSED_DOMAIN, FoldError, fold_shapes, fuse
from hwsim.graph.ir import Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.shapes import SHAPES
from hwsim.numerics import IntFormat
from hwsim.numerics.affine import quantize

ONNX_DOMAINS = ("", "ai.onnx")
"""The default ONNX operator domain's two spellings (``_OPS`` keys use ``""``)."""
QONNX_DOMAIN = "qonnx.custom_op.general"
QOPERATOR = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
_DYNAMIC_MACS = {"MatMulInteger": "dense", "ConvInteger": "conv"}
"""The integer MACs of a dynamically quantized model and the IR op each chain becomes."""
DYNAMIC_CHAIN = (
    "DynamicQuantizeLinear(x) -> MatMulInteger or ConvInteger(x_q, w_q, x_zero_point, "
    "w_zero_point) -> Cast(to=FLOAT) -> Mul(., Mul(x_scale, w_scale)) [-> Add(., bias)], "
    "w_q / w_zero_point int8 or uint8 constants, w_scale a float32 constant"
)
"""The chain ``quantize_dynamic`` writes for a layer, as import errors name it."""

_ONNX_INT = {
    onnx.TensorProto.INT8: IntFormat(8, True),
    onnx.TensorProto.UINT8: IntFormat(8, False),
    onnx.TensorProto.INT16: IntFormat(16, True),
    onnx.TensorProto.UINT16: IntFormat(16, False),
    onnx.TensorProto.INT4: IntFormat(4, True),
    onnx.TensorProto.UINT4: IntFormat(4, False),
}


class ModelImportError(HwsimError):
    """A model hwsim cannot import; the message names the file, node and what was expected."""


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file; a missing, truncated or invalid file is a
    ModelImportError."""
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError and friends
        raise ModelImportError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {e}"
        ) from e
    if not model.graph.node:
        raise ModelImportError(f"{path}: not an ONNX model (the graph has no nodes)")
    try:
        onnx.checker.check_model(model)
    except Exception as e:
        raise ModelImportError(f"{path}: invalid ONNX model: {e}") from e
    return model


def is_qoperator(model: onnx.ModelProto) -> bool:
    """True if the graph uses QOperator ops (run by the node interpreter, not the IR); a
    dynamically quantized model (:func:`is_dynamic`) is imported into the IR instead."""
    return not is_dynamic(model) and any(
        n.op_type in QOPERATOR or n.domain == "com.microsoft" for n in model.graph.node
    )


def is_dynamic(model: onnx.ModelProto) -> bool:
    """True for a model as ``onnxruntime.quantization.quantize_dynamic`` writes it: every
    ``MatMulInteger`` / ``ConvInteger`` reads the output of a ``DynamicQuantizeLinear``, and no
    other QOperator or com.microsoft op is present."""
    dynamic = {
        n.output[0] for n in model.graph.node
        if n.op_type == "DynamicQuantizeLinear" and n.domain in ONNX_DOMAINS
    }  # fmt: skip
    integer = [n for n in model.graph.node if n.op_type in QOPERATOR or n.domain not in
               ONNX_DOMAINS + (QONNX_DOMAIN,)]  # fmt: skip
    return bool(dynamic) and all(
        n.op_type in _DYNAMIC_MACS and n.domain in ONNX_DOMAINS and n.input[0] in dynamic
        for n in integer
    )


def _attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _input(node, i: int) -> str:
    """The name of ``node``'s ``i``-th input; "" if it has none (an omitted optional input)."""
    return node.input[i] if len(node.input) > i else ""


def _auto_pad(a: dict) -> str:
    v = a.get("auto_pad", b"NOTSET")
    return v.decode() if isinstance(v, bytes) else v


def _shape(vi) -> tuple:
    dims = vi.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims)


_INT64_MAX = np.iinfo(np.int64).max


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.src = source
        self.original = model
        try:
            folded = fold_shapes(model)
        except FoldError as e:
            n = e.node
            where = f"node {n.name or '?'!r} ({n.op_type}): " if n is not None else ""
            raise ModelImportError(f"{source}: {where}{e}") from None
        # integer bounds of each Clip the folding may turn into a constant (a QCDQ weight's
        # Clip of an integer initializer): the format DequantizeLinear then reads it in
        self.clip_hint: dict[str, tuple[int, int]] = {}
        init0 = {i.name: i for i in model.graph.initializer}
        for n in model.graph.node:
            if n.op_type == "Clip" and len(n.input) == 3 and n.input[0] in init0:
                b = [init0.get(t) for t in n.input[1:]]
                if all(v is not None for v in b):
                    lo, hi = (numpy_helper.to_array(v) for v in b)
                    if lo.size == 1 and hi.size == 1 and lo.dtype.kind in "iu":
                        self.clip_hint[n.output[0]] = (int(lo.reshape(-1)[0]),
                                                       int(hi.reshape(-1)[0]))
        self.batch_entries = folded.batch_entries
        self.batch_broadcast = folded.batch_broadcast
        self.model = model = fuse(folded.model)
        g = model.graph
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in g.initializer
        }
        for n in g.node:  # known before their node is reached (a reader's pattern may ask)
            if n.op_type == "Constant" and n.domain in ONNX_DOMAINS:
                a = _attrs(n)
                if "value" in a:
                    self.consts[n.output[0]] = numpy_helper.to_array(a["value"])
        inits = {i.name for i in g.initializer}
        self.inputs = [i for i in g.input if i.name not in inits]
        # every tensor's shape at batch 1 (symbolic sample dimensions as 1), by the IR's rules
        self.shapes: dict[str, tuple] = {
            i.name: (1,) + tuple(d if isinstance(d, int) and d > 0 else 1 for d in _shape(i)[1:])
            for i in self.inputs
        }
        self.qconst: dict[str, tuple] = {}  # DQ(const) output -> (q, scale, zp, fmt, axis, src)
        self.const_fmt: dict[str, IntFormat] = {}  # Q(const) output -> its integer format
        # Q(const) / Clip(Q(const)) output -> the initializer onnxruntime's plan names it by
        self.const_source: dict[str, str] = {}
        self.brevitas = False  # QONNX Quant nodes or QCDQ chains: resolve unquantized tensors
        self.import_notes: list[str] = []  # Graph.meta["import_notes"]: what import decided
        # a QDQ model: its elementwise functions are quantized node by node (no fusion)
        self.qdq = any(
            n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.domain in ONNX_DOMAINS
            for n in g.node
        )
        self.alias: dict[str, str] = {}  # DQ(Q(t)) output -> t
        self.act_quant: dict[str, TensorQuant] = {}
        self.nodes: list[Node] = []
        self.uses: dict[str, int] = {}
        self.readers: dict[str, list] = {}
        for n in g.node:
            for t in n.input:
                self.uses[t] = self.uses.get(t, 0) + 1
                self.readers.setdefault(t, []).append(n)
        # an "unbind" (timm's qkv.permute(2, 0, 3, 1, 4).unbind(0)): a Transpose that moves the
        # batch to axis 1, read only by selections of one index on axis 0 -- each becomes a
        # Gather on the source axis and a Transpose that keeps the batch first
        self.unbind: dict[str, tuple[str, tuple]] = {}  # transposed tensor -> (source, perm)
        self.picked: dict[str, tuple[str, int]] = {}  # Split output -> (transposed, index)
        # nodes a pattern handler imported with an earlier node (by first output): skipped
        self.absorbed: set[str] = set()

    def fail(self, node, msg: str):
        raise ModelImportError(f"{self.src}: node {node.name or '?'!r} ({node.op_type}): {msg}")

    def opset(self) -> int:
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 0

    def rank(self, tensor: str) -> int | None:
        """The rank of ``tensor``: its IR shape's, else by ONNX shape inference (None if
        unknown)."""
        s = self.shapes.get(self.name(tensor))
        if s is not None:
            return len(s)
        if not hasattr(self, "_ranks"):
            self._ranks = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.original).graph
            except Exception:  # inference is best effort; unknown ranks are handled by callers
                inferred = self.original.graph
            for vi in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
                tt = vi.type.tensor_type
                if tt.HasField("shape"):
                    self._ranks[vi.name] = len(tt.shape.dim)
        return self._ranks.get(tensor)

    def softmax_axis(self, node, a: dict) -> int:
        """Softmax's axis. From opset 13 on, Softmax normalizes along ``axis`` (default -1),
        as hwsim does. Before opset 13 (default ``axis=1``) it flattens the input to 2-D at
        ``axis`` and normalizes over all the trailing dims together; that equals hwsim's
        per-axis Softmax only where ``axis`` is the last axis (e.g. a (N, C) input), so other
        cases are rejected."""
        if self.opset() >= 13:
            return int(a.get("axis", -1))
        axis = int(a.get("axis", 1))
        rank = self.rank(node.input[0])
        if rank is None or (axis % rank if -rank <= axis < rank else None) != rank - 1:
            shown = "unknown" if rank is None else str(rank)
            self.fail(
                node,
                f"Softmax of opset {self.opset()} (< 13) with axis={axis} on an input of rank "
                f"{shown} normalizes over the input flattened to 2-D at axis {axis}; hwsim "
                "supports it only where axis is the last axis (e.g. a (N, C) input). Export "
                "with opset >= 13, or Flatten before the Softmax",
            )
        return -1

    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def is_const(self, t: str) -> bool:
        return t in self.consts or t in self.qconst

    def const(self, node, t: str, what: str, batch_ok: bool = False) -> np.ndarray:
        if t in self.batch_entries and not batch_ok:
            self.fail(
                node,
                f"{what} {t!r} is computed from the batch size (entries "
                f"{list(self.batch_entries[t])}); hwsim keeps the batch symbolic and folds it "
                "only into a Reshape target (axis 0) or a Slice end on axis 0",
            )
        if t in self.consts:
            return self.consts[t]
        if t in self.qconst:
            q, s, z, _, axis, _ = self.qconst[t]
            return _dequant(q, s, z, axis)
        self.fail(node, f"{what} {t!r} must be a constant (initializer or Constant)")

    # -- Q/DQ ---------------------------------------------------------------------------------
    def quantize_linear(self, node, a):
        x = node.input[0]
        if "block_size" in a and int(a["block_size"]):
            self.fail(node, "blocked quantization (block_size) is not supported")
        if self.is_const(x):
            self.quantize_const(node, a)
            return
        s, z, fmt = self._qparams(node, a, node.input[1], _input(node, 2))
        if np.ndim(s) != 0:
            self.fail(node, "activation quantization must be per-tensor (scalar scale)")
        tq = TensorQuant(float(s), int(z), fmt, scale_name=node.input[1])
        chain = qonnx.qcdq_clip(self, node)
        if chain is not None:  # QCDQ: QuantizeLinear -> Clip(lo, hi) -> DequantizeLinear
            clip, bounds = chain
            self.brevitas = True
            tq = TensorQuant(tq.scale, tq.zero_point, qonnx.narrowed(self, clip, fmt, bounds),
                             scale_name=tq.scale_name)
            self.absorbed.add(clip.output[0])
            qonnx.quantize_activation(self, node, x, clip.output[0], tq, bounds)
            self.alias[node.output[0]] = self.name(x)
            return
        t = self.name(x)
        old = self.act_quant.get(t)
        if old is not None and old != tq:
            self.fail(node, f"tensor {t!r} is quantized twice with different parameters")
        self.act_quant[t] = tq
        self.alias[node.output[0]] = t

    def quantize_const(self, node, a):
        """QuantizeLinear of a constant (a GELU's 0.5 and 1.0, a class token, a weight
        quantized in the file): the integer constant onnxruntime computes
        (:func:`hwsim.numerics.affine.quantize`, float32 division, round half to even,
        saturation). The DequantizeLinear after it makes it a quantized constant like an integer
        initializer's: its float value is ``DQ(Q(c))``, what a float op in onnxruntime reads."""
        c = np.asarray(self.const(node, node.input[0], "input"))
        if not np.issubdtype(c.dtype, np.floating):
            self.fail(node, f"QuantizeLinear of a {c.dtype} constant: a float constant expected")
        s, z, fmt = self._qparams(node, a, node.input[1], _input(node, 2))
        axis = self._qaxis(node, a, s, c) if np.size(s) > 1 else None
        q = quantize(c.astype(np.float32), s, z, fmt, axis)
        self.consts[node.output[0]] = q
        self.const_fmt[node.output[0]] = fmt
        self.const_source[node.output[0]] = self.const_source.get(node.input[0], node.input[0])

    def int_format(self, t: str) -> IntFormat | None:
        """The integer format of the initializer ``t`` by its ONNX element type (a folded
        QCDQ Clip: the narrowest holding its bounds); None if it is not one hwsim emulates."""
        elem = next((i.data_type for i in self.model.graph.initializer if i.name == t), None)
        fmt = _ONNX_INT.get(elem) if elem is not None else None
        if fmt is not None and t in self.clip_hint:
            self.brevitas = True
            fmt = qonnx.narrowed(self, self.producers.get(t) or onnx.NodeProto(name=t),
                                 fmt, self.clip_hint[t])
        return fmt

    def _qaxis(self, node, a, s, t: np.ndarray) -> int:
        """The axis of per-axis parameters ``s`` for a tensor ``t``: the attribute (default 1,
        negative from the end), checked against ``s``'s length."""
        axis = int(a.get("axis", 1))
        if not -t.ndim <= axis < t.ndim:
            self.fail(node, f"axis {axis} is out of range for a tensor of shape {t.shape}")
        axis %= t.ndim
        if np.ndim(s) != 1 or np.size(s) != t.shape[axis]:
            self.fail(node, f"{np.size(s)} scales for axis {axis} of a tensor of shape {t.shape}")
        return axis

    def dequantize_linear(self, node, a):
        x = node.input[0]
        if x in self.consts:
            q = self.consts[x]
            if not np.issubdtype(q.dtype, np.integer):
                self.fail(node, f"expected an integer tensor, got {q.dtype}")
            s = self.const(node, node.input[1], "scale").astype(np.float32)
            z = (
                self.const(node, node.input[2], "zero point")
                if _input(node, 2)
                else np.zeros_like(s, dtype=q.dtype)
            )
            fmt = self.const_fmt.get(x) or self.int_format(x)
            if fmt is None:
                fmt = IntFormat(32, True) if q.dtype == np.int32 else None
            if fmt is None:
                self.fail(node, f"unsupported quantized constant type {q.dtype}")
            axis = None
            if np.size(s) == 1:  # a one-element vector is per-tensor
                s, z = s.reshape(()), np.asarray(z).reshape(())
            else:  # per axis: (K, N) MatMul weights on axis 1, conv / Gemm weights on axis 0
                axis = self._qaxis(node, a, s, q)
            self.qconst[node.output[0]] = (
                q.astype(np.int64),
                s,
                np.asarray(z, np.int64),
                fmt,
                axis,
                # the initializer onnxruntime's integer kernels read (OrtPlan); a quantized
                # constant computed in the file (Q of a float weight): the float weight's
                self.const_source.get(x, x),
            )
            return
        src = self.name(x)
        if src not in self.act_quant:
            self.fail(node, f"DequantizeLinear input {x!r} is not produced by a QuantizeLinear")
        tq = self.act_quant[src]
        s, z, _ = self._qparams(node, a, node.input[1], _input(node, 2))
        if float(np.float32(s)) != tq.scale or int(z) != tq.zero_point:
            self.fail(node, "DequantizeLinear parameters differ from its QuantizeLinear's")
        self.alias[node.output[0]] = src

    def _qparams(self, node, a, s_name, z_name):
        s = self.const(node, s_name, "scale")
        if z_name:
            zarr = self.consts.get(z_name)
            if zarr is None:
                self.fail(node, f"zero point {z_name!r} must be a constant")
            elem = next(i.data_type for i in self.model.graph.initializer if i.name == z_name)
            fmt = _ONNX_INT.get(elem)
            if fmt is None:
                self.fail(
                    node,
                    f"zero point type {onnx.TensorProto.DataType.Name(elem)} is not "
                    "an integer format hwsim emulates (int/uint 4, 8, 16)",
                )
            z = zarr
        else:
            to = a.get("output_dtype", onnx.TensorProto.UINT8)
            fmt = _ONNX_INT.get(to)
            if fmt is None:
                self.fail(node, "unsupported output_dtype")
            z = np.zeros((), np.int64)
        if not np.all(np.isfinite(s)) or np.any(s <= 0):
            self.fail(node, f"scale must be finite and > 0, got {s}")
        return s, np.asarray(z, np.int64), fmt

    # -- dynamic quantization (onnxruntime.quantization.quantize_dynamic) ---------------------
    @functools.cached_property
    def producers(self) -> dict[str, onnx.NodeProto]:
        """Tensor name -> the node writing it."""
        return {o: n for n in self.model.graph.node for o in n.output if o}

    @functools.cached_property
    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.model.graph.output}

    def dynamic_quantize_linear(self, node, a):
        """``DynamicQuantizeLinear(x)`` with the layers reading it: each reader of its ``y``
        starts a chain :data:`DYNAMIC_CHAIN` that becomes one dense (``MatMulInteger``) or conv
        (``ConvInteger``) layer on the float ``x`` (:meth:`dynamic_layer`); ``y_scale`` and
        ``y_zero_point`` may be read only inside those chains. Anything else is a
        ModelImportError naming the node and the chain expected."""
        if len(node.output) != 3 or not all(node.output):
            self.fail(node, f"y, y_scale and y_zero_point expected; {DYNAMIC_CHAIN}")
        y = node.output[0]
        macs = self.readers.get(y, [])
        if not macs or any(o in self.graph_outputs for o in node.output):
            self.fail(node, f"its outputs must feed integer layers only; {DYNAMIC_CHAIN}")
        chains = {id(n) for mac in macs for n in self.dynamic_layer(node, mac)}
        for t in node.output[1:]:
            for r in self.readers.get(t, []):
                if id(r) not in chains:
                    self.fail(r, f"reads {t!r} of DynamicQuantizeLinear {node.name!r} outside "
                              f"a dynamically quantized layer; {DYNAMIC_CHAIN}")

    def dynamic_layer(self, dql, mac) -> list:
        """One chain :data:`DYNAMIC_CHAIN` from ``mac`` (a reader of ``dql``'s ``y``) as an
        ``Op.DENSE`` / ``Op.CONV`` with ``attrs["ort_dynamic"]``: integer weights ``wq`` in the
        IR layout (a MatMul's ``(K, N)`` transposed to ``(O, K)``; scales and zero points
        per-tensor or per output channel, per-tensor only for ConvInteger), the float ``bias``
        of the Add (a constant of ``N`` values on the channel axis; else no bias and the Add
        stays an op of its own). Returns the chain's nodes, marked absorbed."""
        y, y_scale, y_zero = dql.output

        def bad(n, what: str):
            self.fail(n, f"{what}; a dynamically quantized layer is {DYNAMIC_CHAIN}")

        kind = _DYNAMIC_MACS.get(mac.op_type) if mac.domain in ONNX_DOMAINS else None
        if kind is None or mac.input[0] != y:
            bad(mac, f"reads the output {y!r} of DynamicQuantizeLinear {dql.name!r}")
        if _input(mac, 2) != y_zero:
            bad(mac, f"its x_zero_point must be {y_zero!r}, DynamicQuantizeLinear's")
        w = self.consts.get(mac.input[1])
        if w is None or w.dtype not in (np.int8, np.uint8):
            bad(mac, f"its weight {mac.input[1]!r} must be an int8 / uint8 constant")
        wz = self.consts.get(_input(mac, 3)) if _input(mac, 3) else np.zeros((), w.dtype)
        if wz is None or wz.dtype != w.dtype:
            bad(mac, f"its w_zero_point must be a constant of the weight's type {w.dtype}")
        cast = self._chain_reader(mac, "Cast", bad)
        if _attrs(cast).get("to") != onnx.TensorProto.FLOAT:
            bad(cast, "must cast to float")
        mul = self._chain_reader(cast, "Mul", bad)
        s_t = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
        smul = self.producers.get(s_t)
        if (
            smul is None or smul.op_type != "Mul" or y_scale not in smul.input
            or len(self.readers.get(s_t, [])) != 1
        ):  # fmt: skip
            bad(mul, f"its scale {s_t!r} must be Mul({y_scale!r}, w_scale), read only here")
        ws = self.consts.get(smul.input[1] if smul.input[0] == y_scale else smul.input[0])
        if ws is None or ws.dtype != np.float32:
            bad(smul, "w_scale must be a float32 constant")
        dense = kind == "dense"
        if dense and w.ndim != 2:
            bad(mac, f"the weight must be 2-D (K, N), got shape {w.shape}")
        n_out = w.shape[1] if dense else w.shape[0]
        per_channel = (n_out,) if dense else ()  # ConvInteger: per-tensor
        for v, what in ((ws, "w_scale"), (wz, "w_zero_point")):
            if v.size != 1 and (not dense or v.shape != per_channel):
                bad(mac, f"{what} of shape {v.shape}: per-tensor"
                    + (f" or per output column {per_channel}" if dense else "") + " expected")
        x = self.name(dql.input[0])
        rank = len(self.shape_of(dql, x))
        chain, out, bias = [mac, cast, mul, smul], mul.output[0], None
        add = self.readers.get(out, [])
        if len(add) == 1 and add[0].op_type == "Add" and out not in self.graph_outputs:
            b_t = add[0].input[1] if add[0].input[0] == out else add[0].input[0]
            b = self.consts.get(b_t)
            want = (n_out,) if dense else (n_out, 1, 1)
            if (
                b is not None and b.dtype == np.float32 and b.ndim <= rank
                and b.shape[b.ndim - len(want):] == want and b.size == n_out
            ):  # fmt: skip
                chain, out, bias = chain + [add[0]], add[0].output[0], b.reshape(n_out)
        fmt = IntFormat(8, w.dtype == np.int8)
        q = w.astype(np.int64)
        wq = WeightQuant(
            np.ascontiguousarray(q.T if dense else q),
            ws.reshape(()) if ws.size == 1 else ws.reshape(-1),
            wz.astype(np.int64).reshape(()) if wz.size == 1 else wz.astype(np.int64).reshape(-1),
            fmt,
            mac.input[1],
        )
        attrs = {"ort_dynamic": True}
        if dense and rank > 2:
            attrs["nd"] = True
        elif not dense:
            attrs |= self.conv_attrs(mac, _attrs(mac), w.shape)
        op = Op.DENSE if dense else Op.CONV
        self.add(mac, op, [x], attrs, output=out, weight=wq.dequantize(), bias=bias, wq=wq)
        self.absorbed.update(n.output[0] for n in chain)
        return chain

    def _chain_reader(self, node, op_type: str, bad):
        """The one reader of ``node``'s output, of type ``op_type`` (the output not a model
        output); else ``bad(node, why)``."""
        t = node.output[0]
        rs = self.readers.get(t, [])
        if len(rs) != 1 or rs[0].op_type != op_type or t in self.graph_outputs:
            bad(node, f"its output {t!r} must be read by one {op_type} only")
        return rs[0]

    def dequantized_table(self, node, table: np.ndarray) -> tuple[np.ndarray, str]:
        """A quantized embedding (``quantize_dynamic``'s Gather of an integer table at the ids,
        then DequantizeLinear with a constant per-tensor scale and zero point): the float32
        table DequantizeLinear gives, ``f32(q - z) * s`` (so each looked-up row is exactly
        DequantizeLinear's), and the DequantizeLinear's output, which it absorbs."""
        out = node.output[0]
        rs = self.readers.get(out, [])
        if len(rs) != 1 or rs[0].op_type != "DequantizeLinear" or out in self.graph_outputs:
            self.fail(node, f"an embedding table of type {table.dtype} must be read by one "
                      "DequantizeLinear only (a quantized embedding), or be float")
        dq = rs[0]
        s = np.asarray(self.const(dq, dq.input[1], "scale"))
        z = (
            np.asarray(self.const(dq, dq.input[2], "zero point"))
            if _input(dq, 2)
            else np.zeros((), table.dtype)
        )
        if s.size != 1 or z.size != 1 or s.dtype != np.float32 or z.dtype != table.dtype:
            self.fail(dq, f"a quantized embedding table needs a per-tensor float32 scale and a "
                      f"{table.dtype} zero point, got {s.dtype} {s.shape} and {z.dtype} {z.shape}")
        self.absorbed.add(dq.output[0])
        return _dequant(table, s.reshape(()), z.reshape(()), None), dq.output[0]

    # -- layers -----------------------------------------------------------------------------
    def add(self, node, op: Op, inputs, attrs=None, output=None, name=None, **kw) -> Node:
        n = Node(
            name or node.name or f"{op.value}_{len(self.nodes)}",
            op,
            tuple(inputs),
            output or node.output[0],
            attrs or {},
            **kw,
        )
        self.nodes.append(n)
        self.track(n)
        return n

    def track(self, n: Node) -> None:
        """``n``'s output shape at batch 1 into ``shapes`` (left unknown where an input's is
        unknown or the rule fails: :meth:`check_shapes` then names the node)."""
        ins = [self.shapes.get(t) for t in n.inputs]
        if any(s is None for s in ins):
            return
        try:
            self.shapes[n.output] = tuple(int(d) for d in SHAPES[n.op](n, ins))
        except Exception:
            self.shapes.pop(n.output, None)

    def shape_of(self, node, t: str) -> tuple:
        """The IR shape (batch 1) of input ``t``; a ModelImportError if it is not known."""
        s = self.shapes.get(self.name(t))
        if s is None:
            self.fail(
                node, f"the shape of input {t!r} is unknown (not computed by a supported node)"
            )
        return s

    def norm_axis(self, node, axis: int, rank: int, what: str = "axis") -> int:
        """``axis`` in ``[0, rank)``; axis 0, the batch axis, is an error."""
        if not -rank <= axis < rank:
            self.fail(node, f"{what} {axis} is out of range for an input of rank {rank}")
        axis %= rank
        if axis == 0:
            self.fail(
                node,
                f"{what} 0 is the batch axis: hwsim keeps the batch as axis 0 of every tensor "
                "(the op would mix or select samples)",
            )
        return axis

    def aligned(self, node, c, x: str, what: str = "constant") -> np.ndarray:
        """The constant ``c`` as ONNX broadcasts it against input ``x``: float32, a scalar
        kept as shape ``()``, else right-aligned to ``x``'s rank with a batch axis of 1."""
        cv = np.asarray(c, np.float32)
        if cv.size == 1:
            return cv.reshape(())
        rank = len(self.shape_of(node, x))
        if cv.ndim > rank or (cv.ndim == rank and cv.shape[0] != 1):
            self.fail(
                node,
                f"{what} of shape {cv.shape} broadcasts over the batch axis of an input of rank "
                f"{rank}; hwsim keeps the batch as axis 0 and needs constants the same for "
                "every sample (a batch axis of 1)",
            )
        return cv.reshape((1,) * (rank - cv.ndim) + cv.shape)

    def weight_of(self, node, t: str, transpose: bool = False):
        """Float weight and optional WeightQuant for input ``t``."""
        if t in self.qconst:
            q, s, z, fmt, axis, src = self.qconst[t]
            if transpose:
                if np.ndim(s) == 1 and axis != 1:
                    self.fail(node, "per-channel MatMul weight scales must be on axis 1")
                q = q.T
            elif np.ndim(s) == 1 and axis != 0:
                self.fail(node, "per-channel weight scales must be on axis 0 (output channels)")
            wq = WeightQuant(np.ascontiguousarray(q), s, z, fmt, src)
            return wq.dequantize(), wq
        w = self.const(node, t, "weight").astype(np.float32)
        return (np.ascontiguousarray(w.T) if transpose else w), None

    def bias_of(self, node, t: str, n_out: int):
        if not t:
            return None, None
        if t in self.qconst:
            q, s, z, fmt, _, _ = self.qconst[t]
            if np.any(z != 0) or fmt.bits > 32 or not fmt.signed:
                self.fail(node, "a quantized bias must be signed, at most 32 bits, with zero "
                          "point 0")
            return _dequant(q, s, z, 0).reshape(n_out), q.reshape(n_out).astype(np.int64)
        b = self.const(node, t, "bias").astype(np.float32)
        if b.size != n_out:
            self.fail(node, f"bias has {b.size} entries, expected {n_out}")
        return b.reshape(n_out), None

    def conv(self, node, a):
        x = self.name(node.input[0])
        w, wq = self.weight_of(node, node.input[1])
        attrs = self.conv_attrs(node, a, w.shape)
        b, bq = self.bias_of(node, _input(node, 2), w.shape[0])
        self.add(node, Op.CONV, [x], attrs, weight=w, bias=b, wq=wq, bias_q=bq)

    def conv_attrs(self, node, a, wshape: tuple) -> dict:
        """The IR attributes of a Conv-geometry node (Conv, ConvInteger) with a weight of shape
        ``wshape``: 2-D only, ``auto_pad`` NOTSET or VALID."""
        if len(wshape) != 4:
            self.fail(node, f"only 2-D convolution is supported (weight rank 4), got rank "
                      f"{len(wshape)}")
        ks = tuple(a.get("kernel_shape", wshape[2:]))
        if ks != tuple(wshape[2:]):
            self.fail(node, f"kernel_shape {ks} does not match the weight {tuple(wshape)}")
        auto_pad = _auto_pad(a)
        if auto_pad not in ("NOTSET", "VALID"):
            self.fail(node, f"auto_pad={auto_pad} is not supported (use explicit pads)")
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        return {
            "strides": tuple(a.get("strides", (1, 1))),
            "pads": (pads[0], pads[1], pads[2], pads[3]),
            "dilations": tuple(a.get("dilations", (1, 1))),
            "group": int(a.get("group", 1)),
        }

    def gemm(self, node, a):
        if a.get("transA", 0):
            self.fail(node, "transA=1 is not supported")
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        w, wq = self.weight_of(node, node.input[1], transpose=not a.get("transB", 0))
        if wq is not None and alpha != 1.0:
            self.fail(node, "alpha != 1 on a quantized weight is not supported")
        w = (w * np.float32(alpha)).astype(np.float32)
        b, bq = self.bias_of(node, _input(node, 2), w.shape[0])
        if b is not None and beta != 1.0:
            if bq is not None:
                self.fail(node, "beta != 1 on a quantized bias is not supported")
            b = (b * np.float32(beta)).astype(np.float32)
        self.add(node, Op.DENSE, [self.name(node.input[0])], {}, weight=w, bias=b, wq=wq, bias_q=bq)

    def matmul(self, node, a):
        """MatMul by a constant weight: a dense layer (on an N-d input over the last axis,
        ``attrs["nd"]``); of two activations: ``Op.MATMUL`` (same rank >= 3, batch first)."""
        xa, xb = node.input[0], node.input[1]
        if self.is_const(xa):
            self.fail(node, "MatMul of a constant by an activation (W @ x) is not supported; "
                      "x @ W is")
        if self.is_const(xb):
            w, wq = self.weight_of(node, xb, transpose=True)
            if w.ndim != 2:
                self.fail(node, f"MatMul weight must be 2-D, got shape {w.shape}")
            sx = self.shapes.get(self.name(xa))
            attrs = {"nd": True} if sx is not None and len(sx) > 2 else {}
            self.add(node, Op.DENSE, [self.name(xa)], attrs, weight=w, wq=wq)
            return
        sa, sb = self.shape_of(node, xa), self.shape_of(node, xb)
        if len(sa) != len(sb) or len(sa) < 3:
            self.fail(
                node,
                f"MatMul of two activations needs inputs of one rank >= 3, (batch, ..., M, K) @ "
                f"(batch, ..., K, N); got ranks {len(sa)} and {len(sb)}",
            )
        if sa[-1] != sb[-2]:
            self.fail(node, f"MatMul inputs {sa} and {sb} (batch 1) do not chain: K {sa[-1]} "
                      f"!= {sb[-2]}")
        self.add(node, Op.MATMUL, [self.name(xa), self.name(xb)])

    def batchnorm(self, node, a):
        if len(node.output) > 1 and any(node.output[1:]):
            self.fail(node, "training-mode BatchNormalization outputs are not supported")
        x = self.name(node.input[0])
        prev = self.nodes[-1] if self.nodes else None
        if (
            prev is None
            or prev.op is not Op.CONV
            or prev.output != x
            or self.uses.get(node.input[0], 0) != 1
            or prev.wq is not None
        ):
            # a QDQ model quantized without BN folding, or a BN after a dynamically quantized
            # conv (quantize_dynamic leaves it float): keep it
            if x in self.act_quant or (prev is not None and prev.output == x
                                       and prev.attrs.get("ort_dynamic")):  # fmt: skip
                gamma, beta, mean, var = (
                    self.const(node, t, n).astype(np.float32)
                    for t, n in zip(node.input[1:5], ("scale", "B", "mean", "var"), strict=True)
                )
                self.add(
                    node,
                    Op.BATCHNORM,
                    [x],
                    {
                        "gamma": gamma,
                        "beta": beta,
                        "mean": mean,
                        "var": var,
                        "epsilon": np.float32(a.get("epsilon", 1e-5)),
                    },
                )
                return
            self.fail(
                node,
                "BatchNormalization must directly follow a float Conv whose output it "
                "alone consumes (it is folded into that Conv)",
            )
        gamma, beta, mean, var = (
            self.const(node, t, n)
            for t, n in zip(node.input[1:5], ("scale", "B", "mean", "var"), strict=True)
        )
        eps = np.float32(a.get("epsilon", 1e-5))
        k = (gamma.astype(np.float32) / np.sqrt(var.astype(np.float32) + eps)).astype(np.float32)
        prev.attrs["bn_k"] = k  # the per-channel factor, for folding into the scale register
        prev.attrs["weight_unfolded"] = prev.weight
        prev.weight = (prev.weight * k[:, None, None, None]).astype(np.float32)
        b0 = prev.bias if prev.bias is not None else np.zeros(k.shape, np.float32)
        prev.bias = ((b0 - mean) * k + beta).astype(np.float32)
        prev.attrs["bn_gamma"] = gamma.astype(np.float32)
        prev.attrs["bn_beta"] = beta.astype(np.float32)
        prev.output = node.output[0]
        self.track(prev)

    def fold_const(self, node, op_type: str, x: str, c: np.ndarray) -> bool:
        """Fold ``x + c`` / ``x * c`` into the float conv/dense producing ``x`` if possible;
        in an hwsim-written file also the bias ``Add`` right after an N-d dense's MatMul
        (:mod:`hwsim.quant.store` writes a quantized dense's bias there)."""
        prev = self.nodes[-1] if self.nodes else None
        if prev is None or prev.output != x or prev.op not in (Op.CONV, Op.DENSE):
            return False
        stored_bias = (
            op_type == "Add"
            and prev.attrs.get("nd")
            and prev.bias is None
            and x not in self.act_quant
            and any(p.key == "hwsim" for p in self.model.metadata_props)
        )
        if self.uses.get(x, 0) != 1 or (prev.wq is not None and not stored_bias):
            return False
        n_out = prev.weight.shape[0]
        cv = np.asarray(c, np.float32)
        if prev.op is Op.CONV:
            ok = cv.size == 1 or cv.shape in ((n_out, 1, 1), (1, n_out, 1, 1))
        else:
            ok = cv.size == 1 or cv.shape in ((n_out,), (1, n_out))
        if not ok:
            return False
        vec = np.broadcast_to(cv.reshape(-1), (n_out,)).astype(np.float32)
        b0 = prev.bias if prev.bias is not None else np.zeros(n_out, np.float32)
        bn = "bn_k" in prev.attrs  # a folded BatchNorm: keep its data consistent (issue 12)
        if op_type == "Add":
            prev.bias = (b0 + vec).astype(np.float32)
            if bn:  # BN then + c is a BN with beta + c
                prev.attrs["bn_beta"] = (prev.attrs["bn_beta"] + vec).astype(np.float32)
        else:
            shape = (n_out,) + (1,) * (prev.weight.ndim - 1)
            prev.weight = (prev.weight * vec.reshape(shape)).astype(np.float32)
            prev.bias = (b0 * vec).astype(np.float32)
            if bn:
                # BN then * c is a BN with gamma * c, beta * c: the factor k (the register's
                # share, bn_fold=register) takes c, the conv's own weights stay as they are,
                # so weight == weight_unfolded * bn_k still holds
                a = prev.attrs
                a["bn_k"] = (a["bn_k"] * vec).astype(np.float32)
                a["bn_gamma"] = (a["bn_gamma"] * vec).astype(np.float32)
                a["bn_beta"] = (a["bn_beta"] * vec).astype(np.float32)
        prev.output = node.output[0]
        self.track(prev)
        return True

    def binary(self, node, a):
        """Add, Mul, Sub, Div: of two activations (Add, Mul), by a constant (all four; folded
        into the conv/dense before where possible; x - c is imported as x + (-c))."""
        op_type = node.op_type
        ins = list(node.input)
        cidx = [i for i, t in enumerate(ins) if self.is_const(t)]
        if not cidx:
            if op_type not in ("Add", "Mul"):
                self.fail(node, f"{op_type} of two activations is not supported (Add and Mul of "
                          f"two activations, and {op_type} by a constant, are)")
            self.add(node, Op.ADD if op_type == "Add" else Op.MUL_ACT, [self.name(t) for t in ins])
            return
        if len(cidx) == 2:
            self.fail(node, "both inputs are constants")
        ci = cidx[0]
        c = self.const(node, ins[ci], "constant")
        x = self.name(ins[1 - ci])
        if op_type in ("Sub", "Div") and ci == 0:
            sign = "-" if op_type == "Sub" else "/"
            self.fail(node, f"{op_type} of a constant by an activation (c {sign} x) is not "
                      f"supported; x {sign} c is")
        if op_type == "Div":
            self.add(node, Op.DIV_CONST, [x], weight=self.aligned(node, c, x, "divisor"))
            return
        if op_type == "Sub":  # float32 x - c == x + (-c) exactly
            c, op_type = -np.asarray(c, np.float32), "Add"
        if self.fold_const(node, op_type, x, c):
            return
        if op_type == "Add":
            self.add(node, Op.ADD_CONST, [x], weight=self.aligned(node, c, x))
            return
        cv = self.aligned(node, c, x)
        non1 = [i for i, d in enumerate(cv.shape) if d != 1]
        if cv.ndim and non1 == [1]:  # per channel (axis 1): the form with an integer rule
            cv = cv.reshape(-1)
        self.add(node, Op.MUL, [x], {}, weight=cv)

    def pool(self, node, a, op: Op):
        ks = tuple(a["kernel_shape"])
        if len(ks) != 2:
            self.fail(node, "only 2-D pooling is supported")
        if a.get("ceil_mode", 0):
            self.fail(node, "ceil_mode=1 is not supported")
        if tuple(a.get("dilations", (1, 1))) != (1, 1):
            self.fail(node, "dilated pooling is not supported")
        if a.get("storage_order", 0):
            self.fail(node, "storage_order=1 is not supported")
        ap = _auto_pad(a)
        if ap not in ("NOTSET", "VALID"):
            self.fail(node, f"auto_pad={ap} is not supported")
        if len(node.output) > 1 and node.output[1]:
            self.fail(node, "the Indices output is not supported")
        attrs = {
            "kernel": ks,
            "strides": tuple(a.get("strides", (1, 1))),
            "pads": tuple(a.get("pads", (0, 0, 0, 0))),
            "count_include_pad": int(a.get("count_include_pad", 0)),
        }
        self.add(node, op, [self.name(node.input[0])], attrs)

    # -- ops without a section of their own -------------------------------------------------
    def constant(self, node, a):
        if "value" not in a:
            self.fail(node, "only Constant with a tensor 'value' is supported")
        self.consts[node.output[0]] = numpy_helper.to_array(a["value"])

    def clip(self, node, a):
        if qonnx.clip_const(self, node):  # a QCDQ weight's Clip of QuantizeLinear(w)
            self.brevitas = True
            return
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        if _input(node, 1):
            lo = float(self.const(node, node.input[1], "min"))
        if _input(node, 2):
            hi = float(self.const(node, node.input[2], "max"))
        self.add(node, Op.CLIP, [self.name(node.input[0])], {"min": lo, "max": hi})

    def flatten(self, node, a):
        x = self.name(node.input[0])
        axis = int(a.get("axis", 1))
        r = self.shapes.get(x)
        if axis != 1 and not (r is not None and axis == 1 - len(r)):
            self.fail(node, f"only Flatten with axis=1 is supported (keeps the batch axis), got "
                      f"axis={axis}")
        self.add(node, Op.FLATTEN, [x])

    def reshape(self, node, a):
        t = node.input[1]
        shape = [int(v) for v in self.const(node, t, "shape", batch_ok=True)]
        if a.get("allowzero", 0) and 0 in shape:  # without a 0 entry the same as allowzero=0
            self.fail(node, f"allowzero=1 with a 0 entry in the target {shape} (an empty "
                      "axis) is not supported")
        be = self.batch_entries.get(t, ())
        if any(i != 0 for i in be):
            self.fail(node, f"the target shape {shape} (batch 1) puts the batch size at axis "
                      f"{[i for i in be if i]}; hwsim keeps the batch as axis 0")
        if be:
            shape[0] = 0  # ONNX's "copy the input's dimension": the batch
        self.reshape_to(node, self.name(node.input[0]), shape)

    def reshape_to(self, node, x: str, shape, what: str = "Reshape") -> None:
        """An ``Op.RESHAPE`` of ``x`` to ``shape`` (axis 0 the batch, ONNX's 0 and -1), checked
        to keep the batch axis: the same number of values per sample."""
        if len(shape) < 1:
            self.fail(node, f"{what} to a scalar drops the batch axis")
        xs = self.shapes.get(x)
        n = Node("?", Op.RESHAPE, (x,), "?", {"shape": tuple(shape)})
        if xs is not None:
            try:
                out = SHAPES[Op.RESHAPE](n, [xs])
            except Exception:
                out = None
            if out is None or int(np.prod(out[1:])) != int(np.prod(xs[1:])):
                self.fail(
                    node,
                    f"{what} of an input {xs} (batch 1) to shape {list(shape)} does not keep the "
                    f"batch axis: hwsim keeps the batch as axis 0 and reshapes each sample's "
                    f"{int(np.prod(xs[1:]))} values, the target (axis 0 the batch) has "
                    f"{'no valid shape' if out is None else int(np.prod(out[1:]))} (e.g. [0, -1] "
                    "for (N, features); a batch merged into another axis is not supported)",
                )
        self.add(node, Op.RESHAPE, [x], {"shape": tuple(int(v) for v in shape)})

    def axes_of(self, node, a: dict, i: int = 1):
        """A Squeeze / Unsqueeze / ReduceMean axes list: the attribute, or input ``i`` (newer
        opsets); None if absent."""
        if "axes" in a:
            return [int(v) for v in a["axes"]]
        if _input(node, i):
            return [int(v) for v in np.ravel(self.const(node, node.input[i], "axes"))]
        return None

    def squeeze(self, node, a):
        if self.name(node.input[0]) in self.picked:
            t, i = self.picked[self.name(node.input[0])]
            self.pick(node, t, i, node.output[0])
            return
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        axes = self.axes_of(node, a)
        if axes is None:  # every size-1 axis but the batch's (which is symbolic)
            axes = [i for i, d in enumerate(xs) if d == 1 and i]
        axes = sorted({self.norm_axis(node, v, len(xs), "squeeze axis") for v in axes})
        for v in axes:
            if xs[v] != 1:
                self.fail(node, f"cannot squeeze axis {v} of size {xs[v]}")
        self.reshape_to(node, x, [0] + [d for i, d in enumerate(xs) if i and i not in axes],
                        "Squeeze")

    def unsqueeze(self, node, a):
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        axes = self.axes_of(node, a)
        if not axes:
            self.fail(node, "Unsqueeze needs axes")
        r = len(xs) + len(axes)
        axes = sorted({self.norm_axis(node, v, r, "unsqueeze axis") for v in axes})
        rest = iter(xs[1:])
        self.reshape_to(node, x, [0] + [1 if i in axes else next(rest) for i in range(1, r)],
                        "Unsqueeze")

    def transpose(self, node, a):
        x = self.name(node.input[0])
        r = len(self.shape_of(node, x))
        perm = [int(v) for v in a.get("perm", range(r - 1, -1, -1))]
        if sorted(perm) != list(range(r)):
            self.fail(node, f"perm {perm} is not a permutation of {r} axes")
        if perm[0] != 0:
            if perm[1] == 0 and self.unbinds(node.output[0], r):
                self.unbind[node.output[0]] = (x, tuple(perm))
                return
            self.fail(node, f"perm {perm} moves the batch axis: hwsim keeps the batch as axis 0 "
                      "(write attention as (B, T, H, Dh) -> (B, H, T, Dh), perm [0, 2, 1, 3]; "
                      "a permute that moves the batch to axis 1 is accepted when each reader "
                      "takes one index of axis 0, as unbind(0) does)")
        self.add(node, Op.TRANSPOSE, [x], {"perm": tuple(perm)})

    def readers_past_qdq(self, t: str) -> list[tuple[str, onnx.NodeProto]]:
        """The nodes reading ``t`` as ``(the name they read, node)``, looking through the
        ``QuantizeLinear -> DequantizeLinear`` pairs of a QDQ model (which put one on every
        tensor between two quantized ops)."""
        out = []
        for r in self.readers.get(t, []):
            if r.op_type != "QuantizeLinear" or r.input[0] != t:
                out.append((t, r))
                continue
            for d in self.readers.get(r.output[0], []):
                if d.op_type == "DequantizeLinear":
                    out.extend(self.readers_past_qdq(d.output[0]))
                else:
                    out.append((r.output[0], d))
        return out

    def unbinds(self, t: str, rank: int) -> bool:
        """Every reader of ``t`` takes one index of its axis 0: a Gather with a scalar constant
        index, or a Split into pieces of 1 each read only by Squeeze on axis 0 (Q/DQ pairs
        between them looked through)."""
        readers = self.readers_past_qdq(t)
        if not readers or t in {o.name for o in self.model.graph.output}:
            return False
        for name, r in readers:
            a = _attrs(r)
            if int(a.get("axis", 0)) != 0 or r.input[0] != name:
                return False
            if r.op_type == "Gather":
                if not self.is_const(r.input[1]) or np.ndim(self.consts.get(r.input[1])) != 0:
                    return False
            elif r.op_type == "Split":
                sizes = (
                    np.ravel(self.consts.get(_input(r, 1), np.zeros(0))).tolist()
                    if _input(r, 1)
                    else a.get("split", [1] * len(r.output))
                )
                if len(sizes) != len(r.output) or any(int(v) != 1 for v in sizes):
                    return False
                for o in r.output:
                    for _, q in self.readers_past_qdq(o):
                        ax = self.axes_of(q, _attrs(q)) if q.op_type == "Squeeze" else None
                        if ax not in ([0], [-rank]):
                            return False
            else:
                return False
        return True

    def pick(self, node, t: str, index: int, out: str) -> None:
        """One index of axis 0 of an unbound tensor ``t``: a Gather on the source's axis and
        the remaining permutation, which keeps the batch first."""
        x, perm = self.unbind[t]
        g = perm[0]
        rest = tuple(q - (q > g) for q in perm[1:])
        mid = f"{out}:unbind"
        if x in self.act_quant:  # integers moved: the source's quantization
            self.act_quant[mid] = self.act_quant[x]
        self.add(node, Op.GATHER, [x], {"axis": g, "indices": np.asarray(index, np.int64)},
                 output=mid, name=f"{node.name or 'unbind'}:gather")
        self.add(node, Op.TRANSPOSE, [mid], {"perm": rest}, output=out)

    def gather(self, node, a):
        data, idx = node.input[0], node.input[1]
        if self.name(data) in self.unbind:
            data = self.name(data)
            x, perm = self.unbind[data]
            size = self.shape_of(node, x)[perm[0]]
            i = int(self.const(node, idx, "index"))
            self.pick(node, data, i + size if i < 0 else i, node.output[0])
            return
        if self.is_const(data) and self.is_const(idx):  # a position table at constant ids
            table = np.asarray(self.const(node, data, "data"))
            ind = np.asarray(self.const(node, idx, "indices")).astype(np.int64)
            axis = int(a.get("axis", 0))
            if not -table.ndim <= axis < table.ndim:
                self.fail(node, f"axis {axis} is out of range for data of shape {table.shape}")
            dim = table.shape[axis]
            if ind.size and (ind.min() < -dim or ind.max() >= dim):
                self.fail(node, f"indices out of range [{-dim}, {dim}) for axis {axis}")
            self.consts[node.output[0]] = np.take(table, np.where(ind < 0, ind + dim, ind), axis)
            return
        if not self.is_const(data) and not self.is_const(idx):
            self.fail(node, "Gather of an activation at activation indices is not supported "
                      "(an embedding table, or constant indices, is)")
        if self.is_const(data):  # an embedding: a constant table at integer ids
            table = self.const(node, data, "embedding table")
            if int(a.get("axis", 0)) not in (0, -table.ndim):
                self.fail(node, f"an embedding Gather must index axis 0 of its table, got axis "
                          f"{a.get('axis')}")
            out = node.output[0]
            if np.issubdtype(table.dtype, np.integer):
                table, out = self.dequantized_table(node, table)
            elif not np.issubdtype(table.dtype, np.floating):
                self.fail(node, f"embedding table of type {table.dtype}: a float table expected")
            ids = self.name(idx)
            if ids not in {i.name for i in self.inputs}:
                self.fail(node, f"the ids {idx!r} of an embedding Gather must be the model's "
                          "integer input")
            self.add(node, Op.EMBEDDING, [ids], {}, output=out, weight=table.astype(np.float32))
            return
        x = self.name(data)
        xs = self.shape_of(node, x)
        axis = self.norm_axis(node, int(a.get("axis", 0)), len(xs), "Gather axis")
        ind = np.asarray(self.const(node, idx, "indices")).astype(np.int64)
        ind = np.where(ind < 0, ind + xs[axis], ind)
        if ind.size and (ind.min() < 0 or ind.max() >= xs[axis]):
            self.fail(node, f"indices {ind.tolist()} out of range for axis {axis} of size "
                      f"{xs[axis]}")
        self.add(node, Op.GATHER, [x], {"axis": axis, "indices": ind})

    def slice(self, node, a):
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        if self.opset() < 10:
            starts, ends = list(a["starts"]), list(a["ends"])
            axes, steps, end_t = a.get("axes"), None, ""
        else:
            starts = [int(v) for v in np.ravel(self.const(node, node.input[1], "starts"))]
            end_t = node.input[2]
            ends = [int(v) for v in np.ravel(self.const(node, end_t, "ends", batch_ok=True))]
            axes = (
                [int(v) for v in np.ravel(self.const(node, node.input[3], "axes"))]
                if _input(node, 3)
                else None
            )
            steps = (
                [int(v) for v in np.ravel(self.const(node, node.input[4], "steps"))]
                if _input(node, 4)
                else None
            )
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        batch_ends = set(self.batch_entries.get(end_t, ()))
        slices = []
        for j, (ax, st, en, sp) in enumerate(zip(axes, starts, ends, steps, strict=True)):
            r = len(xs)
            if not -r <= ax < r:
                self.fail(node, f"axis {ax} is out of range for an input of rank {r}")
            ax %= r
            if ax == 0:
                if st == 0 and sp == 1 and (j in batch_ends or en >= _INT64_MAX // 2):
                    continue  # the whole batch
                self.fail(node, "slices the batch axis (axis 0): hwsim keeps every sample")
            if j in batch_ends:
                self.fail(node, f"the end on axis {ax} is the batch size")
            if sp == 0:
                self.fail(node, "a step of 0")
            dim = xs[ax]
            st = st + dim if st < 0 else st
            en = en + dim if en < 0 else en
            if sp > 0:
                st, en = min(max(st, 0), dim), min(max(en, 0), dim)
            else:
                st, en = min(max(st, 0), dim - 1), min(max(en, -1), dim - 1)
            slices.append((ax, int(st), None if en < 0 else int(en), int(sp)))
        self.add(node, Op.SLICE, [x], {"slices": tuple(slices)})

    def split(self, node, a):
        if self.name(node.input[0]) in self.unbind:  # pieces of 1 on axis 0, each squeezed
            for i, out in enumerate(node.output):
                if out:
                    self.picked[out] = (self.name(node.input[0]), i)
            return
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        axis = self.norm_axis(node, int(a.get("axis", 0)), len(xs), "Split axis")
        n_out, dim = len(node.output), xs[axis]
        if _input(node, 1):
            sizes = [int(v) for v in np.ravel(self.const(node, node.input[1], "split"))]
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:
            n = int(a.get("num_outputs", n_out))
            step = -(-dim // n)
            sizes = [min(step, dim - i * step) for i in range(n)]
        if sum(sizes) != dim or len(sizes) != n_out:
            self.fail(node, f"split sizes {sizes} do not divide axis {axis} of size {dim} into "
                      f"{n_out} outputs")
        start = 0
        for i, (out, size) in enumerate(zip(node.output, sizes, strict=True)):
            if out:
                self.add(node, Op.SLICE, [x], {"slices": ((axis, start, start + size, 1),)},
                         output=out, name=f"{node.name or 'split'}:{i}")
            start += size

    def concat(self, node, a):
        acts = [t for t in node.input if not self.is_const(t)]
        if not acts:
            self.fail(node, "every input is a constant")
        r = len(self.shape_of(node, acts[0]))
        axis = self.norm_axis(node, int(a["axis"]), r, "Concat axis")
        consts = []
        for i, t in enumerate(node.input):
            if self.is_const(t):
                c = np.asarray(self.const(node, t, "constant"), np.float32)
                if c.ndim != r or c.shape[0] != 1:
                    self.fail(node, f"constant input {t!r} of shape {c.shape}: a constant is "
                              f"concatenated as the same tensor for every sample, rank {r} with "
                              "a batch axis of 1")
                consts.append((i, c))
        attrs = {"axis": axis}
        if consts:
            attrs["consts"] = tuple(consts)
        self.add(node, Op.CONCAT, [self.name(t) for t in acts], attrs)

    def resize(self, node, a):
        """Resize as ``Op.RESIZE``: nearest-neighbour upsampling by an integer factor per axis
        (from constant ``scales``, or ``sizes`` that are multiples of the input's, the batch
        entry of a folded shape the batch size; opset 18's ``axes`` and
        ``keep_aspect_ratio_policy``) in a mode where onnxruntime computes ``np.repeat``
        (:data:`RESIZE_REPEATS`). Anything else is a ModelImportError naming what is not
        supported and :data:`RESIZE_SUPPORTED`."""

        def bad(what: str):
            self.fail(node, f"{what}; {RESIZE_SUPPORTED}")

        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        r = len(xs)
        mode = _s(a.get("mode", "nearest"))
        if mode != "nearest":
            bad(f"mode={mode!r} interpolates")
        for attr in ("antialias", "exclude_outside"):
            if int(a.get(attr, 0)):
                bad(f"{attr}={int(a[attr])}")
        if self.opset() < 11:  # Resize-10: onnxruntime's asymmetric coordinates, floor
            pair = ("asymmetric", "floor")
            scales_t, sizes_t = _input(node, 1), ""
        else:
            pair = (
                _s(a.get("coordinate_transformation_mode", "half_pixel")),
                _s(a.get("nearest_mode", "round_prefer_floor")),
            )
            scales_t, sizes_t = _input(node, 2), _input(node, 3)
        if pair[0] == "tf_crop_and_resize":
            bad("coordinate_transformation_mode='tf_crop_and_resize' crops to the roi")
        if pair not in RESIZE_REPEATS:
            bad(f"coordinate_transformation_mode={pair[0]!r} with nearest_mode={pair[1]!r} is "
                "not np.repeat at every integer factor in onnxruntime")
        axes = [int(v) for v in a.get("axes", range(r))]
        if any(not -r <= v < r for v in axes) or len({v % r for v in axes}) != len(axes):
            bad(f"axes {axes} are not distinct axes of an input of rank {r}")
        axes = [v % r for v in axes]
        scales = np.ravel(self.const(node, scales_t, "scales")) if scales_t else np.zeros(0)
        if scales.size and sizes_t:
            bad("both scales and sizes are given")
        if scales.size:
            if scales.size != len(axes) or not np.all(np.isfinite(scales)):
                bad(f"scales {scales.tolist()} for {len(axes)} axes")
            ratios = [Fraction(float(np.float32(v))) for v in scales]
        elif sizes_t:
            sizes = [int(v) for v in np.ravel(self.const(node, sizes_t, "sizes", batch_ok=True))]
            if len(sizes) != len(axes):
                bad(f"{len(sizes)} sizes for {len(axes)} axes")
            batch = set(self.batch_entries.get(sizes_t, ()))
            declared = _shape(self.inputs[0])[0] if self.inputs else None
            ratios = []
            for j, (ax, size) in enumerate(zip(axes, sizes, strict=True)):
                if ax == 0:
                    if j not in batch and size != declared:
                        bad(f"the size {size} of axis 0 resizes the batch (hwsim keeps every "
                            "sample once, as axis 0)")
                    ratios.append(Fraction(1))
                elif j in batch:
                    bad(f"the size of axis {ax} is the batch size")
                else:
                    ratios.append(Fraction(size, xs[ax]))
            policy = _s(a.get("keep_aspect_ratio_policy", "stretch"))
            if policy in ("not_larger", "not_smaller"):  # one scale for every axis listed
                ratios = [(min if policy == "not_larger" else max)(ratios)] * len(ratios)
            elif policy != "stretch":
                bad(f"keep_aspect_ratio_policy={policy!r}")
        else:
            bad("neither scales nor sizes are given")
        factors = [1] * r
        for ax, ratio in zip(axes, ratios, strict=True):
            if ratio.denominator != 1 or ratio < 1:
                bad(f"the factor {float(ratio):g} on axis {ax} is not an integer >= 1 "
                    "(downsampling or a fractional factor)")
            factors[ax] = int(ratio)
        if factors[0] != 1:
            bad(f"a factor of {factors[0]} on axis 0, the batch axis (hwsim keeps every sample "
                "once, as axis 0)")
        self.add(node, Op.RESIZE, [x], {"factors": tuple(factors)})

    def softmax(self, node, a):
        axis = self.softmax_axis(node, a)
        r = self.rank(node.input[0])
        if r is not None:
            self.norm_axis(node, axis, r, "Softmax axis")
        self.add(node, Op.SOFTMAX, [self.name(node.input[0])], {"axis": axis})

    def reduce_mean(self, node, a):
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        axes = self.axes_of(node, a)
        if not axes:  # absent or empty: every axis (the batch's too: an error below)
            if a.get("noop_with_empty_axes", 0):
                self.add(node, Op.IDENTITY, [x])
                return
            axes = list(range(len(xs)))
        axes = tuple(sorted({self.norm_axis(node, v, len(xs), "ReduceMean axis") for v in axes}))
        keep = int(a.get("keepdims", 1))
        if len(xs) == 4 and axes == (2, 3) and keep:
            self.add(node, Op.GAP, [x])
        else:
            self.add(node, Op.REDUCE_MEAN, [x], {"axes": axes, "keepdims": keep})

    def layernorm(self, node, a):
        """LayerNormalization (opset 17), and the decomposed form fused by
        :func:`hwsim.graph.fold.fuse` (``axes``: its ReduceMean's, trailing)."""
        if len(node.output) > 1 and any(node.output[1:]):
            self.fail(node, "the Mean / InvStdDev outputs are not supported")
        x = self.name(node.input[0])
        xs = self.shape_of(node, x)
        r = len(xs)
        if "axes" in a:
            axes = sorted({v % r for v in a["axes"]} if all(-r <= v < r for v in a["axes"])
                          else {-1})
            if axes[0] <= 0 or axes != list(range(axes[0], r)):
                self.fail(node, f"ReduceMean axes {list(a['axes'])} of a LayerNorm pattern: the "
                          "trailing axes after the batch expected")
            axis = axes[0]
        else:
            axis = self.norm_axis(node, int(a.get("axis", -1)), r, "LayerNormalization axis")
        norm = tuple(xs[axis:])

        def param(i, what):
            t = _input(node, i)
            if not t:
                return None
            c = np.asarray(self.const(node, t, what), np.float32)
            try:
                c = np.broadcast_to(c.reshape(c.shape[max(0, c.ndim - len(norm)):]) if
                                    c.ndim > len(norm) and all(d == 1 for d in
                                                               c.shape[:c.ndim - len(norm)])
                                    else c, norm)
            except ValueError:
                self.fail(node, f"{what} of shape {c.shape} does not fit the normalized shape "
                          f"{norm}")
            return np.ascontiguousarray(c, np.float32)

        attrs = {"axis": axis, "epsilon": float(np.float32(a.get("epsilon", 1e-5)))}
        if "fused" in a:
            attrs["fused"] = tuple(_s(v) for v in a["fused"])
        self.add(node, Op.LAYERNORM, [x], attrs, weight=param(1, "scale"),
                 bias=param(2, "bias"))

    def gelu(self, node, a):
        form = _s(a.get("approximate", "none"))
        if form not in ("none", "tanh"):
            self.fail(node, f"approximate={form!r}: 'none' or 'tanh' expected")
        self.fused_unary(node, a, Op.GELU, {"form": "erf" if form == "none" else "tanh"})

    def hard_sigmoid(self, node, a, op: Op = Op.HARDSIGMOID):
        default = (1 / 6, 0.5) if node.op_type == "HardSwish" else (0.2, 0.5)
        alpha, beta = float(a.get("alpha", default[0])), float(a.get("beta", default[1]))
        self.fused_unary(node, a, op, {"alpha": alpha, "beta": beta})

    def identity(self, node, a):
        """Identity (and Dropout, inference): of an activation, ``Op.IDENTITY``; of a constant
        (a shared weight's copy, a QDQ model's ``Identity`` of a dequantized LayerNorm weight),
        the same constant under the new name."""
        x, out = node.input[0], node.output[0]
        if x in self.qconst:
            self.qconst[out] = self.qconst[x]
        elif x in self.consts:
            self.consts[out] = self.consts[x]
            if x in self.const_fmt:
                self.const_fmt[out] = self.const_fmt[x]
        else:
            self.add(node, Op.IDENTITY, [self.name(x)])

    def qdq_unary(self, node, a, op: Op):
        """Erf, Tanh: in a QDQ model, where onnxruntime's quantizer put a Q/DQ pair between
        the nodes of a GELU (each intermediate its own quantization, so the pattern does not
        fuse), an elementwise op of its own; in a float model only inside a fused GELU."""
        if not self.qdq:
            self.unsupported(node)
        self.add(node, op, [self.name(node.input[0])])

    def fused_unary(self, node, a, op: Op, attrs=None):
        attrs = dict(attrs or {})
        if "fused" in a:
            attrs["fused"] = tuple(_s(v) for v in a["fused"])
        self.add(node, op, [self.name(node.input[0])], attrs)

    def unsupported(self, node):
        """Fail on a node outside ``_OPS``, naming its domain or op type and the supported
        list."""
        if node.domain not in ONNX_DOMAINS:
            self.fail(
                node, f"op domain {node.domain!r} is not supported; supported ops: {SUPPORTED_TEXT}"
            )
        qop = " (QOperator models are run by the node interpreter)"
        part = _FUSION_ONLY.get(node.op_type)
        hint = (
            f" ({'in a float model, ' if node.op_type in _QDQ_ONLY else ''}{node.op_type} is "
            f"imported only as part of {part}, fused at import; this one is not in such a "
            "pattern)"
            if part
            else ""
        )
        self.fail(
            node,
            f"unsupported op type {node.op_type!r}{hint}; supported ops: {SUPPORTED_TEXT}"
            + (qop if node.op_type in QOPERATOR else ""),
        )

    def run(self) -> Graph:
        for node in self.model.graph.node:
            if node.output and node.output[0] in self.absorbed:
                continue
            if node.domain == FUSED_DOMAIN:
                handler = _FUSED[node.op_type]
            else:
                domain = "" if node.domain in ONNX_DOMAINS else node.domain
                handler = _OPS.get((domain, node.op_type)) or _PATTERNS.get((domain, node.op_type))
                if handler is None:
                    self.unsupported(node)
            handler(self, node, _attrs(node))
        return self.finish()

    def finish(self) -> Graph:
        g = self.model.graph
        inits = set(self.consts) | {i.name for i in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1 or len(g.output) != 1:
            raise ModelImportError(
                f"{self.src}: hwsim runs single-input single-output models; this "
                f"one has inputs {[i.name for i in inputs]} and outputs "
                f"{[o.name for o in g.output]}"
            )
        meta_keys = {p.key for p in self.model.metadata_props}
        self.brevitas = self.brevitas or any(n.domain == QONNX_DOMAIN for n in g.node)
        if self.brevitas and "hwsim" not in meta_keys:
            qonnx.resolve_unquantized(self)
        out = self.name(g.output[0].name)
        dtype = str(input_dtype(inputs[0]))
        if dtype != "float32":  # token ids: only embedding lookups read them
            for n in self.nodes:
                if inputs[0].name in n.inputs and n.op is not Op.EMBEDDING:
                    raise ModelImportError(
                        f"{self.src}: node {n.name!r} ({n.op.value}): reads the model's "
                        f"{dtype} input {inputs[0].name!r}; hwsim feeds an integer input only "
                        "to embedding lookups (Gather of a constant table)"
                    )
        produced = {n.output for n in self.nodes} | {inputs[0].name}
        for n in self.nodes:
            for t in n.inputs:
                if t not in produced:
                    raise ModelImportError(
                        f"{self.src}: node {n.name!r}: input {t!r} is not produced "
                        "by any supported node"
                    )
        if out not in produced:
            raise ModelImportError(f"{self.src}: output {g.output[0].name!r} is not computed")
        # quantized tensors the IR has no node for (an unbind's transposed tensor and pieces)
        self.act_quant = {t: q for t, q in self.act_quant.items() if t in produced}
        meta = {p.key: p.value for p in self.model.metadata_props}
        if "hwsim" in meta:
            try:
                meta["hwsim"] = json.loads(meta["hwsim"])
            except json.JSONDecodeError as e:
                raise ModelImportError(
                    f"{self.src}: metadata 'hwsim' is not valid JSON: {e}"
                ) from e
        name = self.model.graph.name or Path(self.src).stem
        graph = Graph(
            name,
            self.src,
            inputs[0].name,
            _shape(inputs[0])[1:],
            out,
            self.nodes,
            self.act_quant,
            meta,
            g.output[0].name,
            input_dtype=dtype,
            float_ranges=(
                {} if "hwsim" in meta else {t: _range(tq) for t, tq in self.act_quant.items()}
            ),
        )
        self.check_shapes(graph)
        if self.brevitas and "hwsim" not in meta and graph.quantized:
            qonnx.bias_notes(self, graph)
        if self.import_notes:
            graph.meta["import_notes"] = list(self.import_notes)
        return graph

    def check_shapes(self, graph: Graph) -> None:
        """Every layer's weights fit the shape of its input (inferred on the IR): a mismatch is
        a ModelImportError naming the node, not an error deep in the datapath at run time."""
        shapes = {graph.input: (1,) + tuple(d if isinstance(d, int) else 1 for d in
                                            graph.input_shape)}
        for n in graph.nodes:
            ins = [shapes[t] for t in n.inputs]
            k = ins[0][-1] if n.attrs.get("nd") else int(np.prod(ins[0][1:]))
            if n.op is Op.DENSE and k != n.weight.shape[1]:
                raise ModelImportError(
                    f"{self.src}: node {n.name!r} (dense): input has "
                    f"{k} features {'on its last axis' if n.attrs.get('nd') else 'per sample'} "
                    f"but the weight {tuple(n.weight.shape)} expects {n.weight.shape[1]}"
                )
            if n.op is Op.CONV and (
                len(ins[0]) != 4 or ins[0][1] != n.weight.shape[1] * n.attrs["group"]
            ):
                raise ModelImportError(
                    f"{self.src}: node {n.name!r} (conv): input {ins[0]} does not fit weight "
                    f"{tuple(n.weight.shape)} with group {n.attrs['group']}"
                )
            try:
                shapes[n.output] = SHAPES[n.op](n, ins)
            except (ValueError, IndexError) as e:
                raise ModelImportError(
                    f"{self.src}: node {n.name!r} ({n.op.value}): inputs of shapes {ins}: {e}"
                ) from None


def _unary(op: Op) -> Callable:
    """The handler of an op imported as the one-input IR op ``op`` without attributes."""

    def handler(imp: _Importer, node, a) -> None:
        imp.add(node, op, [imp.name(node.input[0])])

    return handler


# The op table: (domain, ONNX op type) -> handler, called as ``handler(importer, node, attrs)``,
# in the order the supported list shows them. Adding an op is one entry here (and its handler).
_OPS: dict[tuple[str, str], Callable[[_Importer, onnx.NodeProto, dict], None]] = {
    ("", "Conv"): _Importer.conv,
    ("", "Gemm"): _Importer.gemm,
    ("", "MatMul"): _Importer.matmul,
    ("", "Relu"): _unary(Op.RELU),
    ("", "Clip"): _Importer.clip,
    ("", "Add"): _Importer.binary,
    ("", "Mul"): _Importer.binary,
    ("", "Sub"): _Importer.binary,
    ("", "Div"): _Importer.binary,
    ("", "MaxPool"): functools.partial(_Importer.pool, op=Op.MAXPOOL),
    ("", "AveragePool"): functools.partial(_Importer.pool, op=Op.AVGPOOL),
    ("", "GlobalAveragePool"): _unary(Op.GAP),
    ("", "ReduceMean"): _Importer.reduce_mean,
    ("", "Flatten"): _Importer.flatten,
    ("", "Reshape"): _Importer.reshape,
    ("", "Squeeze"): _Importer.squeeze,
    ("", "Unsqueeze"): _Importer.unsqueeze,
    ("", "Transpose"): _Importer.transpose,
    ("", "Gather"): _Importer.gather,
    ("", "Slice"): _Importer.slice,
    ("", "Split"): _Importer.split,
    ("", "Concat"): _Importer.concat,
    ("", "Resize"): _Importer.resize,
    ("", "BatchNormalization"): _Importer.batchnorm,
    ("", "LayerNormalization"): _Importer.layernorm,
    ("", "Softmax"): _Importer.softmax,
    ("", "Gelu"): _Importer.gelu,
    ("", "Sigmoid"): _unary(Op.SIGMOID),
    ("", "HardSigmoid"): _Importer.hard_sigmoid,
    ("", "HardSwish"): functools.partial(_Importer.hard_sigmoid, op=Op.HARDSWISH),
    ("", "Erf"): functools.partial(_Importer.qdq_unary, op=Op.ERF),
    ("", "Tanh"): functools.partial(_Importer.qdq_unary, op=Op.TANH),
    ("", "Identity"): _Importer.identity,
    ("", "Dropout"): _Importer.identity,
    ("", "Constant"): _Importer.constant,
    ("", "QuantizeLinear"): _Importer.quantize_linear,
    ("", "DequantizeLinear"): _Importer.dequantize_linear,
    (QONNX_DOMAIN, "Quant"): qonnx.quant,
    (QONNX_DOMAIN, "BipolarQuant"): qonnx.bipolar_quant,
    (QONNX_DOMAIN, "Trunc"): qonnx.trunc,
}

# Ops that start a pattern imported as a whole (their chain's nodes are absorbed), outside the
# supported list: (domain, op type) -> handler.
_PATTERNS: dict[tuple[str, str], Callable[[_Importer, onnx.NodeProto, dict], None]] = {
    ("", "DynamicQuantizeLinear"): _Importer.dynamic_quantize_linear,
}

# The nodes hwsim.graph.fold.fuse writes (domain hwsim.fused): op type -> handler.
_FUSED: dict[str, Callable[[_Importer, onnx.NodeProto, dict], None]] = {
    "Gelu": _Importer.gelu,
    "SiLU": lambda imp, node, a: imp.fused_unary(node, a, Op.SILU),
    "HardSwish": functools.partial(_Importer.hard_sigmoid, op=Op.HARDSWISH),
    "LayerNormalization": _Importer.layernorm,
}

# ONNX ops imported only inside a fused pattern, with the pattern named in the error
_FUSION_ONLY = {  # (Erf and Tanh: in float models; a QDQ model imports them as ops)
    "Erf": "a GELU, 0.5 x (1 + erf(x / sqrt(2)))",
    "Tanh": "a Tanh-form GELU, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))",
    "Pow": "a decomposed LayerNormalization (ReduceMean, Sub, Pow 2, ReduceMean, Add, Sqrt, "
    "Div)",
    "Sqrt": "a decomposed LayerNormalization (ReduceMean, Sub, Pow 2, ReduceMean, Add, Sqrt, "
    "Div)",
}

RESIZE_REPEATS = frozenset(
    {
        ("half_pixel", "round_prefer_floor"),
        ("half_pixel", "round_prefer_ceil"),
        ("pytorch_half_pixel", "round_prefer_floor"),
        ("pytorch_half_pixel", "round_prefer_ceil"),
        ("asymmetric", "floor"),
        ("tf_half_pixel_for_nn", "floor"),
    }
)
"""Resize's ``(coordinate_transformation_mode, nearest_mode)`` pairs whose nearest neighbour at
every integer factor ``f`` is ``np.repeat`` by ``f``. Output index ``o = f k + r`` (``0 <= r <
f``) maps to ``k + d``: half_pixel and pytorch_half_pixel (the output is longer than 1) ``d =
(2r + 1 - f) / 2f``, inside ``(-1/2, 1/2)`` and never a tie, so either rounding gives ``k``;
asymmetric ``d = r / f`` in ``[0, 1)`` and tf_half_pixel_for_nn ``d = (r + 1/2) / f`` in ``(0,
1)``, so floor gives ``k``. Every other pair is not a repeat at some factor in 2..4 in
onnxruntime (asymmetric with round_prefer_floor is one at ``f = 2`` only; align_corners
depends on the axis's length) -- measured by tests/graph/test_resize.py over all 20 pairs.
Resize-10 has neither attribute: onnxruntime runs it as asymmetric / floor when upsampling."""
RESIZE_SUPPORTED = (
    "supported: Resize with mode 'nearest' and an integer upsampling factor >= 1 per axis, 1 on "
    "the batch axis 0 (constant scales, or sizes that are multiples of the input's, the batch "
    "entry the batch size), coordinate_transformation_mode / nearest_mode half_pixel or "
    "pytorch_half_pixel with round_prefer_floor or round_prefer_ceil, asymmetric or "
    "tf_half_pixel_for_nn with floor (np.repeat in onnxruntime), no antialias / "
    "exclude_outside"
)
"""What a Resize error names as supported (:meth:`_Importer.resize`)."""

SUPPORTED = tuple(op for _, op in _OPS)
"""The ONNX op types hwsim imports (``_OPS``'s, in its order; ``Quant`` is QONNX's)."""
_QDQ_ONLY = ("Erf", "Tanh")
"""Op types imported on their own only in QDQ models (:meth:`_Importer.qdq_unary`)."""
_DISPLAY = {(QONNX_DOMAIN, t): f"{t} (QONNX)" for t in qonnx.QONNX_OPS} | {
    ("", t): f"{t} (QDQ models)" for t in _QDQ_ONLY
}
SUPPORTED_TEXT = (
    ", ".join(_DISPLAY.get(key, key[1]) for key in _OPS)
    + "; computations on shapes and constants only (Shape, Size, ConstantOfShape, Range, "
    "Expand, Where, Equal, Cast, Gather, ...) fold at import, and GELU (Erf or Tanh form), "
    "SiLU, HardSwish and decomposed LayerNormalization patterns fuse; onnxruntime "
    "quantize_dynamic's DynamicQuantizeLinear -> MatMulInteger / ConvInteger -> Cast -> Mul "
    "[-> Add] chains import as dense / conv layers"
)
"""The supported list as error messages show it: the op types, other domains named."""


def _s(v) -> str:
    """An ONNX string attribute as str."""
    return v.decode() if isinstance(v, bytes) else str(v)


def _range(tq: TensorQuant) -> tuple[float, float]:
    """The reals a Q/DQ pair can output: ``(DQ(q_min), DQ(q_max))``, float32 as DequantizeLinear
    computes them. The float reference of a QDQ model clamps each quantized activation to it:
    onnxruntime's quantizer removes a ReLU (or ReLU6/Clip) whose output range its QuantizeLinear
    already enforces (zero point = the type's minimum: DQ(q_min) = 0), so without the clamp the
    float run would have no activation there."""
    s = np.float32(tq.scale)
    lo = np.float32(tq.fmt.min - tq.zero_point) * s
    hi = np.float32(tq.fmt.max - tq.zero_point) * s
    return float(lo), float(hi)


def _dequant(q, s, z, axis):
    s = np.asarray(s, np.float32)
    z = np.asarray(z, np.int64)
    if s.ndim == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    return ((q.astype(np.int64) - z).astype(np.float32) * s).astype(np.float32)


def import_model(path_or_model, source: str | None = None) -> Graph:
    """Import a float, QDQ or hwsim-quantized ONNX model into the IR; a ``.tflite`` path is a
    TFLite / LiteRT int8 model (:func:`hwsim.graph.tflite_import.import_tflite`)."""
    if not isinstance(path_or_model, onnx.ModelProto) and str(path_or_model).lower().endswith(
        ".tflite"
    ):
        from hwsim.graph.tflite_import import import_tflite

        return import_tflite(path_or_model)
    if isinstance(path_or_model, onnx.ModelProto):
        model, src = path_or_model, source or "<model>"
    else:
        src = str(path_or_model)
        model = load_onnx(path_or_model)
    if is_qoperator(model):
        ops = sorted(
            {
                n.op_type
                for n in model.graph.node
                if n.op_type in QOPERATOR or n.domain == "com.microsoft"
            }
        )
        raise ModelImportError(
            f"{src}: QOperator model ({', '.join(ops)}); run it with "
            "`hwsim run` (hwsim.api.run)"
        )
    return _Importer(model, src).run()
