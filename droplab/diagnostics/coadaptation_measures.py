r"""Co-adaptation, measured: does dropout make hidden units work on their own?

Dropout's central claim (Srivastava et al. 2014, section 7) is that it prevents units from
co-adapting: each unit must be useful in many random contexts, so features are less correlated,
sparser, and no single unit is critical. These measures test it on a trained model and data:

* :func:`pairwise_correlation`: mean absolute Pearson correlation over pairs of hidden units;
* :func:`effective_rank`: the entropy-based effective rank of the representation (Roy & Vetterli,
  "The effective rank: a measure of effective dimensionality", EUSIPCO 2007):
  :math:`\exp(-\sum_k p_k \log p_k)` with :math:`p_k = \sigma_k / \sum_j \sigma_j` over the singular
  values of the centred activation matrix;
* :func:`sparsity`: mean activation and the fraction of near-zero activations (the paper reports a
  mean activation of about 2.0 without dropout and 0.7 with it, for an autoencoder);
* :func:`ablation_sensitivity`: the accuracy drop when single units, or random subsets of units, are
  zeroed at inference (a co-adapted network is fragile).

:func:`capture_activations` records hidden layers by forward hooks on named modules; :func:`coadaptation`
runs everything for a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .._modes import training_flags_restored
from ..graph.model_io import call_model, hooks_removed, model_device
from ..rng import random_words
from ._data import batches

__all__ = ["capture_activations", "hidden_layers", "pairwise_correlation", "effective_rank", "sparsity",
           "ablation_sensitivity", "Ablation", "LayerCoadaptation", "coadaptation", "coadaptation_summary"]

_NOT_HIDDEN = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.MultiheadAttention)


def _units(output: torch.Tensor) -> torch.Tensor:
    """``(samples, units)``: channels are the units of a feature map, positions count as samples."""
    output = output.detach()
    if output.dim() == 1:
        return output[:, None]
    if output.dim() > 2:
        output = output.transpose(1, -1).reshape(-1, output.shape[1])
    return output


def hidden_layers(model: nn.Module) -> list[str]:
    """Default layers to measure: every activation-function module, else every Linear/Conv but the last."""
    names = [name for name, m in model.named_modules()
             if type(m).__module__ == "torch.nn.modules.activation" and not isinstance(m, _NOT_HIDDEN)]
    if names:
        return names
    layers = [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    return layers[:-1]


def capture_activations(model: nn.Module, loader: Iterable, layers: Sequence[str] | None = None, *,
                        max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """The outputs of named modules over ``loader``, in eval mode: ``{name: (samples, units)}``.

    Args:
        model: the model (its train/eval mode is restored afterwards).
        loader: an iterable of batches (``x`` or ``(x, y)``).
        layers: module names; default :func:`hidden_layers`.
        max_batches: at most this many batches. Default: None (all).

    Feature maps ``(N, C, *)`` give one row per example and position, one column per channel.
    """
    layers = list(hidden_layers(model) if layers is None else layers)
    if not layers:
        raise ValueError("no hidden layer to capture: pass layers=[module names]")
    modules = dict(model.named_modules())
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise ValueError(f"layers {unknown} are not modules of the model; modules are: {sorted(modules)[:20]}")
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = []
    for name in layers:
        def hook(module, args, output, name=name):
            if isinstance(output, (tuple, list)):
                output = output[0]
            captured[name].append(_units(output).float().cpu())
        handles.append(modules[name].register_forward_hook(hook))
    with training_flags_restored(model.modules()), hooks_removed(handles), torch.no_grad():
        model.eval()
        for x, _ in batches(loader, model_device(model), max_batches):
            call_model(model, x)
    if not any(captured.values()):
        raise ValueError("loader is empty")
    return {name: torch.cat(chunks) for name, chunks in captured.items()}


def _check_matrix(acts: torch.Tensor) -> torch.Tensor:
    if not isinstance(acts, torch.Tensor) or acts.dim() != 2:
        raise ValueError(f"activations must be a (samples, units) tensor, but got "
                         f"{tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__}")
    return acts.double()


def pairwise_correlation(acts: torch.Tensor) -> tuple[float, int]:
    """Mean absolute Pearson correlation over pairs of units, and the number of constant (dead) units.

    Constant units have no correlation and are left out. Returns ``(nan, dead)`` when fewer than two
    units vary.
    """
    acts = _check_matrix(acts)
    centred = acts - acts.mean(dim=0)
    std = centred.pow(2).mean(dim=0).sqrt()
    live = std > 1e-12
    dead = int((~live).sum())
    if int(live.sum()) < 2:
        return math.nan, dead
    z = centred[:, live] / std[live]
    corr = (z.T @ z) / acts.shape[0]
    k = corr.shape[0]
    upper = torch.triu_indices(k, k, offset=1)
    return float(corr[upper[0], upper[1]].abs().mean()), dead


def effective_rank(acts: torch.Tensor, *, center: bool = True) -> float:
    """Entropy-based effective rank (Roy & Vetterli 2007) of the activation matrix, between 1 and min(shape)."""
    acts = _check_matrix(acts)
    if center:
        acts = acts - acts.mean(dim=0)
    sigma = torch.linalg.svdvals(acts)
    total = sigma.sum()
    if float(total) == 0.0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(torch.exp(-(p * p.log()).sum()))


def sparsity(acts: torch.Tensor, *, threshold: float = 1e-2) -> dict[str, float]:
    """``mean_activation`` (mean over units and samples), ``near_zero`` (fraction with ``|a| <= threshold``)
    and ``mean_abs_activation``."""
    acts = _check_matrix(acts)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, but got {threshold}")
    return {"mean_activation": float(acts.mean()), "mean_abs_activation": float(acts.abs().mean()),
            "near_zero": float((acts.abs() <= threshold).double().mean())}


@dataclass(frozen=True)
class Ablation:
    """Accuracy drops when units of one layer are zeroed at inference."""

    layer: str
    units: int  #: units in the layer
    accuracy: float  #: accuracy with nothing removed
    single_mean_drop: float  #: mean drop over the single units tried
    single_max_drop: float  #: the worst single unit
    units_tried: int  #: how many single units were tried
    subset_drops: dict[float, float]  #: fraction removed -> mean drop over the random subsets

    def as_row(self) -> dict[str, object]:
        return asdict(self)


def _permutation(n: int, seed: int, step: int) -> torch.Tensor:
    """A random permutation of ``range(n)`` from droplab's generator (sorting Philox words)."""
    return torch.argsort(random_words(n, seed, step), stable=True)


