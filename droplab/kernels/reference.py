"""Pure-torch backend: the executable form of the spec in :mod:`droplab.rng`, for any device.

It is the yardstick every other backend is tested against, bit for bit, and the fallback wherever no
faster backend serves the tensor's device and dtype.
"""

from __future__ import annotations

import torch

from ..rng import philox4x32

__all__ = ["keep_mask", "masked_scale"]

_CHUNK = 1 << 22  # blocks per chunk: bounds the int64 temporaries to a few hundred MB


def keep_mask(numel: int, key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Flat boolean keep mask for mask indices ``0 .. numel - 1``."""
    out = torch.empty(numel, dtype=torch.bool, device=device)
    blocks_total = (numel + 3) // 4
    step_t, replica_t, stream_t = (torch.tensor(v, device=device) for v in (step, replica, stream))
    for first in range(0, blocks_total, _CHUNK):
        last = min(first + _CHUNK, blocks_total)
        blocks = torch.arange(first, last, dtype=torch.int64, device=device)
        words = torch.stack(philox4x32(blocks, step_t, replica_t, stream_t, *key), dim=1).reshape(-1)
        lo, hi = 4 * first, min(4 * last, numel)
        out[lo:hi] = words[: hi - lo] >= threshold
    return out


def apply_keep(x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
    """``x * scale`` where ``keep`` (broadcast against ``x``), exactly 0 elsewhere, as the spec says.

    The product is formed in float64 for float64 inputs and in float32 otherwise (``scale`` rounded
    to that type, half-precision inputs widened), then rounded once to ``x.dtype``. Dropped elements
    are exactly zero even where ``x`` is inf or nan.
    """
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    y = x.to(compute) * torch.tensor(scale, dtype=compute, device=x.device)
    y = torch.where(keep, y, torch.zeros((), dtype=compute, device=x.device))
    return y.to(x.dtype).contiguous()


def masked_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int,
                 threshold: int, scale: float, mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Dropout's forward (and backward) map: keep by the mask of ``mask_shape``, scale kept values."""
    numel = 1
    for s in mask_shape:
        numel *= s
    keep = keep_mask(numel, key, step, replica, stream, threshold, x.device).reshape(mask_shape)
    return apply_keep(x, keep, scale)


def available() -> bool:
    return True


def supports(x: torch.Tensor) -> bool:
    return True
