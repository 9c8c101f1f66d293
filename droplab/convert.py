"""Find, swap and retune the dropout sites of a model.

* :func:`sites` lists every place a model applies dropout: droplab modules, torch.nn dropout
  modules, and the ``dropout=`` arguments of torch.nn's RNNs and MultiheadAttention.
* :func:`convert` swaps torch.nn dropout modules for droplab's (``to="droplab"``) and back
  (``to="torch"``), keeping the rate and train/eval state.
* :func:`set_rate` sets the rate of every site, or of sites whose name matches a pattern.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from torch import nn

from . import nn as dnn
from .functional import check_probability

__all__ = ["Site", "sites", "convert", "set_rate", "match_sites", "register_conversion", "CONVERSIONS"]


@dataclass(frozen=True)
class Site:
    """One dropout site of a model."""

    name: str  #: dotted module path ("" for the model itself)
    kind: str  #: class name, prefixed by "torch.nn." for torch's own modules
    p: float  #: drop probability (for a learned rate, its current value)
    scaling: str  #: "inverted", "classic", or "noise" for multiplicative-noise variants
    library: str  #: "droplab" or "torch"
    training: bool  #: whether the site is stochastic right now
    module: nn.Module

    def as_row(self) -> dict[str, object]:
        """The site as plain data (tables, JSON)."""
        return {"name": self.name or "<model>", "kind": self.kind, "p": round(self.p, 6),
                "scaling": self.scaling, "library": self.library, "training": self.training}


# torch.nn class -> (droplab factory from a torch module, torch factory from a droplab module)
CONVERSIONS: dict[type[nn.Module], tuple[type[nn.Module], Callable, Callable]] = {}


def register_conversion(torch_cls: type[nn.Module], droplab_cls: type[nn.Module],
                        to_droplab: Callable | None = None, to_torch: Callable | None = None) -> None:
    """Teach :func:`convert` a pair of classes (the default factories copy ``p`` and ``inplace``)."""
    to_droplab = to_droplab or (lambda m, seed: droplab_cls(m.p, m.inplace, seed=seed))
    to_torch = to_torch or (lambda m: torch_cls(m.p, getattr(m, "inplace", False)))
    CONVERSIONS[torch_cls] = (droplab_cls, to_droplab, to_torch)


for _torch_cls, _droplab_cls in ((nn.Dropout, dnn.Dropout), (nn.Dropout1d, dnn.Dropout1d),
                                 (nn.Dropout2d, dnn.Dropout2d), (nn.Dropout3d, dnn.Dropout3d),
                                 (nn.AlphaDropout, dnn.AlphaDropout),
                                 (nn.FeatureAlphaDropout, dnn.FeatureAlphaDropout)):
    register_conversion(_torch_cls, _droplab_cls)


def _torch_kind(module: nn.Module) -> str:
    return f"torch.nn.{type(module).__name__}"


def _site_of(name: str, module: nn.Module) -> Site | None:
    if isinstance(module, dnn.StochasticModule):
        scaling = getattr(module, "site_scaling", module.scaling)
        return Site(name, type(module).__name__, float(module.p), scaling, "droplab",
                    module.training and module.p > 0, module)
    if isinstance(module, nn.modules.dropout._DropoutNd):
        scaling = "noise" if isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout)) else "inverted"
        return Site(name, _torch_kind(module), float(module.p), scaling, "torch",
                    module.training and module.p > 0, module)
    if isinstance(module, nn.RNNBase) and module.dropout > 0:
        # torch applies it between stacked layers only: with one layer it is a no-op
        return Site(name, _torch_kind(module) + "(dropout=)", float(module.dropout), "inverted", "torch",
                    module.training and module.num_layers > 1, module)
    if isinstance(module, nn.MultiheadAttention) and module.dropout > 0:
        return Site(name, _torch_kind(module) + "(dropout=)", float(module.dropout), "inverted", "torch",
                    module.training, module)
    return None


def sites(model: nn.Module) -> list[Site]:
    """Every dropout site of ``model``, in module order.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), dnn.Dropout(0.5, seed=0))
        >>> [(s.name, s.kind, s.p) for s in sites(model)]
        [('1', 'torch.nn.Dropout', 0.2), ('2', 'Dropout', 0.5)]
    """
    found = []
    for name, module in model.named_modules():
        site = _site_of(name, module)
        if site is not None:
            found.append(site)
    return found


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if name == "":
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def convert(model: nn.Module, to: str = "droplab", *, seed: int | None = None) -> nn.Module:
    """Swap torch.nn dropout modules for droplab's (``to="droplab"``) or back (``to="torch"``).

    Rates and train/eval state are kept. Modules are replaced in place inside ``model``; the
    (possibly new) root is returned, so ``model = convert(model)`` also works when ``model`` itself
    is a dropout module. With ``seed`` given, the i-th converted site gets seed ``seed + i``;
    otherwise each draws its seed from torch's global generator.

    Converting back raises ``ValueError`` for a droplab module torch cannot express (classic
    scaling, a custom noise shape, or a variant without a torch.nn counterpart).
    """
    if to not in ("droplab", "torch"):
        raise ValueError(f"to must be one of ('droplab', 'torch'), but got {to!r}")
    targets = []
    for name, module in model.named_modules():
        if to == "droplab" and type(module) in CONVERSIONS:
            targets.append((name, module))
        elif to == "torch" and isinstance(module, dnn.StochasticModule):
            targets.append((name, module))
    reverse = {entry[0]: (torch_cls, entry[2]) for torch_cls, entry in CONVERSIONS.items()}
    for index, (name, module) in enumerate(targets):
        if to == "droplab":
            _, to_droplab, _ = CONVERSIONS[type(module)]
            new = to_droplab(module, None if seed is None else seed + index)
        else:
            if type(module) not in reverse:
                raise ValueError(f"cannot convert {name or '<model>'} ({type(module).__name__}) to torch.nn: "
                                 "torch.nn has no equivalent module")
            if module.scaling != "inverted" or getattr(module, "noise_shape", None) is not None:
                raise ValueError(f"cannot convert {name or '<model>'} to torch.nn: torch.nn dropout only "
                                 "supports inverted scaling with an element-wise mask, but it has "
                                 f"scaling={module.scaling!r}, noise_shape={getattr(module, 'noise_shape', None)}")
            new = reverse[type(module)][1](module)
        new.train(module.training)
        model = _replace(model, name, new)
    return model


def _matches(pattern: str, name: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".") or re.fullmatch(pattern, name) is not None


def _rate_targets(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, (dnn.StochasticModule, nn.modules.dropout._DropoutNd)):
            yield name, module


def match_sites(model: nn.Module, rules: list[tuple[str, object]], *,
                what: str = "rate") -> list[tuple[str, nn.Module, object]]:
    """``(name, module, value)`` for every rate-bearing site a rule's pattern matches (the last match wins).

    Patterns as :func:`set_rate`; ``"*"`` matches every site except those whose rate is learned
    (``rate_is_learned``, e.g. :class:`droplab.nn.ConcreteDropout`), which only a pattern naming them
    reaches. A pattern that matches no site raises ``ValueError``. Shared by :func:`set_rate` and
    :class:`droplab.DropoutScheduler`.
    """
    targets = list(_rate_targets(model))
    if not targets:
        raise ValueError(f"{what} found no dropout module in the model")
    assignments, used = [], set()
    for name, module in targets:
        learned = getattr(module, "rate_is_learned", False)
        chosen, found = None, False
        for pattern, value in rules:
            if pattern == "*":
                used.add(pattern)
                if learned:
                    continue
            elif not _matches(pattern, name):
                continue
            chosen, found = value, True
            used.add(pattern)
        if found:
            assignments.append((name, module, chosen))
    unused = [pattern for pattern, _ in rules if pattern not in used]
    if unused:
        known = ", ".join(name or "<model>" for name, _ in targets)
        raise ValueError(f"{what} pattern(s) {unused} match no dropout site; sites are: {known}")
    return assignments


def set_rate(model: nn.Module, rate: float | Mapping[str, float]) -> list[str]:
    """Set the drop rate of every dropout module, or per name pattern; returns the names changed.

    ``rate`` is a float for every site, or a mapping from pattern to rate: a module path, a prefix
    of one (``"encoder"`` covers ``"encoder.drop"``), a glob (``"blocks.*.drop"``) or a regular
    expression; the last matching pattern wins. A pattern that matches no site is an error, since
    a typo would otherwise silently leave the rate unchanged. The change takes effect at the next
    forward, compiled or not. Learned rates (:class:`droplab.nn.ConcreteDropout`) are left alone by
    a plain float or ``"*"``; a pattern naming such a site re-initializes its rate.

    Example (the sites of :class:`droplab.nn.TransformerBlock` by name)::

        set_rate(model, {"*attn_drop": 0.1, "*ffn_drop": 0.2, "*resid_drop": 0.05})
    """
    if isinstance(rate, Mapping):
        rules = [(pattern, check_probability(p)) for pattern, p in rate.items()]
    else:
        rules = [("*", check_probability(rate))]
    assignments = match_sites(model, rules)
    # every value is checked against its module's own rule before anything changes, so a typo or a
    # rate one variant rejects (Gaussian dropout at p = 1) leaves the model as it was
    for _, module, p in assignments:
        getattr(module, "check_rate", check_probability)(p)
    for _, module, p in assignments:
        module.p = p
    return [name for name, _, _ in assignments]
