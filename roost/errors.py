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


class ExtraNotInstalled(ConfigurationError, ImportError):
    """A feature needs an optional extra (`roost[otel]`, `roost[metrics]`) that is not installed."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.feature = feature
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the optional extra {extra!r}, but {missing!r} cannot be imported; "
            f"install it with: pip install 'roost[{extra}]'"
        )


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
    """The actor has stopped, so it cannot take or answer the message.

    `error` is the failure it stopped with (its `on_start` or hydration failed, it
    crashed past its restarts), also named in the message; None for any other stop.
    """

    def __init__(self, actor: str, message: object, reason: str = "stopped",
                 error: BaseException | None = None) -> None:
        self.actor = actor
        self.message = message
        self.reason = reason
        self.error = error
        why = reason if error is None else f"{reason}: {type(error).__name__}: {error}"
        super().__init__(
            f"{actor}: actor has stopped (reason={why}); cannot deliver "
            f"{_type_name(message)}; spawn a new actor or look up its replacement"
        )


class ActorRestarted(ActorStopped):
    """A restart cut the message short: the actor was killed while handling it, then restarted.

    An `ActorStopped` (reason `killed`) so that existing handlers catch it, but the actor
    is alive again behind the same ref: the message can be sent to it again.
    """

    def __init__(self, actor: str, message: object) -> None:
        self.actor = actor
        self.message = message
        self.reason = "killed"
        self.error = None
        RoostError.__init__(
            self,
            f"{actor}: handling {_type_name(message)} was cut short by a restart of this "
            "actor (its supervisor restarted it while the message was still running, and "
            "cancelled it at its shutdown_timeout), so it gets no reply; the actor runs "
            "again and the ref is still usable: send the message again if it must be handled",
        )


class AskTimeout(RoostError, TimeoutError):
    """An `ask` got no reply within its timeout."""

    def __init__(self, actor: str, message: object, timeout: float, *,
                 queued: bool = True) -> None:
        self.actor = actor
        self.message = message
        self.timeout = timeout
        self.queued = queued
        fate = ("the message may still be processed" if queued else
                "its mailbox stayed full, so the message was never queued")
        super().__init__(
            f"{actor}: no reply to {_type_name(message)} within {timeout:g}s; the actor may "
            f"be busy or stuck, or the timeout too short ({fate})"
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
    """An actor's `__init__` or `on_start` raised, so the actor never ran."""

    def __init__(self, actor: str, cause: BaseException, *, during: str = "on_start") -> None:
        self.actor = actor
        self.cause = cause
        self.during = during
        super().__init__(f"{actor}: {during} failed: {type(cause).__name__}: {cause}")


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


class ChildNotFound(RoostError, LookupError):
    """A supervisor was asked about a child it does not have."""

    def __init__(self, supervisor: str, name: str, known: list[str]) -> None:
        self.supervisor = supervisor
        self.name = name
        self.known = known
        super().__init__(
            f"{supervisor}: no child named {name!r} (children: {', '.join(known) or 'none'}); "
            "check the name, e.g. with WhichChildren"
        )


class ChildNotStopped(RoostError):
    """`RestartChild` or `DeleteChild` named a child that is not stopped."""

    def __init__(self, supervisor: str, name: str, state: str, operation: str) -> None:
        self.supervisor = supervisor
        self.name = name
        self.state = state
        self.operation = operation
        super().__init__(
            f"{supervisor}: cannot {operation} child {name!r}: it is {state}, not stopped; "
            f"send StopChild({name!r}) first"
        )


class ChildAlreadyPresent(ActorNameTaken):
    """A supervisor keeps a stopped child's spec under the name a new child was to take."""

    def __init__(self, supervisor: str, name: str) -> None:
        RoostError.__init__(
            self,
            f"{supervisor}: a stopped child named {name!r} is kept; start it again with "
            f"RestartChild({name!r}) or remove it with DeleteChild({name!r}) first",
        )
        self.path = f"{supervisor.rstrip('/')}/{name}"
        self.supervisor = supervisor
        self.name = name


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


class StoreUnreachable(StoreUnavailable):
    """The PostgreSQL server of a store cannot be reached (refused, timed out, unknown host)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"the PostgreSQL server cannot be reached ({reason}); check that it "
                              "runs and that the host and port in the URL are right")


class StoreAccessDenied(StoreUnavailable):
    """The PostgreSQL server refused a store's user name or password."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(url, f"the PostgreSQL server refused the login ({reason}); check the user "
                              "name and password in the URL (or in PGPASSWORD / ~/.pgpass)")


class StoreForeign(StoreUnavailable):
    """A PostgreSQL database (schema) holds another application's tables and no roost store."""

    def __init__(self, url: str, database: str, tables: list[str]) -> None:
        self.database = database
        self.tables = tables
        shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        super().__init__(url, f"database {database} holds other tables ({shown}) and no roost "
                              "store; give roost a database (or a schema, with ?search_path=NAME) "
                              "of its own")


class StoreSchemaTooNew(StoreUnavailable):
    """A PostgreSQL store was made by a newer roost than this one: refused, never downgraded."""

    def __init__(self, url: str, found: int, supported: int) -> None:
        self.found = found
        self.supported = supported
        super().__init__(url, f"its schema is version {found}, made by a newer roost (this one "
                              f"knows versions up to {supported}); upgrade roost to open it")


class LeaseLost(StoreError):
    """A node wrote for a run whose lease it no longer holds (it was paused or cut off past
    the lease, and another node took the run over): the write is refused and the run
    stops here, neither failed nor retried; its new owner goes on with it.

    A `StoreError`, so a run's actor stops as it does for a store that cannot write."""

    def __init__(self, run_id: str, node: str, epoch: int, holder: str | None,
                 held_epoch: int | None) -> None:
        self.run_id = run_id
        self.node = node
        self.epoch = epoch
        self.holder = holder
        self.held_epoch = held_epoch
        now = ("another node took it over, or it ended or was parked" if held_epoch is None
               else f"it is now held by {holder or 'no node'!r} at epoch {held_epoch}")
        super().__init__(f"node {node!r} lost the lease of run {run_id!r} (it held epoch "
                         f"{epoch}; {now}); the write was refused and the run stops on this "
                         "node; raise the lease (ActorSystem(lease=...)) if nodes pause longer "
                         "than it")


class StoreCorrupt(StoreError):
    """The store folder is damaged (a truncated or corrupt data file, a lost store): refused."""

    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail
        super().__init__(
            f"the store at {path!r} is damaged: {detail}; restore the folder from a backup "
            "(`roost store backup DIR DEST` makes one while the store is healthy); roost will "
            "not open it or start a new store in its place"
        )


#: What to do about a record that does not decode, unless the code raising the error knows
#: better: the store is probably damaged, and the check finds every other damaged record.
DAMAGED_RECORD_ADVICE = ("run `roost store check` on the store (with the systems and consoles "
                         "that use it stopped) to list every damaged record, and restore the "
                         "store from a backup if it reports damage")


class CheckpointCorrupt(StoreError):
    """A stored checkpoint (of an actor, or of a pipeline run) did not decode (corrupt bytes,
    unknown schema version, wrong type).

    Attributes:
        advice: what to do, ending the message; `DAMAGED_RECORD_ADVICE` plus, for an
            actor, how to start it afresh, unless the code raising it gave its own.
    """

    def __init__(self, run_id: str, step: str | None, key: bytes, error: str, *,
                 advice: str | None = None) -> None:
        self.run_id = run_id
        self.step = step
        self.key = key
        self.error = error
        self.advice = advice or (
            f"{DAMAGED_RECORD_ADVICE}; an actor whose checkpoint this is can instead start "
            "from its initial state (set `fresh_on_corrupt_checkpoint = True` on its class)")
        super().__init__(
            f"checkpoint of run {run_id!r} step {step!r} (key {key!r}) does not decode: "
            f"{error}; {self.advice}"
        )


class CheckpointNotSaved(StoreError):
    """An actor's checkpoint could not be written (a full disk, a failing store); the actor
    fails and restarts from its last checkpoint, so its memory never runs ahead of the
    store (a caller retrying after this error would otherwise count twice)."""

    def __init__(self, actor: str, cause: BaseException) -> None:
        self.actor = actor
        self.cause = cause
        super().__init__(
            f"{actor}: its checkpoint was not saved ({type(cause).__name__}: {cause}); the "
            "actor restarts from its last checkpoint, so what this message changed is undone; "
            "retry once the store can write again"
        )


