"""``droplab sweep``: search dropout rates with Optuna (SQLite or a server DB, many workers); ``sweep show NAME``.

The engine is :mod:`droplab.lab.sweep` (storage, study, workers, search space) and
:mod:`droplab.lab.sweep_report` (the summary and the HTML report).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

from ..lab import sweep as S
from .arguments import add_config_arguments, add_model_arguments, config_from_args, input_site_flag, with_input_rate

__all__ = ["configure", "run"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="study name (default: sweep-<date>-<time>)")
    parser.add_argument("--resume", metavar="NAME", help="continue the study NAME with its stored definition")
    parser.add_argument("--storage", default=S.DEFAULT_STORAGE,
                        help="SQLite file or SQLAlchemy URL, e.g. postgresql://user:pw@host/db "
                             f"(default: {S.DEFAULT_STORAGE})")
    parser.add_argument("--db", default="droplab.db", help="the lab's run store for the trials' runs")
    parser.add_argument("--trials", type=int, default=None, help="finished trials to run to (default: 20)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default: 1)")
    parser.add_argument("--sampler", choices=S.SAMPLERS, default="tpe", help="search strategy (default: tpe)")
    parser.add_argument("--search", type=_csv, default=["dropout"],
                        help=f"comma-separated dimensions: {', '.join(S.SEARCHABLE)} (default: dropout)")
    parser.add_argument("--max-rate", type=float, default=0.8, help="upper bound of searched rates (default: 0.8)")
    parser.add_argument("--grid-rates", type=lambda s: [float(x) for x in _csv(s)],
                        default=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], help="rates tried by --sampler grid")
    parser.add_argument("--no-pruning", action="store_true", help="run every trial to the end")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default: 0)")
    add_config_arguments(parser)
    add_model_arguments(parser)  # --model/--dataset: the user's own factories, as for compare
    parser.add_argument("--heartbeat", type=int, default=10, help="heartbeat interval in seconds (default: 10)")
    parser.add_argument("--grace", type=int, default=None,
                        help="seconds without heartbeat before a trial is failed and retried (default: 3x heartbeat)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    show = sub.add_parser("show", help="best configuration, rate curve, importances and an HTML report")
    show.add_argument("study", metavar="NAME")
    show.add_argument("--storage", dest="show_storage", default=None, help="as for the sweep")
    show.add_argument("--out", default="reports", help="report directory (default: reports)")


def _spec_from_args(args: argparse.Namespace) -> S.SweepSpec:
    """The sweep's definition, after every check that needs no study: storage URL, data, model, run store."""
    from ..lab.preflight import check_before_training

    shorthand = {"model": args.model, "dataset": args.dataset, "task": args.task, "input_site": input_site_flag(args)}
    base = config_from_args(args, shorthand)
    name = args.name or datetime.datetime.now().strftime("sweep-%Y%m%d-%H%M%S")
    spec = S.SweepSpec(name=name, base=base.to_dict(), search=list(args.search),
                       trials=20 if args.trials is None else args.trials, sampler=args.sampler, seed=args.seed,
                       max_rate=args.max_rate, grid_rates=list(args.grid_rates), pruning=not args.no_pruning,
                       db=os.path.abspath(args.db))
    S.check_storage(args.storage)  # a bad URL is one error before anything is created
    searches_rates = bool({"dropout", "layer_rates"} & set(spec.search))
    prepared = check_before_training([base], db=spec.db, command="sweep" if searches_rates else None)
    base = prepared.resolve(with_input_rate(base, args, prepared))  # every site's rate, as the trials start
    spec.base, spec.sites = base.to_dict(), len(prepared.built_for(base).sites)
    return spec


def _show(args: argparse.Namespace) -> int:
    from ..lab.preflight import check_output_dir
    from ..lab.sweep_report import show

    check_output_dir(args.out, "--out")  # before the study is read, not after
    storage = args.show_storage or args.storage
    S.existing_storage(storage, f"show {args.study} from")
    study, _ = S.load_spec(args.study, S.open_storage(storage))
    return show(study, out_dir=args.out)


def run(args: argparse.Namespace) -> int:
    from ..lab.errors import UserError

    if getattr(args, "action", None) == "show":
        return _show(args)
    if args.worker and not args.name:
        raise UserError("--worker needs --name (the study to join)")
    if args.worker or args.resume:
        S.existing_storage(args.storage, "join" if args.worker else f"resume {args.resume} from")
    if args.worker:
        S.run_worker(args.name, args.storage, worker_index=args.worker_index, threads=args.threads,
                     heartbeat_interval=args.heartbeat, grace_period=args.grace)
        return 0
    start = time.perf_counter()
    spec = None if args.resume else _spec_from_args(args)
    try:
        study = S.run_sweep(spec, args.storage, workers=args.workers, resume=args.resume, trials=args.trials,
                            heartbeat_interval=args.heartbeat, grace_period=args.grace)
    except S.SweepIncomplete as error:
        print(f"droplab sweep: {error}", file=sys.stderr)
        return 1
    if study is None:  # a non-zero torchrun rank: rank 0 reports
        return 0
    _print_summary(study, args.storage, time.perf_counter() - start)
    return 0


def _print_summary(study, storage: str, elapsed: float) -> None:
    from ..lab.files import terminal_safe
    from ..lab.sweep_report import summarize

    counts = S.trial_counts(study)
    name = terminal_safe(study.study_name)
    print(f"study {name}: " + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
          + f" in {elapsed:.1f} s")
    if counts.get("FAIL"):
        print(f"retries: {S.retried_summary(study)}")
    print(summarize(study))
    print(f"details and plots: droplab sweep show {name} --storage {terminal_safe(storage)}")
