"""The summaries the example prints: the job's (run outcomes, the gates, tool resilience
counters, step latencies and tokens) and the review's (decisions, and what became of the
runs that waited at the gate).

Run and gate figures are read from the store, so they are right in a new process too,
whoever decided the gates and wherever; only the figures marked "this session" are
counted in memory.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection

import msgspec
import roost
from roost.pipelines.definition import Pipeline
from roost.pipelines.gates import TIMEOUT_DECIDER
from roost.pipelines.run import StepTiming
from roost.storage import GateRecord, RunRecord, RunStatus

from records import StepOutput

_IN_FLIGHT = (RunStatus.RUNNING, RunStatus.QUEUED)


class Session(msgspec.Struct, kw_only=True):
    """What the job did this session: runs resumed, runs it found already finished (or
    parked at the gate), its wall time."""

    resumed: int
    already_finished: int
    seconds: float


class ReviewSession(msgspec.Struct, kw_only=True):
    """What the review did this session: who decided, how, the runs it resumed, its time."""

    reviewer: str
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    resumed: int = 0
    seconds: float = 0.0


class GateCounts(msgspec.Struct, kw_only=True):
    """What became of the gates some runs opened: decided by a person (approved, edited,
    rejected), decided by their timeout, still pending, or closed (the run was cancelled)."""

    opened: int = 0
    approved: int = 0
    edited: int = 0
    rejected: int = 0
    timed_out: int = 0
    escalated: int = 0
    pending: int = 0
    closed: int = 0

    @property
    def decided(self) -> int:
        """Gates a person decided (not their timeout)."""
        return self.approved + self.edited + self.rejected


async def gate_records(system: roost.ActorSystem, pipeline: Pipeline,
                       run_ids: Collection[str] | None = None) -> list[GateRecord]:
    """The stored gates of `pipeline`'s runs (only of `run_ids`, if given)."""
    return [r for r in await system.gates.store.list()
            if r.pipeline == pipeline.name and (run_ids is None or r.run_id in run_ids)]


def count_gates(records: Collection[GateRecord]) -> GateCounts:
    """Count gate records by what became of them."""
    counts = GateCounts(opened=len(records))
    for record in records:
        counts.escalated += any(event.what == "escalated" for event in record.history)
        if record.status == "pending":
            counts.pending += 1
        elif record.status == "closed":
            counts.closed += 1
        elif record.by == TIMEOUT_DECIDER:
            counts.timed_out += 1
        elif record.decision == "approve":
            counts.approved += 1
        elif record.decision == "edit":
            counts.edited += 1
        else:
            counts.rejected += 1
    return counts


