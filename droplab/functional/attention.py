r"""Dropout on attention weights, and scaled dot-product attention that uses it.

Attention dropout zeroes entries of the attention matrix after the softmax (Vaswani et al. 2017,
as in BERT and ``torch.nn.MultiheadAttention``): a query then ignores some keys at random. The mask is
droplab's counter-based mask, so it is reproducible and regenerated in backward.
"""

from __future__ import annotations

import math

import torch

from .standard import _check_input, dropout

__all__ = ["attention_dropout", "attention_weights", "scaled_dot_product_attention"]


def attention_dropout(weights: torch.Tensor, p: float = 0.1, training: bool = True, inplace: bool = False, *,
                      seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                      stream: int = 0, share_across_heads: bool = False,
                      scaling: str = "inverted") -> torch.Tensor:
    r"""Zero attention weights with probability ``p`` (after the softmax).

    Inverted scaling: :math:`\tilde A = A \odot M / q`, so every row still sums to 1 in expectation;
    classic scaling: :math:`\tilde A = A \odot M` in training and :math:`q A` at inference.

    Args:
        weights: attention probabilities :math:`(N, H, L, S)` (or any :math:`(*, L, S)`).
        p: drop probability. Default: 0.1.
        training, inplace, seed, step, replica, stream, scaling: as :func:`droplab.functional.dropout`.
        share_across_heads: one mask per (example, query, key) shared by all heads; needs
            ``(N, H, L, S)`` input. Default: False.

    Shape:
        Input :math:`(*, L, S)`, output the same.

    Example::

        >>> a = torch.softmax(torch.randn(2, 4, 5, 5), dim=-1)
        >>> b = attention_dropout(a, p=0.1, seed=0)
        >>> b.shape
        torch.Size([2, 4, 5, 5])

    Reference: Vaswani et al., "Attention Is All You Need", NeurIPS 2017.
    """
    _check_input(weights, "attention_dropout")
    if weights.dim() < 2:
        raise ValueError(f"attention_dropout expects attention weights (*, L, S), but got shape {tuple(weights.shape)}")
    noise_shape = None
    if share_across_heads:
        if weights.dim() != 4:
            raise ValueError("attention_dropout with share_across_heads=True expects (N, H, L, S), but got shape "
                             f"{tuple(weights.shape)}")
        noise_shape = (None, 1, None, None)
    return dropout(weights, p, training, inplace, seed=seed, step=step, replica=replica, stream=stream,
                   noise_shape=noise_shape, scaling=scaling)


def attention_weights(query: torch.Tensor, key: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                      key_padding_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
    r"""Softmax attention probabilities :math:`\mathrm{softmax}(Q K^\top / \sqrt{d} + \text{mask})`.

    Args:
        query: :math:`(N, H, L, d)`. key: :math:`(N, H, S, d)`.
        attn_mask: boolean :math:`(L, S)` (``True`` = not allowed to attend, as torch.nn) or additive
            float mask broadcastable to :math:`(N, H, L, S)`. Default: None.
        key_padding_mask: boolean :math:`(N, S)`, ``True`` marks padding keys that get weight 0.
            Default: None.
        is_causal: forbid attending to later positions. Default: False.

    Returns:
        :math:`(N, H, L, S)`; a query whose every key is masked gets an all-zero row (not NaN).
    """
    scores = query @ key.transpose(-2, -1) / math.sqrt(query.shape[-1])
    blocked = None
    if is_causal:
        length, source = scores.shape[-2:]
        blocked = torch.ones(length, source, dtype=torch.bool, device=scores.device).triu(1)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            blocked = attn_mask if blocked is None else blocked | attn_mask
        else:
            scores = scores + attn_mask
    if key_padding_mask is not None:
        if key_padding_mask.dtype != torch.bool or key_padding_mask.dim() != 2:
            raise ValueError("key_padding_mask must be a boolean (N, S) tensor (True = padding), but got "
                             f"{key_padding_mask.dtype} of shape {tuple(key_padding_mask.shape)}")
        padding = key_padding_mask[:, None, None, :]
        blocked = padding if blocked is None else blocked | padding
    if blocked is not None:
        scores = scores.masked_fill(blocked, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    if blocked is not None:
        # a fully masked row is NaN after the softmax; such a query attends to nothing
        weights = weights.masked_fill(torch.isnan(weights), 0.0)
    return weights


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
                                 attn_mask: torch.Tensor | None = None,
                                 key_padding_mask: torch.Tensor | None = None, is_causal: bool = False,
                                 dropout_p: float = 0.0, training: bool = True,
                                 seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0,
                                 replica: int = 0, stream: int = 0, scaling: str = "inverted",
                                 need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Attention :math:`\mathrm{dropout}(\mathrm{softmax}(Q K^\top/\sqrt{d} + \text{mask}))\,V` on droplab's generator.

    Like ``torch.nn.functional.scaled_dot_product_attention``, but the dropout mask on the weights is
    droplab's (seeded, reproducible, regenerated in backward). Masks as :func:`attention_weights`.

    Args:
        query, key, value: :math:`(N, H, L, d)`, :math:`(N, H, S, d)`, :math:`(N, H, S, d_v)`.
        dropout_p: attention-dropout rate. Default: 0.0.
        need_weights: also return the (dropped) attention weights. Default: False.
        Others: as :func:`attention_weights` and :func:`attention_dropout`.

    Shape:
        Output :math:`(N, H, L, d_v)`.
    """
    weights = attention_weights(query, key, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                is_causal=is_causal)
    weights = attention_dropout(weights, dropout_p, training, seed=seed, step=step, replica=replica, stream=stream,
                                scaling=scaling)
    out = weights @ value
    return (out, weights) if need_weights else out
