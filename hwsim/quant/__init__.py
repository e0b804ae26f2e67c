"""Quantization schemes and the float-graph -> integer-program step."""

from hwsim.quant.quantize import quantize, quantize_weights
from hwsim.quant.scheme import (
    ACT_MODES,
    PRESETS,
    ActMode,
    ActSpec,
    BnFold,
    CalibMethod,
    DataFreeRange,
    Granularity,
    LayerScheme,
    LayerSpec,
    QuantProgram,
    Scheme,
    SchemeError,
    ShiftBase,
    WeightMode,
)

__all__ = [
    "ACT_MODES",
    "PRESETS",
    "ActMode",
    "ActSpec",
    "BnFold",
    "CalibMethod",
    "DataFreeRange",
    "Granularity",
    "LayerScheme",
    "LayerSpec",
    "QuantProgram",
    "Scheme",
    "SchemeError",
    "ShiftBase",
    "WeightMode",
    "quantize",
    "quantize_weights",
]
