"""Tests of roost/actors/supervisor.py: strategies, restart types, intensity, backoff, poison
messages, static and dynamic children, ordered shutdown and `watch`.

Lifecycles are asserted as event logs (`start:a`, `stop:a`); tests wait on the log or on
replies, never on sleeps. Clocks for intensity windows and backoff resets are fakes.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import math
import time
from collections.abc import Callable
from typing import Any

import pytest

import roost
from roost import (
    ActorStartFailed,
    Backoff,
    ChildAlreadyPresent,
    ChildInfo,
    ChildNotFound,
    ChildNotStopped,
    ChildSpec,
    DeleteChild,
    IntensityExceeded,
    RestartChild,
    StartChild,
    StopChild,
    Supervisor,
    WhichChildren,
)
from roost.errors import ActorRestarted
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

#: Restart at once, however many restarts in a row: keeps logs deterministic and tests fast.
NO_BACKOFF = Backoff(initial=0.0, maximum=0.0)


# --- helpers ------------------------------------------------------------------------------


class EventLog:
    """A list of lifecycle events that tests can wait on."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self._waiters: list[tuple[Callable[[list[Any]], bool], asyncio.Future[None]]] = []

    def append(self, entry: Any) -> None:
        self.entries.append(entry)
        for predicate, future in self._waiters:
            if not future.done() and predicate(self.entries):
                future.set_result(None)

    def count(self, entry: Any) -> int:
        return self.entries.count(entry)

    async def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 5.0) -> None:
        if predicate(self.entries):
            return
        waiter = (predicate, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter[1], timeout)
        except TimeoutError:
            raise AssertionError(f"the event log never matched; it is {self.entries}") from None
        finally:
            self._waiters.remove(waiter)

    async def wait_count(self, entry: Any, n: int, timeout: float = 5.0) -> None:
        await self.wait_for(lambda entries: entries.count(entry) >= n, timeout)

    async def wait_len(self, n: int, timeout: float = 5.0) -> None:
        await self.wait_for(lambda entries: len(entries) >= n, timeout)




class Crash(roost.Message, frozen=True):
    pass


class Quit(roost.Message, frozen=True):
    pass


class Ping(roost.Message, frozen=True):
    pass


class Add(roost.Message, frozen=True):
    n: int


class Get(roost.Message, frozen=True):
    pass


class Child(roost.Actor):
    """Logs its lifecycle; crashes on Crash, ends itself on Quit, answers Ping and Get."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.name = self.ctx.self_ref.name
        self.total = 0

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.name}")

    async def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError(f"{self.name} crashed")
            case Quit():
                await self.ctx.stop()
            case Add(n=n):
                self.total += n
                return self.total
            case Get():
                return self.total
            case Ping():
                return self.name


def child(name: str, log: EventLog, **options: Any) -> ChildSpec:
    """A logging child; by default a Crash is not redelivered, so one tell is one crash."""
    options.setdefault("poison_after", 1)
    return ChildSpec(factory=Child, name=name, kwargs={"log": log}, **options)


class LoggedSupervisor(Supervisor):
    """A supervisor that logs its own lifecycle (the log comes through its spec's options)."""

    spec_options = ("log",)

    def __init__(self, spec: roost.SupervisorSpec) -> None:
        super().__init__(spec)
        self.log: EventLog = spec.options["log"]
        self.label = spec.name

    async def on_start(self) -> None:
        self.log.append(f"start:{self.label}")
        await super().on_start()

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.label}")


class Watcher(roost.Actor):
    """Watches `target` from its start and logs every Terminated it receives."""

    def __init__(self, target: roost.ActorRef, log: EventLog) -> None:
        self.target = target
        self.log = log

    async def on_start(self) -> None:
        self.ctx.watch(self.target)

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.Terminated():
                self.log.append(message)
            case Ping():
                return "pong"


async def children_of(sup: roost.ActorRef) -> dict[str, ChildInfo]:
    infos = await sup.ask(WhichChildren())
    assert all(isinstance(info, ChildInfo) for info in infos)
    return {info.name: info for info in infos}


async def crash_and_wait_restart(ref: roost.ActorRef, log: EventLog) -> None:
    """Crash a child once and wait for its next instance to start."""
    starts = log.count(f"start:{ref.name}")
    ref.tell(Crash())
    await log.wait_count(f"start:{ref.name}", starts + 1)


def quiet_system(**options: Any) -> roost.ActorSystem:
    return roost.ActorSystem(log_format="json", log_level="critical", **options)


async def child_state(sup: roost.ActorRef, name: str, state: str, timeout: float = 5.0) -> None:
    """Poll until the supervisor reports `state` for its child (no event marks a suspension)."""
    deadline = time.monotonic() + timeout
    while (await children_of(sup))[name].state != state:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never became {state}: {await children_of(sup)}")
        await asyncio.sleep(0.001)


# --- strategies -----------------------------------------------------------------------------


async def start_abc(system: roost.ActorSystem, strategy: str, log: EventLog) -> roost.ActorRef:
    tree = Supervisor.spec(
        "app", strategy=strategy, backoff=NO_BACKOFF,  # type: ignore[arg-type]
        children=[child("a", log), child("b", log), child("c", log)],
    )
    sup = await system.start(tree)
    assert log.entries == ["start:a", "start:b", "start:c"]
    return sup


