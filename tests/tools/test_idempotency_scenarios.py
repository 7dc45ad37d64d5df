"""Idempotency scenarios, as a user who knows Stripe's keys and the IETF Idempotency-Key
draft would check them, through roost's public API only.

Each test uses a real LMDB store in tmp_path and, for `HttpTool`, a real aiohttp service
on 127.0.0.1 that records every request with its `Idempotency-Key` header. A "restart"
is a second `ActorSystem` on the same store.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from aiohttp import web

import roost

pytestmark = pytest.mark.anyio


def open_system(store: Path, **options: Any) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, log_format="json", log_level="critical", **options)


class Receipt(msgspec.Struct, frozen=True):
    to: str
    number: int


class Mailer:
    """A side-effecting tool that counts its executions; `gate` holds each until it is set."""

    def __init__(self, name: str = "send", **options: Any) -> None:
        self.sent: list[str] = []
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()

        async def send(to: str, subject: str = "hello") -> Receipt:
            self.sent.append(to)
            self.started.set()
            if self.gate is not None:
                await self.gate.wait()
            return Receipt(to, len(self.sent))

        self.tool = roost.tool(name=name, **options)(send)


# --- the same key: replayed, also after a restart -------------------------------------------


async def test_the_same_key_and_arguments_replay_the_stored_result_also_after_a_restart(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        first = await system.tools.call("send", key="order-1", to="ada")
        assert await system.tools.call("send", key="order-1", to="ada") == first
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        assert await system.tools.call("send", key="order-1", to="ada") == first
    assert first == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


async def test_defaults_given_or_left_out_and_argument_order_are_the_same_request(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        first = await system.tools.call("send", key="k", to="ada")
        assert await system.tools.call("send", key="k", subject="hello", to="ada") == first
    assert mailer.sent == ["ada"]


async def test_the_same_key_with_other_arguments_is_a_conflict_naming_the_key(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        await system.tools.call("send", key="order-1", to="ada")
        with pytest.raises(roost.IdempotencyConflict, match="'order-1'") as conflict:
            await system.tools.call("send", key="order-1", to="bob")
        assert (conflict.value.tool, conflict.value.key) == ("send", "order-1")
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        with pytest.raises(roost.IdempotencyConflict, match="'order-1'"):
            await system.tools.call("send", key="order-1", to="ada", subject="other")
        # The conflict changed nothing: the original request still replays.
        assert await system.tools.call("send", key="order-1", to="ada") == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


async def test_keys_are_scoped_per_tool(tmp_path: Path) -> None:
    mailer, pager = Mailer("send"), Mailer("page")
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        system.tools.register(pager.tool)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
        assert await system.tools.call("page", key="k", to="bob") == Receipt("bob", 1)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
    assert (mailer.sent, pager.sent) == (["ada"], ["bob"])


async def test_a_call_refused_for_its_arguments_does_not_use_up_its_key(tmp_path: Path) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        with pytest.raises(roost.ToolArgumentsInvalid, match="'to'"):
            await system.tools.call("send", key="k", to=42)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 1)
    assert mailer.sent == ["ada"]


# --- concurrent requests with one key --------------------------------------------------------


async def test_concurrent_calls_with_one_key_join_the_first_and_share_its_result(
    tmp_path: Path,
) -> None:
    mailer = Mailer()
    mailer.gate = asyncio.Event()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        async with asyncio.TaskGroup() as group:
            calls = [group.create_task(system.tools.call("send", key="k", to="ada"))
                     for _ in range(3)]
            await mailer.started.wait()
            with pytest.raises(roost.IdempotencyConflict, match="'k'"):
                await system.tools.call("send", key="k", to="bob")
            mailer.gate.set()
        assert [call.result() for call in calls] == [Receipt("ada", 1)] * 3
    assert mailer.sent == ["ada"]


# --- errors: a permanent one is stored, a transient one is not -------------------------------


async def test_a_permanent_error_is_replayed_and_a_transient_one_frees_the_key(
    tmp_path: Path,
) -> None:
    outcomes: deque[Exception | None] = deque(
        [roost.PermanentToolError("card declined", code="card_declined"),
         roost.TransientToolError("service overloaded"), None])
    runs: list[str] = []

    @roost.tool
    async def charge(order: str) -> str:
        runs.append(order)
        error = outcomes.popleft()
        if error is not None:
            raise error
        return f"charged {order}"

    async with open_system(tmp_path / "store") as system:
        system.tools.register(charge)
        with pytest.raises(roost.PermanentToolError, match="card declined"):
            await system.tools.call("charge", key="declined", order="a")
        with pytest.raises(roost.PermanentToolError, match="card declined") as replayed:
            await system.tools.call("charge", key="declined", order="a")
        assert replayed.value.code == "card_declined"
        with pytest.raises(roost.TransientToolError, match="overloaded"):
            await system.tools.call("charge", key="flaky", order="b")
        assert await system.tools.call("charge", key="flaky", order="b") == "charged b"
    assert runs == ["a", "b", "b"]


# --- retention --------------------------------------------------------------------------------


async def test_a_settled_key_expires_after_the_retention_but_an_unknown_outcome_never_does(
    tmp_path: Path,
) -> None:
    mailer = Mailer()

    @roost.tool
    async def hangs(to: str) -> str:
        await asyncio.Event().wait()
        return to

    async with open_system(tmp_path / "store", ledger_retention=0.01) as system:
        system.tools.register(mailer.tool)
        system.tools.register(hangs)
        await system.tools.call("send", key="k", to="ada")
        with pytest.raises(roost.ToolCallTimeout):
            await system.tools.call("hangs", key="cut", to="ada", timeout=0.05)
    await anyio.sleep(0.05)  # past the retention of "k"
    async with open_system(tmp_path / "store", ledger_retention=0.01) as system:
        system.tools.register(mailer.tool)
        system.tools.register(hangs)
        assert await system.tools.call("send", key="k", to="bob") == Receipt("bob", 2)
        with pytest.raises(roost.ToolOutcomeUnknown, match="'cut'"):
            await system.tools.call("hangs", key="cut", to="ada")
    assert mailer.sent == ["ada", "bob"]


@pytest.mark.parametrize("retention", [0, -1, float("nan"), float("inf")])
def test_a_retention_that_is_not_a_positive_number_is_refused(retention: float) -> None:
    with pytest.raises(roost.ConfigurationError, match="ledger_retention"):
        roost.ActorSystem(ledger_retention=retention)


# --- keys that are not keys -------------------------------------------------------------------


@pytest.mark.parametrize("key", ["", "x" * 256, "é" * 128, 17, b"bytes", ["k"], "\ud800"])
async def test_an_invalid_key_is_refused_before_anything_runs(tmp_path: Path, key: Any) -> None:
    mailer = Mailer()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        with pytest.raises(roost.ToolCallOptionInvalid, match="not a valid idempotency key"):
            await system.tools.call("send", key=key, to="ada")
    assert mailer.sent == []


async def test_the_longest_key_is_accepted_and_kept(tmp_path: Path) -> None:
    mailer = Mailer(name="n" * 200)
    key = "k" * 255
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        first = await system.tools.call("n" * 200, key=key, to="ada")
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        assert await system.tools.call("n" * 200, key=key, to="ada") == first
    assert mailer.sent == ["ada"]


# --- results ----------------------------------------------------------------------------------


async def test_a_large_result_is_stored_and_replayed_intact(tmp_path: Path) -> None:
    blob = bytes(range(256)) * 16_384  # 4 MiB
    runs: list[int] = []

    @roost.tool
    async def export(part: int) -> dict[str, Any]:
        runs.append(part)
        return {"part": part, "data": blob, "text": "é" * 100_000}

    async with open_system(tmp_path / "store") as system:
        system.tools.register(export)
        first = await system.tools.call("export", key="k", part=1)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(export)
        replayed = await system.tools.call("export", key="k", part=1)
    assert first == replayed == {"part": 1, "data": blob, "text": "é" * 100_000}
    assert runs == [1]


class Opaque:
    """A result msgspec cannot encode."""


async def test_a_result_that_cannot_be_stored_says_so_and_is_never_run_again(
    tmp_path: Path,
) -> None:
    runs: list[str] = []

    @roost.tool
    async def create(name: str) -> Any:
        runs.append(name)
        return {"created": Opaque()}

    async with open_system(tmp_path / "store") as system:
        system.tools.register(create)
        with pytest.raises(roost.ToolResultUnrecordable, match="'k' took effect") as first:
            await system.tools.call("create", key="k", name="a")
        assert first.value.cause is not None
    async with open_system(tmp_path / "store") as system:
        system.tools.register(create)
        with pytest.raises(roost.ToolResultUnrecordable, match="'k' took effect"):
            await system.tools.call("create", key="k", name="a")
    assert runs == ["a"]


# --- a call cut off by the end of its process -------------------------------------------------


async def cut_off_by_shutdown(store: Path, mailer: Mailer) -> None:
    """Stop a system while `send` runs under key "k" (held at `mailer.gate`, which stays
    unset): the next system on `store` finds the call in flight."""
    mailer.gate = asyncio.Event()
    async with open_system(store) as system:
        system.tools.register(mailer.tool)
        cut = asyncio.create_task(system.tools.call("send", key="k", to="ada"))
        await mailer.started.wait()
    with pytest.raises(roost.ActorStopped):
        await cut


async def test_a_call_cut_off_by_shutdown_is_settled_by_verify_in_the_next_system(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        asked.append(key)
        return roost.Done(Receipt(arguments["to"], 7))

    mailer = Mailer(verify=verify)
    await cut_off_by_shutdown(tmp_path / "store", mailer)
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 7)
        assert await system.tools.call("send", key="k", to="ada") == Receipt("ada", 7)
    assert asked == ["k"]
    assert mailer.sent == ["ada"]


async def test_a_call_cut_off_by_shutdown_without_verify_stays_unknown(tmp_path: Path) -> None:
    mailer = Mailer()
    await cut_off_by_shutdown(tmp_path / "store", mailer)
    mailer.gate.set()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        with pytest.raises(roost.ToolOutcomeUnknown, match="'k'") as unknown:
            await system.tools.call("send", key="k", to="ada")
        assert unknown.value.left_here is False
        with pytest.raises(roost.IdempotencyConflict):
            await system.tools.call("send", key="k", to="bob")
    assert mailer.sent == ["ada"]


# --- HttpTool and the Idempotency-Key header --------------------------------------------------


class Service:
    """A payment service: records each request's Idempotency-Key; `plan` gives statuses."""

    def __init__(self) -> None:
        self.url = ""
        self.keys: list[str | None] = []
        self.plan: deque[int] = deque()

    async def charge(self, request: web.Request) -> web.Response:
        self.keys.append(request.headers.get("Idempotency-Key"))
        assert len(request.headers.getall("Idempotency-Key", [])) <= 1
        status = self.plan.popleft() if self.plan else 201
        return web.json_response({"charge": len(self.keys), "status": status}, status=status)


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    state = Service()
    app = web.Application()
    app.router.add_route("*", "/charge", state.charge)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/charge"
    yield state
    await runner.cleanup()


