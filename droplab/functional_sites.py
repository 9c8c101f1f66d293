"""Functional dropout sites: found by a probe forward, drawn by droplab after :func:`droplab.convert`.

* :func:`probe_sites` runs one forward with a :class:`~droplab._calls.CallMode` that records every
  dropout call (:data:`droplab._calls.CALL_FORMS`) and the module that issued it.
* :func:`attach_routers` gives each issuing module a droplab module per call site (the dropout child
  it reads ``.p`` from, or a new one) and a forward pre-hook/hook pair that, while the module runs,
  routes its active calls to that droplab module. Hooks are plain objects, so a converted model
  deep-copies and pickles; the state_dict gains only what the attached modules hold (nothing when
  unseeded).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from . import nn as dnn
from ._calls import Call, CallMode, attention_math, issuing_modules, routing_is_suspended, routing_suspended
from ._modes import training_flags_restored
from .library_rules import LIBRARY_RULES

__all__ = ["CallSite", "probe", "probe_sites", "attach_routers", "detach_routers"]


@dataclass(frozen=True)
class CallSite:
    """A functional dropout call found by a probe forward."""

    name: str  #: "<issuing module path>#<i>"
    kind: str  #: the call form, e.g. "F.scaled_dot_product_attention"
    p: float
    scaling: str  #: "inverted", or "noise" for the alpha forms
    training: bool  #: whether the call dropped anything in the probe (training flag and p > 0)
    module: nn.Module  #: the issuing module
    index: int  #: i, the call's index in its module's forward


_MODULE_SITES = (nn.modules.dropout._DropoutNd, dnn.StochasticModule)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class _Recorder(CallMode):
    def __init__(self, stack: list[str], modules: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.stack, self.modules = stack, modules
        self.found: list[CallSite] = []
        self.counts: dict[str, int] = {}

    def on_call(self, func, call: Call, args, kwargs):
        issuer = self.stack[-1] if self.stack else ""
        module = self.modules[issuer]
        if isinstance(module, _MODULE_SITES) or _qualified(type(module)) in LIBRARY_RULES:
            return func(*args, **kwargs)  # a dropout module's own call: a module site
        index = self.counts.get(issuer, 0)
        self.counts[issuer] = index + 1
        scaling = "noise" if "alpha" in call.form.name else "inverted"
        self.found.append(CallSite(f"{issuer}#{index}", call.form.name, call.p, scaling, call.active,
                                   self.modules[issuer], index))
        return func(*args, **kwargs)


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _call(model: nn.Module, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def probe_sites(model: nn.Module, example_input) -> list[CallSite]:
    """The functional dropout calls one forward of ``model`` on ``example_input`` makes (see :func:`probe`)."""
    return probe(model, example_input)[0]


def probe(model: nn.Module, example_input) -> tuple[list[CallSite], set[str]]:
    """The functional dropout calls one forward of ``model`` on ``example_input`` makes, and the paths of
    the modules that ran.

    Every module but normalization layers is in training mode for the probe (libraries pass
    ``p if self.training else 0``); droplab modules are in eval mode so they draw nothing. Torch's
    generator, every buffer and every training flag are restored afterwards.
    """
    modules = dict(model.named_modules())
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with training_flags_restored(model.modules()), _buffers_restored(model), torch.no_grad(), \
            torch.random.fork_rng(devices=devices), routing_suspended(), issuing_modules(model) as stack:
        model.train()
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._NormBase, dnn.StochasticModule)):
                module.eval()
        recorder = _Recorder(stack, modules)
        with recorder:
            _call(model, example_input)
    return recorder.found, set(stack.ran)


# ------------------------------------------------------------------------------------ routing

_DROPLAB_CLASS = {"F.dropout": dnn.Dropout, "torch.dropout": dnn.Dropout, "F.scaled_dot_product_attention": dnn.Dropout,
                  "F.dropout1d": dnn.Dropout1d, "F.dropout2d": dnn.Dropout2d, "F.dropout3d": dnn.Dropout3d,
                  "F.alpha_dropout": dnn.AlphaDropout, "torch.alpha_dropout": dnn.AlphaDropout,
                  "F.feature_alpha_dropout": dnn.FeatureAlphaDropout,
                  "torch.feature_alpha_dropout": dnn.FeatureAlphaDropout, "Tensor.bernoulli_": dnn.Dropout}
_ATTRIBUTE = "_droplab_call_sites"  # on an issuing module: the child names of its call sites, by index
_LOCAL = threading.local()


class _Route(CallMode):
    """While an issuing module runs: its active dropout calls go to its attached droplab modules."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.index = 0

    def on_call(self, func, call: Call, args, kwargs):
        names = getattr(self.module, _ATTRIBUTE, [])
        index, self.index = self.index, self.index + 1
        if not call.active or not names:
            return func(*args, **kwargs)
        site = self.module.get_submodule(names[index % len(names)])
        if call.form.droplab is None:
            return attention_math(call, site)
        input = call.arguments[call.form.params[0]]
        if call.fills:  # bernoulli_(keep): 1 where the droplab module keeps
            return input.copy_(site(torch.ones_like(input)) != 0)
        return site(input)


