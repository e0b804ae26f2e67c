"""Run SCALE-Sim (PyPI ``scalesim==3.0.0``) on a batch of layers and print its figures as JSON.

This script runs under the *scalesim* virtualenv's python (numpy < 2.4; see
``tests/cost/scalesim_env.py``), never under hwsim's: it imports only the standard library
and ``scalesim``. Request on stdin::

    {"array": [R, C], "dataflow": "os" | "ws" | "is",
     "sram_kb": [ifmap, filter, ofmap],            # optional, default [64, 64, 64]
     "bandwidth": B,                 # optional: USER bandwidth mode, B words/cycle (default CALC)
     "layers": [{"name": ..., "ifmap_h": ..., "ifmap_w": ..., "filt_h": ..., "filt_w": ...,
                 "channels": ..., "num_filter": ..., "stride": ...},   # conv, ifmap padded
                {"name": ..., "M": ..., "N": ..., "K": ...}]}           # GEMM

Output on stdout: one JSON object per layer, in request order: ``name``, ``kind`` (conv or
gemm), ``Np``, ``Mf``, ``K``, ``macs`` (as scalesim derived them), from COMPUTE_REPORT.csv
``total_cycles_incl_prefetch``, ``total_cycles``, ``stall_cycles``, ``compute_cycles`` (total -
stall), ``overall_util_pct``, ``mapping_efficiency_pct``, ``compute_util_pct``, from
DETAILED_ACCESS_REPORT.csv ``sram_{ifmap,filter}_reads``, ``sram_ofmap_writes``,
``dram_{ifmap,filter}_reads``, ``dram_ofmap_writes`` (operand words) and the SRAM start/stop
cycles, from BANDWIDTH_REPORT.csv ``avg_bw`` (words/cycle), and ``seconds`` (wall time of the
scalesim run) and ``trace_written`` (false: no trace files).

How scalesim 3.0.0 has to be driven (none of this is documented; it ships no example files):

* It needs a config file with the sections ``general``, ``run_presets``,
  ``architecture_presets``, ``layout`` and ``sparsity`` (every key read below must be there),
  a topology CSV (header line, then one row per layer, each row ending in a comma) and a
  *layout* CSV even with custom layouts off: ``scalesim.set_params`` opens it
  unconditionally. A header-only layout file is enough.
* No ``network_presets`` section: 3.0.0 reads its ``TopologyCsvLoc`` from the wrong section.
* Its ``scale.py`` CLI ignores ``-s N`` (it always passes ``save_disk_space=False``), so the
  traces are always written. The Python API ``scalesim(save_disk_space=True, ...)`` skips the
  trace files (the memory simulation, which is what makes it slow, still runs).
* A conv layer whose name contains ``DP`` is expanded into one depthwise layer per channel, so
  the topology gets neutral names (``L0``) and the caller's names are carried here.
* GEMM topologies work with ``input_type_gemm=True`` and rows ``name, M, N, K,``; scalesim maps
  them onto a conv of ifmap ``M x K``, filter ``1 x K``, 1 channel, ``N`` filters, stride 1, i.e.
  ``Np = M`` output pixels, window ``K``, ``Mf = N`` filters.
* USER bandwidth mode (``"bandwidth": B``): ``InterfaceBandwidth = USER``, ``Bandwidth = B``.
  scalesim then takes the ifmap / filter DRAM bandwidth from the *layout* section
  (``IfmapSRAMBankBandwidth``, ``FilterSRAMBankBandwidth``, asserted divisible by the bank
  count) and only the ofmap's from ``Bandwidth``: all three are set to ``B``, with one bank.
* ``exit()`` on a missing file, progress prints on stdout: stdout is redirected to stderr while
  it runs, so that only the JSON reaches stdout.

Each layer is simulated in its own scalesim run (in its own temp dir, removed afterwards), so
that conv and GEMM layers can be mixed in one request, each layer's wall time is measured on its
own, and its memory is released before the next one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time

CONV_KEYS = ("ifmap_h", "ifmap_w", "filt_h", "filt_w", "channels", "num_filter", "stride")
GEMM_KEYS = ("M", "N", "K")

_CONFIG = """\
[general]
run_name = run

[architecture_presets]
ArrayHeight = {rows}
ArrayWidth = {cols}
IfmapSramSzkB = {ifmap_kb}
FilterSramSzkB = {filter_kb}
OfmapSramSzkB = {ofmap_kb}
IfmapOffset = 0
FilterOffset = 10000000
OfmapOffset = 20000000
Bandwidth = {bandwidth}
Dataflow = {dataflow}
ReadRequestBuffer = 32
WriteRequestBuffer = 32

