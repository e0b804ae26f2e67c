"""Atomic file output: a report is written whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename: the
    file is whole or absent, whatever interrupts the write."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise _naming(e, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _naming(e, path) from e
        raise


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` naming the user's ``path``, not the temporary file written beside it."""
    if e.errno is None:
        return e
    return OSError(e.errno, e.strerror or str(e), str(path))  # FileNotFoundError etc. by errno


def output_path_problem(path: str | os.PathLike, directory: bool = False) -> str | None:
    """Why ``path`` cannot be written (a file, or with ``directory`` a directory created with
    its parents), or None: checked before a run so a bad path does not lose its work."""
    p = Path(path)
    if directory:
        if p.exists() and not p.is_dir():
            return f"{str(path)!r} exists and is not a directory"
        q = p
        while not q.exists() and q != q.parent:
            q = q.parent
        q = q if q.exists() else Path(".")
        if not q.is_dir():
            return f"{str(path)!r}: {str(q)!r} is not a directory"
        if not p.exists() and not os.access(q, os.W_OK | os.X_OK):
            return f"{str(path)!r}: directory {str(q)!r} is not writable"
        return None
    if p.is_dir():
        return f"{str(path)!r} is a directory"
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        return f"{str(path)!r}: directory {str(parent)!r} does not exist"
    if not parent.is_dir():
        return f"{str(path)!r}: {str(parent)!r} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{str(path)!r}: directory {str(parent)!r} is not writable"
    return None
