"""Tests of roost/runtime/gate_commands.py: `roost gates` and `roost decide` as real processes,
on a store where a real system (in the test process, then stopped) parked runs at gates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import roost
from roost import Gate, Pipeline, RunStep, Step
from roost.runtime.gate_commands import age
from roost.storage import Put, Store
from roost.storage.gates import gate_key
from tests.support import into_a_closed_pipe

REPO = Path(__file__).resolve().parents[2]
ROOST = [sys.executable, "-m", "roost.runtime.cli"]
REPLY = {"to": "customer@example.org", "body": "hello"}


class Reply(msgspec.Struct):
    to: str
    body: str


class Echo(roost.Actor):
    """Returns the request's input as it received it (an edit at its gate replaces it)."""

    async def receive(self, message: RunStep) -> Any:
        return msgspec.to_builtins(message.input)


def support() -> Pipeline:
    return Pipeline("support", [Step("reply", Echo, gate=Gate(
        reason="check the\nreply", assignees=["support"], input_type=Reply))])


def billing() -> Pipeline:
    return Pipeline("billing", [Step("refund", Echo, gate=Gate(
        reason="refunds need finance", assignees=["finance", "leads"]))])


def notes() -> Pipeline:
    return Pipeline("notes", [Step("file", Echo, gate=Gate())])


def timed() -> Pipeline:
    return Pipeline("timed", [Step("act", Echo, gate=Gate(timeout=0.2, on_timeout="reject"))])


def roost_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ROOST, *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                          input=stdin)


def quiet_system(store: Path) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, log_format="json", log_level="error")


async def park(store: Path, *runs: tuple[Pipeline, str]) -> None:
    """Start each run (in order, so the first is the oldest) and let it park at its gate."""
    async with quiet_system(store) as system:
        for pipeline, run_id in runs:
            handle = await system.pipelines.start(pipeline, REPLY, run_id=run_id)
            with anyio.fail_after(10):
                assert (await handle.result()).status == "waiting"


async def resume(store: Path, pipeline: Pipeline) -> roost.RunOutcome:
    """What a later `roost run` does: register the pipeline with resume=True, run to the end."""
    async with quiet_system(store) as system:
        [handle] = await system.pipelines.register(pipeline, resume=True)
        with anyio.fail_after(10):
            return await handle.result()


async def gate_status(store: Path, run_id: str, gate: str) -> str:
    async with quiet_system(store) as system:
        return (await system.gates.get(run_id, gate)).status


@pytest.fixture
def store(tmp_path: Path) -> Path:
    folder = tmp_path / "store"
    anyio.run(park, folder, (support(), "run-support"), (billing(), "run-billing"),
              (notes(), "run-notes"))
    return folder


# --- roost gates ------------------------------------------------------------------------------


def test_gates_lists_the_waiting_gates_oldest_first_with_age_assignees_and_reason(
        store: Path) -> None:
    result = roost_command("gates", "--store", str(store))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # logs stay quiet
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["RUN", "GATE", "AGE", "ASSIGNEES", "REASON"]
    rows = [line.split(None, 4) for line in lines]
    assert [[run, gate, assignees, reason] for run, gate, _, assignees, reason in rows] == [
        ["run-support", "reply", "support", "check the reply"],
        ["run-billing", "refund", "finance,leads", "refunds need finance"],
        ["run-notes", "file", "-", "waiting for a person's approval"]]
    assert all(re.fullmatch(r"\d{1,2}s", row[2]) for row in rows)  # opened seconds ago


def test_gates_filters_by_assignee_pipeline_and_age(store: Path) -> None:
    by_assignee = roost_command("gates", "--store", str(store), "--assignee", "leads")
    by_pipeline = roost_command("gates", "--store", str(store), "--pipeline", "notes")
    too_young = roost_command("gates", "--store", str(store), "--older-than", "3600")

    assert [line.split()[0] for line in by_assignee.stdout.splitlines()[1:]] == ["run-billing"]
    assert [line.split()[0] for line in by_pipeline.stdout.splitlines()[1:]] == ["run-notes"]
    assert (too_young.returncode, too_young.stdout) == (0, "no gates are waiting\n")


