"""``droplab sweep`` end to end on real training runs: 2 worker processes on a SQLite study, resume, show."""

from __future__ import annotations

import pytest
from optuna.trial import TrialState

from droplab.cli import main
from droplab.lab import sweep as S
from droplab.lab.store import RunStore

pytestmark = pytest.mark.slow


def test_two_workers_resume_and_show(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    common = ["--storage", "sweeps.db"]
    argv = ["sweep", "--name", "e2e", "--trials", "3", "--workers", "2", "--db", "runs.db", "--no-pruning",
            "--search", "dropout,batch_size", "--heartbeat", "2",
            "--set", "dataset=digits", "--set", "width=32", "--set", "epochs=2"] + common
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "study e2e:" in out and "best: trial" in out

    study, spec = S.load_spec("e2e", S.open_storage("sweeps.db"))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) >= 3
    # every trial is a finished run in the lab store, linked to its study, with the trial's rate
    with RunStore(tmp_path / "runs.db") as store:
        runs = {r["id"]: r for r in store.list_runs(study="e2e")}
        for t in complete:
            run = runs[t.user_attrs["run_id"]]
            assert run["status"] == "finished" and run["name"] == f"e2e#{t.number}"
            assert run["config"]["rates"] == pytest.approx([t.params["dropout"]] * 2)  # both sites of the mlp
            assert run["config"]["batch_size"] == t.params["batch_size"]
            assert t.value == pytest.approx(run["final"]["best_val_loss"])

    # a new sweep under the same name is refused; --resume continues it with its stored definition
    assert main(argv) == 2
    assert "a study named 'e2e' already exists" in capsys.readouterr().err
    assert main(["sweep", "--search", "rate", "--storage", "x.db"]) == 2
    assert "search must name one or more of dropout" in capsys.readouterr().err
    assert main(["sweep", "--resume", "e2e", "--trials", "4"] + common) == 0
    study, spec = S.load_spec("e2e", S.open_storage("sweeps.db"))
    assert spec.trials == 4 and spec.search == ["dropout", "batch_size"]
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= 4
    capsys.readouterr()

    assert main(["sweep", "show", "e2e", "--storage", "sweeps.db", "--out", "reports"]) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and "validation loss by rate" in out
    page = tmp_path / "reports" / "sweep-e2e" / "index.html"
    html = page.read_text()
    for png in ("rate.png", "layers.png", "batch_rate.png"):
        assert f'src="{png}"' in html and (page.parent / png).is_file()


def test_sweep_under_torchrun_trains_each_trial_data_parallel(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(S.__file__)))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(root), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(port), "-m", "droplab.cli", "sweep", "--name", "ddp", "--trials", "2",
               "--storage", "sweeps.db", "--db", "runs.db", "--sampler", "random",
               "--set", "dataset=digits", "--set", "width=16", "--set", "epochs=2", "--set", "threads=1"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("study ddp:") == 1  # only rank 0 reports
    study, _ = S.load_spec("ddp", S.open_storage(str(tmp_path / "sweeps.db")))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    with RunStore(tmp_path / "runs.db") as store:  # only rank 0 writes: one run per trial
        assert sorted(r["name"] for r in store.list_runs(study="ddp")) == ["ddp#0", "ddp#1"]
