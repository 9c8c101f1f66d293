"""``WeightDrop``: DropConnect on the hidden-to-hidden weights of ``torch.nn.LSTM`` / ``GRU`` (AWD-LSTM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import functional as F
from ._base import StochasticModule

__all__ = ["WeightDrop"]


class WeightDrop(StochasticModule):
    r"""Drop the recurrent weights of an ``nn.LSTM`` / ``nn.GRU`` with probability ``p``, one mask per forward.

    The recurrent connections :math:`W_{hh}` are where an RNN overfits, but dropping the hidden state
    itself at each step breaks the fast fused kernels; dropping the *weights* once per forward
    regularizes the same connections and keeps ``torch.nn.LSTM``'s own implementation (Merity, Keskar,
    Socher, AWD-LSTM). Inverted scaling: training uses :math:`W \odot M / (1-p)`, inference the raw
    weights; classic: :math:`W \odot M` and :math:`(1-p) W`.

    The wrapped module keeps its parameters, so ``state_dict`` holds ``module.weight_hh_l0`` (loadable
    into a plain LSTM after stripping ``module.``) plus this module's ``seed`` and ``step``. The dropped
    weights are handed to the RNN for one call only, never assigned as attributes: no parameter is
    deleted or replaced, and on CUDA they are laid out as one contiguous chunk in cuDNN's order, so
    torch never warns that "RNN module weights are not part of single contiguous chunk of memory".

    Args:
        module: the ``nn.LSTM`` or ``nn.GRU`` (any ``nn.RNNBase``) to wrap.
        p: probability of dropping each listed weight entry. Default: 0.5.
        weights: names of the flat weights to drop. Default: every ``weight_hh_l*`` of the module.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        As the wrapped module; returns what it returns (``output, (h_n, c_n)`` for an LSTM).

    Example::

        >>> lstm = WeightDrop(torch.nn.LSTM(8, 16, num_layers=2), p=0.5, seed=0)
        >>> out, (h, c) = lstm(torch.randn(5, 3, 8))
        >>> out.shape
        torch.Size([5, 3, 16])

    Reference: Merity, Keskar, Socher, "Regularizing and Optimizing LSTM Language Models", ICLR 2018;
    Wan et al., "Regularization of Neural Networks using DropConnect", ICML 2013.

    .. warning::
        It does not compile as one graph (``torch.compile(fullgraph=True)`` fails; ``torch._dynamo.explain``
        counts one graph break in training): the dropped weights reach the wrapped ``torch.nn`` RNN by
        swapping its ``_flat_weights`` list for the call, which dynamo does not trace through the RNN's
        fused kernel. The weight masks still come from the one dropout op and are regenerated in backward.
    """

    def __init__(self, module: nn.RNNBase, p: float = 0.5, weights: Sequence[str] | None = None, *,
                 seed: int | None = None, scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        if not isinstance(module, nn.RNNBase):
            raise TypeError(f"WeightDrop wraps nn.LSTM, nn.GRU or nn.RNN, but got {type(module).__name__}")
        names = list(module._flat_weights_names)
        if weights is None:
            weights = [n for n in names if n.startswith("weight_hh_l")]
        elif isinstance(weights, str):
            weights = [weights]
        weights = tuple(weights)
        unknown = [w for w in weights if w not in names]
        if unknown or not weights:
            raise ValueError(f"weights must name weights of the wrapped {type(module).__name__} "
                             f"(one or more of {names}), but got {list(weights)}")
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.module = module
        self.weights = weights
        self._layout_cache: dict = {}

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("weights", self.weights)]

    def _dropped_flat_weights(self, training: bool) -> list[torch.Tensor]:
        flat = list(self.module._flat_weights)
        names = self.module._flat_weights_names
        if training:
            seed, step = self._next_counter()
        for stream, name in enumerate(self.weights):
            i = names.index(name)
            if training:
                flat[i] = F.dropout(flat[i], self.p, True, seed=seed, step=step, replica=self.replica,
                                    stream=stream, scaling=self.scaling)
            else:
                flat[i] = F.dropout(flat[i], self.p, False, scaling=self.scaling)
        if flat[0].is_cuda and torch.backends.cudnn.is_acceptable(flat[0]):
            flat = self._as_one_chunk(flat)
        return flat

    def _as_one_chunk(self, flat: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of one differentiable buffer in cuDNN's layout (probed once by torch's own flattening)."""
        m = self.module
        key = (flat[0].device, flat[0].dtype, tuple(tuple(w.shape) for w in flat))
        layout = self._layout_cache.get(key)
        if layout is None:
            import torch.backends.cudnn.rnn as cudnn_rnn

            probes = [torch.empty_like(w) for w in flat]
            num_weights = (4 if m.bias else 2) + (1 if m.proj_size > 0 else 0)
            with torch.no_grad():
                torch._cudnn_rnn_flatten_weight(probes, num_weights, m.input_size, cudnn_rnn.get_cudnn_mode(m.mode),
                                                m.hidden_size, m.proj_size, m.num_layers, m.batch_first,
                                                bool(m.bidirectional))
            total = probes[0].untyped_storage().nbytes() // probes[0].element_size()
            layout = ([w.storage_offset() for w in probes], total)
            self._layout_cache[key] = layout
        offsets, total = layout
        pieces, position = [], 0
        for off, i in sorted((off, i) for i, off in enumerate(offsets)):
            if off > position:
                pieces.append(flat[i].new_zeros(off - position))
            pieces.append(flat[i].reshape(-1))
            position = off + flat[i].numel()
        if total > position:
            pieces.append(flat[0].new_zeros(total - position))
        buffer = torch.cat(pieces)
        return [buffer.narrow(0, off, w.numel()).view(w.shape) for off, w in zip(offsets, flat)]

    def forward(self, *args, **kwargs):
        x = args[0] if args else kwargs.get("input")
        data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
        if isinstance(data, torch.Tensor) and not data.is_floating_point():
            raise TypeError(f"WeightDrop expects a floating-point input sequence, but got {data.dtype}")
        training = self.training and self.p > 0.0
        if not training and (self.scaling == "inverted" or self.p == 0.0):
            return self.module(*args, **kwargs)
        flat = self._dropped_flat_weights(training)
        saved = self.module._flat_weights
        # RNNBase.forward reads _flat_weights; the parameters themselves stay untouched
        self.module._flat_weights = flat
        try:
            return self.module(*args, **kwargs)
        finally:
            self.module._flat_weights = saved

    def _apply(self, fn, recurse=True):
        self._layout_cache.clear()
        return super()._apply(fn, recurse)
