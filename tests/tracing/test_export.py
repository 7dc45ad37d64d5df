"""Tests of roost/tracing/export.py: spans reach a real OTLP/HTTP receiver with roost's ids."""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from structlog.testing import capture_logs

import roost
from roost.errors import ConfigurationError
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.trace import new_trace_id
from roost.tracing import SpanKind, Tracer, Usage
from roost.tracing.export import OtelExporter

pytestmark = pytest.mark.anyio


@dataclass
class Received:
    """A span as an OTLP receiver decoded it."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    events: list[tuple[str, int, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str


@dataclass
class Receiver:
    url: str
    paths: list[str] = field(default_factory=list)
    spans: list[Received] = field(default_factory=list)

    def by_name(self) -> dict[str, Received]:
        return {span.name: span for span in self.spans}


def plain(value: Any) -> Any:
    """An OTLP AnyValue as a Python value."""
    which = value.WhichOneof("value")
    if which == "array_value":
        return [plain(item) for item in value.array_value.values]
    return getattr(value, which)


def attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: plain(pair.value) for pair in pairs}


@pytest.fixture
async def receiver(anyio_backend: str) -> AsyncIterator[Receiver]:
    """An OTLP/HTTP receiver on 127.0.0.1 that decodes every `POST /v1/traces`."""
    found = Receiver(url="")

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        found.paths.append(request.path)
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.spans.append(Received(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name,
                        start_ns=span.start_time_unix_nano, end_ns=span.end_time_unix_nano,
                        status_code=span.status.code, status_message=span.status.message,
                        attributes=attributes(span.attributes),
                        events=[(e.name, e.time_unix_nano, attributes(e.attributes))
                                for e in span.events],
                        resource=resource, scope=scope_spans.scope.name))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    found.url = f"http://{host}:{port}"
    yield found
    await runner.cleanup()


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Reply(msgspec.Struct):
    text: str


STATUS_OK, STATUS_ERROR = 1, 2


async def test_spans_reach_an_otlp_receiver_with_roost_ids_parents_times_status_attributes_and_events(
        receiver: Receiver) -> None:
    async with roost.ActorSystem(name="mail", otlp_endpoint=receiver.url,
                                 log_format=None) as system:
        trace_id = new_trace_id()
        run = system.tracer.start("run support-email", SpanKind.RUN, trace_id=trace_id,
                                  run_id="email-0042", pipeline="support-email")
        step = system.tracer.start("step draft", SpanKind.STEP, trace_id=trace_id,
                                   parent_span_id=run.span_id, actor="/runs/email-0042",
                                   run_id="email-0042", attempt=2, note=None, huge=2**70)
        step.payload("step.output", Reply("hello"))
        step.usage(Usage("small-model", input_tokens=120, output_tokens=30))
        step.event("retry_scheduled", delay=0.5, error={"type": "ToolTimeout"})
        step.fail(ValueError("bad draft"))
        ended_step = step.end()
        ended_run = run.end()
    assert ended_step is not None and ended_run is not None

    assert set(receiver.paths) == {"/v1/traces"}
    spans = receiver.by_name()
    assert set(spans) == {"run support-email", "step draft"}
    root, child = spans["run support-email"], spans["step draft"]
    assert (root.trace_id, root.span_id, root.parent_span_id) == (trace_id, run.span_id, "")
    assert (child.trace_id, child.span_id, child.parent_span_id) == (trace_id, step.span_id,
                                                                     run.span_id)
    assert (child.start_ns, child.end_ns) == (ended_step.start_ns, ended_step.end_ns)
    assert (root.status_code, child.status_code) == (STATUS_OK, STATUS_ERROR)
    assert child.status_message == "ValueError: bad draft"
    assert child.attributes == {
        "roost.kind": "step", "roost.actor": "/runs/email-0042", "roost.run_id": "email-0042",
        "attempt": 2, "huge": str(2**70), "error.type": "ValueError",
        "step.output": '{"text":"hello"}',
        "gen_ai.request.model": "small-model", "gen_ai.usage.input_tokens": 120,
        "gen_ai.usage.output_tokens": 30}
    [(name, time_ns, event_attributes)] = child.events
    assert (name, time_ns) == ("retry_scheduled", ended_step.events[0].time_ns)
    assert event_attributes == {"delay": 0.5, "error": '{"type":"ToolTimeout"}'}
    assert root.resource["service.name"] == "mail"
    assert root.scope == "roost"


class Drafter(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return Reply(f"dear {message.input}")


async def test_a_pipeline_run_reaches_the_receiver_as_the_span_tree_the_trace_store_holds(
        receiver: Receiver, tmp_path: Path) -> None:
    @roost.tool(idempotent=True)
    async def send_email(to: str, body: str) -> str:
        return "sent"

    pipeline = Pipeline("mail", [
        Step("draft", Drafter),
        Step("send", tool="send_email", after="draft",
             args=lambda results, to: {"to": to, "body": results["draft"].text}),
    ], input_type=str)
    async with roost.ActorSystem(store=tmp_path / "store", otlp_endpoint=receiver.url,
                                 log_format="json", log_level="critical") as system:
        system.tools.register(send_email)
        run = await system.pipelines.start(pipeline, "ada@example.org")
        assert (await run.result()).status == "completed"
        stored = await system.traces.get(run.run_id)

    exported = {span.span_id: span for span in receiver.spans if span.trace_id == stored.trace_id}
    assert set(exported) == {span.span_id for span in stored.spans}
    for span in stored.spans:
        mirror = exported[span.span_id]
        assert (mirror.name, mirror.parent_span_id, mirror.start_ns, mirror.end_ns) == (
            span.name, span.parent_span_id or "", span.start_ns, span.end_ns)
        assert mirror.attributes["roost.kind"] == span.kind
        assert mirror.attributes["roost.run_id"] == run.run_id
    [root] = [span for span in exported.values() if not span.parent_span_id]
    assert root.name == "run mail" and root.attributes["run.status"] == "completed"
    names = {span.name for span in exported.values()}
    assert {"step draft", "step send", "tool send_email"} <= names
    draft = next(span for span in exported.values() if span.name == "step draft")
    assert draft.parent_span_id == root.span_id
    assert draft.attributes["step.output"] == '{"text":"dear ada@example.org"}'


async def test_an_exporter_added_to_a_tracer_sends_what_it_queued_when_flushed(
        receiver: Receiver) -> None:
    tracer = Tracer()
    exporter = OtelExporter(f"{receiver.url}/v1/traces", service_name="embedded")
    tracer.add_sink(exporter)
    try:
        trace_id = new_trace_id()
        for index in range(3):
            tracer.start(f"message {index}", SpanKind.MESSAGE, trace_id=trace_id).end()

        assert await asyncio.to_thread(exporter.force_flush)
    finally:
        await asyncio.to_thread(exporter.shutdown)

    assert sorted(span.name for span in receiver.spans) == ["message 0", "message 1", "message 2"]
    assert {span.trace_id for span in receiver.spans} == {trace_id}
    assert exporter.exported == 3


async def test_a_span_whose_ids_opentelemetry_cannot_carry_is_dropped_without_failing_the_caller(
        receiver: Receiver) -> None:
    tracer = Tracer()
    exporter = OtelExporter(receiver.url)
    tracer.add_sink(exporter)
    try:
        assert tracer.start("odd", SpanKind.RUN, trace_id="t" * 32).end() is not None
        tracer.start("fine", SpanKind.RUN, trace_id=new_trace_id()).end()
        await asyncio.to_thread(exporter.force_flush)
    finally:
        await asyncio.to_thread(exporter.shutdown)

    assert tracer.dropped == 1
    assert [span.name for span in receiver.spans] == ["fine"]
    with pytest.raises(ValueError, match=r"span trace id 'tttt.*' is not 32 hex digits"):
        exporter.convert(roost.Span(trace_id="t" * 32, span_id="1" * 16, parent_span_id=None,
                                    name="odd", kind=SpanKind.RUN, start_ns=1, end_ns=2))


async def test_a_collector_that_is_down_neither_fails_nor_holds_up_the_work_being_recorded(
        closed_port: int) -> None:
    tracer = Tracer()
    exporter = OtelExporter(f"http://127.0.0.1:{closed_port}", timeout=0.5)
    tracer.add_sink(exporter)

    ended = [tracer.start(f"run {i}", SpanKind.RUN, trace_id=new_trace_id()).end()
             for i in range(100)]
    await asyncio.to_thread(exporter.shutdown)  # gives up after its timeout

    assert all(span is not None for span in ended)
    assert tracer.dropped == 0 and exporter.exported == 100
    tracer.start("after shutdown", SpanKind.RUN, trace_id=new_trace_id()).end()
    assert exporter.exported == 100


class Stuck(SpanExporter):
    """A collector that answers no export until `answer` is set."""

    def __init__(self) -> None:
        self.answer = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.answer.wait()
        return SpanExportResult.SUCCESS


def test_shutdown_waits_at_most_the_timeout_and_logs_how_many_spans_it_drops() -> None:
    stuck = Stuck()
    tracer = Tracer()
    exporter = OtelExporter(exporter=stuck, timeout=0.5, schedule_delay=0.01)
    tracer.add_sink(exporter)
    for i in range(5):
        tracer.start(f"run {i}", SpanKind.RUN, trace_id=new_trace_id()).end()

    try:
        with capture_logs() as logs:
            started = time.monotonic()
            exporter.shutdown()
            took = time.monotonic() - started
    finally:
        stuck.answer.set()  # let the SDK's thread end

    assert took < 5.0, f"shutdown took {took:.1f} s with a 0.5 s timeout"
    assert [(log["event"], log["dropped"]) for log in logs
            if log["event"] == "otel_export_shutdown_timed_out"] == [
        ("otel_export_shutdown_timed_out", 5)]


def test_an_endpoint_that_is_not_an_http_url_or_export_without_tracing_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"OTLP endpoint 'localhost:4318' is not an "
                                                 r"http\(s\) URL; give one like"):
        OtelExporter("localhost:4318")
    with pytest.raises(ConfigurationError, match=r"otlp_endpoint='http://127.0.0.1:4318' exports "
                                                 r"spans, but tracing=False records none"):
        roost.ActorSystem(tracing=False, otlp_endpoint="http://127.0.0.1:4318")


def test_without_the_otel_extra_the_error_names_the_extra_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['opentelemetry'] = None  # as if roost[otel] were not installed\n"
        "import roost\n"
        "try:\n"
        "    roost.ActorSystem(otlp_endpoint='http://127.0.0.1:4318')\n"
        "except roost.ExtraNotInstalled as error:\n"
        "    print(type(error).__name__, isinstance(error, ImportError), error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ExtraNotInstalled True exporting spans to OpenTelemetry needs "
                                  "the optional extra 'otel'")
    assert "pip install 'roost[otel]'" in done.stdout
