"""Tests of roost/actors/ref.py: tell, send (backpressure), ask (timeouts, failures) and stop."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

import roost
from roost.errors import ConfigurationError


class Ping(roost.Message, frozen=True):
    n: int = 0


class Go(roost.Message, frozen=True):
    """Tell `target` the numbers 0..count-1, yielding between them."""

    target: Any
    count: int


class Echo(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return message


class Recorder(roost.Actor):
    """Records each message (after waiting at `gate`, if given) with its sender.

    Sets `holding` when it starts on its first message and `done` after `expected` messages.
    """

    def __init__(
        self,
        received: list[Any],
        *,
        gate: anyio.Event | None = None,
        holding: anyio.Event | None = None,
        done: anyio.Event | None = None,
        expected: int = 0,
    ) -> None:
        self.received = received
        self.gate = gate
        self.holding = holding
        self.done = done
        self.expected = expected

    async def receive(self, message: Any) -> Any:
        if self.holding is not None:
            self.holding.set()
        if self.gate is not None:
            await self.gate.wait()
        sender = self.ctx.sender
        self.received.append(message if sender is None else (sender.name, message))
        if self.done is not None and len(self.received) == self.expected:
            self.done.set()
        return message


class Producer(roost.Actor):
    async def receive(self, message: Any) -> None:
        match message:
            case Go(target=target, count=count):
                for n in range(count):
                    target.tell(n)
                    await anyio.lowlevel.checkpoint()  # let the other producers interleave


@pytest.fixture
async def gate() -> AsyncIterator[anyio.Event]:
    """Holds a `Recorder` at each message until set; set at teardown whatever the test did."""
    event = anyio.Event()
    yield event
    event.set()  # before the system's teardown, so the shutdown need not kill a held actor


@pytest.fixture
def holding() -> anyio.Event:
    return anyio.Event()


async def outcome(awaitable: Any) -> Any:
    """The awaitable's result, or the exception it raised."""
    try:
        return await awaitable
    except Exception as error:
        return error


# --- tell and order ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_each_senders_messages_arrive_in_the_order_it_sent_them(
    system: roost.ActorSystem,
) -> None:
    received: list[Any] = []
    done = anyio.Event()
    senders, count = 3, 50
    collector = system.spawn(Recorder, received, done=done, expected=senders * count, name="collector")
    producers = [system.spawn(Producer, name=f"producer-{i}") for i in range(senders)]

    for producer in producers:
        producer.tell(Go(collector, count))
    await done.wait()

    for producer in producers:
        assert [n for name, n in received if name == producer.name] == list(range(count))
    # The senders really did interleave: the first messages come from more than one of them.
    assert len({name for name, _ in received[:senders]}) > 1


@pytest.mark.anyio
async def test_tell_returns_before_the_message_is_handled(system: roost.ActorSystem) -> None:
    received: list[Any] = []
    done = anyio.Event()
    ref = system.spawn(Recorder, received, done=done, expected=2, name="recorder")

    ref.tell("a")
    ref.tell("b")
    assert received == []

    await done.wait()
    assert received == ["a", "b"]


# --- send: backpressure -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_send_holds_a_fast_sender_while_the_actor_is_slow_and_loses_nothing(
    system: roost.ActorSystem, gate: anyio.Event
) -> None:
    received: list[Any] = []
    done = anyio.Event()
    total = 30
    ref = system.spawn(Recorder, received, gate=gate, done=done, expected=total, name="slow", capacity=4)
    sent: list[int] = []

    async def produce() -> None:
        for n in range(total):
            await ref.send(n)
            sent.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await anyio.wait_all_tasks_blocked()
        # The actor holds 0 at the gate and its mailbox holds 1-4: the sender waits with 5.
        assert sent == [0, 1, 2, 3, 4]
        assert received == []
        gate.set()
    await done.wait()

    assert sent == list(range(total))
    assert received == list(range(total))
    assert len(system.dead_letters) == 0


@pytest.mark.anyio
async def test_tell_on_a_full_wait_mailbox_raises_mailbox_full(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="full", capacity=4)
    ref.tell(0)
    await holding.wait()
    for n in range(1, 5):
        ref.tell(n)

    with pytest.raises(roost.MailboxFull, match=r"/full: mailbox full \(capacity=4\)"):
        ref.tell(5)
    with pytest.raises(roost.MailboxFull, match="capacity=4"):
        ref.tell(6)

    gate.set()
    assert system.dead_letters.counts() == {"mailbox_full": 2}


@pytest.mark.anyio
async def test_send_to_a_stopped_actor_raises_actor_stopped(system: roost.ActorSystem) -> None:
    ref = system.spawn(Echo, name="gone")
    await ref.stop()

    with pytest.raises(roost.ActorStopped, match="/gone: actor has stopped"):
        await ref.send(Ping())

    assert system.dead_letters.counts() == {"actor_stopped": 1}


