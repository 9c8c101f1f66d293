"""Functional dropout sites (moved to :mod:`droplab.graph`): this module keeps the old import path working."""

from .graph.probe import CallSite, probe, probe_sites
from .graph.routing import attach_routers, detach_routers

__all__ = ["CallSite", "probe", "probe_sites", "attach_routers", "detach_routers"]
