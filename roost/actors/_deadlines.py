"""Ask timeouts on coarse slots: one loop timer per 10 ms slot instead of one per ask.

A loop timer (`call_later` + `cancel`) costs more than a whole ask round trip,
and nearly every ask is answered long before its deadline. Here an ask costs
one dict insert and one delete; a timeout fires at most `RESOLUTION` seconds
late, never early.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Any

from roost.errors import AskTimeout

RESOLUTION = 0.01  # seconds


class Deadlines:
    """Pending ask deadlines for one event loop."""

    __slots__ = ("_loop", "_slots")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, dict[asyncio.Future[Any], tuple[str, Any, float]]] = {}

    def add(self, reply: asyncio.Future[Any], timeout: float, path: str, message: Any) -> int:
        """Fail `reply` with `AskTimeout` unless it is done within `timeout` seconds.

        Returns:
            The slot, to pass to `discard` once the reply is done.
        """
        slot = math.ceil((self._loop.time() + timeout) / RESOLUTION)
        pending = self._slots.get(slot)
        if pending is None:
            pending = self._slots[slot] = {}
            # In a context of its own: the asker's context would keep its actor alive (an
            # actor that stopped since, with all it held) until the slot expires.
            self._loop.call_at(slot * RESOLUTION, self._expire, slot,
                               context=contextvars.Context())
        pending[reply] = (path, message, timeout)
        return slot

    def discard(self, slot: int, reply: asyncio.Future[Any]) -> None:
        """Forget a deadline (the reply came, or the asker gave up)."""
        pending = self._slots.get(slot)
        if pending is not None:
            pending.pop(reply, None)

    def _expire(self, slot: int) -> None:
        for reply, (path, message, timeout) in self._slots.pop(slot, {}).items():
            if not reply.done():
                reply.set_exception(AskTimeout(path, message, timeout))

    def __len__(self) -> int:
        return sum(len(pending) for pending in self._slots.values())
