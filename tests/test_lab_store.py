import contextlib
import os
import sqlite3

import pytest
import torch
from conftest import missing_service
from lab_fixtures import write_npz

from droplab.cli import main
from droplab.lab.config import ExperimentConfig
from droplab.lab.errors import UserError
from droplab.lab.store import MIGRATIONS, SCHEMA_VERSION, RunStore
from droplab.lab.trainer import train


def test_new_store_is_at_the_latest_schema(tmp_path):
    with RunStore(tmp_path / "r.db") as store:
        assert store.schema_version() == SCHEMA_VERSION >= 2
        mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"


def test_migration_from_version_1_keeps_the_data(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0])
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.execute("INSERT INTO runs (name, status, config, seed, started_at) VALUES ('old', 'finished', '{}', 3, 0)")
    conn.execute("INSERT INTO epochs VALUES (1, 1, '{\"val_acc\": 0.5}')")
    conn.commit()
    conn.close()
    with RunStore(path) as store:
        assert store.schema_version() == SCHEMA_VERSION
        run = store.get_run(1)
        assert run["name"] == "old" and run["seed"] == 3 and run["group_id"] is None and run["host"] is None
        assert store.epochs(1) == [{"epoch": 1, "val_acc": 0.5}]
        store.save_comparison("c1", {"runs": []})  # the table migration 2 added
        assert store.get_comparison("c1")["config"] == {"runs": []}


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    RunStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 999, newer than this droplab supports"):
        RunStore(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", n=100, features=12)


def tiny(data, **kw):
    return ExperimentConfig(**{**dict(dataset=str(data), width=8, epochs=3, batch_size=25), **kw})


def test_crash_mid_run_keeps_finished_epochs_and_marks_failed(tmp_path, data):
    store = RunStore(tmp_path / "r.db")

    def crash(epoch, metrics):
        if epoch == 2:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        train(tiny(data), store=store, name="crashy", on_epoch=crash, progress=False)
    (run,) = store.list_runs()
    assert run["status"] == "failed" and "disk on fire" in run["error"]
    assert [m["epoch"] for m in store.epochs(run["id"])] == [1, 2]
    assert run["config"]["width"] == 8 and run["versions"]["torch"] == torch.__version__ and run["host"]


def test_optuna_pruning_marks_pruned(tmp_path, data):
    optuna = pytest.importorskip("optuna")
    store = RunStore(tmp_path / "r.db")

    def prune(epoch, metrics):
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        train(tiny(data), store=store, study="s1", on_epoch=prune, progress=False)
    (run,) = store.list_runs(study="s1")
    assert run["status"] == "pruned" and len(store.epochs(run["id"])) == 1


def test_two_processes_write_at_once(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "r.db"
    RunStore(path).close()
    ctx = mp.get_context("fork")  # children open their own connections
    procs = [ctx.Process(target=_writer, args=(str(path), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    with RunStore(path) as store:
        runs = store.list_runs()
        assert len(runs) == 2 and all(len(store.epochs(r["id"])) == 20 for r in runs)


def _writer(path: str, worker: int) -> None:
    store = RunStore(path)
    run_id = store.start_run({"worker": worker}, name=f"w{worker}")
    for epoch in range(1, 21):
        store.log_epoch(run_id, epoch, {"val_acc": epoch / 20})
    store.finish_run(run_id, {"val_acc": 1.0})
    store.close()


def test_runs_command_lists_and_shows(tmp_path, data, capsys):
    db = tmp_path / "r.db"
    with RunStore(db) as store:
        result = train(tiny(data, epochs=2), store=store, name="<b>tiny</b>", group="g1", progress=False)
    assert main(["runs", "--db", str(db)]) == 0
    listing = capsys.readouterr().out
    assert "<b>tiny</b>" in listing and "finished" in listing and "g1" in listing
    assert main(["runs", "show", str(result.run_id), "--db", str(db)]) == 0
    shown = capsys.readouterr().out
    assert "width = 8" in shown and "epochs:" in shown and "test_acc" in shown
    assert main(["runs", "show", "99", "--db", str(db)]) == 2
    assert "no run with id 99" in capsys.readouterr().err
    assert main(["runs", "--db", str(tmp_path / "missing.db")]) == 2


def test_killed_process_leaves_epochs_and_is_marked_failed(tmp_path):
    import multiprocessing as mp

    path = tmp_path / "r.db"
    proc = mp.get_context("spawn").Process(target=_killed_writer, args=(str(path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 9
    with RunStore(path, read_only=True) as store:
        (run,) = store.list_runs()
        assert run["status"] == "running"  # nobody could say otherwise yet (a reader never writes)
    with RunStore(path) as store:  # opening it for writing marks the dead run failed
        run = store.get_run(run["id"])
        assert run["status"] == "failed" and "exited without finishing" in run["error"]
        assert [m["epoch"] for m in store.epochs(run["id"])] == [1, 2]
        assert store.reap_stale() == []


def _killed_writer(path: str) -> None:
    import os

    store = RunStore(path)
    run_id = store.start_run({}, name="doomed")
    store.log_epoch(run_id, 1, {"val_acc": 0.1})
    store.log_epoch(run_id, 2, {"val_acc": 0.2})
    os._exit(9)  # no cleanup, no exception handler: like SIGKILL or the OOM killer


def test_a_file_that_is_not_sqlite_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "notes.db"
    bad.write_text("these are my notes, not a database\n" * 100)
    before = bad.read_bytes()
    with pytest.raises(UserError, match="is not a droplab run store"):
        RunStore(bad)
    assert main(["runs", "--db", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("droplab runs: error: run store") and "Traceback" not in err
    assert bad.read_bytes() == before  # never "repaired" into a database


def test_a_directory_or_proc_as_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        RunStore(tmp_path)
    with pytest.raises(UserError, match="run store /proc/droplab-test.db"):
        RunStore("/proc/droplab-test.db")


@contextlib.contextmanager
def read_only(folder):
    """``folder`` made read-only: by permissions for a normal user, by a read-only bind mount for root."""
    import stat
    import subprocess

    if os.geteuid() != 0:
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            yield
        finally:
            folder.chmod(stat.S_IRWXU)
        return
    done = subprocess.run(f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}", shell=True,
                          capture_output=True, text=True)
    if done.returncode != 0:
        missing_service(f"root cannot make a read-only bind mount here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_read_only_store_is_listed_without_writing(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "r.db"
    with RunStore(db) as store:
        run_id = store.start_run({"x": 1}, name="kept")
        store.log_epoch(run_id, 1, {"val_acc": 0.5})
        store.finish_run(run_id, {"val_acc": 0.5})
    for extra in ("r.db-wal", "r.db-shm"):
        assert not (folder / extra).exists()  # closed cleanly: the WAL was checkpointed
    with read_only(folder):
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")  # really read-only, for root too
        with RunStore(db, read_only=True) as store:
            assert [r["name"] for r in store.list_runs()] == ["kept"]
            assert store.reap_stale() == []
            with pytest.raises(RuntimeError, match="opened read-only"):
                store.log_epoch(run_id, 2, {})
        assert main(["runs", "--db", str(db)]) == 0
        assert "kept" in capsys.readouterr().out
        assert sorted(p.name for p in folder.iterdir()) == ["r.db"]


def test_resume_is_refused_while_the_writer_lives(tmp_path):
    import subprocess
    import sys

    db = tmp_path / "r.db"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with RunStore(db) as store:
            run_id = store.start_run({"x": 1}, name="busy")
            store._conn.execute("UPDATE runs SET pid = ? WHERE id = ?", (sleeper.pid, run_id))
            with pytest.raises(UserError, match=f"run {run_id} is still being trained by process {sleeper.pid}"):
                store.resume_run(run_id)
            assert store.get_run(run_id)["pid"] == sleeper.pid  # untouched
            sleeper.kill()
            sleeper.wait()
            store.resume_run(run_id)  # the writer is gone: taken over
            assert store.get_run(run_id)["pid"] == os.getpid()
            with pytest.raises(UserError, match="no run with id 99"):
                store.resume_run(99)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_control_characters_in_names_never_reach_the_terminal(tmp_path, capsys):
    db = tmp_path / "r.db"
    with RunStore(db) as store:
        store.start_run({}, name="evil\x1b]0;pwned\x07\x1b[2J\u202ename")
    assert main(["runs", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "evilname" in out and "\x1b" not in out and "\x07" not in out and "\u202e" not in out


def _open_new_store_together(path: str, barrier) -> None:
    barrier.wait()
    with RunStore(path) as store:
        store.start_run({"dropout": 0.5}, name="racer", seed=0)


def test_processes_opening_a_new_store_together_all_get_in(tmp_path):
    """Switching a new file to WAL races (SQLite answers BUSY at once, without its busy handler): all must open."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")  # children open their own connections
    for round_ in range(10):
        path = str(tmp_path / f"race{round_}.db")
        barrier = ctx.Barrier(4)
        workers = [ctx.Process(target=_open_new_store_together, args=(path, barrier)) for _ in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        assert [w.exitcode for w in workers] == [0, 0, 0, 0]
        with RunStore(path) as store:
            assert len(store.list_runs()) == 4
