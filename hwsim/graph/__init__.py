"""The graph IR and model import: ``Graph``/``Node``/``Op``, ``import_model`` (ONNX, with the
shape folding and fusion of :mod:`hwsim.graph.fold`; a ``.tflite`` file through
:func:`import_tflite`)."""

from hwsim.graph.ir import MAC_OPS, MATMUL_OPS, Graph, Node, Op, TensorQuant, WeightQuant
from hwsim.graph.onnx_import import (
    SUPPORTED,
    ModelImportError,
    import_model,
    is_qoperator,
    load_onnx,
)
from hwsim.graph.tflite_import import import_tflite

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
    "import_tflite",
    "is_qoperator",
    "load_onnx",
]
