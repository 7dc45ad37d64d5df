"""Mailboxes: envelopes, bounded queues with overflow policies, a system lane, dead letters."""

from roost.mailbox.dead_letters import DeadLetter, DeadLetters
from roost.mailbox.envelope import Envelope
from roost.mailbox.mailbox import DEFAULT_CAPACITY, OVERFLOW_POLICIES, Mailbox, Overflow

__all__ = [
    "DEFAULT_CAPACITY",
    "OVERFLOW_POLICIES",
    "DeadLetter",
    "DeadLetters",
    "Envelope",
    "Mailbox",
    "Overflow",
]
