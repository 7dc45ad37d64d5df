"""Tests of roost/actors/actor.py: the lifecycle hooks and what a failure in `receive` does."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import roost


class Add(roost.Message, frozen=True):
    n: int


class Get(roost.Message, frozen=True):
    pass


class Explode(roost.Message, frozen=True):
    """Raises in `receive` the first time it is handled (and is handled normally after that)."""

    fuse: list[bool]


class Lifecycle(roost.Actor):
    """Logs every hook, with what it can see of its context."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        log.append(f"init:{self.ctx.path}")

    async def on_start(self) -> None:
        await anyio.lowlevel.checkpoint()  # a start that really suspends
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        self.log.append(f"receive:{message}")
        return message

    async def on_stop(self) -> None:
        self.log.append("stop")


class Counter(roost.Actor):
    """Counts; `instances` records every instance the runtime creates."""

    def __init__(self, instances: list[Counter], log: list[str]) -> None:
        instances.append(self)
        self.log = log
        self.count = 0

    async def on_start(self) -> None:
        self.log.append("start")

    async def receive(self, message: Any) -> Any:
        match message:
            case Add(n=n):
                self.count += n
            case Get():
                return self.count
            case Explode(fuse=fuse) if fuse:
                fuse.pop()
                raise RuntimeError("exploded")

    async def on_stop(self) -> None:
        self.log.append("stop")


@pytest.mark.anyio
async def test_on_start_runs_before_the_first_message_and_on_stop_after_the_last(
    system: roost.ActorSystem,
) -> None:
    log: list[str] = []

    ref = system.spawn(Lifecycle, log, name="life")
    ref.tell("a")
    assert await ref.ask("b") == "b"
    await ref.stop()

    assert log == ["init:/life", "start", "receive:a", "receive:b", "stop"]


@pytest.mark.anyio
async def test_ctx_is_available_in_init(system: roost.ActorSystem) -> None:
    seen: list[Any] = []

    class Early(roost.Actor):
        def __init__(self) -> None:
            seen.append((self.ctx.self_ref, self.ctx.path, self.ctx.system))

        async def receive(self, message: Any) -> None:
            return None

    ref = system.spawn(Early, name="early")

    assert seen == [(ref, "/early", system)]


@pytest.mark.anyio
async def test_an_actor_handles_one_message_at_a_time(system: roost.ActorSystem) -> None:
    done = anyio.Event()
    log: list[str] = []

    class Serial(roost.Actor):
        async def receive(self, message: Any) -> None:
            log.append(f"begin:{message}")
            await anyio.lowlevel.checkpoint()
            log.append(f"end:{message}")
            if len(log) == 6:
                done.set()

    ref = system.spawn(Serial, name="serial")
    for message in "abc":
        ref.tell(message)
    await done.wait()

    assert log == ["begin:a", "end:a", "begin:b", "end:b", "begin:c", "end:c"]


@pytest.mark.anyio
async def test_an_actor_without_receive_answers_an_ask_with_not_implemented_error(
    system: roost.ActorSystem,
) -> None:
    class Mute(roost.Actor):
        pass

    ref = system.spawn(Mute, name="mute")

    with pytest.raises(NotImplementedError, match="Mute must implement receive"):
        await ref.ask("anything")


@pytest.mark.anyio
async def test_an_exception_during_an_ask_reaches_the_asker_as_the_same_object(
    system: roost.ActorSystem,
) -> None:
    raised: list[BaseException] = []

    class Picky(roost.Actor):
        def __init__(self) -> None:
            self.handled = 0

        async def receive(self, message: Any) -> Any:
            self.handled += 1
            if message == "bad":
                error = ValueError("bad input")
                raised.append(error)
                raise error
            return self.handled

    ref = system.spawn(Picky, name="picky")

    with pytest.raises(ValueError, match="bad input") as caught:
        await ref.ask("bad")

    assert caught.value is raised[0]
    assert await ref.ask("good") == 2  # still working, and still the same instance


@pytest.mark.anyio
async def test_an_exception_during_a_tell_restarts_the_actor_fresh_behind_the_same_ref(
    system: roost.ActorSystem,
) -> None:
    instances: list[Counter] = []
    log: list[str] = []
    ref = system.spawn(Counter, instances, log, name="counter")
    ref.tell(Add(5))
    assert await ref.ask(Get()) == 5

    ref.tell(Explode([True]))

    assert await ref.ask(Get()) == 0  # a fresh instance: the count starts over
    assert len(instances) == 2
    assert log == ["start", "stop", "start"]
    assert system.lookup("/counter") is ref
    assert ref.is_alive
    assert system.failure is None


@pytest.mark.anyio
async def test_messages_queued_behind_a_crash_are_handled_by_the_restarted_actor(
    system: roost.ActorSystem,
) -> None:
    instances: list[Counter] = []
    ref = system.spawn(Counter, instances, [], name="counter")

    ref.tell(Explode([True]))
    ref.tell(Add(1))
    ref.tell(Add(2))

    assert await ref.ask(Get()) == 3
    assert len(instances) == 2
    assert len(system.dead_letters) == 0


class Plain(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return "ok"


@pytest.mark.anyio
async def test_a_broken_message_loop_stops_the_actor_as_failed_instead_of_leaving_askers_waiting(
        system: roost.ActorSystem, monkeypatch: pytest.MonkeyPatch) -> None:
    from roost.actors import _cell

    counter = system.spawn(Plain, name="counter")  # idle: no drain task until mail comes
    working = _cell.Cell._drain_once

    async def broken(self: Any) -> None:
        if self is not counter._cell:  # the root's loop breaking would fail the whole system
            return await working(self)
        raise KeyError("an engine invariant")

    monkeypatch.setattr(_cell.Cell, "_drain_once", broken)
    with anyio.fail_after(5):
        with pytest.raises(roost.ActorStopped):
            await counter.ask(Get(), timeout=5)
        ended = await system.join(counter)

    assert ended.reason == "failure"
    assert isinstance(ended.error, roost.InternalError)
    assert "its message loop failed (KeyError" in str(ended.error)