def _accuracy(model: nn.Module, xs: list, ys: list) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in zip(xs, ys):
            out = call_model(model, x)
            correct += int((out.argmax(dim=-1) == y).sum())
            total += y.numel()
    return correct / total


def ablation_sensitivity(model: nn.Module, loader: Iterable, layer: str, *, max_units: int = 64,
                         fractions: Sequence[float] = (0.1, 0.25, 0.5), subsets: int = 10, seed: int = 0,
                         max_batches: int | None = None) -> Ablation:
    """Accuracy drop of a classifier when units of ``layer`` are zeroed at inference.

    Single units: up to ``max_units`` units (a random choice when the layer is wider), each zeroed
    alone. Subsets: for each fraction, ``subsets`` random subsets of that many units, zeroed together.
    Units are channels for feature maps. Random choices come from droplab's generator with ``seed``.
    The model runs in eval mode; its mode is restored afterwards.

    Args:
        model: a classifier whose output's last axis holds the class scores.
        loader: batches of ``(x, y)`` with integer labels ``y``.
        layer: the module whose output is ablated.
        max_units: most single units tried. Default: 64.
        fractions: fractions of the units removed at once. Default: (0.1, 0.25, 0.5).
        subsets: random subsets per fraction. Default: 10.
        seed: seed of the random choices. Default: 0.
        max_batches: at most this many batches. Default: None (all).
    """
    for name, value in (("max_units", max_units), ("subsets", subsets)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, but got {value!r}")
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"fractions must lie in (0, 1], but got {f}")
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"layer {layer!r} is not a module of the model")
    xs, ys = [], []
    for x, y in batches(loader, model_device(model), max_batches):
        if y is None:
            raise ValueError("ablation_sensitivity needs labelled batches (x, y)")
        xs.append(x)
        ys.append(y)
    if not xs:
        raise ValueError("loader is empty")
    mask: list[torch.Tensor | None] = [None]

    def hook(mod, args, output):
        if mask[0] is None:
            return output
        shape = [1, -1] + [1] * (output.dim() - 2)
        return output * mask[0].to(output.dtype).reshape(shape)

    handle = module.register_forward_hook(hook)
    with training_flags_restored(model.modules()):
        try:
            model.eval()
            base = _accuracy(model, xs, ys)
            with torch.no_grad():
                first = xs[0][:1] if not isinstance(xs[0], tuple) else tuple(t[:1] for t in xs[0])
                captured = []
                probe = module.register_forward_hook(lambda m, a, o: captured.append(o))
                try:
                    call_model(model, first)
                finally:
                    probe.remove()
            width = captured[0].shape[1] if captured[0].dim() > 1 else captured[0].shape[0]
            device = captured[0].device
            tried = _permutation(width, seed, 0)[:max_units] if width > max_units else torch.arange(width)
            drops = []
            for unit in tried.tolist():
                keep = torch.ones(width, device=device)
                keep[unit] = 0
                mask[0] = keep
                drops.append(base - _accuracy(model, xs, ys))
            subset_drops = {}
            for i, fraction in enumerate(fractions):
                k = max(1, round(fraction * width))
                results = []
                for s in range(subsets):
                    keep = torch.ones(width, device=device)
                    keep[_permutation(width, seed, 1 + i * subsets + s)[:k].to(device)] = 0
                    mask[0] = keep
                    results.append(base - _accuracy(model, xs, ys))
                subset_drops[float(fraction)] = sum(results) / len(results)
        finally:
            handle.remove()
    return Ablation(layer, width, base, sum(drops) / len(drops), max(drops), len(drops), subset_drops)


