"""hwsim's schemes on standard architectures: output SNR against the float model.

Builds the reduced ResNet-18 and MobileNetV2 of ``tests/conformance/archs.py`` (random weights,
randomised BatchNorm statistics, exported from torch), quantizes the float ONNX with hwsim's
schemes -- per-tensor, per-channel, and the integer-only per-sample ones (``per-sample``: the
reciprocal range unit; ``per-sample-shift``: static and runtime base; eq. 17-19 of
docs/numerics.md) under several registers -- runs them on the emulated datapath and prints the
SNR of the output against the float model, the top-1 agreement, the per-sample range unit's
operations (``LayerStats.ops``, what the cost model charges) and whether any layer fell back
to float.

    python benchmarks/schemes_archs.py [--samples 16] [--json FILE]   # needs torch
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

CASES = [
    ("per-tensor", {}),
    ("per-channel", {}),
    ("per-sample", {}),
    ("per-sample", {"register": "pow2"}),
    ("per-sample-shift", {}),
    ("per-sample-shift", {"register": "tflite"}),
    ("per-sample-shift", {"shift_base": "runtime"}),
]


def _snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref = ref.astype(np.float64)
    noise = float(((ref - got.astype(np.float64)) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref**2).sum()) / noise)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--json", dest="json_path")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "conformance"))
    import archs

    from hwsim.data import Dataset
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.graph import import_model
    from hwsim.quant import Scheme, quantize

    rows = []
    print(f"{'model':<12} {'scheme':<18} {'options':<22} {'SNR dB':>7} {'agree':>6} "
          f"{'range ops':>10} float")
    with tempfile.TemporaryDirectory() as tmp:
        for name in archs.ARCHS:
            path = archs.export_float(name, Path(tmp) / f"{name}.onnx")
            calib = Dataset("calib", archs.calib_data(32), None)
            x = archs.inputs(args.samples)
            g0 = import_model(path)
            ref = run_float(g0, x)[g0.output]
            for preset, kw in CASES:
                program = quantize(import_model(path), Scheme.preset(preset, **kw), calib, float_run=run_float)
                ex = IntegerExecutor(program)
                y = ex.output(ex.run(x))
                ops = sum(sum(s.ops.values()) for s in ex.stats.values())
                row = {
                    "model": name,
                    "scheme": preset,
                    "options": kw,
                    "snr_db": _snr_db(ref, y),
                    "agreement": float((y.argmax(1) == ref.argmax(1)).mean()),
                    "range_ops": ops,
                    "float_ops": sorted(ex.float_ops),
                }
                rows.append(row)
                opt = ",".join(f"{k}={v}" for k, v in kw.items())
                print(f"{name:<12} {preset:<18} {opt:<22} {row['snr_db']:>7.1f} "
                      f"{row['agreement']:>6.2f} {ops:>10} {len(row['float_ops'])}")
    if args.json_path:
        from hwsim.io import atomic_write_text

        atomic_write_text(args.json_path, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
