"""Concrete dropout: a layer wrapper whose dropout rate is a learned parameter."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .. import functional as F
from ._base import StochasticModule

__all__ = ["ConcreteDropout", "total_regularization"]


class ConcreteDropout(StochasticModule):
    r"""Wrap ``layer`` with dropout on its input whose rate :math:`p = \sigma(\ell)` is learned.

    Training: ``layer(x * m / (1 - p))`` with the relaxed mask
    :math:`m = 1 - \sigma\big((\ell + \log u - \log(1-u)) / t\big)`, :math:`u \sim U(0,1)` from droplab's
    generator (see :func:`droplab.functional.concrete_dropout`), so the loss is differentiable in the
    logit :math:`\ell`. Add :meth:`regularization` (or :func:`total_regularization` over the model) to the
    loss: it is the KL term that keeps the rate from collapsing to 0. Inference: ``layer(x)``.

    Args:
        layer: the wrapped layer (``nn.Linear``, a convolution, ...).
        p: the initial rate, ``0 < p < 1``. Default: 0.1.
        temperature: the relaxation's temperature. Default: 0.1.
        weight_regularizer: :math:`\lambda_w = l^2/N` (prior length-scale :math:`l`, :math:`N` training
            points). Default: 1e-6.
        dropout_regularizer: :math:`\lambda_p = 2/N`. Default: 1e-5.
        input_dim: :math:`K`, the number of inputs the rate acts on; ``None`` takes the layer's
            ``in_features`` / ``in_channels``, else the last dimension of the first eager input (a
            ``torch.compile``'d module around a layer without either needs it given). Default: None.
        noise_shape: Keras-style mask shape, e.g. ``(None, None, 1, 1)`` to drop channels. Default: None.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        share_across_ranks: the same noise on every data-parallel rank. Default: False.

    Shape:
        The wrapped layer's.

    Example::

        >>> m = ConcreteDropout(nn.Linear(8, 4), p=0.2, seed=0)
        >>> loss = m(torch.randn(16, 8)).pow(2).mean() + m.regularization()
        >>> loss.backward()
        >>> m.p_logit.grad is not None
        True

    .. warning::
        ``p`` is learned: reading it gives the current :math:`\sigma(\ell)` as a float; assigning it
        (``m.p = 0.3``, :func:`droplab.set_rate` with a pattern naming this module) re-initializes the
        logit, and only rates strictly between 0 and 1 can be assigned. A plain ``set_rate(model, p)``
        and :class:`droplab.DropoutScheduler`'s model-wide schedule leave learned rates alone.

    Reference: Gal, Hron, Kendall, "Concrete Dropout", NeurIPS 2017.
    """

    rate_is_learned = True  # set_rate and DropoutScheduler skip it unless a pattern names it

    def __init__(self, layer: nn.Module, p: float = 0.1, *, temperature: float = 0.1,
                 weight_regularizer: float = 1e-6, dropout_regularizer: float = 1e-5, input_dim: int | None = None,
                 noise_shape: Sequence[int | None] | None = None, seed: int | None = None,
                 share_across_ranks: bool = False) -> None:
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, but got {type(layer).__name__}")
        for name, value in (("temperature", temperature), ("weight_regularizer", weight_regularizer),
                            ("dropout_regularizer", dropout_regularizer)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "temperature" and value == 0):
                raise ValueError(f"{name} must be a {'positive' if name == 'temperature' else 'non-negative'} "
                                 f"finite number, but got {value!r}")
        if input_dim is not None and (isinstance(input_dim, bool) or not isinstance(input_dim, int) or input_dim < 1):
            raise ValueError(f"input_dim must be a positive int or None, but got {input_dim!r}")
        super().__init__(p, seed=seed, share_across_ranks=share_across_ranks)
        self.layer = layer
        self.temperature = float(temperature)
        self.weight_regularizer = float(weight_regularizer)
        self.dropout_regularizer = float(dropout_regularizer)
        self.noise_shape = F.check_noise_shape(noise_shape)
        self.input_dim = input_dim or getattr(layer, "in_features", None) or getattr(layer, "in_channels", None)

    @property
    def p(self) -> float:
        return float(torch.sigmoid(self.p_logit.detach()))

    @staticmethod
    def check_rate(value: float) -> float:
        """The canonical rate check, and ``0 < p < 1`` (set_rate validates with it before assigning)."""
        value = F.check_probability(value)
        if value in (0.0, 1.0):
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {value} (a learned rate needs "
                             "0 < p < 1: its logit is infinite at 0 and 1)")
        return value

    @p.setter
    def p(self, value: float) -> None:
        value = self.check_rate(value)
        logit = math.log(value) - math.log1p(-value)
        if "p_logit" in self._parameters:
            with torch.no_grad():
                self.p_logit.fill_(logit)
        else:
            self.p_logit = nn.Parameter(torch.tensor(logit))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.input_dim is None and not torch.compiler.is_compiling():
            # eager only: a compiled forward that set it would be recompiled at its next call
            self.input_dim = int(input.shape[-1])
        if not self.training:
            F.concrete_dropout(input, self.p_logit, False)  # validates the input the same way
            return self.layer(input)
        seed, step = self._next_counter()
        dropped = F.concrete_dropout(input, self.p_logit, True, temperature=self.temperature, seed=seed, step=step,
                                     replica=self.replica, noise_shape=self.noise_shape)
        return self.layer(dropped)

    def regularization(self) -> torch.Tensor:
        r"""This layer's KL term :math:`\lambda_w \lVert\theta\rVert^2/(1-p) + \lambda_p K (p\log p + (1-p)\log(1-p))`.

        :math:`\theta` is every parameter of the wrapped layer (weights and biases).
        """
        if self.input_dim is None:
            raise RuntimeError("ConcreteDropout cannot size its regularizer yet: pass input_dim= or run one forward")
        square_sum = sum((w.pow(2).sum() for w in self.layer.parameters()), self.p_logit.new_zeros(()))
        return F.concrete_regularization(self.p_logit, square_sum, self.input_dim,
                                         weight_regularizer=self.weight_regularizer,
                                         dropout_regularizer=self.dropout_regularizer)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("temperature", self.temperature), ("weight_regularizer", self.weight_regularizer),
                ("dropout_regularizer", self.dropout_regularizer), ("input_dim", self.input_dim),
                ("noise_shape", self.noise_shape)]

    def _repr_fields(self):
        fields = super()._repr_fields()
        return [(k, round(v, 6) if k == "p" else v) for k, v in fields if k != "scaling"]


def total_regularization(model: nn.Module) -> torch.Tensor:
    """The sum of :meth:`ConcreteDropout.regularization` over every concrete-dropout layer of ``model``.

    Example::

        >>> model = nn.Sequential(ConcreteDropout(nn.Linear(4, 8), seed=0), nn.ReLU(),
        ...                       ConcreteDropout(nn.Linear(8, 1), seed=1))
        >>> loss = model(torch.randn(5, 4)).pow(2).mean() + total_regularization(model)
    """
    terms = [m.regularization() for m in model.modules() if isinstance(m, ConcreteDropout)]
    if not terms:
        raise ValueError("total_regularization found no ConcreteDropout layer in the model")
    return torch.stack(terms).sum()
