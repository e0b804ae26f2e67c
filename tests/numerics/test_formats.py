import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.numerics import IntFormat, Overflow, overflows, reference, saturate, wrap
from hwsim.numerics.formats import saturate_i64, wrap_i64
from tests.strategies import edge_values, formats, ints_in


def test_format_ranges_count_the_sign_bit():
    assert (IntFormat(8).min, IntFormat(8).max) == (-128, 127)
    assert (IntFormat(8, False).min, IntFormat(8, False).max) == (0, 255)
    assert (IntFormat(2).min, IntFormat(2).max) == (-2, 1)
    assert IntFormat(64, False).max == 2**64 - 1
    assert IntFormat(8).dtype == np.int8 and IntFormat(9, False).dtype == np.int16
    assert IntFormat(64, False).dtype == np.uint64


@pytest.mark.parametrize("bits", [1, 65, 0, -3, 8.0, True])
def test_bad_widths_name_the_field(bits):
    with pytest.raises(ValueError, match="IntFormat.bits"):
        IntFormat(bits)


def test_reference_wrap_and_saturate_pin_examples():
    assert reference.wrap(128, 8, True) == -128
    assert reference.wrap(-129, 8, True) == 127
    assert reference.wrap(256 + 5, 8, False) == 5
    assert reference.wrap(-1, 8, False) == 255
    assert reference.saturate(300, 8, True) == 127
    assert reference.saturate(-300, 8, False) == 0


@given(formats(), st.data())
def test_array_wrap_saturate_equal_reference(fmt, data):
    lo, hi = (-(2**63), 2**63 - 1)
    xs = data.draw(st.lists(ints_in(lo, hi), min_size=1, max_size=20))
    arr = np.array(xs, np.int64)
    w = wrap(arr, fmt)
    s = saturate(arr, fmt)
    assert [int(v) for v in w] == [reference.wrap(v, fmt.bits, fmt.signed) for v in xs]
    assert [int(v) for v in s] == [reference.saturate(v, fmt.bits, fmt.signed) for v in xs]
    assert [bool(v) for v in overflows(arr, fmt)] == [not fmt.min <= v <= fmt.max for v in xs]
    # scalars go through the same contract
    assert wrap(xs[0], fmt) == int(w[0]) and saturate(xs[0], fmt) == int(s[0])
    assert Overflow.WRAP.apply(xs[0], fmt) == int(w[0])


@given(formats(), st.lists(ints_in(0, 2**64 - 1), min_size=1, max_size=20))
def test_uint64_inputs(fmt, xs):
    arr = np.array(xs, np.uint64)
    assert [int(v) for v in wrap(arr, fmt)] == [reference.wrap(v, fmt.bits, fmt.signed) for v in xs]
    assert [int(v) for v in saturate(arr, fmt)] == [
        reference.saturate(v, fmt.bits, fmt.signed) for v in xs
    ]


@given(st.integers(8, 63), st.booleans(), st.lists(ints_in(-(2**62), 2**62), min_size=1))
def test_numba_helpers_equal_reference(bits, signed, xs):
    fmt = IntFormat(bits, signed)
    for v in xs:
        assert wrap_i64(v, bits, signed) == reference.wrap(v, bits, signed)
        assert saturate_i64(v, fmt.min, min(fmt.max, 2**63 - 1)) == reference.saturate(
            v, bits, signed
        )


def test_float_and_out_of_range_inputs_are_rejected():
    with pytest.raises(ValueError, match="integer dtype"):
        wrap(np.array([1.5]), IntFormat(8))
    with pytest.raises(ValueError, match="outside the range of int8"):
        IntFormat(8).check(np.array([1, 200]), "x")


def test_edge_values_include_the_extremes():
    ev = edge_values(-128, 127)
    assert -128 in ev and 127 in ev and 0 in ev and 64 in ev and -65 in ev
