"""TFLite / LiteRT int8 kernels whose integer rules are not hwsim's generic ones.

Pure functions on integer arrays in hwsim's NCHW layout (NumPy in, int64 NumPy out), each the
vectorised form of a plain-int reference in :mod:`hwsim.numerics.reference` (``ref_tflite_*``,
docs/numerics.md eq. T3-T8), with the parameters of :mod:`hwsim.numerics.tflite`. ``rounding``
selects the ``MultiplyByQuantizedMultiplier`` build: ``"double"`` (the default build, gemmlowp's
``SaturatingRoundingDoublingHighMul`` then ``RoundingDivideByPOT``) or ``"single"``
(``TFLITE_SINGLE_ROUNDING``). Sources (``google-ai-edge/LiteRT``, ``tflite/kernels/internal/``):

============================  =============================================  ==============
TFLite op                     kernel                                         function
============================  =============================================  ==============
ADD (int8)                    ``reference_integer_ops::AddElementwise``      :func:`add`
MUL (int8)                    ``reference_integer_ops::MulElementwise``      :func:`mul`
AVERAGE_POOL_2D (int8)        ``reference_integer_ops::AveragePool``         :func:`average_pool`
                              (``optimized_integer_ops::AveragePool``: same)
MEAN (int8)                   ``reference_ops::QuantizedMeanOrSum``          :func:`mean`
MEAN (int8, 4-D, keep_dims)   ``optimized_integer_ops::Mean``                :func:`mean_hw`
SOFTMAX (int8 -> int8)        ``optimized_ops::Softmax`` (float table, x86)  :func:`softmax`
============================  =============================================  ==============

The outputs are clamped to the int8 format only; a fused activation's tighter clamp is a
``clip`` node after the op (the importer's choice: clamping twice to nested ranges is clamping
once to the inner one).
"""

from __future__ import annotations

import numpy as np

from hwsim.numerics.scale import multiply_by_quantized_multiplier
from hwsim.numerics.tflite import round_half_away
from hwsim.qops.common import QOpError


def _mbqm(x, m: int, s: int, rounding: str) -> np.ndarray:
    return np.asarray(multiply_by_quantized_multiplier(x, m, s, rounding), np.int64)


def add(qa, qb, p: dict, qmin: int, qmax: int, rounding: str = "double") -> np.ndarray:
    """(T3) int8 ADD of two same-shape integer arrays, ``p`` from
    :func:`hwsim.numerics.tflite.add_params`: ``MBQM(MBQM((qa - za) 2^L, ma, sa) + MBQM((qb - zb)
    2^L, mb, sb), mo, so) + zo``, clamped to ``[qmin, qmax]``."""
    L = p["left_shift"]
    a = _mbqm((np.asarray(qa, np.int64) - p["za"]) << L, p["ma"], p["sa"], rounding)
    b = _mbqm((np.asarray(qb, np.int64) - p["zb"]) << L, p["mb"], p["sb"], rounding)
    y = _mbqm(a + b, p["mo"], p["so"], rounding) + p["zo"]
    return np.clip(y, qmin, qmax)


def mul(qa, qb, p: dict, qmin: int, qmax: int, rounding: str = "double") -> np.ndarray:
    """(T4) int8 MUL of two same-shape integer arrays, ``p`` from
    :func:`hwsim.numerics.tflite.mul_params`: ``MBQM((qa - za)(qb - zb), m, s) + zo``, clamped
    to ``[qmin, qmax]``."""
    t = (np.asarray(qa, np.int64) - p["za"]) * (np.asarray(qb, np.int64) - p["zb"])
    return np.clip(_mbqm(t, p["m"], p["s"], rounding) + p["zo"], qmin, qmax)


def _window_sums(x: np.ndarray, kernel, strides, pads) -> np.ndarray:
    """Sums of ``x`` (N, C, H, W) over each pooling window, padding contributing 0."""
    (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, strides, pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, ::sh, ::sw].sum(axis=(-1, -2))


