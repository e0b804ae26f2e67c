"""The graph IR and ONNX import: ``Graph``/``Node``/``Op``, ``import_model``."""

from hwsim.graph.ir import MAC_OPS, Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.onnx_import import (
    SUPPORTED,
    ModelImportError,
    import_model,
    is_qoperator,
    load_onnx,
)

__all__ = [
    "MAC_OPS",
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
