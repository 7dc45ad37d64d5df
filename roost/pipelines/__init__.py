"""Pipelines: a declared graph of steps, run durably by a run actor, one run per input.

The contract: a `Pipeline` is a list of `Step`s whose `after=` edges form a graph,
checked when it is built. `system.pipelines.start(pipeline, input=...)` records a
run and starts a run actor that hands each ready step to a worker pool (or calls
its tool), runs independent steps in parallel, and checkpoints every completed
step, so `resume(run_id)` continues from the last completed step after a crash.
A step's `Gate` (or a step returning `NeedsReview`) parks its run, holding nothing,
until a person decides through `system.gates`; the run then resumes from the gate.

Modules: `definition` (Pipeline, Step, RunStep, validation), `run` (the run
actor), `service` (`system.pipelines`: start, resume, list, cancel), `admission`
(the bound on runs in flight), `gate` (Gate, Escalate, GateDecision) and `gates`
(`system.gates`: decide, pending, notifications, the deadline timer), `remote` (a
step run in a pool on another node of a cluster).
"""

from roost.pipelines.definition import NeedsReview, Pipeline, RunStep, Step, StepFailure
from roost.pipelines.gate import Escalate, Gate, GateDecision
from roost.pipelines.gates import Gates
from roost.pipelines.notify import GateNotification, SignatureInvalid, Webhook, verify_signature
from roost.pipelines.service import Pipelines, RunHandle, RunOutcome

__all__ = [
    "Escalate",
    "Gate",
    "GateDecision",
    "GateNotification",
    "Gates",
    "NeedsReview",
    "Pipeline",
    "Pipelines",
    "RunHandle",
    "RunOutcome",
    "RunStep",
    "SignatureInvalid",
    "Step",
    "StepFailure",
    "Webhook",
    "verify_signature",
]
