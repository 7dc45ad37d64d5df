"""Crash test: a process is SIGKILLed each time a run's review is saved; the review holds.

`_review_runs.py` runs 8 runs of draft -> check -> send, where `check` parks the
odd-numbered runs for review, and kills itself right after each store write
that saved a review checkpoint: the point where a roost that stored the review
and the run's status separately had only the review. After each kill every run
whose checkpoint holds a review must be stored `waiting` (parked at its review gate), and the next
process (`resume`) must not run such a run on. In the end the reviewed runs are
`waiting` with no reply sent, and the others `completed` with one reply each.
(Reviews committed in one batch die together, so a process per reviewed run at most.)
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import msgspec

from roost.pipelines.run import RunProgress
from roost.storage import CheckpointStore, RunStatus, RunStore, Store

SCRIPT = Path(__file__).with_name("_review_runs.py")
RUNS = 8
RUN_IDS = [f"run-{i:02d}" for i in range(RUNS)]
REVIEWED = {run_id for run_id in RUN_IDS if int(run_id[-2:]) % 2 == 1}
TIMEOUT = 15.0  # seconds for each process


def run(mode: str, folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(folder / "store"), str(folder / "effects"),
         str(RUNS)], capture_output=True, text=True, timeout=TIMEOUT, check=False)


async def stored(folder: Path) -> dict[str, tuple[RunStatus, dict[str, str]]]:
    """Each run's status and the reviews its latest checkpoint holds, by run id."""
    async with Store.open(folder / "store") as store:
        checkpoints = CheckpointStore(store)
        runs = {}
        for record in await RunStore(store).list():
            latest = await checkpoints.latest(record.run_id)
            reviews = ({} if latest is None else
                       msgspec.msgpack.decode(latest.state, type=RunProgress).reviews)
            runs[record.run_id] = (record.status, reviews)
        return runs


def test_a_run_killed_right_after_its_review_is_saved_stays_waiting_and_sends_nothing(
        tmp_path: Path) -> None:
    killed_after: list[str] = []
    process = run("start", tmp_path)
    for _ in range(len(REVIEWED) + 1):
        if process.returncode != -signal.SIGKILL:
            break
        [line] = [line for line in process.stdout.splitlines() if line.startswith("review-saved")]
        killed_after.append(line.split()[1])
        runs = anyio.run(stored, tmp_path)
        assert set(runs) == set(RUN_IDS)
        for run_id, (status, reviews) in runs.items():
            if reviews:
                assert status == RunStatus.WAITING, (
                    f"{run_id} holds a review in its checkpoint but is stored {status} "
                    f"(killed after the review of {killed_after[-1]})")
        process = run("resume", tmp_path)

    assert process.returncode == 0, process.stderr
    assert process.stdout.splitlines()[-1] == "finished"
    assert killed_after and set(killed_after) <= REVIEWED, killed_after
    final = anyio.run(stored, tmp_path)
    assert {run_id: status for run_id, (status, _) in final.items()} == {
        run_id: RunStatus.WAITING if run_id in REVIEWED else RunStatus.COMPLETED
        for run_id in RUN_IDS}
    effects = Counter((tmp_path / "effects").read_text().split("\n")[:-1])
    assert effects == Counter(f"{run_id} send" for run_id in RUN_IDS if run_id not in REVIEWED)
