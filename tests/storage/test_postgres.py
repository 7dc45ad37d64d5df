"""Specifications of `roost.storage.postgres` beyond the store contract: its schema, the errors
of a bad URL, server, login or database, and several stores writing one database at once.

Every test talks to the session's private server (tests/_postgres.py) in a schema of its
own; the shared behaviour of both stores is in test_store_contract.py.
"""

from __future__ import annotations

import re

import anyio
import asyncpg
import pytest

import roost
from roost.errors import (
    ConfigurationError,
    LeaseLost,
    StoreAccessDenied,
    StoreError,
    StoreForeign,
    StoreSchemaTooNew,
    StoreUnavailable,
    StoreUnreachable,
)
from roost.storage import Append, Insert, Put, Update, is_postgres_url
from roost.storage.ops import Fence, Lease
from roost.storage.postgres import PostgresStore, redact
from tests._postgres import PASSWORD, PostgresServer, free_port

pytestmark = pytest.mark.anyio


async def test_a_new_store_gets_its_tables_and_keeps_its_id_when_reopened(
        postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        first_id = store.store_id
    async with PostgresStore.open(postgres_url, create=False) as store:
        assert store.store_id == first_id

    connection = await asyncpg.connect(postgres_url)
    try:
        tables = {row[0] for row in await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        version = await connection.fetchval("SELECT version FROM roost_schema")
    finally:
        await connection.close()
    assert tables == {"roost_schema", "roost_records", "roost_nodes", "roost_leases",
                      "roost_step_tasks"}
    assert version == 3


async def test_a_store_of_the_first_version_is_migrated_keeping_its_records(
        postgres_server: PostgresServer) -> None:
    schema = postgres_server.fresh_schema()
    url = postgres_server.url(schema=schema)
    async with PostgresStore.open(url) as store:
        await store.commit([Put("runs", b"r", b"v")])
    postgres_server.sql(f"DROP TABLE {schema}.roost_nodes, {schema}.roost_leases, "
                        f"{schema}.roost_step_tasks; "
                        f"UPDATE {schema}.roost_schema SET version = 1")

    async with PostgresStore.open(url) as store:
        assert await store.get("runs", b"r") == b"v"
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])

    connection = await asyncpg.connect(url)
    try:
        assert await connection.fetchval("SELECT version FROM roost_schema") == 3
        assert await connection.fetchval("SELECT owner FROM roost_leases") == "node-a"
    finally:
        await connection.close()


async def test_stores_opening_an_empty_database_at_once_create_one_store(
        postgres_url: str) -> None:
    ids: list[str] = []

    async def open_one() -> None:
        async with PostgresStore.open(postgres_url) as store:
            ids.append(store.store_id)

    async with anyio.create_task_group() as group:
        for _ in range(3):
            group.start_soon(open_one)

    assert len(ids) == 3 and len(set(ids)) == 1


async def test_a_store_made_by_a_newer_roost_is_refused_with_a_request_to_upgrade(
        postgres_server: PostgresServer) -> None:
    schema = postgres_server.fresh_schema()
    url = postgres_server.url(schema=schema)
    async with PostgresStore.open(url):
        pass
    postgres_server.sql(f"UPDATE {schema}.roost_schema SET version = 99")

    with pytest.raises(StoreSchemaTooNew) as raised:
        await PostgresStore.open(url)

    message = str(raised.value)
    assert "version 99" in message and "upgrade roost" in message
    assert redact(url) in message and PASSWORD not in message


async def test_a_database_holding_another_applications_tables_is_refused(
        postgres_server: PostgresServer) -> None:
    schema = postgres_server.fresh_schema()
    postgres_server.sql(f"CREATE TABLE {schema}.invoices (id int)")
    url = postgres_server.url(schema=schema)

    with pytest.raises(StoreForeign) as raised:
        await PostgresStore.open(url)

    message = str(raised.value)
    assert "database 'roost' (schema 't" in message and "invoices" in message
    assert "of its own" in message and PASSWORD not in message


async def test_wrong_credentials_are_refused_naming_the_url_without_the_password(
        postgres_server: PostgresServer) -> None:
    url = postgres_server.url(password="not-the-password")

    with pytest.raises(StoreAccessDenied) as raised:
        await PostgresStore.open(url)

    message = str(raised.value)
    assert f"postgresql://roost@127.0.0.1:{postgres_server.port}/roost" in message
    assert "not-the-password" not in message and "check the user name and password" in message


