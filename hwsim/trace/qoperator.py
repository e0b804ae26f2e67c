"""Traces of QOperator models (QLinearConv, QGemm, QLinearAdd, ... as onnxruntime's quantizer
writes them): the integer tensors of the node interpreter
(:func:`hwsim.execute.run_qoperator_batch`), named by their ONNX names.

A QOperator file holds its integer tensors under their own names, so each traced tensor's
``onnx`` is the tensor itself. Per node with an integer output (``layers[i]``): ``index`` (its
position in the file), ``name``, ``op`` (the ONNX op type), ``inputs`` (its integer activation
inputs), ``output``. No accumulators or registers (the op contracts of :mod:`hwsim.qops` compute
them inside one call): a layer has no ``acc`` and is not replayed. A node that takes an
instruction set (QLinearConv, QLinearMatMul, QGemm, ConvInteger, MatMulInteger) is recomputed on
the exact run's inputs with ``isa="avx2"`` (eq. 16): its ``avx2`` entry gives the pair
saturations and, where its output differs from the exact one, the AVX2 output -- what
``hwsim diff`` checks an external value against.

Integer activation tensors: an integer array other than int64 (shape arithmetic) with the
batch on axis 0, produced by a node (initializers and constants are weights, not traced).
"""

from __future__ import annotations

import numpy as np
from onnx import helper as oh

from hwsim import qops
from hwsim.execute.qoperator import run_qoperator_batch
from hwsim.trace.files import FORMAT, HEX_ORDER, Array, entry, sha256
from hwsim.trace.golden import _safe, write

ISA_OPS = {"QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger"}
"""The quantized ops whose dot product depends on the instruction set (eq. 16)."""


def _integer(v, n: int) -> bool:
    a = np.asarray(v) if isinstance(v, np.ndarray) else None
    return (
        a is not None
        and np.issubdtype(a.dtype, np.integer)
        and a.dtype != np.int64
        and a.ndim >= 1
        and a.shape[0] == n
    )


def _tensor(files: dict, name: str, v: np.ndarray) -> dict:
    signed = bool(np.issubdtype(v.dtype, np.signedinteger))
    e = entry(files, f"t_{_safe(name)}", Array.integer(v, v.dtype.itemsize * 8, signed))
    e.update(kind="integer", signed=signed, onnx=name)
    return e


def record_qoperator(model, x: np.ndarray, source: str, meta: dict | None = None):
    """The trace of the QOperator model ``model`` (``onnx.ModelProto`` read from ``source``)
    on the batch ``x`` (in the input's dtype): ``(manifest, files)`` as
    :func:`hwsim.trace.golden.record` returns them."""
    env: dict = {}
    run_qoperator_batch(model, x, source, "exact", keep=env)
    n = int(np.shape(x)[0])
    fixed = {i.name for i in model.graph.initializer}
    fixed |= {o for node in model.graph.node if node.op_type == "Constant" for o in node.output}
    files: dict[str, bytes] = {}
    tensors: dict[str, dict] = {}
    layers = []
    supported = {op for _, op in qops.SUPPORTED}
    for i, node in enumerate(model.graph.node):
        outs = [o for o in node.output if o and o not in fixed and _integer(env.get(o), n)]
        if not outs:
            continue
        ins = [t for t in node.input if t and t not in fixed and _integer(env.get(t), n)]
        for t in (*ins, outs[0]):
            if t not in tensors:
                tensors[t] = _tensor(files, t, np.asarray(env[t]))
        name = node.name or outs[0]
        e = {"index": i, "name": name, "op": node.op_type, "inputs": ins, "output": outs[0]}
        if node.op_type in ISA_OPS and node.op_type in supported:
            e["avx2"] = _avx2(node, env, files, f"L{i:03d}_{_safe(name)}")
        layers.append(e)
    inputs = [i.name for i in model.graph.input if i.name not in fixed]
    manifest = {
        "format": FORMAT,
        **(meta or {}),
        "scheme": {"name": "qoperator"},
        "input": inputs[0] if inputs else None,
        "output": model.graph.output[0].name,
        "hex_order": HEX_ORDER,
        "layers": layers,
        "tensors": tensors,
    }
    return manifest, files


def _avx2(node, env: dict, files: dict, stem: str) -> dict:
    a = {at.name: oh.get_attribute_value(at) for at in node.attribute}
    ins = [env[t] if t else None for t in node.input]
    with qops.collect_counters() as sink:
        out = np.asarray(qops.run_node(node.op_type, node.domain, a, ins, isa="avx2")[0])
    e = {
        "pair_saturations": int(sum(c.pair_saturations for c in sink)),
        "outputs_pair_saturated": int(sum(c.outputs_pair_saturated for c in sink)),
    }
    exact = np.asarray(env[node.output[0]])
    if not np.array_equal(out, exact):
        signed = bool(np.issubdtype(out.dtype, np.signedinteger))
        e["output"] = entry(
            files, f"{stem}.avx2_output", Array.integer(out, out.dtype.itemsize * 8, signed)
        )
    return e


def trace_qoperator(model, source: str, data, indices=None, out=None, meta: dict | None = None):
    """Record the QOperator ``model`` (read from ``source``) on the samples ``indices``
    (``hwsim trace --index`` specs; default sample 0) of ``data`` and write the trace to
    ``out`` if given. Returns the manifest."""
    from hwsim.trace.external import model_samples

    ds, idx = model_samples(model, data, [str(i) for i in indices or ()])
    info = {**(meta or {}), "data": ds.name, "indices": idx, "model_quantized": True}
    manifest, files = record_qoperator(model, ds.x[idx], source, info)
    if out is not None:
        write(out, manifest, files)
    return dict(manifest, files={name: sha256(b) for name, b in sorted(files.items())})
