"""Pipelines: a declared graph of steps, run durably by a run actor, one run per input.

The contract: a `Pipeline` is a list of `Step`s whose `after=` edges form a graph,
checked when it is built. `system.pipelines.start(pipeline, input=...)` records a
run and starts a run actor that hands each ready step to a worker pool (or calls
its tool), runs independent steps in parallel, and checkpoints every completed
step, so `resume(run_id)` continues from the last completed step after a crash.
A step that returns `NeedsReview` parks its run for a person.

Modules: `definition` (Pipeline, Step, RunStep, validation), `run` (the run
actor) and `service` (`system.pipelines`: start, resume, list, cancel).
"""

from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.pipelines.run import NeedsReview
from roost.pipelines.service import Pipelines, RunHandle, RunOutcome

__all__ = [
    "NeedsReview",
    "Pipeline",
    "Pipelines",
    "RunHandle",
    "RunOutcome",
    "RunStep",
    "Step",
    "StepFailure",
]
