"""Crash tests of gates: processes SIGKILLed while runs wait at a gate, are decided, or resume.

`_gate_runs.py` runs `prepare -> log -> send`, with a gate before the `send` tool;
both tools append `RUN STEP` to an effects file (fsync) and verify a call cut off
by a kill against it. The process kills itself at a chosen point: right after the
write that parks a run, stores a decision or claims a `send` call, right before a
decision's write (its run resuming here meanwhile), inside a `send` call before or
after its effect, or right before a gate timeout would be stored.
A new process then picks the runs up from the store. Throughout, every side effect
happens exactly once, and none of a gated step before its decision.
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

from roost.storage import GateRecord, GateStore, RunStatus, RunStore, Store

SCRIPT = Path(__file__).with_name("_gate_runs.py")
RUNS = 8
RUN_IDS = [f"run-{i:02d}" for i in range(RUNS)]
TIMED_RUNS = 6
TIMED_IDS = [f"run-{i:02d}" for i in range(TIMED_RUNS)]
REJECTED = {run_id for run_id in TIMED_IDS if int(run_id[-2:]) % 2 == 0}  # in `reject-late`
TIMEOUT = 15.0  # seconds for each process at most


class Runs(msgspec.Struct):
    """What the store holds after a process: each run's status and results, and its gates."""

    status: dict[str, RunStatus]
    results: dict[str, dict[str, object]]
    gates: dict[str, GateRecord]  # by run id: each run has the one gate `send`


def run(mode: str, folder: Path, kill: str, runs: int = RUNS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), mode, str(folder / "store"), str(folder / "effects"),
         str(runs), kill], capture_output=True, text=True, timeout=TIMEOUT, check=False)


def killed_at(process: subprocess.CompletedProcess[str]) -> list[str]:
    """The `kill POINT [RUN]` line of a process that killed itself, split."""
    assert process.returncode == -signal.SIGKILL, (
        f"the process was not killed (exit {process.returncode}): {process.stderr}")
    [line] = [line for line in process.stdout.splitlines() if line.startswith("kill ")]
    return line.split()[1:]


def finished(process: subprocess.CompletedProcess[str]) -> list[str]:
    """The output of a process that ran every run to its end."""
    assert process.returncode == 0, process.stderr
    output = process.stdout.splitlines()
    assert output[-1] == "finished", output
    return output


async def read_store(folder: Path) -> Runs:
    async with Store.open(folder / "store") as store:
        records = await RunStore(store).list()
        gates = await GateStore(store).list()
    assert all(gate.gate == "send" for gate in gates), [gate.gate for gate in gates]
    return Runs(status={r.run_id: r.status for r in records},
                results={r.run_id: {} if r.result is None else msgspec.msgpack.decode(r.result)
                         for r in records},
                gates={gate.run_id: gate for gate in gates})


def stored(folder: Path) -> Runs:
    return anyio.run(read_store, folder)


def effects(folder: Path) -> Counter[str]:
    path = folder / "effects"
    return Counter(path.read_text().splitlines() if path.exists() else [])


def exactly_once(run_ids: list[str], steps: list[str]) -> Counter[str]:
    return Counter(f"{run_id} {step}" for run_id in run_ids for step in steps)


