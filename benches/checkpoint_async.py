"""Checkpoints/s of a ~1 KB state in async durability mode (acknowledged at commit, no fsync).

100 tasks, each saving 20 checkpoints of its own run at once, through
`CheckpointStore` on a store opened with `durability="async"`. Best of 3 rounds, each
in a fresh store folder; units: checkpoints/s.

Baseline, same run and concurrency: the naive durable write, one synced LMDB write
transaction per checkpoint via `asyncio.to_thread` (see `checkpoint_sync`).
"""

from __future__ import annotations

from benches._figure import Figure
from benches.checkpoint_sync import BASELINE, naive_rate, roost_rate

NAMES = ("checkpoint_async",)


def measure() -> list[Figure]:
    value, baseline = roost_rate(100, 20, "async"), naive_rate(100, 20)
    return [Figure("checkpoint_async", value, "checkpoints/s", BASELINE, baseline)]
