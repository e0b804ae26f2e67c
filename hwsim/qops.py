"""The integer semantics of the ONNX quantized operators and of onnxruntime's fused QDQ kernels.

One pure function per operator (NumPy in, NumPy out), each stating its exact integer / float32
contract and the source it follows. The integer MACs run on the shared datapath
(:func:`hwsim.datapath.gemm` / :func:`hwsim.datapath.conv2d` on an int32 wrapping
``Accumulator(32)``) and requantization uses the ``ort`` :class:`~hwsim.numerics.ScaleRegister`
(:func:`hwsim.numerics.ort_requantize`), so the conformance tests prove that datapath bit-exact.

Two families:

* ONNX standard (domain ``""``): ``QuantizeLinear``, ``DequantizeLinear``, ``QLinearConv``,
  ``QLinearMatMul``, ``ConvInteger``, ``MatMulInteger``, and the 8-bit ``MaxPool``.
  Checked against the ONNX backend node tests (``tests/conformance/test_onnx_node.py``).
* onnxruntime contrib ops (domain ``com.microsoft``), the kernels ORT's default graph
  optimisations fuse QDQ models into: ``QLinearAdd``, ``QLinearMul``,
  ``QLinearGlobalAveragePool``, ``QLinearAveragePool``, ``QLinearConcat``, ``QGemm``,
  ``QLinearLeakyRelu`` (and the contrib ``QuantizeLinear`` / ``DequantizeLinear``). The float32
  kernels are emulated in their exact operation order on the x86-64 build with AVX2/FMA
  (``QLinearAdd``'s MLAS kernel uses fused multiply-adds, emulated exactly by :func:`fma_f32`).
  Checked against onnxruntime's CPU kernels (``tests/conformance/test_ort_contrib.py``).

``QLinearSigmoid`` / ``QLinearSoftmax`` are not emulated: their tables come from MLAS's
polynomial ``exp`` / logistic kernels, whose float32 bits are not a short contract.

:func:`run_node` dispatches by ``(domain, op_type)``; :data:`SUPPORTED` lists the pairs.
float8 / float4 / float6 quantized types are not integer hardware: they raise
:class:`NotIntegerFormatError` ("... is not an integer format").
"""

from __future__ import annotations

from hwsim.errors import HwsimError

import contextlib
import contextvars
import inspect
import math

import numpy as np

from hwsim.datapath import Accumulator, Operand, conv2d, gemm, output_stage
from hwsim.datapath.config import Counters
from hwsim.datapath.gemm import pair_correction
from hwsim.datapath.isa import Isa, pairs_saturate, resolve
from hwsim.numerics import IntFormat, ScaleRegister, ort_combined_scale
from hwsim.numerics import wrap as wrap_to

ACC32 = Accumulator(32)
"""The accumulator of every ONNX / onnxruntime integer kernel: int32, wrapping."""

INT32 = IntFormat(32, True)
MS_DOMAIN = "com.microsoft"


class QOpError(HwsimError):
    """Inputs or attributes outside a quantized operator's contract."""


class NotIntegerFormatError(QOpError):
    """A float8 / float4 / float6 (or other non-integer) quantized type: not integer hardware."""


# --- formats ---------------------------------------------------------------------------------
_SUBBYTE = {"int4": (4, True), "uint4": (4, False), "int2": (2, True), "uint2": (2, False)}


def int_format(dtype, what: str = "tensor") -> IntFormat:
    """The :class:`IntFormat` of a NumPy dtype: int8..int32 / uint8..uint32, and the ml_dtypes
    sub-byte ints (``int4``, ``uint4``, ``int2``, ``uint2``). Any float type (float8, float4,
    float6, float16, ...) raises :class:`NotIntegerFormatError`."""
    dt = np.dtype(dtype)
    if dt.kind in "iu" and dt.itemsize <= 4:
        return IntFormat(8 * dt.itemsize, dt.kind == "i")
    if dt.name in _SUBBYTE:
        return IntFormat(*_SUBBYTE[dt.name])
    if dt.kind == "f" or dt.name.startswith("float") or dt.name == "bfloat16":
        raise NotIntegerFormatError(
            f"{what} type {dt.name} is not an integer format: hwsim emulates integer hardware "
            "(float8 / float4 / float6 quantization is out of scope)"
        )
    raise QOpError(f"{what} type {dt.name} is not a supported quantized integer type")


def _onnx_dtype(elem_type: int) -> np.dtype:
    from onnx import helper

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(int(elem_type)))
    except Exception as exc:  # noqa: BLE001 - onnx raises KeyError/ValueError by version
        raise QOpError(f"unknown ONNX element type {elem_type!r}") from exc


def _holder(fmt: IntFormat) -> np.dtype:
    """The NumPy dtype an output of ``fmt`` is returned in (sub-byte ints in int8 / uint8)."""
    for bits in (8, 16, 32, 64):
        if fmt.bits <= bits:
            return np.dtype(f"{'' if fmt.signed else 'u'}int{bits}")
    raise QOpError(f"no holder dtype for {fmt}")


def _ints(value, name: str) -> np.ndarray:
    """Integer values of an integer (or ml_dtypes sub-byte) array, as int64."""
    arr = np.asarray(value)
    int_format(arr.dtype, name)
    return arr.astype(np.int64)


def _operand_array(value, fmt: IntFormat) -> np.ndarray:
    """An operand in its holder dtype (what the datapath's engines take)."""
    return np.asarray(value).astype(_holder(fmt))


