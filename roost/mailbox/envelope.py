"""The envelope: a message with its sender, reply future and trace context.

Envelopes are internal and passed by reference; nothing in them is serialized.
They are `msgspec.Struct`s with `gc=False`: a full mailbox of them costs the
garbage collector nothing. That is safe because an envelope is a leaf: nothing
it holds refers back to it (the cell clears `current` after each message).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from typing import Any

import msgspec

from roost.trace import TraceContext, handling, new_span_id, new_trace_id

# Message ids are stored inside derived idempotency keys, so they must never repeat,
# not even across processes: a random per-process prefix and a counter give that
# without a syscall per id. A forked child takes a prefix of its own.
_id_prefix = os.urandom(8).hex()
_id_counter = itertools.count(1)


def _new_process() -> None:
    global _id_prefix, _id_counter
    _id_prefix = os.urandom(8).hex()
    _id_counter = itertools.count(1)


os.register_at_fork(after_in_child=_new_process)


def new_message_id() -> str:
    """A message id unique across processes: 16 hex digits of this process, a counter."""
    return f"{_id_prefix}-{next(_id_counter)}"


class _Unit:
    """A message's id, and how many tool calls its handling made since its last crash."""

    __slots__ = ("calls", "crashes", "forwards", "id")

    def __init__(self, message_id: str) -> None:
        self.id = message_id
        self.calls = 0
        self.forwards = 0
        self.crashes = 0  # the envelope's `crashes` when `calls` and `forwards` started from 0


class Envelope(msgspec.Struct, gc=False):
    """One message in a mailbox.

    Attributes:
        message: the user's message object, by reference.
        sender: the ref of the actor that sent it, or None from outside any actor.
        reply: the future an `ask` waits on, or None for a `tell`.
        trace: the sender's trace context, or None until one is needed.
        crashes: how many times handling this message crashed its actor.
        outgoing: the context of messages sent while handling it (see `trace_context`).
        unit: the message's id and the numbering of the tool calls made while
            handling it, made on first use (see `message_id` and `next_call`):
            one field, not three, since every tell builds an envelope.
        forced: a runtime event queued past the capacity (`Mailbox.put_forced`), which
            an overflow policy must never evict.
    """

    message: Any
    sender: Any = None
    reply: asyncio.Future[Any] | None = None
    trace: TraceContext | None = None
    crashes: int = 0
    outgoing: TraceContext | None = None
    unit: _Unit | None = None
    forced: bool = False

    def message_id(self) -> str:
        """This message's id, unique across processes; a redelivery after a crash keeps it.

        The id is made when first asked for, not when the message is sent, so
        sending costs nothing extra; it is kept on the envelope, which a crash
        redelivers as it is, and `forwarded` passes it on.
        """
        unit = self.unit
        if unit is None:
            unit = self.unit = _Unit(new_message_id())
        return unit.id

    def next_call(self) -> int:
        """Number the next tool call made while handling this message: 0, 1, 2, ...

        Each redelivery after a crash numbers its calls from 0 again, as the
        first handling did, so the same calls get the same numbers.
        """
        unit = self._counted_unit()
        number = unit.calls
        unit.calls = number + 1
        return number

    def _counted_unit(self) -> _Unit:
        """The unit, its counts started over if the message crashed its actor since."""
        unit = self.unit
        if unit is None:
            unit = self.unit = _Unit(new_message_id())
        if unit.crashes != self.crashes:
            unit.crashes = self.crashes
            unit.calls = 0
            unit.forwards = 0
        return unit

    def forwarded(self) -> Envelope:
        """A copy that hands this message on to another actor (`ctx.forward`).

        It keeps the message, its sender, reply and id, and is sent from this
        handling's span; a run's request for a step (`TraceContext.step`) stays one.
        """
        trace = self.trace_context()
        incoming = self.trace
        if incoming is not None and incoming.step is not None:
            trace = TraceContext(trace.trace_id, trace.span_id, trace.run_id, incoming.step)
        # The forwarded message is a unit of work of its own (its calls must not share keys
        # with the calls made here), numbered so that a redelivery forwards the same ids.
        unit = self._counted_unit()
        number = unit.forwards
        unit.forwards = number + 1
        return Envelope(self.message, self.sender, self.reply, trace,
                        unit=_Unit(f"{unit.id}>{number}"))


    def trace_context(self) -> TraceContext:
        """The context that messages sent while handling this one carry (created once, lazily).

        Its span id is this handling's own span, so receivers record it as their parent.
        """
        outgoing = self.outgoing
        if outgoing is None:
            incoming = self.trace
            if incoming is None:
                outgoing = TraceContext(new_trace_id(), new_span_id(), None)
            else:
                outgoing = TraceContext(incoming.trace_id, new_span_id(), incoming.run_id)
            self.outgoing = outgoing
        return outgoing


def current_envelope() -> Envelope | None:
    """The envelope the running actor is handling, or None outside any actor."""
    cell = handling.get()
    return None if cell is None else cell.current
