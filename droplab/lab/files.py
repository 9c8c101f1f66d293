"""Writing files safely: atomic writes, names that stay one path component, text safe for a terminal.

Every file the lab writes (checkpoints, reports, JSON) goes through :func:`atomic_write`: a temporary file
in the same directory, flushed and fsynced, then renamed over the target, so a reader sees the old file
or the whole new one, never a partial one; only a regular file is ever replaced (a device, a FIFO or a
directory in its place is one error, never renamed over); on failure the temporary file is removed and a full disk or a
read-only directory becomes one :class:`~droplab.lab.errors.UserError` naming the path and the fix.

Example::

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_json(folder / "a.json", {"x": 1}) == folder / "a.json"
    True
    >>> safe_component("a/../../x"), safe_component(".."), terminal_safe("ok\\x1b[31m red")
    ('a-..-..-x', 'run', 'ok red')
"""

from __future__ import annotations

import json
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path
from typing import IO, Any

from .errors import UserError, os_error_message

__all__ = ["atomic_write", "replaceable", "write_text", "write_bytes", "write_json", "save_torch", "save_figure_file",
           "safe_component", "confined_path", "terminal_safe", "check_writable_file"]

# bidirectional overrides and isolates can make a name display as something else
_BIDI = {chr(c) for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and rename it over ``path``.

    Args:
        path: the file to write (its directory is created if missing).
        mode: ``"w"`` (text, default) or ``"wb"``.
        encoding: text encoding for ``"w"``. Default: utf-8.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', but got {mode!r}")
    path = replaceable(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name[:100]}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, mode, encoding=encoding if mode == "w" else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        _fsync_directory(path.parent)
    except Exception as error:  # torch.save wraps a full disk in a RuntimeError: look down the chain
        cause = _os_error_in_chain(error)
        message = os_error_message(cause, "write", path) if cause is not None else None
        if message is None:
            raise
        raise UserError(message) from error
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def replaceable(path: str | Path) -> Path:
    """The file an atomic write of ``path`` replaces: ``path`` itself, or the file its symlink points to.

    Only a regular file (or nothing) is ever replaced: renaming over a device (``/dev/full``), a FIFO, a
    socket or a directory would swap the special file for a regular one (as root) or fail half-way.

    Raises:
        UserError: ``path`` names something other than a regular file.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return target
    except OSError as error:
        raise UserError(os_error_message(error, "write", path) or f"cannot write {path}: {error}") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
            else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
        raise UserError(f"{path} is {kind}, not a regular file: droplab writes files only by replacing a regular "
                        "file (give a file path)")
    return target


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary siblings :func:`atomic_write` left for ``path`` when its writer was killed.

    Call it only once no live process writes ``path`` (e.g. when resuming a run whose writer is dead).
    Returns the files removed.
    """
    path = Path(path)
    stale = [p for p in path.parent.glob(f".{glob_escape(path.name[:100])}.*.tmp") if p.is_file()]
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    return stale


def _os_error_in_chain(error: BaseException) -> OSError | None:
    """The first ``OSError`` among ``error`` and its causes and contexts (None if there is none)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (best effort: some file systems refuse to fsync a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "w") as handle:
        handle.write(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2, allow_nan: bool = True) -> Path:
    """Write ``obj`` as JSON atomically (``allow_nan=False`` refuses NaN and infinities, for strict readers)."""
    text = json.dumps(obj, indent=indent, allow_nan=allow_nan)
    return write_text(path, text + "\n")


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (a full disk leaves the old checkpoint, never a partial one)."""
    import torch

    with atomic_write(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


def save_figure_file(fig: Any, path: str | Path, *, dpi: int = 90) -> Path:
    """``fig.savefig`` to ``path`` atomically (the format from the suffix; a failed write leaves no partial image)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """Raise a :class:`UserError` now if ``path`` cannot be written later (checked before long work starts)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file path")
    try:
        replaceable(path)
    except UserError as error:
        raise UserError(f"{what} {error}") from None
    parent = path.parent if str(path.parent) else Path(".")
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{what} {path}: {existing} is not a directory")
    try:  # a real probe: permission bits say nothing to root, nor about read-only or special file systems
        fd, probe = tempfile.mkstemp(prefix=".droplab-probe.", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise UserError(os_error_message(error, "write", path)
                        or f"{what} {path} is not writable: {error}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is not writable (check its permissions or choose another path)")
    return path


def safe_component(name: str, fallback: str = "run", max_length: int = 80) -> str:
    """``name`` as one harmless path component: letters, digits, ``.``, ``_`` and ``-`` only.

    Separators and anything else become ``-``; the result is never empty, ``.``, ``..`` or hidden
    (leading dots are dropped), so joining it to a directory stays inside that directory.

    Args:
        name: any string (a run name, a study name, a stored label).
        fallback: what an empty or all-punctuation name becomes. Default: ``"run"``.
        max_length: longest result. Default: 80.
    """
    text = unicodedata.normalize("NFKC", str(name))
    text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")
    text = text.lstrip(".")[:max_length].rstrip("-")
    return text if text and text not in (".", "..") else fallback


def confined_path(base: str | Path, name: str, fallback: str = "run") -> Path:
    """``base / safe_component(name)``, checked to resolve inside ``base`` (symlinks included)."""
    base = Path(base)
    path = base / safe_component(name, fallback)
    resolved_base = base.resolve()
    if path.resolve() != resolved_base and resolved_base not in path.resolve().parents:
        raise UserError(f"{path} resolves outside {base} (a symlink?); choose another output directory")
    return path


def terminal_safe(text: object, *, keep_newlines: bool = False) -> str:
    """``text`` with escape sequences and control characters removed, so it cannot drive the terminal."""
    text = _ANSI.sub("", str(text))
    keep = {"\n", "\t"} if keep_newlines else set()
    return "".join(c for c in text if c in keep or (unicodedata.category(c) != "Cc" and c not in _BIDI))
