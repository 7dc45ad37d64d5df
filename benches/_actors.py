"""Shared bench actors and a helper to run a coroutine in a fresh system."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import roost


class Sink(roost.Actor):
    """Counts messages and resolves a future when it has seen `expected` of them."""

    def __init__(self, expected: int, done: asyncio.Future[None]) -> None:
        self.expected = expected
        self.done = done
        self.seen = 0

    async def receive(self, message: Any) -> None:
        self.seen += 1
        if self.seen == self.expected:
            self.done.set_result(None)


class Echo(roost.Actor):
    """Replies with the message it got."""

    async def receive(self, message: Any) -> Any:
        return message


class Idle(roost.Actor):
    """Does nothing; for spawn rate and memory."""

    async def receive(self, message: Any) -> None:
        return None


def in_system(body: Callable[[roost.ActorSystem], Awaitable[float]]) -> float:
    """Run `body(system)` inside a fresh ActorSystem (logging off) and return its result."""

    async def main() -> float:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(log_format=None) as system:
            return await body(system)

    return asyncio.run(main())
