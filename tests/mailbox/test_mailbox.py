"""Tests of roost/mailbox/mailbox.py: order, overflow policies, the system lane, waiting senders."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roost.errors import ConfigurationError, MailboxFull
from roost.mailbox import OVERFLOW_POLICIES, DeadLetters, Envelope, Mailbox

#: The dead-letter reason each policy gives a message it refuses or evicts.
REASON = {
    "wait": "mailbox_full",
    "fail": "mailbox_full",
    "drop_newest": "dropped_newest",
    "drop_oldest": "dropped_oldest",
}


def make(capacity: int = 4, overflow: Any = "wait") -> tuple[Mailbox, DeadLetters]:
    dead = DeadLetters()
    return Mailbox("/t", dead, capacity=capacity, overflow=overflow), dead


def fill(mailbox: Mailbox, *messages: Any) -> None:
    for message in messages:
        assert mailbox.put_nowait(Envelope(message)) is True


def take_all(mailbox: Mailbox) -> list[Any]:
    taken = []
    while (envelope := mailbox.get_nowait()) is not None:
        taken.append(envelope.message)
    return taken


# --- order and the system lane ----------------------------------------------------------------


def test_messages_come_out_in_the_order_they_went_in() -> None:
    mailbox, _ = make(capacity=10)
    fill(mailbox, *range(10))

    assert take_all(mailbox) == list(range(10))
    assert mailbox.get_nowait() is None


def test_a_system_message_is_taken_before_the_user_messages_queued_ahead_of_it() -> None:
    mailbox, _ = make()
    fill(mailbox, "user-1", "user-2")
    mailbox.put_system("stop")
    mailbox.put_system("watch")

    assert mailbox.has_system
    # The consumer serves the system lane first, whatever arrived earlier.
    assert mailbox.get_system() == "stop"
    assert mailbox.get_system() == "watch"
    assert mailbox.get_system() is None
    assert not mailbox.has_system
    assert take_all(mailbox) == ["user-1", "user-2"]


def test_system_messages_do_not_count_against_the_capacity() -> None:
    mailbox, dead = make(capacity=1, overflow="fail")
    fill(mailbox, "user")
    for n in range(5):
        mailbox.put_system(n)

    assert [mailbox.get_system() for _ in range(5)] == list(range(5))
    assert len(dead) == 0


def test_a_message_pushed_back_to_the_front_is_taken_next() -> None:
    mailbox, _ = make(capacity=2)
    fill(mailbox, "a", "b")
    crashed = mailbox.get_nowait()
    assert crashed is not None

    mailbox.push_front(crashed)

    assert take_all(mailbox) == ["a", "b"]


# --- overflow policies ------------------------------------------------------------------------


def test_drop_newest_refuses_the_new_message_and_records_it_as_a_dead_letter() -> None:
    mailbox, dead = make(capacity=2, overflow="drop_newest")
    fill(mailbox, 1, 2)

    assert mailbox.put_nowait(Envelope(3)) is False

    assert take_all(mailbox) == [1, 2]
    [letter] = dead.recent()
    assert (letter.reason, letter.recipient, letter.message) == ("dropped_newest", "/t", 3)
    assert dead.counts() == {"dropped_newest": 1}


def test_drop_oldest_evicts_the_oldest_message_and_records_it_as_a_dead_letter() -> None:
    mailbox, dead = make(capacity=2, overflow="drop_oldest")
    fill(mailbox, 1, 2, 3, 4)

    assert take_all(mailbox) == [3, 4]
    assert [(d.reason, d.message) for d in dead.recent()] == [
        ("dropped_oldest", 1),
        ("dropped_oldest", 2),
    ]


def test_fail_raises_mailbox_full_naming_the_owner_and_capacity_and_records_the_message() -> None:
    mailbox, dead = make(capacity=2, overflow="fail")
    fill(mailbox, 1, 2)

    with pytest.raises(MailboxFull, match=r"/t: mailbox full \(capacity=2\), refused int") as caught:
        mailbox.put_nowait(Envelope(3))

    assert (caught.value.actor, caught.value.capacity, caught.value.message) == ("/t", 2, 3)
    assert take_all(mailbox) == [1, 2]
    assert [(d.reason, d.message) for d in dead.recent()] == [("mailbox_full", 3)]


def test_put_nowait_on_a_full_wait_mailbox_raises_mailbox_full() -> None:
    mailbox, dead = make(capacity=1, overflow="wait")
    fill(mailbox, 1)

    with pytest.raises(MailboxFull, match="capacity=1"):
        mailbox.put_nowait(Envelope(2))

    assert dead.counts() == {"mailbox_full": 1}


@pytest.mark.parametrize("capacity", [0, -1, 2.5, True, "4"])
def test_a_capacity_that_is_not_a_positive_whole_number_is_refused(capacity: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"/t: mailbox capacity .* got {capacity!r}"):
        Mailbox("/t", DeadLetters(), capacity=capacity)


def test_an_unknown_overflow_policy_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown overflow policy 'bogus'; use one of wait"):
        Mailbox("/t", DeadLetters(), overflow="bogus")  # type: ignore[arg-type]


def test_statistics_report_depth_capacity_and_queued_system_messages() -> None:
    mailbox, _ = make(capacity=3)
    fill(mailbox, 1, 2)
    mailbox.put_system("stop")

    assert mailbox.statistics() == {"depth": 2, "capacity": 3, "waiting_senders": 0, "system": 1}


# --- the property: nothing reordered, nothing over capacity, nothing lost ---------------------

SENDERS = 3
operations = st.lists(
    st.one_of(st.integers(0, SENDERS - 1).map(lambda sender: ("put", sender)), st.just(("get", -1))),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 5), overflow=st.sampled_from(OVERFLOW_POLICIES), ops=operations)
def test_any_interleaving_keeps_per_sender_order_and_capacity_and_accounts_for_every_message(
    capacity: int, overflow: Any, ops: list[tuple[str, int]]
) -> None:
    mailbox, dead = make(capacity=capacity, overflow=overflow)
    numbers: Counter[int] = Counter()
    sent: list[tuple[int, int]] = []
    delivered: list[tuple[int, int]] = []

    for op, sender in ops:
        if op == "put":
            message = (sender, numbers[sender])
            numbers[sender] += 1
            sent.append(message)
            try:
                mailbox.put_nowait(Envelope(message))
            except MailboxFull as error:
                assert overflow in ("wait", "fail")
                assert error.capacity == capacity
        else:
            envelope = mailbox.get_nowait()
            if envelope is not None:
                delivered.append(envelope.message)
        assert len(mailbox) <= capacity

    queued = take_all(mailbox)
    dropped = [letter.message for letter in dead.recent()]

    # Each sender's messages arrive in the order it sent them (in fact, in global send order).
    for sender in range(SENDERS):
        numbers_seen = [n for s, n in delivered + queued if s == sender]
        assert numbers_seen == sorted(numbers_seen)
    position = {message: i for i, message in enumerate(sent)}
    kept = [position[m] for m in delivered + queued]
    assert kept == sorted(kept)
    # Every message is delivered, still queued, or a dead letter, and exactly one of those.
    assert Counter(delivered + queued + dropped) == Counter(sent)
    assert {letter.reason for letter in dead.recent()} <= {REASON[overflow]}
    assert len(dead) == len(dropped)


# --- waiting senders (policy `wait`) ----------------------------------------------------------


async def put_all(mailbox: Mailbox, *names: str) -> list[asyncio.Task[bool]]:
    """Start one waiting `put` per name, in order, and return once all of them wait."""
    tasks = [asyncio.create_task(mailbox.put(Envelope(name))) for name in names]
    await anyio.wait_all_tasks_blocked()
    assert mailbox.statistics()["waiting_senders"] == len(names)
    return tasks


@pytest.mark.anyio
async def test_put_queues_at_once_while_there_is_room() -> None:
    mailbox, _ = make(capacity=2)

    assert await mailbox.put(Envelope("a")) is True
    assert await mailbox.put(Envelope("b")) is True

    assert take_all(mailbox) == ["a", "b"]


@pytest.mark.anyio
async def test_waiting_senders_are_served_in_the_order_they_started_waiting() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    tasks = await put_all(mailbox, "first", "second", "third")

    taken = []
    for _ in range(4):
        envelope = mailbox.get_nowait()
        assert envelope is not None
        taken.append(envelope.message)
        await anyio.wait_all_tasks_blocked()  # the woken sender queues its message

    assert taken == ["queued", "first", "second", "third"]
    assert [task.result() for task in tasks] == [True, True, True]


@pytest.mark.anyio
async def test_a_put_nowait_cannot_jump_ahead_of_waiting_senders() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    [waiting] = await put_all(mailbox, "waiting")

    assert mailbox.get_nowait() is not None  # the freed slot is promised to the waiting sender
    with pytest.raises(MailboxFull, match="capacity=1"):
        mailbox.put_nowait(Envelope("jumper"))
    await waiting

    assert take_all(mailbox) == ["waiting"]


@pytest.mark.anyio
async def test_full_holds_while_no_slot_is_free_or_a_freed_slot_is_promised_to_a_waiting_sender(
) -> None:
    mailbox, _ = make(capacity=2)
    assert not mailbox.full
    fill(mailbox, "a", "b")
    assert mailbox.full
    [waiting] = await put_all(mailbox, "c")

    assert mailbox.get_nowait() is not None
    assert mailbox.full  # one message queued, but the free slot is the waiting sender's
    await waiting
    assert mailbox.get_nowait() is not None

    assert not mailbox.full


@pytest.mark.anyio
async def test_a_sender_cancelled_while_waiting_gives_up_its_place_to_the_next() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    first, second = await put_all(mailbox, "first", "second")

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert mailbox.get_nowait() is not None
    with anyio.fail_after(5):
        await second

    assert take_all(mailbox) == ["second"]
    assert mailbox.statistics()["waiting_senders"] == 0


@pytest.mark.anyio
async def test_a_sender_cancelled_after_being_woken_hands_its_slot_to_the_next() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    first, second = await put_all(mailbox, "first", "second")

    assert mailbox.get_nowait() is not None  # wakes `first`, which has not run yet
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    with anyio.fail_after(5):
        await second

    assert take_all(mailbox) == ["second"]


@pytest.mark.anyio
async def test_a_slot_given_up_by_a_cancelled_sender_is_not_lost_when_nobody_else_waits() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    [woken] = await put_all(mailbox, "woken")

    assert mailbox.get_nowait() is not None
    woken.cancel()
    with pytest.raises(asyncio.CancelledError):
        await woken

    assert mailbox.put_nowait(Envelope("later")) is True
    assert take_all(mailbox) == ["later"]


@pytest.mark.anyio
async def test_released_waiters_fail_with_the_error_and_leave_the_capacity_as_it_was() -> None:
    mailbox, _ = make(capacity=1)
    fill(mailbox, "queued")
    tasks = await put_all(mailbox, "first", "second")

    mailbox.release_waiters(LookupError("closed"))

    for task in tasks:
        with pytest.raises(LookupError, match="closed"):
            await task
    assert take_all(mailbox) == ["queued"]
    # Still exactly one slot: released senders must not leave extra room behind.
    fill(mailbox, "again")
    with pytest.raises(MailboxFull, match="capacity=1"):
        mailbox.put_nowait(Envelope("over"))


@pytest.mark.anyio
@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest", "fail"])
async def test_put_with_a_policy_other_than_wait_never_waits(overflow: Any) -> None:
    mailbox, dead = make(capacity=1, overflow=overflow)
    fill(mailbox, "queued")

    with anyio.fail_after(5):
        try:
            await mailbox.put(Envelope("new"))
        except MailboxFull:
            assert overflow == "fail"

    assert len(dead) == 1
    assert dead.recent()[0].reason == REASON[overflow]
