"""The tool-proxy actor and the tools' shared state: calls made safe to retry, and contained.

`ToolState` holds each tool's circuit breaker, bulkhead and counts. The
`ToolProxy` actor owns the idempotency ledger and the table of calls in flight:
its `receive` only makes the decisions that must be serialized (join a
duplicate in flight, or lead a new call) and runs each call as a task it owns,
so calls run concurrently and the proxy is never a serial bottleneck. Callers
use the `Tools` facade (`ctx.tools` / `system.tools`).

The ledger decides first: a stored result or permanent failure is replayed
before the breaker is asked. A call whose outcome is unknown (cut off by its
time limit, its connection lost after sending, or found in flight after a
crash) is never run again blindly unless the tool is idempotent: its `verify`
hook settles it, or it ends in `ToolOutcomeUnknown` with the key left in
flight; so does a call whose service still processes an earlier request with
its key when the retries run out (`IdempotencyKeyInUse`). An attempt that ignores
its cancellation is abandoned a grace period later: its callers get the timeout
and its key, left in flight, no longer counts as running here. A result is
checked against the tool's return annotation before it is recorded and returned
as recorded, so a replay returns the same; a result that cannot be recorded (or
a tool's own `ToolResultUnrecordable`) finalizes the key as `unrecordable`.

A call recorded as a span (one made inside a pipeline run, see `Tools`) brings its
open `tool_call` span along: the proxy sets how the call was answered
(`tool.outcome`) and records each execution as a `tool_attempt` span inside it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import msgspec

from roost._logging import get_logger
from roost.actors.actor import Actor, Message
from roost.errors import (
    ActorStopped,
    IdempotencyConflict,
    IdempotencyKeyInUse,
    PermanentToolError,
    ToolBusy,
    ToolFallbackFailed,
    ToolOutcomeUnknown,
    ToolResultUnrecordable,
    ToolStillInProgress,
    ToolTimeout,
    ToolUnavailable,
)
from roost.mailbox.envelope import current_envelope
from roost.tools.breaker import BreakerState, BreakerTransition, CircuitBreaker
from roost.tools.bulkhead import Bulkhead
from roost.tools.retry import Jitter, Recheck, Watchdog, call_once, call_with_retry, stray_exit
from roost.tools.spec import (
    DEFAULT_TIMEOUT,
    Done,
    NotDone,
    ResultMisfit,
    ToolRegistry,
    ToolSpec,
    Verified,
    type_name,
)
from roost.trace import call_trace, handling
from roost.tracing.spans import SpanKind
from roost.tracing.tracer import OpenSpan

if TYPE_CHECKING:
    from roost.storage.ledger import Ledger, LedgerEntry

_log = get_logger("roost")


class RunningKeys(Message, frozen=True):
    """Ask the proxy which calls (of `tool`, or of every tool) it is running now (internal:
    `Tools` asks before it lists or settles unknown outcomes); the answer is a frozenset of
    (tool, key) pairs."""

    tool: str | None = None


class Call(Message, frozen=True, gc=False):
    """Run one side-effecting tool call (internal: sent by `Tools.call`).

    `span` is the caller's open `tool_call` span when the call is recorded, else None.
    """

    spec: Any
    arguments: dict[str, Any]
    key: str
    fingerprint: str
    span: Any = None


class ToolStatistics(msgspec.Struct, kw_only=True):
    """Counts kept by the proxy, for metrics and run summaries."""

    calls: int = 0
    dedup_hits: int = 0
    joined: int = 0
    retries: int = 0
    breaker_trips: int = 0
    rejected: int = 0
    fallbacks: int = 0
    failures: int = 0


class _InFlight:
    """A call in flight, and the callers waiting for its outcome."""

    __slots__ = ("call", "callers", "waiters")

    def __init__(self, call: Call, reply: asyncio.Future[Any] | None) -> None:
        self.call = call
        self.callers = 1  # the leader and every joiner, asks and tells alike
        self.waiters = [] if reply is None else [reply]

    def settle(self, result: Any, error: BaseException | None) -> None:
        """Give the call's outcome to every caller still waiting for it."""
        for waiter in self.waiters:
            if waiter.done():
                continue  # its ask timed out or was cancelled
            if error is None:
                waiter.set_result(result)
            else:
                waiter.set_exception(error)


