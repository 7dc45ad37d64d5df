"""A bounded mailbox with an overflow policy and a priority lane for system messages.

The hot path is `put_nowait` → `get_nowait`: deque operations, no locks, no
serialization. Waking the consumer is the owner's job (the actor cell schedules
itself when mail arrives), so the mailbox stays a plain data structure.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Literal

from roost.errors import ConfigurationError, MailboxFull
from roost.mailbox.dead_letters import DeadLetters
from roost.mailbox.envelope import Envelope

Overflow = Literal["wait", "drop_newest", "drop_oldest", "fail"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("wait", "drop_newest", "drop_oldest", "fail")

#: The default capacity: large enough for bursts, small enough to surface a stuck consumer.
DEFAULT_CAPACITY = 1000


def validate_mailbox(owner: str, capacity: int, overflow: str) -> None:
    """Raise `ConfigurationError` naming the actor and the bad value."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ConfigurationError(
            f"{owner}: mailbox capacity must be a whole number >= 1, got {capacity!r}"
        )
    if overflow not in OVERFLOW_POLICIES:
        raise ConfigurationError(
            f"{owner}: unknown overflow policy {overflow!r}; use one of "
            f"{', '.join(OVERFLOW_POLICIES)}"
        )


class Mailbox:
    """A bounded FIFO of user envelopes plus an unbounded lane served first for system messages.

    Args:
        owner: the owning actor's path, named in errors and dead letters.
        dead_letters: where dropped and refused messages are recorded.
        capacity: the most user messages held at once.
        overflow: what a put does when the mailbox is full: `wait` (refuse a
            `put_nowait` with `MailboxFull`, make `put` wait for room; an `ask`
            waits too),
            `drop_newest` (drop the new message), `drop_oldest` (evict the
            oldest queued message), `fail` (raise `MailboxFull`).
    """

    __slots__ = ("_putters", "_reserved", "_system", "_user", "_wakers", "capacity", "dead_letters",
                 "overflow", "owner")

    def __init__(
        self,
        owner: str,
        dead_letters: DeadLetters,
        *,
        capacity: int = DEFAULT_CAPACITY,
        overflow: Overflow = "wait",
    ) -> None:
        validate_mailbox(owner, capacity, overflow)
        self.owner = owner
        self.dead_letters = dead_letters
        self.capacity = capacity
        self.overflow = overflow
        self._user: deque[Envelope] = deque()
        # Created on first use: most actors never get a system message or a waiting sender.
        self._system: deque[Any] | None = None
        self._putters: deque[asyncio.Future[None]] | None = None
        self._reserved = 0  # slots promised to woken senders that have not run yet
        self._wakers: list[asyncio.Future[None]] | None = None  # see `wake_on_change`

    def __len__(self) -> int:
        return len(self._user)

    @property
    def user_lane(self) -> deque[Envelope]:
        """The queue of user messages itself, for the consumer's emptiness check."""
        return self._user

    @property
    def has_system(self) -> bool:
        """Whether a system message is waiting."""
        return bool(self._system)

    @property
    def full(self) -> bool:
        """Whether a user message put now would overflow (no free slot, or senders wait for one)."""
        return len(self._user) + self._reserved >= self.capacity or bool(self._putters)

    def put_nowait(self, envelope: Envelope) -> bool:
        """Enqueue a user message, applying the overflow policy when full.

        Returns:
            True if the message was queued, False if it was dropped (and recorded
            as a dead letter).

        Raises:
            MailboxFull: the mailbox is full and its policy is `fail` or `wait`.
        """
        user = self._user
        if len(user) + self._reserved < self.capacity and not self._putters:
            user.append(envelope)
            return True
        return self._overflow(envelope)

    def _overflow(self, envelope: Envelope) -> bool:
        policy = self.overflow
        if policy == "drop_oldest":
            user = self._user
            # A runtime event (`put_forced`, e.g. `Terminated`) is never evicted.
            oldest = next((i for i, queued in enumerate(user) if not queued.forced), None)
            if oldest is None:  # nothing but runtime events queued: the new message goes
                self._drop(envelope, "dropped_newest")
                return False
            evicted = user[oldest]
            del user[oldest]
            self._drop(evicted, "dropped_oldest")
            user.append(envelope)
            return True
        if policy == "drop_newest":
            self._drop(envelope, "dropped_newest")
            return False
        self._drop(envelope, "mailbox_full")
        raise MailboxFull(self.owner, self.capacity, envelope.message)

    def _drop(self, envelope: Envelope, reason: str) -> None:
        """Record a refused or evicted message; an evicted or dropped ask fails at once."""
        sender = envelope.sender.path if envelope.sender is not None else None
        self.dead_letters.record(reason, self.owner, envelope.message, sender)
        reply = envelope.reply
        if reply is not None and not reply.done() and reason != "mailbox_full":
            # mailbox_full is raised to the sender itself; a dropped ask must not hang.
            reply.set_exception(MailboxFull(self.owner, self.capacity, envelope.message))

    async def put(self, envelope: Envelope) -> bool:
        """Enqueue a user message, waiting for room when the policy is `wait`.

        Other policies behave as in `put_nowait`. Waiting senders are served in
        the order they started waiting: a slot freed by the consumer is reserved
        for the first of them, so a `tell` cannot jump the queue. If cancelled
        while waiting, the message is not queued.
        """
        if self.overflow != "wait":
            return self.put_nowait(envelope)
        if len(self._user) + self._reserved < self.capacity and not self._putters:
            self._user.append(envelope)
            return True
        if self._putters is None:
            self._putters = deque()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._putters.append(waiter)
        try:
            await waiter
        except BaseException:
            if not waiter.done() or waiter.cancelled():
                # A cancelled waiter may already be gone: a consumer that freed a slot or
                # the actor's stop took it off the queue (and gave it no slot) meanwhile.
                if waiter in self._putters:
                    self._putters.remove(waiter)
            elif waiter.exception() is None:
                # Woken, then cancelled before using the slot: hand it to the next sender.
                self._reserved -= 1
                self._wake_putter()
            raise
        self._reserved -= 1
        self._user.append(envelope)
        return True

    def put_system(self, message: Any) -> None:
        """Enqueue a system message; it is served before every user message."""
        if self._system is None:
            self._system = deque()
        self._system.append(message)
        if self._wakers:
            self._wake()

    def push_front(self, envelope: Envelope) -> None:
        """Put a message back at the head (redelivery after a crash); ignores capacity."""
        self._user.appendleft(envelope)

    def put_forced(self, envelope: Envelope) -> None:
        """Queue a message that must not be refused (e.g. `Terminated`), ignoring capacity;
        `drop_oldest` never evicts it."""
        envelope.forced = True
        self._user.append(envelope)

    def get_system(self) -> Any | None:
        """Take the next system message, or None."""
        system = self._system
        return system.popleft() if system else None

    def get_nowait(self) -> Envelope | None:
        """Take the next user message, or None; wakes one waiting sender if room appeared."""
        user = self._user
        if not user:
            return None
        envelope = user.popleft()
        if self._putters:
            self._wake_putter()
        if self._wakers:
            self._wake()
        return envelope

    def withdraw(self, message: object) -> Envelope | None:
        """Take the queued user message that is `message` (by identity) out of the queue, or
        None if it is not queued; wakes one waiting sender as the room appears."""
        for index, envelope in enumerate(self._user):
            if envelope.message is message:
                del self._user[index]  # by position: `remove` would compare messages with ==
                if self._putters:
                    self._wake_putter()
                if self._wakers:
                    self._wake()
                return envelope
        return None

    def _wake_putter(self) -> None:
        putters = self._putters
        while putters and len(self._user) + self._reserved < self.capacity:
            waiter = putters.popleft()
            if not waiter.done():
                self._reserved += 1
                waiter.set_result(None)

    def drain(self) -> list[Envelope]:
        """Remove and return every queued user message (used when the actor stops)."""
        envelopes = list(self._user)
        self._user.clear()
        if self._wakers:
            self._wake()
        return envelopes

    def release_waiters(self, error: BaseException) -> None:
        """Fail every waiting sender with `error` (the actor stopped)."""
        putters = self._putters
        while putters:
            waiter = putters.popleft()
            if not waiter.done():
                waiter.set_exception(error)
        if self._wakers:
            self._wake()

    def wake_on_change(self, waker: asyncio.Future[None]) -> None:
        """Resolve `waker` the next time a user slot frees, a system message arrives or the
        senders are released (the actor stopped): for a router that waits on several
        mailboxes at once. Call `forget_waker` once done waiting."""
        if self._wakers is None:
            self._wakers = []
        self._wakers.append(waker)

    def forget_waker(self, waker: asyncio.Future[None]) -> None:
        """Stop resolving `waker` (it may already be resolved and forgotten)."""
        wakers = self._wakers
        if wakers is not None and waker in wakers:
            wakers.remove(waker)

    def _wake(self) -> None:
        wakers, self._wakers = self._wakers, None
        for waker in wakers or ():
            if not waker.done():
                waker.set_result(None)

    def statistics(self) -> dict[str, int]:
        """Queue depth, capacity, waiting senders and queued system messages."""
        return {
            "depth": len(self._user),
            "capacity": self.capacity,
            "waiting_senders": len(self._putters or ()),
            "system": len(self._system or ()),
        }
