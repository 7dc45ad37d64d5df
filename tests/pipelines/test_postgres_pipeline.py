"""A pipeline on the PostgreSQL store, end to end: step checkpoints, a gate decided from "another
process" (a new system on the same database), the tool ledger, run records and traces.

The server is the session's private one (tests/_postgres.py); each test has a schema of its own.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

import roost
from roost import Gate, Pipeline, RunStep, Step
from roost.storage import CheckpointStore, Ledger
from roost.tools.keys import derive_key, step_unit

pytestmark = pytest.mark.anyio

SENT: list[dict[str, Any]] = []


class Draft(msgspec.Struct):
    text: str
    confidence: float


class Drafter(roost.Actor):
    async def receive(self, message: RunStep) -> Draft:
        return Draft(f"reply to {message.input}", 0.5 if "angry" in message.input else 0.95)


@roost.tool
async def send_email(to: str, body: str) -> str:
    SENT.append({"to": to, "body": body})
    return f"sent to {to}"


def support() -> Pipeline:
    return Pipeline("support", [
        Step("draft", Drafter, output=Draft),
        Step("send", tool="send_email", after="draft",
             args=lambda r, email: {"to": "customer@example.org", "body": r["draft"].text},
             gate=Gate(when=lambda r: r["draft"].confidence < 0.8, reason="low confidence",
                       assignees=["support"])),
    ], input_type=str)


def new_system(url: str) -> roost.ActorSystem:
    system = roost.ActorSystem(store=url, log_format="json", log_level="warning")
    system.tools.register(send_email)
    return system


@pytest.fixture(autouse=True)
def clear_sent() -> None:
    SENT.clear()


async def outcome(handle: roost.RunHandle) -> roost.RunOutcome:
    with anyio.fail_after(10):
        return await handle.result()


async def test_a_gated_pipeline_runs_across_two_systems_on_one_postgres_store(
        postgres_url: str) -> None:
    pipeline = support()
    async with new_system(postgres_url) as system:
        happy = await outcome(await system.pipelines.start(pipeline, "happy customer",
                                                           run_id="run-happy"))
        parked = await outcome(await system.pipelines.start(pipeline, "angry customer",
                                                            run_id="run-1"))
        assert (happy.status, parked.status, parked.waiting_at) \
            == ("completed", "waiting", ["send"])

    async with new_system(postgres_url) as system:  # another process, the same database
        [pending] = await system.gates.pending()
        assert (pending.run_id, pending.gate) == ("run-1", "send")
        await system.gates.decide("run-1", "send", "approve", by="ana")
        resumed = await system.pipelines.register(support(), resume=True)
        # The node's own claim loop, woken by the decision, may take the run first.
        assert [handle.run_id for handle in resumed] in (["run-1"], [])
        done = await outcome(roost.RunHandle(system.pipelines, "run-1"))

        assert done.status == "completed"
        assert done.results["send"] == "sent to customer@example.org"
        assert SENT == [{"to": "customer@example.org", "body": "reply to happy customer"},
                        {"to": "customer@example.org", "body": "reply to angry customer"}]
        record = await system.pipelines.runs.get("run-1")
        assert (record.status, record.last_step) == ("completed", "send")
        assert await CheckpointStore(system.store).latest("run-1") is not None
        entry = await Ledger(system.store).get(
            "send_email", derive_key("send_email", step_unit("run-1", "send"), 0))
        assert entry is not None and entry.status == "completed"
        trace = await system.traces.get("run-happy")
        assert {"draft", "send"} <= {span.attributes.get("step") for span in trace.spans}
        page = await system.traces.search(pipeline="support")
        assert {"run-happy", "run-1"} <= {run for t in page.traces for run in t.run_ids}
