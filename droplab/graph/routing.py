"""Routing: after :func:`droplab.convert`, the functional dropout calls a probe found are drawn by droplab.

Each issuing module gets a droplab module per call position (the dropout child it reads its rate from,
Hugging Face's ``self.dropout``, or a new child ``dropout_call<i>``) and one of two routes:

* **direct** (the default): the module's forward is replaced, on the instance, by a copy whose dropout
  calls by name lead to droplab (:mod:`droplab.graph.rewire`). Nothing intercepts the model's other torch
  calls; a routed call costs one Python call more than torch's.
* **intercepted**: where a verification forward shows that a copy does not reach every call (a
  ``Tensor.bernoulli_`` keep mask, a helper reached through ``self``), a
  :class:`~droplab.graph.recorder.CallRecorder` is active during the module's forward, and only while a
  routed call can happen: in training mode, or in any mode for a module whose calls are active in eval
  too (a hard-coded ``training=True``, found by a second probe in eval mode).

What a routed call draws. The call's own arguments decide, at each call: an inactive call (training
flag False, or ``p = 0``) runs as torch's; an active one is drawn by the attached droplab module at the
``p`` the call passes, unless the site's rate was set through droplab (:func:`droplab.set_rate`, a
:class:`droplab.DropoutScheduler`), which then wins from that moment on (:func:`mark_rate_set`). The
attached module's ``p`` follows the calls, so :func:`droplab.sites` shows the rate last used. The
module's counters (seed and step, or a fresh key from torch's generator when unseeded) draw the mask,
and backward regenerates it.

Routes are plain objects: a converted model deep-copies and pickles, and its ``state_dict`` gains only
what the attached modules hold (nothing when unseeded).
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .. import nn as dnn
from .forms import Call, attention_math, bind
from .model_io import call_model
from .probe import CallSite, ProbeResult, probe_conditions
from .recorder import CallRecorder, DropoutCall, Frame, count_routed, routing_is_suspended
from .rewire import rewired, set_router

__all__ = ["Routes", "attach_routers", "detach_routers", "routed_site", "mark_rate_set", "rate_is_set",
           "DROPLAB_CLASS"]

#: the droplab module a call form is routed to
DROPLAB_CLASS = {"F.dropout": dnn.Dropout, "torch.dropout": dnn.Dropout, "F.scaled_dot_product_attention": dnn.Dropout,
                 "F.dropout1d": dnn.Dropout1d, "F.dropout2d": dnn.Dropout2d, "F.dropout3d": dnn.Dropout3d,
                 "F.alpha_dropout": dnn.AlphaDropout, "torch.alpha_dropout": dnn.AlphaDropout,
                 "F.feature_alpha_dropout": dnn.FeatureAlphaDropout,
                 "torch.feature_alpha_dropout": dnn.FeatureAlphaDropout, "Tensor.bernoulli_": dnn.Dropout}
_ROUTES = "_droplab_routes"  # on an issuing module: its Routes
_RATE_SET = "_droplab_rate_set"  # on an attached droplab module: its rate was set through droplab


@dataclass
class Routes:
    """An issuing module's routed calls."""

    names: list[str | None]  #: the attached child of each call position of one forward (None: left to torch)
    direct: bool  #: replaced directly (a rewired forward) rather than intercepted
    always: bool = False  #: (intercepted) some call is active in eval mode too


def mark_rate_set(module: nn.Module) -> None:
    """Record that ``module``'s rate was set through droplab: as a routed site, it now wins over the call's ``p``."""
    module.__dict__[_RATE_SET] = True


def rate_is_set(module: nn.Module) -> bool:
    """Whether :func:`mark_rate_set` was called on ``module``."""
    return bool(module.__dict__.get(_RATE_SET, False))


def routed_site(module: nn.Module, position: int) -> nn.Module | None:
    """The droplab module that draws call ``position`` of ``module``'s forward after convert, or None."""
    routes = module.__dict__.get(_ROUTES)
    if routes is None or position >= len(routes.names) or routes.names[position] is None:
        return None
    return getattr(module, routes.names[position])  # a child of the issuing module


# ------------------------------------------------------------------------------------------- drawing

