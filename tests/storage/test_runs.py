"""Specifications of `roost.storage.runs`: run records created, read, updated and listed."""

from __future__ import annotations

from functools import partial

import anyio
import msgspec
import pytest

from roost.errors import ConfigurationError, RecordCorrupt, RunNotFound
from roost.storage import CheckpointStore, Put, RunRecord, RunStatus, RunStore, Store
from tests.support import FakeClock

pytestmark = pytest.mark.anyio


@pytest.fixture
def runs(store: Store, clock: FakeClock) -> RunStore:
    return RunStore(store, clock=clock)


async def test_a_run_record_round_trips_with_every_field(runs: RunStore,
                                                         clock: FakeClock) -> None:
    created = await runs.create("run-1", pipeline="support-email", input=b"email")
    clock.now += 5
    updated = await runs.update("run-1", status=RunStatus.FAILED, last_step="draft",
                                error="StepFailed: draft", result=b"partial")

    assert created == RunRecord(run_id="run-1", pipeline="support-email",
                                status=RunStatus.RUNNING, created_at=1_000.0,
                                updated_at=1_000.0, input=b"email")
    assert updated == RunRecord(run_id="run-1", pipeline="support-email",
                                status=RunStatus.FAILED, created_at=1_000.0, updated_at=1_005.0,
                                last_step="draft", error="StepFailed: draft", input=b"email",
                                result=b"partial")
    assert await runs.get("run-1") == updated


