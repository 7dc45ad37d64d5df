"""Resilience scenarios as a resilience4j user would check them, through the public API only.

Circuit breaker (closed -> open -> half-open -> closed/open), retries with backoff,
bulkheads and time limits, each seen through `system.tools` with a fake clock for
the breaker, so no test depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import roost
from roost.errors import ConfigurationError, ToolBusy, ToolTimeout, ToolUnavailable, TransientToolError
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


def open_system(clock: Callable[[], float] = time.monotonic) -> roost.ActorSystem:
    return roost.ActorSystem(clock=clock, log_format="json", log_level="critical")


class Flaky:
    """An idempotent tool `dep` that raises the errors queued in `errors`, then answers "ok"."""

    def __init__(self, **options: Any) -> None:
        self.errors: list[BaseException] = []
        self.calls = 0
        self.hold: anyio.Event | None = None
        self.delay = 0.0
        self.entered = anyio.Event()
        options.setdefault("idempotent", True)

        @roost.tool(name="dep", **options)
        async def dep() -> str:
            self.calls += 1
            self.entered.set()
            if self.hold is not None:
                await self.hold.wait()
            if self.delay:
                await anyio.sleep(self.delay)
            if self.errors:
                raise self.errors.pop(0)
            return "ok"

        self.tool = dep


async def fail_calls(system: roost.ActorSystem, count: int,
                     error: type[Exception] = TransientToolError) -> None:
    for _ in range(count):
        with pytest.raises(error):
            await system.tools.call("dep")


# --- the circuit breaker ------------------------------------------------------------------


async def test_the_breaker_opens_on_consecutive_failures_and_names_the_tool_and_when(
    clock: FakeClock,
) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=3, cooldown=30.0))
    flaky.errors = [TransientToolError("down")] * 3
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 2)
        assert system.tools.breaker("dep").state == "closed"
        await fail_calls(system, 1)
        assert system.tools.breaker("dep").state == "open"
        clock.advance(10.0)
        with pytest.raises(ToolUnavailable, match=r"tool 'dep'.*probed again in 20\.00s") as refused:
            await system.tools.call("dep")
        assert (refused.value.tool, refused.value.retry_at) == ("dep", 1030.0)
        assert refused.value.retry_in == pytest.approx(20.0)
        assert isinstance(refused.value.cause, TransientToolError)
    assert flaky.calls == 3


async def test_a_failure_rate_exactly_at_the_threshold_opens_the_breaker(clock: FakeClock) -> None:
    # resilience4j opens when the failure rate is equal to or above the threshold:
    # 55 failures in 100 calls is 55%.
    flaky = Flaky(breaker=roost.Breaker(failure_rate=0.55, window=60.0, min_calls=100))
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        for _ in range(45):
            assert await system.tools.call("dep") == "ok"
        flaky.errors = [TransientToolError("down")] * 55
        await fail_calls(system, 54)
        assert system.tools.breaker("dep").state == "closed"  # 99 calls: under min_calls
        await fail_calls(system, 1)
        assert system.tools.breaker("dep").state == "open"


async def test_the_success_that_reaches_min_calls_opens_a_breaker_whose_failures_reach_the_rate(
        clock: FakeClock) -> None:
    # resilience4j checks the rate after every call: 5 failures then 5 successes is 50% of
    # 10 calls once the tenth call is in.
    flaky = Flaky(breaker=roost.Breaker(failure_rate=0.5, window=60.0, min_calls=10))
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        flaky.errors = [TransientToolError("down")] * 5
        await fail_calls(system, 5)
        for _ in range(4):
            assert await system.tools.call("dep") == "ok"
        assert system.tools.breaker("dep").state == "closed"  # 9 calls: under min_calls
        assert await system.tools.call("dep") == "ok"
        assert system.tools.breaker("dep").state == "open"
        assert "down" in str(system.tools.breaker("dep").last_error)


@pytest.mark.parametrize(("rate", "calls"), [(0.55, 100), (0.28, 25), (0.07, 100), (0.3, 10)])
def test_the_failure_rate_rule_counts_a_share_equal_to_the_threshold(
    clock: FakeClock, rate: float, calls: int,
) -> None:
    breaker = roost.tools.CircuitBreaker(
        "dep", roost.Breaker(failure_rate=rate, window=60.0, min_calls=calls), clock=clock)
    failures = round(rate * calls)
    for _ in range(calls - failures):
        breaker.on_success(breaker.acquire())
    for _ in range(failures):
        breaker.on_failure(breaker.acquire(), TransientToolError("down"))
    assert breaker.state == "open"


async def test_half_open_lets_one_probe_through_and_rejects_the_others_at_once(
    clock: FakeClock,
) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=1, cooldown=30.0))
    flaky.errors = [TransientToolError("down")]
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 1)
        clock.advance(30.0)
        assert system.tools.breaker("dep").state == "half_open"
        flaky.hold = anyio.Event()
        flaky.entered = anyio.Event()
        probe = asyncio.ensure_future(system.tools.call("dep"))
        await flaky.entered.wait()
        with anyio.fail_after(5):  # rejected, not queued behind the probe
            for _ in range(3):
                with pytest.raises(ToolUnavailable, match="tool 'dep' is unavailable"):
                    await system.tools.call("dep")
        flaky.hold.set()
        assert await probe == "ok"
        assert system.tools.breaker("dep").state == "closed"
        assert system.tools.breaker("dep").statistics().rejected == 3
    assert flaky.calls == 2


async def test_half_open_lets_its_probes_through_and_closes_once_they_all_succeed(
    clock: FakeClock,
) -> None:
    # resilience4j's permittedNumberOfCallsInHalfOpenState.
    flaky = Flaky(breaker=roost.Breaker(failures=1, cooldown=30.0, probes=3))
    flaky.errors = [TransientToolError("down")]
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 1)
        clock.advance(30.0)
        flaky.hold = anyio.Event()
        probes = [asyncio.ensure_future(system.tools.call("dep")) for _ in range(3)]
        with anyio.fail_after(5):
            while flaky.calls < 4:  # the failed call, then the three probes
                flaky.entered = anyio.Event()
                await flaky.entered.wait()
        with pytest.raises(ToolUnavailable):  # a fourth call while the three are out
            await system.tools.call("dep")
        flaky.hold.set()
        assert await asyncio.gather(*probes) == ["ok"] * 3
        assert system.tools.breaker("dep").state == "closed"


async def test_one_failed_probe_of_several_opens_the_breaker_again(clock: FakeClock) -> None:
    breaker = roost.tools.CircuitBreaker(
        "dep", roost.Breaker(failures=1, cooldown=30.0, probes=3), clock=clock)
    breaker.on_failure(breaker.acquire(), TransientToolError("down"))
    clock.advance(30.0)
    first, second = breaker.acquire(), breaker.acquire()
    breaker.on_success(first)
    assert breaker.state == "half_open"

    breaker.on_failure(second, TransientToolError("still down"))

    assert breaker.state == "open"


def test_slow_calls_open_the_breaker_once_they_reach_their_rate(clock: FakeClock) -> None:
    # resilience4j's slowCallRateThreshold and slowCallDurationThreshold.
    breaker = roost.tools.CircuitBreaker("dep", roost.Breaker(
        slow_call=2.0, slow_call_rate=0.5, min_calls=4, window=60.0), clock=clock)
    for seconds in (0.1, 2.5, 0.2):  # slow or not, each call is counted
        breaker.on_success(breaker.acquire(), seconds)
    assert breaker.state == "closed"
    assert breaker.statistics().window_slow_calls == 1

    breaker.on_failure(breaker.acquire(), TransientToolError("late"), 3.0)

    assert breaker.state == "open"  # 2 of 4 calls slow


def test_fast_calls_keep_the_slow_call_rule_quiet(clock: FakeClock) -> None:
    breaker = roost.tools.CircuitBreaker("dep", roost.Breaker(
        slow_call=2.0, slow_call_rate=0.5, min_calls=4, window=60.0), clock=clock)
    for _ in range(20):
        breaker.on_success(breaker.acquire(), 1.99)
    breaker.on_success(breaker.acquire(), 2.0)
    assert breaker.state == "closed"


def test_a_slow_probe_opens_the_breaker_again(clock: FakeClock) -> None:
    breaker = roost.tools.CircuitBreaker(
        "dep", roost.Breaker(failures=1, cooldown=30.0, slow_call=2.0), clock=clock)
    breaker.on_failure(breaker.acquire(), TransientToolError("down"))
    clock.advance(30.0)
    heard: list[str] = []
    breaker.add_listener(lambda change: heard.append(change.reason))

    breaker.on_success(breaker.acquire(), 5.0)

    assert (breaker.state, heard) == ("open", ["cooldown_ended", "probe_slow"])


async def test_calls_through_the_proxy_are_timed_for_the_slow_call_rule() -> None:
    flaky = Flaky(breaker=roost.Breaker(slow_call=0.02, slow_call_rate=0.5, min_calls=4,
                                        window=60.0))
    async with open_system() as system:
        system.tools.register(flaky.tool)
        flaky.delay = 0.05
        for _ in range(2):
            assert await system.tools.call("dep") == "ok"
        flaky.delay = 0.0
        assert await system.tools.call("dep") == "ok"
        assert system.tools.breaker("dep").state == "closed"  # 3 calls: under min_calls
        assert await system.tools.call("dep") == "ok"

        assert system.tools.breaker("dep").state == "open"


async def test_time_spent_waiting_for_a_bulkhead_slot_does_not_make_a_call_slow() -> None:
    # The breaker judges the dependency, not the queue in front of it.
    flaky = Flaky(concurrency=1, breaker=roost.Breaker(slow_call=0.5, slow_call_rate=0.6,
                                                        min_calls=2, window=60.0))
    async with open_system() as system:
        system.tools.register(flaky.tool)
        flaky.hold = anyio.Event()
        first = asyncio.ensure_future(system.tools.call("dep"))
        await flaky.entered.wait()
        queued = [asyncio.ensure_future(system.tools.call("dep")) for _ in range(3)]
        await anyio.sleep(0.6)  # the queued calls wait longer than slow_call for the slot
        flaky.hold.set()

        assert await asyncio.gather(first, *queued) == ["ok"] * 4
        assert system.tools.breaker("dep").state == "closed"
        assert system.tools.breaker("dep").statistics().window_slow_calls == 1  # the first


async def test_a_failed_probe_opens_the_breaker_for_another_full_cooldown(clock: FakeClock) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=2, cooldown=30.0))
    flaky.errors = [TransientToolError("down")] * 3
    heard: list[tuple[str, str, str, float]] = []
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        system.tools.breaker("dep").add_listener(
            lambda change: heard.append((change.old, change.new, change.reason, change.at)))
        await fail_calls(system, 2)
        clock.advance(30.0)
        await fail_calls(system, 1)  # the probe
        view = system.tools.breaker("dep")
        assert (view.state, view.opened_at, view.retry_at) == ("open", 1030.0, 1060.0)
        clock.advance(29.0)
        with pytest.raises(ToolUnavailable):
            await system.tools.call("dep")
        clock.advance(1.0)
        assert await system.tools.call("dep") == "ok"
    assert heard == [
        ("closed", "open", "failures", 1000.0),
        ("open", "half_open", "cooldown_ended", 1030.0),
        ("half_open", "open", "probe_failed", 1030.0),
        ("open", "half_open", "cooldown_ended", 1060.0),
        ("half_open", "closed", "probe_succeeded", 1060.0),
    ]


async def test_errors_outside_counts_neither_trip_the_breaker_nor_use_up_the_probe(
    clock: FakeClock,
) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=1, cooldown=5.0))
    flaky.errors = [RuntimeError("a bug")] * 3
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 3, RuntimeError)
        view = system.tools.breaker("dep")
        assert view.state == "closed" and view.statistics().ignored == 3
        flaky.errors = [TransientToolError("down"), RuntimeError("a bug")]
        await fail_calls(system, 1)
        clock.advance(5.0)
        await fail_calls(system, 1, RuntimeError)  # an ignored probe: still half-open
        assert view.state == "half_open"
        assert await system.tools.call("dep") == "ok"
        assert view.state == "closed"


async def test_force_open_and_reset_act_on_the_breaker_every_caller_shares(
    clock: FakeClock,
) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=1, cooldown=5.0))
    async with open_system(clock) as system, open_system(clock) as other:
        system.tools.register(flaky.tool)
        other.tools.register(flaky.tool)
        system.tools.breaker("dep").force_open()
        clock.advance(3600.0)
        with pytest.raises(ToolUnavailable, match=r"forced open.*reset\(\)") as refused:
            await system.tools.call("dep")
        assert refused.value.forced
        assert await other.tools.call("dep") == "ok"  # another system: a breaker of its own
        system.tools.breaker("dep").reset()
        assert await system.tools.call("dep") == "ok"


async def test_counts_decides_what_is_a_failure(clock: FakeClock) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=2, counts=lambda error: "5xx" in str(error)))
    flaky.errors = [TransientToolError("5xx"), TransientToolError("4xx"), TransientToolError("5xx")]
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 3)
        assert system.tools.breaker("dep").state == "open"  # the 4xx neither counted nor reset


# --- retries --------------------------------------------------------------------------------


async def test_attempts_count_the_first_call_and_only_retryable_errors_are_retried() -> None:
    flaky = Flaky(retry=roost.Retry(attempts=3, base_delay=0.0, max_delay=0.0))
    flaky.errors = [TransientToolError("down")] * 5
    async with open_system() as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 1)
        assert flaky.calls == 3 and system.tools.statistics().retries == 2
        flaky.errors = [ValueError("bad input"), TransientToolError("down")]
        await fail_calls(system, 1, ValueError)
        assert flaky.calls == 4


def test_full_jitter_stays_between_zero_and_the_doubling_cap() -> None:
    policy = roost.Retry(attempts=10, base_delay=0.5, max_delay=3.0)
    rng = random.Random(7)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 3.0), (8, 3.0), (5000, 3.0)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert 0.0 <= min(delays) and max(delays) <= cap
        assert max(delays) > cap * 0.9  # jitter spans the range, not a fixed point


async def test_no_retry_is_scheduled_once_the_call_has_opened_the_breaker(
    clock: FakeClock,
) -> None:
    flaky = Flaky(breaker=roost.Breaker(failures=1, cooldown=30.0),
                  retry=roost.Retry(attempts=3, base_delay=0.0, max_delay=0.0))
    flaky.errors = [TransientToolError("down")] * 3
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 1)
        assert flaky.calls == 1
        assert system.tools.statistics().retries == 0


# --- bulkheads ------------------------------------------------------------------------------


async def test_the_bulkhead_caps_concurrent_calls_and_refuses_past_its_waiting_line() -> None:
    flaky = Flaky(concurrency=2, max_waiting=1)
    flaky.hold = anyio.Event()
    async with open_system() as system:
        system.tools.register(flaky.tool)
        calls = [asyncio.ensure_future(system.tools.call("dep")) for _ in range(3)]
        await anyio.wait_all_tasks_blocked()
        assert flaky.calls == 2  # the third waits for a slot
        with pytest.raises(ToolBusy, match=r"tool 'dep' is busy: 2 calls running and 1 waiting"):
            await system.tools.call("dep")
        flaky.hold.set()
        with anyio.fail_after(5):
            assert await asyncio.gather(*calls) == ["ok"] * 3


async def test_a_call_the_bulkhead_refused_is_no_verdict_on_the_tool(clock: FakeClock) -> None:
    # The call never reached the dependency, so even a breaker that counts every
    # exception must not hold it against the tool.
    flaky = Flaky(breaker=roost.Breaker(failures=1, counts=Exception), concurrency=1,
                  max_waiting=0)
    flaky.hold = anyio.Event()
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        first = asyncio.ensure_future(system.tools.call("dep"))
        await flaky.entered.wait()
        with pytest.raises(ToolBusy):
            await system.tools.call("dep")
        assert system.tools.breaker("dep").state == "closed"
        flaky.hold.set()
        assert await first == "ok"


async def test_a_call_cut_off_by_its_deadline_while_waiting_for_a_slot_is_no_verdict_on_the_tool(
    clock: FakeClock,
) -> None:
    release = anyio.Event()

    @roost.tool(idempotent=True, breaker=roost.Breaker(failures=1), concurrency=1,
                retry=roost.Retry(attempts=1, deadline=0.05))
    async def dep() -> str:
        with anyio.CancelScope(shield=True):  # holds its slot past its own deadline
            await release.wait()
        return "ok"

    async with open_system(clock) as system:
        system.tools.register(dep)
        first = asyncio.ensure_future(system.tools.call("dep"))
        await anyio.wait_all_tasks_blocked()
        with anyio.fail_after(5), pytest.raises(ToolTimeout, match="call timed out"):
            await system.tools.call("dep")  # waited for the slot until its deadline
        stats = system.tools.breaker("dep").statistics()
        assert (stats.state, stats.failures) == ("closed", 0)
        release.set()
        await asyncio.gather(first, return_exceptions=True)


# --- time limits ----------------------------------------------------------------------------


async def test_an_attempt_past_its_time_limit_is_cancelled_and_retried() -> None:
    cancelled = 0

    @roost.tool(idempotent=True, timeout=0.02, retry=roost.Retry(attempts=2, base_delay=0.0,
                                                                  max_delay=0.0))
    async def hangs() -> str:
        nonlocal cancelled
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled += 1
            raise
        return "never"

    async with open_system() as system:
        system.tools.register(hangs)
        with anyio.fail_after(5), pytest.raises(ToolTimeout, match=r"attempt timed out after 0\.02s"):
            await system.tools.call("hangs")
    assert cancelled == 2


# --- the time-based failure-rate window -----------------------------------------------------


async def test_the_failure_rate_looks_only_at_calls_inside_the_window(clock: FakeClock) -> None:
    flaky = Flaky(breaker=roost.Breaker(failure_rate=0.5, window=10.0, min_calls=4))
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        flaky.errors = [TransientToolError("down")] * 3
        await fail_calls(system, 3)  # under min_calls
        clock.advance(11.0)
        assert system.tools.breaker("dep").statistics().window_calls == 0
        flaky.errors = [TransientToolError("down")]
        await fail_calls(system, 1)
        for _ in range(2):
            assert await system.tools.call("dep") == "ok"
        assert system.tools.breaker("dep").state == "closed"  # 1 of 3: old failures dropped
        flaky.errors = [TransientToolError("down")]
        await fail_calls(system, 1)
        assert system.tools.breaker("dep").state == "open"  # 2 of 4 reach 50%



async def test_retries_stop_at_the_calls_deadline_with_the_last_error() -> None:
    flaky = Flaky(retry=roost.Retry(attempts=1000, base_delay=0.01, max_delay=0.01, deadline=0.1))
    flaky.errors = [TransientToolError("down")] * 1000
    async with open_system() as system:
        system.tools.register(flaky.tool)
        with anyio.fail_after(5):
            await fail_calls(system, 1)
    assert 1 < flaky.calls < 1000


async def test_an_open_breaker_answers_with_the_fallback_without_calling_the_tool(
    clock: FakeClock,
) -> None:
    async def cached() -> str:
        return "cached"

    flaky = Flaky(breaker=roost.Breaker(failures=1), fallback=cached)
    flaky.errors = [TransientToolError("down")]
    async with open_system(clock) as system:
        system.tools.register(flaky.tool)
        await fail_calls(system, 1)
        assert await system.tools.call("dep") == "cached"
        assert system.tools.statistics().fallbacks == 1
    assert flaky.calls == 1


# --- settings -------------------------------------------------------------------------------


async def plain() -> str:
    return "ok"


@pytest.mark.parametrize(
    ("make", "option"),
    [
        (lambda: roost.Breaker(failures=0), "failures"),
        (lambda: roost.Breaker(failures=True), "failures"),
        (lambda: roost.Breaker(failure_rate=0), "failure_rate"),
        (lambda: roost.Breaker(failure_rate=1.5), "failure_rate"),
        (lambda: roost.Breaker(window=-1.0), "window"),
        (lambda: roost.Breaker(min_calls=0), "min_calls"),
        (lambda: roost.Breaker(cooldown=0), "cooldown"),
        (lambda: roost.Breaker(cooldown="30"), "cooldown"),
        (lambda: roost.Breaker(probes=0), "probes"),
        (lambda: roost.Breaker(slow_call=0), "slow_call"),
        (lambda: roost.Breaker(slow_call=float("inf")), "slow_call"),
        (lambda: roost.Breaker(slow_call=1.0, slow_call_rate=0), "slow_call_rate"),
        (lambda: roost.Breaker(slow_call_rate=1.5), "slow_call_rate"),
        (lambda: roost.Breaker(counts=[TimeoutError]), "counts"),
        (lambda: roost.Breaker(counts=()), "counts"),  # it could never open
        (lambda: roost.Breaker(failure_rate=0.5, window=5e-324), "window"),
        (lambda: roost.Breaker(window=float("inf")), "window"),
        (lambda: roost.Retry(attempts=0), "attempts"),
        (lambda: roost.Retry(attempts=2.0), "attempts"),
        (lambda: roost.Retry(base_delay=-0.1), "base_delay"),
        (lambda: roost.Retry(base_delay=1.0, max_delay=0.5), "max_delay"),
        (lambda: roost.Retry(attempt_timeout=0), "attempt_timeout"),
        (lambda: roost.Retry(deadline=float("nan")), "deadline"),
        (lambda: roost.Retry(retry_on="TimeoutError"), "retry_on"),
        (lambda: roost.Retry(retry_on=()), "retry_on"),  # attempts=1 turns retries off
        (lambda: roost.tool(concurrency=0)(plain), "concurrency"),
        (lambda: roost.tool(max_waiting=-1)(plain), "max_waiting"),
        (lambda: roost.tool(max_waiting=5)(plain), "max_waiting"),  # without concurrency=
        (lambda: roost.tool(timeout=-5)(plain), "timeout"),
    ],
)
def test_a_bad_setting_is_refused_naming_the_option(make: Callable[[], object], option: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"\b{option}="):
        make()


async def test_a_tiny_base_delay_is_a_working_retry_policy() -> None:
    flaky = Flaky(retry=roost.Retry(attempts=3, base_delay=5e-324))
    flaky.errors = [TransientToolError("blip")]
    async with open_system() as system:
        system.tools.register(flaky.tool)

        assert await system.tools.call("dep") == "ok"
        assert flaky.calls == 2


async def test_the_systems_rand_decides_tool_retry_backoff() -> None:
    drawn: list[float] = []

    def rand() -> float:
        drawn.append(0.0)
        return 0.0  # no wait at all, whatever the policy's caps

    flaky = Flaky(retry=roost.Retry(attempts=3, base_delay=300.0, max_delay=300.0))
    flaky.errors = [TransientToolError("blip"), TransientToolError("blip")]
    async with roost.ActorSystem(rand=rand, log_format="json", log_level="critical") as system:
        system.tools.register(flaky.tool)

        assert await system.tools.call("dep", timeout=1000.0) == "ok"
    assert (flaky.calls, len(drawn)) == (3, 2)
