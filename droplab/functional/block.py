r"""DropBlock: drop contiguous square (cube) regions of feature maps instead of single units.

Algorithm (Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
NeurIPS 2018), on droplab's generator:

1. Block *origins* are drawn on the grid of positions where a whole block fits inside the map
   (``size - block + 1`` along each spatial axis), each dropped with probability :math:`\gamma`
   (one Philox word per origin, kept iff ``word >= floor(gamma * 2**32)``).
2. Every dropped origin zeroes the ``block_size`` region starting at it: what the max-pool of the
   torchvision/timm implementations computes. The reference backend runs that max-pool on the
   kernel's origin mask; the numba kernel writes the (sparse) dropped blocks by index, fused with the
   origin draw. Both come from the same Philox words (the ``droplab::dropblock_scale`` op), and
   backward regenerates the mask: nothing is saved.
3. Inverted scaling multiplies the output by ``numel / kept`` (the paper's normalization), counted
   over the whole mask; classic scaling leaves training unscaled and multiplies by :math:`1 - p` at
   inference.

:math:`\gamma` is solved exactly rather than taken from the paper's approximation
:math:`\gamma = \frac{p}{b^2}\frac{HW}{(H-b+1)(W-b+1)}`, which ignores overlapping blocks and
undershoots the rate for large ``p``: a position covered by :math:`c_i` possible origins is dropped
with probability :math:`1 - (1-\gamma)^{c_i}`, and :math:`\gamma` is chosen so that the mean over
positions equals ``p``. Every axis is handled on its own, so ``H != W`` and odd sizes are exact
(timm's early DropBlock built a wrong mask when ``H != W``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from ..kernels import variant_ops
from ..rng import drop_threshold
from .inference import inference_rule
from .standard import _check_counter_int, _check_input, _step_tensor, check_probability, check_scaling, seed_tensor

__all__ = ["dropblock", "dropblock1d", "dropblock2d", "dropblock3d", "dropblock_gamma", "dropblock_mask",
           "check_block_size"]


def check_block_size(block_size: int | Sequence[int], spatial_dims: int) -> tuple[int, ...]:
    """``block_size`` as one positive int per spatial axis, or a ``ValueError`` naming it."""
    if isinstance(block_size, int) and not isinstance(block_size, bool):
        sizes = (block_size,) * spatial_dims
    elif isinstance(block_size, Sequence) and len(block_size) == spatial_dims:
        sizes = tuple(block_size)
    else:
        raise ValueError(f"block_size must be a positive int or a sequence of {spatial_dims} positive ints, "
                         f"but got {block_size!r}")
    if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise ValueError(f"block_size must be a positive int or a sequence of {spatial_dims} positive ints, "
                         f"but got {block_size!r}")
    return sizes


def _coverage(size: int, block: int) -> torch.Tensor:
    """How many block origins cover each position of an axis of ``size`` (origins in ``0..size-block``)."""
    i = torch.arange(size, dtype=torch.float64)
    return torch.minimum(i, torch.tensor(size - block, dtype=torch.float64)) - torch.clamp(i - block + 1, min=0) + 1


def dropblock_gamma(p: float, spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    r"""Origin drop probability :math:`\gamma` whose expected dropped fraction of the map is exactly ``p``.

    ``block`` must already be clipped to ``spatial``. Solved by bisection on the monotone map
    :math:`\gamma \mapsto \operatorname{mean}_i\, 1 - (1-\gamma)^{c_i}` (60 halvings: float64 exact).
    """
    return _solve_gamma(p, tuple(spatial), tuple(block))


# a constant of the rate and sizes, so compiled graphs bake it in (no graph break on the solver's
# data-dependent torch.unique). What torch.compiler.assume_constant_result does, without importing
# torch._dynamo at `import droplab` (a second); tests/test_graph_breaks.py fails if torch changes it.
dropblock_gamma._dynamo_marked_constant = True


@functools.lru_cache(maxsize=256)
def _solve_gamma(p: float, spatial: tuple[int, ...], block: tuple[int, ...]) -> float:
    p = check_probability(p)
    if p in (0.0, 1.0):
        return p
    counts = torch.ones((), dtype=torch.float64)
    for size, b in zip(spatial, block):
        counts = counts.unsqueeze(-1) * _coverage(size, b)
    values, multiplicity = torch.unique(counts, return_counts=True)
    weights = multiplicity.to(torch.float64) / counts.numel()
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        rate = float((weights * (1.0 - (1.0 - mid) ** values)).sum())
        if rate < p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _block_and_threshold(shape: tuple[int, ...], p: float, block_size, spatial_dims: int) -> tuple[list[int], int]:
    """The block clipped to the map, and the origin drop threshold for rate ``p``."""
    spatial = shape[len(shape) - spatial_dims:]
    block = [min(b, s) for b, s in zip(check_block_size(block_size, spatial_dims), spatial)]
    return block, drop_threshold(dropblock_gamma(p, tuple(spatial), tuple(block)))


def dropblock_mask(shape: Sequence[int], p: float, block_size: int | Sequence[int], spatial_dims: int, *,
                   seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
                   stream: int = 0, per_channel: bool = True,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean keep mask (True = kept) DropBlock applies to an input of ``shape``.

    Its shape is ``shape`` with the channel axis (the one before the spatial axes) set to 1 unless
    ``per_channel``. Origins are indexed in the row-major order of the origin grid
    ``(*leading, C or 1, *(size - block + 1))``; the mask is the one ``droplab::dropblock_scale``
    regenerates in forward and backward.
    """
    p = check_probability(p)
    shape = tuple(shape)
    block, threshold = _block_and_threshold(shape, p, block_size, spatial_dims)
    return variant_ops.dropblock_keep(shape, seed_tensor(seed), _step_tensor(step),
                                      _check_counter_int("replica", replica), _check_counter_int("stream", stream),
                                      threshold, block, per_channel, device)


