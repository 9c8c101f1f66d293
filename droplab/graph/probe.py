"""The probe forward: which functional dropout calls a model makes, which module issues each, and which random
ops are not dropout.

:func:`probe` runs one forward of the model on an example input under a
:class:`~droplab.graph.recorder.CallRecorder` and returns

* the functional dropout sites (:class:`CallSite`): every call form of :mod:`droplab.graph.forms` made
  outside a dropout module, named ``"<issuing module>#<i>"``;
* the random ops it met (:class:`RandomOp`): ``torch.rand``, ``bernoulli`` with a tensor of probabilities,
  and every ``Tensor.bernoulli_(q)`` whose result is not a keep mask. A ``bernoulli_`` result is a keep
  mask when, after an optional scaling by a number (timm's ``div_(keep_prob)``), it multiplies a tensor
  that did not come from it (the activations); anything else it feeds (a max-pool, ``1 - mask``) makes
  it a random op, listed with the reason;
* the paths of the modules that ran.

Probe conditions: every module but normalization layers is in training mode (libraries pass ``p if
self.training else 0``); droplab modules are in eval mode so they draw nothing; ``torch.no_grad``;
converted models' routing is suspended, so the calls are seen as torch's. Torch's generator, every
buffer and every training flag are restored afterwards.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from ..nn import StochasticModule
from .forms import random_op_name
from .model_io import call_model
from .recorder import CallRecorder, DropoutCall, module_stack, routing_suspended
from .walker import is_dropout_module

__all__ = ["CallSite", "RandomOp", "ProbeResult", "probe", "probe_sites", "probe_conditions"]


@dataclass(frozen=True)
class CallSite:
    """A functional dropout call found by a probe forward."""

    name: str  #: "<issuing module path>#<i>"
    kind: str  #: the call form, e.g. "F.scaled_dot_product_attention"
    p: float
    scaling: str  #: "inverted", or "noise" for the alpha forms
    training: bool  #: whether the call dropped anything in the probe (training flag and p > 0)
    module: nn.Module  #: the issuing module
    index: int  #: i, the call's index among its module's dropout calls in one pass
    position: int = 0  #: its index within one run of the module's forward
    invocation: int = 0  #: which run of the module's forward made it (0: the first)


@dataclass(frozen=True)
class RandomOp:
    """A random op a probe forward met that droplab does not treat as dropout, and why."""

    name: str  #: "<issuing module path>#<i>" (a ``bernoulli_`` call form) or "<path>#random<j>"
    kind: str  #: the op, e.g. "Tensor.bernoulli_"
    reason: str
    module: nn.Module  #: the issuing module


@dataclass
class ProbeResult:
    """What one probe forward saw."""

    calls: list[CallSite] = field(default_factory=list)
    random_ops: list[RandomOp] = field(default_factory=list)
    ran: set[str] = field(default_factory=set)


# ----------------------------------------------------------------------------------------- keep masks

_METADATA = {"__get__", "dim", "size", "numel", "element_size", "is_contiguous", "stride", "ndimension",
             "nelement", "data_ptr", "is_floating_point", "get_device", "__len__", "__format__", "__repr__"}
_SAME_VALUES = {"to", "type", "float", "double", "half", "bfloat16", "contiguous", "expand", "expand_as", "view",
                "view_as", "reshape", "reshape_as", "clone", "detach"}
_SCALES = {"div", "div_", "mul", "mul_", "true_divide", "__truediv__", "__itruediv__", "__mul__", "__rmul__",
           "__imul__"}
_MULTIPLIES = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


_UNUSED = "its result never multiplies the activations"


class _KeepMasks:
    """Follows each ``bernoulli_`` result through the probe until it multiplies activations or feeds anything else."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (draw, tensor, kept alive)
        self.verdict: dict[int, str | None] = {}  # draw -> None (a keep mask) or the reason it is not

    def add(self, draw: int, tensor: torch.Tensor) -> None:
        self.verdict[draw] = _UNUSED
        self.pending[id(tensor)] = (draw, tensor)

    def observe(self, func, args: tuple, kwargs: dict, out) -> None:
        if not self.pending:
            return
        operands = [a for a in (*args, *kwargs.values()) if isinstance(a, (torch.Tensor, numbers.Number))]
        mine = [self.pending[id(a)][0] for a in operands if isinstance(a, torch.Tensor) and id(a) in self.pending]
        if not mine:
            return
        name = _name(func)
        if name in _METADATA:
            return
        others = [a for a in operands if not (isinstance(a, torch.Tensor) and id(a) in self.pending)]
        for draw in mine:
            self._judge(draw, name, others, out)

    def _judge(self, draw: int, name: str, others: list, out) -> None:
        follow = isinstance(out, torch.Tensor)
        if name in _SAME_VALUES or (name in _SCALES and all(isinstance(o, numbers.Number) for o in others)):
            if follow:
                self.pending[id(out)] = (draw, out)  # still the mask, rescaled or viewed
            return
        if name in _MULTIPLIES and any(isinstance(o, torch.Tensor) and o.dim() > 0 for o in others):
            if self.verdict[draw] is _UNUSED:
                self.verdict[draw] = None  # it scales the activations: a keep mask
            return
        self.verdict[draw] = f"its result feeds {name.strip('_')}, not a product with the activations"


