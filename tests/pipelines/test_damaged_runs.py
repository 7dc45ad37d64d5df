"""Tests of roost/pipelines/service.py and run.py with damaged records: a run whose stored
state cannot be read is left as it is in the store (its records are what an operator restores
it from), named, and not resumed; the other runs go on.

Three runs of `demo` each complete step `a`, park at the gate before step `b`, and are
approved while the pipeline is not registered, so they wait `queued` in a stopped system's
store, as `roost decide` leaves them. Then the store is closed and one record of run-1 is
overwritten with bytes that are no record, as a failing disk might leave it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import lmdb
import pytest
from structlog.testing import capture_logs

import roost
from roost.errors import CheckpointCorrupt, RecordCorrupt
from roost.storage import Put

pytestmark = pytest.mark.anyio

GARBAGE = b"\xc1\xff not a record"


class Echo(roost.Actor):
    async def receive(self, message: roost.RunStep) -> Any:
        return f"{message.step}:{message.input}"


DEMO = roost.Pipeline("demo", [
    roost.Step("a", Echo),
    roost.Step("b", Echo, after="a", gate=roost.Gate(reason="check")),
])


def new_system(store: Path) -> roost.ActorSystem:
    return roost.ActorSystem(store=store, log_format=None)


async def three_approved_runs(store: Path) -> None:
    async with new_system(store) as system:
        for i in range(3):
            run = await system.pipelines.start(DEMO, f"email-{i}", run_id=f"run-{i}")
            with anyio.fail_after(10):
                assert (await run.result()).status == "waiting"
    async with new_system(store) as system:  # `demo` is not registered: approved runs queue
        for i in range(3):
            await system.gates.decide(f"run-{i}", "b", "approve", by="ops")


def damage(store: Path, db: str, prefix: bytes) -> list[bytes]:
    """Overwrite every value whose key starts with `prefix` in database `db` (of a closed
    store) with garbage; the keys damaged, in order."""
    env = lmdb.open(str(store), max_dbs=64)
    try:
        with env.begin(db=env.open_db(db.encode(), create=False), write=True) as txn:
            keys = [key for key, _ in txn.cursor() if key.startswith(prefix)]
            for key in keys:
                txn.put(key, GARBAGE)
    finally:
        env.close()
    assert keys
    return keys


async def outcomes(handles: list[roost.RunHandle]) -> dict[str, str]:
    with anyio.fail_after(10):
        return {handle.run_id: (await handle.result()).status for handle in handles}


async def test_a_damaged_run_record_is_named_and_the_other_runs_resume(tmp_path: Path) -> None:
    store = tmp_path / "store"
    await three_approved_runs(store)
    damage(store, "runs", b"run-1")

    with capture_logs() as logs:
        async with new_system(store) as system:
            resumed = await system.pipelines.register(DEMO, resume=True)
            finished = await outcomes(resumed)
            left = await system.store.get("runs", b"run-1")

    assert finished == {"run-0": "completed", "run-2": "completed"}
    [error] = resumed.damaged
    assert isinstance(error, RecordCorrupt)
    assert str(error).startswith("run record at key b'run-1' does not decode")
    assert left == GARBAGE  # left as it is, to be restored
    [logged] = [log for log in logs if log["event"] == "run_unreadable"]
    assert logged["log_level"] == "error" and logged["run_id"] == "run-1"
    assert logged["error"] == str(error)
    assert f"run `roost store check {store}`" in logged["what_to_do"]


@pytest.mark.parametrize(("db", "prefix", "kind", "named"), [
    ("checkpoints", b"run-1\x00", CheckpointCorrupt, "checkpoint of run 'run-1'"),
    ("results", b"run-1\x00a", RecordCorrupt, "step result record"),
    ("gates", b"run-1\x00b", RecordCorrupt, "gate record"),
])
async def test_a_run_with_a_damaged_record_is_left_as_it_is_and_the_other_runs_resume(
        tmp_path: Path, db: str, prefix: bytes, kind: type[Exception], named: str) -> None:
    store = tmp_path / "store"
    await three_approved_runs(store)
    latest = damage(store, db, prefix)[-1]

    with capture_logs() as logs:
        async with new_system(store) as system:
            resumed = await system.pipelines.register(DEMO, resume=True)
            finished = await outcomes(resumed)
            record = await system.pipelines.runs.get("run-1")
            left = await system.store.get(db, latest)
            assert system.pipelines.statistics()["active"] == 0

    assert finished == {"run-0": "completed", "run-2": "completed"}
    [error] = resumed.damaged
    assert isinstance(error, kind)
    assert str(error).startswith(named) and f"{latest!r}" in str(error)  # its database and key
    assert (record.status, record.error, record.failed_step) == ("queued", None, None)
    assert left == GARBAGE
    [logged] = [log for log in logs if log["event"] == "run_unreadable"]
    assert (logged["log_level"], logged["run_id"]) == ("error", "run-1")


async def test_a_damaged_record_found_as_a_decision_resumes_the_run_leaves_it_as_it_is(
        tmp_path: Path) -> None:
    async with new_system(tmp_path / "store") as system:
        run = await system.pipelines.start(DEMO, "email", run_id="run-1")
        with anyio.fail_after(10):
            assert (await run.result()).status == "waiting"
        await system.store.commit([Put("results", b"run-1\x00a", GARBAGE)])

        await system.gates.decide("run-1", "b", "approve", by="ops")  # resumes it here

        with anyio.fail_after(10), pytest.raises(RecordCorrupt) as refused:
            await run.result(through_gates=True)
        with pytest.raises(RecordCorrupt):  # asked again, once the run stopped
            await run.result()
        record = await system.pipelines.runs.get("run-1")
        assert system.pipelines.statistics()["active"] == 0
        assert await system.store.get("results", b"run-1\x00a") == GARBAGE

    assert str(refused.value).startswith(r"step result record at key b'run-1\x00a' does not "
                                         "decode")
    assert (record.status, record.error) == ("running", None)  # as the decision stored it


async def test_a_waiting_run_whose_gate_record_is_damaged_can_still_be_cancelled(
        tmp_path: Path) -> None:
    async with new_system(tmp_path / "store") as system:
        run = await system.pipelines.start(DEMO, "email", run_id="run-1")
        with anyio.fail_after(10):
            assert (await run.result()).status == "waiting"
        await system.store.commit([Put("gates", b"run-1\x00b", GARBAGE)])

        with capture_logs() as logs:
            await run.cancel()

        assert (await system.pipelines.runs.get("run-1")).status == "cancelled"
        assert await system.store.get("gates", b"run-1\x00b") == GARBAGE  # left for an operator
    assert [event["run_id"] for event in logs if event["event"] == "gate_unreadable"] == ["run-1"]