async def test_static_children_start_in_spec_order_and_share_the_supervisor_path(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await start_abc(system, "one_for_one", log)
    children = await children_of(sup)
    assert list(children) == ["a", "b", "c"]
    assert [info.ref.path for info in children.values()] == ["/app/a", "/app/b", "/app/c"]
    assert all(info.state == "running" and info.restarts == 0 for info in children.values())
    assert system.lookup("/app/b") is children["b"].ref


async def test_one_for_one_restarts_only_the_failed_child(system: roost.ActorSystem) -> None:
    log = EventLog()
    sup = await start_abc(system, "one_for_one", log)
    before = await children_of(sup)
    before["b"].ref.tell(Crash())
    await log.wait_len(5)
    after = await children_of(sup)
    assert log.entries[3:] == ["stop:b", "start:b"]
    assert {n: i.restarts for n, i in after.items()} == {"a": 0, "b": 1, "c": 0}
    assert all(after[n].ref is before[n].ref for n in "abc")
    assert await after["b"].ref.ask(Ping()) == "b"


async def test_one_for_all_restarts_every_child_stopping_in_reverse_then_starting_in_order(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await start_abc(system, "one_for_all", log)
    before = await children_of(sup)
    before["b"].ref.tell(Crash())
    await log.wait_len(9)
    after = await children_of(sup)
    assert log.entries[3:] == ["stop:c", "stop:b", "stop:a", "start:a", "start:b", "start:c"]
    assert {n: i.restarts for n, i in after.items()} == {"a": 1, "b": 1, "c": 1}
    assert all(after[n].ref is before[n].ref for n in "abc")
    assert all(info.state == "running" for info in after.values())


@pytest.mark.parametrize(
    ("crashed", "expected", "restarts"),
    [
        ("a", ["stop:c", "stop:b", "stop:a", "start:a", "start:b", "start:c"],
         {"a": 1, "b": 1, "c": 1}),
        ("b", ["stop:c", "stop:b", "start:b", "start:c"], {"a": 0, "b": 1, "c": 1}),
        ("c", ["stop:c", "start:c"], {"a": 0, "b": 0, "c": 1}),
    ],
)
async def test_rest_for_one_restarts_the_failed_child_and_those_started_after_it(
    system: roost.ActorSystem, crashed: str, expected: list[str], restarts: dict[str, int]
) -> None:
    log = EventLog()
    sup = await start_abc(system, "rest_for_one", log)
    before = await children_of(sup)
    before[crashed].ref.tell(Crash())
    await log.wait_len(3 + len(expected))
    after = await children_of(sup)
    assert log.entries[3:] == expected
    assert {n: i.restarts for n, i in after.items()} == restarts
    assert list(after) == ["a", "b", "c"]  # start order is kept across restarts


async def test_a_temporary_sibling_is_stopped_but_not_restarted_by_one_for_all(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    tree = Supervisor.spec("app", strategy="one_for_all", backoff=NO_BACKOFF, children=[
        child("a", log), child("t", log, restart="temporary"), child("c", log),
    ])
    sup = await system.start(tree)
    c = system.lookup("/app/c")
    c.tell(Crash())
    await log.wait_len(3 + 5)
    after = await children_of(sup)
    assert log.entries[3:] == ["stop:c", "stop:t", "stop:a", "start:a", "start:c"]
    assert list(after) == ["a", "c"]


async def test_a_restarted_child_keeps_its_ref_and_gets_a_fresh_instance(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("w", log)]))
    w = system.lookup("/app/w")
    assert await w.ask(Add(5)) == 5
    assert await w.ask(Add(2)) == 7
    await crash_and_wait_restart(w, log)
    assert await w.ask(Get()) == 0  # state reset: a fresh instance
    assert system.lookup("/app/w") is w
    assert (await children_of(sup))["w"].restarts == 1


# --- restart types --------------------------------------------------------------------------


@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
@pytest.mark.parametrize("exit_kind", ["failure", "normal"])
async def test_the_restart_type_decides_what_follows_a_failure_or_a_normal_exit(
    system: roost.ActorSystem, restart: str, exit_kind: str
) -> None:
    log, watched = EventLog(), EventLog()
    sup = await system.start(Supervisor.spec(
        "app", backoff=NO_BACKOFF, children=[child("w", log, restart=restart), child("z", log)],
    ))
    w = system.lookup("/app/w")
    await system.start(Watcher, w, watched, name="watcher")
    w.tell(Crash() if exit_kind == "failure" else Quit())
    restarted = restart == "permanent" or (restart == "transient" and exit_kind == "failure")
    if restarted:
        await log.wait_count("start:w", 2)
        children = await children_of(sup)
        assert children["w"].ref is w
        assert children["w"].restarts == 1
        assert children["w"].restart == restart
        assert await w.ask(Ping()) == "w"
        assert watched.entries == []  # a restart is not a termination
    else:
        await system.join(w)
        assert not w.is_alive
        children = await children_of(sup)
        if restart == "transient":  # OTP keeps a non-temporary child's spec, state stopped
            assert children["w"] == ChildInfo("w", None, "stopped", 0, "transient")
            assert list(children) == ["w", "z"]
        else:
            assert list(children) == ["z"]
        await watched.wait_len(1)
        (terminated,) = watched.entries
        assert terminated.ref is w
        assert terminated.reason == exit_kind
        if exit_kind == "failure":
            assert isinstance(terminated.error, RuntimeError)
    assert log.entries == ["start:w", "start:z", "stop:w", *(["start:w"] if restarted else [])]


async def test_a_plainly_spawned_actor_is_transient(system: roost.ActorSystem) -> None:
    log = EventLog()
    w = system.spawn(Child, name="w", log=log, poison_after=1)
    await crash_and_wait_restart(w, log)  # restarted after a failure
    assert await w.ask(Ping()) == "w"
    w.tell(Quit())  # not restarted after a normal exit
    await system.join(w)
    assert log.entries == ["start:w", "stop:w", "start:w", "stop:w"]
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/w")


class Parent(roost.Actor):
    """Spawns one logging child with ctx.spawn and hands out its ref."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.kid = self.ctx.spawn(Child, name="kid", log=self.log, poison_after=1)

    async def receive(self, message: Any) -> Any:
        return self.kid


async def test_a_child_spawned_with_ctx_spawn_is_transient(system: roost.ActorSystem) -> None:
    log = EventLog()
    parent = await system.start(Parent, log, name="parent")
    kid = await parent.ask(Ping())
    assert kid.path == "/parent/kid"
    await crash_and_wait_restart(kid, log)
    assert await kid.ask(Ping()) == "kid"
    kid.tell(Quit())
    await system.join(kid)
    assert log.entries == ["start:kid", "stop:kid", "start:kid", "stop:kid"]
    assert parent.is_alive


async def test_an_exception_answering_an_ask_goes_to_the_asker_and_is_not_a_failure(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("w", log)]))
    w = system.lookup("/app/w")
    await w.ask(Add(3))
    with pytest.raises(RuntimeError, match="w crashed"):
        await w.ask(Crash())
    assert await w.ask(Get()) == 3  # same instance, state kept
    assert (await children_of(sup))["w"].restarts == 0
    assert log.entries == ["start:w"]
    assert system.dead_letters.recent("poison") == []


# --- intensity ------------------------------------------------------------------------------


async def test_a_supervisor_past_its_intensity_stops_its_children_and_fails(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    tree = Supervisor.spec("app", max_restarts=2, within=60.0, backoff=NO_BACKOFF,
                           children=[child("a", log), child("b", log)])
    sup = await system.start(ChildSpec(factory=tree, restart="temporary"))
    await system.start(Watcher, sup, watched, name="watcher")
    a = system.lookup("/app/a")
    await crash_and_wait_restart(a, log)
    await crash_and_wait_restart(a, log)
    a.tell(Crash())  # the third restart within the window is one too many
    await watched.wait_len(1)
    (terminated,) = watched.entries
    assert terminated.ref is sup
    assert terminated.reason == "failure"
    error = terminated.error
    assert isinstance(error, IntensityExceeded)
    with pytest.raises(IntensityExceeded, match=r"^/app: more than 2 restarts within 60s"):
        raise error
    assert (error.supervisor, error.max_restarts, error.within) == ("/app", 2, 60.0)
    assert isinstance(error.cause, RuntimeError)
    assert str(error.cause) == "a crashed"
    assert log.entries[-2:] == ["stop:b", "stop:a"]
    assert not a.is_alive
    assert not sup.is_alive


async def test_intensity_is_counted_across_all_children_of_a_supervisor(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    tree = Supervisor.spec("app", max_restarts=2, within=60.0, backoff=NO_BACKOFF,
                           children=[child("a", log), child("b", log)])
    sup = await system.start(ChildSpec(factory=tree, restart="temporary"))
    await system.start(Watcher, sup, watched, name="watcher")
    a, b = system.lookup("/app/a"), system.lookup("/app/b")
    await crash_and_wait_restart(a, log)
    await crash_and_wait_restart(b, log)
    a.tell(Crash())
    await watched.wait_len(1)
    assert isinstance(watched.entries[0].error, IntensityExceeded)


async def test_restarts_older_than_the_window_no_longer_count() -> None:
    clock = FakeClock()
    log = EventLog()
    async with quiet_system(clock=clock) as system:
        sup = await system.start(Supervisor.spec(
            "app", max_restarts=2, within=10.0, backoff=NO_BACKOFF, children=[child("w", log)],
        ))
        w = system.lookup("/app/w")
        await crash_and_wait_restart(w, log)
        await crash_and_wait_restart(w, log)
        clock.advance(10.0)
        await crash_and_wait_restart(w, log)
        clock.advance(5.0)
        await crash_and_wait_restart(w, log)
        info = (await children_of(sup))["w"]
        assert (info.restarts, info.state) == (4, "running")
        assert sup.is_alive
        # Two restarts are in the window now (at +10 and +15): the next one is refused.
        w.tell(Crash())
        await system.join(w)
        await log.wait_count("stop:w", 5)
        assert system.failure is None  # the guardian restarts the supervisor
    assert system.failure is None


async def test_a_child_whose_restart_fails_in_on_start_counts_against_the_intensity(
    system: roost.ActorSystem,
) -> None:
    watched = EventLog()
    starts: list[int] = []

    class Brittle(roost.Actor):
        """Starts once; every later instance fails in on_start."""

        async def on_start(self) -> None:
            starts.append(1)
            if len(starts) > 1:
                raise OSError("cannot reconnect")

        async def receive(self, message: Any) -> Any:
            raise RuntimeError("crashed")

    tree = Supervisor.spec("app", max_restarts=3, within=60.0, backoff=NO_BACKOFF,
                           children=[ChildSpec(factory=Brittle, name="w", poison_after=1)])
    sup = await system.start(ChildSpec(factory=tree, restart="temporary"))
    await system.start(Watcher, sup, watched, name="watcher")
    system.lookup("/app/w").tell(Crash())
    await watched.wait_len(1)
    error = watched.entries[0].error
    assert isinstance(error, IntensityExceeded)
    assert isinstance(error.cause, OSError)
    # 1 good start, then 3 allowed restarts that each failed in on_start.
    assert len(starts) == 4


class Crasher(roost.Actor):
    """Crashes right after every start (it tells itself to), logging starts and stops."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")
        self.ctx.self_ref.tell(Crash())

    async def on_stop(self) -> None:
        self.log.append("stop")

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("worker crashed")


