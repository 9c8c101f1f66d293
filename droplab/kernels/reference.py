"""Pure-torch backend: the executable form of the spec in :mod:`droplab.rng`, for any device.

It is the yardstick every other backend is tested against, bit for bit, and the fallback wherever no
faster backend serves the tensor's device and dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..rng import MAX_INDEX, block_words, logistic_from_words, normal_from_words, words_at
from .bounds import check_indices, check_rows

__all__ = ["keep_mask", "masked_scale", "apply_keep", "noise", "gaussian_scale", "gaussian_from_noise",
           "dropblock_keep", "grow_blocks", "row_keep", "embedding_forward", "rows_masked_scale",
           "embedding_backward"]

_CHUNK = 1 << 22  # blocks per chunk: bounds the int64 temporaries to a few hundred MB


def keep_mask(numel: int, key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Flat boolean keep mask for mask indices ``0 .. numel - 1``."""
    out = torch.empty(numel, dtype=torch.bool, device=device)
    blocks_total = (numel + 3) // 4
    for first in range(0, blocks_total, _CHUNK):
        last = min(first + _CHUNK, blocks_total)
        blocks = torch.arange(first, last, dtype=torch.int64, device=device)
        words = block_words(blocks, key, step, replica, stream).reshape(-1)
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


def noise(kind: str, numel: int, key: tuple[int, int], step: int, replica: int, stream: int,
          device: torch.device | str | None = None) -> torch.Tensor:
    """Flat float32 noise of mask indices ``0 .. numel - 1``: ``"normal"`` or ``"logistic"`` (spec: droplab.rng)."""
    blocks = torch.arange((numel + 3) // 4, dtype=torch.int64, device=device)
    words = block_words(blocks, key, step, replica, stream).reshape(-1)
    transform = normal_from_words if kind == "normal" else logistic_from_words
    return transform(words)[:numel]


def gaussian_from_noise(x: torch.Tensor, z: torch.Tensor, sigma: float) -> torch.Tensor:
    """``x * (1 + sigma * z)``: in float32 (float64 for float64 ``x``), rounded once to ``x.dtype``."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    factor = z.to(compute) * torch.tensor(sigma, dtype=compute, device=x.device) + 1
    return (x.to(compute) * factor).to(x.dtype).contiguous()


def gaussian_scale(x: torch.Tensor, key: tuple[int, int], step: int, replica: int, stream: int, sigma: float,
                   mask_shape: tuple[int, ...]) -> torch.Tensor:
    """Gaussian dropout's map ``x * (1 + sigma * z)``, ``z`` the normal noise of ``mask_shape`` (broadcast)."""
    numel = 1
    for s in mask_shape:
        numel *= s
    z = noise("normal", numel, key, step, replica, stream, x.device).reshape(mask_shape)
    return gaussian_from_noise(x, z, sigma)


def dropblock_keep(planes: int, spatial: tuple[int, int, int], block: tuple[int, int, int], key: tuple[int, int],
                   step: int, replica: int, stream: int, threshold: int,
                   device: torch.device | str | None = None) -> tuple[torch.Tensor, int]:
    """DropBlock's keep mask ``(planes, D, H, W)``: origin keep mask, grown into blocks by a max-pool."""
    origins = tuple(s - b + 1 for s, b in zip(spatial, block))
    numel = planes * origins[0] * origins[1] * origins[2]
    return grow_blocks(keep_mask(numel, key, step, replica, stream, threshold, device), planes, spatial, block)


def grow_blocks(keep_origins: torch.Tensor, planes: int, spatial: tuple[int, int, int],
                block: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
    """The block keep mask from the flat origin keep mask: a max-pool of the dropped origins, and its count."""
    origins = tuple(s - b + 1 for s, b in zip(spatial, block))
    dropped = (~keep_origins).reshape((planes, 1) + origins)
    pad = [b - 1 for b in reversed(block) for _ in range(2)]  # a block reaches b - 1 positions past its origin
    grown = F.max_pool3d(F.pad(dropped.to(torch.float32), pad), block, stride=1) > 0
    keep = ~grown.reshape((planes,) + tuple(spatial))
    return keep, int(keep.sum())


def row_keep(indices: torch.Tensor, key, step, replica, stream, threshold: int) -> torch.Tensor:
    """Keep flag of each vocabulary entry in ``indices``: its own word (mask index = the entry) >= threshold."""
    return words_at(indices, key, step, replica, stream) >= threshold


def embedding_forward(weight: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float, *, row_keep=row_keep) -> torch.Tensor:
    """``weight[indices] * scale`` for rows whose vocabulary entry is kept, 0 for dropped ones."""
    check_indices(indices, weight.shape[0])
    keep = row_keep(indices, key, step, replica, stream, threshold).unsqueeze(-1)
    return apply_keep(F.embedding(indices, weight), keep, scale)


def rows_masked_scale(src: torch.Tensor, indices: torch.Tensor, key: tuple[int, int], step: int, replica: int,
                      stream: int, threshold: int, scale: float, *, row_keep=row_keep) -> torch.Tensor:
    """``src`` (shape ``(*indices.shape, D)``) with row ``r`` kept iff vocabulary entry ``indices[r]`` is."""
    check_rows(src, indices, "src")
    check_indices(indices, MAX_INDEX)
    keep = row_keep(indices, key, step, replica, stream, threshold).unsqueeze(-1)
    return apply_keep(src, keep, scale)


def embedding_backward(grad: torch.Tensor, indices: torch.Tensor, num_weights: int, padding_idx: int,
                       key: tuple[int, int], step: int, replica: int, stream: int, threshold: int,
                       scale: float, *, row_keep=row_keep) -> torch.Tensor:
    """Dense weight gradient: row ``v`` sums ``grad[r] * scale`` over the kept positions ``r`` reading ``v``."""
    check_rows(grad, indices, "grad")
    check_indices(indices, num_weights)
    keep = row_keep(indices, key, step, replica, stream, threshold) & (indices != padding_idx)
    masked = apply_keep(grad, keep.unsqueeze(-1), scale)
    out = torch.zeros(num_weights, grad.shape[-1], dtype=grad.dtype, device=grad.device)
    return out.index_add_(0, indices.reshape(-1), masked.reshape(-1, grad.shape[-1]))


def available() -> bool:
    return True


def supports(x: torch.Tensor) -> bool:
    return True
