"""Gates: the memory a run parked at a gate costs, and how fast a decision resumes it.

Both use a 2-step pipeline: `s0` returns a ~1 KB record, then `s1` runs (a gated
run parks before `s1`, at `Gate()`, which always opens).

`gate_parked_memory`: how many parked runs fit in a MiB of resident memory: 100,000
runs are started (in batches of 2,000, `max_active_runs` 5,000, durability `async`)
and each parks at the gate; the growth of anonymous RSS (/proc/self/statm resident
minus shared) is divided among them. Baseline, same method: 100,000 runs of the same
pipeline without the gate, which complete. Each side runs in a fresh process (on the
bench's event loop), after 30,000 warm-up runs that take the heap to its high-water
mark (pools, codecs, a batch's transient objects, the tracer's bounded buffers). So
that the figure is the memory runs hold, garbage is collected after each batch and
before each reading, glibc gives back its free heap before each reading, and the
store's memory-mapped pages are left out (they drop at each map resize); growth under
1 MiB counts as 1 MiB (the readings' resolution). The ratio is
ended-run bytes / parked-run bytes; target ratio >= 0.83 (a parked run costs at most
1.2x an ended one).

`gate_decide_to_resume`: `system.gates.decide(run_id, "s1", "approve")` of a parked
run until `s1`'s worker receives its request, as resumes/s (1 / median latency of
200). Baseline, same process, measured alternately with it:
`system.pipelines.resume(run_id)` of a run left `running` at `s1` (its system stopped
while `s1` was in progress) until `s1`'s worker receives the request again. Sync
durability. Target ratio >= 0.8.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import roost
from benches._figure import Figure, Target
from roost.runtime.loops import loop_factory

NAMES = ("gate_parked_memory", "gate_decide_to_resume")
TARGETS = {"gate_parked_memory": Target(ratio=0.83), "gate_decide_to_resume": Target(ratio=0.8)}
PARKED_RUNS = 100_000
BATCH = 2_000
WARMUP_RUNS = 30_000
MAX_ACTIVE = 5_000
RESUMES = 200
WARMUP_RESUMES = 10
SETTLE = 3.0
#: Growth below this is not told apart from none (readings vary by a few MiB).
RESOLUTION = 2**20

#: When `s1`'s worker received each run's request (time.perf_counter()).
STAMPS: dict[str, float] = {}
#: While True, `s1`'s worker never replies, so its runs are left `running` at `s1`.
HOLD = False


class Draft(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return {"step": message.step, "text": "x" * 1024}


class Recorder(roost.Actor):
    shutdown_timeout = 0.0  # a held request is cancelled as soon as its system stops

    async def receive(self, message: roost.RunStep) -> Any:
        STAMPS[message.run_id] = time.perf_counter()
        if HOLD:
            await asyncio.Event().wait()
        return "sent"


class Send(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return "sent"


def two_steps(name: str, gate: roost.Gate | None, then: type[roost.Actor]) -> roost.Pipeline:
    """`s0` (a ~1 KB result), then `s1` done by `then`, behind `gate` if one is given."""
    return roost.Pipeline(name, [roost.Step("s0", Draft, workers=8),
                                 roost.Step("s1", then, after="s0", gate=gate, workers=8)])


def _anonymous_rss() -> int:
    """Resident memory that is not file-backed (/proc/self/statm: resident - shared): the
    store's memory-mapped pages are left out, as they drop at each map resize."""
    with open("/proc/self/statm") as statm:
        fields = statm.read().split()
    return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")


async def _settled_rss() -> int:
    """`_anonymous_rss` of the memory in use: once the last runs' actors are released and
    collected, and the C heap's free memory is given back (glibc keeps it otherwise, more
    or less of it from one run to the next, in its per-thread arenas)."""
    await asyncio.sleep(SETTLE)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return _anonymous_rss()


async def _bytes_per_run(folder: Path, gated: bool) -> float:
    """RSS growth per run over PARKED_RUNS runs that park at the gate (`gated`) or complete."""
    roost.configure_logging("json", "critical")
    async with roost.ActorSystem(store=folder, log_format=None, max_active_runs=MAX_ACTIVE,
                                 durability="async") as system:
        pipeline = two_steps("gated" if gated else "plain", roost.Gate() if gated else None, Send)
        expected = "waiting" if gated else "completed"

        async def batch(prefix: str, first: int) -> None:
            handles = await asyncio.gather(*(system.pipelines.start(pipeline,
                                                                    run_id=f"{prefix}-{i:06d}")
                                             for i in range(first, first + BATCH)))
            outcomes = await asyncio.gather(*(handle.result() for handle in handles))
            assert all(outcome.status == expected for outcome in outcomes), expected
            gc.collect()  # what runs hold, not the cyclic garbage of their stopped actors

        for first in range(0, WARMUP_RUNS, BATCH):  # to the heap's high-water mark: pools,
            await batch("warm", first)              # codecs and the batches' transient objects
        before = await _settled_rss()
        for first in range(0, PARKED_RUNS, BATCH):
            await batch("run", first)
        after = await _settled_rss()
    return max(after - before, RESOLUTION) / PARKED_RUNS


