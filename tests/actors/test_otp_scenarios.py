"""Supervision as a careful OTP/Akka user expects it, through roost's public API only.

Each test is a scenario an outside user would try: which siblings a strategy restarts and in
what order, intensity and escalation, restart types, shutdown order and timeouts, death watch,
asks around restarts, failing lifecycle hooks, grandchildren, name reuse, dynamic children,
shutdown with a busy actor, and pool workers. Tests wait on events, never on wall-clock time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import roost

pytestmark = pytest.mark.anyio

NO_BACKOFF = roost.Backoff(initial=0.0, maximum=0.0)


class Log:
    """Lifecycle events in order, with waits on them."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self._changed = asyncio.Event()

    def append(self, entry: Any) -> None:
        self.entries.append(entry)
        self._changed.set()

    async def wait(self, predicate: Callable[[list[Any]], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate(self.entries):
                self._changed.clear()
                await self._changed.wait()

    async def wait_for(self, entry: Any, count: int = 1) -> None:
        await self.wait(lambda entries: entries.count(entry) >= count)


class Crash(roost.Message):
    pass


class Quit(roost.Message):
    pass


class Add(roost.Message):
    n: int


class Get(roost.Message):
    pass


class Worker(roost.Actor):
    """Logs its lifecycle; crashes on Crash, ends itself on Quit, counts Adds."""

    def __init__(self, log: Log) -> None:
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
                self.ctx.stop()
            case Add(n=n):
                self.total += n
                return self.total
            case Get():
                return self.total
        return None


def spec(name: str, log: Log, **options: Any) -> roost.ChildSpec:
    options.setdefault("poison_after", 1)
    return roost.ChildSpec(factory=Worker, name=name, kwargs={"log": log}, **options)


async def children(sup: roost.ActorRef) -> dict[str, roost.ChildInfo]:
    return {info.name: info for info in await sup.ask(roost.WhichChildren())}


async def suspended(sup: roost.ActorRef, name: str) -> None:
    """Poll until the supervisor reports its child `name` suspended (no event marks it)."""
    for _ in range(3000):
        if (await children(sup))[name].state == "suspended":
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"{name} never became suspended: {await children(sup)}")


def system(**options: Any) -> roost.ActorSystem:
    return roost.ActorSystem(log_format="json", log_level="critical", **options)


def tree(log: Log, strategy: str, **options: Any) -> roost.SupervisorSpec:
    return roost.Supervisor.spec(
        "sup", strategy=strategy, backoff=NO_BACKOFF, max_restarts=options.pop("max_restarts", 5),
        children=[spec(n, log) for n in ("a", "b", "c")], **options)


# --- strategies ---------------------------------------------------------------------------


@pytest.mark.parametrize(("strategy", "expected"), [
    ("one_for_one", ["start:b"]),
    ("one_for_all", ["stop:c", "stop:b", "stop:a", "start:a", "start:b", "start:c"]),
    ("rest_for_one", ["stop:c", "stop:b", "start:b", "start:c"]),
])
async def test_a_strategy_restarts_its_group_in_order_with_fresh_state(
        strategy: str, expected: list[str]) -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(tree(log, strategy))
        refs = {name: info.ref for name, info in (await children(sup)).items()}
        for ref in refs.values():
            await ref.ask(Add(5))
        del log.entries[:]
        refs["b"].tell(Crash())
        await log.wait(lambda e: e.count("start:b") == 1 and len(e) >= len(expected))
        for ref in refs.values():  # every restart is over once each answers
            await ref.ask(Get())
        # one_for_one restarts b alone; its old instance's on_stop runs before the new start
        assert [e for e in log.entries if e != "stop:b" or "stop:b" in expected] == expected
        restarted = {entry.split(":")[1] for entry in expected if entry.startswith("start:")}
        for name, ref in refs.items():
            assert await ref.ask(Get()) == (0 if name in restarted else 5), name


# --- intensity ----------------------------------------------------------------------------


async def test_past_its_intensity_a_nested_supervisor_fails_and_its_parent_restarts_it() -> None:
    log = Log()
    inner = roost.Supervisor.spec("inner", max_restarts=1, within=60.0, backoff=NO_BACKOFF,
                                  children=[spec("a", log)])
    outer = roost.Supervisor.spec("outer", max_restarts=3, within=60.0, backoff=NO_BACKOFF,
                                  children=[inner, spec("z", log)])
    async with system() as sys:
        top = await sys.start(outer)
        inner_ref = (await children(top))["inner"].ref
        first_a = (await children(inner_ref))["a"].ref
        first_a.tell(Crash())
        await log.wait_for("start:a", 2)
        first_a.tell(Crash())  # the second restart exceeds inner's intensity of 1
        await log.wait_for("start:a", 3)
        info = (await children(top))["inner"]
        assert info.restarts == 1
        assert info.ref is inner_ref  # same ref, fresh instance
        assert log.entries.count("start:z") == 1  # one_for_one: the sibling was untouched


async def test_max_restarts_zero_gives_up_at_the_first_failure() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", max_restarts=0, children=[spec("a", log)]), restart="temporary")
        (await children(sup))["a"].ref.tell(Crash())
        ended = await sys.join(sup)
        assert ended.reason == "failure"
        assert isinstance(ended.error, roost.IntensityExceeded)
        assert log.entries.count("start:a") == 1


async def test_the_root_failing_fails_the_system() -> None:
    log = Log()
    outcome: list[BaseException] = []
    try:
        async with system(max_restarts=1, within=60.0) as sys:
            ref = sys.spawn(Worker, log, name="w", restart="permanent", poison_after=1)
            await log.wait_for("start:w")
            ref.tell(Crash())
            await log.wait_for("start:w", 2)
            ref.tell(Crash())  # past the root's intensity: the system fails
            await asyncio.Event().wait()  # cancelled by the root's failure
    except roost.IntensityExceeded as error:
        outcome.append(error)
    assert len(outcome) == 1


# --- restart types ------------------------------------------------------------------------


async def test_restart_types_after_normal_exit_and_crash() -> None:
    log = Log()
    children_specs = [spec("perm", log, restart="permanent"),
                      spec("trans", log, restart="transient"),
                      spec("temp", log, restart="temporary")]
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", backoff=NO_BACKOFF, max_restarts=10,
                                                    children=children_specs))
        refs = {name: info.ref for name, info in (await children(sup)).items()}
        for ref in refs.values():
            ref.tell(Quit())
        await log.wait_for("start:perm", 2)
        assert (await sys.join(refs["trans"])).reason == "normal"
        assert (await sys.join(refs["temp"])).reason == "normal"
        infos = await children(sup)
        assert infos["perm"].state == "running"
        assert infos["trans"].state == "stopped"
        assert "temp" not in infos
        await sup.ask(roost.RestartChild("trans"))
        infos = await children(sup)
        infos["trans"].ref.tell(Crash())
        await log.wait_for("start:trans", 3)
        refs["perm"].tell(Crash())
        await log.wait_for("start:perm", 3)


