"""The layout of the `traces` database: its keys and records, and how a summary follows its spans.

Keys are laid out so that every query is a prefix or range scan:

- `t/<trace id>\\0<start ns, 8 bytes BE><span id>`: a span (msgpack `Span`); the
  spans of one trace are contiguous, in start order.
- `i/<start ns, 8 bytes BE><trace id>`: the trace's `TraceSummary`, in time order, so
  a search walks summaries newest first and never opens a span it does not need.
- `s/<trace id>`: a `TraceRef` to the trace's start, to find its summary.
- `r/<run id>\\0<trace id>`: a `TraceRef`, so a run id finds its trace(s).
- `m/totals/<writer>`: a `TraceTotals` per trace store that wrote spans (each process
  keeps its own, so that the nodes of a cluster never wait for each other's count); the
  size retention reads their sum. (`m/totals` alone is an older store's.)

Every value is a tagged msgpack map, as `roost store check` expects. The functions at
the end run inside `Store.read` for the trace store's writes and its retention.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgspec

from roost.storage.codecs import Record
from roost.storage.store import Snapshot
from roost.tracing.spans import Span, SpanKind

DB = "traces"
SPAN, INDEX, TRACE, RUN, TOTALS = b"t/", b"i/", b"s/", b"r/", b"m/totals"
_SEP = b"\x00"
_NS = struct.Struct(">Q")
_NS_SIZE = _NS.size

INPUT_TOKENS, OUTPUT_TOKENS, COST = ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens",
                                     "roost.cost")


class TraceSummary(Record, tag="trace-summary", frozen=True, kw_only=True, gc=False):
    """What one trace did, in brief: kept up to date as its spans are written.

    Attributes:
        trace_id: the trace.
        name: its root span's name (before the root has ended: its earliest span's).
        status: `ok` or `error` (the root span's, the latest root for a resumed run),
            or `open` while no root span has ended (a run in flight, or cut off).
        start_ns: when its earliest span started (wall clock, ns since the epoch).
        end_ns: when its latest span ended.
        run_ids: the runs its spans belong to.
        pipeline: the pipeline of its `run` span (named `run <pipeline>`), if any.
        error: the root span's error (`Type: message`), if it failed.
        spans: how many spans it has.
        errors: how many of them ended in error.
        steps: how many `step` spans it has.
        tools: the tools it called (from `tool <name>` spans), in first-call order.
        input_tokens: tokens read by the models it used (over every span but the run's).
        output_tokens: tokens written by them.
        cost: what those tokens cost by the price table, or None if nothing was priced.
        bytes: the stored size of its span records.
        root_end_ns: when the root span that set `status` ended.
    """

    trace_id: str
    name: str
    status: str
    start_ns: int
    end_ns: int
    run_ids: list[str] = []
    pipeline: str | None = None
    error: str | None = None
    spans: int = 0
    errors: int = 0
    steps: int = 0
    tools: list[str] = []
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    bytes: int = 0
    root_end_ns: int = 0

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @property
    def run_id(self) -> str | None:
        return self.run_ids[0] if self.run_ids else None


class TraceRef(Record, tag="trace-ref", frozen=True, kw_only=True, gc=False):
    """Where a trace's summary is: the trace's start (its `i/` key)."""

    start_ns: int


class TraceTotals(Record, tag="trace-totals", frozen=True, kw_only=True, gc=False):
    """The bytes of span records one trace store wrote, less those it pruned: the sum over
    every writer is the stored size of the spans, for size retention."""

    bytes: int = 0


# --- keys -----------------------------------------------------------------------------------


def span_key(span: Span) -> bytes:
    return b"".join((SPAN, span.trace_id.encode(), _SEP, _NS.pack(max(0, span.start_ns)),
                     span.span_id.encode()))


def spans_prefix(trace_id: str) -> bytes:
    return SPAN + trace_id.encode() + _SEP


def index_key(start_ns: int, trace_id: str) -> bytes:
    return INDEX + _NS.pack(max(0, start_ns)) + trace_id.encode()


def index_start(start_ns: int) -> bytes:
    return INDEX + _NS.pack(max(0, start_ns))


def trace_id_of_index(key: bytes) -> str:
    return key[len(INDEX) + _NS_SIZE:].decode(errors="replace")


def trace_key(trace_id: str) -> bytes:
    return TRACE + trace_id.encode()


def run_prefix(run_id: str) -> bytes:
    return RUN + run_id.encode() + _SEP


def run_key(run_id: str, trace_id: str) -> bytes:
    return run_prefix(run_id) + trace_id.encode()


# --- codecs and usage ----------------------------------------------------------------------

ENCODER = msgspec.msgpack.Encoder()
SPAN_DECODER = msgspec.msgpack.Decoder(Span)
SUMMARY_DECODER = msgspec.msgpack.Decoder(TraceSummary)
REF_DECODER = msgspec.msgpack.Decoder(TraceRef)
TOTALS_DECODER = msgspec.msgpack.Decoder(TraceTotals)


def usage_of(span: Span) -> tuple[int, int, float | None]:
    """The tokens and cost `span` reported itself (a run span's are totals: not counted)."""
    if span.kind == SpanKind.RUN:
        return 0, 0, None
    attributes = span.attributes
    cost = attributes.get(COST)
    return (_count(attributes.get(INPUT_TOKENS)), _count(attributes.get(OUTPUT_TOKENS)),
            float(cost) if isinstance(cost, int | float) else None)


def _count(value: Any) -> int:
    return value if isinstance(value, int) else 0


def add_cost(total: float | None, cost: float | None) -> float | None:
    return total if cost is None else (cost if total is None else total + cost)


# --- summaries ------------------------------------------------------------------------------

# The kinds a summary looks at, read once: an enum member read through its class is slow.
_RUN, _STEP, _TOOL_CALL = SpanKind.RUN, SpanKind.STEP, SpanKind.TOOL_CALL
_replace = msgspec.structs.replace


def merge(old: TraceSummary | None, trace_id: str, spans: list[tuple[Span, int]]) -> TraceSummary:
    """The summary of trace `trace_id` once `spans` (each with its stored size) are added.

    It runs for every trace of every batch the trace store writes, so the common span
    (not a root, no tool, no usage, no new run id, not earlier than the trace) only
    adds to the counters, and a batch of such spans only replaces those in `old`.
    """
    if old is None:
        first = spans[0][0]
        for span, _ in spans:
            if span.start_ns < first.start_ns:
                first = span
        old = TraceSummary(trace_id=trace_id, name=first.name, status="open",
                           start_ns=first.start_ns, end_ns=first.end_ns)
    name, status, error, pipeline = old.name, old.status, old.error, old.pipeline
    start_ns, end_ns, root_end_ns = old.start_ns, old.end_ns, old.root_end_ns
    run_ids, tools = old.run_ids, old.tools
    errors, steps, size = old.errors, old.steps, old.bytes
    input_tokens, output_tokens, cost = old.input_tokens, old.output_tokens, old.cost
    counters_only = True
    for span, stored in spans:
        size += stored
        if span.end_ns > end_ns:
            end_ns = span.end_ns
        if span.status == "error":
            errors += 1
        kind = span.kind
        if kind == _STEP:
            steps += 1
        attributes = span.attributes
        if (span.start_ns >= start_ns and span.parent_span_id is not None
                and kind != _TOOL_CALL and kind != _RUN
                and (span.run_id is None or span.run_id in run_ids)
                and INPUT_TOKENS not in attributes and OUTPUT_TOKENS not in attributes
                and COST not in attributes):
            continue
        counters_only = False
        if span.start_ns < start_ns:
            start_ns = span.start_ns
            if status == "open":
                name = span.name
        if kind == _TOOL_CALL:
            tool = span.name.removeprefix("tool ")
            if tool not in tools:
                tools = [*tools, tool]
        if span.run_id is not None and span.run_id not in run_ids:
            run_ids = [*run_ids, span.run_id]
        reads, writes, priced = usage_of(span)
        input_tokens += reads
        output_tokens += writes
        cost = add_cost(cost, priced)
        if span.parent_span_id is None and span.end_ns >= root_end_ns:
            root_end_ns, name, status = span.end_ns, span.name, span.status
            error = (None if span.status != "error"
                     else f"{span.error_type}: {span.error_message}")
            if kind == _RUN:
                pipeline = span.name.removeprefix("run ")
    if counters_only:
        return _replace(old, end_ns=end_ns, spans=old.spans + len(spans),
                        errors=errors, steps=steps, bytes=size)
    return TraceSummary(
        trace_id=trace_id, name=name, status=status, start_ns=start_ns, end_ns=end_ns,
        run_ids=run_ids, pipeline=pipeline, error=error, spans=old.spans + len(spans),
        errors=errors, steps=steps, tools=tools, input_tokens=input_tokens,
        output_tokens=output_tokens, cost=cost, bytes=size, root_end_ns=root_end_ns)


# --- what the writer and the retention read ------------------------------------------------

#: Keys one prune commit deletes, about (always at least one whole trace).
_PRUNE_KEYS = 4096


def current_summaries(trace_ids: list[str], snapshot: Snapshot,
                      ) -> dict[str, tuple[TraceSummary | None, bytes | None]]:
    """Each trace's stored summary and its index key (None, None for a new trace; a summary
    that does not decode is None, to be rebuilt, with its key, to be replaced)."""
    found: dict[str, tuple[TraceSummary | None, bytes | None]] = {}
    for trace_id in trace_ids:
        ref = snapshot.get(DB, trace_key(trace_id))
        try:
            key = None if ref is None else index_key(REF_DECODER.decode(ref).start_ns, trace_id)
        except msgspec.DecodeError:
            key = None
        raw = None if key is None else snapshot.get(DB, key)
        try:
            summary = None if raw is None else SUMMARY_DECODER.decode(raw)
        except msgspec.DecodeError:
            summary = None
        found[trace_id] = (summary, key if raw is not None else None)
    return found


def prune_victims(cutoff_ns: int, max_bytes: int, low_water: int, snapshot: Snapshot,
                  ) -> tuple[list[bytes], int, int, bool, dict[bytes, int]]:
    """The keys of the oldest traces to delete: started before `cutoff_ns`, or while the
    span records take more than `max_bytes` (until `low_water`). Returns the keys, the
    bytes they free, how many traces, whether that is every trace, and the writers'
    counts as read (see `totals`)."""
    counts = totals(snapshot)
    total = sum(counts.values())
    excess = total - low_water if total > max_bytes else 0
    keys: list[bytes] = []
    freed = traces = 0
    for key, value in snapshot.scan(DB, prefix=INDEX):
        if len(keys) >= _PRUNE_KEYS or (
                int.from_bytes(key[len(INDEX):len(INDEX) + 8], "big") >= cutoff_ns
                and freed >= excess):
            return keys, freed, traces, False, counts
        trace_id = trace_id_of_index(key)
        keys += (key, trace_key(trace_id))
        try:
            keys += (run_key(run_id, trace_id) for run_id in SUMMARY_DECODER.decode(value).run_ids)
        except msgspec.DecodeError:
            pass  # its run index entries stay: a run id that finds no spans is "not found"
        for span, stored in snapshot.scan(DB, prefix=spans_prefix(trace_id)):
            keys.append(span)
            freed += len(span) + len(stored)
        traces += 1
    return keys, freed, traces, True, counts


def totals(snapshot: Snapshot) -> dict[bytes, int]:
    """The bytes each writer's totals record counts (one that does not decode counts 0)."""
    found = {}
    for key, value in snapshot.scan(DB, prefix=TOTALS):
        try:
            found[key] = TOTALS_DECODER.decode(value).bytes
        except msgspec.DecodeError:
            found[key] = 0
    return found


def adding_bytes(delta: int) -> Callable[[bytes | None], bytes | None]:
    """The change (for an `Update` of a totals record) that adds `delta` bytes to its count,
    which may go below 0 (a writer that pruned others' spans): only the sum is a size.
    A count that reaches 0 is deleted (the record of a writer long gone goes away)."""
    def change(current: bytes | None) -> bytes | None:
        try:
            total = 0 if current is None else TOTALS_DECODER.decode(current).bytes
        except msgspec.DecodeError:
            total = 0
        total += delta
        return ENCODER.encode(TraceTotals(bytes=total)) if total else None

    return change
