"""Actors: `Actor`, `ActorRef`, the actor context, supervisors and pools."""

from roost.actors.actor import Actor, Message
from roost.actors.breaker import Breaker, BreakerState, CircuitBreaker
from roost.actors.child_spec import Backoff, ChildSpec
from roost.actors.context import ActorContext
from roost.actors.http_tool import HttpTool
from roost.actors.messages import Terminated
from roost.actors.pipeline import Pipeline, RunStep, Step, StepFailure
from roost.actors.pool import Pool
from roost.actors.ref import ActorRef
from roost.actors.retry import Retry
from roost.actors.run import NeedsReview
from roost.actors.supervisor import (
    ChildInfo,
    StartChild,
    StopChild,
    Supervisor,
    SupervisorSpec,
    WhichChildren,
)
from roost.actors.tool_client import Tools
from roost.actors.tool_proxy import ToolProxy, ToolStatistics
from roost.actors.tools import Done, NotDone, ToolRegistry, ToolSpec, tool

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "Backoff",
    "Breaker",
    "BreakerState",
    "ChildInfo",
    "ChildSpec",
    "CircuitBreaker",
    "Done",
    "HttpTool",
    "Message",
    "NeedsReview",
    "NotDone",
    "Pipeline",
    "Pool",
    "Retry",
    "RunStep",
    "StartChild",
    "Step",
    "StepFailure",
    "StopChild",
    "Supervisor",
    "SupervisorSpec",
    "Terminated",
    "ToolProxy",
    "ToolRegistry",
    "ToolSpec",
    "ToolStatistics",
    "Tools",
    "WhichChildren",
    "tool",
]
