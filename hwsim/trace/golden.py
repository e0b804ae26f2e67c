"""Golden vectors: what the integer executor computed for a few samples, layer by layer.

:func:`record` runs :meth:`IntegerExecutor.run` with ``keep_all=True`` for every tensor, and
recomputes each MAC layer's accumulators with the datapath functions the executor uses for it
(:func:`hwsim.datapath.conv2d` / :func:`hwsim.datapath.gemm` on the layer's operands, accumulator
and exact ISA; the bias of ``IntegerExecutor._mac_bias``; the register of
``IntegerExecutor._requant_register``). Each static layer is then **replayed**: its recorded
accumulators, bias and register through :func:`hwsim.datapath.output_stage` must give the
executor's output bit for bit, or :func:`record` raises -- a trace is provably what the executor
computed. A layer with a per-sample output (``dynamic`` / ``shift`` schemes: the range unit of
docs/numerics.md eq. 17-19) records its accumulators, bias and the tensors' per-sample scales
and shifts, with ``"replayed": false``.

Per MAC layer (manifest ``layers[i]``): ``inputs`` / ``output`` (tensor names, their arrays in
``tensors``), ``weights`` (``(O, I/g, kh, kw)`` or ``(O, K)``), ``bias`` (accumulator units,
``(O,)`` or per sample ``(N, O)``), ``acc`` (the sums before the bias, ``(N, O, ...)``, in the
accumulator's format after its overflow rule), ``register`` (kind, rounding, ``multiplier`` and
``shift`` arrays, ``axis``), ``accumulator`` (bits, overflow, order). The output stage is
``t = overflow(acc + bias)`` in the accumulator, ``y = register(t)``, ``out = saturate(y + zp)``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from hwsim.datapath import conv2d, gemm, output_stage
from hwsim.datapath.isa import Isa
from hwsim.errors import HwsimError
from hwsim.execute.integer import IntegerExecutor
from hwsim.execute.tensors import QTensor
from hwsim.graph.ir import MAC_OPS, Op
from hwsim.numerics import IntFormat, RoundingMode, ScaleKind
from hwsim.trace import shift_acc
from hwsim.trace.external import onnx_names
from hwsim.trace.files import FORMAT, HEX_ORDER, Array, TraceError, entry, sha256, write_dir

REGISTER_SEMANTICS = {
    "tflite": "y = RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(t * 2^max(shift,0), "
    "multiplier), max(-shift,0)); t and multiplier int32, t * 2^s wraps to int32; both roundings "
    "half away from zero (gemmlowp; docs/numerics.md eq. 5-7)",
    "tflite-single": "y = wrap32((t * multiplier + 2^(30-shift)) >> (31-shift)) (one rounding, "
    "ties toward +inf; TFLITE_SINGLE_ROUNDING, docs/numerics.md eq. 7)",
    "ort": "y = round_half_even(f32(f32(t) * multiplier)), multiplier float32 (its IEEE bits in "
    "the hex file), held at +-2^62 (onnxruntime MlasRequantizeOutput, docs/numerics.md eq. 8)",
    "pow2": "y = round(t / 2^shift) by the register's rounding for shift >= 0, t * 2^-shift "
    "for shift < 0, held at +-2^62; multiplier unused (docs/numerics.md eq. 9)",
}
OUTPUT_STAGE = (
    "t = overflow(acc + bias) at the accumulator's bits; y = register(t); "
    "out = saturate(y + output zero_point, output format)"
)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_") or "t"


def _fmt_array(values, fmt: IntFormat) -> Array:
    return Array.integer(values, fmt.bits, fmt.signed, fmt.dtype)


def _tensor_entry(files: dict, stem: str, v, onnx: str | None) -> dict:
    """The manifest entry of one tensor (an integer QTensor, or a float array); ``onnx``: the
    ONNX tensor of the model file holding its integers (:func:`hwsim.trace.external.onnx_names`)."""
    if not isinstance(v, QTensor):
        return dict(entry(files, stem, Array.float_tensor(v)), kind="float32")
    e = entry(files, stem, _fmt_array(v.q, v.fmt))
    e.update(kind="integer", signed=bool(v.fmt.signed), zero_point=int(v.zero_point), onnx=onnx)
    s = np.asarray(v.scale, np.float32)
    if s.ndim == 0:
        e["scale"] = float(s)
    else:
        e["scale"] = entry(files, f"{stem}.scale", Array.float32_bits(s))
    if v.shifts is not None:
        e["base"] = float(np.float32(v.base))
        e["shifts"] = entry(files, f"{stem}.shifts", Array.integer(v.shifts, 8, True, np.int8))
    return e


def _register_entry(files: dict, stem: str, reg, axis) -> dict:
    kind = reg.kind.value
    mult = (
        Array.float32_bits(reg.multiplier)
        if reg.kind is ScaleKind.ORT
        else Array.integer(reg.multiplier, 32, True, np.int32)
    )
    return {
        "kind": kind,
        "rounding": reg.rounding.value if reg.kind is ScaleKind.POW2 else None,
        "axis": "per-tensor" if reg.size == 1 else ("broadcast" if axis is None else axis),
        "multiplier": entry(files, f"{stem}.multiplier", mult),
        "shift": entry(files, f"{stem}.shift", Array.integer(reg.shift, 8, True, np.int8)),
        "semantics": REGISTER_SEMANTICS[kind],
    }


def _sums(ex: IntegerExecutor, node, x: QTensor, acc_cfg):
    """The layer's accumulator values ``(N, O, ...)``, as :meth:`IntegerExecutor._mac` computes
    them on ``ex``'s ISA: exact, or on ``avx2`` the layer's dot product as onnxruntime's AVX2
    kernels compute it where it runs them (``IntegerExecutor._layer_isa``; an int8 input of an
    ``ort`` layer fed as uint8 = int8 + 128 with zero point + 128, as the executor does)."""
    wq = node.wq
    xq, xop, wop, isa = ex._mac_operands(node, x, ex.p.layer(node.name), acc_cfg)
    if node.op is Op.CONV:
        a = node.attrs
        res = conv2d(xq, wq.q, stride=a["strides"], padding=a["pads"], dilation=a["dilations"],
                     groups=a["group"], x_operand=xop, w_operand=wop, acc=acc_cfg,
                     isa=isa)  # fmt: skip
        return res.values
    if node.attrs.get("nd") and xq.ndim > 2:
        v = gemm(xq.reshape(-1, xq.shape[-1]), wq.q.T, x_operand=xop, w_operand=wop, acc=acc_cfg,
                 isa=isa).values  # fmt: skip
        return v.reshape(xq.shape[0], -1, v.shape[-1]).transpose(0, 2, 1)
    return gemm(xq.reshape(xq.shape[0], -1), wq.q.T, x_operand=xop, w_operand=wop, acc=acc_cfg,
                isa=isa).values  # fmt: skip


def _mac_layer(ex: IntegerExecutor, node, x, out, files: dict, stem: str) -> dict:
    """The MAC-specific part of a layer's manifest entry (weights, bias, acc, register),
    replayed against the executor's output ``out``."""
    if not isinstance(x, QTensor) or not isinstance(out, QTensor) or node.wq is None:
        raise TraceError(f"node {node.name!r}: a MAC layer with a float input or output "
                         f"(a float island) has no integer datapath to trace")  # fmt: skip
    if x.per_token or node.attrs.get("ort_dynamic") or "tflite" in node.attrs:
        raise TraceError(f"node {node.name!r}: per-token, dynamic-quantized and TFLite-kernel "
                         f"MAC layers are not traced yet")  # fmt: skip
    layer = ex.p.layer(node.name)
    acc_cfg = replace(layer.acc, track_partials=False)
    spec = ex.p.acts.get(node.output)
    acc = _sums(ex, node, x, acc_cfg)
    n, n_out, tail = acc.shape[0], acc.shape[1], (1,) * (acc.ndim - 2)
    ex._current = node.name  # the executor's bias records its counters under the node
    try:
        bias, _ = ex._mac_bias(node, x, acc_cfg, n, n_out)
    finally:
        ex._current = None
    wq = node.wq
    zw = np.asarray(wq.zero_point)
    e = {
        "weights": dict(
            entry(files, f"{stem}.weights", _fmt_array(wq.q, wq.fmt)),
            signed=bool(wq.fmt.signed),
            zero_point=zw.tolist(),
            scale=np.asarray(wq.scale, np.float32).astype(float).tolist(),
        ),
        "accumulator": {
            "bits": acc_cfg.bits,
            "signed": bool(acc_cfg.signed),
            "overflow": acc_cfg.overflow.value,
            "order": acc_cfg.order.value,
            "tile_rows": acc_cfg.tile_rows,
            "tile_bits": acc_cfg.tile_bits,
        },
        "acc": entry(files, f"{stem}.acc", _fmt_array(acc, acc_cfg.format)),
        "output_stage": OUTPUT_STAGE,
        "replayed": False,
    }
    if bias is not None:
        e["bias"] = entry(files, f"{stem}.bias", _fmt_array(bias, acc_cfg.format))
        if np.ndim(bias) == 2:
            bias = bias.reshape(bias.shape + tail)
    if spec is None:
        return e
    if spec.mode != "static":
        return _range_replay(node, layer, spec, x, acc, bias, acc_cfg, out, e, files, stem)
    sx = np.asarray(x.scale, np.float32)
    sw = np.asarray(wq.scale, np.float32)
    if sx.ndim:
        sx, sw = sx.reshape((-1, 1) + tail), sw.reshape((1, -1) + tail)
    reg = ex._requant_register(layer, sx, sw, np.asarray(np.float32(spec.scale)), record=False)
    axis = None if reg.multiplier.ndim > 1 else 1
    e["register"] = _register_entry(files, f"{stem}.register", reg, axis)
    if reg.rounding is RoundingMode.STOCHASTIC:
        return e  # its draws are not in the trace: not replayed
    got = output_stage(acc, reg, acc=acc_cfg, bias=bias, bias_axis=1, scale_axis=axis,
                       out_format=spec.fmt, out_zero_point=spec.zero_point).values  # fmt: skip
    want = out.q
    if node.op is Op.DENSE and want.ndim > 2:
        want = want.reshape(want.shape[0], -1, want.shape[-1]).transpose(0, 2, 1)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise TraceError(
            f"node {node.name!r}: its accumulators requantized by its register do not give the "
            f"executor's output (the executor ran another path for this layer, e.g. onnxruntime's "
            f"float kernel of an imported model); the layer cannot be traced"
        )
    e["replayed"] = True
    return e


