"""The support-email example end to end, as real processes: the job (`roost run
examples/support_email`) holds low-confidence replies at a gate, and the review (`roost run
examples/support_email/review.py`) decides them and lets the runs finish."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import msgspec
import pytest

import roost
from roost.storage import GateRecord, RunRecord

ROOT = Path(__file__).resolve().parents[2]
REVIEW = "examples/support_email/review.py"
#: What the example's simulated reviewer adds to a vague reply (review.QUESTION).
QUESTION = "Could you tell us a little more"
_PROGRESS = re.compile(r"^progress\s+(\d+)/(\d+)")


def _command(store: Path, target: str = "examples/support_email") -> list[str]:
    return [sys.executable, "-m", "roost.runtime.cli", "run", target,
            "--store", str(store), "--log-format", "json", "--log-level", "warning"]


def _environment(limit: int, concurrency: int) -> dict[str, str]:
    return dict(os.environ, SUPPORT_EMAIL_LIMIT=str(limit),
                SUPPORT_EMAIL_CONCURRENCY=str(concurrency))


def _run(store: Path, target: str = "examples/support_email", limit: int = 30,
         concurrency: int = 8) -> str:
    done = subprocess.run(_command(store, target), cwd=ROOT, env=_environment(limit, concurrency),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _count(summary: str, label: str) -> int:
    found = re.search(rf"^\s+{label}\s+(\d+)", summary, re.MULTILINE)
    assert found is not None, f"no {label!r} line in the summary:\n{summary}"
    return int(found.group(1))


def _failure_causes(summary: str) -> list[str]:
    """The `step: error type` causes listed on the summary's `failed` line."""
    found = re.search(r"^\s+failed\s+\d+\s*(.*)$", summary, re.MULTILINE)
    assert found is not None, f"no 'failed' line in the summary:\n{summary}"
    return re.findall(r"(\w+: \w+) x\d+", found.group(1))


def _outbox(store: Path) -> list[dict[str, str]]:
    outbox = store / "outbox.jsonl"
    return [json.loads(line) for line in outbox.read_text().splitlines()] if outbox.exists() else []


def _sent(store: Path) -> Counter[str]:
    """How many replies the outbox holds per email."""
    return Counter(reply["email_id"] for reply in _outbox(store))


def _stored(store: Path) -> tuple[dict[str, RunRecord], list[GateRecord]]:
    """The runs and gates the store holds (read once the example's processes have ended)."""

    async def read() -> tuple[dict[str, RunRecord], list[GateRecord]]:
        async with roost.ActorSystem(store=store, log_format="json", log_level="error") as system:
            runs = {r.run_id: r for r in await system.pipelines.list()}
            return runs, await system.gates.store.list()

    return anyio.run(read)


def _assert_every_held_reply_was_decided_once(store: Path) -> list[GateRecord]:
    """Every gate was decided once by the reviewer; approved and edited replies were sent
    once (an edited one as edited), rejected ones never; no run is left waiting."""
    runs, gates = _stored(store)
    assert gates, "the job held no reply at the gate"
    replies = {reply["email_id"]: reply for reply in _outbox(store)}
    assert sum(_sent(store).values()) == len(replies)  # none sent twice
    for gate in gates:
        run = runs[gate.run_id]
        assert (gate.status, gate.by) == ("decided", "simulated-reviewer"), gate
        assert [event.what for event in gate.history] == ["opened", "decided"]
        if gate.decision == "reject":
            assert run.status == "rejected"
            assert gate.run_id not in replies
        elif run.status == "failed":  # approved, but the address cannot receive mail
            assert run.failed_step == "send" and "550 mailbox unavailable" in (run.error or "")
            assert gate.run_id not in replies
        else:
            assert run.status == "completed"
            shown = msgspec.json.decode(gate.shown)
            expected = (msgspec.json.decode(gate.input or b"null") if gate.decision == "edit"
                        else shown["reply"])
            assert replies[gate.run_id]["body"] == expected["body"]
            assert (QUESTION in expected["body"]) == (gate.decision == "edit")
    sent_to_ungated = {email for email in replies if email not in {g.run_id for g in gates}}
    assert all(runs[email].status == "completed" for email in sent_to_ungated)
    assert not [r for r in runs.values() if r.status in ("waiting", "running", "queued")]
    return gates


