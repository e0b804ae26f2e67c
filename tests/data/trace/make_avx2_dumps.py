"""Record onnxruntime's intermediate integer outputs of a QDQ ResNet-18 on an AVX2-only CPU, for
``tests/test_trace_external.py``: the case ``hwsim diff`` localises (docs/trace.md).

Model and input: ``tests/conformance/ort_goldens/archs/resnet18_pertensor.onnx`` (a reduced
ResNet-18 quantized by onnxruntime's ``quantize_static``, uint8 activations, int8 weights,
per tensor; ``make_arch_goldens.py``) on sample 0 of ``resnet18_pertensor_input.npz``.
The tensors are the ONNX tensors ``hwsim trace`` maps its integer tensors to (the
QuantizeLinear outputs), exposed as graph outputs (``hwsim.trace.external.expose_outputs``)
and run with onnxruntime's default session options:

* ``resnet18_avx2/``: under ``qemu-x86_64 -cpu Haswell-v4`` (user-mode emulation of an AVX2 CPU
  without AVX-512 / VNNI; Debian package ``qemu-user``), where MLAS adds adjacent u8 x s8
  products in a saturating int16 (``vpmaddubsw``): a dumps folder (one ``.npy`` per ONNX tensor,
  ``dumps.json``);
* ``resnet18_exact.npz``: natively on this (AVX-512 VNNI) machine, exact dot products; keys are
  the dump file names without ``.npy``. The test takes the expected first divergence from the
  two recordings, independently of hwsim.

    python tests/data/trace/make_avx2_dumps.py        # from the repository root

Checks that the native run is exact (VNNI), that qemu reports AVX2 only, and that the exposed
outputs leave the model's final output as ``make_arch_goldens.py`` recorded it (the fusions
unchanged).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
ARCHS = os.path.join(ROOT, "tests", "conformance", "ort_goldens", "archs")
MODEL = os.path.join(ARCHS, "resnet18_pertensor.onnx")
INPUT = os.path.join(ARCHS, "resnet18_pertensor_input.npz")
INDEX = 0
QEMU_CPU = "Haswell-v4"


def cpuid_flags():
    """CPU flags as CPUID reports them to this process (numpy's dispatch; sees qemu's model)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as f
    names = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
             "avx512_vnni": "AVX512VNNI"}  # fmt: skip
    return [k for k, v in names.items() if f.get(v)]


def record(inp, out):
    """Child mode (natively or under qemu): run the pickled (model bytes, feeds); pickle every
    graph output by name, the CPU flags and onnxruntime's version. Imports only onnxruntime
    and numpy (no hwsim: fast under emulation)."""
    import onnxruntime as ort

    mb, feeds = pickle.load(open(inp, "rb"))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(mb, so, providers=["CPUExecutionProvider"])
    res = {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds), strict=True)}
    pickle.dump({"outputs": res, "cpuid_flags": cpuid_flags(), "onnxruntime": ort.__version__},
                open(out, "wb"))  # fmt: skip


def run(job, qemu_cpu=None):
    with tempfile.TemporaryDirectory() as d:
        i, o = os.path.join(d, "in.pkl"), os.path.join(d, "out.pkl")
        pickle.dump(job, open(i, "wb"))
        cmd = [sys.executable, os.path.abspath(__file__), "--record", i, o]
        if qemu_cpu:
            cmd = ["qemu-x86_64", "-cpu", qemu_cpu] + cmd
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if qemu_cpu else None)
        return pickle.load(open(o, "rb"))


