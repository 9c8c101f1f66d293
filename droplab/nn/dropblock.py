"""``DropBlock1d/2d/3d``: drop contiguous regions of feature maps (Ghiasi et al. 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import functional as F
from ..functional.block import check_block_size
from ._base import StochasticModule

__all__ = ["DropBlock1d", "DropBlock2d", "DropBlock3d"]


class _DropBlockNd(StochasticModule):
    _spatial_dims = 2
    _functional = None

    def __init__(self, p: float = 0.1, block_size: int | Sequence[int] = 7, *, per_channel: bool = True,
                 seed: int | None = None, scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        sizes = check_block_size(block_size, self._spatial_dims)  # validated before any state is set
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.block_size = sizes[0] if isinstance(block_size, int) else sizes
        self.per_channel = bool(per_channel)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("block_size", self.block_size), ("per_channel", self.per_channel)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(self._dropblock, input, per_channel=self.per_channel, scaling=self.scaling)

    def _dropblock(self, input: torch.Tensor, p: float, training: bool, **kwargs) -> torch.Tensor:
        return type(self)._functional(input, p, self.block_size, training, **kwargs)


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
        per_channel: independent blocks per channel (``True``) or one pattern per example shared
            by its channels (``False``). Default: True.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(N, C, H, W)` or :math:`(C, H, W)`; output the same.

    Example::

        >>> m = DropBlock2d(0.1, block_size=5, seed=0)
        >>> y = m(torch.randn(8, 16, 24, 30))

    Reference: Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
    NeurIPS 2018.

    .. warning::
        Positions near a border lie in fewer possible blocks and are dropped less often than interior
        ones: ``p`` is the rate of the map as a whole. Many implementations ramp ``p`` up during
        training (see :mod:`droplab.schedules`).
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
