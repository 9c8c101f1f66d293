"""``droplab sweep`` plumbing: spec and storage, the search space, shared trial budget, stale-trial retry, reports.

These tests use SQLite files in a temporary directory and, where the training loop is not the point,
a cheap analytic objective passed to :func:`run_worker`. The end-to-end sweep over real training runs
is in ``tests/test_sweep_e2e.py``; the multi-process kill-and-retry test against PostgreSQL in
``tests/test_sweep_postgres.py``.
"""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import FixedTrial, TrialState

from droplab.lab import sweep as S
from droplab.lab.config import ExperimentConfig
from droplab.lab.sweep_report import importances, rate_curve, summarize, trial_rows, write_report


def _spec(name="s", **kw) -> S.SweepSpec:
    base = ExperimentConfig().replace(epochs=4, depth=2).to_dict()
    return S.SweepSpec(name=name, base=base, **kw)


def _fake_objective(calls: list | None = None):
    """Validation loss is a parabola in the rate with its minimum at 0.3; reports one value per 'epoch'."""

    def objective(trial):
        trial.set_user_attr("pid", 0)
        changes = S.suggest(trial, S.load_spec(trial.study.study_name, trial.study._storage)[1])
        rate = changes.get("rates", [0.0])[0]
        loss = 1.0 + (rate - 0.3) ** 2
        for epoch in range(3):
            trial.report(loss + 0.1 * (2 - epoch), epoch)
        trial.set_user_attr("config", ExperimentConfig().replace(**changes).to_dict())
        trial.set_user_attr("final", {"val_loss": loss, "val_acc": 1 - loss / 2, "train_acc": 0.9,
                                      "test_acc": 1 - loss / 2})
        trial.set_user_attr("run_id", trial.number + 100)
        if calls is not None:
            calls.append(trial.number)
        return loss

    return objective


def test_spec_validation_names_the_argument_and_allowed_values():
    with pytest.raises(ValueError, match="search must name one or more of dropout, layer_rates"):
        _spec(search=["dropuot"])
    with pytest.raises(ValueError, match="sampler must be one of tpe, grid, random"):
        _spec(sampler="cmaes")
    with pytest.raises(ValueError, match="trials must be a positive integer"):
        _spec(trials=0)
    with pytest.raises(ValueError, match="max_rate has to be between 0 and 1, but got 1.5"):
        _spec(max_rate=1.5)
    with pytest.raises(ValueError, match=r"grid_rates must not exceed max_rate \(0.5\)"):
        _spec(sampler="grid", max_rate=0.5, grid_rates=[0.0, 0.7])
    with pytest.raises(ValueError, match="unknown config key"):
        S.SweepSpec(name="x", base={"widht": 3})
    spec = _spec(search=["layer_rates", "batch_size"], trials=3)
    assert S.SweepSpec.from_json(spec.to_json()) == spec


def test_storage_url_defaults_to_a_sqlite_file_and_postgres_uses_psycopg3(tmp_path):
    assert S.storage_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert S.storage_url(None).startswith("sqlite:///") and S.storage_url(None).endswith(S.DEFAULT_STORAGE)
    assert S.storage_url("postgresql://u:p@h/db") in ("postgresql+psycopg://u:p@h/db", "postgresql://u:p@h/db")
    assert S.storage_url("mysql://u@h/db") == "mysql://u@h/db"
    with pytest.raises(ValueError, match="--heartbeat must be a positive integer"):
        S.open_storage(str(tmp_path / "x.db"), heartbeat_interval=0)


def test_search_space_maps_trial_parameters_to_config_changes():
    spec = _spec(search=["layer_rates", "input_dropout", "schedule", "lr", "weight_decay", "batch_size"])
    trial = FixedTrial({"rate_0": 0.1, "rate_1": 0.6, "input_dropout": 0.2, "schedule": "ramp", "schedule_at": 0.5,
                        "lr": 1e-3, "weight_decay": 1e-4, "batch_size": 64})
    changes = S.suggest(trial, spec)
    # the input site first, then one rate per hidden site: the config's one rate field
    assert changes == {"rates": [0.2, 0.1, 0.6], "input_site": True, "schedule": "ramp:2", "lr": 1e-3,
                       "weight_decay": 1e-4, "batch_size": 64}
    # every proposal is a valid experiment config
    ExperimentConfig.from_dict({**spec.base, **changes})
    assert S.suggest(FixedTrial({"schedule": "constant"}), _spec(search=["schedule"])) == {"schedule": None}
    assert S.suggest(FixedTrial({"dropout": 0.25}), _spec()) == {"rates": [0.25]}
    grid = _spec(search=["dropout", "batch_size"], sampler="grid", grid_rates=[0.0, 0.5])
    assert grid.grid_space() == {"dropout": [0.0, 0.5], "batch_size": [32, 64, 128, 256]}


