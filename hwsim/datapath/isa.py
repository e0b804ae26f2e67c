"""Instruction-set semantics of the MAC array: exact integer math, or onnxruntime's x86 AVX2 dot
product (eq. 16 of ``docs/numerics.md``), and which one onnxruntime uses on this CPU.

onnxruntime's x86 integer kernels (MLAS) multiply ``uint8 x int8`` with ``vpmaddubsw`` when the
CPU has AVX2 (or AVX-512BW) but neither AVX-512 VNNI, AVX-VNNI nor AMX. That
instruction adds each pair of adjacent byte products into a *saturating int16* before
``vpmaddwd`` widens the pairs to int32, so a layer's sums can differ from exact integer math.
With VNNI (``vpdpbusd``) or AMX (``tdpbusd``) the same op is exact, as is every other operand
type pair and every real integer accelerator.

* :attr:`Isa.EXACT` -- every product and sum exact (VNNI, AMX, ARM, accelerators). Default.
* :attr:`Isa.AVX2` -- onnxruntime on an x86 CPU without VNNI/AMX, bit for bit (see
  :func:`pairs_saturate` for which layers it changes and how).
* ``"auto"`` -- :func:`resolve` picks what onnxruntime does on *this* CPU (:func:`host_isa`).
"""

from __future__ import annotations

import enum
import functools

from hwsim.numerics.enums import coerce

ISA_CHOICES = ("exact", "avx2", "auto")


class Isa(enum.Enum):
    """What the MAC array's dot product computes."""

    EXACT = "exact"
    """``sum_k (x_k - zx)(w_k - zw)`` exactly."""
    AVX2 = "avx2"
    """onnxruntime MLAS on x86 without VNNI/AMX: for uint8 activations x int8 weights,
    ``sum_j sat16(x[2j] w[2j] + x[2j+1] w[2j+1]) - zw * sum_k x_k - zx * sum_k w_k + K zx zw``
    on raw (zero-point-free) bytes, pairs taken in the kernel's packed K order (eq. 16)."""


# CPU features, as LLVM names them, under which MLAS dispatches an exact u8 x s8 kernel
# (onnxruntime/core/mlas/lib/platform.cpp: AVX512_VNNI -> *Avx512Vnni, AVX_VNNI -> *AvxVnni,
# AMX_TILE + AMX_INT8 -> *Amx)
_EXACT_FEATURES = ("avx512vnni", "avxvnni", "amx-int8")
# features under which MLAS dispatches a vpmaddubsw kernel for u8 x s8 (GemmU8S8DispatchAvx2
# with the Avx2 or Avx512Core kernels); below AVX2 it widens to int16 (MlasGemmU8X8DispatchSse,
# exact), except that MSVC builds pick the pmaddubsw MlasGemmU8S8DispatchSse41 on SSE4.1
_PMADDUBSW_FEATURES = ("avx2", "avx512bw")


@functools.cache
def host_cpu_features() -> dict[str, bool]:
    """This CPU's features as LLVM reports them (``llvmlite``, which Numba ships): the same
    CPUID bits MLAS reads, on every operating system."""
    import llvmlite.binding as llvm

    feats = llvm.get_host_cpu_features()
    return {k: bool(v) for k, v in feats.items()}


@functools.cache
def host_isa() -> Isa:
    """The dot product onnxruntime computes on this CPU: :attr:`Isa.AVX2` on x86-64 with AVX2
    (or AVX-512BW) but without AVX-512 VNNI, AVX-VNNI and AMX-INT8 (on Windows also SSE4.1
    without AVX2), else :attr:`Isa.EXACT` (ARM, VNNI/AMX machines, and older x86 CPUs, where
    MLAS widens to int16 and multiplies exactly)."""
    import platform
    import sys

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return Isa.EXACT
    f = host_cpu_features()
    if any(f.get(k) for k in _EXACT_FEATURES):
        return Isa.EXACT
    if any(f.get(k) for k in _PMADDUBSW_FEATURES):
        return Isa.AVX2
    if sys.platform == "win32" and f.get("sse4.1"):
        return Isa.AVX2
    return Isa.EXACT


def cpu_summary() -> dict:
    """The CPU facts that decide onnxruntime's integer kernels (for reports and benchmarks)."""
    import platform

    f = host_cpu_features() if platform.machine().lower() in ("x86_64", "amd64") else {}
    keys = ("avx2", "avx512bw", "avx512vnni", "avxvnni", "amx-int8")
    return {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "features": [k for k in keys if f.get(k)],
        "onnxruntime_isa": host_isa().value,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def resolve(isa) -> Isa:
    """``Isa`` from an ``Isa``, ``"exact"``, ``"avx2"`` or ``"auto"`` (this CPU's onnxruntime)."""
    if isinstance(isa, Isa):
        return isa
    if isa == "auto":
        return host_isa()
    return coerce(isa, Isa, "isa", allowed=ISA_CHOICES)


def depthwise(groups: int, filters: int, channels_per_group: int) -> bool:
    """A convolution MLAS runs on its depthwise kernels, exact on every x86 CPU: one input and
    one output channel per group (``filters == groups``, ``channels_per_group == 1``)."""
    return channels_per_group == 1 and filters == groups


def pairs_saturate(isa: Isa, x_format, w_format) -> bool:
    """True if ``isa`` sums adjacent raw products of these operand formats in saturating int16:
    :attr:`Isa.AVX2` with an unsigned activation of at most 8 bits (held in uint8) and a signed
    weight of at most 8 bits (held in int8) -- MLAS's U8S8 kernels. uint8 x uint8 widens to
    int16 (``vpmaddwd``, exact); int8 x int8 and int8 x uint8 are exact as well (measured on
    onnxruntime 1.32 under ``qemu-x86_64 -cpu Haswell``)."""
    return (
        isa is Isa.AVX2
        and not x_format.signed
        and x_format.bits <= 8
        and w_format.signed
        and w_format.bits <= 8
    )
