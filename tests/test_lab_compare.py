import json

import pytest
from lab_fixtures import write_npz

from droplab.cli import main
from droplab.lab.compare import assign_roles, build_configs, parse_rates
from droplab.lab.config import ExperimentConfig
from droplab.lab.store import RunStore


def test_parse_rates():
    assert parse_rates("0,0.5,0.25") == [0.0, 0.5, 0.25]
    assert parse_rates("0,0.1/0.5") == [0.0, [0.1, 0.5]]
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1, but got 1.5"):
        parse_rates("0,1.5")
    with pytest.raises(ValueError, match="at least two rates"):
        parse_rates("0.5")
    with pytest.raises(ValueError, match="must be numbers"):
        parse_rates("0,half")


def test_roles_and_baseline_has_no_dropout_at_all():
    configs = build_configs(ExperimentConfig(input_dropout=0.2), parse_rates("0,0.2,0.5"))
    assert assign_roles(configs) == {"baseline": 0, "intended": 2, "reduced": 1}
    assert configs[0].input_dropout == 0.0 and configs[2].input_dropout == 0.2
    per_layer = build_configs(ExperimentConfig(), parse_rates("0,0.1/0.5"))
    assert per_layer[1].layer_rates == [0.1, 0.5]
    with pytest.raises(ValueError, match="give 3 layers but depth=2"):
        build_configs(ExperimentConfig(), parse_rates("0,0.1/0.2/0.3"))


def test_dry_run_prints_the_resolved_configs(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text('model = "cnn1d"\nwidth = 16\nvariant = "channel"\n')
    assert main(["compare", "--config", str(toml), "--set", "epochs=7", "--rates", "0,0.3", "--dry-run"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in runs] == ["baseline", "intended"]
    assert runs[1]["config"]["model"] == "cnn1d" and runs[1]["config"]["epochs"] == 7
    assert runs[1]["config"]["dropout"] == 0.3 and runs[1]["config"]["variant"] == "channel"


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    assert main(["compare", "--set", "dropuot=0.5", "--dry-run"]) == 2
    assert "did you mean 'dropout'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_end_to_end(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz", n=150, features=20)
    db, reports = tmp_path / "runs.db", tmp_path / "reports"
    code = main(["compare", "--dataset", str(data), "--set", "width=16", "--epochs", "3", "--set", "batch_size=30",
                 "--db", str(db), "--report-dir", str(reports), "--save", str(tmp_path / "ckpt"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "best val acc" in out and "epochs to best" in out and "report:" in out
    assert "co-adaptation" in out and "1-unit ablation drop" in out
    with RunStore(db) as store:
        runs = store.list_runs()
        assert sorted(r["name"] for r in runs) == ["p=0.0", "p=0.25", "p=0.5"]
        assert all(r["status"] == "finished" and len(store.epochs(r["id"])) == 3 for r in runs)
        group = runs[0]["group_id"]
        comparison = store.get_comparison(group)
        assert comparison["verdict"]["outcome"] and comparison["config"]["roles"]["intended"] == 1
    page = reports / group / "index.html"
    assert page.is_file() and (reports / group / "reliability.png").is_file()
    assert "<h2>Co-adaptation</h2>" in page.read_text()
    run_id = min(r["id"] for r in runs)
    assert main(["compare", "--resume", str(run_id), "--set", "epochs=4", "--db", str(db), "--no-progress"]) == 0
    with RunStore(db) as store:
        assert len(store.epochs(run_id)) == 4


def test_compare_adds_coadaptation_measures_to_each_run(tmp_path):
    from droplab.lab.compare import compare

    data = write_npz(tmp_path / "d.npz", n=120, features=12)
    base = ExperimentConfig(dataset=str(data), width=8, epochs=2, batch_size=40)
    summary = compare(build_configs(base, [0.0, 0.5]), report_dir=tmp_path / "r", progress=False,
                      echo=lambda *a, **k: None)
    for run in summary["runs"]:
        assert 0.0 <= run["correlation"] <= 1.0
        assert 1.0 <= run["effective_rank"] <= 8.0  # at most the layer width
        assert 0.0 <= run["near_zero"] <= 1.0 and "single_unit_drop" in run and "drop_50pct" in run
    quiet = compare(build_configs(base, [0.0, 0.5]), report_dir=None, progress=False, echo=lambda *a, **k: None,
                    measure_coadaptation=False)
    assert all("correlation" not in run for run in quiet["runs"])
