"""One run at a time: the latency a single long conversation feels (`pipeline_sequential_1k`).

1,000 runs of a 5-step chain, one after another, each step returning a ~1 KB `Reply`
(and, for `pipeline_sequential_1k_8kb`, ~8 KB), in a system with a store in sync
durability: every step's checkpoint waits for its fsync, and nothing can be grouped
with other runs' writes. Units: completed runs/s, best of 3 rounds, each in a fresh
store. The time covers each run's durable record, its 5 steps and checkpoints, and its
end.

Baseline, same run and payload: a naive loop, one run after another, awaiting 5 async
calls that return the same records, each followed by one synced LMDB write
transaction (the results so far) via `asyncio.to_thread`. Target ratio >= 0.9.
"""

from __future__ import annotations

import time

import roost
from benches._figure import Figure, Target, best_rate
from benches._pipelines import chain, in_store_system, naive_runs

NAMES = ("pipeline_sequential_1k", "pipeline_sequential_1k_8kb")
TARGETS = {"pipeline_sequential_1k": Target(ratio=0.9), "pipeline_sequential_1k_8kb": Target(ratio=0.9)}
RUNS = 1_000
PAYLOADS = {"pipeline_sequential_1k": 1024, "pipeline_sequential_1k_8kb": 8192}


def engine_seconds(payload: int) -> float:
    """Seconds for RUNS runs of the 5-step chain, each awaited before the next starts."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain(f"reply5-{payload}", payload)
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        started = time.perf_counter()
        for _ in range(RUNS):
            outcome = await (await system.pipelines.start(pipeline)).result()
            assert outcome.status == "completed"
        return time.perf_counter() - started

    return in_store_system(body)


def measure() -> list[Figure]:
    figures = []
    for name, payload in PAYLOADS.items():
        engine = best_rate(RUNS, lambda payload=payload: engine_seconds(payload))
        naive = best_rate(RUNS, lambda payload=payload: naive_runs(RUNS, payload,
                                                                  concurrent=False))
        figures.append(Figure(name, engine, "runs/s",
                              "naive loop, to_thread synced txn/step, one run at a time", naive))
    return figures
