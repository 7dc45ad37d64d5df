"""Actors: `Actor`, `ActorRef`, the actor context, supervisors and pools."""

from roost.actors.actor import Actor, Message
from roost.actors.child_spec import Backoff, ChildSpec
from roost.actors.context import ActorContext
from roost.actors.messages import Terminated
from roost.actors.pool import Pool
from roost.actors.ref import ActorRef
from roost.actors.supervisor import (
    ChildInfo,
    StartChild,
    StopChild,
    Supervisor,
    SupervisorSpec,
    WhichChildren,
)

__all__ = [
    "Actor",
    "ActorContext",
    "ActorRef",
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "Message",
    "Pool",
    "StartChild",
    "StopChild",
    "Supervisor",
    "SupervisorSpec",
    "Terminated",
    "WhichChildren",
]
