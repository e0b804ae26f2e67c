"""Record onnxruntime's AVX2 (non-VNNI) outputs for the eq. 16 paths ``make.py`` does not cover.

Runs onnxruntime under ``qemu-x86_64 -cpu Haswell-v4`` (user-mode emulation of an AVX2 CPU
without AVX-512 / VNNI; Debian package ``qemu-user``), which reproduces every output of
``avx2/`` that onnxruntime 1.32 recorded on a real AVX2-only AMD EPYC, bit for bit.

    python make_extra_goldens.py [OUT_DIR]     # default: avx2_extra/ next to this file

Cases: ConvInteger with int8 x and uint8 w (MLAS's U8S8 GEMM with the weights as A: NCHW pairs;
2-D, grouped, strided + SAME_LOWER, 1-D); QLinearConv on the ConvSym path (Cin % 4 == 0, all
weight zero points 0, Cout >= 16), with odd Cg and dilation, depthwise (exact) and channel
multiplier 2 (GEMM path); QGemm uint8 x int8 with bias and per-column scales; MatMulInteger
with one row (MLAS's GEMV kernel) and K = 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def _cases(rng):
    import onnx  # noqa: F401
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    def const(n, v):
        return numpy_helper.from_array(np.asarray(v), n)

    def model(node, x, inits, out_type, ms=False):
        tt = T.UINT8 if x.dtype == np.uint8 else T.INT8
        g = helper.make_graph([node], node.op_type.lower(),
                              [helper.make_tensor_value_info("x", tt, list(x.shape))],
                              [helper.make_tensor_value_info("y", out_type, None)], inits)  # fmt: skip
        ops = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
        m = helper.make_model(g, opset_imports=ops)
        m.ir_version = 8
        return m

    def hot_u8(shape):
        return rng.choice(np.array([0, 90, 200, 230, 255], np.uint8), shape)

    def hot_s8(shape):
        return rng.choice(np.array([-128, -100, -1, 0, 1, 100, 127], np.int8), shape)

    out = []
    # ConvInteger, int8 x, uint8 w
    for name, xs, ws, attrs in (
        ("convinteger_s8u8_2d", (2, 5, 7, 7), (6, 5, 3, 3), dict(pads=[1, 1, 1, 1])),
        ("convinteger_s8u8_grouped", (1, 6, 6, 6), (4, 3, 3, 3), dict(group=2, strides=[2, 2],
                                                                     auto_pad="SAME_LOWER")),
        ("convinteger_s8u8_1d", (2, 3, 9), (4, 3, 3), dict(pads=[1, 1])),
    ):  # fmt: skip
        x = hot_s8(xs)
        w = hot_u8(ws)
        node = helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], **attrs)
        inits = [const("w", w), const("xz", np.int8(-3)), const("wz", np.uint8(17))]
        out.append((name, model(node, x, inits, T.INT32), x))
    # QLinearConv, uint8 x, int8 w
    for name, xs, ws, group, attrs in (
        ("qlinearconv_convsym_c8f16", (2, 8, 6, 6), (16, 8, 3, 3), 1, dict(pads=[1, 1, 1, 1])),
        ("qlinearconv_odd_cg_dilated", (1, 6, 9, 9), (4, 3, 3, 3), 2, dict(dilations=[2, 2])),
        ("qlinearconv_depthwise", (2, 16, 7, 7), (16, 1, 3, 3), 16, dict(pads=[1, 1, 1, 1])),
        ("qlinearconv_multiplier2", (1, 8, 6, 6), (16, 1, 3, 3), 8, dict(pads=[1, 1, 1, 1])),
    ):
        x = hot_u8(xs)
        w = hot_s8(ws)
        F = ws[0]
        node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"],
                                ["y"], group=group, **attrs)  # fmt: skip
        inits = [const("xs", np.float32(0.02)), const("xz", np.uint8(128)), const("w", w),
                 const("ws", rng.uniform(0.005, 0.02, F).astype(np.float32)),
                 const("wz", np.zeros(F, np.int8)),
                 const("ys", np.float32(0.02 * 0.01 * 60 * np.sqrt(np.prod(ws[1:])))),
                 const("yz", np.uint8(128)), const("b", rng.integers(-3000, 3000, F).astype(np.int32))]  # fmt: skip
        out.append((name, model(node, x, inits, T.UINT8), x))
    # QGemm uint8 x int8, bias, per-column scales, transB
    x = hot_u8((7, 50))
    w = hot_s8((12, 50))
    node = helper.make_node("QGemm", ["x", "as", "az", "w", "bs", "bz", "c", "ys", "yz"], ["y"],
                            domain="com.microsoft", transB=1)  # fmt: skip
    inits = [const("as", np.float32(0.02)), const("az", np.uint8(3)), const("w", w),
             const("bs", rng.uniform(0.005, 0.02, 12).astype(np.float32)),
             const("bz", np.zeros(12, np.int8)),
             const("c", rng.integers(-3000, 3000, 12).astype(np.int32)),
             const("ys", np.float32(0.5)), const("yz", np.uint8(100))]  # fmt: skip
    out.append(("qgemm_u8s8_bias", model(node, x, inits, T.UINT8, ms=True), x))
    # MatMulInteger with one row (GEMV kernel) and K = 1
    for name, xs, ws in (("matmulinteger_gemv", (1, 301), (301, 5)),
                         ("matmulinteger_k1", (4, 1), (1, 3))):  # fmt: skip
        x = hot_u8(xs)
        w = hot_s8(ws)
        node = helper.make_node("MatMulInteger", ["x", "w"], ["y"])
        out.append((name, model(node, x, [const("w", w)], T.INT32), x))
    return out


def _record(out_dir):
    """(under qemu) run every model in out_dir on its input; write outputs and the CPU."""
    import onnxruntime as ort

    man = json.load(open(os.path.join(out_dir, "manifest.json")))
    for c in man["cases"]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.log_severity_level = 3
        s = ort.InferenceSession(os.path.join(out_dir, c["name"] + ".onnx"), so,
                                 providers=["CPUExecutionProvider"])  # fmt: skip
        path = os.path.join(out_dir, c["name"] + ".npz")
        with np.load(path) as z:
            x = z["in_x"]
        (y,) = s.run(None, {"x": x})
        np.savez(path, in_x=x, out_0=y)
    man["cpu"] = {"flags": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni")
                            if np.core._multiarray_umath.__cpu_features__.get(f.upper().replace("_", ""), False)],
                  "onnxruntime": ort.__version__,
                  "how": "qemu-x86_64 -cpu Haswell-v4 (user-mode emulation)"}  # fmt: skip
    json.dump(man, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)


def main(out_dir):
    import onnx

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(16)
    cases = []
    for name, m, x in _cases(rng):
        onnx.save(m, os.path.join(out_dir, name + ".onnx"))
        np.savez(os.path.join(out_dir, name + ".npz"), in_x=x)
        cases.append({"name": name, "op": m.graph.node[0].op_type})
    json.dump({"cases": cases}, open(os.path.join(out_dir, "manifest.json"), "w"), indent=1)
    subprocess.run(["qemu-x86_64", "-cpu", "Haswell-v4", sys.executable, os.path.abspath(__file__),
                    "--record", out_dir], check=True, stderr=subprocess.DEVNULL)  # fmt: skip
    print(f"{len(cases)} cases in {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--record":
        _record(sys.argv[2])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "avx2_extra"))
