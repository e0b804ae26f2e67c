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
    # NUMBA_CACHE_DIR holds them instead
    for rel in jitcache._KERNEL_MODULES:
        shutil.rmtree((root / rel).parent / "__pycache__")
    cache = tmp_path / "nb"
    (cache / "x").mkdir(parents=True)
    for rel in jitcache._KERNEL_MODULES:
        (cache / "x" / f"{Path(rel).stem}.k-1.py311.nbi").write_bytes(b"")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    assert jitcache.kernels_cached()


def test_run_prints_the_note_only_when_not_cached(monkeypatch):
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: False)
    r = CliRunner().invoke(main, ["run", "nosuchmodel.onnx", "--data", "digits"])
    assert jitcache.FIRST_RUN_NOTE in r.output
    monkeypatch.setattr(jitcache, "kernels_cached", lambda: True)
    r = CliRunner().invoke(main, ["run", "nosuchmodel.onnx", "--data", "digits"])
    assert jitcache.FIRST_RUN_NOTE not in r.output
