"""Which class converts to which: ``torch.nn``'s dropout classes, classes users register, and library rules.

:func:`conversion_for` answers for one module instance; :func:`droplab.convert` applies it. A class is
registered by the class itself (``torch.nn.Dropout`` and the user's own classes, convertible both ways)
or by its qualified name (a library class, recognized without importing the library: see
:mod:`droplab.graph.library_rules`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .. import nn as dnn
from .library_rules import LIBRARY_RULES, library_rule, qualified_name

__all__ = ["CONVERSIONS", "register_conversion", "conversion_for", "declined", "torch_counterpart", "qualified_name"]

# torch.nn class -> (droplab class, droplab factory from a torch module, torch factory from a droplab module)
CONVERSIONS: dict[type[nn.Module], tuple[type[nn.Module], Callable, Callable]] = {}


def register_conversion(torch_cls: type[nn.Module] | str, droplab_cls: type[nn.Module],
                        to_droplab: Callable | None = None, to_torch: Callable | None = None, *,
                        rate: Callable[[nn.Module], float] | None = None) -> None:
    """Teach :func:`droplab.convert` a pair of classes (the default factories copy ``p`` and ``inplace``).

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
        >>> register_conversion(MyDrop, dl.nn.Dropout, lambda m, seed: dl.nn.Dropout(m.rate, seed=seed),
        ...                     lambda m: MyDrop(m.p))
        >>> type(dl.convert(nn.Sequential(MyDrop(0.3)))[0]).__name__
        'Dropout'
    """
    to_droplab = to_droplab or (lambda m, seed: droplab_cls(m.p, m.inplace, seed=seed))
    if isinstance(torch_cls, str):
        library_rule(torch_cls, to_droplab, rate or (lambda m: float(m.p)))
        return
    to_torch = to_torch or (lambda m: torch_cls(m.p, getattr(m, "inplace", False)))
    CONVERSIONS[torch_cls] = (droplab_cls, to_droplab, to_torch)


def conversion_for(module: nn.Module) -> Callable[[nn.Module, int | None], nn.Module | None] | None:
    """The factory ``(module, seed) -> droplab module`` that converts ``module``, or None.

    A library rule's factory may return None for a configuration droplab cannot express (see
    :mod:`droplab.graph.library_rules`); the module is then left as it is.
    """
    if isinstance(module, dnn.StochasticModule):
        return None
    if type(module) in CONVERSIONS:
        return CONVERSIONS[type(module)][1]
    rule = LIBRARY_RULES.get(qualified_name(type(module)))
    return None if rule is None or rule.declines(module) is not None else rule.to_droplab


def declined(module: nn.Module) -> str | None:
    """Why a library rule leaves ``module`` unconverted, or None (no rule, or it converts)."""
    rule = LIBRARY_RULES.get(qualified_name(type(module)))
    return None if rule is None else rule.declines(module)


def torch_counterpart(module: nn.Module) -> Callable[[nn.Module], nn.Module] | None:
    """The factory that turns droplab module ``module`` back into a torch one, or None when torch has none.

    The first class registered for a droplab class converts it back: a user's own class mapped onto
    ``dl.nn.Dropout`` must not turn every converted ``torch.nn.Dropout`` into that class.
    """
    for droplab_cls, _, to_torch in CONVERSIONS.values():
        if type(module) is droplab_cls:
            return to_torch
    return None


for _torch_cls, _droplab_cls in ((nn.Dropout, dnn.Dropout), (nn.Dropout1d, dnn.Dropout1d),
                                 (nn.Dropout2d, dnn.Dropout2d), (nn.Dropout3d, dnn.Dropout3d),
                                 (nn.AlphaDropout, dnn.AlphaDropout),
                                 (nn.FeatureAlphaDropout, dnn.FeatureAlphaDropout)):
    register_conversion(_torch_cls, _droplab_cls)
