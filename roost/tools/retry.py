"""Retry policy for tool calls: full-jitter exponential backoff, attempt timeouts and a deadline.

`Retry` is the frozen policy a tool is declared with; `call_with_retry` runs one
call under it, optionally through the tool's circuit breaker and bulkhead:

    result = await call_with_retry(
        lambda: send_email(to=to, body=body), Retry(attempts=3, attempt_timeout=10.0),
        tool="send_email", key=key, breaker=breaker, bulkhead=bulkhead)

All durations are seconds.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import anyio
import msgspec
import structlog

from roost._validate import is_number
from roost.errors import ConfigurationError, ToolTimeout, ToolUnavailable, TransientToolError
from roost.tools.breaker import CircuitBreaker, ErrorFilter, error_matches, is_error_filter
from roost.tools.bulkhead import Bulkhead

__all__ = ["DEFAULT_RETRY_ON", "Retry", "call_with_retry"]

T = TypeVar("T")

_log = structlog.get_logger(__name__)

DEFAULT_RETRY_ON: Final = (TransientToolError, TimeoutError, ConnectionError)
"""Errors retried unless `Retry.retry_on` says otherwise (ToolTimeout is transient)."""

# 2.0 ** 1024 overflows; past this exponent the cap is max_delay anyway.
_MAX_EXPONENT: Final = 1023


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    """How often, how soon and for how long a failed tool call is tried again.

    Example:
        Retry(attempts=4, base_delay=0.2, max_delay=5.0, attempt_timeout=10.0, deadline=30.0)

    Attributes:
        attempts: Tries in all, the first included (1 means no retry).
        base_delay: Cap of the first backoff; the cap doubles after each failure.
        max_delay: No backoff is longer than this.
        retry_on: Which errors are retried: exception types or a predicate.
        attempt_timeout: Time limit of one attempt; None for no limit.
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

    def retries(self, error: BaseException) -> bool:
        """Whether the policy retries `error` (cancellation never is)."""
        return isinstance(error, Exception) and error_matches(self.retry_on, error)


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
) -> T:
    """Await `call()` until it succeeds, a failure is not retried, or the policy runs out.

    Each attempt asks `breaker` for a permit, takes a slot in `bulkhead`
    (waiting counts toward the deadline, not the attempt timeout), then awaits a
    fresh `call()` within `policy.attempt_timeout`, and reports the outcome to
    the breaker. Between attempts it sleeps `policy.delay(...)`; when that sleep
    would end past `policy.deadline`, it gives up at once. It logs
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

    Returns:
        What the successful attempt returned.

    Raises:
        ToolUnavailable: The breaker refused the first attempt (use the
            fallback). When it refuses a retry, the previous attempt's error is
            raised instead: the call that tripped the breaker keeps its own error.
        ToolTimeout: An attempt ran past `attempt_timeout` ("attempt"), or the
            call past `deadline` ("call"), and was cancelled.
        ToolBusy: The bulkhead's slots and queue were full.
        Exception: The last attempt's error, when it is not retried or the
            attempts or the deadline ran out.

    If cancelled, the attempt in progress is cancelled and its breaker permit
    released; the tool may have acted already.
    """
    started = clock()
    previous: Exception | None = None
    number = 0
    while True:
        number += 1
        permit = None
        if breaker is not None:
            try:
                permit = breaker.acquire()
            except ToolUnavailable:
                if previous is None:
                    raise
        if breaker is not None and permit is None and previous is not None:
            _log.warning(
                "tool_gave_up", tool=tool, key=key, attempts=number - 1, reason="breaker_open",
                error=_describe(previous),
            )
            raise previous
        remaining = None if policy.deadline is None else policy.deadline - (clock() - started)
        attempt_started = clock()
        try:
            result = await _bounded(
                lambda: _in_slot(call, policy.attempt_timeout, tool, bulkhead),
                remaining, tool, "call", reported=policy.deadline,
            )
        except Exception as error:
            if breaker is not None and permit is not None:
                breaker.on_failure(permit, error)
            _log.warning(
                "tool_attempt_failed", tool=tool, key=key, attempt=number,
                latency=clock() - attempt_started, error=_describe(error),
            )
            delay = 0.0
            reason: str | None = None
            if not policy.retries(error):
                reason = "not_retryable"
            elif number >= policy.attempts:
                reason = "attempts_exhausted"
            else:
                delay = policy.delay(number - 1, rng)
                if policy.deadline is not None and clock() - started + delay >= policy.deadline:
                    reason = "deadline"
            if reason is not None:
                _log.warning(
                    "tool_gave_up", tool=tool, key=key, attempts=number, reason=reason,
                    error=_describe(error),
                )
                raise
            previous = error
        except BaseException:
            if breaker is not None and permit is not None:
                breaker.release(permit)
            raise
        else:
            if breaker is not None and permit is not None:
                breaker.on_success(permit)
            return result
        _log.info("tool_retry_scheduled", tool=tool, key=key, attempt=number, delay=delay)
        await sleep(delay)


async def _in_slot(
    call: Callable[[], Awaitable[T]], limit: float | None, tool: str, bulkhead: Bulkhead | None
) -> T:
    async with bulkhead if bulkhead is not None else contextlib.nullcontext():
        return await _bounded(call, limit, tool, "attempt")


async def _bounded(
    call: Callable[[], Awaitable[T]],
    limit: float | None,
    tool: str,
    what: str,
    *,
    reported: float | None = None,
) -> T:
    """Await `call()`; past `limit` seconds cancel it and raise ToolTimeout naming `reported`."""
    if limit is None:
        return await call()
    with anyio.move_on_after(limit):
        return await call()
    raise ToolTimeout(tool, limit if reported is None else reported, what)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"




def _invalid(field: str, value: object, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Retry: {field}={value!r} is invalid; {allowed}")
