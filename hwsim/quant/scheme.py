"""Quantization schemes (what the user chooses) and the quantized program (what runs).

A :class:`Scheme` is a frozen description: weight granularity and mode, activation mode, bit
widths, accumulator, scale-register kind, first/last-layer precision and per-layer overrides.
:func:`hwsim.quant.quantize` turns a float graph plus a scheme (plus calibration data when the
activation mode needs it) into a :class:`QuantProgram`: the graph with integer weights, an
:class:`ActSpec` per quantized activation tensor and a :class:`LayerSpec` per MAC layer.

Weight modes (scale/zero-point formulas of onnxruntime's ``compute_scale_zp``,
``onnxruntime/python/tools/quantization/quant_utils.py``), with ``r = max|w|`` over the tensor
or the output channel:

* ``symmetric`` (restricted range): levels ``-(2^(b-1)-1) .. 2^(b-1)-1``, ``scale = r/(2^(b-1)-1)``,
  zero point 0 -- the PSGD paper's grid;
* ``symmetric-full``: levels ``-2^(b-1) .. 2^(b-1)-1``, ``scale = 2r/(2^b-1)``, zero point 0;
* ``asymmetric``: unsigned levels ``0 .. 2^b-1`` over ``[min(w,0), max(w,0)]``,
  ``scale = (max-min)/(2^b-1)``, ``zp = round_half_even(-min/scale)``.

Activation modes:

* ``static`` -- per-tensor scale and zero point from calibration data (``calib_method = minmax`` or
  ``percentile``: the range clipped at the ``percentile``-th percentile of ``|x|`` per sign);
* ``data-free`` -- per-tensor, ranges without data: after a BatchNorm (folded into a conv) the
  range is ``[min_c(beta_c - n*|gamma_c|), max_c(beta_c + n*|gamma_c|)]`` with
  ``n = bn_sigmas`` (``data_free_range = "sound"``: a +-n sigma bound of every channel, whatever
  the sign of gamma; a following ReLU clamps it at 0), or with ``data_free_range =
  "official"`` the PSGD code's ``[0, max_c(beta_c + n*gamma_c)]`` (signed gamma) where a ReLU
  alone reads the BN output, the sound bound elsewhere; interval arithmetic through the other
  layers from the input range;
* ``dynamic`` -- per sample: a range unit finds each sample's largest integer magnitude at run
  time and the sample's register is the integer reciprocal ``qmax / range`` of eq. 17-18
  (``docs/numerics.md``; :data:`hwsim.numerics.ranges.RECIP_BITS` bits), zero point 0;
* ``shift`` -- per-sample shift (the FQT paper's hardware): a per-tensor base scale ``b`` (the
  coarsest grid) and per sample a shift ``s`` in ``[0, s_max]``, scale ``b * 2^-s`` (``s > 0``
  is finer); ``s`` is the largest shift whose register keeps the sample's integer range within
  the format (eq. 19). ``shift_base = "static"``: ``b`` calibrated, ``max(2^s_max * median
  per-sample max|x|, max|x|) / qmax`` (the typical sample at the finest shift, the largest at
  shift 0); ``"runtime"``: ``b`` from the batch's per-tensor range at run time through the
  reciprocal unit (eq. 18), as the FQT paper's per-tensor range (no calibration).

* ``token`` / ``token-shift`` -- per token: ``dynamic`` / ``shift`` with one range (and one
  register, or shift) per token instead of per sample: per row ``(n, t)`` of a ``(N, T, D)``
  tensor (over its features), per ``(n, t)`` over heads and features of an attention tensor
  ``(N, H, T, *)``, per sample for other shapes (images, logits). The seeds' per-sample
  quantization applied to tokens (the FQT paper's per-sample = per-token on a transformer);
  docs/networks.md, "Per-token schemes".

Activations whose range is non-negative (after ReLU, input images) use an unsigned format.

BatchNorm folding (``bn_fold``): ``weights`` quantizes the folded weights ``w * k`` (``k =
gamma / sqrt(var + eps)`` per output channel; the usual deployment); ``register`` quantizes the
conv's own weights ``w`` on the scheme's grid and moves ``k`` into the per-channel scale
register (effective weight scale ``s_w * k``), so a layer-wise grid stays layer-wise -- what a
model trained for layer-wise weights (PSGD) expects. ``register`` needs symmetric weights (a
negative ``k`` flips the channel's integers).
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass, field

import numpy as np

from hwsim.datapath import Accumulator, ReductionOrder
from hwsim.errors import HwsimError
from hwsim.graph.ir import Graph
from hwsim.numerics import (
    IntFormat,
    Overflow,
    RoundingMode,
    ScaleKind,
    StrEnum,
    as_kind,
    as_mode,
    check_bits,
    coerce,
    enum_values,
)
from hwsim.numerics.affine import Affine


# The quantization vocabulary. Members are their value strings (``ActMode.STATIC == "static"``,
# f-strings and JSON give the value), so a setting given or stored as a string is the member.
class WeightMode(StrEnum):
    """Weight grids (module docstring): restricted symmetric, full symmetric, asymmetric."""

    SYMMETRIC = "symmetric"
    SYMMETRIC_FULL = "symmetric-full"
    ASYMMETRIC = "asymmetric"


class Granularity(StrEnum):
    """One weight scale per tensor or per output channel."""

    TENSOR = "tensor"
    CHANNEL = "channel"


class ActMode(StrEnum):
    """How activations get their scales (module docstring). An :class:`ActSpec` has one of
    ``ACT_SPEC_MODES``: a ``data-free`` scheme's activations are ``static`` ActSpecs."""

    STATIC = "static"
    DATA_FREE = "data-free"
    DYNAMIC = "dynamic"
    SHIFT = "shift"
    TOKEN = "token"
    TOKEN_SHIFT = "token-shift"


