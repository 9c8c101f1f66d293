"""Smoke test of ``droplab bench mc --quick`` (numbers are not asserted: timings belong to benchmarks)."""

import json

from droplab.cli import main


def test_bench_mc_quick_runs_and_reports_every_approach(tmp_path, capsys):
    out = tmp_path / "mc.json"
    assert main(["bench", "mc", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("head-only", "every-layer", "torch loop", "torch replicate", "droplab predict"):
        assert label in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert len(rows) == 6 and data["conditions"]["samples"] == 8
    assert {r["path"] for r in rows if r["approach"] == "droplab predict"} == {"fx"}
    assert all(r["seconds"] > 0 and r["speedup"] > 0 for r in rows)
