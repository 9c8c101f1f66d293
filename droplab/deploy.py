r"""Deployment: fold the classic inference scale into weights, strip no-op dropout for export.

* :func:`fold` returns a copy in which every classic-convention dropout site (inference multiplies
  by :math:`q = 1 - p`) is removed and :math:`q` is multiplied into the weight of the Linear or
  Conv layer that consumes its output: :math:`W (q x) + b = (q W) x + b`. The consumer may sit
  behind ops that commute with a positive scale (ReLU, LeakyReLU, max or average pooling, flatten,
  reshape, an inverted dropout); anything else (BatchNorm, an addition, a second consumer) is
  refused with an error naming the op, since the scale cannot be moved through it exactly.
* :func:`strip` returns a copy in which every dropout module that is the identity at inference
  (inverted scaling, torch.nn dropout, parameter-free noise variants) is an ``nn.Identity``.

Both leave the original model untouched and return the copy in eval mode. Exported models:
``torch.export.export`` and ``torch.jit.trace`` work on droplab modules in eval mode directly;
``torch.jit.script`` cannot compile droplab's modules (their forwards call Python-level
functionals), so script ``strip(model)`` or ``fold(model)``, which contain no droplab module.

Example::

    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), dl.nn.Dropout(0.5, scaling="classic"), nn.Linear(16, 2))
    >>> x = torch.randn(3, 8)
    >>> folded = fold(model)
    >>> torch.allclose(folded(x), model.eval()(x))
    True
"""

from __future__ import annotations

import copy
import operator

import torch
import torch.nn.functional as TF
from torch import fx, nn

from ._fx import LeafTracer
from ._modes import training_flags_restored
from .graph.walker import module_sites, places, replace_module
from .nn import StochasticModule

__all__ = ["fold", "strip", "FOLD_TARGETS"]

#: the layers whose weight absorbs the scale
FOLD_TARGETS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_COMMUTING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
                      nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
                      nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Flatten, nn.Identity)
_COMMUTING_FUNCTIONS = {torch.relu, TF.relu, TF.leaky_relu, torch.flatten, TF.max_pool1d, TF.max_pool2d,
                        TF.max_pool3d, TF.avg_pool1d, TF.avg_pool2d, TF.avg_pool3d, TF.adaptive_avg_pool1d,
                        TF.adaptive_avg_pool2d, TF.adaptive_avg_pool3d, TF.adaptive_max_pool1d,
                        TF.adaptive_max_pool2d, TF.adaptive_max_pool3d, torch.reshape, operator.getitem}
_COMMUTING_METHODS = {"relu", "view", "reshape", "flatten", "contiguous", "permute", "transpose", "squeeze",
                      "unsqueeze"}


def _is_noop_at_inference(module: nn.Module, scaling: str) -> bool:
    # droplab's modules subclass torch's (isinstance checks find them), so they are asked first
    if isinstance(module, StochasticModule):
        return (scaling in ("inverted", "noise") and not any(True for _ in module.parameters())
                and not any(True for _ in module.children()))
    return isinstance(module, nn.modules.dropout._DropoutNd)


def _noop_sites(model: nn.Module) -> list[str]:
    return [s.name for s in module_sites(model) if _is_noop_at_inference(s.module, s.scaling)]


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """``new`` at every place the module at ``name`` is registered (a shared module is replaced everywhere)."""
    module = model.get_submodule(name) if name else model
    for path in places(model).get(id(module), [name]):
        model = replace_module(model, path, new)
    return model


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")


def _verify(original: nn.Module, result: nn.Module, example_input, what: str) -> None:
    if example_input is None:
        return
    with training_flags_restored(original.modules()), torch.no_grad():
        expected = original.eval()(example_input)
        got = result(example_input)
    if not torch.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"{what}: the result differs from the eval-mode model by "
                           f"{(got - expected).abs().max().item():.3g} on the example input")


