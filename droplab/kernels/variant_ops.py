"""The variants' registered ops: one op family over the backends, beside ``droplab::masked_scale``.

Every op takes the seed and step as 0-dim int64 tensors (a module's counters advance inside a compiled
graph without recompiling), and the replica, stream and rate as ints. Every backward *regenerates*
its mask or noise from those integers: autograd saves nothing but them and, for Concrete dropout's
learned rate, the input and the logit.

* ``droplab::gaussian_scale(x, seed, step, replica, stream, sigma, mask_shape)``: ``x (1 + sigma z)``,
  ``z`` the Box-Muller noise of ``mask_shape`` (spec: :func:`droplab.rng.normal_from_words`); linear
  in ``x``, so its backward is the same op on the gradient.
* ``droplab::noise(like, seed, step, replica, stream, kind, shape)``: float32 ``"normal"`` or
  ``"logistic"`` noise of ``shape`` on ``like``'s device (no gradient).
* ``droplab::concrete_scale(x, p_logit, seed, step, replica, stream, temperature, mask_shape)``:
  Concrete dropout's ``x m / (1 - p)``, differentiable in ``x`` and the logit.
* ``droplab::dropblock_scale(x, seed, step, replica, stream, threshold, block, per_channel, normalize)``:
  DropBlock: the kernel's origin keep mask grown into blocks, ``x * scale`` where kept.
* ``droplab::embedding_dropout(weight, indices, seed, step, replica, stream, threshold, scale,
  padding_idx)``: the lookup ``weight[indices]`` with whole vocabulary rows dropped, in one pass;
  backward writes the dense weight gradient of the kept rows.
* ``droplab::rows_masked_scale(src, indices, ...)``: the same row mask on an embedding's output
  (used where ``F.embedding`` itself must run: ``sparse`` or ``scale_grad_by_freq``).
"""

from __future__ import annotations

import torch

from .. import kernels
from ..rng import seed_key
from . import transform_rules
from .ops import dense_like

__all__ = ["gaussian_scale", "noise", "concrete_scale", "dropblock_scale", "embedding_dropout",
           "rows_masked_scale", "dropblock_scale_factor"]


def _counters(seed: torch.Tensor, step: torch.Tensor) -> tuple[tuple[int, int], int]:
    return seed_key(seed), int(step)


