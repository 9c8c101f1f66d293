"""The inference rule of dropout, stated once: what every mask-and-rescale variant does outside training."""

from __future__ import annotations

import torch

__all__ = ["inference_rule"]


def inference_rule(input: torch.Tensor, p: float, scaling: str = "inverted", inplace: bool = False) -> torch.Tensor:
    r"""Dropout at inference: :math:`y = x` (inverted scaling, or ``p = 0``), :math:`y = (1 - p)\,x` (classic).

    Inverted scaling rescales kept units by :math:`1/(1-p)` during training, so inference uses every unit
    unchanged; classic scaling trains unscaled and multiplies by the keep rate here (the weight-scaling
    rule of Srivastava et al. 2014). Both match the training expectation.

    Args:
        input: the activation.
        p: drop probability, already validated.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        inplace: multiply ``input`` in place (classic scaling). Default: False.

    Example::

        >>> inference_rule(torch.ones(2), 0.25, "classic")
        tensor([0.7500, 0.7500])
    """
    if scaling == "inverted" or p == 0.0:
        return input
    return input.mul_(1.0 - p) if inplace else input * (1.0 - p)
