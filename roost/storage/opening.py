"""Open a store by where it lives: a PostgreSQL URL or an LMDB folder."""

from __future__ import annotations

import os

from roost.storage.postgres import PostgresStore, PostgresStoreOpening, is_postgres_url
from roost.storage.store import Durability, Store, StoreOpening


def open_store(location: str | os.PathLike[str], *, durability: Durability = "sync",
               create: bool = True, readonly: bool = False) -> StoreOpening | PostgresStoreOpening:
    """The store at `location`: `postgresql://...` opens a `PostgresStore`, anything else the
    LMDB `Store` in that folder. Await it, or use it with `async with`.

    Raises:
        StoreUnavailable: the store cannot be opened (see `Store.open`, `PostgresStore.open`).
    """
    if is_postgres_url(location):
        return PostgresStore.open(location, durability=durability, create=create,
                                  readonly=readonly)
    return Store.open(location, durability=durability, create=create, readonly=readonly)
