"""`RunActor`: the supervisor of one pipeline run; routes steps to workers and aggregates.

It never does a step's work. It starts every ready step as a task it owns
(asking the step's worker pool, or calling its tool), and handles each
outcome as a message to itself, so its bookkeeping is serialized. After each
completed step it saves a checkpoint (the results so far); when it starts, it
resumes from the latest checkpoint, so a restart or a new process goes on from
the last completed step and never runs a completed step again.

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
import hashlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from roost._logging import get_logger
from roost.actors.actor import Actor, Message
from roost.errors import CheckpointCorrupt, StepFailed, StoreError
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.storage import Checkpoint, RunRecord, RunStatus, Update, checkpoint_key
from roost.tools.keys import derive_key, step_unit
from roost.tools.retry import Retry, call_with_retry
from roost.trace import TraceContext, call_trace, handling, new_span_id, new_trace_id
from roost.tracing.spans import SpanKind
from roost.tracing.tracer import OpenSpan, Tracer, UsageTotals, usage_of

if TYPE_CHECKING:
    from roost.pipelines.service import Pipelines

_log = get_logger("roost")
_ENCODER = msgspec.msgpack.Encoder()


class NeedsReview(msgspec.Struct, frozen=True, tag="needs_review"):
    """A step result that ends the run in status `needs_review`, for a person to look at.

    Steps after it do not run, not even after a crash or a resume: the step's
    checkpoint and the run's status are stored in one write, and a run actor never
    advances a run whose checkpoint holds a review. The results so far are kept
    with the run.
    """

    reason: str


class RunProgress(msgspec.Struct, frozen=True, tag="run_progress"):
    """A run's checkpoint: what it has done so far.

    Attributes:
        results: each completed step's encoded result (decoded with `Step.output`).
        failures: optional steps that failed, with their error (read back as `StepFailure`).
        reviews: steps that asked for a person, with the reason (read back as `NeedsReview`).
        skipped: steps skipped by their condition.
        trace_id: the run's trace.
        usage: the tokens and cost recorded so far (with tracing on), over every resume.
    """

    results: dict[str, msgspec.Raw]
    failures: dict[str, str]
    reviews: dict[str, str]
    skipped: list[str]
    trace_id: str
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)


def decode_progress(progress: RunProgress, pipeline: Pipeline | None,
                    decoder: Callable[[Any], msgspec.msgpack.Decoder[Any]], *,
                    run_id: str = "", key: bytes = b"") -> dict[str, Any]:
    """The results a `RunProgress` holds, each decoded to its step's declared type.

    Raises:
        CheckpointCorrupt: a step's stored result does not decode (damaged bytes, or a
            changed `output` type), naming the run and the step.
    """
    results: dict[str, Any] = {}
    for name, raw in progress.results.items():
        step = None if pipeline is None else pipeline.steps.get(name)
        output = Any if step is None else step.output
        try:
            results[name] = decoder(output).decode(raw)
        except msgspec.DecodeError as error:
            raise CheckpointCorrupt(run_id, name, key, f"its stored result does not decode as "
                                    f"{getattr(output, '__name__', output)}: {error}") from error
    results.update((name, StepFailure(error)) for name, error in progress.failures.items())
    results.update((name, NeedsReview(reason)) for name, reason in progress.reviews.items())
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


class CancelRun(Message, frozen=True):
    """Cancel the run: running steps are cancelled and the run ends `cancelled`."""


_PROGRESS_DECODER = msgspec.msgpack.Decoder(RunProgress)


def _step_scope(name: str, index: int | None, *, fallback: bool) -> str:
    """What a step's request does within its run (`TraceContext.step`): `name`, `name/3`
    for item 3 of a map step, `name/fallback` for its fallback. Step names hold no '/'."""
    if fallback:
        return f"{name}/fallback"
    return name if index is None else f"{name}/{index}"


def run_trace_id(run_id: str, created_at: float) -> str:
    """The trace id of a run that has no checkpoint yet: derived from the run, so that a run
    resumed before its first checkpoint still continues the trace it began."""
    seed = f"{run_id}\0{created_at!r}".encode()
    return hashlib.blake2b(seed, digest_size=16).hexdigest()


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


class RunActor(Actor):
    """Runs one pipeline run to its end, from its latest checkpoint."""

    def __init__(self, pipelines: Pipelines, pipeline: Pipeline, run_id: str) -> None:
        self.pipelines = pipelines
        self.pipeline = pipeline
        self.run_id = run_id
        self.input: Any = None
        self.results: dict[str, Any] = {}
        self.encoded: dict[str, msgspec.Raw] = {}
        self.failures: dict[str, str] = {}
        self.reviews: dict[str, str] = {}
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
        except StoreError as corrupt:
            # Restarting cannot mend stored bytes: the run fails, naming them; they stay
            # in the store for a person to inspect.
            await self._finish("failed", error=str(corrupt))
            return
        if record.status == RunStatus.QUEUED:  # admitted from the queue: it starts now
            # Not durable: if a crash loses this, the run is found queued and admitted again.
            try:
                await self.pipelines.runs.update(self.run_id, status=RunStatus.RUNNING,
                                                 durable=False)
            except StoreError as error:
                await self._pause(error)
                return
        elif record.status != RunStatus.RUNNING:
            # It ended before this actor started (e.g. a restart after its last write):
            # report that end again, run nothing.
            _log.info("run_already_ended", run_id=self.run_id, status=str(record.status))
            await self._ended(str(record.status), record.error, record.failed_step)
            return
        self._open_span()
        if self.reviews:
            # The checkpoint holds a step's review but the record says running (a crash
            # between the two writes of a roost that made them separately): the run waits
            # for a person; it must not go on to its next steps.
            await self._finish("needs_review", error=next(iter(self.reviews.values())))
            return
        self._advance()

    async def _load(self) -> RunRecord:
        """Load the input and the latest checkpoint (a resume goes on from there).

        Returns:
            The run's record, as stored when this actor started.
        """
        record = await self.pipelines.runs.get(self.run_id)
        self.input = self.pipelines.decode_input(self.pipeline, self.run_id, record.input)
        self.trace_id = run_trace_id(self.run_id, record.created_at)
        latest = await self.pipelines.checkpoints.latest(self.run_id)
        if latest is not None:
            progress = load_progress(latest)
            self.resumed_from = latest
            self.trace_id = progress.trace_id or self.trace_id
            self.usage_before = progress.usage
            self.skipped = list(progress.skipped)
            self.encoded = dict(progress.results)
            self.failures = dict(progress.failures)
            self.reviews = dict(progress.reviews)
            self.results = decode_progress(progress, self.pipeline, self.pipelines.decoder,
                                           run_id=self.run_id,
                                           key=checkpoint_key(latest.run_id, latest.seq))
            _log.info("run_resumed", run_id=self.run_id, pipeline=self.pipeline.name,
                      completed=sorted(self.results))
        return record

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
            case CancelRun():
                await self._finish("cancelled", error="cancelled")
        return None

    # --- scheduling -------------------------------------------------------------------

    def _advance(self) -> None:
        """Start every ready step, skip the ones whose condition fails, or finish."""
        if self.finished:
            return
        steps = self.pipeline.steps
        settled = set(self.results) | set(self.skipped)
        for name in self.pipeline.order:
            if name in settled or name in self.running:
                continue
            step = steps[name]
            if not all(dep in settled for dep in step.after):
                continue
            if step.after and all(dep in self.skipped for dep in step.after):
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
            self._step_span(step)
            self.running[name] = asyncio.get_running_loop().create_task(self._run_step(step))
        if not self.running and len(settled) == len(steps):
            # Everything has settled: finish in receive, where state changes are serialized.
            self.ctx.self_ref.tell(_StepDone(instance=id(self), step="", result=None))

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
        try:
            if step.map is not None:
                items = list(step.map(self.results))
                span = self.step_spans.get(step.name)
                if span is not None:
                    span.attributes["step.items"] = len(items)
                result: Any = list(await asyncio.gather(
                    *(self._attempts(step, step.worker or step.tool, item, i, attempts)
                      for i, item in enumerate(items))))
            else:
                result = await self._attempts(step, step.worker or step.tool, None, None, attempts)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            result = await self._after_failure(step, error, attempts)
            if isinstance(result, _StepDone):
                self.ctx.self_ref.tell(result)
                return
        self.ctx.self_ref.tell(_StepDone(instance=id(self), step=step.name, result=result,
                                         attempts=attempts[0],
                                         seconds=time.perf_counter() - started))

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
                                     step=step.name,
                                     attempt_span=None if step_span is None else open_attempt)

    async def _once(self, step: Step, worker: Any, item: Any, index: int | None,
                    attempt: int, fallback: bool, span: OpenSpan | None) -> Any:
        scope = _step_scope(step.name, index, fallback=fallback)
        # The attempt's span sends the request (or makes the call): what happens for it is
        # recorded inside it.
        span_id = new_span_id() if span is None else span.span_id
        if isinstance(worker, str):  # a tool
            assert step.args is not None
            arguments = dict(step.args(self.results, self.input if index is None else item))
            # The one call of the step's unit of work: number 0, in every attempt and resume.
            key = derive_key(worker, step_unit(self.run_id, scope), 0)
            # Made as part of the run, not of whatever message this actor handles meanwhile.
            outside = handling.set(None)
            within = call_trace.set(TraceContext(self.trace_id, span_id, self.run_id))
            try:
                return await self.ctx.system.tools.call(worker, key=key, **arguments)
            finally:
                call_trace.reset(within)
                handling.reset(outside)
        pool = self.pipelines.worker_pool(self.pipeline, step, worker)
        request = RunStep(run_id=self.run_id, step=step.name, input=self.input,
                          results=dict(self.results), item=item, index=index, attempt=attempt)
        # `scope` makes the request the step's unit of work: the tool calls the worker
        # makes while handling it derive their keys from the run and the step.
        trace = TraceContext(self.trace_id, span_id, self.run_id, scope)
        return await pool.ask(request, timeout=step.timeout + 1.0, trace=trace)

    # --- outcomes ---------------------------------------------------------------------

    async def _step_done(self, done: _StepDone) -> None:
        if self.finished or done.instance != id(self):
            return  # a step of the instance before a restart: this one runs it again
        if not done.step:  # every step has settled
            await self._finish("completed")
            return
        self.running.pop(done.step, None)
        span = self.step_spans.get(done.step)
        if span is not None:
            span.attributes["step.attempts"] = done.attempts
        if done.error is not None:  # its span has the error already
            if span is not None:
                self.step_spans.pop(done.step).end()
            await self._finish("failed", error=done.error, failed_step=done.step)
            return
        result = done.result
        if isinstance(result, StepFailure):
            self.failures[done.step] = result.error
        elif isinstance(result, NeedsReview):
            self.reviews[done.step] = result.reason
        else:
            try:
                self.encoded[done.step] = msgspec.Raw(_ENCODER.encode(result))
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
        self.results[done.step] = result
        if span is not None:
            self._settle_span(span, done.step, result)
        if isinstance(result, NeedsReview):
            # The review and the status in one write: no crash can leave a run whose
            # checkpoint holds a review stored as `running`, free to go on by itself.
            await self._finish("needs_review", error=result.reason, checkpoint=done.step)
            return
        try:
            await self._checkpoint(done.step,
                                   self.pipelines.runs.change(self.run_id, last_step=done.step))
        except StoreError as error:
            await self._pause(error)
            return
        self._advance()

    async def _checkpoint(self, step: str, change: Update) -> None:
        """Save the run's progress after `step` and `change` its record, in one store write."""
        state = self._progress()
        saved = await self.pipelines.checkpoints.save(
            self.run_id, step=step, actor_path=self.ctx.path, state=state, also=[change])
        if self.span is not None:
            self.span.event("checkpoint", step=step, seq=saved.seq, bytes=len(state))

    async def _pause(self, error: StoreError) -> None:
        """The store cannot save the run's progress (a full disk, a failing store): stop
        without an end, so the run stays stored as it was and resumes from its last
        checkpoint once the store can write. Restarting here would only loop."""
        self.finished = True
        for task in self.running.values():
            task.cancel()
        _log.error("run_paused", run_id=self.run_id, pipeline=self.pipeline.name,
                   error_type=type(error).__name__, error=str(error))
        self._close_span("paused", error=error)
        self.pipelines.paused(self.run_id, error)
        await self.ctx.stop()

    async def _finish(self, status: str, *, error: str | None = None,
                      failed_step: str | None = None, checkpoint: str | None = None) -> None:
        """End the run: store its status, then report the end and stop.

        Args:
            checkpoint: the step just completed, whose checkpoint is saved in the same
                write as the status (None: the status alone).
        """
        self.finished = True
        for task in self.running.values():
            task.cancel()
        runs = self.pipelines.runs
        result = _ENCODER.encode(self.encoded)
        try:
            if checkpoint is None:
                await runs.update(self.run_id, status=status, error=error, result=result,
                                  failed_step=failed_step)
            else:
                await self._checkpoint(checkpoint, runs.change(
                    self.run_id, status=status, error=error, result=result,
                    failed_step=failed_step, last_step=checkpoint))
        except StoreError as store_error:
            await self._pause(store_error)
            return
        _log.info("run_finished", run_id=self.run_id, pipeline=self.pipeline.name, status=status,
                  failed_step=failed_step, error=error)
        await self._ended(status, error, failed_step)

    async def _ended(self, status: str, error: str | None, failed_step: str | None) -> None:
        """Wake whoever waits for the run's outcome, and stop."""
        self.finished = True
        usage = self._usage()
        failure = None if status != "failed" else StepFailed(
            self.run_id, failed_step or "unknown", error or "failed")
        self._close_span(status, error=failure, failed_step=failed_step)
        self.pipelines.finished(self.run_id, status, dict(self.results), error, failed_step,
                                usage=usage)
        await self.ctx.stop()

    def _progress(self) -> bytes:
        return _ENCODER.encode(RunProgress(
            results=self.encoded, failures=self.failures, reviews=self.reviews,
            skipped=self.skipped, trace_id=self.trace_id, usage=self._usage()))

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
        tracer.runs[self.run_id] = span

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
