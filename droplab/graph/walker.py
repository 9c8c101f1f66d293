"""The one walk over a model's modules: which are dropout sites, what they are, and every place each one sits.

:func:`droplab.sites`, :func:`droplab.convert`, :func:`droplab.set_rate`, ``droplab.mc``, ``lint``,
``deploy`` and the routing of functional sites all read a model's module sites here:

* :func:`module_site` says what one module is: a droplab module, a ``torch.nn`` dropout module, the
  ``dropout=`` of a ``torch.nn`` RNN or ``MultiheadAttention``, or a class a library rule or a
  registered conversion knows (:mod:`droplab.graph.library_rules`, :mod:`droplab.graph.conversions`);
* :func:`module_sites` walks the model, each module instance once;
* :func:`places` gives every path at which each instance is registered, so a module shared by two
  parents (``self.b = self.a``) is converted, folded or stripped at both.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from ..nn import StochasticModule
from .library_rules import LIBRARY_RULES, qualified_name

__all__ = ["Site", "RANDOM_OP", "is_dropout_module", "module_site", "module_sites", "places", "replace_module",
           "rate_modules"]

#: the ``kind`` of a random op droplab lists but does not convert (see :mod:`droplab.graph.forms`)
RANDOM_OP = "random op, not converted"


@dataclass(frozen=True)
class Site:
    """One dropout site of a model (or, with ``kind == RANDOM_OP``, a random op that is not one)."""

    name: str  #: dotted module path ("" for the model itself), or "<issuing module>#<i>" for a call
    kind: str  #: class name, prefixed by "torch.nn." for torch's own modules, or the call form
    p: float  #: drop probability (for a learned rate, its current value); NaN for a random op
    scaling: str  #: "inverted", "classic", or "noise" for multiplicative-noise variants
    library: str  #: "droplab", "torch", or the library of a class with a rule ("timm", ...)
    training: bool  #: whether the site is stochastic right now
    module: nn.Module  #: the dropout module, or for a functional site the module that issues the call
    note: str = ""  #: why a random op is not converted (empty for a dropout site)

    @property
    def is_dropout(self) -> bool:
        """False for a random op that droplab lists but does not treat as dropout."""
        return self.kind != RANDOM_OP

    def as_row(self) -> dict[str, object]:
        """The site as plain data (tables, JSON)."""
        row = {"name": self.name or "<model>", "kind": self.kind,
               "p": None if math.isnan(self.p) else round(self.p, 6), "scaling": self.scaling,
               "library": self.library, "training": self.training}
        if self.note:
            row["note"] = self.note
        return row


def is_dropout_module(module: nn.Module | None) -> bool:
    """A module that *is* dropout: droplab's, ``torch.nn``'s ``Dropout*``/``AlphaDropout``, or a library class
    with a rule (timm's ``DropPath``, ...). The dropout calls made inside it are that module site's own."""
    if module is None:
        return False
    if isinstance(module, (StochasticModule, nn.modules.dropout._DropoutNd)):
        return True
    return qualified_name(type(module)) in LIBRARY_RULES


def _torch_kind(module: nn.Module) -> str:
    return f"torch.nn.{type(module).__name__}"


def module_site(name: str, module: nn.Module) -> Site | None:
    """The :class:`Site` module ``module`` at path ``name`` is, or None when it applies no dropout itself."""
    if isinstance(module, StochasticModule):
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
    rule = LIBRARY_RULES.get(qualified_name(type(module)))
    if rule is not None:
        p = float(rule.rate(module))
        reason = rule.declines(module)
        return Site(name, f"{rule.library}.{type(module).__name__}", p, "inverted", rule.library,
                    module.training and p > 0, module, "" if reason is None else f"not converted: {reason}")
    return None


def module_sites(model: nn.Module) -> list[Site]:
    """The module sites of ``model`` in module order, each instance once (at its first path)."""
    found = []
    for name, module in model.named_modules():
        site = module_site(name, module)
        if site is not None:
            found.append(site)
    return found


def places(model: nn.Module) -> dict[int, list[str]]:
    """``id(module)`` to every dotted path at which that instance is registered, in module order."""
    found: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        paths = found.setdefault(id(module), [])
        if name not in paths:
            paths.append(name)
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at the dotted path ``name`` of ``model``; returns the root (``new`` when ``name == ""``)."""
    if name == "":
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


def rate_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, module)`` of every module whose rate droplab can set (droplab's and ``torch.nn``'s dropout)."""
    for name, module in model.named_modules():
        if isinstance(module, (StochasticModule, nn.modules.dropout._DropoutNd)):
            yield name, module
