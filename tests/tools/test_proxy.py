"""Tests of roost/tools/proxy.py (through `system.tools` and `ctx.tools`) with in-process tools.

The HTTP side (breaker, retries, the Idempotency-Key header, bulkheads) is in
test_tool_proxy_http.py; the crash of a whole process in tests/crash/test_tool_crash.py.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest.mock import Mock

import aiohttp
import anyio
import msgspec
import pytest

import roost
import roost.tools.client
from roost.errors import (
    StoreError,
    ToolArgumentsInvalid,
    ToolBusy,
    ToolCallOptionInvalid,
    ToolCallTimeout,
    ToolResultUnrecordable,
    ToolTimeout,
)
from roost.storage import Ledger, Store, Update
from roost.tools.keys import fingerprint
from roost.tools.proxy import ToolProxy, ToolStatistics
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


class Receipt(msgspec.Struct, frozen=True):
    to: str
    number: int


class Send(roost.Message, frozen=True):
    to: str


class Sender(roost.Actor):
    """Sends through `ctx.tools`, with the key derived from its message or its run's step."""

    async def receive(self, message: Any) -> Any:
        match message:
            case Send(to=to):
                return await self.ctx.tools.call("send", to=to)
        return None


class Mailer:
    """A side-effecting `send` tool that counts what it sent; a call may be held."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[str] = []
        self.hold: anyio.Event | None = None
        self.entered = anyio.Event()

        @roost.tool(name="send", **options)
        async def send(to: str) -> Receipt:
            self.sent.append(to)
            self.entered.set()
            if self.hold is not None:
                await self.hold.wait()
            return Receipt(to, len(self.sent))

        self.tool = send


@roost.tool(read_only=True)
async def ping() -> str:
    return "pong"


def open_system(store: Path | None = None, clock: Callable[[], float] = time.monotonic,
                ) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, clock=clock, log_format="json", log_level="critical")


def registered(system: roost.ActorSystem, *tools: object) -> None:
    for item in (ping, *tools):
        system.tools.register(item)


async def outcomes_of_three_joined_calls(system: roost.ActorSystem, go: anyio.Event, tool: str,
                                         **arguments: Any) -> list[object]:
    """Three concurrent calls with one key, released by `go` once all have joined: their outcomes."""
    calls = [asyncio.ensure_future(system.tools.call(tool, key="k", **arguments)) for _ in range(3)]
    await anyio.wait_all_tasks_blocked()
    go.set()
    with anyio.fail_after(5):
        return await asyncio.gather(*calls, return_exceptions=True)


async def ledger_keys(system: roost.ActorSystem) -> list[bytes]:
    return [key async for key, _ in system.store.scan("ledger")]


# --- the ledger: once per key ---------------------------------------------------------------


async def test_a_completed_key_returns_the_stored_result_as_the_declared_return_type(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        first = await system.tools.call("send", key="welcome-ada", to="ada")
        again = await system.tools.call("send", key="welcome-ada", to="ada")
        assert first == again == Receipt("ada", 1)
        assert type(again) is Receipt
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        replayed = await system.tools.call("send", key="welcome-ada", to="ada")
        assert type(replayed) is Receipt and replayed == first
        assert system.tools.statistics() == ToolStatistics(calls=1, dedup_hits=1)
    assert mailer.sent == ["ada"]


async def test_read_only_tools_skip_the_ledger(tmp_path: Path) -> None:
    looked_up: list[object] = []

    @roost.tool(read_only=True)
    async def lookup(query: object) -> str:
        looked_up.append(query)
        return "found"

    async with open_system(tmp_path / "store") as system:
        registered(system, lookup)
        odd = object()  # a read-only call needs no key, so its arguments need not be JSON
        assert await system.tools.call("lookup", query="q", key="same") == "found"
        assert await system.tools.call("lookup", query="q", key="same") == "found"
        with anyio.fail_after(5):
            assert await system.tools.call("lookup", query=odd) == "found"
        assert looked_up == ["q", "q", odd]
        assert await ledger_keys(system) == []


async def test_derived_keys_are_scoped_to_the_message_being_handled(tmp_path: Path) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        alice, bob = system.spawn(Sender, name="alice"), system.spawn(Sender, name="bob")
        assert await alice.ask(Send("ada")) == Receipt("ada", 1)
        assert await alice.ask(Send("ada")) == Receipt("ada", 2)  # another message: its own key
        assert await bob.ask(Send("ada")) == Receipt("ada", 3)
    assert mailer.sent == ["ada", "ada", "ada"]


async def test_derived_keys_are_scoped_to_the_run_and_step_of_a_steps_request(
    tmp_path: Path,
) -> None:
    mailer = Mailer()

    def step(run_id: str, name: str | None) -> roost.TraceContext:
        return roost.TraceContext("ab" * 16, None, run_id, name)

    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        alice, bob = system.spawn(Sender, name="alice"), system.spawn(Sender, name="bob")
        assert await alice.ask(Send("ada"), trace=step("run-1", "a")) == Receipt("ada", 1)
        # The same step of the same run, asked again (a retry or a resume): once.
        assert await bob.ask(Send("ada"), trace=step("run-1", "a")) == Receipt("ada", 1)
        assert await bob.ask(Send("ada"), trace=step("run-1", "b")) == Receipt("ada", 2)
        assert await bob.ask(Send("ada"), trace=step("run-2", "a")) == Receipt("ada", 3)
        # In a run but not a step's request: a unit of work of its own.
        assert await bob.ask(Send("ada"), trace=step("run-1", None)) == Receipt("ada", 4)
    assert mailer.sent == ["ada"] * 4


async def test_a_caller_that_gives_up_leaves_the_call_running_and_its_result_recorded(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    mailer.hold = anyio.Event()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with anyio.move_on_after(5) as scope:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(lambda: system.tools.call("send", key="k", to="ada"))
                await mailer.entered.wait()
                tasks.cancel_scope.cancel()
        assert not scope.cancelled_caught
        mailer.hold.set()
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
        entry = await Ledger(system.store).get("send", "k")
        assert entry is not None and entry.status == "completed"
    assert mailer.sent == ["ada"]


async def test_a_permanent_failure_is_stored_and_replayed_without_running_the_tool(
    tmp_path: Path,
) -> None:
    attempts: list[str] = []

    @roost.tool
    async def charge(card: str) -> str:
        attempts.append(card)
        raise ValueError(f"card {card} declined")

    async with open_system(tmp_path / "store") as system:
        registered(system, charge)
        with pytest.raises(ValueError, match="card 4242 declined"):
            await system.tools.call("charge", key="order-1", card="4242")
        with pytest.raises(roost.PermanentToolError,
                           match=r"'order-1' failed before .*ValueError: card 4242 declined",
                           ) as replayed:
            await system.tools.call("charge", key="order-1", card="4242")
        assert (replayed.value.original_type, replayed.value.code) == ("ValueError", None)
        stats = system.tools.statistics()
        assert (stats.calls, stats.failures, stats.dedup_hits) == (2, 2, 1)
    assert attempts == ["4242"]


async def test_a_result_that_cannot_be_recorded_finalizes_the_key(tmp_path: Path) -> None:
    runs: list[int] = []

    @roost.tool
    async def open_socket(port: int) -> object:
        runs.append(port)
        return object()

    async with open_system(tmp_path / "store") as system:
        registered(system, open_socket)
        for _ in range(2):
            with pytest.raises(ToolResultUnrecordable, match="will not be run again"):
                await system.tools.call("open_socket", key="s", port=80)
        entry = await Ledger(system.store).get("open_socket", "s")
        assert entry is not None and entry.status == "unrecordable"
    assert runs == [80]


async def test_a_call_refused_by_a_full_bulkhead_can_be_made_again_with_its_key(
    tmp_path: Path,
) -> None:
    mailer = Mailer(concurrency=1, max_waiting=0)
    mailer.hold = anyio.Event()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(lambda: system.tools.call("send", key="first", to="ada"))
            await mailer.entered.wait()
            with pytest.raises(ToolBusy, match="tool 'send' is busy"):
                await system.tools.call("send", key="second", to="bo")
            mailer.hold.set()
        # ToolBusy means the tool never ran ("safe to retry later"): the key stays usable.
        assert await system.tools.call("send", key="second", to="bo") == Receipt("bo", 2)
    assert mailer.sent == ["ada", "bo"]


async def test_a_call_cut_short_by_shutdown_fails_with_actor_stopped_and_its_outcome_is_unknown(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    mailer.hold = anyio.Event()
    stopped: list[roost.ActorStopped] = []

    async def caller(system: roost.ActorSystem) -> None:
        with pytest.raises(roost.ActorStopped) as caught:
            await system.tools.call("send", key="k", to="ada")
        stopped.append(caught.value)

    async with anyio.create_task_group() as tasks:
        async with open_system(tmp_path / "store") as system:
            registered(system, mailer.tool)
            tasks.start_soon(caller, system)
            await mailer.entered.wait()
    assert len(stopped) == 1
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with pytest.raises(roost.ToolOutcomeUnknown):
            await system.tools.call("send", key="k", to="ada")
    assert mailer.sent == ["ada"]
    # The error names what could not be delivered: the call, not the type of a label.
    assert "cannot deliver Call" in str(stopped[0]), str(stopped[0])


async def test_every_caller_joined_to_a_failing_call_gets_its_error_and_counts_as_a_failure(
    tmp_path: Path,
) -> None:
    go = anyio.Event()

    @roost.tool
    async def charge(card: str) -> str:
        await go.wait()
        raise ValueError(f"card {card} declined")

    async with open_system(tmp_path / "store") as system:
        registered(system, charge)
        results = await outcomes_of_three_joined_calls(system, go, "charge", card="4242")
        assert [str(result) for result in results] == ["card 4242 declined"] * 3
        stats = system.tools.statistics()
        assert (stats.calls, stats.joined, stats.failures) == (3, 2, 3)


class Escaped(BaseException):
    """Raised by a tool past `Exception`, like a misused KeyboardInterrupt."""


async def test_callers_hear_actor_stopped_when_a_tool_raises_past_exception(
    tmp_path: Path,
) -> None:
    go = anyio.Event()

    @roost.tool
    async def escape(to: str) -> str:
        await go.wait()
        raise Escaped(to)

    async with open_system(tmp_path / "store") as system:
        registered(system, escape)
        results = await outcomes_of_three_joined_calls(system, go, "escape", to="ada")
        assert [type(result) for result in results] == [roost.ActorStopped] * 3


async def test_callers_hear_actor_stopped_when_the_proxy_stops_while_a_tool_still_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ToolProxy, "shutdown_timeout", 0.05)
    started, release, cleaned = anyio.Event(), anyio.Event(), anyio.Event()

    @roost.tool
    async def slow(to: str) -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:  # a cancellation cleanup that outlasts the proxy's shutdown timeout
            with anyio.CancelScope(shield=True):
                await release.wait()
            cleaned.set()
        return to

    async with open_system(tmp_path / "store") as system:
        registered(system, slow)
        calls = [asyncio.ensure_future(system.tools.call("slow", key="k", to="ada"))
                 for _ in range(3)]
        await started.wait()
        assert system.tools.statistics().joined == 2
    with anyio.fail_after(5):
        results = await asyncio.gather(*calls, return_exceptions=True)
    assert [type(result) for result in results] == [roost.ActorStopped] * 3
    release.set()
    await cleaned.wait()
    await anyio.wait_all_tasks_blocked()


STRAY_EXITS = pytest.mark.parametrize(
    ("stray", "named"),
    [(asyncio.CancelledError, r"CancelledError although its call was not cancelled"),
     (GeneratorExit, r"GeneratorExit \(a generator's close escaped it\)")],
    ids=["CancelledError", "GeneratorExit"],
)


@STRAY_EXITS
async def test_a_tool_that_raises_cancellation_itself_fails_like_any_failing_tool(
    tmp_path: Path, stray: type[BaseException], named: str,
) -> None:
    ran: list[str] = []
    go = anyio.Event()

    @roost.tool(retry=roost.Retry(attempts=3, base_delay=0.0))
    async def charge(card: str) -> str:
        ran.append(card)
        raise stray("raised by the tool's own code")

    async with open_system(tmp_path / "store") as system:
        mailer = Mailer()
        mailer.hold = go
        registered(system, charge, mailer.tool)
        other = asyncio.ensure_future(system.tools.call("send", key="other", to="ada"))
        await mailer.entered.wait()
        with anyio.fail_after(5), pytest.raises(RuntimeError, match=rf"tool 'charge' raised {named}"):
            await system.tools.call("charge", key="order-1", card="4242")
        # A plain failure: not retried (RuntimeError is not in retry_on), stored and replayed.
        with pytest.raises(roost.PermanentToolError,
                           match=r"'order-1' failed before .*RuntimeError: tool 'charge'") as replayed:
            await system.tools.call("charge", key="order-1", card="4242")
        assert replayed.value.original_type == "RuntimeError"
        # The proxy goes on: the call in flight meanwhile is answered.
        go.set()
        with anyio.fail_after(5):
            assert await other == Receipt("ada", 1)
    assert ran == ["4242"]


@STRAY_EXITS
async def test_a_tool_that_raises_cancellation_itself_is_retried_if_retry_on_says_so(
    tmp_path: Path, stray: type[BaseException], named: str,
) -> None:
    ran: list[str] = []

    @roost.tool(retry=roost.Retry(attempts=3, base_delay=0.0, retry_on=RuntimeError))
    async def charge(card: str) -> str:
        ran.append(card)
        if len(ran) < 3:
            raise stray("raised by the tool's own code")
        return "charged"

    async with open_system(tmp_path / "store") as system:
        registered(system, charge)
        with anyio.fail_after(5):
            assert await system.tools.call("charge", key="order-1", card="4242") == "charged"
    assert ran == ["4242"] * 3


@STRAY_EXITS
async def test_a_read_only_tool_that_raises_cancellation_itself_fails_in_its_callers_task(
    stray: type[BaseException], named: str,
) -> None:
    @roost.tool(read_only=True)  # no time limit: a plain await in the caller's task
    async def look() -> str:
        raise stray("raised by the tool's own code")

    async with open_system() as system:
        registered(system, look)
        with pytest.raises(RuntimeError, match=rf"tool 'look' raised {named}"):
            await system.tools.call("look")


# --- a key found in flight: an earlier process died mid-call --------------------------------


async def leave_in_flight(folder: Path, tool: str, key: str, arguments: dict[str, Any]) -> None:
    """Claim `key` as a process that dies before settling it would."""
    async with Store.open(folder) as store:
        claim = await Ledger(store).claim(tool, key, fingerprint(arguments, tool=tool))
        assert claim.claimed


async def test_a_verify_hook_that_finds_the_call_done_settles_it_with_its_result(
    tmp_path: Path,
) -> None:
    asked: list[tuple[str, dict[str, Any]]] = []

    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        asked.append((key, dict(arguments)))
        return roost.Done(Receipt("ada", 41))

    mailer = Mailer(verify=verify)
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 41)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 41)
        entry = await Ledger(system.store).get("send", "k")
        assert entry is not None and entry.status == "completed"
    assert asked == [("k", {"to": "ada"})]
    assert mailer.sent == []


async def test_a_verify_hook_that_finds_the_call_not_done_lets_it_run_once(
    tmp_path: Path,
) -> None:
    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        return roost.NotDone()

    mailer = Mailer(verify=verify)
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


async def test_without_verify_an_idempotent_tool_is_run_again(tmp_path: Path) -> None:
    mailer = Mailer(idempotent=True)
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


async def test_without_verify_a_non_idempotent_call_has_an_unknown_outcome_and_never_reruns(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    for _ in range(2):  # neither a second call nor a second process runs it
        async with open_system(tmp_path / "store") as system:
            registered(system, mailer.tool)
            for _ in range(2):
                with pytest.raises(roost.ToolOutcomeUnknown,
                                   match="'send': call with key 'k' was in flight"):
                    await system.tools.call("send", key="k", to="ada")
            entry = await Ledger(system.store).get("send", "k")
            assert entry is not None and entry.status == "in_flight"
    assert mailer.sent == []


async def test_a_key_in_flight_with_other_arguments_is_still_a_conflict(tmp_path: Path) -> None:
    mailer = Mailer(idempotent=True)
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with pytest.raises(roost.IdempotencyConflict, match="'k'"):
            await system.tools.call("send", key="k", to="bo")
    assert mailer.sent == []


async def test_a_call_past_its_deadline_raises_tool_timeout_even_when_the_ledger_is_slow(
    tmp_path: Path,
) -> None:
    # Idempotent: cutting off a call of any other tool leaves its outcome unknown.
    @roost.tool(idempotent=True, retry=roost.Retry(attempts=3, deadline=0.2))
    async def hang(n: int) -> None:
        await anyio.sleep_forever()

    def slow_disk(current: bytes | None) -> None:
        time.sleep(0.03)  # in the writer thread: a commit that takes 30 ms, like a slow fsync
        return None

    async with open_system(tmp_path / "store") as system:
        registered(system, hang)
        busy = asyncio.ensure_future(system.store.commit([Update("runs", b"slow", slow_disk)]))
        try:
            with pytest.raises(ToolTimeout, match=r"'hang': call timed out after 0\.2s"):
                await system.tools.call("hang", n=1)
        finally:
            await busy


# --- errors at the caller -------------------------------------------------------------------


async def test_an_unknown_tool_is_a_clear_error_listing_the_known_ones(system: roost.ActorSystem,
                                                                      ) -> None:
    registered(system, Mailer().tool)
    with pytest.raises(roost.UnknownTool, match=r"no tool named 'sned' .*known: ping, send"):
        await system.tools.call("sned", to="ada")
    assert system.tools.statistics().calls == 0


async def test_arguments_that_do_not_fit_are_refused_before_the_proxy(system: roost.ActorSystem,
                                                                      ) -> None:
    registered(system, Mailer().tool)
    with pytest.raises(ToolArgumentsInvalid, match=r"tool 'send'.*missing a required argument"):
        await system.tools.call("send")
    with pytest.raises(ToolArgumentsInvalid, match=r"unexpected keyword argument 'cc'"):
        await system.tools.call("send", to="ada", cc="bo")
    assert system.tools.statistics().calls == 0


async def test_arguments_that_cannot_make_a_key_are_a_clear_error(tmp_path: Path) -> None:
    sent: list[object] = []

    @roost.tool
    async def send(to: object) -> None:
        sent.append(to)

    async with open_system(tmp_path / "store") as system:
        registered(system, send)
        with anyio.fail_after(2):
            with pytest.raises(ToolArgumentsInvalid, match=r"argument 'to' \(object\) cannot be "
                               r"hashed .*arguments must be JSON-encodable"):
                await system.tools.call("send", to=object())
    assert sent == []


async def test_a_call_with_bad_arguments_does_not_disturb_calls_in_flight(tmp_path: Path) -> None:
    mailer = Mailer()
    mailer.hold = anyio.Event()
    results: list[Any] = []
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)

        async def in_flight() -> None:
            try:
                results.append(await system.tools.call("send", key="k", to="ada"))
            except Exception as error:
                results.append(error)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(in_flight)
            await mailer.entered.wait()
            with anyio.move_on_after(2), pytest.raises(ToolArgumentsInvalid):
                await system.tools.call("send", to=object())  # type: ignore[arg-type]
            mailer.hold.set()
    assert results == [Receipt("ada", 1)]


# --- statistics and breakers seen from the caller -------------------------------------------


async def test_statistics_and_breaker_states_follow_the_proxy_across_its_restart() -> None:
    @roost.tool(read_only=True, breaker=roost.Breaker(failures=1, cooldown=60.0))
    async def flaky() -> None:
        raise roost.TransientToolError("down")

    async with open_system() as system:
        registered(system, flaky)
        await system.tools.call("ping")
        system.lookup("/tool-proxy").tell("not a call")  # crashes it: the supervisor restarts it
        await system.tools.call("ping")  # answered by the restarted proxy
        before = system.tools.statistics().calls
        await system.tools.call("ping")
        assert system.tools.statistics().calls == before + 1
        with pytest.raises(roost.TransientToolError):
            await system.tools.call("flaky")
        assert system.tools.breaker_states() == {"flaky": "open"}
        with pytest.raises(roost.ToolUnavailable):
            await system.tools.call("flaky")


# --- attempts cut off with their outcome unknown --------------------------------------------


class Courier:
    """A side-effecting `deliver` tool that records each send, then hangs while `hanging`."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[str] = []
        self.hanging = True

        @roost.tool(name="deliver", **options)
        async def deliver(to: str) -> Receipt:
            self.sent.append(to)
            if self.hanging:
                await anyio.sleep_forever()
            return Receipt(to, len(self.sent))

        self.tool = deliver


