"""Tools: side-effecting calls made safe to retry and contained when a dependency degrades.

The contract: a tool is an async function declared with `@tool` (or an `HttpTool`)
and registered with `system.tools`. A call's arguments are checked against the
tool's signature and annotations, and it takes or derives an idempotency key
(from its unit of work: the pipeline step or the message being handled). A
side-effecting call then goes through the tool-proxy actor, which records it in
the store's ledger (one execution per key; a repeated key replays the stored
result), guards the tool with its circuit breaker and bulkhead, and retries
transient errors with jittered backoff within a per-attempt timeout. Callers
use `ctx.tools` inside an actor or `system.tools` outside one.

Modules: `spec` (declarations, argument binding), `keys` (key checks, derived
keys, fingerprints), `breaker`, `retry`, `bulkhead`, `http` (the HTTP tool),
`proxy` (the actor) and `client` (the caller side, `Tools`).
"""

from roost.tools.breaker import (
    Breaker,
    BreakerState,
    BreakerStatistics,
    BreakerTransition,
    BreakerView,
    CircuitBreaker,
)
from roost.tools.client import Tools, UnknownCall
from roost.tools.http import HttpTool
from roost.tools.proxy import ToolProxy, ToolStatistics
from roost.tools.retry import Retry
from roost.tools.spec import Done, NotDone, ToolRegistry, ToolSpec, tool

__all__ = [
    "Breaker",
    "BreakerState",
    "BreakerStatistics",
    "BreakerTransition",
    "BreakerView",
    "CircuitBreaker",
    "Done",
    "HttpTool",
    "NotDone",
    "Retry",
    "ToolProxy",
    "ToolRegistry",
    "ToolSpec",
    "ToolStatistics",
    "Tools",
    "UnknownCall",
    "tool",
]
