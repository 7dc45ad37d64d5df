"""Tests of roost/runtime/system.py: spawning, lookup, start failures and ordered shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost.errors import ConfigurationError, SystemNotRunning


def new_system() -> roost.ActorSystem:
    return roost.ActorSystem(log_format="json", log_level="warning")


class Echo(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return message


class Logged(roost.Actor):
    """Logs its start and stop under its name; spawns (and waits for) the children it is given."""

    def __init__(self, log: list[str], children: tuple[str, ...] = ()) -> None:
        self.log = log
        self.children = children

    async def on_start(self) -> None:
        self.log.append(f"start:{self.ctx.self_ref.name}")
        for name in self.children:
            child = self.ctx.spawn(Logged, self.log, name=name)
            await child.ask("ping")  # answered only once the child has started

    async def receive(self, message: Any) -> Any:
        return message

    async def on_stop(self) -> None:
        self.log.append(f"stop:{self.ctx.self_ref.name}")


class FailsToStart(roost.Actor):
    def __init__(self, attempts: list[int]) -> None:
        self.attempts = attempts

    async def on_start(self) -> None:
        self.attempts.append(1)
        raise ValueError("no database")

    async def receive(self, message: Any) -> None:
        return None


# --- shutdown ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_leaving_the_system_runs_every_on_stop_children_first_in_reverse_start_order() -> None:
    log: list[str] = []

    async with new_system() as system:
        a = await system.start(Logged, log, ("a1", "a2"), name="a")
        b = await system.start(Logged, log, ("b1",), name="b")
        c = await system.start(Logged, log, name="c")
        assert log == ["start:a", "start:a1", "start:a2", "start:b", "start:b1", "start:c"]

    assert log[6:] == ["stop:c", "stop:b1", "stop:b", "stop:a2", "stop:a1", "stop:a"]
    assert not any(ref.is_alive for ref in (a, b, c))
    assert system.failure is None


@pytest.mark.anyio
async def test_stopping_an_actor_stops_its_children_first(system: roost.ActorSystem) -> None:
    log: list[str] = []
    parent = await system.start(Logged, log, ("first", "second"), name="parent")

    await parent.stop()

    assert log == [
        "start:parent",
        "start:first",
        "start:second",
        "stop:second",
        "stop:first",
        "stop:parent",
    ]
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/parent/first")


@pytest.mark.anyio
async def test_stopping_an_actor_twice_does_nothing_the_second_time(
    system: roost.ActorSystem,
) -> None:
    log: list[str] = []
    ref = await system.start(Logged, log, name="once")

    await ref.stop()
    await ref.stop()

    assert log == ["start:once", "stop:once"]


# --- start and lookup -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_start_returns_once_on_start_has_run(system: roost.ActorSystem) -> None:
    log: list[str] = []

    ref = await system.start(Logged, log, name="started")

    assert log == ["start:started"]
    assert ref.path == "/started"


@pytest.mark.anyio
async def test_start_raises_actor_start_failed_when_on_start_raises(
    system: roost.ActorSystem,
) -> None:
    attempts: list[int] = []

    with pytest.raises(
        roost.ActorStartFailed, match=r"^/db: on_start failed: ValueError: no database$"
    ) as caught:
        await system.start(FailsToStart, attempts, name="db")

    assert isinstance(caught.value.cause, ValueError)
    assert caught.value.actor == "/db"
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/db")
    assert attempts == [1]  # the failed start is reported, not retried behind the caller's back
    assert system.failure is None


@pytest.mark.anyio
async def test_failed_starts_reported_to_the_caller_do_not_count_as_restarts_of_the_root() -> None:
    attempts: list[int] = []

    async with roost.ActorSystem(log_format="json", log_level="error", max_restarts=1) as system:
        for _ in range(3):
            with pytest.raises(roost.ActorStartFailed, match="/db: on_start failed"):
                await system.start(FailsToStart, attempts, name="db")
        echo = system.spawn(Echo, name="echo")
        assert await echo.ask("still running") == "still running"
        assert system.failure is None

    assert attempts == [1, 1, 1]


@pytest.mark.anyio
async def test_lookup_finds_a_live_actor_by_its_path(system: roost.ActorSystem) -> None:
    ref = system.spawn(Echo, name="echo")

    assert system.lookup("/echo") is ref


@pytest.mark.anyio
async def test_lookup_of_an_unknown_or_stopped_path_raises_actor_not_found(
    system: roost.ActorSystem,
) -> None:
    ref = system.spawn(Echo, name="echo")
    await ref.stop()

    with pytest.raises(roost.ActorNotFound, match=r"no actor at path '/nobody'") as caught:
        system.lookup("/nobody")
    assert caught.value.path == "/nobody"
    assert isinstance(caught.value, LookupError)
    with pytest.raises(roost.ActorNotFound, match="'/echo'"):
        system.lookup("/echo")


@pytest.mark.anyio
async def test_a_second_live_actor_with_the_same_name_raises_actor_name_taken(
    system: roost.ActorSystem,
) -> None:
    first = system.spawn(Echo, name="dup")

    with pytest.raises(roost.ActorNameTaken, match=r"an actor already exists at '/dup'"):
        system.spawn(Echo, name="dup")

    assert system.lookup("/dup") is first


@pytest.mark.anyio
async def test_a_name_can_be_used_again_once_its_actor_has_stopped(
    system: roost.ActorSystem,
) -> None:
    first = system.spawn(Echo, name="reused")
    await first.stop()

    second = system.spawn(Echo, name="reused")

    assert second is not first
    assert system.lookup("/reused") is second
    assert await second.ask("hi") == "hi"


@pytest.mark.anyio
async def test_an_actor_spawned_without_a_name_gets_a_unique_one(system: roost.ActorSystem) -> None:
    first = system.spawn(Echo)
    second = system.spawn(Echo)

    assert first.path != second.path
    assert first.path.startswith("/echo-")
    assert system.lookup(second.path) is second


@pytest.mark.anyio
async def test_join_waits_until_the_actor_has_stopped(system: roost.ActorSystem) -> None:
    log: list[str] = []
    ref = await system.start(Logged, log, name="joined")

    await system.stop(ref)
    await system.join(ref)  # returns at once for an actor that has stopped

    assert log == ["start:joined", "stop:joined"]


@pytest.mark.anyio
async def test_join_says_how_the_actor_ended(system: roost.ActorSystem) -> None:
    class Breaks(roost.Actor):
        async def receive(self, message: Any) -> None:
            raise OSError("disk gone")

    calm = await system.start(Echo, name="calm")
    broken = await system.start(Breaks, name="broken", restart="temporary")
    broken.tell("go")
    await calm.stop()

    assert await system.join(calm) == roost.Terminated(calm, roost.StopReason.NORMAL, None)
    ended = await system.join(broken)
    assert (ended.ref, ended.reason, type(ended.error)) == (broken, "failure", OSError)


class Quitting(roost.Supervisor):
    """A supervisor that ends itself normally when told anything."""

    async def handle(self, message: Any) -> Any:
        await self.ctx.stop()


@pytest.mark.anyio
async def test_a_spawned_tree_is_transient_like_a_spawned_actor(system: roost.ActorSystem) -> None:
    tree = await system.start(Quitting.spec("tree"))
    tree.tell("quit")  # a normal exit: a transient actor is not restarted
    assert (await system.join(tree)).reason == "normal"
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/tree")


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("factory", "named"), [(object, "<class 'object'>"), (lambda: 1, "<lambda>"), (Echo(), "Echo")]
)
async def test_spawning_something_that_is_not_an_actor_raises_configuration_error_naming_it(
    system: roost.ActorSystem, factory: Any, named: str
) -> None:
    with pytest.raises(ConfigurationError, match=rf"spawn: .*{named}.* is not an Actor subclass"):
        system.spawn(factory)


@pytest.mark.anyio
@pytest.mark.parametrize("capacity", [0, -1])
async def test_a_capacity_below_one_raises_configuration_error_naming_it(
    system: roost.ActorSystem, capacity: int
) -> None:
    with pytest.raises(ConfigurationError, match=rf"capacity must be .* got {capacity}$"):
        system.spawn(Echo, name="echo", capacity=capacity)
    with pytest.raises(roost.ActorNotFound):
        system.lookup("/echo")


@pytest.mark.anyio
async def test_an_unknown_overflow_policy_raises_configuration_error_naming_it(
    system: roost.ActorSystem,
) -> None:
    with pytest.raises(ConfigurationError, match=r"overflow must be one of .* got 'bounce'"):
        system.spawn(Echo, overflow="bounce")


class Sized(roost.Actor):
    def __init__(self, width: int, *, height: int = 1) -> None:
        self.area = width * height

    async def receive(self, message: Any) -> Any:
        return self.area


@pytest.mark.anyio
async def test_an_unknown_spawn_option_is_named_with_the_options_and_init_parameters(
    system: roost.ActorSystem,
) -> None:
    with pytest.raises(ConfigurationError, match=(
            r"^spawn Sized: unknown option 'capcity' \(did you mean 'capacity'\?\); valid options "
            r"are restart, shutdown_timeout, capacity, overflow, poison_after \(spawn options\) "
            r"and width, height \(Sized.__init__'s parameters\)$")):
        system.spawn(Sized, name="sized", capcity=10)
    with pytest.raises(ConfigurationError,
                       match=r"unknown option 'size'; .* and none from Echo.__init__, which "
                             r"takes no keywords$"):
        system.spawn(Echo, size=3)
    with pytest.raises(ConfigurationError, match=r"^spawn 'tree': unknown option 'capcity'"):
        system.spawn(roost.Supervisor.spec("tree"), capcity=3)
    assert await system.spawn(Sized, width=2, height=3, capacity=5).ask("area") == 6


@pytest.mark.anyio
async def test_a_bad_actor_name_raises_configuration_error(system: roost.ActorSystem) -> None:
    with pytest.raises(ConfigurationError, match=r"name must be .* got 'a/b'"):
        system.spawn(Echo, name="a/b")


@pytest.mark.anyio
async def test_spawning_on_a_system_that_is_not_running_raises_system_not_running() -> None:
    system = new_system()
    with pytest.raises(SystemNotRunning, match=r"cannot spawn 'Echo': the actor system is not running"):
        system.spawn(Echo)

    async with system:
        pass

    with pytest.raises(SystemNotRunning, match="cannot spawn 'Echo'"):
        system.spawn(Echo)
    with pytest.raises(SystemNotRunning, match="cannot start 'Echo'"):
        await system.start(Echo)


def test_an_unknown_durability_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="durability must be 'sync' or 'async', got 'never'"):
        roost.ActorSystem(durability="never")


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("max_restarts", -1, "a whole number >= 0"),
        ("max_restarts", "x", "a whole number >= 0"),
        ("max_restarts", 2.5, "a whole number >= 0"),
        ("max_restarts", True, "a whole number >= 0"),
        ("within", 0, "a number of seconds > 0"),
        ("within", -5, "a number of seconds > 0"),
        ("within", float("nan"), "a number of seconds > 0"),
        ("within", float("inf"), "a number of seconds > 0"),
        ("within", "10", "a number of seconds > 0"),
    ],
)
def test_a_bad_root_intensity_is_refused_like_a_supervisors(option: str, value: Any,
                                                              rule: str) -> None:
    # The root supervises the top-level actors: Supervisor.spec's rules apply to it.
    with pytest.raises(ConfigurationError,
                       match=rf"^ActorSystem: {option} must be {rule}, got {re.escape(repr(value))}$"):
        roost.ActorSystem(**{option: value})
    with pytest.raises(ConfigurationError,
                       match=rf"^Supervisor 'app': {option} must be {rule}, got "):
        roost.Supervisor.spec("app", **{option: value})


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("ledger_retention", 0, "a number of seconds > 0"),
        ("ledger_retention", -5, "a number of seconds > 0"),
        ("ledger_retention", float("nan"), "a number of seconds > 0"),
        ("ledger_retention", "x", "a number of seconds > 0"),
        ("ledger_retention", None, "a number of seconds > 0"),
        ("run_retention", 0, "a number of seconds > 0"),
        ("checkpoints_kept", -1, "a whole number >= 0"),
        ("checkpoints_kept", 1.5, "a whole number >= 0"),
        ("dead_letters_kept", "many", "a whole number >= 0"),
    ],
)
def test_a_bad_retention_is_refused_when_the_system_is_made(option: str, value: Any,
                                                              rule: str) -> None:
    # ledger_retention=0 would deduplicate nothing: every retry would run its tool again.
    with pytest.raises(ConfigurationError,
                       match=rf"^ActorSystem: {option} must be {rule}, got {re.escape(repr(value))}$"):
        roost.ActorSystem(**{option: value})


@pytest.mark.parametrize(("option", "value", "message"), [
    ("name", "", "name must be a non-empty string, got ''"),
    ("store", "", "store must be a folder path or a postgresql:// URL (or None for no store), "
                  "got ''"),
    ("store", 5, "store must be a folder path or a postgresql:// URL (or None for no store), "
                 "got 5"),
    ("tracing", "yes", "tracing must be True or False, got 'yes'"),
    ("loop_lag_threshold", 0, "loop_lag_threshold (None turns the monitor off) must be a number "
                              "of seconds > 0, got 0"),
    ("loop_lag_threshold", -1, "loop_lag_threshold (None turns the monitor off) must be a "
                               "number of seconds > 0, got -1"),
    ("prices", {"m": 5}, "prices must map model names to roost.Price(input_per_million=..., "
                         "output_per_million=...), got {'m': 5}"),
])
def test_a_bad_system_option_is_refused_naming_it(option: str, value: Any, message: str) -> None:
    # prices={"m": 5} used to fail every run that reported usage, at run time.
    with pytest.raises(ConfigurationError, match=f"^ActorSystem: {re.escape(message)}"):
        roost.ActorSystem(**{option: value})


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("payload_limit", 0, "payload_limit must be a whole number >= 1, got 0"),
        ("payload_limit", -5, "payload_limit must be a whole number >= 1, got -5"),
        ("payload_limit", "8k", "payload_limit must be a whole number >= 1, got '8k'"),
        ("redact", "yes", "redact must be a function redact(name, value) -> value, or None; "
                          "got 'yes'"),
    ],
)
def test_a_bad_trace_payload_option_is_refused_when_the_system_is_made(option: str, value: Any,
                                                                        rule: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^ActorSystem: {re.escape(rule)}$"):
        roost.ActorSystem(**{option: value})


def test_a_root_that_never_restarts_is_a_valid_system() -> None:
    assert roost.ActorSystem(max_restarts=0, within=0.5) is not None


class Crashes(roost.Actor):
    async def receive(self, message: Any) -> Any:
        raise RuntimeError("boom")


@pytest.mark.anyio
async def test_a_root_whose_message_loop_breaks_fails_the_system_with_the_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log: list[str] = []
    body: list[str] = []

    async def broken(*args: Any) -> None:
        raise KeyError("an engine invariant")

    with anyio.fail_after(5), pytest.raises(
            roost.InternalError, match=r"/: its message loop failed \(KeyError"):
        async with new_system() as system:
            monkeypatch.setattr(system.engine.guardian.supervision, "child_failed", broken)
            await system.start(Logged, log, name="bystander")
            system.spawn(Crashes, name="crasher").tell("crash")  # the root handles its failure
            body.append("waiting")
            await anyio.sleep(5)  # cancelled when the system fails
            body.append("still running")

    assert system.failure is not None and "an engine invariant" in str(system.failure)
    assert body == ["waiting"]
    assert log == ["start:bystander", "stop:bystander"]  # shutdown still stopped the tree


@pytest.mark.anyio
async def test_an_error_raised_inside_the_system_block_comes_out_as_itself() -> None:
    with pytest.raises(ValueError, match="the application's own error"):
        async with roost.ActorSystem(log_format="json", log_level="critical"):
            raise ValueError("the application's own error")


# --- cancelled from outside while opening or stopping -------------------------------------------


class SlowStop(roost.Actor):
    async def on_stop(self) -> None:
        await asyncio.sleep(0.2)

    async def receive(self, message: Any) -> Any:
        return message


@pytest.mark.anyio
async def test_a_system_cancelled_while_it_stops_still_releases_its_store(tmp_path: Path) -> None:
    """asyncio's own cancellation (a TaskGroup sibling failing, asyncio.timeout) goes through
    anyio's shielded scopes: the shutdown must finish all the same."""
    store = tmp_path / "store"
    stopping = asyncio.Event()

    async def service() -> None:
        async with roost.ActorSystem(store=store, log_format=None) as system:
            system.spawn(SlowStop, name="slow")
            stopping.set()

    task = asyncio.create_task(service())
    await stopping.wait()
    await asyncio.sleep(0.05)  # in the shutdown now, waiting for on_stop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with roost.ActorSystem(store=store, log_format=None):  # the folder is free again
        pass
    assert [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("roost")] == []


@pytest.mark.anyio
async def test_a_system_cancelled_while_it_opens_its_store_leaves_the_store_free(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with roost.ActorSystem(store=store, log_format=None):
        pass
    for attempt in range(20):  # cancelled at different points of the open
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.0005 * (attempt % 10)):
                async with roost.ActorSystem(store=store, log_format=None):
                    await asyncio.sleep(10)
        async with roost.ActorSystem(store=store, log_format=None):
            pass


@pytest.mark.anyio
async def test_pipelines_and_gates_used_after_the_system_stopped_say_so(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", log_format=None) as system:
        pass
    pipeline = roost.Pipeline("p", [roost.Step("a", SlowStop)])

    with pytest.raises(SystemNotRunning, match=r"cannot use system.pipelines \(its store is "
                                                r"closed\): the actor system is not running"):
        await system.pipelines.start(pipeline)
    with pytest.raises(SystemNotRunning):
        await system.pipelines.list()
