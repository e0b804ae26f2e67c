"""Float graph + scheme (+ calibration data) -> :class:`QuantProgram`.

Which tensors are quantized: the graph input (unless it is integer: token ids), every MAC
layer's output, and the outputs of add, pooling-average, concat and mul -- and of the
transformer ops (matmul of two activations, layernorm, gelu, sigmoid, silu, hardsigmoid,
hardswish, mul_act, add_const, div_const, reduce_mean, embedding, and a softmax that is not the
model's output), which the integer executor runs as float islands between a DequantizeLinear
and a QuantizeLinear. A ReLU/Clip that alone consumes a layer's output is fused: the layer's
output tensor takes the activation's quantization (calibrated after the activation, so its range
starts at 0 and the requantizing clamp *is* the ReLU), exactly as onnxruntime's QDQ quantizer
removes such activations. Max pool, flatten, reshape, identity, transpose, gather, slice and
resize keep their input's quantization. The model's last tensor before a final Softmax is
quantized; that Softmax runs in float.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from hwsim.data import Dataset
from hwsim.graph.ir import MAC_OPS, Graph, Op, WeightQuant
from hwsim.graph.shapes import infer_shapes
from hwsim.numerics import IntFormat, as_kind, as_mode
from hwsim.numerics.affine import symmetric_grid
from hwsim.quant.scheme import (
    TOKEN_MODES,
    ActSpec,
    LayerScheme,
    LayerSpec,
    QuantProgram,
    Scheme,
    SchemeError,
)

PASS_THROUGH = (
    Op.MAXPOOL,
    Op.FLATTEN,
    Op.RESHAPE,
    Op.IDENTITY,
    Op.RELU,
    Op.CLIP,
    Op.TRANSPOSE,
    Op.GATHER,
    Op.SLICE,
    Op.RESIZE,
)
ISLANDS = (
    Op.MATMUL,
    Op.LAYERNORM,
    Op.GELU,
    Op.SIGMOID,
    Op.SILU,
    Op.HARDSIGMOID,
    Op.HARDSWISH,
    Op.MUL_ACT,
    Op.ADD_CONST,
    Op.DIV_CONST,
    Op.REDUCE_MEAN,
    Op.EMBEDDING,
)
"""Transformer / modern-CNN ops whose output is quantized (requantized by the op): the
products of two activations run on the integer datapath, the others as float islands
(:data:`hwsim.execute.integer.INTEGER_OPS`); data-free ranges by interval arithmetic."""
REQUANT = (Op.CONV, Op.DENSE, Op.ADD, Op.GAP, Op.AVGPOOL, Op.CONCAT, Op.MUL) + ISLANDS


def _requantized(graph: Graph, n) -> bool:
    """``n``'s output gets its own quantization: a REQUANT op, or a Softmax inside the model
    (attention probabilities; a final Softmax stays float)."""
    return n.op in REQUANT or (n.op is Op.SOFTMAX and n.output != graph.output)


# --- weights ---------------------------------------------------------------------------------
def quantize_weights(w: np.ndarray, ls: LayerScheme) -> WeightQuant:
    """Quantize a float weight (output channels on axis 0) by the layer's weight mode."""
    b = ls.wbits
    per_ch = ls.granularity == "channel"
    flat = (
        w.reshape(w.shape[0], -1).astype(np.float64)
        if per_ch
        else w.reshape(1, -1).astype(np.float64)
    )
    if ls.weight_mode == "asymmetric":
        fmt = IntFormat(b, signed=False)
        lo = np.minimum(flat.min(axis=1), 0.0)
        hi = np.maximum(flat.max(axis=1), 0.0)
        scale = ((hi - lo) / (2**b - 1)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        zp = np.clip(np.rint(-lo / scale.astype(np.float64)), 0, 2**b - 1).astype(np.int64)
    else:
        fmt = IntFormat(b, signed=True)
        r = np.abs(flat).max(axis=1)
        if ls.weight_mode == "symmetric":
            scale = symmetric_grid(r, b)[0].astype(np.float32)
        else:
            scale = (2 * r / (2**b - 1)).astype(np.float32)
        scale = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
        zp = np.zeros(scale.shape, np.int64)
    if ls.register == "pow2":
        scale = _pow2_ceil(scale)
    lo_q = -(2 ** (b - 1) - 1) if ls.weight_mode == "symmetric" else fmt.min
    shape = (-1,) + (1,) * (w.ndim - 1)
    s_b = scale.reshape(shape) if per_ch else scale.reshape(())
    z_b = zp.reshape(shape) if per_ch else zp.reshape(())
    q = np.rint(w.astype(np.float32) / s_b).astype(np.int64) + z_b
    q = np.clip(q, lo_q, fmt.max).astype(np.int64)
    if per_ch:
        return WeightQuant(q, scale, zp, fmt)
    return WeightQuant(q, scale.reshape(()), zp.reshape(()), fmt)


def _pow2_ceil(scale):
    """The next power of two >= scale (a ``pow2`` register is exact only between such scales)."""
    s = np.asarray(scale, np.float64)
    return np.exp2(np.ceil(np.log2(s))).astype(np.float32)


def _layer_weights(n, ls: LayerScheme) -> WeightQuant:
    """A layer's integer weights; with ``bn_fold="register"`` the folded BatchNorm factor goes
    into the (per-channel) scale instead of the weights (scheme.py docstring)."""
    if ls.bn_fold != "register" or "bn_k" not in n.attrs:
        return quantize_weights(n.weight, ls)
    if ls.weight_mode == "asymmetric":
        raise SchemeError(f"layer {n.name!r}: bn_fold=register needs symmetric weights")
    k = n.attrs["bn_k"].astype(np.float64)
    wq = quantize_weights(n.attrs["weight_unfolded"], ls)
    sign = np.where(k < 0, -1, 1).astype(np.int64)
    q = wq.q * sign.reshape((-1,) + (1,) * (wq.q.ndim - 1))
    if ls.weight_mode == "symmetric-full":  # -2^(b-1) has no positive twin
        q = np.clip(q, wq.fmt.min, wq.fmt.max)
    scale = (np.broadcast_to(np.asarray(wq.scale, np.float64), k.shape) * np.abs(k)).astype(
        np.float32
    )
    scale = np.where(scale > 0, scale, np.float32(1e-30)).astype(np.float32)
    return WeightQuant(q, scale, np.zeros(k.shape, np.int64), wq.fmt)


# --- activation ranges -------------------------------------------------------------------------
def fused_targets(graph: Graph) -> dict[str, str]:
    """Map a MAC/Add output tensor to the ReLU/Clip output whose quantization it takes."""
    cons = graph.consumers()
    out = {}
    for n in graph.nodes:
        if n.op in REQUANT:
            c = cons.get(n.output, [])
            if len(c) == 1 and c[0].op in (Op.RELU, Op.CLIP) and n.output != graph.output:
                out[n.output] = c[0].output
    return out


class RangeCollector:
    """Per-tensor running min/max and a bounded sample of values for percentile clipping."""

    def __init__(self, names, max_samples: int = 1 << 20):
        self.lo = {t: np.inf for t in names}
        self.hi = {t: -np.inf for t in names}
        self.samples: dict[str, list] = {t: [] for t in names}
        self.count = {t: 0 for t in names}
        self.sample_max: dict[str, list] = {t: [] for t in names}
        self.max_samples = max_samples

    def update(self, env: dict):
        for t in self.lo:
            v = env[t]
            self.lo[t] = min(self.lo[t], float(v.min()))
            self.hi[t] = max(self.hi[t], float(v.max()))
            self.sample_max[t].append(np.abs(v.reshape(v.shape[0], -1)).max(axis=1))
            flat = v.reshape(-1)
            room = self.max_samples - self.count[t]
            if room > 0:
                step = max(1, flat.size // room) if flat.size > room else 1
                part = flat[::step][:room]
                self.samples[t].append(part.astype(np.float32))
                self.count[t] += part.size

    def range(self, t: str, ls: LayerScheme) -> tuple[float, float]:
        """The calibrated range: min/max, or percentile-clipped; for ``shift`` tensors the
        base (coarsest) range ``max(2^s_max * median per-sample max|x|, max|x|)`` (signed as the
        data): the largest sample fits at shift 0 and the typical one at the finest shift. A
        ``token-shift`` tensor uses the same per-sample median (a token's maximum is at most
        its sample's, so typical tokens sit at or below the finest shift's range: the base is
        the coarser of the two choices, never clipping more)."""
        lo, hi = self.lo[t], self.hi[t]
        if ls.act_mode in ("shift", "token-shift"):
            med = float(np.median(np.concatenate(self.sample_max[t])))
            r = max(med * 2.0**ls.s_max, max(-lo, hi))
            return (-r if lo < 0 else 0.0), r
        if ls.calib_method == "percentile":
            v = np.concatenate(self.samples[t])
            p = ls.percentile
            neg, pos = v[v < 0], v[v > 0]
            lo = -float(np.percentile(-neg, p)) if neg.size else 0.0
            hi = float(np.percentile(pos, p)) if pos.size else 0.0
        return lo, hi


def datafree_ranges(graph: Graph, ls_of, input_range) -> dict[str, tuple[float, float]]:
    """Ranges without data: BN-derived after a folded BN (+ReLU), interval arithmetic elsewhere."""
    if input_range is None:
        raise SchemeError(
            "data-free quantization needs the input range (the data set's "
            "input_range, or --input-range LO,HI)"
        )
    rng: dict[str, tuple[float, float]] = {graph.input: tuple(map(float, input_range))}
    cons = graph.consumers()
    shapes = None
    for n in graph.nodes:
        lo, hi = rng[n.inputs[0]]
        if n.op in ISLANDS or n.op is Op.SOFTMAX:
            if n.op is Op.MATMUL and shapes is None:
                shapes = infer_shapes(graph)
            rng[n.output] = _island_range(n, (lo, hi), [rng[t] for t in n.inputs], shapes)
            continue
        if n.op in MAC_OPS:
            if "bn_gamma" in n.attrs:
                ls = ls_of(n)
                g, b = n.attrs["bn_gamma"].astype(np.float64), n.attrs["bn_beta"].astype(np.float64)
                k = ls.bn_sigmas
                readers = cons.get(n.output, [])
                if (
                    ls.data_free_range == "official"
                    and len(readers) == 1
                    and readers[0].op is Op.RELU
                ):
                    # PSG-pytorch quant_utils.save_bn_param (BN -> ReLU only): x_min = 0,
                    # x_max = max(beta + n * gamma) with gamma signed
                    r = (0.0, max(float(np.max(b + k * g)), 0.0))
                else:  # a +-n sigma bound of every channel, whatever gamma's sign
                    r = (float(np.min(b - k * np.abs(g))), float(np.max(b + k * np.abs(g))))
            else:
                w = n.weight.reshape(n.weight.shape[0], -1).astype(np.float64)
                bias = n.bias.astype(np.float64) if n.bias is not None else 0.0
                r_lo = np.minimum(w * lo, w * hi).sum(axis=1) + bias
                r_hi = np.maximum(w * lo, w * hi).sum(axis=1) + bias
                r = (float(r_lo.min()), float(r_hi.max()))
        elif n.op is Op.ADD:
            l2, h2 = rng[n.inputs[1]]
            r = (lo + l2, hi + h2)
        elif n.op is Op.CONCAT:
            rs = [rng[t] for t in n.inputs]
            r = (min(x[0] for x in rs), max(x[1] for x in rs))
        elif n.op is Op.MUL:
            c = n.weight.astype(np.float64)
            cand = np.concatenate([np.ravel(c * lo), np.ravel(c * hi)])
            r = (float(cand.min()), float(cand.max()))
        elif n.op is Op.RELU:
            r = (max(lo, 0.0), max(hi, 0.0))
        elif n.op is Op.CLIP:
            r = (max(lo, n.attrs["min"]), min(hi, n.attrs["max"]))
        else:
            r = (lo, hi)
        rng[n.output] = r
    return rng


def _island_range(n, r, ins, shapes) -> tuple[float, float]:
    """Interval bounds of a float-island op's output from its inputs' (data-free ranges)."""
    lo, hi = r
    if n.op in (Op.SIGMOID, Op.HARDSIGMOID, Op.SOFTMAX):
        return 0.0, 1.0
    if n.op is Op.GELU:  # min of x Phi(x) is about -0.17
        return min(lo, -0.17) if lo < 0 else 0.0, max(hi, 0.0)
    if n.op is Op.SILU:  # min of x sigmoid(x) is about -0.2785
        return min(lo, -0.2785) if lo < 0 else 0.0, max(hi, 0.0)
    if n.op is Op.HARDSWISH:  # min of x relu6(x + 3) / 6 is -0.375
        return min(lo, -0.375) if lo < 0 else 0.0, max(hi, 0.0)
    if n.op in (Op.ADD_CONST, Op.DIV_CONST):
        c = np.asarray(n.weight, np.float64)
        if n.op is Op.ADD_CONST:
            return lo + float(c.min()), hi + float(c.max())
        c = 1.0 / c
        cand = np.concatenate([np.ravel(c * lo), np.ravel(c * hi)])
        return float(cand.min()), float(cand.max())
    if n.op in (Op.MUL_ACT, Op.MATMUL):
        (l1, h1), (l2, h2) = ins
        p = [l1 * l2, l1 * h2, h1 * l2, h1 * h2]
        k = shapes[n.inputs[0]][-1] if n.op is Op.MATMUL else 1
        return k * min(p), k * max(p)
    if n.op is Op.EMBEDDING:
        return float(n.weight.min()), float(n.weight.max())
    if n.op is Op.LAYERNORM:  # |x - mean| / std <= sqrt(D - 1) over D values
        d = int(np.prod(n.weight.shape)) if n.weight is not None else 1
        g = np.abs(n.weight).max() if n.weight is not None else 1.0
        b = n.bias if n.bias is not None else np.zeros(1)
        r = float(g) * np.sqrt(max(d - 1, 1))
        return float(b.min()) - r, float(b.max()) + r
    return lo, hi  # reduce_mean


def act_spec(
    lo: float,
    hi: float,
    bits: int,
    mode: str,
    s_max: int,
    pow2: bool = False,
    base: str = "static",
) -> ActSpec:
    """ActSpec for a range: unsigned ``[0, hi]`` if ``lo >= 0``, else signed symmetric
    ``[-r, r]``; zero point 0 in every mode. With ``pow2`` registers every scale is rounded up
    to a power of two, so that each requantization is an exact shift. ``base``: a ``shift``
    tensor's base, ``static`` (from the range) or ``runtime``."""
    spec = _act_spec(lo, hi, bits, mode, s_max)
    if mode == "shift":
        spec = ActSpec(spec.mode, spec.fmt, spec.scale, 0, spec.s_max, False, base)
    if pow2:
        spec = ActSpec(
            spec.mode, spec.fmt, float(_pow2_ceil(spec.scale)), 0, spec.s_max, True, spec.base
        )
    return spec


def _act_spec(lo: float, hi: float, bits: int, mode: str, s_max: int) -> ActSpec:
    signed = lo < 0
    fmt = IntFormat(bits, signed)
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if mode in ("static", "data-free"):
        if signed:
            # symmetric signed (zero point 0) keeps the integer add/requant simple and matches
            # the symmetric int8 activations of TFLite
            r = max(-lo, hi)
            scale = r / fmt.max if r > 0 else 1.0
            return ActSpec("static", fmt, float(np.float32(scale)), 0, 0)
        scale = (hi - lo) / (2**bits - 1) if hi > lo else 1.0
        return ActSpec("static", fmt, float(np.float32(scale)), 0, 0)
    if mode == "dynamic":
        return ActSpec("dynamic", fmt, 1.0, 0, 0)
    r = max(-lo, hi)
    scale = r / fmt.max if r > 0 else 1.0
    return ActSpec("shift", fmt, float(np.float32(scale)), 0, s_max)


def quantize(
    graph: Graph,
    scheme: Scheme,
    calib: Dataset | None = None,
    batch_size: int = 256,
    input_range=None,
    progress=None,
    *,
    float_run: Callable[[Graph, np.ndarray], dict] | None = None,
) -> QuantProgram:
    """A new program: ``graph`` (never changed) quantized with ``scheme``. ``calib`` is needed
    for ``static`` and ``shift`` activations with a static base, and with it ``float_run``,
    the float executor that calibrates (``float_run(graph, x) -> {tensor: array}``, e.g.
    :func:`hwsim.execute.run_float`: quantization sits below the executors and is handed one)."""
    if graph.quantized:
        raise SchemeError(f"{graph.source}: the model is already quantized; run it directly")
    graph = graph.copy()  # the program's graph: ``graph`` itself is never changed
    macs = [n for n in graph.nodes if n.op in MAC_OPS]
    if not macs:
        raise SchemeError(f"{graph.source}: no Conv/Gemm/MatMul layer to quantize")
    layer_scheme = {n.name: scheme.for_layer(n.name, i, len(macs)) for i, n in enumerate(macs)}
    default = scheme.default
    for name in scheme.overrides:
        if name not in {n.name for n in graph.nodes}:
            raise SchemeError(
                f"override for unknown layer {name!r}; layers: {', '.join(n.name for n in macs)}"
            )

    producer = graph.producer()

    def ls_of_tensor(t: str) -> LayerScheme:
        n = producer.get(t)
        while n is not None and n.op not in MAC_OPS and not _requantized(graph, n):
            n = producer.get(n.inputs[0])
        if n is None:  # graph input: the first layer's scheme
            first = layer_scheme[macs[0].name]
            if scheme.first_last_bits is not None:
                first = first.replace(abits=scheme.first_last_bits)
            return first
        if n.op in MAC_OPS:
            return layer_scheme[n.name]
        return (
            default
            if n.name not in scheme.overrides
            else default.replace(**scheme.overrides[n.name])
        )

    fused = fused_targets(graph)
    float_input = np.issubdtype(np.dtype(graph.input_dtype), np.floating)
    owners = [graph.input] if float_input else []  # token ids stay integers
    owners += [n.output for n in graph.nodes if _requantized(graph, n)]
    # the tensor whose values calibrate each owner (the fused activation's output, if any)
    calib_of = {t: fused.get(t, t) for t in owners}
    # a per-token scheme uses the dynamic / shift range units, per row (ActSpec.per_token)
    per_token = {t for t in owners if ls_of_tensor(t).act_mode in TOKEN_MODES}
    modes = {t: TOKEN_MODES.get(ls_of_tensor(t).act_mode, ls_of_tensor(t).act_mode) for t in owners}

    runtime = {t for t in owners if modes[t] == "shift" and ls_of_tensor(t).shift_base == "runtime"}
    ranges: dict[str, tuple[float, float]] = {}
    need_data = {t for t in owners if modes[t] in ("static", "shift") and t not in runtime}
    if need_data:
        if calib is None:
            raise SchemeError(
                f"scheme {scheme.name!r} ({default.act_mode} activations) needs "
                "calibration data (--calib DATA)"
            )
        if float_run is None:
            raise TypeError(
                "quantize: calibration needs the float executor, float_run=hwsim.execute.run_float"
            )
        col = RangeCollector(sorted({calib_of[t] for t in need_data}))
        for _, xb in calib.batches(batch_size):
            col.update(float_run(graph, xb))
            if progress:
                progress(len(xb))
        for t in need_data:
            ranges[t] = col.range(calib_of[t], ls_of_tensor(t))
    if any(m == "data-free" for m in modes.values()):
        df = datafree_ranges(
            graph,
            lambda n: layer_scheme[n.name],
            input_range
            if input_range is not None
            else (calib.input_range if calib is not None else None),
        )
        for t in owners:
            if modes[t] == "data-free":
                ranges[t] = df[calib_of[t]]
    if any(m == "dynamic" for m in modes.values()) or runtime:
        # only the sign matters: non-negative after ReLU or for the (known) input range
        df_sign = _signs(graph, fused, input_range or (calib.input_range if calib else None))
        for t in owners:
            if modes[t] == "dynamic" or t in runtime:
                ranges[t] = (0.0, 1.0) if df_sign[t] else (-1.0, 1.0)

    acts: dict[str, ActSpec] = {}
    for t in owners:
        ls = ls_of_tensor(t)
        lo, hi = ranges[t]
        acts[t] = act_spec(
            lo, hi, ls.abits, modes[t], ls.s_max, ls.register == "pow2", ls.shift_base
        )
        if t in per_token:
            acts[t] = dataclasses.replace(acts[t], per_token=True)
        if t in fused:
            acts[fused[t]] = acts[t]
    # pass-through ops share their input's spec
    for n in graph.nodes:
        if n.op in PASS_THROUGH and n.output not in acts and n.inputs[0] in acts:
            acts[n.output] = acts[n.inputs[0]]

    layers: dict[str, LayerSpec] = {}
    for n in graph.nodes:
        if n.op in MAC_OPS:
            ls = layer_scheme[n.name]
            n.wq = _layer_weights(n, ls)
            n.bias_q = None
        elif _requantized(graph, n):
            ls = ls_of_tensor(n.output)
        else:
            continue
        layers[n.name] = LayerSpec(
            ls.accumulator, as_kind(ls.register), as_mode(ls.rounding), ls.nonlinear
        )
    return QuantProgram(graph, acts, layers, scheme)


def _signs(graph: Graph, fused: dict, input_range) -> dict[str, bool]:
    """True for tensors known to be non-negative (ReLU outputs, fused ReLU, non-negative input)."""
    nonneg = {graph.input: bool(input_range is not None and input_range[0] >= 0)}
    for n in graph.nodes:
        if n.op is Op.RELU:
            nonneg[n.output] = True
        elif n.op is Op.CLIP:
            nonneg[n.output] = n.attrs["min"] >= 0
        elif n.op in (Op.SIGMOID, Op.HARDSIGMOID, Op.SOFTMAX):
            nonneg[n.output] = True
        elif n.op in (
            Op.MAXPOOL,
            Op.GAP,
            Op.AVGPOOL,
            Op.FLATTEN,
            Op.RESHAPE,
            Op.IDENTITY,
            Op.TRANSPOSE,
            Op.GATHER,
            Op.SLICE,
            Op.RESIZE,
            Op.REDUCE_MEAN,
        ):
            nonneg[n.output] = nonneg.get(n.inputs[0], False)
        else:
            nonneg[n.output] = False
    for src, dst in fused.items():
        nonneg[src] = nonneg[dst]
    return nonneg
