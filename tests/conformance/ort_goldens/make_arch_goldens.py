"""Record onnxruntime's outputs for the reduced ResNet-18 / MobileNetV2 QDQ models of
``tests/conformance/archs.py`` on both x86 instruction-set behaviours:

* ``exact``: natively on a CPU with AVX-512 VNNI (or AVX-VNNI / AMX): MLAS's u8 x s8 dot
  products are exact;
* ``avx2``: under ``qemu-x86_64 -cpu Haswell-v4`` (an AVX2-only CPU model: no AVX-512, no VNNI),
  where MLAS adds each pair of adjacent u8 x s8 products in a saturating int16 (vpmaddubsw).

    python tests/conformance/ort_goldens/make_arch_goldens.py [OUT_DIR]   # default: ./archs here

Needs torch, onnx, onnxruntime and qemu-user (``qemu-x86_64``); the native run must be on a
VNNI / AMX machine (checked). Writes to OUT_DIR, for each ``<arch>_<pertensor|perchannel>``:
``.onnx`` (the QDQ model), ``_input.npz`` (``x``, float32 (8, 3, 64, 64): usable as
``hwsim run --data``), ``_exact.npz`` and ``_avx2.npz`` (onnxruntime's outputs under the graph
output name, as ``hwsim run --save-outputs`` writes them), and ``manifest.json`` (the CPU of
each recording and which file is which). onnxruntime runs with default session options.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
QEMU_CPU = "Haswell-v4"
N_SAMPLES = 8
SEED = 0
WANT = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile")


def cpuid_flags():
    """The flags (make.py's names) as CPUID reports them to this process, via numpy's runtime
    dispatch; unlike /proc/cpuinfo this sees qemu's CPU model. numpy does not probe AVX-VNNI or
    AMX, so those two are never listed here."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as f
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as f
    names = {"avx2": "AVX2", "avx512f": "AVX512F", "avx512bw": "AVX512BW", "avx512_vnni": "AVX512VNNI"}
    return [k for k, v in names.items() if f.get(v)]


def proc_cpu():
    """Model name and flags from /proc/cpuinfo, as make.py records them (the host's, also under qemu)."""
    try:
        text = open("/proc/cpuinfo").read()
        flags = text.split("flags")[1].split("\n")[0].split()
        model = [l for l in text.splitlines() if l.startswith("model name")][0].split(":")[1].strip()
    except (OSError, IndexError):
        flags, model = [], ""
    return model, [f for f in WANT if f in flags]


def record(inp, out):
    """Child mode (natively or under qemu): run each (model bytes, feeds) in inp, pickle outputs."""
    import onnxruntime as ort

    res = []
    for mb, feeds in pickle.load(open(inp, "rb")):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(mb, so, providers=["CPUExecutionProvider"])
        res.append({o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, feeds))})
    pickle.dump({"outputs": res, "cpuid_flags": cpuid_flags(), "onnxruntime": ort.__version__},
                open(out, "wb"))


def run_recording(jobs, qemu_cpu=None):
    with tempfile.TemporaryDirectory() as d:
        i, o = os.path.join(d, "in.pkl"), os.path.join(d, "out.pkl")
        pickle.dump(jobs, open(i, "wb"))
        cmd = [sys.executable, os.path.abspath(__file__), "--record", i, o]
        if qemu_cpu:
            cmd = ["qemu-x86_64", "-cpu", qemu_cpu] + cmd
        subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL if qemu_cpu else None)
        return pickle.load(open(o, "rb"))


def main(out):
    import numpy as np

    sys.path.insert(0, os.path.dirname(HERE))
    import archs

    if shutil.which("qemu-x86_64") is None:
        sys.exit("qemu-x86_64 (qemu-user) is needed for the AVX2 recording")
    os.makedirs(out, exist_ok=True)
    x = archs.inputs(N_SAMPLES)
    cases, jobs = [], []
    with tempfile.TemporaryDirectory() as d:
        for arch in archs.ARCHS:
            for per_channel in (False, True):
                name = f"{arch}_{'perchannel' if per_channel else 'pertensor'}"
                _, qp = archs.make(arch, d, per_channel, seed=SEED)
                shutil.copy(qp, os.path.join(out, f"{name}.onnx"))
                np.savez(os.path.join(out, f"{name}_input.npz"), x=x)
                jobs.append((open(qp, "rb").read(), {"input": x}))
                cases.append({"name": name, "arch": arch, "per_channel": per_channel, "seed": SEED,
                              "model": f"{name}.onnx",
                              "model_sha256": hashlib.sha256(jobs[-1][0]).hexdigest(),
                              "input": f"{name}_input.npz",
                              "outputs": {"exact": f"{name}_exact.npz", "avx2": f"{name}_avx2.npz"}})
    exact = run_recording(jobs)
    avx2 = run_recording(jobs, QEMU_CPU)
    if "avx512_vnni" not in exact["cpuid_flags"]:
        sys.exit(f"the native run must be exact (AVX-512 VNNI); this CPU has {exact['cpuid_flags']}")
    if set(avx2["cpuid_flags"]) != {"avx2"}:
        sys.exit(f"qemu -cpu {QEMU_CPU} reported {avx2['cpuid_flags']}, expected AVX2 only")
    for c, e, a in zip(cases, exact["outputs"], avx2["outputs"]):
        np.savez(os.path.join(out, c["outputs"]["exact"]), **e)
        np.savez(os.path.join(out, c["outputs"]["avx2"]), **a)
        c["differ_exact_vs_avx2"] = int(sum((e[k] != a[k]).sum() for k in e))
        c["output_elements"] = int(sum(v.size for v in e.values()))
    model, flags = proc_cpu()
    qemu = subprocess.run(["qemu-x86_64", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    manifest = {
        "generator": "tests/conformance/ort_goldens/make_arch_goldens.py",
        "recordings": {
            "exact": {"how": "native", "onnxruntime": exact["onnxruntime"],
                      "cpu": {"model": model, "machine": platform.machine(), "flags": flags,
                              "onnxruntime": exact["onnxruntime"]},
                      "cpuid_flags": exact["cpuid_flags"],
                      "semantics": "u8 x s8 dot products exact (AVX-512 VNNI / AVX-VNNI / AMX)"},
            "avx2": {"how": f"{qemu}: qemu-x86_64 -cpu {QEMU_CPU} python ...",
                     "onnxruntime": avx2["onnxruntime"],
                     "cpu": {"model": f"qemu {QEMU_CPU} (on the host above)", "machine": platform.machine(),
                             "flags": avx2["cpuid_flags"], "onnxruntime": avx2["onnxruntime"]},
                     "cpuid_flags": avx2["cpuid_flags"],
                     "semantics": "u8 x s8 adjacent product pairs summed in saturating int16 (vpmaddubsw)"},
        },
        "session_options": "onnxruntime defaults, CPUExecutionProvider",
        "cases": cases,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for c in cases:
        print(f"{c['name']}: {c['differ_exact_vs_avx2']} of {c['output_elements']} outputs differ exact vs avx2")
    print(f"{len(cases)} cases in {out}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--record":
        record(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "archs"))
