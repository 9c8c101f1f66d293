"""The lab: experiments on real data, a run store, reports and benchmarks (the ``droplab`` commands).

Heavy dependencies (matplotlib, optuna, rich, scikit-learn) are imported inside the functions that
need them and ask for the ``droplab[lab]`` extra when missing.
"""

from __future__ import annotations

__all__ = ["compare", "Comparison"]


def __getattr__(name: str):
    # the Python API, imported on first use so ``import droplab.lab`` stays light
    if name in __all__:
        from . import comparison

        return getattr(comparison, name)
    raise AttributeError(f"module 'droplab.lab' has no attribute {name!r}")
