"""Checkpointed actors resume from their latest checkpoint on every start."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost.errors import CheckpointCorrupt
from roost.storage import Put, checkpoint_key

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]


class Tally(msgspec.Struct):
    count: int = 0
    seen: list[str] = msgspec.field(default_factory=list)


class Add(roost.Message):
    item: str


class Crash(roost.Message):
    pass


class Get(roost.Message):
    pass


class Counter(roost.Actor):
    state_type = Tally

    def __init__(self) -> None:
        self.state = Tally()

    async def receive(self, message: Any) -> Any:
        match message:
            case Add(item=item):
                self.state.count += 1
                self.state.seen.append(item)
                await self.checkpoint(step=f"added-{item}")
                return self.state.count
            case Crash():
                raise RuntimeError("boom")
            case Get():
                return self.state


async def test_a_restarted_actor_resumes_from_its_last_checkpoint(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        counter = system.spawn(Counter, name="counter")
        assert await counter.ask(Add("a")) == 1
        assert await counter.ask(Add("b")) == 2
        counter.tell(Crash())
        state = await counter.ask(Get())
        assert state == Tally(count=2, seen=["a", "b"])
        assert system.lookup("/counter") is counter


async def test_a_new_system_on_the_same_store_hydrates_the_actor(tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        counter = system.spawn(Counter, name="counter")
        await counter.ask(Add("a"))
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        counter = system.spawn(Counter, name="counter")
        assert await counter.ask(Get()) == Tally(count=1, seen=["a"])
        assert await counter.ask(Add("b")) == 2


async def test_a_new_process_hydrates_the_actor_before_any_message(tmp_path: Path) -> None:
    store = tmp_path / "store"
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import roost
        from test_checkpointed import Add, Counter, Get

        async def main():
            async with roost.ActorSystem(store={str(store)!r}, log_format="json",
                                         log_level="critical") as system:
                counter = system.spawn(Counter, name="counter")
                if sys.argv[1] == "write":
                    await counter.ask(Add("x"))
                    await counter.ask(Add("y"))
                else:
                    print((await counter.ask(Get())).count)

        asyncio.run(main())
    """))
    await anyio.run_process([sys.executable, str(script), "write"])
    out = await anyio.run_process([sys.executable, str(script), "read"])
    assert out.stdout.decode().strip() == "2"


