r"""Concrete dropout: a dropout rate learned by gradient descent through the concrete relaxation.

The Bernoulli keep mask is replaced by a continuous relaxation (the binary concrete distribution,
Maddison et al. 2017; Jang et al. 2017) whose sharpness is set by a temperature, so the loss is
differentiable in the rate. The logistic noise is the logit transform of droplab's Philox words
(:func:`droplab.rng.logistic_from_words`) on the selected backend, and the ``droplab::concrete_scale``
op regenerates it in backward: autograd keeps the input and the logit, never the relaxed mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as torch_F

from ..kernels import variant_ops
from .standard import _check_counter_int, _check_input, _step_tensor, resolve_noise_shape, seed_tensor

__all__ = ["concrete_dropout", "concrete_keep", "concrete_regularization"]


def concrete_keep(p_logit: torch.Tensor, shape: Sequence[int], *, temperature: float = 0.1,
                  seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                  stream: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""The relaxed keep mask :math:`1 - \sigma\big((\mathrm{logit}\,p + L) / t\big)`, :math:`L` logistic noise.

    :math:`L = \log u - \log(1-u)` from droplab's generator (:func:`droplab.rng.logistic_from_words`:
    :math:`u` on the midpoints of ``2**23`` cells of ``(0, 1)``, so :math:`L` is finite). Differentiable
    in ``p_logit``; :func:`concrete_dropout` applies it without keeping it for backward.
    """
    dtype = dtype or p_logit.dtype
    like = torch.empty((), dtype=dtype, device=p_logit.device)
    noise = variant_ops.noise(like, seed_tensor(seed), _step_tensor(step), _check_counter_int("replica", replica),
                              _check_counter_int("stream", stream), "logistic", list(shape)).to(dtype)
    return torch.sigmoid(-(p_logit.to(dtype) + noise) / temperature)


def concrete_dropout(input: torch.Tensor, p_logit: torch.Tensor, training: bool = True, *,
                     temperature: float = 0.1, seed: int | torch.Tensor | None = None,
                     step: int | torch.Tensor = 0, replica: int = 0, stream: int = 0,
                     noise_shape: Sequence[int | None] | None = None) -> torch.Tensor:
    r"""Dropout with a relaxed (continuous) mask, differentiable in the rate's logit.

    Training: :math:`y = x \odot \tilde m / (1 - p)` with :math:`p = \sigma(\ell)` and
    :math:`\tilde m = 1 - \sigma\big((\ell + \log u - \log(1 - u)) / t\big)`, :math:`u \sim U(0,1)`:
    as :math:`t \to 0` the mask becomes Bernoulli(:math:`1-p`); at :math:`t = 0.1` it is nearly binary.
    Inference: :math:`y = x`.

    Args:
        input: floating-point tensor.
        p_logit: 0-dim tensor :math:`\ell = \log(p / (1 - p))`, usually a learned parameter.
        training: apply the relaxed mask if ``True``, the identity otherwise. Default: True.
        temperature: the relaxation's temperature :math:`t`. Default: 0.1 (Gal et al.).
        seed, step, replica, stream, noise_shape: as :func:`droplab.functional.dropout`.

    Shape:
        Input :math:`(*)`, output the same.

    The relaxed mask is regenerated in backward (``droplab::concrete_scale``): autograd keeps the input
    and the logit, not the mask.

    Reference: Gal, Hron, Kendall, "Concrete Dropout", NeurIPS 2017.
    """
    _check_input(input, "concrete_dropout")
    if not isinstance(p_logit, torch.Tensor) or p_logit.numel() != 1:
        raise TypeError(f"p_logit must be a one-element tensor, but got {type(p_logit).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, but got {temperature}")
    if not training:
        return input
    mask_shape = resolve_noise_shape(input.shape, noise_shape)
    return variant_ops.concrete_scale(input, p_logit.reshape(()), seed_tensor(seed), _step_tensor(step),
                                      _check_counter_int("replica", replica), _check_counter_int("stream", stream),
                                      float(temperature), list(mask_shape))


def concrete_regularization(p_logit: torch.Tensor, weight_square_sum: torch.Tensor | float, input_dim: int, *,
                            weight_regularizer: float = 1e-6, dropout_regularizer: float = 1e-5) -> torch.Tensor:
    r"""The KL term of concrete dropout for one layer, to add to the loss.

    :math:`R = \lambda_w \frac{\lVert W \rVert^2}{1 - p} + \lambda_p K \big(p \log p + (1-p) \log(1-p)\big)`
    with :math:`K` the layer's input dimension, :math:`\lambda_w` = ``weight_regularizer``
    (:math:`l^2 / N` for prior length-scale :math:`l` and :math:`N` training points) and
    :math:`\lambda_p` = ``dropout_regularizer`` (:math:`2 / N`; Gal et al. 2017, eq. 3 and their code).
    The second term is minus the entropy of Bernoulli(p): it pulls ``p`` towards 0.5; the first grows
    with ``p`` and pulls it down.
    """
    logit = p_logit.reshape(())
    log_p = -torch_F.softplus(-logit)  # log sigmoid(l), stable for large |l|
    log_q = -torch_F.softplus(logit)  # log (1 - sigmoid(l))
    p = torch.sigmoid(logit)
    weights = weight_regularizer * weight_square_sum / torch.exp(log_q)
    negative_entropy = p * log_p + (1.0 - p) * log_q
    return weights + dropout_regularizer * input_dim * negative_entropy