def test_runs_parked_at_a_gate_when_the_process_is_killed_stay_pending_and_complete_once_decided(
        tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    kill_at = random.Random(seed).randint(1, RUNS)
    note = f"(seed {seed}, killed after the write parking the {kill_at}th run)"

    assert killed_at(run("park-held", tmp_path, f"park:{kill_at}"))[0] == f"park:{kill_at}"

    at_kill = stored(tmp_path)
    parked = {run_id for run_id, status in at_kill.status.items() if status == RunStatus.WAITING}
    # Writes queued together commit together: a run parked just after the k-th may be stored.
    assert set(at_kill.status) == set(RUN_IDS) and len(parked) >= kill_at, note
    assert set(at_kill.status) - parked == {
        run_id for run_id, status in at_kill.status.items() if status == RunStatus.RUNNING}, note
    assert {run_id: gate.status for run_id, gate in at_kill.gates.items()} == dict.fromkeys(
        parked, "pending"), f"a parked run without its pending gate, or the reverse {note}"
    assert all(effects(tmp_path)[f"{run_id} log"] == 1 for run_id in parked), note
    assert not any(line.endswith(" send") for line in effects(tmp_path)), (
        f"a gated step had its effect before any decision {note}")

    output = finished(run("decide", tmp_path, "none"))

    decided_before = {line.split()[1] for line in output if line.endswith(" before-register")}
    decided_after = {line.split()[1] for line in output if line.endswith(" after-register")}
    assert decided_before == parked, f"the new process did not see every parked run pending {note}"
    assert decided_after == set(RUN_IDS) - parked, note
    for run_id in RUN_IDS:
        decided = next(i for i, line in enumerate(output) if line.startswith(f"decided {run_id} "))
        sent = output.index(f"effect {run_id} send")
        assert decided < sent, f"{run_id} sent before its decision {note}"
    final = stored(tmp_path)
    assert final.status == dict.fromkeys(RUN_IDS, RunStatus.COMPLETED), note
    assert all(final.results[run_id]["send"] == f"{run_id}:send:ok" for run_id in RUN_IDS), note
    assert {run_id: (gate.status, gate.decision, gate.by, [e.what for e in gate.history])
            for run_id, gate in final.gates.items()} == dict.fromkeys(
        RUN_IDS, ("decided", "approve", "ana", ["opened", "decided"])), note
    assert effects(tmp_path) == exactly_once(RUN_IDS, ["log", "send"]), note


def test_a_kill_at_any_point_while_decided_runs_resume_never_repeats_a_side_effect(
        tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    pick = random.Random(seed)
    # Each point is reached before the runs run out: decisions come before any send,
    # and the sends done before the last point are at most 2 + 0 + 2 + 1 of the 8.
    plan = [f"decision:{pick.randint(1, 4)}", f"claim:{pick.randint(1, 3)}", "mid:1",
            f"effect:{pick.randint(1, 2)}", f"mid:{pick.randint(1, 2)}", "effect:1"]
    note = f"(seed {seed}, kills at {plan})"
    parking = run("park-held", tmp_path, "none")
    assert (parking.returncode, parking.stdout.splitlines()[-1]) == (0, "all-parked"), parking.stderr
    assert set(stored(tmp_path).status.values()) == {RunStatus.WAITING}
    assert effects(tmp_path) == exactly_once(RUN_IDS, ["log"])

    kills: list[list[str]] = []
    outputs: list[list[str]] = []
    for point in [*plan, "none"]:
        process = run("decide", tmp_path, point)
        if point == "none":
            outputs.append(finished(process))
        else:
            kills.append(killed_at(process))
            assert kills[-1][0] == point, f"{point} was not reached {note}"
            outputs.append(process.stdout.splitlines())

    for number, kill in enumerate(kills, start=1):
        # A call cut off before its effect is verified not done, and made then; one cut off
        # after it is verified done, and not made again. The next process may itself be
        # killed before it resumes that run, so its verdict may come in any later process.
        after = [line for output in outputs[number:] for line in output]
        if kill[0].startswith("mid:"):
            assert f"verified {kill[1]} send not-done" in after, f"after {kill} {note}"
        if kill[0].startswith("effect:"):
            assert f"verified {kill[1]} send done" in after, f"after {kill} {note}"
            assert f"effect {kill[1]} send" not in after, f"after {kill} {note}"
        if kill[0].startswith("claim:"):
            assert any(line.endswith(" send not-done") for line in after), f"after {kill} {note}"
    final = stored(tmp_path)
    assert final.status == dict.fromkeys(RUN_IDS, RunStatus.COMPLETED), note
    assert all(final.results[run_id]["send"] == f"{run_id}:send:ok" for run_id in RUN_IDS), note
    assert all(gate.decision == "approve" for gate in final.gates.values()), note
    made = effects(tmp_path)
    assert made == exactly_once(RUN_IDS, ["log", "send"]), (
        f"side effects not exactly once {note}: "
        f"{ {line: count for line, count in made.items() if count != 1} }")


def test_a_kill_while_decisions_resume_their_runs_here_loses_no_decision_and_runs_no_step_early(
        tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    pick = random.Random(seed)
    parking = run("park-held", tmp_path, "none")
    assert (parking.returncode, parking.stdout.splitlines()[-1]) == (0, "all-parked"), parking.stderr

    # Killed right before the k-th decision is written, its run's actor spawned here: the
    # decisions before it stand, it does not, and no step ran before its decision.
    first = pick.randint(1, 4)
    kill = killed_at(run("decide-live", tmp_path, f"deciding:{first}"))
    note = f"(seed {seed}, killed before the {first}th decision's write, of {kill[1]})"
    at_kill = stored(tmp_path)
    decided = {run_id for run_id, gate in at_kill.gates.items() if gate.status == "decided"}
    assert len(decided) == first - 1 and kill[1] not in decided, note
    assert all(at_kill.status[run_id] == RunStatus.WAITING
               for run_id in set(RUN_IDS) - decided), note
    assert all(at_kill.status[run_id] in (RunStatus.RUNNING, RunStatus.COMPLETED)
               for run_id in decided), note
    sent = {line.split()[0] for line in effects(tmp_path) if line.endswith(" send")}
    assert sent <= decided, f"a step ran before its decision was stored {note}"

    # Killed right after the m-th decision is written, its run waiting here for the write:
    # the decision and the run's `running` status are stored, and its step has not started.
    second = pick.randint(1, RUNS - len(decided))
    kill = killed_at(run("decide-live", tmp_path, f"decision:{second}"))
    note += f" (then after the {second}th decision's write, of {kill[1]})"
    at_kill = stored(tmp_path)
    assert (at_kill.gates[kill[1]].status, at_kill.status[kill[1]]) == (
        "decided", RunStatus.RUNNING), note
    assert f"{kill[1]} send" not in effects(tmp_path), note

    finished(run("decide", tmp_path, "none"))
    final = stored(tmp_path)
    assert final.status == dict.fromkeys(RUN_IDS, RunStatus.COMPLETED), note
    assert {run_id: (gate.decision, [e.what for e in gate.history])
            for run_id, gate in final.gates.items()} == dict.fromkeys(
        RUN_IDS, ("approve", ["opened", "decided"])), note
    assert effects(tmp_path) == exactly_once(RUN_IDS, ["log", "send"]), note


def test_a_gate_deadline_that_passed_while_no_process_ran_applies_at_the_next_start(
        tmp_path: Path) -> None:
    kill = killed_at(run("park-timed", tmp_path, f"park:{TIMED_RUNS}", TIMED_RUNS))
    at_kill = stored(tmp_path)
    parked = {run_id for run_id, status in at_kill.status.items() if status == RunStatus.WAITING}
    # The process dies after the last run parks, or (on a slow machine) before the gate
    # timer could store a timeout: every run it parked is still pending.
    assert parked == set(TIMED_IDS) or kill[0] == "timer", (kill, at_kill.status)
    assert parked and {run_id: gate.status for run_id, gate in at_kill.gates.items()} == \
        dict.fromkeys(parked, "pending")
    assert not any(line.endswith(" send") for line in effects(tmp_path))
    last_deadline = max(gate.deadline or 0.0 for gate in at_kill.gates.values())
    time.sleep(max(0.0, last_deadline - time.time()) + 0.1)

    started = time.time()
    output = finished(run("expire", tmp_path, "none", TIMED_RUNS))

    assert [line for line in output if line.startswith("done ")] == [
        f"done {run_id} {'rejected' if run_id in REJECTED else 'completed'}"
        for run_id in TIMED_IDS]
    final = stored(tmp_path)
    for run_id in TIMED_IDS:
        gate = final.gates[run_id]
        assert (gate.decision, gate.by, [e.what for e in gate.history]) == (
            "reject" if run_id in REJECTED else "approve", "roost:timeout",
            ["opened", "timed_out"]), run_id
        if run_id in parked:  # its deadline passed while no process ran: the new one applied it
            assert gate.deadline is not None and gate.deadline < started <= (gate.decided_at or 0)
    assert final.status == {run_id: RunStatus.REJECTED if run_id in REJECTED
                            else RunStatus.COMPLETED for run_id in TIMED_IDS}
    assert all("send" not in final.results[run_id] for run_id in REJECTED)
    assert all(final.results[run_id]["send"] == f"{run_id}:send:ok"
               for run_id in set(TIMED_IDS) - REJECTED)
    assert effects(tmp_path) == exactly_once(TIMED_IDS, ["log"]) + exactly_once(
        sorted(set(TIMED_IDS) - REJECTED), ["send"])
