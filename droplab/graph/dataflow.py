"""A model's dataflow, as far as it can be seen: torch.fx, a recorded forward, forward hooks, or Sequential order.

The structural lint rules (dropout before BatchNorm, on a residual path, after the first convolution)
and :func:`~droplab.diagnostics.variance_shift` ask the same questions of a model: which layer feeds
which. :func:`model_graph` answers with the most precise view available:

* ``"fx"``: a symbolic trace (no input needed). Every module call, function call and tensor method is
  a node, so additions (residual paths) and functional dropout calls are visible. torch.nn modules and
  droplab's dropout modules are leaves; droplab's functional ops are recorded as single calls.
* ``"capture"``: when the model does not trace (data-dependent control flow, ``co_varnames`` errors
  on Hugging Face models) but ``example_input`` is given: one real forward pass recorded at torch's
  function level (droplab's :class:`~droplab.graph.recorder.CallRecorder`, as dynamo sees it, but
  following the branches actually taken). Leaf modules (torch.nn layers, dropout modules) are single
  nodes; every torch function and tensor method called outside them (additions, ``F.dropout``,
  ``scaled_dot_product_attention``) is a node, its inputs found by tensor identity, and named by the
  module whose forward called it. So the residual and functional rules run on such models too.
  (``torch.export`` and dynamo's export were tried first and dropped: both refuse data-dependent
  branches, which is why fx failed.)
* ``"hooks"``: when the capture fails too, one forward pass of
  ``example_input`` with forward hooks on every leaf module. An edge exists where a module receives
  the very tensor object another module returned, so only direct module-to-module hand-offs are seen;
  functional calls and additions are invisible.
* ``"sequential"``: without a trace or an input, the order of the children of every ``nn.Sequential``.
"""

from __future__ import annotations

import copy
import inspect
import math
import operator
import re
import types as types_
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import functional as dlf
from ..nn import StochasticModule
from .model_io import call_model, hooks_removed, tensors
from .recorder import CallRecorder, ModuleStack
from .walker import is_dropout_module

__all__ = ["GraphNode", "ModelGraph", "model_graph", "trace_fx", "is_dropout_module", "is_dropout_function",
           "is_droplab_function", "call_argument"]

# torch's functional dropout family; droplab's functional ops are recognized by their module
TORCH_DROPOUT_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
                           F.feature_alpha_dropout, torch.dropout, torch.alpha_dropout, torch.feature_dropout,
                           torch.feature_alpha_dropout}

# layers a dropout effect passes through unchanged in kind (linear maps, shape changes, pointwise maps)
_WEIGHT_LAYERS = (nn.Linear, nn.Bilinear, nn.modules.conv._ConvNd)
_SHAPE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity)
_POOL_MODULES = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
                 nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
_NOT_POINTWISE = (nn.MultiheadAttention, nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d, nn.GLU)
_SHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.permute, torch.transpose, torch.squeeze, torch.unsqueeze,
                    operator.getitem, torch.relu, F.relu, F.gelu, F.silu, F.elu, F.leaky_relu, torch.tanh,
                    torch.sigmoid, F.tanh, F.sigmoid, F.mish, F.selu, F.linear, F.conv1d, F.conv2d, F.conv3d}
_SHAPE_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
                  "relu", "tanh", "sigmoid", "float", "to"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}


def _parameters(target: object) -> dict[str, inspect.Parameter]:
    try:
        return dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}


def is_droplab_function(target: object) -> bool:
    """A function of :mod:`droplab.functional`."""
    module = getattr(target, "__module__", "") or ""
    return module.startswith("droplab.functional") and callable(target)


def is_dropout_function(target: object) -> bool:
    """torch's functional dropout, or a droplab functional dropout op (a ``*dropout*`` with ``training``)."""
    if target in TORCH_DROPOUT_FUNCTIONS:
        return True
    return is_droplab_function(target) and "dropout" in getattr(target, "__name__", "") \
        and "training" in _parameters(target)


def is_pointwise_module(module: nn.Module | None) -> bool:
    if module is None:
        return False
    if isinstance(module, _NOT_POINTWISE):
        return False
    return type(module).__module__ == "torch.nn.modules.activation"


