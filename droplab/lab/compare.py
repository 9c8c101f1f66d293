"""``droplab compare``: does dropout help this model? Baseline vs intended vs reduced dropout, with a verdict.

By default three MLP runs on MNIST-1D (p = 0, 0.5, 0.25); everything is overridable. Every run is
stored in the run store (``--db``), the summary table and the verdict are printed, and a report is
written to ``<report-dir>/<comparison id>/index.html``.

Examples::

    droplab compare
    droplab compare --rates 0,0.2,0.5 --input-dropout 0.2
    droplab compare --rates "0,0.1/0.5,0.05/0.25"        # per-layer rates, '/' between layers
    droplab compare --model cnn1d --variant channel --set width=32
    droplab compare --config exp.toml --set epochs=20 --dry-run
    droplab compare --save checkpoints && droplab compare --resume 3 --set epochs=80
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from .config import VARIANTS, ExperimentConfig

__all__ = ["configure", "run", "parse_rates", "build_configs", "assign_roles", "compare"]

DEFAULT_RATES = "0,0.5,0.25"


def parse_rates(text: str) -> list[float | list[float]]:
    """``"0,0.5,0.25"`` -> ``[0.0, 0.5, 0.25]``; a ``/``-separated item gives per-layer rates."""
    from ..functional import check_probability

    rates: list[float | list[float]] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise ValueError(f"--rates has an empty item: {text!r} (expected e.g. 0,0.5,0.25 or 0,0.1/0.5)")
        try:
            values = [float(part) for part in item.split("/")]
        except ValueError:
            raise ValueError(f"--rates items must be numbers or /-separated per-layer numbers, but got {item!r}") \
                from None
        for value in values:
            check_probability(value)
        rates.append(values if len(values) > 1 else values[0])
    if len(rates) < 2:
        raise ValueError(f"--rates needs at least two rates to compare (e.g. 0,0.5), but got {text!r}")
    return rates


def _mean_rate(config: ExperimentConfig) -> float:
    rates = config.hidden_rates() + ([config.input_dropout] if config.input_dropout else [])
    return sum(rates) / len(rates)


def build_configs(base: ExperimentConfig, rates: list[float | list[float]]) -> list[ExperimentConfig]:
    """One config per rate; a run with every rate 0 is a true baseline (no input dropout either)."""
    configs = []
    for rate in rates:
        if isinstance(rate, list):
            changes = {"layer_rates": rate, "dropout": max(rate), "depth": base.depth}
            if len(rate) != base.depth:
                raise ValueError(f"per-layer rates {rate} give {len(rate)} layers but depth={base.depth}; "
                                 f"set depth with --set depth={len(rate)}")
        else:
            changes = {"dropout": rate, "layer_rates": None}
        all_zero = all(r == 0 for r in (rate if isinstance(rate, list) else [rate]))
        if all_zero:
            changes["input_dropout"] = 0.0
        configs.append(base.replace(**changes))
    return configs


def assign_roles(configs: list[ExperimentConfig]) -> dict[str, int]:
    """Indices of the baseline (least dropout), intended (most) and reduced (next below intended) runs."""
    strength = [_mean_rate(c) for c in configs]
    baseline = min(range(len(configs)), key=lambda i: (strength[i], i))
    others = [i for i in range(len(configs)) if i != baseline]
    intended = max(others, key=lambda i: (strength[i], -i))
    roles = {"baseline": baseline, "intended": intended}
    below = [i for i in others if i != intended and strength[i] < strength[intended]]
    if below:
        roles["reduced"] = max(below, key=lambda i: (strength[i], -i))
    return roles


def _comparison_id() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()


def compare(configs: list[ExperimentConfig], *, store=None, report_dir: str | Path | None = "reports",
            progress: bool = True, save: str | None = None, comparison_id: str | None = None,
            echo=print, measure_coadaptation: bool = True) -> dict:
    """Train every config, judge with the three-run rule, write the report; returns a summary dict.

    With ``measure_coadaptation`` each trained model's co-adaptation measures on the validation split
    (:func:`droplab.diagnostics.coadaptation_summary`) join its row, the printed tables and the report.
    """
    from ..diagnostics.verdict import three_run_verdict
    from .data import load_dataset
    from .distributed import launched_by_torchrun, setup
    from .report import COADAPTATION_COLUMNS, format_table, write_report
    from .train import train

    if configs and launched_by_torchrun() and not setup(configs[0].device).is_main:
        # under torchrun every rank trains (DDP inside train); only rank 0 writes the store and report, and prints
        store, report_dir, progress, echo = None, None, False, (lambda *args, **kwargs: None)
    comparison_id = comparison_id or _comparison_id()
    if any(c.device == "cpu" for c in configs):
        _warm_cpu_kernels()
    splits = {}
    results, coadaptation = [], []
    labels = _unique_labels(configs)
    for config, label in zip(configs, labels):
        key = (config.dataset, config.label_column, config.val_fraction, config.test_fraction, config.seed)
        if key not in splits:  # every run of a comparison sees the same split
            splits[key] = load_dataset(config)
        result = train(config, store=store, name=label, group=comparison_id, progress=progress, save=save,
                       splits=splits[key])
        results.append(result)
        coadaptation.append(_coadaptation(result.model, splits[key]) if measure_coadaptation else {})
        if not progress or not sys.stderr.isatty():
            echo(f"  {label}: val acc {result.final['val_acc']:.3f}, test acc {result.final['test_acc']:.3f} "
                 f"({result.final['wall_time_s']:.1f} s)")
    summaries = [{"label": label, "run_id": r.run_id, **r.final, **co, "history": r.history}
                 for label, r, co in zip(labels, results, coadaptation)]
    roles = assign_roles(configs)
    verdict = three_run_verdict(*(summaries[roles[role]] for role in ("baseline", "intended") if role in roles),
                                summaries[roles["reduced"]] if "reduced" in roles else None)
    report_path = None
    if report_dir is not None:
        title = f"droplab compare {comparison_id}: {configs[0].model} on {configs[0].dataset}"
        report_path = write_report(Path(report_dir) / comparison_id, summaries, title=title,
                                   verdict=verdict.as_dict(), config=_shared_config(configs))
    if store is not None:
        store.save_comparison(comparison_id, {"runs": [c.to_dict() for c in configs], "roles": roles},
                              verdict.as_dict(), str(report_path) if report_path else None)
    echo("")
    echo(format_table(summaries))
    if any(coadaptation):
        echo("")
        echo("co-adaptation (validation split, mean over hidden layers):")
        echo(format_table(summaries, COADAPTATION_COLUMNS))
    echo("")
    echo(str(verdict))
    if report_path is not None:
        echo(f"\nreport: {report_path}")
    return {"id": comparison_id, "runs": summaries, "roles": roles, "verdict": verdict, "report": report_path,
            "results": results}


def _coadaptation(model, splits) -> dict[str, float]:
    """Co-adaptation measures of a trained model on the validation split (empty if it has no hidden layer)."""
    from ..diagnostics.coadaptation import coadaptation_summary, hidden_layers

    if not hidden_layers(model) or len(splits.val) == 0:
        return {}
    val = splits.val
    loader = [(val.x[i:i + 500], val.y[i:i + 500]) for i in range(0, len(val), 500)]
    return coadaptation_summary(model, loader, max_units=32, subsets=5, fractions=(0.1, 0.5))


def _warm_cpu_kernels() -> None:
    """Compile (or load) the numba kernels once up front, so the first dropout run's wall time is its own."""
    try:
        from ..kernels import cpu
    except ImportError:
        return
    if cpu.available():
        seconds = sum(cpu.warmup().values())
        if seconds > 1.0:
            print(f"droplab compare: loaded droplab's CPU dropout kernel in {seconds:.1f} s", file=sys.stderr)


