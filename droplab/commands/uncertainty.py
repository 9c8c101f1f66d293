"""``droplab uncertainty``: what Monte-Carlo dropout buys over the weight-scaled pass, as an HTML report.

Trains a lab model (or loads a lab checkpoint with ``--checkpoint``) and reports calibration, the
MC-vs-weight-scaling curve, out-of-distribution detection and FGSM accuracy; the engine is
:mod:`droplab.lab.uncertainty`.
"""

from __future__ import annotations

import argparse
import time

from .arguments import add_config_arguments, add_model_arguments, config_from_args, input_site_flag, with_input_rate

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    add_model_arguments(parser)
    parser.add_argument("--checkpoint", default=None, help="load this lab checkpoint instead of training")
    parser.add_argument("--samples", type=int, default=50, help="MC samples for calibration, OOD and FGSM (50)")
    parser.add_argument("--curve", default="1,2,5,10,20,50,100", help="k values of the MC-vs-weight-scaling curve")
    parser.add_argument("--eps", default="0.05,0.1,0.2", help="FGSM step sizes, in units of the input's std")
    parser.add_argument("--no-baseline", action="store_true", help="skip training the p = 0 model for FGSM")
    parser.add_argument("--max-test", type=int, default=None, help="use at most this many test examples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the MC samples and the OOD noise (0)")
    parser.add_argument("--out", default="reports", help="report directory root (default: reports)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while training")


def _ints(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise ValueError(f"{name} must be positive integers separated by commas, but got {text!r}")
    return values


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not v >= 0 for v in values):
        raise ValueError(f"{name} must be non-negative numbers separated by commas, but got {text!r}")
    return values


def _checked(args: argparse.Namespace) -> tuple[list[int], list[float]]:
    curve, eps = _ints(args.curve, "--curve"), _floats(args.eps, "--eps")
    if args.samples < 2:
        raise ValueError(f"--samples must be at least 2, but got {args.samples}")
    if args.max_test is not None and args.max_test < 2:
        raise ValueError(f"--max-test must be at least 2, but got {args.max_test}")
    return curve, eps


def _prepare(args: argparse.Namespace):
    from ..lab.errors import user_errors
    from ..lab.preflight import check_before_training
    from ..lab.trainer import load_checkpoint
    from ..lab.uncertainty import prepare_models

    shorthand = {"model": args.model, "dataset": args.dataset, "task": args.task, "input_site": input_site_flag(args)}
    if args.checkpoint:
        with user_errors(""):
            state = load_checkpoint(args.checkpoint)
        config = config_from_args(args, shorthand, stored=state["config"])
        return prepare_models(config, checkpoint=state)
    config = config_from_args(args, shorthand)
    prepared = check_before_training([config], report_dir=args.out, command="uncertainty")
    config = with_input_rate(config, args, prepared)
    return prepare_models(config, baseline=not args.no_baseline, progress=not args.no_progress, prepared=prepared)


def _print_tables(tables: dict) -> None:
    from ..lab.files import terminal_safe

    for name, (headers, rows) in tables.items():
        print(f"\n{name}")
        print("  " + " | ".join(terminal_safe(h) for h in headers))
        for row in rows:
            print("  " + " | ".join(f"{v:.4f}" if isinstance(v, float) else terminal_safe(v) for v in row))


def run(args: argparse.Namespace) -> int:
    from ..lab.errors import user_errors
    from ..lab.files import confined_path
    from ..lab.preflight import check_output_dir
    from ..lab.uncertainty import NO_DEFENCE, analyse, write_report

    with user_errors(""):
        curve, eps = _checked(args)
    check_output_dir(args.out, "--out")  # before any training, not after it
    config, splits, model, baseline = _prepare(args)
    started = time.perf_counter()
    results, tables = analyse(model, splits, config, samples=args.samples, curve=curve, eps=eps, baseline=baseline,
                              max_test=args.max_test, seed=args.seed)
    results["config"] = config.to_dict()
    # one sanitized component inside --out, whatever the run's (or a checkpoint's stored) name
    out = confined_path(args.out, f"uncertainty-{time.strftime('%Y%m%d-%H%M%S')}-{config.label()}")
    index = write_report(results, out, f"droplab uncertainty: {config.label()} on {config.dataset}")
    _print_tables(tables)
    if splits.task == "classification":
        print(f"\n{NO_DEFENCE}")
    print(f"\nreport: {index}  ({time.perf_counter() - started:.1f} s of analysis)")
    return 0
