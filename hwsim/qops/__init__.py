"""The integer semantics of the ONNX quantized operators and of onnxruntime's fused QDQ kernels.

One pure function per operator (NumPy in, NumPy out), each stating its exact integer / float32
contract and the source it follows. The integer MACs run on the shared datapath
(:func:`hwsim.datapath.gemm` / :func:`hwsim.datapath.conv2d` on an int32 wrapping
``Accumulator(32)``) and requantization uses the ``ort`` :class:`~hwsim.numerics.ScaleRegister`
(:func:`hwsim.numerics.ort_requantize`), so the conformance tests prove that datapath bit-exact.

Two families:

* ONNX standard (domain ``""``): ``QuantizeLinear``, ``DequantizeLinear``, ``QLinearConv``,
  ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``, ``DynamicQuantizeLinear``, and the
  8-bit ``MaxPool``.
  Checked against the ONNX backend node tests (``tests/conformance/test_onnx_node.py``).
* onnxruntime contrib ops (domain ``com.microsoft``), the kernels ORT's default graph
  optimisations fuse QDQ models into: ``QLinearAdd``, ``QLinearMul``,
  ``QLinearGlobalAveragePool``, ``QLinearAveragePool``, ``QLinearConcat``, ``QGemm``,
  ``QLinearLeakyRelu``, ``QLinearSoftmax`` (and the contrib ``QuantizeLinear`` /
  ``DequantizeLinear``). The float32 kernels are emulated in their exact operation order on the
  x86-64 build with AVX2/FMA (``QLinearAdd``'s MLAS kernel uses fused multiply-adds, emulated
  exactly by :func:`fma_f32`).
  Checked against onnxruntime's CPU kernels (``tests/qops/``). ``MatMulIntegerToFloat`` and
  ``DynamicQuantizeMatMul`` are what ORT fuses ``quantize_dynamic`` models into.

``QLinearSigmoid`` is not emulated: its table comes from MLAS's polynomial logistic kernel,
whose float32 bits are not a short contract.

One module per operator family, each stating its contracts:

============================  ==========  ===================================  ===============
op type                       domain      function                             module
============================  ==========  ===================================  ===============
``QuantizeLinear``            ``""``, ms  :func:`quantize_linear`              ``quantize``
``DequantizeLinear``          ``""``, ms  :func:`dequantize_linear`            ``quantize``
``ConvInteger``               ``""``      :func:`conv_integer`                 ``conv``
``QLinearConv``               ``""``      :func:`qlinear_conv`                 ``conv``
``MatMulInteger``             ``""``      :func:`matmul_integer`               ``matmul``
``QLinearMatMul``             ``""``      :func:`qlinear_matmul`               ``matmul``
``QGemm``                     ms          :func:`qgemm`                        ``matmul``
``QLinearAdd``                ms          :func:`qlinear_add`                  ``elementwise``
``QLinearMul``                ms          :func:`qlinear_mul`                  ``elementwise``
``QLinearLeakyRelu``          ms          :func:`qlinear_leaky_relu`           ``elementwise``
``QLinearConcat``             ms          :func:`qlinear_concat`               ``elementwise``
``QLinearSoftmax``            ms          :func:`qlinear_softmax`              ``softmax``
``QLinearGlobalAveragePool``  ms          :func:`qlinear_global_average_pool`  ``pool``
``QLinearAveragePool``        ms          :func:`qlinear_average_pool`         ``pool``
``MaxPool`` (8-bit)           ``""``      :func:`max_pool`                     ``pool``
``DynamicQuantizeLinear``     ``""``      :func:`dynamic_quantize_linear`      ``dynamic``
``MatMulIntegerToFloat``      ms          :func:`matmul_integer_to_float`      ``dynamic``
``DynamicQuantizeMatMul``     ms          :func:`dynamic_quantize_matmul`      ``dynamic``
============================  ==========  ===================================  ===============

(ms = ``com.microsoft``.) ``common`` holds the formats, the float32 primitives of the x86-64
kernels (:func:`fma_f32`, :func:`cvtps_epi32`), the errors and :func:`collect_counters`.

:func:`run_node` dispatches by ``(domain, op_type)`` through the one table ``_OPS``;
:data:`SUPPORTED` lists the pairs. float8 / float4 / float6 quantized types are not integer
hardware: they raise :class:`NotIntegerFormatError` ("... is not an integer format").
"""

