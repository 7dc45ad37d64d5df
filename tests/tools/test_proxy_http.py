"""End-to-end tests of roost/tools/proxy.py with HttpTools against a real aiohttp server.

The server on 127.0.0.1 (ephemeral port) counts every request, applies each
`Idempotency-Key` at most once (a repeated key gets the stored answer) and can be
told, request by request, to fail (5xx/429), to refuse (4xx) or to hold its
answer until the test releases it. The breaker's cooldown runs on a fake clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

import roost
from roost.errors import (
    IdempotencyKeyInUse,
    ToolArgumentsInvalid,
    ToolBusy,
    ToolConnectionLost,
    ToolStillInProgress,
)
from roost.storage import Ledger
from tests.support import FakeClock

pytestmark = pytest.mark.anyio

HOLD = "hold"
"""Plan step: apply the effect, then hold the answer until `Service.release` is set."""
DROP = "drop"
"""Plan step: apply the effect, then close the connection instead of answering."""
BROKEN_JSON = "broken-json"
"""Plan step: apply the effect, then answer 200 with a JSON body that does not decode."""
OK = "ok"


class Seen(msgspec.Struct, frozen=True):
    method: str
    path: str
    key: str | None
    json: Any


class Service:
    """The remote service's bookkeeping and the knobs a test turns."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Seen] = []
        self.effects: dict[str, dict[str, Any]] = {}  # idempotency key -> the answer body
        self.plan: deque[str | int] = deque()  # one step per request; OK when empty
        self.release = asyncio.Event()
        self.latency = 0.0  # seconds each /orders request takes (the tool's own latency)
        # Stripe's rule: a request whose Idempotency-Key is still being processed gets 409.
        self.conflict_while_processing = False
        self.processing: set[str] = set()
        self.conflicts = 0
        self.conflicted = asyncio.Event()  # set at the first 409
        self.finished = asyncio.Event()  # set as each request that was processed ends
        self.running = 0
        self.max_running = 0
        self._arrived = asyncio.Event()

    def count(self, path: str = "/orders") -> int:
        return sum(1 for seen in self.requests if seen.path == path)

    async def wait_for_requests(self, count: int) -> None:
        """Wait until `count` requests have arrived (a test that waits in vain fails in 10 s)."""
        with anyio.fail_after(10):
            while len(self.requests) < count:
                self._arrived.clear()
                await self._arrived.wait()

    async def orders(self, request: web.Request) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        body = await request.json() if request.can_read_body else None
        self.requests.append(Seen(request.method, request.path, key, body))
        self._arrived.set()
        if self.conflict_while_processing and key in self.processing:
            self.conflicts += 1
            self.conflicted.set()
            return web.json_response({"error": "idempotency key in use"}, status=409)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        if key is not None:
            self.processing.add(key)
        try:
            step = self.plan.popleft() if self.plan else OK
            if isinstance(step, int):
                return web.json_response({"error": f"status {step}"}, status=step)
            if self.latency:
                await asyncio.sleep(self.latency)
            if key is not None and key in self.effects:
                return web.json_response(self.effects[key])  # the service's own dedup
            answer = {"order": len(self.effects) + 1, "item": (body or {}).get("item")}
            if key is not None:
                self.effects[key] = answer
            if step == HOLD:
                await self.release.wait()
            if step == DROP:
                assert request.transport is not None
                request.transport.close()
            if step == BROKEN_JSON:
                return web.Response(text="{not json", content_type="application/json")
            return web.json_response(answer, status=201)
        finally:
            self.running -= 1
            self.processing.discard(key or "")
            self.finished.set()


@pytest.fixture
async def service() -> AsyncIterator[Service]:
    state = Service()
    app = web.Application()
    app.router.add_route("*", "/orders", state.orders)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}"
    yield state
    state.release.set()
    await runner.cleanup()


@roost.tool(idempotent=True)
async def ping() -> str:
    return "pong"


async def barrier(system: roost.ActorSystem) -> None:
    """Return once the proxy has handled every call sent before this one (its mailbox is FIFO).

    `ping` has side effects as far as the proxy knows, so the call goes through the proxy's
    mailbox (read-only calls run in the caller's task); a fresh key makes it run each time.
    """
    await system.tools.call("ping", key=uuid.uuid4().hex)


def open_system(store: Path | None = None, clock: Callable[[], float] = time.monotonic,
                log_level: str = "critical") -> roost.ActorSystem:
    return roost.ActorSystem(store=store, clock=clock, log_format="json", log_level=log_level)


