"""TFLite's own int8 rules in the integer executor (the glue between a node's
``attrs["tflite"]`` and :mod:`hwsim.qops.tflite`), the QUANTIZE of a TFLite model's float
input, and the program of a ``.tflite`` file.

A node imported from a ``.tflite`` file (:mod:`hwsim.graph.tflite_import`) whose TFLite kernel
is not one of hwsim's generic rules carries ``attrs["tflite"] = {"rule": ..., parameters}``:
``add`` (eq. T3), ``mul`` (T4), ``average_pool`` (T5), ``mean`` (T6), ``mean_hw`` (T7),
``softmax`` (T8), and ``quantize`` (T1: the QUANTIZE of the float model input, an
``identity`` node, with the rounding of the kernels named in the rule). :func:`tflite_node`
runs it on the node's static int8 inputs (``quantize``: the float input), with the
``MultiplyByQuantizedMultiplier`` build of the layer's register (``tflite``: double rounding,
``tflite-single``: single rounding).
"""

from __future__ import annotations

import numpy as np

from hwsim.errors import HwsimError
from hwsim.execute.tensors import QTensor
from hwsim.graph.ir import Node
from hwsim.numerics import ScaleKind
from hwsim.numerics import tflite as ntfl
from hwsim.qops import tflite as qtfl
from hwsim.quant.scheme import ActSpec


def rounding_of(register: ScaleKind) -> str:
    """The ``MultiplyByQuantizedMultiplier`` build of a ``tflite*`` register."""
    if register is ScaleKind.TFLITE:
        return "double"
    if register is ScaleKind.TFLITE_SINGLE:
        return "single"
    raise HwsimError(
        f"TFLite's integer rules run on a 'tflite' or 'tflite-single' register, not "
        f"{register.value!r}"
    )


def tflite_node(node: Node, ins: list, spec: ActSpec | None, register: ScaleKind) -> QTensor:
    """The output of a node with ``attrs["tflite"]`` (module docstring), as a static QTensor on
    ``spec``'s grid; its inputs must be static per-tensor integer tensors."""
    p = node.attrs["tflite"]
    if p["rule"] == "quantize":
        if spec is None or spec.mode != "static" or isinstance(ins[0], QTensor):
            raise HwsimError(
                f"node {node.name!r}: TFLite's QUANTIZE takes the float model input to a "
                "static integer grid"
            )
        q = ntfl.quantize(
            ins[0], p["scale"], p["zero_point"], spec.fmt.min, spec.fmt.max, p["kernels"]
        )
        return QTensor(q.astype(spec.fmt.dtype), np.float32(spec.scale), spec.zero_point, spec.fmt)
    if (
        spec is None
        or spec.mode != "static"
        or any(not isinstance(i, QTensor) or np.ndim(i.scale) for i in ins)
    ):
        raise HwsimError(
            f"node {node.name!r} ({node.op.value}): TFLite's {p['rule']} rule takes static "
            "per-tensor integer inputs and output"
        )
    rnd = rounding_of(register)
    lo, hi = spec.fmt.min, spec.fmt.max
    q = [np.asarray(i.q, np.int64) for i in ins]
    rule = p["rule"]
    if rule == "add":
        y = qtfl.add(q[0], q[1], p, lo, hi, rnd)
    elif rule == "mul":
        y = qtfl.mul(q[0], q[1], p, lo, hi, rnd)
    elif rule == "average_pool":
        a = node.attrs
        y = qtfl.average_pool(q[0], a["kernel"], a["strides"], a["pads"], lo, hi)
    elif rule == "mean":
        y = qtfl.mean(q[0], p["zx"], p["zy"], p["m"], p["s"], lo, hi, rnd)
    elif rule == "mean_hw":
        y = qtfl.mean_hw(q[0], p["m"], p["s"], p["bias"], lo, hi, rnd)
    elif rule == "softmax":
        y = qtfl.softmax(q[0], node.attrs["axis"], p["table"], spec.scale, spec.zero_point, lo, hi)
    else:
        raise HwsimError(f"node {node.name!r}: unknown TFLite rule {rule!r}")
    return QTensor(
        np.asarray(y).astype(spec.fmt.dtype), np.float32(spec.scale), spec.zero_point, spec.fmt
    )


def load_tflite_program(path, kernels: str = "xnnpack", register: str | None = None):
    """The :class:`~hwsim.quant.QuantProgram` ``hwsim run`` executes for a ``.tflite`` model.

    ``kernels``: the LiteRT CPU kernels emulated where they differ
    (:data:`hwsim.graph.tflite_import.KERNELS`): ``xnnpack`` (default: the interpreter a user
    runs by default, with the XNNPACK delegate), ``optimized`` (the builtin kernels without
    delegates), ``reference`` (``BUILTIN_REF``). ``register``: the build of TFLite's
    fixed-point multiplier, ``tflite`` (double rounding) or ``tflite-single``
    (``TFLITE_SINGLE_ROUNDING``); default: the one the kernels match
    (:data:`hwsim.graph.tflite_import.DEFAULT_REGISTER`); it is the register of every layer on a
    ``tflite*`` register (the XNNPACK delegate's convolutions stay on ``ort``:
    :data:`hwsim.graph.tflite_import.MAC_REGISTER`)."""
    from hwsim.graph.tflite_import import DEFAULT_REGISTER, KERNELS, import_tflite
    from hwsim.quant.store import program_from_graph

    if kernels not in KERNELS:
        raise HwsimError(f"TFLite kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    register = DEFAULT_REGISTER[kernels] if register is None else register
    if register not in ("tflite", "tflite-single"):
        raise HwsimError(f"register must be 'tflite' or 'tflite-single', got {register!r}")
    graph = import_tflite(path, kernels)
    for layer in graph.meta["hwsim"]["layers"].values():
        if layer["register"].startswith("tflite"):  # XNNPACK's convolutions stay on ``ort``
            layer["register"] = register
    graph.meta["tflite"]["register"] = register
    return program_from_graph(graph)