class CalibMethod(StrEnum):
    """The range of a ``static`` activation from calibration data."""

    MINMAX = "minmax"
    PERCENTILE = "percentile"


class BnFold(StrEnum):
    """Where a folded BatchNorm's factor goes: the weights, or the scale register."""

    WEIGHTS = "weights"
    REGISTER = "register"


class DataFreeRange(StrEnum):
    """The data-free range after a BatchNorm (module docstring)."""

    SOUND = "sound"
    OFFICIAL = "official"


class NonLinear(StrEnum):
    """How a layer's non-linearities (softmax, GELU, LayerNorm) run: in float between
    DequantizeLinear and QuantizeLinear, as onnxruntime runs them, or on integers only (the
    I-BERT kernels, ``hwsim.numerics.ibert``), as an accelerator without float units."""

    FLOAT = "float"
    INTEGER = "integer"


class ShiftBase(StrEnum):
    """A ``shift`` tensor's base scale: calibrated, or found per batch at run time."""

    STATIC = "static"
    RUNTIME = "runtime"


WEIGHT_MODES = enum_values(WeightMode)
GRANULARITIES = enum_values(Granularity)
ACT_MODES = enum_values(ActMode)
ACT_SPEC_MODES = (ActMode.STATIC.value, ActMode.DYNAMIC.value, ActMode.SHIFT.value)
"""ActSpec modes: a ``data-free`` scheme's activations are ``static`` ActSpecs, a ``token`` /
``token-shift`` scheme's are ``dynamic`` / ``shift`` ActSpecs with ``per_token``."""
TOKEN_MODES = {ActMode.TOKEN.value: ActMode.DYNAMIC.value, ActMode.TOKEN_SHIFT.value: "shift"}
"""A per-token scheme's act_mode -> the range unit its ActSpecs use (per row, not per sample)."""
CALIB_METHODS = enum_values(CalibMethod)
BN_FOLDS = enum_values(BnFold)
DATA_FREE_RANGES = enum_values(DataFreeRange)
SHIFT_BASES = enum_values(ShiftBase)
NONLINEARS = enum_values(NonLinear)

PRESETS = {
    "per-tensor": dict(granularity=Granularity.TENSOR, act_mode=ActMode.STATIC),
    "per-channel": dict(granularity=Granularity.CHANNEL, act_mode=ActMode.STATIC),
    "per-sample": dict(granularity=Granularity.TENSOR, act_mode=ActMode.DYNAMIC),
    "per-sample-shift": dict(granularity=Granularity.TENSOR, act_mode=ActMode.SHIFT),
    "per-token": dict(granularity=Granularity.TENSOR, act_mode=ActMode.TOKEN),
    "per-token-shift": dict(granularity=Granularity.TENSOR, act_mode=ActMode.TOKEN_SHIFT),
    "data-free": dict(granularity=Granularity.TENSOR, act_mode=ActMode.DATA_FREE),
}
"""Named schemes: weight granularity and activation mode; everything else from the flags."""


