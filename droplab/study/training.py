"""How a claim trains a model: through the lab's trainer (:func:`droplab.lab.trainer.train`) and its callbacks.

:func:`fit` turns the knobs a claim varies into an :class:`~droplab.lab.config.ExperimentConfig`, builds the
model with the claim's builder after ``torch.manual_seed(seed)`` (the builder sets its own rates, so nothing
depends on the config's rate field), trains it with ``train(config, model=..., splits=...)``, and returns the
best-validation checkpoint:

* :class:`~droplab.lab.callbacks.BestWeights` keeps the weights of the best ``monitor`` value and stops
  the run after ``patience`` epochs without improvement, so every arm trains until its own validation curve
  turns (no arm is cut short at a fixed epoch count), and the model returned is that checkpoint;
* :class:`~droplab.lab.callbacks.StopAtTarget` records the first epoch a metric reaches a target.

The trainer runs them through its ``on_epoch`` hook; a callback's request to stop ends the run through the
hook's documented path (an exception the trainer re-raises), which :func:`fit` catches.

Several claims train the same arm (the 256-unit MLP with and without dropout on a seed's draw serves claims
1, 3, 10, 11 and 15). With a ``key`` describing the model and data, and ``$DROPLAB_STUDY_CACHE`` naming a
directory (the runner sets one per study), a finished run is saved there and the next claim that asks for
the same key and training arguments loads it instead of training again; a lock file makes a second process
wait for the first instead of training it twice.
Initialization, data order, augmentation and every dropout mask follow ``seed`` (the lab's rules), so two arms
trained with the same seed share their initial weights (where shapes agree) and their batches: a paired
comparison.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

__all__ = ["Trained", "fit", "history_at", "CACHE_ENV"]

#: the environment variable naming the directory of trained runs shared between claims (unset: no sharing)
CACHE_ENV = "DROPLAB_STUDY_CACHE"


class _Stop(Exception):
    """A callback asked the run to stop (raised through the trainer's ``on_epoch`` hook)."""


@dataclass
class Trained:
    """A finished run: the best-validation model, the lab's per-epoch metrics and how the run ended."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    epochs_run: int = 0
    max_epochs: int = 0
    stopped: str = "max_epochs"  #: "patience", "target" or "max_epochs"
    target_epoch: int | None = None
    cpu_seconds: float = 0.0  #: CPU the training took (for a shared run: when it was trained)
    family: str = ""  #: the run's model, data and arguments without the seed (the same arm on every seed)

    @property
    def best(self) -> dict:
        """The epoch metrics of the best-validation epoch."""
        return history_at(self.history, self.best_epoch)

    @property
    def censored(self) -> bool:
        """The run hit ``max_epochs`` while its monitor was still improving in the last ``patience`` window."""
        return self.stopped == "max_epochs" and self.best_epoch == self.epochs_run

    def summary(self, *keys: str) -> dict:
        """Best and run epochs, ``censored``, the training's CPU and family, and the best epoch's ``keys``."""
        best = self.best
        return {"best_epoch": self.best_epoch, "epochs_run": self.epochs_run, "censored": self.censored,
                "train_cpu": self.cpu_seconds, "family": self.family, **{key: float(best[key]) for key in keys}}


def history_at(history: list[dict], epoch: int) -> dict:
    """The metrics of ``epoch`` (1-based) in a lab history."""
    for row in history:
        if row["epoch"] == epoch:
            return row
    raise KeyError(f"epoch {epoch} is not in the history (epochs {history[0]['epoch']}..{history[-1]['epoch']})")


def fit(build: Callable[[tuple, int], nn.Module], splits, *, seed: int, epochs: int, lr: float = 1e-3,
        batch_size: int = 100, optimizer: str = "adamw", weight_decay: float = 0.0, momentum: float = 0.9,
        max_norm: float | None = None, augment: bool = False, schedule: str | None = None,
        monitor: str | None = None, mode: str | None = None, patience: int | None = None,
        target: float | None = None, average_from: int | None = None, key: dict | None = None) -> Trained:
    """Train ``build(input_shape, n_outputs)`` on ``splits`` with the lab's trainer; return the best checkpoint.

    Args:
        build: the model builder (typically a :mod:`droplab.lab.models` factory with the claim's arguments).
        splits: :class:`~droplab.lab.data.Splits`.
        seed: the run's seed (initialization, data order, augmentation, masks).
        epochs: the most epochs to train.
        lr, batch_size, optimizer, weight_decay, momentum, max_norm, augment, schedule: the lab's config fields.
        monitor: the metric of the best checkpoint. Default: ``val_acc`` (classification), ``val_loss``.
        mode: ``"max"`` or ``"min"`` for ``monitor``. Default: ``max`` for accuracies, else ``min``.
        patience: stop after this many epochs without a better ``monitor``. Default: None (train ``epochs``).
        target: stop at the first epoch ``monitor`` reaches this value (recorded as ``target_epoch``).
        average_from: end with the average of the end-of-epoch weights from this epoch on
            (:class:`~droplab.lab.callbacks.WeightAverage`) instead of the best checkpoint. Default: None.
        key: a JSON-serializable description of the model and the data (with the training arguments it
            identifies the run) to share the run through ``$DROPLAB_STUDY_CACHE``. Default: None.
    """
    arguments = {"seed": seed, "epochs": epochs, "lr": lr, "batch_size": batch_size, "optimizer": optimizer,
                 "weight_decay": weight_decay, "momentum": momentum, "max_norm": max_norm, "augment": augment,
                 "schedule": schedule, "monitor": monitor, "mode": mode, "patience": patience, "target": target,
                 "average_from": average_from}
    family = _digest({"key": {k: v for k, v in (key or {}).items() if k != "data_seed"},
                      **{k: v for k, v in arguments.items() if k != "seed"}})
    directory = os.environ.get(CACHE_ENV)
    if key is None or not directory:
        return _timed(build, splits, family, arguments)
    path = Path(directory) / f"{_digest({'key': key, **arguments})}.pt"
    with _locked(path.with_suffix(".lock")):
        if path.is_file():
            return _load(path, build, splits)
        trained = _timed(build, splits, family, arguments)
        _save(path, trained)
        return trained


def _digest(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:32]


def _timed(build, splits, family: str, arguments: dict) -> Trained:
    import time

    start = time.process_time()
    trained = _fit(build, splits, **arguments)
    trained.cpu_seconds, trained.family = time.process_time() - start, family
    return trained


class _locked:
    """An exclusive ``flock`` on ``path`` (another process asking for the same run waits for this one)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


_FIELDS = ("history", "best_epoch", "epochs_run", "max_epochs", "stopped", "target_epoch", "cpu_seconds", "family")


def _save(path: Path, trained: Trained) -> None:
    from ..lab.files import save_torch

    save_torch({"model": trained.model.state_dict(), **{f: getattr(trained, f) for f in _FIELDS}}, path)


def _load(path: Path, build, splits) -> Trained:
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = build(tuple(splits.input_shape), int(_outputs(splits)))
    model.load_state_dict(state.pop("model"))
    model.eval()
    return Trained(model, **{f: state[f] for f in _FIELDS})


def _outputs(splits) -> int:
    from ..lab.tasks import task_of

    return task_of(splits.task).output_size(splits.n_outputs, False)


def _fit(build, splits, *, seed: int, epochs: int, lr: float, batch_size: int, optimizer: str, weight_decay: float,
         momentum: float, max_norm: float | None, augment: bool, schedule: str | None, monitor: str | None,
         mode: str | None, patience: int | None, target: float | None, average_from: int | None) -> Trained:
    from ..lab.callbacks import BestWeights, StopAtTarget, WeightAverage
    from ..lab.config import ExperimentConfig
    from ..lab.trainer import train

    monitor = monitor or ("val_acc" if splits.task == "classification" else "val_loss")
    mode = mode or ("max" if monitor.endswith("acc") else "min")
    config = ExperimentConfig(dataset=splits.name or "mnist1d", epochs=epochs, batch_size=batch_size,
                              optimizer=optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum,
                              max_norm=max_norm, augment=augment, schedule=schedule, seed=seed, threads=None)
    torch.manual_seed(seed)  # the initialization a fresh build of the run gives (the trainer's rule)
    model = build(tuple(splits.input_shape), _outputs(splits))
    parts = [BestWeights(monitor, mode, patience)]
    if target is not None:
        parts.append(StopAtTarget(target, monitor, mode))
    average = WeightAverage(average_from) if average_from is not None else None
    if average is not None:
        parts.append(average)
    history: list[dict] = []
    run = SimpleNamespace(core=model, stop=False)

    def on_epoch(epoch: int, metrics: dict) -> None:
        history.append(metrics)
        for part in parts:
            part.on_epoch_end(run, epoch, metrics)
        if run.stop:
            raise _Stop

    try:
        train(config, splits=splits, progress=False, on_epoch=on_epoch, model=model)
        stopped = "max_epochs"
    except _Stop:
        stopped = "target" if target is not None and parts[1].epoch is not None else "patience"
    (average or parts[0]).restore(model)
    model.eval()
    return Trained(model, history, parts[0].best_epoch, len(history), epochs, stopped,
                   parts[1].epoch if target is not None else None)
