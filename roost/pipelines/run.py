"""`RunActor`: the supervisor of one pipeline run; routes steps to workers and aggregates.

It never does a step's work. It starts every ready step as a task it owns
(asking the step's worker pool, or calling its tool), and handles each
outcome as a message to itself, so its bookkeeping is serialized. After each
completed step it saves a checkpoint (the results so far); when it starts, it
resumes from the latest checkpoint, so a restart or a new process goes on from
the last completed step and never runs a completed step again. A run resumed as
a person decides at its gate is loaded while the decision is written, and starts
no step before the decision is durable.

With tracing on it records the run as spans, in the run's own trace (derived from
the run, and kept in its checkpoints, so a resume continues it): a `run` span per
actor instance (a resumed one has a `resumed` event naming the checkpoint it went
on from, and each checkpoint saved is an event), a `step` span per step with its
input, output and outcome, and a `step_attempt` span per attempt. A worker's
handling of the request, and the tool calls it makes, are children of the attempt:
the request carries the attempt's span id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from roost._logging import get_logger
from roost.actors.actor import Actor, Message
from roost.actors.pool import abandon_routed
from roost.errors import (
    AskTimeout,
    CheckpointCorrupt,
    GateDecisionInvalid,
    PipelineChanged,
    RecordCorrupt,
    RemoteStepFailed,
    RoostError,
    StepFailed,
    StoreError,
    ToolCallNotFound,
    ToolOutcomeUnknown,
    ToolResultUnrecordable,
)
from roost.pipelines import remote
from roost.pipelines._compat import check_fits
from roost.pipelines.definition import NeedsReview, Pipeline, RunStep, Step, StepFailure
from roost.pipelines.gate import Gate, GateDecision
from roost.storage import (
    Checkpoint,
    GateRecord,
    Op,
    RunRecord,
    RunStatus,
    StepResults,
    Store,
    checkpoint_key,
)
from roost.storage.gates import PENDING
from roost.storage.results import result_key
from roost.tools.keys import derive_key, step_unit
from roost.tools.retry import Retry, call_with_retry
from roost.tools.spec import gate_passed, type_name
from roost.trace import TraceContext, call_trace, handling, new_span_id, new_trace_id
from roost.tracing.spans import SpanEvent, SpanKind
from roost.tracing.tracer import OpenSpan, Tracer, UsageTotals, usage_of

if TYPE_CHECKING:
    from roost.pipelines.service import Pipelines

_log = get_logger("roost")
_ENCODER = msgspec.msgpack.Encoder()


class RunProgress(msgspec.Struct, frozen=True, tag="run_progress"):
    """A run's checkpoint: what it has done so far.

    Attributes:
        results: completed steps' encoded results carried in the checkpoint itself (only
            in checkpoints of roost before `stored`; decoded with `Step.output`).
        failures: optional steps that failed, with their error (read back as `StepFailure`).
        reviews: steps that asked for a person and wait for the decision, with the reason.
        skipped: steps skipped by their condition (or rejected at a gate).
        trace_id: the run's trace.
        usage: the tokens and cost recorded so far (with tracing on), over every resume.
        review_data: the data each waiting review proposes as its step's result.
        unknown: tool steps whose call's outcome is unknown, waiting at `<step>/outcome`.
        gates: the gates the run has opened, in order (their records hold the decisions).
        stored: completed steps whose results are in the store's `results` database
            (`StepResults`), each written once, with the checkpoint of its step.
    """

    results: dict[str, msgspec.Raw]
    failures: dict[str, str]
    reviews: dict[str, str]
    skipped: list[str]
    trace_id: str
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    review_data: dict[str, msgspec.Raw] = {}
    unknown: list[str] = []
    gates: list[str] = []
    stored: list[str] = []


async def encoded_results(store: Store, progress: RunProgress, run_id: str,
                          checkpoint: bytes) -> dict[str, msgspec.Raw]:
    """Every completed step's encoded result for `progress` (the state of the checkpoint
    stored under key `checkpoint`): those it carries, and those it names in `stored`,
    read from the store.

    Raises:
        CheckpointCorrupt: a result the checkpoint names is not in the store.
    """
    results = dict(progress.results)
    if progress.stored:
        stored = await StepResults(store).read(run_id)
        for name in progress.stored:
            if name not in stored:
                raise CheckpointCorrupt(run_id, name, checkpoint, "it names a result that is "
                                        f"missing from the store's results (key "
                                        f"{result_key(run_id, name)!r})")
            results[name] = stored[name]
    return results


def decode_progress(progress: RunProgress, pipeline: Pipeline | None,
                    decoder: Callable[[Any], msgspec.msgpack.Decoder[Any]], *,
                    encoded: dict[str, msgspec.Raw], run_id: str,
                    checkpoint: bytes | None) -> dict[str, Any]:
    """The results of a run (`encoded`, see `encoded_results`), each decoded to its step's
    declared type, with the failures `progress` holds.

    Args:
        checkpoint: the key of the checkpoint `progress` comes from, or None when `encoded`
            is the copy of the results the run's record keeps (its checkpoints pruned).

    Raises:
        RecordCorrupt, CheckpointCorrupt: a step's result does not decode (damaged bytes),
            naming the record that holds it: the step's record in `results`, the
            checkpoint (an older roost's checkpoints carry results), or the run's record.
        PipelineChanged: a step's result is well-formed but does not fit the step's
            `output` type (it changed).
    """
    results: dict[str, Any] = {}
    for name, raw in encoded.items():
        step = None if pipeline is None else pipeline.steps.get(name)
        output = Any if step is None else step.output
        try:
            results[name] = decoder(output).decode(raw)
        except msgspec.DecodeError as error:
            reason = (f"step {name!r}'s result does not decode as "
                      f"{getattr(output, '__name__', output)}: {error}")
            if pipeline is not None and isinstance(error, msgspec.ValidationError):
                # Well-formed, of another shape: its `output` type changed.
                raise PipelineChanged(run_id, pipeline.name, f"step {name!r}'s stored result "
                                      "does not fit its output type "
                                      f"{getattr(output, '__name__', output)}: {error}"
                                      ) from error
            if checkpoint is None:
                raise RecordCorrupt("run", run_id.encode(), reason) from error
            if name in progress.results:
                raise CheckpointCorrupt(run_id, name, checkpoint, reason) from error
            raise RecordCorrupt("step result", result_key(run_id, name), reason) from error
    results.update((name, StepFailure(error)) for name, error in progress.failures.items())
    return results


class StepTiming(msgspec.Struct, frozen=True, gc=False):
    """How long one step of one run took and how many attempts it needed, for summaries."""

    step: str
    seconds: float
    attempts: int


class _StepDone(Message, frozen=True):
    instance: int  # which RunActor instance started the step (a restart starts over)
    step: str
    result: Any = None
    error: str | None = None
    seconds: float = 0.0
    attempts: int = 1
    unknown: bool = False  # a tool step's call ended in ToolOutcomeUnknown (`error` says why)


class CancelRun(Message, frozen=True):
    """Cancel the run: running steps are cancelled and the run ends `cancelled`."""


class _Settle(Message, frozen=True):
    """Nothing runs any more: park at the gates to open, or end the run with `status`."""

    instance: int
    status: str | None = None
    error: str | None = None
    step: str | None = None


class _Paused(Message, frozen=True):
    """A step could not go on because the store cannot write for the run (on a cluster's
    node: the lease was lost, or the server is unreachable): the run stops here."""

    instance: int
    error: Any


_PROGRESS_DECODER = msgspec.msgpack.Decoder(RunProgress)


def _step_scope(name: str, index: int | None, *, fallback: bool) -> str:
    """What a step's request does within its run (`TraceContext.step`): `name`, `name/3`
    for item 3 of a map step, `name/fallback` for its fallback. Step names hold no '/'."""
    if fallback:
        return f"{name}/fallback"
    return name if index is None else f"{name}/{index}"


def run_trace_id(run_id: str, created_at: float) -> str:
    """The trace id of a run that has no checkpoint yet: derived from the run, so that a run
    resumed before its first checkpoint still continues the trace it began.

    Like `new_trace_id`, it starts with the run's creation time in ms (12 hex digits),
    then 20 hex digits of a hash of the run: its spans are appended to the trace
    store's B-tree instead of landing all over it.
    """
    seed = f"{run_id}\0{created_at!r}".encode()
    millis = max(0, int(created_at * 1000)) & 0xFFFF_FFFF_FFFF
    return f"{millis:012x}{hashlib.blake2b(seed, digest_size=10).hexdigest()}"


def load_progress(checkpoint: Checkpoint) -> RunProgress:
    """The `RunProgress` a run's checkpoint holds.

    Raises:
        CheckpointCorrupt: the checkpoint's state is not a run's progress.
    """
    try:
        return _PROGRESS_DECODER.decode(checkpoint.state)
    except msgspec.DecodeError as error:
        raise CheckpointCorrupt(
            checkpoint.run_id, checkpoint.step, checkpoint_key(checkpoint.run_id, checkpoint.seq),
            f"its state is not a run's progress: {error}") from error


class StoredRun(msgspec.Struct, frozen=True):
    """What a run goes on from, read from the store and decoded (see `read_run`): its
    record, its input, its latest checkpoint (None before the first) with the progress
    and the results it holds, and the records of the gates it opened."""

    record: RunRecord
    input: Any
    checkpoint: Checkpoint | None = None
    progress: RunProgress | None = None
    encoded: dict[str, msgspec.Raw] = {}
    results: dict[str, Any] = {}
    gates: dict[str, GateRecord] = {}


async def read_run(pipelines: Pipelines, pipeline: Pipeline, record: RunRecord) -> StoredRun:
    """Read and decode everything run `record` goes on from.

    Raises:
        RecordCorrupt, CheckpointCorrupt: a record of the run cannot be read (it does not
            decode, or a result its checkpoint names is missing); the error names it.
        PipelineChanged: `pipeline` does not fit what the run did (see `check_fits`), or
            a stored input or result no longer fits its type.
    """
    run_id = record.run_id
    input = pipelines.decode_input(pipeline, run_id, record.input)
    latest = await pipelines.checkpoints.latest(run_id)
    if latest is None:
        return StoredRun(record, input)
    progress = load_progress(latest)
    key = checkpoint_key(run_id, latest.seq)
    encoded = await encoded_results(pipelines.system.store, progress, run_id, key)
    results = decode_progress(progress, pipeline, pipelines.decoder, encoded=encoded,
                              run_id=run_id, checkpoint=key)
    gates = {r.gate: r for r in await pipelines.gates.store.named(run_id, progress.gates)}
    check_fits(pipeline, run_id, progress, gates.values())
    return StoredRun(record, input, latest, progress, encoded, results, gates)


class RunActor(Actor):
    """Runs one pipeline run to its end, from its latest checkpoint."""

    def __init__(self, pipelines: Pipelines, pipeline: Pipeline, run_id: str) -> None:
        self.pipelines = pipelines
        self.pipeline = pipeline
        self.run_id = run_id
        self.input: Any = None
        self.results: dict[str, Any] = {}
        self.encoded: dict[str, msgspec.Raw] = {}
        self.unsaved: set[str] = set()  # results not yet in the store's `results`
        self.failures: dict[str, str] = {}
        self.reviews: dict[str, str] = {}
        self.review_data: dict[str, msgspec.Raw] = {}
        self.unknown: list[str] = []  # tool steps waiting at their outcome gate
        self.gates: list[str] = []  # the gates opened so far
        self.gate_records: dict[str, GateRecord] = {}  # as stored when this instance started
        self.decisions: dict[str, GateDecision] = {}
        self.to_open: dict[str, str] = {}  # gate name -> its step: opened once nothing runs
        self.opening: dict[str, Gate] = {}  # step -> the gate to open before it (see _pass_gate)
        self.outcome_errors: dict[str, ToolOutcomeUnknown] = {}
        self.skipped: list[str] = []
        self.running: dict[str, asyncio.Task[None]] = {}
        self.trace_id = new_trace_id()
        self.finished = False
        self.tracer: Tracer = pipelines.system.tracer
        self.span: OpenSpan | None = None  # this instance's `run` span, while it is open
        self.step_spans: dict[str, OpenSpan] = {}  # the steps under way (and just settled)
        self.usage_before = UsageTotals()  # the usage the checkpoint holds (earlier instances)
        self.resumed_from: Checkpoint | None = None

    async def on_start(self) -> None:
        try:
            record = await self._load()
        except StoreError as error:
            await self._cannot_read(error)
            return
        except Exception as error:  # the same stored state fails the same way: no restart
            await self._cannot_go_on(error)
            return
        deciding = self.pipelines.deciding(self.run_id)
        if deciding is not None:
            # Resumed as a person decides, while the decision is being written: the run was
            # loaded meanwhile, and goes on from the run and its gates as stored once the
            # decision is durable (a step must never start on a decision a crash could lose),
            # or as they are if it was refused.
            with contextlib.suppress(Exception):  # the decider hears why
                await asyncio.shield(deciding)
            self.pipelines.decision_seen(self.run_id)
            try:
                record = await self.pipelines.runs.get(self.run_id)
                await self._load_gates()
            except StoreError as error:
                await self._cannot_read(error)
                return
            except Exception as error:
                await self._cannot_go_on(error)
                return
        try:
            await self._begin(record)
        except Exception as error:  # applying what is stored failed: it would fail again
            await self._cannot_go_on(error)

    async def _begin(self, record: RunRecord) -> None:
        """Go on from the run as `record` says it is stored."""
        if record.status == RunStatus.QUEUED:  # admitted from the queue: it starts now
            # Not durable: if a crash loses this, the run is found queued and admitted again.
            try:
                await self.pipelines.runs.update(self.run_id, status=RunStatus.RUNNING,
                                                 durable=False)
            except StoreError as error:
                await self._pause(error)
                return
        elif record.status != RunStatus.RUNNING:
            # It ended before this actor started (e.g. a restart after its last write), or
            # still waits at its gates (the decision that was to resume it was refused):
            # report that again, run nothing.
            _log.info("run_not_resumed", run_id=self.run_id, trace_id=self.trace_id,
                      status=str(record.status))
            if record.status == RunStatus.WAITING:
                self.to_open = {r.gate: r.step for r in self.gate_records.values()
                                if r.status == PENDING}
            await self._ended(str(record.status), record.error, record.failed_step)
            return
        self._open_span()
        await self._go_on()

    async def _go_on(self) -> None:
        """Apply the decisions made since the run parked, then start what is ready."""
        try:
            ended = await self._apply_decisions()
        except PipelineChanged as error:
            await self._cannot_go_on(error)
            return
        except RoostError as error:  # a stored decision that cannot be applied
            await self._finish("failed", error=str(error))
            return
        if not ended:
            self._advance()

    async def _load(self) -> RunRecord:
        """Load the input and, for a resumed run, what its latest checkpoint and gate
        records hold (it goes on from there): as `resume` read them just now, else from
        the store.

        Returns:
            The run's record, as stored when this actor started.

        Raises:
            StoreError: a record of the run cannot be read (see `read_run`).
        """
        created = self.pipelines.just_created(self.run_id)
        if created is not None:
            record, self.input = created
            self.trace_id = run_trace_id(self.run_id, record.created_at)
            return record
        record = await self.pipelines.runs.get(self.run_id)
        stored = self.pipelines.just_read(self.run_id, record)
        if stored is None:
            stored = await read_run(self.pipelines, self.pipeline, record)
        self.input = stored.input
        self.trace_id = run_trace_id(self.run_id, record.created_at)
        progress = stored.progress
        if progress is not None:
            self.resumed_from = stored.checkpoint
            self.trace_id = progress.trace_id or self.trace_id
            self.usage_before = progress.usage
            self.skipped = list(progress.skipped)
            self.encoded = stored.encoded
            self.unsaved = set(progress.results)  # carried by an older checkpoint: move them
            self.failures = dict(progress.failures)
            self.reviews = dict(progress.reviews)
            self.review_data = dict(progress.review_data)
            self.unknown = list(progress.unknown)
            self.gates = list(progress.gates)
            self.results = stored.results
            _log.info("run_resumed", run_id=self.run_id, trace_id=self.trace_id, pipeline=self.pipeline.name,
                      completed=sorted(self.results))
        self._adopt_gates(stored.gates)
        return record

    async def _load_gates(self) -> None:
        """Read the records of the gates the run has opened again, with their decisions."""
        if self.gates:
            records = await self.pipelines.gates.store.named(self.run_id, self.gates)
            self._adopt_gates({r.gate: r for r in records})

    def _adopt_gates(self, records: dict[str, GateRecord]) -> None:
        """Go on from these gate records, and the decisions they hold.

        Raises:
            PipelineChanged: a decision's input does not fit its gate's type now.
        """
        gates = self.pipelines.gates
        self.gate_records = records
        try:
            self.decisions = {name: gates.decision_of(self.pipeline, r)
                              for name, r in records.items() if r.decision is not None}
        except GateDecisionInvalid as error:
            raise PipelineChanged(self.run_id, self.pipeline.name, str(error)) from error

    async def _cannot_read(self, error: StoreError) -> None:
        """The run's stored state could not be read. On a cluster's node, a failure of the
        server pauses the run (see `_pause`). Otherwise a record of the run is damaged:
        restarting cannot mend stored bytes, and failing the run would write over the
        state an operator restores it from: see `_cannot_go_on`."""
        if self._store_failure(error) is not None:
            await self._pause(error)
            return
        await self._cannot_go_on(error)

    async def _cannot_go_on(self, error: Exception) -> None:
        """The run cannot go on from what is stored (a damaged record, a pipeline that
        changed in a way its progress does not fit, or loading it raised): stop without
        writing anything, so the run stays stored as it was, and is not resumed;
        restarting would fail the same way."""
        self.finished = True
        for task in self.running.values():
            task.cancel()
        self._close_span("unreadable" if isinstance(error, StoreError) else "unresumable",
                         error=error)
        self.pipelines.unreadable(self.run_id, error)
        await self.ctx.stop()

    async def on_stop(self) -> None:
        for task in self.running.values():
            task.cancel()
        if self.running:
            await asyncio.wait(self.running.values(), timeout=self.shutdown_timeout)
        self._close_span("interrupted")  # stopped (or restarted) before the run ended

    async def receive(self, message: Any) -> Any:
        match message:
            case _StepDone():
                await self._step_done(message)
            case _Settle():
                await self._settle(message)
            case _Paused():
                if message.instance == id(self) and not self.finished:
                    await self._pause(message.error)
            case CancelRun():
                await self._finish("cancelled", error="cancelled")
        return None

    # --- scheduling -------------------------------------------------------------------

    def _advance(self) -> None:
        """Start every ready step, skip the ones whose condition fails, or finish."""
        if self.finished:
            return
        pipeline = self.pipeline
        steps = pipeline.steps
        settled = set(self.results) | set(self.skipped)
        waiting = set(self.to_open.values())
        for name in pipeline.order:
            if name in settled or name in self.running or name in waiting:
                continue
            step = steps[name]
            if not all(dep in settled for dep in pipeline.needs(name)):
                continue
            if name in self.reviews or name in self.unknown:  # waits at its review/outcome
                self.to_open[f"{name}/review" if name in self.reviews else f"{name}/outcome"] = name
                continue
            source = pipeline.reject_targets.get(name)
            if source is not None:
                decision = self.decisions.get(source[1])
                if decision is None or decision.decision != "reject":
                    self._skip(name, f"gate {source[1]!r} did not reject", settled)
                    continue
            elif step.after and all(dep in self.skipped for dep in step.after):
                self._skip(name, "every step it comes after was skipped", settled)
                continue
            if step.when is not None:
                try:
                    wanted = step.when(self.results)
                except Exception as error:
                    span = self._step_span(step)
                    if span is not None:
                        span.fail(error)
                        span.attributes["step.outcome"] = "failed"
                    self._fail_soon(name, f"its condition raised {type(error).__name__}: {error}")
                    return
                if not wanted:
                    self._skip(name, "its condition is false", settled)
                    continue
            passage = self._pass_gate(step, settled)
            if passage == "stop":
                return  # the run ends (said so in a message to itself)
            if passage == "wait":
                continue
            self._step_span(step)
            self.running[name] = asyncio.get_running_loop().create_task(self._run_step(step))
        if not self.running and (self.to_open or settled >= steps.keys()):
            # Park, or finish, in receive, where state changes are serialized.
            self.ctx.self_ref.tell(_Settle(instance=id(self)))

    def _tool_gate(self, step: Step) -> Gate | None:
        """The gate of `step`'s tool (`@tool(gate=...)`), if it is a tool step and has one."""
        if step.tool is None:
            return None
        registry = self.ctx.system.tools.registry
        if step.tool not in registry.names():
            return None  # the call will fail with UnknownTool
        gate = registry.get(step.tool).gate
        return gate if isinstance(gate, Gate) else None

    def _gate_to_open(self, step: Step) -> Gate | None:
        """The gate to open before `step`: its own if that one's `when` holds, else its
        tool's if that one's holds (a tool's gate guards every pipeline call of the tool);
        None when neither opens. Raises what a `when` raises."""
        for gate in (step.gate, self._tool_gate(step)):
            if gate is not None and (gate.when is None or bool(gate.when(self.results))):
                return gate
        return None

    def _decided_gate(self, step: Step) -> Gate | None:
        """The gate that opened before `step` and was decided: its tool's when the gate's
        record names the tool (see `_gate_record`), else the step's own."""
        record = self.gate_records.get(step.name)
        if step.gate is None or (record is not None and record.tool is not None):
            return self._tool_gate(step)
        return step.gate

    def _pass_gate(self, step: Step, settled: set[str]) -> str:
        """"run" when `step` may start: no gate opens before it (see `_gate_to_open`), or
        a person approved (or edited) the one that did, which passes its tool's gate too.
        "wait" when a gate is to open, or it was rejected and skipped (an on_reject step
        answers). "stop" when the run ends: rejected, or a gate's `when` raised."""
        decision = self.decisions.get(step.name)
        if decision is None:
            try:
                gate = self._gate_to_open(step)
            except Exception as error:
                self._fail_soon(step.name, f"its gate's condition raised "
                                           f"{type(error).__name__}: {error}")
                return "stop"
            if gate is None:
                return "run"
            self.opening[step.name] = gate
            self.to_open[step.name] = step.name
            return "wait"
        if decision.decision != "reject":
            return "run"
        why = f"rejected at gate {step.name!r} by {decision.by}"
        self._skip(step.name, why, settled)
        gate = self._decided_gate(step)
        if gate is not None and gate.on_reject is not None:
            return "wait"
        self.finished_soon("rejected", why, step.name)
        return "stop"

    def finished_soon(self, status: str, error: str, step: str | None) -> None:
        """End the run with `status` in receive (from a synchronous part of scheduling)."""
        self.ctx.self_ref.tell(_Settle(instance=id(self), status=status, error=error, step=step))

    def _skip(self, name: str, why: str, settled: set[str]) -> None:
        self.skipped.append(name)
        settled.add(name)
        _log.info("step_skipped", run_id=self.run_id, step=name, reason=why)
        span = self._step_span(self.pipeline.steps[name])
        if span is not None:
            span.attributes.update({"step.outcome": "skipped", "step.skip_reason": why})
            self.step_spans.pop(name).end()

    def _fail_soon(self, name: str, error: str) -> None:
        self.ctx.self_ref.tell(_StepDone(instance=id(self), step=name, error=error))

    # --- one step ---------------------------------------------------------------------

    async def _run_step(self, step: Step) -> None:
        started = time.perf_counter()
        attempts = [0]
        # This task's own context: what it logs and writes belongs to the run's trace, not
        # to whatever message the run's actor handles meanwhile.
        call_trace.set(TraceContext(self.trace_id, None, self.run_id))
        try:
            if step.map is not None:
                items = list(step.map(self.results))
                span = self.step_spans.get(step.name)
                if span is not None:
                    span.attributes["step.items"] = len(items)
                result: Any = list(await asyncio.gather(
                    *(self._attempts(step, step.worker or step.tool, item, i, attempts)
                      for i, item in enumerate(items))))
                reviewed = next((i for i, r in enumerate(result) if isinstance(r, NeedsReview)),
                                None)
                if reviewed is not None:
                    self.ctx.self_ref.tell(self._item_reviewed(step, reviewed, items[reviewed],
                                                               attempts[0]))
                    return
            else:
                result = await self._attempts(step, step.worker or step.tool, None, None, attempts)
        except asyncio.CancelledError:
            raise
        except ToolOutcomeUnknown as error:
            if step.tool is None or step.map is not None:
                result = await self._after_failure(step, error, attempts)
                if isinstance(result, _StepDone):
                    self.ctx.self_ref.tell(result)
                    return
            else:  # a person settles whether the tool's effect happened
                self.outcome_errors[step.name] = error
                self.ctx.self_ref.tell(_StepDone(instance=id(self), step=step.name,
                                                 error=str(error), attempts=attempts[0],
                                                 unknown=True))
                return
        except Exception as error:
            paused = self._store_failure(error)
            if paused is not None:  # the step did not fail: the run cannot go on here
                self.ctx.self_ref.tell(_Paused(instance=id(self), error=paused))
                return
            result = await self._after_failure(step, error, attempts)
            if isinstance(result, _StepDone):
                self.ctx.self_ref.tell(result)
                return
        self.ctx.self_ref.tell(_StepDone(instance=id(self), step=step.name, result=result,
                                         attempts=attempts[0],
                                         seconds=time.perf_counter() - started))

    def _item_reviewed(self, step: Step, index: int, item: Any, attempts: int) -> _StepDone:
        """The failure of map step `step` whose item `index` returned `NeedsReview`: a review
        opens one gate for a whole step's result, so an item cannot ask for one."""
        error = (f"its worker returned NeedsReview for map item {index} ({item!r:.60}); a "
                 "review belongs to a whole step, not to one item of a map step: return "
                 "each item's result, and ask for a review in a step after it")
        span = self.step_spans.get(step.name)
        if span is not None:
            span.fail(StepFailed(self.run_id, step.name, error))
            span.attributes["step.outcome"] = "optional_failure" if step.optional else "failed"
        if step.optional:  # it fails as an optional step does: the run goes on without it
            return _StepDone(instance=id(self), step=step.name, result=StepFailure(error),
                             attempts=attempts)
        return _StepDone(instance=id(self), step=step.name, error=error, attempts=attempts)

    def _store_failure(self, error: Exception) -> StoreError | None:
        """On a cluster's node, the store failure behind `error` that stops the run here
        rather than failing it (a lost lease, an unreachable server: another node, or this
        one later, goes on from the last checkpoint); None otherwise, and always on LMDB."""
        if self.pipelines.cluster is None:
            return None
        if isinstance(error, ToolResultUnrecordable):  # the tool ran; its result was not saved
            cause = error.__cause__
            error = cause if isinstance(cause, Exception) else error
        if isinstance(error, StoreError) and not isinstance(error, RecordCorrupt |
                                                             CheckpointCorrupt):
            return error
        return None

    async def _after_failure(self, step: Step, error: Exception, attempts: list[int]) -> Any:
        """The fallback's result, a `StepFailure` for an optional step, or a failed outcome."""
        _log.warning("step_failed", run_id=self.run_id, step=step.name,
                     error_type=type(error).__name__, error=str(error), attempts=attempts[0])
        span = self.step_spans.get(step.name)
        if step.fallback is not None:
            if span is not None:
                span.event("fallback_started", error_type=type(error).__name__, error=str(error))
            try:
                result = await self._attempts(step, step.fallback, None, None, attempts,
                                              fallback=True)
            except Exception as fallback_error:
                error = fallback_error
            else:
                _log.info("step_fallback_used", run_id=self.run_id, step=step.name)
                if span is not None:
                    span.attributes["step.outcome"] = "fallback"
                return result
        text = f"{type(error).__name__}: {error}"
        if span is not None:
            span.fail(error)
            span.attributes["step.outcome"] = "optional_failure" if step.optional else "failed"
        if step.optional:
            return StepFailure(text)
        return _StepDone(instance=id(self), step=step.name, error=text, attempts=attempts[0])

    async def _attempts(self, step: Step, worker: Any, item: Any, index: int | None,
                        attempts: list[int], *, fallback: bool = False) -> Any:
        """Run the step (or, with `fallback`, its fallback once) under its retry policy."""
        policy = (step.retry if not fallback and step.retry is not None else Retry(attempts=1))
        policy = msgspec.structs.replace(policy, attempt_timeout=step.timeout)
        if step.pool is not None:  # its node judged an error raised there (see `remote`)
            local = policy
            policy = msgspec.structs.replace(policy, retry_on=lambda error: (
                error.retryable if isinstance(error, RemoteStepFailed) else local.retries(error)))
        step_span = self.step_spans.get(step.name)
        current: list[OpenSpan | None] = [None]  # the attempt under way's span

        def open_attempt(number: int) -> OpenSpan:
            assert step_span is not None
            span = current[0] = step_span.child(
                f"{_step_scope(step.name, index, fallback=fallback)} attempt {number}",
                SpanKind.STEP_ATTEMPT, pipeline=self.pipeline.name, step=step.name,
                attempt=number)
            if index is not None:
                span.set(item=index)
                span.payload("step.item", item)
            if fallback:
                span.set(fallback=worker if isinstance(worker, str) else worker.__name__)
            return span

        async def attempt() -> Any:
            attempts[0] += 1
            span = current[0]
            result = await self._once(step, worker, item, index, attempts[0], fallback, span)
            if span is not None and not isinstance(worker, str):  # a tool's span has its usage
                usage = usage_of(result)
                if usage is not None:
                    self.tracer.record_usage(span, usage)
            return result

        return await call_with_retry(attempt, policy, tool=f"step {step.name}", key=self.run_id,
                                     step=step.name, rng=self.ctx.system.tools.state.jitter,
                                     attempt_span=None if step_span is None else open_attempt)

    async def _once(self, step: Step, worker: Any, item: Any, index: int | None,
                    attempt: int, fallback: bool, span: OpenSpan | None) -> Any:
        scope = _step_scope(step.name, index, fallback=fallback)
        # The attempt's span sends the request (or makes the call): what happens for it is
        # recorded inside it.
        span_id = new_span_id() if span is None else span.span_id
        edited = self._edited(step) if not fallback else None
        if isinstance(worker, str):  # a tool
            assert step.args is not None
            if edited is not None:  # a person's edit replaces the arguments
                arguments = dict(msgspec.to_builtins(edited))
            else:
                arguments = dict(step.args(self.results, self.input if index is None else item))
            # The one call of the step's unit of work: number 0, in every attempt and resume.
            key = derive_key(worker, step_unit(self.run_id, scope), 0)
            cluster = self.pipelines.cluster
            if cluster is not None:  # no attempt may outlive the node's lease of the run
                await cluster.before_tool(self.run_id, step.timeout)
            # Made as part of the run, not of whatever message this actor handles meanwhile.
            outside = handling.set(None)
            within = call_trace.set(TraceContext(self.trace_id, span_id, self.run_id))
            # The step's gate (its own or its tool's) has been passed: the tool may run.
            passed = gate_passed.set(worker if worker == step.tool else None)
            try:
                return await self.ctx.system.tools.call(worker, key=key, **arguments)
            finally:
                gate_passed.reset(passed)
                call_trace.reset(within)
                handling.reset(outside)
        # `scope` makes the request the step's unit of work: the tool calls the worker
        # makes while handling it derive their keys from the run and the step.
        trace = TraceContext(self.trace_id, span_id, self.run_id, scope)
        cluster = self.pipelines.cluster
        if step.pool is not None and cluster is not None and not cluster.tasks.serves(step.pool):
            return await self._remote(step, step.pool, fallback=fallback, item=item,
                                      index=index, attempt=attempt, edited=edited, trace=trace)
        pool = self.pipelines.worker_pool(self.pipeline, step, worker)
        request = RunStep(run_id=self.run_id, step=step.name,
                          input=self.input if edited is None else edited,
                          results=dict(self.results), item=item, index=index, attempt=attempt,
                          decisions=dict(self.decisions))
        try:
            return await pool.ask(request, timeout=step.timeout + 1.0, trace=trace)
        except (asyncio.CancelledError, AskTimeout):
            # Past its timeout (or the run ended): the worker must not stay busy with it.
            abandon_routed(pool, request)
            raise

    async def _remote(self, step: Step, pool: str, *, fallback: bool, item: Any,
                      index: int | None, attempt: int, edited: Any,
                      trace: TraceContext) -> Any:
        """Send the step's request to a node serving `pool` (through the database's step-task
        queue) and wait for its result, decoded as the step's output (or one item's)."""
        cluster = self.pipelines.cluster
        assert cluster is not None
        request = remote.encode_request(
            step=step.name, fallback=fallback, input=self.input if edited is None else edited,
            edited=edited is not None, item=item, index=index, attempt=attempt,
            results={name: self.encoded[name] for name in self.results if name in self.encoded},
            decisions=self.decisions, trace=trace)
        node, answer = await cluster.tasks.call(self.run_id, self.pipeline.name, pool, request)
        output = step.output if index is None else remote.item_type(step.output)
        return remote.decode_answer(answer, run_id=self.run_id, step=step, pool=pool, node=node,
                                    output=output)

    def _edited(self, step: Step) -> Any:
        """A person's edit at `step`'s gate (it replaces the step's request), or None."""
        decision = self.decisions.get(step.name)
        if decision is None or decision.decision != "edit":
            return None
        return decision.input

    # --- outcomes ---------------------------------------------------------------------

    async def _step_done(self, done: _StepDone) -> None:
        if self.finished or done.instance != id(self):
            return  # a step of the instance before a restart: this one runs it again
        self.running.pop(done.step, None)
        span = self.step_spans.get(done.step)
        if span is not None:
            span.attributes["step.attempts"] = done.attempts
        if done.unknown:  # its outcome gate opens once nothing else runs
            self.unknown.append(done.step)
            if span is not None:
                span.attributes["step.outcome"] = "outcome_unknown"
                span.fail(self.outcome_errors[done.step])
                self.step_spans.pop(done.step).end()
            self._advance()
            return
        if done.error is not None:  # its span has the error already
            if span is not None:
                self.step_spans.pop(done.step).end()
            await self._finish("failed", error=done.error, failed_step=done.step)
            return
        result = done.result
        if isinstance(result, StepFailure):
            self.failures[done.step] = result.error
        elif isinstance(result, NeedsReview):
            output = self.pipeline.steps[done.step].output
            try:
                proposed = msgspec.Raw(_ENCODER.encode(result.data))
                # Approving makes the data the step's result: it must decode as one.
                self.pipelines.decoder(output).decode(proposed)
            except (TypeError, msgspec.EncodeError, msgspec.ValidationError) as error:
                if span is not None:
                    span.fail(error)
                    self.step_spans.pop(done.step).end()
                data = type(result.data).__name__
                if isinstance(error, msgspec.ValidationError):
                    why = (f"its review's data ({data}) does not fit its output type "
                           f"{type_name(output)}: {error}; propose a result of that type in "
                           "NeedsReview(reason, data=...)")
                else:
                    why = (f"its review's data ({data}) cannot be stored: {error}; pass a "
                           "msgspec.Struct or plain data")
                await self._finish("failed", failed_step=done.step, error=why)
                return
            self.review_data[done.step] = proposed
            self.reviews[done.step] = result.reason
        else:
            try:
                self._keep(done.step, msgspec.Raw(_ENCODER.encode(result)))
            except (TypeError, msgspec.EncodeError) as error:
                if span is not None:
                    span.fail(error)
                    span.attributes["step.outcome"] = "failed"
                    self.step_spans.pop(done.step).end()
                await self._finish("failed", failed_step=done.step, error=(
                    f"its result ({type(result).__name__}) cannot be checkpointed: {error}; "
                    "return a msgspec.Struct or plain data"))
                return
        self.pipelines.record_timing(self.pipeline.name, StepTiming(done.step, done.seconds,
                                                                    done.attempts))
        if span is not None:
            self._settle_span(span, done.step, result)
        if isinstance(result, NeedsReview):
            # Its gate opens (with the run's `waiting` status, in one write) once the
            # steps still running have settled: their results are kept too.
            self._advance()
            return
        self.results[done.step] = result
        if (not self.running and not self.to_open
                and set(self.results) | set(self.skipped) >= self.pipeline.steps.keys()):
            # The last step: its checkpoint and the run's end in one write.
            await self._finish("completed", checkpoint=done.step)
            return
        try:
            await self._checkpoint(done.step,
                                   self.pipelines.runs.change(self.run_id, last_step=done.step))
        except StoreError as error:
            await self._pause(error)
            return
        self._advance()

    async def _settle(self, settle: _Settle) -> None:
        """Nothing runs: end the run as `settle` says, park it at its gates, or complete it."""
        if self.finished or settle.instance != id(self) or self.running:
            return
        if settle.status is not None:
            await self._finish(settle.status, error=settle.error)
        elif self.to_open:
            await self._park()
        else:
            await self._finish("completed")

    async def _park(self) -> None:
        """Open the gates in `to_open` and stop: the checkpoint, the gate records and the run's
        `waiting` status in one write. The run then holds no actor, task or timer. A step's
        gate already decided (see `_decided_earlier`) is not opened: the run goes on."""
        gates = self.pipelines.gates
        try:
            earlier = await self._decided_earlier()
        except StoreError as error:
            await self._cannot_read(error)
            return
        if earlier:
            try:
                self._adopt_gates({**self.gate_records, **earlier})
            except PipelineChanged as error:
                await self._cannot_go_on(error)
                return
            self.gates.extend(earlier)
            self.to_open = {}
            await self._go_on()
            return
        try:
            records = [self._gate_record(name, step) for name, step in self.to_open.items()]
        except Exception as error:  # a gate's reason or show function raised
            await self._finish("failed", failed_step=next(iter(self.to_open.values())),
                               error=f"its gate could not open: {type(error).__name__}: {error}")
            return
        self.gates.extend(name for name in self.to_open if name not in self.gates)
        reason = "; ".join(f"{r.gate}: {r.reason}" for r in records)
        decided: set[str] = set()  # gates decided since the run read them (see open_ops)
        ops: list[Op] = [op for record in records for op in gates.store.open_ops(
            record, seen=self.gate_records.get(record.gate), decided=decided)]
        try:
            await self._checkpoint(f"gate:{','.join(self.to_open)}", *ops,
                                   self.pipelines.runs.park(self.run_id, reason, decided=decided))
        except StoreError as error:
            await self._pause(error)
            return
        records = [r for r in records if r.gate not in decided]
        if self.span is not None:
            for record in records:
                self.span.event("gate_opened", gate=record.gate, reason=record.reason,
                                assignees=list(record.assignees))
        fresh = [r for r in records if self.gate_records.get(r.gate) is None
                 or self.gate_records[r.gate].status != "pending"]
        gates.opened(fresh)
        if decided:  # the run stayed running: go on with the decisions
            _log.info("run_decided_while_parking", run_id=self.run_id, trace_id=self.trace_id,
                      gates=sorted(decided))
            self.to_open = {}
            try:
                await self._load_gates()
            except StoreError as error:
                await self._cannot_read(error)
                return
            await self._go_on()
            return
        _log.info("run_waiting", run_id=self.run_id, trace_id=self.trace_id, pipeline=self.pipeline.name,
                  gates=list(self.to_open))
        await self._ended("waiting", reason, None)

    async def _decided_earlier(self) -> dict[str, GateRecord]:
        """The records of the steps' gates about to open that the run does not know of but
        that hold a decision: the checkpoint that named them was lost (deleted by hand, say)
        and the run went on from an older one. The run goes on with those decisions; opening
        the gates again would write over them and their audit trail. (Review and outcome
        gates ask about what the step did this time, so they open again.)"""
        unknown = [name for name, step in self.to_open.items()
                   if name == step and name not in self.gate_records]
        if not unknown:
            return {}
        records = await self.pipelines.gates.store.named(self.run_id, unknown)
        return {r.gate: r for r in records if r.decision is not None}

    def _gate_record(self, name: str, step_name: str) -> GateRecord:
        """The record of gate `name` (before `step_name`, or its review or outcome gate)."""
        step = self.pipeline.steps[step_name]
        gates = self.pipelines.gates
        if name.endswith("/review"):
            gate = step.review or Gate()
            proposed = self.review_data.get(step_name)  # none in a checkpoint of an older roost
            shown = None if proposed is None else self.pipelines.decoder(Any).decode(proposed)
            return gates.new_record(self.pipeline, self.run_id, name, step_name, "review", gate,
                                    reason=self.reviews[step_name], shown=shown,
                                    input_type=gate.input_type if gate.input_type is not None
                                    else step.output)
        if name.endswith("/outcome"):
            error = self.outcome_errors.get(step_name)
            assert step.tool is not None and step.args is not None
            key = derive_key(step.tool, step_unit(self.run_id, step_name), 0)
            reason = (str(error) if error is not None else
                      f"the outcome of tool {step.tool!r} (key {key!r}) is unknown")
            shown = {"tool": step.tool, "key": key,
                     "arguments": dict(step.args(self.results, self.input))}
            return gates.new_record(self.pipeline, self.run_id, name, step_name, "outcome",
                                    Gate(), reason=reason, shown=shown, input_type=step.output,
                                    tool=step.tool, key=key)
        gate = self.opening[step_name]
        reason = gate.reason(self.results) if callable(gate.reason) else gate.reason
        if gate.show is not None:
            shown = gate.show(self.results, self.input)
        elif step.tool is not None and step.args is not None:
            shown = {"arguments": dict(step.args(self.results, self.input))}
        else:
            shown = {dep: self.results[dep] for dep in step.after if dep in self.results}
        # A tool's gate names the tool in its record: the decision is then the tool's gate's
        # (its input type and on_reject), also in a later process.
        return gates.new_record(self.pipeline, self.run_id, name, step_name, "step", gate,
                                reason=str(reason), shown=shown, input_type=gate.input_type,
                                tool=None if gate is step.gate else step.tool)

    async def _apply_decisions(self) -> bool:
        """Apply the decisions made at review and outcome gates since the run parked;
        True if one ended the run. (A step's own gate is applied when the step is due.)"""
        for step_name in list(self.reviews):
            decision = self.decisions.get(f"{step_name}/review")
            if decision is None:
                continue
            del self.reviews[step_name]
            proposed = self.review_data.pop(step_name, None)
            step = self.pipeline.steps[step_name]
            if decision.decision == "reject":
                why = f"rejected at gate {step_name + '/review'!r} by {decision.by}"
                self.skipped.append(step_name)
                if step.review is None or step.review.on_reject is None:
                    await self._finish("rejected", error=why)
                    return True
                continue
            if decision.decision == "edit":
                result = decision.input
                self._keep(step_name, msgspec.Raw(_ENCODER.encode(result)))
            else:
                raw = proposed if proposed is not None else msgspec.Raw(_ENCODER.encode(None))
                try:
                    result = self.pipelines.decoder(step.output).decode(raw)
                except msgspec.ValidationError as error:
                    raise PipelineChanged(self.run_id, self.pipeline.name, (
                        f"the result step {step_name!r} proposed for review does not fit its "
                        f"output type now: {error}")) from error
                self._keep(step_name, raw)
            self.results[step_name] = result
        for step_name in list(self.unknown):
            decision = self.decisions.get(f"{step_name}/outcome")
            if decision is None:
                continue
            if await self._settle_outcome(step_name, decision):
                return True
        return False

    async def _settle_outcome(self, step_name: str, decision: GateDecision) -> bool:
        """A person said whether a tool step's effect happened; True if that ends the run."""
        step = self.pipeline.steps[step_name]
        assert step.tool is not None
        key = derive_key(step.tool, step_unit(self.run_id, step_name), 0)
        tools = self.ctx.system.tools
        self.unknown.remove(step_name)
        if decision.decision == "done":
            await _settle(tools, step.tool, key, done=True, result=decision.input)
            self._keep(step_name, msgspec.Raw(_ENCODER.encode(decision.input)))
            self.results[step_name] = decision.input
            return False
        if decision.decision == "not_done":  # the step runs again, under the same key
            await _settle(tools, step.tool, key, done=False)
            return False
        error = f"abandoned by {decision.by}: the outcome of tool {step.tool!r} was unknown"
        await _settle(tools, step.tool, key, done=False, error=error)
        if step.optional:
            self.failures[step_name] = error
            self.results[step_name] = StepFailure(error)
            return False
        await self._finish("failed", error=error, failed_step=step_name)
        return True

    def _keep(self, step: str, encoded: msgspec.Raw) -> None:
        """`step`'s encoded result, to store with the next checkpoint."""
        self.encoded[step] = encoded
        self.unsaved.add(step)

    async def _checkpoint(self, step: str, *changes: Op) -> None:
        """Save the run's progress after `step` and apply `changes` (its record's among
        them), in one store write, with the results completed since the last one."""
        state = self._progress()
        results = [StepResults.put_op(self.run_id, name, bytes(self.encoded[name]))
                   for name in self.unsaved if name in self.encoded]
        saved = await self.pipelines.checkpoints.save(
            self.run_id, step=step, actor_path=self.ctx.path, state=state,
            also=[*results, *changes])
        self.unsaved.clear()
        if self.span is not None:
            self.span.event("checkpoint", step=step, seq=saved.seq, bytes=len(state))

    async def _pause(self, error: StoreError) -> None:
        """The store cannot save the run's progress (a full disk, a failing store): stop
        without an end, so the run stays stored as it was and resumes from its last
        checkpoint once the store can write. Restarting here would only loop."""
        self.finished = True
        for task in self.running.values():
            task.cancel()
        _log.error("run_paused", run_id=self.run_id, trace_id=self.trace_id, pipeline=self.pipeline.name,
                   error_type=type(error).__name__, error=str(error))
        self._close_span("paused", error=error)
        self.pipelines.paused(self.run_id, error)
        await self.ctx.stop()

    async def _finish(self, status: str, *, error: str | None = None,
                      failed_step: str | None = None, checkpoint: str | None = None) -> None:
        """End the run: store its status, closing the gates it still waits at in the same
        write (nothing would act on their decision), then report the end and stop.

        Args:
            checkpoint: the step just completed, whose checkpoint is saved in the same
                write as the status. A run that went through gates saves its progress
                with the status too (decisions may have settled steps since).
        """
        self.finished = True
        for task in self.running.values():
            task.cancel()
        runs = self.pipelines.runs
        result = _ENCODER.encode(self.encoded)
        closing = self._close_pending(status)
        try:
            if checkpoint is not None:
                await self._checkpoint(checkpoint, runs.change(
                    self.run_id, status=status, error=error, result=result,
                    failed_step=failed_step, last_step=checkpoint), *closing)
            elif self.gates:
                await self._checkpoint(f"end:{status}", runs.change(
                    self.run_id, status=status, error=error, result=result,
                    failed_step=failed_step), *closing)
            else:
                await runs.update(self.run_id, status=status, error=error, result=result,
                                  failed_step=failed_step)
        except StoreError as store_error:
            await self._pause(store_error)
            return
        _log.info("run_finished", run_id=self.run_id, trace_id=self.trace_id,
                  pipeline=self.pipeline.name, status=status, failed_step=failed_step, error=error)
        await self._ended(status, error, failed_step)

    def _close_pending(self, status: str) -> list[Op]:
        """The writes that close the run's gates still pending as it ends with `status`
        (nothing would act on their decision), to commit with its end."""
        why = ("the run was cancelled" if status == RunStatus.CANCELLED
               else f"its run ended {status} while it waited")
        return self.pipelines.gates.store.close_ops(list(self.gate_records.values()), why)

    async def _ended(self, status: str, error: str | None, failed_step: str | None) -> None:
        """Wake whoever waits for the run's outcome, and stop."""
        self.finished = True
        usage = self._usage()
        failure = None if status != "failed" else StepFailed(
            self.run_id, failed_step or "unknown", error or "failed")
        self._close_span(status, error=failure, failed_step=failed_step)
        self.pipelines.finished(self.run_id, status, dict(self.results), error, failed_step,
                                usage=usage,
                                waiting_at=list(self.to_open) if status == "waiting" else None)
        await self.ctx.stop()

    def _progress(self) -> bytes:
        return _ENCODER.encode(RunProgress(
            results={}, failures=self.failures, reviews=self.reviews,
            skipped=self.skipped, trace_id=self.trace_id, usage=self._usage(),
            review_data=self.review_data, unknown=self.unknown, gates=self.gates,
            stored=list(self.encoded)))

    def _usage(self) -> UsageTotals:
        """The run's tokens and cost so far: the checkpoint's, plus this instance's."""
        span = self.span
        if span is None or "gen_ai.usage.input_tokens" not in span.attributes:
            return self.usage_before
        return self.usage_before.plus(span.totals())

    # --- spans ------------------------------------------------------------------------

    def _open_span(self) -> None:
        """Start this instance's `run` span (tracing on), and list it for the run's actors."""
        tracer = self.tracer
        if not tracer.enabled:
            return
        span = self.span = tracer.start(
            f"run {self.pipeline.name}", SpanKind.RUN, trace_id=self.trace_id,
            actor=self.ctx.path, run_id=self.run_id, pipeline=self.pipeline.name)
        span.payload("run.input", self.input)
        resumed = self.resumed_from
        if resumed is not None:
            span.event("resumed", step=resumed.step, seq=resumed.seq,
                       completed=len(self.results) + len(self.skipped))
            self._gate_spans(span, resumed.timestamp)
        tracer.runs[self.run_id] = span

    def _gate_spans(self, run: OpenSpan, parked_at: float) -> None:
        """A `gate` span for each gate decided since the run parked: from its opening to
        now (the resume), with the decision, who made it and the audit trail's events."""
        for record in self.gate_records.values():
            if record.decided_at is None or record.decided_at < parked_at:
                continue
            span = run.child(f"gate {record.gate}", SpanKind.GATE, pipeline=self.pipeline.name,
                             step=record.step, gate=record.gate, reason=record.reason,
                             assignees=list(record.assignees), decision=record.decision,
                             decided_by=record.by)
            span.start_ns = int(record.opened_at * 1e9)
            if record.comment is not None:
                span.attributes["comment"] = record.comment
            span.events = [SpanEvent(event.what, int(event.at * 1e9),
                                     {"by": event.by, "detail": event.detail})
                           for event in record.history]
            span.end()

    def _close_span(self, status: str, *, error: BaseException | None = None,
                    failed_step: str | None = None) -> None:
        """End the `run` span (once) with the run's status and totals; steps still open
        end as cancelled."""
        span = self.span
        if span is None:
            return
        self.span = None
        if self.tracer.runs.get(self.run_id) is span:
            del self.tracer.runs[self.run_id]
        for step_span in self.step_spans.values():
            step_span.attributes["step.outcome"] = "cancelled"
            step_span.end()
        self.step_spans.clear()
        span.attributes.update({"run.status": status,
                                "run.steps": len(self.results) + len(self.skipped)})
        if failed_step is not None:
            span.attributes["run.failed_step"] = failed_step
        if error is not None:
            span.fail(error)
        span.end()

    def _step_span(self, step: Step) -> OpenSpan | None:
        """Start `step`'s span, with its input: the run's input, and the steps whose results
        it comes after (those results are their spans' outputs: not copied here)."""
        run = self.span
        if run is None:
            return None
        span = self.step_spans[step.name] = run.child(
            f"step {step.name}", SpanKind.STEP, pipeline=self.pipeline.name, step=step.name)
        span.payload("step.input", {"input": self.input, "after": list(step.after)})
        return span

    def _settle_span(self, span: OpenSpan, step: str, result: Any) -> None:
        """End a settled step's span with its output and outcome."""
        del self.step_spans[step]
        if isinstance(result, NeedsReview):
            span.attributes.update({"step.outcome": "needs_review",
                                    "roost.needs_review": result.reason})
        elif not isinstance(result, StepFailure):
            span.payload("step.output", result)
            span.attributes.setdefault("step.outcome", "completed")
        span.end()


async def _settle(tools: Any, tool: str, key: str, **outcome: Any) -> None:
    """Settle an outcome gate's call as its decision says; a key already settled, or gone
    (released by this decision before a crash cut the run short), is left as it is."""
    with contextlib.suppress(ToolCallNotFound):
        await tools.settle_unknown(tool, key, **outcome)
