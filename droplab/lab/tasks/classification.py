r"""Classification in the lab: cross-entropy, accuracy, calibration, and the three-run verdict.

Calibration uses the one ECE of :func:`droplab.mc.metrics.expected_calibration_error` (15 right-closed
confidence bins, Guo et al. 2017); the reliability diagram's bins here use the same binning, so the
bins' weighted gaps add up to that ECE:

.. math::
    \mathrm{ECE} = \sum_m \frac{|B_m|}{n}\,\bigl|\mathrm{acc}(B_m) - \mathrm{conf}(B_m)\bigr|
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from . import forward_in_batches

__all__ = ["TABLE_COLUMNS", "loss", "output_size", "split_metrics", "epoch_metrics", "summary", "final_metrics",
           "reliability", "verdict"]

# (key in the run summary, column title, format)
TABLE_COLUMNS = (
    ("train_acc", "train acc", "{:.3f}"), ("best_train_acc", "best train acc", "{:.3f}"),
    ("val_acc", "val acc", "{:.3f}"), ("best_val_acc", "best val acc", "{:.3f}"),
    ("test_acc", "test acc", "{:.3f}"),
    ("train_loss", "train loss", "{:.3f}"), ("best_train_loss", "best train loss", "{:.3f}"),
    ("val_loss", "val loss", "{:.3f}"), ("best_val_loss", "best val loss", "{:.3f}"),
    ("gap", "gap", "{:.3f}"), ("ece", "ECE", "{:.3f}"), ("best_epoch", "epochs to best", "{:d}"),
    ("wall_time_s", "wall s", "{:.1f}"),
)


def loss(output: torch.Tensor, target: torch.Tensor, nll_head: bool = False) -> torch.Tensor:
    """Cross-entropy of logits ``(N, C)`` against class ids ``(N,)``."""
    return F.cross_entropy(output, target)


def output_size(n_outputs: int, nll_head: bool = False) -> int:
    if nll_head:
        raise ValueError("nll_head is for regression (a Gaussian head); set nll_head=false for classification")
    return n_outputs


def split_metrics(model: nn.Module, split, splits=None, nll_head: bool = False, device: str = "cpu") -> dict:
    """``{"loss", "acc"}`` of ``model`` (in its current mode) on ``split``."""
    logits = forward_in_batches(model, split.x.to(device)).float()
    y = split.y.to(device)
    return {"loss": F.cross_entropy(logits, y).item(), "acc": (logits.argmax(dim=1) == y).float().mean().item()}


def epoch_metrics(model: nn.Module, splits, nll_head: bool = False, device: str = "cpu") -> dict:
    """Every split's loss and accuracy, and the gap (train - validation accuracy)."""
    metrics = {}
    for name in ("train", "val", "test"):
        for key, value in split_metrics(model, getattr(splits, name), device=device).items():
            metrics[f"{name}_{key}"] = value
    metrics["gap"] = metrics["train_acc"] - metrics["val_acc"]
    return metrics


def summary(history: list[dict]) -> dict:
    """Final and best metrics (best epoch = lowest validation loss, the early-stopping criterion)."""
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
    }


def reliability(probs: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> dict:
    """ECE (:func:`droplab.mc.metrics.expected_calibration_error`) and the reliability diagram's bins.

    Example::

        >>> probs = torch.tensor([[0.9, 0.1], [0.7, 0.3], [0.25, 0.75]])
        >>> r = reliability(probs, torch.tensor([0, 1, 1]))  # |1-0.9|, |0-0.7|, |1-0.75| over 3
        >>> round(r["ece"], 4), r["count"][13], r["count"][10], r["count"][11]
        (0.35, 1, 1, 1)
    """
    from ...mc import expected_calibration_error

    probs = probs.double()
    confidence, predicted = probs.max(-1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype)
    index = torch.bucketize(confidence, edges[1:-1], right=False)  # the binning of mc.metrics' ECE
    count = torch.bincount(index, minlength=n_bins).to(probs.dtype)
    mean_conf = torch.bincount(index, weights=confidence, minlength=n_bins) / count.clamp_min(1)
    mean_acc = torch.bincount(index, weights=(predicted == target).to(probs.dtype), minlength=n_bins) \
        / count.clamp_min(1)
    return {"ece": float(expected_calibration_error(probs, target, n_bins)), "edges": edges.tolist(),
            "confidence": mean_conf.tolist(), "accuracy": mean_acc.tolist(), "count": count.int().tolist()}


def final_metrics(model: nn.Module, splits, config) -> dict:
    """The test set's ECE and reliability bins (of the weight-scaled, eval-mode pass)."""
    probs = forward_in_batches(model, splits.test.x.to(config.device)).float().softmax(-1).cpu()
    calib = reliability(probs, splits.test.y)
    return {"ece": calib.pop("ece"), "reliability": calib}


def verdict(baseline: dict, intended: dict, reduced: dict | None = None):
    """:func:`droplab.diagnostics.verdict.three_run_verdict` on accuracy."""
    from ...diagnostics import three_run_verdict

    return three_run_verdict(baseline, intended, reduced)
