"""The trainer's parts: each concern of a lab run is one callback with its state in the checkpoint.

The loop (:func:`droplab.lab.trainer.train`) calls, on every callback in order:
``on_train_start(run)``, then per epoch ``on_epoch_start(run, epoch)``, ``after_backward(run)`` after
each step's backward, ``on_epoch_end(run, epoch, metrics)`` (a callback may add to ``metrics``; the
ones after it see the additions), and finally ``on_train_end(run, status, error)``. ``run`` is the
:class:`~droplab.lab.trainer.TrainState`. ``state_dict()``/``load_state_dict()`` carry a callback's
state through a checkpoint, so ``--resume`` continues exactly where the run stopped.

Parts: :class:`RateSchedule` (``--schedule`` through :class:`droplab.DropoutScheduler`),
:class:`Health` (gradient norms and loss slope), :class:`EarlyStopping`, :class:`Store` (the run
store), :class:`Checkpoint`, :class:`Progress` and :class:`EpochHook` (``on_epoch``: Optuna pruning);
:class:`BestWeights` (keep and restore the best-validation weights, stop after a patience on any metric)
and :class:`StopAtTarget` (the epoch a metric first reaches a target) and :class:`WeightAverage` (the
average of the end-of-epoch weights), which ``droplab study`` uses.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

from .. import schedules

__all__ = ["Callback", "RateSchedule", "Health", "EarlyStopping", "Store", "Checkpoint", "Progress", "EpochHook",
           "BestWeights", "StopAtTarget", "WeightAverage", "schedule_curve", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 1


class Callback:
    """A part of the trainer: every hook does nothing unless overridden; the state is empty."""

    name = "callback"

    def on_train_start(self, run) -> None: ...

    def on_epoch_start(self, run, epoch: int) -> None: ...

    def after_backward(self, run) -> None: ...

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, run, status: str, error: BaseException | None) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


def schedule_curve(spec: str) -> schedules.Schedule:
    """The lab's ``--schedule`` as a :mod:`droplab.schedules` curve of the 1-based epoch, in [0, 1].

    It multiplies every site's rate, so per-layer ratios survive: ``ramp:N`` is ``linear(0, 1, N)``
    (reaching the full rates at epoch N), ``early:N`` is ``early(1, N + 1)`` (epochs 1..N) and
    ``late:N`` is ``stepwise([0, 1], [N])`` (from epoch N on).
    """
    from .config import parse_schedule

    kind, n = parse_schedule(spec)
    if kind == "ramp":
        return schedules.linear(0.0, 1.0, steps=n)
    if kind == "early":
        return schedules.early(1.0, until=n + 1)
    return schedules.stepwise([0.0, 1.0], milestones=[n])  # late


class RateSchedule(Callback):
    """``--schedule``: every site's rate as built times the curve at the epoch, via :class:`droplab.DropoutScheduler`.

    The scheduler counts epochs (``t = epoch - 1``); its count is the state. Learned rates are left alone.
    """

    name = "schedule"

    def __init__(self, spec: str) -> None:
        self.spec, self.curve, self.scheduler = spec, schedule_curve(spec), None

    def on_train_start(self, run) -> None:
        from .. import sites
        from ..schedules import DropoutScheduler

        rules = {re.escape(s.name): self._rule(s.p) for s in sites(run.core)
                 if s.name and hasattr(s.module, "p") and not getattr(s.module, "rate_is_learned", False)}
        if rules:
            self.scheduler = DropoutScheduler(run.core, rules, unit="epoch", late_after=10**9)

    def _rule(self, base: float) -> Callable[[int], float]:
        return lambda t: base * self.curve(t + 1)

    def on_epoch_start(self, run, epoch: int) -> None:
        if self.scheduler is not None:
            while self.scheduler.t < epoch - 1:
                self.scheduler.step()

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        metrics["rate_factor"] = self.curve(epoch)

    def state_dict(self) -> dict:
        return {"t": self.scheduler.t if self.scheduler is not None else 0}


class Health(Callback):
    """Per-layer gradient norms and the early loss slope (:class:`droplab.diagnostics.health.HealthMonitor`)."""

    name = "health"

    def __init__(self) -> None:
        from ..diagnostics import HealthMonitor

        self.monitor, self.norms = HealthMonitor(), []

    def after_backward(self, run) -> None:
        self.norms.append(self.monitor.after_backward(run.core).get("<total>", 0.0))

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        health = self.monitor.end_epoch(epoch, metrics["batch_loss"])
        metrics.update({
            "grad_norm": sum(self.norms) / max(len(self.norms), 1), "grad_norm_max": max(self.norms, default=0.0),
            **{f"grad_norm[{layer}]": value for layer, value in health.grad_norms.items() if layer != "<total>"},
            "loss_slope": health.loss_slope if math.isfinite(health.loss_slope) else None,
            "health": health.warnings})
        self.norms = []

    def state_dict(self) -> dict:
        return {"losses": list(self.monitor.losses)}

    def load_state_dict(self, state: dict) -> None:
        self.monitor.losses = list(state.get("losses", []))


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a lower validation loss (None: never)."""

    name = "early_stopping"

    def __init__(self, patience: int | None) -> None:
        self.patience, self.best, self.stale = patience, math.inf, 0

    def on_epoch_start(self, run, epoch: int) -> None:
        if self.patience is not None and self.stale >= self.patience:
            run.stop = True

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        if metrics["val_loss"] < self.best:
            self.best, self.stale = metrics["val_loss"], 0
        else:
            self.stale += 1

    def state_dict(self) -> dict:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.stale = float(state["best"]), int(state["stale"])


