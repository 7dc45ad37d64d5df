"""Whether a stored run's progress fits the pipeline registered now under its name.

A run goes on from its checkpoint under whatever definition is registered when it resumes,
in this process or a later one. A definition that gained a step at the end, changed a
condition or a dependency among steps the run has not reached, fits. One that lost or
renamed a step the run already ran, or put a new step before one it ran, does not: going on
would drop results, end the run `completed` with steps never run, or run steps out of order.
Such a run is left as it is (like a workflow whose history no longer replays, in Temporal).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from roost.errors import PipelineChanged
from roost.pipelines.definition import Pipeline

if TYPE_CHECKING:
    from roost.pipelines.run import RunProgress
    from roost.storage.gates import GateRecord


def check_fits(pipeline: Pipeline, run_id: str, progress: RunProgress,
               gates: Iterable[GateRecord]) -> None:
    """Refuse to go on with `progress` (and the run's gate records) under `pipeline`.

    Raises:
        PipelineChanged: the run holds state for a step `pipeline` does not have, or a step
            new to it comes before a step the run has settled.
    """
    reached: dict[str, str] = {}  # step -> what the run holds for it
    for names, what in ((progress.stored, "its result"), (progress.results, "its result"),
                        (progress.failures, "its failure"), (progress.skipped, "its skip"),
                        (progress.reviews, "a pending review"),
                        (progress.unknown, "a tool call of unknown outcome")):
        for name in names:
            reached.setdefault(name, what)
    for record in gates:
        reached.setdefault(record.step, f"gate {record.gate!r}")
    steps = pipeline.steps
    for name, what in reached.items():
        if name not in steps:
            raise PipelineChanged(run_id, pipeline.name, f"it holds {what} for step {name!r}, "
                                  "which the pipeline no longer has (removed or renamed)")
    for name in progress.unknown:
        if steps[name].tool is None:
            raise PipelineChanged(run_id, pipeline.name, f"it holds a tool call of unknown "
                                  f"outcome for step {name!r}, which calls no tool now")
    before: dict[str, str] = {}  # a step -> a reached step that waits for it
    for other in reached:
        for name in _upstream(pipeline, other):
            before.setdefault(name, other)
    for name in steps:
        if name not in reached and name in before:
            raise PipelineChanged(run_id, pipeline.name, f"step {name!r} is new and comes "
                                  f"before step {before[name]!r}, which the run already "
                                  "reached")


def _upstream(pipeline: Pipeline, name: str) -> set[str]:
    """Every step `name` waits for, directly or through others."""
    found: set[str] = set()
    pending = list(pipeline.needs(name))
    while pending:
        step = pending.pop()
        if step not in found:
            found.add(step)
            pending.extend(pipeline.needs(step))
    return found
