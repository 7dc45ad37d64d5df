"""Tests of the spans roost/pipelines/run.py records: a run's span tree, from the run
down to the tool attempts its workers make, with no instrumentation in user code.

Spans are collected by a sink added to `system.tracer`; the trees are checked by
their parent links, kinds, names, statuses, attributes and events.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost.errors import StepFailed, TransientToolError
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.pipelines.run import NeedsReview, RunProgress
from roost.pipelines.service import RunOutcome
from roost.runtime.log import add_actor_context
from roost.storage import CheckpointStore
from roost.tracing import Span, SpanKind
from roost.tracing.tracer import UsageTotals

pytestmark = pytest.mark.anyio

PRICES = {"small": roost.Price(input_per_million=2.0, output_per_million=8.0)}


class Spans:
    """The spans a system recorded, with ways to find them and walk their tree."""

    def __init__(self) -> None:
        self.all: list[Span] = []

    def __call__(self, span: Span) -> None:
        self.all.append(span)

    def __iter__(self) -> Iterator[Span]:
        return iter(self.all)

    def named(self, name: str) -> list[Span]:
        return [span for span in self.all if span.name == name]

    def one(self, name: str) -> Span:
        [span] = self.named(name)
        return span

    def of_kind(self, kind: SpanKind) -> list[Span]:
        return [span for span in self.all if span.kind == kind]

    def children(self, parent: Span) -> list[Span]:
        return sorted((span for span in self.all if span.parent_span_id == parent.span_id),
                      key=lambda span: span.start_ns)

    def shape(self, root: Span) -> tuple[str, list[Any]]:
        """`(kind name, [children's shapes])`, children in start order."""
        return f"{root.kind} {root.name}", [self.shape(child) for child in self.children(root)]


class Draft(msgspec.Struct, frozen=True):
    text: str
    usage: roost.Usage | None = None


class Events:
    """Gates and flags shared between a test and its workers and tools."""

    def __init__(self) -> None:
        self.failures_left: dict[str, int] = {}
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()


EVENTS = Events()


@pytest.fixture(autouse=True)
def events() -> Events:
    global EVENTS
    EVENTS = Events()
    return EVENTS


@roost.tool(idempotent=True)
async def send(to: str, body: str) -> dict[str, Any]:
    return {"receipt": f"sent to {to}", "usage": roost.Usage("small", 10, 0)}


@roost.tool(idempotent=True)
async def hold(order: str) -> str:
    """Waits at the gate once, for a test that stops the system while the tool runs."""
    if not EVENTS.gate.is_set():
        EVENTS.entered.set()
        await EVENTS.gate.wait()
    return f"held {order}"


@roost.tool(read_only=True)
async def look_up(thing: Any) -> str:
    return "found"


class Classifier(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        return "billing"


class Drafter(roost.Actor):
    """Reports the usage of one model call, returns a draft carrying another's, and sends it."""

    async def receive(self, message: RunStep) -> Draft:
        self.ctx.report_usage(roost.Usage("small", input_tokens=1000, output_tokens=200))
        await self.ctx.tools.call("send", to=message.input, body="hello")
        return Draft("hello", usage=roost.Usage("small", input_tokens=500, output_tokens=100))


class Flaky(roost.Actor):
    """Fails with a transient error while the test says so, then answers."""

    async def receive(self, message: RunStep) -> str:
        left = EVENTS.failures_left.get(message.step, 0)
        if left:
            EVENTS.failures_left[message.step] = left - 1
            raise TransientToolError(f"{message.step}: model overloaded")
        return f"{message.step}:ok"