def _range_replay(node, layer, spec, x, acc, bias, acc_cfg, out, e, files, stem) -> dict:
    """Replay a per-sample (``dynamic`` / ``shift``) MAC layer from its trace: ``t =
    overflow(acc + bias)``, the range unit's per-sample maximum ``a_n`` (``|t|``, or ``max(t,
    0)`` for an unsigned output), the register of docs/numerics.md eq. 18 (dynamic:
    ``range_register(a_n)``) or eq. 19 (shift, static base ``b``: ``M_n = u_n / b`` shifted by
    the selected ``s_n``), ``out = sat(R_n(t) + zp)``; must equal the executor's output (and
    its shifts), else a TraceError. Per-channel weight scales that differ are first brought to
    one grid, as the executor does (``IntegerExecutor._align``): ``t_c = R(sw_c / max(sw) *
    2^F)(t_c)``, ``F = 30 - bitlen(2^(bits-1))``, the step ``max(sw) * 2^-F``. Records
    ``range`` (``max``: ``a_n`` (N,), ``register``: per-sample multiplier / shift (N,),
    ``align``: the per-channel register (O,) where there is one). Not replayed (``replayed``
    false, no ``range``): per-token outputs, a runtime shift base on per-sample input scales,
    stochastic rounding. A runtime shift base (eq. 19): ``A = max_n ceil(a_n / 2^sigma_n)``
    (``sigma``: the input's shifts), ``M = R(A)`` (eq. 18), ``base = c / M``, ``M_n = M *
    2^-sigma_n`` (recorded as ``range.runtime_base``)."""
    from hwsim.datapath import add_bias
    from hwsim.execute.integer import _register
    from hwsim.numerics.ranges import range_register, select_shift

    sw = np.asarray(node.wq.scale, np.float32).astype(np.float64)
    runtime = spec.mode == "shift" and spec.base == "runtime"
    if spec.per_token or layer.rounding is RoundingMode.STOCHASTIC:
        return e
    fmt, kind, rnd = spec.fmt, layer.register, layer.rounding
    t, _ = add_bias(acc, bias, acc=acc_cfg, bias_axis=1)
    n = t.shape[0]
    step, align = 1.0, None
    if sw.ndim and sw.size and np.any(sw != sw.max()):
        f = max(0, 30 - (1 << (acc_cfg.bits - 1)).bit_length())
        align = _register(kind, np.ldexp(sw / sw.max(), f), rnd)
        side = (1, -1) + (1,) * (t.ndim - 2)
        al_b = type(align)(align.kind, align.multiplier.reshape(side), align.shift.reshape(side),
                           align.rounding)  # fmt: skip
        t = np.asarray(al_b.apply(t, axis=None), np.int64)
        step = 2.0**-f
    u, c, sigma = x.unit()
    u = np.broadcast_to(np.asarray(u, np.float64) * float(sw.max()) * step, (n,))
    flat = t.reshape(n, -1)
    a = (np.abs(flat) if fmt.signed else np.maximum(flat, 0)).max(axis=1)
    shifts = base = None
    if spec.mode == "dynamic":
        reg = range_register(kind, fmt.max, a, rnd)
    else:
        if runtime:  # eq. 19 with a runtime base: one register for the aligned ranges
            if c is None:
                return e
            c = c * float(sw.max()) * step
            sig = np.zeros(n, np.int64) if sigma is None else np.asarray(sigma, np.int64)
            sig = np.broadcast_to(sig.reshape(-1), (n,))
            aligned = -((-a) >> sig)
            m_t = float(range_register(kind, fmt.max, np.array([aligned.max()]), rnd).real[0])
            reals, base = np.ldexp(m_t, -sig), np.float32(c / m_t)
        else:
            reals = u / np.float64(np.float32(spec.scale))
        shifts = select_shift(kind, reals, a, fmt.max, spec.s_max, rnd)
        reg = _register(kind, np.ldexp(reals, shifts), rnd)
    bshape = (n,) + (1,) * (t.ndim - 1)
    reg_b = type(reg)(reg.kind, reg.multiplier.reshape(bshape), reg.shift.reshape(bshape),
                      reg.rounding)  # fmt: skip
    y = np.asarray(reg_b.apply(t, axis=None), np.int64) + spec.zero_point
    got = np.clip(y, fmt.min, fmt.max)
    want = out.q
    if node.op is Op.DENSE and want.ndim > 2:
        want = want.reshape(want.shape[0], -1, want.shape[-1]).transpose(0, 2, 1)
    same_shifts = shifts is None or (
        out.shifts is not None
        and np.array_equal(np.ravel(out.shifts), shifts)
        and (base is None or np.float32(out.base) == base)
    )
    if got.shape != want.shape or not np.array_equal(got, want) or not same_shifts:
        raise TraceError(
            f"node {node.name!r}: its accumulators through the range unit's per-sample "
            f"registers do not give the executor's output; the layer cannot be traced"
        )
    e["range"] = {
        **({"runtime_base": float(base)} if base is not None else {}),
        "max": entry(files, f"{stem}.range_max", Array.integer(a, acc_cfg.bits, True, np.int64)),
        "register": _register_entry(files, f"{stem}.range_register", reg, 0),
        **(
            {"align": _register_entry(files, f"{stem}.range_align", align, 1)}
            if align is not None
            else {}
        ),
        "semantics": "a_n = max |t| (max(t, 0) for an unsigned output) per sample; dynamic: "
        "register_n = eq. 18 of a_n; shift: register_n = R(u_n / base * 2^s_n), s_n the "
        "output's shifts (eq. 19); out = saturate(register_n(t) + zero_point)",
    }
    e["replayed"] = True
    return e


