"""Messaging seen from outside, through the public API only: tell, send, ask, overflow
policies, dead letters, ordering, stopping actors, forwarding and pools, as someone who
knows Akka and Erlang would probe them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import roost

pytestmark = pytest.mark.anyio


class Ping(roost.Message, frozen=True):
    n: int = 0


class Hold(roost.Message, frozen=True):
    """Block the actor at the test's gate."""


class HoldThenCrash(roost.Message, frozen=True):
    """Block the actor at the test's gate, then make it fail."""


class Crash(roost.Message, frozen=True):
    """Make the actor fail."""


class Where(roost.Message, frozen=True):
    """Ask a worker for its path."""


class Board:
    """What a test shares with its actors: a gate they wait at, and what they saw."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()
        self.seen: list[Any] = []


class Keeper(roost.Actor):
    """Records each message; Hold waits at the gate, Crash raises, Where answers its path;
    anything else is answered with itself."""

    def __init__(self, board: Board) -> None:
        self.board = board

    async def receive(self, message: Any) -> Any:
        match message:
            case Hold():
                self.board.holding.set()
                await self.board.gate.wait()
                return "held"
            case Crash():
                raise RuntimeError("crash on request")
            case HoldThenCrash():
                self.board.holding.set()
                await self.board.gate.wait()
                raise RuntimeError("crash on request, once let go")
            case Where():
                return self.ctx.path
        self.board.seen.append(message)
        return message


async def settle() -> None:
    """Let every ready task run a few steps."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
async def board() -> Any:
    shared = Board()
    yield shared
    shared.gate.set()  # before the system's teardown, so no held actor has to be killed


# --- what a message may be --------------------------------------------------------------------


async def test_any_object_is_a_message_passed_by_reference(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board)
    mutable = {"items": [1, 2]}

    assert await ref.ask(mutable) is mutable
    assert await ref.ask([1, [2]]) == [1, [2]]
    assert await ref.ask(None) is None
    ref.tell({1, 2})
    await settle()

    assert board.seen[-1] == {1, 2}
    assert system.dead_letters.counts() == {}


async def test_an_unhashable_message_that_times_out_and_is_dead_lettered_is_kept_as_is(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=1, overflow="drop_newest")
    ref.tell(Hold())
    await board.holding.wait()
    ref.tell(["queued"])
    dropped = {"unhashable": []}

    with pytest.raises(roost.MailboxFull):
        await ref.ask(dropped, timeout=1)

    [letter] = system.dead_letters.recent("dropped_newest")
    assert letter.message is dropped


# --- ask: replies, errors, timeouts -----------------------------------------------------------


class Replier(roost.Actor):
    async def receive(self, message: Any) -> Any:
        if message == "none":
            return None
        if message == "raise":
            raise ValueError("refused")
        return message


async def test_an_ask_gets_none_or_the_error_and_the_actor_survives_an_error(
        system: roost.ActorSystem) -> None:
    ref = system.spawn(Replier)

    assert await ref.ask("none") is None
    with pytest.raises(ValueError, match="refused"):
        await ref.ask("raise")

    assert await ref.ask("still here") == "still here"
    assert ref.statistics()["restarts"] == 0


async def test_a_told_message_that_raises_restarts_the_actor_with_the_same_ref(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, poison_after=1)

    ref.tell(Crash())
    assert await ref.ask(Where()) == ref.path

    assert ref.statistics()["restarts"] == 1
    assert [d.reason for d in system.dead_letters.recent()] == ["poison"]


async def test_a_reply_after_the_ask_timed_out_is_a_late_reply_dead_letter(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board)

    with pytest.raises(roost.AskTimeout):
        await ref.ask(Hold(), timeout=0.02)
    board.gate.set()
    assert await ref.ask(Ping(1)) == Ping(1)

    [late] = system.dead_letters.recent("late_reply")
    assert late.message == "held"
    assert late.sender == ref.path


async def test_an_ask_cancelled_by_its_caller_makes_the_reply_a_late_reply(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board)
    asking = asyncio.ensure_future(ref.ask(Hold(), timeout=5))
    await board.holding.wait()

    asking.cancel()
    board.gate.set()
    assert await ref.ask(Ping(1)) == Ping(1)

    assert asking.cancelled()
    assert [d.message for d in system.dead_letters.recent("late_reply")] == ["held"]


# --- stopped and stopping actors --------------------------------------------------------------


async def test_tell_send_and_ask_to_a_stopped_actor(system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board)
    await ref.stop()

    ref.tell(Ping(1))
    with pytest.raises(roost.ActorStopped):
        await ref.send(Ping(2))
    with pytest.raises(roost.ActorStopped):
        await ref.ask(Ping(3))

    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [Ping(1), Ping(2)]
    assert not ref.is_alive


