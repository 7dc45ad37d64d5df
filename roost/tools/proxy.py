"""The tool-proxy actor and the tools' shared state: calls made safe to retry, and contained.

`ToolState` holds each tool's circuit breaker, bulkhead and counts. The
`ToolProxy` actor owns the idempotency ledger and the table of calls in flight:
its `receive` only makes the decisions that must be serialized (join a
duplicate in flight, or lead a new call) and runs each call as a task it owns,
so calls run concurrently and the proxy is never a serial bottleneck. Callers
use the `Tools` facade (`ctx.tools` / `system.tools`).
"""

from __future__ import annotations

import asyncio
import contextvars
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import structlog

from roost.actors.actor import Actor, Message
from roost.errors import (
    ActorStopped,
    IdempotencyConflict,
    PermanentToolError,
    ToolBusy,
    ToolOutcomeUnknown,
    ToolResultUnrecordable,
    ToolUnavailable,
)
from roost.mailbox.envelope import current_envelope
from roost.tools.breaker import BreakerState, CircuitBreaker
from roost.tools.bulkhead import Bulkhead
from roost.tools.retry import call_with_retry
from roost.tools.spec import Done, ToolSpec
from roost.trace import call_trace, handling

if TYPE_CHECKING:
    from roost.storage.ledger import Ledger, LedgerEntry

_log = structlog.get_logger("roost")
_ENCODER = msgspec.msgpack.Encoder()


class Call(Message, frozen=True, gc=False):
    """Run one side-effecting tool call (internal: sent by `Tools.call`)."""

    spec: Any
    arguments: dict[str, Any]
    key: str
    fingerprint: str


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
    """What the system knows about its tools: breakers, bulkheads and counts.

    Shared by the proxy actor and the callers' side (`Tools`), and kept across
    proxy restarts: a dependency does not heal because the proxy restarted.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.stats = ToolStatistics()
        self.breakers: dict[str, CircuitBreaker] = {}
        self._bulkheads: dict[str, Bulkhead] = {}
        self._decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {}

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

    def _breaker_changed(self, tool: str, old: BreakerState, new: BreakerState) -> None:
        if new is BreakerState.OPEN:
            self.stats.breaker_trips += 1
        _log.warning("breaker_state_changed", tool=tool, old=str(old), new=str(new))

    def bulkhead(self, spec: ToolSpec) -> Bulkhead | None:
        """The tool's concurrency limit (created on first use), or None if it has none."""
        if spec.concurrency is None:
            return None
        bulkhead = self._bulkheads.get(spec.name)
        if bulkhead is None:
            bulkhead = self._bulkheads[spec.name] = Bulkhead(
                spec.name, limit=spec.concurrency, max_waiting=spec.max_waiting)
        return bulkhead

    def decoder(self, spec: ToolSpec) -> msgspec.msgpack.Decoder[Any]:
        """Decodes stored results into the tool's declared return type (built once per tool)."""
        decoder = self._decoders.get(spec.name)
        if decoder is None:
            try:
                returns = typing.get_type_hints(spec.fn).get("return", Any)
            except Exception:
                returns = Any
            decoder = self._decoders[spec.name] = msgspec.msgpack.Decoder(returns)
        return decoder

    async def run(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None) -> Any:
        """One call under the tool's breaker, bulkhead, timeouts and retries; the fallback
        answers while the breaker is open."""
        try:
            return await self.attempts(spec, arguments, key)
        except ToolUnavailable as unavailable:
            return await self.fallback(spec, arguments, key, unavailable)

    async def attempts(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None) -> Any:
        """Await the tool until it succeeds or its retry policy gives up."""
        policy = spec.retry_policy
        if (policy.attempts == 1 and policy.attempt_timeout is None and policy.deadline is None
                and spec.breaker is None and spec.concurrency is None):
            return await spec.invoke(arguments, key=key)  # nothing to guard: no wrapping
        return await call_with_retry(
            lambda: spec.invoke(arguments, key=key), policy, tool=spec.name, key=key,
            breaker=self.breaker(spec), bulkhead=self.bulkhead(spec), sleep=self._retry_sleep)

    async def _retry_sleep(self, delay: float) -> None:
        self.stats.retries += 1
        await anyio.sleep(delay)

    async def fallback(self, spec: ToolSpec, arguments: dict[str, Any], key: str | None,
                       unavailable: ToolUnavailable) -> Any:
        """The fallback's result while the breaker is open, else `unavailable` is raised."""
        if spec.fallback is None:
            self.stats.rejected += 1
            raise unavailable
        self.stats.fallbacks += 1
        _log.info("tool_fallback_used", tool=spec.name, key=key)
        return await spec.fallback(**arguments)


