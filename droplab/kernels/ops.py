"""The dropout operator, registered with ``torch.library`` so autograd, ``torch.compile``,
``torch.export`` and gradcheck see one opaque op.

``droplab::masked_scale(x, seed, step, replica, stream, threshold, scale, mask_shape)`` returns
``x * scale`` where the keep mask (spec in :mod:`droplab.rng`) keeps and exactly 0 elsewhere.
``seed`` and ``step`` are 0-dim int64 tensors so that a module's counters can advance inside a
compiled graph without recompiling; ``seed`` holds the 64-bit seed in two's complement. The backward
is the same op applied to the incoming gradient: the mask is regenerated from the integers, so
autograd saves nothing but those two integer scalars. The output keeps the input's dimension order
(channels_last in, channels_last out), as torch's element-wise ops do.

The eager path. Where nothing traces or compiles (no dynamo or ``torch.export``, no fx proxy or fake
tensor, no functorch transform, no torch-function or dispatch mode, no backend forced by
:func:`droplab.kernels.use_backend`) and the input is a plain CPU tensor the numba kernel takes, a
module's forward asks :func:`eager_launcher` for the CPU launch and calls it through one autograd node,
:data:`dropout_node` (or directly when no gradient is wanted): the same kernel with the same integers as
the registered op, so the masks are the op's bit for bit, with none of the dispatch in between.
"""

from __future__ import annotations

import os

import torch

from ..rng import seed_key
from . import _load, _state, transform_rules
from . import masked_scale as _dispatch_masked_scale

__all__ = ["dense_like", "masked_scale", "masked_scale_op", "eager_launcher", "dropout_node"]

_key_included, _LEGACY_VMAP = torch._C._dispatch_tls_is_dispatch_key_included, transform_rules.LEGACY_VMAP_KEY


def dense_like(x: torch.Tensor) -> torch.Tensor:
    """An uninitialized dense tensor like ``x`` with ``x``'s dimension order (its strides, sorted).

    The layout torch's element-wise ops give their output: channels_last stays channels_last, a
    permuted or sliced view gets a dense tensor in the same permutation.
    """
    if x.is_contiguous():
        return torch.empty_like(x, memory_format=torch.contiguous_format)
    order = sorted(range(x.dim()), key=lambda d: -x.stride(d))  # stable: ties keep dimension order
    inverse = sorted(range(x.dim()), key=order.__getitem__)
    return torch.empty([x.shape[d] for d in order], dtype=x.dtype, device=x.device).permute(inverse)


def _impl(x: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
          threshold: int, scale: float, mask_shape: list[int]) -> torch.Tensor:
    y = _dispatch_masked_scale(x, seed_key(seed), int(step), replica, stream, threshold, scale, tuple(mask_shape))
    if x.is_contiguous() and y.is_contiguous():
        return y
    return dense_like(x).copy_(y)  # the backends compute in logical order; restore the input's layout


masked_scale_op = torch.library.custom_op("droplab::masked_scale", _impl, mutates_args=())


class _EagerMaskedScale(torch.autograd.Function):
    """The op's eager fast path: same kernel, same backward, none of the custom-op dispatch cost
    (about 100 us per forward+backward on a busy 2-core CPU, which is most of dropout's cost in a small MLP)."""

    @staticmethod
    def forward(ctx, x, seed, step, replica, stream, threshold, scale, mask_shape):
        ctx.args = (seed, step, replica, stream, threshold, scale, mask_shape)  # integers only
        return _impl(x, seed, step, replica, stream, threshold, scale, mask_shape)

    @staticmethod
    def backward(ctx, grad):
        return (masked_scale(grad, *ctx.args),) + (None,) * 7

    @staticmethod
    def jvp(ctx, x_tangent, *_):
        # forward-mode AD (dual tensors): the op is linear in x, so the tangent takes this forward's mask,
        # regenerated from the same integers
        return masked_scale(x_tangent, *ctx.args)


