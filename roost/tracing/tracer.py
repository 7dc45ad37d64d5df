"""The tracer: starts spans, shapes their payloads, and hands finished spans to its sinks.

Recording never blocks and never fails the work it records: a span is a few Python
objects until it ends, then each sink (the trace store's buffer, an exporter) takes
it. Payloads (step inputs and results, tool arguments and results) are encoded with
msgspec to JSON-like values, cut to `payload_limit` bytes with a marker, and passed
through `redact` before any sink sees them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
import structlog

from roost.trace import new_span_id
from roost.tracing.spans import Span, SpanEvent, SpanKind, Usage

_log = structlog.get_logger("roost")
_ENCODER = msgspec.json.Encoder()

#: `redact(name, value)`: the payload named `name` (`step.input`, `tool.arguments`, ...)
#: as it will be stored; returns what to store instead (e.g. with secrets masked).
Redact = Callable[[str, Any], Any]
Sink = Callable[[Span], None]


class Price(msgspec.Struct, frozen=True):
    """A model's price, in the currency of your choice per million tokens."""

    input_per_million: float
    output_per_million: float


class OpenSpan:
    """A span being recorded. Add attributes and events, then `end()` it once."""

    __slots__ = ("_ended", "_tracer", "actor", "attributes", "error_message", "error_type",
                 "events", "kind", "name", "parent_span_id", "run_id", "span_id", "start_ns",
                 "status", "trace_id")

    def __init__(self, tracer: Tracer, name: str, kind: SpanKind, trace_id: str, span_id: str,
                 parent_span_id: str | None, actor: str | None, run_id: str | None,
                 start_ns: int, attributes: dict[str, Any]) -> None:
        self._tracer = tracer
        self._ended = False
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_span_id = parent_span_id
        self.actor = actor
        self.run_id = run_id
        self.start_ns = start_ns
        self.attributes = attributes
        self.events: list[SpanEvent] = []
        self.status = "ok"
        self.error_type: str | None = None
        self.error_message: str | None = None

    def set(self, **attributes: Any) -> None:
        """Set attributes (JSON-like values)."""
        self.attributes.update(attributes)

    def event(self, name: str, **attributes: Any) -> None:
        """Record that `name` happened now."""
        self.events.append(SpanEvent(name, self._tracer.now_ns(), attributes))

    def payload(self, name: str, value: Any) -> None:
        """Keep a payload (encoded, cut to size, redacted) as the attribute `name`."""
        self.attributes[name] = self._tracer.payload(name, value)

    def usage(self, usage: Usage) -> float | None:
        """Record a model's token usage (OpenTelemetry GenAI attributes) and its cost, if
        the price table knows the model; returns the cost."""
        attributes = self.attributes
        attributes["gen_ai.request.model"] = usage.model
        attributes["gen_ai.usage.input_tokens"] = (
            attributes.get("gen_ai.usage.input_tokens", 0) + usage.input_tokens)
        attributes["gen_ai.usage.output_tokens"] = (
            attributes.get("gen_ai.usage.output_tokens", 0) + usage.output_tokens)
        cost = self._tracer.cost(usage)
        if cost is not None:
            attributes["roost.cost"] = attributes.get("roost.cost", 0.0) + cost
        return cost

    def fail(self, error: BaseException) -> None:
        """Mark the span as ended in `error`."""
        self.status = "error"
        self.error_type = type(error).__name__
        self.error_message = str(error)

    def end(self) -> Span | None:
        """Finish the span and hand it to the sinks (a second call does nothing)."""
        if self._ended:
            return None
        self._ended = True
        span = Span(
            trace_id=self.trace_id, span_id=self.span_id, parent_span_id=self.parent_span_id,
            name=self.name, kind=self.kind, start_ns=self.start_ns,
            end_ns=self._tracer.now_ns(), actor=self.actor, run_id=self.run_id,
            status=self.status, error_type=self.error_type, error_message=self.error_message,
            attributes=self.attributes, events=self.events)
        self._tracer.emit(span)
        return span


class Tracer:
    """Starts spans and hands finished ones to its sinks.

    Args:
        payload_limit: the most bytes of one encoded payload kept on a span; longer
            ones are cut, with a marker saying how long they were.
        redact: called on every payload before it is kept (see `Redact`).
        prices: the price per model for turning token usage into cost (none built in).
        clock_ns: wall-clock nanoseconds (inject in tests).
    """

    def __init__(self, *, payload_limit: int = 8192, redact: Redact | None = None,
                 prices: Mapping[str, Price] | None = None,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.payload_limit = payload_limit
        self.redact = redact
        self.prices = dict(prices or {})
        self.now_ns = clock_ns
        self._sinks: list[Sink] = []
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        """Whether any sink takes spans (recording is skipped when none does)."""
        return bool(self._sinks)

    def add_sink(self, sink: Sink) -> None:
        """Give every finished span to `sink` too (it must not block)."""
        self._sinks.append(sink)

    def start(self, name: str, kind: SpanKind, *, trace_id: str, parent_span_id: str | None = None,
              span_id: str | None = None, actor: str | None = None, run_id: str | None = None,
              **attributes: Any) -> OpenSpan:
        """Start a span now."""
        return OpenSpan(self, name, kind, trace_id, span_id or new_span_id(), parent_span_id,
                        actor, run_id, self.now_ns(), attributes)

    def emit(self, span: Span) -> None:
        """Hand a finished span to every sink; a failing sink drops it, never the caller."""
        for sink in self._sinks:
            try:
                sink(span)
            except Exception as error:  # recording must never fail the work it records
                self.dropped += 1
                if self.dropped == 1:
                    _log.warning("span_dropped", sink=getattr(sink, "__qualname__", repr(sink)),
                                 error_type=type(error).__name__, error=str(error))

    def payload(self, name: str, value: Any) -> Any:
        """`value` as a JSON-like value no longer than `payload_limit` bytes, redacted.

        An unencodable value becomes a typed placeholder; a long one a marker with
        its size and the start of its JSON text.
        """
        try:
            encoded = _ENCODER.encode(value)
        except (TypeError, ValueError, msgspec.EncodeError):
            kept: Any = {"roost.unencodable": type(value).__qualname__}
        else:
            if len(encoded) > self.payload_limit:
                kept = {"roost.truncated": True, "bytes": len(encoded),
                        "preview": encoded[:self.payload_limit].decode(errors="replace")}
            else:
                kept = msgspec.json.decode(encoded)
        if self.redact is not None:
            try:
                kept = self.redact(name, kept)
            except Exception as error:  # never store what the hook failed to clean
                kept = {"roost.redaction_failed": type(error).__name__}
        return kept

    def cost(self, usage: Usage) -> float | None:
        """What `usage` cost by the price table, or None for a model it does not list."""
        price = self.prices.get(usage.model)
        if price is None:
            return None
        return (usage.input_tokens * price.input_per_million
                + usage.output_tokens * price.output_per_million) / 1_000_000