def charge_tool(system: roost.ActorSystem, service: Service, **options: Any) -> roost.HttpTool:
    tool = roost.HttpTool("charge", "POST", service.url, session=system.http_session,
                          timeout=5.0, **options)
    system.tools.register(tool)
    return tool


async def test_http_tool_sends_the_key_and_the_same_key_on_every_retry(
    tmp_path: Path, service: Service,
) -> None:
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service, retry=roost.Retry(attempts=3, base_delay=0.0))
        service.plan.extend([503, 500])
        first = await system.tools.call("charge", key="order-1", json={"amount": 5})
        assert first == {"status": 201, "body": {"charge": 3, "status": 201}}
        assert await system.tools.call("charge", key="order-1", json={"amount": 5}) == first
        await system.tools.call("charge", json={"amount": 6})  # a key made for the call
    assert service.keys[:3] == ["order-1"] * 3
    assert len(service.keys) == 4 and service.keys[3] not in (None, "order-1")


async def test_http_tool_replays_a_4xx_with_its_status_and_conflicts_on_other_arguments(
    tmp_path: Path, service: Service,
) -> None:
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        service.plan.append(402)
        with pytest.raises(roost.PermanentToolError) as refused:
            await system.tools.call("charge", key="order-1", json={"amount": 5})
        assert refused.value.code == 402
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        with pytest.raises(roost.PermanentToolError) as replayed:
            await system.tools.call("charge", key="order-1", json={"amount": 5})
        assert replayed.value.code == 402
        with pytest.raises(roost.IdempotencyConflict, match="'order-1'"):
            await system.tools.call("charge", key="order-1", json={"amount": 6})
    assert service.keys == ["order-1"]


