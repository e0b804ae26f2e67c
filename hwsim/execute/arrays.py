"""Array helpers the executors share: pooling windows, spatial padding, window counts, reshape
with ONNX's 0 (copy the dimension) and a free batch axis, the data-movement ops (transpose,
gather, slice) both executors apply to their values, and the model input's dtype."""

from __future__ import annotations

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
    -inf, or the integer format's minimum)."""
    return windows(pad(x, pads, fill), kernel, strides).max(axis=(-1, -2))


def softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``, in ``x``'s float type."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)
