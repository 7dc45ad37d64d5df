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


class Reply(msgspec.Struct, frozen=True):
    """A step's result the size of a model's reply: `size` bytes of text and some fields."""

    step: str
    text: str
    confidence: float
    tokens: int


def reply(step: str, size: int) -> Reply:
    return Reply(step, "x" * size, 0.9, size // 4)


def payload_worker(size: int) -> type[roost.Actor]:
    """A step's worker that returns a `Reply` of `size` bytes (0: a no-op returning None)."""
    if size == 0:
        return Noop

    class Replier(roost.Actor):
        async def receive(self, message: RunStep) -> Any:
            return reply(message.step, size)

    return Replier


def chain(name: str = "noop5", payload: int = 0) -> Pipeline:
    """`s0 -> s1 -> s2 -> s3 -> s4`, each an actor step returning `payload` bytes (0: None)."""
    worker = payload_worker(payload)
    output = Any if payload == 0 else Reply
    return Pipeline(name, [Step(f"s{i}", worker, after=() if i == 0 else f"s{i - 1}",
                                output=output)
                           for i in range(STEPS)])


async def noop() -> None:
    """The baseline's step: a no-op async function."""


async def runs_at_once(system: roost.ActorSystem, pipeline: Pipeline, runs: int) -> float:
    """Seconds to start `runs` runs of `pipeline` at once and see them all complete."""
    started = time.perf_counter()
    handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(runs)))
    outcomes = await asyncio.gather(*(handle.result() for handle in handles))
    elapsed = time.perf_counter() - started
    assert all(outcome.status == "completed" for outcome in outcomes)
    return elapsed


def in_store_system(body: Callable[[roost.ActorSystem], Awaitable[float]],
                    store: Path | None = None) -> float:
    """Run `body(system)` in a fresh system (sync durability, logging off) with a fresh store,
    or with the store in folder `store` (kept, with what `body` adds to it)."""

    async def main(path: Path) -> float:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(store=path, durability="sync", log_format=None) as system:
            return await body(system)

    if store is not None:
        return asyncio.run(main(store))
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        return asyncio.run(main(Path(folder) / "store"))


def naive_runs(runs: int, payload: int = 0, *, concurrent: bool = True) -> float:
    """Seconds for `runs` naive runs (all at once, or one after another): 5 calls, each
    followed by one synced LMDB checkpoint write transaction via `asyncio.to_thread`
    holding the results so far (the checkpoint_sync baseline); with `payload`, each call
    returns a `Reply` of that many bytes."""

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
                results[f"s{seq - 1}"] = reply(f"s{seq - 1}", payload) if payload else None
                record = Checkpoint(run_id=run_id, step=f"s{seq - 1}", actor_path="/naive",
                                    seq=seq, timestamp=time.time(),
                                    state=msgspec.msgpack.encode(results))
                await asyncio.to_thread(write, checkpoint_key(run_id, seq),
                                        msgspec.msgpack.encode(record))

        try:
            started = time.perf_counter()
            if concurrent:
                await asyncio.gather(*(run(i) for i in range(runs)))
            else:
                for i in range(runs):
                    await run(i)
            return time.perf_counter() - started
        finally:
            env.close()

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        return asyncio.run(main(folder))
