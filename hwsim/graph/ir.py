"""The graph IR: a model as an ordered list of op nodes over named tensors.

One IR serves both executors: the float reference run and the integer run walk the same nodes,
so a per-layer comparison is a zip over tensor names.

Conventions: activations are float32 NCHW, ``(N, F)`` after Flatten/Reshape/Dense, or ``(N, T,
D)`` / ``(N, H, T, Dh)`` in transformers; the batch axis is always axis 0 and is never reshaped,
transposed, sliced or gathered away (import rejects a model that does: docs/networks.md). A model
whose input is integer (token ids, ``Graph.input_dtype``) feeds it to embedding lookups only.
``Node.weight`` is float32: conv ``(O, C/g, kh, kw)``, dense ``(O, K)`` (``y = x @ W.T + b``; on an
N-d input, ``attrs["nd"]``, over the last axis with the leading axes kept), the constant of a
mul / add_const / div_const (a scalar; a vector along axis 1 for mul; else the ONNX constant
right-aligned to the input's rank, axis 0 of size 1), the table of an embedding, gamma of a
layernorm (``Node.bias``: beta). BatchNormalization is folded into the conv before it at import;
the folded BN's ``gamma``/``beta`` stay in ``Node.attrs`` because data-free activation ranges are
derived from them.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field

import numpy as np

from hwsim.numerics import IntFormat
from hwsim.numerics.affine import Affine


class Op(enum.Enum):
    """Operations the executors implement (ONNX ops map onto these at import)."""

    CONV = "conv"
    DENSE = "dense"
    RELU = "relu"
    CLIP = "clip"
    ADD = "add"
    MUL = "mul"  # by a constant (scalar or per-channel), held in Node.weight
    MAXPOOL = "maxpool"
    AVGPOOL = "avgpool"
    GAP = "gap"
    FLATTEN = "flatten"
    RESHAPE = "reshape"
    CONCAT = "concat"
    SOFTMAX = "softmax"
    IDENTITY = "identity"
    BATCHNORM = "batchnorm"  # only where it cannot fold: between Q/DQ pairs of a QDQ model
    # transformers and modern CNNs (issue 15); the integer executor runs the arithmetic ones
    # as float islands, QuantizeLinear(op(DequantizeLinear(x))), until they get integer rules
    MATMUL = "matmul"  # two activations, numpy matmul over the last two axes (batched)
    TRANSPOSE = "transpose"  # attrs perm (perm[0] == 0)
    GATHER = "gather"  # constant attrs indices on an activation axis >= 1 (token selection)
    EMBEDDING = "embedding"  # rows of the constant table Node.weight at integer ids
    SLICE = "slice"  # attrs slices: ((axis, start, stop, step), ...), axes >= 1
    LAYERNORM = "layernorm"  # over the axes from attrs axis on; gamma/beta in weight/bias
    GELU = "gelu"  # attrs form: "erf" (exact) or "tanh" (approximation)
    SIGMOID = "sigmoid"
    SILU = "silu"  # x * sigmoid(x)
    HARDSIGMOID = "hardsigmoid"  # clip(alpha x + beta, 0, 1)
    HARDSWISH = "hardswish"  # x * clip(alpha x + beta, 0, 1)
    MUL_ACT = "mul_act"  # product of two activations (broadcasting)
    ADD_CONST = "add_const"  # x + c (a Sub of c imports as x + (-c), the same float32 values)
    DIV_CONST = "div_const"  # x / c
    REDUCE_MEAN = "reduce_mean"  # mean over attrs axes (>= 1), attrs keepdims
    RESIZE = "resize"  # nearest upsampling: attrs factors, one int >= 1 per axis (1 on axis 0)
    # elementwise functions a QDQ model quantizes one by one (onnxruntime's quantizer puts a
    # Q/DQ pair between the nodes of a GELU, so they cannot fuse); float models fuse them
    ERF = "erf"
    TANH = "tanh"


MAC_OPS = (Op.CONV, Op.DENSE)
"""Layers with weights (quantized weights, the datapath's conv / GEMM)."""

MATMUL_OPS = (Op.MATMUL,)
"""MAC ops without weights: both operands are activations (counted by the cost model; run as
float islands by the integer executor in this version)."""


@dataclass(frozen=True)
class TensorQuant(Affine):
    """Static per-tensor quantization of an activation in a QDQ model: an :class:`Affine`
    with a float32 scalar ``scale`` (as ONNX QuantizeLinear's) and an int ``zero_point``."""

    scale_name: str | None = field(default=None, compare=False)
    """the QuantizeLinear's scale initializer in an imported file (to find the tensor in
    onnxruntime's optimised graph, :mod:`hwsim.graph.ort_plan`)"""
    qonnx_rounding: str | None = None
    """a QONNX ``Quant``'s ``rounding_mode`` other than ROUND on a float tensor (the graph
    input): ``q = int_quant(x, scale, zero_point, ...)`` with that mode
    (:func:`hwsim.numerics.qonnx.int_quant`) instead of half to even; None: ROUND"""
    bipolar: bool = False
    """a QONNX ``BipolarQuant`` of a float tensor (the graph input): ``q = +1`` where
    ``x >= 0``, else ``-1`` (:func:`hwsim.numerics.qonnx.bipolar_quant`), 2-bit signed"""

    def clip_bounds(self, lo: int, hi: int) -> dict:
        """``Clip`` attributes whose float bounds dequantize exactly to the integers ``lo`` and
        ``hi`` on this grid: ``f32(f32(q - zero_point) * scale)`` (a narrowed range or a fused
        activation tighter than the format, as a clip node)."""
        s = np.float32(self.scale)
        return {
            "min": float(np.float32(lo - self.zero_point) * s),
            "max": float(np.float32(hi - self.zero_point) * s),
        }

    def __post_init__(self):
        s = float(np.float32(self.scale))
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"quantization scale must be finite and > 0, got {self.scale!r}")
        object.__setattr__(self, "scale", s)
        self.fmt.check(int(self.zero_point), "zero_point")
        object.__setattr__(self, "zero_point", int(self.zero_point))


