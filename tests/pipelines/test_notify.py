"""Tests of roost/pipelines/notify.py and `Gates.add_webhook`: each gate that opens or escalates
is POSTed, signed, to a real aiohttp receiver on 127.0.0.1, through the tool proxy: at least
once, across processes, and never again once delivered.

Each system is a real one on a real LMDB store in a temp folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import sys
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
from roost.pipelines.notify import notification_key
from roost.storage import GateEvent

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

SECRET = "whsec-test-7f3a9c"
FAST = roost.Retry(attempts=3, base_delay=0.01, max_delay=0.02)
#: A plan entry that makes the receiver take longer than a webhook's timeout to answer.
HANG = 0


class Received(msgspec.Struct, frozen=True):
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook receiver that records every request and answers as `plan` says (200 when
    empty; `HANG`: only after 0.6 s)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Received] = []
        self.plan: deque[int] = deque()
        self._arrived = asyncio.Event()

    async def hook(self, request: web.Request) -> web.Response:
        self.requests.append(Received(dict(request.headers), await request.read()))
        self._arrived.set()
        status = self.plan.popleft() if self.plan else 200
        if status == HANG:
            await asyncio.sleep(0.6)
            status = 200
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


@contextlib.asynccontextmanager
async def serving(port: int = 0) -> AsyncIterator[Receiver]:
    """A receiver listening on `port` of 127.0.0.1 (0: a free one) until the block ends."""
    state = Receiver()
    app = web.Application()
    app.router.add_post("/hook", state.hook)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        host, bound = runner.addresses[0][:2]
        state.url = f"http://{host}:{bound}/hook"
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with serving() as state:
        yield state


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


async def noted(system: roost.ActorSystem, run_id: str = "run-1", gate: str = "send",
                tool: str = "roost.webhook.gates") -> list[GateEvent]:
    """The gate's `notified` events by `tool`, once there is one (failing after 5 s)."""
    with anyio.fail_after(5):
        while True:
            record = await system.gates.get(run_id, gate)
            found = [e for e in record.history if e.what == "notified" and e.by == tool]
            if found:
                return found
            await anyio.sleep(0.02)


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


async def test_a_request_cut_off_by_the_timeout_is_sent_again_with_the_same_key(
        system: roost.ActorSystem, receiver: Receiver) -> None:
    system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST, timeout=0.2)
    receiver.plan.append(HANG)

    await park(system, gated())

    cut_off, delivered = await receiver.wait_for(2)
    assert cut_off.headers["Idempotency-Key"] == delivered.headers["Idempotency-Key"]
    assert cut_off.body == delivered.body
    assert len(await noted(system)) == 1


# --- across processes -------------------------------------------------------------------