async def test_intensity_exceeded_escalates_through_a_three_level_tree_to_the_root() -> None:
    log = EventLog()
    tree = Supervisor.spec("top", max_restarts=1, within=60.0, backoff=NO_BACKOFF, children=[
        Supervisor.spec("mid", max_restarts=1, within=60.0, backoff=NO_BACKOFF, children=[
            ChildSpec(factory=Crasher, name="worker", kwargs={"log": log}, poison_after=1),
        ]),
    ])
    started = time.monotonic()
    with pytest.raises(IntensityExceeded, match=r"^/: more than 0 restarts within 10s") as caught:
        async with quiet_system(max_restarts=0, within=10.0) as system:
            await system.start(tree)
            await asyncio.Event().wait()  # cancelled when the root fails
    assert time.monotonic() - started < 10.0
    chain = []
    error: Any = caught.value
    while isinstance(error, IntensityExceeded):
        chain.append(error.supervisor)
        error = error.cause
    assert chain == ["/", "/top", "/top/mid"]
    assert isinstance(error, RuntimeError)
    assert str(error) == "worker crashed"
    assert system.failure is caught.value
    # Every worker instance that started was stopped on the way down.
    assert log.count("start") == log.count("stop") >= 2


async def test_a_restarted_supervisor_starts_with_a_fresh_restart_intensity(
    system: roost.ActorSystem,
) -> None:
    """OTP: a supervisor restarted by its parent is a new process with no restart history."""
    log = EventLog()
    tree = Supervisor.spec("top", max_restarts=10, within=60.0, backoff=NO_BACKOFF, children=[
        Supervisor.spec("mid", max_restarts=1, within=60.0, backoff=NO_BACKOFF,
                        children=[child("w", log)]),
    ])
    top = await system.start(tree)
    await crash_and_wait_restart(system.lookup("/top/mid/w"), log)  # mid's one allowed restart
    await crash_and_wait_restart(system.lookup("/top/mid/w"), log)  # too many: top restarts mid
    assert (await children_of(top))["mid"].restarts == 1
    # The fresh mid may restart its worker once again before giving up.
    await crash_and_wait_restart(system.lookup("/top/mid/w"), log)
    mid = (await children_of(top))["mid"]
    assert mid.restarts == 1, "the restarted mid supervisor kept its old restart history"
    assert (await children_of(mid.ref))["w"].restarts == 1


