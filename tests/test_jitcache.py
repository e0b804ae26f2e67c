"""The first-run note (issue 16 item 4): hwsim says when its Numba kernels are not compiled
yet, judged from the on-disk cache index of the kernel modules."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner

import hwsim
from hwsim import jitcache
from hwsim.cli import main


def test_kernels_cached_reads_the_cache_index(tmp_path, monkeypatch):
    # a copy of the package layout with no __pycache__: not cached
    root = tmp_path / "hwsim"
    for rel in jitcache._KERNEL_MODULES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(Path(hwsim.__file__).parent / rel, root / rel)
    shutil.copy(jitcache.__file__, root / "jitcache.py")
    monkeypatch.setattr(jitcache, "__file__", str(root / "jitcache.py"))
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    assert not jitcache.kernels_cached()
    for rel in jitcache._KERNEL_MODULES:
        d = (root / rel).parent / "__pycache__"
        d.mkdir(exist_ok=True)
        (d / f"{Path(rel).stem}.some_kernel-12.py311.nbi").write_bytes(b"")
    assert jitcache.kernels_cached()
    # with NUMBA_CACHE_DIR set Numba looks only there: an empty one is not cached
    cache = tmp_path / "nb"
    (cache / "x").mkdir(parents=True)
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    assert not jitcache.kernels_cached()
    # NUMBA_CACHE_DIR holds them instead
    for rel in jitcache._KERNEL_MODULES:
        shutil.rmtree((root / rel).parent / "__pycache__")
    for rel in jitcache._KERNEL_MODULES:
        (cache / "x" / f"{Path(rel).stem}.k-1.py311.nbi").write_bytes(b"")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    assert jitcache.kernels_cached()


def test_run_prints_the_note_only_when_not_cached(monkeypatch):
    warmers = []
    monkeypatch.setattr(jitcache, "start_warming", lambda: warmers.append(1))
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: False)
    r = CliRunner().invoke(main, ["run", "nosuchmodel.onnx", "--data", "digits"])
    assert jitcache.FIRST_RUN_NOTE in r.output
    assert warmers == [1]  # and compiles in a second process meanwhile
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: True)
    r = CliRunner().invoke(main, ["run", "nosuchmodel.onnx", "--data", "digits"])
    assert jitcache.FIRST_RUN_NOTE not in r.output
    assert warmers == [1]


# -- the second process that compiles meanwhile (hwsim.jitcache.warm) ------------------------------


def test_every_signature_names_a_kernel_and_fits_its_arguments():
    """The list :func:`hwsim.jitcache.warm` compiles: each entry an hwsim Numba kernel, its
    types parse, one per positional parameter (a kernel whose parameters changed since the
    list was recorded fails here: re-record with ``python -m hwsim.jitrecord``)."""
    import inspect

    from numba.core.dispatcher import Dispatcher
    from numba.core.types import Type

    from hwsim.jit_signatures import SIGNATURES

    assert len(SIGNATURES) >= 10
    for module, name, text in SIGNATURES:
        k = jitcache.kernel(module, name)
        assert isinstance(k, Dispatcher), (module, name)
        sig = jitcache.signature(text)
        assert all(isinstance(t, Type) for t in sig)
        assert len(sig) == len(inspect.signature(k.py_func).parameters), (name, text)
    # what the demo compiles last (the warmer's first) and first are both listed
    names = {name for _, name, _ in SIGNATURES}
    assert {"im2col_nhwc", "gmn_output_exact", "sqnr_lane_sums", "ordered_sat16"} <= names


def test_warm_compiles_into_the_cache_and_skips_a_stale_entry(tmp_path):
    """In a fresh process with an empty NUMBA_CACHE_DIR: a listed signature is compiled and
    written to the cache (an index appears); an entry whose types no longer fit is skipped."""
    import os
    import subprocess
    import sys

    entry = (
        "hwsim.execute.kernels",
        "clamp_rows",
        "(Array(uint8, 2, 'C', False, aligned=True), int64, int64, "
        "Array(uint8, 2, 'C', False, aligned=True))",
    )
    stale = ("hwsim.execute.kernels", "clamp_rows", "(int64,)")
    code = f"from hwsim import jitcache; print(jitcache.warm([{entry!r}, {stale!r}]))"
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    assert list(tmp_path.rglob("kernels.clamp_rows-*.nbi"))


def test_start_warming_only_when_not_cached_and_stop_ends_it(monkeypatch):
    """A fresh install starts one warmer (a second call does not start another); a cached one
    starts none; :func:`hwsim.jitcache.stop_warming` ends a warmer still running."""
    import subprocess
    import sys

    started = []
    real = subprocess.Popen

    def popen(cmd, **kw):
        started.append(cmd)
        return real([sys.executable, "-c", "import time; time.sleep(60)"], **kw)

    monkeypatch.setattr(jitcache.subprocess, "Popen", popen)
    monkeypatch.setattr(jitcache, "_warmer", None)
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: True)
    assert jitcache.start_warming() is None and not started
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: False)
    proc = jitcache.start_warming()
    try:
        assert started == [[sys.executable, "-m", "hwsim.jitcache", "warm"]]
        assert jitcache.start_warming() is None and len(started) == 1
        assert proc.poll() is None
    finally:
        jitcache.stop_warming()
    assert proc.poll() is not None and jitcache._warmer is None
