"""Direct replacement of functional dropout calls: a copy of a function whose torch names lead to droplab's routers.

A module's forward that calls ``F.dropout(...)``, ``nn.functional.dropout(...)``, ``torch.dropout(...)``,
``F.scaled_dot_product_attention(..., dropout_p=...)``, or a library function that does (Hugging Face's
``eager_attention_forward`` and the attention interface of ``ALL_ATTENTION_FUNCTIONS``, torch's
``F.multi_head_attention_forward``), reaches those functions through its module's global names.
:func:`rewired` returns a copy of such a function (same code, closure, defaults) whose globals resolve

* ``torch``, ``torch.nn`` and ``torch.nn.functional`` (under whatever names the module imported them)
  to copies of those modules in which the dropout call forms are routers;
* a dropout function imported by name (``from torch.nn.functional import dropout``) to its router;
* a helper function of a library that makes such calls to its own rewired copy, and Hugging Face's
  attention interface registry to a view that hands out rewired attention functions;

every other name to the module's own globals, looked up at call time. A router
(:func:`set_router` installs the function that decides) runs torch's function unchanged unless the
running forward routes that call. No ``__torch_function__`` mode is involved: a converted model pays one
Python call per routed call, nothing per other torch call.

Calls a copy cannot reach (a method such as ``Tensor.bernoulli_``, a helper reached through ``self``
or a container) are found by a verification forward in :mod:`droplab.graph.routing`, which then
intercepts that module's calls instead.
"""

from __future__ import annotations

import functools
import threading
import types
from collections.abc import Callable

import torch
import torch.nn.functional as TF

from .forms import CALL_FORMS

__all__ = ["rewired", "set_router", "ROUTED_FUNCTIONS"]

#: the functions a router replaces (every call form reached by name: not ``Tensor.bernoulli_``)
ROUTED_FUNCTIONS: tuple[Callable, ...] = tuple(f for f in CALL_FORMS if f is not torch.Tensor.bernoulli_)
_ROUTED_NAMES = {f.__name__ for f in ROUTED_FUNCTIONS} | {"multi_head_attention_forward"}
_TORCH_MODULES = (torch, torch.nn, TF)
_LOCK = threading.RLock()
_ROUTER: list[Callable] = [lambda original, args, kwargs: original(*args, **kwargs)]  # until routing installs its own


def set_router(decide: Callable) -> None:
    """Install ``decide(original, args, kwargs)``, which every router calls (see :mod:`droplab.graph.routing`)."""
    _ROUTER[:] = [decide]


def _router(original: Callable) -> Callable:
    @functools.wraps(original)
    def route(*args, **kwargs):
        return _ROUTER[0](original, args, kwargs)
    route.__droplab_router__ = original
    return route


class _Namespace(types.ModuleType):
    """A copy of a torch module with some names replaced; names added to the real module later still resolve."""

    def __init__(self, real: types.ModuleType, overrides: dict) -> None:
        super().__init__(real.__name__, real.__doc__)
        self.__dict__.update(real.__dict__)
        self.__dict__.update(overrides)
        self.__dict__["__droplab_real__"] = real

    def __getattr__(self, name: str):
        return getattr(self.__dict__["__droplab_real__"], name)


_PROXIES: dict[int, object] = {}
_CLONES: dict[Callable, Callable | None] = {}


def _proxies() -> dict[int, object]:
    """``id(real module) -> namespace`` for torch, torch.nn and torch.nn.functional (built once)."""
    if not _PROXIES:
        routers = {f: _router(f) for f in ROUTED_FUNCTIONS}
        functional = _Namespace(TF, {f.__name__: routers[f] for f in ROUTED_FUNCTIONS
                                     if getattr(TF, f.__name__, None) is f})
        mha = _clone(TF.multi_head_attention_forward, {"dropout": routers[TF.dropout],
                                                       "scaled_dot_product_attention":
                                                           routers[TF.scaled_dot_product_attention]})
        functional.__dict__["multi_head_attention_forward"] = mha
        nn_space = _Namespace(torch.nn, {"functional": functional})
        torch_space = _Namespace(torch, {**{f.__name__: routers[f] for f in ROUTED_FUNCTIONS
                                            if getattr(torch, f.__name__, None) is f}, "nn": nn_space})
        _PROXIES.update({id(torch): torch_space, id(torch.nn): nn_space, id(TF): functional})
        _PROXIES.update({id(f): routers[f] for f in ROUTED_FUNCTIONS})
        _PROXIES[id(TF.multi_head_attention_forward)] = mha
    return _PROXIES


