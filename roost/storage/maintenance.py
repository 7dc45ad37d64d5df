"""Store maintenance: check that every record of a store decodes, and make a consistent backup.

Both open the store the ordinary way, so its integrity checks run first (a damaged
folder is refused with `StoreCorrupt`), and both need the store closed elsewhere
(one process owns a store folder at a time). They back `roost store check DIR` and
`roost store backup DIR DEST`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from roost.errors import StoreError, StoreUnavailable
from roost.storage import _run_index
from roost.storage._integrity import record_id
from roost.storage._threads import in_thread
from roost.storage.checkpoints import Checkpoint
from roost.storage.codecs import RecordCodec
from roost.storage.gates import decode_gate
from roost.storage.ledger import LedgerEntry
from roost.storage.opening import open_store
from roost.storage.ops import DATABASES
from roost.storage.postgres import is_postgres_url, redact
from roost.storage.runs import RunRecord
from roost.storage.store import Store

_LOOSE = msgspec.msgpack.Decoder(dict[str, Any])


def _loose(key: bytes, value: bytes) -> Any:
    """Databases without a record codec yet: each value must at least be a msgpack map."""
    try:
        return _LOOSE.decode(value)
    except msgspec.DecodeError as exc:
        raise StoreError(f"record at key {key!r} is not a msgpack record ({exc})") from exc


_ANY = msgspec.msgpack.Decoder()
_CHECKPOINT = RecordCodec(Checkpoint)
_RUN = RecordCodec(RunRecord)


def _payload(key: bytes, what: str, data: bytes | None) -> None:
    """The bytes a record carries (a state, an input, a result) must be msgpack too."""
    if data is None:
        return
    try:
        _ANY.decode(data)
    except msgspec.DecodeError as exc:
        raise StoreError(f"record at key {key!r}: its {what} does not decode ({exc})") from exc


def _checkpoint(key: bytes, value: bytes) -> Any:
    checkpoint = _CHECKPOINT.decode(key, value)
    _payload(key, "state", checkpoint.state)
    return checkpoint


def _run(key: bytes, value: bytes) -> Any:
    if key.startswith(_run_index.PREFIX):  # the index of ended runs, not a run record
        _run_index.check_entry(key, value)
        return None
    record = _RUN.decode(key, value)
    _payload(key, "input", record.input)
    _payload(key, "result", record.result)
    return record


def _result(key: bytes, value: bytes) -> Any:
    _payload(key, "result", value)
    return value


_DECODERS: dict[str, Callable[[bytes, bytes], Any]] = {
    "checkpoints": _checkpoint,
    "runs": _run,
    "ledger": RecordCodec(LedgerEntry).decode,
    "gates": decode_gate,
    "results": _result,
}


class Problem(msgspec.Struct, frozen=True):
    """One record (or database) that could not be read."""

    db: str
    key: str
    error: str


class CheckReport(msgspec.Struct, frozen=True):
    """What `check_store` found: records read per database, and the problems.

    Attributes:
        path: the store folder.
        store_id: the id in the store's header.
        records: how many records of each database decoded.
        problems: every record or database that did not.
    """

    path: str
    store_id: str
    records: dict[str, int]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems


async def check_store(path: str | os.PathLike[str]) -> CheckReport:
    """Read every record of the store at `path` (a folder or a PostgreSQL URL) and check
    that it decodes.

    Raises:
        StoreCorrupt: the folder is damaged before any record can be read.
        StoreUnavailable: it is not a store, or it is open elsewhere.
    """
    records: dict[str, int] = {}
    problems: list[Problem] = []
    async with open_store(path, create=False) as store:
        for db in DATABASES:
            decode = _DECODERS.get(db, _loose)
            count = 0
            try:
                async for key, value in store.scan(db):
                    try:
                        decode(key, value)
                    except StoreError as exc:
                        problems.append(Problem(db, key.decode(errors="replace"), str(exc)))
                    else:
                        count += 1
            except StoreError as exc:  # the database's pages themselves are damaged
                problems.append(Problem(db, "", str(exc)))
            records[db] = count
        return CheckReport(store.path, store.store_id, records, problems)


def _prepare_destination(target: Path) -> None:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise StoreUnavailable(str(target), "a backup goes into a new or empty folder; choose "
                                            "another destination")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(str(target), f"cannot create the backup folder ({exc.strerror}); "
                                            "choose a destination this process can write") from exc


async def backup_store(path: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Copy the store at `path` to the new folder `destination`, consistently and compacted.

    The copy is a store of its own (same store id) that `Store.open` accepts.

    Raises:
        StoreUnavailable: `destination` exists and is not an empty folder, the store
            cannot be opened, or it is a PostgreSQL store (use pg_dump).
        StoreCorrupt: the store is damaged (back up a damaged store with care:
            `roost store check` first).
    """
    if is_postgres_url(path):
        raise StoreUnavailable(redact(path), "a PostgreSQL store is backed up with the "
                                             "database's own tools: pg_dump, or a base backup "
                                             "and a standby")
    target = Path(destination)
    async with Store.open(path, create=False) as store:
        await in_thread(_prepare_destination, target)
        await store.copy_to(target)
        await in_thread(record_id, target, store.store_id)
    return target
