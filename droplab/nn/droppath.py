"""``DropPath``: stochastic depth for residual branches."""

from __future__ import annotations

import torch

from .. import functional as F
from ._base import StochasticModule

__all__ = ["DropPath", "drop_path_rates"]

drop_path_rates = F.drop_path_rates


class DropPath(StochasticModule):
    r"""Drop the residual branch of whole examples with probability ``p`` (stochastic depth).

    One mask value per example (noise shape :math:`(N, 1, \dots, 1)`). With ``scale_by_keep=True``
    kept examples are multiplied by :math:`1/(1-p)` and inference is the identity; with
    ``scale_by_keep=False`` training does not rescale and inference multiplies by :math:`1-p` (classic
    scaling), so the expectation matches either way. Rates rising with depth:
    :func:`drop_path_rates`.

    Args:
        p: probability of dropping an example's branch. Default: 0.1.
        scale_by_keep: inverted (``True``) or classic (``False``) scaling. Default: True.
        inplace: operate in place. Default: False.
        seed: 64-bit seed; ``None`` draws one from torch's global generator. Default: None.
        share_across_ranks: draw the same masks on every data-parallel rank. Default: False.

    Shape:
        Input :math:`(N, *)`; output the same.

    Example::

        >>> block = torch.nn.Linear(8, 8)
        >>> drop = DropPath(0.2, seed=0)
        >>> x = torch.randn(4, 8)
        >>> y = x + drop(block(x))           # on the branch, never on the identity path

    Reference: Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016.

    .. warning::
        Put it on the residual branch only. On the skip path (``drop(x + block(x))``) a dropped
        example loses its whole signal for every later block.

    .. warning::
        timm's ``scale_by_keep=False`` leaves inference unscaled, which biases the output; here it
        selects classic scaling (inference multiplies by :math:`1-p`).
    """

    def __init__(self, p: float = 0.1, scale_by_keep: bool = True, inplace: bool = False, *,
                 seed: int | None = None, share_across_ranks: bool = False) -> None:
        super().__init__(p, seed=seed, scaling="inverted" if scale_by_keep else "classic",
                         share_across_ranks=share_across_ranks)
        self.scale_by_keep = bool(scale_by_keep)
        self.inplace = bool(inplace)

    def _extra_fields(self) -> list[tuple[str, object]]:
        return [("scale_by_keep", self.scale_by_keep), ("inplace", self.inplace)]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._call_functional(F.drop_path, input, inplace=self.inplace, scale_by_keep=self.scale_by_keep)
