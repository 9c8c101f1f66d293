"""The run store as text: the runs table (``droplab runs``) and one run in full (``droplab runs show ID``)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from .errors import MissingFileError, UserError

__all__ = ["format_runs", "format_run", "open_for_reading"]


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
