"""``droplab runs``: list the runs in the run store; ``droplab runs show ID`` shows one run in full."""

from __future__ import annotations

import argparse

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "show"), default="list", help="list (default) or show")
    parser.add_argument("id", nargs="?", type=int, help="run id (for show)")
    parser.add_argument("--db", default="droplab.db", help="run store (default droplab.db)")
    parser.add_argument("--group", help="only runs of this comparison id")
    parser.add_argument("--study", help="only runs of this study")
    parser.add_argument("--status", choices=("running", "finished", "failed", "pruned"), help="only runs in this state")
    parser.add_argument("--limit", type=int, default=50, help="at most this many runs, newest first (default 50)")


def run(args: argparse.Namespace) -> int:
    from ..lab.errors import UserError
    from ..lab.listing import format_run, format_runs, open_for_reading

    with open_for_reading(args.db) as store:  # opened writable where it can be, dead runs are marked failed
        if args.action == "show":
            if args.id is None:
                raise UserError("give a run id, e.g. droplab runs show 1 (droplab runs lists them)")
            run_row = store.get_run(args.id)  # an unknown id is a NoSuchRun, a UserError
            print(format_run(run_row, store.epochs(args.id)))  # every stored string made terminal-safe
            return 0
        if args.limit is not None and args.limit < 1:
            raise UserError(f"--limit must be a positive integer, but got {args.limit}")
        runs = store.list_runs(group=args.group, study=args.study, status=args.status, limit=args.limit)
        print(format_runs(runs) if runs else "no runs")
    return 0
