"""`Pipelines`: start, resume, list and cancel pipeline runs (`system.pipelines`).

Runs live under `/pipelines/runs/<run id>`, each step's worker pool under
`/pipelines/workers/<pipeline>/<step>` (started first, so the pools stop after
the runs at shutdown and a run interrupted by shutdown stays `running`). Every
run has a record in the store; a run still `running` when its process died is
listed by `interrupted()` and goes on from its last completed step with
`resume(run_id)` (or automatically, when its pipeline is registered with
`resume=True`). A run with a record that cannot be read (a damaged store) is not
resumed nor changed: it is left as it is for an operator to restore, and named.
A run that reaches a gate parks as `waiting` (no actor, no task) until a person
decides (`system.gates`, see `gates`); then it resumes from the gate: here at once,
stored `running` with the decision, or else stored `queued`, like any interrupted run.

At most `max_active_runs` runs are in flight; a run started past that is stored as
`queued` and starts when a slot frees (see `admission`), also after a restart.

On a PostgreSQL store the system is a node of a cluster (`cluster`, see `roost.cluster`):
runs started here are leased to it, queued runs wait for any node with a free slot, and
interrupted runs are taken over by the nodes' claims, not by `resume`."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from roost._completion import to_completion
from roost._logging import get_logger
from roost.actors.child_spec import ChildSpec
from roost.actors.pool import Pool
from roost.actors.supervisor import Supervisor
from roost.errors import (
    CheckpointCorrupt,
    ConfigurationError,
    PipelineChanged,
    RecordCorrupt,
    RunCancelled,
    RunInputInvalid,
    RunInterrupted,
    StepFailed,
    StoreError,
    SystemBusy,
    SystemNotRunning,
)
from roost.pipelines import remote
from roost.pipelines._sameness import first_difference
from roost.pipelines.admission import Admission
from roost.pipelines.definition import Pipeline, Step
from roost.pipelines.gates import Gates
from roost.pipelines.run import (
    CancelRun,
    RunActor,
    RunProgress,
    StepTiming,
    StoredRun,
    decode_progress,
    encoded_results,
    load_progress,
    read_run,
)
from roost.storage import CheckpointStore, Op, RunRecord, RunStatus, RunStore, checkpoint_key
from roost.tracing.tracer import UsageTotals

if TYPE_CHECKING:
    from roost.actors.ref import ActorRef

_log = get_logger("roost")
_ENCODER = msgspec.msgpack.Encoder()
#: What msgpack raises for a value it cannot encode (OverflowError: an int past 64 bits).
_UNENCODABLE = (TypeError, ValueError, OverflowError, RecursionError)
#: How many recent step timings are kept per pipeline.
TIMINGS_KEPT = 10_000
_RESULTS = msgspec.msgpack.Decoder(dict[str, msgspec.Raw])
#: Statuses of runs that can never go on: their checkpoints may be pruned.
_ENDED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.REJECTED)


def new_run_id() -> str:
    """A run id that sorts by creation time (like a UUIDv7: milliseconds, then 80 random
    bits), so new runs' records and checkpoints are appended to the store's B-trees
    instead of landing all over them: a commit then touches few pages, however large
    the store has grown."""
    return f"{time.time_ns() // 1_000_000:012x}{secrets.token_hex(10)}"


def check_run_id(run_id: object, max_bytes: int) -> None:
    """Refuse a run id that cannot name a run: the run's actor (`/pipelines/runs/<run id>`)
    and its records in the store (keys of at most `max_bytes` for the id) must hold it.

    Raises:
        ConfigurationError: naming the id and the rule it breaks.
    """
    if not isinstance(run_id, str):
        problem = f"is not a string (it is of type {type(run_id).__name__})"
    elif not run_id:
        problem = "is empty"
    elif "/" in run_id:
        problem = "contains '/', which would split the path of the run's actor"
    elif "\x00" in run_id:
        problem = "contains a NUL character, which ends the run id in its records' keys"
    else:
        try:
            size = len(run_id.encode())
        except UnicodeEncodeError:
            problem = "is not valid Unicode text (it cannot be encoded as UTF-8)"
        else:
            if size <= max_bytes:
                return
            problem = f"is {size} bytes long in UTF-8, past the store's limit"
    shown = repr(run_id) if len(repr(run_id)) <= 80 else f"{str(run_id)[:60]!r}..."
    raise ConfigurationError(
        f"run_id={shown} {problem}; a run id must be a non-empty string without '/' or "
        f"NUL characters, at most {max_bytes} bytes in UTF-8 (or leave run_id out for a "
        "generated one)")


class RunOutcome(msgspec.Struct, frozen=True):
    """How a run ended (or parked): its status, the results by step, why it did not
    complete, the tokens and cost its steps and tools reported (recorded with tracing
    on) over every resume, and for a `waiting` run the gates it waits at."""

    run_id: str
    status: str
    results: dict[str, Any]
    error: str | None = None
    failed_step: str | None = None
    usage: UsageTotals = msgspec.field(default_factory=UsageTotals)
    waiting_at: list[str] = msgspec.field(default_factory=list)


class RunHandle:
    """A handle to one run: its id, its status, its outcome, and a way to cancel it."""

    def __init__(self, pipelines: Pipelines, run_id: str) -> None:
        self._pipelines = pipelines
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"<RunHandle {self.run_id}>"

    async def result(self, *, through_gates: bool = False) -> RunOutcome:
        """Wait for the run to end and return its outcome.

        A run that parks at a gate gives an outcome of status `waiting` (the gates in
        `waiting_at`, their reasons in `error`), unless `through_gates`: then this waits
        on until the run ends after the decisions (it must resume in this process, or on
        a cluster, on any node). On a cluster's node, a run another node drives (or that
        waits queued for any node) is followed through its stored record.
        A run rejected at a gate gives status `rejected`.

        Raises:
            StepFailed: a step failed (after retries and fallback) and was not optional.
            RunCancelled: the run was cancelled.
            RunInterrupted: the run's actor stopped before the run ended (it can be resumed).
            ConfigurationError: the run cannot end in this process: `through_gates` for a
                run waiting at a gate whose pipeline is not registered here, or a run stored
                running or queued that is not live here (resume it first).
        """
        outcome = await self._pipelines.outcome(self.run_id, through_gates=through_gates)
        if outcome.status == "failed":
            raise StepFailed(self.run_id, outcome.failed_step or "unknown", outcome.error or "failed")
        if outcome.status == "cancelled":
            raise RunCancelled(self.run_id)
        return outcome

    async def status(self) -> RunStatus:
        """The run's status as stored now."""
        return (await self._pipelines.runs.get(self.run_id)).status

    async def cancel(self) -> None:
        """Cancel the run (running steps are cancelled) and wait until it has ended.

        A side-effecting tool call a step had started goes on in the tool proxy until it
        settles and is recorded (never cut off with its outcome unknown), so its effect
        may land just after this returns; it is not made again.
        """
        await self._pipelines.cancel(self.run_id)


