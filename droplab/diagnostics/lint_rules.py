"""``lint``: find dropout that is in the wrong place, silently off, or silently on.

Each rule reports a :class:`Finding` with a severity, the module path, why it matters and the fix.
What is checked, and how (precisely, so a clean result means what it says):

=============================== ======== ================================================================
rule                            severity how it is detected
=============================== ======== ================================================================
dropout-before-batchnorm        warning  a BatchNorm whose input comes from a dropout, directly or through
                                         Linear/Conv, activations, pooling and reshapes (graph)
dropout-on-residual-path        warning  an addition one of whose operands is ``dropout(s)`` while ``s``
                                         also feeds the other operand (``dropout(x) + f(x)``, ``x +
                                         dropout(x)``), or a dropout applied to a residual sum ``x + f(x)``
                                         that is the identity input of the next residual addition (the
                                         stream between blocks) (torch.fx trace or capture)
dropout-after-first-conv        warning  a dropout fed by the network's first convolution (through
                                         activations, pooling, BatchNorm) (graph)
functional-dropout-always-on    error    in a trace of the model in **eval** mode, a call to torch's or
                                         droplab's functional dropout whose ``training`` is ``True``
                                         (hard-coded, or left at its default) (torch.fx trace or capture)
attention-dropout-always-on     error    in the eval-mode trace, ``F.scaled_dot_product_attention`` with a
                                         constant ``dropout_p > 0``, or ``F.multi_head_attention_forward`` /
                                         droplab's ``scaled_dot_product_attention`` with ``training=True``
                                         and ``dropout_p > 0`` (torch.fx trace or capture)
dropout-site-in-train-mode      warning  the model is in eval mode but a dropout site (a dropout module,
                                         an RNN's or a ``torch.nn.MultiheadAttention``'s ``dropout=``) is in
                                         train mode, so it keeps dropping at inference
high-rate                       warning  a dropout rate above 0.8 (a module, a constant in a functional
                                         call, or anywhere on a schedule); ``error`` at p = 1
schedule-late-jump              warning  a schedule whose rate moves by 0.2 or more within 5 % of training,
                                         in the second half of training
rnn-dropout-single-layer        warning  a torch RNN/LSTM/GRU with ``dropout > 0`` and ``num_layers == 1``
missing-test-time-scale         error    a custom leaf module that is stochastic in train mode and whose
                                         mean training output (over ``probe_samples`` passes on its input
                                         from ``example_input``) differs from its eval output by more than
                                         5 % and five standard errors (needs ``example_input``)
stochastic-at-eval              error    a custom leaf module, or the whole model, whose eval-mode output
                                         changes from one call to the next (needs ``example_input``)
train-mode-at-inference         error    ``for_inference=True`` and the model, or any submodule, is in train
                                         mode
=============================== ======== ================================================================

``torch.nn.MultiheadAttention`` applies its ``dropout=`` exactly when the module is in train mode: the
fast path (``need_weights=False``) and the ``need_weights=True`` path both pass ``training=self.training``
to the attention function, which zeroes ``dropout_p`` outside training. So an MHA module is reported
only when it is in train mode inside a model in eval mode (or at all, with ``for_inference=True``);
attention dropout that ignores the mode is found in the eval-mode trace of a custom module that calls
``scaled_dot_product_attention`` or ``multi_head_attention_forward`` itself.

The graph rules use a torch.fx trace when the model traces, else a capture of one forward pass on
``example_input`` at torch's function level (every rule runs: see :mod:`droplab.graph.dataflow`),
else forward hooks on ``example_input`` (direct module-to-module hand-offs only), else the order of
``nn.Sequential`` children; the returned :class:`Findings` says which (``traced_with``) and which rules
could not run and why (``skipped``; ``droplab inspect`` prints them).
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..conversion import sites
from ..graph.dataflow import (
    GraphNode,
    ModelGraph,
    call_argument,
    is_droplab_function,
    is_dropout_function,
    model_graph,
)
from ..graph.model_io import call_model, hooks_removed
from ..nn import StochasticModule

__all__ = ["Finding", "Findings", "RULES", "SEVERITIES", "lint"]

SEVERITIES = ("error", "warning", "info")
_TORCH_TRAIN_ARG = (torch.dropout, torch.alpha_dropout, torch.feature_dropout, torch.feature_alpha_dropout)

#: rule -> (severity, why it matters, the fix)
RULES: dict[str, tuple[str, str, str]] = {
    "dropout-before-batchnorm": (
        "warning",
        "dropout changes the variance BatchNorm sees: with keep probability q the training variance is about "
        "1/q times the inference variance, so the running statistics are wrong at inference "
        "(Li et al. 2019, 'Understanding the disharmony between dropout and batch normalization')",
        "move the dropout after the BatchNorm (e.g. after the last BN, before the classifier), or recompute the "
        "BN statistics with dropout off: droplab.diagnostics.recalibrate_bn(model, loader)"),
    "dropout-on-residual-path": (
        "warning",
        "dropout on the identity (skip) path of a residual connection randomly cuts the signal every later "
        "layer depends on, starving deep layers and undoing what the shortcut is for",
        "apply dropout to the residual branch only, before the addition: x + dropout(f(x))"),
    "dropout-after-first-conv": (
        "warning",
        "the first convolution extracts edge-level features that every later layer needs; dropping them adds "
        "noise the network cannot route around and usually hurts accuracy",
        "remove dropout from the first convolutional block; use channel dropout / DropBlock in deeper blocks"),
    "functional-dropout-always-on": (
        "error",
        "a functional dropout call whose training argument is True (hard-coded or left at its default) keeps "
        "dropping units after model.eval(): predictions are random and biased",
        "pass training=self.training (torch.nn.functional.dropout(x, p, training=self.training)), or use a "
        "dropout module"),
    "attention-dropout-always-on": (
        "error",
        "attention dropout with a constant dropout_p keeps dropping attention weights after model.eval()",
        "pass dropout_p=self.p if self.training else 0.0 (and training=self.training)"),
    "dropout-site-in-train-mode": (
        "warning",
        "the model is in eval mode but this dropout site is in train mode, so it keeps dropping at inference "
        "(intended only for Monte-Carlo dropout, which droplab.mc.predict handles for you)",
        "call model.eval() after any .train() on a submodule, or use droplab.mc.predict for test-time dropout"),
    "high-rate": (
        "warning",
        "with a drop rate above 0.8 fewer than one unit in five survives each step: the network usually "
        "underfits, and gradients become very noisy (at p = 1 the site outputs zeros and nothing is learned)",
        "use p <= 0.5 for hidden layers (0.1-0.2 for inputs and convolutions), or widen the layer by 1/q"),
    "schedule-late-jump": (
        "warning",
        "a rate that changes abruptly late in training perturbs a nearly converged network and its BatchNorm "
        "statistics, with little time left to recover",
        "change the rate smoothly, or early: ramp over many steps, or switch dropout off early (early dropout)"),
    "rnn-dropout-single-layer": (
        "warning",
        "torch's RNN/LSTM/GRU apply dropout= only between stacked layers: with num_layers=1 it does nothing",
        "use num_layers >= 2, or apply dropout to the inputs/outputs (variational dropout, droplab.nn)"),
    "missing-test-time-scale": (
        "error",
        "the mean of the module's training output does not match its eval output, so every prediction is "
        "biased by the ratio shown: the test-time scale (multiply by q at eval, or by 1/q in training) is "
        "missing or wrong",
        "use inverted dropout (scale kept units by 1/q in training, identity at eval) or droplab.nn.Dropout"),
    "stochastic-at-eval": (
        "error",
        "the output changes from one call to the next in eval mode: predictions, saliency maps and "
        "quantization calibration are random",
        "make the stochastic op depend on self.training (or use a dropout module), and check with "
        "droplab.diagnostics.lint(model, x, for_inference=True)"),
    "train-mode-at-inference": (
        "error",
        "the model is asked for a deterministic prediction but is in train mode: dropout is active and "
        "BatchNorm uses batch statistics, so predictions are stochastic and depend on the batch",
        "call model.eval() before inference (droplab.inference_mode(model) guards a block)"),
}


@dataclass(frozen=True)
class Finding:
    """One problem found by :func:`lint`."""

    rule: str
    severity: str  #: "error", "warning" or "info"
    path: str  #: the module path ("" for the model itself)
    message: str
    why: str
    fix: str

    def as_row(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, "path": self.path or "<model>",
                "message": self.message, "why": self.why, "fix": self.fix}


class Findings(list):
    """A list of :class:`Finding` that also says how the model was analysed."""

    def __init__(self, items=(), *, traced_with: str = "", note: str = "", skipped: tuple[str, ...] = ()):
        super().__init__(items)
        self.traced_with = traced_with  #: "fx", "capture", "hooks" or "sequential"
        self.note = note  #: why a more precise analysis was not possible
        self.skipped = list(skipped)  #: rules that could not run, with the reason

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self if f.severity == "error"]


def _finding(rule: str, path: str, message: str, severity: str | None = None) -> Finding:
    default, why, fix = RULES[rule]
    return Finding(rule, severity or default, path, message, why, fix)


def _label(path: str) -> str:
    return path or "<model>"


# ---------------------------------------------------------------------------------------------- static


def _static_rules(model: nn.Module, for_inference: bool) -> list[Finding]:
    found = []
    for site in sites(model):
        if site.p > 0.8:
            severity = "error" if site.p >= 1.0 else "warning"
            found.append(_finding("high-rate", site.name, f"{_label(site.name)} ({site.kind}) has p = {site.p:g}",
                                  severity))
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase) and module.dropout > 0 and module.num_layers == 1:
            found.append(_finding("rnn-dropout-single-layer", name,
                                  f"{_label(name)} ({type(module).__name__}) has dropout={module.dropout:g} and "
                                  "num_layers=1, so its dropout is never applied"))
    if for_inference:
        in_train = [name for name, module in model.named_modules() if module.training]
        if in_train:
            shown = ", ".join(_label(n) for n in in_train[:5]) + (" ..." if len(in_train) > 5 else "")
            path = "" if model.training else in_train[0]
            found.append(_finding("train-mode-at-inference", path,
                                  f"{len(in_train)} module(s) in train mode: {shown}"))
    elif not model.training:
        for site in sites(model):
            if site.module.training and site.p > 0 and not isinstance(site.module, nn.RNNBase):
                extra = (" (torch.nn.MultiheadAttention drops attention weights whenever it is in train mode)"
                         if isinstance(site.module, nn.MultiheadAttention) else "")
                found.append(_finding("dropout-site-in-train-mode", site.name,
                                      f"{_label(site.name)} ({site.kind}, p = {site.p:g}) is in train mode inside a "
                                      f"model in eval mode{extra}"))
            elif isinstance(site.module, nn.RNNBase) and site.training:
                found.append(_finding("dropout-site-in-train-mode", site.name,
                                      f"{_label(site.name)} ({site.kind}, p = {site.p:g}) is in train mode inside a "
                                      "model in eval mode"))
    return found


# ----------------------------------------------------------------------------------------------- graph


def _batchnorm_rules(graph: ModelGraph) -> list[Finding]:
    found, seen = [], set()
    for node in graph.nodes:
        if not node.is_batchnorm:
            continue
        for path in graph.upstream(node.index, weight_layers=True):
            source = path[-1]
            if not source.is_dropout or (node.index, source.index) in seen:
                continue
            seen.add((node.index, source.index))
            between = [n.describe() for n in path[:-1]]
            how = "directly" if not between else "through " + " -> ".join(reversed(between))
            found.append(_finding("dropout-before-batchnorm", node.path,
                                  f"BatchNorm {node.describe()} is fed by dropout {source.describe()} {how}"))
    return found


def batchnorms_fed_by_dropout(graph: ModelGraph) -> list[tuple[GraphNode, GraphNode]]:
    """``(batchnorm node, dropout node)`` pairs: each BatchNorm with the nearest dropout feeding it."""
    pairs = []
    for node in graph.nodes:
        if node.is_batchnorm:
            for path in graph.upstream(node.index, weight_layers=True):
                if path[-1].is_dropout and (node, path[-1]) not in pairs:
                    pairs.append((node, path[-1]))
    return pairs


def _dropout_behind(graph: ModelGraph, index: int) -> GraphNode | None:
    """The dropout node whose output reaches node ``index`` through reshapes only, if any."""
    node = graph.nodes[index]
    while not node.is_dropout:
        if not node.passes_through(weight_layers=False) or len(node.inputs) != 1 or node.module is not None \
                and not isinstance(node.module, (nn.Flatten, nn.Identity, nn.Unflatten)):
            return None
        node = graph.nodes[node.inputs[0]]
    return node


def _residual_rules(graph: ModelGraph) -> list[Finding]:
    found = []
    adds = [n for n in graph.nodes if n.is_add and len(n.inputs) == 2]
    residual_adds = set()
    for add in adds:
        a, b = add.inputs
        if a in graph.ancestors(b) or b in graph.ancestors(a):
            residual_adds.add(add.index)
        for mine, other in ((a, b), (b, a)):
            dropout = _dropout_behind(graph, mine)
            if dropout is None or not dropout.inputs:
                continue
            source = dropout.inputs[0]
            other_ancestors = graph.ancestors(other) | {other}
            if source in other_ancestors and dropout.index not in other_ancestors:
                found.append(_finding("dropout-on-residual-path", dropout.path,
                                      f"dropout {dropout.describe()} is on the identity branch of the addition "
                                      f"{add.describe()}: its input also feeds the other operand"))
    identity_operands = set()
    for index in residual_adds:
        a, b = graph.nodes[index].inputs
        identity_operands.add(a if a in graph.ancestors(b) else b)
    for node in graph.nodes:
        if not (node.is_dropout and node.inputs and node.inputs[0] in residual_adds):
            continue
        # the sum of one residual block, dropped, then the identity input of the next block
        feeds_next = any(_dropout_behind(graph, i) is node for i in identity_operands)
        if feeds_next:
            add = graph.nodes[node.inputs[0]]
            found.append(_finding("dropout-on-residual-path", node.path,
                                  f"dropout {node.describe()} is applied to the residual sum {add.describe()} and "
                                  "feeds the identity path of the next residual block"))
    return found


def _first_conv_rules(graph: ModelGraph) -> list[Finding]:
    first = next((n for n in graph.nodes if n.is_conv), None)
    if first is None:
        return []
    found = []
    for node in graph.nodes:
        if not node.is_dropout:
            continue
        for path in graph.upstream(node.index, weight_layers=False, norms=True):
            if path[-1] is first:
                found.append(_finding("dropout-after-first-conv", node.path,
                                      f"dropout {node.describe()} acts on the output of the first convolution "
                                      f"{first.describe()}"))
                break
    return found


def _number(value: object) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return None


def _functional_rate_rules(graph: ModelGraph) -> list[Finding]:
    found = []
    for node in graph.nodes:
        if node.kind == "function" and is_dropout_function(node.target):
            p = _number(call_argument(node, "p", 1, 0.5))
            if p is not None and p > 0.8:
                found.append(_finding("high-rate", node.path, f"{node.describe()} has p = {p:g}",
                                      "error" if p >= 1.0 else "warning"))
    return found


def _always_on_rules(eval_graph: ModelGraph) -> list[Finding]:
    """Stochastic calls that survive in a trace of the model in eval mode."""
    found = []
    for node in eval_graph.nodes:
        if node.kind != "function":
            continue
        if is_dropout_function(node.target):
            name = "train" if node.target in _TORCH_TRAIN_ARG else "training"
            training = call_argument(node, name, 2)
            p = _number(call_argument(node, "p", 1, 0.5))
            if training is True and (p is None or p > 0):
                found.append(_finding("functional-dropout-always-on", node.path,
                                      f"{node.describe()} runs with training=True when the model is in eval mode"))
        elif node.target is F.scaled_dot_product_attention:
            p = _number(call_argument(node, "dropout_p", 4, 0.0))
            if p is not None and p > 0:
                found.append(_finding("attention-dropout-always-on", node.path,
                                      f"{node.describe()} has dropout_p = {p:g} when the model is in eval mode"))
        elif node.target is F.multi_head_attention_forward or (
                is_droplab_function(node.target) and getattr(node.target, "__name__", "") ==
                "scaled_dot_product_attention"):
            p = _number(call_argument(node, "dropout_p", 10, 0.0))
            training = call_argument(node, "training", 13, True)
            if training is True and (p is None or p > 0):
                found.append(_finding("attention-dropout-always-on", node.path,
                                      f"{node.describe()} runs with training=True and dropout_p = {p} when the "
                                      "model is in eval mode"))
    return found


# --------------------------------------------------------------------------------------------- runtime


def _is_custom_leaf(module: nn.Module) -> bool:
    origin = type(module).__module__
    return next(module.children(), None) is None and not origin.startswith(("torch.", "droplab.")) \
        and not isinstance(module, StochasticModule)


def _capture_inputs(model: nn.Module, example_input: object, names: list[str]) -> dict[str, tuple]:
    captured: dict[str, tuple] = {}
    handles = []
    for name in names:
        def hook(module, args, kwargs, name=name):
            captured.setdefault(name, (args, kwargs))
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    with hooks_removed(handles), torch.no_grad():
        call_model(model, example_input)
    return captured


def _flat(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor) and output.is_floating_point():
        return output.detach().double().reshape(-1)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return _flat(output[0])
    return None


def _probe_module(name: str, module: nn.Module, args: tuple, kwargs: dict, samples: int) -> Finding | None:
    probe = copy.deepcopy(module)
    with torch.no_grad():
        probe.eval()
        torch.manual_seed(1)
        first = _flat(probe(*args, **kwargs))
        torch.manual_seed(2)
        second = _flat(probe(*args, **kwargs))
        if first is None or second is None:
            return None
        if not torch.equal(first, second):
            return _finding("stochastic-at-eval", name, f"{_label(name)} ({type(module).__name__}) gives a different "
                            "output on each call in eval mode")
        reference = first
        probe.train()
        torch.manual_seed(3)
        a = _flat(probe(*args, **kwargs))
        b = _flat(probe(*args, **kwargs))
        if a is None or b is None or torch.equal(a, b) or a.shape != reference.shape:
            return None  # deterministic in training: not a dropout-like module
        norm = float(reference @ reference)
        if norm == 0.0:
            return None
        ratios = [float(a @ reference) / norm, float(b @ reference) / norm]
        for _ in range(samples - 2):
            ratios.append(float(_flat(probe(*args, **kwargs)) @ reference) / norm)
    ratios_t = torch.tensor(ratios, dtype=torch.float64)
    ratio = float(ratios_t.mean())
    stderr = float(ratios_t.std() / len(ratios) ** 0.5)
    if abs(ratio - 1.0) > max(0.05, 5 * stderr):
        return _finding("missing-test-time-scale", name,
                        f"{_label(name)} ({type(module).__name__}): mean training output = {ratio:.3f} x eval output "
                        f"(+- {stderr:.3f}, {samples} passes)")
    return None


def _runtime_rules(model: nn.Module, example_input: object, samples: int) -> list[Finding]:
    clone = copy.deepcopy(model).eval()
    names = [name for name, module in clone.named_modules() if _is_custom_leaf(module)]
    found = []
    with torch.random.fork_rng(devices=[]):
        captured = _capture_inputs(clone, example_input, names) if names else {}
        for name, (args, kwargs) in captured.items():
            finding = _probe_module(name, clone.get_submodule(name), args, kwargs, samples)
            if finding is not None:
                found.append(finding)
        if not any(f.rule == "stochastic-at-eval" for f in found):
            with torch.no_grad():
                torch.manual_seed(11)
                first = _flat(call_model(clone, example_input))
                torch.manual_seed(12)
                second = _flat(call_model(clone, example_input))
            if first is not None and second is not None and not torch.equal(first, second):
                found.append(_finding("stochastic-at-eval", "", "the model's output differs between two calls on "
                                      "the same input in eval mode"))
    return found


# --------------------------------------------------------------------------------------------- schedule


def _schedule_functions(schedule: object) -> list[tuple[str, Callable[[int], object]]]:
    """``(label, step -> rate)`` pairs of a schedule function, a mapping of them, or a scheduler object."""
    if isinstance(schedule, Mapping):
        return [(str(k), v) for k, v in schedule.items()]
    inner = getattr(schedule, "schedule", None) or getattr(schedule, "schedules", None)
    if inner is not None and inner is not schedule:
        return _schedule_functions(inner)
    if callable(schedule):
        return [("schedule", schedule)]
    raise TypeError(f"schedule must be a function step -> rate, a mapping of them, or a DropoutScheduler, "
                    f"but got {type(schedule).__name__}")


def _total_steps(candidates: tuple[object, ...], total_steps: int | None) -> int:
    """``total_steps`` as given, or read from the schedule's ``total_steps``/``steps`` attribute."""
    if total_steps is None:
        for candidate in candidates:
            for attr in ("total_steps", "steps", "num_steps"):
                value = getattr(candidate, attr, None)
                if total_steps is None and isinstance(value, int) and not isinstance(value, bool):
                    total_steps = value
    if total_steps is None or isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int (the length of training in steps), but got "
                         f"{total_steps!r}; pass lint(..., schedule=..., total_steps=N)")
    return total_steps


