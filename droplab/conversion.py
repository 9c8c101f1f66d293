"""Find, swap and retune the dropout sites of a model.

* :func:`sites` lists every place a model applies dropout: droplab modules, torch.nn dropout
  modules, library modules with a conversion rule (timm's ``DropPath``, torchvision's
  ``StochasticDepth``), the ``dropout=`` arguments of torch.nn's RNNs and MultiheadAttention, and,
  given an example input, the functional dropout calls a probe forward finds (:mod:`droplab._calls`).
* :func:`convert` swaps those modules for droplab's (``to="droplab"``) and back (``to="torch"``),
  keeping the rate and train/eval state; given an example input it also routes the functional calls
  to droplab's generator.
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
from .functional_sites import attach_routers, detach_routers, probe, probe_sites
from .library_rules import LIBRARY_RULES, library_rule

__all__ = ["Site", "sites", "convert", "set_rate", "match_sites", "register_conversion", "conversion_for",
           "replace_module", "probe_sites", "CONVERSIONS", "LIBRARY_RULES"]


@dataclass(frozen=True)
class Site:
    """One dropout site of a model."""

    name: str  #: dotted module path ("" for the model itself)
    kind: str  #: class name, prefixed by "torch.nn." for torch's own modules
    p: float  #: drop probability (for a learned rate, its current value)
    scaling: str  #: "inverted", "classic", or "noise" for multiplicative-noise variants
    library: str  #: "droplab" or "torch"
    training: bool  #: whether the site is stochastic right now
    module: nn.Module  #: the dropout module, or for a functional site the module that issues the call

    def as_row(self) -> dict[str, object]:
        """The site as plain data (tables, JSON)."""
        return {"name": self.name or "<model>", "kind": self.kind, "p": round(self.p, 6),
                "scaling": self.scaling, "library": self.library, "training": self.training}


# torch.nn class -> (droplab factory from a torch module, torch factory from a droplab module)
CONVERSIONS: dict[type[nn.Module], tuple[type[nn.Module], Callable, Callable]] = {}


def register_conversion(torch_cls: type[nn.Module] | str, droplab_cls: type[nn.Module],
                        to_droplab: Callable | None = None, to_torch: Callable | None = None, *,
                        rate: Callable[[nn.Module], float] | None = None) -> None:
    """Teach :func:`convert` a pair of classes (the default factories copy ``p`` and ``inplace``).

    ``torch_cls`` is a class, or the qualified name of one (``"timm.layers.drop.DropPath"``): a
    name is matched against ``type(m).__module__ + "." + type(m).__qualname__`` when a model is
    scanned, so registering a library's class never imports the library. ``rate`` reads the drop
    probability of such a module (default: its ``p``); ``to_torch`` is not used for named classes.

    Example::

        >>> class MyDrop(nn.Module):
        ...     def __init__(self, rate):
        ...         super().__init__()
        ...         self.rate = rate
        ...     def forward(self, x):
        ...         return nn.functional.dropout(x, self.rate, self.training)
        >>> register_conversion(MyDrop, dnn.Dropout, lambda m, seed: dnn.Dropout(m.rate, seed=seed),
        ...                     lambda m: MyDrop(m.p))
        >>> type(convert(nn.Sequential(MyDrop(0.3)))[0]).__name__
        'Dropout'
    """
    to_droplab = to_droplab or (lambda m, seed: droplab_cls(m.p, m.inplace, seed=seed))
    if isinstance(torch_cls, str):
        library_rule(torch_cls, to_droplab, rate or (lambda m: float(m.p)))
        return
    to_torch = to_torch or (lambda m: torch_cls(m.p, getattr(m, "inplace", False)))
    CONVERSIONS[torch_cls] = (droplab_cls, to_droplab, to_torch)


def conversion_for(module: nn.Module) -> Callable[[nn.Module, int | None], nn.Module] | None:
    """The factory ``(module, seed) -> droplab module`` that converts ``module``, or None."""
    if isinstance(module, dnn.StochasticModule):
        return None
    if type(module) in CONVERSIONS:
        return CONVERSIONS[type(module)][1]
    rule = LIBRARY_RULES.get(_qualified(type(module)))
    return None if rule is None else rule.to_droplab


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


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
    rule = LIBRARY_RULES.get(_qualified(type(module)))
    if rule is not None:
        p = rule.rate(module)
        return Site(name, f"{rule.library}.{type(module).__name__}", p, "inverted", rule.library,
                    module.training and p > 0, module)
    return None


def sites(model: nn.Module, example_input=None) -> list[Site]:
    """Every dropout site of ``model``: its modules in module order, then its functional calls.

    Functional dropout (``F.dropout``, ``scaled_dot_product_attention(dropout_p=...)``, ... see
    :mod:`droplab._calls`) is found by one probe forward on ``example_input`` (a tensor, a tuple of
    arguments or a mapping of keyword arguments), with every module but normalization layers in
    training mode, under ``torch.no_grad``, with torch's generator and every buffer restored
    afterwards. Such a site is named ``"<issuing module>#<i>"`` for the ``i``-th call its module makes
    in a forward, and its ``module`` is the issuing module. Without ``example_input`` only module sites
    are listed.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), dnn.Dropout(0.5, seed=0))
        >>> [(s.name, s.kind, s.p) for s in sites(model)]
        [('1', 'torch.nn.Dropout', 0.2), ('2', 'Dropout', 0.5)]
        >>> mha = nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True)
        >>> class SelfAttention(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.attn = mha
        ...     def forward(self, x):
        ...         return self.attn(x, x, x, need_weights=False)[0]
        >>> [(s.name, s.kind, s.p) for s in sites(SelfAttention(), torch.randn(2, 3, 8))]
        [('attn', 'torch.nn.MultiheadAttention(dropout=)', 0.1), ('attn#0', 'F.scaled_dot_product_attention', 0.1)]
    """
    found = []
    for name, module in model.named_modules():
        site = _site_of(name, module)
        if site is not None:
            found.append(site)
    if example_input is not None:
        found += [Site(c.name, c.kind, c.p, c.scaling, "torch", c.training, c.module)
                  for c in probe_sites(model, example_input)]
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the dotted path ``name`` of ``model``; returns the root (``new`` when ``name == ""``)."""
    if name == "":
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


_replace = replace_module


def convert(model: nn.Module, to: str = "droplab", *, seed: int | None = None, example_input=None) -> nn.Module:
    """Swap dropout modules for droplab's (``to="droplab"``) or back (``to="torch"``).

    Converted: torch.nn's dropout classes, classes registered with :func:`register_conversion`, and
    the library rules (timm ``DropPath``, torchvision ``StochasticDepth`` in ``row`` and ``batch``
    mode, transformers' ``StableDropout``), recognized by class name without importing the library.
    Rates and train/eval state are kept. Modules are replaced in place inside ``model``; the
    (possibly new) root is returned, so ``model = convert(model)`` also works when ``model`` itself
    is a dropout module.

    With ``example_input`` (or, for a Hugging Face model, its ``dummy_inputs``), the functional
    dropout calls a probe forward finds (see :func:`sites`) are drawn by droplab too: each issuing
    module gets a forward pre-hook that routes its calls, in training, to a droplab module attached
    to it: the dropout child it reads ``.p`` from (Hugging Face's ``self.dropout``, converted above),
    or a new child ``dropout_call<i>``. That module's rate and counters are the site's. Backward
    regenerates the masks, as for any droplab site.

    Seeds: without ``seed`` every converted module is unseeded (as torch's: the ``state_dict`` is
    unchanged, masks follow ``torch.manual_seed``); with ``seed`` the i-th converted or attached site
    gets its own seed ``seed + i`` (kept in its ``state_dict``).

    Converting back raises ``ValueError`` for a droplab module torch cannot express (classic
    scaling, a custom noise shape, or a variant without a torch.nn counterpart) and removes routing.
    """
    if to not in ("droplab", "torch"):
        raise ValueError(f"to must be one of ('droplab', 'torch'), but got {to!r}")
    if to == "droplab" and example_input is None:
        example_input = getattr(model, "dummy_inputs", None) if _is_hugging_face(model) else None
    calls, ran = probe(model, example_input) if to == "droplab" and example_input is not None else ([], set())
    targets = []
    for name, module in model.named_modules():
        if to == "droplab" and conversion_for(module) is not None:
            targets.append((name, module))
        elif to == "torch" and isinstance(module, dnn.StochasticModule):
            targets.append((name, module))
    reverse: dict = {}
    for torch_cls, entry in CONVERSIONS.items():
        # the first class registered for a droplab class converts it back: a user's own class mapped onto
        # dl.nn.Dropout must not turn every converted torch.nn.Dropout into that class
        reverse.setdefault(entry[0], (torch_cls, entry[2]))
    if to == "torch":
        detach_routers(model)
    for index, (name, module) in enumerate(targets):
        if to == "droplab":
            new = conversion_for(module)(module, None if seed is None else seed + index)
            if new is None:  # a rule that declines this configuration (see droplab.library_rules)
                continue
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
        model = replace_module(model, name, new)
    if calls:
        attach_routers(model, calls, ran, None if seed is None else seed + len(targets))
    return model


def _is_hugging_face(model: nn.Module) -> bool:
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


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
