"""Mask backends behind one interface, chosen per tensor.

A backend module provides ``supports(x)``, ``masked_scale(x, key, step, replica, stream, threshold,
scale, mask_shape)`` and ``keep_mask(numel, key, step, replica, stream, threshold, device)``, all
bit-identical to :mod:`droplab.kernels.reference`; the variants' maps (``apply_keep``, ``noise``,
``gaussian_scale``, ``dropblock_keep``, ``embedding_forward``, ``rows_masked_scale``,
``embedding_backward``) are served by the backend when it has them and by the reference otherwise.
The registered ops over these functions live in :mod:`droplab.kernels.ops` and
:mod:`droplab.kernels.variant_ops`. Selection: the numba CPU kernel for CPU tensors,
the Triton kernel for CUDA tensors when Triton is importable, the pure-torch reference otherwise.
:func:`use_backend` forces one (tests and benchmarks compare them).

Fork at any moment. A process forked from one that imported droplab (a ``DataLoader`` worker) knows it
is a child: the CPU backend then runs its serial kernels only (GNU OpenMP's pool does not survive a
fork, whether numba's or torch's started it). A child forked while its parent was importing a backend,
or while numba was compiling in another thread (the compiler lock is then held by a thread the child
does not have), never waits on them: it draws with the pure-torch reference, bit for bit the same.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing
import os
import threading
from collections.abc import Iterator
from types import ModuleType

import torch

from . import reference

__all__ = ["BACKENDS", "available_backends", "backend_for", "keep_mask", "masked_scale", "apply_keep", "noise",
           "gaussian_scale", "dropblock_keep", "embedding_forward", "rows_masked_scale", "embedding_backward",
           "use_backend", "in_forked_child"]

BACKENDS = ("cpu", "triton", "reference")
_state = threading.local()
_loaded: dict[str, ModuleType | None] = {"reference": reference}
_importing: set[str] = set()  # backends whose import is under way (in some thread)


def _started_by_fork() -> bool:
    """A ``multiprocessing`` child made by fork that imports droplab only now (its parent never did)."""
    return (multiprocessing.parent_process() is not None
            and multiprocessing.get_start_method(allow_none=True) in (None, "fork"))


_forked = _started_by_fork()


def in_forked_child() -> bool:
    """True in a process forked after ``import droplab`` (or a ``multiprocessing`` fork child)."""
    return _forked


def _after_fork_in_child() -> None:
    global _forked
    _forked = True
    for name in _importing:  # the thread importing it is gone: the half-imported module is unusable here
        _loaded[name] = None
    _importing.clear()
    for name, module in list(_loaded.items()):
        if module is not None and not getattr(module, "usable_after_fork", lambda: True)():
            _loaded[name] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _load(name: str) -> ModuleType | None:
    """Import a backend on first use; a backend whose dependency is missing is simply unavailable."""
    if name not in _loaded:
        _importing.add(name)
        try:
            module = importlib.import_module(f"{__name__}.{name}")
            _loaded[name] = module if module.available() else None
        except ImportError:
            _loaded[name] = None
        finally:
            _importing.discard(name)
    return _loaded[name]


def available_backends() -> list[str]:
    """Names of the backends that can run in this environment."""
    return [name for name in BACKENDS if _load(name) is not None]


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Force backend ``name`` (or automatic selection for ``None``) inside the block, on this thread."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, but got {name!r}")
    if name is not None and _load(name) is None:
        raise RuntimeError(f"backend {name!r} is not available here (available: {available_backends()})")
    previous = getattr(_state, "forced", None)
    _state.forced = name
    try:
        yield
    finally:
        _state.forced = previous


class _OneThreadReference:
    """The reference backend as a forked child runs it: torch on one thread for the call.

    torch's intra-op pool (GNU OpenMP) does not survive a fork either: a child whose parent used it waits
    forever in its first parallel torch op. The child's own torch calls are its business (``DataLoader``
    workers set one thread); droplab's never wait.
    """

    def __getattr__(self, name: str):
        value = getattr(reference, name)
        if not callable(value) or name in ("available", "supports"):
            return value

        def one_thread(*args, **kwargs):
            threads = torch.get_num_threads()
            if threads == 1:
                return value(*args, **kwargs)
            torch.set_num_threads(1)
            try:
                return value(*args, **kwargs)
            finally:
                torch.set_num_threads(threads)
        return one_thread


_child_reference = _OneThreadReference()


def _fallback() -> ModuleType:
    return _child_reference if _forked else reference


def _select(x_device: torch.device, x: torch.Tensor | None) -> ModuleType:
    forced = getattr(_state, "forced", None)
    if forced is not None:
        module = _load(forced)
        if x is None or module.supports(x):
            return _fallback() if module is reference else module
        return _fallback()
    name = "cpu" if x_device.type == "cpu" else "triton" if x_device.type == "cuda" else None
    module = _load(name) if name is not None else None
    if module is not None and (x is None or module.supports(x)):
        return module
    return _fallback()


def backend_for(x: torch.Tensor) -> str:
    """Name of the backend that would serve tensor ``x``."""
    module = _select(x.device, x)
    if module is _child_reference:
        return "reference"
    return next(name for name, m in _loaded.items() if m is module)


def masked_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """``x * scale`` where the mask of ``mask_shape`` (broadcast to ``x``) keeps, 0 elsewhere."""
    return _select(x.device, x).masked_scale(x, key, step, replica, stream, threshold, scale,
                                             tuple(mask_shape))


def keep_mask(numel: int, key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Flat boolean keep mask of ``numel`` mask indices on ``device``."""
    device = torch.device(device if device is not None else "cpu")
    return _select(device, None).keep_mask(numel, key, step, replica, stream, threshold, device)