def test_study_names_are_unique_and_resume_needs_an_existing_sweep(tmp_path):
    storage = S.open_storage(str(tmp_path / "s.db"))
    S.create_study(_spec("a"), storage)
    with pytest.raises(ValueError, match="already exists.*--resume a"):
        S.create_study(_spec("a"), storage)
    with pytest.raises(ValueError, match="no sweep named 'b'.*known: a"):
        S.load_spec("b", storage)
    optuna.create_study(study_name="foreign", storage=storage)
    with pytest.raises(ValueError, match="not created by droplab sweep"):
        S.load_spec("foreign", storage)


@pytest.mark.slow
def test_worker_runs_to_the_shared_trial_budget_and_resume_extends_it(tmp_path):
    db = str(tmp_path / "s.db")
    S.create_study(_spec("budget", trials=5, sampler="random"), S.open_storage(db))
    calls: list[int] = []
    S.run_worker("budget", db, objective=_fake_objective(calls))
    study, _ = S.load_spec("budget", S.open_storage(db))
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    # a second worker joining a finished study runs nothing
    assert S.run_worker("budget", db, objective=_fake_objective(calls)) == 0
    # --resume with a larger budget continues the same study
    S.run_sweep(None, db, resume="budget", trials=7, objective=_fake_objective(calls))
    study, spec = S.load_spec("budget", S.open_storage(db))
    assert spec.trials == 7 and len(study.get_trials(states=(TrialState.COMPLETE,))) == 7
    assert calls == list(range(7))


def test_grid_sampler_covers_the_grid(tmp_path):
    db = str(tmp_path / "g.db")
    S.create_study(_spec("grid", trials=50, sampler="grid", grid_rates=[0.0, 0.2, 0.4]), S.open_storage(db))
    S.run_worker("grid", db, objective=_fake_objective())
    study, _ = S.load_spec("grid", S.open_storage(db))
    assert sorted(t.params["dropout"] for t in study.trials) == [0.0, 0.2, 0.4]


@pytest.mark.slow
def test_tpe_concentrates_near_the_optimum(tmp_path):
    db = str(tmp_path / "t.db")
    S.create_study(_spec("tpe", trials=16, pruning=False), S.open_storage(db))
    S.run_worker("tpe", db, objective=_fake_objective())
    study, _ = S.load_spec("tpe", S.open_storage(db))
    # the parabola's minimum is at 0.3: the best of 16 trials lies within 0.1 of it
    assert abs(study.best_params["dropout"] - 0.3) < 0.1