def average_pool(q, kernel, strides, pads, qmin: int, qmax: int) -> np.ndarray:
    """(T5) int8 AVERAGE_POOL_2D on ``q`` (N, C, H, W): each window's raw integers over its
    valid (unpadded) positions, ``n`` of them, ``acc > 0 ? (acc + n/2) / n : (acc - n/2) / n``
    with C++'s truncating division, clamped to ``[qmin, qmax]``. ``pads``: ``(top, left,
    bottom, right)``. Input and output share one quantization (TFLite's requirement). A window
    with no valid position is a ValueError (TFLite's kernel fails)."""
    x = np.asarray(q, np.int64)
    acc = _window_sums(x, kernel, strides, pads)
    ones = np.ones((1, 1) + x.shape[2:], np.int64)
    n = _window_sums(ones, kernel, strides, pads)
    if np.any(n == 0):  # TFLite's kernel returns an error
        raise QOpError("AVERAGE_POOL_2D: a pooling window with no valid (unpadded) position")
    half = n // 2
    num = np.where(acc > 0, acc + half, acc - half)
    avg = np.sign(num) * (np.abs(num) // n)  # C++ division: truncation toward zero
    return np.clip(avg, qmin, qmax)


def mean(q, zx: int, zy: int, m: int, s: int, qmin: int, qmax: int, rounding="double"):
    """(T6) int8 MEAN over height and width of ``q`` (N, C, H, W) -> (N, C, 1, 1),
    ``reference_ops::QuantizedMeanOrSum``: ``n = H W``, ``k = min(floor(log2 n), 32, 31 + s)``,
    ``MBQM(sum(q) - zx n, (m 2^k) // n, s - k) + zy``, clamped to ``[qmin, qmax]``; ``(m, s)``
    from :func:`hwsim.numerics.tflite.mean_params`."""
    x = np.asarray(q, np.int64)
    n = x.shape[2] * x.shape[3]
    k = min(n.bit_length() - 1, 32, 31 + s)
    m2 = (int(m) << k) // n
    t = x.sum(axis=(2, 3), keepdims=True) - zx * n
    return np.clip(_mbqm(t, m2, s - k, rounding) + zy, qmin, qmax)


def mean_hw(q, m: int, s: int, bias: int, qmin: int, qmax: int, rounding="double"):
    """(T7) int8 MEAN over height and width with ``keep_dims`` of ``q`` (N, C, H, W) -> (N, C,
    1, 1), ``optimized_integer_ops::Mean``: ``MBQM(sum(q), m, s) + bias`` clamped to ``[qmin,
    qmax]``, ``(m, s, bias)`` from :func:`hwsim.numerics.tflite.mean_hw_params`."""
    t = np.asarray(q, np.int64).sum(axis=(2, 3), keepdims=True)
    return np.clip(_mbqm(t, m, s, rounding) + bias, qmin, qmax)


def softmax(q, axis: int, table: np.ndarray, out_scale: float, zy: int, qmin: int, qmax: int):
    """(T8) int8 SOFTMAX along ``axis``, ``optimized_ops::Softmax<int8_t, int8_t>`` (the x86
    build's float table, :func:`hwsim.numerics.tflite.softmax_table`): per row ``t_j =
    table[255 - max + q_j]``, ``sum`` accumulated in binary32 in index order, ``inv = f32(1 /
    f32(sum out_scale))``, ``round_half_away(f32(t_j inv)) + zy`` clamped to ``[qmin, qmax]``."""
    x = np.moveaxis(np.asarray(q, np.int64), axis, -1)
    table = np.asarray(table, np.float32)
    t = table[255 - x.max(axis=-1, keepdims=True) + x]
    total = np.zeros(x.shape[:-1], np.float32)
    for j in range(x.shape[-1]):  # binary32, in index order (as the C++ loop)
        total = total + t[..., j]
    inv = np.float32(1) / (total * np.float32(out_scale))
    y = round_half_away(t * inv[..., None]).astype(np.int64) + zy
    return np.moveaxis(np.clip(y, qmin, qmax), -1, axis)
