"""Fixtures shared by every test: the asyncio backend and a running actor system."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import roost


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def system() -> AsyncIterator[roost.ActorSystem]:
    """A running actor system without a store, shut down after the test."""
    async with roost.ActorSystem(log_format="json", log_level="warning") as running:
        yield running
