"""Crash test: a process is killed with SIGKILL in the middle of a side-effecting HTTP tool call.

`_tool_caller.py` calls the `charge` tool (an HttpTool) of a service this test
runs on 127.0.0.1, with a store in tmp_path. The service records the request
(and, per case, applies the charge) and holds its answer; the test kills the
caller then, with the key in flight in the ledger. A second process with the
same store makes the same call with the same key, and the service's counts show
whether the charge was repeated. Each case is bounded to 10 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

pytestmark = pytest.mark.anyio

CALLER = Path(__file__).with_name("_tool_caller.py")
KEY = "charge-order-17"
BOUND = 10.0  # seconds per case


class Charges:
    """The payment service: applies each idempotency key's charge at most once."""

    def __init__(self) -> None:
        self.url = ""
        self.posts: list[str | None] = []
        self.effects: dict[str, dict[str, Any]] = {}
        self.answer = "at_once"  # or "apply_then_hold", or "hold_before_applying"
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    def apply(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        if key not in self.effects:
            self.effects[key] = {"charge": len(self.effects) + 1, "amount": body["amount"]}
        return self.effects[key]

    async def charge(self, request: web.Request) -> web.Response:
        key = request.headers["Idempotency-Key"]
        body = await request.json()
        self.posts.append(key)
        answer = self.answer
        if answer == "hold_before_applying":
            self.arrived.set()
            await self.release.wait()
        effect = self.apply(key, body)
        if answer == "apply_then_hold":
            self.arrived.set()
            await self.release.wait()
        return web.json_response(effect, status=201)

    async def lookup(self, request: web.Request) -> web.Response:
        return web.json_response(self.effects.get(request.query["key"]))


@pytest.fixture
async def charges() -> AsyncIterator[Charges]:
    service = Charges()
    app = web.Application()
    app.router.add_post("/charge", service.charge)
    app.router.add_get("/effects", service.lookup)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    service.url = f"http://{host}:{port}"
    yield service
    service.release.set()
    await runner.cleanup()


async def start(store: Path, service: Charges, mode: str, *extra: str,
                ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(CALLER), str(store), service.url, KEY, mode, *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def kill_once_in_flight(process: asyncio.subprocess.Process, service: Charges) -> None:
    """Wait until the service holds the caller's request, then SIGKILL the caller."""
    arrived = asyncio.ensure_future(service.arrived.wait())
    exited = asyncio.ensure_future(process.wait())
    await asyncio.wait({arrived, exited}, return_when=asyncio.FIRST_COMPLETED)
    arrived.cancel()
    if exited.done():
        assert process.stderr is not None
        pytest.fail(f"the caller exited before its request arrived: "
                    f"{(await process.stderr.read()).decode()}")
    exited.cancel()
    os.kill(process.pid, signal.SIGKILL)
    assert await process.wait() == -signal.SIGKILL


async def outcome(process: asyncio.subprocess.Process) -> dict[str, Any]:
    """Wait for the caller to exit and return what it printed."""
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert len(lines) == 1, (stdout, stderr)
    reported: dict[str, Any] = json.loads(lines[0])
    return reported


async def test_a_verify_hook_settles_a_call_killed_in_flight_with_the_services_result(
    tmp_path: Path, charges: Charges,
) -> None:
    with anyio.fail_after(BOUND):
        charges.answer = "apply_then_hold"
        await kill_once_in_flight(await start(tmp_path / "store", charges, "verify"), charges)
        charges.answer = "at_once"
        second = await outcome(await start(tmp_path / "store", charges, "verify"))
    assert second == {"result": {"status": 201, "body": {"charge": 1, "amount": 5}}}
    assert charges.posts == [KEY]
    assert list(charges.effects) == [KEY]


async def test_a_verify_hook_that_finds_no_effect_lets_the_call_run_once_more(
    tmp_path: Path, charges: Charges,
) -> None:
    with anyio.fail_after(BOUND):
        charges.answer = "hold_before_applying"
        await kill_once_in_flight(await start(tmp_path / "store", charges, "verify"), charges)
        charges.answer = "at_once"
        second = await outcome(await start(tmp_path / "store", charges, "verify"))
    assert second == {"result": {"status": 201, "body": {"charge": 1, "amount": 5}}}
    assert charges.posts == [KEY, KEY]
    assert list(charges.effects) == [KEY]


async def test_without_verify_a_call_killed_in_flight_has_an_unknown_outcome_and_is_not_repeated(
    tmp_path: Path, charges: Charges,
) -> None:
    with anyio.fail_after(BOUND):
        charges.answer = "apply_then_hold"
        await kill_once_in_flight(await start(tmp_path / "store", charges, "plain"), charges)
        charges.answer = "at_once"
        second = await outcome(await start(tmp_path / "store", charges, "plain"))
    assert second["error"] == "ToolOutcomeUnknown"
    assert f"key {KEY!r} was in flight when the process stopped" in second["message"]
    assert charges.posts == [KEY]
    assert list(charges.effects) == [KEY]


async def test_a_call_completed_before_the_kill_returns_its_stored_result_without_a_request(
    tmp_path: Path, charges: Charges,
) -> None:
    with anyio.fail_after(BOUND):
        first = await start(tmp_path / "store", charges, "plain", "linger")
        assert first.stdout is not None
        done = json.loads(await first.stdout.readline())
        os.kill(first.pid, signal.SIGKILL)  # after the result was recorded and returned
        assert await first.wait() == -signal.SIGKILL
        second = await outcome(await start(tmp_path / "store", charges, "plain"))
    assert done == second == {"result": {"status": 201, "body": {"charge": 1, "amount": 5}}}
    assert charges.posts == [KEY]