class ToolState:
    """What the system knows about its tools: the registry (and so each tool's result
    decoder), breakers, bulkheads, the watchdog that times their attempts, and counts.

    Shared by the proxy actor and the callers' side (`Tools`), and kept across
    proxy restarts: a dependency does not heal because the proxy restarted.
    """

    def __init__(self, clock: Callable[[], float], registry: ToolRegistry,
                 rand: Callable[[], float] = random.random) -> None:
        self.clock = clock
        self.registry = registry
        self.jitter = Jitter(rand)  # retry backoff
        self.stats = ToolStatistics()
        self.watchdog = Watchdog()  # times every attempt of every tool
        self.breakers: dict[str, CircuitBreaker] = {}
        self._bulkheads: dict[str, Bulkhead] = {}

    def breaker(self, spec: ToolSpec) -> CircuitBreaker | None:
        """The tool's breaker (created on first use), or None if it has none."""
        if spec.breaker is None:
            return None
        breaker = self.breakers.get(spec.name)
        if breaker is None:
            breaker = self.breakers[spec.name] = CircuitBreaker(spec.name, spec.breaker,
                                                                 clock=self.clock)
            breaker.add_listener(self._breaker_changed)
        return breaker

    def _breaker_changed(self, change: BreakerTransition) -> None:
        if change.new is BreakerState.OPEN and change.reason != "forced_open":
            self.stats.breaker_trips += 1
        cause = change.cause
        _log.warning("breaker_state_changed", tool=change.tool, old=str(change.old),
                     new=str(change.new), reason=change.reason,
                     cause=None if cause is None else f"{type(cause).__name__}: {cause}")

    def bulkhead(self, spec: ToolSpec) -> Bulkhead | None:
        """The tool's concurrency limit (created on first use), or None if it has none."""
        if spec.concurrency is None:
            return None
        bulkhead = self._bulkheads.get(spec.name)
        if bulkhead is None:
            bulkhead = self._bulkheads[spec.name] = Bulkhead(
                spec.name, limit=spec.concurrency, max_waiting=spec.max_waiting)
        return bulkhead

    async def run(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                  span: OpenSpan | None = None) -> Any:
        """One call under the tool's breaker, bulkhead, timeouts and retries; the fallback
        answers while the breaker is open."""
        try:
            return await self.attempts(spec, arguments, key, span)
        except ToolUnavailable as unavailable:
            return await self.fallback(spec, arguments, key, unavailable, span)

    async def attempts(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                       span: OpenSpan | None = None) -> Any:
        """Await the tool until it succeeds or its retry policy gives up.

        Logs `tool_call_executed` with its outcome for a side-effecting tool,
        unless the breaker or the bulkhead refused the call before it ran.
        Read-only calls skip the ledger and are not logged: they are the hot path,
        and a structlog call costs microseconds.

        Args:
            span: the call's `tool_call` span, if it is recorded: each attempt is
                then recorded as a `tool_attempt` span inside it.

        Raises:
            ToolOutcomeUnknown: An attempt of a tool that is not idempotent was
                cut off with its outcome unknown, and `verify` could not tell
                whether it took effect.
        """
        policy = spec.retry_policy
        try:
            if span is not None:  # recorded: every attempt gets a span, however simple the tool
                span.attributes["tool.outcome"] = "executed"
                result = await call_with_retry(
                    lambda: spec.invoke(arguments, key=key), policy, tool=spec.name, key=key,
                    breaker=self.breaker(spec), bulkhead=self.bulkhead(spec),
                    sleep=self._retry_sleep, rng=self.jitter,
                    recheck=self._recheck_of(spec, arguments, key), watchdog=self.watchdog,
                    attempt_span=functools.partial(_attempt_span, span, spec.name))
            elif (policy.attempts == 1 and policy.deadline is None and spec.breaker is None
                    and spec.concurrency is None):
                if policy.attempt_timeout is None:  # read-only with nothing to guard: no wrapping
                    result = await spec.invoke(arguments, key=key)
                else:
                    result = await call_once(
                        lambda: spec.invoke(arguments, key=key), policy.attempt_timeout,
                        tool=spec.name, watchdog=self.watchdog,
                        recheck=self._recheck_of(spec, arguments, key))
            else:
                result = await call_with_retry(
                    lambda: spec.invoke(arguments, key=key), policy, tool=spec.name, key=key,
                    breaker=self.breaker(spec), bulkhead=self.bulkhead(spec),
                    sleep=self._retry_sleep, rng=self.jitter,
                    recheck=self._recheck_of(spec, arguments, key), watchdog=self.watchdog)
        except (ToolUnavailable, ToolBusy):
            raise
        except Exception as error:
            if not spec.read_only:
                _log.info("tool_call_executed", tool=spec.name, key=key, outcome="failed",
                          error=f"{type(error).__name__}: {error}")
            raise
        # From a read-only tool run without a time limit (limited attempts fail with it as a
        # RuntimeError of their own, see Watchdog.run), or a real cancellation.
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise
            raise stray_exit(spec.name, cancelled) from cancelled
        except GeneratorExit as escaped:
            raise stray_exit(spec.name, escaped) from escaped
        if not spec.read_only:
            _log.info("tool_call_executed", tool=spec.name, key=key, outcome="completed")
        return result

    async def _retry_sleep(self, delay: float) -> None:
        self.stats.retries += 1
        await anyio.sleep(delay)

    def _recheck_of(self, spec: ToolSpec, arguments: dict[str, Any],
                    key: str | None) -> Recheck[Any] | None:
        """What settles an attempt of this call cut off with its outcome unknown: nothing
        for tools that are safe to repeat (idempotent or read-only), else `recheck`."""
        if spec.idempotent or spec.read_only:
            return None
        return functools.partial(self.recheck, spec, arguments, key)

    async def recheck(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                      error: Exception) -> tuple[Any] | None:
        """Whether an attempt cut off with its outcome unknown (by `error`) took effect.

        Returns:
            `(result,)` when `verify` finds it done; None when it finds it not
            done, so that it may be tried again.

        Raises:
            ToolOutcomeUnknown: The tool has no verify hook, or the hook could
                not tell.
        """
        verdict = await self.verify(spec, arguments, key, error)
        if isinstance(verdict, Done):
            _log.warning("tool_call_verified_done", tool=spec.name, key=key)
            return (verdict.result,)
        _log.warning("tool_call_verified_not_done", tool=spec.name, key=key)
        return None

    async def verify(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                     attempt_error: Exception | None = None, *, left_here: bool = False,
                     ) -> Verified:
        """The tool's verify verdict on the call keyed `key`, within `spec.verify_timeout`.

        Args:
            attempt_error: What the attempt was cut off by; None for a key found
                in flight.
            left_here: The key was found in flight, left by this process.

        Raises:
            ToolOutcomeUnknown: The tool has no verify hook, or the hook raised,
                ran past its time limit, or returned neither Done nor NotDone
                (that failure is the error's cause).
        """
        failure: Exception | None = None
        if spec.verify is not None:
            verdict: object = None
            try:
                with anyio.move_on_after(spec.verify_timeout) as scope:
                    verdict = await spec.verify(key or "", arguments)
            except Exception as error:
                failure = error
            else:
                if isinstance(verdict, Done | NotDone):
                    return verdict
                if scope.cancelled_caught:
                    failure = ToolTimeout(spec.name, spec.verify_timeout, "verify")
                else:
                    failure = TypeError(
                        f"tool {spec.name!r}: verify returned {verdict!r}; return "
                        "roost.Done(result) or roost.NotDone()")
        unknown = ToolOutcomeUnknown(spec.name, key or "", attempt_error, failure,
                                     left_here=left_here)
        _log.error("tool_outcome_unknown", tool=spec.name, key=key,
                   error=None if unknown.cause is None else _describe(unknown.cause))
        raise unknown from unknown.cause

    async def fallback(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                       unavailable: ToolUnavailable, span: OpenSpan | None = None,
                       timeout: float | None = None) -> Any:
        """The fallback's result while the breaker is open, else `unavailable` is raised.

        The fallback runs within `timeout` (the call's), else the tool's attempt limit:
        a hanging fallback must not hold its caller for ever.

        Raises:
            ToolUnavailable: The tool has no fallback.
            ToolFallbackFailed: The fallback raised or timed out (the error is the
                `__cause__`; a timeout is a `ToolTimeout`).
        """
        if span is not None:
            span.attributes["tool.outcome"] = "unavailable" if spec.fallback is None else "fallback"
            span.event("breaker_refused", retry_in=round(unavailable.retry_in, 3))
        if spec.fallback is None:
            self.stats.rejected += 1
            raise unavailable
        self.stats.fallbacks += 1
        _log.info("tool_fallback_used", tool=spec.name, key=key)
        limit = timeout if timeout is not None else (
            spec.retry_policy.attempt_timeout or DEFAULT_TIMEOUT)
        try:
            try:
                async with asyncio.timeout(limit):
                    return await spec.fallback(**arguments)
            except TimeoutError as timed_out:
                raise ToolTimeout(spec.name, limit, "fallback") from timed_out
        except Exception as error:
            _log.warning("tool_fallback_failed", tool=spec.name, key=key,
                         error=f"{type(error).__name__}: {error}")
            raise ToolFallbackFailed(unavailable, error) from error