class CheckpointUnencodable(StoreError):
    """An actor's state cannot be encoded for a checkpoint; the actor fails and restarts."""

    def __init__(self, actor: str, state_type: str, field: str, error: str) -> None:
        self.actor = actor
        self.state_type = state_type
        self.field = field
        self.error = error
        super().__init__(
            f"{actor}: cannot checkpoint its {state_type} state: {field} cannot be encoded "
            f"({error}); keep only msgspec-encodable values (str, int, float, bool, None, "
            "bytes, lists, dicts, msgspec Structs) in the state. Nothing was saved; the actor "
            "restarts from its last checkpoint"
        )


class RecordCorrupt(StoreError):
    """A non-checkpoint record (run, ledger entry, gate, step result) did not decode.

    Attributes:
        advice: what to do, ending the message (`DAMAGED_RECORD_ADVICE` unless the code
            raising it gave its own).
    """

    def __init__(self, kind: str, key: bytes, error: str, *, advice: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self.error = error
        self.advice = advice or DAMAGED_RECORD_ADVICE
        super().__init__(f"{kind} record at key {key!r} does not decode: {error}; {self.advice}")


class TraceNotFound(RoostError, LookupError):
    """No run or trace in the trace store has the id (or its trace was pruned)."""

    def __init__(self, run_or_trace_id: str, store: str) -> None:
        self.id = run_or_trace_id
        self.store = store
        super().__init__(
            f"no run or trace named {run_or_trace_id!r} in the store at {store!r}; check the id "
            f"(`roost runs --store {store}` lists the runs), or its trace may be past the "
            "trace retention"
        )


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
    """A call's arguments, or its idempotency key, do not fit the tool.

    Attributes:
        tool: The tool called.
        argument: The argument to blame (`"key"` for the idempotency key), if one is.
        expected: What that argument must be, e.g. `"int"`, when known.
        given: The type of the value given, e.g. `"str"`, when known.
    """

    def __init__(self, tool: str, error: str, *, argument: str | None = None,
                 expected: str | None = None, given: str | None = None) -> None:
        self.tool = tool
        self.argument = argument
        self.expected = expected
        self.given = given
        super().__init__(f"tool {tool!r}: arguments do not fit its signature: {error}")


class TransientToolError(ToolError):
    """A failure worth retrying (timeout, connection error, 429, 5xx)."""


class ToolCallOptionInvalid(ToolArgumentsInvalid):
    """`key=` or `timeout=` given to `Tools.call` is invalid.

    They are options of the call, not arguments of the tool, so the message does
    not speak of the tool's signature. `argument` is `"key"` or `"timeout"`.
    """

    def __init__(self, tool: str, error: str, *, argument: str, expected: str,
                 given: str) -> None:
        self.tool = tool
        self.argument = argument
        self.expected = expected
        self.given = given
        ToolError.__init__(self, f"tool {tool!r}: {error}")


class IdempotencyKeyInUse(TransientToolError):
    """The service is still processing an earlier request with the same idempotency key
    (HTTP 409 under Stripe's rules and the IETF Idempotency-Key draft).

    Transient: the call is retried with the same key. When the retries run out its
    outcome is unknown, so the proxy keeps the key in flight (`ToolStillInProgress`)
    instead of storing a failure.
    """


class PermanentToolError(ToolError):
    """A failure that retrying will not fix (e.g. HTTP 4xx other than 429).

    The ledger stores a permanent failure and replays it to later calls with the
    same key as a `PermanentToolError` that keeps what the tool raised.

    Attributes:
        code: A machine-readable code (e.g. "card_declined"), None when there is
            none. A tool sets it with `PermanentToolError(message, code=...)`; the
            ledger keeps the `code` attribute of any error it stores.
        original_type: On a replay, the type name of the error the tool raised
            (e.g. "CardDeclined"); None on the original error.
    """

    code: str | int | None = None
    original_type: str | None = None

    def __init__(self, *args: object, code: str | int | None = None,
                 original_type: str | None = None) -> None:
        super().__init__(*args)
        self.code = code
        self.original_type = original_type


class ToolUnavailable(ToolError):
    """The tool's circuit breaker is open and it has no fallback.

    Attributes:
        tool: The tool called.
        retry_at: Clock time the breaker lets a probe through (inf while forced open).
        retry_in: Seconds until then.
        cause: The error that opened the breaker (None when it was forced open).
        forced: Whether it was opened by hand (`force_open()`): it stays open until `reset()`.
    """

    def __init__(self, tool: str, retry_at: float, retry_in: float,
                 cause: BaseException | None = None, *, forced: bool = False) -> None:
        self.tool = tool
        self.retry_at = retry_at
        self.retry_in = retry_in
        self.cause = cause
        self.forced = forced
        opened = "" if cause is None else f" (opened by {type(cause).__name__}: {cause})"
        if forced:
            when = f"it was forced open and stays open until system.tools.breaker({tool!r}).reset()"
        else:
            when = f"it will be probed again in {retry_in:.2f}s"
        super().__init__(f"tool {tool!r} is unavailable: its circuit breaker is open{opened}; {when}")


class ToolFallbackFailed(ToolUnavailable):
    """The tool's breaker is open and its fallback raised; that error is the `__cause__`.

    It is a `ToolUnavailable` (with the same attributes), so code that handles an
    unavailable tool handles this too.

    Attributes:
        error: What the fallback raised.
    """

    def __init__(self, unavailable: ToolUnavailable, error: BaseException) -> None:
        self.tool = unavailable.tool
        self.retry_at = unavailable.retry_at
        self.retry_in = unavailable.retry_in
        self.cause = unavailable.cause
        self.forced = unavailable.forced
        self.error = error
        ToolError.__init__(
            self,
            f"tool {self.tool!r}: its circuit breaker is open and its fallback raised "
            f"{type(error).__name__}: {error}; fix the fallback, or drop it and handle "
            "ToolUnavailable",
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


class ToolCallTimeout(ToolTimeout):
    """`Tools.call` got no answer within its `timeout=`; the call itself was not stopped.

    A side-effecting call goes on in the tool proxy: a call with the same key joins
    it while it runs and replays its result once it is recorded.

    Attributes:
        tool: The tool called.
        key: The call's idempotency key.
        timeout: The seconds waited.
        started: False when the tool proxy's mailbox stayed full for all that time,
            so the call never started (a retry runs it).
    """

    def __init__(self, tool: str, key: str, timeout: float, *, started: bool = True) -> None:
        self.tool = tool
        self.key = key
        self.timeout = timeout
        self.started = started
        if started:
            fate = ("the call goes on, and a call with the same key joins it (or replays its "
                    "result once it is recorded); pass a longer timeout= to wait for it")
        else:
            fate = ("the tool proxy's mailbox stayed full, so the call never started; "
                    "retry it later with the same key")
        ToolError.__init__(self, f"tool {tool!r}: no answer to the call with key {key!r} "
                                 f"within {timeout:g}s; {fate}")


class ToolConnectionLost(TransientToolError, ConnectionError):
    """The connection broke after the request was sent, so the call may have taken effect.

    Retried for idempotent tools; for others the outcome is unknown (see
    `ToolOutcomeUnknown`).
    """


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
    """Nothing can tell whether a call of a tool that is not idempotent took effect.

    Its attempt timed out or lost its connection after the request was sent, or
    it was in flight when an earlier process died; and the tool has no verify
    hook, or the hook failed, hung or gave no verdict. The call is not repeated
    and its key stays in flight, so later calls with the key end the same way
    until a verify hook or a person settles it.

    Attributes:
        tool: The tool called.
        key: The call's idempotency key.
        attempt_error: What the attempt ended with (a timeout, a lost
            connection); None when the key was found in flight.
        verify_error: Why the verify hook could not settle the call; None when
            the tool has no verify hook.
        cause: `verify_error` if there is one, else `attempt_error` (also the
            `__cause__`).
        left_here: The key was found in flight, left by an earlier call in this
            process (cut off, or the proxy restarted), not by a process that died.
    """

    def __init__(self, tool: str, key: str, attempt_error: BaseException | None = None,
                 verify_error: BaseException | None = None, *, left_here: bool = False,
                 ) -> None:
        self.tool = tool
        self.key = key
        self.attempt_error = attempt_error
        self.verify_error = verify_error
        self.cause = verify_error if verify_error is not None else attempt_error
        self.left_here = left_here
        if left_here:
            happened = "was left in flight by an earlier call in this process"
        elif attempt_error is None:
            happened = "was in flight when the process stopped"
        else:
            happened = (f"was cut off with its outcome unknown "
                        f"({type(attempt_error).__name__}: {attempt_error})")
        if verify_error is None:
            unsettled = "the tool has no verify hook"
        else:
            unsettled = (f"its verify hook could not settle it "
                         f"({type(verify_error).__name__}: {verify_error})")
        super().__init__(
            f"tool {tool!r}: call with key {key!r} {happened} and {unsettled}; it was not "
            "repeated and the key stays in flight. Give the tool a working verify hook, mark "
            "it idempotent=True if repeating it is harmless, or have a person check and "
            "settle it"
        )


class ToolStillInProgress(ToolOutcomeUnknown):
    """The service kept answering that an earlier request with the call's key is still
    being processed (`IdempotencyKeyInUse`) until the retries ran out.

    A `ToolOutcomeUnknown` with the same attributes (`attempt_error` is the last
    `IdempotencyKeyInUse`): the request may take effect, so the key stays in flight
    and a later call with it settles it as after a crash.
    """

    def __init__(self, tool: str, key: str, attempt_error: BaseException) -> None:
        self.tool = tool
        self.key = key
        self.attempt_error = attempt_error
        self.verify_error = None
        self.cause = attempt_error
        self.left_here = False
        ToolError.__init__(
            self,
            f"tool {tool!r}: call with key {key!r}: the service is still processing an "
            f"earlier request with this key ({type(attempt_error).__name__}: "
            f"{attempt_error}) and the retries ran out; its outcome is unknown and the key "
            "stays in flight. A later call with the same key settles it through the tool's "
            "verify hook (or, for an idempotent tool without one, by asking the service "
            "again); without either, have a person check and settle it",
        )


class ToolResultUnrecordable(ToolError):
    """A call ran to completion but its result could not be recorded in the ledger.

    The effect happened. The key is finalized as done without a result (when the
    store still takes that write), so the tool is not run again for it.

    Attributes:
        tool: The tool called.
        key: The call's idempotency key.
        error: Why the result could not be recorded.
        cause: The exception behind `error` (also the `__cause__`); None on a
            replay to a later call.
    """

    def __init__(self, tool: str, key: str, error: str,
                 cause: BaseException | None = None) -> None:
        self.tool = tool
        self.key = key
        self.error = error
        self.cause = cause
        super().__init__(
            f"tool {tool!r}: call with key {key!r} took effect but its result could not be "
            f"recorded ({error}); it will not be run again for this key: do not retry it, "
            "check its effect where it happened"
        )


class ToolCallNotFound(ToolError, LookupError):
    """`Tools.settle_unknown` named a key the ledger does not hold for the tool."""

    def __init__(self, tool: str, key: str) -> None:
        self.tool = tool
        self.key = key
        super().__init__(
            f"tool {tool!r}: the ledger holds no call with key {key!r}; check the tool and "
            "the key (system.tools.unknown_calls() lists the calls whose outcome is unknown)")


class ToolCallRunning(ToolError):
    """`Tools.settle_unknown` named a call that is running in this process: its own
    outcome will settle it."""

    def __init__(self, tool: str, key: str) -> None:
        self.tool = tool
        self.key = key
        super().__init__(
            f"tool {tool!r}: the call with key {key!r} is running in this process, so its "
            "outcome is not unknown; wait for it to end")


class ToolSettlementInvalid(ToolError, ValueError):
    """The result given to `Tools.settle_unknown` does not fit the tool's return annotation
    (or does not encode); nothing was recorded."""

    def __init__(self, tool: str, key: str, error: str) -> None:
        self.tool = tool
        self.key = key
        self.error = error
        super().__init__(f"tool {tool!r}: cannot settle the call with key {key!r} with that "
                         f"result: {error}; nothing was recorded")


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


class RemoteStepFailed(RoostError):
    """A step sent to a pool on another node of the cluster failed there: the worker raised
    (its type and message are kept), or the node could not run the request. The step's
    retry policy decides on `retryable`, which the serving node judged against the real
    exception."""

    def __init__(self, run_id: str, step: str, pool: str, node: str, error_type: str,
                 message: str, *, retryable: bool) -> None:
        self.run_id = run_id
        self.step = step
        self.pool = pool
        self.node = node
        self.error_type = error_type
        self.message = message
        self.retryable = retryable
        super().__init__(f"run {run_id!r}: step {step!r} failed on node {node!r} (pool "
                         f"{pool!r}): {error_type}: {message}")


class SystemBusy(RoostError):
    """`start(..., wait=False)` found every run slot taken, or runs queued before it (the
    caller asked not to queue)."""

    def __init__(self, pipeline: str, active: int, limit: int, queued: int = 0) -> None:
        self.pipeline = pipeline
        self.active = active
        self.limit = limit
        self.queued = queued
        waiting = f" and {queued} queued before it" if queued else ""
        super().__init__(
            f"pipeline {pipeline!r}: not started, {active} runs are in flight{waiting} "
            f"(max_active_runs={limit}); call start() without wait=False to queue the run, "
            "or raise ActorSystem(max_active_runs=...)"
        )


class RunInputInvalid(RoostError, ValueError):
    """`start()` refused a run's input: it does not fit the pipeline's `input_type`, or it
    cannot be stored at all. Nothing was stored."""

    def __init__(self, pipeline: str, input_type: str, problem: str) -> None:
        self.pipeline = pipeline
        self.input_type = input_type
        self.problem = problem
        super().__init__(f"pipeline {pipeline!r} refused the run's input: {problem}; "
                         "nothing was stored")


class RunNotFound(RoostError, LookupError):
    """No run record has the id."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r} in the store")


class RunInterrupted(RoostError):
    """The run's actor stopped before the run ended (e.g. it was stopped, or given up on)."""

    def __init__(self, run_id: str, cause: BaseException | None = None) -> None:
        self.run_id = run_id
        self.cause = cause
        if isinstance(cause, LeaseLost):
            super().__init__(f"run {run_id!r} was stopped on this node: another node took it "
                             f"over and it goes on there ({cause})")
            return
        why = ("its actor stopped" if cause is None else
               f"paused: the store could not save its progress ({type(cause).__name__}: {cause})")
        super().__init__(
            f"run {run_id!r} was interrupted before it ended ({why}); it is still stored as "
            "running: resume it with system.pipelines.resume(run_id)"
            + ("" if cause is None else " once the store can write again")
        )


class PipelineChanged(RoostError):
    """A stored run cannot go on under the pipeline registered now under its name: the
    definition changed in a way the run's progress does not fit (a step it ran was removed
    or renamed, a new step comes before one it ran, a stored result or decision no longer
    fits its type). The run is left as it is in the store."""

    def __init__(self, run_id: str, pipeline: str, reason: str) -> None:
        self.run_id = run_id
        self.pipeline = pipeline
        self.reason = reason
        super().__init__(
            f"run {run_id!r} cannot go on under the pipeline {pipeline!r} registered now: "
            f"{reason}; it is left as it is in the store: resume it under the definition it "
            f"started with (registered as {pipeline!r}), or cancel it "
            f"(system.pipelines.cancel({run_id!r})), and give an incompatible definition a "
            "new name")


class RunCancelled(RoostError):
    """The run was cancelled before it finished."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(f"run {run_id!r} was cancelled")


class GateError(RoostError):
    """A gate decision or query that cannot be applied: names the run and the gate."""


class GateNotFound(GateError, LookupError):
    """The run has no gate of that name (it never reached one, or the name is wrong)."""

    def __init__(self, run_id: str, gate: str, known: list[str]) -> None:
        self.run_id = run_id
        self.gate = gate
        self.known = known
        listed = ", ".join(repr(name) for name in known) if known else "none"
        super().__init__(f"run {run_id!r} has no gate {gate!r} (its gates: {listed}); "
                         "list the gates waiting for a decision with system.gates.pending() "
                         "or `roost gates --store DIR`")


class GateAlreadyDecided(GateError):
    """A different decision was made on the gate first; the first one stands."""

    def __init__(self, run_id: str, gate: str, decision: str, by: str) -> None:
        self.run_id = run_id
        self.gate = gate
        self.decision = decision
        self.by = by
        super().__init__(f"gate {gate!r} of run {run_id!r} was already decided: {decision!r} "
                         f"by {by!r}; a decision cannot be changed")


class GateClosed(GateError):
    """The gate can no longer be decided: its run ended (cancelled) while it waited."""

    def __init__(self, run_id: str, gate: str, why: str) -> None:
        self.run_id = run_id
        self.gate = gate
        super().__init__(f"gate {gate!r} of run {run_id!r} is closed: {why}")


class GateDecisionInvalid(GateError, ValueError):
    """The decision itself is malformed: an unknown decision, no `by`, or an input that
    does not fit the gate's `input_type`."""

    def __init__(self, run_id: str, gate: str, problem: str) -> None:
        self.run_id = run_id
        self.gate = gate
        self.problem = problem
        super().__init__(f"cannot decide gate {gate!r} of run {run_id!r}: {problem}")


class ToolGated(ToolError):
    """A tool guarded by a gate was called outside a pipeline step that passed the gate."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        super().__init__(
            f"tool {tool!r} is guarded by a gate (@tool(gate=...)) and was called directly; "
            f"call it as a pipeline step, Step(..., tool={tool!r}), so a person can approve "
            "each call first")
