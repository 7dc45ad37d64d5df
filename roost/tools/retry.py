"""Retry policy for tool calls: full-jitter exponential backoff, attempt timeouts and a deadline.

`Retry` is the frozen policy a tool is declared with; `call_with_retry` runs one
call under it, optionally through the tool's circuit breaker and bulkhead:

    result = await call_with_retry(
        lambda: send_email(to=to, body=body), Retry(attempts=3, attempt_timeout=10.0),
        tool="send_email", key=key, breaker=breaker, bulkhead=bulkhead, recheck=recheck)

An attempt that timed out, or lost its connection after the request was sent,
may have taken effect (`leaves_outcome_unknown`). For a tool that is not
idempotent the caller passes `recheck`, which settles such an attempt before
anything else happens to the call: only an attempt known not to have taken
effect is retried.

All durations are seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Final, Generic, TypeVar

import aiohttp
import anyio
import msgspec

from roost._logging import get_logger
from roost._validate import is_number
from roost.actors._cell import KILL_GRACE
from roost.errors import ConfigurationError, ToolTimeout, ToolUnavailable, TransientToolError
from roost.tools.breaker import (
    BreakerState,
    CircuitBreaker,
    ErrorFilter,
    error_matches,
    is_error_filter,
)
from roost.tools.bulkhead import Bulkhead
from roost.tracing.tracer import OpenSpan

__all__ = [
    "DEFAULT_RETRY_ON",
    "Recheck",
    "Retry",
    "Watchdog",
    "call_once",
    "call_with_retry",
    "leaves_outcome_unknown",
    "stray_exit",
]

T = TypeVar("T")

_log = get_logger("roost.tools.retry")

DEFAULT_RETRY_ON: Final = (TransientToolError, TimeoutError, ConnectionError,
                           aiohttp.ClientConnectionError)
"""Errors retried unless `Retry.retry_on` says otherwise (ToolTimeout is transient; aiohttp's
connection errors, from a tool that uses aiohttp itself, are not all `ConnectionError`s)."""

# 2.0 ** 1024 overflows; past this exponent the cap is max_delay anyway.
_MAX_EXPONENT: Final = 1023

Recheck = Callable[[Exception], Awaitable[tuple[T] | None]]
"""`await recheck(error)` after an attempt whose outcome is unknown: `(result,)` when it took
effect, None when it did not (so it may be tried again); raises when nothing can tell."""


def leaves_outcome_unknown(error: BaseException) -> bool:
    """Whether an attempt that failed with `error` may still have taken effect.

    A timeout (the attempt was cut off, or the tool's own client gave up
    waiting) or a connection that broke (reset, aborted, `ToolConnectionLost`
    after the request was sent, or aiohttp's `ServerDisconnectedError`) says
    nothing about what the other side did. A refused connection (aiohttp's
    `ClientConnectorError`: none was made) never carried the request, and an
    answered failure (e.g. HTTP 503, a `TransientToolError`) is known.
    """
    return isinstance(error, TimeoutError | ConnectionError | aiohttp.ClientConnectionError) \
        and not isinstance(error, ConnectionRefusedError | aiohttp.ClientConnectorError)


def stray_exit(tool: str, error: asyncio.CancelledError | GeneratorExit) -> RuntimeError:
    """The failure of a tool attempt whose own code raised `error`: a CancelledError while
    the task running it was not being cancelled (a future it awaited was), or a
    GeneratorExit (a generator's close escaped it).

    Passed on as it is, `error` would look like a cancellation, or an exit, of whatever
    awaits the call (the tool proxy's task for the call, an actor): it is a plain failure
    of the tool instead, as such an error from an actor's receive is.
    """
    if isinstance(error, asyncio.CancelledError):
        return RuntimeError(f"tool {tool!r} raised CancelledError although its call was not "
                            "cancelled (a task or future it awaited was)")
    return RuntimeError(f"tool {tool!r} raised GeneratorExit (a generator's close escaped it)")


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """How often, how soon and for how long a failed tool call is tried again.

    Example:
        Retry(attempts=4, base_delay=0.2, max_delay=5.0, attempt_timeout=10.0, deadline=30.0)

    Attributes:
        attempts: Tries in all, the first included (1 means no retry).
        base_delay: Cap of the first backoff; the cap doubles after each failure.
        max_delay: No backoff is longer than this.
        retry_on: Which errors are retried: exception types or a predicate.
        attempt_timeout: Time limit of one attempt; None for none of its own (a
            tool's attempts then get its `timeout`, by default 60 s).
        deadline: Time limit of the whole call, backoff included; None for no limit.
    """

    attempts: int = 3
    base_delay: float = 0.1
    max_delay: float = 10.0
    retry_on: ErrorFilter = DEFAULT_RETRY_ON
    attempt_timeout: float | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or (
            self.attempts < 1
        ):
            raise _invalid("attempts", self.attempts, "use a whole number >= 1")
        if not (is_number(self.base_delay) and self.base_delay >= 0):
            raise _invalid("base_delay", self.base_delay, "use a number of seconds >= 0")
        if not (is_number(self.max_delay) and self.max_delay >= self.base_delay):
            raise _invalid(
                "max_delay", self.max_delay, f"use a number of seconds >= base_delay "
                f"({self.base_delay!r})"
            )
        if not is_error_filter(self.retry_on):
            raise _invalid(
                "retry_on",
                self.retry_on,
                "use an exception type, a tuple of exception types, or a predicate "
                "taking the error and returning bool",
            )
        if self.retry_on == ():
            raise _invalid("retry_on", (), "it would retry no error; to turn retries off "
                                           "use attempts=1")
        for name in ("attempt_timeout", "deadline"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and value > 0):
                raise _invalid(name, value, "use a positive number of seconds, or None")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (0 for the first): full jitter.

        Drawn uniformly from [0, min(max_delay, base_delay * 2**attempt)], so it
        never exceeds `max_delay`.

        Args:
            attempt: How many attempts failed before this one, minus one (>= 0).
            rng: Source of randomness; the `random` module's when None.
        """
        if attempt < 0:
            raise ValueError(f"attempt={attempt!r} is invalid; attempts count from 0")
        cap = min(self.max_delay, self.base_delay * 2.0 ** min(attempt, _MAX_EXPONENT))
        uniform = random.uniform if rng is None else rng.uniform
        return uniform(0.0, cap)

    def longest_backoff(self) -> float:
        """The most all the waits between attempts can add up to, in seconds: each at its
        cap (`base_delay` doubling per failure, at most `max_delay`)."""
        retries = self.attempts - 1
        if retries == 0 or self.base_delay == 0:
            return 0.0
        # Caps below max_delay: base_delay * 2**n for n < doubling; the rest are max_delay.
        # (ldexp, and the exponent compared before rounding: a tiny base_delay overflows
        # both max_delay / base_delay and 2.0 ** n.)
        exponent = math.log2(self.max_delay / self.base_delay)
        doubling = retries if exponent >= retries else max(0, math.ceil(exponent))
        return (math.ldexp(self.base_delay, doubling) - self.base_delay
                + self.max_delay * (retries - doubling))

    def retries(self, error: BaseException) -> bool:
        """Whether the policy retries `error` (cancellation never is)."""
        return isinstance(error, Exception) and error_matches(self.retry_on, error)


class Jitter(random.Random):
    """A `random.Random` whose numbers come from `rand` (the system's `rand=`), so that an
    injected source also decides retry backoff."""

    def __init__(self, rand: Callable[[], float]) -> None:
        super().__init__(0)  # a fixed seed: the numbers come from `rand`, not the state
        self._rand = rand

    def random(self) -> float:
        return self._rand()


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    policy: Retry,
    *,
    tool: str,
    key: str | None = None,
    breaker: CircuitBreaker | None = None,
    bulkhead: Bulkhead | None = None,
    sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
    recheck: Recheck[T] | None = None,
    watchdog: Watchdog | None = None,
    step: str | None = None,
    attempt_span: Callable[[int], OpenSpan] | None = None,
) -> T:
    """Await `call()` until it succeeds, a failure is not retried, or the policy runs out.

    Each attempt asks `breaker` for a permit, takes a slot in `bulkhead`
    (waiting counts toward the deadline, not the attempt timeout), then awaits a
    fresh `call()` within `policy.attempt_timeout`, and reports the outcome to
    the breaker (none for an attempt the bulkhead refused or the deadline cut
    off while it waited for a slot: the tool did not run). An attempt that ran
    and failed with its outcome unknown (see `leaves_outcome_unknown`) is
    settled by `recheck`, when given, before anything else: its result ends the
    call, its error ends the call, and only an attempt found not done goes on to
    the usual retry decision. Between attempts it sleeps `policy.delay(...)`;
    when that sleep would end past `policy.deadline`, or the breaker would still
    refuse the retry after it, it gives up at once. It logs
    `tool_attempt_failed`, `tool_retry_scheduled` and `tool_gave_up`.

    Args:
        call: Makes one attempt; called anew for each.
        policy: Attempts, backoff, time limits and which errors to retry.
        tool: Tool name, for errors and logs.
        key: Idempotency key, for logs.
        breaker: The tool's circuit breaker, if it has one.
        bulkhead: The tool's concurrency limit, if it has one.
        sleep: Awaited for each backoff; inject a fake in tests.
        clock: Monotonic seconds, for the deadline and latencies.
        rng: Randomness for the jitter.
        recheck: For a tool that is not idempotent: tells whether an attempt whose
            outcome is unknown took effect. None (idempotent and read-only tools)
            retries such attempts like any other retryable failure.
        watchdog: Enforces `attempt_timeout`; the caller's shared one, else one
            for this call.
        step: For a pipeline step's retries: its name. Logs are then
            `step_attempt_failed`, `step_retry_scheduled` and `step_gave_up` with
            `step` and `run_id` (`key`), not tool events.
        attempt_span: When the call is traced: starts the span of attempt `n`
            (1, 2, ...) once the breaker has let it go. The span gets the
            attempt's latency, its error, the breaker's state changes and the
            delay before the next attempt (`retry_scheduled`) or why there is
            none (`gave_up`), and is ended here.

    Returns:
        What the successful attempt returned (or what `recheck` found it returned).

    Raises:
        ToolUnavailable: The breaker refused the first attempt (use the
            fallback). When it refuses a retry, the previous attempt's error is
            raised instead: the call that tripped the breaker keeps its own error.
        ToolTimeout: An attempt ran past `attempt_timeout` ("attempt"), or the
            call past `deadline` ("call"), and was cancelled.
        ToolBusy: The bulkhead's slots and queue were full.
        ToolOutcomeUnknown: From `recheck`: an attempt's outcome is unknown and
            nothing could tell whether it took effect; it was not retried.
        Exception: The last attempt's error, when it is not retried or the
            attempts or the deadline ran out.

    If cancelled, the attempt in progress is cancelled and its breaker permit
    released; the tool may have acted already.
    """
    started = clock()
    previous: Exception | None = None
    number = 0
    subject, who = ("tool", {"tool": tool, "key": key}) if step is None else (
        "step", {"step": step, "run_id": key})
    if watchdog is None and policy.attempt_timeout is not None:
        watchdog = Watchdog()
    before: BreakerState | None = None  # the breaker's state before it was asked (traced calls)
    while True:
        number += 1
        permit = None
        if breaker is not None:
            if attempt_span is not None:
                before = breaker.state
            try:
                permit = breaker.acquire()
            except ToolUnavailable:
                if previous is None:
                    raise
        if breaker is not None and permit is None and previous is not None:
            _log.warning(
                f"{subject}_gave_up", **who, attempts=number - 1, reason="breaker_open",
                error=_describe(previous),
            )
            raise previous
        remaining = None if policy.deadline is None else policy.deadline - (clock() - started)
        span = None
        if attempt_span is not None:
            span = attempt_span(number)
            if breaker is not None:
                _breaker_moved(span, breaker, before)
        attempt_started = clock()
        slot = _Slot(call, policy.attempt_timeout, tool, bulkhead, watchdog, clock)
        try:
            result = await _bounded(slot.run, remaining, tool, "call", reported=policy.deadline)
        except Exception as error:
            latency = clock() - attempt_started
            if breaker is not None and permit is not None:
                if span is not None:
                    before = breaker.state
                if slot.entered:
                    breaker.on_failure(permit, error, clock() - slot.entered_at)
                else:  # refused or cut off by the bulkhead: the tool never ran, no verdict
                    breaker.release(permit)
                _breaker_moved(span, breaker, before)
            _log.warning(
                f"{subject}_attempt_failed", **who, attempt=number,
                latency=latency, error=_describe(error),
            )
            if span is not None:
                span.fail(error)
                span.attributes["latency"] = latency
            abandoned = isinstance(error, AttemptAbandoned)
            if (recheck is not None and slot.entered and not abandoned
                    and leaves_outcome_unknown(error)):
                try:
                    took = await recheck(error)
                except BaseException:
                    if span is not None:
                        span.event("outcome_unknown")
                        span.end()
                    raise
                if took is not None:
                    if span is not None:
                        span.event("verified_done")
                        span.end()
                    return took[0]
                if span is not None:
                    span.event("verified_not_done")
            delay = 0.0
            reason: str | None = None
            if abandoned:
                reason = "abandoned"
            elif not policy.retries(error):
                reason = "not_retryable"
            elif number >= policy.attempts:
                reason = "attempts_exhausted"
            else:
                delay = policy.delay(number - 1, rng)
                if policy.deadline is not None and clock() - started + delay >= policy.deadline:
                    reason = "deadline"
                elif breaker is not None and breaker.refuses_for() > delay:
                    reason = "breaker_open"  # the retry would be refused: no point waiting for it
            if reason is not None:
                _log.warning(
                    f"{subject}_gave_up", **who, attempts=number, reason=reason,
                    error=_describe(error),
                )
                if span is not None:
                    span.event("gave_up", reason=reason)
                    span.end()
                raise
            if span is not None:
                span.event("retry_scheduled", delay=delay)
                span.end()
            previous = error
        except BaseException as cancelled:
            if breaker is not None and permit is not None:
                breaker.release(permit)
            if span is not None:
                span.fail(cancelled)
                span.end()
            raise
        else:
            ran = clock() - slot.entered_at  # the breaker times the tool, not the queue
            if span is not None:
                span.attributes["latency"] = clock() - attempt_started
                if breaker is not None and permit is not None:
                    before = breaker.state
                    breaker.on_success(permit, ran)
                    _breaker_moved(span, breaker, before)
                span.end()
            elif breaker is not None and permit is not None:
                breaker.on_success(permit, ran)
            return result
        _log.info(f"{subject}_retry_scheduled", **who, attempt=number, delay=delay)
        await sleep(delay)


async def call_once(
    call: Callable[[], Awaitable[T]],
    limit: float,
    *,
    tool: str,
    watchdog: Watchdog,
    recheck: Recheck[T] | None = None,
) -> T:
    """One attempt of `call()` within `limit` seconds, settled by `recheck` if cut off.

    What `call_with_retry` does for a single attempt with no deadline, breaker or
    bulkhead, without its bookkeeping: the path of most calls.

    Raises:
        ToolTimeout: The attempt ran past `limit` and was cancelled.
        ToolOutcomeUnknown: From `recheck`, as in `call_with_retry`.
        Exception: What the attempt raised.
    """
    try:
        return await watchdog.run(call, limit, tool)
    except Exception as error:
        if recheck is None or not leaves_outcome_unknown(error):
            raise
        took = await recheck(error)
        if took is None:
            raise
        return took[0]


class AttemptAbandoned(ToolTimeout):
    """An attempt that ignored its cancellation ended after its call was given up: it is
    neither retried nor verified (its callers were answered; see `Watchdog.on_stuck`)."""

    def __init__(self, tool: str, limit: float) -> None:
        super().__init__(tool, limit, "attempt (abandoned: it ignored its cancellation)")


class Watchdog:
    """Cuts off tool attempts that run past their time limit, with few timers for all of them.

    A timer per attempt (`asyncio.timeout`, `anyio.move_on_after`) costs a few
    microseconds, a good share of a whole call through the proxy, while most
    attempts end long before their limit. So an attempt only enters a table. A
    sweep, scheduled while the table is not empty, runs `SWEEP` seconds later and
    gives each attempt still running a timer that cancels its task when its
    limit has passed; the attempt then raises ToolTimeout. An attempt is so cut
    off between `limit` and `limit + SWEEP` seconds after it started.

    An attempt that ignores its cancellation for `GRACE` seconds more is reported to
    `on_stuck(task, tool, limit)`, if set: the tool proxy abandons the call.

    It serves one event loop at a time (the system's tools share one); moved to
    another, it forgets what it held on the one before.
    """

    SWEEP: ClassVar[float] = 0.01
    GRACE: ClassVar[float] = KILL_GRACE

    def __init__(self) -> None:
        self.on_stuck: Callable[[asyncio.Task[Any], str, float], object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._new: dict[object, tuple[asyncio.Task[Any], float, str]] = {}
        self._timers: dict[object, asyncio.TimerHandle] = {}
        self._expired: dict[object, int] = {}  # attempt -> its task's cancel count before
        self._stuck: set[object] = set()  # attempts reported to `on_stuck`
        self._sweep: asyncio.TimerHandle | None = None

    async def run(self, call: Callable[[], Awaitable[T]], limit: float, tool: str) -> T:
        """Await `call()`; once it has run `limit` seconds, cancel it and raise ToolTimeout.

        A CancelledError or GeneratorExit the tool raised itself becomes a RuntimeError
        (see `stray_exit`).
        """
        attempt = call()
        task = asyncio.current_task()
        assert task is not None, "Watchdog.run runs in a task"
        loop = task.get_loop()
        if loop is not self._loop:  # a new loop: whatever the last one left is dead
            self._loop = loop
            self._sweep = None
            self._new.clear()
            self._timers.clear()
            self._expired.clear()
            self._stuck.clear()
        self._new[attempt] = (task, limit, tool)
        if self._sweep is None:
            # Timers run in a context of their own: the caller's would keep its actor (and
            # all it holds) alive until a cancelled timer leaves the loop's heap.
            self._sweep = loop.call_later(self.SWEEP, self._arm, context=contextvars.Context())
        try:
            return await attempt
        except (asyncio.CancelledError, GeneratorExit, Exception) as ended:
            if attempt in self._stuck:  # its call was given up: no retry, no verdict
                raise AttemptAbandoned(tool, limit) from ended
            if isinstance(ended, asyncio.CancelledError):
                before = self._expired.pop(attempt, None)
                if before is not None and task.uncancel() <= before:
                    raise ToolTimeout(tool, limit, "attempt") from None
                if task.cancelling():
                    raise
            if isinstance(ended, asyncio.CancelledError | GeneratorExit):
                raise stray_exit(tool, ended) from ended
            raise
        finally:
            self._stuck.discard(attempt)
            if self._new.pop(attempt, None) is None:
                timer = self._timers.pop(attempt, None)
                if timer is not None:
                    timer.cancel()
                elif self._expired.pop(attempt, None) is not None:
                    task.uncancel()  # it ended without raising as its cancellation arrived

    def _arm(self) -> None:
        self._sweep = None
        for attempt, (task, limit, tool) in self._new.items():
            # It started at most SWEEP seconds ago: from now, `limit` is never too early.
            self._timers[attempt] = task.get_loop().call_later(
                limit, self._expire, attempt, task, limit, tool, context=contextvars.Context())
        self._new.clear()

    def _expire(self, attempt: object, task: asyncio.Task[Any], limit: float, tool: str) -> None:
        del self._timers[attempt]
        self._expired[attempt] = task.cancelling()
        task.cancel("tool attempt past its time limit")
        if self.on_stuck is not None:
            task.get_loop().call_later(self.GRACE, self._still_running, attempt, task, limit,
                                       tool, context=contextvars.Context())

    def _still_running(self, attempt: object, task: asyncio.Task[Any], limit: float,
                       tool: str) -> None:
        """Report an attempt that has not ended `GRACE` seconds after its cancellation."""
        if attempt in self._expired and self.on_stuck is not None:
            self._stuck.add(attempt)
            self.on_stuck(task, tool, limit)


class _Slot(Generic[T]):
    """One attempt: a slot in the bulkhead, then `call()` within the attempt's time limit.

    `entered` tells whether the attempt got as far as calling the tool: one cut
    off by the deadline while it waited for a slot never ran, so its outcome is
    known.
    """

    __slots__ = ("_bulkhead", "_call", "_clock", "_limit", "_tool", "_watchdog", "entered",
                 "entered_at")

    def __init__(self, call: Callable[[], Awaitable[T]], limit: float | None, tool: str,
                 bulkhead: Bulkhead | None, watchdog: Watchdog | None,
                 clock: Callable[[], float]) -> None:
        self._call = call
        self._limit = limit
        self._tool = tool
        self._bulkhead = bulkhead
        self._watchdog = watchdog
        self._clock = clock
        self.entered = False
        self.entered_at = 0.0

    async def run(self) -> T:
        async with self._bulkhead if self._bulkhead is not None else contextlib.nullcontext():
            self.entered = True
            self.entered_at = self._clock()
            if self._limit is None or self._watchdog is None:
                return await self._call()
            return await self._watchdog.run(self._call, self._limit, self._tool)


async def _bounded(
    call: Callable[[], Awaitable[T]],
    limit: float | None,
    tool: str,
    what: str,
    *,
    reported: float | None = None,
) -> T:
    """Await `call()`; past `limit` seconds cancel it and raise ToolTimeout naming `reported`.

    For the call's deadline, which few tools set; attempts are timed by a `Watchdog`.
    """
    if limit is None:
        return await call()
    with anyio.move_on_after(limit):
        return await call()
    raise ToolTimeout(tool, limit if reported is None else reported, what)


def _breaker_moved(span: OpenSpan | None, breaker: CircuitBreaker | None,
                   before: BreakerState | None) -> None:
    """Record on `span` that the breaker went from `before` to another state, if it did."""
    if span is not None and breaker is not None and before is not None:
        after = breaker.state
        if after is not before:
            span.event("breaker_state_changed", old=str(before), new=str(after))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _invalid(field: str, value: object, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Retry: {field}={value!r} is invalid; {allowed}")
