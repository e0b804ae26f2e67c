"""What onnxruntime's AVX2 dot product costs in accuracy, on standard architectures.

Builds the reduced ResNet-18 and MobileNetV2 of ``tests/conformance/archs.py`` (random weights,
randomised BatchNorm statistics, exported from torch, ``quantize_static`` QDQ with uint8
activations and int8 weights, per-tensor and per-channel), runs hwsim with ``--isa exact``
(= onnxruntime on a VNNI/AMX CPU) and ``--isa avx2`` (= onnxruntime on an AVX2-only CPU; both
proven bit for bit by ``tests/conformance/test_architectures.py``) and prints the SNR of each
against the float model, with the int16 pair saturations of the avx2 run.

    python benchmarks/isa_snr.py [--samples 8] [--json FILE]     # needs torch (the test extras)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
    import archs
    import onnxruntime as ort

    from hwsim import api
    from hwsim.io import atomic_write_text

    def snr(ref, y):
        ref = ref.astype(np.float64)
        return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - y.astype(np.float64)) ** 2)))

    rows = []
    x = archs.inputs(args.samples)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        np.savez(d / "x.npz", x=x)
        print(f"{'model':<26}{'SNR exact dB':>13}{'SNR avx2 dB':>13}{'i16 sat':>10}{'outs':>8}")
        for arch in archs.ARCHS:
            for pc in (False, True):
                fpath, qpath = archs.make(arch, d, pc)
                f = ort.InferenceSession(str(fpath), providers=["CPUExecutionProvider"])
                ref = f.run(None, {"input": x})[0]
                row = {"model": f"{arch} {'per-channel' if pc else 'per-tensor'}"}
                for isa in ("exact", "avx2"):
                    out = d / f"o_{isa}.npz"
                    rep = api.run(qpath, d / "x.npz", save_outputs=out, isa=isa)
                    with np.load(out) as z:
                        row[f"snr_{isa}_db"] = round(snr(ref, z[z.files[0]]), 2)
                    if isa == "avx2":
                        row["pair_saturations"] = sum(r.pair_saturations or 0 for r in rep.layers)
                        row["outputs_pair_saturated"] = sum(
                            r.outputs_pair_saturated or 0 for r in rep.layers
                        )
                rows.append(row)
                print(f"{row['model']:<26}{row['snr_exact_db']:>13.2f}{row['snr_avx2_db']:>13.2f}"
                      f"{row['pair_saturations']:>10}{row['outputs_pair_saturated']:>8}")  # fmt: skip
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
