"""The tables of a PostgreSQL store, created and migrated by roost, and the checks made at open.

A store lives in the first schema of the connection's `search_path` (`public` by
default; `?search_path=NAME` in the URL gives it a schema of its own). Its version is
the one row of `roost_schema`; opening applies the migrations above it in one
transaction under an advisory lock, so processes opening the same store at once
migrate it once. A newer version than this roost knows is refused, never downgraded,
and a schema holding other tables but no `roost_schema` is refused as another
application's.

Records live in `roost_records`, one row per key of every named database: `(db, key,
value)` with the primary key `(db, key)`. `bytea` compares bytewise, so a range scan
over the primary key yields keys in LMDB's order.
"""

from __future__ import annotations

import uuid
from typing import Any

from roost.errors import StoreForeign, StoreSchemaTooNew, StoreUnavailable

#: Tables roost owns in its schema.
VERSION_TABLE = "roost_schema"
RECORDS_TABLE = "roost_records"
#: A cluster's nodes (`roost.cluster`): one row per system that ever ran on the store.
NODES_TABLE = "roost_nodes"
#: A cluster's run leases: one row per run in flight or queued (deleted as it ends).
LEASES_TABLE = "roost_leases"
#: A cluster's step-task queue: a step of a run sent to a pool another node serves.
TASKS_TABLE = "roost_step_tasks"

#: The statements that take a store from version N-1 to N, for each N from 1.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        f"""CREATE TABLE {RECORDS_TABLE} (
                db text COLLATE "C" NOT NULL,
                key bytea NOT NULL,
                value bytea NOT NULL,
                PRIMARY KEY (db, key))""",
    ),
    (
        # Times are the server's (`now()`), so the nodes' clocks need not agree.
        f"""CREATE TABLE {NODES_TABLE} (
                id text PRIMARY KEY,
                host text NOT NULL,
                pid integer NOT NULL,
                pools text[] NOT NULL,
                dead_after double precision NOT NULL,
                started_at timestamptz NOT NULL DEFAULT now(),
                heartbeat timestamptz NOT NULL DEFAULT now(),
                stopped_at timestamptz)""",
        # owner NULL: a queued run no node has claimed yet. parked: why no node may claim
        # it again (taken over too many times).
        f"""CREATE TABLE {LEASES_TABLE} (
                run_id text PRIMARY KEY,
                pipeline text NOT NULL,
                owner text,
                epoch bigint NOT NULL,
                lease_until timestamptz NOT NULL,
                takeovers integer NOT NULL DEFAULT 0,
                parked text)""",
        f"CREATE INDEX {LEASES_TABLE}_claimable ON {LEASES_TABLE} (lease_until) "
        "WHERE parked IS NULL",
        f"CREATE INDEX {LEASES_TABLE}_owner ON {LEASES_TABLE} (owner)",
    ),
    (
        # One row per step request sent to a pool: `owner` (the node driving the run, at
        # `epoch`) waits for it; a node serving `pool` claims it (`claimed_by`, until
        # `claim_until`, renewed by its heartbeat), runs it and writes `result` or `error`;
        # the owner deletes the row as it reads the answer.
        f"""CREATE TABLE {TASKS_TABLE} (
                id bigserial PRIMARY KEY,
                run_id text NOT NULL,
                epoch bigint NOT NULL,
                pipeline text NOT NULL,
                pool text NOT NULL,
                owner text NOT NULL,
                request bytea NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                status text NOT NULL DEFAULT 'queued',
                claimed_by text,
                claim_until timestamptz,
                claims integer NOT NULL DEFAULT 0,
                answer bytea)""",
        f"CREATE INDEX {TASKS_TABLE}_queue ON {TASKS_TABLE} (pool, id) "
        "WHERE status IN ('queued', 'claimed')",
        f"CREATE INDEX {TASKS_TABLE}_run ON {TASKS_TABLE} (run_id)",
    ),
)
#: The schema version this roost writes (and the newest it can open).
CURRENT_VERSION = len(MIGRATIONS)

# Any fixed number: the advisory lock that serializes the openers of one database.
_OPEN_LOCK = 0x726F6F7374  # "roost"


async def prepare(connection: Any, url: str, *, create: bool) -> str:
    """Check the store's schema at `url`, create or migrate it; return the store's id.

    Raises:
        StoreUnavailable: no schema to put it in, or no store there and `create` is False.
        StoreForeign: the schema holds other tables and no store.
        StoreSchemaTooNew: the store was made by a newer roost.
    """
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _OPEN_LOCK)
        schema = await connection.fetchval("SELECT current_schema()")
        database = await connection.fetchval("SELECT current_database()")
        if schema is None:
            raise StoreUnavailable(url, f"database {database!r} has no schema in the search_path "
                                        "to keep the store in; create it (CREATE SCHEMA) or fix "
                                        "search_path in the URL")
        where = repr(database) if schema == "public" else f"{database!r} (schema {schema!r})"
        tables = [row[0] for row in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY tablename", schema)]
        if VERSION_TABLE not in tables:
            if tables:
                raise StoreForeign(url, where, tables)
            if not create:
                raise StoreUnavailable(url, f"database {where} holds no roost store; open it "
                                            "with create=True to make one")
            store_id = uuid.uuid4().hex
            await connection.execute(f"""CREATE TABLE {VERSION_TABLE} (
                version integer NOT NULL, store_id text NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                migrated_at timestamptz NOT NULL DEFAULT now())""")
            await connection.execute(f"INSERT INTO {VERSION_TABLE} (version, store_id) "
                                     "VALUES (0, $1)", store_id)
        row = await connection.fetchrow(f"SELECT version, store_id FROM {VERSION_TABLE}")
        if row is None:
            raise StoreUnavailable(url, f"the {VERSION_TABLE} table of database {where} is "
                                        "empty, so the store's version is unknown; restore the "
                                        "database from a backup")
        version, store_id = row["version"], row["store_id"]
        if version > CURRENT_VERSION:
            raise StoreSchemaTooNew(url, version, CURRENT_VERSION)
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                await connection.execute(statement)
        if version < CURRENT_VERSION:
            await connection.execute(f"UPDATE {VERSION_TABLE} SET version = $1, "
                                     "migrated_at = now()", CURRENT_VERSION)
        return str(store_id)
