"""The tracer: starts spans, shapes their payloads, and hands finished spans to its sinks.

Recording never blocks and never fails the work it records: a span is a few Python
objects until it ends, then each sink (the trace store's buffer, an exporter) takes
it. Payloads (step inputs and results, tool arguments and results) are encoded with
msgspec to JSON-like values, passed whole through `redact`, then cut to `payload_limit`
bytes with a marker, before any sink sees them (so a secret `redact` masks is masked in a
long payload too).

The tracer is also where the layers that record a run meet: the run actor lists its
open `run` span under the run's id (`runs`), so that an actor restarting inside the
run can add an event to it (`run_event`) and usage reported anywhere in the run adds
to its totals (`record_usage`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from roost._logging import get_logger
from roost._validate import check_count
from roost.errors import ConfigurationError
from roost.trace import new_span_id
from roost.tracing.spans import Span, SpanEvent, SpanKind, Usage

_log = get_logger("roost")


def _placeholder(value: Any) -> dict[str, str]:
    """What a payload keeps of a value msgspec cannot encode: its type's name."""
    return {"roost.unencodable": type(value).__qualname__}


# A value msgspec cannot encode becomes its placeholder, and the rest of the payload is kept.
_ENCODER = msgspec.json.Encoder(enc_hook=_placeholder)

#: The events of every span that has none: one list, never changed (a finished span is a
#: frozen record), so that a span without events costs no list the collector tracks.
_NO_EVENTS: list[SpanEvent] = []

#: `redact(name, value)`: the payload named `name` (`step.input`, `tool.arguments`, ...)
#: as it will be stored; returns what to store instead (e.g. with secrets masked).
Redact = Callable[[str, Any], Any]
Sink = Callable[[Span], None]


class Price(msgspec.Struct, frozen=True):
    """A model's price, in the currency of your choice per million tokens."""

    input_per_million: float
    output_per_million: float


