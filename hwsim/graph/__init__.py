"""The graph IR and ONNX import: ``Graph``/``Node``/``Op``, ``import_model`` (with the shape
folding and fusion of :mod:`hwsim.graph.fold`)."""

from hwsim.graph.ir import MAC_OPS, MATMUL_OPS, Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.onnx_import import (
    SUPPORTED,
    ModelImportError,
    import_model,
    is_qoperator,
    load_onnx,
)

__all__ = [
    "MAC_OPS",
    "MATMUL_OPS",
    "SUPPORTED",
    "Graph",
    "ModelImportError",
    "Node",
    "Op",
    "TensorQuant",
    "WeightQuant",
    "import_model",
    "is_qoperator",
    "load_onnx",
]
