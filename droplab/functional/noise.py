r"""Noise variants of dropout: Gaussian (multiplicative) dropout, alpha dropout, and input dropout.

All noise comes from droplab's counter-based generator (:mod:`droplab.rng`): Gaussian noise is a
pure function of ``(seed, step, replica, stream)`` and the element index, and backward regenerates it
instead of storing it (the ``droplab::gaussian_scale`` op); alpha dropout's keep mask is the same mask
:func:`droplab.functional.dropout` would draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._fx import fx_traceable
from ..kernels import variant_ops
from ..kernels.ops import masked_scale
from ..rng import drop_threshold
from .standard import (
    InputRankError,
    _check_counter_int,
    _check_input,
    _step_tensor,
    check_probability,
    draws_feature_mask,
    dropout,
    resolve_noise_shape,
    seed_tensor,
)

__all__ = [
    "SELU_ALPHA",
    "SELU_SCALE",
    "ALPHA_PRIME",
    "check_gaussian_probability",
    "alpha_dropout_coefficients",
    "gaussian_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "input_dropout",
]

# SELU's constants (Klambauer et al. 2017); alpha' = -lambda * alpha is SELU's negative saturation value
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
ALPHA_PRIME = -SELU_SCALE * SELU_ALPHA


def check_gaussian_probability(p: float) -> float:
    """``p`` for Gaussian dropout: the canonical rate check, and ``p < 1`` (the noise variance is p/(1-p))."""
    p = check_probability(p)
    if p == 1.0:
        raise ValueError("dropout probability has to be between 0 and 1, but got 1.0 (Gaussian dropout needs "
                         "p < 1: its noise variance p / (1 - p) is infinite at p = 1)")
    return p


# ----------------------------------------------------------------------------------------------------
# Gaussian dropout: y = x * (1 + sigma * z), z ~ N(0, 1) from droplab's generator (droplab::gaussian_scale)


def gaussian_dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
                     seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                     stream: int = 0, noise_shape: Sequence[int | None] | None = None) -> torch.Tensor:
    r"""Multiply ``input`` by Gaussian noise of mean 1 and variance :math:`p / (1 - p)`.

    Training: :math:`y = x \odot (1 + \sigma z)`, :math:`z \sim \mathcal{N}(0, 1)`,
    :math:`\sigma = \sqrt{p / (1 - p)}`: the same mean and variance as inverted dropout of rate ``p``
    (Srivastava et al. 2014, section 10), without zeros. Inference: :math:`y = x`.

    Args:
        input: floating-point tensor of any shape.
        p: the equivalent drop probability, ``0 <= p < 1``. Default: 0.5.
        training: apply the noise if ``True``, the identity otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        seed, step, replica, stream: the generator's counter, as :func:`droplab.functional.dropout`.
        noise_shape: Keras-style noise shape (``1`` shares one noise value along an axis). Default: None.

    Shape:
        Input :math:`(*)`, output :math:`(*)` of the same shape and dtype.

    Example::

        >>> y = gaussian_dropout(torch.ones(1000), p=0.5, seed=0)
        >>> abs(y.mean().item() - 1) < 0.1
        True

    .. warning::
        ``p = 1`` is rejected: the noise variance :math:`p/(1-p)` is infinite there. The noise is
        truncated at about 5.77 standard deviations (see :func:`droplab.rng.normal_from_words`).

    Reference: Srivastava et al., JMLR 2014; Wang & Manning, "Fast dropout training", ICML 2013.
    """
    _check_input(input, "gaussian_dropout")
    p = check_gaussian_probability(p)
    replica = _check_counter_int("replica", replica)
    stream = _check_counter_int("stream", stream)
    mask_shape = resolve_noise_shape(input.shape, noise_shape)
    if not training or p == 0.0:
        return input
    sigma = math.sqrt(p / (1.0 - p))
    out = variant_ops.gaussian_scale(input, seed_tensor(seed), _step_tensor(step), replica, stream, sigma,
                                     list(mask_shape))
    return input.copy_(out) if inplace else out


# ----------------------------------------------------------------------------------------------------
# alpha dropout


def alpha_dropout_coefficients(p: float) -> tuple[float, float]:
    r"""The affine correction ``(a, b)`` of alpha dropout at drop rate ``p`` (``0 <= p < 1``).

    :math:`a = \big((1 - p)(1 + p\,\alpha'^2)\big)^{-1/2}`, :math:`b = -a\,\alpha'\,p`, with
    :math:`\alpha' = -\lambda\alpha \approx -1.7581` (Klambauer et al. 2017, eq. 8, with keep rate
    :math:`q = 1 - p`): for input of mean 0 and variance 1 the output keeps mean 0 and variance 1.
    """
    p = check_probability(p)
    if p == 1.0:
        raise ValueError("alpha dropout's affine correction is undefined at p = 1")
    a = 1.0 / math.sqrt((1.0 - p) * (1.0 + p * ALPHA_PRIME**2))
    return a, -a * ALPHA_PRIME * p


def _alpha(input: torch.Tensor, p: float, training: bool, inplace: bool, seed, step, replica: int, stream: int,
           mask_shape: tuple[int, ...]) -> torch.Tensor:
    replica = _check_counter_int("replica", replica)
    stream = _check_counter_int("stream", stream)
    if not training or p == 0.0:
        return input
    if p == 1.0:
        # every unit dropped: no affine map restores variance 1; like torch, return zeros (mean 0 kept)
        return input.mul_(0.0) if inplace else input * 0.0
    a, b = alpha_dropout_coefficients(p)
    seed_t, step_t = seed_tensor(seed), _step_tensor(step)
    threshold = drop_threshold(p)
    # y = a * x on kept units; the dropped units' constant a*alpha' + b and the shift b are added from
    # the keep mask (regenerated, not stored: autograd sees only the masked_scale op)
    scaled = masked_scale(input, seed_t, step_t, replica, stream, threshold, a, list(mask_shape))
    keep = masked_scale(torch.ones(mask_shape, dtype=input.dtype, device=input.device), seed_t, step_t,
                        replica, stream, threshold, 1.0, list(mask_shape))
    out = scaled + (a * ALPHA_PRIME) * (1.0 - keep) + b
    return input.copy_(out) if inplace else out


@fx_traceable
def alpha_dropout(input: torch.Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                  seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                  stream: int = 0, noise_shape: Sequence[int | None] | None = None) -> torch.Tensor:
    r"""Alpha dropout for self-normalizing (SELU) networks: mean and variance are preserved.

    Training: dropped units are set to SELU's saturation value :math:`\alpha' = -\lambda\alpha`
    instead of 0, then an affine map restores the moments:
    :math:`y = a\,(x \odot m + \alpha' (1 - m)) + b` with :math:`m_i \sim \text{Bernoulli}(1 - p)`
    and ``(a, b)`` from :func:`alpha_dropout_coefficients`. For standard-normal input the output has
    mean 0 and variance 1. Inference: :math:`y = x`. The same formulas as ``torch.nn.AlphaDropout``.

    Args:
        input: floating-point tensor of any shape.
        p: drop probability, ``0 <= p <= 1``. Default: 0.5.
        training: apply the mask if ``True``, the identity otherwise. Default: False, as in
            ``torch.nn.functional.alpha_dropout`` (unlike :func:`droplab.functional.dropout`).
        inplace: write the result into ``input``. Default: False.
        seed, step, replica, stream, noise_shape: as :func:`droplab.functional.dropout`.

    Shape:
        Input :math:`(*)`, output :math:`(*)` of the same shape and dtype.

    Example::

        >>> y = alpha_dropout(torch.randn(10000), p=0.2, training=True, seed=0)
        >>> abs(y.mean().item()) < 0.05 and abs(y.var().item() - 1) < 0.05
        True

    .. warning::
        It preserves the *distribution's* mean and variance for normalized input, not each unit's
        expectation: :math:`\mathbb{E}[y_i] = a (1-p) x_i`. At ``p = 1`` no affine map can restore
        the variance; the output is all zeros, as in ``torch.nn.functional.alpha_dropout``.

    Reference: Klambauer, Unterthiner, Mayr, Hochreiter, "Self-Normalizing Neural Networks", NeurIPS 2017.
    """
    _check_input(input, "alpha_dropout")
    p = check_probability(p)
    mask_shape = resolve_noise_shape(input.shape, noise_shape)
    return _alpha(input, p, training, inplace, seed, step, replica, stream, mask_shape)


@fx_traceable
def feature_alpha_dropout(input: torch.Tensor, p: float = 0.5, training: bool = False, inplace: bool = False, *,
                          seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                          stream: int = 0) -> torch.Tensor:
    r"""Alpha dropout of whole channels: one mask value per :math:`(n, c)`, shared over the rest.

    The formulas of :func:`alpha_dropout` with the mask of ``torch.nn.FeatureAlphaDropout``;
    ``training`` defaults to False, as in ``torch.nn.functional.feature_alpha_dropout``.

    Shape:
        Input :math:`(N, C, *)` (at least 2 dimensions where a mask is drawn, else
        :class:`InputRankError`, a ``RuntimeError`` as in torch; in evaluation, at ``p = 0`` or
        ``p = 1``, input of any rank passes, as in torch), output the same.

    Reference: Klambauer et al., NeurIPS 2017.
    """
    _check_input(input, "feature_alpha_dropout")
    p = check_probability(p)
    if input.dim() < 2 and draws_feature_mask(input, p, training):  # any rank passes where no mask is drawn
        raise InputRankError(f"feature_alpha_dropout: Feature dropout requires at least 2 dimensions in the input "
                             f"(N, C, *), but got input of shape {tuple(input.shape)}")
    mask_shape = tuple(input.shape[:2]) + (1,) * max(input.dim() - 2, 0)
    return _alpha(input, p, training, inplace, seed, step, replica, stream, mask_shape)


# ----------------------------------------------------------------------------------------------------
# input dropout


def input_dropout(input: torch.Tensor, p: float = 0.2, training: bool = True, inplace: bool = False, *,
                  share_across_batch: bool = False, seed: int | torch.Tensor | None = None,
                  step: int | torch.Tensor = 0, replica: int = 0, stream: int = 0,
                  scaling: str = "inverted") -> torch.Tensor:
    r"""Drop raw input features: each example's features, or one feature mask for the whole batch.

    Training, inverted scaling: :math:`y_{n,f} = x_{n,f}\, m_{n,f} / q`; with
    ``share_across_batch=True`` the mask :math:`m_f` is drawn once per feature and shared by every
    example of the batch (dimension 0), so a call drops the same input features everywhere. Classic
    scaling leaves training unscaled and multiplies by :math:`q` at inference.

    Args:
        input: floating-point tensor :math:`(N, *)`, the batch first.
        p: drop probability. Default: 0.2 (Srivastava et al. recommend a keep rate of 0.8 on inputs).
        training, inplace, seed, step, replica, stream, scaling: as :func:`droplab.functional.dropout`.
        share_across_batch: one mask over the features, shared by all examples. Default: False.

    Shape:
        Input :math:`(N, *)`, output the same.

    Example::

        >>> y = input_dropout(torch.ones(4, 6), p=0.5, share_across_batch=True, seed=1)
        >>> bool((y == y[0]).all())
        True

    .. warning::
        Zero means "missing" only for inputs standardized to mean 0; standardize raw features first.

    Reference: Srivastava et al., JMLR 2014 (dropout on the input layer).
    """
    _check_input(input, "input_dropout")
    if input.dim() < 1:
        raise ValueError("input_dropout expects a batch (N, *), but got a 0-dimensional tensor")
    noise_shape = (1,) + (None,) * (input.dim() - 1) if share_across_batch else None
    return dropout(input, p, training, inplace, seed=seed, step=step, replica=replica, stream=stream,
                   noise_shape=noise_shape, scaling=scaling)
