"""Tests of roost/pipelines/run.py: how a `RunActor` executes a pipeline run.

Every step here is done by `Worker` (or `Fallback`), whose behaviour per step
name comes from the test through the module's `Board`; workers that wait are
released by events, and the system fixture releases every gate before it
shuts down, so no worker is left blocked.
"""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost.errors import PermanentToolError, RunCancelled, StepFailed, TransientToolError
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.pipelines.run import NeedsReview, RunProgress
from roost.pipelines.service import RunOutcome
from roost.storage import CheckpointStore, RunStatus, RunStore, StepResults

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

Behaviour = Callable[[RunStep], Awaitable[Any]]


class Board:
    """What the workers do and what they saw, shared with the test."""

    def __init__(self) -> None:
        self.behaviours: dict[str, Behaviour] = {}
        self.requests: list[RunStep] = []
        self.log: list[str] = []
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.entered: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def on(self, step: str) -> Callable[[Behaviour], Behaviour]:
        def register(behaviour: Behaviour) -> Behaviour:
            self.behaviours[step] = behaviour
            return behaviour
        return register

    def steps_run(self) -> list[str]:
        return [request.step for request in self.requests]

    async def blocked(self, request: RunStep) -> Any:
        """A behaviour: signal entry, then wait until the step's gate opens."""
        self.entered[request.step].set()
        await self.gates[request.step].wait()
        return f"{request.step}:released"


BOARD = Board()


async def act(key: str, request: RunStep) -> Any:
    BOARD.requests.append(request)
    behaviour = BOARD.behaviours.get(key)
    return f"{request.step}:done" if behaviour is None else await behaviour(request)


