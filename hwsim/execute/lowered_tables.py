"""Lowered nodes of ONE 8-bit static tensor as tables of the executor's own rule
(:mod:`hwsim.execute.lowered`).

A node whose output element at position ``p`` is a function ``f_p`` of its input element at
``p`` alone -- a float island (GELU, Sigmoid, SiLU, HardSigmoid, HardSwish, Tanh, Erf: NumPy /
SciPy float64 ufuncs, one element at a time), a constant added / divided / multiplied (the
constant may vary over positions: a position embedding ``(1, T, D)``), a requantization -- and
whose output is a static per-tensor 8-bit tensor takes at most 256 values per position. The
table is the executor's rule (:meth:`~hwsim.execute.IntegerExecutor._node`, the node-by-node
run's code path) evaluated on every input code at every position the rule can tell apart; the
lowered node looks it up (:func:`lookup`) at ``position * 256 + code`` (``code``: the held
uint8 value, ``q + 128`` for int8). Exact for any deterministic per-tensor rule that is
elementwise; not for per-sample (dynamic / shift) or per-token tensors (their grids vary per
sample: refused by :class:`~hwsim.execute.lowered.Meta`), stochastic rounding (draws per
sample), or an output off the tensor's grid. Each table is checked once more against the rule
on random samples of the full shape (a rule that is not elementwise on this machine does not
lower) and holds at most :data:`TABLE_MAX` entries.
"""

from __future__ import annotations

import numpy as np

from hwsim.graph.ir import Node, Op

TABLE_MAX = 1 << 22
"""The most entries (uint8) a lowered table may hold, and the most values a rule is evaluated
on to build one."""

ELEMENTWISE = frozenset(
    {
        Op.GELU,
        Op.SIGMOID,
        Op.SILU,
        Op.HARDSIGMOID,
        Op.HARDSWISH,
        Op.TANH,
        Op.ERF,
        Op.ADD_CONST,
        Op.DIV_CONST,
        Op.MUL,
        Op.RELU,
        Op.CLIP,
        Op.IDENTITY,
    }
)
"""Ops whose executor rule maps each input element to the output element at its position,
alone: the float islands (float64 / float32 ufuncs of the dequantized value, then
``QuantizeLinear``), constant arithmetic (the constant broadcast over positions), and a ReLU /
Clip / Identity onto another grid (``Q(op(DQ(x)))``)."""


def codes(dtype) -> np.ndarray:
    """Every value of the 8-bit ``dtype``, ordered by its held uint8 value (int8: ``q + 128``)."""
    info = np.iinfo(dtype)
    return np.arange(info.min, info.max + 1).astype(dtype)


def held(q: np.ndarray) -> np.ndarray:
    """8-bit integers as a lowered segment holds them: uint8 as is, int8 as uint8 ``q + 128``."""
    q = np.asarray(q)
    if q.dtype == np.int8:
        return (q.astype(np.int16) + 128).astype(np.uint8)
    return q.astype(np.uint8)


def positions(node: Node, shape: tuple) -> tuple | None:
    """The per-sample shape of the positions ``node``'s rule can tell apart, for an input of
    per-sample ``shape``: the constant's broadcast against it (1 where the constant does not
    vary; all 1 without a constant); None where the constant varies over the sample axis."""
    w = node.weight
    if node.op not in (Op.ADD_CONST, Op.DIV_CONST, Op.MUL) or w is None or np.ndim(w) == 0:
        return (1,) * len(shape)
    w = np.asarray(w)
    if node.op is Op.MUL and w.ndim == 1:  # per channel: axis 1 (executor._op_mul)
        ws = (1, w.size) + (1,) * (len(shape) - 1)
    else:
        ws = w.shape
    full = len(shape) + 1
    if len(ws) > full:
        return None
    ws = (1,) * (full - len(ws)) + tuple(ws)
    if ws[0] != 1:
        return None
    return tuple(s if d != 1 else 1 for s, d in zip(shape, ws[1:], strict=True))