class Store(Callback):
    """Log every epoch to the run store and close the run with its final metrics or its failure."""

    name = "store"

    def __init__(self, store, run_id: int) -> None:
        self.store, self.run_id = store, run_id

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        self.store.log_epoch(self.run_id, epoch, metrics)

    def on_train_end(self, run, status: str, error: BaseException | None) -> None:
        wall = run.wall_time_s()
        if error is None:
            self.store.finish_run(self.run_id, run.final, wall_time_s=wall)
        else:
            self.store.finish_run(self.run_id, run.summary(), status=status,
                                  error=f"{type(error).__name__}: {error}", wall_time_s=wall)


class Checkpoint(Callback):
    """After every epoch, write everything a resume needs (atomically) to ``path``."""

    name = "checkpoint"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        from .files import save_torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_torch({"format": CHECKPOINT_FORMAT, "config": run.config.to_dict(), "name": run.name, "epoch": epoch,
                    "model": run.core.state_dict(), "optimizer": run.optimizer.state_dict(),
                    "history": run.history + [metrics], "wall_time_s": run.wall_time_s(),
                    "callbacks": {c.name: c.state_dict() for c in run.callbacks}}, self.path)


class Progress(Callback):
    """The live progress bar (:class:`droplab.lab.progress.RunProgress`)."""

    name = "progress"

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        from .progress import RunProgress

        self.bar = RunProgress(label, total, enabled=enabled)

    def on_train_start(self, run) -> None:
        self.bar.done = len(run.history)
        self.bar.__enter__()

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        self.bar.update(epoch, metrics)

    def on_train_end(self, run, status: str, error: BaseException | None) -> None:
        self.bar.__exit__(None, None, None)


