"""The ``droplab`` command: a thin dispatcher over :mod:`droplab.commands`, and the one error path.

Each command lives in its own module, ``droplab/commands/<name>.py``, exposing ``configure(parser)``
and ``run(args) -> int``; the module is imported only when its command runs or its help is built, so
``droplab --help`` is quick.

Errors take one path, here. A :class:`~droplab.lab.errors.UserError` (a problem with what the user
gave) prints as ``droplab <command>: error: <what, where, and the fix>`` on at most three lines, stripped
of control characters, and exits 2, with no traceback. A :class:`~droplab.lab.errors.UserCodeError` (an
exception raised inside the user's own model file, factory or forward) shows that code's frames only,
then the one-line error, and exits 2. A closed output pipe (``droplab runs | head -1``) ends quietly
with status 141, as a shell reports SIGPIPE. Anything else is a droplab bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback
import warnings
from typing import NoReturn

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("droplab.commands.compare", "does dropout help? off vs as built vs halved: table, verdict, report"),
    "runs": ("droplab.commands.runs", "list stored runs; 'runs show ID' shows one"),
    "bench": ("droplab.commands.bench", "kernel, variant and MC-inference benchmarks against PyTorch"),
    "sweep": ("droplab.commands.sweep", "search dropout rates with Optuna (SQLite or a server DB, many workers)"),
    "inspect": ("droplab.commands.inspect", "list a model's dropout sites and lint them (exit 1 on an error finding)"),
    "uncertainty": ("droplab.commands.uncertainty",
                    "MC dropout: calibration, MC vs weight scaling, OOD AUROC, FGSM report"),
    "study": ("droplab.commands.study",
              "the claims about dropout, each measured over seeds on real data, with a verdict"),
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
    """Run ``droplab ARGV`` (default ``sys.argv[1:]``); returns the exit status."""
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
        with _warnings_as_lines(f"droplab {args.command}: warning:"):
            return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print(f"droplab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _pipe_closed()
    except UserError as error:
        print(_short(f"{prefix} {_clean(str(error))}"), file=sys.stderr)
        return 2
    except UserCodeError as error:
        frames = user_frames(error.original, error.code_files)
        if frames:
            print(frames.rstrip(), file=sys.stderr)
        print(_short(f"{prefix} {_clean(str(error))}"), file=sys.stderr)
        return 2


@contextlib.contextmanager
def _warnings_as_lines(prefix: str):
    """Warnings while a command runs print as ``droplab <command>: warning: ...`` (terminal-safe, one line each);
    droplab's deprecations of config keys are shown too (Python hides DeprecationWarning by default)."""
    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = _clean(str(message)).replace("\n", " ")
        print(f"{prefix} {text}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.filterwarnings("default", message="deprecated config keys", category=DeprecationWarning)
        warnings.showwarning = show
        yield


def _pipe_closed() -> int:
    """The reader of stdout went away (``| head -1``): stop quietly, as a shell's SIGPIPE would (status 141)."""
    try:  # what is still buffered can never be written: point stdout at /dev/null so exit's flush succeeds
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real file descriptor (a captured stream)
        pass
    return 128 + 13


def user_frames(error: BaseException, code_files: tuple[str, ...] = ()) -> str:
    """The traceback of ``error`` restricted to the user's frames: those in ``code_files`` or outside any library.

    Returns an empty string when no frame is the user's.
    """
    from .lab.errors import is_library_file

    wanted = {str(f) for f in code_files}
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if frame.filename in wanted or not is_library_file(frame.filename)]
    if not frames:
        return ""
    return "Traceback (your code, most recent call last):\n" + "".join(traceback.format_list(frames))


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
