"""The engine: what every actor cell shares (registry, owned tasks, dead letters, the root).

The runtime's `ActorSystem` is the facade users hold; it builds one `Engine` and
delegates spawning, lookup and statistics to it. Cells talk only to the engine,
so the actor layer never imports the runtime: the facade is handed in as `host`,
which is what `ctx.system` returns to actors.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

from roost._logging import get_logger
from roost.actors._cell import KILL_GRACE, STATE_NAMES, STOPPED, STOPPING, Cell
from roost.actors._deadlines import Deadlines
from roost.actors._system_messages import StartInstance
from roost.actors.actor import Actor
from roost.actors.child_spec import ChildSpec
from roost.actors.messages import StopReason, Terminated
from roost.actors.ref import ActorRef
from roost.actors.supervisor import Supervision, as_child_spec, supervision_for
from roost.errors import (
    ActorNameTaken,
    ActorNotFound,
    ActorStartFailed,
    ChildAlreadyPresent,
    RoostError,
    SystemNotRunning,
)
from roost.mailbox.dead_letters import DeadLetters

_log = get_logger("roost")


class _Guardian(Actor):
    """The root of the tree: supervises top-level actors with the root's intensity."""

    async def receive(self, message: Any) -> Any:
        return None


class Engine:
    """Internal: the actor tree's shared services. One per running system.

    Args:
        host: the object `ctx.system` returns (the `ActorSystem` facade).
        loop: the event loop every cell runs on.
        dead_letters: where undeliverable and dropped messages are recorded.
        clock: monotonic seconds for supervision.
        rand: uniform [0, 1) numbers for backoff jitter.
        on_failure: called once when the root fails, with the error.
    """

    def __init__(
        self,
        host: Any,
        loop: asyncio.AbstractEventLoop,
        *,
        dead_letters: DeadLetters,
        clock: Callable[[], float],
        rand: Callable[[], float],
        on_failure: Callable[[BaseException], None],
    ) -> None:
        self.host = host
        self.loop = loop
        self.deadlines = Deadlines(loop)
        self.dead_letters = dead_letters
        self.clock = clock
        self.rand = rand
        self.checkpoints: Any = None  # a CheckpointStore when the system has a store
        self.tracer: Any = None  # the system's Tracer (roost.tracing), set by the host
        self._on_failure = on_failure
        self._registry: dict[str, Cell] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._names = itertools.count(1)
        self._context = contextvars.Context()
        self.abandoned = 0
        #: Tasks that ignored cancellation and were left running (logged and counted once).
        self.abandoned_tasks: set[asyncio.Task[Any]] = set()
        self.failure: BaseException | None = None
        self.guardian: Cell | None = None
        self.running = False

    def start_root(self, *, max_restarts: int, within: float) -> None:
        """Create and start the root guardian that supervises top-level actors."""
        guardian = Cell(self, None, "", ChildSpec(factory=_Guardian, shutdown_timeout=30.0))
        guardian.instantiate()
        guardian.supervision = Supervision(
            guardian, max_restarts=max_restarts, within=within, clock=self.clock, rand=self.rand,
        )
        guardian.begin()
        self.guardian = guardian
        self.running = True

    async def stop_root(self) -> None:
        """Stop every actor (reverse start order), then cancel the tasks left behind.

        A leftover task still running `KILL_GRACE` seconds after its cancellation is
        abandoned (logged and counted); tasks abandoned before are not waited for again.
        """
        self.running = False
        if self.guardian is not None:
            await self.guardian.stop()
            # A root that died on its own (its message loop broke) left its children
            # running; a root that stopped has none left.
            await self.guardian.stop_children()
        leftovers = [t for t in self._tasks if not t.done()]
        for task in leftovers:
            task.cancel("roost: the actor system is shutting down")
        waited = [t for t in leftovers if t not in self.abandoned_tasks]
        if waited:
            await asyncio.wait(waited, timeout=KILL_GRACE)
        for task in waited:
            if not task.done():
                self.abandon(task, "task_abandoned", None,
                             f"ignored cancellation at shutdown for {KILL_GRACE:g}s")

    def root(self, what: str) -> Cell:
        """The guardian, or `SystemNotRunning` naming `what` was attempted."""
        if not self.running or self.guardian is None:
            raise SystemNotRunning(what)
        return self.guardian

    # --- spawning -------------------------------------------------------------------------

    def spawn_under(self, parent: Cell | ActorRef, factory: Any, args: tuple[Any, ...],
                    name: str | None, options: dict[str, Any]) -> ActorRef:
        """Create a child of `parent` and begin its start (used by `spawn` and `ctx.spawn`)."""
        spec = as_child_spec(factory, args, name, options)
        cell = self._create(_cell_of(parent), spec)
        cell.begin()
        return cell.ref

    async def start_child(self, parent: Cell | ActorRef, spec: ChildSpec, *,
                          keep_spec: bool = False, replacing: Cell | None = None) -> ActorRef:
        """Create a child of `parent` and wait for its first start.

        Args:
            parent: the supervising actor.
            spec: the child's spec.
            keep_spec: the parent keeps the spec once the child stops for good
                (a supervisor's static and `StartChild` children).
            replacing: the stopped child, with its spec kept, that this one restarts:
                it takes its place, and keeps it again if the start fails.

        Raises:
            ActorStartFailed: its `__init__` or `on_start` raised; the child is removed.
        """
        parent = _cell_of(parent)
        try:
            cell = self._create(parent, spec, replacing)
        except RoostError:  # a taken name, a stopping parent
            raise
        except Exception as init_error:  # the actor's __init__ raised
            name = spec.child_name or spec.factory.__name__
            raise ActorStartFailed(f"{parent.path.rstrip('/')}/{name}", init_error,
                                   during="__init__") from init_error
        cell.keep_spec = keep_spec
        ack: asyncio.Future[BaseException | None] = self.loop.create_future()
        error = await cell.request(StartInstance(ack, report=False), ack)
        if error is not None:
            if parent.children.get(cell.name) is cell:
                if replacing is not None:
                    parent.children[cell.name] = replacing
                else:
                    del parent.children[cell.name]
            await cell.stop(StopReason.FAILURE, error)
            raise ActorStartFailed(cell.path, error) from error
        return cell.ref

    def _create(self, parent: Cell, spec: ChildSpec, replacing: Cell | None = None) -> Cell:
        name = spec.child_name
        if name is None:
            name = f"{spec.factory.__name__.lower()}-{next(self._names)}"
        existing = parent.children.get(name)
        if existing is not None and existing is not replacing:
            if existing.accepting:
                raise ActorNameTaken(f"{parent.path.rstrip('/')}/{name}")
            if existing.state == STOPPED and existing.listed:
                raise ChildAlreadyPresent(parent.path, name)
        if parent.state >= STOPPING:
            raise SystemNotRunning(f"spawn {name!r} under {parent.path} while it stops")
        cell = Cell(self, parent, name, spec)
        cell.instantiate()
        parent.children[name] = cell
        self._registry[cell.path] = cell
        return cell

    # --- the cells' services --------------------------------------------------------------

    def start_drain(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run an actor's drain as a task the engine owns."""
        task = self.loop.create_task(coroutine, context=self.base_context())
        self.own(task)
        return task

    def base_context(self) -> contextvars.Context:
        """A fresh copy of the context the system's tasks start from."""
        return self._context.copy()

    def own(self, task: asyncio.Task[Any]) -> None:
        """Keep `task` until it ends; `stop_root` cancels it and waits for it briefly."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def abandon(self, task: asyncio.Task[Any] | None, event: str, actor: str | None,
                detail: str) -> None:
        """Leave a task that ignores cancellation running: log it, count it, keep it owned.

        Python cannot kill a task; shutdown goes on without it.
        """
        _log.error(event, actor=actor, detail=f"{detail}; its task is left running")
        self.abandoned += 1
        if task is not None and not task.done():
            self.abandoned_tasks.add(task)
            task.add_done_callback(self.abandoned_tasks.discard)
            self.own(task)

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

        await hydrate(self.checkpoints, cell, actor)

    def fail(self, error: BaseException | None) -> None:
        """The root failed: remember the first error and tell the host."""
        if self.failure is None:
            self.failure = error if error is not None else RuntimeError("the root exited")
            self._on_failure(self.failure)

    # --- lookup and introspection ---------------------------------------------------------

    def lookup(self, path: str) -> ActorRef:
        """The ref of the live actor at `path`.

        Raises:
            ActorNotFound: no live actor has that path.
        """
        cell = self._registry.get(path)
        if cell is None or not cell.accepting:
            raise ActorNotFound(path)
        return cell.ref

    def termination(self, ref: ActorRef) -> asyncio.Future[None]:
        """A future that is done once the actor behind `ref` has stopped."""
        return ref._cell.termination()

    async def join(self, ref: ActorRef) -> Terminated:
        """Wait until the actor has stopped (at once if it already has); say how it ended."""
        cell = ref._cell
        if cell.state != STOPPED:
            await asyncio.shield(cell.termination())
        return Terminated(ref, cell.stop_reason or StopReason.NORMAL, cell.stop_error)

    def describe(self) -> list[dict[str, Any]]:
        """The supervision tree as plain records, top-level actors first: each actor's
        path, name, class, state, restarts, mailbox depth, whether it is handling a
        message, and its children (for consoles; a read-only walk)."""
        def record(cell: Cell) -> dict[str, Any]:
            return {"path": cell.path, "name": cell.name, "actor": cell.factory.__name__,
                    "state": STATE_NAMES[cell.state], "restarts": cell.restarts,
                    "mailbox": len(cell.mailbox), "busy": cell.current is not None,
                    "children": [record(child) for child in cell.children.values()]}

        return [] if self.guardian is None else record(self.guardian)["children"]

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
            "abandoned": self.abandoned,
        }


def _cell_of(parent: Cell | ActorRef) -> Cell:
    return parent._cell if isinstance(parent, ActorRef) else parent