async def test_a_timed_out_attempt_of_a_non_idempotent_tool_is_not_retried_and_stays_unknown(
    tmp_path: Path,
) -> None:
    courier = Courier(timeout=0.2, retry=roost.Retry(attempts=3, base_delay=0.0))
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(
            roost.ToolOutcomeUnknown,
            match=r"tool 'deliver': call with key 'k' was cut off with its outcome unknown "
                  r"\(ToolTimeout: tool 'deliver': attempt timed out after 0\.2s\) and the tool "
                  r"has no verify hook; it was not repeated and the key stays in flight",
        ) as caught:
            await system.tools.call("deliver", key="k", to="ada")
        assert isinstance(caught.value.attempt_error, ToolTimeout)
        assert caught.value.cause is caught.value.__cause__ is caught.value.attempt_error
        courier.hanging = False
        with pytest.raises(roost.ToolOutcomeUnknown,
                           match="'k' was left in flight by an earlier call in this process"):
            await system.tools.call("deliver", key="k", to="ada")
        entry = await Ledger(system.store).get("deliver", "k")
        assert entry is not None and entry.status == "in_flight"
    assert courier.sent == ["ada"]


async def test_a_timed_out_attempt_is_tried_again_only_when_verify_finds_it_not_done(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        asked.append(key)
        courier.hanging = False  # the next attempt answers
        return roost.NotDone()

    courier = Courier(timeout=0.1, retry=roost.Retry(attempts=3, base_delay=0.0), verify=verify)
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5):
            assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 2)
        assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 2)
    assert asked == ["k"]
    assert courier.sent == ["ada", "ada"]


