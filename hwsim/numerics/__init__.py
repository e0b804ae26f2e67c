"""Numerics contracts: integer formats, overflow, rounding and scale registers.

Each contract is a named enum member or function whose docstring gives its exact integer
formula; :mod:`hwsim.numerics.reference` is the plain-Python-int specification that every
vectorised function and kernel must equal. ``docs/numerics.md`` derives them in numbered
equations.
"""

from hwsim.numerics.affine import Affine
from hwsim.numerics.enums import StrEnum, coerce, enum_values
from hwsim.numerics.formats import (
    IntFormat,
    Overflow,
    check_bits,
    check_in_range,
    check_integer_array,
    overflows,
    saturate,
    wrap,
)
from hwsim.numerics.ibert import IBertError as IBertError
from hwsim.numerics.ibert import IntStats as IntStats
from hwsim.numerics.ibert import i_erf as i_erf
from hwsim.numerics.ibert import i_exp as i_exp
from hwsim.numerics.ibert import i_gelu as i_gelu
from hwsim.numerics.ibert import i_layernorm as i_layernorm
from hwsim.numerics.ibert import i_poly as i_poly
from hwsim.numerics.ibert import i_softmax as i_softmax
from hwsim.numerics.ibert import i_sqrt as i_sqrt
from hwsim.numerics.rounding import RoundingMode, as_mode, round_shift, stochastic_draws
from hwsim.numerics.scale import (
    ScaleKind,
    ScaleRegister,
    as_kind,
    multiply_by_quantized_multiplier,
    ort_combined_scale,
    ort_requantize,
    pow2_requantize,
    quantize_multiplier,
    rounding_divide_by_pot,
    saturating_rounding_doubling_high_mul,
)

__all__ = [
    "Affine",
    "IntFormat",
    "Overflow",
    "RoundingMode",
    "ScaleKind",
    "ScaleRegister",
    "StrEnum",
    "as_kind",
    "as_mode",
    "check_bits",
    "check_in_range",
    "check_integer_array",
    "coerce",
    "enum_values",
    "multiply_by_quantized_multiplier",
    "ort_combined_scale",
    "ort_requantize",
    "overflows",
    "pow2_requantize",
    "quantize_multiplier",
    "round_shift",
    "rounding_divide_by_pot",
    "saturate",
    "saturating_rounding_doubling_high_mul",
    "stochastic_draws",
    "wrap",
]
