"""Tests of roost/actors/context.py: what `self.ctx` tells an actor and lets it do."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

import roost


class Watch(roost.Message, frozen=True):
    ref: Any


class Unwatch(roost.Message, frozen=True):
    ref: Any


class StopThenUnwatch(roost.Message, frozen=True):
    """Stop `ref` (its `Terminated` is queued meanwhile), then unwatch it."""

    ref: Any


class Spawn(roost.Message, frozen=True):
    name: str


class Ask(roost.Message, frozen=True):
    """Ask `target` for `message` and return its reply."""

    target: Any
    message: Any


class Echo(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return message


class Introspect(roost.Actor):
    """Answers questions about its own context."""

    async def receive(self, message: Any) -> Any:
        ctx = self.ctx
        match message:
            case "self":
                return ctx.self_ref, ctx.path, ctx.parent, ctx.system
            case "sender":
                return ctx.sender
            case "children":
                return ctx.children
            case Spawn(name=name):
                return ctx.spawn(Introspect, name=name)
            case Ask(target=target, message=inner):
                return await target.ask(inner)


class Watcher(roost.Actor):
    """Watches what it is told to, and records every `Terminated` it gets."""

    def __init__(self, seen: list[roost.Terminated], got: anyio.Event) -> None:
        self.seen = seen
        self.got = got

    async def receive(self, message: Any) -> Any:
        match message:
            case Watch(ref=ref):
                return self.ctx.watch(ref)
            case Unwatch(ref=ref):
                self.ctx.unwatch(ref)
            case StopThenUnwatch(ref=ref):
                await self.ctx.stop(ref)
                self.ctx.unwatch(ref)
            case roost.Terminated():
                self.seen.append(message)
                self.got.set()
            case "seen":
                return len(self.seen)


@pytest.fixture
def seen() -> list[roost.Terminated]:
    return []


@pytest.fixture
def got() -> anyio.Event:
    return anyio.Event()


# --- who am I ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ctx_knows_its_own_ref_path_parent_and_system(system: roost.ActorSystem) -> None:
    ref = system.spawn(Introspect, name="parent")
    child = await ref.ask(Spawn("child"))

    self_ref, path, parent, in_system = await ref.ask("self")
    assert (self_ref, path, in_system) == (ref, "/parent", system)
    assert parent is not None and parent.path == "/"  # top-level actors live under the root

    child_self, child_path, child_parent, _ = await child.ask("self")
    assert (child_self, child_path, child_parent) == (child, "/parent/child", ref)
    assert child.name == "child"


@pytest.mark.anyio
async def test_ctx_children_lists_the_live_children_in_start_order(
    system: roost.ActorSystem,
) -> None:
    ref = system.spawn(Introspect, name="parent")
    first = await ref.ask(Spawn("first"))
    second = await ref.ask(Spawn("second"))
    third = await ref.ask(Spawn("third"))

    assert await ref.ask("children") == [first, second, third]

    await second.stop()
    assert await ref.ask("children") == [first, third]


@pytest.mark.anyio
async def test_a_child_spawned_through_ctx_can_be_looked_up_by_its_path(
    system: roost.ActorSystem,
) -> None:
    ref = system.spawn(Introspect, name="parent")
    child = await ref.ask(Spawn("child"))

    assert system.lookup("/parent/child") is child


@pytest.mark.anyio
async def test_ctx_sender_is_none_from_outside_and_the_senders_ref_from_an_actor(
    system: roost.ActorSystem,
) -> None:
    asker = system.spawn(Introspect, name="asker")
    target = system.spawn(Introspect, name="target")

    assert await target.ask("sender") is None
    assert await asker.ask(Ask(target, "sender")) is asker


# --- stopping ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_ctx_stop_without_a_ref_ends_the_actor_after_the_current_message(
    system: roost.ActorSystem,
) -> None:
    log: list[str] = []

    class Quitter(roost.Actor):
        async def receive(self, message: Any) -> Any:
            log.append(message)
            if message == "quit":
                await self.ctx.stop()
                log.append("after stop()")
            return message

        async def on_stop(self) -> None:
            log.append("on_stop")

    ref = system.spawn(Quitter, name="quitter")

    assert await ref.ask("quit") == "quit"
    await system.join(ref)

    assert log == ["quit", "after stop()", "on_stop"]
    assert not ref.is_alive
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/quitter")


@pytest.mark.anyio
async def test_ctx_stop_not_awaited_still_ends_the_actor_and_stops_another(
    system: roost.ActorSystem,
) -> None:
    class Quitter(roost.Actor):
        async def receive(self, message: Any) -> Any:
            if message == "quit":
                self.ctx.stop()  # as Akka's context.stop(self): no await needed
            else:
                self.ctx.stop(message)  # started at once; awaiting it would wait for the end
            return "ok"

    victim = system.spawn(Echo, name="victim")
    quitter = system.spawn(Quitter, name="quitter")

    with anyio.fail_after(10):
        assert await quitter.ask(victim) == "ok"
        await system.join(victim)
        assert quitter.is_alive
        assert await quitter.ask("quit") == "ok"
        await system.join(quitter)
    assert not quitter.is_alive


@pytest.mark.anyio
async def test_ctx_stop_with_a_ref_stops_that_actor_and_waits(system: roost.ActorSystem) -> None:
    class Stopper(roost.Actor):
        async def receive(self, message: Any) -> Any:
            await self.ctx.stop(message)
            return message.is_alive

    victim = system.spawn(Echo, name="victim")
    stopper = system.spawn(Stopper, name="stopper")

    assert await stopper.ask(victim) is False
    assert stopper.is_alive


class StopsAncestor(roost.Actor):
    """On "go", stops the ancestor at `path` through `how`, then answers; logs its lifecycle."""

    def __init__(self, path: str, how: str, log: list[str]) -> None:
        self.path = path
        self.how = how
        self.log = log

    async def receive(self, message: Any) -> Any:
        ancestor = self.ctx.system.lookup(self.path)
        if self.how == "ctx.stop(ref)":
            await self.ctx.stop(ancestor)
        elif self.how == "ref.stop()":
            await ancestor.stop()
        else:
            await self.ctx.system.stop(ancestor)
        self.log.append("after stop")
        return "stopping"

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.ctx.path}")


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["ctx.stop(ref)", "ref.stop()", "system.stop(ref)"])
@pytest.mark.parametrize("ancestor", ["/app/team", "/app"])  # the parent, the grandparent
async def test_stopping_an_ancestor_from_inside_a_message_returns_at_once_and_all_stop_normally(
    system: roost.ActorSystem, how: str, ancestor: str
) -> None:
    # The ancestor stops its descendants first, so waiting for it would deadlock.
    log: list[str] = []
    worker = roost.ChildSpec(factory=StopsAncestor, name="worker", shutdown_timeout=30,
                             kwargs={"path": ancestor, "how": how, "log": log})
    app = await system.start(roost.Supervisor.spec(
        "app", children=[roost.Supervisor.spec("team", children=[worker])]))
    team, worker_ref = system.lookup("/app/team"), system.lookup("/app/team/worker")

    with anyio.fail_after(5):
        assert await worker_ref.ask("go") == "stopping"
        ended = {ref.path: (await system.join(ref)).reason for ref in (worker_ref, team)}

    assert ended == {"/app/team/worker": "normal", "/app/team": "normal"}
    assert log == ["after stop", "stop:/app/team/worker"]
    assert app.is_alive is (ancestor != "/app")


@pytest.mark.anyio
async def test_ctx_forward_lets_another_actor_answer_the_original_ask(
    system: roost.ActorSystem,
) -> None:
    class Front(roost.Actor):
        def __init__(self, back: roost.ActorRef) -> None:
            self.back = back

        async def receive(self, message: Any) -> Any:
            self.ctx.forward(self.back)
            return "ignored"

    back = system.spawn(Introspect, name="back")
    front = system.spawn(Front, back, name="front")

    # The back actor answers, and sees the original sender (none: the test is outside).
    assert await front.ask("sender") is None
    assert await front.ask("children") == []


# --- watching ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_watch_delivers_terminated_exactly_once_when_the_watched_actor_stops(
    system: roost.ActorSystem, seen: list[roost.Terminated], got: anyio.Event
) -> None:
    watcher = system.spawn(Watcher, seen, got, name="watcher")
    target = system.spawn(Echo, name="target")
    assert await watcher.ask(Watch(target)) is target
    await watcher.ask(Watch(target))  # watching twice still means one notice

    await target.stop()
    await got.wait()

    assert await watcher.ask("seen") == 1
    [terminated] = seen
    assert (terminated.ref, terminated.reason, terminated.error) == (target, "normal", None)


@pytest.mark.anyio
async def test_watching_an_actor_that_already_stopped_delivers_terminated_at_once(
    system: roost.ActorSystem, seen: list[roost.Terminated], got: anyio.Event
) -> None:
    watcher = system.spawn(Watcher, seen, got, name="watcher")
    target = system.spawn(Echo, name="target")
    await target.stop()

    await watcher.ask(Watch(target))
    await got.wait()

    assert await watcher.ask("seen") == 1
    assert seen == [roost.Terminated(target, "normal", None)]


@pytest.mark.anyio
async def test_terminated_carries_the_failure_of_an_actor_its_supervisor_gave_up_on(
    system: roost.ActorSystem, seen: list[roost.Terminated], got: anyio.Event
) -> None:
    class Doomed(roost.Actor):
        async def receive(self, message: Any) -> None:
            raise OSError("disk gone")

    watcher = system.spawn(Watcher, seen, got, name="watcher")
    target = system.spawn(Doomed, name="doomed", restart="temporary")
    await watcher.ask(Watch(target))

    target.tell("go")
    await got.wait()

    [terminated] = seen
    assert (terminated.ref, terminated.reason) == (target, "failure")
    assert isinstance(terminated.error, OSError)
    assert str(terminated.error) == "disk gone"


@pytest.mark.anyio
async def test_an_unwatched_actor_stops_without_a_notice(
    system: roost.ActorSystem, seen: list[roost.Terminated], got: anyio.Event
) -> None:
    watcher = system.spawn(Watcher, seen, got, name="watcher")
    target = system.spawn(Echo, name="target")
    await watcher.ask(Watch(target))
    await watcher.ask(Unwatch(target))

    await target.stop()

    # A notice would have been queued before this ask, and handled first.
    assert await watcher.ask("seen") == 0


@pytest.mark.anyio
async def test_a_terminated_already_queued_when_unwatch_is_called_is_not_delivered(
    system: roost.ActorSystem, seen: list[roost.Terminated], got: anyio.Event
) -> None:
    watcher = system.spawn(Watcher, seen, got, name="watcher")
    target = system.spawn(Echo, name="target")
    other = system.spawn(Echo, name="other")
    await watcher.ask(Watch(target))
    await watcher.ask(Watch(other))

    await watcher.ask(StopThenUnwatch(target))
    await other.stop()  # still watched: its notice comes
    await got.wait()

    assert await watcher.ask("seen") == 1
    assert seen == [roost.Terminated(other, "normal", None)]
