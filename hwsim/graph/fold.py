"""Import-time rewrites of an ONNX graph before it becomes the IR (:mod:`hwsim.graph.onnx_import`).

**Shape folding** (:func:`fold_shapes`). Exporters write, for a dynamic batch size, subgraphs
that compute shapes at run time -- ``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``,
``ConstantOfShape``, ``Range``, ``Expand``, ``Where``, ``Equal``, ``Cast`` -- and leave other
computations on constants unfolded (``Identity`` of a shared weight, ``Gather`` of a position
table at ``Range`` indices). Every node whose inputs are all constants or shapes is *static*;
the static tensors that non-static nodes read (the frontier) are evaluated by onnxruntime (the
constant evaluator: ``ORT_DISABLE_ALL``, the model pruned to the frontier's ancestors, zeros as
input) at two batch sizes, 2 and 3, and where the input has symbolic sample dimensions also at a
second sample size. A frontier tensor then is

* the same at every probe: a constant (an initializer of the rewritten model);
* a 1-D shape vector whose entry ``i`` is the batch size at each probe: a shape with a symbolic
  batch entry (``batch_entries[name]`` lists the entries; import writes them as ONNX Reshape's
  ``0``, "copy the input's dimension", at axis 0 -- anywhere else it is an error);
* a tensor whose axis 0 is the batch size, every sample the same (``cls.expand(B, -1, -1)``,
  position ids expanded to ``(B, T)`` and their embeddings): stored with a batch axis of 1
  (``batch_broadcast``), which numpy broadcasting expands again;
* anything else -- a batch size merged into another axis (``reshape(B * H, T, Dh)``), a shape
  that depends on a symbolic sample dimension -- is a ModelImportError naming the node that
  reads it: hwsim keeps the batch as axis 0 and the sample shape static.

A model whose batch size is fixed in the file is probed at that size only (its shape vectors
are constants; import reads axis 0 of a Reshape target as the batch, as before). Why not a
simplifier: ``onnxsim`` folds for one fixed input shape (the batch size baked in), and
``onnxslim`` keeps a symbolic batch dimension symbolic (``Shape -> Gather(0)`` stays in the
graph); neither says which entries *are* the batch, which is what a batch-generic IR needs.
onnxruntime, already a dependency, is the evaluator either would use.

**Fusion** (:func:`fuse`). Patterns of elementwise nodes that compute one function of one
tensor become one node of the private domain ``hwsim.fused``, named after the pattern's last
node, with its output: GELU (``0.5 x (1 + erf(x / sqrt 2))`` and the Tanh approximation), SiLU
(``x * sigmoid(x)``), HardSwish (``x * HardSigmoid(x)``); and the decomposed LayerNormalization
older exporters write (``ReduceMean, Sub, Pow 2, ReduceMean, Add eps, Sqrt, Div[, Mul gamma][,
Add beta]``). The elementwise patterns are recognised by what they compute, not how they are
written: the region of single-input elementwise nodes between a tensor ``x`` and an output ``y``
(every intermediate read only inside it, every constant a scalar) is evaluated in float64 on a
grid of ``x`` values and compared with each template (relative 1e-5, absolute 1e-6), so operand
order and the placement of the 0.5 do not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

FUSED_DOMAIN = "hwsim.fused"
"""The domain of the nodes :func:`fuse` writes (never in a file: import-internal)."""

_DEFAULT = ("", "ai.onnx")
_NEVER_FOLD = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "RandomNormal",
    "RandomUniform",
    "RandomNormalLike",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
}
_SHAPE_OPS = ("Shape", "Size")
PROBE_BATCHES = (2, 3)


class FoldError(Exception):
    """A shape subgraph that cannot be folded; ``node`` is the ONNX node that reads it (the
    importer turns it into a ModelImportError naming the file)."""

    def __init__(self, node, msg: str):
        super().__init__(msg)
        self.node = node


@dataclass
class Folded:
    """:func:`fold_shapes`' result."""

    model: onnx.ModelProto
    batch_entries: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """1-D shape constants: the entries that stand for the batch size."""
    batch_broadcast: set[str] = field(default_factory=set)
    """Constants stored with a batch axis of 1 that the model broadcast to the batch."""
    folded_nodes: int = 0


