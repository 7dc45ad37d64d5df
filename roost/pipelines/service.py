"""`Pipelines`: start, resume, list and cancel pipeline runs (`system.pipelines`).

Runs live under `/pipelines/runs/<run id>`, each step's worker pool under
`/pipelines/workers/<pipeline>/<step>` (started first, so the pools stop after
the runs at shutdown and a run interrupted by shutdown stays `running`). Every
run has a record in the store; a run still `running` when its process died is
listed by `interrupted()` and goes on from its last completed step with
`resume(run_id)` (or automatically, when its pipeline is registered with
`resume=True`)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import defaultdict, deque
from typing import TYPE_CHECKING, Any

import msgspec

from roost.actors.child_spec import ChildSpec
from roost.actors.pool import Pool
from roost.actors.supervisor import Supervisor
from roost.errors import (
    ConfigurationError,
    RecordCorrupt,
    RunCancelled,
    RunInterrupted,
    StepFailed,
)
from roost.pipelines.definition import Pipeline, Step
from roost.pipelines.run import (
    CancelRun,
    RunActor,
    RunProgress,
    StepTiming,
    decode_progress,
    load_progress,
)
from roost.storage import CheckpointStore, RunRecord, RunStatus, RunStore

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef

_ENCODER = msgspec.msgpack.Encoder()
#: How many recent step timings are kept per pipeline.
TIMINGS_KEPT = 10_000
_RESULTS = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])


class RunOutcome(msgspec.Struct, frozen=True):
    """How a run ended: its status, the results by step, and why it did not complete."""

    run_id: str
    status: str
    results: dict[str, Any]
    error: str | None = None
    failed_step: str | None = None


class RunHandle:
    """A handle to one run: its id, its status, its outcome, and a way to cancel it."""

    def __init__(self, pipelines: Pipelines, run_id: str) -> None:
        self._pipelines = pipelines
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"

    async def result(self) -> RunOutcome:
        """Wait for the run to end and return its outcome.

        Raises:
            StepFailed: a step failed (after retries and fallback) and was not optional.
            RunCancelled: the run was cancelled.
            RunInterrupted: the run's actor stopped before the run ended (it can be resumed).
        """
        outcome = await self._pipelines.outcome(self.run_id)
        if outcome.status == "failed":
            raise StepFailed(self.run_id, outcome.failed_step or "unknown", outcome.error or "failed")
        if outcome.status == "cancelled":
            raise RunCancelled(self.run_id)
        return outcome

    async def status(self) -> RunStatus:
        """The run's status as stored now."""
        return (await self._pipelines.runs.get(self.run_id)).status

    async def cancel(self) -> None:
        """Cancel the run (running steps are cancelled) and wait until it has ended."""
        await self._pipelines.cancel(self.run_id)


