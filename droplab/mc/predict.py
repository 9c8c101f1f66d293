r"""Monte-Carlo dropout prediction: T stochastic passes, batched, with the deterministic prefix cached.

What "sample t of MC seed s" means
----------------------------------
During MC prediction every dropout site is active and every other module is in eval mode (BatchNorm
uses and keeps its running statistics). Sample ``t`` (``0 <= t < T``) of a droplab site with seed
``σ`` draws its mask with

* seed ``mc_seed(σ, s, k)`` (:func:`droplab.nn._base.mc_seed`: one Philox block keyed by ``σ`` over
  ``(s, k)``), where ``k`` is the index of the input batch (below), and
* step ``t``; replica and stream as in training.

The site's training step counter does **not** advance, so MC prediction in the middle of training
changes nothing. A ``torch.nn`` dropout module is swapped for droplab's counterpart for the duration
of the call (seed: CRC-32 of its module path), so it follows the same rule; a
``torch.nn.functional.dropout*`` call in a forward is routed to droplab's functional with seed
``mc_seed(crc32("F:<i>"), s, k)`` for its ``i``-th call in the pass. Sites that cannot be sampled by
droplab (``dropout=`` of multi-layer ``torch.nn`` RNNs and of ``MultiheadAttention``, torch modules
without a registered conversion) make the whole prediction fall back to the loop below, with torch's
generator seeded by ``mc_seed(t, s, k)`` inside ``torch.random.fork_rng`` (the caller's generator is
left as it was). So does a droplab site that draws a mask outside its own forward (the recurrent mask
of ``VariationalLSTM``/``GRU``, drawn by its owner): it cannot tell stacked samples apart, and
:class:`~droplab.nn._base.MCBatchingError` sends the call to the loop.

Inputs are split into batches of ``max_batch`` rows (one batch, ``k = 0``, when ``N <= max_batch``:
then the result does not depend on ``max_batch`` at all). A row's mask depends on its position in its
batch, as in training.

The naive loop is the definition: ``for t in range(T): model(x_k)`` with sample ``t`` active. The
batched pass replicates each batch ``c = max_batch // B`` times, sample-major (rows ``j*B .. j*B+B-1``
hold sample ``first + j``), and every site runs its forward once per sample slice with that sample's
counters (:meth:`droplab.nn.StochasticModule.mc_forward`), so the masks are exactly the loop's; the
rest of the network sees one large batch. Outputs agree with the loop up to floating-point
reassociation in the large matrix products (bit-identical in practice for element-wise networks).

``consistent=True`` draws each row's mask as if the row were a batch of one, and drops ``k`` from
the seed: sample ``t`` is then one fixed sub-network for every input, every batch and every call
with the same seed. Each site then runs once per row per sample (correct for every variant, slower).

Prefix caching
--------------
Everything that does not depend on a dropout output is computed once per input batch:

* ``"fx"``: the model is traced by ``torch.fx`` (dropout sites as leaves); nodes that depend on a
  site are the suffix, the rest the prefix. The split graph is checked against the model's own
  forward on sample 0 of the first rows (a trace can bake in a Python branch taken on a proxy);
  on a mismatch the call takes the ``"hooks"`` path. Prefix values with the batch on axis 0 are replicated for
  the suffix; values derived from the input without a batch axis (``x.size(0)``, shapes) are
  recomputed in the suffix so reshapes stay right.
* ``"hooks"``: the model does not trace. An ``nn.Sequential`` is split before its first child that
  holds a site; any other model runs whole on the replicated batch (sites still sampled per slice).
* ``"loop"``: T passes, one sample each (a site droplab cannot sample, or ``method="loop"``).

The model takes one tensor with the batch axis first and returns one tensor with the batch axis
first, and treats rows independently (no mixing of rows), as MC dropout itself assumes. Inside the
model a site may see the batch on another axis: :attr:`StochasticModule.mc_batch_dim` (1 for
``batch_first=False`` sequence sites) says where.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as TF
from torch import fx, nn
from torch.overrides import TorchFunctionMode

from .. import functional as DF
from .._fx import LeafTracer
from .._modes import training_flags_restored
from ..convert import CONVERSIONS, _replace, sites
from ..nn._base import _MC, MCBatchingError, MCSampling, StochasticModule, mc_activate, mc_sampling, mc_seed

__all__ = ["MCResult", "predict", "sample_loop", "METHODS"]

METHODS = ("auto", "fx", "hooks", "loop")
_TORCH_FUNCTIONAL = {TF.dropout: DF.dropout, TF.dropout1d: DF.dropout1d, TF.dropout2d: DF.dropout2d,
                     TF.dropout3d: DF.dropout3d}


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


@contextlib.contextmanager
def _prepared(model: nn.Module) -> Iterator[tuple[nn.Module, list[StochasticModule], list[nn.Module]]]:
    """Eval mode everywhere, torch.nn dropout modules swapped for droplab's; all undone on exit.

    Yields the (possibly new) root, the droplab sites and the sites only torch can sample.
    """
    with training_flags_restored(model.modules()):
        swapped = []
        root = model
        try:
            model.eval()
            for site in sites(model):
                if site.library == "torch" and type(site.module) in CONVERSIONS:
                    _, to_droplab, _ = CONVERSIONS[type(site.module)]
                    new = to_droplab(site.module, _seed_of("torch:" + site.name))
                    root = _replace(root, site.name, new)
                    swapped.append((site.name, site.module))
            found = sites(root)
            droplab_sites = [s.module for s in found if isinstance(s.module, StochasticModule)]
            torch_sites = [s.module for s in found if not isinstance(s.module, StochasticModule) and s.p > 0
                           and not (isinstance(s.module, nn.RNNBase) and s.module.num_layers == 1)]
            yield root, droplab_sites, torch_sites
        finally:
            for name, original in swapped:
                root = _replace(root, name, original)


class _FunctionalSites(TorchFunctionMode):
    """Routes ``torch.nn.functional.dropout*`` calls to droplab's functional, sampled like a site."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = _TORCH_FUNCTIONAL.get(func)
        spec = getattr(_MC, "spec", None)
        if target is None or spec is None:
            return func(*args, **kwargs)
        x = args[0]
        p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
        seed = mc_seed(_seed_of(f"F:{self.calls}"), spec.seed, 0 if spec.consistent else spec.batch)
        self.calls += 1
        rows = x.shape[0]
        per_sample = rows // spec.count
        parts = []
        for j in range(spec.count):
            block = x.narrow(0, j * per_sample, per_sample)
            pieces = block.split(1) if spec.consistent else [block]
            parts += [target(piece, p, True, seed=seed, step=spec.first + j) for piece in pieces]
        return torch.cat(parts) if len(parts) > 1 else parts[0]


