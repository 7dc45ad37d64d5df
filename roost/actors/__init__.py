"""The actor engine: `Actor`, `ActorRef`, the actor context, supervisors, child specs and pools.

The contract: an actor handles one message at a time from its bounded mailbox;
`receive`'s return value answers an `ask`. Every actor has a supervisor that
restarts it by its `ChildSpec` when it fails (same ref, same mailbox), within a
restart intensity past which the supervisor itself fails. This package depends
only on `roost.mailbox`, `roost.storage`, `roost.errors` and `roost.trace`; the
runtime (`roost.runtime`) builds the system on top of it.
"""

from roost.actors.actor import Actor, Message
from roost.actors.child_spec import Backoff, ChildSpec
from roost.actors.context import ActorContext
from roost.actors.messages import StopReason, Terminated
from roost.actors.pool import Pool
from roost.actors.ref import ActorRef
from roost.actors.supervisor import (
    ChildInfo,
    DeleteChild,
    RestartChild,
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
    "DeleteChild",
    "Message",
    "Pool",
    "RestartChild",
    "StartChild",
    "StopChild",
    "StopReason",
    "Supervisor",
    "SupervisorSpec",
    "Terminated",
    "WhichChildren",
]
