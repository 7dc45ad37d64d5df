"""Tests of roost/tools/retry.py: backoff, retry decisions, time limits, breaker and bulkhead."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import random
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from unittest.mock import Mock

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from roost.errors import (
    ConfigurationError,
    PermanentToolError,
    ToolBusy,
    ToolConnectionLost,
    ToolOutcomeUnknown,
    ToolTimeout,
    ToolUnavailable,
    TransientToolError,
)
from roost.tools.breaker import Breaker, BreakerState, CircuitBreaker
from roost.tools.bulkhead import Bulkhead
from roost.tools.retry import Retry, Watchdog, call_with_retry, leaves_outcome_unknown


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeTime:
    """A clock and a sleep that only move each other: backoff without waiting."""

    def __init__(self) -> None:
        self.now = 50.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Highest(random.Random):
    """Jitter that always picks the top of the range, to see the backoff cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def scripted(*outcomes: object) -> tuple[Callable[[], Awaitable[Any]], list[int]]:
    """An attempt factory that raises or returns each outcome in turn; counts its calls."""
    calls: list[int] = []

    async def attempt() -> Any:
        calls.append(len(calls) + 1)
        outcome = outcomes[min(len(calls), len(outcomes)) - 1]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return attempt, calls


async def forever() -> None:
    await anyio.Event().wait()


# --- backoff --------------------------------------------------------------------------------


@given(
    attempt=st.integers(0, 5000),
    base=st.floats(0.0, 100.0),
    extra=st.floats(0.0, 1000.0),
    seed=st.integers(0, 2**32),
)
def test_the_backoff_never_exceeds_max_delay_or_the_doubled_base(
    attempt: int, base: float, extra: float, seed: int
) -> None:
    policy = Retry(base_delay=base, max_delay=base + extra)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= delay <= policy.max_delay
    assert delay <= base * 2.0 ** min(attempt, 1023)


