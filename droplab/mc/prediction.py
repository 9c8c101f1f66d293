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
(``F.dropout*``, ``torch.dropout``, ``scaled_dot_product_attention(dropout_p > 0)``, a keep-mask
``bernoulli_``, see :mod:`droplab.graph.forms`) is drawn by droplab's generator with
``σ = site_key("<module path>#<i>")`` for the ``i``-th such call its issuing module makes in a pass; after
:func:`droplab.convert` routed it, the call *is* the droplab module that draws it in training (Hugging
Face's ``self.dropout``, or ``dropout_call<i>``), and ``σ`` is that module's key as above (its seed, or
``site_key`` of its path), at the rate the call passes unless the rate was set through droplab. The
issuing modules (found by one probe forward) are put in training mode for the call, since libraries
pass ``p if self.training else 0``, and nothing else is.

A site used several times in one pass (a module registered at two places, a layer run twice) draws an
independent mask at each use: its ``u``-th use in the pass (``u = 0, 1, ...``) draws with
``mc_seed(σ, s, k, u)``, which is ``mc_seed(σ, s, k)`` for the first use.

Sites that cannot be sampled by droplab (``dropout=`` of multi-layer
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

A check's verdict is kept for the model (weakly referenced) while its modules, which of its sites are
active and the input's structure past the batch axis stay the same, so predicting batch after batch checks
once; replacing a module or changing an input's shape, dtype or keys checks again.

Inputs: a tensor, a tuple (positional arguments) or a mapping (keyword arguments). The batch's ``N`` is
the first axis of the first tensor with more than one row (1 if none has); every tensor whose first
axis has ``N`` rows is batched (repeated per sample, split by ``max_batch``), everything else (0-dim
tensors, non-tensors, tensors with one row where ``N > 1``, such as a mask broadcast over the batch)
is passed unchanged. ``batch_keys=`` names the batched entries instead (mapping keys or tuple positions).
Outputs: a tensor, a tuple, a mapping or a Hugging Face ``ModelOutput``; ``output=`` picks what is
sampled. The model treats rows independently (no mixing of rows), as MC dropout itself assumes. Inside the
model a site may see the batch on another axis: :func:`droplab.mc.sampling.batch_axis` (1 for
``batch_first=False`` sequence sites) says where.
"""

from __future__ import annotations

import contextlib
import numbers
import warnings
import weakref
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import functional as DF
from .._modes import training_flags_restored
from ..graph.conversions import conversion_for
from ..graph.forms import attention_math
from ..graph.model_io import BatchLayout, call_model, first_tensor, select_output, tensors
from ..graph.probe import CallSite, probe
from ..graph.recorder import CallRecorder, DropoutCall, ModuleStack, module_stack, routing_suspended
from ..graph.routing import rate_is_set, routed_site
from ..graph.walker import Site, module_sites, places, replace_module
from ..nn import StochasticModule
from .plans import WholePlan, choose_plan, replicate_rows
from .sampling import (
    MCBatchingError,
    MCSampling,
    active,
    counters,
    key_of,
    mc_activate,
    mc_sampling,
    mc_seed,
    next_use,
    run_sliced,
    site_key,
)

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


# ----------------------------------------------------------------------------------------- sites

def _seed_of(name: str) -> int:
    return zlib.crc32(name.encode())


@dataclass
class _Prepared:
    root: nn.Module
    droplab_sites: list[StochasticModule]
    torch_sites: list[nn.Module]
    issuers: list[nn.Module]
    functional: list[CallSite]
    keys: dict[int, int]
    model: nn.Module  #: the caller's model (``root`` may be a swapped copy of it)
    signature: tuple  #: the caller's modules and which sites are active, for :func:`_plan_key`


def _check_sites(found: list[Site], functional: list[CallSite]) -> None:
    rates = [site.p for site in found] + [call.p for call in functional]
    if not rates:
        raise ValueError("the model has no dropout site (no dropout module, no functional dropout call in a probe "
                         "forward), so every MC sample would be the same; add dropout or convert the model's "
                         "library modules (see droplab.convert)")
    if all(p == 0 for p in rates):
        warnings.warn("every dropout site of the model has p = 0, so all MC samples are identical", stacklevel=4)


def _swap(model: nn.Module) -> tuple[nn.Module, list[tuple[list[str], nn.Module]]]:
    """Convertible modules swapped for droplab's (at every place), seeded by their first path's CRC-32."""
    swapped, root, paths = [], model, places(model)
    for site in module_sites(model):
        rule = conversion_for(site.module) if site.library != "droplab" else None
        new = None if rule is None else rule(site.module, _seed_of("torch:" + site.name))
        if new is not None:
            for path in paths[id(site.module)]:
                root = replace_module(root, path, new)
            swapped.append((paths[id(site.module)], site.module))
    return root, swapped


@contextlib.contextmanager
def _prepared(model: nn.Module, probe_inputs) -> Iterator[_Prepared]:
    """Eval mode everywhere, convertible modules swapped for droplab's, issuers of functional dropout
    in training mode; all undone on exit."""
    functional = probe(model, probe_inputs).calls
    structure = tuple((id(m), type(m)) for m in model.modules())  # before the swap, which makes new modules
    with training_flags_restored(model.modules()):
        swapped, root = [], model
        try:
            model.eval()
            root, swapped = _swap(model)
            found = module_sites(root)
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
            active = tuple((s.name, s.p > 0) for s in found) + tuple((c.name, c.p > 0) for c in functional)
            signature = (structure, active)
            yield _Prepared(root, droplab_sites, torch_sites, issuers, functional, keys, model, signature)
        finally:
            for paths, original in swapped:
                for path in paths:
                    root = replace_module(root, path, original)


class _FunctionalSites:
    """Draws functional dropout calls with droplab's generator, sampled like a site (a recorder's handler).

    A call is keyed by ``site_key("<issuer>#<i>")``; a call routed after :func:`droplab.convert` by the
    droplab module that draws it in training (:func:`~droplab.mc.sampling.key_of`).
    """

    def __init__(self, stack: ModuleStack, keys: dict[int, int]) -> None:
        self.stack, self.keys = stack, keys

    def __call__(self, event: DropoutCall):
        call = event.call
        site = routed_site(event.frame.module, event.position) if event.frame is not None else None
        p = site.p if site is not None and rate_is_set(site) else call.p
        if p == 0:  # the identity: run as is, so it does not replicate the batch
            return event.run()
        key = site_key(event.name) if site is None else key_of(site, self.keys)
        use = next_use(("functional", key))
        if call.form.droplab is not None:
            def draw(x):
                seed, step = counters(key, use)
                return call.run_droplab(x, seed=seed, step=step, p=p)
            # a mask filled in place (bernoulli_) is filled slice by slice; a masking call is affine in its input
            return run_sliced(draw, (call.input,), {}, affine=not call.fills, name=call.form.name)
        return _attention(call, key, use, p)


def _attention(call, key: int, use: int, p: float):
    spec = active()
    a = call.arguments
    rows = a["query"].shape[0]
    if spec.rows is not None and rows == spec.rows and spec.count > 1:
        for name in ("query", "key", "value", "attn_mask"):
            if isinstance(a[name], torch.Tensor) and a[name].dim() > 0 and a[name].shape[0] == rows:
                a[name] = replicate_rows(a[name], spec.count)

    def drop(weights):
        def draw(w):
            seed, step = counters(key, use)
            return DF.dropout(w, p, True, seed=seed, step=step)
        return run_sliced(draw, (weights,), {}, affine=True, name=call.form.name)
    return attention_math(call, drop)


@dataclass
class _Functional:
    recorder: CallRecorder | None  # None: the probe found no functional dropout call, nothing to intercept
    stack: ModuleStack | None


@contextlib.contextmanager
def _functional(model: nn.Module, keys: dict[int, int], calls: list) -> Iterator[_Functional]:
    """The recorder that draws the model's functional dropout ``calls`` (found by the probe) as sites.

    A model without any pays nothing: no module stack, no torch-function mode (each intercepted torch call
    costs microseconds, thousands per prediction).
    """
    if not calls:
        yield _Functional(None, None)
        return
    with routing_suspended(), module_stack(model) as stack:
        yield _Functional(CallRecorder(stack, on_dropout=_FunctionalSites(stack, keys)), stack)


@contextlib.contextmanager
def _fresh(functional: _Functional) -> Iterator[None]:
    """One pass: functional calls are numbered from 0 again."""
    if functional.recorder is None:
        yield
        return
    functional.stack.new_pass()
    with functional.recorder:
        yield


# --------------------------------------------------------------------------------------- predict

def _check_args(model, x, samples, max_batch, method, seed) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    shaped = [t for t in tensors(x) if t.dim() > 0]
    if not shaped or shaped[0].shape[0] < 1:
        first = first_tensor(x)
        raise TypeError("x must be a tensor, a tuple of arguments or a mapping of keyword arguments holding a "
                        f"tensor with a non-empty batch axis first, but got {type(x).__name__}"
                        + (f" of shape {tuple(first.shape)}" if first is not None else ""))
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, but got {samples!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, but got {max_batch!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None, but got {seed!r} ({type(seed).__name__})")


def _batches(x, max_batch: int, layout: BatchLayout) -> Iterator[tuple[int, int, object]]:
    for k, n0 in enumerate(range(0, layout.rows, max_batch)):
        yield k, n0, layout.map(x, lambda t, n0=n0: t[n0:n0 + max_batch])


def _store(samples: torch.Tensor | None, out, output, total: int, rows: int, t0: int, count: int, n0: int,
           n: int) -> torch.Tensor:
    out = select_output(out, output)
    if out.dim() < 1 or out.shape[0] != count * n:
        raise ValueError(f"the sampled output must have the batch axis first ({count * n} rows), but has shape "
                         f"{tuple(out.shape)}")
    out = out.reshape(count, n, *out.shape[1:])
    if samples is None:
        samples = out.new_empty((total, rows, *out.shape[2:]))
    samples[t0:t0 + count, n0:n0 + n] = out
    return samples


@dataclass
class _Run:
    """What one call of :func:`predict` fixed: the inputs' layout, the seed and the options."""

    layout: BatchLayout
    seed: int
    samples: int
    max_batch: int
    consistent: bool
    output: str | int | Callable | None


def predict(model: nn.Module, x, samples: int = 100, *, seed: int | None = None, max_batch: int = 1024,
            cache_prefix: bool = True, consistent: bool = False, method: str = "auto",
            output: str | int | Callable | None = None, batch_keys: Sequence | None = None) -> MCResult:
    r"""Monte-Carlo dropout: ``samples`` stochastic passes of ``model`` over ``x``, stacked.

    Every dropout site is active, everything else in eval mode; the model's train/eval flags, its
    modules and every step counter are as before afterwards, also after an error. The predictive
    mean :math:`\bar y = \frac{1}{T}\sum_t f(x; m_t)` is ``result.mean``.

    Args:
        model: the network (a ``torch.nn.Module``, e.g. a Hugging Face ``PreTrainedModel``).
        x: the inputs, batched along dimension 0: a tensor ``(N, *)``, a tuple of positional
            arguments or a mapping of keyword arguments (``{"input_ids": ..., "attention_mask": ...}``).
            In a tuple or mapping only tensors whose first axis is the batch are repeated per sample;
            0-dim tensors, non-tensors and tensors with one row (where ``N > 1``) pass unchanged.
        samples: number of MC samples T. Default: 100.
        seed: MC seed (an int); the same seed gives the same samples. ``None`` draws one from torch's
            global generator. Default: None.
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
        batch_keys: the entries of a mapping (keys) or tuple (positions) that carry the batch, instead
            of the rule above; the others pass unchanged. Default: None.

    Returns:
        :class:`MCResult` with ``samples`` ``(T, N, *out)``, ``mean``, ``variance`` and ``path``.

    Raises:
        ValueError: the model has no dropout site (every sample would be the same). A model whose
            sites all have ``p = 0`` only warns.
        TypeError: ``seed`` is not an int or None, or ``x`` holds no tensor with a batch axis.

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
    _check_args(model, x, samples, max_batch, method, seed)
    layout = BatchLayout(x, batch_keys)
    run = _Run(layout, DF.new_seed() if seed is None else int(seed) % 2**64, samples, max_batch, consistent, output)
    probe_inputs = layout.map(x, lambda t: t[:_PROBE_ROWS])
    with torch.no_grad(), _prepared(model, probe_inputs) as prep:
        loop = method == "loop" or bool(prep.torch_sites)
        if method in ("fx", "hooks") and loop:
            raise ValueError(f"method={method!r} cannot sample the torch sites {prep.torch_sites}; use 'loop' or "
                             "'auto'")
        with mc_activate(prep.droplab_sites, prep.keys), _torch_train(prep.torch_sites), \
                _functional(prep.root, prep.keys, prep.functional) as functional:
            if not loop:
                plan, path = _choose_plan(prep, x, method, cache_prefix, run, functional)
                try:
                    return MCResult(_batched(plan, x, run, functional), path, run.seed)
                except MCBatchingError:
                    if method != "auto":
                        raise
            try:
                return MCResult(_looped(prep.root, x, run, functional), "loop", run.seed)
            except MCBatchingError as error:
                raise ValueError(f"consistent=True is not supported for this model: {error}") from error


# The verdicts of the plan checks below, per model: a check costs a few forwards of 8 rows (at T = 10 on a
# BERT, about 40% of the prediction), and its verdict holds while the model's modules and the input's
# structure are the same. Keyed weakly, so a model's entry goes with it.
_PLAN_VERDICTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_MAX_VERDICTS = 64  # per model


def _choose_plan(prep: _Prepared, x, method: str, cache_prefix: bool, run: _Run, functional: _Functional):
    site_ids = {id(m) for m in prep.droplab_sites} | {id(m) for m in prep.issuers}
    root_calls_only = all(s.module is prep.root for s in prep.functional)
    plan, path = choose_plan(prep.root, site_ids, method, cache_prefix, isinstance(x, torch.Tensor), root_calls_only,
                             run.layout)
    key = _plan_key(prep, x, method, cache_prefix, run, path)
    verdicts = _PLAN_VERDICTS.setdefault(prep.model, {}) if key is not None else {}
    traced_ok, lazy_ok = verdicts.get(key, (None, None))
    rows = run.layout.map(x, lambda t: t[:8])
    whole = WholePlan(prep.root, run.layout)
    if path == "fx":
        traced_ok = _agrees(plan, whole, rows, run, functional, 1) if traced_ok is None else traced_ok
        if not traced_ok:
            if method == "fx":
                raise ValueError("the torch.fx trace of the model computes something else than its "
                                 "forward (Python control flow on traced values); use method='hooks'")
            plan, path = choose_plan(prep.root, set(), "hooks", cache_prefix, False, False, run.layout)
    if plan.lazy:
        lazy_ok = _agrees(plan, whole, rows, run, functional, 2) if lazy_ok is None else lazy_ok
        if not lazy_ok:
            plan = whole
    if key is not None:
        if key not in verdicts and len(verdicts) >= _MAX_VERDICTS:  # input shapes that keep changing: bounded
            verdicts.pop(next(iter(verdicts)))
        verdicts[key] = (traced_ok, lazy_ok)
    return plan, path


def _plan_key(prep: _Prepared, x, method: str, cache_prefix: bool, run: _Run, path: str):
    """What a plan check's verdict depends on: the modules (identity and type, the sites among them), the
    input's structure past the batch axis and the sampling options; None where the input holds something
    that cannot be compared (its check then runs on every call)."""
    try:
        inputs = _structure(x)
        hash(inputs)
        hash(run.output)
    except TypeError:
        return None
    return (prep.signature, inputs, method, cache_prefix, path, run.consistent, run.output, min(run.layout.rows, 8))


def _structure(x):
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape[1:]), x.dtype, x.device, x.dim())
    if isinstance(x, Mapping):  # a dict, a Hugging Face BatchEncoding
        return ("mapping",) + tuple((k, _structure(v)) for k, v in x.items())
    if isinstance(x, (tuple, list)):
        return (type(x).__name__,) + tuple(_structure(v) for v in x)
    return ("value", type(x), x)  # a flag or a number can steer the forward: part of the key (hashable or None)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and not isinstance(a, torch.Tensor) and a == b


def _agrees(plan, reference, rows, run: _Run, functional: _Functional, count: int) -> bool:
    """The first ``count`` samples of a few rows through ``plan`` and through ``reference`` must agree.

    symbolic tracing bakes in Python decisions taken on proxies (``isinstance(y, tuple)`` on a module's
    output, say), and lazy replication breaks where a value from before the first site is reused
    after it, so a plan that runs can still compute something else; this catches it cheaply.
    """
    n = run.layout.rows_of(rows)
    try:
        with mc_sampling(MCSampling(run.seed, 0, count, 0, run.consistent, rows=n if plan.lazy else None)), \
                _fresh(functional):
            mine = select_output(plan.suffix(plan.prefix(rows), count), run.output)
    except Exception:  # the baked-in branch may not even run; lazy shapes may not broadcast
        return False
    with mc_sampling(MCSampling(run.seed, 0, count, 0, run.consistent)), _fresh(functional):
        theirs = select_output(reference.suffix(reference.prefix(rows), count), run.output)
    return _same(mine, theirs)


def _batched(plan, x, run: _Run, functional: _Functional) -> torch.Tensor:
    out = None
    for k, n0, xb in _batches(x, run.max_batch, run.layout):
        n = run.layout.rows_of(xb)
        state = plan.prefix(xb)
        chunk = max(1, run.max_batch // n)
        for t0 in range(0, run.samples, chunk):
            count = min(chunk, run.samples - t0)
            spec = MCSampling(run.seed, t0, count, k, run.consistent, rows=n if plan.lazy else None)
            with mc_sampling(spec), _fresh(functional):
                out = _store(out, plan.suffix(state, count), run.output, run.samples, run.layout.rows, t0, count,
                             n0, n)
    return out


def _looped(model: nn.Module, x, run: _Run, functional: _Functional) -> torch.Tensor:
    out = None
    device = first_tensor(x).device
    for k, n0, xb in _batches(x, run.max_batch, run.layout):
        for t in range(run.samples):
            with mc_sampling(MCSampling(run.seed, t, 1, k, run.consistent)), _torch_rng(run.seed, t, k, device), \
                    _fresh(functional):
                out = _store(out, call_model(model, xb), run.output, run.samples, run.layout.rows, t, 1, n0,
                             run.layout.rows_of(xb))
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
                output: str | int | Callable | None = None, batch_keys: Sequence | None = None) -> torch.Tensor:
    """The definition :func:`predict` implements, as the plain loop over samples (one batch, k = 0)."""
    rows = BatchLayout(x, batch_keys).rows
    return predict(model, x, samples, seed=seed, max_batch=max(rows, 1), consistent=consistent,
                   method="loop", output=output, batch_keys=batch_keys).samples
