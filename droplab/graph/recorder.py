"""The one call recorder: a :class:`~torch.overrides.TorchFunctionMode` that sees a model's torch calls and
attributes each to the module whose forward issued it.

Every place droplab watches a model run uses :class:`CallRecorder`: the probe forward that finds functional
dropout sites and random ops (:mod:`droplab.graph.probe`), the routing of calls that cannot be replaced
directly (:mod:`droplab.graph.routing`), Monte-Carlo sampling of functional sites (:mod:`droplab.mc`), the
function-level capture behind ``lint`` (:mod:`droplab.graph.dataflow`) and the guards
(:mod:`droplab.guards`). What differs between them is a handler, not a copy of the mode.

Attribution. :func:`module_stack` keeps, with a forward pre-hook and hook on every module, the stack of
running modules. A dropout call (a call form of :mod:`droplab.graph.forms`) issued while module ``M``
runs is ``M``'s call; its *index* is its ordinal among ``M``'s dropout calls in one pass of the model
(the site's name is ``"<path of M>#<index>"``) and its *position* the ordinal within the current
invocation of ``M``'s forward (the two differ only for a module run several times in one pass). Calls
made inside a dropout module (torch's, droplab's, or a class with a conversion rule) belong to that
module site and are not functional sites.

Cost. While a recorder is active every torch call pays one Python-level dispatch; :func:`routing_counts`
counts them (and the dropout calls droplab drew through routing), so benchmarks can report it.
"""

from __future__ import annotations

import contextlib
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch.nn.functional as TF
from torch import nn
from torch.overrides import TorchFunctionMode

from .forms import Call, bind
from .walker import is_dropout_module

__all__ = ["Frame", "ModuleStack", "module_stack", "DropoutCall", "CallRecorder", "routing_suspended",
           "routing_is_suspended", "RoutingCounts", "routing_counts", "unwrapped_multi_head_attention"]


@dataclass
class Frame:
    """One running forward: the module, its path, and the dropout calls this invocation made so far."""

    path: str
    module: nn.Module
    invocation: int = 0  #: how many times this module's forward ran before, in this pass
    calls: int = 0


@dataclass
class ModuleStack:
    """The modules whose forward is running (innermost last) and what ran in the current pass.

    ``ordinals`` counts each module's dropout calls in the pass (the ``#index`` of its sites),
    ``invocations`` its forwards; :meth:`new_pass` resets both.
    """

    frames: list[Frame] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)  #: paths of every module that ran, over all passes
    ordinals: dict[str, int] = field(default_factory=dict)
    invocations: dict[str, int] = field(default_factory=dict)

    @property
    def current(self) -> Frame | None:
        """The innermost running forward, or None outside the model."""
        return self.frames[-1] if self.frames else None

    def push(self, path: str, module: nn.Module) -> None:
        """A forward of ``module`` (at ``path``) starts."""
        invocation = self.invocations.get(path, 0)
        self.invocations[path] = invocation + 1
        self.frames.append(Frame(path, module, invocation))
        self.ran.add(path)

    def pop(self) -> None:
        """The innermost forward ends."""
        if self.frames:
            self.frames.pop()

    def next_index(self, frame: Frame) -> tuple[int, int]:
        """``(index in the pass, position in this invocation)`` of ``frame``'s next dropout call."""
        index = self.ordinals.get(frame.path, 0)
        self.ordinals[frame.path] = index + 1
        position, frame.calls = frame.calls, frame.calls + 1
        return index, position

    def new_pass(self) -> None:
        """Number calls and invocations from 0 again (a new forward pass of the model)."""
        self.ordinals.clear()
        self.invocations.clear()


class _Push:
    def __init__(self, stack: ModuleStack, path: str) -> None:
        self.stack, self.path = stack, path

    def __call__(self, module, args) -> None:
        self.stack.push(self.path, module)


class _Pop:
    def __init__(self, stack: ModuleStack) -> None:
        self.stack = stack

    def __call__(self, module, args, output) -> None:
        self.stack.pop()


@contextlib.contextmanager
def module_stack(model: nn.Module) -> Iterator[ModuleStack]:
    """Keep the :class:`ModuleStack` of ``model`` while the block runs (hooks removed on exit).

    ``always_call=True`` pops the frame of a forward that raises too. A module registered at several
    paths is known by the first (``named_modules`` order).
    """
    stack = ModuleStack()
    handles = []
    try:
        for path, module in model.named_modules():
            handles.append(module.register_forward_pre_hook(_Push(stack, path)))
            handles.append(module.register_forward_hook(_Pop(stack), always_call=True))
        yield stack
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class DropoutCall:
    """A dropout call a :class:`CallRecorder` met, with who issued it."""

    call: Call  #: the call form and its bound arguments
    func: Callable
    args: tuple
    kwargs: dict
    frame: Frame | None  #: the issuing module's running forward (None: issued outside every module)
    index: int  #: ordinal among the issuer's dropout calls in this pass
    position: int  #: ordinal within the issuer's current invocation

    @property
    def issuer(self) -> str:
        """The issuing module's path ("" for the model itself, or outside it)."""
        return self.frame.path if self.frame is not None else ""

    @property
    def name(self) -> str:
        """The site's name, ``"<issuer>#<index>"``."""
        return f"{self.issuer}#{self.index}"

    def run(self):
        """Run the call as torch would."""
        return self.func(*self.args, **self.kwargs)