class Pipelines:
    """The system's pipeline runs.

    Args:
        system: the `ActorSystem` that owns them (typed loosely: pipelines sit below
            the runtime and must not import it).
    """

    def __init__(self, system: Any) -> None:
        self.system = system
        self._registered: dict[str, Pipeline] = {}
        self._root: asyncio.Future[ActorRef] | None = None
        self._pools: dict[tuple[str, str, str], ActorRef] = {}
        self._waiters: dict[str, list[asyncio.Future[RunOutcome]]] = defaultdict(list)
        self._live: set[str] = set()
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        #: The most recent step timings per pipeline (bounded), for summaries and metrics.
        self.timings: dict[str, deque[StepTiming]] = defaultdict(
            lambda: deque(maxlen=TIMINGS_KEPT))
        self._runs: RunStore | None = None
        self._checkpoints: CheckpointStore | None = None

    # --- store access -----------------------------------------------------------------

    @property
    def runs(self) -> RunStore:
        self._need_store()
        assert self._runs is not None
        return self._runs

    @property
    def checkpoints(self) -> CheckpointStore:
        self._need_store()
        assert self._checkpoints is not None
        return self._checkpoints

    def _need_store(self) -> None:
        if self.system.store is None:
            raise ConfigurationError(
                "pipelines need a store to checkpoint their runs; pass ActorSystem(store=...)")
        if self._runs is None:
            self._runs = RunStore(self.system.store)
            self._checkpoints = self.system.checkpoints

    # --- registry and actors ----------------------------------------------------------

    async def register(self, pipeline: Pipeline, *, resume: bool = False) -> list[RunHandle]:
        """Make `pipeline` known (so its runs can be resumed by id).

        Args:
            resume: also resume its interrupted runs now.

        Returns:
            Handles of the runs resumed.

        Raises:
            ConfigurationError: another pipeline with that name is registered.
        """
        known = self._registered.get(pipeline.name)
        if known is not None and known is not pipeline:
            raise ConfigurationError(
                f"a different pipeline named {pipeline.name!r} is already registered")
        self._registered[pipeline.name] = pipeline
        if not resume:
            return []
        return [await self.resume(r.run_id) for r in await self.interrupted()
                if r.pipeline == pipeline.name]

    async def _runs_supervisor(self) -> ActorRef:
        """`/pipelines/runs`, started once; `/pipelines/workers` starts first, so it stops last."""
        if self._root is None:
            self._root = self.system.loop.create_future()
            try:
                await self.system.start(Supervisor.spec(
                    "pipelines", max_restarts=100, within=10.0, children=[
                        Supervisor.spec("workers", max_restarts=100, within=10.0),
                        Supervisor.spec("runs", max_restarts=1000, within=10.0)]))
            except BaseException as error:
                self._root.set_exception(error)
                self._root = None
                raise
            self._root.set_result(self.system.lookup("/pipelines/runs"))
        return await asyncio.shield(self._root)

    def worker_pool(self, pipeline: Pipeline, step: Step, worker: type) -> ActorRef:
        """The pool of `worker`s serving `step` of `pipeline` (started on first use)."""
        key = (pipeline.name, step.name, worker.__name__)
        ref = self._pools.get(key)
        if ref is None or not ref.is_alive:
            name = step.name if worker is step.worker else f"{step.name}-fallback"
            group = self._pipeline_group(pipeline)
            ref = self.system.engine.spawn_under(group, Pool.spec(name, worker, size=step.workers),
                                          (), None, {})
            self._pools[key] = ref
        return ref

    def _pipeline_group(self, pipeline: Pipeline) -> ActorRef:
        try:
            return self.system.lookup(f"/pipelines/workers/{pipeline.name}")
        except LookupError:
            workers = self.system.lookup("/pipelines/workers")
            return self.system.engine.spawn_under(workers, Supervisor.spec(pipeline.name), (), None, {})

    # --- runs -------------------------------------------------------------------------

    async def start(self, pipeline: Pipeline, input: Any = None, *,
                    run_id: str | None = None) -> RunHandle:
        """Start a run of `pipeline` with `input` and return its handle at once.

        Raises:
            ConfigurationError: no store, or `run_id` is already used.
        """
        await self.register(pipeline)
        run_id = run_id or uuid.uuid4().hex
        await self.runs.create(run_id, pipeline=pipeline.name, input=_ENCODER.encode(input))
        await self._spawn_run(pipeline, run_id)
        return RunHandle(self, run_id)

    async def resume(self, run_id: str) -> RunHandle:
        """Continue a run from its last completed step (a no-op for a live or ended run).

        Raises:
            RunNotFound: no such run.
            ConfigurationError: its pipeline is not registered in this process.
        """
        record = await self.runs.get(run_id)
        if record.status != RunStatus.RUNNING or run_id in self._live:
            return RunHandle(self, run_id)
        pipeline = self._registered.get(record.pipeline)
        if pipeline is None:
            raise ConfigurationError(
                f"run {run_id!r} belongs to pipeline {record.pipeline!r}, which is not registered "
                "here; call system.pipelines.register(pipeline) first")
        await self._spawn_run(pipeline, run_id)
        return RunHandle(self, run_id)

    async def _spawn_run(self, pipeline: Pipeline, run_id: str) -> None:
        runs = await self._runs_supervisor()
        self._live.add(run_id)
        spec = ChildSpec(factory=RunActor, name=run_id, args=(self, pipeline, run_id),
                         restart="transient")
        ref = self.system.engine.spawn_under(runs, spec, (), None, {})
        self.system.engine.termination(ref).add_done_callback(lambda _: self._run_actor_ended(run_id))

    def _run_actor_ended(self, run_id: str) -> None:
        """A run's actor stopped for good: if the run did not end, it is interrupted."""
        if run_id not in self._live:
            return  # it finished (and said so) first
        self._live.discard(run_id)
        for future in self._waiters.pop(run_id, []):
            if not future.done():
                future.set_exception(RunInterrupted(run_id))

    async def interrupted(self) -> list[RunRecord]:
        """Runs stored as `running` that no actor in this process is running."""
        return [r for r in await self.runs.list(status=RunStatus.RUNNING)
                if r.run_id not in self._live]

    async def resume_interrupted(self) -> list[RunHandle]:
        """Resume every interrupted run whose pipeline is registered."""
        return [await self.resume(r.run_id) for r in await self.interrupted()
                if r.pipeline in self._registered]

    async def list(self, status: RunStatus | str | None = None) -> list[RunRecord]:
        """Run records, optionally only those with one status."""
        return await self.runs.list(status=status)

    async def cancel(self, run_id: str) -> None:
        """Cancel a live run and wait for it to end."""
        if run_id not in self._live:
            await self.runs.get(run_id)  # raises RunNotFound for an unknown run
            return  # it has ended already
        waiter = self._wait(run_id)
        self.system.lookup(f"/pipelines/runs/{run_id}").tell(CancelRun())
        with contextlib.suppress(RunInterrupted):
            await waiter

    async def outcome(self, run_id: str) -> RunOutcome:
        """Wait until the run ends (at once if it has) and return its outcome."""
        if run_id in self._live:
            return await self._wait(run_id)
        record = await self.runs.get(run_id)
        if record.status in (RunStatus.RUNNING, RunStatus.SUSPENDED):
            raise ConfigurationError(
                f"run {run_id!r} is {record.status} but not live here; resume it first")
        pipeline = self._registered.get(record.pipeline)
        latest = await self.checkpoints.latest(run_id)
        if latest is not None:  # the full picture, failed optional steps included
            results = decode_progress(load_progress(latest), pipeline, self.decoder)
        else:  # checkpoints pruned: the plain results the record keeps
            progress = RunProgress(results=_RESULTS.decode(record.result or b"\x80"), failures={},
                                   reviews={}, skipped=[], trace_id="")
            results = decode_progress(progress, pipeline, self.decoder)
        return RunOutcome(run_id, str(record.status), results, record.error, record.failed_step)

    def _wait(self, run_id: str) -> asyncio.Future[RunOutcome]:
        future: asyncio.Future[RunOutcome] = self.system.loop.create_future()
        self._waiters[run_id].append(future)
        return future

    def finished(self, run_id: str, status: str, results: dict[str, Any], error: str | None,
                 failed_step: str | None) -> None:
        """Called by the run's actor when it ends: wake everyone waiting for it."""
        self._live.discard(run_id)
        outcome = RunOutcome(run_id, status, results, error, failed_step)
        for future in self._waiters.pop(run_id, []):
            if not future.done():
                future.set_result(outcome)

    def record_timing(self, pipeline: str, timing: StepTiming) -> None:
        self.timings[pipeline].append(timing)

    # --- codecs -----------------------------------------------------------------------

    def decoder(self, kind: Any) -> msgspec.msgpack.Decoder[Any]:
        """A msgpack decoder for `kind` (built once per type)."""
        decoder = self._decoders.get(kind)
        if decoder is None:
            decoder = self._decoders[kind] = msgspec.msgpack.Decoder(kind)
        return decoder

    def decode_input(self, pipeline: Pipeline, run_id: str, data: bytes | None) -> Any:
        """The run's stored input, as the pipeline's `input_type`.

        Raises:
            RecordCorrupt: the stored input does not decode as that type (it changed?).
        """
        if data is None:
            return None
        try:
            return self.decoder(pipeline.input_type).decode(data)
        except msgspec.DecodeError as error:
            raise RecordCorrupt("run", run_id.encode(), f"its input does not decode as "
                                f"pipeline {pipeline.name!r}'s input_type: {error}") from error
