"""`Tools`: how actors and applications register and call tools (`ctx.tools`, `system.tools`).

A call is checked where it is made, before any hop: an unknown tool or
arguments that do not fit raise at once, and so does an open circuit breaker
(answered with the tool's fallback or `ToolUnavailable`), so a caller learns
that a dependency is down without queueing behind the proxy's work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from roost.actors.breaker import BreakerState
from roost.actors.tool_proxy import Call, ToolProxy, ToolStatistics
from roost.actors.tools import ToolRegistry, ToolSpec
from roost.errors import SystemNotRunning, ToolUnavailable
from roost.trace import current_envelope, handling

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef

#: How long a call may take in all when its tool sets no deadline, in seconds.
DEFAULT_CALL_TIMEOUT = 300.0


class Tools:
    """The system's tools: register them, call them, inspect their breakers."""

    def __init__(self) -> None:
        self.registry = ToolRegistry()
        self._proxy_ref: ActorRef | None = None
        self._proxy: ToolProxy | None = None

    def attach(self, ref: ActorRef) -> None:
        """Connect to the running proxy actor (done by the system at start)."""
        self._proxy_ref = ref
        self._proxy = ref._cell.actor  # type: ignore[assignment]

    def detach(self) -> None:
        self._proxy_ref = None
        self._proxy = None

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
        path) and the arguments. A repeated key returns the stored result.

        Args:
            name: the tool's registered name.
            key: the idempotency key; derived when omitted.
            timeout: how long to wait in all, in seconds (default: the tool's
                retry deadline, else 300).
            **arguments: the tool's keyword arguments.

        Raises:
            UnknownTool: no tool is registered under `name`.
            ToolArgumentsInvalid: the arguments do not fit the tool.
            ToolUnavailable: the breaker is open and the tool has no fallback.
            IdempotencyConflict: `key` was used with other arguments.
            ToolOutcomeUnknown: a call with this key was in flight when an
                earlier process died, and the tool cannot tell if it took effect.
            Exception: the tool's own error after its retries.

        If cancelled, the call goes on in the proxy and its result is recorded.
        """
        proxy, ref = self._proxy, self._proxy_ref
        if proxy is None or ref is None:
            raise SystemNotRunning(f"call tool {name!r}")
        spec = self.registry.get(name)
        bound = spec.bind(arguments)
        breaker = proxy.breakers.get(name)
        if breaker is not None and breaker.state is BreakerState.OPEN:
            return await self._rejected(proxy, spec, bound, breaker)
        if timeout is None:
            timeout = spec.retry_policy.deadline or DEFAULT_CALL_TIMEOUT
        return await ref.ask(Call(spec, bound, key, _scope()), timeout=timeout)

    async def _rejected(self, proxy: ToolProxy, spec: ToolSpec, arguments: dict[str, Any],
                        breaker: Any) -> Any:
        try:
            breaker.acquire()  # raises ToolUnavailable with when it will be probed
        except ToolUnavailable as unavailable:
            return await proxy._fallback(spec, arguments, None, unavailable)
        raise AssertionError("unreachable: an open breaker granted a permit")

    def statistics(self) -> ToolStatistics:
        """Counts of calls, dedup hits, joins, retries, breaker trips, rejections, fallbacks."""
        if self._proxy is None:
            return ToolStatistics()
        return self._proxy.stats

    def breaker_states(self) -> dict[str, str]:
        """Each tool's breaker state (`closed`, `open`, `half_open`), for tools that have one."""
        if self._proxy is None:
            return {}
        return {name: str(b.state) for name, b in self._proxy.breakers.items()}


def _scope() -> str:
    """What a derived key is scoped to: the current run and step, else the calling actor."""
    envelope = current_envelope()
    trace = None if envelope is None else envelope.trace
    if trace is not None and trace.run_id is not None:
        return trace.run_id
    cell = handling.get()
    return "" if cell is None else cell.path
