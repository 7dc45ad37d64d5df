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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from benches._figure import Figure
from roost.storage import CheckpointStore, RunStatus, RunStore, Store, decode_state

NAMES = ("soak_kill_recovery",)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
