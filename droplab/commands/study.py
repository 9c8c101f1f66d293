"""``droplab study``: the claims about dropout, each measured over seeds on real data, with a verdict.

Examples::

    droplab study --list
    droplab study                       # all claims, default seeds (about 25 minutes on an idle 2-core CPU)
    droplab study --quick               # one seed, fewer epochs: point estimates only
    droplab study overfitting 14 --seeds 3
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

__all__ = ["configure", "run", "run_study"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.add_argument("claims", nargs="*", metavar="CLAIM", help="claims by number or name (default: all)")
    parser.add_argument("--list", action="store_true", help="list the claims and exit")
    parser.add_argument("--seeds", type=int, metavar="N",
                        help="seeds per claim (default: each claim's own, 5 where cheap, at least 3)")
    parser.add_argument("--quick", action="store_true",
                        help="one seed and fewer epochs: point estimates, verdict 'inconclusive (one seed)'")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: the models are small, and the machine may be shared)")
    parser.add_argument("--db", default="droplab.db", help="run store (SQLite file; default droplab.db)")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default reports/)")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML report")


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


def run_study(claims, *, seeds: int | None = None, quick: bool = False, store=None, report_dir=None,
              echo=print) -> tuple[list, dict, object]:
    """Run ``claims`` one after the other; returns ``(results, meta, report path or None)``."""
    from ..study.report import text_table, write_study_report
    from ..study.runner import run_claim

    study_id = "study-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S-") + os.urandom(2).hex()
    meta = {"title": f"droplab study {study_id}", "id": study_id,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_before": _load_average(), "mode": "quick (one seed)" if quick else "default seeds"}
    start, cpu_start = time.perf_counter(), time.process_time()
    results = []
    for claim in claims:
        echo(f"claim {claim.name}: {claim.title}")
        result = run_claim(claim, seeds=seeds, quick=quick, store=store, study_id=study_id, echo=echo)
        echo(f"  -> {result.verdict} ({result.seconds:.1f} s)")
        results.append(result)
    meta.update(total_seconds=time.perf_counter() - start, total_cpu_seconds=time.process_time() - cpu_start,
                load_after=_load_average())
    echo("")
    echo(text_table(results))
    echo(f"total {meta['total_seconds']:.0f} s wall, {meta['total_cpu_seconds']:.0f} s CPU; load average before "
         f"{meta['load_before']}, after {meta['load_after']}")
    path = None
    if report_dir is not None:
        from pathlib import Path

        path = write_study_report(Path(report_dir) / study_id, results, meta)
        echo(f"report: {path}")
    return results, meta, path


def run(args: argparse.Namespace) -> int:
    import torch

    from ..lab.errors import UserError
    from ..study.registry import all_claims, resolve

    if args.list:
        for claim in all_claims():
            print(f"{claim.name:22s} {claim.title} ({claim.seeds} seeds)")
        return 0
    if args.seeds is not None and args.seeds < 1:
        raise UserError(f"--seeds must be >= 1, but got {args.seeds}")
    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, but got {args.threads}")
    if args.quick and args.seeds is not None:
        raise UserError("--quick runs one seed; drop --seeds or --quick")
    claims = resolve(args.claims)
    from ..lab.preflight import check_output_dir, check_store

    check_store(args.db)  # the store and the report directory, before any claim runs
    check_output_dir(None if args.no_report else args.report_dir, "--report-dir")
    torch.set_num_threads(args.threads)
    from ..lab.store import RunStore

    with RunStore(args.db) as store:
        print(f"droplab study: {len(claims)} claims; storing in {args.db}", file=sys.stderr)
        results, _, _ = run_study(claims, seeds=args.seeds, quick=args.quick, store=store,
                                  report_dir=None if args.no_report else args.report_dir)
    return 1 if any(r.error for r in results) else 0
