"""The on-disk form of a trace: ``.npy`` + ``$readmemh`` hex per array, and ``manifest.json``.

Hex text (one word per line, no address lines, no comments, so Verilog's ``$readmemh`` reads
it straight into a ``reg [W-1:0] mem [0:SIZE-1]``): the array in **row-major (C) order of its
stored shape** (the ``shape`` of its manifest entry), each value as ``ceil(bits / 4)`` lower-case
hex digits --

* ``twos-complement``: ``v mod 2^bits`` (a signed format of ``bits`` bits, sign bit included);
* ``unsigned``: ``v`` (an unsigned format);
* ``float32-bits``: the IEEE-754 binary32 bit pattern (an ``ort`` register's float32 scale).

A trace directory is written whole or not at all (:func:`write_dir`: a temporary sibling
directory, then a rename). :func:`read_array` checks each file's sha256 and shape against the
manifest; a mismatch is a :class:`TraceError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwsim.errors import HwsimError

FORMAT = "hwsim-trace/1"
"""The manifest's ``format``; a change of layout or meaning gets a new number."""
HEX_ORDER = (
    "row-major (C order) of the stored shape; one word per line; ceil(bits/4) hex digits; "
    "twos-complement: v mod 2^bits, unsigned: v, float32-bits: IEEE-754 binary32 pattern"
)
ENCODINGS = ("twos-complement", "unsigned", "float32-bits")


class TraceError(HwsimError):
    """A trace that cannot be written, read or compared (names the file / layer / field)."""


@dataclass(frozen=True)
class Array:
    """One traced array: ``values`` (an integer array, or float32 for ``float32-bits`` / a
    float tensor) with its declared width ``bits`` and ``encoding`` (:data:`ENCODINGS`, or
    ``None`` for a float tensor, written as ``.npy`` only)."""

    values: np.ndarray
    bits: int | None
    encoding: str | None

    @staticmethod
    def integer(values, bits: int, signed: bool, dtype=None) -> Array:
        v = np.asarray(values)
        if dtype is not None:
            v = v.astype(dtype)
        return Array(v, int(bits), "twos-complement" if signed else "unsigned")

    @staticmethod
    def float32_bits(values) -> Array:
        return Array(np.asarray(values, np.float32), 32, "float32-bits")

    @staticmethod
    def float_tensor(values) -> Array:
        return Array(np.asarray(values, np.float32), None, None)


def hex_text(a: Array) -> str:
    """The ``$readmemh`` text of ``a`` (module docstring); ``a.bits`` must hold every value."""
    digits = -(-a.bits // 4)
    if a.encoding == "float32-bits":
        words = np.array(a.values, np.float32, order="C").reshape(-1).view(np.uint32)
        return "".join(f"{int(w):08x}\n" for w in words)
    v = np.asarray(a.values).ravel()
    lo, hi = (-(1 << (a.bits - 1)), (1 << (a.bits - 1)) - 1)
    if a.encoding == "unsigned":
        lo, hi = 0, (1 << a.bits) - 1
    if v.size and (int(v.min()) < lo or int(v.max()) > hi):
        raise TraceError(
            f"values in [{int(v.min())}, {int(v.max())}] do not fit {a.bits}-bit {a.encoding}"
        )
    mask = (1 << a.bits) - 1
    return "".join(f"{int(x) & mask:0{digits}x}\n" for x in v.tolist())


def parse_hex(text: str, bits: int, encoding: str, shape) -> np.ndarray:
    """The inverse of :func:`hex_text` (int64, or float32 for ``float32-bits``)."""
    words = [int(w, 16) for w in text.split()]
    if encoding == "float32-bits":
        out = np.array(words, np.uint32).view(np.float32)
    else:
        out = np.array(words, np.int64)
        if encoding == "twos-complement":
            out = np.where(out >= (1 << (bits - 1)), out - (1 << bits), out)
    return out.reshape(shape)


def npy_bytes(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array(values, order="C"), allow_pickle=False)
    return buf.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry(files: dict[str, bytes], stem: str, a: Array) -> dict:
    """Add ``stem.npy`` (and ``stem.hex`` for an integer array) to ``files``; the manifest
    entry describing them."""
    e = {
        "npy": f"{stem}.npy",
        "shape": list(np.shape(a.values)),
        "dtype": str(np.asarray(a.values).dtype),
        "bits": a.bits,
        "encoding": a.encoding,
    }
    files[e["npy"]] = npy_bytes(a.values)
    if a.encoding is not None:
        e["hex"] = f"{stem}.hex"
        files[e["hex"]] = hex_text(a).encode()
    return e


def write_dir(out: str | os.PathLike, manifest: dict, files: dict[str, bytes]) -> Path:
    """Write ``files`` and ``manifest.json`` (with ``files``: name -> sha256) into ``out``,
    atomically (:func:`write_folder`; an existing trace directory -- one holding
    ``manifest.json`` -- is replaced; any other existing path is an error)."""
    doc = dict(manifest, files={n: sha256(d) for n, d in sorted(files.items())})
    return write_folder(out, "manifest.json", "a trace directory", files, doc)


def write_folder(out, marker: str, kind: str, files: dict[str, bytes], doc: dict) -> Path:
    """Write ``files`` and the JSON ``doc`` as ``marker`` into folder ``out``, atomically: a
    temporary directory beside ``out``, renamed over it; the previous folder (one holding
    ``marker``; any other existing path is a TraceError naming ``kind``) is moved aside first
    and put back if the new one does not take its place."""
    out = Path(out)
    if out.exists() and not (out.is_dir() and (out / marker).is_file()):
        raise TraceError(f"{str(out)!r} exists and is not {kind} (no {marker})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    old = out.with_name(f".{out.name}.old")
    try:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / marker).write_text(json.dumps(doc, indent=1) + "\n")
        os.chmod(tmp, 0o755)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        # the previous trace, moved aside, is put back when the new one did not take its place
        if old.exists() and not out.exists():
            os.replace(old, out)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(d: str | os.PathLike) -> dict:
    """``d/manifest.json``, checked for the fields every reader needs."""
    p = Path(d) / "manifest.json"
    if not p.is_file():
        raise TraceError(f"{str(d)!r} is not a trace directory: no manifest.json")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TraceError(f"{p}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else None
        raise TraceError(f"{p}: format must be {FORMAT!r}, got {got!r}")
    for key, kind in (("layers", list), ("tensors", dict), ("files", dict)):
        if not isinstance(doc.get(key), kind):
            raise TraceError(f"{p}: field {key!r} missing or not a {kind.__name__}")
    for i, la in enumerate(doc["layers"]):
        if not isinstance(la, dict):
            raise TraceError(f"{p}: layer {i} is not an object")
        name = la.get("name", i)
        for k in ("name", "op", "output"):
            if k not in la:
                raise TraceError(f"{d}: layer {name!r}: field {k!r} missing")
    return doc


def read_array(d: str | os.PathLike, doc: dict, e: dict, what: str) -> np.ndarray:
    """The ``.npy`` of manifest entry ``e`` (``what`` names it in errors), its sha256 checked
    against ``doc['files']`` and its shape and dtype against the entry."""
    name = e.get("npy") if isinstance(e, dict) else None
    if not name:
        raise TraceError(f"{d}: {what}: entry has no 'npy' file")
    p = Path(d) / name
    if not p.is_file():
        raise TraceError(f"{d}: {what}: file {name!r} is missing")
    data = p.read_bytes()
    want = doc["files"].get(name)
    if want is None:
        raise TraceError(f"{d}: {what}: file {name!r} is not listed in manifest 'files'")
    if sha256(data) != want:
        raise TraceError(f"{d}: {what}: sha256 of {name!r} does not match the manifest")
    arr = np.load(io.BytesIO(data), allow_pickle=False)
    if list(arr.shape) != list(e.get("shape", [])):
        raise TraceError(
            f"{d}: {what}: {name!r} has shape {list(arr.shape)}, the manifest says {e.get('shape')}"
        )
    if str(arr.dtype) != e.get("dtype"):
        raise TraceError(f"{d}: {what}: {name!r} has dtype {arr.dtype}, manifest {e.get('dtype')}")
    return arr