def test_the_backoff_cap_doubles_until_it_reaches_max_delay() -> None:
    policy = Retry(base_delay=0.5, max_delay=5.0)
    caps = [policy.delay(attempt, Highest()) for attempt in range(7)]
    assert caps == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_the_backoff_is_jittered_over_the_whole_range() -> None:
    policy = Retry(base_delay=1.0, max_delay=1.0)
    rng = random.Random(7)
    delays = [policy.delay(0, rng) for _ in range(200)]
    assert min(delays) < 0.1
    assert max(delays) > 0.9


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"attempts": 0}, r"Retry: attempts=0 is invalid; use a whole number >= 1"),
        ({"base_delay": -1.0}, r"base_delay=-1.0 is invalid"),
        ({"base_delay": 2.0, "max_delay": 1.0}, r"max_delay=1.0 is invalid; .*>= base_delay"),
        ({"retry_on": [TimeoutError]}, r"retry_on=\[<class 'TimeoutError'>\] is invalid"),
        ({"attempt_timeout": 0}, r"attempt_timeout=0 is invalid; use a positive number"),
        ({"deadline": float("nan")}, r"deadline=nan is invalid"),
    ],
)
def test_a_bad_setting_names_the_field_and_the_value(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Retry(**options)


# --- retrying -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_transient_failure_is_retried_until_an_attempt_succeeds() -> None:
    fake = FakeTime()
    attempt, calls = scripted(TransientToolError("503"), ConnectionResetError(), "sent")
    policy = Retry(attempts=3, base_delay=1.0)
    with capture_logs() as logs:
        result = await call_with_retry(
            attempt, policy, tool="mail", key="k1", sleep=fake.sleep, clock=fake.clock,
            rng=Highest(),
        )
    assert result == "sent"
    assert calls == [1, 2, 3]
    assert fake.sleeps == [1.0, 2.0]
    assert [(log["event"], log["attempt"]) for log in logs] == [
        ("tool_attempt_failed", 1),
        ("tool_retry_scheduled", 1),
        ("tool_attempt_failed", 2),
        ("tool_retry_scheduled", 2),
    ]
    assert logs[0] == {
        "event": "tool_attempt_failed", "log_level": "warning", "tool": "mail", "key": "k1",
        "attempt": 1, "latency": 0.0, "error": "TransientToolError: 503",
    }


@pytest.mark.anyio
async def test_it_gives_up_after_the_last_attempt_with_the_last_error() -> None:
    fake = FakeTime()
    attempt, calls = scripted(TimeoutError("first"), TimeoutError("last"))
    with capture_logs() as logs, pytest.raises(TimeoutError, match="last"):
        await call_with_retry(
            attempt, Retry(attempts=4), tool="mail", sleep=fake.sleep, clock=fake.clock
        )
    assert calls == [1, 2, 3, 4]
    assert len(fake.sleeps) == 3
    assert logs[-1] == {
        "event": "tool_gave_up", "log_level": "warning", "tool": "mail", "key": None,
        "attempts": 4, "reason": "attempts_exhausted", "error": "TimeoutError: last",
    }


@pytest.mark.anyio
async def test_a_permanent_error_is_not_retried() -> None:
    fake = FakeTime()
    attempt, calls = scripted(PermanentToolError("404 not found"))
    with capture_logs() as logs, pytest.raises(PermanentToolError, match="404"):
        await call_with_retry(
            attempt, Retry(attempts=5), tool="mail", sleep=fake.sleep, clock=fake.clock
        )
    assert calls == [1]
    assert fake.sleeps == []
    assert logs[-1]["reason"] == "not_retryable"


@pytest.mark.anyio
async def test_retry_on_may_be_a_predicate() -> None:
    fake = FakeTime()
    attempt, calls = scripted(ValueError("flaky"), "ok")
    policy = Retry(retry_on=lambda error: "flaky" in str(error))
    assert await call_with_retry(attempt, policy, tool="t", sleep=fake.sleep) == "ok"
    assert calls == [1, 2]


@pytest.mark.anyio
async def test_an_attempt_past_its_timeout_is_cancelled_and_retried() -> None:
    fake = FakeTime()
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            await forever()
        return "late but fine"

    policy = Retry(attempts=2, attempt_timeout=0.05)
    with capture_logs() as logs:
        result = await call_with_retry(attempt, policy, tool="mail", sleep=fake.sleep)
    assert (result, calls) == ("late but fine", [1, 2])
    assert logs[0]["error"] == "ToolTimeout: tool 'mail': attempt timed out after 0.05s"


@pytest.mark.anyio
async def test_the_last_attempt_past_its_timeout_raises_tool_timeout() -> None:
    fake = FakeTime()
    policy = Retry(attempts=2, attempt_timeout=0.02)
    with pytest.raises(ToolTimeout, match=r"tool 'mail': attempt timed out after 0.02s") as info:
        await call_with_retry(forever, policy, tool="mail", sleep=fake.sleep)
    assert (info.value.tool, info.value.timeout) == ("mail", 0.02)


@pytest.mark.anyio
async def test_the_deadline_cuts_the_running_attempt_short() -> None:
    policy = Retry(attempts=3, attempt_timeout=10.0, deadline=0.05)
    with pytest.raises(ToolTimeout, match=r"tool 'mail': call timed out after 0.05s"):
        await call_with_retry(forever, policy, tool="mail")


@pytest.mark.anyio
async def test_it_gives_up_rather_than_sleep_past_the_deadline() -> None:
    fake = FakeTime()
    attempt, calls = scripted(TransientToolError("busy"))
    policy = Retry(attempts=10, base_delay=1.0, max_delay=1.0, deadline=2.5)
    with capture_logs() as logs, pytest.raises(TransientToolError, match="busy"):
        await call_with_retry(
            attempt, policy, tool="mail", sleep=fake.sleep, clock=fake.clock, rng=Highest()
        )
    assert fake.sleeps == [1.0, 1.0]
    assert calls == [1, 2, 3]
    assert logs[-1]["reason"] == "deadline"


# --- with a breaker and a bulkhead ----------------------------------------------------------


@pytest.mark.anyio
async def test_the_call_that_trips_the_breaker_keeps_its_own_error() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker("mail", Breaker(failures=2, cooldown=30.0), clock=fake.clock)
    attempt, calls = scripted(TransientToolError("first"), TransientToolError("second"))
    with capture_logs() as logs, pytest.raises(TransientToolError, match="second"):
        await call_with_retry(
            attempt, Retry(attempts=5), tool="mail", breaker=breaker, sleep=fake.sleep,
            clock=fake.clock,
        )
    assert calls == [1, 2]
    assert breaker.state is BreakerState.OPEN
    assert logs[-1]["reason"] == "breaker_open"
    with pytest.raises(ToolUnavailable, match="tool 'mail' is unavailable"):
        await call_with_retry(attempt, Retry(), tool="mail", breaker=breaker, sleep=fake.sleep)
    assert calls == [1, 2]


@pytest.mark.anyio
async def test_a_timed_out_attempt_counts_as_a_breaker_failure() -> None:
    breaker = CircuitBreaker("mail", Breaker(failures=1))
    with pytest.raises(ToolTimeout):
        await call_with_retry(
            forever, Retry(attempts=1, attempt_timeout=0.02), tool="mail", breaker=breaker
        )
    assert breaker.state is BreakerState.OPEN


@pytest.mark.anyio
async def test_a_successful_probe_through_the_helper_closes_the_breaker() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker("mail", Breaker(failures=1, cooldown=5.0), clock=fake.clock)
    attempt, _ = scripted(TransientToolError("down"), "up")
    with pytest.raises(TransientToolError):
        await call_with_retry(attempt, Retry(attempts=1), tool="mail", breaker=breaker)
    fake.now += 5.0
    assert await call_with_retry(attempt, Retry(), tool="mail", breaker=breaker) == "up"
    assert breaker.state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_cancelling_a_probe_call_gives_the_probe_permit_back() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker("mail", Breaker(failures=1, cooldown=5.0), clock=fake.clock)
    breaker.on_failure(breaker.acquire(), TimeoutError())
    fake.now += 5.0
    with anyio.move_on_after(0.02):
        await call_with_retry(forever, Retry(), tool="mail", breaker=breaker)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire().probe


@pytest.mark.anyio
async def test_a_full_bulkhead_is_not_retried_and_not_held_against_the_breaker() -> None:
    fake = FakeTime()
    bulkhead = Bulkhead("mail", limit=1, max_waiting=0)
    breaker = CircuitBreaker("mail", Breaker(failures=1))
    attempt, calls = scripted("sent")
    async with bulkhead:
        with pytest.raises(ToolBusy):
            await call_with_retry(
                attempt, Retry(attempts=3), tool="mail", breaker=breaker, bulkhead=bulkhead,
                sleep=fake.sleep,
            )
    assert calls == []
    assert breaker.state is BreakerState.CLOSED
    result = await call_with_retry(
        attempt, Retry(), tool="mail", breaker=breaker, bulkhead=bulkhead
    )
    assert result == "sent"
    assert bulkhead.statistics().running == 0


# --- attempts whose outcome is unknown ------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "unknown"),
    [
        (ToolTimeout("mail", 1.0), True),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (BrokenPipeError(), True),
        (ToolConnectionLost("broke off after sending"), True),
        (aiohttp.ServerDisconnectedError(), True),  # from a tool using aiohttp itself
        (aiohttp.ClientOSError(104, "reset"), True),
        (ConnectionRefusedError(), False),
        (aiohttp.ClientConnectorError(Mock(), ConnectionRefusedError(111, "refused")), False),
        (TransientToolError("503"), False),
        (PermanentToolError("404"), False),
        (ValueError("bad"), False),
    ],
)
def test_timeouts_and_broken_connections_leave_the_outcome_unknown(
    error: Exception, unknown: bool,
) -> None:
    assert leaves_outcome_unknown(error) is unknown


