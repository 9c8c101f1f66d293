r"""The torch calls that apply dropout (the call forms), how to read their arguments, and the random ops that may not.

A functional site is a dropout call made inside a module's forward rather than a dropout module. The
covered call forms (:data:`CALL_FORMS`):

* ``torch.nn.functional.dropout``, ``dropout1d``, ``dropout2d``, ``dropout3d``, ``alpha_dropout``,
  ``feature_alpha_dropout``;
* ``torch.dropout``, ``torch.alpha_dropout``, ``torch.feature_alpha_dropout`` (the forms ``F.*`` call
  underneath, which some libraries call directly);
* ``torch.nn.functional.scaled_dot_product_attention(..., dropout_p > 0)``, including the one
  ``nn.MultiheadAttention`` issues inside ``F.multi_head_attention_forward``;
* ``Tensor.bernoulli_(p)`` with a float keep probability ``p < 1``, *when it is a keep mask*: the draw
  of hand-written dropout masks, among them timm's ``drop_path`` and torchvision's
  ``stochastic_depth`` *functions* (``x.new_empty(shape).bernoulli_(keep_prob)``). A probe forward
  (:mod:`droplab.graph.probe`) follows the filled tensor: it is a keep mask when it ends up
  multiplying the activations (after an optional division by a number, the inverted scaling); a
  ``bernoulli_`` whose result feeds anything else (DropBlock's block centres, expanded by a
  max-pool) is a random op droplab leaves alone. droplab fills a keep mask with its own (1 with
  probability ``p``), so the rest of the hand-written code runs unchanged.

Random ops (:data:`RANDOM_OPS`: ``torch.rand``, ``rand_like``, ``bernoulli``, ``Tensor.uniform_``, and
``bernoulli_`` with a tensor of probabilities, an explicit ``generator`` or a result that is no keep
mask) are never converted; :func:`droplab.sites` lists them, given an example input, as ``"random op,
not converted"`` with the reason.

Not covered: the in-place ``torch.dropout_`` family and calls inside ``torch.jit.script``'ed code
(TorchScript bypasses Python dispatch).

Why droplab's attention dropout does not use a fused kernel: torch's fused attention kernels (flash,
memory-efficient, cuDNN) draw their dropout mask inside the kernel from their own Philox state and
take no mask argument, so a mask that must be droplab's (seeded, the same on every device,
regenerated in backward from integers) cannot be fed to them. A routed
``scaled_dot_product_attention`` with ``dropout_p > 0`` therefore runs the math composition
(:math:`\mathrm{softmax}(QK^\top s + M)` materialized, then droplab's dropout, then :math:`\cdot V`).
On the CPU torch itself takes the math path whenever ``dropout_p > 0``, so nothing is lost there; on a
GPU the attention matrix is materialized. Calls with ``dropout_p = 0`` (inference) are never routed
and keep torch's fused kernels.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as TF

from .. import functional as DF

__all__ = ["CallForm", "CALL_FORMS", "Call", "bind", "attention_math", "keep_mask_fill", "RANDOM_OPS",
           "random_op_name"]


@dataclass(frozen=True)
class CallForm:
    """How to read one torch dropout call and what droplab runs in its place."""

    name: str  #: printed kind, e.g. "F.dropout"
    params: tuple[str, ...]  #: positional parameter names, input first
    defaults: dict  #: defaults of trailing parameters
    rate: str  #: the parameter holding the drop probability
    training: str | None  #: the parameter holding the training flag (None: active whenever rate > 0)
    droplab: Callable | None  #: droplab functional for the element-wise forms (None: attention)


_DROPOUT = ("input", "p", "training", "inplace")
_TORCH = ("input", "p", "train")
_SDPA = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def _form(name, params, defaults, droplab, rate="p", training="training") -> CallForm:
    return CallForm(name, params, defaults, rate, training, droplab)


def keep_mask_fill(input: torch.Tensor, p: float, training: bool = True, inplace: bool = True, *, seed, step,
                   replica: int = 0) -> torch.Tensor:
    """``input.bernoulli_(1 - p)`` on droplab's generator: 1 where droplab's mask keeps, 0 where it drops."""
    keep = DF.dropout(torch.ones_like(input), p, True, seed=seed, step=step, replica=replica, scaling="classic")
    return input.copy_(keep)


CALL_FORMS: dict[Callable, CallForm] = {
    TF.dropout: _form("F.dropout", _DROPOUT, {"p": 0.5, "training": True, "inplace": False}, DF.dropout),
    TF.dropout1d: _form("F.dropout1d", _DROPOUT, {"p": 0.5, "training": True, "inplace": False}, DF.dropout1d),
    TF.dropout2d: _form("F.dropout2d", _DROPOUT, {"p": 0.5, "training": True, "inplace": False}, DF.dropout2d),
    TF.dropout3d: _form("F.dropout3d", _DROPOUT, {"p": 0.5, "training": True, "inplace": False}, DF.dropout3d),
    TF.alpha_dropout: _form("F.alpha_dropout", _DROPOUT, {"p": 0.5, "training": False, "inplace": False},
                            DF.alpha_dropout),
    TF.feature_alpha_dropout: _form("F.feature_alpha_dropout", _DROPOUT,
                                    {"p": 0.5, "training": False, "inplace": False}, DF.feature_alpha_dropout),
    torch.dropout: _form("torch.dropout", _TORCH, {}, DF.dropout, training="train"),
    torch.alpha_dropout: _form("torch.alpha_dropout", _TORCH, {}, DF.alpha_dropout, training="train"),
    torch.feature_alpha_dropout: _form("torch.feature_alpha_dropout", _TORCH, {}, DF.feature_alpha_dropout,
                                       training="train"),
    TF.scaled_dot_product_attention: _form(
        "F.scaled_dot_product_attention", _SDPA,
        {"attn_mask": None, "dropout_p": 0.0, "is_causal": False, "scale": None, "enable_gqa": False},
        None, rate="dropout_p", training=None),
    torch.Tensor.bernoulli_: _form("Tensor.bernoulli_", ("input", "p", "generator"), {"p": 0.5, "generator": None},
                                   keep_mask_fill, training=None),
}


@dataclass
class Call:
    """One intercepted dropout call, its arguments bound to parameter names."""

    form: CallForm
    arguments: dict

    @property
    def p(self) -> float:
        """The drop probability the call passes (``1 - keep`` for ``bernoulli_(keep)``)."""
        return float(self.arguments[self.form.rate])

    @property
    def input(self) -> torch.Tensor:
        """The tensor the call masks (the query for attention, the tensor filled for ``bernoulli_``)."""
        return self.arguments[self.form.params[0]]

    @property
    def active(self) -> bool:
        """Whether torch would drop anything for this call (training and p > 0)."""
        training = True if self.form.training is None else bool(self.arguments[self.form.training])
        return training and self.p > 0

    @property
    def is_site(self) -> bool:
        """Element-wise dropout calls are sites at any p; attention only with ``dropout_p > 0``."""
        return self.form.droplab is not None or self.p > 0

    def run_droplab(self, input: torch.Tensor, *, seed, step, replica: int = 0, p: float | None = None) -> torch.Tensor:
        """The element-wise form on droplab's generator at rate ``p`` (default: the call's), in training mode
        (the caller decided that the call is active)."""
        inplace = bool(self.arguments.get("inplace", False))
        return self.form.droplab(input, self.p if p is None else p, True, inplace, seed=seed, step=step,
                                 replica=replica)

    @property
    def fills(self) -> bool:
        """The call fills its input in place with a mask (``bernoulli_``) rather than masking it."""
        return self.form.name == "Tensor.bernoulli_"


def bind(func: Callable, args: tuple, kwargs: dict | None) -> Call | None:
    """The :class:`Call` for ``func(*args, **kwargs)``, or None when ``func`` is not a dropout form."""
    form = CALL_FORMS.get(func)
    if form is None:
        return None
    arguments = dict(form.defaults)
    arguments.update(zip(form.params, args))
    arguments.update(kwargs or {})
    if form.name == "Tensor.bernoulli_":
        keep = arguments["p"]
        if arguments["generator"] is not None or isinstance(keep, torch.Tensor) or not 0 <= float(keep) < 1:
            return None  # probabilities per element, an explicit generator, or nothing dropped: not dropout
        arguments["p"] = 1.0 - float(keep)  # the drop rate
    return Call(form, arguments)


def attention_math(call: Call, drop: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``scaled_dot_product_attention`` as torch's math reference, with ``drop`` applied to the weights.

    Same masks and scale as torch: a boolean ``attn_mask`` marks positions that *take part*; a float
    one is added to the scores; ``is_causal`` keeps the lower triangle; ``enable_gqa`` repeats key and
    value heads. A query whose every key is masked gets zero weights (torch's safe softmax).
    """
    a = call.arguments
    q, k, v, mask = a["query"], a["key"], a["value"], a["attn_mask"]
    if a["enable_gqa"] and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if a["scale"] is None else a["scale"]
    scores = (q @ k.transpose(-2, -1)) * scale
    masked = False
    if a["is_causal"]:
        causal = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        masked = True
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
            masked = True
        else:
            scores = scores + mask
            masked = masked or bool(torch.isinf(mask).any())
    weights = torch.softmax(scores, dim=-1)
    if masked:
        weights = weights.nan_to_num(0.0)
    return drop(weights) @ v


#: random ops droplab never converts; listed (with the reason) when a probe forward meets them outside a
#: dropout module. ``Tensor.bernoulli_`` is here for the calls that are no keep mask.
RANDOM_OPS: dict[Callable, str] = {
    torch.rand: "torch.rand",
    torch.rand_like: "torch.rand_like",
    torch.bernoulli: "torch.bernoulli",
    torch.Tensor.bernoulli: "Tensor.bernoulli",
    torch.Tensor.bernoulli_: "Tensor.bernoulli_",
    torch.Tensor.uniform_: "Tensor.uniform_",
}


def random_op_name(func: Callable) -> str | None:
    """The printed name of a random op (:data:`RANDOM_OPS`), or None when ``func`` is not one."""
    return RANDOM_OPS.get(func)
