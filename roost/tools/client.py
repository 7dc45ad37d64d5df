"""`Tools`: how actors and applications register and call tools (`ctx.tools`, `system.tools`).

A call is checked where it is made, before any hop and before any key is
claimed: an unknown tool, an invalid key, or arguments that do not fit (or
cannot be hashed into a fingerprint) raise at once, and an open circuit breaker
is answered at once (the tool's fallback or `ToolUnavailable`). Read-only
tools then run in the caller's task under the shared breaker and bulkhead:
they need no ledger and no join, so a hop would only add latency.
Side-effecting calls go to the tool-proxy actor, which runs each key at most
once. A call without `key=` gets one from its unit of work (see
`roost.tools.keys`): the pipeline step or the message being handled.

A call that belongs to a pipeline run is recorded as a `tool_call` span, a child of
the caller's span (the message being handled, or the step's attempt), with its
arguments and result, its outcome (`executed`, `joined`, `replayed`, `verified`,
`fallback`, `unavailable`, `busy`), the breaker's state, and a `tool_attempt` span
per execution. Calls outside runs are not recorded: read-only calls are the hot path,
and a span costs more than the call itself. While no run is recorded at all, telling
so costs one check.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from roost._logging import get_logger
from roost._validate import is_number
from roost.errors import (
    AskTimeout,
    ConfigurationError,
    PermanentToolError,
    SystemNotRunning,
    ToolBusy,
    ToolCallNotFound,
    ToolCallOptionInvalid,
    ToolCallRunning,
    ToolCallTimeout,
    ToolGated,
    ToolSettlementInvalid,
    ToolUnavailable,
)
from roost.mailbox.envelope import current_envelope
from roost.tools.breaker import BreakerState, BreakerView
from roost.tools.keys import (
    check_key,
    derive_key,
    fingerprint,
    fresh_key,
    message_unit,
    step_unit,
)
from roost.tools.proxy import Call, RunningKeys, ToolState, ToolStatistics
from roost.tools.spec import ResultMisfit, ToolRegistry, ToolSpec, gate_passed, type_name
from roost.trace import TraceContext, call_trace, handling
from roost.tracing.spans import SpanKind
from roost.tracing.tracer import OpenSpan, Tracer, usage_of

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef
    from roost.storage.ledger import Ledger

#: Extra time a caller waits by default past the longest a tool's own limits let a call
#: run, so that the proxy's own answer (e.g. a `ToolTimeout`) arrives first.
DEADLINE_MARGIN = 5.0

_log = get_logger("roost")


class UnknownCall(msgspec.Struct, frozen=True):
    """A tool call whose outcome is unknown (`Tools.unknown_calls`), for a person to settle.

    Attributes:
        tool: the tool called.
        key: the call's idempotency key.
        claimed_at: when the call was claimed, in seconds since the epoch.
        left_here: claimed by this process (cut off here), not by one that died.
    """

    tool: str
    key: str
    claimed_at: float
    left_here: bool = False


class Tools:
    """The system's tools: register them, call them, inspect their breakers and counts.

    Args:
        clock: monotonic seconds, for breakers.
        tracer: records the calls made inside pipeline runs (None: nothing is recorded).
        rand: uniform [0, 1) numbers for retry backoff jitter.
    """

    def __init__(self, clock: Callable[[], float], tracer: Tracer | None = None,
                 rand: Callable[[], float] = random.random) -> None:
        self.registry = ToolRegistry()
        self.tracer = tracer if tracer is not None else Tracer(recording=False)
        self.state = ToolState(clock, self.registry, rand)
        self._proxy: ActorRef | None = None
        self._ledger: Ledger | None = None

    def attach(self, proxy: ActorRef, ledger: Ledger | None) -> None:
        """Connect to the running tool-proxy actor and its ledger (done by the system at start)."""
        self._proxy = proxy
        self._ledger = ledger

    def detach(self) -> None:
        self._proxy = None
        self._ledger = None

    def register(self, tool: object) -> ToolSpec:
        """Register a `@tool` function, an `HttpTool`, or a `ToolSpec`; returns its spec.

        Raises:
            ConfigurationError: not a tool, a tool with that name exists, or a
                side-effecting tool's return annotation is one its recorded results
                cannot be decoded as (see `ToolRegistry.register`).
        """
        spec = self.registry.register(tool)
        self.state.breaker(spec)  # so that `breaker(name)` shows it before the first call
        return spec

    async def call(self, name: str, /, *, key: str | None = None,
                   timeout: float | None = None, **arguments: Any) -> Any:
        """Call tool `name` with keyword `arguments` and wait for its result.

        Side-effecting tools are called at most once per idempotency key (and
        tool). A repeated key returns the stored result (with a store; without
        one, only concurrent duplicates are joined). Without `key`, the key is
        derived from the unit of work the call belongs to and the call's number
        in it, counting the calls made without a key to side-effecting tools:

        - inside a pipeline step's worker: the run and the step (a map item and
          a step's fallback count as steps of their own), so a retried or
          resumed step gets its earlier calls' results;
        - inside any other actor: the id of the message being handled, so a
          message redelivered after a crash gets its earlier calls' results;
        - outside any actor (or between messages, e.g. in a task the actor left
          running): a fresh random key, so the call is never deduplicated;
          pass `key=` for that.

        The arguments are not part of a derived key: a unit that runs again and
        makes a call with other arguments in the same place gets
        `IdempotencyConflict`, not a second side effect.

        A side-effecting call recorded in the ledger returns its result as
        recorded, decoded as the tool's return annotation, so the first call and
        every replay return the same value (a tuple comes back as a list unless
        the annotation says tuple).

        Args:
            name: the tool's registered name.
            key: the idempotency key: a non-empty str of at most 255 bytes of
                UTF-8 (255 ASCII characters); derived when omitted. Read-only
                tools ignore it.
            timeout: how long to wait, in seconds: a positive number. Default:
                the tool's retry deadline plus a margin; without a deadline, the
                longest its own limits let it run (every attempt to its time
                limit, every backoff at its longest, verify after each attempt)
                plus a margin.
            **arguments: the tool's keyword arguments.

        Raises:
            UnknownTool: no tool is registered under `name`.
            ToolGated: the tool is guarded by a gate: call it as a pipeline step.
            ToolCallOptionInvalid: `key` or `timeout` is invalid (a
                `ToolArgumentsInvalid`).
            ToolArgumentsInvalid: the arguments do not fit the tool's signature
                or annotations, or cannot be hashed into a fingerprint.
            ToolUnavailable: the breaker is open and the tool has no fallback.
            ToolFallbackFailed: the breaker is open and the fallback raised.
            ToolBusy: the tool's concurrency limit and waiting line are full.
            IdempotencyConflict: `key` was used with other arguments.
            ToolOutcomeUnknown: the call (or an earlier one with this key) was
                cut off by a timeout, a lost connection or a crash, the tool is
                not idempotent, and its verify hook cannot tell if it took effect.
            ToolStillInProgress: the service kept answering that an earlier
                request with this key is still being processed until the retries
                ran out (a `ToolOutcomeUnknown`: the key stays in flight).
            ToolResultUnrecordable: the tool ran but its result could not be
                recorded (it does not encode, does not fit the return annotation,
                or the write failed); it is not run again for this key.
            ToolCallTimeout: a side-effecting call gave no answer within
                `timeout`; it goes on, and a call with the same key joins it.
            PermanentToolError: a permanent failure stored for this key, replayed.
            Exception: the tool's own error after its retries.

        If cancelled, a side-effecting call goes on in the proxy and its result
        is recorded; a read-only call is cancelled.
        """
        proxy = self._proxy
        if proxy is None:
            raise SystemNotRunning(f"call tool {name!r}")
        spec = self.registry.get(name)
        if spec.gate is not None and gate_passed.get() != spec.name:
            raise ToolGated(spec.name)
        if key is not None:
            key = check_key(spec.name, key)
        if timeout is not None and not (is_number(timeout) and timeout > 0):
            raise ToolCallOptionInvalid(
                spec.name, f"timeout={timeout!r} is not a valid time to wait for the call; "
                "pass a positive number of seconds, or None for the default",
                argument="timeout", expected="float", given=type(timeout).__name__)
        bound = spec.bind(arguments)
        if spec.read_only and key is not None:
            _log.info("tool_call_key_ignored", tool=spec.name, key=key,
                      reason="read-only tools skip the idempotency ledger")
        if self.tracer.runs:  # some run is being recorded: is this call part of one?
            trace = _run_trace()
            if trace is not None:
                return await self._traced(proxy, spec, bound, key, timeout, trace)
        if spec.read_only:
            refused = None if spec.breaker is None else self._refusal(spec)
            if refused is not None:
                return await self.state.fallback(spec, bound, key, refused, timeout=timeout)
            self.state.stats.calls += 1
            return await self.state.run(spec, bound, key)
        return await self._through_proxy(proxy, spec, bound, key, timeout, None)

    async def _through_proxy(self, proxy: ActorRef, spec: ToolSpec, bound: dict[str, Any],
                             key: str | None, timeout: float | None,
                             span: OpenSpan | None) -> Any:
        """A side-effecting call: refused at once by an open breaker (for a key the ledger
        does not hold), else run by the proxy, once per key."""
        fp = fingerprint(bound, tool=spec.name)
        if key is None:
            key = _derived_key(spec.name)  # numbered before any await, in the order of the calls
        if span is not None:
            span.attributes["tool.key"] = key
        refused = self._refusal(spec)
        if refused is not None and not await self._in_ledger(spec, key):
            return await self.state.fallback(spec, bound, key, refused, span, timeout)
        if timeout is None:  # as long as the tool's own limits let the call run
            longest = spec.longest_run
            assert longest is not None, "a side-effecting tool always has an attempt limit"
            timeout = longest + DEADLINE_MARGIN
        call = Call(spec, bound, key, fp, span)
        try:
            return await proxy.ask(call, timeout=timeout)
        except AskTimeout as error:
            if error.message is not call:
                raise  # the tool's own ask, passed on as its error
            raise ToolCallTimeout(spec.name, key, timeout, started=error.queued) from None

    async def _traced(self, proxy: ActorRef, spec: ToolSpec, bound: dict[str, Any],
                      key: str | None, timeout: float | None, trace: TraceContext) -> Any:
        """The call, recorded as a `tool_call` span in the caller's run (see the module)."""
        span = self.tracer.start(
            f"tool {spec.name}", SpanKind.TOOL_CALL, trace_id=trace.trace_id,
            parent_span_id=trace.span_id, run_id=trace.run_id, actor=_caller_path(), tool=spec.name)
        span.payload("tool.arguments", bound)
        if spec.breaker is not None:
            breaker = self.state.breaker(spec)
            assert breaker is not None
            span.attributes["breaker.state"] = str(breaker.state)
        try:
            if spec.read_only:
                refused = None if spec.breaker is None else self._refusal(spec)
                if refused is not None:
                    result = await self.state.fallback(spec, bound, key, refused, span, timeout)
                else:
                    self.state.stats.calls += 1
                    result = await self.state.run(spec, bound, key, span)
            else:
                result = await self._through_proxy(proxy, spec, bound, key, timeout, span)
        except BaseException as error:
            if isinstance(error, ToolBusy):
                span.attributes["tool.outcome"] = "busy"
            span.fail(error)
            raise
        else:
            span.payload("tool.result", result)
            usage = usage_of(result)
            if usage is not None:
                self.tracer.record_usage(span, usage)
            return result
        finally:
            span.end()

    def _refusal(self, spec: ToolSpec) -> ToolUnavailable | None:
        """The error an open breaker refuses a call with now, or None when the call may go on."""
        breaker = self.state.breakers.get(spec.name)
        if breaker is None or breaker.state is not BreakerState.OPEN:
            return None
        try:
            permit = breaker.acquire()
        except ToolUnavailable as unavailable:
            return unavailable
        # The cooldown ended just now: give the permit back and go on as a normal
        # call, whose first attempt takes the half-open probe.
        breaker.release(permit)
        return None

    async def _in_ledger(self, spec: ToolSpec, key: str) -> bool:
        """Whether the ledger holds `key`: then the proxy answers even while the breaker is
        open, replaying the stored result or failure (or joining or settling the call),
        since the breaker only guards a real execution."""
        ledger = self._ledger
        return ledger is not None and await ledger.get(spec.name, key) is not None

    async def unknown_calls(self, tool: str | None = None) -> list[UnknownCall]:
        """The calls (of `tool`, or of every tool) whose outcome is unknown, oldest first:
        in flight in the ledger and not running in this process (cut off by a crash, a
        timeout or a lost connection, with no verify hook to settle them).

        Raises:
            SystemNotRunning: the system is not running.
            ConfigurationError: the system has no store.
            UnknownTool: `tool` is given and not registered.
        """
        ledger, proxy = self._settling(f"list the unknown calls of tool {tool!r}")
        if tool is not None:
            self.registry.get(tool)
        entries = await ledger.in_flight(tool)
        running = await proxy.ask(RunningKeys(tool))
        return [UnknownCall(entry.tool, entry.key, entry.started_at,
                            left_here=entry.owner == ledger.owner)
                for entry in entries if (entry.tool, entry.key) not in running]

    async def settle_unknown(self, name: str, key: str, *, done: bool, result: Any = None,
                             error: BaseException | str | None = None) -> bool:
        """Settle a call whose outcome is unknown, as a person found it where the effect
        happens (Temporal's manual completion): `done=True` records `result` for the key,
        so every call with it returns that; `done=False` with `error` fails the key for good
        (a `PermanentToolError` with that message, replayed); `done=False` alone forgets
        the key, so the next call with it runs the tool.

        Returns True if it settled the call, False if the call was no longer in flight
        (settled meanwhile: by its verify hook, or a second decision).

        Raises:
            SystemNotRunning: the system is not running.
            ConfigurationError: the system has no store.
            UnknownTool: no tool is registered under `name`.
            ToolCallOptionInvalid: `key` is not a valid idempotency key.
            ToolCallNotFound: the ledger holds no call of the tool with that key.
            ToolCallRunning: the call is running in this process now.
            ToolSettlementInvalid: `result` does not fit the tool's return annotation.
        """
        ledger, proxy = self._settling(f"settle a call of tool {name!r}")
        spec = self.registry.get(name)
        key = check_key(name, key)
        if not isinstance(done, bool):
            raise ConfigurationError(f"settle_unknown: done= must be True or False, got {done!r}")
        if done and error is not None:
            raise ConfigurationError("settle_unknown: a call found done has no error; give "
                                     "result= with done=True, or error= with done=False")
        if not done and result is not None:
            raise ConfigurationError("settle_unknown: a call found not done has no result; give "
                                     "result= with done=True, or leave it out")
        if spec.read_only:
            raise ConfigurationError(f"settle_unknown: tool {name!r} is read-only: its calls "
                                     "are never recorded, so none has an unknown outcome")
        encoded = self._settled_result(name, key, result) if done else None
        entry = await ledger.get(name, key)
        if entry is None:
            raise ToolCallNotFound(name, key)
        if entry.status != "in_flight":
            return False
        if (name, key) in await proxy.ask(RunningKeys(name)):
            raise ToolCallRunning(name, key)
        failure = PermanentToolError(error) if isinstance(error, str) else error
        if not await ledger.settle_unknown(entry, result=encoded, error=failure):
            return False  # a call took the key over, or it was settled, meanwhile
        _log.info("tool_call_settled", tool=name, key=key,
                  outcome="done" if done else "failed" if error is not None else "not_done")
        return True

    def _settling(self, what: str) -> tuple[Ledger, ActorRef]:
        if self._proxy is None:
            raise SystemNotRunning(what)
        if self._ledger is None:
            raise ConfigurationError(f"cannot {what}: without a store no call is recorded, so "
                                     "none has an unknown outcome; give ActorSystem(store=...)")
        return self._ledger, self._proxy

    def _settled_result(self, name: str, key: str, result: Any) -> bytes:
        """`result` encoded as the ledger keeps it, checked against the tool's return type."""
        try:
            encoded, _ = self.registry.recorded(name, result)
        except ResultMisfit as misfit:
            why = (f"it does not encode ({misfit.cause})" if misfit.annotation is None else
                   f"it does not fit the return annotation {type_name(misfit.annotation)} "
                   f"({misfit.cause})")
            raise ToolSettlementInvalid(name, key, why) from None
        return encoded

    def statistics(self) -> ToolStatistics:
        """Counts of calls, dedup hits, joins, retries, breaker trips, rejections, fallbacks."""
        return self.state.stats

    def breaker_states(self) -> dict[str, str]:
        """Each tool's breaker state (`closed`, `open`, `half_open`), for tools that have one."""
        return {name: str(b.state) for name, b in self.state.breakers.items()}

    def breaker(self, name: str) -> BreakerView:
        """A live view of tool `name`'s circuit breaker: its state, counts, when it opened,
        the last error it counted; `reset()` and `force_open()` act on it.

        Available from registration on, before the first call.

        Raises:
            UnknownTool: no tool is registered under `name`.
            ConfigurationError: the tool has no breaker.
        """
        spec = self.registry.get(name)
        breaker = self.state.breaker(spec)
        if breaker is None:
            raise ConfigurationError(
                f"tool {name!r} has no circuit breaker; declare one with "
                "@tool(breaker=roost.Breaker(...)) to watch or force it")
        return BreakerView(breaker)

    async def prune(self) -> int:
        """Delete ledger entries past their retention window; returns how many."""
        return 0 if self._ledger is None else await self._ledger.prune()