async def test_a_timed_out_attempt_that_verify_finds_done_ends_with_verifys_result(
    tmp_path: Path,
) -> None:
    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        return roost.Done(Receipt(arguments["to"], 7))

    courier = Courier(timeout=0.1, retry=roost.Retry(attempts=3, base_delay=0.0), verify=verify)
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5):
            assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 7)
        entry = await Ledger(system.store).get("deliver", "k")
        assert entry is not None and entry.status == "completed"
    assert courier.sent == ["ada"]


async def test_a_last_attempt_that_verify_finds_not_done_releases_the_key(tmp_path: Path) -> None:
    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        return roost.NotDone()

    courier = Courier(timeout=0.1, verify=verify)
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(ToolTimeout, match=r"timed out after 0\.1s"):
            await system.tools.call("deliver", key="k", to="ada")
        assert await Ledger(system.store).get("deliver", "k") is None  # known not done
        courier.hanging = False
        assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 2)


async def test_a_timed_out_attempt_of_an_idempotent_tool_is_retried(tmp_path: Path) -> None:
    courier = Courier(idempotent=True, timeout=0.1, retry=roost.Retry(attempts=2, base_delay=0.0))
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(ToolTimeout):
            await system.tools.call("deliver", key="k", to="ada")
        assert await Ledger(system.store).get("deliver", "k") is None  # retryable: released
    assert courier.sent == ["ada", "ada"]


