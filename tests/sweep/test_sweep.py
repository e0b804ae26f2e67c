"""``hwsim sweep`` in this process: records keyed by content, resume after an interruption,
extension, failed points recorded, outputs (table, JSON, CSV, Pareto PNG), and ``compare`` as
a case of the same machinery."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from hwsim import api
from hwsim.cli import main
from hwsim.report import pareto_front
from hwsim.sweep import ResultStore, identity, point_key

AXES = 'scheme = ["per-tensor", "per-channel"]\nwbits = [8, 4]\nacc_bits = [32, 14]'


def _ids(doc):
    return [identity(r) for r in doc["records"]]


def test_records_cover_every_point_and_match_compare(write_spec, small_data):
    p = write_spec('scheme = ["per-tensor", "per-channel"]\nwbits = [8, 4]')
    doc = api.sweep(p)
    assert doc["ran"] == 4 and doc["reused"] == 0 and not doc["lost"]
    # the same points through compare
    rows = api.compare("rescnn", str(small_data[0]), ("per-tensor", "per-channel"), (8, 4),
                       (8,), calib=str(small_data[1]), batch_size=16)  # fmt: skip
    assert [r["result"] for r in doc["records"]] == rows
    for r in doc["records"]:
        assert r["status"] == "ok" and r["error"] is None
        assert set(r["timing"]) == {"seconds", "pid"}
        on_disk = json.loads((doc_folder(doc) / f"{r['key']}.json").read_text())
        assert on_disk == json.loads(json.dumps(r))


def doc_folder(doc):
    from pathlib import Path

    return Path(doc["results"])


def test_compare_row_equals_a_plain_quantize_and_run(small_data):
    """compare's row against the plain path: quantize_model, then run (not the sweep code)."""
    data, calib = (str(p) for p in small_data)
    row = api.compare("rescnn", data, ("per-channel",), (4,), (8,), calib=calib, batch_size=16,
                      acc_bits=16, overflow="saturate")[0]  # fmt: skip
    prog = api.quantize_model("rescnn", "per-channel", calib=calib, batch_size=16, wbits=4,
                              acc_bits=16, overflow="saturate")  # fmt: skip
    rep = api.run(prog, data, batch_size=16)
    assert row["int_accuracy"] == rep.int_accuracy and row["agreement"] == rep.agreement
    assert row["overflow_events"] == sum(r.overflow_events for r in rep.layers)
    assert row["min_sqnr_db"] == min(r.sqnr_db for r in rep.layers if r.sqnr_db is not None)
    assert row["settings"] == prog.describe()["scheme"]


def test_resume_after_interruption_runs_only_missing_points(write_spec):
    p = write_spec(AXES)
    full = api.sweep(p, results=p.parent / "full")
    seen = []

    def stop_after_three(rec, done, total):
        seen.append(rec["key"])
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.sweep(p, on_record=stop_after_three)
    folder = p.parent / "spec-results"
    assert sorted(f.stem for f in folder.glob("*.json")) == sorted(seen)
    assert not list(folder.glob(".*")), "a temporary file was left"
    again = api.sweep(p)
    assert (again["ran"], again["reused"]) == (5, 3)
    assert _ids(again) == _ids(full)
    assert len(list(folder.glob("*.json"))) == 8
    third = api.sweep(p)
    assert (third["ran"], third["reused"]) == (0, 8)


def test_extending_a_sweep_runs_only_the_new_points(write_spec):
    p = write_spec('scheme = ["per-tensor"]\nwbits = [8, 4]')
    api.sweep(p)
    p.write_text(p.read_text().replace("wbits = [8, 4]", "wbits = [8, 6, 4]"))
    doc = api.sweep(p)
    assert (doc["ran"], doc["reused"]) == (1, 2)
    assert [r["point"]["wbits"] for r in doc["records"]] == [8, 6, 4]


def test_a_point_that_raises_is_recorded_and_the_sweep_goes_on(write_spec, monkeypatch):
    p = write_spec("wbits = [8, 6, 4]")
    real = api._evaluate_point

    def fails_at_6(payload, job):
        if job.point["wbits"] == 6:
            raise ValueError("no 6-bit multipliers today")
        return real(payload, job)

    monkeypatch.setattr(api, "_evaluate_point", fails_at_6)
    doc = api.sweep(p)
    st = [(r["point"]["wbits"], r["status"]) for r in doc["records"]]
    assert st == [(8, "ok"), (6, "failed"), (4, "ok")]
    assert doc["records"][1]["error"] == "ValueError: no 6-bit multipliers today"
    assert doc["records"][1]["result"] is None
    monkeypatch.setattr(api, "_evaluate_point", real)
    again = api.sweep(p)  # a failed point is run again; the finished ones are not
    assert (again["ran"], again["reused"]) == (1, 2)
    assert all(r["status"] == "ok" for r in again["records"])


def test_key_follows_content_not_names(write_spec, small_data, tmp_path):
    p = write_spec("wbits = [8]")
    k1 = api.sweep(p)["records"][0]["key"]
    # the same data under another name: same key
    other = tmp_path / "renamed.npz"
    other.write_bytes(small_data[0].read_bytes())
    p.write_text(p.read_text().replace(str(small_data[0]), str(other)))
    assert api.sweep(p)["records"][0]["key"] == k1
    # one sample changed: another key
    with np.load(small_data[0]) as z:
        x, y = z["x"].copy(), z["y"]
    x[0, 0, 0, 0] += 0.5
    np.savez(other, x=x, y=y)
    assert api.sweep(p)["records"][0]["key"] != k1


