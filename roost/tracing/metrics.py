"""Metrics: counters, gauges and histograms of what a system does, kept cheaply.

Two sources, so the hot path pays almost nothing:

- `SpanMetrics`, a tracer sink, updates a few in-memory counters and histograms
  from every finished span: runs by pipeline and status, step and tool latency,
  step attempts and retries, token usage and cost. They need tracing on.
- At read time, the statistics the runtime keeps anyway: actors by state and
  their mailbox depth and restarts, dead letters, runs in flight and queued,
  tool-proxy counts, each breaker's state, the store's writes and commits
  (a group commit's batch size is writes per commit), the trace store's spans
  written and dropped (counters) and buffered (a gauge).

`snapshot(system)` (what `system.metrics()` returns) gives them as plain nested
dicts: `{name: value}`, a labelled metric as dicts keyed by its label values in
order (`m["runs"]["support-email"]["completed"]`), a histogram as
`{"count", "sum", "buckets": {upper bound: cumulative count}}`. With the
optional extra `roost[metrics]`, `prometheus_text(system)` renders the same
families in the Prometheus exposition format (each named `roost_<name>`,
counters with `_total`), and `RoostCollector(system)` plugs them into a
`prometheus_client` registry of your own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from roost._histogram import LATENCY_BUCKETS, SIZE_BUCKETS, Histogram, bound_label
from roost.errors import ExtraNotInstalled, RoostError
from roost.tracing.spans import Span, SpanKind

#: Spans a `SpanMetrics` queues before it counts them (it also counts before each read).
_BATCH = 1024
# The kinds, read once: an enum member read through its class is slow on the hot path.
_RUN, _STEP, _STEP_ATTEMPT, _TOOL_CALL, _TOOL_ATTEMPT, _MESSAGE = (
    SpanKind.RUN, SpanKind.STEP, SpanKind.STEP_ATTEMPT, SpanKind.TOOL_CALL, SpanKind.TOOL_ATTEMPT,
    SpanKind.MESSAGE)
_TOKENS = (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens"))


@dataclass
class Family:
    """One metric: its name (without `roost_`), type, help, label names and samples by
    label values (a number, or a `Histogram`)."""

    name: str
    kind: str  # counter, gauge or histogram
    help: str
    labels: tuple[str, ...] = ()
    samples: dict[tuple[str, ...], Any] = field(default_factory=dict)


class SpanMetrics:
    """A tracer sink that counts and times finished spans.

    Taking a span only queues it: the counters catch up in batches (every `_BATCH`
    spans, and before every read), in one loop that does a few dict updates per span
    (a message span, the most common, is only counted by kind).
    """

    def __init__(self) -> None:
        self.runs: dict[tuple[str, ...], int] = {}
        self.run_seconds: dict[tuple[str, ...], Histogram] = {}
        self.step_seconds: dict[tuple[str, ...], Histogram] = {}
        self.step_outcomes: dict[tuple[str, ...], int] = {}
        self.step_attempts: dict[tuple[str, ...], int] = {}
        self.step_retries: dict[tuple[str, ...], int] = {}
        self.tool_seconds: dict[tuple[str, ...], Histogram] = {}
        self.tool_outcomes: dict[tuple[str, ...], int] = {}
        self.tool_attempts: dict[tuple[str, ...], int] = {}
        self.tool_retries: dict[tuple[str, ...], int] = {}
        self.restarts: dict[tuple[str, ...], int] = {}
        self.checkpoint_bytes: dict[tuple[str, ...], Histogram] = {}
        self.tokens: dict[tuple[str, ...], int] = {}
        self.cost: dict[tuple[str, ...], float] = {}
        self.kinds: dict[str, int] = {}
        self._pending: list[Span] = []

    def __call__(self, span: Span) -> None:
        pending = self._pending
        pending.append(span)
        if len(pending) >= _BATCH:
            self.catch_up()

    def catch_up(self) -> None:
        """Count the spans taken since the last batch."""
        pending, self._pending = self._pending, []
        kinds, step_attempts, step_outcomes = self.kinds, self.step_attempts, self.step_outcomes
        step_seconds = self.step_seconds
        for span in pending:
            kind = span.kind
            kinds[kind] = kinds.get(kind, 0) + 1
            if kind is _MESSAGE:
                continue
            if kind is _STEP_ATTEMPT or kind is _STEP:
                attributes = span.attributes
                pipeline, step = attributes.get("pipeline"), attributes.get("step")
                if type(pipeline) is not str or type(step) is not str:
                    pipeline, step = _pipeline(span), _subject(span, "step")
                if kind is _STEP_ATTEMPT:
                    attempt = (pipeline, step, span.status)
                    step_attempts[attempt] = step_attempts.get(attempt, 0) + 1
                    number = attributes.get("attempt")
                    if isinstance(number, int) and number > 1:
                        _add(self.step_retries, (pipeline, step), 1)
                    continue
                outcome = attributes.get("step.outcome")
                if type(outcome) is not str:
                    outcome = _text(span, "step.outcome", span.status)
                settled = (pipeline, step, outcome)
                step_outcomes[settled] = step_outcomes.get(settled, 0) + 1
                if outcome != "skipped":  # a skipped step did no work: keep it out of latency
                    histogram = step_seconds.get(settled[:2])
                    if histogram is None:
                        histogram = step_seconds[settled[:2]] = Histogram()
                    histogram.observe((span.end_ns - span.start_ns) / 1e9)
            elif kind is _RUN:
                self._run(span)
            elif kind is _TOOL_CALL:
                tool = _subject(span, "tool")
                _observe(self.tool_seconds, (tool, span.status),
                         (span.end_ns - span.start_ns) / 1e9)
                _add(self.tool_outcomes, (tool, _text(span, "tool.outcome", span.status)), 1)
            elif kind is _TOOL_ATTEMPT:
                tool = _subject(span, "tool")
                _add(self.tool_attempts, (tool, span.status), 1)
                if _attempt(span) > 1:
                    _add(self.tool_retries, (tool,), 1)

    def _run(self, span: Span) -> None:
        pipeline = _pipeline(span)
        _add(self.runs, (pipeline, _run_status(span)), 1)
        key = (pipeline,)
        _observe(self.run_seconds, key, (span.end_ns - span.start_ns) / 1e9)
        attributes = span.attributes
        for direction, name in _TOKENS:
            tokens = attributes.get(name)
            if isinstance(tokens, int) and tokens:
                _add(self.tokens, (pipeline, direction), tokens)
        cost = attributes.get("roost.cost")
        if isinstance(cost, (int, float)) and cost:
            _add(self.cost, key, cost)
        checkpoint_bytes = None
        for event in span.events:
            if event.name == "checkpoint":
                size = event.attributes.get("bytes")
                if isinstance(size, int):
                    if checkpoint_bytes is None:
                        checkpoint_bytes = self.checkpoint_bytes.get(key)
                        if checkpoint_bytes is None:
                            checkpoint_bytes = self.checkpoint_bytes[key] = Histogram(SIZE_BUCKETS)
                    checkpoint_bytes.observe(size)
            elif event.name == "actor_restarted":
                _add(self.restarts, key, 1)

    def families(self) -> list[Family]:
        self.catch_up()
        return [
            Family("runs", "counter", "Run spans ended, by pipeline and status: how the run "
                   "ended, or paused/interrupted when this process stopped running it.",
                   ("pipeline", "status"), dict(self.runs)),
            Family("run_seconds", "histogram", "How long runs took, start (or resume) to end.",
                   ("pipeline",), dict(self.run_seconds)),
            Family("step_seconds", "histogram", "How long steps took, over all their attempts.",
                   ("pipeline", "step"), dict(self.step_seconds)),
            Family("steps", "counter", "Steps settled, by outcome (completed, failed, skipped, "
                   "fallback, optional_failure, needs_review, cancelled).",
                   ("pipeline", "step", "outcome"), dict(self.step_outcomes)),
            Family("step_attempts", "counter", "Step attempts, by how they ended.",
                   ("pipeline", "step", "status"), dict(self.step_attempts)),
            Family("step_retries", "counter", "Step attempts after the first (retries).",
                   ("pipeline", "step"), dict(self.step_retries)),
            Family("tool_seconds", "histogram",
                   "How long tool calls took (dedup, breaker, retries included), by outcome.",
                   ("tool", "status"), dict(self.tool_seconds)),
            Family("tool_outcomes", "counter", "Tool calls by how they were answered (executed, "
                   "joined, replayed, fallback, unavailable, ...).",
                   ("tool", "outcome"), dict(self.tool_outcomes)),
            Family("tool_attempts", "counter", "Executions of a tool's function, by outcome.",
                   ("tool", "status"), dict(self.tool_attempts)),
            Family("tool_retries", "counter", "Tool attempts after the first (retries).",
                   ("tool",), dict(self.tool_retries)),
            Family("run_restarts", "counter", "Restarts of actors while they worked for a run.",
                   ("pipeline",), dict(self.restarts)),
            Family("checkpoint_bytes", "histogram", "Size of each run checkpoint saved.",
                   ("pipeline",), dict(self.checkpoint_bytes)),
            Family("tokens", "counter", "Model tokens used by ended runs (GenAI usage).",
                   ("pipeline", "direction"), dict(self.tokens)),
            Family("cost", "counter", "Cost of ended runs by the price table.",
                   ("pipeline",), dict(self.cost)),
            Family("spans", "counter", "Spans recorded, by kind.", ("kind",),
                   {(kind,): count for kind, count in self.kinds.items()}),
        ]


def families(system: Any) -> list[Family]:
    """Every metric of `system` (an `ActorSystem`, running or not), read now."""
    found = system.span_metrics.families()
    stats = system.statistics()
    found.append(Family("actors", "gauge", "Live actors, by state.", ("state",),
                        {(state,): n for state, n in stats["states"].items()}))
    found.append(Family("actors_busy", "gauge", "Actors handling a message now.",
                        samples={(): stats["busy"]}))
    depth, deepest, restarts = _cells(system)
    found.append(Family("mailbox_depth", "gauge", "Messages waiting in all actors' mailboxes.",
                        samples={(): depth}))
    found.append(Family("mailbox_depth_max", "gauge", "Messages waiting in the fullest mailbox.",
                        samples={(): deepest}))
    found.append(Family("actor_restarts", "gauge",
                        "Restarts of the live actors under supervision, since each was spawned.",
                        samples={(): restarts}))
    found.append(Family("dead_letters", "counter", "Messages dead-lettered, by reason.",
                        ("reason",), {(r,): n for r, n in stats["dead_letters"].items()}))
    found.append(Family("abandoned_tasks", "counter",
                        "Tasks that ignored cancellation at shutdown and were abandoned.",
                        samples={(): stats["abandoned"]}))
    lag = stats.get("loop_lag")
    if lag is not None:
        found.append(Family("loop_lag_seconds", "gauge", "Event-loop lag: last and largest.",
                            ("which",), {("last",): lag["last"], ("max",): lag["max"]}))
    runs = system.pipelines.statistics()
    found.append(Family("runs_in_flight", "gauge", "Runs active, queued for a slot, and the bound.",
                        ("state",), {(k,): runs[k] for k in ("active", "queued", "limit")}))
    found.extend(_tool_families(system))
    found.extend(_store_families(system))
    found.extend(_trace_store_families(system))
    found.append(Family("spans_dropped", "counter",
                        "Finished spans a sink (store, exporter) failed to take.",
                        samples={(): system.tracer.dropped}))
    return found


def snapshot(system: Any) -> dict[str, Any]:
    """Every metric as plain values (see the module docstring for the shape)."""
    return {family.name: _nested(family) for family in families(system)}


def _tool_families(system: Any) -> list[Family]:
    counts = system.tools.statistics()
    events: dict[tuple[str, ...], Any] = {(name,): getattr(counts, name)
                                          for name in counts.__struct_fields__}
    states = {"closed": 0.0, "open": 1.0, "half_open": 0.5}
    breaker_state: dict[tuple[str, ...], Any] = {}
    breaker_opened: dict[tuple[str, ...], Any] = {}
    breaker_rejected: dict[tuple[str, ...], Any] = {}
    for tool in system.tools.breaker_states():
        view = system.tools.breaker(tool).statistics()
        breaker_state[(tool,)] = states.get(str(view.state), math.nan)
        breaker_opened[(tool,)] = view.times_opened
        breaker_rejected[(tool,)] = view.rejected
    return [
        Family("tool_calls", "counter",
               "Tool-proxy counts: calls, dedup hits, joins, retries, trips, fallbacks, ...",
               ("event",), events),
        Family("breaker_state", "gauge", "Each breaker's state: 0 closed, 0.5 half open, 1 open.",
               ("tool",), breaker_state),
        Family("breaker_opened", "counter", "Times each breaker opened.", ("tool",),
               breaker_opened),
        Family("breaker_rejected", "counter", "Calls each open breaker answered at the caller.",
               ("tool",), breaker_rejected),
    ]


def _store_families(system: Any) -> list[Family]:
    store = system.store
    if store is None:
        return []
    stats = store.statistics()
    histograms = store.histograms()
    return [
        Family("store_commits", "counter", "LMDB write transactions (one per group-commit batch).",
               samples={(): stats.commits}),
        Family("store_writes", "counter", "Writes committed (checkpoints, run records, ...).",
               samples={(): stats.writes}),
        Family("store_failed_writes", "counter", "Writes that failed.",
               samples={(): stats.failed_writes}),
        Family("store_syncs", "counter", "Flushes to disk.", samples={(): stats.syncs}),
        Family("store_batch_size", "gauge", "Writes per commit so far (the mean group-commit batch).",
               samples={(): stats.writes / stats.commits if stats.commits else 0.0}),
        Family("store_map_bytes", "gauge", "Size of the LMDB memory map.",
               samples={(): stats.map_size}),
        *(Family(f"store_{name}", "histogram", help, samples={(): histograms[name]})
          for name, help in (("commit_seconds", "Seconds each group commit took, with its flush "
                                                "when durable."),
                             ("batch_writes", "Writes per group commit."))
          if name in histograms),
    ]


def _trace_store_families(system: Any) -> list[Family]:
    try:
        traces = system.traces
    except RoostError:  # no store, tracing off, or the system is not running
        return []
    stats = traces.statistics()
    return [
        Family("trace_spans", "counter", "Spans the trace store wrote or dropped.", ("state",),
               {("written",): stats.written, ("dropped",): stats.dropped}),
        # A gauge of its own: the buffer fills and empties, and a counter never goes down.
        Family("trace_spans_buffered", "gauge", "Spans the trace store holds for its next batch.",
               samples={(): stats.buffered}),
        Family("traces_pruned", "counter", "Traces deleted by retention (age or size).",
               samples={(): stats.pruned}),
    ]


def _cells(system: Any) -> tuple[int, int, int]:
    """Messages queued in all mailboxes, in the fullest one, and restarts of live actors."""
    engine = system.engine
    if engine is None:
        return 0, 0, 0
    depth = deepest = restarts = 0
    for cell in list(engine._registry.values()):  # a read-only walk; the engine has no view
        queued = len(cell.mailbox)
        depth += queued
        deepest = max(deepest, queued)
        restarts += cell.restarts
    return depth, deepest, restarts


# --- Prometheus -----------------------------------------------------------------------------


class RoostCollector:
    """A `prometheus_client` collector of a system's metrics, read at every scrape.

    Example::

        prometheus_client.REGISTRY.register(RoostCollector(system))

    Raises:
        ExtraNotInstalled: `roost[metrics]` (prometheus-client) is not installed.
    """

    def __init__(self, system: Any) -> None:
        _prometheus()
        self.system = system

    def collect(self) -> Iterator[Any]:
        core = _prometheus().core
        for family in families(self.system):
            name, labels = f"roost_{family.name}", list(family.labels)
            if family.kind == "histogram":
                metric = core.HistogramMetricFamily(name, family.help, labels=labels)
                for values, histogram in family.samples.items():
                    metric.add_metric(list(values), [(bound_label(b), c) for b, c in
                                                     histogram.cumulative()], histogram.sum)
            else:
                kind = (core.CounterMetricFamily if family.kind == "counter"
                        else core.GaugeMetricFamily)
                metric = kind(name, family.help, labels=labels)
                for values, value in family.samples.items():
                    metric.add_metric(list(values), value)
            yield metric


def prometheus_text(system: Any) -> str:
    """The system's metrics in the Prometheus text exposition format.

    Raises:
        ExtraNotInstalled: `roost[metrics]` (prometheus-client) is not installed.
    """
    client = _prometheus()
    registry = client.CollectorRegistry()
    registry.register(RoostCollector(system))
    return str(client.generate_latest(registry).decode())


def _prometheus() -> Any:
    try:
        import prometheus_client
        import prometheus_client.core
    except ImportError as error:
        raise ExtraNotInstalled("Prometheus metrics", "metrics",
                                error.name or "prometheus_client") from error
    return prometheus_client


# --- helpers --------------------------------------------------------------------------------


def _add(counts: dict[Any, Any], key: Any, amount: float) -> None:
    counts[key] = counts.get(key, 0) + amount


def _observe(histograms: dict[Any, Histogram], key: Any, value: float,
             bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = Histogram(bounds)
    histogram.observe(value)


def _subject(span: Span, prefix: str) -> str:
    """The step or tool a span is about: its attribute, or its name without `step `/`tool `."""
    value = span.attributes.get(prefix)
    if isinstance(value, str):
        return value
    name = span.name
    return name[len(prefix) + 1:] if name.startswith(prefix + " ") else name


def _pipeline(span: Span) -> str:
    value = span.attributes.get("pipeline")
    if isinstance(value, str):
        return value
    if span.kind is SpanKind.RUN and span.name.startswith("run "):
        return span.name[4:]
    return ""


def _run_status(span: Span) -> str:
    return _text(span, "run.status", "completed" if span.status == "ok" else "failed")


def _text(span: Span, attribute: str, default: str) -> str:
    value = span.attributes.get(attribute)
    return value if isinstance(value, str) else default


def _attempt(span: Span) -> int:
    value = span.attributes.get("attempt")
    return value if isinstance(value, int) else 1


def _nested(family: Family) -> Any:
    def plain(value: Any) -> Any:
        return value.as_dict() if isinstance(value, Histogram) else value

    if not family.labels:
        return plain(family.samples.get((), 0))
    tree: dict[str, Any] = {}
    for values, value in sorted(family.samples.items()):
        node = tree
        for label in values[:-1]:
            node = node.setdefault(label, {})
        node[values[-1]] = plain(value)
    return tree
