"""Tests of roost/tools/client.py: calls from actors, steps and the application; keys; breakers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from structlog.testing import capture_logs

import roost
from roost.trace import handling
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


async def test_a_side_effecting_tool_runs_in_its_callers_trace_not_as_the_proxy() -> None:
    seen: dict[int, tuple[Any, Any]] = {}

    @roost.tool(idempotent=True)
    async def charge(n: int) -> int:
        cell = handling.get()
        seen[n] = (None if cell is None else cell.path, roost.current_trace())
        await asyncio.sleep(0.01)
        return n

    class Caller(roost.Actor):
        async def receive(self, message: Any) -> Any:
            mine = roost.current_trace()
            await self.ctx.tools.call("charge", n=message)
            return mine

    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        system.tools.register(charge)
        a, b = system.spawn(Caller, name="a"), system.spawn(Caller, name="b")
        trace_a, trace_b = await asyncio.gather(a.ask(1), b.ask(2))
    assert seen[1][0] is None and seen[2][0] is None  # not running as /tool-proxy
    assert seen[1][1].trace_id == trace_a.trace_id
    assert seen[2][1].trace_id == trace_b.trace_id


class SteppingClock:
    """A clock that moves `step` seconds every time it is read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.step = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


async def test_a_cooldown_ending_between_the_callers_checks_lets_the_call_probe() -> None:
    clock = SteppingClock()
    healthy = False

    @roost.tool(idempotent=True, breaker=roost.Breaker(failures=1, cooldown=10.0))
    async def flaky(n: int) -> int:
        if not healthy:
            raise ConnectionError("down")
        return n

    async with roost.ActorSystem(log_format="json", log_level="critical", clock=clock) as system:
        system.tools.register(flaky)
        with pytest.raises(ConnectionError):
            await system.tools.call("flaky", n=1)
        breaker = system.tools.state.breakers["flaky"]
        assert system.tools.breaker_states() == {"flaky": "open"}
        # The caller reads "open", then the cooldown ends before it asks for a permit.
        clock.now = breaker.statistics().retry_at - 0.5
        clock.step = 0.4
        healthy = True
        assert await system.tools.call("flaky", n=2) == 2
        clock.step = 0.0
        assert system.tools.breaker_states() == {"flaky": "closed"}
        assert await system.tools.call("flaky", n=3) == 3


# --- derived keys: the unit of work and the call's number in it ------------------------------


class Room(msgspec.Struct, frozen=True):
    number: int


class Till:
    """Side-effecting tools that count what they did: `charge` and `book`; a charge may be held."""

    def __init__(self) -> None:
        self.charged: list[int] = []
        self.booked: list[tuple[Room, float]] = []
        self.hold: anyio.Event | None = None
        self.entered = anyio.Event()

        @roost.tool
        async def charge(amount: int) -> int:
            self.charged.append(amount)
            self.entered.set()
            if self.hold is not None:
                await self.hold.wait()
            return len(self.charged)

        @roost.tool
        async def book(room: Room, nights: float) -> str:
            self.booked.append((room, nights))
            return f"room {room.number} for {nights} nights"

        @roost.tool(read_only=True)
        async def price(amount: int) -> int:
            return amount

        self.tools = [charge, book, price]


@pytest.fixture
def till() -> Till:
    return Till()


def open_system(store: Path | None, *tools: object, log_level: str = "critical",
                ) -> roost.ActorSystem:
    system = roost.ActorSystem(store=store, log_format="json", log_level=log_level)
    for item in tools:
        system.tools.register(item)
    return system


class PayTwice(roost.Actor):
    """A step's worker: charges 5 twice (two calls, numbered 0 and 1); fails its first attempt."""

    async def receive(self, message: Any) -> Any:
        request: roost.RunStep = message
        first = await self.ctx.tools.call("charge", amount=5)
        second = await self.ctx.tools.call("charge", amount=5)
        if request.step == "flaky" and request.attempt == 1:
            raise roost.TransientToolError("the answer was lost")
        return [first, second]


async def outcome(system: roost.ActorSystem, pipeline: roost.Pipeline) -> roost.RunOutcome:
    with anyio.fail_after(10):
        return await (await system.pipelines.start(pipeline)).result()


