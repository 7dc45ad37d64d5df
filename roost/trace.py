"""Trace context: the trace id, parent span id and run id that every message carries.

A `tell` or `ask` made while an actor handles a message inherits that message's
trace, so one request can be followed across every hop. Ids are created lazily:
a message sent from outside any actor carries no context until something needs one.
"""

from __future__ import annotations

import os
import random
import time
from contextvars import ContextVar
from typing import Any

import msgspec

# Trace ids need to be unique, not secret: a seeded generator avoids a syscall per id.
# A forked child reseeds, or it would repeat its parent's ids.
_random = random.Random(os.urandom(16))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(16)))

#: The actor cell whose task is running (None outside any actor). Set once per drain
#: task; the cell's `current` attribute is the envelope being handled.
handling: ContextVar[Any] = ContextVar("roost_handling", default=None)


#: The caller's trace while a tool-proxy task runs a tool call (None elsewhere), so a
#: tool's logs, messages and nested calls belong to the caller's trace and run.
call_trace: ContextVar[TraceContext | None] = ContextVar("roost_call_trace", default=None)


def new_trace_id() -> str:
    """A 128-bit trace id in the W3C/OpenTelemetry hex form that sorts by creation time.

    Its first 12 hex digits are the time in ms, the other 20 random (like a UUIDv7): the
    trace store keys spans by trace id, so time-ordered ids append new spans to its
    B-tree where random ones would scatter them over every page of a growing store.
    """
    return f"{time.time_ns() // 1_000_000 & 0xFFFF_FFFF_FFFF:012x}{_random.getrandbits(80):020x}"


def new_span_id() -> str:
    """A random 64-bit span id in the W3C/OpenTelemetry hex form."""
    return _random.getrandbits(64).to_bytes(8, "big").hex()


class TraceContext(msgspec.Struct, frozen=True, gc=False):
    """Where a message comes from in a trace: its trace id, the sending span, and the run.

    Attributes:
        trace_id: 32 hex digits shared by every hop of one request.
        span_id: the span that sent the message (the receiver's parent span).
        run_id: the pipeline run the message belongs to, if any.
        step: set only on a run's request to a worker: the step it asks for (`name`,
            `name/3` for item 3 of a map step, `name/fallback` for its fallback).
            Tool calls made while handling that request derive their idempotency
            keys from the run and this step. Messages the worker sends on do not
            carry it: each of them is a unit of work of its own.
    """

    trace_id: str
    span_id: str | None = None
    run_id: str | None = None
    step: str | None = None

    @classmethod
    def new(cls, run_id: str | None = None) -> TraceContext:
        """Start a new trace (for a message that arrives from outside any actor)."""
        return cls(new_trace_id(), None, run_id)


def current_trace() -> TraceContext | None:
    """The trace context of the message being handled (or the tool call being run), else None.

    Calling it inside an actor starts a trace for a message that had none, so the
    id it returns is the one that messages sent from here will carry.
    """
    cell = handling.get()
    envelope = None if cell is None else cell.current
    return call_trace.get() if envelope is None else envelope.trace_context()
