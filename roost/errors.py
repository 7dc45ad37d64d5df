"""Every exception roost raises, rooted at `RoostError`.

The hierarchy is shallow on purpose: catch `RoostError` for anything from the
runtime, or one specific type. Each error keeps its data as attributes
(`err.actor`, `err.capacity`, ...) and its message says who, which rule, the
offending value and what to do.
"""

from __future__ import annotations

from typing import Any


def _type_name(message: object) -> str:
    return type(message).__name__


class RoostError(Exception):
    """Base of every error raised by roost."""


class ConfigurationError(RoostError, ValueError):
    """A bad argument or setting: names the setting, the value and what is allowed."""


class InternalError(RoostError):
    """A broken internal invariant: this is a bug in roost, please report it."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"internal invariant broken: {what}; this is a bug in roost, please report it "
            "with the traceback"
        )


# --- actors and mailboxes -------------------------------------------------------------------


class MailboxFull(RoostError):
    """A message was refused because the actor's mailbox is at capacity (policy `fail`)."""

    def __init__(self, actor: str, capacity: int, message: object) -> None:
        self.actor = actor
        self.capacity = capacity
        self.message = message
        super().__init__(
            f"{actor}: mailbox full (capacity={capacity}), refused {_type_name(message)}; "
            "use send() to wait for room, or raise the capacity"
        )


class ActorStopped(RoostError):
    """The actor has stopped, so it cannot take or answer the message."""

    def __init__(self, actor: str, message: object, reason: str = "stopped") -> None:
        self.actor = actor
        self.message = message
        self.reason = reason
        super().__init__(
            f"{actor}: actor has stopped (reason={reason}); cannot deliver "
            f"{_type_name(message)}; spawn a new actor or look up its replacement"
        )


class AskTimeout(RoostError, TimeoutError):
    """An `ask` got no reply within its timeout."""

    def __init__(self, actor: str, message: object, timeout: float) -> None:
        self.actor = actor
        self.message = message
        self.timeout = timeout
        super().__init__(
            f"{actor}: no reply to {_type_name(message)} within {timeout:g}s; the actor may "
            "be busy or stuck, or the timeout too short (the message may still be processed)"
        )


class ActorNotFound(RoostError, LookupError):
    """No live actor has the path that was looked up."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"no actor at path {path!r}; check the name or whether it has stopped")


class ActorNameTaken(RoostError):
    """Another live actor under the same parent already has the name."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(
            f"an actor already exists at {path!r}; choose another name or stop that one first"
        )


class ActorStartFailed(RoostError):
    """An actor's `on_start` raised, so the actor never ran."""

    def __init__(self, actor: str, cause: BaseException) -> None:
        self.actor = actor
        self.cause = cause
        super().__init__(f"{actor}: on_start failed: {type(cause).__name__}: {cause}")


class SystemNotRunning(RoostError):
    """The actor system is not running (not yet entered, or already shut down)."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"cannot {what}: the actor system is not running; use it inside "
            "`async with ActorSystem(...)`"
        )


# --- supervision ----------------------------------------------------------------------------


class IntensityExceeded(RoostError):
    """A supervisor saw more restarts than its intensity allows and gave up."""

    def __init__(self, supervisor: str, max_restarts: int, within: float, cause: Any) -> None:
        self.supervisor = supervisor
        self.max_restarts = max_restarts
        self.within = within
        self.cause = cause
        super().__init__(
            f"{supervisor}: more than {max_restarts} restarts within {within:g}s "
            f"(last cause: {type(cause).__name__}: {cause}); the supervisor stopped its "
            "children and failed"
        )


class BootstrapError(RoostError):
    """A bootstrap script for `roost run` is missing, broken, or defines no tree."""


# --- storage --------------------------------------------------------------------------------


class StoreError(RoostError):
    """The LMDB store failed: names the store path and the operation."""


class StoreUnavailable(StoreError):
    """The store folder cannot be opened (permissions, not an LMDB environment, locked)."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot open the store at {path!r}: {reason}")