def _rates(value: object) -> list[float]:
    if isinstance(value, Mapping):
        return [float(v) for v in value.values()]
    return [float(value)]


def _schedule_rules(schedule: object, total_steps: int | None, *, points: int = 200, jump: float = 0.2,
                    window: float = 0.05) -> list[Finding]:
    found = []
    for label, fn in _schedule_functions(schedule):
        total = _total_steps((fn, schedule), total_steps)
        steps = sorted({round(i * total / points) for i in range(points + 1)})
        rates = torch.tensor([_rates(fn(s)) for s in steps], dtype=torch.float64)  # (points, series)
        peak = float(rates.max())
        if peak > 0.8:
            at = steps[int(rates.max(dim=1).values.argmax())]
            found.append(_finding("high-rate", label, f"{label} reaches p = {peak:g} at step {at}",
                                  "error" if peak >= 1.0 else "warning"))
        span = max(1, round(window * points))
        for i in range(len(steps) - span):
            if steps[i] < total / 2:
                continue
            change = (rates[i + span] - rates[i]).abs().max()
            if float(change) >= jump:
                j = int((rates[i + span] - rates[i]).abs().argmax())
                found.append(_finding("schedule-late-jump", label,
                                      f"{label} moves from p = {float(rates[i, j]):g} to {float(rates[i + span, j]):g} "
                                      f"between steps {steps[i]} and {steps[i + span]} of {total}"))
                break
    return found


