"""A node's settings: its id, its lease and heartbeat, when a silent node counts as dead, and
how many takeovers park a run.

How to size them (the README's "Running on PostgreSQL" says more): a run is taken over
at most `lease` seconds after its node stops renewing, so the lease is the worst pause a
run sees when a node dies; it must also exceed the longest pause a live node may have
(a GC pause, a stalled disk), or live nodes lose runs they are driving. A node renews
every `heartbeat` seconds, at most half the lease, so that one failed renewal costs no
lease.
"""

from __future__ import annotations

import os
import secrets
import socket

import msgspec

from roost._validate import check_count, check_seconds
from roost.errors import ConfigurationError

_OWNER = "ActorSystem"
#: The defaults of a node on a PostgreSQL store.
DEFAULT_LEASE = 30.0
DEFAULT_MAX_TAKEOVERS = 5


class NodeSettings(msgspec.Struct, frozen=True):
    """What one node of a cluster is and how it keeps its leases.

    Attributes:
        node_id: the node's id in `roost_nodes` (unique in the cluster).
        lease: seconds a run's lease lasts from its last renewal.
        heartbeat: seconds between renewals (the node row and every lease, at once).
        dead_after: seconds without a heartbeat after which the node is listed dead.
        max_takeovers: takeovers of one run after which it is parked instead.
        pools: the worker pools the node declares (listed in `roost_nodes`).
    """

    node_id: str
    lease: float
    heartbeat: float
    dead_after: float
    max_takeovers: int
    pools: tuple[str, ...] = ()


def node_settings(*, node_id: str | None, lease: float | None, heartbeat: float | None,
                  dead_after: float | None, max_takeovers: int | None,
                  pools: tuple[str, ...] | list[str] | None) -> NodeSettings:
    """The settings of a node, defaults filled in, every value checked.

    Raises:
        ConfigurationError: a value is out of range, naming it and what to pass instead.
    """
    if node_id is None:
        node_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    elif not isinstance(node_id, str) or not node_id or len(node_id) > 200:
        raise ConfigurationError(f"{_OWNER}: node_id must be a non-empty string of at most 200 "
                                 f"characters (or None for a generated one), got {node_id!r}")
    lease = DEFAULT_LEASE if lease is None else lease
    check_seconds(_OWNER, "lease", lease, allow_zero=False)
    heartbeat = lease / 3 if heartbeat is None else heartbeat
    check_seconds(_OWNER, "heartbeat", heartbeat, allow_zero=False)
    if heartbeat > lease / 2:
        raise ConfigurationError(
            f"{_OWNER}: heartbeat={heartbeat!r} must be at most half the lease ({lease!r}s), so "
            "that a node whose renewal fails once still holds its runs; lower it or raise the "
            "lease (the default heartbeat is a third of the lease)")
    dead_after = 2 * lease if dead_after is None else dead_after
    check_seconds(_OWNER, "node_dead_after", dead_after, allow_zero=False)
    if dead_after < lease:
        raise ConfigurationError(
            f"{_OWNER}: node_dead_after={dead_after!r} must be at least the lease ({lease!r}s): "
            "a node is not dead while its leases may still be valid")
    max_takeovers = DEFAULT_MAX_TAKEOVERS if max_takeovers is None else max_takeovers
    check_count(_OWNER, "max_takeovers", max_takeovers, 1)
    names = tuple(pools or ())
    if any(not isinstance(name, str) or not name for name in names):
        raise ConfigurationError(f"{_OWNER}: pools must be non-empty strings, got {pools!r}")
    return NodeSettings(node_id, float(lease), float(heartbeat), float(dead_after),
                        max_takeovers, names)
