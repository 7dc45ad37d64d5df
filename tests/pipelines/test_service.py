"""Tests of roost/pipelines/service.py: `system.pipelines` starts, lists, resumes and cancels runs.

A run "left running" is made the way a process leaves one: a system is shut
down while a step is in progress, so its record stays `running`; a new system
on the same store then finds it with `interrupted()` and continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import tracemalloc
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

import roost
from roost.errors import (
    CheckpointCorrupt,
    ConfigurationError,
    RunInputInvalid,
    RunNotFound,
)
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.pipelines.run import NeedsReview, RunProgress
from roost.pipelines.service import RunHandle, RunOutcome
from roost.storage import RunStatus

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

Behaviour = Callable[[RunStep], Awaitable[Any]]


class Board:
    """What workers and tools do and what they saw, shared with the test across systems."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[RunStep] = []
        self.effects: list[str] = []
        self.block: set[str] = set()
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def steps_run(self) -> list[str]:
        return [request.step for request in self.requests]

    def reset_events(self) -> None:
        """Events belong to one event loop; a test that runs a second loop starts afresh."""
        self.gates.clear()
        self.entered.clear()


BOARD = Board()


class Worker(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        BOARD.requests.append(message)
        if message.step in BOARD.block:
            BOARD.entered[message.step].set()
            await BOARD.gates[message.step].wait()
        behaviour = BOARD.behaviours.get(message.step)
        return f"{message.step}:done" if behaviour is None else await behaviour(message)


async def already_charged(key: str, args: Any) -> roost.Done | roost.NotDone:
    order = args["order"]
    return roost.Done(f"charged {order}") if order in BOARD.effects else roost.NotDone()


@roost.tool(verify=already_charged)
async def charge(order: str) -> str:
    BOARD.entered["charge"].set()
    if "charge" in BOARD.block:
        await BOARD.gates["charge"].wait()
    BOARD.effects.append(order)
    return f"charged {order}"


@roost.tool(idempotent=True)
async def hold(step: str) -> str:
    """A tool step without effects that waits at its gate while its step is in `BOARD.block`."""
    if step in BOARD.block:
        BOARD.entered[step].set()
        await BOARD.gates[step].wait()
    return f"{step}:held"


def held(name: str, after: str | list[str] | None = None) -> Step:
    return Step(name, tool="hold", after=after or (), args=lambda results, input: {"step": name})


class Ticket(msgspec.Struct, frozen=True):
    sender: str
    kind: str


def orders() -> Pipeline:
    """reserve (a worker) -> charge (a side-effecting tool) -> confirm (a worker)."""
    return Pipeline("orders", [
        Step("reserve", Worker),
        Step("charge", tool="charge", after="reserve",
             args=lambda results, input: {"order": input}),
        Step("confirm", Worker, after="charge"),
    ])


@pytest.fixture(autouse=True)
def board() -> Board:
    global BOARD
    BOARD = Board()
    return BOARD


def new_system(store: Path) -> roost.ActorSystem:
    system = roost.ActorSystem(store=store, log_format="json", log_level="critical")
    system.tools.register(charge)
    system.tools.register(hold)
    return system


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def system(store: Path) -> AsyncIterator[roost.ActorSystem]:
    async with new_system(store) as running:
        try:
            yield running
        finally:
            for gate in BOARD.gates.values():
                gate.set()


async def leave_running(store: Path, pipeline: Pipeline, blocked_step: str, run_id: str = "run-1",
                        input: Any = "order-1") -> None:
    """Start a run, and shut its system down while `blocked_step` is in progress.

    Block a tool step: the tool proxy stops after the run's actor, so the run is
    left `running` (a busy worker is a bug, see the test of a busy worker below).
    """
    BOARD.block.add(blocked_step)
    async with new_system(store) as system:
        await system.pipelines.start(pipeline, input, run_id=run_id)
        await BOARD.entered[blocked_step].wait()
    BOARD.block.discard(blocked_step)
    BOARD.reset_events()


async def outcome_of(handle: RunHandle) -> RunOutcome:
    with anyio.fail_after(10):
        return await handle.result()


# --- list -----------------------------------------------------------------------------


async def test_list_gives_every_run_or_only_those_with_one_status(
        system: roost.ActorSystem, board: Board) -> None:
    async def fail(request: RunStep) -> Any:
        raise ValueError("boom")

    async def review(request: RunStep) -> Any:
        return NeedsReview("unsure")

    board.behaviours["fail"] = fail
    board.behaviours["review"] = review
    board.block.add("wait")
    for run_id, step in [("run-a", "ok"), ("run-b", "fail"), ("run-c", "review"),
                         ("run-d", "wait")]:
        run = await system.pipelines.start(Pipeline(step, [Step(step, Worker)]), run_id=run_id)
        if step == "wait":
            await board.entered["wait"].wait()
        else:
            try:
                await run.result()
            except roost.RoostError:
                pass

    def ids(records: list[Any]) -> list[str]:
        return [record.run_id for record in records]

    assert ids(await system.pipelines.list()) == ["run-a", "run-b", "run-c", "run-d"]
    assert ids(await system.pipelines.list("completed")) == ["run-a"]
    assert ids(await system.pipelines.list(RunStatus.FAILED)) == ["run-b"]
    assert ids(await system.pipelines.list("waiting")) == ["run-c"]
    assert ids(await system.pipelines.list("running")) == ["run-d"]
    assert ids(await system.pipelines.list("cancelled")) == []
    assert [r.pipeline for r in await system.pipelines.list()] == ["ok", "fail", "review", "wait"]


async def test_listing_an_unknown_status_names_the_valid_ones(system: roost.ActorSystem) -> None:
    with pytest.raises(ConfigurationError,
                       match=r"status='done' is not a run status; use one of queued, running, suspended"):
        await system.pipelines.list("done")


async def test_a_live_run_is_not_interrupted(system: roost.ActorSystem, board: Board) -> None:
    board.block.add("reserve")
    await system.pipelines.start(orders(), "order-1", run_id="run-1")
    await board.entered["reserve"].wait()

    assert [r.run_id for r in await system.pipelines.list("running")] == ["run-1"]
    assert await system.pipelines.interrupted() == []
    assert await system.pipelines.resume_interrupted() == []


# --- interrupted runs -----------------------------------------------------------------


async def test_a_new_system_lists_a_run_left_running_and_resumes_it_without_repeating_steps(
        store: Path, board: Board) -> None:
    await leave_running(store, orders(), "charge")
    assert board.steps_run() == ["reserve"]
    assert board.effects == []

    async with new_system(store) as system:
        await system.pipelines.register(orders())
        [interrupted] = await system.pipelines.interrupted()
        assert (interrupted.run_id, interrupted.pipeline, interrupted.status,
                interrupted.last_step) == ("run-1", "orders", "running", "reserve")

        run = await system.pipelines.resume("run-1")
        outcome = await outcome_of(run)

        assert await system.pipelines.interrupted() == []
    assert outcome == RunOutcome("run-1", "completed", {
        "reserve": "reserve:done", "charge": "charged order-1", "confirm": "confirm:done"})
    assert board.steps_run() == ["reserve", "confirm"]
    assert board.effects == ["order-1"]


async def test_registering_with_resume_continues_the_pipelines_interrupted_runs(
        store: Path, board: Board) -> None:
    await leave_running(store, orders(), "charge", run_id="run-1", input="order-1")
    await leave_running(store, orders(), "charge", run_id="run-2", input="order-2")
    await leave_running(store, Pipeline("other", [held("other")]), "other", run_id="run-3")
    board.requests.clear()

    async with new_system(store) as system:
        handles = await system.pipelines.register(orders(), resume=True)
        assert sorted(handle.run_id for handle in handles) == ["run-1", "run-2"]
        outcomes = [await outcome_of(handle) for handle in handles]

        assert [r.run_id for r in await system.pipelines.interrupted()] == ["run-3"]
    assert {o.run_id: o.status for o in outcomes} == {"run-1": "completed", "run-2": "completed"}
    assert sorted((r.run_id, r.step) for r in board.requests) == [
        ("run-1", "confirm"), ("run-2", "confirm")]
    assert sorted(board.effects) == ["order-1", "order-2"]


async def test_resume_interrupted_continues_only_runs_of_registered_pipelines(
        store: Path, board: Board) -> None:
    await leave_running(store, orders(), "charge", run_id="run-1")
    await leave_running(store, Pipeline("other", [held("other")]), "other", run_id="run-2")

    async with new_system(store) as system:
        await system.pipelines.register(orders())
        handles = await system.pipelines.resume_interrupted()
        assert [handle.run_id for handle in handles] == ["run-1"]
        await outcome_of(handles[0])

        assert [r.run_id for r in await system.pipelines.interrupted()] == ["run-2"]


async def test_a_run_whose_worker_is_busy_at_shutdown_is_left_running_not_failed(
        store: Path, board: Board) -> None:
    """Shutdown stops the run's actor; the step it was waiting for must not fail the run.

    A watcher (started before the pipelines, so stopped after them) opens the busy
    worker's gate once the run's actor has stopped, so the worker is never stuck.
    """
    class Watcher(roost.Actor):
        async def receive(self, message: Any) -> Any:
            match message:
                case roost.ActorRef():
                    self.ctx.watch(message)
                case roost.Terminated():
                    BOARD.gates["confirm"].set()

    board.block.add("confirm")
    async with new_system(store) as system:
        watcher = system.spawn(Watcher, name="watcher")
        await system.pipelines.start(orders(), "order-1", run_id="run-1")
        await board.entered["confirm"].wait()
        await watcher.ask(system.lookup("/pipelines/runs/run-1"))  # watching from now on
    board.block.clear()
    board.reset_events()

    async with new_system(store) as system:
        [record] = await system.pipelines.list()
        assert (record.status, record.last_step, record.error) == ("running", "charge", None)
        await system.pipelines.register(orders())
        outcome = await outcome_of(await system.pipelines.resume("run-1"))
    assert outcome.status == "completed"
    assert board.steps_run() == ["reserve", "confirm", "confirm"]
    assert board.effects == ["order-1"]


# --- resume errors and no-ops ---------------------------------------------------------


async def test_resuming_an_unknown_run_raises_run_not_found(system: roost.ActorSystem) -> None:
    with pytest.raises(RunNotFound, match="no run with id 'nope' in the store"):
        await system.pipelines.resume("nope")


async def test_resuming_a_run_whose_pipeline_is_not_registered_names_the_pipeline(
        store: Path) -> None:
    await leave_running(store, orders(), "charge")

    async with new_system(store) as system:
        with pytest.raises(ConfigurationError,
                           match=r"run 'run-1' belongs to pipeline 'orders', which is not registered"):
            await system.pipelines.resume("run-1")
        with pytest.raises(ConfigurationError, match=r"run 'run-1' is running but not live here"):
            await RunHandle(system.pipelines, "run-1").result()


async def test_resuming_a_live_or_ended_run_does_nothing(
        system: roost.ActorSystem, board: Board) -> None:
    board.block.add("reserve")
    run = await system.pipelines.start(orders(), "order-1", run_id="run-1")
    await board.entered["reserve"].wait()

    again = await system.pipelines.resume("run-1")
    board.gates["reserve"].set()
    first = await outcome_of(run)
    assert await outcome_of(again) == first
    ended = await system.pipelines.resume("run-1")

    assert await outcome_of(ended) == first
    assert board.steps_run() == ["reserve", "confirm"]
    assert board.effects == ["order-1"]


async def test_an_ended_runs_outcome_is_read_back_by_a_later_system(
        store: Path, board: Board) -> None:
    async def ticket(request: RunStep) -> Any:
        return Ticket("ada@example.org", "urgent")

    board.behaviours["classify"] = ticket

    def pipeline() -> Pipeline:
        return Pipeline("classify", [
            Step("classify", Worker, output=Ticket), Step("reply", Worker, after="classify")])

    async with new_system(store) as system:
        live = await outcome_of(await system.pipelines.start(pipeline(), run_id="run-1"))

    async with new_system(store) as system:
        await system.pipelines.register(pipeline())
        stored = await outcome_of(await system.pipelines.resume("run-1"))
    assert stored == live == RunOutcome("run-1", "completed", {
        "classify": Ticket("ada@example.org", "urgent"), "reply": "reply:done"})


async def test_checkpoints_of_runs_ended_past_retention_are_pruned_and_their_outcome_remains(
        system: roost.ActorSystem, board: Board) -> None:
    async def unsure(request: RunStep) -> Any:
        return NeedsReview("check the amount")

    simple = Pipeline("simple", [Step("one", Worker), Step("two", Worker, after="one")])
    done = await outcome_of(await system.pipelines.start(simple, run_id="done"))
    board.behaviours["check"] = unsure
    await outcome_of(await system.pipelines.start(reviewed(), "order-1", run_id="waiting"))

    pruned = await system.pipelines.prune_finished(older_than=0)

    checkpoints = system.pipelines.checkpoints
    assert pruned == 2 and await checkpoints.list("done") == []
    assert await checkpoints.latest("waiting") is not None  # a person may still decide
    assert await outcome_of(await system.pipelines.resume("done")) == done
    assert await system.pipelines.prune_finished(older_than=3600) == 0


async def test_a_stored_result_that_no_longer_fits_its_step_is_not_resumed_and_is_named(
        store: Path, board: Board) -> None:
    await leave_running(store, orders(), "charge")  # reserve's result "reserve:done" is stored

    changed = Pipeline("orders", [
        Step("reserve", Worker, output=int),
        Step("charge", tool="charge", after="reserve", args=lambda results, input: {"order": input}),
        Step("confirm", Worker, after="charge"),
    ])
    async with new_system(store) as system:
        await system.pipelines.register(changed)
        with pytest.raises(roost.PipelineChanged) as refused:
            await system.pipelines.resume("run-1")
        record = await system.pipelines.runs.get("run-1")

    # Not reported as damage: the bytes are sound, the definition changed.
    assert str(refused.value).startswith(
        "run 'run-1' cannot go on under the pipeline 'orders' registered now: step 'reserve''s "
        "stored result does not fit its output type int: Expected `int`, got `str`")
    assert (record.status, record.error) == ("running", None)  # left as it is
    assert board.steps_run() == ["reserve"]


def version(*steps: Step) -> Pipeline:
    return Pipeline("evolving", list(steps))


V1 = (Step("a", Worker), Step("b", Worker, after="a"), held("c", after="b"))


@pytest.mark.parametrize(("v2", "reason"), [
    ((Step("a", Worker), held("c", after="a")),
     "it holds its result for step 'b', which the pipeline no longer has (removed or renamed)"),
    ((Step("a", Worker), Step("b2", Worker, after="a"), held("c", after="b2")),
     "it holds its result for step 'b', which the pipeline no longer has (removed or renamed)"),
    ((Step("a", Worker), Step("x", Worker, after="a"), Step("b", Worker, after="x"),
      held("c", after="b")),
     "step 'x' is new and comes before step 'b', which the run already reached"),
])
async def test_a_run_the_registered_definition_no_longer_fits_is_left_as_it_is_and_named(
        store: Path, board: Board, v2: tuple[Step, ...], reason: str) -> None:
    await leave_running(store, version(*V1), "c")

    async with new_system(store) as system:
        resumed = await system.pipelines.register(version(*v2), resume=True)
        with pytest.raises(roost.PipelineChanged) as again:
            await system.pipelines.resume("run-1")
        record = await system.pipelines.runs.get("run-1")

    assert list(resumed) == [] and resumed.damaged == []
    [changed] = resumed.changed
    assert (changed.run_id, changed.pipeline, changed.reason) == ("run-1", "evolving", reason)
    assert str(again.value) == str(changed)
    assert (record.status, record.error) == ("running", None)  # nothing dropped or ended
    assert board.steps_run() == ["a", "b"]


async def test_a_step_added_after_the_ones_a_run_reached_runs_when_it_resumes(
        store: Path, board: Board) -> None:
    await leave_running(store, version(*V1), "c")

    async with new_system(store) as system:
        [handle] = await system.pipelines.register(
            version(*V1, Step("d", Worker, after="c")), resume=True)
        outcome = await outcome_of(handle)

    assert (outcome.status, sorted(outcome.results)) == ("completed", ["a", "b", "c", "d"])
    assert board.steps_run() == ["a", "b", "d"]


async def test_a_decision_for_a_step_the_new_definition_lacks_fails_that_run_alone(
        store: Path, board: Board) -> None:
    board.behaviours["check"] = unsure
    async with new_system(store) as system:
        await outcome_of(await system.pipelines.start(reviewed(), "order-1", run_id="run-1"))
    renamed = Pipeline("reviewed", [Step("draft", Worker), Step("verify", Worker, after="draft")])

    async with new_system(store) as system:
        await system.pipelines.register(renamed)
        await system.gates.decide("run-1", "check/review", "approve", by="ana")
        with pytest.raises(roost.PipelineChanged, match="step 'check'"):
            await outcome_of(RunHandle(system.pipelines, "run-1"))
        # The runs supervisor is unharmed: another run goes on to its end.
        other = await system.pipelines.start(version(Step("a", Worker)), run_id="run-2")
        assert (await outcome_of(other)).status == "completed"
        record = await system.pipelines.runs.get("run-1")

    assert record.error is None and record.status in ("running", "queued")
    assert board.effects == []


@pytest.mark.parametrize(("decision", "given", "reason"), [
    ("approve", None, "the result step 'check' proposed for review does not fit its output "
                      "type now"),
    ("edit", "a text", "the decided input does not fit int"),
])
async def test_a_review_decided_under_one_output_type_and_resumed_under_another_is_not_applied(
        store: Path, board: Board, decision: str, given: Any, reason: str) -> None:
    board.behaviours["check"] = unsure
    async with new_system(store) as system:
        await outcome_of(await system.pipelines.start(reviewed(), "order-1", run_id="run-1"))

    async with new_system(store) as system:  # decided where the pipeline is not registered
        await system.gates.decide("run-1", "check/review", decision, input=given, by="ana")
        retyped = Pipeline("reviewed", [Step("draft", Worker),
                                        Step("check", Worker, after="draft", output=int)])
        [handle] = await system.pipelines.register(retyped, resume=True)
        with pytest.raises(roost.PipelineChanged, match=re.escape(reason)):
            await outcome_of(handle)
        record = await system.pipelines.runs.get("run-1")

    assert record.error is None and record.status in ("running", "queued")
    assert board.effects == []


@roost.tool(timeout=0.2)
async def slow_charge(order: str) -> str:
    await asyncio.sleep(5)  # cut off at 0.2 s: its outcome is unknown
    return "charged"


async def test_an_unknown_outcome_kept_for_a_step_that_no_longer_calls_a_tool_is_not_applied(
        store: Path) -> None:
    def charging(tool: bool) -> Pipeline:
        first = (Step("charge", tool="slow_charge", args=lambda r, order: {"order": order})
                 if tool else Step("charge", Worker))
        return Pipeline("charging", [first, Step("receipt", Worker, after="charge")])

    async with new_system(store) as system:
        system.tools.register(slow_charge)
        parked = await outcome_of(await system.pipelines.start(charging(True), "o-1",
                                                               run_id="run-1"))
    assert parked.waiting_at == ["charge/outcome"]

    async with new_system(store) as system:
        system.tools.register(slow_charge)
        await system.pipelines.register(charging(False))
        await system.gates.decide("run-1", "charge/outcome", "done", input="x", by="ana")
        with pytest.raises(roost.PipelineChanged, match="which calls no tool now"):
            await outcome_of(RunHandle(system.pipelines, "run-1"))
        other = await system.pipelines.start(version(Step("a", Worker)), run_id="run-2")
        assert (await outcome_of(other)).status == "completed"  # the runs supervisor lives


# --- runs that wait for a person -------------------------------------------------------


async def unsure(request: RunStep) -> Any:
    """`check`'s behaviour in the review tests: it asks a person."""
    return NeedsReview("refund over the limit")


def reviewed() -> Pipeline:
    """draft -> check (asks for review in these tests) -> charge (a side effect)."""
    return Pipeline("reviewed", [
        Step("draft", Worker),
        Step("check", Worker, after="draft"),
        Step("charge", tool="charge", after="check", args=lambda results, input: {"order": input}),
    ])


async def test_resuming_a_run_waiting_at_a_review_runs_nothing_and_gives_its_waiting_outcome(
        store: Path, board: Board) -> None:
    board.behaviours["check"] = unsure
    async with new_system(store) as system:
        live = await outcome_of(await system.pipelines.start(reviewed(), "order-1",
                                                             run_id="run-1"))

    async with new_system(store) as system:
        assert await system.pipelines.register(reviewed(), resume=True) == []
        assert await system.pipelines.interrupted() == []
        resumed = await outcome_of(await system.pipelines.resume("run-1"))
        record = await system.pipelines.runs.get("run-1")

    assert resumed == live == RunOutcome("run-1", "waiting", {"draft": "draft:done"},
                                         error="check/review: refund over the limit",
                                         waiting_at=["check/review"])
    assert record.status == "waiting"
    assert board.steps_run() == ["draft", "check"]
    assert board.effects == []


async def test_polling_a_waiting_run_with_a_timeout_holds_nothing_per_poll(
        store: Path, board: Board) -> None:
    board.behaviours["check"] = unsure

    async def poll(handle: RunHandle, times: int) -> None:
        for _ in range(times):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(handle.result(through_gates=True), 0.0001)

    async with new_system(store) as system:
        handle = await system.pipelines.start(reviewed(), "order-1", run_id="run-1")
        await outcome_of(handle)  # waiting at check/review
        await poll(handle, 200)  # warm up
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await poll(handle, 2000)
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        await system.gates.decide("run-1", "check/review", "approve", by="ana")
        assert (await outcome_of(handle)).status == "completed"  # still heard after the polls

    assert grown < 64 * 1024, f"{grown} bytes kept by 2000 abandoned waits"


async def test_a_run_left_running_with_a_review_in_its_checkpoint_parks_at_the_review_on_resume(
        store: Path, board: Board) -> None:
    """The state a crash between the review's checkpoint and the status write used to leave."""
    async with new_system(store) as system:
        await system.pipelines.runs.create("run-1", pipeline="reviewed",
                                           input=msgspec.msgpack.encode("order-1"))
        progress = RunProgress(
            results={"draft": msgspec.Raw(msgspec.msgpack.encode("draft:done"))}, failures={},
            reviews={"check": "refund over the limit"}, skipped=[], trace_id="trace-1")
        await system.pipelines.checkpoints.save(
            "run-1", step="check", actor_path="/pipelines/runs/run-1",
            state=msgspec.msgpack.encode(progress))

    async with new_system(store) as system:
        [handle] = await system.pipelines.register(reviewed(), resume=True)
        outcome = await outcome_of(handle)
        again = await outcome_of(await system.pipelines.resume("run-1"))
        record = await system.pipelines.runs.get("run-1")

    assert outcome == again == RunOutcome("run-1", "waiting", {"draft": "draft:done"},
                                          error="check/review: refund over the limit",
                                          waiting_at=["check/review"])
    assert record.status == "waiting"
    assert board.steps_run() == []
    assert board.effects == []


# --- what a resumed run's steps see ---------------------------------------------------


async def test_a_resumed_run_decodes_checkpointed_results_into_each_steps_output_type(
        store: Path, board: Board) -> None:
    async def ticket(request: RunStep) -> Any:
        return Ticket("ada@example.org", request.step)

    board.behaviours["typed"] = ticket
    board.behaviours["plain"] = ticket
    pipeline = Pipeline("decode", [
        Step("typed", Worker, output=Ticket),
        Step("plain", Worker),
        held("pause", after=["typed", "plain"]),
        Step("last", Worker, after="pause"),
    ])
    await leave_running(store, pipeline, "pause")

    async with new_system(store) as system:
        await system.pipelines.register(pipeline)
        await outcome_of(await system.pipelines.resume("run-1"))
    resumed = board.requests[-1]
    assert resumed.step == "last"
    assert resumed.results == {"typed": Ticket("ada@example.org", "typed"),
                               "plain": {"sender": "ada@example.org", "kind": "plain"},
                               "pause": "pause:held"}


async def test_a_failed_optional_steps_result_is_still_a_step_failure_after_a_resume(
        store: Path, board: Board) -> None:
    async def fail(request: RunStep) -> Any:
        raise ValueError("no data")

    board.behaviours["enrich"] = fail
    pipeline = Pipeline("optional", [
        Step("enrich", Worker, optional=True),
        held("pause", after="enrich"),
        Step("answer", Worker, after="pause"),
    ])
    await leave_running(store, pipeline, "pause")

    async with new_system(store) as system:
        await system.pipelines.register(pipeline)
        outcome = await outcome_of(await system.pipelines.resume("run-1"))
    assert board.requests[-1].step == "answer"
    assert board.requests[-1].results["enrich"] == StepFailure("ValueError: no data")
    assert outcome.results["enrich"] == StepFailure("ValueError: no data")


async def test_a_failed_optional_step_with_an_output_type_can_be_read_back(
        store: Path, board: Board) -> None:
    async def fail(request: RunStep) -> Any:
        raise ValueError("no data")

    board.behaviours["enrich"] = fail

    def pipeline() -> Pipeline:
        return Pipeline("optional", [Step("enrich", Worker, optional=True, output=Ticket)])

    async with new_system(store) as system:
        live = await outcome_of(await system.pipelines.start(pipeline(), run_id="run-1"))

    async with new_system(store) as system:
        await system.pipelines.register(pipeline())
        stored = await outcome_of(await system.pipelines.resume("run-1"))
    assert stored == live
    assert stored.results == {"enrich": StepFailure("ValueError: no data")}


# --- start, register and cancel errors ------------------------------------------------


async def test_a_run_id_can_be_used_only_once(system: roost.ActorSystem) -> None:
    pipeline = orders()
    await outcome_of(await system.pipelines.start(pipeline, "order-1", run_id="run-1"))

    with pytest.raises(ConfigurationError, match=r"a run with id 'run-1' already exists"):
        await system.pipelines.start(pipeline, "order-2", run_id="run-1")


async def test_a_generated_run_id_is_unique(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("one", [Step("one", Worker)])
    first = await system.pipelines.start(pipeline)
    second = await system.pipelines.start(pipeline)

    assert first.run_id != second.run_id
    assert repr(first) == f"<RunHandle {first.run_id}>"
    await outcome_of(first)
    await outcome_of(second)


@pytest.mark.parametrize(("run_id", "rule"), [
    ("", "is empty"),
    ("a/b", "contains '/', which would split the path of the run's actor"),
    ("a\x00b", "contains a NUL character, which ends the run id in its records' keys"),
    (5, "is not a string (it is of type int)"),
])
async def test_start_refuses_a_run_id_that_cannot_name_a_run_and_stores_nothing(
        system: roost.ActorSystem, run_id: Any, rule: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        await system.pipelines.start(orders(), "order-1", run_id=run_id)

    assert str(refused.value).startswith(f"run_id={run_id!r} {rule}; a run id must be a "
                                         "non-empty string without '/' or NUL characters")
    assert await system.pipelines.list() == []
    assert system.pipelines.statistics()["active"] == 0  # no run slot is held


async def test_a_run_id_may_be_as_long_as_its_records_keys_allow_and_no_longer(
        system: roost.ActorSystem) -> None:
    limit = system.pipelines.checkpoints.max_run_id_bytes
    pipeline = Pipeline("one", [Step("one", Worker)])

    with pytest.raises(ConfigurationError, match=rf"is {limit + 1} bytes long in UTF-8, past the "
                                                 rf"store's limit; .* at most {limit} bytes"):
        await system.pipelines.start(pipeline, run_id="r" * (limit + 1))
    longest = await system.pipelines.start(pipeline, run_id="r" * limit)

    assert (await outcome_of(longest)).status == "completed"
    assert [r.run_id for r in await system.pipelines.list()] == ["r" * limit]


async def test_a_run_whose_actor_cannot_start_gives_back_its_slot_and_stays_stored_to_resume(
        store: Path) -> None:
    pipeline = Pipeline("one", [Step("one", Worker)])
    async with roost.ActorSystem(store=store, max_active_runs=1, log_format="json",
                                 log_level="critical") as system:
        await outcome_of(await system.pipelines.start(pipeline, run_id="first"))
        await system.stop(system.lookup("/pipelines/runs"))  # no run actor can start now

        with pytest.raises(roost.SystemNotRunning):
            await system.pipelines.start(pipeline, run_id="second")

        assert system.pipelines.statistics()["active"] == 0
        assert [r.run_id for r in await system.pipelines.interrupted()] == ["second"]
    async with new_system(store) as system:
        [resumed] = await system.pipelines.register(pipeline, resume=True)
        assert (await outcome_of(resumed)).status == "completed"


async def test_start_refuses_an_input_that_does_not_fit_the_input_type_and_stores_nothing(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("tickets", [Step("triage", Worker)], input_type=Ticket)

    with pytest.raises(RunInputInvalid) as refused:
        await system.pipelines.start(pipeline, {"sender": "ada"}, run_id="run-1")

    assert str(refused.value) == (
        "pipeline 'tickets' refused the run's input: it does not fit the pipeline's input_type "
        "Ticket (Object missing required field `kind`); nothing was stored")
    assert await system.pipelines.list() == []


async def test_start_refuses_an_input_that_cannot_be_stored(system: roost.ActorSystem) -> None:
    with pytest.raises(RunInputInvalid, match=r"pipeline 'orders' refused the run's input: it "
                                              r"cannot be stored \(Encoding objects of type "
                                              r"object is unsupported\); pass a msgspec.Struct"):
        await system.pipelines.start(orders(), object(), run_id="run-1")

    assert await system.pipelines.list() == []


async def test_a_runs_steps_get_its_input_as_the_input_type(
        system: roost.ActorSystem, board: Board) -> None:
    pipeline = Pipeline("tickets", [Step("triage", Worker)], input_type=Ticket)

    await outcome_of(await system.pipelines.start(pipeline, {"sender": "ada", "kind": "refund"}))

    assert [request.input for request in board.requests] == [Ticket("ada", "refund")]


@pytest.mark.parametrize("method", ["start", "register"])
async def test_a_pipeline_name_in_place_of_a_pipeline_is_refused(
        system: roost.ActorSystem, method: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"system.pipelines.{method}\(\) takes a "
                                                 r"roost.Pipeline, got 'orders' \(a str\)"):
        await getattr(system.pipelines, method)("orders")


def orders_with(timeout: float = 60.0, limit: int = 10) -> Pipeline:
    """`orders` with a step timeout and a value its `when=` closure holds."""
    return Pipeline("orders", [
        Step("reserve", Worker, timeout=timeout),
        Step("confirm", Worker, after="reserve", when=lambda results: len(results) < limit),
    ])


async def test_the_same_definition_built_again_is_the_registered_pipeline(
        system: roost.ActorSystem) -> None:
    await system.pipelines.register(orders())
    await system.pipelines.register(orders())  # a new object, new lambdas, the same code

    handle = await system.pipelines.start(orders(), "order-1")  # built per call, as services do
    assert (await handle.result()).status == "completed"


def with_recursive_condition() -> Pipeline:
    def deep(results: Mapping[str, Any], depth: int = 0) -> bool:  # its closure holds itself
        return depth >= 3 or deep(results, depth + 1)

    return Pipeline("orders", [Step("reserve", Worker), Step("confirm", Worker, when=deep)])


async def test_a_rebuilt_definition_whose_condition_refers_to_itself_is_the_same(
        system: roost.ActorSystem) -> None:
    await system.pipelines.register(with_recursive_condition())
    await system.pipelines.register(with_recursive_condition())


def above(limit: int) -> Callable[[Mapping[str, Any]], bool]:
    return lambda results: len(results) > limit


def all_of(*conditions: Callable[[Mapping[str, Any]], bool]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda results: all(condition(results) for condition in conditions)


def with_conditions(*limits: int) -> Pipeline:
    return Pipeline("orders", [Step("reserve", Worker), Step(
        "confirm", Worker, after="reserve", when=all_of(*(above(n) for n in limits)))])


async def test_conditions_built_from_many_closures_are_compared_value_by_value(
        system: roost.ActorSystem) -> None:
    await system.pipelines.register(with_conditions(1, 2, 3, 4))
    await system.pipelines.register(with_conditions(1, 2, 3, 4))

    with pytest.raises(ConfigurationError, match=r"\(step 'confirm': when differs\)"):
        await system.pipelines.register(with_conditions(1, 2, 3, 5))


@pytest.mark.parametrize(("changed", "difference"), [
    (lambda: orders_with(timeout=30.0), "step 'reserve': timeout"),
    (lambda: orders_with(limit=5), "step 'confirm': when"),
    (lambda: Pipeline("orders", [Step("reserve", Worker)]),
     r"steps \['reserve', 'confirm'\] against \['reserve'\]"),
])
async def test_a_different_pipeline_under_a_taken_name_is_refused_naming_what_differs(
        system: roost.ActorSystem, changed: Callable[[], Pipeline], difference: str) -> None:
    await system.pipelines.register(orders_with())

    with pytest.raises(ConfigurationError, match=(
            rf"a different pipeline named 'orders' is already registered \({difference} "
            r"differs\); give the new definition another name")):
        await system.pipelines.register(changed())


async def test_pipelines_need_a_store() -> None:
    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        with pytest.raises(ConfigurationError, match=r"pipelines need a store"):
            await system.pipelines.start(orders(), "order-1")


async def test_cancelling_an_unknown_run_raises_run_not_found(system: roost.ActorSystem) -> None:
    with pytest.raises(RunNotFound, match="'nope'"):
        await system.pipelines.cancel("nope")


# --- concurrency of the API -----------------------------------------------------------


async def test_runs_started_together_on_a_fresh_system_all_complete(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("one", [Step("one", Worker)])

    handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(3)))

    assert [(await outcome_of(handle)).status for handle in handles] == ["completed"] * 3
    assert await system.pipelines.interrupted() == []


async def test_resuming_one_run_twice_at_once_runs_its_remaining_steps_once(
        store: Path, board: Board) -> None:
    await leave_running(store, orders(), "charge")

    async with new_system(store) as system:
        await system.pipelines.register(orders())
        warm = Pipeline("warm", [Step("warm", Worker)])  # the pipelines' supervisors exist
        await outcome_of(await system.pipelines.start(warm))
        board.requests.clear()
        first, second = await asyncio.gather(system.pipelines.resume("run-1"),
                                             system.pipelines.resume("run-1"))
        assert (await outcome_of(first)).status == "completed"
        assert (await outcome_of(second)).status == "completed"
    assert board.steps_run() == ["confirm"]
    assert board.effects == ["order-1"]


async def test_waiting_on_a_run_whose_actor_is_stopped_raises_run_interrupted_and_it_can_resume(
    tmp_path: Path,
) -> None:
    from roost.errors import RunInterrupted

    gate = asyncio.Event()

    class Held(roost.Actor):
        async def receive(self, message: Any) -> Any:
            await gate.wait()
            return "done"

    pipeline = roost.Pipeline("held", [roost.Step("a", Held)])
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        run = await system.pipelines.start(pipeline, "in", run_id="r1")
        waiting = asyncio.ensure_future(run.result())
        await asyncio.sleep(0)
        await system.stop(system.lookup("/pipelines/runs/r1"))
        with pytest.raises(RunInterrupted, match="'r1'"):
            await waiting
        assert await run.status() == "running"
        gate.set()
        await system.pipelines.resume("r1")
        assert (await run.result()).results == {"a": "done"}


async def test_a_run_whose_checkpoint_is_corrupt_is_left_as_it_is_naming_it(
    tmp_path: Path,
) -> None:
    from roost.storage import Put, checkpoint_key

    class Echo(roost.Actor):
        async def receive(self, message: Any) -> Any:
            return message.step

    pipeline = roost.Pipeline("fragile", [roost.Step("a", Echo), roost.Step("b", Echo, after="a")])
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        await system.pipelines.runs.create("r1", pipeline="fragile", input=b"\xc0")
        await system.store.commit([Put("checkpoints", checkpoint_key("r1", 1), b"\x93junk")])
        await system.pipelines.register(pipeline)
        with pytest.raises(CheckpointCorrupt, match=re.escape(
                f"checkpoint of run 'r1' step None (key {checkpoint_key('r1', 1)!r}) does not "
                "decode")):
            await system.pipelines.resume("r1")
        record = await system.pipelines.runs.get("r1")
        assert (record.status, record.error) == ("running", None)
        assert system.pipelines.statistics()["active"] == 0
        # Nothing was lost: the corrupt checkpoint is still there to inspect.
        assert await system.store.get("checkpoints", checkpoint_key("r1", 1)) == b"\x93junk"


async def test_a_run_whose_stored_input_no_longer_fits_is_not_resumed_naming_the_pipeline(
    tmp_path: Path,
) -> None:
    import msgspec

    class Order(msgspec.Struct):
        sku: str

    class Echo(roost.Actor):
        async def receive(self, message: Any) -> Any:
            return message.input

    pipeline = roost.Pipeline("orders", [roost.Step("a", Echo)], input_type=Order)
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        await system.pipelines.runs.create("r2", pipeline="orders",
                                           input=msgspec.msgpack.encode({"qty": 3}))
        await system.pipelines.register(pipeline)
        with pytest.raises(roost.PipelineChanged, match=(
                r"run 'r2' cannot go on under the pipeline 'orders' registered now: its stored "
                r"input does not fit the input_type \S*Order: Object missing required field `sku`")):
            await system.pipelines.resume("r2")
        assert (await system.pipelines.runs.get("r2")).status == "running"