def test_the_job_sends_confident_replies_and_holds_the_others_at_the_gate(tmp_path: Path) -> None:
    store = tmp_path / "store"
    summary = _run(store, limit=20)

    assert "progress    20/20  100%" in summary
    completed, waiting = _count(summary, "completed"), _count(summary, "waiting")
    assert _count(summary, "processed") == 20
    assert completed > 0 and waiting > 0
    assert completed + waiting + _count(summary, "failed") == 20
    assert _count(summary, "rejected") == 0
    assert (_count(summary, "opened"), _count(summary, "pending")) == (waiting, waiting)
    assert (_count(summary, "decided"), _count(summary, "timed out")) == (0, 0)
    sent = _sent(store)
    assert sum(sent.values()) == len(sent) == completed
    runs, gates = _stored(store)
    assert {g.run_id for g in gates} == {r for r, run in runs.items() if run.status == "waiting"}
    assert all(g.assignees == ["support"] and g.reason.startswith("confidence ") for g in gates)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["sigkill", "sigterm"])
def test_a_stopped_job_resumes_its_unfinished_runs_and_sends_no_reply_twice(
        tmp_path: Path, stop: signal.Signals) -> None:
    store = tmp_path / "store"
    environment = _environment(30, 4)
    with (tmp_path / "first.err").open("w") as errors, subprocess.Popen(
            _command(store), cwd=ROOT, env=environment, text=True,
            stdout=subprocess.PIPE, stderr=errors) as first:
        assert first.stdout is not None
        for line in first.stdout:
            progress = _PROGRESS.match(line)
            if progress and int(progress.group(1)) >= 6:
                first.send_signal(stop)
                break
        else:
            pytest.fail(f"the job ended before it was stopped: {(tmp_path / 'first.err').read_text()}")
        rest = first.stdout.read()
        first.wait(timeout=30)
    assert "summary" not in rest
    log = store / "support_email.log"
    if log.exists():  # line-buffered: a kill leaves no partial line behind
        lines = log.read_text().splitlines(keepends=True)
        assert all(line.endswith("\n") and json.loads(line) for line in lines)

    summary = _run(store, limit=30, concurrency=4)

    completed = _count(summary, "completed")
    already_finished = _count(summary, "already finished")
    assert _count(summary, "processed") == 30
    assert completed + _count(summary, "waiting") + _count(summary, "failed") == 30
    assert _count(summary, "opened") == _count(summary, "waiting") > 0
    assert 6 <= already_finished < 30
    # Only bounced replies fail: the stop failed no run, it left them to be resumed.
    assert set(_failure_causes(summary)) <= {"send: PermanentToolError"}
    assert _count(summary, "resumed") > 0
    # The runs finished before the stop ran no step again.
    assert _count(summary, "classify") <= 30 - already_finished
    sent = _sent(store)
    assert sum(sent.values()) == len(sent) == completed


def test_the_review_decides_every_held_reply_and_the_runs_finish(tmp_path: Path) -> None:
    store = tmp_path / "store"
    held = _count(_run(store), "waiting")

    summary = _run(store, REVIEW)

    assert f"{held} replies held for review" in summary
    approved, edited, rejected = (int(n) for n in re.findall(
        r"approved (\d+), edited (\d+), rejected (\d+)", summary)[0])
    assert _count(summary, "reviewed") == approved + edited + rejected == held
    assert approved > 0 and edited + rejected > 0
    assert _count(summary, "rejected") == rejected
    assert _count(summary, "completed") + _count(summary, "failed") == approved + edited
    assert (_count(summary, "waiting"), _count(summary, "pending")) == (0, 0)
    assert (_count(summary, "decided"), _count(summary, "timed out")) == (held, 0)
    gates = _assert_every_held_reply_was_decided_once(store)
    assert Counter(g.decision for g in gates) == +Counter(approve=approved, edit=edited,
                                                          reject=rejected)

    again = _run(store, REVIEW)  # nothing left to decide: it changes nothing

    assert "0 replies held for review" in again
    assert _count(again, "reviewed") == 0 and _count(again, "decided") == held
    assert sum(_sent(store).values()) == len(_sent(store))


def test_a_review_killed_midway_and_run_again_decides_each_gate_once_and_sends_no_reply_twice(
        tmp_path: Path) -> None:
    store = tmp_path / "store"
    held = _count(_run(store), "waiting")
    assert held >= 4, "too few replies held to stop the review midway"
    with (tmp_path / "review.err").open("w") as errors, subprocess.Popen(
            _command(store, REVIEW), cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=errors) as first:
        assert first.stdout is not None
        for line in first.stdout:
            progress = _PROGRESS.match(line)
            if progress and int(progress.group(1)) >= 2:
                first.send_signal(signal.SIGKILL)
                break
        else:
            pytest.fail(f"the review ended before it was killed: "
                        f"{(tmp_path / 'review.err').read_text()}")
        rest = first.stdout.read()
        first.wait(timeout=30)
    assert "support-email review" not in rest

    summary = _run(store, REVIEW)

    assert 0 < _count(summary, "reviewed") <= held - 2  # only the gates still pending
    assert (_count(summary, "decided"), _count(summary, "pending")) == (held, 0)
    assert _count(summary, "waiting") == 0
    _assert_every_held_reply_was_decided_once(store)
