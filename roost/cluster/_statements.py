"""The SQL of a cluster: a node's row, its heartbeat, claims of expired leases, and listings.

Every time is the server's `now()`, so nodes' clocks need not agree. Each function
takes an asyncpg connection (it runs on the store's I/O loop, see
`PostgresStore.on_connection`).
"""

from __future__ import annotations

from typing import Any

from roost.storage.postgres._schema import LEASES_TABLE as _L
from roost.storage.postgres._schema import NODES_TABLE as _N
from roost.storage.postgres._schema import TASKS_TABLE as _T

_JOIN = f"""INSERT INTO {_N} (id, host, pid, pools, dead_after) VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, pid = EXCLUDED.pid,
        pools = EXCLUDED.pools, dead_after = EXCLUDED.dead_after, started_at = now(),
        heartbeat = now(), stopped_at = NULL"""

# One round trip per heartbeat: the node's row, the leases of the runs it drives (renewed,
# never shortened: see `extend`), those of runs that ended here (deleted, with their step
# tasks) and those of runs it let go of (expired, so that any node claims them at once),
# and the claims of the step tasks it is running for other nodes ($6). It answers, for
# each run it drives, who holds the lease now, at which epoch, and the seconds it has left.
_BEAT = f"""WITH node AS (
        UPDATE {_N} SET heartbeat = now() WHERE id = $1 RETURNING id),
    ended AS (
        DELETE FROM {_L} WHERE owner = $1 AND run_id = ANY($4::text[]) RETURNING run_id),
    ended_tasks AS (
        DELETE FROM {_T} WHERE run_id = ANY($4::text[]) RETURNING id),
    tasks AS (
        UPDATE {_T} SET claim_until = now() + make_interval(secs => $2)
        WHERE id = ANY($6::bigint[]) AND claimed_by = $1 AND status = 'claimed' RETURNING id),
    let_go AS (
        UPDATE {_L} SET lease_until = now() WHERE owner = $1 AND run_id = ANY($5::text[])
        RETURNING run_id),
    mine AS (  -- locked in run id order, as writers lock them: no deadlock between them
        SELECT run_id FROM {_L} WHERE owner = $1 AND run_id = ANY($3::text[])
        ORDER BY run_id FOR UPDATE),
    renewed AS (
        UPDATE {_L} AS lease
        SET lease_until = greatest(lease.lease_until, now() + make_interval(secs => $2))
        FROM mine WHERE lease.run_id = mine.run_id
        RETURNING lease.run_id, lease.lease_until)
    SELECT lease.run_id, lease.owner, lease.epoch,
        extract(epoch FROM coalesce(renewed.lease_until, lease.lease_until) - now())::float8
    FROM {_L} AS lease LEFT JOIN renewed USING (run_id)
    WHERE lease.run_id = ANY($3::text[])"""

# Expired leases of the pipelines the node runs (queued runs' leases start expired), oldest
# first, but not those of runs it still drives ($5: its heartbeat renews them; a claim would
# fence its own writes in flight); rows another node is claiming or writing under (FOR
# SHARE) are skipped, not waited for. A claim bumps the epoch (fencing the previous owner)
# and counts a takeover when the run had an owner.
_CLAIM = f"""WITH picked AS (
        SELECT run_id FROM {_L}
        WHERE lease_until < now() AND parked IS NULL AND pipeline = ANY($2::text[])
            AND NOT run_id = ANY($5::text[])
        ORDER BY lease_until LIMIT $3 FOR UPDATE SKIP LOCKED)
    UPDATE {_L} AS lease SET owner = $1, epoch = lease.epoch + 1,
        takeovers = lease.takeovers + CASE WHEN lease.owner IS NULL THEN 0 ELSE 1 END,
        lease_until = now() + make_interval(secs => $4)
    FROM picked WHERE lease.run_id = picked.run_id
    RETURNING lease.run_id, lease.pipeline, lease.epoch, lease.takeovers"""

