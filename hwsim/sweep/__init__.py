"""Design-space sweeps: points as data (:mod:`.spec`), one record per point keyed by a content
hash (:mod:`.store`), run in this process or on Dask workers (:mod:`.runners`); one run split
by batch across workers and merged exactly (:mod:`.split`). docs/sweep.md.

The function that evaluates a point is given by the caller (:func:`hwsim.api.sweep` passes
:func:`hwsim.api._evaluate_point`), so this package sits below the API."""

from hwsim.sweep.runners import WORKER_ENV, Outcome, Payload, dask_client, run_job, run_jobs
from hwsim.sweep.spec import AXES, Job, SpecError, SweepSpec, load_spec, make_job
from hwsim.sweep.store import (
    ResultStore,
    data_digest,
    identity,
    pareto_plot,
    point_key,
    table,
    write_csv,
)

__all__ = [
    "AXES",
    "WORKER_ENV",
    "Job",
    "Outcome",
    "Payload",
    "ResultStore",
    "SpecError",
    "SweepSpec",
    "dask_client",
    "data_digest",
    "identity",
    "load_spec",
    "make_job",
    "pareto_plot",
    "point_key",
    "run_job",
    "run_jobs",
    "table",
    "write_csv",
]