def _scalar(value, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.size != 1:
        raise QOpError(f"{name} must be a scalar or a 1-element tensor, got shape {arr.shape}")
    return arr.reshape(())


def _zero_point(value, fmt: IntFormat, name: str) -> int:
    """A per-tensor zero point (``None`` = 0) of format ``fmt``."""
    if value is None:
        return 0
    zfmt = int_format(np.asarray(value).dtype, name)
    if zfmt != fmt:
        raise QOpError(f"{name} is {zfmt} but its tensor is {fmt}")
    return int(_scalar(_ints(value, name), name))


def _f32_scale(value, name: str) -> np.float32:
    s = np.float32(_scalar(value, name).astype(np.float32))
    if not (np.isfinite(s) and s > 0):
        raise QOpError(f"{name} must be a finite positive scale, got {s}")
    return s


# --- float32 primitives of the x86-64 kernels --------------------------------------------------
def fma_f32(a, b, c) -> np.ndarray:
    """Fused multiply-add ``round_f32(a*b + c)`` of float32 operands, with one rounding.

    Exact emulation: ``a*b`` is exact in float64 (24 + 24 significant bits <= 53); ``s = p + c``
    in float64 is correctly rounded with error ``e`` (``TwoSum``, so ``s + e = a*b + c``
    exactly). Rounding ``s`` to float32 is then the correctly rounded FMA unless ``s`` is exactly
    halfway between two float32 values while ``e != 0`` (a float32 midpoint has 25 significant
    bits, so it is a float64 value; no midpoint can lie strictly between ``s`` and ``s + e``,
    because it would be a float64 closer to the exact sum than ``s``). In that case the exact
    value lies on ``e``'s side of the midpoint and the neighbour on that side is the answer.
    """
    a32 = np.asarray(a, np.float32)
    b32 = np.asarray(b, np.float32)
    c64 = np.asarray(c, np.float32).astype(np.float64)
    p = a32.astype(np.float64) * b32.astype(np.float64)
    s = p + c64
    bv = s - p
    err = (p - (s - bv)) + (c64 - bv)
    with np.errstate(over="ignore", invalid="ignore"):
        r = s.astype(np.float32)
        r64 = r.astype(np.float64)
        other = np.nextafter(r, np.where(s > r64, np.float32(np.inf), np.float32(-np.inf)))
        o64 = other.astype(np.float64)
        midpoint = (s != r64) & (s == (r64 + o64) / 2)
        fix = midpoint & (err != 0) & ((err > 0) == (o64 > s))
    return np.where(fix, other, r)


def cvtps_epi32(v) -> np.ndarray:
    """x86 ``cvtps2dq`` (default MXCSR): round half to even; NaN and values outside int32 give
    the "integer indefinite" ``INT32_MIN``. Also C ``(int32_t)nearbyintf(v)`` on x86-64."""
    v = np.asarray(v, np.float32).astype(np.float64)
    with np.errstate(invalid="ignore"):
        r = np.rint(v)
        ok = (r >= -(2.0**31)) & (r < 2.0**31)
    return np.where(ok, r, -(2.0**31)).astype(np.int64)


def _saturate(values: np.ndarray, fmt: IntFormat) -> np.ndarray:
    return np.clip(values, fmt.min, fmt.max).astype(_holder(fmt))


def _mlas_quantize(v, scale: np.float32, zp: int, fmt: IntFormat) -> np.ndarray:
    """MLAS ``MlasQuantizeLinear`` (``core/mlas/lib/quantize.cpp``; AVX-512F on this machine:
    ``intrinsics/avx512/quantize_avx512f.cpp``): ``t = f32(v / scale)``; ``t = min(max(t,
    min - zp), max - zp)`` (``maxps`` returns the bound for NaN); ``q = cvtps(t) + zp``."""
    t = np.asarray(v, np.float32) / np.float32(scale)
    return _quantize_divided(t, zp, fmt)


def _quantize_divided(t, zp, fmt: IntFormat) -> np.ndarray:
    zp = np.asarray(zp, np.int64)
    lo = (fmt.min - zp).astype(np.float64)
    hi = (fmt.max - zp).astype(np.float64)
    t = np.asarray(t).astype(np.float64)
    with np.errstate(invalid="ignore"):
        t = np.where(np.isnan(t), lo, np.minimum(np.maximum(t, lo), hi))
    return (np.rint(t).astype(np.int64) + zp).astype(_holder(fmt))


# --- quantization parameters --------------------------------------------------------------------
def _qparam(value, shape, axis: int, block_size: int, name: str) -> np.ndarray:
    """A scale / zero point reshaped to broadcast against ``shape``: per-tensor (one element),
    per-axis (1-D, length ``shape[axis]``) or blocked (same rank, repeated ``block_size`` times
    along ``axis`` and cut to ``shape[axis]``), as in the ONNX reference ``reshape_input``."""
    arr = np.asarray(value)
    if arr.size == 1 and not block_size:
        return arr.reshape(())
    nd = len(shape)
    if nd == 0:
        raise QOpError(f"{name} must be per-tensor for a scalar input, got shape {arr.shape}")
    if not -nd <= axis < nd:
        raise QOpError(f"axis {axis} is out of range for an input of rank {nd}")
    axis %= nd
    if not block_size:
        if arr.ndim != 1 or arr.shape[0] != shape[axis]:
            raise QOpError(
                f"per-axis {name} must be 1-D of length {shape[axis]} (axis {axis}), "
                f"got shape {arr.shape}"
            )
        dims = [1] * nd
        dims[axis] = arr.shape[0]
        return arr.reshape(dims)
    if block_size < 0:
        raise QOpError(f"block_size must be positive, got {block_size}")
    rep = np.repeat(arr, block_size, axis=axis) if arr.ndim == nd else arr
    if rep.ndim == nd and rep.shape[axis] >= shape[axis]:
        rep = rep.take(np.arange(shape[axis]), axis=axis)
    if rep.shape != tuple(shape):
        raise QOpError(
            f"blocked {name} of shape {arr.shape} (block_size {block_size}, axis {axis}) does "
            f"not match input shape {tuple(shape)}"
        )
    return rep


def quantize_linear(
    x,
    y_scale,
    y_zero_point=None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    precision: int = 0,
    saturate: int = 1,
) -> np.ndarray:
    """ONNX ``QuantizeLinear`` (opsets 10-25) to an integer format.

    ``y = saturate(round_half_even(x / y_scale) + y_zero_point)``. The division is done in
    NumPy's promotion of ``(x, y_scale)`` (float32 for float32 inputs) or in ``precision``, as
    the ONNX reference (``onnx/reference/ops/op_quantize_linear.py``); in MLAS's order
    (``core/mlas/lib/quantize.cpp``, ``MlasQuantizeLinear``): clamp the quotient to
    ``[min - zp, max - zp]`` (NaN to the lower bound), round half to even, add ``zp`` -- equal
    to rounding first for every finite quotient. Scale / zero point are per-tensor, per-axis
    (``axis``) or blocked (``block_size``). The output type comes from ``y_zero_point``, else
    ``output_dtype``, else uint8; int8/uint8/int16/uint16/int4/uint4/int2/uint2 outputs are
    returned in int8/uint8/int16/uint16 arrays. float8 / float4 / float6 outputs raise
    :class:`NotIntegerFormatError`. ``saturate`` only concerns float8 and is ignored.
    """
    del saturate
    if y_zero_point is not None:
        fmt = int_format(np.asarray(y_zero_point).dtype, "y_zero_point")
        if output_dtype:
            want = int_format(_onnx_dtype(output_dtype), "output_dtype")
            if want != fmt:
                raise QOpError(f"output_dtype is {want} but y_zero_point is {fmt}")
    elif output_dtype:
        fmt = int_format(_onnx_dtype(output_dtype), "output_dtype")
    else:
        fmt = IntFormat(8, False)
    x = np.asarray(x)
    scale = _qparam(y_scale, x.shape, axis, block_size, "y_scale")
    zp = np.int64(0)
    if y_zero_point is not None:
        zp = _qparam(_ints(y_zero_point, "y_zero_point"), x.shape, axis, block_size, "y_zp")
    if precision:
        dt = _onnx_dtype(precision)
        quotient = x.astype(dt) / scale.astype(dt)
    else:
        quotient = x / scale
    return _quantize_divided(quotient, zp, fmt)


def dequantize_linear(
    x, x_scale, x_zero_point=None, *, axis: int = 1, block_size: int = 0, output_dtype: int = 0
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opsets 10-25) from an integer format.

    ``y = f32(x - x_zero_point) * f32(x_scale)`` rounded to float32, then cast to
    ``output_dtype`` (default: ``x_scale``'s type). The difference is exact integer arithmetic
    (the datapath's operand subtraction) and its float32 conversion is exact below 2^24 -- the
    ONNX reference (``op_dequantize_linear.py``: ``(float32(x) - zp) * scale``) and ORT
    (``core/providers/cpu/quantization/quantize_linear.cc``) agree with it there. Scale / zero
    point granularity as :func:`quantize_linear`. float8 / float4 inputs raise
    :class:`NotIntegerFormatError`.
    """
    x = np.asarray(x)
    fmt = int_format(x.dtype, "x")
    d = x.astype(np.int64)
    if x_zero_point is not None:
        zfmt = int_format(np.asarray(x_zero_point).dtype, "x_zero_point")
        if zfmt != fmt:
            raise QOpError(f"x_zero_point is {zfmt} but x is {fmt}")
        d = d - _qparam(_ints(x_zero_point, "x_zero_point"), x.shape, axis, block_size, "x_zp")
    scale = np.asarray(x_scale)
    out = _onnx_dtype(output_dtype) if output_dtype else scale.dtype
    s32 = _qparam(scale, x.shape, axis, block_size, "x_scale").astype(np.float32)
    return (d.astype(np.float32) * s32).astype(out)


# --- convolution / matmul --------------------------------------------------------------------
def _ints_attr(value, n: int, default: int, name: str) -> list[int]:
    if value is None:
        return [default] * n
    vals = [int(v) for v in value]
    if len(vals) != n:
        raise QOpError(f"{name} must have {n} entries, got {vals}")
    return vals


def _auto_pad(mode) -> str:
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise QOpError(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {mode!r}")
    return mode


_SINK: contextvars.ContextVar = contextvars.ContextVar("hwsim_qops_counters", default=None)


@contextlib.contextmanager
def collect_counters():
    """Collect the datapath :class:`Counters` of every MAC the ops run inside the block (a
    list, one entry per GEMM / convolution call): MACs, int32 wraps, eq. 16 pair saturations."""
    sink: list[Counters] = []
    token = _SINK.set(sink)
    try:
        yield sink
    finally:
        _SINK.reset(token)


def _record(c: Counters) -> None:
    sink = _SINK.get()
    if sink is not None:
        sink.append(c)


def _conv_geometry(x, w, attrs: dict):
    """``(x, w, strides, dilations, pads)`` of an ONNX ``Conv``-geometry op as 2-D: a 1-D conv
    gets a unit height axis; ``auto_pad`` resolved as onnxruntime's
    ``ConvAttributes::ComputePadAndOutputShape``; pads (top, left, bottom, right)."""
    nsp = x.ndim - 2
    kernel = list(w.shape[2:])
    if attrs.get("kernel_shape") is not None and list(attrs["kernel_shape"]) != kernel:
        raise QOpError(f"kernel_shape {list(attrs['kernel_shape'])} != weight shape {kernel}")
    strides = _ints_attr(attrs.get("strides"), nsp, 1, "strides")
    dil = _ints_attr(attrs.get("dilations"), nsp, 1, "dilations")
    pads = _ints_attr(attrs.get("pads"), 2 * nsp, 0, "pads")
    mode = _auto_pad(attrs.get("auto_pad", "NOTSET"))
    if mode != "NOTSET":
        for i in range(nsp):
            size = x.shape[2 + i]
            if mode == "VALID":
                pads[i] = pads[nsp + i] = 0
                continue
            target = (size + strides[i] - 1) // strides[i]
            need = max(0, (target - 1) * strides[i] + dil[i] * (kernel[i] - 1) + 1 - size)
            head = (need + 1) // 2 if mode == "SAME_LOWER" else need // 2
            pads[i], pads[nsp + i] = head, need - head
    if nsp == 1:
        x = x[:, :, None, :]
        w = w[:, :, None, :]
        strides, dil, pads = [1, *strides], [1, *dil], [0, pads[0], 0, pads[1]]
    return x, w, strides, dil, pads


def _conv_acc(x, x_zero_point, w, w_zero_point, attrs: dict, isa=Isa.EXACT) -> np.ndarray:
    """int32 (wrapping) accumulators of an ONNX ``Conv``-geometry integer convolution
    ``sum (x - zx)(w - zw[m])``, 1-D or 2-D, on :func:`hwsim.datapath.conv2d` (``isa``: its
    ``QLinearConv`` semantics, eq. 16)."""
    x = np.asarray(x)
    w = np.asarray(w)
    xf = int_format(x.dtype, "x")
    wf = int_format(w.dtype, "w")
    if x.ndim not in (3, 4) or w.ndim != x.ndim:
        raise QOpError(
            f"hwsim emulates 1-D and 2-D integer convolutions; got x {x.shape}, w {w.shape}"
        )
    nsp = x.ndim - 2
    x, w, strides, dil, pads = _conv_geometry(x, w, attrs)
    xz = _zero_point(x_zero_point, xf, "x_zero_point")
    wz: object = 0
    if w_zero_point is not None:
        wzf = int_format(np.asarray(w_zero_point).dtype, "w_zero_point")
        if wzf != wf:
            raise QOpError(f"w_zero_point is {wzf} but w is {wf}")
        wz_arr = _ints(w_zero_point, "w_zero_point").reshape(-1)
        wz = int(wz_arr[0]) if wz_arr.size == 1 else wz_arr
    res = conv2d(
        _operand_array(x, xf),
        _operand_array(w, wf),
        stride=tuple(strides),
        padding=tuple(pads),
        dilation=tuple(dil),
        groups=int(attrs.get("group", 1)),
        x_operand=Operand(xf, xz),
        w_operand=Operand(wf, wz),
        acc=ACC32,
        isa=isa,
    )
    _record(res.counters)
    out = res.values
    return out[:, :, 0, :] if nsp == 1 else out


def conv_integer(
    x,
    w,
    x_zero_point=None,
    w_zero_point=None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
    isa="exact",
) -> np.ndarray:
    """ONNX ``ConvInteger`` (opset 10): int32 ``y[n, m, ...] = sum_{c,k} (x - x_zero_point) *
    (w[m] - w_zero_point[m])`` in ONNX ``Conv`` geometry (padding holds the zero point, so it
    adds 0), accumulated on an int32 wrapping accumulator (onnxruntime
    ``core/providers/cpu/quantization/conv_integer.cc``). x, w: int8 / uint8; ``w_zero_point``
    per-tensor or per output channel. 1-D and 2-D convolutions.

    ``isa="avx2"``: onnxruntime computes ``W @ im2col(x)`` in NCHW order, so the *weight* is
    MLAS's A operand: a uint8 x uint8 or x int8 is exact; an int8 x with uint8 weights pairs
    raw ``w * x`` products along ``(c, i, j)`` in saturating int16 (eq. 16)."""
    attrs = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    xa, wa = np.asarray(x), np.asarray(w)
    # the weight is MLAS's A operand here: eq. 16 applies to (w, x) = (uint8, int8)
    if not pairs_saturate(resolve(isa), int_format(wa.dtype, "w"), int_format(xa.dtype, "x")):
        return _conv_acc(x, x_zero_point, w, w_zero_point, attrs).astype(np.int32)
    with collect_counters() as inner:
        exact = _conv_acc(x, x_zero_point, w, w_zero_point, attrs).astype(np.int64)
    c = Counters(macs=sum(i.macs for i in inner))
    d = exact + _conv_integer_pairs(xa, x_zero_point, wa, attrs, exact.shape, c)
    if d.size:
        c.final_min, c.final_max = int(d.min()), int(d.max())
        wraps = np.abs((d - INT32.min) >> 32)
        c.overflow_events, c.outputs_overflowed = int(wraps.sum()), int(np.count_nonzero(wraps))
    _record(c)
    return wrap_to(d, INT32).astype(np.int32)


def _conv_integer_pairs(
    x, x_zero_point, w, attrs: dict, out_shape, counters: Counters
) -> np.ndarray:
    """eq. 16 for ConvInteger with int8 x and uint8 w: the int16 pair corrections of the raw
    products ``w[m, (c, i, j)] * col[(c, i, j), p]`` (NCHW im2col, padding = raw x zero point);
    the pair saturations go to ``counters``."""
    x, w, strides, dil, pads = _conv_geometry(x, w, attrs)
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape
    G = int(attrs.get("group") or 1)
    Ho, Wo = out_shape[2] if len(out_shape) == 4 else 1, out_shape[-1]
    zx = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    xp = np.full((N, C, H + pads[0] + pads[2], W + pads[1] + pads[3]), zx, np.int8)
    xp[:, :, pads[0] : pads[0] + H, pads[1] : pads[1] + W] = x
    cols = np.empty((N, C, kh, kw, Ho, Wo), np.int8)
    for i in range(kh):
        for j in range(kw):
            h0, w0 = i * dil[0], j * dil[1]
            cols[:, :, i, j] = xp[
                :, :, h0 : h0 + strides[0] * (Ho - 1) + 1 : strides[0],
                w0 : w0 + strides[1] * (Wo - 1) + 1 : strides[1],
            ]
    Fg = F // G
    # A = weights (G, Fg, K) uint8, B = columns (G, K, N*Ho*Wo) int8, K in (c, i, j) order
    a3 = np.ascontiguousarray(w.reshape(G, Fg, Cg * kh * kw))
    b3 = np.ascontiguousarray(
        cols.reshape(N, G, Cg * kh * kw, Ho * Wo).transpose(1, 2, 0, 3).reshape(G, -1, N * Ho * Wo)
    )
    corr = pair_correction(a3, b3, counters)  # (G, Fg, N*Ho*Wo)
    corr = corr.reshape(F, N, Ho * Wo).transpose(1, 0, 2)
    return corr.reshape(out_shape)


def _bias(B, M: int):
    if B is None:
        return None
    b = np.asarray(B)
    if b.dtype != np.int32 or b.ndim != 1 or b.shape[0] != M:
        raise QOpError(f"bias B must be int32 of shape ({M},), got {b.dtype} {b.shape}")
    return b.astype(np.int64)


def _ort_register(scale) -> ScaleRegister:
    s = np.asarray(scale, np.float32)
    if s.size == 1:
        return ScaleRegister("ort", s.reshape(()), 0)
    return ScaleRegister("ort", s.reshape(-1), np.zeros(s.size, np.int64))


def _out_format(y_zero_point, name: str = "y_zero_point") -> tuple[IntFormat, int]:
    if y_zero_point is None:
        raise QOpError(f"{name} is required (it sets the output type)")
    fmt = int_format(np.asarray(y_zero_point).dtype, name)
    return fmt, _zero_point(y_zero_point, fmt, name)


def _per_channel_scale(value, n: int, name: str) -> np.ndarray:
    s = np.asarray(value).astype(np.float32).reshape(-1)
    if s.size not in (1, n):
        raise QOpError(f"{name} must have 1 or {n} entries, got {s.size}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise QOpError(f"{name} must be finite and positive")
    return s.reshape(()) if s.size == 1 else s


def qlinear_conv(
    x,
    x_scale,
    x_zero_point,
    w,
    w_scale,
    w_zero_point,
    y_scale,
    y_zero_point,
    B=None,
    *,
    auto_pad: str = "NOTSET",
    dilations=None,
    group: int = 1,
    kernel_shape=None,
    pads=None,
    strides=None,
    isa="exact",
) -> np.ndarray:
    """ONNX ``QLinearConv`` (opset 10) as onnxruntime computes it
    (``core/providers/cpu/quantization/qlinearconv.cc``, ``MlasRequantizeOutput`` in
    ``core/mlas/lib/quantize.cpp``):

    ``acc = wrap32(sum (x - zx)(w - zw[m]) + B[m])`` (int32 accumulator, bias added in it);
    ``scale[m] = f32(f32(x_scale * w_scale[m]) / y_scale)``;
    ``y = saturate(round_half_even(f32(f32(acc) * scale[m])) + y_zero_point)``.

    x / w / y: int8 or uint8 (any integer format of 2..16 bits works); ``w_scale`` /
    ``w_zero_point`` per-tensor or per output channel. 1-D and 2-D convolutions. ``isa="avx2"``:
    onnxruntime's sums on x86 without VNNI (eq. 16; uint8 x int8, NHWC im2col pairs, depthwise
    exact).
    """
    attrs = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    acc = _conv_acc(x, x_zero_point, w, w_zero_point, attrs, resolve(isa))
    M = acc.shape[1]
    ws = _per_channel_scale(w_scale, M, "w_scale")
    scale = ort_combined_scale(_f32_scale(x_scale, "x_scale"), ws, _f32_scale(y_scale, "y_scale"))
    fmt, yz = _out_format(y_zero_point)
    return output_stage(
        acc,
        _ort_register(scale),
        acc=ACC32,
        bias=_bias(B, M),
        bias_axis=1,
        scale_axis=1,
        out_format=fmt,
        out_zero_point=yz,
    ).values


def _matmul_acc(a, b, a_zero_point, b_zero_point, isa=Isa.EXACT) -> np.ndarray:
    """int32 (wrapping) accumulators of ONNX ``MatMul``-semantics integer products
    ``sum_k (a[..., m, k] - za) * (b[..., k, n] - zb)`` on :func:`hwsim.datapath.gemm`.

    NumPy ``matmul`` broadcasting: a 1-D ``a`` is a row (its axis removed from the result), a
    1-D ``b`` a column; batch dimensions broadcast. ``za``: per-tensor, per-row ``(M,)`` or
    ``(..., M, 1)``; ``zb``: per-tensor, per-column ``(N,)`` or ``(..., 1, N)``.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    af = int_format(a.dtype, "A")
    bf = int_format(b.dtype, "B")
    if a.ndim == 0 or b.ndim == 0:
        raise QOpError("MatMul inputs must have at least one dimension")
    a_row, b_col = a.ndim == 1, b.ndim == 1
    a2 = a[None, :] if a_row else a
    b2 = b[:, None] if b_col else b
    if a2.shape[-1] != b2.shape[-2]:
        raise QOpError(f"A {a.shape} and B {b.shape}: inner dimensions differ")
    batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    M, K = a2.shape[-2:]
    N = b2.shape[-1]
    A = np.broadcast_to(_operand_array(a2, af), batch + (M, K))
    Bm = np.broadcast_to(_operand_array(b2, bf), batch + (K, N))
    za = np.int64(0)
    if a_zero_point is not None:
        za = _ints(a_zero_point, "a_zero_point")
        if int_format(np.asarray(a_zero_point).dtype) != af:
            raise QOpError("a_zero_point must have A's type")
        if za.size == 1:
            za = za.reshape(())
        else:
            za = np.broadcast_to(za.reshape(M, 1) if za.ndim == 1 else za, batch + (M, 1))
    zb = np.int64(0)
    if b_zero_point is not None:
        zb = _ints(b_zero_point, "b_zero_point")
        if int_format(np.asarray(b_zero_point).dtype) != bf:
            raise QOpError("b_zero_point must have B's type")
        if zb.size == 1:
            zb = zb.reshape(())
        elif zb.ndim > 1:
            zb = np.broadcast_to(zb, batch + (1, N))
    out = np.empty(batch + (M, N), np.int64)
    for idx in np.ndindex(*batch):
        if zb.ndim == 0:
            bz: object = int(zb)
        else:
            col = zb if zb.ndim == 1 else zb[idx][0]
            bz = int(col[0]) if np.all(col == col[0]) else np.asarray(col, np.int64)
        w_op = Operand(bf, bz)
        if za.ndim == 0:
            r = gemm(
                A[idx], Bm[idx], x_operand=Operand(af, int(za)), w_operand=w_op, acc=ACC32, isa=isa
            )
            _record(r.counters)
            out[idx] = r.values
            continue
        rows = za[idx][:, 0]
        for v in np.unique(rows):
            sel = rows == v
            r = gemm(
                A[idx][sel],
                Bm[idx],
                x_operand=Operand(af, int(v)),
                w_operand=w_op,
                acc=ACC32,
                isa=isa,
            )
            _record(r.counters)
            out[idx + (sel,)] = r.values
    if a_row:
        out = out[..., 0, :]
    if b_col:
        out = out[..., 0]
    return out


def matmul_integer(A, B, a_zero_point=None, b_zero_point=None, *, isa="exact") -> np.ndarray:
    """ONNX ``MatMulInteger`` (opset 10): int32 ``Y = (A - a_zero_point) @ (B - b_zero_point)``
    with NumPy matmul broadcasting, on an int32 wrapping accumulator (onnxruntime
    ``core/providers/cpu/quantization/matmul_integer.cc``). A, B: int8 / uint8;
    ``a_zero_point`` per-tensor or per-row, ``b_zero_point`` per-tensor or per-column.
    ``isa="avx2"``: uint8 A x int8 B pairs adjacent ``k`` in saturating int16 (eq. 16)."""
    return _matmul_acc(A, B, a_zero_point, b_zero_point, resolve(isa)).astype(np.int32)


def qlinear_matmul(
    a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point, *, isa="exact"
) -> np.ndarray:
    """ONNX ``QLinearMatMul`` (opsets 10, 21) as onnxruntime computes it
    (``core/providers/cpu/quantization/quantize_linear_matmul.cc``, ``MlasRequantizeOutput``):

    ``acc = wrap32((a - za) @ (b - zb[n]))`` (NumPy matmul broadcasting);
    ``scale[n] = f32(f32(a_scale * b_scale[n]) / y_scale)``;
    ``y = saturate(round_half_even(f32(f32(acc) * scale[n])) + y_zero_point)``.

    Scales may be float16 / bfloat16 (opset 21): they are widened to float32 exactly and the
    combination is done in float32. ``b_scale`` / ``b_zero_point``: per-tensor or per-column.
    ``isa="avx2"``: uint8 a x int8 b pairs adjacent ``k`` in saturating int16 (eq. 16).
    """
    acc = _matmul_acc(a, b, a_zero_point, b_zero_point, resolve(isa))
    b = np.asarray(b)
    N = b.shape[-1] if b.ndim > 1 else 1
    bs = _per_channel_scale(b_scale, N, "b_scale")
    scale = ort_combined_scale(_f32_scale(a_scale, "a_scale"), bs, _f32_scale(y_scale, "y_scale"))
    fmt, yz = _out_format(y_zero_point)
    axis = acc.ndim - 1 if acc.ndim else None
    return output_stage(
        acc,
        _ort_register(scale),
        acc=ACC32,
        scale_axis=axis if scale.size > 1 else 1,
        out_format=fmt,
        out_zero_point=yz,
    ).values


# --- onnxruntime contrib: element-wise ---------------------------------------------------------
def _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point):
    A = np.asarray(A)
    B = np.asarray(B)
    fmt = int_format(A.dtype, "A")
    if int_format(B.dtype, "B") != fmt:
        raise QOpError(f"A is {fmt} but B is {int_format(B.dtype, 'B')}")
    za = _zero_point(A_zero_point, fmt, "A_zero_point")
    zb = _zero_point(B_zero_point, fmt, "B_zero_point")
    zc = _zero_point(C_zero_point, fmt, "C_zero_point")
    return A, B, fmt, za, zb, zc


def ort_broadcast_mode(a_shape, b_shape) -> str:
    """Which span functor onnxruntime's ``BroadcastLooper`` calls for ``A op B``
    (``core/providers/cpu/math/element_wise_ops.h``, ``Broadcaster``): ``"input0_scalar"`` when
    A's extent along the innermost output axis that is not 1 (or along the outermost common
    axis) is 1, else ``"input1_scalar"`` when B's is, else ``"general"``. The whole operator
    uses one functor."""
    s1, s2 = tuple(a_shape), tuple(b_shape)
    if not s1:
        return "input0_scalar"
    if not s2:
        return "input1_scalar" if s1[-1] > 1 else "input0_scalar"
    n = min(len(s1), len(s2))
    d1 = d2 = 1
    for i in range(1, n + 1):
        a, b = s1[-i], s2[-i]
        if max(a, b) == 1 and i < n:
            continue
        d1, d2 = a, b
        break
    if d1 <= 1:
        return "input0_scalar"
    return "input1_scalar" if d2 <= 1 else "general"


def qlinear_add(
    A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None
) -> np.ndarray:
    """onnxruntime ``QLinearAdd`` (com.microsoft), NumPy broadcasting.

    8-bit (the AVX2 MLAS kernel ORT selects on x86-64 with AVX2/FMA,
    ``core/mlas/lib/intrinsics/avx2/qladd_avx2.cpp``, reached through
    ``contrib_ops/cpu/quantization/qlinear_binary_op.cc``). Let ``(P, zP, sP)`` be the input
    the kernel streams and ``(Q, zQ, sQ)`` the other: ``P = B`` when A is the per-span scalar
    (:func:`ort_broadcast_mode` gives ``"input0_scalar"``; the op swaps the operands), else
    ``P = A``. With ``rP = f32(sP / sC)``, ``rQ = f32(sQ / sC)``:

    ``F = f32(zC) - fma(rP, zP, f32(rQ * zQ))`` (GCC contracts the scalar expression
    ``zC - (rP*zP + rQ*zQ)`` into one FMA);
    ``y = fma(P, rP, fma(Q, rQ, F))`` (both the vector loop and, by contraction, the scalar-Q
    prologue ``F + Q*rQ``); ``C = saturate(cvtps(y))`` (``cvtps`` rounds half to even, out of
    int32 range -> INT32_MIN; packs saturate).

    ``int16`` / ``uint16`` are not accepted (onnxruntime 1.32's schema takes 8-bit only).
    """
    A, B, fmt, za, zb, zc = _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point)
    sa = _f32_scale(A_scale, "A_scale")
    sb = _f32_scale(B_scale, "B_scale")
    sc = _f32_scale(C_scale, "C_scale")
    if fmt.bits > 8:
        raise QOpError(f"QLinearAdd takes int8 / uint8, got {fmt}")
    Ab, Bb = np.broadcast_arrays(A.astype(np.int64), B.astype(np.int64))
    f32 = np.float32
    ra, rb = f32(sa / sc), f32(sb / sc)
    if ort_broadcast_mode(A.shape, B.shape) == "input0_scalar":
        (P, rp, zp), (Q, rq, zq) = (Bb, rb, zb), (Ab, ra, za)
    else:
        (P, rp, zp), (Q, rq, zq) = (Ab, ra, za), (Bb, rb, zb)
    fixed = f32(zc) - fma_f32(rp, f32(zp), rq * f32(zq))
    y = fma_f32(P.astype(f32), rp, fma_f32(Q.astype(f32), rq, fixed))
    return _saturate(cvtps_epi32(y), fmt)


