"""Drop-in replacements for ``torch.nn.Dropout`` and ``torch.nn.Dropout1d/2d/3d``.

Each class subclasses the torch class it replaces, takes its arguments (plus droplab's keywords),
follows its input-rank rules, warnings and exception types, and keeps the input's memory format.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import nn

from .. import functional as F
from .._fx import checks_fx_itself, leaf_proxy
from ..kernels.ops import dropout_node, eager_launcher
from ._base import StochasticModule

__all__ = ["Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]

_TWO_32 = 4294967296.0


class _DropoutNd(StochasticModule):
    #: the input rank whose mask is one value per (example, channel) (channel dropout), ``None``: element-wise
    _channel_rank: int | None = None

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 noise_shape: Sequence[int | None] | None = None, scaling: str = "inverted",
                 share_across_ranks: bool = False) -> None:
        noise_shape = F.check_noise_shape(noise_shape)  # at construction, not at the first forward
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.inplace = bool(inplace)
        self.noise_shape = noise_shape

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace), ("noise_shape", self.noise_shape)]

    @checks_fx_itself
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """The short eager path, else :meth:`_functional_forward` (the functional op, registered op inside).

        Inference and ``p = 0`` return first; a training forward where nothing traces or compiles goes
        from here to the CPU kernel through one autograd node (:mod:`droplab.kernels.ops`), with the
        same counters and so the same mask as the functional path.
        """
        if type(input) is not torch.Tensor:  # an fx proxy (recorded as one call_module), a subclass, a fake
            proxy = leaf_proxy(self, (input,), {})
            return proxy if proxy is not None else self._functional_forward(input)
        rank = self._channel_rank
        if self.noise_shape is not None or (rank is not None and input.dim() != rank):
            return self._functional_forward(input)
        p = self._p
        if not self.training or p == 0.0:
            if (p == 0.0 or self.scaling == "inverted") and input.is_floating_point():
                return input
            return self._functional_forward(input)
        launch = eager_launcher(input)
        if launch is None:
            return self._functional_forward(input)
        seed, step = self._eager_counters()
        if p == 1.0:
            scale = 0.0
        else:
            scale = 1.0 / (1.0 - p) if self.scaling == "inverted" else 1.0
        counters = (seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, step, self.replica, int(p * _TWO_32), scale,
                    None if rank is None else input.shape[:2] + (1,) * (rank - 2))
        if (input.requires_grad and torch.is_grad_enabled()) or getattr(_forward_ad, "_current_level", 0) >= 0:
            out = dropout_node(input, counters)  # one autograd node (its jvp serves forward-mode AD)
        else:
            out = launch(input, counters)
        return input.copy_(out) if self.inplace else out

    def _functional_forward(self, input: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Dropout(_DropoutNd, nn.Dropout):
    r"""During training, zero each element with probability ``p``; at inference use every element.

    Inverted scaling (default) multiplies kept elements by :math:`1/(1-p)` in training and is the
    identity at inference; classic scaling leaves training unscaled and multiplies by :math:`1-p` at
    inference. The mask is droplab's Philox mask of ``(key, step, replica)``: regenerated in backward,
    the same on every device, and different on each data-parallel rank. A subclass of
    ``torch.nn.Dropout``.

    Args:
        p: drop probability. Default: 0.5.
        inplace: operate in place. Default: False.
        seed: ``None`` (torch's behaviour: a fresh key from torch's default generator at each training
            forward, no counters in ``state_dict``) or a 64-bit int (counter-based masks, ``seed`` and
            ``step`` in ``state_dict``, exact resume). Default: None.
        noise_shape: Keras-style mask shape, one entry per input dimension (``1`` shares the mask
            along an axis, ``None`` or ``-1`` keeps the input's size), e.g. ``(None, 1, None)`` for one
            mask per sequence; checked at construction (:func:`droplab.functional.check_noise_shape`),
            and against the input's shape at each forward. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(*)`, output :math:`(*)` of the same shape and memory format.

    Example::

        >>> m = Dropout(0.5, seed=0)
        >>> y = m(torch.ones(4, 8))          # training: zeros and 2.0s, step advances
        >>> int(m.step)
        1
        >>> torch.equal(m.eval()(torch.ones(2)), torch.ones(2))
        True

    .. warning::
        Stricter than torch: a non-floating-point input raises :class:`droplab.functional.InputDtypeError`
        (a ``TypeError`` and a ``RuntimeError``) in evaluation mode too, where torch returns it unchanged.

    Reference: Srivastava et al., JMLR 2014.
    """

    def _functional_forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(F.dropout, input, self.inplace, scaling=self.scaling,
                                     noise_shape=self.noise_shape)


class _ChannelDropout(_DropoutNd):
    _functional = None

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        super().__init__(p, inplace, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace)]

    def _functional_forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(type(self)._functional, input, self.inplace, scaling=self.scaling)


class Dropout1d(_ChannelDropout, nn.Dropout1d):
    r"""Zero whole channels of ``(N, C, L)`` or ``(C, L)`` inputs with probability ``p``.

    One mask value per (example, channel), shared along the length. Arguments as :class:`Dropout`
    (the noise shape is fixed). Other ranks raise :class:`droplab.functional.InputRankError`, a
    ``RuntimeError`` as in torch (and a ``ValueError``).
    """

    _functional = staticmethod(F.dropout1d)
    _channel_rank = 3


class Dropout2d(_ChannelDropout, nn.Dropout2d):
    r"""Zero whole feature maps of ``(N, C, H, W)`` inputs with probability ``p``.

    Adjacent pixels of a feature map are strongly correlated, so element-wise dropout barely
    regularizes convolutions; dropping the whole map does (Tompson et al., CVPR 2015).
    Arguments as :class:`Dropout` (the noise shape is fixed).

    .. warning::
        As ``torch.nn.Dropout2d`` does, a 3-D input is read as :math:`(N, C, L)` (one mask value per
        :math:`(n, c)`), not as an unbatched :math:`(C, H, W)`, with torch's warning; other ranks than
        3 and 4 warn. Use :class:`Dropout1d` for :math:`(N, C, L)` inputs.
    """

    _functional = staticmethod(F.dropout2d)
    _channel_rank = 4


class Dropout3d(_ChannelDropout, nn.Dropout3d):
    r"""Zero whole feature volumes of ``(N, C, D, H, W)`` or ``(C, D, H, W)`` inputs with probability ``p``.

    Arguments as :class:`Dropout` (the noise shape is fixed). As ``torch.nn.Dropout3d``, other ranks
    than 4 and 5 warn, and every rank but 5 is read as unbatched :math:`(C, *)`.
    """

    _functional = staticmethod(F.dropout3d)
    _channel_rank = 5
