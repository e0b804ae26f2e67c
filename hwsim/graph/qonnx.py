"""Brevitas exports: QONNX ``Quant`` / ``BipolarQuant`` / ``Trunc`` nodes and QCDQ chains.

Called from :mod:`hwsim.graph.onnx_import` (its ``_OPS`` table and ``quantize_linear``); every
function takes the importer ``imp`` and fails through ``imp.fail`` (a ModelImportError naming
the file, the node and its op type). The integer semantics are the contracts of
:mod:`hwsim.numerics.qonnx` (eq. Q1-Q4).

* **Quant of a constant** (a weight or a bias): folded at import to its integers ``q =
  int_quant(w, scale, zero_point, bits, signed, narrow, rounding_mode)`` -- any rounding mode,
  ``narrow``, per-tensor or per-channel scale / zero point (one axis, e.g. ``(O, 1, 1, 1)``),
  2..32 bits -- held like a QDQ model's integer initializer: the layer's ``WeightQuant`` (format
  ``bits`` wide, ``signed``), or its integer bias (signed, zero point 0). The float value other
  ops read is ``f32(q - z) * scale``, QONNX's output.
* **Quant of an activation**: the tensor's static quantization (``TensorQuant``; per-tensor
  scale, integer zero point, 2..16 bits, ``rounding_mode`` ROUND: hwsim's activation
  quantizer and requantization registers round half to even). ``narrow`` is a ``clip`` to the
  narrowed range after it (the integers clamp, the scale stays). A second Quant of an already
  quantized tensor with other parameters is an ``identity`` node carrying the new
  quantization (a requantization, run as ``QuantizeLinear(DequantizeLinear(x))``).
* **BipolarQuant** of a constant: integers ``+-1`` (2-bit signed format) times the scale.
* **QCDQ** (``export_onnx_qcdq``): ``QuantizeLinear -> Clip(lo, hi) -> DequantizeLinear``. On
  an activation the Clip narrows the QuantizeLinear's format to the smallest one holding
  ``[lo, hi]`` (uint8 clipped to ``[0, 15]``: 4-bit unsigned), with a ``clip`` node where the
  range is not a whole format (narrow); on a constant (TorchScript: ``Clip`` of an int8
  initializer; dynamo: ``QuantizeLinear`` of the float weight, then ``Clip``) the integers are
  clipped and the format narrowed the same way.

* **Trunc** after an average pool (Brevitas' ``TruncAvgPool2d``): the pool's integer window sum
  shifted right with the Trunc's rounding (:func:`trunc`).

Activation rounding modes other than ROUND and BipolarQuant of an activation are exact on the
graph input (a float tensor): its ActSpec carries ``qonnx_rounding`` / ``bipolar`` and
:func:`hwsim.execute.tensors.quantize_input` computes ``int_quant`` with that mode / the sign on
the float value. Anywhere else (after an integer layer, or a float island's output) they need
integer rules the executor does not have (floor / sign rounding of a requantization): import
errors that say so.

After the nodes are read, :func:`resolve_unquantized` gives every tensor between integer layers
that the file leaves unquantized either the quantization that provably equals the file's
arithmetic -- a MAC / Add output read only by a ``Relu`` / ``Clip`` whose output is quantized
takes that quantization (rounding is monotone, so ``Quant(relu(y)) = relu(Quant(y))``: hwsim's
fused activation), a tensor read only by data movement (Flatten, Reshape, Identity, Transpose)
into one quantized tensor takes that tensor's -- or, failing that, leaves it float: the
integer executor runs a conv / dense whose output has no quantization as a float op on its
dequantized input and weights (a **float island**, as onnxruntime runs a layer after
DequantizeLinear without a QuantizeLinear; the output stays float until the next quantizer),
marked ``*`` in the report; the graph's ``meta["import_notes"]`` lists the islands.
"""

from __future__ import annotations

import numpy as np

