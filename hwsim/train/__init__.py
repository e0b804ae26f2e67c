"""PyTorch training code for the shipped float models: an optional extra.

This subpackage needs PyTorch (``pip install torch==2.13.0``); the rest of hwsim does not, and
hwsim's core never imports ``hwsim.train``. Importing ``hwsim.train`` itself does not import torch
either: torch is imported when :mod:`hwsim.train.archs` or :mod:`hwsim.train.fit` is imported.

* :mod:`hwsim.train.archs` -- the model builders, selected by name (``build("mlp")``).
* :mod:`hwsim.train.fit` -- deterministic training (``train``, SGD or PSGD), ``train_model``
  (train + export, what ``hwsim train`` calls) and ONNX export (``export_onnx``).
* :mod:`hwsim.train.psgd` -- position-based scaled gradients: the official code's grid, running
  range and gradient scaling (``psgd_scale``, ``PSGD``), with citations.
* :mod:`hwsim.train.fqt` -- the FQT paper's gradient quantizers in numpy (PTQ, PSQ, BHQ and the
  per-sample-shift hardware variant), stochastic rounding, gradient variance; no torch.
* :mod:`hwsim.train.fqt_torch` -- FQT linear / conv layers (8-bit forward, quantized backward,
  the backward GEMMs in float or on hwsim's integer datapath) and ``convert``.

``models/train.py`` at the repository root uses both to produce ``models/*.onnx``.
"""

from __future__ import annotations

#: The optimizers of :func:`hwsim.train.fit.train` (``hwsim train --optimizer`` offers the
#: first two: ``adam`` is for experiments from Python).
OPTIMIZERS = ("sgd", "psgd", "adam")
#: PSGD gradient scalings (:func:`hwsim.train.psgd.psgd_scale`).
SCALINGS = ("official", "normalized")
#: Bit widths PSGD can target (``target_bits``), inclusive.
TARGET_BITS = (2, 8)

__all__ = ["OPTIMIZERS", "SCALINGS", "TARGET_BITS"]
