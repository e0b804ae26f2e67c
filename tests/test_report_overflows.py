"""Bias additions that overflow the accumulator are shown, not hidden.

The output stage adds the bias in the accumulator (docs/numerics.md eq. 15) and counts the
additions that leave its range (``bias_overflows``, tested against the plain-int output stage
in tests/datapath/test_output.py). A table whose ``ovf`` column showed only the reduction's
events printed 0 for a layer whose every output had overflowed at the bias (a MobileNetV2 at
16-bit accumulators: 0 events, SQNR 6.6 dB, 96 bias overflows).
"""

from __future__ import annotations

from hwsim import api
from hwsim.report import LayerRow, RunReport, compare_table


def _report(events: int, bias: int) -> RunReport:
    rep = RunReport(model="m.onnx", data="d.npz", samples=4, settings={})
    row = LayerRow("/features/features.17/block/block.2/block.2.0/Conv", "conv", "y", "static/s8")
    row.macs, row.overflow_events, row.bias_overflows, row.acc_bits = 10, events, bias, 16
    row.sqnr_db, row.bits_needed = 6.6, 16
    rep.layers.append(row)
    return rep


def test_run_table_ovf_counts_bias_additions():
    text = _report(3, 96).table()
    line = next(x for x in text.splitlines() if x.startswith("/features/features.17/"))
    # the full name (not cut to the same tail as its siblings) and ovf = 3 + 96
    assert line.split()[0] == "/features/features.17/block/block.2/block.2.0/Conv"
    assert line.split()[5] == "99"
    assert "bias additions that overflowed the accumulator" in text
    assert _report(3, 96).as_dict()["totals"]["bias_overflows"] == 96
    assert "bias additions" not in _report(3, 0).table()


def test_compare_row_and_table_count_bias_overflows():
    rows = api.compare("rescnn", "digits", ("per-tensor",), (8,), (8,), calib="digits-train",
                       acc_bits=16, overflow="wrap")  # fmt: skip
    rep = api.run(api.quantize_model("rescnn", "per-tensor", "digits-train", acc_bits=16), "digits")
    assert rows[0]["bias_overflows"] == sum(r.bias_overflows for r in rep.layers) > 0
    assert rows[0]["overflow_events"] == sum(r.overflow_events for r in rep.layers)
    ovf = int(compare_table(rows).splitlines()[2].split()[7])
    assert ovf == rows[0]["overflow_events"] + rows[0]["bias_overflows"]
