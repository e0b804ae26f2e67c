"""A sweep as data: the TOML spec file, its axes, and the points they span.

A spec names the model(s), the data, and the axes; the points are the product of the axes
(model outermost, then the axes in the order the file lists them), less those a ``filter``
rejects::

    [sweep]
    model = ["rescnn"]          # shipped name or path (relative to the spec file); one or a list
    data = "digits"             # built-in name or .npz path (relative to the spec file)
    calib = "digits-train"      # calibration data (default: data itself)
    batch_size = 256            # samples per batch (no figure depends on it, docs/sweep.md)
    results = "results"         # the results folder (default: <spec stem>-results beside it)
    accelerator = "acc.cfg"     # accelerator config file (default: hwsim cost's defaults)
    filter = "abits >= wbits"   # optional: keep the points where this expression is true

    [axes]                      # each a value or a list of values
    scheme = ["per-tensor", "per-channel"]   # hwsim.quant.PRESETS (default per-tensor)
    wbits = [8, 4]              # any LayerScheme field: abits, acc_bits, overflow, register, ...
    first_last_bits = [8]       # the scheme's first/last-layer width
    array = ["16x16", "32x32"]  # accelerator array ROWSxCOLS
    dataflow = ["os", "ws"]     # accelerator dataflow
    seed = [0, 1]               # stochastic rounding's seed
    isa = ["exact"]             # dot-product semantics (hwsim run --isa)

Every point is checked when the spec is loaded (scheme fields through
:class:`hwsim.quant.LayerScheme`, the accelerator through :func:`hwsim.cost.load_config`): a
bad spec is a :class:`SpecError` naming the file and the key, before any work.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import numbers
import operator
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10: the tomli backport
    import tomli as tomllib

from hwsim.cost import Accelerator, load_config, parse_array
from hwsim.cost.dataflow import Dataflow
from hwsim.datapath.isa import ISA_CHOICES
from hwsim.datapath.isa import resolve as resolve_isa
from hwsim.errors import HwsimError
from hwsim.quant import Scheme
from hwsim.quant.scheme import PRESETS, LayerScheme


class SpecError(HwsimError):
    """A sweep spec that cannot be run: the message names the file and the key."""


#: Keys of the ``[sweep]`` table (``model`` and ``data`` required).
SWEEP_KEYS = ("model", "data", "calib", "batch_size", "results", "accelerator", "filter")
#: Scheme fields an axis may name: every :class:`LayerScheme` field and ``first_last_bits``.
SCHEME_AXES = tuple(f.name for f in dataclasses.fields(LayerScheme)) + ("first_last_bits",)
#: Axes that are not scheme fields.
OTHER_AXES = ("scheme", "array", "dataflow", "seed", "isa")
AXES = OTHER_AXES + SCHEME_AXES


@dataclass(frozen=True)
class Job:
    """One point of a sweep, ready to run: ``point`` the axis values that name it (JSON
    scalars), ``model`` the model as the spec gives it, ``scheme`` the scheme (None: the
    model's own quantization, ``compare``'s ``as imported`` row), the ``accelerator`` it is
    costed on, stochastic rounding's ``seed`` and the ``isa``; ``label`` the row's scheme
    name. ``settings()`` is what the point's content hash covers."""

    point: dict
    model: str
    scheme: Scheme | None
    accelerator: Accelerator
    seed: int = 0
    isa: str = "exact"
    label: str = ""
    tflite_kernels: str | None = None

    def settings(self) -> dict:
        """Everything that decides the point's figures, as plain JSON (scheme and accelerator
        in full, so two spellings of one point hash alike)."""
        return {
            "scheme": None if self.scheme is None else self.scheme.as_dict(),
            "label": self.label,
            "accelerator": self.accelerator.as_dict(),
            "seed": self.seed,
            "isa": self.isa,
            "tflite_kernels": self.tflite_kernels,
        }


