"""``LockedDropout``: variational dropout for sequences, one mask per sequence shared over time."""

from __future__ import annotations

import torch

from .. import functional as F
from ._base import StochasticModule

__all__ = ["LockedDropout"]


class LockedDropout(StochasticModule):
    r"""Zero features with probability ``p`` using one mask per sequence, shared by all time steps.

    Training (inverted scaling): :math:`y_{t,n,f} = x_{t,n,f}\, m_{n,f} / (1-p)`; inference is the
    identity (classic scaling: unscaled in training, :math:`(1-p)x` at inference). Equivalent to
    :class:`~droplab.nn.Dropout` with noise shape ``(1, None, None)`` (``(None, 1, None)`` batch-first).

    Args:
        p: drop probability. Default: 0.5.
        batch_first: inputs are :math:`(N, T, *)` instead of :math:`(T, N, *)`. Default: False.
        inplace: operate in place. Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(T, N, *)` or, with ``batch_first``, :math:`(N, T, *)`; output the same.

    Example::

        >>> m = LockedDropout(0.3, batch_first=True, seed=0)
        >>> y = m(torch.ones(4, 10, 6))
        >>> bool((y == y[:, :1]).all())           # constant over time
        True

    Reference: Gal & Ghahramani, NeurIPS 2016; Merity, Keskar, Socher, ICLR 2018.
    """

    def __init__(self, p: float = 0.5, batch_first: bool = False, inplace: bool = False, *,
                 seed: int | None = None, scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.batch_first = bool(batch_first)
        self.inplace = bool(inplace)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("batch_first", self.batch_first), ("inplace", self.inplace)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(F.locked_dropout, input, inplace=self.inplace, batch_first=self.batch_first,
                                     scaling=self.scaling)
