"""Tests of roost/tracing/store.py and query.py: spans kept in the store and queried back."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost.errors import ConfigurationError, StoreError, StoreUnavailable, SystemNotRunning, TraceNotFound
from roost.storage import PostgresStore, Put, Store
from roost.tracing import Span, SpanKind, TraceStore, read_traces
from roost.tracing.records import index_key, span_key

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND


def trace_id(n: int) -> str:
    return f"{n:032x}"


def span(trace: int, name: str, kind: SpanKind, *, start: float, end: float, parent: str | None = None,
         run_id: str | None = None, number: int = 0, **fields: Any) -> Span:
    """A finished span of trace `trace`, `start` and `end` in seconds after T0."""
    return Span(trace_id=trace_id(trace), span_id=f"{trace:08x}{number:08x}", parent_span_id=parent,
                name=name, kind=kind, start_ns=T0 + int(start * SECOND), end_ns=T0 + int(end * SECOND),
                run_id=run_id, **fields)


def run_trace(trace: int, run_id: str, *, pipeline: str = "support-email", start: float = 0.0,
              failed: bool = False, tool: str = "send_email", tokens: tuple[int, int] = (0, 0),
              cost: float | None = None) -> list[Span]:
    """A run's spans: run > step draft > tool call, as the runtime ends them (children first)."""
    usage: dict[str, Any] = {}
    if tokens != (0, 0):
        usage = {"gen_ai.request.model": "m", "gen_ai.usage.input_tokens": tokens[0],
                 "gen_ai.usage.output_tokens": tokens[1]}
    if cost is not None:
        usage["roost.cost"] = cost
    root = f"{trace:08x}{0:08x}"
    step = f"{trace:08x}{1:08x}"
    error = {"status": "error", "error_type": "StepFailed", "error_message": "draft failed"} if failed else {}
    return [
        span(trace, f"tool {tool}", SpanKind.TOOL_CALL, start=start + 0.2, end=start + 0.5, parent=step,
             run_id=run_id, number=2, attributes=usage),
        span(trace, "step draft", SpanKind.STEP, start=start + 0.1, end=start + 0.9, parent=root,
             run_id=run_id, number=1, **error),
        span(trace, f"run {pipeline}", SpanKind.RUN, start=start, end=start + 1.0, run_id=run_id,
             number=0, attributes={"gen_ai.usage.input_tokens": 999}, **error),
    ]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    # No periodic flush to disk during a test: any sync seen is one a commit asked for.
    async with Store.open(tmp_path / "store", flush_interval=3600.0) as opened:
        yield opened


@pytest.fixture
async def traces(store: Store) -> AsyncIterator[TraceStore]:
    trace_store = TraceStore(store)
    yield trace_store
    await trace_store.close()


def add_all(traces: TraceStore, spans: list[Span]) -> None:
    for one in spans:
        traces.add(one)


# --- get --------------------------------------------------------------------------------------


async def test_a_run_comes_back_by_run_id_and_by_trace_id_as_a_tree_with_its_totals(
        traces: TraceStore) -> None:
    add_all(traces, run_trace(1, "email-0042", failed=True, tokens=(120, 30), cost=0.25))
    add_all(traces, run_trace(2, "email-0043"))

    by_run = await traces.get("email-0042")
    by_trace = await traces.get(trace_id(1))

    assert by_run == by_trace
    assert (by_run.trace_id, by_run.run_id) == (trace_id(1), "email-0042")
    assert [span.name for span in by_run.spans] == ["run support-email", "step draft", "tool send_email"]
    assert [(depth, span.name) for depth, span in by_run.walk()] == [
        (0, "run support-email"), (1, "step draft"), (2, "tool send_email")]
    # The run span's own totals are not counted again: tokens are added up where reported.
    assert (by_run.input_tokens, by_run.output_tokens, by_run.cost) == (120, 30, 0.25)
    assert by_run.errors == 2 and by_run.duration_ns == SECOND and by_run.skipped == []