@dataclass(frozen=True)
class SweepSpec:
    """A loaded spec: ``source`` the file, ``models`` (as written, resolved to paths in
    ``model_paths``), ``data`` / ``calib`` (built-in names or paths; ``calib`` None: the
    data), ``jobs`` the points in order (deduplicated by settings)."""

    source: Path
    models: tuple[str, ...]
    model_paths: dict
    data: str
    calib: str | None
    batch_size: int
    results: Path
    jobs: tuple[Job, ...]
    axes: dict
    filter: str | None = None
    duplicates: int = 0


def _data_ref(value: str, base: Path) -> str:
    """A data reference: a built-in name as it is, a path relative to the spec's folder."""
    from hwsim.data import BUILTIN

    if value in BUILTIN:
        return value
    p = Path(value)
    return str(p if p.is_absolute() else base / p)


def load_spec(path, resolve_model: Callable[[str], Path] | None = None) -> SweepSpec:
    """Read and check the sweep spec at ``path`` (TOML, module docstring). ``resolve_model``
    maps a model as written (shipped name or path, relative paths already made relative to the
    spec's folder) to its file (default: the path itself). Raises :class:`SpecError` naming
    the file and key for an unreadable file, an unknown table / key / axis, a bad value, a
    missing model or data file, or an empty product."""
    src = Path(path)
    try:
        doc = tomllib.loads(src.read_text())
    except FileNotFoundError:
        raise SpecError(f"{src}: no such sweep spec") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{src}: cannot read the sweep spec ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{src}: not valid TOML ({e})") from None
    base = src.parent

    def err(key: str, msg: str) -> SpecError:
        return SpecError(f"{src}: {key}: {msg}")

    extra = set(doc) - {"sweep", "axes"}
    if extra:
        raise SpecError(f"{src}: unknown table(s) {sorted(extra)}; a spec has [sweep] and [axes]")
    sw = doc.get("sweep")
    if not isinstance(sw, dict):
        raise SpecError(f"{src}: no [sweep] table (it names the model and the data)")
    unknown = set(sw) - set(SWEEP_KEYS)
    if unknown:
        raise err(f"[sweep] {sorted(unknown)[0]}", f"unknown key; keys: {', '.join(SWEEP_KEYS)}")
    for key in ("model", "data"):
        if key not in sw:
            raise err(f"[sweep] {key}", "missing (required)")
    models = sw["model"] if isinstance(sw["model"], list) else [sw["model"]]
    if not models or not all(isinstance(m, str) and m for m in models):
        raise err("[sweep] model", f"expected a model name or path, or a list of them: {models!r}")
    model_paths = {}
    for m in models:
        p = Path(m)
        given = m if not (p.suffix or "/" in m) or p.is_absolute() else str(base / p)
        try:
            resolved = Path(resolve_model(given)) if resolve_model else Path(given)
        except HwsimError as e:
            raise err("[sweep] model", str(e)) from None
        if not resolved.is_file():
            raise err("[sweep] model", f"no such model file {str(resolved)!r} (from {m!r})")
        model_paths[m] = resolved
    refs = {}
    for key in ("data", "calib"):
        v = sw.get(key)
        if v is None:
            refs[key] = None
            continue
        if not isinstance(v, str) or not v:
            raise err(f"[sweep] {key}", f"expected a data set name or .npz path, got {v!r}")
        refs[key] = _data_ref(v, base)
        from hwsim.data import BUILTIN

        if refs[key] not in BUILTIN and not Path(refs[key]).is_file():
            raise err(
                f"[sweep] {key}",
                f"no built-in data set or file {v!r} (built-in: {', '.join(BUILTIN)})",
            )
    batch = sw.get("batch_size", 256)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise err("[sweep] batch_size", f"expected an integer >= 1, got {batch!r}")
    res = sw.get("results", f"{src.stem}-results")
    if not isinstance(res, str) or not res:
        raise err("[sweep] results", f"expected a folder path, got {res!r}")
    results = Path(res) if Path(res).is_absolute() else base / res
    acc_cfg = sw.get("accelerator")
    if acc_cfg is not None:
        if not isinstance(acc_cfg, str):
            raise err("[sweep] accelerator", f"expected a config file path, got {acc_cfg!r}")
        acc_cfg = Path(acc_cfg) if Path(acc_cfg).is_absolute() else base / acc_cfg
        try:
            load_config(acc_cfg)
        except HwsimError as e:
            raise err("[sweep] accelerator", str(e)) from None
    axes = _axes(doc.get("axes", {}), err)
    filt = sw.get("filter")
    check = None
    if filt is not None:
        if not isinstance(filt, str) or not filt.strip():
            raise err("[sweep] filter", f"expected an expression, got {filt!r}")
        check = compile_filter(filt, tuple(axes), lambda m: err("[sweep] filter", m))
    jobs, seen, dups = [], set(), 0
    names = list(axes)
    for model in models:
        for values in itertools.product(*(axes[n] for n in names)):
            point = dict(zip(names, values, strict=True))
            if check is not None and not check(point):
                continue
            job = _job(model, point, acc_cfg, axes, err)
            k = (model, repr(job.settings()))
            if k in seen:
                dups += 1
                continue
            seen.add(k)
            jobs.append(job)
    if not jobs:
        raise err(
            "[axes]" if check is None else "[sweep] filter",
            "the sweep has no points" + (" (the filter rejects every one)" if check else ""),
        )
    return SweepSpec(
        src, tuple(models), model_paths, refs["data"], refs["calib"], batch, results,
        tuple(jobs), axes, filt, dups,
    )  # fmt: skip


