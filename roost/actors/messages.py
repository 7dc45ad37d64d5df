"""Events the runtime delivers to actors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef


class Terminated(msgspec.Struct, frozen=True):
    """A watched actor has stopped, delivered once to each watcher.

    Attributes:
        ref: the actor that stopped.
        reason: `"normal"` (stopped on request or by shutdown), `"failure"`
            (given up on by its supervisor), or `"killed"` (cancelled after its
            shutdown timeout).
        error: the exception behind a `"failure"`, else None.
    """

    ref: ActorRef
    reason: str
    error: Any = None