async def test_the_same_call_in_two_steps_runs_in_each(tmp_path: Path, till: Till) -> None:
    pipeline = roost.Pipeline("pay", [roost.Step("a", PayTwice),
                                      roost.Step("b", PayTwice, after="a")])
    async with open_system(tmp_path / "store", *till.tools) as system:
        done = await outcome(system, pipeline)
    assert done.results == {"a": [1, 2], "b": [3, 4]}
    assert till.charged == [5, 5, 5, 5]


async def test_a_retried_step_gets_the_results_of_the_calls_its_first_attempt_made(
    tmp_path: Path, till: Till,
) -> None:
    pipeline = roost.Pipeline("pay", [roost.Step("flaky", PayTwice,
                                                 retry=roost.Retry(attempts=2, base_delay=0.0))])
    async with open_system(tmp_path / "store", *till.tools) as system:
        done = await outcome(system, pipeline)
    assert done.results == {"flaky": [1, 2]}
    assert till.charged == [5, 5]


async def test_each_item_of_a_map_step_is_a_unit_of_its_own(tmp_path: Path, till: Till) -> None:
    pipeline = roost.Pipeline("pay", [roost.Step("each", PayTwice, map=lambda results: [1, 1])])
    async with open_system(tmp_path / "store", *till.tools) as system:
        done = await outcome(system, pipeline)
    assert sorted(number for item in done.results["each"] for number in item) == [1, 2, 3, 4]
    assert till.charged == [5, 5, 5, 5]


async def test_runs_derive_other_keys_for_the_same_step(tmp_path: Path, till: Till) -> None:
    pipeline = roost.Pipeline("pay", [roost.Step("a", PayTwice)])
    async with open_system(tmp_path / "store", *till.tools) as system:
        await outcome(system, pipeline)
        await outcome(system, pipeline)
    assert till.charged == [5, 5, 5, 5]


class CrashOnce(roost.Actor):
    """Charges, charges again, and crashes the first time it handles a message."""

    crashed = False
    seen: list[tuple[int, int]] = []
    done = anyio.Event()

    async def receive(self, message: Any) -> Any:
        first = await self.ctx.tools.call("charge", amount=message)
        second = await self.ctx.tools.call("charge", amount=message)
        if not CrashOnce.crashed:
            CrashOnce.crashed = True
            raise RuntimeError("crash after charging")
        CrashOnce.seen.append((first, second))
        CrashOnce.done.set()
        return None


async def test_a_message_redelivered_after_a_crash_gets_its_earlier_calls_results(
    tmp_path: Path, till: Till,
) -> None:
    CrashOnce.crashed, CrashOnce.seen, CrashOnce.done = False, [], anyio.Event()
    async with open_system(tmp_path / "store", *till.tools) as system:
        system.spawn(CrashOnce, name="shop").tell(5)
        with anyio.fail_after(5):
            await CrashOnce.done.wait()
    assert CrashOnce.seen == [(1, 2)]
    assert till.charged == [5, 5]


class Charger(roost.Actor):
    async def receive(self, message: Any) -> Any:
        return await self.ctx.tools.call("charge", amount=message)


async def test_each_message_to_an_actor_is_a_unit_of_its_own(tmp_path: Path, till: Till) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        shop = system.spawn(Charger, name="shop")
        assert [await shop.ask(5), await shop.ask(5)] == [1, 2]
    assert till.charged == [5, 5]


class ChargeAndForward(roost.Actor):
    """Charges 5, then hands the message on to a `Charger` that charges 5 too."""

    def __init__(self, shop: roost.ActorRef) -> None:
        self.shop = shop

    async def receive(self, message: Any) -> Any:
        await self.ctx.tools.call("charge", amount=5)
        self.ctx.forward(self.shop)


async def test_a_forwarded_message_is_a_unit_of_its_own_so_its_calls_are_not_replays(
        tmp_path: Path, till: Till) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        shop = system.spawn(Charger, name="shop")
        front = system.spawn(ChargeAndForward, shop, name="front")
        assert await front.ask(5, timeout=5) == 2

    assert till.charged == [5, 5]


class Background(roost.Actor):
    """The first message starts a task that charges later, while another message is handled."""

    def __init__(self) -> None:
        self.go = anyio.Event()
        self.task: Any = None

    async def receive(self, message: Any) -> Any:
        if message == "start":
            self.task = asyncio.get_running_loop().create_task(self._later())
            return None
        self.go.set()
        await asyncio.sleep(0)  # the task charges while this message is being handled
        own = await self.ctx.tools.call("charge", amount=5)
        return own, await self.task

    async def _later(self) -> int:
        await self.go.wait()
        return await self.ctx.tools.call("charge", amount=5)