async def test_on_postgresql_traces_are_written_and_read_without_blocking_the_loop(
        postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each read of a PostgreSQL snapshot is a round trip: none may be made on the loop.
    def on_the_loop(self: PostgresStore, function: Any) -> Any:
        raise AssertionError("read_on_loop blocked the event loop for a round trip")

    monkeypatch.setattr(PostgresStore, "read_on_loop", on_the_loop)
    async with PostgresStore.open(postgres_url) as store:
        traces = TraceStore(store)
        add_all(traces, run_trace(1, "email-0042", tokens=(120, 30)))
        add_all(traces, run_trace(2, "email-0043"))
        first = await traces.get("email-0042")
        add_all(traces, run_trace(3, "email-0044"))
        await traces.flush()
        third = await traces.get(trace_id(3))
        await traces.close()

    assert (first.run_id, first.input_tokens, len(first.spans)) == ("email-0042", 120, 3)
    assert third.run_id == "email-0044" and traces.failed_batches == 0


async def test_a_span_whose_parent_is_missing_is_shown_as_a_root(traces: TraceStore) -> None:
    orphan = span(3, "message Ping", SpanKind.MESSAGE, start=0.5, end=0.6, parent="f" * 16, run_id="r3",
                  number=9)
    add_all(traces, [*run_trace(3, "r3"), orphan])

    trace = await traces.get("r3")

    assert trace.roots == [f"{3:08x}{0:08x}", orphan.span_id]
    assert [depth for depth, _ in trace.walk()] == [0, 1, 2, 0]


async def test_an_unknown_id_raises_trace_not_found_naming_it_and_the_store(traces: TraceStore,
                                                                            store: Store) -> None:
    add_all(traces, run_trace(1, "email-0042"))

    with pytest.raises(TraceNotFound, match="no run or trace named 'email-9999'") as caught:
        await traces.get("email-9999")

    assert caught.value.store == store.path and "roost runs" in str(caught.value)
    with pytest.raises(ConfigurationError, match="must be a non-empty string"):
        await traces.get("")


@pytest.mark.parametrize("loop_read_bytes", [64 * 1024, 0], ids=["on the loop", "in a thread"])
async def test_a_corrupt_span_record_is_skipped_listed_and_counted(
        traces: TraceStore, store: Store, monkeypatch: pytest.MonkeyPatch, loop_read_bytes: int) -> None:
    monkeypatch.setattr("roost.tracing.store._LOOP_READ_BYTES", loop_read_bytes)
    spans = run_trace(1, "email-0042")
    add_all(traces, spans)
    await traces.flush()
    await store.commit([Put("traces", span_key(spans[0]), b"\xc1 not msgpack")])

    trace = await traces.get("email-0042")

    assert [span.name for span in trace.spans] == ["run support-email", "step draft"]
    [skipped] = trace.skipped
    assert repr(span_key(spans[0])) in skipped
    assert traces.statistics().skipped == 1


async def test_a_trace_too_large_to_read_on_the_loop_comes_back_the_same_from_a_thread(
        traces: TraceStore, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    root = span(1, "run big", SpanKind.RUN, start=0.0, end=10.0, run_id="big")
    steps = [span(1, f"step s{n}", SpanKind.STEP, start=n / 100, end=n / 100 + 0.005,
                  parent=root.span_id, run_id="big", number=n,
                  attributes={"step.output": "x" * 1024,
                              **({"gen_ai.usage.input_tokens": 2, "roost.cost": 0.5} if n % 10 == 0
                                 else {})})
             for n in range(1, 200)]  # some 200 KB of span records
    add_all(traces, [*steps, root])
    await traces.flush()
    thread_reads: list[object] = []
    read = store.read

    async def recording_read(function: Any) -> Any:
        thread_reads.append(function)
        return await read(function)

    monkeypatch.setattr(store, "read", recording_read)

    from_thread = await traces.get("big")
    assert len(thread_reads) == 1
    monkeypatch.setattr("roost.tracing.store._LOOP_READ_BYTES", 2**20)
    from_loop = await traces.get("big")

    assert len(thread_reads) == 1  # read on the loop this time
    assert from_thread == from_loop
    assert len(from_loop.spans) == 200 and from_loop.roots == [root.span_id]
    assert from_loop.children[root.span_id] == [one.span_id for one in steps]
    assert (from_loop.input_tokens, from_loop.cost, from_loop.skipped) == (38, 9.5, [])


async def test_a_query_waits_for_a_batch_still_being_written(traces: TraceStore, store: Store,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    writing, release = asyncio.Event(), asyncio.Event()
    commit = store.commit

    async def held_commit(ops: Any, **kwargs: Any) -> Any:
        writing.set()
        await release.wait()
        return await commit(ops, **kwargs)

    monkeypatch.setattr(store, "commit", held_commit)
    add_all(traces, run_trace(1, "email-0042"))
    flushing = asyncio.create_task(traces.flush())
    await writing.wait()
    assert traces.statistics().buffered == 0  # taken out of the buffer, not yet written

    getting = asyncio.create_task(traces.get("email-0042"))
    release.set()

    assert len((await getting).spans) == 3
    await flushing


# --- writing --------------------------------------------------------------------------------


async def test_spans_are_written_in_batches_of_non_durable_commits_that_never_fsync(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    durable: list[bool | None] = []
    commit = store.commit

    async def recording_commit(ops: Any, **kwargs: Any) -> Any:
        durable.append(kwargs.get("durable"))
        return await commit(ops, **kwargs)

    monkeypatch.setattr(store, "commit", recording_commit)
    traces = TraceStore(store, batch_size=512)
    syncs = store.statistics().syncs
    add_all(traces, [one for n in range(400) for one in run_trace(n, f"run-{n}")])

    await traces.close()

    assert durable == [False, False, False]  # 1,200 spans in batches of 512
    assert store.statistics().syncs == syncs
    assert traces.statistics().written == 1200
    assert (await traces.get("run-399")).run_id == "run-399"


async def test_a_backlog_of_batches_rides_one_group_commit_instead_of_one_each(
        store: Store) -> None:
    traces = TraceStore(store, batch_size=64)
    add_all(traces, [one for n in range(1000) for one in run_trace(n, f"run-{n}")])  # 47 batches
    commits = store.statistics().commits

    await traces.flush()

    assert store.statistics().commits - commits <= 4  # 16 batches at once, not 47 turns
    assert traces.statistics().written == 3000 and traces.statistics().buffered == 0
    straddling = [n for n in range(1000) if 3 * n // 64 != (3 * n + 2) // 64]
    for n in [0, 999, *straddling]:  # a trace split over batches committed together
        summary = await traces.summary(f"run-{n}")
        assert summary is not None and (summary.spans, summary.status) == (3, "ok")


async def test_a_full_batch_is_written_without_waiting_for_the_flush_interval(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    written = asyncio.Event()
    commit = store.commit

    async def signalling_commit(ops: Any, **kwargs: Any) -> Any:
        result = await commit(ops, **kwargs)
        written.set()
        return result

    monkeypatch.setattr(store, "commit", signalling_commit)
    traces = TraceStore(store, batch_size=3, flush_interval=3600.0)
    traces.start()
    try:
        add_all(traces, run_trace(1, "email-0042"))
        await asyncio.wait_for(written.wait(), 10)
        assert traces.statistics().written == 3
    finally:
        await traces.close()


async def test_a_full_buffer_drops_the_oldest_spans_and_counts_them(store: Store) -> None:
    small = TraceStore(store, max_buffered=4)
    add_all(small, [one for n in range(3) for one in run_trace(n, f"run-{n}")])

    await small.flush()

    assert small.statistics().dropped == 5
    assert [span.name for span in (await small.get("run-2")).spans] == [
        "run support-email", "step draft", "tool send_email"]
    assert [span.name for span in (await small.get("run-1")).spans] == ["run support-email"]


async def test_a_failing_write_drops_its_batch_counts_it_and_warns_once(store: Store) -> None:
    traces = TraceStore(store, batch_size=3)
    await store.close()
    add_all(traces, run_trace(1, "a") + run_trace(2, "b"))

    with capture_logs() as logs:
        await traces.flush()

    statistics = traces.statistics()
    assert (statistics.dropped, statistics.failed_batches, statistics.written) == (6, 2, 0)
    [warning] = [log for log in logs if log["event"] == "trace_write_failed"]
    assert warning["log_level"] == "warning" and warning["error_type"] == "StoreError"


async def test_a_span_that_cannot_be_encoded_is_dropped_alone(traces: TraceStore) -> None:
    spans = run_trace(1, "email-0042")
    broken = span(1, "step odd", SpanKind.STEP, start=0.3, end=0.4, run_id="email-0042", number=7,
                  attributes={"value": object()})

    with capture_logs() as logs:
        add_all(traces, [*spans, broken])
        trace = await traces.get("email-0042")

    assert len(trace.spans) == 3 and traces.statistics().dropped == 1
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == ["span_unencodable"]


async def test_a_full_disk_drops_spans_with_one_warning_and_add_never_raises(small_disk: Path) -> None:
    async with Store.open(small_disk / "store", map_size=1 * 2**20, durability="async") as store:
        traces = TraceStore(store, batch_size=16)
        payload = {"roost.payload": "x" * 60_000}
        with capture_logs() as logs:
            for n in range(120):  # ~7 MB of spans on a 4 MiB disk
                traces.add(span(n, "step big", SpanKind.STEP, start=n, end=n + 1, run_id=f"r{n}",
                                attributes=payload))
            await traces.close()

    statistics = traces.statistics()
    assert statistics.dropped > 0 and statistics.failed_batches > 0
    assert statistics.written + statistics.dropped == 120
    assert len([log for log in logs if log["event"] == "trace_write_failed"]) == 1


# --- summaries and search ---------------------------------------------------------------------


async def test_a_summary_follows_its_trace_across_batches_to_its_root(traces: TraceStore) -> None:
    tool, step, root = run_trace(1, "email-0042", tool="lookup", tokens=(10, 5))
    traces.add(tool)
    await traces.flush()
    open_page = await traces.search()
    traces.add(step)
    traces.add(root)

    page = await traces.search()

    [early] = open_page.traces
    assert (early.status, early.name, early.start_ns) == ("open", "tool lookup", tool.start_ns)
    [summary] = page.traces  # moved to the root's start, not listed twice
    assert (summary.status, summary.name, summary.pipeline) == ("ok", "run support-email", "support-email")
    assert (summary.start_ns, summary.duration_ns, summary.spans, summary.steps) == (root.start_ns, SECOND,
                                                                                    3, 1)
    assert (summary.tools, summary.input_tokens, summary.output_tokens) == (["lookup"], 10, 5)
    assert summary.run_ids == ["email-0042"]


async def stocked(traces: TraceStore) -> None:
    add_all(traces, run_trace(1, "a-1", start=0, tool="search"))
    add_all(traces, run_trace(2, "a-2", start=10, failed=True))
    add_all(traces, run_trace(3, "b-1", start=20, pipeline="billing"))
    long_run = run_trace(4, "a-3", start=30)
    long_run[-1] = msgspec.structs.replace(long_run[-1], end_ns=T0 + 40 * SECOND,
                                           attributes={"customer": "Ada Lovelace"})
    add_all(traces, long_run)


@pytest.mark.parametrize(("filters", "runs"), [
    ({}, ["a-3", "b-1", "a-2", "a-1"]),
    ({"status": "error"}, ["a-2"]),
    ({"status": "ok", "pipeline": "support-email"}, ["a-3", "a-1"]),
    ({"tool": "search"}, ["a-1"]),
    ({"since": (T0 + 10 * SECOND) / SECOND}, ["a-3", "b-1", "a-2"]),
    ({"since": datetime.fromtimestamp(T0 / SECOND + 20, tz=UTC)}, ["a-3", "b-1"]),
    ({"min_duration": 5.0}, ["a-3"]),
    ({"text": "ada LOVELACE"}, ["a-3"]),
    ({"text": "draft failed"}, ["a-2"]),
    ({"text": "nobody"}, []),
])
async def test_search_keeps_the_traces_that_match_every_filter_newest_first(
        traces: TraceStore, filters: dict[str, Any], runs: list[str]) -> None:
    await stocked(traces)

    page = await traces.search(**filters)

    assert [summary.run_id for summary in page.traces] == runs
    assert page.cursor is None


async def test_search_pages_through_every_trace_once_with_its_cursor(traces: TraceStore) -> None:
    add_all(traces, [one for n in range(25) for one in run_trace(n, f"run-{n:02d}", start=n)])

    seen: list[str | None] = []
    cursor = None
    pages = 0
    while True:
        page = await traces.search(limit=10, cursor=cursor)
        seen += [summary.run_id for summary in page.traces]
        pages += 1
        if page.cursor is None:
            break
        cursor = page.cursor

    assert seen == [f"run-{n:02d}" for n in reversed(range(25))]
    assert pages == 3


async def test_a_corrupt_summary_is_skipped_and_listed_in_the_page(traces: TraceStore,
                                                                   store: Store) -> None:
    await stocked(traces)
    await traces.flush()
    key = index_key(T0 + 10 * SECOND, trace_id(2))
    await store.commit([Put("traces", key, b"\xc1")])

    page = await traces.search()

    assert [summary.run_id for summary in page.traces] == ["a-3", "b-1", "a-1"]
    assert len(page.skipped) == 1 and repr(key) in page.skipped[0]


@pytest.mark.parametrize(("arguments", "message"), [
    ({"status": "failed"}, "status='failed' is not a trace status; use one of ok, error, open"),
    ({"limit": 0}, "limit=0 must be a positive int"),
    ({"cursor": "not-a-cursor"}, "cursor='not-a-cursor' is not a cursor of a search page"),
    ({"since": "yesterday"}, "since='yesterday' must be a datetime or seconds since the epoch"),
    ({"min_duration": -1}, "min_duration=-1 must be seconds >= 0"),
])
async def test_bad_search_arguments_are_refused_naming_them(traces: TraceStore, arguments: dict[str, Any],
                                                            message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        await traces.search(**arguments)


# --- retention --------------------------------------------------------------------------------


async def test_traces_past_their_retention_are_pruned_with_their_run_index(store: Store) -> None:
    now = T0 + 3 * 86_400 * SECOND
    traces = TraceStore(store, retention=86_400.0, clock_ns=lambda: now)
    add_all(traces, run_trace(1, "old", start=0))
    add_all(traces, run_trace(2, "new", start=2.5 * 86_400))
    await traces.flush()

    assert await traces.prune() == 1

    with pytest.raises(TraceNotFound):
        await traces.get("old")
    assert await traces.summary("old") is None
    assert (await traces.get("new")).run_id == "new"
    run_index = [key async for key, _ in store.scan("traces", prefix=b"r/")]
    assert run_index == [b"r/new\x00" + trace_id(2).encode()]
    assert traces.statistics().pruned == 1


async def test_past_max_bytes_the_oldest_traces_go_until_under_it(store: Store) -> None:
    traces = TraceStore(store, max_bytes=10_000, clock_ns=lambda: T0)
    add_all(traces, [one for n in range(30) for one in run_trace(n, f"run-{n:02d}", start=n)])
    await traces.flush()

    pruned = await traces.prune()

    assert_the_newest_kept_under_the_low_water(await traces.search(limit=100), pruned)
    assert await traces.prune() == 0


async def test_spans_written_past_max_bytes_start_a_prune_without_waiting_for_the_sweep(
        store: Store) -> None:
    traces = TraceStore(store, max_bytes=10_000, prune_interval=3600.0, clock_ns=lambda: T0)
    traces.start()
    try:
        await asyncio.sleep(0.1)  # its first sweep, of an empty store, is over; the next is an hour away
        add_all(traces, [one for n in range(30) for one in run_trace(n, f"run-{n:02d}", start=n)])
        await traces.flush()

        with anyio.fail_after(5):  # the prune runs in the background
            while True:
                page = await traces.search(limit=100)
                if sum(summary.bytes for summary in page.traces) <= 9_000:
                    break
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the prune's last look, which finds nothing more to delete

        assert_the_newest_kept_under_the_low_water(await traces.search(limit=100),
                                                   traces.statistics().pruned)
    finally:
        await traces.close()


def assert_the_newest_kept_under_the_low_water(page: Any, pruned: int) -> None:
    """Of the 30 traces `run-00` ... `run-29`, the `pruned` oldest went and the rest take
    at most the low water (90% of max_bytes=10,000)."""
    kept = page.traces
    assert pruned > 0 and len(kept) == 30 - pruned
    assert [summary.run_id for summary in kept] == [f"run-{n:02d}" for n in reversed(range(pruned, 30))]
    assert sum(summary.bytes for summary in kept) <= 9_000


async def test_trace_stores_sharing_a_database_count_its_size_together(store: Store) -> None:
    # Two writers (a cluster's nodes) keep a count each, so that they never wait for each
    # other; the size retention goes by their sum, whichever of them prunes.
    one = TraceStore(store, max_bytes=10_000, clock_ns=lambda: T0)
    two = TraceStore(store, max_bytes=10_000, clock_ns=lambda: T0)
    add_all(one, [s for n in range(0, 30, 2) for s in run_trace(n, f"run-{n:02d}", start=n)])
    add_all(two, [s for n in range(1, 30, 2) for s in run_trace(n, f"run-{n:02d}", start=n)])
    await one.flush()
    await two.flush()

    pruned = await two.prune()

    assert_the_newest_kept_under_the_low_water(await one.search(limit=100), pruned)
    assert await one.prune() == 0 and await two.prune() == 0
    old = T0 + 10 * 86_400 * SECOND  # every trace past its retention: the counts go to 0
    assert await TraceStore(store, clock_ns=lambda: old).prune() == 30 - pruned
    assert [key async for key, _ in store.scan("traces", prefix=b"m/")] == []


async def test_bad_settings_are_refused_naming_them(store: Store) -> None:
    with pytest.raises(ConfigurationError, match="retention=0 must be a positive number"):
        TraceStore(store, retention=0)
    with pytest.raises(ConfigurationError, match="trace_max_bytes=-1 must be a positive number"):
        roost.ActorSystem(trace_max_bytes=-1)


# --- the system and read-only opens -----------------------------------------------------------


def end_run(system: roost.ActorSystem, run_id: str) -> str:
    """End a run > step span pair through the system's tracer; return the trace id."""
    tracer = system.tracer
    run = tracer.start("run support-email", SpanKind.RUN, trace_id=f"{hash(run_id) & (2**128 - 1):032x}",
                       run_id=run_id)
    step = tracer.start("step draft", SpanKind.STEP, trace_id=run.trace_id, parent_span_id=run.span_id,
                        run_id=run_id)
    step.usage(roost.Usage("gpt", 100, 20))
    step.end()
    run.end()
    return run.trace_id


async def test_the_system_keeps_its_spans_and_a_stopped_systems_store_is_read_read_only(
        tmp_path: Path) -> None:
    prices = {"gpt": roost.Price(input_per_million=1.0, output_per_million=2.0)}
    async with roost.ActorSystem(store=tmp_path, prices=prices, log_format="json",
                                 log_level="warning") as system:
        end_run(system, "email-0001")
        live = await system.traces.get("email-0001")
        end_run(system, "email-0002")  # still buffered when the system stops

    async with read_traces(tmp_path) as traces:
        stored = await traces.get("email-0001")
        last = await traces.get("email-0002")
        with pytest.raises(StoreError, match="opened read-only"):
            await traces._store.commit([Put("traces", b"x", b"y")])

    assert stored == live
    assert [span.name for span in last.spans] == ["run support-email", "step draft"]
    assert last.cost == pytest.approx((100 * 1.0 + 20 * 2.0) / 1e6)


async def test_a_store_a_running_system_holds_is_not_opened_read_only(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, log_format="json", log_level="warning"):
        with pytest.raises(StoreUnavailable, match="a running system has it open"):
            async with read_traces(tmp_path):
                pass


async def test_readers_share_a_store_and_keep_a_system_from_opening_it_meanwhile(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, log_format="json", log_level="warning") as system:
        end_run(system, "email-0001")

    async with read_traces(tmp_path) as traces:
        other = await anyio.run_process(
            [sys.executable, "-m", "roost.runtime.cli", "trace", "email-0001", "--store", str(tmp_path)],
            check=False)
        with pytest.raises(StoreUnavailable, match="it is already open"):
            async with roost.ActorSystem(store=tmp_path, log_format="json", log_level="warning"):
                pass
        with pytest.raises(StoreUnavailable, match="this process already has it open"):
            async with read_traces(tmp_path):
                pass
        assert (await traces.get("email-0001")).run_id == "email-0001"

    assert other.returncode == 0 and b"run email-0001" in other.stdout
    async with roost.ActorSystem(store=tmp_path, log_format="json", log_level="warning") as system:
        assert (await system.traces.get("email-0001")).run_id == "email-0001"


async def test_a_folder_without_a_store_is_not_created_by_a_read(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="there is no store in this folder"):
        async with read_traces(tmp_path / "nothing"):
            pass

    assert not (tmp_path / "nothing").exists()


async def test_system_traces_needs_a_store_tracing_and_a_running_system(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs a store and tracing"):
        roost.ActorSystem().traces  # noqa: B018
    with pytest.raises(ConfigurationError, match="needs a store and tracing"):
        roost.ActorSystem(store=tmp_path, tracing=False).traces  # noqa: B018
    system = roost.ActorSystem(store=tmp_path, log_format="json", log_level="warning")
    async with system:
        pass

    with pytest.raises(SystemNotRunning, match="read_traces"):
        system.traces  # noqa: B018


@pytest.fixture
def no_warnings_logged() -> Iterator[list[Any]]:
    with capture_logs() as logs:
        yield logs
    assert [log for log in logs if log["log_level"] in ("warning", "error")] == []


async def test_a_pipeline_run_leaves_a_trace_under_its_run_id(tmp_path: Path,
                                                             no_warnings_logged: list[Any]) -> None:
    class Draft(roost.Actor):
        async def receive(self, message: roost.RunStep) -> str:
            return "hello"

    pipeline = roost.Pipeline("one-step", [roost.Step("draft", Draft)])
    async with roost.ActorSystem(store=tmp_path, log_format=None) as system:
        handle = await system.pipelines.start(pipeline, run_id="run-1")
        assert (await handle.result()).status == "completed"

        trace = await system.traces.get("run-1")
        page = await system.traces.search(pipeline="one-step")

    assert trace.run_id == "run-1" and trace.errors == 0
    tree = [(depth, span.kind, span.name) for depth, span in trace.walk()]
    assert tree[0] == (0, SpanKind.RUN, "run one-step")
    assert (1, SpanKind.STEP, "step draft") in tree
    assert [summary.run_id for summary in page.traces] == ["run-1"]
