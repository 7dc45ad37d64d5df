"""Tracing: spans recorded by the runtime itself for every run, step, tool call and message.

The contract: a `Tracer` starts spans (`OpenSpan`) and hands each finished `Span`
(a stored, exported record) to its sinks without blocking; payloads are encoded,
cut to size and redacted first. Token usage (`Usage`) becomes OpenTelemetry GenAI
attributes and, with a price table (`Price`), cost. This package sits with
`storage` and `trace` below the actor engine, so every layer can record spans.

Metrics (`roost.tracing.metrics`: `SpanMetrics`, a sink; `prometheus_text` and
`RoostCollector` with `roost[metrics]`) and OpenTelemetry export
(`roost.tracing.export.OtelExporter`, a sink; needs `roost[otel]`, so it is
imported from its module only) are built on the same spans.

The trace store (`TraceStore`, a sink: `system.traces`) keeps spans in the store's
`traces` database and answers `get` (a run's span tree, a `Trace`) and `search`
(pages of `TraceSummary`); `read_traces(path)` queries a store no system has open.
"""

from roost.tracing.metrics import RoostCollector, SpanMetrics, prometheus_text
from roost.tracing.query import Trace, TracePage
from roost.tracing.records import TraceSummary
from roost.tracing.spans import Span, SpanEvent, SpanKind, Usage
from roost.tracing.store import TraceStore, TraceStoreStatistics, read_traces
from roost.tracing.tracer import OpenSpan, Price, Tracer

__all__ = ["OpenSpan", "Price", "RoostCollector", "Span", "SpanEvent", "SpanKind", "SpanMetrics",
           "Trace", "TracePage", "TraceStore", "TraceStoreStatistics", "TraceSummary",
           "Tracer", "Usage", "prometheus_text", "read_traces"]
