"""Tests of the spans tool calls record (roost/tools/client.py, proxy.py, retry.py): a
`tool_call` span per call made inside a pipeline run, under the caller's span, with a
`tool_attempt` span per execution; how the call was answered, retries and breaker
changes as attributes and events. Calls outside runs record nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost.errors import ToolUnavailable, TransientToolError
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.tracing import Span, SpanKind

pytestmark = pytest.mark.anyio

Scenario = Callable[[Any], Awaitable[Any]]


class Board:
    """What the test's worker does, and how often each tool fails before it works."""

    def __init__(self) -> None:
        self.scenario: Scenario | None = None
        self.failures_left = 0
        self.executions = 0


BOARD = Board()


@pytest.fixture(autouse=True)
def board() -> Board:
    global BOARD
    BOARD = Board()
    return BOARD


class Caller(roost.Actor):
    """A step's worker that plays the test's scenario with its context."""

    async def receive(self, message: RunStep) -> Any:
        assert BOARD.scenario is not None
        return await BOARD.scenario(self.ctx)


@roost.tool(idempotent=True)
async def send(to: str) -> str:
    BOARD.executions += 1
    return f"sent to {to}"


@roost.tool(idempotent=True, retry=roost.Retry(attempts=3, base_delay=0.001, max_delay=0.002))
async def flaky(n: int) -> int:
    BOARD.executions += 1
    if BOARD.failures_left:
        BOARD.failures_left -= 1
        raise TransientToolError("upstream 503")
    return n


@roost.tool(idempotent=True, breaker=roost.Breaker(failures=1, cooldown=60.0))
async def fragile(n: int) -> int:
    raise TransientToolError("upstream down")


async def cached(n: int) -> str:
    return "from cache"


@roost.tool(read_only=True, breaker=roost.Breaker(failures=1, cooldown=60.0), fallback=cached)
async def lookup(n: int) -> str:
    raise TransientToolError("search down")


@roost.tool(read_only=True)
async def noop(n: int) -> int:
    return n


@pytest.fixture
def spans() -> list[Span]:
    return []


@pytest.fixture
async def system(tmp_path: Path, spans: list[Span]) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as running:
        for tool in (send, flaky, fragile, lookup, noop):
            running.tools.register(tool)
        running.tracer.add_sink(spans.append)
        yield running


async def in_a_run(system: roost.ActorSystem, scenario: Scenario) -> Any:
    """Play `scenario(ctx)` in the worker of a one-step run; return the step's result."""
    BOARD.scenario = scenario
    run = await system.pipelines.start(Pipeline("calls", [Step("call", Caller)]))
    with anyio.fail_after(10):
        outcome = await run.result()
    await asyncio.sleep(0)  # a proxy task ends its attempt spans just after it answers
    return outcome.results["call"]


def named(spans: list[Span], name: str) -> list[Span]:
    return [span for span in spans if span.name == name]


def children(spans: list[Span], parent: Span) -> list[Span]:
    return sorted((s for s in spans if s.parent_span_id == parent.span_id),
                  key=lambda span: span.start_ns)


def the_message(spans: list[Span]) -> Span:
    [message] = [span for span in spans if span.kind == SpanKind.MESSAGE]
    return message


# --- outside runs ---------------------------------------------------------------------