async def test_a_temporary_child_that_crashes_is_not_restarted_and_is_forgotten() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", children=[spec("temp", log, restart="temporary")]))
        ref = (await children(sup))["temp"].ref
        ref.tell(Crash())
        ended = await sys.join(ref)
        assert ended.reason == "failure"
        assert isinstance(ended.error, RuntimeError)
        assert "temp" not in await children(sup)


# --- backoff ------------------------------------------------------------------------------


async def test_a_child_waiting_out_its_backoff_is_suspended_and_then_restarted() -> None:
    log = Log()
    backoff = roost.Backoff(initial=0.2, maximum=0.2, jitter=0.0)
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", backoff=backoff, max_restarts=10, children=[spec("a", log)]))
        ref = (await children(sup))["a"].ref
        ref.tell(Crash())
        await log.wait_for("start:a", 2)
        ref.tell(Crash())  # the second in a row waits its backoff
        await suspended(sup, "a")
        assert log.entries.count("start:a") == 2
        ref.tell(Add(1))  # queued while suspended: handled by the next instance
        await log.wait_for("start:a", 3)
        assert await ref.ask(Get()) == 1


# --- shutdown -----------------------------------------------------------------------------


async def test_children_stop_in_reverse_start_order_dynamic_ones_included() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", backoff=NO_BACKOFF, children=[spec("a", log), spec("b", log)]))
        await sup.ask(roost.StartChild(spec("d1", log)))
        await sup.ask(roost.StartChild(spec("d2", log)))
        (await children(sup))["a"].ref.tell(Crash())  # a restart keeps its place
        await log.wait_for("start:a", 2)
        del log.entries[:]
        await sys.stop(sup)
        assert log.entries == ["stop:d2", "stop:d1", "stop:b", "stop:a"]


