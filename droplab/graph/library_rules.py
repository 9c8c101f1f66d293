"""Conversion rules for other libraries' dropout classes, registered by name so droplab never imports them.

A rule is keyed by the class's qualified name (``type(m).__module__ + "." + type(m).__qualname__``)
and resolved when :func:`droplab.sites`, :func:`droplab.convert` or :func:`droplab.mc.predict` meets
a module of that class. A rule may decline a configuration droplab cannot express: its ``declines``
says why, the module stays as it is (and is sampled by torch's generator in MC). Built in:

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
* timm ``DropBlock2d`` (``timm.layers.drop``, and the older ``timm.models.layers.drop``) ->
  :class:`TimmDropBlock2d`, droplab's :class:`~droplab.nn.DropBlock2d` drawing the fraction timm's
  drops at each map size (:func:`timm_dropblock_rate`), with timm's ``drop_prob`` as ``p``,
  ``couple_channels`` as ``per_channel=False``, ``with_noise`` and ``inplace`` carried over, and the same
  normalization by the kept fraction. Declined (left as timm's, listed with the reason):
  ``scale_by_keep=False``, the old ``batchwise=True`` with ``fast=False`` (one mask for the whole batch),
  and even block sizes in the old API (whose masks do not even fit the map).

The function forms (timm's ``drop_path``, torchvision's ``stochastic_depth`` called directly in a
forward) draw with ``Tensor.bernoulli_(keep_prob)``, a keep mask that multiplies the activations:
a functional call form of its own (:mod:`droplab.graph.forms`), found with an example input, drawn by
droplab after ``convert``, sampled by MC.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import functional as F
from .. import nn as dnn

__all__ = ["LibraryRule", "LIBRARY_RULES", "library_rule", "qualified_name", "WholeBatchDropPath", "TimmDropBlock2d",
           "timm_dropblock_rate"]


def qualified_name(cls: type) -> str:
    """``cls.__module__ + "." + cls.__qualname__``: how rules name a class without importing its library."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _never(module: nn.Module) -> str | None:
    """A rule that converts every configuration of its class."""
    return None


@dataclass(frozen=True)
class LibraryRule:
    """How to read and convert one library class."""

    library: str  #: the top-level package, e.g. "timm"
    rate: Callable[[nn.Module], float]  #: the module's drop probability
    to_droplab: Callable[[nn.Module, int | None], nn.Module | None]  #: factory (module, seed); None: declined
    declines: Callable[[nn.Module], str | None] = _never  #: why a configuration is not converted (None: it is)


LIBRARY_RULES: dict[str, LibraryRule] = {}


def library_rule(qualified_name: str, to_droplab: Callable, rate: Callable[[nn.Module], float],
                 declines: Callable[[nn.Module], str | None] | None = None) -> None:
    """Register the rule for the class named ``qualified_name`` (``"package.module.Class"``).

    ``to_droplab(module, seed)`` builds the droplab module; ``rate(module)`` reads the drop probability;
    ``declines(module)`` returns why droplab cannot express a configuration (``to_droplab`` is then not
    called), or None.
    """
    if not isinstance(qualified_name, str) or "." not in qualified_name:
        raise ValueError(f"qualified_name must be 'package.module.Class', but got {qualified_name!r}")
    LIBRARY_RULES[qualified_name] = LibraryRule(qualified_name.split(".")[0], rate, to_droplab, declines or _never)


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
        """Keep or drop the whole batch (identity in eval mode or at ``p = 0``)."""
        if not self.training or self.p == 0.0:
            return input
        seed, step = self._next_counter()
        return F.dropout(input, self.p, True, self.inplace, seed=seed, step=step, replica=self.replica,
                         noise_shape=(1,) * input.dim())


def _timm_drop_path(module: nn.Module, seed: int | None) -> nn.Module | None:
    return dnn.DropPath(float(module.drop_prob), seed=seed)


def _timm_drop_path_declines(module: nn.Module) -> str | None:
    if not getattr(module, "scale_by_keep", True):
        return ("scale_by_keep=False leaves training unscaled and inference unchanged, which no droplab "
                "scaling reproduces")
    return None