class CrashingSupervisor(Supervisor):
    """A supervisor that fails on Crash, like any actor whose receive raises."""

    async def handle(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("the supervisor crashed")
        return await super().handle(message)


async def test_a_restarted_supervisor_comes_back_with_its_static_children_only(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    mid = CrashingSupervisor.spec("mid", backoff=NO_BACKOFF, children=[child("w", log)])
    top = await system.start(Supervisor.spec(
        "top", backoff=NO_BACKOFF, children=[ChildSpec(factory=mid, poison_after=1)],
    ))
    mid_ref = system.lookup("/top/mid")
    dynamic = await mid_ref.ask(StartChild(child("d", log)))
    assert list(await children_of(mid_ref)) == ["w", "d"]
    mid_ref.tell(Crash())  # a failure of the supervisor itself
    await log.wait_len(5)
    assert log.entries == ["start:w", "start:d", "stop:d", "stop:w", "start:w"]
    assert list(await children_of(mid_ref)) == ["w"]
    assert not dynamic.is_alive
    assert (await children_of(top))["mid"].restarts == 1


# --- backoff --------------------------------------------------------------------------------


class Stamper(roost.Actor):
    """Records when each instance starts; crashes on every message."""

    def __init__(self, starts: list[float], log: EventLog) -> None:
        self.starts = starts
        self.log = log

    async def on_start(self) -> None:
        self.starts.append(time.monotonic())
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crashed")


async def test_repeated_crashes_of_one_child_are_spaced_by_growing_bounded_delays() -> None:
    starts: list[float] = []
    log = EventLog()
    backoff = Backoff(initial=0.01, maximum=0.05, multiplier=2.0, jitter=0.2, reset_after=60.0)
    # One message that crashes the child 7 times in a row (then it is poison).
    spec = ChildSpec(factory=Stamper, name="w", kwargs={"starts": starts, "log": log},
                     poison_after=7)
    async with quiet_system(rand=lambda: 0.5) as system:
        await system.start(Supervisor.spec("app", max_restarts=20, within=60.0, backoff=backoff,
                                           children=[spec]))
        system.lookup("/app/w").tell(Crash())
        await log.wait_count("start", 8)
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # The delay of the n-th restart in a row, jitter 0.2 at rand 0.5 taking 10% off.
    expected = [0.0, 0.009, 0.018, 0.036, 0.045, 0.045, 0.045]
    assert len(gaps) == len(expected)
    for gap, delay in zip(gaps, expected, strict=True):
        assert delay - 0.001 <= gap <= max(delay, 0.05) + 0.25, (gaps, expected)
    assert gaps[0] < gaps[3], gaps  # growing
    assert len(system.dead_letters.recent("poison")) == 1


async def test_the_backoff_resets_after_the_child_ran_without_failing_for_reset_after() -> None:
    clock = FakeClock()
    starts: list[float] = []
    log = EventLog()
    backoff = Backoff(initial=0.3, maximum=0.3, jitter=0.0, reset_after=10.0)
    spec = ChildSpec(factory=Stamper, name="w", kwargs={"starts": starts, "log": log},
                     poison_after=1)
    async with quiet_system(clock=clock) as system:
        await system.start(Supervisor.spec("app", max_restarts=20, within=60.0, backoff=backoff,
                                           children=[spec]))
        w = system.lookup("/app/w")
        w.tell(Crash())  # first restart in a row: immediate
        await log.wait_count("start", 2)
        w.tell(Crash())  # second in a row: waits `initial`
        await log.wait_count("start", 3)
        clock.advance(10.0)  # ran cleanly for reset_after
        w.tell(Crash())  # first in a row again: immediate
        await log.wait_count("start", 4)
    first, second, after_reset = (b - a for a, b in itertools.pairwise(starts))
    assert first < 0.15
    assert second >= 0.299
    assert after_reset < 0.15


async def test_a_delayed_restart_already_covered_by_a_group_restart_does_not_restart_again(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    delay = 0.1
    sup = await system.start(Supervisor.spec(
        "app", strategy="one_for_all", max_restarts=20, within=60.0,
        backoff=Backoff(initial=delay, maximum=delay, jitter=0.0, reset_after=60.0),
        children=[child("a", log), child("b", log)],
    ))
    a, b = system.lookup("/app/a"), system.lookup("/app/b")
    await crash_and_wait_restart(a, log)  # a's first restart in a row: immediate
    a.tell(Crash())  # a's second in a row: the group restart waits `delay`
    await child_state(sup, "a", "suspended")
    await crash_and_wait_restart(b, log)  # b's first: restarts a and b at once
    assert log.entries[-4:] == ["stop:b", "stop:a", "start:a", "start:b"]
    assert {n: i.restarts for n, i in (await children_of(sup)).items()} == {"a": 2, "b": 2}
    # Timers fire in deadline order: this one fires after a's pending restart timer.
    await asyncio.sleep(delay + 0.05)
    # a's failure was already handled by the group restart: nothing restarts a second time.
    assert {n: i.restarts for n, i in (await children_of(sup)).items()} == {"a": 2, "b": 2}
    assert log.count("start:a") == 3


async def test_the_system_shuts_down_promptly_while_a_restart_waits_out_its_backoff() -> None:
    log = EventLog()
    async with quiet_system() as system:
        sup = await system.start(Supervisor.spec(
            "app", backoff=Backoff(initial=30.0, maximum=30.0, reset_after=60.0),
            children=[child("w", log)],
        ))
        w = system.lookup("/app/w")
        await crash_and_wait_restart(w, log)
        w.tell(Crash())  # the second restart in a row would wait 30 s
        await child_state(sup, "w", "suspended")
        w.tell(Add(1))  # queued while suspended
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert log.entries == ["start:w", "stop:w", "start:w", "stop:w"]
    assert [d.message for d in system.dead_letters.recent("actor_stopped")] == [Add(1)]


# --- mailboxes across restarts and poison messages ------------------------------------------


class Work(roost.Message, frozen=True):
    n: int


class Processor(roost.Actor):
    """Handles Work(n); fails the first attempt at `flaky` items and every attempt at `poison`."""

    def __init__(self, handled: list[int], attempts: collections.Counter[int],
                 flaky: set[int], poison: set[int]) -> None:
        self.handled = handled
        self.attempts = attempts
        self.flaky = flaky
        self.poison = poison

    async def receive(self, message: Any) -> Any:
        match message:
            case Work(n=n):
                self.attempts[n] += 1
                if n in self.poison or (n in self.flaky and self.attempts[n] == 1):
                    raise RuntimeError(f"work {n} failed")
                self.handled.append(n)
            case Ping():
                return list(self.handled)


async def test_a_child_crashing_with_100_queued_messages_loses_none_of_them(
    system: roost.ActorSystem,
) -> None:
    handled: list[int] = []
    attempts: collections.Counter[int] = collections.Counter()
    flaky, poison = {0, 17, 50, 98, 99}, {33, 66}
    spec = ChildSpec(factory=Processor, name="p", poison_after=3, kwargs={
        "handled": handled, "attempts": attempts, "flaky": flaky, "poison": poison})
    sup = await system.start(Supervisor.spec("app", max_restarts=100, within=60.0,
                                             backoff=NO_BACKOFF, children=[spec]))
    p = system.lookup("/app/p")
    messages = [Work(n) for n in range(100)]
    for message in messages:  # all queued before the first is handled (tell does not yield)
        p.tell(message)
    assert await p.ask(Ping(), timeout=10.0) == [n for n in range(100) if n not in poison]
    assert {n: attempts[n] for n in flaky | poison} == {
        **{n: 2 for n in flaky}, **{n: 3 for n in poison}}
    assert all(attempts[n] == 1 for n in range(100) if n not in flaky | poison)
    dead = system.dead_letters.recent("poison")
    assert [d.message for d in dead] == [messages[33], messages[66]]
    assert (await children_of(sup))["p"].restarts == len(flaky) + 3 * len(poison)
    assert system.dead_letters.counts().get("actor_stopped", 0) == 0


async def test_a_poison_message_is_dead_lettered_after_poison_after_crashes(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", backoff=NO_BACKOFF,
                                             children=[child("w", log, poison_after=2)]))
    w = system.lookup("/app/w")
    crash = Crash()
    w.tell(crash)
    w.tell(Add(4))
    assert await w.ask(Get()) == 4  # the message after the poison one still arrives
    assert log.entries == ["start:w", "stop:w", "start:w", "stop:w", "start:w"]
    (letter,) = system.dead_letters.recent("poison")
    assert letter.message is crash
    assert letter.recipient == "/app/w"
    assert isinstance(letter.error, RuntimeError)
    assert letter.crashes == 2
    assert system.dead_letters.counts()["poison"] == 1
    assert (await children_of(sup))["w"].restarts == 2


async def test_poison_after_one_drops_the_crashing_message_at_once(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    await system.start(Supervisor.spec("app", backoff=NO_BACKOFF,
                                       children=[child("w", log, poison_after=1)]))
    w = system.lookup("/app/w")
    w.tell(Crash())
    assert await w.ask(Ping()) == "w"
    assert log.entries == ["start:w", "stop:w", "start:w"]
    assert len(system.dead_letters.recent("poison")) == 1


async def test_a_message_a_supervisor_does_not_take_is_dead_lettered_and_restarts_nothing(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    app = await system.start(Supervisor.spec("app", children=[child("w", log)]))
    w = system.lookup("/app/w")

    app.tell(Ping())  # OTP logs and ignores it; Akka calls it unhandled
    children = await children_of(app)  # answered after the Ping was handled

    assert log.entries == ["start:w"]
    assert (children["w"].restarts, app.statistics()["restarts"]) == (0, 0)
    assert system.lookup("/app/w") is w
    [letter] = system.dead_letters.recent()
    assert (letter.reason, letter.recipient, letter.message) == ("unhandled", "/app", Ping())
    assert str(letter.error) == ("/app: a Supervisor only takes StartChild, StopChild, "
                                 "RestartChild, DeleteChild and WhichChildren, got Ping")


async def test_an_ask_a_supervisor_does_not_take_raises_to_the_asker_and_restarts_nothing(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    app = await system.start(Supervisor.spec("app", children=[child("w", log)]))

    with pytest.raises(roost.ConfigurationError,
                       match=r"^/app: a Supervisor only takes StartChild, .* got Ping$"):
        await app.ask(Ping())

    assert (await children_of(app))["w"].restarts == 0
    assert log.entries == ["start:w"]
    assert len(system.dead_letters) == 0  # the asker heard of it: not a dead letter


# --- static and dynamic children ------------------------------------------------------------


class FailingStart(roost.Actor):
    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start:bad")
        raise ValueError("no database")

    async def receive(self, message: Any) -> Any:
        return None


async def test_a_static_child_failing_its_first_start_fails_the_supervisor_start() -> None:
    log = EventLog()
    tree = Supervisor.spec("app", children=[
        child("a", log), ChildSpec(factory=FailingStart, name="bad", kwargs={"log": log}),
        child("c", log),
    ])
    async with quiet_system() as system:
        with pytest.raises(ActorStartFailed, match=r"/app/bad: on_start failed: ValueError: no database"):
            await system.start(tree)
        assert log.entries == ["start:a", "start:bad", "stop:a"]  # c never started
        for path in ("/app", "/app/a", "/app/bad", "/app/c"):
            with pytest.raises(roost.ActorNotFound):
                system.lookup(path)
    assert system.failure is None
    assert log.entries == ["start:a", "start:bad", "stop:a"]


async def test_start_child_returns_a_running_ref_listed_by_which_children(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log)]))
    ref = await sup.ask(StartChild(child("d", log, restart="transient")))
    assert isinstance(ref, roost.ActorRef)
    assert ref.path == "/app/d"
    assert log.entries == ["start:a", "start:d"]  # started when the reply comes
    assert await ref.ask(Ping()) == "d"
    assert await sup.ask(WhichChildren()) == [
        ChildInfo("a", system.lookup("/app/a"), "running", 0, "permanent"),
        ChildInfo("d", ref, "running", 0, "transient"),
    ]


async def test_start_child_with_a_failing_on_start_raises_to_the_asker(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app"))
    with pytest.raises(ActorStartFailed, match=r"/app/bad: on_start failed"):
        await sup.ask(StartChild(ChildSpec(factory=FailingStart, name="bad", kwargs={"log": log})))
    assert await sup.ask(WhichChildren()) == []
    assert sup.is_alive


async def test_start_child_with_a_taken_name_is_refused(system: roost.ActorSystem) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log)]))
    with pytest.raises(roost.ActorNameTaken, match="/app/a"):
        await sup.ask(StartChild(child("a", log)))
    assert list(await children_of(sup)) == ["a"]


