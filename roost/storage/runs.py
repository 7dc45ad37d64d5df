"""Run records: the status and history of each pipeline run, keyed by run id.

The `runs` database also holds the index of ended runs (see `roost.storage._run_index`),
written with the status change that ends a run, so that the retention sweep of ended
runs (`RunStore.sweep_ended`) reads only the runs that are due, however many are stored.
"""

from __future__ import annotations

import builtins
import enum
import time
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from roost.errors import ConfigurationError, RecordCorrupt, RunNotFound, StoreError
from roost.storage import _run_index
from roost.storage._interface import SnapshotReader, StoreInterface
from roost.storage.codecs import Record, RecordCodec
from roost.storage.ops import Changed, Delete, Op, Put, Update
from roost.storage.store import Snapshot

_DB = "runs"
# Index entries a sweep handles per read and per commit.
_SWEEP_CHUNK = 256


class RunStatus(enum.StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"  # accepted, waiting for a slot (see ActorSystem(max_active_runs=...))
    RUNNING = "running"
    SUSPENDED = "suspended"
    WAITING = "waiting"  # parked at a gate for a person's decision (no actor, no task)
    NEEDS_REVIEW = "needs_review"  # ended waiting for a person (stores of roost before gates)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"  # a person (or a gate's timeout) rejected it at a gate


#: The statuses of runs that can never go on: reaching one indexes the run as ended.
ENDED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED,
                   RunStatus.REJECTED})


class RunRecord(Record, tag="run", frozen=True, kw_only=True, gc=False):
    """The stored record of one run.

    Attributes:
        run_id: the run's id.
        pipeline: the name of the pipeline it runs.
        status: where it is in its life.
        created_at: when it was created, in seconds since the epoch.
        updated_at: when it last changed, in seconds since the epoch.
        last_step: the last step it completed, if any.
        failed_step: the step that made it fail, if it did.
        error: why it failed, if it did.
        input: its input bytes, if kept.
        result: its result bytes, once it has one.
    """

    run_id: str
    pipeline: str
    status: RunStatus
    created_at: float
    updated_at: float
    last_step: str | None = None
    failed_step: str | None = None
    error: str | None = None
    input: bytes | None = None
    result: bytes | None = None