class _Globals(dict):
    """A function's globals: the replaced names here, every other name from the module, at call time."""

    def __init__(self, base: dict, overrides: dict) -> None:
        super().__init__(overrides)
        self.base = base
        self["__builtins__"] = base.get("__builtins__", __builtins__)

    def __missing__(self, name: str):
        return self.base[name]


class _AttentionFunctions:
    """Hugging Face's ``ALL_ATTENTION_FUNCTIONS``, handing out rewired attention functions."""

    def __init__(self, real) -> None:
        self._real = real

    def get_interface(self, attn_implementation, default):
        return _rewired_or_same(self._real.get_interface(attn_implementation, default))

    def __getitem__(self, key):
        return _rewired_or_same(self._real[key])

    def __getattr__(self, name: str):
        return getattr(self._real, name)

    def __contains__(self, key) -> bool:
        return key in self._real


def _is_attention_registry(value: object) -> bool:
    return any(cls.__name__ == "AttentionInterface" for cls in type(value).__mro__) and hasattr(value, "get_interface")


def _names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _names(const)
    return names


def _replacement(value: object, names: set[str], seen: set[int]):
    """What global ``value`` becomes in a rewired function, or None to leave it."""
    proxies = _proxies()
    if isinstance(value, types.ModuleType):
        return proxies.get(id(value)) if id(value) in proxies and names & _ROUTED_NAMES else None
    if callable(value) and id(value) in proxies:
        return proxies[id(value)]
    if _is_attention_registry(value):
        return _AttentionFunctions(value)
    if isinstance(value, types.FunctionType) and not (value.__module__ or "").startswith(("torch", "droplab")):
        clone = _rewire(value, seen)
        return clone if clone is not value else None
    return None


def _overrides(fn: types.FunctionType, seen: set[int]) -> dict:
    names = _names(fn.__code__)
    found = {}
    for name in names:
        if name in fn.__globals__:
            new = _replacement(fn.__globals__[name], names, seen)
            if new is not None:
                found[name] = new
    return found


def _clone(fn: types.FunctionType, overrides: dict, closure=None) -> types.FunctionType:
    scope = _Globals(fn.__globals__, overrides) if overrides else fn.__globals__
    clone = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__,
                               fn.__closure__ if closure is None else closure)
    clone.__kwdefaults__ = fn.__kwdefaults__
    clone.__dict__.update(fn.__dict__)
    clone.__qualname__, clone.__module__, clone.__doc__ = fn.__qualname__, fn.__module__, fn.__doc__
    return clone


def _rewire(fn: types.FunctionType, seen: set[int]) -> types.FunctionType:
    """``fn`` itself when nothing in it reaches a dropout call by name, else its rewired copy (cached)."""
    if fn in _CLONES:
        return _CLONES[fn] or fn
    if id(fn) in seen:  # recursion: leave the inner reference as it is
        return fn
    seen = seen | {id(fn)}
    inner = getattr(fn, "__wrapped__", None)
    cells = fn.__closure__ or ()
    if isinstance(inner, types.FunctionType) and any(_holds(c, inner) for c in cells):
        new_inner = _rewire(inner, seen)
        closure = tuple(types.CellType(new_inner) if _holds(c, inner) else c for c in cells)
        clone = _clone(fn, _overrides(fn, seen), closure) if new_inner is not inner else None
        if clone is not None:
            clone.__wrapped__ = new_inner
    else:
        overrides = _overrides(fn, seen)
        clone = _clone(fn, overrides) if overrides else None
    _CLONES[fn] = clone
    return clone or fn


def _holds(cell, value) -> bool:
    try:
        return cell.cell_contents is value
    except ValueError:  # an empty cell
        return False


def _rewired_or_same(fn: Callable) -> Callable:
    return rewired(fn) or fn


def rewired(fn: Callable) -> Callable | None:
    """The copy of ``fn`` whose dropout calls by name go to droplab's routers, or None when ``fn`` makes none
    (or is not a Python function).

    Example::

        >>> def forward(x):
        ...     return torch.nn.functional.dropout(x, 0.5, False)
        >>> rewired(forward) is not None, rewired(len)
        (True, None)
    """
    clone = _CLONES.get(fn, fn)
    if clone is not fn:  # the common case, from a routed forward: no lock
        return clone
    if not isinstance(fn, types.FunctionType):
        return None
    with _LOCK:
        clone = _rewire(fn, set())
    return None if clone is fn else clone
