"""The integer executor: a :class:`~hwsim.quant.QuantProgram` on the emulated datapath, one
method per op (:data:`INTEGER_OPS`), batch by batch, with per-node counters.

Integer op contracts (``R(r)`` = the layer's scale register built for real multiplier ``r``;
``s``/``z`` = scale/zero point; per-sample scales broadcast over the sample axis):

* conv/dense: ``acc = sum (x - zx)(w - zw)`` on the accumulator; ``bias_q = round_half_even(b /
  (sx*sw))`` (or the model's int32 bias); ``y = sat(R(sx*sw/sy)(acc + bias_q) + zy)``. With the
  ``ort`` register the multiplier is ``f32(f32(sx*sw)/sy)``, as QLinearConv computes it.
* add: ``ort`` register -- onnxruntime's QLinearAdd (:func:`hwsim.qops.qlinear_add`); other
  registers -- TFLite's integer Add: inputs shifted left by ``L = min(20, 30 - bits)``, each
  rescaled by ``R(s_i / (2 max(sa, sb)))``, summed, rescaled by ``R(2 max(sa, sb) / (2^L sy))``.
* global average pool / average pool: ``ort`` register, 8-bit, static -- onnxruntime's
  QLinearGlobalAveragePool / QLinearAveragePool (:mod:`hwsim.qops`); otherwise exact integer
  window sum of ``q - zx``, then ``R(sx / (sy * count))``; max pool: integer max (padding never
  wins), scale unchanged; relu/clip: clamp in the integer domain at the quantized bounds;
  flatten/reshape/identity/transpose/gather/slice/resize: the integers moved, unchanged; concat:
  each input rescaled by ``R(s_i/sy)``; mul by a constant c: ``R(|c| sx/sy)(sign(c) (q - zx))``;
  softmax: float32 on the dequantized input. A dense on an N-d input ``(N, ..., K)`` is one
  GEMM over the flattened leading axes, output ``(N, ..., O)``.
* matmul of two activations: ``acc = sum_k (a - za)(b - zb)`` on the layer's accumulator,
  ``y = sat(R(sa*sb/sy)(acc) + zy)`` (``ort``: onnxruntime's QLinearMatMul); mul of two
  activations: ``(a - za)(b - zb)`` exact, the same register (``ort``, 8-bit: QLinearMul).
* the other transformer ops (:data:`INTEGER_OPS`' docstring) run as float islands.
* a per-sample output (``dynamic`` / ``shift``): the op's integers up to its register (a
  conv's biased accumulator, TFLite's Add up to the sum, a pool's window sums; per-element
  steps first brought to one grid) go through the integer range unit of ``docs/numerics.md``
  eq. 17-19 (:meth:`IntegerExecutor._per_sample`): dynamic -- the reciprocal register of each
  sample's integer range; shift -- the base register with the largest shift ``s`` that keeps
  the sample's range in the format, scale ``base * 2^-s``. A shift input's bias is shifted
  left by its sample's shift; a dynamic input's goes through a per-sample register.
* an op whose output is quantized differently from what its integer rule gives (an imported QDQ
  model may do that) runs as ``QuantizeLinear(op(DequantizeLinear(inputs)))``, as onnxruntime
  runs a Q/DQ chain it does not fuse.

Activations enter as ``QuantizeLinear`` (``sat(round_half_even(f32(x) / s) + z)``, float32) and
the model's output leaves as ``DequantizeLinear`` (``f32(q - z) * s``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields

import numpy as np

from hwsim import qops
from hwsim.datapath import Counters, Operand, add_bias, conv2d, gemm, output_stage
from hwsim.datapath.conv import conv2d_requant
from hwsim.datapath.isa import Isa, depthwise, pairs_saturate
from hwsim.errors import HwsimError
from hwsim.execute.arrays import (
    graph_input,
    max_pool,
    pad,
    pool_count,
    reshape,
    slice_axes,
    take,
    windows,
)
from hwsim.execute.float import float_op, repeat_axes
from hwsim.execute.kernels import add_ort_fused, clamp_rows
from hwsim.execute.tensors import QTensor, quantize_input, quantize_linear
from hwsim.execute.tflite import tflite_node
from hwsim.graph.ir import MAC_OPS, Node, Op
from hwsim.numerics import IntFormat, Overflow, RoundingMode, ScaleKind, ScaleRegister, saturate
from hwsim.numerics import reference as nref
from hwsim.numerics.qonnx import QuantRounding, trunc_int
from hwsim.numerics.scale import MultiplierRangeError
from hwsim.quant.scheme import ActSpec, LayerSpec, NonLinear, QuantProgram


@dataclass
class LayerStats:
    """Counters of one node accumulated over batches."""

    counters: Counters = field(default_factory=Counters)
    bias_overflows: int = 0
    clamped: int = 0
    outputs: int = 0
    bias_clamped: int = 0
    """(sample, output channel) pairs whose float bias, quantized to accumulator units, lay
    outside the accumulator format and was clamped to it (0 for an imported int32 bias)."""
    int_bits: int = 0
    """The widest intermediate (signed bits) an integer-only non-linearity reached."""
    gain_error_min: float | None = None
    gain_error_max: float | None = None
    """Extremes of ``applied / wanted - 1`` over every scale-register entry the node built
    (:attr:`hwsim.numerics.scale.ScaleRegister.gain_error`; None: no register). Nonzero where
    a ``pow2`` register was asked for a real that is not a power of two (average pooling's
    ``1/count``, a Mul by ``|c|``, ``bn_fold=register``'s per-channel factor)."""

    ops: dict = field(default_factory=dict)
    """Operations of the per-sample range hardware this node performed (eq. 17-19, counted
    over batches): ``range_compares`` (one per output of a dynamic / shift tensor),
    ``range_registers`` (reciprocal-unit registers: per sample for dynamic, per batch for a
    runtime shift base), ``shift_selects`` (register evaluations of a sample's range, ``s_max +
    1`` per sample), ``bias_shifts`` (a bias shifted left by its sample's input shift, per
    sample and channel), ``bias_registers`` / ``bias_requants`` (a dynamic input's per-sample
    bias register, and its application per sample and channel), ``align_requants`` (outputs
    brought to one grid before range finding: per-channel weight scales, Concat, Mul by a
    per-channel constant, average pools with uneven counts). The cost model charges the same
    operations (:mod:`hwsim.cost.model`)."""

    def count(self, **ops: int) -> None:
        for k, v in ops.items():
            self.ops[k] = self.ops.get(k, 0) + int(v)

    def merge(self, o: LayerStats) -> LayerStats:
        """``o`` (the same node's statistics over other samples) added in place, by each
        field's rule in :data:`STATS_MERGE`: counts add, extremes take the min / max (None:
        none seen) -- what ``hwsim run --workers`` merges shards with."""
        for f in fields(LayerStats):
            rule, x, y = STATS_MERGE[f.name], getattr(self, f.name), getattr(o, f.name)
            if rule == "counters":
                x.merge(y)
            elif rule == "sum":
                setattr(self, f.name, x + y)
            elif rule == "ops":
                self.count(**y)
            else:
                pick = min if rule == "min" else max
                setattr(self, f.name, y if x is None else (x if y is None else pick(x, y)))
        return self

    def add_gain(self, ge: np.ndarray) -> None:
        """Fold the gain errors of one register into the extremes."""
        ge = np.asarray(ge, np.float64)
        if ge.size == 0:
            return
        lo, hi = float(ge.min()), float(ge.max())
        self.gain_error_min = lo if self.gain_error_min is None else min(self.gain_error_min, lo)
        self.gain_error_max = hi if self.gain_error_max is None else max(self.gain_error_max, hi)

    def add(self, c: Counters | None, bias_overflows=0, clamped=0, outputs=0, bias_clamped=0):
        if c is not None:
            self.counters.merge(c)
        self.bias_overflows += bias_overflows
        self.clamped += clamped
        self.outputs += outputs
        self.bias_clamped += bias_clamped


#: How each :class:`LayerStats` field merges over disjoint samples (:meth:`LayerStats.merge`):
#: "counters" (:meth:`Counters.merge`), "sum", "min", "max", "ops" (per operation, summed).
STATS_MERGE = {
    "counters": "counters",
    "bias_overflows": "sum",
    "clamped": "sum",
    "outputs": "sum",
    "bias_clamped": "sum",
    "int_bits": "max",
    "gain_error_min": "min",
    "gain_error_max": "max",
    "ops": "ops",
}


def _ort_holder(*fmts: IntFormat):
    """The 8-bit numpy type onnxruntime's QLinear kernels take for these formats (all signed or
    all unsigned, at most 8 bits), else None (then hwsim's generic contract applies)."""
    if all(f.bits <= 8 and f.signed for f in fmts):
        return np.int8
    if all(f.bits <= 8 and not f.signed for f in fmts):
        return np.uint8
    return None


def _register(kind: ScaleKind, real: np.ndarray, rounding, ort_scale=None) -> ScaleRegister:
    """The register for the real multiplier(s) ``real``; its ``requested`` is ``real``, so its
    ``gain_error`` is what it applies over what the layer needs (a ``pow2`` register of a real
    that is not a power of two applies the nearest power of two, docs/numerics.md)."""
    real = np.asarray(real, np.float64)
    if kind is ScaleKind.ORT and ort_scale is not None:
        return ScaleRegister(
            kind, np.asarray(ort_scale, np.float32), np.zeros((), np.int64), requested=real
        )
    return ScaleRegister.from_real(kind, real, rounding)


_S8, _U8 = IntFormat(8, True), IntFormat(8, False)
_DTYPE_MAX = {
    np.dtype(t): int(np.iinfo(t).max)
    for t in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64)
}
"""The integer dtypes the clamp kernel takes, with their largest value."""


