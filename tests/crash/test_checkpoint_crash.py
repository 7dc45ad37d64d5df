"""Crash test: a process saving checkpoints is killed with SIGKILL again and again.

Each round starts `_checkpoint_writer.py` on the same store, kills it at a random
moment, reopens the store and checks that every checkpoint the writer saw
acknowledged is there, that the run's sequence numbers have no gap, and that the
latest checkpoint and its state decode.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from roost.storage import CheckpointStore, Store, decode_state

WRITER = Path(__file__).with_name("_checkpoint_writer.py")
KILLS = 20
RUN_ID = "crash-run"


class Progress(msgspec.Struct, frozen=True):
    writer: int
    count: int
    padding: bytes


def run_until_killed(folder: Path, rng: random.Random) -> dict[int, str]:
    """Start the writer, kill it at a random moment, and return the `seq -> step` it acked."""
    process = subprocess.Popen([sys.executable, str(WRITER), str(folder), RUN_ID, "8"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    ready = process.stdout.readline()
    assert ready == b"ready\n", process.stderr.read().decode()
    time.sleep(rng.uniform(0.0, 0.15))
    assert process.poll() is None, f"the writer stopped by itself: {process.stderr.read()!r}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    output = process.stdout.read().decode()
    process.stdout.close()
    process.stderr.close()
    acked = {}
    for line in output.splitlines(keepends=True):
        if line.startswith("ack ") and line.endswith("\n"):  # a torn last line is not counted
            _, seq, step = line.split()
            acked[int(seq)] = step
    return acked


async def check_store(folder: Path, acked: dict[int, str]) -> int:
    """Reopen the store and check it against every acknowledged checkpoint; return the count."""
    async with Store.open(folder) as store:
        checkpoints = CheckpointStore(store, keep_last=0)
        saved = await checkpoints.list(RUN_ID)
        latest = await checkpoints.latest(RUN_ID)
    seqs = [checkpoint.seq for checkpoint in saved]
    assert seqs == list(range(1, len(seqs) + 1)), "sequence numbers have a gap or a repeat"
    steps = {checkpoint.seq: checkpoint.step for checkpoint in saved}
    missing = {seq: step for seq, step in acked.items() if steps.get(seq) != step}
    assert not missing, f"acknowledged checkpoints lost after SIGKILL: {missing}"
    if saved:
        assert latest == saved[-1]
        state = decode_state(latest, Progress)
        assert latest.step == f"w{state.writer}-{state.count}"
    return len(saved)


@pytest.mark.timeout(180)  # about 10 s; more on a loaded machine, over the default 60 s
def test_every_acknowledged_checkpoint_survives_sigkill(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    folder = tmp_path / "store"
    acked: dict[int, str] = {}
    for _ in range(KILLS):
        acked |= run_until_killed(folder, rng)
        stored = anyio.run(check_store, folder, acked)
        assert stored >= len(acked), f"seed {seed}"
    assert acked, f"the writer never acknowledged a checkpoint (seed {seed})"
