"""droplab's dropout modules: thin holders of a rate, a seed and a step over :mod:`droplab.functional`."""

from ._base import StochasticModule
from .attention import AttentionDropout
from .concrete import ConcreteDropout, total_regularization
from .dropblock import DropBlock1d, DropBlock2d, DropBlock3d
from .dropconnect import DropConnect
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .droppath import DropPath, drop_path_rates
from .embedding import EmbeddingDropout
from .locked import LockedDropout
from .noise import AlphaDropout, FeatureAlphaDropout, GaussianDropout, InputDropout
from .transformer import MultiheadSelfAttention, TransformerBlock
from .variational_rnn import VariationalGRU, VariationalLSTM
from .weight_drop import WeightDrop

__all__ = ["StochasticModule", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
           "AttentionDropout", "MultiheadSelfAttention", "TransformerBlock",
           "GaussianDropout", "AlphaDropout", "FeatureAlphaDropout", "InputDropout",
           "ConcreteDropout", "total_regularization",
           "DropBlock1d", "DropBlock2d", "DropBlock3d", "DropPath", "drop_path_rates", "DropConnect",
           "WeightDrop", "LockedDropout", "EmbeddingDropout", "VariationalLSTM", "VariationalGRU"]
