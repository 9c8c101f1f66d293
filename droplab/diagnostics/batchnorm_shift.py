r"""The variance shift of a BatchNorm fed by dropout, and its fix.

With dropout before BatchNorm, BN accumulates its running variance while dropout is on; at inference
dropout is off and the activations BN receives have a smaller variance. For inverted dropout with keep
probability :math:`q` on a zero-mean input of variance :math:`\sigma^2`, training gives
:math:`\operatorname{Var}[x m / q] = \sigma^2 / q`, so BN divides inference activations by a standard
deviation :math:`1/\sqrt{q}` times too large (Li, Chen, Hu, Yang, "Understanding the Disharmony between
Dropout and Batch Normalization by Variance Shift", CVPR 2019).

:func:`variance_shift` measures it per BatchNorm; :func:`recalibrate_bn` removes it by recomputing the
BN statistics with dropout off.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .._modes import training_flags_restored
from ..graph.dataflow import model_graph
from ..graph.model_io import call_model, hooks_removed, model_device
from ._data import batches
from .lint_rules import RULES, batchnorms_fed_by_dropout

__all__ = ["VarianceShift", "variance_shift", "recalibrate_bn"]

_BN = nn.modules.batchnorm._BatchNorm


@dataclass(frozen=True)
class VarianceShift:
    """The variance shift of one BatchNorm (each variance is a mean over its channels)."""

    batchnorm: str  #: module path of the BatchNorm
    dropout: str  #: the dropout that feeds it
    p: float | None  #: that dropout's rate, where it is a module
    train_var: float  #: variance of the BN input with dropout on (as in training)
    inference_var: float  #: variance of the BN input at inference (dropout off)
    running_var: float  #: the running variance BN divides by at inference
    shift: float  #: mean over channels of running_var / inference_var (1 = no shift)
    train_ratio: float  #: mean over channels of train_var / inference_var (about 1/q for zero-mean input)
    fix: str

    def as_row(self) -> dict[str, object]:
        return {"batchnorm": self.batchnorm, "dropout": self.dropout, "p": self.p,
                "train_var": round(self.train_var, 6), "inference_var": round(self.inference_var, 6),
                "running_var": round(self.running_var, 6), "shift": round(self.shift, 4),
                "train_ratio": round(self.train_ratio, 4)}


class _ChannelMoments:
    """Per-channel sum and sum of squares of a BatchNorm's input, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().double()
        x = x.transpose(0, 1).reshape(x.shape[1], -1) if x.dim() > 1 else x[None]
        total, squares = x.sum(dim=1), (x * x).sum(dim=1)
        self.total = total if self.total is None else self.total + total
        self.squares = squares if self.squares is None else self.squares + squares
        self.count += x.shape[1]

    def variance(self) -> torch.Tensor:
        mean = self.total / self.count
        return (self.squares / self.count - mean * mean).clamp_min(0.0)


def _measure(model: nn.Module, loader: Iterable, names: list[str], max_batches: int | None) -> dict[str, torch.Tensor]:
    moments = {name: _ChannelMoments() for name in names}
    handles = [model.get_submodule(name).register_forward_pre_hook(moments[name]) for name in names]
    with hooks_removed(handles), torch.no_grad():
        for x, _ in batches(loader, model_device(model), max_batches):
            call_model(model, x)
    if any(m.count == 0 for m in moments.values()):
        raise ValueError("loader gave no batch that reaches the BatchNorm layers")
    return {name: m.variance() for name, m in moments.items()}


def _first_input(loader: Iterable) -> object:
    for x, _ in batches(loader, torch.device("cpu"), 1):
        return x
    raise ValueError("loader is empty")


