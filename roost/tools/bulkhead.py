"""Bulkhead: cap how many calls of one tool run at once, and how many may wait for a slot.

    bulkhead = Bulkhead("search", limit=4, max_waiting=16)
    async with bulkhead:        # waits for a slot, or raises ToolBusy at once
        await search(query)

Slots are handed to waiters first come, first served. A waiter that is
cancelled leaves the queue; if it had just been handed a slot, the slot passes
on to the next waiter, so cancellation never leaks a slot.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import Final

import anyio
import msgspec

from roost.errors import ConfigurationError, ToolBusy

__all__ = ["DEFAULT_MAX_WAITING", "Bulkhead", "BulkheadStatistics"]

DEFAULT_MAX_WAITING: Final = 100
"""Callers that may wait for a slot unless a tool says otherwise."""


class BulkheadStatistics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A snapshot of one bulkhead.

    Attributes:
        tool: The tool the bulkhead guards.
        limit: Calls allowed to run at once.
        max_waiting: Callers allowed to wait for a slot.
        running: Calls holding a slot now.
        waiting: Callers waiting for a slot now.
        rejected: Callers refused with `ToolBusy` so far.
    """

    tool: str
    limit: int
    max_waiting: int
    running: int
    waiting: int
    rejected: int


class Bulkhead:
    """The concurrency limit of one tool: an async context manager holding a slot.

    Use it from one event loop (it is not thread-safe).

    Args:
        tool: Name of the tool, used in errors.
        limit: Calls allowed to run at once (>= 1).
        max_waiting: Callers allowed to wait for a slot (>= 0); past that,
            entering raises `ToolBusy` at once.

    Raises:
        ConfigurationError: `limit` or `max_waiting` is out of range.
    """

    def __init__(
        self, tool: str, *, limit: int, max_waiting: int = DEFAULT_MAX_WAITING
    ) -> None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"tool {tool!r}: bulkhead limit={limit!r} is invalid; use a whole number >= 1"
            )
        if isinstance(max_waiting, bool) or not isinstance(max_waiting, int) or max_waiting < 0:
            raise ConfigurationError(
                f"tool {tool!r}: bulkhead max_waiting={max_waiting!r} is invalid; "
                "use a whole number >= 0"
            )
        self.tool = tool
        self.limit = limit
        self.max_waiting = max_waiting
        self._running = 0
        # An event is set when its waiter is handed a slot.
        self._waiters: deque[anyio.Event] = deque()
        self._rejected = 0

    async def __aenter__(self) -> None:
        """Take a slot, waiting in line if all are taken.

        Raises:
            ToolBusy: All slots are taken and `max_waiting` callers already wait.
                Nothing waited, so it is safe to retry later.
        """
        if self._running < self.limit and not self._waiters:
            self._running += 1
            return
        if len(self._waiters) >= self.max_waiting:
            self._rejected += 1
            raise ToolBusy(self.tool, self.limit, self.max_waiting)
        handed_over = anyio.Event()
        self._waiters.append(handed_over)
        try:
            await handed_over.wait()
        except BaseException:
            if handed_over.is_set():
                self._release()
            else:
                self._waiters.remove(handed_over)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Give the slot back (to the first waiter, if any)."""
        self._release()

    def statistics(self) -> BulkheadStatistics:
        """A snapshot of the limits and current use."""
        return BulkheadStatistics(
            tool=self.tool,
            limit=self.limit,
            max_waiting=self.max_waiting,
            running=self._running,
            waiting=len(self._waiters),
            rejected=self._rejected,
        )

    def _release(self) -> None:
        if self._waiters:
            # Hand the slot straight over, so no newcomer can take it first.
            self._waiters.popleft().set()
        else:
            self._running -= 1
