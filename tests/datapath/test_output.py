"""The output stage, and the whole datapath against onnxruntime's QLinearMatMul / QLinearConv."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwsim.datapath import Accumulator, Operand, conv2d, gemm, output_stage
from hwsim.numerics import IntFormat, Overflow, ScaleRegister, ort_combined_scale, reference
from tests.strategies import ints_in


@given(
    st.lists(ints_in(-(2**31), 2**31 - 1), min_size=1, max_size=12),
    st.sampled_from(["tflite", "tflite-single", "ort", "pow2"]),
    st.floats(2.0**-20, 0.9),
    ints_in(-128, 127),
    st.sampled_from(list(Overflow)),
    ints_in(-(2**31), 2**31 - 1),
)
def test_output_stage_equals_scalar_composition(accs, kind, real, zp, overflow, bias):
    acc = Accumulator(32, overflow)
    reg = ScaleRegister.from_real(kind, real)
    out = output_stage(np.array(accs)[None, :], reg, acc=acc, bias=bias, out_zero_point=zp)
    for a, y in zip(accs, out.values[0], strict=True):
        t = overflow.apply(a + bias, IntFormat(32))
        want = reference.saturate(int(reg.apply(t)) + zp, 8, True)
        assert int(y) == want
    assert out.values.dtype == np.int8


def test_per_channel_and_per_sample_registers_align_with_their_axis():
    acc = np.array([[100, 100, 100], [200, 200, 200]])
    per_channel = ScaleRegister.from_real("ort", [0.5, 0.25, 0.125])
    per_sample = ScaleRegister.from_real("ort", [0.5, 0.25])
    assert output_stage(acc, per_channel).values.tolist() == [[50, 25, 12], [100, 50, 25]]
    assert output_stage(acc, per_sample, scale_axis=0).values.tolist() == [[50] * 3, [50] * 3]


def test_bias_overflow_and_output_clamp_are_counted():
    acc = Accumulator(16, Overflow.SATURATE)
    out = output_stage(
        np.array([32000, -5, 0]),
        ScaleRegister.from_real("pow2", 1.0),
        acc=acc,
        bias=np.array([1000, 0, 0]),
        bias_axis=0,
        out_format=IntFormat(8, False),
        out_zero_point=3,
    )
    assert out.values.tolist() == [255, 0, 3]
    assert out.bias_overflows == 1 and out.clamped == 2


def test_tflite_register_rejects_a_wide_accumulator():
    with pytest.raises(ValueError, match="takes int32 input"):
        output_stage(
            np.zeros(3, np.int64), ScaleRegister.from_real("tflite", 0.5), acc=Accumulator(48)
        )


def _qlinear_matmul_model(per_channel: bool, N: int):
    from onnx import TensorProto as T
    from onnx import helper

    wzs = [N] if per_channel else []
    inputs = [
        helper.make_tensor_value_info("a", T.UINT8, ["M", "K"]),
        helper.make_tensor_value_info("a_s", T.FLOAT, []),
        helper.make_tensor_value_info("a_z", T.UINT8, []),
        helper.make_tensor_value_info("b", T.INT8, ["K", N]),
        helper.make_tensor_value_info("b_s", T.FLOAT, wzs),
        helper.make_tensor_value_info("b_z", T.INT8, wzs),
        helper.make_tensor_value_info("y_s", T.FLOAT, []),
        helper.make_tensor_value_info("y_z", T.UINT8, []),
    ]
    node = helper.make_node("QLinearMatMul", [i.name for i in inputs], ["y"])
    out = helper.make_tensor_value_info("y", T.UINT8, ["M", N])
    m = helper.make_model(
        helper.make_graph([node], "q", inputs, [out]), opset_imports=[helper.make_opsetid("", 13)]
    )
    m.ir_version = 8
    return m


@pytest.mark.parametrize("seed", range(4))
def test_datapath_with_ort_register_equals_onnxruntime_qlinearmatmul(seed):
    import onnxruntime as ort

    rng = np.random.default_rng(seed)
    M, K, N = 37, 300, 16
    a = rng.integers(0, 256, (M, K)).astype(np.uint8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    a_s, y_s = np.float32(rng.uniform(0.001, 0.05)), np.float32(rng.uniform(0.5, 8))
    b_s = np.float32(rng.uniform(0.001, 0.05))
    a_z, y_z = np.uint8(rng.integers(0, 256)), np.uint8(rng.integers(0, 256))
    sess = ort.InferenceSession(
        _qlinear_matmul_model(False, N).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    feeds = dict(a=a, a_s=a_s, a_z=a_z, b=b, b_s=b_s, b_z=np.int8(0), y_s=y_s, y_z=y_z)
    want = sess.run(None, {k: np.asarray(v) for k, v in feeds.items()})[0]
    acc = gemm(a, b, x_operand=Operand(IntFormat(8, False), int(a_z)), isa="auto")
    reg = ScaleRegister("ort", ort_combined_scale(a_s, b_s, y_s), 0)
    got = output_stage(acc.values, reg, out_format=IntFormat(8, False), out_zero_point=int(y_z))
    assert np.array_equal(got.values, want)


def test_datapath_with_ort_register_equals_onnxruntime_qlinearconv_per_channel():
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(7)
    x = rng.integers(0, 256, (2, 6, 9, 9)).astype(np.uint8)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 4).astype(np.int32)
    x_s, x_z = np.float32(0.02), np.uint8(120)
    w_s = rng.uniform(0.001, 0.02, 4).astype(np.float32)
    y_s, y_z = np.float32(0.3), np.uint8(100)
    inits = [
        numpy_helper.from_array(np.asarray(v), n)
        for n, v in [
            ("x_s", x_s),
            ("x_z", x_z),
            ("w", w),
            ("w_s", w_s),
            ("w_z", np.zeros(4, np.int8)),
            ("y_s", y_s),
            ("y_z", y_z),
            ("B", bias),
        ]
    ]
    node = helper.make_node(
        "QLinearConv",
        ["x", "x_s", "x_z", "w", "w_s", "w_z", "y_s", "y_z", "B"],
        ["y"],
        pads=[1, 1, 1, 1],
        group=2,
    )
    g = helper.make_graph(
        [node],
        "c",
        [helper.make_tensor_value_info("x", T.UINT8, x.shape)],
        [helper.make_tensor_value_info("y", T.UINT8, None)],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    acc = conv2d(
        x, w, padding=1, groups=2, x_operand=Operand(IntFormat(8, False), int(x_z)), isa="auto"
    )
    reg = ScaleRegister("ort", ort_combined_scale(x_s, w_s, y_s), np.zeros(4, np.int64))
    got = output_stage(
        acc.values, reg, bias=bias, out_format=IntFormat(8, False), out_zero_point=int(y_z)
    )
    assert np.array_equal(got.values, want)


@st.composite
def fused_cases(draw):
    bits = draw(st.sampled_from([8, 12, 16, 24, 31, 32, 33, 48, 62, 63, 64]))
    signed = draw(st.booleans())
    acc = Accumulator(bits, draw(st.sampled_from(list(Overflow))), signed=signed)
    fmt = acc.format
    ndim = draw(st.sampled_from([2, 3, 4]))
    shape = tuple(draw(st.integers(1, 3)) for _ in range(2)) + tuple(
        draw(st.integers(0, 3)) for _ in range(ndim - 2)
    )
    edges = [fmt.min, fmt.max, 0, fmt.min + 1, fmt.max - 1]
    vals = draw(
        st.lists(
            st.one_of(st.sampled_from(edges), ints_in(fmt.min, fmt.max)),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    a = np.array(vals, dtype=fmt.dtype).reshape(shape)
    C = shape[1]
    scales = st.one_of(
        st.floats(2.0**-30, 4.0),
        st.sampled_from([0.5, 1.0, 2.0**-24, 3.0e38]),  # ties, identity, tiny, overflow to inf
    )
    per_channel = draw(st.booleans())
    real = draw(st.lists(scales, min_size=C, max_size=C)) if per_channel else draw(scales)
    bias_kind = draw(st.sampled_from(["none", "scalar", "channel"]))
    bias = {
        "none": None,
        "scalar": draw(ints_in(fmt.min, fmt.max)),
        "channel": np.array(
            draw(
                st.lists(
                    st.one_of(st.sampled_from(edges), ints_in(fmt.min, fmt.max)),
                    min_size=C,
                    max_size=C,
                )
            ),
            dtype=fmt.dtype,
        ),
    }[bias_kind]
    out_fmt = IntFormat(draw(st.integers(2, 16)), draw(st.booleans()))
    zp = draw(ints_in(out_fmt.min, out_fmt.max))
    return a, ScaleRegister.from_real("ort", real), acc, bias, out_fmt, zp


@given(fused_cases())
def test_fused_ort_output_stage_equals_the_numpy_composition(case):
    """The fused one-pass kernel against the numpy composition (its reference): wrap and
    saturate at every width (63/64 bits fall back), bias and scale per tensor and per channel,
    rails, ties, scales that overflow float32 to inf, empty trailing dimensions."""
    a, reg, acc, bias, out_fmt, zp = case
    kw = dict(acc=acc, bias=bias, out_format=out_fmt, out_zero_point=zp)
    fast = output_stage(a, reg, **kw)
    slow = output_stage(a, reg, fused=False, **kw)
    assert fast.values.dtype == slow.values.dtype
    assert np.array_equal(fast.values, slow.values)
    assert (fast.bias_overflows, fast.clamped) == (slow.bias_overflows, slow.clamped)


def test_fused_output_stage_rejects_values_outside_the_accumulator(monkeypatch):
    import sys

    out_mod = sys.modules["hwsim.datapath.output"]
    calls = []
    real = out_mod.output_ort_fused
    monkeypatch.setattr(out_mod, "output_ort_fused", lambda *a: calls.append(1) or real(*a))
    ok = output_stage(np.array([[1, 2]]), ScaleRegister.from_real("ort", [0.5, 0.25]), bias=[1, 2])
    assert calls and ok.values.tolist() == [[1, 1]]
    reg = ScaleRegister.from_real("ort", 0.5)
    with pytest.raises(ValueError, match="acc_values holds 40000"):
        output_stage(np.array([[1, 40000]]), reg, acc=Accumulator(16))


@given(st.data())
def test_fused_ort_add_equals_the_register_composition(data):
    """``add_ort_fused`` (the executor's integer Add with ``ort`` registers, one pass) against
    the numpy composition of the ``ort`` register contract, per-sample registers, operand
    formats up to 16 bits with their rails, output clamps."""
    from hwsim.execute.kernels import add_ort_fused
    from hwsim.numerics import ort_requantize, saturate

    fa = IntFormat(data.draw(st.integers(2, 16)), data.draw(st.booleans()))
    fb = IntFormat(data.draw(st.integers(2, 16)), data.draw(st.booleans()))
    fo = IntFormat(data.draw(st.integers(2, 16)), data.draw(st.booleans()))
    n, s = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 6))

    def arr(f):
        vals = st.one_of(st.sampled_from([f.min, f.max]), ints_in(f.min, f.max))
        return np.array(data.draw(st.lists(vals, min_size=n * s, max_size=n * s)), f.dtype)

    a, b = arr(fa).reshape(n, s), arr(fb).reshape(n, s)
    za, zb, zo = (data.draw(ints_in(f.min, f.max)) for f in (fa, fb, fo))
    L = min(20, 30 - max(fa.bits, fb.bits))
    regs = [
        np.array(data.draw(st.lists(st.floats(2.0**-40, 2.0), min_size=n, max_size=n)), np.float32)
        for _ in range(3)
    ]
    out = np.empty((n, s), fo.dtype)
    add_ort_fused(a, za, b, zb, L, *regs, zo, fo.min, fo.max, out)
    ta = ort_requantize((a.astype(np.int64) - za) << L, regs[0][:, None])
    tb = ort_requantize((b.astype(np.int64) - zb) << L, regs[1][:, None])
    want = saturate(ort_requantize(ta + tb, regs[2][:, None]) + zo, fo)
    assert np.array_equal(out, want)