def _consts(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in _DEFAULT:
            names.update(o for o in n.output if o)
    return names


def _static_nodes(graph) -> list[int]:
    """Indices of the nodes computable from constants and shapes only, in graph order."""
    static = _consts(graph)
    out = []
    for i, n in enumerate(graph.node):
        if n.op_type == "Constant" or n.domain not in _DEFAULT or n.op_type in _NEVER_FOLD:
            continue
        ins = [t for t in n.input if t]
        if n.op_type in _SHAPE_OPS or (ins and all(t in static for t in ins)):
            out.append(i)
            static.update(o for o in n.output if o)
    return out


def _dims(vi) -> list:
    return [
        d.dim_value if d.HasField("dim_value") else None
        for d in vi.type.tensor_type.shape.dim
    ]


def _probe_inputs(graph, batch: int, sample: int) -> dict:
    """Zeros for every graph input at this batch size, symbolic sample dimensions = sample."""
    from onnx import helper as oh

    inits = {i.name for i in graph.initializer}
    feeds = {}
    for vi in graph.input:
        if vi.name in inits:
            continue
        dims = _dims(vi)
        shape = [batch if i == 0 else (d if d else sample) for i, d in enumerate(dims)]
        if dims and dims[0]:  # a batch size fixed in the file
            shape[0] = dims[0]
        dt = oh.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = np.zeros(shape, dt)
    return feeds


def _evaluate(model, frontier: list[str], feeds_list: list[dict]) -> list[dict]:
    """The frontier tensors' values at each probe, by onnxruntime on the model pruned to their
    ancestors."""
    from hwsim.runtime import cpu_session

    g = model.graph
    producer = {o: i for i, n in enumerate(g.node) for o in n.output if o}
    need, stack = set(), list(frontier)
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in need:
            continue
        need.add(i)
        stack.extend(t for t in g.node[i].input if t)
    sub = onnx.ModelProto()
    sub.CopyFrom(model)
    del sub.graph.node[:]
    sub.graph.node.extend(n for i, n in enumerate(g.node) if i in need)
    del sub.graph.output[:]
    sub.graph.output.extend(onnx.ValueInfoProto(name=t) for t in frontier)
    del sub.graph.value_info[:]
    sess = cpu_session(sub, optimize=False)
    used = {i.name for i in sess.get_inputs()}
    return [
        dict(
            zip(
                frontier,
                sess.run(frontier, {k: v for k, v in f.items() if k in used}),
                strict=True,
            )
        )
        for f in feeds_list
    ]


def fold_shapes(model: onnx.ModelProto) -> Folded:
    """The model with its static subgraphs folded (module docstring); raises FoldError."""
    g = model.graph
    ids = set(_static_nodes(g))
    if not ids:
        return Folded(model)
    static_out = {o for i in ids for o in g.node[i].output if o}
    readers: dict[str, list] = {}
    for i, n in enumerate(g.node):
        if i in ids:
            continue
        for t in n.input:
            if t in static_out:
                readers.setdefault(t, []).append(n)
    outputs = {o.name for o in g.output}
    frontier = sorted(t for t in static_out if t in readers or t in outputs)
    if not frontier:  # dead static nodes: drop them
        return _rewrite(model, ids, {}, Folded(model, folded_nodes=len(ids)))
    inits = {i.name for i in g.initializer}
    inputs = [vi for vi in g.input if vi.name not in inits]
    dyn_batch = any(_dims(vi)[:1] == [None] for vi in inputs)
    sym_sample = any(None in _dims(vi)[1:] for vi in inputs)
    probes = [(b, 1) for b in (PROBE_BATCHES if dyn_batch else (PROBE_BATCHES[0],))]
    if sym_sample:
        probes.append((PROBE_BATCHES[0], 2))
    try:
        values = _evaluate(model, frontier, [_probe_inputs(g, b, s) for b, s in probes])
    except Exception as e:  # onnxruntime's own error: name the first reader
        first = readers.get(frontier[0], [None])[0]
        if dyn_batch:  # a model that only runs at its export batch size: probe at that one
            try:
                values = _evaluate(model, frontier, [_probe_inputs(g, 1, 1)])
                probes, dyn_batch, sym_sample = [(1, 1)], False, False
            except Exception:
                raise FoldError(
                    first, f"cannot evaluate the model's shape computations: {e}"
                ) from None
        else:
            raise FoldError(first, f"cannot evaluate the model's shape computations: {e}") from None
    res = Folded(model, folded_nodes=len(ids))
    consts: dict[str, np.ndarray] = {}
    for t in frontier:
        reader = readers.get(t, [None])[0]
        vals = [v[t] for v in values]
        base = vals[0]
        if sym_sample:
            other = vals[-1]
            if other.shape != base.shape or not np.array_equal(other, base):
                raise FoldError(
                    reader,
                    f"input {t!r} is computed from the input's symbolic sample dimensions "
                    f"({base.tolist() if base.size < 9 else base.shape} at size 1, "
                    f"{other.tolist() if other.size < 9 else other.shape} at size 2); hwsim "
                    "needs a static sample shape: export with fixed sizes except the batch",
                )
        if not dyn_batch or (
            vals[1].shape == base.shape and np.array_equal(vals[1], base)
        ):
            consts[t] = base
            continue
        b0, b1 = PROBE_BATCHES
        v0, v1 = vals[0], vals[1]
        if v0.ndim == 1 and v0.shape == v1.shape and np.issubdtype(v0.dtype, np.integer):
            diff = np.flatnonzero(v0 != v1)
            if all(v0[i] == b0 and v1[i] == b1 for i in diff):
                res.batch_entries[t] = tuple(int(i) for i in diff)
                v = v0.copy()
                v[diff] = 1
                consts[t] = v
                continue
            i = int(diff[[not (v0[i] == b0 and v1[i] == b1) for i in diff].index(True)])
            raise FoldError(
                reader,
                f"input {t!r} = {v0.tolist()} at batch {b0} and {v1.tolist()} at batch {b1}: "
                f"entry {i} ({v0[i]}, {v1[i]}) merges the batch size with other sizes; hwsim "
                "keeps the batch as its own axis 0 (reshape to (B, T, H, Dh), not (B*H, T, "
                "Dh))",
            )
        if (
            v0.ndim >= 1
            and v0.shape[0] == b0
            and v1.shape == (b1,) + v0.shape[1:]
            and all(np.array_equal(r, v0[0]) for r in v0)
            and all(np.array_equal(r, v0[0]) for r in v1)
        ):
            res.batch_broadcast.add(t)
            consts[t] = v0[:1].copy()
            continue
        raise FoldError(
            reader,
            f"input {t!r}, computed from shapes and constants, depends on the batch size "
            f"(shape {v0.shape} at batch {b0}, {v1.shape} at batch {b1}) in a way hwsim cannot "
            "keep symbolic: the batch must stay axis 0, the same for every sample",
        )
    return _rewrite(model, ids, consts, res)


def _rewrite(model, ids: set, consts: dict, res: Folded) -> Folded:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = [n for i, n in enumerate(g.node) if i not in ids]
    del g.node[:]
    g.node.extend(keep)
    have = {i.name for i in g.initializer}
    for t, v in consts.items():
        if t not in have:
            g.initializer.append(numpy_helper.from_array(np.asarray(v), t))
    res.model = m
    return res


# --- fusion ----------------------------------------------------------------------------------
_EW = {"Add", "Sub", "Mul", "Div", "Pow", "Erf", "Tanh", "Sqrt", "Sigmoid", "HardSigmoid", "Neg",
       "Reciprocal"}
_SEEDS = ("Erf", "Tanh", "Sigmoid", "HardSigmoid")
_GRID = np.concatenate([np.linspace(-8.0, 8.0, 161), [-0.3137, 0.0271, 1.7183, 5.123]])


def _erf(x):
    from scipy.special import erf

    return erf(x)


def _templates(seed) -> list[tuple[str, dict, callable]]:
    """(op type, attributes, f64 function) candidates for a pattern around ``seed``."""
    out = [
        ("Gelu", {"approximate": "none"}, lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2.0)))),
        (
            "Gelu",
            {"approximate": "tanh"},
            lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
        ),
        ("SiLU", {}, lambda x: x / (1 + np.exp(-x))),
    ]
    if seed.op_type == "HardSigmoid":
        a = _attrs(seed)
        alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
        out.append(
            (
                "HardSwish",
                {"alpha": alpha, "beta": beta},
                lambda x: x * np.clip(alpha * x + beta, 0, 1),
            )
        )
    return out


