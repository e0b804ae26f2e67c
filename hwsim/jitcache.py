"""Whether hwsim's Numba kernels are compiled yet (their on-disk cache), for the first-run note.

Numba compiles each ``@njit(cache=True)`` kernel on first use and writes it to a cache
(``__pycache__`` beside the module, or ``NUMBA_CACHE_DIR``); later processes load it. A fresh
install therefore spends its first run compiling: the CLI says so instead of sitting silent.
"""

from __future__ import annotations

import os
from pathlib import Path

_KERNEL_MODULES = ("datapath/kernels.py", "execute/kernels.py")


def _cache_dirs(module: Path) -> list[Path]:
    env = os.environ.get("NUMBA_CACHE_DIR")
    dirs = [module.parent / "__pycache__"]
    if env:
        dirs.append(Path(env))
    return dirs


def kernels_cached() -> bool:
    """True when every kernel module of the datapath has a Numba cache index on disk (a
    previous run compiled them); False on a fresh install (or an unreadable cache)."""
    root = Path(__file__).resolve().parent
    for rel in _KERNEL_MODULES:
        module = root / rel
        stem = module.stem
        found = False
        for d in _cache_dirs(module):
            try:
                found = found or any(d.rglob(f"{stem}.*.nbi"))
            except OSError:
                pass
        if not found:
            return False
    return True


FIRST_RUN_NOTE = (
    "first run: compiling hwsim's Numba kernels (cached for later runs; about half a minute "
    "on 2 cores)..."
)
