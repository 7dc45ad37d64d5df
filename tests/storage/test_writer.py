"""Tests of roost/storage/_writer.py: the writer thread survives any failure of a batch, and if
it dies anyway every waiter (and the system) hears it at once instead of hanging."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog

import roost
from roost.errors import StoreError
from roost.storage import Put, Store, Update
from roost.storage._writer import Writer
from tests.support import fill

pytestmark = pytest.mark.anyio


class WriterKilled(BaseException):
    """Something no `except Exception` catches, raised inside the writer thread."""


def disk_full_logging(*_: Any) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device (the log file)")


async def test_a_batch_that_fails_while_its_error_is_logged_to_a_full_disk_fails_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    structlog.configure(processors=[disk_full_logging])
    original = Writer._commit
    failing = {"left": 1}

    def commit_fails_once(self: Writer, batch: Any, outcomes: Any) -> Any:
        if failing["left"]:
            failing["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return original(self, batch, outcomes)

    monkeypatch.setattr(Writer, "_commit", commit_fails_once)
    async with Store.open(tmp_path) as store:
        with pytest.raises(StoreError, match=r"commit of put b'a' in 'runs' failed \(OSError: "
                                             r"\[Errno 5\] Input/output error\)"):
            await store.commit([Put("runs", b"a", b"1")])

        await store.commit([Put("runs", b"b", b"2")])  # the writer is still serving

        assert await store.get("runs", b"b") == b"2"
        assert await store.get("runs", b"a") is None


async def test_an_unexpected_error_in_the_writer_fails_its_batch_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = Writer._write
    calls = {"n": 0}

    def write_breaks_once(self: Writer, batch: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("a bug in the writer")
        return original(self, batch)

    monkeypatch.setattr(Writer, "_write", write_breaks_once)
    async with Store.open(tmp_path) as store:
        with pytest.raises(StoreError, match=r"failed a batch unexpectedly \(RuntimeError: a bug "
                                             r"in the writer\); the write was not saved"):
            await store.commit([Put("runs", b"a", b"1")])

        assert await store.commit([Put("runs", b"b", b"2")]) == [None]


def kill_the_writer(_: bytes | None) -> bytes:
    raise WriterKilled("the writer thread was killed")


async def test_a_dead_writer_fails_every_waiter_and_every_later_write_at_once(
        tmp_path: Path) -> None:
    heard: list[StoreError] = []
    async with Store.open(tmp_path) as store:
        store.on_failure(heard.append)

        with pytest.raises(StoreError, match=r"the writer thread stopped \(WriterKilled: the "
                                             r"writer thread was killed\); no write can be saved"):
            await store.commit([Update("runs", b"a", kill_the_writer)])
        with anyio.fail_after(5):
            with pytest.raises(StoreError, match="the writer thread stopped"):
                await store.commit([Put("runs", b"b", b"2")])

    assert len(heard) == 1 and "writer thread stopped" in str(heard[0])


async def test_a_system_whose_store_writer_dies_stops_with_that_error(tmp_path: Path) -> None:
    with anyio.fail_after(10), pytest.raises(StoreError, match="the writer thread stopped"):
        async with roost.ActorSystem(store=tmp_path, log_format="json",
                                     log_level="critical") as system:
            with pytest.raises(StoreError):
                await system.store.commit([Update("runs", b"a", kill_the_writer)])
            await anyio.sleep_forever()  # the failure cancels the block


async def test_a_full_disk_fails_writes_clearly_and_the_store_recovers_when_space_is_freed(
        small_disk: Path) -> None:
    filler = small_disk / "filler"
    store_path = small_disk / "store"
    async with Store.open(store_path, map_size=2**20) as store:
        await store.commit([Put("runs", b"before", b"x" * 1000)])
        await anyio.to_thread.run_sync(fill, filler)
        with pytest.raises(StoreError, match=r"(No space left|MDB_MAP_FULL|Errno 28)"):
            for n in range(2000):
                await store.commit([Put("runs", b"k%05d" % n, b"y" * 4000)])
        filler.unlink()
        await store.commit([Put("runs", b"after", b"z")])

    async with Store.open(store_path) as reopened:
        assert await reopened.get("runs", b"before") == b"x" * 1000
        assert await reopened.get("runs", b"after") == b"z"
