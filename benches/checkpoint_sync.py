"""Durable checkpoints/s of a ~1 KB state through roost's group-commit writer (sync mode).

`checkpoint_sync_1_writer`: one task saving checkpoints one after another (600 per
round). `checkpoint_sync_100_writers`: 100 tasks, each saving 20 checkpoints of its
own run at once. Every save waits for its fsync. Best of 3 rounds, each in a fresh
store folder; units: checkpoints/s.

Baseline, same run and concurrency: the naive durable write, one LMDB write
transaction per checkpoint in an `env.sync=True` environment, run in a thread with
`asyncio.to_thread`, same key layout and encoded record. Targets: ratio >= 10 at
100 writers, >= 1/1.2 at 1 writer.
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

from benches._figure import Figure, Target
from roost.storage import Checkpoint, CheckpointStore, Durability, Store, checkpoint_key

NAMES = ("checkpoint_sync_1_writer", "checkpoint_sync_100_writers")
TARGETS = {"checkpoint_sync_1_writer": Target(ratio=1 / 1.2),
           "checkpoint_sync_100_writers": Target(ratio=10)}
BASELINE = "to_thread txn+sync per checkpoint"
STATE = bytes(range(256)) * 4  # 1 KiB
REPEATS = 3


def best_rate(count: int, round_seconds: Callable[[Path], Coroutine[Any, Any, float]],
              ) -> float:
    """The best rate of a few rounds, each in a fresh folder (seconds come from the round)."""
    best = 0.0
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
            best = max(best, count / asyncio.run(round_seconds(Path(folder))))
    return best


async def timed_writers(writers: int, per_writer: int,
                        save: Callable[[str, int], Awaitable[object]]) -> float:
    """Seconds for `writers` tasks each awaiting `per_writer` saves of its own run in turn."""

    async def writer(index: int) -> None:
        for step in range(per_writer):
            await save(f"run-{index:03d}", step)

    start = time.perf_counter()
    await asyncio.gather(*(writer(index) for index in range(writers)))
    return time.perf_counter() - start


def roost_rate(writers: int, per_writer: int, durability: Durability) -> float:
    """Checkpoints/s saved through `CheckpointStore` by `writers` concurrent tasks."""

    async def round_seconds(folder: Path) -> float:
        async with Store.open(folder, durability=durability) as store:
            checkpoints = CheckpointStore(store)

            async def save(run_id: str, step: int) -> object:
                return await checkpoints.save(run_id, step=f"step-{step}",
                                              actor_path="/bench/worker", state=STATE)

            return await timed_writers(writers, per_writer, save)

    return best_rate(writers * per_writer, round_seconds)


def naive_rate(writers: int, per_writer: int) -> float:
    """Checkpoints/s with one synced LMDB write transaction per checkpoint via to_thread."""

    async def round_seconds(folder: Path) -> float:
        env = lmdb.open(str(folder), map_size=64 * 2**20, max_dbs=8)
        db = env.open_db(b"checkpoints")
        next_seq: dict[str, int] = {}

        def write(key: bytes, value: bytes) -> None:
            with env.begin(write=True, db=db) as txn:
                txn.put(key, value)

        async def save(run_id: str, step: int) -> object:
            seq = next_seq[run_id] = next_seq.get(run_id, 0) + 1
            record = Checkpoint(run_id=run_id, step=f"step-{step}", actor_path="/bench/worker",
                                seq=seq, timestamp=time.time(), state=STATE)
            return await asyncio.to_thread(write, checkpoint_key(run_id, seq),
                                           msgspec.msgpack.encode(record))

        try:
            return await timed_writers(writers, per_writer, save)
        finally:
            env.close()

    return best_rate(writers * per_writer, round_seconds)


def measure() -> list[Figure]:
    one = roost_rate(1, 600, "sync"), naive_rate(1, 600)
    hundred = roost_rate(100, 20, "sync"), naive_rate(100, 20)
    return [
        Figure("checkpoint_sync_1_writer", one[0], "checkpoints/s", BASELINE, one[1]),
        Figure("checkpoint_sync_100_writers", hundred[0], "checkpoints/s", BASELINE, hundred[1]),
    ]
