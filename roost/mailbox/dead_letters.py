"""Dead letters: every message that could not be delivered or was dropped, counted and kept.

Nothing is lost silently: each dead letter is counted per reason, logged, and the
most recent ones are kept for inspection (`system.dead_letters.recent()`).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from roost._logging import get_logger
from roost.errors import ConfigurationError

#: Why a message became a dead letter.
REASONS = (
    "actor_stopped",  # sent to, or still queued in, an actor that stopped
    "dropped_newest",  # refused by a full mailbox with policy drop_newest
    "dropped_oldest",  # evicted from a full mailbox with policy drop_oldest
    "mailbox_full",  # refused by a full mailbox with policy fail (the sender got MailboxFull)
    "poison",  # crashed its actor `poison_after` times (it was handled that many times)
    "unhandled",  # a runtime actor (e.g. the tool proxy) does not take this kind of message
    "late_reply",  # a reply whose asker had stopped waiting (timed out or cancelled); the
    # recipient is the asker, the sender the actor that replied
)

_log = get_logger("roost.dead_letters")


class DeadLetter:
    """One undelivered message: why, to whom, from whom, when, and the message itself.

    Attributes:
        reason: one of `REASONS`.
        recipient: the path of the actor it was meant for.
        message: the message itself.
        sender: the sending actor's path, or None from outside any actor.
        error: the exception behind it (for `poison`: the last crash), or None.
        crashes: for `poison`: how many times the message crashed its actor; else None.
        at: when it was recorded (wall-clock seconds).
    """

    __slots__ = ("at", "crashes", "error", "message", "reason", "recipient", "sender")

    def __init__(
        self,
        reason: str,
        recipient: str,
        message: Any,
        sender: str | None,
        error: BaseException | None = None,
        crashes: int | None = None,
    ) -> None:
        self.reason = reason
        self.recipient = recipient
        self.message = message
        self.sender = sender
        self.error = error
        self.crashes = crashes
        self.at = time.time()

    def __repr__(self) -> str:
        return (
            f"DeadLetter(reason={self.reason!r}, recipient={self.recipient!r}, "
            f"message={type(self.message).__name__}, sender={self.sender!r})"
        )


class DeadLetters:
    """The system's record of undelivered messages.

    Args:
        keep: how many of the most recent dead letters to keep for inspection;
            the counts are exact whatever this is.
    """

    def __init__(self, *, keep: int = 1000) -> None:
        if keep < 0:
            raise ConfigurationError(f"dead letters: keep must be >= 0, got {keep!r}")
        self._recent: deque[DeadLetter] = deque(maxlen=keep)
        self._counts: Counter[str] = Counter()

    def record(
        self,
        reason: str,
        recipient: str,
        message: Any,
        sender: str | None = None,
        error: BaseException | None = None,
        crashes: int | None = None,
    ) -> DeadLetter:
        """Count, log and keep one dead letter (`crashes`: a poison message's crash count)."""
        letter = DeadLetter(reason, recipient, message, sender, error, crashes)
        self._counts[reason] += 1
        self._recent.append(letter)
        _log.info(
            "dead_letter_recorded",
            reason=reason,
            recipient=recipient,
            message_type=type(message).__name__,
            sender=sender,
            error=None if error is None else f"{type(error).__name__}: {error}",
            crashes=crashes,
        )
        return letter

    def recent(self, reason: str | None = None) -> list[DeadLetter]:
        """The kept dead letters, oldest first, optionally only those with one reason."""
        return [d for d in self._recent if reason is None or d.reason == reason]

    def counts(self) -> dict[str, int]:
        """How many dead letters there have been, per reason."""
        return dict(self._counts)

    def __len__(self) -> int:
        return sum(self._counts.values())
