"""What the console shows, read from a system and its store: one set of view records that
the JSON API encodes and the pages render, so both always agree.

Every payload a run carries (inputs, results, what a gate shows) is turned into plain
JSON-able data here, with a typed placeholder (`<Type>`) for what has no JSON form;
the pages escape it when they render it. A run's input and step results are shown as its
trace keeps them when the system has a `redact` hook (`_shown`). A run whose own record,
checkpoints, step results or gate records are damaged or missing is still shown: what its
other records hold, and a problem naming what could not be read and what to do. Likewise a list of
runs or gates shows the records it can read and names each one that does not decode; a
single gate whose record does not decode is a problem naming it (`unreadable`).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from functools import partial
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from roost.console.problems import Problem
from roost.errors import CheckpointCorrupt, RecordCorrupt
from roost.pipelines.run import RunProgress, load_progress
from roost.storage import (
    Checkpoint,
    GateRecord,
    RecordCodec,
    RunRecord,
    RunStore,
    SnapshotReader,
    checkpoint_key,
)
from roost.storage.gates import decode_gate, gate_of_key
from roost.tracing.query import Trace

_CHECKPOINT = RecordCodec(Checkpoint)
_ANY = msgspec.msgpack.Decoder()
_JSON_ANY = msgspec.json.Decoder()


def plain(value: Any) -> Any:
    """`value` as JSON-able data; what has no JSON form becomes `<TypeName>`."""
    return msgspec.to_builtins(value, enc_hook=lambda item: f"<{type(item).__name__}>",
                               builtin_types=(), str_keys=True)


# --- cursors --------------------------------------------------------------------------


def encode_cursor(value: str | None) -> str | None:
    """An opaque cursor for the page after `value` (None: no next page)."""
    if value is None:
        return None
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    """The position an `encode_cursor` cursor stands for.

    Raises:
        Problem: 400, a cursor this console did not give out.
    """
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = raw.decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise Problem(400, "Bad cursor", f"cursor {cursor[:40]!r} is not one this console gave "
                                         "out; start again without a cursor") from None
    if not value or "\x00" in value:
        raise Problem(400, "Bad cursor", f"cursor {cursor[:40]!r} is not one this console gave "
                                         "out; start again without a cursor")
    return value


# --- runs -----------------------------------------------------------------------------


class RunRow(msgspec.Struct, frozen=True):
    """One run in a list: where it is, how long it took, its steps, tokens and cost.

    `steps` counts the steps that ran (completed, failed, optional and failed), not those
    skipped or waiting at a gate; `roost runs` counts them the same way."""

    run_id: str
    pipeline: str
    status: str
    created_at: float
    updated_at: float
    seconds: float
    last_step: str | None
    failed_step: str | None
    error: str | None
    steps: int
    input_tokens: int
    output_tokens: int
    cost: float | None


class StepView(msgspec.Struct, frozen=True):
    """One step of a run: how it settled and its result (plain data)."""

    name: str
    # completed, skipped, optional_failure, waiting, outcome_unknown, failed, result_missing
    outcome: str
    result: Any = None
    error: str | None = None


class CheckpointView(msgspec.Struct, frozen=True):
    seq: int
    step: str
    timestamp: float
    bytes: int


class GateEventView(msgspec.Struct, frozen=True):
    at: float
    what: str
    by: str | None
    detail: str | None


class GateView(msgspec.Struct, frozen=True):
    """A gate as people see it: why, for whom, what to decide on, and what was decided."""

    run_id: str
    gate: str
    pipeline: str
    step: str
    kind: str
    status: str
    reason: str
    assignees: list[str]
    opened_at: float
    deadline: float | None
    input_type: str | None
    input_schema: Any
    shown: Any
    decision: str | None
    input: Any
    by: str | None
    decided_at: float | None
    comment: str | None
    history: list[GateEventView]


class RunView(msgspec.Struct, frozen=True):
    """One run in full: its row, input, steps, checkpoints and gates, and what of it the
    store could not give (shown beside the rest rather than failing the whole run)."""

    run: Annotated[RunRow | None, Meta(
        description="null when the run's own record does not decode (`problems` names it); "
                    "the steps, checkpoints and gates are then read from its other records")]
    input: Annotated[Any, Meta(description="null as well when the run's record does not "
                                           "decode")]
    steps: list[StepView]
    checkpoints: list[CheckpointView]
    gates: list[GateView]
    missing_results: Annotated[list[str], Meta(
        description="completed steps whose results the run's latest checkpoint names but the "
                    "store does not hold (pruned, or a damaged store); each is in `steps` "
                    "with the outcome `result_missing`")]
    problems: Annotated[list[str], Meta(
        description="what could not be read for this run (missing results, a checkpoint or "
                    "gate record that does not decode) and what to do; empty when all is well")]


def gate_view(record: GateRecord) -> GateView:
    return GateView(
        run_id=record.run_id, gate=record.gate, pipeline=record.pipeline, step=record.step,
        kind=record.gate_kind, status=record.status, reason=record.reason,
        assignees=list(record.assignees), opened_at=record.opened_at, deadline=record.deadline,
        input_type=record.input_type,
        input_schema=None if record.input_schema is None else _JSON_ANY.decode(record.input_schema),
        shown=_JSON_ANY.decode(record.shown),
        decision=record.decision,
        input=None if record.input is None else _JSON_ANY.decode(record.input),
        by=record.by, decided_at=record.decided_at, comment=record.comment,
        history=[GateEventView(e.at, e.what, e.by, e.detail) for e in record.history])


def _latest(snapshot: SnapshotReader, run_id: str) -> Checkpoint | None:
    prefix = run_id.encode() + b"\x00"
    for key, value in snapshot.scan("checkpoints", prefix=prefix, reverse=True):
        try:
            return _CHECKPOINT.decode(key, value)
        except RecordCorrupt:  # a damaged checkpoint: the row shows the record alone
            return None
    return None


def latest_progress(snapshot: SnapshotReader, run_id: str) -> RunProgress | None:
    """What run `run_id`'s latest checkpoint says it has done, or None without a readable
    one (a list row then shows the run's record alone)."""
    checkpoint = _latest(snapshot, run_id)
    if checkpoint is None:
        return None
    try:
        return load_progress(checkpoint)
    except Exception:  # a damaged checkpoint
        return None


def steps_run(record: RunRecord, progress: RunProgress | None) -> int:
    """How many of a run's steps ran: those completed, the optional ones that failed, and
    the step the run failed at (skipped steps and steps waiting at a gate did not run)."""
    ran = {record.failed_step} if record.failed_step is not None else set()
    if progress is not None:
        ran.update(progress.results, progress.stored, progress.failures)
    return len(ran)


def run_row(record: RunRecord, progress: RunProgress | None, tracer: Any) -> RunRow:
    usage = progress.usage if progress is not None else None
    ended = record.status in ("completed", "failed", "cancelled", "rejected")
    until = record.updated_at if ended else max(record.updated_at, time.time())
    return RunRow(
        run_id=record.run_id, pipeline=record.pipeline, status=str(record.status),
        created_at=record.created_at, updated_at=record.updated_at,
        seconds=max(0.0, until - record.created_at), last_step=record.last_step,
        failed_step=record.failed_step, error=_error_shown(tracer, record.error),
        steps=steps_run(record, progress),
        input_tokens=0 if usage is None else usage.input_tokens,
        output_tokens=0 if usage is None else usage.output_tokens,
        cost=None if usage is None else usage.cost)


async def runs_page(system: Any, *, status: str | None = None, pipeline: str | None = None,
                    since: float | None = None, until: float | None = None,
                    text: str | None = None, cursor: str | None = None,
                    limit: int = 50) -> tuple[list[RunRow], str | None, list[str]]:
    """A page of runs, newest first, with the cursor of the next page and a problem for
    each run record in the page's range that does not decode (left out of the rows).

    Raises:
        Problem: 400 for a bad cursor, limit or status.
    """
    damaged: list[RecordCorrupt] = []
    try:
        read_page = RunStore(system.store).page_reader(
            limit=limit, before=decode_cursor(cursor), status=status, pipeline=pipeline,
            since=since, until=until, text=text, damaged=damaged)
    except Problem:
        raise
    except ValueError as error:  # ConfigurationError: a bad limit or status
        raise Problem(400, "Bad request", str(error)) from None

    def read(snapshot: SnapshotReader
             ) -> tuple[list[RunRecord], str | None, list[RunProgress | None]]:
        records, after = read_page(snapshot)
        return records, after, [latest_progress(snapshot, record.run_id) for record in records]

    records, after, progress = await system.store.read(read)
    rows = [run_row(record, ran, system.tracer)
            for record, ran in zip(records, progress, strict=True)]
    return rows, encode_cursor(after), [damaged_record(error, system.store.path)
                                        for error in damaged]


def damaged_record(error: RecordCorrupt, store: str) -> str:
    """The problem of a run or gate record that does not decode, left out of a list."""
    return f"{record_name(error)} does not decode ({error.error}); it is left out of this " \
           f"list; {check_advice(store)}"


def unreadable(error: RecordCorrupt, store: str) -> Problem:
    """The answer when the record a request is about does not decode, so there is nothing
    to show: a 422 naming the record and what to do (the request itself is fine, and
    asking again will not help)."""
    return Problem(422, "Unreadable record", f"{record_name(error)} does not decode "
                                             f"({error.error}); {check_advice(store)}")


def record_name(error: RecordCorrupt) -> str:
    """The damaged record as people know it: the record of run `r`, or of gate `g` of run
    `r`; else by its kind and key (a key that is not text, or not a gate's run and name)."""
    if error.kind == "run":
        try:
            return f"the record of run {error.key.decode()!r}"
        except UnicodeDecodeError:
            pass
    named = gate_of_key(error.key) if error.kind == "gate" else None
    if named is not None:
        run_id, gate = named
        return f"the record of gate {gate!r} of run {run_id!r}"
    return f"the {error.kind} record at key {error.key!r}"


async def one_gate(system: Any, run_id: str, gate: str) -> GateView:
    """Gate `gate` of run `run_id`.

    Raises:
        GateNotFound: no such gate.
        Problem: 422, its record (or the JSON it holds) does not decode, named with what
            to do; or another of the run's gate records does not decode, so the run's
            gates cannot be listed in the not-found answer.
    """
    try:
        record = await system.gates.get(run_id, gate)
    except RecordCorrupt as error:
        raise unreadable(error, system.store.path) from None
    try:
        return gate_view(record)
    except msgspec.DecodeError as error:
        raise Problem(422, "Unreadable record",
                      f"the record of gate {gate!r} of run {run_id!r} holds JSON that does not "
                      f"decode ({error}); {check_advice(system.store.path)}") from None


async def run_view(system: Any, run_id: str) -> RunView:
    """Run `run_id` in full: everything its records hold, with a problem for each record
    that is missing or does not decode.

    Raises:
        RunNotFound: no such run.
    """
    damage = _Damage(run_id, system.store.path)
    try:
        record: RunRecord | None = await system.pipelines.runs.get(run_id)
    except RecordCorrupt as error:
        record = None
        damage.add(record_name(error), f"does not decode ({error.error}); the run's status, "
                                       "input and times cannot be shown, and the rest is read "
                                       "from its other records")
    stored = await system.store.read(partial(_run_records, run_id))
    checkpoints, latest = _checkpoints(stored.checkpoints, damage)
    progress = None if latest is None else _latest_progress(latest, damage)
    encoded = {} if progress is None else _encoded_results(progress, stored.results)
    missing = [name for name, raw in encoded.items() if raw is None]
    if missing:
        names = ", ".join(repr(name) for name in missing)
        many = len(missing) > 1
        damage.add(f"the results of steps {names} of run {run_id!r} are" if many
                   else f"the result of step {names} of run {run_id!r} is",
                   "not in the store (pruned, or the store was damaged), though the run's "
                   f"latest checkpoint names {'them' if many else 'it'} as done")
    shown = partial(_shown, system.tracer)
    return RunView(
        run=None if record is None else run_row(record, progress, system.tracer),
        input=None if record is None or record.input is None
        else shown("run.input", plain(_decode(record.input))),
        steps=_steps(record, progress, encoded, shown, partial(_error_shown, system.tracer)),
        checkpoints=[CheckpointView(c.seq, c.step, c.timestamp, len(c.state))
                     for c in checkpoints],
        gates=_gates(stored.gates, damage),
        missing_results=missing, problems=damage.problems)


class TraceView(Trace, frozen=True):
    """A run's trace as the console shows it: the trace, and a problem for each of its span
    records that does not decode (left out of `spans`, as other damaged records are left
    out of a list and named)."""

    problems: Annotated[list[str], Meta(
        description="the span records of this trace that do not decode and are left out of "
                    "`spans`, and what to do; empty when all is well")]


def trace_view(trace: Trace) -> TraceView:
    """`trace` with a problem naming each span record of it that does not decode."""
    problems = [f"a span record of this trace does not decode ({entry}); it is left out of "
                "the trace, and the rest is shown; restore the store from a backup if you "
                "need that span (`roost store check` does not read trace records)"
                for entry in trace.skipped]
    return TraceView(**msgspec.structs.asdict(trace), problems=problems)


class _RunRecords(msgspec.Struct, frozen=True):
    """A run's checkpoints, step results and gate records as stored, read in one snapshot."""

    checkpoints: list[tuple[bytes, bytes]]
    results: dict[str, bytes]
    gates: list[tuple[bytes, bytes]]


def _run_records(run_id: str, snapshot: SnapshotReader) -> _RunRecords:
    prefix = run_id.encode() + b"\x00"
    return _RunRecords(
        checkpoints=list(snapshot.scan("checkpoints", prefix=prefix)),
        results={key[len(prefix):].decode(errors="replace"): value
                 for key, value in snapshot.scan("results", prefix=prefix)},
        gates=list(snapshot.scan("gates", prefix=prefix)))


class _Damage:
    """The problems found reading one run, each saying what is wrong and what to do."""

    def __init__(self, run_id: str, store: str) -> None:
        self.run_id = run_id
        self.prefix = run_id.encode() + b"\x00"
        self.problems: list[str] = []
        self._check = check_advice(store)

    def add(self, what: str, wrong: str) -> None:
        self.problems.append(f"{what} {wrong}; {self._check}")


def check_advice(store: str) -> str:
    """What to do about a damaged record in the store at `store`."""
    return (f"run `roost store check {store}` (with the system and console that use the "
            "store stopped) to list every damaged record, and restore the store from a backup "
            "if it reports damage")


def _checkpoints(stored: list[tuple[bytes, bytes]], damage: _Damage
                 ) -> tuple[list[Checkpoint], Checkpoint | None]:
    """The checkpoints in `stored` that decode and fit their key, and the latest of them if
    it is the latest stored (None: there is none, or it is damaged)."""
    checkpoints = []
    latest = None
    last = len(stored) - 1
    for index, (key, value) in enumerate(stored):
        what = (f"checkpoint {int.from_bytes(key[len(damage.prefix):], 'big')} of run "
                f"{damage.run_id!r}")
        left_out = "it is left out" + (", and the steps shown are those the run's record "
                                       "keeps" if index == last else "")
        try:
            checkpoint = _CHECKPOINT.decode(key, value)
        except RecordCorrupt as error:
            damage.add(what, f"does not decode ({error.error}); {left_out}")
            continue
        if checkpoint_key(checkpoint.run_id, checkpoint.seq) != key:
            damage.add(what, f"says it is checkpoint {checkpoint.seq} of run "
                             f"{checkpoint.run_id!r}; {left_out}")
            continue
        checkpoints.append(checkpoint)
        if index == last:
            latest = checkpoint
    return checkpoints, latest


def _latest_progress(latest: Checkpoint, damage: _Damage) -> RunProgress | None:
    try:
        return load_progress(latest)
    except CheckpointCorrupt as error:
        damage.add(f"the latest checkpoint of run {damage.run_id!r} (checkpoint {latest.seq}, "
                   f"step {latest.step!r})",
                   f"does not hold a run's progress ({error.error}); the steps shown are "
                   "those the run's record keeps")
        return None


def _encoded_results(progress: RunProgress, stored: dict[str, bytes]
                     ) -> dict[str, msgspec.Raw | None]:
    """Every completed step's encoded result, in `progress`'s order: those it carries and
    those it names as stored; None for a result `stored` does not hold."""
    results: dict[str, msgspec.Raw | None] = dict(progress.results)
    for name in progress.stored:
        results[name] = msgspec.Raw(stored[name]) if name in stored else None
    return results


def _gates(stored: list[tuple[bytes, bytes]], damage: _Damage) -> list[GateView]:
    """The gates in `stored` that can be shown; a problem for each other."""
    gates = []
    for key, value in stored:
        what = (f"the record of gate {key[len(damage.prefix):].decode(errors='replace')!r} of "
                f"run {damage.run_id!r}")
        try:
            record = decode_gate(key, value)
            if record is not None:
                gates.append(gate_view(record))
        except RecordCorrupt as error:
            damage.add(what, f"does not decode ({error.error}); it is left out")
        except msgspec.DecodeError as error:
            damage.add(what, f"holds JSON that does not decode ({error}); it is left out")
    return gates


def _decode(data: bytes) -> Any:
    try:
        return _ANY.decode(data)
    except msgspec.DecodeError:
        return "<undecodable>"


def _shown(tracer: Any, name: str, value: Any) -> Any:
    """What the console shows of payload `name` (`run.input`, `step.output`): `value` as
    the system's tracer keeps it on a span (cut to its payload limit and passed through
    its `redact`, a failing hook leaving its placeholder), so that the console shows no
    more than the trace does; `value` itself when the system redacts nothing."""
    return value if tracer.redact is None else tracer.payload(name, value)


def _error_shown(tracer: Any, error: str | None) -> str | None:
    """What the console shows of a run's or step's error: its message as spans keep it
    (through the system's `redact`)."""
    return None if error is None else tracer.error_text(error)


def _steps(record: RunRecord | None, progress: RunProgress | None,
           encoded: dict[str, msgspec.Raw | None], shown: Callable[[str, Any], Any],
           error_shown: Callable[[str | None], str | None]) -> list[StepView]:
    """The run's steps, each result as `shown` makes it, each error as `error_shown` does."""
    if progress is None:  # no checkpoint (pruned, none yet, or damaged): the record's results
        results = _decode(record.result) if record is not None and record.result else {}
        steps = [StepView(str(name), "completed", shown("step.output", plain(value)))
                 for name, value in (results.items() if isinstance(results, dict) else [])]
    else:
        steps = [StepView(name, "completed", shown("step.output", plain(_decode(bytes(raw)))))
                 if raw is not None
                 else StepView(name, "result_missing", error="its result is not in the store")
                 for name, raw in encoded.items()]
        steps += [StepView(name, "optional_failure", error=error_shown(error))
                  for name, error in progress.failures.items()]
        steps += [StepView(name, "waiting",
                           shown("step.output", plain(_decode(bytes(progress.review_data[name]))))
                           if name in progress.review_data else None, error=error_shown(reason))
                  for name, reason in progress.reviews.items()]
        steps += [StepView(name, "outcome_unknown") for name in progress.unknown]
        steps += [StepView(name, "skipped") for name in progress.skipped]
    if record is not None and record.failed_step is not None \
            and all(s.name != record.failed_step for s in steps):
        steps.append(StepView(record.failed_step, "failed", error=error_shown(record.error)))
    return steps


async def gates_page(system: Any, *, status: str | None = "pending", assignee: str | None = None,
                     pipeline: str | None = None, older_than: float | None = None,
                     cursor: str | None = None, limit: int = 50
                     ) -> tuple[list[GateView], str | None, list[str]]:
    """A page of gates, oldest first (pending ones by default; decided ones are the audit
    trail), with the cursor of the next page and what could not be read: a problem for
    each gate record in the store that does not decode (it may belong to any page, so
    every page names it), and for each of the page's gates whose JSON does not decode."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise Problem(400, "Bad request", f"limit={limit!r} must be a whole number from 1 to 1000")
    status = status or "pending"
    store = system.gates.store
    damaged: list[RecordCorrupt] = []
    # The store's list, not `system.gates.pending`: that one fails on the first damaged record.
    records = [r for r in await store.list(status=status, damaged=damaged)
               if (assignee is None or assignee in r.assignees)
               and (pipeline is None or r.pipeline == pipeline)]
    if status == "pending":
        if older_than is not None:
            cutoff = store.clock() - older_than
            records = [r for r in records if r.opened_at <= cutoff]
        records.sort(key=lambda r: r.opened_at)
    else:
        records.sort(key=lambda r: r.decided_at or r.opened_at, reverse=True)
    problems = [damaged_record(error, system.store.path) for error in damaged]
    position = decode_cursor(cursor)
    start = 0
    if position is not None:
        keys = [f"{r.run_id}\x1f{r.gate}" for r in records]
        if position not in keys:
            raise Problem(400, "Bad cursor", "the cursor's gate is no longer in this list; "
                                             "start again without a cursor")
        start = keys.index(position) + 1
    page: list[GateView] = []
    after = None
    for record in records[start:]:
        if len(page) == limit:
            after = f"{page[-1].run_id}\x1f{page[-1].gate}"
            break
        try:
            page.append(gate_view(record))
        except msgspec.DecodeError as error:
            problems.append(f"the record of gate {record.gate!r} of run {record.run_id!r} holds "
                            f"JSON that does not decode ({error}); it is left out of this list; "
                            f"{check_advice(system.store.path)}")
    return page, encode_cursor(after), problems


# --- the live system ------------------------------------------------------------------


class ActorView(msgspec.Struct, frozen=True):
    """One actor in the supervision tree: where it is, how it is, and its children."""

    path: str
    name: str
    actor: str
    state: str  # new, running, suspended, stopping, stopped
    restarts: int
    mailbox: int
    busy: bool
    children: list[ActorView]


class BreakerRow(msgspec.Struct, frozen=True):
    """One tool's circuit breaker: its state, counts and the last error it counted.

    `opened_at` and `retry_at` are wall-clock seconds (converted from the system's clock);
    `retry_at` is null while closed or forced open."""

    tool: str
    state: str  # closed, open, half_open
    failures: int
    consecutive_failures: int
    successes: int
    rejected: int
    times_opened: int
    last_error: str | None
    opened_at: float | None
    retry_at: float | None


class DeadLetterView(msgspec.Struct, frozen=True):
    """One undelivered message: why, to and from whom, its type and error; never its content."""

    reason: str
    recipient: str
    sender: str | None
    message_type: str
    error: str | None
    crashes: int | None
    at: float


def actor_tree(system: Any) -> list[ActorView]:
    """The live supervision tree: the top-level actors, each with its children."""
    def view(node: dict[str, Any]) -> ActorView:
        return ActorView(path=node["path"], name=node["name"], actor=node["actor"],
                         state=node["state"], restarts=node["restarts"], mailbox=node["mailbox"],
                         busy=node["busy"], children=[view(c) for c in node["children"]])

    return [view(node) for node in system.actor_tree()]


def breaker_row(system: Any, tool: str) -> BreakerRow:
    """Tool `tool`'s breaker.

    Raises:
        Problem: 404, no such tool or the tool has no breaker.
    """
    registry = system.tools.registry
    if tool not in registry.names() or registry.get(tool).breaker is None:
        with_breakers = [n for n in registry.names() if registry.get(n).breaker is not None]
        raise Problem(404, "Not found", f"no tool {tool!r} with a circuit breaker; tools with "
                                        f"one: {', '.join(with_breakers) or 'none'}")
    view = system.tools.breaker(tool)
    stats = view.statistics()
    error = view.last_error
    return BreakerRow(
        tool=tool, state=str(stats.state), failures=stats.failures,
        consecutive_failures=stats.consecutive_failures, successes=stats.successes,
        rejected=stats.rejected, times_opened=stats.times_opened,
        last_error=None if error is None else f"{type(error).__name__}: {error}",
        opened_at=_wall(system, stats.opened_at), retry_at=_wall(system, stats.retry_at))


def breaker_rows(system: Any) -> list[BreakerRow]:
    """Every registered tool's breaker (tools without one are left out), by tool name."""
    registry = system.tools.registry
    return [breaker_row(system, name) for name in registry.names()
            if registry.get(name).breaker is not None]


def _wall(system: Any, clock_time: float | None) -> float | None:
    """A time of the system's (monotonic) clock as seconds since the epoch."""
    if clock_time is None or clock_time in (float("inf"), float("-inf")):
        return None
    return time.time() - (system.clock() - clock_time)


def dead_letters(system: Any, *, limit: int = 100) -> list[DeadLetterView]:
    """The most recent dead letters kept, newest first (at most `limit`)."""
    letters = system.dead_letters.recent()[-limit:]
    return [DeadLetterView(
        reason=letter.reason, recipient=letter.recipient, sender=letter.sender,
        message_type=type(letter.message).__name__,
        error=None if letter.error is None else f"{type(letter.error).__name__}: {letter.error}",
        crashes=letter.crashes, at=letter.at) for letter in reversed(letters)]
