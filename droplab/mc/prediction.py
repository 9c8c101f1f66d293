r"""Monte-Carlo dropout prediction: T stochastic passes, batched, with the deterministic prefix cached.

What "sample t of MC seed s" means
----------------------------------
During MC prediction every dropout site is active and every other module is in eval mode (BatchNorm
uses and keeps its running statistics). Sample ``t`` (``0 <= t < T``) of a droplab site with seed
``σ`` draws its mask with

* seed ``mc_seed(σ, s, k)`` (:func:`droplab.mc.sampling.mc_seed`: one Philox block keyed by ``σ`` over
  ``(s, k)``), where ``k`` is the index of the input batch (below), and
* step ``t``; replica and stream as in training.

The site's training step counter does **not** advance, so MC prediction in the middle of training
changes nothing. A ``torch.nn`` dropout module (or a library class with a conversion rule: timm's
``DropPath``, torchvision's ``StochasticDepth``) is swapped for droplab's counterpart for the duration
of the call (seed: CRC-32 of its module path), so it follows the same rule. A functional dropout call
(``F.dropout*``, ``torch.dropout``, ``scaled_dot_product_attention(dropout_p > 0)``, see
:mod:`droplab._calls`) is routed to droplab's generator with ``σ = site_key("<module path>#<i>")``
for the ``i``-th such call its issuing module makes in a pass; the issuing modules (found by one
probe forward) are put in training mode for the call, since libraries pass ``p if self.training
else 0``, and nothing else is. Sites that cannot be sampled by droplab (``dropout=`` of multi-layer
``torch.nn`` RNNs, torch modules without a conversion rule) make the whole prediction fall back to
the loop below, with torch's generator seeded by ``mc_seed(t, s, k)`` inside
``torch.random.fork_rng`` (the caller's generator is left as it was). So does a droplab site that
draws a mask outside its own forward (the recurrent mask of ``VariationalLSTM``/``GRU``, drawn by its
owner): it cannot tell stacked samples apart, and :class:`~droplab.mc.sampling.MCBatchingError` sends
the call to the loop.

Inputs are split into batches of ``max_batch`` rows (one batch, ``k = 0``, when ``N <= max_batch``:
then the result does not depend on ``max_batch`` at all). A row's mask depends on its position in its
batch, as in training.

The naive loop is the definition: ``for t in range(T): model(x_k)`` with sample ``t`` active. The
batched pass replicates each batch ``c = max_batch // B`` times, sample-major (rows ``j*B .. j*B+B-1``
hold sample ``first + j``), and every site runs its forward once per sample slice with that sample's
counters (:func:`droplab.mc.sampling.sliced_forward`), so the masks are exactly the loop's; the
rest of the network sees one large batch. Outputs agree with the loop up to floating-point
reassociation in the large matrix products (bit-identical in practice for element-wise networks).

``consistent=True`` draws each row's mask as if the row were a batch of one, and drops ``k`` from
the seed: sample ``t`` is then one fixed sub-network for every input, every batch and every call
with the same seed. Sites whose effect is element-wise affine in their input (every dropout variant
but DropConnect, recurrent and embedding dropout) draw that mask once per sample at batch size one
and broadcast it along the batch, so consistent masks cost what the default path costs; the others
run once per row per sample.

Prefix caching
--------------
Everything that does not depend on a dropout output is computed once per input batch:

* ``"fx"``: the model is traced by ``torch.fx`` (dropout sites as leaves); nodes that depend on a
  site are the suffix, the rest the prefix. The split graph is checked against the model's own
  forward on sample 0 of the first rows (a trace can bake in a Python branch taken on a proxy);
  on a mismatch the call takes the ``"hooks"`` path. Prefix values with the batch on axis 0 are replicated for
  the suffix; values derived from the input without a batch axis (``x.size(0)``, shapes) are
  recomputed in the suffix so reshapes stay right.
* ``"hooks"``: the model does not trace (or takes several inputs, or issues functional dropout
  below its root). An ``nn.Sequential`` is split before its first child that holds a site. Any
  other model runs on the *unreplicated* batch, and the first site that sees it replicates its input
  ``c`` times: everything before the first site (a transformer encoder under a dropout head) runs
  once per pass. When a value computed before that site is used after it with the batch axis
  (a residual, an attention mask), shapes no longer agree, and the model runs whole on the replicated
  batch instead (checked on sample 0 and 1 of the first rows).
* ``"loop"``: T passes, one sample each (a site droplab cannot sample, or ``method="loop"``).

Inputs: a tensor, a tuple (positional arguments) or a mapping (keyword arguments); every tensor in
them whose first axis has the batch's ``N`` rows is batched, everything else is passed as is.
Outputs: a tensor, a tuple, a mapping or a Hugging Face ``ModelOutput``; ``output=`` picks what is
sampled. The model treats rows independently (no mixing of rows), as MC dropout itself assumes. Inside the
model a site may see the batch on another axis: :func:`droplab.mc.sampling.batch_axis` (1 for
``batch_first=False`` sequence sites) says where.
"""

