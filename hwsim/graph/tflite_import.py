"""TFLite / LiteRT int8 models (``.tflite`` flatbuffers) -> IR.

Read with the ``tflite`` package (the flatbuffer schema's generated Python, an optional extra:
``pip install -e '.[tflite]'``). A model converted with full-integer post-training quantization
(int8 activations, int8 weights per channel or per tensor, int32 biases) becomes the IR of a
quantized graph that runs on the ``tflite`` scale register (``tflite-single`` for the
``TFLITE_SINGLE_ROUNDING`` build: :func:`hwsim.execute.tflite.load_tflite_program`);
docs/networks.md, "TFLite / LiteRT models".

* **Layout.** TFLite is NHWC, hwsim NCHW: every 4-D activation is held transposed (``(N, H, W,
  C)`` -> ``(N, C, H, W)``), convolution weights ``(O, kh, kw, I)`` become ``(O, I, kh, kw)``,
  depthwise ``(1, kh, kw, C m)`` become ``(C m, 1, kh, kw)`` with ``group = C``; axes of
  CONCATENATION / SOFTMAX / MEAN are mapped. A RESHAPE of a 4-D tensor (a Keras Flatten) reads
  the values in TFLite's (H, W, C) order: it imports as ``transpose`` to NHWC, ``reshape``, and
  (to a 4-D result) ``transpose`` back; a transpose that does not move any value (only axes of
  size 1 move) is left out. The SHAPE / STRIDED_SLICE / PACK ops that compute a Flatten's
  shape for a dynamic batch are dropped (the reshape's target is the output tensor's shape).
* **Ops.** CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED (the datapath's conv / dense with the
  file's integer weights and int32 biases), ADD, MUL (of two activations), AVERAGE_POOL_2D,
  MEAN (over height and width), SOFTMAX (TFLite's own integer rules, :mod:`hwsim.qops.tflite`,
  in ``Node.attrs["tflite"]``), MAX_POOL_2D, RESHAPE, CONCATENATION (inputs on the output's
  grid, as TFLite requires for int8), PAD (folded into the convolutions it feeds: both pad
  with the zero point, the real 0), QUANTIZE of the float model input (the input's
  quantization, an ``identity`` node with the rounding of the chosen kernels' QUANTIZE:
  :func:`hwsim.numerics.tflite.quantize`) and DEQUANTIZE of the model output. Anything else
  is a :class:`ModelImportError` naming the file, the operator and the supported list.
* **Fused activations** (NONE, RELU, RELU6, RELU_N1_TO_1): the integer clamp TFLite computes
  (:func:`hwsim.numerics.tflite.activation_range`), with ``kernels="xnnpack"`` the XNNPACK
  delegate's on the ops it runs (:func:`hwsim.numerics.tflite.xnnpack_activation_range`:
  ``lrintf``, half to even, where TFLite's ``roundf`` breaks ties away from zero); where it is
  tighter than int8, a ``clip``
  node after the op whose float bounds dequantize those integers exactly. Every quantized tensor
  also gets its range as the float reference's clamp (``Graph.float_ranges``, as for QDQ
  models), so the float run has the ReLU that the int8 range alone enforces.

The graph carries hwsim's metadata (``meta["hwsim"]``: every activation's static quantization,
every node on an int32 wrapping accumulator and the ``tflite`` register), so
:func:`hwsim.quant.store.program_from_graph` gives the program ``hwsim run`` executes, and
``meta["tflite"]`` (the input's quantization rule and the kernel family).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from hwsim.graph.ir import MAC_OPS, Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.onnx_import import ModelImportError
from hwsim.graph.shapes import SHAPES
from hwsim.numerics import IntFormat
from hwsim.numerics import tflite as ntfl

INT8 = IntFormat(8, True)
KERNELS = ("xnnpack", "optimized", "reference")
"""Which LiteRT CPU kernels a model is emulated with where they differ (docs/networks.md,
"TFLite / LiteRT models"): ``xnnpack`` (the interpreter's default: ``OpResolverType.AUTO`` or
``BUILTIN``, the XNNPACK delegate taking the ops it supports), ``optimized``
(``BUILTIN_WITHOUT_DEFAULT_DELEGATES``) or ``reference`` (``BUILTIN_REF``). They differ in the
QUANTIZE of the float input (:func:`hwsim.numerics.tflite.quantize`), the default register
(:data:`DEFAULT_REGISTER`), MEAN over height and width with ``keep_dims`` (eq. T7, ``xnnpack``
and ``optimized``, vs T6) and SOFTMAX (the x86 float table vs gemmlowp's fixed-point exp, which
hwsim does not emulate: an import error with ``reference``)."""
DEFAULT_REGISTER = {"xnnpack": "tflite-single", "optimized": "tflite", "reference": "tflite"}
"""The scale register of the TFLite integer rules (ADD, MUL, AVERAGE_POOL_2D, MEAN) of each
kernel family, and of its CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED unless
:data:`MAC_REGISTER` names another (docs/networks.md)."""
MAC_REGISTER = {"xnnpack": "ort"}
"""The XNNPACK delegate's convolutions and fully connected layers requantize in binary32
(XNNPACK ``src/operators/convolution-nhwc.c``: ``requantization_scale[c] = input_scale *
kernel_scale[c] / output_scale`` in ``float``; the ``qs8_qc8w`` ``..._minmax_fp32`` GEMM /
IGEMM / DWCONV micro-kernels: ``f32(acc) * scale``, clamped, rounded half to even by
``cvtps``): hwsim's ``ort`` register (``f32(f32(sx sw) / sy)``, half to even)."""
SUPPORTED_OPS = (
    "CONV_2D",
    "DEPTHWISE_CONV_2D",
    "FULLY_CONNECTED",
    "ADD",
    "MUL",
    "AVERAGE_POOL_2D",
    "MAX_POOL_2D",
    "MEAN",
    "RESHAPE",
    "SOFTMAX",
    "CONCATENATION",
    "PAD",
    "QUANTIZE",
    "DEQUANTIZE",
)
_SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK", "CAST", "GATHER", "CONCATENATION", "SLICE")
"""Ops that may compute a RESHAPE's shape operand (dropped when that is all they do)."""
_MALFORMED = (struct.error, IndexError, ValueError, AttributeError, TypeError, KeyError,
              ArithmeticError, UnicodeDecodeError)  # fmt: skip