async def test_stop_child_stops_a_permanent_child_for_good_and_keeps_its_spec(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log), child("b", log)]))
    a = system.lookup("/app/a")
    assert await sup.ask(StopChild("a")) is None
    assert not a.is_alive
    children = await children_of(sup)
    assert list(children) == ["a", "b"]  # the spec keeps its place in the start order
    assert children["a"] == ChildInfo("a", None, "stopped", 0, "permanent")
    assert log.entries == ["start:a", "start:b", "stop:a"]
    assert await sup.ask(StopChild("a")) is None  # stopping a stopped child does nothing
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/app/a")


async def test_an_unnamed_static_child_is_named_after_its_class(system: roost.ActorSystem) -> None:
    # ChildSpec.name's documented default (and what SupervisorSpec's duplicate check assumes).
    log = EventLog()
    sup = await system.start(Supervisor.spec(
        "app", children=[ChildSpec(factory=Child, kwargs={"log": log})]))
    assert list(await children_of(sup)) == ["child"]


# --- shutdown -------------------------------------------------------------------------------


async def test_shutdown_stops_everything_in_reverse_start_order_children_before_parents() -> None:
    log = EventLog()
    inner = LoggedSupervisor.spec("inner", children=[child("c", log), child("d", log)], log=log)
    tree = LoggedSupervisor.spec("app", children=[child("a", log), inner, child("b", log)], log=log)
    async with quiet_system() as system:
        await system.start(tree)
        system.spawn(Child, name="x", log=log)
        await log.wait_count("start:x", 1)
    assert log.entries == [
        "start:app", "start:a", "start:inner", "start:c", "start:d", "start:b", "start:x",
        "stop:x", "stop:b", "stop:d", "stop:c", "stop:inner", "stop:a", "stop:app",
    ]