async def test_update_changes_only_the_fields_given_and_none_clears_one(runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")
    await runs.update("run-1", status="suspended", error="waiting")

    updated = await runs.update("run-1", last_step="review", error=None)

    assert (updated.status, updated.last_step, updated.error) \
        == (RunStatus.SUSPENDED, "review", None)


async def test_concurrent_updates_of_one_run_keep_every_change(runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")

    async with anyio.create_task_group() as group:
        group.start_soon(lambda: runs.update("run-1", last_step="extract"))
        group.start_soon(lambda: runs.update("run-1", result=b"done"))
        group.start_soon(lambda: runs.update("run-1", status=RunStatus.NEEDS_REVIEW))

    record = await runs.get("run-1")
    assert (record.last_step, record.result, record.status) \
        == ("extract", b"done", RunStatus.NEEDS_REVIEW)


async def test_creating_a_run_whose_id_exists_is_refused(runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")

    with pytest.raises(ConfigurationError, match="a run with id 'run-1' already exists"):
        await runs.create("run-1", pipeline="other")
    assert (await runs.get("run-1")).pipeline == "p"


async def test_reading_or_updating_an_unknown_run_raises_run_not_found(runs: RunStore) -> None:
    with pytest.raises(RunNotFound, match="no run with id 'ghost'"):
        await runs.get("ghost")
    with pytest.raises(RunNotFound, match="no run with id 'ghost'"):
        await runs.update("ghost", status="completed")


async def test_a_change_saved_with_a_checkpoint_is_stored_in_the_same_write(
        store: Store, runs: RunStore, clock: FakeClock) -> None:
    checkpoints = CheckpointStore(store, clock=clock)
    await runs.create("run-1", pipeline="p")
    clock.now += 5
    writes = store.statistics().writes

    saved = await checkpoints.save("run-1", step="check", actor_path="/run", state=b"s",
                                   also=[runs.change("run-1", status=RunStatus.NEEDS_REVIEW,
                                                     last_step="check", error="unsure")])

    assert store.statistics().writes == writes + 1
    assert await checkpoints.latest("run-1") == saved
    record = await runs.get("run-1")
    assert (record.status, record.last_step, record.error, record.updated_at) \
        == (RunStatus.NEEDS_REVIEW, "check", "unsure", 1_005.0)


async def test_a_checkpoint_whose_run_change_is_refused_is_not_saved_either(
        store: Store, runs: RunStore) -> None:
    checkpoints = CheckpointStore(store)

    with pytest.raises(RunNotFound, match="no run with id 'ghost'"):
        await checkpoints.save("ghost", step="check", actor_path="/run", state=b"s",
                               also=[runs.change("ghost", status=RunStatus.NEEDS_REVIEW)])

    assert await checkpoints.latest("ghost") is None


async def test_list_returns_every_run_or_those_with_a_status(runs: RunStore) -> None:
    await runs.create("b", pipeline="p")
    await runs.create("a", pipeline="p", status=RunStatus.COMPLETED)
    await runs.create("c", pipeline="p")

    assert [r.run_id for r in await runs.list()] == ["a", "b", "c"]
    assert [r.run_id for r in await runs.list(RunStatus.RUNNING)] == ["b", "c"]
    assert [r.run_id for r in await runs.list("completed")] == ["a"]
    assert await runs.list(RunStatus.CANCELLED) == []


async def test_an_invalid_status_is_refused_with_the_allowed_ones(runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")

    with pytest.raises(ConfigurationError, match="status='done' is not a run status; use one "
                                                 "of queued, running, suspended, waiting, needs_review"):
        await runs.update("run-1", status="done")


async def test_a_run_record_that_does_not_decode_raises_record_corrupt(
        store: Store, runs: RunStore) -> None:
    await store.commit([Put("runs", b"run-1", msgspec.msgpack.encode(
        {"kind": "run", "schema": 1, "run_id": "run-1", "status": "exploded"}))])

    with pytest.raises(RecordCorrupt, match="run record at key b'run-1' does not decode"):
        await runs.get("run-1")
    with pytest.raises(RecordCorrupt, match="run record at key b'run-1'"):
        await runs.update("run-1", status="failed")
    with pytest.raises(RecordCorrupt, match="run record at key b'run-1'"):
        await runs.list()
    with pytest.raises(RecordCorrupt, match="run record at key b'run-1'"):
        await runs.page()


async def test_a_page_given_a_damaged_list_skips_undecodable_records_and_names_them(
        store: Store, runs: RunStore, clock: FakeClock) -> None:
    for n in range(5):
        await runs.create(f"run-{n}", pipeline="p")
        clock.now += 1
    await store.commit([Put("runs", b"run-2", b"\xc1")])

    damaged: list[RecordCorrupt] = []
    first, cursor = await store.read(runs.page_reader(limit=2, damaged=damaged))
    named_by_first = list(damaged)
    rest, end = await store.read(runs.page_reader(limit=2, before=cursor, damaged=damaged))

    assert [r.run_id for r in first] == ["run-4", "run-3"] and named_by_first == []
    assert [r.run_id for r in rest] == ["run-1", "run-0"] and end is None  # not counted
    [error] = damaged
    assert (error.kind, error.key) == ("run", b"run-2")
    assert "run record at key b'run-2' does not decode" in str(error)


async def test_a_damaged_record_is_named_whatever_the_pages_filters(
        store: Store, runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")
    await store.commit([Put("runs", b"run-0", b"\xc1")])

    damaged: list[RecordCorrupt] = []
    page, cursor = await store.read(runs.page_reader(status=RunStatus.FAILED, pipeline="other",
                                                     damaged=damaged))

    assert (page, cursor) == ([], None)
    assert [error.key for error in damaged] == [b"run-0"]


# --- the index of ended runs, and the sweep that reads it ---------------------------------


class Pruner:
    """Stands for `CheckpointStore.delete_runs` in a sweep: records the run ids handed over."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, run_ids: list[str]) -> int:
        self.calls.append(run_ids)
        return len(run_ids)

    @property
    def swept(self) -> list[str]:
        return [run_id for call in self.calls for run_id in call]


async def swept(runs: RunStore, before: float) -> list[str]:
    pruner = Pruner()
    await runs.sweep_ended(before, pruner)
    return pruner.swept


async def test_a_sweep_hands_over_the_runs_ended_by_then_once_and_no_other(
        runs: RunStore, clock: FakeClock) -> None:
    for run_id in ("done", "failed", "cancelled", "rejected", "running", "waiting",
                   "reviewed", "late"):
        await runs.create(run_id, pipeline="p")
    await runs.update("done", status=RunStatus.COMPLETED)
    await runs.update("failed", status=RunStatus.FAILED)
    await runs.update("cancelled", status=RunStatus.CANCELLED)
    await runs.update("rejected", status=RunStatus.REJECTED)
    await runs.update("waiting", status=RunStatus.WAITING)
    await runs.update("reviewed", status=RunStatus.NEEDS_REVIEW)
    clock.now += 100
    await runs.update("late", status=RunStatus.COMPLETED)

    assert sorted(await swept(runs, before=1_050.0)) == ["cancelled", "done", "failed", "rejected"]
    assert await swept(runs, before=1_050.0) == []  # swept runs leave the index
    assert await swept(runs, before=1_100.0) == ["late"]
    assert [r.run_id for r in await runs.list(RunStatus.COMPLETED)] == ["done", "late"]


async def test_a_run_is_indexed_in_the_same_write_as_the_change_that_ends_it(
        store: Store, runs: RunStore, clock: FakeClock) -> None:
    checkpoints = CheckpointStore(store, clock=clock)
    await runs.create("run-1", pipeline="p")
    writes = store.statistics().writes

    await checkpoints.save("run-1", step="last", actor_path="/run", state=b"s",
                           also=[runs.change("run-1", status=RunStatus.COMPLETED)])

    assert store.statistics().writes == writes + 1
    assert await swept(runs, before=1_000.0) == ["run-1"]


async def test_a_refused_change_that_would_end_a_run_indexes_nothing(
        store: Store, runs: RunStore) -> None:
    await runs.create("run-1", pipeline="p")

    with pytest.raises(RunNotFound):
        await store.commit([runs.change("run-1", status=RunStatus.COMPLETED),
                            runs.change("ghost", status=RunStatus.COMPLETED)])

    assert (await runs.get("run-1")).status == RunStatus.RUNNING
    assert await swept(runs, before=2_000.0) == []


async def test_a_run_created_ended_is_indexed_and_one_changed_while_ended_is_indexed_once(
        runs: RunStore, clock: FakeClock) -> None:
    await swept(runs, before=0.0)  # as a system does when it starts
    await runs.create("imported", pipeline="p", status=RunStatus.FAILED)
    await runs.create("run-1", pipeline="p")
    await runs.update("run-1", status=RunStatus.FAILED, error="boom")
    clock.now += 5
    await runs.update("run-1", status=RunStatus.CANCELLED)

    assert await swept(runs, before=1_000.0) == ["imported", "run-1"]
    assert await swept(runs, before=2_000.0) == []


async def test_a_run_changed_since_it_ended_is_not_swept_until_it_ends_again(
        runs: RunStore, clock: FakeClock) -> None:
    await runs.create("run-1", pipeline="p", status=RunStatus.COMPLETED)
    await runs.update("run-1", status=RunStatus.RUNNING)  # taken up again by hand

    assert await swept(runs, before=1_000.0) == []
    clock.now += 10
    await runs.update("run-1", status=RunStatus.COMPLETED)
    assert await swept(runs, before=1_010.0) == ["run-1"]


async def test_a_sweep_with_nothing_due_writes_nothing_and_reads_no_run_record(
        store: Store, runs: RunStore, clock: FakeClock) -> None:
    await runs.create("ended-late", pipeline="p")
    clock.now += 100
    await runs.update("ended-late", status=RunStatus.COMPLETED)
    assert await swept(runs, before=1_000.0) == []
    # A record no sweep may read: listing every run would stop at it.
    await store.commit([Put("runs", b"damaged", b"\xc1")])
    writes = store.statistics().writes

    assert await swept(runs, before=1_050.0) == []

    assert store.statistics().writes == writes
    assert await swept(runs, before=1_100.0) == ["ended-late"]


async def test_a_sweep_goes_through_many_due_runs_a_chunk_at_a_time(runs: RunStore) -> None:
    for start in range(0, 600, 200):
        async with anyio.create_task_group() as group:
            for n in range(start, start + 200):
                group.start_soon(partial(runs.create, f"run-{n:04d}", pipeline="p",
                                         status=RunStatus.COMPLETED))
    pruner = Pruner()

    assert await runs.sweep_ended(1_000.0, pruner) == 600

    assert sorted(pruner.swept) == [f"run-{n:04d}" for n in range(600)]
    assert len(pruner.calls) > 1 and all(len(call) <= 256 for call in pruner.calls)
    assert await swept(runs, before=1_000.0) == []


async def test_runs_that_ended_before_the_index_existed_are_indexed_by_the_first_sweep_only(
        store: Store, runs: RunStore) -> None:
    def as_an_older_roost_wrote_it(run_id: str, status: RunStatus) -> Put:
        record = RunRecord(run_id=run_id, pipeline="p", status=status, created_at=900.0,
                           updated_at=950.0)
        return Put("runs", run_id.encode(), msgspec.msgpack.encode(record))

    await store.commit([as_an_older_roost_wrote_it("old-done", RunStatus.COMPLETED),
                        as_an_older_roost_wrote_it("old-waiting", RunStatus.WAITING),
                        as_an_older_roost_wrote_it("old-failed", RunStatus.FAILED),
                        Put("runs", b"old-damaged", b"\xc1")])

    assert await swept(runs, before=949.0) == []  # indexed at their last change
    assert await swept(runs, before=950.0) == ["old-done", "old-failed"]
    await store.commit([as_an_older_roost_wrote_it("older-still", RunStatus.COMPLETED)])
    writes = store.statistics().writes
    assert await swept(runs, before=2_000.0) == []  # the store was indexed once
    assert store.statistics().writes == writes


async def test_list_and_page_return_run_records_only_with_the_index_beside_them(
        runs: RunStore, clock: FakeClock) -> None:
    for n in range(5):
        await runs.create(f"run-{n}", pipeline="p")
        clock.now += 1
    for n in (1, 3):
        await runs.update(f"run-{n}", status=RunStatus.COMPLETED)
    await swept(runs, before=0.0)  # the store's first sweep marks it indexed

    assert [r.run_id for r in await runs.list()] == [f"run-{n}" for n in range(5)]
    assert [r.run_id for r in await runs.list(RunStatus.COMPLETED)] == ["run-1", "run-3"]
    first, cursor = await runs.page(limit=3)
    rest, end = await runs.page(limit=3, before=cursor)
    assert [r.run_id for r in first + rest] == [f"run-{n}" for n in (4, 3, 2, 1, 0)]
    assert end is None
    completed, _ = await runs.page(status=RunStatus.COMPLETED)
    assert [r.run_id for r in completed] == ["run-3", "run-1"]


@pytest.mark.parametrize("run_id", ["run\x00nul", "\xff\xfe-latin", "ü-\U0001f600-emoji",
                                    "\x00", "\U0010ffff"])
async def test_a_run_id_of_any_characters_is_stored_listed_paged_and_swept(
        runs: RunStore, run_id: str) -> None:
    await runs.create("plain", pipeline="p")
    await runs.create(run_id, pipeline="p")

    await runs.update(run_id, status=RunStatus.COMPLETED)

    assert (await runs.get(run_id)).status == RunStatus.COMPLETED
    assert sorted(r.run_id for r in await runs.list()) == sorted(["plain", run_id])
    page, _ = await runs.page()
    assert sorted(r.run_id for r in page) == sorted(["plain", run_id])
    assert await swept(runs, before=1_000.0) == [run_id]


async def test_a_run_id_too_long_to_index_still_ends(store: Store, runs: RunStore) -> None:
    run_id = "r" * store.max_key_size  # as long as a key can be: it can have no checkpoints

    await runs.create(run_id, pipeline="p")
    await runs.update(run_id, status=RunStatus.COMPLETED)

    assert (await runs.get(run_id)).status == RunStatus.COMPLETED
    assert await swept(runs, before=1_000.0) == []


async def test_a_run_id_that_is_not_valid_unicode_is_refused(runs: RunStore) -> None:
    with pytest.raises(ConfigurationError, match="is not valid Unicode text"):
        await runs.create("half-\ud800-surrogate", pipeline="p")


async def test_a_run_record_that_does_not_decode_names_it_and_says_what_to_do(
        store: Store, runs: RunStore) -> None:
    await store.commit([Put("runs", b"run-1", b"\xc1 not msgpack")])

    with pytest.raises(RecordCorrupt) as raised:
        await runs.get("run-1")

    assert str(raised.value).startswith("run record at key b'run-1' does not decode: ")
    assert str(raised.value).endswith(
        "; run `roost store check` on the store (with the systems and consoles that use it "
        "stopped) to list every damaged record, and restore the store from a backup if it "
        "reports damage")


def test_the_code_raising_record_corrupt_may_give_its_own_advice() -> None:
    error = RecordCorrupt("run", b"run-1", "its input does not decode as Order",
                          advice="register the pipeline with the input type the run began with")

    assert str(error) == ("run record at key b'run-1' does not decode: its input does not decode "
                          "as Order; register the pipeline with the input type the run began "
                          "with")
    assert error.advice == "register the pipeline with the input type the run began with"