def qlinear_mul(
    A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point=None
) -> np.ndarray:
    """onnxruntime ``QLinearMul`` (com.microsoft), 8-bit, NumPy broadcasting
    (``core/mlas/lib/qlmul.cpp``, SSE2 path; no FMA):

    ``r = f32(f32(sA * sB) / sC)``; ``p = (A - zA) * (B - zB)`` (exact int32);
    ``C = saturate(cvtps(f32(f32(f32(p) * r) + f32(zC))))`` -- the output zero point is added
    in float32 before the rounding.
    """
    A, B, fmt, za, zb, zc = _binary_formats(A, B, A_zero_point, B_zero_point, C_zero_point)
    if fmt.bits > 8:
        raise QOpError(f"QLinearMul takes int8 / uint8, got {fmt}")
    f32 = np.float32
    ratio = f32(
        f32(_f32_scale(A_scale, "A_scale") * _f32_scale(B_scale, "B_scale"))
        / _f32_scale(C_scale, "C_scale")
    )
    p = (A.astype(np.int64) - za) * (B.astype(np.int64) - zb)
    y = p.astype(f32) * ratio + f32(zc)
    return _saturate(cvtps_epi32(y), fmt)


def _lookup(X, x_scale, x_zero_point, y_scale, y_zero_point, transform):
    """onnxruntime's 8-bit lookup-table ops (``QlinearBuildLookupTable`` in
    ``contrib_ops/cpu/quantization/qlinear_lookup_table.cc``): ``v = f32(x_scale * (x - zx))``,
    ``t = transform(v)``, ``y = MlasQuantizeLinear(t, y_scale, y_zero_point)``, applied
    element-wise (the table holds exactly these values for all 256 inputs)."""
    X = np.asarray(X)
    fmt = int_format(X.dtype, "X")
    if fmt.bits != 8:
        raise QOpError(f"lookup-table ops take int8 / uint8, got {fmt}")
    zx = _zero_point(x_zero_point, fmt, "X_zero_point")
    yfmt = fmt if y_zero_point is None else int_format(np.asarray(y_zero_point).dtype)
    zy = _zero_point(y_zero_point, yfmt, "Y_zero_point")
    v = _f32_scale(x_scale, "X_scale") * (X.astype(np.int64) - zx).astype(np.float32)
    return _mlas_quantize(transform(v), _f32_scale(y_scale, "Y_scale"), zy, yfmt)