def _variant(name: str, device: torch.device, x: torch.Tensor | None):
    """The selected backend's ``name`` function, or the reference's where the backend lacks it."""
    module = _select(device, x)
    return getattr(module, name, None) or getattr(reference, name)


def apply_keep(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where the boolean ``keep`` (broadcast to ``x``) is True, exactly 0 elsewhere."""
    return _variant("apply_keep", x.device, x)(x, keep, scale)


def noise(kind: str, numel: int, key: tuple[int, int], step: int, replica: int, stream: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Flat float32 ``"normal"`` or ``"logistic"`` noise of mask indices ``0 .. numel - 1`` (spec: droplab.rng)."""
    device = torch.device(device if device is not None else "cpu")
    return _variant("noise", device, None)(kind, numel, key, step, replica, stream, device).to(device)


def gaussian_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int, sigma: float,
                   mask_shape: tuple[int, ...]) -> torch.Tensor:
    """``x * (1 + sigma * z)``, ``z`` the normal noise of ``mask_shape`` broadcast to ``x``."""
    return _variant("gaussian_scale", x.device, x)(x, key, step, replica, stream, sigma, tuple(mask_shape))


def dropblock_keep(planes: int, spatial: tuple[int, int, int], block: tuple[int, int, int], key: tuple[int, int],
                   step: int, replica: int, stream: int, threshold: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """DropBlock's keep mask ``(planes, D, H, W)`` and its count of kept positions."""
    device = torch.device(device if device is not None else "cpu")
    keep, kept = _variant("dropblock_keep", device, None)(planes, spatial, block, key, step, replica, stream,
                                                          threshold, device)
    return keep.to(device), kept


def embedding_forward(weight: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float) -> torch.Tensor:
    """``weight[indices] * scale`` where the vocabulary entry is kept, 0 where it is dropped."""
    return _variant("embedding_forward", weight.device, weight)(weight, indices, key, step, replica, stream,
                                                                threshold, scale)


def rows_masked_scale(src: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float) -> torch.Tensor:
    """``src`` (``(*indices.shape, D)``) with row ``r`` scaled if entry ``indices[r]`` is kept, else 0."""
    return _variant("rows_masked_scale", src.device, src)(src, indices, key, step, replica, stream, threshold, scale)


def embedding_backward(grad: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int,
                       key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
                       scale: float) -> torch.Tensor:
    """The dense weight gradient of :func:`embedding_forward`, skipping ``padding_idx`` (-1: none)."""
    return _variant("embedding_backward", grad.device, grad)(grad, indices, num_weights, padding_idx, key, step,
                                                             replica, stream, threshold, scale)
