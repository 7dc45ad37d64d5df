"""Supervision: how fast a crashed child is back at work, and what crashes cost a pool.

`restart_latency_median` / `restart_latency_p99`: a child under a one_for_one
supervisor (no backoff: the mechanism, not the policy) is told to crash, then
asked a ping; the latency is from the crash message to the ping's reply, i.e.
until the replacement instance has handled the next message. 10k restarts;
reported as restarts/s (1 / latency) so higher is better. Baseline, same run:
raw asyncio, where a supervising coroutine catches the consumer task's
exception and starts a new consumer task on the same queue.

`pool_crash_throughput`: messages/s through a `Pool` of 8 workers where 1% of
the messages crash their worker (each crashing message is dropped to dead
letters at once, `poison_after=1`), against the same pool with no crashes.
Target: ratio >= 0.8.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import roost
from benches._figure import Figure, Target

NAMES = ("restart_latency_median", "restart_latency_p99", "pool_crash_throughput")
TARGETS = {"pool_crash_throughput": Target(ratio=0.8)}
RESTARTS = 10_000
POOL_MESSAGES = 100_000
CRASH_EVERY = 100  # 1%


class _Crash(Exception):
    pass


class Fragile(roost.Actor):
    """Crashes on "crash", answers anything else."""

    async def receive(self, message: Any) -> Any:
        if message == "crash":
            raise _Crash("asked to")
        return message


class Counted(roost.Actor):
    """Counts messages in a shared box; a message divisible by CRASH_EVERY crashes it."""

    def __init__(self, box: list[int], total: int, done: asyncio.Future[None], crashes: bool) -> None:
        self.box, self.total, self.done, self.crashes = box, total, done, crashes

    async def receive(self, message: int) -> None:
        self.box[0] += 1
        if self.box[0] == self.total and not self.done.done():
            self.done.set_result(None)
        if self.crashes and message % CRASH_EVERY == 0:
            raise _Crash("1% of the messages")


def _percentiles(latencies: list[float]) -> tuple[float, float]:
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99)]


async def _roost_restarts() -> tuple[float, float]:
    roost.configure_logging("json", "critical")
    async with roost.ActorSystem(log_format=None) as system:
        tree = roost.Supervisor.spec(
            "sup", max_restarts=RESTARTS * 2, within=60.0,
            backoff=roost.Backoff(initial=0.0, maximum=0.0),
            children=[roost.ChildSpec(factory=Fragile, name="fragile", poison_after=1)])
        await system.start(tree)
        child = system.lookup("/sup/fragile")
        latencies = []
        for i in range(RESTARTS):
            start = time.perf_counter()
            child.tell("crash")
            await child.ask(i)
            latencies.append(time.perf_counter() - start)
        return _percentiles(latencies)


async def _raw_restarts() -> tuple[float, float]:
    queue: asyncio.Queue[tuple[Any, asyncio.Future[Any] | None]] = asyncio.Queue()

    async def consume() -> None:
        while True:
            message, reply = await queue.get()
            if message == "crash":
                raise _Crash("asked to")
            if reply is not None:
                reply.set_result(message)

    async def supervise() -> None:
        while True:
            try:
                await asyncio.create_task(consume())
            except _Crash:
                continue

    supervisor = asyncio.create_task(supervise())
    loop = asyncio.get_running_loop()
    latencies = []
    for i in range(RESTARTS):
        start = time.perf_counter()
        queue.put_nowait(("crash", None))
        reply: asyncio.Future[Any] = loop.create_future()
        queue.put_nowait((i, reply))
        await reply
        latencies.append(time.perf_counter() - start)
    supervisor.cancel()
    return _percentiles(latencies)


async def _pool_rate(crashes: bool) -> float:
    roost.configure_logging("json", "critical")
    async with roost.ActorSystem(log_format=None) as system:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        box = [0]
        pool = await system.start(roost.Pool.spec(
            "pool", Counted, size=8, args=(box, POOL_MESSAGES, done, crashes),
            max_restarts=POOL_MESSAGES, within=60.0, poison_after=1,
            capacity=POOL_MESSAGES, backoff=roost.Backoff(initial=0.0, maximum=0.0)),
            capacity=POOL_MESSAGES)
        start = time.perf_counter()
        for i in range(1, POOL_MESSAGES + 1):
            pool.tell(i)
            if i % 1000 == 0:
                await asyncio.sleep(0)
        await done
        return POOL_MESSAGES / (time.perf_counter() - start)


def measure() -> list[Figure]:
    raw_median, raw_p99 = asyncio.run(_raw_restarts())
    median, p99 = asyncio.run(_roost_restarts())
    calm = max(asyncio.run(_pool_rate(False)) for _ in range(2))
    crashing = max(asyncio.run(_pool_rate(True)) for _ in range(2))
    return [
        Figure("restart_latency_median", 1 / median, "restarts/s", "raw_task_respawn",
               1 / raw_median),
        Figure("restart_latency_p99", 1 / p99, "restarts/s", "raw_task_respawn", 1 / raw_p99),
        Figure("pool_crash_throughput", crashing, "msg/s", "same_pool_without_crashes", calm),
    ]