class Resumed(builtins.list[RunHandle]):
    """The handles of the runs that `register(resume=True)` or `resume_interrupted()`
    resumed (a list); in `damaged` the errors of the runs they left as they are because a
    record of theirs cannot be read: each names the record (its kind and key); in
    `changed` the errors of the runs they left as they are because the pipeline registered
    now does not fit what they did (`PipelineChanged`). Those runs are not failed nor
    changed, so their records can be inspected and restored (`roost store check DIR`, then
    a backup), or resumed under the definition they started with."""

    def __init__(self, handles: Iterable[RunHandle] = (),
                 damaged: Iterable[RecordCorrupt | CheckpointCorrupt] = (),
                 changed: Iterable[PipelineChanged] = ()) -> None:
        super().__init__(handles)
        self.damaged: builtins.list[RecordCorrupt | CheckpointCorrupt] = builtins.list(damaged)
        self.changed: builtins.list[PipelineChanged] = builtins.list(changed)


class Pipelines:
    """The system's pipeline runs.

    Args:
        system: the `ActorSystem` that owns them (typed loosely: pipelines sit below
            the runtime and must not import it).
        max_active_runs: the most runs in flight at once; more wait in a durable queue.
    """

    def __init__(self, system: Any, *, max_active_runs: int = 1000) -> None:
        self.system = system
        self.admission = Admission(max_active_runs)
        self.gates = Gates(self)
        # Why runs paused in this process (a store that could not write), for outcome().
        self._paused: dict[str, StoreError] = {}
        self._registered: dict[str, Pipeline] = {}
        self._root: asyncio.Future[ActorRef] | None = None
        self._pools: dict[tuple[str, str, str], ActorRef] = {}
        self._waiters: dict[str, list[asyncio.Future[RunOutcome]]] = defaultdict(list)
        self._through_gates: set[asyncio.Future[RunOutcome]] = set()  # not woken by parking
        self._resume_after_park: set[str] = set()
        self._live: set[str] = set()
        self._created: dict[str, tuple[RunRecord, Any]] = {}  # see `just_created`
        self._read: dict[str, StoredRun] = {}  # see `just_read`
        # Why runs stopped in this process without going on: a record could not be read.
        self._unreadable: dict[str, Exception] = {}
        # The decision writes of runs resumed as they are decided, until their actor has
        # seen them land (see `commit_decision`).
        self._deciding: dict[str, asyncio.Future[builtins.list[Any]]] = {}
        self._decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}
        #: The most recent step timings per pipeline (bounded), for summaries and metrics.
        self.timings: dict[str, deque[StepTiming]] = defaultdict(
            lambda: deque(maxlen=TIMINGS_KEPT))
        self._runs: RunStore | None = None
        self._checkpoints: CheckpointStore | None = None
        #: The node this system is of a cluster (`roost.cluster.Cluster`, set by the system
        #: on a PostgreSQL store; typed loosely: the cluster sits above the pipelines), or None.
        self.cluster: Any = None

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
            if self.system.store_path is not None or self.system.store_url is not None:
                raise SystemNotRunning("use system.pipelines (its store is closed)")
            raise ConfigurationError(
                "pipelines need a store to checkpoint their runs; pass ActorSystem(store=...)")
        if self._runs is None:
            self._runs = RunStore(self.system.store)
            self._checkpoints = self.system.checkpoints

    # --- registry and actors ----------------------------------------------------------

    async def register(self, pipeline: Pipeline, *, resume: bool = False) -> Resumed:
        """Make `pipeline` known (so its runs can be resumed by id). Registering an
        identical definition again (the same steps, options and function code, built anew)
        keeps the first.

        Args:
            resume: also resume its interrupted runs now (on a cluster's node: claim its
                runs whose lease expired, and queued ones, up to the free slots).

        Returns:
            Handles of the runs resumed. A run with a record that cannot be read (nor a
            run record that cannot, whose pipeline is unknown) is left as it is, logged
            and named in the result's `damaged`: the other runs resume.

        Raises:
            ConfigurationError: `pipeline` is not a `Pipeline`, or a different pipeline
                with that name is registered (the message names what differs).
        """
        _check_pipeline("register", pipeline)
        known = self._registered.get(pipeline.name)
        if known is not None and known is not pipeline:
            difference = first_difference(known, pipeline)
            if difference is not None:
                raise ConfigurationError(
                    f"a different pipeline named {pipeline.name!r} is already registered "
                    f"({difference} differs); give the new definition another name")
        else:
            self._registered[pipeline.name] = pipeline
        self.gates.start_timer()
        if self.cluster is not None:  # its runs are resumed by the nodes' claims
            if not resume:
                self.cluster.slot_freed()  # claim them soon
                return Resumed()
            return Resumed(RunHandle(self, run_id) for run_id in await self.cluster.claim())
        if not resume:
            return Resumed()
        damaged: builtins.list[RecordCorrupt] = []
        interrupted = await self.interrupted(damaged=damaged)
        return await self._resume_all([r for r in interrupted if r.pipeline == pipeline.name],
                                       damaged)

    def registered(self, name: str) -> Pipeline | None:
        """The pipeline registered here under `name`, if any."""
        return self._registered.get(name)

    def registered_names(self) -> builtins.list[str]:
        """The names of the pipelines registered here (those whose runs a node may claim)."""
        return builtins.list(self._registered)

    async def run_task(self, run_id: str, pipeline: str, request: bytes) -> bytes:
        """Run a step request that another node of the cluster sent to a pool this node
        serves (`roost.cluster.tasks`), in the local worker pool; the encoded answer."""
        node = "" if self.cluster is None else self.cluster.node_id
        await self._runs_supervisor()  # the worker pools' supervisor, on a node with no run yet
        return await remote.serve(self, node, run_id, pipeline, request)

    def system_running(self) -> bool:
        """Whether the system is running (runs can be resumed here now)."""
        engine = self.system.engine
        return engine is not None and bool(engine.running)

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
            spec = Pool.spec(name, worker, size=step.workers, capacity=step.capacity)
            ref = self.system.engine.spawn_under(group, spec, (), None, {})
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
                    run_id: str | None = None, wait: bool = True) -> RunHandle:
        """Record a run of `pipeline` with `input` and return its handle once it is stored.
        A caller cancelled while the record is written gets no handle, but the run, stored,
        goes on as any other.

        The run starts at once if fewer than `max_active_runs` runs are in flight;
        otherwise it is stored as `queued` and starts when a slot frees (in the order
        runs were started), in this process or, after a restart, when its pipeline is
        registered with `resume=True`.

        Args:
            pipeline: the pipeline to run.
            input: the run's input (stored with the run): it must fit the pipeline's
                `input_type`, and the run gets it as that type, as after a resume.
            run_id: the run's id (generated if omitted): a non-empty string without '/'
                or NUL characters (see `check_run_id`).
            wait: queue the run when every slot is taken (True), or refuse it with
                `SystemBusy` (False).

        Raises:
            ConfigurationError: no store, `pipeline` is not a `Pipeline`, or `run_id` is
                invalid or already used.
            RunInputInvalid: `input` does not fit the pipeline's `input_type`, or cannot
                be encoded; nothing was stored.
            SystemBusy: `wait=False` and every slot is taken, or runs queued before this
                one wait for a slot; nothing was stored.
        """
        _check_pipeline("start", pipeline)
        if run_id is None:
            run_id = new_run_id()
        else:
            check_run_id(run_id, self.checkpoints.max_run_id_bytes)
        encoded, decoded = self._checked_input(pipeline, input)
        await self.register(pipeline)
        pipeline = self._registered[pipeline.name]  # the first of identical definitions
        # Once its record is being written, the run goes on (or waits queued) like any
        # other, even if the caller is cancelled meanwhile: that caller only gets no handle.
        await to_completion(self._store_run(pipeline, run_id, encoded, decoded, wait=wait))
        return RunHandle(self, run_id)

    async def _store_run(self, pipeline: Pipeline, run_id: str, encoded: bytes, decoded: Any,
                         *, wait: bool) -> None:
        """Store a new run and start it, or queue it when every slot is taken (see `start`).

        Raises:
            SystemBusy: `wait=False` and every slot is taken; nothing was stored.
        """
        admission = self.admission
        cluster = self.cluster
        if not admission.can_start():
            if not wait:
                raise SystemBusy(pipeline.name, admission.active, admission.limit,
                                 admission.queued)
            if cluster is not None:  # queued for any node of the cluster with a free slot
                cluster.starting(run_id, pipeline.name, queued=True)
            try:
                await self.runs.create(run_id, pipeline=pipeline.name, input=encoded,
                                       status=RunStatus.QUEUED)
            except BaseException:
                if cluster is not None:
                    cluster.not_started(run_id)
                raise
            if cluster is not None:
                cluster.queued()
                return
            admission.wait(run_id, pipeline.name)
            self._admit_waiting()  # a slot may have freed while the record was written
            return
        admission.take_slot(run_id)  # before the await: concurrent starts see it taken
        if cluster is not None:  # its record's write leases it to this node
            cluster.starting(run_id, pipeline.name)
        try:
            record = await self.runs.create(run_id, pipeline=pipeline.name, input=encoded)
        except BaseException:
            if cluster is not None:
                cluster.not_started(run_id)
            self._slot_freed(run_id)
            raise
        self._created[run_id] = record, decoded
        await self._spawn_stored(pipeline, run_id)

    def _checked_input(self, pipeline: Pipeline, input: Any) -> tuple[bytes, Any]:
        """`input` encoded for the run's record, and decoded from that as the pipeline's
        `input_type` (what the run's steps get, now and after a resume).

        Raises:
            RunInputInvalid: it cannot be encoded, or does not decode as `input_type`.
        """
        input_type = pipeline.input_type
        try:
            encoded = _ENCODER.encode(input)
        except _UNENCODABLE as error:
            raise RunInputInvalid(pipeline.name, _type_name(input_type), f"it cannot be "
                                  f"stored ({error}); pass a msgspec.Struct or plain data "
                                  "(str, int, float, bool, None, bytes, lists, dicts)") from error
        try:
            return encoded, self.decoder(input_type).decode(encoded)
        except msgspec.ValidationError as error:
            name = _type_name(input_type)
            raise RunInputInvalid(pipeline.name, name, f"it does not fit the pipeline's "
                                  f"input_type {name} ({error})") from error

    async def _spawn_stored(self, pipeline: Pipeline, run_id: str) -> None:
        """Start the actor of a run that holds a slot and is stored: if it cannot start
        (e.g. the system stops), the run stays stored as it is, to resume later, and its
        slot goes to the next run."""
        try:
            await self._spawn_run(pipeline, run_id)
        except BaseException:
            self._created.pop(run_id, None)
            self._read.pop(run_id, None)
            if self.cluster is not None:  # any node may go on with it
                self.cluster.let_go(run_id)
            self._slot_freed(run_id)
            raise

    def just_created(self, run_id: str) -> tuple[RunRecord, Any] | None:
        """The record `start` has just stored for `run_id` and the run's input, once: its
        actor's first load needs no read of the store (nor of checkpoints: a new run has
        none). An actor started again after a crash gets None and reads what is stored."""
        return self._created.pop(run_id, None)

    def just_read(self, run_id: str, record: RunRecord) -> StoredRun | None:
        """What `resume` has just read of `run_id`, once, if the run's record is still
        `record` (nothing changed it since): its actor goes on from that without reading
        the store again. Otherwise None: the actor reads what is stored."""
        stored = self._read.pop(run_id, None)
        return stored if stored is not None and stored.record == record else None

    async def resume(self, run_id: str) -> RunHandle:
        """Continue a run from its last completed step (a no-op for a live or ended run).

        A run `waiting` at a gate is not continued until a person decides
        (`system.gates.decide`, which resumes it). On a cluster's node, only a run whose
        lease the node holds is continued (the nodes claim the others). The run's
        records are read first: a run with one that cannot be read is not continued,
        and left as it is in the store.

        Raises:
            RunNotFound: no such run.
            ConfigurationError: its pipeline is not registered in this process.
            RecordCorrupt, CheckpointCorrupt: a record of the run (its record, latest
                checkpoint, a step result or a gate record) cannot be read; the error
                names it.
            PipelineChanged: the pipeline registered now does not fit what the run did
                (a step it ran is gone, a new step comes before one it ran, a stored
                result, input or decision no longer fits its type); the run is left as
                it is.
        """
        await self._previous_actor_gone(run_id)
        record = await self.runs.get(run_id)
        if not self._goes_on_here(record):
            return RunHandle(self, run_id)
        pipeline = self._registered.get(record.pipeline)
        if pipeline is None:
            raise ConfigurationError(
                f"run {run_id!r} belongs to pipeline {record.pipeline!r}, which is not registered "
                "here; call system.pipelines.register(pipeline) first")
        stored = await read_run(self, pipeline, record)
        if not self._goes_on_here(record):  # resumed meanwhile
            return RunHandle(self, run_id)
        if self.admission.has_room():
            self.admission.take_slot(run_id)
            self._read[run_id] = stored
            await self._spawn_stored(pipeline, run_id)
        else:
            self.admission.wait(run_id, pipeline.name)
        return RunHandle(self, run_id)

    def _goes_on_here(self, record: RunRecord) -> bool:
        """Whether `resume` continues the run `record` describes here now: it is `running`
        or `queued`, neither live nor queued here, and (on a cluster's node) leased here."""
        run_id = record.run_id
        resumable = record.status in (RunStatus.RUNNING, RunStatus.QUEUED)
        if resumable and run_id in self._live and record.status == RunStatus.QUEUED:
            # Decided while its actor is still parking it: resume once the actor has stopped.
            self._resume_after_park.add(run_id)
        if not resumable or run_id in self._live or self.admission.is_waiting(run_id):
            return False
        # Otherwise another node's, or waiting for a node's claim.
        return self.cluster is None or self.cluster.holds(run_id)

    async def _resume_all(self, records: Iterable[RunRecord],
                          damaged: builtins.list[RecordCorrupt]) -> Resumed:
        """Resume the runs `records` describe. A run with a record that cannot be read is
        left as it is, logged and named in the result's `damaged`, after the run records
        that do not decode at all (`damaged`, logged here too)."""
        for error in damaged:
            self._log_unreadable(error.key.decode(errors="replace"), error)
        resumed = Resumed(damaged=damaged)
        for record in records:
            try:
                resumed.append(await self.resume(record.run_id))
            except (RecordCorrupt, CheckpointCorrupt) as error:
                self._log_unreadable(record.run_id, error)
                resumed.damaged.append(error)
            except PipelineChanged as error:
                self._log_unreadable(record.run_id, error)
                resumed.changed.append(error)
        return resumed

    def _log_unreadable(self, run_id: str, error: Exception) -> None:
        """Log why run `run_id` is left as it is in the store, and what to do about it."""
        if isinstance(error, PipelineChanged):
            _log.error("run_pipeline_changed", run_id=run_id, pipeline=error.pipeline,
                       error=error.reason, what_to_do=(
                           "the run is left as it is in the store, not resumed: register the "
                           "definition it started with under its name to finish it, or cancel "
                           "it"))
            return
        if not isinstance(error, StoreError):
            _log.error("run_not_resumable", run_id=run_id, error_type=type(error).__name__,
                       error=str(error), what_to_do=(
                           "the run is left as it is in the store, not resumed: this is a bug "
                           "in roost or in the pipeline's code; report it with this log"))
            return
        _log.error("run_unreadable", run_id=run_id, error_type=type(error).__name__,
                   error=str(error), what_to_do=(
                       "the run is left as it is in the store, not resumed: run `roost store "
                       f"check {self.system.store.path}` with the system and console that use "
                       "the store stopped, and restore the store from a backup if it reports "
                       "damage"))

    async def commit_decision(self, record: RunRecord,
                              ops: Callable[[bool], builtins.list[Op]]) -> builtins.list[Any]:
        """Commit a decision at a gate of the run `record` describes, and resume the run here
        if its pipeline is registered; returns the commit's results.

        `ops(resumes)` gives the write: the decision, and the run's status change (to
        `running` when it `resumes` at once, else `queued`). A waiting run resumes at once
        when a slot is free: its actor is spawned as the write goes to the store, so it
        loads the run meanwhile, and it starts nothing before the write is durable (see
        `RunActor`). Otherwise the run resumes after the write, like any queued run. On a
        cluster's node the run is written `queued` with a lease no node holds yet: the
        first node with a free slot (this one, soon) claims it.

        Raises:
            What the commit raises (the decision is then not stored, nor the run resumed),
            or what kept the run from resuming here (the decision is stored).
        """
        run_id = record.run_id
        if self.cluster is not None:  # queued for any node of the cluster
            self.cluster.starting(run_id, record.pipeline, queued=True)
            try:
                results = await self.system.store.commit(ops(False))
            except BaseException:
                self.cluster.not_started(run_id)
                raise
            self.cluster.queued()
            return results
        pipeline = self._registered.get(record.pipeline)
        if pipeline is not None and record.status == RunStatus.WAITING and self.system_running():
            runs = await self._runs_supervisor()
            await self._previous_actor_gone(run_id)
            admission = self.admission
            if (run_id not in self._live and not admission.is_waiting(run_id)
                    and admission.has_room()):
                writing = asyncio.ensure_future(self.system.store.commit(ops(True)))
                self._deciding[run_id] = writing
                admission.take_slot(run_id)
                try:
                    self._spawn_under(runs, pipeline, run_id)
                except Exception:
                    # E.g. the system stops: the decision stands, and the run, stored
                    # running, resumes at the next start (the error says why not now).
                    self._live.discard(run_id)
                    self._deciding.pop(run_id, None)
                    self._slot_freed(run_id)
                    await asyncio.shield(writing)
                    raise
                # Shielded: a caller that gives up does not take the write from the actor.
                return await asyncio.shield(writing)
        results = await self.system.store.commit(ops(False))
        # Looked up again: a register(resume=True) that ran during the write saw the run
        # still waiting and left it.
        if self._registered.get(record.pipeline) is not None and self.system_running():
            await self.resume(run_id)
        return results

    def deciding(self, run_id: str) -> asyncio.Future[builtins.list[Any]] | None:
        """The decision write that resumes `run_id` as it is made, while it is pending or
        its run's actor has not yet seen it land (None otherwise)."""
        return self._deciding.get(run_id)

    def decision_seen(self, run_id: str) -> None:
        """The run's actor has seen its decision write land (or fail)."""
        self._deciding.pop(run_id, None)

    async def _previous_actor_gone(self, run_id: str) -> None:
        """Wait until an actor of the run that reported the run's end (or its parking) and is
        stopping has stopped: a new one cannot take its name before."""
        if run_id in self._live:
            return
        try:
            previous = self.system.lookup(f"/pipelines/runs/{run_id}")
        except LookupError:
            return
        await asyncio.shield(self.system.engine.termination(previous))

    async def _spawn_run(self, pipeline: Pipeline, run_id: str) -> None:
        self._spawn_under(await self._runs_supervisor(), pipeline, run_id)

    def _spawn_under(self, runs: ActorRef, pipeline: Pipeline, run_id: str) -> None:
        spec = ChildSpec(factory=RunActor, name=run_id, args=(self, pipeline, run_id),
                         restart="transient")
        self._live.add(run_id)
        try:
            ref = self.system.engine.spawn_under(runs, spec, (), None, {})
        except BaseException:
            self._live.discard(run_id)
            raise
        self._paused.pop(run_id, None)
        self._unreadable.pop(run_id, None)
        self.system.engine.termination(ref).add_done_callback(
            lambda _: self._run_actor_ended(run_id, ref))

    def _run_actor_ended(self, run_id: str, ref: ActorRef) -> None:
        """A run's actor stopped for good: if the run did not end, it is interrupted.

        Unless the run has a newer actor: one that parked the run may still be stopping
        when a decision resumes it, and its end is then no news of the run."""
        try:
            current = self.system.lookup(f"/pipelines/runs/{run_id}")
        except LookupError:
            current = None
        if current is not None and current is not ref:
            return
        self._deciding.pop(run_id, None)
        self._created.pop(run_id, None)  # it stopped before it loaded
        self._read.pop(run_id, None)
        self._slot_freed(run_id)
        if run_id not in self._live:
            return  # it finished (and said so) first
        self._live.discard(run_id)
        if self.cluster is not None:  # any node may go on with it
            self.cluster.let_go(run_id)
        for future in self._waiters.pop(run_id, []):
            if not future.done():
                future.set_exception(RunInterrupted(run_id))

    def paused(self, run_id: str, cause: StoreError) -> None:
        """Called by a run's actor that stops because the store cannot save its progress:
        its waiters hear `RunInterrupted` with the cause; the run stays resumable."""
        self._paused[run_id] = cause
        self._stopped_unended(run_id, RunInterrupted(run_id, cause))

    def unreadable(self, run_id: str, error: Exception) -> None:
        """Called by a run's actor that stops because the run cannot go on from what is
        stored (a record cannot be read, the pipeline changed): the run is left as it is in
        the store (logged, its waiters hear `error`)."""
        self._log_unreadable(run_id, error)
        self._unreadable[run_id] = error
        self._stopped_unended(run_id, error)

    def _stopped_unended(self, run_id: str, error: BaseException) -> None:
        """The run's actor stopped without ending the run: its slot frees, its waiters
        hear `error`, and on a cluster any node may go on with it (this one too, later)."""
        self._live.discard(run_id)
        if self.cluster is not None:
            self.cluster.let_go(run_id)
        self._slot_freed(run_id)
        for future in self._waiters.pop(run_id, []):
            if not future.done():
                future.set_exception(error)

    def _slot_freed(self, run_id: str) -> None:
        """Give the slot `run_id` held to the oldest queued run (a second call does nothing)."""
        self.admission.release(run_id)
        self._admit_waiting()
        if self.cluster is not None:
            self.cluster.slot_freed()

    def _admit_waiting(self) -> None:
        """Start the oldest queued runs that fit in the free slots (in the background)."""
        for next_id, name in self.admission.admit():
            pipeline = self._registered[name]
            root = self._root
            if root is not None and root.done() and root.exception() is None:
                # The usual case: no task per admitted run, it starts right here.
                self._start_admitted(root.result(), pipeline, next_id)
            else:
                task = self.system.loop.create_task(self._spawn_admitted(pipeline, next_id))
                self.system.engine.own(task)

    async def _spawn_admitted(self, pipeline: Pipeline, run_id: str) -> None:
        try:
            await self._spawn_run(pipeline, run_id)
        except BaseException as error:
            self._admission_failed(run_id)
            if not isinstance(error, Exception):
                raise

    def _start_admitted(self, runs: ActorRef, pipeline: Pipeline, run_id: str) -> None:
        try:
            self._spawn_under(runs, pipeline, run_id)
        except Exception:
            self._admission_failed(run_id)

    def _admission_failed(self, run_id: str) -> None:
        """An admitted run could not start (e.g. the system stops): it stays queued in the
        store, and whoever waits for it hears `RunInterrupted`."""
        self.admission.release(run_id)
        self.system.loop.call_soon(self._admit_waiting)  # not recursively: it may fail again
        for future in self._waiters.pop(run_id, []):
            if not future.done():
                future.set_exception(RunInterrupted(run_id))

    async def prune_finished(self, older_than: float) -> int:
        """Delete the checkpoints of runs that ended (completed, failed, cancelled or
        rejected) more than `older_than` seconds ago; their records stay, with their plain
        results.

        Runs waiting for a person keep theirs. Only the runs that are due are read (the
        index of ended runs), so an hourly sweep of a large store costs what is due.
        Returns how many checkpoints went.
        """
        return await self.runs.sweep_ended(time.time() - older_than, self.checkpoints.delete_runs)

    def statistics(self) -> dict[str, int]:
        """Runs in flight, runs queued for a slot, and the bound (`max_active_runs`)."""
        return self.admission.statistics()

    async def interrupted(self, *, damaged: builtins.list[RecordCorrupt] | None = None
                          ) -> builtins.list[RunRecord]:
        """Runs stored as `running` or `queued` that this process neither runs nor queues,
        oldest first.

        Args:
            damaged: where to append the errors of run records that do not decode (whether
                they are interrupted runs cannot be told); without it, such a record
                raises `RecordCorrupt`.
        """
        records = [r for r in await self.runs.list(damaged=damaged)
                   if r.status in (RunStatus.RUNNING, RunStatus.QUEUED)
                   and r.run_id not in self._live and not self.admission.is_waiting(r.run_id)]
        return sorted(records, key=lambda r: r.created_at)

    async def resume_interrupted(self) -> Resumed:
        """Resume every interrupted run whose pipeline is registered; like
        `register(resume=True)`, a run with a record that cannot be read is left as it
        is, logged and named in the result's `damaged`."""
        damaged: builtins.list[RecordCorrupt] = []
        interrupted = await self.interrupted(damaged=damaged)
        return await self._resume_all([r for r in interrupted if r.pipeline in self._registered],
                                      damaged)

    async def list(self, status: RunStatus | str | None = None) -> list[RunRecord]:
        """Run records, optionally only those with one status."""
        return await self.runs.list(status=status)

    async def cancel(self, run_id: str) -> None:
        """Cancel a live, queued or waiting run and wait for it to end; a waiting run's
        gates close (they can no longer be decided)."""
        if self.admission.leave(run_id):  # queued here; decided at a gate, it may wait at others
            await self._cancel_parked(run_id)
            return
        if run_id not in self._live:
            record = await self.runs.get(run_id)  # raises RunNotFound for an unknown run
            if record.status in (RunStatus.WAITING, RunStatus.QUEUED):
                await self._cancel_parked(run_id)
            return  # it has ended already
        waiter = self._wait(run_id)
        self.system.lookup(f"/pipelines/runs/{run_id}").tell(CancelRun())
        with contextlib.suppress(RunInterrupted):
            await waiter

    async def _cancel_parked(self, run_id: str) -> None:
        """Cancel a run that is not live here (waiting at gates, or queued: decided and not
        yet resumed, or not yet started): its status and its gates' closing in one write. A
        gate record that does not decode is left as it is (logged): it cannot be decided
        either, and it must not keep the run from being cancelled."""
        gates = self.gates.store
        damaged: builtins.list[RecordCorrupt] = []
        closing = gates.close_ops(await gates.of_run(run_id, damaged=damaged),
                                  "the run was cancelled")
        for error in damaged:
            _log.error("gate_unreadable", run_id=run_id, error=str(error))

        change = self.runs.change(run_id, status=RunStatus.CANCELLED, error="cancelled")
        await self.system.store.commit([change, *closing])
        self.finished(run_id, "cancelled", {}, "cancelled", None)

    async def outcome(self, run_id: str, *, through_gates: bool = False) -> RunOutcome:
        """Wait until the run ends (at once if it has) and return its outcome; a run parked
        at a gate gives its `waiting` outcome, unless `through_gates`."""
        if run_id in self._live or self.admission.is_waiting(run_id):
            return await self._waited(run_id, self._wait(run_id, through_gates=through_gates))
        cluster = self.cluster
        # Listening before the read: the run may be decided, resumed and end during it. (On
        # a cluster it may resume on any node: its record says when it ends.)
        waiter = self._wait(run_id, through_gates=True) if through_gates and not cluster else None
        try:
            record = await self.runs.get(run_id)
        except BaseException:
            self._forget(run_id, waiter)
            raise
        if waiter is not None:
            if record.status == RunStatus.WAITING and record.pipeline not in self._registered:
                # A decision would leave it queued for a process that registers its pipeline:
                # it would never end here.
                self._forget(run_id, waiter)
                raise ConfigurationError(
                    f"run {run_id!r} waits at a gate, but its pipeline {record.pipeline!r} is "
                    "not registered here, so it cannot go on through its gates in this "
                    "process; call system.pipelines.register(pipeline) first, or wait without "
                    "through_gates=True")
            if record.status == RunStatus.WAITING or run_id in self._live or waiter.done():
                return await self._waited(run_id, waiter)
            self._forget(run_id, waiter)
        if cluster is not None and run_id not in self._paused and (
                record.status in (RunStatus.RUNNING, RunStatus.QUEUED)
                or (through_gates and record.status == RunStatus.WAITING)):
            await self._until_no_other_node_drives(run_id, through_gates=through_gates)
            return await self.outcome(run_id, through_gates=through_gates)
        if record.status in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.SUSPENDED):
            if run_id in self._paused:  # paused here: say why, as its waiters heard
                raise RunInterrupted(run_id, self._paused[run_id])
            if run_id in self._unreadable:  # stopped here, as its waiters heard
                raise self._unreadable[run_id]
            raise ConfigurationError(
                f"run {run_id!r} is {record.status} but not live here; resume it first")
        pipeline = self._registered.get(record.pipeline)
        latest = await self.checkpoints.latest(run_id)
        key = None
        if latest is not None:  # the full picture, failed optional steps included
            progress = load_progress(latest)
            key = checkpoint_key(run_id, latest.seq)
            encoded = await encoded_results(self.system.store, progress, run_id, key)
        else:  # checkpoints pruned: the plain results the record keeps
            progress = RunProgress(results={}, failures={}, reviews={}, skipped=[], trace_id="")
            encoded = _RESULTS.decode(record.result or b"\x80")
        results = decode_progress(progress, pipeline, self.decoder, encoded=encoded,
                                  run_id=run_id, checkpoint=key)
        waiting_at = []
        if record.status == RunStatus.WAITING:
            waiting_at = [r.gate for r in await self.gates.store.of_run(run_id)
                          if r.status == "pending"]
        return RunOutcome(run_id, str(record.status), results, record.error, record.failed_step,
                          progress.usage, waiting_at)

    async def _until_no_other_node_drives(self, run_id: str, *, through_gates: bool) -> None:
        """On a cluster: poll the run's record (each poll twice as late, up to a second)
        until it ended, parked (unless waiting `through_gates`), or went live here."""
        delay = 0.02
        while run_id not in self._live and not self.admission.is_waiting(run_id):
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)
            status = (await self.runs.get(run_id)).status
            if status not in (RunStatus.RUNNING, RunStatus.QUEUED) and not (
                    through_gates and status == RunStatus.WAITING):
                return

    async def _waited(self, run_id: str, waiter: asyncio.Future[RunOutcome]) -> RunOutcome:
        """`waiter`'s outcome; a caller that gives up (a timeout around `result()`, say)
        stops listening, so polling a run that waits for hours holds nothing per poll."""
        try:
            return await waiter
        except asyncio.CancelledError:
            self._forget(run_id, waiter)
            raise

    def _forget(self, run_id: str, waiter: asyncio.Future[RunOutcome] | None) -> None:
        """Stop listening with `waiter` (None: nothing to do)."""
        if waiter is None:
            return
        waiters = self._waiters.get(run_id, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:
            self._waiters.pop(run_id, None)
        waiter.cancel()

    def _wait(self, run_id: str, *, through_gates: bool = False) -> asyncio.Future[RunOutcome]:
        future: asyncio.Future[RunOutcome] = self.system.loop.create_future()
        self._waiters[run_id].append(future)
        if through_gates:
            self._through_gates.add(future)
            future.add_done_callback(self._through_gates.discard)
        return future

    def finished(self, run_id: str, status: str, results: dict[str, Any], error: str | None,
                 failed_step: str | None, *, usage: UsageTotals | None = None,
                 waiting_at: builtins.list[str] | None = None) -> None:
        """Called by the run's actor when it ends or parks at gates (`waiting`): free its
        slot, wake everyone waiting (for a parked run, all but those waiting through gates)."""
        self._live.discard(run_id)
        if self.cluster is not None:
            self.cluster.ended(run_id)
        self._slot_freed(run_id)
        outcome = RunOutcome(run_id, status, results, error, failed_step,
                             UsageTotals() if usage is None else usage, waiting_at or [])
        waiters = self._waiters.pop(run_id, [])
        if status == RunStatus.WAITING and run_id in self._resume_after_park:
            self._resume_after_park.discard(run_id)
            self.system.engine.own(self.system.loop.create_task(self.resume(run_id)))
        if status == RunStatus.WAITING:
            kept = [future for future in waiters if future in self._through_gates]
            if kept:
                self._waiters[run_id] = kept
            waiters = [future for future in waiters if future not in self._through_gates]
        for future in waiters:
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
        except msgspec.ValidationError as error:  # well-formed, of another shape
            raise PipelineChanged(run_id, pipeline.name, "its stored input does not fit the "
                                  f"input_type {_type_name(pipeline.input_type)}: {error}"
                                  ) from error
        except msgspec.DecodeError as error:
            raise RecordCorrupt("run", run_id.encode(), f"its input does not decode as "
                                f"pipeline {pipeline.name!r}'s input_type: {error}") from error


def _check_pipeline(method: str, pipeline: object) -> None:
    """Refuse anything but a `Pipeline` where one is expected (a name, say)."""
    if not isinstance(pipeline, Pipeline):
        raise ConfigurationError(
            f"system.pipelines.{method}() takes a roost.Pipeline, got {pipeline!r} (a "
            f"{type(pipeline).__name__}); pass the pipeline itself, "
            "roost.Pipeline(name, steps)")


def _type_name(kind: Any) -> str:
    """How a message names a type: a class by its name, `list[int]` or `Any` as written."""
    return kind.__qualname__ if isinstance(kind, type) else repr(kind)