from __future__ import annotations

import inspect

import numpy as np

from hwsim.datapath.isa import resolve
from hwsim.qops.common import _SINK as _SINK
from hwsim.qops.common import _SUBBYTE as _SUBBYTE
from hwsim.qops.common import (
    ACC32,
    INT32,
    MS_DOMAIN,
    NotIntegerFormatError,
    QOpError,
    collect_counters,
    cvtps_epi32,
    fma_f32,
    int_format,
)
from hwsim.qops.common import _auto_pad as _auto_pad
from hwsim.qops.common import _f32_scale as _f32_scale
from hwsim.qops.common import _holder as _holder
from hwsim.qops.common import _ints as _ints
from hwsim.qops.common import _ints_attr as _ints_attr
from hwsim.qops.common import _mlas_quantize as _mlas_quantize
from hwsim.qops.common import _onnx_dtype as _onnx_dtype
from hwsim.qops.common import _operand_array as _operand_array
from hwsim.qops.common import _ort_register as _ort_register
from hwsim.qops.common import _out_format as _out_format
from hwsim.qops.common import _per_channel_scale as _per_channel_scale
from hwsim.qops.common import _quantize_divided as _quantize_divided
from hwsim.qops.common import _record as _record
from hwsim.qops.common import _saturate as _saturate
from hwsim.qops.common import _scalar as _scalar
from hwsim.qops.common import _zero_point as _zero_point
from hwsim.qops.conv import _bias as _bias
from hwsim.qops.conv import _conv_acc as _conv_acc
from hwsim.qops.conv import _conv_geometry as _conv_geometry
from hwsim.qops.conv import _conv_integer_pairs as _conv_integer_pairs
from hwsim.qops.conv import conv_integer, ort_dequantized_bias, ort_quantized_bias, qlinear_conv
from hwsim.qops.dynamic import (
    dynamic_quantize_linear,
    dynamic_quantize_matmul,
    matmul_integer_to_float,
)
from hwsim.qops.elementwise import _binary_formats as _binary_formats
from hwsim.qops.elementwise import _lookup as _lookup
from hwsim.qops.elementwise import (
    ort_broadcast_mode,
    qlinear_add,
    qlinear_concat,
    qlinear_leaky_relu,
    qlinear_mul,
)
from hwsim.qops.matmul import _gemm_bias as _gemm_bias
from hwsim.qops.matmul import _matmul_acc as _matmul_acc
from hwsim.qops.matmul import matmul_integer, qgemm, qlinear_matmul
from hwsim.qops.pool import _channels_first as _channels_first
from hwsim.qops.pool import _pool_geometry as _pool_geometry
from hwsim.qops.pool import _pool_windows as _pool_windows
from hwsim.qops.pool import max_pool, qlinear_average_pool, qlinear_global_average_pool
from hwsim.qops.quantize import _qparam as _qparam
from hwsim.qops.quantize import dequantize_linear, quantize_linear
from hwsim.qops.softmax import qlinear_softmax

