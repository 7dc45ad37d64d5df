"""`StepTasks`: the step-task queue through which a node runs a step in a pool another node
serves (`Step(pool="gpu")` on a node that does not declare "gpu").

The node driving the run inserts the request as a row of `roost_step_tasks` and waits.
A node that declares the pool, and has the run's pipeline registered, claims it (`FOR
UPDATE SKIP LOCKED`, for a lease its heartbeat renews), runs it in its local worker
pool, and writes the answer into the row; the owner takes the answer and deletes the
row. Requests and answers are opaque bytes here (`roost.pipelines.remote` encodes them).

Failures: a serving node that dies stops renewing its claim, and another node of the
pool claims the task once the claim runs out. An owner that lost the run's lease (taken
over) is forgotten: only tasks of the run's current epoch are claimed, and the new
owner asks again. An owner that gives up (its attempt timed out) withdraws the task.

LISTEN/NOTIFY is only a wake-up hint: a queued task notifies the pool's nodes, an answer
its owner (the node's listener hands them to `heard`), and every node also polls every
`poll` seconds (a lost notification, a listener cut by a server restart, costs at most
that).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from roost._logging import get_logger
from roost.cluster import _task_statements as sql
from roost.errors import LeaseLost, StoreError

_log = get_logger("roost.cluster")
T = TypeVar("T")

#: Seconds between polls: how late a task or answer is seen when a notification is lost.
POLL = 1.0
#: Seconds between checks that a live node serves a pool this node sends tasks to.
_SERVED_FOR = 10.0

Handler = Callable[[str, str, bytes], Awaitable[bytes]]
"""`await handler(run_id, pipeline, request)`: run a claimed task here; its answer."""


class StepTasks:
    """The step tasks of one node: those it waits for (as a run's owner), and those it runs
    for other nodes in the pools it declares.

    Args:
        cluster: the node (`Cluster`): its id, settings, the leases it holds, its store.
        handler: runs a claimed task (see `Handler`).
        pipelines: the names of the pipelines registered here (only theirs are claimed).
        capacity: the most tasks it runs for other nodes at once.
    """

    def __init__(self, cluster: Any, handler: Handler, pipelines: Callable[[], list[str]],
                 capacity: Callable[[], int], *, poll: float = POLL) -> None:
        self._cluster = cluster
        self._node = cluster.node_id
        self._pools = list(cluster.settings.pools)
        self._handler = handler
        self._pipelines = pipelines
        self._capacity = capacity
        self._poll = poll
        self._waiting: dict[int, asyncio.Future[tuple[str, bytes]]] = {}
        self._running: dict[int, asyncio.Task[None]] = {}
        self._served: dict[str, float] = {}  # pool -> when to check again that a node serves it
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Tasks this node sent to other nodes, and ran for them.
        self.sent = 0
        self.served = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._loop(), name=f"roost-step-tasks:{self._node}")

    async def stop(self) -> None:
        """Stop polling and serving (a task running here is claimed again by another node
        once its claim runs out)."""
        tasks = [t for t in (self._task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    def running(self) -> list[int]:
        """The ids of the tasks this node runs for others (its heartbeat renews their claims)."""
        return list(self._running)

    def serves(self, pool: str) -> bool:
        """Whether this node declares `pool` (it then runs the pool's steps itself)."""
        return pool in self._pools

    # --- the owner's side -------------------------------------------------------------------

    async def call(self, run_id: str, pipeline: str, pool: str, request: bytes) -> tuple[str, bytes]:
        """Send a step request of run `run_id` to `pool` and wait for its answer: (the node
        that ran it, its answer). Cancelling withdraws the task.

        Raises:
            LeaseLost: this node no longer drives the run.
            StoreError: the task could not be queued (the server is unreachable).
        """
        epoch = self._cluster.epoch_of(run_id)
        if epoch is None:
            raise LeaseLost(run_id, self._node, 0, None, None)
        if time.monotonic() >= self._served.get(pool, 0.0):
            await self._check_served(pool)
        task_id = await self._sql(lambda c: sql.submit(c, run_id, epoch, pipeline, pool,
                                                       self._node, request))
        answer = self._waiting[task_id] = asyncio.get_running_loop().create_future()
        self.sent += 1
        try:
            return await answer
        finally:
            if self._waiting.pop(task_id, None) is not None and not answer.done():
                # Given up (an attempt's timeout): nobody will read its answer.
                asyncio.get_running_loop().create_task(self._withdraw(task_id))

    async def _check_served(self, pool: str) -> None:
        """Warn when no live node declares `pool`: its tasks wait until one does."""
        self._served[pool] = time.monotonic() + _SERVED_FOR
        if not await self._sql(lambda c: sql.served(c, pool)):
            _log.warning("pool_unserved", node=self._node, pool=pool,
                         detail=f"no live node declares pool {pool!r}; its steps wait until "
                                f"one starts with ActorSystem(pools=[{pool!r}]) (or `roost "
                                f"run --pool {pool}`), or their attempts time out")

    async def _withdraw(self, task_id: int) -> None:
        try:
            await self._sql(lambda c: sql.withdraw(c, task_id))
        except StoreError as error:  # the row goes when its run ends
            _log.warning("step_task_withdraw_failed", node=self._node, task=task_id,
                         error=str(error))

    async def _collect(self) -> None:
        """Hand the answers that arrived to the calls waiting for them."""
        if not self._waiting:
            return
        waiting = list(self._waiting)
        for task_id, node, answer in await self._sql(lambda c: sql.collect(c, self._node,
                                                                          waiting)):
            future = self._waiting.pop(task_id, None)
            if future is not None and not future.done():
                future.set_result((node, answer))

    # --- the serving side -------------------------------------------------------------------

    async def _claim(self) -> None:
        """Claim tasks of the declared pools, up to the free capacity, and run each."""
        free = self._capacity() - len(self._running)
        names = self._pipelines()
        if not self._pools or free <= 0 or not names:
            return
        lease = self._cluster.settings.lease
        claimed = await self._sql(lambda c: sql.claim(c, self._node, self._pools, names, free,
                                                      lease))
        loop = asyncio.get_running_loop()
        for task_id, run_id, pipeline, claims, request in claimed:
            if claims > 1:
                _log.info("step_task_reclaimed", node=self._node, task=task_id, run_id=run_id,
                          claims=claims)
            self._running[task_id] = loop.create_task(
                self._serve(task_id, run_id, pipeline, request),
                name=f"roost-step-task:{task_id}")

    async def _serve(self, task_id: int, run_id: str, pipeline: str, request: bytes) -> None:
        """Run one claimed task and store its answer, retrying the write while the claim
        holds (a server restart): an answer lost here costs the task a second run."""
        try:
            answer = await self._handler(run_id, pipeline, request)
            delay = 0.1
            while True:
                try:
                    if not await self._sql(lambda c: sql.answer(c, task_id, self._node, answer)):
                        _log.warning("step_task_claim_lost", node=self._node, task=task_id,
                                     run_id=run_id)
                    break
                except StoreError as error:
                    _log.warning("step_task_answer_failed", node=self._node, task=task_id,
                                 error=str(error))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self._cluster.settings.heartbeat)
            self.served += 1
        except Exception as error:  # the handler answers every failure; this is a bug
            _log.error("step_task_failed", node=self._node, task=task_id, run_id=run_id,
                       error=repr(error))
        finally:
            self._running.pop(task_id, None)
            self._wake.set()  # a slot freed: claim more

    # --- the loop ---------------------------------------------------------------------------

    def heard(self, payload: str) -> None:
        """A notification on the step-task channels: wake up if it is for this node (an
        answer) or one of its pools (a task)."""
        if payload == self._node or payload in self._pools:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            for work in (self._collect, self._claim):
                try:
                    await work()
                except StoreError as error:
                    _log.warning("step_tasks_poll_failed", node=self._node, error=str(error))
                except Exception as error:  # the loop must outlive any one failure
                    _log.error("step_tasks_error", node=self._node, error=repr(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()

    async def _sql(self, function: Callable[[Any], Coroutine[Any, Any, T]]) -> T:
        result: T = await self._cluster.system.store.on_connection(function)
        return result