def qlinear_leaky_relu(
    X, X_scale, X_zero_point, Y_scale, Y_zero_point=None, *, alpha: float = 0.01
) -> np.ndarray:
    """onnxruntime ``QLinearLeakyRelu`` (com.microsoft, ``qlinear_lookup_table.cc``): the
    lookup-table contract of :func:`_lookup` with ``t = v if v >= 0 else f32(alpha * v)``."""
    a = np.float32(alpha)
    return _lookup(
        X, X_scale, X_zero_point, Y_scale, Y_zero_point, lambda v: np.where(v >= 0, v, a * v)
    )


def qlinear_concat(y_scale, y_zero_point, *inputs, axis: int) -> np.ndarray:
    """onnxruntime ``QLinearConcat`` (com.microsoft, ``qlinear_concat.cc``). ``inputs`` are
    ``(X_i, x_scale_i, x_zero_point_i)`` triples. An input whose float32 scale and zero point
    equal the output's is copied; any other goes through the lookup-table contract of
    :func:`_lookup` with the identity, ``MlasQuantizeLinear(f32(s_i * (x - z_i)), y_scale, zy)``.
    Then ONNX ``Concat`` along ``axis``."""
    if len(inputs) == 0 or len(inputs) % 3:
        raise QOpError("QLinearConcat takes (tensor, scale, zero_point) triples after y_scale/zp")
    fmt, zy = _out_format(y_zero_point)
    ys = _f32_scale(y_scale, "y_scale")
    parts = []
    for i in range(0, len(inputs), 3):
        X, s, z = inputs[i : i + 3]
        X = np.asarray(X)
        if int_format(X.dtype, f"input {i // 3}") != fmt:
            raise QOpError(f"input {i // 3} is {int_format(X.dtype)} but the output is {fmt}")
        zx = _zero_point(z, fmt, f"x_zero_point {i // 3}")
        if _f32_scale(s, f"x_scale {i // 3}") == ys and zx == zy:
            parts.append(X.astype(_holder(fmt)))
        else:
            parts.append(_lookup(X, s, z, y_scale, y_zero_point, lambda v: v))
    return np.concatenate(parts, axis=int(axis))


