"""Ask round trips/s: one asker awaiting each reply in turn (100k round trips, best of 3).

Baseline, same run: a raw `asyncio.Queue` + `Future` ping-pong with a consumer
task that resolves each future. Target: ratio >= 0.5.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from benches._actors import Echo, in_system
from benches._figure import Figure, Target

NAMES = ("ask_roundtrip",)
TARGETS = {"ask_roundtrip": Target(ratio=0.5)}
COUNT = 100_000


async def raw_ping_pong(count: int, askers: int = 1) -> float:
    """Seconds for `count` raw queue+future round trips spread over `askers` tasks."""
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any]]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def serve() -> None:
        while True:
            message, reply = await queue.get()
            reply.set_result(message)

    async def ask(n: int) -> None:
        for i in range(n):
            reply = loop.create_future()
            queue.put_nowait((i, reply))
            await reply

    server = asyncio.create_task(serve())
    start = time.perf_counter()
    await asyncio.gather(*(ask(count // askers) for _ in range(askers)))
    elapsed = time.perf_counter() - start
    server.cancel()
    return elapsed


def roost_ping_pong(count: int, askers: int = 1) -> float:
    """Seconds for `count` roost asks spread over `askers` tasks."""

    async def body(system) -> float:  # type: ignore[no-untyped-def]
        echo = system.spawn(Echo, capacity=max(askers * 2, 16))

        async def ask(n: int) -> None:
            for i in range(n):
                await echo.ask(i)

        start = time.perf_counter()
        await asyncio.gather(*(ask(count // askers) for _ in range(askers)))
        return time.perf_counter() - start

    return in_system(body)


def measure() -> list[Figure]:
    baseline = max(COUNT / asyncio.run(raw_ping_pong(COUNT)) for _ in range(3))
    value = max(COUNT / roost_ping_pong(COUNT) for _ in range(3))
    return [Figure("ask_roundtrip", value, "asks/s", "asyncio_queue_future_ask", baseline)]
