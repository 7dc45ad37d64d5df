"""Rejections/s of calls to a tool whose circuit breaker is open.

`tool_breaker_rejection`: one caller awaiting `system.tools.call("down")` in a loop
and catching `ToolUnavailable` (100k calls, best of 3, a fresh system each round,
no store). The breaker was opened by one counted failure (`failures=1`) and
its cooldown (an hour) does not end during the run. Units: rejections/s.
Baseline, same run: a raw `asyncio.Queue` + `Future` ask round trip
(`benches.ask_roundtrip.raw_ping_pong`). Target: ratio >= 1, a rejection costs
less than the cheapest hop to another task, because it is answered at the caller.

`tool_plain_breaker_rejection`, for comparison: the bare in-process check,
`CircuitBreaker.acquire()` on an open breaker raising and the loop catching
`ToolUnavailable`, against the same baseline.
"""

from __future__ import annotations

import asyncio
import time

import roost
from benches._actors import in_system
from benches._figure import Figure, Target
from benches.ask_roundtrip import raw_ping_pong
from roost.tools.breaker import CircuitBreaker

NAMES = ("tool_breaker_rejection", "tool_plain_breaker_rejection")
TARGETS = {"tool_breaker_rejection": Target(ratio=1)}
COUNT = 100_000
REPEATS = 3
OPEN = roost.Breaker(failures=1, cooldown=3600.0)


@roost.tool(read_only=True, breaker=OPEN)
async def down(n: int) -> None:
    raise roost.TransientToolError("the service is down")


def rejection_seconds(count: int) -> float:
    """Seconds for `count` calls of `down` rejected by its open breaker."""

    async def body(system: roost.ActorSystem) -> float:
        system.tools.register(down)
        call = system.tools.call
        try:
            await call("down", n=0)
        except roost.TransientToolError:
            pass
        assert system.tools.breaker_states() == {"down": "open"}
        start = time.perf_counter()
        for i in range(count):
            try:
                await call("down", n=i)
            except roost.ToolUnavailable:
                pass
        elapsed = time.perf_counter() - start
        assert system.tools.statistics().rejected == count
        return elapsed

    return in_system(body)


def plain_seconds(count: int) -> float:
    """Seconds for `count` rejections by `CircuitBreaker.acquire` alone."""
    breaker = CircuitBreaker("down", OPEN)
    breaker.on_failure(breaker.acquire(), roost.TransientToolError("down"))
    acquire = breaker.acquire
    start = time.perf_counter()
    for _ in range(count):
        try:
            acquire()
        except roost.ToolUnavailable:
            pass
    return time.perf_counter() - start


def measure() -> list[Figure]:
    roost.configure_logging("json", "critical")
    raw = max(COUNT / asyncio.run(raw_ping_pong(COUNT)) for _ in range(REPEATS))
    plain = max(COUNT / plain_seconds(COUNT) for _ in range(REPEATS))
    rejections = max(COUNT / rejection_seconds(COUNT) for _ in range(REPEATS))
    return [
        Figure("tool_breaker_rejection", rejections, "rejections/s", "asyncio_queue_future_ask",
               raw),
        Figure("tool_plain_breaker_rejection", plain, "rejections/s", "asyncio_queue_future_ask",
               raw),
    ]
