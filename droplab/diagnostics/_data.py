"""Batches from a loader: ``x``, ``(x, y)``, ``[x, y]`` or ``{"x": ..., "y": ...}``, moved to the model's device.

What a model takes and how to call it on a batch's inputs is :mod:`droplab.graph.model_io`'s
(``call_model``, ``model_device``); this module only reads a loader's batches, which only the
diagnostics do.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

__all__ = ["split_batch", "batches"]


def split_batch(batch: object) -> tuple[object, torch.Tensor | None]:
    """``(inputs, targets)`` of one batch; targets are ``None`` for an input-only batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, dict):
        for key in ("x", "input", "inputs"):
            if key in batch:
                return batch[key], batch.get("y", batch.get("target", batch.get("targets")))
        raise ValueError(f"a dict batch needs an 'x' (or 'input') key, but has keys {sorted(batch)}")
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], (batch[1] if len(batch) > 1 else None)
    raise TypeError(f"a batch must be a tensor, an (inputs, targets) pair or a dict, but got {type(batch).__name__}")


def _to(value: object, device: torch.device) -> object:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(_to(v, device) for v in value)
    return value


def batches(loader: Iterable, device: torch.device, max_batches: int | None = None) -> Iterator[tuple[object, object]]:
    """``(inputs, targets)`` of each batch of ``loader`` (at most ``max_batches``), on ``device``."""
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, but got {max_batches!r}")
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = split_batch(batch)
        yield _to(x, device), (y.to(device) if isinstance(y, torch.Tensor) else y)
