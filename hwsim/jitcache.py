"""hwsim's Numba kernels on a fresh install: whether they are compiled yet (their on-disk cache,
for the first-run note), and compiling them in a second process meanwhile.

Numba compiles each ``@njit(cache=True)`` kernel on first use and writes it to a cache
(``__pycache__`` beside the module, or ``NUMBA_CACHE_DIR``); later processes load it. A fresh
install therefore spends its first run compiling: the CLI says so instead of sitting silent,
and starts ``python -m hwsim.jitcache warm`` (:func:`start_warming`), which compiles the
kernels of :data:`hwsim.jit_signatures.SIGNATURES` -- the kernels and argument types ``hwsim
demo`` uses, in the order it first uses them -- from the last to the first. Numba compiles
holding the GIL, one kernel at a time, so a second process is the way to use a second core:
the command compiles from the front, the warmer from the back, and each kernel the warmer has
written to the cache the command loads instead of compiling (Numba looks in the cache before
it compiles). The two write the cache as Numba always does (each file through a temporary and
a rename; where both add to one kernel's index at once, the last writer's index wins and the
other's entry is compiled again by a later run); the warmer stops when the command exits.
What the warmer compiles is only ever loaded for the argument types it was compiled for, so
a stale list costs time, never a result. ``python -m hwsim.jitrecord`` rewrites the list
from a ``hwsim demo`` run.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from pathlib import Path

_KERNEL_MODULES = ("datapath/kernels.py", "execute/kernels.py")


def _cache_dirs(module: Path) -> list[Path]:
    """Where Numba keeps ``module``'s kernels: ``NUMBA_CACHE_DIR`` when set (Numba then looks
    nowhere else), else ``__pycache__`` beside the module."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return [Path(env)] if env else [module.parent / "__pycache__"]


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


def _types_namespace() -> dict:
    from numba import types

    ns = {k: getattr(types, k) for k in dir(types) if not k.startswith("_")}
    ns["bool"] = types.boolean  # ``repr(types.boolean)`` is "bool"
    return ns


def signature(text: str) -> tuple:
    """The Numba argument types written as ``repr(tuple(types))`` in
    :data:`hwsim.jit_signatures.SIGNATURES` (e.g. ``"(Array(uint8, 4, 'C', False,
    aligned=True), int64)"``)."""
    sig = eval(text, {"__builtins__": {}}, _types_namespace())  # noqa: S307 -- our own list
    return sig if isinstance(sig, tuple) else (sig,)


def kernel(module: str, name: str):
    """The Numba dispatcher ``module.name``."""
    import importlib

    return getattr(importlib.import_module(module), name)


def warm(entries=None) -> int:
    """Compile ``entries`` (default: every entry of :data:`hwsim.jit_signatures.SIGNATURES`,
    from the last to the first) into the Numba cache; an entry that no longer fits its kernel
    is skipped. Returns the number compiled or loaded."""
    if entries is None:
        from hwsim.jit_signatures import SIGNATURES

        entries = list(reversed(SIGNATURES))
    done = 0
    for module, name, text in entries:
        try:
            kernel(module, name).compile(signature(text))
            done += 1
        except Exception:  # noqa: BLE001 -- a stale entry only costs the command its time
            continue
    return done


_warmer: subprocess.Popen | None = None


def start_warming() -> subprocess.Popen | None:
    """Start ``python -m hwsim.jitcache warm`` beside this process (same environment, so the
    same cache), unless one runs already or the kernels are cached; it is stopped when this
    process exits. None when nothing was started."""
    global _warmer
    if _warmer is not None or kernels_cached():
        return None
    try:
        _warmer = subprocess.Popen(
            [sys.executable, "-m", "hwsim.jitcache", "warm"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    except OSError:  # no second process here: the command compiles alone, as before
        return None
    atexit.register(stop_warming)
    return _warmer


def stop_warming() -> None:
    """Stop the warmer :func:`start_warming` started, if it still runs (the kernels it has
    written stay in the cache; each is written whole)."""
    global _warmer
    proc, _warmer = _warmer, None
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":  # python -m hwsim.jitcache warm
    if sys.argv[1:] != ["warm"]:
        sys.exit("usage: python -m hwsim.jitcache warm (the list: python -m hwsim.jitrecord)")
    warm()
