"""`Pool`: a supervisor that keeps N identical workers and routes messages to them."""

from __future__ import annotations

import itertools
from typing import Any, Literal

from roost._validate import check_count
from roost.actors.child_spec import Backoff, ChildSpec
from roost.actors.ref import ActorRef
from roost.actors.supervisor import Strategy, Supervisor, SupervisorSpec, check_options
from roost.errors import ConfigurationError

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
            routing: `round_robin`, or `least_busy` (the shortest mailbox).
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
        workers = [c for c in self.ctx._cell.children.values() if c.accepting]
        if not workers:  # refused, not a crash: that would take the pool down with them
            self.ctx.refuse(message, ConfigurationError(
                f"{self.ctx.path}: the pool has no live workers (they stopped), so "
                f"{type(message).__name__} cannot be routed; restart the pool's workers"))
            return None
        if self._routing == "least_busy":
            target = min(workers, key=lambda c: len(c.mailbox))
        else:
            target = workers[next(self._turn) % len(workers)]
        if target.mailbox.full:
            # Backpressure, not failure: another worker with room, else wait for one.
            roomy = [c for c in workers if not c.mailbox.full]
            if not roomy:
                await self.ctx.forward_send(target.ref)
                return None
            target = roomy[0]
        self.ctx.forward(target.ref)
        return None


def abandon_routed(pool: ActorRef, message: object) -> bool:
    """Give up on `message`, asked of `pool` by a caller that stopped waiting: out of the
    pool's mailbox, or out of the worker that has it (queued, or its handling cancelled),
    so that a step past its timeout does not keep a worker busy for ever. True if found."""
    cell = pool._cell
    if cell.abandon(message):
        return True
    return any(worker.abandon(message) for worker in list(cell.children.values()))
