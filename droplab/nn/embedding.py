"""``EmbeddingDropout``: drop whole words (rows of the embedding matrix)."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ._base import StochasticModule

__all__ = ["EmbeddingDropout"]


class EmbeddingDropout(StochasticModule):
    r"""An embedding lookup that drops whole rows of the embedding matrix (words) with probability ``p``.

    Each vocabulary entry is dropped or kept for the whole batch at a step, so every occurrence of a
    dropped word reads zeros (Gal & Ghahramani's word dropout). Inverted scaling multiplies kept rows by
    :math:`1/(1-p)` and inference is a plain lookup; classic: unscaled rows, :math:`(1-p)` at inference.

    Args:
        embedding: the ``nn.Embedding`` whose weight and options (``padding_idx``, ``max_norm``, ...)
            are used; it stays a child module, so its weight is ``embedding.weight`` in ``state_dict``.
        p: probability of dropping a word. Default: 0.1.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Use :meth:`new` to build the embedding too: ``EmbeddingDropout.new(10_000, 256, p=0.1)``.

    Shape:
        Input :math:`(*)` int64 or int32 indices in ``[0, num_embeddings)``; output :math:`(*, D)`. Other
        indices raise ``nn.Embedding``'s ``IndexError`` in training as in eval mode.

    Example::

        >>> emb = EmbeddingDropout(torch.nn.Embedding(100, 8), p=0.1, seed=0)
        >>> emb(torch.randint(0, 100, (4, 12))).shape
        torch.Size([4, 12, 8])

    Reference: Gal & Ghahramani, NeurIPS 2016; Merity, Keskar, Socher, ICLR 2018.
    """

    def __init__(self, embedding: nn.Embedding, p: float = 0.1, *, seed: int | None = None,
                 scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"EmbeddingDropout wraps an nn.Embedding, but got {type(embedding).__name__}")
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.embedding = embedding

    @classmethod
    def new(cls, num_embeddings: int, embedding_dim: int, p: float = 0.1, *, seed: int | None = None,
            scaling: str = "inverted", **embedding_kwargs) -> EmbeddingDropout:
        """Build an ``nn.Embedding(num_embeddings, embedding_dim, **embedding_kwargs)`` and wrap it."""
        F.check_probability(p)  # before the embedding is allocated
        return cls(nn.Embedding(num_embeddings, embedding_dim, **embedding_kwargs), p, seed=seed, scaling=scaling)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("num_embeddings", self.embedding.num_embeddings), ("embedding_dim", self.embedding.embedding_dim)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        e = self.embedding
        options = dict(padding_idx=e.padding_idx, max_norm=e.max_norm, norm_type=e.norm_type,
                       scale_grad_by_freq=e.scale_grad_by_freq, sparse=e.sparse, scaling=self.scaling)
        return self._call_functional(self._lookup, input, **options)

    def _lookup(self, input: torch.Tensor, p: float, training: bool, **kwargs) -> torch.Tensor:
        return F.embedding_dropout(input, self.embedding.weight, p, training, **kwargs)
