"""Temporary train/eval changes, undone: the one place that saves and restores modules' flags."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

from torch import nn

__all__ = ["training_flags_restored"]


@contextlib.contextmanager
def training_flags_restored(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Restore each module's ``training`` flag on exit, also after an error.

    Only the flags are written back (``module.train()`` is not called), so a module whose children
    had mixed modes gets exactly those modes again.
    """
    flags = [(m, m.training) for m in modules]
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