# ``_helper as _helper`` above: the private helpers stay importable from ``hwsim.qops``, as
# they were before the operators were split into modules.
__all__ = [
    "ACC32",
    "INT32",
    "MS_DOMAIN",
    "SUPPORTED",
    "NotIntegerFormatError",
    "QOpError",
    "collect_counters",
    "conv_integer",
    "cvtps_epi32",
    "dequantize_linear",
    "dynamic_quantize_linear",
    "dynamic_quantize_matmul",
    "fma_f32",
    "int_format",
    "matmul_integer",
    "matmul_integer_to_float",
    "max_pool",
    "ort_broadcast_mode",
    "ort_dequantized_bias",
    "ort_quantized_bias",
    "qgemm",
    "qlinear_add",
    "qlinear_average_pool",
    "qlinear_concat",
    "qlinear_conv",
    "qlinear_global_average_pool",
    "qlinear_leaky_relu",
    "qlinear_matmul",
    "qlinear_mul",
    "qlinear_softmax",
    "quantize_linear",
    "run_node",
]


# --- dispatcher ----------------------------------------------------------------------------------
_OPS = {
    ("", "QuantizeLinear"): quantize_linear,
    ("", "DequantizeLinear"): dequantize_linear,
    ("", "QLinearConv"): qlinear_conv,
    ("", "QLinearMatMul"): qlinear_matmul,
    ("", "ConvInteger"): conv_integer,
    ("", "MatMulInteger"): matmul_integer,
    ("", "MaxPool"): max_pool,
    ("", "DynamicQuantizeLinear"): dynamic_quantize_linear,
    (MS_DOMAIN, "QuantizeLinear"): quantize_linear,
    (MS_DOMAIN, "DequantizeLinear"): dequantize_linear,
    (MS_DOMAIN, "QLinearAdd"): qlinear_add,
    (MS_DOMAIN, "QLinearMul"): qlinear_mul,
    (MS_DOMAIN, "QLinearGlobalAveragePool"): qlinear_global_average_pool,
    (MS_DOMAIN, "QLinearAveragePool"): qlinear_average_pool,
    (MS_DOMAIN, "QLinearConcat"): qlinear_concat,
    (MS_DOMAIN, "QLinearLeakyRelu"): qlinear_leaky_relu,
    (MS_DOMAIN, "QLinearSoftmax"): qlinear_softmax,
    (MS_DOMAIN, "QGemm"): qgemm,
    (MS_DOMAIN, "MatMulIntegerToFloat"): matmul_integer_to_float,
    (MS_DOMAIN, "DynamicQuantizeMatMul"): dynamic_quantize_matmul,
}

SUPPORTED: tuple[tuple[str, str], ...] = tuple(sorted(_OPS))
"""The ``(domain, op_type)`` pairs :func:`run_node` executes (``""`` is the ONNX domain)."""


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [_attr_value(i) for i in v]
    return v


def run_node(op_type: str, domain: str, attrs: dict, inputs: list, isa="exact") -> list[np.ndarray]:
    """Run one quantized node: ``inputs`` in the node's input order (``None`` for an omitted
    optional input), ``attrs`` by ONNX attribute name (bytes strings are decoded). Returns the
    outputs as a list. ``isa`` (``exact``, ``avx2``, ``auto``) selects the dot-product semantics
    of the ops that take one (eq. 16). An op outside :data:`SUPPORTED` is a ValueError naming
    it and listing the supported ones."""
    dom = "" if domain in ("", "ai.onnx", None) else domain
    fn = _OPS.get((dom, op_type))
    if fn is None:
        listed = ", ".join(f"{d or 'ai.onnx'}::{o}" for d, o in SUPPORTED)
        raise ValueError(
            f"hwsim.qops does not emulate {domain or 'ai.onnx'}::{op_type}; supported: {listed}"
        )
    params = inspect.signature(fn).parameters
    kw = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"isa"}
    unknown = sorted(set(attrs) - kw)
    if unknown:
        raise QOpError(f"{op_type} does not take attribute(s) {unknown}; it takes {sorted(kw)}")
    args = list(inputs)
    while args and args[-1] is None:
        args.pop()
    extra = {"isa": resolve(isa)} if "isa" in params else {}
    out = fn(*args, **{k: _attr_value(v) for k, v in attrs.items()}, **extra)
    return list(out) if isinstance(out, tuple) else [out]
