"""Tests of roost/pipelines/admission.py through `system.pipelines`: a bound on runs in flight,
a durable queue behind it, and backpressure instead of failures when the system is busy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost.errors import RunNotFound, SystemBusy
from roost.storage import RunStatus

pytestmark = pytest.mark.anyio

GATE: dict[str, asyncio.Event] = {}
STARTED: list[str] = []


class Held(roost.Actor):
    """Records that its run started, then waits until the test opens the gate."""

    async def receive(self, message: roost.RunStep) -> Any:
        STARTED.append(message.run_id)
        await GATE["open"].wait()
        return message.run_id


class Quick(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return {"run": message.run_id, "text": "x" * 1024}


IN_STEP: dict[str, int] = {}  # run id -> its steps executing now
MOST_RUNS_IN_STEPS: list[int] = []


class Counted(roost.Actor):
    """Takes a little while, noting how many runs have a step executing at once."""

    async def receive(self, message: roost.RunStep) -> Any:
        IN_STEP[message.run_id] = IN_STEP.get(message.run_id, 0) + 1
        MOST_RUNS_IN_STEPS.append(len(IN_STEP))
        try:
            await asyncio.sleep(0.005)
        finally:
            IN_STEP[message.run_id] -= 1
            if not IN_STEP[message.run_id]:
                del IN_STEP[message.run_id]
        return message.step


HELD = roost.Pipeline("held", [roost.Step("only", Held, workers=20)])


@pytest.fixture(autouse=True)
def fresh_gate() -> None:
    GATE["open"] = asyncio.Event()
    STARTED.clear()
    IN_STEP.clear()
    MOST_RUNS_IN_STEPS.clear()


async def statuses(system: roost.ActorSystem) -> dict[str, str]:
    return {r.run_id: str(r.status) for r in await system.pipelines.list()}


async def test_runs_past_the_bound_are_stored_as_queued_and_start_in_order_as_slots_free(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, max_active_runs=2) as system:
        handles = [await system.pipelines.start(HELD, run_id=f"run-{i}") for i in range(6)]
        with anyio.fail_after(5):
            while len(STARTED) < 2:  # noqa: ASYNC110 - the first two runs reach their step
                await anyio.sleep(0.01)

        assert STARTED == ["run-0", "run-1"]
        assert list((await statuses(system)).values()).count("queued") == 4
        assert system.pipelines.statistics() == {"active": 2, "queued": 4, "limit": 2}

        GATE["open"].set()
        outcomes = [await handle.result() for handle in handles]

    assert [o.status for o in outcomes] == ["completed"] * 6
    assert STARTED == [f"run-{i}" for i in range(6)]


async def test_start_with_wait_false_refuses_a_run_when_every_slot_is_taken(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        first = await system.pipelines.start(HELD, run_id="first")

        with pytest.raises(SystemBusy, match=r"pipeline 'held': not started, 1 runs are in flight "
                                             r"\(max_active_runs=1\); call start\(\) without "
                                             r"wait=False to queue the run"):
            await system.pipelines.start(HELD, run_id="second", wait=False)

        with pytest.raises(RunNotFound):
            await system.pipelines.runs.get("second")  # nothing was stored
        GATE["open"].set()
        assert (await first.result()).status == "completed"


async def test_a_new_run_joins_the_back_of_the_line_even_when_a_slot_is_free(
        tmp_path: Path) -> None:
    # Slots go to queued runs in groups (here 2 of 40), so one can be free while runs wait;
    # a new start must not take it ahead of them (nor be let through with wait=False).
    wide = roost.Pipeline("held-wide", [roost.Step("only", Held, workers=60)])
    async with roost.ActorSystem(store=tmp_path, max_active_runs=40) as system:
        held = [await system.pipelines.start(wide, run_id=f"held-{i:02d}") for i in range(40)]
        queued = [await system.pipelines.start(wide, run_id=f"queued-{i}") for i in range(3)]
        await system.pipelines.cancel("held-00")
        assert system.pipelines.statistics() == {"active": 39, "queued": 3, "limit": 40}

        with pytest.raises(SystemBusy, match=r"39 runs are in flight and 3 queued before it"):
            await system.pipelines.start(wide, run_id="refused", wait=False)
        late = await system.pipelines.start(wide, run_id="late")
        assert (await statuses(system))["late"] == "queued"

        GATE["open"].set()
        with anyio.fail_after(10):
            for handle in [*held[1:], *queued, late]:
                assert (await handle.result()).status == "completed"

    assert STARTED[-4:] == ["queued-0", "queued-1", "queued-2", "late"]


async def test_queued_runs_survive_a_restart_and_start_when_the_pipeline_is_resumed(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        for i in range(3):
            await system.pipelines.start(HELD, run_id=f"run-{i}")
        with anyio.fail_after(5):
            while not STARTED:  # noqa: ASYNC110
                await anyio.sleep(0.01)
    assert STARTED == ["run-0"]  # the others never left the queue

    GATE["open"].set()
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        handles = await system.pipelines.register(HELD, resume=True)
        outcomes = [await handle.result() for handle in handles]

    assert sorted(o.run_id for o in outcomes) == ["run-0", "run-1", "run-2"]
    assert {o.status for o in outcomes} == {"completed"}


async def test_a_queued_run_can_be_cancelled_and_never_runs(tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        first = await system.pipelines.start(HELD, run_id="first")
        queued = await system.pipelines.start(HELD, run_id="queued")

        await queued.cancel()
        GATE["open"].set()
        await first.result()

        assert await queued.status() == RunStatus.CANCELLED
        with pytest.raises(roost.RunCancelled):
            await queued.result()
    assert "queued" not in STARTED


async def test_many_runs_started_at_once_all_complete_through_small_worker_mailboxes(
        tmp_path: Path) -> None:
    pipeline = roost.Pipeline("busy", [
        roost.Step("a", Quick, workers=2, capacity=4),
        roost.Step("b", Quick, after="a", workers=2, capacity=4),
    ])
    async with roost.ActorSystem(store=tmp_path, durability="async", max_active_runs=300,
                                 log_format="json", log_level="warning") as system:
        handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(600)))
        outcomes = await asyncio.gather(*(handle.result() for handle in handles))

    assert [o.status for o in outcomes].count("completed") == 600


def test_a_bad_bound_names_the_option() -> None:
    with pytest.raises(roost.ConfigurationError,
                       match=r"max_active_runs must be a whole number >= 1, got 0"):
        roost.ActorSystem(max_active_runs=0)


async def test_a_slot_is_free_as_soon_as_a_runs_result_is_known(tmp_path: Path) -> None:
    pipeline = roost.Pipeline("quick", [roost.Step("only", Quick)])
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        for i in range(20):
            handle = await system.pipelines.start(pipeline, run_id=f"run-{i}", wait=False)
            assert (await handle.result()).status == "completed"


async def test_a_run_queued_while_the_only_slot_frees_is_not_stranded(tmp_path: Path) -> None:
    pipeline = roost.Pipeline("quick", [roost.Step("only", Quick)])
    async with roost.ActorSystem(store=tmp_path, max_active_runs=1) as system:
        for i in range(30):
            await system.pipelines.start(pipeline, run_id=f"a-{i}")
            second = await system.pipelines.start(pipeline, run_id=f"b-{i}")
            with anyio.fail_after(5):
                assert (await second.result()).status == "completed"
        assert system.pipelines.statistics()["queued"] == 0


async def test_no_more_runs_than_the_bound_execute_steps_at_once_while_slots_change_hands(
        tmp_path: Path) -> None:
    # A slot changes hands when a run reports its end, before its actor has stopped: the
    # next run's steps may start then, but never more runs have steps executing than the bound.
    pipeline = roost.Pipeline("counted", [
        roost.Step("a", Counted, workers=20),
        roost.Step("b", Counted, after="a", workers=20),
        roost.Step("c", Counted, after="a", workers=20),  # b and c run side by side
    ])
    async with roost.ActorSystem(store=tmp_path, durability="async", max_active_runs=4) as system:
        handles = await asyncio.gather(*(system.pipelines.start(pipeline) for _ in range(60)))
        outcomes = await asyncio.gather(*(handle.result() for handle in handles))
        assert system.pipelines.statistics() == {"active": 0, "queued": 0, "limit": 4}

    assert [o.status for o in outcomes] == ["completed"] * 60
    assert max(MOST_RUNS_IN_STEPS) == 4
