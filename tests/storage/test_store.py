"""Specifications of `roost.storage.store` that only the LMDB store has: its folder and lock,
map growth, the writer thread's failures. What every store must do (commits, scans,
snapshots, a closed store) is specified once in test_store_contract.py, run against both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from roost.errors import ConfigurationError, StoreError, StoreUnavailable
from roost.storage import Delete, Insert, Put, Store, Update
from roost.storage.ops import Changed

pytestmark = pytest.mark.anyio


class TracedPut(Put, frozen=True, gc=False):
    """An application's own kind of Put."""


async def test_subclasses_of_the_operations_are_applied_like_them(store: Store) -> None:
    assert await store.commit([TracedPut("ledger", b"k", b"v"),
                               Update("ledger", b"k", lambda current: (current or b"") + b"w")]) \
        == [None, b"vw"]
    assert await store.get("ledger", b"k") == b"vw"


async def test_an_update_returning_none_deletes_the_key(store: Store) -> None:
    await store.commit([Put("ledger", b"k", b"v")])

    assert await store.commit([Update("ledger", b"k", lambda current: None)]) == [None]
    assert await store.get("ledger", b"k") is None


async def test_an_update_can_write_other_keys_with_its_value_in_the_same_transaction(
        store: Store) -> None:
    await store.commit([Put("ledger", b"index/old", b""), Put("ledger", b"k", b"old")])

    def move(current: bytes | None) -> Changed:
        return b"new", (Delete("ledger", b"index/old"), Put("ledger", b"index/new", b""))

    assert await store.commit([Update("ledger", b"k", move)]) == [b"new"]
    assert [item async for item in store.scan("ledger")] == [
        (b"index/new", b""), (b"k", b"new")]


async def test_what_an_update_writes_besides_its_value_is_checked_and_all_or_nothing(
        store: Store) -> None:
    def writing(*also: object) -> Callable[[bytes | None], Changed]:
        return lambda current: (b"v", also)  # type: ignore[return-value]

    for also, refused in [(Put("nope", b"k", b"v"), "in 'ledger' asked to also write Put"),
                          (Put("ledger", b"k" * 512, b"v"), "a key of 1 to 511 bytes"),
                          (Insert("ledger", b"k2", b"v"), "which is not a Put or Delete")]:
        with pytest.raises(ConfigurationError, match=refused):
            await store.commit([Put("ledger", b"before", b"1"),
                                Update("ledger", b"k", writing(Put("ledger", b"ok", b""), also))])

    assert [key async for key, _ in store.scan("ledger")] == []
    assert store.statistics().commits == 0


async def test_scan_yields_keys_under_a_prefix_in_order_forward_and_reverse(store: Store) -> None:
    keys = [b"a\x00%04d" % i for i in range(600)]  # more than two read chunks
    await store.commit([Put("traces", key, key) for key in keys]
                       + [Put("traces", b"a", b"x"), Put("traces", b"a\x01", b"x")])

    forward = [key async for key, _ in store.scan("traces", prefix=b"a\x00")]
    backward = [key async for key, _ in store.scan("traces", prefix=b"a\x00", reverse=True)]

    assert forward == keys
    assert backward == keys[::-1]


async def test_an_async_store_acknowledges_without_syncing_and_flushes_at_close(
        tmp_path: Path) -> None:
    store = await Store.open(tmp_path, durability="async", flush_interval=60.0)
    for i in range(20):
        await store.commit([Put("runs", b"r%d" % i, b"v")])
    assert store.statistics().syncs == 0
    await store.commit([Put("runs", b"durable", b"v")], durable=True)
    assert store.statistics().syncs == 1
    await store.commit([Put("runs", b"after", b"v")])
    await store.close()

    assert store.statistics().syncs == 2
    async with Store.open(tmp_path) as reopened:
        assert await reopened.get("runs", b"after") == b"v"


async def test_non_durable_commits_are_flushed_after_the_flush_interval(tmp_path: Path) -> None:
    async with Store.open(tmp_path, durability="async", flush_interval=0.01) as store:
        await store.commit([Put("runs", b"r", b"v")])
        with anyio.fail_after(5):
            # The writer thread has no event to wait on: poll its counter.
            while store.statistics().syncs == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_the_map_grows_past_its_initial_size_instead_of_failing(tmp_path: Path) -> None:
    async with Store.open(tmp_path, map_size=64 * 1024) as store:
        for batch in range(8):
            await store.commit([Put("traces", b"%d-%d" % (batch, i), os.urandom(1024))
                                for i in range(64)])
        statistics = store.statistics()
        assert statistics.map_grows >= 1
        assert statistics.map_size > 64 * 1024
        assert len([key async for key, _ in store.scan("traces")]) == 8 * 64