def _unique_labels(configs: list[ExperimentConfig]) -> list[str]:
    labels, seen = [], {}
    for config in configs:
        label = config.label()
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def _shared_config(configs: list[ExperimentConfig]) -> dict:
    """The config keys every run shares (the per-run rates are in the table)."""
    dicts = [c.to_dict() for c in configs]
    return {k: v for k, v in dicts[0].items() if all(d[k] == v for d in dicts[1:])}


def resolve_base(args: argparse.Namespace) -> ExperimentConfig:
    """Defaults, then ``--config``, then the shorthand flags, then ``--set`` (later wins)."""
    base = ExperimentConfig.from_toml(args.config) if args.config else ExperimentConfig()
    shorthand = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs, "variant": args.variant,
                 "schedule": args.schedule, "input_dropout": args.input_dropout, "seed": args.seed}
    changes = {k: v for k, v in shorthand.items() if v is not None}
    if changes:
        base = base.replace(**changes)
    return base.with_overrides(args.set or [])


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.add_argument("--rates", default=None,
                        help=f"comma-separated rates to compare; '/' separates per-layer rates "
                             f"(default {DEFAULT_RATES}, or the config's rate beside 0 and half of it)")
    parser.add_argument("--config", metavar="TOML", help="experiment config file (unknown keys are an error)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config key (repeatable)")
    parser.add_argument("--model", choices=("mlp", "cnn1d", "gru", "transformer"), help="model (default mlp)")
    parser.add_argument("--dataset", help="mnist1d (default), digits, or a .npz/.csv path")
    parser.add_argument("--epochs", type=int, help="training epochs")
    parser.add_argument("--variant", choices=VARIANTS, help="dropout variant at every site (default dropout)")
    parser.add_argument("--schedule", help="rate schedule: ramp:N, early:N or late:N")
    parser.add_argument("--input-dropout", type=float, help="input dropout rate of the dropout runs")
    parser.add_argument("--seed", type=int, help="seed of init, split, data order and masks")
    parser.add_argument("--db", default="droplab.db", help="run store (SQLite file; default droplab.db)")
    parser.add_argument("--report-dir", default="reports", help="where reports go (default reports/)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")
    parser.add_argument("--save", metavar="DIR", help="write a checkpoint of every run to DIR after each epoch")
    parser.add_argument("--resume", type=int, metavar="ID",
                        help="continue stored run ID from its checkpoint (with --set epochs=N to extend it)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved configs and exit")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bars")