# ------------------------------------------------------------------------------------------ plans

def _replicate(value: torch.Tensor, count: int) -> torch.Tensor:
    if count == 1:
        return value
    return value.unsqueeze(0).expand(count, *value.shape).reshape(count * value.shape[0], *value.shape[1:])


def _is_batch(value, rows: int) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows


class _WholePlan:
    """No prefix: the whole model runs on the replicated batch."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def prefix(self, xb: torch.Tensor):
        return xb

    def suffix(self, state, count: int):
        return self.model(_replicate(state, count))


class _SequentialPlan:
    """An ``nn.Sequential`` split before its first child that holds a dropout site."""

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
                 or (n.op == "call_function" and n.target in _TORCH_FUNCTIONAL)}
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


# --------------------------------------------------------------------------------------- predict

def _check_args(model, x, samples, max_batch, method) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] < 1:
        raise TypeError("x must be a tensor with a non-empty batch axis first, but got "
                        f"{type(x).__name__ if not isinstance(x, torch.Tensor) else tuple(x.shape)}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, but got {samples!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, but got {max_batch!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, but got {method!r}")


def _plan(model: nn.Module, site_ids: set[int], method: str, cache_prefix: bool):
    if method in ("auto", "fx") and cache_prefix:
        try:
            return _FxPlan(model, site_ids), "fx"
        except Exception:
            if method == "fx":
                raise
    if cache_prefix and isinstance(model, nn.Sequential) and any(id(m) in site_ids for m in model.modules()):
        return _SequentialPlan(model, site_ids), "hooks"
    return _WholePlan(model), "hooks"


def _store(samples: torch.Tensor | None, out, total: int, rows: int, t0: int, count: int, n0: int,
           n: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"MC prediction needs a model that returns one tensor, but it returned {type(out).__name__}")
    out = out.reshape(count, out.shape[0] // count, *out.shape[1:])
    if samples is None:
        samples = out.new_empty((total, rows, *out.shape[2:]))
    samples[t0:t0 + count, n0:n0 + n] = out
    return samples


def predict(model: nn.Module, x: torch.Tensor, samples: int = 100, *, seed: int | None = None,
            max_batch: int = 1024, cache_prefix: bool = True, consistent: bool = False,
            method: str = "auto") -> MCResult:
    r"""Monte-Carlo dropout: ``samples`` stochastic passes of ``model`` over ``x``, stacked.

    Every dropout site is active, everything else in eval mode; the model's train/eval flags, its
    modules and every step counter are as before afterwards, also after an error. The predictive
    mean :math:`\bar y = \frac{1}{T}\sum_t f(x; m_t)` is ``result.mean``.

    Args:
        model: the network; it takes ``x`` and returns one tensor with the batch axis first.
        x: inputs, ``(N, *)``.
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

    Returns:
        :class:`MCResult` with ``samples`` ``(T, N, *out)``, ``mean``, ``variance`` and ``path``.

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
    with torch.no_grad(), _prepared(model) as (root, droplab_sites, torch_sites):
        loop = method == "loop" or bool(torch_sites)
        if method in ("fx", "hooks") and loop:
            raise ValueError(f"method={method!r} cannot sample the torch sites {torch_sites}; use 'loop' or 'auto'")
        with mc_activate(droplab_sites), _torch_train(torch_sites):
            if not loop:
                plan, path = _plan(root, {id(m) for m in droplab_sites}, method, cache_prefix)
                if path == "fx" and not _traced_like_eager(plan, root, x, seed, consistent):
                    if method == "fx":
                        raise ValueError("the torch.fx trace of the model computes something else than its "
                                         "forward (Python control flow on traced values); use method='hooks'")
                    plan, path = _plan(root, set(), "hooks", cache_prefix)
                try:
                    return MCResult(_batched(plan, x, samples, seed, max_batch, consistent), path, seed)
                except MCBatchingError:
                    if method != "auto":
                        raise
            try:
                return MCResult(_looped(root, x, samples, seed, max_batch, consistent), "loop", seed)
            except MCBatchingError as error:
                raise ValueError(f"consistent=True is not supported for this model: {error}") from error


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_same(u, v) for u, v in zip(a, b))
    return type(a) is type(b) and not isinstance(a, torch.Tensor) and a == b


