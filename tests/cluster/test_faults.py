"""Fault tests of a cluster: three node processes on one PostgreSQL database drive 300 runs of a
5-step pipeline whose step 3 has a side effect, while a node is killed, a node is paused past
its lease, or the database restarts.

Each node (`_node.py`) starts 100 runs; at most 10 are in flight per node, the others wait
queued for any node to claim. The effect is a line in an fsynced log keyed by the call's
idempotency key (`_effects.py`). Each test then asserts: every run completed, each run's
effect was applied exactly once, and no lease is left (none held by a dead node). Leases
are 2 s; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import asyncpg
import pytest

from roost.storage import RunStatus, RunStore
from roost.storage.postgres import PostgresStore
from tests._postgres import PostgresServer
from tests.cluster._effects import read

# Each test takes about 7 s; the waits below are hang guards, generous for a loaded machine.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

SCRIPT = Path(__file__).with_name("_node.py")
RUNS_PER_NODE = 100
NODES = ("a", "b", "c")
TOTAL = RUNS_PER_NODE * len(NODES)
DEADLINE = 60.0  # seconds for the runs to finish after the fault


class Node:
    """One node process; its output goes to files (a pipe nobody reads could fill up)."""

    def __init__(self, url: str, node_id: str, folder: Path, effects: Path,
                 runs: int = RUNS_PER_NODE) -> None:
        self.node_id = node_id
        self.out = folder / f"{node_id}.out"
        self.err = folder / f"{node_id}.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, str(SCRIPT), url, node_id, str(effects), str(runs),
                 f"run-{node_id}"], stdout=out, stderr=err, cwd=SCRIPT.parent)

    def said(self, prefix: str) -> list[str]:
        return [line for line in self.out.read_text().splitlines() if line.startswith(prefix)]

    def stats(self) -> dict[str, int]:
        [line] = self.said("stats ")
        stats: dict[str, int] = json.loads(line.removeprefix("stats "))
        return stats

    def signal(self, number: int) -> None:
        os.kill(self.process.pid, number)

    def stop(self) -> int:
        """SIGTERM (a clean stop), then SIGKILL if it does not end in time; its exit code."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                return self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def tail(self) -> str:
        return f"--- {self.node_id} stderr ---\n{self.err.read_text()[-3000:]}"


