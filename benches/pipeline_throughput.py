"""Completed pipeline runs/s with 1,000 runs at once: `pipeline_runs_1000`, the same with ~1 KB
and ~8 KB step results (`pipeline_runs_1000_1kb`, `pipeline_runs_1000_8kb`), and in a store
that 50,000 runs went through before (`pipeline_runs_1000_after_50k`).

1,000 runs of a 5-step chain of actor steps (no-ops returning None, or a `Reply` of ~1 KB
or ~8 KB) are started together and awaited, in a system with a store in sync durability
(every step's checkpoint waits for its fsync; the writer groups concurrent saves into one
commit) and tracing on. The time covers starting every run (its durable record), all
5,000 steps and checkpoints, and every run's end. Best of 3 rounds, each in a fresh store
and system; units: completed runs/s. The issue's target is >= 500 runs/s absolute.

Baseline, same run, concurrency and payload: a naive asyncio program, 1,000 tasks each
awaiting the same 5 async functions and writing one synced LMDB checkpoint per step
(the results so far) in its own write transaction via `asyncio.to_thread`.

`pipeline_runs_1000_after_50k` is `pipeline_runs_1000` in a store that already holds
50,000 runs of the same pipeline, put there through the real path (1,000 at a time, as
measured): their records, last checkpoints, ended-run index entries and traces (the
trace store at its size retention, so it prunes as it writes). Each round opens a new
system on that store. Its baseline is the same round on a fresh store; the two are
measured alternately, best of 5 each, so that the other core's noise falls on both.
Target: ratio >= 0.9, throughput flat as the store grows.
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path

import roost
from benches._figure import Figure, Target, best_rate
from benches._pipelines import chain, in_store_system, naive_runs, runs_at_once

NAMES = ("pipeline_runs_1000", "pipeline_runs_1000_1kb", "pipeline_runs_1000_8kb",
         "pipeline_runs_1000_after_50k")
PAYLOADS = {"pipeline_runs_1000": 0, "pipeline_runs_1000_1kb": 1024,
            "pipeline_runs_1000_8kb": 8192}
TARGET = 500.0  # runs/s
TARGETS = {**{name: Target(value=TARGET) for name in PAYLOADS},
           "pipeline_runs_1000_after_50k": Target(ratio=0.9)}
RUNS = 1_000
FILLED = 50_000
ROUNDS = 5


def engine_seconds(payload: int = 0, store: Path | None = None) -> float:
    """Seconds for one round of the 5-step chain, in a fresh store or in the store in
    folder `store`."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain(f"chain5-{payload}", payload)
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        return await runs_at_once(system, pipeline, RUNS)

    return in_store_system(body, store)


def fill(store: Path, runs: int) -> None:
    """Put `runs` runs of the no-op chain through a system on `store`, RUNS at a time."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain("chain5-0")
        for _ in range(runs // RUNS):
            await runs_at_once(system, pipeline, RUNS)
        return 0.0

    in_store_system(body, store)


def after_filled() -> Figure:
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        store = Path(folder) / "store"
        fill(store, FILLED)
        fresh, after = [], []
        for _ in range(ROUNDS):
            fresh.append(RUNS / engine_seconds())
            after.append(RUNS / engine_seconds(store=store))
    return Figure("pipeline_runs_1000_after_50k", max(after), "runs/s",
                  "the same in a fresh store, alternately", max(fresh))


def measure() -> list[Figure]:
    figures = []
    for name, payload in PAYLOADS.items():
        engine = best_rate(RUNS, partial(engine_seconds, payload))
        naive = best_rate(RUNS, partial(naive_runs, RUNS, payload))
        verdict = "meets" if engine >= TARGET else "MISSES"
        print(f"{name}: {engine:,.0f} runs/s {verdict} the target of >= {TARGET:,.0f} runs/s",
              file=sys.stderr, flush=True)
        figures.append(Figure(name, engine, "runs/s",
                              "naive asyncio + to_thread synced txn/step", naive))
    figures.append(after_filled())
    return figures