class ToolProxy(Actor):
    """Runs side-effecting tool calls once per key: the ledger, in-flight joins, recovery."""

    #: Handling a `Call` only starts it: the caller's `tool_call` span covers the call, so
    #: the proxy records no `message` span of its own.
    message_spans = False

    def __init__(self, state: ToolState, ledger: Ledger | None) -> None:
        self.state = state
        self.ledger = ledger
        self._in_flight: dict[tuple[str, str], _InFlight] = {}
        self._tasks: dict[asyncio.Task[None], _InFlight] = {}  # each call's task, and its call
        self._loop: asyncio.AbstractEventLoop
        self._context: contextvars.Context

    async def on_start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # What each call's task starts from: the system's context, outside any actor.
        self._context = self.ctx.system.engine.base_context()
        self._context.run(handling.set, None)
        self.state.watchdog.on_stuck = self._abandon

    async def receive(self, message: Any) -> Any:
        match message:
            case Call():
                self._start(message)
                return None
            case RunningKeys(tool=tool):
                return frozenset(call for call in self._in_flight
                                 if tool is None or call[0] == tool)
        # Not a failure of the proxy: crashing it would cancel every call in flight.
        refused = TypeError(f"{self.ctx.path}: the tool proxy takes Call messages, got "
                            f"{type(message).__name__}; use ctx.tools.call(name, **arguments)")
        self.ctx.refuse(message, refused)
        return None

    async def on_stop(self) -> None:
        if self.state.watchdog.on_stuck == self._abandon:
            self.state.watchdog.on_stuck = None
        for task in self._tasks:
            task.cancel()
        # Callers hear at once, however long a tool takes to clean up after the cancellation.
        for pending in self._in_flight.values():
            pending.settle(None, ActorStopped(self.ctx.path, pending.call, "stopped"))
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.shutdown_timeout)

    def _start(self, call: Call) -> None:
        """Join a call in flight with the same key, or lead a new one in a task this actor owns.

        Both decisions happen here, in `receive`, so they are serialized.
        """
        reply = self.ctx.take_reply()
        spec: ToolSpec = call.spec
        self.state.stats.calls += 1
        pending = self._in_flight.get((spec.name, call.key))
        if pending is not None:
            self._join(call, pending, reply)
            return
        leading = self._in_flight[(spec.name, call.key)] = _InFlight(call, reply)
        # The call runs in the caller's trace, not as this actor: its logs, messages and
        # nested calls belong to the caller's trace and run.
        caller = current_envelope()
        trace = None if caller is None else caller.trace
        span: OpenSpan | None = call.span
        if trace is not None and span is not None:  # what the tool does happens inside its span
            trace = msgspec.structs.replace(trace, span_id=span.span_id)
        context = self._context.copy()
        context.run(call_trace.set, trace)
        task = self._loop.create_task(self._lead(call, leading), context=context)
        self._tasks[task] = leading  # _lead takes it out as it ends: no done-callback per call

    def _join(self, call: Call, pending: _InFlight, reply: asyncio.Future[Any] | None) -> None:
        """Wait with the call in flight under the same key, unless the arguments differ."""
        if pending.call.fingerprint != call.fingerprint:
            self.state.stats.failures += 1
            if reply is not None:
                reply.set_exception(IdempotencyConflict(call.spec.name, call.key))
            return
        self.state.stats.joined += 1
        _log.info("tool_call_joined", tool=call.spec.name, key=call.key)
        span: OpenSpan | None = call.span
        if span is not None:
            leader: OpenSpan | None = pending.call.span
            span.attributes["tool.outcome"] = "joined"
            if leader is not None:
                span.attributes["tool.joined_span"] = leader.span_id
        pending.callers += 1
        if reply is not None:
            pending.waiters.append(reply)

    async def _lead(self, call: Call, leading: _InFlight) -> None:
        """Run the call, then answer every caller waiting for it (the first and any joiners)."""
        spec: ToolSpec = call.spec
        try:
            if self.ledger is None:  # no store: joins only, nothing is remembered
                result = await self.state.run(spec, call.arguments, call.key, call.span)
            else:
                result = await self._settle(spec, call.arguments, call.key, call.fingerprint,
                                            call.span)
        except Exception as error:
            self.state.stats.failures += leading.callers
            leading.settle(None, error)
        except BaseException:  # cancelled as the proxy stops, or a tool raised past Exception
            self.state.stats.failures += leading.callers
            leading.settle(None, ActorStopped(self.ctx.path, call, "stopped"))
            raise
        else:
            leading.settle(result, None)
        finally:
            # An abandoned call (see _abandon) has left both tables already.
            if self._tasks.pop(asyncio.current_task(), None) is not None:  # type: ignore[arg-type]
                del self._in_flight[(spec.name, call.key)]

    def _abandon(self, task: asyncio.Task[Any], tool: str, limit: float) -> None:
        """Give up on a call whose attempt ignored its cancellation (see `Watchdog.on_stuck`).

        Its callers get the timeout, with the outcome unknown unless the tool is
        idempotent; its key no longer counts as running here, while the ledger keeps it
        in flight, so later calls settle it as after a crash. Python cannot stop the
        task: it is left running, logged and counted, and writes nothing to the ledger.
        """
        leading = self._tasks.pop(task, None)
        if leading is None:  # not a call of this proxy: a read-only one, in its caller's task
            _log.error("tool_attempt_ignores_cancellation", tool=tool,
                       detail=f"still running {Watchdog.GRACE:g}s after its cancellation")
            return
        call = leading.call
        spec: ToolSpec = call.spec
        del self._in_flight[(spec.name, call.key)]
        cut_off = ToolTimeout(spec.name, limit, "attempt (abandoned: it ignored its cancellation)")
        error: Exception = cut_off
        if not spec.idempotent:
            unasked = None if spec.verify is None else RuntimeError(
                "not asked while the abandoned attempt may still take effect; a later call "
                "with the key asks it")
            error = ToolOutcomeUnknown(spec.name, call.key, cut_off, unasked)
        span: OpenSpan | None = call.span
        if span is not None:
            span.event("abandoned", limit=limit)
        self.state.stats.failures += leading.callers
        leading.settle(None, error)
        leading.waiters.clear()  # answered: the task's own end, if it comes, answers no one
        leading.callers = 0
        self.ctx.system.engine.abandon(
            task, "tool_call_abandoned", str(self.ctx.path),
            f"tool {spec.name!r}: call with key {call.key!r} ignored its cancellation for "
            f"{Watchdog.GRACE:g}s after its {limit:g}s attempt limit")

    async def _settle(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                      fp: str, span: OpenSpan | None) -> Any:
        """Run the call once per key, as the ledger decides."""
        ledger = self.ledger
        assert ledger is not None
        claim = await ledger.claim(spec.name, key, fp)
        entry = claim.entry
        if claim.claimed:
            return await self._run_recorded(spec, arguments, key, entry, span)
        if span is not None and entry.status in ("completed", "failed", "unrecordable"):
            span.attributes.update({"tool.outcome": "replayed", "tool.replayed": entry.status})
        if entry.status == "completed":
            self.state.stats.dedup_hits += 1
            _log.info("tool_call_replayed", tool=spec.name, key=key, status="completed")
            decoder = self.state.registry.results(spec.name)
            try:
                return decoder.decode(entry.result or b"\xc0")
            except msgspec.DecodeError as error:  # recorded under another annotation, or by hand
                raise ToolResultUnrecordable(
                    spec.name, key, f"its recorded result does not decode as "
                    f"{type_name(decoder.type)}: {error}", error) from error
        if entry.status == "failed":
            self.state.stats.dedup_hits += 1
            _log.info("tool_call_replayed", tool=spec.name, key=key, status="failed")
            raise PermanentToolError(
                f"tool {spec.name!r}: call with key {key!r} failed before and is not retried: "
                f"{entry.error_type}: {entry.error}",
                code=entry.error_code, original_type=entry.error_type,
            )
        if entry.status == "unrecordable":
            _log.info("tool_call_replayed", tool=spec.name, key=key, status="unrecordable")
            raise ToolResultUnrecordable(spec.name, key, entry.error or "unknown")
        # In flight, but not in this process's table: an earlier process died mid-call, or
        # an earlier call here was cut off with its outcome unknown.
        return await self._recover(spec, arguments, key, entry, span, left_here=claim.ours)

    async def _recover(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                       entry: LedgerEntry, span: OpenSpan | None, *, left_here: bool) -> Any:
        """Settle a key left in flight: by `verify`, by running an idempotent tool again, or
        with ToolOutcomeUnknown (the key stays in flight)."""
        ledger = self.ledger
        assert ledger is not None
        if span is not None:
            span.event("found_in_flight", left_here=left_here)
        if spec.verify is not None or not spec.idempotent:
            verdict = await self.state.verify(spec, arguments, key, left_here=left_here)
            if isinstance(verdict, Done):
                _log.warning("tool_call_verified_done", tool=spec.name, key=key)
                if span is not None:
                    span.attributes["tool.outcome"] = "verified"
                return await self._record(spec, key, entry, verdict.result)
            _log.warning("tool_call_verified_not_done", tool=spec.name, key=key)
        mine = await ledger.take_over(entry)
        if mine is None:  # settled meanwhile (by a person, say): as the ledger now says
            return await self._settle(spec, arguments, key, entry.fingerprint, span)
        return await self._run_recorded(spec, arguments, key, mine, span)

    async def _run_recorded(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                            entry: LedgerEntry, span: OpenSpan | None) -> Any:
        ledger = self.ledger
        assert ledger is not None
        try:
            result = await self.state.attempts(spec, arguments, key, span)
        except Exception as error:
            if asyncio.current_task() not in self._tasks:
                raise  # abandoned (see _abandon): the key is no longer this call's to settle
            return await self._failed(spec, arguments, key, entry, span, error)
        if asyncio.current_task() not in self._tasks:
            return result  # abandoned: as above
        return await self._record(spec, key, entry, result)

    async def _failed(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                      entry: LedgerEntry, span: OpenSpan | None, error: Exception) -> Any:
        """Settle the key of a call that failed with `error`, then raise it (or what stands
        for it); an open breaker's refusal is answered by the fallback instead."""
        ledger = self.ledger
        assert ledger is not None
        if isinstance(error, ToolUnavailable):
            await ledger.release(entry)
            return await self.state.fallback(spec, arguments, key, error, span)
        if isinstance(error, ToolBusy):
            await ledger.release(entry)  # refused before it ran: the key stays usable
        elif isinstance(error, ToolOutcomeUnknown):
            pass  # it may have taken effect: the key stays in flight, never run blindly
        elif isinstance(error, IdempotencyKeyInUse):
            # The service still works on an earlier request with this key, which may yet
            # take effect: the key stays in flight, as for any unknown outcome.
            _log.error("tool_outcome_unknown", tool=spec.name, key=key, error=_describe(error))
            raise ToolStillInProgress(spec.name, key, error) from error
        elif isinstance(error, ToolResultUnrecordable):  # the tool's word: it took effect
            await self._mark_unrecordable(spec, key, entry, error.error)
        elif spec.retry_policy.retries(error):
            await ledger.release(entry)  # transient: a later call may try again
        else:
            await ledger.fail(entry, error)  # permanent: replayed to later calls
        raise error

    async def _record(self, spec: ToolSpec, key: str, entry: LedgerEntry, result: Any) -> Any:
        """Persist the result before the caller gets it, and return it as recorded.

        The recorded form is the result decoded as the tool's return annotation, what
        every replay returns too. The tool has run by now, so a result that does not
        encode or fit the annotation, or a write that fails, finalizes the key as
        unrecordable instead of inviting a retry.
        """
        ledger = self.ledger
        assert ledger is not None
        try:
            encoded, recorded = self.state.registry.recorded(spec.name, result)
        except ResultMisfit as misfit:
            reason = (_describe(misfit.cause) if misfit.annotation is None else
                      f"the result does not fit the return annotation "
                      f"{type_name(misfit.annotation)}: {misfit.cause}")
            await self._unrecordable(spec, key, entry, reason, misfit.cause)
        try:
            await ledger.complete(entry, encoded)
        except Exception as error:  # StoreError, most likely: the disk, the map, the writer
            await self._unrecordable(spec, key, entry, _describe(error), error)
        return recorded

    async def _unrecordable(self, spec: ToolSpec, key: str, entry: LedgerEntry, reason: str,
                            error: Exception) -> NoReturn:
        """Mark the key done without a result, and raise ToolResultUnrecordable for `error`."""
        await self._mark_unrecordable(spec, key, entry, reason)
        raise ToolResultUnrecordable(spec.name, key, reason, error) from error

    async def _mark_unrecordable(self, spec: ToolSpec, key: str, entry: LedgerEntry,
                                 reason: str) -> None:
        """Finalize the key as done without a result, for `reason`."""
        ledger = self.ledger
        assert ledger is not None
        _log.error("tool_result_unrecordable", tool=spec.name, key=key, error=reason)
        try:
            await ledger.unrecordable(entry, reason)
        except Exception as store_error:
            # The key stays in flight: later calls find its outcome unknown, so the tool
            # still never runs again on its own.
            _log.error("tool_result_unrecordable_not_saved", tool=spec.name, key=key,
                       error=_describe(store_error))


def _attempt_span(call: OpenSpan, tool: str, number: int) -> OpenSpan:
    """The `tool_attempt` span of attempt `number` of a recorded call."""
    return call.child(f"{tool} attempt {number}", SpanKind.TOOL_ATTEMPT, tool=tool, attempt=number)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"
