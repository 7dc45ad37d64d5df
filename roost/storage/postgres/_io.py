"""The thread a PostgreSQL store talks to its server from: its own event loop and connections.

asyncpg connections belong to the event loop that made them. A store keeps them on a
loop of its own, in a thread of its own (as the LMDB store keeps its writes in its
writer thread), so that:

- the application's loop only awaits futures: the group commit and the protocol work
  run beside it;
- `Store.read(function)` can run `function` in a worker thread whose snapshot reads
  wait here, and `read_on_loop` can do the same from the application's loop without
  deadlocking (it blocks that loop for its round trips; see `PostgresStore.read_on_loop`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class IoThread:
    """A daemon thread running an event loop until `stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread and its loop."""
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run `coroutine` on the thread's loop (from any other thread).

        Raises:
            RuntimeError: the loop has stopped.
        """
        try:
            return asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        except RuntimeError:  # the loop is closed: nothing will ever run it
            coroutine.close()
            raise

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the thread's loop and await its result from the caller's loop.

        Cancelling the caller cancels the coroutine too.
        """
        return await asyncio.wrap_future(self.submit(coroutine))

    def wait(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the thread's loop and block this thread until it is done.

        Raises:
            TimeoutError: it took longer than `timeout` seconds (it is cancelled).
        """
        future = self.submit(coroutine)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g}s") from None

    def stop(self) -> None:
        """Stop the loop once its callbacks have run, and wait for the thread to end."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        elif self._thread.ident is None:  # never started
            self.loop.close()
