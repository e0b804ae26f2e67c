"""Outputs-only runs: the layers of a program whose contract *is* an onnxruntime QOperator
kernel's, lowered to that kernel and run as onnxruntime sessions.

:class:`~hwsim.execute.IntegerExecutor` with ``outputs_only=True`` computes the same integers as
its node-by-node run, without per-layer statistics (no counters, no partial sums, no clamp
counts). Runs of consecutive nodes that lower (a *segment*) become one onnxruntime graph of
``QLinearConv`` / ``QLinearAdd`` / ... nodes, built once from the program and a probe run of
one sample (which fixes every tensor's grid: scale, zero point, format); the nodes that do not
lower run through the executor as always, between segments.

A node lowers when onnxruntime's kernel computes exactly the executor's contract for it
(docs/networks.md, "Outputs-only runs"):

* ``conv`` / ``dense`` (rows as a 1x1 ``QLinearConv``: ``(N, K)``, or a dense on tokens ``(N,
  ..., K)``, the executor's one GEMM over the flattened leading axes, reshaped to ``(R, 1, 1,
  K)`` and back): a static per-tensor uint8 input,
  a static unsigned output of at most 8 bits, an ``ort`` register (eq. 8: ``rint(f32(acc) *
  m)``, half to even, then ``+ zy`` and saturation), weights of at most 8 bits with one zero
  point, a signed accumulator that provably cannot overflow in any order:
  ``K * max|x - zx| * max|w - zw| + max|bias| <= min(acc max, tile max, 2^31 - 1)`` (then wrap
  and saturate, every reduction order and int32 give the one exact sum), not a layer
  onnxruntime's plan leaves in float. ``QLinearConv`` gets ``x_scale = y_scale = 1`` and the
  register's float32 multipliers as ``w_scale``, so its combined scale ``f32(f32(x_scale *
  w_scale) / y_scale)`` is the register's multiplier bit for bit; the bias is the layer's
  int32 bias in accumulator units. Where onnxruntime's uint8 x int8 sums are not exact on
  this CPU (AVX2 without VNNI, :func:`hwsim.datapath.engines.ort_exact`), int8 weights go in
  as uint8 ``w + 128`` with zero point ``zw + 128`` (the exact uint8 x uint8 kernels). A
  narrower output format is a ``Clip`` after it.
* ``matmul`` of two activations on the ``ort`` path: ``QLinearMatMul`` on uint8 operands
  (:meth:`_Lowerer._emit_matmul`), under the same accumulator bound (no bias).
* ``add``, ``avgpool``, ``gap`` on the ``ort`` path of the executor (8-bit operands of one
  signedness, per-tensor static scales, no uint8 shift of an imported int8 model): the
  executor's rule for them *is* onnxruntime's ``QLinearAdd`` / ``QLinearAveragePool`` /
  ``QLinearGlobalAveragePool`` (:mod:`hwsim.qops`), so those kernels run.
* ``maxpool``, ``relu``, ``clip`` (per-tensor), ``flatten``, ``reshape``, ``transpose``,
  ``gather``, ``slice``, ``identity`` on 8-bit integers that keep their grid: ``MaxPool`` /
  ``Clip`` (the integer bounds the executor uses) / ``Flatten`` / ``Reshape`` / ``Transpose``
  / ``Gather`` / ``Slice`` / ``Identity``.
* any other deterministic elementwise rule of one or two 8-bit static tensors -- the float
  islands GELU, Sigmoid, SiLU, HardSigmoid, HardSwish, Tanh, Erf, constant arithmetic (also a
  constant per position, a position embedding), Add / Mul of two activations on other
  registers, a requantizing ReLU / Clip / Identity, and Concat -- as tables of the executor's
  own rule looked up with ``GatherElements`` (:meth:`_Lowerer._table2`,
  :mod:`hwsim.execute.lowered_tables`).

Everything else (per-sample and per-token tensors, other registers on MAC layers, wider
operands or accumulators that might overflow, the LayerNorm and Softmax float islands, whose
row reductions onnxruntime does not order as the executor does, ``isa avx2``) runs in the
executor -- except a Softmax of an imported model that onnxruntime fuses into
``QLinearSoftmax``: the executor's rule for it is that kernel's, so it runs. The equality
with the node-by-node run is a test (``tests/execute/test_lowered.py``) on every shipped
model, standard architectures quantized by onnxruntime and by hwsim, and random layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hwsim.execute import lowered_tables as tables
from hwsim.graph.ir import Node, Op
from hwsim.quant.scheme import ScaleKind

_OPSET = 18
_MS = "com.microsoft"
_INT32_MAX = (1 << 31) - 1


@dataclass
class Meta:
    """A tensor's grid as the probe run saw it: scale (float32), zero point, format, dtype and
    per-sample shape."""

    scale: np.ndarray
    zero_point: int
    fmt: object
    dtype: np.dtype
    shape: tuple

    @classmethod
    def of(cls, t) -> Meta | None:
        from hwsim.execute.tensors import QTensor

        if not isinstance(t, QTensor) or t.shifts is not None or np.ndim(t.scale) != 0:
            return None
        return cls(np.float32(t.scale), int(t.zero_point), t.fmt, t.q.dtype, tuple(t.q.shape[1:]))

    def same_grid(self, other: Meta) -> bool:
        """Whether ``other`` holds the same reals for the same integers (dtype, zero point,
        format, float32 scale)."""
        return (
            np.dtype(self.dtype) == np.dtype(other.dtype)
            and self.zero_point == other.zero_point
            and self.fmt == other.fmt
            and np.float32(self.scale) == np.float32(other.scale)
        )


@dataclass
class Segment:
    """Nodes ``start .. stop - 1`` of the graph as one onnxruntime session: it reads
    ``inputs`` (integer tensors, their dtype) and returns ``outputs``, with their grids."""

    start: int
    stop: int
    inputs: list[str]
    outputs: list[str]
    metas: dict[str, Meta]
    session: object = None
    names: dict[str, str] = field(default_factory=dict)
    float_input: str | None = None
    """The graph input, fed as float32 and quantized in the segment (``QuantizeLinear``)."""

    def run(self, env: dict) -> None:
        from hwsim.execute.tensors import QTensor

        feeds = {
            self.names[t]: np.ascontiguousarray(env[t] if t == self.float_input else env[t].q)
            for t in self.inputs
        }
        got = self.session.run([self.names[t] for t in self.outputs], feeds)
        for t, q in zip(self.outputs, got, strict=True):
            m = self.metas[t]
            env[t] = QTensor(q, np.asarray(m.scale), m.zero_point, m.fmt)


class _Builder:
    """ONNX nodes for one segment (``onnx.helper``), and how each tensor is held there.

    A tensor is held under a key ``(shifted, nhwc)``: ``shifted``, an int8 tensor as uint8
    ``q + 128`` with zero point ``zp + 128`` (the same reals; what ``QLinearConv`` on uint8
    activations takes and gives); ``nhwc``, a 4-D tensor channels-last (onnxruntime's
    ``com.microsoft`` NHWC kernels; the graph's own tensors are NCHW). A uint8 tensor is
    never shifted, a tensor of another rank never NHWC. :meth:`get` converts on demand:
    ``Transpose``, and a uint8 ``Add`` of 128 (wrapping: the XOR with 0x80) around a wrapping
    ``Cast`` (``q + 128`` mod 256)."""

    def __init__(self, inputs=()):
        self.nodes: list = []
        self.inits: list = []
        self.held: dict[str, dict[tuple[bool, bool], str]] = {}
        self._n = 0
        for t in inputs:
            self.held[t] = {(False, False): self.fresh()}

    def fresh(self) -> str:
        self._n += 1
        return f"v{self._n}"

    def const(self, value) -> str:
        from onnx import numpy_helper

        n = self.fresh()
        self.inits.append(numpy_helper.from_array(np.asarray(value), n))
        return n

    def node(self, op: str, ins: list[str], domain: str = "", **attrs) -> str:
        from onnx import helper

        out = self.fresh()
        self.nodes.append(helper.make_node(op, ins, [out], domain=domain or None, **attrs))
        return out

    def get(self, t: str, meta: Meta, shifted: bool, nhwc: bool = False) -> str:
        """``t``'s ONNX name held as asked, converted if it is not held so yet."""
        from onnx import TensorProto

        key = (shifted and meta.dtype == np.int8, nhwc and len(meta.shape) == 3)
        h = self.held[t]
        if key in h:
            return h[key]
        src = next((k for k in h if k[1] == key[1]), None)
        if src is None:  # the other layout first
            k0 = next(iter(h))
            perm = [0, 2, 3, 1] if key[1] else [0, 3, 1, 2]
            h[(k0[0], key[1])] = self.node("Transpose", [h[k0]], perm=perm)
            src = (k0[0], key[1])
        if src != key:
            # + 128 on uint8 wraps mod 256: the XOR with 0x80, in onnxruntime's vectorized Add
            half = self.const(np.uint8(0x80))
            if key[0]:  # int8 -> uint8 q + 128
                u = self.node("Cast", [h[src]], to=TensorProto.UINT8)
                h[key] = self.node("Add", [u, half])
            else:  # uint8 q + 128 -> int8
                x = self.node("Add", [h[src], half])
                h[key] = self.node("Cast", [x], to=TensorProto.INT8)
        return h[key]

    def any(self, t: str, nhwc: bool | None = None) -> tuple[str, tuple[bool, bool]]:
        """``t`` as it is held already (in layout ``nhwc`` if given; as itself first) and
        its key."""
        h = self.held[t]
        keys = [k for k in h if nhwc is None or k[1] == nhwc] or list(h)
        k = min(keys, key=lambda k: (k[0], not k[1]))
        return h[k], k

    def put(self, t: str, name: str, key: tuple[bool, bool]) -> None:
        self.held[t] = {key: name}


class Lowering:
    """Which nodes of a program lower and the segments they form (:func:`lower`)."""

    def __init__(self, steps: list, lowered: set[str], why: dict[str, str]):
        self.steps = steps
        """Node indices (run by the executor) and :class:`Segment` s, in graph order; a first
        segment with a ``float_input`` quantizes the graph input itself."""
        self.lowered = lowered
        self.why = why
        """Node name -> why it does not lower."""


def _acc_limit(acc) -> int:
    """The largest magnitude every partial sum of ``acc`` may reach without any overflow."""
    if not acc.signed:
        return -1
    lim = min((1 << (acc.bits - 1)) - 1, _INT32_MAX)
    if acc.tile_bits:
        lim = min(lim, (1 << (acc.tile_bits - 1)) - 1)
    return lim


def _max_abs(fmt, zp) -> int:
    return max(abs(fmt.min - int(zp)), abs(fmt.max - int(zp)))


class _Lowerer:
    def __init__(self, ex, probe, env: dict):
        from hwsim.datapath.engines import ort_available, ort_exact

        self.ex, self.probe, self.env = ex, probe, env
        self.p = ex.p
        self.ort = ort_available()
        self.u8_weights = self.ort and not ort_exact("int8")

    def meta(self, t: str) -> Meta | None:
        return Meta.of(self.env.get(t))

    def rule(self, node: Node, args: list):
        """The executor's own rule for ``node`` on ``args`` (:class:`QTensor` s), as its
        node-by-node run applies it (:meth:`IntegerExecutor._node`, on the probe)."""
        probe = self.probe
        probe._current = node.name
        try:
            return probe._node(node, args)
        finally:
            probe._current = None

    def emit(self, b: _Builder, node: Node) -> str | None:
        """``node``'s ONNX nodes appended to ``b``; None if it lowers, else why not (then
        ``b`` may hold a partial emission: the caller drops it)."""
        ins = [self.meta(t) for t in node.inputs]
        out = self.meta(node.output)
        if out is None or any(m is None for m in ins):
            return "not a static per-tensor integer tensor"
        if any(
            np.dtype(m.dtype) not in (np.dtype(np.uint8), np.dtype(np.int8)) for m in (*ins, out)
        ):
            return "not 8-bit integers"
        fn = getattr(self, f"_emit_{node.op.value}", None)
        if fn is None:
            return f"no onnxruntime QOperator form for {node.op.value}"
        return fn(b, node, ins, out)

    @staticmethod
    def _clip(b: _Builder, y: str, lo: int, hi: int, dtype) -> str:
        return b.node("Clip", [y, b.const(np.asarray(lo, dtype)), b.const(np.asarray(hi, dtype))])

    def _finish(self, b: _Builder, node: Node, y: str, out: Meta, key) -> None:
        """``y`` (``out``'s 8-bit dtype, held as ``key``) clamped to ``out``'s format where
        that is narrower than the dtype, as ``node.output``."""
        key = (key[0] and out.dtype == np.int8, key[1])
        info = np.iinfo(out.dtype)
        if (out.fmt.min, out.fmt.max) != (info.min, info.max):
            d = 128 if key[0] else 0
            y = self._clip(b, y, out.fmt.min + d, out.fmt.max + d, np.uint8 if d else out.dtype)
        b.put(node.output, y, key)

    def _mac(self, b: _Builder, node: Node, x: Meta, out: Meta) -> str | None:
        from hwsim.execute.tensors import QTensor

        layer = self.p.layer(node.name)
        spec = self.p.acts.get(node.output)
        if spec is None or spec.mode != "static":
            return "output not static"
        if layer.register is not ScaleKind.ORT:
            return f"register {layer.register.value}, not ort"
        if self.probe._ort_runs_float(node, layer):
            return "onnxruntime's plan runs it in float"
        wq = node.wq
        if wq is None or wq.fmt.bits > 8:
            return "weights wider than 8 bits"
        zw = np.asarray(wq.zero_point, np.int64).reshape(-1)
        if zw.size and np.any(zw != zw[0]):
            return "per-channel weight zero points (QLinearConv takes one)"
        zw0 = int(zw[0]) if zw.size else 0
        wv = wq.q.astype(np.int64)
        w_max = int(np.max(np.abs(wv - zw0))) if wv.size else 0
        n_out = wq.q.shape[0]
        K = int(np.prod(wq.q.shape[1:], dtype=np.int64))
        probe = self.probe
        probe._current = node.name
        try:
            xt = QTensor(np.zeros((1, 1), x.dtype), np.asarray(x.scale), x.zero_point, x.fmt)
            bias, _ = probe._mac_bias(node, xt, layer.acc, 1, n_out)
            sw = np.asarray(wq.scale, np.float32)
            reg = probe._requant_register(
                layer, np.float32(x.scale), sw, np.float32(out.scale), record=False
            )
        finally:
            probe._current = None
        bias = None if bias is None else np.asarray(bias, np.int64).reshape(-1)
        b_max = int(np.max(np.abs(bias))) if bias is not None and bias.size else 0
        if K * _max_abs(x.fmt, x.zero_point) * w_max + b_max > _acc_limit(layer.acc):
            return "the accumulator might overflow"
        m = np.asarray(reg.multiplier, np.float32).reshape(-1)
        if m.size not in (1, n_out) or not np.all(np.isfinite(m)) or np.any(m <= 0):
            return "register multipliers out of QLinearConv's range"
        dx = 128 if x.dtype == np.int8 else 0
        dy = 128 if out.dtype == np.int8 else 0
        if not (0 <= x.zero_point + dx <= 255 and 0 <= out.zero_point + dy <= 255):
            return "zero point outside the 8-bit range"
        if wq.fmt.signed and self.u8_weights:
            w, wz = (wv + 128).astype(np.uint8), np.uint8(zw0 + 128)
        elif wq.fmt.signed:
            w, wz = wq.q.astype(np.int8), np.int8(zw0)
        else:
            w, wz = wq.q.astype(np.uint8), np.uint8(zw0)
        rows = node.op is Op.DENSE and bool(node.attrs.get("nd")) and len(x.shape) > 1
        if node.op is Op.DENSE:  # (R, K) rows: a 1x1 convolution on (R, 1, 1, K)
            if rows and x.shape[-1] != K:
                return f"input rows of {x.shape[-1]} values, weights of {K}"
            w = w.reshape(n_out, K, 1, 1)
            xin = b.get(node.inputs[0], x, shifted=True)
            # (N, ..., K): the leading axes flattened into rows; else (N, K) flattened
            shape = [-1, 1, 1, K] if rows else [0, 1, 1, -1]
            xin = b.node("Reshape", [xin, b.const(np.array(shape, np.int64))])
            attrs = {}
        else:
            xin = b.get(node.inputs[0], x, shifted=True, nhwc=True)
            a = node.attrs
            attrs = dict(
                strides=list(a["strides"]),
                pads=list(a["pads"]),
                dilations=list(a["dilations"]),
                group=int(a["group"]),
                kernel_shape=list(w.shape[2:]),
            )
        ins = [
            xin,
            b.const(np.float32(1.0)),
            b.const(np.uint8(x.zero_point + dx)),
            b.const(w),
            b.const(m if m.size > 1 else np.float32(m[0])),
            b.const(wz),
            b.const(np.float32(1.0)),
            b.const(np.uint8(out.zero_point + dy)),
        ]
        if bias is not None:
            ins.append(b.const(bias.astype(np.int32)))
        y = b.node("QLinearConv", ins, domain=_MS, channels_last=1, **attrs)  # NHWC
        if rows:  # (R, 1, 1, O) back to (N, ..., O)
            back = np.array([-1, *x.shape[:-1], n_out], np.int64)
            y = b.node("Reshape", [y, b.const(back)])
        elif node.op is Op.DENSE:
            y = b.node("Flatten", [y], axis=1)
        self._finish(b, node, y, out, (True, node.op is not Op.DENSE))
        return None

    def _emit_conv(self, b, node, ins, out):
        return self._mac(b, node, ins[0], out)

    _emit_dense = _emit_conv

    def _emit_matmul(self, b, node, ins, out):
        """A product of two activations on the executor's ``ort`` path (its rule *is*
        onnxruntime's ``QLinearMatMul``: ``acc = sum_k (a - za)(b - zb)``, then ``rint(f32(acc)
        * m) + zy`` saturated, ``m = f32(f32(sa * sb) / sy)``; onnxruntime's
        ``quantize_linear_matmul.cc`` computes ``a_scale * b_scale / y_scale`` in float and
        requantizes with ``MlasRequantizeOutput``, as its ``QLinearConv``). Both operands go in
        as uint8 (int8 held as ``q + 128``, zero point ``+ 128``): the uint8 x uint8 kernels,
        exact with or without VNNI (nothing lowers where
        :func:`hwsim.datapath.engines.ort_available` finds them inexact). Lowers where
        no partial sum can overflow the accumulator in any order: ``K * max|a - za| * max|b -
        zb| <= min(acc max, tile max, 2^31 - 1)``."""
        a, bm = ins
        if len(a.shape) < 2 or len(bm.shape) < 2:
            return "a product across the sample axis"
        layer = self.p.layer(node.name)
        spec = self.p.acts.get(node.output)
        if spec is None or spec.mode != "static":
            return "output not static"
        if "tflite" in node.attrs:
            return "a TFLite kernel's rule"
        if layer.register is not ScaleKind.ORT:
            return f"register {layer.register.value}, not ort"
        K = a.shape[-1]
        if bm.shape[-2] != K:
            return f"operands of {K} and {bm.shape[-2]} summed values"
        if K * _max_abs(a.fmt, a.zero_point) * _max_abs(bm.fmt, bm.zero_point) > _acc_limit(
            layer.acc
        ):
            return "the accumulator might overflow"
        m = np.float32(np.float32(a.scale) * np.float32(bm.scale)) / np.float32(out.scale)
        if not (np.isfinite(m) and m > 0):
            return "register multiplier out of QLinearMatMul's range"
        args = []
        for t, mt in ((node.inputs[0], a), (node.inputs[1], bm), (None, out)):
            d = 128 if mt.dtype == np.int8 else 0
            if not 0 <= mt.zero_point + d <= 255:
                return "zero point outside the 8-bit range"
            if t is not None:
                args.append(b.get(t, mt, shifted=True))
            args += self._grid(b, mt, d)
        y = b.node("QLinearMatMul", args)
        self._finish(b, node, y, out, (True, False))
        return None

    def _qlinear_ok(self, node: Node, ins: list[Meta], out: Meta) -> str | None:
        layer = self.p.layer(node.name)
        spec = self.p.acts.get(node.output)
        if spec is None or spec.mode != "static" or layer.register is not ScaleKind.ORT:
            return "not the executor's ort path"
        held = self.probe._ort_holding((*node.inputs, node.output), [m.fmt for m in (*ins, out)])
        if held is None or any(np.dtype(m.dtype) != np.dtype(held[0]) for m in (*ins, out)):
            return "not 8-bit operands of one signedness, or held as uint8 by onnxruntime"
        return None

    @staticmethod
    def _grid(b: _Builder, m: Meta, d: int = 0) -> list[str]:
        """``m``'s scale and zero point constants, held shifted by ``d`` (0 or 128: uint8)."""
        zp = np.asarray(m.zero_point + d, np.uint8 if d else m.dtype)
        return [b.const(np.float32(m.scale)), b.const(zp)]

    def _emit_add(self, b, node, ins, out):
        if ins[0].shape != ins[1].shape:
            return "broadcasting Add"
        layer = self.p.layer(node.name)
        spec = self.p.acts.get(node.output)
        held_as = self.probe._ort_add_holding(
            (*node.inputs, node.output), [m.fmt for m in (*ins, out)]
        )
        if (
            spec is None
            or spec.mode != "static"
            or layer.register is not ScaleKind.ORT
            or held_as is None
        ):  # another rule: a table of it
            return self._table2(b, node, ins, out)
        holder, shifts = held_as
        nhwc = b.any(node.inputs[0])[1][1]  # elementwise: in the first input's layout
        args = []
        for t, m, d in zip(node.inputs, ins, shifts, strict=False):
            if np.dtype(m.dtype) != np.dtype(holder) and not d:
                return "an operand not in onnxruntime's dtype"
            args += [b.get(t, m, bool(d), nhwc), *self._grid(b, m, d)]
        y = b.node("QLinearAdd", args + self._grid(b, out, shifts[2]), domain=_MS)
        self._finish(b, node, y, out, (bool(shifts[2]), nhwc))
        return None

    def _table2(self, b, node, ins, out) -> str | None:
        """An elementwise node of two 8-bit static tensors as a 65,536-entry table: the
        executor's own rule (:meth:`IntegerExecutor._node`) on every pair of input values,
        looked up at ``(a + da) * 256 + (b + db)`` (``d = 128`` for int8, held shifted)
        (:func:`~hwsim.execute.lowered_tables.lookup`). Exact for any deterministic
        per-tensor rule (no per-sample registers, no stochastic rounding)."""
        from onnx import TensorProto

        why = tables.deterministic(self, node)
        if why:
            return why
        av, bv = (
            g.reshape(1, -1)
            for g in np.meshgrid(*(tables.codes(m.dtype) for m in ins), indexing="ij")
        )
        y = self.rule(node, [tables._qt(av, ins[0]), tables._qt(bv, ins[1])])
        if not tables._on_grid(y, out):
            return "the rule's output is not the tensor's grid"
        table = tables.held(np.asarray(y.q).reshape(-1))  # int8 held shifted: uint8 q + 128
        i32 = TensorProto.INT32
        nhwc = b.any(node.inputs[0])[1][1]  # elementwise: in the first input's layout
        ia = b.node("Cast", [b.get(node.inputs[0], ins[0], True, nhwc)], to=i32)
        ib = b.node("Cast", [b.get(node.inputs[1], ins[1], True, nhwc)], to=i32)
        idx = b.node("Add", [b.node("Mul", [ia, b.const(np.int32(256))]), ib])
        y = tables.lookup(b, table, idx)
        b.put(node.output, y, (out.dtype == np.int8, nhwc))
        return None

    def _pool(self, b, node, ins, out, op: str, **attrs):
        why = self._qlinear_ok(node, ins, out)
        if why:
            return why
        if "trunc" in node.attrs:
            return "QONNX Trunc"
        x = b.get(node.inputs[0], ins[0], False, nhwc=True)
        args = [x, *self._grid(b, ins[0]), *self._grid(b, out)]
        y = b.node(op, args, domain=_MS, channels_last=1, **attrs)
        self._finish(b, node, y, out, (False, True))
        return None

    def _emit_gap(self, b, node, ins, out):
        return self._pool(b, node, ins, out, "QLinearGlobalAveragePool")

    def _emit_avgpool(self, b, node, ins, out):
        a = node.attrs
        return self._pool(
            b, node, ins, out, "QLinearAveragePool",
            kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=list(a["pads"]),
            count_include_pad=int(a["count_include_pad"]),
        )  # fmt: skip

    def _emit_maxpool(self, b, node, ins, out):
        if not ins[0].same_grid(out):
            return "output grid differs"
        a = node.attrs
        x, key = b.any(node.inputs[0])  # the max commutes with q + 128
        op, dom = ("NhwcMaxPool", _MS) if key[1] else ("MaxPool", "")
        y = b.node(op, [x], domain=dom, kernel_shape=list(a["kernel"]),
                   strides=list(a["strides"]), pads=list(a["pads"]))  # fmt: skip
        b.put(node.output, y, key)
        return None

    def _bounded(self, b, node, x: Meta, lo: int, hi: int):
        t, key = b.any(node.inputs[0])
        d = 128 if key[0] else 0
        dt = np.uint8 if key[0] else x.dtype
        info = np.iinfo(dt)
        if lo + d > info.min or hi + d < info.max:  # else a no-op on these integers
            t = self._clip(b, t, lo + d, hi + d, dt)
        b.put(node.output, t, key)
        return None

    def _emit_elementwise(self, b, node, ins, out):
        return tables.unary(self, b, node, ins[0], out)

    _emit_gelu = _emit_sigmoid = _emit_silu = _emit_elementwise
    _emit_hardsigmoid = _emit_hardswish = _emit_tanh = _emit_erf = _emit_elementwise
    _emit_add_const = _emit_div_const = _emit_mul = _emit_elementwise

    def _emit_layernorm(self, b, node, ins, out):
        return "a float island reducing rows (onnxruntime sums in another order)"

    def _emit_softmax(self, b, node, ins, out):
        """A Softmax whose executor rule *is* onnxruntime's ``com.microsoft.QLinearSoftmax`` (an
        imported QDQ model whose plan fuses it: :meth:`IntegerExecutor._ort_softmax`, emulated
        by :func:`hwsim.qops.qlinear_softmax`) as that kernel, on the tensors held as the rule
        holds them (int8 as uint8 ``q + 128`` where x86 onnxruntime shifts them), channels
        first (its axis is the model's). Any other Softmax is a float island reducing rows."""
        spec = self.p.acts.get(node.output)
        x = ins[0]
        if not self.probe._ort_softmax(node, [self.env.get(node.inputs[0])], spec):
            return "a float island reducing rows (onnxruntime sums in another order)"
        _, d = self.probe._ort_holding((node.inputs[0], node.output), (x.fmt, out.fmt))
        xt = b.get(node.inputs[0], x, bool(d), nhwc=False)
        args = [xt, *self._grid(b, x, d), *self._grid(b, out, d)]
        axis = int(node.attrs.get("axis", -1))
        y = b.node("QLinearSoftmax", args, domain=_MS, axis=axis, opset=13)
        self._finish(b, node, y, out, (bool(d), False))
        return None

    def _emit_concat(self, b, node, ins, out):
        return tables.concat(self, b, node, ins, out)

    def _emit_mul_act(self, b, node, ins, out):
        """The executor's product of two activations, ``(a - za)(b - zb)`` element by element
        (broadcasting: a squeeze-excite gate), then its register: a table of two codes (the
        index's ``Mul`` / ``Add`` broadcast as numpy does)."""
        sa, sb = ins[0].shape, ins[1].shape
        try:
            bad = len(sa) != len(sb) or np.broadcast_shapes(sa, sb) != tuple(out.shape)
        except ValueError:
            bad = True
        if bad:
            return "a Mul broadcasting across the sample axis or to another shape"
        return self._table2(b, node, ins, out)

    def _emit_relu(self, b, node, ins, out):
        x = ins[0]
        if not x.same_grid(out):
            return tables.unary(self, b, node, x, out)
        return self._bounded(b, node, x, x.zero_point, int(np.iinfo(x.dtype).max))

    def _emit_clip(self, b, node, ins, out):
        from hwsim.execute.tensors import QTensor

        x = ins[0]
        if not x.same_grid(out):
            return tables.unary(self, b, node, x, out)
        held = QTensor(np.zeros((1,), x.dtype), np.asarray(x.scale), x.zero_point, x.fmt)
        lo, hi = self.probe._clip_bounds(node, held)
        return self._bounded(b, node, x, lo, hi)

    def _moved(self, b, node, x: Meta, op: str, *consts, **attrs):
        """A node that moves integers (a reshape), on the NCHW tensor, where its output keeps
        the input's grid (else the executor requantizes: ``Q(op(DQ(x)))``)."""
        if not x.same_grid(self.meta(node.output)):
            return "output grid differs"
        key = b.any(node.inputs[0], nhwc=False)[1]
        t = b.get(node.inputs[0], x, key[0], nhwc=False)
        b.put(node.output, b.node(op, [t, *(b.const(c) for c in consts)], **attrs), (key[0], False))
        return None

    def _emit_flatten(self, b, node, ins, out):
        return self._moved(b, node, ins[0], "Flatten", axis=1)

    def _emit_reshape(self, b, node, ins, out):
        shape = np.array([0] + [int(s) for s in node.attrs["shape"][1:]], np.int64)
        return self._moved(b, node, ins[0], "Reshape", shape)

    def _emit_transpose(self, b, node, ins, out):
        return self._moved(b, node, ins[0], "Transpose", perm=[int(p) for p in node.attrs["perm"]])

    def _emit_gather(self, b, node, ins, out):
        idx = np.asarray(node.attrs["indices"], np.int64)
        return self._moved(b, node, ins[0], "Gather", idx, axis=int(node.attrs["axis"]))

    def _emit_slice(self, b, node, ins, out):
        if not node.attrs["slices"]:  # only the whole batch was sliced
            return self._emit_identity(b, node, ins, out)
        s = np.array(
            [
                (ax, st, (np.iinfo(np.int64).min if sp < 0 else np.iinfo(np.int64).max)
                 if en is None else en, sp)
                for ax, st, en, sp in node.attrs["slices"]
            ],
            np.int64,
        ).reshape(-1, 4)  # fmt: skip
        return self._moved(b, node, ins[0], "Slice", s[:, 1], s[:, 2], s[:, 0], s[:, 3])

    def _emit_identity(self, b, node, ins, out):
        if not ins[0].same_grid(out):
            return tables.unary(self, b, node, ins[0], out)
        t, key = b.any(node.inputs[0])
        b.put(node.output, t, key)
        return None


def _input_quantizer(ex, env: dict):
    """``(scale, zero point, Meta)`` of the graph input's static quantizer where it is
    ``QuantizeLinear`` (the executor's :func:`~hwsim.execute.kernels.quantize_static`:
    float32 ``x / s`` rounded to nearest even, clamped to the format, NaN to its low end, as
    onnxruntime's MLAS kernel), else None."""
    spec = ex.p.acts.get(ex.g.input)
    meta = Meta.of(env.get(ex.g.input))
    if (
        spec is None
        or meta is None
        or spec.mode != "static"
        or spec.bipolar
        or spec.qonnx_rounding is not None
        or spec.per_token
        or np.dtype(meta.dtype) not in (np.dtype(np.uint8), np.dtype(np.int8))
        or np.dtype(getattr(ex.g, "input_dtype", "float32")) != np.dtype(np.float32)
    ):
        return None
    return np.float32(spec.scale), int(spec.zero_point), meta


def lower(ex, probe, env: dict, threads: int | None = None) -> Lowering:
    """The :class:`Lowering` of executor ``ex``'s program, from ``probe`` (an executor of the
    same program, isa exact) and ``env``, every tensor of ``probe.run(x[:1], keep_all=True)``.
    ``threads``: the segments' onnxruntime intra-op threads (default: Numba's)."""
    from onnx import TensorProto, helper

    from hwsim.runtime import cpu_session

    if threads is None:
        import numba

        threads = numba.config.NUMBA_NUM_THREADS
    low = _Lowerer(ex, probe, env)
    nodes = ex.g.nodes
    why: dict[str, str] = {}

    def emit(b: _Builder, n: Node) -> str | None:
        try:
            return low.emit(b, n)
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            return f"{type(e).__name__}: {e}"

    g = ex.g
    qin = _input_quantizer(ex, env) if low.ort else None
    ok = set()
    for i, n in enumerate(nodes):  # which nodes lower (each from native inputs)
        if not low.ort:
            why[n.name] = "onnxruntime has no exact integer kernels on this CPU"
            continue
        b = _Builder(n.inputs)
        w = emit(b, n)
        if w is None:
            ok.add(i)
        else:
            why[n.name] = w
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.inputs:
            readers.setdefault(t, []).append(i)
    elem = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    steps: list = []
    i = 0
    while i < len(nodes):
        if i not in ok:
            steps.append(i)
            i += 1
            continue
        j = i
        while j < len(nodes) and j in ok:
            j += 1
        produced = {nodes[k].output for k in range(i, j)}
        inputs: list[str] = []
        for k in range(i, j):
            for t in nodes[k].inputs:
                if t not in produced and t not in inputs:
                    inputs.append(t)
        outputs = [
            nodes[k].output
            for k in range(i, j)
            if nodes[k].output == ex.g.output
            or any(r >= j for r in readers.get(nodes[k].output, ()))
        ]
        if not outputs:  # nothing reads these nodes' outputs: nothing to run
            i = j
            continue
        float_in = (
            g.input
            if qin is not None
            and g.input in inputs
            and all(i <= r < j for r in readers.get(g.input, ()))
            else None
        )
        b = _Builder(inputs)
        names = {t: b.held[t][(False, False)] for t in inputs}
        if float_in is not None:  # QuantizeLinear, straight to how the first reader holds it
            scale, zp, meta = qin
            d = 128 if meta.dtype == np.int8 else 0
            dt = np.uint8 if d else meta.dtype
            y = b.node(
                "QuantizeLinear",
                [names[g.input], b.const(np.float32(scale)), b.const(np.asarray(zp + d, dt))],
            )
            info = np.iinfo(meta.dtype)
            if (meta.fmt.min, meta.fmt.max) != (info.min, info.max):
                y = _Lowerer._clip(b, y, meta.fmt.min + d, meta.fmt.max + d, dt)
            b.held[g.input] = {(bool(d), False): y}
        for k in range(i, j):
            w = emit(b, nodes[k])
            assert w is None, w  # it lowered from native inputs; held inputs change nothing
        metas = {t: Meta.of(env[t]) for t in (*inputs, *outputs)}
        out_names = {t: b.get(t, metas[t], shifted=False) for t in outputs}
        names.update(out_names)

        def vi(name, t, metas=metas, float_in=float_in):
            m = metas[t]
            if t == float_in:
                shape = ["N", *np.shape(env[t].q)[1:]]
                return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
            return helper.make_tensor_value_info(name, elem[np.dtype(m.dtype)], ["N", *m.shape])

        # graph outputs are distinct names: an output read by a later node of the segment
        # keeps its internal name; the graph's output is an Identity of it
        outs = []
        for t in outputs:
            o = f"out_{len(outs)}"
            b.nodes.append(helper.make_node("Identity", [out_names[t]], [o]))
            outs.append(vi(o, t))
            names[t] = o
        graph = helper.make_graph(
            b.nodes, f"hwsim_lowered_{i}_{j}", [vi(names[t], t) for t in inputs], outs, b.inits
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", _OPSET), helper.make_opsetid(_MS, 1)]
        )
        model.ir_version = 8
        seg = Segment(i, j, inputs, outputs, metas, names=names, float_input=float_in)
        try:
            seg.session = cpu_session(model, threads=threads, spin=len(ok) == len(nodes))
        except Exception as e:  # noqa: BLE001 -- an onnxruntime build without these kernels
            msg = f"onnxruntime could not load the segment ({type(e).__name__}: {e})"
            for k in range(i, j):
                ok.discard(k)
                why[nodes[k].name] = msg
            steps.extend(range(i, j))
            i = j
            continue
        steps.append(seg)
        i = j
    return Lowering(steps, {n.name for k, n in enumerate(nodes) if k in ok}, why)
