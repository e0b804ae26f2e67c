"""Reproduction studies of the papers behind hwsim (``hwsim study ...``).

* :mod:`hwsim.study.psgd` -- ``hwsim study psgd``: does PSGD make plain layer-wise quantization
  work? (PSGD paper, seed 000). Its names are re-exported here (``hwsim.study.study_psgd``,
  ``table``, ``weight_stats``, ...), as when the study was the module ``hwsim/study.py``.
* :mod:`hwsim.study.fqt` -- ``hwsim study fqt``: fully quantized training with quantized
  gradients (FQT paper, seed 001). Needs PyTorch; not imported here, so that importing
  ``hwsim.study`` stays free of torch.
"""

from __future__ import annotations

from hwsim.study.psgd import (
    EVAL_VERSION,
    FIRST_LAST_BITS,
    LOGIT_BITS,
    METHODS,
    OPTIMIZERS,
    PAPER,
    WEIGHT_METRICS,
    WIDTHS,
    StudyError,
    evaluate,
    plots,
    study_psgd,
    summarize,
    table,
    weight_stats,
)

__all__ = [
    "EVAL_VERSION",
    "FIRST_LAST_BITS",
    "LOGIT_BITS",
    "METHODS",
    "OPTIMIZERS",
    "PAPER",
    "WEIGHT_METRICS",
    "WIDTHS",
    "StudyError",
    "evaluate",
    "plots",
    "study_psgd",
    "summarize",
    "table",
    "weight_stats",
]
