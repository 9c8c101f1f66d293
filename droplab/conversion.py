"""Find, swap and retune the dropout sites of a model: droplab's public face on :mod:`droplab.graph`.

* :func:`sites` lists every place a model applies dropout: droplab modules, torch.nn dropout
  modules, library modules with a conversion rule (timm's ``DropPath`` and ``DropBlock2d``, torchvision's
  ``StochasticDepth``), the ``dropout=`` arguments of torch.nn's RNNs and MultiheadAttention, and,
  given an example input, the functional dropout calls a probe forward finds (:mod:`droplab.graph.forms`),
  and the random ops that are not dropout, marked as such.
* :func:`convert` swaps those modules for droplab's (``to="droplab"``) and back (``to="torch"``),
  keeping the rate, train/eval state and sharing; given an example input it also routes the functional
  calls to droplab's generator (:mod:`droplab.graph.routing`).
* :func:`set_rate` sets the rate of every site, or of sites whose name matches a pattern.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping

from torch import nn

from . import nn as dnn
from .functional import check_probability
from .graph.conversions import CONVERSIONS, conversion_for, register_conversion, torch_counterpart
from .graph.library_rules import LIBRARY_RULES
from .graph.probe import probe, probe_sites
from .graph.routing import attach_routers, detach_routers, mark_rate_set, routed_site
from .graph.walker import RANDOM_OP, Site, module_sites, places, rate_modules, replace_module

__all__ = ["Site", "sites", "convert", "set_rate", "match_sites", "register_conversion", "conversion_for",
           "replace_module", "probe_sites", "CONVERSIONS", "LIBRARY_RULES", "RANDOM_OP"]


def sites(model: nn.Module, example_input=None) -> list[Site]:
    """Every dropout site of ``model``: its modules in module order, then its functional calls.

    Functional dropout (``F.dropout``, ``scaled_dot_product_attention(dropout_p=...)``, ... see
    :mod:`droplab.graph.forms`) is found by one probe forward on ``example_input`` (a tensor, a tuple of
    arguments or a mapping of keyword arguments), with every module but normalization layers in
    training mode, under ``torch.no_grad``, with torch's generator and every buffer restored
    afterwards. Such a site is named ``"<issuing module>#<i>"`` for the ``i``-th call its module makes
    in a forward, and its ``module`` is the issuing module. After :func:`convert`, a routed call is the
    droplab module that draws it, listed once among the module sites. The probe also lists the random
    ops it met that are not dropout (``kind == "random op, not converted"``, ``p`` NaN, the reason in
    ``note``): a ``bernoulli_`` whose result is no keep mask, ``torch.rand``, ... Without
    ``example_input`` only module sites are listed.

    A module registered at several paths is one site, listed at its first path.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2), dl.nn.Dropout(0.5, seed=0))
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
    found = module_sites(model)
    if example_input is not None:
        result = probe(model, example_input)
        found += [Site(c.name, c.kind, c.p, c.scaling, "torch", c.training, c.module) for c in result.calls
                  if routed_site(c.module, c.position) is None]
        found += [Site(op.name, RANDOM_OP, math.nan, "-", "torch", True, op.module, f"{op.kind}: {op.reason}")
                  for op in result.random_ops]
    return found


def _seeded_droplab(model: nn.Module) -> list[str]:
    paths = places(model)
    return [paths[id(m)][0] or "<model>" for m in dict.fromkeys(model.modules())
            if isinstance(m, dnn.StochasticModule) and m.seeded]


def _to_droplab(model: nn.Module, seed: int | None, keep_seeds: bool) -> tuple[nn.Module, int]:
    """Convert every convertible module once (at each of its places) and seed the droplab sites; the root and
    how many seeds were used."""
    if seed is not None and not keep_seeds:
        seeded = _seeded_droplab(model)
        if seeded:
            raise ValueError(f"convert(seed={seed}) would overwrite the seed of droplab module(s) {seeded} already "
                             "in the model; pass keep_seeds=True to keep their seeds (the other sites are still "
                             "seeded), or convert without seed=")
    paths = places(model)
    used = 0
    for module in list(dict.fromkeys(model.modules())):
        site_seed = None if seed is None else seed + used
        if isinstance(module, dnn.StochasticModule):
            if seed is not None and not module.seeded:
                module.reseed(site_seed)
                used += 1
            continue
        factory = conversion_for(module)
        new = None if factory is None else factory(module, site_seed)
        if new is None:  # not convertible, or a rule that declines this configuration
            continue
        used += seed is not None
        new.train(module.training)
        for path in paths[id(module)]:
            model = replace_module(model, path, new)
    return model, used


