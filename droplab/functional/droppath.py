r"""DropPath (stochastic depth): drop a residual branch for whole examples.

Training: :math:`y_n = x_n \cdot m_n / q` with one :math:`m_n \sim \text{Bernoulli}(q)` per example
(``noise_shape = (N, 1, ..., 1)``), so a dropped example skips the branch entirely and the block
reduces to its identity path. Meant for the *residual branch*: ``x + drop_path(branch(x))``.
"""

from __future__ import annotations

import torch

from .standard import _check_input, check_probability, dropout

__all__ = ["drop_path", "drop_path_rates"]


def drop_path(input: torch.Tensor, p: float = 0.1, training: bool = True, inplace: bool = False, *,
              scale_by_keep: bool = True, seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0,
              replica: int = 0, stream: int = 0) -> torch.Tensor:
    r"""Zero the whole of each example's ``input`` with probability ``p`` (stochastic depth).

    With ``scale_by_keep=True`` (inverted scaling) kept examples are multiplied by :math:`1/(1-p)` and
    inference is the identity; with ``scale_by_keep=False`` (classic scaling) training does not
    rescale and inference multiplies by :math:`1-p`, so the expectation matches either way.

    Args:
        input: floating-point tensor whose first axis is the batch.
        p: probability of dropping an example's branch. Default: 0.1.
        training: apply the mask if ``True``, the inference rule otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        scale_by_keep: inverted (``True``) or classic (``False``) scaling. Default: True.
        seed, step, replica, stream: the mask's counter, as in :func:`droplab.functional.dropout`.

    Shape:
        Input :math:`(N, *)`; output the same.

    Example::

        >>> rows = drop_path(torch.ones(4, 3, 2), p=0.5, seed=1).flatten(1)
        >>> bool(((rows == 0).all(1) | (rows == 2).all(1)).all())   # each example: all dropped or all kept
        True

    Reference: Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016.

    .. warning::
        Apply it to the residual branch only, never to the identity (skip) path: dropping the skip
        path removes the signal of every later block for that example.
    """
    _check_input(input, "drop_path")
    if input.dim() == 0:
        raise ValueError("drop_path expects an input of shape (N, *) with a batch axis, but got a 0-dim tensor")
    noise_shape = (None,) + (1,) * (input.dim() - 1)
    return dropout(input, p, training, inplace, seed=seed, step=step, replica=replica, stream=stream,
                   noise_shape=noise_shape, scaling="inverted" if scale_by_keep else "classic")


def drop_path_rates(depth: int, max_rate: float, *, min_rate: float = 0.0) -> list[float]:
    r"""Per-block DropPath rates rising linearly with depth: :math:`p_l = p_0 + (p_{max} - p_0)\frac{l}{L-1}`.

    The linear decay rule of Huang et al. 2016 as used by timm / DeiT / ConvNeXt (``linspace``): the
    first block gets ``min_rate``, the last ``max_rate``; a single block gets ``max_rate``.

    Args:
        depth: number of residual blocks ``L``, at least 1.
        max_rate: rate of the deepest block. ``0 <= max_rate <= 1``.
        min_rate: rate of the first block. Default: 0.0.

    Example::

        >>> drop_path_rates(5, 0.2)
        [0.0, 0.05, 0.1, 0.15000000000000002, 0.2]
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a positive int, but got {depth!r}")
    max_rate = check_probability(max_rate)
    min_rate = check_probability(min_rate)
    if depth == 1:
        return [max_rate]
    return [min_rate + (max_rate - min_rate) * i / (depth - 1) for i in range(depth)]