from hwsim.graph.ir import Node, Op, TensorQuant
from hwsim.numerics import IntFormat
from hwsim.numerics.qonnx import (
    QuantRounding,
    int_quant,
    parse_rounding,
    quant_range,
    trunc_shift,
)
from hwsim.numerics.qonnx import (
    bipolar_quant as _bipolar,
)

QONNX_OPS = ("Quant", "BipolarQuant", "Trunc")
"""The QONNX ops hwsim reads (domain ``qonnx.custom_op.general``)."""

_MOVES = (Op.FLATTEN, Op.RESHAPE, Op.IDENTITY, Op.TRANSPOSE)
"""IR ops that move values unchanged: quantizing before or after them is the same."""


def _scalar_const(imp, node, i: int, what: str) -> np.ndarray:
    t = node.input[i] if len(node.input) > i else ""
    if not t:
        imp.fail(node, f"missing input {i} ({what})")
    return np.asarray(imp.const(node, t, what))


def _bits(imp, node, i: int, lo: int, hi: int, where: str) -> int:
    """The node's bit-width input: a constant integer-valued scalar in ``[lo, hi]``."""
    b = _scalar_const(imp, node, i, "bit width")
    if b.size != 1:
        imp.fail(node, f"bit width must be a scalar, got shape {b.shape}")
    v = float(b.reshape(-1)[0])
    if not np.isfinite(v) or v != int(v):
        imp.fail(
            node,
            f"bit width {v!r} is not an integer: hwsim emulates integer formats only "
            "(a non-integer bit width, e.g. from learned bit widths, must be rounded before "
            "export)",
        )
    if not lo <= int(v) <= hi:
        imp.fail(node, f"bit width {int(v)} of {where} is outside [{lo}, {hi}]")
    return int(v)


def _attr_flag(a: dict, name: str, default: int) -> bool:
    return bool(int(a.get(name, default)))


def _rounding(imp, node, a: dict, default: str = "ROUND") -> QuantRounding:
    try:
        return parse_rounding(a.get("rounding_mode", default))
    except ValueError as e:
        imp.fail(node, str(e))


def _channel_axis(imp, node, v: np.ndarray, shape: tuple, what: str):
    """``v`` (a scale or zero point) against a constant of ``shape`` as numpy broadcasts it:
    ``(None, scalar)`` for one value, ``(axis, vector)`` for one value per index of one axis."""
    if v.size == 1:
        return None, v.reshape(())
    if v.ndim > len(shape):
        imp.fail(node, f"{what} of shape {v.shape} does not broadcast to {shape}")
    full = (1,) * (len(shape) - v.ndim) + v.shape
    axes = [i for i, d in enumerate(full) if d != 1]
    if len(axes) != 1 or full[axes[0]] != shape[axes[0]]:
        imp.fail(
            node,
            f"{what} of shape {v.shape} for a tensor of shape {shape}: per-tensor or one "
            "value per index of one axis (per channel) expected",
        )
    return axes[0], v.reshape(-1)


def _int_valued(imp, node, z: np.ndarray, what: str = "zero point") -> np.ndarray:
    z = np.asarray(z, np.float64)
    if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
        imp.fail(node, f"{what} must hold integers, got {z.reshape(-1)[:4].tolist()}")
    return z.astype(np.int64)


def _scale(imp, node, i: int = 1) -> np.ndarray:
    s = _scalar_const(imp, node, i, "scale").astype(np.float32)
    if not np.all(np.isfinite(s)) or np.any(s <= 0):
        imp.fail(node, f"scale must be finite and > 0, got {s.reshape(-1)[:4].tolist()}")
    return s


def format_of(lo: int, hi: int) -> IntFormat | None:
    """The narrowest integer format holding ``[lo, hi]`` (unsigned if ``lo >= 0``), 2..32
    bits; None if there is none."""
    signed = lo < 0
    for bits in range(2, 33):
        f = IntFormat(bits, signed)
        if f.min <= lo and hi <= f.max:
            return f
    return None


