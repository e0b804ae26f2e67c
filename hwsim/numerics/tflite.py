"""TFLite / LiteRT int8 kernels: the parameters their ``Prepare`` functions compute.

Each function computes, from a model's float32 scales and integer zero points, the integers a
LiteRT int8 kernel runs with, in the arithmetic of the C++ source (binary32 where the source
computes in ``float``, binary64 where it computes in ``double``); the kernels themselves are
:mod:`hwsim.qops.tflite`, their plain-int references ``ref_tflite_*`` in
:mod:`hwsim.numerics.reference` (docs/numerics.md, eq. T1-T8). Sources: the LiteRT repository
(``google-ai-edge/LiteRT``, ``tflite/kernels/``), as built into ``ai-edge-litert`` 2.3.0:

* ``add.cc`` ``Prepare`` (int8): ``left_shift = 20``; ``twice = 2 * max(sa, sb)`` (binary32,
  exact); ``QuantizeMultiplierSmallerThanOneExp`` of ``sa / twice``, ``sb / twice`` and ``twice /
  (2^20 * so)`` in double (:func:`add_params`);
* ``mul.cc`` ``Prepare``: ``QuantizeMultiplier(double(sa * sb / so))`` with the product and
  quotient in binary32 (:func:`mul_params`);
* ``reduce.cc`` ``PrepareMeanOrSum``: ``QuantizeMultiplier(double(sx) / double(sy))``
  (:func:`mean_params`); ``optimized/integer_ops/mean.h`` ``Mean`` (4-D, height and width,
  ``keep_dims``): multiplier of ``f32(sx / f32(n * sy))`` and a zero-point bias rounded in
  binary32 (:func:`mean_hw_params`);
* ``kernel_util.cc`` ``CalculateActivationRangeQuantized``: the fused activation's integer
  clamp (:func:`activation_range`); the XNNPACK delegate's own (``xnn_qs8_quantize``,
  :func:`xnnpack_activation_range`);
* ``optimized/optimized_ops.h`` ``PopulateSoftmaxLookupTable``: ``table[255 - v] = expf(f32(-sx
  * beta) * v)`` (:func:`softmax_table`); ``AffineQuantize<int8_t>`` (and XNNPACK's convert):
  the QUANTIZE of a float input (:func:`quantize`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math

import numpy as np

from hwsim.numerics import reference as ref

ACTIVATIONS = ("NONE", "RELU", "RELU6", "RELU_N1_TO_1")
"""The fused activations of TFLite's int8 kernels hwsim reads (``ActivationFunctionType``)."""
ADD_LEFT_SHIFT = 20
"""``left_shift`` of TFLite's int8 / uint8 ADD (``add.cc``)."""

_F32 = np.float32


def round_half_away(v: np.ndarray) -> np.ndarray:
    """``std::round`` elementwise on a float array (any float dtype): the nearest integer, ties
    away from zero, as a float array of the same dtype. Exact: ``v - trunc(v)`` is exact in
    binary floating point, so no addition of 0.5 rounds first."""
    v = np.asarray(v)
    t = np.trunc(v)
    return t + np.sign(v) * (np.abs(v - t) >= 0.5)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite ``QuantizeMultiplier(double)`` (:func:`hwsim.numerics.reference.quantize_multiplier`);
    the ``TFLITE_SINGLE_ROUNDING`` build computes the same pair for the reals of these kernels
    (its only difference, clamping ``shift > 30``, is outside every multiplier below)."""
    if not (math.isfinite(real) and real >= 0):
        raise ValueError(f"real multiplier must be finite and >= 0, got {real!r}")
    return ref.quantize_multiplier(float(real))


def _smaller_than_one(real: float, what: str) -> tuple[int, int]:
    """``QuantizeMultiplierSmallerThanOneExp``: TFLite checks ``0 < real < 1``."""
    if not 0.0 < real < 1.0:
        raise ValueError(f"{what}: TFLite needs a real multiplier in (0, 1), got {real!r}")
    return quantize_multiplier(real)


def add_params(sa: float, za: int, sb: float, zb: int, so: float, zo: int) -> dict:
    """The int8 ADD's integers (``add.cc`` ``Prepare``): ``za, zb, zo``, ``left_shift`` (20) and
    the three ``(multiplier, shift)`` pairs ``(ma, sa)``, ``(mb, sb)``, ``(mo, so)`` (eq. T3).
    Scales are read as binary32. Raises ValueError where TFLite's checks fail (a multiplier not
    in (0, 1))."""
    fa, fb, fo = _F32(sa), _F32(sb), _F32(so)
    twice = float(_F32(2) * max(fa, fb))
    ma, sha = _smaller_than_one(float(fa) / twice, "ADD input 1 multiplier")
    mb, shb = _smaller_than_one(float(fb) / twice, "ADD input 2 multiplier")
    mo, sho = _smaller_than_one(
        twice / float(_F32(1 << ADD_LEFT_SHIFT) * fo), "ADD output multiplier"
    )
    return {
        "za": int(za),
        "zb": int(zb),
        "zo": int(zo),
        "left_shift": ADD_LEFT_SHIFT,
        "ma": ma,
        "sa": sha,
        "mb": mb,
        "sb": shb,
        "mo": mo,
        "so": sho,
    }


def mul_params(sa: float, za: int, sb: float, zb: int, so: float, zo: int) -> dict:
    """The int8 MUL's integers (``mul.cc`` ``Prepare``): ``za, zb, zo`` and ``(m, s) =
    QuantizeMultiplier(double(f32(f32(sa * sb) / so)))`` -- the scale product and quotient in
    binary32, as the source's ``float`` expression (eq. T4)."""
    real = float((_F32(sa) * _F32(sb)) / _F32(so))
    m, s = quantize_multiplier(real)
    return {"za": int(za), "zb": int(zb), "zo": int(zo), "m": m, "s": s}


