"""The idempotency ledger: which tool calls are in flight or done, and their results.

Each call is claimed under its key before the tool runs (durably in the store's
`sync` mode, so a crash after the side effect leaves a trace), and settled
afterwards with its result or its permanent error, kept for a retention window.
Writes follow the store's durability mode: in `async` mode a machine crash may
lose the last claims, the trade the application chose for speed. A claim is an
insert-if-absent in the store's writer thread (a read-modify-write for an expired
key), so two callers can never both claim a key.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Literal

import msgspec

from roost._logging import get_logger
from roost.errors import IdempotencyConflict, RecordCorrupt
from roost.storage._interface import StoreInterface
from roost.storage.codecs import Record, RecordCodec
from roost.storage.ops import Delete, Insert, Put, Update

_DB = "ledger"
_log = get_logger("roost")

Status = Literal["in_flight", "completed", "failed", "unrecordable"]


class LedgerEntry(Record, tag="ledger_entry", frozen=True, kw_only=True, gc=False):
    """One idempotency key of one tool.

    Attributes:
        tool: the tool's name.
        key: the idempotency key.
        fingerprint: a stable hash of the call's arguments.
        status: `in_flight`, `completed`, `failed` (a permanent error, replayed)
            or `unrecordable` (done, but the result could not be stored).
        owner: the ledger instance (process incarnation) that claimed it.
        started_at: when it was claimed, in seconds since the epoch.
        updated_at: when it last changed.
        expires_at: when it may be pruned.
        result: the msgpack bytes of the result, once completed.
        error_type: the permanent error's type name, once failed.
        error: the permanent error's message (or why the result was unrecordable).
        error_code: the permanent error's `code` attribute (a str or int), if it had one.
    """

    tool: str
    key: str
    fingerprint: str
    status: Status
    owner: str
    started_at: float
    updated_at: float
    expires_at: float
    result: bytes | None = None
    error_type: str | None = None
    error: str | None = None
    error_code: str | int | None = None


_CODEC = RecordCodec(LedgerEntry)


class Claim(msgspec.Struct, frozen=True, gc=False):
    """What `Ledger.claim` found.

    Attributes:
        claimed: True if this call now owns the key and must run the tool.
        entry: the key's entry (the new in-flight one when claimed).
        ours: the entry was claimed by this ledger instance (not left by an
            earlier process).
    """

    claimed: bool
    entry: LedgerEntry
    ours: bool


def _live(entry: LedgerEntry, now: float) -> bool:
    """Whether `entry` still holds its key: within its retention window, or in flight.

    A call left in flight by a crash never expires: its outcome is unknown, and
    claiming it again would repeat a side effect that may have happened.
    """
    return entry.expires_at > now or entry.status == "in_flight"


def _still_expired(key: bytes, now: float) -> Callable[[bytes | None], bytes | None]:
    def change(current: bytes | None) -> bytes | None:
        if current is None:
            return None
        if not _live(_CODEC.decode(key, current), now):
            return None  # delete
        return current

    return change


def _failure(error: BaseException) -> dict[str, object]:
    """The fields of a permanent failure: the error's type name, message and `code`
    attribute (when it is a str or an int), so that a replay can carry them."""
    code = getattr(error, "code", None)
    if isinstance(code, bool) or not isinstance(code, str | int):
        code = None
    return {"status": "failed", "error_type": type(error).__name__, "error": str(error),
            "error_code": code}


def ledger_key(tool: str, key: str) -> bytes:
    """The store key of `key` for `tool` (keys are scoped per tool)."""
    return tool.encode() + b"\x00" + key.encode()


class Ledger:
    """Claims, settles and prunes idempotency keys in a `Store`.

    Args:
        store: the open store.
        retention: how long a settled key is kept, in seconds.
        clock: wall-clock seconds since the epoch (injectable for tests).
    """

    def __init__(self, store: StoreInterface, *, retention: float = 86_400.0,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self.retention = retention
        self._clock = clock
        self.owner = uuid.uuid4().hex

    async def claim(self, tool: str, key: str, fingerprint: str) -> Claim:
        """Claim `key` for a call, or report what the ledger already has for it.

        A key that is absent or expired is claimed (written `in_flight`, durably).
        The usual case, a new key, is one insert-if-absent; a key that is there is
        read back, and only an expired one is re-claimed by a read-modify-write.

        Raises:
            IdempotencyConflict: the key is held by a call with other arguments.
            RecordCorrupt: the stored entry does not decode.
            StoreError: the write failed.
        """
        now = self._clock()
        fresh = LedgerEntry(tool=tool, key=key, fingerprint=fingerprint, status="in_flight",
                            owner=self.owner, started_at=now, updated_at=now,
                            expires_at=now + self.retention)
        store_key = ledger_key(tool, key)
        encoded = _CODEC.encode(fresh)
        [inserted] = await self._store.commit([Insert(_DB, store_key, encoded)])
        if inserted:
            return Claim(True, fresh, True)
        data = await self._store.get(_DB, store_key)
        if data is not None:
            existing = _CODEC.decode(store_key, data)
            if _live(existing, now):
                return self._found(existing, fingerprint)
        # Expired (or pruned meanwhile): decide again inside one write, so that two
        # claims can never both win.
        found: list[LedgerEntry | None] = [None]

        def change(current: bytes | None) -> bytes | None:
            found[0] = None
            if current is not None:
                entry = _CODEC.decode(store_key, current)
                if _live(entry, now):
                    found[0] = entry
                    return current
            return encoded

        await self._store.commit([Update(_DB, store_key, change)])
        held = found[0]
        if held is None:
            return Claim(True, fresh, True)
        return self._found(held, fingerprint)

    def _found(self, entry: LedgerEntry, fingerprint: str) -> Claim:
        """The claim of a key held by a live entry: it, unless its arguments differ."""
        if entry.fingerprint != fingerprint:
            raise IdempotencyConflict(entry.tool, entry.key)
        return Claim(False, entry, entry.owner == self.owner)

    async def take_over(self, entry: LedgerEntry) -> LedgerEntry | None:
        """Claim a key left in flight by an earlier process, to run the call again; None if
        the stored entry is no longer `entry` (a person settled it meanwhile, say).

        Only for calls that are safe to repeat: idempotent tools, or a `verify`
        hook that found the call not done.
        """
        now = self._clock()
        mine = msgspec.structs.replace(entry, owner=self.owner, started_at=now, updated_at=now,
                                       expires_at=now + self.retention)
        changed = await self._if_unchanged(entry, _CODEC.encode(mine))
        return mine if changed else None

    async def complete(self, entry: LedgerEntry, result: bytes) -> None:
        """Record the call's result (durably), before its caller gets it."""
        await self._settle(entry, status="completed", result=result)

    async def fail(self, entry: LedgerEntry, error: BaseException) -> None:
        """Record a permanent failure, to be replayed to later calls with the key.

        Keeps the error's type name, message and `code` attribute (when it is a str
        or an int), so that the replay can carry them.
        """
        await self._settle(entry, **_failure(error))

    async def unrecordable(self, entry: LedgerEntry, reason: str) -> None:
        """Record that the call is done but its result could not be stored."""
        await self._settle(entry, status="unrecordable", error=reason)

    async def release(self, entry: LedgerEntry) -> None:
        """Forget the key (a retryable failure: the next call may run the tool again)."""
        await self._store.commit([Delete(_DB, ledger_key(entry.tool, entry.key))])

    async def settle_unknown(self, entry: LedgerEntry, *, result: bytes | None = None,
                             error: BaseException | None = None) -> bool:
        """Settle in-flight `entry` as a person found it: done with `result`, failed for good
        with `error`, or (neither) forgotten. Only if the stored entry is still `entry`: a
        call that took the key over meanwhile keeps it. True if it was settled."""
        now = self._clock()
        if result is not None:
            settled: LedgerEntry | None = msgspec.structs.replace(
                entry, status="completed", result=result, updated_at=now,
                expires_at=now + self.retention)
        elif error is not None:
            settled = msgspec.structs.replace(entry, updated_at=now, expires_at=now + self.retention,
                                              **_failure(error))  # type: ignore[arg-type]
        else:
            settled = None
        return await self._if_unchanged(entry, None if settled is None else _CODEC.encode(settled))

    async def _if_unchanged(self, entry: LedgerEntry, value: bytes | None) -> bool:
        """Write `value` (None: delete) over in-flight `entry` if the stored entry is still
        it; True if it was."""
        key = ledger_key(entry.tool, entry.key)
        applied: list[bool] = []

        def change(current: bytes | None) -> bytes | None:
            if current is None:
                return None
            stored = _CODEC.decode(key, current)
            if (stored.status, stored.owner, stored.updated_at) != (
                    "in_flight", entry.owner, entry.updated_at):
                return current
            applied.append(True)
            return value

        await self._store.commit([Update(_DB, key, change)])
        return bool(applied)

    async def get(self, tool: str, key: str) -> LedgerEntry | None:
        """The entry for `key` of `tool`, or None.

        Raises:
            RecordCorrupt: the stored entry does not decode.
        """
        store_key = ledger_key(tool, key)
        data = await self._store.get(_DB, store_key)
        return None if data is None else _CODEC.decode(store_key, data)

    async def in_flight(self, tool: str | None = None) -> list[LedgerEntry]:
        """The entries in flight (of `tool`, or of every tool), oldest claim first: calls
        running now, and calls whose outcome is unknown. A corrupt entry is logged and
        left out (`roost store check` names it)."""
        prefix = b"" if tool is None else tool.encode() + b"\x00"
        found: list[LedgerEntry] = []
        async for key, value in self._store.scan(_DB, prefix=prefix):
            try:
                entry = _CODEC.decode(key, value)
            except RecordCorrupt as error:
                _log.error("ledger_entry_corrupt", key=key, error=str(error))
                continue
            if entry.status == "in_flight":
                found.append(entry)
        found.sort(key=lambda entry: entry.started_at)
        return found

    async def prune(self) -> int:
        """Delete every entry past its retention window; returns how many.

        Each delete re-checks the entry inside the write, so a key claimed again
        while the scan ran is kept. Calls left in flight by a crash are kept (their
        outcome is unknown until a person or a verify hook settles them). A corrupt
        entry is logged and left for a person.
        """
        now = self._clock()
        expired: list[bytes] = []
        async for key, value in self._store.scan(_DB):
            try:
                if not _live(_CODEC.decode(key, value), now):
                    expired.append(key)
            except RecordCorrupt as error:
                _log.error("ledger_entry_corrupt", key=key, error=str(error))
        if not expired:
            return 0
        results = await self._store.commit([Update(_DB, key, _still_expired(key, now))
                                            for key in expired])
        return sum(1 for result in results if result is None)

    async def _settle(self, entry: LedgerEntry, **changes: object) -> None:
        now = self._clock()
        settled = msgspec.structs.replace(entry, updated_at=now, expires_at=now + self.retention,
                                          **changes)  # type: ignore[arg-type]
        await self._store.commit([Put(_DB, ledger_key(entry.tool, entry.key),
                                      _CODEC.encode(settled))])