class EpochHook(Callback):
    """``on_epoch(epoch, metrics)`` after each epoch (Optuna's pruning); what it raises stops the run."""

    name = "on_epoch"

    def __init__(self, fn: Callable[[int, dict], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        self.fn(epoch, metrics)


def _improves(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


def _check_monitor(monitor: str, mode: str) -> None:
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must name an epoch metric such as 'val_acc', but got {monitor!r}")
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', but got {mode!r}")


class BestWeights(Callback):
    """Keep a copy of the weights at the best value of ``monitor``; put them back when training ends.

    The model a run returns is then its best-validation checkpoint, not the last epoch's weights. With
    ``patience`` the run stops once ``monitor`` has not improved for that many epochs, so a run trains
    until its own validation curve turns, not for a fixed count that cuts one arm short.

    Args:
        monitor: the epoch metric to watch (``val_acc``, ``val_loss``, ...). Default: ``"val_loss"``.
        mode: ``"max"`` or ``"min"``: which way is better. Default: ``"min"``.
        patience: epochs without improvement before asking to stop; None never stops. Default: None.
        min_delta: an improvement must exceed this. Default: 0.

    Example::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> run = SimpleNamespace(core=torch.nn.Linear(1, 1), stop=False)
        >>> best = BestWeights("val_acc", "max", patience=1)
        >>> for epoch, acc in enumerate([0.5, 0.7, 0.6], start=1):
        ...     best.on_epoch_end(run, epoch, {"val_acc": acc})
        >>> best.best_epoch, best.best, run.stop
        (2, 0.7, True)
    """

    name = "best_weights"

    def __init__(self, monitor: str = "val_loss", mode: str = "min", patience: int | None = None,
                 min_delta: float = 0.0) -> None:
        _check_monitor(monitor, mode)
        if patience is not None and (isinstance(patience, bool) or not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience must be a positive int or None, but got {patience!r}")
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, float(min_delta)
        self.best: float | None = None
        self.best_epoch, self.stale, self.weights = 0, 0, None

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        import copy

        if self.monitor not in metrics:
            raise KeyError(f"BestWeights monitors {self.monitor!r}, which the epoch metrics do not have: "
                           f"{', '.join(sorted(metrics))}")
        value = float(metrics[self.monitor])
        if _improves(value, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch, self.stale = value, epoch, 0
            self.weights = copy.deepcopy(run.core.state_dict())
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            run.stop = True

    def restore(self, model) -> None:
        """Load the best weights into ``model`` (nothing to do before the first epoch)."""
        if self.weights is not None:
            model.load_state_dict(self.weights)

    def on_train_end(self, run, status: str, error: BaseException | None) -> None:
        if error is None:
            self.restore(run.core)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "stale": self.stale}

    def load_state_dict(self, state: dict) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_epoch, self.stale = int(state.get("best_epoch", 0)), int(state.get("stale", 0))


class StopAtTarget(Callback):
    """Record the first epoch at which ``monitor`` reaches ``target`` and (by default) stop there.

    ``epoch`` stays None when the run ends first: the time to target is then censored at the last epoch.

    Example::

        >>> from types import SimpleNamespace
        >>> run = SimpleNamespace(stop=False)
        >>> at = StopAtTarget(0.6, "val_acc")
        >>> for epoch, acc in enumerate([0.4, 0.65, 0.7], start=1):
        ...     at.on_epoch_end(run, epoch, {"val_acc": acc})
        >>> at.epoch, run.stop
        (2, True)
    """

    name = "stop_at_target"

    def __init__(self, target: float, monitor: str = "val_acc", mode: str = "max", stop: bool = True) -> None:
        _check_monitor(monitor, mode)
        if not math.isfinite(float(target)):
            raise ValueError(f"target must be a finite number, but got {target!r}")
        self.target, self.monitor, self.mode, self.stop = float(target), monitor, mode, bool(stop)
        self.epoch: int | None = None

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        value = float(metrics[self.monitor])
        reached = value >= self.target if self.mode == "max" else value <= self.target
        if reached and self.epoch is None:
            self.epoch = epoch
        if self.epoch is not None and self.stop:
            run.stop = True

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state.get("epoch")


class WeightAverage(Callback):
    """Average the weights at the end of every epoch from ``start`` on; the run ends with the average.

    Constant-step SGD leaves the weights fluctuating around the minimizer of the expected loss; the average of
    the iterates (Polyak-Ruppert averaging, here over epochs) converges to it.

    Example::

        >>> import torch
        >>> from types import SimpleNamespace
        >>> layer = torch.nn.Linear(1, 1, bias=False)
        >>> run, average = SimpleNamespace(core=layer), WeightAverage(start=2)
        >>> for epoch, w in enumerate([5.0, 1.0, 3.0], start=1):
        ...     _ = layer.weight.data.fill_(w)
        ...     average.on_epoch_end(run, epoch, {})
        >>> average.restore(layer); layer.weight.item()
        2.0
    """

    name = "weight_average"

    def __init__(self, start: int = 1) -> None:
        if isinstance(start, bool) or not isinstance(start, int) or start < 1:
            raise ValueError(f"start must be a positive int (an epoch), but got {start!r}")
        self.start, self.count, self.average = start, 0, None

    def on_epoch_end(self, run, epoch: int, metrics: dict) -> None:
        if epoch < self.start:
            return
        state = {k: v.detach().clone() for k, v in run.core.state_dict().items() if v.is_floating_point()}
        self.count += 1
        if self.average is None:
            self.average = state
        else:
            for key, value in state.items():
                self.average[key] += (value - self.average[key]) / self.count

    def restore(self, model) -> None:
        """Load the averaged weights into ``model`` (nothing before ``start``)."""
        if self.average is not None:
            model.load_state_dict(self.average, strict=False)

    def on_train_end(self, run, status: str, error: BaseException | None) -> None:
        if error is None:
            self.restore(run.core)

    def state_dict(self) -> dict:
        return {"count": self.count}