def masked_scale(x: torch.Tensor, seed: torch.Tensor, step: torch.Tensor, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: list[int]) -> torch.Tensor:
    """``droplab::masked_scale``; plain eager calls take an equivalent ``autograd.Function`` path."""
    if torch.compiler.is_compiling():  # checked first: dynamo folds it and traces the opaque op
        return masked_scale_op(x, seed, step, replica, stream, threshold, scale, mask_shape)
    if (type(x) is torch.Tensor and not torch._C._are_functorch_transforms_active()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._is_torch_function_mode_enabled()
            and not _key_included(_LEGACY_VMAP)):  # legacy vmap (batched gradients): transform_rules
        return _EagerMaskedScale.apply(x, seed, step, replica, stream, threshold, scale, mask_shape)
    if transform_rules.transforms_active():  # torch.func transforms, forward AD: see transform_rules
        return _TransformMaskedScale.apply(x, seed, step, replica, stream, threshold, scale, mask_shape)
    # tracing, fake tensors, torch function or dispatch modes (which must see the op, e.g. droplab.guards)
    return masked_scale_op(x, seed, step, replica, stream, threshold, scale, mask_shape)


@masked_scale_op.register_fake
def _(x, seed, step, replica, stream, threshold, scale, mask_shape):
    return dense_like(x)


def _setup_context(ctx, inputs, output):
    _, seed, step, replica, stream, threshold, scale, mask_shape = inputs
    # integers only: the mask is regenerated in backward
    ctx.args = (seed, step, replica, stream, threshold, scale, list(mask_shape))


def _backward(ctx, grad):
    return (masked_scale_op(grad, *ctx.args),) + (None,) * 7


masked_scale_op.register_autograd(_backward, setup_context=_setup_context)


# torch.func transforms and forward-mode AD (droplab.kernels.transform_rules): the op through an
# autograd.Function with jvp and vmap rules, and the op's own batching rule
_TransformMaskedScale = transform_rules.linear_function("_TransformMaskedScale", masked_scale_op, masked_scale,
                                                        mask_arg=7)
transform_rules.register_op_vmap(masked_scale_op, mask_arg=7)


# ----------------------------------------------------------------------------- the eager path
_EAGER_DTYPES = frozenset((torch.float32, torch.float64, torch.float16, torch.bfloat16))
_launch = None  # droplab.kernels.cpu.dropout_eager once the CPU backend has loaded


def _forget_launch() -> None:  # a forked child asks droplab.kernels again: the CPU backend may be unusable there
    global _launch
    _launch = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_launch)


def eager_launcher(x):
    """``droplab.kernels.cpu.dropout_eager`` when ``x`` may take the eager path, else ``None``.

    ``launch(x, counters)``, ``counters = (k0, k1, step, replica, threshold, scale, mask_shape)``, is the
    forward (and, on the gradient, the backward) of :data:`dropout_node`. ``None`` sends the caller to the
    registered op: under ``torch.compile``/``torch.export`` (checked first, so dynamo folds the rest away),
    for tensor subclasses and fx proxies, under functorch transforms or legacy vmap (batched gradients),
    torch-function or dispatch modes, when a backend is forced, and for tensors the numba kernel does not
    take.
    """
    global _launch
    if torch.compiler.is_compiling():
        return None
    if (type(x) is not torch.Tensor or not x.is_cpu or x.dtype not in _EAGER_DTYPES
            or x.layout != torch.strided or getattr(_state, "forced", None) is not None
            or torch._C._are_functorch_transforms_active() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or _key_included(_LEGACY_VMAP)):
        return None
    if _launch is None:
        cpu = _load("cpu")
        if cpu is None:
            return None
        _launch = cpu.dropout_eager
    return _launch


class _EagerDropout(torch.autograd.Function):
    """One autograd node: the CPU launch forward, the same launch on the gradient backward (integers saved).

    The map is linear, so its backward and its forward-mode derivative (``jvp``) are the map itself; a
    backward that builds a graph (``create_graph=True``) goes through the node again, so it can be
    differentiated once more."""

    @staticmethod
    def forward(ctx, x, counters):
        ctx.counters = counters
        return _launch(x, counters)

    @staticmethod
    def backward(ctx, grad):
        if grad.requires_grad and torch.is_grad_enabled():
            return dropout_node(grad, ctx.counters), None
        return _launch(grad, ctx.counters), None

    @staticmethod
    def jvp(ctx, x_tangent, counters_tangent):
        return _launch(x_tangent, ctx.counters)


#: ``dropout_node(x, counters)`` (see :func:`eager_launcher`): :class:`_EagerDropout`'s
#: apply without ``Function.apply``'s Python wrapper (which binds defaults and unwraps dead functorch
#: wrappers, neither needed where :func:`eager_launcher` allowed the call: plain tensors, no transform)
dropout_node = torch._C._FunctionBase.__dict__["apply"].__get__(None, _EagerDropout)