# ------------------------------------------------------------------------------------------- probe

class _Probe:
    def __init__(self, stack, result: ProbeResult) -> None:
        self.stack, self.result = stack, result
        self.masks = _KeepMasks()
        self.events: list[tuple[CallSite, int | None]] = []  # every call in order; bernoulli_ ones with their draw
        self.random_counts: dict[str, int] = {}

    def on_dropout(self, event: DropoutCall):
        call, frame = event.call, event.frame
        scaling = "noise" if "alpha" in call.form.name else "inverted"
        site = CallSite(event.name, call.form.name, call.p, scaling, call.active,
                        frame.module if frame is not None else None, event.index, event.position,
                        frame.invocation if frame is not None else 0)
        out = event.run()
        draw = len(self.events) if call.fills else None
        self.events.append((site, draw))
        if draw is not None:
            self.masks.add(draw, out)
        return out

    def on_call(self, func, args, kwargs):
        out = func(*args, **kwargs)
        self.masks.observe(func, args, kwargs, out)
        kind = random_op_name(func)
        frame = self.stack.current
        if kind is not None and frame is not None and not is_dropout_module(frame.module):
            j = self.random_counts.get(frame.path, 0)
            self.random_counts[frame.path] = j + 1
            self.result.random_ops.append(RandomOp(f"{frame.path}#random{j}", kind, _random_reason(func, args, kwargs),
                                                   frame.module))
        return out

    def finish(self) -> None:
        for site, draw in self.events:
            reason = None if draw is None else self.masks.verdict[draw]
            if reason is None:
                self.result.calls.append(site)
            else:
                self.result.random_ops.append(RandomOp(site.name, site.kind, f"bernoulli_({1 - site.p:.4g}): {reason}",
                                                       site.module))


def _random_reason(func, args: tuple, kwargs: dict) -> str:
    if func in (torch.Tensor.bernoulli_, torch.Tensor.bernoulli, torch.bernoulli):
        if kwargs.get("generator") is not None or (len(args) > 2 and args[2] is not None):
            return "draws from an explicit generator"
        probs = args[1] if len(args) > 1 else kwargs.get("p", args[0] if func is torch.bernoulli else None)
        if isinstance(probs, torch.Tensor):
            return "its probabilities are a tensor, so droplab cannot tell a keep mask from any other draw"
        return "keeps everything (probability 1)"
    return "droplab cannot tell whether a uniform draw becomes a keep mask"


@contextlib.contextmanager
def _buffers_restored(model: nn.Module) -> Iterator[None]:
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def _probe_modes(model: nn.Module, training: bool) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.train(training)
        for module in model.modules():
            if isinstance(module, (nn.modules.batchnorm._NormBase, StochasticModule)):
                module.eval()
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextlib.contextmanager
def probe_conditions(model: nn.Module, *, training: bool = True) -> Iterator[None]:
    """The probe's modes (see the module docstring), ``torch.no_grad``, and torch's generator and every buffer
    restored on exit. Routing is not suspended here (:func:`probe` does that)."""
    devices = sorted({t.device.index or 0 for t in model.parameters() if t.device.type == "cuda"})
    with _probe_modes(model, training), _buffers_restored(model), torch.no_grad(), \
            torch.random.fork_rng(devices=devices):
        yield


def probe(model: nn.Module, example_input, *, training: bool = True) -> ProbeResult:
    """Run one forward of ``model`` on ``example_input`` (a tensor, a tuple of arguments or a mapping of
    keyword arguments) and return what it saw (see the module docstring).

    ``training=False`` runs it with every module in eval mode instead: the calls it still finds are active
    whatever the model's mode (a hard-coded ``training=True``).
    """
    result = ProbeResult()
    with probe_conditions(model, training=training), routing_suspended(), module_stack(model) as stack:
        state = _Probe(stack, result)
        with CallRecorder(stack, on_dropout=state.on_dropout, on_call=state.on_call):
            call_model(model, example_input)
        state.finish()
    result.ran = set(stack.ran)
    return result


def probe_sites(model: nn.Module, example_input) -> list[CallSite]:
    """The functional dropout calls one forward of ``model`` on ``example_input`` makes (see :func:`probe`)."""
    return probe(model, example_input).calls

