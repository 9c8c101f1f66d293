"""``droplab compare``: does dropout help this model? Off vs as built vs halved, with a verdict.

A thin layer over :func:`droplab.lab.comparison.run_comparison` (the Python API ``droplab.lab.compare``). By
default three MLP runs on MNIST-1D: every dropout site off (p = 0), the model as built (p = 0.5) and
every rate halved. ``--model`` and ``--dataset`` take the user's own factories. Every run is stored in
the run store (``--db``) as it finishes, then the comparison; the table and the verdict are printed,
and a report is written to ``<report-dir>/<comparison id>/index.html``.

Examples::

    droplab compare
    droplab compare --model my_model.py:build --dataset my_data.py:load
    droplab compare --rates 0,0.2,0.5 --input-dropout 0.2
    droplab compare --rates "0,0.1/0.5,0.05/0.25"        # per-site rates, '/' between sites (droplab.sites order)
    droplab compare --model cnn1d --variant channel --set width=32
    droplab compare --dataset diabetes.csv --set label_column=target --task regression
    droplab compare --config exp.toml --set epochs=20 --dry-run
    droplab compare --save checkpoints && droplab compare --resume 3 --set epochs=80
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..lab.config import VARIANTS, ExperimentConfig
from .arguments import add_config_arguments, add_model_arguments, config_from_args, input_site_flag, with_input_rate

__all__ = ["configure", "run", "parse_rates", "build_configs", "resolve_base"]


def _user_error(message: str) -> Exception:
    from ..lab.errors import UserError

    return UserError(message)


def parse_rates(text: str) -> list[float | list[float]]:
    """``"0,0.5,0.25"`` -> ``[0.0, 0.5, 0.25]``; a ``/``-separated item gives per-site rates."""
    from ..functional import check_probability

    rates: list[float | list[float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise _user_error(f"--rates has an empty item: {text!r} (expected e.g. 0,0.5,0.25 or 0,0.1/0.5)")
        try:
            values = [float(part) for part in item.split("/")]
        except ValueError:
            raise _user_error(f"--rates items must be numbers or /-separated per-site numbers, but got {item!r}") \
                from None
        for value in values:
            check_probability(value)
        rates.append(values if len(values) > 1 else values[0])
    if len(rates) < 2:
        raise _user_error(f"--rates needs at least two rates to compare (e.g. 0,0.5), but got {text!r}")
    return rates


def build_configs(base: ExperimentConfig, rates: list[float | list[float]] | None, prepared=None
                  ) -> list[ExperimentConfig]:
    """The runs, one rate per site: off / as built / halved without ``rates``, else one per rate
    (:func:`droplab.lab.comparison.plan`)."""
    from ..lab.comparison import plan

    return plan(base, rates, prepared=prepared)


def resolve_base(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults, the model's own defaults, then ``--config``, the shorthand flags and ``--set`` (later wins)."""
    return config_from_args(args, {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
                                   "variant": args.variant, "schedule": args.schedule,
                                   "input_site": input_site_flag(args), "seed": args.seed,
                                   "task": getattr(args, "task", None)})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.add_argument("--rates", default=None,
                        help="comma-separated rates to compare, each setting every dropout site; '/' separates "
                             "per-site rates in droplab.sites order (default: off, as built, halved)")
    add_config_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--variant", choices=VARIANTS, help="dropout variant at every built-in site (default dropout)")
    parser.add_argument("--schedule", help="rate schedule: ramp:N, early:N or late:N")
    parser.add_argument("--seed", type=int, help="seed of init, split, data order and masks")
    parser.add_argument("--db", default="droplab.db", help="run store (SQLite file; default droplab.db)")
    parser.add_argument("--report-dir", default="reports", help="where reports go (default reports/)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--no-coadaptation", action="store_true", help="skip the co-adaptation measures")
    parser.add_argument("--save", metavar="DIR", help="write a checkpoint of every run to DIR after each epoch")
    parser.add_argument("--resume", type=int, metavar="ID",
                        help="continue stored run ID from its checkpoint (with --set epochs=N to extend it)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configs and exit")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bars")


