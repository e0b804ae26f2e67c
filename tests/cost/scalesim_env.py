"""A private virtualenv with SCALE-Sim (``scalesim==3.0.0``), and a way to run it.

scalesim 3.0.0 fails under numpy 2.4 (``int(max(ofmap_serviced_cycles))`` on a 1-element array
in ``double_buffered_scratchpad_mem.py``), which hwsim's environment has, so it lives in a
virtualenv of its own and runs in a subprocess (``benchmarks/scalesim_runner.py``).

* ``scalesim_python()``: ``$HWSIM_SCALESIM_PYTHON`` if set, else the python of a venv cached
  under ``~/.cache/hwsim/scalesim-3.0.0-venv``, created on first use (under a file lock, built
  in a temp dir and renamed into place, so concurrent processes neither collide nor see a
  half-built venv).
* ``run_scalesim(request)``: runs the runner on a request (see its docstring) and returns one
  dict per layer.
* ``python tests/cost/scalesim_env.py create DIR``: builds the venv at ``DIR`` and prints its
  python (what ``.ci/run`` does).

Before installing, pip's dry-run resolution is checked: scalesim 3.0.0 depends on numpy,
configparser, absl-py, tqdm, pandas, setuptools, matplotlib, cython and numba (no torch, no
CUDA); if anything like torch or an ``nvidia-*`` package ever shows up, the install is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCALESIM_REQUIREMENTS = ("scalesim==3.0.0", "numpy<2.4")
ENV_VAR = "HWSIM_SCALESIM_PYTHON"
CACHE_DIR = Path.home() / ".cache" / "hwsim"
VENV_NAME = "scalesim-3.0.0-venv"
RUNNER = Path(__file__).resolve().parents[2] / "benchmarks" / "scalesim_runner.py"
_FORBIDDEN = ("torch", "triton", "nvidia-", "tensorflow", "jax")
_MARKER = ".hwsim-complete"


class ScalesimError(RuntimeError):
    """scalesim could not be installed or did not run."""


def _tail(text: str, n: int = 40) -> str:
    lines = (text or "").strip().splitlines()
    return "\n".join(lines[-n:])


def _run(cmd: list[str], what: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ScalesimError(f"{what}: timed out after {timeout:.0f} s: {' '.join(cmd)}") from e
    if p.returncode != 0:
        raise ScalesimError(
            f"{what} failed (exit {p.returncode}): {' '.join(cmd)}\n"
            f"--- stderr (tail) ---\n{_tail(p.stderr)}\n"
            f"--- stdout (tail) ---\n{_tail(p.stdout, 10)}"
        )
    return p


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def create_venv(venv: Path | str, timeout: float = 900) -> str:
    """Build a venv with scalesim 3.0.0 at ``venv`` (which must not exist); return its python."""
    venv = Path(venv)
    if venv.exists():
        raise ScalesimError(f"{venv} already exists")
    _run([sys.executable, "-m", "venv", str(venv)], "creating the scalesim venv", timeout)
    py = str(_venv_python(venv))
    _run([py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], "upgrading pip", timeout)
    with tempfile.TemporaryDirectory() as td:
        report = Path(td) / "report.json"
        _run(
            [
                py,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--dry-run",
                "--report",
                str(report),
                *SCALESIM_REQUIREMENTS,
            ],
            "resolving scalesim's dependencies",
            timeout,
        )
        names = sorted(
            i["metadata"]["name"].lower() for i in json.loads(report.read_text())["install"]
        )
    bad = [
        n for n in names if any(n == f or (f.endswith("-") and n.startswith(f)) for f in _FORBIDDEN)
    ]
    if bad:
        raise ScalesimError(
            f"refusing to install {SCALESIM_REQUIREMENTS}: it would pull {bad} (full list: {names})"
        )
    _run(
        [py, "-m", "pip", "install", "--quiet", *SCALESIM_REQUIREMENTS],
        "installing scalesim",
        timeout,
    )
    _run(
        [py, "-c", "import scalesim.scale_sim, numpy; assert numpy.__version__ < '2.4'"],
        "checking the scalesim venv",
        120,
    )
    return py


def scalesim_python() -> str:
    """The python that has scalesim 3.0.0: ``$HWSIM_SCALESIM_PYTHON`` or the cached venv's."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not Path(env).exists():
            raise ScalesimError(f"${ENV_VAR}={env} does not exist")
        return env
    final = CACHE_DIR / VENV_NAME
    if (final / _MARKER).exists():
        return str(_venv_python(final))
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f"{VENV_NAME}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building it: wait for it
        try:
            if (final / _MARKER).exists():
                return str(_venv_python(final))
            if final.exists():  # a venv without the marker: a build that died before rename
                shutil.rmtree(final)
            tmp = Path(tempfile.mkdtemp(prefix=f".{VENV_NAME}.tmp-", dir=CACHE_DIR))
            try:
                create_venv(tmp / "venv")
                (tmp / "venv" / _MARKER).write_text(" ".join(SCALESIM_REQUIREMENTS) + "\n")
                # a venv's python finds its site-packages from the location of pyvenv.cfg, so
                # the renamed venv works (its console scripts' shebangs don't, and aren't used)
                os.rename(tmp / "venv", final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    py = str(_venv_python(final))
    _run([py, "-c", "import scalesim.scale_sim"], "checking the cached scalesim venv", 120)
    return py


def run_scalesim(request: dict, timeout: float = 600, python: str | None = None) -> list[dict]:
    """Run SCALE-Sim on ``request`` (format: ``benchmarks/scalesim_runner.py``); one dict per
    layer, in order."""
    cmd = [python or scalesim_python(), str(RUNNER)]
    # the runner works in a temp dir of its own and removes it; this one (its TMPDIR) catches
    # what a killed run (timeout) leaves
    with tempfile.TemporaryDirectory(prefix="hwsim-scalesim-") as tmp:
        p = _run_runner(cmd, request, timeout, {**os.environ, "TMPDIR": tmp})
    out = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    if len(out) != len(request["layers"]):
        raise ScalesimError(
            f"scalesim runner returned {len(out)} results for "
            f"{len(request['layers'])} layers\n--- stderr (tail) ---\n"
            f"{_tail(p.stderr)}"
        )
    return out


def _run_runner(cmd, request, timeout, env) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(
            cmd, input=json.dumps(request), capture_output=True, text=True, timeout=timeout, env=env
        )
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        raise ScalesimError(
            f"scalesim timed out after {timeout:.0f} s on "
            f"{len(request.get('layers', []))} layer(s), array "
            f"{request.get('array')}, dataflow {request.get('dataflow')}\n"
            f"--- stderr (tail) ---\n{_tail(err or '')}"
        ) from e
    if p.returncode != 0:
        raise ScalesimError(
            f"scalesim runner failed (exit {p.returncode}) on array "
            f"{request.get('array')}, dataflow {request.get('dataflow')}\n"
            f"--- stderr (tail) ---\n{_tail(p.stderr)}"
        )
    return p


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="The scalesim 3.0.0 virtualenv.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create", help="build the venv at DIR and print its python")
    c.add_argument("dir")
    sub.add_parser("python", help="print the python to use (creating the cached venv if needed)")
    args = ap.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            py = create_venv(args.dir) if args.cmd == "create" else scalesim_python()
    except ScalesimError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
