"""Fixtures shared by every test: the asyncio backend and a running actor system."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lmdb
import pytest
import structlog

import roost
from tests._postgres import postgres_server, postgres_url  # noqa: F401 (fixtures)
from tests.support import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A monotonic clock that moves only when the test advances it."""
    return FakeClock()


@pytest.fixture(autouse=True)
def fresh_structlog() -> Iterator[None]:
    """Undo any structlog configuration a test's system made, so log levels never leak."""
    yield
    structlog.reset_defaults()


@pytest.fixture
async def system() -> AsyncIterator[roost.ActorSystem]:
    """A running actor system without a store, shut down after the test."""
    async with roost.ActorSystem(log_format="json", log_level="warning") as running:
        yield running


# LMDB calls that can fsync, remap or commit: none may run on the event loop thread.
_FLUSHING_CALLS = {"sync", "commit", "set_mapsize", "open_db", "close", "copy", "copyfd"}


@pytest.fixture
def no_lmdb_flush_on_the_event_loop() -> Iterator[None]:
    """Fail the test if an LMDB call that can fsync or remap ran on the test's thread.

    The anyio plugin runs the event loop on the test's thread, so a profile hook on
    that thread sees every C call made on the loop; worker threads are not watched.
    """
    offenders: list[str] = []
    loop_thread = threading.get_ident()

    def watch(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) in _FLUSHING_CALLS:
            owner = getattr(arg, "__self__", None)
            if isinstance(owner, lmdb.Environment | lmdb.Transaction):
                offenders.append(f"{type(owner).__name__}.{arg.__name__} called from "
                                 f"{frame.f_code.co_filename}:{frame.f_lineno}")

    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        yield
    finally:
        sys.setprofile(previous)
    assert threading.get_ident() == loop_thread
    assert not offenders, f"LMDB calls that can block ran on the event loop: {offenders}"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
