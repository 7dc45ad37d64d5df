"""Which runs a store write belongs to: what a node fences with its leases.

A run's records are keyed by its id: its record in `runs` (the key is the id; the
ended-runs index lives under `\\xff`), and its checkpoints, step results and gates
under `run id + NUL`. Its tool calls' ledger entries are keyed by idempotency key,
but they are written in the context of the call (`roost.trace.call_trace`), which
names the run. So every write of a run can be fenced without its writers knowing
about clusters: the store asks the node (`PostgresStore.fence_with`).
"""

from __future__ import annotations

from collections.abc import Sequence

from roost.storage.ops import Append, Delete, Insert, Op, Put, Update
from roost.trace import call_trace

_SEPARATOR = b"\x00"
_INDEX = b"\xff"
_BY_PREFIX = ("checkpoints", "results", "gates")


def runs_written(ops: Sequence[Op]) -> set[str]:
    """The ids of the runs whose records `ops` write, and the run of the tool call (if any)
    the write is made for."""
    found: set[str] = set()
    for op in ops:
        if isinstance(op, Put | Insert | Delete | Update):
            key = op.key
        elif isinstance(op, Append):
            key = op.prefix
        else:
            continue
        if key.startswith(_INDEX):
            continue
        if op.db == "runs":
            found.add(key.decode(errors="replace"))
        elif op.db in _BY_PREFIX and _SEPARATOR in key:
            found.add(key.split(_SEPARATOR, 1)[0].decode(errors="replace"))
    trace = call_trace.get()
    if trace is not None and trace.run_id:
        found.add(trace.run_id)
    return found