class Cluster:
    """The three nodes of a test, the effects log, and the store as a client sees it."""

    def __init__(self, url: str, folder: Path) -> None:
        self.url = url
        self.folder = folder
        self.effects = folder / "effects"
        self.nodes = {node_id: Node(url, node_id, folder, self.effects) for node_id in NODES}

    def add(self, node_id: str) -> Node:
        """Start one more node, which starts no runs of its own (it claims others')."""
        node = self.nodes[node_id] = Node(self.url, node_id, self.folder, self.effects, runs=0)
        return node

    async def wait_until(self, what: str, condition: Callable[[], object], timeout: float,
                         ) -> None:
        """Poll `condition` (sync or async) until it holds; fail naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            held = condition()
            if hasattr(held, "__await__"):
                held = await held
            if held:
                return
            for node in self.nodes.values():
                if node.process.poll() is not None and node.process.returncode not in (
                        -signal.SIGKILL, 0):
                    pytest.fail(f"node {node.node_id} died waiting for {what}\n{node.tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:g}s: {await self.describe()}\n"
                            + "\n".join(node.tail() for node in self.nodes.values()))
            await anyio.sleep(0.1)

    def applied(self, node: str | None = None) -> int:
        return sum(1 for calls in read(self.effects).values() for _, by, outcome in calls
                   if outcome == "applied" and node in (None, by))

    async def statuses(self) -> Counter[str]:
        async with PostgresStore.open(self.url, readonly=True) as store:
            return Counter(str(record.status) for record in await RunStore(store).list())

    async def leases(self, owner: str | None = None) -> int:
        async with PostgresStore.open(self.url, readonly=True) as store:
            async def count(connection: object) -> int:
                query = "SELECT count(*) FROM roost_leases"
                if owner is None:
                    return int(await connection.fetchval(query))  # type: ignore[attr-defined]
                return int(await connection.fetchval(  # type: ignore[attr-defined]
                    query + " WHERE owner = $1", owner))

            return await store.on_connection(count)

    async def describe(self) -> str:
        async with PostgresStore.open(self.url, readonly=True) as store:
            failed = await RunStore(store).list(status=RunStatus.FAILED)
        errors = Counter(f"{record.failed_step}: {record.error}" for record in failed)
        return (f"statuses {dict(await self.statuses())}, leases left {await self.leases()}, "
                f"failures {errors.most_common(3)}\n{await self._sessions()}")

    async def _sessions(self) -> str:
        """The leases by owner and the database's sessions: what a stalled cluster waits on."""
        connection = await asyncpg.connect(self.url)
        try:
            owners = await connection.fetch(
                "SELECT owner, count(*) AS leases, max(lease_until - now()) AS latest "
                "FROM roost_leases GROUP BY owner")
            sessions = await connection.fetch(
                "SELECT pid, state, wait_event, pg_blocking_pids(pid) AS blocked_by, "
                "now() - state_change AS idle_for, left(query, 80) AS query FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await connection.close()
        return "\n".join(str(dict(row)) for row in [*owners, *sessions])

    async def mid_run(self) -> bool:
        """Node a has had effects and holds leases: runs are in flight on it."""
        return self.applied("a") >= 5 and await self.leases("a") >= 3

    async def all_completed(self) -> bool:
        return (await self.statuses())[RunStatus.COMPLETED] == TOTAL

    async def started(self) -> None:
        await self.wait_until("the start of every node's runs",
                              lambda: all(n.said("started") for n in self.nodes.values()), 20)

    async def finish(self) -> dict[str, dict[str, int]]:
        """Wait for every run to complete and every lease to go; stop the nodes; check the
        effects. Returns each stopped node's statistics."""
        await self.wait_until("completion of every run", self.all_completed, DEADLINE)
        await self.wait_until("release of every lease", lambda: self._no_leases(), 10)
        stats = {}
        for node in self.nodes.values():
            if node.process.poll() is None:
                assert node.stop() == 0, node.tail()
                stats[node.node_id] = node.stats()
        calls = read(self.effects)
        runs = Counter(run for lines in calls.values() for run, _, outcome in lines
                       if outcome == "applied")
        assert len(runs) == TOTAL and set(runs.values()) == {1}, "an effect not exactly once"
        assert all(sum(o == "applied" for _, _, o in lines) == 1 for lines in calls.values())
        return stats

    async def _no_leases(self) -> bool:
        return await self.leases() == 0

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.signal(signal.SIGCONT)  # a paused node cannot act on SIGTERM
            node.stop()


@pytest.fixture
def cluster(postgres_url: str, tmp_path: Path) -> Iterator[Cluster]:
    nodes = Cluster(postgres_url, tmp_path)
    try:
        yield nodes
    finally:
        nodes.stop()


async def test_a_node_killed_mid_run_has_its_runs_finished_by_the_others(
        cluster: Cluster) -> None:
    await cluster.started()
    await cluster.wait_until("node a mid-run", cluster.mid_run, 20)

    cluster.nodes["a"].signal(signal.SIGKILL)
    stats = await cluster.finish()

    assert await cluster.leases("a") == 0
    assert stats["b"]["took_over"] + stats["c"]["took_over"] > 0


async def test_a_node_paused_past_its_lease_is_fenced_out_and_its_runs_finish_elsewhere(
        cluster: Cluster) -> None:
    await cluster.started()
    await cluster.wait_until("node a mid-run", cluster.mid_run, 20)

    paused = cluster.nodes["a"]
    paused.signal(signal.SIGSTOP)
    await cluster.wait_until("takeover of node a's runs",
                             lambda: _none_left(cluster, "a"), 45)
    paused.signal(signal.SIGCONT)
    stats = await cluster.finish()

    assert stats["a"]["lost"] > 0  # it found its leases gone, and wrote nothing under them
    assert stats["b"]["took_over"] + stats["c"]["took_over"] > 0


async def _none_left(cluster: Cluster, owner: str) -> bool:
    return await cluster.leases(owner) == 0


async def test_runs_finish_when_the_database_restarts_mid_run(
        cluster: Cluster, postgres_server: PostgresServer) -> None:
    await cluster.started()
    await cluster.wait_until("effects", lambda: cluster.applied() >= 30, 20)
    assert not await cluster.all_completed()

    await anyio.to_thread.run_sync(postgres_server.restart)
    await cluster.finish()


async def test_a_rolling_restart_hands_a_nodes_runs_to_its_new_version(cluster: Cluster) -> None:
    successor = cluster.add("a2")  # the new version of node a, starting beside the old one
    await cluster.started()
    await cluster.wait_until("the new version's start", lambda: successor.said("started"), 20)
    await cluster.wait_until("node a mid-run", cluster.mid_run, 20)

    assert cluster.nodes["a"].stop() == 0  # SIGTERM: it hands its leases back as it stops
    stats = await cluster.finish()

    assert sum(node["took_over"] for node in stats.values()) > 0