def _traced_like_eager(plan, model: nn.Module, x: torch.Tensor, seed: int, consistent: bool) -> bool:
    """Sample 0 of a few rows through the split graph and through the model itself must agree.

    symbolic tracing bakes in Python decisions taken on proxies (``isinstance(y, tuple)`` on a module's
    output, say), so a trace that runs can still compute something else; this catches it cheaply.
    """
    rows = x[: min(x.shape[0], 8)]
    functional = _FunctionalSites()
    with mc_sampling(MCSampling(seed, 0, 1, 0, consistent)):
        try:
            with _fresh(functional):
                traced = plan.suffix(plan.prefix(rows), 1)
        except Exception:  # the baked-in branch may not even run
            return False
        with _fresh(functional):
            eager = model(rows)
    return _same(traced, eager)


def _batched(plan, x: torch.Tensor, samples: int, seed: int, max_batch: int, consistent: bool) -> torch.Tensor:
    functional = _FunctionalSites()
    out, rows = None, x.shape[0]
    for k, n0 in enumerate(range(0, rows, max_batch)):
        xb = x[n0:n0 + max_batch]
        n = xb.shape[0]
        state = plan.prefix(xb)
        chunk = max(1, max_batch // n)
        for t0 in range(0, samples, chunk):
            count = min(chunk, samples - t0)
            with mc_sampling(MCSampling(seed, t0, count, k, consistent)), _fresh(functional):
                out = _store(out, plan.suffix(state, count), samples, rows, t0, count, n0, n)
    return out


def _looped(model: nn.Module, x: torch.Tensor, samples: int, seed: int, max_batch: int,
            consistent: bool) -> torch.Tensor:
    functional = _FunctionalSites()
    out, rows = None, x.shape[0]
    for k, n0 in enumerate(range(0, rows, max_batch)):
        xb = x[n0:n0 + max_batch]
        for t in range(samples):
            with mc_sampling(MCSampling(seed, t, 1, k, consistent)), _torch_rng(seed, t, k, x.device), \
                    _fresh(functional):
                out = _store(out, model(xb), samples, rows, t, 1, n0, xb.shape[0])
    return out


@contextlib.contextmanager
def _fresh(mode: _FunctionalSites) -> Iterator[None]:
    """One pass: functional calls are numbered from 0 again."""
    mode.calls = 0
    with mode:
        yield


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


def sample_loop(model: nn.Module, x: torch.Tensor, samples: int, *, seed: int,
                consistent: bool = False) -> torch.Tensor:
    """The definition :func:`predict` implements, as the plain loop over samples (one batch, k = 0)."""
    return predict(model, x, samples, seed=seed, max_batch=max(x.shape[0], 1), consistent=consistent,
                   method="loop").samples

