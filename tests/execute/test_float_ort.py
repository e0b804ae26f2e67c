"""The float reference through onnxruntime (``hwsim.execute.float_ort``) against ``run_float``:
every IR op on random one-op graphs (with and without an imported model's float-range clamps),
the shipped models, imported QDQ models; its determinism (thread count, batch size).

Tolerances: ops that are one IEEE operation per element or move data are bit-exact; the
float64-then-round ops (LayerNorm, ReduceMean, Sigmoid, SiLU, Tanh, tanh-GELU) within one
float32 spacing of each element; the ops onnxruntime sums in another order or approximates
(conv, dense, pools' sums, softmax, matmul, erf, erf-GELU) within :data:`SPACINGS_OF_MAX`
float32 spacings of the tensor's largest magnitude. Whole networks: within :data:`NET_SPACINGS`
spacings of each tensor's largest magnitude (a deep network compounds the per-op differences).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwsim.errors import HwsimError
from hwsim.execute import run_float
from hwsim.execute.float_ort import ORT_WRITERS, OrtFloat, float_model, unsupported
from hwsim.graph import import_model
from hwsim.graph.ir import Graph, Node, Op

ROOT = Path(__file__).resolve().parents[2]
f32 = np.float32

BIT_EXACT = {
    Op.RELU, Op.CLIP, Op.ADD, Op.MUL, Op.MAXPOOL, Op.FLATTEN, Op.RESHAPE, Op.CONCAT,
    Op.IDENTITY, Op.BATCHNORM, Op.TRANSPOSE, Op.GATHER, Op.EMBEDDING, Op.SLICE,
    Op.HARDSIGMOID, Op.HARDSWISH, Op.MUL_ACT, Op.ADD_CONST, Op.DIV_CONST, Op.RESIZE,
}  # fmt: skip
ROUNDED_ONCE = {Op.LAYERNORM, Op.REDUCE_MEAN, Op.SIGMOID, Op.SILU, Op.TANH}
SPACINGS_OF_MAX = {
    Op.CONV: 8, Op.DENSE: 8, Op.AVGPOOL: 2, Op.GAP: 2, Op.SOFTMAX: 4, Op.MATMUL: 8,
    Op.ERF: 2, Op.GELU: 2,
}  # fmt: skip
NET_SPACINGS = 64


def _graph(nodes, shape, out=None, dtype="float32", ranges=None) -> Graph:
    return Graph(
        "g",
        "test",
        "x",
        tuple(shape),
        out or nodes[-1].output,
        nodes,
        input_dtype=dtype,
        float_ranges=ranges or {},
    )


def _normal(rng, shape, scale=1.0):
    return (rng.normal(0, scale, shape)).astype(f32)


def _one_op(op: Op, rng) -> tuple[Graph, np.ndarray]:
    """A small graph whose last node is ``op`` (with random shapes and attributes) and a batch
    of inputs for it."""
    n = int(rng.integers(1, 5))
    c, h, w = (int(v) for v in rng.integers(1, 7, 3))
    x4 = _normal(rng, (n, c, h, w), 2.0)
    t, d = int(rng.integers(1, 6)), int(rng.integers(1, 9))
    x3 = _normal(rng, (n, t, d), 2.0)

    def node(o, ins, attrs=None, **kw):
        return Node(o.value, o, tuple(ins), "y", attrs or {}, **kw)

    if op is Op.CONV:
        g = int(rng.choice([d for d in (1, 2, 3) if c % d == 0]))
        f = g * int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(1, 4, 2))
        pads = tuple(int(v) for v in rng.integers(0, 3, 4))
        dil = tuple(int(v) for v in rng.integers(1, 3, 2))
        hp, wp = h + pads[0] + pads[2], w + pads[1] + pads[3]
        x4 = _normal(rng, (n, c, max(h, dil[0] * (kh - 1) + 1), max(w, dil[1] * (kw - 1) + 1)))
        attrs = {
            "strides": tuple(int(v) for v in rng.integers(1, 3, 2)),
            "pads": pads,
            "dilations": dil,
            "group": g,
        }
        del hp, wp
        wt = _normal(rng, (f, c // g, kh, kw))
        b = _normal(rng, (f,)) if rng.random() < 0.7 else None
        return _graph([node(op, ["x"], attrs, weight=wt, bias=b)], x4.shape[1:]), x4
    if op is Op.DENSE:
        if rng.random() < 0.5:
            o = int(rng.integers(1, 9))
            wt = _normal(rng, (o, d))
            b = _normal(rng, (o,)) if rng.random() < 0.7 else None
            return _graph([node(op, ["x"], {"nd": True}, weight=wt, bias=b)], x3.shape[1:]), x3
        o = int(rng.integers(1, 9))
        wt = _normal(rng, (o, c * h * w))
        b = _normal(rng, (o,)) if rng.random() < 0.7 else None
        return _graph([node(op, ["x"], weight=wt, bias=b)], x4.shape[1:]), x4
    if op in (Op.RELU, Op.IDENTITY, Op.FLATTEN, Op.GAP):
        return _graph([node(op, ["x"])], x4.shape[1:]), x4
    if op is Op.CLIP:
        lo = float(rng.normal())
        nd = node(op, ["x"], {"min": lo, "max": lo + float(rng.random() * 3)})
        return _graph([nd], x4.shape[1:]), x4
    if op in (Op.ADD, Op.MUL_ACT):
        pre = Node("pre", Op.RELU, ("x",), "r")
        other = "r" if rng.random() < 0.5 else "x"
        return _graph([pre, node(op, ["x", other])], x4.shape[1:]), x4
    if op is Op.MUL:
        kind = rng.integers(3)
        wt = (
            f32(rng.normal())
            if kind == 0
            else _normal(rng, (c,))
            if kind == 1
            else _normal(rng, (1, c, 1, w))
        )
        return _graph([node(op, ["x"], weight=np.asarray(wt, f32))], x4.shape[1:]), x4
    if op in (Op.MAXPOOL, Op.AVGPOOL):
        k = tuple(int(v) for v in rng.integers(1, 4, 2))
        x4 = _normal(rng, (n, c, h + k[0], w + k[1]))
        pads = tuple(int(rng.integers(0, k[i % 2])) for i in range(4))
        attrs = {
            "kernel": k,
            "strides": tuple(int(v) for v in rng.integers(1, 3, 2)),
            "pads": pads,
            "count_include_pad": int(rng.integers(2)),
        }
        return _graph([node(op, ["x"], attrs)], x4.shape[1:]), x4
    if op is Op.RESHAPE:
        shape = [int(rng.choice([n, -1, 1])), 0, -1] if rng.random() < 0.5 else [n, c * h, w]
        return _graph([node(op, ["x"], {"shape": tuple(shape)})], x4.shape[1:]), x4
    if op is Op.CONCAT:
        pre = Node("pre", Op.RELU, ("x",), "r")
        axis = int(rng.integers(1, 3))
        cshape = (1, t, d) if axis == 2 else (1, 1, d)
        consts = ((1, _normal(rng, cshape)),) if rng.random() < 0.6 else ()
        nd = node(op, ["x", "r"], {"axis": axis, "consts": consts})
        return _graph([pre, nd], x3.shape[1:]), x3
    if op is Op.SOFTMAX:
        axis = int(rng.integers(1, 3))
        return _graph([node(op, ["x"], {"axis": axis})], x3.shape[1:]), x3 * f32(3)
    if op is Op.BATCHNORM:
        attrs = {
            "gamma": _normal(rng, (c,)),
            "beta": _normal(rng, (c,)),
            "mean": _normal(rng, (c,)),
            "var": np.abs(_normal(rng, (c,))) + f32(0.1),
            "epsilon": 1e-5,
        }
        return _graph([node(op, ["x"], attrs)], x4.shape[1:]), x4
    if op is Op.MATMUL:
        pre = Node("pre", Op.TRANSPOSE, ("x",), "xt", {"perm": (0, 2, 1)})
        return _graph([pre, node(op, ["x", "xt"])], x3.shape[1:]), x3
    if op is Op.TRANSPOSE:
        perm = (0,) + tuple(int(v) + 1 for v in rng.permutation(3))
        return _graph([node(op, ["x"], {"perm": perm})], x4.shape[1:]), x4
    if op is Op.GATHER:
        axis = int(rng.integers(1, 3))
        size = x3.shape[axis]
        idx = rng.integers(-size, size, int(rng.integers(1, 4)))
        idx = int(idx[0]) if rng.random() < 0.4 else idx.astype(np.int64)
        return _graph([node(op, ["x"], {"axis": axis, "indices": idx})], x3.shape[1:]), x3
    if op is Op.EMBEDDING:
        v = int(rng.integers(2, 9))
        ids = rng.integers(-v, v, (n, t)).astype(np.int64)
        return _graph([node(op, ["x"], weight=_normal(rng, (v, d)))], (t,), dtype="int64"), ids
    if op is Op.SLICE:
        slices = []
        for ax in (1, 3):
            size = x4.shape[ax]
            step = int(rng.choice([1, 2, -1, -2]))
            if step > 0:
                slices.append((ax, int(rng.integers(0, size)), int(size), step))
            else:
                start = int(rng.integers(0, size))
                stop = None if rng.random() < 0.5 else int(rng.integers(0, start + 1))
                slices.append((ax, start, stop, step))
        return _graph([node(op, ["x"], {"slices": tuple(slices)})], x4.shape[1:]), x4
    if op is Op.LAYERNORM:
        axis = int(rng.integers(1, 3))
        shape = x3.shape[axis:]
        wt = _normal(rng, shape) if rng.random() < 0.7 else None
        b = _normal(rng, shape) if rng.random() < 0.7 else None
        x = x3 + f32(rng.normal(0, 10))
        nd = node(op, ["x"], {"axis": axis, "epsilon": 1e-5}, weight=wt, bias=b)
        return _graph([nd], x3.shape[1:]), x
    if op is Op.GELU:
        form = str(rng.choice(["erf", "tanh"]))
        return _graph([node(op, ["x"], {"form": form})], x3.shape[1:]), x3
    if op in (Op.SIGMOID, Op.SILU, Op.ERF, Op.TANH):
        return _graph([node(op, ["x"])], x3.shape[1:]), x3 * f32(3)
    if op in (Op.HARDSIGMOID, Op.HARDSWISH):
        ab = [(1 / 6, 0.5), (0.2, 0.5), (float(rng.random()), float(rng.normal()))]
        a, b = ab[int(rng.integers(3))]
        return _graph([node(op, ["x"], {"alpha": a, "beta": b})], x3.shape[1:]), x3 * f32(4)
    if op in (Op.ADD_CONST, Op.DIV_CONST):
        kind = rng.integers(3)
        cst = f32(rng.normal()) if kind == 0 else _normal(rng, (1, 1, d)) if kind == 1 else None
        if cst is None:
            cst = _normal(rng, (d,))
        cst = np.asarray(cst, f32)
        if op is Op.DIV_CONST:
            cst = np.where(np.abs(cst) < 0.1, f32(0.5), cst).astype(f32)
        return _graph([node(op, ["x"], weight=cst)], x3.shape[1:]), x3
    if op is Op.REDUCE_MEAN:
        axes = tuple(sorted({int(v) for v in rng.integers(1, 3, int(rng.integers(1, 3)))}))
        nd = node(op, ["x"], {"axes": axes, "keepdims": int(rng.integers(2))})
        return _graph([nd], x3.shape[1:]), x3
    if op is Op.RESIZE:
        factors = (1, 1) + tuple(int(v) for v in rng.integers(1, 4, 2))
        return _graph([node(op, ["x"], {"factors": factors})], x4.shape[1:]), x4
    raise AssertionError(f"no graph for {op}")


def _check(got: np.ndarray, want: np.ndarray, op: Op, what: str) -> None:
    assert got.dtype == np.float32 and got.shape == want.shape, (what, got.shape, want.shape)
    if op in BIT_EXACT:
        assert got.tobytes() == want.tobytes(), what
        return
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    if op in ROUNDED_ONCE:
        assert np.all(np.abs(g64 - w64) <= np.spacing(np.abs(want))), what
        return
    top = np.spacing(f32(np.abs(want).max())) if want.size else 0.0
    assert np.abs(g64 - w64).max(initial=0.0) <= SPACINGS_OF_MAX[op] * top, what


def test_every_op_has_a_writer():
    assert set(ORT_WRITERS) == set(Op)


@pytest.mark.parametrize("op", list(Op), ids=lambda o: o.value)
@settings(max_examples=12, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**32 - 1), clamp=st.booleans())
def test_each_op_equals_run_float(op, seed, clamp):
    """Every op on random shapes and attributes; ``clamp``: the input and every tensor clamped
    to a float range as an imported QDQ model's (``Graph.float_ranges``)."""
    rng = np.random.default_rng(seed)
    g, x = _one_op(op, rng)
    if clamp:
        lo = float(rng.normal(0, 0.5))
        g.float_ranges = {t: (lo, lo + float(rng.random() * 3)) for t in [*g.producer(), "x"]}
        if g.input_dtype != "float32":
            del g.float_ranges["x"]
    want = run_float(g, x)
    outs = [nd.output for nd in g.nodes]
    got = OrtFloat(g, outs).run(x)
    for t in outs:
        node_op = g.producer()[t].op
        _check(got[t], want[t], node_op, f"{op.value} seed {seed}: tensor {t}")


