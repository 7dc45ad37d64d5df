"""Circuit breaker for one tool: stop calling a failing dependency, then probe it.

`Breaker` is the frozen configuration a tool is declared with; `CircuitBreaker` is
the runtime state machine that every caller of that tool shares:

    closed --(failure threshold)--> open --(cooldown)--> half-open
    half-open --(its `probes` calls all succeed)--> closed
    half-open --(a probe fails)--> open (the cooldown starts again)
    any --force_open()--> open (until reset())      any --reset()--> closed

A caller asks for a `Permit` before each call and reports the outcome with it:

    permit = breaker.acquire()          # raises ToolUnavailable when open
    try:
        result = await call()
    except BaseException as error:
        breaker.on_failure(permit, error)
        raise
    breaker.on_success(permit)

All durations and times are seconds of the injected clock (`time.monotonic` by
default). `BreakerView` is what users get from `system.tools.breaker(name)`.
"""

from __future__ import annotations

import enum
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import aiohttp
import msgspec

from roost._logging import get_logger
from roost._validate import is_count, is_number
from roost.errors import ConfigurationError, ToolUnavailable, TransientToolError

__all__ = [
    "Breaker",
    "BreakerState",
    "BreakerStatistics",
    "BreakerTransition",
    "BreakerView",
    "CircuitBreaker",
    "ErrorFilter",
    "Permit",
    "error_matches",
    "is_error_filter",
]

_log = get_logger("roost.tools.breaker")

ErrorFilter = (
    type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
)
"""Which errors a rule applies to: exception types, or a predicate on the error."""

Listener = Callable[["BreakerTransition"], object]
"""Called as `listener(transition)` after every state change."""

DEFAULT_COUNTS: Final = (TransientToolError, TimeoutError, OSError, aiohttp.ClientConnectionError)
"""Errors that count as failures unless `Breaker.counts` says otherwise (OSError covers
ConnectionError; aiohttp's connection errors, from a tool that uses aiohttp itself, are not
all OSErrors)."""

_DEFAULT_FAILURES: Final = 5
_WINDOW_BUCKETS: Final = 10
#: The shortest failure-rate window: its buckets must stay wider than the clock's jitter.
_MIN_WINDOW: Final = 0.001


class Breaker(msgspec.Struct, frozen=True, kw_only=True):
    """How a tool's circuit breaker opens and when it probes again.

    The breaker opens on `failures` consecutive counted failures, or, when
    `failure_rate` is set, once the counted failures in the last `window` seconds
    reach that share of at least `min_calls` calls. Setting both turns both
    rules on. With `slow_call` set, it also opens once the calls that took at least
    that long reach `slow_call_rate` of at least `min_calls` calls in the window
    (resilience4j's slow-call rate): a dependency that answers, but too slowly, is
    failing its callers too. Errors `counts` rejects are ignored: neither success
    nor failure.

    Example:
        Breaker(failures=5, cooldown=30.0)
        Breaker(failure_rate=0.5, window=60.0, min_calls=20)

    Attributes:
        failures: Consecutive counted failures that open the breaker. Default:
            5 when `failure_rate` is not set, otherwise off.
        failure_rate: Share of failed calls (0 < rate <= 1) that opens the
            breaker, measured over `window`; None turns the rule off.
        window: Seconds of history the failure rate looks at; it slides in
            steps of a tenth of itself.
        min_calls: Calls the window must hold before a rate can open the breaker.
        slow_call: Seconds from which a call counts as slow (whether it succeeded or
            failed); None turns the slow-call rule off.
        slow_call_rate: Share of slow calls (0 < rate <= 1) that opens the breaker.
        cooldown: Seconds the breaker stays open before it turns half-open.
        probes: Calls let through while half-open (resilience4j's permitted calls in
            half-open state): the breaker closes once they all succeed, and opens again
            at the first counted failure among them; other calls are refused meanwhile.
        counts: Which errors count as failures: exception types or a predicate.
    """

    failures: int | None = None
    failure_rate: float | None = None
    window: float = 60.0
    min_calls: int = 10
    cooldown: float = 30.0
    probes: int = 1
    slow_call: float | None = None
    slow_call_rate: float = 1.0
    counts: ErrorFilter = DEFAULT_COUNTS

    def __post_init__(self) -> None:
        if self.failures is not None and not is_count(self.failures, 1):
            raise _invalid("failures", self.failures, "use a whole number >= 1, or None")
        if self.failure_rate is not None and not (
            is_number(self.failure_rate) and 0 < self.failure_rate <= 1
        ):
            raise _invalid(
                "failure_rate", self.failure_rate, "use a share in (0, 1], e.g. 0.5, or None"
            )
        if not (is_number(self.window) and _MIN_WINDOW <= self.window < math.inf):
            raise _invalid("window", self.window,
                           f"use a positive number of seconds (at least {_MIN_WINDOW:g}), e.g. 60")
        if not is_count(self.min_calls, 1):
            raise _invalid("min_calls", self.min_calls, "use a whole number >= 1")
        if not (is_number(self.cooldown) and self.cooldown > 0):
            raise _invalid("cooldown", self.cooldown, "use a positive number of seconds")
        if not is_count(self.probes, 1):
            raise _invalid("probes", self.probes, "use a whole number >= 1")
        if self.slow_call is not None and not (is_number(self.slow_call)
                                               and 0 < self.slow_call < math.inf):
            raise _invalid("slow_call", self.slow_call,
                           "use a positive number of seconds, or None")
        if not (is_number(self.slow_call_rate) and 0 < self.slow_call_rate <= 1):
            raise _invalid("slow_call_rate", self.slow_call_rate, "use a share in (0, 1], e.g. 0.8")
        if not is_error_filter(self.counts):
            raise _invalid(
                "counts",
                self.counts,
                "use an exception type, a tuple of exception types, or a predicate "
                "taking the error and returning bool",
            )
        if self.counts == ():
            raise _invalid("counts", (), "it would count no error, so the breaker could never "
                                         "open; leave it out to count the default errors")

    @property
    def failure_threshold(self) -> int | None:
        """Consecutive counted failures that open the breaker, or None when that rule is off."""
        if self.failures is None and self.failure_rate is None:
            return _DEFAULT_FAILURES
        return self.failures


