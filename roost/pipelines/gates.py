"""`Gates`: the runs waiting for people, their decisions, deadlines and notifications
(`system.gates`).

A run that reaches a gate parks: its progress, its `waiting` status and the gate's
record are stored in one write and its actor stops. `decide` stores the decision
with its audit trail and wakes the run in the same write: `running` when it resumes
from the gate here at once (its pipeline is registered and a slot is free), else
`queued`, so it resumes when a slot frees or in the next process that registers its
pipeline with `resume=True`. One timer task per system applies the gates'
`on_timeout` when their stored deadlines pass, also deadlines that passed while no
process ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec

from roost._logging import get_logger
from roost._validate import check_seconds
from roost.errors import (
    ConfigurationError,
    GateClosed,
    GateDecisionInvalid,
    RecordCorrupt,
    RunNotFound,
    StoreError,
    ToolArgumentsInvalid,
    ToolUnavailable,
)
from roost.pipelines import _schema_check
from roost.pipelines.gate import APPROVAL_DECISIONS, OUTCOME_DECISIONS, Escalate, Gate, GateDecision
from roost.pipelines.notify import DEFAULT_BREAKER, DEFAULT_RETRY, Webhook
from roost.storage import (
    GateEvent,
    GateRecord,
    GateStore,
    Op,
    RunRecord,
    RunStatus,
    RunStore,
    TimeoutStep,
    Update,
)
from roost.storage.codecs import RecordCodec
from roost.storage.gates import PENDING, Decision, gate_of_key
from roost.storage.runs import ENDED
from roost.tools.breaker import Breaker
from roost.tools.retry import Retry
from roost.tools.spec import ToolSpec

if TYPE_CHECKING:
    from roost.pipelines.definition import Pipeline
    from roost.pipelines.service import Pipelines

_log = get_logger("roost")

#: Who decides when a gate's deadline passes.
TIMEOUT_DECIDER = "roost:timeout"
#: The longest the gate timer sleeps between looks at the deadline index.
_TIMER_MAX_SLEEP = 60.0
#: How long a deadline that could not be applied waits before the next try.
_TIMER_RETRY = 30.0
#: How many notifications a webhook that was just added sends at once to catch up.
_CATCH_UP_CONCURRENCY = 8
#: The longest `by` a decision takes: a name for the audit trail (the console's sign-in
#: names are at most 80 characters).
MAX_BY = 200
#: The control characters a decision's comment may hold: it is prose, in lines.
_COMMENT_BREAKS = frozenset("\n\t")

OnOpen = Callable[[GateRecord], Awaitable[None] | None]


def _placeholder(value: Any) -> str:
    return f"<{type(value).__name__}>"


_SHOWN = msgspec.json.Encoder(enc_hook=_placeholder)
_RUNS = RecordCodec(RunRecord)


def timeout_chain(action: str | Escalate) -> list[TimeoutStep]:
    """A gate's `on_timeout` as the list of links its record keeps."""
    chain: list[TimeoutStep] = []
    while isinstance(action, Escalate):
        chain.append(TimeoutStep("escalate", list(action.to), action.timeout))
        action = action.on_timeout
    chain.append(TimeoutStep(action))
    return chain


