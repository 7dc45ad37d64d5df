"""Supervisors: actors that own children and restart them when they fail, the OTP way.

A `Supervisor` starts its static children in spec order (a child that fails its
first start makes the supervisor's start fail), restarts failed children by its
strategy, and stops them in reverse start order. Restarts are bounded by an
intensity (at most `max_restarts` within `within` seconds, counted across all
children, failed restarts included); past it the supervisor stops its children
and fails with `IntensityExceeded`, so its own parent treats it like any crashed
child. At the root the system stops with that error.

A supervisor keeps the spec of a permanent or transient child it started (from
its spec, `StartChild` or `RestartChild`) once the child has stopped for good:
`WhichChildren` lists it as `stopped` until `RestartChild` starts it again or
`DeleteChild` forgets it (OTP's `restart_child` and `delete_child`).
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import msgspec

from roost._logging import get_logger
from roost._validate import check_count, check_seconds
from roost.actors._restart import RestartIntensity, restarts_in_a_row, should_restart
from roost.actors._system_messages import StartInstance, StopInstance
from roost.actors.actor import Actor, Message
from roost.actors.child_spec import (
    Backoff,
    ChildSpec,
    check_init_keywords,
    check_name,
    check_options,
)
from roost.actors.messages import StopReason
from roost.errors import (
    CheckpointCorrupt,
    ChildNotFound,
    ChildNotStopped,
    ConfigurationError,
    IntensityExceeded,
    RecordCorrupt,
)

if TYPE_CHECKING:
    from roost.actors._cell import Cell

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
STRATEGIES: tuple[Strategy, ...] = ("one_for_one", "one_for_all", "rest_for_one")
#: The keyword arguments of `Supervisor.spec` besides a subclass's `spec_options`.
SPEC_ARGUMENTS = ("strategy", "max_restarts", "within", "backoff", "children")
#: The `ChildSpec` fields `spawn` and `start` take as keyword options.
SPAWN_OPTIONS = ("restart", "shutdown_timeout", "capacity", "overflow", "poison_after")

_log = get_logger("roost")


class SupervisorSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A supervisor and its static children; spawn it, or nest it in a `ChildSpec`.

    Build it with `Supervisor.spec(...)` (or `Pool.spec(...)`).
    """

    name: str
    strategy: Strategy = "one_for_one"
    max_restarts: int = 3
    within: float = 5.0
    backoff: Backoff = msgspec.field(default_factory=Backoff)
    children: tuple[ChildSpec, ...] = ()
    actor: Any = None  # the Supervisor subclass to run; None means Supervisor
    options: dict[str, Any] = msgspec.field(default_factory=dict)  # subclass settings

    def __post_init__(self) -> None:
        owner = f"Supervisor {self.name!r}"
        check_name("Supervisor", self.name)
        if self.strategy not in STRATEGIES:
            raise ConfigurationError(
                f"{owner}: strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        check_count(owner, "max_restarts", self.max_restarts, 0)
        check_seconds(owner, "within", self.within, allow_zero=False)
        names: set[str] = set()
        for child in self.children:
            if not isinstance(child, ChildSpec):
                raise ConfigurationError(f"{owner}: children must be ChildSpecs, got {child!r}")
            name = child.child_name or child.factory.__name__.lower()
            if name in names:
                raise ConfigurationError(f"{owner}: two children are named {name!r}")
            names.add(name)
        actor = self.actor if self.actor is not None else Supervisor
        allowed = tuple(getattr(actor, "spec_options", ()))
        check_options(owner, self.options, (*SPEC_ARGUMENTS, *allowed))


class StartChild(Message, frozen=True):
    """Ask a running supervisor to start a dynamic child; the reply is its ref."""

    spec: ChildSpec


class StopChild(Message, frozen=True):
    """Ask a supervisor to stop a child for good (OTP's `terminate_child`).

    The child is not restarted; a permanent or transient child's spec is kept
    (state `stopped`) for `RestartChild`. Stopping a stopped child does nothing.
    An unknown name raises `ChildNotFound` to the asker.
    """

    name: str


class RestartChild(Message, frozen=True):
    """Ask a supervisor to start a stopped child again from its kept spec; the reply is its ref.

    The child gets a new ref (its old one stays dead) and keeps its place in the
    start order. It is OTP's `restart_child`: raises `ChildNotFound` for an unknown
    name, `ChildNotStopped` if it is running, and `ActorStartFailed` if its
    `on_start` raises (the spec is still kept).
    """

    name: str


class DeleteChild(Message, frozen=True):
    """Ask a supervisor to forget a stopped child's spec (OTP's `delete_child`).

    Raises `ChildNotFound` for an unknown name and `ChildNotStopped` if it is running.
    """

    name: str


class WhichChildren(Message, frozen=True):
    """Ask a supervisor for its children, in start order; the reply is a list of `ChildInfo`."""


class ChildInfo(msgspec.Struct, frozen=True):
    """One child of a supervisor, as reported by `WhichChildren`.

    Attributes:
        name: the child's name.
        ref: its ref, or None while it is stopped (its spec kept).
        state: `new`, `running`, `suspended` (failed, waiting for its restart),
            `stopping` or `stopped`.
        restarts: how many times its supervisor restarted it.
        restart: its restart type.
    """

    name: str
    ref: Any
    state: str
    restarts: int
    restart: str


class Supervisor(Actor):
    """An actor that starts, restarts and stops its children by a `SupervisorSpec`.

    Example::

        tree = roost.Supervisor.spec(
            "app", strategy="one_for_one", max_restarts=3, within=5.0,
            children=[roost.ChildSpec(factory=Greeter, name="greeter")])
        app = await system.start(tree)
    """

    #: Keyword options `spec()` accepts beyond its own arguments, kept in
    #: `SupervisorSpec.options` for the subclass to read (`self.tree.options`).
    spec_options: ClassVar[tuple[str, ...]] = ()
    #: Stop the children all at once at shutdown (bounded by one shutdown timeout)
    #: instead of one by one in reverse start order; for children that do not
    #: depend on each other, e.g. a pool's workers.
    stop_children_together: ClassVar[bool] = False

    def __init__(self, spec: SupervisorSpec) -> None:
        self.tree = spec

    @classmethod
    def spec(
        cls,
        name: str,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        within: float = 5.0,
        backoff: Backoff | None = None,
        children: Sequence[ChildSpec | SupervisorSpec] = (),
        **options: Any,
    ) -> SupervisorSpec:
        """Describe a supervisor; nested `SupervisorSpec`s become permanent children.

        Raises:
            ConfigurationError: a bad value, or an option this class does not take
                (the message lists the valid ones).
        """
        specs = tuple(
            ChildSpec(factory=child) if isinstance(child, SupervisorSpec) else child
            for child in children
        )
        return SupervisorSpec(
            name=name,
            strategy=strategy,
            max_restarts=max_restarts,
            within=within,
            backoff=backoff if backoff is not None else Backoff(),
            children=specs,
            actor=cls,
            options=options,
        )

    async def on_start(self) -> None:
        cell = self.ctx._cell
        for child in self.tree.children:
            if child.child_name is None:  # static children are named after their class
                child = msgspec.structs.replace(child, name=child.factory.__name__.lower())
            await cell.engine.start_child(cell, child, keep_spec=True)

    async def receive(self, message: Any) -> Any:
        cell = self.ctx._cell
        match message:
            case StartChild(spec=spec):
                return await cell.engine.start_child(cell, spec, keep_spec=True)
            case StopChild(name=name):
                await self._child(name).stop()
                return None
            case RestartChild(name=name):
                child = self._stopped_child(name, "restart")
                spec = msgspec.structs.replace(child.options, name=child.name)
                return await cell.engine.start_child(cell, spec, keep_spec=True, replacing=child)
            case DeleteChild(name=name):
                self._stopped_child(name, "delete")
                del cell.children[name]
                return None
            case WhichChildren():
                from roost.actors._cell import STATE_NAMES, STOPPED

                return [
                    ChildInfo(c.name, None if c.state == STOPPED else c.ref, STATE_NAMES[c.state],
                              c.restarts, c.options.restart)
                    for c in cell.children.values() if c.listed
                ]
        return await self.handle(message)

    def _child(self, name: str) -> Cell:
        """The child named `name` (running or kept stopped), or `ChildNotFound`."""
        cell = self.ctx._cell
        child = cell.children.get(name)
        if child is None or not child.listed:
            known = [n for n, c in cell.children.items() if c.listed]
            raise ChildNotFound(cell.path, name, known)
        return child

    def _stopped_child(self, name: str, operation: str) -> Cell:
        from roost.actors._cell import STATE_NAMES, STOPPED

        child = self._child(name)
        if child.state != STOPPED:
            raise ChildNotStopped(self.ctx.path, name, STATE_NAMES[child.state], operation)
        return child

    async def handle(self, message: Any) -> Any:
        """Messages other than supervisor commands; subclasses (pools) override this.

        A plain supervisor takes none: an `ask` gets a `ConfigurationError`, and a `tell`
        is recorded in `system.dead_letters` as `unhandled`. Neither is a failure: a stray
        message must not restart the supervisor and its whole subtree.
        """
        refused = ConfigurationError(
            f"{self.ctx.path}: a Supervisor only takes StartChild, StopChild, RestartChild, "
            f"DeleteChild and WhichChildren, got {type(message).__name__}"
        )
        self.ctx.refuse(message, refused)
        return None


class Supervision:
    """Decides and carries out what happens when one actor's child fails or exits.

    Args:
        cell: the supervising actor's cell.
        strategy: which children restart together (`one_for_one`, `one_for_all`,
            `rest_for_one`).
        max_restarts: restarts allowed within `within` seconds before giving up.
        within: the intensity window, in seconds.
        backoff: the delay between consecutive restarts of one child.
        clock: monotonic seconds (injected in tests).
        rand: uniform numbers in [0, 1) for jitter (injected in tests).
    """

    def __init__(
        self,
        cell: Cell,
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        within: float = 5.0,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.cell = cell
        self.strategy = strategy
        self.intensity = RestartIntensity(max_restarts, within)
        self.backoff = backoff if backoff is not None else Backoff()
        self.clock = clock
        self.rand = rand
        # Per child: how many restarts in a row it has had.
        self._streaks: weakref.WeakKeyDictionary[Cell, int] = weakref.WeakKeyDictionary()
        # Delayed restarts not yet done, by the child whose failure scheduled them.
        self._pending: dict[Cell, asyncio.TimerHandle] = {}

    async def child_failed(self, child: Cell, error: BaseException | None, context: str) -> None:
        """Restart, stop or escalate after `child` failed (`error`) or exited (None).

        A child whose start failed on its own damaged stored state is stopped, not
        restarted (Akka stops an actor whose initialization failed): every start would
        fail the same way until the intensity gave up on the whole tree.
        """
        abnormal = error is not None
        damaged = context == "start" and isinstance(error, CheckpointCorrupt | RecordCorrupt)
        if damaged or not should_restart(child.options.restart, abnormal):
            self._report("child_terminated", child, error, context)
            await child.stop(StopReason.FAILURE if abnormal else StopReason.NORMAL, error)
            return
        now = self.clock()
        if not self.intensity.allow(now):
            cause = error if error is not None else RuntimeError(f"{child.path} exited")
            exceeded = IntensityExceeded(
                self.cell.path, self.intensity.max_restarts, self.intensity.within, cause
            )
            self._report("supervisor_intensity_exceeded", child, error, context)
            # The children are given up on with their supervisor: their watchers hear why.
            await self.cell.stop_children(StopReason.FAILURE, exceeded)
            self.cell.fail_from_supervision(exceeded)
            return
        group = self._group(child)
        delay = self._delay(child, now)
        self._report("child_restart_scheduled", child, error, context, delay=round(delay, 4))
        if delay > 0:
            self._pending[child] = self.cell.loop.call_later(
                delay, self.cell.post_restart, group, child)
        else:
            await self.restart(group, child)

    async def restart(self, group: list[Cell], failed: Cell) -> None:
        """Stop the group's instances in reverse start order, then start fresh ones in order.

        A temporary member other than the failed child is not restarted: it stops for good
        where its turn to stop comes.
        """
        members = [c for c in group if self.cell.children.get(c.name) is c and c.accepting]
        for member in members:
            # This restart covers any delayed one a member's own failure scheduled.
            pending = self._pending.pop(member, None)
            if pending is not None:
                pending.cancel()
        loop = self.cell.loop
        restarted = [c for c in members if c is failed or c.options.restart != "temporary"]
        if len(members) > 1:  # stop them all (in reverse) before any starts again
            for child in reversed(members):
                if child not in restarted:  # a temporary sibling is stopped for good
                    await child.stop()
                    continue
                ack: asyncio.Future[None] = loop.create_future()
                await child.request(StopInstance(ack), ack)
        for child in restarted:
            started: asyncio.Future[BaseException | None] = loop.create_future()
            child.restarts += 1
            error = await child.request(StartInstance(started, fresh=len(members) == 1), started)
            _log.info(
                "child_restarted",
                supervisor=self.cell.path,
                child=child.path,
                restarts=child.restarts,
                start_error=None if error is None else f"{type(error).__name__}: {error}",
            )

    def forget(self, child: Cell) -> None:
        """`child` has stopped for good: drop its delayed restart, if any."""
        pending = self._pending.pop(child, None)
        if pending is not None:
            pending.cancel()

    def close(self) -> None:
        """Cancel the delayed restarts (the supervisor is stopping or being replaced)."""
        for pending in self._pending.values():
            pending.cancel()
        self._pending.clear()

    def _group(self, child: Cell) -> list[Cell]:
        children = list(self.cell.children.values())
        if self.strategy == "one_for_all":
            return children
        if self.strategy == "rest_for_one":
            return children[children.index(child):]
        return [child]

    def _delay(self, child: Cell, now: float) -> float:
        # Clean running counts from the child's last successful (re)start, so the wait
        # for a delayed restart never passes for recovery.
        streak = restarts_in_a_row(self._streaks.get(child, 0), now - child.started_at,
                                   self.backoff.reset_after)
        self._streaks[child] = streak
        return self.backoff.delay(streak, self.rand())

    def _report(
        self, event: str, child: Cell, error: BaseException | None, context: str, **extra: Any
    ) -> None:
        log = _log.info if error is None else _log.warning
        log(
            event,
            supervisor=self.cell.path,
            context="start_error" if context == "start" else "child_terminated",
            reason=StopReason.NORMAL if error is None else StopReason.FAILURE,
            offender=child.path,
            during=context,
            error_type=None if error is None else type(error).__name__,
            error=None if error is None else str(error),
            restarts=child.restarts,
            **extra,
        )


def supervision_for(cell: Cell, clock: Callable[[], float], rand: Callable[[], float]) -> Supervision:
    """The supervision of `cell`'s children: its `SupervisorSpec`'s, or the defaults."""
    actor = cell.actor
    if isinstance(actor, Supervisor):
        spec = actor.tree
        return Supervision(
            cell,
            strategy=spec.strategy,
            max_restarts=spec.max_restarts,
            within=spec.within,
            backoff=spec.backoff,
            clock=clock,
            rand=rand,
        )
    return Supervision(cell, clock=clock, rand=rand)


def as_child_spec(factory: Any, args: tuple[Any, ...], name: str | None,
                  options: dict[str, Any]) -> ChildSpec:
    """Turn `spawn`'s arguments into a `ChildSpec`.

    `spawn` and `start` default to `transient` (restarted after a failure, ended by
    a normal exit), for an actor class and a `SupervisorSpec` alike, unlike a
    `ChildSpec`'s OTP default `permanent`: a spawned actor may finish its work and
    stop itself, which a `permanent` one could not.

    Raises:
        ConfigurationError: `factory` is not an actor, or an option is neither a
            spawn option nor a parameter of the actor's `__init__` (the message
            lists both).
    """
    if isinstance(factory, ChildSpec):
        if args or options:
            raise ConfigurationError(
                "spawn: pass either a ChildSpec or a factory with arguments, not both"
            )
        return factory if name is None else msgspec.structs.replace(factory, name=name)
    if isinstance(factory, SupervisorSpec):
        check_options(f"spawn {factory.name!r}", options, SPAWN_OPTIONS)
        return ChildSpec(factory=factory, name=name, **{"restart": "transient", **options})
    if not (isinstance(factory, type) and issubclass(factory, Actor)):
        raise ConfigurationError(
            f"spawn: {factory!r} is not an Actor subclass, ChildSpec or SupervisorSpec; "
            "define a class that subclasses roost.Actor"
        )
    if name is not None:
        check_name(f"spawn {factory.__name__}", name)
    settings = {k: v for k, v in options.items() if k in SPAWN_OPTIONS}
    kwargs = {k: v for k, v in options.items() if k not in settings}
    if kwargs:
        check_init_keywords(f"spawn {factory.__name__}", factory, kwargs, SPAWN_OPTIONS,
                            "spawn options")
    settings.setdefault("restart", "transient")
    settings.setdefault("shutdown_timeout", factory.shutdown_timeout)
    return ChildSpec(factory=factory, name=name, args=args, kwargs=kwargs, **settings)
