"""Fixtures for the storage tests: a fresh store (LMDB, or each kind in turn for the
specifications both stores meet), and the loop-blocking guard on every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from roost.storage import PostgresStore, Store, StoreInterface

Opener = Callable[..., Any]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A store in sync mode in a fresh folder, closed after the test."""
    async with Store.open(tmp_path / "store") as opened:
        yield opened


@pytest.fixture(params=["lmdb", "postgres"])
def open_either_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens the test's store, an LMDB one and then a PostgreSQL one in the session's server
    (the same store each time): `await open_either_store(durability=...)`."""
    if request.param == "lmdb":
        return lambda **options: Store.open(tmp_path / "store", **options)
    url = request.getfixturevalue("postgres_url")
    return lambda **options: PostgresStore.open(url, **options)


@pytest.fixture
async def either_store(open_either_store: Opener) -> AsyncIterator[StoreInterface]:
    """A store of each kind in turn (see `open_either_store`), closed after the test."""
    async with open_either_store() as opened:
        yield opened


@pytest.fixture(autouse=True)
def _no_lmdb_flush_on_the_loop(no_lmdb_flush_on_the_event_loop: None) -> None:
    """Every storage test runs under the loop-blocking guard of tests/conftest.py."""
