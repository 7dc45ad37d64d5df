"""Fixtures shared by every test: the asyncio backend and a running actor system."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

import roost


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
