"""`ActorSystem`: the runtime an application enters with `async with`.

It opens the store, starts the actor engine (the tree under a root guardian),
the tool proxy and the pipelines service, and sets up logging. Leaving the
`async with` block stops every actor in reverse start order, each within its
shutdown timeout. If the root fails (restart intensity exceeded at the top),
the block is cancelled and the error is raised from it.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import anyio
import structlog

from roost._completion import to_completion
from roost._logging import get_logger
from roost._validate import check_count, check_seconds
from roost.actors._engine import Engine
from roost.actors.messages import Terminated
from roost.actors.ref import ActorRef
from roost.actors.supervisor import as_child_spec
from roost.cluster import Cluster, node_settings
from roost.errors import ActorNotFound, ConfigurationError, StoreError, SystemNotRunning
from roost.mailbox.dead_letters import DeadLetters
from roost.pipelines.service import Pipelines
from roost.runtime.log import configure_logging
from roost.runtime.loop_monitor import LoopMonitor
from roost.storage.postgres import is_postgres_url, redact
from roost.tools.client import Tools
from roost.tracing import Price, Tracer, TraceStore
from roost.tracing.metrics import SpanMetrics, snapshot
from roost.tracing.tracer import Redact, check_payload_options

_log = get_logger("roost")
#: Seconds between sweeps for checkpoints of runs past their retention.
_SWEEP_INTERVAL = 3600.0


def _check_options(*, name: Any, store: Any, tracing: Any, loop_lag_threshold: Any,
                   prices: Any) -> None:
    """Refuse the `ActorSystem` options no other check covers, naming the option."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"ActorSystem: name must be a non-empty string, got {name!r}")
    if store is not None and not (isinstance(store, str | os.PathLike) and os.fspath(store)):
        raise ConfigurationError(
            f"ActorSystem: store must be a folder path or a postgresql:// URL (or None for "
            f"no store), got {store!r}; '.roost' keeps it in a folder of the working directory")
    if not isinstance(tracing, bool):
        raise ConfigurationError(f"ActorSystem: tracing must be True or False, got {tracing!r}")
    if loop_lag_threshold is not None:
        check_seconds("ActorSystem", "loop_lag_threshold (None turns the monitor off)",
                      loop_lag_threshold, allow_zero=False)
    if prices is not None and not (isinstance(prices, Mapping) and all(
            isinstance(model, str) and isinstance(price, Price)
            for model, price in prices.items())):
        raise ConfigurationError(
            f"ActorSystem: prices must map model names to roost.Price(input_per_million=..., "
            f"output_per_million=...), got {prices!r}")


