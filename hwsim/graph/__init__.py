"""The graph IR and ONNX import: ``Graph``/``Node``/``Op``, ``import_model``."""

from hwsim.graph.ir import MAC_OPS, Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.onnx_import import (
    SUPPORTED,
    ImportError_,
    ModelImportError,
    import_model,
    is_qoperator,
    load_onnx,
)

__all__ = [
    "MAC_OPS",
    "SUPPORTED",
    "Graph",
    "ImportError_",
    "ModelImportError",
    "Node",
    "Op",
    "TensorQuant",
    "WeightQuant",
    "import_model",
    "is_qoperator",
    "load_onnx",
]