Handler = Callable[[DropoutCall], object]
CallHandler = Callable[[Callable, tuple, dict], object]


class _Counts(threading.local):
    intercepted = 0
    routed = 0


_COUNTS = _Counts()


@dataclass(frozen=True)
class RoutingCounts:
    """Counters of this thread since the process started (take differences around the code measured)."""

    intercepted: int  #: torch calls a droplab call recorder saw (each paid a Python-level dispatch)
    routed: int  #: dropout calls droplab drew in place of torch's after :func:`droplab.convert`


def routing_counts() -> RoutingCounts:
    """How many torch calls droplab's recorders intercepted and how many dropout calls it routed (this thread).

    A converted model whose functional sites are all replaced directly intercepts nothing in its
    training step. Example::

        >>> before = routing_counts()
        >>> _ = torch.nn.functional.relu(torch.ones(2))
        >>> routing_counts().intercepted - before.intercepted
        0
    """
    return RoutingCounts(_COUNTS.intercepted, _COUNTS.routed)


def count_routed() -> None:
    """Count one dropout call drawn by droplab through routing (see :func:`routing_counts`)."""
    _COUNTS.routed += 1


class CallRecorder(TorchFunctionMode):
    """A torch function mode that hands every dropout call to ``on_dropout`` and every other call to ``on_call``.

    Args:
        stack: the running modules (:func:`module_stack`), which name a call's issuer; None: calls are
            attributed to ``issuer`` (a fixed frame), or to nobody.
        on_dropout: ``handler(DropoutCall) -> result`` for each dropout call that is a site (an element-wise
            form at any rate, attention with ``dropout_p > 0``) made outside a dropout module; default: run it.
        on_call: ``handler(func, args, kwargs) -> result`` for every other call; default: run it.
        issuer: the frame calls belong to when there is no ``stack``.
        unwrap_attention: run ``F.multi_head_attention_forward`` unwrapped, so the dropout inside
            ``nn.MultiheadAttention`` reaches the handler (False: it is one call). Default: True.
    """

    def __init__(self, stack: ModuleStack | None = None, *, on_dropout: Handler | None = None,
                 on_call: CallHandler | None = None, issuer: Frame | None = None,
                 unwrap_attention: bool = True) -> None:
        super().__init__()
        self.stack, self.issuer = stack, issuer
        self.on_dropout, self.on_call = on_dropout, on_call
        self.unwrap_attention = unwrap_attention

    def __torch_function__(self, func, types, args=(), kwargs=None):
        _COUNTS.intercepted += 1
        kwargs = kwargs or {}
        if func is TF.multi_head_attention_forward and self.unwrap_attention:
            with self:
                return unwrapped_multi_head_attention()(*args, **kwargs)
        if self.on_dropout is not None:
            call = bind(func, args, kwargs)
            if call is not None and call.is_site:
                frame = self.stack.current if self.stack is not None else self.issuer
                if frame is None or not is_dropout_module(frame.module):
                    index, position = self.stack.next_index(frame) if self.stack is not None and frame \
                        else _local_index(frame)
                    return self.on_dropout(DropoutCall(call, func, args, kwargs, frame, index, position))
        if self.on_call is not None:
            return self.on_call(func, args, kwargs)
        return func(*args, **kwargs)


def _local_index(frame: Frame | None) -> tuple[int, int]:
    if frame is None:
        return 0, 0
    position, frame.calls = frame.calls, frame.calls + 1
    return position, position


_STATE = threading.local()


@contextlib.contextmanager
def routing_suspended() -> Iterator[None]:
    """Converted models leave their dropout calls to torch (or to an outer recorder) inside the block."""
    previous = getattr(_STATE, "suspended", False)
    _STATE.suspended = True
    try:
        yield
    finally:
        _STATE.suspended = previous


def routing_is_suspended() -> bool:
    """True inside :func:`routing_suspended` (this thread)."""
    return getattr(_STATE, "suspended", False)


_MHA_CLONE: list[Callable] = []


def unwrapped_multi_head_attention() -> Callable:
    """``F.multi_head_attention_forward`` without its own ``__torch_function__`` check.

    A mode that wants to see the dropout ``nn.MultiheadAttention`` issues inside this function calls
    the clone: it runs the same code, and the ``scaled_dot_product_attention``/``dropout`` calls in it
    still dispatch to the mode (the clone only skips the outer re-dispatch, which would recurse).
    """
    if not _MHA_CLONE:
        original = TF.multi_head_attention_forward
        scope = dict(original.__globals__)
        scope["has_torch_function"] = lambda *args: False
        clone = types.FunctionType(original.__code__, scope, original.__name__, original.__defaults__,
                                   original.__closure__)
        clone.__kwdefaults__ = original.__kwdefaults__
        _MHA_CLONE.append(clone)
    return _MHA_CLONE[0]
