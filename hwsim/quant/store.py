"""The quantized model file: ONNX that other tools open, with hwsim's settings in metadata.

``save(program, path)`` writes the program as an ONNX model (opset 21):

* weights as integer initializers (int8/uint8 for widths <= 8, int16/uint16 up to 16) followed
  by ``DequantizeLinear`` (per-tensor, or per-channel on axis 0), so any ONNX tool sees the
  exact integer weights and their scales;
* every statically quantized activation (``static`` scheme, or ``data-free``) as a
  ``QuantizeLinear -> DequantizeLinear`` pair when its width is 4, 8 or 16 bits, and as a QONNX
  ``Quant`` node (domain ``qonnx.custom_op.general``; inputs x, scale, zero point, bit width;
  ``signed``, ``narrow=0``, ``rounding_mode="ROUND"``) for other widths;
* per-sample (``dynamic``/``shift``) activations have no ONNX operator; they and everything
  the datapath needs (accumulator width, overflow, reduction order, tile rows and tile-register
  width, register kind, rounding, true weight widths, the scheme) are in the ``hwsim``
  metadata entry, JSON, ``format_version`` 1, which is authoritative when the file is loaded
  back.

So a per-tensor 8-bit model is a plain QDQ model that onnxruntime runs; other schemes open in
Netron/QONNX but only hwsim executes their integer semantics. Files are written atomically.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hwsim.errors import HwsimError
from hwsim.graph.ir import Graph, Op
from hwsim.graph.onnx_import import QONNX_DOMAIN, ModelImportError, import_model
from hwsim.graph.shapes import infer_shapes
from hwsim.io import atomic_write_bytes
from hwsim.numerics import IntFormat
from hwsim.quant.scheme import ActMode, ActSpec, LayerSpec, QuantProgram, Scheme, SchemeError

FORMAT_VERSION = 1


def _container(fmt: IntFormat):
    if fmt.bits <= 8:
        return (np.int8, TensorProto.INT8) if fmt.signed else (np.uint8, TensorProto.UINT8)
    return (np.int16, TensorProto.INT16) if fmt.signed else (np.uint16, TensorProto.UINT16)


def _zp_tensor(name: str, fmt: IntFormat, value) -> TensorProto:
    if fmt.bits == 4:
        return helper.make_tensor(
            name,
            TensorProto.INT4 if fmt.signed else TensorProto.UINT4,
            np.shape(value),
            np.ravel(value).tolist(),
        )
    dt, _ = _container(fmt)
    return numpy_helper.from_array(np.asarray(value).astype(dt), name)


def to_onnx(program: QuantProgram) -> onnx.ModelProto:
    """Build the ONNX model of a quantized program (see the module docstring)."""
    g: Graph = program.graph
    inits: list[TensorProto] = []
    nodes = []
    rename: dict[str, str] = {}
    out_spec = program.acts.get(g.output)
    # a quantized output: the layer writes '<out>_raw', the final DequantizeLinear writes '<out>'
    raw = (
        {g.output: f"{g.output}_raw"}
        if out_spec is not None and out_spec.mode is ActMode.STATIC
        else {}
    )

    def tn(t: str) -> str:
        return raw.get(t, t)

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def after(t: str) -> None:
        """Insert the activation quantizer of tensor ``t`` (if static) and reroute readers."""
        spec = program.acts.get(t)
        if spec is None or spec.mode is not ActMode.STATIC or t in rename:
            return
        dq = t if t in raw else f"{t}_dq"
        t = tn(t)
        s = const(f"{t}_scale", np.float32(spec.scale))
        if spec.fmt.bits in (4, 8, 16):
            inits.append(_zp_tensor(f"{t}_zp", spec.fmt, spec.zero_point))
            nodes.append(
                helper.make_node("QuantizeLinear", [t, s, f"{t}_zp"], [f"{t}_q"], name=f"{t}_Q")
            )
            nodes.append(
                helper.make_node("DequantizeLinear", [f"{t}_q", s, f"{t}_zp"], [dq], name=f"{t}_DQ")
            )
        else:
            z = const(f"{t}_zp", np.float32(spec.zero_point))
            bw = const(f"{t}_bits", np.float32(spec.fmt.bits))
            nodes.append(
                helper.make_node(
                    "Quant",
                    [t, s, z, bw],
                    [dq],
                    name=f"{t}_Quant",
                    domain=QONNX_DOMAIN,
                    signed=int(spec.fmt.signed),
                    narrow=0,
                    rounding_mode="ROUND",
                )
            )
        rename[t] = dq

    def src(t: str) -> str:
        return rename.get(tn(t), tn(t))

    _check_exportable(g)
    ranks = {t: len(shape) for t, shape in infer_shapes(g).items()}
    after(g.input)
    weights_meta = {}
    for n in g.nodes:
        ins = [src(t) for t in n.inputs]
        out = tn(n.output)
        if n.op in (Op.CONV, Op.DENSE):
            wq = n.wq
            dt, _ = _container(wq.fmt)
            wname = const(f"{n.name}_wq", wq.q.astype(dt))
            sname = const(f"{n.name}_wscale", np.asarray(wq.scale, np.float32))
            inits.append(
                _zp_tensor(
                    f"{n.name}_wzp",
                    IntFormat(max(wq.fmt.bits, 8), wq.fmt.signed) if wq.fmt.bits != 4 else wq.fmt,
                    np.asarray(wq.zero_point),
                )
            )
            nodes.append(
                helper.make_node(
                    "DequantizeLinear",
                    [wname, sname, f"{n.name}_wzp"],
                    [f"{n.name}_w"],
                    name=f"{n.name}_wDQ",
                    axis=0,
                )
            )
            weights_meta[n.name] = {"bits": wq.fmt.bits, "signed": wq.fmt.signed}
            args = [ins[0], f"{n.name}_w"]
            if n.bias is not None:
                args.append(const(f"{n.name}_b", n.bias.astype(np.float32)))
            if n.op is Op.CONV:
                a = n.attrs
                nodes.append(
                    helper.make_node(
                        "Conv",
                        args,
                        [out],
                        name=n.name,
                        strides=list(a["strides"]),
                        pads=list(a["pads"]),
                        dilations=list(a["dilations"]),
                        group=a["group"],
                    )
                )
            else:
                nodes.append(helper.make_node("Gemm", args, [out], name=n.name, transB=1))
        elif n.op is Op.RELU:
            nodes.append(helper.make_node("Relu", ins, [out], name=n.name))
        elif n.op is Op.CLIP:
            lo = const(f"{n.name}_min", np.float32(n.attrs["min"]))
            hi = const(f"{n.name}_max", np.float32(n.attrs["max"]))
            nodes.append(helper.make_node("Clip", [ins[0], lo, hi], [out], name=n.name))
        elif n.op is Op.ADD:
            nodes.append(helper.make_node("Add", ins, [out], name=n.name))
        elif n.op is Op.MUL:
            c = n.weight.astype(np.float32)
            if c.ndim == 1:  # per channel (axis 1) of an input of any rank
                c = c.reshape((1, -1) + (1,) * (ranks[n.inputs[0]] - 2))
            nodes.append(
                helper.make_node("Mul", [ins[0], const(f"{n.name}_c", c)], [out], name=n.name)
            )
        elif n.op in (Op.MAXPOOL, Op.AVGPOOL):
            a = n.attrs
            kw = dict(
                kernel_shape=list(a["kernel"]), strides=list(a["strides"]), pads=list(a["pads"])
            )
            if n.op is Op.AVGPOOL:
                kw["count_include_pad"] = a["count_include_pad"]
            nodes.append(
                helper.make_node(
                    "MaxPool" if n.op is Op.MAXPOOL else "AveragePool",
                    ins,
                    [out],
                    name=n.name,
                    **kw,
                )
            )
        elif n.op is Op.GAP:
            nodes.append(helper.make_node("GlobalAveragePool", ins, [out], name=n.name))
        elif n.op is Op.FLATTEN:
            nodes.append(helper.make_node("Flatten", ins, [out], name=n.name, axis=1))
        elif n.op is Op.RESHAPE:
            shp = const(f"{n.name}_shape", np.asarray(n.attrs["shape"], np.int64))
            nodes.append(helper.make_node("Reshape", [ins[0], shp], [out], name=n.name))
        elif n.op is Op.CONCAT:
            nodes.append(helper.make_node("Concat", ins, [out], name=n.name, axis=1))
        elif n.op is Op.SOFTMAX:
            nodes.append(helper.make_node("Softmax", ins, [out], name=n.name, axis=n.attrs["axis"]))
        elif n.op is Op.IDENTITY:
            nodes.append(helper.make_node("Identity", ins, [out], name=n.name))
        else:  # pragma: no cover - every Op is handled above
            raise ValueError(f"cannot export op {n.op}")
        after(n.output)
    out_name = g.output if g.output in raw else src(g.output)
    outputs = [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", None])]
    in_shape = ["batch"] + [d if isinstance(d, int) else None for d in g.input_shape]
    inputs = [helper.make_tensor_value_info(g.input, TensorProto.FLOAT, in_shape)]
    graph = helper.make_graph(nodes, g.name, inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 21)]
    if any(nd.domain == QONNX_DOMAIN for nd in nodes):
        opsets.append(helper.make_opsetid(QONNX_DOMAIN, 1))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="hwsim")
    model.ir_version = 10
    meta = {
        "format_version": FORMAT_VERSION,
        "scheme": program.scheme.as_dict() if program.scheme else None,
        "acts": {tn(t): s.as_dict() for t, s in program.acts.items()},
        "layers": {k: v.as_dict() for k, v in program.layers.items()},
        "weights": weights_meta,
    }
    helper.set_model_props(model, {"hwsim": json.dumps(meta, sort_keys=True)})
    return model


_EXPORTABLE = (
    Op.CONV, Op.DENSE, Op.RELU, Op.CLIP, Op.ADD, Op.MUL, Op.MAXPOOL, Op.AVGPOOL, Op.GAP,
    Op.FLATTEN, Op.RESHAPE, Op.CONCAT, Op.SOFTMAX, Op.IDENTITY,
)  # fmt: skip


def _check_exportable(g) -> None:
    """A program the file format cannot hold faithfully is refused (HwsimError naming the node)
    rather than written wrong: the transformer ops of the first import slice, an N-d dense, a
    concat off the channel axis or with constant parts."""
    for n in g.nodes:
        why = None
        if n.op not in _EXPORTABLE:
            why = f"op {n.op.value!r} cannot be saved yet (it runs in memory)"
        elif n.op is Op.DENSE and n.attrs.get("nd"):
            why = "an N-d dense (MatMul on (N, ..., K)) cannot be saved yet"
        elif n.op is Op.CONCAT and (n.attrs.get("axis", 1) != 1 or n.attrs.get("consts")):
            why = "a concat off the channel axis or with constant parts cannot be saved yet"
        if why:
            raise HwsimError(f"{g.source}: node {n.name!r}: {why}")


def save(program: QuantProgram, path: str | os.PathLike) -> None:
    """Write ``program`` as an ONNX file, atomically."""
    model = to_onnx(program)
    atomic_write_bytes(path, model.SerializeToString())


def program_from_graph(graph: Graph) -> QuantProgram:
    """The program of an imported quantized graph: hwsim metadata if present (authoritative),
    else a plain QDQ model run with onnxruntime's semantics (int32 wrapping accumulators,
    ``ort`` registers)."""
    meta = graph.meta.get("hwsim")
    if not isinstance(meta, dict):
        acts = {
            t: ActSpec(ActMode.STATIC, q.fmt, q.scale, q.zero_point)
            for t, q in graph.act_quant.items()
        }
        return QuantProgram(graph, acts, {}, None)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelImportError(
            f"{graph.source}: hwsim metadata format_version "
            f"{meta.get('format_version')!r}, this hwsim reads {FORMAT_VERSION}"
        )
    def section(key: str) -> dict:
        if key not in meta:
            raise SchemeError(f"missing section {key!r}")
        if not isinstance(meta[key], dict):
            raise SchemeError(f"section {key!r} must be an object, got {meta[key]!r}")
        return meta[key]

    try:
        # the file's tensor names: the output may have been renamed by the DQ alias
        acts = {
            t: ActSpec.from_dict(d, f"acts: tensor {t!r}") for t, d in section("acts").items()
        }
        layers = {
            k: LayerSpec.from_dict(d, f"layers: layer {k!r}")
            for k, d in section("layers").items()
        }
        scheme = Scheme.from_dict(meta["scheme"]) if meta.get("scheme") else None
        weights = section("weights")
        tensors = {graph.input, graph.output} | {n.output for n in graph.nodes}
        names = {n.name for n in graph.nodes}
        for what, keys, known, kind in (
            ("acts", acts, tensors, "activation tensors"),
            ("layers", layers, names, "nodes"),
            ("weights", weights, {n.name for n in graph.nodes if n.wq is not None}, "MAC layers"),
        ):
            unknown = sorted(set(keys) - known)
            if unknown:
                raise SchemeError(
                    f"section {what!r} names {unknown}, which the model does not have "
                    f"(expected {kind} of the model)"
                )
        for n in graph.nodes:
            w = weights.get(n.name)
            if w is not None and n.wq is not None:
                where = f"weights: layer {n.name!r}"
                if not isinstance(w, dict):
                    raise SchemeError(f"{where}: expected an object of fields, got {w!r}")
                for k in ("bits", "signed"):
                    if k not in w:
                        raise SchemeError(f"{where}: missing field {k!r}")
                n.wq.fmt = IntFormat(int(w["bits"]), bool(w["signed"]))
                n.wq.fmt.check(n.wq.q, f"{n.name} weights")
    except (KeyError, TypeError, ValueError) as e:
        raise ModelImportError(f"{graph.source}: malformed hwsim metadata: {e}") from e
    return QuantProgram(graph, acts, layers, scheme)


def load(path: str | os.PathLike) -> QuantProgram:
    """Load a quantized model (hwsim-written or QDQ) as a runnable program."""
    graph = import_model(path)
    if not graph.quantized:
        raise ModelImportError(f"{path}: a float model; quantize it first (hwsim quantize)")
    return program_from_graph(graph)
