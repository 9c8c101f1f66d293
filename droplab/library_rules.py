"""Conversion rules for other libraries' dropout classes, registered by name so droplab never imports them.

A rule is keyed by the class's qualified name (``type(m).__module__ + "." + type(m).__qualname__``)
and resolved when :func:`droplab.sites`, :func:`droplab.convert` or :func:`droplab.mc.predict` meets
a module of that class. Built in:

* timm ``DropPath(drop_prob, scale_by_keep)`` (``timm.layers.drop``, and the older
  ``timm.models.layers.drop``) -> :class:`droplab.nn.DropPath`: one mask value per example, kept
  examples scaled by ``1/(1-p)``. timm's ``scale_by_keep=False`` (unscaled training *and* unscaled
  inference) has no droplab equivalent with the same inference output, so such a module is left as
  it is (and sampled by torch's generator in MC).
* torchvision ``StochasticDepth(p, mode)`` (``torchvision.ops.stochastic_depth``): ``mode="row"`` ->
  :class:`droplab.nn.DropPath`; ``mode="batch"`` (one draw for the whole batch) ->
  :class:`WholeBatchDropPath`.
* transformers ``StableDropout(drop_prob)`` (DeBERTa-style, ``transformers.models.sew_d``) ->
  :class:`droplab.nn.Dropout` (same inverted element-wise dropout).

The function forms (timm's ``drop_path``, torchvision's ``stochastic_depth`` called directly in a
forward) draw with ``Tensor.bernoulli_(keep_prob)``, which is a functional call form of its own
(:mod:`droplab._calls`): found with an example input, drawn by droplab after ``convert``, sampled by MC.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from . import functional as F
from . import nn as dnn

__all__ = ["LibraryRule", "LIBRARY_RULES", "library_rule", "WholeBatchDropPath"]


@dataclass(frozen=True)
class LibraryRule:
    """How to read and convert one library class."""

    library: str  #: the top-level package, e.g. "timm"
    rate: Callable[[nn.Module], float]  #: the module's drop probability
    to_droplab: Callable[[nn.Module, int | None], nn.Module | None]  #: factory (module, seed)


LIBRARY_RULES: dict[str, LibraryRule] = {}


def library_rule(qualified_name: str, to_droplab: Callable, rate: Callable[[nn.Module], float]) -> None:
    """Register the rule for the class named ``qualified_name`` (``"package.module.Class"``)."""
    if not isinstance(qualified_name, str) or "." not in qualified_name:
        raise ValueError(f"qualified_name must be 'package.module.Class', but got {qualified_name!r}")
    LIBRARY_RULES[qualified_name] = LibraryRule(qualified_name.split(".")[0], rate, to_droplab)


class WholeBatchDropPath(dnn.DropPath):
    r"""Drop the residual branch of the whole batch at once with probability ``p`` (torchvision's ``mode="batch"``).

    One mask value shared by every example; kept batches are scaled by :math:`1/(1-p)`. Under MC
    sampling each stacked sample draws its own value. Arguments as :class:`droplab.nn.DropPath`.

    Example::

        >>> y = WholeBatchDropPath(0.5, seed=0)(torch.ones(4, 3))
        >>> bool((y == y[0, 0]).all())
        True
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return input
        seed, step = self._next_counter()
        return F.dropout(input, self.p, True, self.inplace, seed=seed, step=step, replica=self.replica,
                         noise_shape=(1,) * input.dim())


def _timm_drop_path(module: nn.Module, seed: int | None) -> nn.Module | None:
    if not getattr(module, "scale_by_keep", True):
        return None
    return dnn.DropPath(float(module.drop_prob), seed=seed)


def _torchvision_stochastic_depth(module: nn.Module, seed: int | None) -> nn.Module:
    if module.mode == "row":
        return dnn.DropPath(float(module.p), seed=seed)
    if module.mode == "batch":
        return WholeBatchDropPath(float(module.p), seed=seed)
    raise ValueError(f"torchvision StochasticDepth mode must be 'row' or 'batch', but got {module.mode!r}")


for _name in ("timm.layers.drop.DropPath", "timm.models.layers.drop.DropPath"):
    library_rule(_name, _timm_drop_path, lambda m: float(m.drop_prob))
library_rule("torchvision.ops.stochastic_depth.StochasticDepth", _torchvision_stochastic_depth, lambda m: float(m.p))
library_rule("transformers.models.sew_d.modeling_sew_d.StableDropout",
             lambda m, seed: dnn.Dropout(float(m.drop_prob), seed=seed), lambda m: float(m.drop_prob))