class Stubborn(roost.Actor):
    """Ignores cancellation while handling its message (Python cannot kill a task)."""

    def __init__(self, log: Log, release: asyncio.Event) -> None:
        self.log = log
        self.release = release

    async def receive(self, message: Any) -> Any:
        self.log.append("busy")
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.log.append("ignored")
        return None


class SlowStop(roost.Actor):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def receive(self, message: Any) -> Any:
        return None

    async def on_stop(self) -> None:
        self.log.append("slow_stop")
        await asyncio.Event().wait()


async def test_a_slow_on_stop_is_killed_at_its_timeout_and_shutdown_goes_on() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", children=[
            spec("a", log),
            roost.ChildSpec(factory=SlowStop, name="slow", kwargs={"log": log},
                            shutdown_timeout=0.05),
            spec("c", log)]))
        slow = (await children(sup))["slow"].ref
        await sys.stop(sup)
        assert log.entries[-3:] == ["stop:c", "slow_stop", "stop:a"]
        assert (await sys.join(slow)).reason == "killed"


async def test_a_child_that_ignores_its_stop_is_abandoned_and_shutdown_goes_on() -> None:
    log = Log()
    release = asyncio.Event()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", children=[
            spec("a", log),
            roost.ChildSpec(factory=Stubborn, name="stubborn",
                            kwargs={"log": log, "release": release}, shutdown_timeout=0.05)]))
        stubborn = (await children(sup))["stubborn"].ref
        stubborn.tell(Get())
        await log.wait_for("busy")
        await sys.stop(sup)
        assert "stop:a" in log.entries
        assert (await sys.join(stubborn)).reason == "killed"
        assert sys.statistics()["abandoned"] == 1
        release.set()


# --- death watch --------------------------------------------------------------------------


class Watching(roost.Actor):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def receive(self, message: Any) -> Any:
        match message:
            case roost.Terminated(ref=ref, reason=reason):
                self.log.append(("terminated", ref.name, str(reason)))
            case ("watch", ref):
                self.ctx.watch(ref)
            case ("unwatch", ref):
                self.ctx.unwatch(ref)
        return None


async def test_watch_delivers_terminated_once_not_on_restart_and_at_once_when_dead() -> None:
    log, watch_log = Log(), Log()
    async with system() as sys:
        watcher = sys.spawn(Watching, watch_log, name="watcher")
        target = sys.spawn(Worker, log, name="t", restart="permanent", poison_after=1)
        await watcher.ask(("watch", target))
        await watcher.ask(("watch", target))  # watching twice is one watch
        target.tell(Crash())
        await log.wait_for("start:t", 2)
        await watcher.ask(("noop",))  # the watcher has handled all it was sent
        assert watch_log.entries == []  # a restart is not a termination
        await sys.stop(target)
        await watch_log.wait_for(("terminated", "t", "normal"))
        await watcher.ask(("watch", target))  # already dead: at once
        await watch_log.wait_for(("terminated", "t", "normal"), 2)
        await watcher.ask(("noop",))
        assert len(watch_log.entries) == 2


