"""A many-readers, one-owner lock that keeps LMDB read transactions out of a map resize."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class MapGuard:
    """Lets any number of readers in at once, or the writer alone to remap or close the map.

    LMDB's `set_mapsize` needs every transaction in the process to be finished, and
    py-lmdb invalidates any still open, so readers hold the guard for the life of one
    read transaction and the writer takes it exclusively to grow or close the map.
    A waiting owner has priority: new readers queue behind it, so a stream of reads
    cannot starve a resize. Readers never wait for the writer's fsyncs, only for a
    remap, which is short. Only one thread, the writer, takes it exclusively.
    """

    def __init__(self) -> None:
        # The shared paths take the bare lock: the Condition wrapper costs a Python call.
        self._lock = threading.Lock()
        self._condition = threading.Condition(self._lock)
        self._readers = 0
        self._owner_waiting = False
        self._owned = False
        self.closed = False

    def acquire_shared(self) -> bool:
        """Enter as a reader; returns False (not entered) once the map has been closed."""
        with self._lock:
            while self._owner_waiting or self._owned:
                self._condition.wait()
            if self.closed:
                return False
            self._readers += 1
            return True

    def release_shared(self) -> None:
        """Leave as a reader, waking a waiting owner when the last reader leaves."""
        with self._lock:
            self._readers -= 1
            if not self._readers and self._owner_waiting:
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the map alone: wait for readers to leave and keep new ones out."""
        with self._condition:
            self._owner_waiting = True
            while self._readers:
                self._condition.wait()
            self._owner_waiting = False
            self._owned = True
        try:
            yield
        finally:
            with self._condition:
                self._owned = False
                self._condition.notify_all()
