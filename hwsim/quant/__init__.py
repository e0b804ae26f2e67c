"""Quantization schemes and the float-graph -> integer-program step."""

from hwsim.quant.quantize import quantize, quantize_weights
from hwsim.quant.scheme import (
    ACT_MODES,
    PRESETS,
    ActSpec,
    LayerScheme,
    LayerSpec,
    QuantProgram,
    Scheme,
    SchemeError,
)

__all__ = [
    "ACT_MODES",
    "PRESETS",
    "ActSpec",
    "LayerScheme",
    "LayerSpec",
    "QuantProgram",
    "Scheme",
    "SchemeError",
    "quantize",
    "quantize_weights",
]