@dataclass(frozen=True)
class LayerCoadaptation:
    """All co-adaptation measures of one hidden layer."""

    layer: str
    units: int
    correlation: float  #: mean |pairwise correlation| of live units
    dead_units: int
    effective_rank: float
    mean_activation: float
    near_zero: float
    ablation: Ablation | None

    def as_row(self) -> dict[str, object]:
        row = {"layer": self.layer, "units": self.units, "correlation": self.correlation,
               "dead_units": self.dead_units, "effective_rank": self.effective_rank,
               "mean_activation": self.mean_activation, "near_zero": self.near_zero}
        if self.ablation is not None:
            row["accuracy"] = self.ablation.accuracy
            row["single_unit_drop"] = self.ablation.single_mean_drop
            row["single_unit_max_drop"] = self.ablation.single_max_drop
            for fraction, drop in self.ablation.subset_drops.items():
                row[f"drop_{int(round(fraction * 100))}pct"] = drop
        return row


def coadaptation(model: nn.Module, loader: Iterable, layers: Sequence[str] | None = None, *, ablation: bool = True,
                 threshold: float = 1e-2, max_batches: int | None = None, **ablation_kwargs) -> list[LayerCoadaptation]:
    """Every co-adaptation measure for each hidden layer (default :func:`hidden_layers`).

    ``ablation=False`` skips unit ablation (it needs labelled batches and one pass over the data per
    ablated unit); ``ablation_kwargs`` go to :func:`ablation_sensitivity`.
    """
    acts = capture_activations(model, loader, layers, max_batches=max_batches)
    results = []
    for name, matrix in acts.items():
        corr, dead = pairwise_correlation(matrix)
        sparse = sparsity(matrix, threshold=threshold)
        ablated = ablation_sensitivity(model, loader, name, max_batches=max_batches, **ablation_kwargs) \
            if ablation else None
        results.append(LayerCoadaptation(name, matrix.shape[1], corr, dead, effective_rank(matrix),
                                         sparse["mean_activation"], sparse["near_zero"], ablated))
    return results


def coadaptation_summary(model: nn.Module, loader: Iterable, layers: Sequence[str] | None = None,
                         **kwargs) -> dict[str, float]:
    """One row for a comparison table: each measure averaged over the hidden layers.

    Keys: ``correlation``, ``effective_rank``, ``mean_activation``, ``near_zero`` and, with ablation
    (the default), ``single_unit_drop`` and ``drop_<k>pct`` per subset fraction. ``kwargs`` go to
    :func:`coadaptation`.
    """
    rows = [layer.as_row() for layer in coadaptation(model, loader, layers, **kwargs)]
    keys = [k for k, v in rows[0].items() if isinstance(v, float) and k not in ("accuracy", "single_unit_max_drop")]
    return {k: sum(row[k] for row in rows) / len(rows) for k in keys}
