"""`Actor`, the one class meant for subclassing, and `Message`, the base for message types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    from roost.actors.context import ActorContext
    from roost.storage import Checkpoint
else:
    def dataclass_transform(**_: Any) -> Any:
        """Only type checkers read it (typing has it from Python 3.12 on)."""
        return lambda cls: cls


# Subclasses inherit `frozen=True` at run time; this tells type checkers so, letting
# `class Greet(roost.Message): name: str` check cleanly (PEP 681's frozen_default).
@dataclass_transform(frozen_default=True, field_specifiers=(msgspec.field,))
class Message(msgspec.Struct, frozen=True):
    """Base for message types: a frozen `msgspec.Struct`, passed by reference in-process.

    Any object can be a message; subclassing this makes it immutable and ready
    for the storage and wire codecs.
    """


class Actor:
    """An actor: private state, handling one message at a time.

    Subclass it and implement `receive`; its return value answers an `ask`.
    The runtime creates instances (never call the class yourself) and gives each
    one `self.ctx` before `__init__` runs. `on_start` runs before the first
    message, `on_stop` when the actor stops. Example::

        class Counter(roost.Actor):
            def __init__(self, start: int = 0) -> None:
                self.count = start

            async def receive(self, message):
                match message:
                    case Increment(by=by):
                        self.count += by
                    case GetCount():
                        return self.count

        counter = system.spawn(Counter, 10, name="counter")
        counter.tell(Increment(by=2))
        assert await counter.ask(GetCount()) == 12

    An exception raised by `receive` while answering an `ask` is raised to the
    asker; raised while handling a `tell`, it is a failure of the actor, which
    its supervisor handles (by default: restart it with a fresh instance, same
    ref and mailbox).

    A checkpointed actor sets `state_type` to a `msgspec.Struct`, keeps its
    state in `self.state`, and calls `await self.checkpoint(step=...)`; on every
    start it is hydrated from its latest checkpoint before `on_start`.
    """

    ctx: ActorContext
    #: A checkpointed actor's state: an instance of `state_type`.
    state: Any
    #: How long `on_stop` may take before it is cancelled, in seconds (spawn can override).
    shutdown_timeout: ClassVar[float] = 5.0
    #: The state's type for a checkpointed actor (a msgspec.Struct), else None.
    state_type: ClassVar[type[msgspec.Struct] | None] = None
    #: Start from the `__init__` state when the latest checkpoint does not decode,
    #: instead of failing the start with `CheckpointCorrupt`.
    fresh_on_corrupt_checkpoint: ClassVar[bool] = False

    async def on_start(self) -> None:
        """Called once per instance, before the first message (after a restart too)."""

    async def receive(self, message: Any) -> Any:
        """Handle one message; the return value is the reply to an `ask`."""
        raise NotImplementedError(f"{type(self).__name__} must implement receive(message)")

    async def on_stop(self) -> None:
        """Called when the actor stops or before it is replaced by a restart."""

    async def checkpoint(self, *, step: str, durable: bool | None = None) -> Checkpoint:
        """Save `self.state` to the store and wait until it is stored.

        Args:
            step: what the actor has just completed, recorded with the checkpoint.
            durable: wait for fsync (True) or not (False); None uses the
                system's durability mode.

        Returns:
            The stored checkpoint (with its sequence number).

        Raises:
            ConfigurationError: no `state_type`, `self.state` of the wrong type,
                or a system without a store.
            StoreError: the write failed; nothing was saved.
        """
        from roost.actors.checkpointed import save

        return await save(self, step, durable)
