"""Array helpers the executors share: pooling windows, spatial padding, window counts, reshape
with ONNX's 0 (copy the dimension) and a free batch axis, the data-movement ops (transpose,
gather, slice) both executors apply to their values, the model input's dtype, and reused
per-thread scratch buffers."""

from __future__ import annotations

import threading

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hwsim.errors import HwsimError


def graph_input(graph, x) -> np.ndarray:
    """A batch as the graph's input takes it: float32, or for an integer (token id) input
    (``graph.input_dtype``) integers of that dtype -- float data only where every value is a
    whole number in range (hwsim never rounds data into ids)."""
    dt = np.dtype(getattr(graph, "input_dtype", "float32"))
    if not np.issubdtype(dt, np.integer):
        return np.asarray(x, np.float32)
    a = np.asarray(x)
    info = np.iinfo(dt)
    if np.issubdtype(a.dtype, np.integer):
        bad = a.size and (int(a.min()) < info.min or int(a.max()) > info.max)
    else:
        bad = not np.all(np.isfinite(a)) or np.any(a != np.round(a))
        bad = bad or (a.size and (a.min() < info.min or a.max() > info.max))
    if bad:
        raise HwsimError(
            f"{graph.source}: the model input {graph.input!r} is {dt} (token ids); the data "
            f"({a.dtype}) has values that are not whole numbers in {dt}'s range"
        )
    return a.astype(dt, copy=False)


SCRATCH_BYTES = 512 << 20  # scratch buffers up to this size are kept and reused
_local = threading.local()


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """An uninitialized C-contiguous array of ``shape`` in a per-thread buffer ``name``, grown
    to the largest size asked for and reused: tens of MB of intermediates meet no fresh pages
    (page faults, which the threads of a parallel kernel serialize on). Valid until the next
    request of the same name on this thread, so never returned to a caller; beyond
    :data:`SCRATCH_BYTES` a fresh array."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    if n * dtype.itemsize > SCRATCH_BYTES:
        return np.empty(shape, dtype)
    buf = getattr(_local, name, None)
    if buf is None or buf.dtype != dtype or buf.size < n:
        buf = np.empty(n, dtype)
        setattr(_local, name, buf)
    return buf[:n].reshape(shape)


def take(x: np.ndarray, attrs: dict) -> np.ndarray:
    """``Op.GATHER``: the constant ``indices`` along ``axis`` (>= 1)."""
    return np.take(x, attrs["indices"], axis=attrs["axis"])


def slice_axes(x: np.ndarray, attrs: dict) -> np.ndarray:
    """``Op.SLICE``: ``(axis, start, stop, step)`` Python slices (ONNX's already clamped)."""
    idx = [slice(None)] * x.ndim
    for axis, start, stop, step in attrs["slices"]:
        idx[axis] = slice(start, stop, step)
    return x[tuple(idx)]


def windows(x: np.ndarray, kernel, strides, dilations=(1, 1)) -> np.ndarray:
    """(N, C, H, W) -> (N, C, Ho, Wo, kh, kw) strided view (x already padded)."""
    kh, kw = kernel
    dh, dw = dilations
    v = sliding_window_view(x, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return v[:, :, :: strides[0], :: strides[1], ::dh, ::dw]


def pad(x: np.ndarray, pads, value) -> np.ndarray:
    """Pad the spatial axes of (N, C, H, W) by ``pads = (top, left, bottom, right)``."""
    top, left, bottom, right = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def pool_count(x_shape, attrs) -> np.ndarray:
    """Number of averaged elements per output position, (Ho, Wo)."""
    ones = np.ones((1, 1) + tuple(x_shape[2:]), np.float32)
    padded = pad(ones, attrs["pads"], 1.0 if attrs["count_include_pad"] else 0.0)
    return windows(padded, attrs["kernel"], attrs["strides"]).sum(axis=(-1, -2))[0, 0]


def reshape(x: np.ndarray, shape: tuple) -> np.ndarray:
    """ONNX Reshape of a batch: a 0 copies the input's dimension; the batch axis stays."""
    tgt = [x.shape[i] if (s == 0 and i < x.ndim) else s for i, s in enumerate(shape)]
    tgt[0] = x.shape[0]
    return x.reshape(tgt)


def max_pool(x: np.ndarray, kernel, strides, pads, fill) -> np.ndarray:
    """Max over each window of ``x`` padded with ``fill`` (a value padding never wins with:
    -inf, or the integer format's minimum): numpy's reduce over each window. Where that max
    is one value whatever the order -- integers; floats without a NaN or a -0.0, whose sign and
    payload numpy's SIMD kernels pick by position -- one Numba pass over the windows computes
    it (:func:`hwsim.execute.kernels.max_pool2d`)."""
    from hwsim.execute.kernels import max_pool2d

    (kh, kw), (sh, sw), (top, left, bottom, right) = kernel, strides, pads
    if x.ndim == 4 and x.size and _order_free_max(x, fill):
        hp, wp = x.shape[2] + top + bottom, x.shape[3] + left + right
        if hp >= kh and wp >= kw:
            out = np.empty(x.shape[:2] + ((hp - kh) // sh + 1, (wp - kw) // sw + 1), x.dtype)
            max_pool2d(np.ascontiguousarray(x), kh, kw, sh, sw, top, left, x.dtype.type(fill), out)
            return out
    return windows(pad(x, pads, fill), kernel, strides).max(axis=(-1, -2))


def _order_free_max(x: np.ndarray, fill) -> bool:
    """Whether every max over values of ``x`` and ``fill`` is the same bits in any order."""
    if x.dtype.kind in "iu":
        return True
    if x.dtype.kind != "f" or np.isnan(fill) or (fill == 0 and np.signbit(fill)):
        return False
    return not (np.isnan(x).any() or (np.signbit(x) & (x == 0)).any())


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``, in ``x``'s float type (numpy's
    ``exp``, ``sum`` and division). The row max of a C-contiguous float32 / float64 ``x``
    along its last axis is one Numba pass (:func:`hwsim.execute.kernels.row_max`; numpy's
    reduction over short rows is slow) where it finds no NaN: then its value is numpy's but
    for a zero's sign, which changes no bit of ``x - max`` but a zero's, and ``exp(+-0) = 1``."""
    m = None
    if (
        axis in (-1, x.ndim - 1)
        and x.ndim
        and x.shape[-1]
        and x.size
        and x.dtype in (np.float32, np.float64)
        and x.flags.c_contiguous
    ):
        from hwsim.execute.kernels import row_max

        m = np.empty(x.shape[:-1] + (1,), x.dtype)
        row_max(x.reshape(-1, x.shape[-1]), m.reshape(-1))
        if np.isnan(m).any():
            m = None
    if m is None:
        m = x.max(axis=axis, keepdims=True)
    e = np.exp(x - m)
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype, copy=False)