def _run_trace() -> TraceContext | None:
    """The caller's trace when the call belongs to a run (its span id: the caller's span),
    else None.

    Inside an actor that is the message being handled (the step's attempt, for a
    worker); outside, the trace a tool-proxy task or a tool step runs the call in.
    """
    cell = handling.get()
    if cell is not None:
        envelope = cell.current
        if envelope is not None:
            incoming = envelope.trace
            if incoming is None or incoming.run_id is None:
                return None
            return envelope.trace_context()
    trace = call_trace.get()
    return trace if trace is not None and trace.run_id is not None else None


def _caller_path() -> str | None:
    cell = handling.get()
    return None if cell is None else cell.path


def _derived_key(tool: str) -> str:
    """The key of a call made without one: its unit of work and its number there, or a fresh one."""
    envelope = current_envelope()
    if envelope is None or asyncio.current_task() is not handling.get().task:
        # Outside any actor, or in a task an actor started (it may outlive the message
        # being handled now): no unit of work it could be replayed as, so a fresh key.
        return fresh_key()
    trace = envelope.trace
    if trace is not None and trace.step is not None and trace.run_id is not None:
        unit = step_unit(trace.run_id, trace.step)
    else:
        unit = message_unit(envelope.message_id())
    return derive_key(tool, unit, envelope.next_call())
