"""Tests of roost/storage/_writer.py: the writer thread survives any failure of a batch, and if
it dies anyway every waiter (and the system) hears it at once instead of hanging; a process
whose event loop stops with its store open still exits, keeping the writes acknowledged."""

from __future__ import annotations

import errno
import signal
import subprocess
import sys
import textwrap
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

ROOT = Path(__file__).resolve().parents[2]

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


def run_to_exit(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `script` in a new interpreter; fail the test if it has not exited after 30 s."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the process did not exit (killed after 30 s): {expired.stderr!r}")


INTERRUPTED_WITH_THE_STORE_OPEN = """
    import asyncio, sys
    from roost.storage import Put, Store

    async def main(path, raised):
        store = await Store.open(path, durability="async", flush_interval=3600)
        await store.commit([Put("runs", b"acknowledged", b"1")])
        await store.read(lambda snapshot: None)  # a worker thread
        async def interrupt():
            raise eval(raised)
        asyncio.get_running_loop().create_task(interrupt())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:  # asyncio.run cancels this task on its way out...
            raise eval(raised) from None  # ...and is interrupted again: it never finishes

    asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize(("raised", "exit_code"), [("KeyboardInterrupt()", -signal.SIGINT),
                                                   ("SystemExit(3)", 3)])
def test_a_process_whose_loop_stops_with_the_store_open_exits_and_keeps_acknowledged_writes(
        tmp_path: Path, raised: str, exit_code: int) -> None:
    child = run_to_exit(INTERRUPTED_WITH_THE_STORE_OPEN, str(tmp_path), raised)

    assert child.returncode == exit_code, child.stderr
    assert "store_closed_at_exit" in child.stdout + child.stderr

    async def read_back() -> bytes | None:
        async with Store.open(tmp_path) as store:
            return await store.get("runs", b"acknowledged")

    assert anyio.run(read_back) == b"1"


TOOL_RAISING = """
    import asyncio, sys
    import roost

    async def main(path, raised):
        async with roost.ActorSystem(store=path, log_level="critical") as system:
            for options in ({}, {"read_only": True}):
                async def interrupting(x: int) -> int:
                    raise eval(raised)
                interrupting.__name__ = name = f"interrupting_{len(options)}"
                system.tools.register(roost.tool(**options)(interrupting))
                for _ in range(2):
                    try:
                        await asyncio.wait_for(system.tools.call(name, x=1, key="k"), 5)
                    except BaseException:
                        pass

    asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("raised", ["KeyboardInterrupt('in a tool')", "SystemExit('in a tool')"])
def test_a_tool_raising_keyboard_interrupt_or_system_exit_does_not_hang_the_process_at_exit(
        tmp_path: Path, raised: str) -> None:
    child = run_to_exit(TOOL_RAISING, str(tmp_path / "store"), raised)

    assert child.returncode != 0
    assert "in a tool" in child.stderr
