"""Faults found in pipeline runs by outside testers, as specifications of what a run does
instead (roost/pipelines/run.py and service.py): pending gates close when their run ends,
a review is a whole step's, a review's data must fit the step's output type, a started
run goes on when its caller gives up, and a decision outlives a lost checkpoint.

Each system is a real one on a real LMDB store in a temp folder.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

import roost
from roost import Gate, NeedsReview, Pipeline, RunStep, Step
from roost.errors import GateClosed, StepFailed
from roost.storage import checkpoint_key
from roost.storage.ops import Delete

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_lmdb_flush_on_the_event_loop")]

EXECUTED: list[str] = []
ENTERED = asyncio.Event()


class Echo(roost.Actor):
    async def receive(self, message: RunStep) -> str:
        EXECUTED.append(message.step)
        return f"{message.step}:done"


class Held(roost.Actor):
    """Signals `ENTERED`, then runs until it is cancelled."""

    async def receive(self, message: RunStep) -> str:
        ENTERED.set()
        await asyncio.Event().wait()
        raise AssertionError("never released")


class ReviewsItemTwo(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        if message.item == 2:
            return NeedsReview("unsure about 2", data=20)
        return message.item * 10


class ProposesText(roost.Actor):
    async def receive(self, message: RunStep) -> Any:
        return NeedsReview("check the amount", data="twelve")


@pytest.fixture(autouse=True)
def fresh_board() -> None:
    global ENTERED
    EXECUTED.clear()
    ENTERED = asyncio.Event()  # bound to the test's event loop on first use


@pytest.fixture
async def system(tmp_path: Path) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store") as system:
        yield system


async def outcome(handle: roost.RunHandle, *, through_gates: bool = False) -> roost.RunOutcome:
    with anyio.fail_after(10):
        return await handle.result(through_gates=through_gates)


def two_gates() -> Pipeline:
    return Pipeline("two-gates", [Step("a", Echo, gate=Gate()), Step("b", Echo, gate=Gate())])


# --- 1. a run that ends closes its pending gates ---------------------------------------


async def test_a_run_rejected_at_one_gate_closes_its_other_pending_gate(
        system: roost.ActorSystem) -> None:
    run = await system.pipelines.start(two_gates(), run_id="run-1")
    assert (await outcome(run)).waiting_at == ["a", "b"]

    await system.gates.decide("run-1", "a", "reject", by="ana")

    assert (await outcome(run, through_gates=True)).status == "rejected"
    assert await system.gates.pending() == []
    closed = await system.gates.get("run-1", "b")
    assert closed.status == "closed"
    assert [event.what for event in closed.history] == ["opened", "closed"]
    with pytest.raises(GateClosed, match="its run ended rejected"):
        await system.gates.decide("run-1", "b", "approve", by="ana")


async def test_a_live_run_cancelled_closes_the_gate_it_still_waits_at(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("held", [Step("a", Held, gate=Gate()), Step("b", Echo, gate=Gate())])
    run = await system.pipelines.start(pipeline, run_id="run-1")
    await outcome(run)
    await system.gates.decide("run-1", "a", "approve", by="ana")  # resumes: `a` runs, `b` waits
    with anyio.fail_after(10):
        await ENTERED.wait()

    await run.cancel()

    assert (await system.pipelines.runs.get("run-1")).status == "cancelled"
    assert (await system.gates.get("run-1", "b")).status == "closed"
    assert (await system.gates.get("run-1", "a")).decision == "approve"  # decided, kept
    assert await system.gates.pending() == []
    with pytest.raises(GateClosed, match="the run was cancelled"):
        await system.gates.decide("run-1", "b", "approve", by="ana")


async def test_a_queued_run_cancelled_closes_the_gate_it_still_waits_at(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", max_active_runs=1) as system:
        run = await system.pipelines.start(two_gates(), run_id="run-1")
        await outcome(run)
        holding = await system.pipelines.start(Pipeline("held", [Step("h", Held)]))
        with anyio.fail_after(10):
            await ENTERED.wait()
        await system.gates.decide("run-1", "a", "approve", by="ana")  # queued for a slot
        assert await run.status() == "queued"

        await run.cancel()

        assert await run.status() == "cancelled"
        assert (await system.gates.get("run-1", "b")).status == "closed"
        assert await system.gates.pending() == []
        await holding.cancel()


# --- 2. a review belongs to a whole step, not to a map item -----------------------------


async def test_a_map_item_that_asks_for_review_fails_its_step(system: roost.ActorSystem) -> None:
    pipeline = Pipeline("mapped", [Step("m", ReviewsItemTwo, map=lambda r: [1, 2, 3])])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with pytest.raises(StepFailed, match=r"step 'm'.*item 1 \(2\)") as failed:
        await outcome(run)

    assert failed.value.step == "m"
    assert (await system.pipelines.runs.get("run-1")).status == "failed"
    assert await system.gates.pending() == []


async def test_an_optional_map_step_whose_item_asks_for_review_fails_as_optional(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("mapped", [Step("m", ReviewsItemTwo, map=lambda r: [1, 2, 3],
                                        optional=True),
                                   Step("after", Echo, after="m")])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    done = await outcome(run)

    assert done.status == "completed"
    assert isinstance(done.results["m"], roost.StepFailure)
    assert "item 1 (2)" in done.results["m"].error
    assert done.results["after"] == "after:done"


def test_a_review_gate_whose_input_type_is_not_the_steps_output_is_refused() -> None:
    # An edit at the review becomes the step's result: a str would break output=int.
    with pytest.raises(roost.PipelineDefinitionError,
                       match=r"review=Gate\(input_type=str\) differs from output=int"):
        Pipeline("typed", [Step("s", ProposesText, output=int, review=Gate(input_type=str))])
    Pipeline("typed", [Step("s", ProposesText, output=int, review=Gate(input_type=int))])


# --- 3. a review's data must fit the step's output type ---------------------------------


async def test_a_review_whose_data_does_not_fit_the_output_type_fails_its_step(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("typed", [Step("s", ProposesText, output=int)])
    run = await system.pipelines.start(pipeline, run_id="run-1")

    with pytest.raises(StepFailed, match=r"step 's'.* output type int: Expected `int`, got `str`"):
        await outcome(run)

    assert (await system.pipelines.runs.get("run-1")).status == "failed"
    assert await system.gates.pending() == []


# --- 4. a started run goes on when its caller gives up ----------------------------------


async def test_a_start_cancelled_by_its_caller_still_runs_the_run_it_stored(
        system: roost.ActorSystem) -> None:
    pipeline = Pipeline("one", [Step("w", Echo)])
    await system.pipelines.register(pipeline)
    starting = asyncio.create_task(system.pipelines.start(pipeline, run_id="run-1"))
    await asyncio.sleep(0)  # it is writing the run's record

    starting.cancel()

    with pytest.raises(asyncio.CancelledError):
        await starting
    with anyio.fail_after(10):
        ended = await system.pipelines.outcome("run-1")
    assert ended.status == "completed"
    assert EXECUTED == ["w"]


async def test_a_queued_start_cancelled_by_its_caller_still_runs_when_a_slot_frees(
        tmp_path: Path) -> None:
    async with roost.ActorSystem(store=tmp_path / "store", max_active_runs=1) as system:
        holding = await system.pipelines.start(Pipeline("held", [Step("h", Held)]))
        with anyio.fail_after(10):
            await ENTERED.wait()
        pipeline = Pipeline("one", [Step("w", Echo)])
        await system.pipelines.register(pipeline)
        starting = asyncio.create_task(system.pipelines.start(pipeline, run_id="run-1"))
        await asyncio.sleep(0)  # it is writing the run's record, as queued

        starting.cancel()

        with pytest.raises(asyncio.CancelledError):
            await starting
        assert (await system.pipelines.runs.get("run-1")).status == "queued"
        await holding.cancel()
        with anyio.fail_after(10):
            ended = await system.pipelines.outcome("run-1")
        assert ended.status == "completed"
        assert EXECUTED == ["w"]


# --- 5. a decision outlives the loss of the checkpoint that named its gate --------------


async def test_a_decided_gate_is_not_opened_again_over_its_decision(tmp_path: Path) -> None:
    pipeline = Pipeline("gated", [Step("a", Echo), Step("b", Echo, after="a", gate=Gate()),
                                  Step("c", Echo, after="b")])
    store = tmp_path / "store"
    async with roost.ActorSystem(store=store) as system:
        run = await system.pipelines.start(pipeline, run_id="run-1")
        await outcome(run)  # waiting at b
        # Decided with the pipeline not registered: the run is queued, to resume later.
    async with roost.ActorSystem(store=store) as system:
        await system.gates.decide("run-1", "b", "approve", by="ana", comment="fine")
        latest = await system.pipelines.checkpoints.latest("run-1")
        assert latest is not None and latest.step == "gate:b"
        await system.store.commit([Delete("checkpoints", checkpoint_key("run-1", latest.seq))])

        await system.pipelines.register(pipeline, resume=True)
        with anyio.fail_after(10):
            ended = await system.pipelines.outcome("run-1", through_gates=True)

        assert ended.status == "completed"
        assert EXECUTED == ["a", "b", "c"]
        record = await system.gates.get("run-1", "b")
        assert (record.status, record.decision, record.by, record.comment) == (
            "decided", "approve", "ana", "fine")
        assert [event.what for event in record.history] == ["opened", "decided"]
