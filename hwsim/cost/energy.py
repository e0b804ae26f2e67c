"""Energy per operation, parametric in bit width (45 nm defaults).

Sources (``../shared/REFERENCES.md``): M. Horowitz, "Computing's energy problem", ISSCC 2014,
45 nm, 0.9 V -- int8 add 0.03 pJ, int32 add 0.1 pJ, int8 multiply 0.2 pJ, int32 multiply
3.1 pJ; SRAM read of 64 bits 10 pJ (8 KB), 20 pJ (32 KB), 100 pJ (1 MB); DRAM 1.3-2.6 nJ per
64 bits. The bit-width fits are QKeras QTools' fits of the same data:
adder ``0.003125 * b`` pJ, multiplier ``0.0029948 * b^2 + 0.0010417 * b`` pJ, DRAM
``20.3125`` pJ/bit.

Contracts:

* ``add_pj(b) = add_per_bit * b``;
* ``mul_pj(bx, bw) = mul_quad * bx * bw + mul_lin * (bx + bw) / 2`` -- the QTools fit for
  ``b x b`` generalised to unequal operands (equal to it when ``bx == bw``);
* ``mac_pj(bx, bw, bacc) = mul_pj(bx, bw) + add_pj(bacc)``;
* ``sram_pj_per_bit(kib)``: Horowitz's three points per 64-bit access, interpolated linearly in
  ``log2(size)`` between them and extrapolated from the nearest segment outside;
* ``dram_pj_per_bit``: constant.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_SRAM_POINTS = ((8.0, 10.0), (32.0, 20.0), (1024.0, 100.0))  # (KiB, pJ per 64-bit read)


@dataclass(frozen=True)
class EnergyTable:
    """Energy coefficients in pJ (see the module docstring for the formulas)."""

    add_per_bit: float = 0.003125
    mul_quad: float = 0.0029948
    mul_lin: float = 0.0010417
    dram_pj_per_bit: float = 20.3125
    sram_scale: float = 1.0

    def __post_init__(self):
        for k, v in self.__dict__.items():
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"energy {k} must be a finite number >= 0, got {v!r}")

    def add_pj(self, bits: int) -> float:
        return self.add_per_bit * bits

    def mul_pj(self, bx: int, bw: int) -> float:
        return self.mul_quad * bx * bw + self.mul_lin * (bx + bw) / 2.0

    def mac_pj(self, bx: int, bw: int, bacc: int) -> float:
        return self.mul_pj(bx, bw) + self.add_pj(bacc)

    def sram_pj_per_bit(self, kib: float) -> float:
        """Read/write energy per bit of an SRAM of ``kib`` KiB."""
        if kib <= 0:
            raise ValueError(f"SRAM size must be > 0 KiB, got {kib}")
        pts = _SRAM_POINTS
        lx = math.log2(kib)
        if lx <= math.log2(pts[1][0]):
            (x0, y0), (x1, y1) = pts[0], pts[1]
        else:
            (x0, y0), (x1, y1) = pts[1], pts[2]
        t = (lx - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
        per64 = max(y0 + t * (y1 - y0), 0.1)
        return self.sram_scale * per64 / 64.0