async def test_unwatch_means_no_terminated() -> None:
    log, watch_log = Log(), Log()
    async with system() as sys:
        watcher = sys.spawn(Watching, watch_log, name="watcher")
        target = sys.spawn(Worker, log, name="t")
        await watcher.ask(("watch", target))
        await watcher.ask(("unwatch", target))
        await sys.stop(target)
        await watcher.ask(("noop",))
        assert watch_log.entries == []


# --- asks and mailboxes around restarts -----------------------------------------------------


async def test_ask_to_a_dead_actor_fails_at_once() -> None:
    log = Log()
    async with system() as sys:
        ref = sys.spawn(Worker, log, name="w")
        await sys.stop(ref)
        with pytest.raises(roost.ActorStopped):
            await ref.ask(Get(), timeout=60.0)
        ref.tell(Get())
        assert sys.dead_letters.counts().get("actor_stopped") == 1


async def test_messages_queued_behind_a_crash_survive_the_restart() -> None:
    log = Log()
    async with system() as sys:
        ref = sys.spawn(Worker, log, name="w", poison_after=1)
        await ref.ask(Add(10))
        ref.tell(Crash())
        ref.tell(Add(1))
        ref.tell(Add(2))
        assert await ref.ask(Get()) == 3  # fresh state, queued messages kept
        assert log.entries.count("start:w") == 2


class Hang(roost.Message):
    pass


class Sleeper(roost.Actor):
    async def receive(self, message: Any) -> Any:
        match message:
            case Hang():
                await asyncio.Event().wait()
            case Crash():
                raise RuntimeError("crash")
        return "ok"


async def test_an_ask_cut_short_by_a_group_restart_raises_actor_restarted() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", strategy="one_for_all", backoff=NO_BACKOFF, children=[
                roost.ChildSpec(factory=Sleeper, name="sleeper", shutdown_timeout=0.05),
                spec("b", log)]))
        infos = await children(sup)
        pending = asyncio.ensure_future(infos["sleeper"].ref.ask(Hang(), timeout=60.0))
        await asyncio.sleep(0.01)
        infos["b"].ref.tell(Crash())
        with pytest.raises(roost.ActorRestarted):
            await pending
        assert await infos["sleeper"].ref.ask(Get()) == "ok"


# --- lifecycle hook failures --------------------------------------------------------------


class FailingStart(roost.Actor):
    starts = 0

    async def on_start(self) -> None:
        type(self).starts += 1
        if type(self).starts > 1:
            raise RuntimeError("on_start failed")

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crash")


async def test_a_restart_whose_on_start_fails_counts_toward_the_intensity() -> None:
    FailingStart.starts = 0
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", max_restarts=3, within=60.0, backoff=NO_BACKOFF,
            children=[roost.ChildSpec(factory=FailingStart, name="f", poison_after=1)]),
            restart="temporary")
        (await children(sup))["f"].ref.tell(Crash())
        ended = await sys.join(sup)
        assert isinstance(ended.error, roost.IntensityExceeded)
        assert FailingStart.starts == 4  # the first start, then 3 failed restarts


class FailingStop(roost.Actor):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crash")

    async def on_stop(self) -> None:
        raise RuntimeError("on_stop failed")


async def test_an_on_stop_that_raises_does_not_stop_the_restart_or_the_shutdown() -> None:
    log = Log()
    async with system() as sys:
        ref = sys.spawn(FailingStop, log, name="f", poison_after=1)
        ref.tell(Crash())
        await log.wait_for("start", 2)
        await sys.stop(ref)
        assert (await sys.join(ref)).reason == "normal"


