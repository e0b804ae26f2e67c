"""The executors over one graph IR, one module per concern, each a table from op to function:

* :mod:`~hwsim.execute.float` -- the float32 reference (:func:`run_float`, ``FLOAT_OPS``);
* :mod:`~hwsim.execute.integer` -- the integer executor (:class:`IntegerExecutor`,
  ``INTEGER_OPS``): a quantized program on the emulated datapath, with per-layer counters;
* :mod:`~hwsim.execute.qoperator` -- the QOperator interpreter (:func:`run_qoperator_batch`,
  ``ONNX_OPS`` plus :mod:`hwsim.qops`' table);
* :mod:`~hwsim.execute.tensors` -- :class:`QTensor` and the float -> integer boundary;
* :mod:`~hwsim.execute.arrays`, :mod:`~hwsim.execute.kernels` -- shared array helpers and the
  graph-level Numba kernels.

Both network executors return ``{tensor name: value}`` over the same names, so a per-layer
comparison is a zip.
"""

from hwsim.execute.float import FLOAT_OPS, batchnorm_f32, float_conv, float_op, run_float
from hwsim.execute.integer import INTEGER_OPS, IntegerExecutor, LayerStats
from hwsim.execute.qoperator import ONNX_OPS, run_qoperator_batch
from hwsim.execute.tensors import QTensor, quantize_input, quantize_linear, sample_scale

__all__ = [
    "FLOAT_OPS",
    "INTEGER_OPS",
    "ONNX_OPS",
    "IntegerExecutor",
    "LayerStats",
    "QTensor",
    "batchnorm_f32",
    "float_conv",
    "float_op",
    "quantize_input",
    "quantize_linear",
    "run_float",
    "run_qoperator_batch",
    "sample_scale",
]
