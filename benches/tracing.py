"""What recording spans costs, and how fast a stored trace comes back.

`tracing_pipeline_overhead` (runs/s): 1,000 runs of a 5-step chain started
together and awaited, as in `pipeline_runs_1000`, but every step returns a ~1 KB
string (kept on its span as a payload), in a system with a store in sync
durability and tracing on: every run, step, attempt and message is recorded and
written to the trace store. Baseline, same run: the same with
`ActorSystem(tracing=False)`. Rounds alternate on and off, best of 3 each, each
in a fresh store. Target: ratio >= 0.85.

`tracing_tell_overhead` (msg/s): 300,000 tells from outside any actor to one
actor, outside any run, in a system with a store and tracing on. Baseline, same
run: the same with tracing off. Alternating rounds, best of 7 each (short rounds,
so that the best of each escapes the other core's noise). Target: ratio >= 0.95.

`trace_query_latency` (queries/s): `system.traces.get(trace_id)` of one 50-span
trace, decoded into its span tree, from a store that holds the spans of
`STORED_RUNS` other runs (5 spans each), written straight through the trace
store in batches. Baseline, same store and run: a raw py-lmdb prefix scan of that
trace's span records (one read transaction, a cursor walk, no decoding). 2,000
queries each, best of 3. Target: ratio >= 0.5.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lmdb

import roost
from benches._actors import Sink
from benches._figure import Figure, Target, report
from benches._pipelines import runs_at_once
from roost.pipelines.definition import Pipeline, RunStep, Step
from roost.trace import new_span_id, new_trace_id
from roost.tracing import Span, SpanKind, TraceStore
from roost.tracing.query import DB, spans_prefix

NAMES = ("tracing_pipeline_overhead", "tracing_tell_overhead", "trace_query_latency")
RUNS = 1_000
STEPS = 5
RESULT = "x" * 1024
TELLS = 300_000
STORED_RUNS = 100_000
SPANS_PER_RUN = 5
QUERIED_SPANS = 50
QUERIES = 2_000
TARGETS = {"tracing_pipeline_overhead": Target(ratio=0.85),
           "tracing_tell_overhead": Target(ratio=0.95), "trace_query_latency": Target(ratio=0.5)}


class Kilobyte(roost.Actor):
    """A step's worker that returns a ~1 KB string."""

    async def receive(self, message: RunStep) -> str:
        return RESULT


def chain() -> Pipeline:
    """`s0 -> s1 -> s2 -> s3 -> s4`, each step returning ~1 KB."""
    return Pipeline("kilobyte5", [Step(f"s{i}", Kilobyte, after=() if i == 0 else f"s{i - 1}")
                                  for i in range(STEPS)])


def in_system(tracing: bool, body: Any) -> float:
    """Run `body(system)` in a fresh system with a fresh store (sync durability, logging off)."""

    async def main(folder: str) -> float:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(store=Path(folder) / "store", durability="sync",
                                     tracing=tracing, log_format=None) as system:
            return float(await body(system))

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        return asyncio.run(main(folder))


def runs_seconds(tracing: bool) -> float:
    """Seconds to start RUNS runs of the chain at once and see them all complete."""

    async def body(system: roost.ActorSystem) -> float:
        pipeline = chain()
        await (await system.pipelines.start(pipeline)).result()  # warm: pools, codecs
        return await runs_at_once(system, pipeline, RUNS)

    return in_system(tracing, body)


def tells_seconds(tracing: bool) -> float:
    """Seconds for TELLS tells to one actor to be handled."""

    async def body(system: roost.ActorSystem) -> float:
        done = asyncio.get_running_loop().create_future()
        sink = system.spawn(Sink, TELLS, done, capacity=TELLS + 1)
        started = time.perf_counter()
        for index in range(TELLS):
            sink.tell(index)
            if index % 1000 == 0:
                await asyncio.sleep(0)
        await done
        return time.perf_counter() - started

    return in_system(tracing, body)


def run_spans(run_id: str, count: int, start_ns: int) -> list[Span]:
    """A run's spans as the runtime records them: its `run` span, then steps under it."""
    trace_id, root = new_trace_id(), new_span_id()
    spans = [Span(trace_id=trace_id, span_id=root, parent_span_id=None, name="run bench",
                  kind=SpanKind.RUN, start_ns=start_ns, end_ns=start_ns + 10_000_000,
                  run_id=run_id, attributes={"pipeline": "bench", "run.status": "completed"})]
    for index in range(1, count):
        spans.append(Span(
            trace_id=trace_id, span_id=new_span_id(), parent_span_id=root,
            name=f"step s{index}", kind=SpanKind.STEP, start_ns=start_ns + index * 1000,
            end_ns=start_ns + index * 1000 + 500, run_id=run_id,
            attributes={"pipeline": "bench", "step": f"s{index}", "step.outcome": "completed",
                        "step.output": {"text": "a short result"}}))
    return spans


