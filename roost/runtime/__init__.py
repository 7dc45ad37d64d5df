"""The runtime: the actor system an application enters, logging setup, and `roost run`."""

from roost.runtime.gc_tuning import tune_gc
from roost.runtime.log import configure_logging
from roost.runtime.system import ActorSystem
from roost.trace import TraceContext, current_trace

__all__ = [
    "ActorSystem",
    "TraceContext",
    "configure_logging",
    "current_trace",
    "tune_gc",
]
