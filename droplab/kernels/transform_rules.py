r"""Forward-mode AD and ``torch.func`` transforms (``grad``, ``jvp``, ``vmap``) for droplab's registered ops.

Why this module exists. ``torch.library.custom_op`` (torch 2.4 to 2.13) lets an op register a backward
(``register_autograd``) and a batching rule (``register_vmap``), but no forward-mode derivative: under
forward-mode AD (``torch.autograd.forward_ad`` dual tensors, ``torch.func.jvp``) a custom op's output
carries *no tangent*, silently (the derivative comes out as zero), and the ``autograd.Function`` that
``register_autograd`` generates has no ``setup_context``, so ``torch.func.grad``/``vjp`` over the op
raise. droplab's functions therefore call each op through an ``autograd.Function`` built here
(``setup_context``, ``backward``, ``jvp``, ``vmap``) while a ``torch.func`` transform or a forward-AD
level is active (:func:`transforms_active`), and the op itself otherwise. The Function's ``forward``
calls the registered op, so tracing, fake tensors and dispatch modes still see ``droplab::*``.

The rules, for a fixed mask (the mask is a function of the integer counters only, never of ``x``):

* every masked op here is linear in its tensor input: ``y = x * c`` with ``c`` the regenerated
  mask (or noise) factor. Its JVP is the *same op, with the same integers*, applied to the tangent:
  the tangent sees exactly the forward's mask, regenerated, nothing stored. Its backward likewise
  (or, for the embedding lookup, its transpose op).
* batching (``vmap``): ``vmap(f)(X)[i] == f(X[i])``. With the counters unbatched every slice gets the
  same mask (a pure function of the same integers); with a batched seed or step (``torch.func.vmap(
  ..., randomness="different")`` draws one key per slice through :func:`droplab.functional.fresh_key`)
  each slice gets its own. Element-wise masks share one call: the batch axis moves to the front and
  the mask shape gains a leading 1, which keeps every element's mask index. Other ops run one call
  per slice. ``randomness="error"`` raises, as torch's own dropout does, only where a key is drawn
  (``seed=None``); ``randomness="same"`` gives every slice one key.

What stays unsupported: calling ``torch.ops.droplab.*`` *directly* under ``torch.func.grad``/``jvp`` or
with dual tensors (not through :mod:`droplab.functional`): that is the custom-op limitation above, and
droplab cannot register a JVP on the op itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.autograd import forward_ad

__all__ = ["LEGACY_VMAP_KEY", "transforms_active", "in_legacy_vmap", "outside_legacy_vmap", "is_batched",
           "vmap_by_slices", "vmap_shared_mask", "register_op_vmap", "linear_function", "transformable"]

#: legacy vmap's dispatch key (not in the Python enum); ``torch._C._dispatch_tls_is_dispatch_key_included`` of it
#: is :func:`in_legacy_vmap` without a Python frame, for the eager fast path
LEGACY_VMAP_KEY = torch._C._parse_dispatch_key("VmapMode")
_key_included = torch._C._dispatch_tls_is_dispatch_key_included


def in_legacy_vmap() -> bool:
    """True inside torch's legacy vmap: ``torch.autograd.grad(..., is_grads_batched=True)``, which gradcheck's
    batched-gradient check uses. Its batched tensors are plain ``torch.Tensor`` objects with no storage
    a kernel can read, and no ``torch.func`` transform is active meanwhile."""
    return _key_included(LEGACY_VMAP_KEY)


def outside_legacy_vmap(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` with legacy vmap's mode lifted: a random draw inside it (which legacy vmap
    forbids) gives one value for every slice, what ``torch.func.vmap(randomness="same")`` gives. Right for
    gradcheck's batched gradients, whose slices are directions of one evaluation of one function."""
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(LEGACY_VMAP_KEY)):
        return fn(*args, **kwargs)


def transforms_active() -> bool:
    """True while a ``torch.func`` transform, a forward-mode AD level or torch's legacy vmap is active.

    False while ``torch.compile`` traces (checked first, Dynamo folds it): a compiled graph records the op.
    """
    if torch.compiler.is_compiling():
        return False
    return (forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()
            or _key_included(LEGACY_VMAP_KEY))


def is_batched(dim) -> bool:
    # in_dims mirrors the arguments: an int for a batched tensor, None (or a list of None for a list
    # argument such as a mask shape) otherwise
    return isinstance(dim, int)


def _slice(value, dim, index: int):
    return value.select(dim, index) if is_batched(dim) else value


