"""What droplab sees in a model: the one layer that :func:`droplab.convert`, :func:`droplab.sites`,
:mod:`droplab.mc`, :mod:`droplab.diagnostics`, :mod:`droplab.deploy` and :mod:`droplab.guards` stand on.

* :mod:`~droplab.graph.forms`: the torch calls that apply dropout (call forms) and the random ops that may not.
* :mod:`~droplab.graph.recorder`: the one call recorder (:class:`CallRecorder`), attributing each torch call
  to the module that issued it; :func:`routing_counts` counts what it intercepts.
* :mod:`~droplab.graph.model_io`: the one model-call helper (:func:`call_model`) for tensor, tuple and
  mapping inputs, which tensors carry the batch (:func:`batch_rows`), and the output to read
  (:func:`select_output`).
* :mod:`~droplab.graph.walker`: the one walk over module sites (:func:`module_sites`, :func:`places`).
* :mod:`~droplab.graph.conversions` and :mod:`~droplab.graph.library_rules`: what converts to what,
  including other libraries' classes recognized by name (timm, torchvision, transformers).
* :mod:`~droplab.graph.probe`: the probe forward that finds functional dropout calls and random ops.
* :mod:`~droplab.graph.routing` and :mod:`~droplab.graph.rewire`: after ``convert``, functional calls drawn
  by droplab, replaced directly where possible and intercepted only where not.
* :mod:`~droplab.graph.dataflow`: which layer feeds which (torch.fx, a recorded forward, hooks), for lint.

Following a change in torch or Hugging Face means editing this package only.
"""

from .conversions import CONVERSIONS, conversion_for, declined, register_conversion, torch_counterpart
from .dataflow import GraphNode, ModelGraph, model_graph
from .forms import CALL_FORMS, RANDOM_OPS, Call, CallForm, attention_math, bind
from .library_rules import (
    LIBRARY_RULES,
    LibraryRule,
    TimmDropBlock2d,
    WholeBatchDropPath,
    library_rule,
    qualified_name,
    timm_dropblock_rate,
)
from .model_io import (
    BatchLayout,
    batch_rows,
    call_model,
    first_tensor,
    hooks_removed,
    map_batched,
    model_device,
    select_output,
    tensors,
)
from .probe import CallSite, ProbeResult, RandomOp, probe, probe_sites
from .recorder import (
    CallRecorder,
    DropoutCall,
    Frame,
    ModuleStack,
    RoutingCounts,
    module_stack,
    routing_counts,
    routing_is_suspended,
    routing_suspended,
)
from .rewire import rewired
from .routing import Routes, attach_routers, detach_routers, mark_rate_set, rate_is_set, routed_site
from .walker import RANDOM_OP, Site, is_dropout_module, module_site, module_sites, places, replace_module

__all__ = [
    # call forms
    "CallForm", "CALL_FORMS", "Call", "bind", "attention_math", "RANDOM_OPS",
    # the recorder
    "CallRecorder", "DropoutCall", "Frame", "ModuleStack", "module_stack", "routing_suspended",
    "routing_is_suspended", "RoutingCounts", "routing_counts",
    # calling a model
    "call_model", "tensors", "first_tensor", "batch_rows", "BatchLayout", "map_batched", "select_output",
    "model_device", "hooks_removed",
    # the walker and the rules
    "Site", "RANDOM_OP", "is_dropout_module", "module_site", "module_sites", "places", "replace_module",
    "CONVERSIONS", "register_conversion", "conversion_for", "declined", "torch_counterpart",
    "LibraryRule", "LIBRARY_RULES", "library_rule", "qualified_name", "WholeBatchDropPath", "TimmDropBlock2d",
    "timm_dropblock_rate",
    # functional sites: probe and routing
    "CallSite", "RandomOp", "ProbeResult", "probe", "probe_sites",
    "Routes", "attach_routers", "detach_routers", "routed_site", "mark_rate_set", "rate_is_set", "rewired",
    # dataflow
    "GraphNode", "ModelGraph", "model_graph",
]