def _stderr(text: str) -> None:
    from ..lab.files import terminal_safe

    print(f"droplab compare: {terminal_safe(text)}", file=sys.stderr)


def _configs(args: argparse.Namespace) -> tuple[ExperimentConfig, list[ExperimentConfig], object]:
    """The base config, the runs (one rate per site) and what the checks before training loaded and built."""
    from ..lab.errors import user_errors
    from ..lab.preflight import check_before_training
    from ..lab.trainer import check_schedule

    with user_errors(""):  # config values, rates and schedules the user gave
        base = resolve_base(args)
        rates = parse_rates(args.rates) if args.rates is not None else None
        warning = check_schedule(base)
    if warning:
        _stderr(f"warning: {warning}")
    # data, model, store and output dirs, before any epoch (and --dry-run)
    prepared = check_before_training([base], db=args.db, save=args.save,
                                     report_dir=None if args.no_report else args.report_dir, command="compare")
    base = with_input_rate(base, args, prepared)
    return base, build_configs(base, rates, prepared), prepared


def run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        return _resume(args)
    base, configs, prepared = _configs(args)
    if args.dry_run:
        from ..lab.comparison import assign_roles

        roles = {index: role for role, index in assign_roles(configs).items()}
        print(json.dumps([{"role": roles.get(i, "extra"), "label": c.label(), "config": c.to_dict()}
                          for i, c in enumerate(configs)], indent=2))
        return 0
    from ..lab.store import RunStore

    with RunStore(args.db) as store:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            _stderr(f"{len(configs)} runs of {base.model} on {base.dataset}, {base.epochs} epochs each; "
                    f"storing in {args.db}")
        return _compare(args, configs, prepared, store)


def _compare(args: argparse.Namespace, configs: list[ExperimentConfig], prepared, store) -> int:
    """Train, store, print; the optional parts' failure is one line and exit 1 (nothing lost)."""
    from ..lab.comparison import run_comparison
    from ..lab.files import terminal_safe
    from ..lab.report import format_table

    echo = _stderr if (args.no_progress or not sys.stderr.isatty()) else (lambda text: None)
    result = run_comparison(configs, prepared=prepared, store=store, progress=not args.no_progress, save=args.save,
                            echo=echo, coadaptation=not args.no_coadaptation,
                            report_dir=None if args.no_report else args.report_dir)
    if os.environ.get("RANK", "0") != "0":
        return 0
    how = "inferred from the targets; --task sets it" if configs[0].task == "auto" else "given"
    print(f"task: {result.task} ({how})\n")
    print(terminal_safe(result.table, keep_newlines=True))
    if any("correlation" in run for run in result.runs):
        from ..lab.report import coadaptation_columns

        print("\nco-adaptation (validation sample, mean over hidden layers; 'measure s' is its time):")
        print(terminal_safe(format_table(result.runs, coadaptation_columns(result.task)), keep_newlines=True))
    print("\n" + terminal_safe(result.verdict, keep_newlines=True))
    if result.report_path is not None:
        print(f"\nreport: {result.report_path}")
    for error in result.errors:
        _stderr(f"error: {error}; comparison {result.id} and its runs are stored in {args.db}")
    return 1 if result.errors else 0


def _resume(args: argparse.Namespace) -> int:
    from ..lab.errors import MissingFileError, UserError
    from ..lab.report import format_table
    from ..lab.store import RunStore
    from ..lab.tasks import task_of
    from ..lab.trainer import resume

    epochs = args.epochs
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key.strip() == "epochs":
            try:
                epochs = int(value)
            except ValueError:
                raise UserError(f"epochs must be an integer, but got {value.strip()!r}") from None
    if args.db != ":memory:" and not os.path.isfile(os.path.expanduser(args.db)):  # never create a store for it
        raise MissingFileError(f"no run store at {args.db} to resume run {args.resume} from (pass the --db it was "
                               "stored in)")
    with RunStore(args.db) as store:
        result = resume(args.resume, store=store, epochs=epochs, progress=not args.no_progress)
    print(format_table([{"label": f"run {result.run_id}", **result.final}], task_of(result.task).TABLE_COLUMNS))
    return 0
