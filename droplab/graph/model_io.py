"""Calling a model on what it takes, and reading what it returns: the one helper for tensors, tuples and mappings.

* :func:`call_model`: a tensor is the one argument, a tuple the positional arguments, a mapping the
  keyword arguments (``{"input_ids": ..., "attention_mask": ...}``); anything else is passed as is.
* :func:`batch_rows` and :func:`map_batched`: which tensors of an input carry the batch. In a tuple or
  mapping (searched recursively), a tensor is batched when its first axis has the batch's ``N`` rows;
  ``N`` is the first axis of the first tensor with more than one row (1 if none has). 0-dim tensors,
  non-tensors and tensors whose first axis is 1 while ``N > 1`` (a mask broadcast over the batch, a
  scale) pass unchanged. ``keys`` overrides the rule: only the named entries (mapping keys, or tuple
  positions) are batched.
* :func:`select_output`: the tensor to read from a model's output (a tensor, a tuple, a mapping or a
  Hugging Face ``ModelOutput``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

__all__ = ["call_model", "tensors", "first_tensor", "batch_rows", "BatchLayout", "map_batched", "select_output",
           "model_device", "hooks_removed"]


@contextlib.contextmanager
def hooks_removed(handles: list) -> Iterator[None]:
    """Remove the hook ``handles`` (``register_forward_hook``'s) on exit, also when the body raises."""
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def call_model(model: Callable, inputs: object) -> object:
    """``model(**inputs)`` for a mapping, ``model(*inputs)`` for a tuple, ``model(inputs)`` otherwise.

    Example::

        >>> call_model(lambda a, b=0: a + b, (1,)), call_model(lambda a, b=0: a + b, {"a": 1, "b": 2})
        (1, 3)
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def tensors(value: object) -> Iterator[torch.Tensor]:
    """Every tensor in ``value``, searching tuples, lists and mappings, in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from tensors(item)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from tensors(item)


def first_tensor(value: object) -> torch.Tensor | None:
    """The first tensor in ``value`` (see :func:`tensors`), or None."""
    return next(tensors(value), None)


def _entries(inputs: object, keys: Sequence) -> list[torch.Tensor]:
    if isinstance(inputs, Mapping):
        missing = [k for k in keys if k not in inputs]
        if missing:
            raise ValueError(f"batch_keys {missing} are not keys of the input (keys: {list(inputs)})")
        chosen = [inputs[k] for k in keys]
    elif isinstance(inputs, tuple):
        bad = [k for k in keys if isinstance(k, bool) or not isinstance(k, int) or not -len(inputs) <= k < len(inputs)]
        if bad:
            raise ValueError(f"batch_keys must be positions of the {len(inputs)} input arguments, but got {bad}")
        chosen = [inputs[k] for k in keys]
    else:
        raise ValueError(f"batch_keys needs a tuple or mapping input, but got {type(inputs).__name__}")
    wrong = [k for k, v in zip(keys, chosen) if not isinstance(v, torch.Tensor) or v.dim() < 1]
    if wrong:
        raise ValueError(f"batch_keys {wrong} must name tensors with a batch axis first")
    return chosen


def batch_rows(inputs: object, keys: Sequence | None = None) -> int:
    """The batch size ``N`` of ``inputs`` (see the module docstring); 0 when no tensor has an axis.

    Example::

        >>> batch_rows({"scale": torch.tensor(2.0), "mask": torch.ones(1, 5), "x": torch.ones(8, 5)})
        8
    """
    if keys is not None:
        chosen = _entries(inputs, list(keys))
        rows = {t.shape[0] for t in chosen}
        if len(rows) != 1:
            raise ValueError(f"the tensors batch_keys names must share their first axis, but have {sorted(rows)}")
        return rows.pop()
    shaped = [t for t in tensors(inputs) if t.dim() > 0]
    return next((t.shape[0] for t in shaped if t.shape[0] > 1), shaped[0].shape[0] if shaped else 0)


def _mask(value: object, rows: int) -> object:
    if isinstance(value, torch.Tensor):
        return value.dim() > 0 and value.shape[0] == rows
    if isinstance(value, Mapping):
        return {k: _mask(v, rows) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_mask(v, rows) for v in value)
    return False


def _apply(value: object, mask: object, fn: Callable[[torch.Tensor], torch.Tensor]) -> object:
    if mask is True:
        return fn(value)
    if isinstance(value, Mapping) and isinstance(mask, Mapping):
        return {k: _apply(v, mask.get(k, False), fn) for k, v in value.items()}
    if isinstance(value, (tuple, list)) and isinstance(mask, (tuple, list)):
        return type(value)(_apply(v, m, fn) for v, m in zip(value, mask))
    return value


class BatchLayout:
    """Which tensors of an input carry the batch, decided once on the whole input (see the module docstring).

    :meth:`map` applies a function to those tensors of the input or of any slice of it (the same
    structure with fewer rows), so the decision does not change when a slice has one row.

    Example::

        >>> layout = BatchLayout({"x": torch.ones(6, 3), "table": torch.ones(6, 2)}, keys=["x"])
        >>> part = layout.map({"x": torch.ones(6, 3), "table": torch.ones(6, 2)}, lambda t: t[:1])
        >>> layout.rows, tuple(part["x"].shape), tuple(part["table"].shape)
        (6, (1, 3), (6, 2))
    """

    def __init__(self, inputs: object, keys: Sequence | None = None) -> None:
        self.rows = batch_rows(inputs, keys)  #: the batch size N of the whole input
        if keys is None:
            self.mask = _mask(inputs, self.rows)
        elif isinstance(inputs, Mapping):
            self.mask = {k: k in keys for k in inputs}
        else:
            positions = {k % len(inputs) for k in keys}
            self.mask = tuple(i in positions for i in range(len(inputs)))

    def map(self, inputs: object, fn: Callable[[torch.Tensor], torch.Tensor]) -> object:
        """``inputs`` with ``fn`` applied to every batched tensor, the structure kept."""
        return _apply(inputs, self.mask, fn)

    def rows_of(self, inputs: object) -> int:
        """The rows of the first batched tensor of ``inputs`` (a slice of the input this layout was made for)."""
        found: list[int] = []
        self.map(inputs, lambda t: found.append(t.shape[0]) or t)
        return found[0] if found else 0


def map_batched(inputs: object, fn: Callable[[torch.Tensor], torch.Tensor], keys: Sequence | None = None) -> object:
    """``inputs`` with ``fn`` applied to every batched tensor (see :class:`BatchLayout`), structure kept.

    Example::

        >>> out = map_batched((torch.ones(4, 2), torch.ones(1, 2), 3.0), lambda t: t[:2])
        >>> [tuple(v.shape) if isinstance(v, torch.Tensor) else v for v in out]
        [(2, 2), (1, 2), 3.0]
    """
    return BatchLayout(inputs, keys).map(inputs, fn)


def select_output(out: object, output: str | int | Callable | None = None) -> torch.Tensor:
    """The tensor ``output`` names in a model's output: a key (mapping, ``ModelOutput``), an index (tuple) or a
    callable; ``None`` takes the tensor itself, ``"logits"`` where present, or a tuple's first element."""
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


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or floating-point buffer); the CPU for a model with neither."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        if tensor.is_floating_point():
            return tensor.device
    return torch.device("cpu")

