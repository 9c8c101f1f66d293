"""``droplab bench SUITE``: benchmarks against PyTorch, measured in one run, printed as a table.

Suites live in sibling modules exposing ``SUITE_HELP``, ``configure(parser)`` and ``run(args) -> int``;
the command (:mod:`droplab.commands.bench`) builds one subcommand per suite in :data:`SUITES`.
"""

from __future__ import annotations

import argparse

SUITES = {
    "kernel": "droplab.bench.kernel",
    "variants": "droplab.bench.variants",
    "mc": "droplab.bench.mc",
    "models": "droplab.bench.models",
}


def add_common_options(parser: argparse.ArgumentParser, *, repeats: int, quick_repeats: int) -> None:
    """The options every timing suite takes: --quick, --json, --repeats, --threads."""
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke test of seconds")
    parser.add_argument("--json", metavar="PATH", help="also write the results (and conditions) to this JSON file")
    parser.add_argument("--repeats", type=int,
                        help=f"timing samples per candidate (default {repeats}, quick {quick_repeats})")
    parser.add_argument("--threads", type=int, help="torch (and kernel) threads (default: torch's default)")


def add_clock_option(parser: argparse.ArgumentParser) -> None:
    """``--clock wall|cpu`` for suites whose config has a ``clock`` (see :func:`time_round_robin`)."""
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time (default), or this process's CPU time: steadier on a machine shared with "
                             "other jobs, with --threads 1")


def time_round_robin(candidates: dict, repeats: int, min_sample_s: float, clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each candidate, sampling them in turn so that load hits all alike.

    Each candidate is warmed up (two calls), then each sample loops it until ``min_sample_s`` has passed
    (one call when it is 0)
    on ``clock``: ``"wall"`` (``time.perf_counter``) or ``"cpu"`` (``time.process_time``: this process's
    CPU time, which leaves out the time it waited for a core on a loaded machine).
    """
    import statistics
    import time

    now = {"wall": time.perf_counter, "cpu": time.process_time}[clock]
    for fn in candidates.values():  # warm-up: allocator, JIT, page cache
        fn()
        fn()
    loops = dict.fromkeys(candidates, 1)
    for name, fn in candidates.items() if min_sample_s > 0 else ():
        start = now()
        fn()
        loops[name] = max(1, int(min_sample_s / max(now() - start, 1e-7)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = now()
            for _ in range(loops[name]):
                fn()
            samples[name].append((now() - start) / loops[name])
    return {name: statistics.median(values) for name, values in samples.items()}


def apply_common_options(args: argparse.Namespace, config) -> None:
    """Validate --threads / --repeats and apply them to torch and to a suite's config (``threads``, ``repeats``)."""
    import torch

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be a positive int, but got {args.threads}")
        torch.set_num_threads(args.threads)
        config.threads = args.threads
    if args.repeats is not None:
        if args.repeats < 1:
            raise ValueError(f"--repeats must be a positive int, but got {args.repeats}")
        config.repeats = args.repeats
    if getattr(args, "clock", None) is not None:
        config.clock = args.clock


def emit(text: str, result: dict, json_path: str | None) -> int:
    """Print a suite's table and, with ``--json PATH``, save its full results there (atomically); returns 0."""
    from ..lab.files import write_json

    print(text)
    if json_path:
        write_json(json_path, result)
    return 0


# options that count something: each must be a positive integer when given
POSITIVE_OPTIONS = ("threads", "repeats", "max_batch", "samples", "inputs")


def validate_options(args: argparse.Namespace) -> None:
    """Check every suite's counting options and its ``--json`` path before any timing starts.

    Raises:
        UserError: an option is below 1, or ``--json`` names a directory or an unwritable place.
    """
    from ..lab.errors import UserError
    from ..lab.files import check_writable_file

    for name in POSITIVE_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and (isinstance(value, bool) or value < 1):
            raise UserError(f"--{name.replace('_', '-')} must be a positive integer, but got {value}")
    if getattr(args, "json", None):
        check_writable_file(args.json, "--json")