def _avx2_layer(ex: IntegerExecutor, i: int, node, env: dict, files: dict, stem: str):
    """The layer recomputed by the AVX2 executor ``ex`` (onnxruntime on x86 without VNNI,
    eq. 16: int16 pair saturation) from the exact run's inputs in ``env``: None when the
    layer's dot product is exact on that ISA too (not uint8 x int8, depthwise, a layer
    onnxruntime runs in float, another accumulator), else ``pair_saturations`` /
    ``outputs_pair_saturated`` and, where its output differs from the exact one, ``output``
    (the file of the AVX2 output) -- what ``hwsim diff`` checks an external value against."""
    acc = ex.p.layer(node.name).acc
    if acc.tile_bits is not None:
        return None  # a narrower in-array tile register: hardware onnxruntime does not have
    ins = [env[t] for t in node.inputs]
    n = int(np.shape(ins[0].q if isinstance(ins[0], QTensor) else ins[0])[0])
    ex._rng = ex._node_rngs(i, node, 0, n)
    ex._current, ex._node_now, ex._ins_now = node.name, node, ins
    try:
        out = ex._node(node, ins)
    except HwsimError as e:
        return {"error": str(e)}
    finally:
        ex._rng = ex._current = ex._node_now = None
        ex._ins_now = []
    if node.name not in ex.isa_layers:
        return None
    c = ex.stats[node.name].counters
    e = {"pair_saturations": int(c.pair_saturations),
         "outputs_pair_saturated": int(c.outputs_pair_saturated)}  # fmt: skip
    exact = env[node.output]
    if not np.array_equal(out.q, exact.q):
        e["output"] = entry(files, f"{stem}.avx2_output", _fmt_array(out.q, out.fmt))
    return e


