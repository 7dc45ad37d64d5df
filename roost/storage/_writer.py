"""The store's one writer thread: group commit, flushes to disk and map growth.

Every write of a store goes through one long-lived thread fed by a queue. Each turn
it takes every write queued at that moment, applies them in one LMDB transaction,
commits, flushes once if any of them asked for durability, then wakes the event
loop once (`call_soon_threadsafe`) to settle all of their futures: one thread hop
and one fsync serve the whole batch.

The thread is a daemon, so a process whose event loop stopped without closing the
store (a `KeyboardInterrupt` raised inside a task) still exits. At interpreter exit
such a store is closed here: the writes queued so far are committed and flushed.
A write acknowledged to its caller is committed before that, so it is never lost;
LMDB commits are atomic, so a commit cut short by the exit is simply not there.

The thread must not die: a batch whose handling raises anything fails its own
callers with a `StoreError` naming the cause, and the thread goes on serving. Its
logging can never raise into it (a log write can hit a full disk too). If the thread
ends anyway, every waiting and later write fails at once, and the store's failure
listeners are told, so the system stops with that error instead of hanging.
"""

from __future__ import annotations

import asyncio
import atexit
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import lmdb

from roost._histogram import BATCH_BUCKETS, Histogram
from roost._logging import get_logger
from roost.errors import ConfigurationError, InternalError, RoostError, StoreError
from roost.storage._environment import Environment
from roost.storage._guard import MapGuard
from roost.storage._keys import SEQ_SIZE, pack_seq, seek_last, unpack_seq
from roost.storage.ops import Append, Delete, Fence, Insert, Lease, Op, Put, Update

# Bounds one transaction's size and the wait of the writes queued behind it.
_MAX_BATCH = 1024
# How long interpreter exit waits for each store left open to commit, flush and close.
_EXIT_WAIT = 10.0

_log = get_logger("roost.storage")

Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]


class WriteRequest:
    """One `Store.commit` call waiting for the writer: its operations and its future."""

    __slots__ = ("durable", "future", "ops")

    def __init__(self, ops: tuple[Op, ...], durable: bool, future: asyncio.Future[Any]) -> None:
        self.ops = ops
        self.durable = durable
        self.future = future


class _Stop:
    """Tells the writer to finish the writes queued before it, flush and close the store.

    `future` settles when that is done; None at interpreter exit, when nobody waits.
    """

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[None] | None) -> None:
        self.future = future


