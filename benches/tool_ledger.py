"""Side-effecting tool calls/s through the idempotency ledger, 100 concurrent callers.

100 tasks each make 30 calls of a trivial side-effecting tool through
`system.tools.call`, each with its own key, so every call claims its key in the
ledger (durable) and records its result (durable) before it returns. Best of 3
rounds, each in a fresh store folder; units: calls/s.

`tool_ledger_sync_100`: the system's store in `sync` durability (each ledger write
acknowledged after its fsync, shared by a group commit). `tool_ledger_async_100`:
the store in `async` durability (acknowledged at commit).

Baseline, same run and concurrency (the first two figures): the naive durable
record, one synced LMDB write transaction per call (the result under its key),
run in a thread with `asyncio.to_thread`. Target: ratio >= 10 for the sync figure.

`tool_ledger_sync_100_vs_naive` is the sync figure again, against the naive
form of the same protocol: two synced transactions per call (the claim before the
tool runs, the result after), so that its ratio shows what group commit saves.
`tool_ledger_sync_100_ledger_only` is the ceiling any proxy can reach on this
store: the same claim and result writes made straight through `Ledger` (no actor
hop, no tool, no breaker), against the first baseline. Both inform; the target is
the first figure's.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import lmdb
import msgspec

import roost
from benches._figure import Figure, Target
from roost.storage import Durability, Ledger, Store

NAMES = ("tool_ledger_sync_100", "tool_ledger_async_100", "tool_ledger_sync_100_vs_naive",
         "tool_ledger_sync_100_ledger_only")
TARGETS = {"tool_ledger_sync_100": Target(ratio=10)}
BASELINE = "to_thread txn+sync per call"
NAIVE_LEDGER = "txn+sync per claim and result"
CALLERS = 100
PER_CALLER = 30
REPEATS = 3


@roost.tool
async def record(order: int) -> int:
    return order


async def timed_callers(call: Callable[[int], Awaitable[object]]) -> float:
    """Seconds for CALLERS tasks each awaiting PER_CALLER calls in turn."""

    async def caller(index: int) -> None:
        for n in range(PER_CALLER):
            await call(index * PER_CALLER + n)

    start = time.perf_counter()
    await asyncio.gather(*(caller(index) for index in range(CALLERS)))
    return time.perf_counter() - start


def best_rate(round_seconds: Callable[[Path], Coroutine[Any, Any, float]]) -> float:
    best = 0.0
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
            best = max(best, CALLERS * PER_CALLER / asyncio.run(round_seconds(Path(folder))))
    return best


def proxy_rate(durability: Durability) -> float:
    """Calls/s of `record` through the proxy and its ledger."""

    async def round_seconds(folder: Path) -> float:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(store=folder, durability=durability,
                                     log_format=None) as system:
            system.tools.register(record)
            return await timed_callers(
                lambda n: system.tools.call("record", key=f"order-{n}", order=n))

    return best_rate(round_seconds)


def ledger_rate() -> float:
    """Calls/s of a claim and a result written straight through the ledger, in sync mode."""

    async def round_seconds(folder: Path) -> float:
        async with Store.open(folder, durability="sync") as store:
            ledger = Ledger(store)

            async def call(n: int) -> None:
                claim = await ledger.claim("record", f"order-{n}", "fingerprint")
                await ledger.complete(claim.entry, msgspec.msgpack.encode(await record(order=n)))

            return await timed_callers(call)

    return best_rate(round_seconds)


def naive_rate(*, claim_first: bool) -> float:
    """Calls/s when each call writes its result, after its claim if `claim_first`, each write in
    a synced transaction of its own via to_thread."""

    async def round_seconds(folder: Path) -> float:
        env = lmdb.open(str(folder), map_size=64 * 2**20, max_dbs=8)
        db = env.open_db(b"ledger")

        def write(key: bytes, value: bytes) -> None:
            with env.begin(write=True, db=db) as txn:
                txn.put(key, value)

        async def call(n: int) -> object:
            key = f"record\x00order-{n}".encode()
            if claim_first:
                await asyncio.to_thread(write, key, b"in flight")
            result = await record(order=n)
            return await asyncio.to_thread(write, key, msgspec.msgpack.encode(result))

        try:
            return await timed_callers(call)
        finally:
            env.close()

    return best_rate(round_seconds)


def measure() -> list[Figure]:
    baseline, naive_ledger = naive_rate(claim_first=False), naive_rate(claim_first=True)
    synced, unsynced, ledger_only = proxy_rate("sync"), proxy_rate("async"), ledger_rate()
    return [
        Figure("tool_ledger_sync_100", synced, "calls/s", BASELINE, baseline),
        Figure("tool_ledger_async_100", unsynced, "calls/s", BASELINE, baseline),
        Figure("tool_ledger_sync_100_vs_naive", synced, "calls/s", NAIVE_LEDGER,
               naive_ledger),
        Figure("tool_ledger_sync_100_ledger_only", ledger_only, "calls/s", BASELINE, baseline),
    ]
