"""Tests of the `message` spans roost/actors/_cell.py records for messages handled inside
a pipeline run, the failures and restarts of the actors involved, and
`ctx.report_usage` (roost/actors/context.py).

A run's step worker (`Relay`) sends messages on to other actors, so those messages
belong to the run; messages outside any run record nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost.errors import ConfigurationError
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.tracing import Span, SpanKind

pytestmark = pytest.mark.anyio


class Note(roost.Message, frozen=True):
    text: str


class Board:
    """What the step's worker does, shared with the test."""

    def __init__(self) -> None:
        self.scenario: Callable[[Any], Awaitable[Any]] | None = None
        self.crashes_left = 0
        self.handled: asyncio.Future[str] | None = None


BOARD = Board()


@pytest.fixture(autouse=True)
def board() -> Board:
    global BOARD
    BOARD = Board()
    return BOARD


class Relay(roost.Actor):
    """A step's worker that plays the test's scenario with its context."""

    async def receive(self, message: RunStep) -> Any:
        assert BOARD.scenario is not None
        return await BOARD.scenario(self.ctx)


class Listener(roost.Actor):
    """Crashes on a note while the test says so; then answers and says it handled it."""

    async def receive(self, message: Note) -> str:
        if BOARD.crashes_left:
            BOARD.crashes_left -= 1
            raise RuntimeError(f"cannot read {message.text!r}")
        if BOARD.handled is not None and not BOARD.handled.done():
            BOARD.handled.set_result(message.text)
        return message.text.upper()


@pytest.fixture
def spans() -> list[Span]:
    return []


@pytest.fixture
async def system(tmp_path: Path, spans: list[Span]) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as running:
        running.tracer.add_sink(spans.append)
        yield running


async def in_a_run(system: roost.ActorSystem, scenario: Callable[[Any], Awaitable[Any]]) -> Any:
    """Play `scenario(ctx)` in the worker of a one-step run; return the step's result."""
    BOARD.scenario = scenario
    run = await system.pipelines.start(Pipeline("relay", [Step("relay", Relay)]))
    with anyio.fail_after(10):
        return (await run.result()).results["relay"]


def of_kind(spans: list[Span], kind: SpanKind) -> list[Span]:
    return [span for span in spans if span.kind == kind]


def by_actor(spans: list[Span], actor: str) -> list[Span]:
    return sorted((s for s in spans if s.kind == SpanKind.MESSAGE and s.actor == actor),
                  key=lambda span: span.start_ns)


# --- messages in and out of runs ------------------------------------------------------