def _axes(table, err) -> dict:
    """``[axes]``: name -> non-empty list of JSON scalars, names from :data:`AXES`."""
    if not isinstance(table, dict):
        raise err("[axes]", "expected a table of axis = value or [values]")
    out = {}
    for name, v in table.items():
        if name not in AXES:
            raise err(f"[axes] {name}", f"unknown axis; axes: {', '.join(AXES)}")
        vals = v if isinstance(v, list) else [v]
        if not vals:
            raise err(f"[axes] {name}", "an empty list (the product would have no points)")
        for x in vals:
            if not isinstance(x, (str, int, float, bool)):
                raise err(f"[axes] {name}", f"values must be strings or numbers, got {x!r}")
        if len(set(map(repr, vals))) != len(vals):
            raise err(f"[axes] {name}", f"a value is listed twice: {vals!r}")
        out[name] = vals
    return out


def _job(model: str, point: dict, acc_cfg, axes: dict, err) -> Job:
    """The :class:`Job` of ``point``; a bad value raises naming its axis (alone, or the point
    when only the combination is bad)."""
    try:
        return make_job(model, point, acc_cfg)
    except HwsimError as e:
        for name, v in point.items():  # the one value that is bad on its own
            try:
                make_job(model, {name: v}, acc_cfg)
            except HwsimError as e1:
                raise err(f"[axes] {name} = {v!r}", str(e1)) from None
        raise err("[axes]", f"the point {point} is not valid: {e}") from None


def make_job(model: str, point: dict, accel_config=None, **fixed) -> Job:
    """The :class:`Job` of ``point`` (axis -> value, :data:`AXES`) on ``model``, with the
    scheme fields ``fixed`` (``compare``'s keywords; the point's win) under it; the scheme
    ``as imported`` is the model's own quantization. HwsimError for a bad value."""
    pt = dict(point)
    scheme_name = pt.pop("scheme", "per-tensor")
    array = pt.pop("array", None)
    dataflow = pt.pop("dataflow", None)
    seed = pt.pop("seed", 0)
    isa = pt.pop("isa", "exact")
    tflite_kernels = fixed.pop("tflite_kernels", None)
    accel = fixed.pop("accelerator", None)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise HwsimError(f"seed must be an integer >= 0, got {seed!r}")
    if isa not in ISA_CHOICES:
        raise HwsimError(f"isa must be one of {', '.join(ISA_CHOICES)}, got {isa!r}")
    if isa == "auto":  # resolved here, on the client: a point's figures must not depend on
        isa = resolve_isa(isa).value  # the worker that runs it (nor its key)
    if not isinstance(scheme_name, str) or (
        scheme_name not in PRESETS and scheme_name != "as imported"
    ):
        raise HwsimError(f"scheme must be one of {', '.join(PRESETS)}, got {scheme_name!r}")
    for k, v in pt.items():
        if k not in SCHEME_AXES:
            raise HwsimError(f"unknown axis {k!r}; axes: {', '.join(AXES)}")
        if isinstance(v, bool) or (k in _INT_AXES and not isinstance(v, numbers.Integral)):
            raise HwsimError(f"{k} must be an integer, got {v!r}")
    if scheme_name == "as imported":
        # the file's own quantization: the scheme axes do not apply (checked, then dropped, so
        # the points that differ only in them are one point)
        Scheme.preset("per-tensor", **{**fixed, **pt})
        scheme = None
        point = {k: v for k, v in point.items() if k not in pt}
    else:
        scheme = Scheme.preset(scheme_name, **{**fixed, **pt})
    over = {}
    if array is not None:
        over["rows"], over["cols"] = parse_array(array)
    if dataflow is not None:
        if dataflow not in [d.value for d in Dataflow]:
            raise HwsimError(
                f"dataflow must be one of {', '.join(d.value for d in Dataflow)}, got {dataflow!r}"
            )
        over["dataflow"] = dataflow
    if accel is not None:
        acc = dataclasses.replace(accel, **over) if over else accel
    else:
        acc = load_config(accel_config, **over)
    return Job(dict(point), model, scheme, acc, seed, isa, scheme_name, tflite_kernels)