def test_gates_json_prints_one_record_per_line_with_its_json_fields_decoded(store: Path) -> None:
    result = roost_command("gates", "--store", str(store), "--json")

    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["run_id"], r["gate"], r["status"]) for r in records] == [
        ("run-support", "reply", "pending"), ("run-billing", "refund", "pending"),
        ("run-notes", "file", "pending")]
    first = records[0]
    assert (first["pipeline"], first["assignees"], first["input_type"]) == (
        "support", ["support"], "Reply")
    assert first["input_schema"]["$defs"]["Reply"]["required"] == ["to", "body"]
    assert first["shown"] == {}  # the results the first step comes after: none
    assert first["input"] is None
    assert [event["what"] for event in first["history"]] == ["opened"]


def test_gates_json_to_a_reader_that_stops_reading_ends_quietly_with_exit_1(
        store: Path) -> None:
    result = into_a_closed_pipe(REPO, "gates", "--store", str(store), "--json")

    assert (result.returncode, result.stderr) == (1, "")


def test_gates_says_so_when_none_are_waiting(tmp_path: Path) -> None:
    anyio.run(park, tmp_path / "store")

    result = roost_command("gates", "--store", str(tmp_path / "store"))

    assert (result.returncode, result.stdout) == (0, "no gates are waiting\n")


def test_gates_lists_the_readable_gates_names_the_damaged_records_and_exits_1(
        store: Path) -> None:
    async def damage() -> None:
        async with Store.open(store) as opened:
            await opened.commit([Put("gates", gate_key("run-billing", "refund"), b"\xc1"),
                                 Put("gates", b"no-separator", b"\xc1")])

    anyio.run(damage)

    result = roost_command("gates", "--store", str(store))
    as_json = roost_command("gates", "--store", str(store), "--json")

    assert result.returncode == 1
    assert [line.split()[:2] for line in result.stdout.splitlines()[1:]] == [
        ["run-support", "reply"], ["run-notes", "file"]]
    assert result.stderr == (
        "roost: 2 gate record(s) do not decode and are left out of the list: "
        "the one at key b'no-separator', gate 'refund' of run 'run-billing'; "
        f"run `roost store check {store}` with the system and console that use the store "
        "stopped, and restore the store from a backup if it reports damage\n")
    assert as_json.returncode == 1 and as_json.stderr == result.stderr
    assert [json.loads(line)["run_id"] for line in as_json.stdout.splitlines()] == [
        "run-support", "run-notes"]


def test_age_reads_like_a_person_would_say_it() -> None:
    assert [age(s) for s in (-0.5, 0.9, 45, 12 * 60 + 59, 3 * 3600 + 1, 2 * 86_400 + 7200)] == [
        "0s", "0s", "45s", "12m", "3h", "2d"]


# --- roost decide -----------------------------------------------------------------------------


def test_decide_approve_records_it_and_the_next_resume_completes_the_run(store: Path) -> None:
    decided = roost_command("decide", "run-billing", "refund", "approve", "--by", "ana",
                            "--comment", "refund ok", "--store", str(store))
    again = roost_command("decide", "run-billing", "refund", "approve", "--by", "bob",
                          "--store", str(store))
    changed = roost_command("decide", "run-billing", "refund", "reject", "--by", "bob",
                            "--store", str(store))

    assert decided.returncode == 0, decided.stderr
    assert decided.stdout.splitlines() == [
        "recorded at gate 'refund' of run 'run-billing': approve by ana (refund ok)",
        "run 'run-billing' is queued: it resumes when a system registers pipeline 'billing' "
        "with resume=True (e.g. the next `roost run` of its app)"]
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0] == (
        "gate 'refund' of run 'run-billing' was already decided that way: approve by ana; "
        "nothing changed")
    assert changed.returncode == 1
    assert changed.stderr.startswith("roost: GateAlreadyDecided: gate 'refund' of run "
                                     "'run-billing' was already decided: 'approve' by 'ana'")
    done = anyio.run(resume, store, billing())
    assert done.status == "completed"
    assert done.results["refund"] == REPLY


def test_decide_edit_with_an_input_file_hands_the_edit_to_the_resumed_step(
        store: Path, tmp_path: Path) -> None:
    edit = tmp_path / "edit.json"
    edit.write_text('{"to": "x@example.org", "body": "a kinder reply"}')

    result = roost_command("decide", "run-support", "reply", "edit", "--by", "ana",
                           "--input", str(edit), "--store", str(store))

    assert result.returncode == 0, result.stderr
    assert "edit by ana" in result.stdout
    done = anyio.run(resume, store, support())
    assert done.results["reply"] == {"to": "x@example.org", "body": "a kinder reply"}


