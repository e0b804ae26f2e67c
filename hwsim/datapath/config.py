"""Datapath configuration (operands, accumulators, reduction order) and its counters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields

import numpy as np

from hwsim.numerics import IntFormat, Overflow, check_bits, coerce

OPERAND_BITS = (2, 16)
ACCUMULATOR_BITS = (8, 64)


class ReductionOrder(enum.Enum):
    """The order in which a saturating accumulator adds the K products of one output.

    (Wrapping accumulators are order-free: the result is the exact sum wrapped once.)
    """

    SEQUENTIAL = "sequential"
    """``acc <- ovf(acc + p_k)`` for ``k = 0 .. K-1``, one product at a time (an output-stationary
    PE, or a CPU loop)."""
    TILED = "tiled"
    """K split into consecutive tiles of ``tile_rows`` products (the rows of a weight-stationary
    systolic column). Each tile's partial sum flows down the column in a register of the
    accumulator's width and overflow mode, ``t <- ovf(t + p_k)``; at the bottom it is added to
    the accumulator, ``acc <- ovf(acc + t)``, tile after tile."""


@dataclass(frozen=True)
class Operand:
    """A GEMM/conv operand: integer ``format`` (2..16 bits) and zero point(s).

    The MAC array multiplies ``(q - zero_point)``, one bit wider than ``q`` (ONNX / onnxruntime
    semantics); padding in a convolution holds the zero point, so it contributes 0.
    ``zero_point`` is a scalar, or for weights a 1-D vector with one entry per output channel.
    """

    format: IntFormat = IntFormat(8, True)
    zero_point: object = 0

    def __post_init__(self) -> None:
        if not isinstance(self.format, IntFormat):
            raise ValueError(f"Operand.format must be an IntFormat, got {self.format!r}")
        check_bits(self.format.bits, "Operand.format.bits", *OPERAND_BITS)
        zp = np.asarray(self.zero_point)
        if zp.ndim > 1:
            raise ValueError("Operand.zero_point must be a scalar or a 1-D per-channel vector")
        self.format.check(zp, "Operand.zero_point")
        object.__setattr__(self, "zero_point", zp.astype(np.int64) if zp.ndim else int(zp))

    @property
    def max_abs(self) -> int:
        """Largest ``|q - zero_point|`` any value of the format can give (0 for an empty
        per-channel zero point: no channels, no products)."""
        zp = np.asarray(self.zero_point)
        if zp.size == 0:
            return 0
        return int(max(np.max(np.abs(self.format.max - zp)), np.max(np.abs(self.format.min - zp))))


@dataclass(frozen=True)
class Accumulator:
    """An accumulator register: ``bits`` in [8, 64], ``overflow`` rule, ``signed`` (default),
    and, for saturating accumulators, the ``order`` of the reduction (``tile_rows`` > 0 for
    ``TILED``). ``track_partials`` asks for the extreme partial sums in that order (costs a
    pass in reduction order; see :class:`Counters`).

    ``tile_bits`` (``TILED`` only; ``None``: the accumulator's ``bits``) is the width of the
    in-array tile register, which may differ from the accumulator's (Gemmini keeps 20-bit
    partial sums in the array and accumulates them in 32 bits). It has the accumulator's
    signedness and overflow rule (eq. 10 of ``docs/numerics.md``)."""

    bits: int = 32
    overflow: Overflow = Overflow.WRAP
    signed: bool = True
    order: ReductionOrder = ReductionOrder.SEQUENTIAL
    tile_rows: int = 0
    track_partials: bool = False
    tile_bits: int | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits, "Accumulator.bits", *ACCUMULATOR_BITS)
        if self.tile_bits is not None:
            check_bits(self.tile_bits, "Accumulator.tile_bits", *ACCUMULATOR_BITS)
            if self.tile_bits == self.bits:
                object.__setattr__(self, "tile_bits", None)
        for name, enum_cls in (("overflow", Overflow), ("order", ReductionOrder)):
            value = coerce(getattr(self, name), enum_cls, f"Accumulator.{name}")
            object.__setattr__(self, name, value)
        if self.order is ReductionOrder.TILED and not (
            isinstance(self.tile_rows, int) and self.tile_rows > 0
        ):
            raise ValueError(
                f"Accumulator.tile_rows must be > 0 for a tiled order, got {self.tile_rows!r}"
            )
        if self.order is ReductionOrder.SEQUENTIAL and self.tile_rows:
            raise ValueError("Accumulator.tile_rows is only meaningful with order=TILED")
        if self.order is ReductionOrder.SEQUENTIAL and self.tile_bits is not None:
            raise ValueError("Accumulator.tile_bits is only meaningful with order=TILED")

    @property
    def format(self) -> IntFormat:
        return IntFormat(self.bits, self.signed)

    @property
    def tile_format(self) -> IntFormat:
        """The tile register's format (``tile_bits``, else ``bits``; the accumulator's sign)."""
        return IntFormat(self.tile_bits or self.bits, self.signed)

    @property
    def tile(self) -> int:
        """Products per tile in reduction order (0: one tile of all K)."""
        return self.tile_rows if self.order is ReductionOrder.TILED else 0


@dataclass
class Counters:
    """What the datapath observed while producing one result.

    * ``macs``: multiply-accumulates performed (``outputs * K``).
    * ``overflow_events``: SATURATE -- additions whose exact result left the accumulator's
      range and was clamped (tile-level and accumulator-level additions both count);
      WRAP -- net wrap-arounds, ``sum |exact - wrapped| / 2^bits`` (a wrapping accumulator is
      order-free, so only the final value's wraps are observable); with a ``tile_bits`` other
      than ``bits``, each tile's net wraps in the tile register plus the accumulator's net
      wraps of the sum of the wrapped tiles.
    * ``tile_overflow_events``: the part of ``overflow_events`` that happened in the tile
      register (saturations of tile additions, or a separate tile register's wraps).
    * ``outputs_overflowed``: outputs with at least one event.
    * ``final_min`` / ``final_max``: extremes of the exact (unbounded) final sums; a wrapping
      accumulator is exact iff they fit.
    * ``partial_min`` / ``partial_max``: extremes of every exact partial sum in reduction order
      (tile partials and accumulator values); a saturating accumulator is exact iff they fit.
      ``None`` unless ``Accumulator.track_partials`` (and ``None`` under ``Isa.AVX2`` pairs,
      whose kernel has no per-product partial sums).
    * ``pair_saturations`` / ``outputs_pair_saturated``: under ``Isa.AVX2`` (eq. 16), the raw
      int16 product pairs that left int16 and were clamped, and the outputs with at least one.
    Extremes are ``None`` when there are no outputs (or no products, for partials).
    """

    macs: int = 0
    overflow_events: int = 0
    tile_overflow_events: int = 0
    outputs_overflowed: int = 0
    final_min: int | None = None
    final_max: int | None = None
    partial_min: int | None = None
    partial_max: int | None = None
    pair_saturations: int = 0
    outputs_pair_saturated: int = 0

    @property
    def bits_needed(self) -> int | None:
        """Signed accumulator bits that would have held every value the configuration needed
        exact: the partial-sum extremes if tracked, else the final-sum extremes."""
        lo = self.partial_min if self.partial_min is not None else self.final_min
        hi = self.partial_max if self.partial_max is not None else self.final_max
        if lo is None:
            return None
        return max(signed_bits(lo), signed_bits(hi))

    def merge(self, other: Counters) -> Counters:
        """These counters and ``other``'s (disjoint outputs of one layer) together, in place:
        counts add, extremes take the min / max."""
        for name in ("macs", "overflow_events", "tile_overflow_events", "outputs_overflowed",
                     "pair_saturations", "outputs_pair_saturated"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, f in (("final_min", min), ("final_max", max), ("partial_min", min),
                        ("partial_max", max)):  # fmt: skip
            a, b = getattr(self, name), getattr(other, name)
            setattr(self, name, b if a is None else (a if b is None else f(a, b)))
        return self

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["bits_needed"] = self.bits_needed
        return d


def signed_bits(v: int) -> int:
    """Bits of the narrowest two's-complement format holding ``v`` (at least 1)."""
    v = int(v)
    return (v.bit_length() if v >= 0 else (-v - 1).bit_length()) + 1


@dataclass
class AccResult:
    """Accumulator values (in the accumulator's format, int64, or uint64 for unsigned 64-bit)
    and the counters of the run that produced them."""

    values: np.ndarray
    counters: Counters = field(default_factory=Counters)