class StoreCorrupt(StoreError):
    """The store folder is damaged (a truncated or corrupt data file, a lost store): refused."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"the store at {path!r} is damaged: {detail}; restore the folder from a backup "
            f"(`roost store backup DIR DEST` makes one) and run `roost store check {path}` to "
            "see which records are readable"
        )


class CheckpointCorrupt(StoreError):
    """A stored record did not decode (corrupt bytes, unknown schema version, wrong type)."""

    def __init__(self, run_id: str, step: str | None, key: bytes, error: str) -> None:
        self.run_id = run_id
        self.step = step
        self.key = key
        self.error = error
        super().__init__(
            f"checkpoint of run {run_id!r} step {step!r} (key {key!r}) does not decode: "
            f"{error}; prune it, or start the actor fresh"
        )


class RecordCorrupt(StoreError):
    """A non-checkpoint record (run, ledger entry, gate) did not decode."""

    def __init__(self, kind: str, key: bytes, error: str) -> None:
        self.kind = kind
        self.key = key
        self.error = error
        super().__init__(f"{kind} record at key {key!r} does not decode: {error}")


# --- tools ----------------------------------------------------------------------------------


class ToolError(RoostError):
    """Base of tool-call errors: names the tool."""


class UnknownTool(ToolError, LookupError):
    """No tool is registered under the name."""

    def __init__(self, tool: str, known: list[str]) -> None:
        self.tool = tool
        self.known = known
        names = ", ".join(sorted(known)) or "none"
        super().__init__(f"no tool named {tool!r} is registered (known: {names})")


class ToolArgumentsInvalid(ToolError, TypeError):
    """The arguments do not fit the tool's signature."""

    def __init__(self, tool: str, error: str) -> None:
        self.tool = tool
        super().__init__(f"tool {tool!r}: arguments do not fit its signature: {error}")


class TransientToolError(ToolError):
    """A failure worth retrying (timeout, connection error, 429, 5xx)."""


class PermanentToolError(ToolError):
    """A failure that retrying will not fix (e.g. HTTP 4xx other than 429)."""


class ToolUnavailable(ToolError):
    """The tool's circuit breaker is open and it has no fallback."""

    def __init__(self, tool: str, retry_at: float, retry_in: float) -> None:
        self.tool = tool
        self.retry_at = retry_at
        self.retry_in = retry_in
        super().__init__(
            f"tool {tool!r} is unavailable: its circuit breaker is open; it will be probed "
            f"again in {retry_in:.2f}s"
        )


class ToolBusy(ToolError):
    """The tool's concurrency limit and its waiting queue are both full (bulkhead)."""

    def __init__(self, tool: str, limit: int, max_waiting: int) -> None:
        self.tool = tool
        self.limit = limit
        self.max_waiting = max_waiting
        super().__init__(
            f"tool {tool!r} is busy: {limit} calls running and {max_waiting} waiting; "
            "retry later or raise the tool's concurrency limit"
        )


class ToolTimeout(TransientToolError, TimeoutError):
    """One attempt, or the whole call, ran past its time limit."""

    def __init__(self, tool: str, timeout: float, what: str = "attempt") -> None:
        self.tool = tool
        self.timeout = timeout
        super().__init__(f"tool {tool!r}: {what} timed out after {timeout:g}s")


class IdempotencyConflict(ToolError):
    """The same idempotency key was used with different arguments."""

    def __init__(self, tool: str, key: str) -> None:
        self.tool = tool
        self.key = key
        super().__init__(
            f"tool {tool!r}: idempotency key {key!r} was already used with different "
            "arguments; use a new key for a different call"
        )


class ToolOutcomeUnknown(ToolError):
    """A call was in flight when the process died and nothing can tell whether it happened."""

    def __init__(self, tool: str, key: str) -> None:
        self.tool = tool
        self.key = key
        super().__init__(
            f"tool {tool!r}: call with key {key!r} was in flight when the process stopped and "
            "its outcome is unknown; it was not repeated. Give the tool a verify hook, or "
            "have a person check and settle it"
        )


class ToolResultUnrecordable(ToolError):
    """A call completed but its result could not be encoded for the ledger."""

    def __init__(self, tool: str, key: str, error: str) -> None:
        self.tool = tool
        self.key = key
        super().__init__(
            f"tool {tool!r}: call with key {key!r} completed but its result could not be "
            f"recorded ({error}); it will not be run again for this key"
        )


# --- pipelines ------------------------------------------------------------------------------


class PipelineDefinitionError(ConfigurationError):
    """A pipeline graph is invalid: names the step and the rule."""


class StepFailed(RoostError):
    """A pipeline step failed after its retries and has no fallback."""

    def __init__(self, run_id: str, step: str, cause: BaseException | str) -> None:
        self.run_id = run_id
        self.step = step
        self.cause = cause
        text = cause if isinstance(cause, str) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"run {run_id!r}: step {step!r} failed: {text}")


class RunNotFound(RoostError, LookupError):
    """No run record has the id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r} in the store")


class RunInterrupted(RoostError):
    """The run's actor stopped before the run ended (e.g. it was stopped, or given up on)."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id!r} was interrupted before it ended (its actor stopped); it is still "
            "stored as running: resume it with system.pipelines.resume(run_id)"
        )


class RunCancelled(RoostError):
    """The run was cancelled before it finished."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} was cancelled")