class IntegerExecutor:
    """Runs a :class:`QuantProgram` batch by batch, accumulating per-node :class:`LayerStats`."""

    def __init__(
        self,
        program: QuantProgram,
        track_partials: bool = False,
        isa="exact",
        seed: int = 0,
        outputs_only: bool = False,
    ):
        """``seed``: stochastic rounding (a ``pow2`` register with ``rounding="stochastic"``)
        draws for node ``j`` and sample ``i`` from ``numpy.random.default_rng([seed, j, i])``,
        ``i`` counted over every sample this executor has run (or ``run``'s ``sample_offset``):
        the same seed gives the same integers whatever the batch partition.

        ``outputs_only``: the same integers, without per-layer statistics. A run with
        ``keep_all=False`` and no ``visit`` then runs the layers whose contract is an
        onnxruntime QOperator kernel's as onnxruntime sessions (:mod:`hwsim.execute.lowered`,
        built on the first such run from a one-sample probe); :attr:`stats` stay empty of
        them and must not be read."""
        from hwsim.datapath.isa import resolve

        self.p = program
        self.g = program.graph
        self.stats: dict[str, LayerStats] = {n.name: LayerStats() for n in self.g.nodes}
        self.track_partials = track_partials
        self.float_ops: set[str] = set()
        self.isa = resolve(isa)
        self.outputs_only = bool(outputs_only)
        self.lowering = None
        """The :class:`~hwsim.execute.lowered.Lowering` of an ``outputs_only`` executor."""
        self.isa_layers: set[str] = set()  # MAC layers whose sums follow eq. 16 (isa avx2)
        self.ort_plan = False  # onnxruntime's OrtPlan of the source file, asked once (_plan)
        self._plan_error = ""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise HwsimError(f"seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.samples_seen = 0  # the next batch's first sample index (stochastic rounding)
        self._rng = None  # the current node's per-sample Generators, or None
        self._current: str | None = None  # the node being run (its registers' gain errors)
        self._node_now: Node | None = None  # that node and its inputs (per-token axes)
        self._ins_now: list = []
        if any(a.per_token for a in program.acts.values()) and any(
            ls.rounding is RoundingMode.STOCHASTIC
            for ls in (*program.layers.values(), program.default_layer)
        ):
            raise HwsimError(
                "stochastic rounding draws per sample; a program with per-token activations "
                "needs a deterministic rounding on every layer"
            )
        self._cache: dict = {}
        """Per-node constants built once per executor (a Clip's bounds, a MAC layer's static
        output stage), keyed by the node and what they depend on."""
        self._donated = False
        """The current node may overwrite its input's integers (:meth:`_donatable`)."""
        self._donated_out = False
        """Nothing but the ReLU / Clip of :attr:`_act_after` will see the current node's
        output, so that activation may be applied in the node's output stage."""
        self._applied: set[str] = set()
        """ReLU / Clip nodes their convolution's output stage applied in this run."""
        self._act_after = _activations_after(program.graph)
        """Node name -> the ReLU / Clip that alone reads its output, once."""
        self.wide = wide_tensors(program)
        """Tensors held at their producer's accumulator width for an integer non-linearity
        (:func:`wide_tensors`)."""

    def _register(self, kind: ScaleKind, real, rounding, ort_scale=None) -> ScaleRegister:
        """:func:`_register`, recording the register's gain error in the current node's
        :class:`LayerStats` -- every register the executor builds goes through here, so no
        layer applies another gain than its scales ask for without the report saying so."""
        reg = _register(kind, real, rounding, ort_scale)
        if self._current is not None and reg.gain_error is not None:
            self.stats[self._current].add_gain(reg.gain_error)
        return reg

    def _node_rngs(self, index: int, node: Node, first: int, n: int):
        """One Generator per sample of the batch for node ``index`` when its requantization
        rounds stochastically, else None."""
        layer = self.p.layer(node.name)
        if layer.rounding is not RoundingMode.STOCHASTIC or layer.register is not ScaleKind.POW2:
            return None
        return [np.random.default_rng([self.seed, index, first + i]) for i in range(n)]

    # -- helpers -------------------------------------------------------------------------------
    def _spec(self, t: str) -> ActSpec | None:
        return self.p.acts.get(t)

    def _token_axes(self, node: Node | None, ndim: int, ins=()) -> tuple[int, ...]:
        """The axes a per-token tensor keeps one range per (docs/networks.md, "Per-token
        schemes"): ``(N, T, D)`` -> per ``(n, t)``; a rank-4 attention tensor ``(N, H, T, *)``
        (a matmul's output, or an op on a per-token rank-4 input) -> per ``(n, t)`` over heads
        and the last axis; anything else (images, logits) -> per sample."""
        if ndim == 3:
            return (0, 1)
        if (
            ndim == 4
            and node is not None
            and (
                node.op is Op.MATMUL
                or any(isinstance(i, QTensor) and i.per_token and i.q.ndim == 4 for i in ins)
            )
        ):
            return (0, 2)
        return (0,)

    def _per_sample(
        self, t, spec: ActSpec, layer: LayerSpec, u, c=None, sigma=None, keep=None
    ) -> QTensor:
        """(17)-(19) A ``dynamic`` / ``shift`` output from integers ``t`` that step by ``u``:
        per sample (:meth:`_range_unit`), or for a ``per_token`` spec per row of the axes
        ``keep`` (default :meth:`_token_axes`). Steps ``u`` that vary within a row (a per-token
        input's steps along the summed axis, per-channel weight scales) are first brought to
        one grid per row (:meth:`_align`, bound the accumulator's range); the range unit then
        runs on the rows as it runs on samples, and the scales come back as a per-token array
        (``QTensor.scale`` of ``t``'s rank)."""
        from hwsim.execute.tensors import keepdims_form, token_rows

        u = np.asarray(u, np.float64)
        if keep is None:
            keep = self._token_axes(self._node_now, t.ndim, self._ins_now)
        keep = tuple(keep) if spec.per_token else (0,)
        if keep == (0,) and u.ndim <= 1:
            return self._range_unit(t, spec, layer, u, c, sigma)
        if self._rng is not None:
            raise HwsimError(
                f"node {self._current!r}: stochastic rounding draws per sample; it is not "
                f"defined for per-token ranges (use a deterministic rounding)"
            )
        u = u.reshape(u.shape + (1,) * (t.ndim - u.ndim)) if u.ndim == 1 else u
        # the steps vary within a row where u is not size 1 along a summed-over axis (decided
        # by the shapes, so the operations do not depend on the values)
        varies = any(u.shape[ax] > 1 for ax in range(u.ndim) if ax not in keep)
        rows, undo = token_rows(t, keep)
        urows, _ = token_rows(np.broadcast_to(u, t.shape), keep)
        umax = urows.max(axis=1) if urows.shape[1] else np.ones(urows.shape[0])
        if varies and urows.size:
            bound = 1 << (layer.acc.bits - 1)
            if spec.mode == "shift" and spec.base == "runtime" and c is not None:
                # a runtime base needs one per-tensor grid: align to the tensor's largest step
                top = float(urows.max())
                rows, step = self._align(rows, urows / top, layer, bound)
                umax = np.full(rows.shape[0], top * step)
                c, sigma = top * step, np.zeros(rows.shape[0], np.int64)
            else:
                rows, step = self._align(rows, urows / umax[:, None], layer, bound)
                umax = umax * step
                c = sigma = None  # the rows no longer sit on one per-tensor grid
        elif sigma is not None:
            sig = np.broadcast_to(
                np.asarray(sigma).reshape(np.shape(sigma) + (1,) * (t.ndim - np.ndim(sigma))),
                t.shape,
            )
            sigma = token_rows(sig, keep)[0][:, 0] if rows.shape[1] else None
        out = self._range_unit(rows, spec, layer, umax, c, sigma)
        return QTensor(
            np.ascontiguousarray(undo(out.q)),
            keepdims_form(undo(np.asarray(out.scale, np.float32))),
            out.zero_point,
            out.fmt,
            None if out.shifts is None else keepdims_form(undo(out.shifts)),
            out.base,
        )

    def _range_unit(self, t, spec: ActSpec, layer: LayerSpec, u, c=None, sigma=None) -> QTensor:
        """(17)-(19) A ``dynamic`` / ``shift`` output from integers ``t`` (int64 (N, ...); for a
        per-token output :meth:`_per_sample` passes the token rows as N) whose sample ``n``
        steps by the real ``u[n]`` (float64 (N,) or ()); ``c``, ``sigma``: where
        ``u = c * 2^-sigma`` (a static or shift input), which a runtime shift base needs.

        The range unit takes each sample's largest magnitude ``a_n`` (``max(t, 0)`` for an
        unsigned output). dynamic: register ``M_n`` = the reciprocal register of ``a_n`` (18),
        scale ``u / M_n``. shift: ``M_n = u[n] / b`` for a static base ``b``; a runtime base
        first aligns the ranges, ``A = max_n ceil(a_n / 2^sigma_n)``, takes ``M = (18)(A)``,
        ``b = c / M`` and ``M_n = M * 2^-sigma_n``; then the shift ``s_n`` (19) and register
        ``M_n * 2^s_n``, scale ``b * 2^-s_n``. Output ``sat(R(t) + 0)``."""
        from hwsim.numerics.ranges import range_register, select_shift

        N = t.shape[0]
        fmt, qmax = spec.fmt, spec.fmt.max
        kind, rnd = layer.register, layer.rounding
        st = self.stats[self._current]
        flat = t.reshape(N, -1)
        a = (
            (np.abs(flat) if fmt.signed else np.maximum(flat, 0)).max(axis=1)
            if flat.shape[1]
            else np.zeros(N, np.int64)
        )
        st.count(range_compares=t.size)
        u = np.broadcast_to(np.asarray(u, np.float64), (N,))
        bshape = (N,) + (1,) * max(t.ndim - 1, 0)
        shifts = base = None
        if spec.mode == "dynamic":
            reg = range_register(kind, qmax, a, rnd)
            st.count(range_registers=N)
            scale = (u / reg.real).astype(np.float32)
        else:
            if spec.base == "runtime":
                if c is None:
                    raise HwsimError(
                        f"node {self._current!r}: a runtime shift base needs inputs on one "
                        f"per-tensor grid (static or shift tensors), got per-sample scales"
                    )
                sig = np.zeros(N, np.int64) if sigma is None else np.asarray(sigma, np.int64)
                aligned = -((-a) >> sig)  # ceil(a / 2^sigma)
                reg_t = range_register(kind, qmax, np.array([aligned.max() if N else 0]), rnd)
                st.count(range_registers=1)
                m_t = float(reg_t.real[0])
                base = np.float32(c / m_t)
                reals = np.ldexp(m_t, -sig)
                # the scale the host records: c / M exactly, so the grid is what M applies
                b64 = c / m_t
            else:
                base = np.float32(spec.scale)
                b64 = np.float64(base)
                reals = u / b64
            shifts = select_shift(kind, reals, a, qmax, spec.s_max, rnd)
            st.count(shift_selects=N * (spec.s_max + 1))
            reg = self._register(kind, np.ldexp(reals, shifts), rnd)
            scale = (b64 * np.exp2(-shifts.astype(np.float64))).astype(np.float32)
        reg = ScaleRegister(
            reg.kind, reg.multiplier.reshape(bshape), reg.shift.reshape(bshape), reg.rounding
        )
        axis = 0 if t.ndim == 1 else None
        y = np.asarray(reg.apply(t, axis=axis, rng=self._rng), np.int64) + spec.zero_point
        out = saturate(y, fmt)
        st.add(None, clamped=int(np.count_nonzero(out != y)))
        return QTensor(
            np.asarray(out).astype(fmt.dtype),
            scale,
            spec.zero_point,
            fmt,
            shifts,
            None if base is None else float(base),
        )

    @staticmethod
    def _unit_b(qt: QTensor, rank: int):
        """:meth:`QTensor.unit` with ``u`` and ``sigma`` shaped to broadcast against a result
        of rank ``rank`` whose axis 0 is the sample axis (per-sample vectors on axis 0)."""
        u, c, sigma = qt.unit()

        def b(a):
            if a is None:
                return None
            a = np.asarray(a)
            if a.ndim == 1:
                return a.reshape((-1,) + (1,) * (rank - 1))
            return a

        sig = qt.shifts if qt.shifts is not None else sigma
        return b(u), c, b(sig)

    def _align(self, t, factor, layer: LayerSpec, bound: int):
        """Bring integers ``t`` whose elements step by ``u * factor`` (``factor`` <= 1,
        broadcastable: per channel, per window, per sample) to one grid of step ``u / 2^F``:
        ``R(factor * 2^F)(t)`` with the layer's register, ``F = 30 - bitlen(bound)`` so the
        result stays within int31 for ``|t| <= bound``. Returns ``(t', 2^-F)``."""
        F = max(0, 30 - int(bound).bit_length())
        real = np.ldexp(np.asarray(factor, np.float64), F)
        reg = self._register(layer.register, real, layer.rounding)
        self.stats[self._current].count(align_requants=t.size)
        return np.asarray(reg.apply(t, axis=None, rng=self._rng), np.int64), 2.0**-F

    def _requant_register(
        self, layer: LayerSpec, s_in, factor, s_out, rank: int = 0, record: bool = True
    ):
        """The one static requantization setup (conv/dense, and Mul, Concat and the pools via
        :meth:`_rescale`): the register ``R(s_in * factor / s_out)`` of the layer's kind and
        rounding, built from the real multiplier in float64, and for ``ort`` from onnxruntime's
        float32 ``f32(f32(s_in * factor) / s_out)`` (QLinearConv's combined scale). ``s_in``:
        float32, scalar or per sample (shaped to broadcast); ``factor``: weight scales, ``|c|``
        or ``1/count`` (broadcasting); ``s_out``: float32 scalar. ``rank``: pad the register
        array's rank to it (leading 1s) so that it broadcasts against the values.
        ``record=False``: the caller records the register's gain error itself."""
        s_in = np.asarray(s_in, np.float32)
        so = np.asarray(s_out, np.float32)
        real = s_in.astype(np.float64) * np.asarray(factor, np.float64) / so.astype(np.float64)
        if rank and real.ndim:
            real = np.broadcast_to(real, np.broadcast_shapes(real.shape, (1,) * rank))
        ort = None
        if layer.register is ScaleKind.ORT:
            ort = (s_in * np.float32(factor)) / so
        if not record:
            return _register(layer.register, real, layer.rounding, ort)
        return self._register(layer.register, real, layer.rounding, ort)

    def _out_scale(self, spec: ActSpec) -> np.ndarray:
        """The output scale of a static tensor (per-sample tensors: :meth:`_per_sample`)."""
        return np.asarray(np.float32(spec.scale))

    def _requant_float(self, node: Node, ins: list, spec: ActSpec | None):
        """QuantizeLinear(op(DequantizeLinear(inputs))) -- onnxruntime's unfused Q/DQ chain."""
        self.float_ops.add(node.name)
        y = float_op(node, [i.dequantize() if isinstance(i, QTensor) else i for i in ins])
        if spec is None:
            return y
        return quantize_input(y, spec, self._token_axes(node, np.ndim(y), ins))

    def _rescale(
        self,
        qt: QTensor,
        spec: ActSpec,
        kind: ScaleKind,
        rounding,
        real_extra=1.0,
        sign=None,
        bound: int = 0,
    ) -> QTensor:
        """``sat(R(s_in * real_extra / s_out)(sign * (q - z_in)) + z_out)``; a per-sample
        output: ``sign * (q - z_in)`` (aligned first where ``real_extra`` varies, with
        ``bound`` the largest ``|q - z_in|``) through :meth:`_per_sample`."""
        t = qt.q.astype(np.int64) - qt.zero_point
        if sign is not None:
            t = t * sign
        if spec.mode != "static":
            layer = self.p.layer(self._current)
            u, c, sigma = qt.unit()
            extra = np.asarray(real_extra, np.float64)
            emax = float(extra.max()) if extra.size else 1.0
            if extra.ndim and extra.size and np.any(extra != emax):
                bound = bound or (1 << qt.fmt.bits)
                t, step = self._align(t, extra / emax, layer, bound)
                emax *= step
            return self._per_sample(
                t, spec, layer, u * emax, None if c is None else c * emax, sigma
            )
        so = self._out_scale(spec)
        reg = self._requant_register(
            self.p.layer(self._current), qt.scale_b(), real_extra, so, rank=t.ndim
        )
        y = np.asarray(
            reg.apply(t, axis=None if reg.multiplier.ndim != 1 else 1, rng=self._rng), np.int64
        )
        out = saturate(y + spec.zero_point, spec.fmt)
        return QTensor(
            np.asarray(out).astype(spec.fmt.dtype), so.astype(np.float32), spec.zero_point, spec.fmt
        )

    # -- MAC layers ----------------------------------------------------------------------------
    def _mac_operands(self, node: Node, x: QTensor, layer, acc_cfg):
        """``(xq, xop, wop, isa)``: the integer input, the input and weight operands and the dot
        product of MAC layer ``node`` on this executor's ISA (:meth:`_layer_isa`). An int8 input
        of an ``ort`` layer on a non-exact ISA is fed as uint8 = int8 + 128 with zero point +
        128, as onnxruntime's QDQS8ToU8Transformer feeds its fused x86 kernels: the same exact
        sums, but eq. 16 pairs the shifted bytes."""
        wq = node.wq
        xop = Operand(x.fmt, zero_point=int(x.zero_point))
        zw = np.asarray(wq.zero_point)
        wop = Operand(wq.fmt, zero_point=zw if zw.ndim == 1 else int(zw))
        xq = x.q
        if self.isa is not Isa.EXACT and layer.register is ScaleKind.ORT and x.fmt == _S8:
            xq = (xq.astype(np.int16) + 128).astype(np.uint8)
            xop = Operand(_U8, zero_point=int(x.zero_point) + 128)
        return xq, xop, wop, self._layer_isa(node, acc_cfg, xop, wop)

    def _layer_isa(self, node: Node, acc_cfg, xop: Operand, wop: Operand) -> Isa:
        """The dot product of this layer: ``self.isa`` where onnxruntime would run the layer
        (uint8 x int8 on a 32-bit wrapping accumulator, eq. 16), else exact -- a layer with
        another accumulator is hardware onnxruntime does not have, computed as configured."""
        if self.isa is Isa.EXACT or not pairs_saturate(self.isa, xop.format, wop.format):
            return Isa.EXACT
        if acc_cfg.bits != 32 or not acc_cfg.signed or acc_cfg.overflow is not Overflow.WRAP:
            return Isa.EXACT
        if acc_cfg.tile_bits is not None:
            return Isa.EXACT  # a tile register of its own width: not onnxruntime's kernels
        a = node.attrs
        if node.op is Op.CONV and depthwise(a["group"], *node.wq.q.shape[:2]):
            return Isa.EXACT  # MLAS's exact depthwise kernel
        if self.p.layer(node.name).register is ScaleKind.ORT and node.wq.source is not None:
            # an imported model: only the layers onnxruntime fuses run its integer kernels
            plan = self._plan()
            if plan is None and self.p.scheme is None:
                raise HwsimError(
                    f"node {node.name!r}: isa {self.isa.value!r} on an imported model needs "
                    f"onnxruntime's fused plan (which layers run its integer kernels): "
                    f"{self._plan_error}"
                )
            # (no plan for a file hwsim wrote that onnxruntime cannot load, sub-8-bit weights
            # say: hwsim's own hardware, eq. 16 on every eligible layer, as in memory)
            if plan is not None and node.wq.source not in plan.integer_weights:
                return Isa.EXACT  # a float op on dequantized values in onnxruntime
        self.isa_layers.add(node.name)
        return self.isa

    def _ort_add_holding(self, tensors, fmts) -> tuple | None:
        """How onnxruntime holds an Add's two operands and output, all at most 8 bits: ``(dtype,
        (da, db, dy))``, an int8 tensor held as uint8 ``q + 128`` where its shift is 128; None
        where its QLinearAdd does not apply. A hwsim program's file holds every int8
        activation as uint8 (:func:`hwsim.quant.store.save`, as x86 onnxruntime's
        QDQS8ToU8Transformer would), so its Adds are uint8 QLinearAdds whatever the
        operands' signedness; an imported model's are as onnxruntime's plan of it fuses them
        (one signedness, :meth:`_ort_shift`)."""
        if any(f.bits > 8 for f in fmts):
            return None
        if all(getattr(self.g.act_quant.get(t), "scale_name", None) is None for t in tensors):
            return np.uint8, tuple(128 if f.signed else 0 for f in fmts)
        held = self._ort_holding(tensors, fmts)
        if held is None:
            return None
        return held[0], (held[1],) * 3

    def _ort_holding(self, tensors, fmts) -> tuple | None:
        """How onnxruntime's 8-bit QLinear kernel of one signedness holds ``tensors`` (of
        formats ``fmts``): ``(dtype, d)``, ``d`` = 128 where its int8 tensors run as uint8 ``q +
        128`` (:meth:`_ort_shift`), else 0; None where the formats have no such kernel
        (:func:`_ort_holder`)."""
        holder = _ort_holder(*fmts)
        if holder is None:
            return None
        d = self._ort_shift(holder, tensors)
        return (np.uint8 if d else holder), d

    def _ort_shift(self, holder, tensors) -> int:
        """128 if onnxruntime runs these int8 tensors of an imported model as uint8 = int8 + 128
        (x86's QDQS8ToU8Transformer; :attr:`hwsim.graph.ort_plan.OrtPlan.uint8_scales`), else
        0. The float32 formulas of its QLinear ops then see the shifted zero points."""
        plan = self._plan() if holder is np.int8 else None
        if plan is None:
            return 0
        names = [getattr(self.g.act_quant.get(t), "scale_name", None) for t in tensors]
        return 128 if all(n is not None and n in plan.uint8_scales for n in names) else 0

    def _plan(self):
        """onnxruntime's :class:`~hwsim.graph.ort_plan.OrtPlan` for this model, or None
        (the reason in ``_plan_error``); asked once."""
        if self.ort_plan is False:
            from hwsim.graph.ort_plan import NoPlanError, load_plan

            try:
                self.ort_plan = load_plan(self.g.source)
            except NoPlanError as e:
                self.ort_plan, self._plan_error = None, str(e)
        return self.ort_plan

    def _ort_runs_float(self, node: Node, layer: LayerSpec) -> bool:
        """An imported layer that onnxruntime leaves unfused: a float op on dequantized values
        (:mod:`hwsim.graph.ort_plan`; False when onnxruntime is not installed)."""
        if layer.register is not ScaleKind.ORT or node.wq is None or node.wq.source is None:
            return False
        plan = self._plan()
        return plan is not None and node.wq.source not in plan.integer_weights

    def _mlas_conv(self, node: Node, x: QTensor, spec: ActSpec | None):
        """onnxruntime's unfused ``DequantizeLinear -> Conv -> QuantizeLinear``: a float32
        conv of the dequantized input and weights in MLAS's rounding order (:mod:`hwsim.mlas`)."""
        from hwsim import mlas

        self.float_ops.add(node.name)
        a = node.attrs
        y = mlas.conv2d(
            x.dequantize(),
            node.weight,
            _ort_float_bias(node, x, spec is not None),
            a["pads"],
            a["strides"],
            a["dilations"],
            a["group"],
            fma=mlas.host_fma(),
        )
        return quantize_input(y, spec) if spec is not None else y

    def _mlas_dense(self, node: Node, x: QTensor, spec: ActSpec | None):
        """onnxruntime's unfused ``DequantizeLinear -> MatMul [-> Add] / Gemm ->
        QuantizeLinear``: a float32 GEMM of the dequantized input and weights in MLAS's rounding
        order (:func:`hwsim.mlas.matmul`). A ``MatMul``'s bias is its own ``Add`` node (one
        rounding after the product); a ``Gemm``'s is :func:`_ort_float_bias`, added inside the
        GEMM as its ``C`` with ``beta = 1`` (:func:`mlas_gemm_bias`)."""
        from hwsim import mlas

        self.float_ops.add(node.name)
        xf = x.dequantize()
        rows, wt = xf.reshape(-1, xf.shape[-1]), node.wq.dequantize().T
        plan = self._plan()
        if node.bias is not None and plan is not None and plan.kernel(node.name) == "Gemm":
            b = _ort_float_bias(node, x, spec is not None)
            y = mlas_gemm_bias(rows, wt, b, fma=mlas.host_fma())
        else:
            y = mlas.matmul(rows, wt, fma=mlas.host_fma())
            if node.bias is not None:
                y = (y + np.asarray(node.bias, np.float32)).astype(np.float32)
        y = y.reshape(xf.shape[:-1] + (y.shape[-1],))
        return quantize_input(y, spec) if spec is not None else y

    def _mac_bias(self, node: Node, x: QTensor, acc_cfg, n: int, n_out: int):
        """The bias in accumulator units and how many (sample, channel) values were clamped to
        the accumulator. A static input: the model's int32 bias, or ``round_half_even(b /
        (sx*sw))`` once. A shift input: ``round_half_even(b / (base*sw))`` shifted left by
        each sample's shift (its accumulator steps by ``base * 2^-s * sw``). A dynamic input:
        ``b_ref = round_half_even(b / (sw * 2^-E))`` (``E``: the largest magnitude near
        ``2^(acc_bits-3)``) through a per-sample register ``R(2^-E / sx_n)`` of the layer's
        kind -- the register the host's scale unit sets per sample."""
        if node.bias is None:
            return None, 0
        x_scale = np.asarray(x.scale)
        if node.bias_q is not None and x_scale.ndim == 0:
            return node.bias_q.astype(np.int64), 0
        fmt = acc_cfg.format
        sw = np.asarray(node.wq.scale, np.float32).astype(np.float64)
        st = self.stats[self._current]
        b = node.bias.astype(np.float64)
        if x_scale.ndim == 0 or x.shifts is not None:
            sx = np.float64(np.float32(x.base if x.shifts is not None else x_scale))
            bias = np.rint(b / (sx * sw))
            if x.shifts is not None:  # exact left shifts; out of range values clamp below
                bias = bias[None, :] * np.exp2(x.shifts.astype(np.float64))[:, None]
                st.count(bias_shifts=n * n_out)
        else:
            layer = self.p.layer(node.name)
            r = np.abs(b / sw)
            e = 0 if not r.max() > 0 else (fmt.bits - 3) - int(np.floor(np.log2(r.max())))
            ref = np.rint(np.ldexp(b / sw, e)).astype(np.int64)
            real = np.ldexp(1.0, -e) / x_scale.astype(np.float32).astype(np.float64)
            reg = self._register(layer.register, real, layer.rounding)
            # a stochastic register draws per sample (the node's generators, as its outputs)
            rng = self._rng if self._rng is not None and len(self._rng) == n else None
            bias = np.asarray(
                reg.apply(np.broadcast_to(ref, (n, n_out)), axis=0, rng=rng), np.int64
            ).astype(np.float64)
            st.count(bias_registers=n, bias_requants=n * n_out)
        outside = (bias < fmt.min) | (bias > fmt.max)
        # counted per (sample, channel): a bias shared by the batch counts once per sample
        clamped = int(np.count_nonzero(outside)) * (n if np.ndim(bias) < 2 else 1)
        return np.clip(bias, fmt.min, fmt.max).astype(np.int64), clamped

    def _mac_tokens(self, node: Node, x: QTensor, spec: ActSpec | None):
        """A dense on a per-token input ``(N, ..., K)`` (one scale per row, constant along
        ``K``): the rows are the GEMM's samples -- one register (or one range) per token and
        output channel -- and the output goes back to ``(N, ..., O)``."""
        from hwsim.execute.tensors import keepdims_form

        lead = x.q.shape[:-1]
        R = int(np.prod(lead, dtype=np.int64))

        def rows(a):
            return None if a is None else np.broadcast_to(a, lead + (1,)).reshape(R)

        flat = QTensor(
            x.q.reshape(R, -1), rows(x.scale), x.zero_point, x.fmt, rows(x.shifts), x.base
        )
        out = self._mac(node, flat, spec)

        def back(a):
            if a is None or np.ndim(a) == 0:
                return a
            return keepdims_form(np.asarray(a).reshape(lead + (1,)))

        q = out.q.reshape(lead + (out.q.shape[-1],))
        return QTensor(q, back(out.scale), out.zero_point, out.fmt, back(out.shifts), out.base)

    def _conv_planned(self, node: Node, x: QTensor, spec: ActSpec | None) -> QTensor | None:
        """A convolution (or a dense on (N, K) rows, as the 1x1 convolution it is: the same
        sums, reduction order and counters as :func:`~hwsim.datapath.gemm`) on a per-tensor
        input with a static ``ort`` output through its
        :class:`~hwsim.datapath.conv.ConvPlan` (built once per node and input grid, with the
        layer's static output stage), or None: the general path (:meth:`_mac`) decides.
        The same datapath values, counters and registers as that path."""
        dense = node.op is Op.DENSE and not (node.attrs.get("nd") and x.q.ndim > 2)
        if (
            not (node.op is Op.CONV or dense)
            or spec is None
            or spec.mode != "static"
            or np.ndim(x.scale) != 0
            or self.isa is not Isa.EXACT
        ):
            return None
        q = x.q.reshape(x.q.shape[0], -1, 1, 1) if dense else x.q  # a dense: a 1x1 conv
        key = ("plan", node.name, q.shape[1:], x.fmt, x.zero_point, float(np.float32(x.scale)))
        entry = self._cache.get(key)
        if entry is None:
            entry = self._conv_plan(node, x, spec, q.shape[1:]) or False
            self._cache[key] = entry
        if entry is False:
            return None
        plan, per_sample_clamped, reg, gain, so = entry
        act = self._act_bounds(node, spec, so) if self._donated_out else None
        got = plan.run(q, act)
        if got is None:
            return None
        if act is not None:
            self._applied.add(self._act_after[node.name].name)
        out, counters = got
        st = self.stats[node.name]
        if gain is not None:
            st.add_gain(gain)
        st.add(counters, out.bias_overflows, out.clamped, out.values.size,
               per_sample_clamped * q.shape[0])  # fmt: skip
        y = out.values.reshape(out.values.shape[:2]) if dense else out.values
        return QTensor(y, so, spec.zero_point, spec.fmt)

    def _conv_plan(self, node: Node, x: QTensor, spec: ActSpec, x_shape: tuple):
        """``(ConvPlan, bias values clamped per sample, register, its gain error, output
        scale)`` for :meth:`_conv_planned`, or None where the layer takes another path."""
        from dataclasses import replace

        from hwsim.datapath.conv import ConvPlan

        layer: LayerSpec = self.p.layer(node.name)
        if layer.register is not ScaleKind.ORT or self._ort_runs_float(node, layer):
            return None
        acc_cfg = layer.acc
        if self.track_partials and not acc_cfg.track_partials:
            acc_cfg = replace(acc_cfg, track_partials=True)
        wq = node.wq
        zw = np.asarray(wq.zero_point)
        xop = Operand(x.fmt, zero_point=int(x.zero_point))
        wop = Operand(wq.fmt, zero_point=zw if zw.ndim == 1 else int(zw))
        bias, bias_clamped = self._mac_bias(node, x, acc_cfg, 1, wq.q.shape[0])
        so = self._out_scale(spec)
        sw = np.asarray(wq.scale, np.float32)
        reg = self._requant_register(layer, np.asarray(x.scale, np.float32), sw, so, record=False)
        if node.op is Op.DENSE:  # (O, K) weights on (N, K) rows: a 1x1 convolution
            w, geometry = wq.q.reshape(wq.q.shape + (1, 1)), {}
        else:
            a = node.attrs
            w = wq.q
            geometry = dict(stride=a["strides"], padding=a["pads"], dilation=a["dilations"],
                            groups=a["group"])  # fmt: skip
        plan = ConvPlan.build(
            w, x_shape, x_operand=xop, w_operand=wop, acc=acc_cfg, register=reg, bias=bias,
            out_format=spec.fmt, out_zero_point=spec.zero_point, **geometry,
        )  # fmt: skip
        if plan is None:
            return None
        return plan, bias_clamped, reg, reg.gain_error, so.astype(np.float32)

    def _act_bounds(self, node: Node, spec: ActSpec, so) -> tuple[int, int] | None:
        """The integer bounds of the ReLU / Clip that alone reads ``node``'s output
        (:attr:`_act_after`) when it keeps that output's grid (its integer rule applies), so
        the convolution's output stage applies them; else None."""
        act = self._act_after.get(node.name)
        if act is None:
            return None
        aspec = self._spec(act.output)
        if aspec is None or not (
            aspec.mode == "static"
            and np.float32(aspec.scale) == np.float32(so)
            and aspec.zero_point == spec.zero_point
            and aspec.fmt == spec.fmt
        ):
            return None
        held = QTensor(np.zeros(0, spec.fmt.dtype), so, spec.zero_point, spec.fmt)
        if act.op is Op.RELU:
            top = _DTYPE_MAX.get(np.dtype(spec.fmt.dtype))
            return None if top is None else (spec.zero_point, top)
        return self._clip_bounds(act, held)

    def _mac(self, node: Node, x: QTensor, spec: ActSpec | None) -> QTensor | np.ndarray:
        planned = self._conv_planned(node, x, spec)
        if planned is not None:
            return planned
        layer: LayerSpec = self.p.layer(node.name)
        if x.per_token and spec is not None:
            if node.op is not Op.DENSE or np.shape(x.scale)[-1] != 1:
                return self._requant_float(node, [x], spec)
            return self._mac_tokens(node, x, spec)
        if (
            (spec is None or spec.mode == "static")  # per-sample tensors have no Q/DQ in
            and np.ndim(x.scale) == 0  # the file: onnxruntime's plan does not apply
            and self._ort_runs_float(node, layer)
        ):
            if node.op is Op.CONV:
                return self._mlas_conv(node, x, spec)
            if self._plan().kernel(node.name) in ("MatMul", "Gemm"):
                # a MatMul / Gemm onnxruntime leaves unfused: float32 GEMM on dequantized values
                return self._mlas_dense(node, x, spec)
        if spec is None:
            # no quantizer on the output in the file: a float op on the dequantized input and
            # weights, its float output read as such until the next quantizer (a float island)
            return self._requant_float(node, [x], None)
        wq = node.wq
        acc_cfg = layer.acc
        if self.track_partials and not acc_cfg.track_partials:
            from dataclasses import replace

            acc_cfg = replace(acc_cfg, track_partials=True)
        xq, xop, wop, isa = self._mac_operands(node, x, layer, acc_cfg)
        if isa is not Isa.EXACT:
            from dataclasses import replace

            acc_cfg = replace(acc_cfg, track_partials=False)
        if node.op is Op.CONV:
            a = node.attrs
            geometry = dict(
                stride=a["strides"],
                padding=a["pads"],
                dilation=a["dilations"],
                groups=a["group"],
                x_operand=xop,
                w_operand=wop,
                acc=acc_cfg,
                isa=isa,
            )
            pre = None
            if (
                spec is not None
                and spec.mode == "static"
                and np.ndim(x.scale) == 0
                and layer.register is ScaleKind.ORT
            ):
                # the output stage fused into the convolution where the sums provably fit
                pre = self._static_stage(node, x, spec, layer, acc_cfg, xq.shape[0])
                bias, bias_clamped, reg, so = pre
                fused = conv2d_requant(
                    xq,
                    wq.q,
                    **geometry,
                    register=reg,
                    bias=bias,
                    out_format=spec.fmt,
                    out_zero_point=spec.zero_point,
                )
                if fused is not None:
                    out, counters = fused
                    self.stats[node.name].add(
                        counters, out.bias_overflows, out.clamped, out.values.size, bias_clamped
                    )
                    return QTensor(out.values, so, spec.zero_point, spec.fmt)
            res = conv2d(xq, wq.q, **geometry)
            return self._mac_out(node, x, spec, res, layer, acc_cfg, pre=pre)
        elif node.attrs.get("nd") and xq.ndim > 2:
            # a dense on (N, ..., K): one GEMM over the flattened leading axes, its (N*L, O)
            # sums laid out (N, O, L) like a conv's, so bias, scales and per-sample ranges
            # address the output channel on axis 1; (N, ..., O) again at the end
            res = gemm(
                xq.reshape(-1, xq.shape[-1]),
                wq.q.T,
                x_operand=xop,
                w_operand=wop,
                acc=acc_cfg,
                isa=isa,
            )
            lead = xq.shape[:-1]
            v = res.values
            res.values = v.reshape(xq.shape[0], -1, v.shape[-1]).transpose(0, 2, 1)
            out = self._mac_out(node, x, spec, res, layer, acc_cfg, keep=(0, 2))
            q = out.q.transpose(0, 2, 1).reshape(lead + (out.q.shape[1],))
            L = res.values.shape[2]

            def back(a):  # per-token (N, 1, L) scales / shifts -> (N, ..., 1)
                if a is None or np.ndim(a) <= 1:
                    return a
                from hwsim.execute.tensors import keepdims_form

                a = np.broadcast_to(a, (a.shape[0], 1, L)).transpose(0, 2, 1)
                return keepdims_form(a.reshape(lead + (1,)))

            return QTensor(q, back(out.scale), out.zero_point, out.fmt, back(out.shifts), out.base)
        else:
            res = gemm(
                xq.reshape(xq.shape[0], -1),
                wq.q.T,
                x_operand=xop,
                w_operand=wop,
                acc=acc_cfg,
                isa=isa,
            )
        return self._mac_out(node, x, spec, res, layer, acc_cfg)

    def _static_stage(self, node: Node, x: QTensor, spec: ActSpec, layer, acc_cfg, n: int):
        """The static output stage of a MAC layer on a per-tensor input: ``(bias,
        bias_clamped, register, output scale)`` (:meth:`_mac_bias`,
        :meth:`_requant_register` for ``f32(sx) * sw / sy``), built once per node, input
        scale and batch size (a cached register's gain error is recorded again, as a rebuilt
        one's would be)."""
        key = ("stage", node.name, float(np.float32(x.scale)), n, acc_cfg.format)
        cached = self._cache.get(key)
        if cached is not None:
            stage, gain = cached
            if gain is not None:
                self.stats[node.name].add_gain(gain)
            return stage
        n_out = node.wq.q.shape[0]
        bias, bias_clamped = self._mac_bias(node, x, acc_cfg, n, n_out)
        so = self._out_scale(spec)
        sw = np.asarray(node.wq.scale, np.float32)
        reg = self._requant_register(layer, np.asarray(x.scale, np.float32), sw, so)
        stage = (bias, bias_clamped, reg, so.astype(np.float32))
        self._cache[key] = (stage, reg.gain_error)
        return stage

    def _mac_out(
        self, node: Node, x: QTensor, spec, res, layer: LayerSpec, acc_cfg, keep=None, pre=None
    ) -> QTensor:
        """A MAC layer's sums ``res.values`` (N, O, ...) to its output: bias, requantization
        (static) or the per-sample range unit, counters. ``pre``: the :meth:`_static_stage`
        already built for these sums."""
        wq = node.wq
        vals = res.values
        nd = vals.ndim
        n_out = vals.shape[1]
        tail = (1,) * (nd - 2)
        if pre is not None:
            bias, bias_clamped, reg, so = pre
            out = output_stage(
                vals,
                reg,
                acc=acc_cfg,
                bias=bias,
                bias_axis=1,
                scale_axis=None if reg.multiplier.ndim > 1 else 1,
                out_format=spec.fmt,
                out_zero_point=spec.zero_point,
                rng=self._rng,
            )
            self.stats[node.name].add(
                res.counters, out.bias_overflows, out.clamped, vals.size, bias_clamped
            )
            return QTensor(out.values, so, spec.zero_point, spec.fmt)
        bias, bias_clamped = self._mac_bias(node, x, acc_cfg, vals.shape[0], n_out)
        if bias is not None and np.ndim(bias) == 2:
            bias = bias.reshape(bias.shape + tail)
        if spec.mode != "static":
            t, bovf = add_bias(vals, bias, acc=acc_cfg, bias_axis=1)
            u, c, sigma = x.unit()
            sw = np.asarray(wq.scale, np.float32).astype(np.float64)
            if sw.ndim and sw.size and np.any(sw != sw.max()):
                # per-channel weight scales: one grid before the per-sample range unit
                smax = float(sw.max())
                t, step = self._align(
                    t, (sw / smax).reshape((1, n_out) + tail), layer, 1 << (acc_cfg.bits - 1)
                )
                sw_eff = smax * step
            else:
                sw_eff = float(sw.max()) if sw.ndim else float(sw)
            out = self._per_sample(
                t, spec, layer, u * sw_eff, None if c is None else c * sw_eff, sigma, keep
            )
            self.stats[node.name].add(res.counters, bovf, 0, vals.size, bias_clamped)
            return out
        sx = np.asarray(x.scale, np.float32)
        sw = np.asarray(wq.scale, np.float32)
        if sx.ndim:  # per-sample input scales: a (sample, channel) register array
            sx, sw = sx.reshape((-1, 1) + tail), sw.reshape((1, -1) + tail)
        so = self._out_scale(spec)
        reg = self._requant_register(layer, sx, sw, so)
        axis = None if reg.multiplier.ndim > 1 else 1
        out = output_stage(
            vals,
            reg,
            acc=acc_cfg,
            bias=bias,
            bias_axis=1,
            scale_axis=axis,
            out_format=spec.fmt,
            out_zero_point=spec.zero_point,
            rng=self._rng,
        )
        self.stats[node.name].add(
            res.counters, out.bias_overflows, out.clamped, vals.size, bias_clamped
        )
        return QTensor(out.values, so.astype(np.float32), spec.zero_point, spec.fmt)

    # -- other ops -----------------------------------------------------------------------------
    def _add(self, node: Node, a: QTensor, b: QTensor, spec: ActSpec) -> QTensor:
        layer = self.p.layer(node.name)
        if spec.mode != "static":
            return self._add_per_sample(a, b, spec, layer)
        so = self._out_scale(spec)
        tensors = (*node.inputs[:2], node.output)
        held_as = self._ort_add_holding(tensors, (a.fmt, b.fmt, spec.fmt))
        if (
            layer.register is ScaleKind.ORT
            and np.ndim(a.scale) == 0
            and np.ndim(b.scale) == 0
            and so.ndim == 0
            and held_as is not None
        ):
            holder, (da, db, d) = held_as

            def held(q, dq):  # the operand as onnxruntime holds it (uint8 = int8 + 128 where dq)
                return (
                    q if dq == 0 and q.dtype == holder else (q.astype(np.int16) + dq).astype(holder)
                )

            y = qops.qlinear_add(
                held(a.q, da),
                np.float32(a.scale),
                holder(a.zero_point + da),
                held(b.q, db),
                np.float32(b.scale),
                holder(b.zero_point + db),
                np.float32(so),
                holder(spec.zero_point + d),
            )
            if d == 0 and spec.fmt.bits == 8 and y.dtype == spec.fmt.dtype:
                return QTensor(y, so, spec.zero_point, spec.fmt)  # already in the format
            y = saturate(np.asarray(y, np.int64) - d, spec.fmt)  # narrower widths: clamp again
            return QTensor(np.asarray(y).astype(spec.fmt.dtype), so, spec.zero_point, spec.fmt)
        L = min(20, 30 - max(a.fmt.bits, b.fmt.bits))
        nd = a.q.ndim
        sa = a.scale_b().astype(np.float64)
        sb = b.scale_b().astype(np.float64)
        so_b = (so.reshape((-1,) + (1,) * (nd - 1)) if so.ndim == 1 else so).astype(np.float64)
        kind, rnd = layer.register, layer.rounding

        def reg(real):
            if np.ndim(real) == nd:  # per-token steps: one register per token
                return self._register(kind, real, rnd)
            return self._register(
                kind,
                np.broadcast_to(real, (a.q.shape[0],) + (1,) * (nd - 1)) if np.ndim(real) else real,
                rnd,
            )

        def ap(r, t):
            return np.asarray(
                r.apply(t, axis=None if np.ndim(r.multiplier) > 1 else 0, rng=self._rng), np.int64
            )

        if (
            kind is ScaleKind.ORT
            and a.q.shape == b.q.shape
            and a.q.ndim >= 1
            and a.q.size
            and not (a.per_token or b.per_token)
        ):
            # the same three ort registers and clamp as below, in one fused pass
            n = a.q.shape[0]
            m = [
                np.broadcast_to(reg(r).multiplier.reshape(-1), (n,)).astype(np.float32)
                for r in add_reals(sa, sb, so_b, L)
            ]
            out = np.empty(a.q.shape, spec.fmt.dtype)
            add_ort_fused(
                a.q.reshape(n, -1),
                a.zero_point,
                b.q.reshape(n, -1),
                b.zero_point,
                L,
                *m,
                spec.zero_point,
                spec.fmt.min,
                spec.fmt.max,
                out.reshape(n, -1),
            )
            return QTensor(out, so, spec.zero_point, spec.fmt)
        ra, rb, ro = add_reals(sa, sb, so_b, L)
        t = self._add_terms(a, b, ra, rb, L, layer)
        y = ap(reg(ro), t) + spec.zero_point
        return QTensor(
            np.asarray(saturate(y, spec.fmt)).astype(spec.fmt.dtype), so, spec.zero_point, spec.fmt
        )

    def _add_terms(self, a: QTensor, b: QTensor, ra, rb, L: int, layer: LayerSpec):
        """TFLite's integer Add up to the sum: ``R(ra)((qa - za) << L) + R(rb)((qb - zb) <<
        L)``, registers of the layer's kind for the reals ``ra``, ``rb`` (scalars, or per
        sample broadcasting over axis 0)."""
        n, nd = a.q.shape[0], a.q.ndim
        total = 0
        for x, real in ((a, ra), (b, rb)):
            real = np.asarray(real, np.float64)
            if real.ndim and real.ndim != nd:
                real = np.broadcast_to(real.reshape(-1), (n,)).reshape((n,) + (1,) * (nd - 1))
            reg = self._register(layer.register, real, layer.rounding)
            t = (x.q.astype(np.int64) - x.zero_point) << L
            axis = None if reg.multiplier.ndim > 1 else 0
            total = total + np.asarray(reg.apply(t, axis=axis, rng=self._rng), np.int64)
        return total

    def _add_per_sample(self, a: QTensor, b: QTensor, spec: ActSpec, layer: LayerSpec):
        """:meth:`_add_terms`, then :meth:`_per_sample`, with ``T = 2 max(sa, sb)`` -- per
        tensor from the inputs' bases when both sit on per-tensor grids (static or shift: the
        registers then differ per sample by the inputs' shifts only), per sample otherwise --
        so the sum steps by ``T / 2^L``."""
        L = min(20, 30 - max(a.fmt.bits, b.fmt.bits))
        n, nd = a.q.shape[0], a.q.ndim
        ua, ca, _ = a.unit()
        ub, cb, _ = b.unit()
        if ca is not None and cb is not None:
            twice = 2 * max(ca, cb)
        elif a.per_token or b.per_token:  # per token: the larger step of each element's pair
            ua, _, _ = self._unit_b(a, nd)
            ub, _, _ = self._unit_b(b, nd)
            twice = 2 * np.maximum(ua, ub)
        else:
            twice = 2 * np.maximum(np.broadcast_to(ua, (n,)), np.broadcast_to(ub, (n,)))
        t = self._add_terms(a, b, ua / twice, ub / twice, L, layer)
        step = np.asarray(twice, np.float64) / 2.0**L
        common = float(step) if np.ndim(step) == 0 else None
        return self._per_sample(t, spec, layer, step, common, None)

    def _concat_per_sample(
        self, ins: list, spec: ActSpec, layer: LayerSpec, axis: int = 1
    ) -> QTensor:
        """Each input's ``q - z`` brought to one grid (:meth:`_align`, factor ``u_i / c`` with
        ``c`` the largest input step: per tensor from the bases of static / shift inputs, per
        sample otherwise), concatenated on the channel axis, then :meth:`_per_sample`."""
        n = ins[0].q.shape[0]
        units = [i.unit() for i in ins]
        if all(c is not None for _, c, _ in units):
            c = max(c for _, c, _ in units)
            common = True
        else:
            c = np.max([np.broadcast_to(u, (n,)) for u, _, _ in units], axis=0)
            common = False
        bound = max(1 << i.fmt.bits for i in ins)
        parts, step = [], 1.0
        for i, (u, _, _) in zip(ins, units, strict=True):
            f = np.broadcast_to(u / c, (n,)).reshape((n,) + (1,) * (i.q.ndim - 1))
            t, step = self._align(i.q.astype(np.int64) - i.zero_point, f, layer, bound)
            parts.append(t)
        unit = np.asarray(c, np.float64) * step
        return self._per_sample(
            np.concatenate(parts, axis=axis), spec, layer, unit, float(unit) if common else None
        )

    def _pool_sum(self, node: Node, x: QTensor):
        t = x.q.astype(np.int64) - x.zero_point
        if node.op is Op.GAP:
            return t.sum(axis=(2, 3), keepdims=True), np.float64(t.shape[2] * t.shape[3])
        a = node.attrs
        s = windows(pad(t, a["pads"], 0), a["kernel"], a["strides"]).sum(axis=(-1, -2))
        return s, pool_count(t.shape, a).astype(np.float64)

    def _trunc(self, node: Node, x: QTensor, spec: ActSpec) -> QTensor:
        """A pool followed by QONNX ``Trunc`` (``node.attrs["trunc"]``,
        :func:`hwsim.graph.qonnx.trunc`): ``trunc_int(S, shift, bits, signed, narrow, mode)``
        on the integer window sum ``S``, at the output scale ``spec.scale`` (zero point 0).
        Raises where qonnx's ``x / scale`` is not the sum: a per-sample or per-token input
        scale, a non-zero input zero point, or ``scale != s_in / K`` for some window."""
        tr = node.attrs["trunc"]
        if np.ndim(x.scale) or x.zero_point != 0:
            raise HwsimError(
                f"node {node.name!r}: Trunc needs a per-tensor input scale and zero point 0"
            )
        s, count = self._pool_sum(node, x)
        ratio = np.float64(np.float32(x.scale)) / (count * np.float64(np.float32(tr["scale"])))
        if np.any(np.abs(ratio - 1.0) > 2.0**-20):
            raise HwsimError(
                f"node {node.name!r}: Trunc scale {tr['scale']} is not the pool input's scale "
                f"{float(x.scale)} over the window size {np.unique(count).tolist()}, so qonnx's "
                "x / scale is not the integer window sum (no integer rule)"
            )
        y = trunc_int(
            s, tr["shift"], tr["bits"], tr["signed"], tr["narrow"], QuantRounding(tr["mode"])
        )
        return QTensor(y.astype(spec.fmt.dtype), np.asarray(np.float32(spec.scale)), 0, spec.fmt)

    def _avg(self, node: Node, x: QTensor, spec: ActSpec) -> QTensor:
        if "trunc" in node.attrs:
            return self._trunc(node, x, spec)
        layer = self.p.layer(node.name)
        held = None
        if layer.register is ScaleKind.ORT and np.ndim(x.scale) == 0 and spec.mode == "static":
            held = self._ort_holding((node.inputs[0], node.output), (x.fmt, spec.fmt))
        if held is not None:
            # onnxruntime fuses DQ -> (Global)AveragePool -> Q into its QLinear kernels
            holder, d = held
            qargs = (
                (x.q.astype(np.int16) + d).astype(holder),
                np.float32(x.scale),
                holder(x.zero_point + d),
                np.float32(spec.scale),
                holder(spec.zero_point + d),
            )
            if node.op is Op.GAP:
                y = qops.qlinear_global_average_pool(*qargs)
            else:
                a = node.attrs
                y = qops.qlinear_average_pool(
                    *qargs,
                    kernel_shape=list(a["kernel"]),
                    strides=list(a["strides"]),
                    pads=list(a["pads"]),
                    count_include_pad=int(a["count_include_pad"]),
                )
            y = saturate(np.asarray(y, np.int64) - d, spec.fmt)
            return QTensor(
                np.asarray(y).astype(spec.fmt.dtype),
                np.asarray(np.float32(spec.scale)),
                spec.zero_point,
                spec.fmt,
            )
        s, count = self._pool_sum(node, x)
        tmp = QTensor(s, x.scale, 0, x.fmt, x.shifts, x.base)
        window = (
            x.q.shape[2] * x.q.shape[3] if node.op is Op.GAP else int(np.prod(node.attrs["kernel"]))
        )
        return self._rescale(
            tmp,
            spec,
            layer.register,
            layer.rounding,
            real_extra=1.0 / count,
            bound=window << x.fmt.bits,
        )

    # -- onnxruntime's lookup-table softmax -----------------------------------------------------
    def _ort_softmax(self, node: Node, ins: list, spec: ActSpec | None) -> bool:
        """A Softmax of an imported QDQ model that onnxruntime fuses into its 8-bit
        ``com.microsoft.QLinearSoftmax`` (the file's plan, :mod:`hwsim.graph.ort_plan`)."""
        x = ins[0] if ins else None
        if (
            spec is None
            or spec.mode != "static"
            or not isinstance(x, QTensor)
            or np.ndim(x.scale)
            or self.p.scheme is not None
            or self.p.layer(node.name).register is not ScaleKind.ORT
            or _ort_holder(x.fmt, spec.fmt) is None
        ):
            return False
        plan = self._plan()
        return plan is not None and plan.kernel(node.name) == "com.microsoft.QLinearSoftmax"

    def _qlinear_softmax(self, node: Node, x: QTensor, spec: ActSpec) -> QTensor:
        """onnxruntime's QLinearSoftmax (:func:`hwsim.qops.qlinear_softmax`: its exp table,
        float32 row sum and double quotient), on the uint8 = int8 + 128 tensors x86 runs."""
        holder, d = self._ort_holding((node.inputs[0], node.output), (x.fmt, spec.fmt))
        y = qops.qlinear_softmax(
            (x.q.astype(np.int16) + d).astype(holder),
            np.float32(x.scale),
            holder(x.zero_point + d),
            np.float32(spec.scale),
            holder(spec.zero_point + d),
            axis=node.attrs.get("axis", -1),
        )
        y = saturate(np.asarray(y, np.int64) - d, spec.fmt)
        self.stats[node.name].add(None, 0, 0, int(np.size(y)))
        return QTensor(
            np.asarray(y).astype(spec.fmt.dtype),
            np.asarray(np.float32(spec.scale)),
            spec.zero_point,
            spec.fmt,
        )

    # -- integer-only non-linearities (I-BERT) ------------------------------------------------
    def _integer_nonlinear(self, node: Node) -> bool:
        return node.op in IBERT_OPS and self.p.layer(node.name).nonlinear is NonLinear.INTEGER

    def _wide_ok(self, node: Node, ins: list) -> bool:
        """A producer in :attr:`wide` hands its accumulator over unless its inputs are not
        integers, or are per token with steps along the summed axis (a dense's ``K``, a
        matmul's ``a`` columns or ``b`` rows): then it runs its own rule (an alignment or a
        float island) and the kernel reads its quantized output."""
        if not all(isinstance(i, QTensor) for i in ins):
            return False
        if node.op is Op.DENSE:
            return not (ins[0].per_token and np.shape(ins[0].scale)[-1] != 1)
        if node.op is Op.MATMUL:
            a, b = ins
            return (
                a.q.ndim >= 3
                and b.q.ndim >= 3
                and not (
                    (a.per_token and np.shape(a.scale)[-1] != 1)
                    or (b.per_token and np.shape(b.scale)[-2] != 1)
                )
            )
        return True

    def _wide_out(self, node: Node, ins: list) -> QTensor:
        """A tensor in :attr:`wide`: a dense's biased accumulator at scale ``f32(sx*sw)``, a
        matmul's accumulator at ``f32(sa*sb)`` (format: the layer's accumulator, no
        requantization, as I-BERT feeds ``IntGELU`` / ``IntSoftmax``), or a division by a
        constant ``c`` of such a tensor: the same integers at scale ``s / c``."""
        x = ins[0]
        if node.op is Op.DIV_CONST:
            c = float(np.asarray(node.weight, np.float64).reshape(-1)[0])
            sign = -1 if c < 0 else 1
            return QTensor(
                (x.q.astype(np.int64) - x.zero_point) * sign,
                (np.asarray(x.scale, np.float64) / abs(c)).astype(np.float32),
                0,
                x.fmt
                if x.zero_point == 0 and sign > 0
                else IntFormat(min(64, x.fmt.bits + 2), True),
            )
        layer = self.p.layer(node.name)
        acc_cfg = layer.acc
        st = self.stats[node.name]
        fmt = acc_cfg.format
        if node.op is Op.ADD:
            # TFLite's integer Add up to the sum (:meth:`_add_terms`): on the grid
            # ``2 max(sa, sb) / 2^L``, L = min(20, 30 - bits) headroom bits
            a, b = ins
            L = min(20, 30 - max(a.fmt.bits, b.fmt.bits))
            nd = max(a.q.ndim, b.q.ndim)
            ua, _, _ = self._unit_b(a, nd)
            ub, _, _ = self._unit_b(b, nd)
            twice = 2 * np.maximum(ua, ub)
            t = self._add_terms(a, b, ua / twice, ub / twice, L, layer)
            st.add(None, 0, 0, int(np.size(t)))
            return QTensor(
                np.asarray(t, np.int64),
                np.asarray(twice / 2.0**L, np.float32),
                0,
                IntFormat(min(64, max(a.fmt.bits, b.fmt.bits) + L + 2), True),
            )
        if node.op is Op.MATMUL:
            from hwsim.datapath.gemm import check_accumulable, reduce_batched

            a, b = ins
            batch = np.broadcast_shapes(a.q.shape[:-2], b.q.shape[:-2])
            (M, K), N = a.q.shape[-2:], b.q.shape[-1]
            A = np.broadcast_to(a.q, batch + (M, K)).reshape(-1, M, K)
            B = np.broadcast_to(b.q, batch + (K, N)).reshape(-1, K, N)
            xop = Operand(a.fmt, zero_point=int(a.zero_point))
            wop = Operand(b.fmt, zero_point=int(b.zero_point))
            check_accumulable(K, xop, wop)
            vals, counters = reduce_batched(A, B, xop, wop, wop.zero_point, acc_cfg)
            st.add(counters, 0, 0, int(np.size(vals)))
            rank = len(batch) + 2
            ua, _, _ = self._unit_b(a, rank)
            ub, _, _ = self._unit_b(b, rank)
            scale = (np.asarray(ua, np.float32) * np.asarray(ub, np.float32)).astype(np.float32)
            return QTensor(np.asarray(vals, np.int64).reshape(batch + (M, N)), scale, 0, fmt)
        # dense: the biased accumulator (N, ..., O); the rows (N·...) as the GEMM's samples
        x = ins[0]
        xq = x.q
        lead, K = xq.shape[:-1], xq.shape[-1]
        R = int(np.prod(lead, dtype=np.int64))

        def rows(a):
            if a is None or np.ndim(a) == 0:
                return a
            b = np.asarray(a)
            b = b.reshape(b.shape + (1,) * (xq.ndim - b.ndim)) if b.ndim == 1 else b
            return np.broadcast_to(b, xq.shape)[..., 0].reshape(R)

        flat = QTensor(xq.reshape(R, K), rows(x.scale), x.zero_point, x.fmt, rows(x.shifts), x.base)
        xop = Operand(x.fmt, zero_point=int(x.zero_point))
        zw = np.asarray(node.wq.zero_point)
        wop = Operand(node.wq.fmt, zero_point=zw if zw.ndim == 1 else int(zw))
        res = gemm(flat.q, node.wq.q.T, x_operand=xop, w_operand=wop, acc=acc_cfg)
        n_out = res.values.shape[1]
        if x.per_token:  # the tokens are the samples of the bias unit (as _mac_tokens)
            bias, clamped = self._mac_bias(node, flat, acc_cfg, R, n_out)
        else:  # per sample or per tensor: one bias per sample, the same for its rows
            N = xq.shape[0]
            bias, clamped = self._mac_bias(node, x, acc_cfg, N, n_out)
            if bias is not None and np.ndim(bias) == 2 and N:
                bias = np.repeat(bias, R // N, axis=0)
        t, bovf = add_bias(res.values, bias, acc=acc_cfg, bias_axis=1)
        st.add(res.counters, bovf, 0, t.size, clamped)
        sw = np.asarray(node.wq.scale, np.float32)
        sx = np.asarray(flat.scale, np.float32)
        scale = (sx.reshape(-1, 1) if sx.ndim else sx) * (sw.reshape(1, -1) if sw.ndim else sw)
        scale = np.asarray(scale, np.float32)  # f32(sx*sw): per row and / or channel
        q = np.asarray(t, np.int64).reshape(lead + (n_out,))
        if scale.ndim:
            scale = np.broadcast_to(scale, (R if sx.ndim else 1, n_out if sw.ndim else 1))
            scale = scale.reshape((lead if sx.ndim else (1,) * len(lead)) + (scale.shape[1],))
        return QTensor(q, np.ascontiguousarray(scale), 0, fmt)

    def _nonlinear(self, node: Node, x: QTensor, spec: ActSpec) -> QTensor:
        """Softmax / GELU / LayerNorm on integers only (:mod:`hwsim.numerics.ibert`, I-BERT):
        ``q - z`` and its real step go through the kernel -- once per distinct step (one
        call per tensor for a per-tensor input; per sample, token or channel otherwise; a
        softmax or LayerNorm row has one step) -- and the kernel's integers (output step
        ``s'``; a negative ``s'``, GELU's, negates the integers) are requantized to the
        node's output with its register, ``R(s'/sy)``, as any integer op's sums are."""
        from hwsim.execute.tensors import token_rows
        from hwsim.numerics import ibert

        layer = self.p.layer(node.name)
        t = x.q.astype(np.int64) - x.zero_point
        nd = t.ndim
        if node.op is Op.GELU:
            axis = nd - 1
        else:
            axis = node.attrs.get("axis", -1) % nd
            if node.op is Op.LAYERNORM and axis != nd - 1:
                return self._requant_float(node, [x], spec)
        S = np.broadcast_to(x.scale_b(), t.shape)
        keep = tuple(a for a in range(nd) if a != axis)
        rows, undo = token_rows(t, keep)
        srows, _ = token_rows(S, keep)
        varies = any(x.scale_b().shape[a] > 1 for a in (axis,) if a < np.ndim(x.scale_b()))
        if varies and node.op is not Op.GELU and srows.size:
            # steps varying along the row (scores with per-token keys): one grid per row first
            umax = srows.max(axis=1, keepdims=True)
            rows, step = self._align(rows, srows / umax, layer, 1 << (x.fmt.bits - 1))
            srows = np.broadcast_to(umax * step, rows.shape)
        out = np.zeros(rows.shape, np.int64)
        st = self.stats[node.name]
        widest = 0
        stats_all = []
        if rows.size and node.op is Op.SOFTMAX:  # registers per row (its scale)
            out, _, stats = ibert.i_softmax_rows(rows, srows[:, 0], SOFTMAX_BITS)
            stats_all.append(stats)
        elif rows.size and node.op is Op.GELU:  # registers per element's scale
            out, _, stats = ibert.i_gelu_scales(rows, srows)
            stats_all.append(stats)
        elif rows.size:  # (29) a shift per row (token): a row's result depends on it alone;
            # the input scale cancels in LayerNorm (eq. 28)
            ks = ibert.layernorm_row_shifts(rows)
            for k in np.unique(ks):
                part = np.flatnonzero(ks == k)
                y, _, stats = ibert.i_layernorm(
                    rows[part], float(srows[part[0], 0]), node.weight, node.bias, shift=int(k)
                )
                out[part] = y
                stats_all.append(stats)
        for stats in stats_all:
            widest = max(widest, stats.widest_bits)
            st.count(**{f"int_{o}": getattr(stats, o) for o in _IBERT_OPS if getattr(stats, o)})
        st.int_bits = max(st.int_bits, widest)
        q = undo(out)
        # the kernel's output step, from the shapes: softmax 2^-16 (one for every row);
        # GELU a function of the input's step (its scale array's shape; negative); LayerNorm
        # sqrt(N) / 2^30 * gamma per channel (the input step cancels)
        xs = np.asarray(x.scale_b(), np.float64)
        if node.op is Op.SOFTMAX:
            sc, bits = np.float64(2.0**-SOFTMAX_BITS), np.asarray(_kernel_bits(node, 8, 1.0))
        elif node.op is Op.GELU:
            uniq, inv = np.unique(xs, return_inverse=True)
            g = [
                (nref.ibert_gelu_registers(float(u))[4], _kernel_bits(node, x.fmt.bits, float(u)))
                for u in uniq
            ]
            sc = np.array([v for v, _ in g])[inv.reshape(-1)].reshape(xs.shape)
            bits = np.array([b for _, b in g])[inv.reshape(-1)].reshape(xs.shape)
        else:
            _, unit = nref.ibert_layernorm_registers(
                np.asarray(node.weight, np.float64).tolist(),
                np.asarray(node.bias, np.float64).tolist(),
            )
            sc = np.asarray(unit, np.float64).reshape((1,) * (nd - 1) + (-1,))
            bits = np.asarray(_kernel_bits(node, x.fmt.bits, 1.0))
        q = q * np.where(sc < 0, -1, 1)  # GELU's and a negative gamma's step: integers negated
        sc = np.abs(sc)
        if layer.register in (ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE):
            # a tflite register takes int32: a rounding right shift by what the contract's
            # width exceeds 32 bits (from the widths, not the values), the step scaled up
            k = np.maximum(bits - 32, 0)
            if k.any():
                from hwsim.numerics.rounding import round_shift

                q = round_shift(
                    q,
                    np.broadcast_to(k, np.broadcast_shapes(k.shape, q.shape)),
                    RoundingMode.HALF_AWAY,
                )
                sc = sc * np.exp2(k)
                bits = bits - k
                st.count(int_shifts=int(np.count_nonzero(np.broadcast_to(k, q.shape))))
        from hwsim.execute.tensors import keepdims_form

        sc = np.float32(sc) if np.ndim(sc) == 0 else keepdims_form(np.asarray(sc, np.float32))
        nbits = int(min(64, max(2, int(np.max(bits)))))
        wide = QTensor(np.asarray(q, np.int64), sc, 0, IntFormat(nbits, True))
        if spec.mode == "shift" and spec.base == "runtime" and np.ndim(sc):
            # a runtime shift base needs one per-tensor grid: the tensor's largest step
            top = float(np.max(sc))
            t2, step = self._align(
                wide.q, np.asarray(sc, np.float64) / top, layer, 1 << (nbits - 1)
            )
            wide = QTensor(np.asarray(t2, np.int64), np.float32(top * step), 0, IntFormat(64, True))
        return self._rescale(wide, spec, layer.register, layer.rounding, bound=1 << (nbits - 1))

    # -- the op table ------------------------------------------------------------------------
    def _node(self, node: Node, ins: list):
        """One node: a float input (before the first QuantizeLinear) or the final Softmax runs
        as ``Q(op(DQ(inputs)))``; otherwise the op's entry in :data:`INTEGER_OPS`."""
        spec = self._spec(node.output)
        if node.attrs.get("ort_dynamic"):
            # onnxruntime's dynamic quantization (quantize_dynamic): float in, float out
            from hwsim.execute.dynamic import dynamic_dense

            self.float_ops.discard(node.name)
            if pairs_saturate(self.isa, _U8, node.wq.fmt):  # u8 x s8 on this ISA: eq. 16
                self.isa_layers.add(node.name)
            return dynamic_dense(node, ins[0], self.isa, self.stats[node.name])
        if "tflite" in node.attrs:
            # a TFLite kernel's own int8 rule (hwsim.execute.tflite: ADD, MUL, AVERAGE_POOL_2D,
            # MEAN, SOFTMAX of a .tflite model), on the layer's tflite / tflite-single register
            out = tflite_node(node, ins, spec, self.p.layer(node.name).register)
            self.stats[node.name].add(None, 0, 0, out.q.size)
            return out
        if node.output in self.wide and self._wide_ok(node, ins):
            return self._wide_out(node, ins)
        if (
            spec is not None
            and self._integer_nonlinear(node)
            and all(isinstance(i, QTensor) for i in ins)
        ):
            return self._nonlinear(node, ins[0], spec)
        if node.op is Op.SOFTMAX and self._ort_softmax(node, ins, spec):
            return self._qlinear_softmax(node, ins[0], spec)
        if any(not isinstance(i, QTensor) for i in ins) or node.op is Op.SOFTMAX:
            return self._requant_float(node, ins, spec)
        if spec is None and node.op not in MAC_OPS:
            return self._requant_float(node, ins, None)
        fn = INTEGER_OPS.get(node.op)
        if fn is None or (
            node.op not in TOKEN_OPS and any(isinstance(i, QTensor) and i.per_token for i in ins)
        ):
            return self._requant_float(node, ins, spec)
        return fn(self, node, ins, spec)

    def _op_mac(self, node: Node, ins: list, spec: ActSpec | None):
        return self._mac(node, ins[0], spec)

    def _op_add(self, node: Node, ins: list, spec: ActSpec):
        return self._add(node, ins[0], ins[1], spec)

    def _op_avg(self, node: Node, ins: list, spec: ActSpec):
        return self._avg(node, ins[0], spec)

    def _op_concat(self, node: Node, ins: list, spec: ActSpec):
        layer = self.p.layer(node.name)
        if node.attrs.get("consts"):  # constant parts (a class token): no integer rule yet
            return self._requant_float(node, ins, spec)
        axis = node.attrs.get("axis", 1)
        if spec.mode != "static":
            return self._concat_per_sample(ins, spec, layer, axis)
        parts = [
            i if _same_grid(i, spec) else self._rescale(i, spec, layer.register, layer.rounding)
            for i in ins
        ]
        return QTensor(
            np.concatenate([p.q for p in parts], axis=axis),
            parts[0].scale,
            spec.zero_point,
            spec.fmt,
        )

    def _op_mul(self, node: Node, ins: list, spec: ActSpec):
        x, layer = ins[0], self.p.layer(node.name)
        c = node.weight.astype(np.float64)
        cb = c.reshape((1, -1) + (1,) * (x.q.ndim - 2)) if c.ndim == 1 else c
        sign = np.where(cb < 0, -1, 1).astype(np.int64)
        if np.ndim(cb) and (spec.mode != "static" or np.ndim(x.scale) == 0):
            return self._rescale(
                x, spec, layer.register, layer.rounding, real_extra=np.abs(cb), sign=sign
            )
        if np.ndim(cb) == 0:
            return self._rescale(
                x, spec, layer.register, layer.rounding, real_extra=float(abs(c)), sign=sign
            )
        return self._requant_float(node, ins, spec)

    def _op_matmul(self, node: Node, ins: list, spec: ActSpec):
        """Product of two activations (attention scores ``q @ k^T``, context ``p @ v``):
        ``acc = sum_k (a - za)(b - zb)`` on the layer's accumulator (NumPy ``matmul``
        broadcasting over the leading axes; the sample axis 0 is one of them), then
        ``sat(R(sa*sb/sy)(acc) + zy)`` -- with the ``ort`` register onnxruntime's QLinearMatMul
        (:func:`hwsim.qops.qlinear_matmul`: ``f32(f32(sa*sb)/sy)``, round half to even). The
        sums are exact on every instruction set: onnxruntime runs activation x activation
        products as uint8 x uint8 (x86's QDQS8ToU8 makes int8 activations uint8), which its
        AVX2 kernels widen to int16 exactly (eq. 16 concerns uint8 x int8 only). Per-sample
        inputs: a register per sample; a per-sample output: the range unit on ``acc``
        (:meth:`_per_sample`, step ``ua*ub``)."""
        from hwsim.datapath.gemm import check_accumulable, reduce_batched

        a, b = ins
        if a.q.ndim < 3 or b.q.ndim < 3:
            return self._requant_float(node, ins, spec)  # a product across the sample axis
        if (a.per_token and np.shape(a.scale)[-1] != 1) or (
            b.per_token and np.shape(b.scale)[-1] != 1 and np.shape(b.scale)[-2] != 1
        ):  # steps varying along a's summed axis, or along both of b's
            return self._requant_float(node, ins, spec)
        layer = self.p.layer(node.name)
        acc_cfg = layer.acc
        if self.track_partials and not acc_cfg.track_partials:
            from dataclasses import replace

            acc_cfg = replace(acc_cfg, track_partials=True)
        batch = np.broadcast_shapes(a.q.shape[:-2], b.q.shape[:-2])
        (M, K), N = a.q.shape[-2:], b.q.shape[-1]
        A = np.broadcast_to(a.q, batch + (M, K)).reshape(-1, M, K)
        B = np.broadcast_to(b.q, batch + (K, N)).reshape(-1, K, N)
        xop = Operand(a.fmt, zero_point=int(a.zero_point))
        wop = Operand(b.fmt, zero_point=int(b.zero_point))
        check_accumulable(K, xop, wop)
        rank = len(batch) + 2
        ua, ca, siga = self._unit_b(a, rank)
        ub, cb, sigb = self._unit_b(b, rank)
        st = self.stats[node.name]
        if b.per_token and np.shape(b.scale)[-2] != 1:
            # b's steps vary along the summed axis (v's tokens in p @ v): one grid first
            vals, ub, cb, sigb = self._tokens_along_k(
                node, A, B, xop, wop, b, acc_cfg, layer, batch, ub, sigb
            )
        else:
            vals, counters = reduce_batched(A, B, xop, wop, wop.zero_point, acc_cfg)
            st.add(counters)
        vals = np.asarray(vals, np.int64).reshape(batch + (M, N))
        if spec.mode != "static":
            common = None if ca is None or cb is None else ca * cb
            sigma = None
            if siga is not None or sigb is not None:
                sigma = sum(np.asarray(0 if x is None else x, np.int64) for x in (siga, sigb))
            st.add(None, 0, 0, vals.size)
            return self._per_sample(vals, spec, layer, ua * ub, common, sigma)
        so = self._out_scale(spec)
        sa = np.asarray(ua, np.float32)
        sb = np.asarray(ub, np.float32)
        reg = self._requant_register(layer, sa, sb, so, rank=rank if (sa.ndim or sb.ndim) else 0)
        out = output_stage(
            vals,
            reg,
            acc=acc_cfg,
            scale_axis=None,
            out_format=spec.fmt,
            out_zero_point=spec.zero_point,
            rng=self._rng,
        )
        st.add(None, out.bias_overflows, out.clamped, vals.size)
        return QTensor(out.values, so.astype(np.float32), spec.zero_point, spec.fmt)

    def _tokens_along_k(self, node, A, B, xop, wop, b: QTensor, acc_cfg, layer, batch, ub, sigb):
        """``sum_k a[m, k] b[k, n]`` where ``b``'s rows (the summed axis) are tokens with their
        own steps. Per-token shift (``b = base * 2^-s_k``): the FQT paper's per-sample-shift
        accumulation with the tokens as groups (:func:`hwsim.datapath.gemm_per_sample_shift`,
        eq. 13-14): each token's product shifted right by ``s_k - min_k s_k`` with the layer's
        rounding, then summed, so the sum steps by ``base * 2^-min s``. Per-token dynamic: ``b``
        requantized to its largest step per matrix, ``sat(R(u_k / max u)(b - zb))`` in its own
        format (an align register per token). Returns ``(values, u_b, c_b, sigma_b)``."""
        from hwsim.datapath import Accumulator
        from hwsim.datapath.gemm import accumulate_sequence, reduce_batched
        from hwsim.numerics import wrap as wrap_to
        from hwsim.numerics.rounding import round_shift

        G, K, N = B.shape
        st = self.stats[node.name]
        u3 = np.broadcast_to(ub, batch + (K, 1)).reshape(G, K)
        if b.shifts is not None:
            sh = np.broadcast_to(sigb, batch + (K, 1)).reshape(G, K).astype(np.int64)
            lo = sh.min(axis=1) if K else np.zeros(G, np.int64)
            final = Accumulator(bits=acc_cfg.bits, overflow=acc_cfg.overflow)
            if layer.rounding is RoundingMode.STOCHASTIC:
                raise HwsimError(
                    f"node {node.name!r}: stochastic rounding draws per sample; the per-token "
                    f"shifts of p @ v need a deterministic rounding"
                )
            # eq. 13-14 with one product per group (a token of v), vectorised over the
            # matrices and outputs: P = acc(a_mk (v_kn - zv)), R = round(P / 2^(s_k - min s)),
            # summed over k in token order on the accumulator
            fmt = acc_cfg.format
            M = A.shape[1]
            vals = np.zeros((G, M, N), np.int64)
            # matrices in chunks: the products of one chunk, (g, M, K, N), stay below 2^22
            chunk = max(1, (1 << 22) // max(1, M * K * N))
            for g0 in range(0, G, chunk):
                g1 = min(G, g0 + chunk)
                P = (A[g0:g1].astype(np.int64) - xop.zero_point)[:, :, :, None] * (
                    B[g0:g1].astype(np.int64) - wop.zero_point
                )[:, None, :, :]  # (g, M, K, N)
                if acc_cfg.overflow is Overflow.WRAP:
                    Pg = np.asarray(wrap_to(P, fmt), np.int64)
                else:
                    Pg = np.clip(P, fmt.min, fmt.max)
                group_events = int(np.count_nonzero(Pg != P))
                shift = (sh[g0:g1] - lo[g0:g1, None])[:, None, :, None]
                R = round_shift(Pg, shift, layer.rounding)
                v, fc = accumulate_sequence(np.moveaxis(R, 2, 0), final)
                vals[g0:g1] = v
                fc.overflow_events += group_events
                st.add(fc)
            st.count(token_shifts=G * A.shape[1] * N * K)
            base = float(np.float32(b.base))
            lo_b = lo.reshape(batch + (1, 1))
            return vals, base * np.exp2(-lo_b.astype(np.float64)), base, lo_b
        umax = u3.max(axis=1, keepdims=True) if K else np.ones((G, 1))
        t = B.astype(np.int64) - b.zero_point
        reg = self._register(layer.register, (u3 / umax)[:, :, None], layer.rounding)
        st.count(align_requants=t.size)
        Bq = saturate(np.asarray(reg.apply(t, axis=None), np.int64), b.fmt).astype(b.fmt.dtype)
        vals, counters = reduce_batched(A, Bq, xop, Operand(b.fmt, zero_point=0), 0, acc_cfg)
        st.add(counters)
        return vals, umax.reshape(batch + (1, 1)), None, None

    def _op_mul_act(self, node: Node, ins: list, spec: ActSpec):
        """Product of two activations, element by element (broadcasting; a squeeze-excite gate
        times its feature map): ``t = (a - za)(b - zb)`` exact in int64, then ``sat(R(sa*sb/
        sy)(t) + zy)``. ``ort`` register, 8-bit, static per-tensor: onnxruntime's fused
        QLinearMul (:func:`hwsim.qops.qlinear_mul`, its float32 kernel). A per-sample output:
        the range unit on ``t`` (step ``ua*ub``)."""
        a, b = ins
        layer = self.p.layer(node.name)
        if a.q.ndim != b.q.ndim:
            return self._requant_float(node, ins, spec)  # broadcasting across the sample axis
        t = (a.q.astype(np.int64) - a.zero_point) * (b.q.astype(np.int64) - b.zero_point)
        st = self.stats[node.name]
        if spec.mode != "static":
            ua, ca, siga = self._unit_b(a, t.ndim)
            ub, cb, sigb = self._unit_b(b, t.ndim)
            common = None if ca is None or cb is None else ca * cb
            sigma = None
            if siga is not None or sigb is not None:
                sigma = sum(np.asarray(0 if x is None else x, np.int64) for x in (siga, sigb))
            st.add(None, 0, 0, t.size)
            return self._per_sample(t, spec, layer, ua * ub, common, sigma)
        so = self._out_scale(spec)
        held = None
        if layer.register is ScaleKind.ORT and np.ndim(a.scale) == 0 and np.ndim(b.scale) == 0:
            held = self._ort_holding((*node.inputs[:2], node.output), (a.fmt, b.fmt, spec.fmt))
        if held is not None:
            holder, d = held
            y = qops.qlinear_mul(
                (a.q.astype(np.int16) + d).astype(holder),
                np.float32(a.scale),
                holder(a.zero_point + d),
                (b.q.astype(np.int16) + d).astype(holder),
                np.float32(b.scale),
                holder(b.zero_point + d),
                np.float32(so),
                holder(spec.zero_point + d),
            )
            y = saturate(np.asarray(y, np.int64) - d, spec.fmt)
            st.add(None, 0, 0, t.size)
            return QTensor(np.asarray(y).astype(spec.fmt.dtype), so, spec.zero_point, spec.fmt)
        reg = self._requant_register(layer, a.scale_b(), b.scale_b(), so, rank=t.ndim)
        y = np.asarray(reg.apply(t, axis=None, rng=self._rng), np.int64) + spec.zero_point
        out = saturate(y, spec.fmt)
        st.add(None, 0, int(np.count_nonzero(out != y)), t.size)
        return QTensor(np.asarray(out).astype(spec.fmt.dtype), so, spec.zero_point, spec.fmt)

    # ops that keep their input's quantization: the integer rule where the output is
    # quantized as the input (or per sample), else Q(op(DQ(x)))
    def _op_maxpool(self, node: Node, x: QTensor):
        a = node.attrs
        return x.like(max_pool(x.q, a["kernel"], a["strides"], a["pads"], x.fmt.min))

    def _op_relu(self, node: Node, x: QTensor):
        if node.name in self._applied:  # applied by its convolution's output stage
            self._applied.discard(node.name)
            return x
        hi = _DTYPE_MAX.get(x.q.dtype)
        if hi is None:
            return x.like(np.maximum(x.q, x.zero_point))
        return self._clamped(x, x.zero_point, hi)

    def _op_clip(self, node: Node, x: QTensor):
        if node.name in self._applied:  # applied by its convolution's output stage
            self._applied.discard(node.name)
            return x
        if np.ndim(x.scale) == 0:
            return self._clamped(x, *self._clip_bounds(node, x))
        s = x.scale_b()
        bounds = [
            quantize_linear(
                np.full((1,) * x.q.ndim, v if np.isfinite(v) else np.sign(v) * 3e38, np.float32),
                s,
                x.zero_point,
                x.fmt,
            )
            for v in (node.attrs["min"], node.attrs["max"])
        ]
        return x.like(np.clip(x.q, *bounds).astype(x.q.dtype))

    def _clip_bounds(self, node: Node, x: QTensor) -> tuple[int, int]:
        """A Clip's quantized bounds on a per-tensor input, ``QuantizeLinear(min)`` and
        ``QuantizeLinear(max)`` (infinite bounds held at +-3e38), once per node and grid."""
        key = (node.name, float(np.float32(x.scale)), x.zero_point, x.fmt)
        hit = self._cache.get(key)
        if hit is None:
            hit = tuple(
                int(
                    quantize_linear(
                        np.float32(v if np.isfinite(v) else np.sign(v) * 3e38),
                        np.float32(x.scale),
                        x.zero_point,
                        x.fmt,
                    )
                )
                for v in (node.attrs["min"], node.attrs["max"])
            )
            self._cache[key] = hit
        return hit

    def _clamped(self, x: QTensor, lo: int, hi: int) -> QTensor:
        """``x`` with its integers clamped to ``[lo, hi]`` (``min(max(q, lo), hi)``, as
        ``np.clip``), in ``q``'s dtype, in place when the run donated the input
        (:meth:`_donatable`)."""
        q = x.q
        if q.ndim == 0 or q.size == 0 or not q.flags.c_contiguous or q.dtype not in _DTYPE_MAX:
            return x.like(np.minimum(np.maximum(q, lo), hi).astype(q.dtype))
        out = q if self._donated else np.empty_like(q)
        n = q.shape[0]
        clamp_rows(q.reshape(n, -1), lo, hi, out.reshape(n, -1))
        return x.like(out)

    def _op_flatten(self, node: Node, x: QTensor):
        return x.moved(lambda q: q.reshape(q.shape[0], -1))

    def _op_reshape(self, node: Node, x: QTensor):
        return x.moved(lambda q: reshape(q, node.attrs["shape"]))

    def _op_identity(self, node: Node, x: QTensor):
        return x

    def _op_transpose(self, node: Node, x: QTensor):
        return x.moved(lambda q: q.transpose(node.attrs["perm"]))

    def _op_gather(self, node: Node, x: QTensor):
        return x.moved(lambda q: take(q, node.attrs))

    def _op_slice(self, node: Node, x: QTensor):
        return x.moved(lambda q: slice_axes(q, node.attrs))

    def _op_resize(self, node: Node, x: QTensor):
        return x.moved(lambda q: repeat_axes(q, node.attrs["factors"]))

    def run(
        self,
        x: np.ndarray,
        keep_all: bool = True,
        sample_offset: int | None = None,
        visit: Callable[[Node, object], None] | None = None,
    ) -> dict:
        """Integer run of one batch. Returns tensors by name (QTensor for integer tensors, float
        arrays otherwise); with ``keep_all=False`` only the output is kept. ``sample_offset``:
        the global index of the batch's first sample for stochastic rounding (default: the
        samples this executor has run so far). ``visit(node, value)`` is called with each
        node's output as soon as it is computed (before tensors no later node reads are
        dropped), so statistics can stream with ``keep_all=False``."""
        g = self.g
        first = self.samples_seen if sample_offset is None else int(sample_offset)
        n_batch = int(np.shape(x)[0]) if np.ndim(x) else 1
        spec = self._spec(g.input)
        x = graph_input(g, x)  # float32, or the integer ids of a token input
        steps = range(len(g.nodes))
        if self.outputs_only and not keep_all and visit is None and self.isa is Isa.EXACT:
            if n_batch:
                steps = self._lowered(x).steps
        # an unquantized input stays float until the first QuantizeLinear (as in QDQ models);
        # a lowered segment holding every reader of the input quantizes it itself
        if spec is None or any(getattr(s, "float_input", None) is not None for s in steps):
            env = {g.input: x}
        else:
            env = {g.input: quantize_input(x, spec, self._token_axes(None, np.ndim(x)))}
        if len(steps) == 1 and not isinstance(steps[0], int):  # the whole graph in one session
            steps[0].run(env)
            if sample_offset is None:
                self.samples_seen += n_batch
            return {g.output: env[g.output]}
        last_use = {}
        for i, n in enumerate(g.nodes):
            for t in n.inputs:
                last_use[t] = i
        donate = not keep_all and visit is None
        self._applied.clear()
        for step in steps:
            if not isinstance(step, int):  # a lowered segment: onnxruntime's kernels
                step.run(env)
                for i in range(step.start, step.stop):
                    for t in g.nodes[i].inputs:
                        if last_use.get(t) == i and t != g.output:
                            env.pop(t, None)
                continue
            i = step
            n = g.nodes[i]
            self._rng = self._node_rngs(i, n, first, n_batch)
            self._current = n.name
            self._node_now, self._ins_now = n, [env[t] for t in n.inputs]
            self._donated = donate and self._donatable(n, i, env, last_use)
            self._donated_out = donate and n.name in self._act_after
            try:
                env[n.output] = self._node(n, self._ins_now)
            except MultiplierRangeError as e:  # name the layer whose register is out of range
                raise MultiplierRangeError(f"node {n.name!r} ({n.op.value}): {e}") from None
            except HwsimError as e:  # a user-facing error: say which node raised it
                if repr(n.name) in str(e):
                    raise
                try:  # the same type, so callers catching it still do
                    named = type(e)(f"node {n.name!r} ({n.op.value}): {e}")
                except TypeError:
                    named = HwsimError(f"node {n.name!r} ({n.op.value}): {e}")
                raise named from e
            finally:
                self._rng = None
                self._current = None
                self._donated = self._donated_out = False
                self._node_now, self._ins_now = None, []
            if visit is not None:
                visit(n, env[n.output])
            if not keep_all:
                for t in n.inputs:
                    if last_use.get(t) == i and t != g.output:
                        env.pop(t, None)
        self._applied.clear()
        if sample_offset is None:
            self.samples_seen += n_batch
        return env

    def _lowered(self, x):
        """This executor's :class:`~hwsim.execute.lowered.Lowering`, built on first use from a
        probe run of ``x[:1]`` (every tensor's grid) by a fresh exact executor."""
        if self.lowering is None:
            from hwsim.execute.lowered import lower

            probe = IntegerExecutor(self.p, isa=Isa.EXACT, seed=self.seed)
            env = probe.run(np.asarray(x)[:1], keep_all=True, sample_offset=0)
            self.lowering = lower(self, probe, env)
        return self.lowering

    def _donatable(self, node: Node, i: int, env: dict, last_use: dict) -> bool:
        """Whether node ``i`` (a ReLU / Clip) may overwrite its input's integers: nothing reads
        the input after it (its last reader, not the graph's output, read once), and no other
        tensor of the run shares its memory (a reshape's view of it, say). Only asked when the
        run keeps no tensors and hands none to a visitor."""
        if node.op not in (Op.RELU, Op.CLIP):
            return False
        t = node.inputs[0]
        x = env.get(t)
        if (
            not isinstance(x, QTensor)
            or last_use.get(t) != i
            or t == self.g.output
            or node.inputs.count(t) != 1
        ):
            return False
        for k, v in env.items():
            other = v.q if isinstance(v, QTensor) else v
            if k != t and isinstance(other, np.ndarray) and np.may_share_memory(other, x.q):
                return False
        return True

    def output(self, env: dict) -> np.ndarray:
        """The model output as float32 (DequantizeLinear of an integer output)."""
        y = env[self.g.output]
        return y.dequantize() if isinstance(y, QTensor) else np.asarray(y, np.float32)


def _ort_float_bias(node: Node, x: QTensor, quantized_out: bool) -> np.ndarray | None:
    """The float32 bias onnxruntime's float ``Conv`` / ``Gemm`` of a QDQ file adds, ``x``
    dequantized with a per-tensor scale ``sx``: the file's quantized bias dequantized
    (``node.bias``), or a float bias rounded by its ``WeightBiasQuantization`` graph transformer
    (``onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc``: a Conv / Gemm
    with a 1-D initializer bias, a DequantizeLinear input and an output that reaches a
    QuantizeLinear without branching, ``quantized_out``, gets ``s = Mul(sx, sw)``,
    ``DequantizeLinear(Cast<int32>(Round(Div(b, s))), s)``, each a float32 op):
    ``f32(rne(f32(b / f32(sx * sw))) * s)``, ``sw`` per tensor or per output channel. A
    float output (no quantizer after it) keeps the file's float bias."""
    if node.bias is None or node.bias_q is not None or not quantized_out:
        return node.bias
    B, s = qops.ort_quantized_bias(node.bias, np.float32(x.scale), node.wq.scale)
    return qops.ort_dequantized_bias(B, s).reshape(np.shape(node.bias))


def mlas_gemm_bias(x: np.ndarray, w: np.ndarray, c: np.ndarray, fma: bool = True) -> np.ndarray:
    """onnxruntime's float32 ``Gemm(x, w, c)`` with ``alpha = beta = 1`` (``Gemm<float>``:
    ``GemmBroadcastBias`` copies ``c`` into every row of ``Y``, then ``MlasGemm`` with ``beta =
    1``): each K block of :func:`hwsim.mlas.matmul`'s cut sums from zero in MLAS's order and is
    added to ``Y`` with one rounding, ``Y = f32(acc + Y)`` (the kernel's ``C = acc * alpha + C``,
    exact product for ``alpha = 1``), the first block onto the broadcast bias. ``x (R, K)``,
    ``w (K, N)``, ``c (N,)``; float32 ``(R, N)`` out. Not modelled: one row (``R = 1``) or one
    column (``N = 1``), which MLAS runs on its M=1 / GEMV kernels (another order)."""
    from hwsim import mlas

    x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
    y = np.broadcast_to(np.asarray(c, np.float32), (x.shape[0], w.shape[1])).copy()
    blocks = mlas._sgemm_blocks(w.shape[1], 0, x.shape[1], False) if x.shape[1] else []
    for k0, k1, _ in blocks:
        # one block (k1 - k0 <= the block length of its own cut): MLAS's sum of the block
        y = (mlas.matmul(x[:, k0:k1], w[k0:k1], fma=fma) + y).astype(np.float32)
    return y


def add_reals(sa, sb, so, L: int) -> tuple:
    """The three reals of the integer Add (docs/networks.md): ``sa / T``, ``sb / T`` and
    ``T / (2^L so)``, ``T = 2 max(sa, sb)`` (float64; scales as float64 of their float32)."""
    twice = 2 * np.maximum(sa, sb)
    return sa / twice, sb / twice, twice / (2.0**L * so)


def _activations_after(g) -> dict[str, Node]:
    """Convolutions whose output is read by one ReLU / Clip alone, once (and is not the graph's
    output): conv name -> that activation node."""
    cons = g.consumers()
    out = {}
    for n in g.nodes:
        readers = cons.get(n.output, [])
        if (
            n.op is Op.CONV
            and n.output != g.output
            and len(readers) == 1
            and readers[0].op in (Op.RELU, Op.CLIP)
            and readers[0].inputs.count(n.output) == 1
        ):
            out[n.name] = readers[0]
    return out


def _same_grid(x: QTensor, spec: ActSpec) -> bool:
    """``x`` is already on the static grid of ``spec`` (a scale, zero point and format)."""
    return (
        spec.mode == "static"
        and np.ndim(x.scale) == 0
        and np.float32(spec.scale) == np.float32(x.scale)
        and spec.zero_point == x.zero_point
    )


def _keeps_quantization(rule: Callable) -> Callable:
    """An op that keeps its input's quantization: ``rule`` where the output is quantized as
    the input (or per sample), else ``QuantizeLinear(op(DequantizeLinear(x)))``."""

    def op(self: IntegerExecutor, node: Node, ins: list, spec: ActSpec):
        x = ins[0]
        if spec.mode != "static" or (_same_grid(x, spec) and spec.fmt == x.fmt):
            return rule(self, node, x)
        return self._requant_float(node, ins, spec)

    return op


INTEGER_OPS: dict[Op, Callable] = {
    Op.CONV: IntegerExecutor._op_mac,
    Op.DENSE: IntegerExecutor._op_mac,
    Op.ADD: IntegerExecutor._op_add,
    Op.GAP: IntegerExecutor._op_avg,
    Op.AVGPOOL: IntegerExecutor._op_avg,
    Op.CONCAT: IntegerExecutor._op_concat,
    Op.MUL: IntegerExecutor._op_mul,
    Op.MATMUL: IntegerExecutor._op_matmul,
    Op.MUL_ACT: IntegerExecutor._op_mul_act,
    Op.MAXPOOL: _keeps_quantization(IntegerExecutor._op_maxpool),
    Op.RELU: _keeps_quantization(IntegerExecutor._op_relu),
    Op.CLIP: _keeps_quantization(IntegerExecutor._op_clip),
    Op.FLATTEN: _keeps_quantization(IntegerExecutor._op_flatten),
    Op.RESHAPE: _keeps_quantization(IntegerExecutor._op_reshape),
    Op.IDENTITY: _keeps_quantization(IntegerExecutor._op_identity),
    Op.TRANSPOSE: _keeps_quantization(IntegerExecutor._op_transpose),
    Op.GATHER: _keeps_quantization(IntegerExecutor._op_gather),
    Op.SLICE: _keeps_quantization(IntegerExecutor._op_slice),
    Op.RESIZE: _keeps_quantization(IntegerExecutor._op_resize),
}
"""Op -> its integer rule ``f(executor, node, inputs, output spec)``; an op not listed runs
as ``QuantizeLinear(op(DequantizeLinear(inputs)))`` -- in this version the transformer
non-linearities and constant arithmetic (layernorm, softmax, gelu, sigmoid, silu, hardsigmoid,
hardswish, add_const, div_const, reduce_mean, embedding): float islands, as onnxruntime runs
them between DequantizeLinear and QuantizeLinear."""


TOKEN_OPS = frozenset(
    {
        Op.DENSE,
        Op.MATMUL,
        Op.MUL_ACT,
        Op.MUL,
        Op.ADD,
        Op.RELU,
        Op.CLIP,
        Op.FLATTEN,
        Op.RESHAPE,
        Op.IDENTITY,
        Op.TRANSPOSE,
        Op.GATHER,
        Op.SLICE,
        Op.RESIZE,
    }
)
"""Integer rules that take per-token inputs (scales per token, :class:`QTensor`); another op
with a per-token input runs as ``QuantizeLinear(op(DequantizeLinear(inputs)))`` (a conv or a
pool would sum values of different tokens' grids)."""


IBERT_OPS = (Op.SOFTMAX, Op.GELU, Op.LAYERNORM)
"""Ops with an integer-only kernel (:mod:`hwsim.numerics.ibert`), chosen per layer by
``LayerSpec.nonlinear``."""

_IBERT_OPS = ("multiplies", "shifts", "divides", "compares", "adds")


def wide_tensors(program: QuantProgram) -> set[str]:
    """Tensors an integer non-linearity reads at its producer's accumulator width, as I-BERT
    feeds its kernels: the output of a dense, of a matmul of two activations or of an Add (the
    residual sum before its output register, as I-BERT's 22-bit LayerNorm input), or a
    division of one by a scalar constant, whose every reader is a softmax / GELU / LayerNorm with
    ``nonlinear = integer`` (or such a division). Their ActSpecs are not used."""
    g = program.graph
    cons = g.consumers()

    def integer(n):
        return n.op in IBERT_OPS and program.layer(n.name).nonlinear is NonLinear.INTEGER

    wide: set[str] = set()
    for n in reversed(g.nodes):
        readers = cons.get(n.output, [])
        if n.output == g.output or not readers:
            continue
        if not all(integer(c) or (c.op is Op.DIV_CONST and c.output in wide) for c in readers):
            continue
        if n.op in (Op.DENSE, Op.MATMUL, Op.ADD):
            wide.add(n.output)
        elif (
            n.op is Op.DIV_CONST
            and np.size(n.weight) == 1
            and float(np.asarray(n.weight).reshape(-1)[0]) != 0
        ):
            wide.add(n.output)
    # a division is wide only where its input is (else it divides requantized integers)
    prod = g.producer()
    for t in sorted(wide):
        n = prod[t]
        if n.op is Op.DIV_CONST and n.inputs[0] not in wide:
            wide.discard(t)
    return wide


SOFTMAX_BITS = 16
"""Output width of the integer softmax (I-BERT's ``output_bit``): probabilities at step
``2^-16``, then requantized to the node's output like any integer result."""


def _kernel_bits(node: Node, in_bits: int, scale: float) -> int:
    """A bound, from the contracts' widths (``docs/numerics.md`` eq. 24-28), on the signed
    width of an integer kernel's output for ``in_bits``-bit input at step ``scale``: the
    softmax's ``SOFTMAX_BITS + 1``; GELU's ``bits(x) + bits(2 / |erf_scale|) + 2``;
    LayerNorm's ``33 + ceil(log2(N) / 2) + bits(max |bias_int|) + 1``. Fixed by the shapes and the
    scales, so what depends on it (a tflite register's pre-shift, alignment headroom) does not
    depend on the values."""
    from hwsim.numerics import reference as nref

    if node.op is Op.SOFTMAX:
        return SOFTMAX_BITS + 1
    if node.op is Op.GELU:
        erf_scale = nref.ibert_gelu_registers(scale)[3]
        return in_bits + int(2.0 / abs(erf_scale)).bit_length() + 2
    n = int(np.size(node.weight))
    bias_int, _ = nref.ibert_layernorm_registers(
        np.asarray(node.weight, np.float64).tolist(), np.asarray(node.bias, np.float64).tolist()
    )
    top = max((abs(int(b)) for b in bias_int), default=0)
    return 33 + math.ceil(math.log2(max(n, 1)) / 2) + top.bit_length() + 1