def _to_torch(model: nn.Module) -> nn.Module:
    detach_routers(model)
    paths = places(model)
    for module in list(dict.fromkeys(model.modules())):
        if not isinstance(module, dnn.StochasticModule):
            continue
        name = paths[id(module)][0]
        factory = torch_counterpart(module)
        if factory is None:
            raise ValueError(f"cannot convert {name or '<model>'} ({type(module).__name__}) to torch.nn: "
                             "torch.nn has no equivalent module")
        if module.scaling != "inverted" or getattr(module, "noise_shape", None) is not None:
            raise ValueError(f"cannot convert {name or '<model>'} to torch.nn: torch.nn dropout only "
                             "supports inverted scaling with an element-wise mask, but it has "
                             f"scaling={module.scaling!r}, noise_shape={getattr(module, 'noise_shape', None)}")
        new = factory(module)
        new.train(module.training)
        for path in paths[id(module)]:
            model = replace_module(model, path, new)
    return model


def convert(model: nn.Module, to: str = "droplab", *, seed: int | None = None, example_input=None,
            keep_seeds: bool = False) -> nn.Module:
    """Swap dropout modules for droplab's (``to="droplab"``) or back (``to="torch"``).

    Converted: torch.nn's dropout classes, classes registered with :func:`register_conversion`, and
    the library rules (timm ``DropPath`` and ``DropBlock2d``, torchvision ``StochasticDepth`` in ``row``
    and ``batch`` mode, transformers' ``StableDropout``), recognized by class name without importing the
    library; a configuration a rule cannot express is left as it is (:func:`sites` says why). Rates and
    train/eval state are kept. A module registered at several places becomes one droplab module at all
    of them (and back). Modules are replaced in place inside ``model``; the (possibly new) root is
    returned, so ``model = convert(model)`` also works when ``model`` itself is a dropout module.

    With ``example_input`` (or, for a Hugging Face model, its ``dummy_inputs``), the functional
    dropout calls a probe forward finds (see :func:`sites`) are drawn by droplab too
    (:mod:`droplab.graph.routing`): each call goes, in training, to a droplab module attached to its
    issuing module: the dropout child it reads ``.p`` from (Hugging Face's ``self.dropout``, converted
    above), or a new child ``dropout_call<i>``. The call's own ``p`` and training flag decide at each
    call, unless the site's rate was set through droplab (:func:`set_rate`, a scheduler), which then wins.
    The module's counters draw the mask; backward regenerates it, as for any droplab site.

    Seeds: without ``seed`` every converted module is unseeded (as torch's: the ``state_dict`` is
    unchanged, masks follow ``torch.manual_seed``); with ``seed`` every site is seeded: the i-th site to
    seed in module order (a converted module, or a droplab module already in the model without a seed)
    gets ``seed + i``, then attached modules the next seeds (kept in their ``state_dict``). A droplab
    module that already has a seed raises ``ValueError``, since its seed would be overwritten, unless
    ``keep_seeds=True``, which keeps it.

    Converting back raises ``ValueError`` for a droplab module torch cannot express (classic
    scaling, a custom noise shape, or a variant without a torch.nn counterpart) and removes routing.
    """
    if to not in ("droplab", "torch"):
        raise ValueError(f"to must be one of ('droplab', 'torch'), but got {to!r}")
    if to == "torch":
        return _to_torch(model)
    if example_input is None:
        example_input = getattr(model, "dummy_inputs", None) if _is_hugging_face(model) else None
    result = probe(model, example_input) if example_input is not None else None
    model, used = _to_droplab(model, seed, keep_seeds)
    if result is not None and result.calls:
        attach_routers(model, result, example_input, None if seed is None else seed + used)
    return model


def _is_hugging_face(model: nn.Module) -> bool:
    return any(cls.__module__.startswith("transformers.") for cls in type(model).__mro__)


def _matches(pattern: str, name: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".") or re.fullmatch(pattern, name) is not None


def match_sites(model: nn.Module, rules: list[tuple[str, object]], *,
                what: str = "rate") -> list[tuple[str, nn.Module, object]]:
    """``(name, module, value)`` for every rate-bearing site a rule's pattern matches (the last match wins).

    Patterns as :func:`set_rate`; ``"*"`` matches every site except those whose rate is learned
    (``rate_is_learned``, e.g. :class:`droplab.nn.ConcreteDropout`), which only a pattern naming them
    reaches. A pattern that matches no site raises ``ValueError``. Shared by :func:`set_rate` and
    :class:`droplab.DropoutScheduler`.
    """
    targets = list(rate_modules(model))
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
    forward, compiled or not; for a functional call routed after :func:`convert`, the rate set here
    wins over the ``p`` the call passes from then on. Learned rates (:class:`droplab.nn.ConcreteDropout`)
    are left alone by a plain float or ``"*"``; a pattern naming such a site re-initializes its rate.

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
        mark_rate_set(module)  # a routed call's own p no longer decides
    return [name for name, _, _ in assignments]
