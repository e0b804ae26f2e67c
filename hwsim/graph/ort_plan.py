"""Which layers onnxruntime runs on its integer kernels: the fused QDQ plan of a model file.

onnxruntime rewrites a QDQ model before it runs it: ``DequantizeLinear -> Conv/Gemm/MatMul ->
QuantizeLinear`` chains become ``QLinearConv`` / ``QGemm`` / ``QLinearMatMul`` (integer MLAS
kernels, whose x86 dot product depends on the CPU, ``docs/numerics.md`` eq. 16), while others
stay float ops on dequantized values. The choice depends on the graph (consumers of each
QuantizeLinear, activation types, ...), not on the CPU: hwsim asks onnxruntime itself, by
building a session with graph optimisation and reading the optimised graph back.
"""

from __future__ import annotations

import functools
import os
import tempfile

# fused integer ops of onnxruntime's CPU provider and the input index of their weight
_INTEGER_OPS = {
    "QLinearConv": 3,
    "QGemm": 3,
    "QLinearMatMul": 3,
    "MatMulInteger": 1,
    "ConvInteger": 1,
    "MatMulIntegerToFloat": 1,
    "DynamicQuantizeMatMul": 1,
}


@functools.lru_cache(maxsize=16)
def _fused(path: str, mtime: float) -> frozenset[str] | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "optimized.onnx")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.optimized_model_filepath = out
        try:
            ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
            import onnx

            m = onnx.load(out)
        except Exception:  # noqa: BLE001 -- a file onnxruntime cannot run has no fused plan
            return None
    names = set()
    for n in m.graph.node:
        i = _INTEGER_OPS.get(n.op_type)
        if i is not None and len(n.input) > i:
            names.add(n.input[i])
    return frozenset(names)


def ort_integer_weights(path) -> frozenset[str] | None:
    """Names of the weight initializers that onnxruntime (default session options) feeds to
    its integer kernels when it runs the model file at ``path``; ``None`` if onnxruntime is
    missing or cannot load the file."""
    if path is None or not os.path.isfile(str(path)):
        return None
    p = os.path.abspath(str(path))
    return _fused(p, os.path.getmtime(p))
