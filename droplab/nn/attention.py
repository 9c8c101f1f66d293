"""Dropout on attention weights, as a module."""

from __future__ import annotations

import torch

from .. import functional as F
from ._base import StochasticModule

__all__ = ["AttentionDropout"]


class AttentionDropout(StochasticModule):
    r"""Zero attention weights (after the softmax) with probability ``p``.

    Inverted scaling multiplies kept weights by :math:`1/(1-p)`, so each row still sums to 1 in
    expectation; classic scaling leaves training unscaled and multiplies by :math:`1-p` at inference.
    Place it between the softmax and the product with the values (see
    :class:`droplab.nn.MultiheadSelfAttention`).

    Args:
        p: drop probability. Default: 0.1.
        inplace: operate in place. Default: False.
        share_across_heads: one mask per (example, query, key) shared by all heads of
            :math:`(N, H, L, S)` weights. Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: the same mask on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(*, L, S)` attention weights, output the same.

    Example::

        >>> drop = AttentionDropout(0.1, seed=0)
        >>> w = drop(torch.softmax(torch.randn(2, 4, 6, 6), dim=-1))

    Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """

    def __init__(self, p: float = 0.1, inplace: bool = False, *, share_across_heads: bool = False,
                 seed: int | None = None, scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.inplace = bool(inplace)
        self.share_across_heads = bool(share_across_heads)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace), ("share_across_heads", self.share_across_heads)]

    def forward(self, weights: torch.Tensor) -> torch.Tensor:
        return self._call_functional(F.attention_dropout, weights, inplace=self.inplace, scaling=self.scaling,
                                     share_across_heads=self.share_across_heads)