def quant(imp, node, a: dict) -> None:
    """QONNX ``Quant(x, scale, zero_point, bit_width)`` (module docstring)."""
    x, out = node.input[0], node.output[0]
    signed, narrow = _attr_flag(a, "signed", 1), _attr_flag(a, "narrow", 0)
    mode = _rounding(imp, node, a)
    s = _scale(imp, node)
    z = _scalar_const(imp, node, 2, "zero point").astype(np.float32)
    if imp.is_const(x):
        bits = _bits(imp, node, 3, 2, 32, "a constant (weight or bias)")
        c = np.asarray(imp.const(node, x, "input"))
        if not np.issubdtype(c.dtype, np.floating):
            imp.fail(node, f"Quant of a {c.dtype} constant: a float constant expected")
        axis, sv = _channel_axis(imp, node, s, c.shape, "scale")
        zaxis, zv = _channel_axis(imp, node, z, c.shape, "zero point")
        if zaxis is not None and axis is not None and zaxis != axis:
            imp.fail(node, f"scale on axis {axis} and zero point on axis {zaxis}")
        if axis is None and zaxis is not None:
            imp.fail(node, "a per-channel zero point needs a per-channel scale")
        zi = _int_valued(imp, node, zv)
        if axis is not None and zi.ndim == 0:
            zi = np.full(sv.shape, int(zi), np.int64)
        q = int_quant(c, s, z, bits, signed, narrow, mode)
        if q.shape != c.shape:
            imp.fail(node, f"scale / zero point broadcast the weight {c.shape} to {q.shape}")
        imp.qconst[out] = (q, sv, zi, IntFormat(bits, signed), axis, None)
        return
    bits = _bits(imp, node, 3, 2, 16, "an activation")
    if mode is not QuantRounding.ROUND and not _float_input(imp, x):
        imp.fail(
            node,
            f"rounding_mode {mode.value} on an activation that is not the (float) graph input: "
            "hwsim's requantization registers round half to even (ROUND); other modes are "
            "supported on the graph input (int_quant on the float value) and on constants "
            "(weights, biases), which are folded at import",
        )
    if s.size != 1 or z.size != 1:
        imp.fail(node, "activation quantization must be per-tensor (scalar scale and zero point)")
    fmt = IntFormat(bits, signed)
    zi = int(_int_valued(imp, node, z))
    if not fmt.min <= zi <= fmt.max:
        imp.fail(node, f"zero point {zi} is outside the {fmt} range")
    # QONNX rounds x/s + z; ONNX's QuantizeLinear (hwsim's default) rounds x/s, then adds z:
    # with ROUND (half to even) and an odd zero point they differ at every tie, so a float
    # input's Quant keeps QONNX's formula whenever the zero point is not 0
    if mode is not QuantRounding.ROUND or (zi != 0 and _float_input(imp, x)):
        rounding = mode.value
    else:
        rounding = None
    tq = TensorQuant(
        float(s.reshape(-1)[0]), zi, fmt, scale_name=node.input[1], qonnx_rounding=rounding
    )
    quantize_activation(imp, node, x, out, tq, quant_range(bits, signed, narrow))


def _float_input(imp, x: str) -> bool:
    """``x`` is the graph input, not yet quantized: a float tensor, where a QONNX quantizer's
    own formula (any rounding mode, BipolarQuant's sign) is applied to the float value."""
    t = imp.name(x)
    return t in {i.name for i in imp.inputs} and t not in imp.act_quant