def _attrs(node) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _View:
    """Producer / reader maps and constants of a node list."""

    def __init__(self, graph, nodes):
        self.consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        for n in nodes:
            if n.op_type == "Constant" and n.domain in _DEFAULT:
                a = _attrs(n)
                if "value" in a:
                    self.consts[n.output[0]] = numpy_helper.to_array(a["value"])
        self.producer = {o: n for n in nodes for o in n.output if o}
        self.readers: dict[str, list] = {}
        for n in nodes:
            for t in n.input:
                self.readers.setdefault(t, []).append(n)
        self.outputs = {o.name for o in graph.output}
        self.order = {id(n): i for i, n in enumerate(nodes)}

    def only_reader(self, t: str):
        r = self.readers.get(t, [])
        return r[0] if len(r) == 1 and t not in self.outputs else None

    def scalar(self, t: str):
        c = self.consts.get(t)
        return float(c.reshape(())) if c is not None and c.size == 1 else None


def _ew_eval(node, vals: list, consts: dict):
    """One elementwise node in float64 on the grid, or None (a non-scalar constant)."""
    args = []
    for t, v in zip(node.input, vals, strict=True):
        if v is None:
            c = consts.get(t)
            if c is None or c.size != 1:
                return None
            v = float(c.reshape(()))
        args.append(v)
    op = node.op_type
    with np.errstate(all="ignore"):
        if op == "Add":
            return args[0] + args[1]
        if op == "Sub":
            return args[0] - args[1]
        if op == "Mul":
            return args[0] * args[1]
        if op == "Div":
            return args[0] / args[1]
        if op == "Pow":
            return np.power(args[0], args[1])
        if op == "Erf":
            return _erf(args[0])
        if op == "Tanh":
            return np.tanh(args[0])
        if op == "Sqrt":
            return np.sqrt(args[0])
        if op == "Sigmoid":
            return 1 / (1 + np.exp(-args[0]))
        if op == "Neg":
            return -args[0]
        if op == "Reciprocal":
            return 1 / args[0]
        if op == "HardSigmoid":
            a = _attrs(node)
            return np.clip(float(a.get("alpha", 0.2)) * args[0] + float(a.get("beta", 0.5)), 0, 1)
    return None