@pytest.mark.parametrize(
    ("lost", "unknown"),
    [(ConnectionResetError("reset by peer"), True), (BrokenPipeError("broken pipe"), True),
     (aiohttp.ServerDisconnectedError(), True),  # a tool that uses aiohttp itself
     (ConnectionRefusedError("refused"), False), (roost.TransientToolError("503"), False),
     (aiohttp.ClientConnectorError(Mock(), ConnectionRefusedError(111, "refused")), False)],
)
async def test_a_connection_broken_after_sending_is_an_unknown_outcome_a_refused_one_is_not(
    tmp_path: Path, lost: Exception, unknown: bool,
) -> None:
    attempts: list[str] = []

    @roost.tool(retry=roost.Retry(attempts=2, base_delay=0.0))
    async def post(to: str) -> str:
        attempts.append(to)
        raise lost

    async with open_system(tmp_path / "store") as system:
        registered(system, post)
        with pytest.raises(roost.ToolOutcomeUnknown if unknown else type(lost)) as caught:
            await system.tools.call("post", key="k", to="ada")
        entry = await Ledger(system.store).get("post", "k")
    if unknown:
        assert caught.value.__cause__ is lost
        assert (attempts, entry is not None and entry.status) == (["ada"], "in_flight")
    else:
        assert (attempts, entry) == (["ada", "ada"], None)


