r"""DropConnect: drop weights of a linear or convolutional layer instead of its outputs.

Training: :math:`y = x\,(W \odot M)^\top / q + b` with a fresh Bernoulli(:math:`q`) mask :math:`M`
over the weight at every step (inverted scaling), so :math:`\mathbb{E}[y] = x W^\top + b`, which is
what inference computes with the full weights. Classic scaling leaves training unscaled and uses
:math:`qW` at inference. The bias is kept unless ``drop_bias=True`` (its mask is an independent stream).

Wan et al. (2013) draw a mask *per example* (:func:`dropconnect_linear` with ``per_example=True``): row
:math:`n` of the batch sees its own :math:`M_n`, which costs a mask of ``(N, out, in)`` elements per step.
Their inference does not use the mean network: each unit's pre-activation under the random mask,
:math:`u = \sum_k M_{k} W_{k} v_k / q + b`, is moment-matched by a Gaussian
(:func:`dropconnect_moments`), and the activation is averaged over samples of it
(:func:`dropconnect_gaussian`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .standard import _check_input, check_probability, check_scaling, dropout, seed_tensor

__all__ = ["dropconnect_weights", "dropconnect_linear", "dropconnect_moments", "dropconnect_gaussian"]


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
                       p: float = 0.5, training: bool = True, *, per_example: bool = False,
                       **kwargs) -> torch.Tensor:
    r"""``F.linear`` with DropConnect on ``weight``: :math:`y = x (W \odot M)^\top / q + b`.

    With ``per_example=True`` every row :math:`n` of the input has its own mask (Wan et al. 2013):
    :math:`y_n = x_n (W \odot M_n)^\top / q + b \odot m_n / q`, computed as the masked products
    :math:`x_{nk} W_{jk}` summed over :math:`k`. The mask of ``(row, j, k)`` is element
    ``(row, j, k)`` of one ``(R, out, in)`` mask (stream 0), the bias's of ``(row, j)`` element of an
    ``(R, out)`` mask (stream 1), with ``R`` the input's rows (leading dimensions flattened). Inference
    is the same as without ``per_example`` (the full weights; see :func:`dropconnect_gaussian` for the
    paper's sampling).

    Keyword arguments as :func:`dropconnect_weights` (``seed``, ``step``, ``replica``, ``scaling``,
    ``drop_bias``).

    Shape:
        Input :math:`(*, H_{in})`, weight :math:`(H_{out}, H_{in})`; output :math:`(*, H_{out})`.

    Example::

        >>> x, w = torch.ones(2, 3), torch.ones(4, 3)
        >>> torch.equal(dropconnect_linear(x, w, p=0.5, training=False), x @ w.T)
        True
        >>> y = dropconnect_linear(torch.ones(2, 3), w, p=0.5, seed=0, per_example=True)
        >>> y.shape  # each row: the kept weights of its own mask, times 1/q = 2
        torch.Size([2, 4])

    Reference: Wan, Zeiler, Zhang, LeCun, Fergus, "Regularization of Neural Networks using DropConnect",
    ICML 2013.

    .. warning::
        ``per_example=True`` holds an ``(R, out, in)`` tensor of masked products in training (and its
        gradient in backward): memory and time grow with the batch times the weight's size.
    """
    _check_input(input, "dropconnect_linear")
    if not per_example or not training or check_probability(p) == 0.0:
        w, b = dropconnect_weights(weight, bias, p, training, **kwargs)
        return F.linear(input, w, b)
    return _per_example_linear(input, weight, bias, p, **kwargs)


def _per_example_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, p: float, *,
                        drop_bias: bool = False, seed: int | torch.Tensor | None = None,
                        step: int | torch.Tensor = 0, replica: int = 0, scaling: str = "inverted") -> torch.Tensor:
    check_scaling(scaling)
    if weight.dim() != 2 or input.shape[-1] != weight.shape[1]:
        raise ValueError(f"dropconnect_linear expects input (*, {weight.shape[-1]}) for a weight "
                         f"{tuple(weight.shape)}, but got input {tuple(input.shape)}")
    rows = input.reshape(-1, input.shape[-1])
    seed = seed_tensor(seed)  # one key for both masks (an unseeded call draws it once)
    products = dropout(rows.unsqueeze(-2) * weight, p, True, seed=seed, step=step, replica=replica, stream=0,
                       scaling=scaling)
    out = products.sum(-1)
    if bias is not None:
        if drop_bias:
            bias = dropout(bias.expand(len(rows), -1), p, True, seed=seed, step=step, replica=replica, stream=1,
                           scaling=scaling)
        out = out + bias
    return out.reshape(*input.shape[:-1], weight.shape[0])


def dropconnect_moments(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                        p: float = 0.5, *, drop_bias: bool = False,
                        scaling: str = "inverted") -> tuple[torch.Tensor, torch.Tensor]:
    r"""Mean and variance of a DropConnect unit's pre-activation over the weight mask (Wan et al. 2013).

    For :math:`u_j = \sum_k s\,M_{jk} W_{jk} v_k + b_j` with :math:`M_{jk} \sim \text{Bernoulli}(q)`
    independent and :math:`s = 1/q` (inverted) or :math:`1` (classic):

    .. math::
        \mathbb{E}[u_j] = s q \sum_k W_{jk} v_k + b_j, \qquad
        \operatorname{Var}[u_j] = s^2 q p \sum_k W_{jk}^2 v_k^2

    (inverted: :math:`W v + b` and :math:`\frac{p}{q} (W \odot W)(v \odot v)`; classic: Wan et al.'s
    :math:`qWv` and :math:`q(1-q)(W \odot W)(v \odot v)`). With ``drop_bias`` the bias is one more
    connection of input 1: it is scaled like the weights and adds :math:`s^2 q p\, b_j^2` to the variance.

    Example (one unit, two inputs, p = 1/2: mean 1 + 2 = 3, variance (1/2)/(1/2) * (1 + 4) = 5)::

        >>> mean, var = dropconnect_moments(torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]]), p=0.5)
        >>> mean.item(), var.item()
        (3.0, 5.0)
    """
    p = check_probability(p)
    check_scaling(scaling)
    q = 1.0 - p
    s = 1.0 / q if scaling == "inverted" and q > 0 else 1.0
    mean = s * q * F.linear(input, weight)
    var = s * s * q * p * F.linear(input * input, weight * weight)
    if bias is not None:
        if drop_bias:
            mean = mean + s * q * bias
            var = var + s * s * q * p * bias * bias
        else:
            mean = mean + bias
    return mean, var


def dropconnect_gaussian(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                         p: float = 0.5, *, activation=None, samples: int = 100, drop_bias: bool = False,
                         seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                         stream: int = 2, scaling: str = "inverted", chunk: int = 10) -> torch.Tensor:
    r"""Wan et al.'s DropConnect inference: the activation averaged over Gaussian samples of each unit.

    :math:`\hat r_j = \frac1Z \sum_{z=1}^{Z} a(\mu_j + \sigma_j \epsilon_{zj})`, with :math:`\mu, \sigma^2`
    from :func:`dropconnect_moments` and :math:`\epsilon` standard normal noise from droplab's generator
    (noise ``z`` of a chunk of ``chunk`` samples is drawn with step ``step * 2**20 + z // chunk`` of
    ``(seed, replica, stream)``, so the result is a pure function of them). Without an ``activation`` the
    average of the samples is the mean, which is returned exactly.

    Args:
        input: :math:`(*, H_{in})`.
        weight, bias: the layer's parameters.
        p: the drop probability the layer was trained with. Default: 0.5.
        activation: the unit's nonlinearity :math:`a` (a callable such as ``torch.relu``). Default: None.
        samples: :math:`Z`. Default: 100.
        drop_bias: the bias was dropped in training (see :func:`dropconnect_moments`). Default: False.
        seed, step, replica, stream: the noise's counters. Default: stream 2 (0 and 1 are the masks').
        scaling: the layer's scaling. Default: ``"inverted"``.
        chunk: samples drawn at once (bounds the memory at ``chunk`` outputs). Default: 10.

    Example::

        >>> x, w = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]])
        >>> dropconnect_gaussian(x, w, p=0.5).item()  # no activation: the mean, 3
        3.0
        >>> r = dropconnect_gaussian(x, w, p=0.5, activation=torch.relu, samples=4000, seed=0)
        >>> round(r.item(), 1)  # E[relu(N(3, 5))] = 3 Phi(3 / 5**0.5) + 5**0.5 phi(3 / 5**0.5) = 3.09...
        3.1
    """
    _check_input(input, "dropconnect_gaussian")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, but got {samples!r}")
    mean, var = dropconnect_moments(input, weight, bias, p, drop_bias=drop_bias, scaling=scaling)
    if activation is None:
        return mean
    from .noise import gaussian_dropout

    seed, std = seed_tensor(seed), var.sqrt()
    total = torch.zeros_like(mean)
    for first in range(0, samples, chunk):
        count = min(chunk, samples - first)
        ones = mean.new_ones((count, *mean.shape))
        # gaussian_dropout at p = 1/2 multiplies by 1 + N(0, 1): its noise, from droplab's generator
        noise = gaussian_dropout(ones, 0.5, seed=seed, step=int(step) * 2**20 + first // chunk, replica=replica,
                                 stream=stream) - 1.0
        total = total + activation(mean + std * noise).sum(0)
    return total / samples
