"""Specifications of the cluster's lease operations on the embedded store: `Fence` and `Lease`
are accepted and do nothing (one process owns an LMDB store; there are no leases)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roost.storage import Put, Store
from roost.storage.ops import Fence, Lease

pytestmark = pytest.mark.anyio


async def test_fence_and_lease_are_no_ops_on_an_lmdb_store(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "store") as store:
        results = await store.commit([Lease("run-1", "orders", "node-a", 30.0),
                                      Fence("run-1", "node-b", 7), Put("runs", b"run-1", b"v")])

        assert results == [None, None, None]
        assert await store.get("runs", b"run-1") == b"v"
