"""Specifications of `roost.storage.checkpoints`: save, latest, list, prune and bad data."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from roost.errors import CheckpointCorrupt, ConfigurationError
from roost.storage import (
    Checkpoint,
    CheckpointStore,
    Pruned,
    Put,
    Store,
    checkpoint_key,
    decode_state,
    encode_state,
)

pytestmark = pytest.mark.anyio


class Counter(msgspec.Struct, frozen=True):
    count: int
    label: str = ""


class Renamed(msgspec.Struct, frozen=True):
    total: float
    items: list[str]


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def checkpoints(store: Store, clock: FakeClock) -> CheckpointStore:
    return CheckpointStore(store, keep_last=0, clock=clock)  # every checkpoint: retention has its own tests


async def save(checkpoints: CheckpointStore, run_id: str, step: str = "step",
               count: int = 0) -> Checkpoint:
    return await checkpoints.save(run_id, step=step, actor_path="/app/worker",
                                  state=encode_state(Counter(count)))


async def test_a_checkpoint_round_trips_with_every_field(checkpoints: CheckpointStore) -> None:
    saved = await checkpoints.save("run-1", step="classify", actor_path="/app/classifier",
                                   state=encode_state(Counter(3, "x")))

    loaded = await checkpoints.latest("run-1")

    assert loaded == saved
    assert loaded == Checkpoint(run_id="run-1", step="classify", actor_path="/app/classifier",
                                seq=1, timestamp=1_000_000.0, state=encode_state(Counter(3, "x")))
    assert loaded.schema == 1
    assert decode_state(loaded, Counter) == Counter(3, "x")


async def test_latest_is_the_highest_sequence_number_and_none_for_an_unknown_run(
        checkpoints: CheckpointStore) -> None:
    for step in ("a", "b", "c"):
        await save(checkpoints, "run-1", step)

    latest = await checkpoints.latest("run-1")

    assert latest is not None
    assert (latest.seq, latest.step) == (3, "c")
    assert await checkpoints.latest("run-2") is None


async def test_list_returns_only_this_runs_checkpoints_oldest_first(
        checkpoints: CheckpointStore) -> None:
    # Run ids that are prefixes of each other must not see each other's checkpoints.
    for run_id in ("a", "ab", "a b", "b", "a"):
        await save(checkpoints, run_id, f"{run_id}-step")

    listed = await checkpoints.list("a")

    assert [(c.run_id, c.seq) for c in listed] == [("a", 1), ("a", 2)]
    assert [c.seq for c in await checkpoints.list("ab")] == [1]
    assert await checkpoints.list("zzz") == []


async def test_concurrent_saves_to_one_run_get_distinct_increasing_sequence_numbers(
        checkpoints: CheckpointStore) -> None:
    saved: list[Checkpoint] = []

    async def save_one(index: int) -> None:
        saved.append(await save(checkpoints, "run-1", f"step-{index}", index))

    async with anyio.create_task_group() as group:
        for index in range(50):
            group.start_soon(save_one, index)

    listed = await checkpoints.list("run-1")
    assert sorted(c.seq for c in saved) == list(range(1, 51))
    assert [c.seq for c in listed] == list(range(1, 51))
    assert sorted(listed, key=lambda c: c.seq) == sorted(saved, key=lambda c: c.seq)


async def test_sequence_numbers_continue_after_the_store_is_reopened(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        await save(CheckpointStore(store), "run-1")
        await save(CheckpointStore(store), "run-1")
    async with Store.open(tmp_path) as store:
        assert (await save(CheckpointStore(store), "run-1")).seq == 3


async def test_prune_keeps_the_last_checkpoints_of_each_run(checkpoints: CheckpointStore) -> None:
    for run_id, count in (("run-1", 5), ("run-2", 2), ("run-3", 1)):
        for _ in range(count):
            await save(checkpoints, run_id)

    pruned = await checkpoints.prune(keep_last=2)

    assert pruned == Pruned(checkpoints=3, runs=0)
    assert [c.seq for c in await checkpoints.list("run-1")] == [4, 5]
    assert [c.seq for c in await checkpoints.list("run-2")] == [1, 2]
    assert [c.seq for c in await checkpoints.list("run-3")] == [1]
    assert (await save(checkpoints, "run-1")).seq == 6


async def test_prune_drops_whole_runs_whose_latest_checkpoint_is_older_than_the_retention(
        checkpoints: CheckpointStore, clock: FakeClock) -> None:
    await save(checkpoints, "old")
    await save(checkpoints, "old")
    await save(checkpoints, "kept")
    clock.now += 3600
    await save(checkpoints, "kept")  # its latest is recent, so all of it stays
    await save(checkpoints, "new")
    clock.now += 60

    pruned = await checkpoints.prune(older_than=600)

    assert pruned == Pruned(checkpoints=2, runs=1)
    assert await checkpoints.list("old") == []
    assert [c.seq for c in await checkpoints.list("kept")] == [1, 2]
    assert [c.seq for c in await checkpoints.list("new")] == [1]


async def test_prune_combines_both_limits(checkpoints: CheckpointStore,
                                          clock: FakeClock) -> None:
    for _ in range(3):
        await save(checkpoints, "old")
    clock.now += 3600
    for _ in range(3):
        await save(checkpoints, "new")

    pruned = await checkpoints.prune(keep_last=1, older_than=600)

    assert pruned == Pruned(checkpoints=5, runs=1)
    assert [c.seq for c in await checkpoints.list("new")] == [3]


async def test_prune_refuses_to_run_without_a_valid_limit(checkpoints: CheckpointStore) -> None:
    with pytest.raises(ConfigurationError, match="needs keep_last, older_than or both"):
        await checkpoints.prune()
    with pytest.raises(ConfigurationError, match="keep_last=0 must be >= 1"):
        await checkpoints.prune(keep_last=0)
    with pytest.raises(ConfigurationError, match="older_than=-1 must be >= 0"):
        await checkpoints.prune(older_than=-1)


async def test_invalid_run_ids_are_refused(checkpoints: CheckpointStore) -> None:
    with pytest.raises(ConfigurationError, match="without NUL characters"):
        await save(checkpoints, "run\x00x")
    with pytest.raises(ConfigurationError, match="must be a non-empty string"):
        await checkpoints.latest("")
    with pytest.raises(ConfigurationError, match="must be at most 502 bytes"):
        await save(checkpoints, "r" * 503)


async def test_corrupt_bytes_raise_checkpoint_corrupt_naming_the_run_and_key(
        store: Store, checkpoints: CheckpointStore) -> None:
    key = checkpoint_key("run-7", 1)
    await store.commit([Put("checkpoints", key, b"\xc1 not msgpack")])

    with pytest.raises(CheckpointCorrupt, match=r"run 'run-7' step None \(key b'run-7\\x00") \
            as caught:
        await checkpoints.latest("run-7")
    assert caught.value.key == key
    assert "not a msgpack record" in caught.value.error
    with pytest.raises(CheckpointCorrupt, match="run 'run-7'"):
        await checkpoints.list("run-7")  # never skipped silently


async def test_an_unknown_schema_version_raises_checkpoint_corrupt(
        store: Store, checkpoints: CheckpointStore) -> None:
    saved = await save(checkpoints, "run-1", "draft")
    future = msgspec.msgpack.encode({**msgspec.to_builtins(saved), "kind": "checkpoint",
                                     "schema": 2, "new_field": [1, 2]})
    await store.commit([Put("checkpoints", checkpoint_key("run-1", 2), future)])

    with pytest.raises(CheckpointCorrupt,
                       match=r"run 'run-1' step 'draft' \(key b'run-1\\x00.*"
                             r"unknown schema version 2"):
        await checkpoints.latest("run-1")


async def test_a_record_of_another_kind_raises_checkpoint_corrupt(
        store: Store, checkpoints: CheckpointStore) -> None:
    other = msgspec.msgpack.encode({"kind": "run", "schema": 1, "run_id": "run-1"})
    await store.commit([Put("checkpoints", checkpoint_key("run-1", 1), other)])

    with pytest.raises(CheckpointCorrupt, match=r"run 'run-1'.*tagged 'run', not 'checkpoint'"):
        await checkpoints.latest("run-1")


async def test_a_checkpoint_stored_under_another_runs_key_raises_checkpoint_corrupt(
        store: Store, checkpoints: CheckpointStore) -> None:
    saved = await save(checkpoints, "run-1", "draft")
    await store.commit([Put("checkpoints", checkpoint_key("run-2", 1),
                            msgspec.msgpack.encode(saved))])

    with pytest.raises(CheckpointCorrupt, match=r"run 'run-2' step 'draft'.*says run 'run-1'"):
        await checkpoints.latest("run-2")


async def test_a_state_that_no_longer_matches_its_type_raises_checkpoint_corrupt(
        checkpoints: CheckpointStore) -> None:
    saved = await save(checkpoints, "run-1", "count", 5)

    with pytest.raises(CheckpointCorrupt,
                       match=r"run 'run-1' step 'count' \(key b'run-1\\x00.*"
                             r"does not decode as Renamed"):
        decode_state(saved, Renamed)


# --- retention ------------------------------------------------------------------------------


async def test_each_run_keeps_only_its_last_checkpoints_by_default(store: Store) -> None:
    checkpoints = CheckpointStore(store)
    for _ in range(2000):
        await save(checkpoints, "run-1")

    kept = await checkpoints.list("run-1")

    assert [c.seq for c in kept] == [1998, 1999, 2000]
    assert (await checkpoints.latest("run-1")).seq == 2000  # type: ignore[union-attr]


async def test_retention_is_per_run(store: Store) -> None:
    checkpoints = CheckpointStore(store, keep_last=2)
    for run_id, count in (("run-1", 5), ("run-2", 1)):
        for _ in range(count):
            await save(checkpoints, run_id)

    assert [c.seq for c in await checkpoints.list("run-1")] == [4, 5]
    assert [c.seq for c in await checkpoints.list("run-2")] == [1]


@pytest.mark.parametrize("keep_last", [-1, 1.5, True, "3"])
async def test_a_bad_keep_last_names_the_value(store: Store, keep_last: object) -> None:
    with pytest.raises(ConfigurationError, match=rf"keep_last={keep_last!r} must be an int >= 0"):
        CheckpointStore(store, keep_last=keep_last)  # type: ignore[arg-type]


async def test_delete_runs_deletes_every_checkpoint_of_those_runs_and_no_other(
        checkpoints: CheckpointStore) -> None:
    for n in range(300):  # more runs than one read and one delete batch take
        for _ in range(2):
            await save(checkpoints, f"run-{n:03d}")
    await save(checkpoints, "run-1")  # a prefix of run-100..run-199's ids, and kept

    deleted = await checkpoints.delete_runs(f"run-{n:03d}" for n in range(300))

    assert deleted == 600
    assert [c.seq for c in await checkpoints.list("run-1")] == [1]
    assert await checkpoints.latest("run-000") is None
    assert await checkpoints.latest("run-299") is None


async def test_delete_runs_passes_over_ids_no_checkpoint_can_be_saved_under(
        checkpoints: CheckpointStore) -> None:
    await save(checkpoints, "run-1")

    assert await checkpoints.delete_runs(["", "run\x00nul", "r" * 600, "run-1"]) == 1
    assert await checkpoints.latest("run-1") is None


async def test_a_corrupt_checkpoint_says_what_to_do_for_a_run_or_an_actor(
        store: Store, checkpoints: CheckpointStore) -> None:
    await store.commit([Put("checkpoints", checkpoint_key("run-7", 1), b"\xc1 not msgpack")])

    with pytest.raises(CheckpointCorrupt) as raised:
        await checkpoints.latest("run-7")

    message = str(raised.value)
    assert message.startswith("checkpoint of run 'run-7' step None (key b'run-7\\x00")
    assert ("run `roost store check` on the store (with the systems and consoles that use it "
            "stopped) to list every damaged record, and restore the store from a backup if it "
            "reports damage; an actor whose checkpoint this is can instead start from its "
            "initial state (set `fresh_on_corrupt_checkpoint = True` on its class)") in message
    assert "prune it" not in message  # prune stops at a checkpoint that does not decode
