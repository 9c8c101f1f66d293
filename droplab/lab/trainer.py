"""Train one model from an :class:`~droplab.lab.config.ExperimentConfig`: one short loop plus callbacks.

The loop is deliberately plain: AdamW or SGD with momentum, optional max-norm after each step, then
evaluation (in ``eval()`` mode) of every split after each epoch; everything else is a callback of
:mod:`droplab.lab.callbacks` (rate schedule, health, early stopping, run store, checkpoint, progress,
Optuna pruning), each with its state in the checkpoint. Classification and regression differ only in
their task module (:mod:`droplab.lab.tasks`).

Reproducibility: initialization follows ``torch.manual_seed(config.seed)``, the data order and the
augmentation of epoch ``e`` come from a generator seeded by ``(seed, e)``, and every dropout mask is a
function of the module's seed and step (in ``state_dict``; the lab converts every model with a seed
derived from the run's). So a checkpoint holds everything a run needs, and ``resume`` continues it
bit-identically.

Two single points are meant for data-parallel training: :func:`wrap_model` and :func:`epoch_batches`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import callbacks as cb
from .callbacks import CHECKPOINT_FORMAT, schedule_curve
from .config import ExperimentConfig
from .data import Splits, augment_batch, load_dataset
from .errors import TrainingDiverged, UserError, user_errors
from .models import dropout_modules, max_norm_
from .tasks import task_of

__all__ = ["RunResult", "TrainState", "train", "resume", "load_checkpoint", "wrap_model", "epoch_batches",
           "schedule_curve", "schedule_factor", "summarize", "check_schedule", "CHECKPOINT_FORMAT"]


@dataclass
class RunResult:
    """What :func:`train` returns: the stored run's id, its config, per-epoch history and final metrics."""

    run_id: int | None
    config: ExperimentConfig
    history: list[dict]
    final: dict
    model: nn.Module = field(repr=False)
    status: str = "finished"
    checkpoint: str | None = None
    task: str = "classification"


@dataclass
class TrainState:
    """Everything the loop and its callbacks share about one run."""

    config: ExperimentConfig
    name: str
    core: nn.Module  #: the model itself
    model: nn.Module  #: what is called in training (the DDP wrapper under torchrun)
    optimizer: torch.optim.Optimizer
    splits: Splits
    ctx: object = None
    callbacks: list = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    stop: bool = False
    wall_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    pending_states: dict | None = None  #: callback states from the checkpoint being resumed

    @property
    def task(self):
        return task_of(self.splits.task)

    def wall_time_s(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def summary(self) -> dict:
        return summarize(self.history, wall_time_s=self.wall_time_s(), task=self.splits.task)


def wrap_model(model: nn.Module, config: ExperimentConfig, ctx=None) -> nn.Module:
    """Place the model for training (the one point where a data-parallel wrapper goes).

    Under ``torchrun`` (``ctx`` from :func:`droplab.lab.distributed.setup` with several ranks) the model
    is wrapped in ``DistributedDataParallel``.
    """
    if ctx is not None and ctx.distributed:
        from .distributed import wrap

        return wrap(model, ctx)
    return model.to(config.device)


def _epoch_generator(config: ExperimentConfig, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(config.seed) * 1_000_003 + epoch) % 2**63)