_INT_AXES = ("wbits", "abits", "acc_bits", "s_max", "tile_rows", "tile_bits", "first_last_bits")

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CMP = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
}


def compile_filter(text: str, names: tuple, err) -> Callable[[dict], bool]:
    """A point filter from an expression over the axis ``names``: comparisons (``== != < <=
    > >= in``, chained), ``and or not``, arithmetic (``+ - * / // %``), numbers, strings and
    lists of them; nothing else (no calls, no attributes). ``err(message)`` builds the error
    for a syntax error or a name that is not an axis. A point's value is ``bool(expr)``."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise err(f"not a valid expression ({e.msg}): {text!r}") from None

    def check(n):
        if isinstance(n, ast.Name):
            if n.id not in names:
                raise err(f"{n.id!r} is not an axis of this sweep (axes: {', '.join(names)})")
        elif isinstance(n, ast.Constant):
            if not isinstance(n.value, (int, float, str, bool)):
                raise err(f"unsupported constant {n.value!r}")
        elif isinstance(n, ast.BinOp) and type(n.op) in _BIN:
            check(n.left), check(n.right)
        elif isinstance(n, ast.Compare) and all(type(o) in _CMP for o in n.ops):
            for c in (n.left, *n.comparators):
                check(c)
        elif isinstance(n, ast.BoolOp) or (
            isinstance(n, ast.UnaryOp) and isinstance(n.op, (ast.Not, ast.USub))
        ):
            for c in n.values if isinstance(n, ast.BoolOp) else (n.operand,):
                check(c)
        elif isinstance(n, (ast.List, ast.Tuple)):
            for c in n.elts:
                check(c)
        else:
            raise err(f"unsupported syntax {type(n).__name__} in {text!r}")

    check(tree.body)

    def ev(n, env):
        if isinstance(n, ast.Name):
            return env[n.id]
        if isinstance(n, ast.Constant):
            return n.value
        if isinstance(n, ast.BinOp):
            return _BIN[type(n.op)](ev(n.left, env), ev(n.right, env))
        if isinstance(n, ast.Compare):
            left = ev(n.left, env)
            for op, c in zip(n.ops, n.comparators, strict=True):
                right = ev(c, env)
                if not _CMP[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(n, ast.BoolOp):
            vals = (ev(c, env) for c in n.values)
            return all(vals) if isinstance(n.op, ast.And) else any(vals)
        if isinstance(n, ast.UnaryOp):
            v = ev(n.operand, env)
            return (not v) if isinstance(n.op, ast.Not) else -v
        return [ev(c, env) for c in n.elts]

    def keep(point: dict) -> bool:
        try:
            return bool(ev(tree.body, point))
        except (TypeError, ZeroDivisionError) as e:
            raise err(f"cannot evaluate {text!r} at {point}: {e}") from None

    return keep
