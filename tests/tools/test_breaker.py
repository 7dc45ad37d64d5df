"""Tests of roost/tools/breaker.py: the circuit breaker's states, permits and config."""

from __future__ import annotations

import asyncio
import math
from unittest.mock import Mock

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from structlog.testing import capture_logs

from roost.errors import (
    ConfigurationError,
    PermanentToolError,
    ToolUnavailable,
    TransientToolError,
)
from roost.tools.breaker import Breaker, BreakerState, BreakerTransition, CircuitBreaker, Permit
from tests.support import FakeClock

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make(clock: FakeClock, **config: object) -> CircuitBreaker:
    return CircuitBreaker("search", Breaker(**config), clock=clock)  # type: ignore[arg-type]


def fail(breaker: CircuitBreaker, times: int = 1, error: BaseException | None = None) -> None:
    for _ in range(times):
        breaker.on_failure(breaker.acquire(), error or TransientToolError("boom"))


def trip(breaker: CircuitBreaker) -> None:
    fail(breaker, breaker.config.failure_threshold or 1)
    assert breaker.state is OPEN


# --- config ---------------------------------------------------------------------------------


def test_the_default_breaker_opens_after_five_consecutive_failures() -> None:
    assert Breaker().failure_threshold == 5


def test_setting_only_a_failure_rate_turns_the_consecutive_rule_off() -> None:
    assert Breaker(failure_rate=0.5).failure_threshold is None
    assert Breaker(failure_rate=0.5, failures=3).failure_threshold == 3


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("failures", 0, r"Breaker: failures=0 is invalid; use a whole number >= 1"),
        ("failures", True, r"failures=True is invalid"),
        ("failure_rate", 1.5, r"failure_rate=1.5 is invalid; use a share in \(0, 1\]"),
        ("failure_rate", 0, r"failure_rate=0 is invalid"),
        ("window", -1.0, r"window=-1.0 is invalid; use a positive number of seconds"),
        ("min_calls", 0, r"min_calls=0 is invalid"),
        ("cooldown", 0, r"cooldown=0 is invalid; use a positive number of seconds"),
        ("cooldown", float("inf"), r"cooldown=inf is invalid"),
        ("counts", "TimeoutError", r"counts='TimeoutError' is invalid; use an exception type"),
        ("counts", (TimeoutError, 3), r"counts=.* is invalid"),
    ],
)
def test_a_bad_setting_names_the_field_and_the_value(field: str, value: object, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        Breaker(**{field: value})  # type: ignore[arg-type]


# --- transitions ----------------------------------------------------------------------------


def test_a_closed_breaker_admits_calls_without_allocating_a_permit_each_time(
    clock: FakeClock,
) -> None:
    breaker = make(clock)
    assert breaker.acquire() is breaker.acquire()
    assert breaker.state is CLOSED


def test_consecutive_counted_failures_open_the_breaker(clock: FakeClock) -> None:
    breaker = make(clock, failures=3, cooldown=10.0)
    fail(breaker, 2)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN
    assert breaker.statistics().retry_at == clock.now + 10.0


def test_a_success_resets_the_consecutive_failure_count(clock: FakeClock) -> None:
    breaker = make(clock, failures=3)
    fail(breaker, 2)
    breaker.on_success(breaker.acquire())
    fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 2


def test_an_open_breaker_rejects_with_the_time_its_cooldown_ends(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=30.0)
    trip(breaker)
    opened_at = clock.now
    clock.advance(12.0)
    with pytest.raises(ToolUnavailable, match=r"tool 'search' is unavailable.*in 18.00s") as info:
        breaker.acquire()
    assert (info.value.tool, info.value.retry_at, info.value.retry_in) == (
        "search",
        opened_at + 30.0,
        18.0,
    )
    assert breaker.statistics().rejected == 1


def test_the_breaker_turns_half_open_when_the_cooldown_ends(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=30.0)
    trip(breaker)
    clock.advance(29.999)
    assert breaker.state is OPEN
    clock.advance(0.001)
    assert breaker.state is HALF_OPEN


def test_a_successful_probe_closes_the_breaker(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.acquire()
    assert probe.probe
    breaker.on_success(probe)
    assert breaker.state is CLOSED
    assert not breaker.acquire().probe


def test_a_failed_probe_opens_the_breaker_again_and_restarts_the_cooldown(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    trip(breaker)
    clock.advance(7.0)
    probe = breaker.acquire()
    clock.advance(1.0)
    breaker.on_failure(probe, TimeoutError())
    assert breaker.state is OPEN
    assert breaker.statistics().retry_at == clock.now + 5.0
    assert breaker.statistics().times_opened == 2


def test_outcomes_of_calls_admitted_before_the_breaker_opened_are_ignored(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    early = breaker.acquire()
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.acquire()
    breaker.on_success(early)
    assert breaker.state is HALF_OPEN
    breaker.on_failure(early, TimeoutError())
    assert breaker.state is HALF_OPEN
    breaker.on_success(probe)
    assert breaker.state is CLOSED


def test_listeners_hear_every_transition_in_order_with_its_time_reason_and_cause(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    heard: list[BreakerTransition] = []
    breaker.add_listener(heard.append)
    tripped, probe_failed = TransientToolError("boom"), TimeoutError("slow")
    fail(breaker, error=tripped)
    clock.advance(5.0)
    breaker.on_failure(breaker.acquire(), probe_failed)
    clock.advance(5.0)
    breaker.on_success(breaker.acquire())
    assert [(t.tool, t.old, t.new, t.at, t.reason, t.cause) for t in heard] == [
        ("search", "closed", "open", 1000.0, "failures", tripped),
        ("search", "open", "half_open", 1005.0, "cooldown_ended", None),
        ("search", "half_open", "open", 1005.0, "probe_failed", probe_failed),
        ("search", "open", "half_open", 1010.0, "cooldown_ended", None),
        ("search", "half_open", "closed", 1010.0, "probe_succeeded", None),
    ]


def test_a_failure_rate_transition_names_its_reason(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, window=10.0, min_calls=2)
    heard: list[BreakerTransition] = []
    breaker.add_listener(heard.append)
    fail(breaker, 2)
    assert [(t.new, t.reason) for t in heard] == [("open", "failure_rate")]


def test_a_failing_listener_does_not_stop_the_breaker_or_other_listeners(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1)
    heard: list[str] = []

    def broken(transition: BreakerTransition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(lambda transition: heard.append(transition.new))
    trip(breaker)
    assert heard == ["open"]
    breaker.remove_listener(broken)
    with pytest.raises(ValueError):
        breaker.remove_listener(broken)


# --- the error that opened it, a failing predicate, reset and force_open --------------------


def test_an_open_breaker_refuses_with_the_error_that_opened_it(clock: FakeClock) -> None:
    breaker = make(clock, failures=2, cooldown=5.0)
    first, second = TransientToolError("first"), TransientToolError("second")
    fail(breaker, error=first)
    fail(breaker, error=second)
    with pytest.raises(ToolUnavailable, match=r"tool 'search' is unavailable: its circuit breaker "
                       r"is open \(opened by TransientToolError: second\); it will be probed "
                       r"again in 5.00s") as caught:
        breaker.acquire()
    assert caught.value.cause is second
    clock.advance(5.0)
    breaker.acquire()  # the probe
    with pytest.raises(ToolUnavailable) as while_probing:
        breaker.acquire()
    assert while_probing.value.cause is second


def test_the_breaker_tells_when_it_opened_and_the_last_error_it_counted(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    assert (breaker.opened_at, breaker.last_error) == (None, None)
    error = TransientToolError("down")
    fail(breaker, error=error)
    assert (breaker.opened_at, breaker.last_error) == (1000.0, error)
    assert breaker.statistics().opened_at == 1000.0
    clock.advance(5.0)
    assert breaker.state is HALF_OPEN
    assert breaker.opened_at == 1000.0
    breaker.on_success(breaker.acquire())
    assert breaker.opened_at is None
    assert breaker.statistics().opened_at is None
    assert breaker.last_error is error


def test_a_counts_predicate_that_raises_counts_the_failure_and_frees_the_probe(
    clock: FakeClock,
) -> None:
    def broken(error: BaseException) -> bool:
        raise KeyError("predicate bug")

    breaker = make(clock, failures=1, cooldown=5.0, counts=broken)
    with capture_logs() as logs:
        fail(breaker, error=ValueError("tool error"))
        assert breaker.state is OPEN
        clock.advance(5.0)
        breaker.on_failure(breaker.acquire(), ValueError("the probe's error"))
    assert breaker.state is OPEN  # the probe counted as failed: not stuck half-open
    clock.advance(5.0)
    assert breaker.acquire().probe
    failed = [log for log in logs if log["event"] == "breaker_counts_failed"]
    assert [(log["tool"], log["error"]) for log in failed] == [
        ("search", "tool error"), ("search", "the probe's error")]


def test_force_open_keeps_the_breaker_open_until_reset(clock: FakeClock) -> None:
    breaker = make(clock, failures=5, cooldown=5.0)
    heard: list[BreakerTransition] = []
    breaker.add_listener(heard.append)
    breaker.force_open()
    breaker.force_open()
    clock.advance(3600.0)
    with pytest.raises(ToolUnavailable, match=r"forced open and stays open until "
                       r"system.tools.breaker\('search'\).reset\(\)") as caught:
        breaker.acquire()
    assert caught.value.forced
    assert caught.value.cause is None
    assert breaker.statistics().retry_at == math.inf
    breaker.reset()
    assert breaker.state is CLOSED
    breaker.on_success(breaker.acquire())
    assert [(t.old, t.new, t.reason, t.cause) for t in heard] == [
        ("closed", "open", "forced_open", None), ("open", "closed", "reset", None)]


def test_reset_closes_an_open_breaker_and_forgets_its_failures(clock: FakeClock) -> None:
    breaker = make(clock, failures=2, cooldown=60.0)
    admitted = breaker.acquire()
    trip(breaker)
    breaker.reset()
    assert (breaker.state, breaker.opened_at, breaker.last_error) == (CLOSED, None, None)
    breaker.on_failure(admitted, TransientToolError("late"))  # admitted before it opened
    fail(breaker)
    assert breaker.state is CLOSED
    breaker.reset()  # closed already: only the count of failures goes
    fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.statistics().consecutive_failures == 1


# --- the single probe -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_half_open_gives_exactly_one_probe_while_fifty_concurrent_callers_are_rejected(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    trip(breaker)
    clock.advance(5.0)
    probes: list[Permit] = []
    rejected: list[ToolUnavailable] = []
    probe_may_finish = anyio.Event()

    async def caller() -> None:
        await anyio.lowlevel.checkpoint()
        try:
            permit = breaker.acquire()
        except ToolUnavailable as error:
            rejected.append(error)
            return
        probes.append(permit)
        await probe_may_finish.wait()
        breaker.on_success(permit)

    async with anyio.create_task_group() as tasks:
        for _ in range(51):
            tasks.start_soon(caller)
        await anyio.wait_all_tasks_blocked()
        assert len(probes) == 1
        assert len(rejected) == 50
        assert breaker.statistics().probe_in_flight
        probe_may_finish.set()

    assert all(error.retry_in == 5.0 for error in rejected)
    assert breaker.state is CLOSED


def test_an_ignored_error_of_the_probe_releases_the_probe_permit(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    trip(breaker)
    clock.advance(5.0)
    probe = breaker.acquire()
    breaker.on_failure(probe, PermanentToolError("404"))
    assert breaker.state is HALF_OPEN
    assert breaker.statistics().ignored == 1
    second = breaker.acquire()
    assert second.probe
    assert second is not probe


def test_a_cancelled_probe_releases_the_probe_permit(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, cooldown=5.0)
    trip(breaker)
    clock.advance(5.0)
    breaker.on_failure(breaker.acquire(), asyncio.CancelledError())
    assert breaker.acquire().probe


def test_cancellation_never_counts_even_when_the_predicate_accepts_everything(
    clock: FakeClock,
) -> None:
    breaker = make(clock, failures=1, counts=lambda error: True)
    breaker.on_failure(breaker.acquire(), KeyboardInterrupt())
    assert breaker.state is CLOSED
    fail(breaker, error=ValueError("counted by the predicate"))
    assert breaker.state is OPEN


def test_errors_outside_counts_are_neither_success_nor_failure(clock: FakeClock) -> None:
    breaker = make(clock, failures=2)
    fail(breaker)
    fail(breaker, error=PermanentToolError("400"))
    fail(breaker, error=ValueError("a bug"))
    assert breaker.statistics().consecutive_failures == 1
    fail(breaker, error=ConnectionResetError())
    assert breaker.state is OPEN


def test_aiohttp_connection_errors_count_by_default(clock: FakeClock) -> None:
    breaker = make(clock, failures=2)
    fail(breaker, error=aiohttp.ServerDisconnectedError())  # not an OSError
    fail(breaker, error=aiohttp.ClientConnectorError(Mock(), ConnectionRefusedError(111, "no")))
    assert breaker.state is OPEN


def test_counts_may_be_a_single_exception_type(clock: FakeClock) -> None:
    breaker = make(clock, failures=1, counts=KeyError)
    fail(breaker, error=TimeoutError())
    assert breaker.state is CLOSED
    fail(breaker, error=KeyError("x"))
    assert breaker.state is OPEN


# --- failure-rate mode ----------------------------------------------------------------------


def test_the_failure_rate_opens_only_once_min_calls_are_in_the_window(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, window=10.0, min_calls=6)
    fail(breaker, 5)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_calls == 5
    breaker.on_success(breaker.acquire())  # the sixth call: 5 of 6 failed
    assert breaker.state is OPEN


def test_a_failure_rate_below_the_threshold_keeps_the_breaker_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, window=10.0, min_calls=4)
    for _ in range(10):
        breaker.on_success(breaker.acquire())
        breaker.on_success(breaker.acquire())
        fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 10


def test_failures_older_than_the_window_no_longer_count(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, window=10.0, min_calls=4)
    fail(breaker, 3)
    clock.advance(10.0)
    assert breaker.statistics().window_calls == 0
    breaker.on_success(breaker.acquire())
    breaker.on_success(breaker.acquire())
    fail(breaker)
    assert breaker.state is CLOSED
    fail(breaker)
    assert breaker.state is OPEN


def test_a_closing_breaker_starts_with_an_empty_window(clock: FakeClock) -> None:
    breaker = make(clock, failure_rate=0.5, window=100.0, min_calls=2, cooldown=1.0)
    fail(breaker, 2)
    assert breaker.state is OPEN
    clock.advance(1.0)
    breaker.on_success(breaker.acquire())
    assert breaker.statistics().window_calls == 0
    fail(breaker)
    assert breaker.state is CLOSED


# --- stateful model -------------------------------------------------------------------------


class BreakerModel(RuleBasedStateMachine):
    """The breaker against a small model of consecutive-failure mode."""

    THRESHOLD = 2
    COOLDOWN = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.breaker = make(self.clock, failures=self.THRESHOLD, cooldown=self.COOLDOWN)
        self.state = CLOSED
        self.failures = 0
        self.retry_at = 0.0
        self.period = 0  # bumped on every transition into open or closed
        self.probe_out = False
        self.forced = False
        self.permits: list[tuple[Permit, int]] = []  # outstanding, with their period

    def model_state(self) -> BreakerState:
        if self.state is OPEN and self.clock.now >= self.retry_at:
            self.state = HALF_OPEN
            self.probe_out = False
        return self.state

    def open(self, *, forced: bool = False) -> None:
        self.state = OPEN
        self.retry_at = math.inf if forced else self.clock.now + self.COOLDOWN
        self.failures = 0
        self.period += 1
        self.probe_out = False
        self.forced = forced

    @rule()
    def acquire(self) -> None:
        state = self.model_state()
        grants = state is CLOSED or (state is HALF_OPEN and not self.probe_out)
        try:
            permit = self.breaker.acquire()
        except ToolUnavailable as error:
            assert not grants
            if state is OPEN:
                assert error.retry_at == self.retry_at
            return
        assert grants
        assert permit.probe == (state is HALF_OPEN)
        self.probe_out = permit.probe
        self.permits.append((permit, self.period))

    @precondition(lambda self: self.permits)
    @rule(data=st.data(), outcome=st.sampled_from(["success", "counted", "ignored", "cancelled"]))
    def finish_a_call(self, data: st.DataObject, outcome: str) -> None:
        self.finish(data.draw(st.integers(0, len(self.permits) - 1)), outcome)

    def finish(self, index: int, outcome: str) -> None:
        permit, period = self.permits.pop(index)
        if outcome == "success":
            self.breaker.on_success(permit)
        elif outcome == "counted":
            self.breaker.on_failure(permit, TransientToolError("down"))
        elif outcome == "ignored":
            self.breaker.on_failure(permit, PermanentToolError("bad request"))
        else:
            self.breaker.on_failure(permit, asyncio.CancelledError())
        current = period == self.period
        if permit.probe and current and self.state is HALF_OPEN:
            self.probe_out = False
            if outcome == "success":
                self.state = CLOSED
                self.period += 1
            elif outcome == "counted":
                self.open()
        elif not permit.probe and current and self.state is CLOSED:
            if outcome == "success":
                self.failures = 0
            elif outcome == "counted":
                self.failures += 1
                if self.failures >= self.THRESHOLD:
                    self.open()

    @rule(outcome=st.sampled_from(["success", "counted", "ignored", "cancelled"]))
    def make_a_quick_call(self, outcome: str) -> None:
        self.acquire()
        if self.permits:
            self.finish(0, outcome)  # the oldest call: often one admitted in an earlier period

    @rule()
    def force_open(self) -> None:
        self.breaker.force_open()
        if not self.forced:
            self.open(forced=True)

    @rule()
    def reset(self) -> None:
        state = self.model_state()
        self.breaker.reset()
        self.failures = 0
        self.forced = False
        if state is not CLOSED:
            self.state = CLOSED
            self.period += 1
            self.probe_out = False

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.99, 10.0, 25.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def the_breaker_agrees_with_the_model(self) -> None:
        stats = self.breaker.statistics()
        assert stats.state is self.model_state()
        assert stats.consecutive_failures == self.failures
        assert stats.probe_in_flight == (self.state is HALF_OPEN and self.probe_out)
        if self.state is OPEN:
            assert stats.retry_at == self.retry_at


BreakerModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_the_breaker_follows_its_model = BreakerModel.TestCase
