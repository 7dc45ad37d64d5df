"""Latest-checkpoint reads/s: `CheckpointStore.latest` on the event loop, decoded record included.

1,000 runs with 3 checkpoints of ~1 KB state each; 20,000 reads cycling over the
runs, each one cursor seek in its own read transaction plus decoding the
`Checkpoint`. Best of 3; units: reads/s.

Baseline, same run and data: a raw py-lmdb `txn.get` of the already known latest key
in a loop, one read transaction per get, no decoding.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import lmdb

from benches._figure import Figure, best_rate
from roost.storage import CheckpointStore, Store, checkpoint_key

NAMES = ("checkpoint_latest_reads",)
RUNS = [f"run-{index:04d}" for index in range(1000)]
PER_RUN = 3
READS = 20_000
STATE = bytes(range(256)) * 4  # 1 KiB


async def roost_seconds(folder: Path) -> float:
    """Seconds for READS `latest` calls (after storing the checkpoints)."""
    async with Store.open(folder, durability="async") as store:
        checkpoints = CheckpointStore(store)
        await asyncio.gather(*(checkpoints.save(run, step=f"step-{step}", actor_path="/bench",
                                                state=STATE)
                               for step in range(PER_RUN) for run in RUNS))
        runs = [RUNS[index % len(RUNS)] for index in range(READS)]
        start = time.perf_counter()
        for run in runs:
            await checkpoints.latest(run)
        return time.perf_counter() - start


def raw_seconds(folder: Path) -> float:
    """Seconds for READS raw gets of the latest keys of the same data in a plain env."""
    env = lmdb.open(str(folder), map_size=64 * 2**20, max_dbs=8, sync=False)
    try:
        db = env.open_db(b"checkpoints")
        with env.begin(write=True, db=db) as txn:
            for run in RUNS:
                for seq in range(1, PER_RUN + 1):
                    txn.put(checkpoint_key(run, seq), STATE)
        keys = [checkpoint_key(RUNS[index % len(RUNS)], PER_RUN) for index in range(READS)]
        start = time.perf_counter()
        for key in keys:
            with env.begin(db=db) as txn:
                txn.get(key)
        return time.perf_counter() - start
    finally:
        env.close()


def fresh(seconds: Callable[[Path], float]) -> Callable[[], float]:
    """Run `seconds` in a fresh temporary folder."""

    def run() -> float:
        with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
            return seconds(Path(folder))

    return run


def measure() -> list[Figure]:
    value = best_rate(READS, fresh(lambda folder: asyncio.run(roost_seconds(folder))))
    baseline = best_rate(READS, fresh(raw_seconds))
    return [Figure("checkpoint_latest_reads", value, "reads/s", "raw lmdb txn.get per read",
                   baseline)]