async def test_an_unreachable_server_is_refused_at_once_with_what_to_check() -> None:
    url = f"postgresql://roost:{PASSWORD}@127.0.0.1:{free_port()}/roost"

    with anyio.fail_after(5), pytest.raises(StoreUnreachable) as raised:
        await PostgresStore.open(url, timeout=2)

    message = str(raised.value)
    assert "cannot be reached" in message and "host and port" in message
    assert PASSWORD not in message


async def test_a_missing_database_and_a_bad_url_are_refused(
        postgres_server: PostgresServer) -> None:
    with pytest.raises(StoreUnavailable, match="createdb"):
        await PostgresStore.open(postgres_server.url(database="nothing_here"))
    with pytest.raises(StoreUnavailable, match="holds no roost store"):
        await PostgresStore.open(postgres_server.url(schema=postgres_server.fresh_schema()),
                                 create=False)
    with pytest.raises(ConfigurationError, match="not a PostgreSQL URL"):
        await PostgresStore.open("mysql://roost@localhost/roost")
    with pytest.raises(ConfigurationError, match="does not parse"):
        await PostgresStore.open("postgresql://roost@localhost:port/roost")


def test_a_url_is_shown_without_its_password() -> None:
    shown = redact("postgresql://ana:s3cret@db.example:5432/app?password=s3cret&search_path=x")

    assert shown == "postgresql://ana@db.example:5432/app?search_path=x"
    assert is_postgres_url("postgres://db/app") and is_postgres_url("postgresql://db/app")
    assert not is_postgres_url(".roost") and not is_postgres_url("postgresql-data")


async def test_a_read_only_store_reads_and_refuses_writes(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Put("runs", b"r", b"v")])
    async with PostgresStore.open(postgres_url, readonly=True) as store:
        assert store.readonly
        assert await store.get("runs", b"r") == b"v"
        with pytest.raises(StoreError, match="read-only"):
            await store.commit([Put("runs", b"r", b"w")])


async def test_two_stores_on_one_database_never_lose_each_others_writes(
        postgres_url: str) -> None:
    def increment(current: bytes | None) -> bytes:
        return b"%d" % (int(current or b"0") + 1)

    inserted: list[bool] = []
    seqs: list[int] = []

    async def write(store: PostgresStore, i: int) -> None:
        [done, seq, _] = await store.commit([
            Insert("ledger", b"claim", b"%d" % i),
            Append("checkpoints", b"run\x00", lambda seq: b""),
            Update("runs", b"counter", increment)])
        inserted.append(done)
        seqs.append(seq)

    async with PostgresStore.open(postgres_url) as one, PostgresStore.open(postgres_url) as two:
        async with anyio.create_task_group() as group:
            for i in range(40):
                group.start_soon(write, one if i % 2 else two, i)
        assert await one.get("runs", b"counter") == b"40"

    assert inserted.count(True) == 1
    assert sorted(seqs) == list(range(1, 41))


async def test_a_lost_connection_fails_the_writes_in_flight_and_the_next_write_reconnects(
        postgres_url: str, postgres_server: PostgresServer) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Put("runs", b"before", b"v")])
        postgres_server.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE pid <> pg_backend_pid() AND datname = 'roost'")

        outcomes = []
        for _ in range(2):
            try:
                outcomes.append(await store.commit([Put("runs", b"after", b"v")]))
            except StoreError as error:
                outcomes.append(str(error))

        assert outcomes[-1] == [None]
        assert all(o == [None] or "check that the server is up" in str(o)
                   or "may or may not" in str(o) for o in outcomes)
        assert await store.get("runs", b"after") == b"v"


async def test_an_actor_system_opens_a_postgres_store_from_a_url(postgres_url: str) -> None:
    async with roost.ActorSystem(store=postgres_url, log_format="json",
                                 log_level="warning") as system:
        assert isinstance(system.store, PostgresStore)
        assert system.store_path is None
        assert system.metrics()  # the store's counters are read like LMDB's


