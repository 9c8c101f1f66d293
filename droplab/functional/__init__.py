r"""Dropout as pure functions: ``f(input, p, training, *, seed, step, noise_shape, scaling, ...)``.

Every stochastic function here draws its mask from droplab's counter-based generator
(:mod:`droplab.rng`): the mask is a pure function of ``(seed, step, replica, stream)`` and the
element's index in the mask, so it is reproducible on any device and thread count, and backward
regenerates it instead of storing it.

Conventions shared by all functions:

* ``p`` is the **drop** probability, ``q = 1 - p`` the keep probability.
* ``scaling="inverted"`` (PyTorch, Keras): training multiplies kept units by :math:`1/q`;
  inference is the identity. ``scaling="classic"`` (Srivastava et al. 2014, the weight-scaling
  rule): training does not rescale; inference multiplies by :math:`q`. Both give
  :math:`\mathbb{E}[\text{train output}] = \text{inference output}`.
* ``noise_shape`` (Keras): one entry per input dimension, ``None`` (or the dimension's size) for an
  independent mask value per index along that axis, ``1`` to share one mask value along it. For
  example ``(None, None, 1, 1)`` on ``(N, C, H, W)`` drops whole channels, ``(None, 1, None)`` on a
  batch-first sequence ``(N, T, F)`` keeps one mask per sequence over time, and ``(1, None)`` on
  ``(N, F)`` uses one mask for the whole batch.
* ``seed=None`` draws a fresh seed from torch's global generator (as ``torch.nn.functional`` does);
  pass an int (or a 0-dim int64 tensor) for explicit randomness.
"""

from __future__ import annotations

from .attention import attention_dropout, attention_weights, scaled_dot_product_attention
from .block import dropblock, dropblock1d, dropblock2d, dropblock3d, dropblock_mask
from .concrete import concrete_dropout, concrete_keep, concrete_regularization
from .dropconnect import dropconnect_gaussian, dropconnect_linear, dropconnect_moments, dropconnect_weights
from .droppath import drop_path, drop_path_rates
from .inference import inference_rule
from .noise import alpha_dropout, feature_alpha_dropout, gaussian_dropout, input_dropout
from .sequence import embedding_dropout, gru_recurrence, locked_dropout, lstm_recurrence, variational_mask
from .standard import (
    SCALINGS,
    ArgumentTypeError,
    InputDtypeError,
    InputRankError,
    check_noise_shape,
    check_probability,
    check_scaling,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    feature_dropout,
    fresh_key,
    new_seed,
    resolve_noise_shape,
    seed_tensor,
)

__all__ = [
    "SCALINGS",
    "InputDtypeError",
    "InputRankError",
    "ArgumentTypeError",
    "check_probability",
    "check_noise_shape",
    "check_scaling",
    "resolve_noise_shape",
    "new_seed",
    "fresh_key",
    "seed_tensor",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
    "attention_dropout",
    "attention_weights",
    "scaled_dot_product_attention",
    "gaussian_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "input_dropout",
    "concrete_dropout",
    "concrete_keep",
    "concrete_regularization",
    "dropblock",
    "dropblock1d",
    "dropblock2d",
    "dropblock3d",
    "dropblock_mask",
    "drop_path",
    "inference_rule",
    "drop_path_rates",
    "dropconnect_weights",
    "dropconnect_linear",
    "dropconnect_moments",
    "dropconnect_gaussian",
    "locked_dropout",
    "variational_mask",
    "embedding_dropout",
    "lstm_recurrence",
    "gru_recurrence",
]
