"""Span records: what one unit of work in a trace did, when, and how it ended.

A span is stored (LMDB `traces` database) and exported (OpenTelemetry), so it is a
frozen `msgspec.Struct` with a stable tag and a schema version. Times are wall-clock
nanoseconds since the epoch (`time.time_ns()`), as OpenTelemetry has them.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec


class SpanKind(enum.StrEnum):
    """What a span stands for."""

    RUN = "run"  # one pipeline run, from its start (or resume) to its end
    STEP = "step"  # one step of a run, over all its attempts
    STEP_ATTEMPT = "step_attempt"  # one attempt of a step (a worker's handling, or a tool call)
    TOOL_CALL = "tool_call"  # one `tools.call`, over dedup, breaker and retries
    TOOL_ATTEMPT = "tool_attempt"  # one execution of the tool's function
    MESSAGE = "message"  # one message handled by an actor inside a run
    GATE = "gate"  # a run waiting for a person


class SpanEvent(msgspec.Struct, frozen=True, gc=False):
    """Something that happened at one moment of a span (a retry, a restart, a checkpoint)."""

    name: str
    time_ns: int
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)


class Usage(msgspec.Struct, frozen=True, gc=False):
    """Tokens a model call used, reported by a step or a tool (`ctx.report_usage(...)`, or a
    result with a `usage` field). A price table turns it into cost."""

    model: str
    input_tokens: int = 0
    output_tokens: int = 0


class Span(msgspec.Struct, frozen=True, gc=False, tag="span", tag_field="record"):
    """One finished span.

    Attributes:
        trace_id: 32 hex digits shared by every span of one trace.
        span_id: 16 hex digits, unique in the trace.
        parent_span_id: the span this one happened inside, or None for a root.
        name: what it was, e.g. `run support-email`, `step draft`, `tool send_email`.
        kind: see `SpanKind`.
        actor: the path of the actor that did it, if any.
        run_id: the pipeline run it belongs to, if any.
        start_ns: when it started (wall clock, ns since the epoch).
        end_ns: when it ended.
        status: `ok` or `error`.
        error_type: the error's class name, when `status` is `error`.
        error_message: the error's message, when `status` is `error`.
        attributes: what it was about (payloads, tokens, cost, keys, ...), JSON-like values.
        events: what happened during it, in time order.
        schema: the record's schema version.
    """

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    actor: str | None = None
    run_id: str | None = None
    status: str = "ok"
    error_type: str | None = None
    error_message: str | None = None
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    events: list[SpanEvent] = msgspec.field(default_factory=list)
    schema: int = 1

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns
