"""First divergence of two traces (``hwsim diff A B``): the first layer, in A's topological
order, whose raw accumulators or output differ, its first differing element (row-major index,
both values), how many differ, and a cause read off the data where one can be:

* ``accumulator overflow`` -- the accumulators differ, every difference a multiple of
  ``2^bits`` (the narrower accumulator's width): one side wrapped (the accumulators of a
  per-sample-shift MatMul, ``shift_acc``, are compared like a MAC layer's);
* ``different rounding of the group shifts (eq. 13-14)`` -- ``shift_acc`` accumulators differ
  otherwise, on equal operands and group shifts, and the two traces' ``rounding`` differ;
* ``int16 pair saturation (AVX2 vpmaddubsw)`` -- the accumulators differ otherwise, one trace
  is ``isa`` avx2 (``hwsim trace --isa avx2``), the other not, and the avx2 trace's layer
  saturated int16 pairs (docs/numerics.md eq. 16);
* ``different scale register`` -- equal accumulators, the registers differ (kind, multiplier
  or shift);
* ``rounding tie`` -- equal accumulators and registers' values, outputs 1 apart where the
  exact requantized value ``(acc + bias) * real`` is a ``.5`` tie;
* ``saturation/clamp`` -- equal accumulators, one of the two outputs at its format's rail;
* ``unclassified`` otherwise.

Both traces are read through :func:`hwsim.trace.files.read_array` (sha256 and shape checked);
a layer of A missing from B, or a layer of another op or shape, is a :class:`TraceError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from hwsim.trace.external import DUMPS_INFO, read_dumps
from hwsim.trace.files import TraceError, read_array, read_manifest

PAIR_SATURATION = "int16 pair saturation (AVX2 vpmaddubsw)"
SHIFT_ROUNDING = "different rounding of the group shifts (eq. 13-14)"


@dataclass(frozen=True)
class Divergence:
    """Where two traces part: ``layer`` (node name), ``what`` (``acc`` or ``output``),
    ``index`` (row-major, of the stored shape), ``a`` / ``b`` (the values there), ``count`` of
    ``total`` elements differing, ``cause`` (module docstring)."""

    layer: str
    what: str
    index: tuple
    a: int | float
    b: int | float
    count: int
    total: int
    cause: str
    tensor: str | None = None
    """The ONNX tensor compared (a dumps folder B), else None."""

    def text(self) -> str:
        where = f", ONNX tensor {self.tensor!r}" if self.tensor else ""
        return (
            f"first divergence: layer {self.layer!r} ({self.what}{where}) at index "
            f"{list(self.index)}: A={self.a} B={self.b}; {self.count} of {self.total} elements "
            f"differ; cause: {self.cause}"
        )


def _field(d, name, obj, k, kind=None):
    """``obj[k]``; a missing key (or ``obj`` not a dict, or the value not of ``kind``) is a
    :class:`TraceError` naming trace ``d``, layer ``name`` and field ``k``."""
    if not isinstance(obj, dict) or k not in obj:
        raise TraceError(f"{d}: layer {name!r}: field {k!r} missing")
    v = obj[k]
    if kind is not None and (not isinstance(v, kind) or isinstance(v, bool)):
        raise TraceError(f"{d}: layer {name!r}: field {k!r} is not a {kind.__name__}")
    return v


def _arr(d, doc, e, what, name):
    """The entry's array: float64 for a float tensor, else exact integers -- int64, or Python
    ints (an object array) for a 64-bit unsigned dtype, which int64 cannot hold."""
    enc = _field(d, name, e, "encoding")
    arr = read_array(d, doc, e, what)
    if enc is None:
        return arr.astype(np.float64)
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8:
        return arr.astype(object)
    return arr.astype(np.int64)


def _real(reg: dict, mult: np.ndarray, shift: np.ndarray, c: int) -> Fraction:
    m = mult.flat[0] if mult.size == 1 else mult[c]
    s = int(shift.flat[0] if shift.size == 1 else shift[c])
    if reg["kind"] == "ort":
        return Fraction(float(np.float32(m)))
    if reg["kind"] == "pow2":
        return Fraction(1, 1 << s) if s >= 0 else Fraction(1 << -s)
    return Fraction(int(m)) * (Fraction(2) ** (s - 31))


def _pair_saturated(da: dict, la: dict, db: dict, lb: dict) -> bool:
    """Whether one trace is ``isa`` avx2, the other is not, and the avx2 one's layer records
    saturated int16 pairs (its ``avx2.pair_saturations``): then the accumulators differ by
    eq. 16."""
    isa_a, isa_b = da.get("isa", "exact"), db.get("isa", "exact")
    if isa_a == isa_b:
        return False
    side = la if isa_a == "avx2" else lb if isa_b == "avx2" else None
    avx2 = side.get("avx2") if side is not None else None
    return isinstance(avx2, dict) and int(avx2.get("pair_saturations") or 0) > 0


def _shift_rounding(a, da, la, b, db, lb) -> bool:
    """Whether two ``shift_acc`` layers got the same operands and group shifts but were
    rounded differently (then their accumulators differ by the rounding alone)."""
    name, ka, kb = la["name"], la["shift_acc"], lb["shift_acc"]
    if ka.get("rounding") == kb.get("rounding"):
        return False
    for ta, tb in zip(_field(a, name, la, "inputs"), _field(b, name, lb, "inputs"), strict=False):
        xa = _arr(a, da, _tensor(a, da, name, ta), f"{name} input", name)
        xb = _arr(b, db, _tensor(b, db, name, tb), f"{name} input", name)
        if xa.shape != xb.shape or not np.array_equal(xa, xb):
            return False
    sa = _arr(a, da, _field(a, name, ka, "shifts"), f"{name} shifts", name)
    sb = _arr(b, db, _field(b, name, kb, "shifts"), f"{name} shifts", name)
    return sa.shape == sb.shape and bool(np.array_equal(sa, sb))


def _first(x: np.ndarray, y: np.ndarray):
    bad = x != y
    idx = tuple(int(i) for i in np.argwhere(bad)[0])
    return idx, int(np.count_nonzero(bad))


def diff(a: str | os.PathLike, b: str | os.PathLike) -> Divergence | None:
    """The first divergence of trace directories ``a`` and ``b``, or None when every layer of
    ``a`` has the same accumulators and output in ``b``. A ``b`` without ``manifest.json`` is
    a dumps folder (:func:`diff_dumps`)."""
    if Path(b).is_dir() and not (Path(b) / "manifest.json").exists():
        return diff_dumps(a, b)
    da, db = read_manifest(a), read_manifest(b)
    layers_b = {}
    for lb in db["layers"]:
        layers_b[_field(b, None, lb, "name")] = lb
    for la in da["layers"]:
        name = _field(a, None, la, "name")
        lb = layers_b.get(name)
        if lb is None:
            raise TraceError(f"{b}: layer {name!r} of {a} is missing (mismatched models?)")
        op_a, op_b = _field(a, name, la, "op"), _field(b, name, lb, "op")
        if op_b != op_a:
            raise TraceError(f"layer {name!r}: op {op_a} in {a}, {op_b} in {b}")
        mac = "acc" in la and "acc" in lb
        shift = "shift_acc" in la and "shift_acc" in lb
        ka, kb = (la["shift_acc"], lb["shift_acc"]) if shift else (la, lb)
        acc_a = acc_b = None
        if mac or shift:
            acc_a = _arr(a, da, _field(a, name, ka, "acc"), f"{name} acc", name)
            acc_b = _arr(b, db, _field(b, name, kb, "acc"), f"{name} acc", name)
            if acc_a.shape != acc_b.shape:
                raise TraceError(f"layer {name!r}: acc shapes {acc_a.shape} and {acc_b.shape}")
            if not np.array_equal(acc_a, acc_b):
                idx, n = _first(acc_a, acc_b)
                bits_a = _field(a, name, _field(a, name, ka, "accumulator"), "bits", int)
                bits_b = _field(b, name, _field(b, name, kb, "accumulator"), "bits", int)
                # Python ints (object arrays): exact for any width, no int64 overflow
                delta = acc_a.astype(object) - acc_b.astype(object)
                wrapped = bool(np.all(delta % (1 << max(min(bits_a, bits_b), 0)) == 0))
                cause = "accumulator overflow" if wrapped else "unclassified"
                if not wrapped and _pair_saturated(da, la, db, lb):
                    cause = PAIR_SATURATION
                if not wrapped and shift and _shift_rounding(a, da, la, b, db, lb):
                    cause = SHIFT_ROUNDING
                return Divergence(name, "acc", idx, int(acc_a[idx]), int(acc_b[idx]), n,
                                  acc_a.size, cause)  # fmt: skip
        ea = _tensor(a, da, name, _field(a, name, la, "output"))
        eb = _tensor(b, db, name, _field(b, name, lb, "output"))
        ya = _arr(a, da, ea, f"{name} output", name)
        yb = _arr(b, db, eb, f"{name} output", name)
        if ya.shape != yb.shape:
            raise TraceError(f"layer {name!r}: output shapes {ya.shape} and {yb.shape}")
        if np.array_equal(ya, yb):
            continue
        idx, n = _first(ya, yb)
        va, vb = ya[idx], yb[idx]
        cause = "unclassified"
        if mac and "register" in la and "register" in lb:
            cause = _mac_cause(a, da, la, b, db, lb, acc_a, ea, eb, idx, va, vb)
        elif _at_rail(a, name, ea, va) or _at_rail(b, name, eb, vb):
            cause = "saturation/clamp"
        as_num = float if ea["encoding"] is None else int
        return Divergence(name, "output", idx, as_num(va), as_num(vb), n, ya.size, cause)
    return None


def _tensor(d, doc, name, t):
    """Manifest tensor entry ``t`` of trace ``d`` (layer ``name``'s output)."""
    if not isinstance(t, str) or t not in doc["tensors"]:
        raise TraceError(f"{d}: layer {name!r}: output tensor {t!r} not in 'tensors'")
    return doc["tensors"][t]


def _at_rail(d, name, e: dict, v) -> bool:
    if _field(d, name, e, "encoding") not in ("twos-complement", "unsigned"):
        return False
    bits = _field(d, name, e, "bits", int)
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    if e["encoding"] == "unsigned":
        lo, hi = 0, (1 << bits) - 1
    return int(v) in (lo, hi)


def _mac_cause(a, da, la, b, db, lb, acc, ea, eb, idx, va, vb) -> str:
    name = la["name"]
    ra, rb = la["register"], lb["register"]
    regs = [
        (read_array(d, doc, _field(d, name, r, "multiplier"), f"{name} multiplier"),
         read_array(d, doc, _field(d, name, r, "shift"), f"{name} shift"))
        for d, doc, r in ((a, da, ra), (b, db, rb))
    ]  # fmt: skip
    (ma, sa), (mb, sb) = regs
    same = (
        _field(a, name, ra, "kind") == _field(b, name, rb, "kind")
        and ma.shape == mb.shape
        and np.array_equal(ma, mb)
        and np.array_equal(sa, sb)
    )
    if not same:
        return "different scale register"
    if abs(int(va) - int(vb)) == 1 and _tie(a, da, la, ma, sa, acc, idx):
        return "rounding tie"
    if _at_rail(a, name, ea, va) or _at_rail(b, name, eb, vb):
        return "saturation/clamp"
    return "unclassified"


def _tie(a, da, la, mult, shift, acc, idx) -> bool:
    """Whether layer ``la``'s exact requantized value ``(acc + bias) * real`` at ``idx`` is a
    ``.5`` tie (its register's real multiplier, per channel on axis 1)."""
    name = la["name"]
    c = idx[1] if len(idx) > 1 else 0
    bias = 0
    if "bias" in la:
        bv = _arr(a, da, la["bias"], f"{name} bias", name)
        bias = int(bv[c] if bv.ndim == 1 else bv[idx[0], c])
    exact = (int(acc[idx]) + bias) * _real(la["register"], mult, shift, c)
    return exact - (exact.numerator // exact.denominator) == Fraction(1, 2)


def diff_dumps(a: str | os.PathLike, b: str | os.PathLike) -> Divergence | None:
    """The first divergence of trace ``a`` and the dumps folder ``b`` (one ``.npy`` per ONNX
    tensor, :mod:`hwsim.trace.external`): the graph input(s), then each layer's output in A's
    topological order, compared where the trace names an ONNX tensor for it. The cause, read
    off A alone (B has no accumulators or registers): ``int16 pair saturation (AVX2
    vpmaddubsw)`` when the layer recomputed by hwsim's AVX2 executor from A's inputs (the
    trace's ``avx2`` output) equals B's tensor; ``rounding tie`` when the outputs are 1 apart
    at a ``.5`` tie of A's ``(acc + bias) * real``; ``saturation/clamp`` when either value is
    at the format's rail; else ``unclassified``. B's files are checked first
    (:func:`hwsim.trace.external.read_dumps`: missing, extra, shape, dtype)."""
    da = read_manifest(a)
    tensors = da["tensors"]
    want = {}
    for e in tensors.values():
        if isinstance(e, dict) and e.get("onnx"):
            want[e["onnx"]] = (_field(a, None, e, "shape"), _field(a, None, e, "dtype"))
    if not want:
        raise TraceError(
            f"{a}: no traced tensor names an ONNX tensor ('onnx' in 'tensors'), so a dumps "
            f"folder cannot be matched to it; record the trace again with this hwsim"
        )
    _check_provenance(a, da, b)
    try:
        got = read_dumps(b, want)
    except TraceError as e:
        raise TraceError(
            f"{b} has no manifest.json, so it is read as a dumps folder: {e}"
        ) from None
    produced = {_field(a, None, la, "output") for la in da["layers"]}
    for la in da["layers"]:
        name = _field(a, None, la, "name")
        inputs = [t for t in la.get("inputs", []) if t not in produced]
        for what, t in [("input", t) for t in inputs] + [("output", la["output"])]:
            e = _tensor(a, da, name, t)
            onnx = e.get("onnx")
            if not onnx:
                continue
            ya = _arr(a, da, e, f"{name} {what}", name)
            yb = got[onnx].astype(np.int64)
            if np.array_equal(ya, yb):
                continue
            idx, n = _first(ya, yb)
            cause = _dump_cause(a, da, la, e, ya, yb, idx) if what == "output" else "unclassified"
            return Divergence(name, what, idx, int(ya[idx]), int(yb[idx]), n, ya.size, cause,
                              onnx)  # fmt: skip
        produced.update(inputs)
    return None


def _check_provenance(a, da: dict, b) -> None:
    """A ``dumps.json`` in ``b`` (optional) must name A's model (sha256) and samples."""
    p = Path(b) / DUMPS_INFO
    if not p.is_file():
        return
    try:
        info = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise TraceError(f"{p}: not JSON ({e})") from None
    if not isinstance(info, dict):
        raise TraceError(f"{p}: not a JSON object")
    for key in ("model_sha256", "indices"):
        if info.get(key) is not None and da.get(key) is not None and info[key] != da[key]:
            raise TraceError(
                f"{p}: {key} {info[key]!r}, but trace {a} has {da[key]!r} (dumps of another "
                f"model or other samples)"
            )


def _dump_cause(a, da, la, e, ya, yb, idx) -> str:
    name = la["name"]
    avx2 = la.get("avx2")
    if isinstance(avx2, dict) and "output" in avx2:
        y2 = _arr(a, da, avx2["output"], f"{name} avx2 output", name)
        if np.array_equal(y2, yb):
            return PAIR_SATURATION
    va, vb = ya[idx], yb[idx]
    if "register" in la and "acc" in la and abs(int(va) - int(vb)) == 1:
        reg = la["register"]
        mult = read_array(a, da, _field(a, name, reg, "multiplier"), f"{name} multiplier")
        shift = read_array(a, da, _field(a, name, reg, "shift"), f"{name} shift")
        acc = _arr(a, da, la["acc"], f"{name} acc", name)
        if acc.shape == ya.shape and _tie(a, da, la, mult, shift, acc, idx):
            return "rounding tie"
    if _at_rail(a, name, e, va) or _at_rail(a, name, e, vb):
        return "saturation/clamp"
    return "unclassified"
