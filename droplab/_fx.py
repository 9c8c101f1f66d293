"""torch.fx helpers shared by MC prediction and deployment."""

from __future__ import annotations

from torch import fx, nn

__all__ = ["LeafTracer"]


class LeafTracer(fx.Tracer):
    """A tracer that keeps the modules in ``leaves`` (by ``id``) opaque, as single call_module nodes."""

    def __init__(self, leaves: set[int]) -> None:
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return id(m) in self.leaves or super().is_leaf_module(m, qualname)
