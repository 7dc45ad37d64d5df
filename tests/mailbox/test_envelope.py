"""Tests of roost/mailbox/envelope.py: message ids, the numbering of tool calls, forwarding."""

from __future__ import annotations

import re

from roost.mailbox.envelope import Envelope, new_message_id
from roost.trace import TraceContext


def test_a_message_id_is_made_once_and_kept() -> None:
    envelope = Envelope("message")
    assert envelope.unit is None  # sending made none
    first = envelope.message_id()
    assert re.fullmatch(r"[0-9a-f]{16}-[0-9]+", first)
    assert envelope.message_id() == first


def test_message_ids_never_repeat() -> None:
    ids = {Envelope("message").message_id() for _ in range(1000)} | {new_message_id()}
    assert len(ids) == 1001


def test_tool_calls_are_numbered_from_zero_again_in_each_redelivery() -> None:
    envelope = Envelope("message")
    assert [envelope.next_call() for _ in range(3)] == [0, 1, 2]
    envelope.crashes += 1  # what a crash does before redelivering the same envelope
    assert [envelope.next_call() for _ in range(2)] == [0, 1]
    assert envelope.message_id() == envelope.message_id()


def test_a_forwarded_message_is_its_own_unit_of_work_and_stays_a_steps_request() -> None:
    request = TraceContext("ab" * 16, "cd" * 8, "run-42", "draft/2")
    envelope = Envelope("message", None, None, request)
    forwarded = envelope.forwarded()
    # Its own id (its tool calls must not share keys with the forwarder's), derived from
    # the original's so that a redelivery forwards under the same id again.
    assert forwarded.message_id() == f"{envelope.message_id()}>0"
    assert envelope.forwarded().message_id() == f"{envelope.message_id()}>1"
    envelope.crashes += 1
    assert envelope.forwarded().message_id() == f"{envelope.message_id()}>0"
    assert forwarded.trace is not None
    assert (forwarded.trace.trace_id, forwarded.trace.run_id, forwarded.trace.step) == (
        request.trace_id, "run-42", "draft/2")
    assert forwarded.trace.span_id == envelope.trace_context().span_id
    envelope.next_call()
    assert forwarded.next_call() == 0  # its handling numbers its own calls
