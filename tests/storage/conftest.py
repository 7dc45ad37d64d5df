"""Fixtures for the storage tests: a fresh store, and the loop-blocking guard on every test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from roost.storage import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store in sync mode in a fresh folder, closed after the test."""
    async with Store.open(tmp_path / "store") as opened:
        yield opened


@pytest.fixture(autouse=True)
def _no_lmdb_flush_on_the_loop(no_lmdb_flush_on_the_event_loop: None) -> None:
    """Every storage test runs under the loop-blocking guard of tests/conftest.py."""
