"""The quantized model file: ONNX that other tools open, with hwsim's settings in metadata.

``save(program, path)`` writes the program as an ONNX model (opset 21):

* weights as integer initializers (int8/uint8 for widths <= 8, int16/uint16 up to 16) followed
  by ``DequantizeLinear`` (per-tensor, or per-channel on axis 0), so any ONNX tool sees the
  exact integer weights and their scales. An N-d dense (a ``MatMul`` on ``(N, ..., K)``) is a
  ``MatMul`` by the ``(K, O)`` weight (per channel on axis 1), then, if it has a bias, an
  ``Add`` of the ``(O,)`` bias, which the importer folds back into the dense in a file with
  ``hwsim`` metadata;
* a bias as a float initializer, except where the layer reads and writes static activations:
  there the int32 ``round_half_even(b / (sx * sw))`` the program adds, behind a
  ``DequantizeLinear`` of scale ``f32(sx * sw)``, the float bias in the metadata;
* every statically quantized activation (``static`` scheme, or ``data-free``) as a
  ``QuantizeLinear -> DequantizeLinear`` pair when its width is 4, 8 or 16 bits (int8 held as
  uint8 with zero point + 128: the same values, and the type onnxruntime fuses), and as a QONNX
  ``Quant`` node (domain ``qonnx.custom_op.general``; inputs x, scale, zero point, bit width;
  ``signed``, ``narrow=0``, ``rounding_mode="ROUND"``) for other widths;
* per-sample and per-token (``dynamic``/``shift``) activations have no ONNX operator; they and
  everything the datapath needs (accumulator width, overflow, reduction order, tile rows and
  tile-register width, register kind, rounding, float or integer non-linearities, true weight
  widths, the scheme) are in the ``hwsim`` metadata entry, JSON, ``format_version`` 1, which is
  authoritative when the file is loaded back;
* every other IR op as standard ONNX ops (:data:`_WRITERS`, one entry per op), written so that
  the importer reads back the same node: transpose, reshape, gather (int64 constant indices),
  slice, reduce_mean, matmul, erf, tanh, sigmoid, hardsigmoid and softmax as the ONNX op of
  that name; embedding as ``Gather`` of the float table at the integer input; concat on its
  axis, a constant part (a class token) ``Expand``-ed to ``[N, 1, ...]`` from the input's
  ``Shape`` (so onnxruntime runs any batch; import folds it back to the constant); layernorm as
  ``LayerNormalization`` (a scale of ones where the node has no gamma); gelu as opset-20
  ``Gelu`` (``approximate`` ``none`` / ``tanh``); silu as ``Sigmoid`` and ``Mul``, hardswish as
  ``HardSwish`` (or ``HardSigmoid`` and ``Mul`` for other alpha / beta), both fused back at
  import; mul_act as ``Mul``, add_const / div_const as ``Add`` / ``Div`` of the constant;
  resize as a nearest ``Resize`` by its constant float32 ``scales`` (the factors;
  ``asymmetric`` / ``floor``, torch's ``nn.Upsample``).

So a per-tensor 8-bit model is a plain QDQ model that onnxruntime runs, every Conv / Gemm and
residual Add on its integer kernels; other schemes open in Netron/QONNX but only hwsim executes
their integer semantics. An op the format cannot hold (an unfolded BatchNorm of an imported QDQ
model, a dense of onnxruntime's dynamic quantization) is an HwsimError naming the node, never a
file that runs differently. Files are written atomically.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwsim.errors import HwsimError
from hwsim.graph.ir import Graph, Node, Op
from hwsim.graph.onnx_import import QONNX_DOMAIN, ModelImportError, import_model
from hwsim.graph.shapes import infer_shapes
from hwsim.io import atomic_write_bytes
from hwsim.numerics import IntFormat
from hwsim.quant.scheme import ActMode, ActSpec, LayerSpec, QuantProgram, Scheme, SchemeError

FORMAT_VERSION = 1
_F32 = np.float32
_BEFORE_START = np.iinfo(np.int64).min
"""A Slice end that lies before the first element whatever the axis size (a negative step
running to the start: the IR's stop ``None``)."""


def _container(fmt: IntFormat):
    if fmt.bits <= 8:
        return (np.int8, TensorProto.INT8) if fmt.signed else (np.uint8, TensorProto.UINT8)
    return (np.int16, TensorProto.INT16) if fmt.signed else (np.uint16, TensorProto.UINT16)


def _zp_tensor(name: str, fmt: IntFormat, value) -> TensorProto:
    if fmt.bits == 4:
        return helper.make_tensor(
            name,
            TensorProto.INT4 if fmt.signed else TensorProto.UINT4,
            np.shape(value),
            np.ravel(value).tolist(),
        )
    dt, _ = _container(fmt)
    return numpy_helper.from_array(np.asarray(value).astype(dt), name)


def _file_act(fmt: IntFormat, zero_point: int) -> tuple[IntFormat, int]:
    """The container and zero point a static activation of format ``fmt`` is written with in
    its QuantizeLinear / DequantizeLinear pair: int8 as uint8 with zero point + 128 (the same
    dequantized values ``s (q - z)``, the same QuantizeLinear results shifted by 128:
    ``sat_u8(round_half_even(x / s) + z + 128) = sat_s8(round_half_even(x / s) + z) + 128``),
    every other format as itself. onnxruntime's x86 QDQ fusions take uint8 activations only
    (``QDQIsInt8Allowed()`` is false, ``ConvNodeGroupSelector::Check``); its
    ``QDQS8ToU8Transformer`` converts an int8 pair only where the QuantizeLinear has a single
    consumer, which ``EnsureUniqueDQForNodeUnit`` has already broken for a tensor read by two
    nodes (a residual block's input). Such a tensor kept int8 beside uint8 ones: its Conv / Add
    consumers ran as float ops on dequantized values. The program's format stays in the
    metadata (``acts``), which is what ``load`` reads."""
    if fmt.bits == 8 and fmt.signed:
        return IntFormat(8, False), int(zero_point) + 128
    return fmt, zero_point


def _json_scalar(v):
    """A NumPy scalar in the metadata (a format's ``signed`` computed as ``lo < 0``) as the
    plain value JSON holds."""
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")


class _Writer:
    """The ONNX graph of one program under construction: nodes, initializers, and the name each
    IR tensor is read under (its DequantizeLinear's output once it is quantized)."""

    def __init__(self, program: QuantProgram):
        self.p = program
        self.g: Graph = program.graph
        self.inits: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []
        self.rename: dict[str, str] = {}
        self.made: set[str] = set()  # shared helper tensors already written (batch shapes)
        self.weights_meta: dict[str, dict] = {}
        self.shapes = infer_shapes(self.g)
        out_spec = program.acts.get(self.g.output)
        # a quantized output: the layer writes '<out>_raw', the final DequantizeLinear '<out>'
        self.raw = (
            {self.g.output: f"{self.g.output}_raw"}
            if out_spec is not None and out_spec.mode is ActMode.STATIC
            else {}
        )

    def tn(self, t: str) -> str:
        """The name the producer of IR tensor ``t`` writes."""
        return self.raw.get(t, t)

    def src(self, t: str) -> str:
        """The name readers of IR tensor ``t`` read (past its quantizer, if any)."""
        return self.rename.get(self.tn(t), self.tn(t))

    def const(self, name: str, arr) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def add(self, op_type: str, ins: list[str], out: str, name: str, **attrs) -> None:
        self.nodes.append(helper.make_node(op_type, ins, [out], name=name, **attrs))

    def after(self, t: str) -> None:
        """Insert the activation quantizer of tensor ``t`` (if static) and reroute readers."""
        spec = self.p.acts.get(t)
        if spec is None or spec.mode is not ActMode.STATIC or t in self.rename:
            return
        dq = t if t in self.raw else f"{t}_dq"
        t = self.tn(t)
        s = self.const(f"{t}_scale", _F32(spec.scale))
        if spec.fmt.bits in (4, 8, 16):
            fmt, zp = _file_act(spec.fmt, spec.zero_point)
            self.inits.append(_zp_tensor(f"{t}_zp", fmt, zp))
            self.add("QuantizeLinear", [t, s, f"{t}_zp"], f"{t}_q", f"{t}_Q")
            self.add("DequantizeLinear", [f"{t}_q", s, f"{t}_zp"], dq, f"{t}_DQ")
        else:
            z = self.const(f"{t}_zp", _F32(spec.zero_point))
            bw = self.const(f"{t}_bits", _F32(spec.fmt.bits))
            self.nodes.append(
                helper.make_node(
                    "Quant",
                    [t, s, z, bw],
                    [dq],
                    name=f"{t}_Quant",
                    domain=QONNX_DOMAIN,
                    signed=int(spec.fmt.signed),
                    narrow=0,
                    rounding_mode="ROUND",
                )
            )
        self.rename[t] = dq

    def weights(self, n: Node, transpose: bool = False) -> str:
        """The dequantized weights of MAC node ``n``: its integers in their container, a
        DequantizeLinear per tensor or per output channel (axis 0; ``transpose``: a MatMul's
        ``(K, O)`` weight, axis 1). Their true width goes to the metadata."""
        wq = n.wq
        dt, _ = _container(wq.fmt)
        q = np.ascontiguousarray(wq.q.T if transpose else wq.q)
        wname = self.const(f"{n.name}_wq", q.astype(dt))
        sname = self.const(f"{n.name}_wscale", np.asarray(wq.scale, _F32))
        zfmt = IntFormat(max(wq.fmt.bits, 8), wq.fmt.signed) if wq.fmt.bits != 4 else wq.fmt
        self.inits.append(_zp_tensor(f"{n.name}_wzp", zfmt, np.asarray(wq.zero_point)))
        w = f"{n.name}_w"
        self.add(
            "DequantizeLinear",
            [wname, sname, f"{n.name}_wzp"],
            w,
            f"{n.name}_wDQ",
            axis=1 if transpose else 0,
        )
        self.weights_meta[n.name] = {"bits": wq.fmt.bits, "signed": wq.fmt.signed}
        return w

    def bias(self, n: Node) -> str:
        """The bias input of MAC node ``n`` (after :meth:`weights`). Where the layer reads a
        static activation and writes one, the program adds ``B = round_half_even(b / (sx *
        sw))`` (float64 quotient of the float32 scales: the integer executor's rule) to its
        accumulator: the file holds ``B`` as int32 behind a DequantizeLinear of scale
        ``f32(sx * sw)`` (per output channel for per-channel weights), so onnxruntime's fused
        kernel adds ``B`` itself. A float bias there is rounded again by onnxruntime's
        ``WeightBiasQuantization`` in float32 (:func:`hwsim.qops.ort_quantized_bias`), one
        integer off for a few channels in a thousand. The float bias ``b`` goes to the
        metadata (``weights``), which :func:`load` restores. Elsewhere (a per-sample input,
        a float output, an integer bias from an imported model, a ``B`` outside the layer's
        accumulator): the float bias, as before."""
        b = np.asarray(n.bias, _F32)
        ints = self.bias_ints(n)
        if ints is None:
            return self.const(f"{n.name}_b", b)
        B, scale = ints
        q = self.const(f"{n.name}_bq", B.astype(np.int32))
        s = self.const(f"{n.name}_bscale", scale)
        self.add("DequantizeLinear", [q, s], f"{n.name}_b", f"{n.name}_bDQ", axis=0)
        self.weights_meta[n.name]["bias"] = b.tolist()
        return f"{n.name}_b"

    def bias_ints(self, n: Node) -> tuple[np.ndarray, np.ndarray] | None:
        """``(B, f32(sx * sw))`` for :meth:`bias`, or None where the file keeps the float bias."""
        if n.bias_q is not None:
            return None
        specs = [self.p.acts.get(t) for t in (n.inputs[0], n.output)]
        if any(sp is None or sp.mode is not ActMode.STATIC for sp in specs):
            return None
        sx = np.float32(specs[0].scale)
        sw = np.asarray(n.wq.scale, _F32)
        with np.errstate(all="ignore"):
            B = np.rint(np.asarray(n.bias, _F32).astype(np.float64) / (np.float64(sx) * sw))
        acc = self.p.layer(n.name).acc.format
        lo, hi = max(acc.min, np.iinfo(np.int32).min), min(acc.max, np.iinfo(np.int32).max)
        if not (np.all(np.isfinite(B)) and np.all((B >= lo) & (B <= hi))):
            return None
        return B.astype(np.int64), np.asarray(sx * sw, _F32)

    def batch_shape(self, rank: int) -> str:
        """The int64 vector ``[N, 1, ..., 1]`` (``rank`` entries, ``N`` the batch size, from
        the input's Shape): a constant with a batch axis of 1 ``Expand``-ed to it runs at any
        batch in onnxruntime; the importer folds it back to the constant."""
        name = f"hwsim_batch_{rank}"
        if name not in self.made:
            if "hwsim_batch" not in self.made:
                self.add("Shape", [self.g.input], "hwsim_batch", "hwsim_batch", end=1)
                self.made.add("hwsim_batch")
            ones = self.const(f"{name}_ones", np.ones(rank - 1, np.int64))
            self.add("Concat", ["hwsim_batch", ones], name, name, axis=0)
            self.made.add(name)
        return name

    def build(self) -> onnx.ModelProto:
        g = self.g
        _check_exportable(g)
        self.after(g.input)
        for n in g.nodes:
            _WRITERS[n.op](self, n, [self.src(t) for t in n.inputs], self.tn(n.output))
            self.after(n.output)
        out_name = g.output if g.output in self.raw else self.src(g.output)
        out_rank = len(self.shapes[g.output])
        outputs = [
            helper.make_tensor_value_info(
                out_name, TensorProto.FLOAT, ["batch"] + [None] * (out_rank - 1)
            )
        ]
        in_shape = ["batch"] + [d if isinstance(d, int) else None for d in g.input_shape]
        in_type = helper.np_dtype_to_tensor_dtype(np.dtype(g.input_dtype))
        inputs = [helper.make_tensor_value_info(g.input, in_type, in_shape)]
        graph = helper.make_graph(self.nodes, g.name, inputs, outputs, self.inits)
        opsets = [helper.make_opsetid("", 21)]
        if any(nd.domain == QONNX_DOMAIN for nd in self.nodes):
            opsets.append(helper.make_opsetid(QONNX_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name="hwsim")
        model.ir_version = 10
        p = self.p
        meta = {
            "format_version": FORMAT_VERSION,
            "scheme": p.scheme.as_dict() if p.scheme else None,
            "acts": {self.tn(t): s.as_dict() for t, s in p.acts.items()},
            "layers": {k: v.as_dict() for k, v in p.layers.items()},
            "weights": self.weights_meta,
        }
        text = json.dumps(meta, sort_keys=True, default=_json_scalar)
        helper.set_model_props(model, {"hwsim": text})
        return model


def to_onnx(program: QuantProgram) -> onnx.ModelProto:
    """Build the ONNX model of a quantized program (see the module docstring)."""
    return _Writer(program).build()


# --- one writer per IR op: ``write(writer, node, input names, output name)`` -----------------
_Write = Callable[[_Writer, Node, list, str], None]


def _onnx_op(op_type: str, **fixed) -> _Write:
    """An IR op written as the ONNX op ``op_type`` of the same inputs (attributes ``fixed``)."""

    def write(w: _Writer, n: Node, ins: list, out: str) -> None:
        w.add(op_type, ins, out, n.name, **fixed)

    return write


def _with_attrs(op_type: str, **attrs: Callable[[dict], object]) -> _Write:
    """The ONNX op ``op_type`` with attributes computed from the node's ``attrs``."""

    def write(w: _Writer, n: Node, ins: list, out: str) -> None:
        w.add(op_type, ins, out, n.name, **{k: f(n.attrs) for k, f in attrs.items()})

    return write


def _with_const(op_type: str) -> _Write:
    """``op_type(x, c)`` with the node's constant ``Node.weight`` as the second input."""

    def write(w: _Writer, n: Node, ins: list, out: str) -> None:
        c = w.const(f"{n.name}_c", n.weight.astype(_F32))
        w.add(op_type, [ins[0], c], out, n.name)

    return write


def _conv(w: _Writer, n: Node, ins: list, out: str) -> None:
    a = n.attrs
    args = [ins[0], w.weights(n)]
    if n.bias is not None:
        args.append(w.bias(n))
    w.add(
        "Conv",
        args,
        out,
        n.name,
        strides=list(a["strides"]),
        pads=list(a["pads"]),
        dilations=list(a["dilations"]),
        group=a["group"],
    )


def _dense(w: _Writer, n: Node, ins: list, out: str) -> None:
    """``(N, K)``: Gemm by the ``(O, K)`` weight; N-d: MatMul by ``(K, O)`` [+ Add bias]."""
    if not n.attrs.get("nd"):
        args = [ins[0], w.weights(n)] + ([w.bias(n)] if n.bias is not None else [])
        w.add("Gemm", args, out, n.name, transB=1)
        return
    bias = None if n.bias is None else w.const(f"{n.name}_b", n.bias.astype(_F32))
    wt = w.weights(n, transpose=True)
    if bias is None:
        w.add("MatMul", [ins[0], wt], out, n.name)
        return
    w.add("MatMul", [ins[0], wt], f"{out}_matmul", n.name)
    w.add("Add", [f"{out}_matmul", bias], out, f"{n.name}_bias")


def _mul(w: _Writer, n: Node, ins: list, out: str) -> None:
    c = n.weight.astype(_F32)
    if c.ndim == 1:  # per channel (axis 1) of an input of any rank
        c = c.reshape((1, -1) + (1,) * (len(w.shapes[n.inputs[0]]) - 2))
    w.add("Mul", [ins[0], w.const(f"{n.name}_c", c)], out, n.name)


def _pool(w: _Writer, n: Node, ins: list, out: str) -> None:
    a = n.attrs
    kw = dict(kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=list(a["pads"]))
    if n.op is Op.AVGPOOL:
        kw["count_include_pad"] = a["count_include_pad"]
    w.add("MaxPool" if n.op is Op.MAXPOOL else "AveragePool", ins, out, n.name, **kw)


def _clip(w: _Writer, n: Node, ins: list, out: str) -> None:
    lo = w.const(f"{n.name}_min", _F32(n.attrs["min"]))
    hi = w.const(f"{n.name}_max", _F32(n.attrs["max"]))
    w.add("Clip", [ins[0], lo, hi], out, n.name)


def _reshape(w: _Writer, n: Node, ins: list, out: str) -> None:
    shape = w.const(f"{n.name}_shape", np.asarray(n.attrs["shape"], np.int64))
    w.add("Reshape", [ins[0], shape], out, n.name)


def _gather(w: _Writer, n: Node, ins: list, out: str) -> None:
    idx = w.const(f"{n.name}_indices", np.asarray(n.attrs["indices"], np.int64))
    w.add("Gather", [ins[0], idx], out, n.name, axis=int(n.attrs["axis"]))


def _embedding(w: _Writer, n: Node, ins: list, out: str) -> None:
    table = w.const(f"{n.name}_table", n.weight.astype(_F32))
    w.add("Gather", [table, ins[0]], out, n.name, axis=0)


def _slice(w: _Writer, n: Node, ins: list, out: str) -> None:
    sl = n.attrs["slices"]

    def column(i: int, name: str) -> str:
        v = [_BEFORE_START if s[i] is None else s[i] for s in sl]
        return w.const(f"{n.name}_{name}", np.asarray(v, np.int64).reshape(len(sl)))

    args = [ins[0], column(1, "starts"), column(2, "ends"), column(0, "axes"), column(3, "steps")]
    w.add("Slice", args, out, n.name)


def _concat(w: _Writer, n: Node, ins: list, out: str) -> None:
    args = list(ins)
    for i, c in n.attrs.get("consts", ()):  # in input order: each index is its final place
        c = np.asarray(c, _F32)
        part = f"{n.name}_const{i}"
        value = w.const(f"{part}_value", c)
        w.add("Expand", [value, w.batch_shape(c.ndim)], part, f"{n.name}_expand{i}")
        args.insert(i, part)
    w.add("Concat", args, out, n.name, axis=int(n.attrs.get("axis", 1)))


def _layernorm(w: _Writer, n: Node, ins: list, out: str) -> None:
    axis = int(n.attrs["axis"])
    norm = w.shapes[n.inputs[0]][axis:]
    gamma = n.weight if n.weight is not None else np.ones(norm, _F32)
    args = [ins[0], w.const(f"{n.name}_scale", gamma.astype(_F32))]
    if n.bias is not None:
        args.append(w.const(f"{n.name}_bias", n.bias.astype(_F32)))
    eps = float(n.attrs["epsilon"])
    w.add("LayerNormalization", args, out, n.name, axis=axis, epsilon=eps)


def _gelu(w: _Writer, n: Node, ins: list, out: str) -> None:
    form = n.attrs["form"]
    w.add("Gelu", ins, out, n.name, approximate="none" if form == "erf" else "tanh")


def _silu(w: _Writer, n: Node, ins: list, out: str) -> None:
    """``x * Sigmoid(x)``: the pattern the importer fuses into one SiLU named after the Mul."""
    w.add("Sigmoid", ins, f"{out}_sigmoid", f"{n.name}_sigmoid")
    w.add("Mul", [ins[0], f"{out}_sigmoid"], out, n.name)


def _hardswish(w: _Writer, n: Node, ins: list, out: str) -> None:
    """ONNX HardSwish (alpha 1/6, beta 1/2 as float32); other constants as ``x *
    HardSigmoid(x)``, which the importer fuses into one HardSwish named after the Mul."""
    alpha, beta = float(n.attrs["alpha"]), float(n.attrs["beta"])
    if _F32(alpha) == _F32(1 / 6) and _F32(beta) == _F32(0.5):
        w.add("HardSwish", ins, out, n.name)
        return
    gate = f"{out}_hardsigmoid"
    w.add("HardSigmoid", ins, gate, f"{n.name}_hardsigmoid", alpha=alpha, beta=beta)
    w.add("Mul", [ins[0], gate], out, n.name)


def _reduce_mean(w: _Writer, n: Node, ins: list, out: str) -> None:
    axes = w.const(f"{n.name}_axes", np.asarray(n.attrs["axes"], np.int64))
    w.add("ReduceMean", [ins[0], axes], out, n.name, keepdims=int(n.attrs["keepdims"]))


def _resize(w: _Writer, n: Node, ins: list, out: str) -> None:
    """Nearest ``Resize`` by constant ``scales`` (the integer factors as float32) in the mode
    torch's ``nn.Upsample`` writes, which the importer reads back as the same factors."""
    scales = w.const(f"{n.name}_scales", np.asarray(n.attrs["factors"], _F32))
    w.add(
        "Resize",
        [ins[0], "", scales],
        out,
        n.name,
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )


_WRITERS: dict[Op, _Write] = {
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
    Op.SOFTMAX: _with_attrs("Softmax", axis=lambda a: int(a["axis"])),
    Op.IDENTITY: _onnx_op("Identity"),
    Op.MATMUL: _onnx_op("MatMul"),
    Op.TRANSPOSE: _with_attrs("Transpose", perm=lambda a: [int(v) for v in a["perm"]]),
    Op.GATHER: _gather,
    Op.EMBEDDING: _embedding,
    Op.SLICE: _slice,
    Op.LAYERNORM: _layernorm,
    Op.GELU: _gelu,
    Op.SIGMOID: _onnx_op("Sigmoid"),
    Op.SILU: _silu,
    Op.HARDSIGMOID: _with_attrs(
        "HardSigmoid", alpha=lambda a: float(a["alpha"]), beta=lambda a: float(a["beta"])
    ),
    Op.HARDSWISH: _hardswish,
    Op.MUL_ACT: _onnx_op("Mul"),
    Op.ADD_CONST: _with_const("Add"),
    Op.DIV_CONST: _with_const("Div"),
    Op.REDUCE_MEAN: _reduce_mean,
    Op.RESIZE: _resize,
    Op.ERF: _onnx_op("Erf"),
    Op.TANH: _onnx_op("Tanh"),
}
"""IR op -> its writer; an op not listed (``batchnorm``: only an imported QDQ model keeps one
unfolded) cannot be saved."""


def _check_exportable(g: Graph) -> None:
    """A program the file format cannot hold faithfully is refused (HwsimError naming the node)
    rather than written wrong: an op without a writer, a dense of onnxruntime's dynamic
    quantization (float in, float out: no place in a QDQ file)."""
    for n in g.nodes:
        why = None
        if n.op not in _WRITERS:
            why = f"op {n.op.value!r} cannot be saved (the file format has no form for it)"
        elif n.attrs.get("ort_dynamic"):
            why = "a layer of onnxruntime's dynamic quantization cannot be saved"
        if why:
            raise HwsimError(f"{g.source}: node {n.name!r}: {why}")


def save(program: QuantProgram, path: str | os.PathLike) -> None:
    """Write ``program`` as an ONNX file, atomically."""
    model = to_onnx(program)
    atomic_write_bytes(path, model.SerializeToString())


def program_from_graph(graph: Graph) -> QuantProgram:
    """The program of an imported quantized graph: hwsim metadata if present (authoritative),
    else a plain QDQ model run with onnxruntime's semantics (int32 wrapping accumulators,
    ``ort`` registers)."""
    meta = graph.meta.get("hwsim")
    if not isinstance(meta, dict):
        acts = {
            t: ActSpec(
                ActMode.STATIC,
                q.fmt,
                q.scale,
                q.zero_point,
                qonnx_rounding=getattr(q, "qonnx_rounding", None),
                bipolar=getattr(q, "bipolar", False),
            )
            for t, q in graph.act_quant.items()
        }
        return QuantProgram(graph, acts, {}, None)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelImportError(
            f"{graph.source}: hwsim metadata format_version "
            f"{meta.get('format_version')!r}, this hwsim reads {FORMAT_VERSION}"
        )

    def section(key: str) -> dict:
        if key not in meta:
            raise SchemeError(f"missing section {key!r}")
        if not isinstance(meta[key], dict):
            raise SchemeError(f"section {key!r} must be an object, got {meta[key]!r}")
        return meta[key]

    try:
        # the file's tensor names: the output may have been renamed by the DQ alias
        acts = {t: ActSpec.from_dict(d, f"acts: tensor {t!r}") for t, d in section("acts").items()}
        layers = {
            k: LayerSpec.from_dict(d, f"layers: layer {k!r}") for k, d in section("layers").items()
        }
        scheme = Scheme.from_dict(meta["scheme"]) if meta.get("scheme") else None
        weights = section("weights")
        tensors = {graph.input, graph.output} | {n.output for n in graph.nodes}
        names = {n.name for n in graph.nodes}
        for what, keys, known, kind in (
            ("acts", acts, tensors, "activation tensors"),
            ("layers", layers, names, "nodes"),
            ("weights", weights, {n.name for n in graph.nodes if n.wq is not None}, "MAC layers"),
        ):
            unknown = sorted(set(keys) - known)
            if unknown:
                raise SchemeError(
                    f"section {what!r} names {unknown}, which the model does not have "
                    f"(expected {kind} of the model)"
                )
        # the metadata, not onnxruntime's plan of the file, gives the semantics: the file runs
        # as the program it was written from, its layers (weights: the plan's fused layers) and
        # its activations (scales: the plan's uint8 tensors, whose QLinearAdd / pool / softmax
        # formulas see zero points + 128; the file's int8 activations are uint8, _file_act)
        graph.act_quant = {
            t: dataclasses.replace(q, scale_name=None) for t, q in graph.act_quant.items()
        }
        for n in graph.nodes:
            if n.wq is not None:
                n.wq.source = None
            w = weights.get(n.name)
            if w is not None and n.wq is not None:
                where = f"weights: layer {n.name!r}"
                if not isinstance(w, dict):
                    raise SchemeError(f"{where}: expected an object of fields, got {w!r}")
                for k in ("bits", "signed"):
                    if k not in w:
                        raise SchemeError(f"{where}: missing field {k!r}")
                n.wq.fmt = IntFormat(int(w["bits"]), bool(w["signed"]))
                n.wq.fmt.check(n.wq.q, f"{n.name} weights")
                if "bias" in w:
                    n.bias, n.bias_q = _float_bias(w["bias"], n, where), None
    except (KeyError, TypeError, ValueError) as e:
        raise ModelImportError(f"{graph.source}: malformed hwsim metadata: {e}") from e
    return QuantProgram(graph, acts, layers, scheme)


def _float_bias(value, n: Node, where: str) -> np.ndarray:
    """The float bias of layer ``n`` in the metadata (``weights``: its ``bias``, the float32
    values of the float bias whose program rounding is the file's int32 bias)."""
    want = None if n.bias is None else np.shape(n.bias)
    b = None
    if isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        b = np.asarray(value, np.float64).astype(_F32)
    if b is None or want is None or b.shape != want:
        got = f"a list of {len(value)}" if isinstance(value, list) else repr(value)[:40]
        raise SchemeError(
            f"{where}: field 'bias' must list the layer's {want[0] if want else 0} float bias "
            f"values (numbers), got {got}"
        )
    return b


def load(path: str | os.PathLike) -> QuantProgram:
    """Load a quantized model (hwsim-written or QDQ) as a runnable program."""
    graph = import_model(path)
    if not graph.quantized:
        raise ModelImportError(f"{path}: a float model; quantize it first (hwsim quantize)")
    return program_from_graph(graph)
