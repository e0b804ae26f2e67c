"""Test-input generators: edge values of a width plus hypothesis strategies derived from it."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.numerics import IntFormat


def edge_values(lo: int, hi: int) -> list[int]:
    """Type min/max +- {0, 1, 2}, 0 +- {1, 2}, +-2^i +- {0, 1}, clipped to [lo, hi]."""
    vals = {lo, lo + 1, lo + 2, hi, hi - 1, hi - 2, 0, 1, -1, 2, -2}
    for i in range(0, 64):
        for d in (-1, 0, 1):
            vals.add((1 << i) + d)
            vals.add(-(1 << i) + d)
    return sorted(v for v in vals if lo <= v <= hi)


def ints_in(lo: int, hi: int):
    """Integers in [lo, hi], edges weighted in."""
    return st.one_of(st.sampled_from(edge_values(lo, hi)), st.integers(lo, hi))


def formats(min_bits=2, max_bits=64):
    return st.builds(IntFormat, st.integers(min_bits, max_bits), st.booleans())


def int_arrays(fmt: IntFormat, shape):
    """Arrays of ``fmt`` values in its narrowest dtype, edges included."""
    return hnp.arrays(fmt.dtype, shape, elements=ints_in(fmt.min, fmt.max))


def operand_arrays(draw, fmt: IntFormat, shape, extreme: str | None = None) -> np.ndarray:
    """Draw an operand array; ``extreme`` in {"max", "min"} fills it with that value."""
    if extreme == "max":
        return np.full(shape, fmt.max, fmt.dtype)
    if extreme == "min":
        return np.full(shape, fmt.min, fmt.dtype)
    return draw(int_arrays(fmt, shape))
