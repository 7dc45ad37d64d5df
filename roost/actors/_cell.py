"""The actor cell: one actor's mailbox, lifecycle and message loop.

A cell has no task while its mailbox is empty. Mail arriving at an idle cell
schedules one drain task, which handles system messages first, then user
messages one at a time, and ends when both lanes are empty. This keeps an idle
actor at roughly a kilobyte, and a busy one free of per-message tasks.

The cell outlives actor instances: a restart swaps the instance and keeps the
ref and the mailbox, so senders keep their refs and no queued message is lost.

A message that belongs to a pipeline run (its trace has a run id) is recorded as a
`message` span, a child of the span that sent it, when tracing is on; a crash while
handling it is the span's error, and the restart (or the end) that follows is an
event on the run's span. Messages outside runs cost one check: the tell hot path
stays as it was.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import TYPE_CHECKING, Any

from roost._logging import get_logger
from roost.actors._restart import should_restart
from roost.actors._system_messages import (
    ChildFailed,
    ChildStopped,
    Exit,
    RestartChildren,
    StartInstance,
    Stop,
    StopInstance,
)
from roost.actors.child_spec import DEFAULT_SHUTDOWN_TIMEOUT
from roost.actors.messages import StopReason, Terminated
from roost.actors.ref import ActorRef
from roost.actors.supervisor import Supervisor, SupervisorSpec
from roost.errors import (
    ActorRestarted,
    ActorStopped,
    CheckpointNotSaved,
    CheckpointUnencodable,
    InternalError,
    MailboxFull,
)
from roost.mailbox.envelope import Envelope
from roost.mailbox.mailbox import Mailbox
from roost.trace import TraceContext, handling
from roost.tracing.spans import SpanKind

if TYPE_CHECKING:
    from roost.actors._engine import Engine
    from roost.actors.actor import Actor
    from roost.actors.child_spec import ChildSpec
    from roost.actors.context import ActorContext
    from roost.tracing.tracer import OpenSpan

# Lifecycle states, in order. Plain ints, not an IntEnum: the drain loop and `tell` compare
# them on every message, and only exact ints get the interpreter's fast comparison.
NEW, RUNNING, SUSPENDED, STOPPING, STOPPED = range(5)
STATE_NAMES = ("new", "running", "suspended", "stopping", "stopped")

#: Messages handled before a busy drain yields to other tasks.
FAIRNESS = 64
#: Seconds a cancelled actor gets to actually stop before it is abandoned.
KILL_GRACE = 1.0

NORMAL, FAILURE, KILLED = StopReason.NORMAL, StopReason.FAILURE, StopReason.KILLED


def _bound(seconds: float) -> float | None:
    """A timeout for `asyncio.wait`: `math.inf` (wait for ever) is None there."""
    return None if seconds == math.inf else seconds


_log = get_logger("roost")
#: A checkpoint that failed: the actor's memory is ahead of its store, so it restarts from
#: its last checkpoint even when the message was an ask (whose asker gets the error).
_CHECKPOINT_FAILED = (CheckpointUnencodable, CheckpointNotSaved)


class _MailboxClosed(Exception):
    """Raised into senders waiting for room when the actor stops."""


class Cell:
    """Internal: everything the runtime keeps about one actor. Users hold its `ref`."""

    __slots__ = (
        "__weakref__",
        "_abandoned",
        "_done",
        "_killed_for_stop",
        "_killing",
        "_start_began",
        "_started",
        "_starting",
        "_step",
        "_stopping",
        "actor",
        "args",
        "children",
        "crash",
        "crash_run",
        "ctx",
        "current",
        "engine",
        "factory",
        "keep_spec",
        "kwargs",
        "loop",
        "mailbox",
        "name",
        "options",
        "parent",
        "path",
        "poison_after",
        "ref",
        "restarts",
        "shutdown_timeout",
        "span",
        "start_timeout",
        "started_at",
        "state",
        "stop_error",
        "stop_reason",
        "supervision",
        "task",
        "watchers",
        "watching",
    )

    def __init__(self, engine: Engine, parent: Cell | None, name: str, spec: ChildSpec) -> None:
        self.engine = engine
        self.loop = engine.loop
        self.parent = parent
        self.name = name
        self.path: str = "/" if parent is None else f"{parent.path.rstrip('/')}/{name}"
        self.options = spec
        factory = spec.factory
        if isinstance(factory, SupervisorSpec):
            self.factory: type[Actor] = factory.actor or Supervisor
            self.args: tuple[Any, ...] = (factory,)
            self.kwargs: dict[str, Any] = {}
        else:
            self.factory = factory
            self.args = spec.args
            self.kwargs = spec.kwargs
        self.shutdown_timeout = spec.shutdown_timeout
        # on_start is bounded by the shutdown timeout, but cannot be done "at once".
        self.start_timeout = spec.shutdown_timeout or DEFAULT_SHUTDOWN_TIMEOUT
        self.poison_after = spec.poison_after
        self.ref = ActorRef(self, self.path, name)
        self.mailbox = Mailbox(
            self.path, engine.dead_letters, capacity=spec.capacity, overflow=spec.overflow
        )
        self.state = NEW
        self.actor: Actor | None = None
        self.ctx: ActorContext | None = None
        self.task: asyncio.Task[None] | None = None
        self.children: dict[str, Cell] = {}
        self.current: Envelope | None = None  # the message being handled
        self.span: OpenSpan | None = None  # its `message` span, when it is recorded
        self.watchers: set[Cell] | None = None
        self.watching: set[Cell] | None = None
        self.supervision: Any = None
        self.restarts = 0
        self.started_at = -math.inf  # clock seconds when on_start last finished (restarts)
        # Set by the supervisor that started it from a spec: it keeps the spec once the
        # child stopped for good (unless temporary), for RestartChild.
        self.keep_spec = False
        self.crash: BaseException | None = None  # the failure not yet followed by a restart
        self.crash_run: str | None = None  # the run whose message that failure crashed on
        self.stop_reason: StopReason | None = None
        self.stop_error: BaseException | None = None
        self._started = False
        self._killing = False  # a kill is under way: the CancelledError it causes is ours
        self._killed_for_stop = False  # a stop had to kill: a normal stop is "killed"
        self._abandoned: Envelope | None = None  # its asker gave up: its handling is cancelled
        self._starting = False  # on_start (or hydration) is running
        self._start_began = 0.0  # loop time when its last start (on_start) began
        self._step: asyncio.Future[None] | None = None  # resolved as a step begins
        self._done: asyncio.Future[None] | None = None
        self._stopping: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Cell {self.path} {STATE_NAMES[self.state]}>"

    # --- construction ---------------------------------------------------------------------

    def instantiate(self) -> Actor:
        """Create a fresh actor instance with `ctx` set before its `__init__` runs."""
        from roost.actors.context import ActorContext

        if self.ctx is None:
            self.ctx = ActorContext(self)
        actor = self.factory.__new__(self.factory)
        actor.ctx = self.ctx
        actor.__init__(*self.args, **self.kwargs)  # type: ignore[misc]
        self.actor = actor
        self._started = False
        return actor

    def begin(self) -> None:
        """Start the actor: at once when there is nothing to await, else in a drain."""
        from roost.actors.actor import Actor

        factory = self.factory
        if factory.on_start is Actor.on_start and not self.engine.needs_hydration(self):
            self._started = True
            self.state = RUNNING
            if self.mailbox.has_system or len(self.mailbox):
                self.schedule()
        else:
            self.schedule()

    # --- delivery -------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self.state < STOPPING

    @property
    def listed(self) -> bool:
        """Whether its supervisor lists it: not stopped, or stopped with its spec kept."""
        return self.state != STOPPED or (self.keep_spec and self.options.restart != "temporary")

    def enqueue(self, envelope: Envelope) -> None:
        """Queue a user message (the `tell`/`ask` hot path) and wake the cell if idle."""
        if self.state >= STOPPING:
            self._undeliverable(envelope)
            return
        if self.mailbox.put_nowait(envelope) and self.task is None and self.state == RUNNING:
            self.schedule()

    async def enqueue_waiting(self, envelope: Envelope) -> None:
        """Queue a user message, waiting for room when the mailbox policy is `wait`.

        From this actor's own message loop (a `send`, `ask` or `forward_send` to itself)
        a full mailbox is not waited on: only that loop makes room, so it is queued as a
        `tell` is, and `MailboxFull` says why.
        """
        if self.state >= STOPPING:
            self._undeliverable(_unanswered(envelope))
            raise ActorStopped(self.path, envelope.message, self.stop_reason or "stopping")
        if self.mailbox.full and self.task is not None and asyncio.current_task() is self.task:
            try:
                self.enqueue(envelope)
            except MailboxFull as full:
                full.add_note(f"{self.path} sent to its own mailbox from its own message loop: "
                              "waiting for room there would never end, since only it makes room")
                raise
            return
        try:
            queued = await self.mailbox.put(envelope)
        except _MailboxClosed:
            self._undeliverable(_unanswered(envelope))
            raise ActorStopped(self.path, envelope.message, self.stop_reason or "stopped",
                               self.stop_error) from None
        if self.state == STOPPED:  # stopped while we waited: what we queued is undeliverable
            for stranded in self.mailbox.drain():
                self._undeliverable(stranded)
            raise ActorStopped(self.path, envelope.message, self.stop_reason or "stopped",
                               self.stop_error)
        if queued and self.task is None and self.state == RUNNING:
            self.schedule()

    def deliver_forced(self, message: Any) -> None:
        """Queue a runtime event (e.g. `Terminated`) that a full mailbox must not refuse."""
        if self.state >= STOPPING:
            return
        self.mailbox.put_forced(Envelope(message))
        if self.task is None and self.state == RUNNING:
            self.schedule()

    def post_system(self, message: Any) -> None:
        """Queue a system message; it is handled before any user message."""
        if self.state == STOPPED:
            return
        self.mailbox.put_system(message)
        if self.task is None:
            self.schedule()

    def _undeliverable(self, envelope: Envelope) -> None:
        reply = envelope.reply
        if reply is not None and not reply.done():
            reply.set_exception(
                ActorStopped(self.path, envelope.message, self.stop_reason or "stopped",
                             self.stop_error)
            )
        sender = envelope.sender.path if envelope.sender is not None else None
        self.engine.dead_letters.record("actor_stopped", self.path, envelope.message, sender)

    def _late_reply(self, envelope: Envelope, result: Any) -> None:
        """A reply its asker no longer waits for (the ask timed out or was cancelled)."""
        asker = envelope.sender.path if envelope.sender is not None else "(outside any actor)"
        self.engine.dead_letters.record("late_reply", asker, result, self.path)

    def schedule(self) -> None:
        """Start a drain task for this cell, owned by the system."""
        self.task = self.engine.start_drain(self._drain())

    # --- the drain loop -------------------------------------------------------------------

    async def _drain(self) -> None:
        handling.set(self)
        try:
            while self.state != STOPPED:
                try:
                    await self._drain_once()
                    return
                except asyncio.CancelledError:
                    if not self._killing or self.state >= STOPPING:
                        raise
                    # Killed by a stop that could not wait: go on with the stop sequence.
                    self._absorb_kill()
        except asyncio.CancelledError:
            if self.state != STOPPED:
                self._finalize(KILLED, None)
            raise
        except Exception as error:
            # A broken invariant in the engine itself: never leave the actor half alive with
            # its askers and watchers waiting for ever. It stops as failed, naming the error.
            if self.state != STOPPED:
                internal = InternalError(
                    f"{self.path}: its message loop failed ({type(error).__name__}: {error}); "
                    "the actor was stopped. This is a bug in roost: please report it")
                internal.__cause__ = error
                self._finalize(FAILURE, internal)
        finally:
            self.current = None
            if self.task is asyncio.current_task():
                self.task = None

    async def _drain_once(self) -> None:
        mailbox = self.mailbox
        user = mailbox.user_lane
        handled = 0
        lingered = False
        while self.state != STOPPED:
            if mailbox.has_system:
                self.current = None
                await self._handle_system(mailbox.get_system())
            elif self.state == RUNNING:
                if not user:
                    if lingered:
                        return
                    # Linger one loop tick: an asker that gets our reply usually sends its
                    # next request within that tick, and then needs no new task.
                    lingered = True
                    await asyncio.sleep(0)
                    continue
                # The hot path, inlined: no per-message coroutine besides receive itself.
                envelope = mailbox.get_nowait()
                assert envelope is not None  # the lane was not empty
                self.current = envelope
                trace = envelope.trace
                if trace is not None and trace.run_id is not None:  # part of a run: a span
                    self.span = self._message_span(envelope, trace)
                try:
                    result = await self.actor.receive(envelope.message)  # type: ignore[union-attr]
                except asyncio.CancelledError as cancelled:
                    if self._abandoned is envelope and not self._killing:
                        self._absorb_abandon(envelope)
                    elif self._killing:
                        # Killed by a stop or restart that could not wait for this message:
                        # after a restart the asker is told the ref still works.
                        self._absorb_kill()
                        killed = (ActorStopped(self.path, envelope.message, KILLED)
                                  if self._killed_for_stop
                                  else ActorRestarted(self.path, envelope.message))
                        self._reply_error(envelope, killed)
                        if self.span is not None:
                            self._span_failed(killed, envelope, failed=False)
                    elif asyncio.current_task().cancelling():  # type: ignore[union-attr]
                        if self.span is not None:
                            self._span_failed(cancelled, envelope, failed=False)
                            self.span.end()
                            self.span = None
                        raise  # this task is being cancelled (shutdown)
                    else:
                        # Something receive awaited was cancelled, not this actor: a failure.
                        error = RuntimeError(
                            f"{self.path}: receive raised CancelledError while handling "
                            f"{type(envelope.message).__name__} although the actor was not "
                            "cancelled (a task or future it awaited was)")
                        error.__cause__ = cancelled
                        self._receive_failed(envelope, error)
                except GeneratorExit as escaped:  # not an exit of this actor: a failure
                    error = RuntimeError(
                        f"{self.path}: receive raised GeneratorExit while handling "
                        f"{type(envelope.message).__name__} (a generator's close escaped it)")
                    error.__cause__ = escaped
                    self._receive_failed(envelope, error)
                except Exception as error:
                    if self.span is not None:
                        self._span_failed(error, envelope, failed=envelope.reply is None or
                                          isinstance(error, _CHECKPOINT_FAILED))
                    if envelope.reply is None:
                        self._fail(error, envelope, "receive")
                    else:
                        self._reply_error(envelope, error)
                        if isinstance(error, _CHECKPOINT_FAILED):
                            # Its state cannot be saved, so it cannot be trusted either:
                            # restart from the last good checkpoint (the asker has its error).
                            self._fail(error, None, "receive")
                else:
                    # Read after receive: forward() hands the reply to another actor.
                    reply = envelope.reply
                    if reply is not None:
                        if not reply.done():
                            reply.set_result(result)
                        else:
                            self._late_reply(envelope, result)
                if self._abandoned is not None:  # receive swallowed the cancellation
                    self._abandoned = None
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                if self.span is not None:
                    self.span.end()
                    self.span = None
                # Drop our references: an untracked envelope must not sit in a cycle
                # (e.g. through an exception's traceback that holds this frame).
                self.current = envelope = None  # type: ignore[assignment]
                handled += 1
                if handled == FAIRNESS:
                    handled = 0
                    await asyncio.sleep(0)
            elif self.state == NEW:
                await self._start()
            else:
                return  # suspended: only system messages until the supervisor decides
            lingered = False

    def _message_span(self, envelope: Envelope, trace: TraceContext) -> OpenSpan | None:
        """Start the span of handling `envelope`, a message of run `trace.run_id`, as a child
        of the span that sent it; None when tracing is off or the actor only passes messages
        on (a supervisor or pool: the worker's span then hangs under the sender's)."""
        tracer = self.engine.tracer
        if tracer is None or not tracer.enabled:
            return None
        actor = self.actor
        if isinstance(actor, Supervisor):
            # What it forwards is sent from the sender's span, not from one of its own.
            envelope.outgoing = TraceContext(trace.trace_id, trace.span_id, trace.run_id)
            return None
        if not getattr(actor, "message_spans", True):
            return None
        outgoing = envelope.trace_context()
        span: OpenSpan = tracer.start(
            type(envelope.message).__name__, SpanKind.MESSAGE, trace_id=outgoing.trace_id,
            span_id=outgoing.span_id, parent_span_id=trace.span_id, actor=self.path,
            run_id=trace.run_id)
        if trace.step is not None:
            span.attributes["step"] = trace.step
        if envelope.crashes:
            span.attributes["redelivery"] = envelope.crashes
        return span

    def _receive_failed(self, envelope: Envelope, error: Exception) -> None:
        """`receive` failed with `error`: the asker gets it, or else the actor fails."""
        if self.span is not None:
            self._span_failed(error, envelope, failed=envelope.reply is None)
        if envelope.reply is None:
            self._fail(error, envelope, "receive")
        else:
            self._reply_error(envelope, error)

    def _span_failed(self, error: BaseException, envelope: Envelope, *, failed: bool) -> None:
        """Record on the message's span that handling it raised `error`; with `failed`, that
        the actor failed of it (its supervisor decides next: see `_start` and `_finalize`)."""
        span = self.span
        assert span is not None
        span.fail(error)
        if failed:
            if envelope.reply is not None:
                then = "the asker got the error"
            elif envelope.crashes + 1 >= self.poison_after:
                then = "dead-lettered as poison"
            else:
                then = "kept for redelivery after the restart"
            span.event("actor_failed", error_type=type(error).__name__, message=then)
            self.crash_run = span.run_id

    def abandon(self, message: object) -> bool:
        """Give up on `message`, whose asker stopped waiting for it: take it out of the
        mailbox if it is still queued, or cancel its handling if it is being handled. The
        actor then goes on with its next message, as it is (not restarted); a `receive`
        that ignores the cancellation keeps the actor busy until it ends. True if found."""
        queued = self.mailbox.withdraw(message)
        if queued is not None:
            _unanswered(queued)
            return True
        current = self.current
        if current is None or current.message is not message:
            return False
        task = self.task
        if (task is not None and not task.done() and self.state == RUNNING
                and not self._killing and self._abandoned is None):
            self._abandoned = current
            task.cancel(f"{self.path}: its asker gave up on {type(message).__name__}")
        return True

    def _absorb_abandon(self, envelope: Envelope) -> None:
        """The CancelledError of `abandon` arrived: end the message, and carry on."""
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        self._abandoned = None
        if envelope.reply is not None:
            envelope.reply.cancel()
        if self.span is not None:
            self.span.event("abandoned", reason="its asker stopped waiting")
        _log.info("message_abandoned", actor=self.path, message=type(envelope.message).__name__)

    def _absorb_kill(self) -> None:
        """The CancelledError of our own kill arrived: carry on (stopping or restarting)."""
        asyncio.current_task().uncancel()  # type: ignore[union-attr]
        self._killing = False

    @staticmethod
    def _reply_error(envelope: Envelope, error: BaseException) -> None:
        reply = envelope.reply
        if reply is not None and not reply.done():
            reply.set_exception(error)

    async def _start(self, report: bool = True) -> BaseException | None:
        """Create (if needed) and start the instance; a failure is returned and, if `report`,
        reported to the supervisor (else the caller waiting for the start owns it)."""
        self._starting = True
        self._start_began = self.loop.time()
        self._step_begins()
        try:
            actor = self.actor if self.actor is not None else self.instantiate()
            await self.engine.hydrate(self, actor)
            await actor.on_start()
        except asyncio.CancelledError:
            if not self._killing:
                raise
            # A start that hung past the timeout was cancelled: it failed.
            self._absorb_kill()
            error: Exception = TimeoutError(
                f"{self.path}: on_start did not finish within {self.start_timeout:g}s "
                "and was cancelled")
            return self._start_failed(error, report)
        except GeneratorExit as escaped:  # not an exit of this actor: a failed start
            failed = RuntimeError(f"{self.path}: on_start raised GeneratorExit (a generator's "
                                  "close escaped it)")
            failed.__cause__ = escaped
            return self._start_failed(failed, report)
        except Exception as error:
            return self._start_failed(error, report)
        finally:
            self._starting = False
        if self.state >= STOPPING:
            return None  # stopped (or abandoned) while starting: do not come back to life
        self._started = True
        self.state = RUNNING
        if self.crash_run is not None:  # a restart after a crash in a run: the run hears of it
            self.engine.tracer.run_event(
                self.crash_run, "actor_restarted", actor=self.path, restarts=self.restarts,
                error_type=None if self.crash is None else type(self.crash).__name__)
            self.crash_run = None
        self.crash = None
        self.started_at = self.engine.clock()
        return None

    def _start_failed(self, error: Exception, report: bool) -> Exception:
        if self.state >= STOPPING:
            return error
        if report:
            self._fail(error, None, "start")
        else:
            self.state = SUSPENDED
        return error

    def _fail(self, error: BaseException | None, envelope: Envelope | None, context: str) -> None:
        """Suspend after a crash or exit, keep (or dead-letter) the message, tell the parent."""
        self.state = SUSPENDED
        if error is not None:
            self.crash = error
        if envelope is not None and error is not None:
            envelope.crashes += 1
            if envelope.crashes >= self.poison_after:
                sender = envelope.sender.path if envelope.sender is not None else None
                self.engine.dead_letters.record(
                    "poison", self.path, envelope.message, sender, error,
                    crashes=envelope.crashes,
                )
                _log.warning(
                    "poison_message_dead_lettered",
                    actor=self.path,
                    message_type=type(envelope.message).__name__,
                    crashes=envelope.crashes,
                    error_type=type(error).__name__,
                )
            else:
                self.mailbox.push_front(envelope)
        if error is not None:
            _log.warning(
                "actor_failed",
                actor=self.path,
                context=context,
                error_type=type(error).__name__,
                error=str(error),
                message_type=None if envelope is None else type(envelope.message).__name__,
            )
        if self.parent is None:
            self.engine.fail(error)
        else:
            self.parent.post_system(ChildFailed(self, error, context, self.restarts))

    # --- system messages ------------------------------------------------------------------

    async def _handle_system(self, message: Any) -> None:
        if isinstance(message, Stop):
            await self._stop_sequence(message.reason, message.error)
        elif isinstance(message, RestartChildren):
            if self.state < STOPPING:
                await self.supervision_engine().restart(message.group, message.failed)
        elif isinstance(message, Exit):
            if self.state < STOPPING:
                await self._exit()
        elif isinstance(message, StopInstance):
            await self._stop_instance()
            if message.ack is not None and not message.ack.done():
                message.ack.set_result(None)
        elif isinstance(message, StartInstance):
            if message.fresh:
                await self._stop_instance()
            error = await self._start(message.report) if self.state in (NEW, SUSPENDED) else None
            if message.ack is not None and not message.ack.done():
                message.ack.set_result(error)
        elif isinstance(message, ChildFailed):
            child = message.child
            # A failure of an instance that has been restarted since (e.g. by a group
            # restart) is out of date: the fresh instance is not restarted again for it.
            if (self.state < STOPPING and self.children.get(child.name) is child
                    and message.generation == child.restarts):
                await self.supervision_engine().child_failed(child, message.error, message.context)
        elif isinstance(message, ChildStopped):
            # A kept spec stays in its place in the start order; `_finalize` removed any other.
            if self.supervision is not None:
                self.supervision.forget(message.child)

    async def _exit(self) -> None:
        """The actor ended itself (`ctx.stop()`). A child that its supervisor would not restart
        after a normal exit (transient or temporary) stops right here, and its supervisor
        hears `ChildStopped`; any other goes to its supervisor as `ChildFailed`. A supervisor
        stops its exited children one at a time, so thousands of children ending together
        (pipeline runs) would each wait in its queue, actor and all, for their turn."""
        parent = self.parent
        if parent is None or should_restart(self.options.restart, abnormal=False):
            self._fail(None, None, "exit")
            return
        _log.info("child_terminated", supervisor=parent.path, context="child_terminated",
                  reason=NORMAL, offender=self.path, during="exit", restarts=self.restarts)
        await self._stop_sequence(NORMAL, None)

    def _forget_supervision(self) -> None:
        """A fresh instance gets a fresh restart history (and no pending restarts)."""
        if self.supervision is not None:
            self.supervision.close()
            self.supervision = None

    def supervision_engine(self) -> Any:
        """The object that decides what happens when a child fails (created on first use)."""
        if self.supervision is None:
            self.supervision = self.engine.supervision_for(self)
        return self.supervision

    async def _stop_instance(self) -> None:
        if self.state >= STOPPING:
            return
        self.state = SUSPENDED
        self._step_begins()
        self._forget_supervision()
        await self.stop_children()
        old = self.actor
        if old is not None and self._started:
            await self._run_on_stop(old)
        self.actor = None
        self._started = False

    async def request(self, message: Any, ack: asyncio.Future[Any]) -> Any:
        """Post a restart phase and wait for its ack, each of its steps bounded (`_wait_steps`).

        Returns the ack's value; None if the actor stopped meanwhile; a `TimeoutError`
        if a step ignored its kill and the actor had to be abandoned.
        """
        since = self.loop.time()
        self.post_system(message)
        limit = await self._wait_steps({ack, self.termination()}, since, for_stop=False)
        if limit is not None:
            self._abandon()
            return TimeoutError(f"{self.path}: did not answer {type(message).__name__} "
                                f"within {limit:g}s and was abandoned")
        return ack.result() if ack.done() else None

    async def _wait_steps(self, waiting: set[asyncio.Future[Any]], since: float, *,
                          for_stop: bool) -> float | None:
        """Wait until one of `waiting` is done, killing the actor where a step overruns.

        Each step has its own bound: a message in progress `shutdown_timeout` from `since`,
        `on_start` its `start_timeout` from its beginning; stopping the instance for a
        restart bounds itself (each child's stop, then `on_stop`), so slow but timely
        children never get their parent killed. Returns None, or the timeout of a step
        that ignored its kill for `KILL_GRACE` seconds (the caller abandons the actor).
        """
        loop = self.loop
        while not any(future.done() for future in waiting):
            step = self._next_step()
            if self._starting:
                limit, deadline = self.start_timeout, self._start_began + self.start_timeout
            elif self.state == RUNNING:  # it may be busy with a message
                limit, deadline = self.shutdown_timeout, since + self.shutdown_timeout
            else:  # stopping its instance for a restart, or about to start
                limit, deadline = math.inf, math.inf
            watched = {*waiting, step}
            await asyncio.wait(watched, timeout=_bound(max(0.0, deadline - loop.time())),
                               return_when=asyncio.FIRST_COMPLETED)
            if any(future.done() for future in watched):
                continue
            if for_stop:
                self._killed_for_stop = True
            self.kill(limit)
            await asyncio.wait(watched, timeout=KILL_GRACE, return_when=asyncio.FIRST_COMPLETED)
            if not any(future.done() for future in watched):
                return limit
        return None

    def _next_step(self) -> asyncio.Future[None]:
        """A future resolved when the next step (stopping the instance, `on_start`) begins."""
        if self._step is None:
            self._step = self.loop.create_future()
        return self._step

    def _step_begins(self) -> None:
        step, self._step = self._step, None
        if step is not None and not step.done():
            step.set_result(None)

    def post_restart(self, group: list[Cell], failed: Cell) -> None:
        """Restart `group` (children of this actor) once this actor gets to it."""
        self.post_system(RestartChildren(group, failed))

    def fail_from_supervision(self, error: BaseException) -> None:
        """Fail this actor because supervising its children failed (intensity exceeded)."""
        self._fail(error, None, "supervision")

    def post_exit(self) -> None:
        """The actor ends itself (`ctx.stop()`): its supervisor decides after this message."""
        if self.state < STOPPING:
            self.post_system(Exit())

    # --- stopping -------------------------------------------------------------------------

    async def stop_requested(self) -> None:
        """Stop on a user's request (`ref.stop()`, `ctx.stop(ref)`, `system.stop(ref)`).

        From inside this actor's own message handling it is `ctx.stop()`: it returns at
        once and the actor exits normally after the current message. From inside a
        descendant's, the stop is started and this returns at once: waiting would
        deadlock, since this actor waits for the descendant to stop first. Otherwise it
        is `stop()`.
        """
        current = handling.get()
        if current is self:
            self.post_exit()
            return
        while current is not None:
            current = current.parent
            if current is self:
                self.engine.own(self.loop.create_task(self.stop(),
                                                      context=self.engine.base_context()))
                return
        await self.stop()

    async def stop(self, reason: StopReason = NORMAL, error: BaseException | None = None) -> None:
        """Stop and wait until stopped; kill after `shutdown_timeout` if stuck in a message.

        A timeout of 0 kills a busy actor at once; `math.inf` waits for ever. The runtime's
        own stops call this; a user's request goes through `stop_requested`, which never
        waits for a stop that waits for the caller.
        """
        if self.state == STOPPED:
            return
        done = self.termination()
        if self.state < STOPPING:
            if self._stopping is None:
                self._stopping = self.loop.create_future()
            since = self.loop.time()
            self.post_system(Stop(reason, error))
            # Phase 1: until it gets to the stop (a message in progress gets its shutdown
            # timeout, as does on_start; the stop of an instance for a restart bounds itself).
            if await self._wait_steps({self._stopping, done}, since, for_stop=True) is not None:
                self._abandon()
                return
        # Phase 2: the stop sequence bounds itself (children and on_stop have timeouts).
        await asyncio.shield(done)

    def kill(self, timeout: float) -> None:
        """Cancel the message (or `on_start`) being handled: it ran past `timeout` seconds."""
        task = self.task
        busy = self.state == RUNNING or self._starting
        if task is not None and not task.done() and busy and self.state < STOPPING:
            self._killing = True
            _log.warning("actor_killed", actor=self.path, timeout=timeout)
            task.cancel(f"{self.path}: killed, still busy after its timeout of {timeout:g}s")

    def _abandon(self) -> None:
        """Give up on an actor that ignored its kill: stop it, and leave its task running."""
        self.engine.abandon(self.task, "actor_abandoned", self.path,
                            f"ignored cancellation for {KILL_GRACE:g}s after its kill")
        self._finalize(KILLED, None)

    def termination(self) -> asyncio.Future[None]:
        if self._done is None:
            self._done = self.loop.create_future()
        return self._done

    async def _stop_sequence(self, reason: StopReason, error: BaseException | None) -> None:
        """Stop the children, run `on_stop`, and finalize with the reason that applies.

        `failure` wins over `killed`, which wins over `normal`: a crash not yet
        followed by a restart is a failure whoever stops the actor, and a message or
        `on_stop` cut short at the shutdown timeout makes a normal stop `killed`.
        """
        if self.state >= STOPPING:
            return
        if self.state == SUSPENDED and self.crash is not None:
            reason, error = FAILURE, self.crash
        self.state = STOPPING
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)
        killed = self._killed_for_stop
        if self.supervision is not None:
            self.supervision.close()
        # Children of an actor that failed for good are given up on with it.
        if reason == FAILURE:
            await self.stop_children(FAILURE, error)
        else:
            await self.stop_children()
        if self.actor is not None and self._started and not await self._run_on_stop(self.actor):
            killed = True
        self._finalize(KILLED if killed and reason == NORMAL else reason, error)

    async def stop_children(self, reason: StopReason = NORMAL,
                            error: BaseException | None = None) -> None:
        """Stop every child, each within its shutdown timeout, in reverse start order.

        A supervisor with `stop_children_together` (a pool) stops them all at once.
        """
        children = list(self.children.values())
        if not children:
            return
        if getattr(self.actor, "stop_children_together", False):
            await asyncio.gather(*(child.stop(reason, error) for child in children))
        else:
            for child in reversed(children):
                await child.stop(reason, error)
        for child in children:
            if self.children.get(child.name) is child:
                del self.children[child.name]
            if child.stop_reason == KILLED:
                _log.warning("child_shutdown_error", supervisor=self.path,
                             context="shutdown_error", reason=KILLED, offender=child.path)

    async def _run_on_stop(self, actor: Actor) -> bool:
        """Run `on_stop` within the shutdown timeout; False if it had to be cut short."""
        from roost.actors.actor import Actor

        if type(actor).on_stop is Actor.on_stop:
            return True  # nothing to run
        timeout = self.shutdown_timeout
        if timeout == 0:  # stop at once (OTP's brutal_kill): on_stop is not run
            _log.info("on_stop_skipped", actor=self.path, timeout=0)
            return False
        # A separate task, so an on_stop that swallows cancellation cannot hang this actor.
        task = self.loop.create_task(actor.on_stop(), context=contextvars.Context())
        # Most on_stops end in their first step: those need no timeout timer, which would
        # keep this actor (its context) alive, cancelled, until it was due.
        await asyncio.sleep(0)
        done = {task} if task.done() else (await asyncio.wait({task}, timeout=_bound(timeout)))[0]
        if not done:
            task.cancel(f"{self.path}: on_stop cancelled after its shutdown_timeout of "
                        f"{timeout:g}s")
            _log.warning("on_stop_timed_out", actor=self.path, timeout=timeout)
            done, _ = await asyncio.wait({task}, timeout=KILL_GRACE)
            if not done:
                self.engine.abandon(task, "on_stop_abandoned", self.path,
                                    f"ignored cancellation for {KILL_GRACE:g}s")
            return False
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            _log.warning(
                "on_stop_failed", actor=self.path, error_type=type(error).__name__, error=str(error)
            )
        return True

    def _finalize(self, reason: StopReason, error: BaseException | None) -> None:
        """Mark stopped, dead-letter what is queued, and tell watchers and the parent."""
        if self.state == STOPPED:
            return
        self.state = STOPPED
        self.stop_reason = reason
        self.stop_error = error
        if self.crash_run is not None:  # crashed in a run and never restarted: stopped instead
            self.engine.tracer.run_event(
                self.crash_run, "actor_stopped", actor=self.path, reason=str(reason),
                error_type=None if error is None else type(error).__name__)
            self.crash_run = None
        current, self.current = self.current, None
        if current is not None:  # the message being handled will get no reply now
            self._reply_error(current, ActorStopped(self.path, current.message, reason, error))
        for envelope in self.mailbox.drain():
            if envelope.forced:  # a runtime notice (Terminated) is no one's lost message
                continue
            self._undeliverable(envelope)
        self.mailbox.release_waiters(_MailboxClosed())
        self.engine.unregister(self)
        terminated = Terminated(self.ref, reason, error)
        for watcher in self.watchers or ():
            if watcher.watching is not None:
                watcher.watching.discard(self)
            watcher.deliver_forced(terminated)
        self.watchers = None
        for watched in self.watching or ():
            if watched.watchers is not None:
                watched.watchers.discard(self)
        self.watching = None
        if self._stopping is not None and not self._stopping.done():
            self._stopping.set_result(None)
        if self._done is not None and not self._done.done():
            self._done.set_result(None)
        parent = self.parent
        if parent is not None:
            if not self.listed and parent.children.get(self.name) is self:
                # Gone at once, not when the parent gets to ChildStopped: a child started
                # under its name meanwhile must come last in the start order, not take its place.
                del parent.children[self.name]
            parent.post_system(ChildStopped(self, reason, error))
        elif reason == FAILURE:  # the root died (e.g. its message loop broke): so does the system
            self.engine.fail(error)
        _log.debug("actor_stopped", actor=self.path, reason=reason)

    # --- watching -------------------------------------------------------------------------

    def watch(self, target: Cell) -> None:
        """Deliver `Terminated(target.ref, reason)` to this actor once when `target` stops."""
        if target.state == STOPPED:
            self.deliver_forced(Terminated(target.ref, target.stop_reason or NORMAL,
                                           target.stop_error))
            return
        if target.watchers is None:
            target.watchers = set()
        target.watchers.add(self)
        if self.watching is None:
            self.watching = set()
        self.watching.add(target)

    def unwatch(self, target: Cell) -> None:
        """Stop watching `target`; no `Terminated` will come from it, even one already queued."""
        if target.watchers is not None:
            target.watchers.discard(self)
        if self.watching is not None:
            self.watching.discard(target)
        lane = self.mailbox.user_lane
        if target.state == STOPPED and lane:  # only a stopped target can have queued one
            ref = target.ref
            kept = [e for e in lane if not (e.forced and type(e.message) is Terminated
                                            and e.message.ref is ref)]
            if len(kept) != len(lane):
                lane.clear()
                lane.extend(kept)

    # --- introspection --------------------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """A snapshot of this actor's state, mailbox and restarts."""
        return {
            "path": self.path,
            "state": STATE_NAMES[self.state],
            "restarts": self.restarts,
            "children": sum(1 for child in self.children.values() if child.state != STOPPED),
            **self.mailbox.statistics(),
        }


def _unanswered(envelope: Envelope) -> Envelope:
    """`envelope` with its reply cancelled and dropped: its asker has its answer another way
    (the error raised to it, or it gave up), and a reply future failed as well would be one
    nobody retrieves (asyncio warns of it)."""
    reply, envelope.reply = envelope.reply, None
    if reply is not None:
        reply.cancel()
    return envelope
