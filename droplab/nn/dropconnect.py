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

    Wan et al.'s (2013) form is two options away (``nn.Linear`` only): ``per_example=True`` draws a mask
    per example instead of one per batch, and ``inference="gaussian"`` replaces the mean network at
    inference by their moment-matched sampling: each unit's pre-activation is a Gaussian with the mean and
    variance it has under the random mask (:func:`droplab.functional.dropconnect_moments`), and the output
    is ``activation`` averaged over ``samples`` draws of it
    (:func:`droplab.functional.dropconnect_gaussian`). The ``activation`` then belongs to the layer: it is
    applied in training too, :math:`a((W \odot M) v / q)`.

    Args:
        layer: the ``nn.Linear`` or ``nn.Conv1d/2d/3d`` to wrap.
        p: probability of dropping each weight. Default: 0.5.
        drop_bias: drop bias entries too (an independent mask). Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.
        per_example: a mask per example (row of the input) rather than one per batch. Default: False.
        inference: ``"mean"`` (the full-weight layer) or ``"gaussian"`` (Wan et al.'s sampling).
            Default: ``"mean"``.
        activation: an ``nn.Module`` applied to the layer's output (needed by ``"gaussian"``, which averages
            it over the samples). Default: None.
        samples: Gaussian samples per unit at inference. Default: 100.

    Shape:
        As the wrapped layer.

    Example::

        >>> m = DropConnect(torch.nn.Linear(16, 4), p=0.3, seed=0)
        >>> y = m(torch.randn(8, 16))                  # masked weights
        >>> torch.equal(m.eval()(torch.ones(1, 16)), m.layer(torch.ones(1, 16)))
        True
        >>> wan = DropConnect(torch.nn.Linear(16, 4), 0.5, per_example=True, inference="gaussian",
        ...                   activation=torch.nn.ReLU(), seed=0)
        >>> wan(torch.randn(8, 16)).shape, wan.eval()(torch.randn(8, 16)).shape
        (torch.Size([8, 4]), torch.Size([8, 4]))

    Reference: Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using DropConnect",
    ICML 2013.

    .. warning::
        By default one mask is drawn per step and shared by the whole batch (the usual, cheap form);
        ``per_example=True`` costs a masked copy of the weight per example in training. The Gaussian
        inference of a seeded module draws the same noise at every evaluation (step 0 of stream 2), so
        evaluation stays deterministic; an unseeded one draws a fresh key each time.
    """

    def __init__(self, layer: nn.Module, p: float = 0.5, *, drop_bias: bool = False, seed: int | None = None,
                 scaling: str = "inverted", share_across_ranks: bool = False, per_example: bool = False,
                 inference: str = "mean", activation: nn.Module | None = None, samples: int = 100) -> None:
        if not isinstance(layer, _LAYERS):
            raise TypeError("DropConnect wraps nn.Linear or nn.Conv1d/2d/3d, but got "
                            f"{type(layer).__name__}")
        if inference not in ("mean", "gaussian"):
            raise ValueError(f"inference must be 'mean' or 'gaussian', but got {inference!r}")
        if (per_example or inference == "gaussian") and not isinstance(layer, nn.Linear):
            raise ValueError("per_example masks and Gaussian inference are for nn.Linear layers, but got "
                             f"{type(layer).__name__}")
        if activation is not None and not isinstance(activation, nn.Module):
            raise TypeError(f"activation must be an nn.Module (e.g. nn.ReLU()) or None, but got "
                            f"{type(activation).__name__}")
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise ValueError(f"samples must be a positive int, but got {samples!r}")
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.layer = layer
        self.drop_bias = bool(drop_bias)
        self.per_example, self.inference, self.samples = bool(per_example), inference, samples
        self.activation = activation

    def _extra_fields(self) -> list[tuple[str, object]]:
        fields: list[tuple[str, object]] = [("drop_bias", self.drop_bias)]
        if self.per_example:
            fields.append(("per_example", True))
        if self.inference != "mean":
            fields += [("inference", self.inference), ("samples", self.samples)]
        return fields

    def _run(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.layer, nn.Linear):
            return torch.nn.functional.linear(input, weight, bias)
        return self.layer._conv_forward(input, weight, bias)

    def _activate(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.activation is None else self.activation(output)

    def _gaussian(self, input: torch.Tensor) -> torch.Tensor:
        seed = self.seed if self.seeded else None
        return F.dropconnect_gaussian(input, self.layer.weight, self.layer.bias, self.p, activation=self.activation,
                                      samples=self.samples, drop_bias=self.drop_bias, seed=seed, step=0,
                                      replica=self.replica, scaling=self.scaling)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(input, torch.Tensor) or not input.is_floating_point():
            raise TypeError(f"DropConnect expects a floating-point tensor input, but got "
                            f"{getattr(input, 'dtype', type(input).__name__)}")
        if self.p == 0.0:
            return self._activate(self.layer(input))
        if not self.training:
            if self.inference == "gaussian":
                return self._gaussian(input)
            if self.scaling == "inverted":
                return self._activate(self.layer(input))
            weight, bias = F.dropconnect_weights(self.layer.weight, self.layer.bias, self.p, False,
                                                 drop_bias=self.drop_bias, scaling=self.scaling)
            return self._activate(self._run(input, weight, bias))
        seed, step = self._next_counter()
        if self.per_example:
            return self._activate(F.dropconnect_linear(input, self.layer.weight, self.layer.bias, self.p, True,
                                                       per_example=True, drop_bias=self.drop_bias, seed=seed,
                                                       step=step, replica=self.replica, scaling=self.scaling))
        weight, bias = F.dropconnect_weights(self.layer.weight, self.layer.bias, self.p, True,
                                             drop_bias=self.drop_bias, seed=seed, step=step,
                                             replica=self.replica, scaling=self.scaling)
        return self._activate(self._run(input, weight, bias))