from __future__ import annotations

import contextlib
import warnings
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from .. import functional as DF
from .._calls import CallMode, attention_math, issuing_modules, routing_suspended
from .._fx import LeafTracer
from .._modes import training_flags_restored
from ..conversion import Site, conversion_for, probe_sites, replace_module, sites
from ..nn import StochasticModule
from .sampling import MCBatchingError, MCSampling, counters, mc_activate, mc_sampling, mc_seed, run_sliced, site_key

__all__ = ["MCResult", "predict", "sample_loop", "METHODS"]

METHODS = ("auto", "fx", "hooks", "loop")
_PROBE_ROWS = 2


@dataclass
class MCResult:
    """The outcome of :func:`predict`."""

    samples: torch.Tensor  #: (T, N, ...): sample axis first
    path: str  #: "fx", "hooks" or "loop": how the samples were computed
    seed: int  #: the MC seed (pass it again to reproduce the samples)

    @property
    def mean(self) -> torch.Tensor:
        """The MC average over samples, (N, ...)."""
        return self.samples.mean(0)

    @property
    def variance(self) -> torch.Tensor:
        """Variance over samples (population, divisor T), (N, ...)."""
        return self.samples.var(0, unbiased=False)


# ---------------------------------------------------------------------------------------- inputs

def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (tuple, list)) else ()
    return next((t for t in map(_first_tensor, items) if t is not None), None)


def _batch_map(value, rows: int, fn: Callable[[torch.Tensor], torch.Tensor]):
    """``fn`` applied to every tensor of ``value`` whose first axis has ``rows`` rows."""
    if isinstance(value, torch.Tensor):
        return fn(value) if value.dim() > 0 and value.shape[0] == rows else value
    if isinstance(value, Mapping):
        return {k: _batch_map(v, rows, fn) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_batch_map(v, rows, fn) for v in value)
    return value


def _call(model: nn.Module, inputs):
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _replicate(value: torch.Tensor, count: int) -> torch.Tensor:
    if count == 1:
        return value
    return value.unsqueeze(0).expand(count, *value.shape).reshape(count * value.shape[0], *value.shape[1:])


