"""roost: an asyncio actor-model runtime for reliable AI pipelines.

This module exports the everyday API; everything else lives in the
subpackages (`roost.actors`, `roost.mailbox`, `roost.runtime`, `roost.storage`)
and `roost.errors`.
"""

from roost.actors import (
    Actor,
    ActorContext,
    ActorRef,
    Backoff,
    ChildInfo,
    ChildSpec,
    Message,
    Pool,
    StartChild,
    StopChild,
    Supervisor,
    SupervisorSpec,
    Terminated,
    WhichChildren,
)
from roost.errors import (
    ActorNameTaken,
    ActorNotFound,
    ActorStartFailed,
    ActorStopped,
    AskTimeout,
    ConfigurationError,
    IntensityExceeded,
    MailboxFull,
    RoostError,
)
from roost.mailbox import DeadLetter
from roost.runtime import ActorSystem, TraceContext, configure_logging, current_trace

__all__ = [
    "Actor",
    "ActorContext",
    "ActorNameTaken",
    "ActorNotFound",
    "ActorRef",
    "ActorStartFailed",
    "ActorStopped",
    "ActorSystem",
    "AskTimeout",
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "ConfigurationError",
    "DeadLetter",
    "IntensityExceeded",
    "MailboxFull",
    "Message",
    "Pool",
    "RoostError",
    "StartChild",
    "StopChild",
    "Supervisor",
    "SupervisorSpec",
    "Terminated",
    "TraceContext",
    "WhichChildren",
    "configure_logging",
    "current_trace",
]