@pytest.mark.parametrize("key", ["a\r\nX-Injected: 1", "a\x00b", "bell\x07", " order-1", "order-1\t"])
async def test_a_key_that_a_header_cannot_carry_exactly_is_refused_before_sending(
    tmp_path: Path, service: Service, key: str,
) -> None:
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        await system.tools.call("charge", key="order-1", json={"amount": 5})
        with pytest.raises(roost.PermanentToolError, match="cannot be sent as the Idempotency"):
            await system.tools.call("charge", key=key, json={"amount": 6})
    # Stripped of its spaces, " order-1" would have reached the service as "order-1".
    assert service.keys == ["order-1"]


async def test_a_key_with_inner_spaces_tabs_or_non_ascii_text_is_sent_as_it_is(
    tmp_path: Path, service: Service,
) -> None:
    keys = ["order 1", "order\t2", "commande-é-3"]
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        for key in keys:
            await system.tools.call("charge", key=key, json={"amount": 5})
    assert service.keys == keys


async def test_a_structured_key_header_is_a_quoted_rfc_8941_string_as_the_ietf_draft_says(
    tmp_path: Path, service: Service,
) -> None:
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service, key_format="structured",
                    retry=roost.Retry(attempts=2, base_delay=0.0))
        service.plan.append(503)
        await system.tools.call("charge", key="8e03978e-40d5", json={"amount": 5})
        await system.tools.call("charge", key='say "hi" \\ ok', json={"amount": 5})
        with pytest.raises(roost.PermanentToolError, match="printable ASCII only"):
            await system.tools.call("charge", key="commande-é", json={"amount": 5})
    assert service.keys == ['"8e03978e-40d5"', '"8e03978e-40d5"', '"say \\"hi\\" \\\\ ok"']


