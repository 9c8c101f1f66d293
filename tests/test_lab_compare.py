import json

import pytest
from lab_fixtures import write_npz

from droplab.cli import main
from droplab.commands.compare import build_configs, parse_rates
from droplab.lab.comparison import assign_roles, run_comparison
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


def test_default_runs_are_off_as_built_and_halved():
    configs = build_configs(ExperimentConfig(input_site=True, width=8), None)
    assert [c.label() for c in configs] == ["off (p=0)", "as built", "halved"]
    # one rate per site, as the model was built (input site 0.2, hidden sites 0.5): what each run trains
    assert [c.rates for c in configs] == [[0.0, 0.0, 0.0], [0.2, 0.5, 0.5], [0.1, 0.25, 0.25]]
    assert assign_roles(configs) == {"baseline": 0, "intended": 1, "reduced": 2}


def test_rates_set_every_site_and_roles():
    configs = build_configs(ExperimentConfig(input_site=True, width=8), parse_rates("0,0.2,0.5"))
    assert assign_roles(configs) == {"baseline": 0, "intended": 2, "reduced": 1}
    assert [c.rates for c in configs] == [[0.0] * 3, [0.2] * 3, [0.5] * 3] and configs[2].label() == "p=0.5"
    per_site = build_configs(ExperimentConfig(width=8), parse_rates("0,0.1/0.5"))
    assert per_site[1].rates == [0.1, 0.5] and per_site[1].label() == "p=0.1/0.5"


def test_dry_run_prints_the_resolved_configs(tmp_path, capsys):
    toml = tmp_path / "exp.toml"
    toml.write_text('model = "cnn1d"\nwidth = 16\nvariant = "channel"\n')
    assert main(["compare", "--config", str(toml), "--set", "epochs=7", "--rates", "0,0.3", "--dry-run"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [r["role"] for r in runs] == ["baseline", "intended"]
    assert runs[1]["config"]["model"] == "cnn1d" and runs[1]["config"]["epochs"] == 7
    assert runs[1]["config"]["rates"] == [0.3, 0.3] and runs[1]["config"]["variant"] == "channel"


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    assert main(["compare", "--set", "dropuot=0.5", "--dry-run"]) == 2
    assert "did you mean 'dropout'" in capsys.readouterr().err


def test_schedule_longer_than_the_run_is_an_error(capsys):
    assert main(["compare", "--schedule", "ramp:10", "--epochs", "3", "--dry-run"]) == 2
    assert "reaches the configured rate at epoch 10" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_end_to_end(tmp_path, capsys):
    data = write_npz(tmp_path / "d.npz", n=150, features=20)
    db, reports = tmp_path / "runs.db", tmp_path / "reports"
    code = main(["compare", "--dataset", str(data), "--set", "width=16", "--epochs", "3", "--set", "batch_size=30",
                 "--db", str(db), "--report-dir", str(reports), "--save", str(tmp_path / "ckpt"), "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "task: classification" in out and "best val acc" in out and "report:" in out
    with RunStore(db) as store:
        runs = store.list_runs()
        assert sorted(r["name"] for r in runs) == ["as built", "halved", "off (p=0)"]
        assert all(r["status"] == "finished" and len(store.epochs(r["id"])) == 3 for r in runs)
        group = runs[0]["group_id"]
        comparison = store.get_comparison(group)
        assert comparison["verdict"]["outcome"] and comparison["config"]["roles"]["intended"] == 1
        assert comparison["report"]
    page = reports / group / "index.html"
    assert page.is_file() and (reports / group / "reliability.png").is_file()
    run_id = min(r["id"] for r in runs)
    assert main(["compare", "--resume", str(run_id), "--set", "epochs=4", "--db", str(db), "--no-progress"]) == 0
    with RunStore(db) as store:
        assert len(store.epochs(run_id)) == 4 and store.get_run(run_id)["config"]["epochs"] == 4


def test_a_failed_report_loses_nothing(tmp_path, capsys, monkeypatch):
    """A run name with matplotlib mathtext draws; a report that fails to write leaves the comparison stored."""
    from droplab.lab import report

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", full_disk)
    data = write_npz(tmp_path / "d.npz", n=90, features=8)
    db = tmp_path / "runs.db"
    code = main(["compare", "--dataset", str(data), "--set", "width=8", "--epochs", "1", "--set", "name=$\\x{$",
                 "--db", str(db), "--report-dir", str(tmp_path / "r"), "--no-progress", "--no-coadaptation"])
    captured = capsys.readouterr()
    assert code == 1 and "report could not be written" in captured.err
    assert "best val acc" in captured.out and "comparison" in captured.err
    with RunStore(db) as store:
        runs = store.list_runs()
        assert len(runs) == 3 and store.get_comparison(runs[0]["group_id"])["verdict"]["outcome"]
    monkeypatch.undo()
    summaries = [{"label": "$\\x{$", "history": [{"epoch": 1, "train_acc": 0.5, "val_acc": 0.4, "train_loss": 1.0,
                                                   "val_loss": 1.1, "gap": 0.1}]}]
    assert report.write_report(tmp_path / "ok", summaries, title="t").is_file()


def test_coadaptation_measures_join_each_run_within_budget(tmp_path):
    data = write_npz(tmp_path / "d.npz", n=120, features=12)
    base = ExperimentConfig(dataset=str(data), width=8, epochs=2, batch_size=40)
    result = run_comparison(build_configs(base, [0.0, 0.5]), coadaptation_budget=100.0)
    for run in result.runs:
        assert 0.0 <= run["correlation"] <= 1.0
        assert 1.0 <= run["effective_rank"] <= 8.0  # at most the layer width
        assert run["ablation_units"] == 32 and "single_unit_drop" in run and run["coadaptation_s"] >= 0
    tight = run_comparison(build_configs(base, [0.0, 0.5]), coadaptation_budget=0.0)
    assert all(run["ablation_units"] == 0 and "single_unit_drop" not in run for run in tight.runs)
    quiet = run_comparison(build_configs(base, [0.0, 0.5]), coadaptation=False)
    assert all("correlation" not in run for run in quiet.runs)


def test_cli_builds_only_the_running_commands_parser():
    import subprocess
    import sys

    code = ("import sys; from droplab.cli import build_parser; build_parser(['runs', 'list']); "
            "print(sorted(m for m in ('droplab.lab.sweep', 'droplab.lab.uncertainty', 'droplab.commands.compare', "
            "'droplab.commands.runs', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['droplab.commands.runs']"
