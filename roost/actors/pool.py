"""`Pool`: a supervisor that keeps N identical workers and routes messages to them."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING, Any, Literal

import msgspec

from roost._validate import check_count
from roost.actors.child_spec import Backoff, ChildSpec
from roost.actors.ref import ActorRef
from roost.actors.supervisor import Strategy, Supervisor, SupervisorSpec, check_options
from roost.errors import ConfigurationError, MailboxFull

if TYPE_CHECKING:
    from roost.actors._cell import Cell

Routing = Literal["round_robin", "least_busy"]
ROUTINGS: tuple[Routing, ...] = ("round_robin", "least_busy")
#: The `ChildSpec` fields `Pool.spec` passes on to every worker.
WORKER_OPTIONS = ("capacity", "overflow", "poison_after", "shutdown_timeout")


class Pool(Supervisor):
    """Keeps `size` workers under one_for_one supervision and forwards each message to one.

    The worker's reply answers the original `ask`. A crashed worker is restarted
    with its mailbox, so messages routed to it are not lost. At shutdown the
    workers stop together, within one shutdown timeout. Example::

        pool = system.spawn(roost.Pool.spec("drafters", Drafter, size=8))
        draft = await pool.ask(Draft(email))
    """

    spec_options = ("routing",)
    stop_children_together = True

    def __init__(self, spec: SupervisorSpec) -> None:
        super().__init__(spec)
        self._routing: Routing = spec.options.get("routing", "round_robin")
        self._turn = itertools.count()

    @classmethod
    def spec(  # type: ignore[override]
        cls,
        name: str,
        worker: Any,
        *,
        size: int | None = None,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        routing: Routing = "round_robin",
        restart: str = "permanent",
        strategy: Strategy = "one_for_one",
        max_restarts: int = 10,
        within: float = 5.0,
        backoff: Backoff | None = None,
        **worker_options: Any,
    ) -> SupervisorSpec:
        """Describe a pool of `size` workers named `NAME-1` ... `NAME-size`.

        Args:
            name: the pool's name.
            worker: the worker's `Actor` subclass.
            size: how many workers to keep (required).
            args: positional arguments for each worker's `__init__`.
            kwargs: keyword arguments for each worker's `__init__`.
            routing: `round_robin`, or `least_busy` (the shortest mailbox, a message in
                progress counting as one queued).
            restart: the workers' restart type.
            **worker_options: further `ChildSpec` fields for each worker
                (`capacity`, `overflow`, `poison_after`, `shutdown_timeout`).

        Raises:
            ConfigurationError: a bad value, or an unknown option (the message lists
                the valid ones).
        """
        check_options(f"Pool {name!r}", worker_options, WORKER_OPTIONS,
                      listing=f"{', '.join(WORKER_OPTIONS)} (besides size, args, kwargs, "
                              "routing, restart, strategy, max_restarts, within, backoff)")
        if size is None:
            raise ConfigurationError(f"Pool {name!r}: size is required (how many workers to keep)")
        check_count(f"Pool {name!r}", "size", size, 1)
        if routing not in ROUTINGS:
            raise ConfigurationError(
                f"Pool {name!r}: routing must be one of {', '.join(ROUTINGS)}, got {routing!r}"
            )
        children = [
            ChildSpec(factory=worker, name=f"{name}-{i}", args=args, kwargs=dict(kwargs or {}),
                      restart=restart, **worker_options)  # type: ignore[arg-type]
            for i in range(1, size + 1)
        ]
        return super().spec(name, strategy=strategy, max_restarts=max_restarts, within=within,
                            backoff=backoff, children=children, routing=routing)

    async def handle(self, message: Any) -> Any:
        cell = self.ctx._cell
        while True:
            workers = [c for c in cell.children.values() if c.accepting]
            if not workers:  # refused, not a crash: that would take the pool down with them
                self.ctx.refuse(message, ConfigurationError(
                    f"{self.ctx.path}: the pool has no live workers (they stopped), so "
                    f"{type(message).__name__} cannot be routed; restart the pool's workers"))
                return None
            target = self._choose(workers)
            if target.mailbox.full:
                # Backpressure, not failure: another worker with room, else wait for one.
                target = next((c for c in workers if not c.mailbox.full), target)
            if not (target.mailbox.full and target.mailbox.overflow == "wait"):
                break
            if cell.mailbox.has_system:
                # Supervising comes first: a worker that failed waits for its restart by this
                # pool to make room. Route this message again once that is handled.
                current = cell.current
                assert current is not None  # inside receive
                cell.mailbox.push_front(msgspec.structs.replace(current))
                self.ctx.take_reply()
                return None
            await self._wait_for_change(cell, workers)
        try:
            self.ctx.forward(target.ref)
        except MailboxFull as full:  # policy `fail`: dead-lettered already; an asker hears why
            reply = self.ctx.take_reply()
            if reply is not None:
                reply.set_exception(full)
        return None

    def _choose(self, workers: list[Cell]) -> Cell:
        if self._routing == "least_busy":
            # A worker handling a message is busier than an idle one with the same queue.
            return min(workers, key=lambda c: len(c.mailbox) + (c.current is not None))
        return workers[next(self._turn) % len(workers)]

    @staticmethod
    async def _wait_for_change(cell: Cell, workers: list[Cell]) -> None:
        """Wait until a worker's mailbox frees a slot (or its worker stops), or a system
        message reaches the pool itself."""
        changed: asyncio.Future[None] = cell.loop.create_future()
        mailboxes = [cell.mailbox, *(worker.mailbox for worker in workers)]
        for mailbox in mailboxes:
            mailbox.wake_on_change(changed)
        try:
            await changed
        finally:
            for mailbox in mailboxes:
                mailbox.forget_waker(changed)


def abandon_routed(pool: ActorRef, message: object) -> bool:
    """Give up on `message`, asked of `pool` by a caller that stopped waiting: out of the
    pool's mailbox, or out of the worker that has it (queued, or its handling cancelled),
    so that a step past its timeout does not keep a worker busy for ever. True if found."""
    cell = pool._cell
    if cell.abandon(message):
        return True
    return any(worker.abandon(message) for worker in list(cell.children.values()))
