"""The soak harness: kill a process running pipelines with side effects, again and again.

`python -m benches.soak [--kills N] [--runs N] [--seed S] [--folder DIR]` (not part of
the default bench run; the test suite runs a bounded version). Each round starts
`_soak_process` on one store, lets it work for a seeded random time, and SIGKILLs it.
After every kill the store must open, the last acknowledged checkpoint of the process's
checkpointed actor must be there, every run must be resumable (stored as queued,
running or completed), and the effects log must hold each side effect at most once.
A final round runs without a kill: every run completes and every effect happened
exactly once. Every kill is logged (round, delay, acks and effects seen), so a
failure is reproducible from its seed.

Then 10,000 runs are started at once (9,000 queued) while 1% of step messages crash
their worker: every run completes, and the RSS growth is printed.

It also reports `soak_kill_recovery`: seconds from a SIGKILL to the restarted process
having resumed every run, against a clean start of the same store (target <= 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import roost
from benches._figure import Figure, Target
from roost.storage import CheckpointStore, RunStatus, RunStore, Store, decode_state

NAMES = ("soak_kill_recovery",)
TARGETS = {"soak_kill_recovery": Target(ratio=0.5)}
RESUMABLE = {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.COMPLETED}
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Soak:
    """One soak: its folder, and what every kill has shown so far."""

    folder: Path
    runs: int
    seed: int
    log: Callable[[str], None] = print
    acked: int = 0
    kills: int = 0
    timeline: list[str] = field(default_factory=list)

    @property
    def store(self) -> Path:
        return self.folder / "store"

    @property
    def effects(self) -> Path:
        return self.folder / "effects"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "benches._soak_process", str(self.store),
                str(self.effects), str(self.runs)]

    def round(self, delay: float | None) -> tuple[int, str]:
        """Run the process; SIGKILL it `delay` seconds after it is ready (None: let it end).

        Returns its exit code and the end of its stderr.
        """
        with tempfile.TemporaryFile() as errors, subprocess.Popen(
                self.command(), cwd=ROOT, stdout=subprocess.PIPE, stderr=errors) as process:
            assert process.stdout is not None
            ready_at = None
            deadline = time.monotonic() + 60
            for line in process.stdout:
                if line.startswith(b"ack "):
                    self.acked = max(self.acked, int(line.split()[1]))
                elif line.startswith(b"ready"):
                    ready_at = time.monotonic()
                if ready_at is not None and delay is not None and (
                        time.monotonic() - ready_at >= delay):
                    os.kill(process.pid, signal.SIGKILL)
                    break
                if line.startswith(b"finished"):
                    break
                assert time.monotonic() < deadline, "a soak round took over 60 s"
            code = process.wait(timeout=30)
            errors.seek(0)
            return code, errors.read().decode(errors="replace")[-2000:]

    def kill_round(self, rng: random.Random) -> None:
        delay = rng.uniform(0.0, 0.2)
        code, stderr = self.round(delay)
        self.kills += 1
        assert code in (-signal.SIGKILL, 0), stderr
        self.timeline.append(f"kill {self.kills}: after {delay:.3f}s, acked {self.acked}, "
                             f"effects {len(self._effects())}")
        self.log(self.timeline[-1])
        asyncio.run(self.check())

    async def check(self, *, final: bool = False) -> None:
        """The store opens and keeps every acknowledged checkpoint; runs are resumable;
        no side effect happened twice (and, at the end, every one happened)."""
        async with Store.open(self.store) as store:
            latest = await CheckpointStore(store).latest("/ticker")
            if self.acked:
                assert latest is not None, "the acknowledged checkpoints are gone"
                from benches._soak_process import Count

                assert decode_state(latest, Count).n >= self.acked, (
                    f"acknowledged tick {self.acked} lost: the store holds "
                    f"{decode_state(latest, Count).n}")
            records = await RunStore(store).list()
        statuses = Counter(record.status for record in records)
        assert set(statuses) <= (({RunStatus.COMPLETED}) if final else RESUMABLE), statuses
        counts = Counter(self._effects())
        twice = {line: n for line, n in counts.items() if n > 1}
        assert not twice, f"side effects repeated after {self.kills} kills: {twice}"
        if final:
            assert len(records) == self.runs and len(counts) == self.runs, (
                f"{len(records)} runs and {len(counts)} effects for {self.runs} runs")

    def finish(self) -> None:
        code, stderr = self.round(None)
        assert code == 0, stderr
        asyncio.run(self.check(final=True))

    def _effects(self) -> list[str]:
        return self.effects.read_text().splitlines() if self.effects.exists() else []



def soak(folder: Path, *, kills: int, runs: int, seed: int,
         log: Callable[[str], None] = print) -> Soak:
    """Kill the process `kills` times at seeded random points, then let it finish."""
    state = Soak(folder, runs, seed, log)
    rng = random.Random(seed)
    log(f"soak: {kills} kills, {runs} runs, seed {seed}, folder {folder}")
    for _ in range(kills):
        state.kill_round(rng)
    state.finish()
    log(f"soak: passed after {state.kills} kills")
    return state


class _Crashy(roost.Actor):
    """A step's worker that crashes on about 1% of its messages (seeded by run and step)."""

    async def receive(self, message: roost.RunStep) -> Any:
        if message.attempt == 1 and zlib.crc32(f"{message.run_id}/{message.step}".encode()) % 100 == 0:
            raise RuntimeError(f"crashed on {message.run_id}/{message.step}")
        return {"run": message.run_id, "text": "x" * 1024}


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def crash_load(folder: Path, *, runs: int, max_active: int = 1000) -> tuple[int, int]:
    """Start `runs` runs at once (most wait in the queue) while 1% of step messages crash
    their worker; every run must complete. Returns (runs completed, RSS growth in bytes)."""
    retry = roost.Retry(attempts=3, base_delay=0.0, retry_on=RuntimeError)
    pipeline = roost.Pipeline("crashy", [
        roost.Step(f"s{i}", _Crashy, after=() if i == 0 else f"s{i - 1}", retry=retry, workers=8)
        for i in range(3)])
    before = _rss()
    async with roost.ActorSystem(store=folder, durability="async", log_format="json",
                                 log_level="critical", max_active_runs=max_active) as system:
        handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(runs)))
        outcomes = await asyncio.gather(*(handle.result() for handle in handles))
    completed = sum(outcome.status == "completed" for outcome in outcomes)
    assert completed == runs, f"{runs - completed} of {runs} runs did not complete"
    return completed, _rss() - before


