"""A 2-worker sweep against a real PostgreSQL server; one worker is SIGKILLed mid-trial.

``tests/services.sh`` (sourced by the README's test command) installs Debian's postgresql, starts it on
loopback and exports
``DROPLAB_TEST_POSTGRES`` (a SQLAlchemy URL of a superuser's ``postgres`` database). The test creates a
fresh database with a unique name, runs the sweep there and drops it afterwards. Without the variable
the test fails under CI (``CI=true``) and is skipped, with the reason, elsewhere.

Checked: the surviving worker completes the study (the trial budget of finished trials is met and
nothing is left running or queued), every trial finished before the kill is still there with its
value, the killed trial is marked failed by the heartbeat check and retried with the same parameters,
and every completed trial is a finished run in the lab store linked to the study, while the killed
trial's run is marked failed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid

import pytest
from conftest import missing_service

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

TRIALS = 4
EPOCHS = 18  # long enough that a kill in the first third of a trial lands well before its end
HEARTBEAT, GRACE = 1, 3


@pytest.fixture
def postgres_url():
    url = os.environ.get("DROPLAB_TEST_POSTGRES")
    if not url:
        missing_service("DROPLAB_TEST_POSTGRES is not set: source tests/services.sh (as root it installs and "
                        "starts PostgreSQL), or start a server and export "
                        "DROPLAB_TEST_POSTGRES=postgresql+psycopg://user:pw@127.0.0.1:5432/postgres")
    import sqlalchemy as sa

    name = f"droplab_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for p in procs:
            if p.poll() not in (None, 0):
                pytest.fail(f"worker {p.pid} exited with {p.returncode} while waiting for {what}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def test_two_worker_sweep_survives_a_killed_worker(postgres_url, tmp_path):
    from optuna.trial import TrialState

    from droplab.lab import sweep as S
    from droplab.lab.config import ExperimentConfig
    from droplab.lab.store import RunStore

    # sklearn digits, a small MLP, no pruning: a few seconds per trial, so the kill lands mid-trial
    base = ExperimentConfig().replace(dataset="digits", width=64, epochs=EPOCHS, threads=1)
    spec = S.SweepSpec(name="pg-kill", base=base.to_dict(), trials=TRIALS, sampler="random", pruning=False,
                       db=str(tmp_path / "runs.db"))
    storage = S.open_storage(postgres_url, heartbeat_interval=HEARTBEAT, grace_period=GRACE)
    assert storage.engine.dialect.name == "postgresql"
    S.create_study(spec, storage)
    log = open(tmp_path / "workers.log", "w")
    procs = []
    try:
        procs = S.spawn_workers("pg-kill", postgres_url, 2, threads=1, heartbeat_interval=HEARTBEAT,
                                grace_period=GRACE, stdout=log, stderr=subprocess.STDOUT)
        pids = {p.pid: p for p in procs}

        def study():
            return S.load_spec("pg-kill", storage)[0]

        def victim():
            trials = study().get_trials(deepcopy=False)
            if not any(t.state == TrialState.COMPLETE for t in trials):
                return None
            for t in trials:
                # running, owned by one of our workers, at least one epoch in and far from its last epoch,
                # so the trial cannot finish between this look and the kill
                if (t.state == TrialState.RUNNING and t.user_attrs.get("pid") in pids
                        and 0 < len(t.intermediate_values) <= EPOCHS // 3):
                    return t
            return None

        killed = _wait(victim, 300, "a completed trial and another trial mid-training", procs)
        os.kill(killed.user_attrs["pid"], signal.SIGKILL)
        finished_before = {t.number: t.value for t in study().get_trials(states=(TrialState.COMPLETE,))}
        assert killed.number not in finished_before, "the victim finished before the kill landed"
        dead = pids[killed.user_attrs["pid"]]
        assert dead.wait(30) == -signal.SIGKILL
        survivor = next(p for p in procs if p is not dead)
        assert survivor.wait(300) == 0, (tmp_path / "workers.log").read_text()[-3000:]
    finally:
        for p in procs:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
        log.close()

    trials = study().get_trials()
    by_number = {t.number: t for t in trials}
    # the study completed: budget met, nothing left running or queued
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= TRIALS
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    # no finished trial was lost
    for number, value in finished_before.items():
        assert by_number[number].state == TrialState.COMPLETE and by_number[number].value == value
    # the killed trial failed (heartbeat) and its parameters were retried to completion
    assert by_number[killed.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE and retries[0].params == killed.params
    # every completed trial is a finished run in the lab store, linked to the study
    with RunStore(spec.db) as store:
        runs = {r["id"]: r for r in store.list_runs(study="pg-kill")}
        for t in trials:
            if t.state == TrialState.COMPLETE:
                run = runs[t.user_attrs["run_id"]]
                assert run["status"] == "finished" and run["name"] == f"pg-kill#{t.number}"
        killed_runs = [r for r in runs.values() if r["name"] == f"pg-kill#{killed.number}"]
        assert [r["status"] for r in killed_runs] == ["failed"]