async def test_stopping_a_supervisor_stops_its_children_first_in_reverse_order(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    app = await system.start(LoggedSupervisor.spec(
        "app", children=[child("a", log), child("b", log), child("c", log)], log=log))
    await app.stop()
    assert log.entries == [
        "start:app", "start:a", "start:b", "start:c", "stop:c", "stop:b", "stop:a", "stop:app"]
    assert not app.is_alive
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/app/a")


class Stuck(roost.Actor):
    """An on_stop that never finishes by itself (it can be cancelled)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start:stuck")

    async def on_stop(self) -> None:
        self.log.append("stop:stuck")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append("cancelled:stuck")
            raise

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crashed")


async def test_a_child_stuck_in_on_stop_is_cancelled_at_its_timeout_and_the_system_exits() -> None:
    log = EventLog()
    tree = Supervisor.spec("app", children=[
        child("a", log),
        ChildSpec(factory=Stuck, name="stuck", kwargs={"log": log}, shutdown_timeout=0.1),
        child("c", log),
    ])
    async with quiet_system() as system:
        await system.start(tree)
        started = time.monotonic()
    elapsed = time.monotonic() - started
    assert log.entries == [
        "start:a", "start:stuck", "start:c", "stop:c", "stop:stuck", "cancelled:stuck", "stop:a"]
    assert 0.1 <= elapsed < 4.0, elapsed  # cancelled at its 0.1 s, not the default 5 s
    assert system.statistics()["abandoned"] == 0


async def test_a_child_stuck_in_on_stop_during_a_restart_is_cancelled_and_restarted(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", backoff=NO_BACKOFF, children=[
        ChildSpec(factory=Stuck, name="stuck", kwargs={"log": log}, shutdown_timeout=0.1,
                  poison_after=1),
    ]))
    system.lookup("/app/stuck").tell(Crash())
    await log.wait_count("start:stuck", 2)
    assert log.entries == ["start:stuck", "stop:stuck", "cancelled:stuck", "start:stuck"]
    assert (await children_of(sup))["stuck"].state == "running"


async def test_a_child_swallowing_cancellation_in_on_stop_is_abandoned_and_shutdown_completes() -> None:
    log = EventLog()
    release = asyncio.Event()

    class Stubborn(roost.Actor):
        async def on_stop(self) -> None:
            log.append("stop:stubborn")
            while not release.is_set():
                try:
                    await release.wait()
                except asyncio.CancelledError:
                    log.append("swallowed")
            log.append("released:stubborn")

        async def receive(self, message: Any) -> Any:
            return None

    tree = Supervisor.spec("app", children=[
        child("a", log), ChildSpec(factory=Stubborn, name="stubborn", shutdown_timeout=0.1),
        child("c", log),
    ])
    async with quiet_system() as system:
        await system.start(tree)
        started = time.monotonic()
    elapsed = time.monotonic() - started
    try:
        # Cancelled at its timeout, it swallowed that; it was abandoned and `a` still stopped.
        assert log.entries[:6] == [
            "start:a", "start:c", "stop:c", "stop:stubborn", "swallowed", "stop:a"]
        assert system.statistics()["abandoned"] >= 1
        assert elapsed < 5.0, elapsed
    finally:
        release.set()
    await log.wait_count("released:stubborn", 1)


class Hanging(roost.Actor):
    """An on_start that never finishes by itself."""

    async def on_start(self) -> None:
        await asyncio.Event().wait()

    async def receive(self, message: Any) -> Any:
        return None


async def test_a_child_hanging_in_on_start_fails_its_start_instead_of_returning_a_dead_ref(
    system: roost.ActorSystem,
) -> None:
    with pytest.raises(roost.RoostError, match="/hanging"):
        ref = await system.start(ChildSpec(factory=Hanging, name="hanging", shutdown_timeout=0.1))
        # Reaching this line means start() returned: say what it returned.
        raise AssertionError(f"start() returned {ref!r} (alive: {ref.is_alive}) instead of raising")


class Hold(roost.Message, frozen=True):
    pass


class Holder(roost.Actor):
    """Blocks forever on Hold (logging when cancelled), answers Ping."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.name = self.ctx.self_ref.name

    async def on_start(self) -> None:
        self.log.append(f"start:{self.name}")

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.name}")

    async def receive(self, message: Any) -> Any:
        match message:
            case Hold():
                self.log.append(f"holding:{self.name}")
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    self.log.append(f"killed:{self.name}")
                    raise
            case Crash():
                raise RuntimeError("crashed")
            case Ping():
                return self.name


async def test_a_child_stuck_in_a_message_is_cancelled_at_its_shutdown_timeout_when_stopped(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    holder = system.spawn(Holder, name="holder", log=log, shutdown_timeout=0.1)
    await system.start(Watcher, holder, watched, name="watcher")
    holder.tell(Hold())
    await log.wait_count("holding:holder", 1)
    started = time.monotonic()
    await holder.stop()
    assert time.monotonic() - started < 1.0
    assert log.entries == ["start:holder", "holding:holder", "killed:holder", "stop:holder"]
    await watched.wait_len(1)
    assert watched.entries[0].reason == "killed"


async def test_a_sibling_stuck_in_a_message_does_not_block_a_one_for_all_restart(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", strategy="one_for_all", backoff=NO_BACKOFF, children=[
        ChildSpec(factory=Holder, name="a", kwargs={"log": log}, shutdown_timeout=0.1),
        ChildSpec(factory=Holder, name="b", kwargs={"log": log}, poison_after=1),
    ]))
    a, b = system.lookup("/app/a"), system.lookup("/app/b")
    a.tell(Hold())
    await log.wait_count("holding:a", 1)
    b.tell(Crash())
    await log.wait_count("start:b", 2)
    assert log.entries == ["start:a", "start:b", "holding:a",
                           "stop:b", "killed:a", "stop:a", "start:a", "start:b"]
    assert await a.ask(Ping()) == "a"
    assert {n: i.restarts for n, i in (await children_of(sup)).items()} == {"a": 1, "b": 1}