async def test_a_call_from_a_task_an_actor_started_is_not_credited_to_the_message_at_hand(
        tmp_path: Path, till: Till) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        actor = system.spawn(Background, name="background")
        await actor.ask("start", timeout=5)
        assert sorted(await actor.ask("charge", timeout=5)) == [1, 2]

    assert till.charged == [5, 5]


async def test_identical_calls_from_outside_any_actor_run_each_time_unless_keyed(
    tmp_path: Path, till: Till,
) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        assert await system.tools.call("charge", amount=5) == 1
        assert await system.tools.call("charge", amount=5) == 2
        assert await system.tools.call("charge", key="order-1", amount=5) == 3
        assert await system.tools.call("charge", key="order-1", amount=5) == 3
    assert till.charged == [5, 5, 5]


# --- arguments and keys are checked before any key is claimed --------------------------------


async def test_an_argument_of_the_wrong_type_is_refused_and_leaves_its_key_unused(
    tmp_path: Path, till: Till,
) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        with pytest.raises(roost.ToolArgumentsInvalid, match=r"tool 'charge': .*argument 'amount' "
                           r"must be int, got str 'five'") as caught:
            await system.tools.call("charge", key="order-1", amount="five")
        assert (caught.value.argument, caught.value.expected, caught.value.given) == (
            "amount", "int", "str")
        assert await system.tools.call("charge", key="order-1", amount=5) == 1
    assert till.charged == [5]


async def test_arguments_are_converted_to_the_annotated_types_so_equal_calls_replay(
    tmp_path: Path, till: Till,
) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        first = await system.tools.call("book", key="b-1", room={"number": 7}, nights=2)
        again = await system.tools.call("book", key="b-1", room=Room(7), nights=2.0)
    assert first == again == "room 7 for 2.0 nights"
    assert till.booked == [(Room(7), 2.0)]


@pytest.mark.parametrize(("key", "shown"), [("", "''"), ("x" * 256, r"'x+'\.\.\. \(256"),
                                            (123, r"123 \(int\)")])
@pytest.mark.parametrize("tool", ["charge", "price"])
async def test_an_invalid_key_is_refused_before_the_tool_runs(
    tmp_path: Path, till: Till, key: Any, shown: str, tool: str,
) -> None:
    async with open_system(tmp_path / "store", *till.tools) as system:
        with pytest.raises(roost.ToolArgumentsInvalid,
                           match=rf"tool '{tool}': .*key={shown}.* is not a valid idempotency key"):
            await system.tools.call(tool, key=key, amount=5)
        assert system.tools.statistics().calls == 0
    assert till.charged == []


# --- breakers seen from the caller -----------------------------------------------------------


async def test_the_breaker_view_is_there_before_the_first_call_and_follows_the_breaker(
    clock: FakeClock,
) -> None:
    down = ConnectionError("down")

    @roost.tool(idempotent=True, breaker=roost.Breaker(failures=1, cooldown=10.0))
    async def flaky() -> str:
        raise down

    async with roost.ActorSystem(log_format="json", log_level="critical", clock=clock) as system:
        system.tools.register(flaky)
        view = system.tools.breaker("flaky")
        assert (view.tool, view.state, view.opened_at, view.last_error) == (
            "flaky", "closed", None, None)
        assert view.statistics().failures == 0
        heard: list[roost.BreakerTransition] = []
        view.add_listener(heard.append)
        with pytest.raises(ConnectionError):
            await system.tools.call("flaky")
        assert (view.state, view.opened_at, view.last_error) == ("open", clock.now, down)
        assert view.retry_at == clock.now + 10.0
        with pytest.raises(roost.ToolUnavailable, match=r"opened by ConnectionError: down") as caught:
            await system.tools.call("flaky")
        assert caught.value.cause is down
        view.reset()
        assert view.state == "closed"
        assert [(t.new, t.reason, t.cause) for t in heard] == [
            ("open", "failures", down), ("closed", "reset", None)]


