"""``droplab runs``: list the runs in the run store; ``droplab runs show ID`` shows one run in full."""

from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

from .errors import MissingFileError, UserError
from .files import terminal_safe

__all__ = ["configure", "run", "format_runs", "format_run", "open_for_reading"]


def _when(timestamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def format_runs(runs: list[dict]) -> str:
    header = ["id", "status", "name", "group", "study", "started", "epochs", "val acc", "test acc", "gap", "wall s"]
    rows = [header]
    for r in runs:
        final = r.get("final") or {}
        rows.append([str(r["id"]), r["status"], r["name"] or "-", r.get("group_id") or "-", r.get("study") or "-",
                     _when(r["started_at"]), str(final.get("epochs", "-")), _num(final.get("val_acc")),
                     _num(final.get("test_acc")), _num(final.get("gap")), _num(r.get("wall_time_s"), "{:.1f}")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def format_run(run: dict, epochs: list[dict]) -> str:
    lines = [f"run {run['id']}: {run['name'] or '-'}  [{run['status']}]",
             f"  group {run.get('group_id') or '-'}  study {run.get('study') or '-'}  host {run.get('host') or '-'}",
             f"  started {_when(run['started_at'])}  finished {_when(run.get('finished_at'))}  "
             f"wall {_num(run.get('wall_time_s'), '{:.1f}')} s",
             f"  versions {json.dumps(run.get('versions') or {})}"]
    if run.get("checkpoint"):
        lines.append(f"  checkpoint {run['checkpoint']}")
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
    lines.append("config:")
    lines += [f"  {k} = {json.dumps(v)}" for k, v in (run.get("config") or {}).items()]
    final = {k: v for k, v in (run.get("final") or {}).items() if k != "reliability"}
    if final:
        lines.append("final:")
        lines += [f"  {k} = {round(v, 4) if isinstance(v, float) else v}" for k, v in final.items()]
    if epochs:
        lines.append("epochs:")
        keys = ["epoch", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "gap", "grad_norm"]
        lines.append("  " + "  ".join(f"{k:>10}" for k in keys))
        for m in epochs:
            lines.append("  " + "  ".join(f"{m[k]:>10}" if k == "epoch" else f"{m.get(k, float('nan')):>10.4f}"
                                          for k in keys))
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="list (default) or show")
    parser.add_argument("id", nargs="?", type=int, help="run id (for show)")
    parser.add_argument("--db", default="droplab.db", help="run store (default droplab.db)")
    parser.add_argument("--group", help="only runs of this comparison id")
    parser.add_argument("--study", help="only runs of this study")
    parser.add_argument("--status", choices=("running", "finished", "failed", "pruned"), help="only runs in this state")
    parser.add_argument("--limit", type=int, default=50, help="at most this many runs, newest first (default 50)")


def open_for_reading(db: str):
    """The store at ``db`` for listing: writable when possible (so dead runs get marked failed), else read-only.

    Raises:
        UserError: no store at ``db``, or it is not a run store.
    """
    from .store import RunStore

    if db == ":memory:":
        return RunStore(db)
    path = Path(db).expanduser()
    if not path.exists():
        raise MissingFileError(f"no run store at {db} (run droplab compare first, or pass --db)")
    writable = os.access(path, os.W_OK) and os.access(path.resolve().parent, os.W_OK)
    if writable:
        try:
            return RunStore(db)
        except UserError as error:
            if "read-only" not in str(error) and "cannot be written" not in str(error):
                raise
    return RunStore(db, read_only=True)


def run(args: argparse.Namespace) -> int:
    with open_for_reading(args.db) as store:
        store.reap_stale()
        if args.action == "show":
            if args.id is None:
                raise UserError("give a run id, e.g. droplab runs show 1 (droplab runs lists them)")
            run_row = store.get_run(args.id)  # an unknown id is a NoSuchRun, a UserError
            print(terminal_safe(format_run(run_row, store.epochs(args.id)), keep_newlines=True))
            return 0
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit must be a positive integer, but got {args.limit}")
        runs = store.list_runs(group=args.group, study=args.study, status=args.status, limit=args.limit)
        print(terminal_safe(format_runs(runs), keep_newlines=True) if runs else "no runs")
    return 0
