"""FQT gradient-quantization overhead on one CPU thread, beside the FQT paper's numbers.

The FQT paper's NeurIPS rebuttal (seed 001; Chen et al. 2020) times, on a single CPU core, an
N=128, C=64, H=W=56 convolution (480 ms) against its gradient quantizers: range finding 11 ms
(PTQ, per tensor) and 24 ms (PSQ and BHQ, per sample), BHQ's transform 21 ms ("sparse-dense
matrix multiplication") and finding it 3 µs. This script times, with every library on ONE thread:

* the float convolution: torch ``conv2d``, float32, (128, 64, 56, 56) x (64, 64, 3, 3), pad 1;
* PTQ's range: ``min`` and ``max`` of the (128, 64, 56, 56) float32 output gradient (numpy);
* PSQ's (and BHQ's) range: per-sample ``min`` / ``max`` of the same gradient as (128, 200704);
* BHQ's search (:func:`hwsim.train.fqt.bhq_search`: sort, cumulative sum, block scales; Python)
  and its transform (:meth:`BHQTransform.forward`, float32: one Householder reflection per block,
  applied as ``x - 2 v (v^T x)``), and the inverse transform;
* the weight-gradient GEMM of the paper's proposed hardware on hwsim's datapath (its exact engine
  chosen as usual: onnxruntime's integer kernels where they are exact, on one thread),
  :func:`hwsim.datapath.gemm_per_sample_shift`: ``x`` = the 8-bit psq-shift gradient codes
  arranged (Cout, N*H*W) = (64, 401408), ``w`` = im2col of the 8-bit input codes (N*H*W, Cin*9)
  = (401408, 576), K split into the N samples, each sample's partial sum shifted by its shift.
  That is 14.8 G MACs and a 231 MB im2col (about 1.6 GB peak for the whole script); on a
  smaller machine ``--shift-samples n`` runs n samples and scales the time by 128 / n (the GEMM
  is linear in the samples).

The gradient is synthetic: normal, each sample scaled by a log-normal factor (sigma 1), so that
ranges differ between samples as real per-sample gradients do (the paper's motivation for PSQ);
BHQ's grouping depends on it, the other timings do not.

    python benchmarks/fqt_overhead.py [--repeat 3] [--shift-samples 128] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# the paper's numbers (ms), NeurIPS 2020 rebuttal: one CPU core
PAPER_MS = {
    "conv": 480.0,
    "ptq_range": 11.0,
    "psq_range": 24.0,
    "bhq_search": 3e-3,
    "bhq_transform": 21.0,
}


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"


def _time(fn, repeat: int, warmup: int = 1) -> float:
    """Median seconds of ``repeat`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def _fmt_ms(ms: float) -> str:
    if ms < 1.0:
        return f"{ms * 1e3:.1f} µs"
    return f"{ms:.1f} ms"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="timed calls per measurement (median)")
    ap.add_argument(
        "--shift-samples",
        type=int,
        default=128,
        help="samples of the per-sample-shift GEMM run (time scaled to 128): less memory",
    )
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    if not 1 <= args.shift_samples <= 128 or args.repeat < 1:
        ap.error("--shift-samples must be in [1, 128] and --repeat >= 1")
    _one_thread()  # before numpy / numba / torch are imported

    import numpy as np
    import torch

    from hwsim.datapath import Accumulator, Operand, gemm_per_sample_shift
    from hwsim.datapath.engines import choose_engine
    from hwsim.io import atomic_write_text
    from hwsim.numerics import IntFormat
    from hwsim.train.fqt import bhq_search, encode_psq_shift

    torch.set_num_threads(1)
    N, C, H, W, F, k = 128, 64, 56, 56, 64, 3
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    wt = rng.standard_normal((F, C, k, k), dtype=np.float32)
    per_sample = rng.lognormal(0.0, 1.0, size=(N, 1, 1, 1)).astype(np.float32)
    g = rng.standard_normal((N, F, H, W), dtype=np.float32) * per_sample  # the output gradient
    g2 = g.reshape(N, -1)
    res = {}

    # float convolution (torch, float32, one thread)
    xt, wtt = torch.from_numpy(x), torch.from_numpy(wt)
    with torch.no_grad():
        res["conv"] = (
            _time(lambda: torch.nn.functional.conv2d(xt, wtt, padding=1), args.repeat) * 1e3
        )
    print(f"conv done: {res['conv']:.0f} ms", file=sys.stderr)

    # range finding
    res["ptq_range"] = _time(lambda: (g.min(), g.max()), 2 * args.repeat + 1) * 1e3
    res["psq_range"] = _time(lambda: (g2.min(axis=1), g2.max(axis=1)), 2 * args.repeat + 1) * 1e3

    # BHQ: search from the per-sample ranges, transform (float32) and inverse
    ranges = (g2.max(axis=1) - g2.min(axis=1)).astype(np.float64)
    reps = 300
    bhq_search(ranges)
    t0 = time.perf_counter()
    for _ in range(reps):
        t = bhq_search(ranges)
    res["bhq_search"] = (time.perf_counter() - t0) / reps * 1e3
    res["bhq_transform"] = _time(lambda: t.forward(g2), args.repeat) * 1e3
    ty = t.forward(g2)
    res["bhq_inverse"] = _time(lambda: t.inverse(ty), args.repeat) * 1e3
    blocks = sorted((len(b) for b in t.blocks), reverse=True)

    # per-sample-shift weight-gradient GEMM on hwsim's datapath (a fraction, scaled)
    ns = args.shift_samples
    codes, _, shifts = encode_psq_shift(g2[:ns], 8, 4, rng)  # 8-bit, s_max 4
    xg = codes.reshape(ns, F, H * W).transpose(1, 0, 2).reshape(F, ns * H * W).astype(np.int8)
    qx = np.clip(np.round(x[:ns] / (np.abs(x).max() / 127)), -127, 127).astype(np.int8)
    qp = np.pad(qx, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(qp, (k, k), axis=(2, 3))  # (n, C, H, W, k, k)
    cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5).reshape(ns * H * W, C * k * k))
    op = Operand(IntFormat(8, True))
    acc = Accumulator(bits=32)

    def shift_gemm():
        return gemm_per_sample_shift(xg, cols, ns, shifts, x_operand=op, w_operand=op,
                                     group_acc=acc, final_acc=acc, s_max=4)  # fmt: skip

    kg = H * W  # K per sample
    engine = choose_engine(8, 8, kg, int(np.abs(xg).max()), int(np.abs(cols).max()))
    part = _time(shift_gemm, max(args.repeat, 5))
    res["shift_gemm"] = part * 1e3 * (N / ns)
    macs = F * C * k * k * N * H * W

    conv = res["conv"]
    rows = [
        ("conv2d float32 (torch)", "conv"),
        ("PTQ range: per-tensor min/max", "ptq_range"),
        ("PSQ / BHQ range: per-sample min/max", "psq_range"),
        ("BHQ search (sort + grouping)", "bhq_search"),
        ("BHQ transform (T g, block Householder)", "bhq_transform"),
        ("BHQ inverse transform", "bhq_inverse"),
        ("per-sample-shift dW GEMM (hwsim)" if ns == N else
         f"per-sample-shift dW GEMM (hwsim, {ns}/{N} x {N / ns:g})", "shift_gemm"),
    ]  # fmt: skip
    print(f"FQT overhead, one thread; N={N} C={C} {H}x{W}, {F} 3x3 filters")
    print(f"{'':42s} {'here':>10s} {'paper':>10s} {'here/conv':>10s} {'paper/conv':>11s}")
    for label, key in rows:
        paper = PAPER_MS.get("psq_range" if key == "bhq_range" else key)
        p_s = _fmt_ms(paper) if paper is not None else "-"
        pf = f"{paper / PAPER_MS['conv']:.2%}" if paper is not None else "-"
        print(f"{label:42s} {_fmt_ms(res[key]):>10s} {p_s:>10s} {res[key] / conv:>10.2%} {pf:>11s}")
    print(f"BHQ blocks: {len(blocks)} (sizes {blocks[:6]}{' ...' if len(blocks) > 6 else ''}); "
          f"shift GEMM: {macs / 1e9:.1f} G MACs, {macs / (res['shift_gemm'] * 1e6):.1f} GMAC/s, "
          f"engine {engine!r}")  # fmt: skip
    print(
        "(the paper's search is C++ (3 µs); hwsim's is Python. The paper has no figure for the "
        "per-sample-shift GEMM: its hardware was never built.)"
    )

    if args.json_path:
        report = {
            "threads": 1,
            "shape": {"N": N, "C": C, "H": H, "W": W, "filters": F, "kernel": k},
            "ms": res,
            "fraction_of_conv": {key: v / conv for key, v in res.items()},
            "paper_ms": PAPER_MS,
            "paper_fraction_of_conv": {key: v / PAPER_MS["conv"] for key, v in PAPER_MS.items()},
            "shift_gemm": {
                "samples_timed": ns,
                "scaled_by": N / ns,
                "macs": macs,
                "engine": engine,
                "gmac_per_s": macs / (res["shift_gemm"] * 1e6),
            },  # fmt: skip
            "bhq_blocks": blocks,
            "versions": {"numpy": np.__version__, "torch": torch.__version__},
        }
        atomic_write_text(args.json_path, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