def _torchvision_stochastic_depth(module: nn.Module, seed: int | None) -> nn.Module:
    if module.mode == "row":
        return dnn.DropPath(float(module.p), seed=seed)
    if module.mode == "batch":
        return WholeBatchDropPath(float(module.p), seed=seed)
    raise ValueError(f"torchvision StochasticDepth mode must be 'row' or 'batch', but got {module.mode!r}")


def _coverage(size: int, block: int, offset: int, valid: tuple[int, int]) -> torch.Tensor:
    """How many block centres cover each position ``i`` of an axis: the centres ``valid[0] <= c < valid[1]`` in
    the max-pool window of output ``i``, ``i + offset - block // 2 .. i + offset - block // 2 + block - 1``."""
    i = torch.arange(size, dtype=torch.float64)
    low = torch.clamp(i + offset - block // 2, min=valid[0])
    high = torch.clamp(i + offset - block // 2 + block - 1, max=valid[1] - 1)
    return torch.clamp(high - low + 1, min=0)


@functools.lru_cache(maxsize=256)
def timm_dropblock_rate(drop_prob: float, block_size: int, gamma_scale: float, height: int, width: int,
                        api: str = "current") -> float:
    r"""The expected fraction of an ``height x width`` map that timm's DropBlock drops.

    timm draws block centres with probability :math:`\gamma = s\,p\,HW / (k_h k_w (H-k_h+1)(W-k_w+1))`
    (``api="current"``: timm >= 1.0.23, ``k`` clipped to each side; ``"fast"``/``"valid"``: the older
    ``drop_block_fast_2d`` and ``drop_block_2d``, with the block size unclipped in the last factor and
    centres restricted to where a block fits for ``"valid"``) and expands each into a block, so a
    position covered by :math:`c_i` possible centres is dropped with probability :math:`1-(1-\gamma)^{c_i}`;
    the rate is the mean over positions. It depends on the map size, which is why a probe at one size
    cannot stand for another.

    Example::

        >>> round(timm_dropblock_rate(0.1, 5, 1.0, 32, 32), 4) != round(timm_dropblock_rate(0.1, 5, 1.0, 16, 16), 4)
        True
    """
    if api == "current":
        kh, kw = min(block_size, height), min(block_size, width)
        gamma = gamma_scale * drop_prob * height * width / (kh * kw) / ((height - kh + 1) * (width - kw + 1))
        rows = _coverage(height, kh, (kh + 1) % 2, (0, height))
        cols = _coverage(width, kw, (kw + 1) % 2, (0, width))
    else:
        k = min(block_size, height, width)
        denominator = (width - block_size + 1) * (height - block_size + 1)
        gamma = gamma_scale * drop_prob * height * width / k ** 2 / denominator if denominator > 0 else 1.0
        rows_valid = (k // 2, height - (k - 1) // 2) if api == "valid" else (0, height)
        cols_valid = (k // 2, width - (k - 1) // 2) if api == "valid" else (0, width)
        rows, cols = _coverage(height, k, 0, rows_valid), _coverage(width, k, 0, cols_valid)
    gamma = min(max(gamma, 0.0), 1.0)
    return float((1 - (1 - gamma) ** torch.outer(rows, cols)).mean())


class TimmDropBlock2d(dnn.DropBlock2d):
    r"""timm's ``DropBlock2d`` on droplab's generator: the rate timm drops at each map size, as droplab blocks.

    :class:`droplab.nn.DropBlock2d` with timm's arguments (``p`` is timm's ``drop_prob``), and one
    difference: at each forward the map's expected dropped fraction is the one timm's DropBlock has at
    that map size (:func:`timm_dropblock_rate`, which folds in ``gamma_scale``), not ``p`` itself. The
    blocks are drawn as droplab's (origins where a whole block fits); kept activations are scaled by
    ``numel / kept``, or, ``with_noise``, dropped blocks hold noise and kept ones are unscaled, as timm's.
    Inference is the identity. :func:`droplab.convert` builds it from a timm module.

    Args:
        p: timm's ``drop_prob``. Default: 0.1.
        block_size: timm's ``block_size`` (clipped to the map). Default: 7.
        gamma_scale: timm's ``gamma_scale``. Default: 1.0.
        api: which timm DropBlock law: ``"current"`` (timm >= 1.0.23), ``"fast"`` or ``"valid"`` (older
            ``fast=True``/``False``). Default: ``"current"``.
        **kwargs: as :class:`droplab.nn.DropBlock2d` (``with_noise``, ``inplace``, ``per_channel``, ``seed``, ...).

    Example::

        >>> m = TimmDropBlock2d(0.1, block_size=5, per_channel=False, seed=0)
        >>> y = m(torch.ones(2, 4, 32, 32))
        >>> bool(((y == 0) | (y > 1)).all())
        True
    """

    def __init__(self, p: float = 0.1, block_size: int = 7, gamma_scale: float = 1.0, *, api: str = "current",
                 **kwargs) -> None:
        if api not in ("current", "fast", "valid"):
            raise ValueError(f"api must be one of ('current', 'fast', 'valid'), but got {api!r}")
        super().__init__(p, block_size, **kwargs)
        self.gamma_scale, self.api = float(gamma_scale), api  # folded into the rate, not into p

    def _extra_fields(self) -> list[tuple[str, object]]:
        fields = [*super()._extra_fields()]
        if self.gamma_scale != 1.0:
            fields.append(("gamma_scale", self.gamma_scale))
        return fields + ([("api", self.api)] if self.api != "current" else [])

    def _dropblock(self, input: torch.Tensor, p: float, training: bool, *args, **kwargs) -> torch.Tensor:
        rate = timm_dropblock_rate(p, self.block_size, self.gamma_scale, input.shape[-2], input.shape[-1],
                                   self.api)
        return F.dropblock2d(input, rate, self.block_size, training, *args, **kwargs)


def _timm_api(module: nn.Module) -> str:
    if hasattr(module, "couple_channels") or not hasattr(module, "fast"):
        return "current"
    return "fast" if module.fast else "valid"


def _timm_drop_block_declines(module: nn.Module) -> str | None:
    if not getattr(module, "scale_by_keep", True):
        return ("scale_by_keep=False leaves training unscaled and inference unchanged, which no droplab scaling "
                "reproduces (classic scaling multiplies inference by 1 - p)")
    api = _timm_api(module)
    if api == "valid" and getattr(module, "batchwise", False):
        return "batchwise=True draws one mask for the whole batch, which droplab's DropBlock2d does not"
    if api != "current" and int(module.block_size) % 2 == 0:
        return "an even block_size in this timm version builds a mask larger than the map"
    return None


def _timm_drop_block(module: nn.Module, seed: int | None) -> nn.Module:
    per_channel = not getattr(module, "couple_channels", False)  # timm before 1.0.23: independent per channel
    return TimmDropBlock2d(float(module.drop_prob), int(module.block_size), float(module.gamma_scale),
                           api=_timm_api(module), per_channel=per_channel, with_noise=bool(module.with_noise),
                           inplace=bool(module.inplace), seed=seed)


for _name in ("timm.layers.drop.DropBlock2d", "timm.models.layers.drop.DropBlock2d"):
    library_rule(_name, _timm_drop_block, lambda m: float(m.drop_prob), _timm_drop_block_declines)
for _name in ("timm.layers.drop.DropPath", "timm.models.layers.drop.DropPath"):
    library_rule(_name, _timm_drop_path, lambda m: float(m.drop_prob), _timm_drop_path_declines)
library_rule("torchvision.ops.stochastic_depth.StochasticDepth", _torchvision_stochastic_depth, lambda m: float(m.p))
library_rule("transformers.models.sew_d.modeling_sew_d.StableDropout",
             lambda m, seed: dnn.Dropout(float(m.drop_prob), seed=seed), lambda m: float(m.drop_prob))
