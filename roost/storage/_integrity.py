"""Checks that keep a damaged store folder from being opened, or from being taken for a new one.

LMDB memory-maps its data file and trusts it: a file cut short makes a read past its
end kill the process with SIGBUS, and a file cut to nothing looks like a new store.
So before LMDB maps anything, the data file's size is checked against LMDB's own
meta pages, and a folder that once held a store (it has a `roost.id` file) is never
started fresh. After opening, the store's header record must match that id.
"""

from __future__ import annotations

import os
import stat
import struct
import uuid
from pathlib import Path

import msgspec

from roost.errors import StoreCorrupt, StoreError, StoreUnavailable

DATA_FILE = "data.mdb"
ID_FILE = "roost.id"
#: LMDB's own lock file: it outlives a deleted data file, so it too says a store was here.
LMDB_LOCK_FILE = "lock.mdb"
#: The version of roost's store layout; a store written by a newer layout is refused.
FORMAT_VERSION = 1

_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16  # pgno(8) pad(2) flags(2) lower(2) upper(2), before each meta page's body
# MDB_meta after the page header: magic(4) version(4) address(8) mapsize(8), then two
# MDB_db records of 48 bytes (the first one's md_pad holds the page size), last_pg(8), txnid(8).
_META = struct.Struct("<IIQQ")
_DB = struct.Struct("<IHHQQQQQ")
_TAIL = struct.Struct("<QQ")


class StoreHeader(msgspec.Struct, frozen=True, tag="roost.store-header", tag_field="kind"):
    """The record that names a store: written once, when the store is created."""

    store_id: str
    format_version: int
    created_at: float


HEADER_KEY = b"store-header"
_HEADER_DECODER = msgspec.msgpack.Decoder(StoreHeader)


def new_header(created_at: float) -> StoreHeader:
    return StoreHeader(store_id=uuid.uuid4().hex, format_version=FORMAT_VERSION,
                       created_at=created_at)


def encode_header(header: StoreHeader) -> bytes:
    return msgspec.msgpack.encode(header)


def decode_header(path: Path, raw: bytes) -> StoreHeader:
    """The header record, or `StoreCorrupt` if it does not decode or is from a newer roost."""
    try:
        header = _HEADER_DECODER.decode(raw)
    except msgspec.DecodeError as exc:
        raise corrupt(path, f"its header record does not decode ({exc})") from None
    if header.format_version > FORMAT_VERSION:
        raise StoreUnavailable(str(path), f"it was written by a newer roost (store format "
                               f"{header.format_version}; this roost reads up to "
                               f"{FORMAT_VERSION}); upgrade roost to open it")
    return header


def recorded_id(path: Path) -> str | None:
    """The store id kept beside the data file, or None if this folder never held a store.

    Raises:
        StoreCorrupt: the id file is there but cannot be read as an id (not text, a
            folder, a symlink loop, an I/O error).
    """
    try:
        raw = (path / ID_FILE).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise
    except OSError as exc:
        raise _unreadable_id(path, exc.strerror or str(exc)) from exc
    try:
        return raw.decode().strip() or None
    except UnicodeDecodeError as exc:
        raise _unreadable_id(path, "it is not text") from exc


def _unreadable_id(path: Path, why: str) -> StoreCorrupt:
    return corrupt(path, f"its store id file {ID_FILE} cannot be read ({why}; if {DATA_FILE} "
                         f"is intact, deleting {ID_FILE} is enough: roost writes it again from "
                         "the store's header)")


