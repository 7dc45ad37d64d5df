"""Tracing: spans recorded by the runtime itself for every run, step, tool call and message.

The contract: a `Tracer` starts spans (`OpenSpan`) and hands each finished `Span`
(a stored, exported record) to its sinks without blocking; payloads are encoded,
cut to size and redacted first. Token usage (`Usage`) becomes OpenTelemetry GenAI
attributes and, with a price table (`Price`), cost. This package sits with
`storage` and `trace` below the actor engine, so every layer can record spans.
"""

from roost.tracing.spans import Span, SpanEvent, SpanKind, Usage
from roost.tracing.tracer import OpenSpan, Price, Tracer

__all__ = ["OpenSpan", "Price", "Span", "SpanEvent", "SpanKind", "Tracer", "Usage"]