@pytest.mark.slow
def test_stale_trial_of_a_dead_worker_is_failed_and_retried(tmp_path):
    db = str(tmp_path / "h.db")
    storage = S.open_storage(db, heartbeat_interval=1, grace_period=2)
    S.create_study(_spec("stale", trials=3, sampler="random"), storage)
    study = optuna.load_study(study_name="stale", storage=storage)
    # a worker that asked for a trial, beat once and died
    dead = study.ask({"dropout": optuna.distributions.FloatDistribution(0.0, 0.8)})
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.5)
    S.run_worker("stale", db, heartbeat_interval=1, grace_period=2, objective=_fake_objective())
    trials = S.load_spec("stale", storage)[0].get_trials()
    assert trials[dead.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[dead.number].params
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3


@pytest.mark.slow
def test_summary_and_report_from_a_finished_study(tmp_path):
    db = str(tmp_path / "r.db")
    S.create_study(_spec("rep <b>", trials=8, sampler="random", search=["dropout"]), S.open_storage(db))
    S.run_worker("rep <b>", db, objective=_fake_objective())
    study, _ = S.load_spec("rep <b>", S.open_storage(db))
    rows = trial_rows(study)
    assert len(rows) == 8 and all(r["gap"] is not None for r in rows)
    curve = rate_curve(rows)
    assert sum(n for *_, n in curve) == 8
    text = summarize(study)
    best = min(rows, key=lambda r: r["value"])
    assert f"best: trial {best['number']}" in text and "validation loss by rate" in text
    assert set(importances(study)) == {"dropout"}
    page = write_report(study, tmp_path / "reports")
    html = page.read_text()
    assert "rep &lt;b&gt;" in html and "rep <b>" not in html
    for png in ("rate.png", "layers.png", "batch_rate.png", "importance.png"):
        assert (page.parent / png).stat().st_size > 1000
        assert f'src="{png}"' in html


@pytest.mark.slow
def test_cli_show_prints_the_summary(tmp_path, capsys):
    from droplab.cli import main

    db = str(tmp_path / "c.db")
    S.create_study(_spec("cli", trials=3, sampler="random"), S.open_storage(db))
    S.run_worker("cli", db, objective=_fake_objective())
    assert main(["sweep", "show", "cli", "--storage", db, "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "sweep cli: 3 complete" in out and "report:" in out
    assert main(["sweep", "show", "nope", "--storage", db]) == 2
    assert "no sweep named 'nope'" in capsys.readouterr().err


def test_real_objective_prunes_through_the_epoch_callback_and_links_the_run(tmp_path):
    from droplab.lab.store import RunStore

    spec = S.SweepSpec(name="prune", base=ExperimentConfig().replace(dataset="digits", width=16, epochs=3).to_dict(),
                       trials=2, sampler="random", db=str(tmp_path / "runs.db"))
    storage = S.open_storage(str(tmp_path / "p.db"))
    S.create_study(spec, storage)
    with RunStore(spec.db) as store:
        objective = S._objective(spec, store)
        # a pruner that prunes any trial whose validation loss exceeds 0 (all of them) after epoch 1
        always = optuna.pruners.ThresholdPruner(upper=0.0)
        optuna.load_study(study_name="prune", storage=storage, pruner=always).optimize(objective, n_trials=1)
        # and one that never prunes
        optuna.load_study(study_name="prune", storage=storage, pruner=optuna.pruners.NopPruner()).optimize(
            objective, n_trials=1)
        t0, t1 = S.load_spec("prune", storage)[0].get_trials()
        assert t0.state == TrialState.PRUNED and list(t0.intermediate_values) == [1]
        assert t1.state == TrialState.COMPLETE and list(t1.intermediate_values) == [1, 2, 3]
        runs = {r["name"]: r for r in store.list_runs(study="prune")}
        assert runs["prune#0"]["status"] == "pruned" and len(store.epochs(runs["prune#0"]["id"])) == 1
        assert runs["prune#1"]["status"] == "finished" and runs["prune#1"]["id"] == t1.user_attrs["run_id"]
        assert t1.value == pytest.approx(runs["prune#1"]["final"]["best_val_loss"])


@pytest.mark.slow
def test_two_workers_never_overshoot_the_trial_budget(tmp_path):
    """Two workers racing for the last slots: exactly ``trials`` trials finish (was trials + 1)."""
    import threading

    db = str(tmp_path / "race.db")
    S.create_study(_spec("race", trials=4, sampler="random", pruning=False), S.open_storage(db))
    inner = _fake_objective()

    def slow(trial):
        time.sleep(0.4)
        return inner(trial)

    errors: list[BaseException] = []

    def worker(index: int) -> None:
        # staggered by half a trial: when one worker's third trial starts, the other's second still runs,
        # which the old "finished < trials" check did not count (5 trials finished)
        time.sleep(0.2 * index)
        try:
            S.run_worker("race", db, worker_index=index, objective=slow)
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    study, _ = S.load_spec("race", S.open_storage(db))
    trained = [t for t in study.get_trials() if not t.user_attrs.get("droplab_surplus")]
    assert [t.state for t in trained] == [TrialState.COMPLETE] * 4
    assert S.trial_counts(study) == {"COMPLETE": 4}


def test_a_trial_started_for_a_filled_slot_is_surplus_and_never_trained(tmp_path):
    storage = S.open_storage(str(tmp_path / "slot.db"))
    S.create_study(_spec("slot", trials=2, sampler="random"), storage)
    study = optuna.load_study(study_name="slot", storage=storage)
    first, second, third = (study.ask() for _ in range(3))  # three workers asked at the same moment
    assert S._claims_a_slot(study, first, 2) and S._claims_a_slot(study, second, 2)
    assert not S._claims_a_slot(study, third, 2)
    calls = []
    guarded = S._guarded(lambda trial: calls.append(trial.number) or 1.0, study, 2)
    with pytest.raises(S._Surplus, match="trial 2 not needed"):
        guarded(third)
    assert calls == [] and third.user_attrs.get("droplab_surplus") is True
    study.tell(first, state=TrialState.FAIL)  # a failed trial frees its slot for the next in line
    assert S._claims_a_slot(study, third, 2)


def test_last_rate_bin_keeps_the_highest_rate():
    # lo + 8 * ((hi - lo) / 8) rounds below hi for these rates: the maximum used to fall out of every bin
    lo, hi = 0.099, 0.437
    assert lo + 8 * ((hi - lo) / 8) < hi
    rows = [{"state": "complete", "rate": r, "value": v} for r, v in ((lo, 1.0), (0.2, 2.0), (hi, 3.0))]
    curve = rate_curve(rows)
    assert sum(n for *_, n in curve) == 3
    assert curve[-1][1] == hi and curve[-1][2] == 3.0


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "trials must be a positive integer, but got 0"),
    (["--trials", "-3"], "trials must be a positive integer, but got -3"),
    (["--workers", "0"], "--workers must be a positive integer, but got 0"),
    (["--storage", "foo://somewhere/db"], "unknown database scheme 'foo'"),
    (["--storage", "postgresql://u:secret@127.0.0.1:1/db"], "cannot be opened"),
    (["--storage", "mysql://u:secret@127.0.0.1:1/db"], "needs a database driver that is not installed"),
    (["--heartbeat", "0"], "--heartbeat must be a positive integer"),
    (["--worker", "--name", "nosuch"], "no sweep storage at s.db to join"),
    (["--worker"], "--worker needs --name"),
    (["--resume", "nosuch"], "no sweep storage at s.db to resume nosuch from"),
    (["--set", "lr=NaN"], "lr must be a finite number"),
    (["--set", "dataset=missing.csv"], "dataset file not found: missing.csv"),
])
def test_sweep_user_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, message):
    from droplab.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "--storage", "s.db", "--db", "r.db", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("droplab sweep: error:") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 3
    assert "secret" not in err  # a password in a storage URL is never printed