async def test_a_breaker_forced_open_refuses_every_call_until_reset(clock: FakeClock) -> None:
    @roost.tool(breaker=roost.Breaker(cooldown=1.0))
    async def send(to: str) -> str:
        return to

    async with roost.ActorSystem(log_format="json", log_level="critical", clock=clock) as system:
        system.tools.register(send)
        system.tools.breaker("send").force_open()
        clock.advance(3600.0)
        with pytest.raises(roost.ToolUnavailable, match=r"forced open") as caught:
            await system.tools.call("send", to="ada")
        assert caught.value.forced
        assert system.tools.statistics().breaker_trips == 0
        system.tools.breaker("send").reset()
        assert await system.tools.call("send", to="ada") == "ada"


async def test_asking_for_the_breaker_of_an_unknown_tool_or_one_without_a_breaker_fails(
    system: roost.ActorSystem, till: Till,
) -> None:
    for item in till.tools:
        system.tools.register(item)
    with pytest.raises(roost.UnknownTool, match=r"no tool named 'chrage'"):
        system.tools.breaker("chrage")
    with pytest.raises(roost.ConfigurationError, match=r"tool 'charge' has no circuit breaker; "
                       r"declare one with @tool\(breaker=roost.Breaker"):
        system.tools.breaker("charge")


@pytest.mark.parametrize("read_only", [False, True])
async def test_a_fallback_that_raises_is_a_tool_fallback_failed_naming_the_tool(
    read_only: bool,
) -> None:
    async def cached(to: str) -> str:
        raise KeyError(to)

    @roost.tool(idempotent=True, read_only=read_only, fallback=cached,
                breaker=roost.Breaker(failures=1, cooldown=60.0))
    async def lookup(to: str) -> str:
        raise ConnectionError("down")

    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        system.tools.register(lookup)
        with pytest.raises(ConnectionError):
            await system.tools.call("lookup", to="ada")
        with pytest.raises(roost.ToolFallbackFailed, match=r"tool 'lookup': its circuit "
                           r"breaker is open and its fallback raised KeyError: 'ada'") as caught:
            await system.tools.call("lookup", to="ada")
        assert isinstance(caught.value, roost.ToolUnavailable)
        assert isinstance(caught.value.__cause__, KeyError)
        assert caught.value.error is caught.value.__cause__
        assert isinstance(caught.value.cause, ConnectionError)


# --- what every call logs ----------------------------------------------------------------------


async def test_executed_joined_replayed_and_ignored_key_calls_are_logged(
    tmp_path: Path, till: Till,
) -> None:
    till.hold = anyio.Event()
    async with open_system(tmp_path / "store", *till.tools, log_level="info") as system:
        with capture_logs() as logs:
            first = asyncio.ensure_future(system.tools.call("charge", key="k", amount=5))
            await till.entered.wait()
            joined = asyncio.ensure_future(system.tools.call("charge", key="k", amount=5))
            await anyio.wait_all_tasks_blocked()
            till.hold.set()
            with anyio.fail_after(5):
                assert await asyncio.gather(first, joined) == [1, 1]
            assert await system.tools.call("charge", key="k", amount=5) == 1
            assert await system.tools.call("price", key="p", amount=5) == 5
    events = [(log["event"], log.get("tool"), log.get("key")) for log in logs
              if log["event"].startswith("tool_call_")]
    assert events == [
        ("tool_call_joined", "charge", "k"),
        ("tool_call_executed", "charge", "k"),
        ("tool_call_replayed", "charge", "k"),
        ("tool_call_key_ignored", "price", "p"),
    ]
    assert [log["outcome"] for log in logs if log["event"] == "tool_call_executed"] == [
        "completed"]


async def test_a_fallback_that_hangs_while_the_breaker_is_open_is_cut_off_by_the_calls_timeout(
        clock: FakeClock) -> None:
    async def stuck(to: str) -> str:
        await anyio.sleep_forever()
        return to

    @roost.tool(breaker=roost.Breaker(cooldown=60.0), fallback=stuck)
    async def send(to: str) -> str:
        return to

    async with roost.ActorSystem(log_format="json", log_level="critical", clock=clock) as system:
        system.tools.register(send)
        system.tools.breaker("send").force_open()
        with anyio.fail_after(5), pytest.raises(
                roost.ToolFallbackFailed, match="send") as caught:
            await system.tools.call("send", to="ada", timeout=0.2)

    assert isinstance(caught.value.__cause__, roost.ToolTimeout)
    assert "fallback timed out after 0.2s" in str(caught.value.__cause__)
