"""Test-input generators: edge values of a width plus hypothesis strategies derived from it, and
the datapath's operand / accumulator configurations the GEMM, convolution and per-sample-shift
tests share."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.datapath import Accumulator, ReductionOrder
from hwsim.numerics import IntFormat, Overflow


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


def zero_point_lists(fmt: IntFormat, n: int):
    """``n`` per-channel zero points of ``fmt`` (a list), edges weighted in."""
    return st.lists(ints_in(fmt.min, fmt.max), min_size=n, max_size=n)


@st.composite
def operands(draw, max_bits=16):
    """``(fmt, zero_point)`` of an operand: 2..``max_bits`` bits, signed or not."""
    fmt = IntFormat(draw(st.integers(2, max_bits)), draw(st.booleans()))
    zp = draw(ints_in(fmt.min, fmt.max))
    return fmt, zp


@st.composite
def accumulators(draw):
    """Accumulators of 8..64 bits, wrapping or saturating, signed or not, in every reduction
    order (tiled with 1-4 rows), tracking partials or not."""
    overflow = draw(st.sampled_from(list(Overflow)))
    order = draw(st.sampled_from(list(ReductionOrder)))
    return Accumulator(
        bits=draw(st.sampled_from([8, 9, 12, 16, 17, 24, 31, 32, 33, 48, 63, 64])),
        overflow=overflow,
        signed=draw(st.booleans()),
        order=order,
        tile_rows=draw(st.integers(1, 4)) if order is ReductionOrder.TILED else 0,
        track_partials=draw(st.booleans()),
    )
