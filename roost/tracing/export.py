"""Export: mirror roost's spans to OpenTelemetry, so any OTLP backend receives them.

`OtelExporter` is a tracer sink (`system.tracer.add_sink(exporter)`, or
`ActorSystem(otlp_endpoint=...)`). Each finished roost `Span` becomes an
OpenTelemetry SDK `ReadableSpan` built with roost's own ids, so the trace id, span
id and parent link a backend shows are the ones `roost trace` prints. The SDK's
`BatchSpanProcessor` queues it (a deque append, never blocking the event loop;
a full queue drops spans, as the SDK does) and a background thread sends batches
over OTLP/HTTP.

Attributes map to what OpenTelemetry can hold: strings, booleans, numbers and the
GenAI attributes (`gen_ai.request.model`, `gen_ai.usage.*`) are kept as they are;
payloads and other structured values (step inputs and results, tool arguments)
are JSON-encoded strings. Needs the optional extra `roost[otel]`.
"""

from __future__ import annotations

import atexit
import threading
from collections.abc import Sequence
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

import msgspec

from roost._logging import get_logger
from roost.errors import ConfigurationError, ExtraNotInstalled
from roost.tracing.spans import Span

_log = get_logger("roost")

try:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
except ImportError as error:  # the extra is optional: fail when an exporter is made
    _MISSING: str | None = error.name or "opentelemetry-sdk"
else:
    _MISSING = None
    _SAMPLED = TraceFlags(TraceFlags.SAMPLED)

    class _Counting(SpanExporter):
        """Wraps the exporter that sends spans, counting the spans it delivered, so that a
        shutdown cut short can say how many it leaves unsent."""

        def __init__(self, exporter: SpanExporter) -> None:
            self.exporter = exporter
            self.delivered = 0

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            result = self.exporter.export(spans)
            if result is SpanExportResult.SUCCESS:
                self.delivered += len(spans)
            return result

        def shutdown(self) -> None:
            self.exporter.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.exporter.force_flush(timeout_millis)

_ENCODER = msgspec.json.Encoder()
_INT64 = 2**63
#: The default OTLP/HTTP path for traces, added to an endpoint given without a path.
TRACES_PATH = "/v1/traces"


def _require_sdk() -> None:
    if _MISSING is not None:
        raise ExtraNotInstalled("exporting spans to OpenTelemetry", "otel", _MISSING)


