"""Faults: nothing finished is lost, nothing is written where it should not be.

kill -9 in the middle of a run and of a sweep trial, a read-only and a full file system (small tmpfs
mounts, as root; elsewhere these tests skip with the reason, and fail under ``CI=true``), concurrent
writers of one store, and names that try to leave their output directory. Each test checks what
survives: the stored epochs, a loadable checkpoint, no temporary file left behind, a finished study.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import missing_service
from lab_fixtures import write_npz

from droplab.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def droplab_process(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "droplab.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = proc.stderr.read()[-2000:]
            pytest.fail(f"the process exited ({proc.returncode}) while waiting for {what}: {tail}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def stored_epochs(db: Path, run_id: int = 1) -> int:
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
            return conn.execute("SELECT COUNT(*) FROM epochs WHERE run_id = ?", (run_id,)).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "1m", read_only: bool = False):
    """A small tmpfs at ``path`` (root only): a full or read-only file system that is really one."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        missing_service("mounting a small tmpfs needs root (read-only and full file systems are simulated by it)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        missing_service(f"cannot mount a tmpfs here ({done.stderr.strip()}); a container without CAP_SYS_ADMIN?")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount_read_only(path: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # big enough that an epoch takes a moment (so kills land mid-run), small enough to train in seconds
    return write_npz(tmp_path_factory.mktemp("data") / "d.npz", n=1200, features=40)


TRAIN = ["--set", "width=128", "--rates", "0,0.5", "--no-report", "--no-progress", "--no-coadaptation"]


# kill -9 --------------------------------------------------------------------------------------------

def test_kill_9_mid_run_keeps_epochs_and_checkpoint_and_resume_continues(tmp_path, data, capsys):
    import torch

    db, ck = tmp_path / "r.db", tmp_path / "ck"
    proc = droplab_process(["compare", "--dataset", str(data), "--set", "epochs=400", "--db", str(db), "--save",
                            str(ck), *TRAIN], tmp_path)
    try:
        wait_for(lambda: stored_epochs(db) >= 3, 120, "three stored epochs", proc)
        # --resume of the run being trained is refused while its writer lives
        assert main(["compare", "--resume", "1", "--db", str(db), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "run 1 is still being trained by process" in err and "Traceback" not in err
        seen = stored_epochs(db)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
    kept = stored_epochs(db)
    assert kept >= seen >= 3  # every epoch stored before the kill is still there
    state = torch.load(ck / "run-1.pt", weights_only=True)  # the checkpoint is whole (atomic rename)
    assert 1 <= len(state["history"]) <= kept
    # listing marks the dead run failed; its epochs stay
    assert main(["runs", "--db", str(db)]) == 0
    assert "failed" in capsys.readouterr().out
    # and --resume continues it from the checkpoint to a new total
    total = len(state["history"]) + 2
    (ck / ".run-1.pt.k1ll3d.tmp").write_bytes(b"partial")  # as a kill mid-save leaves it (the kill may miss one)
    (ck / ".other.pt.k1ll3d.tmp").write_bytes(b"partial")  # another file's: not this resume's to remove
    assert main(["compare", "--resume", "1", "--db", str(db), "--set", f"epochs={total}", "--no-progress"]) == 0
    capsys.readouterr()
    with contextlib.closing(sqlite3.connect(db)) as conn:
        status = conn.execute("SELECT status FROM runs WHERE id = 1").fetchone()[0]
        epochs = [row[0] for row in conn.execute("SELECT epoch FROM epochs WHERE run_id = 1 ORDER BY epoch")]
    assert status == "finished" and epochs == list(range(1, max(total, kept) + 1))
    # a kill during a save can leave the writer's temporary file (nothing runs after SIGKILL); the resume removes it
    left = [p.name for p in ck.iterdir() if p.name.endswith(".tmp")]
    assert left == [".other.pt.k1ll3d.tmp"], "a temporary file of the run's checkpoint was left behind"
    # runs show shows the config the run was resumed with
    assert main(["runs", "show", "1", "--db", str(db)]) == 0
    assert f"epochs = {total}" in capsys.readouterr().out


BLOCKING_MODEL = """
import os, sys, time
from torch import nn


class Held(nn.Module):
    \"\"\"The first sweep worker to train holds its trial here (alive, beating its heartbeat) until it is
    killed; every other trial, the retry included, trains at once. No timing window: the test waits for
    the holder to say who it is, however long that takes on a loaded machine.\"\"\"

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        if self.training and "--worker" in sys.argv:
            try:
                fd = os.open("holder.pid", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                fd = None
            if fd is not None:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                while True:
                    time.sleep(0.05)
        return self.inner(x)


def build(input_shape, n_outputs):
    return Held(nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 32), nn.ReLU(), nn.Dropout(0.5),
                              nn.Linear(32, n_outputs)))
"""


def test_kill_9_of_a_sweep_worker_mid_trial_is_retried_and_the_sweep_exits_0(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from droplab.lab import sweep as S

    (tmp_path / "held.py").write_text(BLOCKING_MODEL)
    storage = tmp_path / "sweeps.db"
    args = ["sweep", "--name", "kill", "--trials", "2", "--workers", "2", "--storage", str(storage), "--db",
            str(tmp_path / "runs.db"), "--sampler", "random", "--no-pruning", "--heartbeat", "1", "--grace", "5",
            "--model", "held.py:build", "--set", "dataset=digits", "--set", "epochs=3", "--set", "threads=1"]
    proc = droplab_process(args, tmp_path)
    holder = tmp_path / "holder.pid"
    try:
        # deadlines only: wait (as long as a loaded machine needs) for a worker to hold its trial, then kill it
        pid = int(wait_for(lambda: holder.exists() and holder.read_text().strip(), 300, "a worker holding a trial",
                           proc))

        def held_trial():
            study = optuna.load_study(study_name="kill", storage=f"sqlite:///{storage}")
            return next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                         if t.user_attrs.get("pid") == pid), None)

        killed = wait_for(held_trial, 120, "the held trial in the storage", proc)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert "killed by SIGKILL" in err and f"trial {killed.number} was retried as trial" in err
    assert "retries:" in out and "Traceback" not in err
    study, _ = S.load_spec("kill", S.open_storage(str(storage)))
    assert S.trial_counts(study).get("COMPLETE") == 2
    trials = study.get_trials()
    assert trials[killed.number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == killed.number)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[killed.number].params


# read-only and full file systems --------------------------------------------------------------------

def test_read_only_store_is_listed_and_refused_for_writing(tmp_path, capsys):
    from droplab.lab.store import RunStore

    with tmpfs(tmp_path / "ro", "4m") as mount:
        db = mount / "r.db"
        with RunStore(db) as store:
            run_id = store.start_run({"dropout": 0.5}, name="kept")
            store.log_epoch(run_id, 1, {"val_acc": 0.5})
            store.finish_run(run_id, {"val_acc": 0.5})
        before = db.read_bytes()
        remount_read_only(mount)
        assert main(["runs", "--db", str(db)]) == 0
        assert "kept" in capsys.readouterr().out
        assert main(["runs", "show", str(run_id), "--db", str(db)]) == 0
        assert "val_acc" in capsys.readouterr().out
        assert main(["compare", "--db", str(db), "--dry-run", "--dataset", "digits"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("droplab compare: error:") and "read-only" in err.lower()
        assert db.read_bytes() == before and sorted(p.name for p in mount.iterdir()) == ["r.db"]


def test_full_disk_during_save_leaves_no_partial_file_and_keeps_the_epochs(tmp_path, data, capsys):
    with tmpfs(tmp_path / "full", "64k") as mount:
        db = tmp_path / "r.db"
        code = main(["compare", "--dataset", str(data), "--set", "epochs=2", "--db", str(db), "--save",
                     str(mount / "ck"), *TRAIN])
        err = capsys.readouterr().err
        assert code == 2, err
        assert "the disk is full" in err and "Traceback" not in err and len(err.strip().splitlines()) <= 3
        assert not [p for p in (mount / "ck").iterdir()], "a partial checkpoint or temporary file was left"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (status, error), = conn.execute("SELECT status, error FROM runs WHERE id = 1").fetchall()
        epochs = conn.execute("SELECT COUNT(*) FROM epochs WHERE run_id = 1").fetchone()[0]
    assert status == "failed" and "disk is full" in error and epochs == 1  # the finished epoch is stored


def test_unwritable_json_of_bench_is_refused_before_measuring(tmp_path, capsys):
    with tmpfs(tmp_path / "ro", "1m") as mount:
        remount_read_only(mount)
        assert main(["bench", "mc", "--quick", "--json", str(mount / "out.json")]) == 2
        captured = capsys.readouterr()
        assert "read-only" in captured.err and captured.out == ""  # nothing measured, nothing printed


# concurrent writers ---------------------------------------------------------------------------------

def _resume_and_hold(db: str, run_id: int, results) -> None:
    from droplab.lab.errors import UserError
    from droplab.lab.store import RunStore

    with RunStore(db) as store:
        try:
            store.resume_run(run_id)
            results.put("won")
            time.sleep(3)  # alive, holding the run, while the other process tries
        except UserError as error:
            results.put(str(error))


def test_two_processes_resuming_one_run_exactly_one_wins(tmp_path):
    import multiprocessing as mp

    from droplab.lab.store import RunStore

    db = str(tmp_path / "r.db")
    with RunStore(db) as store:
        run_id = store.start_run({"x": 1}, name="contested")
        store.finish_run(run_id, {}, status="failed", error="killed")
    context = mp.get_context("fork")  # no re-import: the store opens its own connection
    results = context.Queue()
    procs = [context.Process(target=_resume_and_hold, args=(db, run_id, results)) for _ in range(2)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert outcomes.count("won") == 1
    assert any(f"run {run_id} is still being trained by process" in o for o in outcomes)


def _write_many(db: str, worker: int, epochs: int) -> None:
    from droplab.lab.store import RunStore

    with RunStore(db) as store:
        run_id = store.start_run({"worker": worker}, name=f"w{worker}")
        for epoch in range(1, epochs + 1):
            store.log_epoch(run_id, epoch, {"val_acc": epoch / epochs})
        store.finish_run(run_id, {"val_acc": 1.0})


def test_concurrent_writers_lose_nothing(tmp_path):
    import multiprocessing as mp

    from droplab.lab.store import RunStore

    db = str(tmp_path / "r.db")
    RunStore(db).close()
    context = mp.get_context("fork")  # no re-import: the store opens its own connection
    procs = [context.Process(target=_write_many, args=(db, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    with RunStore(db, read_only=True) as store:
        runs = store.list_runs()
        assert sorted(r["name"] for r in runs) == ["w0", "w1", "w2", "w3"]
        assert all(r["status"] == "finished" and len(store.epochs(r["id"])) == 40 for r in runs)


# names that try to leave their directory; optional steps that fail after training -------------------

def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def test_hostile_run_names_stay_inside_the_report_dir(tmp_path, data, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    reports = outside / "reports"
    refused = main(["compare", "--dataset", str(data), "--set", "name=a/../../x \x1b[2J\x07", "--db",
                    str(tmp_path / "r.db"), "--report-dir", str(reports), "--rates", "0,0.5"])
    assert refused == 2 and not _files_under(outside)  # control characters: refused before anything is written
    assert "\x1b" not in "".join(capsys.readouterr())
    name = "a/../../../escape $\\x{$ \u202e"  # path climbing, mathtext and a bidirectional override
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["compare", "--dataset", str(data), "--set", "epochs=1", "--set", f"name={name}", "--db",
                     str(tmp_path / "r.db"), "--report-dir", str(reports), "--rates", "0,0.5", "--no-progress",
                     "--no-coadaptation", "--set", "width=16"])
    assert not [w for w in caught if "Glyph" in str(w.message)], "control characters reached matplotlib"
    captured = capsys.readouterr()
    assert code == 0, captured.err
    written = _files_under(tmp_path)
    assert all(reports in p.parents or p.name.startswith("r.db") or p == data for p in written), written
    assert any(p.name == "index.html" for p in written)
    assert "\x1b" not in captured.out + captured.err and "\x07" not in captured.out + captured.err


def test_a_report_that_cannot_be_written_loses_nothing(tmp_path, data, capsys):
    with tmpfs(tmp_path / "full", "16k") as mount:
        db = tmp_path / "r.db"
        code = main(["compare", "--dataset", str(data), "--set", "epochs=1", "--set", "width=16", "--db", str(db),
                     "--report-dir", str(mount), "--rates", "0,0.5", "--no-progress", "--no-coadaptation"])
        captured = capsys.readouterr()
        assert code == 1, captured.err
        assert "val" in captured.out and "Traceback" not in captured.err  # the table and verdict were printed
        assert len([line for line in captured.err.splitlines() if "error" in line]) == 1
    with contextlib.closing(sqlite3.connect(db)) as conn:
        statuses = [row[0] for row in conn.execute("SELECT status FROM runs ORDER BY id")]
        comparisons = conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]
    assert statuses == ["finished", "finished"] and comparisons == 1


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    from droplab.lab.files import atomic_write, safe_component, write_json

    target = write_json(tmp_path / "results.json", {"kept": True})
    with pytest.raises(ZeroDivisionError), atomic_write(target) as handle:
        handle.write('{"half": ')
        raise ZeroDivisionError("the writer crashes mid-file")
    assert target.read_text() == '{\n  "kept": true\n}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    for hostile in ("../x", "a/../../b", "..", ".hidden", "", "\x1b[2J", "C:\\win", "/abs"):
        component = safe_component(hostile)
        assert component and "/" not in component and "\\" not in component and not component.startswith(".")
        assert (tmp_path / component).resolve().parent == tmp_path.resolve()
