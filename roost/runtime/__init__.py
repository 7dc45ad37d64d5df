"""The runtime: the actor system, trace context and logging setup."""

from roost.runtime.log import configure_logging
from roost.runtime.pipelines import Pipelines, RunHandle, RunOutcome
from roost.runtime.system import ActorSystem
from roost.trace import TraceContext, current_trace

__all__ = [
    "ActorSystem",
    "Pipelines",
    "RunHandle",
    "RunOutcome",
    "TraceContext",
    "configure_logging",
    "current_trace",
]
