r"""Evaluation metrics for the lab: accuracy, loss, expected calibration error and reliability bins.

ECE (Guo et al., ICML 2017) with :math:`M` equal-width confidence bins :math:`B_m`:

.. math::
    \mathrm{ECE} = \sum_m \frac{|B_m|}{n}\,\bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["evaluate", "calibration"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[dict, torch.Tensor]:
    """``({"acc", "loss"}, logits)`` of ``model`` in its current mode (call ``model.eval()`` first)."""
    logits = torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(dim=1) == y).float().mean().item()
    return {"acc": acc, "loss": loss}, logits


def calibration(logits: torch.Tensor, y: torch.Tensor, bins: int = 15) -> dict:
    """ECE and the reliability diagram's bins (mean confidence, accuracy and count per bin)."""
    probs = logits.float().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)  # bin m holds (edge_m, edge_m+1]
    count = torch.bincount(index, minlength=bins).float()
    conf_sum = torch.bincount(index, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=bins)
    nonempty = count > 0
    mean_conf = torch.where(nonempty, conf_sum / count.clamp_min(1), torch.zeros(()))
    mean_acc = torch.where(nonempty, acc_sum / count.clamp_min(1), torch.zeros(()))
    ece = ((count / len(y)) * (mean_acc - mean_conf).abs()).sum().item()
    return {"ece": ece, "edges": edges.tolist(), "confidence": mean_conf.tolist(), "accuracy": mean_acc.tolist(),
            "count": count.int().tolist()}
