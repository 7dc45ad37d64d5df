"""Specifications of `roost.storage.runs`: run records created, read, updated and listed."""

from __future__ import annotations

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