# --- onnxruntime contrib: pooling --------------------------------------------------------------
def _pool_geometry(spatial, kernel, strides, pads, dilations, auto_pad, ceil_mode):
    """onnxruntime ``PoolAttributes::ComputeSizePadDilations`` / ``ComputeOutputSize``
    (``core/providers/cpu/nn/pool_attributes.h``): output sizes and (head, tail) pads."""
    n = len(spatial)
    mode = _auto_pad(auto_pad)
    heads, tails, outs = list(pads[:n]), list(pads[n:]), []
    for i, size in enumerate(spatial):
        k, s, d = kernel[i], strides[i], dilations[i]
        if mode == "VALID":
            heads[i] = tails[i] = 0
        elif mode in ("SAME_UPPER", "SAME_LOWER"):
            target = (size + s - 1) // s
            need = (target - 1) * s + k - size
            heads[i] = (need + 1) // 2 if mode == "SAME_LOWER" else need // 2
            tails[i] = need - heads[i]
        num = size + heads[i] + tails[i] - d * (k - 1) - 1
        out = (num // s if num >= 0 else -((-num) // s)) + 1  # C++ truncating division
        if ceil_mode:
            out = int(math.ceil(np.float32(num) / np.float32(s))) + 1
            if (out - 1) * s >= size + heads[i]:
                out -= 1
        if out < 0:
            raise QOpError("pooling output dimension is negative")
        outs.append(out)
    return outs, heads, tails


def _pool_windows(x, fill, kernel, strides, dilations, heads, outs):
    """Yield, for every kernel offset in C order, ``x`` (N, C, *spatial) gathered at the
    window positions of every output (positions outside the input hold ``fill``)."""
    n = len(kernel)
    spatial = x.shape[2:]
    before = [max(0, h) for h in heads]
    after = [
        max(
            0,
            (outs[i] - 1) * strides[i] - heads[i] + dilations[i] * (kernel[i] - 1) + 1 - spatial[i],
        )
        for i in range(n)
    ]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(before, after, strict=True)), constant_values=fill)
    for off in np.ndindex(*kernel):
        sl = [slice(None), slice(None)]
        for i in range(n):
            start = off[i] * dilations[i] - heads[i] + before[i]
            sl.append(slice(start, start + (outs[i] - 1) * strides[i] + 1, strides[i]))
        yield xp[tuple(sl)]


