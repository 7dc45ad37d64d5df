"""Specifications of a node (`roost.cluster`): its settings, its row in `roost_nodes`, and how
`system.cluster.nodes()` tells live nodes from dead and stopped ones.

Each test has a schema of its own on the session's private server (tests/_postgres.py).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import anyio
import pytest

import roost
from roost.errors import ConfigurationError
from tests._postgres import PostgresServer

pytestmark = pytest.mark.anyio


def node(url: str, **settings: object) -> roost.ActorSystem:
    return roost.ActorSystem(store=url, log_format="json", log_level="error", **settings)


@pytest.mark.parametrize(("settings", "message"), [
    ({"lease": 0}, "lease must be a number of seconds > 0"),
    ({"lease": 2.0, "heartbeat": 1.5}, "heartbeat=1.5 must be at most half the lease"),
    ({"lease": 2.0, "node_dead_after": 1.0}, "node_dead_after=1.0 must be at least the lease"),
    ({"max_takeovers": 0}, "max_takeovers must be a whole number >= 1"),
    ({"node_id": ""}, "node_id must be a non-empty string"),
    ({"pools": ["gpu", ""]}, "pools must be non-empty strings"),
])
def test_bad_node_settings_are_refused_naming_the_setting(
        postgres_url: str, settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        node(postgres_url, **settings)


def test_node_settings_on_an_lmdb_store_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="lease set\\(s\\) up a node of a cluster, which "
                                                 "needs a PostgreSQL store"):
        roost.ActorSystem(store=tmp_path / "store", lease=2.0)
    assert roost.ActorSystem(store=tmp_path / "store").cluster is None


def test_a_node_gets_an_id_and_its_heartbeat_defaults_to_a_third_of_the_lease(
        postgres_url: str) -> None:
    system = node(postgres_url, lease=9.0)

    assert system.cluster is not None
    settings = system.cluster.settings
    assert settings.node_id.startswith(f"{socket.gethostname()}-{os.getpid()}-")
    assert (settings.lease, settings.heartbeat, settings.dead_after) == (9.0, 3.0, 18.0)
    assert settings.max_takeovers == 5


async def test_a_running_system_is_listed_as_a_live_node(postgres_url: str) -> None:
    async with node(postgres_url, node_id="a", lease=2.0, pools=["gpu"]) as system:
        assert system.cluster is not None
        [listed] = await system.cluster.nodes()

    assert (listed.node_id, listed.host, listed.pid) == ("a", socket.gethostname(), os.getpid())
    assert listed.alive and not listed.stopped and listed.pools == ["gpu"]
    assert abs(listed.heartbeat - time.time()) < 5


async def test_a_node_that_stopped_is_listed_stopped_and_one_gone_silent_dead(
        postgres_url: str, postgres_server: PostgresServer) -> None:
    async with node(postgres_url, node_id="a", lease=1.0):
        pass
    async with node(postgres_url, node_id="b", lease=1.0) as watcher:
        assert watcher.cluster is not None
        schema = postgres_url.rsplit("=", 1)[1]
        postgres_server.sql(f"INSERT INTO {schema}.roost_nodes (id, host, pid, pools, dead_after,"
                            " heartbeat) VALUES ('c', 'h', 1, '{}', 2, now() - interval '3s')")
        listed = {n.node_id: n for n in await watcher.cluster.nodes()}

    assert listed["a"].stopped and not listed["a"].alive
    assert listed["b"].alive
    assert not listed["c"].alive and not listed["c"].stopped


async def test_the_heartbeat_keeps_a_node_alive_past_its_dead_after(postgres_url: str) -> None:
    async with node(postgres_url, node_id="a", lease=0.3, node_dead_after=0.3) as system:
        assert system.cluster is not None
        first = (await system.cluster.nodes())[0].heartbeat
        with anyio.fail_after(5):
            while (listed := (await system.cluster.nodes())[0]).heartbeat <= first:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        await anyio.sleep(0.4)  # longer than dead_after: only renewals keep it alive

        assert (await system.cluster.nodes())[0].alive
    assert listed.alive
