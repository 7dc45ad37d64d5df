"""Tell throughput: messages/s from one sender to one actor (1M messages, best of 3).

Baseline, same run: a raw `asyncio.Queue` producer/consumer pair moving the same
number of messages. Target: ratio >= 0.5.
"""

from __future__ import annotations

import asyncio
import time

from benches._actors import Sink, in_system
from benches._figure import Figure, Target

NAMES = ("tell_throughput",)
TARGETS = {"tell_throughput": Target(ratio=0.5)}
COUNT = 1_000_000


async def _raw_queue(count: int) -> float:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consume() -> None:
        for _ in range(count):
            await queue.get()

    start = time.perf_counter()
    consumer = asyncio.create_task(consume())
    for i in range(count):
        queue.put_nowait(i)
        if i % 1000 == 0:
            await asyncio.sleep(0)
    await consumer
    return time.perf_counter() - start


def _roost(count: int) -> float:
    async def body(system) -> float:  # type: ignore[no-untyped-def]
        done = asyncio.get_running_loop().create_future()
        sink = system.spawn(Sink, count, done, capacity=count + 1)
        start = time.perf_counter()
        for i in range(count):
            sink.tell(i)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await done
        return time.perf_counter() - start

    return in_system(body)


def measure() -> list[Figure]:
    baseline = max(COUNT / asyncio.run(_raw_queue(COUNT)) for _ in range(3))
    value = max(COUNT / _roost(COUNT) for _ in range(3))
    return [Figure("tell_throughput", value, "msg/s", "asyncio_queue_one_way", baseline)]