def test_an_unknown_key_format_is_refused_naming_the_two() -> None:
    with pytest.raises(roost.ConfigurationError, match=r"key_format='ietf'.*'plain'.*'structured'"):
        roost.HttpTool("charge", "POST", "http://127.0.0.1:9/charge", session=lambda: None,
                       key_format="ietf")


class Order(roost.Message, frozen=True):
    amount: int


class CheckoutLog:
    """What the checkout actor saw, kept across its restarts."""

    def __init__(self) -> None:
        self.handled = 0
        self.receipts: list[Any] = []
        self.done = asyncio.Event()


class Checkout(roost.Actor):
    """Charges for each order through the HttpTool with a key derived from the message, and
    crashes after its first charge: the redelivered message must not charge again."""

    def __init__(self, book: CheckoutLog) -> None:
        self.book = book

    async def receive(self, message: Any) -> Any:
        match message:
            case Order(amount=amount):
                receipt = await self.ctx.tools.call("charge", json={"amount": amount})
                self.book.handled += 1
                if self.book.handled == 1:
                    raise RuntimeError("crashed after charging")
                self.book.receipts.append(receipt)
                self.book.done.set()
        return None


async def test_a_redelivered_message_sends_its_derived_key_once(
    tmp_path: Path, service: Service,
) -> None:
    book = CheckoutLog()
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        system.spawn(Checkout, book, name="checkout").tell(Order(5))
        with anyio.fail_after(5):
            await book.done.wait()
    assert len(service.keys) == 1 and len(service.keys[0] or "") == 64
    assert book.receipts == [{"status": 201, "body": {"charge": 1, "status": 201}}]


async def test_concurrent_calls_for_a_key_left_in_flight_are_settled_by_one_verify(
    tmp_path: Path,
) -> None:
    asked: list[str] = []

    async def verify(key: str, arguments: Any) -> roost.Done | roost.NotDone:
        asked.append(key)
        await anyio.sleep(0.01)  # long enough for the other calls to arrive
        return roost.NotDone()

    mailer = Mailer(verify=verify)
    await cut_off_by_shutdown(tmp_path / "store", mailer)
    mailer.gate.set()
    async with open_system(tmp_path / "store") as system:
        system.tools.register(mailer.tool)
        async with asyncio.TaskGroup() as group:
            calls = [group.create_task(system.tools.call("send", key="k", to="ada"))
                     for _ in range(3)]
    assert [call.result() for call in calls] == [Receipt("ada", 2)] * 3
    assert asked == ["k"]
    assert mailer.sent == ["ada", "ada"]


async def test_an_http_payload_is_the_same_request_whatever_the_order_of_its_fields(
    tmp_path: Path, service: Service,
) -> None:
    async with open_system(tmp_path / "store") as system:
        charge_tool(system, service)
        first = await system.tools.call("charge", key="k", json={"amount": 5, "currency": "eur"})
        again = await system.tools.call("charge", key="k", json={"currency": "eur", "amount": 5})
        with pytest.raises(roost.IdempotencyConflict):
            await system.tools.call("charge", key="k", json={"currency": "eur", "amount": 5.0})
    assert first == again
    assert service.keys == ["k"]