#: the noise of ``with_noise`` is drawn from this stream offset (mod 2**32) of the block mask's counters, far
#: from the small stream numbers sites use, so it is independent of every block mask
NOISE_STREAM_OFFSET = 2**31


def dropblock(input: torch.Tensor, p: float = 0.1, block_size: int | Sequence[int] = 7, training: bool = True,
              inplace: bool = False, *, spatial_dims: int, with_noise: bool = False,
              seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
              stream: int = 0, per_channel: bool = True, scaling: str = "inverted",
              op: str = "dropblock") -> torch.Tensor:
    r"""DropBlock over the last ``spatial_dims`` axes of ``input`` (see :func:`dropblock2d`)."""
    _check_input(input, op)
    p = check_probability(p)
    check_scaling(scaling)
    check_block_size(block_size, spatial_dims)
    if not training or p == 0.0:
        return inference_rule(input, p, scaling, inplace)
    block, threshold = _block_and_threshold(tuple(input.shape), p, block_size, spatial_dims)
    seed_t, step_t = seed_tensor(seed), _step_tensor(step)
    replica, stream = _check_counter_int("replica", replica), _check_counter_int("stream", stream)
    # one op: the origin keep mask from the kernel, grown into blocks and applied; backward regenerates it
    out = variant_ops.dropblock_scale(input, seed_t, step_t, replica, stream, threshold, block, bool(per_channel),
                                      scaling == "inverted" and not with_noise)
    if with_noise:  # timm's with_noise: dropped positions take N(0, 1) noise, kept ones are not rescaled
        noise = variant_ops.noise(input, seed_t, step_t, replica, (stream + NOISE_STREAM_OFFSET) % 2**32, "normal",
                                  list(input.shape)).to(input.dtype)
        out = out + (noise - variant_ops.dropblock_scale(noise, seed_t, step_t, replica, stream, threshold, block,
                                                         bool(per_channel), False))  # z (1 - M), exactly
    return input.copy_(out) if inplace else out


