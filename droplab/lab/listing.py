"""The run store as text: the runs table (``droplab runs``) and one run in full (``droplab runs show ID``)."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

from .errors import MissingFileError, UserError
from .files import terminal_safe

__all__ = ["format_runs", "format_run", "open_for_reading"]


def _when(timestamp: float | None) -> str:
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M") if timestamp else "-"


def _num(value, fmt: str = "{:.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def _cell(value: object) -> str:
    """One table cell of stored text: control characters dropped, so a name cannot forge lines or drive the
    terminal (names stored before droplab refused them, or by other writers, may hold any)."""
    return terminal_safe(value) or "-"


def format_runs(runs: list[dict]) -> str:
    """The runs as an aligned table, one line per run."""
    header = ["id", "status", "name", "group", "study", "started", "epochs", "val acc", "test acc", "gap", "wall s"]
    rows = [header]
    for r in runs:
        final = r.get("final") or {}
        rows.append([str(r["id"]), _cell(r["status"]), _cell(r["name"] or "-"), _cell(r.get("group_id") or "-"),
                     _cell(r.get("study") or "-"), _when(r["started_at"]), _cell(final.get("epochs", "-")),
                     _num(final.get("val_acc")), _num(final.get("test_acc")), _num(final.get("gap")),
                     _num(r.get("wall_time_s"), "{:.1f}")])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def _final_value(value: object) -> str:
    if isinstance(value, float):
        return str(round(value, 4))
    return _cell(value) if isinstance(value, str) else terminal_safe(value)


_EPOCH_KEYS = {"classification": ["epoch", "train_acc", "val_acc", "test_acc", "train_loss", "val_loss", "gap",
                                  "grad_norm"],
               "regression": ["epoch", "train_rmse", "val_rmse", "test_rmse", "train_loss", "val_loss", "gap",
                              "grad_norm"]}


def format_run(run: dict, epochs: list[dict]) -> str:
    """One run in full: where and when it ran, its config, final metrics and per-epoch metrics."""
    lines = [f"run {run['id']}: {_cell(run['name'] or '-')}  [{_cell(run['status'])}]",
             f"  group {_cell(run.get('group_id') or '-')}  study {_cell(run.get('study') or '-')}  "
             f"host {_cell(run.get('host') or '-')}",
             f"  started {_when(run['started_at'])}  finished {_when(run.get('finished_at'))}  "
             f"wall {_num(run.get('wall_time_s'), '{:.1f}')} s",
             f"  versions {json.dumps(run.get('versions') or {})}"]
    if run.get("checkpoint"):
        lines.append(f"  checkpoint {_cell(run['checkpoint'])}")
    if run.get("error"):
        lines.append(f"  error: {_cell(run['error'])}")
    lines.append("config:")  # JSON escapes every control character
    lines += [f"  {_cell(k)} = {json.dumps(v)}" for k, v in (run.get("config") or {}).items()]
    final = {k: v for k, v in (run.get("final") or {}).items() if k != "reliability"}
    if final:
        lines.append("final:")
        lines += [f"  {_cell(k)} = {_final_value(v)}" for k, v in final.items()]
    if epochs:
        lines.append("epochs:")
        keys = _EPOCH_KEYS["regression" if "train_rmse" in epochs[0] else "classification"]
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
