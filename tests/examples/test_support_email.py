"""The support-email example end to end: `roost run examples/support_email` as a real process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_PROGRESS = re.compile(r"^progress\s+(\d+)/(\d+)")


def _command(store: Path) -> list[str]:
    return [sys.executable, "-m", "roost.runtime.cli", "run", "examples/support_email",
            "--store", str(store), "--log-format", "json", "--log-level", "warning"]


def _environment(limit: int, concurrency: int) -> dict[str, str]:
    return dict(os.environ, SUPPORT_EMAIL_LIMIT=str(limit),
                SUPPORT_EMAIL_CONCURRENCY=str(concurrency))


def _count(summary: str, label: str) -> int:
    found = re.search(rf"^\s+{label}\s+(\d+)", summary, re.MULTILINE)
    assert found is not None, f"no {label!r} line in the summary:\n{summary}"
    return int(found.group(1))


def _failure_causes(summary: str) -> list[str]:
    """The `step: error type` causes listed on the summary's `failed` line."""
    found = re.search(r"^\s+failed\s+\d+\s*(.*)$", summary, re.MULTILINE)
    assert found is not None, f"no 'failed' line in the summary:\n{summary}"
    return re.findall(r"(\w+: \w+) x\d+", found.group(1))


def _sent(store: Path) -> Counter[str]:
    """How many replies the outbox holds per email."""
    outbox = store / "outbox.jsonl"
    lines = outbox.read_text().splitlines() if outbox.exists() else []
    return Counter(json.loads(line)["email_id"] for line in lines)


def test_the_job_answers_a_subset_of_emails_and_prints_a_summary(tmp_path: Path) -> None:
    store = tmp_path / "store"
    done = subprocess.run(_command(store), cwd=ROOT, env=_environment(20, 8),
                          capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert "progress    20/20  100%" in done.stdout
    completed = _count(done.stdout, "completed")
    to_a_person = _count(done.stdout, "routed to a person")
    assert _count(done.stdout, "processed") == 20
    assert completed > 0 and to_a_person > 0
    assert completed + to_a_person + _count(done.stdout, "failed") == 20
    sent = _sent(store)
    assert sum(sent.values()) == len(sent) == completed


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

    second = subprocess.run(_command(store), cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=60)

    assert second.returncode == 0, second.stderr
    summary = second.stdout
    completed = _count(summary, "completed")
    already_finished = _count(summary, "already finished")
    assert _count(summary, "processed") == 30
    assert completed + _count(summary, "routed to a person") + _count(summary, "failed") == 30
    assert 6 <= already_finished < 30
    # Only bounced replies fail: the stop failed no run, it left them to be resumed.
    assert set(_failure_causes(summary)) <= {"send: PermanentToolError"}
    assert _count(summary, "resumed") > 0
    # The runs finished before the stop ran no step again.
    assert _count(summary, "classify") <= 30 - already_finished
    sent = _sent(store)
    assert sum(sent.values()) == len(sent) == completed