def lookup(b, table: np.ndarray, idx: str) -> str:
    """``table[idx]`` (``idx``: an int32 ONNX tensor of any shape): ``GatherElements`` on the
    flattened indices, reshaped back -- the same integers as ``Gather``, several times faster in
    onnxruntime's CPU kernels for one-byte entries."""
    flat = b.node("Reshape", [idx, b.const(np.array([-1], np.int64))])
    y = b.node("GatherElements", [b.const(table), flat], axis=0)
    return b.node("Reshape", [y, b.node("Shape", [idx])])


def _on_grid(y, out) -> bool:
    """Whether the rule's result ``y`` is on ``out``'s grid."""
    from hwsim.execute.lowered import Meta

    m = Meta.of(y)
    return m is not None and m.same_grid(out)


def _qt(q, m):
    from hwsim.execute.tensors import QTensor

    return QTensor(np.ascontiguousarray(q), np.asarray(m.scale), m.zero_point, m.fmt)


def deterministic(low, node: Node) -> str | None:
    """Why ``node``'s rule is not one fixed function of its inputs' integers (None: it is)."""
    from hwsim.numerics import RoundingMode

    spec = low.p.acts.get(node.output)
    if spec is None or spec.mode != "static":
        return "output not static"
    if low.p.layer(node.name).rounding is RoundingMode.STOCHASTIC:
        return "stochastic rounding"
    return None


def unary(low, b, node: Node, x, out) -> str | None:
    """``node`` (one 8-bit input ``x``, output ``out``: :class:`~hwsim.execute.lowered.Meta`)
    as a lookup in its rule's table: 256 entries, or 256 per position where the rule's
    constant varies over positions (index ``position * 256 + code``)."""
    from onnx import TensorProto

    if node.op not in ELEMENTWISE:
        return f"{node.op.value} is not elementwise"
    why = deterministic(low, node)
    if why:
        return why
    pos = positions(node, x.shape)
    if pos is None:
        return "a constant that varies over the sample axis"
    P = int(np.prod(pos, dtype=np.int64))
    if 256 * P > TABLE_MAX:
        return f"a table of 256 x {P} positions (more than {TABLE_MAX} entries)"
    c = codes(x.dtype).reshape((256,) + (1,) * len(pos))
    y = low.rule(node, [_qt(np.broadcast_to(c, (256,) + pos), x)])
    if not _on_grid(y, out) or y.q.shape != (256,) + pos:
        return "the rule's output is not the tensor's grid"
    tab = held(y.q).reshape(256, P)
    if np.all(tab == tab[:, :1]):  # the same at every position
        tab, P = tab[:, :1], 1
    table = np.ascontiguousarray(tab.T).reshape(-1)  # [position * 256 + code]
    offsets = (np.arange(P, dtype=np.int32) * 256).reshape((1,) + (pos if P > 1 else ()))

    # the table against the rule on random samples of the full shape
    info = np.iinfo(x.dtype)
    sample = np.random.default_rng(0).integers(info.min, info.max + 1, (2, *x.shape))
    sample = sample.astype(x.dtype)
    got = low.rule(node, [_qt(sample, x)])
    want = table[held(sample).astype(np.int64) + (offsets if P > 1 else 0)]
    if not _on_grid(got, out) or not np.array_equal(held(got.q), want):
        return "the rule is not elementwise"

    nhwc = b.any(node.inputs[0])[1][1] if P == 1 else False  # elementwise: any layout
    i = b.node("Cast", [b.get(node.inputs[0], x, True, nhwc)], to=TensorProto.INT32)
    if P > 1:
        i = b.node("Add", [i, b.const(offsets)])
    b.put(node.output, lookup(b, table, i), (out.dtype == np.int8, nhwc))
    return None