[layout]
IfmapCustomLayout = False
IfmapSRAMBankBandwidth = {bandwidth}
IfmapSRAMBankNum = {banks}
IfmapSRAMBankPort = 2
FilterCustomLayout = False
FilterSRAMBankBandwidth = {bandwidth}
FilterSRAMBankNum = {banks}
FilterSRAMBankPort = 2

[sparsity]
SparsitySupport = false
SparseRep = ellpack_block
OptimizedMapping = false
BlockSize = 8
RandomNumberGeneratorSeed = 40

[run_presets]
InterfaceBandwidth = {mode}
UseRamulatorTrace = False
"""

_CONV_HEADER = (
    "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, "
    "Num Filter, Strides,\n"
)
_GEMM_HEADER = "Layer name, M, N, K,\n"
_LAYOUT_HEADER = (
    "Layer name, IFMAP Height Intraline Factor, IFMAP Width Intraline Factor, "
    "Filter Height Intraline Factor, Filter Width Intraline Factor, "
    "Channel Intraline Factor, Num Filter Intraline Factor,\n"
)


def _fail(msg: str) -> None:
    print(f"scalesim_runner: {msg}", file=sys.stderr)
    sys.exit(2)


def _pos_int(layer: dict, key: str) -> int:
    v = layer.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        _fail(f"layer {layer.get('name')!r}: {key} must be a positive integer, got {v!r}")
    return v


def _gemm_dims(layer: dict) -> tuple[str, int, int, int]:
    """(kind, Np, Mf, K) as scalesim will see the layer."""
    if all(k in layer for k in GEMM_KEYS):
        M, N, K = (_pos_int(layer, k) for k in GEMM_KEYS)
        return "gemm", M, N, K
    if all(k in layer for k in CONV_KEYS):
        ih, iw, fh, fw, ch, nf, s = (_pos_int(layer, k) for k in CONV_KEYS)
        if fh > ih or fw > iw:
            _fail(f"layer {layer.get('name')!r}: filter larger than the (padded) ifmap")
        oh = math.ceil((ih - fh + s) / s)
        ow = math.ceil((iw - fw + s) / s)
        return "conv", oh * ow, nf, fh * fw * ch
    _fail(f"layer {layer.get('name')!r}: needs either {GEMM_KEYS} or {CONV_KEYS}")
    raise AssertionError  # unreachable


def _read_report(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [h.strip() for h in rows[0]]
    out = []
    for row in rows[1:]:
        if not any(c.strip() for c in row):
            continue
        out.append({h: row[i].strip() for i, h in enumerate(header) if h and i < len(row)})
    return out


def _num(s: str):
    v = float(s)
    return int(v) if v.is_integer() and "." not in s and "e" not in s.lower() else v


def _parse_reports(report_dir: str) -> dict:
    comp = _read_report(os.path.join(report_dir, "COMPUTE_REPORT.csv"))[0]
    bw = _read_report(os.path.join(report_dir, "BANDWIDTH_REPORT.csv"))[0]
    det = _read_report(os.path.join(report_dir, "DETAILED_ACCESS_REPORT.csv"))[0]
    g = lambda d, k: _num(d[k])  # noqa: E731
    return {
        # COMPUTE_REPORT.csv. "Total Cycles" is the memory-serviced cycle count of the compute
        # demand stream (compute + stalls); "incl. prefetch" spans the DRAM traffic as well.
        "total_cycles_incl_prefetch": g(comp, "Total Cycles (incl. prefetch)"),
        "total_cycles": g(comp, "Total Cycles"),
        "stall_cycles": g(comp, "Stall Cycles"),
        "compute_cycles": g(comp, "Total Cycles") - g(comp, "Stall Cycles"),
        "overall_util_pct": float(comp["Overall Util %"]),
        "mapping_efficiency_pct": float(comp["Mapping Efficiency %"]),
        "compute_util_pct": float(comp["Compute Util %"]),
        # DETAILED_ACCESS_REPORT.csv: operand words
        "sram_ifmap_reads": g(det, "SRAM IFMAP Reads"),
        "sram_filter_reads": g(det, "SRAM Filter Reads"),
        "sram_ofmap_writes": g(det, "SRAM OFMAP Writes"),
        "dram_ifmap_reads": g(det, "DRAM IFMAP Reads"),
        "dram_filter_reads": g(det, "DRAM Filter Reads"),
        "dram_ofmap_writes": g(det, "DRAM OFMAP Writes"),
        "sram_ifmap_cycles": [g(det, "SRAM IFMAP Start Cycle"), g(det, "SRAM IFMAP Stop Cycle")],
        "sram_filter_cycles": [g(det, "SRAM Filter Start Cycle"), g(det, "SRAM Filter Stop Cycle")],
        "sram_ofmap_cycles": [g(det, "SRAM OFMAP Start Cycle"), g(det, "SRAM OFMAP Stop Cycle")],
        # BANDWIDTH_REPORT.csv: words per cycle
        "avg_bw": {k: float(v) for k, v in bw.items() if k.startswith("Avg")},
    }


def _run_one(simulator_cls, workdir: str, req: dict, layer: dict) -> dict:
    kind, Np, Mf, K = _gemm_dims(layer)
    rows, cols = req["array"]
    ifmap_kb, filter_kb, ofmap_kb = req.get("sram_kb", [64, 64, 64])
    os.makedirs(workdir)
    cfg = os.path.join(workdir, "run.cfg")
    topo = os.path.join(workdir, "topo.csv")
    layout = os.path.join(workdir, "layout.csv")
    with open(cfg, "w") as f:
        f.write(
            _CONFIG.format(
                rows=rows,
                cols=cols,
                ifmap_kb=ifmap_kb,
                filter_kb=filter_kb,
                ofmap_kb=ofmap_kb,
                dataflow=req["dataflow"],
                mode="USER" if "bandwidth" in req else "CALC",
                bandwidth=req.get("bandwidth", 10),
                banks=1 if "bandwidth" in req else 10,
            )
        )
    with open(topo, "w") as f:
        if kind == "gemm":
            f.write(_GEMM_HEADER + f"L0, {layer['M']}, {layer['N']}, {layer['K']},\n")
        else:
            f.write(_CONV_HEADER + "L0, " + ", ".join(str(layer[k]) for k in CONV_KEYS) + ",\n")
    with open(layout, "w") as f:
        f.write(_LAYOUT_HEADER)
    out_dir = os.path.join(workdir, "out")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        s = simulator_cls(
            save_disk_space=True,
            verbose=False,
            config=cfg,
            topology=topo,
            layout=layout,
            input_type_gemm=(kind == "gemm"),
        )
        s.run_scale(top_path=out_dir)
    seconds = time.perf_counter() - t0
    rep = _parse_reports(os.path.join(out_dir, "run"))
    leftovers = [d for d in os.listdir(os.path.join(out_dir, "run")) if d.startswith("layer")]
    # the GEMM dimensions as scalesim itself derived them from the topology row
    topo = s.topo
    mf = topo.get_layer_num_filters(0)
    dims = {
        "Np": topo.get_layer_num_ofmap_px(0) // mf,
        "Mf": mf,
        "K": topo.get_layer_window_size(0),
        "macs": topo.get_layer_mac_ops(0),
    }
    if (dims["Np"], dims["Mf"], dims["K"]) != (Np, Mf, K):
        _fail(
            f"layer {layer.get('name')!r}: scalesim read it as (Np, Mf, K) = "
            f"{(dims['Np'], dims['Mf'], dims['K'])}, expected {(Np, Mf, K)}"
        )
    return {
        "name": layer.get("name"),
        "kind": kind,
        **dims,
        **rep,
        "seconds": seconds,
        "trace_written": bool(leftovers),
    }


def main() -> int:
    try:
        req = json.load(sys.stdin)
    except json.JSONDecodeError as e:
        _fail(f"bad JSON request: {e}")
    arr = req.get("array")
    if (
        not isinstance(arr, list)
        or len(arr) != 2
        or not all(isinstance(x, int) and x >= 1 for x in arr)
    ):
        _fail(f"array must be [rows, cols] of positive integers, got {arr!r}")
    if req.get("dataflow") not in ("os", "ws", "is"):
        _fail(f"dataflow must be os, ws or is, got {req.get('dataflow')!r}")
    sram = req.get("sram_kb", [64, 64, 64])
    if (
        not isinstance(sram, list)
        or len(sram) != 3
        or not all(isinstance(x, int) and x >= 1 for x in sram)
    ):
        _fail(f"sram_kb must be [ifmap, filter, ofmap] positive integers (kB), got {sram!r}")
    bw = req.get("bandwidth", 10)
    if isinstance(bw, bool) or not isinstance(bw, int) or bw < 1:
        _fail(f"bandwidth must be a positive integer (words/cycle), got {bw!r}")
    layers = req.get("layers")
    if not isinstance(layers, list) or not layers:
        _fail("layers must be a non-empty list")
    for layer in layers:  # validate everything before the first (slow) run
        if not isinstance(layer, dict):
            _fail(f"each layer must be an object, got {layer!r}")
        _gemm_dims(layer)

    from scalesim.scale_sim import scalesim

    tmp = tempfile.mkdtemp(prefix="hwsim-scalesim-")
    try:
        for i, layer in enumerate(layers):
            res = _run_one(scalesim, os.path.join(tmp, f"layer{i}"), req, layer)
            shutil.rmtree(os.path.join(tmp, f"layer{i}"), ignore_errors=True)
            print(json.dumps(res), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