# ------------------------------------------------------------------------------------------------ lint


def lint(model: nn.Module, example_input: object = None, *, for_inference: bool = False, schedule: object = None,
         total_steps: int | None = None, probe_samples: int = 200) -> Findings:
    """Check where a model applies dropout and whether it behaves at inference; return the findings.

    Args:
        model: the model (not modified: traces and probes run on copies).
        example_input: a batch the model accepts (a tensor, a tuple of positional arguments or a dict
            of keywords). Needed for the runtime rules (missing test-time scale, stochastic at eval)
            and for the forward-hook fallback when torch.fx cannot trace the model. Default: None.
        for_inference: the model is about to be used for deterministic prediction (attribution,
            quantization calibration ...): any module in train mode is an error. Default: False.
        schedule: a rate schedule to check (a function ``step -> rate``, a mapping of such functions,
            or a droplab ``DropoutScheduler``). Default: None.
        total_steps: training length in steps, for ``schedule``; read from the schedule's
            ``total_steps``/``steps`` attribute when omitted. Default: None.
        probe_samples: training passes per custom module in the test-time-scale probe. Default: 200.

    Returns:
        :class:`Findings` (a list of :class:`Finding`), errors first, with ``traced_with``, ``note``
        and ``skipped`` describing the analysis.

    Example::

        >>> model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.BatchNorm1d(8))
        >>> [f.rule for f in lint(model)]
        ['dropout-before-batchnorm']

    See the module docstring for each rule and how it is detected.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    if isinstance(probe_samples, bool) or not isinstance(probe_samples, int) or probe_samples < 10:
        raise ValueError(f"probe_samples must be an int >= 10, but got {probe_samples!r}")
    found: list[Finding] = []
    skipped: list[str] = []
    found += _static_rules(model, for_inference)

    graph = model_graph(model, example_input, training=True)
    found += _batchnorm_rules(graph) + _first_conv_rules(graph)
    if graph.method in ("fx", "capture"):
        found += _residual_rules(graph) + _functional_rate_rules(graph)
        found += _always_on_rules(model_graph(model, example_input, training=False))
    else:
        skipped += [f"{rule}: needs a torch.fx trace or an example_input to capture ({graph.note})" for rule in
                    ("dropout-on-residual-path", "functional-dropout-always-on", "attention-dropout-always-on")]
    if example_input is not None:
        found += _runtime_rules(model, example_input, probe_samples)
    else:
        skipped += [f"{rule}: needs example_input" for rule in ("missing-test-time-scale", "stochastic-at-eval")]
    if schedule is not None:
        found += _schedule_rules(schedule, total_steps)

    unique = list(dict.fromkeys(found))
    unique.sort(key=lambda f: SEVERITIES.index(f.severity))
    return Findings(unique, traced_with=graph.method, note=graph.note, skipped=tuple(skipped))
