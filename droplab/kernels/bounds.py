"""Bounds of the indices that enter a kernel, checked before any kernel reads or writes through them.

The row kernels (embedding lookup, the row mask, the weight gradient's scatter) index memory with the
values of an index tensor; numba and Triton do not bounds-check, so an index past the table reads or
writes outside it. Every backend's index-taking entry point calls :func:`check_indices` first, which
raises what ``torch.nn.functional.embedding`` raises for the same indices.
"""

from __future__ import annotations

import torch

__all__ = ["INDEX_DTYPES", "OUT_OF_RANGE", "check_index_dtype", "check_indices", "check_rows"]

INDEX_DTYPES = (torch.int64, torch.int32)
OUT_OF_RANGE = "index out of range in self"  # torch's IndexError for an embedding index outside [0, V)


def check_index_dtype(indices: torch.Tensor) -> None:
    """torch's ``RuntimeError`` for indices that are not int64 or int32, worded as ``F.embedding`` words it."""
    if indices.dtype in INDEX_DTYPES:
        return
    # torch's own check on an empty lookup of the same dtype gives its exact wording (type names vary by dtype)
    torch.embedding(torch.zeros(1, 1, device=indices.device), indices.new_zeros(0))
    raise RuntimeError("Expected tensor for argument #1 'indices' to have one of the following scalar types: "
                       f"Long, Int; but got {indices.dtype} instead (while checking arguments for embedding)")


def check_indices(indices: torch.Tensor, rows: int) -> None:
    """Raise torch's ``IndexError`` unless every entry of ``indices`` lies in ``[0, rows)``.

    Negative indices are out of range too (``F.embedding`` does not wrap them). One pass over the
    indices (``torch.aminmax``), on their device.
    """
    check_index_dtype(indices)
    if indices.numel() == 0:
        return
    low, high = torch.aminmax(indices)
    bad = low < 0
    if rows <= torch.iinfo(indices.dtype).max:  # a bound past the dtype's range bounds nothing
        bad = bad | (high >= rows)
    if bool(bad):
        raise IndexError(OUT_OF_RANGE)


def check_rows(rows: torch.Tensor, indices: torch.Tensor, what: str) -> None:
    """``rows`` must hold one row per index: shape ``(*indices.shape, D)``."""
    if rows.dim() != indices.dim() + 1 or tuple(rows.shape[:-1]) != tuple(indices.shape):
        raise ValueError(f"{what} must have shape (*indices.shape, D) = ({', '.join(map(str, indices.shape))}"
                         f"{', ' if indices.dim() else ''}D), but got {tuple(rows.shape)}")
