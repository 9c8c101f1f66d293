"""droplab's dropout modules: thin holders of a rate, a seed and a step over :mod:`droplab.functional`."""

from ._base import StochasticModule
from .attention import AttentionDropout
from .concrete import ConcreteDropout, total_regularization
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .noise import AlphaDropout, FeatureAlphaDropout, GaussianDropout, InputDropout
from .transformer import MultiheadSelfAttention, TransformerBlock
from .dropblock import DropBlock1d, DropBlock2d, DropBlock3d
from .droppath import DropPath, drop_path_rates
from .dropconnect import DropConnect
from .weight_drop import WeightDrop
from .locked import LockedDropout
from .embedding import EmbeddingDropout
from .variational_rnn import VariationalGRU, VariationalLSTM

__all__ = ["StochasticModule", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
           "AttentionDropout", "MultiheadSelfAttention", "TransformerBlock",
           "GaussianDropout", "AlphaDropout", "FeatureAlphaDropout", "InputDropout",
           "ConcreteDropout", "total_regularization",
           "DropBlock1d", "DropBlock2d", "DropBlock3d", "DropPath", "drop_path_rates", "DropConnect",
           "WeightDrop", "LockedDropout", "EmbeddingDropout", "VariationalLSTM", "VariationalGRU"]
