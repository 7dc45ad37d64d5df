"""The geometry of a trace waterfall: each span's nesting depth and its bar's left offset and
width in percent of the trace's time span, with marks for the events people look for.

Pure data in, pure data out (no HTML): the run page draws what `layout` computes, and
the tests check the geometry without a browser. Odd spans (one that ends before it
starts, or lies outside the trace) are clamped onto the axis, never dropped.
"""

from __future__ import annotations

import msgspec

from roost.tracing import Span, Trace

#: The narrowest bar drawn, in percent, so that an instant span stays visible.
MIN_WIDTH = 0.5
#: The events drawn as marks on a span's row, by the kind of mark.
MARKED_EVENTS = {
    "retry_scheduled": "retry", "gave_up": "retry", "fallback_started": "retry",
    "breaker_refused": "retry",
    "actor_failed": "restart", "actor_restarted": "restart", "actor_stopped": "restart",
    "resumed": "resumed",
    "gate_opened": "gate", "opened": "gate", "escalated": "gate", "decided": "gate",
}
#: How many equal parts the time axis is cut into.
AXIS_PARTS = 4


class Marker(msgspec.Struct, frozen=True):
    """An event on a span's row: its name, kind of mark, where (percent) and when
    (nanoseconds after the trace started)."""

    name: str
    kind: str
    left: float
    offset_ns: int


class Row(msgspec.Struct, frozen=True):
    """One span's row: the span, how deep it nests, its bar (percent of the trace), whether
    it failed, whether its times had to be clamped, and its marked events."""

    span: Span
    depth: int
    left: float
    width: float
    error: bool
    clamped: bool
    markers: list[Marker]


class Tick(msgspec.Struct, frozen=True):
    """A label on the time axis: where (percent) and the time since the trace started."""

    left: float
    offset_ns: int


class Waterfall(msgspec.Struct, frozen=True):
    """A trace laid out: its rows (parents before children) and its time axis."""

    start_ns: int
    duration_ns: int
    rows: list[Row]
    ticks: list[Tick]


def _percent(offset_ns: int, total_ns: int) -> float:
    if total_ns <= 0:
        return 0.0
    return round(min(100.0, max(0.0, offset_ns * 100.0 / total_ns)), 3)


def bar(start_ns: int, end_ns: int, origin_ns: int, total_ns: int) -> tuple[float, float, bool]:
    """The bar of a span from `start_ns` to `end_ns` on an axis from `origin_ns` lasting
    `total_ns`: `(left, width, clamped)` in percent, with `left + width <= 100` and
    `width >= MIN_WIDTH`. In a trace of no length every bar spans it whole."""
    if total_ns <= 0:
        return 0.0, 100.0, end_ns < start_ns
    clamped = (end_ns < start_ns or start_ns < origin_ns
               or end_ns > origin_ns + total_ns)
    start = min(max(start_ns, origin_ns), origin_ns + total_ns)
    end = min(max(end_ns, start), origin_ns + total_ns)
    left = _percent(start - origin_ns, total_ns)
    width = max(MIN_WIDTH, round((end - start) * 100.0 / total_ns, 3))
    left = round(min(left, 100.0 - width), 3)
    return left, width, clamped


def layout(trace: Trace) -> Waterfall:
    """The waterfall of `trace`: a row per span in tree order, on an axis from the first
    span's start to the last span's end."""
    origin = trace.start_ns
    total = max(0, trace.end_ns - origin)
    rows = []
    for depth, span in trace.walk():
        left, width, clamped = bar(span.start_ns, span.end_ns, origin, total)
        markers = [Marker(event.name, MARKED_EVENTS[event.name],
                          _percent(event.time_ns - origin, total), event.time_ns - origin)
                   for event in span.events if event.name in MARKED_EVENTS]
        rows.append(Row(span, depth, left, width, span.status == "error", clamped, markers))
    ticks = [Tick(round(100.0 * part / AXIS_PARTS, 3), total * part // AXIS_PARTS)
             for part in range(AXIS_PARTS + 1)]
    return Waterfall(origin, total, rows, ticks)