def vmap_by_slices(call: Callable, info, in_dims: Sequence[int | None], args: Sequence) -> tuple[torch.Tensor, int]:
    """The batching rule any op satisfies: one ``call`` per slice, stacked along dimension 0."""
    outs = [call(*(_slice(a, d, i) for a, d in zip(args, in_dims))) for i in range(info.batch_size)]
    return torch.stack(outs), 0


def vmap_shared_mask(call: Callable, mask_arg: int, info, in_dims: Sequence[int | None],
                     args: Sequence) -> tuple[torch.Tensor, int]:
    """Batching rule of an element-wise op whose argument ``mask_arg`` is its mask shape.

    Only ``x`` batched: one call on ``x`` with the batch axis first and ``[1, *mask_shape]``, which
    shares the mask along that axis (the row-major index of every mask element is unchanged).
    Anything else batched (the seed or step): :func:`vmap_by_slices`.
    """
    if not is_batched(in_dims[0]) or any(is_batched(d) for d in in_dims[1:]):
        return vmap_by_slices(call, info, in_dims, args)
    args = list(args)
    args[0] = args[0].movedim(in_dims[0], 0)
    args[mask_arg] = [1, *args[mask_arg]]
    return call(*args), 0


def register_op_vmap(op, mask_arg: int | None = None) -> None:
    """Register ``op``'s own batching rule (``torch.func.vmap`` over ``torch.ops.droplab.*``).

    The rule calls the op itself: an ``autograd.Function`` cannot be applied inside a custom op's
    batching rule (torch raises "could not find kernel for HigherOrderOperator custom_function_call").
    """
    def rule(info, in_dims, *args):
        if mask_arg is None:
            return vmap_by_slices(op, info, in_dims, args)
        return vmap_shared_mask(op, mask_arg, info, in_dims, args)

    op.register_vmap(rule)


def linear_function(name: str, op: Callable, call: Callable, *, mask_arg: int | None = None,
                    transpose: Callable | None = None) -> type[torch.autograd.Function]:
    """An ``autograd.Function`` for ``op(x, *rest)``, linear in ``x``, its other arguments integers or constants.

    ``call`` is the public entry point (it routes back here while a transform is active), used for
    the derivatives so that they are differentiable and batchable in turn. ``transpose(grad, x_shape,
    *rest)`` is the backward (default: ``call(grad, *rest)``, for a diagonal map such as a mask).
    ``mask_arg`` names the mask-shape argument of an element-wise op (:func:`vmap_shared_mask`);
    without it, one call per slice.
    """
    def backward_call(grad, x_shape, *rest):
        return call(grad, *rest) if transpose is None else transpose(grad, x_shape, *rest)

    def forward(x, *rest):
        return op(x, *rest)

    def setup_context(ctx, inputs, output):
        ctx.rest = tuple(inputs[1:])  # integers and constants only: the mask is regenerated
        ctx.x_shape = tuple(inputs[0].shape)

    def backward(ctx, grad):
        return (backward_call(grad, ctx.x_shape, *ctx.rest),) + (None,) * len(ctx.rest)

    def jvp(ctx, x_tangent, *_):
        return call(x_tangent, *ctx.rest)

    def vmap(info, in_dims, *args):
        if mask_arg is None:
            return vmap_by_slices(call, info, in_dims, args)
        return vmap_shared_mask(call, mask_arg, info, in_dims, args)

    namespace = {name: staticmethod(fn) for name, fn in
                 (("forward", forward), ("setup_context", setup_context), ("backward", backward), ("jvp", jvp),
                  ("vmap", vmap))}
    return type(name, (torch.autograd.Function,), namespace)


def transformable(op, *, mask_arg: int | None = None, transpose: Callable | None = None) -> Callable:
    """``op`` (a ``torch.library`` custom op linear in its first argument) as a function that works under transforms.

    Returns ``call(*args)``: the op itself, or, while :func:`transforms_active`, the op through a
    :func:`linear_function`. The op's own batching rule (``register_vmap``) is registered too, so that
    ``torch.func.vmap`` over ``torch.ops.droplab.*`` batches without torch's per-slice fallback.
    """
    function: type[torch.autograd.Function] | None = None

    def call(*args):
        if transforms_active():
            return function.apply(*args)
        return op(*args)

    function = linear_function(f"{op._name}_function", op, call, mask_arg=mask_arg, transpose=transpose)
    register_op_vmap(op, mask_arg)
    call.__name__ = call.__qualname__ = op._name
    call.__doc__ = op.__doc__
    call.op = op
    return call