def _match_elementwise(view: _View, seed):
    """(x, y, region nodes, op type, attrs) of the smallest template match around ``seed``."""
    # candidate sources: activation tensors up the elementwise nodes above the seed, nearest first
    cands, seen, frontier = [], set(), [seed]
    for _ in range(8):
        nxt = []
        for n in frontier:
            for t in n.input:
                if not t or t in view.consts or t in seen:
                    continue
                seen.add(t)
                cands.append(t)
                p = view.producer.get(t)
                if p is not None and p.op_type in _EW and p.domain in _DEFAULT:
                    nxt.append(p)
        frontier = nxt
    for x in cands:
        # the elementwise nodes computable from x and constants alone, in graph order
        have, region = {x}, []
        queue = sorted(
            {id(r): r for r in view.readers.get(x, [])}.values(), key=lambda n: view.order[id(n)]
        )
        done = set()
        while queue:
            n = queue.pop(0)
            if id(n) in done:
                continue
            if n.op_type not in _EW or n.domain not in _DEFAULT or len(n.output) != 1:
                continue
            if not all(t in have or t in view.consts for t in n.input if t):
                continue
            done.add(id(n))
            region.append(n)
            have.add(n.output[0])
            queue.extend(view.readers.get(n.output[0], []))
            queue.sort(key=lambda n: view.order[id(n)])
        if not any(n is seed for n in region):
            continue
        region.sort(key=lambda n: view.order[id(n)])
        for end in region[region.index(seed):]:
            y = end.output[0]
            # the region's nodes that y depends on
            sub, stack = {id(end): end}, [end]
            while stack:
                for t in stack.pop().input:
                    p = view.producer.get(t)
                    if p is not None and id(p) not in sub and any(p is r for r in region):
                        sub[id(p)] = p
                        stack.append(p)
            nodes = sorted(sub.values(), key=lambda n: view.order[id(n)])
            if not any(n is seed for n in nodes):
                continue
            ids = set(sub)
            inner_ok = all(
                n is end
                or (
                    n.output[0] not in view.outputs
                    and all(id(r) in ids for r in view.readers.get(n.output[0], []))
                )
                for n in nodes
            )
            if not inner_ok:
                continue
            vals = {x: _GRID}
            ok = True
            for n in nodes:
                v = _ew_eval(n, [vals.get(t) for t in n.input], view.consts)
                if v is None:
                    ok = False
                    break
                vals[n.output[0]] = np.broadcast_to(np.asarray(v, np.float64), _GRID.shape)
            if not ok:
                break
            got = vals[y]
            for op, attrs, f in _templates(seed):
                want = f(_GRID)
                if np.allclose(got, want, rtol=1e-5, atol=1e-6):
                    return x, y, nodes, op, attrs
    return None


