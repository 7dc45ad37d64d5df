"""`Cluster`: the node an `ActorSystem` on a PostgreSQL store is (`system.cluster`).

A node has a row in `roost_nodes` and holds the leases (`roost_leases`) of the runs it
drives. One heartbeat task renews the row and every lease in one statement every
`heartbeat` seconds, and claims, while the node has free admission slots, the runs
whose lease expired (their node died or stalled) or that wait queued, of the pipelines
it has registered: a claim bumps the run's epoch, and the node resumes the run from
its last checkpoint. A run taken over more than `max_takeovers` times is parked
(status `suspended`, the reason in its error) instead of looping through the nodes.

Every write of a run this node leases is conditional on its lease (`Fence`, added by
the store, see `_fencing`), so a node that lost a lease (paused past it) has its late
writes refused with `LeaseLost`: its run's actor stops there, and the new owner goes
on. Before a run's tool attempt the node makes sure its lease outlasts the attempt
(`before_tool`).

Nodes wake each other with LISTEN/NOTIFY, as a hint beside the heartbeat's claims: a node
that queues a run, lets leases go or stops says runs are claimable, and the step-task
queue (`tasks`) signals new tasks and answers on the same listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime
from typing import Any, TypeVar

import msgspec

from roost._logging import get_logger
from roost.cluster import _statements as sql
from roost.cluster import _task_statements as task_sql
from roost.cluster._fencing import runs_written
from roost.cluster.settings import NodeSettings
from roost.cluster.tasks import StepTasks
from roost.errors import (
    CheckpointCorrupt,
    LeaseLost,
    PipelineChanged,
    RecordCorrupt,
    StoreError,
)
from roost.storage import RunStatus
from roost.storage.ops import Fence, Lease, Op

_log = get_logger("roost.cluster")
T = TypeVar("T")
#: Seconds the claims a freed slot asks for wait, so that slots freed together claim together.
_CLAIM_GATHER = 0.05


class NodeInfo(msgspec.Struct, frozen=True):
    """One node of the cluster, as `roost_nodes` has it.

    Attributes:
        node_id: its id. host, pid: where it runs. pools: the pools it declared.
        started_at, heartbeat: when it started and last renewed (seconds since the
            epoch, the database's clock).
        alive: it renewed within its `node_dead_after` and has not stopped.
        stopped: it stopped cleanly (its leases were handed back).
        leases: the runs it holds leases of.
    """

    node_id: str
    host: str
    pid: int
    pools: list[str]
    started_at: float
    heartbeat: float
    alive: bool
    stopped: bool
    leases: int


class LeaseInfo(msgspec.Struct, frozen=True):
    """One run's lease: its owner (None: queued, or parked), epoch, takeovers, why it is
    parked (None if not), and the seconds it has left (negative: expired)."""

    run_id: str
    pipeline: str
    owner: str | None
    epoch: int
    takeovers: int
    parked: str | None
    remaining: float


class _Held:
    """A lease this node holds: its epoch, and until when (this process's monotonic clock,
    measured from before the renewal was sent, so never later than the server's)."""

    __slots__ = ("confirmed", "epoch", "until")

    def __init__(self, epoch: int, until: float, *, confirmed: bool) -> None:
        self.epoch = epoch
        self.until = until
        self.confirmed = confirmed  # its row has been seen (a new run's may not be stored yet)


class Cluster:
    """This system as a node of the cluster that shares its PostgreSQL store.

    Args:
        system: the `ActorSystem` (typed loosely: the cluster sits below the runtime).
        settings: the node's id, lease, heartbeat and limits.
    """

    def __init__(self, system: Any, settings: NodeSettings) -> None:
        self.system = system
        self.settings = settings
        self.node_id = settings.node_id
        self._held: dict[str, _Held] = {}
        self._lost: dict[str, int] = {}  # run id -> the epoch this node held it at
        self._new: dict[str, Lease] = {}  # runs being stored here: their first write leases
        self._ended: set[str] = set()  # leases to delete at the next heartbeat
        self._let_go: set[str] = set()  # leases to expire at the next heartbeat
        self._wake = asyncio.Event()
        self._announce = False  # runs wait to be claimed: tell the other nodes
        self._listener: Any = None
        # Whether a claim may find runs now: the last one found some, or a run was queued
        # here since. A freed slot claims at once only then; otherwise at the next beat.
        self._claimable = True
        self._task: asyncio.Task[None] | None = None
        # Runs the heartbeat claimed and is resuming: in tasks of their own, so a resume
        # that waits (for an earlier actor of the run to stop, say) never holds the
        # heartbeat, and with it every lease of the node, past the lease.
        self._resuming: set[asyncio.Task[bool]] = set()
        pipelines = system.pipelines
        #: The step tasks it sends to other nodes' pools and runs for them.
        self.tasks = StepTasks(self, pipelines.run_task, pipelines.registered_names,
                               lambda: pipelines.admission.limit)
        #: Runs this node took over (from another node, or its own earlier epoch), parked,
        #: and whose lease it found lost (taken over while it stalled).
        self.took_over = 0
        self.parked = 0
        self.lost = 0

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Join the cluster (the node's row), fence the store's writes, start the heartbeat.

        Raises:
            StoreError: the server could not be written.
        """
        settings = self.settings
        await self._sql(lambda c: sql.join(c, self.node_id, socket.gethostname(), os.getpid(),
                                           list(settings.pools), settings.dead_after))
        self.system.store.fence_with(self._fences)
        self.tasks.start()
        self._task = asyncio.get_running_loop().create_task(
            self._heartbeat(), name=f"roost-heartbeat:{self.node_id}")
        _log.info("node_started", node=self.node_id, lease=settings.lease,
                  heartbeat=settings.heartbeat)

    async def stop(self) -> None:
        """Stop the heartbeat and hand every lease back (any node takes the runs over at
        once); called after the system's actors stopped."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for resuming in self._resuming:
            resuming.cancel()
        if self._resuming:
            await asyncio.wait(self._resuming)
        await self.tasks.stop()
        if self._listener is not None:
            with contextlib.suppress(StoreError):
                await self.system.store.unlisten(self._listener)
            self._listener = None
        try:
            await self._sql(lambda c: sql.leave(c, self.node_id))
        except StoreError as error:  # its leases expire on their own
            _log.warning("node_leave_failed", node=self.node_id, error=str(error))
        self.system.store.fence_with(None)
        self._held.clear()

    # --- what the pipelines tell the node --------------------------------------------------

    def starting(self, run_id: str, pipeline: str, *, queued: bool = False) -> None:
        """Run `run_id` is about to be stored here: its first write gives it its lease (this
        node's, epoch 1; or, `queued`, none yet: any node with a free slot claims it)."""
        owner = None if queued else self.node_id
        self._new[run_id] = Lease(run_id, pipeline, owner, self.settings.lease)
        if queued:
            self._claimable = True
        else:
            self._held[run_id] = _Held(1, time.monotonic() + self.settings.lease,
                                       confirmed=False)

    def not_started(self, run_id: str) -> None:
        """The record of a run announced with `starting` could not be stored."""
        self._new.pop(run_id, None)
        self._held.pop(run_id, None)

    def ended(self, run_id: str) -> None:
        """The run ended here (or parked at its gates): its lease goes at the next heartbeat."""
        self._lost.pop(run_id, None)
        if self._held.pop(run_id, None) is not None:
            self._ended.add(run_id)

    def let_go(self, run_id: str) -> None:
        """The run stopped here without ending (its store write failed, or its lease was
        lost): its lease expires at the next heartbeat, so that any node goes on with it."""
        self._lost.pop(run_id, None)
        if self._held.pop(run_id, None) is not None:
            self._let_go.add(run_id)
            self._wake.set()

    def queued(self) -> None:
        """A run was stored queued for the cluster: claim it soon here, and tell the other
        nodes (a wake-up hint; they also claim at each heartbeat)."""
        self._claimable = True
        self._announce = True
        self._wake.set()

    def slot_freed(self) -> None:
        """A run slot freed here: claim queued runs soon (not at the next beat) if a claim
        may find some."""
        if self._claimable:
            self._wake.set()

    def holds(self, run_id: str) -> bool:
        """Whether this node holds the run's lease (as far as it knows)."""
        return run_id in self._held

    def epoch_of(self, run_id: str) -> int | None:
        """The epoch at which this node holds the run's lease (None: it does not)."""
        held = self._held.get(run_id)
        return None if held is None else held.epoch

    async def before_tool(self, run_id: str, seconds: float) -> None:
        """Make sure this node's lease of `run_id` outlasts a tool attempt of `seconds` (and
        a heartbeat): renew it first if it would not. Does nothing for a run it does not
        lease.

        Raises:
            LeaseLost: the node no longer holds the lease; the attempt must not start.
            StoreError: the lease could not be renewed (the server is unreachable).
        """
        lost = self._lost.get(run_id)
        if lost is not None:
            raise LeaseLost(run_id, self.node_id, lost, None, None)
        held = self._held.get(run_id)
        if held is None:
            return
        needed = seconds + self.settings.heartbeat
        if held.until - time.monotonic() >= needed:
            return
        sent = time.monotonic()
        epoch = held.epoch
        left = await self._sql(lambda c: sql.extend(c, run_id, self.node_id, epoch, needed))
        if left is None:
            self._lose(run_id, epoch)
            raise LeaseLost(run_id, self.node_id, epoch, None, None)
        held.until = max(held.until, sent + left)

    # --- queries --------------------------------------------------------------------------

    async def nodes(self) -> list[NodeInfo]:
        """Every node that has run on the store, oldest first, with whether it is alive."""
        rows = await self._sql(sql.nodes)
        return [NodeInfo(row["id"], row["host"], row["pid"], list(row["pools"]),
                         _seconds(row["started_at"]), _seconds(row["heartbeat"]),
                         bool(row["alive"]), row["stopped_at"] is not None, row["leases"])
                for row in rows]

    async def leases(self) -> list[LeaseInfo]:
        """Every run lease in the store (runs in flight or queued, and parked ones)."""
        rows = await self._sql(sql.leases)
        return [LeaseInfo(row["run_id"], row["pipeline"], row["owner"], row["epoch"],
                          row["takeovers"], row["parked"], row["remaining"]) for row in rows]

    def statistics(self) -> dict[str, Any]:
        """The node's id, the leases it holds, the runs it took over, parked and lost, and
        the step tasks it sent to other nodes' pools and ran for them."""
        return {"node": self.node_id, "leases": len(self._held), "took_over": self.took_over,
                "parked": self.parked, "lost": self.lost, "tasks_sent": self.tasks.sent,
                "tasks_served": self.tasks.served}

    # --- the store's fencer ---------------------------------------------------------------

    def _fences(self, ops: Sequence[Op]) -> list[Op]:
        """The lease conditions of a write: a `Fence` for each run it writes that this node
        leases (or lost), the `Lease` of a run it is storing."""
        fences: list[Op] = []
        for run_id in runs_written(ops):
            new = self._new.pop(run_id, None)
            if new is not None:
                fences.append(new)
                continue
            held = self._held.get(run_id)
            epoch = held.epoch if held is not None else self._lost.get(run_id)
            if epoch is not None:
                fences.append(Fence(run_id, self.node_id, epoch))
        return fences

    # --- the heartbeat --------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat
        next_beat = 0.0
        while True:
            if time.monotonic() >= next_beat or self._let_go:  # runs let go: at once
                next_beat = time.monotonic() + interval
                await self._guarded(self._listen())
                await self._guarded(self._beat())
            await self._guarded(self._claim(wait=False))
            if self._announce:
                self._announce = False
                await self._guarded(self._sql(lambda c: sql.announce(c, self.node_id)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_beat - time.monotonic()))
                await asyncio.sleep(_CLAIM_GATHER)
            self._wake.clear()

    async def _guarded(self, work: Coroutine[Any, Any, object]) -> None:
        """Run one beat or claim; a failure is logged and the next one tries again."""
        try:
            await work
        except StoreError as error:
            _log.warning("heartbeat_failed", node=self.node_id, error=str(error))
        except Exception as error:  # the heartbeat must outlive any one failure
            _log.error("heartbeat_error", node=self.node_id, error=repr(error))

    async def _beat(self) -> None:
        """Renew the node's row and its leases, delete those of ended runs, expire those let go."""
        held, ended, let_go = list(self._held), list(self._ended), list(self._let_go)
        sent = time.monotonic()
        tasks = self.tasks.running()
        rows = await self._sql(lambda c: sql.beat(c, self.node_id, self.settings.lease, held,
                                                  ended, let_go, tasks))
        self._ended.difference_update(ended)
        self._let_go.difference_update(let_go)
        if let_go:
            self._claimable = True  # those runs wait for a node now (this one, maybe)
            self._announce = True
        found = {run_id: (owner, epoch, left) for run_id, owner, epoch, left in rows}
        for run_id in held:
            lease = self._held.get(run_id)
            if lease is None:
                continue  # ended while the beat was on its way
            row = found.get(run_id)
            if row is None:
                if lease.confirmed:  # gone: the run ended or was parked by another node
                    self._lose(run_id, lease.epoch)
                continue  # a new run whose record is still being written
            owner, epoch, left = row
            if owner != self.node_id or epoch != lease.epoch:
                self._lose(run_id, lease.epoch, owner, epoch)
                continue
            lease.confirmed = True
            lease.until = sent + left

    async def _listen(self) -> None:
        """LISTEN for the cluster's wake-up hints (again, after the listener's connection
        broke): runs to claim, step tasks for this node's pools, answers to its tasks."""
        if self._listener is not None and self._listener.alive:
            return
        store = self.system.store
        if self._listener is not None:
            with contextlib.suppress(StoreError):
                await store.unlisten(self._listener)
            self._listener = None
        self._listener = await store.listen(
            [sql.CLAIMABLE, task_sql.QUEUED, task_sql.ANSWERED], self._heard)

    def _heard(self, channel: str, payload: str) -> None:
        if channel != sql.CLAIMABLE:
            self.tasks.heard(payload)
        elif payload != self.node_id:
            self._claimable = True
            self._wake.set()

    def _lose(self, run_id: str, epoch: int, holder: str | None = None,
              held_epoch: int | None = None) -> None:
        """The node no longer holds `run_id`: its writes and tool attempts are refused."""
        if self._held.pop(run_id, None) is None:
            return
        self._lost[run_id] = epoch
        self.lost += 1
        _log.warning("lease_lost", node=self.node_id, run_id=run_id, epoch=epoch,
                     holder=holder, held_epoch=held_epoch)

    async def claim(self) -> list[str]:
        """Claim now the runs of the registered pipelines whose lease expired, and the
        queued ones, up to the free slots, and resume them here (the heartbeat does this
        too); the ids of the runs resumed.

        Raises:
            StoreError: the server could not be reached.
        """
        return await self._claim()

    async def _claim(self, *, wait: bool = True) -> list[str]:
        """Claim expired or queued runs of registered pipelines, up to the free slots, and
        resume them; the ids of those resumed, if `wait`, else none (they resume in tasks
        of their own)."""
        pipelines = self.system.pipelines
        admission = pipelines.admission
        free = admission.limit - admission.active - admission.queued - len(self._resuming)
        names = pipelines.registered_names()
        if free <= 0 or not names:
            return []
        sent = time.monotonic()
        lease = self.settings.lease
        # Its actors may still be writing under a run it lost: it never claims that one back
        # until they stopped (`let_go`, `ended`).
        driving = [*self._held, *self._lost]
        claimed = await self._sql(lambda c: sql.claim(c, self.node_id, names, free, lease,
                                                      driving))
        self._claimable = bool(claimed)
        claimed_here = []
        for run_id, _pipeline, epoch, takeovers in claimed:
            self._lost.pop(run_id, None)
            self._held[run_id] = _Held(epoch, sent + lease, confirmed=True)
            if takeovers > self.settings.max_takeovers:
                try:
                    await self._park(run_id, epoch, (
                        f"parked by node {self.node_id!r}: taken over {takeovers} times "
                        f"(max_takeovers={self.settings.max_takeovers}); each node driving it "
                        "stopped or stalled, so it may be what stops them; inspect it, then "
                        "resume it with system.pipelines.resume after setting it running"))
                except Exception as error:  # e.g. the server went away: try again later
                    _log.warning("takeover_failed", node=self.node_id, run_id=run_id,
                                 error=repr(error))
                    self.let_go(run_id)
                continue
            if takeovers:
                self.took_over += 1
                _log.info("run_taken_over", node=self.node_id, run_id=run_id, epoch=epoch,
                          takeovers=takeovers)
            claimed_here.append(run_id)
        # Together: a dead node's runs resume at once, not one round trip after another.
        loop = asyncio.get_running_loop()
        resumes = [loop.create_task(self._resume(run_id)) for run_id in claimed_here]
        self._resuming.update(resumes)
        for resume in resumes:
            resume.add_done_callback(self._resuming.discard)
        if not wait or not resumes:
            return []
        going_on = await asyncio.gather(*resumes)
        return [run_id for run_id, goes_on in zip(claimed_here, going_on, strict=True)
                if goes_on]

    async def _resume(self, run_id: str) -> bool:
        """Go on with a claimed run here, unless it ended before its lease could go; whether
        it goes on."""
        pipelines = self.system.pipelines
        try:
            record = await pipelines.runs.get(run_id)
            if record.status not in (RunStatus.RUNNING, RunStatus.QUEUED):
                self.ended(run_id)
                return False
            await pipelines.resume(run_id)
        except (RecordCorrupt, CheckpointCorrupt, PipelineChanged) as error:
            # Stored state no node can go on from: every claim would fail the same way.
            try:
                await self._park(run_id, self._held[run_id].epoch,
                                 f"parked by node {self.node_id!r}: {error}")
                return False
            except Exception as park_error:  # e.g. the server went away: try again later
                _log.warning("takeover_failed", node=self.node_id, run_id=run_id,
                             error=repr(park_error))
            self.let_go(run_id)
            return False
        except Exception as error:  # any node, this one too, may try again
            _log.warning("takeover_failed", node=self.node_id, run_id=run_id, error=repr(error))
            self.let_go(run_id)
            return False
        return True

    async def _park(self, run_id: str, epoch: int, reason: str) -> None:
        """Park a run no node should go on with (taken over too often, or its stored state
        does not fit): `suspended`, with the reason, claimed by no node."""
        runs = self.system.pipelines.runs
        try:
            await self.system.store.commit([runs.change(run_id, status=RunStatus.SUSPENDED,
                                                        error=reason)])
        except RecordCorrupt as error:
            # Its record cannot be rewritten: the lease alone keeps it parked, with the reason,
            # and `roost store check` names the damage.
            _log.error("run_record_unreadable", node=self.node_id, run_id=run_id,
                       error=str(error))
        await self._sql(lambda c: sql.park(c, run_id, self.node_id, epoch, reason))
        self._held.pop(run_id, None)
        self.parked += 1
        _log.error("run_parked", node=self.node_id, run_id=run_id, reason=reason)

    async def _sql(self, function: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        return await self.system.store.on_connection(function)


def _seconds(moment: datetime | None) -> float:
    return 0.0 if moment is None else moment.timestamp()
