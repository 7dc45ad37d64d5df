"""The runtime's own messages, served before user messages through the priority lane."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from roost.actors.messages import StopReason

if TYPE_CHECKING:
    from roost.actors._cell import Cell


class Stop:
    """Stop the actor for good: its children, then its `on_stop`, then it is gone."""

    __slots__ = ("error", "reason")

    def __init__(self, reason: StopReason = StopReason.NORMAL,
                 error: BaseException | None = None) -> None:
        self.reason = reason
        self.error = error


class RestartChildren:
    """Restart a group of this actor's children now (posted after a backoff delay)."""

    __slots__ = ("failed", "group")

    def __init__(self, group: list[Cell], failed: Cell) -> None:
        self.group = group
        self.failed = failed


class Exit:
    """The actor asked to end itself (`ctx.stop()`): it stops, unless its supervisor restarts
    it after a normal exit (a `permanent` child), which then decides what follows."""

    __slots__ = ()


class StopInstance:
    """First half of a restart: stop the children and the current instance, keep the mailbox."""

    __slots__ = ("ack",)

    def __init__(self, ack: asyncio.Future[None] | None) -> None:
        self.ack = ack


class StartInstance:
    """Second half of a restart: create a fresh instance and run its `on_start`.

    The ack resolves to None once it runs, or to the exception `on_start` raised.
    With `report=False` (a caller waits for the first start and gets the error)
    a failed start is not also reported to the supervisor as a crash. With
    `fresh=True` the current instance is stopped first: a whole restart of one
    child in one round trip.
    """

    __slots__ = ("ack", "fresh", "report")

    def __init__(self, ack: asyncio.Future[BaseException | None] | None,
                 report: bool = True, fresh: bool = False) -> None:
        self.ack = ack
        self.report = report
        self.fresh = fresh


class ChildFailed:
    """A child raised (in `receive` for a tell, or `on_start`) or exited, and is suspended.

    `error` is None for a normal exit (`ctx.stop()` from inside the child).
    """

    __slots__ = ("child", "context", "error", "generation")

    def __init__(self, child: Cell, error: BaseException | None, context: str,
                 generation: int) -> None:
        self.child = child
        self.error = error
        self.context = context  # "receive", "start", "exit" or "supervision"
        self.generation = generation  # the child's restart count when it failed


class ChildStopped:
    """A child has terminated for good."""

    __slots__ = ("child", "error", "reason")

    def __init__(self, child: Cell, reason: StopReason, error: BaseException | None) -> None:
        self.child = child
        self.reason = reason
        self.error = error
