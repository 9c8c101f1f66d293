"""Standard, channel and noise-shaped dropout: the core op every other variant builds on."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..kernels.ops import masked_scale
from ..rng import drop_threshold

__all__ = [
    "SCALINGS",
    "check_probability",
    "check_scaling",
    "resolve_noise_shape",
    "new_seed",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
]

SCALINGS = ("inverted", "classic")
_INT64_MIN = -(2**63)


def check_probability(p: float, name: str = "dropout probability") -> float:
    """Return ``p`` as a float, or raise the canonical ``ValueError`` unless ``0 <= p <= 1``."""
    if isinstance(p, torch.Tensor) and p.numel() == 1:
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, (int, float)) or math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} has to be between 0 and 1, but got {p}")
    return float(p)


def check_scaling(scaling: str) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, but got {scaling!r}")
    return scaling


def _check_input(input: torch.Tensor, op: str) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op} expects a torch.Tensor input, but got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(f"{op} expects a floating-point tensor (float16, bfloat16, float32, float64), "
                        f"but got {input.dtype}")


def new_seed() -> int:
    """A seed drawn from torch's global generator, so ``torch.manual_seed`` governs it."""
    return int(torch.empty((), dtype=torch.int64).random_().item())


def _seed_tensor(seed: int | torch.Tensor | None) -> torch.Tensor:
    if seed is None:
        seed = new_seed()
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"seed must be an int or a 0-dim int64 tensor, but got {seed.dtype} {tuple(seed.shape)}")
        return seed.reshape(())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, but got {type(seed).__name__}")
    s = seed % 2**64
    return torch.tensor(s - 2**64 if s >= 2**63 else s, dtype=torch.int64)


def _step_tensor(step: int | torch.Tensor) -> torch.Tensor:
    if isinstance(step, torch.Tensor):
        if step.dtype != torch.int64 or step.numel() != 1:
            raise TypeError(f"step must be an int or a 0-dim int64 tensor, but got {step.dtype} {tuple(step.shape)}")
        return step.reshape(())
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, but got {step!r}")
    return torch.tensor(step, dtype=torch.int64)


def _check_counter_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, but got {value!r}")
    return value


def resolve_noise_shape(shape: Sequence[int], noise_shape: Sequence[int | None] | None) -> tuple[int, ...]:
    """The mask shape for an input of ``shape``: ``None`` entries take the input's size.

    Raises ``ValueError`` when the lengths differ or an entry is neither 1, ``None`` nor the size.
    """
    shape = tuple(shape)
    if noise_shape is None:
        return shape
    noise_shape = tuple(noise_shape)
    if len(noise_shape) != len(shape):
        raise ValueError(f"noise_shape must have one entry per input dimension ({len(shape)}), "
                         f"but got {noise_shape} for input shape {shape}")
    resolved = []
    for axis, (size, entry) in enumerate(zip(shape, noise_shape)):
        if entry is None or entry == -1:
            resolved.append(size)
        elif isinstance(entry, int) and not isinstance(entry, bool) and entry in (1, size):
            resolved.append(entry)
        else:
            raise ValueError(f"noise_shape entries must be None, 1 or the input's size; axis {axis} has size "
                             f"{size} but noise_shape gives {entry!r}")
    return tuple(resolved)