async def test_calls_outside_any_run_record_no_span(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    class Plain(roost.Actor):
        async def receive(self, message: Any) -> Any:
            return await self.ctx.tools.call("send", to=message)

    assert await system.tools.call("noop", n=1) == 1
    assert await system.tools.call("send", to="ada", key="k-1") == "sent to ada"
    assert await system.spawn(Plain).ask("bob") == "sent to bob"

    assert spans == []


async def test_a_call_outside_the_run_records_nothing_while_the_run_is_recorded(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    entered, gate = asyncio.Event(), asyncio.Event()

    async def scenario(ctx: Any) -> Any:
        entered.set()
        await gate.wait()
        return await ctx.tools.call("noop", n=1)

    BOARD.scenario = scenario
    run = await system.pipelines.start(Pipeline("calls", [Step("call", Caller)]))
    await entered.wait()
    assert await system.tools.call("noop", n=2) == 2  # made by the test, while the run is open
    gate.set()
    with anyio.fail_after(10):
        await run.result()

    [call] = named(spans, "tool noop")
    assert call.attributes["tool.arguments"] == {"n": 1}


# --- calls in a run -------------------------------------------------------------------


async def test_a_read_only_call_is_a_child_of_the_callers_message_span(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    async def scenario(ctx: Any) -> Any:
        return await ctx.tools.call("noop", n=7)

    assert await in_a_run(system, scenario) == 7

    [call] = named(spans, "tool noop")
    message = the_message(spans)
    assert (call.parent_span_id, call.kind, call.trace_id, call.run_id) == (
        message.span_id, "tool_call", message.trace_id, message.run_id)
    assert (call.attributes["tool.arguments"], call.attributes["tool.result"],
            call.attributes["tool.outcome"]) == ({"n": 7}, 7, "executed")
    [attempt] = children(spans, call)
    assert (attempt.kind, attempt.name, attempt.attributes["tool"],
            attempt.attributes["attempt"]) == ("tool_attempt", "noop attempt 1", "noop", 1)
    assert attempt.attributes["latency"] >= 0


async def test_each_retry_is_a_tool_attempt_with_its_error_and_the_delay_before_the_next(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    board.failures_left = 2

    async def scenario(ctx: Any) -> Any:
        return await ctx.tools.call("flaky", n=5)

    assert await in_a_run(system, scenario) == 5

    [call] = named(spans, "tool flaky")
    attempts = children(spans, call)
    assert [(a.name, a.status, a.error_type) for a in attempts] == [
        ("flaky attempt 1", "error", "TransientToolError"),
        ("flaky attempt 2", "error", "TransientToolError"),
        ("flaky attempt 3", "ok", None)]
    for failed in attempts[:2]:
        [event] = failed.events
        assert event.name == "retry_scheduled" and 0 <= event.attributes["delay"] <= 0.002
    assert call.status == "ok" and call.attributes["tool.outcome"] == "executed"


async def test_a_repeated_key_is_a_replay_that_runs_nothing(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    async def scenario(ctx: Any) -> Any:
        first = await ctx.tools.call("send", to="ada", key="welcome-ada")
        second = await ctx.tools.call("send", to="ada", key="welcome-ada")
        return [first, second]

    assert await in_a_run(system, scenario) == ["sent to ada", "sent to ada"]

    executed, replayed = named(spans, "tool send")
    assert board.executions == 1
    assert (executed.attributes["tool.outcome"], len(children(spans, executed))) == ("executed", 1)
    assert (replayed.attributes["tool.outcome"], replayed.attributes["tool.replayed"],
            replayed.attributes["tool.key"], children(spans, replayed)) == (
        "replayed", "completed", "welcome-ada", [])
    assert replayed.attributes["tool.result"] == "sent to ada"


async def test_a_concurrent_duplicate_joins_the_call_in_flight(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    async def scenario(ctx: Any) -> Any:
        return await asyncio.gather(ctx.tools.call("send", to="bob", key="hi-bob"),
                                    ctx.tools.call("send", to="bob", key="hi-bob"))

    assert await in_a_run(system, scenario) == ["sent to bob", "sent to bob"]

    leader, joiner = sorted(named(spans, "tool send"),
                            key=lambda span: span.attributes["tool.outcome"])
    assert board.executions == 1
    assert (leader.attributes["tool.outcome"], joiner.attributes["tool.outcome"]) == (
        "executed", "joined")
    assert joiner.attributes["tool.joined_span"] == leader.span_id
    assert children(spans, joiner) == []


async def test_the_breaker_opening_is_an_event_and_a_refused_call_says_unavailable(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    async def scenario(ctx: Any) -> Any:
        errors = []
        for n in (1, 2):
            try:
                await ctx.tools.call("fragile", n=n)
            except (TransientToolError, ToolUnavailable) as error:
                errors.append(type(error).__name__)
        return errors

    assert await in_a_run(system, scenario) == ["TransientToolError", "ToolUnavailable"]

    tripping, refused = named(spans, "tool fragile")
    assert (tripping.status, tripping.attributes["breaker.state"]) == ("error", "closed")
    [attempt] = children(spans, tripping)
    assert [(e.name, e.attributes) for e in attempt.events] == [
        ("breaker_state_changed", {"old": "closed", "new": "open"}),
        ("gave_up", {"reason": "attempts_exhausted"})]
    assert (refused.status, refused.error_type, refused.attributes["breaker.state"],
            refused.attributes["tool.outcome"]) == ("error", "ToolUnavailable", "open",
                                                    "unavailable")
    assert [event.name for event in refused.events] == ["breaker_refused"]
    assert children(spans, refused) == []


async def test_an_open_breaker_answers_with_the_fallback(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    async def scenario(ctx: Any) -> Any:
        try:
            await ctx.tools.call("lookup", n=1)
        except TransientToolError:
            pass
        return await ctx.tools.call("lookup", n=2)

    assert await in_a_run(system, scenario) == "from cache"

    _, answered = named(spans, "tool lookup")
    assert (answered.status, answered.attributes["tool.outcome"],
            answered.attributes["tool.result"]) == ("ok", "fallback", "from cache")


async def test_a_step_that_is_a_tool_call_records_it_under_the_steps_attempt(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    pipeline = Pipeline("sending", [
        Step("send", tool="send", args=lambda results, input: {"to": input})])
    with anyio.fail_after(10):
        await (await system.pipelines.start(pipeline, "carol")).result()
    await asyncio.sleep(0)

    [attempt] = [span for span in spans if span.kind == SpanKind.STEP_ATTEMPT]
    [call] = named(spans, "tool send")
    assert call.parent_span_id == attempt.span_id
    assert [span.name for span in children(spans, call)] == ["send attempt 1"]