class Rechecks:
    """A recheck hook that answers each call with the next verdict, and records the errors."""

    def __init__(self, *verdicts: tuple[Any] | Exception | None) -> None:
        self.verdicts = list(verdicts)
        self.errors: list[Exception] = []

    async def __call__(self, error: Exception) -> tuple[Any] | None:
        self.errors.append(error)
        verdict = self.verdicts.pop(0)
        if isinstance(verdict, Exception):
            raise verdict
        return verdict


@pytest.mark.anyio
async def test_an_attempt_with_an_unknown_outcome_is_retried_only_when_recheck_finds_it_not_done(
) -> None:
    fake = FakeTime()
    lost = ConnectionResetError("reset")
    attempt, calls = scripted(lost, "sent")
    recheck = Rechecks(None)
    result = await call_with_retry(attempt, Retry(attempts=3), tool="mail", sleep=fake.sleep,
                                   clock=fake.clock, recheck=recheck)
    assert (result, calls, recheck.errors) == ("sent", [1, 2], [lost])


@pytest.mark.anyio
async def test_an_attempt_recheck_finds_done_ends_the_call_with_its_result() -> None:
    fake = FakeTime()
    attempt, calls = scripted(TimeoutError("no answer"))
    result = await call_with_retry(attempt, Retry(attempts=3), tool="mail", sleep=fake.sleep,
                                   clock=fake.clock, recheck=Rechecks(("sent earlier",)))
    assert (result, calls, fake.sleeps) == ("sent earlier", [1], [])


