"""`ActorContext`: what an actor can do and know about itself (`self.ctx`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import structlog

from roost.errors import ConfigurationError
from roost.mailbox.envelope import current_envelope
from roost.trace import handling
from roost.tracing.spans import Usage
from roost.tracing.tracer import valid_usage

if TYPE_CHECKING:
    from roost.actors._cell import Cell
    from roost.actors.ref import ActorRef


class ActorContext:
    """The running actor's view of the runtime, available as `self.ctx` from `__init__` on."""

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def self_ref(self) -> ActorRef:
        """This actor's own ref."""
        return self._cell.ref

    @property
    def path(self) -> str:
        """This actor's path, e.g. `/app/worker-1`."""
        return self._cell.path

    @property
    def parent(self) -> ActorRef | None:
        """The parent's ref (None for the system's root guardian)."""
        parent = self._cell.parent
        return None if parent is None else parent.ref

    @property
    def system(self) -> Any:
        """The `ActorSystem` this actor runs in."""
        return self._cell.engine.host

    @property
    def sender(self) -> ActorRef | None:
        """The sender of the message being handled (None if sent from outside any actor)."""
        envelope = current_envelope()
        return None if envelope is None else envelope.sender

    @property
    def children(self) -> list[ActorRef]:
        """Refs of this actor's live children, in start order."""
        # A supervisor also keeps stopped children (their specs) among its children.
        return [child.ref for child in self._cell.children.values() if child.accepting]

    @property
    def restarts(self) -> int:
        """How many times this actor has been restarted."""
        return self._cell.restarts

    @property
    def log(self) -> Any:
        """A structlog logger bound to this actor's path and the current trace and run ids."""
        fields: dict[str, Any] = {"actor": self._cell.path}
        envelope = self._cell.current if handling.get() is self._cell else None
        if envelope is not None:
            trace = envelope.trace_context()
            fields["trace_id"] = trace.trace_id
            if trace.run_id is not None:
                fields["run_id"] = trace.run_id
        return structlog.get_logger("roost").bind(**fields)

    def spawn(self, factory: Any, *args: Any, name: str | None = None, **options: Any) -> ActorRef:
        """Start a child actor supervised by this one; see `ActorSystem.spawn` for options."""
        return self._cell.engine.spawn_under(self._cell, factory, args, name, options)

    def stop(self, ref: ActorRef | None = None) -> asyncio.Future[None]:
        """Stop another actor (await the result to wait until it has stopped); with no
        argument, end this one.

        The stop starts when this is called, awaited or not: `self.ctx.stop()` ends the
        actor as Akka's `context.stop(self)` does. Ending this actor (no argument, or its
        own ref) is a normal exit that happens after the current message, and its
        supervisor then restarts it only if its restart type is `permanent`. Stopping an
        ancestor (e.g. `ctx.parent`) from inside a message starts its stop and does not
        wait: the ancestor stops this actor first, so waiting would deadlock. Both then
        stop with reason `normal`, this actor once its current message is done.
        """
        cell = self._cell
        if ref is None or ref._cell is cell:
            cell.post_exit()
            done: asyncio.Future[None] = cell.loop.create_future()
            done.set_result(None)
            return done
        stopping = cell.loop.create_task(ref._cell.stop_requested())
        cell.engine.own(stopping)
        return stopping

    def forward(self, ref: ActorRef) -> None:
        """Pass the message being handled on to `ref`, keeping its sender, reply and id.

        The other actor's `receive` then answers the original `ask`; this actor's
        return value for the message is ignored.

        Raises:
            RuntimeError: called outside the handling of a message.
        """
        envelope = self._cell.current if handling.get() is self._cell else None
        if envelope is None:
            raise RuntimeError(f"{self._cell.path}: forward() works only inside receive()")
        forwarded = envelope.forwarded()
        ref._cell.enqueue(forwarded)  # if this raises (a full mailbox), we still owe the reply
        envelope.reply = None

    async def forward_send(self, ref: ActorRef) -> None:
        """Like `forward`, but wait for room in `ref`'s mailbox as `send` does (backpressure).

        Raises:
            RuntimeError: called outside the handling of a message.
            ActorStopped: `ref` stopped before the message could be queued (this actor
                still owes the reply, so the error reaches the original asker).
        """
        envelope = self._cell.current if handling.get() is self._cell else None
        if envelope is None:
            raise RuntimeError(f"{self._cell.path}: forward_send() works only inside receive()")
        await ref._cell.enqueue_waiting(envelope.forwarded())
        envelope.reply = None

    def refuse(self, message: Any, error: BaseException) -> None:
        """Refuse the message being handled without failing: an asker gets `error`, and a
        told message is recorded in `system.dead_letters` as unhandled (with `error`).

        For messages an actor cannot handle when crashing would cost more than the
        message (a supervisor's children, a proxy's calls in flight).
        """
        reply = self.take_reply()
        if reply is not None:
            reply.set_exception(error)
            return
        sender = self.sender
        self.system.dead_letters.record(
            "unhandled", self.path, message, None if sender is None else sender.path, error)

    def take_reply(self) -> asyncio.Future[Any] | None:
        """Take over answering the message being handled (None if it was a tell).

        `receive`'s return value is then ignored: set the future's result or
        exception yourself, e.g. from a task that finishes the work later.
        """
        envelope = self._cell.current if handling.get() is self._cell else None
        if envelope is None:
            raise RuntimeError(f"{self._cell.path}: take_reply() works only inside receive()")
        reply, envelope.reply = envelope.reply, None
        return reply

    def report_usage(self, usage: Usage) -> None:
        """Record the tokens a model call made for the message being handled used.

        Inside a pipeline run (e.g. a step's worker handling its `RunStep`), with
        tracing on, the usage goes on the message's span as OpenTelemetry GenAI
        attributes, with its cost by the system's price table, and adds to the run's
        totals (its `run` span and `RunOutcome.usage`). Elsewhere nothing is recorded.
        Report each model call once: a step result's `usage` field is recorded too.

        Raises:
            ConfigurationError: `usage` is not a `roost.Usage` with whole token counts >= 0.
        """
        if not valid_usage(usage):
            raise ConfigurationError(
                f"{self._cell.path}: report_usage takes roost.Usage(model: str, input_tokens: "
                f"int >= 0, output_tokens: int >= 0), got {usage!r}")
        cell = self._cell
        span = cell.span if handling.get() is cell else None
        if span is not None:
            cell.engine.tracer.record_usage(span, usage)

    @property
    def tools(self) -> Any:
        """Call tools through the system's tool proxy: `await self.ctx.tools.call(name, **args)`."""
        return self._cell.engine.host.tools

    def watch(self, ref: ActorRef) -> ActorRef:
        """Receive `Terminated(ref, reason)` once when `ref` stops (at once if it already has)."""
        self._cell.watch(ref._cell)
        return ref

    def unwatch(self, ref: ActorRef) -> None:
        """Stop watching `ref`: no `Terminated` from it arrives after this returns.

        A `Terminated` already queued in this actor's mailbox is removed too.
        """
        self._cell.unwatch(ref._cell)