async def render(system: roost.ActorSystem, pipeline: Pipeline, run_ids: Collection[str],
                 session: Session) -> str:
    """The job's summary of the runs `run_ids` of `pipeline`, as lines of text to print."""
    records = [r for r in await system.pipelines.list() if r.run_id in run_ids]
    processed = sum(r.status not in _IN_FLIGHT for r in records)
    tokens, cost = 0, 0.0
    for record in records:
        if record.status not in _IN_FLIGHT:
            outcome = await system.pipelines.outcome(record.run_id)
            tokens += sum(r.tokens for r in outcome.results.values() if isinstance(r, StepOutput))
            cost += outcome.usage.cost
    tools = system.tools.statistics()
    breakers = ", ".join(f"{name} {state}" for name, state in system.tools.breaker_states().items())
    rate = (processed - session.already_finished) / session.seconds if session.seconds else 0.0
    lines = [
        f"support-email summary ({session.seconds:.1f} s, {rate:.1f} emails/s this session)",
        f"  processed          {processed:>6}  of {len(run_ids)} emails",
        *_status_lines(records),
        f"  resumed            {session.resumed:>6}  interrupted or decided runs continued "
        "from their last completed step",
        f"  already finished   {session.already_finished:>6}  finished or parked by an earlier "
        "session, not run again",
        f"  tokens used        {tokens:>6,}  {tokens // max(processed, 1):,} per email, "
        f"cost {cost:.4f} (at the example's price; `roost trace email-0042` shows one run)",
        *_gate_lines(count_gates(await gate_records(system, pipeline, run_ids))),
        "tools (this session)",
        f"  calls {tools.calls}, retries {tools.retries}, dedup hits {tools.dedup_hits}, "
        f"breaker trips {tools.breaker_trips}, fallbacks {tools.fallbacks}, "
        f"failures {tools.failures}",
        f"  breakers: {breakers or 'none used'}",
        "steps (this session)      runs   mean ms    p95 ms   retries",
    ]
    by_step: dict[str, list[StepTiming]] = defaultdict(list)
    for timing in system.pipelines.timings[pipeline.name]:
        by_step[timing.step].append(timing)
    for name in pipeline.order:
        timings = by_step.get(name, [])
        if timings:
            millis = sorted(1000 * t.seconds for t in timings)
            p95 = millis[math.ceil(0.95 * len(millis)) - 1]
            retries = sum(t.attempts - 1 for t in timings)
            lines.append(f"  {name:<22} {len(millis):>5} {sum(millis) / len(millis):>9.1f} "
                         f"{p95:>9.1f} {retries:>9}")
        else:
            lines.append(f"  {name:<22} {0:>5}")
    return "\n".join(lines)


async def render_review(system: roost.ActorSystem, pipeline: Pipeline,
                        session: ReviewSession) -> str:
    """The review's summary: this session's decisions, then every run of `pipeline` that
    waited at a gate and every such gate, as stored."""
    gates = await gate_records(system, pipeline)
    gated = {g.run_id for g in gates}
    records = [r for r in await system.pipelines.list() if r.run_id in gated]
    reviewed = session.approved + session.edited + session.rejected
    return "\n".join([
        f"support-email review ({session.seconds:.1f} s, by {session.reviewer})",
        f"  reviewed           {reviewed:>6}  this session: approved {session.approved}, "
        f"edited {session.edited}, rejected {session.rejected}",
        f"  resumed            {session.resumed:>6}  runs decided or interrupted before this "
        "session, finished now",
        f"runs that waited at the gate ({len(records)})",
        *_status_lines(records),
        *_gate_lines(count_gates(gates)),
    ])


def _status_lines(records: Collection[RunRecord]) -> list[str]:
    statuses = Counter(r.status for r in records)
    failures = Counter(f"{r.failed_step}: {(r.error or '').split(':')[0]}" for r in records
                       if r.status == RunStatus.FAILED)
    return [
        f"  completed          {statuses[RunStatus.COMPLETED]:>6}  reply sent",
        f"  waiting            {statuses[RunStatus.WAITING]:>6}  at the send gate: a person "
        "approves, edits or rejects the reply",
        f"  rejected           {statuses[RunStatus.REJECTED]:>6}  at the send gate: no reply sent",
        f"  failed             {statuses[RunStatus.FAILED]:>6}  "
        + ", ".join(f"{why} x{n}" for why, n in sorted(failures.items())),
    ]


def _gate_lines(counts: GateCounts) -> list[str]:
    closed = f"; {counts.closed} closed (run cancelled)" if counts.closed else ""
    return [
        "gates (low-confidence replies held before sending)",
        f"  opened             {counts.opened:>6}  for the support team",
        f"  decided            {counts.decided:>6}  by a person: approved {counts.approved}, "
        f"edited {counts.edited}, rejected {counts.rejected}",
        f"  timed out          {counts.timed_out:>6}  no decision in time: rejected, not sent "
        f"(gates escalated to the leads: {counts.escalated}){closed}",
        f"  pending            {counts.pending:>6}  "
        + ("`roost gates` lists them; review.py or `roost decide` decides them"
           if counts.pending else "none waiting for a decision"),
    ]