@pytest.mark.anyio
async def test_when_recheck_cannot_tell_the_call_ends_without_another_attempt() -> None:
    fake = FakeTime()
    breaker = CircuitBreaker("mail", Breaker(failures=1), clock=fake.clock)
    attempt, calls = scripted(TimeoutError("no answer"))
    unknown = ToolOutcomeUnknown("mail", "k", TimeoutError("no answer"))
    with pytest.raises(ToolOutcomeUnknown):
        await call_with_retry(attempt, Retry(attempts=3), tool="mail", breaker=breaker,
                              sleep=fake.sleep, clock=fake.clock, recheck=Rechecks(unknown))
    assert calls == [1]
    assert breaker.state is BreakerState.OPEN  # the attempt still counts against the breaker


@pytest.mark.anyio
async def test_recheck_is_not_asked_about_failures_with_a_known_outcome() -> None:
    fake = FakeTime()
    attempt, calls = scripted(TransientToolError("503"), ConnectionRefusedError(), "sent")
    recheck = Rechecks()
    assert await call_with_retry(attempt, Retry(attempts=3), tool="mail", sleep=fake.sleep,
                                 clock=fake.clock, recheck=recheck) == "sent"
    assert (calls, recheck.errors) == ([1, 2, 3], [])


@pytest.mark.anyio
async def test_a_deadline_that_ends_the_wait_for_a_slot_is_a_known_outcome() -> None:
    bulkhead = Bulkhead("mail", limit=1, max_waiting=1)
    attempt, calls = scripted("sent")
    recheck = Rechecks()
    async with bulkhead:  # the slot stays taken: the call waits until its deadline
        with pytest.raises(ToolTimeout, match=r"call timed out after 0\.05s"):
            await call_with_retry(attempt, Retry(attempts=1, deadline=0.05), tool="mail",
                                  bulkhead=bulkhead, recheck=recheck)
    assert (calls, recheck.errors) == ([], [])


class Holder:
    """Something a caller's context holds (weakly referenceable)."""


# --- the watchdog ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_watchdog_cuts_off_only_the_attempts_past_their_limit() -> None:
    watchdog = Watchdog()
    go = anyio.Event()
    finished: list[str] = []

    async def within_its_limit() -> str:
        await go.wait()
        finished.append("within")
        return "within"

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(watchdog.run, within_its_limit, 10.0, "mail")
            with pytest.raises(ToolTimeout, match=r"tool 'mail': attempt timed out after 0\.05s"):
                await watchdog.run(forever, 0.05, "mail")
            go.set()  # it has run past a sweep too, and ends well within its limit
    assert finished == ["within"]


@pytest.mark.anyio
async def test_a_cancellation_from_outside_is_not_turned_into_a_timeout() -> None:
    watchdog = Watchdog()
    with anyio.move_on_after(0.05) as scope:
        await watchdog.run(forever, 10.0, "mail")
    assert scope.cancelled_caught


@pytest.mark.anyio
async def test_an_attempt_that_swallows_its_cut_off_leaves_its_task_uncancelled() -> None:
    watchdog = Watchdog()

    async def stubborn() -> str:
        try:
            await forever()
        except BaseException:
            return "kept going"
        return "unreachable"

    assert await watchdog.run(stubborn, 0.02, "mail") == "kept going"
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await anyio.lowlevel.checkpoint()  # a pending cancellation would be raised here


@pytest.mark.anyio
async def test_the_watchdog_keeps_nothing_of_its_callers_alive_after_their_attempts() -> None:
    """Its timers must not hold the context of the caller that armed them (an actor and all
    it holds) until a long limit passes."""
    watchdog = Watchdog()
    holder: contextvars.ContextVar[object] = contextvars.ContextVar("holder")
    caller_state = Holder()
    seen = weakref.ref(caller_state)

    async def an_attempt_past_a_sweep() -> str:
        await asyncio.sleep(Watchdog.SWEEP * 3)
        return "done"

    async def caller(state: Holder) -> str:
        holder.set(state)
        return await watchdog.run(an_attempt_past_a_sweep, 60.0, "mail")

    # An earlier timer, as a busy system always has: a cancelled timer behind it stays in
    # the loop's heap until it would have fired.
    earlier = asyncio.get_running_loop().call_later(30.0, lambda: None)
    try:
        assert await asyncio.create_task(caller(caller_state)) == "done"
        await asyncio.sleep(0)  # the loop lets go of the finished task's wake-up
        del caller_state
        gc.collect()
        assert seen() is None
    finally:
        earlier.cancel()
