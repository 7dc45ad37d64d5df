"""Tests of roost/pipelines/gates.py and the gates of roost/pipelines/run.py: a run parks at a
gate holding nothing, a person decides, and the run resumes from the gate with the decision.

Each system here is a real one on a real LMDB store in a temp folder; "a new process" is a
new system on the same store.
"""

from __future__ import annotations

import datetime
import decimal
import enum
import gc
import re
import uuid
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypedDict

import anyio
import anyio.lowlevel
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost import Escalate, Gate, NeedsReview, Pipeline, RunStep, Step
from roost.errors import (
    ConfigurationError,
    GateAlreadyDecided,
    GateClosed,
    GateDecisionInvalid,
    GateNotFound,
    PipelineDefinitionError,
    RunNotFound,
    ToolGated,
)
from roost.pipelines import _schema_check

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

SENT: list[dict[str, Any]] = []


class ReplyEdit(msgspec.Struct):
    to: str
    body: str


class Draft(msgspec.Struct):
    text: str
    confidence: float


class Drafter(roost.Actor):
    async def receive(self, message: RunStep) -> Draft:
        confidence = 0.5 if "angry" in message.input else 0.95
        return Draft(f"reply to {message.input}", confidence)


class Reviewer(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        draft = message.results["draft"]
        if draft.confidence < 0.8:
            return NeedsReview("low confidence", data=draft)
        return draft


class Seer(roost.Actor):
    """Reports what it saw: the request's input and the decisions so far."""

    async def receive(self, message: RunStep) -> dict[str, Any]:
        return {"input": msgspec.to_builtins(message.input),
                "decisions": {name: d.decision for name, d in message.decisions.items()}}


@roost.tool
async def send_email(to: str, body: str) -> str:
    SENT.append({"to": to, "body": body})
    return f"sent to {to}"


@roost.tool(gate=Gate(reason="wiring money needs a person", assignees=["finance"]))
async def wire_money(amount: int) -> str:
    SENT.append({"wire": amount})
    return f"wired {amount}"


def send_step(**gate: Any) -> Step:
    return Step("send", tool="send_email", after="draft",
                args=lambda r, email: {"to": "customer@example.org", "body": r["draft"].text},
                gate=Gate(**{"when": lambda r: r["draft"].confidence < 0.8,
                             "reason": "low confidence", "assignees": ["support"],
                             "input_type": ReplyEdit, **gate}))


def support(name: str = "support", **gate: Any) -> Pipeline:
    return Pipeline(name, [Step("draft", Drafter, output=Draft), send_step(**gate)],
                    input_type=str)


@pytest.fixture(autouse=True)
def clear_sent() -> None:
    SENT.clear()


def new_system(store: Path) -> roost.ActorSystem:
    system = roost.ActorSystem(store=store)
    system.tools.register(send_email)
    system.tools.register(wire_money)
    return system


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with new_system(tmp_path / "store") as system:
        yield system


async def outcome(handle: roost.RunHandle, *, through_gates: bool = False) -> roost.RunOutcome:
    with anyio.fail_after(10):
        return await handle.result(through_gates=through_gates)


# --- opening ----------------------------------------------------------------------------


async def test_a_gate_whose_condition_holds_parks_the_run_before_the_step(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    parked = await outcome(run)

    assert (parked.status, parked.waiting_at) == ("waiting", ["send"])
    assert SENT == []
    assert await run.status() == "waiting"
    assert system.pipelines.statistics()["active"] == 0  # the slot is free
    with anyio.fail_after(2):  # its actor stops right after reporting the parked outcome
        while True:
            try:
                system.lookup("/pipelines/runs/run-1")
            except LookupError:
                break
            await anyio.sleep(0.01)
    [pending] = await system.gates.pending()
    assert (pending.run_id, pending.gate, pending.reason, pending.assignees, pending.status) == (
        "run-1", "send", "low confidence", ["support"], "pending")
    assert msgspec.json.decode(pending.shown) == {
        "arguments": {"to": "customer@example.org", "body": "reply to angry customer"}}
    assert pending.input_type == "ReplyEdit"


async def test_a_gate_whose_condition_fails_lets_the_step_run(system: roost.ActorSystem) -> None:
    done = await outcome(await system.pipelines.start(support(), "happy customer"))

    assert done.status == "completed"
    assert SENT == [{"to": "customer@example.org", "body": "reply to happy customer"}]
    assert await system.gates.pending() == []


# --- deciding ---------------------------------------------------------------------------


async def test_approve_resumes_the_run_from_the_gate(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)

    decided = await system.gates.decide("run-1", "send", "approve", by="ana", comment="fine")
    done = await outcome(run, through_gates=True)

    assert done.status == "completed"
    assert done.results["send"] == "sent to customer@example.org"
    assert SENT == [{"to": "customer@example.org", "body": "reply to angry customer"}]
    assert (decided.status, decided.decision, decided.by, decided.comment) == (
        "decided", "approve", "ana", "fine")
    assert [event.what for event in decided.history] == ["opened", "decided"]
    assert await system.gates.pending() == []


async def test_an_edit_replaces_the_tool_steps_arguments(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "send", "edit", by="ana",
                              input={"to": "boss@example.org", "body": "calmer words"})
    done = await outcome(run, through_gates=True)

    assert done.status == "completed"
    assert SENT == [{"to": "boss@example.org", "body": "calmer words"}]


async def test_reject_ends_the_run_rejected_without_running_the_step(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "send", "reject", by="ana")
    ended = await outcome(run, through_gates=True)

    assert ended.status == "rejected"
    assert "rejected at gate 'send' by ana" in (ended.error or "")
    assert SENT == []
    assert (await system.pipelines.runs.get("run-1")).status == "rejected"


async def test_reject_runs_the_gates_on_reject_step_instead(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("support", [
        Step("draft", Drafter, output=Draft),
        send_step(on_reject="apologise"),
        Step("apologise", tool="send_email", after="draft",
             args=lambda r, email: {"to": "customer@example.org", "body": "sorry"}),
    ], input_type=str)
    happy = await outcome(await system.pipelines.start(pipeline, "happy customer"))
    assert happy.status == "completed" and "apologise" not in happy.results

    run = await system.pipelines.start(pipeline, "angry customer", run_id="run-1")
    await outcome(run)
    await system.gates.decide("run-1", "send", "reject", by="ana")
    ended = await outcome(run, through_gates=True)

    assert ended.status == "completed"
    assert ended.results["apologise"] == "sent to customer@example.org"
    assert SENT[-1] == {"to": "customer@example.org", "body": "sorry"}


async def test_the_same_decision_twice_is_a_no_op_and_a_different_one_is_refused(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)
    first = await system.gates.decide("run-1", "send", "approve", by="ana")
    await outcome(run, through_gates=True)

    again = await system.gates.decide("run-1", "send", "approve", by="bob")
    with pytest.raises(GateAlreadyDecided, match="'approve' by 'ana'"):
        await system.gates.decide("run-1", "send", "reject", by="bob")

    assert again == first
    assert len(SENT) == 1


async def test_the_same_edit_with_its_keys_in_another_order_is_the_same_decision(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("seen", [Step("look", Seer, gate=Gate(input_type=dict[str, Any]))])
    run = await system.pipelines.start(pipeline, "original", run_id="run-1")
    await outcome(run)
    first = await system.gates.decide("run-1", "look", "edit", input={"a": 1, "b": 3}, by="ana")

    again = await system.gates.decide("run-1", "look", "edit", input={"b": 3, "a": 1}, by="bob")
    with pytest.raises(GateAlreadyDecided, match="'edit' by 'ana'"):
        await system.gates.decide("run-1", "look", "edit", input={"a": 1, "b": True}, by="bob")

    assert again == first
    assert (await outcome(run, through_gates=True)).results["look"]["input"] == {"a": 1, "b": 3}


async def test_steps_after_a_gate_see_its_decision(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("seen", [
        Step("look", Seer, gate=Gate(input_type=ReplyEdit)),
        Step("after", Seer, after="look"),
    ])
    run = await system.pipelines.start(pipeline, "original", run_id="run-1")
    await outcome(run)
    await system.gates.decide("run-1", "look", "edit", by="ana",
                              input=ReplyEdit(to="x@example.org", body="edited"))
    done = await outcome(run, through_gates=True)

    assert done.results["look"] == {"input": {"to": "x@example.org", "body": "edited"},
                                    "decisions": {"look": "edit"}}
    assert done.results["after"] == {"input": "original", "decisions": {"look": "edit"}}


class Witness(roost.Actor):
    """Reports how the store has the run and its gate `look` when the request comes."""

    async def receive(self, message: RunStep) -> dict[str, Any]:
        system = self.ctx.system
        gate = await system.gates.get(message.run_id, "look")
        run = await system.pipelines.runs.get(message.run_id)
        return {"gate": gate.status, "decision": gate.decision, "run": str(run.status)}


async def test_a_decided_run_resumes_here_stored_running_and_its_step_waits_for_the_decision(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(Pipeline("witnessed", [Step("look", Witness, gate=Gate())]),
                                       run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "look", "approve", by="ana")
    # Woken `running` in the decision's own write: the resumed run has no status to write.
    assert (await system.pipelines.runs.get("run-1")).status == "running"
    done = await outcome(run, through_gates=True)

    assert done.results["look"] == {"gate": "decided", "decision": "approve", "run": "running"}


async def test_a_refused_decision_leaves_the_run_waiting_at_its_other_gate(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("two-gates", [Step("a", Seer, gate=Gate()), Step("b", Seer, gate=Gate())])
    run = await system.pipelines.start(pipeline, "x", run_id="run-1")
    assert (await outcome(run)).waiting_at == ["a", "b"]
    await system.gates.decide("run-1", "a", "approve", by="ana")
    assert (await outcome(run)).waiting_at == ["b"]  # resumed, ran `a`, parked again at `b`
    await no_actor_of(system, "run-1")

    async with anyio.create_task_group() as tasks:
        ended: list[roost.RunOutcome] = []
        tasks.start_soon(lambda: wait_into(ended, run))  # through the gates, from before
        await anyio.lowlevel.checkpoint()
        with pytest.raises(GateAlreadyDecided, match="'approve' by 'ana'"):
            await system.gates.decide("run-1", "a", "reject", by="bob")

        assert (await system.pipelines.runs.get("run-1")).status == "waiting"
        assert [g.gate for g in await system.gates.pending()] == ["b"]
        await no_actor_of(system, "run-1")
        assert ended == []
        await system.gates.decide("run-1", "b", "approve", by="ana")

    assert ended[0].status == "completed"
    assert set(ended[0].results) == {"a", "b"}


async def test_two_gates_decided_at_once_both_hold_and_the_run_completes(
        system: roost.ActorSystem) -> None:
    # The second decision can land while the run, resumed by the first, is about to park
    # again at the second gate: the park must see it and go on, not wait over it.
    pipeline = Pipeline("two-gates", [Step("a", Seer, gate=Gate()), Step("b", Seer, gate=Gate())])
    runs = [await system.pipelines.start(pipeline, "x", run_id=f"run-{i}") for i in range(20)]
    for run in runs:
        assert (await outcome(run)).waiting_at == ["a", "b"]

    async def decide_both(run_id: str, apart: float) -> None:
        await system.gates.decide(run_id, "a", "approve", by="ana")
        await anyio.sleep(apart)
        await system.gates.decide(run_id, "b", "approve", by="ana")

    async with anyio.create_task_group() as tasks:
        for i, run in enumerate(runs):  # 0 to 2 ms apart: one of them lands in the window
            tasks.start_soon(decide_both, run.run_id, i / 10_000)

    for run in runs:
        done = await outcome(run, through_gates=True)
        assert (done.status, set(done.results)) == ("completed", {"a", "b"})
    assert await system.gates.pending() == []


async def wait_into(ended: list[roost.RunOutcome], run: roost.RunHandle) -> None:
    ended.append(await outcome(run, through_gates=True))


async def no_actor_of(system: roost.ActorSystem, run_id: str) -> None:
    """Wait (2 s at most) until the run has no actor."""
    with anyio.fail_after(2):
        while True:
            try:
                system.lookup(f"/pipelines/runs/{run_id}")
            except LookupError:
                return
            await anyio.sleep(0.01)


# --- bad decisions ----------------------------------------------------------------------


async def test_bad_decisions_get_errors_that_name_what_is_wrong(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)

    with pytest.raises(RunNotFound, match="'nope'"):
        await system.gates.decide("nope", "send", "approve", by="ana")
    with pytest.raises(GateNotFound, match="run 'run-1' has no gate 'draft' \\(its gates: 'send'\\)"):
        await system.gates.decide("run-1", "draft", "approve", by="ana")
    with pytest.raises(GateDecisionInvalid, match="by= must name who decides"):
        await system.gates.decide("run-1", "send", "approve", by="  ")
    with pytest.raises(GateDecisionInvalid, match="'maybe' is not one of approve, reject, edit"):
        await system.gates.decide("run-1", "send", "maybe", by="ana")
    with pytest.raises(GateDecisionInvalid, match="does not fit ReplyEdit"):
        await system.gates.decide("run-1", "send", "edit", by="ana", input={"to": 3})
    with pytest.raises(GateDecisionInvalid, match="needs input="):
        await system.gates.decide("run-1", "send", "edit", by="ana")
    with pytest.raises(GateDecisionInvalid, match="takes no input"):
        await system.gates.decide("run-1", "send", "approve", by="ana", input={"x": 1})

    assert [g.gate for g in await system.gates.pending()] == ["send"]  # nothing was lost
    assert SENT == []


async def test_a_cancelled_waiting_run_closes_its_gates(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    await outcome(run)

    await run.cancel()

    assert (await system.pipelines.runs.get("run-1")).status == "cancelled"
    with pytest.raises(GateClosed, match="the run was cancelled"):
        await system.gates.decide("run-1", "send", "approve", by="ana")
    assert await system.gates.pending() == []


# --- reviews ----------------------------------------------------------------------------


def reviewed(**review: Any) -> Pipeline:
    return Pipeline("reviewed", [
        Step("draft", Drafter, output=Draft),
        Step("check", Reviewer, after="draft", output=Draft,
             review=Gate(**review) if review else None),
        Step("send", tool="send_email", after="check",
             args=lambda r, email: {"to": "customer@example.org", "body": r["check"].text}),
    ], input_type=str)


async def test_approving_a_review_makes_its_data_the_steps_result(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(reviewed(), "angry customer", run_id="run-1")
    parked = await outcome(run)
    assert parked.waiting_at == ["check/review"]

    await system.gates.decide("run-1", "check/review", "approve", by="ana")
    done = await outcome(run, through_gates=True)

    assert done.results["check"] == Draft("reply to angry customer", 0.5)
    assert SENT == [{"to": "customer@example.org", "body": "reply to angry customer"}]


async def test_editing_a_review_replaces_the_steps_result(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(reviewed(), "angry customer", run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "check/review", "edit", by="ana",
                              input={"text": "a kinder reply", "confidence": 1.0})
    done = await outcome(run, through_gates=True)

    assert done.results["check"] == Draft("a kinder reply", 1.0)
    assert SENT == [{"to": "customer@example.org", "body": "a kinder reply"}]


# --- a new process ----------------------------------------------------------------------


async def test_a_decision_made_with_no_process_running_is_picked_up_by_resume(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with new_system(store) as system:
        await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))

    async with new_system(store) as system:  # the pipeline is not registered here
        await system.gates.decide("run-1", "send", "approve", by="ana")
        assert (await system.pipelines.runs.get("run-1")).status == "queued"

    async with new_system(store) as system:
        [handle] = await system.pipelines.register(support(), resume=True)
        done = await outcome(handle)

    assert done.status == "completed"
    assert SENT == [{"to": "customer@example.org", "body": "reply to angry customer"}]


async def test_waiting_through_gates_is_refused_at_once_where_the_pipeline_is_not_registered(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with new_system(store) as system:
        await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))

    async with new_system(store) as system:  # the pipeline is not registered here
        run = await system.pipelines.resume("run-1")
        assert (await outcome(run)).status == "waiting"
        with anyio.fail_after(1), pytest.raises(ConfigurationError, match=re.escape(
                "run 'run-1' waits at a gate, but its pipeline 'support' is not registered "
                "here")):
            await run.result(through_gates=True)


# --- deadlines --------------------------------------------------------------------------


async def test_a_gate_past_its_timeout_applies_on_timeout(system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(support(timeout=0.2, on_timeout="approve"),
                                       "angry customer", run_id="run-1")
    await outcome(run)

    done = await outcome(run, through_gates=True)

    assert done.status == "completed"
    gate = await system.gates.get("run-1", "send")
    assert (gate.decision, gate.by, [e.what for e in gate.history]) == (
        "approve", "roost:timeout", ["opened", "timed_out"])


async def test_a_timeout_escalates_then_rejects(system: roost.ActorSystem) -> None:
    opened: list[tuple[str, list[str]]] = []
    system.gates.on_open(lambda record: opened.append((record.gate, record.assignees)))
    pipeline = support(timeout=0.2, on_timeout=Escalate(to=["leads"], timeout=0.2))
    run = await system.pipelines.start(pipeline, "angry customer", run_id="run-1")

    ended = await outcome(run, through_gates=True)

    assert ended.status == "rejected"
    assert opened == [("send", ["support"]), ("send", ["leads"])]
    gate = await system.gates.get("run-1", "send")
    assert [e.what for e in gate.history] == ["opened", "escalated", "timed_out"]
    assert gate.assignees == ["leads"]


async def test_a_deadline_that_passed_while_no_process_ran_fires_at_the_next_start(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline = support(timeout=0.3, on_timeout="reject")
    async with new_system(store) as system:
        await outcome(await system.pipelines.start(pipeline, "angry customer", run_id="run-1"))
    await anyio.sleep(0.5)

    async with new_system(store) as system:
        for _ in range(100):  # the timer applies it at start, in the background
            if (await system.pipelines.runs.get("run-1")).status != "waiting":
                break
            await anyio.sleep(0.05)
        [handle] = await system.pipelines.register(pipeline, resume=True)
        ended = await outcome(handle)

    assert ended.status == "rejected"
    assert SENT == []


# --- tools guarded by a gate ------------------------------------------------------------


async def test_a_tool_declared_with_a_gate_waits_for_a_person_in_a_step(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("pay", [Step("wire", tool="wire_money", args=lambda r, i: {"amount": i})])
    run = await system.pipelines.start(pipeline, 100, run_id="run-1")
    parked = await outcome(run)
    assert (parked.status, SENT) == ("waiting", [])
    [gate] = await system.gates.pending(assignee="finance")
    assert gate.reason == "wiring money needs a person"

    await system.gates.decide("run-1", "wire", "approve", by="cfo")

    assert (await outcome(run, through_gates=True)).results["wire"] == "wired 100"


async def test_a_gated_tool_called_directly_is_refused(system: roost.ActorSystem) -> None:
    with pytest.raises(ToolGated, match="'wire_money' is guarded by a gate"):
        await system.tools.call("wire_money", amount=5)
    assert SENT == []


class Payment(msgspec.Struct):
    note: str


def paying(gate: Gate) -> Pipeline:
    return Pipeline("pay", [Step("wire", tool="wire_money", args=lambda r, i: {"amount": i},
                                 gate=gate)])


async def test_a_tools_gate_opens_when_the_steps_own_gate_does_not(
        system: roost.ActorSystem) -> None:
    # The step's own gate (with an input type of its own) stays shut: the tool's gate guards
    # the call all the same, and an edit there replaces the tool's arguments.
    pipeline = paying(Gate(when=lambda r: False, reason="never", input_type=Payment))
    run = await system.pipelines.start(pipeline, 100, run_id="run-1")
    parked = await outcome(run)

    assert (parked.status, parked.waiting_at, SENT) == ("waiting", ["wire"], [])
    [gate] = await system.gates.pending(assignee="finance")
    assert gate.reason == "wiring money needs a person"

    await system.gates.decide("run-1", "wire", "edit", input={"amount": 90}, by="cfo")

    assert (await outcome(run, through_gates=True)).results["wire"] == "wired 90"
    assert SENT == [{"wire": 90}]


async def test_a_tools_gate_rejected_after_the_steps_own_gate_stayed_shut_ends_the_run(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(paying(Gate(when=lambda r: False)), 100, run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "wire", "reject", by="cfo")

    assert (await outcome(run, through_gates=True)).status == "rejected"
    assert SENT == []


@pytest.mark.parametrize(("decision", "edit", "wired"), [("approve", None, 100),
                                                         ("edit", {"amount": 7}, 7)])
async def test_one_approval_at_a_tool_steps_own_gate_also_passes_its_tools_gate(
        system: roost.ActorSystem, decision: str, edit: Any, wired: int) -> None:
    pipeline = paying(Gate(reason="a large payment", assignees=["cfo"]))
    run = await system.pipelines.start(pipeline, 100, run_id="run-1")
    await outcome(run)
    [gate] = await system.gates.pending()
    assert (gate.reason, gate.assignees) == ("a large payment", ["cfo"])

    await system.gates.decide("run-1", "wire", decision, input=edit, by="cfo")
    done = await outcome(run, through_gates=True)

    assert (done.status, SENT) == ("completed", [{"wire": wired}])
    assert [g.gate for g in await system.gates.store.of_run("run-1")] == ["wire"]


@pytest.mark.parametrize(("edit", "problem"), [
    ({"amount": "lots"}, "argument 'amount' must be int, got str 'lots'"),
    ({"amt": 9}, "missing a required argument: 'amount'"),
    ([1, 2], "must be a mapping of argument names to values, got list"),
])
async def test_an_edit_at_a_tool_steps_gate_without_an_input_type_must_fit_the_tools_arguments(
        system: roost.ActorSystem, edit: Any, problem: str) -> None:
    pipeline = Pipeline("pay", [Step("wire", tool="wire_money", args=lambda r, i: {"amount": i})])
    run = await system.pipelines.start(pipeline, 100, run_id="run-1")
    await outcome(run)

    with pytest.raises(GateDecisionInvalid, match=re.escape(problem)):
        await system.gates.decide("run-1", "wire", "edit", input=edit, by="cfo")
    assert (await system.gates.get("run-1", "wire")).status == "pending"  # nothing recorded

    await system.gates.decide("run-1", "wire", "edit", input={"amount": 9}, by="cfo")
    assert (await outcome(run, through_gates=True)).results["wire"] == "wired 9"
    assert SENT == [{"wire": 9}]


# --- definitions ------------------------------------------------------------------------


def test_a_bad_gate_is_refused_when_the_pipeline_is_built() -> None:
    with pytest.raises(PipelineDefinitionError, match="on_reject='nowhere' must name another step"):
        Pipeline("p", [Step("a", Drafter, gate=Gate(on_reject="nowhere"))])
    with pytest.raises(PipelineDefinitionError, match="gate timeout= must be > 0"):
        Pipeline("p", [Step("a", Drafter, gate=Gate(timeout=0))])
    with pytest.raises(PipelineDefinitionError, match="on_timeout= must be 'approve', 'reject'"):
        Pipeline("p", [Step("a", Drafter, gate=Gate(on_timeout="shrug"))])  # type: ignore[arg-type]
    with pytest.raises(PipelineDefinitionError, match=r"Escalate\(to=\.\.\.\) needs at least one"):
        Pipeline("p", [Step("a", Drafter, gate=Gate(on_timeout=Escalate(to=[], timeout=1)))])
    with pytest.raises(PipelineDefinitionError, match=re.escape(
            "pipeline 'p', step 'a', gate: gate show= must be a function of the results and the "
            "input, got 5")):
        Pipeline("p", [Step("a", Drafter, gate=Gate(show=5))])  # type: ignore[arg-type]


@pytest.mark.parametrize("names", ["support", None])
def test_gate_and_escalation_names_that_are_not_a_list_are_refused_when_built(
        names: Any) -> None:
    # A lone string would otherwise become its letters: assignees "s", "u", "p", ...
    with pytest.raises(PipelineDefinitionError, match=re.escape(
            f"Gate: assignees must be a list of names (say ['support']), got {names!r}")):
        Gate(assignees=names)
    with pytest.raises(PipelineDefinitionError, match=re.escape(
            f"Escalate: to must be a list of names (say ['support']), got {names!r}")):
        Escalate(to=names, timeout=60)


# --- unknown outcomes -------------------------------------------------------------------

HANG = {"charge": True}


@roost.tool(timeout=0.2)
async def charge(order: str) -> str:
    SENT.append({"charge": order})
    if HANG["charge"]:
        await anyio.sleep(5)  # the attempt times out after the effect: its outcome is unknown
    return f"charged {order}"


def charging() -> Pipeline:
    return Pipeline("charging", [
        Step("charge", tool="charge", args=lambda r, order: {"order": order}),
        Step("receipt", Seer, after="charge"),
    ], input_type=str)


@pytest.fixture
async def charging_system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    HANG["charge"] = True
    async with new_system(tmp_path / "store") as system:
        system.tools.register(charge)
        yield system


async def test_an_unknown_tool_outcome_asks_a_person_whether_it_happened(
        charging_system: roost.ActorSystem) -> None:
    system = charging_system
    run = await system.pipelines.start(charging(), "order-1", run_id="run-1")
    parked = await outcome(run)

    assert parked.waiting_at == ["charge/outcome"]
    gate = await system.gates.get("run-1", "charge/outcome")
    assert gate.gate_kind == "outcome" and gate.tool == "charge"
    assert msgspec.json.decode(gate.shown)["arguments"] == {"order": "order-1"}
    with pytest.raises(GateDecisionInvalid, match="not one of done, not_done, abandon"):
        await system.gates.decide("run-1", "charge/outcome", "approve", by="ana")

    await system.gates.decide("run-1", "charge/outcome", "done", by="ana",
                              input="charged order-1 (seen in the bank)")
    done = await outcome(run, through_gates=True)

    assert done.status == "completed"
    assert done.results["charge"] == "charged order-1 (seen in the bank)"
    assert SENT == [{"charge": "order-1"}]  # not charged twice
    # Later calls with the step's key get the result the person recorded.
    [entry_key] = [msgspec.json.decode(gate.shown)["key"]]
    assert await system.tools.call("charge", key=entry_key, order="order-1") == (
        "charged order-1 (seen in the bank)")


async def test_not_done_runs_the_tool_again_under_the_same_key(
        charging_system: roost.ActorSystem) -> None:
    system = charging_system
    run = await system.pipelines.start(charging(), "order-1", run_id="run-1")
    await outcome(run)
    HANG["charge"] = False

    await system.gates.decide("run-1", "charge/outcome", "not_done", by="ana")
    done = await outcome(run, through_gates=True)

    assert done.results["charge"] == "charged order-1"
    assert SENT == [{"charge": "order-1"}, {"charge": "order-1"}]


async def test_abandon_fails_the_step(charging_system: roost.ActorSystem) -> None:
    system = charging_system
    run = await system.pipelines.start(charging(), "order-1", run_id="run-1")
    await outcome(run)

    await system.gates.decide("run-1", "charge/outcome", "abandon", by="ana")
    with pytest.raises(roost.StepFailed, match="abandoned by ana"):
        await outcome(run, through_gates=True)
    assert (await system.pipelines.runs.get("run-1")).failed_step == "charge"


# --- scheduling around gates ------------------------------------------------------------


class Slow(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        await anyio.sleep(0.2)
        return "slow:done"


async def test_a_run_parks_only_after_its_running_steps_settle_and_keeps_their_results(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("branches", [
        Step("gated", Seer, gate=Gate()),
        Step("slow", Slow),
        Step("join", Seer, after=["gated", "slow"]),
    ])
    run = await system.pipelines.start(pipeline, "x", run_id="run-1")
    parked = await outcome(run)

    assert (parked.status, parked.results) == ("waiting", {"slow": "slow:done"})
    await system.gates.decide("run-1", "gated", "approve", by="ana")
    done = await outcome(run, through_gates=True)
    assert set(done.results) == {"gated", "slow", "join"}


async def test_a_decision_made_while_the_run_is_still_parking_resumes_it(
        system: roost.ActorSystem) -> None:
    system.gates.on_open(lambda record: system.loop.create_task(system.gates.decide(
        record.run_id, record.gate, "approve", by="auto-approver")))

    run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
    done = await outcome(run, through_gates=True)

    assert done.status == "completed"
    assert len(SENT) == 1


async def test_pending_filters_by_assignee_pipeline_and_age(system: roost.ActorSystem) -> None:
    await outcome(await system.pipelines.start(support(), "angry one", run_id="run-1"))
    billing = support("billing", assignees=["billing"])
    await outcome(await system.pipelines.start(billing, "angry two", run_id="run-2"))

    assert [g.run_id for g in await system.gates.pending()] == ["run-1", "run-2"]
    assert [g.run_id for g in await system.gates.pending(assignee="billing")] == ["run-2"]
    assert [g.run_id for g in await system.gates.pending(pipeline="billing")] == ["run-2"]
    assert await system.gates.pending(older_than=3600) == []


@pytest.mark.parametrize(("filters", "message"), [
    ({"older_than": "x"}, "gates.pending: older_than must be a number of seconds >= 0, got 'x'"),
    ({"older_than": -1.0}, "gates.pending: older_than must be a number of seconds >= 0, got -1.0"),
    ({"assignee": ["billing"]}, "gates.pending: assignee must be a name (a str) or None, "
                                "got ['billing']"),
    ({"pipeline": 5}, "gates.pending: pipeline must be a name (a str) or None, got 5"),
])
async def test_pending_refuses_a_bad_filter_naming_it_and_its_value(
        system: roost.ActorSystem, filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        await system.gates.pending(**filters)


# --- what a parked run holds ------------------------------------------------------------


class Made(msgspec.Struct, weakref=True):
    text: str


MADE: list[weakref.ref[Made]] = []


class Maker(roost.Actor):
    async def receive(self, message: RunStep) -> Made:
        made = Made("x" * 1024)
        MADE.append(weakref.ref(made))
        return made


async def test_a_parked_run_keeps_nothing_in_memory(system: roost.ActorSystem) -> None:
    MADE.clear()
    pipeline = Pipeline("made", [Step("make", Maker, output=Made),
                                 Step("use", Seer, after="make", gate=Gate())])
    for i in range(20):
        run = await system.pipelines.start(pipeline, run_id=f"run-{i}")
        assert (await outcome(run)).status == "waiting"
        await no_actor_of(system, f"run-{i}")
    del run

    with anyio.fail_after(2):  # its results are in the store only, once its actor is gone
        while any(made() is not None for made in MADE):
            await anyio.sleep(0.01)
            gc.collect()
    assert system.pipelines.statistics()["active"] == 0


class Stuck(roost.Actor):
    """Its start says it began, then waits until it is let go (and its supervisor with it)."""

    def __init__(self, began: anyio.Event, let_go: anyio.Event) -> None:
        self.began, self.let_go = began, let_go

    async def on_start(self) -> None:
        self.began.set()
        await self.let_go.wait()


async def test_a_parked_runs_actor_stops_without_waiting_for_its_busy_supervisor(
        system: roost.ActorSystem) -> None:
    gated = Pipeline("gated", [Step("look", Seer, gate=Gate())])
    await outcome(await system.pipelines.start(gated, run_id="run-0"))
    runs = system.lookup("/pipelines/runs")
    began, let_go = anyio.Event(), anyio.Event()
    stuck = roost.StartChild(roost.ChildSpec(factory=Stuck, name="stuck", args=(began, let_go)))

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lambda: runs.ask(stuck))
        await began.wait()  # `/pipelines/runs` handles no system message until let go
        run = await system.pipelines.start(gated, run_id="run-1")
        assert (await outcome(run)).status == "waiting"
        await no_actor_of(system, "run-1")
        let_go.set()


# --- traces -----------------------------------------------------------------------------


async def test_a_decided_gate_is_a_gate_span_in_the_runs_trace(tmp_path: Path) -> None:
    spans: list[Any] = []
    async with roost.ActorSystem(store=tmp_path / "store", tracing=True) as system:
        system.tools.register(send_email)
        system.tracer.add_sink(spans.append)
        run = await system.pipelines.start(support(), "angry customer", run_id="run-1")
        await outcome(run)
        await system.gates.decide("run-1", "send", "edit", by="ana", comment="softer",
                                  input={"to": "a@example.org", "body": "hi"})
        await outcome(run, through_gates=True)

    [gate] = [span for span in spans if span.kind == "gate"]
    runs = [span for span in spans if span.kind == "run"]
    assert gate.parent_span_id == runs[-1].span_id
    assert len({span.trace_id for span in spans}) == 1  # the resumed run continues the trace
    assert (gate.name, gate.attributes["decision"], gate.attributes["decided_by"],
            gate.attributes["comment"]) == ("gate send", "edit", "ana", "softer")
    assert [event.name for event in gate.events] == ["opened", "decided"]
    assert [e.name for e in runs[0].events if e.name == "gate_opened"] == ["gate_opened"]


async def test_a_corrupt_gate_record_is_refused_naming_its_key(system: roost.ActorSystem) -> None:
    await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))
    await system.store.commit([roost.storage.Put("gates", b"run-1\x00send", b"\x93garbage")])

    with pytest.raises(roost.errors.RecordCorrupt, match="send"):
        await system.gates.get("run-1", "send")
    with pytest.raises(roost.errors.RecordCorrupt):
        await system.gates.decide("run-1", "send", "approve", by="ana")


async def test_pending_lists_the_readable_gates_and_names_each_damaged_record(
        system: roost.ActorSystem) -> None:
    await outcome(await system.pipelines.start(support(), "angry one", run_id="run-1"))
    await outcome(await system.pipelines.start(support(), "angry two", run_id="run-2"))
    await system.store.commit([roost.storage.Put("gates", b"run-1\x00send", b"\x93garbage")])

    damaged: list[roost.errors.RecordCorrupt] = []
    with capture_logs() as logs:
        listed = await system.gates.pending(damaged=damaged)
        without = await system.gates.pending()  # the caller need not collect them

    assert [g.run_id for g in listed] == [g.run_id for g in without] == ["run-2"]
    assert [error.key for error in damaged] == [b"run-1\x00send"]
    unreadable = [log for log in logs if log["event"] == "gate_unreadable"]
    assert len(unreadable) == 2  # once per listing
    assert (unreadable[0]["log_level"], unreadable[0]["run_id"], unreadable[0]["gate"]) == (
        "error", "run-1", "send")
    assert f"roost store check {system.store.path}" in unreadable[0]["what_to_do"]


# --- who decides, and why -----------------------------------------------------------------


@pytest.mark.parametrize(("by", "problem"), [
    ("ana\n2030-01-01 [info] gate_decided by=admin", "holds '\\n' at position 3"),
    ("ana\x1b[2J", "holds '\\x1b' at position 3"),
    ("ana\u202e", "holds '\\u202e' at position 3"),  # a bidi override: reorders the line
    ("a" * 201, "by= must be a name of at most 200 characters, got 201"),
])
async def test_a_by_that_is_not_a_printable_name_is_refused_naming_the_problem(
        system: roost.ActorSystem, by: str, problem: str) -> None:
    await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))

    with pytest.raises(GateDecisionInvalid, match=re.escape(problem)):
        await system.gates.decide("run-1", "send", "approve", by=by)

    assert [g.gate for g in await system.gates.pending()] == ["send"]


async def test_a_long_printable_name_decides_and_is_logged_as_stored(
        system: roost.ActorSystem) -> None:
    await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))
    name = "Zoë Ångström " + "x" * 187  # 200 characters

    with capture_logs() as logs:
        record = await system.gates.decide("run-1", "send", "approve", by=f"{name} ")

    assert record.by == name
    [decided] = [log for log in logs if log["event"] == "gate_decided"]
    assert decided["by"] == name


@pytest.mark.parametrize("comment", ["softer\x1b[2Jplease", "softer\rplease", "softer\x85",
                                     "softer\u2028please", "softer\u202eesaelp"])
async def test_a_comment_with_control_characters_is_refused(
        system: roost.ActorSystem, comment: str) -> None:
    await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))

    with pytest.raises(GateDecisionInvalid, match=re.escape(
            f"comment= holds the control character {comment[6]!r} at position 6; only "
            "newlines and tabs may break its text")) as caught:
        await system.gates.decide("run-1", "send", "approve", by="ana", comment=comment)

    assert comment not in str(caught.value)  # the message does not carry it raw either
    assert [g.gate for g in await system.gates.pending()] == ["send"]


async def test_a_comment_in_lines_is_kept_and_stays_out_of_the_logs(
        system: roost.ActorSystem) -> None:
    await outcome(await system.pipelines.start(support(), "angry customer", run_id="run-1"))
    comment = "softer, please:\n\t- no blame"

    with capture_logs() as logs:
        record = await system.gates.decide("run-1", "send", "approve", by="ana",
                                           comment=comment)

    assert record.comment == comment
    assert not [log for log in logs if any(comment in str(value) for value in log.values())]


# --- the schema check where the pipeline is not loaded ---------------------------------------


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Card(msgspec.Struct, tag=True):
    number: str


class Wire(msgspec.Struct, tag=True):
    iban: str
    amount: int = 0


class Strict(msgspec.Struct, forbid_unknown_fields=True):
    a: int


class Row(msgspec.Struct, array_like=True):
    a: int
    b: str = "x"


class Point(TypedDict):
    x: int


class Pair(NamedTuple):
    p: int
    q: str = "x"


class Booking(msgspec.Struct):
    when: datetime.datetime
    day: datetime.date
    seats: dict[int, str] = {}
    pay: Card | Wire | None = None


#: Types a gate's `input_type` may be, and plain JSON values to decide with: for each pair
#: the stored schema's check must agree with decoding the value as the type.
CHECKED_TYPES: list[Any] = [
    int, float, str, bool, None, bytes, datetime.datetime, datetime.date, datetime.time,
    datetime.timedelta, uuid.UUID, decimal.Decimal,
    Annotated[datetime.datetime, msgspec.Meta(tz=True)],
    Annotated[datetime.datetime, msgspec.Meta(tz=False)],
    Annotated[datetime.time, msgspec.Meta(tz=True)],
    Annotated[datetime.time, msgspec.Meta(tz=False)],
    list[int], set[str], frozenset[int], tuple[int, str], tuple[int, ...], dict[str, int],
    dict[int, str], dict[float, int], dict[uuid.UUID, int], dict[datetime.date, int],
    dict[Level, int], dict[Literal[1, 2], int], dict[Literal["a", "b"], int], dict[Color, int],
    dict[Annotated[int, msgspec.Meta(ge=0)], int],
    dict[Annotated[str, msgspec.Meta(min_length=2)], int],
    Literal["a", 1], Literal[1, 2], Color, Level, Card, Wire, Card | Wire, Card | None,
    Card | int, Card | Wire | None, Card | Wire | int, Strict, Row, Point, Pair, Booking,
    int | None, int | str, int | float, float | None, list[int] | None, list[Card],
    dict[str, Card | Wire], Annotated[int, msgspec.Meta(ge=1, le=10, multiple_of=2)],
    Annotated[float, msgspec.Meta(gt=0.5, lt=2)],
    Annotated[str, msgspec.Meta(min_length=2, max_length=3, pattern="^a")],
    Annotated[list[int], msgspec.Meta(min_length=1, max_length=2)],
    Annotated[dict[str, int], msgspec.Meta(min_length=1)],
    Annotated[bytes, msgspec.Meta(max_length=3)], Any,
]
CHECKED_VALUES: list[Any] = [
    None, True, False, 0, 1, -1, 2, 7, 10**20, 0.5, 1.5, 7.0, -0.0, "", "a", "ab", "abc", "x",
    "red", "2020-01-02", "2020-01-02T03:04:05", "2020-01-02T03:04:05Z", "not a date",
    "2020-01-02 03:04:05+01:00", "03:04:05", "03:04:05Z", "P1D", "1 day",
    "12345678-1234-5678-1234-567812345678", "1234", "AAAA", "AA==", "!!!", "1.5", "01",
    [], [1], [1, 2], [1, "x"], ["x"], ["a", "a"], [1, 2, 3], [1, "y", 3],
    [{"type": "Card", "number": "4"}], [{"number": "4"}],
    {}, {"a": 1}, {"1": "x"}, {"x": "x"}, {"-0": "a"}, {"01": "a"}, {"1.5": 1},
    {"2020-01-02": 1}, {"12345678-1234-5678-1234-567812345678": 1}, {"red": 1}, {"ab": 1},
    {"2": 1}, {"3": 1}, {"number": "4111"}, {"type": "Card", "number": "4111"},
    {"type": "Wire", "iban": "DE1"}, {"type": "Wire", "iban": 1}, {"type": "Nope", "number": "1"},
    {"type": "Card", "number": 5}, {"a": 1, "b": 2}, {"x": 1}, {"x": 1.0}, {"x": 1, "y": 2},
    {"x": {"type": "Card", "number": "1"}}, {"x": {"number": "1"}},
    {"when": "2020-01-02T03:04:05", "day": "2020-01-02"},
    {"when": "nope", "day": "2020-01-02"},
    {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "seats": {"1": "a"}},
    {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "seats": {"one": "a"}},
    {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "pay": {"type": "Card", "number": 1}},
    {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "pay": {"number": "1"}},
]


def _decodes(kind: Any, value: Any) -> bool:
    try:
        msgspec.json.decode(msgspec.json.encode(value), type=kind)
    except msgspec.ValidationError:
        return False
    return True


@pytest.mark.parametrize("kind", CHECKED_TYPES, ids=str)
def test_the_stored_schema_refuses_exactly_what_decoding_as_the_type_refuses(kind: Any) -> None:
    schema = msgspec.json.decode(msgspec.json.encode(_schema_check.schema_of(kind)))  # as stored

    disagree = [(value, problems) for value in CHECKED_VALUES
                if _decodes(kind, value) == bool(problems := _schema_check.problems(schema, value))]

    assert disagree == []


@pytest.mark.parametrize(("kind", "value", "problem"), [
    (Booking, {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "pay": {"type": "Card",
                                                                         "number": 1}},
     "$.pay.number: expected string, got integer 1"),
    (Booking, {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "pay": {"number": "1"}},
     "$.pay.type: is required, naming the form: one of 'Card', 'Wire'"),
    (Booking, {"when": "noon", "day": "2020-01-02"},
     "$.when: must be an RFC 3339 date and time, got 'noon'"),
    (Booking, {"when": "2020-01-02T03:04:05", "day": "2020-01-02", "seats": {"one": "a"}},
     "$.seats key 'one': must be an integer"),
    (Strict | None, {"a": 7.0}, "$.a: expected integer, got number 7.0 (write a whole number "
                                "without a decimal point)"),
    (int | None, "7", "$: expected integer or null, got string '7'"),
    (list[uuid.UUID] | None, ["nope"], "$[0]: must be a UUID, got 'nope'"),
    (dict[str, bytes], {"photo": "!!!"}, "$.photo: must be base64-encoded bytes, got '!!!'"),
])
def test_the_stored_schema_names_the_field_that_does_not_fit(
        kind: Any, value: Any, problem: str) -> None:
    assert _schema_check.problems(_schema_check.schema_of(kind), value) == [problem]