async def test_an_ask_cut_short_by_a_restart_says_the_actor_was_restarted_and_its_ref_works(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    await system.start(Supervisor.spec("app", strategy="one_for_all", backoff=NO_BACKOFF, children=[
        ChildSpec(factory=Holder, name="a", kwargs={"log": log}, shutdown_timeout=0.1),
        ChildSpec(factory=Holder, name="b", kwargs={"log": log}, poison_after=1),
    ]))
    a, b = system.lookup("/app/a"), system.lookup("/app/b")
    held = asyncio.ensure_future(a.ask(Hold(), timeout=5))
    await log.wait_count("holding:a", 1)
    b.tell(Crash())  # one_for_all: a is restarted too, and its Hold is cancelled at 0.1 s

    with pytest.raises(ActorRestarted) as cut:
        await held
    assert isinstance(cut.value, roost.ActorStopped)  # what existing handlers catch
    assert (cut.value.actor, cut.value.reason) == ("/app/a", "killed")
    assert "handling Hold was cut short by a restart of this actor" in str(cut.value)
    assert "the ref is still usable" in str(cut.value)
    assert "spawn a new actor" not in str(cut.value)
    assert await a.ask(Ping()) == "a"
    assert a.is_alive


async def test_a_temporary_sibling_killed_by_a_group_restart_reports_stopped_not_restarted(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    await system.start(Supervisor.spec("app", strategy="one_for_all", backoff=NO_BACKOFF, children=[
        ChildSpec(factory=Holder, name="t", kwargs={"log": log}, shutdown_timeout=0.1,
                  restart="temporary"),
        ChildSpec(factory=Holder, name="b", kwargs={"log": log}, poison_after=1),
    ]))
    t, b = system.lookup("/app/t"), system.lookup("/app/b")
    held = asyncio.ensure_future(t.ask(Hold(), timeout=5))
    await log.wait_count("holding:t", 1)
    b.tell(Crash())

    with pytest.raises(roost.ActorStopped) as cut:
        await held
    assert not isinstance(cut.value, ActorRestarted)
    assert cut.value.reason == "killed"
    assert (await system.join(t)).reason == "killed"
    await log.wait_count("start:b", 2)
    assert log.entries == ["start:t", "start:b", "holding:t",
                           "stop:b", "killed:t", "stop:t", "start:b"]


# --- watch ----------------------------------------------------------------------------------


async def test_terminated_is_delivered_once_when_a_watched_actor_stops(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    target = system.spawn(Child, name="target", log=log)
    watcher = await system.start(Watcher, target, watched, name="watcher")
    await system.start(Watcher, target, watched, name="second")
    await target.stop()
    await watched.wait_len(2)
    assert await watcher.ask(Ping()) == "pong"  # nothing more is queued for the watcher
    assert [(t.ref, t.reason, t.error) for t in watched.entries] == [
        (target, "normal", None), (target, "normal", None)]


class DoubleWatcher(Watcher):
    """Watches its target twice: still one Terminated."""

    async def on_start(self) -> None:
        self.ctx.watch(self.target)
        self.ctx.watch(self.target)


async def test_watching_twice_still_delivers_terminated_once(system: roost.ActorSystem) -> None:
    log, watched = EventLog(), EventLog()
    target = system.spawn(Child, name="target", log=log)
    watcher = await system.start(DoubleWatcher, target, watched, name="watcher")
    await target.stop()
    await watched.wait_len(1)
    assert await watcher.ask(Ping()) == "pong"
    assert len(watched.entries) == 1


async def test_watching_an_actor_that_already_stopped_delivers_terminated_at_once(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    target = system.spawn(Child, name="target", log=log)
    await target.stop()
    watcher = await system.start(Watcher, target, watched, name="watcher")
    await watched.wait_len(1)
    assert await watcher.ask(Ping()) == "pong"
    (terminated,) = watched.entries
    assert (terminated.ref, terminated.reason) == (target, "normal")


async def test_a_restart_of_a_watched_actor_delivers_no_terminated(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    target = system.spawn(Child, name="target", log=log, restart="permanent", poison_after=1)
    watcher = await system.start(Watcher, target, watched, name="watcher")
    await crash_and_wait_restart(target, log)
    target.tell(Quit())  # permanent: a normal exit is restarted too
    await log.wait_count("start:target", 3)
    assert await watcher.ask(Ping()) == "pong"
    assert watched.entries == []
    await target.stop()
    await watched.wait_len(1)
    assert watched.entries[0].reason == "normal"


# --- stop reasons ---------------------------------------------------------------------------


async def test_an_on_stop_cancelled_at_its_shutdown_timeout_reports_killed(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    stuck = await system.start(Stuck, log, name="stuck", shutdown_timeout=0.05)
    await system.start(Watcher, stuck, watched, name="watcher")
    await stuck.stop()
    assert log.entries == ["start:stuck", "stop:stuck", "cancelled:stuck"]
    await watched.wait_len(1)
    (terminated,) = watched.entries
    assert (terminated.ref, terminated.reason, terminated.error) == (stuck, "killed", None)
    assert terminated.reason is roost.StopReason.KILLED
    assert await system.join(stuck) == terminated


class Failer(roost.Actor):
    """Holds each message until its gate opens, then fails."""

    def __init__(self, gate: asyncio.Event, log: EventLog) -> None:
        self.gate = gate
        self.log = log

    async def receive(self, message: Any) -> Any:
        self.log.append("holding")
        await self.gate.wait()
        raise RuntimeError("failed while its supervisor stopped")


async def test_a_child_crashing_while_its_supervisor_stops_reports_failure_with_the_error(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    gate = asyncio.Event()
    sup = await system.start(Supervisor.spec("app", children=[
        ChildSpec(factory=Failer, name="w", kwargs={"gate": gate, "log": log}), child("z", log),
    ]))
    w = system.lookup("/app/w")
    await system.start(Watcher, w, watched, name="watcher")
    w.tell(Hold())
    await log.wait_count("holding", 1)
    stopping = asyncio.ensure_future(sup.stop())
    await log.wait_count("stop:z", 1)  # the supervisor is stopping its children, z first
    gate.set()  # w fails now: its supervisor no longer restarts anything
    await stopping
    await watched.wait_len(1)
    (terminated,) = watched.entries
    assert terminated.reason == "failure"
    assert isinstance(terminated.error, RuntimeError)
    assert str(terminated.error) == "failed while its supervisor stopped"


async def test_the_children_of_a_supervisor_that_gives_up_report_failure(
    system: roost.ActorSystem,
) -> None:
    log, watched = EventLog(), EventLog()
    tree = Supervisor.spec("app", max_restarts=0, backoff=NO_BACKOFF,
                           children=[child("a", log), child("b", log), child("c", log)])
    sup = await system.start(ChildSpec(factory=tree, restart="temporary"))
    refs = [sup, *(system.lookup(f"/app/{name}") for name in "abc")]
    for i, ref in enumerate(refs):
        await system.start(Watcher, ref, watched, name=f"watcher-{i}")
    refs[2].tell(Crash())  # b: no restart is allowed
    await watched.wait_len(4)
    ended = {t.ref.path: (t.reason, type(t.error).__name__, str(t.error)[:30])
             for t in watched.entries}
    exceeded = ("failure", "IntensityExceeded", "/app: more than 0 restarts wit")
    assert ended == {
        "/app": exceeded,
        "/app/a": exceeded,  # given up on with their supervisor
        "/app/b": ("failure", "RuntimeError", "b crashed"),  # the offender: its own crash
        "/app/c": exceeded,
    }
    assert log.entries[3:] == ["stop:c", "stop:b", "stop:a"]


# --- shutdown timeouts 0 and infinity -------------------------------------------------------


async def test_a_shutdown_timeout_of_0_stops_at_once_without_on_stop(
    system: roost.ActorSystem,
) -> None:
    # OTP's brutal_kill: the message in progress is cancelled at once, on_stop does not run.
    log, watched = EventLog(), EventLog()
    holder = await system.start(Holder, log, name="holder", shutdown_timeout=0)
    idle = await system.start(Child, log, name="idle", shutdown_timeout=0)
    await system.start(Watcher, holder, watched, name="watcher")
    holder.tell(Hold())
    await log.wait_count("holding:holder", 1)
    started = time.monotonic()
    await holder.stop()
    await idle.stop()
    assert time.monotonic() - started < 0.5
    assert log.entries == ["start:holder", "start:idle", "holding:holder", "killed:holder"]
    await watched.wait_len(1)
    assert watched.entries[0].reason == "killed"
    assert (await system.join(idle)).reason == "killed"  # its on_stop was cut


async def test_a_child_with_a_shutdown_timeout_of_0_still_starts_and_restarts(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", backoff=NO_BACKOFF, children=[
        child("w", log, shutdown_timeout=0)]))
    w = system.lookup("/app/w")
    await crash_and_wait_restart(w, log)
    assert await w.ask(Ping()) == "w"
    assert log.entries == ["start:w", "start:w"]  # no on_stop on the way
    assert (await children_of(sup))["w"].restarts == 1


class Lingering(roost.Actor):
    """An on_stop that ends only when its gate opens."""

    def __init__(self, gate: asyncio.Event, log: EventLog) -> None:
        self.gate = gate
        self.log = log

    async def on_stop(self) -> None:
        self.log.append("stopping")
        await self.gate.wait()
        self.log.append("stopped")

    async def receive(self, message: Any) -> Any:
        return None


async def test_an_infinite_shutdown_timeout_waits_for_on_stop_to_finish(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    gate = asyncio.Event()
    ref = await system.start(Lingering, gate, log, name="lingering", shutdown_timeout=math.inf)
    stopping = asyncio.ensure_future(ref.stop())
    await log.wait_count("stopping", 1)
    assert not stopping.done()
    gate.set()
    await stopping
    assert log.entries == ["stopping", "stopped"]
    assert (await system.join(ref)).reason == "normal"


# --- kept specs: StopChild, RestartChild, DeleteChild ---------------------------------------


async def test_restart_child_starts_a_stopped_child_again_in_its_place(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log), child("b", log)]))
    old = system.lookup("/app/a")
    await sup.ask(StopChild("a"))
    new = await sup.ask(RestartChild("a"))
    assert isinstance(new, roost.ActorRef)
    assert new is not old and not old.is_alive  # OTP: a new process
    assert system.lookup("/app/a") is new
    assert await new.ask(Ping()) == "a"
    assert log.entries == ["start:a", "start:b", "stop:a", "start:a"]
    assert await sup.ask(WhichChildren()) == [
        ChildInfo("a", new, "running", 0, "permanent"),
        ChildInfo("b", system.lookup("/app/b"), "running", 0, "permanent"),
    ]
    await sup.stop()  # still in its place: stopped after b
    assert log.entries[4:] == ["stop:b", "stop:a"]


async def test_restart_child_keeps_the_spec_when_the_start_fails(
    system: roost.ActorSystem,
) -> None:
    failing = False

    class Flaky(roost.Actor):
        async def on_start(self) -> None:
            if failing:
                raise OSError("not now")

        async def receive(self, message: Any) -> Any:
            return "up"

    sup = await system.start(Supervisor.spec("app", children=[
        ChildSpec(factory=Flaky, name="f"), ChildSpec(factory=Flaky, name="g")]))
    await sup.ask(StopChild("f"))
    failing = True
    with pytest.raises(ActorStartFailed, match=r"/app/f: on_start failed: OSError: not now"):
        await sup.ask(RestartChild("f"))
    failing = False
    infos = await children_of(sup)
    assert list(infos) == ["f", "g"]
    assert infos["f"].state == "stopped"
    again = await sup.ask(RestartChild("f"))
    assert await again.ask(Ping()) == "up"


async def test_delete_child_forgets_a_stopped_child_and_frees_its_name(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log), child("b", log)]))
    await sup.ask(StopChild("a"))
    assert await sup.ask(DeleteChild("a")) is None
    assert list(await children_of(sup)) == ["b"]
    with pytest.raises(ChildNotFound):
        await sup.ask(RestartChild("a"))
    fresh = await sup.ask(StartChild(child("a", log)))
    assert list(await children_of(sup)) == ["b", "a"]
    assert await fresh.ask(Ping()) == "a"