def mean_params(sx: float, sy: float) -> tuple[int, int]:
    """``reduce.cc`` ``PrepareMeanOrSum`` (int8): ``QuantizeMultiplier(double(sx) /
    double(sy))``; the kernel folds ``1/n`` in (eq. T6, :func:`hwsim.numerics.reference.
    ref_tflite_mean`)."""
    return quantize_multiplier(float(_F32(sx)) / float(_F32(sy)))


def mean_hw_params(sx: float, zx: int, sy: float, zy: int, n: int) -> tuple[int, int, int]:
    """``optimized_integer_ops::Mean`` (4-D int8, mean over height and width with ``keep_dims``,
    the default CPU kernel there): ``(m, s) = QuantizeMultiplier(f32(sx / f32(f32(n) * sy)))``
    and ``bias = zy - int(trunc(t +- 0.5f))`` with ``t = f32(f32(zx * sx) / sy)``, all in
    binary32 (eq. T7)."""
    fx, fy = _F32(sx), _F32(sy)
    real = fx / (_F32(n) * fy)
    m, s = quantize_multiplier(float(real))
    t = (_F32(zx) * fx) / fy
    t = t + _F32(0.5) if t > 0 else t - _F32(0.5)
    return m, s, int(zy) - int(np.trunc(t))


def activation_range(activation: str, scale: float, zero_point: int, qmin: int, qmax: int):
    """``CalculateActivationRangeQuantized``: the integer clamp ``(lo, hi)`` of a fused
    ``activation`` (:data:`ACTIVATIONS`) on an output quantized by ``(scale, zero_point)`` in
    ``[qmin, qmax]`` (eq. T2)."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused activation {activation!r}: supported {', '.join(ACTIVATIONS)}")
    return ref.ref_tflite_activation_range(
        activation, float(_F32(scale)), int(zero_point), qmin, qmax
    )


def xnnpack_activation_range(activation: str, scale: float, zero_point: int, qmin: int, qmax: int):
    """The XNNPACK delegate's integer clamp ``(lo, hi)`` of a fused ``activation``
    (:data:`ACTIVATIONS`) on an int8 output quantized by ``(scale, zero_point)``, intersected
    with ``[qmin, qmax]`` (eq. T2x).

    LiteRT's delegate passes the activation as float bounds (``xnnpack_delegate.cc``
    ``ConvertActivationToOutputRange``: RELU ``(0, +inf)``, RELU6 ``(0, 6)``, RELU_N1_TO_1
    ``(-1, 1)``, NONE ``(-inf, +inf)``); XNNPACK turns each bound ``f`` into an integer with
    ``xnn_qs8_quantize`` (``src/xnnpack/requantization.h``, called by ``src/subgraph/
    convolution-2d.c``, ``depthwise-convolution-2d.c``, ``fully-connected.c``,
    ``max-pooling-2d.c`` and, for ADD / MUL's clamp node, ``src/microparams-init.c``
    ``xnn_init_qs8_clamp_scalar_params``): ``lrintf(fminf(fmaxf(f32(f32(f / scale) +
    zero_point), -128), 127))``, every step in binary32 and ``lrintf`` half to even. TFLite's
    :func:`activation_range` instead adds the zero point to ``roundf(f32(f / scale))`` (half
    away from zero), so the two differ where ``f32(f / scale)`` is a tie whose sum with the zero
    point rounds down to even (e.g. ``f32(6 / s) = 200.5``, ``zero_point = -128``: XNNPACK 72,
    TFLite 73), or where adding a positive zero point rounds the binary32 sum onto or past a
    tie."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"fused activation {activation!r}: supported {', '.join(ACTIVATIONS)}")
    bounds = {"NONE": (-np.inf, np.inf), "RELU": (0.0, np.inf), "RELU6": (0.0, 6.0)}
    bounds["RELU_N1_TO_1"] = (-1.0, 1.0)
    s, z = _F32(scale), _F32(zero_point)

    def q(f: float) -> int:
        with np.errstate(over="ignore"):
            t = _F32(f) / s + z
        return int(np.rint(np.minimum(np.maximum(t, _F32(-128)), _F32(127))))

    lo_f, hi_f = bounds[activation]
    return max(qmin, q(lo_f)), min(qmax, q(hi_f))