def test_embedding_ids_out_of_range_raise_naming_the_node():
    rng = np.random.default_rng(0)
    g, x = _one_op(Op.EMBEDDING, rng)
    v = g.nodes[0].weight.shape[0]
    with pytest.raises(HwsimError, match="node 'embedding'.*token ids outside"):
        OrtFloat(g, ["y"]).run(np.full_like(x, v))
    with pytest.raises(HwsimError, match="not whole numbers"):
        OrtFloat(g, ["y"]).run(x + 0.5)


def test_an_op_without_a_writer_is_refused_naming_it(monkeypatch):
    monkeypatch.delitem(ORT_WRITERS, Op.RELU)
    g = _graph([Node("r", Op.RELU, ("x",), "y")], (3,))
    assert unsupported(g) == "no onnxruntime form for op(s) relu"
    with pytest.raises(HwsimError, match="test: no onnxruntime form for op.s. relu"):
        float_model(g, ["y"])


def _net_check(g: Graph, x: np.ndarray) -> None:
    outs = [n.output for n in g.nodes]
    got, want = OrtFloat(g, outs).run(x), run_float(g, x)
    for t in outs:
        w = want[t]
        top = np.spacing(f32(np.abs(w).max())) if w.size else 0.0
        err = np.abs(got[t].astype(np.float64) - w).max(initial=0.0)
        assert got[t].shape == w.shape and err <= NET_SPACINGS * top, (t, err / top)


