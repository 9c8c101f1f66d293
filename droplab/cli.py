"""The ``droplab`` command: a thin dispatcher over the lab's commands.

Each command lives in its own module exposing ``configure(parser)`` and ``run(args) -> int``; the
module is imported only when its command runs or its help is built, so ``droplab --help`` is quick.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("droplab.lab.compare_command", "does dropout help? off vs as built vs halved: table, verdict, report"),
    "runs": ("droplab.lab.runs", "list stored runs; 'runs show ID' shows one"),
    "bench": ("droplab.bench", "kernel, variant and MC-inference benchmarks against PyTorch"),
    "sweep": ("droplab.lab.sweep", "search dropout rates with Optuna (SQLite or a server DB, many workers)"),
    "inspect": ("droplab.lab.inspect", "list a model's dropout sites and lint them (exit 1 on an error finding)"),
    "uncertainty": ("droplab.lab.uncertainty", "MC dropout: calibration, MC vs weight scaling, OOD AUROC, FGSM report"),
    "study": ("droplab.study.cli", "the claims about dropout, each measured over seeds on real data, with a verdict"),
}


class _Parser(argparse.ArgumentParser):
    """argparse with the lab's error format: one ``droplab <command>: error: ...`` line and a pointer to --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_clean(message)}\n  (see {self.prog} --help)\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; only the command named in ``argv`` (default ``sys.argv[1:]``) is imported and configured."""
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    parser = _Parser(prog="droplab", description="Dropout regularization lab for PyTorch.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.configure(command_parser)
            command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    try:
        args, extra = parser.parse_known_args(argv)
    except SystemExit as exit_:  # --help, or an argument error already printed: a status, so main(argv) returns
        return exit_.code if isinstance(exit_.code, int) else 2
    if extra:  # named after the command they were given to, not the top-level parser
        prog = f"droplab {args.command}" if getattr(args, "command", None) else "droplab"
        print(f"{prog}: error: unrecognized arguments: {_clean(' '.join(extra))}\n  (see {prog} --help)",
              file=sys.stderr)
        return 2
    if args.version:
        from droplab import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    return _run_command(args)


def _run_command(args: argparse.Namespace) -> int:
    """Run the chosen command; a user error becomes one short message and exit 2, a droplab bug keeps its traceback."""
    from .lab.errors import UserCodeError, UserError

    prefix = f"droplab {args.command}: error:"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"droplab {args.command}: interrupted", file=sys.stderr)
        return 130
    except UserError as error:
        print(_short(f"{prefix} {_clean(str(error))}"), file=sys.stderr)
        return 2
    except UserCodeError as error:
        from .lab.errors import user_frames

        frames = user_frames(error.original, error.code_files)
        if frames:
            print(frames.rstrip(), file=sys.stderr)
        print(_short(f"{prefix} {_clean(str(error))}"), file=sys.stderr)
        return 2


def _clean(text: str) -> str:
    from .lab.files import terminal_safe

    return terminal_safe(text, keep_newlines=True)


def _short(message: str, max_lines: int = 3, width: int = 400) -> str:
    """At most ``max_lines`` lines of at most ``width`` characters (a long data dump must not flood the terminal)."""
    lines = [line if len(line) <= width else line[:width - 3] + "..." for line in message.splitlines() or [""]]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [lines[max_lines - 1] + " ..."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
