"""`Tools`: how actors and applications register and call tools (`ctx.tools`, `system.tools`).

A call is checked where it is made, before any hop: an open circuit breaker is
answered at once (the tool's fallback or `ToolUnavailable`), and an unknown
tool or arguments that do not fit (or cannot be hashed into a key) raise at
once. Read-only tools then run in the caller's task under the shared breaker
and bulkhead: they need no ledger and no join, so a hop would only add
latency. Side-effecting calls go to the tool-proxy actor, which runs each key
at most once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from roost.errors import SystemNotRunning, ToolUnavailable
from roost.mailbox.envelope import current_envelope
from roost.tools.breaker import BreakerState
from roost.tools.keys import derive_key, fingerprint
from roost.tools.proxy import Call, ToolState, ToolStatistics
from roost.tools.spec import ToolRegistry, ToolSpec
from roost.trace import call_trace, handling

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef
    from roost.storage.ledger import Ledger

#: How long a call may take in all when its tool sets no deadline, in seconds.
DEFAULT_CALL_TIMEOUT = 300.0
#: Extra time the caller waits past a tool's deadline, so that the proxy's own
#: `ToolTimeout` (measured from when the call started running) arrives first.
DEADLINE_MARGIN = 5.0


class Tools:
    """The system's tools: register them, call them, inspect their breakers and counts."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.registry = ToolRegistry()
        self.state = ToolState(clock)
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
            ConfigurationError: not a tool, or a tool with that name exists.
        """
        return self.registry.register(tool)

    async def call(self, name: str, /, *, key: str | None = None,
                   timeout: float | None = None, **arguments: Any) -> Any:
        """Call tool `name` with keyword `arguments` and wait for its result.

        Side-effecting tools are called at most once per idempotency key: `key`
        if given, else one derived from the current run (or the calling actor's
        path) and the arguments. A repeated key returns the stored result (with
        a store; without one, only concurrent duplicates are joined).

        Args:
            name: the tool's registered name.
            key: the idempotency key; derived when omitted.
            timeout: how long to wait in all, in seconds (default: the tool's
                retry deadline plus a margin, else 300).
            **arguments: the tool's keyword arguments.

        Raises:
            UnknownTool: no tool is registered under `name`.
            ToolArgumentsInvalid: the arguments do not fit the tool, or cannot be
                hashed into an idempotency key.
            ToolUnavailable: the breaker is open and the tool has no fallback.
            ToolBusy: the tool's concurrency limit and waiting line are full.
            IdempotencyConflict: `key` was used with other arguments.
            ToolOutcomeUnknown: a call with this key was in flight when an
                earlier process died, and the tool cannot tell if it took effect.
            Exception: the tool's own error after its retries.

        If cancelled, a side-effecting call goes on in the proxy and its result
        is recorded; a read-only call is cancelled.
        """
        proxy = self._proxy
        if proxy is None:
            raise SystemNotRunning(f"call tool {name!r}")
        spec = self.registry.get(name)
        breaker = self.state.breakers.get(name)
        if breaker is not None and breaker.state is BreakerState.OPEN:
            try:
                permit = breaker.acquire()
            except ToolUnavailable as unavailable:
                bound = spec.bind(arguments) if spec.fallback is not None else arguments
                return await self.state.fallback(spec, bound, None, unavailable)
            # The cooldown ended just now: give the permit back and go on as a normal
            # call, whose first attempt takes the half-open probe.
            breaker.release(permit)
        bound = spec.bind(arguments)
        if spec.read_only:
            self.state.stats.calls += 1
            return await self.state.run(spec, bound, key)
        fp = fingerprint(bound, tool=spec.name)
        if key is None:
            key = derive_key(_scope(), "", spec.name, bound)
        if timeout is None:
            deadline = spec.retry_policy.deadline
            timeout = DEFAULT_CALL_TIMEOUT if deadline is None else deadline + DEADLINE_MARGIN
        return await proxy.ask(Call(spec, bound, key, fp), timeout=timeout)

    def statistics(self) -> ToolStatistics:
        """Counts of calls, dedup hits, joins, retries, breaker trips, rejections, fallbacks."""
        return self.state.stats

    def breaker_states(self) -> dict[str, str]:
        """Each tool's breaker state (`closed`, `open`, `half_open`), for tools that have one."""
        return {name: str(b.state) for name, b in self.state.breakers.items()}

    async def prune(self) -> int:
        """Delete ledger entries past their retention window; returns how many."""
        return 0 if self._ledger is None else await self._ledger.prune()


def _scope() -> str:
    """What a derived key is scoped to: the current run and step, else the calling actor."""
    envelope = current_envelope()
    trace = call_trace.get() if envelope is None else envelope.trace
    if trace is not None and trace.run_id is not None:
        return trace.run_id
    cell = handling.get()
    return "" if cell is None else cell.path