def run(args: argparse.Namespace) -> int:
    try:
        base = resolve_base(args)
        if args.rates is not None:
            rates = parse_rates(args.rates)
        elif args.config or any(item.split("=", 1)[0].strip() in ("dropout", "layer_rates") for item in args.set or []):
            rates = [0.0, base.layer_rates or base.dropout,
                     [r / 2 for r in base.layer_rates] if base.layer_rates else base.dropout / 2]
        else:
            rates = parse_rates(DEFAULT_RATES)
        configs = build_configs(base, rates)
        if args.resume is None:  # every dataset loads and suits its runs before anything trains (--dry-run too)
            from .preflight import check_datasets

            check_datasets(configs)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"droplab compare: error: {error}", file=sys.stderr)
        return 2
    if args.resume is not None:
        return _resume(args, base)
    if args.dry_run:
        roles = {index: role for role, index in assign_roles(configs).items()}
        print(json.dumps([{"role": roles.get(i, "extra"), "label": c.label(), "config": c.to_dict()}
                          for i, c in enumerate(configs)], indent=2))
        return 0
    from .store import RunStore

    with RunStore(args.db) as store:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for all
            print(f"droplab compare: {len(configs)} runs of {base.model} on {base.dataset}, "
                  f"{base.epochs} epochs each; storing in {args.db}", file=sys.stderr)
        compare(configs, store=store, report_dir=None if args.no_report else args.report_dir,
                progress=not args.no_progress, save=args.save)
    return 0


def _resume(args: argparse.Namespace, base: ExperimentConfig) -> int:
    from .report import format_table
    from .store import RunStore
    from .train import resume

    epochs = None
    for item in args.set or []:
        key, _, value = item.partition("=")
        if key.strip() == "epochs":
            epochs = int(value)
    if args.epochs is not None:
        epochs = args.epochs
    with RunStore(args.db) as store:
        try:
            result = resume(args.resume, store=store, epochs=epochs, progress=not args.no_progress)
        except (KeyError, ValueError, FileNotFoundError) as error:
            print(f"droplab compare: error: {error}", file=sys.stderr)
            return 2
    print(format_table([{"label": f"run {result.run_id}", **result.final}]))
    return 0
