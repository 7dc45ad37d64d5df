"""The store specification, run against both stores: LMDB (`Store`) and PostgreSQL (`PostgresStore`).

Whatever sits on a store (checkpoints, run records, the ledger, gates, traces) relies
on exactly this: ordered byte keys per named database, all-or-nothing commits whose
results come back in order, read-modify-writes serialized with every other write,
consistent snapshot reads, the durable flag, and clear errors for what a store
cannot take. Each test runs once per store; the PostgreSQL one talks to the
session's private server (tests/_postgres.py), in a schema of its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import pytest

from roost.errors import ConfigurationError, IdempotencyConflict, RunNotFound, StoreError
from roost.storage import (
    Append,
    CheckpointStore,
    Delete,
    Insert,
    Ledger,
    Op,
    Put,
    RunStore,
    SnapshotReader,
    StoreInterface,
    Update,
)
from roost.storage.ops import Changed

pytestmark = pytest.mark.anyio

Opener = Callable[..., Any]



@pytest.fixture
def open_store(open_either_store: Opener) -> Opener:
    return open_either_store


@pytest.fixture
def store(either_store: StoreInterface) -> StoreInterface:
    return either_store


async def keys(store: StoreInterface, db: str, **options: Any) -> list[bytes]:
    return [key async for key, _ in store.scan(db, **options)]


# --- commits ----------------------------------------------------------------------------


async def test_a_committed_write_is_read_back_after_the_store_is_reopened(
        open_store: Opener) -> None:
    async with open_store() as store:
        assert await store.commit([Put("runs", b"r1", b"one"), Put("gates", b"g1", b"gate")]) \
            == [None, None]
    async with open_store() as store:
        assert await store.get("runs", b"r1") == b"one"
        assert await store.get("gates", b"g1") == b"gate"
        assert await store.get("runs", b"g1") is None


async def test_commit_applies_operations_in_order_and_returns_their_results(
        store: StoreInterface) -> None:
    results = await store.commit([
        Put("ledger", b"k", b"1"),
        Update("ledger", b"k", lambda current: (current or b"") + b"2"),
        Append("traces", b"t\x00", lambda seq: b"span %d" % seq),
        Append("traces", b"t\x00", lambda seq: b"span %d" % seq),
        Delete("ledger", b"absent"),
        Delete("ledger", b"k"),
    ])

    assert results == [None, b"12", 1, 2, False, True]
    assert await store.get("ledger", b"k") is None
    assert [value async for _, value in store.scan("traces", prefix=b"t\x00")] \
        == [b"span 1", b"span 2"]


async def test_an_insert_stores_a_new_key_and_leaves_an_existing_one_as_it_was(
        store: StoreInterface) -> None:
    assert await store.commit([Insert("ledger", b"k", b"first"), Insert("ledger", b"k", b"second"),
                               Insert("ledger", b"j", b"other")]) == [True, False, True]

    assert await store.get("ledger", b"k") == b"first"
    assert await store.get("ledger", b"j") == b"other"


async def test_an_update_creates_changes_and_deletes_a_key(store: StoreInterface) -> None:
    seen: list[bytes | None] = []

    def append_x(current: bytes | None) -> bytes:
        seen.append(current)
        return (current or b"") + b"x"

    assert await store.commit([Update("runs", b"k", append_x)]) == [b"x"]
    assert await store.commit([Update("runs", b"k", append_x)]) == [b"xx"]
    assert await store.commit([Update("runs", b"k", lambda current: None)]) == [None]
    assert seen == [None, b"x"]
    assert await store.get("runs", b"k") is None


async def test_an_update_may_write_more_keys_with_its_value_in_the_same_commit(
        store: StoreInterface) -> None:
    await store.commit([Put("gates", b"index-old", b"r")])

    def move(current: bytes | None) -> Changed:
        return b"gate", [Put("gates", b"index-new", b"r"), Delete("gates", b"index-old")]

    assert await store.commit([Update("gates", b"r\x00g", move)]) == [b"gate"]
    assert await keys(store, "gates") == [b"index-new", b"r\x00g"]

    def bad(current: bytes | None) -> Changed:
        return b"gate 2", [Put("nope", b"k", b"v")]

    with pytest.raises(ConfigurationError, match="also write"):
        await store.commit([Put("gates", b"other", b"v"), Update("gates", b"r\x00g", bad)])
    assert await store.get("gates", b"r\x00g") == b"gate"  # all or nothing
    assert await store.get("gates", b"other") is None


async def test_an_append_numbers_a_series_and_keeps_its_last_entries(
        store: StoreInterface) -> None:
    for _ in range(5):
        await store.commit([Append("checkpoints", b"run\x00", lambda seq: b"%d" % seq, 3)])
    await store.commit([Put("checkpoints", b"runs-not-a-series", b"")])

    assert [value async for _, value in store.scan("checkpoints", prefix=b"run\x00")] \
        == [b"3", b"4", b"5"]
    with pytest.raises(ConfigurationError, match="not written by Append"):
        await store.commit([Append("checkpoints", b"runs", lambda seq: b"")])


async def test_a_hundred_concurrent_durable_writes_share_a_few_commits_and_syncs(
        store: StoreInterface) -> None:
    async with anyio.create_task_group() as group:
        for i in range(100):
            group.start_soon(store.commit, [Put("runs", b"r%03d" % i, b"v")])

    statistics = store.statistics()
    assert statistics.writes == 100
    assert statistics.commits <= 10
    assert statistics.syncs <= 10
    assert len(await keys(store, "runs")) == 100


async def test_concurrent_updates_of_one_key_never_lose_each_others_changes(
        store: StoreInterface) -> None:
    def increment(current: bytes | None) -> bytes:
        return b"%d" % (int(current or b"0") + 1)

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(store.commit, [Update("runs", b"counter", increment)])

    assert await store.get("runs", b"counter") == b"50"


async def test_a_cancelled_commit_may_still_be_saved_and_the_writer_carries_on(
        store: StoreInterface) -> None:
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.commit([Put("runs", b"cancelled", b"v")])

    assert await store.commit([Put("runs", b"next", b"v")]) == [None]
    assert await store.get("runs", b"cancelled") == b"v"  # queued before the cancel landed


async def test_a_write_whose_function_raises_fails_alone_and_the_store_keeps_working(
        store: StoreInterface) -> None:
    def broken(current: bytes | None) -> bytes:
        raise ValueError("boom")

    outcomes: dict[str, object] = {}

    async def run(name: str, ops: Sequence[Op]) -> None:
        try:
            outcomes[name] = await store.commit(ops)
        except StoreError as exc:
            outcomes[name] = exc

    async with anyio.create_task_group() as group:
        group.start_soon(run, "good-1", [Put("runs", b"a", b"1")])
        group.start_soon(run, "bad", [Put("runs", b"b", b"2"), Update("runs", b"c", broken)])
        group.start_soon(run, "good-2", [Put("runs", b"d", b"3")])

    assert outcomes["good-1"] == [None]
    assert outcomes["good-2"] == [None]
    error = outcomes["bad"]
    assert isinstance(error, StoreError)
    assert store.path in str(error)
    assert "update b'c' in 'runs'" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert await store.get("runs", b"b") is None  # all or nothing
    assert await store.commit([Put("runs", b"e", b"4")]) == [None]
    assert store.statistics().failed_writes == 1


async def test_a_roost_error_raised_by_a_write_function_reaches_the_caller_unchanged(
        store: StoreInterface) -> None:
    def refuse(current: bytes | None) -> bytes:
        raise RunNotFound("r1")

    with pytest.raises(RunNotFound, match="r1"):
        await store.commit([Update("runs", b"r1", refuse)])


async def test_operations_the_store_cannot_take_are_refused_before_writing(
        store: StoreInterface) -> None:
    with pytest.raises(ConfigurationError, match="unknown database 'nope'"):
        await store.commit([Put("nope", b"k", b"v")])
    with pytest.raises(ConfigurationError, match="keys must be 1 to 511 bytes"):
        await store.commit([Put("runs", b"k" * 512, b"v")])
    with pytest.raises(ConfigurationError, match="keys must be 1 to 511 bytes"):
        await store.commit([Insert("ledger", b"", b"v")])
    with pytest.raises(ConfigurationError, match="keys must be 1 to 511 bytes"):
        await store.get("runs", b"")
    with pytest.raises(ConfigurationError, match="is not a store operation"):
        await store.commit(["put"])  # type: ignore[list-item]
    assert store.statistics().commits == 0
    assert store.max_key_size == 511


# --- durability -------------------------------------------------------------------------


async def test_the_durable_flag_decides_whether_a_commit_waits_for_the_flush(
        open_store: Opener) -> None:
    async with open_store() as store:  # sync mode: durable unless told otherwise
        await store.commit([Put("runs", b"fast", b"v")], durable=False)
        assert store.statistics().syncs == 0
        await store.commit([Put("runs", b"safe", b"v")])
        assert store.statistics().syncs == 1
    async with open_store(durability="async") as store:  # async mode: the reverse
        await store.commit([Put("runs", b"fast-2", b"v")])
        assert store.statistics().syncs == 0
        await store.commit([Put("runs", b"safe-2", b"v")], durable=True)
        assert store.statistics().syncs == 1
    async with open_store() as store:
        assert [await store.get("runs", key) for key in (b"fast", b"safe", b"fast-2", b"safe-2")] \
            == [b"v"] * 4


# --- reads ------------------------------------------------------------------------------


async def test_keys_sort_bytewise_forward_and_reverse_over_several_chunks(
        store: StoreInterface) -> None:
    series = [b"a\x00%04d" % i for i in range(600)]  # more than two read chunks
    odd = [b"a", b"a\x00", b"a\x01", b"a\xff", b"\x00", b"\xff\xff", b"B", b"b"]
    await store.commit([Put("traces", key, key) for key in series + odd])

    assert await keys(store, "traces", prefix=b"a\x00") == [b"a\x00", *series]
    assert await keys(store, "traces", prefix=b"a\x00", reverse=True) == [*series[::-1], b"a\x00"]
    assert await keys(store, "traces") == sorted(series + odd)
    assert await keys(store, "traces", prefix=b"\xff") == [b"\xff\xff"]


async def test_scan_honours_start_stop_and_limit(store: StoreInterface) -> None:
    await store.commit([Put("traces", b"k%03d" % i, b"") for i in range(300)])

    assert await keys(store, "traces", start=b"k010", stop=b"k020") \
        == [b"k%03d" % i for i in range(10, 20)]
    assert await keys(store, "traces", reverse=True, limit=3) == [b"k299", b"k298", b"k297"]
    assert await keys(store, "traces", start=b"k005", limit=260) \
        == [b"k%03d" % i for i in range(5, 265)]
    assert await keys(store, "traces", start=b"k290", stop=b"k295", reverse=True) \
        == [b"k294", b"k293", b"k292", b"k291", b"k290"]
    assert await keys(store, "traces", limit=0) == []


async def test_last_finds_the_greatest_key_under_a_prefix(store: StoreInterface) -> None:
    await store.commit([Put("traces", key, key) for key in (b"a\x00\x01", b"a\x00\x02", b"b")])

    assert await store.last("traces", b"a\x00") == (b"a\x00\x02", b"a\x00\x02")
    assert await store.last("traces", b"b") == (b"b", b"b")
    assert await store.last("traces", b"c") is None
    assert await store.last("runs", b"a") is None


async def test_a_read_sees_one_snapshot_while_writes_go_on(store: StoreInterface) -> None:
    await store.commit([Put("runs", b"a", b"before"), Put("runs", b"b", b"before")])
    loop = asyncio.get_running_loop()

    def read(snapshot: SnapshotReader) -> tuple[bytes | None, list[tuple[bytes, bytes]]]:
        first = snapshot.get("runs", b"a")
        asyncio.run_coroutine_threadsafe(store.commit([Put("runs", b"a", b"after"),
                                                       Put("runs", b"c", b"after")]),
                                         loop).result()
        return first, list(snapshot.scan("runs"))

    first, scanned = await store.read(read)

    assert first == b"before"
    assert scanned == [(b"a", b"before"), (b"b", b"before")]
    assert await store.get("runs", b"a") == b"after"


async def test_a_read_on_the_loop_sees_what_a_read_in_a_thread_sees(
        store: StoreInterface) -> None:
    await store.commit([Put("runs", b"a", b"1"), Put("runs", b"b", b"2"), Put("ledger", b"c", b"3")])

    def read(snapshot: SnapshotReader) -> tuple[int, bytes | None, list[tuple[bytes, bytes]]]:
        return threading.get_ident(), snapshot.get("ledger", b"c"), list(snapshot.scan("runs"))

    on_loop = store.read_on_loop(read)
    in_thread = await store.read(read)

    assert on_loop == (threading.get_ident(), b"3", [(b"a", b"1"), (b"b", b"2")])
    assert in_thread[0] != on_loop[0] and in_thread[1:] == on_loop[1:]


async def test_a_snapshot_scan_may_stop_early(store: StoreInterface) -> None:
    await store.commit([Put("traces", b"k%04d" % i, b"") for i in range(1000)])

    def first_three(snapshot: SnapshotReader) -> list[bytes]:
        found = []
        for key, _ in snapshot.scan("traces", reverse=True):
            found.append(key)
            if len(found) == 3:
                return found
        return found

    assert await store.read(first_three) == [b"k0999", b"k0998", b"k0997"]


async def test_a_closed_store_refuses_reads_and_writes(open_store: Opener) -> None:
    store = await open_store()
    await store.close()
    await store.close()  # closing twice is harmless

    with pytest.raises(StoreError, match="is closed"):
        await store.commit([Put("runs", b"k", b"v")])
    with pytest.raises(StoreError, match="is closed"):
        await store.get("runs", b"k")
    with pytest.raises(StoreError, match="is closed"):
        [item async for item in store.scan("runs")]
    with pytest.raises(StoreError, match="is closed"):
        await store.read(lambda snapshot: snapshot.get("runs", b"k"))
    with pytest.raises(StoreError, match="is closed"):
        store.read_on_loop(lambda snapshot: snapshot.get("runs", b"k"))


# --- what sits on a store ---------------------------------------------------------------


async def test_checkpoints_are_a_series_per_run_saved_with_the_run_record(
        store: StoreInterface) -> None:
    runs = RunStore(store)  # type: ignore[arg-type]
    checkpoints = CheckpointStore(store, keep_last=2)  # type: ignore[arg-type]
    await runs.create("run-1", pipeline="p")
    for step in ("a", "b", "c"):
        await checkpoints.save("run-1", step=step, actor_path="/p/run-1", state=step.encode(),
                               also=[runs.change("run-1", last_step=step)])
    await checkpoints.save("run-2", step="a", actor_path="/p/run-2", state=b"")

    assert [(c.step, c.seq) for c in await checkpoints.list("run-1")] == [("b", 2), ("c", 3)]
    latest = await checkpoints.latest("run-1")
    assert latest is not None and latest.state == b"c"
    assert (await runs.get("run-1")).last_step == "c"
    assert await checkpoints.delete_runs(["run-1"]) == 2
    assert await checkpoints.latest("run-1") is None
    with pytest.raises(RunNotFound):  # the checkpoint is refused with the change
        await checkpoints.save("run-3", step="a", actor_path="/p", state=b"",
                               also=[runs.change("run-3", last_step="a")])
    assert await checkpoints.list("run-3") == []


async def test_run_records_are_created_once_updated_and_paged_newest_first(
        store: StoreInterface) -> None:
    runs = RunStore(store)  # type: ignore[arg-type]
    for i in range(5):
        await runs.create(f"run-{i}", pipeline="p" if i % 2 else "q")
    with pytest.raises(ConfigurationError, match="already exists"):
        await runs.create("run-1", pipeline="p")

    updated = await runs.update("run-3", status="completed", result=b"ok")
    page, cursor = await runs.page(limit=2)
    rest, end = await runs.page(limit=10, before=cursor)

    assert (updated.status, updated.result) == ("completed", b"ok")
    assert [r.run_id for r in page] == ["run-4", "run-3"]
    assert [r.run_id for r in rest] == ["run-2", "run-1", "run-0"] and end is None
    assert [r.run_id for r in await runs.list(status="completed")] == ["run-3"]


async def test_the_ledger_claims_a_key_once_and_replays_its_outcome(
        store: StoreInterface) -> None:
    now = [1000.0]
    ledger = Ledger(store, retention=60, clock=lambda: now[0])  # type: ignore[arg-type]
    other_process = Ledger(store, retention=60, clock=lambda: now[0])  # type: ignore[arg-type]

    claims = []

    async def claim(by: Ledger) -> None:
        claims.append(await by.claim("email", "k1", "fp"))

    async with anyio.create_task_group() as group:
        for by in (ledger, other_process) * 5:
            group.start_soon(claim, by)
    [won] = [c for c in claims if c.claimed]
    await ledger.complete(won.entry, b"sent")
    again = await other_process.claim("email", "k1", "fp")

    assert (again.claimed, again.ours, again.entry.status, again.entry.result) \
        == (False, False, "completed", b"sent")
    with pytest.raises(IdempotencyConflict):
        await ledger.claim("email", "k1", "other arguments")
    now[0] += 120
    assert await ledger.prune() == 1
    assert (await ledger.claim("email", "k1", "other arguments")).claimed
