"""droplab's dropout modules: thin holders of a rate, a seed and a step over :mod:`droplab.functional`."""

from ._base import StochasticModule
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d

__all__ = ["StochasticModule", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d"]
