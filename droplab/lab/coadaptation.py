"""Co-adaptation measures for a comparison's table, bounded in time.

:func:`droplab.diagnostics.coadaptation_summary` costs one pass over its data to capture activations
and, for unit ablation, one more pass per ablated unit and per random subset. The lab bounds it: at
most ``max_examples`` validation examples (a seeded sample), at most 32 single units per layer, and a
time budget (by default 10% of the run's training time): one timed forward pass sizes the number of
ablation passes that fit, and ablation is skipped when too few do. Regression skips ablation (it
measures accuracy).
"""

from __future__ import annotations

import time

import torch

__all__ = ["bounded_coadaptation"]

_FRACTIONS = (0.1, 0.5)
_SUBSETS = 5


def _sample(split, max_examples: int, seed: int):
    n = len(split)
    index = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) % 2**63))[:max_examples] \
        if n > max_examples else torch.arange(n)
    return split.x[index], split.y[index]


def _forward_seconds(model, x: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            start = time.perf_counter()
            model(x)
            return max(time.perf_counter() - start, 1e-6)
    finally:
        model.train(was_training)


def bounded_coadaptation(model, splits, *, budget_s: float, classification: bool = True, seed: int = 0,
                         max_examples: int = 500, max_units: int = 32) -> dict[str, float]:
    """The co-adaptation row of a trained model on (a sample of) the validation split, within ``budget_s``.

    Returns ``{}`` when the model has no hidden layer to measure. Keys as
    :func:`droplab.diagnostics.coadaptation_summary`, plus ``ablation_units`` (units tried per layer, 0
    when ablation did not fit the budget).
    """
    from ..diagnostics import coadaptation_summary, hidden_layers

    layers = hidden_layers(model)
    if not layers or len(splits.val) == 0:
        return {}
    x, y = _sample(splits.val, max_examples, seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    passes = budget_s / _forward_seconds(model, x) - 2  # the capture pass and its statistics
    per_layer = passes / len(layers) - _SUBSETS * len(_FRACTIONS) - 1
    units = int(min(max_units, per_layer))
    ablate = classification and units >= 4
    kwargs = {"max_units": units, "subsets": _SUBSETS, "fractions": _FRACTIONS} if ablate else {}
    row = coadaptation_summary(model, [(x, y)], layers, ablation=ablate, **kwargs)
    row["ablation_units"] = units if ablate else 0
    return row