class SlowStop(roost.Actor):
    """Its on_stop waits at the board's gate, so the test can talk to it while it stops."""

    def __init__(self, board: Board) -> None:
        self.board = board

    async def receive(self, message: Any) -> Any:
        return message

    async def on_stop(self) -> None:
        self.board.holding.set()
        await self.board.gate.wait()


async def test_messages_to_a_stopping_actor_are_refused_at_once(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(SlowStop, board)
    assert await ref.ask(Ping(0)) == Ping(0)
    stopping = asyncio.ensure_future(ref.stop())
    await board.holding.wait()

    ref.tell(Ping(1))
    with pytest.raises(roost.ActorStopped):
        await ref.ask(Ping(2), timeout=5)
    with pytest.raises(roost.ActorStopped):
        await ref.send(Ping(3))
    board.gate.set()
    await stopping

    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [Ping(1), Ping(3)]


async def test_a_stop_overtakes_queued_mail_whose_asks_fail_and_tells_are_dead_lettered(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board)
    ref.tell(Hold())
    await board.holding.wait()
    ref.tell(Ping(1))
    asking = asyncio.ensure_future(ref.ask(Ping(2), timeout=5))
    await settle()

    stopping = asyncio.ensure_future(ref.stop())
    await settle()
    board.gate.set()
    await stopping

    with pytest.raises(roost.ActorStopped):
        await asking
    assert board.seen == []
    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [Ping(1), Ping(2)]


# --- ordering and volume ----------------------------------------------------------------------


async def test_many_messages_sent_with_backpressure_all_arrive_in_order(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=8)
    total = 20_000

    for n in range(total):
        await ref.send(n)
    assert await ref.ask("last") == "last"

    assert board.seen == [*range(total), "last"]
    assert system.dead_letters.counts() == {}


async def test_tells_past_a_wait_mailboxs_capacity_raise_mailbox_full(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=10)

    for n in range(10):
        ref.tell(n)
    with pytest.raises(roost.MailboxFull):
        ref.tell(10)
    await ref.ask("flush")

    assert board.seen == [*range(10), "flush"]


class Relay(roost.Actor):
    """Tells each number it gets to its target, then asks the target for `last`."""

    def __init__(self, target: roost.ActorRef) -> None:
        self.target = target

    async def receive(self, message: Any) -> Any:
        for n in range(message):
            await self.target.send((self.ctx.path, n))
        return await self.target.ask((self.ctx.path, "last"))


async def test_each_senders_messages_keep_their_order_under_backpressure(
        system: roost.ActorSystem, board: Board) -> None:
    target = system.spawn(Keeper, board, capacity=3)
    relays = [system.spawn(Relay, target) for _ in range(4)]

    await asyncio.gather(*(relay.ask(300) for relay in relays))

    for relay in relays:
        mine = [n for path, n in board.seen if path == relay.path]
        assert mine == [*range(300), "last"]


# --- overflow policies and asks ---------------------------------------------------------------


@pytest.mark.parametrize("overflow", ["drop_newest", "fail"])
async def test_an_ask_refused_by_a_full_mailbox_fails_at_once(
        system: roost.ActorSystem, board: Board, overflow: str) -> None:
    ref = system.spawn(Keeper, board, capacity=1, overflow=overflow)
    ref.tell(Hold())
    await board.holding.wait()
    ref.tell(Ping(1))

    with pytest.raises(roost.MailboxFull):
        await ref.ask(Ping(2), timeout=5)


async def test_an_ask_evicted_by_drop_oldest_fails_at_once_and_the_newest_is_handled(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=1, overflow="drop_oldest")
    ref.tell(Hold())
    await board.holding.wait()
    asking = asyncio.ensure_future(ref.ask(Ping(1), timeout=5))
    await settle()

    ref.tell(Ping(2))
    with pytest.raises(roost.MailboxFull):
        await asking
    board.gate.set()
    await settle()
    await ref.ask("flush")

    assert board.seen == [Ping(2), "flush"]
    assert [d.message for d in system.dead_letters.recent("dropped_oldest")] == [Ping(1)]


class Watcher(roost.Actor):
    """Watches the ref it is given; records every message after the gate opens."""

    def __init__(self, board: Board) -> None:
        self.board = board

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.ActorRef():
                self.ctx.watch(message)
            case Hold():
                self.board.holding.set()
                await self.board.gate.wait()
            case _:
                self.board.seen.append(message)
        return None


async def test_a_terminated_notice_is_never_evicted_by_drop_oldest(
        system: roost.ActorSystem, board: Board) -> None:
    watched = system.spawn(Replier)
    watcher = system.spawn(Watcher, board, capacity=2, overflow="drop_oldest")
    await watcher.ask(watched)
    watcher.tell(Hold())
    await board.holding.wait()

    await watched.stop()
    for n in range(3):
        watcher.tell(Ping(n))
    board.gate.set()
    await watcher.ask("flush")

    assert roost.Terminated(watched, roost.StopReason.NORMAL) in board.seen


# --- send and ask waiting for room, cancelled --------------------------------------------------


async def test_a_send_cancelled_while_the_actor_frees_room_raises_cancelled_error(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=1)
    ref.tell(Hold())
    await board.holding.wait()
    ref.tell(Ping(1))
    sending = asyncio.ensure_future(ref.send(Ping(2)))
    await settle()

    board.gate.set()  # the actor takes Ping(1) before the sender runs again
    sending.cancel()
    await settle()

    assert sending.cancelled()
    assert await ref.ask("flush") == "flush"
    assert board.seen == [Ping(1), "flush"]


async def test_an_ask_timing_out_for_room_as_room_appears_raises_ask_timeout(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=1)
    ref.tell(Hold())
    await board.holding.wait()
    ref.tell(Ping(1))
    asking = asyncio.ensure_future(ref.ask(Ping(2), timeout=5))
    await settle()

    board.gate.set()
    asking.cancel()  # what its timeout does: the asker's task is cancelled
    await settle()

    assert asking.cancelled()
    assert await ref.ask("flush") == "flush"


class SelfSender(roost.Actor):
    """Sends itself a message with backpressure while its own mailbox is full."""

    def __init__(self, board: Board) -> None:
        self.board = board

    async def receive(self, message: Any) -> Any:
        if message == "go":
            self.board.holding.set()
            await self.board.gate.wait()
            await self.ctx.self_ref.send("to myself")
        return message


async def test_an_actor_waiting_for_room_in_its_own_mailbox_is_told_it_cannot(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(SelfSender, board, capacity=1)
    asking = asyncio.ensure_future(ref.ask("go", timeout=5))
    await board.holding.wait()
    ref.tell("fills the mailbox")
    board.gate.set()

    with pytest.raises(roost.MailboxFull):
        await asking


class SelfForwarder(roost.Actor):
    """Forwards "go" to itself with backpressure while its own mailbox is full."""

    def __init__(self, board: Board) -> None:
        self.board = board

    async def receive(self, message: Any) -> Any:
        if message == "go":
            self.board.holding.set()
            await self.board.gate.wait()
            await self.ctx.forward_send(self.ctx.self_ref)
        return message


async def test_an_actor_forwarding_to_its_own_full_mailbox_is_told_it_cannot(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(SelfForwarder, board, capacity=1)
    asking = asyncio.ensure_future(ref.ask("go", timeout=5))
    await board.holding.wait()
    ref.tell("fills the mailbox")
    board.gate.set()

    with pytest.raises(roost.MailboxFull):
        await asking


# --- sender, forwarding -----------------------------------------------------------------------


class Front(roost.Actor):
    """Forwards everything to its backend."""

    def __init__(self, backend: roost.ActorRef) -> None:
        self.backend = backend

    async def receive(self, message: Any) -> Any:
        self.ctx.forward(self.backend)
        return "the front's reply is ignored"


class WhoSent(roost.Actor):
    async def receive(self, message: Any) -> Any:
        sender = self.ctx.sender
        return None if sender is None else sender.path


class Client(roost.Actor):
    """Asks the ref it gets in a message and returns the answer."""

    async def receive(self, message: Any) -> Any:
        return await message.ask("who?")


async def test_forwarding_keeps_the_original_sender_and_answers_the_original_ask(
        system: roost.ActorSystem) -> None:
    backend = system.spawn(WhoSent)
    front = system.spawn(Front, backend)
    client = system.spawn(Client)

    assert await front.ask("who?") is None
    assert await client.ask(front) == client.path


async def test_forwarding_to_a_stopped_actor_fails_the_original_ask_at_once(
        system: roost.ActorSystem) -> None:
    backend = system.spawn(WhoSent)
    front = system.spawn(Front, backend)
    await backend.stop()

    with pytest.raises(roost.ActorStopped):
        await front.ask("who?", timeout=5)
    assert front.is_alive


class Ponger(roost.Actor):
    """Answers a Ping by telling its sender Ping(n + 1)."""

    async def receive(self, message: Any) -> Any:
        assert self.ctx.sender is not None
        self.ctx.sender.tell(Ping(message.n + 1))


class Pinger(roost.Actor):
    def __init__(self, ponger: roost.ActorRef, board: Board) -> None:
        self.ponger = ponger
        self.board = board

    async def receive(self, message: Any) -> Any:
        self.board.seen.append(message)
        if message.n < 10:
            self.ponger.tell(Ping(message.n + 1))
        else:
            self.board.gate.set()


async def test_replying_by_telling_the_sender_plays_ping_pong(
        system: roost.ActorSystem, board: Board) -> None:
    ponger = system.spawn(Ponger)
    pinger = system.spawn(Pinger, ponger, board)

    pinger.tell(Ping(0))
    await board.gate.wait()

    assert board.seen == [Ping(n) for n in range(0, 11, 2)]


# --- pools ------------------------------------------------------------------------------------


async def test_least_busy_routing_prefers_an_idle_worker_to_one_busy_with_a_message(
        system: roost.ActorSystem, board: Board) -> None:
    pool = system.spawn(roost.Pool.spec("pool", Keeper, size=2, routing="least_busy",
                                        kwargs={"board": board}))
    holding = asyncio.ensure_future(pool.ask(Hold(), timeout=5))
    await board.holding.wait()

    where = await pool.ask(Where(), timeout=1)

    assert where == "/pool/pool-2"
    board.gate.set()
    assert await holding == "held"


async def test_a_pool_waiting_for_room_in_a_worker_that_crashed_restarts_it_and_serves(
        system: roost.ActorSystem, board: Board) -> None:
    pool = system.spawn(roost.Pool.spec("pool", Keeper, size=1, capacity=1, poison_after=1,
                                        kwargs={"board": board}))
    pool.tell(HoldThenCrash())
    await board.holding.wait()
    pool.tell(Ping(1))  # the worker's mailbox is full
    asking = asyncio.ensure_future(pool.ask(Where(), timeout=2))  # the pool waits for room
    await settle()

    board.gate.set()  # the worker fails: only its restart, by the pool, makes room

    assert await asking == "/pool/pool-1"
    assert board.seen == [Ping(1)]


async def test_a_tell_to_a_pool_of_full_fail_workers_is_dead_lettered_not_a_pool_crash(
        system: roost.ActorSystem, board: Board) -> None:
    pool = system.spawn(roost.Pool.spec("pool", Keeper, size=1, capacity=1, overflow="fail",
                                        kwargs={"board": board}))
    pool.tell(Hold())
    await board.holding.wait()
    pool.tell(Ping(1))
    pool.tell(Ping(2))  # no room in any worker
    await settle()
    board.gate.set()
    await settle()
    await pool.ask("flush", timeout=2)

    assert board.seen == [Ping(1), "flush"]
    assert [d.message for d in system.dead_letters.recent("mailbox_full")] == [Ping(2)]
    assert pool.statistics()["restarts"] == 0


async def test_a_pool_waiting_for_room_stops_at_once_when_asked_and_fails_the_waiting_ask(
        system: roost.ActorSystem, board: Board) -> None:
    pool = system.spawn(roost.Pool.spec("pool", Keeper, size=1, capacity=1, shutdown_timeout=0,
                                        kwargs={"board": board}), shutdown_timeout=0)
    pool.tell(Hold())
    await board.holding.wait()
    pool.tell(Ping(1))
    asking = asyncio.ensure_future(pool.ask(Where(), timeout=5))
    await settle()

    await pool.stop()

    with pytest.raises(roost.ActorStopped):
        await asking
    assert (await system.join(pool)).reason == roost.StopReason.NORMAL


async def test_mail_sent_while_an_actor_waits_for_its_restart_is_handled_after_it(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, poison_after=1)

    ref.tell(Crash())
    ref.tell(Ping(1))
    asking = ref.ask(Ping(2))

    assert await asking == Ping(2)
    assert board.seen == [Ping(1), Ping(2)]


async def test_thousands_of_concurrent_asks_on_a_small_mailbox_are_all_answered(
        system: roost.ActorSystem, board: Board) -> None:
    ref = system.spawn(Keeper, board, capacity=10)

    replies = await asyncio.gather(*(ref.ask(n, timeout=5) for n in range(3000)))

    assert replies == list(range(3000))
    assert sorted(board.seen) == list(range(3000))
    assert system.dead_letters.counts() == {}


async def test_an_ask_of_a_users_own_terminated_message_fails_when_the_actor_stops() -> None:
    # Only the runtime's own notices are dropped silently when an actor stops.
    board = Board()
    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        other = system.spawn(Keeper, board)
        await other.stop()
        ref = system.spawn(Keeper, board)
        ref.tell(Hold())
        await board.holding.wait()
        asking = asyncio.ensure_future(
            ref.ask(roost.Terminated(other, roost.StopReason.NORMAL), timeout=30))
        await settle()
        stopping = asyncio.ensure_future(ref.stop())
        board.gate.set()
        await stopping

        with pytest.raises(roost.ActorStopped):
            await asking