def variance_shift(model: nn.Module, loader: Iterable, *, max_batches: int | None = None) -> list[VarianceShift]:
    """For each BatchNorm fed by dropout, the variance it normalizes with vs the variance it gets at inference.

    Two passes over ``loader`` on a copy of ``model``, everything in eval mode (BN uses its running
    statistics), first with the dropout modules off (inference), then with them on (as in training).
    The model is not modified.

    Args:
        model: the model, typically after training.
        loader: an iterable of batches (``x`` or ``(x, y)``).
        max_batches: use at most this many batches per pass. Default: None (all).

    Returns:
        One :class:`VarianceShift` per (BatchNorm, nearest feeding dropout) pair, in model order; an
        empty list when no BatchNorm is fed by dropout.

    Example::

        >>> model = nn.Sequential(dl.nn.Dropout(0.5, seed=0), nn.BatchNorm1d(4, momentum=None))
        >>> for _ in range(50): _ = model(torch.randn(256, 4))   # training: running var ~ 2
        >>> round(variance_shift(model, [torch.randn(256, 4)])[0].shift)   # ~ 1/q = 2
        2

    .. warning:: Dropout applied by a functional call inside a custom module is switched on by putting
       that module in train mode; BatchNorm layers are kept in eval mode either way.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    graph = model_graph(model, _first_input(loader))
    pairs = batchnorms_fed_by_dropout(graph)
    if not pairs:
        return []
    clone = copy.deepcopy(model).eval()
    names = list(dict.fromkeys(bn.name for bn, _ in pairs))
    inference = _measure(clone, loader, names, max_batches)
    for _, dropout in pairs:
        clone.get_submodule(dropout.path).train()  # a dropout module, or the module calling functional dropout
    for module in clone.modules():
        if isinstance(module, _BN):
            module.eval()
    train = _measure(clone, loader, names, max_batches)
    fix = RULES["dropout-before-batchnorm"][2]
    shifts = []
    for bn, dropout in pairs:
        running = model.get_submodule(bn.name).running_var
        if running is None:
            continue  # track_running_stats=False: BN always uses batch statistics, there is no shift
        running = running.detach().double().cpu()
        inf, tr = inference[bn.name].cpu(), train[bn.name].cpu()
        live = inf > 1e-12
        if not bool(live.any()):
            continue
        p = getattr(dropout.module, "p", None)
        shifts.append(VarianceShift(
            bn.name, dropout.path if dropout.kind == "module" else dropout.describe(),
            float(p) if p is not None else None, float(tr.mean()), float(inf.mean()), float(running.mean()),
            float((running[live] / inf[live]).mean()), float((tr[live] / inf[live]).mean()), fix))
    return shifts


def recalibrate_bn(model: nn.Module, loader: Iterable, *, max_batches: int | None = None) -> nn.Module:
    """Recompute every BatchNorm's running statistics with dropout off; returns ``model`` (changed in place).

    The statistics are reset and re-estimated as an exact average over ``loader`` (``momentum=None``)
    with every module in eval mode except the BatchNorm layers, so dropout is off and BN sees what it
    will see at inference. Modes and momenta are restored afterwards, even on error.

    Args:
        model: the model to fix.
        loader: an iterable of batches (``x`` or ``(x, y)``), typically the training data.
        max_batches: use at most this many batches. Default: None (all).

    Example::

        >>> model = nn.Sequential(dl.nn.Dropout(0.5, seed=0), nn.BatchNorm1d(4, momentum=None))
        >>> train_loader = [torch.randn(256, 4) for _ in range(20)]
        >>> for x in train_loader: _ = model(x)       # training: running var ~ 1/q = 2
        >>> _ = recalibrate_bn(model, train_loader)
        >>> round(variance_shift(model, train_loader)[0].shift, 1)   # ~ 1.0
        1.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    norms = [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]
    if not norms:
        return model
    momenta = {m: m.momentum for m in norms}
    saved = {m: (m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms}
    seen = False
    with training_flags_restored(model.modules()):
        try:
            model.eval()
            for m in norms:
                m.reset_running_stats()
                m.momentum = None
                m.train()
            with torch.no_grad():
                for x, _ in batches(loader, model_device(model), max_batches):
                    call_model(model, x)
                    seen = True
            if not seen:
                raise ValueError("loader is empty: no batch to recompute the BatchNorm statistics from")
        except BaseException:
            for m, (mean, var, count) in saved.items():
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
            raise
        finally:
            for m, momentum in momenta.items():
                m.momentum = momentum
    return model
