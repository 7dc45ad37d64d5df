"""Gate records: the gates runs wait at, their deadlines and their audit trail.

A gate is stored in the `gates` database under `run id + 0x00 + gate name`, so a
run's gates are one prefix scan. Gates with a deadline also have an index entry
under `0xff + 8-byte big-endian deadline (ms) + run id + 0x00 + gate name` (run ids
are UTF-8, which never holds 0xff), so the system's one gate timer finds the next
deadline with one cursor seek, however many gates wait. An index entry may outlive
its gate's deadline (the gate was decided or escalated): whoever reads it checks the
gate itself.
"""

from __future__ import annotations

import builtins
import functools
import time
from collections.abc import Callable, Iterable

import msgspec

from roost.errors import (
    ConfigurationError,
    GateAlreadyDecided,
    GateClosed,
    GateNotFound,
    RecordCorrupt,
)
from roost.storage._keys import SEQ_SIZE, pack_seq, unpack_seq
from roost.storage.codecs import Record, RecordCodec
from roost.storage.ops import Changed, Delete, Op, Put, Update
from roost.storage.store import Store

_DB = "gates"
_SEPARATOR = b"\x00"
_INDEX = b"\xff"

PENDING, DECIDED, CLOSED = "pending", "decided", "closed"


class TimeoutStep(msgspec.Struct, frozen=True, gc=False):
    """One link of a gate's timeout chain: approve, reject, or escalate to `to` for `timeout`."""

    action: str
    to: list[str] = []
    timeout: float | None = None


class GateEvent(msgspec.Struct, frozen=True, gc=False):
    """One entry of a gate's audit trail: opened, escalated, decided, closed."""

    at: float
    what: str
    by: str | None = None
    detail: str | None = None


class GateRecord(Record, tag="gate", frozen=True, kw_only=True, gc=False):
    """A gate a run reached, and what became of it.

    Attributes:
        run_id, gate, pipeline, step: where it is (`gate` is the step's name, or
            `<step>/review`, `<step>/outcome`).
        gate_kind: "step" (before the step), "review" (a step's `NeedsReview`) or "outcome"
            (a tool's unknown outcome).
        status: "pending", "decided" or "closed" (its run was cancelled).
        reason: why it is there, as shown to people.
        assignees: who should decide (after escalations, the latest).
        opened_at: when it opened, in seconds since the epoch.
        deadline: when `on_timeout`'s first link applies (None: never).
        on_timeout: the timeout chain still to apply.
        input_type: the name of the type an edit must fit; `input_schema` its JSON Schema.
        shown: JSON of the data the person decides on.
        tool, key: the tool call an outcome gate asks about; `tool` alone: the tool whose own
            gate this is (it opened because the step's gate did not).
        decision, input, by, decided_at, comment: the decision (`input` as JSON).
        history: the audit trail.
    """

    run_id: str
    gate: str
    pipeline: str
    step: str
    gate_kind: str = "step"
    status: str = PENDING
    reason: str = ""
    assignees: list[str] = []
    opened_at: float
    deadline: float | None = None
    on_timeout: list[TimeoutStep] = []
    input_type: str | None = None
    input_schema: bytes | None = None
    shown: bytes = b"null"
    tool: str | None = None
    key: str | None = None
    decision: str | None = None
    input: bytes | None = None
    by: str | None = None
    decided_at: float | None = None
    comment: str | None = None
    history: list[GateEvent] = []


_CODEC = RecordCodec(GateRecord)


def gate_key(run_id: str, gate: str) -> bytes:
    """The key of gate `gate` of run `run_id`."""
    return run_id.encode() + _SEPARATOR + gate.encode()


def gate_of_key(key: bytes) -> tuple[str, str] | None:
    """The run id and gate name a gate record's key holds, or None if it holds no such
    pair (a damaged key: no separator, an empty part, or bytes that are not UTF-8)."""
    run_id, separator, gate = key.rpartition(_SEPARATOR)  # gate names hold no NUL
    if not (separator and run_id and gate):
        return None
    try:
        return run_id.decode(), gate.decode()
    except UnicodeDecodeError:
        return None


