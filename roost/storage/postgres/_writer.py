"""The group commit of a PostgreSQL store: every write queued meanwhile, in one transaction.

The writer is a task on the store's I/O loop (`_io.IoThread`) with a connection of its
own. Each turn it takes every write queued at that moment, applies them in order in
one transaction, in a handful of statements whatever their number (see `_batch`: the
keys they read are read first, `FOR UPDATE`, and so are the run leases the writes are
fenced by), commits, and wakes the application's loop once to settle all of their
futures: one commit, and one WAL flush when any write in the batch is durable (a batch
of non-durable writes commits with `synchronous_commit = off`).

A write whose operations raise is taken out and the transaction redone without it, so
one bad write cannot sink the others (as in the LMDB writer). A deadlock or
serialization failure against another process redoes the batch. A connection lost
before the batch's COMMIT was sent (nothing of it was saved) is made again and the
batch redone, for up to the store's timeout: a restart of the server costs latency,
not errors. A connection lost during the COMMIT, or for longer, fails the batch with a
`StoreError` saying whether it may have been saved, and the next batch connects again.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from roost._histogram import BATCH_BUCKETS, Histogram
from roost._logging import get_logger
from roost.errors import RoostError, StoreError, StoreUnreachable
from roost.storage._writer import Outcome, WriteRequest, _describe, _resolve
from roost.storage.ops import Fence
from roost.storage.postgres import _batch

# Bounds one transaction's size and the wait of the writes queued behind it.
_MAX_BATCH = 1024
# Times a batch is redone after a deadlock or serialization failure before it fails.
_MAX_RETRIES = 5

_log = get_logger("roost.storage")


class PostgresWriter:
    """Commits a store's writes from its I/O loop; `submit` and `stop` are called from the
    application's loop.

    Counters are written on the I/O loop and read by `PostgresStore.statistics()`.
    """

    def __init__(self, io_loop: asyncio.AbstractEventLoop, loop: asyncio.AbstractEventLoop,
                 connect: Callable[[], Awaitable[Any]], connection: Any, *, url: str,
                 connection_errors: tuple[type[BaseException], ...],
                 retry_errors: tuple[type[BaseException], ...],
                 reconnect_for: float = 10.0) -> None:
        self._io_loop = io_loop
        self._loop = loop
        self._connect = connect
        self._connection: Any = connection
        self._url = url
        self._connection_errors = connection_errors
        self._retry_errors = retry_errors
        # What makes a batch be done again: a deadlock or serialization failure, a race.
        self._redo_errors: tuple[type[BaseException], ...] = (*retry_errors, _batch.WriteRaced)
        self._reconnect_for = reconnect_for  # seconds a batch waits for a lost server
        self._lost_server = (*connection_errors, StoreUnreachable)  # ... connecting again too
        self._pending: list[WriteRequest] = []  # this loop tick's writes, not yet handed over
        self._queue: collections.deque[WriteRequest] = collections.deque()
        self._wake = asyncio.Event()
        self._stop: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0
        self.failed_writes = 0
        self.syncs = 0
        self.commit_seconds = Histogram()
        self.batch_writes = Histogram(BATCH_BUCKETS)
        #: Set (once) when the writer task has ended abnormally: no write can be saved.
        self.dead: StoreError | None = None
        self._on_death: list[Callable[[StoreError], None]] = []

    def on_death(self, listener: Callable[[StoreError], None]) -> None:
        """Call `listener(error)` on the application's loop if the writer task dies."""
        self._on_death.append(listener)

    def start(self) -> None:
        """Start the writer task (called on the I/O loop)."""
        self._task = self._io_loop.create_task(self._run(), name=f"roost-store-writer:{self._url}")

    # --- the application's loop -----------------------------------------------------------

    def submit(self, request: WriteRequest) -> None:
        """Queue a write (never blocks); one loop tick's writes travel to the writer together."""
        if self.dead is not None:
            request.future.set_exception(self.dead)
            return
        self._pending.append(request)
        if len(self._pending) == 1:
            self._loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        batch, self._pending = self._pending, []
        if self.dead is not None:
            _resolve([(request.future, None, self.dead) for request in batch])
            return
        self._io_loop.call_soon_threadsafe(self._take, batch)

    async def stop(self) -> None:
        """Finish the queued writes, then end the writer task and close its connection."""
        if self._pending:
            self._hand_over()
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._finish(), self._io_loop))

    # --- the I/O loop ---------------------------------------------------------------------

    def _take(self, batch: list[WriteRequest]) -> None:
        self._queue.extend(batch)
        self._wake.set()

    async def _finish(self) -> None:
        self._stop = self._io_loop.create_future()
        self._wake.set()
        if self._task is not None and not self._task.done():
            await self._stop
        if self._connection is not None:
            try:
                await asyncio.wait_for(self._connection.close(), 5)
            except Exception:  # the server is gone: drop the socket
                self._connection.terminate()
            self._connection = None

    async def _run(self) -> None:
        try:
            await self._serve()
        except BaseException as error:  # the task is ending: nobody may be left waiting
            self._die(error)
            if not isinstance(error, Exception):
                raise
        finally:
            if self._stop is not None and not self._stop.done():
                self._stop.set_result(None)

    async def _serve(self) -> None:
        while True:
            if not self._queue:
                if self._stop is not None:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(_MAX_BATCH, len(self._queue)))]
            self._settle(await self._write(batch))

    def _die(self, error: BaseException) -> None:
        dead = StoreError(
            f"store at {self._url!r}: the writer stopped ({type(error).__name__}: {error}); no "
            "write can be saved any more; stop the process and open the store again (writes "
            "acknowledged before this are safe)")
        dead.__cause__ = error
        self.dead = dead
        outcomes: list[Outcome] = [(request.future, None, dead) for request in self._queue]
        self._queue.clear()
        try:
            self._loop.call_soon_threadsafe(self._after_death, outcomes, dead)
        except RuntimeError:
            pass  # the application's loop is closed: nobody is left waiting

    def _after_death(self, outcomes: list[Outcome], dead: StoreError) -> None:
        _resolve(outcomes)
        for listener in self._on_death:
            listener(dead)

    def _settle(self, outcomes: list[Outcome]) -> None:
        try:
            self._loop.call_soon_threadsafe(_resolve, outcomes)
        except RuntimeError:
            pass  # the application's loop is closed: nobody is left waiting

    async def _write(self, batch: list[WriteRequest]) -> list[Outcome]:
        """Commit `batch` in one transaction; say how each write went."""
        outcomes: list[Outcome] = []
        started = time.perf_counter()
        retries = reconnects = 0
        while batch:
            stage = "write"
            try:
                connection = await self._connected()
                durable = any(request.durable for request in batch)
                await connection.execute(
                    "BEGIN" if durable else "BEGIN; SET LOCAL synchronous_commit = off")
                fenced = {op.run_id for request in batch for op in request.ops
                          if isinstance(op, Fence)}
                leases = await _batch.lock_leases(connection, fenced) if fenced else {}
                try:
                    results = await _batch.apply_batch(
                        connection, [request.ops for request in batch], leases)
                except _batch.OpFailed as failed:
                    if not isinstance(failed.error, Exception) or isinstance(
                            failed.error, self._connection_errors + self._retry_errors):
                        raise failed.error from None
                    await connection.execute("ROLLBACK")
                    refused = batch.pop(failed.index)
                    self.failed_writes += 1
                    outcomes.append((refused.future, None,
                                     self._failed("write", refused, failed.error)))
                    continue
                stage = "commit"
                await connection.execute("COMMIT")
            except self._redo_errors as error:
                await self._rollback()
                retries += 1
                if retries <= _MAX_RETRIES:
                    continue
                return outcomes + self._fail_all(batch, "write", cast(Exception, error))
            except Exception as error:
                self._drop_connection()
                if ((stage == "write" or _commit_never_sent(error))
                        and isinstance(error, self._lost_server)
                        and time.perf_counter() - started < self._reconnect_for):
                    # Lost before COMMIT was sent: nothing of it was saved, so it is safe to
                    # redo once the server is back (a restart costs latency, not errors).
                    reconnects += 1
                    await asyncio.sleep(min(0.5, 0.02 * 2 ** min(reconnects, 5)))
                    continue
                return outcomes + self._fail_all(batch, stage, error)
            self.commits += 1
            if durable:
                self.syncs += 1
            self.commit_seconds.observe(time.perf_counter() - started)
            self.batch_writes.observe(len(batch))
            self.writes += len(batch)
            outcomes += [(request.future, result, None)
                         for request, result in zip(batch, results, strict=True)]
            return outcomes
        return outcomes

    async def _connected(self) -> Any:
        if self._connection is None or self._connection.is_closed():
            self._drop_connection()
            self._connection = await self._connect()
        return self._connection

    async def _rollback(self) -> None:
        try:
            await self._connection.execute("ROLLBACK")
        except Exception:  # a broken connection: the next batch connects again
            self._drop_connection()

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.terminate()
            self._connection = None

    def _fail_all(self, batch: list[WriteRequest], stage: str,
                  error: Exception) -> list[Outcome]:
        self.failed_writes += len(batch)
        try:
            _log.error("store_commit_failed", store=self._url, writes=len(batch),
                       error=repr(error))
        except Exception:  # a log that cannot be written must not stop the writer
            pass
        return [(request.future, None, self._failed(stage, request, error, server=True))
                for request in batch]

    def _failed(self, stage: str, request: WriteRequest, error: Exception, *,
                server: bool = False) -> BaseException:
        """The error a failed write's caller sees: a roost error as is, others wrapped
        (`server`: the server or the connection failed, not the write's own operations)."""
        if isinstance(error, RoostError) and stage == "write" and not server:
            return error
        consequence = {
            "write": "the write was not saved",
            "commit": "the connection was lost while committing, so the write may or may not "
                      "have been saved; check the server and retry if it was not",
        }[stage]
        if stage == "write" and server:
            consequence += "; check that the server is up (the next write connects again)"
        failed = StoreError(f"store at {self._url!r}: {stage} of {_describe(request.ops)} failed "
                            f"({type(error).__name__}: {error}); {consequence}")
        failed.__cause__ = error
        return failed


def _commit_never_sent(error: BaseException) -> bool:
    """Whether asyncpg refused to send the COMMIT at all: its protocol was still busy with
    an operation the server's going away cut short (seen when a server restarts), which
    it checks before writing anything. The transaction was then not committed, and the
    batch may be redone like one lost before its COMMIT."""
    return "cannot switch to state" in str(error)