def traces_url(endpoint: str) -> str:
    """`endpoint` as an OTLP/HTTP traces URL: a URL without a path gets `/v1/traces`."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError(
            f"OTLP endpoint {endpoint!r} is not an http(s) URL; give one like "
            "'http://localhost:4318' (the collector's OTLP/HTTP port) or a full "
            "'http://host:4318/v1/traces'")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + TRACES_PATH


class OtelExporter:
    """A tracer sink that mirrors every finished roost span to OpenTelemetry.

    Args:
        endpoint: where to send spans over OTLP/HTTP (`http://host:4318`, the path
            `/v1/traces` is added when missing); None uses OpenTelemetry's
            environment (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, ...) or its default,
            `http://localhost:4318/v1/traces`.
        headers: HTTP headers sent with every export (an API key, say).
        exporter: any SDK `SpanExporter` to use instead of OTLP/HTTP (the one your
            application already configured, or an in-memory one in tests).
        resource: the OpenTelemetry resource the spans come from; by default one
            with `service.name` = `service_name` (plus `OTEL_RESOURCE_ATTRIBUTES`).
        service_name: the `service.name` of the default resource.
        timeout: seconds one export may take, retries included; also the longest
            `shutdown` waits in all (what is still unsent then is dropped, and logged).
        schedule_delay: seconds between exports of a partial batch.
        max_queue_size: spans queued for export at most; more are dropped by the SDK.

    Raises:
        ExtraNotInstalled: `roost[otel]` is not installed.
        ConfigurationError: `endpoint` is not an http(s) URL.

    Example::

        exporter = OtelExporter(endpoint="http://collector:4318")
        system.tracer.add_sink(exporter)      # and exporter.shutdown() when done
    """

    def __init__(self, endpoint: str | None = None, *, headers: dict[str, str] | None = None,
                 exporter: SpanExporter | None = None, resource: Resource | None = None,
                 service_name: str = "roost", timeout: float = 10.0, schedule_delay: float = 1.0,
                 max_queue_size: int = 8192) -> None:
        _require_sdk()
        if exporter is None:
            try:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            except ImportError as error:
                raise ExtraNotInstalled("exporting spans over OTLP/HTTP", "otel",
                                        error.name or "opentelemetry-exporter-otlp-proto-http"
                                        ) from error
            exporter = OTLPSpanExporter(
                endpoint=None if endpoint is None else traces_url(endpoint), headers=headers,
                timeout=timeout)
        self.resource = resource or Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope("roost", _version())
        self._timeout = timeout
        self._sender = _Counting(exporter)
        self._processor = BatchSpanProcessor(
            self._sender, max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay * 1000.0,
            max_export_batch_size=min(512, max_queue_size))
        self._closed = False
        #: Spans handed to the SDK.
        self.exported = 0
        # Spans still queued when the process exits are sent, as the SDK's own provider does.
        atexit.register(self.shutdown)

    def __call__(self, span: Span) -> None:
        """Queue `span` for export (the tracer calls this for every finished span)."""
        if self._closed:
            return
        self._processor.on_end(self.convert(span))
        self.exported += 1

    def convert(self, span: Span) -> ReadableSpan:
        """`span` as an OpenTelemetry `ReadableSpan` with the same ids, times and contents.

        Raises:
            ValueError: an id is not hex of the OpenTelemetry length (32 and 16 digits).
        """
        trace_id = _hex_id(span.trace_id, 32, "trace id")
        parent = None
        if span.parent_span_id is not None:
            parent = SpanContext(trace_id, _hex_id(span.parent_span_id, 16, "parent span id"),
                                 is_remote=False, trace_flags=_SAMPLED)
        attributes = otel_attributes(span.attributes)
        attributes["roost.kind"] = str(span.kind)
        if span.actor is not None:
            attributes["roost.actor"] = span.actor
        if span.run_id is not None:
            attributes["roost.run_id"] = span.run_id
        if span.status == "error":
            status = Status(StatusCode.ERROR, f"{span.error_type}: {span.error_message}")
            if span.error_type is not None:
                attributes["error.type"] = span.error_type
        else:
            status = Status(StatusCode.OK)
        return ReadableSpan(
            name=span.name,
            context=SpanContext(trace_id, _hex_id(span.span_id, 16, "span id"),
                                is_remote=False, trace_flags=_SAMPLED),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            events=[Event(event.name, otel_attributes(event.attributes), event.time_ns)
                    for event in span.events],
            kind=SpanKind.INTERNAL,
            status=status,
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=self._scope,
        )

    def force_flush(self) -> bool:
        """Send every queued span now, waiting at most `timeout` per batch (blocks: call it
        off the event loop); False once shut down."""
        return bool(self._processor.force_flush())

    def shutdown(self) -> None:
        """Send what is queued and stop the export thread, waiting at most `timeout` (blocks:
        call it off the event loop); spans ended later are ignored. A second call does
        nothing. Spans still unsent at the deadline are dropped, with a warning counting
        them."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.shutdown)
        # The SDK's shutdown waits up to 30 s, whatever the exporter's timeout: it runs in a
        # daemon thread of its own, left behind at the deadline.
        closing = threading.Thread(target=self._processor.shutdown, name="roost-otel-shutdown",
                                   daemon=True)
        closing.start()
        closing.join(self._timeout)
        if closing.is_alive():
            _log.warning("otel_export_shutdown_timed_out", timeout=self._timeout,
                         dropped=self.exported - self._sender.delivered)


def otel_attributes(attributes: dict[str, Any]) -> dict[str, Any]:
    """roost attributes as OpenTelemetry ones: str, bool, float and int64 values as they
    are, None left out, anything else (payloads, lists, dicts, big ints) as JSON text."""
    converted: dict[str, Any] = {}
    for key, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, str | bool | float) or (
                isinstance(value, int) and -_INT64 <= value < _INT64):
            converted[key] = value
        else:
            converted[key] = _json(value)
    return converted


def _json(value: Any) -> str:
    try:
        return _ENCODER.encode(value).decode()
    except (TypeError, ValueError, msgspec.EncodeError):
        return repr(value)


def _hex_id(value: str, digits: int, what: str) -> int:
    try:
        number = int(value, 16) if len(value) == digits else 0
    except ValueError:
        number = 0
    if not number:
        raise ValueError(f"span {what} {value!r} is not {digits} hex digits (and not all zero), "
                         "so OpenTelemetry cannot carry it")
    return number


def _version() -> str:
    try:
        return metadata.version("roost")
    except metadata.PackageNotFoundError:
        return "unknown"

