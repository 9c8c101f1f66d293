"""Train one model from an :class:`~droplab.lab.config.ExperimentConfig`, logging every epoch to a run store.

The loop is deliberately plain: AdamW or SGD with momentum, optional max-norm after each step, the
dropout rate schedule applied at the start of each epoch, evaluation (in ``eval()`` mode) of train,
validation and test accuracy/loss after each epoch, early stopping on validation loss.

Reproducibility: initialization follows ``torch.manual_seed(config.seed)``, the data order and the
augmentation of epoch ``e`` come from a generator seeded by ``(seed, e)``, and every dropout mask is a
function of the module's seed and step (in ``state_dict``). So a checkpoint holds everything a run
needs, and ``resume`` continues it bit-identically.

Two single points are meant for data-parallel training: :func:`wrap_model` and :func:`epoch_batches`.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import schedules
from ..diagnostics.health import HealthMonitor
from ..schedules import Schedule
from .config import ExperimentConfig, parse_schedule
from .data import Splits, augment_batch, load_dataset
from .errors import user_errors
from .files import save_torch
from .metrics import calibration, evaluate
from .models import build_model, dropout_modules, max_norm_
from .progress import RunProgress

__all__ = ["RunResult", "train", "resume", "load_checkpoint", "wrap_model", "epoch_batches", "schedule_curve",
           "schedule_factor", "summarize"]

CHECKPOINT_FORMAT = 1


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


def schedule_curve(spec: str) -> Schedule:
    """The lab's ``--schedule`` as a :mod:`droplab.schedules` curve of the 1-based epoch, in [0, 1].

    It multiplies every configured rate, so per-layer ratios survive: ``ramp:N`` is ``linear(0, 1, N)``
    (reaching the full rates at epoch N), ``early:N`` is ``early(1, N + 1)`` (epochs 1..N) and
    ``late:N`` is ``stepwise([0, 1], [N])`` (from epoch N on).
    """
    kind, n = parse_schedule(spec)
    if kind == "ramp":
        return schedules.linear(0.0, 1.0, steps=n)
    if kind == "early":
        return schedules.early(1.0, until=n + 1)
    return schedules.stepwise([0.0, 1.0], milestones=[n])  # late


def schedule_factor(spec: str | None, epoch: int) -> float:
    """The multiplier on every configured rate at 1-based ``epoch`` (1.0 without a schedule)."""
    return 1.0 if spec is None else schedule_curve(spec)(epoch)


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
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a droplab lab checkpoint (format {CHECKPOINT_FORMAT})")
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    save_torch(state, path)  # atomic: a crash or a full disk never leaves a truncated or stray file


def summarize(history: list[dict], *, wall_time_s: float = 0.0) -> dict:
    """Final and best metrics of a history (best epoch = lowest validation loss, the early-stopping criterion)."""
    if not history:
        return {"epochs": 0, "wall_time_s": wall_time_s}
    last = history[-1]
    best = min(history, key=lambda m: m["val_loss"])
    return {
        "train_acc": last["train_acc"], "train_loss": last["train_loss"],
        "val_acc": last["val_acc"], "val_loss": last["val_loss"],
        "test_acc": last["test_acc"], "test_loss": last["test_loss"],
        "best_train_acc": max(m["train_acc"] for m in history),
        "best_train_loss": min(m["train_loss"] for m in history),
        "best_val_acc": max(m["val_acc"] for m in history), "best_val_loss": best["val_loss"],
        "best_epoch": best["epoch"], "test_acc_at_best": best["test_acc"],
        "gap": last["train_acc"] - last["val_acc"], "gap_at_best": best["train_acc"] - best["val_acc"],
        "epochs": last["epoch"], "wall_time_s": wall_time_s,
    }


def _mean_over_ranks(total: float, count: int, ctx) -> float:
    if ctx is None or not ctx.distributed:
        return total / max(count, 1)
    from .distributed import all_reduce_mean

    return all_reduce_mean({"v": total}, count, ctx)["v"]


def train(config: ExperimentConfig, *, store=None, name: str = "", group: str | None = None,
          study: str | None = None, on_epoch: Callable[[int, dict], None] | None = None, progress: bool = True,
          save: str | Path | None = None, resume_from: int | None = None, splits: Splits | None = None) -> RunResult:
    """Train ``config``'s model and return a :class:`RunResult`; log to ``store`` if given.

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
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig, but got {type(config).__name__}")
    if resume_from is not None and store is None:
        raise ValueError("resume_from needs the store that holds the run")
    name = name or config.label()
    if config.threads:
        torch.set_num_threads(config.threads)
    from .distributed import launched_by_torchrun, setup

    # under torchrun: DDP, one shard of each global batch per rank; only rank 0 writes store, checkpoints, bar
    ctx = setup(config.device) if launched_by_torchrun() else None
    if ctx is not None and ctx.distributed:
        if resume_from is not None:
            raise ValueError("resume_from is not supported under torchrun; resume the run in one process")
        if not ctx.is_main:
            store, save, progress = None, None, False
    torch.manual_seed(config.seed)
    splits = splits if splits is not None else load_dataset(config)
    if config.augment and not splits.sequence:
        raise ValueError(f"augment=true shifts and perturbs MNIST-1D-like sequences; dataset {config.dataset!r} is not "
                         "one (set augment=false)")
    core = build_model(config, splits.n_features, splits.n_classes)
    # learned rates (Concrete dropout) are left to the optimizer: no schedule touches them
    base_rates = {key: module.p for key, module in dropout_modules(core) if not getattr(module, "rate_is_learned", 0)}
    regularized = [m for _, m in dropout_modules(core) if callable(getattr(m, "regularization", None))]
    model = wrap_model(core, config, ctx)
    optimizer = _optimizer(config, model)
    history: list[dict] = []
    wall_before = 0.0
    checkpoint_path: Path | None = None

    if resume_from is not None:
        run = store.get_run(resume_from)
        if not run.get("checkpoint"):
            raise ValueError(f"run {resume_from} has no checkpoint to resume from (train it with --save)")
        # a corrupt, truncated or mismatched checkpoint is the user's file, not a droplab bug
        with user_errors(f"run {resume_from}'s checkpoint {run['checkpoint']} cannot be resumed "
                         "(corrupt, truncated, or from another model)",
                         (RuntimeError, ValueError, KeyError, TypeError, EOFError, OSError, pickle.UnpicklingError)):
            state = load_checkpoint(run["checkpoint"])
            core.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = list(state["history"])
            wall_before = float(state["wall_time_s"])
        checkpoint_path = Path(run["checkpoint"])
        run_id = resume_from
        store.resume_run(run_id)
    else:
        run_id = store.start_run(config.to_dict(), name=name, seed=config.seed, group=group, study=study) \
            if store is not None else None
        if save is not None:
            checkpoint_path = Path(save) / (f"run-{run_id}.pt" if run_id is not None else f"{_slug(name)}.pt")
            if store is not None:
                store.set_checkpoint(run_id, str(checkpoint_path))

    started = time.perf_counter()
    best_val_loss, stale = math.inf, 0
    for m in history:  # early-stopping state, rebuilt from the history on resume
        best_val_loss, stale = (m["val_loss"], 0) if m["val_loss"] < best_val_loss else (best_val_loss, stale + 1)
    # per-layer gradient norms and the early-epoch loss slope (droplab.diagnostics.health)
    monitor = HealthMonitor()
    monitor.losses = [m["batch_loss"] for m in history]
    status = "finished"
    try:
        with RunProgress(name, config.epochs, enabled=progress, start=len(history)) as bar:
            for epoch in range(len(history) + 1, config.epochs + 1):
                if config.early_stopping_patience is not None and stale >= config.early_stopping_patience:
                    break
                factor = schedule_factor(config.schedule, epoch)
                if config.schedule is not None:
                    for key, module in dropout_modules(core):
                        if key in base_rates:
                            module.p = base_rates[key] * factor
                epoch_start = time.perf_counter()
                model.train()
                batch_loss = torch.zeros(())
                grad_norms = []
                seen = 0
                for xb, yb in epoch_batches(splits.train, config, epoch, sequence=splits.sequence, ctx=ctx):
                    loss = F.cross_entropy(model(xb), yb)
                    for module in regularized:  # Concrete dropout's KL term
                        loss = loss + module.regularization()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    grad_norms.append(monitor.after_backward(core).get("<total>", 0.0))
                    optimizer.step()
                    if config.max_norm is not None:
                        max_norm_(core, config.max_norm)
                    batch_loss += loss.detach().cpu() * len(yb)
                    seen += len(yb)
                epoch_loss = _mean_over_ranks(batch_loss.item(), seen, ctx)  # dropout on, as optimized
                health = monitor.end_epoch(epoch, epoch_loss)
                model.eval()
                metrics: dict = {"epoch": epoch}
                for split_name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
                    result, _ = evaluate(core, split.x.to(config.device), split.y.to(config.device))
                    metrics[f"{split_name}_acc"], metrics[f"{split_name}_loss"] = result["acc"], result["loss"]
                metrics.update({
                    "gap": metrics["train_acc"] - metrics["val_acc"],
                    "batch_loss": epoch_loss,
                    "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
                    "grad_norm_max": max(grad_norms, default=0.0),
                    **{f"grad_norm[{layer}]": value for layer, value in health.grad_norms.items()
                       if layer != "<total>"},
                    "loss_slope": health.loss_slope if math.isfinite(health.loss_slope) else None,
                    "health": health.warnings,
                    "rate_factor": factor,
                    "epoch_time_s": time.perf_counter() - epoch_start,
                })
                history.append(metrics)
                if metrics["val_loss"] < best_val_loss:
                    best_val_loss, stale = metrics["val_loss"], 0
                else:
                    stale += 1
                if store is not None:
                    store.log_epoch(run_id, epoch, metrics)
                if checkpoint_path is not None:
                    _save_checkpoint(checkpoint_path, {
                        "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": epoch,
                        "model": core.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                        "wall_time_s": wall_before + time.perf_counter() - started})
                bar.update(epoch, metrics)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
        model.eval()
        _, logits = evaluate(core, splits.test.x.to(config.device), splits.test.y.to(config.device))
        calib = calibration(logits.cpu(), splits.test.y)
        final = summarize(history, wall_time_s=wall_before + time.perf_counter() - started)
        final.update({"ece": calib["ece"], "reliability": {k: calib[k] for k in ("edges", "confidence", "accuracy",
                                                                                   "count")},
                      "stopped_early": final.get("epochs", 0) < config.epochs,
                      "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test)})
    except BaseException as error:
        status = "pruned" if type(error).__name__ == "TrialPruned" else "failed"
        if store is not None:
            store.finish_run(run_id, summarize(history, wall_time_s=wall_before + time.perf_counter() - started),
                             status=status, error=f"{type(error).__name__}: {error}",
                             wall_time_s=wall_before + time.perf_counter() - started)
        raise
    if store is not None:
        store.finish_run(run_id, final, wall_time_s=final["wall_time_s"])
    return RunResult(run_id, config, history, final, core, status,
                     str(checkpoint_path) if checkpoint_path is not None else None)


def resume(run_id: int, *, store, epochs: int | None = None, progress: bool = True,
           splits: Splits | None = None) -> RunResult:
    """Continue stored run ``run_id`` from its checkpoint, optionally to a new total of ``epochs``."""
    run = store.get_run(run_id)
    config = ExperimentConfig.from_dict(run["config"])
    if epochs is not None:
        config = config.replace(epochs=epochs)
    return train(config, store=store, name=run["name"], progress=progress, resume_from=run_id, splits=splits)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60] or "run"
