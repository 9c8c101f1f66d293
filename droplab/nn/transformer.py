"""A small reference transformer block with dropout where it belongs, and never on the identity path.

Dropout sites of :class:`TransformerBlock` (module names, for :func:`droplab.set_rate` and
:class:`droplab.DropoutScheduler` patterns):

* ``self_attn.attn_drop``: the attention weights, after the softmax (:class:`AttentionDropout`);
* ``attn_resid_drop``: the attention sublayer's output, before the residual add;
* ``ffn_drop``: the feed-forward hidden activation;
* ``ffn_resid_drop``: the feed-forward sublayer's output, before the residual add.

The residual (identity) path ``x`` is added unmasked: dropping it would drop the signal the block
is meant to refine, and a deep stack would lose the input altogether.
"""

from __future__ import annotations

import torch
import torch.nn.functional as torch_F
from torch import nn

from .. import functional as F
from .attention import AttentionDropout
from .dropout import Dropout

__all__ = ["MultiheadSelfAttention", "TransformerBlock"]

_ACTIVATIONS = {"relu": torch_F.relu, "gelu": torch_F.gelu}


def _seed_at(seed: int | None, offset: int) -> int | None:
    return None if seed is None else seed + offset


class MultiheadSelfAttention(nn.Module):
    r"""Multi-head self-attention whose attention weights pass through droplab's :class:`AttentionDropout`.

    :math:`\mathrm{MHSA}(x) = W_o\,\mathrm{concat}_h(\mathrm{drop}(\mathrm{softmax}(Q_h K_h^\top/\sqrt{d}))\,V_h)`
    with :math:`[Q, K, V] = x W_{in}^\top + b_{in}`. The projection layout matches
    ``torch.nn.MultiheadAttention`` (``in_proj`` stacks the query, key and value weights).

    Args:
        embed_dim: model width :math:`E`.
        num_heads: number of heads; must divide ``embed_dim``.
        dropout: attention-weight dropout rate. Default: 0.0.
        bias: add biases to the projections. Default: True.
        seed: seed of the attention dropout; ``None`` draws one. Default: None.
        share_across_heads: one attention-dropout mask for all heads. Default: False.

    Shape:
        Input :math:`(N, L, E)` (batch first); output :math:`(N, L, E)`.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, *,
                 seed: int | None = None, share_across_heads: bool = False) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"num_heads must be positive and divide embed_dim, but got embed_dim={embed_dim}, "
                             f"num_heads={num_heads}")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.attn_drop = AttentionDropout(dropout, seed=seed, share_across_heads=share_across_heads)

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False,
                need_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"MultiheadSelfAttention expects (N, L, {self.embed_dim}), but got input of shape "
                             f"{tuple(x.shape)}")
        n, length, _ = x.shape
        heads = self.in_proj(x).reshape(n, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = heads.unbind(0)  # each (N, H, L, d)
        weights = F.attention_weights(q, k, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                      is_causal=is_causal)
        weights = self.attn_drop(weights)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, self.embed_dim))
        return (out, weights) if need_weights else out


class TransformerBlock(nn.Module):
    r"""A transformer encoder block (pre- or post-norm) with per-site dropout rates.

    Pre-norm (``norm_first=True``):

    .. math::
        h = x + \mathrm{drop}_r(\mathrm{MHSA}(\mathrm{LN}_1(x))), \qquad
        y = h + \mathrm{drop}_r(W_2\,\mathrm{drop}_f(\phi(W_1 \mathrm{LN}_2(h))))

    Post-norm: :math:`h = \mathrm{LN}_1(x + \mathrm{drop}_r(\mathrm{MHSA}(x)))`,
    :math:`y = \mathrm{LN}_2(h + \mathrm{drop}_r(\mathrm{FFN}(h)))`. MHSA applies attention dropout
    :math:`\mathrm{drop}_a` to its weights. The identity path is never dropped. With every rate 0 it
    computes what ``torch.nn.TransformerEncoderLayer(batch_first=True)`` computes with the same weights.

    Args:
        d_model: model width.
        nhead: attention heads.
        dim_feedforward: hidden width of the feed-forward net. Default: ``4 * d_model``.
        dropout: default rate of every site. Default: 0.1.
        attention_dropout: rate on the attention weights. Default: ``dropout``.
        ffn_dropout: rate on the feed-forward hidden activation. Default: ``dropout``.
        residual_dropout: rate on each sublayer's output before the residual add. Default: ``dropout``.
        activation: ``"relu"`` or ``"gelu"``. Default: ``"relu"``.
        norm_first: pre-norm if ``True``, post-norm otherwise. Default: True.
        layer_norm_eps: LayerNorm epsilon. Default: 1e-5.
        bias: biases in the linear layers and LayerNorms. Default: True.
        seed: seeds of the four sites are ``seed .. seed + 3``; ``None`` draws each. Default: None.

    Shape:
        Input :math:`(N, L, E)` (batch first), ``key_padding_mask`` :math:`(N, L)` boolean
        (``True`` = padding); output :math:`(N, L, E)`.

    Example::

        >>> block = TransformerBlock(16, 4, dropout=0.1, attention_dropout=0.2, seed=0)
        >>> y = block(torch.randn(2, 5, 16), key_padding_mask=torch.tensor([[False] * 5, [False] * 3 + [True] * 2]))
        >>> y.shape
        torch.Size([2, 5, 16])

    .. warning::
        Padded positions still produce outputs (computed from the unpadded keys); mask them in the loss.

    Reference: Vaswani et al., NeurIPS 2017; Xiong et al., "On Layer Normalization in the Transformer
    Architecture", ICML 2020 (pre-norm).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int | None = None, dropout: float = 0.1, *,
                 attention_dropout: float | None = None, ffn_dropout: float | None = None,
                 residual_dropout: float | None = None, activation: str = "relu", norm_first: bool = True,
                 layer_norm_eps: float = 1e-5, bias: bool = True, seed: int | None = None) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(_ACTIVATIONS)}, but got {activation!r}")
        dim_feedforward = 4 * d_model if dim_feedforward is None else dim_feedforward
        rate = F.check_probability(dropout)

        def pick(value: float | None) -> float:
            return rate if value is None else F.check_probability(value)

        # rates validated before any submodule exists, so a bad rate builds nothing
        attn_p, ffn_p, resid_p = pick(attention_dropout), pick(ffn_dropout), pick(residual_dropout)
        self.activation, self.norm_first = activation, bool(norm_first)
        self.self_attn = MultiheadSelfAttention(d_model, nhead, attn_p, bias, seed=_seed_at(seed, 0))
        self.attn_resid_drop = Dropout(resid_p, seed=_seed_at(seed, 1))
        self.linear1 = nn.Linear(d_model, dim_feedforward, bias=bias)
        self.ffn_drop = Dropout(ffn_p, seed=_seed_at(seed, 2))
        self.linear2 = nn.Linear(dim_feedforward, d_model, bias=bias)
        self.ffn_resid_drop = Dropout(resid_p, seed=_seed_at(seed, 3))
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias)

    def set_rates(self, *, attention: float | None = None, ffn: float | None = None,
                  residual: float | None = None) -> None:
        """Set the rate of a group of sites (``None`` leaves a group unchanged); all validated first."""
        new = {name: F.check_probability(v) for name, v in
               (("attention", attention), ("ffn", ffn), ("residual", residual)) if v is not None}
        if "attention" in new:
            self.self_attn.attn_drop.p = new["attention"]
        if "ffn" in new:
            self.ffn_drop.p = new["ffn"]
        if "residual" in new:
            self.attn_resid_drop.p = self.ffn_resid_drop.p = new["residual"]

    def _attention(self, x: torch.Tensor, key_padding_mask, attn_mask, is_causal) -> torch.Tensor:
        return self.attn_resid_drop(self.self_attn(x, key_padding_mask, attn_mask, is_causal))

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.ffn_drop(_ACTIVATIONS[self.activation](self.linear1(x)))
        return self.ffn_resid_drop(self.linear2(hidden))

    def forward(self, x: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if self.norm_first:
            x = x + self._attention(self.norm1(x), key_padding_mask, attn_mask, is_causal)
            return x + self._feed_forward(self.norm2(x))
        x = self.norm1(x + self._attention(x, key_padding_mask, attn_mask, is_causal))
        return self.norm2(x + self._feed_forward(x))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}, norm_first={self.norm_first}"
