"""``DropConnect``: a Linear or Conv layer whose weights are dropped, freshly at every training step."""

from __future__ import annotations

import torch
from torch import nn

from .. import functional as F
from ._base import StochasticModule

__all__ = ["DropConnect"]

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class DropConnect(StochasticModule):
    r"""Wrap ``layer`` (``nn.Linear`` or ``nn.Conv1d/2d/3d``) so each weight is dropped with probability ``p``.

    Training (inverted scaling): the layer runs with :math:`W \odot M / (1-p)`, a new mask :math:`M`
    per step, so :math:`\mathbb{E}[y]` equals the full-weight layer, which is what inference runs
    (classic scaling: unscaled masked weights in training, :math:`(1-p) W` at inference). The bias is
    not dropped unless ``drop_bias=True``. The wrapped layer keeps its parameters (``layer.weight``),
    so optimizers, ``state_dict`` and weight decay see the ordinary layer.

    Args:
        layer: the ``nn.Linear`` or ``nn.Conv1d/2d/3d`` to wrap.
        p: probability of dropping each weight. Default: 0.5.
        drop_bias: drop bias entries too (an independent mask). Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        As the wrapped layer.

    Example::

        >>> m = DropConnect(torch.nn.Linear(16, 4), p=0.3, seed=0)
        >>> y = m(torch.randn(8, 16))                  # masked weights
        >>> torch.equal(m.eval()(torch.ones(1, 16)), m.layer(torch.ones(1, 16)))
        True

    Reference: Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using DropConnect",
    ICML 2013.

    .. warning::
        One mask is drawn per step and shared by the whole batch (the usual, cheap form); the paper's
        per-example masks cost a weight copy per example.
    """

    def __init__(self, layer: nn.Module, p: float = 0.5, *, drop_bias: bool = False, seed: int | None = None,
                 scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        if not isinstance(layer, _LAYERS):
            raise TypeError("DropConnect wraps nn.Linear or nn.Conv1d/2d/3d, but got "
                            f"{type(layer).__name__}")
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.layer = layer
        self.drop_bias = bool(drop_bias)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("drop_bias", self.drop_bias)]

    def _run(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return torch.nn.functional.linear(input, weight, bias)
        return self.layer._conv_forward(input, weight, bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or not input.is_floating_point():
            raise TypeError(f"DropConnect expects a floating-point tensor input, but got "
                            f"{getattr(input, 'dtype', type(input).__name__)}")
        if not self.training or self.p == 0.0:
            if self.scaling == "inverted" or self.p == 0.0:
                return self.layer(input)
            weight, bias = F.dropconnect_weights(self.layer.weight, self.layer.bias, self.p, False,
                                                 drop_bias=self.drop_bias, scaling=self.scaling)
            return self._run(input, weight, bias)
        seed, step = self._next_counter()
        weight, bias = F.dropconnect_weights(self.layer.weight, self.layer.bias, self.p, True,
                                             drop_bias=self.drop_bias, seed=seed, step=step,
                                             replica=self.replica, scaling=self.scaling)
        return self._run(input, weight, bias)
