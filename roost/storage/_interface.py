"""What every store offers: the interface the LMDB `Store` and the `PostgresStore` both implement.

Code above the storage layer (checkpoints, runs, the ledger, gates, traces, pipelines)
needs only these members, so it runs on either store. What a kind of store alone
has stays on its class (LMDB's `copy_to`; PostgreSQL has `pg_dump`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from roost._histogram import Histogram
from roost.errors import StoreError

if TYPE_CHECKING:
    from roost.storage.ops import Op
    from roost.storage.postgres.store import PostgresStore
    from roost.storage.store import Durability, Store, StoreStatistics

T = TypeVar("T")


class SnapshotReader(Protocol):
    """One consistent read of a store, handed to the function given to `read`."""

    def get(self, db: str, key: bytes) -> bytes | None: ...

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
             stop: bytes | None = None, reverse: bool = False) -> Iterator[tuple[bytes, bytes]]: ...


class StoreInterface(Protocol):
    """A store: named databases of ordered byte keys, all-or-nothing commits, snapshot reads."""

    @property
    def path(self) -> str: ...

    @property
    def store_id(self) -> str: ...

    @property
    def durability(self) -> Durability: ...

    @property
    def readonly(self) -> bool: ...

    @property
    def max_key_size(self) -> int: ...

    @property
    def reads_in_memory(self) -> bool:
        """Whether reads are memory reads (LMDB's map), so `read_on_loop` costs less than a
        thread hop; False when each read is a round trip (PostgreSQL: use `read`)."""
        ...

    def on_failure(self, listener: Callable[[StoreError], None]) -> None: ...

    def statistics(self) -> StoreStatistics: ...

    def histograms(self) -> dict[str, Histogram]: ...

    async def commit(self, ops: Sequence[Op], *, durable: bool | None = None) -> list[Any]: ...

    async def get(self, db: str, key: bytes) -> bytes | None: ...

    async def last(self, db: str, prefix: bytes) -> tuple[bytes, bytes] | None: ...

    def scan(self, db: str, *, prefix: bytes = b"", start: bytes | None = None,
             stop: bytes | None = None, reverse: bool = False,
             limit: int | None = None) -> AsyncIterator[tuple[bytes, bytes]]: ...

    async def read(self, function: Callable[[SnapshotReader], T]) -> T: ...

    def read_on_loop(self, function: Callable[[SnapshotReader], T]) -> T: ...

    async def close(self) -> None: ...


if TYPE_CHECKING:
    def _both_stores_implement_it(lmdb: Store, postgres: PostgresStore) -> list[StoreInterface]:
        """Checked by mypy: both stores fit the interface."""
        return [lmdb, postgres]