class _EnterRoute:
    def __call__(self, module: nn.Module, args) -> None:
        stack = _LOCAL.__dict__.setdefault("routes", [])
        route = None if routing_is_suspended() else _Route(module)
        if route is not None:
            route.__enter__()
        stack.append(route)


class _ExitRoute:
    def __call__(self, module: nn.Module, args, output) -> None:
        stack = _LOCAL.__dict__.get("routes")
        route = stack.pop() if stack else None
        if route is not None:
            route.__exit__(None, None, None)


def _attached(module: nn.Module, site: CallSite, taken: set[str], called: set[int]) -> str | None:
    """The dropout child the call reads its rate from: same class after conversion, same p, not called."""
    wanted = _DROPLAB_CLASS[site.kind]
    for name, child in module.named_children():
        if name not in taken and type(child) is wanted and id(child) not in called and child.p == site.p:
            return name
    return None


def attach_routers(model: nn.Module, calls: list[CallSite], ran: set[str], seed: int | None) -> None:
    """Attach a droplab module and the routing hooks to every module that issues ``calls``.

    ``ran``: paths of the modules that ran in the probe (a dropout child that ran is a module site of
    its own, not the one a call reads its rate from). ``seed``: the first seed of attached modules
    created here (``seed + i``), None for unseeded.
    """
    by_module: dict[int, tuple[nn.Module, list[CallSite]]] = {}
    for site in calls:
        by_module.setdefault(id(site.module), (site.module, []))[1].append(site)
    paths = {id(m): name for name, m in model.named_modules()}
    called = {id(m) for m in model.modules() if paths.get(id(m)) in ran}
    created = 0
    for module, its_calls in by_module.values():
        detach_routers(module, recurse=False)
        names: list[str] = []
        for site in sorted(its_calls, key=lambda s: s.index):
            name = _attached(module, site, set(names), called)
            if name is None:
                name = f"dropout_call{site.index}"
                new = _DROPLAB_CLASS[site.kind](site.p, seed=None if seed is None else seed + created)
                created += 1
                new.train(module.training)
                module.add_module(name, new)
            names.append(name)
        setattr(module, _ATTRIBUTE, names)
        module.register_forward_pre_hook(_EnterRoute())
        module.register_forward_hook(_ExitRoute(), always_call=True)


def detach_routers(model: nn.Module, *, recurse: bool = True) -> None:
    """Remove the routing hooks :func:`attach_routers` installed (attached modules stay)."""
    for module in model.modules() if recurse else [model]:
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, hook in hooks.items() if isinstance(hook, (_EnterRoute, _ExitRoute))]:
                del hooks[key]
                module._forward_hooks_always_called.pop(key, None)
        module.__dict__.pop(_ATTRIBUTE, None)