class Broken(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        raise ValueError(f"{message.step} is broken")


class Reviewer(roost.Actor):
    async def receive(self, message: RunStep) -> NeedsReview:
        return NeedsReview("the customer threatens to sue")


class Talker(roost.Actor):
    """Returns its input as the step's output (e.g. a long or secret text)."""

    async def receive(self, message: RunStep) -> Any:
        return message.input


class Looker(roost.Actor):
    """Calls a read-only tool with an argument JSON cannot encode."""

    async def receive(self, message: RunStep) -> str:
        return await self.ctx.tools.call("look_up", thing=object())


def new_system(store: Path, **options: Any) -> roost.ActorSystem:
    system = roost.ActorSystem(store=store, log_format="json", log_level="critical",
                               prices=PRICES, **options)
    for tool in (send, hold, look_up):
        system.tools.register(tool)
    return system


@pytest.fixture
def spans() -> Spans:
    return Spans()


@pytest.fixture
async def system(tmp_path: Path, spans: Spans) -> AsyncIterator[roost.ActorSystem]:
    async with new_system(tmp_path / "store") as running:
        running.tracer.add_sink(spans)
        yield running


async def run_to_end(system: roost.ActorSystem, pipeline: Pipeline, input: Any = None,
                     run_id: str | None = None) -> RunOutcome:
    run = await system.pipelines.start(pipeline, input, run_id=run_id)
    with anyio.fail_after(10):
        return await run.result()


def support() -> Pipeline:
    return Pipeline("support", [
        Step("classify", Classifier),
        Step("draft", Drafter, after="classify", output=Draft),
        Step("send", tool="send", after="draft",
             args=lambda results, input: {"to": input, "body": results["draft"].text}),
    ])


# --- the tree -------------------------------------------------------------------------


async def test_a_run_is_one_trace_from_the_run_down_to_each_tool_attempt(
        system: roost.ActorSystem, spans: Spans) -> None:
    await run_to_end(system, support(), "ada@example.com", run_id="email-1")
    await asyncio.sleep(0)  # the tool proxy's task ends the attempt span just after answering

    run = spans.one("run support")
    assert spans.shape(run) == ("run run support", [
        ("step step classify", [("step_attempt classify attempt 1", [
            ("message RunStep", [])])]),
        ("step step draft", [("step_attempt draft attempt 1", [
            ("message RunStep", [("tool_call tool send", [
                ("tool_attempt send attempt 1", [])])])])]),
        ("step step send", [("step_attempt send attempt 1", [
            ("tool_call tool send", [("tool_attempt send attempt 1", [])])])]),
    ])
    assert run.parent_span_id is None
    assert {span.trace_id for span in spans} == {run.trace_id}
    assert {span.run_id for span in spans} == {"email-1"}
    assert {span.status for span in spans} == {"ok"}
    assert (run.actor, run.attributes["pipeline"], run.attributes["run.status"],
            run.attributes["run.steps"], run.attributes["run.input"]) == (
        "/pipelines/runs/email-1", "support", "completed", 3, "ada@example.com")
    assert [(event.name, event.attributes["step"], event.attributes["seq"])
            for event in run.events] == [("checkpoint", "classify", 1), ("checkpoint", "draft", 2),
                                         ("checkpoint", "send", 3)]
    assert all(event.attributes["bytes"] > 0 for event in run.events)


async def test_the_workers_message_span_names_the_worker_and_the_step_it_handled(
        system: roost.ActorSystem, spans: Spans) -> None:
    await run_to_end(system, support(), "ada@example.com")

    attempt = spans.one("draft attempt 1")
    [message] = spans.children(attempt)
    assert (message.kind, message.actor, message.attributes["step"]) == (
        "message", "/pipelines/workers/support/draft/draft-1", "draft")
    [call] = spans.children(message)
    assert call.actor == message.actor


async def test_steps_keep_their_input_and_output_and_tool_calls_their_arguments_and_result(
        system: roost.ActorSystem, spans: Spans) -> None:
    await run_to_end(system, support(), "ada@example.com")

    draft = spans.one("step draft")
    assert draft.attributes["step.input"] == {"input": "ada@example.com", "after": ["classify"]}
    assert draft.attributes["step.output"] == {
        "text": "hello", "usage": {"model": "small", "input_tokens": 500, "output_tokens": 100}}
    assert (draft.attributes["step.outcome"], draft.attributes["step.attempts"]) == ("completed", 1)
    [call, _] = spans.named("tool send")
    assert call.attributes["tool.arguments"] == {"to": "ada@example.com", "body": "hello"}
    assert call.attributes["tool.result"]["receipt"] == "sent to ada@example.com"
    assert (call.attributes["tool"], call.attributes["tool.outcome"]) == ("send", "executed")
    assert len(call.attributes["tool.key"]) == 64


async def test_tokens_and_cost_add_up_on_the_run_span_and_in_the_outcome(
        system: roost.ActorSystem, spans: Spans) -> None:
    outcome = await run_to_end(system, support(), "ada@example.com")

    # The worker reported 1000/200, its draft carried 500/100, each tool result 10/0.
    assert outcome.usage == UsageTotals(input_tokens=1520, output_tokens=300,
                                        cost=pytest.approx((1520 * 2.0 + 300 * 8.0) / 1e6))
    run = spans.one("run support")
    assert (run.attributes["gen_ai.usage.input_tokens"],
            run.attributes["gen_ai.usage.output_tokens"]) == (1520, 300)
    assert run.attributes["roost.cost"] == pytest.approx(outcome.usage.cost)
    message = spans.children(spans.one("draft attempt 1"))[0]
    assert (message.attributes["gen_ai.request.model"], message.attributes["gen_ai.usage.input_tokens"],
            message.attributes["gen_ai.usage.output_tokens"]) == ("small", 1000, 200)
    assert spans.one("draft attempt 1").attributes["gen_ai.usage.input_tokens"] == 500
    # Each usage is recorded on exactly one span below the run: the run's are its totals.
    below = [span for span in spans if span.kind != SpanKind.RUN]
    assert sum(span.attributes.get("gen_ai.usage.input_tokens", 0) for span in below) == 1520


async def test_the_usage_totals_are_kept_with_the_run_and_read_back_after_it_ended(
        system: roost.ActorSystem) -> None:
    live = await run_to_end(system, support(), "ada@example.com", run_id="email-1")

    stored = await system.pipelines.outcome("email-1")

    assert stored.usage == live.usage and stored.usage.input_tokens == 1520


# --- attempts and outcomes ------------------------------------------------------------


async def test_a_runs_logs_carry_the_trace_id_its_trace_is_stored_under(
        system: roost.ActorSystem, spans: Spans, events: Events) -> None:
    events.failures_left["flaky"] = 1
    retry = roost.Retry(attempts=2, base_delay=0.001, max_delay=0.002)
    roost.configure_logging("json", "info")

    with capture_logs(processors=[add_actor_context]) as logs:
        await run_to_end(system, Pipeline("retrying", [Step("flaky", Flaky, retry=retry)]),
                         run_id="logged")

    stored = spans.one("run retrying").trace_id
    by_event = {log["event"]: log for log in logs if log.get("run_id") == "logged"}
    for event in ("step_attempt_failed", "step_retry_scheduled", "run_finished"):
        assert by_event[event].get("trace_id") == stored, event



async def test_each_retry_is_an_attempt_span_with_its_error_and_the_delay_before_the_next(
        system: roost.ActorSystem, spans: Spans, events: Events) -> None:
    events.failures_left["flaky"] = 2
    retry = roost.Retry(attempts=3, base_delay=0.001, max_delay=0.002)
    await run_to_end(system, Pipeline("retrying", [Step("flaky", Flaky, retry=retry)]))

    step = spans.one("step flaky")
    attempts = spans.children(step)
    assert [(a.name, a.status, a.error_type, a.attributes["attempt"]) for a in attempts] == [
        ("flaky attempt 1", "error", "TransientToolError", 1),
        ("flaky attempt 2", "error", "TransientToolError", 2),
        ("flaky attempt 3", "ok", None, 3)]
    assert attempts[0].error_message == "flaky: model overloaded"
    for failed in attempts[:2]:
        [event] = failed.events
        assert event.name == "retry_scheduled" and 0 <= event.attributes["delay"] <= 0.002
    assert (step.status, step.attributes["step.attempts"], step.attributes["step.outcome"]) == (
        "ok", 3, "completed")


async def test_an_attempt_past_the_steps_timeout_ends_in_a_timeout_error(
        system: roost.ActorSystem, spans: Spans, events: Events) -> None:
    class Stuck(roost.Actor):
        async def receive(self, message: RunStep) -> str:
            await events.gate.wait()
            return "late"

    try:
        with pytest.raises(StepFailed):
            await run_to_end(system, Pipeline("slow", [Step("stuck", Stuck, timeout=0.05)]))
    finally:
        events.gate.set()

    [attempt] = spans.children(spans.one("step stuck"))
    assert (attempt.status, attempt.error_type) == ("error", "ToolTimeout")
    assert [event.name for event in attempt.events] == ["gave_up"]


async def test_a_failing_step_fails_its_spans_and_the_run_span_names_it(
        system: roost.ActorSystem, spans: Spans) -> None:
    pipeline = Pipeline("failing", [Step("first", Classifier), Step("boom", Broken, after="first"),
                                    Step("never", Classifier, after="boom")])
    with pytest.raises(StepFailed):
        await run_to_end(system, pipeline, run_id="run-f")

    run = spans.one("run failing")
    assert (run.status, run.error_type, run.attributes["run.status"],
            run.attributes["run.failed_step"]) == ("error", "StepFailed", "failed", "boom")
    assert "ValueError: boom is broken" in (run.error_message or "")
    step = spans.one("step boom")
    assert (step.status, step.error_type, step.error_message, step.attributes["step.outcome"]) == (
        "error", "ValueError", "boom is broken", "failed")
    [attempt] = spans.children(step)
    [message] = spans.children(attempt)
    assert (attempt.status, message.status, message.error_type) == ("error", "error", "ValueError")
    assert spans.named("step never") == []


async def test_fallback_optional_failure_skip_and_review_are_step_outcomes(
        system: roost.ActorSystem, spans: Spans) -> None:
    pipeline = Pipeline("outcomes", [
        Step("rescued", Broken, fallback=Classifier),
        Step("optional", Broken, optional=True, after="rescued"),
        Step("skipped", Classifier, after="optional", when=lambda results: False),
        Step("review", Reviewer, after="optional"),
    ])
    outcome = await run_to_end(system, pipeline)

    assert outcome.status == "waiting"
    rescued = spans.one("step rescued")
    assert (rescued.status, rescued.attributes["step.outcome"],
            rescued.attributes["step.output"]) == ("ok", "fallback", "billing")
    assert [event.name for event in rescued.events] == ["fallback_started"]
    assert [(a.name, a.status, a.attributes.get("fallback")) for a in spans.children(rescued)] == [
        ("rescued attempt 1", "error", None),
        ("rescued/fallback attempt 1", "ok", "Classifier")]
    optional = spans.one("step optional")
    assert (optional.status, optional.attributes["step.outcome"], optional.error_type) == (
        "error", "optional_failure", "ValueError")
    assert isinstance(outcome.results["optional"], StepFailure)
    skipped = spans.one("step skipped")
    assert (skipped.attributes["step.outcome"], skipped.attributes["step.skip_reason"],
            spans.children(skipped)) == ("skipped", "its condition is false", [])
    review = spans.one("step review")
    assert (review.status, review.attributes["step.outcome"],
            review.attributes["roost.needs_review"]) == (
        "ok", "needs_review", "the customer threatens to sue")
    run = spans.one("run outcomes")
    assert (run.status, run.attributes["run.status"]) == ("ok", "waiting")
    assert [(e.name, e.attributes["gate"]) for e in run.events if e.name == "gate_opened"] == [
        ("gate_opened", "review/review")]


async def test_a_condition_that_raises_is_a_failed_step_span(
        system: roost.ActorSystem, spans: Spans) -> None:
    def broken_condition(results: Any) -> bool:
        raise KeyError("tier")

    with pytest.raises(StepFailed):
        await run_to_end(system, Pipeline("conditional", [
            Step("check", Classifier, when=broken_condition)]))

    step = spans.one("step check")
    assert (step.status, step.error_type, step.attributes["step.outcome"],
            spans.children(step)) == ("error", "KeyError", "failed", [])


async def test_a_map_steps_items_are_attempt_spans_with_their_item(
        system: roost.ActorSystem, spans: Spans) -> None:
    await run_to_end(system, Pipeline("mapped", [
        Step("each", Classifier, map=lambda results: ["a", "b"])]))

    step = spans.one("step each")
    assert step.attributes["step.items"] == 2
    assert sorted((a.name, a.attributes["item"], a.attributes["step.item"])
                  for a in spans.children(step)) == [("each/0 attempt 1", 0, "a"),
                                                     ("each/1 attempt 1", 1, "b")]


# --- resume ---------------------------------------------------------------------------


async def test_a_resumed_run_continues_its_trace_from_the_checkpoint_it_names(
        tmp_path: Path, events: Events) -> None:
    store = tmp_path / "store"
    pipeline = Pipeline("orders", [
        Step("reserve", Classifier),
        Step("charge", tool="hold", after="reserve", args=lambda results, input: {"order": input}),
    ])
    first = Spans()
    async with new_system(store) as system:
        system.tracer.add_sink(first)
        await system.pipelines.start(pipeline, "order-1", run_id="run-1")
        await events.entered.wait()
    events.gate.set()  # this loop's event, read by the tool in the next system's loop
    second = Spans()
    async with new_system(store) as system:
        system.tracer.add_sink(second)
        [handle] = await system.pipelines.register(pipeline, resume=True)
        with anyio.fail_after(10):
            outcome = await handle.result()

    assert outcome.status == "completed"
    interrupted, resumed = first.one("run orders"), second.one("run orders")
    assert interrupted.trace_id == resumed.trace_id
    assert {span.trace_id for span in [*first, *second]} == {resumed.trace_id}
    assert interrupted.attributes["run.status"] == "interrupted"
    [event, *_] = resumed.events
    assert (event.name, event.attributes) == ("resumed", {"step": "reserve", "seq": 1,
                                                          "completed": 1})
    assert resumed.attributes["run.status"] == "completed"
    assert second.named("step reserve") == []  # a completed step is not run, nor recorded, again
    [call] = second.named("tool hold")
    assert [event.name for event in call.events] == ["found_in_flight"]


async def test_a_run_resumed_before_its_first_checkpoint_still_continues_its_trace(
        tmp_path: Path, events: Events) -> None:
    store = tmp_path / "store"
    pipeline = Pipeline("held", [
        Step("charge", tool="hold", args=lambda results, input: {"order": input})])
    first, second = Spans(), Spans()
    async with new_system(store) as system:
        system.tracer.add_sink(first)
        await system.pipelines.start(pipeline, "order-1", run_id="run-1")
        await events.entered.wait()
    events.gate.set()
    async with new_system(store) as system:
        system.tracer.add_sink(second)
        [handle] = await system.pipelines.register(pipeline, resume=True)
        with anyio.fail_after(10):
            await handle.result()

    assert first.one("run held").trace_id == second.one("run held").trace_id


async def test_the_trace_id_is_stored_in_the_checkpoints(
        system: roost.ActorSystem, spans: Spans) -> None:
    await run_to_end(system, support(), "ada@example.com", run_id="email-1")

    latest = await CheckpointStore(system.store).latest("email-1")
    assert latest is not None
    progress = msgspec.msgpack.decode(latest.state, type=RunProgress)
    assert progress.trace_id == spans.one("run support").trace_id
    assert progress.usage.input_tokens == 1520


# --- payloads -------------------------------------------------------------------------


async def test_a_long_payload_is_cut_with_a_marker_and_the_redact_hook_sees_every_payload(
        tmp_path: Path) -> None:
    seen: list[str] = []

    def redact(name: str, value: Any) -> Any:
        seen.append(name)
        return "***" if value == "hunter2" else value

    spans = Spans()
    async with new_system(tmp_path / "store", payload_limit=64, redact=redact) as system:
        system.tracer.add_sink(spans)
        await run_to_end(system, Pipeline("talk", [Step("long", Talker)]), "x" * 500)
        await run_to_end(system, Pipeline("secret", [Step("echo", Talker)]), "hunter2")

    long = spans.one("step long").attributes["step.output"]
    assert long["roost.truncated"] is True and long["bytes"] == 502
    assert long["preview"] == '"' + "x" * 63
    echo = spans.one("step echo")
    assert echo.attributes["step.output"] == "***"
    assert spans.one("run secret").attributes["run.input"] == "***"
    assert {"run.input", "step.input", "step.output"} <= set(seen)


async def test_an_unencodable_payload_is_a_typed_placeholder_and_the_step_goes_on(
        system: roost.ActorSystem, spans: Spans) -> None:
    outcome = await run_to_end(system, Pipeline("looking", [Step("look", Looker)]))

    assert outcome.results == {"look": "found"}
    call = spans.one("tool look_up")
    assert call.attributes["tool.arguments"] == {"thing": {"roost.unencodable": "object"}}
    assert call.status == "ok"


# --- tracing off ----------------------------------------------------------------------


async def test_with_tracing_off_a_run_records_nothing_even_with_a_sink(tmp_path: Path) -> None:
    spans = Spans()
    async with new_system(tmp_path / "store", tracing=False) as system:
        system.tracer.add_sink(spans)
        outcome = await run_to_end(system, support(), "ada@example.com")

    assert outcome.status == "completed"
    assert spans.all == []
    assert outcome.usage == UsageTotals()
