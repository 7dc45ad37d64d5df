"""The support-email example's send gate, in process: what the gate accepts, what its timeout
does, and how the simulated reviewer decides. The example's modules are imported as `roost
run` imports them (their folder on sys.path); each system runs on a real store in tmp_path."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest

import roost

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "support_email"
#: An email the drafter cannot place (no intent, no product): its reply is always held.
VAGUE = {"email_id": "email-9000", "sender": "sam.lee@example.com", "name": "Sam Lee",
         "subject": "Hello", "body": "Hi,\n\nSomething seems off since yesterday.\n\nThanks,\nSam"}


@pytest.fixture(scope="module")
def example() -> Iterator[SimpleNamespace]:
    """The example's modules, importing each other by bare name."""
    sys.path.insert(0, str(EXAMPLE))
    try:
        yield SimpleNamespace(**{name: importlib.import_module(name) for name in (
            "app", "outbox", "pipeline", "records", "review", "summary")})
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.fixture
async def system(tmp_path: Path, example: SimpleNamespace) -> AsyncIterator[roost.ActorSystem]:
    async with roost.ActorSystem(store=tmp_path / "store", log_format="json",
                                 log_level="error") as system:
        example.app.prepare(system)
        yield system


async def _held(system: roost.ActorSystem, example: SimpleNamespace,
                pipeline: roost.Pipeline) -> roost.RunHandle:
    run = await system.pipelines.start(pipeline, example.records.Email(**VAGUE),
                                       run_id=VAGUE["email_id"])
    with anyio.fail_after(10):
        assert (await run.result()).waiting_at == ["send"]
    return run


def _sent(system: roost.ActorSystem, example: SimpleNamespace) -> list[Any]:
    assert system.store_path is not None
    return example.outbox.Outbox(system.store_path / "outbox.jsonl").read()


def _count(summary: str, label: str) -> int:
    found = re.search(rf"^\s+{label}\s+(\d+)", summary, re.MULTILINE)
    assert found is not None, f"no {label!r} line in the summary:\n{summary}"
    return int(found.group(1))


@pytest.mark.anyio
async def test_a_held_reply_nobody_decides_goes_to_the_leads_then_is_rejected_unsent(
        system: roost.ActorSystem, example: SimpleNamespace) -> None:
    pipeline = example.pipeline.support_email(review_timeout=0.2, leads_timeout=0.2)
    run = await _held(system, example, pipeline)

    with anyio.fail_after(10):
        ended = await run.result(through_gates=True)

    assert ended.status == "rejected"
    assert _sent(system, example) == []
    gate = await system.gates.get(VAGUE["email_id"], "send")
    assert [event.what for event in gate.history] == ["opened", "escalated", "timed_out"]
    assert (gate.assignees, gate.decision) == (["leads"], "reject")
    summary = await example.summary.render(system, pipeline, {VAGUE["email_id"]},
                                           example.summary.Session(resumed=0, already_finished=0,
                                                                   seconds=1.0))
    assert (_count(summary, "rejected"), _count(summary, "timed out"),
            _count(summary, "decided"), _count(summary, "pending")) == (1, 1, 0, 0)
    assert "gates escalated to the leads: 1" in summary


@pytest.mark.anyio
async def test_an_edit_must_be_a_whole_reply_and_is_sent_in_place_of_the_draft(
        system: roost.ActorSystem, example: SimpleNamespace) -> None:
    run = await _held(system, example, example.pipeline.SUPPORT_EMAIL)
    [gate] = await system.gates.pending(assignee="support")
    held = msgspec.json.decode(gate.shown, type=example.records.ForReview)

    with pytest.raises(roost.GateDecisionInvalid, match=r"email-9000.*does not fit Reply"):
        await system.gates.decide(gate.run_id, "send", "edit", input={"body": "only a body"},
                                  by="ana")
    assert await run.status() == "waiting"
    edited = msgspec.structs.replace(held.reply, body="Hi Sam, which product is it?")
    await system.gates.decide(gate.run_id, "send", "edit", input=edited, by="ana")
    with anyio.fail_after(10):
        done = await run.result(through_gates=True)

    assert done.status == "completed"
    [sent] = _sent(system, example)
    assert (sent.to, sent.subject, sent.body) == (
        "sam.lee@example.com", "Re: Hello", "Hi Sam, which product is it?")


def _for_review(example: SimpleNamespace, confidence: float,
                violations: list[str] | None = None) -> Any:
    records = example.records
    body = "Hi Sam,\n\nThanks for getting in touch.\n\nBest regards,\nKestrel Support"
    reply = records.Reply(to=VAGUE["sender"], subject="Re: Hello", body=body,
                          email_id=VAGUE["email_id"])
    return records.ForReview(email=records.Email(**VAGUE), reply=reply, confidence=confidence,
                             violations=violations or [])


def test_the_simulated_reviewer_approves_most_asks_on_vague_replies_and_rejects_the_empty_ones(
        example: SimpleNamespace) -> None:
    review = example.review.review

    assert review(_for_review(example, 0.75, ["resolution time promised"])).decision == "approve"
    assert review(_for_review(example, 0.7, ["legal action mentioned"])).decision == "reject"
    assert review(_for_review(example, 0.275)).decision == "reject"
    vague = review(_for_review(example, 0.45))
    assert vague.decision == "edit"
    assert vague.reply.body == ("Hi Sam,\n\nThanks for getting in touch.\n\n"
                                f"{example.review.QUESTION}\n\nBest regards,\nKestrel Support")
    assert (vague.reply.to, vague.reply.email_id) == (VAGUE["sender"], VAGUE["email_id"])
