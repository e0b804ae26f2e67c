"""The integer executor's graph-level kernels against the numpy compositions they replace, to
the bit: one-pass QuantizeLinear of the graph input, the integer ReLU / Clip clamp."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hwsim.execute.kernels import clamp_rows
from hwsim.execute.tensors import quantize_linear, quantize_static
from hwsim.numerics import IntFormat
from tests.strategies import int_arrays, ints_in

SPECIALS = [0.0, -0.0, np.nan, np.inf, -np.inf, 0.5, 1.5, 2.5, -0.5, -2.5, 1e-45, 3.4e38, -3.4e38]


@given(
    st.tuples(st.integers(0, 3), st.integers(0, 5), st.integers(1, 4)),
    st.integers(2, 32),
    st.booleans(),
    st.one_of(
        st.sampled_from([1.0, 0.5, 2.0**-20, 1e-38, 3e38]), st.floats(2.0**-20, 1024.0, width=32)
    ),
    st.booleans(),
    st.data(),
)
def test_quantize_static_is_quantize_linear(shape, bits, signed, scale, specials, data):
    """Ties to even, NaN to the lower bound, infinities and huge quotients clamped, -0.0,
    empty and size-1 axes, 2..32-bit formats and their edge zero points."""
    fmt = IntFormat(bits, signed)
    zp = data.draw(ints_in(fmt.min, fmt.max))
    elements = st.sampled_from(SPECIALS) if specials else st.floats(width=32, allow_nan=True)
    x = data.draw(hnp.arrays(np.float32, shape, elements=elements))
    got = quantize_static(x, np.float32(scale), zp, fmt)
    with np.errstate(all="ignore"):
        want = quantize_linear(x, np.float32(scale), zp, fmt).astype(fmt.dtype)
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@given(st.integers(2, 16), st.booleans(), st.integers(-40, 40), st.floats(2.0**-7, 4.0, width=32))
def test_quantize_static_ties_round_half_to_even(bits, signed, k, scale):
    """``x = (k + 1/2) * scale`` exactly representable: the quotient is a tie."""
    fmt = IntFormat(bits, signed)
    x = np.array([[(k + 0.5) * scale]], np.float32)
    got = quantize_static(x, np.float32(scale), 0, fmt)
    with np.errstate(all="ignore"):
        want = quantize_linear(x, np.float32(scale), 0, fmt).astype(fmt.dtype)
    assert got.tobytes() == want.tobytes()


@given(
    st.sampled_from([IntFormat(8, True), IntFormat(8, False), IntFormat(16, True),
                     IntFormat(32, True), IntFormat(4, False)]),
    st.tuples(st.integers(1, 3), st.integers(0, 70)),
    st.booleans(),
    st.data(),
)  # fmt: skip
def test_clamp_rows_is_np_clip(fmt, shape, inplace, data):
    """Bounds anywhere in the format (also crossed, lo > hi: numpy's clip gives hi), in place
    or into a fresh array."""
    q = data.draw(int_arrays(fmt, shape))
    lo = data.draw(ints_in(fmt.min, fmt.max))
    hi = data.draw(ints_in(fmt.min, fmt.max))
    want = np.clip(q, np.int64(lo), np.int64(hi)).astype(q.dtype)
    out = q if inplace else np.empty_like(q)
    clamp_rows(q, lo, hi, out)
    assert out.dtype == q.dtype and np.array_equal(out, want)


def test_an_error_inside_a_node_names_the_node_and_keeps_its_type(monkeypatch):
    """A user-facing error raised while a node runs says which node (the CLI prints it as
    'Error: ...'), and stays the same exception type for callers that catch it."""
    import pytest

    from hwsim import api
    from hwsim.data import load_data
    from hwsim.execute import IntegerExecutor
    from hwsim.qops.common import QOpError

    program = api.quantize_model("mlp", "per-tensor", calib="digits-train")
    ex = IntegerExecutor(program)
    target = program.graph.nodes[1]
    real = IntegerExecutor._node

    def node(self, n, ins):
        if n.name == target.name:
            raise QOpError("a window with no valid position")
        return real(self, n, ins)

    monkeypatch.setattr(IntegerExecutor, "_node", node)
    with pytest.raises(QOpError, match=f"node '{target.name}'.*a window with no valid position"):
        ex.run(load_data("digits").x[:2])
