"""``DropBlock1d/2d/3d``: drop contiguous regions of feature maps (Ghiasi et al. 2018).

``DropBlock2d`` takes timm's signature too (``timm.layers.DropBlock2d``), so timm code switches to it
by changing the import; how each of timm's arguments maps is listed in :class:`DropBlock2d`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from .. import functional as F
from ..functional.block import check_block_size
from ._base import StochasticModule

__all__ = ["DropBlock1d", "DropBlock2d", "DropBlock3d", "TIMM_DEPRECATED_ARGUMENTS"]

#: arguments timm's DropBlock2d accepted before 1.0.23 and now consumes and ignores
TIMM_DEPRECATED_ARGUMENTS = ("batchwise", "fast")


def _either(name: str, value, timm_name: str, timm_value, convert):
    """The droplab argument ``name`` or timm's ``timm_name`` (converted), whichever is given; both must agree."""
    if timm_value is None:
        return value
    converted = convert(timm_value)
    if value is not None and value != converted:
        raise ValueError(f"{name}={value!r} contradicts timm's {timm_name}={timm_value!r} (which means "
                         f"{name}={converted!r}); pass one of them")
    return converted


class _DropBlockNd(StochasticModule):
    _spatial_dims = 2
    _functional = None

    def __init__(self, p: float = 0.1, block_size: int | Sequence[int] = 7, gamma_scale: float = 1.0,
                 with_noise: bool = False, inplace: bool = False, couple_channels: bool | None = None,
                 scale_by_keep: bool | None = None, *, per_channel: bool | None = None, seed: int | None = None,
                 scaling: str | None = None, share_across_ranks: bool = False, drop_prob: float | None = None,
                 **kwargs) -> None:
        sizes = check_block_size(block_size, self._spatial_dims)  # validated before any state is set
        if drop_prob is not None:  # timm's name for the rate
            if p not in (0.1, drop_prob):
                raise ValueError(f"p={p!r} and timm's drop_prob={drop_prob!r} both give the rate; pass one of them")
            p = drop_prob
        if isinstance(gamma_scale, bool) or not isinstance(gamma_scale, (int, float)) \
                or not math.isfinite(gamma_scale) or gamma_scale < 0:
            raise ValueError(f"gamma_scale must be a non-negative finite number, but got {gamma_scale!r}")
        per_channel = _either("per_channel", per_channel, "couple_channels", couple_channels, lambda c: not c)
        scaling = _either("scaling", scaling, "scale_by_keep", scale_by_keep,
                          lambda keep: "inverted" if keep else "classic")
        self._warn_unknown(kwargs)
        super().__init__(p, seed=seed, scaling=scaling or "inverted", share_across_ranks=share_across_ranks)
        F.check_probability(self.p * gamma_scale, "the drawn rate p * gamma_scale")
        self.block_size = sizes[0] if isinstance(block_size, int) else sizes
        self.per_channel = True if per_channel is None else bool(per_channel)
        self.gamma_scale = float(gamma_scale)
        self.with_noise = bool(with_noise)
        self.inplace = bool(inplace)

    def _warn_unknown(self, kwargs: dict) -> None:
        # timm's rule: its removed arguments are consumed, anything else warned about, nothing raises
        for name in kwargs:
            if name in TIMM_DEPRECATED_ARGUMENTS:
                warnings.warn(f"{type(self).__name__}: {name!r} is deprecated and ignored (timm removed it in "
                              "1.0.23 and ignores it too)", DeprecationWarning, stacklevel=3)
            else:
                warnings.warn(f"{type(self).__name__}() got unexpected keyword argument '{name}'", stacklevel=3)

    # timm's name for the rate, read and written (a timm schedule that sets drop_prob keeps working)
    @property
    def drop_prob(self) -> float:
        return self.p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self.p = value

    @property
    def couple_channels(self) -> bool:
        """timm's name: one block pattern shared by an example's channels (``not per_channel``)."""
        return not self.per_channel

    @property
    def scale_by_keep(self) -> bool:
        """timm's name: kept positions rescaled in training (``scaling == "inverted"``)."""
        return self.scaling == "inverted"

    def _extra_fields(self) -> list[tuple[str, object]]:
        fields = [("block_size", self.block_size), ("per_channel", self.per_channel)]
        fields += [(name, getattr(self, name)) for name, default in
                   (("gamma_scale", 1.0), ("with_noise", False), ("inplace", False)) if getattr(self, name) != default]
        return fields

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(self._dropblock, input, self.inplace, per_channel=self.per_channel,
                                     scaling=self.scaling, with_noise=self.with_noise)

    def _dropblock(self, input: torch.Tensor, p: float, training: bool, *args, **kwargs) -> torch.Tensor:
        # timm's gamma_scale multiplies the rate its blocks are seeded with: the rate drawn is p * gamma_scale
        return type(self)._functional(input, p * self.gamma_scale, self.block_size, training, *args, **kwargs)


