"""onnxruntime sessions as hwsim builds them: one place for the session options.

Every onnxruntime session hwsim opens -- the exact integer engine (:mod:`hwsim.datapath.engines`),
the float reference (:mod:`hwsim.execute.float_ort`), single float nodes of QOperator models
(:mod:`hwsim.execute.qoperator`), constant folding (:mod:`hwsim.graph.fold`) and the
intermediate outputs of ``hwsim diff`` (:mod:`hwsim.trace.external`) -- comes from
:func:`cpu_session`. (:mod:`hwsim.graph.ort_plan` opens its own: it asks for the optimised
graph on disk.)
"""

from __future__ import annotations


def cpu_session(model, *, threads: int | None = None, optimize: bool = True, spin: bool = False):
    """An ``onnxruntime.InferenceSession`` of ``model`` (a ModelProto, serialised bytes or a
    path) on the CPU execution provider, warnings silenced (log severity 3).

    ``threads``: None keeps onnxruntime's default thread pools; a number sets the intra-op
    pool to it, one inter-op thread, and no spin-waiting after a run (the Numba kernels that
    follow need those cores; ``spin=True`` keeps onnxruntime's spinning, for sessions that run
    back to back, :mod:`hwsim.execute.lowered`). ``optimize=False``: graph optimisation off
    (``ORT_DISABLE_ALL``: the nodes run as written, no fusion)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        if not spin:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
