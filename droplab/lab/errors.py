"""The errors the lab raises for the user's mistakes (the command line shows them: :mod:`droplab.cli`).

A :class:`UserError` is a problem with what the user gave (an argument, a config value, a data file, a
checkpoint, a store, a storage URL); its message says what, where, and the fix. A :class:`UserCodeError`
wraps an exception raised inside the user's own code (a model file, a factory, a forward), keeping its
traceback so the user's frames can be shown (:func:`is_library_file` tells them from droplab's, torch's
and the standard library's). Anything else is a droplab bug.

``UserError`` subclasses ``ValueError``, so library callers that already catch ``ValueError`` keep working.

Example::

    >>> try:
    ...     with user_errors("dataset data.csv"):
    ...         raise ValueError("line 3 has 2 fields but the header has 3")
    ... except UserError as error:
    ...     print(error)
    dataset data.csv: line 3 has 2 fields but the header has 3
"""

from __future__ import annotations

import errno
import functools
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["UserError", "MissingFileError", "TrainingDiverged", "UserCodeError", "user_errors", "os_error_message",
           "is_library_file", "raised_by_the_model"]


class UserError(ValueError):
    """A problem with the user's input: the command line prints ``droplab <command>: error: ...``, exit status 2."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the user named does not exist (also a ``FileNotFoundError`` for library callers)."""


class TrainingDiverged(UserError):
    """The training loss became NaN or infinite (a learning rate too high for the model, most often)."""


class UserCodeError(Exception):
    """An exception raised inside the user's own code (model file, factory, forward).

    Args:
        what: where it happened, e.g. ``"model.py: make_model()"``.
        error: the exception the user's code raised (its traceback is kept on it).
        code_files: the user's source files: their frames are shown (besides any frame outside a library).
        hint: the fix to suggest, if one is known. Default: none.
    """

    def __init__(self, what: str, error: BaseException, code_files: tuple[str, ...] = (), hint: str = "") -> None:
        super().__init__(f"{what} raised {type(error).__name__}: {error}" + (f" ({hint})" if hint else ""))
        self.original = error
        self.code_files = tuple(code_files)


# OSError numbers that are the user's environment, not droplab: each with the fix to suggest
_OS_FIXES = {
    errno.ENOENT: "check the path",
    errno.ENOTDIR: "a parent of the path is a file, not a directory",
    errno.EISDIR: "give a file, not a directory",
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a writable path",
    errno.ENOSPC: "the disk is full: free space or choose another path",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another path",
    errno.ENAMETOOLONG: "use a shorter name",
    errno.EINVAL: "the path is not usable here (a special file system?): choose a regular directory",
}


def os_error_message(error: OSError, action: str, path: object) -> str | None:
    """``"cannot write x: No space left on device (the disk is full: ...)"``, or None for an unexpected errno."""
    fix = _OS_FIXES.get(error.errno)
    if fix is None:
        return None
    return f"cannot {action} {path}: {error.strerror or error} ({fix})"


@contextmanager
def user_errors(context: str, types: tuple[type[BaseException], ...] = (ValueError, TypeError, OSError)
                ) -> Iterator[None]:
    """Turn the listed exceptions raised inside the block into a :class:`UserError` prefixed with ``context``.

    Use it only around code that parses or opens what the user gave, so a droplab bug elsewhere keeps
    its traceback. A ``UserError`` passes through unchanged.
    """
    try:
        yield
    except UserError:
        raise
    except types as error:
        message = str(error)
        if isinstance(error, OSError) and error.strerror:
            message = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
        kind = MissingFileError if isinstance(error, FileNotFoundError) else UserError
        raise kind(f"{context}: {message}" if context else message) from error


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is droplab's, an installed package's or the standard library's (not the user's).

    Installed packages are found wherever they live: the interpreter's standard paths, ``site``'s, and
    the directory of every imported package that belongs to an installed distribution (a ``PYTHONPATH``
    entry, ``pip install --target``, another prefix), except one inside the working directory (the
    user's own project, installed for development).
    """
    if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>
        return True
    resolved = os.path.realpath(filename)
    return any(resolved == root or resolved.startswith(root.rstrip(os.sep) + os.sep) for root in _library_roots())


def _library_roots() -> set[str]:
    import site
    import sysconfig

    roots = {str(Path(__file__).resolve().parents[1])}  # droplab itself
    roots |= {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots |= set(getattr(site, "getsitepackages", list)()) | {getattr(site, "getusersitepackages", str)()}
    working = os.path.realpath(os.getcwd())
    for name in _distributed_packages() & set(sys.modules):
        origin = getattr(sys.modules[name], "__file__", None)
        if not origin:
            continue
        where = os.path.realpath(origin)
        where = os.path.dirname(where) if os.path.basename(where) == "__init__.py" else where
        if not where.startswith(working + os.sep):
            roots.add(where)
    return {os.path.realpath(root) for root in roots if root}


@functools.lru_cache(maxsize=1)
def _distributed_packages() -> frozenset[str]:
    """The top-level import names that installed distributions provide."""
    import importlib.metadata

    try:
        return frozenset(importlib.metadata.packages_distributions())
    except Exception:  # a broken distribution's metadata: the standard paths still apply
        return frozenset()


def raised_by_the_model(error: BaseException) -> bool:
    """Whether ``error`` came out of the model's own forward (the user's code or torch's layers), not droplab's."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return False
    innermost = frames[-1].filename
    droplab_dir = str(Path(__file__).resolve().parents[1])
    return not str(Path(innermost).resolve()).startswith(droplab_dir) \
        or any(not is_library_file(frame.filename) for frame in frames)
