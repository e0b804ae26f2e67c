"""Which layers onnxruntime runs on its integer kernels: the fused QDQ plan of a model file.

onnxruntime rewrites a QDQ model before it runs it: ``DequantizeLinear -> Conv/Gemm/MatMul ->
QuantizeLinear`` chains become ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul`` (integer MLAS
kernels, whose x86 dot product depends on the CPU, ``docs/numerics.md`` eq. 16), while others
stay float ops on dequantized values. The choice depends on the graph (consumers of each
QuantizeLinear, activation types, ...), not on the CPU: hwsim asks onnxruntime itself, by
building a session with graph optimisation and reading the optimised graph back.

Transformers (``quantize_static`` QDQ exports of tests/conformance/archs.py's tiny ViT / BERT,
onnxruntime 1.32, x86), by the ONNX node the IR node is named after (:attr:`OrtPlan.kernels`;
a fused node keeps the name of the op it replaces):

* MatMul by a weight, and MatMul of two activations with both inputs behind a DQ and its output
  into a Q: ``QLinearMatMul``; the classifier Gemm: ``com.microsoft.QGemm``; a MatMul / Conv
  whose int8 input onnxruntime does not convert to uint8 (x86's ``QDQS8ToU8Transformer``
  skips a Q/DQ pair whose DequantizeLinear it cannot rewrite, e.g. one also read by another
  node, or whose QuantizeLinear output is a graph output): a float ``MatMul`` / ``Conv`` on
  dequantized values;
* Softmax between a DQ and a Q: ``com.microsoft.QLinearSoftmax`` (a 256-entry float exp table
  per input scale, the row's sum in float32, ``nearbyint(e * floor(1 / y_scale) / sum) + zp``:
  not the float Softmax quantized);
* Add / Mul of two quantized inputs (residual Adds, the Linear bias Add whose bias the
  quantizer stored as a quantized tensor, GELU's ``x * (1 + erf)`` and ``* 0.5``):
  ``com.microsoft.QLinearAdd`` / ``QLinearMul`` with uint8 activations; with int8 activations
  on x86 they stay float ``Add`` / ``Mul`` between DQ and Q (``QDQIsInt8Allowed`` is false);
  Concat of quantized inputs: ``com.microsoft.QLinearConcat`` (uint8);
* LayerNormalization, Erf, Tanh, Div, ReduceMean: float ops between DQ and Q;
* Transpose, Reshape, Slice, Squeeze, Gather (token selection, embedding tables): the DQ / Q
  around them dropped, the integers moved.

Before any fusion, ``WeightBiasQuantization`` (``core/optimizer/qdq_transformer/
weight_bias_quantization.cc``; ``BiasQuantization`` in earlier releases) replaces the float
bias initializer of a ``DQ -> Conv / Gemm -> Q`` by a float32-computed int32 bias behind its
own DequantizeLinear (:func:`hwsim.qops.ort_quantized_bias`, docs/numerics.md "onnxruntime's
bias quantization"): the fused kernel adds those integers, an unfused float Conv adds their
dequantized values, so such a layer of a file whose bias is float (``hwsim quantize`` writes
the int32 bias of a layer between static activations, float ones elsewhere) never runs on ``b``
itself.
:attr:`OrtPlan.quantized_biases` names the layers it rewrote.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from hwsim.errors import HwsimError

# fused integer ops of onnxruntime's CPU provider and the input index of their weight
_INTEGER_OPS = {
    "QLinearConv": 3,
    "QGemm": 3,
    "QLinearMatMul": 3,
    "MatMulInteger": 1,
    "ConvInteger": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
}


class NoPlanError(HwsimError):
    """onnxruntime cannot say which layers it fuses (not installed, or cannot load the model)."""


@dataclass(frozen=True)
class OrtPlan:
    """What onnxruntime (default session options, this machine's build) does with a model file.

    * ``integer_weights``: the weight initializers its integer kernels consume (the layers it
      fuses; other MAC layers run as float ops on dequantized values).
    * ``uint8_scales``: the activation scale initializers it pairs with a uint8 zero point. An
      int8 activation whose scale is among them runs as ``uint8 = int8 + 128`` (zero point +
      128): x86 builds' ``QDQS8ToU8Transformer`` converts int8 Q/DQ pairs before fusing (a
      no-op for exact integer sums, not for the float32 formulas of QLinearAdd /
      QLinearAveragePool, whose rounding sees the shifted zero points). ARM builds keep int8
      (``QDQIsInt8Allowed``), so the plan of an int8-activation model differs between the two.
    * ``kernels``: node name -> the op onnxruntime runs for it in the optimised graph, as
      ``op_type`` or ``domain.op_type`` (``QLinearMatMul``, ``com.microsoft.QLinearSoftmax``,
      ``com.microsoft.QLinearAdd``, ``MatMul``, ``LayerNormalization``, ...); a fused node keeps
      the name of the op it replaced (the IR node's name), nodes it drops are absent.

    * ``quantized_biases``: the weight initializers (as ``integer_weights``) of the Conv / Gemm
      layers whose float bias initializer ``WeightBiasQuantization`` replaced by an int32 one
      (:func:`hwsim.qops.ort_quantized_bias`): in the optimised graph their bias is an int32
      initializer (a fused node's bias input, or behind the DequantizeLinear feeding an unfused
      node's), where the model file has a float one.
    """

    integer_weights: frozenset[str]
    uint8_scales: frozenset[str]
    kernels: Mapping[str, str] = field(default_factory=dict)
    quantized_biases: frozenset[str] = frozenset()

    def kernel(self, node: str) -> str | None:
        """The op onnxruntime runs for the ONNX node named ``node`` (None: no such node left,
        e.g. a Q/DQ pair folded into a fused op, or a data movement it removed)."""
        return self.kernels.get(node)


def load_plan(path) -> OrtPlan:
    """The :class:`OrtPlan` of the model file at ``path`` (cached per path and mtime). Raises
    :class:`NoPlanError` if there is no such file, onnxruntime is missing or cannot load it."""
    if path is None or not os.path.isfile(str(path)):
        raise NoPlanError(f"{path!r} is not a model file onnxruntime can load")
    p = os.path.abspath(str(path))
    return _plan(p, os.path.getmtime(p))


@functools.lru_cache(maxsize=16)
def _plan(path: str, mtime: float) -> OrtPlan:
    try:
        import onnxruntime as ort
    except ImportError:
        raise NoPlanError("onnxruntime is not installed") from None
    import onnx

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = out
        try:
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 -- onnxruntime's own error types vary by build
            raise NoPlanError(f"onnxruntime cannot load {path}: {e}") from None
        m = onnx.load(out)
    src = onnx.load(path, load_external_data=False)
    names = set()
    for n in m.graph.node:
        i = _INTEGER_OPS.get(n.op_type)
        if i is not None and len(n.input) > i:
            names.add(n.input[i])
    # (scale, zero point) input pairs whose zero point is uint8: QuantizeLinear,
    # DequantizeLinear and every QLinear* op list an activation's parameters that way
    inits = {t.name: t for t in m.graph.initializer}
    u8 = set()
    for n in m.graph.node:
        for s, z in zip(n.input, n.input[1:], strict=False):
            zt, st = inits.get(z), inits.get(s)
            if zt is not None and st is not None and zt.data_type == onnx.TensorProto.UINT8:
                if st.data_type == onnx.TensorProto.FLOAT:
                    u8.add(s)
    kernels = {n.name: f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in m.graph.node}
    return OrtPlan(
        frozenset(names), frozenset(u8), MappingProxyType(kernels), _quantized_biases(src, m)
    )


# (weight, bias) inputs of the Conv / Gemm nodes and of the fused ops onnxruntime makes of them
_WEIGHT_BIAS = {"Conv": (1, 2), "Gemm": (1, 2), "QLinearConv": (3, 8), "QGemm": (3, 6)}


def _quantized_biases(src, opt) -> frozenset[str]:
    """The weight initializers (the int weights behind each layer's DequantizeLinear) of the
    Conv / Gemm nodes of ``src`` with a float bias initializer whose node in the optimised graph
    ``opt`` (fused or not, renamed or not: found by its weight) reads an int32 bias: an int32
    initializer, directly or through a DequantizeLinear."""
    import onnx

    def source(producer, name):  # an initializer, or the one a DequantizeLinear reads
        dq = producer.get(name)
        return dq.input[0] if dq is not None and dq.op_type == "DequantizeLinear" else name

    src_types = {t.name: t.data_type for t in src.graph.initializer}
    src_producer = {o: n for n in src.graph.node for o in n.output}
    float_bias = {
        source(src_producer, n.input[1])
        for n in src.graph.node
        if n.op_type in ("Conv", "Gemm")
        and len(n.input) > 2
        and src_types.get(n.input[2]) == onnx.TensorProto.FLOAT
    }
    types = {t.name: t.data_type for t in opt.graph.initializer}
    producer = {o: n for n in opt.graph.node for o in n.output}
    out = set()
    for n in opt.graph.node:
        wb = _WEIGHT_BIAS.get(n.op_type)
        if wb is None or len(n.input) <= wb[1] or not n.input[wb[1]]:
            continue
        w = source(producer, n.input[wb[0]])
        if (
            w in float_bias
            and types.get(source(producer, n.input[wb[1]])) == onnx.TensorProto.INT32
        ):
            out.add(w)
    return frozenset(out)