async def test_reads_stay_correct_while_the_map_grows_under_them(tmp_path: Path) -> None:
    value = os.urandom(2048)
    async with Store.open(tmp_path, map_size=64 * 1024, durability="async") as store:
        await store.commit([Put("runs", b"fixed", value)])
        seen: list[bool] = []

        async def read_until_done() -> None:
            while not done.is_set():
                seen.append(await store.get("runs", b"fixed") == value)
                seen.append(store.read_on_loop(lambda snapshot: snapshot.get("runs", b"fixed"))
                            == value)
                seen.append(len([k async for k, _ in store.scan("runs", limit=300)]) >= 1)
                await anyio.lowlevel.checkpoint()

        done = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(read_until_done)
            for batch in range(30):
                await store.commit([Put("traces", b"%d-%d" % (batch, i), value)
                                    for i in range(20)])
            done.set()

        assert store.statistics().map_grows >= 3
        assert seen and all(seen)


async def test_a_failed_flush_fails_the_durable_writes_and_the_store_keeps_working(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = store._writer  # fault injection at the writer's flush

    def failing_sync() -> None:
        monkeypatch.undo()
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(writer, "_sync", failing_sync)

    with pytest.raises(StoreError, match=r"flush of put b'k' in 'runs' failed.*Input/output"):
        await store.commit([Put("runs", b"k", b"v")])
    assert await store.commit([Put("runs", b"k2", b"v")]) == [None]
    assert store.statistics().failed_writes == 1


async def test_bad_settings_are_refused_at_open(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="durability='later'"):
        await Store.open(tmp_path, durability="later")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="map_size=0"):
        await Store.open(tmp_path, map_size=0)


async def test_opening_a_regular_file_raises_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("not a store")

    with pytest.raises(StoreUnavailable, match="the path is a file, not a folder"):
        await Store.open(path)


async def test_opening_a_folder_holding_something_else_raises_store_unavailable(
        tmp_path: Path) -> None:
    (tmp_path / "data.mdb").write_bytes(b"garbage" * 1000)

    with pytest.raises(StoreUnavailable, match=r"LMDB cannot open it.*not an LMDB file"):
        await Store.open(tmp_path)


async def test_a_store_folder_is_open_in_one_place_at_a_time(tmp_path: Path) -> None:
    async with Store.open(tmp_path):
        with pytest.raises(StoreUnavailable, match=f"already open \\(by pid {os.getpid()}\\)"):
            await Store.open(tmp_path)
    async with Store.open(tmp_path):
        pass  # closing released it


@pytest.fixture
def unwritable_folder() -> Iterator[Path]:
    """A folder this test's child process (run as `nobody` when we are root) cannot write."""
    parent = Path(tempfile.mkdtemp(prefix="roost-unwritable-"))
    parent.chmod(0o755)
    folder = parent / "store"
    folder.mkdir(mode=0o555)
    folder.chmod(0o555)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(parent)


def test_opening_an_unwritable_folder_raises_store_unavailable(unwritable_folder: Path) -> None:
    # Root writes anywhere, so as root the opening runs in a child process as `nobody`.
    user = 65534 if os.geteuid() == 0 else None
    child = (
        "import asyncio, sys\n"
        "from roost.errors import StoreUnavailable\n"
        "from roost.storage import Store\n"
        "async def main():\n"
        "    try:\n"
        "        await Store.open(sys.argv[1])\n"
        "    except StoreUnavailable as exc:\n"
        "        print(exc)\n"
        "asyncio.run(main())\n"
    )
    try:
        result = subprocess.run([sys.executable, "-c", child, str(unwritable_folder)],
                                capture_output=True, text=True, timeout=30, user=user,
                                check=False)
    except PermissionError:
        pytest.skip("running as root without the right to switch to user nobody")

    assert result.returncode == 0, result.stderr
    assert f"cannot open the store at '{unwritable_folder}'" in result.stdout
    assert "cannot create roost.lock (Permission denied)" in result.stdout