class ToolProxy(Actor):
    """Runs side-effecting tool calls once per key: the ledger, in-flight joins, recovery."""

    def __init__(self, state: ToolState, ledger: Ledger | None) -> None:
        self.state = state
        self.ledger = ledger
        self._in_flight: dict[tuple[str, str], _InFlight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop
        self._context: contextvars.Context

    async def on_start(self) -> None:
        self._loop = asyncio.get_running_loop()
        # What each call's task starts from: the system's context, outside any actor.
        self._context = self.ctx.system.engine.base_context()
        self._context.run(handling.set, None)

    async def receive(self, message: Any) -> Any:
        match message:
            case Call():
                self._start(message)
                return None
        # Not a failure of the proxy: crashing it would cancel every call in flight.
        refused = TypeError(f"{self.ctx.path}: the tool proxy takes Call messages, got "
                            f"{type(message).__name__}; use ctx.tools.call(name, **arguments)")
        reply = self.ctx.take_reply()
        if reply is not None:
            reply.set_exception(refused)
        else:
            sender = self.ctx.sender
            self.ctx.system.dead_letters.record(
                "unhandled", self.ctx.path, message, None if sender is None else sender.path,
                refused)
        return None

    async def on_stop(self) -> None:
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
        context = self._context.copy()
        context.run(call_trace.set, None if caller is None else caller.trace)
        task = self._loop.create_task(self._lead(call, leading), context=context)
        self._tasks.add(task)  # _lead takes it out as it ends: no done-callback per call

    def _join(self, call: Call, pending: _InFlight, reply: asyncio.Future[Any] | None) -> None:
        """Wait with the call in flight under the same key, unless the arguments differ."""
        if pending.call.fingerprint != call.fingerprint:
            self.state.stats.failures += 1
            if reply is not None:
                reply.set_exception(IdempotencyConflict(call.spec.name, call.key))
            return
        self.state.stats.joined += 1
        pending.callers += 1
        if reply is not None:
            pending.waiters.append(reply)

    async def _lead(self, call: Call, leading: _InFlight) -> None:
        """Run the call, then answer every caller waiting for it (the first and any joiners)."""
        spec: ToolSpec = call.spec
        try:
            if self.ledger is None:  # no store: joins only, nothing is remembered
                result = await self.state.run(spec, call.arguments, call.key)
            else:
                result = await self._settle(spec, call.arguments, call.key, call.fingerprint)
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
            del self._in_flight[(spec.name, call.key)]
            self._tasks.discard(asyncio.current_task())

    async def _settle(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                      fp: str) -> Any:
        """Run the call once per key, as the ledger decides."""
        ledger = self.ledger
        assert ledger is not None
        claim = await ledger.claim(spec.name, key, fp)
        entry = claim.entry
        if claim.claimed:
            return await self._run_recorded(spec, arguments, key, entry)
        if entry.status == "completed":
            self.state.stats.dedup_hits += 1
            _log.info("tool_call_deduplicated", tool=spec.name, key=key)
            return self.state.decoder(spec).decode(entry.result or b"\xc0")
        if entry.status == "failed":
            self.state.stats.dedup_hits += 1
            raise PermanentToolError(
                f"tool {spec.name!r}: call with key {key!r} failed before and is not retried: "
                f"{entry.error_type}: {entry.error}"
            )
        if entry.status == "unrecordable":
            raise ToolResultUnrecordable(spec.name, key, entry.error or "unknown")
        # In flight, but not in this process's table: an earlier process died mid-call.
        return await self._recover(spec, arguments, key, entry)

    async def _recover(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                       entry: LedgerEntry) -> Any:
        ledger = self.ledger
        assert ledger is not None
        if spec.verify is not None:
            verdict = await spec.verify(key, arguments)
            if isinstance(verdict, Done):
                _log.warning("tool_call_verified_done", tool=spec.name, key=key)
                await self._record(spec, key, entry, verdict.result)
                return verdict.result
            _log.warning("tool_call_verified_not_done", tool=spec.name, key=key)
        elif not spec.idempotent:
            _log.error("tool_outcome_unknown", tool=spec.name, key=key)
            raise ToolOutcomeUnknown(spec.name, key)
        return await self._run_recorded(spec, arguments, key, await ledger.take_over(entry))

    async def _run_recorded(self, spec: ToolSpec, arguments: dict[str, Any], key: str,
                            entry: LedgerEntry) -> Any:
        ledger = self.ledger
        assert ledger is not None
        try:
            result = await self.state.attempts(spec, arguments, key)
        except ToolUnavailable as unavailable:
            await ledger.release(entry)
            return await self.state.fallback(spec, arguments, key, unavailable)
        except ToolBusy:
            await ledger.release(entry)  # refused before it ran: the key stays usable
            raise
        except Exception as error:
            if spec.retry_policy.retries(error):
                await ledger.release(entry)  # transient: a later call may try again
            else:
                await ledger.fail(entry, error)  # permanent: replayed to later calls
            raise
        await self._record(spec, key, entry, result)
        return result

    async def _record(self, spec: ToolSpec, key: str, entry: LedgerEntry, result: Any) -> None:
        """Persist the result before the caller gets it; an unencodable one finalizes the key."""
        ledger = self.ledger
        assert ledger is not None
        try:
            encoded = _ENCODER.encode(result)
        except (TypeError, msgspec.EncodeError) as error:
            await ledger.unrecordable(entry, f"{type(error).__name__}: {error}")
            raise ToolResultUnrecordable(spec.name, key, str(error)) from error
        await ledger.complete(entry, encoded)