@dataclass
class GraphNode:
    """One operation: a module call (``module`` set), a function or method call, an input or the output."""

    index: int
    kind: str  #: "input", "module", "function", "method", "attr", "output"
    name: str  #: module path for module nodes, the fx node name otherwise
    target: object  #: the module, the function, or the method name
    inputs: tuple[int, ...]
    scope: str = ""  #: path of the module whose forward made the call ("" for the model)
    location: str = ""  #: "file:line" of the call, where known
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def module(self) -> nn.Module | None:
        """The module of a module node, else None."""
        return self.target if self.kind == "module" else None

    @property
    def path(self) -> str:
        """Where to point the user: the module path, or the enclosing module of a call."""
        return self.name if self.kind == "module" else self.scope

    @property
    def is_dropout(self) -> bool:
        """A dropout module or a dropout function call."""
        return (self.kind == "module" and is_dropout_module(self.module)) or \
            (self.kind == "function" and is_dropout_function(self.target))

    @property
    def is_batchnorm(self) -> bool:
        """A BatchNorm module."""
        return isinstance(self.module, nn.modules.batchnorm._BatchNorm)

    @property
    def is_conv(self) -> bool:
        """A convolution, module or function."""
        return isinstance(self.module, nn.modules.conv._ConvNd) or self.target in (F.conv1d, F.conv2d, F.conv3d)

    @property
    def is_weight_layer(self) -> bool:
        """A Linear or convolution, module or function."""
        return isinstance(self.module, _WEIGHT_LAYERS) or self.target in (F.linear, F.conv1d, F.conv2d, F.conv3d)

    @property
    def is_add(self) -> bool:
        """An addition (a residual path joins here)."""
        return (self.kind == "function" and self.target in _ADD_FUNCTIONS) or \
            (self.kind == "method" and self.target in ("add", "add_"))

    def passes_through(self, *, weight_layers: bool, norms: bool = False) -> bool:
        """Whether a dropout effect reaches this node's output unchanged in kind."""
        module = self.module
        if module is not None:
            if isinstance(module, _SHAPE_MODULES) or is_pointwise_module(module):
                return True
            if isinstance(module, _POOL_MODULES):
                return True
            if weight_layers and isinstance(module, _WEIGHT_LAYERS):
                return True
            if norms and isinstance(module, nn.modules.batchnorm._BatchNorm):
                return True
            return False
        if self.kind == "function":
            if self.target in (F.linear, F.conv1d, F.conv2d, F.conv3d):
                return weight_layers
            return self.target in _SHAPE_FUNCTIONS
        if self.kind == "method":
            return self.target in _SHAPE_METHODS
        return False

    def describe(self) -> str:
        """How a finding names the node."""
        if self.kind == "module":
            return f"{self.name or '<model>'} ({type(self.target).__name__})"
        name = getattr(self.target, "__name__", str(self.target))
        where = f" in {self.scope or '<model>'}"
        return f"{name}(){where}" + (f" at {self.location}" if self.location else "")


@dataclass
class ModelGraph:
    """The nodes of a model in execution order, each listing the nodes whose outputs it consumes."""

    nodes: list[GraphNode]
    method: str  #: "fx", "hooks" or "sequential"
    note: str = ""  #: why a more precise method was not used

    def users(self, index: int) -> list[GraphNode]:
        """The nodes that consume node ``index``'s output."""
        return [node for node in self.nodes if index in node.inputs]

    def ancestors(self, index: int) -> set[int]:
        """Every node node ``index`` depends on."""
        seen: set[int] = set()
        stack = list(self.nodes[index].inputs)
        while stack:
            i = stack.pop()
            if i not in seen:
                seen.add(i)
                stack.extend(self.nodes[i].inputs)
        return seen

    def upstream(self, index: int, *, weight_layers: bool, norms: bool = False,
                 limit: int = 16) -> list[list[GraphNode]]:
        """Paths back from node ``index`` through pass-through nodes, each ending at the first other node.

        Each path lists the nodes walked, nearest first; its last node is the one that stopped the walk
        (a dropout, a BatchNorm, an input ...).
        """
        paths: list[list[GraphNode]] = []

        def walk(i: int, trail: list[GraphNode]) -> None:
            node = self.nodes[i]
            trail = trail + [node]
            if len(trail) > limit or not node.passes_through(weight_layers=weight_layers, norms=norms) \
                    or not node.inputs:
                paths.append(trail)
                return
            for j in node.inputs:
                walk(j, trail)

        for j in self.nodes[index].inputs:
            walk(j, [])
        return paths