async def test_a_static_child_failing_its_first_start_fails_the_supervisors_start() -> None:
    FailingStart.starts = 1  # every start fails
    async with system() as sys:
        with pytest.raises(roost.ActorStartFailed):
            await sys.start(roost.Supervisor.spec(
                "sup", children=[roost.ChildSpec(factory=FailingStart, name="f")]))
        with pytest.raises(roost.ActorNotFound):
            sys.lookup("/sup")


class BadConfig(roost.Actor):
    def __init__(self) -> None:
        raise ValueError("no model configured")


async def test_an_init_that_raises_fails_the_start_and_the_supervisor_carries_on() -> None:
    async with system() as sys:
        with pytest.raises(roost.ActorStartFailed, match=r"/b: __init__ failed: ValueError"):
            await sys.start(BadConfig, name="b")
        sup = await sys.start(roost.Supervisor.spec("sup"))
        with pytest.raises(roost.ActorStartFailed) as failed:
            await sup.ask(roost.StartChild(roost.ChildSpec(factory=BadConfig, name="c")))

        assert (failed.value.actor, failed.value.during) == ("/sup/c", "__init__")
        assert isinstance(failed.value.cause, ValueError)
        assert await sup.ask(roost.WhichChildren()) == []


# --- grandchildren ------------------------------------------------------------------------


class Parent(roost.Actor):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.kid = self.ctx.spawn(Worker, self.log, name="kid")

    async def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("crash")
        return self.kid


async def test_grandchildren_stop_with_their_parent_and_on_its_restart() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", backoff=NO_BACKOFF, children=[
            roost.ChildSpec(factory=Parent, name="p", kwargs={"log": log}, poison_after=1)]))
        parent = (await children(sup))["p"].ref
        first_kid = await parent.ask(Get())
        parent.tell(Crash())
        await log.wait_for("start:kid", 2)
        assert (await sys.join(first_kid)).reason == "normal"
        second_kid = await parent.ask(Get())
        assert second_kid is not first_kid and second_kid.is_alive
        await sys.stop(sup)
        assert not second_kid.is_alive
        assert log.entries[-1] == "stop:kid"


# --- names and dynamic children -----------------------------------------------------------


async def test_a_name_is_free_again_once_its_actor_stopped() -> None:
    log = Log()
    async with system() as sys:
        first = sys.spawn(Worker, log, name="w")
        with pytest.raises(roost.ActorNameTaken):
            sys.spawn(Worker, log, name="w")
        await sys.stop(first)
        second = sys.spawn(Worker, log, name="w")
        assert second is not first and sys.lookup("/w") is second
        await second.ask(Get())


async def test_a_name_is_free_again_once_a_crashed_transient_actor_gave_up() -> None:
    log = Log()
    async with system() as sys:
        first = sys.spawn(Worker, log, name="w", restart="temporary")
        first.tell(Crash())
        await sys.join(first)
        second = sys.spawn(Worker, log, name="w")
        assert await second.ask(Add(1)) == 1


async def test_dynamic_children_are_supervised_and_can_be_removed() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", backoff=NO_BACKOFF))
        ref = await sup.ask(roost.StartChild(spec("d", log)))
        with pytest.raises(roost.ActorNameTaken):  # a running child has the name
            await sup.ask(roost.StartChild(spec("d", log)))
        ref.tell(Crash())
        await log.wait_for("start:d", 2)
        await sup.ask(roost.StopChild("d"))
        assert not ref.is_alive
        assert (await children(sup))["d"].state == "stopped"
        with pytest.raises(roost.ChildAlreadyPresent):
            await sup.ask(roost.StartChild(spec("d", log)))
        await sup.ask(roost.DeleteChild("d"))
        assert await children(sup) == {}
        again = await sup.ask(roost.StartChild(spec("d", log)))
        assert await again.ask(Add(2)) == 2
        with pytest.raises(roost.ChildNotFound):
            await sup.ask(roost.StopChild("nope"))


# --- system shutdown with a busy actor ----------------------------------------------------