def _batch(g: Graph, n: int, seed: int = 0) -> np.ndarray:
    shape = tuple(d if isinstance(d, int) else 4 for d in g.input_shape)
    rng = np.random.default_rng(seed)
    if g.input_dtype != "float32":
        return rng.integers(0, 8, (n, *shape)).astype(g.input_dtype)
    return rng.normal(0, 1, (n, *shape)).astype(f32)


@pytest.mark.parametrize("model", ["mlp", "rescnn", "silucnn", "vit"])
def test_shipped_models_equal_run_float(model):
    g = import_model(ROOT / "models" / f"{model}.onnx")
    _net_check(g, _batch(g, 16))


class _Reader:
    def __init__(self, x):
        self.it = iter([{"input": x[i : i + 64]} for i in range(0, len(x), 64)])

    def get_next(self):
        return next(self.it, None)


def _qdq(tmp_path: Path, model: str, per_channel: bool, act: str) -> Path:
    """A shipped model through onnxruntime's ``quantize_static`` (QDQ): its import has float
    ranges (the clamps of the deleted ReLUs) and, unpreprocessed, unfolded BatchNorms."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from hwsim.data import load_data

    class Reader(_Reader, CalibrationDataReader):
        pass

    out = tmp_path / f"{model}_{int(per_channel)}_{act}.onnx"
    quantize_static(
        str(ROOT / "models" / f"{model}.onnx"),
        str(out),
        Reader(load_data("digits-train").x[:128]),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        activation_type=QuantType.QInt8 if act == "s8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return out


QDQ = [("mlp", False, "u8"), ("rescnn", False, "u8"), ("rescnn", True, "s8"), ("vit", True, "u8")]


@pytest.mark.parametrize("model,per_channel,act", QDQ)
def test_imported_qdq_models_equal_run_float(tmp_path, model, per_channel, act):
    g = import_model(_qdq(tmp_path, model, per_channel, act))
    assert g.float_ranges
    _net_check(g, _batch(g, 16, seed=1))


def _deterministic(g: Graph, x: np.ndarray) -> None:
    """Bit-identical outputs for 1 and 2 threads, and sample by sample for batches of 1, 7 and
    all of ``x``."""
    outs = [n.output for n in g.nodes]
    two, one = OrtFloat(g, outs, threads=2), OrtFloat(g, outs, threads=1)
    whole = two.run(x)
    single = one.run(x)
    for t in outs:
        assert whole[t].tobytes() == single[t].tobytes(), t
    for size in (1, 7):
        for i in range(0, len(x), size):
            part = two.run(x[i : i + size])
            for t in outs:
                assert part[t].tobytes() == whole[t][i : i + size].tobytes(), (size, i, t)


@pytest.mark.parametrize("model", ["mlp", "rescnn", "silucnn", "vit"])
def test_results_do_not_depend_on_threads_or_batch(model):
    """Measured on onnxruntime 1.32 (x86, AVX-512): every tensor of the shipped models."""
    g = import_model(ROOT / "models" / f"{model}.onnx")
    _deterministic(g, _batch(g, 20, seed=2))


def test_qdq_results_do_not_depend_on_threads_or_batch(tmp_path):
    g = import_model(_qdq(tmp_path, "rescnn", True, "u8"))
    _deterministic(g, _batch(g, 20, seed=3))


@pytest.fixture(scope="module", params=["resnet18", "mobilenetv2"])
def conformance_net(request, tmp_path_factory):
    """A conformance architecture (tests/conformance/archs.py, 3x64x64): its float export and
    its onnxruntime QDQ model (pre-processed, per channel), both imported."""
    sys.path.insert(0, str(ROOT / "tests" / "conformance"))
    import archs

    fp, qp = archs.make(request.param, tmp_path_factory.mktemp(request.param), True)
    return import_model(fp), import_model(qp), archs.inputs(12)


def test_conformance_networks_equal_run_float(conformance_net):
    g_float, g_qdq, x = conformance_net
    _net_check(g_float, x)
    assert g_qdq.float_ranges
    _net_check(g_qdq, x)


def test_conformance_networks_do_not_depend_on_threads_or_batch(conformance_net):
    """MLAS's convolutions (NCHWc), GEMMs and pools sum each output in one order whatever
    the batch and the thread count (onnxruntime 1.32, x86)."""
    g_float, g_qdq, x = conformance_net
    _deterministic(g_float, x)
    _deterministic(g_qdq, x)