def record(
    program, x: np.ndarray, layers=None, meta: dict | None = None, onnx_model=None, isa="exact"
):
    """The trace of ``program`` on the float32 batch ``x`` (the samples, ``(N, ...)``):
    ``(manifest, files)`` with ``files`` name -> bytes, ready for :func:`write`.

    ``layers``: node names to include (default: all; an unknown name is a TraceError listing
    the known ones). ``meta``: extra manifest fields (model, data, indices). ``onnx_model``: the
    quantized file's ``onnx.ModelProto`` (None: a float model quantized by hwsim), which names
    each integer tensor's ONNX tensor (``tensors[t]["onnx"]``, for ``hwsim diff`` against
    external dumps). ``isa``: ``exact`` (the accelerator's integer arithmetic; each MAC layer
    also gets its ``avx2`` recomputation) or ``avx2`` (every layer as onnxruntime's AVX2
    kernels compute it, eq. 16: the accumulators are the pair-saturated sums where onnxruntime
    runs the layer, the manifest says ``isa``, and ``avx2`` holds the layer's own
    ``pair_saturations`` / ``outputs_pair_saturated``, or null where the layer is exact).
    """
    g = program.graph
    names = [n.name for n in g.nodes]
    if layers:
        unknown = [name for name in layers if name not in names]
        if unknown:
            raise TraceError(f"unknown layer(s) {unknown}; the model's layers: {names}")
    ex = IntegerExecutor(program, isa=isa)
    ex_avx2 = IntegerExecutor(program, isa=Isa.AVX2) if ex.isa is Isa.EXACT else None
    env = ex.run(np.asarray(x, np.float32), keep_all=True)
    names = onnx_names(onnx_model, [t for t, v in env.items() if isinstance(v, QTensor)])
    files: dict[str, bytes] = {}
    tensors: dict[str, dict] = {}
    out_layers = []
    for i, node in enumerate(g.nodes):
        if layers and node.name not in layers:
            continue
        for t in (*node.inputs, node.output):
            if t not in tensors:
                tensors[t] = _tensor_entry(files, f"t_{_safe(t)}", env[t], names.get(t))
        e = {"index": i, "name": node.name, "op": node.op.value, "inputs": list(node.inputs),
             "output": node.output}  # fmt: skip
        if node.op in MAC_OPS:
            stem = f"L{i:03d}_{_safe(node.name)}"
            ex._rng = ex._node_rngs(i, node, 0, len(x))  # stochastic draws, as in the run
            try:
                e.update(_mac_layer(ex, node, env[node.inputs[0]], env[node.output], files, stem))
            finally:
                ex._rng = None
            if ex_avx2 is not None:
                e["avx2"] = _avx2_layer(ex_avx2, i, node, env, files, stem)
            elif node.name in ex.isa_layers:  # this trace is the avx2 computation
                c = ex.stats[node.name].counters
                e["avx2"] = {"pair_saturations": int(c.pair_saturations),
                             "outputs_pair_saturated": int(c.outputs_pair_saturated)}  # fmt: skip
            else:
                e["avx2"] = None
        elif node.op is Op.MATMUL and shift_acc.applies(node, [env[t] for t in node.inputs]):
            stem = f"L{i:03d}_{_safe(node.name)}"
            ins = [env[t] for t in node.inputs]
            e["shift_acc"] = shift_acc.record(ex, node, ins, files, stem)
        out_layers.append(e)
    manifest = {
        "format": FORMAT,
        **(meta or {}),
        **({"isa": ex.isa.value} if ex.isa is not Isa.EXACT else {}),
        "scheme": program.describe().get("scheme"),
        "input": g.input,
        "output": g.output,
        "hex_order": HEX_ORDER,
        "layers": out_layers,
        "tensors": tensors,
    }
    return manifest, files