class _Tracer(fx.Tracer):
    """torch.nn modules and droplab's dropout modules are leaves; droplab's functional ops are single calls."""

    def __init__(self) -> None:
        super().__init__(autowrap_modules=(math, dlf))
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, StochasticModule) or super().is_leaf_module(m, module_qualified_name)


def _concrete_args(model: nn.Module) -> dict[str, object] | None:
    """Optional forward arguments keep their defaults, so ``if mask is not None`` traces."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    concrete = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD}
    return concrete or None


def trace_fx(model: nn.Module, training: bool) -> fx.Graph:
    """Symbolic trace of a copy of ``model`` in train or eval mode (the model itself is untouched)."""
    clone = copy.deepcopy(model).train(training)
    return _Tracer().trace(clone, concrete_args=_concrete_args(clone))


def _location(stack_trace: str | None) -> str:
    if not stack_trace:
        return ""
    match = re.search(r'File "([^"]+)", line (\d+)', stack_trace)
    return f"{match.group(1)}:{match.group(2)}" if match else ""


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    if node.op == "call_module" and path == node.target:  # the module itself, not its caller
        paths = [value[0] for value in stack.values()]
        return paths[-2] if len(paths) > 1 else ""
    return path


def _from_fx(graph: fx.Graph, model: nn.Module) -> ModelGraph:
    index: dict[fx.Node, int] = {}
    nodes: list[GraphNode] = []
    modules = dict(model.named_modules())
    kinds = {"placeholder": "input", "call_module": "module", "call_function": "function",
             "call_method": "method", "get_attr": "attr", "output": "output"}
    for node in graph.nodes:
        inputs = tuple(dict.fromkeys(index[n] for n in node.all_input_nodes if n in index))
        kind = kinds[node.op]
        target = modules.get(node.target) if kind == "module" else node.target
        name = node.target if kind == "module" else node.name
        index[node] = len(nodes)
        nodes.append(GraphNode(len(nodes), kind, name, target, inputs, _scope(node), _location(node.stack_trace),
                               node.args, dict(node.kwargs)))
    return ModelGraph(nodes, "fx")


class _Dataflow:
    """The nodes of one recorded forward pass, linked by tensor identity: which node produced each tensor."""

    def __init__(self, example_input: object) -> None:
        self.nodes: list[GraphNode] = [GraphNode(0, "input", "input", None, ())]
        self.producer: dict[int, int] = {}
        self.keep_alive: list[torch.Tensor] = []  # so an id() is never reused during the pass
        self.produced(example_input, 0)

    def inputs_of(self, values: object) -> tuple[int, ...]:
        """The nodes that produced the tensors in ``values``, in first-use order."""
        return tuple(dict.fromkeys(self.producer[id(t)] for t in tensors(values) if id(t) in self.producer))

    def produced(self, values: object, index: int) -> None:
        for tensor in tensors(values):
            self.producer[id(tensor)] = index
            self.keep_alive.append(tensor)

    def add(self, node: GraphNode, output: object) -> None:
        self.nodes.append(node)
        self.produced(output, node.index)


def _from_hooks(model: nn.Module, example_input: object) -> ModelGraph:
    flow = _Dataflow(example_input)
    handles = []

    def hook(name: str):
        def record(module, args, kwargs, output):
            flow.add(GraphNode(len(flow.nodes), "module", name, module, flow.inputs_of((args, kwargs))), output)
        return record

    for name, module in model.named_modules():
        if _is_leaf(module):
            handles.append(module.register_forward_hook(hook(name), with_kwargs=True))
    with hooks_removed(handles), torch.no_grad():
        call_model(model, example_input)
    return ModelGraph(flow.nodes, "hooks")


def _from_sequential(model: nn.Module) -> ModelGraph:
    nodes: list[GraphNode] = []
    for _, container in model.named_modules():
        if not isinstance(container, nn.Sequential):
            continue
        previous: tuple[int, ...] = ()
        prefix = next(n for n, m in model.named_modules() if m is container)
        for child_name, child in container.named_children():
            path = f"{prefix}.{child_name}" if prefix else child_name
            node = GraphNode(len(nodes), "module", path, child, previous)
            nodes.append(node)
            previous = (node.index,)
    return ModelGraph(nodes, "sequential")


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None or isinstance(module, StochasticModule)


class _Capture:
    """Records torch-level calls made outside leaf modules, linking them by the tensors they pass
    (the ``on_call`` handler of a :class:`~droplab.graph.recorder.CallRecorder`)."""

    def __init__(self, flow: _Dataflow, stack: ModuleStack, leaves: set[str]) -> None:
        self.flow, self.stack, self.leaves = flow, stack, leaves

    def __call__(self, func, args, kwargs):
        out = func(*args, **kwargs)
        frame = self.stack.current
        if frame is not None and frame.path in self.leaves:  # inside a leaf module: its hook records it
            return out
        name = getattr(func, "__name__", str(func))
        if name in ("__get__", "__set__") or name.startswith("_") and not name.startswith("__"):
            return out  # attribute access (.shape, .device) and private helpers carry no dataflow
        method = isinstance(func, (types_.MethodDescriptorType, types_.WrapperDescriptorType)) \
            or getattr(func, "__qualname__", "").startswith("TensorBase.") \
            or getattr(func, "__qualname__", "").startswith("Tensor.")
        inputs = self.flow.inputs_of((args, kwargs))
        if not inputs:
            return out
        target = func
        if method:  # Tensor.__add__ -> "add", Tensor.__iadd__ -> "add_", as fx names methods
            target = name[3:-2] + "_" if name.startswith("__i") else name.strip("_")
        index = len(self.flow.nodes)
        self.flow.add(GraphNode(index, "method" if method else "function", f"{name}_{index}", target, inputs,
                                frame.path if frame is not None else "", "", args, dict(kwargs)), out)
        return out


def _from_capture(model: nn.Module, example_input: object) -> ModelGraph:
    flow = _Dataflow(example_input)
    leaves = {name for name, module in model.named_modules() if name and _is_leaf(module)}
    stack = ModuleStack()  # kept by hooks that also see keyword arguments, which a leaf's node records
    handles = []

    def enter(name: str):
        def hook(module, args, kwargs):
            stack.push(name, module)
        return hook

    def leave(name: str):
        def hook(module, args, kwargs, output):
            stack.pop()
            if name not in leaves:
                return
            flow.add(GraphNode(len(flow.nodes), "module", name, module, flow.inputs_of((args, kwargs)),
                               stack.current.path if stack.current else ""), output)
        return hook

    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(enter(name), with_kwargs=True))
        handles.append(module.register_forward_hook(leave(name), with_kwargs=True, always_call=True))
    try:
        with torch.no_grad(), CallRecorder(stack, on_call=_Capture(flow, stack, leaves), unwrap_attention=False):
            output = call_model(model, example_input)
    finally:
        for handle in handles:
            handle.remove()
    flow.nodes.append(GraphNode(len(flow.nodes), "output", "output", None, flow.inputs_of(output)))
    return ModelGraph(flow.nodes, "capture")


def model_graph(model: nn.Module, example_input: object = None, *, training: bool = True) -> ModelGraph:
    """The most precise dataflow view available (see the module docstring), in train mode by default."""
    try:
        return _from_fx(trace_fx(model, training), model)
    except Exception as error:  # any trace failure: fall back, and say why
        note = f"torch.fx could not trace the model ({type(error).__name__}: {str(error).splitlines()[0][:160]})"
    if example_input is not None:
        clone = copy.deepcopy(model).train(training)
        try:
            graph = _from_capture(clone, example_input)
            graph.note = note + "; captured one forward pass at torch's function level instead"
            return graph
        except Exception as error:
            note += f"; the function-level capture failed ({type(error).__name__}: {str(error)[:160]})"
        try:
            graph = _from_hooks(clone, example_input)
            graph.note = note
            return graph
        except Exception as error:
            note += f"; the forward pass on example_input failed ({type(error).__name__}: {error})"
    graph = _from_sequential(model)
    graph.note = note
    return graph


def call_argument(node: GraphNode, name: str, position: int | None = None, default: object = None) -> object:
    """An argument of a recorded call, by keyword or position, or the function's default."""
    if name in node.kwargs:
        return node.kwargs[name]
    parameters = _parameters(node.target)
    if name in parameters:
        parameter = parameters[name]
        names = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        if name in names and len(node.args) > names.index(name):
            return node.args[names.index(name)]
        return parameter.default if parameter.default is not inspect.Parameter.empty else default
    if position is not None and len(node.args) > position:
        return node.args[position]
    return default
