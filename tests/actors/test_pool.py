"""Tests of roost/actors/pool.py: a supervisor that keeps N workers and routes each message to one."""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import pytest

import roost
from roost import ChildInfo, ConfigurationError, Pool, WhichChildren
from roost.actors.pool import abandon_routed

pytestmark = pytest.mark.anyio


class Where(roost.Message, frozen=True):
    pass


class Fail(roost.Message, frozen=True):
    pass


class Hold(roost.Message, frozen=True):
    pass


class Work(roost.Message, frozen=True):
    n: int


class Shared:
    """What the workers of one test share: a gate, and who handled what."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.holding = asyncio.Event()
        self.handled: dict[int, str] = {}
        self.attempts: collections.Counter[int] = collections.Counter()
        self.starts: collections.Counter[str] = collections.Counter()


class Worker(roost.Actor):
    """Answers Where with its path; Fail raises; Hold blocks on the gate; Work(n) crashes once
    for every n divisible by 7, then records who handled it."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def on_start(self) -> None:
        self.shared.starts[self.ctx.path] += 1

    async def receive(self, message: Any) -> Any:
        match message:
            case Where():
                return self.ctx.path
            case Fail():
                raise ValueError(f"{self.ctx.path} refused")
            case Hold():
                self.shared.holding.set()
                await self.shared.gate.wait()
            case Work(n=n):
                self.shared.attempts[n] += 1
                if n % 7 == 0 and self.shared.attempts[n] == 1:
                    raise RuntimeError(f"work {n} failed")
                self.shared.handled[n] = self.ctx.path
        return None


def pool_spec(shared: Shared, size: int = 3, **options: Any) -> roost.SupervisorSpec:
    return Pool.spec("pool", Worker, size=size, kwargs={"shared": shared}, **options)


async def test_a_pool_keeps_size_permanent_workers_named_after_it(system: roost.ActorSystem) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=3))
    infos = await pool.ask(WhichChildren())
    assert [info.name for info in infos] == ["pool-1", "pool-2", "pool-3"]
    assert all(isinstance(info, ChildInfo) for info in infos)
    assert {(info.state, info.restarts, info.restart) for info in infos} == {("running", 0, "permanent")}
    assert [info.ref.path for info in infos] == ["/pool/pool-1", "/pool/pool-2", "/pool/pool-3"]
    assert dict(shared.starts) == {"/pool/pool-1": 1, "/pool/pool-2": 1, "/pool/pool-3": 1}


async def test_each_ask_is_answered_by_one_worker_in_turn(system: roost.ActorSystem) -> None:
    pool = await system.start(pool_spec(Shared(), size=3))
    answers = [await pool.ask(Where()) for _ in range(6)]
    assert answers == ["/pool/pool-1", "/pool/pool-2", "/pool/pool-3"] * 2


async def test_a_worker_error_answering_an_ask_goes_to_the_asker_and_restarts_nothing(
    system: roost.ActorSystem,
) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=2))
    with pytest.raises(ValueError, match="/pool/pool-1 refused"):
        await pool.ask(Fail())
    assert await pool.ask(Where()) == "/pool/pool-2"
    assert [info.restarts for info in await pool.ask(WhichChildren())] == [0, 0]
    assert sum(shared.starts.values()) == 2


async def test_crashed_workers_are_restarted_and_no_routed_message_is_lost(
    system: roost.ActorSystem,
) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=3, max_restarts=50,
                                        backoff=roost.Backoff(initial=0.0, maximum=0.0)))
    for n in range(30):
        pool.tell(Work(n))
    # The pool forwards in order, so once it answers this, every Work has reached a worker.
    infos = await pool.ask(WhichChildren())
    for info in infos:  # each worker answers after the Work queued before this ask
        assert await info.ref.ask(Where()) == info.ref.path
    assert sorted(shared.handled) == list(range(30))
    crashed = [n for n in range(30) if n % 7 == 0]
    assert all(shared.attempts[n] == 2 for n in crashed)
    # Round robin: worker k (1-based) got every n with n % 3 == k - 1.
    assert all(shared.handled[n] == f"/pool/pool-{n % 3 + 1}" for n in range(30))
    restarts = {info.name: info.restarts for info in await pool.ask(WhichChildren())}
    expected = collections.Counter(f"pool-{n % 3 + 1}" for n in crashed)
    assert restarts == {f"pool-{k}": expected[f"pool-{k}"] for k in (1, 2, 3)}


async def test_least_busy_routing_skips_a_worker_with_a_backlog(system: roost.ActorSystem) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=3, routing="least_busy"))
    first = system.lookup("/pool/pool-1")
    first.tell(Hold())
    await shared.holding.wait()
    first.tell(Where())
    first.tell(Where())  # pool-1 is blocked with two messages queued
    try:
        answers = [await pool.ask(Where(), timeout=2.0) for _ in range(4)]
        assert "/pool/pool-1" not in answers
    finally:
        shared.gate.set()
    assert await first.ask(Where()) == "/pool/pool-1"


