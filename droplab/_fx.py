"""torch.fx helpers: the leaf tracer of MC prediction and deployment, and droplab modules as fx leaves."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import fx, nn

__all__ = ["LeafTracer", "fx_leaf_forward", "fx_traceable", "leaf_proxy", "checks_fx_itself"]


class LeafTracer(fx.Tracer):
    """A tracer that keeps the modules in ``leaves`` (by ``id``) opaque, as single call_module nodes."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)


def _tracer_of(args: tuple, kwargs: dict) -> fx.Tracer | None:
    """The tracer of the first ``fx.Proxy`` among the arguments (one level into tuples and lists)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, fx.Proxy):
            return value.tracer
        if isinstance(value, (tuple, list)):
            for item in value:
                if isinstance(item, fx.Proxy):
                    return item.tracer
    return None


def leaf_proxy(module: nn.Module, args: tuple, kwargs: dict) -> fx.Proxy | None:
    """The ``call_module`` proxy of ``module`` when an ``fx`` tracer is tracing its parent, else ``None``.

    What a forward that checks for tracing itself (see :func:`checks_fx_itself`) calls when its input
    is not a plain tensor. Traced as the root itself (no parent to hold it), ``None``: the body is traced.
    """
    tracer = _tracer_of(args, kwargs)
    if tracer is not None:
        path = tracer.path_of_module(module)
        if path:
            return tracer.create_proxy("call_module", path, args, kwargs)
    return None


def checks_fx_itself(forward: Callable) -> Callable:
    """Mark a ``forward`` that calls :func:`leaf_proxy` itself for non-tensor inputs, so the module base
    does not wrap it in :func:`fx_leaf_forward` (one Python frame less on the hot path)."""
    forward.checks_fx_itself = True
    return forward


def fx_leaf_forward(forward: Callable) -> Callable:
    """Wrap a module's ``forward`` so that any ``torch.fx`` tracer records the module as one leaf.

    A dropout module draws its mask when it runs and may advance a counter; tracing through it would
    bake one trace-time decision (training flag, counters) into the graph. As a ``call_module``
    node it keeps its own state, ``train()``/``eval()`` and ``state_dict``, as torch's dropout
    modules do under fx. Traced as the root itself (no parent to hold it), the body is traced.
    """

    @functools.wraps(forward)
    def leaf_forward(self, *args, **kwargs):
        if args and type(args[0]) is torch.Tensor:  # the common case, checked first: no tracing
            return forward(self, *args, **kwargs)
        proxy = leaf_proxy(self, args, kwargs)
        return proxy if proxy is not None else forward(self, *args, **kwargs)

    return leaf_forward


def fx_traceable(fn: Callable) -> Callable:
    """Wrap a functional op so that a call on an ``fx.Proxy`` is recorded as one ``call_function`` node."""

    @functools.wraps(fn)
    def traceable(*args, **kwargs):
        if args and type(args[0]) is torch.Tensor:  # the common case, checked first: no tracing
            return fn(*args, **kwargs)
        tracer = _tracer_of(args, kwargs)
        if tracer is not None:
            return tracer.create_proxy("call_function", fn, args, kwargs)
        return fn(*args, **kwargs)

    return traceable