@pytest.mark.anyio
async def test_a_sender_waiting_for_room_fails_when_the_actor_stops(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="closing", capacity=1)
    ref.tell(0)
    await holding.wait()
    ref.tell(1)

    results: list[Any] = []

    async def send() -> None:
        results.append(await outcome(ref.send(2)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(send)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ref.stop)
        await anyio.wait_all_tasks_blocked()
        gate.set()

    [result] = results
    assert isinstance(result, roost.ActorStopped)
    assert result.actor == "/closing"
    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [1, 2]


# --- overflow policies, seen from a ref -------------------------------------------------------


@pytest.mark.anyio
async def test_drop_newest_keeps_the_queued_messages_and_dead_letters_the_new_ones(
    system: roost.ActorSystem,
) -> None:
    received: list[Any] = []
    done = anyio.Event()
    ref = system.spawn(
        Recorder, received, done=done, expected=2, name="drops", capacity=2, overflow="drop_newest"
    )

    for n in range(5):  # all before the actor runs: two fit
        ref.tell(n)
    await done.wait()

    assert received == [0, 1]
    letters = system.dead_letters.recent()
    assert [(d.reason, d.recipient, d.message) for d in letters] == [
        ("dropped_newest", "/drops", 2),
        ("dropped_newest", "/drops", 3),
        ("dropped_newest", "/drops", 4),
    ]


@pytest.mark.anyio
async def test_drop_oldest_evicts_queued_messages_to_dead_letters_and_keeps_the_newest(
    system: roost.ActorSystem,
) -> None:
    received: list[Any] = []
    done = anyio.Event()
    ref = system.spawn(
        Recorder, received, done=done, expected=2, name="evicts", capacity=2, overflow="drop_oldest"
    )

    for n in range(5):
        ref.tell(n)
    await done.wait()

    assert received == [3, 4]
    assert [(d.reason, d.message) for d in system.dead_letters.recent()] == [
        ("dropped_oldest", 0),
        ("dropped_oldest", 1),
        ("dropped_oldest", 2),
    ]
    assert system.dead_letters.counts() == {"dropped_oldest": 3}


@pytest.mark.anyio
async def test_fail_raises_mailbox_full_naming_the_actor_and_capacity(
    system: roost.ActorSystem,
) -> None:
    received: list[Any] = []
    done = anyio.Event()
    ref = system.spawn(Recorder, received, done=done, expected=2, name="strict", capacity=2, overflow="fail")
    ref.tell(0)
    ref.tell(1)

    with pytest.raises(roost.MailboxFull, match=r"/strict: mailbox full \(capacity=2\)") as caught:
        ref.tell(2)
    await done.wait()

    assert (caught.value.actor, caught.value.capacity, caught.value.message) == ("/strict", 2, 2)
    assert received == [0, 1]
    [letter] = system.dead_letters.recent()
    assert (letter.reason, letter.recipient, letter.message) == ("mailbox_full", "/strict", 2)


@pytest.mark.anyio
@pytest.mark.parametrize("overflow", ["drop_newest", "drop_oldest"])
async def test_an_ask_dropped_by_a_full_mailbox_fails_at_once_instead_of_timing_out(
    system: roost.ActorSystem, overflow: str, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="lossy", capacity=1, overflow=overflow)
    ref.tell(0)
    await holding.wait()
    if overflow == "drop_newest":
        ref.tell(1)  # fills the mailbox, so the ask is the newest message and is dropped

    results: list[Any] = []

    async def ask() -> None:
        results.append(await outcome(ref.ask(Ping(2), timeout=30)))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        if overflow == "drop_oldest":
            ref.tell(3)  # evicts the queued ask
    elapsed = time.monotonic() - started
    gate.set()

    [result] = results
    assert isinstance(result, roost.MailboxFull)
    assert elapsed < 10, f"the dropped ask waited {elapsed:.1f} s, as if for its 30 s timeout"


# --- ask --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ask_returns_what_receive_returned(system: roost.ActorSystem) -> None:
    ref = system.spawn(Echo, name="echo")

    assert await ref.ask(Ping(3)) == Ping(3)


@pytest.mark.anyio
async def test_an_ask_after_a_thousand_tells_filled_the_mailbox_waits_for_room_and_is_answered(
    system: roost.ActorSystem,
) -> None:
    received: list[Any] = []
    ref = system.spawn(Recorder, received, name="flooded", capacity=1000)
    for n in range(1000):  # all before the actor runs: the mailbox is full
        ref.tell(n)

    assert await ref.ask(Ping(1000), timeout=5) == Ping(1000)

    assert received == [*range(1000), Ping(1000)]
    assert len(system.dead_letters) == 0


@pytest.mark.anyio
async def test_an_ask_that_times_out_waiting_for_room_raises_ask_timeout_and_queues_nothing(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    received: list[Any] = []
    ref = system.spawn(Recorder, received, gate=gate, holding=holding, name="jammed", capacity=2)
    ref.tell(0)
    await holding.wait()
    ref.tell(1)
    ref.tell(2)

    with pytest.raises(roost.AskTimeout, match=r"^/jammed: no reply to Ping within 0\.05s") as caught:
        await ref.ask(Ping(3), timeout=0.05)

    assert (caught.value.actor, caught.value.message, caught.value.timeout) == (
        "/jammed", Ping(3), 0.05)
    assert caught.value.queued is False and "was never queued" in str(caught.value)
    statistics = ref.statistics()
    assert (statistics["depth"], statistics["waiting_senders"]) == (2, 0)
    gate.set()
    assert await ref.ask(4) == 4  # served after everything queued before it
    assert received == [0, 1, 2, 4]
    assert len(system.dead_letters) == 0


@pytest.mark.anyio
async def test_an_ask_waiting_for_room_takes_its_turn_behind_senders_already_waiting(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    received: list[Any] = []
    ref = system.spawn(Recorder, received, gate=gate, holding=holding, name="queue", capacity=1)
    ref.tell(0)
    await holding.wait()
    ref.tell(1)
    results: list[Any] = []

    async def ask() -> None:
        results.append(await ref.ask(3, timeout=5))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ref.send, 2)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        assert ref.statistics()["waiting_senders"] == 2
        gate.set()

    assert received == [0, 1, 2, 3]
    assert results == [3]


@pytest.mark.anyio
async def test_an_ask_waiting_for_room_fails_with_actor_stopped_when_the_actor_stops(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="closing", capacity=1)
    ref.tell(0)
    await holding.wait()
    ref.tell(1)
    results: list[Any] = []

    async def ask() -> None:
        results.append(await outcome(ref.ask(Ping(2), timeout=5)))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ref.stop)
        await anyio.wait_all_tasks_blocked()
        gate.set()

    [result] = results
    assert isinstance(result, roost.ActorStopped)
    assert result.actor == "/closing"
    assert time.monotonic() - started < 0.5


@pytest.mark.anyio
async def test_a_timeout_error_raised_by_receive_reaches_an_ask_that_waited_for_room(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    class Impatient(Recorder):
        async def receive(self, message: Any) -> Any:
            if message == "late":
                raise TimeoutError("the upstream did not answer")
            return await super().receive(message)

    ref = system.spawn(Impatient, [], gate=gate, holding=holding, name="impatient", capacity=1)
    ref.tell(0)
    await holding.wait()
    ref.tell(1)
    results: list[Any] = []

    async def ask() -> None:
        results.append(await outcome(ref.ask("late", timeout=5)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        gate.set()

    [result] = results
    assert type(result) is TimeoutError
    assert str(result) == "the upstream did not answer"


@pytest.mark.anyio
async def test_an_ask_on_a_full_fail_mailbox_raises_mailbox_full_at_once(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="strict", capacity=1,
                       overflow="fail")
    ref.tell(0)
    await holding.wait()
    ref.tell(1)

    with pytest.raises(roost.MailboxFull, match=r"^/strict: mailbox full \(capacity=1\), refused Ping"):
        await ref.ask(Ping(2), timeout=5)

    assert [d.reason for d in system.dead_letters.recent()] == ["mailbox_full"]


@pytest.mark.anyio
async def test_an_ask_timeout_names_the_actor_and_the_message_type(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    ref = system.spawn(Recorder, [], gate=gate, holding=holding, name="silent")

    with pytest.raises(roost.AskTimeout, match=r"^/silent: no reply to Ping within 0\.05s") as caught:
        await ref.ask(Ping(), timeout=0.05)

    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.actor, caught.value.message, caught.value.timeout) == (
        "/silent",
        Ping(),
        0.05,
    )
    assert holding.is_set()  # the actor did get the message; it just never answered in time


@pytest.mark.anyio
@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf")])
async def test_ask_with_a_timeout_that_is_not_a_positive_number_is_refused(
    system: roost.ActorSystem, timeout: float
) -> None:
    ref = system.spawn(Echo, name="echo")

    with pytest.raises(ConfigurationError, match=rf"/echo: timeout must be .* got {timeout!r}"):
        await ref.ask(Ping(), timeout=timeout)


@pytest.mark.anyio
async def test_ask_to_a_stopped_actor_fails_at_once(system: roost.ActorSystem) -> None:
    ref = system.spawn(Echo, name="gone")
    await ref.stop()

    started = time.monotonic()
    with pytest.raises(roost.ActorStopped, match=r"/gone: actor has stopped \(reason=normal\)"):
        await ref.ask(Ping(), timeout=5)

    assert time.monotonic() - started < 0.5
    assert not ref.is_alive


@pytest.mark.anyio
async def test_an_ask_queued_when_the_actor_stops_fails_at_once(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    received: list[Any] = []
    ref = system.spawn(Recorder, received, gate=gate, holding=holding, name="stopping")
    ref.tell(0)
    await holding.wait()
    results: list[Any] = []

    async def ask() -> None:
        results.append(await outcome(ref.ask(Ping(1), timeout=5)))

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        tg.start_soon(ref.stop)
        await anyio.wait_all_tasks_blocked()
        gate.set()

    [result] = results
    assert isinstance(result, roost.ActorStopped)
    assert result.actor == "/stopping"
    assert time.monotonic() - started < 0.5
    assert received == [0]


@pytest.mark.anyio
async def test_a_stop_overtakes_queued_messages_which_become_dead_letters(
    system: roost.ActorSystem, gate: anyio.Event, holding: anyio.Event
) -> None:
    received: list[Any] = []
    ref = system.spawn(Recorder, received, gate=gate, holding=holding, name="busy")
    ref.tell(0)
    await holding.wait()
    for n in range(1, 11):
        ref.tell(n)
    results: list[Any] = []

    async def ask(n: int) -> None:
        results.append(await outcome(ref.ask(n, timeout=5)))

    async with anyio.create_task_group() as tg:
        for n in range(11, 14):
            tg.start_soon(ask, n)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(ref.stop)
        await anyio.wait_all_tasks_blocked()
        gate.set()

    assert received == [0]  # nothing queued was handled once the stop was asked for
    assert [type(r) for r in results] == [roost.ActorStopped] * 3
    letters = system.dead_letters.recent("actor_stopped")
    assert [d.message for d in letters] == list(range(1, 14))
    assert {d.recipient for d in letters} == {"/busy"}


class StopsItself(roost.Actor):
    """Stops itself through `how` while handling a message, then answers it; logs both."""

    def __init__(self, how: str, log: list[str]) -> None:
        self.how = how
        self.log = log

    async def receive(self, message: Any) -> Any:
        me = self.ctx.self_ref
        if self.how == "ref.stop()":
            await me.stop()
        elif self.how == "system.stop(ref)":
            await self.ctx.system.stop(me)
        else:
            await self.ctx.stop(me)
        self.log.append("after stop")
        return "done"

    async def on_stop(self) -> None:
        self.log.append("on_stop")


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["ref.stop()", "system.stop(ref)", "ctx.stop(ref)"])
async def test_an_actor_stopping_itself_through_its_ref_stops_normally_after_the_message(
    system: roost.ActorSystem, how: str
) -> None:
    # Like ctx.stop(): waiting for its own stop would wait for the message it is handling.
    log: list[str] = []
    ref = system.spawn(StopsItself, how, log, name="quitter", shutdown_timeout=30)

    with anyio.fail_after(5):
        assert await ref.ask("quit") == "done"
        ended = await system.join(ref)

    assert ended.reason == "normal"
    assert log == ["after stop", "on_stop"]


@pytest.mark.anyio
async def test_a_refs_statistics_show_its_state_and_mailbox_depth() -> None:
    busy, gate = asyncio.Event(), asyncio.Event()

    class Slow(roost.Actor):
        async def receive(self, message: Any) -> Any:
            busy.set()
            await gate.wait()

    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        slow = system.spawn(Slow, name="slow", capacity=10)
        for i in range(4):
            slow.tell(i)
        await busy.wait()  # the first message is being handled, three wait
        stats = slow.statistics()
        assert (stats["path"], stats["state"], stats["depth"], stats["capacity"]) == (
            "/slow", "running", 3, 10)
        gate.set()


@pytest.mark.anyio
async def test_an_ask_waiting_for_room_when_its_actor_stops_fails_once_and_leaves_nothing_behind(
        system: roost.ActorSystem, caplog: pytest.LogCaptureFixture) -> None:
    gate, holding = anyio.Event(), anyio.Event()
    full = system.spawn(Recorder, [], gate=gate, holding=holding, name="full", capacity=1,
                        overflow="wait", shutdown_timeout=0.0)
    full.tell(Ping(1))
    await holding.wait()
    full.tell(Ping(2))  # the one slot is taken: the next ask waits for room
    waiting = asyncio.ensure_future(full.ask(Ping(3), timeout=5))
    await asyncio.sleep(0.01)

    await full.stop()
    with pytest.raises(roost.ActorStopped, match="/full: actor has stopped"):
        await waiting
    del waiting
    gc.collect()

    assert "never retrieved" not in caplog.text  # no second, unretrieved copy of the error
    assert len(system.dead_letters.recent("actor_stopped")) == 2  # Ping(2) and Ping(3)