def strip(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every inference-no-op dropout module replaced by ``nn.Identity``.

    Classic-convention sites (which scale at inference) are kept: use :func:`fold` to remove them.
    Sites that own parameters or submodules (DropConnect, weight drop, recurrent wrappers) are kept too,
    since replacing them would drop the layer they wrap.

    Args:
        model: the network (left unchanged).
        example_input: if given, the copy's output on it is checked against the eval-mode model.
    """
    _check_model(model)
    result = copy.deepcopy(model)
    for name in _noop_sites(result):
        result = _replace(result, name, nn.Identity())
    result.eval()
    _verify(model, result, example_input, "strip")
    return result


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    if node.op == "output":
        return "the model's output"
    return f"{getattr(node.target, '__name__', node.target)} ({node.op})"


def _commutes(node: fx.Node, source: fx.Node, modules: dict[str, nn.Module], noop_names: set[str]) -> bool:
    if not node.args or node.args[0] is not source:
        return False
    if node.op == "call_module":
        module = modules[node.target]
        return isinstance(module, _COMMUTING_MODULES) or node.target in noop_names
    if node.op == "call_function":
        return node.target in _COMMUTING_FUNCTIONS
    return node.op == "call_method" and node.target in _COMMUTING_METHODS


def fold(model: nn.Module, example_input: torch.Tensor | None = None) -> nn.Module:
    r"""A copy of ``model`` with classic dropout removed and its scale :math:`q` folded into the next layer.

    Inference-no-op dropout is stripped as by :func:`strip`. The copy is in eval mode and computes what
    the eval-mode model computes, up to float rounding of :math:`q W`.

    Args:
        model: the network (left unchanged); it must trace with ``torch.fx`` (dropout sites as leaves).
        example_input: if given, the copy's output on it is checked against the eval-mode model.

    Raises:
        ValueError: a classic site whose output does not reach exactly one Linear/Conv1d/2d/3d through
            scale-commuting ops, or a target layer that is used more than once.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 8), dl.nn.Dropout(0.2, scaling="classic"), nn.ReLU(), nn.Linear(8, 1))
        >>> fold(model)
        Sequential(
          (0): Linear(in_features=4, out_features=8, bias=True)
          (1): Identity()
          (2): ReLU()
          (3): Linear(in_features=8, out_features=1, bias=True)
        )

    Reference: Srivastava et al., JMLR 2014 (the weight-scaling inference rule).
    """
    _check_model(model)
    result = copy.deepcopy(model)
    found = module_sites(result)
    classic = [s for s in found if s.scaling == "classic"]
    noop_names = set(_noop_sites(result))
    if classic:
        leaves = {id(s.module) for s in found}
        try:
            graph = LeafTracer(leaves).trace(result)
        except Exception as error:
            raise ValueError(f"fold needs a model that torch.fx can trace, but tracing failed: {error}") from error
        modules = dict(result.named_modules())
        calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        for site in classic:
            nodes = [n for n in graph.nodes if n.op == "call_module" and n.target == site.name]
            if len(nodes) != 1:
                raise ValueError(f"cannot fold {site.name}: it is applied {len(nodes)} times in the traced graph")
            target = _fold_target(site.name, nodes[0], modules, noop_names, calls)
            with torch.no_grad():
                target.weight.mul_(1.0 - site.p)
        for site in classic:
            result = _replace(result, site.name, nn.Identity())
    for name in noop_names:
        result = _replace(result, name, nn.Identity())
    result.eval()
    _verify(model, result, example_input, "fold")
    return result


def _fold_target(name: str, node: fx.Node, modules: dict[str, nn.Module], noop_names: set[str],
                 calls: dict[str, int]) -> nn.Module:
    current = node
    while True:
        users = list(current.users)
        if len(users) != 1:
            raise ValueError(f"cannot fold {name}: its scaled output feeds {len(users)} ops "
                             f"({', '.join(_describe(u, modules) for u in users) or 'none'}); the scale can only "
                             "move into a single following Linear/Conv layer")
        user = users[0]
        if user.op == "call_module" and isinstance(modules[user.target], FOLD_TARGETS) and user.args[0] is current:
            if calls[user.target] != 1:
                raise ValueError(f"cannot fold {name}: the layer {user.target} it feeds is applied "
                                 f"{calls[user.target]} times, so scaling its weight would change the other uses")
            return modules[user.target]
        if not _commutes(user, current, modules, noop_names):
            raise ValueError(f"cannot fold {name}: its output reaches {_describe(user, modules)}, which does not "
                             "commute with scaling; only a Linear/Conv1d/2d/3d reached directly or through ReLU, "
                             "LeakyReLU, max/avg pooling, flatten or reshape can absorb it")
        current = user
