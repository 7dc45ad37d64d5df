"""Calls whose outcome is unknown, listed and settled by a person outside any pipeline:
`system.tools.unknown_calls()` and `system.tools.settle_unknown(...)`.

A call is left unknown when its process stops while it runs, or when an attempt of a tool
that is not idempotent times out and no verify hook can tell what happened. Someone then
checks where the effect happens and settles the key: done (with the result every later
call returns), not done (the next call runs the tool), or failed for good.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

import roost

pytestmark = pytest.mark.anyio


class Receipt(msgspec.Struct, frozen=True):
    to: str
    number: int


class Mailer:
    """A side-effecting tool `send`; `hold` keeps each execution waiting until it is set."""

    def __init__(self, **options: Any) -> None:
        self.sent: list[str] = []
        self.hold: asyncio.Event | None = None
        self.started = asyncio.Event()

        @roost.tool(name="send", **options)
        async def send(to: str) -> Receipt:
            self.sent.append(to)
            self.started.set()
            if self.hold is not None:
                await self.hold.wait()
            return Receipt(to, len(self.sent))

        self.tool = send


def open_system(store: Path) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, log_format="json", log_level="critical")


async def leave_unknown(store: Path, mailer: Mailer, key: str = "k") -> None:
    """Stop a system while `send` runs under `key`: the next system finds it unknown."""
    mailer.hold = asyncio.Event()
    async with open_system(store) as system:
        system.tools.register(mailer.tool)
        cut = asyncio.create_task(system.tools.call("send", key=key, to="ada"))
        await mailer.started.wait()
    with pytest.raises(roost.ActorStopped):
        await cut
    mailer.hold = None


async def test_a_call_cut_off_by_its_process_is_listed_and_settled_as_done_with_its_result(
        tmp_path: Path) -> None:
    mailer = Mailer()
    await leave_unknown(tmp_path / "store", mailer)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        (unknown,) = await system.tools.unknown_calls()
        assert (unknown.tool, unknown.key, unknown.left_here) == ("send", "k", False)

        assert await system.tools.settle_unknown("send", "k", done=True,
                                                 result=Receipt("ada", 41)) is True

        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 41)
        assert await system.tools.unknown_calls() == []
        assert await system.tools.settle_unknown("send", "k", done=False) is False
    assert mailer.sent == ["ada"]  # the cut-off execution only


async def test_a_call_settled_as_not_done_runs_again_on_the_next_call(tmp_path: Path) -> None:
    mailer = Mailer()
    await leave_unknown(tmp_path / "store", mailer)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)

        assert await system.tools.settle_unknown("send", "k", done=False) is True

        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 2)
    assert mailer.sent == ["ada", "ada"]


async def test_a_call_settled_as_failed_replays_the_failure(tmp_path: Path) -> None:
    mailer = Mailer()
    await leave_unknown(tmp_path / "store", mailer)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        await system.tools.settle_unknown("send", "k", done=False,
                                          error="the mail server bounced it")

        with pytest.raises(roost.PermanentToolError, match="bounced"):
            await system.tools.call("send", key="k", to="ada")
    assert mailer.sent == ["ada"]


async def test_a_timed_out_call_of_this_process_is_listed_as_left_here(tmp_path: Path) -> None:
    mailer = Mailer(timeout=0.05)
    mailer.hold = asyncio.Event()  # never set: the attempt times out
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        with pytest.raises(roost.ToolOutcomeUnknown):
            await system.tools.call("send", key="slow", to="ada")

        assert [(call.key, call.left_here) for call in await system.tools.unknown_calls("send")] \
            == [("slow", True)]


async def test_unknown_calls_leave_out_calls_that_are_running(tmp_path: Path) -> None:
    mailer = Mailer()
    mailer.hold = asyncio.Event()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        running = asyncio.create_task(system.tools.call("send", key="now", to="ada"))
        await mailer.started.wait()

        assert await system.tools.unknown_calls() == []
        with pytest.raises(roost.ToolCallRunning, match="'now' is running in this process"):
            await system.tools.settle_unknown("send", "now", done=True, result=Receipt("x", 1))

        mailer.hold.set()
        assert await running == Receipt("ada", 1)


async def test_a_settlement_that_does_not_fit_is_refused_and_the_call_stays_unknown(
        tmp_path: Path) -> None:
    mailer = Mailer()
    await leave_unknown(tmp_path / "store", mailer)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)

        with pytest.raises(roost.ToolSettlementInvalid, match="return annotation Receipt"):
            await system.tools.settle_unknown("send", "k", done=True, result={"to": "ada"})
        with pytest.raises(roost.ToolSettlementInvalid, match="does not encode"):
            await system.tools.settle_unknown("send", "k", done=True, result=object())

        assert [call.key for call in await system.tools.unknown_calls()] == ["k"]


async def test_settling_names_what_is_wrong_with_the_tool_or_key(tmp_path: Path) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)

        with pytest.raises(roost.UnknownTool, match="'sned'"):
            await system.tools.settle_unknown("sned", "k", done=False)
        with pytest.raises(roost.UnknownTool, match="'sned'"):
            await system.tools.unknown_calls("sned")
        with pytest.raises(roost.ToolCallOptionInvalid):
            await system.tools.settle_unknown("send", "", done=False)
        with pytest.raises(roost.ToolCallNotFound, match="no call with key 'nope'"):
            await system.tools.settle_unknown("send", "nope", done=False)


async def test_without_a_store_there_is_nothing_to_settle() -> None:
    async with roost.ActorSystem(log_format="json", log_level="critical") as system:
        system.tools.register(Mailer().tool)

        with pytest.raises(roost.ConfigurationError, match="without a store"):
            await system.tools.unknown_calls()


async def test_contradictory_settlements_are_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    mailer = Mailer()
    await leave_unknown(tmp_path / "store", mailer)

    @roost.tool(read_only=True)
    async def lookup(to: str) -> str:
        return to

    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        system.tools.register(lookup)
        for done, options, refusal in [
                (True, {"result": Receipt("ada", 1), "error": "bounced"}, "has no error"),
                (False, {"result": Receipt("ada", 1)}, "has no result"),
                ("no", {}, "done= must be True or False")]:
            with pytest.raises(roost.ConfigurationError, match=refusal):
                await system.tools.settle_unknown("send", "k", done=done, **options)
        with pytest.raises(roost.ConfigurationError, match="read-only"):
            await system.tools.settle_unknown("lookup", "k", done=False)

        assert [call.key for call in await system.tools.unknown_calls()] == ["k"]
