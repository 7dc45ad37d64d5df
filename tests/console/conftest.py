"""A real system on a real store, with runs in every state the console shows, and an aiohttp
test client (a real server on 127.0.0.1) for its console."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

import roost
from roost.console import create_app

TOKEN = "test-token-0123456789"
XSS = "<script>alert('owned')</script>"


class ReplyEdit(msgspec.Struct):
    to: str
    body: str


class Writer(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        if message.input == "boom":
            raise ValueError("the model answered nonsense")
        return {"text": f"reply to {message.input}", "note": XSS}


@roost.tool
async def send_email(to: str, body: str) -> str:
    return f"sent to {to}"


def support() -> roost.Pipeline:
    return roost.Pipeline("support", [
        roost.Step("draft", Writer),
        roost.Step("send", tool="send_email", after="draft",
                   args=lambda r, email: {"to": "customer@example.org", "body": r["draft"]["text"]},
                   gate=roost.Gate(when=lambda r: "angry" in r["draft"]["text"],
                                   reason=f"an angry customer {XSS}", assignees=["support"],
                                   input_type=ReplyEdit)),
    ], input_type=str)


class Console(msgspec.Struct):
    """What the console tests get: the system, its client, and the runs made."""

    system: Any
    client: Any
    completed: str
    failed: str
    waiting: str


async def start_runs(system: Any) -> None:
    """Runs `done` (completed, its result holds a <script>), `broken` (failed) and `angry`
    (waiting at gate `send`, whose reason holds a <script>)."""
    system.tools.register(send_email)
    pipeline = support()
    await (await system.pipelines.start(pipeline, "a happy customer", run_id="done")).result()
    try:
        await (await system.pipelines.start(pipeline, "boom", run_id="broken")).result()
    except roost.StepFailed:
        pass
    await (await system.pipelines.start(pipeline, "an angry customer", run_id="angry")).result()


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    """A live console over the runs of `start_runs`."""
    async with roost.ActorSystem(store=tmp_path / "store", tracing=True) as system:
        await start_runs(system)
        app = create_app(system, token=TOKEN)
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            yield Console(system, client, "done", "broken", "angry")


def bearer() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


async def send_raw(host: str, port: int, request: bytes) -> bytes:
    """Send `request` as it is (bytes no HTTP client library would send: not UTF-8, over
    the server's limits) on a new connection; the whole answer, once the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        return await reader.read()
    finally:
        writer.close()