def write(out, manifest: dict, files: dict) -> Path:
    """Write a recorded trace to the directory ``out`` (atomically, :func:`files.write_dir`)."""
    return write_dir(out, manifest, files)


def sample_indices(specs, n: int) -> list[int]:
    """``--index`` values (``I`` or a range ``A:B``, end exclusive) as sorted unique indices,
    each in ``[0, n)``; a TraceError naming the bad one otherwise."""
    out: set[int] = set()
    for s in specs or ("0",):
        s = str(s)
        try:
            if ":" in s:
                a, b = (int(v) for v in s.split(":"))
                idx = range(a, b)
            else:
                idx = range(int(s), int(s) + 1)
        except ValueError:
            raise TraceError(f"--index {s!r}: give an integer I or a range A:B") from None
        if not idx or idx.start < 0 or idx.stop > n:
            raise TraceError(f"--index {s!r}: the data set has samples 0..{n - 1}")
        out.update(idx)
    return sorted(out)


def trace(
    program,
    data,
    indices=None,
    out=None,
    layers=None,
    meta: dict | None = None,
    onnx_model=None,
    isa="exact",
):
    """Record ``program`` on the samples ``indices`` (:func:`sample_indices` specs; default
    sample 0) of ``data`` (a :class:`hwsim.data.Dataset` or what :func:`hwsim.data.load_data`
    takes) and write the trace to ``out`` if given; ``isa`` as in :func:`record`. Returns the
    manifest."""
    from hwsim.data import Dataset, conform, load_data

    ds = (
        conform(data, program.graph.input_shape)
        if isinstance(data, Dataset)
        else load_data(data, program.graph.input_shape)
    )
    idx = sample_indices(indices, len(ds.x))
    info = {"data": ds.name, "indices": idx, **(meta or {})}
    manifest, files = record(program, ds.x[idx], layers, info, onnx_model, isa)
    if out is not None:
        write(out, manifest, files)
    return dict(manifest, files={name: sha256(data) for name, data in sorted(files.items())})
