"""`ActorRef`, the only handle to an actor: tell, send, ask and stop."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from roost._validate import is_number
from roost.errors import ActorStopped, AskTimeout, ConfigurationError
from roost.mailbox.envelope import Envelope
from roost.trace import TraceContext, call_trace, handling

if TYPE_CHECKING:
    from roost.actors._cell import Cell

#: The default `ask` timeout in seconds.
DEFAULT_ASK_TIMEOUT = 5.0


def _from_actor(sender: Cell, message: Any, reply: asyncio.Future[Any] | None) -> Envelope:
    """An envelope sent from inside an actor: it names the sender and inherits its trace."""
    current = sender.current
    return Envelope(
        message, sender.ref, reply, None if current is None else current.trace_context()
    )


def check_timeout(timeout: float, what: str) -> None:
    """Raise `ConfigurationError` unless `timeout` is a positive, finite number of seconds."""
    if not (is_number(timeout) and timeout > 0):
        raise ConfigurationError(f"{what}: timeout must be a positive number of seconds, got {timeout!r}")


class ActorRef:
    """A handle to one actor, created by the runtime only.

    A ref stays valid across restarts (the new instance keeps the ref and the
    mailbox); once the actor has stopped, `tell` records a dead letter and
    `ask` fails at once. Refs compare and hash by identity.

    Attributes:
        path: where the actor lives in the tree, e.g. `/app/worker-1`.
        name: the last part of the path.
    """

    __slots__ = ("__weakref__", "_cell", "name", "path")

    def __init__(self, cell: Cell, path: str, name: str) -> None:
        self._cell = cell
        self.path = path
        self.name = name

    def __repr__(self) -> str:
        return f"<ActorRef {self.path}>"

    @property
    def is_alive(self) -> bool:
        """Whether the actor can still take messages (not stopping or stopped)."""
        return self._cell.accepting

    def tell(self, message: Any) -> None:
        """Enqueue a message and return at once (fire and forget).

        A message to a stopped actor, or one dropped by a full mailbox's
        policy, is recorded as a dead letter.

        Raises:
            MailboxFull: the mailbox is full and its policy is `fail` or `wait`
                (use `send` to wait for room).
        """
        sender = handling.get()
        if sender is None:
            self._cell.enqueue(Envelope(message, None, None, call_trace.get()))
        else:
            self._cell.enqueue(_from_actor(sender, message, None))

    async def send(self, message: Any) -> None:
        """Enqueue a message, waiting for room if the mailbox is full (backpressure).

        With a drop or fail policy this behaves like `tell`. If cancelled while
        waiting, the message is not queued.

        Raises:
            ActorStopped: the actor stopped before the message could be queued.
            MailboxFull: the mailbox is full and its policy is `fail`, or an actor
                sends to its own full mailbox (only its own handling makes room, so
                waiting would never end).
        """
        sender = handling.get()
        if sender is None:
            envelope = Envelope(message, None, None, call_trace.get())
        else:
            envelope = _from_actor(sender, message, None)
        await self._cell.enqueue_waiting(envelope)

    async def ask(self, message: Any, *, timeout: float = DEFAULT_ASK_TIMEOUT,
                  trace: TraceContext | None = None) -> Any:
        """Send a message and wait for the reply (`receive`'s return value).

        If the mailbox is full and its policy is `wait`, the ask first waits for room,
        within the same `timeout`.

        Args:
            message: the request.
            timeout: seconds to wait for room (if the mailbox is full) and the reply.
            trace: the trace context to send the message with, e.g. one continued
                from an incoming request (default: the current actor's, if any).

        Returns:
            What the actor's `receive` returned for this message.

        Raises:
            AskTimeout: no reply within `timeout`, naming the actor and message
                type. The message may still be processed later, unless the ask
                timed out waiting for room: then it was never queued.
            ActorStopped: the actor has stopped, or stopped before replying
                (raised at once, not after the timeout).
            MailboxFull: the mailbox is full and its policy is `fail`.
            Exception: whatever `receive` raised for this message.
        """
        if timeout != DEFAULT_ASK_TIMEOUT:
            check_timeout(timeout, f"ask {self.path}")
        cell = self._cell
        if not cell.accepting:
            raise ActorStopped(self.path, message, cell.stop_reason or "stopped", cell.stop_error)
        reply: asyncio.Future[Any] = cell.loop.create_future()
        sender = handling.get()
        if trace is not None:
            envelope = Envelope(message, None if sender is None else sender.ref, reply, trace)
        elif sender is None:
            envelope = Envelope(message, None, reply, call_trace.get())
        else:
            envelope = _from_actor(sender, message, reply)
        mailbox = cell.mailbox
        if mailbox.full and mailbox.overflow == "wait":  # rare: only this path pays for a timer
            waiting = self._ask_when_room(cell, envelope, reply, timeout)
            del envelope  # untracked by the GC: only the waiting coroutine holds it
            return await waiting
        cell.enqueue(envelope)
        del envelope  # the envelope is untracked by the GC: hold no reference to it here
        deadlines = cell.engine.deadlines
        slot = deadlines.add(reply, timeout, self.path, message)
        try:
            return await reply
        finally:
            deadlines.discard(slot, reply)

    async def _ask_when_room(self, cell: Cell, envelope: Envelope, reply: asyncio.Future[Any],
                             timeout: float) -> Any:
        """`ask` into a full `wait` mailbox: wait for room, then for the reply, within `timeout`.

        A timeout (or cancellation) while waiting for room leaves nothing queued.
        """
        message = envelope.message
        queued = False
        scope = asyncio.timeout(timeout)
        try:
            async with scope:
                await cell.enqueue_waiting(envelope)
                queued = True
                del envelope  # as in `ask`: hold no reference to the queued envelope
                return await reply
        except TimeoutError:
            if not scope.expired():
                raise  # a TimeoutError that `receive` raised, not ours
            raise AskTimeout(self.path, message, timeout, queued=queued) from None

    def statistics(self) -> dict[str, Any]:
        """A snapshot of the actor: path, state, restarts, children and mailbox depth."""
        return self._cell.statistics()

    async def stop(self) -> None:
        """Stop the actor and wait until it has stopped.

        Its children stop first (in reverse start order), then its `on_stop`
        runs within its shutdown timeout. Messages still queued become dead
        letters and pending asks fail with `ActorStopped`. Stopping an actor
        that has already stopped does nothing.

        Called by the actor itself while it handles a message, it is `ctx.stop()`:
        it returns at once and the actor exits normally after that message. Called
        by one of its descendants while that one handles a message, it starts the
        stop and returns at once without waiting (the actor stops its descendants
        first, so waiting would deadlock); the actor then stops with reason `normal`.
        """
        await self._cell.stop_requested()
