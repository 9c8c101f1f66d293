"""droplab: dropout regularization for PyTorch, complete, reproducible and fast.

Core (always imported): :mod:`droplab.rng` (the mask generator), :mod:`droplab.functional`,
:mod:`droplab.nn`, :mod:`droplab.graph` (what droplab sees in a model), and the site tools :func:`convert`,
:func:`sites`, :func:`set_rate`.
Other subpackages are imported on first use so ``import droplab`` stays light.
"""

from __future__ import annotations

import importlib

from . import functional, graph, nn, rng
from .conversion import Site, convert, set_rate, sites

__version__ = "0.2.0"

_LAZY_MODULES = ("kernels", "schedules", "mc", "deploy", "guards", "diagnostics", "lab")
_LAZY_ATTRS: dict[str, str] = {"inference_mode": "guards", "assert_inference": "guards",
                               "DropoutScheduler": "schedules"}

__all__ = ["__version__", "functional", "nn", "rng", "graph", "Site", "convert", "set_rate", "sites",
           "DropoutScheduler", "inference_mode", "assert_inference",
           *_LAZY_MODULES]


def __getattr__(name: str):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_ATTRS:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_ATTRS[name]}"), name)
    raise AttributeError(f"module 'droplab' has no attribute {name!r}")