class Worker(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return await act(message.step, message)


class Fallback(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return await act(f"{message.step}-fallback", message)


class Ticket(msgspec.Struct, frozen=True):
    sender: str
    kind: str


@pytest.fixture(autouse=True)
def board() -> Board:
    global BOARD
    BOARD = Board()
    return BOARD


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as running:
        try:
            yield running
        finally:
            for gate in BOARD.gates.values():
                gate.set()


async def run_to_end(system: roost.ActorSystem, pipeline: Pipeline, input: Any = None,
                     ) -> RunOutcome:
    run = await system.pipelines.start(pipeline, input)
    with anyio.fail_after(10):
        return await run.result()


# --- sequence and data flow -----------------------------------------------------------


async def test_sequential_steps_run_in_order_and_each_sees_the_input_and_earlier_results(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("extract")
    async def extract(request: RunStep) -> Any:
        return {"words": request.input["text"].split()}

    @board.on("count")
    async def count(request: RunStep) -> Any:
        return len(request.results["extract"]["words"])

    @board.on("report")
    async def report(request: RunStep) -> Any:
        return f"{request.input['text']!r} has {request.results['count']} words"

    pipeline = Pipeline("words", [
        Step("report", Worker, after=["count", "extract"]),
        Step("count", Worker, after="extract"),
        Step("extract", Worker),
    ])
    run = await system.pipelines.start(pipeline, {"text": "to be or not"}, run_id="run-1")
    outcome = await run.result()

    assert board.steps_run() == ["extract", "count", "report"]
    assert outcome == RunOutcome("run-1", "completed", {
        "extract": {"words": ["to", "be", "or", "not"]},
        "count": 4,
        "report": "'to be or not' has 4 words",
    })
    assert [sorted(r.results) for r in board.requests] == [[], ["extract"], ["count", "extract"]]
    assert {(r.run_id, r.attempt, r.item, r.index) for r in board.requests} == {
        ("run-1", 1, None, None)}
    assert await run.status() == RunStatus.COMPLETED


async def test_each_completed_step_is_checkpointed_and_its_result_stored_once(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("three", [
        Step("a", Worker),
        Step("b", Worker, after="a", when=lambda results: False),
        Step("c", Worker, after="a"),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")
    await run.result()

    saved = await system.checkpoints.list("run-1")
    assert [c.step for c in saved] == ["a", "c"]
    assert [c.actor_path for c in saved] == ["/pipelines/runs/run-1"] * 2
    first, last = (msgspec.msgpack.decode(c.state, type=RunProgress) for c in saved)
    assert (first.stored, last.stored, last.results) == (["a"], ["a", "c"], {})
    stored = await StepResults(system.store).read("run-1")
    assert {name: msgspec.msgpack.decode(raw) for name, raw in stored.items()} == {
        "a": "a:done", "c": "c:done"}
    assert last.skipped == ["b"]
    record = await system.pipelines.runs.get("run-1")
    assert (record.status, record.last_step, record.failed_step, record.error) == (
        "completed", "c", None, None)
    assert record.result is not None
    assert msgspec.msgpack.decode(record.result) == {"a": "a:done", "c": "c:done"}


async def test_a_struct_input_reaches_the_workers_as_the_pipelines_input_type(
        system: roost.ActorSystem, board: Board) -> None:
    typed = Pipeline("typed", [Step("a", Worker)], input_type=Ticket)
    untyped = Pipeline("untyped", [Step("a", Worker)])

    await run_to_end(system, typed, Ticket("ada@example.org", "urgent"))
    await run_to_end(system, untyped, Ticket("ada@example.org", "urgent"))

    assert [r.input for r in board.requests] == [
        Ticket("ada@example.org", "urgent"), {"sender": "ada@example.org", "kind": "urgent"}]


# --- parallel steps -------------------------------------------------------------------


async def test_steps_with_no_dependency_between_them_run_at_the_same_time(
        system: roost.ActorSystem, board: Board) -> None:
    started: set[str] = set()
    both_started = asyncio.Event()

    async def overlapping(request: RunStep) -> Any:
        board.log.append(f"start:{request.step}")
        started.add(request.step)
        if started == {"b", "c"}:
            both_started.set()
        await both_started.wait()  # run one after the other, this step would time out
        board.log.append(f"end:{request.step}")
        return request.step.upper()

    board.on("b")(overlapping)
    board.on("c")(overlapping)

    @board.on("d")
    async def join(request: RunStep) -> Any:
        board.log.append("d")
        return request.results["b"] + request.results["c"]

    pipeline = Pipeline("fan", [
        Step("a", Worker),
        Step("b", Worker, after="a", timeout=5.0),
        Step("c", Worker, after="a", timeout=5.0),
        Step("d", Worker, after=["b", "c"]),
    ])
    outcome = await run_to_end(system, pipeline)

    assert sorted(board.log[:2]) == ["start:b", "start:c"]
    assert sorted(board.log[2:4]) == ["end:b", "end:c"]
    assert board.log[4:] == ["d"]
    assert outcome.results["d"] == "BC"


async def test_two_parallel_steps_of_a_fifth_of_a_second_take_less_than_their_sum(
        system: roost.ActorSystem, board: Board) -> None:
    async def slow(request: RunStep) -> Any:
        await anyio.sleep(0.2)  # the work being timed, not a synchronization
        return request.step

    board.on("b")(slow)
    board.on("c")(slow)
    pipeline = Pipeline("fan", [
        Step("a", Worker), Step("b", Worker, after="a"), Step("c", Worker, after="a")])
    await run_to_end(system, pipeline)  # warm: pools started

    started = anyio.current_time()
    await run_to_end(system, pipeline)
    assert anyio.current_time() - started < 0.35


# --- conditional routing --------------------------------------------------------------


def routing() -> Pipeline:
    return Pipeline("route", [
        Step("classify", Worker),
        Step("escalate", Worker, after="classify",
             when=lambda results: results["classify"] == "urgent"),
        Step("page", Worker, after="escalate"),
        Step("answer", Worker, after="classify",
             when=lambda results: results["classify"] != "urgent"),
        Step("close", Worker, after=["page", "answer"]),
    ])


@pytest.mark.parametrize(("kind", "ran"), [
    ("urgent", ["classify", "escalate", "page", "close"]),
    ("normal", ["classify", "answer", "close"]),
])
async def test_a_condition_routes_the_run_and_steps_after_only_skipped_steps_are_skipped(
        system: roost.ActorSystem, board: Board, kind: str, ran: list[str]) -> None:
    @board.on("classify")
    async def classify(request: RunStep) -> Any:
        return request.input

    outcome = await run_to_end(system, routing(), kind)

    assert board.steps_run() == ran
    assert sorted(outcome.results) == sorted(ran)
    assert outcome.status == "completed"


async def test_a_run_whose_last_steps_are_all_skipped_completes(
        system: roost.ActorSystem, board: Board) -> None:
    pipeline = Pipeline("skip-tail", [
        Step("a", Worker),
        Step("b", Worker, after="a", when=lambda results: results["a"] == "never"),
        Step("c", Worker, after="b"),
    ])
    outcome = await run_to_end(system, pipeline)

    assert board.steps_run() == ["a"]
    assert outcome.results == {"a": "a:done"}


async def test_a_condition_that_raises_fails_the_run_at_that_step(
        system: roost.ActorSystem, board: Board) -> None:
    pipeline = Pipeline("bad-when", [
        Step("a", Worker),
        Step("b", Worker, after="a", when=lambda results: results["missing"]),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with pytest.raises(StepFailed,
                       match=r"run 'run-1': step 'b' failed: its condition raised KeyError"):
        await run.result()
    assert board.steps_run() == ["a"]


# --- map ------------------------------------------------------------------------------


async def test_a_map_step_runs_one_request_per_item_in_parallel_and_gathers_in_item_order(
        system: roost.ActorSystem, board: Board) -> None:
    finished = [asyncio.Event() for _ in range(3)]

    @board.on("split")
    async def split(request: RunStep) -> Any:
        return ["x", "y", "z"]

    @board.on("shout")
    async def shout(request: RunStep) -> Any:
        assert request.index is not None
        if request.index < 2:  # finish last to first: item i waits for item i + 1
            await finished[request.index + 1].wait()
        board.log.append(f"{request.index}:{request.item}")
        finished[request.index].set()
        return request.item.upper()

    pipeline = Pipeline("map", [
        Step("split", Worker),
        Step("shout", Worker, after="split", map=lambda results: results["split"],
             workers=3, timeout=5.0),
        Step("join", Worker, after="shout"),
    ])
    outcome = await run_to_end(system, pipeline)

    assert board.log == ["2:z", "1:y", "0:x"]
    assert outcome.results["shout"] == ["X", "Y", "Z"]
    assert sorted((r.index, r.item) for r in board.requests if r.step == "shout") == [
        (0, "x"), (1, "y"), (2, "z")]
    [join] = [r for r in board.requests if r.step == "join"]
    assert join.results["shout"] == ["X", "Y", "Z"]


async def test_a_map_over_no_items_gives_an_empty_list_and_the_run_goes_on(
        system: roost.ActorSystem, board: Board) -> None:
    pipeline = Pipeline("map-empty", [
        Step("each", Worker, map=lambda results: []),
        Step("after", Worker, after="each"),
    ])
    outcome = await run_to_end(system, pipeline)

    assert outcome.results == {"each": [], "after": "after:done"}
    assert board.steps_run() == ["after"]


async def test_a_failing_item_fails_the_map_step(system: roost.ActorSystem, board: Board) -> None:
    @board.on("each")
    async def each(request: RunStep) -> Any:
        if request.item == 2:
            raise ValueError("item 2 is bad")
        return request.item

    pipeline = Pipeline("map-fail", [Step("each", Worker, map=lambda results: [1, 2, 3])])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with pytest.raises(StepFailed, match=r"step 'each' failed: ValueError: item 2 is bad"):
        await run.result()


async def test_a_map_tool_step_calls_the_tool_once_per_item_even_for_equal_items(
        system: roost.ActorSystem, board: Board) -> None:
    calls: list[str] = []

    @roost.tool
    async def label(text: str) -> str:
        calls.append(text)
        return f"<{text}>"

    system.tools.register(label)
    pipeline = Pipeline("map-tool", [
        Step("label", tool="label", map=lambda results: ["a", "a", "b"],
             args=lambda results, item: {"text": item}),
    ])
    outcome = await run_to_end(system, pipeline)

    assert outcome.results == {"label": ["<a>", "<a>", "<b>"]}
    assert sorted(calls) == ["a", "a", "b"]


# --- tool steps -----------------------------------------------------------------------


async def test_a_tool_step_calls_the_tool_with_args_built_from_the_results_and_input(
        system: roost.ActorSystem, board: Board) -> None:
    sent: list[tuple[str, str]] = []

    @roost.tool
    async def send_email(to: str, body: str) -> str:
        sent.append((to, body))
        return f"sent-{len(sent)}"

    system.tools.register(send_email)

    @board.on("draft")
    async def draft(request: RunStep) -> Any:
        return f"Dear {request.input.sender}"

    pipeline = Pipeline("mail", [
        Step("draft", Worker),
        Step("send", tool="send_email", after="draft",
             args=lambda results, ticket: {"to": ticket.sender, "body": results["draft"]}),
        Step("log", Worker, after="send"),
    ], input_type=Ticket)
    outcome = await run_to_end(system, pipeline, Ticket("ada@example.org", "normal"))

    assert sent == [("ada@example.org", "Dear ada@example.org")]
    assert outcome.results["send"] == "sent-1"
    [log] = [r for r in board.requests if r.step == "log"]
    assert log.results["send"] == "sent-1"


# --- failure, retry, fallback, optional ------------------------------------------------


async def test_a_failed_step_fails_the_run_naming_run_and_step_and_later_steps_do_not_run(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("b")
    async def b(request: RunStep) -> Any:
        raise ValueError("boom")

    board.on("c")(board.blocked)
    pipeline = Pipeline("fails", [
        Step("a", Worker),
        Step("b", Worker, after="a"),
        Step("c", Worker, after="a"),
        Step("d", Worker, after=["b", "c"]),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with pytest.raises(StepFailed, match=r"run 'run-1': step 'b' failed: ValueError: boom") as caught:
        await run.result()
    assert (caught.value.run_id, caught.value.step) == ("run-1", "b")
    record = await system.pipelines.runs.get("run-1")
    assert (record.status, record.failed_step, record.error, record.last_step) == (
        "failed", "b", "ValueError: boom", "a")
    assert "d" not in board.steps_run()


async def test_a_step_is_retried_until_it_succeeds_and_each_attempt_is_numbered(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("flaky")
    async def flaky(request: RunStep) -> Any:
        if request.attempt < 3:
            raise ValueError(f"attempt {request.attempt} failed")
        return "third time lucky"

    pipeline = Pipeline("retry", [
        Step("flaky", Worker, retry=roost.Retry(attempts=3, base_delay=0.0, retry_on=Exception)),
    ])
    outcome = await run_to_end(system, pipeline)

    assert outcome.results == {"flaky": "third time lucky"}
    assert [r.attempt for r in board.requests] == [1, 2, 3]


async def test_step_retries_are_logged_as_step_events_naming_the_step_and_run(
        tmp_path: Path, board: Board) -> None:
    @board.on("flaky")
    async def flaky(request: RunStep) -> Any:
        if request.attempt < 2:
            raise ValueError("not yet")
        return "ok"

    pipeline = Pipeline("retry-logs", [
        Step("flaky", Worker, retry=roost.Retry(attempts=2, base_delay=0.0, retry_on=Exception)),
    ])
    with capture_logs() as logs:
        async with roost.ActorSystem(store=tmp_path / "logged", log_format=None) as system:
            run = await system.pipelines.start(pipeline, run_id="run-1")
            await run.result()

    retries = [e for e in logs if e["event"].endswith(("attempt_failed", "retry_scheduled"))]
    assert [e["event"] for e in retries] == ["step_attempt_failed", "step_retry_scheduled"]
    assert all(e["step"] == "flaky" and e["run_id"] == "run-1" and "tool" not in e
               for e in retries)


async def test_by_default_only_transient_errors_are_retried(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("transient")
    async def transient(request: RunStep) -> Any:
        if request.attempt == 1:
            raise TransientToolError("try again")
        return "ok"

    @board.on("permanent")
    async def permanent(request: RunStep) -> Any:
        raise ValueError("no use retrying")

    retry = roost.Retry(attempts=3, base_delay=0.0)
    await run_to_end(system, Pipeline("transient", [Step("transient", Worker, retry=retry)]))
    run = await system.pipelines.start(Pipeline("permanent", [
        Step("permanent", Worker, retry=retry)]))
    with pytest.raises(StepFailed, match="ValueError: no use retrying"):
        await run.result()

    assert [(r.step, r.attempt) for r in board.requests] == [
        ("transient", 1), ("transient", 2), ("permanent", 1)]


async def test_a_step_that_runs_past_its_timeout_fails_with_a_timeout(
        system: roost.ActorSystem, board: Board) -> None:
    board.on("slow")(board.blocked)
    pipeline = Pipeline("slow", [Step("slow", Worker, timeout=0.1)])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with anyio.fail_after(5), pytest.raises(
            StepFailed, match=r"step 'slow' failed: ToolTimeout: .*timed out after 0.1s"):
        await run.result()
    assert board.entered["slow"].is_set()


async def test_a_timed_out_attempt_is_retried(system: roost.ActorSystem, board: Board) -> None:
    @board.on("slow-once")
    async def slow_once(request: RunStep) -> Any:
        if request.attempt == 1:
            return await board.blocked(request)
        return f"attempt {request.attempt}"

    pipeline = Pipeline("slow", [
        Step("slow-once", Worker, timeout=0.1, retry=roost.Retry(attempts=2, base_delay=0.0))])
    outcome = await run_to_end(system, pipeline)

    assert outcome.results == {"slow-once": "attempt 2"}


async def test_a_step_past_its_timeout_is_cancelled_in_its_worker_which_serves_the_next_run(
        system: roost.ActorSystem, board: Board) -> None:
    cancelled = asyncio.Event()

    @board.on("hang")
    async def hang(request: RunStep) -> Any:
        if request.input == "first":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return f"served {request.input}"

    pipeline = Pipeline("hang", [Step("hang", Worker, timeout=0.1, workers=1)])
    first = await system.pipelines.start(pipeline, "first")
    with anyio.fail_after(5), pytest.raises(StepFailed, match=r"timed out after 0\.1s"):
        await first.result()
    second = await run_to_end(system, pipeline, "second")

    assert cancelled.is_set()
    assert second.results == {"hang": "served second"}


async def test_a_fallback_worker_answers_with_the_same_request_when_retries_fail(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("draft")
    async def draft(request: RunStep) -> Any:
        raise ValueError("model down")

    @board.on("draft-fallback")
    async def template(request: RunStep) -> Any:
        return f"template for {request.input}"

    pipeline = Pipeline("fallback", [
        Step("draft", Worker, fallback=Fallback,
             retry=roost.Retry(attempts=2, base_delay=0.0, retry_on=Exception)),
        Step("send", Worker, after="draft"),
    ])
    outcome = await run_to_end(system, pipeline, "ada")

    assert outcome.results["draft"] == "template for ada"
    assert [(r.step, r.attempt) for r in board.requests] == [
        ("draft", 1), ("draft", 2), ("draft", 3), ("send", 1)]
    assert board.requests[2].input == "ada"


async def test_when_the_fallback_fails_too_the_run_fails_with_the_fallbacks_error(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("draft")
    async def draft(request: RunStep) -> Any:
        raise ValueError("model down")

    @board.on("draft-fallback")
    async def template(request: RunStep) -> Any:
        raise LookupError("no template")

    run = await system.pipelines.start(Pipeline("fallback", [
        Step("draft", Worker, fallback=Fallback)]))

    with pytest.raises(StepFailed, match=r"step 'draft' failed: LookupError: no template"):
        await run.result()


async def test_a_tool_step_falls_back_to_another_tool_with_the_same_arguments(
        system: roost.ActorSystem) -> None:
    @roost.tool
    async def live_price(item: str) -> float:
        raise PermanentToolError("pricing service down")

    @roost.tool
    async def cached_price(item: str) -> float:
        return {"tea": 2.5}[item]

    system.tools.register(live_price)
    system.tools.register(cached_price)
    pipeline = Pipeline("price", [
        Step("price", tool="live_price", fallback="cached_price",
             args=lambda results, input: {"item": input}),
    ])
    outcome = await run_to_end(system, pipeline, "tea")

    assert outcome.results == {"price": 2.5}


async def test_a_failed_optional_step_degrades_to_a_step_failure_and_the_run_goes_on(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("enrich")
    async def enrich(request: RunStep) -> Any:
        raise ValueError("no data")

    pipeline = Pipeline("optional", [
        Step("enrich", Worker, optional=True),
        Step("answer", Worker, after="enrich"),
    ])
    outcome = await run_to_end(system, pipeline)

    assert outcome.status == "completed"
    assert outcome.results["enrich"] == StepFailure("ValueError: no data")
    [answer] = [r for r in board.requests if r.step == "answer"]
    assert answer.results["enrich"] == StepFailure("ValueError: no data")


async def test_a_step_whose_result_cannot_be_checkpointed_fails_the_run_once(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("opaque")
    async def opaque(request: RunStep) -> Any:
        return object()  # msgpack cannot encode it, so it cannot be checkpointed

    run = await system.pipelines.start(Pipeline("opaque", [Step("opaque", Worker)]),
                                       run_id="run-1")
    failure: StepFailed | None = None
    with anyio.move_on_after(2):
        try:
            await run.result()
        except StepFailed as error:
            failure = error

    assert board.steps_run() == ["opaque"], "the step must not be run again and again"
    assert failure is not None, "the run never ended"
    assert re.search(r"step 'opaque' failed: .*object", str(failure))
    assert (await system.pipelines.runs.get("run-1")).status == "failed"


# --- review and cancel ----------------------------------------------------------------


async def test_a_step_returning_needs_review_parks_the_run_at_its_review_gate(
        system: roost.ActorSystem, board: Board) -> None:
    @board.on("check")
    async def check(request: RunStep) -> Any:
        return NeedsReview("confidence 0.4 is below 0.8", data={"reply": "hello"})

    pipeline = Pipeline("review", [
        Step("draft", Worker),
        Step("check", Worker, after="draft"),
        Step("send", Worker, after="check"),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")
    outcome = await run.result()

    assert outcome.status == "waiting"
    assert outcome.waiting_at == ["check/review"]
    assert outcome.error == "check/review: confidence 0.4 is below 0.8"
    assert outcome.results == {"draft": "draft:done"}
    assert board.steps_run() == ["draft", "check"]
    assert await run.status() == "waiting"
    gate = await system.gates.get("run-1", "check/review")
    assert (gate.status, gate.reason, msgspec.json.decode(gate.shown)) == (
        "pending", "confidence 0.4 is below 0.8", {"reply": "hello"})


async def test_a_steps_review_is_stored_in_the_same_write_as_the_runs_waiting_status(
        system: roost.ActorSystem, board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a crash right after any write would leave: never a review on a running run."""
    @board.on("check")
    async def check(request: RunStep) -> Any:
        return NeedsReview("unsure")

    store = system.store
    commit = store.commit
    after_checkpoints: list[tuple[str, dict[str, str], RunStatus]] = []

    async def observed(ops: Any, *, durable: bool | None = None) -> list[Any]:
        results = await commit(ops, durable=durable)
        if any(getattr(op, "db", None) == "checkpoints" for op in ops):
            latest = await CheckpointStore(store).latest("run-1")
            assert latest is not None
            progress = msgspec.msgpack.decode(latest.state, type=RunProgress)
            status = (await RunStore(store).get("run-1")).status
            after_checkpoints.append((latest.step, progress.reviews, status))
        return results

    monkeypatch.setattr(store, "commit", observed)
    pipeline = Pipeline("review", [
        Step("draft", Worker),
        Step("check", Worker, after="draft"),
        Step("send", Worker, after="check"),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")
    outcome = await run.result()

    assert outcome.status == "waiting"
    assert after_checkpoints == [("draft", {}, RunStatus.RUNNING),
                                 ("gate:check/review", {"check": "unsure"}, RunStatus.WAITING)]


async def test_a_cancelled_run_stops_its_steps_and_ends_cancelled(
        system: roost.ActorSystem, board: Board) -> None:
    board.on("wait")(board.blocked)
    pipeline = Pipeline("cancel", [
        Step("first", Worker),
        Step("wait", Worker, after="first"),
        Step("never", Worker, after="wait"),
    ])
    run = await system.pipelines.start(pipeline, run_id="run-1")
    await board.entered["wait"].wait()

    await run.cancel()

    assert await run.status() == "cancelled"
    with pytest.raises(RunCancelled, match="run 'run-1' was cancelled"):
        await run.result()
    board.gates["wait"].set()
    await run.cancel()  # cancelling an ended run does nothing
    assert board.steps_run() == ["first", "wait"]
    record = await system.pipelines.runs.get("run-1")
    assert (record.status, record.last_step) == ("cancelled", "first")
