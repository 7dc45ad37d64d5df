"""`roost trace RUN_OR_TRACE_ID` and `roost runs`: what runs did, read from a stopped system's store.

`roost trace` prints a run's span tree as a text waterfall: one line per span,
indented by depth, with a bar placed and scaled on the trace's time span, its
duration, status (errors in red on a terminal), tokens and cost; `--json` prints
the raw spans. A span record that does not decode is left out and named on stderr, and
the command exits 1; so does a run whose trace is not kept (tracing off, or pruned).
`roost runs` lists runs, newest first, with their status, pipeline, start, duration,
steps, tokens and cost; a run record that does not decode is left out and named on
stderr, and the command exits 1. Both open the store read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from datetime import datetime
from typing import Any

import msgspec

from roost.console.views import latest_progress, steps_run
from roost.errors import ConfigurationError, RecordCorrupt, RunNotFound, StoreError, TraceNotFound
from roost.runtime._store_option import add_store_option, report_damaged
from roost.runtime.log import configure_logging
from roost.storage import RunRecord, RunStatus, RunStore, StoreInterface, open_store
from roost.tracing import Span, Trace, TraceStore, TraceSummary
from roost.tracing.records import usage_of

EXIT_OK, EXIT_FAILED = 0, 1
#: Columns of a waterfall bar: the whole trace's time span.
BAR_WIDTH = 40
_LABEL_WIDTH = 44
#: The most run records `roost runs` reads in one read transaction.
_READ_PAGE = 1000
_RED, _RESET = "\x1b[31m", "\x1b[0m"
_ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


def add_trace_commands(commands: Any) -> None:
    """Add `trace` and `runs` to the `roost` command's subparsers."""
    trace = commands.add_parser("trace", help="print a run's spans as a waterfall (stop its "
                                              "system first)")
    trace.add_argument("id", metavar="RUN_OR_TRACE_ID", help="a run id or a trace id")
    add_store_option(trace)
    trace.add_argument("--json", action="store_true", help="print the raw spans as JSON")
    runs = commands.add_parser("runs", help="list runs with status, duration, tokens and cost")
    add_store_option(runs)
    runs.add_argument("--status", choices=[status.value for status in RunStatus])
    runs.add_argument("--pipeline", help="only runs of this pipeline")
    runs.add_argument("--limit", type=_positive, default=50, help="the most runs listed "
                                                                  "(default: 50, newest first)")


def run_trace_command(args: argparse.Namespace) -> int:
    """Run `roost trace` or `roost runs`: 0 when done; 1 for an unknown or empty id, a run
    without a trace, a damaged record or a store error."""
    # Logs go to stderr, errors only: stdout is the report, and the command names what it
    # skipped itself.
    configure_logging("auto", "error")
    try:
        return asyncio.run(_trace(args) if args.command == "trace" else _runs(args))
    except TraceNotFound as error:
        print(f"roost: {error}", file=sys.stderr)
    except (ConfigurationError, StoreError) as error:
        print(f"roost: {type(error).__name__}: {error}", file=sys.stderr)
    return EXIT_FAILED


async def _trace(args: argparse.Namespace) -> int:
    """Print the trace; exit 1, after printing the rest, if span records did not decode."""
    async with open_store(args.store, readonly=True, create=False) as store:
        try:
            trace = await TraceStore(store).get(args.id)
        except TraceNotFound:
            if not await _run_exists(store, args.id):
                raise
            print(f"roost: run {args.id!r} exists but its trace is not kept in the store at "
                  f"{store.path!r}: its system ran with tracing off, or the trace is past "
                  "the system's trace_retention", file=sys.stderr)
            return EXIT_FAILED
    if args.json:
        print(msgspec.json.encode(trace.spans).decode())
    else:
        color = sys.stdout.isatty() and "NO_COLOR" not in os.environ
        print("\n".join(waterfall(trace, color=color)))
    if not trace.skipped:
        return EXIT_OK
    print(f"roost: {len(trace.skipped)} span record(s) did not decode and were left out: "
          + "; ".join(trace.skipped), file=sys.stderr)
    return EXIT_FAILED


async def _run_exists(store: StoreInterface, run_id: str) -> bool:
    """Whether the store holds a record of run `run_id` (one that does not decode too)."""
    try:
        await RunStore(store).get(run_id)
    except RunNotFound:
        return False
    except RecordCorrupt:
        pass
    return True