def _is_batch(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows


def _rows(inputs) -> int:
    return _first_tensor(inputs).shape[0]


# --------------------------------------------------------------------------------------- outputs

def _select(out, output):
    """The tensor ``output`` names in the model's output (default: ``logits`` where present)."""
    if callable(output):
        chosen = output(out)
    elif output is not None:
        try:
            chosen = out[output]
        except (KeyError, IndexError, TypeError) as error:
            raise ValueError(f"output={output!r} does not name a part of the model's output "
                             f"({type(out).__name__})") from error
    elif isinstance(out, torch.Tensor):
        chosen = out
    elif isinstance(out, Mapping):
        if "logits" not in out:
            raise ValueError(f"the model returns a mapping without 'logits' (keys: {list(out.keys())}); pass "
                             "output= with the key, index or a callable that picks the tensor to sample")
        chosen = out["logits"]
    elif isinstance(out, (tuple, list)) and out:
        chosen = out[0]
    else:
        chosen = out
    if not isinstance(chosen, torch.Tensor):
        raise TypeError(f"MC prediction samples a tensor, but the selected output is {type(chosen).__name__}; "
                        "pass output= (a key, an index or a callable)")
    return chosen


# ----------------------------------------------------------------------------------------- sites

def _seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


@dataclass
class _Prepared:
    root: nn.Module
    droplab_sites: list[StochasticModule]
    torch_sites: list[nn.Module]
    issuers: list[nn.Module]
    functional: list[Site]
    keys: dict[int, int]


def _check_sites(module_sites: list[Site], functional: list[Site]) -> None:
    found = module_sites + functional
    if not found:
        raise ValueError("the model has no dropout site (no dropout module, no functional dropout call in a probe "
                         "forward), so every MC sample would be the same; add dropout or convert the model's "
                         "library modules (see droplab.convert)")
    if all(site.p == 0 for site in found):
        warnings.warn("every dropout site of the model has p = 0, so all MC samples are identical", stacklevel=4)


@contextlib.contextmanager
def _prepared(model: nn.Module, probe_inputs) -> Iterator[_Prepared]:
    """Eval mode everywhere, convertible modules swapped for droplab's, issuers of functional dropout
    in training mode; all undone on exit."""
    functional = probe_sites(model, probe_inputs)
    with training_flags_restored(model.modules()):
        swapped, root = [], model
        try:
            model.eval()
            for site in sites(model):
                rule = conversion_for(site.module) if site.library != "droplab" else None
                new = None if rule is None else rule(site.module, _seed_of("torch:" + site.name))
                if new is not None:
                    root = replace_module(root, site.name, new)
                    swapped.append((site.name, site.module))
            found = sites(root)
            _check_sites(found, functional)
            # a site at p = 0 is the identity: left inactive, it does not replicate the batch (the prefix
            # before the first *active* site runs once)
            droplab_sites = [s.module for s in found if isinstance(s.module, StochasticModule) and s.p > 0]
            # MultiheadAttention's dropout is a functional call inside it, routed like any other
            torch_sites = [s.module for s in found if not isinstance(s.module, StochasticModule) and s.p > 0
                           and not (isinstance(s.module, nn.RNNBase) and s.module.num_layers == 1)
                           and not isinstance(s.module, nn.MultiheadAttention)]
            issuers = list({id(s.module): s.module for s in functional}.values())
            for module in issuers:
                module.training = True  # "p if self.training else 0": this module only, not its children
            keys = {id(s.module): site_key(s.name) for s in found}
            yield _Prepared(root, droplab_sites, torch_sites, issuers, functional, keys)
        finally:
            for name, original in swapped:
                root = replace_module(root, name, original)


class _FunctionalSites(CallMode):
    """Routes functional dropout calls to droplab's generator, sampled like a site.

    Each call is named by its issuing module and its index there (``"<path>#<i>"``), whose
    :func:`~droplab.mc.sampling.site_key` keys its masks.
    """

    def __init__(self, stack: list[str], module_sites: set[str]) -> None:
        super().__init__()
        self.stack = stack
        self.module_sites = module_sites
        self.calls: dict[str, int] = {}

    def on_call(self, func, call, args, kwargs):
        issuer = self.stack[-1] if self.stack else ""
        if issuer in self.module_sites:  # a torch dropout module that could not be swapped: torch samples it
            return func(*args, **kwargs)
        index = self.calls.get(issuer, 0)
        self.calls[issuer] = index + 1
        if call.p == 0:  # the identity: run as is, so it does not replicate the batch
            return func(*args, **kwargs)
        key = site_key(f"{issuer}#{index}")
        if call.form.droplab is not None:
            def draw(x):
                seed, step = counters(key)
                return call.run_droplab(x, seed=seed, step=step)
            # a mask filled in place (bernoulli_) is filled slice by slice; a masking call is affine in its input
            return run_sliced(draw, (call.arguments[call.form.params[0]],), {}, affine=not call.fills,
                              name=call.form.name)
        return self._attention(call, key)

    def _attention(self, call, key: int):
        from .sampling import active
        spec = active()
        a = call.arguments
        rows = a["query"].shape[0]
        if spec.rows is not None and rows == spec.rows and spec.count > 1:
            for name in ("query", "key", "value", "attn_mask"):
                if _is_batch(a[name], rows):
                    a[name] = _replicate(a[name], spec.count)
        p = call.p

        def drop(weights):
            def draw(w):
                seed, step = counters(key)
                return DF.dropout(w, p, True, seed=seed, step=step)
            return run_sliced(draw, (weights,), {}, affine=True, name=call.form.name)
        return attention_math(call, drop)


@contextlib.contextmanager
def _functional(model: nn.Module) -> Iterator[_FunctionalSites]:
    module_sites = {name for name, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)}
    with routing_suspended(), issuing_modules(model) as stack:
        yield _FunctionalSites(stack, module_sites)


