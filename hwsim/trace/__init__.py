"""Golden vectors for RTL (``hwsim trace``) and first-divergence localisation (``hwsim diff``).

* :mod:`hwsim.trace.files` -- the on-disk form: ``.npy`` + ``$readmemh`` hex + ``manifest.json``;
* :mod:`hwsim.trace.golden` -- :func:`record` / :func:`write` / :func:`trace`: what the integer
  executor computed per layer, each MAC layer replayed from its recorded registers;
* :mod:`hwsim.trace.shift_acc` -- the per-sample-shift accumulator (eq. 13-14) of a MatMul
  whose summed axis is per-token-shift tokens: group shifts and final accumulators;
* :mod:`hwsim.trace.qoperator` -- traces of QOperator files (the node interpreter's integer
  tensors, by ONNX name);
* :mod:`hwsim.trace.external` -- dumps folders (one ``.npy`` per ONNX tensor) and onnxruntime's
  intermediate outputs (the traced tensors exposed as graph outputs);
* :mod:`hwsim.trace.diff` -- :func:`diff`: the first layer and element where a trace and
  another trace or a dumps folder part, and why.

docs/trace.md describes the format and the commands.
"""

from hwsim.trace.files import FORMAT, TraceError, read_manifest
from hwsim.trace.golden import record, trace, write

__all__ = ["FORMAT", "TraceError", "read_manifest", "record", "trace", "write"]