@dataclass
class WeightQuant:
    """Integer weights ``q`` (int64 array, weight layout) with float32 ``scale`` and integer
    ``zero_point``, each a scalar (per-tensor) or a vector along output channels (axis 0)."""

    q: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    fmt: IntFormat
    source: str | None = None  # the quantized initializer of an imported model, by name

    @property
    def per_channel(self) -> bool:
        return np.ndim(self.scale) == 1

    @property
    def affine(self) -> Affine:
        """The weights' quantization (vectors along the output channels, axis 0)."""
        return Affine(self.scale, self.zero_point, self.fmt, 0 if self.per_channel else None)

    def dequantize(self) -> np.ndarray:
        """``float32(q - zp) * float32(scale)``, as ONNX DequantizeLinear computes it."""
        return self.affine.dequantize(self.q)


@dataclass
class Node:
    """One op. ``inputs``/``output`` are tensor names; ``attrs`` hold op attributes (strides,
    pads, kernel, axis, bounds, ...); ``weight``/``bias`` are float32 parameters; ``wq`` and
    ``bias_q`` are the integer weights and int32 bias of an imported quantized model."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    output: str
    attrs: dict = field(default_factory=dict)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    wq: WeightQuant | None = None
    bias_q: np.ndarray | None = None


@dataclass
class Graph:
    """A single-input, single-output model. ``act_quant`` holds the static quantization of
    activation tensors found in a QDQ model (tensor name -> TensorQuant); ``meta`` holds model
    metadata (e.g. hwsim's quantization settings)."""

    name: str
    source: str
    input: str
    input_shape: tuple
    output: str
    nodes: list[Node]
    act_quant: dict[str, TensorQuant] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    output_name: str = ""
    """The output's name in the ONNX file (``output`` may be an internal name behind a DQ)."""
    input_dtype: str = "float32"
    """The input's numpy dtype: ``float32`` (whatever float type the file declares), or the
    declared integer type of a token-id input (e.g. ``int64``), which only embedding lookups
    read; the executors take such data as integers (:func:`hwsim.execute.arrays.graph_input`)."""
    float_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """The float reference's clamps of an imported (not hwsim-written) QDQ model: tensor name ->
    ``(DQ(q_min), DQ(q_max))`` of its activation quantization, applied by
    :func:`hwsim.execute.run_float` after the tensor is computed. onnxruntime's QDQ quantizer
    deletes a ReLU/Clip whose range its QuantizeLinear already enforces, so those clamps are the
    only trace of the activations in the file (docs/networks.md, "The float reference")."""

    @property
    def quantized(self) -> bool:
        return any(n.wq is not None for n in self.nodes)

    def producer(self) -> dict[str, Node]:
        return {n.output: n for n in self.nodes}

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for n in self.nodes:
            for t in n.inputs:
                out.setdefault(t, []).append(n)
        return out

    def copy(self) -> Graph:
        """A graph whose nodes (and their ``attrs`` dicts) are new objects: changing a node of
        the copy (its weights' quantization, say) leaves this graph as it was. Parameter arrays
        are shared, never written in place."""
        nodes = [dataclasses.replace(n, attrs=dict(n.attrs)) for n in self.nodes]
        return dataclasses.replace(
            self,
            nodes=nodes,
            act_quant=dict(self.act_quant),
            meta=dict(self.meta),
            float_ranges=dict(self.float_ranges),
        )
