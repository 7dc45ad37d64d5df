"""Outside scenarios of human escalation gates, through the public API only (`roost`,
README.md): a gate parks a run, people decide (or a deadline does), and the run goes on.

Each system is a real one on a real LMDB store in a temp folder; "a new process" is a new
system on the same store.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

import roost
from roost import Escalate, Gate, NeedsReview, Pipeline, RunStep, Step

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

REPO = Path(__file__).resolve().parents[2]
SECRET = "whsec-scenario-1"


class Refund(msgspec.Struct):
    amount: int
    note: str


class Echo(roost.Actor):
    """Returns what it was asked with: the input and the decisions so far."""

    async def receive(self, message: RunStep) -> dict[str, Any]:
        return {"input": msgspec.to_builtins(message.input),
                "decisions": {name: msgspec.to_builtins(d)
                              for name, d in message.decisions.items()}}


class Scorer(roost.Actor):
    async def receive(self, message: RunStep) -> int:
        return int(message.input["score"])


class Checker(roost.Actor):
    """Asks for a review of a low score."""

    async def receive(self, message: RunStep) -> Any:
        score = message.results["score"]
        if score < 50:
            return NeedsReview("score too low", data=Refund(amount=score, note="low"))
        return Refund(amount=score, note="fine")


def refunds(name: str = "refunds", **gate: Any) -> Pipeline:
    """score -> pay (gated when the score is low) -> notify."""
    return Pipeline(name, [
        Step("score", Scorer, output=int),
        Step("pay", Echo, after="score", gate=Gate(**{
            "when": lambda r: r["score"] < 50, "reason": "low score",
            "assignees": ["finance"], "input_type": Refund, **gate})),
        Step("notify", Echo, after="pay"),
    ], input_type=dict[str, int])


def reviewed(**review: Any) -> Pipeline:
    return Pipeline("reviewed", [
        Step("score", Scorer, output=int),
        Step("check", Checker, after="score", output=Refund,
             review=Gate(**review) if review else None),
        Step("after", Echo, after="check"),
    ], input_type=dict[str, int])


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store") as system:
        yield system


async def result(run: roost.RunHandle, *, through_gates: bool = False) -> roost.RunOutcome:
    with anyio.fail_after(10):
        return await run.result(through_gates=through_gates)


async def until(read: Callable[[], Awaitable[Any]], holds: Callable[[Any], bool]) -> None:
    """Poll `read()` until `holds` its value (failing after 5 s)."""
    with anyio.fail_after(5):
        while not holds(await read()):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def parked(system: roost.ActorSystem, pipeline: Pipeline, score: int = 10,
                 run_id: str = "run-1") -> roost.RunHandle:
    run = await system.pipelines.start(pipeline, {"score": score}, run_id=run_id)
    assert (await result(run)).status == "waiting"
    return run


# --- opening ----------------------------------------------------------------------------


async def test_a_gate_opens_before_its_step_only_when_its_condition_holds(
        system: roost.ActorSystem) -> None:
    high = await result(await system.pipelines.start(refunds(), {"score": 90}, run_id="high"))
    low = await result(await system.pipelines.start(refunds(), {"score": 10}, run_id="low"))

    assert (high.status, set(high.results)) == ("completed", {"score", "pay", "notify"})
    assert (low.status, low.waiting_at, set(low.results)) == ("waiting", ["pay"], {"score"})
    assert "low score" in (low.error or "")
    [gate] = await system.gates.pending()
    assert (gate.run_id, gate.gate, gate.step, gate.gate_kind, gate.assignees) == (
        "low", "pay", "pay", "step", ["finance"])


async def test_needs_review_opens_a_review_gate_after_the_step(system: roost.ActorSystem) -> None:
    run = await parked(system, reviewed(assignees=["qa"]))
    out = await result(run)

    assert out.waiting_at == ["check/review"]
    assert set(out.results) == {"score"}  # check's result waits for the review
    gate = await system.gates.get("run-1", "check/review")
    assert (gate.gate_kind, gate.step, gate.reason, gate.assignees) == (
        "review", "check", "score too low", ["qa"])

    await system.gates.decide("run-1", "check/review", "approve", by="ana")
    done = await result(run, through_gates=True)
    assert done.results["check"] == Refund(amount=10, note="low")
    assert done.results["after"]["decisions"]["check/review"]["decision"] == "approve"


async def test_an_edit_at_a_review_gate_must_fit_the_steps_output_naming_the_field(
        system: roost.ActorSystem) -> None:
    run = await parked(system, reviewed())

    with pytest.raises(roost.GateDecisionInvalid, match=r"\$\.amount"):
        await system.gates.decide("run-1", "check/review", "edit", by="ana",
                                  input={"amount": "lots", "note": "x"})
    await system.gates.decide("run-1", "check/review", "edit", by="ana",
                              input={"amount": 5, "note": "edited"})
    done = await result(run, through_gates=True)
    assert done.results["check"] == Refund(amount=5, note="edited")


# --- deciding ---------------------------------------------------------------------------


async def test_approve_runs_the_step_and_later_steps_see_the_decision(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())

    decided = await system.gates.decide("run-1", "pay", "approve", by="ana", comment="ok")
    done = await result(run, through_gates=True)

    assert done.status == "completed"
    assert (decided.status, decided.decision, decided.by, decided.comment) == (
        "decided", "approve", "ana", "ok")
    seen = done.results["notify"]["decisions"]["pay"]
    assert (seen["decision"], seen["by"], seen["comment"], seen["input"]) == (
        "approve", "ana", "ok", None)
    assert seen["at"] == decided.decided_at


async def test_an_edit_replaces_the_steps_input_typed_as_the_gates_input_type(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())

    await system.gates.decide("run-1", "pay", "edit", by="ana",
                              input={"amount": 7, "note": "partial"})
    done = await result(run, through_gates=True)

    assert done.results["pay"]["input"] == {"amount": 7, "note": "partial"}
    assert done.results["notify"]["input"] == {"score": 10}
    assert done.results["notify"]["decisions"]["pay"]["input"] == {"amount": 7, "note": "partial"}


class TypedSeer(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        return type(message.decisions["pay"].input).__name__


async def test_a_later_step_gets_an_edits_input_as_the_gates_type(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("typed", [
        Step("score", Scorer, output=int),
        Step("pay", Echo, after="score", gate=Gate(input_type=Refund)),
        Step("look", TypedSeer, after="pay"),
    ], input_type=dict[str, int])
    run = await parked(system, pipeline)
    await system.gates.decide("run-1", "pay", "edit", by="ana", input=Refund(3, "x"))

    assert (await result(run, through_gates=True)).results["look"] == "Refund"


@pytest.mark.parametrize(("edit", "named"), [
    ({"amount": "7", "note": "x"}, r"\$\.amount"),
    ({"amount": 7}, "note"),
    ({"amount": 7, "note": 3}, r"\$\.note"),
    ([7, "x"], "object"),
])
async def test_an_edit_that_does_not_fit_the_input_type_is_refused_naming_the_field(
        system: roost.ActorSystem, edit: Any, named: str) -> None:
    await parked(system, refunds())

    with pytest.raises(roost.GateDecisionInvalid, match="does not fit Refund") as caught:
        await system.gates.decide("run-1", "pay", "edit", by="ana", input=edit)

    assert caught.match(named)
    assert "run-1" in str(caught.value) and "pay" in str(caught.value)
    assert [g.gate for g in await system.gates.pending()] == ["pay"]


async def test_reject_ends_the_run_rejected_without_its_step(system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())

    await system.gates.decide("run-1", "pay", "reject", by="ana", comment="fraud")
    ended = await result(run, through_gates=True)

    assert ended.status == "rejected"
    assert set(ended.results) == {"score"}
    assert await run.status() == "rejected"


async def test_reject_with_on_reject_runs_that_step_instead(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("refunds", [
        Step("score", Scorer, output=int),
        Step("pay", Echo, after="score", gate=Gate(on_reject="apologise")),
        Step("notify", Echo, after="pay"),
        Step("apologise", Echo, after="score"),
    ], input_type=dict[str, int])
    run = await parked(system, pipeline)

    await system.gates.decide("run-1", "pay", "reject", by="ana")
    done = await result(run, through_gates=True)

    assert done.status == "completed"
    assert set(done.results) == {"score", "apologise"}
    assert done.results["apologise"]["decisions"]["pay"]["decision"] == "reject"


async def test_the_same_decision_again_is_a_no_op_and_another_is_refused(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())
    first = await system.gates.decide("run-1", "pay", "edit", by="ana",
                                      input={"amount": 1, "note": "a"})

    again = await system.gates.decide("run-1", "pay", "edit", by="bob",
                                      input={"note": "a", "amount": 1})
    with pytest.raises(roost.GateAlreadyDecided, match="'edit' by 'ana'"):
        await system.gates.decide("run-1", "pay", "approve", by="bob")
    with pytest.raises(roost.GateAlreadyDecided):
        await system.gates.decide("run-1", "pay", "edit", by="ana",
                                  input={"amount": 2, "note": "a"})
    done = await result(run, through_gates=True)

    assert again == first
    assert done.status == "completed"
    assert (await system.gates.decide("run-1", "pay", "edit", by="ana",
                                      input={"amount": 1, "note": "a"})) == first


async def test_bad_decisions_each_get_their_own_error(system: roost.ActorSystem) -> None:
    await parked(system, refunds())
    finished = await result(await system.pipelines.start(refunds(), {"score": 90},
                                                         run_id="run-2"))
    assert finished.status == "completed"

    with pytest.raises(roost.RunNotFound, match="nope"):
        await system.gates.decide("nope", "pay", "approve", by="ana")
    with pytest.raises(roost.GateNotFound, match="'score'"):
        await system.gates.decide("run-1", "score", "approve", by="ana")
    with pytest.raises(roost.GateNotFound, match="run-2"):  # it never waited there
        await system.gates.decide("run-2", "pay", "approve", by="ana")
    for by in ("", "   ", None, 5):
        with pytest.raises(roost.GateDecisionInvalid, match="by="):
            await system.gates.decide("run-1", "pay", "approve", by=by)  # type: ignore[arg-type]
    for decision in ("maybe", "APPROVE", "done", "", None):
        with pytest.raises(roost.GateDecisionInvalid, match="is not one of approve, reject, edit"):
            await system.gates.decide("run-1", "pay", decision, by="ana")  # type: ignore[arg-type]
    with pytest.raises(roost.GateDecisionInvalid, match="comment="):
        await system.gates.decide("run-1", "pay", "approve", by="ana",
                                  comment=3)  # type: ignore[arg-type]
    assert [g.gate for g in await system.gates.pending()] == ["pay"]
    assert issubclass(roost.GateDecisionInvalid, roost.GateError)


async def test_deciding_with_bad_names_raises_a_specific_error(system: roost.ActorSystem) -> None:
    await parked(system, refunds())

    for run_id, gate in ((5, "pay"), ("run-1", 5), ("", "pay"), ("run-1", "")):
        with pytest.raises(roost.RoostError) as caught:
            await system.gates.decide(run_id, gate, "approve", by="ana")  # type: ignore[arg-type]
        assert isinstance(caught.value, roost.ConfigurationError | roost.RunNotFound
                          | roost.GateNotFound | roost.GateDecisionInvalid), caught.value
    for run_id, gate in ((5, "pay"), ("run-1", 5)):
        with pytest.raises(roost.RoostError):
            await system.gates.get(run_id, gate)  # type: ignore[arg-type]


async def test_get_shows_the_record_and_its_audit_trail(system: roost.ActorSystem) -> None:
    await parked(system, refunds())
    opened = await system.gates.get("run-1", "pay")
    await system.gates.decide("run-1", "pay", "approve", by="ana")
    decided = await system.gates.get("run-1", "pay")

    assert (opened.status, opened.decision, [e.what for e in opened.history]) == (
        "pending", None, ["opened"])
    assert opened.input_type == "Refund"
    assert msgspec.json.decode(opened.shown) == {"score": 10}
    assert (decided.status, decided.decision, decided.by) == ("decided", "approve", "ana")
    assert [e.what for e in decided.history] == ["opened", "decided"]
    with pytest.raises(roost.GateNotFound):
        await system.gates.get("run-1", "nope")
    with pytest.raises((roost.GateNotFound, roost.RunNotFound)):
        await system.gates.get("nope", "pay")


async def test_pending_filters_and_orders_oldest_first(system: roost.ActorSystem) -> None:
    teams = [refunds(f"refunds-{team}", assignees=["finance", f"team-{team}"]) for team in (0, 1)]
    for i in range(5):
        await parked(system, teams[i % 2], run_id=f"r{i}")
    await parked(system, refunds("other", assignees=["ops"]), run_id="o1")

    everything = await system.gates.pending()
    assert [g.run_id for g in everything] == ["r0", "r1", "r2", "r3", "r4", "o1"]
    assert [g.opened_at for g in everything] == sorted(g.opened_at for g in everything)
    assert [g.run_id for g in await system.gates.pending(assignee="team-1")] == ["r1", "r3"]
    assert [g.run_id for g in await system.gates.pending(pipeline="other")] == ["o1"]
    assert [g.run_id for g in await system.gates.pending(assignee="finance",
                                                         pipeline="other")] == []
    assert len(await system.gates.pending(older_than=0)) == 6
    assert await system.gates.pending(older_than=3600) == []
    assert await system.gates.pending(assignee="nobody") == []
    await system.gates.decide("r2", "pay", "approve", by="ana")
    assert "r2" not in [g.run_id for g in await system.gates.pending()]


# --- concurrency ------------------------------------------------------------------------


async def test_two_different_decisions_at_once_exactly_one_wins(
        system: roost.ActorSystem) -> None:
    for attempt in range(10):
        run = await parked(system, refunds(), run_id=f"run-{attempt}")
        outcomes: dict[str, Any] = {}

        async def decide(decision: str, by: str, run_id: str = run.run_id,
                         outcomes: dict[str, Any] = outcomes) -> None:
            try:
                outcomes[by] = await system.gates.decide(run_id, "pay", decision, by=by)
            except roost.GateAlreadyDecided as error:
                outcomes[by] = error

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(decide, "approve", "ana")
            tasks.start_soon(decide, "reject", "bob")

        won = [by for by, got in outcomes.items() if not isinstance(got, Exception)]
        assert len(won) == 1, outcomes
        ended = await result(run, through_gates=True)
        assert ended.status == ("completed" if won == ["ana"] else "rejected")
        assert (await system.gates.get(run.run_id, "pay")).by == won[0]


async def test_the_same_decision_at_once_from_two_tasks_runs_the_step_once(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())

    first, second = await asyncio.gather(
        system.gates.decide("run-1", "pay", "approve", by="ana"),
        system.gates.decide("run-1", "pay", "approve", by="bob"))
    done = await result(run, through_gates=True)

    assert done.status == "completed"
    assert first == second
    gate = await system.gates.get("run-1", "pay")
    assert [e.what for e in gate.history] == ["opened", "decided"]


async def test_many_gates_parked_at_once_are_all_listed_and_decided(
        system: roost.ActorSystem) -> None:
    runs = [await system.pipelines.start(refunds(), {"score": 1}, run_id=f"run-{i:03}")
            for i in range(150)]
    for run in runs:
        assert (await result(run)).status == "waiting"

    pending = await system.gates.pending()
    assert [g.run_id for g in pending] == [f"run-{i:03}" for i in range(150)]
    async with anyio.create_task_group() as tasks:
        for i, run in enumerate(runs):
            tasks.start_soon(lambda run_id=run.run_id, i=i: system.gates.decide(
                run_id, "pay", "approve" if i % 2 else "reject", by="ana"))
    statuses = [(await result(run, through_gates=True)).status for run in runs]

    assert statuses == ["rejected" if i % 2 == 0 else "completed" for i in range(150)]
    assert await system.gates.pending() == []


# --- cancelling -------------------------------------------------------------------------


async def test_cancelling_a_waiting_run_closes_its_gate_and_ends_a_wait_through_gates(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds())
    ended: list[BaseException] = []

    async def wait() -> None:
        try:
            await result(run, through_gates=True)
        except roost.RunCancelled as error:
            ended.append(error)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(wait)
        await anyio.sleep(0.05)
        await run.cancel()

    assert len(ended) == 1
    assert await run.status() == "cancelled"
    with pytest.raises(roost.GateClosed):
        await system.gates.decide("run-1", "pay", "approve", by="ana")
    assert (await system.gates.get("run-1", "pay")).status == "closed"
    assert await system.gates.pending() == []


# --- through gates ------------------------------------------------------------------------


async def test_result_through_gates_waits_across_two_gates(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("two", [Step("a", Echo, gate=Gate()), Step("b", Echo, after="a",
                                                                    gate=Gate())])
    run = await system.pipelines.start(pipeline, "x", run_id="run-1")
    waiting: list[roost.RunOutcome] = []

    async with anyio.create_task_group() as tasks:
        async def through() -> None:
            waiting.append(await result(run, through_gates=True))

        tasks.start_soon(through)
        for gate in ("a", "b"):
            await until(lambda: system.gates.pending(), lambda found, gate=gate: [
                g.gate for g in found] == [gate])
            assert waiting == []
            await system.gates.decide("run-1", gate, "approve", by="ana")

    assert waiting[0].status == "completed"


# --- timeouts -----------------------------------------------------------------------------


async def test_a_timeout_approves_by_roost_timeout(system: roost.ActorSystem) -> None:
    run = await parked(system, refunds(timeout=0.1, on_timeout="approve"))

    done = await result(run, through_gates=True)

    assert done.status == "completed"
    seen = done.results["notify"]["decisions"]["pay"]
    assert (seen["decision"], seen["by"]) == ("approve", "roost:timeout")
    gate = await system.gates.get("run-1", "pay")
    assert (gate.status, [e.what for e in gate.history]) == ("decided", ["opened", "timed_out"])


async def test_a_timeout_rejects_by_default(system: roost.ActorSystem) -> None:
    run = await parked(system, refunds(timeout=0.1))

    assert (await result(run, through_gates=True)).status == "rejected"
    assert (await system.gates.get("run-1", "pay")).by == "roost:timeout"


async def test_a_review_gate_times_out_too(system: roost.ActorSystem) -> None:
    run = await parked(system, reviewed(timeout=0.1, on_timeout="approve"))

    done = await result(run, through_gates=True)

    assert done.results["check"] == Refund(amount=10, note="low")


async def test_an_escalate_chain_hands_the_gate_on_then_applies_its_last_action(
        system: roost.ActorSystem) -> None:
    opened: list[tuple[str, list[str]]] = []
    system.gates.on_open(lambda record: opened.append((record.gate, list(record.assignees))))
    chain = Escalate(to=["leads"], timeout=0.1,
                     on_timeout=Escalate(to=["cfo"], timeout=0.1, on_timeout="approve"))
    run = await parked(system, refunds(timeout=0.1, on_timeout=chain))

    done = await result(run, through_gates=True)

    assert done.status == "completed"
    assert opened == [("pay", ["finance"]), ("pay", ["leads"]), ("pay", ["cfo"])]
    gate = await system.gates.get("run-1", "pay")
    assert [e.what for e in gate.history] == ["opened", "escalated", "escalated", "timed_out"]
    assert (gate.assignees, gate.by, gate.decision) == (["cfo"], "roost:timeout", "approve")


async def test_an_escalated_gate_is_pending_for_its_new_assignees(
        system: roost.ActorSystem) -> None:
    await parked(system, refunds(timeout=0.1, on_timeout=Escalate(to=["leads"], timeout=600)))

    await until(lambda: system.gates.pending(assignee="leads"), bool)
    assert await system.gates.pending(assignee="finance") == []
    [gate] = await system.gates.pending(assignee="leads")
    assert gate.deadline is not None and gate.deadline > gate.opened_at + 600


async def test_many_deadlines_passing_at_once_all_apply(system: roost.ActorSystem) -> None:
    pipeline = refunds(timeout=0.2, on_timeout="approve")
    runs = [await parked(system, pipeline, run_id=f"run-{i:02}") for i in range(40)]

    statuses = [(await result(run, through_gates=True)).status for run in runs]

    assert statuses == ["completed"] * 40
    assert await system.gates.pending() == []


async def test_a_decision_before_the_deadline_stands_and_the_timeout_never_applies(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds(timeout=0.2, on_timeout="reject"))
    await system.gates.decide("run-1", "pay", "approve", by="ana")

    done = await result(run, through_gates=True)
    await anyio.sleep(0.3)

    assert done.status == "completed"
    gate = await system.gates.get("run-1", "pay")
    assert (gate.by, [e.what for e in gate.history]) == ("ana", ["opened", "decided"])


async def test_a_person_deciding_after_the_timeout_gets_gate_already_decided(
        system: roost.ActorSystem) -> None:
    run = await parked(system, refunds(timeout=0.1, on_timeout="reject"))
    assert (await result(run, through_gates=True)).status == "rejected"

    with pytest.raises(roost.GateAlreadyDecided, match="roost:timeout"):
        await system.gates.decide("run-1", "pay", "approve", by="ana")


async def test_deadlines_that_passed_while_no_process_ran_apply_at_the_next_start(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline = refunds(timeout=0.1, on_timeout="approve")
    async with roost.ActorSystem(store=store) as system:
        for i in range(3):
            await parked(system, pipeline, run_id=f"run-{i}")
    await anyio.sleep(0.3)

    async with roost.ActorSystem(store=store) as system:
        handles = await system.pipelines.register(pipeline, resume=True)
        with anyio.fail_after(10):
            outcomes = [await handle.result(through_gates=True) for handle in handles]
        for run_id in ("run-0", "run-1", "run-2"):
            outcomes.append(await system.pipelines.outcome(run_id, through_gates=True))

    assert [o.status for o in outcomes[-3:]] == ["completed"] * 3
    assert all(o.results["notify"]["decisions"]["pay"]["by"] == "roost:timeout"
               for o in outcomes[-3:])


async def test_an_escalation_due_while_no_process_ran_escalates_at_the_next_start(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline = refunds(timeout=0.1, on_timeout=Escalate(to=["leads"], timeout=0.2,
                                                        on_timeout="reject"))
    async with roost.ActorSystem(store=store) as system:
        await parked(system, pipeline)
    await anyio.sleep(0.2)

    async with roost.ActorSystem(store=store) as system:
        opened: list[list[str]] = []
        system.gates.on_open(lambda record: opened.append(list(record.assignees)))
        await system.pipelines.register(pipeline, resume=True)
        ended = await system.pipelines.outcome("run-1", through_gates=True)

    assert ended.status == "rejected"
    assert opened == [["leads"]]


# --- on_open callbacks --------------------------------------------------------------------


async def test_on_open_callbacks_that_raise_do_not_break_the_run(
        system: roost.ActorSystem) -> None:
    called: list[str] = []

    def broken(record: Any) -> None:
        called.append("sync")
        raise RuntimeError("callback broke")

    async def broken_later(record: Any) -> None:
        called.append("async")
        raise RuntimeError("callback broke later")

    system.gates.on_open(broken)
    system.gates.on_open(broken_later)
    run = await parked(system, refunds())
    await system.gates.decide("run-1", "pay", "approve", by="ana")

    assert (await result(run, through_gates=True)).status == "completed"
    assert sorted(called) == ["async", "sync"]


async def test_a_slow_on_open_callback_does_not_hold_up_the_run_or_the_shutdown(
        tmp_path: Path) -> None:
    started = anyio.Event()

    async def slow(record: Any) -> None:
        started.set()
        await anyio.sleep(3600)

    with anyio.fail_after(10):
        async with roost.ActorSystem(store=tmp_path / "store") as system:
            system.gates.on_open(slow)
            run = await parked(system, refunds())
            await started.wait()
            await system.gates.decide("run-1", "pay", "approve", by="ana")
            assert (await result(run, through_gates=True)).status == "completed"


async def test_an_on_open_callback_that_approves_at_once_lets_the_run_through(
        system: roost.ActorSystem) -> None:
    async def approve(record: Any) -> None:
        await system.gates.decide(record.run_id, record.gate, "approve", by="bot")

    system.gates.on_open(approve)
    run = await system.pipelines.start(refunds(), {"score": 1}, run_id="run-1")

    assert (await result(run, through_gates=True)).status == "completed"


async def test_on_open_refuses_what_is_not_a_function(system: roost.ActorSystem) -> None:
    with pytest.raises(roost.ConfigurationError):
        system.gates.on_open("not a function")  # type: ignore[arg-type]


# --- a decision made with no process running ------------------------------------------------


def roost_command(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "roost.runtime.cli", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60, input=stdin)


async def test_an_edit_made_with_roost_decide_on_a_stopped_store_is_picked_up_by_resume(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline = refunds()
    async with roost.ActorSystem(store=store) as system:
        await parked(system, pipeline)

    refused = await anyio.to_thread.run_sync(lambda: roost_command(
        "decide", "run-1", "pay", "edit", "--by", "ana", "--store", str(store), "--input", "-",
        stdin='{"amount": "seven", "note": "x"}'))
    decided = await anyio.to_thread.run_sync(lambda: roost_command(
        "decide", "run-1", "pay", "edit", "--by", "ana", "--store", str(store), "--input", "-",
        "--comment", "partial", stdin='{"amount": 7, "note": "partial"}'))

    assert refused.returncode == 1 and "$.amount" in refused.stderr
    assert decided.returncode == 0, decided.stderr
    assert "queued" in decided.stdout
    async with roost.ActorSystem(store=store) as system:
        [handle] = await system.pipelines.register(pipeline, resume=True)
        done = await result(handle)

    assert done.status == "completed"
    assert done.results["pay"]["input"] == {"amount": 7, "note": "partial"}
    seen = done.results["notify"]["decisions"]["pay"]
    assert (seen["decision"], seen["by"], seen["comment"]) == ("edit", "ana", "partial")


class Card(msgspec.Struct, tag=True):
    number: str


class Wire(msgspec.Struct, tag=True):
    iban: str


class Booking(msgspec.Struct):
    when: datetime.datetime
    seats: dict[int, str]
    pay: Card | Wire
    card: Card | None = None


def bookings() -> Pipeline:
    return Pipeline("bookings", [
        Step("score", Scorer, output=int),
        Step("book", Echo, after="score", gate=Gate(reason="check it", input_type=Booking)),
    ], input_type=dict[str, int])


async def test_an_edit_the_run_could_not_decode_is_refused_where_its_pipeline_is_not_loaded(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    pipeline = refunds()
    async with roost.ActorSystem(store=store) as system:
        await parked(system, pipeline)

    async with roost.ActorSystem(store=store) as system:  # as `roost decide` on a stopped store
        with pytest.raises(roost.GateDecisionInvalid, match=r"\$\.amount: expected integer, "
                                                            r"got number 7\.0"):
            await system.gates.decide("run-1", "pay", "edit", by="ana",
                                      input={"amount": 7.0, "note": "x"})
        await system.gates.decide("run-1", "pay", "edit", by="ana",
                                  input={"amount": 7, "note": "x"})

    async with roost.ActorSystem(store=store) as system:
        [handle] = await system.pipelines.register(pipeline, resume=True)
        done = await result(handle)

    assert done.status == "completed"
    assert done.results["pay"]["input"] == {"amount": 7, "note": "x"}


@pytest.mark.parametrize(("edit", "problem"), [
    ({"when": "tomorrow"}, "$.when: must be an RFC 3339 date and time, got 'tomorrow'"),
    ({"seats": {"window": "ana"}}, "$.seats key 'window': must be an integer"),
    ({"pay": {"type": "Wire", "iban": 5}}, "$.pay.iban: expected string, got integer 5"),
    ({"pay": {"iban": "DE1"}}, "$.pay.type: is required, naming the form: one of 'Card', 'Wire'"),
])
async def test_a_typed_edit_made_where_the_pipeline_is_not_loaded_is_checked_as_the_run_decodes(
        tmp_path: Path, edit: dict[str, Any], problem: str) -> None:
    store = tmp_path / "store"
    fits = {"when": "2030-01-02T10:00:00", "seats": {"12": "ana"},
            "pay": {"type": "Card", "number": "4111"}, "card": {"number": "4242"}}
    async with roost.ActorSystem(store=store) as system:
        await parked(system, bookings())

    async with roost.ActorSystem(store=store) as system:
        with pytest.raises(roost.GateDecisionInvalid) as refused:
            await system.gates.decide("run-1", "book", "edit", by="ana", input=fits | edit)
        await system.gates.decide("run-1", "book", "edit", by="ana", input=fits)

    async with roost.ActorSystem(store=store) as system:
        [handle] = await system.pipelines.register(bookings(), resume=True)
        done = await result(handle)

    assert refused.value.problem == f"the input does not fit Booking: {problem}"
    assert done.status == "completed"
    assert done.results["book"]["input"]["card"] == {"type": "Card", "number": "4242"}


# --- webhooks -----------------------------------------------------------------------------


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 500 to its first `failures` requests."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def hook(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        status = 500 if len(self.requests) <= self.failures else 200
        return web.Response(status=status, text="ok" if status == 200 else "boom")


async def test_a_webhook_is_signed_retried_on_500_and_delivered_once(
        system: roost.ActorSystem) -> None:
    receiver = Receiver(failures=2)
    app = web.Application()
    app.router.add_post("/hook", receiver.hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        system.gates.add_webhook(f"http://{host}:{port}/hook", secret=SECRET,
                                 retry=roost.Retry(attempts=4, base_delay=0.01, max_delay=0.02))
        await parked(system, refunds())
        await until(lambda: system.gates.get("run-1", "pay"),
                    lambda gate: any(e.what == "notified" for e in gate.history))
        await anyio.sleep(0.2)
    finally:
        await runner.cleanup()

    assert len(receiver.requests) == 3
    keys = {headers["Idempotency-Key"] for headers, _ in receiver.requests}
    assert len(keys) == 1
    headers, body = receiver.requests[-1]
    roost.verify_signature(SECRET, headers["Roost-Signature"], body)
    stamp, signature = (part.split("=", 1)[1] for part in headers["Roost-Signature"].split(","))
    assert signature == hmac.new(SECRET.encode(), f"{stamp}.".encode() + body,
                                 hashlib.sha256).hexdigest()
    with pytest.raises(roost.SignatureInvalid):
        roost.verify_signature(SECRET, headers["Roost-Signature"], body + b" ")
    sent = msgspec.json.decode(body, type=roost.GateNotification)
    assert (sent.event, sent.run_id, sent.gate, sent.assignees, sent.input_type) == (
        "gate.opened", "run-1", "pay", ["finance"], "Refund")


# --- found by these scenarios -------------------------------------------------------------


async def test_a_gate_left_pending_when_its_run_ended_elsewhere_cannot_be_decided(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("parallel", [Step("a", Echo, gate=Gate()),
                                     Step("b", Echo, gate=Gate(timeout=0.2))])
    run = await system.pipelines.start(pipeline, "x", run_id="run-1")
    assert (await result(run)).waiting_at == ["a", "b"]
    await system.gates.decide("run-1", "a", "reject", by="ana")
    assert (await result(run, through_gates=True)).status == "rejected"

    with pytest.raises(roost.GateClosed, match="its run ended rejected"):
        await system.gates.decide("run-1", "b", "approve", by="bob")
    await anyio.sleep(0.4)  # past b's deadline: its timeout decides nothing either

    gate = await system.gates.get("run-1", "b")
    assert (gate.status, gate.decision) == ("closed", None)
    assert [e.what for e in gate.history] == ["opened", "closed"]
    assert await system.gates.pending() == []
    assert await run.status() == "rejected"


@pytest.mark.parametrize("timeout", [float("inf"), 1e30, float("nan"), -1, 0, True])
def test_a_gate_timeout_that_no_deadline_can_hold_is_refused_when_built(timeout: Any) -> None:
    with pytest.raises(roost.PipelineDefinitionError, match="gate timeout= must be > 0"):
        Gate(timeout=timeout)
    with pytest.raises(roost.PipelineDefinitionError, match="Escalate timeout= must be > 0"):
        Escalate(to=["leads"], timeout=timeout)


async def test_an_infinite_escalation_is_refused_before_it_can_stall_the_timer() -> None:
    with pytest.raises(roost.PipelineDefinitionError, match="Escalate timeout="):
        Gate(timeout=1, on_timeout=Escalate(to=["leads"], timeout=float("inf")))


def test_a_tools_gate_is_checked_when_built_like_a_steps() -> None:
    # A tool's gate is in no pipeline's definition: a bad timeout or on_timeout would only
    # show once it opened (the run stuck, or its timer failing every 30 s).
    with pytest.raises(roost.PipelineDefinitionError, match="on_timeout= must be 'approve'"):
        roost.tool(gate=Gate(timeout=1, on_timeout="maybe"))(  # type: ignore[arg-type]
            _wire)
    with pytest.raises(roost.PipelineDefinitionError, match=r"Escalate\(to=\.\.\.\) needs"):
        roost.tool(gate=Gate(timeout=1, on_timeout=Escalate(to=[], timeout=1)))(_wire)


async def _wire(amount: int) -> str:
    return f"wired {amount}"
