"""The waterfall's geometry: depths, bars in percent of the trace, event marks, clamping."""

from __future__ import annotations

import pytest

from roost.console.waterfall import MIN_WIDTH, bar, layout
from roost.tracing import Span, SpanEvent, SpanKind
from roost.tracing.query import build_trace

MS = 1_000_000
T0 = 1_800_000_000 * 10**9


def span(span_id: str, parent: str | None, start_ms: float, end_ms: float, *,
         status: str = "ok", events: list[SpanEvent] | None = None) -> Span:
    return Span(trace_id="t" * 32, span_id=span_id, parent_span_id=parent, name=f"span {span_id}",
                kind=SpanKind.STEP, start_ns=T0 + int(start_ms * MS), end_ns=T0 + int(end_ms * MS),
                status=status, events=events or [])


def trace_of(*spans: Span):
    return build_trace(["t" * 32], "run-1", list(spans), [])


def test_nested_spans_get_their_depth_and_their_share_of_the_trace() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 100), span("draft", "run", 0, 40),
                                span("call", "draft", 10, 30), span("send", "run", 50, 100)))

    got = [(r.span.span_id, r.depth, r.left, r.width) for r in waterfall.rows]

    assert got == [("run", 0, 0.0, 100.0), ("draft", 1, 0.0, 40.0), ("call", 2, 10.0, 20.0),
                   ("send", 1, 50.0, 50.0)]
    assert waterfall.duration_ns == 100 * MS


def test_sequential_children_take_no_more_than_their_parent() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 90), span("a", "run", 0, 30),
                                span("b", "run", 30, 60), span("c", "run", 60, 90)))

    children = [r for r in waterfall.rows if r.depth == 1]

    assert sum(r.width for r in children) == pytest.approx(waterfall.rows[0].width, abs=0.01)
    assert sum(r.width for r in children) <= waterfall.rows[0].width
    assert all(r.left + r.width <= 100.0 for r in waterfall.rows)
    assert [r.left for r in children] == sorted(r.left for r in children)


def test_a_failed_span_is_marked_as_an_error() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 10, status="error"), span("ok", "run", 0, 5)))

    assert [r.error for r in waterfall.rows] == [True, False]


def test_retries_restarts_resumes_and_gates_become_markers_and_checkpoints_do_not() -> None:
    events = [SpanEvent("checkpoint", T0 + 10 * MS), SpanEvent("retry_scheduled", T0 + 20 * MS),
              SpanEvent("actor_restarted", T0 + 30 * MS), SpanEvent("resumed", T0 + 40 * MS),
              SpanEvent("gate_opened", T0 + 50 * MS)]
    waterfall = layout(trace_of(span("run", None, 0, 100, events=events)))

    markers = [(m.name, m.kind, m.left) for m in waterfall.rows[0].markers]

    assert markers == [("retry_scheduled", "retry", 20.0), ("actor_restarted", "restart", 30.0),
                       ("resumed", "resumed", 40.0), ("gate_opened", "gate", 50.0)]


def test_a_trace_of_no_length_does_not_divide_by_zero() -> None:
    waterfall = layout(trace_of(span("run", None, 5, 5, events=[SpanEvent("resumed", T0 + 5 * MS)]),
                                span("step", "run", 5, 5)))

    assert [(r.left, r.width) for r in waterfall.rows] == [(0.0, 100.0), (0.0, 100.0)]
    assert waterfall.rows[0].markers[0].left == 0.0
    assert [t.offset_ns for t in waterfall.ticks] == [0, 0, 0, 0, 0]


def test_an_instant_span_is_still_drawn() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 100), span("instant", "run", 100, 100)))

    instant = waterfall.rows[1]

    assert instant.width == MIN_WIDTH
    assert instant.left + instant.width == pytest.approx(100.0)


def test_a_span_that_ends_before_it_starts_is_clamped_to_an_instant() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 100), span("odd", "run", 60, 20)))

    odd = waterfall.rows[1]

    assert (odd.left, odd.width, odd.clamped) == (60.0, MIN_WIDTH, True)
    assert not waterfall.rows[0].clamped


def test_a_bar_outside_the_axis_is_clamped_onto_it() -> None:
    assert bar(-50, 50, 0, 100) == (0.0, 50.0, True)
    assert bar(80, 250, 0, 100) == (80.0, 20.0, True)
    assert bar(300, 400, 0, 100) == (100.0 - MIN_WIDTH, MIN_WIDTH, True)


def test_the_axis_is_cut_into_equal_parts() -> None:
    waterfall = layout(trace_of(span("run", None, 0, 200)))

    assert [(t.left, t.offset_ns) for t in waterfall.ticks] == [
        (0.0, 0), (25.0, 50 * MS), (50.0, 100 * MS), (75.0, 150 * MS), (100.0, 200 * MS)]