async def test_a_pool_without_live_workers_says_so_to_the_asker(system: roost.ActorSystem) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=1, restart="temporary", poison_after=1))
    worker = system.lookup("/pool/pool-1")
    worker.tell(Work(0))  # crashes, and a temporary worker is not restarted
    await system.join(worker)
    with pytest.raises(ConfigurationError, match="/pool: the pool has no live workers"):
        await pool.ask(Where())
    pool.tell(Where())  # a told message is a dead letter, not a crash of the pool
    await pool.ask(WhichChildren())  # handled after the tell

    assert pool.is_alive
    assert [letter.recipient for letter in system.dead_letters.recent("unhandled")] == ["/pool"]
    assert pool.statistics()["restarts"] == 0


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"size": 0}, r"Pool 'pool': size must be a whole number >= 1, got 0"),
        ({"size": 2.5}, r"size must be a whole number >= 1, got 2\.5"),
        ({"routing": "random"}, r"routing must be one of round_robin, least_busy, got 'random'"),
        ({"restart": "sometimes"}, r"restart must be one of .*got 'sometimes'"),
        ({"poison_after": 0}, r"poison_after must be a whole number >= 1, got 0"),
        ({"strategy": "none"}, r"strategy must be one of .*got 'none'"),
        ({"capcity": 10}, r"^Pool 'pool': unknown option 'capcity' \(did you mean 'capacity'\?\); "
                          r"valid options are capacity, overflow, poison_after, shutdown_timeout "
                          r"\(besides size, args, kwargs, routing, restart, strategy, max_restarts, "
                          r"within, backoff\)$"),
    ],
)
def test_a_bad_pool_setting_is_named_with_its_value(options: dict[str, Any], pattern: str) -> None:
    settings: dict[str, Any] = {"size": 2, **options}
    with pytest.raises(ConfigurationError, match=pattern):
        Pool.spec("pool", Worker, **settings)


class StopTogether(roost.Actor):
    """Finishes stopping only once every worker of its pool is stopping too."""

    def __init__(self, stopping: list[str], stopped: list[str], everyone: asyncio.Event,
                 size: int) -> None:
        self.stopping = stopping
        self.stopped = stopped
        self.everyone = everyone
        self.size = size

    async def on_stop(self) -> None:
        self.stopping.append(self.ctx.path)
        if len(self.stopping) == self.size:
            self.everyone.set()
        # Stopped one after another, the first worker would wait here until its shutdown
        # timeout cancelled it, and the others would not be stopping yet.
        await self.everyone.wait()
        self.stopped.append(self.ctx.path)

    async def receive(self, message: Any) -> Any:
        return None


async def test_a_pools_workers_stop_together_within_one_shutdown_timeout(
    system: roost.ActorSystem,
) -> None:
    stopping: list[str] = []
    stopped: list[str] = []
    everyone = asyncio.Event()
    pool = await system.start(
        Pool.spec("pool", StopTogether, size=3, args=(stopping, stopped, everyone, 3)))
    await pool.stop()
    assert sorted(stopped) == ["/pool/pool-1", "/pool/pool-2", "/pool/pool-3"]
    assert system.statistics()["abandoned"] == 0


class Echo(roost.Actor):
    async def receive(self, message: Any) -> Any:
        await asyncio.sleep(0)
        return message.n


async def test_a_pool_whose_workers_mailboxes_are_full_waits_for_room_instead_of_failing(
        system: roost.ActorSystem) -> None:
    pool = system.spawn(Pool.spec("echo", Echo, size=2, capacity=2))

    replies = await asyncio.gather(*(pool.ask(Work(n), timeout=5) for n in range(200)))

    assert replies == list(range(200))
    assert system.dead_letters.counts() == {}


def test_a_misspelt_size_is_named_not_reported_as_a_missing_argument() -> None:
    with pytest.raises(ConfigurationError, match=r"Pool 'p': unknown option.*sise"):
        Pool.spec("p", Echo, sise=3)
    with pytest.raises(ConfigurationError, match=r"Pool 'p': size is required"):
        Pool.spec("p", Echo)


async def test_a_message_whose_asker_gave_up_is_taken_from_its_worker_queued_or_running(
    system: roost.ActorSystem,
) -> None:
    shared = Shared()
    pool = await system.start(pool_spec(shared, size=1))
    hold, queued = Hold(), Work(1)
    holding = asyncio.ensure_future(pool.ask(hold, timeout=5))
    await shared.holding.wait()
    waiting = asyncio.ensure_future(pool.ask(queued, timeout=5))
    for _ in range(5):  # the pool forwards it to its only worker, busy with the hold
        await asyncio.sleep(0)

    assert abandon_routed(pool, queued)
    assert abandon_routed(pool, hold)
    assert not abandon_routed(pool, Work(2))

    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(holding, 1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(waiting, 1)
    # The worker gave up the held message and serves the next one, as it is: not restarted.
    assert await pool.ask(Where(), timeout=1) == "/pool/pool-1"
    assert shared.attempts[1] == 0
    assert dict(shared.starts) == {"/pool/pool-1": 1}
    assert [info.restarts for info in await pool.ask(WhichChildren())] == [0]


class Stubborn(roost.Actor):
    """Ignores the cancellation of its first message and finishes it anyway."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Hold):
            self.shared.holding.set()
            try:
                await self.shared.gate.wait()
            except asyncio.CancelledError:
                await self.shared.gate.wait()
            return "held"
        await asyncio.sleep(0.01)  # the next message's awaits are not cancelled
        return "next"


async def test_a_worker_that_ignores_the_cancellation_finishes_and_then_serves_on(
    system: roost.ActorSystem,
) -> None:
    shared = Shared()
    pool = await system.start(Pool.spec("pool", Stubborn, size=1, kwargs={"shared": shared}))
    hold = Hold()
    holding = asyncio.ensure_future(pool.ask(hold, timeout=5))
    await shared.holding.wait()

    assert abandon_routed(pool, hold)
    shared.gate.set()

    assert await asyncio.wait_for(holding, 1) == "held"  # it finished, so it answers
    assert await pool.ask(Where(), timeout=1) == "next"