def quantize_activation(imp, node, x: str, out: str, tq: TensorQuant, rng: tuple) -> None:
    """``out`` = ``x`` quantized by ``tq`` and clamped to the integers ``rng = (lo, hi)``: the
    tensor's quantization (an ``identity`` carrying it where ``x`` is already quantized
    differently), then a ``clip`` node where ``rng`` is narrower than ``tq``'s format."""
    t = imp.name(x)
    old = imp.act_quant.get(t)
    if old is not None and old != tq:
        mid = f"{out}:requant"
        imp.add(node, Op.IDENTITY, [t], output=mid, name=f"{node.name or 'quant'}:requant")
        t = mid
    imp.act_quant[t] = tq
    lo, hi = rng
    if (lo, hi) == (tq.fmt.min, tq.fmt.max):
        imp.alias[out] = t
        return
    bounds = tq.clip_bounds(lo, hi)
    imp.add(node, Op.CLIP, [t], bounds, output=out, name=f"{node.name or 'quant'}:narrow")
    imp.act_quant[out] = tq


def bipolar_quant(imp, node, a: dict) -> None:
    """QONNX ``BipolarQuant(x, scale)``: of a constant, integers ``+-1`` (``x >= 0``) in a
    2-bit signed format times ``scale`` (per tensor or per channel); of an activation, an
    error (a sign function, not an affine quantizer's rounding)."""
    x, out = node.input[0], node.output[0]
    s = _scale(imp, node)
    if not imp.is_const(x):
        if not _float_input(imp, x):
            imp.fail(
                node,
                "BipolarQuant of an activation that is not the (float) graph input "
                "(sign(x) * scale) has no integer rule in hwsim's requantization; "
                "BipolarQuant of the graph input or of a weight is supported",
            )
        if s.size != 1:
            imp.fail(node, "BipolarQuant of an activation must be per-tensor (a scalar scale)")
        fmt = IntFormat(2, True)
        tq = TensorQuant(float(s.reshape(-1)[0]), 0, fmt, scale_name=node.input[1], bipolar=True)
        quantize_activation(imp, node, x, out, tq, (fmt.min, fmt.max))
        return
    c = np.asarray(imp.const(node, x, "input"))
    axis, sv = _channel_axis(imp, node, s, c.shape, "scale")
    z = np.zeros(() if axis is None else sv.shape, np.int64)
    imp.qconst[out] = (_bipolar(c), sv, z, IntFormat(2, True), axis, None)


def trunc(imp, node, a: dict) -> None:
    """QONNX ``Trunc`` (qonnx opset 2, six inputs: Brevitas' ``TruncAvgPool2d``) after an
    ``AveragePool`` / ``GlobalAveragePool`` of a quantized tensor (scale ``s_in``, zero point
    0): the pool's output takes the Trunc's quantization (``output_scale``, zero point 0,
    ``output_bit_width`` bits, ``signed``) and the pool node carries ``attrs["trunc"]``, which
    the integer executor runs as :func:`hwsim.numerics.qonnx.trunc_int` on the pool's integer
    window sum ``S`` (right shift ``k = trunc_shift(scale, output_scale)`` with the node's
    rounding mode, clamped to the output range, ``narrow`` as in ``Quant``) instead of a
    requantization. qonnx computes ``np.round(f32(mean) / scale)`` for ``S``: equal to the
    integer sum where ``scale = s_in / K`` (K the window size, as Brevitas writes it, checked
    at run time) and the float mean's error is below 1/2 of the scale. Other forms (qonnx
    opset 1's five-input Trunc, a non-zero zero point, a Trunc of any other tensor) are
    errors that say so."""
    mode = _rounding(imp, node, a, "FLOOR")
    if len(node.input) != 6:
        imp.fail(
            node,
            f"Trunc with {len(node.input)} inputs (qonnx opset 1: x, scale, zeropt, "
            "input_bit_width, output_bit_width) is not supported; hwsim reads the opset-2 form "
            "Brevitas >= 0.10 writes (x, scale, zeropt, input_bit_width, output_scale, "
            "output_bit_width)",
        )
    x, out = node.input[0], node.output[0]
    s, so = _scale(imp, node, 1), _scale(imp, node, 4)
    z = _scalar_const(imp, node, 2, "zero point")
    if s.size != 1 or so.size != 1 or z.size != 1:
        imp.fail(node, "Trunc scales and zero point must be per-tensor scalars")
    if float(z.reshape(-1)[0]) != 0:
        imp.fail(node, f"Trunc zero point {float(z.reshape(-1)[0])}: only 0 is supported")
    _bits(imp, node, 3, 2, 64, "the Trunc input")
    bits = _bits(imp, node, 5, 2, 16, "the Trunc output")
    signed, narrow = _attr_flag(a, "signed", 1), _attr_flag(a, "narrow", 0)
    t = imp.name(x)
    pool = next((n for n in reversed(imp.nodes) if n.output == t), None)
    if (
        pool is None
        or pool.op not in (Op.AVGPOOL, Op.GAP)
        or len(imp.readers.get(x, [])) != 1
        or x in imp.graph_outputs
    ):
        imp.fail(
            node,
            "Trunc is supported only on the output of an AveragePool / GlobalAveragePool read "
            "by the Trunc alone (Brevitas' TruncAvgPool2d)",
        )
    xq = imp.act_quant.get(pool.inputs[0])
    if xq is None or xq.zero_point != 0:
        imp.fail(node, "Trunc after a pool whose input is not quantized with zero point 0")
    try:
        shift = trunc_shift(s, so)
    except ValueError as e:
        imp.fail(node, str(e))
    pool.attrs["trunc"] = {
        "shift": shift,
        "bits": bits,
        "signed": signed,
        "narrow": narrow,
        "mode": mode.value,
        "scale": float(s.reshape(-1)[0]),
    }
    imp.act_quant[t] = TensorQuant(
        float(so.reshape(-1)[0]), 0, IntFormat(bits, signed), scale_name=node.input[4]
    )
    imp.alias[out] = t