def check_decision(record: GateRecord, decision: str, input: Any, by: str,
                   input_type: Any = None, tool: ToolSpec | None = None) -> bytes | None:
    """Check a decision for `record`; returns its input as JSON (None without one).

    `input_type` (the gate's type, where the pipeline is loaded) checks the input
    exactly; without it the JSON Schema stored with the gate does, and an edit that
    replaces the arguments of `tool` (a tool step's gate, where the tool is registered)
    must bind to them as a call of the tool does.

    Raises:
        GateDecisionInvalid: naming what is wrong and what is allowed.
    """
    run_id, gate = record.run_id, record.gate
    check_by(record, by)
    allowed = OUTCOME_DECISIONS if record.gate_kind == "outcome" else APPROVAL_DECISIONS
    if decision not in allowed:
        raise GateDecisionInvalid(run_id, gate, f"decision={decision!r} is not one of "
                                                f"{', '.join(allowed)}")
    takes_input = decision in ("edit", "done")
    if not takes_input:
        if input is not None:
            raise GateDecisionInvalid(run_id, gate, f"a {decision!r} decision takes no input; "
                                                    "decide 'edit' to change the data")
        return None
    if input is None and decision == "edit":
        raise GateDecisionInvalid(run_id, gate, "an 'edit' decision needs input=")
    if input_type is not None and input_type is not Any:
        try:
            value = msgspec.convert(msgspec.to_builtins(input), input_type)
        except (msgspec.ValidationError, TypeError) as error:
            raise GateDecisionInvalid(run_id, gate, f"the input does not fit "
                                                    f"{record.input_type}: {error}") from error
        return msgspec.json.encode(value)
    try:
        encoded = msgspec.json.encode(msgspec.to_builtins(input))
    except TypeError as error:
        raise GateDecisionInvalid(run_id, gate, f"the input cannot be stored as JSON: {error}") \
            from error
    stored = msgspec.json.decode(encoded)  # the input as the run will read it
    if record.input_schema is not None:
        found = _schema_check.problems(msgspec.json.decode(record.input_schema), stored)
        if found:
            raise GateDecisionInvalid(run_id, gate, f"the input does not fit "
                                                    f"{record.input_type}: {'; '.join(found)}")
    if tool is not None and decision == "edit":
        _check_arguments(record, tool, stored)
    return encoded


def check_by(record: GateRecord, by: Any) -> None:
    """Refuse a `by` that is not a name: it goes into the audit trail and the logs, where a
    control character could forge lines or drive a terminal.

    Raises:
        GateDecisionInvalid: `by` is empty, not a str, longer than `MAX_BY` (leading and
            trailing blanks aside) or not printable.
    """
    run_id, gate = record.run_id, record.gate
    if not isinstance(by, str) or not by.strip():
        raise GateDecisionInvalid(run_id, gate, "by= must name who decides (a non-empty "
                                                "string), for the audit trail")
    if len(by.strip()) > MAX_BY:
        raise GateDecisionInvalid(run_id, gate, f"by= must be a name of at most {MAX_BY} "
                                                f"characters, got {len(by.strip())}")
    unprintable = next((at for at, char in enumerate(by) if not char.isprintable()), None)
    if unprintable is not None:
        raise GateDecisionInvalid(run_id, gate, (
            f"by= must be printable text, but holds {by[unprintable]!r} at position "
            f"{unprintable}: name who decides without control or formatting characters"))


def check_comment(record: GateRecord, comment: Any) -> None:
    """Refuse a comment that is not text, or holds control characters other than newlines
    and tabs (they could drive a terminal that shows the audit trail).

    Raises:
        GateDecisionInvalid: naming the type, or the character and its position.
    """
    if comment is None:
        return
    if not isinstance(comment, str):
        raise GateDecisionInvalid(record.run_id, record.gate,
                                  f"comment= must be text, got {type(comment).__name__}")
    control = next((at for at, char in enumerate(comment)
                    if _is_control(char) and char not in _COMMENT_BREAKS), None)
    if control is not None:
        raise GateDecisionInvalid(record.run_id, record.gate, (
            f"comment= holds the control character {comment[control]!r} at position "
            f"{control}; only newlines and tabs may break its text"))


def _is_control(char: str) -> bool:
    """A C0 or C1 control character, DEL, a Unicode line or paragraph separator, or a
    bidirectional override (which can make the text read differently from what it holds)."""
    return (char < " " or "\x7f" <= char <= "\x9f" or char in "\u2028\u2029"
            or "\u202a" <= char <= "\u202e" or "\u2066" <= char <= "\u2069")