def _match_layernorm(view: _View, r1):
    """The decomposed LayerNormalization starting at ReduceMean ``r1``, or None."""

    def axes_of(n):
        a = _attrs(n)
        if "axes" in a:
            return tuple(int(v) for v in a["axes"])
        if len(n.input) > 1 and n.input[1] in view.consts:
            return tuple(int(v) for v in view.consts[n.input[1]].reshape(-1))
        return None

    if int(_attrs(r1).get("keepdims", 1)) != 1:
        return None
    axes = axes_of(r1)
    if not axes:
        return None
    x, mean = r1.input[0], r1.output[0]
    sub = view.only_reader(mean)
    if sub is None or sub.op_type != "Sub" or list(sub.input) != [x, mean]:
        return None
    d = sub.output[0]
    rd = list({id(n): n for n in view.readers.get(d, [])}.values())
    if d in view.outputs or len(rd) != 2:
        return None
    sq = next((n for n in rd if n.op_type in ("Pow", "Mul")), None)
    div = next((n for n in rd if n.op_type == "Div"), None)
    if sq is None or div is None or list(div.input)[0] != d:
        return None
    if sq.op_type == "Pow" and (list(sq.input)[0] != d or view.scalar(sq.input[1]) != 2.0):
        return None
    if sq.op_type == "Mul" and list(sq.input) != [d, d]:
        return None
    r2 = view.only_reader(sq.output[0])
    if r2 is None or r2.op_type != "ReduceMean" or axes_of(r2) != axes:
        return None
    if int(_attrs(r2).get("keepdims", 1)) != 1:
        return None
    add = view.only_reader(r2.output[0])
    if add is None or add.op_type != "Add":
        return None
    other = [t for t in add.input if t != r2.output[0]]
    eps = view.scalar(other[0]) if len(other) == 1 else None
    if eps is None:
        return None
    sqrt = view.only_reader(add.output[0])
    if sqrt is None or sqrt.op_type != "Sqrt" or view.only_reader(sqrt.output[0]) is not div:
        return None
    if list(div.input) != [d, sqrt.output[0]]:
        return None
    nodes, y, gamma, beta = [r1, sub, sq, r2, add, sqrt, div], div.output[0], "", ""
    mul = view.only_reader(y)
    if mul is not None and mul.op_type == "Mul":
        c = [t for t in mul.input if t != y]
        if len(c) == 1 and c[0] in view.consts:
            nodes.append(mul)
            y, gamma = mul.output[0], c[0]
    badd = view.only_reader(y)
    if badd is not None and badd.op_type == "Add":
        c = [t for t in badd.input if t != y]
        if len(c) == 1 and c[0] in view.consts:
            nodes.append(badd)
            y, beta = badd.output[0], c[0]
    return x, y, nodes, gamma, beta, axes, eps


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with its GELU / SiLU / HardSwish / LayerNormalization patterns fused (module
    docstring); the model itself is not changed."""
    g = model.graph
    if not any(n.op_type in _SEEDS or n.op_type == "ReduceMean" for n in g.node):
        return model
    nodes = list(g.node)
    replace: dict[int, onnx.NodeProto] = {}  # id of a pattern's last node -> the fused node
    drop: set[int] = set()
    view = _View(g, nodes)
    for n in nodes:
        if n.op_type != "ReduceMean" or id(n) in drop or n.domain not in _DEFAULT:
            continue
        m = _match_layernorm(view, n)
        if m is None:
            continue
        x, y, pat, gamma, beta, axes, eps = m
        last = pat[-1]
        replace[id(last)] = helper.make_node(
            "LayerNormalization",
            [x, gamma, beta],
            [y],
            name=last.name,
            domain=FUSED_DOMAIN,
            axes=list(axes),
            epsilon=eps,
            fused=[p.name for p in pat],
        )
        drop.update(id(p) for p in pat)
    for n in nodes:
        if n.op_type not in _SEEDS or id(n) in drop or n.domain not in _DEFAULT:
            continue
        m = _match_elementwise(view, n)
        if m is None:
            continue
        x, y, pat, op, attrs = m
        if any(id(p) in drop for p in pat):
            continue
        last = pat[-1]
        replace[id(last)] = helper.make_node(
            op, [x], [y], name=last.name, domain=FUSED_DOMAIN, fused=[p.name for p in pat],
            **attrs
        )
        drop.update(id(p) for p in pat)
    if not replace:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.node[:]
    for n in nodes:
        if id(n) in replace:
            m.graph.node.append(replace[id(n)])
        elif id(n) not in drop:
            m.graph.node.append(n)
    return m