def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
            stream: int = 0, noise_shape: Sequence[int | None] | None = None,
            scaling: str = "inverted") -> torch.Tensor:
    r"""Randomly zero elements of ``input`` with probability ``p`` (droplab's generator).

    Training, inverted scaling: :math:`y = x \odot m / q` with :math:`m_i \sim \text{Bernoulli}(q)`,
    :math:`q = 1 - p`; classic scaling: :math:`y = x \odot m`. Inference: :math:`y = x` (inverted) or
    :math:`y = q\,x` (classic).

    Args:
        input: floating-point tensor of any shape.
        p: drop probability, ``0 <= p <= 1``. Default: 0.5. ``p = 0`` and ``p = 1`` are exact.
        training: apply the stochastic mask if ``True``, the inference rule otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        seed: 64-bit seed of the mask, an int or 0-dim int64 tensor; ``None`` draws one from torch's
            global generator. Default: None.
        step: training-step counter; a new step gives an independent mask. Default: 0.
        replica: data-parallel replica index folded into the counter. Default: 0.
        stream: separates independent masks drawn at one step by one site. Default: 0.
        noise_shape: Keras-style mask shape, ``None`` entries take the input's size, ``1`` shares
            the mask along that axis. Default: None (one mask value per element).
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.

    Shape:
        Input: :math:`(*)`. Output: :math:`(*)`, same shape and dtype.

    Example::

        >>> x = torch.ones(2, 8)
        >>> y = dropout(x, p=0.5, seed=7)
        >>> sorted(set(y.flatten().tolist())) == [0.0, 2.0]
        True

    Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
    JMLR 2014.
    """
    _check_input(input, "dropout")
    p = check_probability(p)
    check_scaling(scaling)
    replica = _check_counter_int("replica", replica)
    stream = _check_counter_int("stream", stream)
    mask_shape = resolve_noise_shape(input.shape, noise_shape)
    if not training:
        if scaling == "inverted" or p == 0.0:
            return input
        return input.mul_(1.0 - p) if inplace else input * (1.0 - p)
    if p == 0.0:
        return input
    scale = 1.0 / (1.0 - p) if scaling == "inverted" and p < 1.0 else 1.0
    if p == 1.0:
        scale = 0.0
    out = masked_scale(input, _seed_tensor(seed), _step_tensor(step), replica, stream, drop_threshold(p),
                       scale, list(mask_shape))
    if inplace:
        return input.copy_(out)
    return out


def feature_dropout(input: torch.Tensor, p: float, training: bool, inplace: bool, *, batched_ndim: int,
                    op: str, shape_doc: str, **kwargs) -> torch.Tensor:
    """Channel dropout: one mask value per (example, channel), shared over the trailing dimensions.

    ``batched_ndim`` is the rank of the batched form ``(N, C, *)``; the unbatched form ``(C, *)``
    (one dimension fewer) shares one mask per channel.
    """
    _check_input(input, op)
    if input.dim() not in (batched_ndim, batched_ndim - 1):
        raise ValueError(f"{op} expects {shape_doc}, but got input of shape {tuple(input.shape)}")
    if kwargs.get("noise_shape") is not None:
        raise ValueError(f"{op} fixes its own noise_shape (one mask value per channel); use dropout() "
                         "for a custom noise_shape")
    leading = 2 if input.dim() == batched_ndim else 1
    noise_shape = tuple([None] * leading + [1] * (input.dim() - leading))
    kwargs.pop("noise_shape", None)
    return dropout(input, p, training, inplace, noise_shape=noise_shape, **kwargs)


def dropout1d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole channels of a 1-D signal: one mask value per :math:`(n, c)`, shared along length.

    Scaling and keyword arguments as :func:`dropout`.

    Shape: Input :math:`(N, C, L)` or :math:`(C, L)`; output the same.

    Reference: Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015.
    """
    return feature_dropout(input, p, training, inplace, batched_ndim=3, op="dropout1d",
                           shape_doc="(N, C, L) or (C, L)", **kwargs)


def dropout2d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole feature maps: one mask value per :math:`(n, c)`, shared over height and width.

    Scaling and keyword arguments as :func:`dropout`.

    Shape: Input :math:`(N, C, H, W)` or :math:`(C, H, W)`; output the same.

    Reference: Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015.
    """
    return feature_dropout(input, p, training, inplace, batched_ndim=4, op="dropout2d",
                           shape_doc="(N, C, H, W) or (C, H, W)", **kwargs)


def dropout3d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole 3-D feature volumes: one mask value per :math:`(n, c)`, shared over D, H, W.

    Scaling and keyword arguments as :func:`dropout`.

    Shape: Input :math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`; output the same.
    """
    return feature_dropout(input, p, training, inplace, batched_ndim=5, op="dropout3d",
                           shape_doc="(N, C, D, H, W) or (C, D, H, W)", **kwargs)