def concat(low, b, node: Node, ins: list, out) -> str | None:
    """A Concat of 8-bit static tensors (and the program's constant parts, a class token): each
    input through a 256-entry table of the executor's rule (none where the rule moves it
    unchanged: the same grid), each constant part the rule's integers for it, ``Expand``-ed
    over the batch; then ``Concat``. The rule is evaluated once on inputs that hold code ``c``
    in sample ``c``; an input's part must not vary over positions (its rule: one rescale, or
    ``Q(DQ(x))``), a constant part not over the codes."""
    from onnx import TensorProto

    why = deterministic(low, node)
    if why:
        return why
    consts = node.attrs.get("consts", ())
    rank = len(out.shape) + 1  # with the sample axis
    ax = int(node.attrs.get("axis", 1))
    ax = ax + rank if ax < 0 else ax
    if not 1 <= ax < rank:
        return "a concat along the sample axis"
    # without constants the other axes do not matter: 1 each
    shapes = [
        m.shape if consts else tuple(s if d + 1 == ax else 1 for d, s in enumerate(m.shape))
        for m in ins
    ]
    size = 256 * sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
    size += 256 * sum(int(np.asarray(v).size) for _, v in consts)
    if size > TABLE_MAX:
        return f"the rule on {size} values (more than {TABLE_MAX})"
    args = []
    for m, s in zip(ins, shapes, strict=True):
        c = codes(m.dtype).reshape((256,) + (1,) * len(s))
        args.append(_qt(np.broadcast_to(c, (256,) + s), m))
    y = low.rule(node, args)
    if not _on_grid(y, out):
        return "the rule's output is not the tensor's grid"
    h = held(y.q)
    order: list = [("in", k) for k in range(len(ins))]
    for i, v in consts:  # where the executor's float concat puts them
        order.insert(i, ("const", np.asarray(v)))
    parts, start = [], 0
    for kind, v in order:
        n = shapes[v][ax - 1] if kind == "in" else v.shape[ax]
        part = np.take(h, np.arange(start, start + n), axis=ax)
        start += n
        if kind == "const":
            if not np.all(part == part[:1]):
                return "a constant part that depends on the inputs"
            parts.append(("const", part[:1]))
            continue
        tab = part.reshape(256, -1)
        if not np.all(tab == tab[:, :1]):
            return "an input's rule that varies over positions"
        tab = np.ascontiguousarray(tab[:, 0])
        same = np.dtype(ins[v].dtype) == np.dtype(out.dtype) and np.array_equal(
            tab, held(codes(out.dtype))
        )
        parts.append(("in", v, None if same else tab))
    if start != h.shape[ax]:
        return "parts that do not fill the output"

    # the parts against the rule on random samples of the full shapes
    rng = np.random.default_rng(0)
    samples = [
        rng.integers(np.iinfo(m.dtype).min, np.iinfo(m.dtype).max + 1, (2, *m.shape)).astype(
            m.dtype
        )
        for m in ins
    ]
    got = low.rule(node, [_qt(s, m) for s, m in zip(samples, ins, strict=True)])
    want = [
        np.broadcast_to(p[1], (2,) + p[1].shape[1:])
        if p[0] == "const"
        else (held(samples[p[1]]) if p[2] is None else p[2][held(samples[p[1]])])
        for p in parts
    ]
    if not _on_grid(got, out) or not np.array_equal(held(got.q), np.concatenate(want, axis=ax)):
        return "the rule is not a table per input"

    names = []
    batch = None
    for p in parts:
        if p[0] == "in":
            t, m = node.inputs[p[1]], ins[p[1]]
            xin = b.get(t, m, True, nhwc=False)
            if p[2] is not None:
                i = b.node("Cast", [xin], to=TensorProto.INT32)
                xin = lookup(b, p[2], i)
            names.append(xin)
            if batch is None:
                batch = b.node("Shape", [xin], end=1)
    for k, p in enumerate(parts):
        if p[0] == "const":
            dims = b.const(np.array(p[1].shape[1:], np.int64))
            shape = b.node("Concat", [batch, dims], axis=0)
            names.insert(k, b.node("Expand", [b.const(p[1]), shape]))
    if batch is None:
        return "no input part"
    b.put(node.output, b.node("Concat", names, axis=ax), (out.dtype == np.int8, False))
    return None
