"""The ``droplab`` command: a thin dispatcher over the lab's commands.

Each command lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``; the
module is imported only when its command runs or its help is built, so ``droplab --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("droplab.lab.compare", "does dropout help? no vs intended vs reduced dropout: table, verdict, report"),
    "runs": ("droplab.lab.runs", "list stored runs; 'runs show ID' shows one"),
    "bench": ("droplab.bench", "kernel, variant and MC-inference benchmarks against PyTorch"),
    "sweep": ("droplab.lab.sweep", "search dropout rates with Optuna (SQLite or a server DB, many workers)"),
    "inspect": ("droplab.lab.inspect", "list a model's dropout sites and lint them (exit 1 on an error finding)"),
    "uncertainty": ("droplab.lab.uncertainty", "MC dropout: calibration, MC vs weight scaling, OOD AUROC, FGSM report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="droplab", description="Dropout regularization lab for PyTorch.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from droplab import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
