"""The trace store: every finished span, kept in the store's `traces` database and queried back.

A `TraceStore` is a sink of the system's `Tracer` (`tracer.add_sink(traces.add)`).
`add` only appends the span to a bounded in-memory buffer: it never blocks and never
raises. A flusher task writes the buffer in batches (every `flush_interval`, or as
soon as `batch_size` spans wait) as non-durable commits, so spans never cost an
fsync and ride the writer thread's group commit with everything else. Each batch
also updates the summaries of the traces it touches (see `roost.tracing.records` for
the key layout). A batch the store refuses (a full disk, a closed store) is dropped
and counted, with one warning: tracing never fails or slows the work it records.

Old traces are pruned off the hot path, a few at a time, by age (`retention`) and
by size (`max_bytes` of span records), by a periodic task; and by size as soon as the
spans written take the store past `max_bytes` (one background prune at a time).

`get` reads a small trace (up to `_LOOP_READ_BYTES` of span records) on the event
loop, as the store reads a point, and a larger one in one worker-thread hop; `search`
reads in one hop per query (or per chunk of a long search). `read_traces(path)` opens
the traces of a store no system has open.
"""

from __future__ import annotations

import asyncio
import collections
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import datetime
from functools import partial

import msgspec

from roost._logging import get_logger
from roost.errors import ConfigurationError, TraceNotFound
from roost.storage._interface import StoreInterface
from roost.storage.ops import Delete, Op, Put, Update
from roost.storage.store import Store
from roost.tracing.query import (
    Trace,
    TracePage,
    check_id,
    decode_cursor,
    decode_trace,
    encode_cursor,
    parse_filters,
    read_records,
    read_summary,
    read_trace,
    search_chunk,
)
from roost.tracing.records import (
    DB,
    ENCODER,
    TOTALS,
    TraceRef,
    TraceSummary,
    adding_bytes,
    current_summaries,
    index_key,
    merge,
    prune_victims,
    run_key,
    span_key,
    trace_key,
)
from roost.tracing.spans import Span

_log = get_logger("roost")

# Summaries of open traces a trace store keeps in memory, at most.
_KNOWN_SUMMARIES = 8192
# Batches a flush commits at once, at most: they ride one group commit of the store's writer.
_IN_FLIGHT = 16
# Summaries one search read transaction looks at, at most.
_SEARCH_BUDGET = 2048
# Bytes of span records `get` reads on the event loop, at most (some 200 spans of a
# run's steps: a few hundred microseconds, decoded); a larger trace is read in a
# worker thread, so that the loop never waits long for one.
_LOOP_READ_BYTES = 64 * 1024


class _Write(msgspec.Struct, frozen=True):
    """One batch ready to commit: its operations, how many spans it writes, its traces, and
    the bytes it adds to the store's total."""

    ops: list[Op]
    spans: int
    traces: list[str]
    added: int


class TraceStoreStatistics(msgspec.Struct, frozen=True):
    """A snapshot of a trace store's counters.

    Attributes:
        buffered: spans waiting to be written.
        written: spans written.
        dropped: spans lost: pushed out of a full buffer, unencodable, or in a batch
            the store refused.
        failed_batches: batches the store refused.
        pruned: traces deleted by retention.
        skipped: records that did not decode, skipped by queries.
    """

    buffered: int
    written: int
    dropped: int
    failed_batches: int
    pruned: int
    skipped: int


