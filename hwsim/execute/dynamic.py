"""Dynamically quantized layers (``onnxruntime.quantization.quantize_dynamic``) in the integer
executor: a dense or conv node imported with ``attrs["ort_dynamic"]``
(:meth:`hwsim.graph.onnx_import._Importer.dynamic_layer`) computed as onnxruntime computes its
chain, float32 in and float32 out, bit for bit.

Dense (``DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul -> Add``, or onnxruntime's fused
``DynamicQuantizeMatMul`` / ``DynamicQuantizeLinear + MatMulIntegerToFloat``, which give the
same bits):

(Y1) ``x_q, s, z = DynamicQuantizeLinear(x)`` over the **whole** input tensor -- every sample
     of the batch and every token (:func:`hwsim.qops.dynamic_quantize_linear`, (D1)-(D4));
(Y2) ``y = MatMulIntegerToFloat(x_q, W_q, s, w_scale, z, w_zero_point, bias)`` with ``W_q`` in
     the file's ``(K, N)`` layout (:func:`hwsim.qops.matmul_integer_to_float`, (M1)-(M3):
     ``f32(f32(acc) * f32(s * w_scale[n])) + bias[n]``, no fused multiply-add); an N-d input
     ``(N, ..., K)`` is one GEMM over its rows, as MatMul broadcasting against a 2-D weight.

Conv (``DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add``, which onnxruntime does
not fuse): (Y1), then ``acc = ConvInteger(x_q, W_q, z, w_zero_point)`` (int32, wrapping:
:func:`hwsim.qops.conv_integer`), ``y = f32(f32(acc) * f32(s * w_scale))``, then
``y = f32(y + bias[o])`` over the output channels -- the three float32 kernels in their order.

Because (Y1) takes its range over the whole tensor, one sample's output depends on the other
samples of its batch, exactly as in onnxruntime: compare hwsim and onnxruntime on the same
batches (a batch of one quantizes each sample on its own). ``isa`` is the dot product
(:mod:`hwsim.datapath.isa`): under ``Isa.AVX2`` a uint8 x int8 GEMM (QInt8 weights) sums
adjacent products in saturating int16 as onnxruntime's x86 kernels without VNNI do
(uint8 x uint8, QUInt8 weights, is exact everywhere, and so is ConvInteger with uint8
activations).
"""

from __future__ import annotations

import numpy as np

from hwsim import qops
from hwsim.datapath.isa import Isa
from hwsim.errors import HwsimError
from hwsim.execute.tensors import QTensor
from hwsim.graph.ir import Node, Op
from hwsim.qops.common import collect_counters


def _integers(v, signed: bool) -> np.ndarray:
    """The weights' int64 values in the file's 8-bit type (int8 if ``signed`` else uint8)."""
    return np.asarray(v).astype(np.int8 if signed else np.uint8)


def dynamic_dense(node: Node, x, isa: Isa, stats) -> np.ndarray:
    """A node with ``attrs["ort_dynamic"]`` (``Op.DENSE`` or ``Op.CONV``) on the float32 tensor
    ``x`` as onnxruntime computes it ((Y1)-(Y2) of the module docstring): float32 output of
    shape ``(N, ..., O)`` for a dense (``(N, F)`` input: ``(N, O)``), ``(N, O, H', W')`` for a
    conv; a quantized input (:class:`~hwsim.execute.QTensor`) is read as DequantizeLinear gives
    it. The datapath counters of its integer GEMM / convolution (MACs, int32 wraps, eq. 16
    pair saturations) go to ``stats`` (a :class:`~hwsim.execute.LayerStats`), with its
    outputs. A NaN in ``x`` raises :class:`hwsim.qops.QOpError` (its min / max is not
    emulated); a node of another op is an HwsimError."""
    wq = node.wq
    if wq is None or node.op not in (Op.DENSE, Op.CONV):
        raise HwsimError(
            f"node {node.name!r} ({node.op.value}): a dynamically quantized layer is a dense or "
            "conv with integer weights"
        )
    x = x.dequantize() if isinstance(x, QTensor) else np.asarray(x, np.float32)
    w = _integers(wq.q, wq.fmt.signed)
    wz = _integers(wq.zero_point, wq.fmt.signed)
    ws = np.asarray(wq.scale, np.float32)
    with collect_counters() as counters:
        xq, s, z = qops.dynamic_quantize_linear(x)
        if node.op is Op.CONV:
            y = _conv(node, xq, s, z, w, ws, wz, isa)
        else:
            rows = xq.reshape(-1, w.shape[1]) if node.attrs.get("nd") else xq.reshape(len(xq), -1)
            y = qops.matmul_integer_to_float(
                rows, np.ascontiguousarray(w.T), s, ws, z, wz, node.bias, isa=isa
            )
            y = y.reshape(x.shape[:-1] + (w.shape[0],)) if node.attrs.get("nd") else y
    for c in counters:
        stats.add(c)
    stats.add(None, outputs=y.size)
    return y


def _conv(node: Node, xq, s, z, w, ws, wz, isa: Isa) -> np.ndarray:
    """ConvInteger, Cast, Mul by ``f32(s * w_scale)``, Add of the bias: four onnxruntime
    kernels, each float32 step rounded once."""
    a = node.attrs
    acc = qops.conv_integer(
        xq, w, z, wz, dilations=a["dilations"], group=a["group"], pads=a["pads"],
        strides=a["strides"], isa=isa,
    )  # fmt: skip
    y = acc.astype(np.float32) * np.float32(s * ws)
    if node.bias is not None:
        y = y + node.bias.reshape(1, -1, 1, 1)
    return y.astype(np.float32)
