"""Noise variants as modules: Gaussian dropout, alpha dropout (element and channel), input dropout."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import functional as F
from ..functional.noise import check_gaussian_probability
from ._base import StochasticModule

__all__ = ["GaussianDropout", "AlphaDropout", "FeatureAlphaDropout", "InputDropout"]


class _NoiseDropout(StochasticModule):
    """Shared by the multiplicative/alpha noise modules: no scaling choice, reported as ``"noise"``."""

    site_scaling = "noise"  # what droplab.sites reports: not a 0/1 mask with a rescale

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 share_across_ranks: bool = False) -> None:
        super().__init__(p, seed=seed, share_across_ranks=share_across_ranks)
        self.inplace = bool(inplace)

    def _repr_fields(self):
        # the scaling convention is fixed by the variant, not a constructor argument
        return [(k, v) for k, v in super()._repr_fields() if k != "scaling"]

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace)]

    def _call(self, input: torch.Tensor, fn, **extra) -> torch.Tensor:
        return self._call_functional(fn, input, self.inplace, **extra)


class GaussianDropout(_NoiseDropout):
    r"""Multiply by Gaussian noise :math:`\mathcal{N}(1, p/(1-p))` in training; the identity at inference.

    The noise has the mean and variance of inverted dropout's mask at rate ``p`` (Srivastava et al.
    2014, section 10) but no zeros. Noise comes from droplab's generator and is regenerated in backward.

    Args:
        p: the equivalent drop rate, ``0 <= p < 1``. Default: 0.5.
        inplace: operate in place. Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        noise_shape: Keras-style noise shape (``1`` shares one noise value along an axis). Default: None.
        share_across_ranks: the same noise on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(*)`, output the same.

    Example::

        >>> m = GaussianDropout(0.2, seed=0)
        >>> m(torch.ones(3, 4)).shape
        torch.Size([3, 4])

    .. warning::
        ``p = 1`` is rejected (infinite noise variance), also by ``set_rate`` and schedules.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 noise_shape: Sequence[int | None] | None = None, share_across_ranks: bool = False) -> None:
        noise_shape = F.check_noise_shape(noise_shape)
        super().__init__(p, inplace, seed=seed, share_across_ranks=share_across_ranks)
        self.noise_shape = noise_shape

    check_rate = staticmethod(check_gaussian_probability)  # set_rate validates with it before assigning

    @property
    def p(self) -> float:
        return self._p

    @p.setter
    def p(self, value: float) -> None:
        self._p = check_gaussian_probability(value)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace), ("noise_shape", self.noise_shape)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call(input, F.gaussian_dropout, noise_shape=self.noise_shape)


class AlphaDropout(_NoiseDropout, nn.AlphaDropout):
    r"""Alpha dropout for SELU networks: dropped units take SELU's saturation value, moments preserved.

    Training: :math:`y = a\,(x \odot m + \alpha'(1 - m)) + b`, :math:`\alpha' = -\lambda\alpha`,
    :math:`a = ((1-p)(1 + p\alpha'^2))^{-1/2}`, :math:`b = -a\alpha' p`, so standard-normal input keeps
    mean 0 and variance 1. Inference: the identity. Drop-in for ``torch.nn.AlphaDropout``: a subclass,
    same formulas (:func:`droplab.convert` swaps it).

    Args:
        p: drop probability. Default: 0.5.
        inplace: operate in place. Default: False.
        seed: ``None`` (a fresh key from torch's default generator at each training forward, as torch) or a
            64-bit int (counter-based, resumable). Default: None.
        noise_shape: Keras-style mask shape, as Keras' ``AlphaDropout(noise_shape=...)``: one entry per
            input dimension, ``1`` shares the mask (and so the dropped units' value) along an axis,
            ``None`` or ``-1`` keeps the input's size. Checked at construction. Default: None.
        share_across_ranks: the same mask on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(*)`, output the same.

    Example::

        >>> m = AlphaDropout(0.1, seed=0)
        >>> y = m(torch.randn(1000))
        >>> shared = AlphaDropout(0.5, seed=0, noise_shape=(None, 1))   # one mask value per row
        >>> y = shared(torch.ones(4, 6))
        >>> bool((y == y[:, :1]).all())      # every row kept or dropped as a whole
        True

    .. warning::
        At ``p = 1`` the output is all zeros, as in torch: no affine map restores variance 1 there.

    Reference: Klambauer et al., "Self-Normalizing Neural Networks", NeurIPS 2017.
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, *, seed: int | None = None,
                 noise_shape: Sequence[int | None] | None = None, share_across_ranks: bool = False) -> None:
        noise_shape = F.check_noise_shape(noise_shape)
        super().__init__(p, inplace, seed=seed, share_across_ranks=share_across_ranks)
        self.noise_shape = noise_shape

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace), ("noise_shape", self.noise_shape)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call(input, F.alpha_dropout, noise_shape=self.noise_shape)


class FeatureAlphaDropout(_NoiseDropout, nn.FeatureAlphaDropout):
    r"""Alpha dropout of whole channels of :math:`(N, C, *)` input: one mask value per (example, channel).

    Formulas as :class:`AlphaDropout`; drop-in for ``torch.nn.FeatureAlphaDropout``.

    Args: as :class:`AlphaDropout`.

    Shape:
        Input :math:`(N, C, *)`, output the same.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call(input, F.feature_alpha_dropout)


class InputDropout(StochasticModule):
    r"""Dropout for raw input features, optionally one feature mask shared by the whole batch.

    Training, inverted scaling: :math:`y_{n,f} = x_{n,f} m_{n,f} / (1-p)`; with
    ``share_across_batch=True`` one mask :math:`m_f` is drawn per call and shared by every example.

    Args:
        p: drop probability. Default: 0.2 (a keep rate of 0.8 on inputs, Srivastava et al. 2014).
        inplace: operate in place. Default: False.
        share_across_batch: one feature mask for the whole batch (dimension 0). Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        scaling: ``"inverted"`` or ``"classic"``. Default: ``"inverted"``.
        share_across_ranks: the same mask on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(N, *)`, output the same.

    Example::

        >>> m = InputDropout(0.5, share_across_batch=True, seed=0)
        >>> y = m(torch.ones(8, 5))
        >>> bool((y == y[0]).all())
        True

    .. warning::
        Zeroing means "missing" only for standardized inputs (mean 0): standardize raw features first.
    """

    def __init__(self, p: float = 0.2, inplace: bool = False, *, share_across_batch: bool = False,
                 seed: int | None = None, scaling: str = "inverted", share_across_ranks: bool = False) -> None:
        super().__init__(p, seed=seed, scaling=scaling, share_across_ranks=share_across_ranks)
        self.inplace = bool(inplace)
        self.share_across_batch = bool(share_across_batch)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("inplace", self.inplace), ("share_across_batch", self.share_across_batch)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(F.input_dropout, input, self.inplace, share_across_batch=self.share_across_batch,
                                     scaling=self.scaling)