def orders_tool(system: roost.ActorSystem, service: Service, **options: Any) -> roost.HttpTool:
    tool = roost.HttpTool("orders", "POST", f"{service.url}/orders",
                          session=system.http_session, timeout=10.0, **options)
    system.tools.register(tool)
    system.tools.register(ping)
    return tool


async def call(system: roost.ActorSystem, item: str, key: str | None = None) -> Any:
    return await system.tools.call("orders", key=key, json={"item": item})


async def trip(system: roost.ActorSystem, service: Service, failures: int) -> None:
    service.plan.extend([503] * failures)
    for attempt in range(failures):
        with pytest.raises(roost.TransientToolError, match="answered 503"):
            await call(system, "broken", key=f"trip-{attempt}-{len(service.requests)}")


# --- the circuit breaker --------------------------------------------------------------------


async def test_the_breaker_opens_at_the_threshold_and_rejects_without_touching_the_server(
    service: Service, clock: FakeClock,
) -> None:
    async with open_system(clock=clock) as system:
        orders_tool(system, service, breaker=roost.Breaker(failures=3, cooldown=30.0))
        service.plan.extend([503, 503])
        for attempt in range(2):
            with pytest.raises(roost.TransientToolError):
                await call(system, "a", key=f"k{attempt}")
        assert system.tools.breaker_states() == {"orders": "closed"}
        service.plan.append(503)
        with pytest.raises(roost.TransientToolError, match="answered 503"):
            await call(system, "a", key="k2")  # the call that trips keeps its own error
        assert system.tools.breaker_states() == {"orders": "open"}
        calls = system.tools.statistics().calls

        for attempt in range(20):
            with pytest.raises(roost.ToolUnavailable, match="tool 'orders' is unavailable"):
                await call(system, "a", key=f"rejected-{attempt}")

        assert service.count() == 3
        stats = system.tools.statistics()
        assert stats.calls == calls  # answered at the caller: the proxy never saw them
        assert (stats.breaker_trips, stats.rejected) == (1, 20)


