"""Reading traces back from the `traces` database: a run's span tree, and searches.

The readers here run inside `Store.read` (a worker thread, one read transaction), or
`Store.read_on_loop` for a small trace's records (`read_records` with a byte limit,
decoded by `decode_trace` outside the transaction). A record that does not decode is
skipped and reported, never fatal to a query.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from datetime import datetime

import msgspec

from roost.errors import ConfigurationError
from roost.storage.store import Snapshot
from roost.tracing.records import (
    COST,
    DB,
    INDEX,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
    REF_DECODER,
    SPAN_DECODER,
    SUMMARY_DECODER,
    TraceSummary,
    add_cost,
    index_key,
    index_start,
    run_prefix,
    spans_prefix,
    trace_key,
    usage_of,
)
from roost.tracing.spans import Span

#: What `search(status=...)` takes: the root span's status, or `open` (no root yet).
STATUSES = ("ok", "error", "open")


class Trace(msgspec.Struct, frozen=True):
    """A trace read back: its spans, the tree they make, and its totals.

    Attributes:
        trace_id: the trace (the earliest, for a run with more than one).
        run_id: the run it belongs to, if any.
        spans: every span, in start order.
        children: the ids of each span's children, in start order (only spans that
            have children are keys).
        roots: the spans with no parent in the trace, in start order (a span whose
            parent was lost is a root too).
        start_ns: when the earliest span started.
        end_ns: when the latest span ended.
        input_tokens: tokens read by the models used (over every span but the run's).
        output_tokens: tokens written by them.
        cost: what they cost, or None if nothing was priced.
        errors: how many spans ended in error.
        skipped: the span records that did not decode (key and error), left out.
    """

    trace_id: str
    run_id: str | None
    spans: list[Span]
    children: dict[str, list[str]]
    roots: list[str]
    start_ns: int
    end_ns: int
    input_tokens: int
    output_tokens: int
    cost: float | None
    errors: int
    skipped: list[str]

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def walk(self) -> Iterator[tuple[int, Span]]:
        """`(depth, span)` for every span, parents before children, siblings by start."""
        by_id = {span.span_id: span for span in self.spans}
        seen: set[str] = set()
        stack = [(0, span_id) for span_id in reversed(self.roots)]
        while stack:
            depth, span_id = stack.pop()
            if span_id in seen:
                continue
            seen.add(span_id)
            yield depth, by_id[span_id]
            stack.extend((depth + 1, child) for child in reversed(self.children.get(span_id, [])))


class TracePage(msgspec.Struct, frozen=True):
    """One page of `TraceStore.search`: summaries newest first, and where the next starts.

    Attributes:
        traces: the matching traces' summaries, newest first.
        cursor: pass it as `cursor=` for the next page; None when there is none.
        skipped: the summary records that did not decode (key and error), left out.
    """

    traces: list[TraceSummary]
    cursor: str | None
    skipped: list[str]


class Filters(msgspec.Struct, frozen=True):
    """What `search` keeps (None: any)."""

    status: str | None = None
    pipeline: str | None = None
    tool: str | None = None
    since_ns: int = 0
    min_duration_ns: int = 0
    text: bytes | None = None  # lower-cased UTF-8, matched against every span's record


def skipped_entry(key: bytes, error: BaseException) -> str:
    return f"{key!r}: {error}"


# --- reading a trace ------------------------------------------------------------------------


class TraceRecords(msgspec.Struct, frozen=True):
    """The span records of a run's trace(s) or of a trace, copied out of a read transaction.

    Attributes:
        trace_ids: the traces read (the id given, if it names no run).
        run_id: the run, if the id named one.
        records: `(key, value)` of every span record, in key order.
    """

    trace_ids: list[str]
    run_id: str | None
    records: list[tuple[bytes, bytes]]


def read_trace(snapshot: Snapshot, run_or_trace_id: str) -> Trace | None:
    """The trace of run `run_or_trace_id`, or the trace with that id; None if neither.

    A run's trace is normally one (a resumed run continues it); if it has more, their
    spans are read together.
    """
    found = read_records(snapshot, run_or_trace_id, max_bytes=None)
    return None if found is None else decode_trace(found)


def read_records(snapshot: Snapshot, run_or_trace_id: str,
                 max_bytes: int | None) -> TraceRecords | None:
    """The span records `read_trace` decodes, or None once they take more than `max_bytes`
    (None: no limit), so that a read on the event loop stays as small as a point read."""
    prefix = run_prefix(run_or_trace_id)
    trace_ids = [key[len(prefix):].decode() for key, _ in snapshot.scan(DB, prefix=prefix)]
    run_id: str | None = run_or_trace_id if trace_ids else None
    if not trace_ids:
        trace_ids = [run_or_trace_id]
    records: list[tuple[bytes, bytes]] = []
    size = 0
    for trace_id in trace_ids:
        for key, value in snapshot.scan(DB, prefix=spans_prefix(trace_id)):
            size += len(value)
            if max_bytes is not None and size > max_bytes:
                return None
            records.append((key, value))
    return TraceRecords(trace_ids, run_id, records)


def decode_trace(found: TraceRecords) -> Trace | None:
    """The `Trace` that `found`'s records make (those that do not decode are skipped and
    listed), or None if there are none."""
    if not found.records:
        return None
    decode = SPAN_DECODER.decode
    spans: list[Span] = []
    skipped: list[str] = []
    for key, value in found.records:
        try:
            spans.append(decode(value))
        except msgspec.DecodeError as error:
            skipped.append(skipped_entry(key, error))
    return build_trace(found.trace_ids, found.run_id, spans, skipped)


def build_trace(trace_ids: list[str], run_id: str | None, spans: list[Span],
                skipped: list[str]) -> Trace:
    """The `Trace` that `spans` make: ordered, linked, totalled."""
    spans.sort(key=_START_END)
    ids = {span.span_id for span in spans}
    children: dict[str, list[str]] = {}
    roots: list[str] = []
    input_tokens = output_tokens = errors = end_ns = 0
    cost: float | None = None
    for span in spans:
        parent = span.parent_span_id
        if parent is not None and parent in ids and parent != span.span_id:
            if parent in children:
                children[parent].append(span.span_id)
            else:
                children[parent] = [span.span_id]
        else:
            roots.append(span.span_id)
        # Most spans report no usage: three lookups skip them cheaper than `usage_of`.
        attributes = span.attributes
        if INPUT_TOKENS in attributes or OUTPUT_TOKENS in attributes or COST in attributes:
            reads, writes, priced = usage_of(span)
            input_tokens += reads
            output_tokens += writes
            cost = add_cost(cost, priced)
        if span.status == "error":
            errors += 1
        if span.end_ns > end_ns:
            end_ns = span.end_ns
        if run_id is None:
            run_id = span.run_id
    return Trace(trace_id=spans[0].trace_id if spans else trace_ids[0], run_id=run_id, spans=spans,
                 children=children, roots=roots, start_ns=spans[0].start_ns if spans else 0,
                 end_ns=end_ns, input_tokens=input_tokens, output_tokens=output_tokens, cost=cost,
                 errors=errors, skipped=skipped)


_START_END = operator.attrgetter("start_ns", "end_ns")


def read_summary(snapshot: Snapshot, run_or_trace_id: str) -> TraceSummary | None:
    """The summary of run `run_or_trace_id`'s latest trace, or of that trace; None if neither
    (or if its records do not decode)."""
    prefix = run_prefix(run_or_trace_id)
    refs = [(key[len(prefix):].decode(), value) for key, value in snapshot.scan(DB, prefix=prefix)]
    if not refs:
        refs = [(run_or_trace_id, snapshot.get(DB, trace_key(run_or_trace_id)) or b"")]
    try:
        start_ns, trace_id = max((REF_DECODER.decode(value).start_ns, trace_id)
                                 for trace_id, value in refs)
        raw = snapshot.get(DB, index_key(start_ns, trace_id))
        return None if raw is None else SUMMARY_DECODER.decode(raw)
    except msgspec.DecodeError:
        return None


# --- searching ------------------------------------------------------------------------------


def search_chunk(snapshot: Snapshot, filters: Filters, stop: bytes | None, wanted: int,
                 budget: int) -> tuple[list[TraceSummary], list[str], bytes | None, bool]:
    """Walk summaries newest first from below `stop`, keeping those that match.

    Stops after `wanted` matches or `budget` summaries looked at (so one read
    transaction stays short). Returns the matches, the records skipped, the key of
    the last summary looked at, and whether the walk reached the end.
    """
    found: list[TraceSummary] = []
    skipped: list[str] = []
    last: bytes | None = None
    for key, value in snapshot.scan(DB, prefix=INDEX, start=index_start(filters.since_ns),
                                    stop=stop, reverse=True):
        last = key
        budget -= 1
        try:
            summary = SUMMARY_DECODER.decode(value)
        except msgspec.DecodeError as error:
            skipped.append(skipped_entry(key, error))
        else:
            if _matches(snapshot, summary, value, filters):
                found.append(summary)
                if len(found) >= wanted:
                    return found, skipped, last, False
        if budget <= 0:
            return found, skipped, last, False
    return found, skipped, last, True


def _matches(snapshot: Snapshot, summary: TraceSummary, record: bytes, filters: Filters) -> bool:
    if filters.status is not None and summary.status != filters.status:
        return False
    if filters.pipeline is not None and summary.pipeline != filters.pipeline:
        return False
    if filters.tool is not None and filters.tool not in summary.tools:
        return False
    if summary.duration_ns < filters.min_duration_ns:
        return False
    text = filters.text
    if text is None:
        return True
    # Strings are stored as UTF-8 in msgpack, so a substring of the raw record is a
    # match in a name, an attribute, a payload or an error message.
    if text in record.lower():
        return True
    return any(text in value.lower()
               for _key, value in snapshot.scan(DB, prefix=spans_prefix(summary.trace_id)))


# --- arguments ------------------------------------------------------------------------------


def check_id(run_or_trace_id: object) -> None:
    """Refuse an id that cannot name a run or a trace."""
    if not isinstance(run_or_trace_id, str) or not run_or_trace_id:
        raise ConfigurationError(f"run or trace id {run_or_trace_id!r} must be a non-empty string")


def parse_filters(status: str | None, pipeline: str | None, tool: str | None,
                  since: float | datetime | None, min_duration: float | None,
                  text: str | None) -> Filters:
    """`search`'s filters, checked (`ConfigurationError` naming a bad one)."""
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"search: status={status!r} is not a trace status; use one of "
                                 f"{', '.join(STATUSES)}")
    if isinstance(since, datetime):
        since = since.timestamp()
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        raise ConfigurationError(f"search: since={since!r} must be a datetime or seconds since "
                                 "the epoch")
    if min_duration is not None and (isinstance(min_duration, bool)
                                     or not isinstance(min_duration, int | float)
                                     or min_duration < 0):
        raise ConfigurationError(f"search: min_duration={min_duration!r} must be seconds >= 0")
    return Filters(status=status, pipeline=pipeline, tool=tool,
                   since_ns=max(0, int((since or 0) * 1e9)),
                   min_duration_ns=int((min_duration or 0) * 1e9),
                   text=None if not text else text.lower().encode())


def encode_cursor(key: bytes) -> str:
    """The cursor of a page that ended at summary `key`: the next page starts below it."""
    return key[len(INDEX):].hex()


def decode_cursor(cursor: str | None) -> bytes | None:
    """The summary key below which a page starts (None: the newest), from its cursor."""
    if cursor is None:
        return None
    try:
        position = bytes.fromhex(cursor) if isinstance(cursor, str) else b""
    except ValueError:
        position = b""
    if len(position) <= 8:
        raise ConfigurationError(f"search: cursor={cursor!r} is not a cursor of a search page; "
                                 "pass the `cursor` of the previous page, or None for the first")
    return INDEX + position