async def test_without_a_store_a_timed_out_non_idempotent_call_still_has_an_unknown_outcome(
) -> None:
    courier = Courier(timeout=0.1, retry=roost.Retry(attempts=3, base_delay=0.0))
    async with open_system() as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(roost.ToolOutcomeUnknown):
            await system.tools.call("deliver", key="k", to="ada")
    assert courier.sent == ["ada"]


# --- time limits ----------------------------------------------------------------------------


async def test_every_attempt_of_a_side_effecting_tool_has_the_default_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert roost.tools.spec.DEFAULT_TIMEOUT == 60.0
    assert Courier().tool.__roost_tool__.retry_policy.attempt_timeout == 60.0  # type: ignore[attr-defined]
    monkeypatch.setattr(roost.tools.spec, "DEFAULT_TIMEOUT", 0.1)  # not a minute in a test
    courier = Courier(idempotent=True)
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(
                ToolTimeout, match=r"tool 'deliver': attempt timed out after 0\.1s"):
            await system.tools.call("deliver", key="k", to="ada")
        assert await Ledger(system.store).get("deliver", "k") is None


async def test_a_hanging_half_open_probe_is_cut_off_and_the_breaker_opens_again(
    clock: FakeClock,
) -> None:
    courier = Courier(idempotent=True, timeout=0.1,
                      breaker=roost.Breaker(failures=1, cooldown=5.0))
    async with open_system(clock=clock) as system:
        registered(system, courier.tool)
        with anyio.fail_after(5):
            with pytest.raises(ToolTimeout):
                await system.tools.call("deliver", key="first", to="ada")  # trips the breaker
            assert system.tools.breaker_states() == {"deliver": "open"}
            clock.advance(5.0)
            with pytest.raises(ToolTimeout):
                await system.tools.call("deliver", key="probe", to="ada")  # the probe hangs
        assert system.tools.breaker_states() == {"deliver": "open"}  # not stuck half-open
    assert courier.sent == ["ada", "ada"]


class Stubborn:
    """A side-effecting `deliver` tool that ignores its cancellation until `release` is set."""

    def __init__(self, *, ends_cancelled: bool = False, **options: Any) -> None:
        self.sent: list[str] = []
        self.release = asyncio.Event()

        @roost.tool(name="deliver", **options)
        async def deliver(to: str) -> Receipt:
            self.sent.append(to)
            if len(self.sent) > 1:
                return Receipt(to, len(self.sent))
            while not self.release.is_set():
                try:
                    await self.release.wait()
                except asyncio.CancelledError:
                    pass  # swallowed: the attempt goes on past its time limit
            if ends_cancelled:  # it honours its cancellation at last
                raise asyncio.CancelledError
            return Receipt(to, len(self.sent))

        self.tool = deliver


