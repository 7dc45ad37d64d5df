"""Support email: triage, draft and answer the bundled sample emails with a roost pipeline.

    roost run examples/support_email [--store DIR]

Each email is one run with a fixed id (`email-0042`). A reply with low confidence
is not sent: its run parks `waiting` at the gate before `send` until a person
decides (`review.py` in this folder, or `roost decide`); the job ends once every
run has finished or parked. Killing the job and running it again with
the same store resumes the interrupted runs from their last completed step (and the
runs decided since the last session), starts only the emails that have no run yet,
and sends no reply twice. Replies land in `<store>/outbox.jsonl`; while the emails
are processed, roost's log events go to `<store>/support_email.log` (in the format
and level given to `roost run`) so the progress line stays readable.

Environment:
    SUPPORT_EMAIL_LIMIT: process only the first N sample emails (default: all 240).
    SUPPORT_EMAIL_CONCURRENCY: how many runs may be in flight at once (default 8).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import roost
import structlog
from roost.storage import RunStatus

import emails
import records
import summary
from knowledge_base import KnowledgeBase
from outbox import Outbox
from pipeline import SUPPORT_EMAIL
from progress import Progress
from tools import kb_search_tool, send_email_tool


async def main(system: roost.ActorSystem) -> None:
    """Process the sample emails, showing progress, then print a summary."""
    limit = _env_int("SUPPORT_EMAIL_LIMIT", emails.COUNT)
    concurrency = _env_int("SUPPORT_EMAIL_CONCURRENCY", 8)
    store = prepare(system)
    started = time.monotonic()
    with logs_to(store / "support_email.log"):
        resumed = await system.pipelines.register(SUPPORT_EMAIL, resume=True)
        inbox = emails.generate(limit)
        known = {r.run_id: r.status for r in await system.pipelines.list()}
        run_ids = {e.email_id for e in inbox} | {h.run_id for h in resumed}
        in_flight = (RunStatus.RUNNING, RunStatus.QUEUED)
        finished = [i for i in run_ids if i in known and known[i] not in in_flight]
        progress = Progress(len(run_ids), done=len(finished),
                            failed=sum(known[i] == RunStatus.FAILED for i in finished),
                            waiting=sum(known[i] == RunStatus.WAITING for i in finished))
        slots = anyio.Semaphore(concurrency)

        async def follow(handle: roost.RunHandle) -> None:
            try:
                status = (await handle.result()).status
            except roost.StepFailed:
                status = "failed"
            finally:
                slots.release()
            progress.record(status)

        # Ctrl-C or SIGTERM cancels this; the system then stops the runs before their
        # workers, so the runs in flight stay `running` for the next session to resume.
        async with anyio.create_task_group() as group:
            for handle in resumed:
                await slots.acquire()
                group.start_soon(follow, handle)
            for email in inbox:
                if email.email_id not in known:
                    await slots.acquire()
                    group.start_soon(follow, await system.pipelines.start(
                        SUPPORT_EMAIL, email, run_id=email.email_id))
        progress.close()
        session = summary.Session(resumed=len(resumed), already_finished=len(finished),
                                  seconds=time.monotonic() - started)
        print(await summary.render(system, SUPPORT_EMAIL, run_ids, session), flush=True)


def prepare(system: roost.ActorSystem) -> Path:
    """Register the example's tools (and its model's price) with `system`; returns the store
    folder, where the outbox and the log are.

    Raises:
        ConfigurationError: the system has no store.
    """
    if system.store_path is None:
        raise roost.ConfigurationError("the support-email job needs a store; pass --store DIR")
    store = system.store_path
    # An illustrative price for the simulated model, so runs report a cost too.
    system.tracer.prices.setdefault(records.MODEL, roost.Price(input_per_million=0.5,
                                                               output_per_million=1.5))
    system.tools.register(kb_search_tool(KnowledgeBase()))
    system.tools.register(send_email_tool(Outbox(store / "outbox.jsonl")))
    return store


@contextlib.contextmanager
def logs_to(path: Path) -> Iterator[None]:
    """Write structlog's output to `path` inside the block, then go back to the previous output."""
    previous = structlog.get_config()["logger_factory"]
    # Line-buffered: a SIGKILL loses no complete line of the log.
    with path.open("a", buffering=1) as file:
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file))
        try:
            yield
        finally:
            structlog.configure(logger_factory=previous)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        number = int(value) if value else default
    except ValueError:
        number = -1
    if number < 1:
        raise roost.ConfigurationError(f"{name}={value!r} is invalid; use a whole number >= 1")
    return number
