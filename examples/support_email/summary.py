"""The end-of-job summary: run outcomes, tool resilience counters, step latencies and tokens."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection

import msgspec
import roost
from roost.pipelines.definition import Pipeline
from roost.pipelines.run import StepTiming
from roost.storage import RunStatus

from records import StepOutput


class Session(msgspec.Struct, kw_only=True):
    """What this process did: runs resumed, runs it found already finished, its wall time."""

    resumed: int
    already_finished: int
    seconds: float


async def render(system: roost.ActorSystem, pipeline: Pipeline, run_ids: Collection[str],
                 session: Session) -> str:
    """The summary of the runs `run_ids` of `pipeline`, as lines of text to print."""
    records = [r for r in await system.pipelines.list() if r.run_id in run_ids]
    statuses = Counter(r.status for r in records)
    waiting = (RunStatus.RUNNING, RunStatus.QUEUED)
    processed = sum(n for status, n in statuses.items() if status not in waiting)
    failures = Counter(f"{r.failed_step}: {(r.error or '').split(':')[0]}" for r in records
                       if r.status == RunStatus.FAILED)
    tokens, cost = 0, 0.0
    for record in records:
        if record.status not in waiting:
            outcome = await system.pipelines.outcome(record.run_id)
            tokens += sum(r.tokens for r in outcome.results.values() if isinstance(r, StepOutput))
            cost += outcome.usage.cost
    tools = system.tools.statistics()
    breakers = ", ".join(f"{name} {state}" for name, state in system.tools.breaker_states().items())
    rate = (processed - session.already_finished) / session.seconds if session.seconds else 0.0
    lines = [
        f"support-email summary ({session.seconds:.1f} s, {rate:.1f} emails/s this session)",
        f"  processed          {processed:>6}  of {len(run_ids)} emails",
        f"  completed          {statuses[RunStatus.COMPLETED]:>6}  reply sent",
        f"  routed to a person {statuses[RunStatus.NEEDS_REVIEW]:>6}  needs_review, draft kept",
        f"  failed             {statuses[RunStatus.FAILED]:>6}  "
        + ", ".join(f"{why} x{n}" for why, n in sorted(failures.items())),
        f"  resumed            {session.resumed:>6}  interrupted runs continued from their "
        "last completed step",
        f"  already finished   {session.already_finished:>6}  finished by an earlier session, "
        "not run again",
        f"  tokens used        {tokens:>6,}  {tokens // max(processed, 1):,} per email, "
        f"cost {cost:.4f} (at the example's price; `roost trace email-0042` shows one run)",
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
