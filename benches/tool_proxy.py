"""Tool calls/s through the tool proxy: one caller awaiting each call of a trivial read-only tool.

`system.tools.call("noop", n=i)` in a loop (30k calls, best of 3, a fresh system
each round, no store); the tool returns its argument. Units: calls/s.

`tool_call_overhead` — baseline, same run: a raw `asyncio.Queue` + `Future` ask
round trip (`benches.ask_roundtrip.raw_ping_pong`), the cheapest possible hop to
another task. Target: ratio >= 0.5.

`tool_direct_ratio` — baseline, same run: awaiting the tool function directly
(`await noop(n=i)`), no proxy at all; the ratio is the share of the direct rate
the proxy keeps.
"""

from __future__ import annotations

import asyncio
import time

import roost
from benches._actors import in_system
from benches._figure import Figure, Target
from benches.ask_roundtrip import raw_ping_pong

NAMES = ("tool_call_overhead", "tool_direct_ratio")
TARGETS = {"tool_call_overhead": Target(ratio=0.5)}
COUNT = 30_000
REPEATS = 3


@roost.tool(read_only=True)
async def noop(n: int) -> int:
    return n


def proxy_seconds(count: int) -> float:
    """Seconds for `count` calls of `noop` through `system.tools.call`, one after another."""

    async def body(system: roost.ActorSystem) -> float:
        system.tools.register(noop)
        call = system.tools.call
        await call("noop", n=0)  # the first call creates the proxy's per-tool state
        start = time.perf_counter()
        for i in range(count):
            await call("noop", n=i)
        return time.perf_counter() - start

    return in_system(body)


async def direct_seconds(count: int) -> float:
    """Seconds for `count` direct awaits of the tool function."""
    start = time.perf_counter()
    for i in range(count):
        await noop(n=i)
    return time.perf_counter() - start


def measure() -> list[Figure]:
    raw = max(COUNT / asyncio.run(raw_ping_pong(COUNT)) for _ in range(REPEATS))
    direct = max(COUNT / asyncio.run(direct_seconds(COUNT)) for _ in range(REPEATS))
    proxy = max(COUNT / proxy_seconds(COUNT) for _ in range(REPEATS))
    return [
        Figure("tool_call_overhead", proxy, "calls/s", "asyncio_queue_future_ask", raw),
        Figure("tool_direct_ratio", proxy, "calls/s", "direct_await_of_the_tool", direct),
    ]
