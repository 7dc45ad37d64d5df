"""Tests of roost/tracing/tracer.py: spans, payload shaping, usage and cost, failing sinks."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from structlog.testing import capture_logs

from roost.errors import ConfigurationError
from roost.tracing import Price, Span, SpanKind, Tracer, Usage
from roost.tracing.tracer import usage_of


class Reply(msgspec.Struct):
    text: str


def collecting(tracer: Tracer) -> list[Span]:
    spans: list[Span] = []
    tracer.add_sink(spans.append)
    return spans


def fake_clock() -> Any:
    ticks = iter(range(1_000, 10**9, 1_000))
    return lambda: next(ticks)


def test_an_ended_span_reaches_every_sink_once_with_its_events_and_status() -> None:
    tracer = Tracer(clock_ns=fake_clock())
    spans = collecting(tracer)
    span = tracer.start("step draft", SpanKind.STEP, trace_id="t" * 32, run_id="run-1", attempt=1)
    span.event("retry_scheduled", delay=0.5)
    span.fail(ValueError("bad draft"))

    span.end()
    span.end()

    [ended] = spans
    assert (ended.name, ended.kind, ended.run_id, ended.status) == ("step draft", "step", "run-1",
                                                                    "error")
    assert (ended.error_type, ended.error_message) == ("ValueError", "bad draft")
    assert ended.attributes == {"attempt": 1}
    assert [(e.name, e.attributes) for e in ended.events] == [("retry_scheduled", {"delay": 0.5})]
    assert ended.start_ns < ended.events[0].time_ns < ended.end_ns


def test_payloads_are_encoded_cut_to_the_limit_with_a_marker_and_redacted() -> None:
    seen: list[str] = []

    def redact(name: str, value: Any) -> Any:
        seen.append(name)
        return {**value, "password": "***"} if isinstance(value, dict) and "password" in value else value

    tracer = Tracer(payload_limit=64, redact=redact)

    assert tracer.payload("tool.arguments", {"to": "ada", "password": "hunter2"}) == {
        "to": "ada", "password": "***"}
    assert tracer.payload("step.output", Reply("hi")) == {"text": "hi"}
    long = tracer.payload("step.output", Reply("x" * 1000))
    assert long["roost.truncated"] is True and long["bytes"] == len('{"text":""}') + 1000
    assert len(long["preview"]) == 64
    assert seen == ["tool.arguments", "step.output", "step.output"]


def test_an_unencodable_payload_becomes_a_typed_placeholder_and_a_failing_redaction_hides_it(
        ) -> None:
    assert Tracer().payload("step.output", object()) == {"roost.unencodable": "object"}

    def broken(name: str, value: Any) -> Any:
        raise RuntimeError("oops")

    assert Tracer(redact=broken).payload("x", {"secret": 1}) == {
        "roost.redaction_failed": "RuntimeError"}


def test_a_long_payload_is_redacted_whole_before_it_is_cut() -> None:
    def mask_keys(name: str, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: "***" if k == "api_key" else v for k, v in value.items()}
        return value

    tracer = Tracer(payload_limit=1024, redact=mask_keys)
    kept = tracer.payload("step.input", {"api_key": "sk-SECRET", "blob": "y" * 5000})

    assert kept["roost.truncated"] is True and len(kept["preview"]) == 1024
    assert "sk-SECRET" not in kept["preview"] and kept["preview"].startswith('{"api_key":"***"')
    assert kept["bytes"] == len('{"api_key":"***","blob":""}') + 5000  # the redacted size


def test_an_error_message_on_a_span_passes_through_redact() -> None:
    spans: list[Span] = []

    def mask(name: str, value: Any) -> Any:
        return value.replace("sk-SECRET", "***") if name == "error.message" else value

    tracer = Tracer(redact=mask)
    tracer.add_sink(spans.append)
    span = tracer.start("tool send", SpanKind.TOOL_CALL, trace_id="t" * 32)
    span.fail(ValueError("rejected key sk-SECRET"))
    span.end()

    assert (spans[0].error_type, spans[0].error_message) == ("ValueError", "rejected key ***")
    assert Tracer(redact=lambda name, value: {"hidden": True}).error_text("x") == '{"hidden":true}'


def test_a_failing_redactor_is_logged_once_per_error_type_without_the_payload() -> None:
    def fussy(name: str, value: Any) -> Any:
        raise (TypeError if isinstance(value, dict) else KeyError)("sk-SECRET")

    tracer = Tracer(redact=fussy)
    with capture_logs() as logs:
        for _ in range(3):
            assert tracer.payload("step.input", {"api_key": "sk-SECRET"}) == {
                "roost.redaction_failed": "TypeError"}
        assert tracer.payload("step.output", [1]) == {"roost.redaction_failed": "KeyError"}

    failures = [log for log in logs if log["event"] == "trace_redaction_failed"]
    assert [(log["payload_name"], log["error_type"]) for log in failures] == [
        ("step.input", "TypeError"), ("step.output", "KeyError")]
    assert "sk-SECRET" not in repr(logs)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"redact": "yes"}, "redact must be a function"),
        ({"payload_limit": 0}, "payload_limit must be a whole number >= 1, got 0"),
        ({"payload_limit": -5}, "payload_limit must be a whole number >= 1, got -5"),
        ({"payload_limit": "8k"}, "payload_limit must be a whole number >= 1, got '8k'"),
        ({"payload_limit": 1024.0}, "payload_limit must be a whole number >= 1, got 1024.0"),
    ],
)
def test_a_bad_payload_option_is_refused_naming_it(options: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Tracer: {re.escape(named)}"):
        Tracer(**options)


def test_usage_becomes_gen_ai_attributes_and_cost_from_the_price_table() -> None:
    tracer = Tracer(prices={"small-model": Price(input_per_million=1.0, output_per_million=4.0)})
    spans = collecting(tracer)
    span = tracer.start("step draft", SpanKind.STEP, trace_id="t" * 32)

    assert span.usage(Usage("small-model", input_tokens=1000, output_tokens=500)) == pytest.approx(
        0.003)
    span.usage(Usage("small-model", input_tokens=1000, output_tokens=0))
    assert span.usage(Usage("unpriced", input_tokens=5)) is None
    span.end()

    attributes = spans[0].attributes
    assert attributes["gen_ai.usage.input_tokens"] == 2005
    assert attributes["gen_ai.usage.output_tokens"] == 500
    assert attributes["roost.cost"] == pytest.approx(0.004)


def test_a_failing_sink_drops_the_span_and_never_the_caller() -> None:
    tracer = Tracer()

    def full_disk(span: Span) -> None:
        raise OSError("No space left on device")

    tracer.add_sink(full_disk)
    spans = collecting(tracer)
    tracer.start("run", SpanKind.RUN, trace_id="t" * 32).end()

    assert tracer.dropped == 1 and len(spans) == 1


def test_a_span_survives_the_store_codec_round_trip() -> None:
    tracer = Tracer()
    spans = collecting(tracer)
    span = tracer.start("tool send", SpanKind.TOOL_CALL, trace_id="t" * 32, actor="/a")
    span.payload("tool.result", {"id": 7})
    span.end()

    encoded = msgspec.msgpack.encode(spans[0])

    assert msgspec.msgpack.decode(encoded, type=Span) == spans[0]


class Answer(msgspec.Struct):
    text: str
    usage: Usage


@pytest.mark.parametrize("result", [
    Answer("hi", Usage("gpt-4o-mini", 12, 3)),
    {"text": "hi", "usage": Usage("gpt-4o-mini", 12, 3)},
    # The same results as a store gives them back when they are decoded without their types.
    msgspec.msgpack.decode(msgspec.msgpack.encode(Answer("hi", Usage("gpt-4o-mini", 12, 3)))),
])
def test_a_results_usage_is_found_as_a_struct_or_as_the_mapping_it_is_stored_as(
        result: Any) -> None:
    assert usage_of(result) == Usage("gpt-4o-mini", 12, 3)


@pytest.mark.parametrize("result", ["text", {"usage": {"model": "m", "input_tokens": -1}},
                                    {"usage": "lots"}, Reply("no usage here")])
def test_a_result_without_a_valid_usage_has_none(result: Any) -> None:
    assert usage_of(result) is None