class DropBlock2d(_DropBlockNd):
    r"""Zero ``block_size x block_size`` squares of each feature map, a fraction ``p`` of it on average.

    Element-wise dropout barely regularizes convolutions (neighbouring activations carry the same
    information); dropping contiguous blocks does. Training (inverted scaling) rescales the output by
    ``numel / kept`` so the mean activation is preserved; inference is the identity. The block origins
    come from droplab's counter-based generator with :math:`\gamma` solved so the expected dropped
    fraction is exactly ``p`` for any ``H, W`` (square or not, odd or even) and block size.

    Args:
        p: fraction of each map to drop. Default: 0.1.
        block_size: side of the square, or ``(bh, bw)``; clipped to the map. Default: 7.
        gamma_scale: multiplies the rate the blocks are drawn at (``p * gamma_scale``, at most 1),
            as timm's ``gamma_scale`` multiplies its seed rate. Default: 1.0.
        with_noise: fill dropped blocks with standard normal noise and leave kept positions unscaled
            (timm's option; see :func:`droplab.functional.dropblock2d`). Default: False.
        inplace: operate in place. Default: False.
        couple_channels: timm's name for ``not per_channel``. Default: None (``per_channel`` decides).
        scale_by_keep: timm's name: ``True`` is ``scaling="inverted"``, ``False`` is ``"classic"``.
            Default: None (``scaling`` decides).
        per_channel: independent blocks per channel (``True``) or one pattern per example shared
            by its channels (``False``). Default: True.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.
        drop_prob: timm's name for ``p`` (keyword only). Default: None.

    timm's signature, ``DropBlock2d(drop_prob=0.1, block_size=7, gamma_scale=1.0, with_noise=False,
    inplace=False, couple_channels=True, scale_by_keep=True, **kwargs)``, is accepted as is, positionally
    or by keyword; ``drop_prob``, ``couple_channels`` and ``scale_by_keep`` are readable (and
    ``drop_prob`` writable) attributes too. Each argument maps to:

    ==================  ==========================================================================
    timm                droplab
    ==================  ==========================================================================
    ``drop_prob``       ``p``
    ``block_size``      ``block_size`` (clipped to the map, as timm clips it)
    ``gamma_scale``     ``gamma_scale``: the rate drawn is ``p * gamma_scale``
    ``with_noise``      ``with_noise`` (droplab's noise, regenerated in backward)
    ``inplace``         ``inplace``
    ``couple_channels`` ``per_channel = not couple_channels``
    ``scale_by_keep``   ``scaling = "inverted" if scale_by_keep else "classic"``
    ``batchwise``,      consumed and ignored with a ``DeprecationWarning`` (timm removed them in
    ``fast``            1.0.23 and ignores them silently)
    anything else       a ``UserWarning`` "DropBlock2d() got unexpected keyword argument 'name'",
                        timm's words; nothing raises
    ==================  ==========================================================================

    Shape:
        Input :math:`(N, C, H, W)` or :math:`(C, H, W)`; output the same.

    Example::

        >>> m = DropBlock2d(0.1, block_size=5, seed=0)
        >>> y = m(torch.randn(8, 16, 24, 30))
        >>> timm_style = DropBlock2d(drop_prob=0.1, block_size=5, couple_channels=True, inplace=True, seed=0)
        >>> timm_style.per_channel, timm_style.drop_prob
        (False, 0.1)

    Reference: Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
    NeurIPS 2018.

    .. warning::
        Positions near a border lie in fewer possible blocks and are dropped less often than interior
        ones: ``p`` is the rate of the map as a whole. Many implementations ramp ``p`` up during
        training (see :mod:`droplab.schedules`).

    .. warning::
        Where timm differs: its default shares blocks across channels (``couple_channels=True``),
        droplab's draws them per channel (``per_channel=True``) unless told; timm's seed rate
        approximates ``p`` (overlapping blocks make it drop less), droplab's is solved so the expected
        dropped fraction is exactly ``p``; ``scale_by_keep=False`` is classic scaling here, so inference
        multiplies by :math:`1 - p` where timm returns the input unscaled; unknown keywords only warn,
        as in timm, where droplab elsewhere rejects them.
    """

    _spatial_dims = 2
    _functional = staticmethod(F.dropblock2d)


class DropBlock1d(_DropBlockNd):
    r"""Zero runs of ``block_size`` consecutive positions of ``(N, C, L)`` or ``(C, L)`` signals.

    Arguments as :class:`DropBlock2d`.
    """

    _spatial_dims = 1
    _functional = staticmethod(F.dropblock1d)


class DropBlock3d(_DropBlockNd):
    r"""Zero ``block_size`` cubes of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` volumes.

    Arguments as :class:`DropBlock2d` (``block_size`` an int or ``(bd, bh, bw)``).
    """

    _spatial_dims = 3
    _functional = staticmethod(F.dropblock3d)
