"""Completed pipeline runs/s with 1,000 runs at once (`pipeline_runs_1000`).

1,000 runs of a 5-step chain of no-op actor steps are started together and
awaited, in a system with a store in sync durability (every step's checkpoint
waits for its fsync; the writer groups concurrent saves into one commit). The
time covers starting every run (its durable record), all 5,000 steps and
checkpoints, and every run's end. Best of 3 rounds, each in a fresh store and
system; units: completed runs/s. The issue's target is >= 500 runs/s absolute,
printed to stderr with the figure.

Baseline, same run and concurrency: a naive asyncio program, 1,000 tasks each
awaiting the same 5 no-op async functions and writing one synced LMDB
checkpoint per step in its own write transaction via `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import sys
import time

import roost
from benches._figure import Figure, best_rate
from benches._pipelines import chain, in_store_system, naive_runs

NAMES = ("pipeline_runs_1000",)
RUNS = 1_000
TARGET = 500.0  # runs/s


def engine_seconds() -> float:
    """Seconds to start RUNS runs of the 5-step chain at once and see them all complete."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain()
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        started = time.perf_counter()
        handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(RUNS)))
        outcomes = await asyncio.gather(*(handle.result() for handle in handles))
        elapsed = time.perf_counter() - started
        assert all(outcome.status == "completed" for outcome in outcomes)
        return elapsed

    return in_store_system(body)


def measure() -> list[Figure]:
    engine = best_rate(RUNS, engine_seconds)
    naive = best_rate(RUNS, lambda: naive_runs(RUNS))
    verdict = "meets" if engine >= TARGET else "MISSES"
    print(f"pipeline_runs_1000: {engine:,.0f} runs/s {verdict} the target of >= {TARGET:,.0f} "
          f"runs/s", file=sys.stderr, flush=True)
    return [Figure("pipeline_runs_1000", engine, "runs/s",
                   "naive asyncio + to_thread synced txn/step", naive)]
