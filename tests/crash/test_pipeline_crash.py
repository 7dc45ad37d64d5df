"""Crash test: a process running 20 pipelines with side effects is killed; another resumes them.

`_pipeline_runs.py start` runs 20 runs of a pipeline whose tool steps append a
line to an effects file, and is killed with SIGKILL once a random number of
effects (15 to 40 of the 80) has happened. The test reads the checkpoints the
process left, then `_pipeline_runs.py resume` registers the pipeline with
`resume=True` and finishes the runs. Then: every run is `completed` with its
results, every side effect happened exactly once, no step checkpointed at the
kill ran again, and no worker step ran more than twice.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import anyio
import msgspec

from roost.pipelines.run import RunProgress
from roost.storage import CheckpointStore, RunStatus, RunStore, Store

SCRIPT = Path(__file__).with_name("_pipeline_runs.py")
RUNS = 20
RUN_IDS = [f"run-{i:02d}" for i in range(RUNS)]
TOOL_STEPS = ["charge", "audit", "notify[0]", "notify[1]"]
WORKER_STEPS = ["reserve", "close"]
TIMEOUT = 15.0  # seconds for each process


def command(mode: str, folder: Path) -> list[str]:
    return [sys.executable, str(SCRIPT), mode, str(folder / "store"), str(folder / "effects"),
            str(folder / "executions"), str(RUNS)]


def run_until_killed(folder: Path, kill_after: int) -> int:
    """Start the runs, SIGKILL the process after `kill_after` effects; return the effects seen."""
    process = subprocess.Popen(command("start", folder), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    effects = 0
    deadline = time.monotonic() + TIMEOUT
    try:
        while effects < kill_after:
            line = process.stdout.readline()  # the child flushes each line: no polling
            assert line, f"the process ended before the kill: {process.stderr.read().decode()}"
            assert not line.startswith(b"finished"), "every run finished before the kill"
            effects += line.startswith(b"effect ")
            assert time.monotonic() < deadline, "too slow to reach the kill point"
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=TIMEOUT) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return effects


async def completed_at_kill(folder: Path) -> dict[str, set[str]]:
    """The steps each run had checkpointed when it was killed."""
    async with Store.open(folder / "store") as store:
        checkpoints = CheckpointStore(store)
        done: dict[str, set[str]] = {}
        for run_id in RUN_IDS:
            latest = await checkpoints.latest(run_id)
            progress = None if latest is None else msgspec.msgpack.decode(latest.state,
                                                                        type=RunProgress)
            done[run_id] = set() if progress is None else set(progress.stored)
        return done


async def records(folder: Path) -> dict[str, tuple[RunStatus, dict[str, object]]]:
    """Each run's status and results, by run id."""
    async with Store.open(folder / "store") as store:
        records = await RunStore(store).list()
    return {r.run_id: (r.status, {} if r.result is None else msgspec.msgpack.decode(r.result))
            for r in records}


def lines(path: Path) -> Counter[tuple[str, str]]:
    text = path.read_text() if path.exists() else ""
    return Counter(tuple(line.split()) for line in text.splitlines())  # type: ignore[misc]


def test_runs_killed_mid_way_complete_in_a_new_process_with_each_effect_exactly_once(
        tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    kill_after = random.Random(seed).randint(15, 40)
    note = f"(seed {seed}, killed after {kill_after} effects)"

    seen = run_until_killed(tmp_path, kill_after)
    assert seen >= kill_after
    checkpointed = anyio.run(completed_at_kill, tmp_path)
    interrupted = {run_id for run_id, (status, _) in anyio.run(records, tmp_path).items()
                   if status == RunStatus.RUNNING}
    assert sum(map(len, checkpointed.values())) > 0, f"no step was checkpointed {note}"
    assert interrupted, f"nothing to resume {note}"
    before = lines(tmp_path / "executions")

    resumed = subprocess.run(command("resume", tmp_path), capture_output=True, timeout=TIMEOUT,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()
    output = resumed.stdout.decode().splitlines()
    verified = Counter(line.split()[-1] for line in output if line.startswith("verified "))
    note = f"{note[:-1]}, {len(interrupted)} runs resumed, in-flight calls verified: {dict(verified)})"

    assert output[-1] == "finished", note
    finished = {line.split()[1]: line.split()[2] for line in output if line.startswith("done ")}
    assert finished == dict.fromkeys(interrupted, "completed"), note
    final = anyio.run(records, tmp_path)
    assert {run_id: status for run_id, (status, _) in final.items()} == dict.fromkeys(
        RUN_IDS, RunStatus.COMPLETED), note
    for run_id, (_, results) in final.items():
        assert results == {
            "reserve": {"run": run_id, "step": "reserve"},
            "charge": f"{run_id}:charge:ok",
            "audit": f"{run_id}:audit:ok",
            "notify": [f"{run_id}:notify[0]:ok", f"{run_id}:notify[1]:ok"],
            "close": {"run": run_id, "step": "close"},
        }, f"{run_id} {note}"

    effects = lines(tmp_path / "effects")
    expected = Counter({(run_id, step): 1 for run_id in RUN_IDS for step in TOOL_STEPS})
    assert effects == expected, f"side effects not exactly once {note}: " + str(
        {key: count for key, count in (effects | expected).items()
         if effects[key] != expected[key]})

    executions = lines(tmp_path / "executions")
    for run_id in RUN_IDS:
        for step in WORKER_STEPS:
            count = executions[(run_id, step)]
            if step in checkpointed[run_id]:
                assert count == 1, f"{run_id} {step} ran again after its checkpoint {note}"
            else:
                assert 1 <= count <= 2 and count - before[(run_id, step)] == 1, (
                    f"{run_id} {step} ran {count} times {note}")