async def test_an_actor_system_with_a_bad_store_url_fails_to_start_saying_why(
        postgres_server: PostgresServer) -> None:
    system = roost.ActorSystem(store=postgres_server.url(password="wrong"), log_format="json",
                               log_level="warning")

    with pytest.raises(StoreAccessDenied, match=re.escape("postgresql://roost@127.0.0.1")):
        async with system:
            pass


async def lease_row(url: str, run_id: str) -> tuple[str | None, int, float] | None:
    """(owner, epoch, seconds left) of a run's lease, read as another client would."""
    connection = await asyncpg.connect(url)
    try:
        row = await connection.fetchrow(
            "SELECT owner, epoch, extract(epoch FROM lease_until - now())::float8 "
            "FROM roost_leases WHERE run_id = $1", run_id)
    finally:
        await connection.close()
    return None if row is None else (row[0], row[1], row[2])


async def test_a_new_runs_lease_is_written_with_its_record(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])
        await store.commit([Lease("run-2", "orders", None, 30.0), Put("runs", b"run-2", b"")])
        with pytest.raises(StoreError):  # the run's record is refused: no lease without it
            await store.commit([Lease("run-3", "orders", "node-a", 30.0),
                                Insert("runs", b"run-3", b""), Update("runs", b"bad", _refuse)])

    owner, epoch, left = await lease_row(postgres_url, "run-1") or (None, 0, 0.0)
    assert (owner, epoch) == ("node-a", 1) and 28 < left <= 30
    queued = await lease_row(postgres_url, "run-2")
    assert queued is not None and queued[:2] == (None, 0) and queued[2] <= 0  # claimable now
    assert await lease_row(postgres_url, "run-3") is None


async def test_a_second_lease_for_a_run_is_refused_alone_and_a_run_queued_again_moves_on(
        postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])
        await store.commit([Lease("run-2", "orders", None, 30.0), Put("runs", b"run-2", b"")])
        async with anyio.create_task_group() as group:  # one batch: the others still commit
            group.start_soon(store.commit, [Lease("run-3", "orders", "node-b", 30.0),
                                            Put("runs", b"run-3", b"")])
            group.start_soon(store.commit, [Lease("run-2", "orders", None, 30.0)])
            with pytest.raises(StoreError, match="run 'run-1' already has a lease"):
                await store.commit([Lease("run-1", "orders", "node-b", 30.0)])

    assert (await lease_row(postgres_url, "run-1") or ())[:2] == ("node-a", 1)
    assert (await lease_row(postgres_url, "run-2") or ())[:2] == (None, 1)  # queued again
    assert (await lease_row(postgres_url, "run-3") or ())[:2] == ("node-b", 1)


def _refuse(current: bytes | None) -> bytes:
    raise StoreError("refused by the test")


async def test_a_write_fenced_by_the_leases_owner_and_epoch_commits(postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])

        assert await store.commit([Fence("run-1", "node-a", 1),
                                   Put("checkpoints", b"run-1\x00x", b"v")]) == [None, None]
        assert await store.get("checkpoints", b"run-1\x00x") == b"v"


async def test_a_stale_owners_write_is_refused_naming_the_run_the_node_and_the_epochs(
        postgres_url: str, postgres_server: PostgresServer) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])
        # Another node takes the run over: the epoch moves on.
        connection = await asyncpg.connect(postgres_url)
        try:
            await connection.execute("UPDATE roost_leases SET owner = 'node-b', epoch = 2")
        finally:
            await connection.close()

        with pytest.raises(LeaseLost) as raised:
            await store.commit([Fence("run-1", "node-a", 1), Put("runs", b"run-1", b"late")])
        with pytest.raises(LeaseLost, match="another node took it over, or it ended"):
            await store.commit([Fence("run-9", "node-a", 1), Put("runs", b"run-9", b"late")])
        # Others' writes in the same batch are not sunk by the refused one.
        async with anyio.create_task_group() as group:
            group.start_soon(store.commit, [Fence("run-1", "node-b", 2), Put("runs", b"ok", b"")])
            with pytest.raises(LeaseLost):
                await store.commit([Fence("run-1", "node-a", 1), Put("runs", b"late", b"")])

        assert await store.get("runs", b"run-1") == b""
        assert await store.get("runs", b"ok") == b"" and await store.get("runs", b"late") is None

    message = str(raised.value)
    assert "node 'node-a' lost the lease of run 'run-1'" in message
    assert "held epoch 1" in message and "held by 'node-b' at epoch 2" in message
    assert raised.value.run_id == "run-1" and raised.value.held_epoch == 2