"""What reading a truncated or corrupt flatbuffer raises (turned into a ModelImportError)."""
_TO_IR4 = (0, 3, 1, 2)  # NHWC -> NCHW
_TO_NHWC = (0, 2, 3, 1)  # NCHW -> NHWC
_AXIS4 = {0: 0, 1: 2, 2: 3, 3: 1}  # a TFLite axis of a 4-D tensor -> the IR's


def _tflite():
    try:
        import tflite
    except ImportError as e:
        raise ModelImportError(
            "reading .tflite files needs the 'tflite' package, in the 'tflite' extra: "
            f"pip install -e '.[tflite]' ({e})"
        ) from None
    return tflite


def _enum_names(cls) -> dict[int, str]:
    return {v: k for k, v in vars(cls).items() if not k.startswith("_") and isinstance(v, int)}


def _moves_values(shape: tuple, perm: tuple) -> bool:
    """A transpose by ``perm`` of a tensor of ``shape`` changes the order of its values (the axes
    longer than 1 are not kept in order)."""
    kept = [p for p in perm if shape[p] != 1]
    return kept != sorted(kept)


def _same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite's SAME padding (``ComputePaddingHeightWidth``): ``(before, after)``, the odd
    cell after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _Importer:
    def __init__(self, buf: bytes, src: str, kernels: str):
        self.buf = buf
        if kernels not in KERNELS:
            raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
        self.tfl = _tflite()
        self.src = src
        self.kernels = kernels
        try:
            self.model = self.tfl.Model.GetRootAsModel(buf, 0)
            n_sub = self.model.SubgraphsLength()
        except Exception as e:  # a file that is not a flatbuffer model
            raise ModelImportError(f"{src}: not a TFLite flatbuffer model ({e})") from None
        if n_sub != 1:
            raise ModelImportError(f"{src}: hwsim reads models with one subgraph, got {n_sub}")
        self.g = self.model.Subgraphs(0)
        self.op_names = _enum_names(self.tfl.BuiltinOperator)
        self.act_names = _enum_names(self.tfl.ActivationFunctionType)
        self.type_names = _enum_names(self.tfl.TensorType)
        self.nodes: list[Node] = []
        self.names: dict[int, str] = {}  # TFLite tensor index -> IR tensor name
        self.used: set[str] = set()
        self.act_quant: dict[str, TensorQuant] = {}
        self.shapes: dict[str, tuple] = {}  # IR tensor -> IR shape at batch 1
        self.padded: dict[int, tuple[int, tuple[int, int, int, int]]] = {}
        self.k = -1  # the operator being read
        self.ops = [self.g.Operators(i) for i in range(self.g.OperatorsLength())]
        self.codes = [self.op_code(op) for op in self.ops]

    # -- reading the flatbuffer ----------------------------------------------------------------
    def op_code(self, op) -> str:
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        return self.op_names.get(code, f"builtin code {code}")

    def fail(self, msg: str):
        if self.k < 0:
            raise ModelImportError(f"{self.src}: {msg}")
        op = self.ops[self.k]
        out = op.Outputs(0) if op.OutputsLength() else -1
        name = (self.tname(out) or f"t{out}") if out >= 0 else "?"
        raise ModelImportError(
            f"{self.src}: operator {self.k} ({self.codes[self.k]}, output {name!r}): {msg}"
        )

    def tensor(self, i: int):
        return self.g.Tensors(int(i))

    def tname(self, i: int) -> str:
        """Tensor ``i``'s name, never raising (``""`` when unnamed or unreadable)."""
        try:
            raw = self.tensor(i).Name()
            return raw.decode("utf-8", "replace") if raw is not None else ""
        except _MALFORMED:
            return ""

    def shape(self, i: int) -> tuple:
        return tuple(int(d) for d in self.tensor(i).ShapeAsNumpy())

    def type_name(self, i: int) -> str:
        return self.type_names.get(self.tensor(i).Type(), str(self.tensor(i).Type()))

    def data(self, i: int, dtype) -> np.ndarray | None:
        """A constant tensor's values (None: not a constant)."""
        t = self.tensor(i)
        b = self.model.Buffers(t.Buffer())
        if b is None:
            return None
        if b.DataLength():
            raw = b.DataAsNumpy().tobytes()
        elif b.Offset() > 1:
            raw = self.buf[b.Offset() : b.Offset() + b.Size()]
        else:
            return None
        return np.frombuffer(raw, dtype).reshape(self.shape(i)).copy()

    def quant(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """``(scale float32, zero_point int64, quantized_dimension)`` of tensor ``i``."""
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        z = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(q.ScaleLength())
        return (
            np.asarray(q.ScaleAsNumpy(), np.float32),
            np.asarray(z, np.int64),
            int(q.QuantizedDimension()),
        )

    def options(self, cls_name: str):
        op = self.ops[self.k]
        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = getattr(self.tfl, cls_name)()
        opts.Init(table.Bytes, table.Pos)
        return opts

    def inputs(self) -> list[int]:
        return [int(i) for i in self.ops[self.k].InputsAsNumpy()]

    def output(self) -> int:
        op = self.ops[self.k]
        if op.OutputsLength() != 1:
            self.fail(f"{op.OutputsLength()} outputs, hwsim reads ops with one")
        return int(op.Outputs(0))

    # -- tensors -------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        name, j = hint, 0
        while name in self.used:
            j += 1
            name = f"{hint}#{j}"
        self.used.add(name)
        return name

    def name(self, i: int) -> str:
        """The IR name of an activation tensor another op produced (or the model input)."""
        if i not in self.names:
            self.fail(
                f"input tensor {self.tname(i)!r} is not produced by a "
                "supported operator (a constant where an activation is expected?)"
            )
        return self.names[i]

    def act(self, i: int) -> TensorQuant:
        """The int8 per-tensor quantization of activation tensor ``i``."""
        if self.type_name(i) != "INT8":
            self.fail(
                f"tensor {self.tname(i)!r} is {self.type_name(i)}: hwsim "
                "reads int8 activations (full-integer quantization)"
            )
        q = self.quant(i)
        if q is None or q[0].size != 1:
            self.fail(
                f"tensor {self.tname(i)!r}: an int8 activation needs one scale and zero point"
            )
        return TensorQuant(float(q[0][0]), int(q[1][0]), INT8)

    def define(self, i: int) -> str:
        """An IR name for the op's output tensor ``i``, with its quantization."""
        name = self.fresh(self.tname(i) or f"t{i}")
        self.names[i] = name
        self.act_quant[name] = self.act(i)
        return name

    def add(self, op: Op, inputs, output: str, attrs=None, name=None, **kw) -> Node:
        n = Node(
            name or self.fresh(f"{self.codes[self.k].lower()}_{self.k}"),
            op,
            tuple(inputs),
            output,
            attrs or {},
            **kw,
        )
        try:
            self.shapes[output] = tuple(
                int(d) for d in SHAPES[op](n, [self.shapes[t] for t in n.inputs])
            )
        except (KeyError, ValueError, IndexError) as e:
            self.fail(f"shapes {[self.shapes.get(t) for t in n.inputs]} do not fit: {e}")
        self.nodes.append(n)
        return n

    def tmp(self, hint: str, tq: TensorQuant) -> str:
        """A new IR tensor quantized as ``tq``."""
        t = self.fresh(hint)
        self.act_quant[t] = tq
        return t

    def emit(self, op: Op, inputs, out: int, attrs=None, activation: int = 0, **kw) -> Node:
        """Node ``op`` writing TFLite tensor ``out``, then the fused activation's ``clip``."""
        act = self.act_names.get(activation, str(activation))
        if act not in ntfl.ACTIVATIONS:
            self.fail(
                f"fused activation {act} is not supported (supported: "
                f"{', '.join(ntfl.ACTIVATIONS)})"
            )
        name = self.define(out)
        tq = self.act_quant[name]
        # the XNNPACK delegate's clamp on the ops it runs (all but AVERAGE_POOL_2D, float-only
        # there), TFLite's elsewhere
        rule = ntfl.activation_range
        if self.kernels == "xnnpack" and op is not Op.AVGPOOL:
            rule = ntfl.xnnpack_activation_range
        lo, hi = rule(act, tq.scale, tq.zero_point, INT8.min, INT8.max)
        if (lo, hi) == (INT8.min, INT8.max):
            return self.add(op, inputs, name, attrs, **kw)
        pre = self.tmp(f"{name}/pre_{act.lower()}", tq)
        node = self.add(op, inputs, pre, attrs, **kw)
        bounds = tq.clip_bounds(lo, hi)
        self.add(
            Op.CLIP,
            [pre],
            name,
            {**bounds, "tflite_activation": act},
            name=self.fresh(f"{node.name}/{act.lower()}"),
        )
        return node

    def to_ir_layout(self, out: int) -> tuple:
        s = self.shape(out)
        return tuple(s[p] for p in _TO_IR4) if len(s) == 4 else s

    # -- weights -------------------------------------------------------------------------------
    def weight(self, i: int, axis: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """int8 weight tensor ``i``: ``(q int64 in TFLite layout, scale, zero point)``, the
        scale a scalar or a vector along ``axis`` (its output channels)."""
        if self.type_name(i) != "INT8":
            self.fail(f"weight {self.tname(i)!r} is {self.type_name(i)}: hwsim reads int8 weights")
        q = self.data(i, np.int8)
        qp = self.quant(i)
        if q is None or qp is None:
            self.fail(f"weight {self.tname(i)!r} must be a quantized constant")
        s, z, dim = qp
        if s.size > 1 and (dim != axis or s.size != q.shape[axis]):
            self.fail(
                f"weight scales on dimension {dim} ({s.size} of them): per-channel scales "
                f"are expected on the output channels, dimension {axis}"
            )
        if np.any(z != 0):
            self.fail(
                "weights with a nonzero zero point: TFLite's int8 kernels take symmetric weights"
            )
        return q.astype(np.int64), (s if s.size > 1 else s.reshape(())), np.zeros((), np.int64)

    def bias(self, i: int, n_out: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        if i < 0:
            return None, None
        if self.type_name(i) != "INT32":
            self.fail(f"bias {self.tname(i)!r} is {self.type_name(i)}: hwsim reads int32 biases")
        q = self.data(i, np.int32)
        qp = self.quant(i)
        if q is None or qp is None or q.size != n_out:
            self.fail(
                f"bias {self.tname(i)!r}: a quantized int32 constant of {n_out} values expected"
            )
        s = qp[0] if qp[0].size > 1 else qp[0].reshape(())
        bq = q.reshape(n_out).astype(np.int64)
        return (bq.astype(np.float32) * s).astype(np.float32), bq

    def mac(self, op: Op, x: str, w_tfl, w_ir, s, z, b: int, attrs: dict, out: int, opts):
        wq = WeightQuant(np.ascontiguousarray(w_ir), s, z, INT8)
        bias, bias_q = self.bias(b, w_ir.shape[0])
        self.emit(
            op,
            [x],
            out,
            attrs,
            opts.FusedActivationFunction(),
            weight=wq.dequantize(),
            bias=bias,
            wq=wq,
            bias_q=bias_q,
        )

    # -- ops -----------------------------------------------------------------------------------
    def conv_input(self, i: int, pads: list[int]) -> str:
        """A convolution's input, a folded PAD's amounts added to ``pads`` (t, l, b, r)."""
        if i in self.padded:
            src, (t, b, le, r) = self.padded[i]
            pads[0] += t
            pads[1] += le
            pads[2] += b
            pads[3] += r
            return self.name(src)
        return self.name(i)

    def conv_geometry(self, x: int, kh: int, kw: int, opts) -> tuple[dict, list[int]]:
        sh, sw = opts.StrideH(), opts.StrideW()
        dh, dw = opts.DilationHFactor(), opts.DilationWFactor()
        pads = [0, 0, 0, 0]
        if opts.Padding() == self.tfl.Padding.SAME:
            _, h, w, _ = self.shape(x)
            (pads[0], pads[2]), (pads[1], pads[3]) = (
                _same_pads(h, kh, sh, dh),
                _same_pads(w, kw, sw, dw),
            )
        return {"strides": (sh, sw), "dilations": (dh, dw)}, pads

    def conv_2d(self):
        ins, out = self.inputs(), self.output()
        q, s, z = self.weight(ins[1], 0)  # (O, kh, kw, I)
        geo, pads = self.conv_geometry(
            ins[0], q.shape[1], q.shape[2], self.options("Conv2DOptions")
        )
        x = self.conv_input(ins[0], pads)
        c_in = self.shapes[x][1]
        if c_in != q.shape[3]:
            self.fail(
                f"input has {c_in} channels, the filter {q.shape[3]} (grouped CONV_2D is "
                "not supported)"
            )
        attrs = {**geo, "pads": tuple(pads), "group": 1}
        self.mac(
            Op.CONV,
            x,
            q,
            q.transpose(0, 3, 1, 2),
            s,
            z,
            ins[2] if len(ins) > 2 else -1,
            attrs,
            out,
            self.options("Conv2DOptions"),
        )

    def depthwise_conv_2d(self):
        ins, out = self.inputs(), self.output()
        opts = self.options("DepthwiseConv2DOptions")
        q, s, z = self.weight(ins[1], 3)  # (1, kh, kw, C m)
        geo, pads = self.conv_geometry(ins[0], q.shape[1], q.shape[2], opts)
        x = self.conv_input(ins[0], pads)
        c_in = self.shapes[x][1]
        if q.shape[0] != 1 or q.shape[3] % c_in:
            self.fail(f"depthwise filter {q.shape} for {c_in} input channels")
        w = q[0].transpose(2, 0, 1)[:, None]  # (C m, 1, kh, kw)
        attrs = {**geo, "pads": tuple(pads), "group": c_in}
        self.mac(Op.CONV, x, q, w, s, z, ins[2] if len(ins) > 2 else -1, attrs, out, opts)

    def fully_connected(self):
        ins, out = self.inputs(), self.output()
        opts = self.options("FullyConnectedOptions")
        if opts.WeightsFormat() != 0:
            self.fail("only the DEFAULT weights format is supported")
        q, s, z = self.weight(ins[1], 0)  # (O, K)
        x = self.name(ins[0])
        xs = self.shape(ins[0])
        if len(xs) != 2:
            if int(np.prod(xs[1:])) != q.shape[1] or len(self.shape(out)) != 2:
                self.fail(
                    f"input of shape {xs} for a weight {q.shape}: hwsim reads a "
                    "FULLY_CONNECTED of a (N, K) input"
                )
            x = self.flatten_nhwc(x, xs)
        self.mac(Op.DENSE, x, q, q, s, z, ins[2] if len(ins) > 2 else -1, {}, out, opts)

    def flatten_nhwc(self, x: str, tfl_shape: tuple) -> str:
        """``x`` (IR layout) flattened in TFLite's order, as a new (N, K) tensor."""
        return self.reshape_ir(x, tfl_shape, (tfl_shape[0], int(np.prod(tfl_shape[1:]))), None)

    def reshape_ir(self, x: str, src: tuple, dst: tuple, out: str | None) -> str:
        """IR nodes reshaping ``x`` (TFLite shape ``src``) to the TFLite shape ``dst``: to NHWC
        (a 4-D source), the reshape, back to NCHW (a 4-D result), each transpose only where it
        moves values; ``out`` names the result (None: a new tensor)."""
        tq = self.act_quant[x]
        if src[0] != 1 or dst[0] != 1:
            self.fail(f"a reshape from {src} to {dst} moves the batch axis (hwsim keeps it)")
        cur = x
        if len(src) == 4 and _moves_values(self.shapes[x], _TO_NHWC):
            cur = self.tmp(f"{x}/nhwc", tq)
            self.add(Op.TRANSPOSE, [x], cur, {"perm": _TO_NHWC})
        back = len(dst) == 4 and _moves_values(dst, _TO_IR4)
        # without a transpose back, the NHWC result holds its values in the IR shape's order
        target = dst if back or len(dst) != 4 else tuple(dst[p] for p in _TO_IR4)
        r = self.tmp(f"{x}/reshape", tq) if back or out is None else out
        self.add(Op.RESHAPE, [cur], r, {"shape": (1, *target[1:])})
        if not back:
            return r
        res = out or self.tmp(f"{x}/nchw", tq)
        self.add(Op.TRANSPOSE, [r], res, {"perm": _TO_IR4})
        return res

    def reshape(self):
        ins, out = self.inputs(), self.output()
        x = self.name(ins[0])
        if self.act(ins[0]) != self.act(out):
            self.fail("RESHAPE with another output quantization")
        name = self.define(out)
        self.reshape_ir(x, self.shape(ins[0]), self.shape(out), name)

    def binary(self, op: Op, rule: str, opts_name: str):
        ins, out = self.inputs(), self.output()
        a, b = (self.name(i) for i in ins[:2])
        if self.shape(ins[0]) != self.shape(ins[1]):
            self.fail(
                f"inputs of shapes {self.shape(ins[0])} and {self.shape(ins[1])}: hwsim "
                f"reads {self.codes[self.k]} of two activations of one shape"
            )
        qa, qb, qo = self.act(ins[0]), self.act(ins[1]), self.act(out)
        make = ntfl.add_params if rule == "add" else ntfl.mul_params
        try:
            p = make(qa.scale, qa.zero_point, qb.scale, qb.zero_point, qo.scale, qo.zero_point)
        except ValueError as e:
            self.fail(str(e))
        opts = self.options(opts_name)
        act = opts.FusedActivationFunction() if opts is not None else 0
        self.emit(op, [a, b], out, {"tflite": {"rule": rule, **p}}, act)

    def pool(self, op: Op):
        ins, out = self.inputs(), self.output()
        opts = self.options("Pool2DOptions")
        x = self.name(ins[0])
        if self.act(ins[0]) != self.act(out):
            self.fail(
                "input and output quantized differently (TFLite's int8 pooling requires "
                "one quantization)"
            )
        kh, kw = opts.FilterHeight(), opts.FilterWidth()
        pads = [0, 0, 0, 0]
        if opts.Padding() == self.tfl.Padding.SAME:
            _, h, w, _ = self.shape(ins[0])
            (pads[0], pads[2]), (pads[1], pads[3]) = (
                _same_pads(h, kh, opts.StrideH(), 1),
                _same_pads(w, kw, opts.StrideW(), 1),
            )
        attrs = {
            "kernel": (kh, kw),
            "strides": (opts.StrideH(), opts.StrideW()),
            "pads": tuple(pads),
            "count_include_pad": 0,
        }
        if op is Op.AVGPOOL:
            attrs["tflite"] = {"rule": "average_pool"}
        self.emit(op, [x], out, attrs, opts.FusedActivationFunction())

    def mean(self):
        ins, out = self.inputs(), self.output()
        opts = self.options("ReducerOptions")
        axes = self.data(ins[1], np.int32)
        xs = self.shape(ins[0])
        if axes is None or len(xs) != 4 or {int(a) % 4 for a in axes.reshape(-1)} != {1, 2}:
            self.fail(
                f"MEAN over axes {None if axes is None else axes.tolist()} of a {xs} "
                "tensor: hwsim reads the mean over height and width of a 4-D tensor"
            )
        x = self.name(ins[0])
        qx, qy = self.act(ins[0]), self.act(out)
        keep = bool(opts.KeepDims()) if opts is not None else False
        n = xs[1] * xs[2]
        if keep and self.kernels != "reference":
            m, s, bias = ntfl.mean_hw_params(qx.scale, qx.zero_point, qy.scale, qy.zero_point, n)
            rule = {"rule": "mean_hw", "m": m, "s": s, "bias": bias}
        else:
            m, s = ntfl.mean_params(qx.scale, qy.scale)
            rule = {"rule": "mean", "m": m, "s": s, "zx": qx.zero_point, "zy": qy.zero_point}
        if keep:
            self.emit(Op.GAP, [x], out, {"tflite": rule})
            return
        name = self.define(out)
        g = self.fresh(f"{name}/keepdims")
        self.act_quant[g] = qy
        self.add(Op.GAP, [x], g, {"tflite": rule})
        self.add(Op.FLATTEN, [g], name, {"axis": 1})

    def softmax(self):
        ins, out = self.inputs(), self.output()
        opts = self.options("SoftmaxOptions")
        beta = float(opts.Beta()) if opts is not None else 1.0
        if beta != 1.0:
            self.fail(f"beta {beta}: hwsim's float reference computes softmax with beta 1")
        if self.kernels == "reference":
            self.fail(
                "int8 SOFTMAX of the reference kernels (gemmlowp's fixed-point exp) is not "
                "emulated; hwsim emulates the optimized kernel (kernels 'xnnpack' or "
                "'optimized')"
            )
        qx, qy = self.act(ins[0]), self.act(out)
        if qy.zero_point != -128 or abs(qy.scale - 1 / 256) > 0.001 / 256:
            self.fail(
                f"output quantization ({qy.scale}, {qy.zero_point}): TFLite's int8 "
                "SOFTMAX requires (1/256, -128)"
            )
        r = len(self.shape(ins[0]))
        axis = _AXIS4[3] if r == 4 else r - 1
        rule = {"rule": "softmax", "table": ntfl.softmax_table(qx.scale, beta)}
        self.emit(Op.SOFTMAX, [self.name(ins[0])], out, {"axis": axis, "tflite": rule})

    def concatenation(self):
        ins, out = self.inputs(), self.output()
        opts = self.options("ConcatenationOptions")
        qo = self.act(out)
        for i in ins:
            if self.act(i) != qo:
                self.fail(
                    f"input {self.tname(i)!r} is quantized differently "
                    "from the output (TFLite's int8 CONCATENATION requires one "
                    "quantization)"
                )
        r = len(self.shape(out))
        axis = opts.Axis() % r
        axis = _AXIS4[axis] if r == 4 else axis
        self.emit(
            Op.CONCAT,
            [self.name(i) for i in ins],
            out,
            {"axis": axis},
            opts.FusedActivationFunction(),
        )

    def pad(self):
        ins, out = self.inputs(), self.output()
        p = self.data(ins[1], np.int32 if self.type_name(ins[1]) == "INT32" else np.int64)
        if p is None or p.shape != (4, 2) or np.any(p[[0, 3]] != 0) or np.any(p < 0):
            self.fail("PAD amounts must be constant, >= 0 and on height and width only")
        if len(ins) > 2 and ins[2] >= 0:
            self.fail("PADV2 with a constant value is not supported")
        if self.act(ins[0]) != self.act(out):
            self.fail("PAD with another output quantization")
        readers = [k for k, op in enumerate(self.ops) if out in op.InputsAsNumpy().tolist()]
        if not readers or any(
            self.codes[k] not in ("CONV_2D", "DEPTHWISE_CONV_2D")
            or int(self.ops[k].Inputs(0)) != out
            for k in readers
        ):
            self.fail(
                "hwsim folds PAD into the convolutions it feeds; this one feeds "
                f"{sorted({self.codes[k] for k in readers})}"
            )
        (t, b), (le, r) = p[1].tolist(), p[2].tolist()
        self.name(ins[0])
        self.padded[out] = (ins[0], (t, b, le, r))

    def quantize(self):
        self.fail(
            "QUANTIZE between int8 tensors (a requantization) is not supported; hwsim "
            "reads QUANTIZE of the float model input"
        )

    # -- the graph -----------------------------------------------------------------------------
    def shape_only(self) -> set[int]:
        """Operators that only compute RESHAPE shape operands (dropped)."""
        readers: dict[int, list[tuple[int, int]]] = {}
        for k, op in enumerate(self.ops):
            for j, t in enumerate(op.InputsAsNumpy().tolist()):
                readers.setdefault(t, []).append((k, j))
        drop: set[int] = set()
        for k in reversed(range(len(self.ops))):
            if self.codes[k] not in _SHAPE_OPS:
                continue
            outs = self.ops[k].OutputsAsNumpy().tolist()
            if all(
                self.type_name(t) in ("INT32", "INT64")
                and readers.get(t)
                and all((self.codes[r] == "RESHAPE" and j == 1) or r in drop for r, j in readers[t])
                for t in outs
            ):
                drop.add(k)
        return drop

    def run(self) -> Graph:
        g = self.g
        if g.InputsLength() != 1 or g.OutputsLength() != 1:
            self.fail(
                f"hwsim runs single-input single-output models; this one has "
                f"{g.InputsLength()} inputs and {g.OutputsLength()} outputs"
            )
        t_in, t_out = int(g.Inputs(0)), int(g.Outputs(0))
        in_shape = self.shape(t_in)
        in_name = self.fresh(self.tname(t_in) or "input")
        self.names[t_in] = in_name
        ir_in = tuple(in_shape[p] for p in _TO_IR4) if len(in_shape) == 4 else in_shape
        self.shapes[in_name] = (1, *ir_in[1:])
        input_rule = None
        if self.type_name(t_in) == "INT8":
            self.act_quant[in_name] = self.act(t_in)
        elif self.type_name(t_in) != "FLOAT32":
            self.fail(f"model input is {self.type_name(t_in)}: hwsim reads float32 or int8 inputs")
        drop = self.shape_only()
        out_name = None
        for k, op in enumerate(self.ops):
            self.k = k
            code = self.codes[k]
            if k in drop:
                continue
            ins = [i for i in op.InputsAsNumpy().tolist()]
            if code == "QUANTIZE" and ins[0] == t_in and self.type_name(t_in) == "FLOAT32":
                out = self.define(self.output())
                tq = self.act_quant[out]
                rule = {
                    "rule": "quantize",
                    "kernels": self.kernels,
                    "scale": tq.scale,
                    "zero_point": tq.zero_point,
                }
                self.add(Op.IDENTITY, [in_name], out, {"tflite": rule})
                input_rule = "float"
                continue
            if code == "DEQUANTIZE":
                if self.output() != t_out:
                    self.fail(
                        "DEQUANTIZE inside the model is not supported (only of the model output)"
                    )
                out_name = self.name(ins[0])
                continue
            handler = _HANDLERS.get(code)
            if handler is None:
                self.fail(
                    f"operator {code} is not supported (supported: "
                    f"{', '.join(SUPPORTED_OPS)}; SHAPE / STRIDED_SLICE / PACK only as a "
                    "RESHAPE's shape)"
                )
            handler(self)
        self.k = -1
        if in_name not in self.act_quant and input_rule is None:
            self.fail("the float model input is not quantized by a QUANTIZE")
        if out_name is None:
            out_name = (
                self.name(t_out)
                if t_out in self.names
                else self.fail("the model output is not computed by a supported operator")
            )
        return self.graph(in_name, ir_in, out_name, t_out, input_rule)

    def graph(self, in_name, ir_in, out_name, t_out, input_rule) -> Graph:
        produced = {n.output for n in self.nodes}
        acts = {t: q for t, q in self.act_quant.items() if t in produced or t == in_name}
        mac_register = MAC_REGISTER.get(self.kernels, DEFAULT_REGISTER[self.kernels])
        layer = {
            "acc_bits": 32,
            "overflow": "wrap",
            "order": "sequential",
            "tile_rows": 0,
            "tile_bits": 32,
            "register": DEFAULT_REGISTER[self.kernels],
            "rounding": "half_away",
        }
        meta = {
            "hwsim": {
                "format_version": 1,
                "acts": {
                    t: {
                        "mode": "static",
                        "bits": 8,
                        "signed": True,
                        "scale": q.scale,
                        "zero_point": q.zero_point,
                        "s_max": 0,
                        "pow2": False,
                        "base": "static",
                    }
                    for t, q in acts.items()
                },
                "layers": {
                    n.name: (
                        {**layer, "register": mac_register, "rounding": "half_even"}
                        if n.op in MAC_OPS and mac_register == "ort"
                        else dict(layer)
                    )
                    for n in self.nodes
                },
                "weights": {},
            },
            "tflite": {"kernels": self.kernels, "input": input_rule or "int8"},
        }
        float_ranges = {}
        for t, q in acts.items():
            s = np.float32(q.scale)
            float_ranges[t] = (
                float(np.float32(INT8.min - q.zero_point) * s),
                float(np.float32(INT8.max - q.zero_point) * s),
            )
        return Graph(
            Path(self.src).stem,
            self.src,
            in_name,
            tuple(ir_in[1:]),
            out_name,
            self.nodes,
            acts,
            meta,
            self.tname(t_out),
            float_ranges=float_ranges,
        )


_HANDLERS = {
    "CONV_2D": _Importer.conv_2d,
    "DEPTHWISE_CONV_2D": _Importer.depthwise_conv_2d,
    "FULLY_CONNECTED": _Importer.fully_connected,
    "ADD": lambda imp: imp.binary(Op.ADD, "add", "AddOptions"),
    "MUL": lambda imp: imp.binary(Op.MUL_ACT, "mul", "MulOptions"),
    "AVERAGE_POOL_2D": lambda imp: imp.pool(Op.AVGPOOL),
    "MAX_POOL_2D": lambda imp: imp.pool(Op.MAXPOOL),
    "MEAN": _Importer.mean,
    "RESHAPE": _Importer.reshape,
    "SOFTMAX": _Importer.softmax,
    "CONCATENATION": _Importer.concatenation,
    "PAD": _Importer.pad,
    "QUANTIZE": _Importer.quantize,
}


def import_tflite(path: str | os.PathLike, kernels: str = "xnnpack") -> Graph:
    """Import a ``.tflite`` int8 model into the IR (module docstring); ``kernels`` selects the
    LiteRT CPU kernels emulated where they differ (:data:`KERNELS`)."""
    src = str(path)
    try:
        buf = Path(path).read_bytes()
    except OSError as e:
        raise ModelImportError(f"{src}: cannot read the model file ({e.strerror})") from None
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {KERNELS}, got {kernels!r}")
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelImportError(
            f"{src}: not a TFLite model (file identifier {bytes(buf[4:8])!r}, expected b'TFL3')"
        )
    imp = None
    try:
        imp = _Importer(buf, src, kernels)
        return imp.run()
    except ModelImportError:
        raise
    except _MALFORMED as e:
        where = ""
        if imp is not None and 0 <= imp.k < len(getattr(imp, "codes", ())):
            where = f"operator {imp.k} ({imp.codes[imp.k]}): "
        raise ModelImportError(f"{src}: {where}malformed model ({type(e).__name__}: {e})") from None
