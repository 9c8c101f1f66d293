"""The run store: every run, its per-epoch metrics and final metrics, in one SQLite file.

Stdlib ``sqlite3`` in WAL mode with a busy timeout, so several worker processes (a sweep, a data-parallel
job's rank 0 beside another comparison) can write to one file at once. Each epoch is committed as it
finishes, so a crash leaves the finished epochs stored; the trainer marks the run ``failed``.

Schema versions live in ``meta(schema_version)``; :data:`MIGRATIONS` upgrades an older file in place
on open. Run ``status`` is one of ``running``, ``finished``, ``failed``, ``pruned``. Opening a store for
writing marks ``failed`` every run still ``running`` whose process on this host is gone (killed, out of
memory), so every command that opens the store sees dead runs as failed (:meth:`RunStore.reap_stale`).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import MissingFileError, UserError

__all__ = ["RunStore", "NoSuchRun", "MIGRATIONS", "SCHEMA_VERSION", "STATUSES", "versions"]

STATUSES = ("running", "finished", "failed", "pruned")

# version n is reached by running MIGRATIONS[n - 1] on a version n - 1 file
MIGRATIONS: list[str] = [
    # 1: runs and their epochs
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed', 'pruned')),
        config TEXT NOT NULL,
        seed INTEGER,
        started_at REAL NOT NULL,
        finished_at REAL,
        wall_time_s REAL,
        final TEXT,
        error TEXT
    );
    CREATE TABLE epochs (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        epoch INTEGER NOT NULL,
        metrics TEXT NOT NULL,
        PRIMARY KEY (run_id, epoch)
    );
    """,
    # 2: provenance (host, versions), grouping into comparisons and studies, checkpoints
    """
    ALTER TABLE runs ADD COLUMN host TEXT;
    ALTER TABLE runs ADD COLUMN versions TEXT;
    ALTER TABLE runs ADD COLUMN group_id TEXT;
    ALTER TABLE runs ADD COLUMN study TEXT;
    ALTER TABLE runs ADD COLUMN checkpoint TEXT;
    CREATE INDEX runs_group ON runs(group_id);
    CREATE INDEX runs_study ON runs(study);
    CREATE TABLE comparisons (
        id TEXT PRIMARY KEY,
        created_at REAL NOT NULL,
        config TEXT NOT NULL,
        verdict TEXT,
        report TEXT
    );
    """,
    # 3: the writing process, so a run whose process died without a word (SIGKILL, OOM) can be marked failed
    """
    ALTER TABLE runs ADD COLUMN pid INTEGER;
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# SQLite's words for problems of the user's file or file system, each with the fix to suggest
_STORE_PROBLEMS = (
    ("not a database", "is not a droplab run store (not a SQLite database); pass another --db"),
    ("file is encrypted", "is not a droplab run store (not a SQLite database); pass another --db"),
    ("malformed", "is damaged (database disk image is malformed); restore it from a backup or pass another --db"),
    ("readonly", "is on a read-only file system or not writable; choose a writable --db"),
    ("read-only", "is on a read-only file system or not writable; choose a writable --db"),
    ("unable to open", "cannot be opened (missing directory, no permission, or a special file system); "
                       "choose a regular, writable --db path"),
    ("disk i/o", "cannot be written (disk I/O error: full, read-only or special file system); choose another --db"),
    ("full", "cannot be written: the disk is full; free space or choose another --db"),
    ("locked", "is locked by another process for too long; retry when it finishes"),
)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def versions() -> dict[str, str]:
    """Versions of the software a run depends on (stored with every run)."""
    import platform

    import numpy
    import torch

    from .. import __version__

    return {"droplab": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


class NoSuchRun(UserError, KeyError):
    """A run id that is not in the store: a user error, and a ``KeyError`` for library callers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def _store_problem(path: str, error: BaseException, expected_only: bool = False) -> str | None:
    """One line naming the store, what is wrong with it and the fix; None if ``expected_only`` and unexpected."""
    text = str(error).lower()
    for needle, explanation in _STORE_PROBLEMS:
        if needle in text:
            return f"run store {path} {explanation}"
    if isinstance(error, OSError):
        return f"run store {path} cannot be created: {error.strerror or error}; choose another --db"
    return None if expected_only else f"run store {path}: {error}"


