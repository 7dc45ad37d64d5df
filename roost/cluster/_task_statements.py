"""The SQL of a cluster's step-task queue (`roost_step_tasks`, see `roost.cluster.tasks`).

`pg_notify` wakes the nodes listening (a task for a pool, an answer for its owner) when
the statement commits; it is only a hint: every node also polls.
"""

from __future__ import annotations

from typing import Any

from roost.storage.postgres._schema import LEASES_TABLE as _L
from roost.storage.postgres._schema import NODES_TABLE as _N
from roost.storage.postgres._schema import TASKS_TABLE as _T

#: The channels: a task was queued (payload: its pool); a task was answered (its owner).
QUEUED = "roost_step_task"
ANSWERED = "roost_step_answer"

_SUBMIT = f"""WITH task AS (
        INSERT INTO {_T} (run_id, epoch, pipeline, pool, owner, request)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING id)
    SELECT task.id, pg_notify('{QUEUED}', $4) FROM task"""

# Tasks of the node's pools and pipelines, oldest first: queued ones, and claimed ones whose
# claim ran out (the node running them died). Only tasks of the epoch the run's lease is
# at: an owner that lost the run no longer waits for its tasks, its successor asks again.
_CLAIM = f"""WITH picked AS (
        SELECT task.id FROM {_T} AS task
        JOIN {_L} AS lease ON lease.run_id = task.run_id AND lease.epoch = task.epoch
        WHERE task.pool = ANY($2::text[]) AND task.pipeline = ANY($3::text[])
            AND (task.status = 'queued'
                 OR (task.status = 'claimed' AND task.claim_until < now()))
        ORDER BY task.id LIMIT $4 FOR UPDATE OF task SKIP LOCKED)
    UPDATE {_T} AS task SET status = 'claimed', claimed_by = $1, claims = task.claims + 1,
        claim_until = now() + make_interval(secs => $5)
    FROM picked WHERE task.id = picked.id
    RETURNING task.id, task.run_id, task.pipeline, task.claims, task.request"""

# Only while the claim is this node's: a task reclaimed by another node (this one stalled
# past its claim) keeps that node's answer.
_ANSWER = f"""WITH answered AS (
        UPDATE {_T} SET status = 'answered', answer = $3, claim_until = NULL
        WHERE id = $1 AND claimed_by = $2 AND status = 'claimed' RETURNING owner)
    SELECT pg_notify('{ANSWERED}', owner) FROM answered"""

_COLLECT = f"""DELETE FROM {_T}
    WHERE owner = $1 AND id = ANY($2::bigint[]) AND status = 'answered'
    RETURNING id, claimed_by, answer"""

_WITHDRAW = f"DELETE FROM {_T} WHERE id = $1"

_SERVED = f"""SELECT count(*) FROM {_N}
    WHERE $1 = ANY(pools) AND stopped_at IS NULL
        AND heartbeat > now() - make_interval(secs => dead_after)"""


async def submit(connection: Any, run_id: str, epoch: int, pipeline: str, pool: str,
                 owner: str, request: bytes) -> int:
    """Queue a step request for `pool`; its task id."""
    task_id: int = await connection.fetchval(_SUBMIT, run_id, epoch, pipeline, pool, owner,
                                             request)
    return task_id


async def claim(connection: Any, node_id: str, pools: list[str], pipelines: list[str],
                limit: int, seconds: float) -> list[tuple[int, str, str, int, bytes]]:
    """Claim up to `limit` tasks for `seconds`: (id, run id, pipeline, claims, request) each."""
    rows = await connection.fetch(_CLAIM, node_id, pools, pipelines, limit, seconds)
    return [(row[0], row[1], row[2], row[3], row[4]) for row in rows]


async def answer(connection: Any, task_id: int, node_id: str, answer: bytes) -> bool:
    """Store a task's answer; False if the node's claim of it had gone."""
    rows = await connection.fetch(_ANSWER, task_id, node_id, answer)
    return bool(rows)


async def collect(connection: Any, owner: str,
                  task_ids: list[int]) -> list[tuple[int, str, bytes]]:
    """Take the answers to the owner's tasks among `task_ids`: (id, node, answer) each."""
    rows = await connection.fetch(_COLLECT, owner, task_ids)
    return [(row[0], row[1], row[2]) for row in rows]


async def withdraw(connection: Any, task_id: int) -> None:
    """Delete a task its owner no longer waits for."""
    await connection.execute(_WITHDRAW, task_id)


async def served(connection: Any, pool: str) -> bool:
    """Whether a live node declares `pool`."""
    count: int = await connection.fetchval(_SERVED, pool)
    return count > 0