class UsageTotals(msgspec.Struct, kw_only=True, gc=False):
    """Tokens and cost added up over a run (kept in its checkpoints, so resumes add on).

    Attributes:
        input_tokens: tokens the models read.
        output_tokens: tokens they wrote.
        cost: what the usage of priced models cost (models the price table lacks add 0).
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0

    def plus(self, other: UsageTotals) -> UsageTotals:
        return UsageTotals(input_tokens=self.input_tokens + other.input_tokens,
                           output_tokens=self.output_tokens + other.output_tokens,
                           cost=self.cost + other.cost)


def valid_usage(usage: object) -> bool:
    """Whether `usage` is a `Usage` with a str model and whole token counts >= 0."""
    return (isinstance(usage, Usage) and isinstance(usage.model, str)
            and all(type(n) is int and n >= 0 for n in (usage.input_tokens, usage.output_tokens)))


#: Results that have no `usage` field: looking for one (a missing attribute raises
#: inside `getattr`) would cost more than recording their span.
_PLAIN = frozenset({str, bytes, int, float, bool, list, tuple, type(None)})


def usage_of(result: Any) -> Usage | None:
    """The `Usage` a step's or tool's result carries in a `usage` field (an attribute, or a
    dict key), else None (also for one that is not a valid `Usage`: recording never fails
    the work it records).

    A usage given as a mapping counts too: a result decoded without its types (a tool's
    `-> dict[str, Any]` as recorded, a result read back on resume) carries it as one.
    """
    kind = type(result)
    if kind in _PLAIN:
        return None
    if kind is dict:
        usage = result.get("usage")
    elif isinstance(result, msgspec.Struct):
        usage = getattr(result, "usage", None) if "usage" in result.__struct_fields__ else None
    else:
        usage = result.get("usage") if isinstance(result, dict) else getattr(result, "usage", None)
    if isinstance(usage, dict):
        try:
            usage = msgspec.convert(usage, Usage)
        except msgspec.ValidationError:
            return None
    return usage if valid_usage(usage) else None


class OpenSpan(msgspec.Struct):
    """A span being recorded. Add attributes and events, then `end()` it once.

    A struct for its C-fast construction: a run starts a dozen spans or more. Only the
    tracer creates them (`Tracer.start`, `OpenSpan.child`).
    """

    _tracer: Tracer
    name: str
    kind: SpanKind
    trace_id: str
    span_id: str
    parent_span_id: str | None
    actor: str | None
    run_id: str | None
    start_ns: int
    attributes: dict[str, Any]
    events: list[SpanEvent] | None = None  # made by the first event: most spans have none
    status: str = "ok"
    error_type: str | None = None
    error_message: str | None = None
    _ended: bool = False

    def set(self, **attributes: Any) -> None:
        """Set attributes (JSON-like values)."""
        self.attributes.update(attributes)

    def event(self, name: str, **attributes: Any) -> None:
        """Record that `name` happened now."""
        event = SpanEvent(name, self._tracer.now_ns(), attributes)
        if self.events is None:
            self.events = [event]
        else:
            self.events.append(event)

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

    def add_totals(self, usage: Usage, cost: float | None) -> None:
        """Add `usage` (reported by a span inside this one) to this span's token and cost
        totals, without naming a model: a run's span adds up every model it used."""
        attributes = self.attributes
        attributes["gen_ai.usage.input_tokens"] = (
            attributes.get("gen_ai.usage.input_tokens", 0) + usage.input_tokens)
        attributes["gen_ai.usage.output_tokens"] = (
            attributes.get("gen_ai.usage.output_tokens", 0) + usage.output_tokens)
        if cost is not None:
            attributes["roost.cost"] = attributes.get("roost.cost", 0.0) + cost

    def totals(self) -> UsageTotals:
        """The tokens and cost this span holds (its own usage, or a run's totals)."""
        attributes = self.attributes
        return UsageTotals(input_tokens=attributes.get("gen_ai.usage.input_tokens", 0),
                           output_tokens=attributes.get("gen_ai.usage.output_tokens", 0),
                           cost=attributes.get("roost.cost", 0.0))

    def child(self, name: str, kind: SpanKind, **attributes: Any) -> OpenSpan:
        """Start a span inside this one (same trace, run and actor)."""
        tracer = self._tracer
        return OpenSpan(tracer, name, kind, self.trace_id, new_span_id(), self.span_id,
                        self.actor, self.run_id, tracer.now_ns(), attributes)

    def fail(self, error: BaseException) -> None:
        """Mark the span as ended in `error`."""
        self.status = "error"
        self.error_type = type(error).__name__
        self.error_message = self._tracer.error_text(str(error))

    def end(self) -> Span | None:
        """Finish the span and hand it to the sinks (a second call does nothing)."""
        if self._ended:
            return None
        self._ended = True
        tracer = self._tracer
        # Positional, in `Span`'s field order: a run records a dozen spans or more.
        span = Span(self.trace_id, self.span_id, self.parent_span_id, self.name, self.kind,
                    self.start_ns, tracer.now_ns(), self.actor, self.run_id, self.status,
                    self.error_type, self.error_message, self.attributes,
                    _NO_EVENTS if self.events is None else self.events)
        tracer.emit(span)
        return span


