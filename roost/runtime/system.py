"""`ActorSystem`: the runtime an application enters with `async with`.

It owns the actor tree (under a root guardian), the drain tasks of busy actors,
dead letters and logging setup. Leaving the `async with` block stops every
actor in reverse start order, each within its shutdown timeout. If the root
fails (restart intensity exceeded at the top), the block is cancelled and the
error is raised from it.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import anyio
import structlog

from roost.actors._cell import STATE_NAMES, STOPPED, STOPPING, Cell
from roost.actors._deadlines import Deadlines
from roost.actors._system_messages import StartInstance
from roost.actors.actor import Actor
from roost.actors.child_spec import ChildSpec
from roost.actors.ref import ActorRef
from roost.actors.supervisor import Supervision, as_child_spec, supervision_for
from roost.actors.tool_client import Tools
from roost.errors import (
    ActorNameTaken,
    ActorNotFound,
    ActorStartFailed,
    ConfigurationError,
    SystemNotRunning,
)
from roost.mailbox.dead_letters import DeadLetters
from roost.runtime.log import configure_logging
from roost.runtime.pipelines import Pipelines

_log = structlog.get_logger("roost")


class _Guardian(Actor):
    """The root of the tree: supervises top-level actors with the default policy."""

    async def receive(self, message: Any) -> Any:
        return None


class ActorSystem:
    """An actor runtime: spawn actors, look them up, and shut everything down on exit.

    Args:
        name: the system's name, used in logs.
        store: the folder of the LMDB store (created if missing), or None for no
            store. Checkpointed actors need one.
        durability: `sync` (a checkpoint is acknowledged after fsync) or `async`.
        log_format: `console`, `json` or `auto` (console on a terminal) to
            configure structlog; None leaves structlog as the application set it.
        log_level: the lowest level logged when roost configures structlog.
        max_restarts: restarts of top-level actors allowed within `within`
            seconds before the whole system fails.
        within: the root's restart-intensity window, in seconds.
        dead_letters_kept: how many recent dead letters stay inspectable.
        ledger_retention: how long settled idempotency keys are kept, in seconds.
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
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if durability not in ("sync", "async"):
            raise ConfigurationError(
                f"ActorSystem: durability must be 'sync' or 'async', got {durability!r}"
            )
        self.name = name
        self.store_path = None if store is None else Path(store)
        self.durability = durability
        self.log_format = log_format
        self.log_level = log_level
        self.dead_letters = DeadLetters(keep=dead_letters_kept)
        self.ledger_retention = ledger_retention
        self.tools = Tools(clock)
        self.pipelines = Pipelines(self)
        self._http: aiohttp.ClientSession | None = None
        self.clock = clock
        self.rand = rand
        self._max_restarts = max_restarts
        self._within = within
        self._registry: dict[str, Cell] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._names = itertools.count(1)
        self._abandoned = 0
        self._failure: BaseException | None = None
        self._failed: anyio.Event | None = None
        self._task_group: Any = None
        self._guardian: Cell | None = None
        self._running = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._context: contextvars.Context | None = None
        self.store: Any = None
        self.checkpoints: Any = None
        self.deadlines: Deadlines = None  # type: ignore[assignment]

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> ActorSystem:
        if self._running:
            raise ConfigurationError(f"ActorSystem {self.name!r} is already running")
        if self.log_format is not None or not structlog.is_configured():
            configure_logging(self.log_format or "auto", self.log_level)
        self.loop = asyncio.get_running_loop()
        self.deadlines = Deadlines(self.loop)
        self._context = contextvars.Context()
        self._failed = anyio.Event()
        await self._open_store()
        self._guardian = Cell(
            self, None, "", ChildSpec(factory=_Guardian, shutdown_timeout=30.0)
        )
        self._guardian.instantiate()
        self._guardian.supervision = Supervision(
            self._guardian, max_restarts=self._max_restarts, within=self._within,
            clock=self.clock, rand=self.rand,
        )
        self._guardian.begin()
        self._start_tool_proxy()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self._watch_root)
        if self.store is not None:
            self.own(self.loop.create_task(self._prune_ledger()))
        self._running = True
        _log.info("system_started", system=self.name, store=str(self.store_path))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        shutdown_error: BaseException | None = None
        try:
            with anyio.CancelScope(shield=True):
                await self._shutdown()
        except BaseException as error:  # still close the task group below, then raise it
            shutdown_error = error
        assert self._failed is not None
        self._failed.set()  # releases the root watcher
        try:
            suppressed = await self._task_group.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if self._failure is not None and any(e is self._failure for e in group.exceptions):
                raise self._failure from None
            if exc is not None and list(group.exceptions) == [exc]:
                raise exc from None  # the body's own error, not wrapped in a group
            raise
        if self._failure is not None:
            raise self._failure
        if shutdown_error is not None:
            raise shutdown_error
        return suppressed

    def _start_tool_proxy(self) -> None:
        """Start the tool proxy first, so it stops last (actors may call tools in on_stop)."""
        from roost.actors.tool_proxy import ToolProxy

        ledger = None
        if self.store is not None:
            from roost.storage.ledger import Ledger

            ledger = Ledger(self.store, retention=self.ledger_retention)
        assert self._guardian is not None
        ref = self.spawn_under(
            self._guardian, ToolProxy, (self.tools.state, ledger), "tool-proxy",
            {"restart": "permanent", "capacity": 100_000},
        )
        self.tools.attach(ref, ledger)

    def http_session(self) -> aiohttp.ClientSession:
        """The system's pooled HTTP client session (created on first use, closed at shutdown).

        Pass `session=system.http_session` to an `HttpTool`.
        """
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession()
        return self._http

    async def _prune_ledger(self) -> None:
        """Drop idempotency keys past their retention, once at start, off the hot path."""
        pruned = await self.tools.prune()
        if pruned:
            _log.info("ledger_pruned", entries=pruned)

    async def _watch_root(self) -> None:
        assert self._failed is not None
        await self._failed.wait()
        if self._failure is not None:
            raise self._failure

    async def _shutdown(self) -> None:
        self._running = False
        guardian = self._guardian
        if guardian is not None:
            await guardian.stop()
        leftovers = [t for t in self._tasks if not t.done()]
        for task in leftovers:
            task.cancel()
        if leftovers:
            await asyncio.wait(leftovers, timeout=1.0)
        self.tools.detach()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._close_store()
        _log.info(
            "system_stopped",
            system=self.name,
            dead_letters=len(self.dead_letters),
            abandoned=self._abandoned,
            failure=None if self._failure is None else repr(self._failure),
        )

    async def _open_store(self) -> None:
        if self.store_path is None:
            return
        from roost.storage import CheckpointStore, Store

        self.store = await Store.open(self.store_path, durability=self.durability)
        self.checkpoints = CheckpointStore(self.store)

    async def _close_store(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None
            self.checkpoints = None

    def fail(self, error: BaseException | None) -> None:
        """The root failed: stop the system and raise `error` from its `async with`."""
        if self._failure is None:
            self._failure = error if error is not None else RuntimeError("the root exited")
            _log.error("system_failed", system=self.name, error=repr(self._failure))
        if self._failed is not None:
            self._failed.set()

    @property
    def failure(self) -> BaseException | None:
        """The error the root failed with, or None."""
        return self._failure

    # --- spawning -------------------------------------------------------------------------

    def _check_running(self, what: str) -> Cell:
        if not self._running or self._guardian is None:
            raise SystemNotRunning(what)
        return self._guardian

    def spawn(self, factory: Any, *args: Any, name: str | None = None, **options: Any) -> ActorRef:
        """Create a top-level actor and return its ref at once; `on_start` runs before mail.

        Args:
            factory: an `Actor` subclass, a `ChildSpec`, or a `SupervisorSpec` (a tree).
            *args: positional arguments for the actor's `__init__`.
            name: the actor's name (its path is `/name`); generated if omitted.
            **options: `capacity`, `overflow`, `shutdown_timeout`, `poison_after` and
                `restart` (default `transient`: restarted after a failure) set up
                the actor; any other keyword goes to its `__init__`.

        Raises:
            ConfigurationError: `factory` is not an actor, or an option is invalid.
            ActorNameTaken: a live top-level actor already has the name.
        """
        guardian = self._check_running(f"spawn {getattr(factory, '__name__', factory)!r}")
        return self.spawn_under(guardian, factory, args, name, options)

    async def start(self, factory: Any, *args: Any, name: str | None = None,
                    **options: Any) -> ActorRef:
        """Like `spawn`, but wait until the actor has started (its `on_start` ran).

        Raises:
            ActorStartFailed: `on_start` raised (for a tree: a static child failed to
                start); the actor is removed.
        """
        guardian = self._check_running(f"start {getattr(factory, '__name__', factory)!r}")
        spec = as_child_spec(factory, args, name, options)
        return await self.start_child(guardian, spec)

    def spawn_under(self, parent: Cell, factory: Any, args: tuple[Any, ...], name: str | None,
                    options: dict[str, Any]) -> ActorRef:
        """Create a child of `parent` (used by `spawn` and `ctx.spawn`)."""
        spec = as_child_spec(factory, args, name, options)
        cell = self._create(parent, spec)
        cell.begin()
        return cell.ref

    async def start_child(self, parent: Cell, spec: ChildSpec) -> ActorRef:
        """Create a child of `parent` and wait for its first start.

        Raises:
            ActorStartFailed: its `on_start` raised; the child is removed.
        """
        cell = self._create(parent, spec)
        ack: asyncio.Future[BaseException | None] = self.loop.create_future()
        error = await cell.request(StartInstance(ack, report=False), ack)
        if error is not None:
            parent.children.pop(cell.name, None)
            await cell.stop("failure", error)
            raise ActorStartFailed(cell.path, error) from error
        return cell.ref

    def _create(self, parent: Cell, spec: ChildSpec) -> Cell:
        name = spec.child_name
        if name is None:
            name = f"{spec.factory.__name__.lower()}-{next(self._names)}"
        existing = parent.children.get(name)
        if existing is not None and existing.accepting:
            raise ActorNameTaken(f"{parent.path.rstrip('/')}/{name}")
        if parent.state >= STOPPING:
            raise SystemNotRunning(f"spawn {name!r} under {parent.path} while it stops")
        cell = Cell(self, parent, name, spec)
        cell.instantiate()
        parent.children[name] = cell
        self._registry[cell.path] = cell
        return cell

    # --- the cells' services --------------------------------------------------------------

    def start_drain(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run an actor's drain as a task the system owns."""
        task = self.loop.create_task(coroutine, context=self.base_context())
        self.own(task)
        return task

    def base_context(self) -> contextvars.Context:
        """A fresh copy of the context the system's tasks start from."""
        assert self._context is not None
        return self._context.copy()

    def own(self, task: asyncio.Task[Any]) -> None:
        """Keep `task` until it ends; shutdown cancels it (after the actors stopped, before
        the store closes) and waits for it briefly."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def count_abandoned(self) -> None:
        self._abandoned += 1

    def unregister(self, cell: Cell) -> None:
        if self._registry.get(cell.path) is cell:
            del self._registry[cell.path]

    def supervision_for(self, cell: Cell) -> Any:
        return supervision_for(cell, self.clock, self.rand)

    def needs_hydration(self, cell: Cell) -> bool:
        """Whether starting this cell's actor must load a checkpoint first."""
        return getattr(cell.factory, "state_type", None) is not None

    async def hydrate(self, cell: Cell, actor: Actor) -> None:
        """Load the actor's latest checkpoint into it, if it is a checkpointed actor."""
        if getattr(actor, "state_type", None) is None:
            return
        from roost.actors.checkpointed import hydrate

        await hydrate(self, cell, actor)

    # --- lookup and control ---------------------------------------------------------------

    def lookup(self, path: str) -> ActorRef:
        """The ref of the live actor at `path` (e.g. `/app/worker-1`).

        Raises:
            ActorNotFound: no live actor has that path.
        """
        cell = self._registry.get(path)
        if cell is None or not cell.accepting:
            raise ActorNotFound(path)
        return cell.ref

    async def stop(self, ref: ActorRef) -> None:
        """Stop an actor (children first, then its `on_stop`) and wait until it has stopped."""
        await ref._cell.stop()

    async def join(self, ref: ActorRef) -> None:
        """Wait until the actor has stopped (returns at once if it already has)."""
        cell = ref._cell
        if cell.state != STOPPED:
            await asyncio.shield(cell.termination())

    def statistics(self) -> dict[str, Any]:
        """Counts of live actors by state, busy actors, dead letters and abandoned tasks."""
        states: dict[str, int] = {}
        for cell in self._registry.values():
            name = STATE_NAMES[cell.state]
            states[name] = states.get(name, 0) + 1
        return {
            "actors": len(self._registry),
            "states": states,
            "busy": len(self._tasks),
            "dead_letters": self.dead_letters.counts(),
            "abandoned": self._abandoned,
        }
