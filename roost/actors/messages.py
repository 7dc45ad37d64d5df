"""Events the runtime delivers to actors, and the reasons an actor stops."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef


class StopReason(enum.StrEnum):
    """Why an actor stopped for good (`Terminated.reason`); compares equal to its string.

    When more than one applies, the first in this order wins: `failure`, `killed`, `normal`.
    """

    #: Stopped on request (`ref.stop()`, `StopChild`, a normal exit it was not restarted
    #: after) or by shutdown, with nothing cut short.
    NORMAL = "normal"
    #: Crashed and was not restarted: given up on by its supervisor (a temporary child,
    #: intensity exceeded), a sibling of a supervisor that gave up, or stopped while it
    #: waited for a restart after a crash. `Terminated.error` says why.
    FAILURE = "failure"
    #: Something had to be cut short: the message it was handling, or its `on_stop`, was
    #: cancelled after `shutdown_timeout` (or at once when that is 0), or it ignored the
    #: cancellation and was abandoned.
    KILLED = "killed"


class Terminated(msgspec.Struct, frozen=True):
    """A watched actor has stopped, delivered once to each watcher.

    Attributes:
        ref: the actor that stopped.
        reason: a `StopReason`: `"normal"`, `"failure"` or `"killed"`.
        error: the exception behind a `"failure"` (the crash, or the supervisor's
            `IntensityExceeded`), else None.
    """

    ref: ActorRef
    reason: StopReason
    error: Any = None