def qoperator_model():
    """Two QLinearConv (uint8 x int8, onnxruntime's QOperator form), seeded: the first with
    weights in [-60, 60] (no int16 pair can saturate: 2 * 255 * 60 < 2^15), the second with
    weights at the int8 extremes, on a uint8 input of near-max values."""
    import numpy as np
    from onnx import TensorProto as T
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(18)

    def const(n, v):
        return numpy_helper.from_array(np.asarray(v), n)

    x = rng.choice(np.array([0, 90, 200, 230, 255], np.uint8), (2, 8, 6, 6))
    w1 = rng.integers(-60, 61, (8, 8, 3, 3)).astype(np.int8)
    w2 = rng.choice(np.array([-128, -100, -1, 0, 1, 100, 127], np.int8), (16, 8, 3, 3))
    ys = np.float32(0.02 * 0.01 * 60 * np.sqrt(72))
    inits = [const("xs", np.float32(0.02)), const("xz", np.uint8(128)),
             const("w1", w1), const("w2", w2), const("ws", np.float32(0.01)),
             const("wz", np.int8(0)), const("ys", ys), const("yz", np.uint8(128)),
             const("b1", rng.integers(-3000, 3000, 8).astype(np.int32)),
             const("b2", rng.integers(-3000, 3000, 16).astype(np.int32))]  # fmt: skip
    nodes = [
        helper.make_node("QLinearConv", ["x", "xs", "xz", "w1", "ws", "wz", "xs", "xz", "b1"],
                         ["h"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["h", "xs", "xz", "w2", "ws", "wz", "ys", "yz", "b2"],
                         ["y"], name="conv2", pads=[1, 1, 1, 1]),
    ]  # fmt: skip
    g = helper.make_graph(nodes, "qlinearconv2",
                          [helper.make_tensor_value_info("x", T.UINT8, [None, 8, 6, 6])],
                          [helper.make_tensor_value_info("y", T.UINT8, [None, 16, 6, 6])],
                          inits)  # fmt: skip
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m, x


def record_qoperator(api, run_both):
    """The QOperator case: qlinearconv2.onnx, its input, AVX2 dumps and exact recording."""
    import numpy as np
    import onnx

    from hwsim.trace.external import dump_file, expose_outputs, write_dumps

    model, x = qoperator_model()
    path = os.path.join(HERE, "qlinearconv2.onnx")
    onnx.save(model, path)
    np.savez(os.path.join(HERE, "qlinearconv2_input.npz"), x=x)
    with tempfile.TemporaryDirectory() as d:
        man = api.trace(path, os.path.join(d, "t"), data=os.path.join(HERE,
                        "qlinearconv2_input.npz"), indices=["0:2"])  # fmt: skip
    names = {e["onnx"]: e["dtype"] for e in man["tensors"].values() if e.get("onnx")}
    exact, avx2 = run_both((expose_outputs(model, names).SerializeToString(), {"x": x}))
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    info = dict(avx2["info"], model="tests/data/trace/qlinearconv2.onnx", model_sha256=sha,
                data="tests/data/trace/qlinearconv2_input.npz", indices=[0, 1])  # fmt: skip
    write_dumps(os.path.join(HERE, "qlinearconv2_avx2"), {n: avx2["outputs"][n] for n in names},
                info)  # fmt: skip
    np.savez_compressed(os.path.join(HERE, "qlinearconv2_exact.npz"),
                        **{dump_file(n)[:-4]: exact["outputs"][n] for n in names})  # fmt: skip
    differ = [n for n in names if not np.array_equal(exact["outputs"][n], avx2["outputs"][n])]
    print(f"qlinearconv2: {len(names)} tensors; differ exact vs avx2: {differ}")


def main():
    import numpy as np
    import onnx

    sys.path.insert(0, ROOT)
    from hwsim import api
    from hwsim.trace.external import dump_file, expose_outputs, write_dumps

    with tempfile.TemporaryDirectory() as d:
        man = api.trace(MODEL, os.path.join(d, "t"), data=INPUT, indices=[str(INDEX)])
    names = [e["onnx"] for e in man["tensors"].values() if e.get("onnx")]
    x = np.load(INPUT)["x"][INDEX : INDEX + 1]
    model = onnx.load(MODEL)
    final = model.graph.output[0].name
    qemu = subprocess.run(["qemu-x86_64", "--version"], capture_output=True, text=True).stdout

    def run_both(job):
        exact = run(job)
        avx2 = run(job, QEMU_CPU)
        if "avx512_vnni" not in exact["cpuid_flags"]:
            sys.exit(f"the native run must be exact (AVX-512 VNNI); flags {exact['cpuid_flags']}")
        if set(avx2["cpuid_flags"]) != {"avx2"}:
            sys.exit(f"qemu -cpu {QEMU_CPU} reported {avx2['cpuid_flags']}, expected AVX2 only")
        avx2["info"] = {
            "generator": "tests/data/trace/make_avx2_dumps.py",
            "engine": f"onnxruntime {avx2['onnxruntime']}, default session options, CPU",
            "cpu": f"{qemu.splitlines()[0]}: qemu-x86_64 -cpu {QEMU_CPU} (CPUID flags "
            f"{avx2['cpuid_flags']}): u8 x s8 adjacent product pairs summed in saturating int16",
        }
        return exact, avx2

    exact, avx2 = run_both((expose_outputs(model, names).SerializeToString(), {"input": x}))
    for rec, which in ((exact, "exact"), (avx2, "avx2")):
        want = np.load(os.path.join(ARCHS, f"resnet18_pertensor_{which}.npz"))["output"][INDEX]
        if not np.array_equal(rec["outputs"][final][0], want):
            sys.exit(f"{which}: exposing the tensors changed the final output (fusion lost?)")
    sha = hashlib.sha256(open(MODEL, "rb").read()).hexdigest()
    info = {
        **avx2["info"],
        "model": "tests/conformance/ort_goldens/archs/resnet18_pertensor.onnx",
        "model_sha256": sha,
        "data": "tests/conformance/ort_goldens/archs/resnet18_pertensor_input.npz",
        "indices": [INDEX],
    }
    write_dumps(os.path.join(HERE, "resnet18_avx2"), {n: avx2["outputs"][n] for n in names}, info)
    np.savez_compressed(os.path.join(HERE, "resnet18_exact.npz"),
                        **{dump_file(n)[:-4]: exact["outputs"][n] for n in names})  # fmt: skip
    differ = [n for n in names if not np.array_equal(exact["outputs"][n], avx2["outputs"][n])]
    print(f"resnet18: {len(names)} tensors; {len(differ)} differ exact vs avx2, e.g. {differ[:3]}")
    record_qoperator(api, run_both)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--record":
        record(sys.argv[2], sys.argv[3])
    else:
        main()