def _channels_first(x, channels_last: int):
    return np.moveaxis(x, -1, 1) if channels_last else x


def qlinear_global_average_pool(
    X, x_scale, x_zero_point, y_scale, y_zero_point, *, channels_last: int = 0
) -> np.ndarray:
    """onnxruntime ``QLinearGlobalAveragePool`` (com.microsoft,
    ``contrib_ops/cpu/quantization/qlinear_global_average_pool.cc``,
    ``core/mlas/lib/qlgavgpool.cpp``), int8 / uint8:

    ``acc[n, c] = wrap32(sum_{spatial} (x - zx))`` (MLAS seeds the sum with ``-zx * S``);
    ``scale = f32(x_scale / f32(y_scale * f32(S)))`` with ``S`` the image size;
    ``y = saturate(round_half_even(f32(f32(acc) * scale)) + zy)`` (``MlasRequantizeOutput``).
    MLAS rejects ``S >= 2^24`` and ``scale`` outside ``[2^-32, 256)``; so does this function.
    """
    x = _channels_first(np.asarray(X), channels_last)
    fmt = int_format(x.dtype, "X")
    if fmt.bits != 8 or x.ndim < 3:
        raise QOpError(f"X must be int8 / uint8 of rank >= 3, got {fmt} {x.shape}")
    zx = _zero_point(x_zero_point, fmt, "x_zero_point")
    yfmt, zy = _out_format(y_zero_point)
    N, C = x.shape[:2]
    S = int(np.prod(x.shape[2:]))
    if S >= 1 << 24:
        raise QOpError("QLinearGlobalAveragePool ImageSize too large (>= 2^24)")
    f32 = np.float32
    scale = f32(_f32_scale(x_scale, "x_scale") / f32(_f32_scale(y_scale, "y_scale") * f32(S)))
    if not (2.0**-32 <= scale < 256.0):
        raise QOpError("QLinearGlobalAveragePool parameter out of computation range")
    ones = np.ones((S, 1), np.int8)
    acc = gemm(
        x.reshape(N * C, S).astype(_holder(fmt)),
        ones,
        x_operand=Operand(fmt, zx),
        w_operand=Operand(IntFormat(8, True), 0),
        acc=ACC32,
    ).values
    y = output_stage(acc, _ort_register(scale), acc=ACC32, out_format=yfmt, out_zero_point=zy)
    y = y.values.reshape((N, C) + (1,) * (x.ndim - 2))
    return np.moveaxis(y, 1, -1) if channels_last else y