def _in_fresh_process(folder: Path, gated: bool) -> float:
    """`_bytes_per_run` in a new interpreter, on the event loop this bench runs on, so no
    earlier bench's freed memory hides the growth from RSS."""
    done = subprocess.run([sys.executable, "-m", "benches.gates", str(folder),
                           "gated" if gated else "plain", _current_loop()],
                          capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return float(done.stdout.strip().splitlines()[-1])


def _current_loop() -> str:
    """The kind of event loop `asyncio.run` creates now (`python -m benches --loop` sets it)."""
    loop = asyncio.new_event_loop()
    try:
        return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
    finally:
        loop.close()


def _system(folder: Path) -> roost.ActorSystem:
    return roost.ActorSystem(store=folder, log_format=None)


def _has_actor(system: roost.ActorSystem, run_id: str) -> bool:
    try:
        system.lookup(f"/pipelines/runs/{run_id}")
    except LookupError:
        return False
    return True


async def _leave_running(folder: Path, pipeline: roost.Pipeline, run_ids: list[str]) -> None:
    """Start the runs and stop their system once each has completed `s0` and is at `s1`."""
    global HOLD
    HOLD = True
    try:
        async with _system(folder) as system:
            await asyncio.gather(*(system.pipelines.start(pipeline, run_id=run_id)
                                   for run_id in run_ids))
            at_s1 = 0
            while at_s1 < len(run_ids):  # the store says when s0 is saved
                await asyncio.sleep(0.05)
                at_s1 = sum(r.last_step == "s0" for r in await system.pipelines.list("running"))
    finally:
        HOLD = False


async def _latencies(folder: Path) -> tuple[list[float], list[float]]:
    """Seconds from each decision, and from each resume, to `s1`'s worker receiving the run."""
    roost.configure_logging("json", "critical")
    count = WARMUP_RESUMES + RESUMES
    interrupted = two_steps("interrupted", None, Recorder)
    resume_ids = [f"resume-{i:04d}" for i in range(count)]
    await _leave_running(folder / "resume", interrupted, resume_ids)
    gated = two_steps("gated", roost.Gate(reason="a person checks the draft"), Recorder)
    gate_ids = [f"gate-{i:04d}" for i in range(count)]
    decided: list[float] = []
    resumed: list[float] = []
    async with _system(folder / "resume") as restarted, _system(folder / "gate") as system:
        await restarted.pipelines.register(interrupted)
        handles = await asyncio.gather(*(system.pipelines.start(gated, run_id=run_id)
                                         for run_id in gate_ids))
        parked = await asyncio.gather(*(handle.result() for handle in handles))
        assert all(outcome.status == "waiting" for outcome in parked)
        while any(_has_actor(system, run_id) for run_id in gate_ids):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # each parked run's actor stops after it reports
        for resume_id, handle in zip(resume_ids, handles, strict=True):
            started = time.perf_counter()
            outcome = await (await restarted.pipelines.resume(resume_id)).result()
            assert outcome.status == "completed", outcome
            resumed.append(STAMPS[resume_id] - started)

            started = time.perf_counter()
            await system.gates.decide(handle.run_id, "s1", "approve", by="bench")
            outcome = await handle.result(through_gates=True)
            assert outcome.status == "completed", outcome
            decided.append(STAMPS[handle.run_id] - started)
    return decided[WARMUP_RESUMES:], resumed[WARMUP_RESUMES:]


def measure() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        parked = _in_fresh_process(Path(folder) / "parked", gated=True)
        ended = _in_fresh_process(Path(folder) / "ended", gated=False)
        decided, resumed = asyncio.run(_latencies(Path(folder)))
    return [
        Figure("gate_parked_memory", 2**20 / parked, "parked runs/MiB",
               "100,000 runs that completed", 2**20 / ended),
        Figure("gate_decide_to_resume", 1 / statistics.median(decided), "resumes/s",
               "resume of an interrupted run", 1 / statistics.median(resumed)),
    ]


if __name__ == "__main__":  # the fresh process of `_in_fresh_process`: FOLDER gated|plain LOOP
    roost.tune_gc()
    with asyncio.Runner(loop_factory=loop_factory(sys.argv[3])) as runner:
        print(runner.run(_bytes_per_run(Path(sys.argv[1]), sys.argv[2] == "gated")))