class SchemeError(HwsimError):
    """A scheme setting out of range, named with the field and the allowed values."""


def _choice(value, enum_cls, name, allowed=None):
    """``value`` as a member of ``enum_cls``; else a SchemeError naming ``name`` and the
    allowed values."""
    return coerce(value, enum_cls, name, allowed=allowed, error=SchemeError)


# Checked readers of one field of a metadata dict (ActSpec/LayerSpec.from_dict): each error
# names where the dict belongs (``where``), the field and what was expected.
def _get(d: dict, key: str, where: str):
    if key not in d:
        raise SchemeError(f"{where}: missing field {key!r}")
    return d[key]


def _field_choice(value, enum_cls, name, where, allowed=None):
    return _choice(value, enum_cls, f"{where}: field {name!r}", allowed)


def _field_int(value, name, where, lo=None, hi=None) -> int:
    ok = not isinstance(value, bool) and (
        isinstance(value, (int, np.integer))
        or (isinstance(value, (float, np.floating)) and float(value).is_integer())
    )
    rng = (
        f" in [{lo}, {hi}]"
        if lo is not None and hi is not None
        else (f" >= {lo}" if lo is not None else "")
    )
    if not ok:
        raise SchemeError(f"{where}: field {name!r} must be an integer{rng}, got {value!r}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SchemeError(f"{where}: field {name!r} must be an integer{rng}, got {v}")
    return v


def _field_float(value, name, where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SchemeError(f"{where}: field {name!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise SchemeError(f"{where}: field {name!r} must be a finite number, got {value!r}")
    return v


def _field_bool(value, name, where) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise SchemeError(f"{where}: field {name!r} must be true or false, got {value!r}")
    return bool(value)


def _plain(value):
    """A setting as the plain value a report or file holds (an enum member's value)."""
    return value.value if isinstance(value, enum.Enum) else value


# LayerScheme's fields chosen from an enum, in the order they are checked: the quantization
# vocabulary (held as members), then the datapath's settings (held as their values, as
# ``register`` and ``rounding``: their enums are no strings)
_VOCABULARY_FIELDS = (
    ("granularity", Granularity),
    ("weight_mode", WeightMode),
    ("act_mode", ActMode),
    ("calib_method", CalibMethod),
    ("bn_fold", BnFold),
    ("data_free_range", DataFreeRange),
    ("shift_base", ShiftBase),
    ("nonlinear", NonLinear),
)
_DATAPATH_FIELDS = (("overflow", Overflow), ("order", ReductionOrder))


@dataclass(frozen=True)
class LayerScheme:
    """Settings of one MAC layer (conv/dense) and of the activation tensor it produces."""

    wbits: int = 8
    abits: int = 8
    granularity: Granularity = Granularity.TENSOR
    weight_mode: WeightMode = WeightMode.SYMMETRIC
    act_mode: ActMode = ActMode.STATIC
    calib_method: CalibMethod = CalibMethod.MINMAX
    percentile: float = 99.99
    s_max: int = 4
    bn_sigmas: float = 6.0
    acc_bits: int = 32
    overflow: str = "wrap"
    order: str = "sequential"
    tile_rows: int = 0
    tile_bits: int = 0
    register: str = "ort"
    rounding: str = "half_away"
    bn_fold: BnFold = BnFold.WEIGHTS
    data_free_range: DataFreeRange = DataFreeRange.SOUND
    shift_base: ShiftBase = ShiftBase.STATIC
    nonlinear: NonLinear = NonLinear.FLOAT

    def __post_init__(self):
        for name, lo, hi in (("wbits", 2, 16), ("abits", 2, 16), ("acc_bits", 8, 64)):
            v = getattr(self, name)
            try:
                check_bits(v, name, lo, hi)
            except (ValueError, TypeError) as e:
                raise SchemeError(str(e)) from None
        for name, enum_cls in _VOCABULARY_FIELDS:
            object.__setattr__(self, name, _choice(getattr(self, name), enum_cls, name))
        for name, enum_cls in _DATAPATH_FIELDS:
            object.__setattr__(self, name, _choice(getattr(self, name), enum_cls, name).value)
        if not (isinstance(self.tile_rows, int) and self.tile_rows >= 0):
            raise SchemeError(f"tile_rows must be an int >= 0, got {self.tile_rows!r}")
        if self.order == ReductionOrder.TILED.value and not self.tile_rows:
            raise SchemeError("order 'tiled' needs tile_rows > 0 (the rows of the array)")
        if self.tile_bits:
            try:
                check_bits(self.tile_bits, "tile_bits", 8, 64)
            except (ValueError, TypeError) as e:
                raise SchemeError(str(e)) from None
        try:
            object.__setattr__(self, "register", as_kind(self.register).value)
            object.__setattr__(self, "rounding", as_mode(self.rounding).value)
        except ValueError as e:
            raise SchemeError(f"register/rounding: {e}") from None
        if self.act_mode in TOKEN_MODES and self.rounding == RoundingMode.STOCHASTIC.value:
            raise SchemeError(
                f"act_mode {self.act_mode.value!r}: stochastic rounding draws per sample; a "
                f"per-token scheme needs a deterministic rounding (half_away, half_even, floor)"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise SchemeError(f"percentile must be in (50, 100], got {self.percentile}")
        if not (isinstance(self.s_max, int) and 0 <= self.s_max <= 16):
            raise SchemeError(f"s_max must be an int in [0, 16], got {self.s_max!r}")
        if not self.bn_sigmas > 0:
            raise SchemeError(f"bn_sigmas must be > 0, got {self.bn_sigmas}")
        if as_kind(self.register) in (ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE) and (
            self.acc_bits > 32
        ):
            raise SchemeError(
                f"a {self.register} register takes int32 input: acc_bits must be "
                f"<= 32, got {self.acc_bits}"
            )

    @property
    def accumulator(self) -> Accumulator:
        """The layer's accumulator. ``tile_rows`` (products per tile: the rows of a
        weight-stationary array) and ``tile_bits`` (the in-array partial-sum width, 0: the
        accumulator's) apply to ``order = "tiled"`` only and are ignored for ``sequential``
        (so a model-wide tiling can leave single layers sequential)."""
        tiled = self.order == ReductionOrder.TILED.value
        return Accumulator(
            bits=self.acc_bits,
            overflow=Overflow(self.overflow),
            order=ReductionOrder(self.order),
            tile_rows=self.tile_rows if tiled else 0,
            tile_bits=(self.tile_bits or None) if tiled else None,
        )

    def replace(self, **kw) -> LayerScheme:
        return dataclasses.replace(self, **kw)


@dataclass(frozen=True)
class Scheme:
    """A model-wide scheme: ``default`` for every MAC layer, ``first_last_bits`` (if set) for
    the weights and input activation of the first MAC layer and the weights of the last, and
    ``overrides`` (layer name -> dict of LayerScheme fields)."""

    name: str
    default: LayerScheme
    first_last_bits: int | None = None
    overrides: dict = field(default_factory=dict)

    @classmethod
    def preset(cls, name: str, **kw) -> Scheme:
        """A named scheme from ``PRESETS`` with LayerScheme fields ``kw`` (e.g. wbits=4)."""
        if name not in PRESETS:
            raise SchemeError(f"scheme must be one of {', '.join(PRESETS)}; got {name!r}")
        first_last = kw.pop("first_last_bits", None)
        overrides = kw.pop("overrides", None) or {}
        known = {f.name for f in dataclasses.fields(LayerScheme)}
        if set(kw) - known:
            raise SchemeError(
                f"unknown scheme field(s) {sorted(set(kw) - known)}; fields: "
                f"{', '.join(sorted(known))}, first_last_bits, overrides"
            )
        if first_last is not None:
            try:
                check_bits(first_last, "first_last_bits", 2, 16)
            except (ValueError, TypeError) as e:
                raise SchemeError(str(e)) from None
        return cls(name, LayerScheme(**{**PRESETS[name], **kw}), first_last, overrides)

    def for_layer(self, name: str, index: int, n_layers: int) -> LayerScheme:
        ls = self.default
        if self.first_last_bits is not None:
            check_bits(self.first_last_bits, "first_last_bits", 2, 16)
            if index == 0:
                ls = ls.replace(wbits=self.first_last_bits)
            if index == n_layers - 1:
                ls = ls.replace(wbits=self.first_last_bits)
        if name in self.overrides:
            try:
                ls = ls.replace(**self.overrides[name])
            except TypeError:
                known = ", ".join(f.name for f in dataclasses.fields(LayerScheme))
                raise SchemeError(
                    f"override for layer {name!r}: unknown field in "
                    f"{sorted(self.overrides[name])}; fields: {known}"
                ) from None
        return ls

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "default": {k: _plain(v) for k, v in dataclasses.asdict(self.default).items()},
            "first_last_bits": self.first_last_bits,
            "overrides": self.overrides,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scheme:
        return cls(
            d["name"],
            LayerScheme(**d["default"]),
            d.get("first_last_bits"),
            d.get("overrides") or {},
        )


@dataclass(frozen=True)
class ActSpec:
    """How one activation tensor is held as integers.

    ``mode`` ``static``: ``real = scale * (q - zero_point)``; ``dynamic``: per-sample scale
    from a range unit (eq. 17-18), zero point 0; ``shift``: per-sample ``b * 2^-s``, ``s`` in
    ``[0, s_max]`` (eq. 19), zero point 0, with the base ``b = scale`` (``base = "static"``)
    or found per batch (``"runtime"``; ``scale`` unused). ``fmt`` is the integer format of
    ``q``. ``pow2``: every scale of the tensor is a power of two (for ``pow2`` registers).
    """

    mode: ActMode
    fmt: IntFormat
    scale: float = 1.0
    zero_point: int = 0
    s_max: int = 0
    pow2: bool = False
    base: ShiftBase = ShiftBase.STATIC
    per_token: bool = False
    """``dynamic`` / ``shift``: one range per token (per row of the token axes, see the module
    docstring) instead of per sample."""
    qonnx_rounding: str | None = None
    """``static`` only, a float tensor quantized by a QONNX ``Quant`` (the graph input):
    ``q = int_quant(x, scale, zero_point, bits, signed, narrow=0, mode)`` with this
    ``rounding_mode`` (:func:`hwsim.numerics.qonnx.int_quant`: float32 ``x / scale + zp``,
    clamped, rounded by the mode) instead of half to even. None: the default rounding."""
    bipolar: bool = False
    """``static`` only, a QONNX ``BipolarQuant`` of a float tensor: ``q = +1`` where
    ``x >= 0`` else ``-1`` (:func:`hwsim.numerics.qonnx.bipolar_quant`), zero point 0."""

    def __post_init__(self):
        object.__setattr__(self, "mode", _choice(self.mode, ActMode, "mode", ACT_SPEC_MODES))
        object.__setattr__(self, "base", _choice(self.base, ShiftBase, "base"))
        if self.per_token and self.mode is ActMode.STATIC:
            raise SchemeError("per_token needs a 'dynamic' or 'shift' ActSpec, not 'static'")
        if (self.qonnx_rounding is not None or self.bipolar) and self.mode is not ActMode.STATIC:
            raise SchemeError("qonnx_rounding / bipolar need a 'static' ActSpec")
        if self.qonnx_rounding is not None:
            from hwsim.numerics.qonnx import parse_rounding

            try:
                r = parse_rounding(self.qonnx_rounding)
            except ValueError as e:
                raise SchemeError(f"qonnx_rounding: {e}") from None
            object.__setattr__(self, "qonnx_rounding", r.value)
        if self.bipolar and (self.qonnx_rounding is not None or self.zero_point != 0):
            raise SchemeError("a bipolar ActSpec has no rounding mode and zero point 0")

    @property
    def affine(self) -> Affine:
        """The tensor's grid as an :class:`~hwsim.numerics.affine.Affine` (a static tensor's
        quantization; a shift tensor's static base grid)."""
        return Affine(float(np.float32(self.scale)), self.zero_point, self.fmt)

    def as_dict(self) -> dict:
        d = {
            "mode": self.mode.value,
            "bits": self.fmt.bits,
            "signed": self.fmt.signed,
            "scale": self.scale,
            "zero_point": self.zero_point,
            "s_max": self.s_max,
            "pow2": self.pow2,
            "base": self.base.value,
        }
        if self.per_token:  # absent: per sample (files written before per-token schemes)
            d["per_token"] = True
        if self.qonnx_rounding is not None:  # absent: the default rounding
            d["qonnx_rounding"] = self.qonnx_rounding
        if self.bipolar:
            d["bipolar"] = True
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "activation") -> ActSpec:
        """An ActSpec from its ``as_dict`` form (a file's metadata), every field checked:
        ``mode`` one of ``ACT_SPEC_MODES``, ``bits`` in [2, 16], ``signed``/``pow2`` bools,
        ``scale`` a finite number > 0, ``zero_point`` an int within the format (0 unless
        ``static``), ``s_max`` an int in [0, 16] (as LayerScheme). A bad field is a
        SchemeError naming ``where`` (e.g. ``tensor 'x'``), the field and what was expected."""
        if not isinstance(d, dict):
            raise SchemeError(f"{where}: expected an object of fields, got {d!r}")
        mode = _field_choice(_get(d, "mode", where), ActMode, "mode", where, ACT_SPEC_MODES)
        bits = _field_int(_get(d, "bits", where), "bits", where, 2, 16)
        signed = _field_bool(_get(d, "signed", where), "signed", where)
        fmt = IntFormat(bits, signed)
        scale = _field_float(_get(d, "scale", where), "scale", where)
        if not scale > 0:
            raise SchemeError(f"{where}: field 'scale' must be a finite number > 0, got {scale!r}")
        zp = _field_int(_get(d, "zero_point", where), "zero_point", where, fmt.min, fmt.max)
        if mode is not ActMode.STATIC and zp != 0:
            raise SchemeError(
                f"{where}: field 'zero_point' must be 0 for mode {mode.value!r}, got {zp}"
            )
        s_max = _field_int(_get(d, "s_max", where), "s_max", where, 0, 16)
        pow2 = _field_bool(d.get("pow2", False), "pow2", where)
        if mode is ActMode.SHIFT and "base" not in d:
            # files before issue 12 held the finest grid with shifts k > 0 coarser
            raise SchemeError(
                f"{where}: field 'base' is missing: a shift tensor written before the one shift "
                f"convention (s > 0 finer, scale = the coarsest grid); quantize the model again"
            )
        base = _field_choice(d.get("base", ShiftBase.STATIC), ShiftBase, "base", where)
        per_token = _field_bool(d.get("per_token", False), "per_token", where)
        if per_token and mode is ActMode.STATIC:
            raise SchemeError(f"{where}: field 'per_token' needs mode 'dynamic' or 'shift'")
        rounding = d.get("qonnx_rounding")
        if rounding is not None and not isinstance(rounding, str):
            raise SchemeError(f"{where}: field 'qonnx_rounding' must be a string, got {rounding!r}")
        bipolar = _field_bool(d.get("bipolar", False), "bipolar", where)
        try:
            return cls(mode, fmt, scale, zp, s_max, pow2, base, per_token, rounding, bipolar)
        except SchemeError as e:
            raise SchemeError(f"{where}: {e}") from None


@dataclass(frozen=True)
class LayerSpec:
    """Datapath settings of one layer: accumulator, scale-register kind, pow2 rounding."""

    acc: Accumulator = Accumulator()
    register: ScaleKind = ScaleKind.ORT
    rounding: RoundingMode = RoundingMode.HALF_AWAY
    nonlinear: NonLinear = NonLinear.FLOAT
    """Softmax / GELU / LayerNorm of this node: float islands or the integer-only kernels."""

    def __post_init__(self):
        object.__setattr__(self, "nonlinear", _choice(self.nonlinear, NonLinear, "nonlinear"))

    def as_dict(self) -> dict:
        d = self._fields()
        if self.nonlinear is NonLinear.INTEGER:  # absent: float (files before issue 15)
            d["nonlinear"] = self.nonlinear.value
        return d

    def _fields(self) -> dict:
        return {
            "acc_bits": self.acc.bits,
            "overflow": self.acc.overflow.value,
            "order": self.acc.order.value,
            "tile_rows": self.acc.tile_rows,
            "tile_bits": self.acc.tile_format.bits,
            "register": self.register.value,
            "rounding": self.rounding.value,
        }

    @classmethod
    def from_dict(cls, d: dict, where: str = "layer") -> LayerSpec:
        """A LayerSpec from its ``as_dict`` form (a file's metadata), with LayerScheme's rules:
        ``acc_bits`` an int in [8, 64] (<= 32 for a ``tflite*`` register), ``overflow``,
        ``order`` (absent: ``sequential``), ``register`` and ``rounding`` from their value
        lists; ``tile_rows`` (> 0) and ``tile_bits`` (0 or absent: ``acc_bits``; else [8, 64])
        for ``order = "tiled"``, ignored for ``sequential`` (docs/networks.md). A bad field is
        a SchemeError naming ``where`` (e.g. ``layer 'conv'``), the field and what was
        expected."""
        if not isinstance(d, dict):
            raise SchemeError(f"{where}: expected an object of fields, got {d!r}")
        acc_bits = _field_int(_get(d, "acc_bits", where), "acc_bits", where, 8, 64)
        overflow = _field_choice(_get(d, "overflow", where), Overflow, "overflow", where)
        order = d.get("order", ReductionOrder.SEQUENTIAL)  # absent before issue 12
        order = _field_choice(order, ReductionOrder, "order", where)
        register = _field_choice(_get(d, "register", where), ScaleKind, "register", where)
        rounding = _field_choice(_get(d, "rounding", where), RoundingMode, "rounding", where)
        if register in (ScaleKind.TFLITE, ScaleKind.TFLITE_SINGLE) and acc_bits > 32:
            raise SchemeError(
                f"{where}: field 'acc_bits': a {register.value} register takes int32 input: "
                f"acc_bits must be <= 32, got {acc_bits}"
            )
        tiled = order is ReductionOrder.TILED
        if tiled:
            tile_rows = _field_int(d.get("tile_rows", 0), "tile_rows", where, 0, None)
            if not tile_rows:
                raise SchemeError(
                    f"{where}: field 'tile_rows' must be > 0 for order 'tiled' (the rows "
                    f"of the array), got {tile_rows}"
                )
            tile_bits = _field_int(d.get("tile_bits") or 0, "tile_bits", where, 0, 64)
            if tile_bits and tile_bits < 8:
                raise SchemeError(
                    f"{where}: field 'tile_bits' must be 0 (the accumulator's width) or in "
                    f"[8, 64] bits, got {tile_bits}"
                )
            acc = Accumulator(
                bits=acc_bits,
                overflow=overflow,
                order=ReductionOrder.TILED,
                tile_rows=tile_rows,
                tile_bits=tile_bits or acc_bits,
            )
        else:  # tile_rows / tile_bits are ignored where the order is sequential
            acc = Accumulator(bits=acc_bits, overflow=overflow)
        nonlinear = _field_choice(d.get("nonlinear", "float"), NonLinear, "nonlinear", where)
        return cls(acc, register, rounding, nonlinear)


@dataclass
class QuantProgram:
    """A graph ready for the integer executor: integer weights on its MAC nodes
    (``Node.wq``, ``Node.bias_q`` may be None: then the bias is quantized at run time with the
    input's scale), ``acts`` for every quantized tensor, ``layers`` by node name (absent: the
    default LayerSpec, onnxruntime's semantics), and the scheme it came from (None for an
    imported QDQ model)."""

    graph: Graph
    acts: dict[str, ActSpec]
    layers: dict[str, LayerSpec]
    scheme: Scheme | None = None
    default_layer: LayerSpec = LayerSpec()

    def layer(self, name: str) -> LayerSpec:
        return self.layers.get(name, self.default_layer)

    def describe(self) -> dict:
        """The settings a report shows: scheme and per-layer widths/register/accumulator."""
        return {
            "scheme": self.scheme.as_dict() if self.scheme else {"name": "imported-qdq"},
            "layers": {k: v.as_dict() for k, v in self.layers.items()},
        }