def test_decide_an_edit_that_does_not_fit_the_gates_type_names_the_field_and_stores_nothing(
        store: Path) -> None:
    result = roost_command("decide", "run-support", "reply", "edit", "--by", "ana",
                           "--input", "-", "--store", str(store),
                           stdin='{"to": 3, "body": "x"}')

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("roost: GateDecisionInvalid: cannot decide gate 'reply' of "
                                    "run 'run-support': the input does not fit Reply: ")
    assert "$.to: expected string, got int" in result.stderr
    assert anyio.run(gate_status, store, "run-support", "reply") == "pending"


@pytest.mark.parametrize(("args", "error"), [
    (["nope", "reply", "approve", "--by", "ana"],
     "roost: RunNotFound: no run with id 'nope' in the store"),
    (["run-support", "send", "approve", "--by", "ana"],
     "roost: GateNotFound: run 'run-support' has no gate 'send' (its gates: 'reply')"),
    (["run-support", "reply", "approve", "--by", " "],
     "roost: GateDecisionInvalid: cannot decide gate 'reply' of run 'run-support': by= must "
     "name who decides"),
    (["run-support", "reply", "maybe", "--by", "ana"],
     "roost: GateDecisionInvalid: cannot decide gate 'reply' of run 'run-support': "
     "decision='maybe' is not one of approve, reject, edit"),
], ids=["unknown run", "unknown gate", "empty by", "unknown decision"])
def test_decide_refuses_a_bad_decision_with_a_message_naming_it(
        store: Path, args: list[str], error: str) -> None:
    result = roost_command("decide", *args, "--store", str(store))

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(error), result.stderr


def test_decide_refuses_an_input_file_that_is_not_json_naming_the_file_and_position(
        store: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"to": "x@example.org",\n "body": }')

    malformed = roost_command("decide", "run-support", "reply", "edit", "--by", "ana",
                              "--input", str(bad), "--store", str(store))
    missing = roost_command("decide", "run-support", "reply", "edit", "--by", "ana",
                            "--input", str(tmp_path / "nowhere.json"), "--store", str(store))

    assert (malformed.returncode, malformed.stdout) == (1, "")
    assert malformed.stderr == (f"roost: --input {str(bad)!r} is not valid JSON: Expecting "
                                "value at line 2, column 10\n")
    assert missing.returncode == 1
    assert missing.stderr == (f"roost: --input {str(tmp_path / 'nowhere.json')!r}: cannot read "
                              "it (No such file or directory)\n")
    assert anyio.run(gate_status, store, "run-support", "reply") == "pending"


def test_decide_after_the_deadline_passed_finds_the_gates_timeout_already_applied(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    anyio.run(park, store, (timed(), "run-timed"))
    anyio.run(anyio.sleep, 0.3)  # the deadline passes while no process runs

    result = roost_command("decide", "run-timed", "act", "approve", "--by", "ana",
                           "--store", str(store))

    assert result.returncode == 1
    assert result.stderr.startswith("roost: GateAlreadyDecided: gate 'act' of run 'run-timed' "
                                    "was already decided: 'reject' by 'roost:timeout'")


# --- the store --------------------------------------------------------------------------------


def test_a_folder_without_a_store_is_refused_and_left_alone(tmp_path: Path) -> None:
    result = roost_command("gates", "--store", str(tmp_path / "none"))

    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith(f"roost: StoreUnavailable: cannot open the store at "
                                    f"{str(tmp_path / 'none')!r}: there is no store in this folder")
    assert not (tmp_path / "none").exists()


@pytest.mark.anyio
async def test_a_store_a_live_system_holds_is_refused_saying_to_stop_it_or_decide_through_it(
        store: Path) -> None:
    async with quiet_system(store):
        result = await anyio.run_process(
            [*ROOST, "decide", "run-support", "reply", "approve", "--by", "ana",
             "--store", str(store)], cwd=REPO, check=False)

    stderr = result.stderr.decode()
    assert (result.returncode, result.stdout) == (1, b"")
    assert f"roost: StoreUnavailable: cannot open the store at {str(store)!r}: it is already " \
           f"open (by pid {os.getpid()})" in stderr
    assert "stop that system first, or list and decide its gates through it" in stderr
    assert await gate_status(store, "run-support", "reply") == "pending"
