"""Asks/s with 1,000 concurrent askers on one actor (200k asks in all, best of 3).

Baseline, same run: the same 1,000 askers on a raw `asyncio.Queue` + `Future`
server task.
"""

from __future__ import annotations

import asyncio

from benches._figure import Figure
from benches.ask_roundtrip import raw_ping_pong, roost_ping_pong

NAMES = ("ask_concurrent_1000",)
COUNT = 200_000
ASKERS = 1000


def measure() -> list[Figure]:
    baseline = max(COUNT / asyncio.run(raw_ping_pong(COUNT, ASKERS)) for _ in range(3))
    value = max(COUNT / roost_ping_pong(COUNT, ASKERS) for _ in range(3))
    return [Figure("ask_concurrent_1000", value, "asks/s", "asyncio_queue_future_ask", baseline)]