async def test_a_stopped_childs_kept_name_is_refused_to_a_new_child(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log)]))
    await sup.ask(StopChild("a"))
    with pytest.raises(ChildAlreadyPresent,
                       match=r"^/app: a stopped child named 'a' is kept; start it again with "
                             r"RestartChild\('a'\) or remove it with DeleteChild\('a'\) first$"):
        await sup.ask(StartChild(child("a", log)))
    with pytest.raises(roost.ActorNameTaken):  # what it is a kind of
        await sup.ask(StartChild(child("a", log)))


@pytest.mark.parametrize("command", [RestartChild, DeleteChild])
async def test_restart_child_and_delete_child_refuse_a_running_child(
    system: roost.ActorSystem, command: type,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log)]))
    operation = "restart" if command is RestartChild else "delete"
    with pytest.raises(ChildNotStopped,
                       match=rf"^/app: cannot {operation} child 'a': it is running, not stopped; "
                             r"send StopChild\('a'\) first$") as caught:
        await sup.ask(command("a"))
    assert (caught.value.supervisor, caught.value.name, caught.value.state) == (
        "/app", "a", "running")
    assert (await children_of(sup))["a"].state == "running"


@pytest.mark.parametrize("command", [StopChild, RestartChild, DeleteChild])
async def test_a_command_naming_an_unknown_child_raises_child_not_found(
    system: roost.ActorSystem, command: type,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[child("a", log), child("b", log)]))
    with pytest.raises(ChildNotFound,
                       match=r"^/app: no child named 'x' \(children: a, b\); check the name, "
                             r"e\.g\. with WhichChildren$") as caught:
        await sup.ask(command("x"))
    assert (caught.value.supervisor, caught.value.name, caught.value.known) == (
        "/app", "x", ["a", "b"])
    assert sup.is_alive


async def test_a_stopped_temporary_child_is_forgotten(system: roost.ActorSystem) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", children=[
        child("t", log, restart="temporary"), child("b", log)]))
    t = system.lookup("/app/t")
    await sup.ask(StopChild("t"))
    await system.join(t)
    assert list(await children_of(sup)) == ["b"]
    with pytest.raises(ChildNotFound):
        await sup.ask(RestartChild("t"))


async def test_a_kept_stopped_child_is_not_started_by_a_group_restart(
    system: roost.ActorSystem,
) -> None:
    log = EventLog()
    sup = await system.start(Supervisor.spec("app", strategy="one_for_all", backoff=NO_BACKOFF,
                                             children=[child("a", log), child("b", log)]))
    await sup.ask(StopChild("a"))
    await crash_and_wait_restart(system.lookup("/app/b"), log)
    assert log.entries == ["start:a", "start:b", "stop:a", "stop:b", "start:b"]
    assert {n: i.state for n, i in (await children_of(sup)).items()} == {
        "a": "stopped", "b": "running"}


# --- backoff reset --------------------------------------------------------------------------


async def test_the_backoff_does_not_reset_while_a_crash_loop_waits_out_its_delays() -> None:
    # The wait before a restart is not clean running: even when it outlasts reset_after
    # (the clock is moved past it during the wait), the next crash is the next in a row.
    clock = FakeClock()
    starts: list[float] = []
    log = EventLog()
    backoff = Backoff(initial=0.2, maximum=0.2, jitter=0.0, reset_after=10.0)
    spec = ChildSpec(factory=Stamper, name="w", kwargs={"starts": starts, "log": log},
                     poison_after=1)
    async with quiet_system(clock=clock) as system:
        sup = await system.start(Supervisor.spec("app", max_restarts=20, within=60.0,
                                                 backoff=backoff, children=[spec]))
        w = system.lookup("/app/w")
        w.tell(Crash())  # first in a row: immediate
        await log.wait_count("start", 2)
        w.tell(Crash())  # second in a row: waits 0.2 s
        await child_state(sup, "w", "suspended")
        clock.advance(11.0)  # ... and that wait "took" longer than reset_after
        await log.wait_count("start", 3)
        w.tell(Crash())  # it crashed at once after its restart: third in a row, waits again
        await log.wait_count("start", 4)
    _, second, third = (b - a for a, b in itertools.pairwise(starts))
    assert second >= 0.199
    assert third >= 0.199, "the backoff was reset by the wait before the last restart"