def qlinear_average_pool(
    X,
    x_scale,
    x_zero_point,
    y_scale,
    y_zero_point,
    *,
    kernel_shape,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    channels_last: int = 0,
    count_include_pad: int = 0,
    pads=None,
    strides=None,
) -> np.ndarray:
    """onnxruntime ``QLinearAveragePool`` (com.microsoft,
    ``contrib_ops/cpu/quantization/qlinear_pool.cc``), int8 / uint8, 1-3 spatial dims.

    If the kernel covers the whole (unpadded) image it falls back to
    :func:`qlinear_global_average_pool`. Otherwise, in float32:
    ``v = f32(x_scale * (x - zx))``; per output, ``acc = 0`` then ``acc = f32(acc + v)`` over
    the window positions inside the input in C order (h, then w, then d);
    ``m = f32(acc / count)`` with ``count`` the kernel size (``count_include_pad``) or the
    number of positions inside the input; ``y = clamp((int)nearbyintf(f32(f32(m / y_scale) +
    zy)))``. Output size, ``auto_pad`` and ``ceil_mode`` as ORT's ``PoolAttributes``.
    """
    x = _channels_first(np.asarray(X), channels_last)
    fmt = int_format(x.dtype, "X")
    if fmt.bits != 8 or not 3 <= x.ndim <= 5:
        raise QOpError(f"X must be int8 / uint8 with 1-3 spatial dims, got {fmt} {x.shape}")
    nsp = x.ndim - 2
    kernel = _ints_attr(kernel_shape, nsp, 1, "kernel_shape")
    strides = _ints_attr(strides, nsp, 1, "strides")
    pads = _ints_attr(pads, 2 * nsp, 0, "pads")
    outs, heads, tails = _pool_geometry(
        x.shape[2:], kernel, strides, pads, [1] * nsp, auto_pad, ceil_mode
    )
    if list(x.shape[2:]) == kernel and not any(heads) and not any(tails):
        y = qlinear_global_average_pool(x, x_scale, x_zero_point, y_scale, y_zero_point)
        return np.moveaxis(y, 1, -1) if channels_last else y
    zx = _zero_point(x_zero_point, fmt, "x_zero_point")
    yfmt, zy = _out_format(y_zero_point)
    f32 = np.float32
    v = _f32_scale(x_scale, "x_scale") * (x.astype(np.int64) - zx).astype(f32)
    acc = np.zeros(x.shape[:2] + tuple(outs), f32)
    for window in _pool_windows(v, 0.0, kernel, strides, [1] * nsp, heads, outs):
        acc = acc + window
    if count_include_pad:
        count = np.full(outs, float(np.prod(kernel)), f32)
    else:
        count = np.ones(outs, f32)
        for i in range(nsp):
            start = np.arange(outs[i]) * strides[i] - heads[i]
            n_in = np.minimum(start + kernel[i], x.shape[2 + i]) - np.maximum(start, 0)
            shape = [1] * nsp
            shape[i] = outs[i]
            count = count * n_in.astype(f32).reshape(shape)
    m = acc / count
    q = (m / _f32_scale(y_scale, "y_scale")) + f32(zy)
    y = _saturate(cvtps_epi32(q), yfmt)
    return np.moveaxis(y, 1, -1) if channels_last else y


def max_pool(
    X,
    *,
    kernel_shape,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations=None,
    pads=None,
    storage_order: int = 0,
    strides=None,
) -> np.ndarray:
    """ONNX ``MaxPool`` (opset 12+) on int8 / uint8, as onnxruntime runs it
    (``core/providers/cpu/nn/pool.cc``): the maximum of the integer inputs over the window
    positions inside the input (with dilation); a window with none gives the type's minimum.
    Integer max is exact, so the result equals ``Q(MaxPool(DQ(x)))`` whenever the Q and DQ
    parameters agree -- which is why ORT drops such QDQ pairs around MaxPool. Output size,
    ``auto_pad`` and ``ceil_mode`` as ORT's ``PoolAttributes``. Only the values output.
    """
    del storage_order
    x = np.asarray(X)
    fmt = int_format(x.dtype, "X")
    if x.ndim < 3:
        raise QOpError(f"X must have rank >= 3, got {x.shape}")
    nsp = x.ndim - 2
    kernel = _ints_attr(kernel_shape, nsp, 1, "kernel_shape")
    strides = _ints_attr(strides, nsp, 1, "strides")
    dil = _ints_attr(dilations, nsp, 1, "dilations")
    pads = _ints_attr(pads, 2 * nsp, 0, "pads")
    outs, heads, _ = _pool_geometry(x.shape[2:], kernel, strides, pads, dil, auto_pad, ceil_mode)
    y = np.full(x.shape[:2] + tuple(outs), fmt.min, np.int64)
    for window in _pool_windows(x.astype(np.int64), fmt.min, kernel, strides, dil, heads, outs):
        y = np.maximum(y, window)
    return y.astype(x.dtype)


