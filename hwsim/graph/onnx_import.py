"""ONNX -> IR import: float models, QDQ models, and hwsim-quantized models.

Float models: the ops in ``SUPPORTED``; BatchNormalization is folded into the Conv before it;
Gemm/MatMul with a constant weight become ``Op.DENSE``; Add/Mul by a constant fold into the
conv/dense before them where that layer has no other consumer. An op or attribute outside this
set is a :class:`ModelImportError` naming the file, the node, its op type and the supported
list. Ops are dispatched through one table, ``_OPS``: (domain, op type) -> handler.

QDQ models (``onnxruntime.quantization.quantize_static`` with ``QuantFormat.QDQ``):
``DequantizeLinear`` of a constant becomes a layer's integer weights (``Node.wq``) or int32 bias
(``Node.bias_q``); a ``QuantizeLinear -> DequantizeLinear`` pair on an activation becomes
``Graph.act_quant[tensor]``; the Q/DQ nodes themselves disappear. hwsim-quantized models are QDQ
models with hwsim's settings in the ``hwsim`` metadata entry (see :mod:`hwsim.quant.store`).

Models made of QOperator ops (QLinearConv, ConvInteger, ...) are not turned into the IR; they are
run node by node by :func:`hwsim.execute.run_qoperator_batch` -- :func:`is_qoperator` tells them apart.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from hwsim.errors import HwsimError
from hwsim.graph.ir import Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.shapes import SHAPES
from hwsim.numerics import IntFormat

ONNX_DOMAINS = ("", "ai.onnx")
"""The default ONNX operator domain's two spellings (``_OPS`` keys use ``""``)."""
QONNX_DOMAIN = "qonnx.custom_op.general"
QOPERATOR = ("QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")

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
    """True if the graph uses QOperator ops (run by the node interpreter, not the IR)."""
    return any(n.op_type in QOPERATOR or n.domain == "com.microsoft" for n in model.graph.node)


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


