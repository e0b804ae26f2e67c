"""The integer datapath: GEMM and convolution on emulated accumulators, per-sample-shift
accumulation, and the output stage. See ``docs/numerics.md`` for the equations."""

from hwsim.datapath.config import (
    AccResult,
    Accumulator,
    Counters,
    Operand,
    ReductionOrder,
    signed_bits,
)
from hwsim.datapath.conv import conv2d, conv_output_size
from hwsim.datapath.engines import ENGINES, ort_available
from hwsim.datapath.gemm import PerSampleShiftResult, gemm, gemm_per_sample_shift
from hwsim.datapath.output import OutputResult, add_bias, output_stage

__all__ = [
    "ENGINES",
    "AccResult",
    "Accumulator",
    "Counters",
    "Operand",
    "OutputResult",
    "PerSampleShiftResult",
    "ReductionOrder",
    "conv2d",
    "conv_output_size",
    "gemm",
    "gemm_per_sample_shift",
    "ort_available",
    "add_bias",
    "output_stage",
    "signed_bits",
]