async def test_a_message_sent_inside_a_run_is_a_child_of_the_sending_messages_span(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    listener = system.spawn(Listener, name="listener")

    async def scenario(ctx: Any) -> Any:
        return await listener.ask(Note("hello"))

    assert await in_a_run(system, scenario) == "HELLO"

    [worker] = by_actor(spans, "/pipelines/workers/relay/relay/relay-1")
    [heard] = by_actor(spans, "/listener")
    assert (heard.name, heard.parent_span_id, heard.trace_id, heard.run_id, heard.status) == (
        "Note", worker.span_id, worker.trace_id, worker.run_id, "ok")
    assert "step" not in heard.attributes  # only the run's request to a worker is a step
    [attempt] = of_kind(spans, SpanKind.STEP_ATTEMPT)
    assert worker.parent_span_id == attempt.span_id  # the pool in between records no span


async def test_messages_outside_any_run_record_no_span(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    listener = system.spawn(Listener, name="listener")

    listener.tell(Note("a"))
    assert await listener.ask(Note("b")) == "B"

    assert spans == []


async def test_a_failed_ask_in_a_run_is_an_error_span_and_no_actor_failure(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    listener = system.spawn(Listener, name="listener")
    board.crashes_left = 1

    async def scenario(ctx: Any) -> Any:
        try:
            await listener.ask(Note("bad"))
        except RuntimeError as error:
            return str(error)

    assert await in_a_run(system, scenario) == "cannot read 'bad'"

    [heard] = by_actor(spans, "/listener")
    assert (heard.status, heard.error_type, heard.error_message) == (
        "error", "RuntimeError", "cannot read 'bad'")
    assert heard.events == []
    [run] = of_kind(spans, SpanKind.RUN)
    assert [event.name for event in run.events] == ["checkpoint"]


# --- failures and restarts ------------------------------------------------------------


async def test_a_crash_in_a_run_fails_the_message_span_and_the_restart_is_a_run_event(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    listener = system.spawn(Listener, name="listener")
    board.crashes_left = 1

    async def scenario(ctx: Any) -> Any:
        board.handled = asyncio.get_running_loop().create_future()
        listener.tell(Note("twice"))
        return await board.handled  # the restarted listener handles it again

    assert await in_a_run(system, scenario) == "twice"

    crashed, redelivered = by_actor(spans, "/listener")
    assert (crashed.status, crashed.error_type) == ("error", "RuntimeError")
    assert [(e.name, e.attributes) for e in crashed.events] == [
        ("actor_failed", {"error_type": "RuntimeError",
                          "message": "kept for redelivery after the restart"})]
    assert (redelivered.status, redelivered.attributes["redelivery"]) == ("ok", 1)
    [run] = of_kind(spans, SpanKind.RUN)
    [restarted] = [event for event in run.events if event.name == "actor_restarted"]
    assert restarted.attributes == {"actor": "/listener", "restarts": 1,
                                    "error_type": "RuntimeError"}


async def test_a_poison_message_says_it_was_dead_lettered(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    listener = system.spawn(Listener, name="listener", poison_after=1)
    board.crashes_left = 1

    async def scenario(ctx: Any) -> Any:
        listener.tell(Note("poison"))
        return await listener.ask(Note("after"))  # handled once the restart is done

    assert await in_a_run(system, scenario) == "AFTER"

    crashed, after = by_actor(spans, "/listener")
    assert crashed.events[0].attributes["message"] == "dead-lettered as poison"
    assert after.status == "ok"


async def test_an_actor_that_crashed_in_a_run_and_is_not_restarted_is_a_run_event(
        system: roost.ActorSystem, spans: list[Span], board: Board) -> None:
    listener = system.spawn(Listener, name="listener", restart="temporary")
    board.crashes_left = 1

    async def scenario(ctx: Any) -> Any:
        listener.tell(Note("last words"))
        terminated = await system.join(listener)
        return str(terminated.reason)

    assert await in_a_run(system, scenario) == "failure"

    [run] = of_kind(spans, SpanKind.RUN)
    [stopped] = [event for event in run.events if event.name == "actor_stopped"]
    assert stopped.attributes == {"actor": "/listener", "reason": "failure",
                                  "error_type": "RuntimeError"}


# --- usage ----------------------------------------------------------------------------


async def test_reported_usage_goes_on_the_message_span_with_its_cost(tmp_path: Path) -> None:
    spans: list[Span] = []
    prices = {"large": roost.Price(input_per_million=10.0, output_per_million=30.0)}
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical", prices=prices) as system:
        system.tracer.add_sink(spans.append)

        async def scenario(ctx: Any) -> Any:
            ctx.report_usage(roost.Usage("large", input_tokens=2000, output_tokens=1000))
            ctx.report_usage(roost.Usage("unpriced", input_tokens=5))
            return "ok"

        await in_a_run(system, scenario)

    [message] = of_kind(spans, SpanKind.MESSAGE)
    assert (message.attributes["gen_ai.usage.input_tokens"],
            message.attributes["gen_ai.usage.output_tokens"]) == (2005, 1000)
    assert message.attributes["roost.cost"] == pytest.approx(0.05)
    [run] = of_kind(spans, SpanKind.RUN)
    assert run.attributes["gen_ai.usage.input_tokens"] == 2005
    assert run.attributes["roost.cost"] == pytest.approx(0.05)


async def test_reporting_usage_outside_a_run_records_nothing_and_does_not_fail(
        system: roost.ActorSystem, spans: list[Span]) -> None:
    class Model(roost.Actor):
        async def receive(self, message: Any) -> str:
            self.ctx.report_usage(roost.Usage("large", 1, 1))
            return "answered"

    assert await system.spawn(Model).ask("question") == "answered"
    assert spans == []


@pytest.mark.parametrize("usage", [
    {"model": "large", "input_tokens": 1},
    roost.Usage("large", input_tokens=-1),
    roost.Usage("large", input_tokens="5"),  # type: ignore[arg-type]
])
async def test_reporting_something_else_than_a_usage_names_what_to_pass(
        system: roost.ActorSystem, usage: Any) -> None:
    class Model(roost.Actor):
        async def receive(self, message: Any) -> None:
            self.ctx.report_usage(usage)

    with pytest.raises(ConfigurationError, match=r"/model: report_usage takes "
                                                 r"roost\.Usage\(model: str, input_tokens: int"):
        await system.spawn(Model, name="model").ask("question")