class _Importer:
    def __init__(self, model: onnx.ModelProto, source: str):
        self.model = model
        self.src = source
        g = model.graph
        self.consts: dict[str, np.ndarray] = {
            i.name: numpy_helper.to_array(i) for i in g.initializer
        }
        self.qconst: dict[str, tuple] = {}  # DQ(const) output -> (q, scale, zp, fmt, axis)
        self.alias: dict[str, str] = {}  # DQ(Q(t)) output -> t
        self.act_quant: dict[str, TensorQuant] = {}
        self.nodes: list[Node] = []
        self.uses: dict[str, int] = {}
        for n in g.node:
            for t in n.input:
                self.uses[t] = self.uses.get(t, 0) + 1

    def fail(self, node, msg: str):
        raise ModelImportError(f"{self.src}: node {node.name or '?'!r} ({node.op_type}): {msg}")

    def opset(self) -> int:
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 0

    def rank(self, tensor: str) -> int | None:
        """The rank of ``tensor`` by ONNX shape inference (None if unknown)."""
        if not hasattr(self, "_ranks"):
            self._ranks = {}
            try:
                inferred = onnx.shape_inference.infer_shapes(self.model).graph
            except Exception:  # inference is best effort; unknown ranks are handled by callers
                inferred = self.model.graph
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

    def const(self, node, t: str, what: str) -> np.ndarray:
        if t in self.consts:
            return self.consts[t]
        if t in self.qconst:
            q, s, z, _, axis, _ = self.qconst[t]
            return _dequant(q, s, z, axis)
        self.fail(node, f"{what} {t!r} must be a constant (initializer or Constant)")

    # -- Q/DQ ---------------------------------------------------------------------------------
    def quantize_linear(self, node, a):
        x = node.input[0]
        if x in self.consts or x in self.qconst:
            self.fail(node, "QuantizeLinear of a constant is not supported (store int weights)")
        s, z, fmt = self._qparams(node, a, node.input[1], _input(node, 2))
        if np.ndim(s) != 0:
            self.fail(node, "activation quantization must be per-tensor (scalar scale)")
        tq = TensorQuant(float(s), int(z), fmt, scale_name=node.input[1])
        t = self.name(x)
        old = self.act_quant.get(t)
        if old is not None and old != tq:
            self.fail(node, f"tensor {t!r} is quantized twice with different parameters")
        self.act_quant[t] = tq
        self.alias[node.output[0]] = t

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
            elem = next((i.data_type for i in self.model.graph.initializer if i.name == x), None)
            fmt = _ONNX_INT.get(elem) if elem is not None else None
            if fmt is None:
                fmt = IntFormat(32, True) if q.dtype == np.int32 else None
            if fmt is None:
                self.fail(node, f"unsupported quantized constant type {q.dtype}")
            axis = int(a.get("axis", 1))
            if np.ndim(s) == 1 and axis != 0 and q.ndim > 1:
                self.fail(node, f"per-channel weight scales must be on axis 0, got axis {axis}")
            self.qconst[node.output[0]] = (
                q.astype(np.int64),
                s,
                np.asarray(z, np.int64),
                fmt,
                axis,
                x,
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

    def qonnx_quant(self, node, a):
        """QONNX ``Quant`` (x, scale, zero point, bit width) on an activation: a Q/DQ pair of
        any width (round half to even, ``narrow=0``)."""
        if a.get("narrow", 0) or (a.get("rounding_mode", b"ROUND") not in (b"ROUND", "ROUND")):
            self.fail(node, "only Quant with narrow=0 and rounding_mode=ROUND is supported")
        s = float(self.const(node, node.input[1], "scale"))
        z = float(self.const(node, node.input[2], "zero point"))
        bits = float(self.const(node, node.input[3], "bit width"))
        if bits != int(bits) or not 2 <= bits <= 16 or z != int(z):
            self.fail(
                node,
                f"bit width must be an integer in [2, 16] and zero point an integer, "
                f"got {bits}, {z}",
            )
        tq = TensorQuant(s, int(z), IntFormat(int(bits), bool(a.get("signed", 1))))
        t = self.name(node.input[0])
        self.act_quant[t] = tq
        self.alias[node.output[0]] = t

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

    # -- layers -----------------------------------------------------------------------------
    def add(self, node, op: Op, inputs, attrs=None, **kw) -> Node:
        n = Node(
            node.name or f"{op.value}_{len(self.nodes)}",
            op,
            tuple(inputs),
            node.output[0],
            attrs or {},
            **kw,
        )
        self.nodes.append(n)
        return n

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
            if np.any(z != 0) or fmt.bits != 32:
                self.fail(node, "a quantized bias must be int32 with zero point 0")
            return _dequant(q, s, z, 0).reshape(n_out), q.reshape(n_out).astype(np.int64)
        b = self.const(node, t, "bias").astype(np.float32)
        if b.size != n_out:
            self.fail(node, f"bias has {b.size} entries, expected {n_out}")
        return b.reshape(n_out), None

    def conv(self, node, a):
        x = self.name(node.input[0])
        w, wq = self.weight_of(node, node.input[1])
        if w.ndim != 4:
            self.fail(node, f"only 2-D convolution is supported (weight rank 4), got rank {w.ndim}")
        b, bq = self.bias_of(node, _input(node, 2), w.shape[0])
        ks = tuple(a.get("kernel_shape", w.shape[2:]))
        if ks != tuple(w.shape[2:]):
            self.fail(node, f"kernel_shape {ks} does not match the weight {w.shape}")
        auto_pad = _auto_pad(a)
        if auto_pad not in ("NOTSET", "VALID"):
            self.fail(node, f"auto_pad={auto_pad} is not supported (use explicit pads)")
        pads = tuple(a.get("pads", (0, 0, 0, 0)))
        attrs = {
            "strides": tuple(a.get("strides", (1, 1))),
            "pads": (pads[0], pads[1], pads[2], pads[3]),
            "dilations": tuple(a.get("dilations", (1, 1))),
            "group": int(a.get("group", 1)),
        }
        self.add(node, Op.CONV, [x], attrs, weight=w, bias=b, wq=wq, bias_q=bq)

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
        if node.input[0] in self.consts or node.input[1] not in (*self.consts, *self.qconst):
            self.fail(node, "MatMul needs a dynamic first input and a constant 2-D weight")
        w, wq = self.weight_of(node, node.input[1], transpose=True)
        if w.ndim != 2:
            self.fail(node, f"MatMul weight must be 2-D, got shape {w.shape}")
        self.add(node, Op.DENSE, [self.name(node.input[0])], {}, weight=w, wq=wq)

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
            if x in self.act_quant:  # a QDQ model quantized without BN folding: keep it
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

    def fold_const(self, node, op_type: str, x: str, c: np.ndarray) -> bool:
        """Fold ``x + c`` / ``x * c`` into the float conv/dense producing ``x`` if possible."""
        prev = self.nodes[-1] if self.nodes else None
        if prev is None or prev.output != x or prev.op not in (Op.CONV, Op.DENSE):
            return False
        if self.uses.get(x, 0) != 1 or prev.wq is not None:
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
        return True

    def binary(self, node, a):
        op_type = node.op_type
        ins = list(node.input)
        cidx = [i for i, t in enumerate(ins) if t in self.consts or t in self.qconst]
        if not cidx:
            if op_type == "Mul":
                self.fail(node, "Mul of two activations is not supported (Mul by a constant is)")
            self.add(node, Op.ADD, [self.name(t) for t in ins])
            return
        if len(cidx) == 2:
            self.fail(node, "both inputs are constants")
        c = self.const(node, ins[cidx[0]], "constant")
        x = self.name(ins[1 - cidx[0]])
        if self.fold_const(node, op_type, x, c):
            return
        if op_type == "Add":
            self.fail(
                node,
                "Add of a constant is supported only right after a Conv/Gemm/MatMul "
                "(it folds into the bias)",
            )
        cv = np.asarray(c, np.float32)
        if cv.size != 1 and cv.ndim not in (1, 3, 4):
            self.fail(node, f"Mul constant must be a scalar or per-channel, got shape {cv.shape}")
        self.add(node, Op.MUL, [x], {}, weight=cv.reshape(-1) if cv.size > 1 else cv.reshape(()))

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
        lo, hi = a.get("min", -np.inf), a.get("max", np.inf)
        if _input(node, 1):
            lo = float(self.const(node, node.input[1], "min"))
        if _input(node, 2):
            hi = float(self.const(node, node.input[2], "max"))
        self.add(node, Op.CLIP, [self.name(node.input[0])], {"min": lo, "max": hi})

    def flatten(self, node, a):
        if int(a.get("axis", 1)) != 1:
            self.fail(node, "only Flatten with axis=1 is supported")
        self.add(node, Op.FLATTEN, [self.name(node.input[0])])

    def reshape(self, node, a):
        shape = [int(v) for v in self.const(node, node.input[1], "shape")]
        if a.get("allowzero", 0):
            self.fail(node, "allowzero=1 is not supported")
        if len(shape) < 2:
            self.fail(
                node,
                f"Reshape to shape {shape} drops the batch axis; hwsim keeps the batch "
                "as axis 0, so the target shape must have rank >= 2 (e.g. [1, -1] or "
                "[0, -1] for (N, features))",
            )
        self.add(node, Op.RESHAPE, [self.name(node.input[0])], {"shape": tuple(shape)})

    def concat(self, node, a):
        axis = int(a["axis"])
        if axis not in (1, -3) and axis != 1:
            self.fail(node, f"only Concat along channels (axis=1) is supported, got {axis}")
        self.add(node, Op.CONCAT, [self.name(i) for i in node.input], {"axis": 1})

    def softmax(self, node, a):
        axis = self.softmax_axis(node, a)
        self.add(node, Op.SOFTMAX, [self.name(node.input[0])], {"axis": axis})

    def unsupported(self, node):
        """Fail on a node outside ``_OPS``, naming its domain or op type and the supported
        list."""
        if node.domain not in ONNX_DOMAINS:
            self.fail(
                node, f"op domain {node.domain!r} is not supported; supported ops: {SUPPORTED_TEXT}"
            )
        qop = " (QOperator models are run by the node interpreter)"
        self.fail(
            node,
            f"unsupported op type {node.op_type!r}; supported ops: {SUPPORTED_TEXT}"
            + (qop if node.op_type in QOPERATOR else ""),
        )

    def run(self) -> Graph:
        for node in self.model.graph.node:
            domain = "" if node.domain in ONNX_DOMAINS else node.domain
            handler = _OPS.get((domain, node.op_type))
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
        out = self.name(g.output[0].name)
        for i, n in enumerate(self.nodes):
            if n.op is Op.SOFTMAX and i != len(self.nodes) - 1:
                raise ModelImportError(
                    f"{self.src}: node {n.name!r} (Softmax): Softmax is supported "
                    "only as the last layer"
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
            float_ranges=(
                {} if "hwsim" in meta else {t: _range(tq) for t, tq in self.act_quant.items()}
            ),
        )
        self.check_shapes(graph)
        return graph

    def check_shapes(self, graph: Graph) -> None:
        """Every layer's weights fit the shape of its input (inferred on the IR): a mismatch is
        a ModelImportError naming the node, not an error deep in the datapath at run time."""
        shapes = {graph.input: (1,) + tuple(d if isinstance(d, int) else 1 for d in
                                            graph.input_shape)}
        for n in graph.nodes:
            ins = [shapes[t] for t in n.inputs]
            if n.op is Op.DENSE and int(np.prod(ins[0][1:])) != n.weight.shape[1]:
                raise ModelImportError(
                    f"{self.src}: node {n.name!r} (dense): input has "
                    f"{int(np.prod(ins[0][1:]))} features per sample but the weight "
                    f"{tuple(n.weight.shape)} expects {n.weight.shape[1]}"
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
    ("", "MaxPool"): functools.partial(_Importer.pool, op=Op.MAXPOOL),
    ("", "AveragePool"): functools.partial(_Importer.pool, op=Op.AVGPOOL),
    ("", "GlobalAveragePool"): _unary(Op.GAP),
    ("", "Flatten"): _Importer.flatten,
    ("", "Reshape"): _Importer.reshape,
    ("", "Concat"): _Importer.concat,
    ("", "BatchNormalization"): _Importer.batchnorm,
    ("", "Softmax"): _Importer.softmax,
    ("", "Identity"): _unary(Op.IDENTITY),
    ("", "Dropout"): _unary(Op.IDENTITY),
    ("", "Constant"): _Importer.constant,
    ("", "QuantizeLinear"): _Importer.quantize_linear,
    ("", "DequantizeLinear"): _Importer.dequantize_linear,
    (QONNX_DOMAIN, "Quant"): _Importer.qonnx_quant,
}

SUPPORTED = tuple(op for _, op in _OPS)
"""The ONNX op types hwsim imports (``_OPS``'s, in its order; ``Quant`` is QONNX's)."""
_DISPLAY = {(QONNX_DOMAIN, "Quant"): "Quant (QONNX)"}
SUPPORTED_TEXT = ", ".join(_DISPLAY.get(key, key[1]) for key in _OPS)
"""The supported list as error messages show it: the op types, other domains named."""


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
    """Import a float, QDQ or hwsim-quantized ONNX model into the IR."""
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
