"""Standard, channel and noise-shaped dropout: the core op every other variant builds on."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .._fx import fx_traceable
from ..kernels import transform_rules
from ..kernels.ops import masked_scale
from ..rng import drop_threshold, encode_seed
from .inference import inference_rule

__all__ = [
    "SCALINGS",
    "InputDtypeError",
    "InputRankError",
    "ArgumentTypeError",
    "check_probability",
    "check_noise_shape",
    "check_scaling",
    "resolve_noise_shape",
    "new_seed",
    "fresh_key",
    "seed_tensor",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
    "draws_feature_mask",
]

SCALINGS = ("inverted", "classic")
_INT64_MIN = -(2**63)


class InputDtypeError(TypeError, RuntimeError):
    """A non-floating-point input: a ``TypeError``, and the ``RuntimeError`` torch's dropout raises."""


class InputRankError(ValueError, RuntimeError):
    """An input rank the op cannot read: a ``ValueError``, and the ``RuntimeError`` torch raises."""


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type: a ``TypeError`` (as torch raises), and the ``ValueError`` droplab's
    argument checks raise for every other bad value, so one ``except ValueError`` still catches them all."""


def check_probability(p: float, name: str = "dropout probability") -> float:
    """Return ``p`` as a float, or raise the canonical ``ValueError`` unless ``0 <= p <= 1``.

    Anything but a real number (an int, a float, a one-element tensor; not a bool or a string) raises
    :class:`ArgumentTypeError` naming the type expected and the type received. NaN fails the range
    comparison, so no ``math.isnan`` is needed (which ``torch.compile`` cannot trace for a symbolic
    float: one graph break per new rate).
    """
    if isinstance(p, torch.Tensor) and p.numel() == 1:
        p = p.item()
    if isinstance(p, bool) or not isinstance(p, (int, float, torch.SymFloat, torch.SymInt)):
        raise ArgumentTypeError(f"{name} must be a float (or int) between 0 and 1, but got {type(p).__name__} "
                                f"{p!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} has to be between 0 and 1, but got {p}")
    return float(p)


def check_scaling(scaling: str) -> str:
    if scaling not in SCALINGS:
        raise ValueError(f"scaling must be one of {SCALINGS}, but got {scaling!r}")
    return scaling


def _check_input(input: torch.Tensor, op: str) -> None:
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{op} expects a torch.Tensor input, but got {type(input).__name__}")
    if not input.is_floating_point():
        raise InputDtypeError(f"{op} expects a floating-point tensor (float16, bfloat16, float32, float64), "
                              f"but got {input.dtype}")


def fresh_key() -> torch.Tensor:
    """A fresh 64-bit key, a 0-dim int64 tensor, drawn from torch's default CPU generator.

    What ``seed=None`` uses at each call, so ``torch.manual_seed`` and ``freeze_rng_state`` replay it.
    It is a tensor op (no ``.item()``), so it stays inside a ``torch.compile``'d graph. Inside torch's
    legacy vmap (gradcheck's batched gradients), which forbids random ops, one key serves every slice.
    """
    try:
        return torch.randint(_INT64_MIN, 2**63 - 1, (), dtype=torch.int64)
    except RuntimeError:
        if not transform_rules.in_legacy_vmap():
            raise
        return transform_rules.outside_legacy_vmap(torch.randint, _INT64_MIN, 2**63 - 1, (), dtype=torch.int64)


def new_seed() -> int:
    """A seed drawn from torch's global generator, so ``torch.manual_seed`` governs it."""
    return int(fresh_key()) % 2**64


def seed_tensor(seed: int | torch.Tensor | None) -> torch.Tensor:
    """The 64-bit ``seed`` as a 0-dim int64 tensor (two's complement); ``None`` draws :func:`fresh_key`.

    Raises ``TypeError`` for anything but an int, a one-element int64 tensor or ``None``.
    """
    if seed is None:
        return fresh_key()
    if isinstance(seed, torch.Tensor):
        if seed.dtype != torch.int64 or seed.numel() != 1:
            raise TypeError(f"seed must be an int or a 0-dim int64 tensor, but got {seed.dtype} {tuple(seed.shape)}")
        return seed.reshape(())
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or None, but got {type(seed).__name__}")
    return torch.tensor(encode_seed(seed), dtype=torch.int64)


def _step_tensor(step: int | torch.Tensor) -> torch.Tensor:
    if isinstance(step, torch.Tensor):
        if step.dtype != torch.int64 or step.numel() != 1:
            raise TypeError(f"step must be an int or a 0-dim int64 tensor, but got {step.dtype} {tuple(step.shape)}")
        return step.reshape(())
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, but got {step!r}")
    return torch.tensor(step, dtype=torch.int64)


def _check_counter_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, but got {value!r}")
    return value


_NOISE_SHAPE_RULE = "None or -1 (the input's size along that axis), 1 (one mask value shared along it) or the size"


def check_noise_shape(noise_shape: Sequence[int | None] | None) -> tuple[int | None, ...] | None:
    """``noise_shape`` as a tuple (or ``None``), checked without an input: what a module does at construction.

    A Keras noise shape: one entry per input dimension, each ``None`` or ``-1`` (the input's size along
    that axis; ``-1`` as in ``Tensor.expand``), ``1`` (one mask value shared along it) or a size (which
    must equal the input's). Raises :class:`ArgumentTypeError` for anything but a sequence (``5``,
    ``"5"``) and ``ValueError`` for an entry that is none of these (``0.5``, ``-2``, ``True``).
    """
    if noise_shape is None:
        return None
    if isinstance(noise_shape, torch.Size):
        noise_shape = tuple(noise_shape)
    if isinstance(noise_shape, (str, bytes)) or not isinstance(noise_shape, Sequence):
        raise ArgumentTypeError(f"noise_shape must be None or a sequence (tuple or list) with one entry per input "
                                f"dimension, but got {type(noise_shape).__name__} {noise_shape!r}")
    entries = tuple(noise_shape)
    for axis, entry in enumerate(entries):
        if entry is not None and (isinstance(entry, bool) or not isinstance(entry, int) or entry < -1):
            raise ValueError(f"noise_shape entries must be {_NOISE_SHAPE_RULE}, but axis {axis} of "
                             f"{entries!r} is {entry!r}")
    return entries


def resolve_noise_shape(shape: Sequence[int], noise_shape: Sequence[int | None] | None) -> tuple[int, ...]:
    """The mask shape for an input of ``shape``: ``None`` and ``-1`` entries take the input's size.

    Raises as :func:`check_noise_shape`, and ``ValueError`` when the lengths differ or an entry is
    neither ``None``, ``-1``, 1 nor the input's size.
    """
    shape = tuple(shape)
    noise_shape = check_noise_shape(noise_shape)
    if noise_shape is None:
        return shape
    if len(noise_shape) != len(shape):
        raise ValueError(f"noise_shape must have one entry per input dimension ({len(shape)}), "
                         f"but got {noise_shape} for input shape {shape}")
    resolved = []
    for axis, (size, entry) in enumerate(zip(shape, noise_shape)):
        if entry is None or entry == -1:
            resolved.append(size)
        elif entry in (1, size):
            resolved.append(entry)
        else:
            raise ValueError(f"noise_shape entries must be {_NOISE_SHAPE_RULE}; axis {axis} has size "
                             f"{size} but noise_shape gives {entry!r}")
    return tuple(resolved)


@fx_traceable
def dropout(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *,
            seed: int | torch.Tensor | None = None, step: int | torch.Tensor = 0, replica: int = 0,
            stream: int = 0, noise_shape: Sequence[int | None] | None = None,
            scaling: str = "inverted") -> torch.Tensor:
    r"""Randomly zero elements of ``input`` with probability ``p`` (droplab's generator).

    Training, inverted scaling: :math:`y = x \odot m / q` with :math:`m_i \sim \text{Bernoulli}(q)`,
    :math:`q = 1 - p`; classic scaling: :math:`y = x \odot m`. Inference: :math:`y = x` (inverted) or
    :math:`y = q\,x` (classic).

    Args:
        input: floating-point tensor of any shape.
        p: drop probability, ``0 <= p <= 1``. Default: 0.5. ``p = 0`` and ``p = 1`` are exact.
        training: apply the stochastic mask if ``True``, the inference rule otherwise. Default: True.
        inplace: write the result into ``input``. Default: False.
        seed: 64-bit seed of the mask, an int or 0-dim int64 tensor; ``None`` draws one from torch's
            global generator. Default: None.
        step: training-step counter; a new step gives an independent mask. Default: 0.
        replica: data-parallel replica index folded into the counter. Default: 0.
        stream: separates independent masks drawn at one step by one site. Default: 0.
        noise_shape: Keras-style mask shape, one entry per input dimension: ``None`` or ``-1`` takes
            the input's size, ``1`` shares the mask along that axis (see :func:`check_noise_shape`).
            Default: None (one mask value per element).
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.

    Shape:
        Input: :math:`(*)`. Output: :math:`(*)`, same shape and dtype.

    Example::

        >>> x = torch.ones(2, 8)
        >>> y = dropout(x, p=0.5, seed=7)
        >>> sorted(set(y.flatten().tolist())) == [0.0, 2.0]
        True

    Reference: Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
    JMLR 2014.
    """
    _check_input(input, "dropout")
    p = check_probability(p)
    check_scaling(scaling)
    replica = _check_counter_int("replica", replica)
    stream = _check_counter_int("stream", stream)
    mask_shape = resolve_noise_shape(input.shape, noise_shape)
    if not training:
        return inference_rule(input, p, scaling, inplace)
    if p == 0.0:
        return input
    scale = 1.0 / (1.0 - p) if scaling == "inverted" and p < 1.0 else 1.0
    if p == 1.0:
        scale, seed = 0.0, (0 if seed is None else seed)  # every element dropped: no key drawn, as torch draws none
    out = masked_scale(input, seed_tensor(seed), _step_tensor(step), replica, stream, drop_threshold(p),
                       scale, list(mask_shape))
    if inplace:
        return input.copy_(out)
    return out


def feature_dropout(input: torch.Tensor, p: float, training: bool, inplace: bool, *, batched: bool,
                    op: str, **kwargs) -> torch.Tensor:
    """Channel dropout as torch's ``feature_dropout``: one mask value per (example, channel).

    ``batched`` reads the input as :math:`(N, C, *)`; otherwise as :math:`(C, *)`, one mask value per
    channel (torch's unbatched form). Trailing dimensions share the mask. Raises
    :class:`InputRankError` when fewer than two dimensions remain (batched form) and a mask is drawn
    (:func:`draws_feature_mask`); otherwise, as in torch, any rank passes.
    """
    _check_input(input, op)
    if kwargs.get("noise_shape") is not None:
        raise ValueError(f"{op} fixes its own noise_shape (one mask value per channel); use dropout() "
                         "for a custom noise_shape")
    kwargs.pop("noise_shape", None)
    if input.dim() + (0 if batched else 1) < 2 and draws_feature_mask(input, p, training):
        raise InputRankError(f"{op}: Feature dropout requires at least 2 dimensions in the input, but got "
                             f"input of shape {tuple(input.shape)}")
    leading = min(2 if batched else 1, input.dim())
    noise_shape = tuple([None] * leading + [1] * (input.dim() - leading))
    return dropout(input, p, training, inplace, noise_shape=noise_shape, **kwargs)


def draws_feature_mask(input: torch.Tensor, p: float, training: bool) -> bool:
    """Whether channel dropout draws a mask, which needs a channel axis: torch's rule (``_dropout_impl``).

    In evaluation, at ``p = 0``, at ``p = 1`` (zeros) and for an empty input no mask is drawn, so
    torch returns input of any rank; droplab does the same.
    """
    return training and 0.0 < check_probability(p) < 1.0 and input.numel() > 0


def _warn_rank(op: str, ndim: int, expected: str, spatial: int) -> None:
    # torch's wording, so filters and tests written for torch match
    warnings.warn(f"{op}: Received a {ndim}-D input to {op}, which is deprecated and will result in an error in "
                  f"a future release. To retain the behavior and silence this warning, please use dropout instead. "
                  f"Note that {op} exists to provide channel-wise dropout on inputs with {spatial} spatial "
                  f"dimensions, a channel dimension, and an optional batch dimension (i.e. {expected} inputs).",
                  stacklevel=3)


@fx_traceable
def dropout1d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole channels of a 1-D signal: one mask value per :math:`(n, c)`, shared along length.

    Scaling and keyword arguments as :func:`dropout`.

    Shape: Input :math:`(N, C, L)` or :math:`(C, L)`; output the same. Any other rank raises
    :class:`InputRankError` (a ``RuntimeError``, as in torch).

    Reference: Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015.
    """
    _check_input(input, "dropout1d")
    if input.dim() not in (2, 3):
        raise InputRankError(f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input. Note that "
                             "dropout1d exists to provide channel-wise dropout on inputs with 1 spatial dimension, "
                             "a channel dimension, and an optional batch dimension (i.e. 2D or 3D inputs).")
    return feature_dropout(input, p, training, inplace, batched=input.dim() == 3, op="dropout1d", **kwargs)


@fx_traceable
def dropout2d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole feature maps: one mask value per :math:`(n, c)`, shared over height and width.

    Scaling and keyword arguments as :func:`dropout`. Input ranks follow ``torch.nn.functional.dropout2d``.

    Shape: Input :math:`(N, C, H, W)` or :math:`(N, C, L)`; output the same.

    .. warning::
        As in torch, a 3-D input is read as :math:`(N, C, L)` (one mask value per :math:`(n, c)`), not as
        an unbatched :math:`(C, H, W)`, with torch's warning; other ranks than 3 and 4 warn and are read
        as :math:`(N, C, *)`.

    Reference: Tompson et al., "Efficient Object Localization Using Convolutional Networks", CVPR 2015.
    """
    _check_input(input, "dropout2d")
    if input.dim() not in (3, 4):
        _warn_rank("dropout2d", input.dim(), "3D or 4D", 2)
    if input.dim() == 3:
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "This behavior will change in a future release to interpret the input as one without a "
                      "batch dimension, i.e. shape (C, H, W). To maintain the 1D channel-wise dropout behavior, "
                      "please switch to using dropout1d instead.", stacklevel=2)
    return feature_dropout(input, p, training, inplace, batched=True, op="dropout2d", **kwargs)


@fx_traceable
def dropout3d(input: torch.Tensor, p: float = 0.5, training: bool = True, inplace: bool = False,
              **kwargs) -> torch.Tensor:
    r"""Zero whole 3-D feature volumes: one mask value per :math:`(n, c)`, shared over D, H, W.

    Scaling and keyword arguments as :func:`dropout`. Input ranks follow ``torch.nn.functional.dropout3d``:
    other ranks than 4 and 5 warn, and every rank but 5 is read as unbatched :math:`(C, *)`.

    Shape: Input :math:`(N, C, D, H, W)` or :math:`(C, D, H, W)`; output the same.
    """
    _check_input(input, "dropout3d")
    if input.dim() not in (4, 5):
        _warn_rank("dropout3d", input.dim(), "4D or 5D", 3)
    return feature_dropout(input, p, training, inplace, batched=input.dim() == 5, op="dropout3d", **kwargs)
