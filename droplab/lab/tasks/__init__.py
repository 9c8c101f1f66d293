"""What differs between classification and regression in the lab: loss, metrics, table, verdict.

:func:`task_of` returns the module for a task name; each module has the same functions:

* ``loss(output, target, nll_head)``: the training loss;
* ``output_size(n_outputs, nll_head)``: how many outputs the model needs;
* ``split_metrics(model, split, splits, nll_head)``: a split's metrics (``loss`` first);
* ``epoch_metrics(model, splits, nll_head)``: ``train_*``, ``val_*``, ``test_*`` and ``gap``;
* ``summary(history)``: the final and best metrics of a run;
* ``final_metrics(model, splits, config)``: what is measured once after training (calibration,
  MC uncertainty);
* ``TABLE_COLUMNS`` and ``verdict(baseline, intended, reduced)``.
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

__all__ = ["task_of", "TASKS", "forward_in_batches"]

TASKS = ("classification", "regression")


def task_of(name: str) -> ModuleType:
    """The task module for ``"classification"`` or ``"regression"``."""
    if name == "classification":
        from . import classification

        return classification
    if name == "regression":
        from . import regression

        return regression
    raise ValueError(f"task must be one of {', '.join(TASKS)}, but got {name!r}")


@torch.no_grad()
def forward_in_batches(model: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``model(x)`` in its current mode, ``batch_size`` rows at a time, on ``x``'s device."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