_EXTEND = f"""UPDATE {_L}
    SET lease_until = greatest(lease_until, now() + make_interval(secs => $4))
    WHERE run_id = $1 AND owner = $2 AND epoch = $3
    RETURNING extract(epoch FROM lease_until - now())::float8"""

_PARK = f"""UPDATE {_L} SET parked = $4, owner = NULL
    WHERE run_id = $1 AND owner = $2 AND epoch = $3"""

#: The channel on which a node says runs are there to claim (payload: its id): queued
#: runs, leases it let go of, or all of its leases as it stops.
CLAIMABLE = "roost_claimable"

_LEAVE = f"""WITH leases AS (
        UPDATE {_L} SET lease_until = now() WHERE owner = $1 RETURNING run_id),
    node AS (
        UPDATE {_N} SET stopped_at = now() WHERE id = $1)
    SELECT pg_notify('{CLAIMABLE}', $1) WHERE EXISTS (SELECT 1 FROM leases)"""

_ANNOUNCE = f"SELECT pg_notify('{CLAIMABLE}', $1)"

_NODES = f"""SELECT id, host, pid, pools, started_at, heartbeat, stopped_at,
        stopped_at IS NULL AND heartbeat > now() - make_interval(secs => dead_after) AS alive,
        (SELECT count(*) FROM {_L} WHERE owner = {_N}.id) AS leases
    FROM {_N} ORDER BY started_at, id"""

_LEASES = f"""SELECT run_id, pipeline, owner, epoch, takeovers, parked,
        extract(epoch FROM lease_until - now())::float8 AS remaining
    FROM {_L} ORDER BY run_id"""


async def join(connection: Any, node_id: str, host: str, pid: int, pools: list[str],
               dead_after: float) -> None:
    await connection.execute(_JOIN, node_id, host, pid, pools, dead_after)


async def beat(connection: Any, node_id: str, lease: float, held: list[str], ended: list[str],
               let_go: list[str], tasks: list[int]) -> list[tuple[str, str | None, int, float]]:
    """The heartbeat; (run id, owner, epoch, seconds left) of each of the `held` runs' leases."""
    rows = await connection.fetch(_BEAT, node_id, lease, held, ended, let_go, tasks)
    return [(row[0], row[1], row[2], row[3]) for row in rows]


async def claim(connection: Any, node_id: str, pipelines: list[str], limit: int,
                lease: float, driving: list[str]) -> list[tuple[str, str, int, int]]:
    """Claim up to `limit` expired leases, not those of the runs the node is `driving`:
    (run id, pipeline, new epoch, takeovers) each."""
    rows = await connection.fetch(_CLAIM, node_id, pipelines, limit, lease, driving)
    return [(row[0], row[1], row[2], row[3]) for row in rows]


async def extend(connection: Any, run_id: str, node_id: str, epoch: int,
                 seconds: float) -> float | None:
    """Make one lease last at least `seconds` more; the seconds it has left, or None if
    the node no longer holds it at `epoch`."""
    left: float | None = await connection.fetchval(_EXTEND, run_id, node_id, epoch, seconds)
    return left


async def park(connection: Any, run_id: str, node_id: str, epoch: int, reason: str) -> None:
    await connection.execute(_PARK, run_id, node_id, epoch, reason)


async def leave(connection: Any, node_id: str) -> None:
    """The node stops: its leases expire now (any node takes them over, told so at once),
    its row says so."""
    await connection.execute(_LEAVE, node_id)


async def announce(connection: Any, node_id: str) -> None:
    """Tell the listening nodes that runs wait to be claimed."""
    await connection.execute(_ANNOUNCE, node_id)


async def nodes(connection: Any) -> list[Any]:
    return list(await connection.fetch(_NODES))


async def leases(connection: Any) -> list[Any]:
    return list(await connection.fetch(_LEASES))
