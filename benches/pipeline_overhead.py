"""Pipeline steps/s of one run at a time: the engine's cost per step (`pipeline_step_rate`).

A 5-step chain of no-op actor steps (`s0 -> ... -> s4`) in a system with a store
in sync durability, so every step's checkpoint waits for its fsync. 40 runs one
after another (200 steps) after one warm-up run, best of 3 rounds, each in a
fresh store; units: steps/s. The time per step covers routing the request to
the step's worker pool, the reply, the synced checkpoint, the run record update
and scheduling the next step (plus each run's start and end, spread over its 5
steps).

Baseline, same run and process: the same 5 steps as five no-op async functions
awaited directly, one run after another, no checkpoint. The ratio is therefore
tiny; the absolute figure (and its inverse, the per-step overhead) is the point.
"""

from __future__ import annotations

import asyncio
import time

import roost
from benches._figure import Figure, best_rate
from benches._pipelines import STEPS, chain, in_store_system, noop

NAMES = ("pipeline_step_rate",)
RUNS = 40
BASELINE_RUNS = 200_000


def engine_seconds() -> float:
    """Seconds for RUNS runs of the 5-step chain, each awaited before the next starts."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain()
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        started = time.perf_counter()
        for _ in range(RUNS):
            await (await system.pipelines.start(pipeline)).result()
        return time.perf_counter() - started

    return in_store_system(body)


def direct_seconds() -> float:
    """Seconds for BASELINE_RUNS runs of five no-op async functions awaited in turn."""

    async def main() -> float:
        steps = [noop] * STEPS
        started = time.perf_counter()
        for _ in range(BASELINE_RUNS):
            for step in steps:
                await step()
        return time.perf_counter() - started

    return asyncio.run(main())


def measure() -> list[Figure]:
    engine = best_rate(RUNS * STEPS, engine_seconds)
    direct = best_rate(BASELINE_RUNS * STEPS, direct_seconds)
    return [Figure("pipeline_step_rate", engine, "steps/s", "5 no-op async fns awaited directly",
                   direct)]