class Writer:
    """Owns the write side of one LMDB environment from its own thread.

    Counters (`commits`, `writes`, ...) are written by the writer thread only and
    read by `Store.statistics()`.
    """

    def __init__(self, environment: Environment, guard: MapGuard, loop: asyncio.AbstractEventLoop,
                 *, path: str, flush_interval: float) -> None:
        self._environment = environment
        self._env = environment.env
        self._dbs = environment.dbs
        self._max_key_size: int = self._env.max_key_size()
        self._guard = guard
        self._loop = loop
        self._path = path
        self._flush_interval = flush_interval
        self._queue: queue.SimpleQueue[list[WriteRequest] | _Stop] = queue.SimpleQueue()
        self._pending: list[WriteRequest] = []  # this loop tick's writes, not yet handed over
        self._thread = threading.Thread(target=self._run, name=f"roost-store-writer:{path}",
                                        daemon=True)
        # When the oldest commit not yet flushed to disk (a non-durable batch) was made.
        self._unflushed_since: float | None = None
        self.commits = 0
        self.writes = 0
        self.failed_writes = 0
        self.syncs = 0
        self.map_grows = 0
        self.map_size: int = self._env.info()["map_size"]
        #: Seconds each batch took to commit (and flush, when durable), and its size.
        self.commit_seconds = Histogram()
        self.batch_writes = Histogram(BATCH_BUCKETS)
        #: Set (once) when the writer thread has ended abnormally: no write can be saved.
        self.dead: StoreError | None = None
        self._on_death: list[Callable[[StoreError], None]] = []
        self._in_hand: list[WriteRequest] = []  # the batch being written, for _die

    def on_death(self, listener: Callable[[StoreError], None]) -> None:
        """Call `listener(error)` on the event loop if the writer thread dies."""
        self._on_death.append(listener)

    def start(self) -> None:
        """Start the writer thread."""
        with _running_lock:
            _running.add(self)
        self._thread.start()

    def close_at_exit(self) -> None:
        """At interpreter exit, close a store left open: commit and flush what is queued.

        Waits at most `_EXIT_WAIT` seconds: the process exits then, as after a crash.
        """
        if not self._thread.is_alive():
            return
        _safe_log("warning", "store_closed_at_exit", None, path=self._path,
                  advice="the process is exiting with the store still open (its system did "
                         "not stop, e.g. after a KeyboardInterrupt); writes acknowledged "
                         "before are safe")
        self._queue.put(_Stop(None))
        self._thread.join(_EXIT_WAIT)

    def submit(self, request: WriteRequest) -> None:
        """Queue a write (from the event loop thread; never blocks).

        Writes made during one loop tick are handed to the writer together, so one
        thread wake-up serves them all.
        """
        if self.dead is not None:
            request.future.set_exception(self.dead)
            return
        pending = self._pending
        pending.append(request)
        if len(pending) == 1:
            self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if self.dead is not None:  # died since these were submitted: nobody will take them
            _resolve([(request.future, None, self.dead) for request in batch])
            return
        self._queue.put(batch)

    def stop(self, done: asyncio.Future[None]) -> None:
        """Queue the stop: `done` settles once queued writes are done and the store is closed."""
        if self._pending:
            self._hand_over()
        if self.dead is not None:
            done.set_result(None)  # nothing can be flushed or closed by a dead writer
            return
        self._queue.put(_Stop(done))

    # --- the writer thread ----------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # the thread is ending: nobody may be left waiting
            self._die(exc)
        finally:
            with _running_lock:
                _running.discard(self)

    def _serve(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self._flush_due_in())
            except queue.Empty:
                self._flush_unflushed()
                continue
            batch: list[WriteRequest] = []
            while isinstance(item, list):
                batch.extend(item)
                if len(batch) >= _MAX_BATCH:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._in_hand = list(batch)
                self._settle(self._write_safely(batch))
                self._in_hand = []
                if self._flush_due_in() == 0.0:
                    self._flush_unflushed()
            if isinstance(item, _Stop):
                error = self._close()
                if item.future is not None:
                    self._settle([(item.future, None, error)])
                elif error is not None:
                    _safe_log("error", "store_close_failed", error, path=self._path)
                return

    def _write_safely(self, batch: list[WriteRequest]) -> list[Outcome]:
        """`_write`, but an unexpected error fails this batch instead of the thread."""
        requests = list(batch)  # _commit takes refused requests out of `batch`
        try:
            return self._write(batch)
        except Exception as exc:
            self.failed_writes += len(requests)
            return [(r.future, None, self._unexpected(exc)) for r in requests]

    def _unexpected(self, exc: BaseException) -> StoreError:
        error = StoreError(
            f"store at {self._path!r}: the writer failed a batch unexpectedly "
            f"({type(exc).__name__}: {exc}); the write was not saved; the writer goes on "
            "serving, so retry, and report this if it repeats")
        error.__cause__ = exc
        return error

    def _die(self, exc: BaseException) -> None:
        """The thread is ending abnormally: fail every queued write and tell the listeners."""
        dead = StoreError(
            f"store at {self._path!r}: the writer thread stopped ({type(exc).__name__}: "
            f"{exc}); no write can be saved any more; stop the process and open the store "
            "again (writes acknowledged before this are safe)")
        dead.__cause__ = exc
        self.dead = dead
        outcomes: list[Outcome] = [(request.future, None, dead) for request in self._in_hand]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Stop):
                if item.future is not None:
                    outcomes.append((item.future, None, None))
            else:
                outcomes.extend((request.future, None, dead) for request in item)
        try:
            self._loop.call_soon_threadsafe(self._after_death, outcomes, dead)
        except RuntimeError:
            pass  # the loop is closed: nobody is left waiting

    def _after_death(self, outcomes: list[Outcome], dead: StoreError) -> None:
        """On the loop: fail what was queued, then tell the listeners (the system stops)."""
        _resolve(outcomes)
        for listener in self._on_death:
            listener(dead)

    def _write(self, batch: list[WriteRequest]) -> list[Outcome]:
        """Commit a batch, flush it if any write asked to be durable, and say how each went."""
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        try:
            results = self._commit(batch, outcomes)
        except Exception as exc:
            self.failed_writes += len(batch)
            _safe_log("error", "store_commit_failed", exc, path=self._path, writes=len(batch))
            return outcomes + [(r.future, None, self._failed("commit", r, exc)) for r in batch]
        if not batch:
            return outcomes
        flush_error: Exception | None = None
        if any(request.durable for request in batch):
            try:
                self._sync()
            except Exception as exc:
                flush_error = exc
                _safe_log("error", "store_flush_failed", exc, path=self._path)
        elif self._unflushed_since is None:
            self._unflushed_since = time.monotonic()
        self.commit_seconds.observe(time.perf_counter() - started)
        self.batch_writes.observe(len(batch))
        for request, result in zip(batch, results, strict=True):
            if flush_error is not None and request.durable:
                self.failed_writes += 1
                outcomes.append((request.future, None, self._failed("flush", request, flush_error)))
            else:
                self.writes += 1
                outcomes.append((request.future, result, None))
        return outcomes

    def _commit(self, batch: list[WriteRequest], outcomes: list[Outcome]) -> list[list[Any]]:
        """Apply and commit `batch` in one transaction; return each request's op results.

        A request whose operations raise is taken out of `batch` (its failure goes to
        `outcomes`) and the transaction is redone without it, so one bad write cannot
        sink the others. A full map is grown and the transaction redone.
        """
        while batch:
            txn = self._env.begin(write=True)
            try:
                results, culprit = self._apply_batch(txn, batch)
                if culprit is None:
                    txn.commit()
            except lmdb.MapFullError:
                txn.abort()
                self._grow()
                continue
            except BaseException:
                txn.abort()
                raise
            if culprit is None:
                self.commits += 1
                return results
            txn.abort()
            request, exc = culprit
            batch.remove(request)
            self.failed_writes += 1
            outcomes.append((request.future, None, self._failed("write", request, exc)))
        return []

    def _apply_batch(self, txn: lmdb.Transaction[bytes], batch: list[WriteRequest],
                     ) -> tuple[list[list[Any]], tuple[WriteRequest, Exception] | None]:
        """Apply each request's operations; stop at the first request that raises."""
        results: list[list[Any]] = []
        for request in batch:
            try:
                results.append([self._apply(txn, op) for op in request.ops])
            except lmdb.MapFullError:
                raise
            except Exception as exc:
                return results, (request, exc)
        return results, None

    def _apply(self, txn: lmdb.Transaction[bytes], op: Op) -> Any:
        # isinstance tests, not `match`: this runs for every operation, holding the GIL.
        if isinstance(op, Put):
            txn.put(op.key, op.value, db=self._dbs[op.db])
            return None
        if isinstance(op, Insert):
            return txn.put(op.key, op.value, overwrite=False, db=self._dbs[op.db])
        if isinstance(op, Delete):
            return txn.delete(op.key, db=self._dbs[op.db])
        if isinstance(op, Update):
            handle = self._dbs[op.db]
            new = op.change(txn.get(op.key, db=handle))
            also: Sequence[Put | Delete] = ()
            if isinstance(new, tuple):  # the value, and more to write with it
                new, also = new
            if new is None:
                txn.delete(op.key, db=handle)
            else:
                txn.put(op.key, new, db=handle)
            for extra in also:
                self._apply_also(txn, op, extra)
            return new
        if isinstance(op, Append):
            return self._append(txn, op)
        if isinstance(op, Fence | Lease):
            return None  # one process owns an LMDB store: there are no leases to check
        raise InternalError(f"the writer got {op!r}, which Store.commit should have refused")

    def _apply_also(self, txn: lmdb.Transaction[bytes], update: Update, op: object) -> None:
        """Apply one operation an `Update`'s function asked for along with its value.

        `Store.commit` could not check it (it did not exist yet), so it is checked here.
        """
        if not isinstance(op, Put | Delete) or op.db not in self._dbs or not (
                0 < len(op.key) <= self._max_key_size):
            raise ConfigurationError(
                f"the update of {update.key!r} in {update.db!r} asked to also write {op!r}, "
                f"which is not a Put or Delete of a key of 1 to {self._max_key_size} bytes in "
                f"one of the databases {', '.join(self._dbs)}; fix the update's function")
        if isinstance(op, Put):
            txn.put(op.key, op.value, db=self._dbs[op.db])
        else:
            txn.delete(op.key, db=self._dbs[op.db])

    def _append(self, txn: lmdb.Transaction[bytes], op: Append) -> int:
        handle = self._dbs[op.db]
        prefix = op.prefix
        seq = 1
        cursor = txn.cursor(handle)
        if seek_last(cursor, prefix):
            last = cursor.key()
            if len(last) != len(prefix) + SEQ_SIZE:
                raise ConfigurationError(
                    f"key {last!r} under prefix {prefix!r} in database {op.db!r} was not "
                    "written by Append; keep appended series under their own prefix")
            seq = unpack_seq(last[len(prefix):]) + 1
        txn.put(prefix + pack_seq(seq), op.value(seq), db=handle)
        if op.keep_last and seq > op.keep_last:
            txn.delete(prefix + pack_seq(seq - op.keep_last), db=handle)
        return seq

    def _grow(self) -> None:
        """Double the map (LMDB needs every read transaction out while it remaps)."""
        size = self.map_size * 2
        with self._guard.exclusive():
            self._env.set_mapsize(size)
        self.map_size = size
        self.map_grows += 1
        _safe_log("info", "store_map_grown", None, path=self._path, map_size=size)

    def _sync(self) -> None:
        self._env.sync(True)
        self.syncs += 1
        self._unflushed_since = None

    def _flush_due_in(self) -> float | None:
        """Seconds until unflushed commits are due for a flush (None: nothing unflushed)."""
        if self._unflushed_since is None:
            return None
        return max(0.0, self._unflushed_since + self._flush_interval - time.monotonic())

    def _flush_unflushed(self) -> None:
        """Flush non-durable commits that have waited a flush interval (nobody waits on it)."""
        try:
            self._sync()
        except Exception as exc:
            _safe_log("error", "store_flush_failed", exc, path=self._path)

    def _close(self) -> StoreError | None:
        """Flush what is unflushed, then close the environment and release the folder."""
        error: StoreError | None = None
        if self._unflushed_since is not None:
            try:
                self._sync()
            except Exception as exc:
                error = self._close_failed("the final flush", exc)
        with self._guard.exclusive():
            self._guard.closed = True
            try:
                self._environment.close()
            except Exception as exc:
                error = error or self._close_failed("closing the LMDB environment", exc)
        return error

    def _close_failed(self, what: str, exc: Exception) -> StoreError:
        error = StoreError(
            f"store at {self._path!r}: {what} failed at close ({type(exc).__name__}: {exc}); "
            "writes made with durable=False may be lost if the machine stops; check the disk")
        error.__cause__ = exc
        return error

    def _failed(self, stage: str, request: WriteRequest, exc: Exception) -> BaseException:
        """The error a failed request's caller sees: a roost error as is, others wrapped."""
        if isinstance(exc, RoostError) and stage == "write":
            return exc
        consequence = {
            "write": "the write was not saved",
            "commit": "the write was not saved; check the disk (space, permissions) and retry",
            "flush": "the write was committed but not flushed, so it may be lost if the machine "
                     "stops; check the disk",
        }[stage]
        error = StoreError(f"store at {self._path!r}: {stage} of {_describe(request.ops)} failed "
                           f"({type(exc).__name__}: {exc}); {consequence}")
        error.__cause__ = exc
        return error

    def _settle(self, outcomes: list[Outcome]) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:
            pass  # the loop is closed: nobody is left waiting