# -- QCDQ ---------------------------------------------------------------------------------------
def clip_bounds(imp, node) -> tuple[int, int] | None:
    """The integer bounds of a ``Clip`` whose min and max are integer constants (a QCDQ
    chain's); None otherwise."""
    if len(node.input) < 3 or not node.input[1] or not node.input[2]:
        return None
    lo, hi = (imp.consts.get(t) for t in node.input[1:3])
    if lo is None or hi is None or lo.size != 1 or hi.size != 1:
        return None
    if not (np.issubdtype(lo.dtype, np.integer) and np.issubdtype(hi.dtype, np.integer)):
        return None
    return int(lo.reshape(-1)[0]), int(hi.reshape(-1)[0])


def qcdq_clip(imp, q_node):
    """The ``Clip`` between ``q_node`` (a QuantizeLinear) and its DequantizeLinear, with its
    integer bounds: ``(clip, (lo, hi))``, or None where there is no such chain."""
    out = q_node.output[0]
    rs = imp.readers.get(out, [])
    if len(rs) != 1 or rs[0].op_type != "Clip" or out in imp.graph_outputs:
        return None
    clip = rs[0]
    bounds = clip_bounds(imp, clip)
    after = imp.readers.get(clip.output[0], [])
    if bounds is None or not after or any(r.op_type != "DequantizeLinear" for r in after):
        return None
    return clip, bounds


def narrowed(imp, node, fmt: IntFormat, bounds: tuple[int, int]) -> IntFormat:
    """The format of a QuantizeLinear ``fmt`` clipped to ``bounds``: the narrowest holding
    them (signedness kept where the bounds allow), checked to lie inside ``fmt``."""
    lo, hi = bounds
    if lo > hi or lo < fmt.min or hi > fmt.max:
        imp.fail(node, f"Clip bounds [{lo}, {hi}] are not inside the {fmt} range")
    f = format_of(lo, hi)
    return f if f is not None and f.bits <= fmt.bits else fmt