@functools.lru_cache(maxsize=1)
def _libm_expf():
    name = ctypes.util.find_library("m")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        lib = None
    if lib is None or not hasattr(lib, "expf"):
        return None
    f = lib.expf
    f.restype = ctypes.c_float
    f.argtypes = [ctypes.c_float]
    return f


def expf(x: float) -> np.float32:
    """The C library's ``expf`` (binary32 in, binary32 out), the function TFLite's softmax
    table calls; where no C math library can be loaded, ``exp`` in binary64 rounded to binary32
    (glibc's ``expf`` is within 0.502 ulp, so the two agree except within 0.002 ulp of a tie)."""
    f = _libm_expf()
    if f is not None:
        return _F32(f(float(_F32(x))))
    return _F32(math.exp(float(_F32(x))))


def softmax_table(sx: float, beta: float) -> np.ndarray:
    """``PopulateSoftmaxLookupTable``: 256 binary32 values, ``table[255 - v] = expf(f32(scale *
    v))`` with ``scale = f32(-sx * beta)``, ``v`` in 0..255 (eq. T8)."""
    scale = -_F32(sx) * _F32(beta)
    table = np.empty(256, np.float32)
    for v in range(256):
        table[255 - v] = expf(scale * _F32(v))
    return table


QUANTIZE_KERNELS = ("xnnpack", "optimized", "reference")
"""The QUANTIZE of a float input by each LiteRT CPU kernel family (:func:`quantize`)."""


def quantize(
    x: np.ndarray,
    scale: float,
    zero_point: int,
    qmin: int,
    qmax: int,
    kernels: str = "optimized",
) -> np.ndarray:
    """TFLite's QUANTIZE of a float32 tensor to int8 as int64, by the kernels that run it
    (eq. T1):

    * ``optimized`` -- ``optimized_ops::AffineQuantize<int8_t>`` (LiteRT
      ``tflite/kernels/internal/optimized/optimized_ops.h``, the x86 build, no NEON):
      ``clamp(round_half_away(double(x) / double(scale)) + zero_point, qmin, qmax)``;
    * ``reference`` -- ``reference_ops::AffineQuantize`` (``reference/quantize.h``): the
      quotient in binary32, ``round_half_away(f32(x / f32(scale)))``, same clamp;
    * ``xnnpack`` -- the XNNPACK delegate's convert (XNNPACK ``src/microparams-init.c``
      ``xnn_init_f32_qs8_cvt_scalar_params``: ``inv = f32(1 / scale)``; ``src/f32-qs8-vcvt/gen/
      f32-qs8-vcvt-avx2-u16.c`` ``xnn_f32_qs8_vcvt_ukernel__avx2_u16``): ``v = min(f32(x * inv),
      32767)`` (``_mm256_min_ps``: a NaN ``v`` becomes 32767), ``_mm256_cvtps_epi32`` (round
      half to even; below -2^31: INT_MIN), then saturating packs and a saturating int16 add of
      ``zero_point``, which for int8 outputs is ``clamp(rint(v) + zero_point, qmin, qmax)``.

    ``x / scale`` near a tie is where the three differ (e.g. binary32 ``x * inv`` = 32.5 exactly
    while the binary64 quotient is 32.50000065: 32 by XNNPACK, 33 by the optimized kernel).
    """
    if kernels not in QUANTIZE_KERNELS:
        raise ValueError(f"kernels must be one of {QUANTIZE_KERNELS}, got {kernels!r}")
    x32 = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        if kernels == "xnnpack":
            v = x32 * (_F32(1) / _F32(scale))
            v = np.where(np.isnan(v), _F32(32767), np.minimum(v, _F32(32767)))
            r = np.rint(np.maximum(v, _F32(-(2.0**31))).astype(np.float64))
        elif kernels == "reference":
            v = (x32 / _F32(scale)).astype(np.float64)
            r = round_half_away(np.clip(v, -(2.0**40), 2.0**40))
        else:
            v = x32.astype(np.float64) / float(_F32(scale))
            r = round_half_away(np.clip(v, -(2.0**40), 2.0**40))
    return np.clip(r.astype(np.int64) + int(zero_point), qmin, qmax)