def recovery_seconds(folder: Path, runs: int) -> tuple[float, float]:
    """(seconds from a SIGKILL to every run resumed, seconds to a clean start of that store)."""
    state = Soak(folder, runs, 0, log=lambda _: None)
    state.round(0.3)  # killed with runs in flight
    started = time.perf_counter()
    ready = _until_ready(state)
    recovered = ready - started
    state.finish()
    started = time.perf_counter()
    clean = _until_ready(state) - started
    return recovered, clean


def _until_ready(state: Soak) -> float:
    """Start the process, wait for `ready` (every run resumed), stop it; when it was ready."""
    with subprocess.Popen(state.command(), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as process:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(b"ready"):
                ready = time.perf_counter()
                break
        else:
            raise AssertionError("the process ended before it was ready")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    return ready


def measure() -> list[Figure]:
    with tempfile.TemporaryDirectory(prefix="roost-soak-") as folder:
        recovered, clean = recovery_seconds(Path(folder), runs=400)
    return [Figure("soak_kill_recovery", 1 / recovered, "recoveries/s",
                   "clean start of the same store (target ratio >= 0.5)", 1 / clean)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benches.soak", description=__doc__)
    parser.add_argument("--kills", type=int, default=200)
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args(argv)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="roost-soak-"))
    soak(folder, kills=args.kills, runs=args.runs, seed=args.seed)
    completed, growth = asyncio.run(crash_load(folder / "crash-load", runs=10_000))
    print(f"crash load: {completed} runs completed with 1% of step messages crashing; "
          f"RSS grew {growth / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