async def test_a_fenced_write_waits_for_a_takeover_in_progress_and_is_then_refused(
        postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])
        taker = await asyncpg.connect(postgres_url)
        try:
            claiming = taker.transaction()
            await claiming.start()
            await taker.execute("SELECT 1 FROM roost_leases WHERE run_id = 'run-1' FOR UPDATE")
            await taker.execute("UPDATE roost_leases SET owner = 'node-b', epoch = 2")
            with anyio.fail_after(10):
                async with anyio.create_task_group() as group:
                    async def write() -> None:
                        with pytest.raises(LeaseLost):
                            await store.commit([Fence("run-1", "node-a", 1),
                                                Put("runs", b"run-1", b"late")])

                    group.start_soon(write)
                    while not await taker.fetchval(  # noqa: ASYNC110 - until the write waits for the lock
                            "SELECT count(*) FROM pg_locks WHERE NOT granted"):
                        await anyio.sleep(0.01)
                    await claiming.commit()
        finally:
            await taker.close()
        assert await store.get("runs", b"run-1") == b""


async def test_a_fencer_conditions_every_commit_and_callers_see_only_their_results(
        postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Lease("run-1", "orders", "node-a", 30.0), Put("runs", b"run-1", b"")])
        store.fence_with(lambda ops: [Fence("run-1", "node-a", 1)])

        assert await store.commit([Insert("ledger", b"k", b"v")]) == [True]
        store.fence_with(lambda ops: [Fence("run-1", "node-a", 2)])
        with pytest.raises(LeaseLost):
            await store.commit([Insert("ledger", b"k2", b"v")])
        store.fence_with(None)
        assert await store.commit([Insert("ledger", b"k2", b"v")]) == [True]


class BusyAtCommit:
    """A writer connection whose first COMMIT asyncpg refuses to send, as it does when a
    server going away left its protocol busy; everything else goes to the real one."""

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._connection, name)

    async def execute(self, query: str, *args: object) -> str:
        if query == "COMMIT" and not self.refused:
            self.refused += 1
            raise asyncpg.exceptions.InternalClientError(
                "cannot switch to state 15; another operation (2) is in progress")
        result: str = await self._connection.execute(query, *args)
        return result


async def test_a_commit_the_driver_never_sent_is_redone_on_a_new_connection(
        postgres_url: str) -> None:
    async with PostgresStore.open(postgres_url) as store:
        writer = store._writer
        assert writer is not None
        busy = BusyAtCommit(writer._connection)
        writer._connection = busy

        await store.commit([Put("runs", b"run-1", b"saved")])

        assert busy.refused == 1 and writer._connection is not busy
        assert await store.get("runs", b"run-1") == b"saved"


async def test_writes_made_while_the_server_restarts_are_saved_once_it_is_back(
        postgres_url: str, postgres_server: PostgresServer) -> None:
    async with PostgresStore.open(postgres_url) as store:
        await store.commit([Put("runs", b"before", b"v")])
        saved: list[int] = []

        async def write_through_the_restart() -> None:
            for i in range(30):
                await store.commit([Put("runs", b"during-%d" % i, b"v")])
                saved.append(i)
                await anyio.sleep(0.05)

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(write_through_the_restart)
                await anyio.to_thread.run_sync(postgres_server.restart)

        assert saved == list(range(30))
        assert [await store.get("runs", b"during-%d" % i) for i in range(30)] == [b"v"] * 30


async def test_a_stores_sessions_idle_inside_a_transaction_end_after_the_timeout_given(
        postgres_url: str) -> None:
    async def setting(connection: asyncpg.Connection) -> str:
        return str(await connection.fetchval("SHOW idle_in_transaction_session_timeout"))

    async with PostgresStore.open(postgres_url, idle_transaction_timeout=2.5) as store:
        assert await store.on_connection(setting) == "2500ms"
    with pytest.raises(ConfigurationError, match="idle_transaction_timeout=0 must be a positive"):
        await PostgresStore.open(postgres_url, idle_transaction_timeout=0)