@contextlib.contextmanager
def _fresh(mode: _FunctionalSites) -> Iterator[None]:
    """One pass: functional calls are numbered from 0 again."""
    mode.calls = {}
    with mode:
        yield


# ------------------------------------------------------------------------------------------ plans

class _WholePlan:
    """No prefix: the whole model runs on the replicated batch."""

    lazy = False

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def prefix(self, xb):
        return xb

    def suffix(self, state, count: int):
        rows = _rows(state)
        return _call(self.model, _batch_map(state, rows, lambda t: _replicate(t, count)))


class _LazyPlan(_WholePlan):
    """The model runs on the unreplicated batch; the first site replicates its input (``spec.rows``)."""

    lazy = True

    def suffix(self, state, count: int):
        return _call(self.model, state)


class _SequentialPlan:
    """An ``nn.Sequential`` split before its first child that holds a dropout site."""

    lazy = False

    def __init__(self, model: nn.Sequential, site_ids: set[int]) -> None:
        children = list(model)
        first = next(i for i, c in enumerate(children) if any(id(m) in site_ids for m in c.modules()))
        self.head, self.tail = children[:first], children[first:]

    def prefix(self, xb: torch.Tensor):
        for child in self.head:
            xb = child(xb)
        if not isinstance(xb, torch.Tensor):
            raise TypeError("the prefix of the Sequential must return a tensor")
        return xb

    def suffix(self, state, count: int):
        out = _replicate(state, count)
        for child in self.tail:
            out = child(out)
        return out


class _FxPlan:
    """The traced graph split into the prefix (run once per batch) and the suffix (run per chunk)."""

    lazy = False

    def __init__(self, model: nn.Module, site_ids: set[int]) -> None:
        from .._calls import CALL_FORMS

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
        frontier, suffix, from_input = state
        env = {n: _replicate(v, count) if n in from_input else v for n, v in frontier.items()}
        for node in suffix:
            env[node] = self._run(node, env)
        return fx.node.map_arg(self.output.args[0], lambda n: env[n])


def _plan(model: nn.Module, site_ids: set[int], method: str, cache_prefix: bool, tensor_input: bool,
          root_calls_only: bool):
    if method in ("auto", "fx") and cache_prefix and tensor_input and root_calls_only:
        try:
            return _FxPlan(model, site_ids), "fx"
        except Exception:
            if method == "fx":
                raise
    elif method == "fx":
        raise ValueError("method='fx' needs one tensor input and no functional dropout below the model's root")
    if cache_prefix and tensor_input and isinstance(model, nn.Sequential) \
            and any(id(m) in site_ids for m in model.modules()):
        return _SequentialPlan(model, site_ids), "hooks"
    return (_LazyPlan(model) if cache_prefix else _WholePlan(model)), "hooks"


# --------------------------------------------------------------------------------------- predict