def _dropblock_nd(input, p, block_size, training, inplace, n, op, shape_doc, kwargs):
    _check_input(input, op)
    if input.dim() not in (n + 2, n + 1):
        raise ValueError(f"{op} expects {shape_doc}, but got input of shape {tuple(input.shape)}")
    return dropblock(input, p, block_size, training, inplace, spatial_dims=n, op=op, **kwargs)


def dropblock1d(input: torch.Tensor, p: float = 0.1, block_size: int = 7, training: bool = True,
                inplace: bool = False, **kwargs) -> torch.Tensor:
    r"""DropBlock on 1-D signals: drop runs of ``block_size`` consecutive positions.

    Arguments as :func:`dropblock2d`. Shape: input :math:`(N, C, L)` or :math:`(C, L)`; output the same.
    """
    return _dropblock_nd(input, p, block_size, training, inplace, 1, "dropblock1d", "(N, C, L) or (C, L)", kwargs)


def dropblock2d(input: torch.Tensor, p: float = 0.1, block_size: int | Sequence[int] = 7, training: bool = True,
                inplace: bool = False, **kwargs) -> torch.Tensor:
    r"""DropBlock on feature maps: zero ``block_size x block_size`` squares, rescale by the kept fraction.

    Training, inverted scaling: :math:`y = x \odot M \cdot \frac{|M|}{\sum M}`, where :math:`M` is the
    block mask; classic: :math:`y = x \odot M`; ``with_noise`` (timm's option): :math:`y = x \odot M +
    z \odot (1 - M)`, :math:`z \sim \mathcal{N}(0, 1)` per element, not rescaled. Inference: :math:`y = x`
    (inverted) or :math:`y = (1-p)\,x` (classic). The expected dropped fraction of every map is exactly ``p``.

    Args:
        input: floating-point tensor.
        p: fraction of positions to drop, ``0 <= p <= 1``. Default: 0.1.
        block_size: side of the square (an int) or ``(bh, bw)``; clipped to the map. Default: 7.
        training: apply the mask if ``True``, the inference rule otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        with_noise: fill the dropped blocks with standard normal noise instead of zeros and leave the
            kept positions unscaled, as timm's ``drop_block_2d(with_noise=True)``; the noise is
            droplab's (stream ``stream + 2**31`` of the same counters), regenerated, never stored.
            Default: False.
        seed, step, replica, stream: the mask's counter, as in :func:`droplab.functional.dropout`.
        per_channel: independent blocks per channel (``True``) or one block pattern per example
            shared by all channels (``False``, timm's ``couple_channels=True``). Default: True.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.

    Shape:
        Input :math:`(N, C, H, W)` or :math:`(C, H, W)`; output the same.

    Example::

        >>> x = torch.ones(2, 3, 10, 12)
        >>> y = dropblock2d(x, p=0.2, block_size=3, seed=0)
        >>> round(float(y.mean()), 6)    # the kept fraction is rescaled away
        1.0

    Reference: Ghiasi, Lin, Le, "DropBlock: A regularization method for convolutional networks",
    NeurIPS 2018.

    .. warning::
        Positions near the border are covered by fewer possible blocks, so they are dropped less often
        than interior ones; the rate ``p`` holds for the map as a whole, not for every position.

    .. warning::
        ``with_noise`` follows timm: kept positions are not rescaled and the noise has mean 0, so the
        expected training output is :math:`(1-p)\,x` while inverted inference returns :math:`x`. With
        ``scaling="classic"`` inference multiplies by :math:`1-p` and the two agree.
    """
    return _dropblock_nd(input, p, block_size, training, inplace, 2, "dropblock2d", "(N, C, H, W) or (C, H, W)",
                         kwargs)


def dropblock3d(input: torch.Tensor, p: float = 0.1, block_size: int | Sequence[int] = 7, training: bool = True,
                inplace: bool = False, **kwargs) -> torch.Tensor:
    r"""DropBlock on volumes: zero ``block_size`` cubes. Arguments as :func:`dropblock2d`.

    Shape: input :math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`; output the same.
    """
    return _dropblock_nd(input, p, block_size, training, inplace, 3, "dropblock3d",
                         "(N, C, D, H, W) or (C, D, H, W)", kwargs)
