"""Datapath speed, side by side with onnxruntime and numpy, in one run.

Conv (N=8, C=64, 56x56) x (64, 64, 3, 3), pad 1 (925 M MACs), and its im2col GEMM
(M=25088, K=576, N=64). Every engine is timed the same way: a fresh input each call (a pool of
distinct inputs, cycled), warm-up calls excluded, median of ``--repeat`` calls, the same thread
count (``--threads``) for Numba, onnxruntime and BLAS.

    python benchmarks/datapath.py [--repeat 5] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

# (hwsim case, reference, minimum ratio hwsim / reference) on this benchmark's machine
TARGETS = (
    ("conv int32 (uint8 x int8)", "ort QLinearConv int8 x int8", 1.0),
    ("conv int32 (uint8 x int8)", "ort QLinearConv uint8 x int8", 0.5),
    # issue 16: the 16-bit saturating datapath in hardware order >= 0.25x the 32-bit path
    ("conv int16 saturating, sequential", "conv int32 (uint8 x int8)", 0.25),
    ("gemm int16 saturating, sequential", "gemm int32 (int8 x int8)", 0.25),
)


def _set_threads(n: int) -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(n)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pool", type=int, default=3, help="distinct inputs cycled through")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    _set_threads(args.threads)

    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    from hwsim.datapath import Accumulator, Operand, conv2d, gemm, gemm_per_sample_shift
    from hwsim.datapath.isa import cpu_summary
    from hwsim.io import atomic_write_text
    from hwsim.numerics import IntFormat, Overflow

    N, C, H, W, F, k = args.batch, 64, 56, 56, 64, 3
    M, K = N * H * W, C * k * k
    macs = M * K * F
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (F, C, k, k)).astype(np.int8)
    w2 = np.ascontiguousarray(w.reshape(F, K).T)
    xs_u8 = [rng.integers(0, 256, (N, C, H, W)).astype(np.uint8) for _ in range(args.pool)]
    xs_s8 = [rng.integers(-128, 128, (N, C, H, W)).astype(np.int8) for _ in range(args.pool)]
    cols_s8 = [rng.integers(-128, 128, (M, K)).astype(np.int8) for _ in range(args.pool)]
    U8, S8 = Operand(IntFormat(8, False), 128), Operand(IntFormat(8, True), 0)

    def timed(fn, inputs) -> float:
        for i in range(2):
            fn(inputs[i % len(inputs)])
        ts = []
        for i in range(args.repeat):
            x = inputs[(i + 2) % len(inputs)]
            t0 = time.perf_counter()
            fn(x)
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    def rounds(fn_a, in_a, fn_b, in_b, n=7) -> float:
        """Median over ``n`` rounds of ``timed(b) / timed(a)``, the two timed back to back in
        each round: a neighbour's load that drifts during the run skews both sides of a round
        alike (single alternating calls would not be fair either: onnxruntime's threads spin
        after a run with default options and would steal the next call's cores)."""
        return statistics.median(timed(fn_b, in_b) / timed(fn_a, in_a) for _ in range(n))

    def qlinearconv(x_dtype):
        xt = T.UINT8 if x_dtype == np.uint8 else T.INT8
        zx = np.array(128 if x_dtype == np.uint8 else 0, x_dtype)
        inits = [
            numpy_helper.from_array(np.asarray(v), n)
            for n, v in [
                ("xs", np.float32(0.02)),
                ("xz", zx),
                ("w", w),
                ("ws", np.float32(0.01)),
                ("wz", np.int8(0)),
                ("ys", np.float32(4.0)),
                ("yz", zx),
            ]
        ]
        node = helper.make_node(
            "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1]
        )
        g = helper.make_graph(
            [node],
            "c",
            [helper.make_tensor_value_info("x", xt, [N, C, H, W])],
            [helper.make_tensor_value_info("y", xt, None)],
            inits,
        )
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = 8
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {"x": x})

    gmacs = lambda seconds, n=macs: n / seconds / 1e9  # noqa: E731
    ref = {}
    sessions = {"ort QLinearConv int8 x int8": (qlinearconv(np.int8), xs_s8),
                "ort QLinearConv uint8 x int8": (qlinearconv(np.uint8), xs_u8)}  # fmt: skip
    for name, (fn, inputs) in sessions.items():
        ref[name] = gmacs(timed(fn, inputs))
    cols_f32 = [c.astype(np.float32) for c in cols_s8]
    w2f = w2.astype(np.float32)
    ref["numpy float32 matmul"] = gmacs(timed(lambda c: c @ w2f, cols_f32))
    rows = 1024  # numpy's integer matmul has no BLAS (~1 GMAC/s): timed on a row slice
    cols_i64 = [c[:rows].astype(np.int64) for c in cols_s8]
    w2i = w2.astype(np.int64)
    ref["numpy int64 matmul"] = gmacs(timed(lambda c: c @ w2i, cols_i64), rows * K * F)

    sat16 = Accumulator(16, Overflow.SATURATE)
    hw = {}
    hw["conv int32 (uint8 x int8)"] = gmacs(
        timed(lambda x: conv2d(x, w, padding=1, x_operand=U8), xs_u8)
    )
    hw["conv int32 (int8 x int8)"] = gmacs(
        timed(lambda x: conv2d(x, w, padding=1, x_operand=S8), xs_s8)
    )
    hw["gemm int32 (int8 x int8)"] = gmacs(timed(lambda c: gemm(c, w2, x_operand=S8), cols_s8))
    hw["conv int16 saturating, sequential"] = gmacs(
        timed(lambda x: conv2d(x, w, padding=1, x_operand=U8, acc=sat16), xs_u8)
    )
    hw["gemm int16 saturating, sequential"] = gmacs(
        timed(lambda c: gemm(c, w2, x_operand=S8, acc=sat16), cols_s8)
    )
    # per-sample shift on the layer's weight-gradient GEMM: dW (K x F) = cols^T (K x M) dY (M x F),
    # the batch (N samples of H*W positions) being the reduction dimension
    dy = rng.integers(-128, 128, (M, F)).astype(np.int8)
    cols_t = [np.ascontiguousarray(c.T) for c in cols_s8]
    shifts = np.array([i % 5 for i in range(N)])
    hw["per-sample shift (wgrad GEMM)"] = gmacs(
        timed(
            lambda c: gemm_per_sample_shift(
                c, dy, N, shifts, x_operand=S8, final_acc=Accumulator(24, Overflow.SATURATE)
            ),
            cols_t,
        )
    )

    pairs = [
        ("conv int32 (int8 x int8)", "ort QLinearConv int8 x int8"),
        ("conv int32 (uint8 x int8)", "ort QLinearConv uint8 x int8"),
        ("conv int32 (uint8 x int8)", "numpy float32 matmul"),
        ("conv int32 (uint8 x int8)", "numpy int64 matmul"),
        ("gemm int32 (int8 x int8)", "numpy float32 matmul"),
        ("gemm int32 (int8 x int8)", "numpy int64 matmul"),
        ("conv int16 saturating, sequential", "conv int32 (uint8 x int8)"),
        ("gemm int16 saturating, sequential", "gemm int32 (int8 x int8)"),
        ("per-sample shift (wgrad GEMM)", "gemm int32 (int8 x int8)"),
        ("conv int16 saturating, sequential", "ort QLinearConv uint8 x int8"),
    ]
    entries = []
    both = {**ref, **hw}
    cpu = cpu_summary()
    print(
        f"cpu: {cpu['processor']} ({cpu['machine']}); features: "
        f"{', '.join(cpu['features']) or 'none'}; onnxruntime dot product: "
        f"{cpu['onnxruntime_isa']}; {args.threads} threads"
    )
    print(
        f"conv ({N},{C},{H},{W}) x ({F},{C},{k},{k}) pad 1 = {macs / 1e6:.0f} M MACs; "
        f"{args.threads} threads; median of {args.repeat}; fresh input each call\n"
    )
    print(f"{'hwsim case':<36}{'GMAC/s':>9}   {'reference':<32}{'GMAC/s':>9}{'ratio':>9}")
    for name, refname in pairs:
        e = {
            "name": name,
            "hwsim_gmacs": round(hw[name], 2),
            "reference": refname,
            "reference_gmacs": round(both[refname], 2),
            "ratio": round(hw[name] / both[refname], 3),
        }
        entries.append(e)
        print(
            f"{name:<36}{e['hwsim_gmacs']:>9.1f}   {refname:<32}{e['reference_gmacs']:>9.1f}"
            f"{e['ratio']:>9.2f}"
        )
    targets = []
    print("\ntargets (median of 7 rounds, each timing both sides back to back)")
    fns = {
        **sessions,
        "conv int32 (uint8 x int8)": (lambda x: conv2d(x, w, padding=1, x_operand=U8), xs_u8),
        "gemm int32 (int8 x int8)": (lambda c: gemm(c, w2, x_operand=S8), cols_s8),
        "conv int16 saturating, sequential": (
            lambda x: conv2d(x, w, padding=1, x_operand=U8, acc=sat16),
            xs_u8,
        ),
        "gemm int16 saturating, sequential": (
            lambda c: gemm(c, w2, x_operand=S8, acc=sat16),
            cols_s8,
        ),
    }
    for name, refname, want in TARGETS:
        ratio = rounds(*fns[name], *fns[refname])
        met = ratio >= want
        targets.append(
            {
                "name": name,
                "reference": refname,
                "target_ratio": want,
                "ratio": round(ratio, 3),
                "met": met,
            }
        )
        print(f"  {name} >= {want:g}x {refname}: {ratio:.2f}x  {'met' if met else 'missed'}")
    if args.json_path:
        report = {
            "cpu": {**cpu, "threads": args.threads},
            "results": entries,
            "targets": targets,
        }
        atomic_write_text(args.json_path, json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