async def test_stopping_the_system_with_a_busy_actor() -> None:
    async with system() as sys:
        ref = sys.spawn(Sleeper, name="busy", shutdown_timeout=0.05)
        pending = asyncio.ensure_future(ref.ask(Hang(), timeout=60.0))
        queued = asyncio.ensure_future(ref.ask(Get(), timeout=60.0))
        await asyncio.sleep(0.01)
    with pytest.raises(roost.ActorStopped):
        await pending
    with pytest.raises(roost.ActorStopped):
        await queued
    assert not ref.is_alive


# --- pools --------------------------------------------------------------------------------


class PoolWorker(roost.Actor):
    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(f"start:{self.ctx.self_ref.name}")

    async def receive(self, message: Any) -> Any:
        match message:
            case Crash():
                raise RuntimeError("worker crash")
        return self.ctx.self_ref.name


async def test_a_crash_inside_a_pool_worker_restarts_only_that_worker() -> None:
    log = Log()
    async with system() as sys:
        pool = await sys.start(roost.Pool.spec("pool", PoolWorker, size=2, kwargs={"log": log},
                                               backoff=NO_BACKOFF, poison_after=1))
        with pytest.raises(RuntimeError):
            await pool.ask(Crash())  # an asked crash answers the asker, no restart
        assert sorted(log.entries) == ["start:pool-1", "start:pool-2"]
        pool.tell(Crash())  # a told crash restarts that worker alone
        await log.wait(lambda e: len(e) == 3)
        assert sorted(set(log.entries)) == ["start:pool-1", "start:pool-2"]
        names = {await pool.ask(Get()) for _ in range(4)}
        assert names == {"pool-1", "pool-2"}


# --- restarts bound each step on its own, as stops do ---------------------------------------


class SlowHooks(roost.Actor):
    """Takes 0.3 s in on_stop and again in on_start: each well within its 0.5 s timeout."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        await asyncio.sleep(0.3)
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crash")

    async def on_stop(self) -> None:
        await asyncio.sleep(0.3)
        self.log.append("stop")


async def test_a_restart_gives_on_stop_and_on_start_each_their_own_timeout() -> None:
    log = Log()
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", max_restarts=1, backoff=NO_BACKOFF,
                                                    children=[roost.ChildSpec(
                                                        factory=SlowHooks, name="slow",
                                                        kwargs={"log": log}, poison_after=1,
                                                        shutdown_timeout=0.5)]))
        (await children(sup))["slow"].ref.tell(Crash())
        await log.wait_for("start", 2)
        info = (await children(sup))["slow"]
        assert (info.state, info.restarts) == ("running", 1)
        assert log.entries == ["start", "stop", "start"]


class SlowStopKid(roost.Actor):
    slow = True  # the test turns it off once it saw the restart, so shutdown is quick

    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(f"start:{self.ctx.self_ref.name}")

    async def receive(self, message: Any) -> Any:
        return None

    async def on_stop(self) -> None:
        if SlowStopKid.slow:
            await asyncio.sleep(0.6)
        self.log.append(f"stop:{self.ctx.self_ref.name}")


async def test_a_group_restart_waits_for_a_nested_supervisor_whose_children_stop_slowly() -> None:
    # Each child stops within its own timeout, but together they take longer than the
    # nested supervisor's timeout and the grace after it: that is no reason to abandon it.
    log = Log()
    SlowStopKid.slow = True
    inner = roost.Supervisor.spec("inner", children=[
        roost.ChildSpec(factory=SlowStopKid, name=name, kwargs={"log": log}, shutdown_timeout=1.0)
        for name in ("k1", "k2")])
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec(
            "sup", strategy="one_for_all", backoff=NO_BACKOFF,
            children=[roost.ChildSpec(factory=inner, shutdown_timeout=0.05), spec("b", log)]))
        (await children(sup))["b"].ref.tell(Crash())
        await log.wait_for("start:b", 2)
        assert log.entries[log.entries.index("stop:b"):] == [
            "stop:b", "stop:k2", "stop:k1", "start:k1", "start:k2", "start:b"]
        assert (await children(sup))["inner"].state == "running"
        assert sys.statistics()["abandoned"] == 0
        SlowStopKid.slow = False


# --- start order after a name is reused -------------------------------------------------------


class Respawner(roost.Actor):
    """Spawns `a` and `b`; on request stops `a` and spawns a new `a` in the same message."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.ctx.spawn(Worker, self.log, name="a")
        self.ctx.spawn(Worker, self.log, name="b")

    async def receive(self, message: Any) -> Any:
        first_a = self.ctx.children[0]
        await self.ctx.stop(first_a)
        self.ctx.spawn(Worker, self.log, name="a")
        return [ref.name for ref in self.ctx.children]