async def fill(traces: TraceStore) -> str:
    """Write STORED_RUNS runs' spans and one QUERIED_SPANS-span run; returns the latter's
    trace id. Spans go in through the store's sink in chunks, each flushed in batches."""
    chunk: list[Span] = []
    start_ns = time.time_ns() - STORED_RUNS * 20_000_000
    queried = run_spans("queried", QUERIED_SPANS, start_ns)
    for index in range(STORED_RUNS):
        chunk.extend(run_spans(f"run-{index:06d}", SPANS_PER_RUN, start_ns + index * 20_000_000))
        if index == STORED_RUNS // 2:
            chunk.extend(queried)  # in the middle of the key space, not at an end
        if len(chunk) >= 50_000:
            for span in chunk:
                traces.add(span)
            await traces.flush()
            chunk.clear()
    for span in chunk:
        traces.add(span)
    await traces.flush()
    return queried[0].trace_id


def query_rates() -> tuple[float, float, float]:
    """(store gets/s, raw prefix scans/s, seconds spent filling the store)."""

    async def store_side(folder: Path) -> tuple[str, float, float]:
        roost.configure_logging("json", "critical")
        async with roost.ActorSystem(store=folder, durability="async", log_format=None,
                                     trace_max_bytes=2**34) as system:
            started = time.perf_counter()
            trace_id = await fill(system.traces)
            filled = time.perf_counter() - started
            trace = await system.traces.get(trace_id)
            assert len(trace.spans) == QUERIED_SPANS and len(trace.roots) == 1
            best = 0.0
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(QUERIES):
                    await system.traces.get(trace_id)
                best = max(best, QUERIES / (time.perf_counter() - started))
            return trace_id, best, filled

    async def raw_side(folder: Path, trace_id: str) -> float:
        env = lmdb.open(str(folder), readonly=True, lock=False, max_dbs=16)
        db = env.open_db(DB.encode(), create=False)
        prefix = spans_prefix(trace_id)

        def scan() -> list[bytes]:
            with env.begin(db=db) as txn:
                cursor = txn.cursor()
                found: list[bytes] = []
                if cursor.set_range(prefix):
                    for key, value in cursor:
                        if not key.startswith(prefix):
                            break
                        found.append(value)
                return found

        try:
            assert len(await asyncio.to_thread(scan)) == QUERIED_SPANS
            best = 0.0
            for _ in range(3):
                started = time.perf_counter()
                for _ in range(QUERIES):
                    await asyncio.to_thread(scan)
                best = max(best, QUERIES / (time.perf_counter() - started))
            return best
        finally:
            env.close()

    with tempfile.TemporaryDirectory(prefix="roost-bench-") as folder:
        store = Path(folder) / "store"
        trace_id, gets, filled = asyncio.run(store_side(store))
        scans = asyncio.run(raw_side(store, trace_id))
    return gets, scans, filled


def on_and_off(count: int, seconds: Any, repeats: int) -> tuple[float, float]:
    """Best rates with tracing on and off, rounds alternating so drift hits both alike."""
    on = off = 0.0
    for _ in range(repeats):
        on = max(on, count / seconds(True))
        off = max(off, count / seconds(False))
    return on, off



def measure() -> list[Figure]:
    runs_on, runs_off = on_and_off(RUNS, runs_seconds, 3)
    tells_on, tells_off = on_and_off(TELLS, tells_seconds, 7)
    gets, scans, filled = query_rates()
    print(f"trace_query_latency: {STORED_RUNS:,} runs ({STORED_RUNS * SPANS_PER_RUN:,} spans) "
          f"written in {filled:.1f} s", file=sys.stderr, flush=True)
    return [
        report(Figure("tracing_pipeline_overhead", runs_on, "runs/s", "tracing off", runs_off), TARGETS),
        report(Figure("tracing_tell_overhead", tells_on, "msg/s", "tracing off", tells_off), TARGETS),
        report(Figure("trace_query_latency", gets, "queries/s",
                      "raw LMDB prefix scan via to_thread", scans), TARGETS),
    ]