def test_storage_that_is_a_directory_is_a_user_error(tmp_path, capsys):
    from droplab.cli import main

    assert main(["sweep", "--storage", str(tmp_path), "--db", str(tmp_path / "r.db")]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_a_diverged_trial_fails_alone_and_the_sweep_goes_on(tmp_path):
    from droplab.lab.errors import TrainingDiverged

    db = str(tmp_path / "div.db")
    S.create_study(_spec("div", trials=3, sampler="random"), S.open_storage(db))
    inner = _fake_objective()

    def sometimes_diverges(trial):
        if trial.number == 1:
            raise TrainingDiverged("training diverged: batch_loss is nan at epoch 2")
        return inner(trial)

    S.run_worker("div", db, objective=sometimes_diverges)
    study, _ = S.load_spec("div", S.open_storage(db))
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.FAIL] + [TrialState.COMPLETE] * 2


def test_commands_on_an_existing_study_never_create_a_storage(tmp_path, monkeypatch, capsys):
    from droplab.cli import main

    monkeypatch.chdir(tmp_path)
    for argv in (["sweep", "show", "x", "--storage", "none.db"], ["sweep", "--resume", "x", "--storage", "none.db"],
                 ["sweep", "--worker", "--name", "x", "--storage", "none.db"]):
        assert main(argv) == 2
        assert "no sweep storage at none.db" in capsys.readouterr().err
    S.create_study(_spec("known"), S.open_storage("there.db"))
    assert main(["sweep", "--worker", "--name", "nosuch", "--storage", "there.db"]) == 2
    assert "no sweep named 'nosuch' in this storage; known: known" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there.db"]
