"""Training-health monitors: per-layer gradient norms and the early-epoch loss slope.

A network that does not learn at all with dropout is usually too small for its rate, or the rate is too
high; one whose gradients vanish in the first layers is starved (dropout on a residual path, very deep
plain stacks); a loss that rises from the first epochs points at the learning rate, not at dropout.
:class:`HealthMonitor` is the helper the lab calls: once after each backward, once per epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["grad_norms", "loss_slope", "EpochHealth", "HealthMonitor"]


def grad_norms(model: nn.Module) -> dict[str, float]:
    """L2 norm of the gradient of each module's own parameters, by module path (modules without grads omitted).

    The key ``"<total>"`` holds the norm over all parameters (what gradient clipping uses).
    """
    norms: dict[str, float] = {}
    total = 0.0
    for name, module in model.named_modules():
        squares = [p.grad.detach().double().pow(2).sum() for p in module.parameters(recurse=False)
                   if p.grad is not None]
        if squares:
            value = float(torch.stack(squares).sum().cpu())
            norms[name or "<model>"] = math.sqrt(value)
            total += value
    if norms:
        norms["<total>"] = math.sqrt(total)
    return norms


def loss_slope(losses: Sequence[float], *, epochs: int | None = None, relative: bool = True) -> float:
    """Least-squares slope of the loss per epoch over the first ``epochs`` values (all by default).

    With ``relative=True`` the slope is divided by the first loss, so -0.1 means "falling by 10 % of the
    initial loss per epoch". NaN when fewer than two finite losses are given.
    """
    values = list(losses if epochs is None else losses[:epochs])
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return math.nan
    n = len(values)
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    slope = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values)) / sum((i - mean_x) ** 2 for i in range(n))
    if relative:
        return slope / abs(values[0]) if values[0] != 0 else math.nan
    return slope


@dataclass
class EpochHealth:
    """What the monitor saw during one epoch."""

    epoch: int
    grad_norms: dict[str, float]  #: mean per-layer gradient norm over the epoch's steps
    loss_slope: float  #: relative slope of the training loss over the early epochs so far
    warnings: list[str] = field(default_factory=list)

    def as_row(self) -> dict[str, object]:
        return {"epoch": self.epoch, "grad_norm_total": self.grad_norms.get("<total>", math.nan),
                "loss_slope": self.loss_slope, "warnings": "; ".join(self.warnings)}


class HealthMonitor:
    """Collects gradient norms after each backward and judges each epoch.

    Args:
        early_epochs: epochs over which the loss slope is judged. Default: 5.
        vanishing: a layer whose mean gradient norm is below this is reported. Default: 1e-7.
        exploding: a total gradient norm above this is reported. Default: 1e3.

    Example::

        monitor = HealthMonitor()
        for epoch in range(epochs):
            for x, y in loader:
                loss = criterion(model(x), y); loss.backward()
                monitor.after_backward(model)
                optimizer.step(); optimizer.zero_grad()
            health = monitor.end_epoch(epoch, train_loss)
            print(health.warnings)
    """

    def __init__(self, *, early_epochs: int = 5, vanishing: float = 1e-7, exploding: float = 1e3) -> None:
        if isinstance(early_epochs, bool) or not isinstance(early_epochs, int) or early_epochs < 2:
            raise ValueError(f"early_epochs must be an int >= 2, but got {early_epochs!r}")
        self.early_epochs = early_epochs
        self.vanishing = vanishing
        self.exploding = exploding
        self.losses: list[float] = []
        self.history: list[EpochHealth] = []
        self._sums: dict[str, float] = {}
        self._steps = 0

    def after_backward(self, model: nn.Module) -> dict[str, float]:
        """Record this step's per-layer gradient norms (call after ``loss.backward()``)."""
        norms = grad_norms(model)
        for name, value in norms.items():
            self._sums[name] = self._sums.get(name, 0.0) + value
        self._steps += 1
        return norms

    def end_epoch(self, epoch: int, train_loss: float) -> EpochHealth:
        """Close the epoch: mean gradient norms, loss slope so far, and any warnings."""
        means = {name: total / self._steps for name, total in self._sums.items()} if self._steps else {}
        self._sums, self._steps = {}, 0
        self.losses.append(float(train_loss))
        slope = loss_slope(self.losses, epochs=self.early_epochs)
        warnings = []
        if not math.isfinite(float(train_loss)):
            warnings.append(f"training loss is {train_loss}")
        if any(not math.isfinite(v) for v in means.values()):
            warnings.append("non-finite gradients")
        vanished = [n for n, v in means.items() if n != "<total>" and v < self.vanishing]
        if vanished:
            warnings.append(f"vanishing gradients in {', '.join(vanished[:5])}")
        if means.get("<total>", 0.0) > self.exploding:
            warnings.append(f"total gradient norm {means['<total>']:.3g} > {self.exploding:g}")
        if len(self.losses) >= self.early_epochs and len(self.losses) == self.early_epochs and slope >= 0:
            warnings.append(f"training loss did not fall over the first {self.early_epochs} epochs "
                            f"(slope {slope:+.3f}/epoch): the rate may be too high for this model, or the "
                            "learning rate wrong")
        health = EpochHealth(epoch, means, slope, warnings)
        self.history.append(health)
        return health
