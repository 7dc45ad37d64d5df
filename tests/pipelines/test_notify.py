"""Tests of roost/pipelines/notify.py and `Gates.add_webhook`: each gate that opens or escalates
is POSTed once, signed, to a real aiohttp receiver on 127.0.0.1, through the tool proxy.

Each system is a real one on a real LMDB store in a temp folder.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

import roost
from roost import Escalate, Gate, Pipeline, RunStep, SignatureInvalid, Step, verify_signature
from roost.errors import ConfigurationError, TransientToolError

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

SECRET = "whsec-test-7f3a9c"
FAST = roost.Retry(attempts=3, base_delay=0.01, max_delay=0.02)


class Received(msgspec.Struct, frozen=True):
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver that records every request and answers as `plan` says (200 when empty)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.plan: deque[int] = deque()
        self._arrived = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        self._arrived.set()
        status = self.plan.popleft() if self.plan else 200
        return web.json_response({"status": status}, status=status)

    async def wait_for(self, count: int) -> list[Received]:
        """The first `count` requests, once they arrived (failing after 5 s)."""
        with anyio.fail_after(5):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.requests[:count]

    def events(self) -> list[str]:
        return [msgspec.json.decode(r.body)["event"] for r in self.requests]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hook", state.hook)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/hook"
    yield state
    await runner.cleanup()


class Sender(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        return f"sent {message.input}"


def gated(**gate: Any) -> Pipeline:
    return Pipeline("support", [Step("send", Sender, gate=Gate(**{
        "reason": "needs a person", "assignees": ["support"],
        "show": lambda results, email: {"email": email}, **gate}))], input_type=str)


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store") as system:
        yield system


async def park(system: roost.ActorSystem, pipeline: Pipeline) -> roost.RunHandle:
    run = await system.pipelines.start(pipeline, "hello", run_id="run-1")
    with anyio.fail_after(10):
        parked = await run.result()
    assert parked.status == "waiting"
    return run


async def settle() -> None:
    """Leave time for a notification that should not come (a duplicate) to arrive."""
    await anyio.sleep(0.2)


# --- sending ----------------------------------------------------------------------------


async def test_a_gate_that_opens_is_posted_once_as_signed_json(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)

    await park(system, gated(timeout=600))

    [request] = await receiver.wait_for(1)
    await settle()
    assert len(receiver.requests) == 1
    record = await system.gates.get("run-1", "send")
    assert msgspec.json.decode(request.body) == {
        "event": "gate.opened", "run_id": "run-1", "gate": "send", "pipeline": "support",
        "step": "send", "kind": "step", "reason": "needs a person", "assignees": ["support"],
        "opened_at": record.opened_at, "deadline": record.deadline, "input_type": None,
        "shown": {"email": "hello"}}
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Idempotency-Key"].startswith("roost-gate-")
    header = request.headers["Roost-Signature"]
    verify_signature(SECRET, header, request.body)
    timestamp, signature = (part.split("=", 1)[1] for part in header.split(","))
    assert abs(int(timestamp) - time.time()) < 10
    assert signature == hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.body,
                                 hashlib.sha256).hexdigest()


async def test_a_server_error_is_retried_and_the_notification_delivered_once(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
    receiver.plan.append(500)

    await park(system, gated())

    failed, delivered = await receiver.wait_for(2)
    await settle()
    assert len(receiver.requests) == 2
    assert failed.headers["Idempotency-Key"] == delivered.headers["Idempotency-Key"]
    assert failed.body == delivered.body
    verify_signature(SECRET, delivered.headers["Roost-Signature"], delivered.body)


async def test_the_same_record_notified_again_is_not_sent_again(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    webhook = system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
    await park(system, gated())
    record = await system.gates.get("run-1", "send")

    await webhook(record)
    await webhook(record)
    system.gates.opened([record])
    await settle()

    assert receiver.events() == ["gate.opened"]


async def test_a_gate_decided_before_its_notification_is_not_announced(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    await park(system, gated())  # before the webhook: nothing sent
    webhook = system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
    decided = await system.gates.decide("run-1", "send", "approve", by="ada")

    await webhook(decided)

    assert receiver.requests == []


async def test_an_escalation_is_posted_as_a_second_different_notification(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)

    await park(system, gated(timeout=0.2, on_timeout=Escalate(to=["leads"], timeout=600)))

    opened, escalated = await receiver.wait_for(2)
    first, second = msgspec.json.decode(opened.body), msgspec.json.decode(escalated.body)
    assert (first["event"], first["assignees"]) == ("gate.opened", ["support"])
    assert (second["event"], second["assignees"]) == ("gate.escalated", ["leads"])
    assert second["deadline"] > first["deadline"]
    assert opened.headers["Idempotency-Key"] != escalated.headers["Idempotency-Key"]
    verify_signature(SECRET, escalated.headers["Roost-Signature"], escalated.body)
    await settle()
    assert len(receiver.requests) == 2


async def test_a_refused_notification_is_not_retried_and_leaves_the_run_alone(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.plan.append(400)
    with capture_logs() as logs:
        async with roost.ActorSystem(store=tmp_path / "store", log_level="info") as system:
            system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
            run = await park(system, gated())
            await receiver.wait_for(1)
            with anyio.fail_after(5):
                while not any(log["event"] == "gate_notification_failed"  # noqa: ASYNC110
                              for log in logs):
                    await anyio.sleep(0.02)

            await system.gates.decide("run-1", "send", "approve", by="ada")
            with anyio.fail_after(10):
                done = await run.result(through_gates=True)

    assert done.status == "completed"
    assert len(receiver.requests) == 1
    [failure] = [log for log in logs if log["event"] == "gate_notification_failed"]
    assert (failure["run_id"], failure["gate"], failure["error_type"]) == (
        "run-1", "send", "PermanentToolError")
    assert "answered 400" in failure["error"]
    assert not any(SECRET in repr(log) for log in logs)


async def test_a_receiver_that_cannot_be_reached_is_retried_then_fails_without_the_secret(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    webhook = system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
    await park(system, gated())
    record = await system.gates.get("run-1", "send")
    closed = await unused_port()
    unreachable = system.gates.add_webhook(f"http://127.0.0.1:{closed}/hook", secret=SECRET,
                                           name="down", retry=FAST)
    retries = system.tools.statistics().retries

    with pytest.raises(TransientToolError, match="nothing was sent") as failed:
        await unreachable(record)

    assert system.tools.statistics().retries - retries == FAST.attempts - 1
    assert SECRET not in str(failed.value)
    await webhook(record)  # the working webhook is unaffected
    assert receiver.events() == ["gate.opened"]


async def unused_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    return port


# --- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ftp://example.org/hook", "example.org/hook", "http://", "",
                                 None])
async def test_a_webhook_url_must_be_absolute_http(system: roost.ActorSystem, url: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"webhook url=.* is invalid; use an absolute"):
        system.gates.add_webhook(url, secret=SECRET)


@pytest.mark.parametrize("secret", ["", b"", None, 42])
async def test_a_webhook_secret_must_be_non_empty_text_or_bytes(
        system: roost.ActorSystem, secret: Any) -> None:
    with pytest.raises(ConfigurationError, match="webhook secret= must be a non-empty str or"):
        system.gates.add_webhook("https://hooks.example.org/roost", secret=secret)


async def test_two_webhooks_need_two_names(system: roost.ActorSystem) -> None:
    system.gates.add_webhook("https://a.example.org/hook", secret=SECRET)
    with pytest.raises(ConfigurationError, match="webhook named 'gates' was added already"):
        system.gates.add_webhook("https://b.example.org/hook", secret=SECRET)

    system.gates.add_webhook("https://b.example.org/hook", secret=SECRET, name="pager")

    assert {"roost.webhook.gates", "roost.webhook.pager"} <= set(system.tools.registry.names())


# --- verifying --------------------------------------------------------------------------


def signed(body: bytes, timestamp: int, secret: str = SECRET) -> str:
    return roost.pipelines.notify.sign(secret, body, timestamp)


def test_verify_signature_accepts_a_fresh_signature_of_the_exact_body() -> None:
    body = b'{"event":"gate.opened"}'
    verify_signature(SECRET, signed(body, 1_000_000), body, now=1_000_100)
    verify_signature(SECRET.encode(), signed(body, 1_000_000), body.decode(), now=1_000_000)


def test_verify_signature_rejects_a_tampered_body() -> None:
    header = signed(b'{"assignees":["support"]}', 1_000_000)
    with pytest.raises(SignatureInvalid, match="does not match the body"):
        verify_signature(SECRET, header, b'{"assignees":["mallory"]}', now=1_000_000)


def test_verify_signature_rejects_another_secret() -> None:
    body = b"{}"
    with pytest.raises(SignatureInvalid, match="does not match"):
        verify_signature(SECRET, signed(body, 1_000_000, secret="other"), body, now=1_000_000)


@pytest.mark.parametrize("now", [1_000_301, 999_699])
def test_verify_signature_rejects_a_timestamp_outside_the_tolerance(now: float) -> None:
    body = b"{}"
    with pytest.raises(SignatureInvalid, match="more than the tolerance of 300 s"):
        verify_signature(SECRET, signed(body, 1_000_000), body, now=now)


@pytest.mark.parametrize("header", ["", "garbage", "t=1000000", "v1=abcd", "t=soon,v1=abcd",
                                    "t=1000000,t=1000001,v1=abcd", "t=-5,v1=abcd"])
def test_verify_signature_rejects_a_malformed_header(header: str) -> None:
    with pytest.raises(SignatureInvalid, match="is malformed"):
        verify_signature(SECRET, header, b"{}", now=1_000_000)