class Tracer:
    """Starts spans and hands finished ones to its sinks.

    Args:
        payload_limit: the most bytes of one encoded payload kept on a span; longer
            ones are cut, with a marker saying how long they were.
        redact: called on every whole payload before it is cut and kept (see `Redact`).
        prices: the price per model for turning token usage into cost (none built in).
        recording: False turns recording off for good (`ActorSystem(tracing=False)`),
            whatever sinks are added.
        clock_ns: wall-clock nanoseconds (inject in tests).

    Raises:
        ConfigurationError: `payload_limit` is not a whole number > 0, or `redact` is
            neither None nor callable.

    Attributes:
        enabled: whether spans are recorded: recording is on and a sink takes them.
            The runtime checks it before it starts any span, so that tracing with
            nobody listening costs one attribute read.
        runs: the open `run` span of each run in flight here, by run id.
    """

    def __init__(self, *, payload_limit: int = 8192, redact: Redact | None = None,
                 prices: Mapping[str, Price] | None = None, recording: bool = True,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        check_payload_options("Tracer", payload_limit, redact)
        self.payload_limit = payload_limit
        # A str this short is within the limit however JSON escapes it (at most 6 bytes a char).
        self._short_text = payload_limit // 6
        self.redact = redact
        self._redaction_failures: set[str] = set()  # error types logged once each
        self.prices = dict(prices or {})
        self.now_ns = clock_ns
        self.recording = recording
        self._sinks: list[Sink] = []
        self.enabled = False
        self.runs: dict[str, OpenSpan] = {}
        self.dropped = 0

    def add_sink(self, sink: Sink) -> None:
        """Give every finished span to `sink` too (it must not block)."""
        self._sinks.append(sink)
        self.enabled = self.recording

    def start(self, name: str, kind: SpanKind, *, trace_id: str, parent_span_id: str | None = None,
              span_id: str | None = None, actor: str | None = None, run_id: str | None = None,
              **attributes: Any) -> OpenSpan:
        """Start a span now."""
        return OpenSpan(self, name, kind, trace_id, span_id or new_span_id(), parent_span_id,
                        actor, run_id, self.now_ns(), attributes)

    def run_event(self, run_id: str, name: str, **attributes: Any) -> None:
        """Record that `name` happened now on the open span of run `run_id`, if it has one."""
        span = self.runs.get(run_id)
        if span is not None:
            span.event(name, **attributes)

    def record_usage(self, span: OpenSpan, usage: Usage) -> None:
        """Record `usage` on `span` (model, tokens, cost) and add it to its run's totals."""
        cost = span.usage(usage)
        run_id = span.run_id
        if run_id is not None and span.kind is not SpanKind.RUN:
            run = self.runs.get(run_id)
            if run is not None:
                run.add_totals(usage, cost)

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

        A value msgspec cannot encode becomes a typed placeholder, where it is (the
        rest of the payload is kept); a long one a marker with its size and the start
        of its JSON text. `redact` sees the whole payload, before it is cut.
        """
        redact = self.redact
        if redact is None:
            return self._shaped(value)
        return self._shaped(self._redacted(redact, name, self._plain(value)))

    def error_text(self, message: str) -> str:
        """An error's message as spans keep it: passed through `redact` as the payload
        `error.message` (a tool's error may quote what it was sent), its answer as text."""
        redact = self.redact
        if redact is None:
            return message
        kept = self._redacted(redact, "error.message", message)
        return kept if isinstance(kept, str) else _ENCODER.encode(kept).decode()

    def _shaped(self, value: Any) -> Any:
        """`value` encoded and cut to `payload_limit` bytes."""
        if value is None or type(value) is bool or (
                type(value) is str and len(value) <= self._short_text and value.isascii()):
            return value  # already JSON-like and short enough: nothing to encode
        return self._encoded(value)

    def _plain(self, value: Any) -> Any:
        """`value` as the JSON-like value `redact` is given, whole (not cut)."""
        if value is None or type(value) in (bool, str, int, float):
            return value
        try:
            return msgspec.json.decode(_ENCODER.encode(value))
        except (TypeError, ValueError, msgspec.EncodeError):  # e.g. a str that is not UTF-8
            return _placeholder(value)

    def _redacted(self, redact: Redact, name: str, value: Any) -> Any:
        """What `redact` keeps of the payload `name`; a marker if it raised (logged once per
        error type, without the payload: never store what the hook failed to clean)."""
        try:
            return redact(name, value)
        except Exception as error:
            error_type = type(error).__name__
            if error_type not in self._redaction_failures:
                self._redaction_failures.add(error_type)
                _log.error("trace_redaction_failed", payload_name=name, error_type=error_type)
            return {"roost.redaction_failed": error_type}

    def _encoded(self, value: Any) -> Any:
        try:
            encoded = _ENCODER.encode(value)
        except (TypeError, ValueError, msgspec.EncodeError):  # e.g. a str that is not UTF-8
            kept: Any = _placeholder(value)
        else:
            if len(encoded) > self.payload_limit:
                kept = {"roost.truncated": True, "bytes": len(encoded),
                        "preview": encoded[:self.payload_limit].decode(errors="replace")}
            else:
                kept = msgspec.json.decode(encoded)
        return kept

    def cost(self, usage: Usage) -> float | None:
        """What `usage` cost by the price table, or None for a model it does not list."""
        price = self.prices.get(usage.model)
        if price is None:
            return None
        return (usage.input_tokens * price.input_per_million
                + usage.output_tokens * price.output_per_million) / 1_000_000


def check_payload_options(owner: str, payload_limit: Any, redact: Any) -> None:
    """Raise `ConfigurationError` naming `owner` unless `payload_limit` is a whole number
    > 0 and `redact` is None or callable."""
    check_count(owner, "payload_limit", payload_limit, 1)
    if redact is not None and not callable(redact):
        raise ConfigurationError(
            f"{owner}: redact must be a function redact(name, value) -> value, or None; "
            f"got {redact!r}")
