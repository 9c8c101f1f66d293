"""Conversion rules for other libraries' classes (moved to :mod:`droplab.graph.library_rules`): this module keeps
the old import path working."""

from .graph.library_rules import LIBRARY_RULES, LibraryRule, WholeBatchDropPath, library_rule

__all__ = ["LibraryRule", "LIBRARY_RULES", "library_rule", "WholeBatchDropPath"]
