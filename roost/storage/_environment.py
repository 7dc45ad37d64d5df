"""Opening a store folder: its checks, its single-owner lock file and the LMDB environment.

Blocking (it creates files and LMDB commits the named databases): call it from a
worker thread, never on the event loop. A damaged folder is refused before LMDB
maps it (see `_integrity`).
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

import lmdb

from roost.errors import StoreUnavailable
from roost.storage import _integrity
from roost.storage.ops import DATABASES

LOCK_FILE = "roost.lock"
_MAX_DBS = 32
# Readers on the event loop and in scan threads reuse reset read transactions.
_SPARE_TXNS = 8
# roost's own bookkeeping (the store header); not one of the record databases.
_META_DB = b"roost-meta"
#: What LMDB raises for a damaged data file.
CORRUPTION = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.BadValsizeError,
              lmdb.InvalidError, lmdb.PanicError, lmdb.BadTxnError)


class Environment:
    """An open LMDB environment with its named databases, and the lock that owns the folder."""

    def __init__(self, env: lmdb.Environment, dbs: dict[str, lmdb._Database], lock_fd: int,
                 header: _integrity.StoreHeader) -> None:
        self.env = env
        self.dbs = dbs
        self.header = header
        self._lock_fd = lock_fd

    def close(self) -> None:
        """Close the environment, then release the folder (no flush: flush first if needed)."""
        try:
            self.env.close()
        finally:
            os.close(self._lock_fd)


def open_environment(path: Path, *, nosync: bool, map_size: int, create: bool = True,
                     readonly: bool = False) -> Environment:
    """Create or open the store at `path` (a folder) and lock it for this process.

    Unless `nosync`, every commit flushes its data pages but not its meta page
    (LMDB's `metasync=False`), and the writer makes a commit durable with one
    `env.sync(True)`: data pages always reach the disk before a meta page points to
    them, so a machine crash can undo the last unflushed commits but never damages
    the database. With `nosync` (async mode) commits flush nothing; LMDB then
    warns that a machine crash may also damage the database (its `MDB_NOSYNC`).

    Raises:
        StoreUnavailable: the path is a file, the folder cannot be created, read or written,
            another process (or another store in this one) has it open, or it holds
            something other than a roost store; or, without `create`, there is no
            store there.

    With `readonly`, an existing store is opened for reading only (see
    `_open_readonly`); nothing in the folder is changed.
    """
    try:
        if readonly:
            return _open_readonly(path, map_size=map_size)
        return _open_writable(path, nosync=nosync, map_size=map_size, create=create)
    except PermissionError as exc:  # one not reported more precisely where it arose
        raise permission_denied(str(path), exc) from exc


def _open_writable(path: Path, *, nosync: bool, map_size: int, create: bool) -> Environment:
    where = str(path)
    if not create and _never_held_a_store(path):
        raise StoreUnavailable(where, "there is no store in this folder; check the path")
    if path.exists() and not path.is_dir():
        raise StoreUnavailable(where, "the path is a file, not a folder; give a folder path "
                               "(roost creates the folder)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreUnavailable(where, f"cannot create the folder ({exc.strerror}); check the "
                               "path and the permissions of its parent") from exc
    lock_fd = _lock(path)
    try:
        return _open_locked(path, lock_fd, nosync=nosync, map_size=map_size)
    except BaseException:
        os.close(lock_fd)
        raise


def _never_held_a_store(path: Path) -> bool:
    """No data file, store id or LMDB lock file: nothing says a store was ever here (a
    folder with only some of them held one, and opening it reports the damage)."""
    return (not (path / _integrity.DATA_FILE).exists() and _integrity.recorded_id(path) is None
            and not (path / _integrity.LMDB_LOCK_FILE).exists())


def _open_locked(path: Path, lock_fd: int, *, nosync: bool, map_size: int) -> Environment:
    where = str(path)
    _integrity.check_data_file(path)
    try:
        env = lmdb.open(where, map_size=map_size, max_dbs=_MAX_DBS, sync=not nosync,
                        metasync=False, max_spare_txns=_SPARE_TXNS)
    except CORRUPTION as exc:
        raise _integrity.corrupt(path, f"LMDB refuses its data file ({exc})") from exc
    except (lmdb.Error, OSError) as exc:
        if _is_permission_error(exc):
            raise permission_denied(where, exc) from exc
        raise StoreUnavailable(where, f"LMDB cannot open it ({type(exc).__name__}: {exc}); "
                               "it must be a roost store folder or an empty folder") from exc
    try:
        meta = env.open_db(_META_DB)
        dbs = {name: env.open_db(name.encode()) for name in DATABASES}
        header = _header(path, env, meta)
    except CORRUPTION as exc:
        env.close()
        raise _integrity.corrupt(path, f"LMDB finds its data damaged ({exc})") from exc
    except (lmdb.Error, OSError) as exc:
        env.close()
        if _is_permission_error(exc):
            raise permission_denied(where, exc) from exc
        raise StoreUnavailable(where, f"its named databases cannot be opened "
                               f"({type(exc).__name__}: {exc}); it is an LMDB environment "
                               "but not a roost store") from exc
    except BaseException:
        env.close()
        raise
    return Environment(env, dbs, lock_fd, header)


def _open_readonly(path: Path, *, map_size: int) -> Environment:
    """Open the store at `path` for reading, while no process writes it.

    The folder's lock is taken shared, so this fails while a system has the store open
    (and a system cannot open it meanwhile); LMDB's own lock file is then not needed
    (`lock=False`) and no writer thread starts.
    """
    where = str(path)
    if not path.is_dir() or _never_held_a_store(path):
        raise StoreUnavailable(where, "there is no store in this folder; check the path")
    lock_fd = _lock_shared(path)
    try:
        try:
            _integrity.check_data_file(path)
            env = lmdb.open(where, map_size=map_size, max_dbs=_MAX_DBS, readonly=True, lock=False,
                            max_spare_txns=_SPARE_TXNS)
        except PermissionError as exc:
            raise permission_denied(where, exc) from exc
        except CORRUPTION as exc:
            raise _integrity.corrupt(path, f"LMDB refuses its data file ({exc})") from exc
        except (lmdb.Error, OSError) as exc:
            if "already open in this process" in str(exc):
                raise StoreUnavailable(where, "this process already has it open; query it "
                                       "through that store") from exc
            raise StoreUnavailable(where, f"LMDB cannot open it ({type(exc).__name__}: {exc}); "
                                   "it must be a roost store folder") from exc
        try:
            return _readonly_environment(path, env, lock_fd)
        except BaseException:
            env.close()
            raise
    except BaseException:
        os.close(lock_fd)
        raise


def _readonly_environment(path: Path, env: lmdb.Environment, lock_fd: int) -> Environment:
    """The named databases and the checked header of a store opened read-only."""
    where = str(path)
    try:
        dbs = {name: env.open_db(name.encode(), create=False) for name in DATABASES}
        with env.begin(db=env.open_db(_META_DB, create=False)) as txn:
            raw = txn.get(_integrity.HEADER_KEY)
    except lmdb.NotFoundError as exc:
        raise StoreUnavailable(where, "it lacks some of roost's databases (it was written by an "
                               "older roost); open it once with a system first") from exc
    except CORRUPTION as exc:
        raise _integrity.corrupt(path, f"LMDB finds its data damaged ({exc})") from exc
    if raw is None:
        raise StoreUnavailable(where, "it has no store header; open it once with a system first")
    header = _integrity.decode_header(path, raw)
    recorded = _integrity.recorded_id(path)
    if recorded is not None and recorded != header.store_id:
        raise _integrity.corrupt(path, f"its data file belongs to store {header.store_id}, but "
                                       f"the folder held store {recorded}")
    return Environment(env, dbs, lock_fd, header)


def _header(path: Path, env: lmdb.Environment, meta: lmdb._Database) -> _integrity.StoreHeader:
    """The store's header record: checked against the folder's id, or written if new."""
    recorded = _integrity.recorded_id(path)
    with env.begin(db=meta) as txn:
        raw = txn.get(_integrity.HEADER_KEY)
    if raw is None:
        if recorded is not None:
            raise _integrity.corrupt(path, f"its header record is gone, but the folder held "
                                           f"store {recorded}")
        # A new store (or one made before headers existed): name it once, durably.
        header = _integrity.new_header(time.time())
        with env.begin(write=True, db=meta) as txn:
            txn.put(_integrity.HEADER_KEY, _integrity.encode_header(header))
        env.sync(True)
        _integrity.record_id(path, header.store_id)
        return header
    header = _integrity.decode_header(path, raw)
    if recorded is None:
        _integrity.record_id(path, header.store_id)
    elif recorded != header.store_id:
        raise _integrity.corrupt(path, f"its data file belongs to store {header.store_id}, "
                                       f"but the folder held store {recorded} (was {_integrity.DATA_FILE} "
                                       "replaced?)")
    return header


def _is_permission_error(exc: BaseException) -> bool:
    return (isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES
            or "Permission denied" in str(exc))


def permission_denied(where: str, exc: BaseException) -> StoreUnavailable:
    """The error for a store folder, or a file in it, that this process may not use."""
    return StoreUnavailable(where, f"permission denied ({exc}); give this process read and "
                                   "write access to the folder and its files")


def _lock(path: Path) -> int:
    """Take the folder's lock file for this store (flock: released when the process dies)."""
    lock_path = path / LOCK_FILE
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreUnavailable(str(path), f"cannot create {LOCK_FILE} ({exc.strerror}); the "
                               "folder must be writable by this process") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreUnavailable(str(path), f"it is already open (by pid {owner}); close that "
                               "store first, or give each system its own folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _lock_shared(path: Path) -> int:
    """Take the folder's lock file shared, for a reader: refused while a system owns the store."""
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreUnavailable(str(path), f"cannot open {LOCK_FILE} ({exc.strerror}); give this "
                               "process access to the folder") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise StoreUnavailable(str(path), f"a running system has it open (pid {owner}); query "
                               "it there (system.traces), or stop that system first") from None
    return fd