def epoch_batches(train: Splits | object, config: ExperimentConfig, epoch: int,
                  sequence: bool = False, ctx=None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches of epoch ``epoch``: a permutation seeded by ``(seed, epoch)``, augmented if asked.

    Under ``torchrun`` each rank yields its shard of every global batch (same order on every rank).
    """
    generator = _epoch_generator(config, epoch)
    order = torch.randperm(len(train.y), generator=generator)
    for start in range(0, len(order), config.batch_size):
        index = order[start:start + config.batch_size]
        x, y = train.x[index], train.y[index]
        if config.augment and sequence:
            x = augment_batch(x, generator)
        if ctx is not None and ctx.distributed:
            from .distributed import shard

            x, y = shard(x, ctx), shard(y, ctx)
        yield x.to(config.device), y.to(config.device)


def schedule_factor(spec: str | None, epoch: int) -> float:
    """The multiplier on every configured rate at 1-based ``epoch`` (1.0 without a schedule)."""
    return 1.0 if spec is None else schedule_curve(spec)(epoch)


def check_schedule(config: ExperimentConfig) -> str | None:
    """Raise ``ValueError`` when the schedule can never take effect in ``config.epochs``; a warning text when
    it only partly does, else None (``ramp:10`` over 3 epochs would silently never reach the rate)."""
    if config.schedule is None:
        return None
    from .config import parse_schedule

    kind, n = parse_schedule(config.schedule)
    if kind == "ramp" and n > config.epochs:
        end = schedule_factor(config.schedule, config.epochs)
        raise ValueError(f"schedule {config.schedule} reaches the configured rate at epoch {n}, but the run has only "
                         f"{config.epochs} epochs (it would end at {end:.0%} of the rate): use ramp:N with "
                         "N <= epochs, or more epochs")
    if kind == "late" and n > config.epochs:
        raise ValueError(f"schedule {config.schedule} turns dropout on at epoch {n}, after the last epoch "
                         f"({config.epochs}): the run would have no dropout at all")
    if kind == "early" and n >= config.epochs:
        return (f"schedule {config.schedule} keeps dropout on for all {config.epochs} epochs: it is the same as no "
                "schedule")
    return None


def _optimizer(config: ExperimentConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def load_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train` (``torch.load(weights_only=True)``: tensors and plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: unpickling errors of every kind
        raise ValueError(f"{path} is not a readable droplab checkpoint ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a droplab lab checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def summarize(history: list[dict], *, wall_time_s: float = 0.0, task: str = "classification") -> dict:
    """Final and best metrics of a history (best epoch = lowest validation loss, the early-stopping criterion)."""
    if not history:
        return {"epochs": 0, "wall_time_s": wall_time_s}
    return {**task_of(task).summary(history), "epochs": history[-1]["epoch"], "wall_time_s": wall_time_s}


def _mean_over_ranks(total: float, count: int, ctx) -> float:
    if ctx is None or not ctx.distributed:
        return total / max(count, 1)
    from .distributed import all_reduce_mean

    return all_reduce_mean({"v": total}, count, ctx)["v"]


def _train_epoch(run: TrainState, epoch: int) -> float:
    """One pass over the training split; returns the mean loss with dropout on, as optimized."""
    config, task = run.config, run.task
    regularized = [m for _, m in dropout_modules(run.core) if callable(getattr(m, "regularization", None))]
    run.model.train()
    total, seen = torch.zeros(()), 0
    for xb, yb in epoch_batches(run.splits.train, config, epoch, sequence=run.splits.sequence, ctx=run.ctx):
        loss = task.loss(run.model(xb), yb, config.nll_head)
        for module in regularized:  # Concrete dropout's KL term
            loss = loss + module.regularization()
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for callback in run.callbacks:
            callback.after_backward(run)
        run.optimizer.step()
        if config.max_norm is not None:
            max_norm_(run.core, config.max_norm)
        total += loss.detach().cpu() * len(yb)
        seen += len(yb)
    return _mean_over_ranks(total.item(), seen, run.ctx)


def _epoch(run: TrainState, epoch: int) -> None:
    start = time.perf_counter()
    batch_loss = _train_epoch(run, epoch)
    run.model.eval()
    metrics = {"epoch": epoch, **run.task.epoch_metrics(run.core, run.splits, run.config.nll_head, run.config.device),
               "batch_loss": batch_loss, "epoch_time_s": time.perf_counter() - start}
    for key in ("batch_loss", "val_loss"):  # never store a diverged epoch, nor a run finished with NaN metrics
        value = metrics.get(key, 0.0)
        if not math.isfinite(value):
            raise TrainingDiverged(f"training diverged: {key} is {value} at epoch {epoch} of {run.name!r}; lower lr "
                                   f"(now {run.config.lr:g}) or set max_norm (the finished epochs are stored)")
    for callback in run.callbacks:
        callback.on_epoch_end(run, epoch, metrics)
    run.history.append(metrics)


def _fit(run: TrainState) -> str:
    """The loop: epochs until ``config.epochs`` or a callback stops it; final metrics; callbacks closed."""
    status, error = "finished", None
    try:
        for callback in run.callbacks:
            callback.on_train_start(run)
        for epoch in range(len(run.history) + 1, run.config.epochs + 1):
            for callback in run.callbacks:
                callback.on_epoch_start(run, epoch)
            if run.stop:
                break
            _epoch(run, epoch)
        run.model.eval()
        run.final = {**run.summary(), **run.task.final_metrics(run.core, run.splits, run.config),
                     "stopped_early": len(run.history) < run.config.epochs, "task": run.splits.task,
                     "n_train": len(run.splits.train), "n_val": len(run.splits.val), "n_test": len(run.splits.test)}
    except BaseException as raised:
        status, error = ("pruned" if type(raised).__name__ == "TrialPruned" else "failed"), raised
        raise
    finally:
        for callback in run.callbacks:
            callback.on_train_end(run, status, error)
    return status


def _setup(config: ExperimentConfig, splits: Splits | None, model: nn.Module | None):
    """Threads, the data-parallel context, the data, and the model as built with the config's rates set.

    Returns the config with ``rates`` resolved to one rate per site of the model as built: what ran.
    """
    from .build import apply_rates, build_model, site_rates
    from .distributed import launched_by_torchrun, setup

    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = setup(config.device) if launched_by_torchrun() else None
    if model is None:
        torch.manual_seed(config.seed)
    splits = splits if splits is not None else load_dataset(config)
    if config.augment and not splits.sequence:
        raise ValueError(f"augment=true shifts and perturbs MNIST-1D-like sequences; dataset {config.dataset!r} is not "
                         "one (set augment=false)")
    if config.task != "auto" and config.task != splits.task:
        raise ValueError(f"task={config.task} but the loaded dataset is {splits.task}")
    if model is None:
        n_out = task_of(splits.task).output_size(splits.n_outputs, config.nll_head)
        model = build_model(config.replace(rates=None), splits.input_shape, n_out)
    rates = site_rates(model, config)
    return ctx, splits, apply_rates(model, config), config.replace(rates=rates)


def _start_run(run: TrainState, store, group, study, save, resume_from) -> tuple[int | None, Path | None]:
    """Register the run (or reopen it for ``resume_from``) and restore a checkpoint's state."""
    if resume_from is None:
        from .build import applied_config

        run_id = store.start_run(applied_config(run.config), name=run.name, seed=run.config.seed, group=group,
                                 study=study) if store is not None else None
        if save is None:
            return run_id, None
        from .files import safe_component

        path = Path(save) / (f"run-{run_id}.pt" if run_id is not None else f"{safe_component(run.name)}.pt")
        if store is not None:
            store.set_checkpoint(run_id, str(path))
        return run_id, path
    stored = store.get_run(resume_from)
    _check_resumable(stored)
    # a corrupt, truncated, edited or foreign checkpoint is the user's file: one error, the store untouched
    with user_errors(f"run {resume_from}'s checkpoint cannot be resumed",
                     (ValueError, TypeError, KeyError, RuntimeError, AttributeError, OSError)):
        state = load_checkpoint(stored["checkpoint"])
        try:
            run.core.load_state_dict(state["model"])
            run.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise ValueError(f"checkpoint {stored['checkpoint']} does not fit run {resume_from}'s model: "
                             f"{error}") from None
        run.history, run.wall_before = list(state["history"]), float(state["wall_time_s"])
        run.pending_states = dict(state.get("callbacks") or {})
    store.resume_run(resume_from)
    from .files import remove_stale_temporaries

    remove_stale_temporaries(stored["checkpoint"])  # its last writer is dead: a kill mid-save left these
    return resume_from, Path(stored["checkpoint"])


def _check_resumable(stored: dict) -> None:
    if not stored.get("checkpoint"):
        raise UserError(f"run {stored['id']} has no checkpoint to resume from: it was trained without --save "
                        "(only a run saved with --save DIR can be continued)")


def _callbacks(run: TrainState, store, run_id, checkpoint, progress: bool, on_epoch) -> list:
    parts: list = []
    if run.config.schedule is not None:
        parts.append(cb.RateSchedule(run.config.schedule))
    parts += [cb.Health(), cb.EarlyStopping(run.config.early_stopping_patience)]
    if store is not None:
        parts.append(cb.Store(store, run_id))
    if checkpoint is not None:
        parts.append(cb.Checkpoint(checkpoint))
    parts.append(cb.Progress(run.name, run.config.epochs, progress))
    if on_epoch is not None:
        parts.append(cb.EpochHook(on_epoch))
    states = run.pending_states
    if states is None and run.history:  # an older checkpoint without callback state: rebuild from the history
        states = {"early_stopping": _early_stopping_from(run.history),
                  "health": {"losses": [m["batch_loss"] for m in run.history]}}
    for part in parts:
        if states and part.name in states:
            part.load_state_dict(states[part.name])
    return parts


def _early_stopping_from(history: list[dict]) -> dict:
    best, stale = float("inf"), 0
    for m in history:
        best, stale = (m["val_loss"], 0) if m["val_loss"] < best else (best, stale + 1)
    return {"best": best, "stale": stale}


def train(config: ExperimentConfig, *, store=None, name: str = "", group: str | None = None,
          study: str | None = None, on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True,
          save: str | Path | None = None, resume_from: int | None = None, splits: Splits | None = None,
          model: nn.Module | None = None) -> RunResult:
    """Train ``config``'s model and return a :class:`RunResult`; log to ``store`` if given.

    The stored config and ``RunResult.config`` hold the rates that ran, one per site (``rates``), and
    only the model arguments the factory takes (:func:`droplab.lab.build.applied_config`).

    Args:
        config: the experiment.
        store: a :class:`~droplab.lab.store.RunStore`, or None to keep nothing. Default: None.
        name: the run's label (defaults to ``config.label()``).
        group: comparison id the run belongs to. Default: None.
        study: sweep/study name. Default: None.
        on_epoch: ``on_epoch(epoch, metrics)`` after each epoch's evaluation. An exception raised from it
            stops training: ``optuna.TrialPruned`` marks the run ``pruned``, anything else ``failed``;
            both are re-raised.
        progress: show a live progress bar (only on a terminal). Default: True.
        save: a directory to write a checkpoint to after every epoch. Default: None.
        resume_from: id of a stored run to continue from its checkpoint (see :func:`resume`).
        splits: pre-loaded data (skips :func:`~droplab.lab.data.load_dataset`). Default: None.
        model: the model as built, to train instead of building ``config.model`` (e.g. the one a
            preflight check built); ``config.rates`` is set on it and torch's generator is not reseeded,
            so build it after ``torch.manual_seed(config.seed)`` for the run a fresh build would give.
            Default: None.
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig, but got {type(config).__name__}")
    if resume_from is not None and store is None:
        raise ValueError("resume_from needs the store that holds the run")
    check_schedule(config)
    ctx, splits, core, config = _setup(config, splits, model)
    if ctx is not None and ctx.distributed:
        if resume_from is not None:
            raise ValueError("resume_from is not supported under torchrun; resume the run in one process")
        if not ctx.is_main:  # only rank 0 writes the store, the checkpoints and the bar
            store, save, progress = None, None, False
    model = wrap_model(core, config, ctx)
    run = TrainState(config, name or config.label(), core, model, _optimizer(config, model), splits, ctx)
    run_id, checkpoint = _start_run(run, store, group, study, save, resume_from)
    run.callbacks = _callbacks(run, store, run_id, checkpoint, progress, on_epoch)
    run.started = time.perf_counter()
    status = _fit(run)
    return RunResult(run_id, config, run.history, run.final, core, status,
                     str(checkpoint) if checkpoint is not None else None, splits.task)


def resume(run_id: int, *, store, epochs: int | None = None, progress: bool = True,
           splits: Splits | None = None) -> RunResult:
    """Continue stored run ``run_id`` from its checkpoint, optionally to a new total of ``epochs``.

    The stored config is updated to the new ``epochs``, so ``droplab runs show`` shows what ran.
    """
    stored = store.get_run(run_id)
    _check_resumable(stored)
    config = ExperimentConfig.from_dict(stored["config"])
    if epochs is not None and epochs != config.epochs:
        config = config.replace(epochs=epochs)
        store.update_config(run_id, config.to_dict())
    return train(config, store=store, name=stored["name"], progress=progress, resume_from=run_id, splits=splits)