async def test_half_open_lets_one_probe_through_while_fifty_concurrent_callers_are_rejected(
    service: Service, clock: FakeClock, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store", clock=clock) as system:
        orders_tool(system, service, breaker=roost.Breaker(failures=2, cooldown=0.2))
        await trip(system, service, 2)
        clock.advance(0.2)
        service.plan.append(HOLD)  # the probe's answer waits, so all 50 others overlap it
        outcomes: dict[str, Any] = {}
        rejected = 0
        all_rejected = anyio.Event()

        async def caller(index: int) -> None:
            nonlocal rejected
            try:
                outcomes[f"c{index}"] = await call(system, f"item-{index}", key=f"c{index}")
            except roost.ToolUnavailable as error:
                outcomes[f"c{index}"] = error
                rejected += 1
                if rejected == 50:
                    all_rejected.set()

        async with anyio.create_task_group() as tasks:
            for index in range(51):
                tasks.start_soon(caller, index)
            with anyio.fail_after(5):
                await all_rejected.wait()
            assert service.count() == 3  # the two that tripped it, and the one probe
            assert system.tools.breaker_states() == {"orders": "half_open"}
            service.release.set()

        probes = [result for result in outcomes.values() if isinstance(result, dict)]
        assert probes == [{"status": 201, "body": {"order": 1, "item": probes[0]["body"]["item"]}}]
        assert system.tools.breaker_states() == {"orders": "closed"}
        # The rejected callers' keys were released: their calls can be made now.
        rejected_key = next(k for k, v in outcomes.items() if isinstance(v, roost.ToolUnavailable))
        again = await call(system, f"item-{rejected_key[1:]}", key=rejected_key)
        assert again["status"] == 201
        assert service.count() == 4


async def test_a_successful_probe_closes_the_breaker_and_a_failed_one_reopens_it(
    service: Service, clock: FakeClock,
) -> None:
    async with open_system(clock=clock) as system:
        orders_tool(system, service, breaker=roost.Breaker(failures=2, cooldown=5.0))
        await trip(system, service, 2)
        clock.advance(5.0)
        assert (await call(system, "probe", key="probe-1"))["status"] == 201
        assert system.tools.breaker_states() == {"orders": "closed"}

        await trip(system, service, 2)
        clock.advance(5.0)
        service.plan.append(500)
        with pytest.raises(roost.TransientToolError, match="answered 500"):
            await call(system, "probe", key="probe-2")
        assert system.tools.breaker_states() == {"orders": "open"}
        before = service.count()
        with pytest.raises(roost.ToolUnavailable, match=r"probed again in 5\.00s"):
            await call(system, "probe", key="probe-3")
        assert service.count() == before
        assert system.tools.statistics().breaker_trips == 3


async def test_an_open_breaker_answers_with_the_fallback_without_a_request(
    service: Service, clock: FakeClock,
) -> None:
    fallback_calls: list[Any] = []

    async def cached(*, json: Any = None, params: Any = None) -> dict[str, Any]:
        fallback_calls.append(json)
        return {"status": 200, "body": "from cache"}

    async with open_system(clock=clock) as system:
        orders_tool(system, service, breaker=roost.Breaker(failures=1, cooldown=60.0),
                    fallback=cached)
        await trip(system, service, 1)
        answer = await call(system, "x", key="fb")
        assert answer == {"status": 200, "body": "from cache"}
        assert fallback_calls == [{"item": "x"}]
        assert service.count() == 1
        stats = system.tools.statistics()
        assert (stats.fallbacks, stats.rejected, stats.breaker_trips) == (1, 0, 1)


# --- retries and the idempotency key --------------------------------------------------------


async def test_transient_failures_are_retried_with_the_same_key_until_one_succeeds(
    service: Service,
) -> None:
    async with open_system(log_level="info") as system:
        orders_tool(system, service, retry=roost.Retry(attempts=4, base_delay=0.01, max_delay=0.02))
        service.plan.extend([503, 429, 502])
        with capture_logs() as logs:
            answer = await call(system, "book", key="order-7")
        assert answer == {"status": 201, "body": {"order": 1, "item": "book"}}
        assert [seen.key for seen in service.requests] == ["order-7"] * 4
        assert system.tools.statistics().retries == 3
        backoff = [log for log in logs if log["event"] == "tool_retry_scheduled"]
        assert [log["attempt"] for log in backoff] == [1, 2, 3]
        assert all(0 <= log["delay"] <= cap for log, cap in zip(backoff, [0.01, 0.02, 0.02],
                                                                 strict=True))


async def test_the_idempotency_key_arrives_as_a_header_given_or_derived(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        await call(system, "given", key="order-42")
        await call(system, "derived")
        given, derived = (seen.key for seen in service.requests)
        assert given == "order-42"
        assert derived is not None and len(derived) == 64
        assert set(derived) <= set("0123456789abcdef")


async def test_a_retry_after_a_lost_response_does_not_repeat_the_side_effect(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        # Declared idempotent: the service applies each Idempotency-Key once.
        orders_tool(system, service, idempotent=True,
                    retry=roost.Retry(attempts=2, base_delay=0.0, attempt_timeout=0.1))
        service.plan.append(HOLD)  # processed, but the answer comes too late for the proxy
        answer = await call(system, "lamp", key="order-9")
        assert answer == {"status": 200, "body": {"order": 1, "item": "lamp"}}
        assert [seen.key for seen in service.requests] == ["order-9", "order-9"]
        assert list(service.effects) == ["order-9"]


async def test_a_repeated_key_returns_the_stored_result_even_after_a_restart(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        first = await call(system, "chair", key="order-1")
        assert await call(system, "chair", key="order-1") == first
        assert system.tools.statistics().dedup_hits == 1
        entry = await Ledger(system.store).get("orders", "order-1")
        assert entry is not None and entry.status == "completed"
        assert msgspec.msgpack.decode(entry.result or b"") == first
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        assert await call(system, "chair", key="order-1") == first
    assert service.count() == 1


async def test_a_transient_failure_releases_the_key_and_a_permanent_one_is_replayed(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(503)
        with pytest.raises(roost.TransientToolError):
            await call(system, "desk", key="transient")
        assert (await call(system, "desk", key="transient"))["status"] == 201
        assert service.count() == 2

        service.plan.append(422)
        with pytest.raises(roost.PermanentToolError, match="answered 422"):
            await call(system, "desk", key="permanent")
        with pytest.raises(roost.PermanentToolError,
                           match="key 'permanent' failed before and is not retried"):
            await call(system, "desk", key="permanent")
        assert service.count() == 3


async def test_the_same_key_with_other_arguments_is_a_conflict(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(HOLD)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, system, "red", "k")
            await service.wait_for_requests(1)
            with pytest.raises(roost.IdempotencyConflict, match="key 'k' was already used"):
                await call(system, "blue", key="k")  # while the first is in flight
            service.release.set()
        with pytest.raises(roost.IdempotencyConflict, match="key 'k' was already used"):
            await call(system, "blue", key="k")  # once it is completed
        assert service.count() == 1


async def test_ten_concurrent_duplicates_join_one_request(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(HOLD)
        answers: list[Any] = []

        async def caller() -> None:
            answers.append(await call(system, "same", key="dup"))

        async with anyio.create_task_group() as tasks:
            for _ in range(10):
                tasks.start_soon(caller)
            await service.wait_for_requests(1)
            await barrier(system)
            assert system.tools.statistics().joined == 9
            service.release.set()

        assert answers == [{"status": 201, "body": {"order": 1, "item": "same"}}] * 10
        assert service.count() == 1


async def test_joined_duplicates_share_the_leaders_failure_and_the_key_is_released(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(503)
        results = await asyncio.gather(*(call(system, "x", key="dup") for _ in range(5)),
                                       return_exceptions=True)
        assert all(isinstance(result, roost.TransientToolError) for result in results)
        assert service.count() == 1
        assert (await call(system, "x", key="dup"))["status"] == 201


# --- concurrency and bulkheads --------------------------------------------------------------


async def test_a_hundred_slow_calls_run_concurrently(service: Service, tmp_path: Path) -> None:
    service.plan.extend([HOLD] * 100)  # each request waits until the test releases them all
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        calls = asyncio.gather(*(call(system, f"i{n}", key=f"k{n}") for n in range(100)))
        await service.wait_for_requests(100)  # a proxy that serialized calls would stop at one
        assert service.running == 100
        service.release.set()
        answers = await calls
    assert sorted(answer["body"]["order"] for answer in answers) == list(range(1, 101))


async def test_the_bulkhead_limit_holds(service: Service) -> None:
    async with open_system() as system:
        orders_tool(system, service, concurrency=3)
        service.plan.extend([HOLD] * 10)
        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(call, system, f"i{n}", f"k{n}")
            await service.wait_for_requests(3)
            await barrier(system)
            assert service.count() == 3  # the other seven wait in the proxy, not at the server
            service.release.set()
        assert service.count() == 10
        assert service.max_running == 3


async def test_a_full_bulkhead_refuses_at_once_with_tool_busy(service: Service) -> None:
    async with open_system() as system:
        orders_tool(system, service, concurrency=1, max_waiting=1)
        service.plan.extend([HOLD, HOLD])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call, system, "first", "k1")
            await service.wait_for_requests(1)
            tasks.start_soon(call, system, "second", "k2")
            await barrier(system)  # the second now waits for the slot
            with pytest.raises(ToolBusy, match="1 calls running and 1 waiting"):
                await call(system, "third", key="k3")
            service.release.set()
        assert [seen.key for seen in service.requests] == ["k1", "k2"]


async def test_arguments_that_do_not_fit_the_http_tool_are_refused_before_any_request(
    service: Service,
) -> None:
    async with open_system() as system:
        orders_tool(system, service)
        with pytest.raises(ToolArgumentsInvalid, match=r"expected orders\(\*, json=None"):
            await system.tools.call("orders", body={"item": "x"})
        with pytest.raises(ToolArgumentsInvalid, match="'idempotency_key' carries the"):
            await system.tools.call("orders", idempotency_key="k")
        assert service.count() == 0
        assert system.tools.statistics().calls == 0


async def test_a_lost_response_of_a_non_idempotent_tool_is_an_unknown_outcome_not_a_retry(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service, retry=roost.Retry(attempts=3, base_delay=0.0,
                                                       attempt_timeout=0.1))
        service.plan.append(HOLD)
        with anyio.fail_after(5), pytest.raises(
                roost.ToolOutcomeUnknown, match="'order-9' was cut off with its outcome unknown"):
            await call(system, "lamp", key="order-9")
        entry = await Ledger(system.store).get("orders", "order-9")
        assert entry is not None and entry.status == "in_flight"
        assert service.count() == 1


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_connection_broken_after_sending_is_retried_only_for_an_idempotent_tool(
    service: Service, tmp_path: Path, idempotent: bool,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service, idempotent=idempotent,
                    retry=roost.Retry(attempts=2, base_delay=0.0))
        service.plan.append(DROP)
        with anyio.fail_after(5):
            if idempotent:
                answer = await call(system, "lamp", key="order-3")
                assert answer == {"status": 200, "body": {"order": 1, "item": "lamp"}}
            else:
                with pytest.raises(roost.ToolOutcomeUnknown) as caught:
                    await call(system, "lamp", key="order-3")
                assert isinstance(caught.value.attempt_error, ToolConnectionLost)
                assert "the request may have been processed" in str(caught.value)
        assert service.count() == (2 if idempotent else 1)
        assert list(service.effects) == ["order-3"]


def test_an_http_tools_request_timeout_is_its_attempt_limit() -> None:
    slow = roost.HttpTool("slow", "POST", "http://127.0.0.1:9/x", session=aiohttp.ClientSession,
                          timeout=90.0)
    assert slow.spec.retry_policy.attempt_timeout == 90.0  # not cut at the 60 s default
    retried = roost.HttpTool("retried", "POST", "http://127.0.0.1:9/x",
                             session=aiohttp.ClientSession, timeout=90.0,
                             retry=roost.Retry(attempt_timeout=5.0))
    assert retried.spec.retry_policy.attempt_timeout == 5.0


# --- answers that say the outcome is not known yet, or cannot be recorded ------------------


async def test_a_409_while_the_key_is_still_processed_is_retried_with_the_same_key(
    service: Service, tmp_path: Path,
) -> None:
    service.conflict_while_processing = True
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service, idempotent=True, retry=roost.Retry(
            attempts=40, base_delay=0.02, max_delay=0.02, attempt_timeout=0.1))
        service.plan.append(HOLD)  # the first request is processed past its attempt's limit

        async def finish_after_a_conflict() -> None:
            with anyio.fail_after(5):
                await service.conflicted.wait()
            service.release.set()

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(finish_after_a_conflict)
            answer = await call(system, "lamp", key="order-9")
        assert service.conflicts >= 1
        assert answer == {"status": 200, "body": {"order": 1, "item": "lamp"}}
        assert {seen.key for seen in service.requests} == {"order-9"}
        assert list(service.effects) == ["order-9"]
        entry = await Ledger(system.store).get("orders", "order-9")
        assert entry is not None and entry.status == "completed"


async def test_a_409_until_the_retries_run_out_leaves_the_outcome_unknown_not_failed(
    service: Service, tmp_path: Path,
) -> None:
    service.conflict_while_processing = True
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service, idempotent=True, retry=roost.Retry(
            attempts=3, base_delay=0.01, attempt_timeout=0.1))
        service.plan.append(HOLD)
        with anyio.fail_after(5), pytest.raises(roost.ToolOutcomeUnknown) as caught:
            await call(system, "lamp", key="order-9")
        assert isinstance(caught.value, ToolStillInProgress)
        assert isinstance(caught.value.attempt_error, IdempotencyKeyInUse)
        assert "still processing an earlier request with this key" in str(caught.value)
        assert service.conflicts == 2
        entry = await Ledger(system.store).get("orders", "order-9")
        assert entry is not None and entry.status == "in_flight"  # never stored as failed

        service.release.set()  # the service finishes the first request
        with anyio.fail_after(5):
            await service.finished.wait()
        # An idempotent tool asks again with the key, and the service answers what it did.
        answer = await call(system, "lamp", key="order-9")
        assert answer == {"status": 200, "body": {"order": 1, "item": "lamp"}}
        assert list(service.effects) == ["order-9"]


async def test_a_refusal_keeps_its_http_status_as_the_code_also_when_replayed(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(422)
        with pytest.raises(roost.PermanentToolError, match="answered 422") as first:
            await call(system, "desk", key="refused")
        with pytest.raises(roost.PermanentToolError, match="failed before") as replayed:
            await call(system, "desk", key="refused")
        assert first.value.code == replayed.value.code == 422
        assert service.count() == 1


async def test_a_success_answered_with_broken_json_took_effect_and_is_unrecordable(
    service: Service, tmp_path: Path,
) -> None:
    async with open_system(store=tmp_path / "store") as system:
        orders_tool(system, service)
        service.plan.append(BROKEN_JSON)
        for _ in range(2):  # the call, then its replay: never sent again
            with pytest.raises(roost.ToolResultUnrecordable,
                               match=r"key 'order-5' took effect .*answered 200 with a JSON body "
                                     r"that does not decode"):
                await call(system, "vase", key="order-5")
        entry = await Ledger(system.store).get("orders", "order-5")
        assert entry is not None and entry.status == "unrecordable"
        assert service.count() == 1
