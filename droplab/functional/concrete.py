r"""Concrete dropout: a dropout rate learned by gradient descent through the concrete relaxation.

The Bernoulli keep mask is replaced by a continuous relaxation (the binary concrete distribution,
Maddison et al. 2017; Jang et al. 2017) whose sharpness is set by a temperature, so the loss is
differentiable in the rate. The uniform noise comes from droplab's counter-based generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as torch_F

from ..rng import random_uniform
from .dropout import _check_counter_int, _check_input, _seed_tensor, _step_tensor, resolve_noise_shape

__all__ = ["concrete_dropout", "concrete_keep", "concrete_regularization"]


@torch.library.custom_op("droplab::logistic_noise", mutates_args=())
def _logistic_noise(like: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                    shape: list[int]) -> torch.Tensor:
    # u = ((word >> 8) + 1/2) 2^-24 lies strictly inside (0, 1), so log(u / (1 - u)) is finite
    u = random_uniform(tuple(shape), int(seed), int(step), replica, stream, dtype=torch.float64, open_low=True,
                       device=like.device) - 2.0**-25
    return (torch.log(u) - torch.log1p(-u)).to(like.dtype)


@_logistic_noise.register_fake
def _(like, seed, step, replica, stream, shape):
    return like.new_empty(shape)


def concrete_keep(p_logit: torch.Tensor, shape: Sequence[int], *, temperature: float = 0.1,
                  seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                  stream: int = 0, dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""The relaxed keep mask :math:`1 - \sigma\big((\mathrm{logit}\,p + \log u - \log(1-u)) / t\big)`.

    :math:`u \sim U(0, 1)` from droplab's generator (:func:`droplab.rng.random_uniform`,
    shifted by :math:`2^{-25}` to stay inside the open interval). Differentiable in ``p_logit``.
    """
    dtype = dtype or p_logit.dtype
    like = torch.empty((), dtype=dtype, device=p_logit.device)
    noise = _logistic_noise(like, _seed_tensor(seed), _step_tensor(step), _check_counter_int("replica", replica),
                            _check_counter_int("stream", stream), list(shape))
    return 1.0 - torch.sigmoid((p_logit.to(dtype) + noise) / temperature)


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

    .. warning::
        Unlike the hard masks of the other ops, the relaxed mask depends on a learned parameter, so
        autograd keeps it (a float tensor of the noise shape) for the backward pass.

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
    keep = concrete_keep(p_logit.reshape(()), mask_shape, temperature=temperature, seed=seed, step=step,
                         replica=replica, stream=stream, dtype=input.dtype)
    keep_rate = torch.sigmoid(-p_logit.reshape(())).to(input.dtype)  # 1 - p, exact in the logit
    return input * keep / keep_rate


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