class BreakerState(enum.StrEnum):
    """Where a circuit breaker is in its cycle."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerTransition(msgspec.Struct, frozen=True, kw_only=True):
    """One change of a breaker's state, as its listeners hear it.

    Attributes:
        tool: The tool the breaker guards.
        old: The state before.
        new: The state after.
        at: Clock time of the change (the breaker's clock, like `retry_at`).
        reason: Why: `failures` (consecutive failures reached the threshold),
            `failure_rate`, `slow_calls`, `probe_failed`, `probe_slow`,
            `cooldown_ended`, `probe_succeeded`, `forced_open` or `reset`.
        cause: The error that opened the breaker, for a change to open by a
            failure; None otherwise.
    """

    tool: str
    old: BreakerState
    new: BreakerState
    at: float
    reason: str
    cause: BaseException | None = None


class Permit:
    """Leave to make one call; hand it back with `on_success`, `on_failure` or `release`.

    Permits given out while the breaker is closed are shared (one object per
    closed period), so acquiring one allocates nothing. An outcome reported with
    a permit from an earlier period is ignored.
    """

    __slots__ = ("probe",)

    def __init__(self, *, probe: bool) -> None:
        self.probe = probe

    def __repr__(self) -> str:
        return f"Permit(probe={self.probe})"


class BreakerStatistics(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A snapshot of one circuit breaker's state and counters.

    Attributes:
        tool: The tool the breaker guards.
        state: Its state when the snapshot was taken.
        opened_at: Clock time it last opened, unless it is closed; otherwise None.
        retry_at: Clock time the cooldown ends, when open (inf when forced open);
            otherwise None.
        probe_in_flight: Whether a half-open probe permit is out.
        consecutive_failures: Counted failures since the last success.
        window_calls: Calls in the failure-rate window (0 when that rule is off).
        window_failures: Counted failures in that window.
        window_slow_calls: Slow calls in that window (0 when `slow_call` is off).
        successes: Successes reported since the breaker was made.
        failures: Counted failures reported since then.
        ignored: Failures the breaker ignored (not counted, or cancellations).
        rejected: Calls refused with `ToolUnavailable`.
        times_opened: How often the breaker opened.
    """

    tool: str
    state: BreakerState
    opened_at: float | None
    retry_at: float | None
    probe_in_flight: bool
    consecutive_failures: int
    window_calls: int
    window_failures: int
    window_slow_calls: int
    successes: int
    failures: int
    ignored: int
    rejected: int
    times_opened: int


class CircuitBreaker:
    """The circuit breaker of one tool, shared by all its callers.

    Not thread-safe: use it from one event loop. Nothing here awaits, so the
    state cannot change between two lines of one method.

    Args:
        tool: Name of the tool, used in errors and passed to listeners.
        config: When to open and how long to stay open.
        clock: Returns monotonic seconds; inject a fake one in tests.
    """

    def __init__(
        self, tool: str, config: Breaker, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tool = tool
        self.config = config
        self._clock = clock
        self._counts = config.counts
        self._threshold = config.failure_threshold
        self._window = (_Window(config.window) if config.failure_rate is not None
                        or config.slow_call is not None else None)
        self._listeners: list[Listener] = []
        self._state = BreakerState.CLOSED
        # Replaced whenever the breaker opens, so outcomes of calls admitted
        # before that can be told apart and ignored.
        self._closed_permit = Permit(probe=False)
        self._probes: set[Permit] = set()  # half-open: the probe permits out
        self._probes_passed = 0  # half-open: the probes that succeeded
        self._retry_at = 0.0
        self._opened_at: float | None = None
        self._opened_by: BaseException | None = None
        self._forced = False
        self._last_error: BaseException | None = None
        self._consecutive = 0
        self._successes = 0
        self._failures = 0
        self._ignored = 0
        self._rejected = 0
        self._times_opened = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cooldown has ended turns half-open."""
        if self._state is BreakerState.OPEN and self._clock() >= self._retry_at:
            self._change_state(BreakerState.HALF_OPEN, "cooldown_ended")
        return self._state

    @property
    def opened_at(self) -> float | None:
        """Clock time the breaker last opened, unless it is closed; otherwise None."""
        return None if self.state is BreakerState.CLOSED else self._opened_at

    @property
    def last_error(self) -> BaseException | None:
        """The last failure the breaker counted (None before the first and after `reset`)."""
        return self._last_error

    def refuses_for(self) -> float:
        """Seconds the breaker goes on refusing every call: the rest of its cooldown while
        open (inf when forced open), else 0."""
        if self.state is not BreakerState.OPEN:
            return 0.0
        return self._retry_at - self._clock()

    def acquire(self) -> Permit:
        """Ask leave to make one call. Never waits.

        Returns:
            A permit to report the call's outcome with.

        Raises:
            ToolUnavailable: The breaker is open, or half-open with all its probes
                out; its `cause` is the error that opened the breaker.
                `retry_at`/`retry_in` say when the cooldown ends; while a probe is
                out they are a full cooldown from now, since a probe may fail and
                restart it.
        """
        if self._state is BreakerState.CLOSED:
            return self._closed_permit
        now = self._clock()
        if self._state is BreakerState.OPEN:
            if now < self._retry_at:
                self._rejected += 1
                raise ToolUnavailable(self.tool, self._retry_at, self._retry_at - now,
                                      self._opened_by, forced=self._forced)
            self._change_state(BreakerState.HALF_OPEN, "cooldown_ended")
        if len(self._probes) + self._probes_passed < self.config.probes:
            probe = Permit(probe=True)
            self._probes.add(probe)
            return probe
        self._rejected += 1
        cooldown = self.config.cooldown
        raise ToolUnavailable(self.tool, now + cooldown, cooldown, self._opened_by)

    def on_success(self, permit: Permit, seconds: float | None = None) -> None:
        """Report that the call made with `permit` succeeded (in `seconds`, if known);
        a probe's success closes, unless it was slow.

        In the closed state the rates are checked after every call, as resilience4j
        does: the success that brings the window to `min_calls` opens the breaker if
        the failures, or the slow calls, already reach their rate.
        """
        self._successes += 1
        slow = self._slow(seconds)
        if permit is self._closed_permit:
            self._consecutive = 0
            if self._window is not None:
                calls, failures, slows = self._window.record(self._clock(), failed=False,
                                                             slow=slow)
                reason = self._rate_reason(calls, failures, slows)
                if reason is not None:
                    self._change_state(BreakerState.OPEN, reason, self._last_error)
        elif permit in self._probes and slow:
            self._change_state(BreakerState.OPEN, "probe_slow")
        elif permit in self._probes:
            self._probes.discard(permit)
            self._probes_passed += 1
            if self._probes_passed >= self.config.probes:
                self._change_state(BreakerState.CLOSED, "probe_succeeded")

    def on_failure(self, permit: Permit, error: BaseException,
                   seconds: float | None = None) -> None:
        """Report that the call made with `permit` raised `error` (after `seconds`, if known).

        An error the config does not count, or any BaseException that is not an
        Exception (cancellation), is ignored and gives the probe permit back. A
        counted failure of a probe opens the breaker again; in the closed
        state it may open it. The caller still raises its own error.

        A `counts` predicate that raises is a bug to fix, but must not leave the
        breaker stuck: it is logged (`breaker_counts_failed`) and the error counts
        as a failure, so a probe's permit is not lost.
        """
        if not isinstance(error, Exception) or not self._counted(error):
            self._ignored += 1
            self.release(permit)
            return
        self._failures += 1
        self._last_error = error
        if permit in self._probes:
            self._change_state(BreakerState.OPEN, "probe_failed", error)
        elif permit is self._closed_permit:
            self._consecutive += 1
            reason = None
            if self._threshold is not None and self._consecutive >= self._threshold:
                reason = "failures"
            if self._window is not None:
                calls, failures, slows = self._window.record(self._clock(), failed=True,
                                                             slow=self._slow(seconds))
                if reason is None:
                    reason = self._rate_reason(calls, failures, slows)
            if reason is not None:
                self._change_state(BreakerState.OPEN, reason, error)

    def release(self, permit: Permit) -> None:
        """Hand back a permit whose call ended with no verdict; a probe permit becomes free."""
        self._probes.discard(permit)

    def reset(self) -> None:
        """Close the breaker now and forget its failures (`last_error` included).

        Outcomes of calls admitted before the breaker last opened are ignored; a
        reset of a closed breaker forgets the counts but not its calls in flight,
        whose outcomes still count. Listeners hear a change (reason `reset`)
        unless it was closed already.
        """
        self._last_error = None
        if self._state is BreakerState.CLOSED:
            self._consecutive = 0
            if self._window is not None:
                self._window.clear()
            return
        self._change_state(BreakerState.CLOSED, "reset")

    def force_open(self) -> None:
        """Open the breaker and keep it open, with no probe, until `reset`.

        Callers get `ToolUnavailable` (with `forced` set) or the fallback, as
        for any open breaker. Forcing a forced-open breaker does nothing.
        """
        if not self._forced:
            self._change_state(BreakerState.OPEN, "forced_open")

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(transition)` after every state change (for logs, metrics).

        A listener that raises is logged (`breaker_listener_failed`) and does not
        stop the breaker or the other listeners.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`; raises ValueError if it was not added."""
        self._listeners.remove(listener)

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the state and counters."""
        state = self.state
        calls, failures, slows = (0, 0, 0)
        if self._window is not None:
            calls, failures, slows = self._window.totals(self._clock())
        return BreakerStatistics(
            tool=self.tool,
            state=state,
            opened_at=None if state is BreakerState.CLOSED else self._opened_at,
            retry_at=self._retry_at if state is BreakerState.OPEN else None,
            probe_in_flight=bool(self._probes),
            consecutive_failures=self._consecutive,
            window_calls=calls,
            window_failures=failures,
            window_slow_calls=slows,
            successes=self._successes,
            failures=self._failures,
            ignored=self._ignored,
            rejected=self._rejected,
            times_opened=self._times_opened,
        )

    def _counted(self, error: Exception) -> bool:
        try:
            return error_matches(self._counts, error)
        except Exception:
            _log.exception("breaker_counts_failed", tool=self.tool,
                           error_type=type(error).__name__, error=str(error))
            return True

    def _slow(self, seconds: float | None) -> bool:
        threshold = self.config.slow_call
        return threshold is not None and seconds is not None and seconds >= threshold

    def _rate_reason(self, calls: int, failures: int, slows: int) -> str | None:
        """Why the window's counts open the breaker (`failure_rate`, `slow_calls`), if they do."""
        config = self.config
        if calls < config.min_calls:
            return None
        # Compared as quotients: `rate * calls` rounds, so 55 of 100 fell short of 0.55.
        if config.failure_rate is not None and failures / calls >= config.failure_rate:
            return "failure_rate"
        if config.slow_call is not None and slows / calls >= config.slow_call_rate:
            return "slow_calls"
        return None

    def _change_state(self, new: BreakerState, reason: str,
                      cause: BaseException | None = None) -> None:
        old = self._state
        now = self._clock()
        self._state = new
        self._probes = set()
        self._probes_passed = 0
        self._consecutive = 0
        if self._window is not None:
            self._window.clear()
        if new is BreakerState.OPEN:
            self._forced = reason == "forced_open"
            self._retry_at = math.inf if self._forced else now + self.config.cooldown
            self._opened_at = now
            self._opened_by = cause
            self._closed_permit = Permit(probe=False)
            self._times_opened += 1
        elif new is BreakerState.CLOSED:
            self._forced = False
            self._opened_at = None
            self._opened_by = None
        transition = BreakerTransition(tool=self.tool, old=old, new=new, at=now, reason=reason,
                                       cause=cause)
        for listener in tuple(self._listeners):
            try:
                listener(transition)
            except Exception:
                _log.exception(
                    "breaker_listener_failed", tool=self.tool, old=str(old), new=str(new)
                )


class BreakerView:
    """A live view of one tool's circuit breaker: `system.tools.breaker(name)`.

    Every read reflects the breaker as it is now; `reset` and `force_open` act
    on the breaker every caller of the tool shares. Times are seconds of the
    system's clock (`time.monotonic` unless the system was given another).

    Example:
        view = system.tools.breaker("send_email")
        if view.state == "open":
            log.warning("mail is down", since=view.opened_at, error=view.last_error)
        view.force_open()       # e.g. during a provider's maintenance window
        view.reset()
    """

    __slots__ = ("_breaker",)

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def __repr__(self) -> str:
        return f"<BreakerView {self.tool!r} {self.state}>"

    @property
    def tool(self) -> str:
        """The tool the breaker guards."""
        return self._breaker.tool

    @property
    def config(self) -> Breaker:
        """The breaker's settings."""
        return self._breaker.config

    @property
    def state(self) -> BreakerState:
        """`closed`, `open` or `half_open`."""
        return self._breaker.state

    @property
    def opened_at(self) -> float | None:
        """Clock time it last opened, unless it is closed; otherwise None."""
        return self._breaker.opened_at

    @property
    def retry_at(self) -> float | None:
        """Clock time the cooldown ends while open (inf when forced open); otherwise None."""
        return self._breaker.statistics().retry_at

    @property
    def last_error(self) -> BaseException | None:
        """The last failure the breaker counted (None before the first and after `reset`)."""
        return self._breaker.last_error

    def statistics(self) -> BreakerStatistics:
        """A snapshot of the state and the counts: successes, failures, ignored, rejected, ..."""
        return self._breaker.statistics()

    def reset(self) -> None:
        """Close the breaker now and forget its failures."""
        self._breaker.reset()

    def force_open(self) -> None:
        """Open the breaker until `reset()`: callers get the fallback or `ToolUnavailable`."""
        self._breaker.force_open()

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(transition)` (a `BreakerTransition`) after every state change."""
        self._breaker.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        """Stop calling `listener`; raises ValueError if it was not added."""
        self._breaker.remove_listener(listener)


class _Window:
    """Calls, counted failures and slow calls over the last `span` seconds, kept in ten
    buckets."""

    __slots__ = ("_buckets", "_calls", "_failures", "_slows", "_width")

    def __init__(self, span: float) -> None:
        self._width = span / _WINDOW_BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket index, calls, failures, slow]
        self._calls = 0
        self._failures = 0
        self._slows = 0

    def record(self, now: float, *, failed: bool, slow: bool = False) -> tuple[int, int, int]:
        """Add one call at clock time `now`; return the window's (calls, failures, slow)."""
        index = self._evict(now)
        if self._buckets and self._buckets[-1][0] == index:
            bucket = self._buckets[-1]
        else:
            bucket = [index, 0, 0, 0]
            self._buckets.append(bucket)
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow
        self._calls += 1
        self._failures += failed
        self._slows += slow
        return self._calls, self._failures, self._slows

    def totals(self, now: float) -> tuple[int, int, int]:
        """The window's (calls, failures, slow) as of clock time `now`."""
        self._evict(now)
        return self._calls, self._failures, self._slows

    def clear(self) -> None:
        self._buckets.clear()
        self._calls = 0
        self._failures = 0
        self._slows = 0

    def _evict(self, now: float) -> int:
        index = math.floor(now / self._width)
        oldest_kept = index - _WINDOW_BUCKETS + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, calls, failures, slows = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures
            self._slows -= slows
        return index


def error_matches(error_filter: ErrorFilter, error: BaseException) -> bool:
    """Whether `error` is one of the filter's types, or passes its predicate."""
    if isinstance(error_filter, type | tuple):
        return isinstance(error, error_filter)
    return bool(error_filter(error))


def is_error_filter(value: object) -> bool:
    """Whether `value` is an exception type, a tuple of them, or a callable."""
    if isinstance(value, type):
        return issubclass(value, BaseException)
    if isinstance(value, tuple):
        return all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    return callable(value)






def _invalid(field: str, value: object, allowed: str) -> ConfigurationError:
    return ConfigurationError(f"Breaker: {field}={value!r} is invalid; {allowed}")
