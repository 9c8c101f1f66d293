"""How a Monte-Carlo pass runs the model: the execution plans behind :func:`droplab.mc.predict`.

A plan splits one pass into ``prefix(xb)`` (run once per input batch) and ``suffix(state, count)`` (run
per chunk of ``count`` stacked samples); see :mod:`droplab.mc.prediction` for the sampling policy they
serve and :func:`choose_plan` for which one a model gets.

* :class:`FxPlan`: the torch.fx graph, split at the first node that depends on a dropout site;
* :class:`SequentialPlan`: an ``nn.Sequential`` split before its first child that holds a site;
* :class:`LazyPlan`: the model on the unreplicated batch; the first site replicates its input;
* :class:`WholePlan`: no prefix, the whole model on the replicated batch.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from .._fx import LeafTracer
from ..graph.forms import CALL_FORMS
from ..graph.model_io import BatchLayout, call_model

__all__ = ["WholePlan", "LazyPlan", "SequentialPlan", "FxPlan", "choose_plan", "replicate_rows"]


def replicate_rows(value: torch.Tensor, count: int) -> torch.Tensor:
    """``value`` repeated ``count`` times along its first axis, sample-major (rows ``j*B`` to ``j*B+B-1``: copy j)."""
    if count == 1:
        return value
    return value.unsqueeze(0).expand(count, *value.shape).reshape(count * value.shape[0], *value.shape[1:])


def _is_batch(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows


class WholePlan:
    """No prefix: the whole model runs on the replicated batch."""

    lazy = False

    def __init__(self, model: nn.Module, layout: BatchLayout) -> None:
        self.model, self.layout = model, layout

    def prefix(self, xb):
        """The input batch itself."""
        return xb

    def suffix(self, state, count: int):
        """The model on ``count`` stacked copies of the batch."""
        return call_model(self.model, self.layout.map(state, lambda t: replicate_rows(t, count)))


class LazyPlan(WholePlan):
    """The model runs on the unreplicated batch; the first site replicates its input (``spec.rows``)."""

    lazy = True

    def suffix(self, state, count: int):
        """The model on the batch; its first active site stacks the samples."""
        return call_model(self.model, state)


class SequentialPlan:
    """An ``nn.Sequential`` split before its first child that holds a dropout site."""

    lazy = False

    def __init__(self, model: nn.Sequential, site_ids: set[int]) -> None:
        children = list(model)
        first = next(i for i, c in enumerate(children) if any(id(m) in site_ids for m in c.modules()))
        self.head, self.tail = children[:first], children[first:]

    def prefix(self, xb: torch.Tensor):
        """The children before the first site, once."""
        for child in self.head:
            xb = child(xb)
        if not isinstance(xb, torch.Tensor):
            raise TypeError("the prefix of the Sequential must return a tensor")
        return xb

    def suffix(self, state, count: int):
        """The rest, on ``count`` stacked copies of the prefix's output."""
        out = replicate_rows(state, count)
        for child in self.tail:
            out = child(out)
        return out


class FxPlan:
    """The traced graph split into the prefix (run once per batch) and the suffix (run per chunk)."""

    lazy = False

    def __init__(self, model: nn.Module, site_ids: set[int]) -> None:
        graph = LeafTracer(site_ids).trace(model)
        self.interp = fx.Interpreter(fx.GraphModule(model, graph))
        self.nodes = [n for n in graph.nodes if n.op != "output"]
        self.output = next(n for n in graph.nodes if n.op == "output")
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if not placeholders or any(not n.args for n in placeholders[1:]):
            raise TypeError("MC prediction traces models with one required tensor input")
        self.input = placeholders[0]
        roots = {n for n in self.nodes if (n.op == "call_module" and id(self.interp.fetch_attr(n.target)) in site_ids)
                 or (n.op == "call_function" and n.target in CALL_FORMS)}
        if not roots:
            raise ValueError("the traced graph has no dropout site")
        self.site_dependent = set()
        for node in self.nodes:  # topological order
            if node in roots or any(a in self.site_dependent for a in node.all_input_nodes):
                self.site_dependent.add(node)

    def _run(self, node: fx.Node, env: dict):
        self.interp.env = env
        return self.interp.run_node(node)

    def prefix(self, xb: torch.Tensor):
        """Every node that does not depend on a site, once; the values the suffix needs."""
        rows = xb.shape[0]
        env, suffix, from_input = {}, [], set()
        moved = set()
        for node in self.nodes:
            if node in self.site_dependent or any(a in moved for a in node.all_input_nodes):
                moved.add(node)
                suffix.append(node)
                continue
            if node.op == "placeholder":
                value = xb if node is self.input else node.args[0]
            else:
                value = self._run(node, env)
            if node is self.input or any(a in from_input for a in node.all_input_nodes):
                from_input.add(node)
                if not _is_batch(value, rows):  # recomputed from replicated inputs in the suffix
                    moved.add(node)
                    suffix.append(node)
                    continue
            env[node] = value
        needed = {a for n in suffix + [self.output] for a in n.all_input_nodes if a not in moved}
        frontier = {n: env[n] for n in needed}
        return frontier, suffix, from_input

    def suffix(self, state, count: int):
        """The site-dependent nodes on ``count`` stacked copies of the prefix's batched values."""
        frontier, suffix, from_input = state
        env = {n: replicate_rows(v, count) if n in from_input else v for n, v in frontier.items()}
        for node in suffix:
            env[node] = self._run(node, env)
        return fx.node.map_arg(self.output.args[0], lambda n: env[n])


def choose_plan(model: nn.Module, site_ids: set[int], method: str, cache_prefix: bool, tensor_input: bool,
                root_calls_only: bool, layout: BatchLayout):
    """``(plan, path)``: the most caching plan ``method`` allows that the model supports (``path`` is "fx" or
    "hooks"); the caller checks it against the whole model's forward."""
    if method in ("auto", "fx") and cache_prefix and tensor_input and root_calls_only:
        try:
            return FxPlan(model, site_ids), "fx"
        except Exception:
            if method == "fx":
                raise
    elif method == "fx":
        raise ValueError("method='fx' needs one tensor input and no functional dropout below the model's root")
    if cache_prefix and tensor_input and isinstance(model, nn.Sequential) \
            and any(id(m) in site_ids for m in model.modules()):
        return SequentialPlan(model, site_ids), "hooks"
    return (LazyPlan(model, layout) if cache_prefix else WholePlan(model, layout)), "hooks"
