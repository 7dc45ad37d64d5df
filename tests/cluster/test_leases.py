"""Specifications of run leases (`roost.cluster`): a run's lease is written with its record and
renewed by its node's heartbeat, a node that lost a lease has its writes refused and stops
the run there, any node with a free slot takes expired and queued runs over, and a run taken
over too often is parked.

Two systems in this process play two nodes on one schema of the session's server; the
fault tests (test_faults.py) do the same with real processes and real failures.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import asyncpg
import pytest

import roost
from roost import Pipeline, RunStep, Step
from roost.errors import LeaseLost, RunInterrupted
from roost.storage import RunStatus

pytestmark = pytest.mark.anyio

RELEASE = asyncio.Event()
SEEN: list[tuple[str, str]] = []


class Hold(roost.Actor):
    """Records the step and, on a node named `a`, waits for the test's signal."""

    def __init__(self, node: str) -> None:
        self.node = node

    async def receive(self, message: RunStep) -> str:
        SEEN.append((self.node, message.step))
        if self.node == "a" and message.step == "second":
            await RELEASE.wait()
        return message.step


class Echo(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        return message.step


def pipeline(node: str) -> Pipeline:
    class Worker(Hold):
        def __init__(self) -> None:
            super().__init__(node)

    return Pipeline("p", [Step("first", Worker), Step("second", Worker, after="first"),
                          Step("third", Worker, after="second")])


def node(url: str, node_id: str, **settings: Any) -> roost.ActorSystem:
    return roost.ActorSystem(store=url, node_id=node_id, log_format="json", log_level="critical",
                             **settings)


async def sql(url: str, statement: str, *args: Any) -> Any:
    connection = await asyncpg.connect(url)
    try:
        return await connection.fetch(statement, *args)
    finally:
        await connection.close()


async def until(what: str, check: Any, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not await check():  # noqa: ASYNC110 - polls the database, which has no event
            await anyio.sleep(0.02)


@pytest.fixture(autouse=True)
def fresh() -> None:
    global RELEASE
    SEEN.clear()
    RELEASE = asyncio.Event()  # an event belongs to the loop of the test that first waits


async def test_a_runs_lease_is_written_with_it_and_goes_when_it_ends(postgres_url: str) -> None:
    async with node(postgres_url, "a", lease=2.0) as system:
        RELEASE.set()
        handle = await system.pipelines.start(pipeline("a"), run_id="run-1")
        [row] = await sql(postgres_url, "SELECT owner, epoch, takeovers FROM roost_leases")
        assert tuple(row) == ("a", 1, 0)

        assert (await handle.result()).status == "completed"

        async def gone() -> bool:
            return not await sql(postgres_url, "SELECT 1 FROM roost_leases")

        await until("the lease's release", gone)


async def test_a_stalled_nodes_run_is_taken_over_and_its_late_writes_are_refused(
        postgres_url: str) -> None:
    # Node a renews rarely (it "stalls") and has no free slot to claim its run back with;
    # node b claims as soon as a lease expires.
    async with node(postgres_url, "a", lease=60.0, heartbeat=30.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=1.0) as b:
        await b.pipelines.register(pipeline("b"))
        handle = await a.pipelines.start(pipeline("a"), run_id="run-1")

        async def at_second() -> bool:
            return ("a", "second") in SEEN

        await until("node a at the second step", at_second)
        await sql(postgres_url, "UPDATE roost_leases SET lease_until = now()")

        records = b.pipelines.runs

        async def completed() -> bool:
            return (await records.get("run-1")).status == RunStatus.COMPLETED

        await until("the run's completion on node b", completed)
        assert b.cluster is not None and b.cluster.statistics()["took_over"] == 1
        RELEASE.set()  # node a's step returns: its checkpoint is refused

        with pytest.raises(RunInterrupted) as raised:
            await handle.result()
        assert isinstance(raised.value.cause, LeaseLost)
        assert "goes on there" in str(raised.value)
        assert (await records.get("run-1")).status == RunStatus.COMPLETED
        assert SEEN.count(("b", "third")) == 1 and ("a", "third") not in SEEN


async def test_queued_runs_are_claimed_by_nodes_with_free_slots(postgres_url: str) -> None:
    RELEASE.set()
    async with node(postgres_url, "a", lease=2.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=2.0) as b:
        await b.pipelines.register(pipeline("b"))
        on_a = pipeline("a")
        for i in range(6):
            await a.pipelines.start(on_a, run_id=f"run-{i}")
        records = a.pipelines.runs

        async def all_completed() -> bool:
            return len(await records.list(status=RunStatus.COMPLETED)) == 6

        await until("every run's completion", all_completed)

    assert {node for node, step in SEEN if step == "first"} >= {"b"}
    assert len([1 for _, step in SEEN if step == "third"]) == 6


async def test_a_run_taken_over_too_often_is_parked_with_the_reason(postgres_url: str) -> None:
    async with node(postgres_url, "a", lease=60.0, heartbeat=30.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=1.0, max_takeovers=1) as b:
        await b.pipelines.register(pipeline("b"))
        await a.pipelines.start(pipeline("a"), run_id="run-1")
        await sql(postgres_url, "UPDATE roost_leases SET lease_until = now(), takeovers = 1")

        async def parked() -> bool:
            rows = await sql(postgres_url, "SELECT parked FROM roost_leases")
            return bool(rows) and rows[0][0] is not None

        await until("the run's parking", parked)
        record = await b.pipelines.runs.get("run-1")
        RELEASE.set()

    assert record.status == RunStatus.SUSPENDED
    assert "taken over 2 times (max_takeovers=1)" in (record.error or "")
    [row] = await sql(postgres_url, "SELECT owner, parked FROM roost_leases")
    assert row[0] is None and "parked by node 'b'" in row[1]


async def test_a_run_queued_on_one_node_wakes_a_node_with_a_free_slot_at_once(
        postgres_url: str) -> None:
    # Node b's own heartbeat (30 s) would claim the queued run far too late for this test:
    # node a's notification wakes it.
    async with node(postgres_url, "a", lease=60.0, heartbeat=30.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=60.0, heartbeat=30.0) as b:
        await b.pipelines.register(pipeline("b"))
        await anyio.sleep(0.5)  # node b's claims at its start have found nothing
        on_a = pipeline("a")
        await a.pipelines.start(on_a, run_id="run-0")  # holds a's one slot at `second`
        await a.pipelines.start(on_a, run_id="run-1")  # queued
        records = b.pipelines.runs

        async def completed() -> bool:
            return (await records.get("run-1")).status == RunStatus.COMPLETED

        await until("run-1's completion on node b", completed, timeout=5.0)
        RELEASE.set()

    assert ("b", "first") in SEEN and ("a", "third") not in SEEN[:3]


async def test_a_node_that_stops_hands_its_runs_to_the_other_nodes_at_once(
        postgres_url: str) -> None:
    async with node(postgres_url, "b", lease=60.0, heartbeat=30.0) as b:
        await b.pipelines.register(pipeline("b"))
        async with node(postgres_url, "a", lease=60.0, heartbeat=30.0) as a:
            await a.pipelines.start(pipeline("a"), run_id="run-1")

            async def at_second() -> bool:
                return ("a", "second") in SEEN

            await until("node a at the second step", at_second)
        records = b.pipelines.runs

        async def completed() -> bool:
            return (await records.get("run-1")).status == RunStatus.COMPLETED

        await until("the run's completion on node b", completed, timeout=5.0)

    assert SEEN[-2:] == [("b", "second"), ("b", "third")]


async def test_a_handle_follows_its_run_to_its_end_on_whichever_node_drives_it(
        postgres_url: str) -> None:
    RELEASE.set()
    async with node(postgres_url, "a", lease=60.0, heartbeat=30.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=60.0, heartbeat=30.0) as b:
        await b.pipelines.register(pipeline("b"))
        on_a = pipeline("a")
        handles = [await a.pipelines.start(on_a, run_id=f"run-{i}") for i in range(4)]
        with anyio.fail_after(10):
            outcomes = [await handle.result() for handle in handles]

    assert [o.status for o in outcomes] == ["completed"] * 4
    assert {o.results["third"] for o in outcomes} == {"third"}
    assert {node for node, step in SEEN if step == "third"} == {"a", "b"}


async def test_a_handle_waits_through_gates_for_a_run_resumed_on_another_node(
        postgres_url: str) -> None:
    RELEASE.set()
    gated = Pipeline("g", [Step("first", Echo), Step("second", Echo, after="first",
                                                     gate=roost.Gate())])
    async with node(postgres_url, "a", lease=60.0, heartbeat=30.0, max_active_runs=1) as a, \
            node(postgres_url, "b", lease=60.0, heartbeat=30.0) as b:
        await b.pipelines.register(gated)
        await a.pipelines.register(gated)
        handle = await a.pipelines.start(gated, run_id="run-1")
        assert (await handle.result()).status == "waiting"
        await a.pipelines.start(pipeline("a"), run_id="busy")  # holds a's one slot
        await b.gates.decide("run-1", "second", "approve", by="ana")
        with anyio.fail_after(10):
            done = await handle.result(through_gates=True)

    assert (done.status, done.results["second"]) == ("completed", "second")


async def test_a_run_the_registered_definition_no_longer_fits_is_parked_saying_why(
        postgres_url: str) -> None:
    async with node(postgres_url, "a", lease=1.0, heartbeat=0.2) as system:
        await system.pipelines.start(pipeline("a"), None, run_id="r1")
        await until("'first' done", lambda: _seen("a", "second"))
    renamed = Pipeline("p", [Step("first_renamed", Echo), Step("second", Echo,
                                                                after="first_renamed")])

    async with node(postgres_url, "b", lease=1.0, heartbeat=0.2, max_takeovers=5) as system:
        await system.pipelines.register(renamed, resume=True)

        async def parked() -> bool:
            return bool((await sql(postgres_url, "SELECT parked FROM roost_leases "
                                                 "WHERE run_id = 'r1'"))[0]["parked"])

        await until("the run parked", parked)
        [lease] = await sql(postgres_url, "SELECT takeovers, parked FROM roost_leases")
        record = await system.pipelines.runs.get("r1")

    # Parked at the first claim, naming the change, not after bouncing max_takeovers times.
    assert lease["takeovers"] <= 1
    assert lease["parked"].startswith("parked by node 'b': run 'r1' cannot go on under the "
                                      "pipeline 'p' registered now: it holds its result for "
                                      "step 'first'")
    assert (record.status, record.error) == (RunStatus.SUSPENDED, lease["parked"])


async def test_a_run_whose_record_does_not_decode_is_parked_once_not_claimed_in_a_loop(
        postgres_url: str) -> None:
    async with node(postgres_url, "a", lease=1.0, heartbeat=0.2) as system:
        await system.pipelines.start(pipeline("a"), None, run_id="r1")
        await until("'first' done", lambda: _seen("a", "second"))
    await sql(postgres_url, "UPDATE roost_records SET value = '\\xc1'::bytea "
                            "WHERE db = 'runs' AND key = 'r1'::bytea")

    async with node(postgres_url, "b", lease=1.0, heartbeat=0.2, max_takeovers=5) as system:
        await system.pipelines.register(pipeline("b"), resume=True)

        async def parked() -> bool:
            return bool((await sql(postgres_url, "SELECT parked FROM roost_leases "
                                                 "WHERE run_id = 'r1'"))[0]["parked"])

        await until("the run parked", parked)
        await anyio.sleep(0.6)  # a few heartbeats: it is not claimed again
        [lease] = await sql(postgres_url, "SELECT owner, takeovers, parked FROM roost_leases")

    assert lease["owner"] is None and lease["takeovers"] <= 1
    assert "does not decode" in lease["parked"]


async def _seen(node_id: str, step: str) -> bool:
    return (node_id, step) in SEEN