#: A process whose webhook's receiver is down: it parks run-1 at a gate, says "retrying" once
#: the notification's retries have begun, and waits to be killed.
CRASHING_PROCESS = """
import asyncio, sys
import roost

class Sender(roost.Actor):
    async def receive(self, message):
        return "sent"

async def main(store, url, secret):
    async with roost.ActorSystem(store=store, log_level="error") as system:
        system.gates.add_webhook(url, secret=secret,
                                 retry=roost.Retry(attempts=1000, base_delay=0.05, max_delay=0.05))
        pipeline = roost.Pipeline("support", [roost.Step(
            "send", Sender, gate=roost.Gate(reason="needs a person", assignees=["support"]))],
            input_type=str)
        run = await system.pipelines.start(pipeline, "hello", run_id="run-1")
        await run.result()
        while system.tools.statistics().retries < 2:
            await asyncio.sleep(0.01)
        print("retrying", flush=True)
        await asyncio.sleep(60)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_notification_cut_off_by_a_crash_is_delivered_once_by_the_next_process(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = await unused_port()
    with anyio.fail_after(10):
        process = await anyio.open_process(
            [sys.executable, "-c", CRASHING_PROCESS, str(store),
             f"http://127.0.0.1:{port}/hook", SECRET])
        try:
            assert process.stdout is not None
            output = b""
            async for chunk in process.stdout:
                output += chunk
                if b"retrying" in output:
                    break
            assert b"retrying" in output, output
        finally:
            process.kill()  # SIGKILL: no shutdown of any kind
            await process.wait()

    async with serving(port) as receiver, roost.ActorSystem(store=store) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)

        [request] = await receiver.wait_for(1)
        record = await system.gates.get("run-1", "send")
        [note] = await noted(system)
        await settle()

    assert receiver.events() == ["gate.opened"]
    assert request.headers["Idempotency-Key"] == notification_key(record, "gate.opened") \
        == note.detail
    verify_signature(SECRET, request.headers["Roost-Signature"], request.body)


async def test_a_delivered_notification_is_not_sent_again_by_the_next_process(
        tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "store"
    # The ledger forgets the key at once: the gate's own record keeps it from being sent again.
    async with roost.ActorSystem(store=store, ledger_retention=0.001) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
        await park(system, gated())
        await receiver.wait_for(1)
        await noted(system)

    async with roost.ActorSystem(store=store, ledger_retention=0.001) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
        await settle()
        assert len(await noted(system)) == 1

    assert receiver.events() == ["gate.opened"]


async def test_only_a_gates_latest_event_is_caught_up(tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "store"
    async with roost.ActorSystem(store=store) as system:  # no webhook yet
        await park(system, gated(timeout=0.2, on_timeout=Escalate(to=["leads"], timeout=600)))
        with anyio.fail_after(5):
            while (await system.gates.get("run-1", "send")).history[-1].what \
                    != "escalated":  # noqa: ASYNC110
                await anyio.sleep(0.02)

    async with roost.ActorSystem(store=store) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
        [request] = await receiver.wait_for(1)
        await noted(system)
        await settle()

    body = msgspec.json.decode(request.body)
    assert (body["event"], body["assignees"]) == ("gate.escalated", ["leads"])
    assert len(receiver.requests) == 1


async def test_a_gate_decided_while_its_notification_could_not_be_delivered_is_not_announced(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = await unused_port()
    down = f"http://127.0.0.1:{port}/hook"
    pipeline = gated()
    async with roost.ActorSystem(store=store) as system:
        system.gates.add_webhook(down, secret=SECRET, retry=FAST)
        await park(system, pipeline)
        await system.gates.decide("run-1", "send", "approve", by="ada")
        waiting = await system.pipelines.start(pipeline, "hi", run_id="run-2")
        with anyio.fail_after(10):
            assert (await waiting.result()).status == "waiting"

    async with serving(port) as receiver, roost.ActorSystem(store=store) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
        [request] = await receiver.wait_for(1)
        await settle()

    assert msgspec.json.decode(request.body)["run_id"] == "run-2"
    assert len(receiver.requests) == 1


async def test_a_webhook_added_before_the_system_starts_catches_up_when_it_starts(
        tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "store"
    async with roost.ActorSystem(store=store) as system:  # no webhook yet: not announced
        await park(system, gated())

    system = roost.ActorSystem(store=store)
    system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
    async with system:
        [request] = await receiver.wait_for(1)
        await settle()

    body = msgspec.json.decode(request.body)
    assert (body["event"], body["run_id"]) == ("gate.opened", "run-1")
    assert len(receiver.requests) == 1


async def test_a_webhook_whose_breaker_opens_stops_catching_up_until_the_next_process(
        tmp_path: Path, receiver: Receiver) -> None:
    store = tmp_path / "store"
    pipeline = gated()
    async with roost.ActorSystem(store=store) as system:  # no webhook: 20 gates not announced
        for number in range(20):
            run = await system.pipelines.start(pipeline, "hi", run_id=f"run-{number}")
            with anyio.fail_after(10):
                assert (await run.result()).status == "waiting"

    receiver.plan.extend([503] * 20)
    with capture_logs() as logs:
        async with roost.ActorSystem(store=store, log_level="info") as system:
            system.gates.add_webhook(receiver.url, secret=SECRET, retry=None,
                                     breaker=roost.Breaker(failures=2, cooldown=60))
            with anyio.fail_after(5):
                while not any(log["event"] == "gate_catch_up_paused"  # noqa: ASYNC110
                              for log in logs):
                    await anyio.sleep(0.02)
            await settle()
    refused = len(receiver.requests)
    assert refused < 20

    receiver.plan.clear()
    async with roost.ActorSystem(store=store) as system:
        system.gates.add_webhook(receiver.url, secret=SECRET, retry=FAST)
        delivered = (await receiver.wait_for(refused + 20))[refused:]
        await settle()

    assert len(receiver.requests) == refused + 20
    assert {msgspec.json.decode(r.body)["run_id"] for r in delivered} == {
        f"run-{number}" for number in range(20)}


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