class RunStore:
    """Creates, reads and updates run records in a `Store`.

    Creations and updates are read-modify-writes done in the writer thread's
    transaction, so concurrent updates of one run never lose each other's changes.

    Args:
        store: the open store.
        clock: wall-clock time in seconds since the epoch (injectable for tests).
    """

    def __init__(self, store: StoreInterface, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    async def create(self, run_id: str, *, pipeline: str, input: bytes | None = None,
                     status: RunStatus | str = RunStatus.RUNNING,
                     durable: bool | None = None) -> RunRecord:
        """Store a new run record and wait until it is stored.

        Raises:
            ConfigurationError: an invalid run id or status, or a run with this id exists.
            StoreError: the write failed.
        """
        key = self._key(run_id)
        now = self._clock()
        record = RunRecord(run_id=run_id, pipeline=pipeline, status=_status(status),
                           created_at=now, updated_at=now, input=input)
        encoded = _CODEC.encode(record)
        entry = self._index_entry(now, key) if record.status in ENDED else None

        def create(current: bytes | None) -> Changed:
            if current is not None:
                raise ConfigurationError(f"a run with id {run_id!r} already exists in the store "
                                         f"at {self._store.path!r}; run ids must be unique")
            return encoded if entry is None else (encoded, (Put(_DB, entry, b""),))

        await self._store.commit([Update(_DB, key, create)], durable=durable)
        return record

    async def get(self, run_id: str) -> RunRecord:
        """The record of run `run_id` (a point read on the event loop).

        Raises:
            RunNotFound: no run has this id.
            RecordCorrupt: the record does not decode.
        """
        key = self._key(run_id)
        data = await self._store.get(_DB, key)
        if data is None:
            raise RunNotFound(run_id)
        return _CODEC.decode(key, data)

    async def update(self, run_id: str, *, status: RunStatus | str | UnsetType = UNSET,
                     last_step: str | UnsetType | None = UNSET,
                     error: str | UnsetType | None = UNSET,
                     result: bytes | UnsetType | None = UNSET,
                     failed_step: str | UnsetType | None = UNSET,
                     durable: bool | None = None) -> RunRecord:
        """Change the given fields of run `run_id` (and its `updated_at`); wait until stored.

        Only the fields passed change; pass None to clear `last_step`, `error`, `result`
        or `failed_step`.

        Returns:
            The updated record.

        Raises:
            ConfigurationError: an invalid status.
            RunNotFound: no run has this id.
            RecordCorrupt: the stored record does not decode.
            StoreError: the write failed.
        """
        change = self.change(run_id, status=status, last_step=last_step, error=error,
                             result=result, failed_step=failed_step)
        [stored] = await self._store.commit([change], durable=durable)
        return _CODEC.decode(change.key, stored)

    def change(self, run_id: str, *, status: RunStatus | str | UnsetType = UNSET,
               last_step: str | UnsetType | None = UNSET,
               error: str | UnsetType | None = UNSET,
               result: bytes | UnsetType | None = UNSET,
               failed_step: str | UnsetType | None = UNSET) -> Update:
        """The store operation that `update` commits, to commit it with other writes at once.

        A run's step checkpoint and its status change must be one write, so that a
        crash cannot store one without the other: pass the operation in `also=` of
        `CheckpointStore.save`. Fields and `updated_at` change as in `update`; the
        operation's result in `Store.commit` is the updated record's bytes, and it
        refuses the whole commit with `RunNotFound` if no run has this id. A change
        that ends the run (to a status in `ENDED`, from one that is not) also writes
        the run's entry in the index of ended runs.

        Raises:
            ConfigurationError: an invalid run id or status.
        """
        key = self._key(run_id)
        changes: dict[str, Any] = {
            name: value for name, value in (("last_step", last_step), ("error", error),
                                            ("result", result), ("failed_step", failed_step))
            if value is not UNSET}
        if not isinstance(status, UnsetType):
            changes["status"] = _status(status)
        now = changes["updated_at"] = self._clock()
        entry = self._index_entry(now, key) if changes.get("status") in ENDED else None

        def update(current: bytes | None) -> Changed:
            if current is None:
                raise RunNotFound(run_id)
            record = _CODEC.decode(key, current)
            encoded = _CODEC.encode(msgspec.structs.replace(record, **changes))
            if entry is not None and record.status not in ENDED:  # this change ends the run
                return encoded, (Put(_DB, entry, b""),)
            return encoded

        return Update(_DB, key, update)

    def park(self, run_id: str, reason: str, *, decided: Collection[str]) -> Update:
        """The write that parks a running run `waiting` at its gates (`reason` says which),
        to commit after their `GateStore.open_ops`: if one of those found its gate decided
        meanwhile (named in `decided` by then), the run stays `running`, as it is, and
        goes on with the decision instead of waiting over it."""
        waiting = self.change(run_id, status=RunStatus.WAITING, error=reason)

        def park(current: bytes | None) -> Changed:
            if current is not None and decided:
                return current
            return waiting.change(current)  # RunNotFound for a run that is gone

        return Update(waiting.db, waiting.key, park)

    def wake(self, run_id: str) -> Update:
        """The write that makes a run `waiting` at a gate `queued` (a decision was made), to
        commit with the decision; a run in any other status is left as it is."""
        key = self._key(run_id)
        now = self._clock()

        def wake(current: bytes | None) -> bytes:
            if current is None:
                raise RunNotFound(run_id)
            record = _CODEC.decode(key, current)
            if record.status != RunStatus.WAITING:
                return current
            return _CODEC.encode(msgspec.structs.replace(
                record, status=RunStatus.QUEUED, error=None, updated_at=now))

        return Update(_DB, key, wake)

    async def page(self, *, limit: int = 50, before: str | None = None,
                   status: RunStatus | str | None = None, pipeline: str | None = None,
                   since: float | None = None, until: float | None = None,
                   text: str | None = None) -> tuple[builtins.list[RunRecord], str | None]:
        """One page of run records, last run id first (generated ids sort by creation
        time, so: newest first), read from one snapshot of the store in a worker thread.

        Args:
            limit: the most records to return (1..1000).
            before: continue after this run id (the previous page's cursor).
            status, pipeline: only runs with this status, of this pipeline.
            since, until: only runs created in [since, until) (seconds since the epoch).
            text: only runs whose id, pipeline, error or failed step contains it.

        Returns:
            The records and the cursor of the next page (None on the last page).

        Raises:
            ConfigurationError: a bad limit or status.
        """
        read = self.page_reader(limit=limit, before=before, status=status, pipeline=pipeline,
                                since=since, until=until, text=text)
        return await self._store.read(read)

    def page_reader(self, *, limit: int = 50, before: str | None = None,
                    status: RunStatus | str | None = None, pipeline: str | None = None,
                    since: float | None = None, until: float | None = None,
                    text: str | None = None, damaged: builtins.list[RecordCorrupt] | None = None
                    ) -> Callable[[SnapshotReader], tuple[builtins.list[RunRecord], str | None]]:
        """`page` as a function of a snapshot, to read a page and what goes with it (its
        runs' checkpoints, say) in one `Store.read`.

        Without `damaged`, a record that does not decode raises `RecordCorrupt` when read.
        With it, the page skips such records and appends their errors to `damaged`, so a
        list can show the runs it can read and name the others: a skipped record is not
        counted in `limit`, and each is named by the one page whose range holds it.

        Raises:
            ConfigurationError: a bad limit or status.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
            raise ConfigurationError(f"limit={limit!r} must be a whole number from 1 to 1000")
        wanted = None if status is None else _status(status)
        needle = text.casefold() if text else None
        # A run id's key never starts with 0xff, so it is below the ended-run index too.
        stop = _run_index.PREFIX if before is None else self._key(before)

        def read(snapshot: SnapshotReader) -> tuple[builtins.list[RunRecord], str | None]:
            found: builtins.list[RunRecord] = []
            for key, value in snapshot.scan(_DB, stop=stop, reverse=True):
                try:
                    record = _CODEC.decode(key, value)
                except RecordCorrupt as error:
                    if damaged is None:
                        raise
                    if len(found) == limit:  # it belongs to the next page
                        return found, found[-1].run_id
                    damaged.append(error)
                    continue
                if ((wanted is not None and record.status != wanted)
                        or (pipeline is not None and record.pipeline != pipeline)
                        or (since is not None and record.created_at < since)
                        or (until is not None and record.created_at >= until)
                        or (needle is not None and not _mentions(record, needle))):
                    continue
                if len(found) == limit:
                    return found, found[-1].run_id
                found.append(record)
            return found, None

        return read

    async def list(self, status: RunStatus | str | None = None, *,
                   damaged: builtins.list[RecordCorrupt] | None = None
                   ) -> builtins.list[RunRecord]:
        """Every run record in run id order, or only those with `status`.

        Without `damaged`, a record that does not decode raises `RecordCorrupt`. With it,
        such records are skipped and their errors appended to `damaged` (whatever their
        status: it cannot be read), so a caller can go on with the runs it can read and
        name the others.

        Raises:
            ConfigurationError: an invalid status.
            RecordCorrupt: a record does not decode (without `damaged`).
        """
        wanted = None if status is None else _status(status)
        return [record async for record in _CODEC.decode_all(
                    self._store.scan(_DB, stop=_run_index.PREFIX), damaged)
                if wanted is None or record.status == wanted]

    async def sweep_ended(self, before: float,
                          prune: Callable[[builtins.list[str]], Awaitable[int]]) -> int:
        """Hand the runs that ended (a status in `ENDED`) at or before `before` to
        `prune(run_ids)`, a chunk at a time, and drop each chunk from the index of ended
        runs once `prune` returns; returns what the `prune` calls returned, added up.

        Only the due part of the index is read, so a sweep costs what is due, not what
        is stored. A run that no longer has an ended status (or a readable record) is
        dropped from the index without being handed over: it is indexed again when it
        ends. The first sweep of a store written before the index existed indexes its
        ended runs first (once; they count as ended when they last changed).

        Raises:
            StoreError: a read or write failed (what was swept before stays swept).
        """
        await self._index_earlier_runs()
        stop = _run_index.due_stop(before)
        total = 0
        while True:
            due = await self._store.read(partial(_due, stop=stop, limit=_SWEEP_CHUNK))
            if not due:
                return total
            total += await prune([run_id for _, run_id in due if run_id is not None])
            # Not durable: an entry whose delete a crash loses is only swept again.
            await self._store.commit([Delete(_DB, key) for key, _ in due], durable=False)
            if len(due) < _SWEEP_CHUNK:
                return total

    async def _index_earlier_runs(self) -> None:
        """Index the ended runs of a store written before the index existed, then write the
        marker that says so (a point read once that is done)."""
        if await self._store.get(_DB, _run_index.MARKER) is not None:
            return
        ops: builtins.list[Op] = []
        async for key, value in self._store.scan(_DB, stop=_run_index.PREFIX):
            try:
                record = _CODEC.decode(key, value)
            except StoreError:  # damaged: it keeps its checkpoints; `roost store check` names it
                continue
            entry = self._index_entry(record.updated_at, key) if record.status in ENDED else None
            if entry is not None:
                ops.append(Put(_DB, entry, b""))
            if len(ops) == _SWEEP_CHUNK:
                await self._store.commit(ops, durable=False)
                ops = []
        await self._store.commit([*ops, Put(_DB, _run_index.MARKER, b"")])

    def _index_entry(self, ended_at: float, key: bytes) -> bytes | None:
        """The index key of an ended run, or None for a run id too long to index (so long
        that it can have no checkpoints either: nothing to sweep)."""
        entry = _run_index.entry_key(ended_at, key)
        return entry if len(entry) <= self._store.max_key_size else None

    def _key(self, run_id: str) -> bytes:
        if not isinstance(run_id, str) or not run_id:
            raise ConfigurationError(f"run id {run_id!r} must be a non-empty string")
        try:
            key = run_id.encode()
        except UnicodeEncodeError:
            raise ConfigurationError(f"run id {run_id!r} is not valid Unicode text (it cannot "
                                     "be encoded as UTF-8); use another id") from None
        if len(key) > self._store.max_key_size:
            raise ConfigurationError(f"run id {run_id!r} is {len(key)} bytes long; run ids must "
                                     f"be at most {self._store.max_key_size} bytes")
        return key


def _due(snapshot: Snapshot, *, stop: bytes, limit: int) -> builtins.list[tuple[bytes, str | None]]:
    """Up to `limit` index entries below `stop`, each with its run's id if that run is still
    ended (its checkpoints may go), else None (in a worker thread, one read transaction)."""
    due: builtins.list[tuple[bytes, str | None]] = []
    for key, _ in snapshot.scan(_DB, start=_run_index.FIRST, stop=stop):
        due.append((key, _still_ended(snapshot, key)))
        if len(due) == limit:
            break
    return due


def _still_ended(snapshot: Snapshot, entry: bytes) -> str | None:
    """The run id of index entry `entry` if its run's record says it ended, else None."""
    run_id = _run_index.run_id_of(entry)
    if run_id is None:
        return None
    key = run_id.encode()
    value = snapshot.get(_DB, key)
    if value is None:
        return None
    try:
        status = _CODEC.decode(key, value).status
    except StoreError:  # damaged: it keeps its checkpoints; `roost store check` names it
        return None
    return run_id if status in ENDED else None


def _mentions(record: RunRecord, needle: str) -> bool:
    return any(needle in field.casefold() for field in (
        record.run_id, record.pipeline, record.error or "", record.failed_step or ""))


def _status(status: RunStatus | str) -> RunStatus:
    try:
        return RunStatus(status)
    except ValueError:
        raise ConfigurationError(
            f"status={status!r} is not a run status; use one of "
            f"{', '.join(member.value for member in RunStatus)}") from None


_CODEC = RecordCodec(RunRecord)
