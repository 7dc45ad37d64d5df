"""Shared by the pipeline benches: a 5-step pipeline of no-op actor steps, and its baselines."""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lmdb
import msgspec

import roost
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.storage import Checkpoint, checkpoint_key

STEPS = 5


class Noop(roost.Actor):
    """A step's worker that does nothing and returns None."""

    async def receive(self, message: RunStep) -> Any:
        return None


def chain(name: str = "noop5") -> Pipeline:
    """`s0 -> s1 -> s2 -> s3 -> s4`, each a no-op actor step."""
    return Pipeline(name, [Step(f"s{i}", Noop, after=() if i == 0 else f"s{i - 1}")
                           for i in range(STEPS)])


async def noop() -> None:
    """The baseline's step: a no-op async function."""


def in_store_system(body: Callable[[roost.ActorSystem], Awaitable[float]]) -> float:
    """Run `body(system)` in a fresh system with a fresh store (sync durability, logging off)."""

    async def main(folder: str) -> float:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(store=Path(folder) / "store", durability="sync",
                                     log_format=None) as system:
            return await body(system)

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        return asyncio.run(main(folder))


def naive_runs(runs: int) -> float:
    """Seconds for `runs` concurrent naive runs: 5 no-op calls, each followed by one synced
    LMDB checkpoint write transaction via `asyncio.to_thread` (the checkpoint_sync baseline)."""

    async def main(folder: str) -> float:
        env = lmdb.open(folder, map_size=256 * 2**20, max_dbs=8)
        db = env.open_db(b"checkpoints")

        def write(key: bytes, value: bytes) -> None:
            with env.begin(write=True, db=db) as txn:
                txn.put(key, value)

        async def run(index: int) -> None:
            run_id = f"run-{index:04d}"
            results: dict[str, Any] = {}
            for seq in range(1, STEPS + 1):
                await noop()
                results[f"s{seq - 1}"] = None
                record = Checkpoint(run_id=run_id, step=f"s{seq - 1}", actor_path="/naive",
                                    seq=seq, timestamp=time.time(),
                                    state=msgspec.msgpack.encode(results))
                await asyncio.to_thread(write, checkpoint_key(run_id, seq),
                                        msgspec.msgpack.encode(record))

        try:
            started = time.perf_counter()
            await asyncio.gather(*(run(i) for i in range(runs)))
            return time.perf_counter() - started
        finally:
            env.close()

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        return asyncio.run(main(folder))