def _check_arguments(record: GateRecord, tool: ToolSpec, arguments: Any) -> None:
    """Refuse an edit that cannot be the keyword arguments of `tool`, which it replaces:
    checked with the tool's own `bind`, so it fails here, not when the step calls the tool.

    Raises:
        GateDecisionInvalid: naming the tool and what does not fit.
    """
    if not isinstance(arguments, dict):
        raise GateDecisionInvalid(record.run_id, record.gate, (
            f"an edit replaces the arguments of tool {tool.name!r}, so it must be a mapping of "
            f"argument names to values, got {type(arguments).__name__}"))
    try:
        tool.bind(arguments)
    except ToolArgumentsInvalid as error:
        raise GateDecisionInvalid(record.run_id, record.gate, (
            f"an edit replaces the arguments of tool {tool.name!r}, and these do not fit: "
            f"{error}")) from error


class Gates:
    """The system's gates (`system.gates`): decide, query, notify, time out.

    Args:
        pipelines: the system's pipelines (for the store, registry and resuming).
        clock: wall-clock seconds since the epoch (injectable for tests).
    """

    def __init__(self, pipelines: Pipelines, *, clock: Callable[[], float] = time.time) -> None:
        self._pipelines = pipelines
        self._clock = clock
        self._store: GateStore | None = None
        self._callbacks: list[OnOpen] = []
        self._timer: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._webhooks: list[Webhook] = []

    @property
    def store(self) -> GateStore:
        if self._store is None:
            system = self._pipelines.system
            if system.store is None:
                raise ConfigurationError(
                    "gates need a store to keep waiting runs; pass ActorSystem(store=...)")
            self._store = GateStore(system.store, clock=self._clock)
        return self._store

    # --- opening ----------------------------------------------------------------------

    def new_record(self, pipeline: Pipeline, run_id: str, name: str, step: str, kind: str,
                   gate: Gate, *, reason: str, shown: Any, input_type: Any,
                   tool: str | None = None, key: str | None = None) -> GateRecord:
        """The record of a gate opening now."""
        now = self._clock()
        schema = None
        if input_type is not None and input_type is not Any:
            schema = msgspec.json.encode(_schema_check.schema_of(input_type))
        return GateRecord(
            run_id=run_id, gate=name, pipeline=pipeline.name, step=step, gate_kind=kind,
            reason=reason, assignees=list(gate.assignees), opened_at=now,
            deadline=None if gate.timeout is None or kind == "outcome" else now + gate.timeout,
            on_timeout=timeout_chain(gate.on_timeout),
            input_type=None if schema is None else getattr(input_type, "__name__", str(input_type)),
            input_schema=schema, shown=_SHOWN.encode(shown), tool=tool, key=key,
            history=[_opened(now, gate)])

    def on_open(self, callback: OnOpen) -> None:
        """Call `callback(record)` (a function or a coroutine function) for each gate that
        opens in this process, and again when one escalates. Its errors are logged.

        At most once, in this process only: a callback that fails, or a process that stops
        before it ran, is not called again (a webhook's delivery is at least once; see
        `add_webhook`)."""
        if not callable(callback):
            raise ConfigurationError(f"on_open needs a function, got {callback!r}")
        self._callbacks.append(callback)

    def opened(self, records: list[GateRecord]) -> None:
        """Called when gates opened (or escalated): notify, and let the timer see their
        deadlines."""
        if any(r.deadline is not None for r in records):
            self.start_timer()
            if self._wake is not None:
                self._wake.set()
        for record in records:
            # Not the reason: it may quote the run's data, which stays out of logs.
            _log.info("gate_opened", run_id=record.run_id, gate=record.gate,
                      assignees=record.assignees)
            for callback in self._callbacks:
                self._notify(callback, record)

    def _notify(self, callback: OnOpen, record: GateRecord) -> None:
        # In a context of its own: not part of whatever message or run the opener handles.
        context = contextvars.Context()
        try:
            outcome = context.run(callback, record)
        except Exception as error:
            _log.error("gate_notification_failed", run_id=record.run_id, gate=record.gate,
                       error_type=type(error).__name__, error=str(error))
            return
        if inspect.isawaitable(outcome):
            system = self._pipelines.system
            task = system.loop.create_task(self._await_notification(outcome, record),
                                           context=context)
            system.engine.own(task)

    async def _await_notification(self, outcome: Awaitable[None], record: GateRecord) -> None:
        try:
            await outcome
        except Exception as error:
            _log.error("gate_notification_failed", run_id=record.run_id, gate=record.gate,
                       error_type=type(error).__name__, error=str(error))

    # --- deciding ---------------------------------------------------------------------

    async def decide(self, run_id: str, gate: str, decision: str, *, input: Any = None,
                     by: str, comment: str | None = None) -> GateRecord:
        """Decide gate `gate` of run `run_id`, store it with its audit record, and resume
        the run (here, if its pipeline is registered; else in the next process that
        registers it with `resume=True`).

        Args:
            decision: "approve", "reject" or "edit" ("done", "not_done" or "abandon" at an
                outcome gate).
            input: an edit's data (it must fit the gate's `input_type`), or at an outcome
                gate, with "done", the tool's result.
            by: who decides: printable text of at most `MAX_BY` characters.
            comment: why, for the audit trail: text whose only control characters are
                newlines and tabs (it stays out of the logs).

        Returns:
            The gate's record as stored. Deciding again the same way changes nothing.

        Raises:
            RunNotFound: no such run.
            GateNotFound: the run has no gate of that name.
            GateDecisionInvalid: an unknown decision, a `by` or `comment` that breaks the
                rules above, or an input that does not fit.
            GateAlreadyDecided: a different decision was made first.
            GateClosed: the run was cancelled while it waited, or ended at another gate or
                step.
        """
        return await self._decide(run_id, gate, decision, input=input, by=by, comment=comment)

    async def _decide(self, run_id: str, gate: str, decision: str, *, input: Any, by: str,
                      comment: str | None, timed_out: bool = False) -> GateRecord:
        pipelines = self._pipelines
        record_of_run = await pipelines.runs.get(run_id)  # RunNotFound first
        record = await self.store.get(run_id, gate)
        check_comment(record, comment)
        if record.status == PENDING and record_of_run.status in ENDED:
            # Its run ended at another gate or step: a decision here would wake nothing.
            raise GateClosed(run_id, gate, f"its run ended {record_of_run.status} while it "
                                           "waited; nothing would act on a decision")
        pipeline = pipelines.registered(record_of_run.pipeline)
        input_type = tool = None
        if pipeline is not None:
            input_type = self.input_type(pipeline, record)
            tool = self.tool_of(pipeline, record)
        encoded = check_decision(record, decision, input, by, input_type, tool)
        stored = Decision(decision=decision, input=encoded, by=by.strip(), at=self._clock(),
                          comment=comment, timed_out=timed_out)
        unindex = [] if record.deadline is None else [
            self.store.unindex_op(record.deadline, run_id, gate)]

        def ops(resumes: bool) -> list[Op]:
            """The decision, and the run woken: `running` if it `resumes` here at once."""
            wake = _resume(pipelines.runs, run_id) if resumes else pipelines.runs.wake(run_id)
            return [self.store.decide_op(run_id, gate, stored), wake, *unindex]

        results = await pipelines.commit_decision(record_of_run, ops)
        after = msgspec.msgpack.decode(results[0], type=GateRecord)
        if record.status == PENDING:
            # Not the comment: free text stays out of logs, like the reason.
            _log.info("gate_decided", run_id=run_id, gate=gate, decision=decision,
                      by=stored.by, timed_out=timed_out)
        return after

    def input_type(self, pipeline: Pipeline, record: GateRecord) -> Any:
        """The type an input at `record` must fit, per the pipeline as loaded here."""
        step = pipeline.steps.get(record.step)
        if step is None:
            return None
        if record.gate_kind == "outcome":
            return step.output
        if record.gate_kind == "review":
            gate = step.review
            return gate.input_type if gate is not None and gate.input_type is not None \
                else step.output
        gate = step.gate
        if gate is None or record.tool is not None:  # the step's tool's gate opened
            tool = self.tool_of(pipeline, record)
            gate = None if tool is None else tool.gate
        return gate.input_type if isinstance(gate, Gate) else None

    def tool_of(self, pipeline: Pipeline, record: GateRecord) -> ToolSpec | None:
        """The tool whose arguments an edit at `record` replaces: a tool step's, at the gate
        before the step (None at other gates, or when the tool is not registered here)."""
        step = pipeline.steps.get(record.step)
        if step is None or step.tool is None or record.gate_kind != "step":
            return None
        registry = self._pipelines.system.tools.registry
        return registry.get(step.tool) if step.tool in registry.names() else None

    def decision_of(self, pipeline: Pipeline, record: GateRecord) -> GateDecision:
        """The decision stored in `record`, its input decoded as the gate's type.

        Raises:
            GateDecisionInvalid: the stored input does not decode as that type.
        """
        assert record.decision is not None and record.by is not None
        value = None
        if record.input is not None:
            kind = self.input_type(pipeline, record)
            try:
                value = msgspec.json.decode(record.input, type=Any if kind is None else kind)
            except msgspec.ValidationError as error:
                shown = getattr(kind, "__name__", None) or str(kind)  # the type now
                raise GateDecisionInvalid(record.run_id, record.gate, f"the decided input does "
                                          f"not fit {shown}: {error}") from error
        return GateDecision(record.decision, record.by, record.decided_at or 0.0, value,
                            record.comment)

    # --- queries ----------------------------------------------------------------------

    async def get(self, run_id: str, gate: str) -> GateRecord:
        """Gate `gate` of run `run_id`, with its decision and audit trail.

        Raises:
            GateNotFound: no such gate (the message lists the run's gates).
        """
        return await self.store.get(run_id, gate)

    async def pending(self, *, assignee: str | None = None, pipeline: str | None = None,
                      older_than: float | None = None,
                      damaged: list[RecordCorrupt] | None = None) -> list[GateRecord]:
        """The gates waiting for a decision, oldest first: only those assigned to `assignee`,
        of runs of `pipeline`, or open for more than `older_than` seconds.

        A gate record that does not decode is left out, so one damaged record hides no
        other gate: each is logged (`gate_unreadable`, naming it and `roost store check`)
        and its error appended to `damaged` when given (whatever its status, which cannot
        be read), so a listing can name it.

        Raises:
            ConfigurationError: `assignee` or `pipeline` is not a name (a str) or None, or
                `older_than` is not a number of seconds >= 0 or None.
        """
        for field, value in (("assignee", assignee), ("pipeline", pipeline)):
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(
                    f"gates.pending: {field} must be a name (a str) or None, got {value!r}")
        if older_than is not None:
            check_seconds("gates.pending", "older_than", older_than)
        cutoff = None if older_than is None else self._clock() - older_than
        unreadable: list[RecordCorrupt] = []
        records = await self.store.list(status=PENDING, damaged=unreadable)
        for error in unreadable:
            self._log_unreadable(error)
        if damaged is not None:
            damaged.extend(unreadable)
        found = [r for r in records
                 if (assignee is None or assignee in r.assignees)
                 and (pipeline is None or r.pipeline == pipeline)
                 and (cutoff is None or r.opened_at <= cutoff)]
        return sorted(found, key=lambda r: r.opened_at)

    def _log_unreadable(self, error: RecordCorrupt) -> None:
        """Log a gate record that does not decode, and what to do about it."""
        named = gate_of_key(error.key)
        where = {"key": repr(error.key)} if named is None else {"run_id": named[0],
                                                                 "gate": named[1]}
        _log.error("gate_unreadable", **where, error=error.error, what_to_do=(
            "the gate is left out of the pending gates: run `roost store check "
            f"{self._pipelines.system.store.path}` with the system and console that use the "
            "store stopped, and restore the store from a backup if it reports damage"))

    # --- deadlines --------------------------------------------------------------------

    def start_timer(self) -> None:
        """Start the system's gate timer (once): it applies every stored deadline as it
        passes, including those that passed while no process ran."""
        system = self._pipelines.system
        if self._timer is not None or system.store is None or not self._pipelines.system_running():
            return
        self._wake = asyncio.Event()
        self._timer = system.loop.create_task(self._run_timer(), name="roost-gate-timer")
        system.engine.own(self._timer)
        self._timer.add_done_callback(self._timer_ended)

    def _timer_ended(self, _: asyncio.Task[None]) -> None:
        self._timer = None

    async def _run_timer(self) -> None:
        assert self._wake is not None
        while True:
            try:
                delay = await self._fire_due()
            except StoreError as error:
                _log.error("gate_timer_failed", error_type=type(error).__name__, error=str(error))
                delay = _TIMER_RETRY
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def _fire_due(self) -> float:
        """Apply the deadlines that have passed; the seconds until the next one."""
        store = self.store
        while due := await store.due(self._clock()):
            for deadline, run_id, gate in due:
                try:
                    await self._expire(deadline, run_id, gate)
                except Exception as error:  # try again later; never lose the deadline
                    _log.error("gate_timeout_failed", run_id=run_id, gate=gate,
                               error_type=type(error).__name__, error=str(error))
                    await self._pipelines.system.store.commit([
                        store.unindex_op(deadline, run_id, gate),
                        store.index_op(self._clock() + _TIMER_RETRY, run_id, gate)])
        upcoming = await store.next_deadline()
        if upcoming is None:
            return _TIMER_MAX_SLEEP
        return min(_TIMER_MAX_SLEEP, max(0.0, upcoming - self._clock()))

    async def _expire(self, deadline: float, run_id: str, gate: str) -> None:
        """Apply gate `gate`'s timeout, if it still waits with this deadline."""
        store = self.store
        try:
            record = await store.get(run_id, gate)
        except LookupError:
            record = None
        if record is None or record.status != PENDING or record.deadline is None \
                or abs(record.deadline - deadline) > 0.002:
            await self._pipelines.system.store.commit([store.unindex_op(deadline, run_id, gate)])
            return
        step = record.on_timeout[0] if record.on_timeout else TimeoutStep("reject")
        if step.action == "escalate":
            now = self._clock()
            results = await self._pipelines.system.store.commit(store.escalate_op(record, now))
            if results[0] is None:
                return  # the gate went (its run was deleted)
            escalated = msgspec.msgpack.decode(results[0], type=GateRecord)
            if escalated.status != PENDING or escalated.history[-1].what != "escalated" \
                    or escalated.history[-1].at != now:
                return  # decided (or escalated by another timer) in the meantime
            _log.warning("gate_escalated", run_id=run_id, gate=gate, to=step.to)
            self.opened([escalated])
            return
        _log.warning("gate_timed_out", run_id=run_id, gate=gate, action=step.action)
        try:
            await self._decide(run_id, gate, step.action, input=None, by=TIMEOUT_DECIDER,
                               comment=f"no decision within the gate's timeout; {step.action}",
                               timed_out=True)
        except (RunNotFound, GateClosed):  # the run is gone, or ended while the gate waited
            await self._pipelines.system.store.commit([store.unindex_op(deadline, run_id, gate)])

    # --- webhooks ---------------------------------------------------------------------

    def add_webhook(self, url: str, *, secret: str | bytes, name: str = "gates",
                    timeout: float = 10.0, retry: Retry | None = DEFAULT_RETRY,
                    breaker: Breaker | None = DEFAULT_BREAKER) -> Webhook:
        """POST each gate that opens in this process, and each escalation, to `url` as
        signed JSON, at least once, through the tool proxy as tool `roost.webhook.<name>`;
        see `roost.pipelines.notify` (receivers check requests with `verify_signature`).

        Added while the system runs (as a process does at its start), it also sends, in
        the background, each pending gate's latest event (its opening or escalation) that
        it has not delivered yet, e.g. because an earlier process stopped first: with the
        key its first delivery used, so the tool ledger drops one that did arrive.

        Raises:
            ConfigurationError: `url` is not an absolute http(s) URL, `secret` is not a
                non-empty str or bytes, a webhook of that name exists, or an option is bad.
        """
        system = self._pipelines.system
        webhook = Webhook(url, secret=secret, name=name, tools=system.tools,
                          session=system.http_session, store=lambda: system.store,
                          clock=self._clock, timeout=timeout, retry=retry, breaker=breaker)
        if webhook.spec.name in system.tools.registry.names():
            raise ConfigurationError(f"a webhook named {name!r} was added already; pass "
                                     "add_webhook(name=...) to add another")
        system.tools.register(webhook.spec)
        self.on_open(webhook)
        self._webhooks.append(webhook)
        if system.store is not None and self._pipelines.system_running():
            self._start_catch_up(webhook)
        return webhook

    def catch_up(self) -> None:
        """At system start: every webhook added before it sends what it has not delivered
        (`add_webhook` starts this itself for a webhook added to a running system)."""
        for webhook in self._webhooks:
            self._start_catch_up(webhook)

    def _start_catch_up(self, webhook: Webhook) -> None:
        system = self._pipelines.system
        # In a context of its own, like `_notify`: not part of the caller's run.
        task = system.loop.create_task(self._catch_up(webhook), context=contextvars.Context(),
                                       name=f"roost-catch-up-{webhook.spec.name}")
        system.engine.own(task)

    async def _catch_up(self, webhook: Webhook) -> None:
        """Send what `webhook` has not delivered of the pending gates' latest events, oldest
        gate first, a few at a time; stop once its breaker is open (the rest wait for the
        next process)."""
        damaged: list[RecordCorrupt] = []
        try:
            records = await self.store.list(status=PENDING, damaged=damaged)
        except StoreError as error:
            _log.error("gate_catch_up_failed", tool=webhook.spec.name,
                       error_type=type(error).__name__, error=str(error))
            return
        if damaged:
            _log.error("gate_catch_up_skipped_damaged", tool=webhook.spec.name,
                       gates=len(damaged), error=str(damaged[0]))
        waiting = iter(sorted((r for r in records if not webhook.delivered(r)),
                              key=lambda r: r.opened_at))

        async def deliver() -> None:
            for record in waiting:  # shared: each gate is taken by one of the senders
                if not await self._deliver_pending(webhook, record):
                    return

        await asyncio.gather(*(deliver() for _ in range(_CATCH_UP_CONCURRENCY)))

    async def _deliver_pending(self, webhook: Webhook, record: GateRecord) -> bool:
        """Deliver `webhook`'s notification of `record`'s gate as it is stored now (one
        decided meanwhile is not announced); False when the webhook's breaker refused it."""
        try:
            found = await self.store.named(record.run_id, [record.gate])
            if found:  # else its run was deleted meanwhile
                await webhook(found[0])
        except ToolUnavailable as error:
            _log.warning("gate_catch_up_paused", tool=webhook.spec.name, run_id=record.run_id,
                         gate=record.gate, error=str(error))
            return False
        except Exception as error:
            _log.error("gate_notification_failed", run_id=record.run_id, gate=record.gate,
                       error_type=type(error).__name__, error=str(error))
        return True


def _resume(runs: RunStore, run_id: str) -> Update:
    """The write that makes a run `waiting` at a gate `running`, to commit with a decision
    when the run resumes in this process at once (its actor then has no status to write);
    a run in any other status is left as it is, as `RunStore.wake` leaves it."""
    running = runs.change(run_id, status=RunStatus.RUNNING, error=None)

    def resume(current: bytes | None) -> Any:
        if current is not None and _RUNS.decode(running.key, current).status != RunStatus.WAITING:
            return current
        return running.change(current)  # RunNotFound for a run that is gone

    return Update(running.db, running.key, resume)


def _opened(now: float, gate: Gate) -> GateEvent:
    return GateEvent(at=now, what="opened", detail=", ".join(gate.assignees) or None)