def _check_args(model, x, samples, max_batch, method) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    first = _first_tensor(x) if isinstance(x, (torch.Tensor, tuple, list, Mapping)) else None
    if first is None or first.dim() < 1 or first.shape[0] < 1:
        raise TypeError("x must be a tensor, a tuple of arguments or a mapping of keyword arguments holding a "
                        f"tensor with a non-empty batch axis first, but got {type(x).__name__}"
                        + (f" of shape {tuple(first.shape)}" if first is not None else ""))
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, but got {samples!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, but got {max_batch!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")


def _batches(x, max_batch: int) -> Iterator[tuple[int, int, object]]:
    rows = _rows(x)
    for k, n0 in enumerate(range(0, rows, max_batch)):
        yield k, n0, _batch_map(x, rows, lambda t, n0=n0: t[n0:n0 + max_batch])


def _store(samples: torch.Tensor | None, out, output, total: int, rows: int, t0: int, count: int, n0: int,
           n: int) -> torch.Tensor:
    out = _select(out, output)
    if out.dim() < 1 or out.shape[0] != count * n:
        raise ValueError(f"the sampled output must have the batch axis first ({count * n} rows), but has shape "
                         f"{tuple(out.shape)}")
    out = out.reshape(count, n, *out.shape[1:])
    if samples is None:
        samples = out.new_empty((total, rows, *out.shape[2:]))
    samples[t0:t0 + count, n0:n0 + n] = out
    return samples


def predict(model: nn.Module, x, samples: int = 100, *, seed: int | None = None, max_batch: int = 1024,
            cache_prefix: bool = True, consistent: bool = False, method: str = "auto",
            output: str | int | Callable | None = None) -> MCResult:
    r"""Monte-Carlo dropout: ``samples`` stochastic passes of ``model`` over ``x``, stacked.

    Every dropout site is active, everything else in eval mode; the model's train/eval flags, its
    modules and every step counter are as before afterwards, also after an error. The predictive
    mean :math:`\bar y = \frac{1}{T}\sum_t f(x; m_t)` is ``result.mean``.

    Args:
        model: the network (a ``torch.nn.Module``, e.g. a Hugging Face ``PreTrainedModel``).
        x: the inputs, batched along dimension 0: a tensor ``(N, *)``, a tuple of positional
            arguments or a mapping of keyword arguments (``{"input_ids": ..., "attention_mask": ...}``).
        samples: number of MC samples T. Default: 100.
        seed: MC seed; the same seed gives the same samples. ``None`` draws one from torch's global
            generator. Default: None.
        max_batch: most rows in one pass (samples x inputs); bounds peak memory. Inputs beyond it are
            split into batches, which changes the (non-consistent) masks, so keep it fixed to reproduce
            a result. On a CPU about a thousand rows already keep matrix products efficient, and
            larger passes only add copies; on a GPU raise it. Default: 1024.
        cache_prefix: compute what precedes the first dropout once per input batch. Default: True.
        consistent: sample ``t`` uses the same masks for every input and batch. Default: False.
        method: ``"auto"``, or force ``"fx"``, ``"hooks"`` or ``"loop"``. Default: ``"auto"``.
        output: what to sample from the model's output: a key (mapping, ``ModelOutput``), an index
            (tuple) or a callable; ``None`` takes the tensor itself, ``"logits"`` where present, or
            a tuple's first element. Default: None.

    Returns:
        :class:`MCResult` with ``samples`` ``(T, N, *out)``, ``mean``, ``variance`` and ``path``.

    Raises:
        ValueError: the model has no dropout site (every sample would be the same). A model whose
            sites all have ``p = 0`` only warns.

    Example::

        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
        >>> res = predict(model, torch.randn(8, 4), samples=20, seed=0)
        >>> res.samples.shape, res.path
        (torch.Size([20, 8, 3]), 'fx')

    Reference: Gal and Ghahramani, "Dropout as a Bayesian Approximation", ICML 2016.

    .. warning::
        MC prediction ignores ``eval()`` for dropout on purpose, including ``torch.nn.functional``
        dropout calls made with ``training=False``: every site samples.
    """
    _check_args(model, x, samples, max_batch, method)
    seed = DF.new_seed() if seed is None else int(seed) % 2**64
    probe = _batch_map(x, _rows(x), lambda t: t[:_PROBE_ROWS])
    with torch.no_grad(), _prepared(model, probe) as prep:
        loop = method == "loop" or bool(prep.torch_sites)
        if method in ("fx", "hooks") and loop:
            raise ValueError(f"method={method!r} cannot sample the torch sites {prep.torch_sites}; use 'loop' or "
                             "'auto'")
        with mc_activate(prep.droplab_sites, prep.keys), _torch_train(prep.torch_sites), \
                _functional(prep.root) as functional:
            if not loop:
                plan, path = _choose_plan(prep, x, method, cache_prefix, seed, consistent, output, functional)
                try:
                    return MCResult(_batched(plan, x, samples, seed, max_batch, consistent, output, functional),
                                    path, seed)
                except MCBatchingError:
                    if method != "auto":
                        raise
            try:
                return MCResult(_looped(prep.root, x, samples, seed, max_batch, consistent, output, functional),
                                "loop", seed)
            except MCBatchingError as error:
                raise ValueError(f"consistent=True is not supported for this model: {error}") from error


def _choose_plan(prep: _Prepared, x, method: str, cache_prefix: bool, seed: int, consistent: bool, output,
                 functional: _FunctionalSites):
    site_ids = {id(m) for m in prep.droplab_sites} | {id(m) for m in prep.issuers}
    root_calls_only = all(s.module is prep.root for s in prep.functional)
    plan, path = _plan(prep.root, site_ids, method, cache_prefix, isinstance(x, torch.Tensor), root_calls_only)
    rows = _batch_map(x, _rows(x), lambda t: t[:8])
    if path == "fx" and not _agrees(plan, _WholePlan(prep.root), rows, seed, consistent, output, functional, 1):
        if method == "fx":
            raise ValueError("the torch.fx trace of the model computes something else than its "
                             "forward (Python control flow on traced values); use method='hooks'")
        plan, path = _plan(prep.root, set(), "hooks", cache_prefix, False, False)
    if plan.lazy and not _agrees(plan, _WholePlan(prep.root), rows, seed, consistent, output, functional, 2):
        plan = _WholePlan(prep.root)
    return plan, path


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and not isinstance(a, torch.Tensor) and a == b


def _agrees(plan, reference, rows, seed: int, consistent: bool, output, functional, count: int) -> bool:
    """The first ``count`` samples of a few rows through ``plan`` and through ``reference`` must agree.

    symbolic tracing bakes in Python decisions taken on proxies (``isinstance(y, tuple)`` on a module's
    output, say), and lazy replication breaks where a value from before the first site is reused
    after it, so a plan that runs can still compute something else; this catches it cheaply.
    """
    n = _rows(rows)
    try:
        with mc_sampling(MCSampling(seed, 0, count, 0, consistent, rows=n if plan.lazy else None)), \
                _fresh(functional):
            mine = _select(plan.suffix(plan.prefix(rows), count), output)
    except Exception:  # the baked-in branch may not even run; lazy shapes may not broadcast
        return False
    with mc_sampling(MCSampling(seed, 0, count, 0, consistent)), _fresh(functional):
        theirs = _select(reference.suffix(reference.prefix(rows), count), output)
    return _same(mine, theirs)


def _batched(plan, x, samples: int, seed: int, max_batch: int, consistent: bool, output,
             functional: _FunctionalSites) -> torch.Tensor:
    out, rows = None, _rows(x)
    for k, n0, xb in _batches(x, max_batch):
        n = _rows(xb)
        state = plan.prefix(xb)
        chunk = max(1, max_batch // n)
        for t0 in range(0, samples, chunk):
            count = min(chunk, samples - t0)
            spec = MCSampling(seed, t0, count, k, consistent, rows=n if plan.lazy else None)
            with mc_sampling(spec), _fresh(functional):
                out = _store(out, plan.suffix(state, count), output, samples, rows, t0, count, n0, n)
    return out


def _looped(model: nn.Module, x, samples: int, seed: int, max_batch: int, consistent: bool, output,
            functional: _FunctionalSites) -> torch.Tensor:
    out, rows = None, _rows(x)
    for k, n0, xb in _batches(x, max_batch):
        for t in range(samples):
            with mc_sampling(MCSampling(seed, t, 1, k, consistent)), _torch_rng(seed, t, k, _first_tensor(x).device), \
                    _fresh(functional):
                out = _store(out, _call(model, xb), output, samples, rows, t, 1, n0, _rows(xb))
    return out


@contextlib.contextmanager
def _torch_train(modules: list[nn.Module]) -> Iterator[None]:
    with training_flags_restored(modules):
        for m in modules:
            m.train()
        yield


@contextlib.contextmanager
def _torch_rng(seed: int, t: int, k: int, device: torch.device) -> Iterator[None]:
    """torch's generator seeded for sample ``t`` of batch ``k`` (only torch-sampled sites use it)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(mc_seed(t, seed, k) % (2**63))
        yield


def sample_loop(model: nn.Module, x, samples: int, *, seed: int, consistent: bool = False,
                output: str | int | Callable | None = None) -> torch.Tensor:
    """The definition :func:`predict` implements, as the plain loop over samples (one batch, k = 0)."""
    return predict(model, x, samples, seed=seed, max_batch=max(_rows(x), 1), consistent=consistent,
                   method="loop", output=output).samples
