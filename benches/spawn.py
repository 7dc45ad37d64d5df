"""Spawn rate and memory per idle actor, for 100k actors.

Baselines, same run: 100k raw tasks each awaiting its own `asyncio.Queue`
(tasks created per second; bytes per task + queue). Memory is traced with
`tracemalloc` in a separate pass, so the rates are not slowed by it; it is
reported as actors per MiB so that higher is better. Targets: memory ratio
>= 1 (an idle actor costs no more than a task + queue), and 100k actors spawn
in under 2 s (spawn_rate >= 50k/s).
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

from benches._actors import Idle, in_system
from benches._figure import Figure, Target

NAMES = ("spawn_rate", "idle_actor_memory")
TARGETS = {"spawn_rate": Target(value=50_000), "idle_actor_memory": Target(ratio=1)}
COUNT = 100_000


async def _raw(count: int, trace: bool) -> float:
    async def idle(queue: asyncio.Queue[int]) -> None:
        await queue.get()

    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    queues = [asyncio.Queue() for _ in range(count)]  # type: ignore[var-annotated]
    tasks = [asyncio.create_task(idle(q)) for q in queues]
    await asyncio.sleep(0)  # every task has started and is waiting
    elapsed = time.perf_counter() - start
    if trace:
        used, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    for q in queues:
        q.put_nowait(0)
    await asyncio.gather(*tasks)
    return used / count if trace else elapsed


def _roost(count: int, trace: bool) -> float:
    async def body(system) -> float:  # type: ignore[no-untyped-def]
        if trace:
            tracemalloc.start()
        start = time.perf_counter()
        refs = [system.spawn(Idle) for _ in range(count)]
        await asyncio.sleep(0)
        elapsed = time.perf_counter() - start
        if trace:
            used, _ = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        assert len(refs) == count
        return used / count if trace else elapsed

    return in_system(body)


def measure() -> list[Figure]:
    raw_rate = max(COUNT / asyncio.run(_raw(COUNT, False)) for _ in range(2))
    roost_rate = max(COUNT / _roost(COUNT, False) for _ in range(2))
    raw_bytes = asyncio.run(_raw(COUNT, True))
    roost_bytes = _roost(COUNT, True)
    mib = 2**20
    return [
        Figure("spawn_rate", roost_rate, "actors/s", "raw_task_plus_queue", raw_rate),
        Figure("idle_actor_memory", mib / roost_bytes, "actors/MiB", "raw_task_plus_queue",
               mib / raw_bytes),
    ]
