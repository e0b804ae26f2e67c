"""``python -m hwsim.jitrecord``: rewrite ``hwsim/jit_signatures.py``, the kernels and argument
types :func:`hwsim.jitcache.warm` compiles on a fresh install, from a ``hwsim demo`` run (re-run
it when a kernel the demo uses changes its parameters; ``tests/test_jitcache.py`` notices)."""

from __future__ import annotations

from pathlib import Path


def record(path: Path | None = None) -> list[tuple[str, str, str]]:
    """Run ``hwsim demo`` (:func:`hwsim.api.demo`) in this process and write the kernels it
    compiled or loaded, in the order of first use, with their argument types, to
    ``hwsim/jit_signatures.py`` (atomically). Kernels compiled inside another kernel's
    compilation are left out (they come with it)."""
    import json

    from numba.core import dispatcher

    from hwsim.io import atomic_write_text

    seen: list[tuple[str, str, str]] = []
    depth = [0]
    orig = dispatcher.Dispatcher.compile

    def compile_(self, sig):
        depth[0] += 1
        try:
            return orig(self, sig)
        finally:
            depth[0] -= 1
            f = self.py_func
            if depth[0] == 0 and f.__module__.startswith("hwsim."):
                for s in self.signatures:
                    entry = (f.__module__, f.__qualname__, repr(tuple(s)))
                    if entry not in seen:
                        seen.append(entry)

    dispatcher.Dispatcher.compile = compile_
    try:
        from hwsim import api

        api.demo()  # what ``hwsim demo`` runs
    finally:
        dispatcher.Dispatcher.compile = orig
    lines = [
        "# ruff: noqa: E501",
        '"""The Numba kernels ``hwsim demo`` uses, with their argument types, in the order of',
        "first use: what :func:`hwsim.jitcache.warm` compiles on a fresh install. Written by",
        '``python -m hwsim.jitrecord``; do not edit."""',
        "",
        "SIGNATURES = [",
        *(f"    (\n{''.join(f'        {json.dumps(v)},{chr(10)}' for v in e)}    )," for e in seen),
        "]",
        "",
    ]
    atomic_write_text(path or Path(__file__).with_name("jit_signatures.py"), "\n".join(lines))
    return seen


if __name__ == "__main__":
    print(f"{len(record())} kernel signatures written")
