"""Tests of roost/tracing/metrics.py: `system.metrics()` and its Prometheus rendering."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import roost
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.trace import new_trace_id
from roost.tracing import SpanKind, Usage
from roost.tracing.metrics import RoostCollector, prometheus_text

pytestmark = pytest.mark.anyio


class Drafter(roost.Actor):
    """Fails the first attempt of a `retry-me` draft, and every attempt of a `fail-me` one."""

    async def receive(self, message: RunStep) -> Any:
        subject = message.input
        if subject == "fail-me":
            raise ValueError("cannot draft this")
        if subject == "retry-me" and message.attempt == 1:
            raise ValueError("flaky model")
        return f"draft for {subject}"


class Blocked(roost.Actor):
    """Waits for `release` on every message."""

    def __init__(self, entered: asyncio.Event, release: asyncio.Event) -> None:
        self.entered = entered
        self.release = release

    async def receive(self, message: Any) -> None:
        self.entered.set()
        await self.release.wait()


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as running:
        yield running


def mail_pipeline() -> Pipeline:
    return Pipeline("mail", [
        Step("draft", Drafter, retry=roost.Retry(attempts=2, base_delay=0.0, retry_on=ValueError)),
        Step("send", tool="send_email", after="draft",
             args=lambda results, subject: {"to": "ada@example.org", "body": results["draft"]}),
    ], input_type=str)


async def run_mail(system: roost.ActorSystem) -> None:
    @roost.tool(idempotent=True)
    async def send_email(to: str, body: str) -> str:
        return "sent"

    system.tools.register(send_email)
    pipeline = mail_pipeline()
    for subject in ("hello", "retry-me"):
        await (await system.pipelines.start(pipeline, subject)).result()
    with pytest.raises(roost.StepFailed, match="cannot draft this"):
        await (await system.pipelines.start(pipeline, "fail-me")).result()


async def test_a_snapshot_after_real_runs_counts_runs_by_status_and_times_steps_and_tools(
        system: roost.ActorSystem) -> None:
    await run_mail(system)

    metrics = system.metrics()

    assert metrics["runs"] == {"mail": {"completed": 2, "failed": 1}}
    assert metrics["run_seconds"]["mail"]["count"] == 3
    draft = metrics["step_seconds"]["mail"]["draft"]
    assert draft["count"] == 3 and draft["buckets"]["+Inf"] == 3 and draft["sum"] > 0
    assert metrics["step_seconds"]["mail"]["send"]["count"] == 2
    assert metrics["step_retries"] == {"mail": {"draft": 2}}  # retry-me once, fail-me once
    assert metrics["steps"]["mail"] == {"draft": {"completed": 2, "failed": 1},
                                        "send": {"completed": 2}}
    assert metrics["tool_seconds"]["send_email"]["ok"]["count"] == 2
    assert metrics["tool_outcomes"] == {"send_email": {"executed": 2}}
    assert metrics["tool_calls"]["calls"] == 2
    assert metrics["checkpoint_bytes"]["mail"]["count"] >= 3
    assert metrics["runs_in_flight"] == {"active": 0, "limit": 1000, "queued": 0}
    assert metrics["store_writes"] > 0 and metrics["store_commits"] > 0
    assert metrics["store_batch_size"] >= 1.0
    assert metrics["spans_dropped"] == 0
    assert metrics["trace_spans"]["written"] + metrics["trace_spans_buffered"] == sum(
        metrics["spans"].values())


async def test_token_usage_and_cost_of_ended_runs_are_counted_per_pipeline() -> None:
    async with roost.ActorSystem(log_format=None, prices={
            "small": roost.Price(input_per_million=1.0, output_per_million=2.0)}) as system:
        for _ in range(2):
            run = system.tracer.start("run mail", SpanKind.RUN, trace_id=new_trace_id(),
                                      pipeline="mail")
            run.usage(Usage("small", input_tokens=1_000, output_tokens=500))
            run.end()

        metrics = system.metrics()

    assert metrics["tokens"] == {"mail": {"input": 2_000, "output": 1_000}}
    assert metrics["cost"] == {"mail": pytest.approx(0.004)}


async def test_a_snapshot_reads_mailbox_depth_dead_letters_and_breaker_state_at_once(
        system: roost.ActorSystem) -> None:
    entered, release = asyncio.Event(), asyncio.Event()
    busy = system.spawn(Blocked, entered, release, capacity=2, overflow="drop_newest")
    busy.tell("first")
    await entered.wait()
    for index in range(3):  # two wait in the mailbox, the third is dropped
        busy.tell(index)

    @roost.tool(breaker=roost.Breaker(failures=3, cooldown=30.0))
    async def lookup(query: str) -> str:
        return query

    system.tools.register(lookup)
    system.tools.breaker("lookup").force_open()
    try:
        metrics = system.metrics()
    finally:
        release.set()

    assert metrics["mailbox_depth"] == 2 and metrics["mailbox_depth_max"] == 2
    assert metrics["dead_letters"] == {"dropped_newest": 1}
    assert metrics["actors_busy"] >= 1
    assert metrics["breaker_state"] == {"lookup": 1.0}
    assert metrics["breaker_opened"] == {"lookup": 1}


async def test_with_tracing_off_span_metrics_stay_empty_and_the_rest_is_still_read() -> None:
    async with roost.ActorSystem(tracing=False, log_format=None) as system:
        system.tracer.start("run mail", SpanKind.RUN, trace_id=new_trace_id()).end()

        metrics = system.metrics()

    assert metrics["runs"] == {} and metrics["spans"] == {}
    assert metrics["actors"] and metrics["runs_in_flight"]["limit"] == 1000


async def test_prometheus_text_parses_back_with_the_snapshot_names_and_values(
        system: roost.ActorSystem) -> None:
    await run_mail(system)

    families = {family.name: family for family in
                text_string_to_metric_families(prometheus_text(system))}

    def value(name: str, suffix: str = "", **labels: str) -> float:
        [sample] = [s for s in families[name].samples
                    if s.name == name + suffix and s.labels == labels]
        return float(sample.value)

    assert families["roost_runs"].type == "counter"
    assert value("roost_runs", "_total", pipeline="mail", status="completed") == 2
    assert value("roost_runs", "_total", pipeline="mail", status="failed") == 1
    assert families["roost_step_seconds"].type == "histogram"
    assert value("roost_step_seconds", "_count", pipeline="mail", step="draft") == 3
    assert value("roost_step_seconds", "_bucket", pipeline="mail", step="draft", le="+Inf") == 3
    assert value("roost_tool_seconds", "_count", tool="send_email", status="ok") == 2
    assert value("roost_step_retries", "_total", pipeline="mail", step="draft") == 2
    assert value("roost_tool_calls", "_total", event="calls") == 2
    assert value("roost_runs_in_flight", state="limit") == 1000
    assert families["roost_mailbox_depth"].type == "gauge"
    assert value("roost_store_writes", "_total") == system.metrics()["store_writes"]


async def test_spans_written_and_dropped_are_counters_and_spans_buffered_a_gauge(
        system: roost.ActorSystem) -> None:
    # The buffer empties at every batch: as a counter's sample it would go down between scrapes.
    await run_mail(system)

    families = {family.name: family for family in
                text_string_to_metric_families(prometheus_text(system))}

    assert families["roost_trace_spans"].type == "counter"
    assert {sample.labels["state"] for sample in families["roost_trace_spans"].samples} == {
        "written", "dropped"}
    assert families["roost_trace_spans_buffered"].type == "gauge"
    [buffered] = families["roost_trace_spans_buffered"].samples
    assert buffered.name == "roost_trace_spans_buffered" and buffered.value >= 0


def test_a_collector_registers_in_an_application_registry_and_reads_at_every_scrape() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    system = roost.ActorSystem(log_format=None)
    registry = CollectorRegistry()
    registry.register(RoostCollector(system))
    system.dead_letters.record("actor_stopped", "/gone", "hello", None)

    text = generate_latest(registry).decode()

    assert 'roost_dead_letters_total{reason="actor_stopped"} 1.0' in text


def test_without_the_metrics_extra_prometheus_output_names_the_extra_to_install() -> None:
    script = (
        "import sys\n"
        "sys.modules['prometheus_client'] = None  # as if roost[metrics] were not installed\n"
        "import roost\n"
        "from roost.tracing.metrics import prometheus_text\n"
        "system = roost.ActorSystem(log_format=None)\n"
        "assert system.metrics()['runs'] == {}  # the snapshot needs no extra\n"
        "try:\n"
        "    prometheus_text(system)\n"
        "except roost.ExtraNotInstalled as error:\n"
        "    print(error)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Prometheus metrics needs the optional extra 'metrics'")
    assert "pip install 'roost[metrics]'" in done.stdout