def _like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` (dense, row-major) in ``x``'s dimension order, as torch's element-wise ops lay out their output."""
    return y if x.is_contiguous() else dense_like(x).copy_(y)


def _ints(ctx, inputs, first: int) -> None:
    # integers only: every mask and noise is regenerated in backward
    ctx.args = tuple(inputs[first:])


# --------------------------------------------------------------------------------------------- Gaussian
@torch.library.custom_op("droplab::gaussian_scale", mutates_args=())
def gaussian_scale(x: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                   sigma: float, mask_shape: list[int]) -> torch.Tensor:
    key, s = _counters(seed, step)
    return _like_input(kernels.gaussian_scale(x, key, s, replica, stream, sigma, tuple(mask_shape)), x)


@gaussian_scale.register_fake
def _(x, seed, step, replica, stream, sigma, mask_shape):
    return dense_like(x)


gaussian_scale.register_autograd(lambda ctx, grad: (gaussian_scale(grad, *ctx.args),) + (None,) * 6,
                                 setup_context=lambda ctx, inputs, output: _ints(ctx, inputs, 1))


# --------------------------------------------------------------------------------------------- noise
@torch.library.custom_op("droplab::noise", mutates_args=())
def noise(like: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int, kind: str,
          shape: list[int]) -> torch.Tensor:
    if kind not in ("normal", "logistic"):
        raise ValueError(f"kind must be 'normal' or 'logistic', but got {kind!r}")
    key, s = _counters(seed, step)
    numel = 1
    for size in shape:
        numel *= size
    return kernels.noise(kind, numel, key, s, replica, stream, like.device).reshape(shape)


@noise.register_fake
def _(like, seed, step, replica, stream, kind, shape):
    return like.new_empty(shape, dtype=torch.float32)


# --------------------------------------------------------------------------------------------- Concrete
def _concrete_factor(p_logit: torch.Tensor, logistic: torch.Tensor, temperature: float, dtype: torch.dtype):
    """``(m / q, m, q)``: relaxed keep mask ``m = sigmoid(-(l + L) / t)`` and keep rate ``q = sigmoid(-l)``."""
    logit = p_logit.reshape(()).to(dtype)
    m = torch.sigmoid(-(logit + logistic.to(dtype)) / temperature)
    q = torch.sigmoid(-logit)
    return m / q, m, q


@torch.library.custom_op("droplab::concrete_scale", mutates_args=())
def concrete_scale(x: torch.Tensor, p_logit: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int,
                   stream: int, temperature: float, mask_shape: list[int]) -> torch.Tensor:
    logistic = noise(x, seed, step, replica, stream, "logistic", mask_shape)
    factor, _, _ = _concrete_factor(p_logit, logistic, temperature, x.dtype)
    return _like_input((x * factor).contiguous(), x)


@concrete_scale.register_fake
def _(x, p_logit, seed, step, replica, stream, temperature, mask_shape):
    return dense_like(x)


def _concrete_setup(ctx, inputs, output):
    x, p_logit = inputs[:2]
    ctx.save_for_backward(x, p_logit)  # the input and the learned logit; the noise is regenerated
    _ints(ctx, inputs, 2)


def _concrete_backward(ctx, grad):
    x, p_logit = ctx.saved_tensors
    seed, step, replica, stream, temperature, mask_shape = ctx.args
    logistic = noise(x, seed, step, replica, stream, "logistic", mask_shape)
    factor, m, q = _concrete_factor(p_logit.detach(), logistic, temperature, x.dtype)
    grad_x = grad * factor if ctx.needs_input_grad[0] else None
    grad_logit = None
    if ctx.needs_input_grad[1]:
        # d(m / q)/dl = (m / q) (p - (1 - m) / t), with p = 1 - q
        d_factor = factor * ((1 - q) - (1 - m) / temperature)
        grad_logit = (grad * x * d_factor).sum().reshape(p_logit.shape).to(p_logit.dtype)
    return (grad_x, grad_logit) + (None,) * 6


concrete_scale.register_autograd(_concrete_backward, setup_context=_concrete_setup)


# --------------------------------------------------------------------------------------------- DropBlock
def dropblock_scale_factor(numel: int, kept: int, normalize: bool) -> float:
    """DropBlock's rescale: ``numel / kept`` (the paper's normalization) or 1; 0 when nothing is kept."""
    if not normalize:
        return 1.0
    return numel / kept if kept else 0.0


def _dropblock_keep(shape: tuple[int, ...], seed, step, replica: int, stream: int, threshold: int,
                    block: list[int], per_channel: bool, device) -> tuple[torch.Tensor, int]:
    """The block keep mask for an input of ``shape`` (channel axis 1 when not ``per_channel``) and its count."""
    spatial_dims = len(block)
    spatial = tuple(shape[len(shape) - spatial_dims:])
    lead = list(shape[:len(shape) - spatial_dims])
    if not per_channel and lead:
        lead[-1] = 1
    planes = 1
    for size in lead:
        planes *= size
    pad = 3 - spatial_dims  # every map is handled as (D, H, W)
    key, s = _counters(seed, step)
    keep, kept = kernels.dropblock_keep(planes, (1,) * pad + spatial, (1,) * pad + tuple(block), key, s, replica,
                                        stream, threshold, device)
    return keep.reshape(tuple(lead) + spatial), kept


@torch.library.custom_op("droplab::dropblock_scale", mutates_args=())
def dropblock_scale(x: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                    threshold: int, block: list[int], per_channel: bool, normalize: bool) -> torch.Tensor:
    keep, kept = _dropblock_keep(tuple(x.shape), seed, step, replica, stream, threshold, block, per_channel,
                                 x.device)
    return _like_input(kernels.apply_keep(x, keep, dropblock_scale_factor(keep.numel(), kept, normalize)), x)


@dropblock_scale.register_fake
def _(x, seed, step, replica, stream, threshold, block, per_channel, normalize):
    return dense_like(x)


dropblock_scale.register_autograd(lambda ctx, grad: (dropblock_scale(grad, *ctx.args),) + (None,) * 8,
                                  setup_context=lambda ctx, inputs, output: _ints(ctx, inputs, 1))


def dropblock_keep(shape: tuple[int, ...], seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                   threshold: int, block: list[int], per_channel: bool,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """The boolean block keep mask :func:`dropblock_scale` applies (for inspection and tests)."""
    return _dropblock_keep(tuple(shape), seed, step, replica, stream, threshold, list(block), per_channel,
                           torch.device(device if device is not None else "cpu"))[0]


# --------------------------------------------------------------------------------------------- embedding
@torch.library.custom_op("droplab::embedding_dropout", mutates_args=())
def embedding_dropout(weight: torch.Tensor, indices: torch.Tensor, seed: torch.Tensor, step: torch.Tensor,
                      replica: int, stream: int, threshold: int, scale: float, padding_idx: int) -> torch.Tensor:
    key, s = _counters(seed, step)
    return kernels.embedding_forward(weight, indices, key, s, replica, stream, threshold, scale)


@embedding_dropout.register_fake
def _(weight, indices, seed, step, replica, stream, threshold, scale, padding_idx):
    return weight.new_empty(tuple(indices.shape) + (weight.shape[1],))


def _embedding_setup(ctx, inputs, output):
    weight, indices = inputs[:2]
    ctx.save_for_backward(indices)  # integers only
    ctx.num_weights = weight.shape[0]
    _ints(ctx, inputs, 2)


def _embedding_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    seed, step, replica, stream, threshold, scale, padding_idx = ctx.args
    grad_weight = _embedding_grad(grad.contiguous(), indices, ctx.num_weights, padding_idx, seed, step, replica,
                                  stream, threshold, scale)
    return (grad_weight,) + (None,) * 8


@torch.library.custom_op("droplab::embedding_dropout_backward", mutates_args=())
def _embedding_grad(grad: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int,
                    seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int, threshold: int,
                    scale: float) -> torch.Tensor:
    key, s = _counters(seed, step)
    return kernels.embedding_backward(grad, indices, num_weights, padding_idx, key, s, replica, stream, threshold,
                                      scale)


@_embedding_grad.register_fake
def _(grad, indices, num_weights, padding_idx, seed, step, replica, stream, threshold, scale):
    return grad.new_empty((num_weights, grad.shape[-1]))


embedding_dropout.register_autograd(_embedding_backward, setup_context=_embedding_setup)


@torch.library.custom_op("droplab::rows_masked_scale", mutates_args=())
def rows_masked_scale(src: torch.Tensor, indices: torch.Tensor, seed: torch.Tensor, step: torch.Tensor,
                      replica: int, stream: int, threshold: int, scale: float) -> torch.Tensor:
    key, s = _counters(seed, step)
    return kernels.rows_masked_scale(src, indices, key, s, replica, stream, threshold, scale)


@rows_masked_scale.register_fake
def _(src, indices, seed, step, replica, stream, threshold, scale):
    return torch.empty_like(src, memory_format=torch.contiguous_format)


def _rows_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])  # the indices: integers
    _ints(ctx, inputs, 2)


def _rows_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    return (rows_masked_scale(grad, indices, *ctx.args),) + (None,) * 7


rows_masked_scale.register_autograd(_rows_backward, setup_context=_rows_setup)


# --------------------------------------------------------------------------------------------- transforms
# torch.func transforms and forward-mode AD (droplab.kernels.transform_rules): from here on the public
# names call each op through an autograd.Function with jvp and vmap rules while a transform or a
# forward-AD level is active, and the op itself otherwise; the ops stay reachable as ``<name>.op`` and
# ``torch.ops.droplab.<name>``. The ops are linear in their tensor input for a fixed mask (Concrete
# dropout: in x, and smooth in its logit), so every tangent takes the forward's mask, regenerated.
gaussian_scale = transform_rules.transformable(gaussian_scale, mask_arg=6)
dropblock_scale = transform_rules.transformable(dropblock_scale)
rows_masked_scale = transform_rules.transformable(rows_masked_scale)


def _embedding_transpose(grad, weight_shape, indices, seed, step, replica, stream, threshold, scale, padding_idx):
    # the lookup's backward: the dense weight gradient (the padding row gets none)
    return _embedding_grad(grad.contiguous(), indices, weight_shape[0], padding_idx, seed, step, replica, stream,
                           threshold, scale)


def _embedding_grad_transpose(grad_weight, grad_shape, indices, num_weights, padding_idx, seed, step, replica,
                              stream, threshold, scale):
    # the weight gradient's own backward (double backward): the lookup of the incoming gradient, without the
    # padding row, which received no gradient
    if padding_idx >= 0:
        grad_weight = grad_weight.index_fill(0, torch.tensor([padding_idx], device=grad_weight.device), 0)
    return embedding_dropout(grad_weight, indices, seed, step, replica, stream, threshold, scale, padding_idx)


_embedding_grad_op = _embedding_grad
_embedding_grad_op.register_autograd(
    lambda ctx, gg: (_embedding_grad_transpose(gg, None, *ctx.args),) + (None,) * 9,
    setup_context=lambda ctx, inputs, output: _ints(ctx, inputs, 1))
_embedding_grad = transform_rules.transformable(_embedding_grad_op, transpose=_embedding_grad_transpose)
embedding_dropout = transform_rules.transformable(embedding_dropout, transpose=_embedding_transpose)


def _noise_vmap(info, in_dims, like, *args):
    # ``like`` gives the device only: with the counters unbatched every slice gets the same noise
    if any(transform_rules.is_batched(d) for d in in_dims[1:]):
        return transform_rules.vmap_by_slices(_noise_op, info, in_dims, (like, *args))
    return _noise_op(torch.empty(0, device=like.device), *args), None


_noise_op = noise
_noise_op.register_vmap(_noise_vmap)


def noise(like: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int, kind: str,
          shape: list[int]) -> torch.Tensor:
    """``droplab::noise``. ``like`` only names the device: it reaches the op detached (under a transform, as an
    empty tensor on its device), so autograd never records the op, whose output does not depend on ``like``."""
    like = torch.empty(0, device=like.device) if transform_rules.transforms_active() else like.detach()
    return _noise_op(like, seed, step, replica, stream, kind, shape)


noise.op = _noise_op


class _ConcreteScale(torch.autograd.Function):
    """``droplab::concrete_scale`` under transforms: the op's backward, a JVP in ``x`` and the logit, per-slice vmap."""

    @staticmethod
    def forward(x, p_logit, *rest):
        return _concrete_op(x, p_logit, *rest)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _concrete_setup(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])

    @staticmethod
    def backward(ctx, grad):
        return _concrete_backward(ctx, grad)

    @staticmethod
    def jvp(ctx, x_tangent, logit_tangent, *_):
        x, p_logit = ctx.saved_tensors
        seed, step, replica, stream, temperature, mask_shape = ctx.args
        factor, m, q = _concrete_factor(p_logit, noise(x, seed, step, replica, stream, "logistic", mask_shape),
                                        temperature, x.dtype)
        out = x_tangent * factor if x_tangent is not None else torch.zeros_like(x * factor)
        if logit_tangent is not None:
            out = out + x * factor * ((1 - q) - (1 - m) / temperature) * logit_tangent.reshape(()).to(x.dtype)
        return out

    @staticmethod
    def vmap(info, in_dims, *args):
        return transform_rules.vmap_by_slices(concrete_scale, info, in_dims, args)


_concrete_op = concrete_scale
transform_rules.register_op_vmap(_concrete_op)


def concrete_scale(x: torch.Tensor, p_logit: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int,
                   stream: int, temperature: float, mask_shape: list[int]) -> torch.Tensor:
    """``droplab::concrete_scale``, through :class:`_ConcreteScale` while a transform is active."""
    if transform_rules.transforms_active():
        return _ConcreteScale.apply(x, p_logit, seed, step, replica, stream, temperature, mask_shape)
    return _concrete_op(x, p_logit, seed, step, replica, stream, temperature, mask_shape)


concrete_scale.op = _concrete_op