async def test_a_corrupt_checkpoint_fails_the_start_with_checkpoint_corrupt(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        await system.store.commit([Put("checkpoints", checkpoint_key("/counter", 1), b"\xff\x00junk")])
        with pytest.raises(roost.ActorStartFailed) as caught:
            await system.start(Counter, name="counter")
        assert isinstance(caught.value.cause, CheckpointCorrupt)
        assert "/counter" in str(caught.value.cause)
        # The system keeps running: other actors work.
        other = await system.start(Counter, name="other")
        assert await other.ask(Add("z")) == 1


async def test_a_spawned_actor_with_a_corrupt_checkpoint_stops_instead_of_failing_the_system(
        tmp_path: Path) -> None:
    # Every start would fail the same way: restarting it only used up the root's intensity.
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        await system.store.commit([Put("checkpoints", checkpoint_key("/counter", 1), b"\xc1")])
        counter = system.spawn(Counter, name="counter")

        ended = await system.join(counter)

        assert ended.reason == roost.StopReason.FAILURE
        assert isinstance(ended.error, CheckpointCorrupt)
        other = await system.start(Counter, name="other")
        assert await other.ask(Add("z")) == 1


async def test_a_state_whose_type_changed_is_reported_as_corrupt(tmp_path: Path) -> None:
    class Renamed(msgspec.Struct):
        total: str

    class Changed(Counter):
        state_type = Renamed

    store = tmp_path / "store"
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        await system.spawn(Counter, name="counter").ask(Add("a"))
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        with pytest.raises(roost.ActorStartFailed, match="does not decode as"):
            await system.start(Changed, name="counter")


async def test_an_actor_may_start_fresh_on_a_corrupt_checkpoint(tmp_path: Path) -> None:
    class Forgiving(Counter):
        fresh_on_corrupt_checkpoint = True

    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        await system.store.commit([Put("checkpoints", checkpoint_key("/f", 1), b"\xc1")])
        forgiving = await system.start(Forgiving, name="f")
        assert await forgiving.ask(Get()) == Tally()


async def test_checkpointing_without_a_store_is_a_clear_error() -> None:
    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        with pytest.raises(roost.ActorStartFailed, match="has no store"):
            await system.start(Counter, name="counter")


async def test_checkpointing_without_a_state_type_is_a_clear_error(tmp_path: Path) -> None:
    class Plain(roost.Actor):
        async def receive(self, message: Any) -> Any:
            return await self.checkpoint(step="x")

    async with roost.ActorSystem(store=tmp_path / "s", log_format="json",
                                 log_level="critical") as system:
        with pytest.raises(roost.ConfigurationError, match="has no state_type"):
            await system.spawn(Plain).ask("go")


async def test_concurrent_checkpoints_from_many_actors_share_commits(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "s", log_format="json",
                                 log_level="critical") as system:
        counters = [system.spawn(Counter, name=f"c{i}") for i in range(50)]
        before = system.store.statistics().commits
        await asyncio.gather(*(c.ask(Add("a")) for c in counters))
        commits = system.store.statistics().commits - before
        assert commits < 25


class Basket(msgspec.Struct):
    items: list[Any] = msgspec.field(default_factory=list)
    notes: dict[str, Any] = msgspec.field(default_factory=dict)


class Put_(roost.Message):
    item: Any
    under: str | None = None


class Keeper(roost.Actor):
    state_type = Basket

    def __init__(self) -> None:
        self.state = Basket()

    async def receive(self, message: Any) -> Any:
        match message:
            case Put_(item=item, under=None):
                self.state.items.append(item)
            case Put_(item=item, under=str(key)):
                self.state.notes[key] = {"inner": [1, item]}
            case Get():
                return self.state
        await self.checkpoint(step="put")
        return len(self.state.items)


@pytest.mark.parametrize(("message", "field"), [
    (Put_(object()), r"state\.items\[1\]"),
    (Put_(object(), under="k"), r"state\.notes\['k'\]\['inner'\]\[1\]"),
])
async def test_unencodable_state_fails_the_actor_naming_the_field_and_it_restarts_from_the_last_checkpoint(
        tmp_path: Path, message: Put_, field: str) -> None:
    async with roost.ActorSystem(store=tmp_path, log_format="json", log_level="critical") as system:
        keeper = system.spawn(Keeper, name="keeper")
        assert await keeper.ask(Put_("apple"), timeout=5) == 1

        with pytest.raises(roost.CheckpointUnencodable,
                           match=rf"/keeper: cannot checkpoint its Basket state: {field} cannot be "
                                 r"encoded \(.*object.*\); keep only msgspec-encodable values"):
            await keeper.ask(message, timeout=5)

        state = await keeper.ask(Get(), timeout=5)  # a fresh instance, hydrated
        assert state.items == ["apple"] and state.notes == {}
        assert keeper.statistics()["restarts"] == 1


class TallyRenamed(msgspec.Struct):
    total: int = 0
    seen: list[str] = msgspec.field(default_factory=list)


class TallyRetyped(msgspec.Struct):
    count: str = ""


class CounterRenamed(Counter):
    state_type = TallyRenamed  # type: ignore[assignment]

    def __init__(self) -> None:
        self.state = TallyRenamed()  # type: ignore[assignment]


class CounterRetyped(Counter):
    state_type = TallyRetyped  # type: ignore[assignment]

    def __init__(self) -> None:
        self.state = TallyRetyped()  # type: ignore[assignment]


async def saved_tally(store: Path) -> None:
    async with roost.ActorSystem(store=store, log_format="json", log_level="critical") as system:
        counter = system.spawn(Counter, name="counter")
        assert await counter.ask(Add("a")) == 1


async def test_a_saved_field_the_new_state_type_lacks_is_logged_not_dropped_silently(
        tmp_path: Path) -> None:
    await saved_tally(tmp_path / "store")
    roost.configure_logging("json", "warning")

    with capture_logs() as logs:
        async with roost.ActorSystem(store=tmp_path / "store") as system:
            counter = system.spawn(CounterRenamed, name="counter")
            state = await counter.ask(Get())

    assert state == TallyRenamed(total=0, seen=["a"])
    dropped = [entry for entry in logs if entry["event"] == "checkpoint_fields_dropped"]
    assert [(entry["actor"], entry["state_type"], entry["fields"]) for entry in dropped] == [
        ("/counter", "TallyRenamed", ["count"])]


async def test_an_actor_whose_checkpoint_no_longer_decodes_fails_its_start_naming_the_cause(
        tmp_path: Path) -> None:
    await saved_tally(tmp_path / "store")

    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="critical") as system:
        with pytest.raises(roost.ActorStartFailed, match=r"CheckpointCorrupt: .*does not decode "
                                                         r"as TallyRetyped"):
            await system.start(CounterRetyped, name="counter")
        with pytest.raises(roost.ActorStopped, match=r"reason=failure: CheckpointCorrupt: "
                                                     r".*does not decode as TallyRetyped") as raised:
            await system.spawn(CounterRetyped, name="counter", restart="temporary").ask(Get())

    assert isinstance(raised.value.error, CheckpointCorrupt)