class _Context(threading.local):
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.passing = False  # a routed module runs torch's own call: outer interceptions leave it alone
        self.verify: dict[int, int] | None = None  # verification forward: calls that reached a router, by module


_CTX = _Context()


def _pass(original: Callable, args: tuple, kwargs: dict):
    previous, _CTX.passing = _CTX.passing, True
    try:
        return original(*args, **kwargs)
    finally:
        _CTX.passing = previous


def _draw(module: nn.Module, position: int, call: Call, original: Callable, args: tuple, kwargs: dict):
    site = routed_site(module, position)
    if site is None or not call.active:
        return _pass(original, args, kwargs)
    count_routed()
    p = site.p if rate_is_set(site) else call.p
    if site.p != p:
        site.p = p  # the site shows the rate the call passes
    if site.training:
        return _run(site, call)
    site.training = True  # the call is active (it said so), whatever the attached module's own mode
    try:
        return _run(site, call)
    finally:
        site.training = False


def _run(site: nn.Module, call: Call):
    if call.form.droplab is None:
        return attention_math(call, site)
    input = call.input
    if call.fills:  # bernoulli_(keep): 1 where the droplab module keeps
        return input.copy_(site(torch.ones_like(input)) != 0)
    out = site(input)
    return input.copy_(out) if call.arguments.get("inplace", False) else out


def _decide(original: Callable, args: tuple, kwargs: dict):
    """What every router runs: torch's call, unless the running routed forward routes it."""
    frames = _CTX.frames
    if not frames or routing_is_suspended() or _CTX.passing:
        return original(*args, **kwargs)
    call = bind(original, args, kwargs)
    if call is None or not call.is_site:
        return _pass(original, args, kwargs)
    frame = frames[-1]
    position, frame.calls = frame.calls, frame.calls + 1
    if _CTX.verify is not None:
        _CTX.verify[id(frame.module)] = _CTX.verify.get(id(frame.module), 0) + 1
        return _pass(original, args, kwargs)
    return _draw(frame.module, position, call, original, args, kwargs)


set_router(_decide)


class RoutedForward:
    """A module's forward with its dropout calls routed directly (set on the instance by :func:`attach_routers`)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @property
    def __signature__(self) -> inspect.Signature:
        """The module's own forward signature (libraries inspect ``module.forward``)."""
        return inspect.signature(type(self.module).forward.__get__(self.module))

    def __call__(self, *args, **kwargs):
        module = self.module
        _CTX.frames.append(Frame("", module))
        try:
            forward = type(module).forward
            return (rewired(forward) or forward)(module, *args, **kwargs)
        finally:
            _CTX.frames.pop()


class _EnterRoute:
    """Forward pre-hook of an intercepted issuer: enter its recorder while a routed call can happen."""

    def __call__(self, module: nn.Module, args) -> None:
        stack = _CTX.__dict__.setdefault("modes", [])
        routes = module.__dict__.get(_ROUTES)
        mode = None
        if routes is not None and (module.training or routes.always) and not routing_is_suspended():
            frame = Frame("", module)
            mode = CallRecorder(on_dropout=_intercepted, issuer=frame)
            mode.__enter__()
        stack.append(mode)


class _ExitRoute:
    def __call__(self, module: nn.Module, args, output) -> None:
        stack = _CTX.__dict__.get("modes")
        mode = stack.pop() if stack else None
        if mode is not None:
            mode.__exit__(None, None, None)


def _intercepted(event: DropoutCall):
    if _CTX.passing or routing_is_suspended():
        return event.run()
    if _CTX.verify is not None:
        return event.run()
    return _draw(event.frame.module, event.position, event.call, event.func, event.args, event.kwargs)


# ----------------------------------------------------------------------------------------- attaching

def _attached(module: nn.Module, site: CallSite, taken: set[str], called: set[int]) -> str | None:
    """The dropout child the call reads its rate from: same class after conversion, same p, not called."""
    wanted = DROPLAB_CLASS[site.kind]
    for name, child in module.named_children():
        if name not in taken and type(child) is wanted and id(child) not in called and child.p == site.p:
            return name
    return None


