"""``droplab study``: the claims about dropout, each tested as its source states it, powered, with verdicts.

Examples::

    droplab study --list
    droplab study --quick                 # smoke test, one seed, nothing judged (< 5 min)
    droplab study                         # tuned arms, 3 seeds, verdicts with that power (< 25 min)
    droplab study --confirm --write-page docs/guides/study.md   # the powered run and the study page (< 90 min)
    droplab study overfitting 14
    droplab study --page reports/ID/results.json --write-page docs/guides/study.md
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["configure", "run"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0].replace("``", "")
    parser.add_argument("claims", nargs="*", metavar="CLAIM", help="claims by number or name (default: all)")
    parser.add_argument("--list", action="store_true", help="list the claims, their parts and arms, and exit")
    tier = parser.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true",
                      help="smoke test: one seed, default hyper-parameters, shortened training, nothing judged")
    tier.add_argument("--confirm", action="store_true",
                      help="the powered run: seeds from the power analysis on the tuning seeds (3 to 40)")
    parser.add_argument("--seeds", type=int, metavar="N", help="confirmatory seeds per claim, instead of the tier's")
    parser.add_argument("--jobs", type=int, metavar="N",
                        help="trainings at a time, one process each (default: 1 for --quick, else 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per training (default 1)")
    parser.add_argument("--adjust", choices=("holm", "bh"), default="holm",
                        help="adjustment across the primary effects: holm (family-wise) or bh (false discovery "
                             "rate); default holm")
    parser.add_argument("--db", default="droplab.db", help="run store (SQLite file; default droplab.db)")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default reports/)")
    parser.add_argument("--no-report", action="store_true", help="skip the report (results.json included)")
    parser.add_argument("--write-page", metavar="PAGE.md", help="also write the study page (docs/guides/study.md)")
    parser.add_argument("--page", metavar="RESULTS.json",
                        help="write the study page from a stored results.json instead of running (needs --write-page)")


def _list() -> int:
    from ..study.registry import all_claims

    for claim in all_claims():
        arms = ", ".join(f"{a.name} ({len(a.candidates)})" for a in claim.arms)
        print(f"{claim.name:20s} {claim.title}")
        for part in claim.parts:
            print(f"{'':20s}   part {part.key}: {part.statement}")
        print(f"{'':20s}   arms (candidates): {arms}")
    return 0


def _check(args: argparse.Namespace) -> str:
    from ..lab.errors import UserError

    for name in ("seeds", "jobs", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, but got {value}")
    if args.quick and args.seeds not in (None, 1):
        raise UserError("--quick runs one seed; drop --seeds or --quick")
    if args.page and not args.write_page:
        raise UserError("--page writes the study page: give --write-page PAGE.md")
    if args.page and args.claims:
        raise UserError("--page regenerates the page from a results file; it takes no claims")
    return "quick" if args.quick else "confirm" if args.confirm else "default"


def run(args: argparse.Namespace) -> int:
    from ..study.plan import TIERS

    if args.list:
        return _list()
    tier = _check(args)
    if args.page:
        from ..study.page import write_page
        from ..study.results import load

        print(write_page(load(args.page), args.write_page))
        return 0
    from ..lab.preflight import check_output_dir, check_store
    from ..lab.store import RunStore
    from ..study.registry import resolve

    claims = resolve(args.claims)
    check_store(args.db)  # the store, the report directory and the page's folder, before any claim runs
    check_output_dir(None if args.no_report else args.report_dir, "--report-dir")
    if args.write_page:
        from pathlib import Path

        check_output_dir(str(Path(args.write_page).expanduser().parent), "--write-page")
    plan = TIERS[tier]
    jobs = args.jobs or plan.jobs
    print(f"droplab study, tier {tier}: {plan.description}.\n  time budget: {plan.budget_minutes:.0f} min on an idle "
          f"2-core machine; {len(claims)} claims, {jobs} training(s) at a time; storing in {args.db}", flush=True)
    with RunStore(args.db) as store:
        data, path = _run(claims, tier, jobs, args, store)
    meta = data["meta"]
    print(f"total {meta['total_seconds'] / 60:.1f} min wall (budget {plan.budget_minutes:.0f} min on an idle machine), "
          f"{meta['cpu_seconds'] / 60:.1f} min CPU in the trainings; load average {meta['load_before']} -> "
          f"{meta['load_after']}")
    if path is not None:
        print(f"report: {path}")
    if args.write_page:
        from ..study.page import write_page

        print(f"page: {write_page(data, args.write_page)}")
    return 1 if any(c["errors"] for c in data["claims"]) else 0


def _run(claims, tier: str, jobs: int, args: argparse.Namespace, store):
    from pathlib import Path

    from ..study.report import text_table, write_report
    from ..study.results import to_dict
    from ..study.runner import run_study

    study = run_study(claims, tier, jobs=jobs, threads=args.threads, seeds=args.seeds, store=store,
                      adjust=args.adjust, echo=lambda text: print(text, flush=True))
    data = to_dict(study, command="droplab study " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["study"] else []))
    path = None if args.no_report else write_report(Path(args.report_dir) / study.id, data)  # results.json first
    print("\n" + text_table(data), flush=True)
    return data, path