class ActorSystem:
    """An actor runtime: spawn actors, look them up, and shut everything down on exit.

    Args:
        name: the system's name, used in logs.
        store: the folder of the LMDB store (created if missing), a
            `postgresql://USER:PASSWORD@HOST/DATABASE` URL of a PostgreSQL store
            (`roost[postgres]`; its tables are created if missing), or None for no
            store. Checkpointed actors need one.
        durability: `sync` (a checkpoint is acknowledged after fsync) or `async`.
        log_format: `console`, `json` or `auto` (console on a terminal) to
            configure structlog (process-wide: the application's own structlog loggers
            too); None leaves structlog as the application configured it, and configures
            `auto` only if nothing configured structlog yet. To keep roost off your
            logging, call `structlog.configure(...)` before entering the system.
        log_level: the lowest level logged when roost configures structlog.
        max_restarts: restarts of top-level actors allowed within `within`
            seconds before the whole system fails (a whole number >= 0).
        within: the root's restart-intensity window, in seconds (> 0).
        dead_letters_kept: how many recent dead letters stay inspectable.
        ledger_retention: how long settled idempotency keys are kept, in seconds.
        checkpoints_kept: how many checkpoints of each run or checkpointed actor are
            kept (0: all of them); each save deletes the one that falls out.
        run_retention: seconds after which the checkpoints of an ended run
            (completed, failed, cancelled) are deleted; its record and plain results
            stay. Swept at start and then hourly, in small batches.
        loop_lag_threshold: seconds of event-loop lag logged as `event_loop_blocked`
            with the actor and message type that blocked it; None turns the
            monitor off.
        max_active_runs: the most pipeline runs in flight at once; runs started
            past it are stored as `queued` and start as slots free.
        tracing: record spans for every run, step, tool call and message in a run.
        payload_limit: the most bytes of one payload (step input or result, tool
            arguments or result) kept on a span; longer ones are cut with a marker.
        redact: `redact(name, value)` is called on every payload before it is
            stored or exported, and returns what to keep (e.g. with secrets masked).
        prices: price per model (`roost.Price`) to turn reported token usage into
            cost; none is built in.
        trace_retention: seconds a run's trace is kept in the store (swept every
            minute, a few traces at a time).
        trace_max_bytes: the most bytes of span records the store keeps; past it the
            oldest traces are deleted.
        node_id: this system's id as a node of the cluster on a PostgreSQL store (None: one
            made of the host name, the process id and random digits). The settings from
            here to `pools` are for PostgreSQL stores only (see `roost.cluster`).
        lease: seconds a node's lease of a run lasts without renewal (default 30): a run of
            a node that dies is taken over after at most this, and a live node must never
            stall longer.
        heartbeat: seconds between a node's renewals of its row and all its leases (default
            a third of the lease; at most half of it).
        node_dead_after: seconds without a heartbeat after which `system.cluster.nodes()`
            lists a node as dead (default twice the lease).
        max_takeovers: times a run may be taken over before it is parked (`suspended`, with
            the reason) instead (default 5).
        pools: the worker pools this node serves: steps with `pool=` one of them run
            here, for the runs of every node (their requests come as step tasks through
            the database); other nodes send their requests for these pools here.
        otlp_endpoint: mirror every span to this OpenTelemetry collector over OTLP/HTTP
            (`http://host:4318`; needs `roost[otel]` and `tracing`); flushed when the
            system stops. See `roost.tracing.export.OtelExporter` for more options.
        clock: monotonic seconds for supervision (inject a fake in tests).
        rand: uniform [0, 1) numbers for backoff jitter (inject in tests).

    Example::

        async with roost.ActorSystem(store=".roost") as system:
            greeter = system.spawn(Greeter, name="greeter")
            print(await greeter.ask(Greet("ada")))
    """

    def __init__(
        self,
        *,
        name: str = "roost",
        store: str | Path | None = None,
        durability: Literal["sync", "async"] = "sync",
        log_format: str | None = None,
        log_level: str = "info",
        max_restarts: int = 10,
        within: float = 10.0,
        dead_letters_kept: int = 1000,
        ledger_retention: float = 86_400.0,
        checkpoints_kept: int = 3,
        run_retention: float = 7 * 86_400.0,
        loop_lag_threshold: float | None = 0.1,
        max_active_runs: int = 1000,
        tracing: bool = True,
        payload_limit: int = 8192,
        redact: Redact | None = None,
        prices: Mapping[str, Price] | None = None,
        otlp_endpoint: str | None = None,
        trace_retention: float = 7 * 86_400.0,
        trace_max_bytes: int = 256 * 2**20,
        node_id: str | None = None,
        lease: float | None = None,
        heartbeat: float | None = None,
        node_dead_after: float | None = None,
        max_takeovers: int | None = None,
        pools: list[str] | tuple[str, ...] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if durability not in ("sync", "async"):
            raise ConfigurationError(
                f"ActorSystem: durability must be 'sync' or 'async', got {durability!r}"
            )
        # The root supervises top-level actors by the same rules as `Supervisor.spec`.
        check_count("ActorSystem", "max_restarts", max_restarts, 0)
        check_seconds("ActorSystem", "within", within, allow_zero=False)
        # A key kept 0 s (or NaN s) would not be deduplicated at all: side effects would repeat.
        check_seconds("ActorSystem", "ledger_retention", ledger_retention, allow_zero=False)
        check_seconds("ActorSystem", "run_retention", run_retention, allow_zero=False)
        check_count("ActorSystem", "checkpoints_kept", checkpoints_kept, 0)
        check_count("ActorSystem", "dead_letters_kept", dead_letters_kept, 0)
        check_payload_options("ActorSystem", payload_limit, redact)
        _check_options(name=name, store=store, tracing=tracing,
                       loop_lag_threshold=loop_lag_threshold, prices=prices)
        self.name = name
        #: The LMDB store folder, or the PostgreSQL store URL (None: no store of that kind).
        self.store_path = None if store is None or is_postgres_url(store) else Path(store)
        self.store_url: str | None = store if is_postgres_url(store) else None
        self.durability = durability
        self.log_format = log_format
        self.log_level = log_level
        self.dead_letters = DeadLetters(keep=dead_letters_kept)
        self.ledger_retention = ledger_retention
        self.checkpoints_kept = checkpoints_kept
        self.run_retention = run_retention
        self.tracing = tracing
        for setting, value in (("trace_retention", trace_retention),
                               ("trace_max_bytes", trace_max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigurationError(f"ActorSystem: {setting}={value!r} must be a positive "
                                         "number")
        self.trace_retention = trace_retention
        self.trace_max_bytes = trace_max_bytes
        self._traces: TraceStore | None = None
        #: Starts the runtime's spans; sinks (the trace store, exporters) receive them.
        self.tracer = Tracer(payload_limit=payload_limit, redact=redact, prices=prices,
                             recording=tracing)
        #: Counters and histograms derived from finished spans (read with `metrics()`).
        self.span_metrics = SpanMetrics()
        if tracing:
            self.tracer.add_sink(self.span_metrics)
        #: The OpenTelemetry exporter `otlp_endpoint` set up, or None.
        self.otel_exporter: Any = None
        if otlp_endpoint is not None:
            self.otel_exporter = self._otel_exporter(otlp_endpoint)
        self.loop_monitor = (None if loop_lag_threshold is None
                             else LoopMonitor(threshold=loop_lag_threshold))
        self.tools = Tools(clock, self.tracer, rand)
        self.pipelines = Pipelines(self, max_active_runs=max_active_runs)
        #: This system as a node of the cluster on its PostgreSQL store (None on LMDB).
        self.cluster: Cluster | None = self._node(
            node_id=node_id, lease=lease, heartbeat=heartbeat, dead_after=node_dead_after,
            max_takeovers=max_takeovers, pools=pools)
        self.pipelines.cluster = self.cluster
        #: The runs waiting at gates for people: decide, query, notify (`roost.pipelines.gates`).
        self.gates = self.pipelines.gates
        self._http: aiohttp.ClientSession | None = None
        self.clock = clock
        self.rand = rand
        self._max_restarts = max_restarts
        self._within = within
        self._failed: anyio.Event | None = None
        self._task_group: Any = None
        #: The actor engine (internal: roost's own layers spawn and look up through it).
        self.engine: Engine = None  # type: ignore[assignment]
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.store: Any = None
        self.checkpoints: Any = None

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ActorSystem:
        if self.engine is not None and self.engine.running:
            raise ConfigurationError(f"ActorSystem {self.name!r} is already running")
        if self.log_format is not None or not structlog.is_configured():
            configure_logging(self.log_format or "auto", self.log_level)
        self.loop = asyncio.get_running_loop()
        self._failed = anyio.Event()
        self.engine = Engine(
            self, self.loop, dead_letters=self.dead_letters, clock=self.clock, rand=self.rand,
            on_failure=self._root_failed,
        )
        await self._open_store()
        if self.cluster is not None and self.store is not None:
            try:
                await self.cluster.start()
            except BaseException:
                await self._close_store()
                raise
        self.engine.checkpoints = self.checkpoints
        self.engine.tracer = self.tracer
        self.engine.start_root(max_restarts=self._max_restarts, within=self._within)
        self._start_tool_proxy()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._watch_root)
        if self.loop_monitor is not None:
            self.loop_monitor.start()
        if self.store is not None:
            self.engine.own(self.loop.create_task(self._prune_ledger()))
            self.engine.own(self.loop.create_task(self._sweep_ended_runs()))
            self.gates.start_timer()  # deadlines that passed while no process ran fire now
            self.gates.catch_up()  # notifications a process died before delivering go out now
        _log.info("system_started", system=self.name, store=self._store_name())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        shutdown_error: BaseException | None = None
        try:
            await to_completion(self._shutdown())
        except BaseException as error:  # still close the task group below, then raise it
            shutdown_error = error
        assert self._failed is not None
        self._failed.set()  # releases the root watcher
        failure = self.engine.failure
        try:
            suppressed = await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if failure is not None and any(e is failure for e in group.exceptions):
                raise failure from None
            if exc is not None and list(group.exceptions) == [exc]:
                raise exc from None  # the body's own error, not wrapped in a group
            raise
        if failure is not None:
            raise failure
        if shutdown_error is not None:
            raise shutdown_error
        return suppressed

    def _node(self, *, node_id: str | None, lease: float | None, heartbeat: float | None,
              dead_after: float | None, max_takeovers: int | None,
              pools: list[str] | tuple[str, ...] | None) -> Cluster | None:
        """The node this system is on a PostgreSQL store; None on any other store."""
        given = [name for name, value in (
            ("node_id", node_id), ("lease", lease), ("heartbeat", heartbeat),
            ("node_dead_after", dead_after), ("max_takeovers", max_takeovers),
            ("pools", pools)) if value is not None]
        if self.store_url is None:
            if given:
                raise ConfigurationError(
                    f"ActorSystem: {', '.join(given)} set(s) up a node of a cluster, which "
                    "needs a PostgreSQL store; pass store='postgresql://...' or drop them")
            return None
        return Cluster(self, node_settings(node_id=node_id, lease=lease, heartbeat=heartbeat,
                                           dead_after=dead_after, max_takeovers=max_takeovers,
                                           pools=pools))

    def _start_tool_proxy(self) -> None:
        """Start the tool proxy first, so it stops last (actors may call tools in on_stop)."""
        from roost.tools.proxy import ToolProxy

        ledger = None
        if self.store is not None:
            from roost.storage.ledger import Ledger

            ledger = Ledger(self.store, retention=self.ledger_retention)
        ref = self.engine.spawn_under(
            self.engine.root("start the tool proxy"), ToolProxy, (self.tools.state, ledger),
            "tool-proxy", {"restart": "permanent", "capacity": 100_000},
        )
        self.tools.attach(ref, ledger)

    def _otel_exporter(self, endpoint: str) -> Any:
        if not self.tracing:
            raise ConfigurationError(
                f"ActorSystem: otlp_endpoint={endpoint!r} exports spans, but tracing=False "
                "records none; drop one of the two")
        from roost.tracing.export import OtelExporter

        exporter = OtelExporter(endpoint, service_name=self.name)
        self.tracer.add_sink(exporter)
        return exporter

    def http_session(self) -> aiohttp.ClientSession:
        """The system's pooled HTTP client session (created on first use, closed at shutdown).

        Pass `session=system.http_session` to an `HttpTool`.
        """
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _prune_ledger(self) -> None:
        """Drop idempotency keys past their retention, once at start, off the hot path."""
        try:
            pruned = await self.tools.prune()
        except StoreError as error:  # damaged entries: the calls that meet them say so
            _log.error("ledger_prune_failed", error_type=type(error).__name__, error=str(error))
            return
        if pruned:
            _log.info("ledger_pruned", entries=pruned)

    async def _sweep_ended_runs(self) -> None:
        """Delete checkpoints of runs ended past `run_retention`: at start, then hourly."""
        while True:
            try:
                pruned = await self.pipelines.prune_finished(self.run_retention)
            except StoreError as error:  # a damaged run record: listing runs says which
                _log.error("run_prune_failed", error_type=type(error).__name__, error=str(error))
                pruned = 0
            if pruned:
                _log.info("run_checkpoints_pruned", checkpoints=pruned)
            await asyncio.sleep(_SWEEP_INTERVAL)

    async def _watch_root(self) -> None:
        assert self._failed is not None
        await self._failed.wait()
        if self.engine.failure is not None:
            raise self.engine.failure

    def _root_failed(self, error: BaseException) -> None:
        _log.error("system_failed", system=self.name, error=repr(error))
        if self._failed is not None:
            self._failed.set()

    async def _shutdown(self) -> None:
        await self.engine.stop_root()
        if self.cluster is not None and self.store is not None:
            await self.cluster.stop()  # after the runs stopped: any node takes them over
        if self.loop_monitor is not None:
            await self.loop_monitor.stop()
        self.tools.detach()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._close_store()
        if self.otel_exporter is not None:  # every span has ended: send them (off the loop)
            await asyncio.to_thread(self.otel_exporter.shutdown)
        failure = self.engine.failure
        _log.info(
            "system_stopped",
            system=self.name,
            dead_letters=len(self.dead_letters),
            abandoned=self.engine.abandoned,
            failure=None if failure is None else repr(failure),
        )

    def _store_name(self) -> str | None:
        """The store as logs name it: its folder, or its URL without the password."""
        if self.store_url is not None:
            return redact(self.store_url)
        return None if self.store_path is None else str(self.store_path)

    async def _open_store(self) -> None:
        from roost.storage import CheckpointStore, PostgresStore, Store

        if self.store_url is not None:
            self.store = await PostgresStore.open(
                self.store_url, durability=self.durability, idle_transaction_timeout=(
                    None if self.cluster is None else self.cluster.settings.lease))
        elif self.store_path is not None:
            self.store = await Store.open(self.store_path, durability=self.durability)
        else:
            return
        # A store that can no longer write stops the system with its error (no hanging).
        self.store.on_failure(self.engine.fail)
        self.checkpoints = CheckpointStore(self.store, keep_last=self.checkpoints_kept)
        if self.tracing:
            if self._traces is None:  # the first start: the tracer's sink forwards to it
                self.tracer.add_sink(self._keep_span)
            self._traces = TraceStore(self.store, retention=self.trace_retention,
                                      max_bytes=self.trace_max_bytes)
            self._traces.start()

    def _keep_span(self, span: Any) -> None:
        if self._traces is not None:
            self._traces.add(span)

    @property
    def traces(self) -> TraceStore:
        """The spans of every run, in the store: `await system.traces.get(run_id)` gives a
        run's span tree, `await system.traces.search(...)` pages of trace summaries.

        Raises:
            ConfigurationError: the system has no store, or `tracing=False`.
            SystemNotRunning: the system is not running (a stopped system's store is
                read with `roost.tracing.read_traces(path)`).
        """
        if (self.store_path is None and self.store_url is None) or not self.tracing:
            raise ConfigurationError("ActorSystem: system.traces needs a store and tracing; "
                                     "create the system with store=DIR (or a postgresql:// "
                                     "URL) and tracing=True")
        if self._traces is None or self.store is None:
            raise SystemNotRunning("query system.traces (read a stopped system's traces with "
                                   "roost.tracing.read_traces(path))")
        return self._traces

    async def _close_store(self) -> None:
        if self.store is not None:
            if self._traces is not None:  # every span has ended: write them before closing
                await self._traces.close()
            await self.store.close()
            self.store = None
            self.checkpoints = None
            self.engine.checkpoints = None

    @property
    def failure(self) -> BaseException | None:
        """The error the root failed with, or None."""
        return None if self.engine is None else self.engine.failure

    # --- spawning -------------------------------------------------------------------------

    def _root(self, what: str) -> Any:
        if self.engine is None:
            raise SystemNotRunning(what)
        return self.engine.root(what)

    def spawn(self, factory: Any, *args: Any, name: str | None = None, **options: Any) -> ActorRef:
        """Create a top-level actor and return its ref at once; `on_start` runs before mail.

        Args:
            factory: an `Actor` subclass, a `ChildSpec`, or a `SupervisorSpec` (a tree).
            *args: positional arguments for the actor's `__init__`.
            name: the actor's name (its path is `/name`); generated if omitted.
            **options: `capacity`, `overflow`, `shutdown_timeout`, `poison_after` and
                `restart` (default `transient`: restarted after a failure, also for a
                `SupervisorSpec`) set up the actor; any other keyword goes to its
                `__init__`.

        Raises:
            ConfigurationError: `factory` is not an actor, an option is invalid, or a
                keyword is neither an option nor an `__init__` parameter.
            ActorNameTaken: a live top-level actor already has the name.
        """
        guardian = self._root(f"spawn {getattr(factory, '__name__', factory)!r}")
        return self.engine.spawn_under(guardian, factory, args, name, options)

    async def start(self, factory: Any, *args: Any, name: str | None = None,
                    **options: Any) -> ActorRef:
        """Like `spawn`, but wait until the actor has started (its `on_start` ran).

        Raises:
            ActorStartFailed: `__init__` or `on_start` raised (for a tree: a static child failed to
                start); the actor is removed.
        """
        guardian = self._root(f"start {getattr(factory, '__name__', factory)!r}")
        spec = as_child_spec(factory, args, name, options)
        return await self.engine.start_child(guardian, spec)

    # --- lookup and control ---------------------------------------------------------------

    def lookup(self, path: str) -> ActorRef:
        """The ref of the live actor at `path` (e.g. `/app/worker-1`).

        Raises:
            ActorNotFound: no live actor has that path.
        """
        if self.engine is None:
            raise ActorNotFound(path)
        return self.engine.lookup(path)

    async def stop(self, ref: ActorRef) -> None:
        """Stop an actor (children first, then its `on_stop`) and wait until it has stopped.

        From inside the actor's own message handling this is `ctx.stop()` (it returns at
        once; the actor exits normally after the message), and from inside a descendant's
        it starts the stop and returns at once: see `ActorRef.stop`.
        """
        await ref.stop()

    async def join(self, ref: ActorRef) -> Terminated:
        """Wait until the actor has stopped (returns at once if it already has).

        Returns:
            How it ended: a `Terminated` with its reason (`normal`, `failure` or
            `killed`) and, after a failure, the error.
        """
        return await self.engine.join(ref)

    def statistics(self) -> dict[str, Any]:
        """Counts of live actors by state, busy actors, dead letters and abandoned tasks,
        and the event loop's lag in seconds (`loop_lag`: last, max, blocks reported)."""
        if self.engine is None:
            counts = {"actors": 0, "states": {}, "busy": 0,
                      "dead_letters": self.dead_letters.counts(), "abandoned": 0}
        else:
            counts = self.engine.statistics()
        if self.loop_monitor is not None:
            counts["loop_lag"] = self.loop_monitor.statistics()
        return counts

    def actor_tree(self) -> list[dict[str, Any]]:
        """The live supervision tree as plain records, top-level actors first: each one's
        `path`, `name`, `actor` (class), `state`, `restarts`, `mailbox` (messages
        waiting), `busy` and `children`."""
        return [] if self.engine is None else self.engine.describe()

    def metrics(self) -> dict[str, Any]:
        """A snapshot of roost's metrics as plain values: runs by status, step and tool
        latency histograms, retries, breaker states, restarts, dead letters, mailbox
        depth, store writes (see `roost.tracing.metrics`). The span-derived ones need
        `tracing`; `roost.tracing.metrics.prometheus_text(system)` gives Prometheus text."""
        return snapshot(self)
