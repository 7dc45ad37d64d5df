"""`Listener`: a connection of a PostgreSQL store held to LISTEN on channels, whose
notifications are handed to the caller's event loop (see `PostgresStore.listen`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

Heard = Callable[[str, str], None]


class Listener:
    """Notifications on `channels` call `heard(channel, payload)` on `loop`, until `close`.

    It holds one connection of the store's pool; if the connection breaks (the server
    restarted) it stops hearing, says so in `alive`, and the owner listens again.
    """

    def __init__(self, pool: Any, channels: Sequence[str], heard: Heard,
                 loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._pool = pool
        self._channels = tuple(channels)
        self._heard = heard
        self._loop = loop
        self._timeout = timeout
        self._connection: Any = None
        self._closed = False

    @property
    def alive(self) -> bool:
        """Whether it still listens (its connection is open, and still its own: the pool
        takes back a connection the server dropped)."""
        return not self._closed and self._connection is not None and _open(self._connection)

    async def start(self) -> None:
        """On the store's I/O loop: take a connection and LISTEN on the channels."""
        self._connection = await self._pool.acquire(timeout=self._timeout)
        try:
            for channel in self._channels:
                await self._connection.add_listener(channel, self._notified)
        except BaseException:
            await self.close()
            raise

    def _notified(self, _connection: Any, _pid: int, channel: str, payload: str) -> None:
        if not self._closed:
            self._loop.call_soon_threadsafe(self._hand_over, channel, payload)

    def _hand_over(self, channel: str, payload: str) -> None:
        if not self._closed:
            self._heard(channel, payload)

    async def close(self) -> None:
        """On the store's I/O loop: stop listening and give the connection back."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if not _open(connection):
            return  # the pool has it back already
        try:
            for channel in self._channels:
                await connection.remove_listener(channel, self._notified)
        finally:
            await self._pool.release(connection, timeout=self._timeout)


def _open(connection: Any) -> bool:
    """Whether a pooled connection is open and still held (asyncpg raises for one the pool
    has taken back, as it does when the server dropped it)."""
    try:
        return not connection.is_closed()
    except Exception:  # InterfaceError: released back to the pool
        return False