def record_id(path: Path, store_id: str) -> None:
    """Keep the store id beside the data file (durably: it guards against starting fresh).

    Raises:
        StoreUnavailable: the file cannot be written (naming the cause).
    """
    target = path / ID_FILE
    temporary = path / f"{ID_FILE}.tmp"
    try:
        with open(temporary, "w") as file:
            file.write(store_id + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
        directory = os.open(path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except PermissionError:
        raise
    except OSError as exc:
        raise StoreUnavailable(str(path), f"cannot write its store id file {ID_FILE} "
                                          f"({exc.strerror or exc}); make sure {ID_FILE} and "
                                          f"{ID_FILE}.tmp in the folder are plain files or "
                                          "absent, and that the disk has room") from exc


def check_data_file(path: Path) -> bool:
    """Check the data file before LMDB maps it; True if there is a store to open.

    Returns False for a folder that never held a store (a new store may be created).

    Raises:
        StoreCorrupt: the folder held a store whose data file is now missing or empty,
            or the data file is shorter than its own meta pages say, or they are damaged.
    """
    data = path / DATA_FILE
    store_id = recorded_id(path)
    held = f"store {store_id}" if store_id is not None else (
        f"a store ({LMDB_LOCK_FILE} is still there)" if (path / LMDB_LOCK_FILE).exists() else None)
    try:
        status = data.stat()
    except FileNotFoundError:
        status = None
    except PermissionError:
        raise
    except OSError as exc:
        raise _unusable_data_file(path, f"cannot be read ({exc.strerror or exc})", held) from exc
    if status is not None and not stat.S_ISREG(status.st_mode):
        kind = "a folder" if stat.S_ISDIR(status.st_mode) else "a device, pipe or socket"
        raise _unusable_data_file(path, f"is {kind}, not a file", held)
    size = None if status is None else status.st_size
    if not size:
        if held is None:
            return False
        what = "missing" if size is None else "empty (0 bytes)"
        raise corrupt(path, f"its data file {DATA_FILE} is {what}, but the folder held {held}")
    try:
        with open(data, "rb") as file:
            head = file.read(2 * 65536)
    except PermissionError:
        raise
    except OSError as exc:
        raise _unusable_data_file(path, f"cannot be read ({exc.strerror or exc})", held) from exc
    last_page, page_size = _newest_meta(path, head, held_a_store=held is not None)
    needed = (last_page + 1) * page_size
    if size < needed:
        raise corrupt(path, f"its data file is truncated: {size} bytes, but LMDB's meta page "
                            f"says it holds {last_page + 1} pages of {page_size} bytes "
                            f"({needed} bytes)")
    return True


def _newest_meta(path: Path, head: bytes, *, held_a_store: bool) -> tuple[int, int]:
    """(last page number, page size) from the newer valid one of the two meta pages."""
    first = _read_meta(head, 0)
    # The page size is kept in the first meta page; if that page is damaged, LMDB's
    # default (the OS page size) tells where the second one is.
    page_size = first[2] if first is not None else os.sysconf("SC_PAGE_SIZE")
    second = _read_meta(head, page_size)
    metas = [meta for meta in (first, second) if meta is not None]
    if not metas:
        if not held_a_store:
            raise StoreUnavailable(str(path), f"LMDB cannot open it: {DATA_FILE} is not an LMDB "
                                              "file (no valid meta page); it must be a roost "
                                              "store folder or an empty folder")
        raise corrupt(path, f"its data file {DATA_FILE} has no valid LMDB meta page")
    _txn_id, last_page, page_size = max(metas)
    return last_page, page_size


def _read_meta(head: bytes, page_offset: int) -> tuple[int, int, int] | None:
    """(txn id, last page, page size) of the meta page at `page_offset`, or None if invalid."""
    offset = page_offset + _PAGE_HEADER
    if offset + _META.size + 2 * _DB.size + _TAIL.size > len(head):
        return None
    magic, _version, _address, _map_size = _META.unpack_from(head, offset)
    if magic != _MAGIC:
        return None
    page_size = _DB.unpack_from(head, offset + _META.size)[0] if page_offset == 0 else page_offset
    if page_size not in _PAGE_SIZES:
        return None
    last_page, txn_id = _TAIL.unpack_from(head, offset + _META.size + 2 * _DB.size)
    return txn_id, last_page, page_size


_PAGE_SIZES = frozenset(2**n for n in range(9, 17))


def _unusable_data_file(path: Path, what: str, held: str | None) -> StoreError:
    """A data file that is there but not a readable file (a folder, a symlink loop, an I/O
    error): damage if the folder held a store, else a folder that is not a store."""
    if held is None:
        return StoreUnavailable(str(path), f"its {DATA_FILE} {what}; it must be a roost store "
                                           "folder or an empty folder")
    return corrupt(path, f"its data file {DATA_FILE} {what}, but the folder held {held}")


def corrupt(path: Path, detail: str) -> StoreCorrupt:
    return StoreCorrupt(str(path), detail)
