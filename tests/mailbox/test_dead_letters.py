"""Tests of roost/mailbox/dead_letters.py: undelivered messages are counted, kept and inspectable."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import roost
from roost.errors import ConfigurationError
from roost.mailbox import DeadLetters


class Ping(roost.Message, frozen=True):
    n: int = 0


class Echo(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return message


class Relay(roost.Actor):
    """Tells whatever it is asked to send on to `target`."""

    def __init__(self, target: roost.ActorRef) -> None:
        self.target = target

    async def receive(self, message: Any) -> Any:
        self.target.tell(message)


# --- the record itself ------------------------------------------------------------------------


def test_a_recorded_dead_letter_keeps_who_why_and_what() -> None:
    dead = DeadLetters()
    error = ValueError("boom")

    letter = dead.record("poison", "/app/worker", Ping(1), "/app", error)

    assert (letter.reason, letter.recipient, letter.message, letter.sender, letter.error) == (
        "poison",
        "/app/worker",
        Ping(1),
        "/app",
        error,
    )
    assert letter.at > 0
    assert letter.crashes is None
    assert repr(letter) == (
        "DeadLetter(reason='poison', recipient='/app/worker', message=Ping, sender='/app')"
    )


def test_a_poison_dead_letter_carries_its_crash_count() -> None:
    letter = DeadLetters().record("poison", "/app/worker", Ping(1), None, ValueError("boom"),
                                  crashes=3)

    assert letter.crashes == 3


def test_dead_letters_are_counted_per_reason_and_listed_oldest_first() -> None:
    dead = DeadLetters()
    dead.record("actor_stopped", "/a", 1)
    dead.record("dropped_newest", "/b", 2)
    dead.record("actor_stopped", "/a", 3)

    assert dead.counts() == {"actor_stopped": 2, "dropped_newest": 1}
    assert len(dead) == 3
    assert [d.message for d in dead.recent()] == [1, 2, 3]
    assert [d.message for d in dead.recent("actor_stopped")] == [1, 3]
    assert dead.recent("poison") == []


def test_only_the_most_recent_are_kept_but_the_counts_stay_exact() -> None:
    dead = DeadLetters(keep=2)
    for n in range(5):
        dead.record("dropped_oldest", "/a", n)

    assert [d.message for d in dead.recent()] == [3, 4]
    assert dead.counts() == {"dropped_oldest": 5}
    assert len(dead) == 5


def test_a_negative_keep_is_refused_naming_the_value() -> None:
    with pytest.raises(ConfigurationError, match="keep must be >= 0, got -1"):
        DeadLetters(keep=-1)


# --- dead letters in a running system ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_tell_to_a_stopped_actor_becomes_a_dead_letter_naming_the_recipient(
    system: roost.ActorSystem,
) -> None:
    ref = system.spawn(Echo, name="echo")
    await ref.stop()

    ref.tell(Ping(7))

    assert system.dead_letters.counts() == {"actor_stopped": 1}
    [letter] = system.dead_letters.recent()
    assert (letter.reason, letter.recipient, letter.message, letter.sender) == (
        "actor_stopped",
        "/echo",
        Ping(7),
        None,
    )


@pytest.mark.anyio
async def test_a_dead_letter_from_an_actor_names_the_sender(system: roost.ActorSystem) -> None:
    target = system.spawn(Echo, name="target")
    await target.stop()
    relay = system.spawn(Relay, target, name="relay")

    await relay.ask(Ping(3))

    [letter] = system.dead_letters.recent("actor_stopped")
    assert (letter.recipient, letter.sender, letter.message) == ("/target", "/relay", Ping(3))


@pytest.mark.anyio
async def test_messages_queued_behind_a_stuck_actor_at_shutdown_become_dead_letters() -> None:
    holding = anyio.Event()

    class Stuck(roost.Actor):
        async def receive(self, message: Any) -> None:
            holding.set()
            await anyio.sleep_forever()

    async with roost.ActorSystem(log_format="json", log_level="warning") as system:
        # The shutdown waits this long for the stuck message, then cancels it.
        ref = system.spawn(Stuck, name="stuck", shutdown_timeout=0.05)
        ref.tell(Ping(0))
        await holding.wait()
        for n in range(1, 4):
            ref.tell(Ping(n))

    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [
        Ping(1),
        Ping(2),
        Ping(3),
    ]
    assert system.failure is None


class Slow(roost.Actor):
    async def receive(self, message: Any) -> Any:
        await anyio.sleep(0.2)
        return f"late answer to {message.n}"


@pytest.mark.anyio
async def test_a_reply_after_its_ask_timed_out_becomes_a_late_reply_dead_letter(
        system: roost.ActorSystem) -> None:
    slow = system.spawn(Slow, name="slow")

    with pytest.raises(roost.AskTimeout):
        await slow.ask(Ping(7), timeout=0.05)
    with anyio.fail_after(2):
        while not system.dead_letters.recent("late_reply"):  # noqa: ASYNC110
            await anyio.sleep(0.02)

    [letter] = system.dead_letters.recent("late_reply")
    assert (letter.recipient, letter.sender, letter.message) == (
        "(outside any actor)", "/slow", "late answer to 7")
    assert system.dead_letters.counts()["late_reply"] == 1