async def test_a_call_whose_tool_ignores_its_cancellation_is_abandoned_and_frees_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(roost.tools.retry.Watchdog, "GRACE", 0.1)
    stubborn = Stubborn(timeout=0.2)
    async with open_system(tmp_path / "store") as system:
        registered(system, stubborn.tool)
        with anyio.fail_after(5), pytest.raises(
            roost.ToolOutcomeUnknown,
            match=r"tool 'deliver': call with key 'k' was cut off with its outcome unknown "
                  r"\(ToolTimeout: tool 'deliver': attempt \(abandoned: it ignored its "
                  r"cancellation\) timed out after 0\.2s\)",
        ) as caught:
            await system.tools.call("deliver", key="k", to="ada")
        assert isinstance(caught.value.attempt_error, ToolTimeout)
        assert system.statistics()["abandoned"] == 1
        assert system.tools.statistics().failures == 1
        # The key no longer counts as running here: a later call finds its outcome unknown
        # at once, and a person may settle it.
        with anyio.fail_after(1), pytest.raises(
                roost.ToolOutcomeUnknown, match="'k' was left in flight by an earlier call"):
            await system.tools.call("deliver", key="k", to="ada")
        assert [call.key for call in await system.tools.unknown_calls()] == ["k"]
        assert await system.tools.settle_unknown("deliver", "k", done=True,
                                                 result=Receipt("ada", 7))
        # The abandoned attempt ends at last: it answers no one and records nothing.
        abandoned = set(system.engine.abandoned_tasks)
        assert len(abandoned) == 1
        stubborn.release.set()
        await asyncio.wait(abandoned, timeout=5)
        assert all(task.done() for task in abandoned)
        assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 7)
        assert system.tools.statistics().failures == 2  # the abandoned call and the next one
    assert stubborn.sent == ["ada"]


async def test_an_abandoned_call_of_an_idempotent_tool_times_out_and_its_key_runs_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(roost.tools.retry.Watchdog, "GRACE", 0.1)
    stubborn = Stubborn(timeout=0.2, idempotent=True)
    async with open_system(tmp_path / "store") as system:
        registered(system, stubborn.tool)
        with anyio.fail_after(5), pytest.raises(
                ToolTimeout, match=r"attempt \(abandoned: it ignored its cancellation\)"):
            await system.tools.call("deliver", key="k", to="ada")
        stubborn.release.set()
        with anyio.fail_after(5):
            assert await system.tools.call("deliver", key="k", to="ada") == Receipt("ada", 2)
        assert system.statistics()["abandoned"] == 1
    assert stubborn.sent == ["ada", "ada"]


@pytest.mark.parametrize("idempotent", [True, False])
async def test_an_abandoned_attempt_that_ends_at_last_is_neither_retried_nor_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, idempotent: bool,
) -> None:
    # Its callers were answered when it was abandoned: running the tool again then would be
    # a side effect nobody waits for and nothing records.
    monkeypatch.setattr(roost.tools.retry.Watchdog, "GRACE", 0.1)
    verified: list[str] = []

    async def verify(key: str, arguments: Any) -> roost.NotDone:
        verified.append(key)
        return roost.NotDone()

    stubborn = Stubborn(ends_cancelled=True, timeout=0.2, idempotent=idempotent,
                        verify=None if idempotent else verify,
                        retry=roost.Retry(attempts=3, base_delay=0.0))
    async with open_system(tmp_path / "store") as system:
        registered(system, stubborn.tool)
        with anyio.fail_after(5), pytest.raises(ToolTimeout if idempotent
                                                else roost.ToolOutcomeUnknown):
            await system.tools.call("deliver", key="k", to="ada")
        abandoned = set(system.engine.abandoned_tasks)
        stubborn.release.set()
        await asyncio.wait(abandoned, timeout=5)

        assert all(task.done() for task in abandoned)
    assert (stubborn.sent, verified) == (["ada"], [])


# --- replays come before the breaker --------------------------------------------------------


async def test_a_stored_result_is_replayed_while_the_breaker_is_open_not_the_fallback(
    tmp_path: Path, clock: FakeClock,
) -> None:
    fallbacks: list[str] = []
    failing: list[bool] = [False]

    async def cached(to: str) -> Receipt:
        fallbacks.append(to)
        return Receipt(to, 0)

    @roost.tool(breaker=roost.Breaker(failures=1, cooldown=60.0), fallback=cached)
    async def send(to: str) -> Receipt:
        if failing[0]:
            raise roost.TransientToolError("503")
        return Receipt(to, 1)

    async with open_system(tmp_path / "store", clock=clock) as system:
        registered(system, send)
        assert await system.tools.call("send", key="done", to="ada") == Receipt("ada", 1)
        failing[0] = True
        with pytest.raises(roost.TransientToolError):
            await system.tools.call("send", key="trip", to="bo")
        assert system.tools.breaker_states() == {"send": "open"}
        assert await system.tools.call("send", key="done", to="ada") == Receipt("ada", 1)
        assert await system.tools.call("send", key="new", to="cy") == Receipt("cy", 0)
    assert fallbacks == ["cy"]


async def test_a_stored_permanent_failure_is_replayed_while_the_breaker_is_open(
    tmp_path: Path, clock: FakeClock,
) -> None:
    @roost.tool(breaker=roost.Breaker(failures=1, cooldown=60.0))
    async def charge(card: str) -> str:
        if card == "bad":
            raise roost.PermanentToolError("card declined", code="card_declined")
        raise roost.TransientToolError("503")

    async with open_system(tmp_path / "store", clock=clock) as system:
        registered(system, charge)
        with pytest.raises(roost.PermanentToolError):
            await system.tools.call("charge", key="declined", card="bad")
        with pytest.raises(roost.TransientToolError):
            await system.tools.call("charge", key="trip", card="good")
        assert system.tools.breaker_states() == {"charge": "open"}
        with pytest.raises(roost.PermanentToolError, match="failed before") as replayed:
            await system.tools.call("charge", key="declined", card="bad")
        assert replayed.value.code == "card_declined"
        with pytest.raises(roost.ToolUnavailable):
            await system.tools.call("charge", key="other", card="good")


# --- results as recorded: the first call and every replay agree ---------------------------


