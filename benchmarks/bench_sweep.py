"""Sweep benchmarks (issue 6's targets), printed as plain lines.

1. A 20-trial ``droplab sweep`` of the default MNIST-1D MLP with 2 worker processes on a SQLite study:
   wall time, the best rate, and the best trial's held-out test accuracy against a p = 0 run of the
   same configuration (both read at the epoch of lowest validation loss, the sweep's objective).
2. Throughput: the same fixed set of trials (random sampler, fixed seed, no pruning) run by 1 worker
   using every core and by 2 workers with half the cores each; trials per minute and the ratio
   (target: >= 1.6x).

Usage::

    python benchmarks/bench_sweep.py                       # both, defaults (about 15-25 min on 2 cores)
    python benchmarks/bench_sweep.py --only throughput --throughput-trials 6 --throughput-epochs 10

Run it on an otherwise idle machine: both numbers are wall-clock measurements.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from droplab.lab import sweep as S  # noqa: E402
from droplab.lab.config import ExperimentConfig  # noqa: E402


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _run(spec: S.SweepSpec, workdir: Path, workers: int, threads: int) -> tuple[float, object]:
    storage = str(workdir / f"{spec.name}.db")
    S.create_study(spec, S.open_storage(storage))
    start = time.perf_counter()
    procs = S.spawn_workers(spec.name, storage, workers, threads=threads)
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"a worker failed: exit codes {codes}")
    return elapsed, S.load_spec(spec.name, S.open_storage(storage))[0]


def bench_sweep(args, workdir: Path) -> None:
    from optuna.trial import TrialState

    from droplab.lab.trainer import train

    base = ExperimentConfig().with_overrides(args.set)
    spec = S.SweepSpec(name="bench-sweep", base=base.to_dict(), trials=args.trials, sampler="tpe", seed=args.seed,
                       db=str(workdir / "runs.db"))
    elapsed, study = _run(spec, workdir, args.workers, max(1, _cores() // args.workers))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    best = study.best_trial
    print(f"sweep: {len(complete)} complete + {len(pruned)} pruned trials, {args.workers} workers, "
          f"{elapsed:.1f} s ({elapsed / 60:.1f} min)")
    best_final = best.user_attrs["final"]
    print(f"best: dropout={best.params['dropout']:.3f}  val loss {best.value:.4f}  "
          f"test acc (best epoch) {best_final['test_acc_at_best']:.4f}  final test acc {best_final['test_acc']:.4f}")
    baseline = train(base.replace(rates=[0.0], threads=_cores()), progress=False).final
    print(f"p=0:  val loss {baseline['best_val_loss']:.4f}  test acc (best epoch) {baseline['test_acc_at_best']:.4f}  "
          f"final test acc {baseline['test_acc']:.4f}")
    delta = best_final["test_acc_at_best"] - baseline["test_acc_at_best"]
    print(f"best rate beats p=0 on test: {'yes' if delta > 0 else 'NO'} ({delta * 100:+.1f} points)")


def bench_throughput(args, workdir: Path) -> None:
    base = ExperimentConfig().with_overrides(args.set + [f"epochs={args.throughput_epochs}"])
    rates = {}
    for workers in (1, 2):
        spec = S.SweepSpec(name=f"bench-throughput-{workers}", base=base.to_dict(), trials=args.throughput_trials,
                           sampler="random", seed=args.seed, pruning=False, db=str(workdir / "runs.db"))
        elapsed, study = _run(spec, workdir, workers, max(1, _cores() // workers))
        done = len([t for t in study.trials if t.state.name == "COMPLETE"])
        rates[workers] = done / (elapsed / 60)
        print(f"throughput: {workers} worker(s) x {max(1, _cores() // workers)} thread(s): {done} trials in "
              f"{elapsed:.1f} s = {rates[workers]:.2f} trials/min")
    print(f"throughput: 2 workers / 1 worker = {rates[2] / rates[1]:.2f}x (target >= 1.6x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("sweep", "throughput"), help="run one benchmark")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput-trials", type=int, default=8)
    parser.add_argument("--throughput-epochs", type=int, default=15)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the base experiment config (default: the lab's MNIST-1D MLP)")
    args = parser.parse_args(argv)
    print(f"cores: {_cores()}, base config: {ExperimentConfig().with_overrides(args.set).label()}")
    with tempfile.TemporaryDirectory(prefix="droplab-bench-sweep-") as tmp:
        if args.only in (None, "throughput"):
            bench_throughput(args, Path(tmp))
        if args.only in (None, "sweep"):
            bench_sweep(args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