def _attach_children(model: nn.Module, result: ProbeResult,
                     seed: int | None) -> tuple[dict[int, nn.Module], int]:
    """Give every issuer its attached droplab modules and a :class:`Routes`; the issuers and how many modules
    were created."""
    by_module: dict[int, tuple[nn.Module, list[CallSite]]] = {}
    for site in result.calls:
        if site.invocation == 0:  # later runs of the same forward reuse the first run's sites
            by_module.setdefault(id(site.module), (site.module, []))[1].append(site)
    paths = {id(m): name for name, m in model.named_modules()}
    called = {id(m) for m in model.modules() if paths.get(id(m)) in result.ran}
    bernoulli = {id(op.module) for op in result.random_ops  # a bernoulli_ call form that is no keep mask
                 if op.kind == "Tensor.bernoulli_" and "#random" not in op.name}
    created = 0
    for module, its_calls in by_module.values():
        detach_routers(module, recurse=False)
        names: list[str | None] = [None] * (1 + max(s.position for s in its_calls))
        for site in sorted(its_calls, key=lambda s: s.position):
            name = _attached(module, site, {n for n in names if n}, called)
            if name is None:
                name = f"dropout_call{site.position}"
                new = DROPLAB_CLASS[site.kind](site.p, seed=None if seed is None else seed + created)
                created += 1
                new.train(module.training)
                module.add_module(name, new)
            names[site.position] = name
        direct = not any(s.kind == "Tensor.bernoulli_" for s in its_calls) and id(module) not in bernoulli \
            and "forward" not in module.__dict__ and rewired(type(module).forward) is not None
        module.__dict__[_ROUTES] = Routes(names, direct)
    return {id(m): m for m, _ in by_module.values()}, created


def _install(module: nn.Module) -> None:
    routes = module.__dict__[_ROUTES]
    if routes.direct:
        module.__dict__["forward"] = RoutedForward(module)
    else:
        module.register_forward_pre_hook(_EnterRoute())
        module.register_forward_hook(_ExitRoute(), always_call=True)


def _verify(model: nn.Module, example_input, issuers: dict[int, nn.Module], result: ProbeResult) -> None:
    """Switch to interception every direct issuer whose rewired forward did not reach all of its calls."""
    direct = [m for m in issuers.values() if m.__dict__[_ROUTES].direct]
    if not direct:
        return
    expected: dict[int, int] = {}
    for site in result.calls:
        expected[id(site.module)] = expected.get(id(site.module), 0) + 1
    _CTX.verify = {}
    try:
        with probe_conditions(model):
            call_model(model, example_input)
        reached = _CTX.verify
    finally:
        _CTX.verify = None
    for module in direct:
        if reached.get(id(module), 0) != expected.get(id(module), 0):
            module.__dict__.pop("forward", None)
            module.__dict__[_ROUTES].direct = False
            _install(module)


def attach_routers(model: nn.Module, result: ProbeResult, example_input, seed: int | None) -> int:
    """Attach droplab modules and routes to every module that issues the calls ``result`` found.

    ``seed``: the first seed of attached modules created here (``seed + i``), None for unseeded. Returns
    how many modules were created. ``example_input`` runs the verification forward (and, for intercepted
    issuers, the eval-mode probe that finds calls active in eval).
    """
    issuers, created = _attach_children(model, result, seed)
    for module in issuers.values():
        _install(module)
    _verify(model, example_input, issuers, result)
    intercepted = [m for m in issuers.values() if not m.__dict__[_ROUTES].direct]
    if intercepted:
        from .probe import probe

        in_eval = {id(s.module) for s in probe(model, example_input, training=False).calls if s.training}
        for module in intercepted:
            module.__dict__[_ROUTES].always = id(module) in in_eval
    return created


def detach_routers(model: nn.Module, *, recurse: bool = True) -> None:
    """Remove the routes :func:`attach_routers` installed (attached modules stay)."""
    for module in model.modules() if recurse else [model]:
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(hook, (_EnterRoute, _ExitRoute))]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)
        if isinstance(module.__dict__.get("forward"), RoutedForward):
            del module.__dict__["forward"]
        module.__dict__.pop(_ROUTES, None)