async def test_the_first_call_and_every_replay_return_the_result_as_recorded(
    tmp_path: Path,
) -> None:
    runs: list[str] = []

    @roost.tool
    async def charge(amount: int) -> dict[str, Any]:
        runs.append("charge")
        return {"id": "ch_1", "amount": amount, "split": (1, 2)}

    @roost.tool
    async def corner() -> tuple[int, int]:
        runs.append("corner")
        return [3, 4]  # type: ignore[return-value]  # recorded, and so returned, as a tuple

    async with open_system(tmp_path / "store") as system:
        registered(system, charge, corner)
        first = await system.tools.call("charge", key="k", amount=5)
        assert first == await system.tools.call("charge", key="k", amount=5)
        assert first == {"id": "ch_1", "amount": 5, "split": [1, 2]}
        assert await system.tools.call("corner", key="k") == (3, 4)
        assert await system.tools.call("corner", key="k") == (3, 4)
    async with open_system(tmp_path / "store") as system:
        registered(system, charge, corner)
        assert await system.tools.call("charge", key="k", amount=5) == first
        assert await system.tools.call("corner", key="k") == (3, 4)
    assert runs == ["charge", "corner"]


async def test_a_result_that_does_not_fit_the_return_annotation_is_unrecordable_naming_it(
    tmp_path: Path,
) -> None:
    runs: list[str] = []

    @roost.tool
    async def count() -> int:
        runs.append("count")
        return "many"  # type: ignore[return-value]

    async with open_system(tmp_path / "store") as system:
        registered(system, count)
        for _ in range(2):  # the call, then its replay: the same error, no second run
            with pytest.raises(ToolResultUnrecordable,
                               match=r"tool 'count': call with key 'k' took effect but its "
                                     r"result could not be recorded \(the result does not fit "
                                     r"the return annotation int: Expected `int`, got `str`\)"):
                await system.tools.call("count", key="k")
        entry = await Ledger(system.store).get("count", "k")
        assert entry is not None and entry.status == "unrecordable"
    assert runs == ["count"]


async def test_a_stored_result_that_no_longer_fits_the_annotation_replays_as_unrecordable(
    tmp_path: Path,
) -> None:
    @roost.tool
    async def count() -> int:
        raise AssertionError("a stored result is replayed, never run again")

    async with open_system(tmp_path / "store") as system:
        registered(system, count)
        ledger = Ledger(system.store)  # as an older roost, or an older `count`, recorded it
        claim = await ledger.claim("count", "k", fingerprint({}, tool="count"))
        await ledger.complete(claim.entry, msgspec.msgpack.encode("many"))
        with pytest.raises(ToolResultUnrecordable, match=r"its recorded result does not decode "
                           r"as int: Expected `int`, got `str`"):
            await system.tools.call("count", key="k")


async def test_a_key_may_hold_nul_since_no_tool_name_can(tmp_path: Path) -> None:
    runs: list[str] = []

    @roost.tool(name="t")
    async def tally() -> int:
        runs.append("t")
        return len(runs)

    async with open_system(tmp_path / "store") as system:
        registered(system, tally)
        assert await system.tools.call("t", key="a\x00b") == 1
        assert await system.tools.call("t", key="a\x00b") == 1
        assert await ledger_keys(system) == [b"t\x00a\x00b"]  # the stored format, unchanged
    assert runs == ["t"]


# --- how long a caller waits ----------------------------------------------------------------