def deadline_key(deadline: float, run_id: str, gate: str) -> bytes:
    """The deadline index key of a gate."""
    return _INDEX + pack_seq(max(0, round(deadline * 1000))) + gate_key(run_id, gate)


def decode_gate(key: bytes, value: bytes) -> GateRecord | None:
    """A `gates` entry: the gate record, or None for a deadline index entry.

    Raises:
        RecordCorrupt: a gate record that does not decode, naming its key.
    """
    if key.startswith(_INDEX):
        return None
    return _CODEC.decode(key, value)


class Decision(msgspec.Struct, frozen=True, gc=False):
    """A decision to store: what, the input as JSON, who, when, and a comment."""

    decision: str
    input: bytes | None
    by: str
    at: float
    comment: str | None = None
    timed_out: bool = False


class GateStore:
    """Opens, reads, decides and closes gates in a `Store`.

    Args:
        store: the open store.
        clock: wall-clock time in seconds since the epoch (injectable for tests).
    """

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.clock = clock

    # --- writes (operations, to commit with the run's own writes) ----------------------

    def open_ops(self, record: GateRecord, *, seen: GateRecord | None = None,
                 decided: set[str] | None = None) -> builtins.list[Op]:
        """Store `record` as opened; a gate of that name already pending stays as it is
        (a run that parks again at it keeps its first opening time and deadline).

        `seen` is the gate's record as the parking run last read it. If that was pending
        and a decision has landed since (the run was resumed by another gate's decision
        and is parking again), the decision stays and the gate's name is added to
        `decided`, which the run's `RunStore.park` reads in the same write.
        """
        key = gate_key(record.run_id, record.gate)
        encoded = _CODEC.encode(record)
        deadline = () if record.deadline is None else (
            Put(_DB, deadline_key(record.deadline, record.run_id, record.gate), b""),)

        def open_gate(current: bytes | None) -> Changed:
            if current is not None:
                stored = _CODEC.decode(key, current)
                if stored.status == PENDING:
                    return current
                if (seen is not None and seen.status == PENDING and stored.status == DECIDED
                        and stored.opened_at == seen.opened_at):
                    if decided is not None:
                        decided.add(record.gate)
                    return current
            return encoded, deadline

        return [Update(_DB, key, open_gate)]

    def decide_op(self, run_id: str, gate: str, decision: Decision) -> Update:
        """The operation that records `decision`: a no-op when the same decision is there
        (the same input, whatever the order of its keys), `GateAlreadyDecided` for a
        different one, `GateClosed` for a closed gate, `GateNotFound` when the run has no
        such gate."""
        key = gate_key(run_id, gate)

        def decide(current: bytes | None) -> bytes:
            if current is None:
                raise GateNotFound(run_id, gate, [])
            record = _CODEC.decode(key, current)
            if record.status == CLOSED:
                raise GateClosed(run_id, gate, _closed_why(record))
            if record.status == DECIDED:
                if record.decision == decision.decision and _same_input(record.input,
                                                                        decision.input):
                    return current
                raise GateAlreadyDecided(run_id, gate, record.decision or "?", record.by or "?")
            event = GateEvent(at=decision.at, what="timed_out" if decision.timed_out else "decided",
                              by=decision.by, detail=decision.decision)
            return _CODEC.encode(msgspec.structs.replace(
                record, status=DECIDED, decision=decision.decision, input=decision.input,
                by=decision.by, decided_at=decision.at, comment=decision.comment,
                history=[*record.history, event]))

        return Update(_DB, key, decide)

    def escalate_op(self, record: GateRecord, now: float) -> builtins.list[Op]:
        """Hand a pending gate to its timeout chain's next `escalate` link: new assignees,
        a new deadline (the old index entry goes)."""
        step = record.on_timeout[0]
        assert step.timeout is not None
        deadline = now + step.timeout
        key = gate_key(record.run_id, record.gate)
        expected = record.deadline

        def escalate(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            stored = _CODEC.decode(key, current)
            if stored.status != PENDING or stored.deadline != expected:
                return current  # decided or escalated meanwhile
            event = GateEvent(at=now, what="escalated", by="roost:timeout",
                              detail=", ".join(step.to))
            return _CODEC.encode(msgspec.structs.replace(
                stored, assignees=list(step.to), deadline=deadline,
                on_timeout=stored.on_timeout[1:], history=[*stored.history, event]))

        ops: builtins.list[Op] = [Update(_DB, key, escalate),
                                  Put(_DB, deadline_key(deadline, record.run_id, record.gate), b"")]
        if expected is not None:
            ops.append(Delete(_DB, deadline_key(expected, record.run_id, record.gate)))
        return ops

    def close_ops(self, records: builtins.list[GateRecord], why: str) -> builtins.list[Op]:
        """Close the pending gates among `records` (their run ended or was cancelled): they
        can no longer be decided. Each write closes its gate as stored when it applies, so
        one decided meanwhile keeps its decision (and a damaged record is left as it is)."""
        return [Update(_DB, key, functools.partial(self._close_if_pending, key, why))
                for key in (gate_key(r.run_id, r.gate) for r in records if r.status == PENDING)]

    def _close_if_pending(self, key: bytes, why: str, current: bytes | None) -> Changed:
        if current is None:
            return None
        try:
            record = _CODEC.decode(key, current)
        except RecordCorrupt:
            return current
        if record.status != PENDING:
            return current
        closed = msgspec.structs.replace(record, status=CLOSED, history=[
            *record.history, GateEvent(at=self.clock(), what="closed", detail=why)])
        unindex = [] if record.deadline is None else [
            Delete(_DB, deadline_key(record.deadline, record.run_id, record.gate))]
        return _CODEC.encode(closed), unindex

    def index_op(self, deadline: float, run_id: str, gate: str) -> Put:
        """Add a deadline index entry (the timer retries a deadline it could not apply)."""
        return Put(_DB, deadline_key(deadline, run_id, gate), b"")

    def unindex_op(self, deadline: float, run_id: str, gate: str) -> Delete:
        """Remove a deadline index entry."""
        return Delete(_DB, deadline_key(deadline, run_id, gate))

    # --- reads ------------------------------------------------------------------------

    async def get(self, run_id: str, gate: str) -> GateRecord:
        """Gate `gate` of run `run_id`.

        Raises:
            GateNotFound: no such gate (the message lists the run's gates).
            RecordCorrupt: the record does not decode.
        """
        _check_name("run id", run_id)
        _check_name("gate", gate)
        key = gate_key(run_id, gate)
        data = await self._store.get(_DB, key)
        if data is None:
            raise GateNotFound(run_id, gate, [r.gate for r in await self.of_run(run_id)])
        return _CODEC.decode(key, data)

    async def of_run(self, run_id: str, *, damaged: builtins.list[RecordCorrupt] | None = None
                     ) -> builtins.list[GateRecord]:
        """Every gate run `run_id` reached, by name.

        Without `damaged`, a record that does not decode raises `RecordCorrupt`; with it,
        such a record is left out and its error appended there.
        """
        prefix = run_id.encode() + _SEPARATOR
        found: builtins.list[GateRecord] = []
        async for key, value in self._store.scan(_DB, prefix=prefix):
            try:
                found.append(_CODEC.decode(key, value))
            except RecordCorrupt as error:
                if damaged is None:
                    raise
                damaged.append(error)
        return found

    async def named(self, run_id: str, gates: Iterable[str]) -> builtins.list[GateRecord]:
        """The records of the gates of run `run_id` named in `gates` (those that exist), in
        that order: a point read each, like `get` (on the event loop, with LMDB), where
        `of_run` scans (a worker thread hop). A resumed run reads its gates this way
        before its next step can start."""
        found = []
        for gate in gates:
            key = gate_key(run_id, gate)
            data = await self._store.get(_DB, key)
            if data is not None:
                found.append(_CODEC.decode(key, data))
        return found

    async def list(self, *, status: str | None = None,
                   damaged: builtins.list[RecordCorrupt] | None = None
                   ) -> builtins.list[GateRecord]:
        """Every gate (optionally only those with `status`), by run id and name.

        Without `damaged`, a record that does not decode raises `RecordCorrupt`. With it,
        such records are skipped and their errors appended to `damaged` (whatever their
        status), so a list can show the gates it can read and name the others.
        """
        return [record async for record in _CODEC.decode_all(
                    self._store.scan(_DB, stop=_INDEX), damaged)
                if status is None or record.status == status]

    async def due(self, now: float, limit: int = 256) -> builtins.list[tuple[float, str, str]]:
        """Deadline index entries at or before `now`: (deadline, run id, gate), earliest first."""
        stop = _INDEX + pack_seq(round(now * 1000) + 1)
        return [_unindex(key) async for key, _ in self._store.scan(
            _DB, prefix=_INDEX, stop=stop, limit=limit)]

    async def next_deadline(self) -> float | None:
        """The earliest deadline in the index (None: no gate has one)."""
        async for key, _ in self._store.scan(_DB, prefix=_INDEX, limit=1):
            return _unindex(key)[0]
        return None


def _unindex(key: bytes) -> tuple[float, str, str]:
    deadline = unpack_seq(key[1:1 + SEQ_SIZE]) / 1000
    run_id, _, gate = key[1 + SEQ_SIZE:].partition(_SEPARATOR)
    return deadline, run_id.decode(), gate.decode()


def _same_input(stored: bytes | None, given: bytes | None) -> bool:
    """Whether two decisions' inputs (JSON) hold the same data: compared as JSON with the
    keys of every object sorted, so that `1` and `1.0`, or `true` and `1`, still differ."""
    if stored is None or given is None:
        return stored == given
    return (msgspec.json.encode(msgspec.json.decode(stored), order="sorted")
            == msgspec.json.encode(msgspec.json.decode(given), order="sorted"))


def _closed_why(record: GateRecord) -> str:
    closed = next((event for event in reversed(record.history) if event.what == "closed"), None)
    return closed.detail or "closed" if closed is not None else "closed"


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value or "\x00" in value:
        raise ConfigurationError(f"{what} {value!r} must be a non-empty string without NUL")


#: The audit-trail event that notes a webhook's delivery (`by`: its tool; `detail`: the key).
NOTIFIED = "notified"


def notified(record: GateRecord, by: str, key: str) -> bool:
    """Whether `record`'s audit trail notes that `by` delivered the notification keyed `key`."""
    return any(event.what == NOTIFIED and event.by == by and event.detail == key
               for event in record.history)


def notified_op(record: GateRecord, by: str, key: str, at: float) -> Update:
    """The operation that notes in the audit trail of gate `record` that `by` (a webhook's
    tool) delivered its notification keyed `key` at `at`, so that no later process sends it
    again. It changes nothing when the note is there, the gate was opened again since (the
    note belongs to an earlier opening) or the gate is gone."""
    key_of_gate = gate_key(record.run_id, record.gate)

    def note(current: bytes | None) -> bytes | None:
        if current is None:
            return None
        stored = _CODEC.decode(key_of_gate, current)
        if stored.opened_at != record.opened_at or notified(stored, by, key):
            return current
        event = GateEvent(at=at, what=NOTIFIED, by=by, detail=key)
        return _CODEC.encode(msgspec.structs.replace(stored, history=[*stored.history, event]))

    return Update(_DB, key_of_gate, note)
