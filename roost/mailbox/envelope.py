"""The envelope: a message with its sender, reply future and trace context.

Envelopes are internal and passed by reference; nothing in them is serialized.
They are `msgspec.Struct`s with `gc=False`: a full mailbox of them costs the
garbage collector nothing. That is safe because an envelope is a leaf: nothing
it holds refers back to it (the cell clears `current` after each message).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from roost.trace import TraceContext, handling, new_span_id, new_trace_id


class Envelope(msgspec.Struct, gc=False):
    """One message in a mailbox.

    Attributes:
        message: the user's message object, by reference.
        sender: the ref of the actor that sent it, or None from outside any actor.
        reply: the future an `ask` waits on, or None for a `tell`.
        trace: the sender's trace context, or None until one is needed.
        crashes: how many times handling this message crashed its actor.
    """

    message: Any
    sender: Any = None
    reply: asyncio.Future[Any] | None = None
    trace: TraceContext | None = None
    crashes: int = 0
    outgoing: TraceContext | None = None

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