class TraceStore:
    """Keeps spans in a store's `traces` database, and answers queries about them.

    Args:
        store: the open store (read-only for queries only).
        retention: seconds a trace is kept after it started.
        max_bytes: the most bytes of span records kept; past it the oldest traces go.
        flush_interval: seconds a span waits in the buffer at most.
        batch_size: spans per write; a full batch is written at once.
        max_buffered: spans the buffer holds; past it the oldest are dropped.
        prune_interval: seconds between retention sweeps.
        clock_ns: wall-clock nanoseconds (inject in tests).

    Raises:
        ConfigurationError: a setting that is not a positive number.
    """

    def __init__(self, store: StoreInterface, *, retention: float = 7 * 86_400.0,
                 max_bytes: int = 256 * 2**20, flush_interval: float = 0.2,
                 batch_size: int = 512, max_buffered: int = 100_000,
                 prune_interval: float = 60.0,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        for name, value in (("retention", retention), ("max_bytes", max_bytes),
                            ("flush_interval", flush_interval), ("batch_size", batch_size),
                            ("max_buffered", max_buffered), ("prune_interval", prune_interval)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"TraceStore: {name}={value!r} must be a positive number")
        self._store = store
        self._retention_ns = int(retention * 1e9)
        self._max_bytes = max_bytes
        self._flush_interval = flush_interval
        self._batch_size = batch_size
        self._clock_ns = clock_ns
        self._prune_interval = prune_interval
        self._buffer: collections.deque[Span] = collections.deque(maxlen=max_buffered)
        self._writing = asyncio.Lock()  # one writer of the traces database at a time
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._size_pruner: asyncio.Task[None] | None = None
        # The store's span bytes as the last prune read them, plus what this store wrote since.
        self._total_bytes = 0
        self._closing = False
        self._warned: set[str] = set()
        # The stored summary and index key (None, None: no summary) of the open traces
        # written lately: this store is their only writer, so a batch reads only the rest.
        self._summaries: dict[str, tuple[TraceSummary | None, bytes | None]] = {}
        # This store's own count of span bytes (see `records.totals`): writers of one
        # database (a cluster's nodes) never wait for each other to count.
        self._totals = TOTALS + b"/" + secrets.token_hex(8).encode()
        self.written = self.dropped = self.failed_batches = self.pruned = self.skipped = 0

    # --- recording ------------------------------------------------------------------------

    def add(self, span: Span) -> None:
        """Buffer a finished span for writing (the Tracer's sink): never blocks or raises."""
        buffer = self._buffer
        if len(buffer) == buffer.maxlen:
            self.dropped += 1  # the append pushes the oldest out
        buffer.append(span)
        if len(buffer) == self._batch_size and self._loop is not None:
            try:  # a full batch: wake the flusher (from any thread)
                self._loop.call_soon_threadsafe(self._wake.set)
            except RuntimeError:  # the loop is closed: the spans wait for `flush`
                pass

    def start(self) -> None:
        """Start the flusher and the retention sweep (on the running loop)."""
        self._loop = loop = asyncio.get_running_loop()
        self._flusher = loop.create_task(self._flush_loop(), name="roost-trace-flusher")
        self._pruner = loop.create_task(self._prune_loop(), name="roost-trace-pruner")

    async def close(self) -> None:
        """Stop the sweep, write every buffered span, and stop the flusher (before the store
        closes). Calling it again does nothing."""
        if self._closing:
            return
        self._closing = True
        for pruner in (self._pruner, self._size_pruner):
            if pruner is not None:
                pruner.cancel()
                with suppress(asyncio.CancelledError):
                    await pruner
        self._wake.set()
        if self._flusher is not None:
            await self._flusher
        await self.flush()

    async def flush(self) -> None:
        """Write the spans buffered so far, in batches.

        Up to `_IN_FLIGHT` batches are committed at once, so that they ride one group
        commit: a flush that waited for each batch's commit before the next would write
        one batch per turn of the store's writer, fewer spans than busy runs make.
        Never raises for a write the store refuses: that batch is dropped and counted.
        """
        if self._store.readonly:
            return
        async with self._writing:
            pending = len(self._buffer)
            while pending > 0 and self._buffer:
                writes: list[_Write] = []
                while pending > 0 and self._buffer and len(writes) < _IN_FLIGHT:
                    batch = [self._buffer.popleft()
                             for _ in range(min(self._batch_size, pending, len(self._buffer)))]
                    pending -= len(batch)
                    try:
                        write = await self._prepare(batch)
                    except Exception as error:  # its summaries cannot be read (a closed store)
                        self._failed(len(batch), error)
                        continue
                    if write is not None:
                        writes.append(write)
                await self._commit(writes)

    async def _flush_loop(self) -> None:
        while not self._closing:
            if len(self._buffer) < self._batch_size:
                self._wake.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(self._flush_interval):
                        await self._wake.wait()
            await self.flush()

    async def _prepare(self, spans: list[Span]) -> _Write | None:
        """The commit of one batch: the spans, their traces' summaries and index entries,
        the size total (None: no span of the batch could be encoded).

        A trace's stored summary comes from `_summaries` when this store wrote it lately
        (or is writing it now, in an earlier batch), else from the store (a few point
        reads per new trace: on the loop from LMDB's memory, in a thread from a server).
        The batch's summaries go into `_summaries` at once, so that the next batch,
        committed with this one, merges into them.
        """
        ops: list[Op] = []
        by_trace: dict[str, list[tuple[Span, int]]] = {}
        longest = self._store.max_key_size
        encode = ENCODER.encode
        for span in spans:
            try:
                key, value = span_key(span), encode(span)
            except (TypeError, ValueError, msgspec.EncodeError) as error:
                self.dropped += 1
                self._warn_once("span_unencodable", error, span=span.name)
                continue
            if len(key) > longest:
                self.dropped += 1
                continue
            ops.append(Put(DB, key, value))
            items = by_trace.get(span.trace_id)
            if items is None:
                by_trace[span.trace_id] = [(span, len(key) + len(value))]
            else:
                items.append((span, len(key) + len(value)))
        if not by_trace:
            return None
        written = len(ops)
        known = self._summaries
        unknown = [trace_id for trace_id in by_trace if trace_id not in known]
        if unknown:  # as stored now, whether or not this commit goes through
            read = partial(current_summaries, unknown)
            known.update(self._store.read_on_loop(read) if self._store.reads_in_memory
                         else await self._store.read(read))
        added = 0
        for trace_id, items in by_trace.items():
            old, old_key = known[trace_id]
            new = merge(old, trace_id, items)
            added += new.bytes - (old.bytes if old is not None else 0)
            new_key = index_key(new.start_ns, trace_id)
            moved = old is None or old_key != new_key
            if old_key is not None and old_key != new_key:
                ops.append(Delete(DB, old_key))
            ops.append(Put(DB, new_key, encode(new)))
            known[trace_id] = (new, new_key)
            indexed = () if moved or old is None else old.run_ids
            if moved or len(new.run_ids) > len(indexed):
                ref = encode(TraceRef(start_ns=new.start_ns))
                if moved:
                    ops.append(Put(DB, trace_key(trace_id), ref))
                for run_id in new.run_ids:
                    if run_id not in indexed:
                        key = run_key(run_id, trace_id)
                        if len(key) <= longest:
                            ops.append(Put(DB, key, ref))
        ops.append(Update(DB, self._totals, adding_bytes(added)))
        return _Write(ops, written, list(by_trace), added)

    async def _commit(self, writes: list[_Write]) -> None:
        """Commit prepared batches at once (non-durable) and count how each went.

        A batch the store refuses is dropped and counted, with one warning.
        """
        known = self._summaries
        try:
            outcomes = await asyncio.gather(
                *(self._store.commit(write.ops, durable=False) for write in writes),
                return_exceptions=True)
        except BaseException:  # cancelled: some commits may have been made
            for write in writes:
                for trace_id in write.traces:
                    known.pop(trace_id, None)  # read them again
            raise
        for write, outcome in zip(writes, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome
                self._failed(write.spans, outcome)
                # Read them again as stored. (A later batch of the same trace that was
                # committed counted this one's spans in its summary: rare, since the
                # batches of one flush share a transaction, and only a summary.)
                for trace_id in write.traces:
                    known.pop(trace_id, None)
                continue
            self.written += write.spans
            self._total_bytes += write.added
            for trace_id in write.traces:
                summary = known.get(trace_id)
                if summary is not None and summary[0] is not None and summary[0].status != "open":
                    del known[trace_id]  # its root has ended: few spans, if any, follow
        while len(known) > _KNOWN_SUMMARIES:
            del known[next(iter(known))]
        if self._total_bytes > self._max_bytes:
            self._prune_for_size()

    def _prune_for_size(self) -> None:
        """Start a prune in the background, unless one is running (or the store is closing)."""
        running = self._size_pruner
        if self._closing or self._loop is None or (running is not None and not running.done()):
            return
        self._size_pruner = self._loop.create_task(self._sweep(), name="roost-trace-size-pruner")

    def _failed(self, spans: int, error: Exception) -> None:
        """A batch of `spans` spans could not be written: drop it, count it, warn once."""
        self.dropped += spans
        self.failed_batches += 1
        self._warn_once("trace_write_failed", error, spans=spans)

    # --- retention ------------------------------------------------------------------------

    async def prune(self) -> int:
        """Delete the traces that started longer than `retention` ago, then the oldest ones
        while the span records take more than `max_bytes` (down to 90% of it), a few
        traces per commit. Returns how many traces were deleted."""
        pruned = 0
        while not self._store.readonly:
            cutoff = self._clock_ns() - self._retention_ns
            async with self._writing:
                keys, freed, traces, emptied, counts = await self._store.read(partial(
                    prune_victims, cutoff, self._max_bytes, int(self._max_bytes * 0.9)))
                self._total_bytes = sum(counts.values()) - freed
                if not traces:
                    return pruned
                ops: list[Op] = [Delete(DB, key) for key in keys]
                ops += self._recount(counts, freed, emptied=emptied)
                self._summaries.clear()  # some of them may be gone
                await self._store.commit(ops, durable=False)
            pruned += traces
            self.pruned += traces
        return pruned

    def _recount(self, counts: dict[bytes, int], freed: int, *, emptied: bool) -> list[Op]:
        """The totals' changes for a prune that read `counts` and frees `freed` bytes: every
        other writer's count moves into this one's, less the bytes freed. With nothing
        left (`emptied`), each count keeps only what was written since it was read, which
        also mends a count that had drifted."""
        ops: list[Op] = [Update(DB, key, adding_bytes(-bytes))
                         for key, bytes in counts.items() if bytes and (emptied or key != self._totals)]
        if not emptied:
            moved = sum(bytes for key, bytes in counts.items() if key != self._totals)
            ops.append(Update(DB, self._totals, adding_bytes(moved - freed)))
        return ops

    async def _prune_loop(self) -> None:
        while True:
            await self._sweep()
            await asyncio.sleep(self._prune_interval)

    async def _sweep(self) -> None:
        """Prune, logging what went; a failure is warned about once and retried later."""
        try:
            pruned = await self.prune()
        except Exception as error:  # retry at the next sweep
            self._warn_once("trace_prune_failed", error)
        else:
            if pruned:
                _log.info("traces_pruned", traces=pruned)

    # --- queries --------------------------------------------------------------------------

    async def get(self, run_or_trace_id: str) -> Trace:
        """The trace of a run (by run id) or a trace (by trace id): its span tree and totals.

        Spans still buffered are written first. Span records that do not decode are
        left out and listed in `Trace.skipped`.

        Raises:
            TraceNotFound: no run or trace has this id (or its trace was pruned).
            StoreError: the store is closed.
        """
        check_id(run_or_trace_id)
        await self._flush_pending()
        # A small trace in LMDB's memory costs less to read than a thread hop: it is read
        # on the loop.
        found = self._store.read_on_loop(partial(
            read_records, run_or_trace_id=run_or_trace_id, max_bytes=_LOOP_READ_BYTES)
        ) if self._store.reads_in_memory else None
        if found is not None:
            trace = decode_trace(found)
        else:
            trace = await self._store.read(partial(read_trace, run_or_trace_id=run_or_trace_id))
        if trace is None:
            raise TraceNotFound(run_or_trace_id, self._store.path)
        self._skipped(trace.skipped)
        return trace

    async def summary(self, run_or_trace_id: str) -> TraceSummary | None:
        """The summary of a run's (latest) trace or of a trace, or None if there is none."""
        check_id(run_or_trace_id)
        await self._flush_pending()
        return await self._store.read(partial(read_summary, run_or_trace_id=run_or_trace_id))

    async def search(self, *, status: str | None = None, pipeline: str | None = None,
                     tool: str | None = None, since: float | datetime | None = None,
                     min_duration: float | None = None, text: str | None = None,
                     limit: int = 50, cursor: str | None = None) -> TracePage:
        """A page of trace summaries, newest first, that match every filter given.

        Args:
            status: `ok`, `error` (the root span's status) or `open` (no root span yet).
            pipeline: the pipeline of the trace's run.
            tool: a tool the trace called.
            since: only traces that started at or after it (a datetime, or seconds
                since the epoch).
            min_duration: only traces that took at least this many seconds.
            text: a substring (ASCII case-insensitive) of any span's name, attributes,
                payloads, events or error; this one reads the spans of each candidate.
            limit: the most summaries in the page.
            cursor: the `cursor` of the previous page, for the next one.

        Raises:
            ConfigurationError: a bad filter, limit or cursor.
            StoreError: the store is closed.
        """
        filters = parse_filters(status, pipeline, tool, since, min_duration, text)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(f"search: limit={limit!r} must be a positive int")
        stop = decode_cursor(cursor)
        await self._flush_pending()
        found: list[TraceSummary] = []
        skipped: list[str] = []
        while True:
            chunk, chunk_skipped, last, exhausted = await self._store.read(partial(
                search_chunk, filters=filters, stop=stop, wanted=limit - len(found),
                budget=_SEARCH_BUDGET))
            found += chunk
            skipped += chunk_skipped
            if exhausted or last is None:
                next_cursor = None
                break
            if len(found) >= limit:
                next_cursor = encode_cursor(last)
                break
            stop = last
        self._skipped(skipped)
        return TracePage(found, next_cursor, skipped)

    def statistics(self) -> TraceStoreStatistics:
        """A snapshot of the counters (see `TraceStoreStatistics`)."""
        return TraceStoreStatistics(buffered=len(self._buffer), written=self.written,
                                    dropped=self.dropped, failed_batches=self.failed_batches,
                                    pruned=self.pruned, skipped=self.skipped)

    async def _flush_pending(self) -> None:
        """Before a query: write the buffered spans, and wait for a batch being written."""
        if self._buffer or self._writing.locked():
            await self.flush()

    def _skipped(self, records: list[str]) -> None:
        if records:
            self.skipped += len(records)
            _log.warning("trace_records_skipped", count=len(records), store=self._store.path,
                         records=records[:5])

    def _warn_once(self, event: str, error: BaseException, **details: object) -> None:
        if event not in self._warned:
            self._warned.add(event)
            _log.warning(event, store=self._store.path, error_type=type(error).__name__,
                         error=str(error), **details)


@asynccontextmanager
async def read_traces(path: str | os.PathLike[str]) -> AsyncIterator[TraceStore]:
    """Open the traces of the store at `path` for queries, without writing anything.

    For the store of a system that is not running (a system that has it open is
    queried through `system.traces`)::

        async with roost.tracing.read_traces(".roost") as traces:
            trace = await traces.get("email-0042")

    Raises:
        StoreUnavailable: there is no store at `path`, or a running system has it open.
        StoreCorrupt: the store is damaged.
    """
    async with Store.open(path, readonly=True) as store:
        yield TraceStore(store)