#: The writers whose thread runs: the stores not closed yet.
_running: set[Writer] = set()
_running_lock = threading.Lock()


@atexit.register
def _close_stores_left_open() -> None:
    """Close every store still open when the interpreter exits (see the module docstring)."""
    with _running_lock:
        writers = list(_running)
    for writer in writers:
        writer.close_at_exit()


def _safe_log(level: str, event: str, error: BaseException | None, **fields: Any) -> None:
    """Log from the writer thread; a failing log write (a full disk) must not reach it."""
    try:
        if error is not None:
            fields["error"] = repr(error)
        getattr(_log, level)(event, **fields)
    except Exception:  # nothing sensible is left to do with a log that cannot be written
        return


def _resolve(outcomes: list[Outcome]) -> None:
    """Settle a batch's futures (runs on the event loop)."""
    for future, result, error in outcomes:
        if future.done():
            continue  # its caller was cancelled
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _describe(ops: tuple[Op, ...]) -> str:
    """A short account of a commit's operations for error messages."""
    parts = []
    for op in ops[:3]:
        match op:
            case Put(db, key):
                parts.append(f"put {key!r} in {db!r}")
            case Insert(db, key):
                parts.append(f"insert {key!r} in {db!r}")
            case Delete(db, key):
                parts.append(f"delete {key!r} from {db!r}")
            case Append(db, prefix):
                parts.append(f"append under {prefix!r} in {db!r}")
            case Update(db, key):
                parts.append(f"update {key!r} in {db!r}")
            case Fence(run_id, owner, epoch):
                parts.append(f"fence of run {run_id!r} (node {owner!r}, epoch {epoch})")
            case Lease(run_id):
                parts.append(f"lease of new run {run_id!r}")
    more = f" and {len(ops) - 3} more operations" if len(ops) > 3 else ""
    return ", ".join(parts) + more
