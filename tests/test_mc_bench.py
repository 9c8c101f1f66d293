"""Smoke test of ``droplab bench mc --quick`` (numbers are not asserted: timings belong to benchmarks)."""

import json

import pytest

from droplab.cli import main

pytestmark = pytest.mark.slow  # a benchmark run end to end (~40 s on 2 cores)


def test_bench_mc_quick_runs_and_reports_every_approach(tmp_path, capsys):
    pytest.importorskip("transformers")
    out = tmp_path / "mc.json"
    assert main(["bench", "mc", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for label in ("head-only", "every-layer", "torch loop", "torch replicate", "droplab predict", "droplab consistent",
                  "BERT everywhere", "BERT head-only"):
        assert label in text
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [(r["model"], r["approach"]) for r in rows][-4:] == [
        ("BERT everywhere", "torch loop"), ("BERT everywhere", "droplab predict"),
        ("BERT head-only", "torch loop"), ("BERT head-only", "droplab predict")]
    assert len(rows) == 11 and data["conditions"]["samples"] == 8
    assert {r["path"] for r in rows[:7] if r["approach"].startswith("droplab")} == {"fx"}
    assert {r["path"] for r in rows[7:] if r["approach"] == "droplab predict"} == {"hooks"}
    assert all(r["seconds"] > 0 and r["speedup"] > 0 for r in rows)


def test_bench_mc_without_bert_rows(capsys):
    assert main(["bench", "mc", "--quick", "--skip-replicate", "--bert-samples", "0"]) == 0
    text = capsys.readouterr().out
    assert "BERT" not in text and "torch replicate" not in text and "droplab consistent" in text
