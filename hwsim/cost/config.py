"""The accelerator being costed: a frozen dataclass, loadable from INI/TOML or SCALE-Sim ``.cfg``.

Defaults: a 32x32 output-stationary array, 64 KiB SRAM per operand, 10 operand words per
cycle of DRAM bandwidth, 1 GHz, 8-bit operands, 32-bit accumulators, 8-bit outputs, and the
45 nm energy table of :mod:`hwsim.cost.energy`.

File format (INI; a ``.toml`` file with the same sections works on Python >= 3.11)::

    [architecture_presets]      # SCALE-Sim's section and keys, read as SCALE-Sim reads them
    ArrayHeight = 32
    ArrayWidth = 32
    IfmapSramSzkB = 64
    FilterSramSzkB = 64
    OfmapSramSzkB = 64
    Dataflow = os               # os | ws | is
    Bandwidth = 10              # DRAM words per cycle
    [run_presets]               # SCALE-Sim's
    InterfaceBandwidth = CALC   # CALC | USER (Bandwidth words a cycle, stalls)
    [hwsim]
    clock_mhz = 1000
    weight_bits = 8
    act_bits = 8
    acc_bits = 32
    out_bits = 8
    [energy]                    # any field of EnergyTable
    dram_pj_per_bit = 20.3125

A SCALE-Sim config's other sections are ignored; unknown keys in ``[hwsim]``/``[energy]`` are
errors naming the file, section and key.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from hwsim.cost.dataflow import Dataflow, as_dataflow
from hwsim.cost.energy import EnergyTable
from hwsim.errors import HwsimError


class ConfigError(HwsimError):
    """An accelerator setting out of range or a malformed config file."""


@dataclass(frozen=True)
class Accelerator:
    """A systolic-array accelerator (sizes in PEs, KiB, words, MHz, bits)."""

    rows: int = 32
    cols: int = 32
    dataflow: Dataflow = Dataflow.OS
    ifmap_sram_kb: float = 64.0
    filter_sram_kb: float = 64.0
    ofmap_sram_kb: float = 64.0
    dram_words_per_cycle: float = 10.0
    # SCALE-Sim's InterfaceBandwidth: "calc" (the interface never stalls reads; analytical) or
    # "user" (dram_words_per_cycle words a cycle per operand, stalls; a walk over the demand)
    bandwidth_mode: str = "calc"
    clock_mhz: float = 1000.0
    weight_bits: int = 8
    act_bits: int = 8
    acc_bits: int = 32
    out_bits: int = 8
    energy: EnergyTable = field(default_factory=EnergyTable)

    def __post_init__(self):
        object.__setattr__(self, "dataflow", as_dataflow(self.dataflow))
        for k in ("rows", "cols"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"array {k} must be a positive integer, got {v!r}")
        for k in (
            "ifmap_sram_kb",
            "filter_sram_kb",
            "ofmap_sram_kb",
            "dram_words_per_cycle",
            "clock_mhz",
        ):
            v = getattr(self, k)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not math.isfinite(v)
                or not v > 0
            ):
                raise ConfigError(f"{k} must be a finite number > 0, got {v!r}")
        mode = str(self.bandwidth_mode).lower()
        if mode not in ("calc", "user"):
            raise ConfigError(f"bandwidth_mode must be calc or user, got {self.bandwidth_mode!r}")
        object.__setattr__(self, "bandwidth_mode", mode)
        bw = self.dram_words_per_cycle
        if mode == "user" and bw != int(bw):
            raise ConfigError(
                f"dram_words_per_cycle must be a whole number of words in USER bandwidth mode, "
                f"got {bw!r}"
            )
        for k, lo, hi in (
            ("weight_bits", 1, 32),
            ("act_bits", 1, 32),
            ("acc_bits", 8, 64),
            ("out_bits", 1, 32),
        ):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ConfigError(f"{k} must be an integer in [{lo}, {hi}], got {v!r}")

    def replace(self, **kw) -> Accelerator:
        return dataclasses.replace(self, **kw)

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dataflow"] = self.dataflow.value
        return d


_SCALESIM_KEYS = {
    "arrayheight": ("rows", int),
    "arraywidth": ("cols", int),
    "ifmapsramszkb": ("ifmap_sram_kb", float),
    "filtersramszkb": ("filter_sram_kb", float),
    "ofmapsramszkb": ("ofmap_sram_kb", float),
    "dataflow": ("dataflow", str),
    "bandwidth": ("dram_words_per_cycle", float),
}
_HWSIM_KEYS = {
    "clock_mhz": float,
    "weight_bits": int,
    "act_bits": int,
    "acc_bits": int,
    "out_bits": int,
    "rows": int,
    "cols": int,
    "dataflow": str,
    "ifmap_sram_kb": float,
    "filter_sram_kb": float,
    "ofmap_sram_kb": float,
    "dram_words_per_cycle": float,
    "bandwidth_mode": str,
}


def _conv(path, section, key, typ, raw):
    try:
        if typ is int:
            f = float(raw)
            if f != int(f):
                raise ValueError
            return int(f)
        return typ(raw) if typ is not str else str(raw).strip().strip('"')
    except (TypeError, ValueError):
        raise ConfigError(
            f"{path}: [{section}] {key} = {raw!r} is not a valid {typ.__name__}"
        ) from None


def _sections(path: Path) -> dict[str, dict]:
    if path.suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            raise ConfigError(f"{path}: TOML needs Python >= 3.11; use the INI format") from None
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as e:
            raise ConfigError(f"{path}: {e}") from None
        return {k: v for k, v in data.items() if isinstance(v, dict)}
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    cp.optionxform = str
    try:
        with open(path) as f:
            cp.read_file(f)
    except (OSError, configparser.Error) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from None
    return {s: dict(cp[s]) for s in cp.sections()}


def load_config(path: str | os.PathLike | None = None, **overrides) -> Accelerator:
    """An Accelerator from defaults, then ``path`` (if given), then ``overrides``."""
    kw: dict = {}
    energy_kw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        secs = _sections(path)
        for key, raw in secs.get("architecture_presets", {}).items():
            m = _SCALESIM_KEYS.get(key.lower())
            if m:
                kw[m[0]] = _conv(path, "architecture_presets", key, m[1], raw)
        for key, raw in secs.get("run_presets", {}).items():
            if key.lower() == "interfacebandwidth":
                kw["bandwidth_mode"] = _conv(path, "run_presets", key, str, raw)
        for key, raw in secs.get("hwsim", {}).items():
            if key not in _HWSIM_KEYS:
                raise ConfigError(
                    f"{path}: [hwsim] unknown key {key!r}; known: {', '.join(sorted(_HWSIM_KEYS))}"
                )
            kw[key] = _conv(path, "hwsim", key, _HWSIM_KEYS[key], raw)
        efields = {f.name for f in dataclasses.fields(EnergyTable)}
        for key, raw in secs.get("energy", {}).items():
            if key not in efields:
                raise ConfigError(
                    f"{path}: [energy] unknown key {key!r}; known: {', '.join(sorted(efields))}"
                )
            energy_kw[key] = _conv(path, "energy", key, float, raw)
    kw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        if energy_kw:
            kw["energy"] = EnergyTable(**energy_kw)
        return Accelerator(**kw)
    except ValueError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from None


def parse_array(spec: str) -> tuple[int, int]:
    """``'32x16'`` -> (32, 16): rows x cols."""
    try:
        r, c = (int(v) for v in str(spec).lower().split("x"))
    except ValueError:
        raise ConfigError(f"--array must be ROWSxCOLS (e.g. 32x32), got {spec!r}") from None
    if r < 1 or c < 1:
        raise ConfigError(f"--array must have at least 1 row and 1 column, got {spec!r}")
    return r, c
