"""The study's one training loop: minibatch training with the knobs the claims vary, per-epoch metrics.

Deliberately small (the lab's trainer carries a store, checkpoints and callbacks the claims do not
need): seeded data order, Adam or SGD with momentum, weight decay, a max-norm constraint, a dropout
rate schedule over epochs, MNIST-1D shift augmentation, and keeping the best-validation weights.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..mc.metrics import expected_calibration_error

__all__ = ["Fit", "fit", "train_mlp", "train_kinds", "evaluate", "max_norm_"]


@dataclass
class Fit:
    """What :func:`fit` returns: the per-epoch ``history`` and the best-validation epoch and weights."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict | None = None

    def final(self) -> dict:
        return self.history[-1]

    def best(self) -> dict:
        return next(row for row in self.history if row["epoch"] == self.best_epoch)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: str = "classify") -> dict:
    """Eval-mode loss (cross-entropy or MSE), accuracy and ECE of ``model`` on ``(x, y)``."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + 2048]) for i in range(0, len(x), 2048)])
    model.train(was_training)
    if task == "regress":
        return {"loss": float(nn.functional.mse_loss(out.squeeze(-1), y))}
    probs = out.softmax(-1)
    return {"loss": float(nn.functional.cross_entropy(out, y)), "acc": float((out.argmax(-1) == y).float().mean()),
            "ece": float(expected_calibration_error(probs, y))}


@torch.no_grad()
def max_norm_(model: nn.Module, c: float) -> None:
    """Project every Linear weight row (a unit's incoming vector) onto the ball of radius ``c`` (Srivastava 2014)."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(torch.renorm(module.weight, 2, 0, c))


def _optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'sgd', but got {name!r}")


def fit(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
        epochs: int, seed: int, lr: float = 1e-3, batch_size: int = 128, optimizer: str = "adam",
        weight_decay: float = 0.0, max_norm: float | None = None, rate: Callable[[int], float] | None = None,
        augment: bool = False, task: str = "classify", keep_best: bool = False, eval_every: int = 1,
        average_from: int | None = None) -> Fit:
    """Train ``model`` for ``epochs`` on ``train``, evaluating on ``val`` (and the training set) each epoch.

    Args:
        model: the network (its dropout sites are droplab modules, so ``torch.manual_seed`` replays masks).
        train, val: ``(x, y)`` tensors; ``y`` class ids (``task="classify"``) or ``(N,)`` targets (``"regress"``).
        epochs: passes over ``train``.
        seed: seeds the data order, the augmentation and (through torch's generator) the dropout masks.
        lr: learning rate. Default: 1e-3.
        batch_size: minibatch size. Default: 128.
        optimizer: ``"adam"`` (AdamW, decoupled decay) or ``"sgd"`` (momentum 0.9). Default: ``"adam"``.
        weight_decay: the optimizer's weight decay. Default: 0.
        max_norm: radius of the per-unit max-norm constraint applied after every step. Default: None.
        rate: ``rate(epoch) -> p`` set on every dropout site at the start of each epoch (a
            :mod:`droplab.schedules` schedule). Default: None (rates stay as built).
        augment: MNIST-1D shift-and-noise augmentation of each batch. Default: False.
        task: ``"classify"`` (cross-entropy) or ``"regress"`` (MSE). Default: ``"classify"``.
        keep_best: keep a copy of the weights at the lowest validation loss. Default: False.
        eval_every: evaluate every this many epochs (and after the last). Default: 1.
        average_from: from this epoch on, average the parameters over every step and end with the
            average (Polyak averaging: the minimizer of the expected loss, not a noisy last iterate).
            Default: None.

    Returns:
        :class:`Fit`; ``history[e - 1]`` has ``epoch``, ``train_loss`` (running, with dropout) and the
        eval-mode ``val_*`` / ``train_eval_*`` metrics (``loss``, plus ``acc``, ``ece`` when classifying).
    """
    from .. import set_rate
    from ..lab.data import augment_batch

    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)
    opt = _optimizer(model, optimizer, lr, weight_decay)
    loss_fn = nn.functional.cross_entropy if task == "classify" else \
        (lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y))
    result, best_loss = Fit(model), float("inf")
    averages, averaged_steps = [torch.zeros_like(p) for p in model.parameters()], 0
    x_train, y_train = train
    for epoch in range(1, epochs + 1):
        if rate is not None:
            set_rate(model, rate(epoch - 1))
        model.train()
        total, perm = 0.0, torch.randperm(len(y_train), generator=order)
        for i in range(0, len(perm), batch_size):
            index = perm[i:i + batch_size]
            x = augment_batch(x_train[index], order) if augment else x_train[index]
            loss = loss_fn(model(x), y_train[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if max_norm is not None:
                max_norm_(model, max_norm)
            if average_from is not None and epoch >= average_from:
                averaged_steps += 1
                with torch.no_grad():
                    for average, param in zip(averages, model.parameters()):
                        average.add_(param.detach() - average, alpha=1.0 / averaged_steps)
            total += float(loss.detach()) * len(index)
        if epoch % eval_every and epoch != epochs:
            continue
        if epoch == epochs and averaged_steps:
            with torch.no_grad():
                for average, param in zip(averages, model.parameters()):
                    param.copy_(average)
        row = {"epoch": epoch, "train_loss": total / len(perm)}
        row.update({f"val_{k}": v for k, v in evaluate(model, *val, task=task).items()})
        row.update({f"train_eval_{k}": v for k, v in evaluate(model, *train, task=task).items()})
        result.history.append(row)
        if row["val_loss"] < best_loss:
            best_loss, result.best_epoch = row["val_loss"], epoch
            if keep_best:
                result.best_state = copy.deepcopy(model.state_dict())
    return result


def train_mlp(data, seed: int, *, epochs: int, train: tuple | None = None, mlp_args: dict | None = None,
              **fit_args) -> Fit:
    """Build :func:`droplab.study.nets.mlp` with init seeded by ``seed`` and :func:`fit` it on ``data``.

    Two conditions of a claim with the same ``seed`` share the initial weights (where their shapes do)
    and the data order, so their difference is a paired comparison.

    Args:
        data: classification splits (:func:`droplab.study.data.classification`).
        seed: the seed of init, data order and masks.
        epochs: passes over the training set.
        train: ``(x, y)`` to train on instead of ``data.train`` (a subsample). Default: None.
        mlp_args: keyword arguments of :func:`~droplab.study.nets.mlp`. Default: None.
        **fit_args: keyword arguments of :func:`fit`.
    """
    from .nets import mlp

    torch.manual_seed(seed)
    model = mlp(data.n_features, data.n_classes, **(mlp_args or {}))
    return fit(model, train or (data.train.x, data.train.y), (data.val.x, data.val.y), epochs=epochs, seed=seed,
               **fit_args)


def train_kinds(data, seed: int, settings: dict, kinds: tuple[str, ...]) -> dict:
    """Train the claim's MLP once per dropout ``kind`` (paired: same seed, init and data order).

    ``settings`` gives ``epochs``, ``width``, ``depth`` and ``p``; returns, per kind, the test accuracy and
    the validation-accuracy curve.
    """
    out = {}
    for kind in kinds:
        result = train_mlp(data, seed, epochs=settings["epochs"],
                           mlp_args={"width": settings["width"], "depth": settings["depth"], "p": settings["p"],
                                     "kind": kind})
        out[kind] = {"test_acc": evaluate(result.model, data.test.x, data.test.y)["acc"],
                     "val_curve": [row["val_acc"] for row in result.history]}
    return out
