"""A live progress bar per training run: rich when installed, a plain one-line bar otherwise, off when not a TTY."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["RunProgress"]


class RunProgress:
    """Shows ``label  epoch k/n  metrics`` for one run while it trains.

    Args:
        label: the run's label.
        total: number of epochs.
        enabled: show anything at all; it is also off when ``stream`` is not a terminal. Default: True.
        stream: where to draw. Default: ``sys.stderr``.
    """

    def __init__(self, label: str, total: int, *, enabled: bool = True, stream: TextIO | None = None,
                 start: int = 0) -> None:
        self.label, self.total, self.done = label, total, start
        self.stream = stream or sys.stderr
        self.enabled = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self._rich = None
        self._plain_started = time.perf_counter()

    def __enter__(self) -> RunProgress:
        if not self.enabled:
            return self
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ModuleNotFoundError:
            return self
        self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), TextColumn("{task.fields[metrics]}"),
                              console=Console(file=self.stream), transient=False)
        self._rich.__enter__()
        self._task = self._rich.add_task(self.label, total=self.total, completed=self.done, metrics="")
        return self

    def update(self, epoch: int, metrics: dict) -> None:
        self.done = epoch
        if not self.enabled:
            return
        text = (f"train {metrics.get('train_acc', 0):.3f}  val {metrics.get('val_acc', 0):.3f}  "
                f"loss {metrics.get('val_loss', 0):.3f}")
        if self._rich is not None:
            self._rich.update(self._task, completed=epoch, metrics=text)
            return
        width = 24
        filled = int(width * epoch / max(self.total, 1))
        elapsed = time.perf_counter() - self._plain_started
        self.stream.write(f"\r{self.label[:30]:<30} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{epoch}/{self.total} {elapsed:5.0f}s  {text}")
        self.stream.flush()

    def __exit__(self, *exc) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.__exit__(*exc)
        else:
            self.stream.write("\n")
            self.stream.flush()
