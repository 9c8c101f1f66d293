"""The dropout operator, registered with ``torch.library`` so autograd, ``torch.compile``,
``torch.export`` and gradcheck see one opaque op.

``droplab::masked_scale(x, seed, step, replica, stream, threshold, scale, mask_shape)`` returns
``x * scale`` where the keep mask (spec in :mod:`droplab.rng`) keeps and exactly 0 elsewhere.
``seed`` and ``step`` are 0-dim int64 tensors so that a module's counters can advance inside a
compiled graph without recompiling; ``seed`` holds the 64-bit seed in two's complement. The backward
is the same op applied to the incoming gradient: the mask is regenerated from the integers, so
autograd saves nothing but those two integer scalars.
"""

from __future__ import annotations

import torch

from . import masked_scale as _dispatch_masked_scale

__all__ = ["masked_scale"]


@torch.library.custom_op("droplab::masked_scale", mutates_args=())
def masked_scale(x: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: list[int]) -> torch.Tensor:
    s = int(seed) % 2**64
    return _dispatch_masked_scale(x, (s & 0xFFFFFFFF, s >> 32), int(step), replica, stream, threshold,
                                  scale, tuple(mask_shape))


@masked_scale.register_fake
def _(x, seed, step, replica, stream, threshold, scale, mask_shape):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    _, seed, step, replica, stream, threshold, scale, mask_shape = inputs
    # integers only: the mask is regenerated in backward
    ctx.args = (seed, step, replica, stream, threshold, scale, list(mask_shape))


def _backward(ctx, grad):
    return (masked_scale(grad, *ctx.args),) + (None,) * 7


masked_scale.register_autograd(_backward, setup_context=_setup_context)
