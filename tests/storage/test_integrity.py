"""Tests of roost/storage/_integrity.py and maintenance.py: damaged stores are refused, never
mapped past their end nor taken for new ones; `check_store` and `backup_store` work on real
LMDB folders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import anyio
import lmdb
import msgspec
import pytest

from roost.errors import StoreCorrupt, StoreUnavailable
from roost.storage import (
    CheckpointStore,
    GateRecord,
    GateStore,
    Put,
    RunStatus,
    RunStore,
    StepResults,
    Store,
)
from roost.storage.maintenance import backup_store, check_store

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parents[2]


async def filled_store(path: Path, records: int = 400) -> None:
    """A store with `records` entries in `traces` (a database checked as plain msgpack maps)."""
    async with Store.open(path) as store:
        for start in range(0, records, 100):
            await store.commit([Put("traces", b"k%05d" % i, msgspec.msgpack.encode(
                {"n": i, "pad": os.urandom(150).hex()})) for i in range(start, start + 100)])


def cut(path: Path, fraction: float) -> None:
    data = path / "data.mdb"
    size = data.stat().st_size
    os.truncate(data, int(size * (1 - fraction)))


@pytest.mark.parametrize("fraction", [0.1, 0.5])
async def test_a_truncated_data_file_is_refused_before_it_is_mapped(
        tmp_path: Path, fraction: float) -> None:
    await filled_store(tmp_path)
    cut(tmp_path, fraction)

    with pytest.raises(StoreCorrupt, match=r"data file is truncated: \d+ bytes, but LMDB's meta "
                                           r"page says .*restore the folder from a backup"):
        await Store.open(tmp_path)


async def test_pages_past_the_last_commit_are_not_damage_and_may_be_cut(tmp_path: Path) -> None:
    # A process killed mid-transaction leaves pages it wrote past the last commit at the
    # end of the data file; the store is whole with or without them.
    await filled_store(tmp_path)
    data = tmp_path / "data.mdb"
    committed = data.stat().st_size
    data.write_bytes(data.read_bytes() + os.urandom(8 * 4096))
    async with Store.open(tmp_path) as store:
        assert len([entry async for entry in store.scan("traces")]) == 400
    os.truncate(data, committed)

    async with Store.open(tmp_path) as store:
        assert len([entry async for entry in store.scan("traces")]) == 400


def test_listing_runs_of_a_truncated_store_in_a_new_process_fails_cleanly_without_sigbus(
        tmp_path: Path) -> None:
    anyio.run(filled_store, tmp_path)
    cut(tmp_path, 0.5)
    script = textwrap.dedent(f"""
        import asyncio, roost
        async def main():
            async with roost.ActorSystem(store={str(tmp_path)!r}) as system:
                print(await system.pipelines.list())
        asyncio.run(main())
    """)

    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)

    assert done.returncode == 1, done.stderr
    assert "StoreCorrupt" in done.stderr and "truncated" in done.stderr


@pytest.mark.parametrize("damage", ["empty", "missing"])
async def test_a_folder_that_held_a_store_is_never_started_fresh(tmp_path: Path,
                                                                 damage: str) -> None:
    await filled_store(tmp_path)
    data = tmp_path / "data.mdb"
    if damage == "empty":
        os.truncate(data, 0)
    else:
        data.unlink()

    with pytest.raises(StoreCorrupt, match=r"data file data.mdb is (empty|missing).*held store "
                                           r"[0-9a-f]{32}; restore the folder from a backup.*start a new "
                                           r"store in its place"):
        await Store.open(tmp_path)
    assert not data.exists() or data.stat().st_size == 0  # nothing was created in its place


async def test_a_store_keeps_its_id_across_opens(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as first:
        store_id = first.store_id
    async with Store.open(tmp_path) as again:
        assert again.store_id == store_id
    assert (tmp_path / "roost.id").read_text().strip() == store_id


async def test_a_data_file_from_another_store_is_refused(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    await filled_store(one, 100)
    await filled_store(two, 100)
    (two / "data.mdb").replace(one / "data.mdb")

    with pytest.raises(StoreCorrupt, match=r"belongs to store [0-9a-f]{32}, but the folder held "
                                           r"store [0-9a-f]{32}"):
        await Store.open(one)


def damage_leaf_pages(path: Path) -> int:
    """Clear the page-type flags of every other leaf page: LMDB then finds them corrupted."""
    env = lmdb.open(str(path), max_dbs=32, readonly=True, lock=False)
    page_size, last_page = env.stat()["psize"], env.info()["last_pgno"]
    env.close()
    damaged = 0
    with open(path / "data.mdb", "r+b") as file:
        for page in range(2, last_page + 1):
            file.seek(page * page_size + 10)  # the 2-byte flags field of the page header
            flags = int.from_bytes(file.read(2), "little")
            if flags & 0x02 and page % 2:  # P_LEAF
                file.seek(page * page_size + 10)
                file.write(b"\x00\x00")
                damaged += 1
    return damaged


async def test_flipped_bytes_give_store_corrupt_not_a_raw_lmdb_error(tmp_path: Path) -> None:
    await filled_store(tmp_path)
    assert await anyio.to_thread.run_sync(damage_leaf_pages, tmp_path) > 0

    try:
        report = await check_store(tmp_path)
    except StoreCorrupt as error:
        assert "restore the folder from a backup" in str(error)
    else:
        assert not report.ok
        assert "damaged" in report.problems[0].error


async def test_check_reads_every_record_and_names_the_ones_that_do_not_decode(
        tmp_path: Path) -> None:
    await filled_store(tmp_path, 100)
    async with Store.open(tmp_path) as store:
        await store.commit([Put("ledger", b"bad-entry", b"\x93not a record")])

    report = await check_store(tmp_path)

    assert report.records["traces"] == 100
    assert [(p.db, p.key) for p in report.problems] == [("ledger", "bad-entry")]
    assert "does not decode" in report.problems[0].error
    assert not report.ok


async def test_a_backup_is_a_store_of_its_own_with_the_same_records(tmp_path: Path) -> None:
    await filled_store(tmp_path / "live", 200)

    copy = await backup_store(tmp_path / "live", tmp_path / "backup")

    async with Store.open(copy) as restored, Store.open(tmp_path / "live") as live:
        assert restored.store_id == live.store_id
        copied = [k async for k, _ in restored.scan("traces")]
        assert copied == [k async for k, _ in live.scan("traces")] and len(copied) == 200


async def test_a_backup_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    await filled_store(tmp_path / "live", 100)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")

    with pytest.raises(StoreUnavailable, match="a backup goes into a new or empty folder"):
        await backup_store(tmp_path / "live", tmp_path / "busy")


async def test_a_folder_whose_data_and_id_files_were_both_deleted_is_not_started_fresh(
        tmp_path: Path) -> None:
    await filled_store(tmp_path)
    (tmp_path / "data.mdb").unlink()
    (tmp_path / "roost.id").unlink()

    with pytest.raises(StoreCorrupt, match=r"data.mdb is missing, but the folder held a store "
                                           r"\(lock.mdb is still there\)"):
        await Store.open(tmp_path)


async def test_check_also_decodes_the_state_a_checkpoint_carries(tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        await CheckpointStore(store).save("run-1", step="a", actor_path="/r", state=b"\xc1")

    report = await check_store(tmp_path)

    assert [(p.db, p.key[:5]) for p in report.problems] == [("checkpoints", "run-1")]
    assert "its state does not decode" in report.problems[0].error


async def test_a_backup_folder_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    await filled_store(tmp_path / "live", 10)
    (tmp_path / "file").write_text("not a folder")

    with pytest.raises(StoreUnavailable, match="cannot create the backup folder"):
        await backup_store(tmp_path / "live", tmp_path / "file" / "backup")


async def test_check_reads_gates_and_step_results_and_names_the_damaged_ones(
        tmp_path: Path) -> None:
    record = GateRecord(run_id="run-1", gate="send", pipeline="p", step="send", opened_at=1.0,
                        deadline=5.0)
    async with Store.open(tmp_path) as store:
        gates = GateStore(store)
        await store.commit([*gates.open_ops(record),  # the record and its deadline index entry
                            Put("gates", b"run-2\x00send", b"\x93not a record"),
                            StepResults.put_op("run-1", "draft", msgspec.msgpack.encode("ok")),
                            Put("results", b"run-1\x00send", b"\xc1")])

    report = await check_store(tmp_path)

    assert (report.records["gates"], report.records["results"]) == (2, 1)
    assert sorted((p.db, p.key) for p in report.problems) == [
        ("gates", "run-2\x00send"), ("results", "run-1\x00send")]


async def test_check_reads_the_index_of_ended_runs_and_names_a_malformed_entry(
        tmp_path: Path) -> None:
    async with Store.open(tmp_path) as store:
        runs = RunStore(store)
        for run_id in ("run-1", "run-2", "run-\x00odd"):
            await runs.create(run_id, pipeline="p")
            await runs.update(run_id, status=RunStatus.COMPLETED)  # indexed as ended
        await runs.sweep_ended(0.0, CheckpointStore(store).delete_runs)  # marks it indexed
        bad = [b"\xff\x00\x01",  # too short for an entry
               b"\xff" + bytes(8) + b"run-9",  # with a value
               b"\xff" + bytes(8) + b"\xc3"]  # a run id cut in the middle of a character
        await store.commit([Put("runs", bad[0], b""), Put("runs", bad[1], b"not empty"),
                            Put("runs", bad[2], b"")])

    report = await check_store(tmp_path)

    assert report.records["runs"] == 3 + 3 + 1  # the records, their entries, the marker
    assert {(p.db, p.error.split(" is malformed: ")[0]) for p in report.problems} == {
        ("runs", f"run index entry at key {key!r}") for key in bad}


def make_id_file_not_text(path: Path) -> None:
    (path / "roost.id").write_bytes(b"\xff\xfenot an id")


def make_id_file_a_folder(path: Path) -> None:
    (path / "roost.id").unlink()
    (path / "roost.id").mkdir()


@pytest.mark.parametrize(("damage", "why"), [(make_id_file_not_text, "it is not text"),
                                             (make_id_file_a_folder, "Is a directory")])
@pytest.mark.parametrize("readonly", [False, True])
async def test_an_unreadable_id_file_is_store_corrupt_saying_what_to_do(
        tmp_path: Path, damage: Callable[[Path], None], why: str, readonly: bool) -> None:
    await filled_store(tmp_path, 10)
    damage(tmp_path)

    with pytest.raises(StoreCorrupt, match=rf"'{tmp_path}' is damaged: its store id file roost.id "
                                           rf"cannot be read \({why}; if data.mdb is intact, "
                                           r"deleting roost.id is enough"):
        await Store.open(tmp_path, readonly=readonly)


async def test_a_store_whose_unreadable_id_file_was_deleted_opens_with_its_records(
        tmp_path: Path) -> None:
    await filled_store(tmp_path, 10)
    make_id_file_not_text(tmp_path)
    (tmp_path / "roost.id").unlink()  # what the error advises

    async with Store.open(tmp_path) as store:
        assert await store.get("traces", b"k00003") is not None
    assert (tmp_path / "roost.id").read_text().strip() == store.store_id


def make_data_file_a_folder(path: Path) -> None:
    (path / "data.mdb").unlink()
    (path / "data.mdb").mkdir()


def make_data_file_a_symlink_loop(path: Path) -> None:
    (path / "data.mdb").unlink()
    (path / "data.mdb").symlink_to(path / "data.mdb")


@pytest.mark.parametrize(("damage", "what"), [
    (make_data_file_a_folder, "is a folder, not a file"),
    (make_data_file_a_symlink_loop, r"cannot be read \(Too many levels of symbolic links\)")])
@pytest.mark.parametrize("readonly", [False, True])
async def test_a_data_file_that_is_not_a_readable_file_is_store_corrupt(
        tmp_path: Path, damage: Callable[[Path], None], what: str, readonly: bool) -> None:
    await filled_store(tmp_path, 10)
    damage(tmp_path)

    with pytest.raises(StoreCorrupt, match=rf"its data file data.mdb {what}, but the folder held "
                                           r"store [0-9a-f]{32}; restore the folder from a backup"):
        await Store.open(tmp_path, readonly=readonly)


async def test_a_folder_in_place_of_the_data_file_of_a_folder_that_never_held_a_store_is_refused(
        tmp_path: Path) -> None:
    (tmp_path / "data.mdb").mkdir()

    with pytest.raises(StoreUnavailable, match=r"its data.mdb is a folder, not a file; it must "
                                               "be a roost store folder or an empty folder"):
        await Store.open(tmp_path)
