"""Cycles and SRAM traffic of one layer on an R x C systolic array, as SCALE-Sim v2 computes them.

A layer is a GEMM of ``Np`` output pixels (rows of the im2col matrix), ``K`` window elements
(``Fh*Fw*Cin``) and ``Mf`` filters. SCALE-Sim v2 (``scalesim-project/scale-sim-v2``,
``scalesim/compute/systolic_compute_{os,ws,is}.py``) folds the operand matrices onto the array
and, per fold, streams with a fill/drain skew; its compute cycles are (``../shared``'s
REFERENCES.md, checked against scalesim 3.0.0 in ``tests/cost``):

* output stationary (``os``): ``ceil(Np/R) * ceil(Mf/C) * (K + R + C - 2) - 1``
* weight stationary (``ws``): ``ceil(K/R) * ceil(Mf/C) * (2R + C + Np - 2) - 1``
* input stationary (``is``): ``ceil(K/R) * ceil(Np/C) * (2R + C + Mf - 2) - 1``

SRAM operand-word reads / writes per layer (each fold re-reads what it needs):

* ``os``: ifmap ``Np*K*ceil(Mf/C)``, filter ``K*Mf*ceil(Np/R)``, ofmap writes ``Np*Mf``
* ``ws``: ifmap ``Np*K*ceil(Mf/C)``, filter ``K*Mf``, ofmap writes ``Np*Mf*ceil(K/R)``
* ``is``: ifmap ``Np*K``, filter ``K*Mf*ceil(Np/C)``, ofmap writes ``Np*Mf*ceil(K/R)``

Utilisation is ``MACs / (R*C*compute_cycles)``, capped at 1 (see :func:`utilization`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Dataflow(enum.Enum):
    """What stays in the PEs: outputs, weights or inputs."""

    OS = "os"
    WS = "ws"
    IS = "is"


def as_dataflow(v) -> Dataflow:
    if isinstance(v, Dataflow):
        return v
    names = {
        "os": Dataflow.OS,
        "ws": Dataflow.WS,
        "is": Dataflow.IS,
        "output_stationary": Dataflow.OS,
        "weight_stationary": Dataflow.WS,
        "input_stationary": Dataflow.IS,
    }
    key = str(v).strip().lower()
    if key not in names:
        raise ValueError(
            f"dataflow must be one of os, ws, is (or output_stationary, "
            f"weight_stationary, input_stationary); got {v!r}"
        )
    return names[key]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _check_dims(**dims) -> None:
    for k, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive integer, got {v!r}")


@dataclass(frozen=True)
class GemmCounts:
    """Per-layer figures of one dataflow: cycles, utilisation, SRAM operand words."""

    compute_cycles: int
    macs: int
    utilization: float
    ifmap_reads: int
    filter_reads: int
    ofmap_writes: int


def compute_cycles(dataflow, rows: int, cols: int, Np: int, Mf: int, K: int) -> int:
    """SCALE-Sim v2 compute cycles of an ``Np x K`` by ``K x Mf`` layer (formulas above)."""
    df = as_dataflow(dataflow)
    _check_dims(rows=rows, cols=cols, Np=Np, Mf=Mf, K=K)
    R, C = rows, cols
    if df is Dataflow.OS:
        return _cdiv(Np, R) * _cdiv(Mf, C) * (K + R + C - 2) - 1
    if df is Dataflow.WS:
        return _cdiv(K, R) * _cdiv(Mf, C) * (2 * R + C + Np - 2) - 1
    return _cdiv(K, R) * _cdiv(Np, C) * (2 * R + C + Mf - 2) - 1


def gemm_counts(dataflow, rows: int, cols: int, Np: int, Mf: int, K: int) -> GemmCounts:
    """Cycles, utilisation and SRAM operand-word traffic of one layer."""
    df = as_dataflow(dataflow)
    cyc = compute_cycles(df, rows, cols, Np, Mf, K)
    macs = Np * Mf * K
    R, C = rows, cols
    if df is Dataflow.OS:
        ifr, flr, ofw = Np * K * _cdiv(Mf, C), K * Mf * _cdiv(Np, R), Np * Mf
    elif df is Dataflow.WS:
        ifr, flr, ofw = Np * K * _cdiv(Mf, C), K * Mf, Np * Mf * _cdiv(K, R)
    else:
        ifr, flr, ofw = Np * K, K * Mf * _cdiv(Np, C), Np * Mf * _cdiv(K, R)
    return GemmCounts(cyc, macs, utilization(macs, R, C, cyc), ifr, flr, ofw)


def utilization(macs: int, rows: int, cols: int, cycles: int) -> float:
    """``MACs / (R*C*cycles)``, at most 1. (SCALE-Sim's counts end with ``- 1``, so on tiny
    arrays -- a 1x1 array with K <= 2 -- the plain ratio would exceed 1 or divide by 0.)"""
    return min(1.0, macs / (rows * cols * max(1, cycles)))
