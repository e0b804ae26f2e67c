"""Per-layer dumps from outside hwsim, and onnxruntime's intermediate integer outputs, in the
form ``hwsim diff TRACE DUMPS`` compares against a trace.

**A dumps folder** holds one ``.npy`` per tensor, named by the tensor's **ONNX name in the model
file** (:func:`dump_file`: every character other than ``A-Z a-z 0-9 . _ -`` becomes ``_``, then
``.npy``: ``/0/Conv_output_0_QuantizeLinear_Output`` ->
``_0_Conv_output_0_QuantizeLinear_Output.npy``), the samples the trace recorded on axis 0, in
the dtype of the trace's tensor (``uint8`` / ``int8`` for 8-bit activations). Which ONNX tensor
stands for a traced tensor is the trace manifest's ``tensors[t]["onnx"]`` (:func:`onnx_names`):

* a QDQ file (onnxruntime's ``quantize_static``, ``hwsim quantize``): the output of the
  ``QuantizeLinear`` that quantizes ``t`` -- the integer activation the fused kernels
  (QLinearConv, QGemm, ...) of onnxruntime produce;
* a float model quantized by ``hwsim trace``: ``t`` itself (the float tensor the integer one
  quantizes);
* ``None``: no integer tensor of the file holds ``t`` (it is not compared).

A ``dumps.json`` beside the files (written by :func:`write_dumps`) records where they came from;
hwsim diff does not need it. **onnxruntime's intermediate outputs**: :func:`expose_outputs`
adds the mapped tensors as graph outputs (a ``QuantizeLinear`` output stays the fused kernel's
output: exposing it does not stop onnxruntime's QDQ fusion -- the final outputs are unchanged,
tested), :func:`run_onnxruntime` runs the model, :func:`capture` does both for a trace.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from hwsim.trace.files import TraceError, npy_bytes, write_folder

DUMPS_FORMAT = "hwsim-dumps/1"
DUMPS_INFO = "dumps.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def dump_file(onnx_name: str) -> str:
    """The file name of ONNX tensor ``onnx_name`` in a dumps folder (module docstring)."""
    return _UNSAFE.sub("_", onnx_name) + ".npy"


def onnx_names(model, tensors) -> dict[str, str | None]:
    """IR tensor name -> the ONNX tensor of the file ``model`` (an ``onnx.ModelProto``, or None
    for a float model hwsim quantized) that holds its integers (module docstring)."""
    if model is None:
        return {t: t for t in tensors}
    q = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input and n.output:
            q.setdefault(n.input[0], n.output[0])
    return {t: q.get(t) for t in tensors}


def _elem_type(model, name: str) -> int:
    """The ONNX element type of the ``QuantizeLinear`` output ``name`` (its zero point's, else
    uint8 as the operator defines)."""
    from onnx import TensorProto, helper

    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and name in n.output:
            zp = n.input[2] if len(n.input) > 2 else ""
            if zp in inits:
                return inits[zp].data_type
            if zp in consts:
                return helper.get_attribute_value(consts[zp].attribute[0]).data_type
            return TensorProto.UINT8
    raise TraceError(f"tensor {name!r} is not a QuantizeLinear output of the model")


def expose_outputs(model, names):
    """A copy of ``model`` (``onnx.ModelProto``) with the tensors ``names`` added as graph
    outputs: a mapping name -> numpy dtype (the trace's), or a list of ``QuantizeLinear``
    outputs (their type from the zero point)."""
    from onnx import helper

    m = type(model)()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in names:
        if name not in have:
            elem = (
                helper.np_dtype_to_tensor_dtype(np.dtype(names[name]))
                if isinstance(names, dict)
                else _elem_type(m, name)
            )
            m.graph.output.append(helper.make_tensor_value_info(name, elem, None))
            have.add(name)
    return m


def run_onnxruntime(model_bytes: bytes, feeds: dict) -> dict[str, np.ndarray]:
    """Every graph output of the serialised model on ``feeds``, by name (CPU execution
    provider, default session options: the graph optimisations and fusions of a plain run)."""
    from hwsim.runtime import cpu_session

    sess = cpu_session(model_bytes)
    outs = sess.run(None, feeds)
    return {o.name: np.asarray(v) for o, v in zip(sess.get_outputs(), outs, strict=True)}


def capture(model_path, x: np.ndarray, names) -> dict[str, np.ndarray]:
    """onnxruntime's values of the ONNX tensors ``names`` (:func:`expose_outputs`) for the
    batch ``x`` (in the input's dtype) of the quantized file ``model_path`` (one input)."""
    import onnx

    model = onnx.load(str(model_path))
    inits = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise TraceError(f"{model_path}: onnxruntime capture needs a model with one input")
    m = expose_outputs(model, names)
    got = run_onnxruntime(m.SerializeToString(), {inputs[0]: np.asarray(x)})
    return {n: got[n] for n in names}


def check_names(names) -> dict[str, str]:
    """File name -> ONNX name for ``names``; two names with one file name are a TraceError."""
    files: dict[str, str] = {}
    for n in names:
        f = dump_file(n)
        if f in files and files[f] != n:
            raise TraceError(f"ONNX tensors {files[f]!r} and {n!r} both dump to {f!r}")
        files[f] = n
    return files


def write_dumps(out, arrays: dict[str, np.ndarray], info: dict | None = None) -> Path:
    """Write ``arrays`` (ONNX name -> array) as a dumps folder ``out`` with ``dumps.json``
    (``format``, ``info``, ``tensors``: file -> ONNX name), atomically (a temporary sibling,
    then a rename; an existing dumps folder -- one holding ``dumps.json`` -- is replaced, any
    other existing path is an error)."""
    files = check_names(arrays)
    doc = {"format": DUMPS_FORMAT, **(info or {}), "tensors": dict(sorted(files.items()))}
    data = {f: npy_bytes(arrays[name]) for f, name in files.items()}
    return write_folder(out, DUMPS_INFO, "a dumps folder", data, doc)


def read_dumps(d, want: dict[str, tuple[list, str]]) -> dict[str, np.ndarray]:
    """The arrays of dumps folder ``d`` for ``want`` (ONNX name -> (shape, dtype) the trace
    holds), checked: every wanted tensor has its file, of that shape and dtype; every ``.npy``
    in ``d`` is a wanted tensor. Each violation is a TraceError naming the file and tensor."""
    d = Path(d)
    files = check_names(want)
    present = {p.name for p in d.iterdir() if p.suffix == ".npy"}
    extra = sorted(present - set(files))
    if extra:
        raise TraceError(
            f"{d}: {extra[0]!r}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + " names no traced tensor of the model (files are ONNX tensor names, "
            f"docs/trace.md; a trace made with --only holds only its layers' tensors); "
            f"expected files: {sorted(files)[:8]}"
            + (" ..." if len(files) > 8 else "")
        )  # fmt: skip
    missing = [f for f in files if f not in present]
    if missing:
        raise TraceError(
            f"{d}: no {missing[0]!r} for ONNX tensor {files[missing[0]]!r}"
            + (f" ({len(missing) - 1} more files missing)" if len(missing) > 1 else "")
        )
    out = {}
    for f, name in files.items():
        try:
            a = np.load(d / f, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise TraceError(f"{d / f}: not a .npy array ({e})") from None
        shape, dtype = want[name]
        if str(a.dtype) != dtype:
            raise TraceError(
                f"{d / f}: dtype {a.dtype}, expected {dtype} (ONNX tensor {name!r} as traced)"
            )
        if list(a.shape) != list(shape):
            raise TraceError(
                f"{d / f}: shape {list(a.shape)}, expected {list(shape)} (ONNX tensor {name!r}, "
                f"the trace's samples on axis 0)"
            )
        out[name] = a
    return out


def trace_names(doc: dict) -> dict[str, str]:
    """The ONNX tensors a trace manifest maps its integer tensors to, in its order, with their
    traced dtypes."""
    out = {}
    for e in doc["tensors"].values():
        if isinstance(e, dict) and e.get("onnx"):
            out.setdefault(e["onnx"], e.get("dtype"))
    return out


def capture_trace(doc: dict, model_path, x: np.ndarray, out=None):
    """onnxruntime's values, on the trace's samples ``x``, of every ONNX tensor the trace
    manifest ``doc`` maps (:func:`trace_names`) in the QDQ file ``model_path``; written as a
    dumps folder to ``out`` if given (``dumps.json`` names the model, samples, onnxruntime's
    version and the CPU's instruction set). Returns ONNX name -> array."""
    import onnxruntime as ort

    from hwsim.datapath.isa import cpu_summary

    names = trace_names(doc)
    arrays = capture(model_path, x, names)
    if out is not None:
        cpu = cpu_summary()
        info = {
            "engine": f"onnxruntime {ort.__version__}, default session options, CPU",
            "cpu": f"{cpu['processor']} ({', '.join(cpu['features'])}): onnxruntime's u8 x s8 "
            f"dot product {cpu['onnxruntime_isa']}",
            "model": str(model_path),
            "model_sha256": doc.get("model_sha256"),
            "data": doc.get("data"),
            "indices": doc.get("indices"),
        }
        write_dumps(out, arrays, info)
    return arrays


def model_samples(onnx_model, data, indices):
    """``(dataset, indices)``: ``data`` (a :class:`hwsim.data.Dataset` or what
    :func:`hwsim.data.load_data` takes) shaped and typed for the ONNX model's one input, and the
    sample indices of the ``hwsim trace --index`` specs ``indices``."""
    from hwsim.data import Dataset, conform, input_dtype, load_data
    from hwsim.trace.golden import sample_indices

    inits = {t.name for t in onnx_model.graph.initializer}
    inp = [i for i in onnx_model.graph.input if i.name not in inits]
    if len(inp) != 1:
        raise TraceError(f"the model has {len(inp)} inputs; traces take single-input models")
    dims = inp[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)[1:]
    dt, name = input_dtype(inp[0]), inp[0].name
    if isinstance(data, Dataset):
        ds = conform(data, shape, dt, name)
    else:
        ds = load_data(data, shape, dt, name)
    return ds, sample_indices(indices, len(ds.x))