async def test_a_child_spawned_under_a_reused_name_comes_last_in_the_start_order() -> None:
    log = Log()
    async with system() as sys:
        parent = sys.spawn(Respawner, log, name="p")
        assert await parent.ask(Get()) == ["b", "a"]
        await log.wait_for("start:a", 2)
        del log.entries[:]
        await sys.stop(parent)
        assert log.entries == ["stop:a", "stop:b"]  # reverse start order: the new a first


class Kid(roost.Actor):
    """Takes 0.5 s to stop (within its 1 s timeout) while `Kid.slow` is set."""

    slow = True

    def __init__(self, log: Log) -> None:
        self.log = log

    async def receive(self, message: Any) -> Any:
        return None

    async def on_stop(self) -> None:
        self.log.append(f"stopping:{self.ctx.self_ref.name}")
        if Kid.slow:
            await asyncio.sleep(0.5)


class Family(roost.Actor):
    """Spawns three slow-stopping kids; crashes on Crash."""

    def __init__(self, log: Log) -> None:
        self.log = log

    async def on_start(self) -> None:
        for name in ("k1", "k2", "k3"):
            self.ctx.spawn(Kid, self.log, name=name, shutdown_timeout=1.0)

    async def receive(self, message: Any) -> Any:
        raise RuntimeError("crash")


async def test_a_stop_during_a_restart_waits_for_children_that_stop_in_time() -> None:
    log = Log()
    Kid.slow = True
    async with system() as sys:
        sup = await sys.start(roost.Supervisor.spec("sup", backoff=NO_BACKOFF, children=[
            roost.ChildSpec(factory=Family, name="family", kwargs={"log": log}, poison_after=1,
                            shutdown_timeout=0.05)]), shutdown_timeout=0.05)
        family = (await children(sup))["family"].ref
        family.tell(Crash())
        await log.wait_for("stopping:k3")  # the restart is stopping the old kids
        Kid.slow = False
        await sys.stop(sup)
        assert sys.statistics()["abandoned"] == 0
        assert (await sys.join(family)).reason == "normal"  # nothing was cut short
        assert {"stopping:k1", "stopping:k2", "stopping:k3"} <= set(log.entries)


class ExitsLikeAGenerator(roost.Actor):
    def __init__(self, where: str = "receive") -> None:
        self.where = where

    async def on_start(self) -> None:
        if self.where == "on_start":
            raise GeneratorExit

    async def receive(self, message: Any) -> Any:
        if message == "exit":
            raise GeneratorExit
        return message


async def test_a_generator_exit_escaping_receive_is_the_askers_error_not_a_hang() -> None:
    async with system() as sys:
        ref = sys.spawn(ExitsLikeAGenerator)

        with pytest.raises(RuntimeError, match="receive raised GeneratorExit while handling str"):
            await ref.ask("exit", timeout=30)
        assert await ref.ask("still here", timeout=30) == "still here"


async def test_a_generator_exit_escaping_on_start_fails_the_start() -> None:
    async with system() as sys:
        with pytest.raises(roost.ActorStartFailed, match="on_start raised GeneratorExit"):
            await sys.start(ExitsLikeAGenerator, "on_start", name="g")