def clip_const(imp, node) -> bool:
    """A Clip of an integer constant with integer constant bounds (a QCDQ weight: ``Clip`` of
    ``QuantizeLinear(w)``): the clipped constant, its format narrowed to the bounds. False if
    the node is not one."""
    x = node.input[0]
    q = imp.consts.get(x)
    bounds = clip_bounds(imp, node)
    if q is None or bounds is None or not np.issubdtype(q.dtype, np.integer):
        return False
    fmt = imp.const_fmt.get(x) or imp.int_format(x)
    if fmt is None:
        imp.fail(node, f"unsupported quantized constant type {q.dtype}")
    out = node.output[0]
    imp.consts[out] = np.clip(q, *bounds).astype(q.dtype)
    imp.const_fmt[out] = narrowed(imp, node, fmt, bounds)
    src = imp.const_source.get(x, x)
    imp.const_source[out] = src
    return True


# -- after import: tensors the file leaves unquantized --------------------------------------------
def resolve_unquantized(imp) -> None:
    """Quantize or mark as float islands the tensors between integer layers the file leaves
    unquantized (module docstring). Runs on ``imp.nodes`` / ``imp.act_quant`` before the
    graph is built; notes go to ``imp.import_notes``."""
    nodes = imp.nodes
    readers: dict[str, list[Node]] = {}
    for n in nodes:
        for t in n.inputs:
            readers.setdefault(t, []).append(n)
    out_name = imp.name(imp.model.graph.output[0].name)
    aq = imp.act_quant
    for n in reversed(nodes):  # later tensors first: a chain of moves propagates back
        t = n.output
        if t in aq or t == out_name:
            continue
        rs = readers.get(t, [])
        if len(rs) == 1 and rs[0].op in (Op.RELU, Op.CLIP) and rs[0].output in aq:
            aq[t] = aq[rs[0].output]
        elif rs and all(r.op in _MOVES and r.output in aq for r in rs):
            qs = {aq[r.output] for r in rs}
            if len(qs) == 1:
                aq[t] = qs.pop()
    islands = [
        n.name
        for n in nodes
        if n.op in (Op.CONV, Op.DENSE) and n.wq is not None and n.output not in aq
    ]
    if islands:
        imp.import_notes.append(
            f"float islands: {', '.join(islands)} ha{'s' if len(islands) == 1 else 've'} no "
            "quantizer on the output in the file, so each runs as a float op on its "
            "dequantized input and weights (as onnxruntime runs a layer between "
            "DequantizeLinear and QuantizeLinear); marked * in the layer table"
        )


def bias_notes(imp, graph) -> None:
    """The bias-rounding error of each layer with a float bias and a per-tensor quantized
    input: hwsim adds ``round_half_even(b / (sx * sw))`` to the accumulator (the accumulator
    grid, as onnxruntime's QLinearConv does), not the float ``b``; the note gives the largest
    ``|b - round(b / (sx * sw)) * sx * sw|`` and how many of a layer's bias values moved."""
    aq = graph.act_quant
    rows = []
    for n in graph.nodes:
        if n.op not in (Op.CONV, Op.DENSE) or n.wq is None or n.bias is None:
            continue
        if n.bias_q is not None or n.inputs[0] not in aq:
            continue
        sx = np.float64(np.float32(aq[n.inputs[0]].scale))
        sw = np.asarray(n.wq.scale, np.float32).astype(np.float64)
        step = np.broadcast_to(sx * sw, n.bias.shape)
        b = n.bias.astype(np.float64)
        err = np.abs(b - np.rint(b / step) * step)
        rows.append(
            f"{n.name} max {float(err.max()):.3g} ({float((err / step).max()):.3f} of its "
            f"accumulator step), {int(np.count_nonzero(err))}/{b.size} values moved"
        )
    if rows:
        imp.import_notes.append(
            "float biases rounded to the accumulator grid (bias_rounding = accumulator: "
            "round_half_even(b / (sx*sw)) added to the integer sum, as onnxruntime's QLinearConv "
            "does; qonnx adds the float bias): " + "; ".join(rows)
        )
