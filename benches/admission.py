"""Admission control under load: 10,000 runs started at once, and the memory a queued run costs.

`admission_10k_runs`: 10,000 runs of a 3-step chain (each step returns a ~1 KB record)
are started together and awaited, in a system with `max_active_runs` at its default
(1,000): 9,000 wait in the durable queue. Units: completed runs/s. Baseline, same run:
the same system and pipeline with 1,000 runs started at once (none queued). Best of 3
rounds each, the two alternating, each in a fresh store. Target ratio >= 0.8.

`admission_queued_per_mib`: how many queued runs fit in a MiB of resident memory:
10,000 runs are started while every slot (`max_active_runs=10`) is held by a blocked
step, and the growth of RSS (/proc/self/statm) is divided among the queued runs.
Baseline: the target of 2 KB per queued run (512 per MiB); ratio >= 1 meets it.

Both in sync durability on a fresh store each, logging off.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import roost
from benches._figure import Figure, Target

NAMES = ("admission_10k_runs", "admission_queued_per_mib")
TARGETS = {"admission_10k_runs": Target(ratio=0.8), "admission_queued_per_mib": Target(ratio=1)}
MANY, FEW = 10_000, 1_000
ROUNDS = 3  # the best of each: the rounds least disturbed by the other core
TARGET_BYTES = 2048


class Draft(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return {"step": message.step, "text": "x" * 1024}


class Blocked(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        await asyncio.Event().wait()


def chain(name: str, worker: type[roost.Actor]) -> roost.Pipeline:
    return roost.Pipeline(name, [roost.Step(f"s{i}", worker, after=() if i == 0 else f"s{i - 1}",
                                            workers=8) for i in range(3)])


async def _rate(folder: Path, runs: int) -> float:
    roost.configure_logging("json", "critical")
    async with roost.ActorSystem(store=folder, log_format=None) as system:
        pipeline = chain("draft3", Draft)
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        started = time.perf_counter()
        handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(runs)))
        outcomes = await asyncio.gather(*(handle.result() for handle in handles))
        elapsed = time.perf_counter() - started
    assert all(outcome.status == "completed" for outcome in outcomes)
    return runs / elapsed


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _bytes_per_queued_run(folder: Path) -> float:
    roost.configure_logging("json", "critical")
    async with roost.ActorSystem(store=folder, log_format=None, max_active_runs=10,
                                 durability="async") as system:
        pipeline = chain("blocked3", Blocked)
        for _ in range(10):
            await system.pipelines.start(pipeline)
        before = _rss()
        for start in range(0, MANY, 500):
            await asyncio.gather(*(system.pipelines.start(pipeline, run_id=f"q-{i:05d}")
                                   for i in range(start, start + 500)))
        after = _rss()
        queued = system.pipelines.statistics()["queued"]
        assert queued == MANY, queued
    return max(after - before, 1) / queued


def _in_fresh_process(folder: Path) -> float:
    """`_bytes_per_queued_run` in a new interpreter, so no earlier bench's freed memory
    hides the growth from RSS."""
    code = ("import asyncio, sys; from pathlib import Path; from benches.admission import "
            "_bytes_per_queued_run; print(asyncio.run(_bytes_per_queued_run(Path(sys.argv[1]))))")
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True,
                          text=True, check=True, cwd=Path(__file__).resolve().parent.parent)
    return float(done.stdout.strip().splitlines()[-1])


def measure() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        many = few = 0.0
        for round_number in range(ROUNDS):  # alternating, so drift hits both alike
            many = max(many, asyncio.run(_rate(Path(folder) / f"many{round_number}", MANY)))
            few = max(few, asyncio.run(_rate(Path(folder) / f"few{round_number}", FEW)))
        per_run = _in_fresh_process(Path(folder) / "queued")
    return [
        Figure("admission_10k_runs", many, "runs/s", "1,000 runs at once (none queued)", few),
        Figure("admission_queued_per_mib", 2**20 / per_run, "queued runs/MiB",
               "target: 2 KB per queued run", 2**20 / TARGET_BYTES),
    ]