async def _runs(args: argparse.Namespace) -> int:
    """List the runs that can be read; exit 1, after naming them, if some records cannot."""
    damaged: list[RecordCorrupt] = []
    async with open_store(args.store, readonly=True, create=False) as store:
        records = await _readable_runs(store, args.status, args.pipeline, damaged)
        records.sort(key=lambda record: record.created_at, reverse=True)
        del records[args.limit:]
        traces = TraceStore(store)
        steps = await store.read(lambda snapshot: [
            steps_run(record, latest_progress(snapshot, record.run_id)) for record in records])
        rows = [_run_row(record, await traces.summary(record.run_id), ran)
                for record, ran in zip(records, steps, strict=True)]
    print("\n".join(_table(["RUN", "STATUS", "PIPELINE", "STARTED", "DURATION", "STEPS",
                            "TOKENS", "COST"], rows)))
    if not damaged:
        return EXIT_OK
    report_damaged("run", [_run_name(error.key) for error in damaged], store.path)
    return EXIT_FAILED


async def _readable_runs(store: StoreInterface, status: str | None, pipeline: str | None,
                         damaged: list[RecordCorrupt]) -> list[RunRecord]:
    """Every run record with `status` of `pipeline` that decodes, a page at a time; the
    errors of those that do not are appended to `damaged`."""
    runs = RunStore(store)
    found: list[RunRecord] = []
    before = None
    while True:
        page, before = await store.read(runs.page_reader(
            limit=_READ_PAGE, before=before, status=status, pipeline=pipeline, damaged=damaged))
        found += page
        if before is None:
            return found


def _run_name(key: bytes) -> str:
    try:
        return repr(key.decode())
    except UnicodeDecodeError:
        return f"the one at key {key!r}"


def waterfall(trace: Trace, *, color: bool = False, width: int = BAR_WIDTH) -> list[str]:
    """The lines of `trace` as a waterfall: a header, then one line per span."""
    lines = [_header(trace)]
    origin, span_ns = trace.start_ns, max(1, trace.duration_ns)
    walked = list(trace.walk())
    label_width = min(_LABEL_WIDTH, max((len("  " * depth + span.name) for depth, span in walked),
                                        default=0))
    for depth, span in walked:
        label = ("  " * depth + span.name)[:label_width].ljust(label_width)
        first = min(width - 1, (span.start_ns - origin) * width // span_ns)
        last = min(width, max(first + 1, math.ceil((span.end_ns - origin) * width / span_ns)))
        bar = "·" * first + "█" * (last - first) + "·" * (width - last)
        status = "ok"
        if span.status == "error":
            status = _shorten(f"error {span.error_type}: {span.error_message}", 80)
            if color:
                status = f"{_RED}{status}{_RESET}"
        lines.append(f"{label}  {bar} {_duration(span.duration_ns):>8}  {status}{_usage(span)}")
    return lines


def _header(trace: Trace) -> str:
    parts = [f"trace {trace.trace_id}"]
    if trace.run_id is not None:
        parts.append(f"run {trace.run_id}")
    parts.append(_duration(trace.duration_ns))
    parts.append(f"{len(trace.spans)} spans")
    if trace.errors:
        parts.append(f"{trace.errors} error{'s' if trace.errors > 1 else ''}")
    tokens = trace.input_tokens + trace.output_tokens
    if tokens:
        parts.append(f"{tokens} tokens ({trace.input_tokens} in, {trace.output_tokens} out)")
    if trace.cost is not None:
        parts.append(f"cost {_cost(trace.cost)}")
    return "  ".join(parts)


def _usage(span: Span) -> str:
    reads, writes, cost = usage_of(span)
    text = f"  {reads + writes} tokens" if reads or writes else ""
    return text + (f"  cost {_cost(cost)}" if cost is not None else "")


def _run_row(record: RunRecord, summary: TraceSummary | None, steps: int) -> list[str]:
    if summary is not None:
        duration = _duration(summary.duration_ns)
    elif record.status in _ENDED:
        duration = _duration(int((record.updated_at - record.created_at) * 1e9))
    else:
        duration = "-"
    tokens = 0 if summary is None else summary.input_tokens + summary.output_tokens
    return [record.run_id, record.status.value, record.pipeline,
            datetime.fromtimestamp(record.created_at).strftime("%Y-%m-%d %H:%M:%S"), duration,
            str(steps), str(tokens) if tokens else "-",
            "-" if summary is None or summary.cost is None else _cost(summary.cost)]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def _duration(ns: int) -> str:
    if ns < 1_000_000:
        return f"{ns / 1_000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f}ms"
    return f"{ns / 1_000_000_000:.2f}s"


def _cost(cost: float) -> str:
    return f"{cost:.6g}"


def _shorten(text: str, length: int) -> str:
    return text if len(text) <= length else text[:length - 1] + "…"


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return number
