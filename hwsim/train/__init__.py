"""PyTorch training code for the shipped float models: an optional extra.

This subpackage needs PyTorch (``pip install torch==2.13.0``); the rest of hwsim does not, and
hwsim's core never imports ``hwsim.train``. Importing ``hwsim.train`` itself does not import torch
either: torch is imported when :mod:`hwsim.train.archs` or :mod:`hwsim.train.fit` is imported.

* :mod:`hwsim.train.archs` -- the model builders, selected by name (``build("mlp")``).
* :mod:`hwsim.train.fit` -- deterministic training (``train``, SGD or PSGD), ``train_model``
  (train + export, what ``hwsim train`` calls) and ONNX export (``export_onnx``).
* :mod:`hwsim.train.psgd` -- position-based scaled gradients: the official code's grid, running
  range and gradient scaling (``psgd_scale``, ``PSGD``), with citations.

``models/train.py`` at the repository root uses both to produce ``models/*.onnx``.
"""
