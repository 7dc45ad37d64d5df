"""Tests of roost/trace.py: trace ids and parent spans flow from hop to hop on their own."""

from __future__ import annotations

import re
import time
from typing import Any

import anyio
import pytest

import roost
from roost.mailbox import Envelope
from roost.mailbox.envelope import current_envelope
from roost.pipelines.run import run_trace_id
from roost.trace import TraceContext, new_trace_id

HEX32 = re.compile(r"[0-9a-f]{32}")
HEX16 = re.compile(r"[0-9a-f]{16}")


class Seen(roost.Message, frozen=True):
    """What one actor saw while handling a message: its trace and the sender's span."""

    trace: TraceContext
    parent_span: str | None


def seen_here() -> Seen:
    envelope = current_envelope()
    assert envelope is not None
    incoming = envelope.trace
    trace = roost.current_trace()
    assert trace is not None
    return Seen(trace, None if incoming is None else incoming.span_id)


class Downstream(roost.Actor):
    """Reports what it saw: as the reply to an ask, and into `told` for a tell."""

    def __init__(self, told: list[Seen], got: anyio.Event) -> None:
        self.told = told
        self.got = got

    async def receive(self, message: Any) -> Any:
        seen = seen_here()
        if message == "tell":
            self.told.append(seen)
            self.got.set()
        return seen


class Upstream(roost.Actor):
    """Passes the message to `downstream` by ask or tell; replies with both sides' view."""

    def __init__(self, downstream: roost.ActorRef) -> None:
        self.downstream = downstream

    async def receive(self, message: Any) -> Any:
        mine = seen_here()
        if message == "tell":
            self.downstream.tell("tell")
            return mine, None
        return mine, await self.downstream.ask("ask")


@pytest.fixture
def told() -> list[Seen]:
    return []


@pytest.fixture
def got() -> anyio.Event:
    return anyio.Event()


@pytest.fixture
def pair(
    system: roost.ActorSystem, told: list[Seen], got: anyio.Event
) -> tuple[roost.ActorRef, roost.ActorRef]:
    b = system.spawn(Downstream, told, got, name="b")
    a = system.spawn(Upstream, b, name="a")
    return a, b


# --- the context itself -----------------------------------------------------------------------


def test_a_new_trace_has_a_random_w3c_trace_id_and_no_parent_span() -> None:
    first = TraceContext.new(run_id="run-1")
    second = TraceContext.new()

    assert HEX32.fullmatch(first.trace_id)
    assert first.span_id is None
    assert first.run_id == "run-1"
    assert first.trace_id != second.trace_id


def test_trace_ids_sort_by_creation_time_and_begin_with_it_in_ms() -> None:
    before = time.time_ns() // 1_000_000
    ids = []
    for _ in range(3):
        ids.append(new_trace_id())
        time.sleep(0.002)
    after = time.time_ns() // 1_000_000

    assert ids == sorted(ids) and len(set(ids)) == 3
    assert all(HEX32.fullmatch(trace_id) for trace_id in ids)
    assert before <= int(ids[0][:12], 16) <= int(ids[-1][:12], 16) <= after
    assert len({new_trace_id() for _ in range(1000)}) == 1000  # unique within one ms too


def test_a_runs_trace_id_is_derived_from_the_run_and_sorts_by_its_creation_time() -> None:
    first = run_trace_id("run-1", 1_700_000_000.0)
    later = run_trace_id("run-0", 1_700_000_000.002)

    assert first == run_trace_id("run-1", 1_700_000_000.0)  # a resumed run continues it
    assert HEX32.fullmatch(first) and HEX32.fullmatch(later)
    assert int(first[:12], 16) == 1_700_000_000_000 and first < later
    assert run_trace_id("run-2", 1_700_000_000.0) != first


def test_current_trace_is_none_outside_any_actor() -> None:
    assert roost.current_trace() is None


@pytest.mark.anyio
async def test_current_trace_is_none_in_a_test_task_while_actors_run(
    system: roost.ActorSystem, pair: tuple[roost.ActorRef, roost.ActorRef]
) -> None:
    a, _ = pair
    await a.ask("ask")

    assert roost.current_trace() is None


