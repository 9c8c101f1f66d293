r"""DropConnect: drop weights of a linear or convolutional layer instead of its outputs.

Training: :math:`y = x\,(W \odot M)^\top / q + b` with a fresh Bernoulli(:math:`q`) mask :math:`M`
over the weight at every step (inverted scaling), so :math:`\mathbb{E}[y] = x W^\top + b`, which is
what inference computes with the full weights. Classic scaling leaves training unscaled and uses
:math:`qW` at inference. The bias is kept unless ``drop_bias=True`` (its mask is an independent stream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .standard import _check_input, check_probability, check_scaling, dropout

__all__ = ["dropconnect_weights", "dropconnect_linear"]


def dropconnect_weights(weight: torch.Tensor, bias: torch.Tensor | None, p: float = 0.5, training: bool = True, *,
                        drop_bias: bool = False, seed: int | torch.Tensor | None = None,
                        step: int | torch.Tensor = 0, replica: int = 0, scaling: str = "inverted",
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight (and bias) a DropConnect layer uses: masked in training, the inference rule otherwise.

    The weight's mask is stream 0 and the bias's stream 1 of ``(seed, step, replica)``; the mask is an
    element-wise Bernoulli mask over the weight tensor (each connection independently).
    """
    p = check_probability(p)
    check_scaling(scaling)
    w = dropout(weight, p, training, seed=seed, step=step, replica=replica, stream=0, scaling=scaling)
    if bias is not None and drop_bias:
        bias = dropout(bias, p, training, seed=seed, step=step, replica=replica, stream=1, scaling=scaling)
    return w, bias


def dropconnect_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                       p: float = 0.5, training: bool = True, **kwargs) -> torch.Tensor:
    r"""``F.linear`` with DropConnect on ``weight``: :math:`y = x (W \odot M)^\top / q + b`.

    Keyword arguments as :func:`dropconnect_weights`.

    Shape:
        Input :math:`(*, H_{in})`, weight :math:`(H_{out}, H_{in})`; output :math:`(*, H_{out})`.

    Example::

        >>> x, w = torch.ones(2, 3), torch.ones(4, 3)
        >>> torch.equal(dropconnect_linear(x, w, p=0.5, training=False), x @ w.T)
        True

    Reference: Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using DropConnect",
    ICML 2013.
    """
    _check_input(input, "dropconnect_linear")
    w, b = dropconnect_weights(weight, bias, p, training, **kwargs)
    return F.linear(input, w, b)
