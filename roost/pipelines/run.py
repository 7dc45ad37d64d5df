"""`RunActor`: the supervisor of one pipeline run; routes steps to workers and aggregates.

It never does a step's work. It starts every ready step as a task it owns
(asking the step's worker pool, or calling its tool), and handles each
outcome as a message to itself, so its bookkeeping is serialized. After each
completed step it saves a checkpoint (the results so far); when it starts, it
resumes from the latest checkpoint, so a restart or a new process goes on from
the last completed step and never runs a completed step again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from roost.actors.actor import Actor, Message
from roost.errors import CheckpointCorrupt, StoreError
from roost.pipelines.definition import Pipeline, RunStep, Step, StepFailure
from roost.storage import Checkpoint, RunRecord, RunStatus, Update, checkpoint_key
from roost.tools.keys import derive_key, step_unit
from roost.tools.retry import Retry, call_with_retry
from roost.trace import TraceContext, new_span_id, new_trace_id

if TYPE_CHECKING:
    from roost.pipelines.service import Pipelines

_log = structlog.get_logger("roost")
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
    """

    results: dict[str, msgspec.Raw]
    failures: dict[str, str]
    reviews: dict[str, str]
    skipped: list[str]
    trace_id: str


def decode_progress(progress: RunProgress, pipeline: Pipeline | None,
                    decoder: Callable[[Any], msgspec.msgpack.Decoder[Any]]) -> dict[str, Any]:
    """The results a `RunProgress` holds, each decoded to its step's declared type."""
    results: dict[str, Any] = {}
    for name, raw in progress.results.items():
        step = None if pipeline is None else pipeline.steps.get(name)
        results[name] = decoder(Any if step is None else step.output).decode(raw)
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
        latest = await self.pipelines.checkpoints.latest(self.run_id)
        if latest is not None:
            progress = load_progress(latest)
            self.trace_id = progress.trace_id
            self.skipped = list(progress.skipped)
            self.encoded = dict(progress.results)
            self.failures = dict(progress.failures)
            self.reviews = dict(progress.reviews)
            self.results = decode_progress(progress, self.pipeline, self.pipelines.decoder)
            _log.info("run_resumed", run_id=self.run_id, pipeline=self.pipeline.name,
                      completed=sorted(self.results))
        return record

    async def on_stop(self) -> None:
        for task in self.running.values():
            task.cancel()
        if self.running:
            await asyncio.wait(self.running.values(), timeout=self.shutdown_timeout)

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
                    self._fail_soon(name, f"its condition raised {type(error).__name__}: {error}")
                    return
                if not wanted:
                    self._skip(name, "its condition is false", settled)
                    continue
            self.running[name] = asyncio.get_running_loop().create_task(self._run_step(step))
        if not self.running and len(settled) == len(steps):
            # Everything has settled: finish in receive, where state changes are serialized.
            self.ctx.self_ref.tell(_StepDone(instance=id(self), step="", result=None))

    def _skip(self, name: str, why: str, settled: set[str]) -> None:
        self.skipped.append(name)
        settled.add(name)
        _log.info("step_skipped", run_id=self.run_id, step=name, reason=why)

    def _fail_soon(self, name: str, error: str) -> None:
        self.ctx.self_ref.tell(_StepDone(instance=id(self), step=name, error=error))

    # --- one step ---------------------------------------------------------------------

    async def _run_step(self, step: Step) -> None:
        started = time.perf_counter()
        attempts = [0]
        try:
            if step.map is not None:
                items = list(step.map(self.results))
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
        if step.fallback is not None:
            try:
                result = await self._attempts(step, step.fallback, None, None, attempts,
                                              fallback=True)
            except Exception as fallback_error:
                error = fallback_error
            else:
                _log.info("step_fallback_used", run_id=self.run_id, step=step.name)
                return result
        text = f"{type(error).__name__}: {error}"
        if step.optional:
            return StepFailure(text)
        return _StepDone(instance=id(self), step=step.name, error=text, attempts=attempts[0])

    async def _attempts(self, step: Step, worker: Any, item: Any, index: int | None,
                        attempts: list[int], *, fallback: bool = False) -> Any:
        """Run the step (or, with `fallback`, its fallback once) under its retry policy."""
        policy = (step.retry if not fallback and step.retry is not None else Retry(attempts=1))
        policy = msgspec.structs.replace(policy, attempt_timeout=step.timeout)

        async def attempt() -> Any:
            attempts[0] += 1
            return await self._once(step, worker, item, index, attempts[0], fallback)

        return await call_with_retry(attempt, policy, tool=f"step {step.name}", key=self.run_id,
                                     step=step.name)

    async def _once(self, step: Step, worker: Any, item: Any, index: int | None,
                    attempt: int, fallback: bool) -> Any:
        scope = _step_scope(step.name, index, fallback=fallback)
        if isinstance(worker, str):  # a tool
            assert step.args is not None
            arguments = dict(step.args(self.results, self.input if index is None else item))
            # The one call of the step's unit of work: number 0, in every attempt and resume.
            key = derive_key(worker, step_unit(self.run_id, scope), 0)
            return await self.ctx.system.tools.call(worker, key=key, **arguments)
        pool = self.pipelines.worker_pool(self.pipeline, step, worker)
        request = RunStep(run_id=self.run_id, step=step.name, input=self.input,
                          results=dict(self.results), item=item, index=index, attempt=attempt)
        # `scope` makes the request the step's unit of work: the tool calls the worker
        # makes while handling it derive their keys from the run and the step.
        trace = TraceContext(self.trace_id, new_span_id(), self.run_id, scope)
        return await pool.ask(request, timeout=step.timeout + 1.0, trace=trace)

    # --- outcomes ---------------------------------------------------------------------

    async def _step_done(self, done: _StepDone) -> None:
        if self.finished or done.instance != id(self):
            return  # a step of the instance before a restart: this one runs it again
        if not done.step:  # every step has settled
            await self._finish("completed")
            return
        self.running.pop(done.step, None)
        if done.error is not None:
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
                await self._finish("failed", failed_step=done.step, error=(
                    f"its result ({type(result).__name__}) cannot be checkpointed: {error}; "
                    "return a msgspec.Struct or plain data"))
                return
        self.pipelines.record_timing(self.pipeline.name, StepTiming(done.step, done.seconds,
                                                                    done.attempts))
        self.results[done.step] = result
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
        await self.pipelines.checkpoints.save(self.run_id, step=step, actor_path=self.ctx.path,
                                              state=self._progress(), also=[change])

    async def _pause(self, error: StoreError) -> None:
        """The store cannot save the run's progress (a full disk, a failing store): stop
        without an end, so the run stays stored as it was and resumes from its last
        checkpoint once the store can write. Restarting here would only loop."""
        self.finished = True
        for task in self.running.values():
            task.cancel()
        _log.error("run_paused", run_id=self.run_id, pipeline=self.pipeline.name,
                   error_type=type(error).__name__, error=str(error))
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
        self.pipelines.finished(self.run_id, status, dict(self.results), error, failed_step)
        await self.ctx.stop()

    def _progress(self) -> bytes:
        return _ENCODER.encode(RunProgress(
            results=self.encoded, failures=self.failures, reviews=self.reviews,
            skipped=self.skipped, trace_id=self.trace_id))
