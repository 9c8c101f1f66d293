"""``droplab bench SUITE``: benchmarks against PyTorch, measured in one run, printed as a table.

One subcommand per suite of :data:`droplab.bench.SUITES`; each suite module brings its own
``SUITE_HELP``, ``configure(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

__all__ = ["configure", "run"]


def _available() -> dict[str, object]:
    from ..bench import SUITES

    modules = {}
    for name, module_name in SUITES.items():
        try:
            modules[name] = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
    return modules


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="suite", metavar="SUITE", required=True)
    for name, module in _available().items():
        suite_parser = sub.add_parser(name, help=module.SUITE_HELP, description=module.SUITE_HELP)
        module.configure(suite_parser)
        suite_parser.set_defaults(_suite_run=module.run)


def run(args: argparse.Namespace) -> int:
    from ..bench import validate_options

    validate_options(args)
    return int(args._suite_run(args) or 0)