class RunStore:
    """Runs in a SQLite file (created, or migrated to :data:`SCHEMA_VERSION`, on open).

    Args:
        path: the database file. Default: ``"droplab.db"`` in the working directory.
        busy_timeout_s: how long a writer waits for another process's lock. Default: 30.
        read_only: open for reading only (listing; works on a read-only file system); the file must exist
            at the current schema. Default: False.

    Raises:
        UserError: the file is not a SQLite database, is a directory, or cannot be created or written.

    Example::

        >>> store = RunStore(":memory:")
        >>> run_id = store.start_run({"dropout": 0.5}, name="p=0.5", seed=0)
        >>> store.log_epoch(run_id, 1, {"val_acc": 0.7})
        >>> store.finish_run(run_id, {"test_acc": 0.7})
        >>> store.get_run(run_id)["status"]
        'finished'
    """

    def __init__(self, path: str | Path = "droplab.db", *, busy_timeout_s: float = 30.0,
                 read_only: bool = False) -> None:
        self.path = str(path)
        self.read_only = read_only
        try:
            self._conn = self._connect(busy_timeout_s)
            if read_only:
                self._check_readable()
            else:
                if self.path != ":memory:":
                    self._enable_wal(busy_timeout_s)
                self._conn.execute("PRAGMA foreign_keys = ON")
                self.migrate()
                self.reap_stale()  # every opener sees dead runs as failed, not "running"
        except UserError:
            raise
        except (sqlite3.DatabaseError, OSError) as error:
            raise UserError(_store_problem(self.path, error)) from None

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        if self.path != ":memory:":
            file = Path(self.path).expanduser()
            if file.is_dir():
                raise UserError(f"run store {self.path} is a directory; give a file path such as {file / 'droplab.db'}")
            if self.read_only and not file.is_file():
                raise MissingFileError(f"no run store at {self.path} (run droplab compare first, or pass --db)")
            if not self.read_only:
                file.resolve().parent.mkdir(parents=True, exist_ok=True)
        if self.read_only:
            # mode=ro never writes; immutable=1 also reads a WAL store whose directory is read-only (no -shm file)
            uri = Path(self.path).expanduser().resolve().as_uri()
            try:
                conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=busy_timeout_s, isolation_level=None)
                conn.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.OperationalError:
                conn = sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)
        else:
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        return conn

    def _enable_wal(self, busy_timeout_s: float) -> None:
        # SQLite answers a journal-mode switch that races another connection with SQLITE_BUSY at once,
        # without its busy handler (two processes opening a new store together), so wait here instead
        deadline = time.monotonic() + busy_timeout_s
        delay = 0.01
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error).lower() or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _check_readable(self) -> None:
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {current}, newer than this droplab supports "
                               f"({SCHEMA_VERSION}); upgrade droplab")
        if current < SCHEMA_VERSION:
            raise UserError(f"run store {self.path} has schema version {current} and is opened read-only; open it "
                            f"once writable (any droplab compare with --db {self.path}) to upgrade it")

    # schema --------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue instead of deadlocking
        if self.read_only:
            raise RuntimeError(f"run store {self.path} was opened read-only")
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
        except sqlite3.OperationalError as error:
            message = _store_problem(self.path, error, expected_only=True)
            if message is None:
                raise
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise UserError(message) from error

    def schema_version(self) -> int:
        exists = self._conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not exists:
            return 0
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row["value"]) if row else 0

    def migrate(self, target: int = SCHEMA_VERSION) -> int:
        """Apply the missing migrations up to ``target``; returns the resulting version."""
        with self._transaction() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            current = self.schema_version()
            if current > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {current}, newer than this droplab supports "
                                   f"({SCHEMA_VERSION}); upgrade droplab")
            for version in range(current + 1, target + 1):
                for statement in MIGRATIONS[version - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
            return max(current, target)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # writing -------------------------------------------------------------------------------------
    def start_run(self, config: dict, *, name: str = "", seed: int | None = None, group: str | None = None,
                  study: str | None = None, checkpoint: str | None = None) -> int:
        with self._transaction() as conn:
            cursor = conn.execute(
                "INSERT INTO runs (name, status, config, seed, started_at, host, versions, group_id, study, checkpoint,"
                " pid) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, json.dumps(config), seed, time.time(), socket.gethostname(), json.dumps(versions()), group,
                 study, checkpoint, os.getpid()))
            return int(cursor.lastrowid)

    def resume_run(self, run_id: int) -> None:
        """Mark a run ``running`` again (``--resume``), refusing one that a live process on this host still trains.

        The check and the update are one transaction, so of two processes resuming the same run at once,
        exactly one wins. A run marked ``running`` by another host cannot be checked and is taken over.
        """
        with self._transaction() as conn:
            row = conn.execute("SELECT status, pid, host FROM runs WHERE id = ?", (int(run_id),)).fetchone()
            if row is None:
                raise UserError(f"no run with id {run_id} in {self.path} (droplab runs --db {self.path} lists them)")
            if (row["status"] == "running" and row["pid"] is not None and row["pid"] != os.getpid()
                    and row["host"] == socket.gethostname() and _alive(row["pid"])):
                raise UserError(f"run {run_id} is still being trained by process {row['pid']}; wait for it to "
                                f"finish or stop it (kill {row['pid']}) before --resume")
            conn.execute("UPDATE runs SET status = 'running', finished_at = NULL, error = NULL, pid = ?, host = ? "
                         "WHERE id = ?", (os.getpid(), socket.gethostname(), int(run_id)))

    def reap_stale(self) -> list[int]:
        """Mark ``failed`` the runs still ``running`` whose process on this host is gone (killed, out of memory).

        Their finished epochs stay stored. Returns the ids marked (none on a read-only store).
        """
        if self.read_only:
            return []
        rows = self._conn.execute("SELECT id, pid FROM runs WHERE status = 'running' AND host = ? AND pid IS NOT NULL",
                                  (socket.gethostname(),)).fetchall()
        stale = [row["id"] for row in rows if not _alive(row["pid"])]
        for run_id in stale:
            self._update(run_id, status="failed", finished_at=time.time(),
                         error="the training process exited without finishing the run (killed?)")
        return stale

    def log_epoch(self, run_id: int, epoch: int, metrics: dict) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO epochs (run_id, epoch, metrics) VALUES (?, ?, ?)",
                         (run_id, int(epoch), json.dumps(metrics)))

    def finish_run(self, run_id: int, final: dict | None = None, *, status: str = "finished",
                   error: str | None = None, wall_time_s: float | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, but got {status!r}")
        fields: dict[str, Any] = {"status": status, "finished_at": time.time(), "error": error}
        if final is not None:
            fields["final"] = json.dumps(final)
        if wall_time_s is not None:
            fields["wall_time_s"] = float(wall_time_s)
        self._update(run_id, **fields)

    def set_checkpoint(self, run_id: int, path: str) -> None:
        self._update(run_id, checkpoint=path)

    def update_config(self, run_id: int, config: dict) -> None:
        """Replace a run's stored config (``--resume`` with more epochs stores what actually runs)."""
        self._update(run_id, config=json.dumps(config))

    def _update(self, run_id: int, **fields: Any) -> None:
        assignments = ", ".join(f"{key} = ?" for key in fields)
        with self._transaction() as conn:
            cursor = conn.execute(f"UPDATE runs SET {assignments} WHERE id = ?", (*fields.values(), run_id))
            if cursor.rowcount == 0:
                raise KeyError(f"no run with id {run_id} in {self.path}")

    def save_comparison(self, comparison_id: str, config: dict, verdict: dict | None = None,
                        report: str | None = None) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO comparisons (id, created_at, config, verdict, report) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (comparison_id, time.time(), json.dumps(config), json.dumps(verdict), report))

    # reading -------------------------------------------------------------------------------------
    @staticmethod
    def _run_dict(row: sqlite3.Row) -> dict:
        run = dict(row)
        for key in ("config", "final", "versions"):
            run[key] = json.loads(run[key]) if run.get(key) else None
        return run

    def get_run(self, run_id: int) -> dict:
        row = self._conn.execute("SELECT * FROM runs WHERE id = ?", (int(run_id),)).fetchone()
        if row is None:
            raise NoSuchRun(f"no run with id {run_id} in {self.path} (droplab runs --db {self.path} lists them)")
        return self._run_dict(row)

    def epochs(self, run_id: int) -> list[dict]:
        rows = self._conn.execute("SELECT epoch, metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (int(run_id),))
        return [{"epoch": row["epoch"], **json.loads(row["metrics"])} for row in rows]

    def list_runs(self, *, group: str | None = None, study: str | None = None, status: str | None = None,
                  limit: int | None = None) -> list[dict]:
        clauses, params = [], []
        for column, value in (("group_id", group), ("study", study), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(clauses) if clauses else "") + " ORDER BY id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._run_dict(row) for row in self._conn.execute(sql, params)]

    def get_comparison(self, comparison_id: str) -> dict:
        row = self._conn.execute("SELECT * FROM comparisons WHERE id = ?", (comparison_id,)).fetchone()
        if row is None:
            raise KeyError(f"no comparison {comparison_id!r} in {self.path}")
        result = dict(row)
        result["config"] = json.loads(result["config"])
        result["verdict"] = json.loads(result["verdict"]) if result["verdict"] else None
        return result
