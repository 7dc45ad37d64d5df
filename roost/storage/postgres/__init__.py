"""roost's store on PostgreSQL (`roost[postgres]`): the LMDB store's interface, shared by machines.

`ActorSystem(store="postgresql://...")` opens it; `PostgresStore.open(url)` opens it
directly. asyncpg is imported only when a store is opened.
"""

from roost.storage.postgres._url import is_postgres_url, redact
from roost.storage.postgres.store import MAX_KEY_SIZE, PostgresStore, PostgresStoreOpening

__all__ = ["MAX_KEY_SIZE", "PostgresStore", "PostgresStoreOpening", "is_postgres_url", "redact"]
