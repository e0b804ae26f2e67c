"""``hwsim datapath``: one convolution layer on several accumulator and register designs.

A seeded int8 layer (ReLU-like uint8 activations, int8 weights) is run on a 32-bit wrapping
accumulator (the exact reference), on 16-bit accumulators that wrap or saturate in sequential
or systolic-tile order, and through the per-sample-shift datapath; then requantized with each
scale register. The result is a plain dict (``hwsim.api.datapath`` returns it,
``hwsim.report.datapath_table`` formats it). ``hwsim demo``, the main job, is
:func:`hwsim.api.demo`.
"""

from __future__ import annotations

import time

import numpy as np

from hwsim.datapath import Accumulator, Operand, conv2d, gemm_per_sample_shift, output_stage
from hwsim.numerics import IntFormat, Overflow, ScaleKind, ScaleRegister

X_OPERAND = Operand(IntFormat(8, False), 0)
W_OPERAND = Operand(IntFormat(8, True), 0)


def demo_layer(
    seed: int = 0, batch: int = 4, channels: int = 32, size: int = 28, filters: int = 32
):
    """A seeded layer: activations uint8 (half zeros, as after ReLU), weights int8 ~ N(0, 30)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (batch, channels, size, size))
    x[rng.random(x.shape) < 0.5] = 0
    w = np.clip(np.rint(rng.normal(0, 30, (filters, channels, 3, 3))), -127, 127)
    return x.astype(np.uint8), w.astype(np.int8)


def run_demo(
    seed: int = 0,
    batch: int = 4,
    channels: int = 32,
    size: int = 28,
    filters: int = 32,
    acc_bits: int = 16,
    tile_rows: int = 16,
) -> dict:
    """Run the demo layer on every design; returns rows of counters and agreement."""
    x, w = demo_layer(seed, batch, channels, size, filters)
    designs = {
        "int32 wrap (exact)": Accumulator(32),
        f"int{acc_bits} wrap": Accumulator(acc_bits),
        f"int{acc_bits} saturate, sequential": Accumulator(
            acc_bits, Overflow.SATURATE, track_partials=True
        ),
        f"int{acc_bits} saturate, tiles of {tile_rows}": Accumulator(
            acc_bits, Overflow.SATURATE, order="tiled", tile_rows=tile_rows, track_partials=True
        ),
    }
    rows = []
    exact = None
    for name, acc in designs.items():
        t0 = time.perf_counter()
        r = conv2d(x, w, padding=1, x_operand=X_OPERAND, w_operand=W_OPERAND, acc=acc)
        dt = time.perf_counter() - t0
        if exact is None:
            exact = r.values
        rows.append(_row(name, r.values, exact, r.counters, dt))
    # per-sample shift on the weight-gradient GEMM of the same layer: dW = sum_n dY_n x_n
    n_k = x.shape[2] * x.shape[3]
    cols = x.transpose(1, 0, 2, 3).reshape(channels, batch * n_k)  # (C, N*H*W): K = samples
    rng = np.random.default_rng(seed + 1)
    dy = rng.integers(-128, 128, (batch * n_k, filters)).astype(np.int8)
    ex = gemm_per_sample_shift(cols, dy, batch, np.zeros(batch, int), x_operand=X_OPERAND)
    shifts = np.full(batch, 4)
    t0 = time.perf_counter()
    pss = gemm_per_sample_shift(
        cols,
        dy,
        batch,
        shifts,
        x_operand=X_OPERAND,
        group_acc=Accumulator(32),
        final_acc=Accumulator(acc_bits, Overflow.SATURATE),
    )
    dt = time.perf_counter() - t0
    row = _row(
        f"per-sample shift 4, int{acc_bits} final",
        pss.values << 4,
        ex.values,
        pss.final_counters,
        dt,
    )
    rows.append(row)
    scale = 255.0 / max(1, int(np.abs(exact).max()))
    outputs = {
        kind.value: output_stage(
            exact, ScaleRegister.from_real(kind, scale), out_format=IntFormat(8, True)
        )
        for kind in ScaleKind
    }
    registers = [
        {
            "register": name,
            "clamped": out.clamped,
            "differs_from_ort": int(np.count_nonzero(out.values != outputs["ort"].values)),
        }
        for name, out in outputs.items()
    ]
    return {
        "layer": {
            "x": list(x.shape),
            "w": list(w.shape),
            "padding": 1,
            "seed": seed,
            "macs": int(exact.size * channels * 9),
        },
        "accumulators": rows,
        "registers": registers,
        "real_scale": scale,
    }


def _row(name, values, exact, counters, seconds) -> dict:
    return {
        "design": name,
        "overflow_events": counters.overflow_events,
        "outputs_overflowed": counters.outputs_overflowed,
        "bits_needed": counters.bits_needed,
        "exact_outputs": float(np.mean(values == exact)) if exact.size else 1.0,
        "relative_error": float(
            np.abs(values.astype(np.int64) - exact).sum() / max(1, np.abs(exact).sum())
        ),
        "seconds": seconds,
    }
