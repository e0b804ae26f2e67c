"""End-to-end speed: hwsim running a W8A8 model against onnxruntime running the same QDQ file.

Models: the shipped ``rescnn`` (digits, 1x8x8) and a larger CNN with random weights on
CIFAR-sized inputs (3x32x32: conv-BN-ReLU stem, two residual blocks, strided convs, global
average pooling, dense). Each is quantized by hwsim (per-tensor, W8A8, int32 wrapping
accumulators, ``ort`` registers) and saved; that file is a plain QDQ model, so onnxruntime
(default session options: QDQ fused into its integer kernels) runs exactly the same network.
Same batch, same thread count, one process. Times are medians over ``--repeat`` runs after a
warm-up run, each run on fresh inputs.

Three figures per model: onnxruntime, hwsim's integer executor alone (what the emulated
accelerator computes), and ``hwsim run`` (integer run + float reference run + per-layer SQNR
and counters, i.e. the whole report). Ratios > 1 mean hwsim is faster.

    python benchmarks/network.py [--batch 256] [--repeat 5] [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def cifar_cnn(seed: int = 0):
    """A random-weight residual CNN for 3x32x32 inputs (float ONNX)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name, x, cin, cout, stride=1, bn=True, relu=True):
        w = (rng.normal(0, np.sqrt(2.0 / (cin * 9)), (cout, cin, 3, 3))).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"{name}_w"))
        nodes.append(
            helper.make_node(
                "Conv",
                [x, f"{name}_w"],
                [f"{name}_c"],
                name=name,
                pads=[1, 1, 1, 1],
                strides=[stride, stride],
            )
        )
        y = f"{name}_c"
        if bn:
            for p, v in (
                ("g", rng.uniform(0.5, 1.5, cout)),
                ("b", rng.normal(0, 0.1, cout)),
                ("m", rng.normal(0, 0.1, cout)),
                ("v", rng.uniform(0.5, 1.5, cout)),
            ):
                inits.append(numpy_helper.from_array(v.astype(np.float32), f"{name}_{p}"))
            nodes.append(
                helper.make_node(
                    "BatchNormalization",
                    [y] + [f"{name}_{p}" for p in "gbmv"],
                    [f"{name}_bn"],
                    name=f"{name}_bn",
                )
            )
            y = f"{name}_bn"
        if relu:
            nodes.append(helper.make_node("Relu", [y], [f"{name}_r"], name=f"{name}_relu"))
            y = f"{name}_r"
        return y

    def block(name, x, c):
        h = conv(f"{name}a", x, c, c)
        h = conv(f"{name}b", h, c, c, relu=False)
        nodes.append(helper.make_node("Add", [x, h], [f"{name}_s"], name=f"{name}_add"))
        nodes.append(helper.make_node("Relu", [f"{name}_s"], [f"{name}_o"], name=f"{name}_relu"))
        return f"{name}_o"

    y = conv("stem", "input", 3, 32)
    y = block("b1", y, 32)
    y = conv("down1", y, 32, 64, stride=2)
    y = block("b2", y, 64)
    y = conv("down2", y, 64, 128, stride=2)
    nodes.append(helper.make_node("GlobalAveragePool", [y], ["gap"], name="gap"))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"))
    wf = rng.normal(0, 0.1, (10, 128)).astype(np.float32)
    inits += [
        numpy_helper.from_array(wf, "fc_w"),
        numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"),
    ]
    nodes.append(
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)
    )
    g = helper.make_graph(
        nodes,
        "cifar_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def median_time(fn, inputs) -> float:
    fn(inputs[0])  # warm-up (JIT, session caches)
    ts = []
    for x in inputs[1:]:
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench(name, float_model, calib_x, make_x, batch, repeat, threads):
    import onnxruntime as ort

    from hwsim.api import run_program
    from hwsim.data import Dataset
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize
    from hwsim.quant.store import load, save

    with tempfile.TemporaryDirectory() as d:
        fpath = Path(d) / f"{name}.onnx"
        qpath = Path(d) / f"{name}_w8a8.onnx"
        import onnx

        onnx.save(float_model, fpath) if not isinstance(float_model, (str, Path)) else None
        src = float_model if isinstance(float_model, (str, Path)) else fpath
        program = quantize(
            import_model(src), Scheme.preset("per-tensor"), Dataset("calib", calib_x, None), float_run=run_float
        )
        save(program, qpath)
        program = load(qpath)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(qpath), so, providers=["CPUExecutionProvider"])
        inputs = [make_x(i) for i in range(repeat + 1)]
        t_ort = median_time(lambda x: sess.run(None, {"input": x}), inputs)
        ex = IntegerExecutor(program)
        t_int = median_time(lambda x: ex.output(ex.run(x, keep_all=False)), inputs)
        t_run = median_time(lambda x: run_program(program, Dataset("b", x, None), batch), inputs)
        # the same numbers? (the benchmark is only meaningful if hwsim computes the same thing)
        same = bool(
            np.array_equal(
                sess.run(None, {"input": inputs[0]})[0],
                ex.output(ex.run(inputs[0], keep_all=False)),
            )
        )
    macs = sum(
        int(r.macs) for r in run_program(program, Dataset("b", inputs[0][:1], None), 1)[0].layers
    )
    rows = []
    for what, t in (("integer executor", t_int), ("hwsim run (+float ref, report)", t_run)):
        rows.append(
            {
                "name": f"{name} {what}",
                "batch": batch,
                "macs_per_sample": macs,
                "hwsim_samples_per_s": batch / t,
                "reference": "onnxruntime QDQ (fused)",
                "reference_samples_per_s": batch / t_ort,
                "ratio": t_ort / t,
                "bit_exact_vs_ort": same,
            }
        )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    from hwsim.data import load_data

    rng = np.random.default_rng(1)
    digits = load_data("digits-train").x
    rows = bench(
        "rescnn",
        "models/rescnn.onnx",
        digits,
        lambda i: digits[rng.integers(0, len(digits), args.batch)],
        args.batch,
        args.repeat,
        args.threads,
    )
    calib = rng.normal(0, 1, (64, 3, 32, 32)).astype(np.float32)
    rows += bench(
        "cifar_cnn",
        cifar_cnn(),
        calib,
        lambda i: rng.normal(0, 1, (args.batch, 3, 32, 32)).astype(np.float32),
        args.batch,
        args.repeat,
        args.threads,
    )
    print(f"batch {args.batch}, {args.threads} threads, median of {args.repeat} runs")
    hdr = f"{'case':<48}{'hwsim/s':>10}{'ort/s':>10}{'ratio':>8}{'exact':>7}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(
            f"{r['name']:<48}{r['hwsim_samples_per_s']:>10.0f}"
            f"{r['reference_samples_per_s']:>10.0f}{r['ratio']:>8.2f}"
            f"{str(r['bit_exact_vs_ort']):>7}"
        )
    if args.json:
        from hwsim.io import atomic_write_text

        atomic_write_text(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