async def test_a_caller_that_stops_waiting_gets_a_tool_timeout_and_the_same_key_joins_the_call(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    mailer.hold = anyio.Event()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with anyio.fail_after(5), pytest.raises(ToolTimeout) as caught:
            await system.tools.call("send", key="k", to="ada", timeout=0.1)
        assert isinstance(caught.value, ToolCallTimeout)
        assert (caught.value.tool, caught.value.key, caught.value.timeout) == ("send", "k", 0.1)
        assert str(caught.value) == (
            "tool 'send': no answer to the call with key 'k' within 0.1s; the call goes on, "
            "and a call with the same key joins it (or replays its result once it is "
            "recorded); pass a longer timeout= to wait for it")
        again = asyncio.ensure_future(system.tools.call("send", key="k", to="ada"))
        await anyio.wait_all_tasks_blocked()
        assert system.tools.statistics().joined == 1
        mailer.hold.set()
        assert await again == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


async def test_without_a_timeout_a_caller_waits_as_long_as_the_tools_own_limits_allow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(roost.tools.client, "DEADLINE_MARGIN", 0.2)

    @roost.tool(timeout=0.1)
    async def stubborn(seconds: float) -> str:
        # It swallows the cancellation that ends its attempt, so it overruns its limit: only
        # then does a caller wait past the tool's own limits.
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                pass
        return "done"

    async with open_system(tmp_path / "store") as system:
        registered(system, stubborn)
        with anyio.fail_after(5), pytest.raises(ToolCallTimeout) as caught:
            await system.tools.call("stubborn", key="k", seconds=0.6)
    assert caught.value.timeout == pytest.approx(0.1 + 0.2)  # the attempt's limit + the margin


@pytest.mark.parametrize("timeout", [-1, 0, math.nan, math.inf, True, "5"])
@pytest.mark.parametrize("tool", ["send", "ping"])
async def test_a_bad_timeout_is_refused_naming_the_tool_before_anything_runs(
    tmp_path: Path, timeout: Any, tool: str,
) -> None:
    mailer = Mailer()
    arguments = {"to": "ada"} if tool == "send" else {}
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with pytest.raises(ToolArgumentsInvalid,
                           match=rf"^tool '{tool}': timeout={re.escape(repr(timeout))} is not a "
                                 r"valid time to wait for the call; pass a positive number of "
                                 r"seconds, or None for the default$") as caught:
            await system.tools.call(tool, key="k", timeout=timeout, **arguments)
        assert isinstance(caught.value, ToolCallOptionInvalid)
        assert (caught.value.argument, caught.value.given) == ("timeout", type(timeout).__name__)
        assert system.tools.statistics().calls == 0
    assert mailer.sent == []


# --- results that cannot be recorded --------------------------------------------------------


def failing_writes(monkeypatch: pytest.MonkeyPatch, *methods: str) -> None:
    """Make the ledger's `methods` fail as a full disk would."""

    async def fail(self: Ledger, *args: Any) -> None:
        raise StoreError("store at 'store': commit of 1 op failed (MapFullError: map full)")

    for method in methods:
        monkeypatch.setattr(Ledger, method, fail)


async def test_a_result_whose_write_fails_is_unrecordable_and_never_invites_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with monkeypatch.context() as patch:
            failing_writes(patch, "complete")
            with pytest.raises(
                ToolResultUnrecordable,
                match=r"tool 'send': call with key 'k' took effect but its result could not be "
                      r"recorded \(StoreError: .*map full\)\); it will not be run again for this "
                      r"key: do not retry it",
            ) as caught:
                await system.tools.call("send", key="k", to="ada")
        assert isinstance(caught.value.cause, StoreError)
        assert caught.value.__cause__ is caught.value.cause
        assert "retry, and" not in str(caught.value)
        with pytest.raises(ToolResultUnrecordable, match="will not be run again"):
            await system.tools.call("send", key="k", to="ada")
        entry = await Ledger(system.store).get("send", "k")
        assert entry is not None and entry.status == "unrecordable"
    assert mailer.sent == ["ada"]


async def test_when_not_even_unrecordable_can_be_written_the_key_stays_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with monkeypatch.context() as patch:
            failing_writes(patch, "complete", "unrecordable")
            with pytest.raises(ToolResultUnrecordable, match="took effect"):
                await system.tools.call("send", key="k", to="ada")
        with pytest.raises(roost.ToolOutcomeUnknown):
            await system.tools.call("send", key="k", to="ada")
    assert mailer.sent == ["ada"]


# --- verify hooks that cannot tell ----------------------------------------------------------


async def raises(key: str, arguments: Any) -> roost.Done | roost.NotDone:
    raise RuntimeError("outbox unreachable")


async def hangs(key: str, arguments: Any) -> roost.Done | roost.NotDone:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def answers_nonsense(key: str, arguments: Any) -> roost.Done | roost.NotDone:
    return True  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("verify", "cause", "match"),
    [(raises, RuntimeError, r"RuntimeError: outbox unreachable"),
     (hangs, ToolTimeout, r"ToolTimeout: tool 'send': verify timed out after 0\.1s"),
     (answers_nonsense, TypeError,
      r"TypeError: tool 'send': verify returned True; return roost\.Done\(result\)")],
)
async def test_a_verify_hook_that_fails_hangs_or_talks_nonsense_leaves_the_outcome_unknown(
    tmp_path: Path, verify: Any, cause: type[Exception], match: str,
) -> None:
    mailer = Mailer(verify=verify, verify_timeout=0.1)
    await leave_in_flight(tmp_path / "store", "send", "k", {"to": "ada"})
    async with open_system(tmp_path / "store") as system:
        registered(system, mailer.tool)
        with anyio.fail_after(5), pytest.raises(
            roost.ToolOutcomeUnknown,
            match=rf"call with key 'k' was in flight when the process stopped and its verify "
                  rf"hook could not settle it \({match}",
        ) as caught:
            await system.tools.call("send", key="k", to="ada")
        assert isinstance(caught.value.cause, cause)
        assert caught.value.__cause__ is caught.value.cause is caught.value.verify_error
        entry = await Ledger(system.store).get("send", "k")
        assert entry is not None and entry.status == "in_flight"
    assert mailer.sent == []


async def test_a_verify_hook_that_fails_after_a_timeout_leaves_the_outcome_unknown(
    tmp_path: Path,
) -> None:
    courier = Courier(timeout=0.1, retry=roost.Retry(attempts=3, base_delay=0.0), verify=raises)
    async with open_system(tmp_path / "store") as system:
        registered(system, courier.tool)
        with anyio.fail_after(5), pytest.raises(roost.ToolOutcomeUnknown) as caught:
            await system.tools.call("deliver", key="k", to="ada")
    assert isinstance(caught.value.attempt_error, ToolTimeout)
    assert isinstance(caught.value.verify_error, RuntimeError)
    assert courier.sent == ["ada"]


# --- replayed failures keep what the tool raised --------------------------------------------


class CardDeclined(roost.PermanentToolError):
    """A tool's own permanent error, with a code."""

    def __init__(self, card: str) -> None:
        super().__init__(f"card {card} declined", code="card_declined")


async def test_a_replayed_failure_keeps_the_original_type_message_and_code_across_restarts(
    tmp_path: Path,
) -> None:
    attempts: list[str] = []

    @roost.tool
    async def charge(card: str) -> str:
        attempts.append(card)
        raise CardDeclined(card)

    async with open_system(tmp_path / "store") as system:
        registered(system, charge)
        with pytest.raises(CardDeclined) as first:
            await system.tools.call("charge", key="order-1", card="4242")
        assert (first.value.code, first.value.original_type) == ("card_declined", None)
    async with open_system(tmp_path / "store") as system:
        registered(system, charge)
        with pytest.raises(roost.PermanentToolError,
                           match=r"'order-1' failed before .*CardDeclined: card 4242 declined",
                           ) as replayed:
            await system.tools.call("charge", key="order-1", card="4242")
    assert (replayed.value.original_type, replayed.value.code) == ("CardDeclined", "card_declined")
    assert attempts == ["4242"]