# --- onnxruntime contrib: QGemm ------------------------------------------------------------------
def _gemm_bias(C, M: int, N: int) -> np.ndarray:
    c = np.asarray(C)
    if c.dtype != np.int32:
        raise QOpError(f"QGemm bias C must be int32, got {c.dtype}")
    c = c.astype(np.int64)
    if c.size == 1:
        return np.full((M, N), c.reshape(()))
    if c.ndim == 1 or c.shape[0] == 1:
        return np.broadcast_to(c.reshape(1, N), (M, N))
    if c.shape[1] == 1:
        return np.broadcast_to(c.reshape(M, 1), (M, N))
    return c.reshape(M, N)


def qgemm(
    A,
    a_scale,
    a_zero_point,
    B,
    b_scale,
    b_zero_point,
    C=None,
    y_scale=None,
    y_zero_point=None,
    *,
    alpha: float = 1.0,
    transA: int = 0,
    transB: int = 0,
    isa="exact",
) -> np.ndarray:
    """onnxruntime ``QGemm`` (com.microsoft, ``contrib_ops/cpu/quantization/quant_gemm.cc``):

    ``acc = wrap32(C + (A' - za) @ (B' - zb[n]))`` (A' / B' transposed per ``transA`` /
    ``transB``; the int32 bias C -- scalar, (N,), (1, N), (M, 1) or (M, N) -- seeds the
    accumulator); ``scale[n] = f32(f32(f32(alpha * a_scale) * b_scale[n]) / y_scale)`` (no
    division without ``y_scale``). With ``y_zero_point``: ``y = saturate(round_half_even(
    f32(f32(acc) * scale[n])) + zy)`` (``MlasRequantizeOutput``); without: float32
    ``y = f32(f32(acc) * scale[n])``. ``K = 0`` follows ORT's ``HandleZeroKCase``:
    ``MlasQuantizeLinear(f32(f32(f32(C) * a_scale) * b_scale[0]), y_scale, zy)`` (no alpha), or
    ``zy`` everywhere without C. ``isa="avx2"``: uint8 A' x int8 B' pairs adjacent ``k`` in
    saturating int16 (eq. 16).
    """
    A = np.asarray(A)
    B = np.asarray(B)
    af = int_format(A.dtype, "A")
    bf = int_format(B.dtype, "B")
    if A.ndim != 2 or B.ndim != 2:
        raise QOpError(f"QGemm takes 2-D A and B, got {A.shape} and {B.shape}")
    A2 = A.T if transA else A
    B2 = B.T if transB else B
    (M, K), N = A2.shape, B2.shape[1]
    if B2.shape[0] != K:
        raise QOpError(f"A' is {A2.shape} but B' is {B2.shape}: K differs")
    za = _zero_point(a_zero_point, af, "a_zero_point")
    zb_arr = _ints(b_zero_point, "b_zero_point").reshape(-1) if b_zero_point is not None else None
    if zb_arr is not None and int_format(np.asarray(b_zero_point).dtype) != bf:
        raise QOpError("b_zero_point must have B's type")
    zb: object = 0 if zb_arr is None else (int(zb_arr[0]) if zb_arr.size == 1 else zb_arr)
    f32 = np.float32
    a_s = _f32_scale(a_scale, "a_scale")
    b_s = _per_channel_scale(b_scale, N, "b_scale")
    scale = f32(f32(alpha) * a_s) * b_s
    if y_scale is not None:
        scale = scale / _f32_scale(y_scale, "y_scale")
    if K == 0:
        if y_zero_point is None:
            raise QOpError("QGemm with K = 0 and a float output is undefined in onnxruntime")
        if y_scale is None:
            raise QOpError("QGemm with K = 0 needs y_scale")
        yfmt, zy = _out_format(y_zero_point)
        if C is None:
            return np.full((M, N), zy, _holder(yfmt))
        v = _gemm_bias(C, M, N).astype(f32) * a_s * b_s.reshape(-1)[0]
        return _mlas_quantize(v, _f32_scale(y_scale, "y_scale"), zy, yfmt)
    res = gemm(
        _operand_array(A2, af),
        _operand_array(B2, bf),
        x_operand=Operand(af, za),
        w_operand=Operand(bf, zb),
        acc=ACC32,
        isa=isa,
    )
    _record(res.counters)
    acc = res.values
    if C is not None:
        acc = wrap_to(acc + _gemm_bias(C, M, N), INT32)
    if y_zero_point is None:
        return acc.astype(f32) * np.asarray(scale, f32)
    yfmt, zy = _out_format(y_zero_point)
    return output_stage(
        acc, _ort_register(scale), acc=ACC32, scale_axis=1, out_format=yfmt, out_zero_point=zy
    ).values


# --- dispatcher ----------------------------------------------------------------------------------
_OPS = {
    ("", "QuantizeLinear"): quantize_linear,
    ("", "DequantizeLinear"): dequantize_linear,
    ("", "QLinearConv"): qlinear_conv,
    ("", "QLinearMatMul"): qlinear_matmul,
    ("", "ConvInteger"): conv_integer,
    ("", "MatMulInteger"): matmul_integer,
    ("", "MaxPool"): max_pool,
    (MS_DOMAIN, "QuantizeLinear"): quantize_linear,
    (MS_DOMAIN, "DequantizeLinear"): dequantize_linear,
    (MS_DOMAIN, "QLinearAdd"): qlinear_add,
    (MS_DOMAIN, "QLinearMul"): qlinear_mul,
    (MS_DOMAIN, "QLinearGlobalAveragePool"): qlinear_global_average_pool,
    (MS_DOMAIN, "QLinearAveragePool"): qlinear_average_pool,
    (MS_DOMAIN, "QLinearConcat"): qlinear_concat,
    (MS_DOMAIN, "QLinearLeakyRelu"): qlinear_leaky_relu,
    (MS_DOMAIN, "QGemm"): qgemm,
}

SUPPORTED: tuple[tuple[str, str], ...] = tuple(sorted(_OPS))
"""The ``(domain, op_type)`` pairs :func:`run_node` executes (``""`` is the ONNX domain)."""


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, (list, tuple)):
        return [_attr_value(i) for i in v]
    return v


def run_node(
    op_type: str, domain: str, attrs: dict, inputs: list, isa="exact"
) -> list[np.ndarray]:
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
    return [fn(*args, **{k: _attr_value(v) for k, v in attrs.items()}, **extra)]