# --- propagation ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_message_from_outside_starts_a_trace_for_its_handler(
    pair: tuple[roost.ActorRef, roost.ActorRef],
) -> None:
    _, b = pair

    seen: Seen = await b.ask("hello")

    assert seen.parent_span is None  # nothing sent it from inside a trace
    assert HEX32.fullmatch(seen.trace.trace_id)
    assert seen.trace.span_id is not None and HEX16.fullmatch(seen.trace.span_id)


@pytest.mark.anyio
async def test_an_ask_made_while_handling_carries_the_trace_and_the_span_to_the_next_hop(
    pair: tuple[roost.ActorRef, roost.ActorRef],
) -> None:
    a, _ = pair

    at_a, at_b = await a.ask("ask")

    assert at_b.trace.trace_id == at_a.trace.trace_id
    assert at_b.parent_span == at_a.trace.span_id  # A's span is B's parent
    assert at_b.trace.span_id != at_a.trace.span_id  # B handles it in a span of its own


@pytest.mark.anyio
async def test_a_tell_made_while_handling_carries_the_trace_and_the_span_to_the_next_hop(
    pair: tuple[roost.ActorRef, roost.ActorRef], told: list[Seen], got: anyio.Event
) -> None:
    a, _ = pair

    at_a, _ = await a.ask("tell")
    await got.wait()

    [at_b] = told
    assert at_b.trace.trace_id == at_a.trace.trace_id
    assert at_b.parent_span == at_a.trace.span_id


@pytest.mark.anyio
async def test_each_new_message_from_outside_starts_a_new_trace(
    pair: tuple[roost.ActorRef, roost.ActorRef],
) -> None:
    a, _ = pair

    first_a, first_b = await a.ask("ask")
    second_a, second_b = await a.ask("ask")

    assert first_a.trace.trace_id != second_a.trace.trace_id
    assert first_b.trace.trace_id == first_a.trace.trace_id
    assert second_b.trace.trace_id == second_a.trace.trace_id


@pytest.mark.anyio
async def test_current_trace_is_the_same_throughout_one_handling(system: roost.ActorSystem) -> None:
    class Twice(roost.Actor):
        async def receive(self, message: Any) -> Any:
            first = roost.current_trace()
            await anyio.lowlevel.checkpoint()
            return first, roost.current_trace()

    ref = system.spawn(Twice, name="twice")

    first, second = await ref.ask("go")

    assert first is not None and first == second


def test_a_handling_continues_its_incoming_trace_and_run_in_a_span_of_its_own() -> None:
    incoming = TraceContext("ab" * 16, "cd" * 8, "run-42")
    envelope = Envelope("message", trace=incoming)

    outgoing = envelope.trace_context()

    assert (outgoing.trace_id, outgoing.run_id) == (incoming.trace_id, "run-42")
    assert outgoing.span_id is not None and HEX16.fullmatch(outgoing.span_id)
    assert outgoing.span_id != incoming.span_id
    assert envelope.trace_context() is outgoing  # created once, then kept


def test_a_steps_request_does_not_pass_its_step_on_to_what_its_handler_sends() -> None:
    incoming = TraceContext("ab" * 16, "cd" * 8, "run-42", "draft")
    envelope = Envelope("message", trace=incoming)

    outgoing = envelope.trace_context()

    assert (outgoing.trace_id, outgoing.run_id, outgoing.step) == (
        incoming.trace_id, "run-42", None)


def test_a_handling_without_an_incoming_trace_starts_one() -> None:
    envelope = Envelope("message")

    outgoing = envelope.trace_context()

    assert HEX32.fullmatch(outgoing.trace_id)
    assert outgoing.run_id is None
    assert envelope.trace is None  # the incoming side stays as it came


@pytest.mark.anyio
async def test_every_event_logged_inside_an_actor_carries_its_path_and_trace_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    import structlog

    class Chatty(roost.Actor):
        async def receive(self, message: Any) -> Any:
            structlog.get_logger("app").warning("drafted_reply")
            return roost.current_trace()

    async with roost.ActorSystem(log_format="json", log_level="warning") as system:
        trace = await system.spawn(Chatty, name="chatty").ask("go")
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines()
              if '"drafted_reply"' in line]
    assert len(events) == 1
    assert events[0]["actor"] == "/chatty"
    assert events[0]["trace_id"] == trace.trace_id