def test_point_key_is_a_hash_of_every_input():
    base = ("m" * 64, "d" * 64, "c" * 64, 16, {"scheme": {"wbits": 8}})
    k = point_key(*base)
    assert len(k) == 64 and k == point_key(*base)
    for i, other in enumerate(("n" * 64, "e" * 64, "b" * 64, 32, {"scheme": {"wbits": 4}})):
        changed = list(base)
        changed[i] = other
        assert point_key(*changed) != k


def test_store_ignores_a_corrupt_record(tmp_path):
    st = ResultStore(tmp_path)
    st.put({"key": "abc", "status": "ok"})
    assert st.get("abc") == {"key": "abc", "status": "ok"}
    (tmp_path / "abc.json").write_text("{not json")
    assert st.get("abc") is None
    (tmp_path / "abd.json").write_text('{"key": "other"}')
    assert st.get("abd") is None


def test_pareto_front_against_brute_force():
    """The front is the set of points no other point dominates (cost <= and quality >, or
    cost < and quality >=), each once, by increasing cost."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        pts = [(int(a), int(b)) for a, b in rng.integers(0, 6, size=(12, 2))]
        front = pareto_front(pts)
        want = {
            pt for pt in pts
            if not any((c <= pt[0] and q > pt[1]) or (c < pt[0] and q >= pt[1]) for c, q in pts)
        }  # fmt: skip
        assert sorted(pts[i] for i in front) == sorted(want)
        assert [pts[i][0] for i in front] == sorted(pts[i][0] for i in front)


def test_cli_sweep_writes_table_json_csv_plot_and_resumes(write_spec, tmp_path):
    p = write_spec('scheme = ["per-tensor", "per-channel"]\nwbits = [8, 4]')
    out = [tmp_path / n for n in ("all.json", "all.csv", "pareto.png")]
    r = CliRunner().invoke(main, ["sweep", str(p), "--json", str(out[0]), "--csv", str(out[1]),
                                  "--plot", str(out[2]), "--progress"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "per-channel" in r.output and "4 points: 4 run on this process, 0 from" in r.output
    assert "[4/4] rescnn" in r.output  # progress per finished point (stderr, mixed in here)
    doc = json.loads(out[0].read_text())
    assert len(doc["records"]) == 4
    rows = list(csv.DictReader(out[1].open()))
    assert [(x["scheme"], x["wbits"], x["status"]) for x in rows] == [
        ("per-tensor", "8", "ok"), ("per-tensor", "4", "ok"),
        ("per-channel", "8", "ok"), ("per-channel", "4", "ok"),
    ]  # fmt: skip
    assert float(rows[0]["int_accuracy"]) == doc["records"][0]["result"]["int_accuracy"]
    assert out[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = CliRunner().invoke(main, ["sweep", str(p)])
    assert r.exit_code == 0 and "4 points: 0 run on this process, 4 from" in r.output


def test_cli_sweep_bad_spec_is_one_error_line(write_spec):
    p = write_spec("wbits = [1]")
    r = CliRunner().invoke(main, ["sweep", str(p)])
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {p}: [axes] wbits = 1:"), r.output
    r = CliRunner().invoke(main, ["sweep", str(p), "--workers", "2", "--scheduler", "x"])
    assert r.exit_code == 2 and "not both" in r.output


def test_cli_sweep_exits_1_when_a_point_failed(write_spec, monkeypatch, tmp_path):
    p = write_spec("wbits = [8, 6]")
    real = api._evaluate_point

    def fails_at_6(payload, job):
        if job.point["wbits"] == 6:
            raise ValueError("no 6-bit multipliers today")
        return real(payload, job)

    monkeypatch.setattr(api, "_evaluate_point", fails_at_6)
    out = tmp_path / "all.csv"
    r = CliRunner().invoke(main, ["sweep", str(p), "--csv", str(out)])
    assert r.exit_code == 1, r.output
    assert "1 point(s) failed" in r.output and out.exists()  # the outputs are written first


def test_key_changes_with_hwsim_source(write_spec, monkeypatch):
    from hwsim.sweep import store

    p = write_spec("wbits = [8]")
    k1 = api.sweep(p)["records"][0]["key"]
    monkeypatch.setattr(store, "code_fingerprint", lambda: "0" * 64)  # other code
    doc = api.sweep(p)
    assert doc["ran"] == 1 and doc["records"][0]["key"] != k1


def test_isa_auto_is_resolved_on_the_client(monkeypatch):
    from hwsim.datapath import isa as isa_mod
    from hwsim.sweep.spec import make_job

    for host in (isa_mod.Isa.AVX2, isa_mod.Isa.EXACT):
        monkeypatch.setattr(isa_mod, "host_isa", lambda h=host: h)
        job = make_job("rescnn", {"isa": "auto"})
        assert job.isa == host.value


def test_as_imported_beside_scheme_axes_is_one_point(tmp_path, small_data):
    """'as imported' is the file's own quantization: the scheme axes do not apply to it, so
    its points collapse into one (was: 'the point ... is not valid')."""
    q = tmp_path / "q.onnx"
    api.quantize_model("rescnn", "per-tensor", str(small_data[1]), out=str(q))
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'[sweep]\nmodel = "{q}"\ndata = "{small_data[0]}"\ncalib = "{small_data[1]}"\n'
        'batch_size = 16\n[axes]\nscheme = ["as imported", "per-tensor"]\nacc_bits = [32, 16]\n'
    )
    doc = api.sweep(spec)
    points = [(r["point"]["scheme"], r["point"].get("acc_bits")) for r in doc["records"]]
    assert points == [("as imported", None), ("per-tensor", 32), ("per-tensor", 16)]
    rows = api.compare(str(q), str(small_data[0]), ("per-tensor",), (8,), (8,),
                       calib=str(small_data[1]), batch_size=16)  # fmt: skip
    assert doc["records"][0]["result"] == rows[0]  # compare's "as imported" row
