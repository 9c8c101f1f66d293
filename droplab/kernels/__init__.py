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
"""

from __future__ import annotations

import contextlib
import importlib
import threading
from collections.abc import Iterator
from types import ModuleType

import torch

from . import reference

__all__ = ["BACKENDS", "available_backends", "backend_for", "keep_mask", "masked_scale", "apply_keep", "noise",
           "gaussian_scale", "dropblock_keep", "embedding_forward", "rows_masked_scale", "embedding_backward",
           "use_backend"]

BACKENDS = ("cpu", "triton", "reference")
_state = threading.local()
_loaded: dict[str, ModuleType | None] = {"reference": reference}


def _load(name: str) -> ModuleType | None:
    """Import a backend on first use; a backend whose dependency is missing is simply unavailable."""
    if name not in _loaded:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
            _loaded[name] = module if module.available() else None
        except ImportError:
            _loaded[name] = None
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


def _select(x_device: torch.device, x: torch.Tensor | None) -> ModuleType:
    forced = getattr(_state, "forced", None)
    if forced is not None:
        module = _load(forced)
        if x is None or module.supports(x):
            return module
        return reference
    name = "cpu" if x_device.type == "cpu" else "triton" if x_device.type == "cuda" else None
    module = _load(name) if name is not None else None
    if module is not None and (x is None or module.supports(x)):
        return module
    return reference


def backend_for(x: torch.Tensor) -> str:
    """Name of the backend that would serve tensor ``x``."""
    module = _select(x.device, x)
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
