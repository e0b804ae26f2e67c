"""Running a sweep's points: in this process, or on Dask (a LocalCluster of ``workers``
processes, or an existing cluster at ``scheduler``).

The inputs every point shares -- the model files' bytes and the data sets -- are one
:class:`Payload`, sent to each worker once (``Client.scatter(..., broadcast=True)``), not per
task. A worker writes a model's bytes to a file of its own once (:meth:`Payload.model_path`),
so a cluster needs no shared file system. Each task returns the point's record; the client
writes it (:class:`hwsim.sweep.store.ResultStore`, atomically) as it arrives, so a record is
written once, by one writer, whatever the workers do. A point that raises becomes a
``failed`` record with its error; a worker that dies costs only its in-flight points, which
Dask runs again elsewhere (``distributed.scheduler.allowed-failures``).

Threads: a LocalCluster's workers run one task at a time with one Numba / OpenMP / BLAS
thread (:data:`WORKER_ENV`), so N workers use N cores without oversubscription.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from hwsim.errors import HwsimError

#: The environment of a LocalCluster's worker processes: one thread per library.
WORKER_ENV = {
    "NUMBA_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}

DASK_HINT = "pip install -e '.[dask]' (dask[distributed]==2026.8.0)"


@dataclass
class Payload:
    """What every task of a sweep shares: ``models`` name -> (file name, bytes, sha256, the
    client's path), the data set ``data``, the calibration set ``calib`` (None: the data) and
    the batch size. Pickled once per worker."""

    models: dict
    data: object
    calib: object | None
    batch_size: int
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        d = dict(self.__dict__)
        d["cache"] = {}
        return d

    @classmethod
    def build(
        cls, model_paths: dict, data, calib, batch_size: int
    ) -> Payload:
        models = {}
        for name, p in model_paths.items():
            b = Path(p).read_bytes()
            models[name] = (Path(p).name, b, hashlib.sha256(b).hexdigest(), str(p))
        return cls(models, data, calib, batch_size)

    def model_sha(self, name: str) -> str:
        return self.models[name][2]

    def model_path(self, name: str) -> Path:
        """A file holding model ``name``'s bytes on this machine: the client's own path where
        it still holds them, else a copy under the temp folder (written once, atomically)."""
        key = ("path", name)
        if key in self.cache:
            return self.cache[key]
        fname, data, sha, orig = self.models[name]
        p = Path(orig)
        try:
            same = p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == sha
        except OSError:
            same = False
        if not same:
            from hwsim.io import atomic_write_bytes

            p = Path(tempfile.gettempdir()) / "hwsim-sweep-models" / sha[:16] / fname
            if not p.is_file():
                p.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_bytes(p, data)
        self.cache[key] = p
        return p


def run_job(
    evaluate: Callable, payload: Payload, job, key: str, meta: dict, catch: bool = True
) -> dict:
    """The record of one point: ``evaluate(payload, job)`` (the result dict) timed, or the
    error it raised (``failed``; ``catch=False``: the error propagates). Runs wherever the
    point runs."""
    t0 = time.perf_counter()
    rec = {"key": key, **meta, "point": job.point}
    try:
        rec.update(status="ok", result=evaluate(payload, job), error=None)
    except Exception as e:  # a point's failure is data: recorded, and the sweep goes on
        if not catch:
            raise
        rec.update(status="failed", result=None, error=f"{type(e).__name__}: {e}")
    rec["timing"] = {"seconds": round(time.perf_counter() - t0, 3), "pid": os.getpid()}
    return rec


def _import_dask():
    try:
        import distributed
    except ImportError as e:
        raise HwsimError(f"--workers / --scheduler need Dask: {DASK_HINT} ({e})") from None
    return distributed


@contextlib.contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None):
    """A ``distributed.Client``: on a new LocalCluster of ``workers`` processes (one thread
    each, :data:`WORKER_ENV`), closed with it on exit; or on the cluster at ``scheduler``
    (left running). HwsimError when Dask is missing or the scheduler cannot be reached."""
    if (workers is None) == (scheduler is None):
        raise HwsimError("give either workers (a LocalCluster) or a scheduler address")
    distributed = _import_dask()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as e:
            raise HwsimError(f"cannot reach the Dask scheduler at {scheduler!r}: {e}") from None
        try:
            yield client
        finally:
            client.close()
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise HwsimError(f"workers must be an integer >= 1, got {workers!r}")
    cluster = distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        # no dashboard; the scheduler's HTTP endpoints on a free port, not a busy 8787
        scheduler_kwargs={"dashboard_address": ":0"},
        worker_dashboard_address=None,
        env=dict(WORKER_ENV),
    )
    try:
        client = distributed.Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


@dataclass
class Outcome:
    """What a run of points did: ``records`` written now, ``lost`` keys whose task failed
    outside the point (e.g. its workers kept dying), with the reason."""

    records: list = field(default_factory=list)
    lost: dict = field(default_factory=dict)


def run_jobs(
    evaluate: Callable,
    payload: Payload,
    tasks: Iterable[tuple],
    on_record: Callable[[dict], None] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client=None,
    catch: bool = True,
) -> Outcome:
    """Run ``tasks`` (``(key, job, meta)``) with ``evaluate``: in this process in the order
    given (no ``workers``, ``scheduler`` or ``client``), else on Dask, in completion order.
    ``on_record(record)`` is called in this process for each record as it arrives (write it,
    show progress). ``catch=False`` (in this process only): a point's error propagates, as in
    :func:`hwsim.api.compare`."""
    tasks = list(tasks)
    out = Outcome()
    on_record = on_record or (lambda rec: None)
    if not tasks:  # nothing to run: no cluster started
        return out
    if client is None and workers is None and scheduler is None:
        for key, job, meta in tasks:
            rec = run_job(evaluate, payload, job, key, meta, catch)
            on_record(rec)
            out.records.append(rec)
        return out
    if client is None:
        with dask_client(workers, scheduler) as c:
            return run_jobs(evaluate, payload, tasks, on_record, client=c)
    distributed = _import_dask()
    shared = client.scatter(payload, broadcast=True, hash=False)
    futures = [
        client.submit(run_job, evaluate, shared, job, key, meta, key=f"hwsim-point-{key}",
                      pure=False, retries=0)
        for key, job, meta in tasks
    ]  # fmt: skip
    for fut in distributed.as_completed(futures):
        try:
            rec = fut.result()
        except Exception as e:  # the task itself failed (e.g. KilledWorker): not a record
            out.lost[fut.key.removeprefix("hwsim-point-")] = f"{type(e).__name__}: {e}"
            continue
        on_record(rec)
        out.records.append(rec)
    return out
